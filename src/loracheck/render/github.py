"""GitHub Actions workflow commands: ``::error file=...,line=...,title=LC203::message``."""

from __future__ import annotations

from pathlib import Path

from loracheck.model import Diagnostic, Report, Severity
from loracheck.render._common import (
    clean_line,
    display_path,
    message_with_location,
    sorted_diagnostics,
)

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    """Escape a command's message: ``%``, CR and LF (GitHub's ``escapeData``)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a property value: as :func:`escape_data`, plus ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_annotation(d: Diagnostic, *, root: Path) -> str:
    props = [
        f"file={escape_property(clean_line(display_path(d.path, root)))}",
        f"line={d.line or 1}",
    ]
    if d.col is not None:
        props.append(f"col={d.col}")
    props.append(f"title={escape_property(d.code)}")
    # control characters escaped line by line; the newlines stay, as %0A (a line break inside
    # the annotation, never a new workflow command)
    message = "\n".join(clean_line(part) for part in message_with_location(d).split("\n"))
    return f"::{COMMANDS[d.severity]} {','.join(props)}::{escape_data(message)}"


def render_github(report: Report, *, root: Path) -> str:
    """One workflow command per finding, sorted; empty text when there is none."""
    lines = [format_annotation(d, root=root) for d in sorted_diagnostics(report.diagnostics)]
    return "".join(line + "\n" for line in lines)
