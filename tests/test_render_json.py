"""The stable JSON schema: round trip, keys, NaN handling, determinism, documentation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from loracheck.model import DeltaStats, FactorStats, LayerRecord, Report
from loracheck.render import SCHEMA_VERSION, render_json, report_to_dict
from test_render_factory import adapter, layer, mixed_report, peft_spec

DOC = Path(__file__).resolve().parents[1] / "docs" / "json-schema.md"
FREE_FORM = {"dtypes", "metadata", "extras", "invalid", "lines", "suppressions", "rank_pattern",
             "alpha_pattern"}


def test_round_trip_and_top_level_keys() -> None:
    data = json.loads(render_json(mixed_report()))
    assert list(data) == ["schema_version", "tool", "files", "diagnostics", "summary"]
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["tool"]["name"] == "loracheck"
    assert data["summary"] == {"files": 2, "layers": 4, "errors": 2, "warnings": 1, "infos": 0}
    assert data == report_to_dict(mixed_report())


def test_file_layer_and_diagnostic_keys() -> None:
    data = report_to_dict(mixed_report())
    f = data["files"][0]
    for key in ("path", "format", "files", "stage", "stage_forced", "init_scheme", "variant",
                "spec", "n_tensors", "n_bytes", "dtypes", "metadata", "layers", "extra_tensors",
                "orphans", "empty_tensors"):
        assert key in f
    assert f["init_scheme"] == {
        "scheme": "kaiming-uniform", "label": "kaiming-uniform", "declared": False,
        "evidence": "A std 0.0720 vs kaiming 0.0722 at in=64", "expected_std": 0.0722,
    }
    spec = f["spec"]
    for key in ("rank", "alpha", "alpha_missing", "scale", "scaling", "dropout", "use_rslora",
                "use_dora", "target_modules", "init_lora_weights", "rank_pattern",
                "alpha_pattern", "modules_to_save", "bias", "source_format", "lines"):
        assert key in spec
    assert spec["scaling"] == {"convention": "alpha/r", "value": 2.0, "values": [2.0]}
    assert spec["lines"] == {"lora_alpha": 4, "r": 3}
    lay = f["layers"][0]
    for key in ("name", "kind", "module_type", "rank", "in_features", "out_features", "alpha",
                "alpha_source", "scaling", "a_key", "b_key", "dtype", "a_mean", "a_std",
                "a_absmax", "a_zero_fraction", "a_kurtosis", "b_mean", "b_std", "b_absmax",
                "b_zero_fraction", "delta_norm", "sigma_max", "singular_values",
                "effective_rank", "stable_rank", "nonfinite"):
        assert key in lay
    assert lay["module_type"] == "q_proj"
    assert lay["singular_values"] == [0.8, 0.6, 0.0, 0.0]
    assert f["extra_tensors"][0] == {
        "key": "base_model.model.lm_head.weight", "dtype": "F32", "shape": [128, 64],
        "nbytes": 32768, "role": "modules_to_save",
    }
    d = data["diagnostics"][0]
    assert list(d) == ["code", "name", "severity", "path", "line", "col", "location", "message",
                       "help"]
    assert data["files"][1]["spec"]["dropout"] == 1.5
    assert data["files"][1]["init_scheme"] is None


def test_nonfinite_floats_become_null() -> None:
    nan, inf = math.nan, math.inf
    bad = LayerRecord(
        name="model.layers.0.self_attn.q_proj", kind="linear", a=None, b=None, rank=4,
        in_features=8, out_features=8, alpha=inf, alpha_source="config", scaling=inf,
        a_stats=FactorStats(32, nan, nan, inf, 0.0, 3, kurtosis=nan),
        delta=DeltaStats(nan, (nan, inf, 1.0, 0.0), inf, nan, nan, nan),
    )
    report = Report(adapters=[adapter([bad], spec=peft_spec(alpha=-inf, dropout=nan))])
    text = render_json(report)
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    lay = data["files"][0]["layers"][0]
    assert lay["a_std"] is None and lay["a_kurtosis"] is None and lay["delta_norm"] is None
    assert lay["singular_values"] == [None, None, 1.0, 0.0]
    assert lay["alpha"] is None and lay["scaling"] is None
    assert lay["a_nonfinite"] == 3 and lay["nonfinite"] == 3
    assert data["files"][0]["spec"]["alpha"] is None
    assert data["files"][0]["spec"]["dropout"] is None


def test_json_is_ascii_and_deterministic() -> None:
    report = mixed_report()
    report.adapters[0].metadata = {"z": "ΔW", "a": "1"}
    text = render_json(report)
    assert text.isascii()
    assert text == render_json(mixed_report_with_metadata())
    assert list(json.loads(text)["files"][0]["metadata"]) == ["a", "z"]
    shuffled = mixed_report_with_metadata()
    shuffled.diagnostics.reverse()
    assert render_json(shuffled) == text


def mixed_report_with_metadata() -> Report:
    report = mixed_report()
    report.adapters[0].metadata = {"a": "1", "z": "ΔW"}
    return report


def test_all_layers_false_keeps_outliers_in_file_order() -> None:
    layers = [layer(i, norm=1.0) for i in range(8)]
    layers[6] = layer(6, norm=100.0)
    layers[2] = layer(2, norm=0.001)
    data = report_to_dict(Report(adapters=[adapter(layers)]), all_layers=False)
    f = data["files"][0]
    assert f["n_layers"] == 8 and f["layers_omitted"] == 3
    names = [lay["name"].split(".")[4] for lay in f["layers"]]
    assert names == sorted(names, key=int)
    assert {"2", "6"} <= set(names)
    assert report_to_dict(Report(adapters=[adapter(layers)]))["files"][0]["layers_omitted"] == 0


def test_scaling_conventions() -> None:
    mlx = adapter([layer(0, alpha=None, alpha_source="mlx-scale")],
                  spec=peft_spec(source_format="mlx", alpha=None, scale=20.0))
    mlx.layers[0].scaling = 20.0
    assert report_to_dict(Report(adapters=[mlx]))["files"][0]["scaling"] == {
        "convention": "mlx-scale", "value": 20.0, "values": [20.0]}
    kohya = adapter([layer(0, alpha=2.0, alpha_source="tensor"),
                     layer(1, alpha=4.0, alpha_source="tensor")], spec=None)
    s = report_to_dict(Report(adapters=[kohya]))["files"][0]
    assert s["spec"] is None
    assert s["scaling"] == {"convention": "kohya-per-module", "value": None,
                            "values": [0.5, 1.0]}
    rs = adapter([layer(0)], spec=peft_spec(use_rslora=True))
    rs.layers[0].scaling = 4.0
    assert report_to_dict(Report(adapters=[rs]))["files"][0]["scaling"]["convention"] == (
        "alpha/sqrt(r)")
    missing = adapter([], spec=peft_spec(alpha=None), has_weights=False)
    assert report_to_dict(Report(adapters=[missing]))["files"][0]["scaling"] == {
        "convention": "alpha-missing", "value": None, "values": []}


def _keys(value: Any, out: set[str], parent: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(k)
            if k not in FREE_FORM:
                _keys(v, out, k)
    elif isinstance(value, list):
        for v in value:
            _keys(v, out, parent)


def test_every_emitted_key_is_documented() -> None:
    report = mixed_report()
    report.adapters[0].metadata_spec = peft_spec(source_format="kohya-metadata")
    report.adapters[0].orphans = [report.adapters[0].layers[0].a]  # type: ignore[list-item]
    keys: set[str] = set()
    _keys(report_to_dict(report), keys)
    documented = set(re.findall(r"`([a-z_$][a-z0-9_.]*)`", DOC.read_text(encoding="utf-8")))
    assert sorted(keys - documented) == []


def test_layers_that_need_cleaning_give_the_bytes_a_cleaned_report_gives() -> None:
    """Per-layer objects skip the cleaning pass when they are plain JSON data; one that is not
    (a NaN, a tuple, a set, an enum) must still come out exactly as if it had been cleaned."""
    from loracheck.model import Severity
    from loracheck.render.json_out import clean, dumps

    data = report_to_dict(mixed_report())
    first = data["files"][0]["layers"][0]
    first.update({"a_std": math.nan, "extra_tuple": (1, 2), "extra_set": {"b", "a"},
                  "extra_enum": Severity.ERROR, "extra_inf": -math.inf})
    assert dumps(data) == dumps(clean(data))
    parsed = json.loads(dumps(data))
    row = parsed["files"][0]["layers"][0]
    assert row["a_std"] is None and row["extra_inf"] is None
    assert row["extra_tuple"] == [1, 2] and row["extra_set"] == ["a", "b"]
    assert row["extra_enum"] == "error"
