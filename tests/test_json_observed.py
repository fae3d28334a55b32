"""JSON for files without a config (issue 10, point 5): rank, alpha and scale observed from
the weights, with their origin; an LLMBook normal init named with its σ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from builders import kohya_file, write_safetensors
from loracheck.load import load_paths
from loracheck.model import Report
from loracheck.render import render_json


def _file_json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(render_json(Report(adapters=load_paths([str(path)]))))["files"][0]


def test_kohya_file_without_config_reports_rank_and_alpha_from_the_weights(
        tmp_path: Path) -> None:
    body = _file_json(kohya_file(tmp_path / "k.safetensors", r=4, alpha=2.0))
    assert body["spec"] is None
    assert body["observed"]["rank"] == {"value": 4, "min": 4, "max": 4, "origin": "weights"}
    assert body["observed"]["alpha"]["value"] == 2.0
    assert body["observed"]["alpha"]["origin"] == "weights"
    assert body["observed"]["scaling"]["value"] == 0.5


def test_a_normal_002_init_is_named_llmbook(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {}
    for i, fan_in in enumerate((256, 512, 256, 512)):
        key = f"model.layers.{i}.self_attn.q_proj"
        tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.02, (16, fan_in)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = np.zeros((256, 16), dtype=np.float32)
    body = _file_json(write_safetensors(tmp_path / "llmbook.safetensors", tensors))
    assert body["init_scheme"]["label"] == "normal σ = 0.02 (LLMBook)"
    assert body["init_scheme"]["expected_std"] == 0.02
    assert body["layers"][0]["delta_from"] == "low-rank"
