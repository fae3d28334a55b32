"""`check` text output: exact lines, summary wording, colour, paths, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loracheck.model import Report, Severity
from loracheck.render import render_text
from loracheck.render.text import format_diagnostic
from test_render_factory import ROOT, adapter, diag, mixed_report


def test_exact_lines_sorted_by_path_line_code() -> None:
    out = render_text(mixed_report(), color=False, root=ROOT)
    assert out.splitlines() == [
        "adapter/adapter_model.safetensors:1:1: LC203 [error] NaN or Inf in lora_B "
        "(model.layers.0.self_attn.q_proj)",
        "adapter/adapter_model.safetensors:1:1: LC209 [warning] update norm 40x the q_proj median "
        "(model.layers.1.self_attn.q_proj)",
        "configs/train.yaml:7:3: LC103 [error] dropout 1.5 is outside [0, 1) (lora_dropout)",
        "Found 3 problems (2 errors, 1 warning) in 2 files.",
    ]
    assert out.endswith("\n")


def test_all_checks_passed() -> None:
    report = Report(adapters=[adapter(), adapter(path="/repo/b")])
    assert render_text(report, color=False, root=ROOT) == "All checks passed (2 files).\n"
    one = Report(adapters=[adapter()])
    assert render_text(one, color=False, root=ROOT) == "All checks passed (1 file).\n"


def test_summary_singular_and_info() -> None:
    report = Report(
        adapters=[adapter()],
        diagnostics=[diag("LC108", Severity.INFO, message="rsLoRA is ignored by some servers",
                          location=None)],
    )
    lines = render_text(report, color=False, root=ROOT).splitlines()
    assert lines[-1] == "All checks passed (1 file); 1 info."


def test_location_not_repeated_when_message_names_it() -> None:
    d = diag(message="NaN in model.layers.0.self_attn.q_proj")
    line = format_diagnostic(d, root=ROOT)
    assert line.endswith("[error] NaN in model.layers.0.self_attn.q_proj")


def test_path_outside_root_kept_and_relative_path_kept() -> None:
    outside = format_diagnostic(diag(path="/elsewhere/x.safetensors"), root=ROOT)
    assert outside.startswith("/elsewhere/x.safetensors:1:1: ")
    relative = format_diagnostic(diag(path="sub/x.safetensors", line=4), root=ROOT)
    assert relative.startswith("sub/x.safetensors:4:1: ")


def test_relative_root_resolves(tmp_path: Path) -> None:
    d = diag(path=str(tmp_path / "a" / "cfg.yaml"), line=2, col=5, location=None)
    assert format_diagnostic(d, root=tmp_path).startswith("a/cfg.yaml:2:5: ")


def test_multiline_message_stays_on_one_line() -> None:
    d = diag(message="first\nsecond", location=None)
    assert format_diagnostic(d, root=ROOT).endswith("[error] first second")


def test_colour_only_when_asked() -> None:
    plain = render_text(mixed_report(), color=False, root=ROOT)
    coloured = render_text(mixed_report(), color=True, root=ROOT)
    assert "\x1b[" not in plain
    assert "\x1b[" in coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain


def test_deterministic_regardless_of_input_order() -> None:
    a = mixed_report()
    b = mixed_report()
    b.diagnostics.reverse()
    assert render_text(a, color=False, root=ROOT) == render_text(b, color=False, root=ROOT)


def test_renderers_import_no_heavy_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys, loracheck.render; "
        "print(sorted(m for m in ('torch', 'typer', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_renderers_are_imported_when_first_used() -> None:
    """``loracheck.render`` imports a renderer (and the records it reads) when a name is first
    asked for: every public name resolves, and a run that renders text alone imports no other
    command's renderer."""
    import subprocess
    import sys

    import loracheck.render as render

    for name in render.__all__:
        assert callable(getattr(render, name)) or name == "SCHEMA_VERSION"
    with pytest.raises(AttributeError):
        render.render_nothing  # noqa: B018
    code = (
        "import sys\n"
        "from loracheck.render import render_text\n"
        "print(sorted(m for m in sys.modules if m.startswith('loracheck.render.')\n"
        "             or m.endswith('_record')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['loracheck.render._common', 'loracheck.render.ansi', " \
        "'loracheck.render.text']", out.stdout
