"""Worker threads for the loader's pair jobs: a few threads take queued jobs oldest first (a
job submitted ``first`` ahead of the others), and the submitting thread may take back a given
job or the newest one no worker has started and run it itself (what it does rather than
wait: see ``load._PairThreads`` and ``pair_batch.PairBatch``).

Not ``concurrent.futures``: importing it pulls in ``logging`` (about 3 ms, paid by every unit
with large pairs), and its futures cost a condition variable each; a job here is one lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Job(Generic[T]):
    """One call, run once by a worker or by the thread that takes it back; :meth:`result`
    gives its value or raises its exception."""

    __slots__ = ("_error", "_finished", "_fn", "_value")

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn: Callable[[], T] | None = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        # Held until the job has run: done() and result() look at it, nothing else.
        self._finished = threading.Lock()
        self._finished.acquire()

    def run(self, *, raise_now: type[BaseException] | None = None) -> None:
        """Call the job and keep what it gives. An exception of type ``raise_now`` is kept
        too, and raised here as well (the caller's deadline ends its work at once)."""
        fn, self._fn = self._fn, None
        assert fn is not None, "a job runs once"
        try:
            self._value = fn()
        except BaseException as err:
            self._error = err
            if raise_now is not None and isinstance(err, raise_now):
                raise
        finally:
            self._finished.release()

    def done(self) -> bool:
        return not self._finished.locked()

    def result(self) -> T:
        """Wait until the job has run; its value, or its exception raised."""
        if self._finished.locked():
            with self._finished:
                pass
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # T, set by run()


class JobPool:
    """``workers`` threads (started with the first job) that run queued jobs oldest first.

    :meth:`close` drops the jobs no worker has started; the ones running finish, and their
    threads then end (they are not daemons, so the interpreter waits for them at exit rather
    than stop them inside compiled code that reads a mapped file)."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers = max(workers, 1)
        self._name = name
        self._queue: deque[Job[object]] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[[], T], *, first: bool = False) -> Job[T]:
        """Queue ``fn`` behind the others, or with ``first`` ahead of them (the next job a
        worker takes, and the last :meth:`take_newest` gives)."""
        job = Job(fn)
        with self._wake:
            if self._closed:
                raise RuntimeError("submit to a closed JobPool")
            if first:
                self._queue.appendleft(job)  # type: ignore[arg-type]  # the queue holds any Job
            else:
                self._queue.append(job)  # type: ignore[arg-type]
            self._wake.notify()
        if not self._threads:
            for index in range(self._workers):
                thread = threading.Thread(target=self._work, name=f"{self._name}-{index}")
                thread.start()
                self._threads.append(thread)
        return job

    def take(self, job: Job[T]) -> bool:
        """Remove ``job`` from the queue if no worker has started it: True when the caller
        now owns it (and must :meth:`Job.run` it)."""
        with self._wake:
            try:
                self._queue.remove(job)  # type: ignore[arg-type]
            except ValueError:  # a worker has it, or it has run
                return False
            return True

    def take_newest(self) -> Job[object] | None:
        """The newest job no worker has started, removed from the queue (the caller now runs
        it: :meth:`Job.run`); None when every job has been taken."""
        with self._wake:
            return self._queue.pop() if self._queue else None

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._queue.clear()
            self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
            job.run()
