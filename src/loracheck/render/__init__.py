"""Renderers: pure functions from a :class:`~loracheck.model.Report` to text.

No renderer prints, reads files, or imports torch, typer or rich.
"""

from __future__ import annotations

from loracheck.render.diff_text import render_diff_text
from loracheck.render.github import render_github
from loracheck.render.inspect_text import render_inspect_text
from loracheck.render.json_out import SCHEMA_VERSION, render_json, report_to_dict
from loracheck.render.merged_text import render_merged_text
from loracheck.render.sarif import render_sarif
from loracheck.render.text import render_text
from loracheck.render.verify_text import render_verify_text

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
