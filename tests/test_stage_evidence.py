"""Stage from evidence (issue 12, point 2): a fresh adapter of every init is clean with no
``--stage``; a checkpoint whose trainer says it took steps while ΔW is still zero is an LC207
error naming that evidence; the stage is a setting, also per path; JSON says where it came
from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import kohya_file, peft_adapter, write_safetensors
from loracheck.cli import main

# PEFT 0.21.2 init_lora_weights values that need no data: kaiming (True), gaussian, the
# SVD-based ones (pissa, olora: B ≠ 0 at step 0), orthogonal, and False (random B).
INITS: list[bool | str] = [True, "gaussian", "pissa", "olora", "orthogonal", False]


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh kaiming PEFT adapter, saved right after get_peft_model."""
    return peft_adapter(tmp_path_factory.mktemp("fresh") / "adapter")


@pytest.mark.parametrize("init", INITS, ids=str)
def test_a_fresh_adapter_of_every_init_gets_no_warning(
        init: bool | str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = peft_adapter(tmp_path / "a", init_lora_weights=init,
                          target_modules=["q_proj", "v_proj", "embed_tokens"]
                          if init is True else None)
    code, doc = _json(capsys, "check", str(folder))
    serious = [d["code"] for d in doc["diagnostics"] if d["severity"] != "info"]
    # init_lora_weights=False is PEFT's debugging init: B random, so step 0 is not the base
    # model. That is the config's choice (LC105, a warning), not a question of stage.
    assert code == 0 and serious == (["LC105"] if init is False else []), doc["diagnostics"]
    (adapter,) = doc["files"]
    if init is not False:  # random B: no closed-form step-0 signature
        assert adapter["stage"] == "init" and adapter["stage_source"] == "weights"
        assert "init at step 0" in adapter["stage_evidence"]


def _trainer_state(folder: Path, steps: int) -> None:
    from transformers import TrainerState

    TrainerState(global_step=steps, max_steps=steps).save_to_json(
        str(folder / "trainer_state.json"))


def _evidence_case(case: str, fresh: Path, root: Path) -> tuple[Path, str]:
    """A B = 0 adapter placed where its trainer says steps were taken; the evidence text."""
    if case == "trainer-state":
        folder = root / "out"
        shutil.copytree(fresh, folder)
        _trainer_state(folder, 500)
        return folder, "trainer_state.json: global_step 500"
    if case == "trainer-state-above":  # PEFT saves a named adapter in a sub-folder
        folder = root / "checkpoint" / "my_adapter"
        shutil.copytree(fresh, folder)
        _trainer_state(folder.parent, 120)
        return folder, "trainer_state.json: global_step 120"
    if case == "checkpoint-folder":
        folder = root / "run" / "checkpoint-500"
        shutil.copytree(fresh, folder)
        return folder, "checkpoint-500/: a transformers Trainer checkpoint folder, step 500"
    if case == "litgpt-step-folder":
        folder = root / "out" / "step-000010"
        shutil.copytree(fresh, folder)
        return folder, "step-000010/: a litgpt step folder, step 10"
    if case == "torchtune-epoch-folder":
        folder = root / "out" / "epoch_0"
        shutil.copytree(fresh, folder)
        return folder, "epoch_0/: a torchtune checkpoint after epoch 1"
    if case == "kohya-ss-steps":
        path = kohya_file(root / "lora.safetensors", trained=False,
                          metadata={"ss_steps": "1200", "ss_epoch": "3"})
        return path, "metadata: ss_steps = 1200 (kohya)"
    if case == "mlx-iteration":
        folder = root / "adapters"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps(
            {"fine_tune_type": "lora", "num_layers": 2,
             "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0,
                                 "keys": ["self_attn.q_proj"]}}))
        rng = np.random.default_rng(0)
        bound = 1 / np.sqrt(16)
        path = write_safetensors(folder / "0000100_adapters.safetensors", {
            f"model.layers.{i}.self_attn.q_proj.lora_a": rng.uniform(
                -bound, bound, (16, 4)).astype(np.float32) for i in range(2)} | {
            f"model.layers.{i}.self_attn.q_proj.lora_b": np.zeros((4, 16), np.float32)
            for i in range(2)})
        return path, "0000100_adapters.safetensors: an mlx-lm checkpoint of iteration 100"
    raise AssertionError(case)


EVIDENCE = ["trainer-state", "trainer-state-above", "checkpoint-folder", "litgpt-step-folder",
            "torchtune-epoch-folder", "kohya-ss-steps", "mlx-iteration"]


@pytest.mark.parametrize("case", EVIDENCE)
def test_trained_but_unmoved_is_an_lc207_error_naming_the_evidence(
        case: str, fresh: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, evidence = _evidence_case(case, fresh, tmp_path)
    code, doc = _json(capsys, "check", str(path))
    lc207 = [d for d in doc["diagnostics"] if d["code"] == "LC207"]
    assert code == 1 and len(lc207) == 1, doc["diagnostics"]
    assert lc207[0]["severity"] == "error"
    assert evidence in lc207[0]["message"], lc207[0]["message"]
    (adapter,) = doc["files"]
    assert adapter["stage"] == "trained"
    assert adapter["stage_source"] == "training-evidence"
    assert evidence in adapter["stage_evidence"]


@pytest.mark.parametrize("steps", [0])
def test_no_steps_is_no_evidence(steps: int, fresh: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """global_step 0, checkpoint-0 and ss_steps 0 say nothing was trained: still init."""
    folder = tmp_path / "checkpoint-0"
    shutil.copytree(fresh, folder)
    _trainer_state(folder, steps)
    code, doc = _json(capsys, "check", str(folder))
    assert code == 0 and doc["files"][0]["stage"] == "init", doc["diagnostics"]
    kohya = kohya_file(tmp_path / "k.safetensors", trained=False,
                       metadata={"ss_steps": "0", "ss_epoch": "0"})
    code, doc = _json(capsys, "check", str(kohya))
    assert code == 0 and doc["files"][0]["stage"] == "init", doc["diagnostics"]


def test_a_trained_checkpoint_that_moved_is_clean(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = peft_adapter(tmp_path / "checkpoint-3", steps=3)
    _trainer_state(folder, 3)
    code, doc = _json(capsys, "check", str(folder))
    assert code == 0 and [d for d in doc["diagnostics"] if d["severity"] != "info"] == []
    assert doc["files"][0]["stage"] == "trained"
    assert doc["files"][0]["stage_source"] == "weights"


def test_stage_is_a_setting_and_per_path(fresh: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(fresh, project / "released")
    evidence, _ = _evidence_case("checkpoint-folder", fresh, project)
    (project / "pyproject.toml").write_text(
        '[tool.loracheck]\nstage = "trained"\n\n'
        '[tool.loracheck.per-file-stage]\n"run/checkpoint-*" = "init"\n')
    code, doc = _json(capsys, "check", str(project / "released"), str(evidence))
    by_folder = {Path(f["path"]).name: f for f in doc["files"]}
    assert by_folder["released"]["stage"] == "trained"
    assert by_folder["released"]["stage_source"] == "settings"
    assert by_folder["checkpoint-500"]["stage"] == "init"
    assert by_folder["checkpoint-500"]["stage_source"] == "settings"
    lc207 = [d for d in doc["diagnostics"] if d["code"] == "LC207"]
    assert code == 1 and len(lc207) == 1 and "released" in lc207[0]["path"]
    assert "stage trained, set by settings" in lc207[0]["message"]
    # --stage beats the settings.
    code, doc = _json(capsys, "check", str(project / "released"), "--stage", "init")
    assert code == 0 and doc["files"][0]["stage_source"] == "command-line"


def test_a_bad_stage_setting_is_a_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "loracheck.toml").write_text('stage = "fresh"\n')
    folder = peft_adapter(tmp_path / "a")
    assert main(["check", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "loracheck.toml: `stage` must be one of auto, init, trained, not 'fresh'" in err


def test_the_evidence_holds_for_the_current_folder(
        fresh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`cd checkpoint-500 && loracheck check .` (or no path): the folder still has its name."""
    folder, _ = _evidence_case("litgpt-step-folder", fresh, tmp_path)
    monkeypatch.chdir(folder)
    for argv in (["check", "."], ["check"]):
        code, doc = _json(capsys, *argv)
        assert code == 1 and [d["code"] for d in doc["diagnostics"]] == ["LC207"], doc
    above = tmp_path / "multi" / "checkpoint" / "other"
    shutil.copytree(fresh, above)
    _trainer_state(above.parent, 300)
    monkeypatch.chdir(above)
    code, doc = _json(capsys, "check", ".")
    assert code == 1 and "global_step 300" in doc["diagnostics"][0]["message"]
