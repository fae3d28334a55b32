"""A tiny ANSI colour helper; renderers colour text only when asked to."""

from __future__ import annotations

from loracheck.model import Severity

RESET = "\x1b[0m"
BOLD = "\x1b[1m"
DIM = "\x1b[2m"
RED = "\x1b[31m"
YELLOW = "\x1b[33m"
CYAN = "\x1b[36m"
GREEN = "\x1b[32m"

SEVERITY_STYLE = {
    Severity.ERROR: BOLD + RED,
    Severity.WARNING: BOLD + YELLOW,
    Severity.INFO: BOLD + CYAN,
}


def paint(text: str, style: str, enabled: bool) -> str:
    """``text`` wrapped in ``style`` when ``enabled`` (and non-empty), else unchanged."""
    if not enabled or not style or not text:
        return text
    return f"{style}{text}{RESET}"
