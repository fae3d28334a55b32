"""``diff`` text output: the two adapters, how their modules were matched, a per-module table
(grouped by module type as ``inspect``'s, the modules that differ first, at most five rows per
type unless ``all_layers``), a summary, then the findings as ``check`` prints them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from loracheck.diff_record import DiffRecord, MatchRule, ModuleDiff, ModuleKind, ToleranceSource
from loracheck.model import Adapter, Report
from loracheck.render._common import (
    TOP_ROWS_PER_TYPE,
    TableGroup,
    clean_lines,
    display_path,
    fmt_num,
    group_by_type,
    grouped_table,
    plural,
    short_name,
    sorted_diagnostics,
)
from loracheck.render.ansi import BOLD, DIM, GREEN, RED, paint
from loracheck.render.inspect_text import module_count_text
from loracheck.render.text import format_diagnostic, summary_line
from loracheck.rules.diff import module_status

COLUMNS = ("name", "rank", "scale", "dtype", "‖ΔW_A‖", "‖ΔW_B‖", "rel.diff", "tolerance",
           "cosine", "ratio", "")
# name and the status column are text; the rest are numbers.
_LEFT = frozenset({0, len(COLUMNS) - 1})
LEGEND = (
    "rel.diff: ‖ΔW_A − ΔW_B‖ / ‖ΔW_A‖ (Frobenius, ΔW = s·B·A) · tolerance: the largest rel.diff "
    "allowed",
    "cosine: ⟨ΔW_A, ΔW_B⟩ / (‖ΔW_A‖·‖ΔW_B‖) · ratio: ‖ΔW_B‖ / ‖ΔW_A‖ · rank, scale, dtype: "
    "A→B where they differ",
)
SAVED_LEGEND = ("saved: full tensors saved beside the factors (modules_to_save, DoRA "
                "magnitudes, embeddings), compared element by element: ‖ΔW‖ reads ‖X‖")
_INDENT = "  "


def _pair(a: str, b: str) -> str:
    return a if a == b else f"{a}→{b}"


_STATUS = {"same": "same", "differs": "DIFFERS", "scale": "SCALE", "not-compared": "n/a"}


def status(m: ModuleDiff) -> str:
    """The table's status column: ``same``, ``DIFFERS`` (LC410), ``SCALE`` (LC412) or ``n/a``."""
    return _STATUS[module_status(m)]


def module_row(m: ModuleDiff) -> list[str]:
    cosine = m.cosine
    return [
        m.name,
        _pair(fmt_num(m.a.rank), fmt_num(m.b.rank)),
        _pair(fmt_num(m.a.scale), fmt_num(m.b.scale)),
        _pair(m.a.dtype, m.b.dtype),
        fmt_num(m.norm_a, 4),
        fmt_num(m.norm_b, 4),
        fmt_num(m.rel_diff, 3),
        fmt_num(m.tolerance, 2),
        fmt_num(cosine, 6) if cosine is not None else "-",
        fmt_num(m.norm_ratio, 6),
        status(m),
    ]


def _order(members: Sequence[ModuleDiff]) -> list[ModuleDiff]:
    """The modules that differ first (not comparable, then by rel.diff, largest first), then
    the rest in file order."""
    def key(item: tuple[int, ModuleDiff]) -> tuple[int, float, int]:
        index, m = item
        if not m.compared:
            return (0, 0.0, index)
        if m.differs:
            rel = m.rel_diff
            return (1, -rel if math.isfinite(rel) else -math.inf, index)
        return (2, 0.0, index)

    return [m for _, m in sorted(enumerate(members), key=key)]


def _groups(record: DiffRecord, adapter_a: Adapter | None) -> list[tuple[str, list[ModuleDiff]]]:
    """The modules grouped by type as ``inspect`` groups A's layers (types in order of first
    appearance), the saved tensors last, in a group of their own."""
    by_name = {m.name: m for m in record.lora_modules}
    groups: list[tuple[str, list[ModuleDiff]]] = []
    seen: set[str] = set()
    if adapter_a is not None:
        for module_type, members in group_by_type(adapter_a.layers):
            rows = [by_name[short_name(layer.name)] for _, layer in members
                    if short_name(layer.name) in by_name]
            if rows:
                groups.append((module_type, rows))
                seen.update(m.name for m in rows)
    rest = [m for m in record.lora_modules if m.name not in seen]
    if rest:
        groups.append(("other", rest))
    if record.saved_modules:
        groups.append(("saved", list(record.saved_modules)))
    return groups


def module_table(record: DiffRecord, adapter_a: Adapter | None, *, all_layers: bool,
                 color: bool) -> list[str]:
    shown_groups: list[tuple[str, list[ModuleDiff], int]] = []
    for module_type, members in _groups(record, adapter_a):
        ordered = _order(members)
        if all_layers or len(ordered) <= TOP_ROWS_PER_TYPE:
            shown_groups.append((module_type, ordered, 0))
        else:
            shown_groups.append((module_type, ordered[:TOP_ROWS_PER_TYPE],
                                 len(ordered) - TOP_ROWS_PER_TYPE))
    groups = [
        TableGroup(module_type, [module_row(m) for m in shown], [m.differs for m in shown],
                   omitted, "differing first",
                   "tensor" if all(m.kind is ModuleKind.SAVED for m in shown) else "module")
        for module_type, shown, omitted in shown_groups
    ]
    out = grouped_table(COLUMNS, _LEFT, groups, color=color, indent=_INDENT)
    legend = (*LEGEND, SAVED_LEGEND) if record.saved_modules else LEGEND
    out += [_INDENT + paint(line, DIM, color) for line in legend]
    return out


def _side_text(adapter: Adapter | None, path: str, fmt: str, root: Path) -> str:
    text = f"{display_path(path, root)} ({fmt}"
    if adapter is not None and adapter.layers:
        text += f"; {module_count_text([layer.name for layer in adapter.layers])}"
        dtypes = ", ".join(sorted(adapter.dtypes))
        if dtypes:
            text += f"; {dtypes}"
    return text + ")"


def _matching_text(record: DiffRecord) -> str:
    text = f"{plural(len(record.lora_modules), 'module')} in both"
    notes = []
    if record.match is MatchRule.FLATTENED:
        notes.append("kohya's flattened names against the other side flattened the same way")
    if record.dropped_component:
        notes.append(f"component {record.dropped_component!r} matched to a bare model")
    by_suffix = record.suffix_matched
    if by_suffix:
        first = by_suffix[0]
        notes.append(f"{len(by_suffix)} matched by the longest common suffix of their paths, "
                     f"e.g. A's {short_name(first.a.name)} ↔ B's {short_name(first.b.name)}")
    if notes:
        text += f" ({'; '.join(notes)})"
    only = [f"{len(names)} only in {side}" for side, names in
            (("A", record.only_a), ("B", record.only_b)) if names]
    text += ", " + ", ".join(only) if only else ""
    saved = len(record.saved_modules)
    saved_only = [f"{len(names)} only in {side}" for side, names in
                  (("A", record.saved_only_a), ("B", record.saved_only_b)) if names]
    if saved or saved_only:
        text += f"; {plural(saved, 'saved tensor')} in both"
        text += ", " + ", ".join(saved_only) if saved_only else ""
    return text


def _tolerance_text(record: DiffRecord) -> str:
    if record.tolerance_override is not None:
        return f"{fmt_num(record.tolerance_override)} of ‖ΔW_A‖ (--tolerance)"
    sources = {m.tolerance_source for m in record.modules}
    if sources <= {ToleranceSource.DTYPES}:
        return ("what rounding each side's factors to their dtypes explains, per module "
                "(--tolerance T overrides)")
    return "-"


def _counts(modules: Sequence[ModuleDiff]) -> str:
    counts = {"same": 0, "DIFFERS": 0, "SCALE": 0, "n/a": 0}
    for m in modules:
        counts[status(m)] += 1
    parts = [f"{counts['same']} the same within tolerance"]
    if counts["DIFFERS"]:
        parts.append(f"{counts['DIFFERS']} differ (LC410)")
    if counts["SCALE"]:
        parts.append(f"{counts['SCALE']} differ by a scale only (LC412)")
    if counts["n/a"]:
        parts.append(f"{counts['n/a']} cannot be compared (LC410)")
    return ", ".join(parts)


def summary_text(record: DiffRecord) -> str:
    """``14 modules compared: 12 the same, 2 differ (LC410); 1 only in A``, then the saved
    tensors the same way."""
    lora = record.lora_modules
    text = f"{plural(len(lora), 'module')} compared: {_counts(lora)}"
    only = [f"{len(names)} only in {side} (LC411)" for side, names in
            (("A", record.only_a), ("B", record.only_b)) if names]
    text += "; " + ", ".join(only) if only else ""
    saved = [m for m in record.modules if m.kind is ModuleKind.SAVED]
    saved_only = [f"{len(names)} only in {side} (LC411)" for side, names in
                  (("A", record.saved_only_a), ("B", record.saved_only_b)) if names]
    if saved or saved_only:
        text += f"; {plural(len(saved), 'saved tensor')} compared: {_counts(saved)}"
        text += "; " + ", ".join(saved_only) if saved_only else ""
    return text


def render_diff_text(report: Report, *, color: bool, root: Path, all_layers: bool = False) -> str:
    """The diff report: both sides, the matching, the table, the summary, the findings and
    the verdict."""
    record = report.diff
    adapter_a = report.adapters[0] if report.adapters else None
    adapter_b = report.adapters[1] if len(report.adapters) > 1 else None
    lines: list[str] = []
    if record is not None:
        lines.append(paint(f"loracheck diff: {display_path(record.path_a, root)} → "
                           f"{display_path(record.path_b, root)}", BOLD, color))
        fields = [
            ("A", _side_text(adapter_a, record.path_a, record.format_a, root)),
            ("B", _side_text(adapter_b, record.path_b, record.format_b, root)),
            ("matched", _matching_text(record)),
            ("tolerance", _tolerance_text(record)),
        ]
        width = max(len(label) for label, _ in fields)
        lines += [f"{_INDENT}{paint(label.ljust(width), DIM, color)}  {value}"
                  for label, value in fields]
        if record.modules:
            lines.append("")
            lines += module_table(record, adapter_a, all_layers=all_layers, color=color)
        lines += ["", _INDENT + summary_text(record)]
        lines.append("")
    lines.extend(format_diagnostic(d, root=root, color=color)
                 for d in sorted_diagnostics(report.diagnostics))
    if report.diagnostics:
        lines.append(summary_line(report, color=color))
    if record is None:
        verdict = "diff stopped: an input cannot be read (see above)"
    else:
        verdict = "diff passed: the same updates" if report.passed else "diff FAILED"
    lines.append(paint(verdict, GREEN if report.passed else RED, color))
    return "\n".join(clean_lines(lines, color=color)) + "\n"
