"""Files named one by one (issue 12, points 1 and 3): each finding is owned by one file and
reported only when that file is named; named files with no LoRA content that do not look like
LoRA artifacts are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builders import write_safetensors
from loracheck.cli import main

BASE = "base_model.model.model.layers.0.self_attn.q_proj"


def _broken_adapter(folder: Path) -> tuple[Path, Path]:
    """Findings of each kind: config (LC103 dropout 1.5), pair (LC106 a target matching no
    module of the weights, LC202 the declared r against the tensors), weights (LC203 NaN)."""
    rng = np.random.default_rng(0)
    b = rng.normal(0, 0.01, size=(16, 4)).astype(np.float32)
    b[0, 0] = np.nan
    folder.mkdir()
    weights = write_safetensors(folder / "adapter_model.safetensors", {
        f"{BASE}.lora_A.weight": rng.normal(0, 0.2, size=(4, 16)).astype(np.float32),
        f"{BASE}.lora_B.weight": b})
    config = folder / "adapter_config.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                  "lora_dropout": 1.5, "target_modules": ["q_proj", "v_proj"]},
                                 indent=1))
    return config, weights


def _findings(capsys: pytest.CaptureFixture[str], *paths: str) -> list[tuple[str, str, str]]:
    main(["check", *paths, "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    return [(Path(d["path"]).name, d["code"], d["message"]) for d in doc["diagnostics"]]


def test_every_split_gives_the_same_findings_once(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config, weights = _broken_adapter(tmp_path / "ad")
    alone_config = _findings(capsys, str(config))
    alone_weights = _findings(capsys, str(weights))
    both = _findings(capsys, str(weights), str(config))
    assert {code for _, code, _ in alone_config} == {"LC103"}
    assert {code for _, code, _ in alone_weights} == {"LC106", "LC202", "LC203"}
    assert all(name == "adapter_model.safetensors" for name, _, _ in alone_weights)
    assert sorted(alone_config + alone_weights) == sorted(both)
    # A folder is one run over the whole unit: the same findings, the pair ones on the config
    # line they are about.
    folder = _findings(capsys, str(tmp_path / "ad"))
    assert sorted(code for _, code, _ in folder) == sorted(code for _, code, _ in both)
    assert ("adapter_config.json", "LC106") in {(n, c) for n, c, _ in folder}
    # A file and its folder together: the folder covers everything.
    assert sorted(_findings(capsys, str(config), str(tmp_path / "ad"))) == sorted(folder)


def test_a_named_config_alone_does_not_read_the_weights(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config, weights = _broken_adapter(tmp_path / "ad")
    weights.write_bytes(b"garbage that would be LC001")
    assert [c for _, c, _ in _findings(capsys, str(config))] == ["LC103"]
    assert "LC001" in {c for _, c, _ in _findings(capsys, str(weights))}


@pytest.mark.parametrize("name, text", [
    ("package.json", '{"name": "web", "version": "1.0.0"}'),
    ("docker-compose.yml", "services:\n  web:\n    image: nginx\n"),
    ("README.md", "# project\n"),
    ("pyproject.toml", "[project]\nname = 'x'\n"),
    ("setup.py", "from setuptools import setup\nsetup(name='x')\n"),
])
def test_unrelated_named_files_are_skipped(name: str, text: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert main(["check", str(path)]) == 0
    assert "LC002" not in capsys.readouterr().out


@pytest.mark.parametrize("name, text", [
    ("train_config.json", "{}"),
    ("lora.yaml", "model: x\n"),
    ("adapter_config.json", "{}"),
    ("model.safetensors", None),
])
def test_lora_shaped_named_files_without_lora_content_stay_lc002(
        name: str, text: str | None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    if text is None:
        write_safetensors(path, {"model.embed_tokens.weight": np.zeros((4, 4), np.float32)})
    else:
        path.write_text(text)
    assert main(["check", str(path)]) == 1
    assert "LC002" in capsys.readouterr().out


def test_lora_settings_in_an_unremarkable_name_are_still_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yml"
    path.write_text("base_model: x\nadapter: lora\nlora_r: 8\nlora_alpha: 16\n"
                    "lora_dropout: 1.5\n")
    assert main(["check", str(path)]) == 1
    assert "LC103" in capsys.readouterr().out


def test_check_with_no_path_checks_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _broken_adapter(tmp_path / "ad")
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "ad/adapter_config.json" in out and "LC203" in out


def test_verbose_names_the_skipped_files(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "README.md").write_text("# x\n")
    assert main(["check", str(tmp_path / "package.json"), str(tmp_path / "README.md"),
                 "-v"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"loracheck: skipped {tmp_path / name}: no LoRA settings or weights"
                   for name in ("package.json", "README.md")]
    assert main(["check", str(tmp_path / "package.json")]) == 0
    assert capsys.readouterr().err == ""


def test_the_verdict_line_and_the_exit_code_agree_under_fail_on_info(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only an info finding: `--fail-on info` fails, and the summary does not say passed."""
    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "llmbook_lora.py"
    main(["check", str(path), "--format", "json"])
    infos = json.loads(capsys.readouterr().out)["diagnostics"]
    assert infos and all(d["severity"] == "info" for d in infos), infos
    assert main(["check", str(path), "--fail-on", "info"]) == 1
    assert "All checks passed" not in capsys.readouterr().out
    assert main(["check", str(path)]) == 0
    assert "All checks passed" in capsys.readouterr().out


def test_a_named_bin_beside_a_safetensors_is_the_one_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both weights files in one folder: naming the .bin reads the .bin, and the config's own
    findings stay with the config."""
    import torch

    _broken_adapter(tmp_path / "ad")
    state = {f"{BASE}.lora_A.weight": torch.randn(4, 16) * 0.2,
             f"{BASE}.lora_B.weight": torch.full((16, 4), float("inf"))}
    torch.save(state, tmp_path / "ad" / "adapter_model.bin")
    found = _findings(capsys, str(tmp_path / "ad" / "adapter_model.bin"))
    assert {name for name, _, _ in found} == {"adapter_model.bin"}
    assert "LC103" not in {code for _, code, _ in found}  # the config's, not named
    assert "LC203" in {code for _, code, _ in found}, found  # the .bin's Inf, read


def test_a_litgpt_pair_named_file_by_file_reports_each_finding_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    final = tmp_path / "final"
    shutil.copytree(Path(__file__).parent / "fixtures" / "writers" / "litgpt" / "qv" / "final",
                    final)
    hp = final / "hyperparameters.yaml"
    hp.write_text(hp.read_text().replace("lora_dropout: 0.0", "lora_dropout: 1.5"))
    both = _findings(capsys, str(hp), str(final / "lit_model.pth.lora"))
    assert len(both) == len(set(both)), both
    assert [code for _, code, _ in both].count("LC103") == 1
    alone = _findings(capsys, str(hp)) + _findings(capsys, str(final / "lit_model.pth.lora"))
    assert sorted(alone) == sorted(both)
