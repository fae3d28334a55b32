"""``check`` text output: one line per finding, then a summary line (ruff/flake8 style)."""

from __future__ import annotations

from pathlib import Path

from loracheck.model import Diagnostic, Report, Severity
from loracheck.render._common import (
    clean_lines,
    display_path,
    message_with_location,
    plural,
    severity_counts,
    sorted_diagnostics,
)
from loracheck.render.ansi import BOLD, GREEN, SEVERITY_STYLE, paint


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``), so that a file name holding a newline
    cannot split one finding over two lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def format_diagnostic(d: Diagnostic, *, root: Path, color: bool = False) -> str:
    """``path:line:col: CODE [severity] message (location)``; line and col default to 1."""
    place = f"{_printable(display_path(d.path, root))}:{d.line or 1}:{d.col or 1}:"
    return " ".join(
        [
            paint(place, BOLD, color),
            paint(d.code, SEVERITY_STYLE[d.severity], color),
            paint(f"[{d.severity.value}]", SEVERITY_STYLE[d.severity], color),
            " ".join(message_with_location(d).split()),
        ]
    )


def summary_line(report: Report, *, color: bool = False) -> str:
    """``Found 3 problems (1 error, 2 warnings) in 2 files.`` or ``All checks passed (N files).``"""
    diagnostics = report.diagnostics
    if not diagnostics:
        text = f"All checks passed ({plural(len(report.adapters), 'file')})."
        return paint(text, GREEN, color)
    counts = severity_counts(diagnostics)
    words = ((Severity.ERROR, "error"), (Severity.WARNING, "warning"), (Severity.INFO, "info"))
    shown = [plural(counts[s], word) for s, word in words if counts[s]]
    n_paths = len({d.path for d in diagnostics})
    text = (
        f"Found {plural(len(diagnostics), 'problem')} ({', '.join(shown)}) "
        f"in {plural(n_paths, 'file')}."
    )
    return paint(text, BOLD, color)


def render_text(report: Report, *, color: bool, root: Path) -> str:
    """Every finding (sorted by path, line, column, code), then the summary line."""
    lines = [
        format_diagnostic(d, root=root, color=color) for d in sorted_diagnostics(report.diagnostics)
    ]
    lines.append(summary_line(report, color=color))
    return "\n".join(clean_lines(lines, color=color)) + "\n"
