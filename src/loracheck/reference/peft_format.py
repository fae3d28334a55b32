"""Writing and reading PEFT's adapter format, and fitting an adapter onto a model.

On disk (PEFT's ``save_pretrained`` for the adapter named ``default``)::

    adapter_config.json          peft_type "LORA", r, lora_alpha, target_modules, ...
    adapter_model.safetensors    base_model.model.<path>.lora_A.weight      (r, in)
                                 base_model.model.<path>.lora_B.weight      (out, r)
                                 base_model.model.<path>.lora_embedding_A   (r, num_embeddings)
                                 base_model.model.<path>.lora_embedding_B   (dim, r)
                                 base_model.model.<saved>.<param>           a module of
                                                                            modules_to_save

``<path>`` is the module's dotted name inside the model PEFT wraps, so a file written for a
``LlamaForCausalLM`` loads with ``PeftModel.from_pretrained(LlamaForCausalLM(...), dir)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loracheck.errors import UsageError
from loracheck.model import LoraSpec
from loracheck.reference.inject import Target, lora_modules
from loracheck.reference.layers import LoRAEmbedding, LoRALinear, is_conv1d
from loracheck.scaling import PEFT_DEFAULT_ALPHA, effective_scale, resolve_rank_alpha

PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# Scheme name -> the ``init_lora_weights`` written. PEFT overwrites the factors on load, so only
# PiSSA (which rewrites the base into its residual) must be declared; a trained adapter that
# started random is not a fresh random init any more, and is written as True.
_PEFT_INIT = {
    "kaiming": True,
    "normal": True,
    "zeros": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
    "random": True,
}

Factors = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class AdapterFactors:
    """An adapter read from disk: per module (A, B) in canonical orientation and its scale."""

    path: str
    factors: dict[str, tuple[np.ndarray, np.ndarray]]
    scalings: dict[str, float] = field(default_factory=dict)
    spec: LoraSpec | None = None
    # DoRA magnitude vectors or lora_B biases in the file (features the reference refuses).
    has_magnitude: bool = False
    has_bias: bool = False
    # The safetensors file the factors came from (modules_to_save copies are read from it).
    weights_file: str | None = None


def adapter_state_dict(
    model: nn.Module, saved_modules: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """The LoRA factors of ``model`` and the parameters of ``saved_modules`` under PEFT's keys
    (detached, contiguous)."""
    out: dict[str, torch.Tensor] = {}
    for name in saved_modules or []:
        for param_name, param in model.get_submodule(name).named_parameters():
            out[f"{PREFIX}{name}.{param_name}"] = param
    for name, module in lora_modules(model):
        if isinstance(module, LoRALinear):
            out[f"{PREFIX}{name}.lora_A.weight"] = module.lora_A.weight
            out[f"{PREFIX}{name}.lora_B.weight"] = module.lora_B.weight
        else:
            out[f"{PREFIX}{name}.lora_embedding_A"] = module.lora_embedding_A
            out[f"{PREFIX}{name}.lora_embedding_B"] = module.lora_embedding_B
    return {k: v.detach().contiguous() for k, v in out.items()}


def adapter_config(
    model: nn.Module, spec: LoraSpec, *, scheme: str = "kaiming",
    saved_modules: list[str] | None = None,
) -> dict[str, Any]:
    """An ``adapter_config.json`` body that makes PEFT rebuild exactly these LoRA layers.

    ``target_modules`` lists the full names adapted (PEFT matches a full name by equality), so
    a regex or ``all-linear`` spec saves as the set it selected, as PEFT itself does.
    """
    modules = lora_modules(model)
    ranks = {name: m.rank for name, m in modules}
    alphas = {name: m.alpha for name, m in modules}
    r = spec.rank if spec.rank is not None else max(ranks.values(), default=8)
    alpha = spec.alpha if spec.alpha is not None else PEFT_DEFAULT_ALPHA
    # Per-module values that differ from the top-level ones, keyed by full name (exact match).
    rank_pattern = {n: k for n, k in ranks.items() if k != r}
    alpha_pattern = {n: a for n, a in alphas.items() if a != alpha}
    return {
        "peft_type": "LORA",
        "task_type": spec.task_type,
        "base_model_name_or_path": spec.base_model,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": spec.dropout or 0.0,
        "use_rslora": bool(spec.use_rslora),
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": _PEFT_INIT.get(scheme, True),
        "target_modules": sorted(ranks),
        "exclude_modules": None,
        "modules_to_save": sorted(saved_modules) if saved_modules else None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
    }


def save_adapter(
    model: nn.Module,
    spec: LoraSpec,
    out_dir: Path,
    *,
    scheme: str = "kaiming",
    overwrite: bool = False,
    saved_modules: list[str] | None = None,
) -> Path:
    """Write ``model``'s adapter in PEFT's format into ``out_dir``.

    Refuses an existing non-empty folder unless ``overwrite`` (:class:`UsageError`).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"{out_dir} is not empty; choose another folder or allow overwriting")
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu() for k, v in adapter_state_dict(model, saved_modules).items()}
    save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    body = adapter_config(model, spec, scheme=scheme, saved_modules=saved_modules)
    (out_dir / CONFIG_NAME).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return out_dir


def strip_prefix(key: str) -> str:
    for prefix in (PREFIX, "base_model."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def read_peft_dir(path: Path) -> AdapterFactors:
    """Read a PEFT adapter folder (ours or PEFT's) into canonical float32 factors."""
    from safetensors.torch import load_file

    from loracheck.configs import read_spec

    path = Path(path)
    spec = read_spec(path / CONFIG_NAME)
    tensors = {k: v.float().numpy() for k, v in load_file(str(path / WEIGHTS_NAME)).items()}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        for suffix, role in (
            (".lora_A.weight", "a"),
            (".lora_B.weight", "b"),
            (".lora_embedding_A", "a"),
            (".lora_embedding_B", "b"),
        ):
            if key.endswith(suffix):
                module = strip_prefix(key[: -len(suffix)])
                pairs.setdefault(module, {})[role] = value.astype(np.float32)
    factors = {m: (p["a"], p["b"]) for m, p in pairs.items() if "a" in p and "b" in p}
    scalings: dict[str, float] = {}
    for module, (a, _) in factors.items():
        _, alpha, _ = resolve_rank_alpha(module, spec)
        alpha = alpha if alpha is not None else PEFT_DEFAULT_ALPHA
        scale = effective_scale(a.shape[0], alpha, use_rslora=bool(spec.use_rslora))
        if scale is not None:
            scalings[module] = scale
    return AdapterFactors(str(path), factors, scalings, spec,
                          weights_file=str(path / WEIGHTS_NAME))


def read_adapter(path: Path) -> AdapterFactors:
    """Read any adapter the core can load (``loracheck.load``), else a PEFT folder directly."""
    from loracheck.load import load_factors

    path = Path(path)
    adapter, factors = load_factors(path)
    scalings: dict[str, float] = {}
    for layer in adapter.layers:
        if layer.scaling is not None:
            scalings[layer.name] = float(layer.scaling)
    weights = [f for f in adapter.files if f.endswith(".safetensors")]
    return AdapterFactors(
        str(path), dict(factors), scalings, adapter.spec,
        has_magnitude=any(layer.magnitude is not None for layer in adapter.layers),
        has_bias=any(layer.bias is not None for layer in adapter.layers),
        weights_file=weights[0] if weights else None,
    )


@torch.no_grad()
def load_saved_modules(model: nn.Module, weights: Path, saved_modules: list[str]) -> int:
    """Copy the ``modules_to_save`` parameters stored in ``weights`` (a safetensors file, or a
    folder holding PEFT's) into ``model``; returns how many tensors were copied. A saved module
    the file does not hold keeps the model's own weights, as PEFT's copy starts from them."""
    from safetensors import safe_open

    if not saved_modules:
        return 0
    path = Path(weights)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    wanted = {f"{PREFIX}{m}.{n}": p for m in saved_modules
              for n, p in model.get_submodule(m).named_parameters()}
    count = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            param = wanted.get(key)
            if param is not None and tuple(handle.get_slice(key).get_shape()) == tuple(
                    param.shape):
                param.copy_(handle.get_tensor(key).to(param.dtype))
                count += 1
    return count


def resolve_module(key: str, names: Mapping[str, nn.Module]) -> str | None:
    """The module of the model an adapter key names, by exact name, PEFT prefix, a unique
    dotted suffix, or an underscore-joined (kohya-style) name."""
    stripped = strip_prefix(key)
    for candidate in (key, stripped):
        if candidate in names:
            return candidate
    suffix = [n for n in names if n.endswith("." + stripped)]
    if len(suffix) == 1:
        return suffix[0]
    flat = stripped
    for prefix in ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_", "lora_"):
        if flat.startswith(prefix):
            flat = flat[len(prefix) :]
            break
    underscored = [n for n in names if n.replace(".", "_") == flat]
    if len(underscored) == 1:
        return underscored[0]
    ends = [n for n in names if n.replace(".", "_").endswith("_" + flat)]
    return ends[0] if len(ends) == 1 else None


def fit_adapter(
    model: nn.Module, adapter: AdapterFactors
) -> tuple[list[Target], dict[str, str], list[tuple[str, str]]]:
    """Match an adapter's modules to ``model``.

    Returns (targets to inject, adapter key -> model module name, problems) where each problem
    is (adapter key, what does not fit): a module the model lacks, a module of an unsupported
    type, or factor shapes that disagree with the module's.
    """
    names = dict(model.named_modules())
    use_rslora = bool(adapter.spec.use_rslora) if adapter.spec is not None else False
    targets: list[Target] = []
    mapping: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for key, (a, b) in sorted(adapter.factors.items()):
        name = resolve_module(key, names)
        if name is None:
            problems.append((key, "the model has no such module"))
            continue
        module = names[name]
        if isinstance(module, LoRALinear | LoRAEmbedding):
            module = module.base_layer
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            problems.append((key, f"factor shapes A {a.shape} and B {b.shape} do not pair"))
            continue
        rank = int(a.shape[0])
        if isinstance(module, nn.Linear):
            kind, fan_in, fan_out = "linear", module.in_features, module.out_features
        elif is_conv1d(module):
            kind, (fan_in, fan_out) = "linear", tuple(int(d) for d in module.weight.shape)
        elif isinstance(module, nn.Embedding):
            kind, fan_in, fan_out = "embedding", module.num_embeddings, module.embedding_dim
        else:
            problems.append((key, f"{name} is a {type(module).__name__}, not Linear, Conv1D or "
                                  "Embedding"))
            continue
        if a.shape[1] != fan_in or b.shape[0] != fan_out:
            problems.append(
                (
                    key,
                    f"A {tuple(a.shape)} and B {tuple(b.shape)} do not fit {name} "
                    f"({fan_out} x {fan_in}, as (out, in))",
                )
            )
            continue
        scale = adapter.scalings.get(key)
        if scale is None:
            scale = 1.0
        alpha = scale * math.sqrt(rank) if use_rslora else scale * rank
        targets.append(Target(name, kind, rank, alpha, fan_in, fan_out))
        mapping[key] = name
    return targets, mapping, problems


@torch.no_grad()
def load_adapter(
    model: nn.Module, factors: Factors, *, mapping: Mapping[str, str] | None = None
) -> int:
    """Copy (A, B) pairs into the LoRA layers of an injected ``model``; returns how many.

    Keys are module names (PEFT's ``base_model.model.`` prefix is accepted), or adapter keys
    translated by ``mapping``. A missing module or a shape mismatch raises :class:`UsageError`.
    """
    layers = dict(lora_modules(model))
    count = 0
    for key, (a, b) in factors.items():
        name = mapping.get(key, key) if mapping is not None else strip_prefix(key)
        layer = layers.get(name)
        if layer is None:
            raise UsageError(f"{key}: no LoRA layer {name} in the model")
        dst_a, dst_b = layer.factor_a, layer.factor_b
        if tuple(a.shape) != tuple(dst_a.shape) or tuple(b.shape) != tuple(dst_b.shape):
            raise UsageError(
                f"{key}: A {tuple(a.shape)}, B {tuple(b.shape)} do not fit "
                f"{tuple(dst_a.shape)}, {tuple(dst_b.shape)}"
            )
        dst_a.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(dst_a.dtype))
        dst_b.copy_(torch.from_numpy(np.ascontiguousarray(b)).to(dst_b.dtype))
        count += 1
    return count
