"""`loracheck verify` on the command line: the engine judges the record, so settings and
--fail-on apply, the verdict and the exit code agree, and every format is the shared one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from builders import peft_adapter, save_tiny_llama
from loracheck.cli import main


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().out


def test_defaults_pass_exit_0_in_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["verify"], capsys)
    assert code == 0 and out.rstrip().endswith("verify passed")
    code, out = _run(["verify", "--format", "json"], capsys)
    body = json.loads(out)
    assert code == 0 and body["schema_version"] == 1 and body["verify"]["passed"] is True
    assert body["verify"]["losses"]["drop"] > 0 and body["diagnostics"] == []
    assert body["verify"]["identity"]["mode"] == "exact"


def test_a_failing_probe_says_failed_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["verify", "--lr", "0", "--probe-steps", "3"], capsys)
    assert code == 1 and "LC302 [error] the learning rate is 0" in out
    assert out.rstrip().endswith("verify FAILED")
    code, out = _run(["verify", "--lr", "0", "--probe-steps", "3", "-f", "json"], capsys)
    body = json.loads(out)
    assert code == 1 and body["verify"]["passed"] is False
    assert [d["code"] for d in body["diagnostics"]] == ["LC302"]


def test_sarif_and_github_come_from_the_shared_renderers(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["verify", "--lr", "0", "--probe-steps", "2", "-f", "sarif"], capsys)
    sarif = json.loads(out)
    assert code == 1 and sarif["runs"][0]["results"][0]["ruleId"] == "LC302"
    code, out = _run(["verify", "--lr", "0", "--probe-steps", "2", "-f", "github"], capsys)
    assert code == 1 and out.startswith("::error") and "LC302" in out


def test_ignore_fail_on_and_project_settings_apply(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["verify", "--lr", "0", "--probe-steps", "2"]
    code, out = _run([*base, "--ignore", "LC302"], capsys)
    assert code == 0 and out.rstrip().endswith("verify passed")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.loracheck]\nseverity = { LC302 = "warning" }\n')
    code, out = _run(base, capsys)
    assert code == 0 and "LC302 [warning]" in out
    code, out = _run([*base, "--fail-on", "warning"], capsys)
    assert code == 1 and out.rstrip().endswith("verify FAILED")


def test_adapter_is_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save_tiny_llama(tmp_path / "m")
    adapter = peft_adapter(tmp_path / "a", r=4, steps=1)
    config = adapter / "adapter_config.json"
    body = json.loads(config.read_text())
    body["lora_dropout"] = 1.5  # invalid: check reports LC103 as an error
    config.write_text(json.dumps(body))
    code, out = _run(["verify", "--model", str(model), "--adapter", str(adapter), "-f", "json"],
                     capsys)
    report = json.loads(out)
    assert code == 1 and "verify" not in report
    assert "LC103" in {d["code"] for d in report["diagnostics"]}
    code, out = _run(["verify", "--model", str(model), "--adapter", str(adapter)], capsys)
    assert code == 1 and "verify stopped" in out
