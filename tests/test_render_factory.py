"""Typed-model factories for the renderer tests, built straight from model.py dataclasses."""

from __future__ import annotations

from pathlib import Path

from loracheck.model import (
    Adapter,
    DeltaStats,
    Diagnostic,
    ExtraTensor,
    FactorStats,
    InitInference,
    InitScheme,
    LayerRecord,
    LoraSpec,
    Report,
    RuleMeta,
    Severity,
    Stage,
    TensorRef,
)

ROOT = Path("/repo")


def factor(std: float, *, nonfinite: int = 0, numel: int = 256, zero: float = 0.0) -> FactorStats:
    return FactorStats(
        numel=numel,
        mean=0.0,
        std=std,
        absmax=3.0 * std,
        zero_fraction=zero,
        nonfinite=nonfinite,
        kurtosis=1.8 if std else None,
    )


def layer(
    block: int,
    module: str = "q_proj",
    *,
    rank: int = 4,
    fan_in: int = 64,
    fan_out: int = 64,
    alpha: float | None = 8.0,
    alpha_source: str = "config",
    norm: float = 1.0,
    a_std: float = 0.072,
    b_std: float = 0.01,
    nonfinite: int = 0,
    dtype: str = "F32",
) -> LayerRecord:
    parent = "mlp" if module.endswith(("gate_proj", "up_proj", "down_proj")) else "self_attn"
    name = f"base_model.model.model.layers.{block}.{parent}.{module}"
    scaling = alpha / rank if alpha is not None else None
    return LayerRecord(
        name=name,
        kind="linear",
        a=TensorRef(f"{name}.lora_A.weight", dtype, (rank, fan_in), rank * fan_in * 4),
        b=TensorRef(f"{name}.lora_B.weight", dtype, (fan_out, rank), rank * fan_out * 4),
        rank=rank,
        in_features=fan_in,
        out_features=fan_out,
        alpha=alpha,
        alpha_source=alpha_source,
        scaling=scaling,
        a_stats=factor(a_std),
        b_stats=factor(b_std, nonfinite=nonfinite),
        delta=DeltaStats(
            frobenius=norm,
            singular_values=(norm * 0.8, norm * 0.6, 0.0, 0.0),
            sigma_max=norm * 0.8,
            effective_rank=1.98,
            stable_rank=1.5625,
            alignment=0.5,
        ),
    )


def peft_spec(**overrides: object) -> LoraSpec:
    fields: dict[str, object] = dict(
        source_format="peft",
        path="/repo/adapter/adapter_config.json",
        rank=4,
        alpha=8.0,
        dropout=0.05,
        use_rslora=False,
        use_dora=False,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=True,
        lines={"r": 3, "lora_alpha": 4},
    )
    fields.update(overrides)
    return LoraSpec(**fields)


def adapter(layers: list[LayerRecord] | None = None, **overrides: object) -> Adapter:
    layers = layers if layers is not None else [
        layer(i, m) for i in range(2) for m in ("q_proj", "v_proj")
    ]
    a = Adapter(
        path="/repo/adapter",
        format="peft",
        files=["/repo/adapter/adapter_config.json", "/repo/adapter/adapter_model.safetensors"],
        spec=peft_spec(),
        layers=layers,
        extra_tensors=[
            ExtraTensor("base_model.model.lm_head.weight", "F32", (128, 64), 32768,
                        "modules_to_save"),
        ],
        metadata={"format": "pt"},
        n_tensors=2 * len(layers) + 1,
        n_bytes=sum((lr.a.nbytes if lr.a else 0) + (lr.b.nbytes if lr.b else 0) for lr in layers)
        + 32768,
        dtypes={"F32": 2 * len(layers) + 1},
        init=InitInference(
            InitScheme.KAIMING_UNIFORM, False, "A std 0.0720 vs kaiming 0.0722 at in=64", 0.0722,
            0.0720,
        ),
        stage=Stage.TRAINED,
    )
    for key, value in overrides.items():
        setattr(a, key, value)
    return a


def diag(
    code: str = "LC203",
    severity: Severity = Severity.ERROR,
    *,
    path: str = "/repo/adapter/adapter_model.safetensors",
    message: str = "NaN or Inf in lora_B",
    line: int | None = None,
    col: int | None = None,
    location: str | None = "model.layers.0.self_attn.q_proj",
    name: str = "nonfinite-weights",
    help: str | None = None,
) -> Diagnostic:
    return Diagnostic(
        code=code, name=name, severity=severity, path=path, message=message, line=line, col=col,
        location=location, help=help,
    )


RULES: dict[str, RuleMeta] = {
    "LC103": RuleMeta(
        "LC103", "dropout-out-of-range", Severity.ERROR, "Dropout outside [0, 1) or too high.",
        "## What it does\nChecks dropout.\n\n## Why is this bad?\nIt breaks training.\n\n"
        "## Example\n`lora_dropout: 1.5`\n\n## Use instead\n`lora_dropout: 0.05`",
    ),
    "LC203": RuleMeta(
        "LC203", "nonfinite-weights", Severity.ERROR, "NaN or Inf in a tensor.",
        "## What it does\nFinds NaN.\n\n## Why is this bad?\nIt poisons outputs.\n\n"
        "## Example\n-\n\n## Use instead\n-",
    ),
    "LC209": RuleMeta(
        "LC209", "update-norm-outlier", Severity.WARNING, "A module's update is an outlier.",
        "## What it does\nCompares norms.\n\n## Why is this bad?\nDivergence.\n\n"
        "## Example\n-\n\n## Use instead\n-",
    ),
}


def mixed_report() -> Report:
    """Two units: a trained PEFT adapter with findings and a config file with a finding."""
    cfg = Adapter(
        path="/repo/configs/train.yaml",
        format="axolotl",
        files=["/repo/configs/train.yaml"],
        spec=peft_spec(source_format="axolotl", path="/repo/configs/train.yaml", dropout=1.5),
        has_weights=False,
    )
    return Report(
        adapters=[adapter(), cfg],
        diagnostics=[
            diag("LC209", Severity.WARNING, message="update norm 40x the q_proj median",
                 location="model.layers.1.self_attn.q_proj", name="update-norm-outlier"),
            diag(),
            diag("LC103", Severity.ERROR, path="/repo/configs/train.yaml",
                 message="dropout 1.5 is outside [0, 1)", line=7, col=3,
                 location="lora_dropout", name="dropout-out-of-range"),
        ],
    )


def test_factory_builds_consistent_adapter() -> None:
    a = adapter()
    assert len(a.layers) == 4
    assert a.layers[0].module_type == "q_proj"
    assert mixed_report().count(Severity.ERROR) == 2
