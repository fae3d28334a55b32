"""Putting LoRA layers into a model, freezing it, and merging the updates into the base.

Targets follow PEFT's semantics (:mod:`loracheck.scaling`): a list selects module names equal
to an entry or ending in ``"." + entry``; a string is a regex over the whole name;
``all-linear`` selects every ``nn.Linear`` (and transformers ``Conv1D``) except the output
head; no targets means the architecture's default (:mod:`loracheck.default_targets`).
``exclude_modules`` wins over targets, ``modules_to_save`` are never targets (they train whole),
and ``rank_pattern`` / ``alpha_pattern`` resolve per module. Freezing goes by module *type*:
a base parameter whose name happens to contain ``lora_`` stays frozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from loracheck.default_targets import ALL_LINEAR, default_targets
from loracheck.errors import UsageError
from loracheck.model import LoraSpec
from loracheck.reference.init import init_model, scheme_from_peft
from loracheck.reference.layers import LoRAEmbedding, LoRALinear, LoRAModule, is_conv1d
from loracheck.scaling import PEFT_DEFAULT_ALPHA, resolve_rank_alpha, target_matches

PEFT_DEFAULT_RANK = 8


@dataclass(frozen=True)
class Target:
    """One module to adapt and the rank, alpha and shapes it gets."""

    name: str
    kind: str  # "linear" (nn.Linear or transformers' Conv1D) | "embedding"
    rank: int
    alpha: float
    in_features: int
    out_features: int

    @property
    def n_params(self) -> int:
        """Trainable parameters this target adds: r · (in + out)."""
        return self.rank * (self.in_features + self.out_features)


@dataclass(frozen=True)
class Plan:
    """What a spec adapts in a model: the targets, the modules trained whole
    (``modules_to_save``), and the selected modules the reference cannot adapt (name, type)."""

    targets: list[Target]
    saved_modules: list[str]
    unsupported: list[tuple[str, str]]
    target_modules: list[str] | str | None  # what selected them (the architecture default
    # when the spec names none)


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


def _shape(module: nn.Module) -> tuple[str, int, int] | None:
    """(kind, in, out) of a module LoRA can adapt, None for any other."""
    if isinstance(module, nn.Linear):
        return "linear", module.in_features, module.out_features
    if is_conv1d(module):
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        return "linear", int(weight.shape[0]), int(weight.shape[1])
    if isinstance(module, nn.Embedding):
        return "embedding", module.num_embeddings, module.embedding_dim
    return None


def _is_moe_part(module: nn.Module) -> bool:
    """Fused MoE experts or their router (transformers 5: ``MixtralExperts``,
    ``MixtralTopKRouter``), whose weights are parameters, not Linear modules: PEFT's
    all-linear adapts them through ``target_parameters``."""
    return re.search(r"(Experts?|Router)$", type(module).__name__) is not None


def _owns_matrix(module: nn.Module) -> bool:
    """Whether ``module`` itself holds a parameter of two or more dimensions."""
    return any(p.ndim >= 2 for p in module.parameters(recurse=False))


def _model_type(model: nn.Module) -> str | None:
    value = getattr(getattr(model, "config", None), "model_type", None)
    return value if isinstance(value, str) else None


def plan_targets(model: nn.Module, spec: LoraSpec) -> Plan:
    """The modules ``spec`` adapts in ``model``, with their per-module rank and alpha.

    Without ``target_modules`` the architecture's default applies
    (:func:`loracheck.default_targets.default_targets`). ``all-linear`` selects every Linear
    and Conv1D except the output head and ``modules_to_save``, as PEFT does. An empty plan is
    the caller's to report.
    """
    targets = spec.target_modules
    if targets is None:
        leaves = [n for n, m in model.named_modules() if _shape(m) is not None]
        targets = default_targets(_model_type(model), leaves)
    all_linear = isinstance(targets, str) and targets.lower() == ALL_LINEAR
    head = _output_head(model) if all_linear else None
    plan: list[Target] = []
    saved: list[str] = []
    unsupported: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, LoRALinear | LoRAEmbedding):
            continue
        if "base_layer" in name.split("."):
            continue
        if _in_modules_to_save(name, spec.modules_to_save):
            saved.append(name)
            continue
        shape = _shape(module)
        if all_linear:
            if shape is not None and (shape[0] != "linear" or module is head
                                      or name.endswith("lm_head")):
                continue
            if shape is None and not (_is_moe_part(module) and _owns_matrix(module)):
                continue  # PEFT's all-linear takes Linear and Conv1D, and MoE parameters
        elif not target_matches(name, targets):
            continue
        if target_matches(name, spec.exclude_modules):
            continue
        if spec.layers_to_transform is not None:
            index = _layer_index(name, spec.layers_pattern)
            if index is None or index not in spec.layers_to_transform:
                continue
        if shape is None:
            # A container whose name matches (PEFT skips those too) is not a refusal; a module
            # that owns weight matrices of another kind (Conv2d, fused MoE experts, a router) is.
            if _owns_matrix(module):
                unsupported.append((name, type(module).__name__))
            continue
        kind, fan_in, fan_out = shape
        rank, alpha, source = resolve_rank_alpha(name, spec)
        rank = rank if rank is not None else PEFT_DEFAULT_RANK
        if source == "mlx-scale" and spec.scale is not None:
            alpha = spec.scale * rank
        alpha = alpha if alpha is not None else PEFT_DEFAULT_ALPHA
        plan.append(Target(name, kind, rank, alpha, fan_in, fan_out))
    return Plan(plan, saved, unsupported, targets)


def mark_only_lora_trainable(model: nn.Module, saved_modules: list[str] | None = None) -> int:
    """Freeze every parameter, then unfreeze the factors of LoRA layers (found by type) and
    the parameters of ``saved_modules`` (PEFT's ``modules_to_save``, trained whole).

    Returns the number of trainable parameters left.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    total = 0
    for _, module in lora_modules(model):
        for factor in (module.factor_a, module.factor_b):
            factor.requires_grad_(True)
            total += factor.numel()
    for name in saved_modules or []:
        for param in model.get_submodule(name).parameters():
            param.requires_grad_(True)
            total += param.numel()
    return total


def inject(
    model: nn.Module,
    spec: LoraSpec,
    targets: list[Target] | None = None,
    *,
    saved_modules: list[str] | None = None,
    init: str | None = None,
    std: float | None = None,
    seed: int = 0,
) -> list[Target]:
    """Replace each target module of ``model`` by its LoRA layer, freeze the rest (but
    ``saved_modules``), initialise.

    ``init`` is a scheme of :mod:`loracheck.reference.init` (default: the one ``spec``
    declares, PEFT's kaiming when it declares none); ``std`` the σ of ``normal`` (default the
    spec's ``init_std``, else 0.02). The LoRA dropout masks come from one generator of the
    model's device seeded with ``seed`` (see :class:`~loracheck.reference.layers.LoRADropout`).
    Without ``targets`` the spec is planned here (:func:`plan_targets`), and a plan that
    selects nothing is a :class:`~loracheck.errors.UsageError`. Returns the targets adapted.
    """
    if targets is None:
        plan = plan_targets(model, spec)
        if not plan.targets:
            raise UsageError(f"target_modules {plan.target_modules!r} selects no Linear or "
                             "Embedding in the model")
        targets, saved_modules = plan.targets, plan.saved_modules
    dropout = spec.dropout or 0.0
    use_rslora = bool(spec.use_rslora)
    created: list[tuple[str, LoRAModule]] = []
    generator: torch.Generator | None = None
    for target in targets:
        base = model.get_submodule(target.name)
        layer: LoRAModule
        if target.kind == "linear" and _shape(base) is not None:
            if generator is None and dropout > 0:
                weight = base.weight
                assert isinstance(weight, torch.Tensor)
                generator = torch.Generator(device=weight.device).manual_seed(seed + 7)
            layer = LoRALinear(base, target.rank, target.alpha, dropout=dropout,
                               use_rslora=use_rslora, generator=generator)
        elif isinstance(base, nn.Embedding):
            layer = LoRAEmbedding(base, target.rank, target.alpha, use_rslora=use_rslora)
        else:
            raise UsageError(f"{target.name} is a {type(base).__name__}, not Linear or Embedding")
        parent_name, _, child = target.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        created.append((target.name, layer))
    mark_only_lora_trainable(model, saved_modules)
    scheme = init or scheme_from_peft(spec.init_lora_weights, init_std=spec.init_std)
    sigma = std if std is not None else (spec.init_std if spec.init_std is not None else 0.02)
    init_model(created, scheme, std=sigma, seed=seed)
    return targets


@torch.no_grad()
def merge_layer(layer: LoRAModule) -> bool:
    """W ← W + ΔW; a no-op (returning False) when the layer is already merged."""
    if layer.merged:
        return False
    layer.base_weight.add_(layer.delta_weight())
    layer.merged = True
    return True


@torch.no_grad()
def unmerge_layer(layer: LoRAModule) -> bool:
    """W ← W − ΔW; a no-op (returning False) when the layer is not merged."""
    if not layer.merged:
        return False
    layer.base_weight.sub_(layer.delta_weight())
    layer.merged = False
    return True


def merge(model: nn.Module) -> int:
    """Merge every LoRA layer into its base weight; returns how many were merged now."""
    return sum(merge_layer(m) for _, m in lora_modules(model))


def unmerge(model: nn.Module) -> int:
    """Undo :func:`merge`; in fp32 W comes back to within rounding."""
    return sum(unmerge_layer(m) for _, m in lora_modules(model))
