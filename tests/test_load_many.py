"""Issue 5 §6 at test size: `check` over a tree of about 200 small units (PEFT adapters healthy
and broken, kohya files, trainer configs good and bad, corrupt files, unrelated files) gives a
byte-identical report whatever the scheduling: twice with --jobs 2, and the same with --jobs 1.

benchmarks/bench_many_files.py measures files/s and peak RSS for 100 vs 1,000 units.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import builders
from loracheck.cli import main

N_UNITS = 200


def _peft(folder: Path, rng: np.random.Generator, variant: int) -> None:
    folder.mkdir(parents=True)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(2):
        for mod in ("q_proj", "v_proj"):
            base = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{base}.lora_A.weight"] = builders.kaiming_a(rng, 4, 32)
            b = rng.normal(0, 1e-2, (32, 4)).astype(np.float32)
            if variant == 1:
                b[:] = 0  # at init (or never trained)
            tensors[f"{base}.lora_B.weight"] = b
    if variant == 2:
        tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"][0, 0] = np.nan
    builders.write_safetensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
              "target_modules": ["q_proj", "v_proj"], "init_lora_weights": True}
    if variant == 3:
        config["r"] = 8  # disagrees with the weights
    (folder / "adapter_config.json").write_text(json.dumps(config))


def make_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(N_UNITS):
        kind = i % 8
        group = root / f"group{i % 7}"
        group.mkdir(parents=True, exist_ok=True)
        if kind in (0, 1, 2, 3):
            _peft(group / f"adapter{i:03d}", rng, variant=(i // 8) % 4)
        elif kind == 4:
            builders.kohya_file(group / f"kohya{i:03d}.safetensors", seed=i, trained=i % 3 > 0)
        elif kind == 5:
            dropout = 1.5 if i % 3 == 0 else 0.05
            (group / f"axolotl{i:03d}.yaml").write_text(
                f"adapter: lora\nlora_r: {4 * (1 + i % 5)}\nlora_alpha: 16\n"
                f"lora_dropout: {dropout}\nlora_target_linear: true\n")
        elif kind == 6:
            (group / f"kohya{i:03d}.toml").write_text(
                f"network_dim = {1 + i % 9}\nnetwork_alpha = {i % 4}\n")
        else:
            (group / f"truncated{i:03d}.safetensors").write_bytes(b"\x10\x00" + b"{" * (i % 50))
            (group / f"notes{i:03d}.yaml").write_text("name: ci\non: [push]\n")
    return root


def _report(root: Path, jobs: str, fmt: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["check", str(root), "--format", fmt, "--jobs", jobs, "--fail-on", "info"])
    out, err = capsys.readouterr()
    assert code == 1 and err == ""
    return out


def test_many_units_give_one_deterministic_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_tree(tmp_path / "tree")
    first = _report(root, "2", "json", capsys)
    again = _report(root, "2", "json", capsys)
    serial = _report(root, "1", "json", capsys)
    assert first == again
    assert first == serial
    doc = json.loads(first)
    # Every unit but the unrelated YAML files is in the report, with what it holds.
    assert len(doc["files"]) == N_UNITS
    codes = {d["code"] for d in doc["diagnostics"]}
    assert {"LC001", "LC103", "LC203"} <= codes
    assert sum(len(f["layers"]) for f in doc["files"]) > 300
    assert _report(root, "2", "sarif", capsys) == _report(root, "1", "sarif", capsys)


def test_small_runs_stay_in_process_unless_jobs_is_given(tmp_path: Path) -> None:
    """Issue 12, point 6: a pool pays only past start-up and round trips. Without --jobs a run
    of small files is read in this process; --jobs N is honoured; batches keep input order."""
    from loracheck.discover import discover
    from loracheck.runner import BATCH_UNITS, POOL_MIN_UNITS, _batches, worth_a_pool

    root = make_tree(tmp_path / "tree")
    units = discover([str(root)])
    heavy = [u for u in units if u.weights is not None]
    assert 1 < len(heavy) < POOL_MIN_UNITS
    assert worth_a_pool(units, None) == 1
    assert worth_a_pool(units, 2) == 2
    assert worth_a_pool(heavy[:1], 8) == 1  # one weights file: nothing to share out
    batches = _batches(units, 2)
    assert [u for batch in batches for u in batch] == list(units)
    assert all(1 <= len(batch) <= BATCH_UNITS for batch in batches)
    assert len(batches) >= 8  # at least four a worker, so the work balances
    # A run with enough bytes to pay for the pool gets one worker per CPU.
    big = tmp_path / "big"
    big.mkdir()
    for i in range(2):
        builders.write_safetensors(big / f"lora{i}.safetensors", {
            "lora_unet_x.lora_down.weight": np.zeros((8, 2**21), np.float32),
            "lora_unet_x.lora_up.weight": np.zeros((8, 8), np.float32)})
    import os

    assert worth_a_pool(discover([str(big)]), None) == min(os.cpu_count() or 1, 2)


def test_loose_configs_count_as_a_fraction_of_a_unit(tmp_path: Path) -> None:
    """A config costs a fraction of an adapter: 1,000 configs stay in this process (the pool
    was slower there), 2,000 get one worker per CPU, as 400 tiny adapters do."""
    import os

    from loracheck.discover import Unit
    from loracheck.runner import CONFIGS_PER_UNIT, POOL_MIN_UNITS, worth_a_pool

    def configs(n: int) -> list[Unit]:
        return [Unit(f"c{i}.yaml", "config", None, tmp_path / f"c{i}.yaml", explicit=False)
                for i in range(n)]

    def adapters(n: int) -> list[Unit]:
        return [Unit(f"a{i}", "weights", tmp_path / f"a{i}.safetensors", None, explicit=False)
                for i in range(n)]

    every_cpu = os.cpu_count() or 1
    assert worth_a_pool(configs(1000), None) == 1
    assert worth_a_pool(configs(POOL_MIN_UNITS * CONFIGS_PER_UNIT), None) == every_cpu
    assert worth_a_pool(adapters(POOL_MIN_UNITS - 1), None) == 1
    assert worth_a_pool(adapters(POOL_MIN_UNITS), None) == every_cpu
    # mixed: 300 adapters and 500 configs are 400 units of work
    assert worth_a_pool(adapters(300) + configs(499), None) == 1
    assert worth_a_pool(adapters(300) + configs(500), None) == every_cpu
    assert worth_a_pool(configs(1000), 2) == 2  # --jobs is honoured
