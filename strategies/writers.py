"""Timing of saves: ``sync`` persists on the caller's thread, ``async`` in the background.

The async writer bounds staging memory: at most ``max_in_flight`` snapshots exist at
once, and a new save waits for a slot instead of stacking copies. The persist phase
runs on a named, non-daemon thread, so the interpreter finishes pending saves before
it exits. Failures are stored and raised once, together, on the next ``save``, ``wait`` or ``close``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing

from strategies.errors import BackgroundSaveError
from strategies.records import SaveRecord

logger = logging.getLogger(__name__)

PersistFn = typing.Callable[[], None]


class SaveHandle:
    """The result of one ``save``: ``done()`` polls, ``wait()`` blocks until durable."""

    def __init__(self, record: SaveRecord) -> None:
        self.record = record
        self.step = record.step
        self._finished = threading.Event()
        self._error: BaseException | None = None

    def done(self) -> bool:
        """Return whether the save has finished, committed or failed, without blocking."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> SaveRecord:
        """Block until the save is committed; raise its error if it failed."""
        if not self._finished.wait(timeout):
            raise TimeoutError(f"save of step {self.step} still running after {timeout} s")
        if self._error is not None:
            raise BackgroundSaveError(f"save of step {self.step} failed: {self._error}") from self._error
        return self.record

    def _finish(self, error: BaseException | None = None) -> None:
        self._error = error
        self._finished.set()


class SyncWriter:
    """Persists before ``submit`` returns."""

    def acquire_slot(self) -> float:
        return 0.0

    def release_slot(self) -> None:
        pass

    def submit(self, handle: SaveHandle, persist: PersistFn, started: float) -> None:
        persist()
        handle.record.persist_s = time.perf_counter() - started
        handle._finish()

    def raise_pending(self) -> None:
        pass

    def wait_all(self) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncWriter:
    """Persists on a background thread, committing saves in the order they were made."""

    def __init__(self, max_in_flight: int = 1) -> None:
        self._slots = threading.Semaphore(max_in_flight)
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._thread: threading.Thread | None = None
        self._errors: list[tuple[int, BaseException]] = []
        self._idle = threading.Condition(self._lock)
        self._pending = 0

    def acquire_slot(self) -> float:
        """Block until fewer than ``max_in_flight`` saves are staged; return the seconds waited."""
        started = time.perf_counter()
        self._slots.acquire()
        return time.perf_counter() - started

    def release_slot(self) -> None:
        """Give back a slot taken by ``acquire_slot`` for a save that never reached ``submit``."""
        self._slots.release()

    def submit(self, handle: SaveHandle, persist: PersistFn, started: float) -> None:
        with self._lock:
            self._queue.append((handle, persist, started))
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                # The thread exits when the queue drains, so an idle writer never keeps
                # the interpreter alive, and a busy one finishes before exit.
                self._thread = threading.Thread(target=self._run, name="strategies-async-writer", daemon=False)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                handle, persist, started = self._queue.popleft()
            self._persist_one(handle, persist, started)

    def _persist_one(self, handle: SaveHandle, persist: PersistFn, started: float) -> None:
        error = None
        try:
            persist()
            handle.record.persist_s = time.perf_counter() - started
        except BaseException as caught:  # stored and re-raised on the caller's thread
            error = caught
            logger.error("async save of step %d failed: %s", handle.step, caught)
        with self._lock:
            if error is not None:
                self._errors.append((handle.step, error))
            self._pending -= 1
            self._idle.notify_all()
        handle._finish(error)
        self._slots.release()

    def raise_pending(self) -> None:
        """Raise the background failures not yet reported, once, naming every failed step."""
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            steps = ", ".join(str(step) for step, _ in errors)
            raise BackgroundSaveError(f"async save of step {steps} failed: {errors[0][1]}") from errors[0][1]

    def wait_all(self) -> None:
        with self._lock:
            while self._pending:
                self._idle.wait()

    def close(self) -> None:
        self.wait_all()
