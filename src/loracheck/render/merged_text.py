"""``merged`` text output: what was compared, one table row per adapter module (grouped by
module type and ordered as ``inspect``'s table), the findings as ``check`` prints them, a
summary line and the verdict.

A row's status is ``ok``, the code of its worst finding (``LC402``), ``below rounding`` (the
update is too small for M's dtype to show it: nothing to judge), or why it was not measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from loracheck.merge_record import MergeRecord, ModuleMerge
from loracheck.model import Diagnostic, Report, Severity
from loracheck.render._common import (
    TOP_ROWS_PER_TYPE,
    TableGroup,
    clean_lines,
    display_path,
    fmt_num,
    grouped_table,
    human_bytes,
    plural,
    sorted_diagnostics,
)
from loracheck.render.ansi import DIM, GREEN, RED, paint
from loracheck.render.inspect_text import (
    module_count_text,
    type_and_block,
    type_labels,
    type_order,
)
from loracheck.render.text import _printable, format_diagnostic, summary_line

COLUMNS = ("name", "dtype", "s", "c/s", "residual", "floor", "M≠W", "status")
LEGEND = (
    "s: the adapter's scale · c/s: the fitted scale ⟨M − W, B·A⟩/‖B·A‖² over s (1 when merged "
    "once, as the adapter says)",
    "residual: ‖M − W − s·B·A‖ / ‖s·B·A‖ · floor: what rounding M to its dtype explains, "
    "same units · M≠W: elements that moved",
)
_INDENT = "  "
_LEFT = frozenset({0, 7})


def _dtype(m: ModuleMerge) -> str:
    if m.dtype is None:
        return "-"
    text = m.dtype.lower()
    return text if m.base_dtype in (None, m.dtype) else f"{m.base_dtype.lower()}→{text}"


def _status(m: ModuleMerge, codes: Sequence[str]) -> str:
    if codes:
        return " ".join(codes)
    if not m.measured:
        return m.status.value
    if m.update_norm > 0 and m.changed == 0:
        return "below rounding"
    return "ok"


def _row(m: ModuleMerge, codes: Sequence[str], label: str) -> list[str]:
    if not m.measured:
        return [label, _dtype(m), fmt_num(m.scale), "-", "-", "-", "-", _status(m, codes)]
    moved = f"{100.0 * m.changed / m.numel:.3g}%" if m.numel else "-"
    return [label, _dtype(m), fmt_num(m.scale), fmt_num(m.ratio, 4),
            fmt_num(m.residual, 2), fmt_num(m.floor, 2), moved, _status(m, codes)]


def _codes_by_module(diagnostics: Sequence[Diagnostic]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in diagnostics:
        if d.location is not None and d.code not in out.get(d.location, []):
            out.setdefault(d.location, []).append(d.code)
    return out


def module_table(record: MergeRecord, diagnostics: Sequence[Diagnostic], *, all_modules: bool,
                 color: bool) -> list[str]:
    """The per-module table: one group per module type (attention first, as ``inspect``),
    modules with findings first in each group, at most five rows unless ``all_modules``."""
    codes = _codes_by_module(diagnostics)
    groups: dict[str, list[ModuleMerge]] = {}
    blockless: set[str] = set()
    for m in record.modules:
        module_type, block = type_and_block(m.module)
        groups.setdefault(module_type, []).append(m)
        if block is None:
            blockless.add(module_type)
    order = type_order(list(groups), blockless)
    labels = type_labels(order)
    table: list[TableGroup] = []
    for module_type in order:
        members = sorted(enumerate(groups[module_type]),
                         key=lambda item: (not codes.get(item[1].module), item[0]))
        flagged = [m for _, m in members if codes.get(m.module)]
        keep = len(members) if all_modules else max(TOP_ROWS_PER_TYPE, len(flagged))
        shown = [m for _, m in members[:keep]]
        table.append(TableGroup(labels[module_type],
                                [_row(m, codes.get(m.module, []), m.module) for m in shown],
                                [bool(codes.get(m.module)) for m in shown],
                                len(members) - len(shown), "findings first"))
    out = grouped_table(COLUMNS, _LEFT, table, color=color, indent=_INDENT)
    out += [_INDENT + paint(line, DIM, color) for line in LEGEND]
    return out


def _header(record: MergeRecord, root: Path) -> list[str]:
    dtypes = sorted({m.dtype for m in record.modules if m.dtype})
    names = [m.module for m in record.modules]
    return [
        f"loracheck merged: {_printable(display_path(record.merged, root))} against "
        f"{_printable(display_path(record.base, root))} + "
        f"{_printable(display_path(record.adapter, root))}",
        f"{_INDENT}MERGED  {plural(record.n_tensors, 'tensor')}, {record.n_params:,} "
        f"parameters, {human_bytes(record.n_bytes)}" + (f", {'/'.join(dtypes)}" if dtypes else ""),
        f"{_INDENT}adapter {module_count_text(names) if names else 'no modules'}",
    ]


def merged_summary(record: MergeRecord, diagnostics: Sequence[Diagnostic]) -> str:
    """``12 of 14 modules match BASE + s·B·A within rounding; 1 other tensor changed``."""
    flagged = {d.location for d in diagnostics}
    measured = record.measured
    ok = [m for m in measured if m.module not in flagged]
    hidden = [m for m in ok if m.update_norm > 0 and m.changed == 0]
    text = (f"{len(ok) - len(hidden)} of {plural(len(record.modules), 'module')} match BASE + "
            "s·B·A within rounding")
    if hidden:
        text += f", {len(hidden)} below M's rounding (not judged)"
    unmeasured = len(record.modules) - len(measured)
    if unmeasured:
        text += f", {unmeasured} not measured"
    text += f"; {plural(len(record.changed), 'other tensor')} changed"
    if record.saved_copies:
        good = sum(1 for c in record.saved_copies if c.matches)
        text += f"; modules_to_save {good}/{len(record.saved_copies)} applied"
    seconds = record.timing.get("total_s")
    if seconds is not None:
        text += f" ({seconds:.2f} s)"
    return text


def render_merged_text(report: Report, *, color: bool, root: Path,
                       all_modules: bool = False) -> str:
    """The merged report: header, per-module table, findings, summary and verdict."""
    record = report.merged
    lines: list[str] = []
    diagnostics = sorted_diagnostics(report.diagnostics)
    if record is not None:
        lines += _header(record, root)
        if record.modules:
            lines.append("")
            lines += module_table(record, diagnostics, all_modules=all_modules, color=color)
        lines.append("")
    lines.extend(format_diagnostic(d, root=root, color=color) for d in diagnostics)
    if diagnostics:
        lines.append(summary_line(report, color=color))
    if record is not None:
        lines.append(merged_summary(record, diagnostics))
    failed = any(d.severity is Severity.ERROR for d in diagnostics) if report.passed is None \
        else not report.passed
    verdict = "merged check FAILED" if failed else "merged check passed"
    if record is None:
        verdict = "merged check stopped: an input cannot be read (see above)"
    lines.append(paint(verdict, RED if failed else GREEN, color))
    return "\n".join(clean_lines(lines, color=color)) + "\n"
