"""Hostile text from inputs never reaches a terminal or a log raw (issue 11, point 5), and
``--output`` never overwrites an input, nor leaves half a report (point 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builders import write_safetensors
from loracheck.cli import main

HOSTILE = "\udc80\x1b[2J\x1b]0;owned\x07\x08\nAll checks passed"


def _adapter(folder: Path, target: str) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    write_safetensors(folder / "adapter_model.safetensors", {
        f"{base}.lora_A.weight": rng.normal(0, 0.1, (4, 16)).astype(np.float32),
        f"{base}.lora_B.weight": rng.normal(0, 0.1, (16, 4)).astype(np.float32)})
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", target]}))
    return folder


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["text", "github", "sarif", "json"])
def test_escapes_and_newlines_from_input_are_shown_escaped(
        fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _adapter(tmp_path / "a", HOSTILE)
    code, out = _run(["check", str(folder), "--format", fmt], capsys)
    assert code == 1  # LC106: the hostile target matches nothing
    for raw in ("\x1b", "\x07", "\x08", "\udc80"):
        assert raw not in out
    assert not any(line.startswith("All checks passed") for line in out.splitlines())
    if fmt == "text":
        assert "\\x1b[2J" in out and "\\n" in out


def test_inspect_escapes_input_and_cuts_long_keys(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = _adapter(tmp_path / "a", HOSTILE + "x" * 10_000)
    _, out = _run(["inspect", str(folder)], capsys)
    assert "\x1b" not in out and "\x07" not in out
    assert max(len(line) for line in out.splitlines()) < 2100
    assert "characters)" in out


def test_output_never_overwrites_an_input(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = _adapter(tmp_path / "a", "v_proj")
    config = folder / "adapter_config.json"
    before = config.read_bytes()
    code = main(["check", str(folder), "--output", str(config)])
    assert code == 2 and config.read_bytes() == before
    assert main(["check", str(config), "-o", str(config)]) == 2
    report = tmp_path / "report.sarif"
    assert main(["check", str(folder), "-f", "sarif", "-o", str(report)]) == 1
    assert json.loads(report.read_text())["version"] == "2.1.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "report.sarif"]  # no temp left
