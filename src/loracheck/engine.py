"""The rule engine: run the selected rules on one adapter and turn findings into diagnostics.

Order of decisions for each finding: rule selection (select / extend-select / ignore, the
longest prefix wins), severity (the finding's own, else the rule's default, then the
``severity`` overrides), per-file-ignores, inline ``# loracheck: ignore[...]`` comments.
The result is sorted by (path, line, code, location), so output never depends on rule order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

from loracheck.model import Adapter, Diagnostic, MethodKind, Severity
from loracheck.rules.context import HELP_URL, Finding, Rule, RuleContext, Subject
from loracheck.rules.registry import select_rules

if TYPE_CHECKING:
    from loracheck.basemodel import BaseModelInfo
    from loracheck.diff_record import DiffRecord
    from loracheck.merge_record import MergeRecord
    from loracheck.probe_record import ProbeRecord
    from loracheck.settings import Settings


def _longest(code: str, selectors: Iterable[str]) -> int:
    best = -1
    for sel in selectors:
        if sel == "ALL":
            best = max(best, 0)
        elif code.startswith(sel):
            best = max(best, len(sel))
    return best


def severity_for(code: str, default: Severity, overrides: Mapping[str, Severity]) -> Severity:
    """The override with the longest matching prefix, else ``default``."""
    best, chosen = -1, default
    for sel, sev in overrides.items():
        n = _longest(code, [sel])
        if n > best:
            best, chosen = n, sev
    return chosen


def _path_forms(path: str, root: Path | None) -> list[str]:
    p = Path(path)
    forms = [p.as_posix(), p.name or p.absolute().name]  # "." is named by its folder
    try:
        absolute = p.resolve()
        forms.append(absolute.as_posix())
        if root is not None:
            forms.append(absolute.relative_to(root.resolve()).as_posix())
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a symlink loop (Python < 3.13)
        pass
    return forms


def file_ignored(
    code: str, path: str, per_file: Sequence[tuple[str, Sequence[str]]], root: Path | None
) -> bool:
    """Whether a per-file-ignores glob matching ``path`` names ``code`` (or a prefix of it)."""
    if not per_file:
        return False
    forms = _path_forms(path, root)
    for glob, codes in per_file:
        if any(fnmatch(form, glob) for form in forms) and _longest(code, codes) >= 0:
            return True
    return False


def stage_setting(paths: Sequence[str], settings: Settings) -> str:
    """The stage loracheck's settings set for a unit with files ``paths``: the first
    ``per-file-stage`` glob that matches one of them, else ``stage`` ("auto" by default)."""
    if settings.per_file_stage:
        forms = [form for path in paths for form in _path_forms(path, settings.root)]
        for glob, stage in settings.per_file_stage:
            if any(fnmatch(form, glob) for form in forms):
                return stage
    return settings.stage


def _suppressed(adapter: Adapter, diag: Diagnostic) -> bool:
    spec = adapter.spec
    if spec is None or diag.line is None or not spec.suppressions:
        return False
    if spec.path and PurePath(diag.path) != PurePath(spec.path):
        return False
    codes = spec.suppressions.get(diag.line)
    if codes is None:
        return False
    return not codes or _longest(diag.code, [c.upper() for c in codes]) >= 0


def _diagnostic(rule: Rule, finding: Finding, adapter: Adapter, settings: Settings) -> Diagnostic:
    default = finding.severity or rule.meta.severity
    return Diagnostic(
        code=rule.code,
        name=rule.meta.name,
        severity=severity_for(rule.code, default, settings.severity),
        path=finding.path or adapter.path,
        message=finding.message,
        line=finding.line,
        location=finding.location,
        help=HELP_URL.format(code=rule.code),
    )


def sort_key(d: Diagnostic) -> tuple[str, int, str, str]:
    return (d.path, d.line or 0, d.code, d.location or "")


def check_adapter(
    adapter: Adapter, settings: Settings, base: BaseModelInfo | None = None
) -> list[Diagnostic]:
    """Every diagnostic the selected artifact rules give for ``adapter``, filtered and sorted."""
    ctx = RuleContext(adapter=adapter, profile=settings.profile, base=base)
    return _judge(ctx, settings, Subject.ARTIFACT)


def check_probe(probe: ProbeRecord, adapter: Adapter, settings: Settings) -> list[Diagnostic]:
    """Every diagnostic the selected probe rules (LC3xx) give for what ``verify`` measured;
    ``adapter`` names the subject (the model folder) and carries the spec that was probed."""
    ctx = RuleContext(adapter=adapter, profile=settings.profile, probe=probe)
    return _judge(ctx, settings, Subject.PROBE)


def check_diff(record: DiffRecord, adapter: Adapter, settings: Settings) -> list[Diagnostic]:
    """Every diagnostic the selected diff rules (LC41x) give for what ``diff`` measured;
    ``adapter`` names the subject (B, the adapter judged against A)."""
    ctx = RuleContext(adapter=adapter, profile=settings.profile, diff=record)
    return _judge(ctx, settings, Subject.DIFF)


def check_merged(record: MergeRecord, adapter: Adapter, settings: Settings) -> list[Diagnostic]:
    """Every diagnostic the selected merge rules (LC40x) give for what ``merged`` measured;
    ``adapter`` names the subject (the MERGED folder)."""
    ctx = RuleContext(adapter=adapter, profile=settings.profile, merged=record)
    return _judge(ctx, settings, Subject.MERGED)


# (selection, subject, method) -> the selected rules that judge them, worked out once per run
# (the selection is select_rules' cached tuple, kept here so that its id stays its own).
_APPLICABLE: dict[tuple[int, Subject, MethodKind], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}


def _applicable(rules: tuple[Rule, ...], subject: Subject, method: MethodKind
                ) -> tuple[Rule, ...]:
    key = (id(rules), subject, method)
    cached = _APPLICABLE.get(key)
    if cached is not None and cached[0] is rules:
        return cached[1]
    chosen = tuple(r for r in rules if r.subject is subject and method in r.methods)
    if len(_APPLICABLE) > 64:
        _APPLICABLE.clear()
    _APPLICABLE[key] = (rules, chosen)
    return chosen


def _judge(ctx: RuleContext, settings: Settings, subject: Subject) -> list[Diagnostic]:
    adapter = ctx.adapter
    rules = select_rules(settings.select, settings.ignore, settings.extend_select)
    out: list[Diagnostic] = []
    for rule in _applicable(rules, subject, adapter.method):
        for finding in rule.check(ctx):
            diag = _diagnostic(rule, finding, adapter, settings)
            if file_ignored(diag.code, diag.path, settings.per_file_ignores, settings.root):
                continue
            if _suppressed(adapter, diag):
                continue
            out.append(diag)
    return sorted(out, key=sort_key)


def exit_code(diagnostics: Iterable[Diagnostic], fail_on: Severity) -> int:
    """1 when a diagnostic reaches ``fail_on``, else 0."""
    return 1 if any(d.severity.rank >= fail_on.rank for d in diagnostics) else 0
