"""``inspect`` text output: a one-screen summary per adapter, then its per-layer table.

Plain aligned text; ANSI colour only when asked. The table groups layers by module type and
shows the outliers first (non-finite, then farthest from the type's median ‖ΔW‖), at most
five rows per type unless ``all_layers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loracheck.initscheme import scheme_label
from loracheck.model import Adapter, Diagnostic, LayerRecord, MethodKind, Report, ValueOrigin
from loracheck.render._common import (
    block_index,
    clean_lines,
    diagnostics_for,
    display_path,
    distinct_scalings,
    fmt_num,
    human_bytes,
    is_finite,
    plural,
    scaling_convention,
    selected_layers,
    short_name,
    sorted_diagnostics,
)
from loracheck.render.ansi import BOLD, DIM, RED, paint
from loracheck.render.text import format_diagnostic

MISSING_ALPHA = "missing — PEFT assumes 8, kohya/diffusers scale 1"
COLUMNS = ("name", "rank", "in→out", "scale", "A std", "B std", "‖ΔW‖", "σmax", "eff.rank",
           "nonfinite")
_LEFT_ALIGNED = frozenset({0})
_INDENT = "  "


# --- summary fields --------------------------------------------------------------------------


def _span(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt_num(values[0])
    return f"{fmt_num(min(values))}–{fmt_num(max(values))}"


def rank_text(adapter: Adapter) -> str:
    """``16``, ``4–16 (rank_pattern)``, or the config's rank when there are no weights."""
    spec = adapter.spec
    ranks = sorted({layer.rank for layer in adapter.layers if layer.rank is not None})
    if not ranks:
        if spec is None:
            return "-"
        if spec.rank is not None:
            return str(spec.rank)
        if "rank" in spec.invalid:
            return f"invalid ({spec.invalid['rank']})"
        return "-"
    text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    if spec is not None and spec.rank_pattern:
        text += " (rank_pattern)"
    elif len(ranks) > 1:
        text += " (per module)"
    elif spec is not None and spec.rank is not None and spec.rank != ranks[0]:
        text += f" (config says {spec.rank})"
    return text


def alpha_text(adapter: Adapter) -> str:
    spec = adapter.spec
    convention = scaling_convention(adapter)
    if convention == "mlx-scale":
        return "- (mlx-lm uses scale directly)"
    if convention == "alpha-missing":
        return MISSING_ALPHA
    values = sorted(
        {
            layer.alpha
            for layer in adapter.layers
            if layer.alpha is not None
            and is_finite(layer.alpha)
            and not layer.alpha_source.startswith("default")
        }
    )
    if not values:
        if spec is not None and spec.alpha is not None:
            return fmt_num(spec.alpha)
        if spec is not None and "alpha" in spec.invalid:
            return f"invalid ({spec.invalid['alpha']})"
        return "-"
    text = _span(values)
    if spec is not None and spec.alpha_pattern:
        text += " (alpha_pattern)"
    elif convention == "kohya-per-module":
        text += " (per-module .alpha)"
    return text


def scaling_text(adapter: Adapter) -> str:
    convention = scaling_convention(adapter)
    values = distinct_scalings(adapter)
    if not values:
        return convention
    return f"{convention} = {_span(values)}"


def _dropout_text(adapter: Adapter) -> str:
    spec = adapter.spec
    if spec is None:
        return "-"
    if spec.dropout is None and "dropout" in spec.invalid:
        return f"invalid ({spec.invalid['dropout']})"
    return fmt_num(spec.dropout)


def targets_text(adapter: Adapter) -> str:
    """``q_proj, v_proj × 32 layers = 64 modules``."""
    spec = adapter.spec
    targets: str
    if spec is not None and spec.target_modules is not None:
        tm = spec.target_modules
        targets = tm if isinstance(tm, str) else (", ".join(tm) if tm else "(empty)")
    else:
        seen: dict[str, None] = {}
        for layer in adapter.layers:
            seen.setdefault(layer.module_type, None)
        targets = ", ".join(seen) if seen else "-"
    if not adapter.layers:
        return targets
    blocks = {block_index(layer.name) for layer in adapter.layers}
    blocks.discard(())
    modules = plural(len(adapter.layers), "module")
    if len(blocks) > 1:
        return f"{targets} × {len(blocks)} layers = {modules}"
    return f"{targets} = {modules}"


def init_text(adapter: Adapter) -> str:
    init = adapter.init
    if init is None:
        return "-"
    if init.evidence:
        # The evidence says how the scheme was found: declared (and by what) or inferred.
        return f"{scheme_label(init)}: {init.evidence}"
    return f"{scheme_label(init)} ({'declared' if init.declared else 'inferred'})"


def _dtypes_text(adapter: Adapter) -> str:
    if not adapter.dtypes:
        return "-"
    items = sorted(adapter.dtypes.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} ×{count}" for name, count in items)


def _extra_text(adapter: Adapter) -> str:
    extras = adapter.extra_tensors
    if not extras:
        return "none"
    roles: dict[str, int] = {}
    for t in extras:
        roles[t.role] = roles.get(t.role, 0) + 1
    total = sum(t.nbytes for t in extras)
    role_text = ", ".join(f"{role} ×{n}" for role, n in sorted(roles.items()))
    return f"{plural(len(extras), 'tensor')}, {human_bytes(total)}: {role_text}"


def _method_text(adapter: Adapter) -> str:
    if adapter.method is MethodKind.OTHER:
        return f"{adapter.method_name} (not LoRA: the LoRA rules do not apply)"
    if adapter.method is MethodKind.FULL:
        return f"{adapter.method_name} (no LoRA adapter is trained)"
    return adapter.method_name


def with_origin(adapter: Adapter, field_name: str, text: str) -> str:
    """``text`` with where a config-only value came from, when not from the file itself."""
    spec = adapter.spec
    if spec is None or adapter.layers:
        return text
    if field_name in spec.unresolved:
        return f"unknown ({spec.unresolved[field_name]})"
    if spec.origin(field_name) is ValueOrigin.TRAINER_DEFAULT:
        from loracheck.configs.semantics import SEMANTICS

        known = SEMANTICS.get(spec.source_format)
        return f"{text} ({known.trainer if known else spec.source_format} default)"
    if spec.origin(field_name) is ValueOrigin.EXPRESSION:
        shown = spec.extras.get(f"expression.{field_name}")
        return f"{text} (= {shown})" if shown else text
    return text


def summary_fields(adapter: Adapter, root: Path) -> list[tuple[str, str]]:
    """The (label, value) pairs of an adapter's summary block, in display order."""
    spec = adapter.spec
    fields: list[tuple[str, str]] = [("format", adapter.format)]
    if adapter.has_weights:
        fields.append(("variant", adapter.variant))
    fields.append(("method", _method_text(adapter)))
    if spec is not None:
        config = spec.source_format
        if spec.path and spec.path != adapter.path:
            config += f" ({display_path(spec.path, root)})"
        fields.append(("config", config))
    if adapter.method is MethodKind.LORA or adapter.has_weights:
        fields += [
            ("rank", with_origin(adapter, "rank", rank_text(adapter))),
            ("alpha", with_origin(adapter, "alpha", alpha_text(adapter))),
            ("scaling", scaling_text(adapter)),
            ("dropout", with_origin(adapter, "dropout", _dropout_text(adapter))),
            ("targets", with_origin(adapter, "target_modules", targets_text(adapter))),
            ("init", init_text(adapter)),
            ("stage", adapter.stage.value + (" (forced)" if adapter.stage_forced else "")),
        ]
    if adapter.has_weights:
        fields += [
            ("tensors", str(adapter.n_tensors)),
            ("bytes", f"{human_bytes(adapter.n_bytes)} ({adapter.n_bytes:,} B)"),
            ("dtypes", _dtypes_text(adapter)),
            ("extra", _extra_text(adapter)),
        ]
    else:
        fields.append(("weights", "none (config only)"))
    if adapter.orphans:
        keys = ", ".join(t.key for t in adapter.orphans[:3])
        more = f", … {len(adapter.orphans) - 3} more" if len(adapter.orphans) > 3 else ""
        fields.append(("orphans", f"{len(adapter.orphans)}: {keys}{more}"))
    if adapter.empty_tensors:
        fields.append(("empty", plural(len(adapter.empty_tensors), "tensor")))
    fields += [("note", note) for note in adapter.notes]
    return fields


# --- the per-layer table ---------------------------------------------------------------------


def layer_row(layer: LayerRecord) -> list[str]:
    shape = f"{fmt_num(layer.in_features)}→{fmt_num(layer.out_features)}"
    a_std = layer.a_stats.std if layer.a_stats else None
    b_std = layer.b_stats.std if layer.b_stats else None
    delta = layer.delta
    return [
        short_name(layer.name),
        fmt_num(layer.rank),
        shape,
        fmt_num(layer.scaling),
        fmt_num(a_std, 3),
        fmt_num(b_std, 3),
        fmt_num(delta.frobenius if delta else None, 3),
        fmt_num(delta.sigma_max if delta else None, 3),
        fmt_num(delta.effective_rank if delta else None, 3),
        str(layer.nonfinite),
    ]


def _align(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = [
        cell.ljust(w) if i in _LEFT_ALIGNED else cell.rjust(w)
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(parts).rstrip()


def layer_table(adapter: Adapter, *, all_layers: bool, color: bool) -> list[str]:
    groups = selected_layers(adapter, all_layers)
    rows = {id(layer): layer_row(layer) for _, shown, _ in groups for layer in shown}
    widths = [len(c) for c in COLUMNS]
    for cells in rows.values():
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    out: list[str] = [_INDENT + paint(_align(COLUMNS, widths), BOLD, color)]
    for module_type, shown, omitted in groups:
        total = len(shown) + omitted
        header = f"{module_type} ({plural(total, 'module')}"
        header += f", {len(shown)} shown, outliers first)" if omitted else ")"
        out.append(_INDENT + paint(header, DIM, color))
        for layer in shown:
            line = _align(rows[id(layer)], widths)
            out.append(_INDENT + (paint(line, RED, color) if layer.nonfinite else line))
        if omitted:
            out.append(_INDENT + paint(f"… {omitted} more (--all shows every row)", DIM, color))
    return out


# --- whole output ----------------------------------------------------------------------------


def render_adapter(
    adapter: Adapter,
    diagnostics: Sequence[Diagnostic],
    *,
    color: bool,
    all_layers: bool,
    root: Path,
) -> list[str]:
    lines = [paint(display_path(adapter.path, root), BOLD, color)]
    fields = summary_fields(adapter, root)
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        lines.append(f"{_INDENT}{paint(label.ljust(width), DIM, color)}  {value}")
    if adapter.layers:
        lines.append("")
        lines += layer_table(adapter, all_layers=all_layers, color=color)
    if diagnostics:
        lines.append("")
        lines.append(_INDENT + paint(plural(len(diagnostics), "finding"), BOLD, color))
        lines += [_INDENT + format_diagnostic(d, root=root, color=color) for d in diagnostics]
    return lines


def render_inspect_text(report: Report, *, color: bool, all_layers: bool, root: Path) -> str:
    """Every adapter's summary and table, separated by blank lines; findings that belong to no
    adapter (unreadable paths) close the output."""
    diagnostics = sorted_diagnostics(report.diagnostics)
    claimed: set[int] = set()
    blocks: list[list[str]] = []
    for adapter in report.adapters:
        own = diagnostics_for(adapter, diagnostics)
        claimed.update(id(d) for d in own)
        blocks.append(render_adapter(adapter, own, color=color, all_layers=all_layers, root=root))
    rest = [d for d in diagnostics if id(d) not in claimed]
    if rest:
        blocks.append([format_diagnostic(d, root=root, color=color) for d in rest])
    if not blocks:
        blocks.append(["No adapters found."])
    return "\n\n".join("\n".join(clean_lines(block, color=color)) for block in blocks) + "\n"
