"""SARIF 2.1.0 for GitHub code scanning.

What GitHub needs beyond the schema: every rule has ``shortDescription``, ``fullDescription``
and ``help``; every result a relative ``artifactLocation.uri`` and a ``region.startLine`` (1 for
binary files, whose findings carry the tensor key in the message and in ``properties``); and
stable ``partialFingerprints``, which we compute ourselves (code + path + location) so that GitHub
never hashes lines of a binary file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from loracheck.model import Diagnostic, Report, RuleMeta, Severity
from loracheck.render._common import (
    clean_line,
    display_path,
    message_with_location,
    sorted_diagnostics,
)

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
INFORMATION_URI = "https://github.com/loracheck/loracheck"
HELP_URI = "https://github.com/loracheck/loracheck/blob/main/rules/{code}.md"
FINGERPRINT_KEY = "loracheck/v1"

LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def rule_category(code: str) -> str:
    """The catalog section a code belongs to, by its number."""
    digits = code[2:] if code[:2].upper() == "LC" else code
    if not digits.isdigit():
        return "other"
    n = int(digits)
    if n < 100:
        return "input"
    if n < 200:
        return "config"
    if n < 250:
        return "weights"
    if n < 300:
        return "base-model"
    if n < 400:
        return "probe"
    if n < 410:
        return "merged"
    if n < 420:
        return "diff"
    return "other"


def artifact_uri(path: str, root: Path) -> str:
    """A percent-encoded URI: repo-relative with forward slashes, or ``file://`` when outside."""
    shown = display_path(path, root)
    pure = PurePath(shown)
    if pure.is_absolute():
        return Path(pure).as_uri()
    # A file name that is not UTF-8 reaches us with surrogate escapes: encode its raw bytes.
    return quote(shown, safe="/", errors="surrogateescape")


def fingerprint(d: Diagnostic, relpath: str) -> str:
    raw = "\x00".join([d.code, relpath, d.location or ""])
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


def _rule_entry(code: str, meta: RuleMeta | None, fallback: Diagnostic) -> dict[str, Any]:
    if meta is None:
        name = fallback.name or code
        summary = fallback.message.split("\n", 1)[0] or name
        explanation = fallback.help or summary
        severity = fallback.severity
        status = "unknown"
    else:
        name = meta.name
        summary = meta.summary or meta.name
        explanation = meta.explanation.strip() or summary
        severity = meta.severity
        status = meta.status
    help_uri = HELP_URI.format(code=code)
    return {
        "id": code,
        "name": name,
        "shortDescription": {"text": summary},
        "fullDescription": {"text": explanation},
        "help": {
            "text": f"{summary}\n\n{explanation}\n\nSee {help_uri}",
            "markdown": f"**{code} {name}**: {summary}\n\n{explanation}\n\n[Rule page]({help_uri})",
        },
        "helpUri": help_uri,
        "defaultConfiguration": {"level": LEVELS[severity]},
        "properties": {
            "name": name,
            "category": rule_category(code),
            "status": status,
            "problem.severity": LEVELS[severity],
            "tags": ["lora", rule_category(code)],
        },
    }


def _result(d: Diagnostic, rule_index: int, root: Path) -> dict[str, Any]:
    relpath = display_path(d.path, root)
    region: dict[str, Any] = {"startLine": d.line or 1}
    if d.col is not None:
        region["startColumn"] = d.col
    properties: dict[str, Any] = {"name": d.name, "severity": d.severity.value}
    if d.location is not None:
        properties["location"] = d.location
    if d.help:
        properties["help"] = d.help
    location: dict[str, Any] = {
        "physicalLocation": {
            "artifactLocation": {"uri": artifact_uri(d.path, root)},
            "region": region,
        }
    }
    if d.location:
        location["logicalLocations"] = [{"fullyQualifiedName": d.location}]
    return {
        "ruleId": d.code,
        "ruleIndex": rule_index,
        "level": LEVELS[d.severity],
        "message": {"text": clean_line(message_with_location(d))},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(d, relpath)},
        "properties": properties,
    }


def sarif_dict(
    report: Report, rules: Mapping[str, RuleMeta], *, root: Path, tool_version: str
) -> dict[str, Any]:
    """The SARIF log as data: one run, only the rules that fired (sorted by id)."""
    diagnostics = sorted_diagnostics(report.diagnostics)
    first_seen: dict[str, Diagnostic] = {}
    for d in diagnostics:
        first_seen.setdefault(d.code, d)
    codes = sorted(first_seen)
    index = {code: i for i, code in enumerate(codes)}
    driver: dict[str, Any] = {
        "name": "loracheck",
        "version": tool_version,
        "semanticVersion": tool_version,
        "informationUri": INFORMATION_URI,
        "rules": [_rule_entry(code, rules.get(code), first_seen[code]) for code in codes],
    }
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {"driver": driver},
                "invocations": [{"executionSuccessful": True}],
                "columnKind": "unicodeCodePoints",
                "results": [_result(d, index[d.code], root) for d in diagnostics],
            }
        ],
    }


def render_sarif(
    report: Report, rules: Mapping[str, RuleMeta], *, root: Path, tool_version: str
) -> str:
    """SARIF 2.1.0 text (strict ASCII JSON, two-space indent, trailing newline)."""
    data = sarif_dict(report, rules, root=root, tool_version=tool_version)
    return json.dumps(data, indent=2, ensure_ascii=True, allow_nan=False) + "\n"
