"""GitHub Actions annotations: command per severity, properties, escaping."""

from __future__ import annotations

from loracheck.model import Report, Severity
from loracheck.render import render_github
from loracheck.render.github import escape_data, escape_property
from test_render_factory import ROOT, diag, mixed_report


def test_exact_annotations() -> None:
    assert render_github(mixed_report(), root=ROOT).splitlines() == [
        "::error file=adapter/adapter_model.safetensors,line=1,title=LC203::NaN or Inf in lora_B "
        "(model.layers.0.self_attn.q_proj)",
        "::warning file=adapter/adapter_model.safetensors,line=1,title=LC209::update norm 40x "
        "the q_proj median (model.layers.1.self_attn.q_proj)",
        "::error file=configs/train.yaml,line=7,col=3,title=LC103::dropout 1.5 is outside "
        "[0, 1) (lora_dropout)",
    ]


def test_info_is_notice() -> None:
    report = Report(diagnostics=[diag("LC108", Severity.INFO, location=None, message="m")])
    assert render_github(report, root=ROOT).startswith("::notice ")


def test_escaping_rules() -> None:
    assert escape_data("100% a\r\nb: c, d") == "100%25 a%0D%0Ab: c, d"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_escaping_in_annotation() -> None:
    d = diag(
        path="/repo/we,ird:name%.yaml", message="50% off\nsecond: line, here", location=None,
        line=3,
    )
    out = render_github(Report(diagnostics=[d]), root=ROOT)
    assert out == (
        "::error file=we%2Cird%3Aname%25.yaml,line=3,title=LC203::50%25 off%0Asecond: line, here\n"
    )
    assert out.count("\n") == 1


def test_empty_report_prints_nothing() -> None:
    assert render_github(Report(), root=ROOT) == ""
