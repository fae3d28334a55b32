"""Adapters built directly from the typed model, for rule tests that need no files.

The statistics are what the loader would measure on a healthy adapter of that shape, so a
test plants exactly one fault by overriding one argument.
"""

from __future__ import annotations

import math
from typing import Any

from loracheck.engine import check_adapter
from loracheck.model import (
    Adapter,
    DeltaStats,
    Diagnostic,
    ExtraTensor,
    FactorStats,
    Fault,
    InitInference,
    InitScheme,
    LayerRecord,
    LoraSpec,
    Stage,
    StageSource,
    TensorRef,
)
from loracheck.settings import Settings

ROOT = "/data/adapter"
CONFIG = f"{ROOT}/adapter_config.json"
WEIGHTS = f"{ROOT}/adapter_model.safetensors"
PREFIX = "base_model.model.model.layers"


def factor(numel: int, std: float, *, zero: bool = False, kurtosis: float | None = 1.8,
           nonfinite: int = 0, absmax: float | None = None, mean: float = 0.0) -> FactorStats:
    if zero:
        return FactorStats(numel, 0.0, 0.0, 0.0, 1.0, nonfinite, None)
    return FactorStats(
        numel=numel, mean=mean, std=std,
        absmax=absmax if absmax is not None else std * math.sqrt(3.0),
        zero_fraction=0.0, nonfinite=nonfinite, kurtosis=kurtosis,
    )


def layer(
    name: str,
    *,
    kind: str = "linear",
    r: int = 8,
    n_in: int = 64,
    n_out: int = 64,
    alpha: float = 16.0,
    alpha_source: str = "config",
    a_std: float | None = None,
    a_kurtosis: float = 1.8,
    a_zero: bool = False,
    b_zero: bool = False,
    b_std: float = 0.01,
    a_dtype: str = "F32",
    b_dtype: str = "F32",
    a_nonfinite: int = 0,
    b_nonfinite: int = 0,
    b_absmax: float | None = None,
    frobenius: float | None = None,
    effective_rank: float | None = None,
    magnitude: bool = False,
    magnitude_stats: FactorStats | None = None,
    alpha_tensor: bool = False,
    b_inner: int | None = None,
) -> LayerRecord:
    """One LoRA module; trained (B ≠ 0) unless ``b_zero``; A kaiming-uniform by default."""
    if kind == "embedding":
        a_shape, b_shape = (r, n_in), (n_out, r)
    else:
        a_shape, b_shape = (r, n_in), (n_out, b_inner if b_inner is not None else r)
    a_ref = TensorRef(f"{name}.lora_A.weight", a_dtype, a_shape, 4 * r * n_in)
    b_ref = TensorRef(f"{name}.lora_B.weight", b_dtype, b_shape, 4 * r * n_out)
    if a_std is None:
        a_std = 1.0 / math.sqrt(3.0 * n_in)
    scaling = alpha / r
    a_stats = factor(r * n_in, a_std, zero=a_zero, kurtosis=a_kurtosis, nonfinite=a_nonfinite)
    b_stats = factor(r * n_out, b_std, zero=b_zero, kurtosis=3.0, nonfinite=b_nonfinite,
                     absmax=b_absmax)
    if a_zero or b_zero:
        delta = DeltaStats(0.0, (0.0,) * r, 0.0, 0.0, 0.0, 0.0)
    else:
        frob = frobenius if frobenius is not None else scaling * a_std * b_std * math.sqrt(
            r * n_in * n_out)
        eff = effective_rank if effective_rank is not None else 0.85 * r
        sv = tuple(frob / math.sqrt(r) for _ in range(r))
        delta = DeltaStats(frob, sv, sv[0], eff, eff, 0.1)
    if a_nonfinite or b_nonfinite:
        delta = DeltaStats(math.nan, (math.nan,) * r, math.nan, math.nan, math.nan, math.nan)
    mag_ref = TensorRef(f"{name}.lora_magnitude_vector", "F32", (n_out,), 4 * n_out) \
        if magnitude else None
    if magnitude and magnitude_stats is None:
        magnitude_stats = FactorStats(n_out, 1.0, 0.1, 1.3, 0.0, 0, 3.0)
    return LayerRecord(
        name=name, kind=kind, a=a_ref, b=b_ref, rank=r, in_features=n_in, out_features=n_out,
        alpha=alpha, alpha_source=alpha_source, scaling=scaling,
        alpha_tensor=TensorRef(f"{name}.alpha", "F32", (), 4) if alpha_tensor else None,
        magnitude=mag_ref, a_stats=a_stats, b_stats=b_stats,
        magnitude_stats=magnitude_stats if magnitude else None, delta=delta,
    )


def peft_name(i: int, module: str) -> str:
    group = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
    return f"{PREFIX}.{i}.{group}.{module}"


def spec(**overrides: Any) -> LoraSpec:
    """A healthy PEFT adapter_config.json: r 8, α 16, dropout 0.05, q/v targets."""
    values: dict[str, Any] = dict(
        source_format="peft", path=CONFIG, rank=8, alpha=16.0, dropout=0.05,
        init_lora_weights=True, use_rslora=False, use_dora=False,
        target_modules=["q_proj", "v_proj"], bias="none",
        lines={"rank": 12, "alpha": 8, "dropout": 9, "init_lora_weights": 6,
               "target_modules": 20, "use_rslora": 22, "use_dora": 23, "rank_pattern": 14,
               "alpha_pattern": 3, "bias": 4, "layers_pattern": 7},
    )
    values.update(overrides)
    return LoraSpec(**values)


def layers(n_layers: int = 5, modules: tuple[str, ...] = ("q_proj", "v_proj"),
           **kw: Any) -> list[LayerRecord]:
    return [layer(peft_name(i, m), **kw) for i in range(n_layers) for m in modules]


def adapter(
    layer_list: list[LayerRecord] | None = None,
    *,
    spec_: LoraSpec | None = None,
    stage: Stage = Stage.TRAINED,
    forced: bool = False,
    scheme: InitScheme = InitScheme.KAIMING_UNIFORM,
    declared: bool = True,
    fmt: str = "peft",
    has_weights: bool = True,
    **fields: Any,
) -> Adapter:
    """A PEFT adapter folder with config and weights (trained by default)."""
    the_layers = layer_list if layer_list is not None else layers()
    the_spec = spec_ if spec_ is not None else spec()
    files = [CONFIG, WEIGHTS] if has_weights else [CONFIG]
    ad = Adapter(
        path=ROOT, format=fmt, files=files, spec=the_spec, layers=the_layers,
        n_tensors=2 * len(the_layers), n_bytes=1000, dtypes={"F32": 2 * len(the_layers)},
        init=InitInference(scheme, declared, "test"), stage=stage,
        stage_source=StageSource.COMMAND_LINE if forced else StageSource.WEIGHTS,
        has_weights=has_weights,
    )
    for key, value in fields.items():
        setattr(ad, key, value)
    return ad


def config_only(spec_: LoraSpec | None = None, **fields: Any) -> Adapter:
    """A training config file alone (no weights)."""
    the_spec = spec_ if spec_ is not None else spec()
    ad = Adapter(path=the_spec.path or CONFIG, format=the_spec.source_format, files=[CONFIG],
                 spec=the_spec, has_weights=False)
    for key, value in fields.items():
        setattr(ad, key, value)
    return ad


def init_adapter(**kw: Any) -> Adapter:
    """A fresh PEFT adapter at stage init (B = 0), with --stage init."""
    kw.setdefault("stage", Stage.INIT)
    kw.setdefault("forced", True)
    layer_kw = kw.pop("layer_kw", {})
    return adapter(layers(b_zero=True, **layer_kw), **kw)


def run(ad: Adapter, settings: Settings | None = None, base: Any = None) -> list[Diagnostic]:
    return check_adapter(ad, settings or Settings(), base)


def codes(ad: Adapter, settings: Settings | None = None, base: Any = None) -> set[str]:
    return {d.code for d in run(ad, settings, base)}


__all__ = [
    "ExtraTensor", "Fault", "InitScheme", "Stage", "TensorRef", "adapter", "codes",
    "config_only", "factor", "init_adapter", "layer", "layers", "peft_name", "run", "spec",
]
