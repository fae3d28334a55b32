"""Base-model rules LC250/LC251, and basemodel.py reading headers only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builders import write_safetensors
from loracheck.basemodel import read_base_model
from loracheck.errors import UsageError
from rule_factories import ExtraTensor, adapter, codes, layer, layers, run, spec


def base_folder(tmp: Path, *, vocab: int = 128, layers_: int = 5, sharded: bool = False) -> Path:
    tensors = {"model.embed_tokens.weight": np.zeros((vocab, 64), np.float32),
               "lm_head.weight": np.zeros((vocab, 64), np.float32)}
    for i in range(layers_):
        for m in ("q_proj", "v_proj"):
            tensors[f"model.layers.{i}.self_attn.{m}.weight"] = np.zeros((64, 64), np.float32)
    cfg = {"vocab_size": vocab, "hidden_size": 64, "tie_word_embeddings": False}
    (tmp / "config.json").write_text(json.dumps(cfg))
    if sharded:
        keys = sorted(tensors)
        half = len(keys) // 2
        parts = {"model-00001-of-00002.safetensors": keys[:half],
                 "model-00002-of-00002.safetensors": keys[half:]}
        weight_map = {}
        for fname, ks in parts.items():
            write_safetensors(tmp / fname, {k: tensors[k] for k in ks})
            weight_map.update({k: fname for k in ks})
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        write_safetensors(tmp / "model.safetensors", tensors)
    return tmp


@pytest.mark.parametrize("sharded", [False, True])
def test_read_base_model(tmp_path: Path, sharded: bool) -> None:
    info = read_base_model(base_folder(tmp_path, sharded=sharded))
    assert info.vocab_size == 128 and info.hidden_size == 64
    assert info.modules["model.layers.0.self_attn.q_proj"].shape == (64, 64)
    assert info.find("base_model.model.model.layers.0.self_attn.q_proj") is not None


def test_read_base_model_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        read_base_model(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"config\.json"):
        read_base_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="no safetensors"):
        read_base_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(UsageError, match="header"):
        read_base_model(tmp_path)


def test_matching_base_fires_nothing(tmp_path: Path) -> None:
    base = read_base_model(base_folder(tmp_path))
    assert codes(adapter(), base=base) == set()


def test_lc250_module_absent_or_misfit(tmp_path: Path) -> None:
    base = read_base_model(base_folder(tmp_path, layers_=3))
    diags = run(adapter(), base=base)
    assert {d.code for d in diags} == {"LC250"}
    assert "4 modules not in the base" in diags[0].message
    wide = layers(n_in=128, n_out=128)
    diags = run(adapter(wide), base=read_base_model(base_folder(tmp_path)))
    assert {d.code for d in diags} == {"LC250"} and "does not fit" in diags[0].message


def test_lc251_vocab(tmp_path: Path) -> None:
    base = read_base_model(base_folder(tmp_path))
    emb = layer("base_model.model.model.embed_tokens", kind="embedding", n_in=130, n_out=64)
    ad = adapter([*layers(), emb], spec_=spec(target_modules=["q_proj", "v_proj",
                                                              "embed_tokens"]))
    diags = run(ad, base=base)
    assert {d.code for d in diags} == {"LC251"}, [(d.code, d.message) for d in diags]
    head = ExtraTensor("base_model.model.lm_head.weight", "F32", (132, 64), 0, "modules_to_save")
    diags = run(adapter(extra_tensors=[head]), base=base)
    assert {d.code for d in diags} == {"LC251"}
    ok = ExtraTensor("base_model.model.lm_head.weight", "F32", (128, 64), 0, "modules_to_save")
    assert codes(adapter(extra_tensors=[ok]), base=base) == set()
