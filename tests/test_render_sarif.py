"""SARIF 2.1.0: the official schema, GitHub code scanning's extra requirements, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from loracheck.model import Report, Severity
from loracheck.render import render_sarif
from loracheck.render.sarif import artifact_uri
from test_render_factory import ROOT, RULES, diag, mixed_report

SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "sarif-schema-2.1.0.json"


def _sarif(report: Report | None = None) -> dict[str, Any]:
    text = render_sarif(report or mixed_report(), RULES, root=ROOT, tool_version="0.1.0")
    data: dict[str, Any] = json.loads(text)
    return data


@pytest.mark.skipif(not SCHEMA.exists(), reason="official SARIF schema not available")
@pytest.mark.parametrize("empty", [False, True])
def test_valid_against_official_schema(empty: bool) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    jsonschema.Draft4Validator(schema).validate(_sarif(Report() if empty else None))


def test_header_and_driver() -> None:
    data = _sarif()
    assert data["version"] == "2.1.0"
    assert data["$schema"].endswith("sarif-2.1.0.json")
    assert len(data["runs"]) == 1
    driver = data["runs"][0]["tool"]["driver"]
    assert driver["name"] == "loracheck"
    assert driver["version"] == "0.1.0"
    assert driver["informationUri"].startswith("https://")
    assert [r["id"] for r in driver["rules"]] == ["LC103", "LC203", "LC209"]


def test_github_rule_requirements() -> None:
    for rule in _sarif()["runs"][0]["tool"]["driver"]["rules"]:
        assert rule["shortDescription"]["text"]
        assert rule["fullDescription"]["text"]
        assert rule["help"]["text"] and rule["help"]["markdown"]
        assert rule["helpUri"] == (
            f"https://github.com/loracheck/loracheck/blob/main/rules/{rule['id']}.md"
        )
        assert rule["defaultConfiguration"]["level"] in {"error", "warning", "note"}
        assert rule["name"] == RULES[rule["id"]].name
    lc209 = _sarif()["runs"][0]["tool"]["driver"]["rules"][2]
    assert lc209["shortDescription"]["text"] == "A module's update is an outlier."
    assert lc209["fullDescription"]["text"].startswith("## What it does")
    assert lc209["defaultConfiguration"]["level"] == "warning"


def test_results() -> None:
    run = _sarif()["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["LC203", "LC209", "LC103"]
    for r in results:
        assert rules[r["ruleIndex"]] == r["ruleId"]
        loc = r["locations"][0]["physicalLocation"]
        assert not loc["artifactLocation"]["uri"].startswith(("/", "file:"))
        assert "\\" not in loc["artifactLocation"]["uri"]
        assert loc["region"]["startLine"] >= 1
        assert r["message"]["text"]
    weights, _, config = results
    assert weights["level"] == "error"
    assert weights["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "adapter/adapter_model.safetensors"},
        "region": {"startLine": 1},
    }
    assert weights["message"]["text"] == "NaN or Inf in lora_B (model.layers.0.self_attn.q_proj)"
    assert weights["properties"]["location"] == "model.layers.0.self_attn.q_proj"
    assert config["locations"][0]["physicalLocation"]["region"] == {"startLine": 7,
                                                                   "startColumn": 3}
    expected = hashlib.sha256(
        b"LC203\x00adapter/adapter_model.safetensors\x00model.layers.0.self_attn.q_proj"
    ).hexdigest()
    assert weights["partialFingerprints"] == {"loracheck/v1": expected}
    fps = {r["partialFingerprints"]["loracheck/v1"] for r in results}
    assert len(fps) == 3


def test_levels() -> None:
    report = Report(diagnostics=[diag("LC108", Severity.INFO, location=None, message="m")])
    run = _sarif(report)["runs"][0]
    assert run["results"][0]["level"] == "note"
    # A code missing from the registry still gets a complete rule entry.
    rule = run["tool"]["driver"]["rules"][0]
    assert rule["id"] == "LC108" and rule["shortDescription"]["text"]
    assert rule["fullDescription"]["text"] and rule["help"]["text"]


def test_uri_is_percent_encoded_relative() -> None:
    assert artifact_uri("/repo/my dir/a#b.safetensors", ROOT) == "my%20dir/a%23b.safetensors"
    assert artifact_uri("/elsewhere/x.yaml", ROOT) == "file:///elsewhere/x.yaml"
    assert artifact_uri("rel/x.yaml", ROOT) == "rel/x.yaml"


def test_fingerprint_stable_across_roots_and_messages() -> None:
    a = diag(path="/repo/adapter/adapter_model.safetensors", message="one")
    b = diag(path="/other/adapter/adapter_model.safetensors", message="two")
    fa = render_sarif(Report(diagnostics=[a]), RULES, root=Path("/repo"), tool_version="1")
    fb = render_sarif(Report(diagnostics=[b]), RULES, root=Path("/other"), tool_version="1")
    key = "loracheck/v1"
    assert (json.loads(fa)["runs"][0]["results"][0]["partialFingerprints"][key]
            == json.loads(fb)["runs"][0]["results"][0]["partialFingerprints"][key])


def test_deterministic_bytes() -> None:
    one = render_sarif(mixed_report(), RULES, root=ROOT, tool_version="0.1.0")
    shuffled = mixed_report()
    shuffled.diagnostics.reverse()
    two = render_sarif(shuffled, dict(reversed(list(RULES.items()))), root=ROOT,
                       tool_version="0.1.0")
    assert one == two
    assert one.isascii() and one.endswith("\n")


def test_every_code_range_has_its_own_category() -> None:
    from loracheck.render.sarif import rule_category

    assert [rule_category(c) for c in ("LC001", "LC101", "LC203", "LC250", "LC301", "LC401",
                                       "LC410", "LC999", "X1")] == [
        "input", "config", "weights", "base-model", "probe", "merged", "diff", "other", "other"]
