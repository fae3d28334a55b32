"""The pipeline of `inspect` and `check`: discover -> load -> rules -> Report.

No printing here and no typer/rich: the CLI renders the Report this returns.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loracheck.discover import Unit, discover
from loracheck.errors import DeadlineExceeded
from loracheck.model import Adapter, Diagnostic, Fault, Report, Severity, StageSource

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from loracheck.basemodel import BaseModelInfo
    from loracheck.settings import Settings

Progress = Callable[[str, int, int], None]


@dataclass
class RunOptions:
    """What the user asked for on the command line (None = not given: config file or default)."""

    stage: str = "auto"
    profile: str | None = None
    select: list[str] | None = None
    extend_select: list[str] | None = None
    ignore: list[str] | None = None
    fail_on: str | None = None
    model: str | None = None
    jobs: int | None = None
    timeout: float = 600.0
    # Files handed over one by one by a tool (pre-commit): skip quietly those with no LoRA content.
    handed_over: bool = False
    # False when only the findings will be rendered: measurements are dropped once judged.
    keep_details: bool = True


@functools.cache
def _cpus() -> int:
    """The CPU count, asked once per process rather than once per unit (a system call each)."""
    return os.cpu_count() or 1


def _load_one(
    unit: Unit, stage: str, layer_progress: Callable[[int, int], None] | None = None,
    deadline: float | None = None, stage_source: StageSource = StageSource.COMMAND_LINE,
    threads: int | None = None,
) -> Adapter | None:
    from loracheck.load import LoadOptions, load_unit

    options = LoadOptions(stage=stage, stage_source=stage_source, deadline=deadline,
                          threads=threads or _cpus())
    return load_unit(unit, options, progress=layer_progress)


def _unit_stage(unit: Unit, job: UnitJob) -> tuple[str, StageSource]:
    """--stage beats the settings (``per-file-stage``, then ``stage``)."""
    if job.stage != "auto":
        return job.stage, StageSource.COMMAND_LINE
    from loracheck.engine import stage_setting

    files = [unit.path, *(str(p) for p in (unit.weights, unit.config) if p is not None)]
    return stage_setting(files, job.settings), StageSource.SETTINGS


@dataclass(frozen=True)
class UnitJob:
    """What every unit of one run is read and judged with (sent once to each worker)."""

    # --stage: "auto" leaves it to the settings, then to the evidence.
    stage: str
    settings: Settings
    base: BaseModelInfo | None = None
    # False when only the findings will be rendered: measurements are dropped once judged.
    keep_details: bool = True
    # Threads per unit for its large pairs: None for one per CPU (this process reads alone),
    # 1 in the workers of a pool.
    pair_threads: int | None = None


@dataclass(frozen=True)
class Judged:
    """One unit, read and judged: its adapter (measurements dropped unless kept) and findings."""

    adapter: Adapter
    diagnostics: list[Diagnostic]


# Seconds added to the backstop wait on a worker (process start-up, result transfer).
_GRACE_S = 5.0


class _Deadline(BaseException):
    """Raised by the interval timer inside a unit that ran past --timeout. A BaseException, so
    that the readers' own ``except Exception`` (a malformed pickle, a bad YAML) never takes it
    for a fault of the file."""


# After the deadline the timer keeps firing at this interval until the unit is abandoned: an
# exception raised while the interpreter runs a finalizer (garbage collection of someone
# else's objects) is swallowed, so one alarm alone may not stop the unit.
_RETRY_S = 0.05
# A limit past this (a year) is no limit: setitimer and the pool's wait refuse huge values.
_NO_LIMIT_S = 365 * 86400.0


def _process(
    unit: Unit, job: UnitJob, timeout: float,
    layer_progress: Callable[[int, int], None] | None = None,
) -> Judged | None:
    """Read ``unit`` and judge it, keeping the findings of the files named (see
    :mod:`loracheck.scope`); any exception is this unit's LC001 (the run goes on)."""
    if unit.named is None or unit.config is None or unit.weights is None:
        return _process_whole(unit, job, timeout, layer_progress)
    config_alone = Unit(str(unit.config), "config", None, unit.config, explicit=True)
    if unit.weights not in unit.named and unit.config in unit.named:
        return _process_whole(config_alone, job, timeout, layer_progress)
    whole = _process_whole(unit, job, timeout, layer_progress)
    if whole is None or unit.weights not in unit.named:
        return whole
    alone = _process_whole(config_alone, job, timeout)
    from loracheck.engine import sort_key
    from loracheck.scope import scope_to_named

    kept = scope_to_named(unit.named, unit.config, unit.weights, whole.diagnostics,
                          alone.diagnostics if alone is not None else [])
    return Judged(whole.adapter, sorted(kept, key=sort_key))


def _process_whole(
    unit: Unit, job: UnitJob, timeout: float,
    layer_progress: Callable[[int, int], None] | None = None,
) -> Judged | None:
    deadline = time.monotonic() + timeout if timeout < _NO_LIMIT_S else None
    stage, stage_source = _unit_stage(unit, job)
    try:
        adapter = _load_one(unit, stage, layer_progress, deadline, stage_source,
                            job.pair_threads)
    except _Deadline:
        raise
    except DeadlineExceeded as err:  # a step that no timer could interrupt, refused up front
        adapter = _timed_out(unit, timeout, str(err))
    except Exception as err:  # one unit's failure is its own finding
        if os.environ.get("LORACHECK_DEBUG"):
            raise
        adapter = _crashed(unit, err, "reading")
    if adapter is None:
        return None
    try:
        diagnostics = _judge(adapter, job)
    except _Deadline:
        raise
    except Exception as err:  # a rule that fails on one unit: that unit's finding
        if os.environ.get("LORACHECK_DEBUG"):
            raise
        failed = _crashed(unit, err, "judging")
        failed.format = adapter.format
        failed.files = adapter.files
        return Judged(failed, _judge(failed, job))
    if not job.keep_details:
        # Only the findings will be rendered (check's text, SARIF, GitHub formats): keep the
        # unit's identity and drop its measurements, so memory stays flat in the file count.
        adapter = _summary_only(adapter)
    return Judged(adapter, diagnostics)


def _judge(adapter: Adapter, job: UnitJob) -> list[Diagnostic]:
    from loracheck.engine import check_adapter

    return check_adapter(adapter, job.settings, job.base)


def _process_with_deadline(
    unit: Unit,
    job: UnitJob,
    timeout: float,
    layer_progress: Callable[[int, int], None] | None = None,
) -> Judged | None:
    """:func:`_process` under ``timeout`` seconds for reading, measuring and judging together;
    a unit running past it becomes an LC001 diagnostic.

    Uses an interval timer, so it only applies in the main thread of a Unix process.
    """
    import signal
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    if not hasattr(signal, "setitimer") or not in_main or timeout >= _NO_LIMIT_S:
        return _process(unit, job, timeout, layer_progress)
    live = [True]

    def on_alarm(signum: int, frame: object) -> None:
        if live[0]:
            raise _Deadline

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout, _RETRY_S)
    try:
        try:
            return _process(unit, job, timeout, layer_progress)
        finally:
            # The timer stops before anything else: an alarm landing here, before these two
            # lines, raises _Deadline into the handler below; none can come after them.
            signal.setitimer(signal.ITIMER_REAL, 0)
            live[0] = False
    except _Deadline:
        late = _timed_out(unit, timeout)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return Judged(late, _judge(late, job))


def _timed_out(unit: Unit, seconds: float, why: str = "") -> Adapter:
    adapter = Adapter(path=unit.path, format="unknown",
                      files=[str(p) for p in (unit.config, unit.weights) if p], spec=None,
                      has_weights=False)
    message = f"analysis did not finish within {seconds:g} s (--timeout)"
    if why:
        message = f"analysis would not finish within {seconds:g} s (--timeout): {why}"
    adapter.faults.append(Fault("LC001", unit.path, message))
    return adapter


# The job of this worker process, set once by the pool's initializer.
_WORKER_JOB: list[UnitJob] = []


def _warm_up(weights: bool) -> None:
    """Import what reading and judging need before any unit's timer starts: an import cut
    short by the alarm would leave a half-initialised module (numpy) for every later unit.
    numpy and the statistics only when a unit has ``weights`` (configs need neither)."""
    import loracheck.engine
    import loracheck.load

    if weights:
        import numpy  # noqa: F401

        import loracheck.stats  # noqa: F401


def _start_worker(job: UnitJob, weights: bool) -> None:
    _warm_up(weights)
    _WORKER_JOB[:] = [job]


def _process_batch_in_worker(batch: Sequence[Unit], timeout: float) -> list[Judged | None]:
    return [_process_with_deadline(unit, _WORKER_JOB[0], timeout) for unit in batch]


# A run whose weights files hold less than this in all, with fewer than POOL_MIN_UNITS units,
# is read in this process when --jobs is not given: a pool costs more than it saves (start-up,
# each worker's imports, shipping results back). A loose config counts as 1/CONFIGS_PER_UNIT
# of a unit: it costs ~0.35 ms to read and judge against ~1.2 ms for a tiny adapter, and
# bench_many_files printed the pool slower than --jobs 1 at 1,000 configs, faster at 10,000
# (break-even near 2,000), and faster for tiny adapters from a few hundred.
POOL_MIN_BYTES = 64 * 2**20
POOL_MIN_UNITS = 400
CONFIGS_PER_UNIT = 5
# Units are sent to workers in batches of up to this many (one process round trip per batch),
# a weights file of BATCH_ALONE_BYTES or more alone.
BATCH_UNITS = 32
BATCH_ALONE_BYTES = 8 * 2**20


def _size(path: Path | None) -> int:
    try:
        return os.stat(path).st_size if path is not None else 0
    except (OSError, ValueError):
        return 0


def worth_a_pool(units: Sequence[Unit], jobs: int | None) -> int:
    """The number of worker processes for ``units``: 1 (this process) for a single unit or a
    single weights file among a few configs, and for a small run (few bytes, less work than
    POOL_MIN_UNITS units, configs counted at 1/CONFIGS_PER_UNIT) when ``jobs`` was not
    given."""
    heavy = [u for u in units if u.weights is not None]
    if len(units) <= 1 or (len(heavy) <= 1 and len(units) < POOL_MIN_UNITS):
        return 1
    if jobs is not None:
        return max(1, min(jobs, len(units)))
    work = len(heavy) + (len(units) - len(heavy)) / CONFIGS_PER_UNIT
    if work < POOL_MIN_UNITS and not _holds_at_least(heavy, POOL_MIN_BYTES):
        return 1
    return max(1, min(_cpus(), len(units)))


def _holds_at_least(units: Sequence[Unit], limit: int) -> bool:
    """Whether the weights files of ``units`` hold ``limit`` bytes or more (asked of the file
    system one file at a time, until the answer is known)."""
    total = 0
    for unit in units:
        total += _size(unit.weights)
        if total >= limit:
            return True
    return False


def _batches(units: Sequence[Unit], workers: int) -> list[list[Unit]]:
    """Consecutive units in batches: a few per worker at least, so that the work balances."""
    most = max(1, min(BATCH_UNITS, -(-len(units) // (4 * workers))))
    batches: list[list[Unit]] = []
    current: list[Unit] = []
    for unit in units:
        if _size(unit.weights) >= BATCH_ALONE_BYTES:
            if current:
                batches.append(current)
                current = []
            batches.append([unit])
            continue
        current.append(unit)
        if len(current) >= most:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches


def iter_units(
    units: Sequence[Unit], job: UnitJob, workers: int, timeout: float,
    progress: Progress | None = None,
) -> Iterator[tuple[Unit, Judged | None]]:
    """Read and judge units, in ``workers`` worker processes when more than one (see
    :func:`worth_a_pool`).

    Results come out in input order whatever the scheduling, one at a time (None for a file
    skipped because it holds no LoRA content and was not named), so that a caller
    that keeps only findings keeps memory flat in the number of files. A unit that exceeds
    ``timeout`` (reading, measuring and rules together) becomes an LC001 diagnostic instead of
    stalling the others.
    """
    timeout = min(timeout, _NO_LIMIT_S)
    if workers <= 1:
        if any(u.weights is not None for u in units):
            _warm_up(weights=True)
        for i, unit in enumerate(units):
            # One unit: the bar follows its layers; several: it follows the units.
            per_layer = None
            if progress is not None and len(units) == 1:
                per_layer = functools.partial(progress, unit.path)
            result = _process_with_deadline(unit, job, timeout, per_layer)
            if progress is not None and len(units) > 1:
                progress(unit.path, i + 1, len(units))
            yield unit, result
        return
    # Imported here: a run in this process alone (most runs) needs no multiprocessing.
    from concurrent.futures import Future, ProcessPoolExecutor, TimeoutError

    weights = any(u.weights is not None for u in units)
    executor = ProcessPoolExecutor(max_workers=workers, initializer=_start_worker,
                                   initargs=(dataclasses.replace(job, pair_threads=1), weights))
    batches = _batches(units, workers)
    # Each worker enforces the limit on its own unit (its interval timer starts when the unit
    # does); the wait here is only a backstop for a worker stuck where the timer cannot reach
    # (inside C code), long enough to cover the batch and one queued before it.
    futures: list[Future[list[Judged | None]] | None] = [
        executor.submit(_process_batch_in_worker, batch, timeout) for batch in batches
    ]
    stuck = False
    done = 0
    try:
        for b, batch in enumerate(batches):
            fut = futures[b]
            futures[b] = None  # a consumed result is not kept alive by its future
            assert fut is not None
            results: list[Judged | None]
            try:
                results = fut.result(timeout=(2 * timeout + _GRACE_S) * len(batch))
            except TimeoutError:
                stuck = True
                results = []
                for unit in batch:
                    late = _timed_out(unit, timeout)
                    results.append(Judged(late, _judge(late, job)))
            except Exception as err:  # a crashed worker must not take the other files down
                results = []
                for unit in batch:
                    failed = _crashed(unit, err, "reading")
                    results.append(Judged(failed, _judge(failed, job)))
            for unit, result in zip(batch, results, strict=True):
                done += 1
                if progress is not None:
                    progress(unit.path, done, len(units))
                yield unit, result
    except BaseException:  # interrupted (SIGINT, SIGTERM): no worker outlives the run
        stuck = True
        raise
    finally:
        _shutdown(executor, kill=stuck)


def _failure(path: str, err: BaseException, stage: str) -> Fault:
    """LC001 for an exception met while reading or judging one unit: its one-line text."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return Fault("LC001", path, f"internal error while {stage}: {type(err).__name__}: {text}")


def _crashed(unit: Unit, err: BaseException, stage: str) -> Adapter:
    adapter = _timed_out(unit, 0)
    adapter.faults[0] = _failure(unit.path, err, stage)
    return adapter


def _shutdown(executor: ProcessPoolExecutor, *, kill: bool) -> None:
    if kill:
        for proc in list(getattr(executor, "_processes", {}).values()):
            proc.kill()
    executor.shutdown(wait=not kill, cancel_futures=True)


def _base_model(path: str | None) -> BaseModelInfo | None:
    if path is None:
        return None
    from loracheck.basemodel import read_base_model

    return read_base_model(Path(path))


def run(
    paths: Sequence[str],
    options: RunOptions,
    progress: Progress | None = None,
) -> tuple[Report, Settings]:
    """Run `check`/`inspect` over ``paths``: every unit loaded, measured and judged."""
    from loracheck.settings import load_settings

    units = discover(paths, handed_over=options.handed_over)
    settings = load_settings(
        [Path(p) for p in paths],
        profile=options.profile,
        select=options.select,
        extend_select=options.extend_select,
        ignore=options.ignore,
        fail_on=options.fail_on,
    )
    job = UnitJob(stage=options.stage, settings=settings, base=_base_model(options.model),
                  keep_details=options.keep_details)
    workers = worth_a_pool(units, options.jobs)
    adapters: list[Adapter] = []
    diagnostics: list[Diagnostic] = []
    skipped: list[str] = []
    for unit, judged in iter_units(units, job, workers, options.timeout, progress):
        if judged is None:
            skipped.append(unit.path)
            continue
        adapters.append(judged.adapter)
        diagnostics.extend(judged.diagnostics)
    return Report(adapters=adapters, diagnostics=diagnostics, skipped=skipped), settings


def _summary_only(adapter: Adapter) -> Adapter:
    return Adapter(path=adapter.path, format=adapter.format, files=adapter.files, spec=None,
                   has_weights=adapter.has_weights, stage=adapter.stage,
                   stage_source=adapter.stage_source, stage_evidence=adapter.stage_evidence)


def failing(report: Report, fail_on: Severity) -> bool:
    return any(d.severity.rank >= fail_on.rank for d in report.diagnostics)
