"""The stable JSON schema of ``inspect --format json`` and ``check --format json``.

Documented field by field in ``docs/json-schema.md``; bump :data:`SCHEMA_VERSION` on any change
that removes or retypes a field (adding a field is not a break). Non-finite floats become
``null``: JSON has no NaN, and the ``nonfinite`` counters and the diagnostics say what happened.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, cast

from loracheck import __version__
from loracheck.initscheme import scheme_label
from loracheck.model import (
    Adapter,
    Diagnostic,
    ExtraTensor,
    FactorStats,
    Fault,
    InitInference,
    LayerRecord,
    LoraSpec,
    Report,
    Severity,
    TensorRef,
)
from loracheck.render._common import (
    distinct_scalings,
    scaling_convention,
    selected_layers,
    sorted_diagnostics,
)

SCHEMA_VERSION = 1
TOOL_NAME = "loracheck"


def clean(value: Any) -> Any:
    """``value`` as plain JSON data: non-finite floats -> None, enums -> their value, tuples and
    sets -> lists (sets sorted), mapping keys -> str, anything else unknown -> ``str``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Enum):
        return clean(value.value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((clean(v) for v in value), key=repr)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return clean(item())
    return str(value)


def _float(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ref(ref: TensorRef | None) -> dict[str, Any] | None:
    if ref is None:
        return None
    return {"key": ref.key, "dtype": ref.dtype, "shape": list(ref.shape), "nbytes": ref.nbytes}


_FACTOR_FIELDS = ("mean", "std", "absmax", "zero_fraction", "kurtosis", "row_norm_mean",
                  "row_norm_cv")
# A layer's keys, in the schema's order (docs/json-schema.md): made once, hundreds of layers a
# file; layer_to_dict fills in the values in the same order.
_LAYER_KEYS = (
    "name", "kind", "module_type", "rank", "in_features", "out_features", "alpha",
    "alpha_source", "scaling", "a_key", "b_key", "a_shape", "b_shape", "dtype", "alpha_key",
    "magnitude_key", "bias_key", "delta_from",
    *(f"{prefix}_{name}" for prefix in ("a", "b", "magnitude")
      for name in (*_FACTOR_FIELDS, "nonfinite")),
    "delta_norm", "sigma_max", "singular_values", "effective_rank", "stable_rank", "alignment",
    "nonfinite",
)
_NO_FACTOR = (None,) * (len(_FACTOR_FIELDS) + 1)
_NO_DELTA = (None,) * 6


def _floats(values: tuple[float | None, ...]) -> list[float | None]:
    """``values`` as floats, each None or non-finite one as None (:func:`_float` of each)."""
    isfinite = math.isfinite
    if None not in values:  # the usual case, in C loops
        present = cast("tuple[float, ...]", values)
        if all(map(isfinite, present)):
            return list(map(float, present))
    return [None if v is None or not isfinite(v) else float(v) for v in values]


def _factor(stats: FactorStats | None) -> tuple[Any, ...]:
    """One factor's values for the layer's ``{prefix}_*`` keys, in their order."""
    if stats is None:
        return _NO_FACTOR
    s = stats
    return (*_floats((s.mean, s.std, s.absmax, s.zero_fraction, s.kurtosis, s.row_norm_mean,
                      s.row_norm_cv)), s.nonfinite)


def _layer_dtype(layer: LayerRecord) -> str | None:
    dtypes = sorted({ref.dtype for ref in (layer.a, layer.b) if ref is not None})
    return "/".join(dtypes) if dtypes else None


def layer_to_dict(layer: LayerRecord) -> dict[str, Any]:
    a, b, delta = layer.a, layer.b, layer.delta
    alpha, scaling = _floats((layer.alpha, layer.scaling))
    if delta is None:
        delta_values: tuple[Any, ...] | list[Any] = _NO_DELTA
    else:
        norm, sigma_max, effective, stable, alignment = _floats((
            delta.frobenius, delta.sigma_max, delta.effective_rank, delta.stable_rank,
            delta.alignment))
        delta_values = (norm, sigma_max, _floats(delta.singular_values), effective, stable,
                        alignment)
    return dict(zip(_LAYER_KEYS, (
        layer.name, layer.kind, layer.module_type, layer.rank, layer.in_features,
        layer.out_features, alpha, layer.alpha_source, scaling,
        a.key if a else None, b.key if b else None,
        list(a.shape) if a else None, list(b.shape) if b else None,
        _layer_dtype(layer),
        layer.alpha_tensor.key if layer.alpha_tensor else None,
        layer.magnitude.key if layer.magnitude else None,
        layer.bias.key if layer.bias else None,
        layer.delta_from,
        *_factor(layer.a_stats), *_factor(layer.b_stats), *_factor(layer.magnitude_stats),
        *delta_values, layer.nonfinite,
    ), strict=True))


def scaling_to_dict(adapter: Adapter) -> dict[str, Any]:
    values = distinct_scalings(adapter)
    return {
        "convention": scaling_convention(adapter),
        "value": values[0] if len(values) == 1 else None,
        "values": values,
    }


def spec_to_dict(spec: LoraSpec, adapter: Adapter | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source_format": spec.source_format,
        "path": spec.path,
        "method": spec.method.value,
        "method_name": spec.method_name,
        "rank": spec.rank,
        "alpha": _float(spec.alpha),
        "alpha_missing": spec.alpha_missing,
        "scale": _float(spec.scale),
    }
    if adapter is not None:
        out["scaling"] = scaling_to_dict(adapter)
    out.update(
        {
            "dropout": _float(spec.dropout),
            "use_rslora": spec.use_rslora,
            "use_dora": spec.use_dora,
            "init_lora_weights": spec.init_lora_weights,
            "init_std": _float(spec.init_std),
            "target_modules": clean(spec.target_modules),
            "exclude_modules": clean(spec.exclude_modules),
            "rank_pattern": clean(spec.rank_pattern),
            "alpha_pattern": clean(spec.alpha_pattern),
            "modules_to_save": clean(spec.modules_to_save),
            "bias": spec.bias,
            "layers_to_transform": clean(spec.layers_to_transform),
            "layers_pattern": clean(spec.layers_pattern),
            "fan_in_fan_out": spec.fan_in_fan_out,
            "task_type": spec.task_type,
            "base_model": spec.base_model,
            "extras": clean(dict(sorted(spec.extras.items()))),
            "unknown_keys": list(spec.unknown_keys),
            "origins": {k: v.value for k, v in sorted(spec.origins.items())},
            "unresolved": dict(sorted(spec.unresolved.items())),
            "invalid": dict(sorted(spec.invalid.items())),
            "lines": dict(sorted(spec.lines.items())),
            "suppressions": {
                str(line): sorted(codes) for line, codes in sorted(spec.suppressions.items())
            },
        }
    )
    return out


def _init(init: InitInference | None) -> dict[str, Any] | None:
    if init is None:
        return None
    return {
        "scheme": init.scheme.value,
        "label": scheme_label(init),
        "declared": init.declared,
        "evidence": init.evidence,
        "expected_std": _float(init.expected_std),
    }


def _extra(t: ExtraTensor) -> dict[str, Any]:
    return {"key": t.key, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes,
            "role": t.role}


def _fault(f: Fault) -> dict[str, Any]:
    return {"code": f.code, "path": f.path, "detail": f.detail, "line": f.line,
            "location": f.location}


# A layer's alpha_source, as the file-level "observed" object names where alpha came from.
_ALPHA_ORIGIN = {"tensor": "weights", "config": "config", "alpha_pattern": "config",
                 "metadata": "metadata", "mlx-scale": "config"}


def observed_to_dict(adapter: Adapter) -> dict[str, Any] | None:
    """Rank, alpha and scale as the weights hold them (per-module values reduced to a single
    value when they agree, else null with min/max), and where each came from: the rank from
    the factor shapes ("weights"), alpha from ``.alpha`` tensors ("weights"), the config, the
    embedded metadata or a consumer default. None without layers."""
    layers = [layer for layer in adapter.layers if layer.rank is not None]
    if not layers:
        return None

    def reduce(values: list[float | int | None]) -> dict[str, Any]:
        known = sorted({v for v in values if v is not None})
        return {"value": clean(known[0]) if len(known) == 1 else None,
                "min": clean(known[0]) if known else None,
                "max": clean(known[-1]) if known else None}

    sources = {layer.alpha_source for layer in layers}
    origins = sorted({_ALPHA_ORIGIN.get(s, "default" if s.startswith("default") else s)
                      for s in sources})
    return {
        "rank": {**reduce([layer.rank for layer in layers]), "origin": "weights"},
        "alpha": {**reduce([layer.alpha for layer in layers]),
                  "origin": origins[0] if len(origins) == 1 else "mixed"},
        "scaling": reduce([layer.scaling for layer in layers]),
    }


def adapter_to_dict(adapter: Adapter, *, all_layers: bool = True) -> dict[str, Any]:
    if all_layers:
        layers = adapter.layers
        omitted = 0
    else:
        keep = {id(layer) for _, rows, _ in selected_layers(adapter, False) for layer in rows}
        layers = [layer for layer in adapter.layers if id(layer) in keep]
        omitted = len(adapter.layers) - len(layers)
    return {
        "path": adapter.path,
        "format": adapter.format,
        "method": adapter.method.value,
        "method_name": adapter.method_name,
        "files": list(adapter.files),
        "variant": adapter.variant,
        "has_weights": adapter.has_weights,
        "stage": adapter.stage.value,
        "stage_forced": adapter.stage_forced,
        "stage_source": adapter.stage_source.value,
        "stage_evidence": adapter.stage_evidence,
        "init_scheme": _init(adapter.init),
        "spec": spec_to_dict(adapter.spec, adapter) if adapter.spec is not None else None,
        "metadata_spec": (
            spec_to_dict(adapter.metadata_spec) if adapter.metadata_spec is not None else None
        ),
        "scaling": scaling_to_dict(adapter),
        "observed": observed_to_dict(adapter),
        "n_tensors": adapter.n_tensors,
        "n_bytes": adapter.n_bytes,
        "dtypes": dict(sorted(adapter.dtypes.items())),
        "metadata": dict(sorted((str(k), str(v)) for k, v in adapter.metadata.items())),
        "n_layers": len(adapter.layers),
        "layers_omitted": omitted,
        "layers": [layer_to_dict(layer) for layer in layers],
        "extra_tensors": [_extra(t) for t in adapter.extra_tensors],
        "orphans": [_ref(t) for t in adapter.orphans],
        "empty_tensors": [_ref(t) for t in adapter.empty_tensors],
        "faults": [_fault(f) for f in adapter.faults],
        "notes": list(adapter.notes),
    }


def diagnostic_to_dict(d: Diagnostic) -> dict[str, Any]:
    return {
        "code": d.code,
        "name": d.name,
        "severity": d.severity.value,
        "path": d.path,
        "line": d.line,
        "col": d.col,
        "location": d.location,
        "message": d.message,
        "help": d.help,
    }


def report_to_dict(report: Report, *, all_layers: bool = True) -> dict[str, Any]:
    """The whole report in the stable JSON schema (``docs/json-schema.md``).

    ``all_layers=False`` keeps, per module type, only the rows the text table shows (outliers
    first, at most five), in file order; ``layers_omitted`` counts the rest.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": __version__},
        "files": [adapter_to_dict(a, all_layers=all_layers) for a in report.adapters],
        "diagnostics": [diagnostic_to_dict(d) for d in sorted_diagnostics(report.diagnostics)],
        "summary": {
            "files": len(report.adapters),
            "layers": sum(len(a.layers) for a in report.adapters),
            "errors": report.count(Severity.ERROR),
            "warnings": report.count(Severity.WARNING),
            "infos": report.count(Severity.INFO),
        },
        **({"verify": probe_to_dict(report)} if report.probe is not None else {}),
        **({"merged": merged_to_dict(report)} if report.merged is not None else {}),
        **({"diff": diff_to_dict(report)} if report.diff is not None else {}),
    }


def diff_to_dict(report: Report) -> dict[str, Any]:
    """What ``diff`` measured, field by field as :class:`DiffRecord` names them, each module
    with its derived numbers (``rel_diff``, ``cosine``, ``norm_ratio``) and what the rules make
    of it (``status``), a summary, and the verdict."""
    from loracheck.rules.diff import module_status

    record = report.diff
    assert record is not None
    body: dict[str, Any] = {"passed": report.passed}
    body.update(dataclasses.asdict(record))
    statuses = [module_status(m) for m in record.modules]
    for module, data, status in zip(record.modules, body["modules"], statuses, strict=True):
        data["rel_diff"] = _float(module.rel_diff)
        data["cosine"] = _float(module.cosine)
        data["norm_ratio"] = _float(module.norm_ratio)
        data["status"] = status
    body["summary"] = {
        "modules": len(record.modules),
        **{key.replace("-", "_"): statuses.count(key)
           for key in ("same", "differs", "scale", "not-compared")},
        "only_a": len(record.only_a),
        "only_b": len(record.only_b),
        "saved": len(record.saved_modules),
        "saved_only_a": len(record.saved_only_a),
        "saved_only_b": len(record.saved_only_b),
        "suffix_matched": len(record.suffix_matched),
    }
    return body


def merged_to_dict(report: Report) -> dict[str, Any]:
    """What ``merged`` measured, field by field as :class:`MergeRecord` names them, each
    module with its relative residual, fitted residual and floor (÷ ‖s·B·A‖), and the verdict."""
    record = report.merged
    assert record is not None
    body: dict[str, Any] = {"passed": report.passed}
    body.update(dataclasses.asdict(record))
    for module, data in zip(record.modules, body["modules"], strict=True):
        data["residual"] = _float(module.residual)
        data["fitted_residual"] = _float(module.fitted_residual)
        data["floor"] = _float(module.floor)
    return body


def probe_to_dict(report: Report) -> dict[str, Any]:
    """What ``verify`` measured, field by field as :class:`ProbeRecord` names them (non-finite
    numbers as null), with the run's verdict."""
    probe = report.probe
    assert probe is not None
    body: dict[str, Any] = {"passed": report.passed}
    body.update(dataclasses.asdict(probe))
    body["stopped"] = probe.stopped
    drop = probe.losses.drop if probe.losses is not None else None
    if body.get("losses") is not None:
        body["losses"]["drop"] = drop
    # asdict deep-copies the diagnostics of the saved-adapter check; give them the shared shape
    if probe.reload is not None:
        body["reload"]["saved_check"] = [diagnostic_to_dict(d) for d in probe.reload.saved_check]
    return body


# One encoder for every per-layer line: json.dumps with options builds a new one a call.
_LINE_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(", ", ": "))


def _load_line_writer() -> Callable[[Any], str] | None:
    """loracheck._json_line's writer, when the optional extension was built (setup.py)."""
    try:
        from loracheck._json_line import flat_json  # type: ignore[import-not-found]
    except ImportError:
        return None
    writer: Callable[[Any], str] = flat_json
    return writer


# The compiled line writer: the same text as _LINE_ENCODER on cleaned data (shortest
# round-trip floats as repr writes them, non-finite ones as null), ~10x faster on the floats
# that make up most of a line. None where it did not build: json's own encoder writes them.
LINE_WRITER: Callable[[Any], str] | None = _load_line_writer()
# What writes them, as ``loracheck --version`` says.
LINE_WRITER_NAME = "compiled" if LINE_WRITER is not None else "json"


def _one_line(layer: Any) -> str:
    """One per-layer object, compact. :func:`layer_to_dict` builds plain JSON data already,
    so the compiled writer (or json's C encoder) takes it as is; anything they refuse (a set;
    a NaN, for json's) is cleaned first, which gives the same text a cleaned object would."""
    if LINE_WRITER is not None:
        try:
            return LINE_WRITER(layer)
        except TypeError:
            pass
    try:
        return _LINE_ENCODER.encode(layer)
    except (TypeError, ValueError):
        return _LINE_ENCODER.encode(clean(layer))


def dumps(data: Any) -> str:
    """Deterministic, strict ASCII JSON (no NaN tokens), two-space indent, trailing newline.

    Each per-layer object is written on one line: a 7B adapter has hundreds of layers, and
    json's indenting encoder is pure Python (about 10x slower than the compact C encoder).
    The layers are set aside before the rest is cleaned (see :func:`_one_line`).
    """
    nonce = os.urandom(8).hex()  # not the secrets module: it imports hashlib, random, ...
    compact: dict[str, str] = {}
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list):
        entries = []
        for entry in files:
            layers = entry.get("layers") if isinstance(entry, dict) else None
            if isinstance(layers, list):
                tokens = []
                for layer in layers:
                    token = f"@@{nonce}-{len(compact)}@@"
                    compact[f'"{token}"'] = _one_line(layer)  # hex and digits: no escapes
                    tokens.append(token)
                entry = {**entry, "layers": tokens}
            entries.append(entry)
        data = {**data, "files": entries}
    data = clean(data)
    text = json.dumps(data, indent=2, ensure_ascii=True, allow_nan=False)
    if compact:
        import re

        text = re.sub(f'"@@{nonce}-\\d+@@"', lambda m: compact[m.group(0)], text)
    return text + "\n"


def render_json(report: Report, *, all_layers: bool = True) -> str:
    return dumps(report_to_dict(report, all_layers=all_layers))
