"""Streaming: reading a large adapter pair by pair keeps the resident set flat."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from builders import write_safetensors
from loracheck.discover import discover
from loracheck.load import load_unit
from loracheck.safetensors_io import SafetensorsFile


def _rss_file_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_released_pages_leave_the_resident_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(48):  # 48 x 1 MiB of float32
        tensors[f"base_model.model.layers.{i}.q_proj.lora_A.weight"] = rng.normal(
            size=(16, 8192)).astype(np.float32)
        tensors[f"base_model.model.layers.{i}.q_proj.lora_B.weight"] = np.zeros(
            (8192, 16), np.float32)
    path = write_safetensors(tmp_path / "big.safetensors", tensors)
    before = _rss_file_kib()
    with SafetensorsFile.open(path) as file:
        for key in file.entries:
            float(file.read(key, float64=True).sum())
            file.release(key)
        grown = _rss_file_kib() - before
    # 96 MiB were read; without release the mapping would hold all of it.
    assert grown < 8 * 1024, f"resident file pages grew by {grown} KiB"
    # The loader streams the same way: the whole adapter is measured, RSS stays flat.
    before = _rss_file_kib()
    (unit,) = discover([path])
    adapter = load_unit(unit)
    assert adapter is not None and len(adapter.layers) == 48
    assert _rss_file_kib() - before < 8 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_resident_file_pages_peak_flat_in_the_layer_count(tmp_path: Path) -> None:
    """While a unit loads on every thread, the file's resident pages peak at the chunks
    queued for the pool, the one being filled and the release batch, whatever the file's
    size: sampled after every layer, for 24 and 72 pairs of 2 MiB (48 and 144 MiB)."""
    from loracheck import load

    bound_kib = (load._CHUNKS_IN_FLIGHT_BYTES + load._CHUNK_BYTES + load._RELEASE_BATCH
                 + (4 << 20)) // 1024  # + 2 MiB a pair being read beside them, twice
    peaks = {}
    for layers in (24, 72):
        path = _big_adapter(tmp_path / f"l{layers}.safetensors", layers, width=16384)
        (unit,) = discover([path])
        before = _rss_file_kib()
        samples: list[int] = []

        def sample(done: int, total: int, samples: list[int] = samples) -> None:
            samples.append(_rss_file_kib())

        adapter = load_unit(unit, load.LoadOptions(threads=max(os.cpu_count() or 1, 2)),
                            progress=sample)
        assert adapter is not None and len(adapter.layers) == layers
        peaks[layers] = max(samples) - before
    assert peaks[72] <= bound_kib and peaks[24] <= bound_kib, (peaks, bound_kib)
    # Flat: 48 more pairs would add 96 MiB of pages if none were released.
    assert peaks[72] <= peaks[24] + 8 * 1024, peaks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_dropper_releases_pages_from_another_thread(tmp_path: Path) -> None:
    """SafetensorsFile.dropper: the call a worker makes (without the GIL where the extension
    is built) drops the spans' pages from the resident set; after close it does nothing."""
    import threading

    from loracheck import fused

    path = _big_adapter(tmp_path / "drop.safetensors", 16)  # 16 MiB of float32
    with SafetensorsFile.open(path) as file:
        before = _rss_file_kib()
        for key in file.entries:
            float(file.read_raw(key).sum())
        touched = _rss_file_kib() - before
        release = file.dropper([(e.start, e.end) for e in file.entries.values()])
        assert release is not None
        worker = threading.Thread(target=release)
        worker.start()
        worker.join()
        left = _rss_file_kib() - before
    assert touched > 12 * 1024 and left < 1024, (touched, left)
    release()  # the mapping is closed: nothing to drop, nothing raised
    if fused.DROP_PAGES is not None:
        data = np.zeros(1 << 16, np.uint8)
        with pytest.raises(ValueError, match="outside"):
            fused.DROP_PAGES(data, 1 << 15, 1 << 16)


def _big_adapter(path: Path, layers: int, seed: int = 0, width: int = 8192) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):  # 2 x 0.5 MiB of float32 a pair (width 8192): past the threads'
        tensors[f"base_model.model.layers.{i}.q_proj.lora_A.weight"] = rng.normal(
            size=(16, width)).astype(np.float32)
        tensors[f"base_model.model.layers.{i}.q_proj.lora_B.weight"] = rng.normal(
            0, 1e-3, size=(width, 16)).astype(np.float32)
    return write_safetensors(path, tensors)


def test_pairs_in_flight_give_the_same_records_in_bounded_memory(tmp_path: Path) -> None:
    """Several large pairs measured at once on threads: every record equals the one-thread
    record exactly, and the memory traced while reading does not grow with the layer count
    (threads + 1 pairs in flight, one Gram batch)."""
    import tracemalloc

    from loracheck.load import LoadOptions

    small = _big_adapter(tmp_path / "l16.safetensors", 16)
    large = _big_adapter(tmp_path / "l64.safetensors", 64)
    peaks = {}
    for path in (small, large):
        (unit,) = discover([path])
        one = load_unit(unit, LoadOptions(threads=1))
        tracemalloc.start()
        many = load_unit(unit, LoadOptions(threads=4))
        peaks[path] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert one is not None and many is not None
        assert [layer.name for layer in one.layers] == [layer.name for layer in many.layers]
        assert one.layers == many.layers
        assert all(layer.delta is not None and layer.delta.frobenius > 0 for layer in many.layers)
    pair_bytes = 2 * 16 * 8192 * 8  # one pair in float64
    assert peaks[large] <= peaks[small] + 2 * pair_bytes, peaks
    assert peaks[large] <= 12 * pair_bytes, peaks


def test_chunked_pairs_with_a_broken_factor_equal_one_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With threads, fp16 pairs go to the compiled pass in chunks (one call for several
    pairs); a factor holding NaN/Inf in a chunk is decoded and measured again alone. Every
    record equals the one-thread record exactly."""
    from loracheck import fused
    from loracheck.load import LoadOptions

    if not fused.COMPILED:
        pytest.skip("the compiled kernel is not built or not selected")
    rng = np.random.default_rng(3)
    tensors = {}
    for i in range(9):  # 2 x 256 KiB of fp16 a pair: past the threads' threshold
        a = rng.normal(0, 0.02, size=(16, 8192)).astype(np.float16)
        if i == 4:
            a[2, 7], a[9, 100] = np.nan, np.inf
        tensors[f"base_model.model.layers.{i}.q_proj.lora_A.weight"] = a
        tensors[f"base_model.model.layers.{i}.q_proj.lora_B.weight"] = rng.normal(
            0, 1e-3, size=(8192, 16)).astype(np.float16)
    (unit,) = discover([write_safetensors(tmp_path / "mixed.safetensors", tensors)])
    one = load_unit(unit, LoadOptions(threads=1))
    chunks: list[int] = []
    many_passes = fused.side_pass_many

    def counted(items: list[fused.PassItem]) -> list[fused.PassValues]:
        chunks.append(len(items))
        return many_passes(items)

    monkeypatch.setattr(fused, "side_pass_many", counted)
    many = load_unit(unit, LoadOptions(threads=3))
    assert one is not None and many is not None
    assert sum(chunks) == 18 and len(chunks) < 9, chunks  # several pairs a call
    assert one.layers == many.layers
    broken = many.layers[4]
    assert broken.a_stats is not None and broken.a_stats.nonfinite == 2
    assert broken.delta is not None and math.isnan(broken.delta.frobenius)


def _fp16_pairs(seed: int) -> dict[str, np.ndarray]:
    """Nine fp16 q_proj pairs, 2 x 256 KiB each: past the threads' threshold, a few a chunk."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(9):
        tensors[f"base_model.model.layers.{i}.q_proj.lora_A.weight"] = rng.normal(
            0, 0.02, size=(16, 8192)).astype(np.float16)
        tensors[f"base_model.model.layers.{i}.q_proj.lora_B.weight"] = rng.normal(
            0, 1e-3, size=(8192, 16)).astype(np.float16)
    return tensors


def test_caller_runs_a_chunk_instead_of_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With two threads the pool holds one and the caller's thread is the second: while the
    pool thread is held on the first chunk, the caller runs a later one itself rather than
    wait (a held pool thread would otherwise leave it waiting for ever, bounded here by the
    event's timeout). Every record equals the one-thread record exactly."""
    import threading

    from loracheck import fused
    from loracheck.load import LoadOptions

    if not fused.COMPILED:
        pytest.skip("the compiled kernel is not built or not selected")
    (unit,) = discover([write_safetensors(tmp_path / "help.safetensors", _fp16_pairs(4))])
    one = load_unit(unit, LoadOptions(threads=1))
    on_caller = threading.Event()
    callers: list[bool] = []
    many_passes = fused.side_pass_many

    def held(items: list[fused.PassItem]) -> list[fused.PassValues]:
        mine = threading.current_thread() is threading.main_thread()
        callers.append(mine)
        if mine:
            on_caller.set()
        else:
            on_caller.wait(timeout=30)
        return many_passes(items)

    monkeypatch.setattr(fused, "side_pass_many", held)
    many = load_unit(unit, LoadOptions(threads=2))
    assert one is not None and many is not None
    assert on_caller.is_set() and True in callers and False in callers, callers
    assert one.layers == many.layers


def test_caller_runs_the_oldest_jobs_itself_while_the_pool_is_busy() -> None:
    """While the pool's only thread is busy (here with a job that holds it), the caller does
    not wait for the oldest pair: it takes the pairs no thread has started and runs them
    itself, oldest first, so they complete in file order without the pool."""
    import threading

    from loracheck.load import _PairThreads
    from loracheck.model import LayerRecord

    pairs = _PairThreads(2, source=None)  # type: ignore[arg-type]  # no chunk, no source
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(timeout=30)

    ran: list[tuple[str, bool]] = []

    def pair(name: str) -> Any:
        def measure() -> str:
            ran.append((name, threading.current_thread() is threading.main_thread()))
            return name
        return measure

    held = pairs._pool.submit(hold)
    assert started.wait(timeout=30)
    records = [LayerRecord(name=f"m{i}", kind="lora", a=None, b=None, rank=None,
                           in_features=None, out_features=None, alpha=None,
                           alpha_source="missing", scaling=None) for i in range(3)]
    for record in records:
        pairs.submit(record, pair(record.name))
    ready = pairs.drain()
    assert not held.done()  # the pool's thread is still held: the caller ran every pair
    release.set()
    assert ran == [("m0", True), ("m1", True), ("m2", True)]
    assert [(record.name, done()) for record, done in ready] == [
        ("m0", "m0"), ("m1", "m1"), ("m2", "m2")]
    pairs.close()


def test_deadline_on_the_caller_running_a_chunk_ends_the_unit_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit's alarm raises on the caller's thread; when that thread is running a chunk
    for the pool it ends the unit there, not when the chunk's turn to be completed comes."""
    import threading

    from loracheck import fused, load
    from loracheck.errors import DeadlineExceeded
    from loracheck.load import LoadOptions
    from loracheck.model import LayerRecord

    if not fused.COMPILED:
        pytest.skip("the compiled kernel is not built or not selected")
    (unit,) = discover([write_safetensors(tmp_path / "late.safetensors", _fp16_pairs(6))])
    on_caller = threading.Event()
    finished: list[str] = []  # pairs completed into their records, on the caller's thread
    at_alarm: list[int] = []
    many_passes = fused.side_pass_many
    finish = load._finish

    def alarmed(items: list[fused.PassItem]) -> list[fused.PassValues]:
        if threading.current_thread() is threading.main_thread():
            at_alarm.append(len(finished))
            on_caller.set()
            raise DeadlineExceeded("the alarm")
        on_caller.wait(timeout=30)
        return many_passes(items)

    def counted(record: LayerRecord, *args: Any, **kwargs: Any) -> None:
        finished.append(record.name)
        finish(record, *args, **kwargs)

    monkeypatch.setattr(fused, "side_pass_many", alarmed)
    monkeypatch.setattr(load, "_finish", counted)
    with pytest.raises(DeadlineExceeded, match="the alarm"):
        load_unit(unit, LoadOptions(threads=2))
    assert at_alarm == [len(finished)], (at_alarm, finished)  # nothing completed after it


def test_file_truncated_under_chunked_pairs_faults_as_one_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk's views are taken without the truncation check and checked once, when the
    chunk is sent. A file cut short after it was opened (a trainer rewriting it) then gives
    the same records and the same "truncated" faults as one thread's check per tensor, and
    no SIGBUS."""
    from loracheck import fused
    from loracheck.load import LoadOptions

    if not fused.COMPILED:
        pytest.skip("the compiled kernel is not built or not selected")
    path = write_safetensors(tmp_path / "shrinking.safetensors", _fp16_pairs(5))
    whole = path.read_bytes()
    cut = len(whole) // 2  # in the middle of the pairs
    opened = SafetensorsFile.open.__func__  # type: ignore[attr-defined]

    def open_then_truncate(cls: type[SafetensorsFile], p: Path) -> SafetensorsFile:
        file: SafetensorsFile = opened(cls, p)
        os.truncate(p, cut)
        return file

    monkeypatch.setattr(SafetensorsFile, "open", classmethod(open_then_truncate))
    results = []
    for threads in (1, 3):
        path.write_bytes(whole)
        (unit,) = discover([path])
        results.append(load_unit(unit, LoadOptions(threads=threads)))
    one, many = results
    assert one is not None and many is not None
    assert one.faults == many.faults
    assert 0 < len(one.faults) < 9
    assert all("truncated while being read" in f.detail for f in one.faults)
    assert one.layers == many.layers
    measured = [layer for layer in many.layers if layer.a_stats is not None]
    assert 0 < len(measured) < 9
