"""Loading: one discovered unit becomes a typed :class:`Adapter`, measured in one streaming pass.

Never more than one (A, B) pair is in memory at a time and ΔW is never materialised. Problems
in the input never raise: they become :class:`Fault` records that the input rules report.
"""

from __future__ import annotations

import functools
import math
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loracheck.discover import Unit, discover, is_pickle
from loracheck.errors import ArtifactError, DeadlineExceeded
from loracheck.model import (
    Adapter,
    ExtraTensor,
    FactorStats,
    Fault,
    LayerRecord,
    LoraSpec,
    MethodKind,
    Stage,
    StageSource,
    TensorRef,
)
from loracheck.pair_batch import SMALL_PAIR_NUMEL, PairBatch
from loracheck.scaling import (
    PEFT_DEFAULT_ALPHA,
    effective_scale,
    resolve_rank_alpha,
    spec_for_module,
)

if TYPE_CHECKING:
    # numpy is imported where tensors are read, so that checking config files never pays for it.
    import numpy as np

    from loracheck.fused import PassItem, PassValues
    from loracheck.job_pool import Job, JobPool
    from loracheck.keys import KeyGrouping, PairKeys

Progress = Callable[[int, int], None]
# Receives each pair in canonical orientation (A (r, in), B (out, r)) while it is in memory.
FactorSink = Callable[[LayerRecord, "np.ndarray", "np.ndarray"], None]

# Bytes per element of each safetensors dtype (for sizes of tensors we do not read).
DTYPE_SIZES: Mapping[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
}


class TensorSource(Protocol):
    """What the loader needs from a weights reader (safetensors or a safe pickle reader).

    ``thread_safe``: two threads may read different tensors at once.
    """

    thread_safe: bool

    def refs(self) -> dict[str, TensorRef]: ...

    def read(self, key: str, *, float64: bool = False) -> np.ndarray: ...

    def raw(self, key: str, *, check_size: bool = True) -> np.ndarray | None:
        """The tensor's stored bytes as a flat native-order view (uint16 for F16/BF16), for the
        fused statistics pass; None when this source has no such view. With
        ``check_size=False`` the caller calls :meth:`check_size` before touching the view."""
        ...

    def check_size(self, keys: Sequence[str]) -> None:
        """Raise ArtifactError when the file no longer holds all of ``keys`` (truncated since
        it was opened): one check for many views taken with ``check_size=False``."""
        ...

    def release(self, key: str) -> None: ...

    def dropper(self, keys: Sequence[str]) -> Callable[[], None] | None:
        """A call that drops the pages of ``keys`` as :meth:`release` would, for a worker
        thread to make without holding up the caller's; None when there is nothing to
        drop."""
        ...

    def metadata(self) -> dict[str, str]: ...

    def close(self) -> None: ...


# Released tensors whose spans follow each other are dropped together once they reach this
# many bytes (one system call for many small tensors); RSS grows by at most this much.
_RELEASE_BATCH = 4 << 20


class _SafetensorsSource:
    thread_safe = True  # reads are slices of one read-only mapping

    def __init__(self, path: Path) -> None:
        from loracheck.safetensors_io import SafetensorsFile

        self._file = SafetensorsFile.open(path)
        # Bytes [start, end) of released tensors whose pages are not dropped yet.
        self._released: tuple[int, int] | None = None

    def refs(self) -> dict[str, TensorRef]:
        return {
            key: TensorRef(key, e.dtype, tuple(e.shape), e.nbytes)
            for key, e in self._file.entries.items()
        }

    def read(self, key: str, *, float64: bool = False) -> np.ndarray:
        return self._file.read(key, float64=float64)

    def raw(self, key: str, *, check_size: bool = True) -> np.ndarray | None:
        view = self._file.read_raw(key, check_size=check_size)
        return view if view.dtype.isnative else None

    def check_size(self, keys: Sequence[str]) -> None:
        self._file.check_size(keys)

    def release(self, key: str) -> None:
        """Drop the pages of ``key``: with the next released tensors when their spans touch
        (within the margins that would be dropped anyway), else at once."""
        from loracheck.safetensors_io import RELEASE_MARGIN

        entry = self._file.entries[key]
        start, end = entry.start, entry.end
        if end <= start:
            return
        span = self._released
        if span is not None:
            if start - span[1] <= 2 * RELEASE_MARGIN and span[0] - end <= 2 * RELEASE_MARGIN:
                start, end = min(start, span[0]), max(end, span[1])
            else:
                self._file.release_bytes(*span)
        if end - start >= _RELEASE_BATCH:
            self._released = None
            self._file.release_bytes(start, end)
        else:
            self._released = (start, end)

    def dropper(self, keys: Sequence[str]) -> Callable[[], None] | None:
        """The spans of ``keys``, those within the margins of each other merged (one system
        call for a chunk's pairs, which lie side by side in the file)."""
        from loracheck.safetensors_io import RELEASE_MARGIN

        entries = self._file.entries
        merged: list[tuple[int, int]] = []
        for start, end in sorted((entries[k].start, entries[k].end) for k in keys):
            if merged and start - merged[-1][1] <= 2 * RELEASE_MARGIN:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return self._file.dropper(merged)

    def metadata(self) -> dict[str, str]:
        return dict(self._file.metadata)

    def close(self) -> None:
        if self._released is not None:
            self._file.release_bytes(*self._released)
            self._released = None
        self._file.close()


class _PickleSource:
    """A torch pickle checkpoint read by loracheck's restricted unpickler (no code runs)."""

    thread_safe = False  # one zip file handle and a one-record cache

    def __init__(self, path: Path) -> None:
        from loracheck.pickle_io import TorchCheckpoint

        self._checkpoint = TorchCheckpoint.open(path)

    def refs(self) -> dict[str, TensorRef]:
        return {
            key: TensorRef(key, t.dtype, tuple(t.shape), t.nbytes)
            for key, t in self._checkpoint.entries.items()
        }

    def read(self, key: str, *, float64: bool = False) -> np.ndarray:
        return self._checkpoint.read(key)

    def raw(self, key: str, *, check_size: bool = True) -> np.ndarray | None:
        return None  # tensors are assembled from zip records: the decoded read is the view

    def check_size(self, keys: Sequence[str]) -> None:
        """Nothing is mapped: a truncated zip record fails when it is read."""

    def release(self, key: str) -> None:
        """Nothing to release: tensors are read from the zip on demand."""

    def dropper(self, keys: Sequence[str]) -> Callable[[], None] | None:
        return None

    def metadata(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self._checkpoint.close()


@dataclass(frozen=True)
class LoadOptions:
    """How to load: stage override ("auto" | "init" | "trained") and whether to measure."""

    stage: str = "auto"
    # Who set a stage other than "auto": the command line or loracheck's settings.
    stage_source: StageSource = StageSource.COMMAND_LINE
    measure: bool = True
    # time.monotonic() by which the unit must be done (--timeout), None for no limit.
    deadline: float | None = None
    # Threads that measure large pairs side by side: one per CPU when this process reads
    # alone, 1 in a worker of a pool (the pool already uses every CPU).
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)


def _fault(adapter: Adapter, err: ArtifactError) -> None:
    adapter.faults.append(Fault(err.code, err.path, err.detail, err.line, err.location))


def _read_spec(path: Path, adapter: Adapter) -> LoraSpec | None:
    from loracheck.configs import read_spec

    try:
        return read_spec(path)
    except ArtifactError as err:
        _fault(adapter, err)
        return None


def _open_source(path: Path, adapter: Adapter) -> TensorSource | None:
    from loracheck.safetensors_io import LFS_POINTER_DETAIL, is_lfs_pointer

    try:
        if is_pickle(path):
            if is_lfs_pointer(path):  # SafetensorsFile.open tells its own files apart
                adapter.faults.append(Fault("LC003", str(path), LFS_POINTER_DETAIL))
                return None
            adapter.faults.append(Fault(
                "LC215", str(path),
                "pickle checkpoint: loading it with torch.load can execute code; "
                "read here by a restricted unpickler that allows tensors only"))
            return _PickleSource(path)
        return _SafetensorsSource(path)
    except ArtifactError as err:
        _fault(adapter, err)
        return None
    except OSError as err:
        adapter.faults.append(Fault("LC001", str(path), f"cannot read: {err.strerror or err}"))
        return None


def _format_name(unit: Unit, grammar: str | None, spec: LoraSpec | None) -> str:
    if unit.kind == "mlx":
        return "mlx"
    if grammar is None:
        return spec.source_format if spec is not None else "unknown"
    return grammar


def _scalar(source: TensorSource, key: str) -> float | None:
    import numpy as np

    try:
        arr = np.asarray(source.read(key), dtype=np.float64)
    except ArtifactError:
        return None
    if arr.size != 1:
        return None
    return float(arr.reshape(()))


def _layer_alpha(
    pair: PairKeys,
    rank: int,
    spec: LoraSpec | None,
    metadata_spec: LoraSpec | None,
    source: TensorSource,
) -> tuple[float | None, str, float | None]:
    """Alpha and its source, and the mlx scale, in the order a consumer resolves them."""
    if pair.alpha_key is not None:
        value = _scalar(source, pair.alpha_key)
        if value is not None:
            # kohya: alpha 0 means "no alpha", treated as alpha = rank (scale 1).
            return (value if value != 0 else float(rank)), "tensor", None
    for candidate in (spec, metadata_spec):
        if candidate is None:
            continue
        _, alpha, origin = resolve_rank_alpha(pair.module, candidate)
        if origin == "mlx-scale":
            return None, "mlx-scale", candidate.scale
        if alpha is not None:
            return alpha, origin if candidate is spec else "metadata", None
    grammar = pair.grammar
    if grammar == "llmbook":
        # The LLMBook teaching layer applies no α/r: the effective scale is 1.
        return float(rank), "default:llmbook", None
    if grammar in ("kohya", "lycoris", "diffusers"):
        return float(rank), f"default:{grammar}", None
    if grammar == "peft" and spec is not None and spec.source_format == "peft":
        return PEFT_DEFAULT_ALPHA, "default:peft", None
    return None, "missing", None


def _use_rslora(spec: LoraSpec | None, module: str) -> bool:
    return bool(spec is not None and spec_for_module(module, spec).use_rslora)


def _layers(
    grouping: KeyGrouping,
    refs: Mapping[str, TensorRef],
    spec: LoraSpec | None,
    metadata_spec: LoraSpec | None,
    source: TensorSource,
    adapter: Adapter,
) -> Iterator[tuple[LayerRecord, PairKeys]]:
    from loracheck.keys import canonical_shapes, lycoris_shapes, tucker_in_features

    for pair in grouping.pairs:
        a_ref = refs.get(pair.a_key) if pair.a_key else None
        b_ref = refs.get(pair.b_key) if pair.b_key else None
        rank = in_f = out_f = None
        if a_ref is not None and b_ref is not None:
            empty = [r for r in (a_ref, b_ref) if 0 in r.shape or len(r.shape) < 2]
            if empty:
                adapter.empty_tensors.extend(empty)
            else:
                rank, in_f, out_f = canonical_shapes(pair, a_ref.shape, b_ref.shape)
                mid = refs.get(pair.mid_key) if pair.mid_key else None
                if mid is not None:
                    in_f = tucker_in_features(a_ref.shape, mid.shape)
        lycoris = lycoris_shapes(pair, refs) if pair.kind in ("loha", "lokr") else None
        if lycoris is not None:
            rank, in_f, out_f = lycoris
        alpha, alpha_source, mlx_scale = (None, "missing", None)
        if rank is not None:
            alpha, alpha_source, mlx_scale = _layer_alpha(pair, rank, spec, metadata_spec, source)
        scaling = effective_scale(rank, alpha, use_rslora=_use_rslora(spec, pair.module),
                                  scale=mlx_scale)
        if pair.kind == "lokr" and lycoris is not None and lycoris[0] is None:
            # LyCORIS LoKr with both Kronecker factors full: scale 1, whatever alpha says.
            scaling, alpha_source = 1.0, "default:lycoris"
        record = LayerRecord(
            name=pair.module,
            kind=pair.kind,
            a=a_ref,
            b=b_ref,
            rank=rank,
            in_features=in_f,
            out_features=out_f,
            alpha=alpha,
            alpha_source=alpha_source,
            scaling=scaling,
            alpha_tensor=refs.get(pair.alpha_key) if pair.alpha_key else None,
            magnitude=refs.get(pair.magnitude_key) if pair.magnitude_key else None,
            bias=refs.get(pair.bias_key) if pair.bias_key else None,
        )
        yield record, pair


# A pair this large (elements of A and B together) is measured on a worker thread when the
# unit has several threads: numpy and BLAS release the GIL in the decode, the Grams and the
# reductions, so pairs run on several cores while the caller reads the next.
_PARALLEL_PAIR_NUMEL = 1 << 16


@dataclass(frozen=True)
class _Measured:
    """One pair, measured: its canonical factors (for the sink; None when the statistics came
    from the stored bytes), stats and Grams; ``released`` when the worker that read its
    stored bytes has dropped their pages already (:func:`_pass_and_release`)."""

    a: np.ndarray | None
    b: np.ndarray | None
    a_stats: FactorStats
    b_stats: FactorStats
    g_a: np.ndarray
    g_b: np.ndarray
    released: bool = False


# A pair measured, to be completed: its record and what gives its _Measured (or raises
# ArtifactError).
_Ready = tuple[LayerRecord, Callable[[], _Measured]]

# Fused pairs go to the kernel in chunks of about this many stored bytes (or _CHUNK_PAIRS
# pairs), one side_pass_many call each: the GIL is taken and given back once a chunk, not
# twice a factor, and chunks small beside the whole keep the threads' last ones balanced.
_CHUNK_BYTES = 2 << 20
_CHUNK_PAIRS = 32
# Chunks queued for the pool hold at most this many stored bytes (their pages are resident
# until released): deep enough in time that the pool's threads still have work while the
# caller completes pairs, solves a batch of eigenproblems (32 pairs at r = 64: ~6 ms) or
# runs a chunk itself, and small enough that RSS stays flat in the layer count (an ad hoc
# in-process A/B, fp16 r=64 7B-shaped, best of 24: 4 MiB queued 219 ms, 16 MiB 182 ms).
_CHUNKS_IN_FLIGHT_BYTES = 16 << 20


@dataclass
class _Chunk:
    """Pairs whose factors the compiled pass reads from their stored bytes, measured by one
    :func:`fused.side_pass_many` call; ``items`` holds each pair's A and B in turn, viewed
    without the truncation check (one check for the chunk, when it is sent). Each pair keeps
    its closure for :meth:`_PairThreads.submit`, in case that check fails."""

    pairs: list[tuple[LayerRecord, PairKeys, Callable[[], _Measured]]] = field(
        default_factory=list)
    items: list[PassItem] = field(default_factory=list)
    nbytes: int = 0


class _PairThreads:
    """Large pairs measured on ``threads`` threads (threads - 1 in a pool, and the caller's
    whenever it would wait: :meth:`_help`), completed in file order on the caller's thread,
    which alone touches the records and the batch. Three threads on two cores would starve
    the caller, whose per-pair Python is the serial path at low rank.

    A pair that the compiled pass reads from its stored bytes joins a :class:`_Chunk`, and a
    full chunk is one job (the kernel releases the GIL for the whole chunk); any other pair is
    one job of its own (numpy releases the GIL in its decode and Grams). Each thread runs one
    job at a time, with no barrier between threads, while the caller prepares the next jobs
    and completes the finished ones; a batch of eigenproblems goes ahead of the queued
    chunks (:attr:`pool`). In flight: at most threads + 1 single pairs, and chunks of
    at most :data:`_CHUNKS_IN_FLIGHT_BYTES` stored bytes together besides the one being
    filled, so memory is bounded by that many pairs and bytes."""

    def __init__(self, threads: int, source: TensorSource) -> None:
        from collections import deque

        from loracheck.job_pool import JobPool

        self._threads = threads
        self._source = source
        # The caller's thread is the last worker (:meth:`_help`); the pool's threads start with
        # the first job, so a unit of small pairs never starts them.
        self._pool: JobPool = JobPool(max(threads - 1, 1), "loracheck-pair")
        # (a pair's record or a chunk, its job), in file order
        self._pending: deque[tuple[LayerRecord | _Chunk, Job[Any]]] = deque()
        self._singles = 0  # pending single pairs
        self._chunk_bytes = 0  # stored bytes of the pending chunks
        self._chunk = _Chunk()

    def _queue(self, what: LayerRecord | _Chunk, fn: Callable[[], Any]) -> None:
        self._pending.append((what, self._pool.submit(fn)))

    def submit(self, record: LayerRecord, fn: Callable[[], _Measured]) -> list[_Ready]:
        """Queue one pair's closure; returns the pairs that must be completed now to stay in
        bounds."""
        ready = self._send_chunk()  # the open chunk's pairs come first in the file
        self._queue(record, fn)
        self._singles += 1
        return ready + self._due()

    def submit_fused(self, record: LayerRecord, pair: PairKeys, a: PassItem, b: PassItem,
                     fn: Callable[[], _Measured]) -> list[_Ready]:
        """Queue one pair for the compiled pass (its two factors' items, ``fn`` measuring it
        otherwise); returns the pairs that must be completed now."""
        chunk = self._chunk
        chunk.pairs.append((record, pair, fn))
        chunk.items += (a, b)
        chunk.nbytes += a[0].nbytes + b[0].nbytes
        if chunk.nbytes < _CHUNK_BYTES and len(chunk.pairs) < _CHUNK_PAIRS:
            return []
        return self._send_chunk()

    def _send_chunk(self) -> list[_Ready]:
        chunk = self._chunk
        if not chunk.pairs:
            return []
        self._chunk = _Chunk()
        keys = [ref.key for record, _, _ in chunk.pairs
                for ref in (record.a, record.b) if ref is not None]
        try:
            self._source.check_size(keys)
        except ArtifactError:
            # The file shrank under us: each pair is measured on its own, with its own check,
            # and the ones whose bytes are gone become faults.
            for record, _, fn in chunk.pairs:
                self._queue(record, fn)
                self._singles += 1
            return self._due()
        self._queue(chunk, functools.partial(_pass_and_release, chunk.items,
                                             self._source.dropper(keys)))
        self._chunk_bytes += chunk.nbytes
        return self._due()

    def _due(self, *, everything: bool = False) -> list[_Ready]:
        ready: list[_Ready] = []
        while self._pending and (everything or self._singles > self._threads + 1
                                 or self._chunk_bytes > _CHUNKS_IN_FLIGHT_BYTES):
            self._help(self._pending[0][1])
            what, job = self._pending.popleft()
            if isinstance(what, _Chunk):
                self._chunk_bytes -= what.nbytes
                ready += self._chunk_ready(what, job.result())
            else:
                self._singles -= 1
                ready.append((what, job.result))
        return ready

    def _help(self, oldest: Job[Any]) -> None:
        """Rather than wait for the oldest job, run jobs here until it is done: the oldest
        itself if no pool thread has started it, else the newest one none has (the caller's
        thread is the pool's last worker whenever it would idle). A job's exception is kept
        for when its result is taken, as a pool thread's would be, but for the unit's alarm
        (raised on this thread): that ends the unit now."""
        while not oldest.done():
            if self._pool.take(oldest):
                oldest.run(raise_now=DeadlineExceeded)
                return
            job = self._pool.take_newest()
            if job is None:
                return  # every job has a thread: wait for the oldest
            job.run(raise_now=DeadlineExceeded)

    def _chunk_ready(self, chunk: _Chunk, values: list[PassValues]) -> list[_Ready]:
        source = self._source

        def measured(i: int, pair: PairKeys, record: LayerRecord) -> _Measured:
            assert record.a is not None and record.b is not None
            a, a_stats, g_a = _from_values(pair, source, record.a, "A", values[2 * i],
                                           chunk.items[2 * i][3])
            b, b_stats, g_b = _from_values(pair, source, record.b, "B", values[2 * i + 1],
                                           chunk.items[2 * i + 1][3])
            # A factor decoded again (NaN/Inf) faulted its pages back in: release them.
            return _Measured(a, b, a_stats, b_stats, g_a, g_b,
                             released=a is None and b is None)

        return [(record, functools.partial(measured, i, pair, record))
                for i, (record, pair, _) in enumerate(chunk.pairs)]

    @property
    def pool(self) -> JobPool:
        """The pool's threads, for the batches of eigenproblems (:class:`PairBatch`), which go
        ahead of the queued chunks so the caller's thread reads on meanwhile."""
        return self._pool

    def drain(self) -> list[_Ready]:
        """Every pair queued, to be completed now."""
        return self._send_chunk() + self._due(everything=True)

    def close(self) -> None:
        """Stop: queued pairs are dropped, pairs being measured finish in the background
        (a deadline or an error ends the unit without waiting for them)."""
        self._pending.clear()
        self._chunk = _Chunk()
        self._pool.close()


def _pass_and_release(items: list[PassItem], release: Callable[[], None] | None
                      ) -> list[PassValues]:
    """A chunk's job on a worker: the compiled pass over its factors, then its pages dropped
    (``release``, from :meth:`TensorSource.dropper`) without holding up the caller's thread."""
    from loracheck import fused

    values = fused.side_pass_many(items)
    if release is not None:
        release()
    return values


def _measure(
    record: LayerRecord,
    pair: PairKeys,
    source: TensorSource,
    sink: FactorSink | None,
    batch: PairBatch,
    threads: _PairThreads | None,
) -> list[_Ready]:
    """Fill the record's statistics from one (A, B) pair, then let the arrays go. What
    ``batch`` defers (a small pair's statistics, ΔW's from the Grams) is filled when it is
    flushed; a large pair goes to ``threads`` when given, and the pairs returned are the ones
    to complete now (:func:`_complete`)."""
    from loracheck import keys, stats  # modules, not names: this runs for every pair

    if record.magnitude is not None and 0 not in record.magnitude.shape:
        record.magnitude_stats = stats.factor_stats(source.read(record.magnitude.key))
    if pair.kind in ("loha", "lokr"):
        _measure_lycoris(record, pair, source)
        return []
    if record.rank is None or record.a is None or record.b is None:
        return []
    small = min(record.in_features or 0, record.out_features or 0)
    if pair.mid_key is None and pair.a_rows is None and 0 < small < record.rank:
        _measure_wide(record, pair, source, sink)
        return []
    numel = math.prod(record.a.shape) + math.prod(record.b.shape)
    a_ref, b_ref = record.a, record.b
    # The fused pass needs no float64 copy; the sink (verify) wants the decoded factors.
    fused = sink is None
    if fused and numel <= SMALL_PAIR_NUMEL:
        a_side = _fused_side(pair, source, a_ref, "A")
        b_side = _fused_side(pair, source, b_ref, "B") if a_side is not None else None
        if a_side is not None and b_side is not None:
            # _finish without a sink, and with the pages kept (a small pair's cost more to
            # drop than they hold)
            (record.a_stats, g_a), (record.b_stats, g_b) = a_side, b_side
            if g_a.shape == g_b.shape:
                batch.add_grams(record, g_a, g_b,
                                record.scaling if record.scaling is not None else 1.0)
            return []
    if pair.mid_key is None and pair.a_rows is None and pair.b_rows is None and (
            numel <= SMALL_PAIR_NUMEL):
        a = keys.canonical_factor(pair, source.read(record.a.key, float64=True))
        b = keys.canonical_factor(pair, source.read(record.b.key, float64=True))
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"factors must be 2-D, not A {a.shape} and B {b.shape}")
        scaling = record.scaling if record.scaling is not None else 1.0
        batch.add_factors(record, a, b, scaling)
        return []
    def measure() -> _Measured:
        a, a_stats, g_a = _side(pair, source, a_ref, "A", fused=fused)
        b, b_stats, g_b = _side(pair, source, b_ref, "B", fused=fused)
        return _Measured(a, b, a_stats, b_stats, g_a, g_b)

    if threads is not None and source.thread_safe and numel >= _PARALLEL_PAIR_NUMEL:
        if fused:
            a_item = _fused_item(pair, source, a_ref, "A", check_size=False)
            b_item = (_fused_item(pair, source, b_ref, "B", check_size=False)
                      if a_item is not None else None)
            if a_item is not None and b_item is not None:
                return threads.submit_fused(record, pair, a_item, b_item, measure)
        return threads.submit(record, measure)
    _finish(record, measure(), source, sink, batch)
    return []


def _fused_item(pair: PairKeys, source: TensorSource, ref: TensorRef, which: str, *,
                check_size: bool = True) -> PassItem | None:
    """What the compiled fused pass (:mod:`loracheck.fused`) takes for one factor: its stored
    bytes as a 2-D view, dtype, mode and a Gram to fill; None where the pass does not apply
    (no compiled kernel, another dtype, row slices or a Tucker core, a foreign byte order):
    then :func:`_side` decodes the factor. ``check_size``: as :meth:`TensorSource.raw`'s."""
    import numpy as np

    # Two module objects, not five names: this runs for every factor of every tiny adapter.
    from loracheck import fused

    if not fused.COMPILED or ref.dtype not in fused.FUSED_DTYPES or pair.mid_key is not None or (
            (pair.a_rows if which == "A" else pair.b_rows) is not None) or len(ref.shape) < 2:
        return None
    flat = source.raw(ref.key, check_size=check_size)
    if flat is None:
        return None
    stored = flat.reshape(ref.shape[0], -1)
    if stored.dtype.kind == "f" and stored.dtype.itemsize == 2:
        stored = stored.view(np.uint16)  # the pass reads fp16 as its bits, as bf16
    # Canonical A is (r, in) and B (out, r); a transposed (mlx) layout swaps the Gram's side.
    mode: fused.Mode = "rows" if (which == "A") != pair.transposed else "cols"
    r = stored.shape[0] if mode == "rows" else stored.shape[1]
    # A's kurtosis needs the central sums; B's σ comes from Σx² unless it cancels.
    return stored, ref.dtype, mode, np.empty((r, r), dtype=np.float64), which == "A"


def _fused_side(pair: PairKeys, source: TensorSource, ref: TensorRef, which: str
                ) -> tuple[FactorStats, np.ndarray] | None:
    """One factor's statistics and Gram by the compiled fused pass over its stored bytes,
    without a float64 copy; None where it does not apply (:func:`_fused_item`) or cannot
    measure the factor (NaN/Inf, a cancelling σ²: :func:`stats.from_pass_values`): then
    :func:`_side` decodes the factor."""
    from loracheck import fused, stats

    item = _fused_item(pair, source, ref, which)
    if item is None:
        return None
    measured = stats.from_pass_values(fused.side_pass_values(*item), kurtosis=which == "A")
    return None if measured is None else (measured, item[3])


def _from_values(pair: PairKeys, source: TensorSource, ref: TensorRef, which: str,
                 values: PassValues, gram: np.ndarray
                 ) -> tuple[np.ndarray | None, FactorStats, np.ndarray]:
    """:func:`_side`'s result from a fused pass already run (``values``, ``gram``): a factor
    the pass cannot measure (NaN/Inf, a cancelling σ²) is decoded and measured again."""
    from loracheck import stats

    measured = stats.from_pass_values(values, kurtosis=which == "A")
    if measured is None:
        return _side(pair, source, ref, which, fused=False)
    return None, measured, gram


def _side(pair: PairKeys, source: TensorSource, ref: TensorRef, which: str, *, fused: bool
          ) -> tuple[np.ndarray | None, FactorStats, np.ndarray]:
    """One factor of a pair: its canonical float64 form (None when ``fused`` and the fused pass
    took its stored bytes), its statistics and its Gram."""
    import numpy as np

    from loracheck.keys import canonical_factor
    from loracheck.stats import side_stats

    if fused:
        done = _fused_side(pair, source, ref, which)
        if done is not None:
            return None, *done
    # Read straight into float64, the precision the statistics are computed in.
    x = canonical_factor(pair, source.read(ref.key, float64=True))
    rows = pair.a_rows if which == "A" else pair.b_rows
    if rows is not None:
        x = x[rows[0] : rows[1]]
    if which == "A" and pair.mid_key is not None:
        # Tucker: fold the core into A, C[p, (i, h, w)] = Σ_q mid[p, q, h, w]·down[q, i]
        # (r × in·kh·kw, the size of a plain conv LoRA's A); ΔW = s·up·C exactly.
        mid = source.read(pair.mid_key, float64=True)
        x = np.einsum("pqhw,qi->pihw", mid, x.reshape(x.shape[0], -1)).reshape(
            mid.shape[0], -1)
        source.release(pair.mid_key)
    stats, gram = side_stats(x, which, kurtosis=which == "A")
    return x, stats, gram


def _finish(record: LayerRecord, measured: _Measured, source: TensorSource,
            sink: FactorSink | None, batch: PairBatch, *, release: bool = True) -> None:
    """A pair's results into its record (on the caller's thread), then its pages go (a small
    pair's are left: dropping them costs more than they hold)."""
    record.a_stats, record.b_stats = measured.a_stats, measured.b_stats
    if measured.g_a.shape == measured.g_b.shape:
        scaling = record.scaling if record.scaling is not None else 1.0
        batch.add_grams(record, measured.g_a, measured.g_b, scaling)
    # else the inner dimensions disagree (LC202): no product to measure, the factors still are.
    if sink is not None and measured.a is not None and measured.b is not None:
        sink(record, measured.a, measured.b)
    if release and not measured.released:
        assert record.a is not None and record.b is not None
        source.release(record.a.key)
        source.release(record.b.key)


def _litgpt_groups(spec: LoraSpec | None, folder: Path) -> list[tuple[str, int]] | None:
    """The enabled groups of litgpt's fused qkv and their rows: q = n_head·head_size,
    k = v = n_query_groups·head_size (litgpt 0.5 litgpt/lora.py LoRAQKVLinear: one r-row block
    of A per enabled group, B holding the enabled groups' rows), from the run's flags and the
    ``model_config.yaml`` litgpt saves beside the weights. None when either is unknown."""
    import yaml

    if spec is None or spec.source_format != "litgpt" or not isinstance(spec.target_modules,
                                                                          list):
        return None
    config_path = folder / "model_config.yaml"
    try:
        if config_path.stat().st_size > 1 << 20:
            return None
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    n_head, n_embd = config.get("n_head"), config.get("n_embd")
    groups = config.get("n_query_groups") or n_head
    head = config.get("head_size") or (n_embd // n_head if isinstance(n_embd, int) and
                                       isinstance(n_head, int) and n_head else None)
    if not (isinstance(n_head, int) and isinstance(groups, int) and isinstance(head, int)
            and min(n_head, groups, head) > 0):
        return None
    sizes = {"query": n_head * head, "key": groups * head, "value": groups * head}
    return [(name, sizes[name]) for name in ("query", "key", "value")
            if name in spec.target_modules]


def _split_fused_qkv(pairs: list[PairKeys], refs: Mapping[str, TensorRef],
                     spec: LoraSpec | None, unit: Unit) -> list[PairKeys]:
    """litgpt's fused qkv pair as one rank-r pair per enabled group (``<module>.query``, …):
    group g's update is B[rows_g] · A[g·r:(g+1)·r], the others' rows are zero, so the groups'
    statistics are those of the whole ΔW, split. Pairs of other shapes pass unchanged."""
    from dataclasses import replace

    fused = [p for p in pairs if p.grammar == "litgpt" and p.a_key and p.b_key
             and len(refs[p.a_key].shape) == 2 and len(refs[p.b_key].shape) == 2
             and refs[p.a_key].shape[0] != refs[p.b_key].shape[1]]
    if not fused or unit.weights is None:
        return pairs
    groups = _litgpt_groups(spec, unit.weights.parent)
    out: list[PairKeys] = []
    for pair in pairs:
        if pair not in fused or groups is None:
            out.append(pair)
            continue
        assert pair.a_key is not None and pair.b_key is not None
        a_rows, (b_rows, r) = refs[pair.a_key].shape[0], refs[pair.b_key].shape
        if a_rows != r * len(groups) or b_rows != sum(size for _, size in groups):
            out.append(pair)
            continue
        offset = 0
        for index, (name, size) in enumerate(groups):
            out.append(replace(pair, module=f"{pair.module}.{name}",
                               a_rows=(index * r, (index + 1) * r),
                               b_rows=(offset, offset + size)))
            offset += size
    return out


def _lycoris_plain_layers(variant: str, refs: Mapping[str, TensorRef],
                          source: TensorSource) -> Iterator[LayerRecord]:
    """The statistics that mean something for LyCORIS algorithms without factors: a full
    ``diff`` is ΔW itself (its norm, and its singular values when it is small enough to
    decompose); an (IA)³ module is one scaling vector (its statistics as a factor's)."""
    from loracheck.stats import MATERIALISE_MAX, factor_stats, full_delta

    leaf = "diff" if variant == "lycoris-full" else "weight"
    for key, ref in sorted(refs.items()):
        module, _, last = key.rpartition(".")
        if last != leaf or (variant == "ia3" and f"{module}.on_input" not in refs):
            continue
        out_f = ref.shape[0] if ref.shape else 0
        in_f = math.prod(ref.shape[1:]) if len(ref.shape) > 1 else 0
        record = LayerRecord(name=module, kind=variant, a=ref, b=None, rank=None,
                             in_features=in_f or None, out_features=out_f or None, alpha=None,
                             alpha_source="missing", scaling=None)
        values = source.read(key, float64=True)
        if variant == "ia3":
            record.a_stats = factor_stats(values)
        else:
            record.delta = full_delta(values.reshape(out_f, -1), decompose=values.size <= (
                MATERIALISE_MAX))
            record.delta_from = "materialised" if values.size <= MATERIALISE_MAX else (
                "not measured: singular values of a large full diff")
        source.release(key)
        yield record


def _lycoris_stage(layers: list[LayerRecord]) -> Stage:
    """LoHa and LoKr start with ΔW = 0 (LyCORIS zeroes hada_w2_a / lokr_w2): INIT while every
    measured ΔW is exactly zero, TRAINED once one is not, UNKNOWN when none was measured."""
    measured = [layer.delta for layer in layers if layer.delta is not None]
    if not measured:
        return Stage.UNKNOWN
    return Stage.INIT if all(d.frobenius == 0.0 for d in measured) else Stage.TRAINED


def _measure_wide(record: LayerRecord, pair: PairKeys, source: TensorSource,
                  sink: FactorSink | None) -> None:
    """A rank above min(in, out) (A (8192, 1), B (1, 8192)): the r×r Grams would cost r² memory
    and r³ time for a ΔW of at most min(in, out)²; ΔW = s·B·A is built instead, from the
    smaller side, when it has at most MATERIALISE_MAX elements, else left unmeasured."""
    from loracheck.keys import canonical_factor
    from loracheck.stats import MATERIALISE_MAX, factor_stats, full_delta

    assert record.a is not None and record.b is not None and record.rank is not None
    a = canonical_factor(pair, source.read(record.a.key, float64=True))
    b = canonical_factor(pair, source.read(record.b.key, float64=True))
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"factors must be 2-D, not A {a.shape} and B {b.shape}")
    record.a_stats = factor_stats(a, kurtosis=True, row_norms=True)
    record.b_stats = factor_stats(b.T, row_norms=True)
    out_f, in_f = b.shape[0], a.shape[1] if a.ndim == 2 else 0
    if b.shape[1] == a.shape[0] and out_f * in_f <= MATERIALISE_MAX:
        scaling = record.scaling if record.scaling is not None else 1.0
        record.delta = full_delta((b @ a) * scaling, decompose=True)
        record.delta_from = f"materialised: r {record.rank} exceeds min(in, out)"
    else:
        record.delta_from = f"not measured: r {record.rank} exceeds min(in, out) of a large module"
    if sink is not None:
        sink(record, a, b)
    source.release(record.a.key)
    source.release(record.b.key)


def _measure_lycoris(record: LayerRecord, pair: PairKeys, source: TensorSource) -> None:
    """ΔW statistics of a LyCORIS LoHa or LoKr module from its factors (never ΔW itself, but
    for a small LoHa whose r₁·r₂ reaches its smaller side)."""
    from loracheck.stats import hadamard_delta, kron_delta

    keys = {k.rsplit(".", 1)[-1]: k for k in pair.extra_keys}
    if {"hada_t1", "hada_t2", "lokr_t2"} & set(keys):
        record.delta_from = "not measured: Tucker cores of LoHa/LoKr"
        return
    scaling = record.scaling if record.scaling is not None else 1.0
    read = {name: source.read(key, float64=True) for name, key in keys.items()}
    if pair.kind == "loha":
        if not {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= set(read):
            record.delta_from = "not measured: a LoHa factor is missing"
            return
        delta = hadamard_delta(read["hada_w1_a"], read["hada_w1_b"], read["hada_w2_a"],
                               read["hada_w2_b"], scaling)
        record.delta = delta
        record.delta_from = "hadamard" if delta is not None else (
            "not measured: a large LoHa whose r₁·r₂ reaches its size")
    else:
        w1 = read.get("lokr_w1")
        if w1 is None and "lokr_w1_a" in read and "lokr_w1_b" in read:
            w1 = read["lokr_w1_a"] @ read["lokr_w1_b"]
        w2 = read.get("lokr_w2")
        if w2 is None and "lokr_w2_a" in read and "lokr_w2_b" in read:
            w2 = read["lokr_w2_a"] @ read["lokr_w2_b"].reshape(read["lokr_w2_b"].shape[0], -1)
        if w1 is None or w2 is None:
            record.delta_from = "not measured: a LoKr factor is missing"
            return
        record.delta = kron_delta(w1, w2, scaling)
        record.delta_from = "kronecker"
    for key in keys.values():
        source.release(key)


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file that can be read without blocking, or None.

    A FIFO would block ``open`` until a writer comes; a device or socket is no artifact.
    A missing or unreadable path returns None: opening it reports the OS error.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a regular file"
    return "not a regular file (device or socket)"


def load_unit(
    unit: Unit,
    options: LoadOptions | None = None,
    *,
    progress: Progress | None = None,
    sink: FactorSink | None = None,
) -> Adapter | None:
    """Load and measure one unit. Returns None when a non-explicit file holds no LoRA content
    (files met while walking, or handed over by pre-commit, are skipped quietly)."""
    opts = options or LoadOptions()
    files = [str(p) for p in (unit.config, unit.weights) if p is not None]
    adapter = Adapter(path=unit.path, format="unknown", files=files, spec=None)
    for path in (unit.config, unit.weights):
        why = _not_a_file(path) if path is not None else None
        if why is not None:
            if not unit.explicit:
                return None
            adapter.faults.append(Fault("LC001", str(path), f"cannot read: {why}"))
            adapter.has_weights = False
            return adapter

    if unit.config is not None:
        from loracheck.configs import read_spec_if_lora
        from loracheck.discover import PEFT_CONFIG

        # An adapter's own config (beside its weights, or named adapter_config.json) is read
        # whatever it holds, so a corrupt one is reported; a loose training config is read
        # only when it carries LoRA settings, and skipped quietly otherwise.
        if unit.weights is not None or unit.config.name == PEFT_CONFIG:
            adapter.spec = _read_spec(unit.config, adapter)
        else:
            try:
                adapter.spec = read_spec_if_lora(unit.config)
            except ArtifactError as err:
                _fault(adapter, err)
            if adapter.spec is None and not adapter.faults:
                if not unit.explicit:
                    return None
                adapter.faults.append(
                    Fault("LC002", unit.path, "no LoRA settings found in this file"))
                adapter.has_weights = False
                return adapter

    if unit.weights is None:
        adapter.has_weights = False
        if unit.kind == "unknown":
            if not unit.explicit:
                return None
            adapter.faults.append(Fault("LC002", unit.path, "not a LoRA weights or config file"))
        adapter.format = adapter.spec.source_format if adapter.spec is not None else "unknown"
        return adapter

    source = _open_source(unit.weights, adapter)
    if source is None:
        adapter.format = "unknown"
        return adapter
    try:
        _load_weights(unit, adapter, source, opts, progress, sink)
    except ArtifactError as err:
        _fault(adapter, err)
    finally:
        source.close()
    if (
        not adapter.layers
        # a pickle's LC215 says how it was read, not that it holds LoRA content
        and all(f.code in ("LC002", "LC215") for f in adapter.faults)
        and not adapter.empty_tensors
        and not unit.explicit
        and unit.kind == "weights"
        and adapter.spec is None
        and adapter.method is not MethodKind.OTHER  # another method's file is reported (LC110)
    ):
        return None
    return adapter


# Floating-point operations per second assumed when deciding whether one layer's statistics
# can finish before the deadline, set above what stats.pair_stats reached on a 2-core machine
# (1.0-1.2e11 under this cost model), so a layer is refused only when it would not fit even
# on a faster one; a machine slower than this overruns by at most the ratio.
ASSUMED_FLOPS = 2e11


def _stats_flops(record: LayerRecord) -> float:
    """The cost of one pair's statistics: two r×r Grams over in + out, two r×r eigh and their
    products (~30·r³). A rank above min(in, out) is measured from the small side instead."""
    r = record.rank or 0
    n_in, n_out = record.in_features or 0, record.out_features or 0
    r = min(r, n_in, n_out) if n_in and n_out else r
    return 2.0 * r * r * (n_in + n_out) + 30.0 * r**3


def _check_time_left(record: LayerRecord, deadline: float) -> None:
    need = _stats_flops(record) / ASSUMED_FLOPS
    left = deadline - time.monotonic()
    # Once the deadline has passed, the interval timer ends the unit; this check is for the
    # time that is left.
    if 0 < left < need:
        raise DeadlineExceeded(
            f"{record.name} (r {record.rank}, {record.out_features}×{record.in_features}) "
            f"alone needs about {need:.3g} s of linear algebra, {left:.3g} s are left")


def _load_weights(
    unit: Unit,
    adapter: Adapter,
    source: TensorSource,
    opts: LoadOptions,
    progress: Progress | None,
    sink: FactorSink | None,
) -> None:
    from loracheck.configs import spec_from_metadata
    from loracheck.initscheme import infer_init, infer_stage
    from loracheck.keys import group_keys

    refs = source.refs()
    adapter.metadata = source.metadata()
    adapter.metadata_spec = spec_from_metadata(adapter.metadata, str(unit.weights))
    adapter.n_tensors = len(refs)
    adapter.n_bytes = sum(r.nbytes for r in refs.values())
    adapter.dtypes = dict(Counter(r.dtype for r in refs.values()))
    grouping = group_keys({k: r.shape for k, r in refs.items()})
    grouping.pairs = _split_fused_qkv(grouping.pairs, refs, adapter.spec, unit)
    adapter.variant = grouping.variant
    adapter.format = _format_name(unit, grouping.grammar, adapter.spec)
    adapter.orphans = [refs[k] for k in grouping.orphans if k in refs]
    adapter.extra_tensors = [
        ExtraTensor(key, refs[key].dtype, refs[key].shape, refs[key].nbytes, role)
        for key, role in grouping.extras
        if key in refs
    ]
    extra_keys = {e.key for e in adapter.extra_tensors}
    adapter.empty_tensors.extend(
        r for r in refs.values() if r.key not in extra_keys and 0 in r.shape
    )
    if not refs:
        return
    if not grouping.pairs and not grouping.orphans:
        if adapter.method is not MethodKind.OTHER:
            # Another method's weights (IA3, OFT, ...) hold no LoRA factors by design.
            adapter.faults.append(Fault("LC002", str(unit.weights),
                                        f"no LoRA factors among {len(refs)} tensors"))
        elif adapter.variant in ("lycoris-full", "ia3") and opts.measure:
            adapter.layers = list(_lycoris_plain_layers(adapter.variant, refs, source))
        return
    for key in grouping.unreadable[:1]:
        adapter.faults.append(Fault(
            "LC216", str(unit.weights),
            f"{len(grouping.unreadable)} factor keys mix kohya's flattened names with diffusers' "
            f"suffixes (first {key}): neither kohya, diffusers nor PEFT loads them",
            location=key))
    for pair in grouping.pairs:
        alpha = refs.get(pair.alpha_key) if pair.alpha_key else None
        if alpha is not None and math.prod(alpha.shape) != 1:
            adapter.faults.append(Fault(
                "LC216", str(unit.weights),
                f"{alpha.key} has shape {tuple(alpha.shape)}: a kohya .alpha is one number "
                "(consumers call .item() on it); the per-module scale is lost", location=alpha.key))
    # Without a config, the metadata embedded in the weights (kohya ss_*) sets rank and alpha.
    spec_for_scale = adapter.spec if adapter.spec is not None else adapter.metadata_spec
    total = len(grouping.pairs)
    threads = (_PairThreads(opts.threads, source) if opts.measure and opts.threads > 1
               else None)
    batch = PairBatch(sink, threads.pool if threads is not None else None)

    def complete(ready: list[_Ready]) -> None:
        for record, measured in ready:
            try:
                _finish(record, measured(), source, sink, batch)
            except ArtifactError as err:
                _fault(adapter, err)

    try:
        for index, (record, pair) in enumerate(
            _layers(grouping, refs, spec_for_scale, adapter.metadata_spec, source, adapter)
        ):
            if opts.measure:
                if opts.deadline is not None:
                    _check_time_left(record, opts.deadline)
                try:
                    complete(_measure(record, pair, source, sink, batch, threads))
                except ArtifactError as err:
                    _fault(adapter, err)
            adapter.layers.append(record)
            if progress is not None:
                progress(index + 1, total)
        if threads is not None:
            complete(threads.drain())
        batch.flush()  # before the pool closes: groups may be solving on its threads
    finally:
        if threads is not None:
            threads.close()
    # A zero-size factor is met twice (above, and as a pair in _layers): keep each key once.
    adapter.empty_tensors = list({ref.key: ref for ref in adapter.empty_tensors}.values())
    if opts.measure:
        adapter.init = infer_init(adapter.layers, adapter.spec or adapter.metadata_spec)
        adapter.stage = infer_stage(adapter.layers, adapter.init.scheme)
        if adapter.variant in ("loha", "lokr"):
            adapter.stage = _lycoris_stage(adapter.layers)
        _stage_from_evidence(adapter, unit)
    if opts.stage in ("init", "trained"):
        adapter.stage = Stage(opts.stage)
        adapter.stage_source = opts.stage_source
        adapter.stage_evidence = None


def _stage_from_evidence(adapter: Adapter, unit: Unit) -> None:
    """Weights still at a step-0 signature are a fresh adapter, unless the trainer's files say
    steps were taken: then the run never moved them, and the stage is ``trained``."""
    from loracheck.training_evidence import find_training_evidence

    scheme = adapter.init.scheme.value if adapter.init is not None else "unknown"
    if adapter.stage is Stage.TRAINED:
        adapter.stage_evidence = f"the weights moved from the {scheme} init"
        return
    evidence = find_training_evidence(unit.weights, adapter.metadata)
    if evidence is not None:
        adapter.stage = Stage.TRAINED
        adapter.stage_source = StageSource.TRAINING_EVIDENCE
        adapter.stage_evidence = evidence.describe()
    elif adapter.stage is Stage.INIT:
        adapter.stage_evidence = f"the weights are exactly the {scheme} init at step 0"


def load_paths(
    paths: list[str], options: LoadOptions | None = None
) -> list[Adapter]:
    """Discover and load every unit under ``paths`` (UsageError for a missing path)."""
    adapters = []
    for unit in discover(paths):
        adapter = load_unit(unit, options)
        if adapter is not None:
            adapters.append(adapter)
    return adapters


def load_factors(path: str | Path) -> tuple[Adapter, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Load one adapter and keep its factors: module -> (A (r, in), B (out, r)) float32 copies.

    For ``verify --adapter``: the caller puts them onto a live model. Raises ArtifactError when
    the path is not one readable adapter.
    """
    units = [u for u in discover([path]) if u.weights is not None]
    if len(units) != 1:
        raise ArtifactError(str(path), f"expected one adapter, found {len(units)}", code="LC002")
    import numpy as np

    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def keep(record: LayerRecord, a: np.ndarray, b: np.ndarray) -> None:
        factors[record.name] = (np.array(a, dtype=np.float32), np.array(b, dtype=np.float32))

    adapter = load_unit(units[0], sink=keep)
    if adapter is None or (adapter.faults and not factors):
        detail = adapter.faults[0].detail if adapter and adapter.faults else "no LoRA content"
        raise ArtifactError(str(path), detail, code="LC001")
    return adapter, factors
