"""The engine: selection, severity overrides, per-file-ignores, suppressions, ordering."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from loracheck.engine import check_adapter, exit_code
from loracheck.model import Severity
from loracheck.rules.registry import is_selected, select_rules
from loracheck.settings import Settings
from rule_factories import CONFIG, adapter, config_only, run, spec


def two_faults():
    return config_only(spec(dropout=1.0, use_rslora=True))  # LC103 error + LC108 info


def test_diagnostic_fields() -> None:
    (d,) = [d for d in run(two_faults()) if d.code == "LC103"]
    assert d.name == "dropout-out-of-range" and d.severity is Severity.ERROR
    assert d.path == CONFIG and d.line == 9 and d.location == "dropout"
    assert d.help == "https://github.com/loracheck/loracheck/blob/main/rules/LC103.md"


def test_longest_prefix_wins() -> None:
    assert is_selected("LC203", ["ALL"], [])
    assert not is_selected("LC203", ["ALL"], ["LC2"])
    assert is_selected("LC203", ["LC203"], ["LC2"])
    assert not is_selected("LC203", ["LC2"], ["LC20"])
    assert not is_selected("LC101", ["LC2"], [])
    assert is_selected("LC101", ["LC2"], [], ["LC1"])
    assert not is_selected("LC203", ["LC2"], ["LC2"])  # a tie goes to ignore
    assert [r.code for r in select_rules(["LC21"], ["LC215"])] == [
        "LC210", "LC211", "LC212", "LC213", "LC214", "LC216"]


def test_select_and_ignore_in_the_engine() -> None:
    ad = two_faults()
    assert {d.code for d in check_adapter(ad, Settings(ignore=("LC108",)))} == {"LC103"}
    assert {d.code for d in check_adapter(ad, Settings(select=("LC10",),
                                                         ignore=("LC103",)))} == {"LC108"}


def test_severity_overrides_longest_prefix() -> None:
    s = Settings(severity={"LC1": Severity.WARNING, "LC108": Severity.ERROR})
    sev = {d.code: d.severity for d in check_adapter(two_faults(), s)}
    assert sev == {"LC103": Severity.WARNING, "LC108": Severity.ERROR}


def test_per_file_ignores(tmp_path: Path) -> None:
    s = Settings(per_file_ignores=(("adapter_config.json", ("LC10",)),))
    assert check_adapter(two_faults(), s) == []
    s = Settings(per_file_ignores=(("data/*", ("LC103",)),), root=Path("/"))
    assert {d.code for d in check_adapter(two_faults(), s)} == {"LC108"}
    s = Settings(per_file_ignores=(("*.yaml", ("LC103",)),))
    assert len(check_adapter(two_faults(), s)) == 2


def test_inline_suppressions() -> None:
    ad = two_faults()
    assert ad.spec is not None
    ad.spec = replace(ad.spec, suppressions={9: ["LC103"]})
    assert {d.code for d in run(ad)} == {"LC108"}
    ad.spec = replace(ad.spec, suppressions={9: [], 22: ["LC1"]})
    assert run(ad) == []
    ad.spec = replace(ad.spec, suppressions={9: ["LC204"]})
    assert {d.code for d in run(ad)} == {"LC103", "LC108"}


def test_ordering_is_deterministic() -> None:
    ad = adapter(spec_=spec(dropout=1.0, use_rslora=True, rank=4, alpha=256.0))
    diags = run(ad)
    keys = [(d.path, d.line or 0, d.code, d.location or "") for d in diags]
    assert keys == sorted(keys) and len(diags) >= 3


def test_exit_code() -> None:
    diags = run(two_faults())
    assert exit_code(diags, Severity.ERROR) == 1
    info_only = [d for d in diags if d.severity is Severity.INFO]
    assert exit_code(info_only, Severity.ERROR) == 0
    assert exit_code(info_only, Severity.WARNING) == 0
    assert exit_code(info_only, Severity.INFO) == 1
    assert exit_code([], Severity.INFO) == 0


def test_rules_are_pure(capsys) -> None:  # type: ignore[no-untyped-def]
    ad = two_faults()
    before = replace(ad)
    run(ad)
    assert capsys.readouterr() == ("", "")
    assert ad == before
