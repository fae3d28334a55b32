#!/usr/bin/env python3
"""Generate LoRA fixtures with litgpt's own LoRA GPT and checkpoint writers.

Writer: litgpt 0.5.13 (with lightning 2.6.6, torch 2.13.0+cpu).
litgpt cannot be installed beside loracheck's pinned test dependencies, so
this script runs in its own virtual environment::

    python3 -m venv /tmp/venv-litgpt
    /tmp/venv-litgpt/bin/pip install "torch==2.13.0+cpu" litgpt==0.5.13 requests
    /tmp/venv-litgpt/bin/python scripts/writers/gen_litgpt.py \
        --out tests/fixtures/writers/litgpt

It reproduces what ``litgpt finetune_lora`` (``litgpt/finetune/lora.py``)
leaves in its output folder:

* ``step-NNNNNN/`` (every ``save_interval``) and ``final/``:
  ``lit_model.pth.lora`` = ``torch.save({"model": {k: v for lora_ k}})``
  written by ``litgpt.finetune.lora.save_lora_checkpoint``, plus
  ``copy_config_files`` (model_config.yaml of the *base* model, i.e. without
  the lora_* fields, and the tokenizer files), ``save_hyperparameters``
  (hyperparameters.yaml: the CLI arguments of ``setup``, where the lora_*
  settings live) and ``save_prompt_style`` (prompt_style.yaml).
* ``final/`` additionally gets ``lit_model.pth`` from
  ``litgpt.scripts.merge_lora.merge_lora`` (merged full model).

The model is a tiny Llama-style ``litgpt.lora.GPT`` (n_layer 2, n_embd 32,
n_head 4, n_query_groups 2, vocab 64) built from a tiny base checkpoint that
this script writes first (in a temporary ``checkpoints/<org>/<name>`` folder,
not kept).  "Training" is simulated by giving every ``lora_B`` seeded random
values.

Variants:

* ``<out>/qv/final/``: lora_query + lora_value (fused qkv with the key group
  disabled, lora_A (2r, in), lora_B (q+v, r)); bf16-true; merged lit_model.pth.
* ``<out>/qkv/step-000010/``: lora_query + lora_key + lora_value +
  lora_projection + lora_mlp; 32-true; intermediate checkpoint (no merge).

Each folder gets ``truth.json`` computed from litgpt's own modules in float64
(``get_lora_AB`` and ``merge``).  Output is deterministic.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import litgpt
import torch
from litgpt.config import Config as BaseConfig
from litgpt.finetune.lora import save_lora_checkpoint
from litgpt.finetune.lora import setup as finetune_lora_setup
from litgpt.lora import GPT, Config, LoRALinear, LoRAQKVLinear, mark_only_lora_as_trainable
from litgpt.model import GPT as BaseGPT
from litgpt.parser_config import save_hyperparameters
from litgpt.prompts import save_prompt_style
from litgpt.scripts.merge_lora import merge_lora
from litgpt.utils import copy_config_files, save_config

BASE_REL = Path("checkpoints/loracheck-fixtures/tiny-llama")
TINY: dict[str, Any] = dict(
    name="tiny-llama",
    hf_config={"org": "loracheck-fixtures", "name": "tiny-llama"},
    block_size=64,
    vocab_size=64,
    padding_multiple=64,
    n_layer=2,
    n_head=4,
    n_query_groups=2,
    n_embd=32,
    rotary_percentage=1.0,
    parallel_residual=False,
    bias=False,
    norm_class_name="RMSNorm",
    norm_eps=1e-5,
    mlp_class_name="LLaMAMLP",
    intermediate_size=32,
    rope_base=10000,
)
RANK = 4
ALPHA = 8
TOP_K = 8


def make_base_checkpoint(base_dir: Path, seed: int) -> None:
    """Write a tiny litgpt base checkpoint (what `litgpt download` leaves)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    config = BaseConfig(**TINY)
    torch.manual_seed(seed)
    model = BaseGPT(config)
    model.apply(model._init_weights)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, base_dir / "lit_model.pth")
    save_config(config, base_dir)
    # Minimal tokenizer files: check_valid_checkpoint_dir (used by merge_lora)
    # requires them, and copy_config_files copies them into the output folder.
    vocab = {f"<{i}>": i for i in range(TINY["vocab_size"])}
    tok = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<0>"}}
    (base_dir / "tokenizer.json").write_text(json.dumps(tok) + "\n")
    (base_dir / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<1>", "eos_token": "<2>", "add_bos_token": True}) + "\n"
    )


def _svals(delta: torch.Tensor) -> list[float]:
    s = torch.linalg.svdvals(delta.to(torch.float64))
    return [float(x) for x in s[:TOP_K]]


def _stats(delta: torch.Tensor) -> dict[str, Any]:
    return {"fro": float(torch.linalg.norm(delta)), "svals_top8": _svals(delta)}


def _truth(model: GPT, out_dir: Path, variant: dict[str, Any], merged: bool, base_dir: Path) -> dict[str, Any]:
    """Ground truth from litgpt's own LoRA modules, in float64.

    dW = get_lora_AB() of a float64 copy of each module (for the fused qkv this
    is the full (q+k+v, in) update after zero_pad); it is cross-checked against
    merge() in float64 (merged weight minus base weight).
    """
    merged_sd: dict[str, torch.Tensor] = {}
    base_sd: dict[str, torch.Tensor] = {}
    if merged:
        merged_sd = torch.load(out_dir / "lit_model.pth", weights_only=True)
        base_sd = torch.load(base_dir / "lit_model.pth", weights_only=True)
    modules = []
    for name, mod in model.named_modules():
        if not isinstance(mod, LoRALinear) or mod.r == 0:
            continue
        if isinstance(mod, LoRAQKVLinear) and not any(mod.enable_lora):
            continue
        m64 = copy.deepcopy(mod).to(torch.float64).requires_grad_(False)
        if isinstance(m64, LoRAQKVLinear) and hasattr(m64, "_lora_ind"):
            del m64._lora_ind
        delta = m64.get_lora_AB()
        w0 = m64.linear.weight.data.clone()
        m64.merge()
        delta_merge = m64.linear.weight.data - w0
        entry: dict[str, Any] = {
            "name": name,
            "keys": [f"{name}.lora_A", f"{name}.lora_B"],
            "rank": mod.r,
            "alpha": mod.lora_alpha,
            "scaling": float(mod.scaling),
            "in_features": mod.linear.in_features,
            "out_features": mod.linear.out_features,
            "lora_A_shape": list(mod.lora_A.shape),
            "lora_B_shape": list(mod.lora_B.shape),
            "delta_shape": list(delta.shape),
            "delta_fro": float(torch.linalg.norm(delta)),
            "delta_svals_top8": _svals(delta),
            "delta_source": "get_lora_AB() of the module cast to float64",
            "merge_vs_get_lora_AB_max_abs_err": float((delta_merge - delta).abs().max()),
        }
        if isinstance(mod, LoRAQKVLinear):
            cfg = model.config
            q = cfg.n_head * cfg.head_size
            kv = cfg.n_query_groups * cfg.head_size
            rows = {"query": (0, q), "key": (q, q + kv), "value": (q + kv, q + 2 * kv)}
            enabled = dict(zip(("query", "key", "value"), mod.enable_lora, strict=True))
            entry["enable_lora"] = enabled
            entry["qkv_shapes"] = list(mod.qkv_shapes)
            entry["qkv_layout"] = "contiguous [q | k | v] rows of qkv.linear.weight"
            entry["groups"] = {}
            g = 0
            for grp, (lo, hi) in rows.items():
                info: dict[str, Any] = {"rows": [lo, hi], "enabled": enabled[grp]}
                if enabled[grp]:
                    info["lora_A_rows"] = [g * mod.r, (g + 1) * mod.r]
                    off = sum(mod.qkv_shapes[:g])
                    info["lora_B_rows"] = [off, off + (hi - lo)]
                    g += 1
                info.update(_stats(delta[lo:hi]))
                entry["groups"][grp] = info
        if merged:
            wkey = f"{name}.weight"
            d_file = merged_sd[wkey].to(torch.float64) - base_sd[wkey].to(torch.float64)
            entry["merged_file_key"] = wkey
            entry["merged_file_dtype"] = str(merged_sd[wkey].dtype).replace("torch.", "")
            entry["merged_file_minus_base_fro"] = float(torch.linalg.norm(d_file))
            entry["merged_file_minus_base_svals_top8"] = _svals(d_file)
            entry["merged_file_vs_delta_max_abs_err"] = float((d_file - delta).abs().max())
        modules.append(entry)
    return {
        "writer": "litgpt",
        "writer_version": litgpt.__version__ if hasattr(litgpt, "__version__") else "0.5.13",
        "torch_version": torch.__version__,
        "model": {k: v for k, v in TINY.items() if k != "hf_config"},
        "variant": variant,
        "notes": [
            "lit_model.pth.lora is torch.save({'model': {lora_ keys}}); keys end in .lora_A / .lora_B (no .weight)",
            "fused qkv: lora_A is (r * n_enabled, in) with one r-row block per enabled group; "
            "lora_B is (sum of enabled group sizes, r); dW = zero_pad(per-group B_g @ A_g) * alpha / r",
            "model_config.yaml is the base model's (no lora fields); lora_r/lora_alpha/lora_* are in hyperparameters.yaml",
        ],
        "modules": modules,
    }


def run_variant(
    out_root: Path,
    save_dir_name: str,
    *,
    precision: str,
    lora: dict[str, bool],
    merge: bool,
    seed: int,
) -> None:
    """Do what litgpt/finetune/lora.py does around save_lora_checkpoint."""
    base_dir = BASE_REL
    fabric = L.Fabric(devices=1, accelerator="cpu", precision=precision)
    fabric.seed_everything(seed)
    config = Config.from_file(
        base_dir / "model_config.yaml",
        lora_r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        **lora,
    )
    with fabric.init_module(empty_init=False):
        model = GPT(config)
    mark_only_lora_as_trainable(model)
    model = fabric.setup_module(model)
    base_sd = torch.load(base_dir / "lit_model.pth", weights_only=True)
    missing, unexpected = model.load_state_dict(base_sd, strict=False)
    assert not unexpected, unexpected
    assert all("lora_" in k for k in missing), missing
    # Simulated training: lora_B starts at zero in litgpt; give it seeded values.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, mod in model.named_modules():
            if isinstance(mod, LoRALinear) and hasattr(mod, "lora_B"):
                b = torch.randn(mod.lora_B.shape, generator=gen, dtype=torch.float64)
                mod.lora_B.copy_((0.05 * b).to(mod.lora_B.dtype))

    save_path = out_root / save_dir_name / "lit_model.pth.lora"
    save_path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_checkpoint(fabric, model, save_path)
    copy_config_files(base_dir, save_path.parent)
    argv = [
        "litgpt",
        "finetune_lora",
        str(base_dir),
        "--out_dir", "out/finetune/lora",
        "--precision", precision,
        "--lora_r", str(RANK),
        "--lora_alpha", str(ALPHA),
        "--lora_dropout", "0.0",
        *[x for k, v in lora.items() for x in (f"--{k}", str(v).lower())],
        "--seed", str(seed),
    ]
    saved_argv = sys.argv
    sys.argv = argv
    try:
        save_hyperparameters(finetune_lora_setup, save_path.parent)
    finally:
        sys.argv = saved_argv
    save_prompt_style("alpaca", save_path.parent)
    if merge:
        merge_lora(checkpoint_dir=save_path.parent, pretrained_checkpoint_dir=base_dir, precision=precision)

    variant = {"precision": precision, "lora_r": RANK, "lora_alpha": ALPHA, **lora, "seed": seed, "merged": merge}
    core = model.module if hasattr(model, "module") else model
    truth = _truth(core, save_path.parent, variant, merged=merge, base_dir=base_dir)
    (save_path.parent / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="e.g. tests/fixtures/writers/litgpt")
    args = ap.parse_args()
    out: Path = args.out.resolve()
    for sub in ("qv", "qkv"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # hyperparameters.yaml records checkpoint_dir relative, as in litgpt usage
        try:
            make_base_checkpoint(BASE_REL, seed=1234)
            run_variant(
                out / "qv", "final",
                precision="bf16-true",
                lora={"lora_query": True, "lora_key": False, "lora_value": True,
                      "lora_projection": False, "lora_mlp": False, "lora_head": False},
                merge=True, seed=1337,
            )
            run_variant(
                out / "qkv", "step-000010",
                precision="32-true",
                lora={"lora_query": True, "lora_key": True, "lora_value": True,
                      "lora_projection": True, "lora_mlp": True, "lora_head": False},
                merge=False, seed=42,
            )
        finally:
            os.chdir(cwd)


if __name__ == "__main__":
    main()
