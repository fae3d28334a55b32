"""Helpers every renderer shares: paths, ordering, number formats, scaling, layer selection.

Everything here is a pure function of the typed model; nothing reads files or prints.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from loracheck.model import Adapter, Diagnostic, LayerRecord, Severity

# Rows shown per module type in the inspect table (and in JSON with all_layers=False).
TOP_ROWS_PER_TYPE = 5
# A layer is promoted as an outlier when its ‖ΔW‖ is this many times off its type's median;
# closer layers keep their file order, so small tables do not shuffle on noise.
OUTLIER_RATIO = 2.0

_PEFT_PREFIXES = ("base_model.model.", "base_model.")
_NUMERIC_SEGMENT = re.compile(r"(?:^|[._/])(\d+)(?=$|[._/])")


def display_path(path: str, root: Path) -> str:
    """``path`` relative to ``root`` (forward slashes) when it lies inside it, else unchanged.

    Relative paths are taken as already relative to the working directory and kept as given.
    """
    p = PurePath(path)
    if p.is_absolute():
        for base in _root_forms(root):
            try:
                return p.relative_to(base).as_posix() or "."
            except ValueError:
                continue
        return p.as_posix()
    return p.as_posix()


def _root_forms(root: Path) -> list[PurePath]:
    forms: list[PurePath] = []
    for form in (os.path.abspath(root), os.path.realpath(root)):
        pure = PurePath(form)
        if pure not in forms:
            forms.append(pure)
    return forms


def diagnostic_sort_key(d: Diagnostic) -> tuple[str, int, int, str, str, str]:
    """A total order on findings: path, line, column, code, location, message."""
    return (d.path, d.line or 0, d.col or 0, d.code, d.location or "", d.message)


def sorted_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=diagnostic_sort_key)


def message_with_location(d: Diagnostic) -> str:
    """The message, followed by ``(location)`` unless the message already names it."""
    message = d.message
    if d.location and d.location not in message:
        return f"{message} ({d.location})"
    return message


def plural(n: int, word: str, plural_form: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural_form or word + 's')}"


def severity_counts(diagnostics: Sequence[Diagnostic]) -> dict[Severity, int]:
    counts = {s: 0 for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)}
    for d in diagnostics:
        counts[d.severity] += 1
    return counts


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def fmt_num(x: float | int | None, digits: int = 4) -> str:
    """A compact number: ``-`` if unknown, ``nan``/``inf`` spelled out, else ``digits`` g."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.{digits}g}"


def human_bytes(n: int) -> str:
    """Binary units: ``512 B``, ``1.5 KiB``, ``12.3 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "TiB":
            return f"{value:.1f} {unit}"
    return f"{n} B"  # pragma: no cover - loop always returns


def short_name(name: str) -> str:
    """A module name without PEFT's ``base_model.model.`` wrapper."""
    for prefix in _PEFT_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def block_index(name: str) -> tuple[str, ...]:
    """The numeric path segments of a module name (``layers.3`` -> ``("3",)``)."""
    return tuple(_NUMERIC_SEGMENT.findall(name))


# --- scaling -------------------------------------------------------------------------------


def scaling_convention(adapter: Adapter) -> str:
    """How the effective scale of this adapter is computed.

    ``mlx-scale`` (scale stored directly), ``kohya-per-module`` (``.alpha`` tensors),
    ``alpha/sqrt(r)`` (rsLoRA), ``alpha/r``, ``alpha-missing`` (no alpha anywhere: consumers
    disagree) or ``unknown`` (neither config nor per-layer alpha).
    """
    spec = adapter.spec
    if spec is not None and spec.scale is not None:
        return "mlx-scale"
    if any(layer.alpha_source == "mlx-scale" for layer in adapter.layers):
        return "mlx-scale"
    if any(layer.alpha_source == "tensor" for layer in adapter.layers):
        return "kohya-per-module"
    if spec is not None and spec.use_rslora:
        return "alpha/sqrt(r)"
    layer_alpha = any(
        layer.alpha is not None and not layer.alpha_source.startswith("default")
        for layer in adapter.layers
    )
    if layer_alpha or (spec is not None and spec.alpha is not None):
        return "alpha/r"
    if spec is not None and spec.alpha_missing:
        return "alpha-missing"
    if any(layer.alpha_source.startswith("default") for layer in adapter.layers):
        return "alpha-missing"
    return "unknown"


def distinct_scalings(adapter: Adapter) -> list[float]:
    """The distinct finite effective scales in force, ascending."""
    values = {layer.scaling for layer in adapter.layers if is_finite(layer.scaling)}
    if not values and adapter.spec is not None:
        spec_value = spec_scaling(adapter)
        if is_finite(spec_value):
            values.add(spec_value)
    return sorted(v for v in values if v is not None)


def spec_scaling(adapter: Adapter) -> float | None:
    """The scale the spec alone implies (scale, α/√r, α/r), or None."""
    spec = adapter.spec
    if spec is None:
        return None
    if spec.scale is not None:
        return spec.scale
    if spec.rank is None or spec.alpha is None or spec.rank <= 0:
        return None
    if spec.use_rslora:
        return spec.alpha / math.sqrt(spec.rank)
    return spec.alpha / spec.rank


# --- layer ordering --------------------------------------------------------------------------


def group_by_type(layers: Sequence[LayerRecord]) -> list[tuple[str, list[tuple[int, LayerRecord]]]]:
    """Layers grouped by module type, types in order of first appearance, with file indices."""
    groups: dict[str, list[tuple[int, LayerRecord]]] = {}
    for i, layer in enumerate(layers):
        groups.setdefault(layer.module_type, []).append((i, layer))
    return list(groups.items())


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def outlier_order(members: Sequence[tuple[int, LayerRecord]]) -> list[tuple[int, LayerRecord]]:
    """Members of one module type, most suspicious first.

    Non-finite layers come first, then those at least :data:`OUTLIER_RATIO` times off the type's
    median ‖ΔW‖, by |log(‖ΔW‖ / median)| descending (a zero update among moving peers counts as
    infinitely far), then the rest in file order.
    """
    norms = [
        layer.delta.frobenius
        for _, layer in members
        if layer.delta is not None and math.isfinite(layer.delta.frobenius)
    ]
    norms = [n for n in norms if n > 0]
    median = _median(norms)

    def score(layer: LayerRecord) -> float:
        if median is None or median <= 0 or layer.delta is None:
            return 0.0
        norm = layer.delta.frobenius
        if not math.isfinite(norm):
            return math.inf
        if norm <= 0:
            return math.inf
        return abs(math.log(norm / median))

    threshold = math.log(OUTLIER_RATIO)

    def key(member: tuple[int, LayerRecord]) -> tuple[bool, float, int]:
        index, layer = member
        s = score(layer)
        return (layer.nonfinite == 0, -s if s >= threshold else 0.0, index)

    return sorted(members, key=key)


def selected_layers(adapter: Adapter, all_layers: bool) -> list[tuple[str, list[LayerRecord], int]]:
    """Per module type: the rows to show (outliers first) and how many were left out."""
    out: list[tuple[str, list[LayerRecord], int]] = []
    for module_type, members in group_by_type(adapter.layers):
        ordered = [layer for _, layer in outlier_order(members)]
        if all_layers or len(ordered) <= TOP_ROWS_PER_TYPE:
            out.append((module_type, ordered, 0))
        else:
            shown = ordered[:TOP_ROWS_PER_TYPE]
            out.append((module_type, shown, len(ordered) - len(shown)))
    return out


def diagnostics_for(adapter: Adapter, diagnostics: Sequence[Diagnostic]) -> list[Diagnostic]:
    """The findings whose path is the adapter unit or one of its files."""
    paths = {adapter.path, *adapter.files}
    return [d for d in diagnostics if d.path in paths]


# The escape sequences loracheck's own colouring emits (render/ansi.py): the only ones a
# cleaned line keeps. Anything else from input (cursor moves, OSC titles, BEL, backspace) is
# shown escaped.
_OWN_SGR = re.compile(r"\x1b\[(?:0|1|2|31|32|33|36)m")
# A line longer than this (a 90 MB tensor key) is cut, with its length said.
MAX_LINE = 2000


def clean_line(line: str, *, color: bool = False, limit: int = MAX_LINE) -> str:
    """``line`` safe for a terminal or a log: every non-printable character (controls, ESC
    sequences, lone surrogates, a newline inside a field) shown as its escape, as ``repr``
    would, and the line cut past ``limit`` characters. With ``color`` the colour codes
    loracheck itself writes are kept (input that mimics one changes a colour, nothing else)."""
    if len(line) > limit:
        line = line[:limit] + f"… ({len(line):,} characters)"
    if line.isprintable():
        return line
    out: list[str] = []
    pos = 0
    while pos < len(line):
        own = _OWN_SGR.match(line, pos) if color else None
        if own is not None:
            out.append(own.group(0))
            pos = own.end()
            continue
        ch = line[pos]
        out.append(ch if ch.isprintable() else ch.encode(
            "unicode_escape", "backslashreplace").decode("ascii"))
        pos += 1
    return "".join(out)


def clean_lines(lines: Iterable[str], *, color: bool = False) -> list[str]:
    """Every line through :func:`clean_line`."""
    return [clean_line(line, color=color) for line in lines]


# --- rule pages as terminal text -------------------------------------------------------------

_DOUBLE_BACKTICKS = re.compile(r"``(.+?)``")
_BACKTICKS = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_EMPHASIS = re.compile(r"(?<![\w*])\*(\w(?:[^*\n]*?\w)?)\*(?![\w*])")
_FENCE = re.compile(r"^\s*(```|~~~)")
CODE_INDENT = "    "


def plain_inline(text: str) -> str:
    """``text`` without inline markup: RST/Markdown code spans (````x````, ```x```) and
    ``*emphasis*`` become their plain content."""
    text = _DOUBLE_BACKTICKS.sub(r"\1", text)
    text = _BACKTICKS.sub(r"\1", text)
    return _EMPHASIS.sub(r"\1", text)


def markdown_to_terminal(text: str, *, color: bool = False) -> list[str]:
    """A rule's Markdown explanation as terminal lines: ``#``/``##`` headings become plain
    (bold with ``color``) heading lines, fenced code blocks become blocks indented by four
    spaces (the fences dropped, their content untouched), and inline markup is removed."""
    from loracheck.render.ansi import BOLD, paint

    out: list[str] = []
    in_code = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            out.append((CODE_INDENT + line).rstrip())
            continue
        stripped = line.lstrip()
        if stripped.startswith("#"):
            heading = stripped.lstrip("#").strip()
            out.append(paint(plain_inline(heading), BOLD, color))
            continue
        out.append(plain_inline(line))
    return out


def align_cells(cells: Sequence[str], widths: Sequence[int], left: Container[int]) -> str:
    """One table row: the columns in ``left`` padded on the right, the others on the left
    (numbers line up on their last digit), two spaces apart, no trailing blanks."""
    return "  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()


@dataclass(frozen=True)
class TableGroup:
    """One module type's rows in a per-module table: its label, the rows shown (cells), which
    of them are painted red, how many more were left out, and in what order the shown come."""

    label: str
    rows: list[Sequence[str]]
    flagged: list[bool]
    omitted: int
    first: str  # "outliers first", "findings first", ...
    noun: str = "module"


def grouped_table(columns: Sequence[str], left: Container[int], groups: Sequence[TableGroup],
                  *, color: bool, indent: str = "  ") -> list[str]:
    """The header row, then each group's title line and rows, columns aligned across groups;
    a group with rows left out ends with a line that says how many and how to see them."""
    from loracheck.render.ansi import BOLD, DIM, RED, paint

    widths = [len(c) for c in columns]
    for group in groups:
        for cells in group.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    out = [indent + paint(align_cells(columns, widths, left), BOLD, color)]
    for group in groups:
        title = f"{group.label} ({plural(len(group.rows) + group.omitted, group.noun)}"
        title += f", {len(group.rows)} shown, {group.first})" if group.omitted else ")"
        out.append(indent + paint(title, DIM, color))
        for cells, flagged in zip(group.rows, group.flagged, strict=True):
            line = align_cells(cells, widths, left)
            out.append(indent + (paint(line, RED, color) if flagged else line))
        if group.omitted:
            out.append(indent + paint(f"… {group.omitted} more (--all shows every row)", DIM,
                                      color))
    return out
