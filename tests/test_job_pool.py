"""The loader's worker threads: jobs run oldest first, the newest unstarted one can be taken
back and run by the caller, exceptions wait for the result, close drops what has not started."""

from __future__ import annotations

import threading

import pytest

from loracheck.job_pool import Job, JobPool


def test_a_job_keeps_its_value_or_its_exception() -> None:
    ok = Job(lambda: 42)
    assert not ok.done()
    ok.run()
    assert ok.done() and ok.result() == 42

    def broken() -> int:
        raise ValueError("bad bytes")

    failed = Job(broken)
    failed.run()  # kept, not raised: the pool thread that runs it must not die
    assert failed.done()
    with pytest.raises(ValueError, match="bad bytes"):
        failed.result()


def test_raise_now_raises_at_once_and_keeps_it() -> None:
    class Alarm(Exception):
        pass

    def alarmed() -> int:
        raise Alarm

    job = Job(alarmed)
    with pytest.raises(Alarm):
        job.run(raise_now=Alarm)
    assert job.done()  # a later result() must not wait for ever
    with pytest.raises(Alarm):
        job.result()


def _hold_the_worker(pool: JobPool, order: list[str]) -> tuple[Job[str], threading.Event]:
    """Submit a job that keeps the pool's only worker busy until the event is set (then
    records "first"); returns once the worker has started it."""
    release = threading.Event()
    started = threading.Event()

    def first() -> str:
        started.set()
        release.wait(timeout=30)
        order.append("first")
        return "first"

    held = pool.submit(first)
    assert started.wait(timeout=30)
    return held, release


def test_workers_take_the_oldest_and_the_caller_the_newest() -> None:
    pool = JobPool(1, "test-pool")
    order: list[str] = []
    held, release = _hold_the_worker(pool, order)
    middle = pool.submit(lambda: order.append("middle") or "middle")
    newest = pool.submit(lambda: order.append("newest") or "newest")
    taken = pool.take_newest()
    assert taken is newest  # the newest queued job, not the middle one
    taken.run()
    assert newest.result() == "newest" and not held.done()
    release.set()
    assert held.result() == "first" and middle.result() == "middle"
    assert order == ["newest", "first", "middle"]
    assert pool.take_newest() is None
    pool.close()


def test_close_drops_the_jobs_no_worker_has_started() -> None:
    pool = JobPool(1, "test-pool")
    order: list[str] = []
    running, release = _hold_the_worker(pool, order)
    queued = pool.submit(lambda: order.append("queued"))
    pool.close()
    release.set()
    assert running.result() == "first"  # the running job finishes
    for thread in pool._threads:
        thread.join(timeout=30)
        assert not thread.is_alive()  # and its thread ends
    assert not queued.done() and order == ["first"]
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_a_job_submitted_first_is_taken_next_and_a_queued_job_can_be_taken() -> None:
    pool = JobPool(1, "test-pool")
    order: list[str] = []
    held, release = _hold_the_worker(pool, order)
    late = pool.submit(lambda: order.append("late") or "late")
    urgent = pool.submit(lambda: order.append("urgent") or "urgent", first=True)
    spare = pool.submit(lambda: order.append("spare") or "spare")
    assert pool.take(spare) and not pool.take(held)  # queued: taken; running: not
    spare.run()
    assert not pool.take(spare)  # it has run
    release.set()
    assert (held.result(), urgent.result(), late.result()) == ("first", "urgent", "late")
    assert order == ["spare", "first", "urgent", "late"]  # the worker took urgent next
    pool.close()
