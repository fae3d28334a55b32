"""Pairs measured in batches: the loader hands each LoRA pair here, and the statistics of many
pairs are computed by one numpy call per statistic instead of one per pair.

Two kinds of work are deferred until a batch is full (or the adapter ends):
- a small pair (A and B together at most :data:`SMALL_PAIR_NUMEL` elements) keeps its float64
  factors; pairs of one shape are measured together (:func:`stats.batch_side_stats`);
- a larger pair has its factor statistics measured at once, as it is streamed, and keeps only
  its two r×r Grams; the Grams of one rank are solved together
  (:func:`stats.batch_delta_from_grams`: one batched Cholesky and eigvalsh).

Memory held is bounded by :data:`MAX_PAIRS` pairs and :data:`MAX_BYTES` per group, so it stays
flat in the layer count. Records are complete once :meth:`PairBatch.flush` has run; the
loader flushes before anything reads them (init and stage inference, the rules).

A group of Grams of rank :data:`POOL_MIN_RANK` or more may be solved on a worker thread
(``pool``, in two halves ahead of its queued jobs: LAPACK releases the GIL, so the caller's
thread reads on meanwhile); the results are put into the records on the caller's thread, when
done, at the next pair or at :meth:`PairBatch.flush`, which runs any half no worker has
started itself.
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from loracheck.errors import DeadlineExceeded

if TYPE_CHECKING:
    import numpy as np

    from loracheck.job_pool import Job, JobPool
    from loracheck.model import DeltaStats, LayerRecord

    Sink = Callable[[LayerRecord, np.ndarray, np.ndarray], None]

SMALL_PAIR_NUMEL = 1 << 14  # 128 KiB of float64: Python per call costs more than the numbers
MAX_PAIRS = 32
MAX_BYTES = 8 << 20
# Groups of a lower rank are solved on the caller's thread even with a pool: their solve is
# mostly Python (the GIL, which a worker would contend for), ~0.5 ms for 32 pairs at r = 16.
POOL_MIN_RANK = 32


class PairBatch:
    """Deferred statistics of one adapter's pairs (see the module docstring). ``sink``
    receives each small pair's canonical factors when they are measured."""

    def __init__(self, sink: Sink | None, pool: JobPool | None = None) -> None:
        self._sink = sink
        self._pool = pool
        # Groups being solved on a worker, oldest first: their records and the solve's job.
        self._solving: deque[tuple[list[LayerRecord], Job[list[DeltaStats]]]] = deque()
        # (A shape, B shape) -> pending small pairs: (record, A (r, in), B (out, r), scale)
        self._small: dict[tuple[tuple[int, ...], tuple[int, ...]],
                          list[tuple[LayerRecord, np.ndarray, np.ndarray, float]]] = {}
        # rank -> the Grams waiting to be solved together
        self._grams: dict[int, _GramGroup] = {}

    def add_factors(self, record: LayerRecord, a: np.ndarray, b: np.ndarray,
                    scaling: float) -> None:
        """A small pair: A (r, in) and B (out, r), any float dtype; everything about it is
        deferred."""
        group = self._small.setdefault((a.shape, b.shape), [])
        group.append((record, a, b, scaling))
        if len(group) >= MAX_PAIRS or len(group) * (a.nbytes + b.nbytes) >= MAX_BYTES:
            self._flush_small(a.shape, b.shape)

    def add_grams(self, record: LayerRecord, g_a: np.ndarray, g_b: np.ndarray,
                  scaling: float) -> None:
        """A pair whose factors were measured: only ΔW's statistics, from its Grams, wait."""
        r = g_a.shape[0]
        group = self._grams.get(r)
        if group is None:
            group = self._grams[r] = _GramGroup(r)
        if group.add(record, g_a, g_b, scaling):
            self._flush_grams(r)
        elif self._solving:
            self._collect(wait=False)

    def flush(self) -> None:
        """Measure everything pending (the last groups on the caller's thread), and wait for
        the groups being solved on workers (running here those none has started)."""
        for shapes in list(self._small):
            self._flush_small(*shapes)
        for r in list(self._grams):
            self._flush_grams(r)
        self._collect(wait=True)

    def _flush_small(self, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
        import numpy as np

        from loracheck.stats import batch_side_stats

        group = self._small.pop((a_shape, b_shape), [])
        if not group:
            return
        # Every source's factors are computed in float64 (a pickle's come as float32).
        a64 = np.stack([a for _, a, _, _ in group], dtype=np.float64)
        b64 = np.stack([b for _, _, b, _ in group], dtype=np.float64)
        a_stats, g_a = batch_side_stats(a64, "A", kurtosis=True)
        b_stats, g_b = batch_side_stats(b64, "B")
        chained = a_shape[0] == b_shape[1]
        for i, (record, a, b, scaling) in enumerate(group):
            record.a_stats, record.b_stats = a_stats[i], b_stats[i]
            if chained:
                self.add_grams(record, g_a[i], g_b[i], scaling)
            # else the inner dimensions disagree (LC202): no product to measure
            if self._sink is not None:
                self._sink(record, a, b)

    def _flush_grams(self, r: int) -> None:
        from loracheck.stats import batch_delta_from_grams

        group = self._grams.pop(r, None)
        if group is None or not group.records:
            return
        k = len(group.records)
        # The group's buffers are the solve's own now: the next pairs of rank r start another.
        # On a worker, in two halves: the last group's then run on two threads at once.
        pool = self._pool if r >= POOL_MIN_RANK else None
        cuts = [0, k] if pool is None or k < 2 else [0, k // 2, k]
        for lo, hi in itertools.pairwise(cuts):
            solve = functools.partial(batch_delta_from_grams, group.g_a[lo:hi],
                                      group.g_b[lo:hi], group.scalings[lo:hi])
            if pool is None:
                _into_records(group.records[lo:hi], solve())
            else:
                self._solving.append((group.records[lo:hi], pool.submit(solve, first=True)))

    def _collect(self, *, wait: bool) -> None:
        """The solved groups' results into their records, in order: those done (all, with
        ``wait``: a solve no worker has started runs here, the others are waited for)."""
        while self._solving and (wait or self._solving[0][1].done()):
            records, job = self._solving.popleft()
            if wait and self._pool is not None and self._pool.take(job):
                job.run(raise_now=DeadlineExceeded)
            _into_records(records, job.result())


def _into_records(records: list[LayerRecord], deltas: list[DeltaStats]) -> None:
    for record, delta in zip(records, deltas, strict=True):
        record.delta = delta
        record.delta_from = "low-rank"


class _GramGroup:
    """The Grams of pending pairs of one rank r, copied into two (capacity, r, r) buffers as they
    come (what ``np.stack`` of them would give, without a list of arrays and a stack per
    flush). The capacity is where the group must be flushed: :data:`MAX_PAIRS` pairs, or
    :data:`MAX_BYTES` of Grams."""

    def __init__(self, r: int) -> None:
        import numpy as np

        pair_bytes = 2 * r * r * 8
        self.capacity = max(1, min(MAX_PAIRS, -(-MAX_BYTES // pair_bytes))) if r else MAX_PAIRS
        self.g_a = np.empty((self.capacity, r, r), dtype=np.float64)
        self.g_b = np.empty((self.capacity, r, r), dtype=np.float64)
        self.records: list[LayerRecord] = []
        self.scalings: list[float] = []

    def add(self, record: LayerRecord, g_a: np.ndarray, g_b: np.ndarray, scaling: float) -> bool:
        """Keep one pair's Grams; True when the group is full and must be flushed now."""
        k = len(self.records)
        self.g_a[k] = g_a
        self.g_b[k] = g_b
        self.records.append(record)
        self.scalings.append(scaling)
        return k + 1 >= self.capacity
