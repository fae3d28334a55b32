"""Weights laid out so that their consumers misread them (issue 10, point 4): keys no loader
reads (LC216), a kohya .alpha that is not one number (LC216), DoRA magnitudes behind a config
without use_dora (LC214). The healthy file beside each fires nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from builders import kohya_file, write_safetensors
from loracheck.engine import check_adapter
from loracheck.load import load_paths
from loracheck.settings import Settings


def _codes(path: Path) -> list[str]:
    (adapter,) = load_paths([str(path)])
    return [d.code for d in check_adapter(adapter, Settings())]


def test_healthy_kohya_file_fires_nothing(tmp_path: Path) -> None:
    assert _codes(kohya_file(tmp_path / "ok.safetensors")) == []


def test_half_converted_kohya_keys_are_lc216(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {
        f"{name}_lora.down.weight": rng.normal(0, 0.1, (4, 64)).astype(np.float32),
        f"{name}_lora.up.weight": rng.normal(0, 0.01, (64, 4)).astype(np.float32),
    }
    path = write_safetensors(tmp_path / "mixed.safetensors", tensors,
                             {"ss_network_module": "networks.lora"})
    (adapter,) = load_paths([str(path)])
    found = [d for d in check_adapter(adapter, Settings()) if d.code == "LC216"]
    assert len(found) == 1 and "neither kohya, diffusers nor PEFT" in found[0].message
    assert found[0].location == f"{name}_lora.down.weight"


def test_kohya_alpha_of_the_wrong_shape_is_lc216(tmp_path: Path) -> None:
    path = kohya_file(tmp_path / "a.safetensors")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith(".alpha"))
    tensors[key] = np.full((4,), 2.0, dtype=np.float32)
    save_file(tensors, str(tmp_path / "bad.safetensors"), {"ss_network_module": "networks.lora"})
    (adapter,) = load_paths([str(tmp_path / "bad.safetensors")])
    found = [d for d in check_adapter(adapter, Settings()) if d.code == "LC216"]
    assert len(found) == 1 and found[0].location == key and "(4,)" in found[0].message


def test_dora_weights_behind_a_config_without_use_dora_is_lc214(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {}
    for i in range(2):
        base = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{base}.lora_A.weight"] = rng.normal(0, 0.1, (4, 32)).astype(np.float32)
        tensors[f"{base}.lora_B.weight"] = rng.normal(0, 0.01, (32, 4)).astype(np.float32)
        tensors[f"{base}.lora_magnitude_vector"] = rng.uniform(0.5, 1.5, (32,)).astype(np.float32)
    folder = tmp_path / "dora"
    folder.mkdir()
    write_safetensors(folder / "adapter_model.safetensors", tensors)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "LC214" in _codes(folder)
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    assert "LC214" not in _codes(folder)
