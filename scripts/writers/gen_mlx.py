#!/usr/bin/env python3
"""Generate real mlx-lm LoRA and DoRA adapter fixtures with the real trainer.

Writer under test: ``mlx_lm lora`` (mlx-lm 0.32.2 on mlx 0.32.4, CPU backend
``mlx-cpu`` 0.32.4, Linux x86_64, Python 3.11). The adapters are produced by
the real CLI trainer (``python -m mlx_lm lora --train ...``) on a tiny random
llama model, then loaded back with mlx-lm's own ``load_adapters`` (which calls
``linear_to_lora_layers``) to compute ground truth from the writer's own
modules (``LoRALinear.fuse`` / ``DoRALinear.fuse``).

This script must run in its own venv, never in the project venv::

    python3 -m venv /tmp/venv-mlx
    /tmp/venv-mlx/bin/pip install "mlx[cpu]==0.32.4" mlx-lm==0.32.2
    /tmp/venv-mlx/bin/python scripts/writers/gen_mlx.py \
        [--out tests/fixtures/writers/mlx] [--work /tmp/mlx-work]

(``tokenizers``, ``transformers``, ``safetensors`` and ``numpy`` come in as
mlx-lm dependencies.) No network is used: model, tokenizer and data are built
locally with fixed seeds.

Outputs, per fine-tune type (``lora``, ``dora``) under ``--out/<type>/``:
``adapters.safetensors``, ``0000005_adapters.safetensors`` (the checkpoint the
trainer writes at ``--save-every``), ``adapter_config.json`` (verbatim from the
trainer) and ``truth.json`` (ground truth computed here).

Ground truth per adapted module:
  * LoRA:  dW = fuse().weight - W0 = scale * lora_b.T @ lora_a.T
    (file stores lora_a as (in, r) and lora_b as (r, out)).
  * DoRA:  dW = fuse().weight - W0 = m[:,None] * V / ||V||_row - W0 with
    V = W0 + scale * lora_b.T @ lora_a.T, m the stored magnitude (out,).
Values are computed in float32 by mlx and reported as float64.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

SEED = 1234
ITERS = 5
RANK = 4
SCALE = 10.0
NUM_LAYERS = 2
LEARNING_RATE = 1e-4  # realistic: dW stays small relative to W0
KEYS = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]

MODEL_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "in", "under", "over",
    "mat", "rug", "red", "blue", "big", "small", "fast", "slow", "house",
    "tree", "sun", "moon", "and", "then", "it", "is", "was", "very",
]  # fmt: skip


def write_model(model_dir: Path) -> None:
    """Write config.json, seeded random HF-layout safetensors, and a tokenizer."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    model_dir.mkdir(parents=True, exist_ok=True)
    c = MODEL_CONFIG
    rng = np.random.default_rng(SEED)
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = c["head_dim"]
    nq, nkv = c["num_attention_heads"], c["num_key_value_heads"]

    def w(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * 0.1).astype(np.float32)

    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": w(v, h),
        "model.norm.weight": np.ones(h, np.float32),
        "lm_head.weight": w(v, h),
    }
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        tensors[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "self_attn.q_proj.weight"] = w(nq * hd, h)
        tensors[p + "self_attn.k_proj.weight"] = w(nkv * hd, h)
        tensors[p + "self_attn.v_proj.weight"] = w(nkv * hd, h)
        tensors[p + "self_attn.o_proj.weight"] = w(h, nq * hd)
        tensors[p + "mlp.gate_proj.weight"] = w(i, h)
        tensors[p + "mlp.up_proj.weight"] = w(i, h)
        tensors[p + "mlp.down_proj.weight"] = w(h, i)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    (model_dir / "config.json").write_text(json.dumps(c, indent=2))

    # Word-level tokenizer: specials + words + filler up to vocab_size.
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= v
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "model_max_length": 128,
            },
            indent=2,
        )
    )


def write_data(data_dir: Path) -> None:
    """Write tiny train/valid jsonl files of {"text": ...} lines."""
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)

    def lines(n: int) -> str:
        out = []
        for _ in range(n):
            k = int(rng.integers(6, 12))
            out.append(json.dumps({"text": " ".join(rng.choice(WORDS, size=k))}))
        return "\n".join(out) + "\n"

    (data_dir / "train.jsonl").write_text(lines(16))
    (data_dir / "valid.jsonl").write_text(lines(4))


def write_train_config(path: Path, fine_tune_type: str) -> None:
    """Write the YAML config passed to the trainer with -c."""
    import yaml

    cfg = {
        "fine_tune_type": fine_tune_type,
        "lora_parameters": {"rank": RANK, "scale": SCALE, "dropout": 0.0, "keys": KEYS},
        "learning_rate": LEARNING_RATE,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_trainer(work: Path, fine_tune_type: str) -> Path:
    """Run the real CLI trainer; return the adapter folder (relative paths in cwd)."""
    cfg = work / f"{fine_tune_type}.yaml"
    write_train_config(cfg, fine_tune_type)
    adapter_rel = f"adapters_{fine_tune_type}"
    shutil.rmtree(work / adapter_rel, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "mlx_lm", "lora",
        "--model", "model", "--train", "--data", "data",
        "-c", cfg.name,
        "--fine-tune-type", fine_tune_type,
        "--iters", str(ITERS), "--batch-size", "2",
        "--num-layers", str(NUM_LAYERS),
        "--steps-per-report", "1", "--steps-per-eval", str(ITERS),
        "--val-batches", "1", "--save-every", str(ITERS),
        "--seed", str(SEED),
        "--adapter-path", adapter_rel,
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=work, env=env, check=True)
    return work / adapter_rel


def compute_truth(work: Path, adapter_dir: Path, fine_tune_type: str) -> dict[str, Any]:
    """Load the adapter with mlx-lm's own code and compute dW per module."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.dora import DoRALinear
    from mlx_lm.tuner.lora import LoRALinear
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load

    model, _tok = load(str(work / "model"))
    base = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    load_adapters(model, str(adapter_dir))
    stored = mx.load(str(adapter_dir / "adapters.safetensors"))
    cls = DoRALinear if fine_tune_type == "dora" else LoRALinear

    modules: list[dict[str, Any]] = []
    for name, mod in model.named_modules():
        if type(mod) is not cls:
            continue
        prefix = name  # e.g. model.layers.0.self_attn.q_proj
        w0 = base[f"{prefix}.weight"].astype(np.float64)
        fused = mod.fuse(dequantize=True)
        w1 = np.array(fused.weight.astype(mx.float32)).astype(np.float64)
        dw = w1 - w0
        a = np.array(mod.lora_a).astype(np.float64)  # (in, r)
        b = np.array(mod.lora_b).astype(np.float64)  # (r, out)
        # Independent check of the formula against the writer's fuse().
        lora_dw = mod.scale * b.T @ a.T
        if fine_tune_type == "lora":
            assert np.allclose(dw, lora_dw, atol=1e-5), prefix
        else:
            m = np.array(mod.m).astype(np.float64)
            v = w0 + lora_dw
            ref = m[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)
            assert np.allclose(w1, ref, atol=1e-5), prefix
        np.testing.assert_array_equal(np.array(stored[f"{prefix}.lora_a"]), np.array(mod.lora_a))
        out_dims, in_dims = w0.shape
        sv = np.linalg.svd(dw, compute_uv=False)
        entry: dict[str, Any] = {
            "prefix": prefix,
            "lora_a_key": f"{prefix}.lora_a",
            "lora_a_shape": list(stored[f"{prefix}.lora_a"].shape),
            "lora_b_key": f"{prefix}.lora_b",
            "lora_b_shape": list(stored[f"{prefix}.lora_b"].shape),
            "dtype": str(stored[f"{prefix}.lora_a"].dtype).replace("mlx.core.", ""),
            "rank": int(a.shape[1]),
            "scale": float(mod.scale),
            "in_features": int(in_dims),
            "out_features": int(out_dims),
            "delta_fro": float(np.linalg.norm(dw)),
            "lora_only_delta_fro": float(np.linalg.norm(lora_dw)),
            "top_singular_values": [float(s) for s in sv[:6]],
            "base_weight_fro": float(np.linalg.norm(w0)),
        }
        if fine_tune_type == "dora":
            mk = f"{prefix}.m"
            entry["magnitude_key"] = mk
            entry["magnitude_shape"] = list(stored[mk].shape)
            entry["magnitude_fro"] = float(np.linalg.norm(np.array(stored[mk])))
            row = np.linalg.norm(w0, axis=1)
            entry["base_row_norm_fro"] = float(np.linalg.norm(row))
            entry["base_row_norms"] = [float(x) for x in row]
            entry["max_abs_m_minus_base_row_norm"] = float(
                np.max(np.abs(np.array(stored[mk]).astype(np.float64) - row))
            )
        modules.append(entry)

    dora_note = "; DoRA: m * V/||V||_row - W0, V = W0 + scale*B^T A^T"
    return {
        "writer": "mlx_lm lora (CLI trainer)",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "fine_tune_type": fine_tune_type,
        "iters": ITERS,
        "learning_rate": LEARNING_RATE,
        "seed": SEED,
        "base_model_config": MODEL_CONFIG,
        "orientation": {
            "lora_a": "(in_features, r)",
            "lora_b": "(r, out_features)",
            "delta_w": "scale * lora_b.T @ lora_a.T  -> (out, in)",
        },
        "delta_definition": (
            "fuse().weight - base weight, float32 -> float64"
            + (dora_note if fine_tune_type == "dora" else "")
        ),
        "file_keys": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("mlx.core.", "")}
                      for k, v in sorted(stored.items())},
        "modules": modules,
    }  # fmt: skip


def main() -> None:
    """Build model/data, train LoRA and DoRA, compute truth, copy fixtures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=Path, default=root / "tests/fixtures/writers/mlx")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlx-work"))
    args = ap.parse_args()

    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    write_model(work / "model")
    write_data(work / "data")

    for ftt in ("lora", "dora"):
        adir = run_trainer(work, ftt)
        truth = compute_truth(work, adir, ftt)
        dest = args.out / ftt
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for f in sorted(adir.iterdir()):
            if f.name.endswith(".safetensors") or f.name == "adapter_config.json":
                shutil.copy2(f, dest / f.name)
        (dest / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
        print(f"wrote {dest}: {sorted(p.name for p in dest.iterdir())}")


if __name__ == "__main__":
    main()
