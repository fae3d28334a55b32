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
    """``Found 3 problems (1 error, 2 warnings) in 2 files.``; infos are not problems:
    ``Found 1 problem (1 warning) and 2 infos in 1 file.``, ``All checks passed (2 files);
    1 info.``, ``All checks passed (N files).``. A report whose verdict is already known to be
    a failure (``passed`` False: an info reaching ``--fail-on info``) never says passed."""
    diagnostics = report.diagnostics
    counts = severity_counts(diagnostics)
    infos = plural(counts[Severity.INFO], "info")
    n_problems = counts[Severity.ERROR] + counts[Severity.WARNING]
    if not n_problems and (report.passed is not False or not diagnostics):
        text = f"All checks passed ({plural(len(report.adapters), 'file')})"
        text += f"; {infos}." if counts[Severity.INFO] else "."
        return paint(text, GREEN, color)
    n_paths = len({d.path for d in diagnostics})
    where = f"in {plural(n_paths, 'file')}."
    if not n_problems:
        return paint(f"Found {infos} {where}", BOLD, color)
    words = ((Severity.ERROR, "error"), (Severity.WARNING, "warning"))
    shown = [plural(counts[s], word) for s, word in words if counts[s]]
    text = f"Found {plural(n_problems, 'problem')} ({', '.join(shown)})"
    if counts[Severity.INFO]:
        text += f" and {infos}"
    return paint(f"{text} {where}", BOLD, color)


def render_text(report: Report, *, color: bool, root: Path) -> str:
    """Every finding (sorted by path, line, column, code), then the summary line."""
    lines = [
        format_diagnostic(d, root=root, color=color) for d in sorted_diagnostics(report.diagnostics)
    ]
    lines.append(summary_line(report, color=color))
    return "\n".join(clean_lines(lines, color=color)) + "\n"
