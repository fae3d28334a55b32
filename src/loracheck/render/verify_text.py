"""``verify`` text output: what ran, one line per measurement, then the findings as ``check``
prints them, then the verdict.

A measurement line reads ``pass``, ``FAIL`` (a finding of that code reaches error), ``warn``
(findings of that code, none an error), ``skip`` (not measured: the run stopped before it) or
``refused`` (LC309).
"""

from __future__ import annotations

from pathlib import Path

from loracheck.model import Report, Severity
from loracheck.probe_record import IdentityMode, ProbeRecord
from loracheck.render._common import clean_lines, sorted_diagnostics
from loracheck.render.ansi import BOLD, GREEN, RED, paint
from loracheck.render.text import _printable, format_diagnostic, summary_line


def _g(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else f"{value:.4g}"


def _header(p: ProbeRecord) -> str:
    scales = sorted(set(p.scales))
    scale = _g(scales[0]) if len(scales) == 1 else (
        f"{_g(scales[0])}…{_g(scales[-1])}" if scales else "-")
    return (f"loracheck verify: {_printable(p.model)} ({p.task.value}) on {p.device}, "
            f"{p.dtype}: {p.n_modules} LoRA modules, init {p.init}, r {p.rank}, "
            f"alpha {_g(p.alpha)}, scale {scale}, dropout {_g(p.dropout)}; "
            f"{p.probe_steps} probe steps at lr {_g(p.lr)}")


def _rows(p: ProbeRecord) -> list[tuple[str, str, str | None]]:
    """(code, what, numbers or None when not measured) per measurement, in run order."""
    rows: list[tuple[str, str, str | None]] = []
    if p.adapter is not None:
        rows.append(("LC308", "adapter fits", f"{p.n_modules} modules, "
                     f"{len(p.fit_problems)} do not fit"))
    if p.unsupported:
        rows.append(("LC309", "features", ", ".join(u.feature for u in p.unsupported)))
    ident = p.identity
    if ident is None or ident.mode is not IdentityMode.NOT_EXPECTED:
        bound = ("exact" if ident is None or ident.mode is IdentityMode.EXACT
                 else f"tolerance {_g(ident.tolerance)}")
        rows.append(("LC301", "identity at step 0", None if ident is None else (
            f"max |Δ| eval {_g(ident.eval_max_abs)}, train {_g(ident.train_max_abs)} ({bound}"
            f"{', eval only' if ident.mode is IdentityMode.EVAL_ONLY else ''})")))
    rows.append(("LC303", "only the adapter learns", None if p.trainable is None else (
        f"{p.trainable:,} trainable, {p.expected_trainable:,} expected; "
        f"{len(p.leaked)} base trainable, {len(p.base_changed)} base changed")))
    n_factors = len({(g.module, g.factor) for g in p.gradients})
    zero_ok = sum(1 for g in p.gradients if g.partner_zero and g.grad_absmax == 0.0)
    rows.append(("LC304", "every factor learns", None if not p.gradients else (
        f"{n_factors} factors, {zero_ok} zero as expected while the partner is zero")))
    losses = p.losses
    drop = losses.drop if losses is not None else None
    rows.append(("LC302", "the loss falls", None if losses is None else (
        f"{_g(losses.eval_before)} → {_g(losses.eval_after)} on the fixed batch "
        f"({'-' if drop is None else f'{100 * drop:.3g}%'}; ≥ {100 * losses.min_drop:g}% "
        "expected)")))
    merge = p.merge
    rows.append(("LC305", "merge", None if merge is None else (
        f"max |Δ| {_g(merge.max_abs)} (tolerance {_g(merge.tolerance)}), "
        f"{len(merge.unmerge_failures)} unmerge failures")))
    reload = p.reload
    rows.append(("LC306", "save and reload", None if reload is None else (
        f"max |Δ| {_g(reload.max_abs)} (tolerance {_g(reload.tolerance)}), "
        f"{len(reload.saved_check)} check errors on the saved adapter")))
    rows.append(("LC307", "finite", None if p.losses is None else (
        "no NaN or Inf" if not p.nonfinite else ", ".join(p.nonfinite))))
    return rows


def render_verify_text(report: Report, *, color: bool, root: Path) -> str:
    """The verify report: header, measurements, findings, summary and verdict."""
    lines: list[str] = []
    probe = report.probe
    if probe is not None:
        lines.append(_header(probe))
        worst: dict[str, Severity] = {}
        for d in report.diagnostics:
            if d.code not in worst or d.severity.rank > worst[d.code].rank:
                worst[d.code] = d.severity
        for code, what, numbers in _rows(probe):
            if numbers is None:
                status = "skip"
            elif code == "LC309":
                status = "refused"
            elif code in worst:
                status = "FAIL" if worst[code] is Severity.ERROR else "warn"
            else:
                status = "pass"
            lines.append(f"  {status:7} {code}  {what:24} {numbers or ''}".rstrip())
        timing = probe.timing
        if timing:
            parts = ", ".join(f"{k.removesuffix('_s')} {v:.2f} s" for k, v in timing.items()
                              if k.endswith("_s"))
            lines.append(f"  time: {parts}")
        lines.append("")
    lines.extend(format_diagnostic(d, root=root, color=color)
                 for d in sorted_diagnostics(report.diagnostics))
    if report.diagnostics:
        lines.append(summary_line(report, color=color))
    verdict = ("verify passed" if report.passed else "verify FAILED") if probe is not None \
        else "verify stopped: the inputs have errors (see above; --keep-going probes anyway)"
    lines.append(paint(verdict, GREEN if report.passed else (RED if probe else BOLD), color))
    return "\n".join(clean_lines(lines, color=color)) + "\n"
