"""Renderers: pure functions from a :class:`~loracheck.model.Report` to text.

No renderer prints, reads files, or imports torch, typer or rich. Each name is imported from its
module when first asked for (PEP 562): a run imports the one renderer it uses, not all of them
and the records of the other commands (start-up, issue 14).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loracheck.render.diff_text import render_diff_text
    from loracheck.render.github import render_github
    from loracheck.render.inspect_text import render_inspect_text
    from loracheck.render.json_out import SCHEMA_VERSION, render_json, report_to_dict
    from loracheck.render.merged_text import render_merged_text
    from loracheck.render.sarif import render_sarif
    from loracheck.render.text import render_text
    from loracheck.render.verify_text import render_verify_text

# Public name -> the module under loracheck.render that defines it.
_HOME = {
    "SCHEMA_VERSION": "json_out",
    "render_diff_text": "diff_text",
    "render_github": "github",
    "render_inspect_text": "inspect_text",
    "render_json": "json_out",
    "render_merged_text": "merged_text",
    "render_sarif": "sarif",
    "render_text": "text",
    "render_verify_text": "verify_text",
    "report_to_dict": "json_out",
}

__all__ = [
    "SCHEMA_VERSION",
    "render_diff_text",
    "render_github",
    "render_inspect_text",
    "render_json",
    "render_merged_text",
    "render_sarif",
    "render_text",
    "render_verify_text",
    "report_to_dict",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
