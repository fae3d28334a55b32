"""Putting LoRA layers into a model, freezing it, and merging the updates into the base.

Targets follow PEFT's semantics (:mod:`loracheck.scaling`): a list selects module names equal
to an entry or ending in ``"." + entry``; a string is a regex over the whole name;
``all-linear`` selects every ``nn.Linear`` except the output head. ``exclude_modules`` wins
over targets, ``modules_to_save`` are never targets, and ``rank_pattern`` / ``alpha_pattern``
resolve per module. Freezing goes by module *type*: a base parameter whose name happens to
contain ``lora_`` stays frozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from loracheck.errors import UsageError
from loracheck.model import LoraSpec
from loracheck.reference.init import init_model, scheme_from_peft
from loracheck.reference.layers import LoRAEmbedding, LoRALinear, LoRAModule
from loracheck.scaling import PEFT_DEFAULT_ALPHA, resolve_rank_alpha, target_matches

PEFT_DEFAULT_RANK = 8
# PEFT's per-architecture default for Llama-like decoders when target_modules is None.
DEFAULT_TARGETS = ["q_proj", "v_proj"]


@dataclass(frozen=True)
class Target:
    """One module to adapt and the rank, alpha and shapes it gets."""

    name: str
    kind: str  # "linear" | "embedding"
    rank: int
    alpha: float
    in_features: int
    out_features: int

    @property
    def n_params(self) -> int:
        """Trainable parameters this target adds: r · (in + out)."""
        return self.rank * (self.in_features + self.out_features)


def lora_modules(model: nn.Module) -> list[tuple[str, LoRAModule]]:
    """Every LoRA layer in ``model`` with its dotted name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear | LoRAEmbedding)]


def _output_head(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except (NotImplementedError, AttributeError):
            head = None
        if isinstance(head, nn.Module):
            return head
    return None


def _layer_index(name: str, layers_pattern: list[str] | str | None) -> int | None:
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else (layers_pattern or [])
    for pattern in patterns:
        found = re.search(rf"\.{re.escape(pattern)}\.(\d+)\.", "." + name)
        if found:
            return int(found.group(1))
    if patterns:
        return None
    found = re.search(r"\.(\d+)\.", "." + name)
    return int(found.group(1)) if found else None


def _in_modules_to_save(name: str, modules_to_save: list[str] | None) -> bool:
    return bool(modules_to_save) and any(
        name == m or name.endswith("." + m) for m in modules_to_save or []
    )


def plan_targets(model: nn.Module, spec: LoraSpec) -> list[Target]:
    """The modules ``spec`` adapts in ``model``, with their per-module rank and alpha.

    Raises :class:`~loracheck.errors.UsageError` when the spec selects nothing adaptable.
    """
    targets = spec.target_modules
    names = [n for n, _ in model.named_modules()]
    if targets is None:
        if not any(n.endswith(".q_proj") or n == "q_proj" for n in names):
            raise UsageError("the LoRA config names no target_modules and the model has no q_proj")
        targets = DEFAULT_TARGETS
    all_linear = isinstance(targets, str) and targets.lower() == "all-linear"
    head = _output_head(model) if all_linear else None
    plan: list[Target] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, LoRALinear | LoRAEmbedding):
            continue
        if not isinstance(module, nn.Linear | nn.Embedding):
            continue
        if "base_layer" in name.split("."):
            continue
        if all_linear:
            if not isinstance(module, nn.Linear) or module is head or name.endswith("lm_head"):
                continue
        elif not target_matches(name, targets):
            continue
        if target_matches(name, spec.exclude_modules):
            continue
        if _in_modules_to_save(name, spec.modules_to_save):
            continue
        if spec.layers_to_transform is not None:
            index = _layer_index(name, spec.layers_pattern)
            if index is None or index not in spec.layers_to_transform:
                continue
        rank, alpha, source = resolve_rank_alpha(name, spec)
        rank = rank if rank is not None else PEFT_DEFAULT_RANK
        if source == "mlx-scale" and spec.scale is not None:
            alpha = spec.scale * rank
        alpha = alpha if alpha is not None else PEFT_DEFAULT_ALPHA
        if isinstance(module, nn.Linear):
            plan.append(
                Target(name, "linear", rank, alpha, module.in_features, module.out_features)
            )
        else:
            plan.append(
                Target(name, "embedding", rank, alpha, module.num_embeddings, module.embedding_dim)
            )
    if not plan:
        raise UsageError(f"target_modules {targets!r} selects no Linear or Embedding in the model")
    return plan


def mark_only_lora_trainable(model: nn.Module) -> int:
    """Freeze every parameter, then unfreeze the factors of LoRA layers (found by type).

    Returns the number of trainable parameters left.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    total = 0
    for _, module in lora_modules(model):
        for factor in (module.factor_a, module.factor_b):
            factor.requires_grad_(True)
            total += factor.numel()
    return total


def inject(
    model: nn.Module,
    spec: LoraSpec,
    *,
    init: str | None = None,
    std: float | None = None,
    seed: int = 0,
    targets: list[Target] | None = None,
) -> list[Target]:
    """Replace each target module of ``model`` by its LoRA layer, freeze the rest, initialise.

    ``init`` is a scheme of :mod:`loracheck.reference.init` (default: the one ``spec``
    declares, PEFT's kaiming when it declares none); ``std`` the σ of ``normal`` (default the
    spec's ``init_std``, else 0.02). ``targets`` overrides the plan (used to fit an existing
    adapter). Returns the targets adapted.
    """
    plan = targets if targets is not None else plan_targets(model, spec)
    dropout = spec.dropout or 0.0
    use_rslora = bool(spec.use_rslora)
    created: list[tuple[str, LoRAModule]] = []
    for target in plan:
        base = model.get_submodule(target.name)
        layer: LoRAModule
        if isinstance(base, nn.Linear):
            layer = LoRALinear(
                base, target.rank, target.alpha, dropout=dropout, use_rslora=use_rslora
            )
        elif isinstance(base, nn.Embedding):
            layer = LoRAEmbedding(base, target.rank, target.alpha, use_rslora=use_rslora)
        else:
            raise UsageError(f"{target.name} is a {type(base).__name__}, not Linear or Embedding")
        parent_name, _, child = target.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        created.append((target.name, layer))
    mark_only_lora_trainable(model)
    scheme = init or scheme_from_peft(spec.init_lora_weights, init_std=spec.init_std)
    sigma = std if std is not None else (spec.init_std if spec.init_std is not None else 0.02)
    init_model(created, scheme, std=sigma, seed=seed)
    return plan


@torch.no_grad()
def merge_layer(layer: LoRAModule) -> bool:
    """W ← W + ΔW; a no-op (returning False) when the layer is already merged."""
    if layer.merged:
        return False
    weight = layer.base_layer.weight
    weight.add_(layer.delta_weight())
    layer.merged = True
    return True


@torch.no_grad()
def unmerge_layer(layer: LoRAModule) -> bool:
    """W ← W − ΔW; a no-op (returning False) when the layer is not merged."""
    if not layer.merged:
        return False
    weight = layer.base_layer.weight
    weight.sub_(layer.delta_weight())
    layer.merged = False
    return True


def merge(model: nn.Module) -> int:
    """Merge every LoRA layer into its base weight; returns how many were merged now."""
    return sum(merge_layer(m) for _, m in lora_modules(model))


def unmerge(model: nn.Module) -> int:
    """Undo :func:`merge`; in fp32 W comes back to within rounding."""
    return sum(unmerge_layer(m) for _, m in lora_modules(model))
