"""Progress of long runs on the terminal; quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    """One status line per run, rewritten in place while a terminal is attached."""

    def __init__(self, total_runs: int, steps: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total_runs = total_runs
        self.steps = steps
        self.run_index = 0
        self.label = ""
        self._last = 0.0

    def start(self, label: str) -> None:
        self.run_index += 1
        self.label = label
        self._write(f"[{self.run_index}/{self.total_runs}] {label}: starting", force=True)

    def event(self, event: dict) -> None:
        kind = event["event"]
        if kind == "step":
            self._write(f"[{self.run_index}/{self.total_runs}] {self.label}: step {event['step']}/{self.steps} loss {event['loss']:.3f}")
        elif kind == "restored":
            self._write(f"[{self.run_index}/{self.total_runs}] {self.label}: restarted, resumed from step {event['step']}", force=True)

    def finish(self, message: str) -> None:
        if self.enabled:
            self.stream.write("\r\033[K" + message + "\n")
            self.stream.flush()

    def _write(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.2):
            return
        self._last = now
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
