#!/usr/bin/env python3
"""Generate LoRA fixtures with torchtune's own model builders and checkpointer.

Writer: torchtune 0.6.1 (with torchao 0.15.0, torch 2.13.0+cpu, safetensors).
torchtune cannot be installed beside loracheck's pinned test dependencies, so
this script runs in its own virtual environment::

    python3 -m venv /tmp/venv-torchtune
    /tmp/venv-torchtune/bin/pip install "torch==2.13.0+cpu" torchtune==0.6.1 \
        torchao==0.15.0 safetensors
    /tmp/venv-torchtune/bin/python scripts/writers/gen_torchtune.py \
        --out tests/fixtures/writers/torchtune

(torchao 0.16+ drops ``int4_weight_only`` and 0.18 drops
``torchao.dtypes.nf4tensor``, both imported by torchtune 0.6.1; torchao <= 0.12
does not import against torch 2.13.)

What it reproduces is the ``epoch_N/`` folder that torchtune's
``recipes/lora_finetune_single_device.py`` writes at the end of training:
the recipe builds ``ckpt_dict`` = {adapter (get_adapter_state_dict),
model (get_merged_lora_ckpt, unless save_adapter_weights_only),
adapter_config {r, lora_alpha, target_modules, peft_type}} and hands it to
``FullModelHFCheckpointer.save_checkpoint(ckpt_dict, epoch, adapter_only=...)``.
This script does the same with a tiny Llama-3 built by
``torchtune.models.llama3.lora_llama3`` and a tiny HF-format base checkpoint
(config.json + model.safetensors) that it creates first; "training" is
simulated by setting every ``lora_b`` to seeded random values.

Variants (each an ``output_dir`` of the checkpointer):

* ``<out>/`` -> ``epoch_0/``: q_proj,v_proj; bf16 (the recipes' default
  dtype); full save (merged ``model-00001-of-00001.safetensors`` + index +
  adapters).  The base checkpoint is built in a temporary folder and not kept
  (size); truth.json carries merged-file-minus-base statistics instead.
* ``<out>/mlp_adapter_only/`` -> ``epoch_0/``: q_proj,v_proj,output_proj + MLP
  (w1,w2,w3); fp32; ``save_adapter_weights_only=True``.

Each ``epoch_0/`` gets a ``truth.json`` computed from torchtune's own modules
in float64 (see ``_truth``).  Output is deterministic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torchtune
from safetensors.torch import load_file, save_file
from torchtune import training
from torchtune.models import convert_weights
from torchtune.models.llama3 import llama3, lora_llama3
from torchtune.modules.peft import (
    LoRALinear,
    get_adapter_state_dict,
    get_lora_module_names,
    get_merged_lora_ckpt,
)
from torchtune.training.checkpointing import FullModelHFCheckpointer

TINY: dict[str, Any] = dict(
    vocab_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=32,
    max_seq_len=64,
    intermediate_dim=32,
    norm_eps=1e-5,
    rope_base=500_000,
)
RANK = 4
ALPHA = 8  # int, as in the recipes' YAML (lora_alpha: 16)
TOP_K = 8


def _hf_config(dtype: torch.dtype) -> dict[str, Any]:
    """A LlamaConfig-style config.json for the tiny base model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": TINY["vocab_size"],
        "hidden_size": TINY["embed_dim"],
        "intermediate_size": TINY["intermediate_dim"],
        "num_hidden_layers": TINY["num_layers"],
        "num_attention_heads": TINY["num_heads"],
        "num_key_value_heads": TINY["num_kv_heads"],
        "head_dim": TINY["embed_dim"] // TINY["num_heads"],
        "max_position_embeddings": TINY["max_seq_len"],
        "rms_norm_eps": TINY["norm_eps"],
        "rope_theta": float(TINY["rope_base"]),
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).replace("torch.", ""),
    }


def make_base_checkpoint(
    base_dir: Path, dtype: torch.dtype, seed: int, repo_id: str | None
) -> None:
    """Write a tiny HF-format Llama checkpoint (what `tune download` leaves)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = llama3(**TINY)
    # RMSNorm scales are ones at init; perturb them so the base is "pretrained".
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale"):
                p.add_(0.1 * torch.randn_like(p))
    tune_sd = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    hf_sd = convert_weights.tune_to_hf(
        tune_sd,
        num_heads=TINY["num_heads"],
        num_kv_heads=TINY["num_kv_heads"],
        dim=TINY["embed_dim"],
    )
    hf_sd = {k: v.contiguous() for k, v in sorted(hf_sd.items())}
    save_file(hf_sd, str(base_dir / "model.safetensors"), metadata={"format": "pt"})
    (base_dir / "config.json").write_text(json.dumps(_hf_config(dtype), indent=2) + "\n")
    if repo_id is not None:
        # `tune download` writes this; the checkpointer turns it into
        # adapter_config.json's base_model_name_or_path.
        (base_dir / "original_repo_id.json").write_text(json.dumps({"repo_id": repo_id}))


def _svals(delta: torch.Tensor) -> list[float]:
    s = torch.linalg.svdvals(delta.to(torch.float64))
    return [float(x) for x in s[:TOP_K]]


def _peft_name(tune_module: str) -> str:
    """Map a torchtune module path to the PEFT key prefix the checkpointer writes."""
    probe = {f"{tune_module}.lora_a.weight": torch.zeros(RANK, 2)}
    (key,) = convert_weights.tune_to_peft_adapter_weights(
        probe,
        num_heads=TINY["num_heads"],
        num_kv_heads=TINY["num_kv_heads"],
        dim=TINY["embed_dim"],
    ).keys()
    return key[: -len(".lora_A.weight")]


def _hf_weight_name(tune_module: str, shape: torch.Size) -> str:
    probe = {f"{tune_module}.weight": torch.zeros(shape)}
    return next(iter(convert_weights.tune_to_hf(
        probe,
        num_heads=TINY["num_heads"],
        num_kv_heads=TINY["num_kv_heads"],
        dim=TINY["embed_dim"],
    )))


def _truth(
    model: torch.nn.Module,
    epoch_dir: Path,
    base_dir: Path,
    variant: dict[str, Any],
    full_save: bool,
) -> dict[str, Any]:
    """Ground truth from torchtune's own merge function, in float64.

    dW = get_merged_lora_ckpt(float64 state dict)[W] - float64 base W, i.e. the
    writer's merge ((alpha/rank) * B @ A) applied to the stored (already
    dtype-rounded) factors.  For the full save it also reports
    merged-file minus base-file in HF layout (computed in float64 from the
    tensors as stored, so it includes the rounding of the file dtype).
    """
    sd64 = {k: v.detach().to(torch.float64).clone() for k, v in model.state_dict().items()}
    base64 = {k: v.clone() for k, v in sd64.items()}
    merged64 = get_merged_lora_ckpt(sd64, rank=RANK, alpha=ALPHA)
    merged_file: dict[str, torch.Tensor] = {}
    base_file: dict[str, torch.Tensor] = {}
    if full_save:
        merged_file = load_file(str(epoch_dir / "model-00001-of-00001.safetensors"))
        base_file = load_file(str(base_dir / "model.safetensors"))
    peft_sd = load_file(str(epoch_dir / "adapter_model.safetensors"))
    modules = []
    for name, mod in model.named_modules():
        if not isinstance(mod, LoRALinear):
            continue
        delta = merged64[f"{name}.weight"] - base64[f"{name}.weight"]
        peft = _peft_name(name)
        a = peft_sd[f"{peft}.lora_A.weight"].to(torch.float64)
        b = peft_sd[f"{peft}.lora_B.weight"].to(torch.float64)
        delta_peft = (mod.alpha / mod.rank) * b @ a  # HF (q/k rows permuted) layout
        entry: dict[str, Any] = {
            "tune_name": name,
            "peft_name": peft,
            "hf_weight": _hf_weight_name(name, mod.weight.shape),
            "rank": mod.rank,
            "alpha": float(mod.alpha),
            "scaling": float(mod.alpha / mod.rank),
            "in_features": mod.in_dim,
            "out_features": mod.out_dim,
            "lora_a_shape": list(mod.lora_a.weight.shape),
            "lora_b_shape": list(mod.lora_b.weight.shape),
            "delta_fro": float(torch.linalg.norm(delta)),
            "delta_svals_top8": _svals(delta),
            "delta_source": "get_merged_lora_ckpt in float64 minus base (float64)",
            "peft_file_vs_merge_fro": float(torch.linalg.norm(delta_peft) - torch.linalg.norm(delta)),
        }
        if full_save:
            hf = entry["hf_weight"]
            d_file = merged_file[hf].to(torch.float64) - base_file[hf].to(torch.float64)
            entry["merged_file_minus_base_fro"] = float(torch.linalg.norm(d_file))
            entry["merged_file_minus_base_svals_top8"] = _svals(d_file)
            entry["merged_file_dtype"] = str(merged_file[hf].dtype).replace("torch.", "")
            entry["merged_file_vs_peft_max_abs_err"] = float((d_file - delta_peft).abs().max())
        modules.append(entry)
    return {
        "writer": "torchtune",
        "writer_version": torchtune.__version__,
        "torch_version": torch.__version__,
        "checkpointer": "FullModelHFCheckpointer",
        "model_type": "LLAMA3",
        "model": {**TINY},
        "variant": variant,
        "adapter_only": not full_save,
        "notes": [
            "adapter_model.pt keys are torchtune names (layers.N.attn.q_proj.lora_a.weight)",
            "adapter_model.safetensors keys are PEFT names (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight)",
            "q_proj/k_proj lora_B rows in adapter_model.safetensors are permuted to HF rotary layout; "
            "norms and singular values are unchanged by the permutation",
        ],
        "modules": modules,
    }


def run_variant(
    out_dir: Path,
    base_dir: Path,
    *,
    lora_attn_modules: list[str],
    apply_lora_to_mlp: bool,
    apply_lora_to_output: bool,
    dtype: torch.dtype,
    adapter_only: bool,
    seed: int,
) -> None:
    """Do what lora_finetune_single_device does from _setup_model to save_checkpoint."""
    checkpointer = FullModelHFCheckpointer(
        checkpoint_dir=str(base_dir),
        checkpoint_files=["model.safetensors"],
        model_type="LLAMA3",
        output_dir=str(out_dir),
    )
    ckpt = checkpointer.load_checkpoint()
    torch.manual_seed(seed)
    with training.set_default_dtype(dtype):
        model = lora_llama3(
            lora_attn_modules=list(lora_attn_modules),
            apply_lora_to_mlp=apply_lora_to_mlp,
            apply_lora_to_output=apply_lora_to_output,
            lora_rank=RANK,
            lora_alpha=ALPHA,
            **TINY,
        )
    missing, unexpected = model.load_state_dict(ckpt[training.MODEL_KEY], strict=False)
    assert not unexpected, unexpected
    assert all("lora" in k for k in missing), missing
    # Simulated training: LoRA B starts at zero in torchtune; give it seeded values.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, mod in model.named_modules():
            if isinstance(mod, LoRALinear):
                b = torch.randn(mod.lora_b.weight.shape, generator=gen, dtype=torch.float64)
                mod.lora_b.weight.copy_((0.05 * b).to(mod.lora_b.weight.dtype))

    # --- as in recipes/lora_finetune_single_device.py::save_checkpoint ---
    ckpt_dict: dict[str, Any] = {}
    ckpt_dict[training.ADAPTER_KEY] = get_adapter_state_dict(model.state_dict())
    if not adapter_only:
        state_dict = {k: v.cpu() for k, v in model.state_dict().items()}
        # the recipe merges in place on the live parameters' state dict; clone so
        # `model` keeps its base weights for the truth computation.
        state_dict = {k: v.clone() for k, v in state_dict.items()}
        ckpt_dict[training.MODEL_KEY] = get_merged_lora_ckpt(state_dict, rank=RANK, alpha=ALPHA)
    ckpt_dict[training.ADAPTER_CONFIG] = {
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": get_lora_module_names(
            list(lora_attn_modules), apply_lora_to_mlp, apply_lora_to_output
        ),
        "peft_type": "LORA",
    }
    checkpointer.save_checkpoint(
        ckpt_dict, epoch=0, intermediate_checkpoint=False, adapter_only=adapter_only
    )

    epoch_dir = out_dir / "epoch_0"
    variant = {
        "lora_attn_modules": list(lora_attn_modules),
        "apply_lora_to_mlp": apply_lora_to_mlp,
        "apply_lora_to_output": apply_lora_to_output,
        "lora_rank": RANK,
        "lora_alpha": ALPHA,
        "dtype": str(dtype).replace("torch.", ""),
        "seed": seed,
    }
    truth = _truth(model, epoch_dir, base_dir, variant, full_save=not adapter_only)
    (epoch_dir / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="e.g. tests/fixtures/writers/torchtune")
    args = ap.parse_args()
    out: Path = args.out
    for sub in ("epoch_0", "base", "mlp_adapter_only"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        # Variant 1: q_proj,v_proj, bf16, full save (merged model + adapters).
        base = Path(tmp) / "base"
        make_base_checkpoint(
            base, torch.bfloat16, seed=1234, repo_id="loracheck-fixtures/tiny-llama3"
        )
        run_variant(
            out, base,
            lora_attn_modules=["q_proj", "v_proj"],
            apply_lora_to_mlp=False, apply_lora_to_output=False,
            dtype=torch.bfloat16, adapter_only=False, seed=0,
        )
        # Variant 2: q,v,output_proj + MLP, fp32, adapter only.
        base2 = Path(tmp) / "base2"
        make_base_checkpoint(base2, torch.float32, seed=4321, repo_id=None)
        run_variant(
            out / "mlp_adapter_only", base2,
            lora_attn_modules=["q_proj", "v_proj", "output_proj"],
            apply_lora_to_mlp=True, apply_lora_to_output=False,
            dtype=torch.float32, adapter_only=True, seed=1,
        )

if __name__ == "__main__":
    main()
