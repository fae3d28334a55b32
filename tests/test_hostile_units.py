"""One error boundary per unit (issue 11, point 4): an exception while reading or judging one
input becomes LC001 naming it, in-process as in a worker, and the other inputs still report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builders import kohya_file, write_safetensors
from loracheck.cli import main
from loracheck.rules.context import RuleContext


def _three_d_mlx(folder: Path) -> Path:
    folder.mkdir()
    write_safetensors(folder / "adapters.safetensors", {
        "model.layers.0.self_attn.q_proj.lora_a": np.zeros((4, 8, 2), np.float32),
        "model.layers.0.self_attn.q_proj.lora_b": np.zeros((8, 4), np.float32)})
    (folder / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "lora_parameters": {"rank": 8, "scale": 10.0}}))
    return folder


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_reader_exception_is_that_units_lc001(jobs: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    broken = _three_d_mlx(tmp_path / "mlx")
    healthy = kohya_file(tmp_path / "ok.safetensors")
    nan = kohya_file(tmp_path / "nan.safetensors", nan=True)
    code = main(["check", str(broken), str(healthy), str(nan), "--jobs", jobs])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{broken}:1:1: LC001 [error] internal error while reading: ValueError: factor" in out
    assert "LC203" in out  # the other inputs are still judged


def test_a_rule_exception_is_that_units_lc001(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from loracheck.rules import registry, weights

    def explode(ctx: object) -> object:
        raise RuntimeError("boom\nsecond line")

    broken = dataclasses.replace(weights.rank_collapse, check=explode)
    monkeypatch.setattr(registry, "RULES", tuple(
        broken if r is weights.rank_collapse else r for r in registry.RULES))
    path = kohya_file(tmp_path / "ok.safetensors")
    code = main(["check", str(path), "--jobs", "1"])
    out = capsys.readouterr().out
    assert code == 1 and "LC001 [error] internal error while judging: RuntimeError: boom" in out
    assert "second line" not in out


def test_a_rank_far_above_the_module_size_is_measured_from_the_small_side(
        tmp_path: Path) -> None:
    """A (8192, 1), B (1, 8192): 64 KB of factors whose r×r Grams would take 512 MB and
    minutes; ΔW is 1×1 and is measured as such (issue 11, point 1)."""
    from loracheck.load import load_paths

    r = 8192
    rng = np.random.default_rng(0)
    a = rng.normal(size=(r, 1)).astype(np.float32)
    b = rng.normal(size=(1, r)).astype(np.float32)
    folder = tmp_path / "wide"
    folder.mkdir()
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    write_safetensors(folder / "adapter_model.safetensors",
                      {f"{base}.lora_A.weight": a, f"{base}.lora_B.weight": b})
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (adapter,) = load_paths([str(folder)])
    (layer,) = adapter.layers
    expected = abs((b.astype(np.float64) @ a.astype(np.float64)).item()) * 16 / r
    assert layer.delta is not None and layer.delta_from is not None
    assert layer.delta_from.startswith("materialised")
    assert layer.delta.frobenius == pytest.approx(expected, rel=1e-9)
    assert layer.a_stats is not None and layer.a_stats.numel == r


def test_a_recursive_yaml_anchor_is_refused_early(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """38 bytes (``x: &a {y: *a}``) once made the line walk allocate O(n²)."""
    path = tmp_path / "train.yaml"
    path.write_text("lora_r: 8\nx: &a {y: *a}\n")
    assert main(["check", str(path)]) == 1
    assert "LC001 [error] YAML nested deeper than 64 levels refused" in capsys.readouterr().out


@pytest.mark.parametrize(("pattern", "hazard"), [
    (r"(.*)*\.q_proj", True),
    (r"(a+)+$", True),
    (r"((ab)*)*", True),
    (r".*\.(q_proj|v_proj)", False),
    (r"^(?!.*vision).*\.(q_proj|k_proj)$", False),
    (r"(?:\w+\.)*q_proj", False),  # each round ends at a literal dot: one way to split
    (r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj", False),
])
def test_catastrophic_target_regexes_are_never_run(pattern: str, hazard: bool, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``(.*)*\\.q_proj`` against a name that almost fits runs for minutes in ``re``
    (issue 11, point 2): it is reported (LC106) and never matched."""
    from loracheck.scaling import regex_hazard, target_matches

    assert (regex_hazard(pattern) is not None) is hazard
    long_name = "model.layers.0.self_attn.k_proj_" + "a" * 40
    if hazard:  # returns at once instead of backtracking
        assert target_matches(long_name, pattern) is False
        config = tmp_path / "adapter_config.json"
        config.write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                      "target_modules": pattern}))
        assert main(["check", str(config)]) == 1
        assert "exponential time" in capsys.readouterr().out


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_deadline_covers_the_rules(jobs: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A rule stuck for a minute on one unit: --timeout 0.5 makes it that unit's LC001 and the
    other unit is judged in full (issue 11, point 2). Workers are forked and inherit the patch."""
    import dataclasses
    import multiprocessing
    import time

    from loracheck.rules import registry, weights

    if jobs != "1" and multiprocessing.get_start_method() != "fork":
        pytest.skip("workers inherit the patch only when forked")
    original = weights.non_finite_values.check

    def stuck(ctx: RuleContext) -> object:
        if "stuck" in ctx.adapter.path:
            time.sleep(60)
        return original(ctx)

    slow = dataclasses.replace(weights.non_finite_values, check=stuck)
    monkeypatch.setattr(registry, "RULES", tuple(
        slow if r is weights.non_finite_values else r for r in registry.RULES))
    late = kohya_file(tmp_path / "stuck.safetensors")
    nan = kohya_file(tmp_path / "nan.safetensors", nan=True)
    start = time.perf_counter()
    code = main(["check", str(late), str(nan), "--jobs", jobs, "--timeout", "0.5"])
    out = capsys.readouterr().out
    assert time.perf_counter() - start < 20
    assert code == 1
    assert f"{late}:1:1: LC001 [error] analysis did not finish within 0.5 s" in out
    assert f"{nan}" in out and "LC203" in out


@pytest.mark.parametrize("limit", ["inf", "1e300"])
def test_an_infinite_timeout_is_no_limit(limit: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = kohya_file(tmp_path / "ok.safetensors")
    code = main(["check", str(path), "--timeout", limit])
    out = capsys.readouterr().out
    assert code == 0 and "LC001" not in out, out


def test_a_layer_too_costly_for_the_time_left_is_refused_up_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One full-rank 1536 × 1536 layer: its Grams and eigh run inside LAPACK, where no signal
    reaches, for about a second. Under --timeout 0.3 the cost is known before it starts, so the
    unit is refused at once instead of overrunning (issue 11, point 2)."""
    import time

    r = 1536
    rng = np.random.default_rng(0)
    folder = tmp_path / "full"
    folder.mkdir()
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    write_safetensors(folder / "adapter_model.safetensors", {
        f"{base}.lora_A.weight": rng.normal(size=(r, r)).astype(np.float32),
        f"{base}.lora_B.weight": rng.normal(size=(r, r)).astype(np.float32)})
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    start = time.perf_counter()
    code = main(["check", str(folder), "--timeout", "0.3"])
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert code == 1
    assert "LC001 [error] analysis would not finish within 0.3 s (--timeout)" in out, out
    assert "q_proj (r 1536, 1536×1536) alone needs about" in out
    assert elapsed < 0.3 + 0.5, elapsed
    # With time enough, the same layer is measured.
    assert main(["check", str(folder), "--timeout", "60"]) in (0, 1)
    assert "LC001" not in capsys.readouterr().out


def test_a_deadline_inside_a_reader_is_not_taken_for_a_corrupt_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The pickle reader turns any Exception from the unpickler into "malformed pickle": the
    deadline must pass through it and be reported as the time limit it is."""
    import time

    import torch

    from loracheck import pickle_io

    folder = tmp_path / "bin"
    folder.mkdir()
    base = "base_model.model.model.layers.0.self_attn.q_proj"
    torch.save({f"{base}.lora_A.weight": torch.zeros(4, 16),
                f"{base}.lora_B.weight": torch.zeros(16, 4)}, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))

    def slow_prescan(data: bytes) -> None:  # the unpickler's own work, made slow
        time.sleep(60)

    monkeypatch.setattr(pickle_io, "_prescan", slow_prescan)
    assert main(["check", str(folder), "--timeout", "0.3", "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "analysis did not finish within 0.3 s" in out and "malformed" not in out, out
