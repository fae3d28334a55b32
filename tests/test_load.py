"""The loader end to end: real adapters in, a typed Adapter out, every number checked.

For each adapter the expected rank, alpha, scale and layer count come from what the writer
used; every statistic is compared with an independent float64 computation on the materialised
ΔW = s·B·A (full SVD), to 1e-4 relative.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from builders import ALL_LINEAR, kaiming_a, kohya_file, peft_adapter, write_safetensors
from loracheck.discover import discover
from loracheck.load import load_factors, load_unit
from loracheck.model import Adapter, InitScheme, LayerRecord, Stage

REL = 1e-4


def load(path: Path, stage: str = "auto") -> Adapter:
    from loracheck.load import LoadOptions

    (unit,) = discover([path])
    adapter = load_unit(unit, LoadOptions(stage=stage))
    assert adapter is not None
    assert not adapter.faults, adapter.faults
    return adapter


def close(actual: float | None, expected: float, rel: float = REL, floor: float = 1e-12) -> bool:
    assert actual is not None
    return abs(actual - expected) <= rel * abs(expected) + floor


def check_layer_numbers(layer: LayerRecord, a: np.ndarray, b: np.ndarray, scale: float) -> None:
    """Compare the record with a float64 computation on the materialised ΔW."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    delta = scale * (b64 @ a64)
    sv = np.linalg.svd(delta, compute_uv=False)
    assert layer.a_stats is not None and layer.b_stats is not None and layer.delta is not None
    assert close(layer.a_stats.std, float(a64.std()))
    assert close(layer.b_stats.std, float(b64.std()))
    assert close(layer.a_stats.absmax, float(np.abs(a64).max()))
    assert close(layer.a_stats.mean, float(a64.mean()), floor=1e-9)
    assert layer.a_stats.zero_fraction == float(np.mean(a64 == 0))
    assert layer.b_stats.zero_fraction == float(np.mean(b64 == 0))
    # ΔW comes from r×r Gram cores, so its error is absolute, at float64 rounding of the factors'
    # own scale: 1e-8·s·‖A‖·‖B‖ bounds it. That matters only when B·A cancels (orthogonal init).
    floor = 1e-8 * scale * float(np.linalg.norm(a64) * np.linalg.norm(b64))
    assert close(layer.delta.frobenius, float(np.linalg.norm(delta)), floor=floor)
    assert close(layer.delta.sigma_max, float(sv[0]), floor=floor)
    if sv[0] > 1e4 * floor:
        p = sv / sv.sum()
        p = p[p > 0]
        assert close(layer.delta.effective_rank, float(np.exp(-(p * np.log(p)).sum())))
        assert close(layer.delta.stable_rank, float((sv**2).sum() / sv[0] ** 2))
        big = sv[sv >= 1e-3 * sv[0]]
        ours = np.array(layer.delta.singular_values[: len(big)])
        np.testing.assert_allclose(ours, big, rtol=REL)
    elif sv[0] == 0:
        assert layer.delta.effective_rank == 0.0
    if layer.a_stats.kurtosis is not None:
        centred = a64 - a64.mean()
        kurt = float((centred**4).mean() / centred.var() ** 2)
        assert close(layer.a_stats.kurtosis, kurt)


def peft_factors(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, value in tensors.items():
        for a_suffix, b_suffix in ((".lora_A.weight", ".lora_B.weight"),
                                   (".lora_embedding_A", ".lora_embedding_B")):
            if key.endswith(a_suffix):
                module = key[: -len(a_suffix)].removeprefix("base_model.model.")
                out[module] = (value, tensors[key[: -len(a_suffix)] + b_suffix])
    return out


CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "gaussian": {"init_lora_weights": "gaussian"},
    "rslora": {"use_rslora": True, "r": 8, "lora_alpha": 16},
    "dora": {"use_dora": True},
    "patterns": {"target_modules": ALL_LINEAR,
                 "rank_pattern": {"q_proj": 2, "layers.1.mlp.down_proj": 8},
                 "alpha_pattern": {"v_proj": 32}},
    "embedding": {"target_modules": ["embed_tokens", "q_proj"]},
    "pissa": {"init_lora_weights": "pissa"},
    "olora": {"init_lora_weights": "olora"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
}


@pytest.fixture(scope="module")
def peft_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    out = {}
    for name, kwargs in CASES.items():
        for steps in (0, 3):
            folder = tmp_path_factory.mktemp(f"{name}-{steps}")
            out[(name, steps)] = peft_adapter(folder, steps=steps, **kwargs)
    return out


def expected_rank_alpha(module: str, config: dict[str, Any]) -> tuple[int, float]:
    import re

    def first(pattern: dict[str, Any], default: Any) -> Any:
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    return first(config["rank_pattern"], config["r"]), float(
        first(config["alpha_pattern"], config["lora_alpha"]))


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_peft_adapters(case: str, steps: int, peft_dirs: dict[tuple[str, int], Path]) -> None:
    folder = peft_dirs[(case, steps)]
    config = json.loads((folder / "adapter_config.json").read_text())
    factors = peft_factors(folder)
    adapter = load(folder)
    assert adapter.format == "peft" and adapter.spec is not None
    assert {layer.name for layer in adapter.layers} == set(factors)
    for layer in adapter.layers:
        rank, alpha = expected_rank_alpha(layer.name, config)
        scale = alpha / math.sqrt(rank) if config["use_rslora"] else alpha / rank
        assert layer.rank == rank and layer.alpha == alpha
        assert close(layer.scaling, scale, rel=1e-12)
        a, b = factors[layer.name]
        check_layer_numbers(layer, a, b, scale)
        if case == "dora":
            assert layer.magnitude is not None and layer.magnitude_stats is not None
    if steps == 0 and case in ("default", "gaussian", "rslora", "patterns", "embedding"):
        assert adapter.stage is Stage.INIT
    if steps:
        assert adapter.stage is Stage.TRAINED
    expected_scheme = {"gaussian": InitScheme.GAUSSIAN, "pissa": InitScheme.PISSA,
                       "olora": InitScheme.OLORA, "orthogonal": InitScheme.ORTHOGONAL}
    assert adapter.init is not None
    assert adapter.init.scheme is expected_scheme.get(case, InitScheme.KAIMING_UNIFORM)


def test_stage_override(peft_dirs: dict[tuple[str, int], Path]) -> None:
    adapter = load(peft_dirs[("default", 0)], stage="trained")
    assert adapter.stage is Stage.TRAINED and adapter.stage_forced


def test_pickle_adapter_reads_like_safetensors(tmp_path: Path) -> None:
    safe = peft_adapter(tmp_path / "safe", steps=2)
    pickled = peft_adapter(tmp_path / "bin", steps=2, safe_serialization=False)
    a, b = load(safe), None
    (unit,) = discover([pickled])
    b = load_unit(unit)
    assert b is not None
    assert [f.code for f in b.faults] == ["LC215"]
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.delta is not None and lb.delta is not None
        # The same values; the fused pass (safetensors) and numpy (pickle) add in another order.
        assert la.delta.frobenius == pytest.approx(lb.delta.frobenius, rel=1e-12)


def test_kohya_scale_comes_from_each_alpha_tensor(tmp_path: Path) -> None:
    path = kohya_file(tmp_path / "k.safetensors", r=4, alpha=2.0)
    tensors = load_file(str(path))
    adapter = load(path)
    assert adapter.format == "kohya" and len(adapter.layers) == 3
    # Peers across blocks share a module type (LC209 compares within it).
    assert [layer.module_type for layer in adapter.layers] == [
        "attn1_to_q", "attn1_to_k", "self_attn_q_proj"]
    assert adapter.metadata["ss_network_dim"] == "4"
    for layer in adapter.layers:
        assert layer.alpha == 2.0 and layer.alpha_source == "tensor" and layer.scaling == 0.5
        a = tensors[f"{layer.name}.lora_down.weight"]
        b = tensors[f"{layer.name}.lora_up.weight"]
        check_layer_numbers(layer, a, b, 0.5)


def test_kohya_without_alpha_is_scale_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    name = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    path = write_safetensors(tmp_path / "old.safetensors", {
        f"{name}.lora_down.weight": kaiming_a(rng, 8, 32),
        f"{name}.lora_up.weight": rng.normal(0, 0.01, (48, 8)).astype(np.float32)})
    (layer,) = load(path).layers
    assert layer.scaling == 1.0 and layer.alpha_source == "default:kohya"


def test_mlx_is_transposed_and_uses_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "mlx"
    folder.mkdir()
    tensors = {}
    for i in range(2):
        tensors[f"model.layers.{i}.self_attn.q_proj.lora_a"] = kaiming_a(rng, 8, 64).T.copy()
        tensors[f"model.layers.{i}.self_attn.q_proj.lora_b"] = rng.normal(
            0, 0.01, (8, 96)).astype(np.float32)
    write_safetensors(folder / "adapters.safetensors", tensors, {"format": "mlx"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 2,
        "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0,
                            "keys": ["self_attn.q_proj"]}}))
    adapter = load(folder)
    assert adapter.format == "mlx" and len(adapter.layers) == 2
    for layer in adapter.layers:
        assert (layer.rank, layer.in_features, layer.out_features) == (8, 64, 96)
        assert layer.scaling == 20.0
        a = tensors[f"{layer.name}.lora_a"].T
        b = tensors[f"{layer.name}.lora_b"].T
        check_layer_numbers(layer, a, b, 20.0)


def test_llmbook_layer_has_scale_one_and_normal_init(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tensors = {}
    for i in range(4):
        tensors[f"model.layers.{i}.attn.q.A.weight"] = rng.normal(0, 0.02, (16, 256)).astype(
            np.float32)
        tensors[f"model.layers.{i}.attn.q.B.weight"] = np.zeros((256, 16), np.float32)
    path = write_safetensors(tmp_path / "llmbook.safetensors", tensors)
    adapter = load(path)
    assert adapter.format == "llmbook" and len(adapter.layers) == 4
    assert {layer.scaling for layer in adapter.layers} == {1.0}
    assert adapter.stage is Stage.INIT
    assert adapter.init is not None and adapter.init.scheme is InitScheme.NORMAL


def test_torchtune_and_diffusers_grammars(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    tt = {"layers.0.attn.q_proj.lora_a.weight": kaiming_a(rng, 4, 32),
          "layers.0.attn.q_proj.lora_b.weight": rng.normal(0, .01, (32, 4)).astype(np.float32)}
    adapter = load(write_safetensors(tmp_path / "tt.safetensors", tt))
    assert adapter.format == "torchtune" and adapter.layers[0].rank == 4
    df = {"unet.down_blocks.0.attn.to_q.lora.down.weight": kaiming_a(rng, 4, 32),
          "unet.down_blocks.0.attn.to_q.lora.up.weight": rng.normal(0, .01, (40, 4)).astype(
              np.float32)}
    adapter = load(write_safetensors(tmp_path / "df.safetensors", df))
    (layer,) = adapter.layers
    assert adapter.format == "diffusers"
    assert (layer.rank, layer.in_features, layer.out_features, layer.scaling) == (4, 32, 40, 1.0)
    check_layer_numbers(layer, df["unet.down_blocks.0.attn.to_q.lora.down.weight"],
                        df["unet.down_blocks.0.attn.to_q.lora.up.weight"], 1.0)


def test_bf16_and_fp16_are_read_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    a = kaiming_a(rng, 8, 128)
    b = rng.normal(0, 0.01, (64, 8)).astype(np.float32)
    tensors = {"base_model.model.m.lora_A.weight": a.astype(np.float16),
               "base_model.model.m.lora_B.weight": b}
    (layer,) = load(write_safetensors(tmp_path / "h.safetensors", tensors)).layers
    check_layer_numbers(layer, a.astype(np.float16).astype(np.float32), b, 1.0)
    path = write_safetensors(tmp_path / "b.safetensors", {
        "base_model.model.m.lora_A.weight": a, "base_model.model.m.lora_B.weight": b},
        bf16=frozenset({"base_model.model.m.lora_A.weight"}))
    adapter = load(path)
    assert adapter.dtypes == {"BF16": 1, "F32": 1}
    bits = a.view(np.uint32).astype(np.uint64)
    a_bf16 = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(
        np.float32)
    check_layer_numbers(adapter.layers[0], a_bf16, b, 1.0)


def test_load_factors_returns_canonical_copies(peft_dirs: dict[tuple[str, int], Path]) -> None:
    folder = peft_dirs[("default", 3)]
    adapter, factors = load_factors(folder)
    expected = peft_factors(folder)
    assert set(factors) == set(expected)
    for name, (a, b) in factors.items():
        np.testing.assert_array_equal(a, expected[name][0])
        np.testing.assert_array_equal(b, expected[name][1])
    assert len(adapter.layers) == len(factors)


@pytest.mark.parametrize("weights", ["adapter_model.safetensors", "adapter_model.bin"])
def test_an_lfs_pointer_is_one_lc003_whichever_the_weights_format(tmp_path: Path,
                                                                 weights: str) -> None:
    """The safetensors reader tells a pointer apart itself; a pickle is checked before it is
    opened (no LC215 for a file that is no pickle). Either way one LC003, with one message."""
    from loracheck.safetensors_io import LFS_POINTER_DETAIL

    folder = tmp_path / "pulled-without-lfs"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (folder / weights).write_bytes(b"version https://git-lfs.github.com/spec/v1\n"
                                   b"oid sha256:" + b"0" * 64 + b"\nsize 16800560\n")
    (unit,) = discover([folder])
    adapter = load_unit(unit)
    assert adapter is not None
    assert [(f.code, f.path, f.detail) for f in adapter.faults] == [
        ("LC003", str(folder / weights), LFS_POINTER_DETAIL)]
    assert not adapter.layers
