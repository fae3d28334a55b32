"""Key grammars: real PEFT files, and hand-written files in the other published grammars."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from builders import ALL_LINEAR, TINY_LLAMA, kohya_file, peft_adapter, write_safetensors
from loracheck.keys import PairKeys, canonical_shapes, group_keys, to_canonical

H, INTER, V = TINY_LLAMA["hidden_size"], TINY_LLAMA["intermediate_size"], TINY_LLAMA["vocab_size"]
KV = H // TINY_LLAMA["num_attention_heads"] * TINY_LLAMA["num_key_value_heads"]
# (in, out) of every Llama linear layer
LLAMA_DIMS = {
    "q_proj": (H, H),
    "k_proj": (H, KV),
    "v_proj": (H, KV),
    "o_proj": (H, H),
    "gate_proj": (H, INTER),
    "up_proj": (H, INTER),
    "down_proj": (INTER, H),
}


def shapes_of(tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


@pytest.fixture(scope="module")
def peft_full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """All linear layers + embed_tokens, DoRA, lm_head in modules_to_save."""
    out = tmp_path_factory.mktemp("peft_full")
    peft_adapter(
        out,
        r=4,
        target_modules=[*ALL_LINEAR, "embed_tokens"],
        use_dora=True,
        modules_to_save=["lm_head"],
    )
    return load_file(str(out / "adapter_model.safetensors"))


def test_peft_full_grouping(peft_full: dict[str, np.ndarray]) -> None:
    shapes = shapes_of(peft_full)
    g = group_keys(shapes)
    assert g.grammar == "peft" and g.variant == "lora" and g.orphans == []
    layers = TINY_LLAMA["num_hidden_layers"]
    assert len(g.pairs) == layers * len(ALL_LINEAR) + 1
    by_module = {p.module: p for p in g.pairs}
    emb = by_module["model.embed_tokens"]
    assert emb.kind == "embedding"
    assert emb.a_key == "base_model.model.model.embed_tokens.lora_embedding_A"
    assert canonical_shapes(emb, shapes[emb.a_key], shapes[emb.b_key or ""]) == (4, V, H)
    for li in range(layers):
        for proj, (in_f, out_f) in LLAMA_DIMS.items():
            sub = "self_attn" if proj.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            p = by_module[f"model.layers.{li}.{sub}.{proj}"]
            assert p.kind == "linear" and p.grammar == "peft" and not p.transposed
            assert p.magnitude_key == f"base_model.model.{p.module}.lora_magnitude_vector"
            assert p.a_key is not None and p.b_key is not None
            assert canonical_shapes(p, shapes[p.a_key], shapes[p.b_key]) == (4, in_f, out_f)
    roles = dict(g.extras)
    assert roles == {
        "base_model.model.model.embed_tokens.base_layer.weight": "base_layer",
        "base_model.model.lm_head.weight": "modules_to_save",
    }


def test_peft_in_memory_adapter_name_and_conv(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3)
            self.conv1 = torch.nn.Conv1d(4, 5, 3)
            self.lin = torch.nn.Linear(10, 5)

    torch.manual_seed(0)
    cfg = LoraConfig(
        r=2, target_modules=["conv", "conv1", "lin"], lora_bias=True, init_lora_weights=False
    )
    model = get_peft_model(Net(), cfg, adapter_name="my_adapter")
    # the live state dict keeps the adapter name and the base layers
    live = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    g = group_keys(live)
    assert {p.module for p in g.pairs} == {"conv", "conv1", "lin"}
    assert all(p.a_key and ".lora_A.my_adapter.weight" in p.a_key for p in g.pairs)
    assert {r for _, r in g.extras} == {"base_layer", "bias"}
    model.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "my_adapter" / "adapter_model.safetensors"))
    g = group_keys(shapes_of(saved))
    by = {p.module: p for p in g.pairs}
    assert by["conv"].kind == "conv" and by["conv1"].kind == "conv" and by["lin"].kind == "linear"
    assert by["lin"].bias_key == "base_model.model.lin.lora_B.bias"
    assert canonical_shapes(by["conv"], (2, 3, 3, 3), (6, 2, 1, 1)) == (2, 27, 6)
    p = by["conv1"]
    assert p.a_key is not None and p.b_key is not None
    a, b = to_canonical(p, saved[p.a_key], saved[p.b_key])
    assert a.shape == (2, 12) and b.shape == (5, 2)
    assert np.shares_memory(a, saved[p.a_key]) and np.shares_memory(b, saved[p.b_key])
    assert g.extras == []


def test_peft_token_adapter_and_orphan(tmp_path: Path) -> None:
    peft_adapter(tmp_path, target_modules=["q_proj"], trainable_token_indices={"embed_tokens": [1]})
    shapes = shapes_of(load_file(str(tmp_path / "adapter_model.safetensors")))
    g = group_keys(shapes)
    assert len(g.pairs) == 2
    assert g.extras == [
        (
            "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
            "token_adapter",
        )
    ]
    b_key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    del shapes[b_key]
    g = group_keys(shapes)
    assert len(g.pairs) == 1
    assert g.orphans == ["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]


def test_peft_variant_tensors_are_extras() -> None:
    m = "base_model.model.model.layers.0.self_attn.q_proj"
    shapes = {
        f"{m}.lora_A.weight": (4, 64),
        f"{m}.lora_B.weight": (64, 4),
        f"{m}.lora_velora_embed": (4,),
        f"{m}.lora_diag": (4,),
        f"{m}.lora_monteclora_sampler.expert_weights": (2, 4),
    }
    g = group_keys(shapes)
    assert len(g.pairs) == 1
    assert sorted(r for _, r in g.extras) == ["variant"] * 3


def test_kohya(tmp_path: Path) -> None:
    path = kohya_file(tmp_path / "k.safetensors", r=4)
    shapes = shapes_of(load_file(str(path)))
    g = group_keys(shapes)
    assert g.grammar == "kohya" and g.variant == "lora" and not g.extras and not g.orphans
    mods = {p.module: p for p in g.pairs}
    assert set(mods) == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    }
    te = mods["lora_te_text_model_encoder_layers_0_self_attn_q_proj"]
    assert te.alpha_key == "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"
    assert te.a_key is not None and te.b_key is not None
    assert canonical_shapes(te, shapes[te.a_key], shapes[te.b_key]) == (4, 48, 48)


def test_lycoris_locon_loha_lokr() -> None:
    shapes: dict[str, tuple[int, ...]] = {
        "lora_unet_conv_in.lora_down.weight": (4, 3, 3, 3),
        "lora_unet_conv_in.lora_mid.weight": (4, 4, 3, 3),
        "lora_unet_conv_in.lora_up.weight": (8, 4, 1, 1),
        "lora_unet_conv_in.alpha": (),
        "lora_te1_q.lora_down.weight": (4, 32),
        "lora_te1_q.lora_up.weight": (32, 4),
        "lora_te1_q.dora_scale": (32, 1),
        "lora_te2_k.hada_w1_a": (32, 4),
        "lora_te2_k.hada_w1_b": (4, 32),
        "lora_te2_k.hada_w2_a": (32, 4),
        "lora_te2_k.hada_w2_b": (4, 32),
        "lora_te2_k.alpha": (),
        "lora_te3_v.lokr_w1": (4, 4),
        "lora_te3_v.lokr_w2_a": (8, 2),
        "lora_te3_v.lokr_w2_b": (2, 8),
        "lora_te3_v.alpha": (),
        "lora_te_plain.lora_down.weight": (2, 16),
        "lora_te_plain.lora_up.weight": (16, 2),
    }
    g = group_keys(shapes)
    by = {p.module: p for p in g.pairs}
    assert g.variant == "mixed" and not g.orphans and not g.extras
    conv = by["lora_unet_conv_in"]
    assert conv.kind == "conv" and conv.grammar == "lycoris"
    assert conv.extra_keys == ("lora_unet_conv_in.lora_mid.weight",)
    assert conv.alpha_key == "lora_unet_conv_in.alpha"
    assert by["lora_te1_q"].magnitude_key == "lora_te1_q.dora_scale"
    assert by["lora_te1_q"].grammar == "lycoris"
    assert by["lora_te_plain"].grammar == "kohya"
    loha, lokr = by["lora_te2_k"], by["lora_te3_v"]
    assert (loha.kind, loha.a_key, loha.b_key, len(loha.extra_keys)) == ("loha", None, None, 4)
    assert loha.alpha_key == "lora_te2_k.alpha"
    assert (lokr.kind, len(lokr.extra_keys)) == ("lokr", 3)
    assert group_keys({k: v for k, v in shapes.items() if "hada" in k}).variant == "loha"


def test_diffusers_styles() -> None:
    u = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    t = "text_encoder.text_model.encoder.layers.0.self_attn"
    shapes: dict[str, tuple[int, ...]] = {
        f"{u}.to_q.lora.down.weight": (4, 64),
        f"{u}.to_q.lora.up.weight": (64, 4),
        f"{t}.q_proj.lora_linear_layer.down.weight": (4, 32),
        f"{t}.q_proj.lora_linear_layer.up.weight": (32, 4),
        f"{u}.processor.to_k_lora.down.weight": (4, 64),
        f"{u}.processor.to_k_lora.up.weight": (64, 4),
        f"{u}.processor.to_out_lora.down.weight": (4, 64),
        f"{u}.processor.to_out_lora.up.weight": (64, 4),
        "transformer.single_transformer_blocks.0.attn.to_v.lora_A.weight": (4, 48),
        "transformer.single_transformer_blocks.0.attn.to_v.lora_B.weight": (48, 4),
        "transformer.single_transformer_blocks.0.attn.to_v.lora_magnitude_vector": (48,),
    }
    g = group_keys(shapes)
    assert g.grammar == "diffusers" and not g.extras and not g.orphans
    assert {p.module for p in g.pairs} == {
        f"{u}.to_q",
        f"{t}.q_proj",
        f"{u}.to_k",
        f"{u}.to_out.0",
        "transformer.single_transformer_blocks.0.attn.to_v",
    }
    assert all(p.grammar == "diffusers" for p in g.pairs)
    flux = next(p for p in g.pairs if p.module.startswith("transformer."))
    assert flux.magnitude_key is not None


def test_llmbook_torchtune_litgpt() -> None:
    rng = np.random.default_rng(0)
    book = {
        "model.layers.0.self_attn.q_proj.A.weight": (8, 64),
        "model.layers.0.self_attn.q_proj.B.weight": (64, 8),
        # shapes that do not chain are not an LLMBook pair
        "encoder.block.A.weight": (8, 64),
        "encoder.block.B.weight": (64, 3),
    }
    g = group_keys(book)
    assert [(p.module, p.grammar) for p in g.pairs] == [
        ("model.layers.0.self_attn.q_proj", "llmbook")
    ]
    assert sorted(r for _, r in g.extras) == ["unknown", "unknown"] and not g.orphans
    tt = {
        "layers.0.attn.q_proj.lora_a.weight": (8, 64),
        "layers.0.attn.q_proj.lora_b.weight": (64, 8),
        "layers.0.attn.q_proj.magnitude": (64,),
        "layers.0.mlp.w1.lora_a.weight": (8, 64),
        "layers.0.mlp.w1.lora_b.weight": (96, 8),
    }
    g = group_keys(tt)
    assert g.grammar == "torchtune" and len(g.pairs) == 2 and not g.extras
    assert g.pairs[0].magnitude_key == "layers.0.attn.q_proj.magnitude"
    lit = {
        "transformer.h.0.attn.qkv.lora_A": (4, 64),
        "transformer.h.0.attn.qkv.lora_B": (192, 4),
    }
    g = group_keys(lit)
    (p,) = g.pairs
    assert (p.module, p.grammar, p.transposed) == ("transformer.h.0.attn.qkv", "litgpt", False)
    a, b = to_canonical(p, rng.normal(size=(4, 64)), rng.normal(size=(192, 4)))
    assert a.shape == (4, 64) and b.shape == (192, 4)


def test_mlx_transposed(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        "model.layers.0.self_attn.q_proj.lora_a": rng.uniform(-0.1, 0.1, (64, 8)),
        "model.layers.0.self_attn.q_proj.lora_b": np.zeros((8, 32)),
        "model.layers.0.self_attn.q_proj.m": np.ones(32),
        "model.layers.0.mlp.up_proj.lora_a": rng.uniform(-0.1, 0.1, (64, 8)),
        "model.layers.0.mlp.up_proj.lora_b": rng.normal(size=(8, 96)),
    }
    path = write_safetensors(
        tmp_path / "adapters.safetensors",
        {k: v.astype(np.float32) for k, v in tensors.items()},
        {"format": "mlx"},
    )
    loaded = load_file(str(path))
    g = group_keys(shapes_of(loaded))
    assert g.grammar == "mlx" and len(g.pairs) == 2 and not g.extras
    by = {p.module: p for p in g.pairs}
    q = by["model.layers.0.self_attn.q_proj"]
    assert q.transposed and q.magnitude_key == "model.layers.0.self_attn.q_proj.m"
    assert canonical_shapes(q, (64, 8), (8, 32)) == (8, 64, 32)
    up = by["model.layers.0.mlp.up_proj"]
    assert up.a_key is not None and up.b_key is not None
    a, b = to_canonical(up, loaded[up.a_key], loaded[up.b_key])
    assert a.shape == (8, 64) and b.shape == (96, 8)
    assert np.shares_memory(a, loaded[up.a_key])
    a64, b64 = loaded[up.a_key].astype(np.float64), loaded[up.b_key].astype(np.float64)
    np.testing.assert_allclose(
        b.astype(np.float64) @ a.astype(np.float64), (a64 @ b64).T, rtol=1e-12, atol=1e-15
    )


def test_mismatched_inner_dims_still_pair_and_empty() -> None:
    g = group_keys({"x.lora_A.weight": (4, 10), "x.lora_B.weight": (5, 3)})
    (p,) = g.pairs
    assert canonical_shapes(p, (4, 10), (5, 3)) == (4, 10, 5)
    none = group_keys({"model.embed_tokens.weight": (10, 4), "lm_head.weight": (10, 4)})
    assert none.pairs == [] and none.grammar is None and none.variant == "none"
    assert {r for _, r in none.extras} == {"unknown"}
    # a ZeRO-3 shard left 1-D: no crash, zero dimensions where it has none
    p1 = PairKeys("x", "linear", "peft", "x.lora_A.weight", "x.lora_B.weight")
    assert canonical_shapes(p1, (0,), (5, 4)) == (0, 0, 5)


def _llama7b_keys() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    dims: dict[str, Any] = {
        "q_proj": (4096, 4096),
        "k_proj": (4096, 4096),
        "v_proj": (4096, 4096),
        "o_proj": (4096, 4096),
        "gate_proj": (4096, 11008),
        "up_proj": (4096, 11008),
        "down_proj": (11008, 4096),
    }
    for li in range(32):
        for proj, (in_f, out_f) in dims.items():
            sub = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            m = f"base_model.model.model.layers.{li}.{sub}.{proj}"
            keys[f"{m}.lora_A.weight"] = (16, in_f)
            keys[f"{m}.lora_B.weight"] = (out_f, 16)
    return keys


def test_group_keys_is_fast_on_7b() -> None:
    keys = _llama7b_keys()
    assert len(keys) == 448
    group_keys(keys)
    best = min(_timed(keys) for _ in range(5))
    assert len(group_keys(keys).pairs) == 224
    assert best < 5e-3, f"group_keys took {best * 1e3:.2f} ms"


def _timed(keys: dict[str, tuple[int, ...]]) -> float:
    t0 = time.perf_counter()
    group_keys(keys)
    return time.perf_counter() - t0
