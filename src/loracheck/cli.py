"""The command line: the only module that imports typer and rich.

It parses flags, calls the pipeline, hands the Report to a renderer, and turns domain errors
into one line on stderr and an exit code: 0 clean, 1 findings (or unreadable inputs), 2 usage,
configuration or internal error.
"""

from __future__ import annotations

import contextlib
import os
import sys

# The statistics are many small r×r and r×n products: OpenBLAS's thread pool only adds
# hand-offs there, and on a busy machine its spinning threads made `inspect` 4x slower
# (benchmarks/bench_inspect.py). Set before numpy is first imported; a user's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from typer._click.types import StringParamType

from loracheck import __version__
from loracheck.errors import LoracheckError, UsageError


class _PlainText(StringParamType):
    """Text whose help shows no type label: the argument's metavar (``PATH...``) says it."""

    def get_metavar(self, param: Any, ctx: Any) -> str:
        return ""


class _Argument(typer.core.TyperArgument):
    """An argument shown by its metavar alone: ``PATH...`` in the usage line and the help
    table, with no internal type label (``<str>``) or braces (``{PATH...}``)."""

    def make_metavar(self, ctx: Any, *, usage: bool = False) -> str:
        if self.metavar is None:
            return str(super().make_metavar(ctx, usage=usage))
        return self.metavar if self.required or not usage else f"[{self.metavar}]"


def _plain_help(command: Any) -> None:
    """Arguments shown by their metavars (:class:`_Argument`)."""
    for param in command.params:
        if type(param) is typer.core.TyperArgument:
            param.__class__ = _Argument
            if param.metavar is not None and type(param.type) is StringParamType:
                param.type = _PlainText()


def _quiet_help_option(option: Any) -> Any:
    """``--help`` without a ``<bool>`` type label."""
    if option is not None:
        option.metavar = ""
    return option


class _Command(typer.core.TyperCommand):
    """A command whose help shows metavars, not typer's internal type labels."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def get_help_option(self, ctx: Any) -> Any:
        return _quiet_help_option(super().get_help_option(ctx))


class _Group(typer.core.TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        return _quiet_help_option(super().get_help_option(ctx))


app = typer.Typer(
    name="loracheck",
    help="Static analyzer and verifier for LoRA configs and checkpoints.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_Group,
)


class InspectFormat(str, Enum):
    text = "text"
    json = "json"


class CheckFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    github = "github"


class StageChoice(str, Enum):
    auto = "auto"
    init = "init"
    trained = "trained"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"


def _color(stream: Any) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


def _split(values: list[str] | None) -> list[str] | None:
    """`--select LC1,LC2 --select LC3` -> ["LC1", "LC2", "LC3"]."""
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _write(text: str, output: Path | None) -> None:
    if output is None:
        text = text if text.endswith("\n") or not text else text + "\n"
        if getattr(sys.stdout, "errors", None) == "strict":
            # A file name that is not UTF-8 (surrogate escapes) must not crash the report.
            encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
            try:
                text.encode(encoding)
            except UnicodeEncodeError:
                text = text.encode(encoding, "backslashreplace").decode(encoding)
            except LookupError:
                pass
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    import tempfile

    body = text if text.endswith("\n") else text + "\n"
    try:
        # Written beside the target under a temporary name, then renamed over it: an
        # interrupted run leaves the old report (or none), never half of a new one.
        # surrogateescape: a file name that is not UTF-8 is written back as its own bytes.
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent or Path("."))
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.write(body)
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise UsageError(f"{output}: cannot write: {err.strerror or err}") from err


def _refuse_input_as_output(output: Path | None, paths: Sequence[str]) -> None:
    """``--output`` naming one of the inputs (or a file inside an input folder) would
    overwrite what is being checked: a usage error before anything runs."""
    if output is None:
        return
    from loracheck.discover import discover

    target = output.resolve()
    named = {Path(raw).resolve() for raw in paths}
    # the weights and the configs that belong to them (a loose config or an earlier report
    # met while walking is a candidate only, and may be written over)
    owned = {p.resolve() for u in discover(list(paths)) for p in (u.weights, u.config)
             if p is not None and (u.weights is not None or u.explicit)}
    if target in named or target in owned:
        raise UsageError(f"--output {output}: that is one of the inputs; choose another file")


class _ProgressBar:
    """A progress bar on stderr, shown only on a terminal and only for slow work: it appears
    once the work has run for half a second, so quick runs print nothing and import no rich."""

    DELAY_S = 0.5

    def __init__(self, enabled: bool) -> None:
        import time

        self._enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._clock = time.monotonic
        self._start = self._clock()

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self._enabled or total <= 1:
            return
        if self._progress is None:
            if self._clock() - self._start < self.DELAY_S:
                return
            from rich.console import Console
            from rich.progress import Progress

            self._progress = Progress(console=Console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("reading", total=total)
        self._progress.update(self._task, completed=done, description=Path(label).name[:40])

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


PathsArg = Annotated[list[str], typer.Argument(
    help="Adapter folders, weights or config files.", metavar="PATH...")]
StageOpt = Annotated[StageChoice, typer.Option(help="Override the inferred stage.",
                                               metavar="auto|init|trained")]
ProfileOpt = Annotated[
    str | None, typer.Option(help="Profile: default, llmbook, or a TOML file path.",
                             metavar="NAME|FILE")
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Base model folder (config.json + safetensors).",
                             metavar="DIR")
]
FormatOpt = Annotated[InspectFormat, typer.Option("--format", "-f", metavar="text|json")]
CheckFormatOpt = Annotated[
    CheckFormat, typer.Option("--format", "-f", metavar="text|json|sarif|github")
]
FailOnOpt = Annotated[FailOn | None, typer.Option(help="Lowest severity that fails.",
                                                  metavar="error|warning|info")]
SelectOpt = Annotated[list[str] | None, typer.Option(
    help="Codes or prefixes to run (comma-separated, repeatable).", metavar="CODES")]
ExtendSelectOpt = Annotated[list[str] | None, typer.Option(
    help="Codes or prefixes to run besides the selected ones.", metavar="CODES")]
IgnoreOpt = Annotated[list[str] | None, typer.Option(
    help="Codes or prefixes to skip (comma-separated, repeatable).", metavar="CODES")]


def _run(paths: list[str], options: Any, progress: bool) -> tuple[Any, Any]:
    from loracheck.runner import run

    bar = _ProgressBar(progress)
    try:
        return run(paths, options, bar)
    finally:
        bar.close()


@app.command(cls=_Command)
def inspect(
    paths: PathsArg,
    format: FormatOpt = InspectFormat.text,
    stage: StageOpt = StageChoice.auto,
    profile: ProfileOpt = None,
    all_layers: Annotated[bool, typer.Option("--all", help="Show every layer.",
                                             metavar="")] = False,
    model: ModelOpt = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the whole evidence for the init scheme.",
        metavar="")] = False,
) -> int:
    """Show what adapters really hold: format, rank, alpha, scale, init, stage, per-layer stats."""
    from loracheck.runner import RunOptions

    report, _ = _run(paths, RunOptions(stage=stage.value, profile=profile, model=model),
                     progress=True)
    root = Path.cwd()
    if format is InspectFormat.json:
        from loracheck.render import render_json

        _write(render_json(report), None)
    else:
        from loracheck.render import render_inspect_text

        _write(render_inspect_text(report, color=_color(sys.stdout), all_layers=all_layers,
                                   root=root, verbose=verbose), None)
    return 1 if any(d.severity.value == "error" for d in report.diagnostics) else 0


def _render_report(report: Any, format: CheckFormat, *, color: bool) -> str:
    """``check``'s output of ``report`` in ``format``."""
    from loracheck import render

    root = Path.cwd()
    if format is CheckFormat.json:
        return render.render_json(report)
    if format is CheckFormat.sarif:
        from loracheck.rules.registry import all_rules

        rules = {r.code: r for r in all_rules()}
        return render.render_sarif(report, rules, root=root, tool_version=__version__)
    if format is CheckFormat.github:
        return render.render_github(report, root=root)
    return render.render_text(report, color=color, root=root)


@app.command(cls=_Command)
def check(
    paths: Annotated[list[str] | None, typer.Argument(
        help="Adapter folders, weights or config files (default: the current folder).",
        metavar="PATH...", show_default=False)] = None,
    format: CheckFormatOpt = CheckFormat.text,
    fail_on: FailOnOpt = None,
    stage: StageOpt = StageChoice.auto,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    select: SelectOpt = None,
    extend_select: ExtendSelectOpt = None,
    ignore: IgnoreOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the report to this file.", metavar="FILE")] = None,
    exit_zero: Annotated[bool, typer.Option(help="Exit 0 even when findings fail.",
                                            metavar="")] = False,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Worker processes (default: one per CPU).",
        metavar="N")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per file.", min=0.1,
                                           metavar="SECONDS")] = 600.0,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Name the files skipped as holding no LoRA content (stderr).",
        metavar="")] = False,
) -> int:
    """Lint adapters and configs: findings with codes, for pre-commit and CI."""
    from loracheck.model import Severity
    from loracheck.runner import RunOptions, failing

    paths = paths or ["."]
    options = RunOptions(
        stage=stage.value, profile=profile, select=_split(select),
        extend_select=_split(extend_select), ignore=_split(ignore),
        fail_on=fail_on.value if fail_on is not None else None, model=model, jobs=jobs,
        timeout=timeout,
        # pre-commit sets PRE_COMMIT=1 for its hooks and hands over every staged file that
        # matches the hook's pattern: those that hold no LoRA content are skipped quietly.
        handed_over=os.environ.get("PRE_COMMIT") == "1",
        keep_details=format is CheckFormat.json,
    )
    _refuse_input_as_output(output, paths)
    report, settings = _run(paths, options, progress=format is CheckFormat.text)
    threshold: Severity = settings.fail_on
    report.passed = not failing(report, threshold)
    if verbose:
        from loracheck.render._common import clean_line

        for path in report.skipped:
            print(clean_line(f"loracheck: skipped {path}: no LoRA settings or weights"),
                  file=sys.stderr)
    _write(_render_report(report, format, color=output is None and _color(sys.stdout)), output)
    if exit_zero:
        return 0
    return 0 if report.passed else 1


def _severity_text(meta: Any) -> str:
    """The severities a rule's findings carry: ``error``, or ``warning/error`` for a rule that
    chooses by case."""
    return "/".join(level.value for level in meta.severities)


def _rule_page(meta: Any, *, color: bool) -> str:
    """``loracheck rule CODE`` as terminal text: the Markdown explanation without its markup."""
    from loracheck.render._common import markdown_to_terminal
    from loracheck.render.ansi import BOLD, paint

    severity = _severity_text(meta)
    if meta.when:
        severity += f" — {meta.when}"
    lines = [paint(f"{meta.code} {meta.name}", BOLD, color), "",
             f"Severity: {severity}", f"Status: {meta.status}", ""]
    lines += markdown_to_terminal(meta.explanation.strip(), color=color)
    return "\n".join(lines) + "\n"


def _rule_list(rules: Sequence[Any]) -> str:
    """``loracheck rule --all``: one line per rule, with the severities it fires at."""
    from loracheck.render._common import plain_inline

    width = max(len(r.name) for r in rules)
    sev_width = max(len(_severity_text(r)) for r in rules)
    return "\n".join(
        f"{r.code}  {r.name:<{width}}  {_severity_text(r):<{sev_width}}  "
        f"{plain_inline(r.summary)}" for r in rules)


@app.command(cls=_Command)
def rule(
    code: Annotated[str | None, typer.Argument(help="A rule code, e.g. LC204.",
                                               metavar="CODE")] = None,
    all_rules_: Annotated[bool, typer.Option("--all", help="List every rule.",
                                             metavar="")] = False,
    format: FormatOpt = InspectFormat.text,
) -> int:
    """Explain one rule, or list them all."""
    import json

    from loracheck.rules.registry import all_rules, get_rule

    if all_rules_ or code is None:
        rules = all_rules()
        if format is InspectFormat.json:
            _write(json.dumps([_rule_dict(r) for r in rules], indent=2), None)
        else:
            _write(_rule_list(rules), None)
        return 0
    meta = get_rule(code.upper())
    if meta is None:
        raise UsageError(f"unknown rule code: {code} (see `loracheck rule --all`)")
    if format is InspectFormat.json:
        _write(json.dumps(_rule_dict(meta), indent=2), None)
    else:
        _write(_rule_page(meta, color=_color(sys.stdout)), None)
    return 0


def _rule_dict(meta: Any) -> dict[str, str]:
    return {"code": meta.code, "name": meta.name, "severity": meta.severity.value,
            "status": meta.status, "summary": meta.summary, "explanation": meta.explanation}


@app.command(cls=_Command)
def verify(
    model: Annotated[str, typer.Option(help="builtin, or a transformers folder.",
                                       metavar="builtin|DIR")] = "builtin",
    adapter: Annotated[str | None, typer.Option(help="An adapter to load and verify.",
                                                metavar="PATH")] = None,
    config: Annotated[str | None, typer.Option(help="A config file with LoRA settings.",
                                               metavar="FILE")] = None,
    profile: Annotated[str, typer.Option(help="Profile when no config is given.",
                                         metavar="NAME|FILE")] = "llmbook",
    init: Annotated[str | None, typer.Option(help="Init scheme override: normal, kaiming, "
                                             "gaussian, pissa, zeros, random.",
                                             metavar="SCHEME")] = None,
    probe_steps: Annotated[int, typer.Option(min=1, help="Training steps of the probe.",
                                             metavar="N")] = 20,
    lr: Annotated[float, typer.Option(min=0.0, help="Learning rate of the probe.",
                                      metavar="RATE")] = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per probe step.",
                                            metavar="N")] = 8,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per sequence.",
                                         metavar="N")] = 64,
    seed: Annotated[int, typer.Option(metavar="N")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.",
                                        metavar="DEVICE")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, float16.",
                                       metavar="DTYPE")] = "float32",
    data: Annotated[str | None, typer.Option(help="A text file for the probe.",
                                             metavar="FILE")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="Use torch.compile.",
                                          metavar="")] = False,
    device_map: Annotated[str | None, typer.Option(help="auto: shard through accelerate.",
                                                   metavar="auto")] = None,
    save_adapter: Annotated[str | None, typer.Option(help="Write the probed adapter here.",
                                                     metavar="DIR")] = None,
    overwrite: Annotated[bool, typer.Option(help="Let --save-adapter replace a folder.",
                                            metavar="")] = False,
    keep_going: Annotated[bool, typer.Option(
        help="Probe even when `check` finds errors in --config or --adapter.",
        metavar="")] = False,
    format: CheckFormatOpt = CheckFormat.text,
    fail_on: FailOnOpt = None,
    select: SelectOpt = None,
    extend_select: ExtendSelectOpt = None,
    ignore: IgnoreOpt = None,
) -> int:
    """Probe a live model: identity at step 0, only adapters learn, loss falls, merge/reload."""
    try:
        from loracheck.verify import VerifyOptions, run_verify
    except ImportError as err:
        raise UsageError(
            f"verify needs torch ({err.name} is missing): pip install 'loracheck[torch]'"
        ) from err
    from loracheck.engine import check_probe
    from loracheck.model import Adapter, Report
    from loracheck.runner import RunOptions, failing, run
    from loracheck.settings import load_settings

    spec = None
    if config is not None:
        from loracheck.configs import read_spec

        # Any config format the core reads: a bad one is one line and exit 2, as a bad flag.
        spec = read_spec(Path(config))
    # Inputs first: the config and the adapter are checked as `check` would; their findings
    # are part of the report, and an error stops the run before the probe (unless
    # --keep-going).
    inputs = [p for p in (config, adapter) if p is not None and Path(p).exists()]
    run_options = RunOptions(select=_split(select), extend_select=_split(extend_select),
                             ignore=_split(ignore),
                             fail_on=fail_on.value if fail_on is not None else None, jobs=1)
    color = _color(sys.stdout)
    if inputs:
        checked, settings = run(inputs, run_options)
    else:
        checked = Report()
        settings = load_settings([Path.cwd()], select=run_options.select,
                                 extend_select=run_options.extend_select,
                                 ignore=run_options.ignore, fail_on=run_options.fail_on)
    if inputs and not keep_going and failing(checked, settings.fail_on):
        checked.passed = False
        _write(_render_verify(checked, format, color=color), None)
        return 1
    opts = VerifyOptions(
        model=model, adapter=_path(adapter), config=_path(config), spec=spec, profile=profile,
        init=init, probe_steps=probe_steps, lr=lr, batch_size=batch_size, seq_len=seq_len,
        seed=seed, device=device, dtype=dtype, data=_path(data), compile=compile,
        device_map=device_map, save_adapter=_path(save_adapter), overwrite=overwrite,
        post_save_check=_post_save_check,
    )
    bar = _StepBar()
    try:
        record = run_verify(opts, progress=bar)
    finally:
        bar.close()
    subject = Adapter(path=record.model, format="verify", files=[], spec=None)
    diagnostics = [*checked.diagnostics, *check_probe(record, subject, settings)]
    report = Report(adapters=checked.adapters, diagnostics=diagnostics, probe=record)
    report.passed = not failing(report, settings.fail_on)
    _write(_render_verify(report, format, color=color), None)
    return 0 if report.passed else 1


def _command_settings(path: str, select: list[str] | None, extend_select: list[str] | None,
                      ignore: list[str] | None, fail_on: FailOn | None) -> Any:
    """The settings a measuring command (merged, diff) judges with: the project's, found from
    ``path``, and the selection flags."""
    from loracheck.settings import load_settings

    return load_settings([Path(path)], select=_split(select), extend_select=_split(extend_select),
                         ignore=_split(ignore),
                         fail_on=fail_on.value if fail_on is not None else None)


def _fault_diagnostics(adapter: Any, settings: Any) -> list[Any]:
    """An input that could not be read, reported as `check` reports it (its LC001, LC002, ...)."""
    from loracheck.engine import check_adapter

    codes = {fault.code for fault in adapter.faults}
    return [d for d in check_adapter(adapter, settings) if d.code in codes]


@app.command(cls=_Command)
def merged(
    merged_path: Annotated[str, typer.Argument(
        help="The merged model: a folder (sharded with model.safetensors.index.json, or one "
        ".safetensors) or a .safetensors file.", metavar="MERGED")],
    base: Annotated[str, typer.Option(help="The base model the adapter was merged into.",
                                      metavar="DIR")],
    adapter: Annotated[str, typer.Option(help="The adapter that was merged (anything "
                                         "`inspect` reads).", metavar="PATH")],
    format: CheckFormatOpt = CheckFormat.text,
    fail_on: FailOnOpt = None,
    select: SelectOpt = None,
    extend_select: ExtendSelectOpt = None,
    ignore: IgnoreOpt = None,
    all_modules: Annotated[bool, typer.Option("--all", help="Show every module's row.",
                                              metavar="")] = False,
) -> int:
    """Verify a merged checkpoint: MERGED = BASE + s·B·A per module, within rounding."""
    from loracheck.engine import check_merged
    from loracheck.errors import ArtifactError
    from loracheck.merge_measure import measure_merge
    from loracheck.model import Adapter, Fault, Report
    from loracheck.runner import failing

    settings = _command_settings(merged_path, select, extend_select, ignore, fail_on)
    bar = _ProgressBar(format is CheckFormat.text)
    try:
        loaded, record = measure_merge(merged_path, base, adapter, progress=bar)
    except ArtifactError as err:
        # A broken file (a truncated shard, a corrupt adapter): its LC001 in every format.
        fault = Fault(err.code, err.path, err.detail, err.line, err.location)
        broken = Adapter(path=err.path, format="merged", files=[err.path], spec=None,
                         faults=[fault])
        report = Report(adapters=[broken], diagnostics=_fault_diagnostics(broken, settings))
        report.passed = False
        record = None
    finally:
        bar.close()
    if record is not None:
        subject = Adapter(path=record.merged, format="merged", files=[], spec=None)
        report = Report(adapters=[loaded], diagnostics=check_merged(record, subject, settings),
                        merged=record)
        report.passed = not failing(report, settings.fail_on)
    color = _color(sys.stdout)
    if format is CheckFormat.text:
        from loracheck.render import render_merged_text

        _write(render_merged_text(report, color=color, root=Path.cwd(),
                                  all_modules=all_modules), None)
    else:
        _write(_render_report(report, format, color=color), None)
    return 0 if report.passed else 1


@app.command(cls=_Command)
def diff(
    a: Annotated[str, typer.Argument(help="The reference adapter (anything `inspect` reads).",
                                     metavar="A")],
    b: Annotated[str, typer.Argument(help="The adapter compared with it.", metavar="B")],
    tolerance: Annotated[float | None, typer.Option(
        help="Largest ‖ΔW_A − ΔW_B‖ / ‖ΔW_A‖ allowed per module (default: what rounding the "
        "factors to their dtypes explains).", metavar="T")] = None,
    format: CheckFormatOpt = CheckFormat.text,
    fail_on: FailOnOpt = None,
    select: SelectOpt = None,
    extend_select: ExtendSelectOpt = None,
    ignore: IgnoreOpt = None,
    all_modules: Annotated[bool, typer.Option("--all", help="Show every module's row.",
                                              metavar="")] = False,
) -> int:
    """Compare two adapters module by module: is B the same update as A (conversions,
    re-saves, checkpoints)?"""
    from loracheck.adapter_diff import diff_paths
    from loracheck.engine import check_diff
    from loracheck.model import Report
    from loracheck.runner import failing

    settings = _command_settings(b, select, extend_select, ignore, fail_on)
    bar = _ProgressBar(format is CheckFormat.text)
    try:
        adapter_a, adapter_b, record = diff_paths(a, b, tolerance=tolerance, progress=bar)
    finally:
        bar.close()
    diagnostics = [d for side in (adapter_a, adapter_b) for d in _fault_diagnostics(side, settings)]
    if record is None and not diagnostics:
        empty = a if not adapter_a.layers else b
        raise UsageError(f"{empty}: no LoRA factor pairs to compare")
    if record is not None:
        diagnostics += check_diff(record, adapter_b, settings)
    report = Report(adapters=[adapter_a, adapter_b], diagnostics=diagnostics, diff=record)
    report.passed = record is not None and not failing(report, settings.fail_on)
    color = _color(sys.stdout)
    if format is CheckFormat.text:
        from loracheck.render import render_diff_text

        _write(render_diff_text(report, color=color, root=Path.cwd(), all_layers=all_modules),
               None)
    else:
        _write(_render_report(report, format, color=color), None)
    return 0 if report.passed else 1


def _render_verify(report: Any, format: CheckFormat, *, color: bool) -> str:
    if format is CheckFormat.text:
        from loracheck.render import render_verify_text

        return render_verify_text(report, color=color, root=Path.cwd())
    return _render_report(report, format, color=color)


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _post_save_check(path: Path) -> list[Any]:
    """`loracheck check` on the adapter verify saved: its errors go into the probe record
    (LC306 reports them)."""
    from loracheck.runner import RunOptions, run

    report, _ = run([str(path)], RunOptions(jobs=1))
    return [d for d in report.diagnostics if d.severity.value == "error"]


class _StepBar:
    def __init__(self) -> None:
        self._bar = _ProgressBar(True)

    def __call__(self, done: int, total: int) -> None:
        self._bar("probe", done, total)

    def close(self) -> None:
        self._bar.close()


def _version(value: bool) -> None:
    if value:
        from loracheck.fused import KERNEL
        from loracheck.render.json_out import LINE_WRITER_NAME

        typer.echo(f"loracheck {__version__} (statistics: {KERNEL}; JSON lines: "
                   f"{LINE_WRITER_NAME})")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.",
                           metavar="")
    ] = False,
) -> None:
    """loracheck: find what is wrong with a LoRA adapter before a long job or a release."""


def _on_sigterm() -> Any:
    """SIGTERM (a CI job cancelled, ``timeout``) stops the run as Ctrl-C does: worker
    processes are killed, temporary folders removed, and no half-written ``--output`` is left.
    Only the main thread of the main interpreter can install it; elsewhere nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code (callable without a subprocess, as pre-commit hooks)."""
    args = list(sys.argv[1:] if argv is None else argv)
    previous = _on_sigterm()
    try:
        result = app(args=args, prog_name="loracheck", standalone_mode=False)
    except typer.Exit as exc:
        return int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        sys.stderr.write("loracheck: aborted\n")
        return 2
    except typer.TyperException as exc:  # usage errors: bad flags, missing arguments
        message = exc.format_message()
        if message:  # empty after `loracheck` alone, which has printed the help already
            sys.stderr.write(f"loracheck: {message}\n")
        return 2
    except LoracheckError as exc:
        sys.stderr.write(f"loracheck: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("loracheck: interrupted\n")
        return 2
    except BrokenPipeError:
        return 1
    except Exception as exc:  # an internal error: one line, exit 2, never a traceback
        sys.stderr.write(f"loracheck: internal error: {type(exc).__name__}: {exc}\n")
        if os.environ.get("LORACHECK_DEBUG"):
            raise
        return 2
    finally:
        _restore_sigterm(previous)
    if result == 130:  # typer's answer to KeyboardInterrupt (Ctrl-C, or SIGTERM above)
        sys.stderr.write("loracheck: interrupted\n")
    return int(result) if isinstance(result, int) else 0
