"""`inspect` text: the summary block, the outliers-first table, truncation, colour."""

from __future__ import annotations

import re

from loracheck.model import ExtraTensor, Report, Stage, StageSource
from loracheck.render import render_inspect_text
from loracheck.render.inspect_text import (
    LEGEND,
    MISSING_ALPHA,
    alpha_text,
    rank_text,
    scaling_text,
    targets_text,
)
from test_render_factory import ROOT, adapter, layer, mixed_report, peft_spec


def _render(report: Report, *, all_layers: bool = False, color: bool = False) -> list[str]:
    return render_inspect_text(report, color=color, all_layers=all_layers, root=ROOT).splitlines()


def test_exact_output_of_a_healthy_adapter() -> None:
    lines = _render(Report(adapters=[adapter()]))
    assert lines == [
        "adapter",
        "  format   peft",
        "  variant  lora",
        "  method   LoRA",
        "  config   peft (adapter/adapter_config.json)",
        "  rank     4",
        "  alpha    8",
        "  scaling  alpha/r = 2",
        "  dropout  0.05",
        "  targets  q_proj, v_proj (2 module types × 2 layers = 4 modules)",
        "  init     kaiming-uniform (inferred; A std 0.072 vs 0.0722 expected)",
        "  stage    trained",
        "  tensors  9",
        "  bytes    40.0 KiB (40,960 B)",
        "  dtypes   F32 ×9",
        "  extra    1 tensor, 32.0 KiB: modules_to_save ×1",
        "",
        "  name                             rank  in→out  scale  A std  B std  ‖ΔW‖  σmax"
        "  eff.rank  nonfinite",
        "  q_proj (2 modules)",
        "  model.layers.0.self_attn.q_proj     4   64→64      2  0.072   0.01     1   0.8"
        "      1.98          0",
        "  model.layers.1.self_attn.q_proj     4   64→64      2  0.072   0.01     1   0.8"
        "      1.98          0",
        "  v_proj (2 modules)",
        "  model.layers.0.self_attn.v_proj     4   64→64      2  0.072   0.01     1   0.8"
        "      1.98          0",
        "  model.layers.1.self_attn.v_proj     4   64→64      2  0.072   0.01     1   0.8"
        "      1.98          0",
        *(f"  {line}" for line in LEGEND),
    ]


def test_findings_follow_their_adapter_and_config_only_unit() -> None:
    lines = _render(mixed_report())
    i = lines.index("  2 findings")
    assert lines[i + 1].startswith("  adapter/adapter_model.safetensors:1:1: LC203 [error] ")
    assert "configs/train.yaml" in lines
    j = lines.index("configs/train.yaml")
    block = lines[j:]
    assert "  weights  none (config only)" in block
    assert "  config   axolotl" in block
    assert "  dropout  1.5" in block
    assert block[-1] == "  configs/train.yaml:7:3: LC103 [error] dropout 1.5 is outside [0, 1) " \
        "(lora_dropout)"


def _outlier_adapter() -> Report:
    layers = [layer(i, norm=1.0) for i in range(8)]
    layers[6] = layer(6, norm=100.0)
    layers[2] = layer(2, norm=0.001)
    layers[5] = layer(5, norm=1.0, nonfinite=3)
    layers[7] = layer(7, norm=0.0)
    return Report(adapters=[adapter(layers)])


def _table_names(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines if (m := re.match(r"  model\.layers\.(\d+)\.", line))]


def test_outliers_first_and_top_five() -> None:
    lines = _render(_outlier_adapter())
    # non-finite first, then the zero update, then the farthest from the median.
    assert _table_names(lines) == ["5", "7", "2", "6", "0"]
    assert "  q_proj (8 modules, 5 shown, outliers first)" in lines
    assert "  … 3 more (--all shows every row)" in lines


def test_all_layers_shows_every_row() -> None:
    lines = _render(_outlier_adapter(), all_layers=True)
    assert _table_names(lines) == ["5", "7", "2", "6", "0", "1", "3", "4"]
    assert not any("more (--all" in line for line in lines)
    assert "  q_proj (8 modules)" in lines


def test_rank_pattern_missing_alpha_and_forced_stage() -> None:
    layers = [layer(0, rank=4, alpha=None, alpha_source="missing"),
              layer(1, rank=16, alpha=None, alpha_source="missing")]
    a = adapter(layers, spec=peft_spec(alpha=None, rank_pattern={"layers.1": 16}),
                stage=Stage.INIT, stage_source=StageSource.COMMAND_LINE)
    assert rank_text(a) == "4–16 (rank_pattern)"
    assert alpha_text(a) == MISSING_ALPHA == "missing — PEFT assumes 8, kohya/diffusers scale 1"
    assert scaling_text(a) == "alpha-missing"
    lines = _render(Report(adapters=[a]))
    assert "  stage    init (set by --stage)" in lines
    assert f"  alpha    {MISSING_ALPHA}" in lines


def test_alpha_and_scaling_variants() -> None:
    kohya = adapter([layer(0, alpha=2.0, alpha_source="tensor"),
                     layer(1, alpha=4.0, alpha_source="tensor")], spec=None)
    assert alpha_text(kohya) == "2–4 (per-module .alpha)"
    assert scaling_text(kohya) == "kohya-per-module = 0.5–1"
    assert rank_text(kohya) == "4"
    assert targets_text(kohya) == "q_proj (1 module type × 2 layers = 2 modules)"
    mlx = adapter([layer(0, alpha=None, alpha_source="mlx-scale")],
                  spec=peft_spec(source_format="mlx", alpha=None, scale=20.0))
    mlx.layers[0].scaling = 20.0
    assert alpha_text(mlx) == "- (mlx-lm uses scale directly)"
    assert scaling_text(mlx) == "mlx-scale = 20"
    rs = adapter([layer(0)], spec=peft_spec(use_rslora=True, rank=4, alpha=8.0))
    rs.layers[0].scaling = 4.0
    assert scaling_text(rs) == "alpha/sqrt(r) = 4"
    assert targets_text(rs) == "q_proj (1 module type × 1 layer = 1 module)"
    config_only = adapter([], spec=peft_spec(), has_weights=False)
    assert scaling_text(config_only) == "alpha/r = 2"
    assert rank_text(config_only) == "4"


def test_extra_tensors_summary() -> None:
    a = adapter()
    a.extra_tensors.append(ExtraTensor("x.bias", "F16", (1024, 1024), 2 * 1024 * 1024, "bias"))
    lines = _render(Report(adapters=[a]))
    assert "  extra    2 tensors, 2.0 MiB: bias ×1, modules_to_save ×1" in lines


def test_colour_only_when_asked_and_same_text() -> None:
    plain = "\n".join(_render(mixed_report()))
    coloured = "\n".join(_render(mixed_report(), color=True))
    assert "\x1b[" not in plain and "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_empty_report_and_deterministic() -> None:
    assert _render(Report()) == ["No adapters found."]
    assert _render(_outlier_adapter()) == _render(_outlier_adapter())


def test_small_deviations_keep_file_order() -> None:
    layers = [layer(0, norm=0.9), layer(1, norm=1.5), layer(2, norm=1.0), layer(3, norm=0.7)]
    lines = _render(Report(adapters=[adapter(layers)]))
    assert _table_names(lines) == ["0", "1", "2", "3"]
