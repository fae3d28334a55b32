#!/usr/bin/env python3
"""Generate LoRA fixtures with transformers' own PEFT integration.

Writer: transformers 5.23.0 (``PeftAdapterMixin.add_adapter`` +
``PreTrainedModel.save_pretrained``) with peft 0.21.2, torch 2.13.0+cpu,
safetensors.  It runs in its own virtual environment::

    python3 -m venv /tmp/venv-tf
    /tmp/venv-tf/bin/pip install "torch==2.13.0+cpu" transformers==5.23.0 \
        peft==0.21.2 safetensors
    /tmp/venv-tf/bin/python scripts/writers/gen_transformers.py \
        --out tests/fixtures/writers/transformers

Why 5.23.0 and not 5.24.0: transformers 5.24.0 raises ``MIN_PEFT_VERSION`` in
``transformers/integrations/peft.py`` to 0.22.0, and peft 0.21.2 is the newest
peft on the package index used here.  The only difference between the two
releases' ``integrations/peft.py`` is that constant, and ``save_pretrained``'s
adapter branch in ``modeling_utils.py`` is identical, so the files written are
the same.  (With peft >= 0.22 available: ``transformers==5.24.0 peft==0.22.x``.)

Fixtures (each an output of ``model.save_pretrained(dir)`` with an adapter
attached, which saves only the adapter, in PEFT format):

* ``<out>/gpt2/``: tiny ``GPT2LMHeadModel`` (n_embd 32, n_layer 2, n_head 4,
  vocab 64, n_positions 64); ``LoraConfig(r=4, lora_alpha=8,
  target_modules=["c_attn", "c_proj"])``.  GPT-2 uses ``Conv1D`` (weight stored
  (in, out)); PEFT switches ``fan_in_fan_out`` on by itself.  Note that
  ``c_proj`` matches both ``attn.c_proj`` and ``mlp.c_proj``.
* ``<out>/llama/``: tiny ``LlamaForCausalLM`` (hidden 32, 2 layers, 4 heads,
  2 kv heads, intermediate 64, vocab 64); ``LoraConfig(r=4, lora_alpha=16,
  target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True)``.

"Training" is simulated by setting every ``lora_B`` to seeded normal values
times 0.05 (PEFT initialises lora_B to zero).  The model stays float32 for the
save; ``truth.json`` is computed afterwards from a float64 copy of the same
model with PEFT's own ``get_delta_weight("default")``.  Output is
deterministic (re-runs are byte-identical); the script re-executes itself with
``PYTHONHASHSEED=0`` because PEFT writes ``target_modules`` to
adapter_config.json in Python set order.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import peft
import safetensors
import torch
import transformers
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

TOP_K = 8
B_SCALE = 0.05
ADAPTER = "default"
N_KEYS_LISTED = 6

GPT2_TINY: dict[str, Any] = dict(
    n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=64
)
LLAMA_TINY: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=64,
    max_position_embeddings=64,
)


def _svals(delta: torch.Tensor) -> list[float]:
    s = torch.linalg.svdvals(delta.to(torch.float64))
    return [float(x) for x in s[:TOP_K]]


def _lora_modules(model: torch.nn.Module) -> list[tuple[str, LoraLayer]]:
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, LoraLayer) and hasattr(mod, "get_delta_weight")
    ]


def _randomize_lora_b(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, mod in _lora_modules(model):
            w = mod.lora_B[ADAPTER].weight
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32) * B_SCALE)


def _saved_keys(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        keys = sorted(f.keys())
        shapes = {k: list(f.get_slice(k).get_shape()) for k in keys}
        dtypes = {k: str(f.get_slice(k).get_dtype()) for k in keys}
        meta = f.metadata()
    return {"keys": keys, "shapes": shapes, "dtypes": dtypes, "metadata": meta}


def _truth(
    model: torch.nn.Module,
    out_dir: Path,
    base_config: dict[str, Any],
    lora_kwargs: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    saved = _saved_keys(out_dir / "adapter_model.safetensors")
    cfg = json.loads((out_dir / "adapter_config.json").read_text())
    m64 = copy.deepcopy(model).to(torch.float64)
    modules = []
    for name, mod in _lora_modules(m64):
        # Saved keys are "<prefix>.lora_A.weight" with the adapter name removed.
        prefix = f"base_model.model.{name}"
        a_key, b_key = f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"
        assert a_key in saved["shapes"] and b_key in saved["shapes"], (a_key, sorted(saved["shapes"]))
        with torch.no_grad():
            delta = mod.get_delta_weight(ADAPTER).to(torch.float64)
        base = mod.get_base_layer()
        conv1d = type(base).__name__ == "Conv1D"
        fan_in_fan_out = bool(getattr(mod, "fan_in_fan_out", False))
        # get_delta_weight returns ΔW in the base weight's storage layout:
        # (in, out) for Conv1D (fan_in_fan_out), (out, in) for Linear.
        delta_linear = delta.T if fan_in_fan_out else delta
        a_w = mod.lora_A[ADAPTER].weight
        b_w = mod.lora_B[ADAPTER].weight
        # Cross-check against the file: B @ A * scaling, in (out, in).
        with safe_open(str(out_dir / "adapter_model.safetensors"), framework="pt") as f:
            fa = f.get_tensor(a_key).to(torch.float64)
            fb = f.get_tensor(b_key).to(torch.float64)
        file_delta = fb @ fa * float(mod.scaling[ADAPTER])
        modules.append(
            {
                "module": name,
                "key_prefix": prefix,
                "lora_A_key": a_key,
                "lora_B_key": b_key,
                "base_layer_type": type(base).__name__,
                "base_weight_shape": list(base.weight.shape),
                "fan_in_fan_out": fan_in_fan_out,
                "rank": int(mod.r[ADAPTER]),
                "alpha": float(mod.lora_alpha[ADAPTER]),
                "scaling": float(mod.scaling[ADAPTER]),
                "in_features": int(mod.in_features),
                "out_features": int(mod.out_features),
                "delta_orientation": "(out_features, in_features), i.e. as a Linear weight"
                + (" (get_delta_weight's (in, out) Conv1D result transposed)" if conv1d else ""),
                "delta_shape": list(delta_linear.shape),
                "lora_A_shape": list(a_w.shape),
                "lora_B_shape": list(b_w.shape),
                "delta_fro": float(torch.linalg.norm(delta_linear)),
                "delta_svals_top8": _svals(delta_linear),
                "delta_source": "peft get_delta_weight('default') on a float64 copy of the model",
                "file_BA_scaling_vs_delta_max_abs_err": float((file_delta - delta_linear).abs().max()),
            }
        )
    listed = saved["keys"][:N_KEYS_LISTED]
    return {
        "writer": "transformers",
        "writer_version": transformers.__version__,
        "peft_version": peft.__version__,
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "api": "PreTrainedModel.add_adapter(LoraConfig) + save_pretrained(dir)",
        "model_class": type(model).__name__,
        "model": base_config,
        "lora_config_kwargs": lora_kwargs,
        "seed": seed,
        "lora_B_init": f"seeded torch.randn * {B_SCALE}",
        "files": sorted(p.name for p in out_dir.iterdir() if p.name != "truth.json"),
        "adapter_config": {
            k: cfg.get(k)
            for k in (
                "peft_type",
                "r",
                "lora_alpha",
                "fan_in_fan_out",
                "use_rslora",
                "use_dora",
                "target_modules",
                "base_model_name_or_path",
                "task_type",
                "bias",
                "modules_to_save",
            )
        },
        "saved": {
            "n_keys": len(saved["keys"]),
            "metadata": saved["metadata"],
            "first_keys": {k: {"shape": saved["shapes"][k], "dtype": saved["dtypes"][k]} for k in listed},
        },
        "notes": [
            "save_pretrained with an adapter attached writes only the adapter (adapter_model.safetensors, "
            "adapter_config.json) plus generation_config.json; no config.json and no base weights",
            "keys are 'base_model.model.' + module name (save_peft_format=True default), adapter name removed",
            "ΔW orientation in truth is (out, in) for every module; for Conv1D the file's lora_A is "
            "(r, in) and lora_B is (out, r), like Linear",
        ],
        "modules": modules,
    }


def _write(
    model: torch.nn.Module,
    out_dir: Path,
    base_config: dict[str, Any],
    lora_kwargs: dict[str, Any],
    seed: int,
) -> None:
    model.add_adapter(LoraConfig(**lora_kwargs))
    _randomize_lora_b(model, seed + 1)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    truth = _truth(model, out_dir, base_config, lora_kwargs, seed)
    (out_dir / "truth.json").write_text(json.dumps(truth, indent=1, ensure_ascii=False) + "\n")


def make_gpt2(out_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**GPT2_TINY)).eval()
    lora_kwargs: dict[str, Any] = dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"])
    _write(model, out_dir, GPT2_TINY, lora_kwargs, seed)


def make_llama(out_dir: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_TINY)).eval()
    lora_kwargs: dict[str, Any] = dict(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True
    )
    _write(model, out_dir, LLAMA_TINY, lora_kwargs, seed)


def main() -> None:
    # PEFT turns target_modules into a set and writes list(set) to
    # adapter_config.json, so its order follows str hashing: pin the hash seed.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/writers/transformers"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    make_gpt2(args.out / "gpt2", args.seed)
    make_llama(args.out / "llama", args.seed)
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:>8}  {p}")


if __name__ == "__main__":
    main()
