"""Faults injected into training runs: the catalogue, the storage wrapper, corruption.

Each fault kind is one config in conf/fault/ and applies to any strategy and layout:

- ``kill``: SIGKILL one rank at a step (``at_step``; -1 draws one from ``seed``).
- ``kill_during_save``: the rank SIGKILLs itself inside its ``save_index``-th save, at
  ``point``: before_shard, during_shard (half the shard written), after_shard (shard
  fsynced), before_commit (every shard durable, manifest not yet published) or
  after_commit.
- ``hang``: the rank stops training and stops its heartbeat at ``at_step``, but does
  not exit; the supervisor detects it after ``hang_timeout_s``.
- ``exception``: the training step raises at ``at_step``.
- ``storage``: the ``save_index``-th save hits a storage error: ``enospc``,
  ``eacces``, ``request`` (a failed object-store request) or ``slow`` (bandwidth cap
  ``bandwidth_Bps`` and ``latency_s`` per file).
- ``corrupt``: once the ``save_index``-th save is committed, the supervisor corrupts it
  (``corruption``: bitflip, truncate, missing_shard, missing_manifest,
  garbled_manifest) and kills the job; the restart must fall back to an older step.

Faults inside the training process fire only in its first attempt, so the restarted
job runs clean.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import random
import signal
import time
from pathlib import Path

from strategies.storage import LocalStorage

logger = logging.getLogger(__name__)

KINDS = ("none", "kill", "kill_during_save", "hang", "exception", "storage", "corrupt")
SAVE_POINTS = ("before_shard", "during_shard", "after_shard", "before_commit", "after_commit")
STORAGE_ERRORS = ("enospc", "eacces", "request", "slow")
CORRUPTIONS = ("bitflip", "truncate", "missing_shard", "missing_manifest", "garbled_manifest")
ATTEMPT_ENV = "FLASHBENCH_ATTEMPT"  # set by the supervisor in each training process


@dataclasses.dataclass
class FaultSpec:
    """The fault to inject into one supervised run, and how the supervisor reacts."""

    kind: str = "none"
    at_step: int = 0  # kill, hang, exception: the step; -1 draws one in [1, steps) from seed
    rank: int = 0  # the rank the fault hits
    point: str = "before_commit"  # kill_during_save
    save_index: int = 2  # kill_during_save, storage, corrupt: which save (1 is the first)
    error: str = "enospc"  # storage
    bandwidth_Bps: float = 50e6  # storage=slow: write bandwidth cap, bytes/s
    latency_s: float = 0.05  # storage=slow: added to every file write
    corruption: str = "bitflip"  # corrupt
    seed: int = 0
    max_restarts: int = 3
    restart_backoff_s: float = 0.0  # sleep before restart n: backoff * 2**(n-1)
    hang_timeout_s: float = 10.0  # silence of a rank's heartbeat that counts as a hang
    heartbeat_s: float = 0.5  # how often each rank reports its step

    def __post_init__(self) -> None:
        self._check_choice("kind", self.kind, KINDS)
        self._check_choice("point", self.point, SAVE_POINTS)
        self._check_choice("error", self.error, STORAGE_ERRORS)
        self._check_choice("corruption", self.corruption, CORRUPTIONS)
        if self.kind in ("kill", "hang", "exception") and self.at_step < 1 and self.at_step != -1:
            raise ValueError(f"invalid fault.at_step {self.at_step}: expected a step of 1 or more, or -1 for a random step")
        for field in ("rank", "max_restarts"):
            if getattr(self, field) < 0:
                raise ValueError(f"invalid fault.{field} {getattr(self, field)}: expected 0 or more")
        if self.save_index < 1:
            raise ValueError(f"invalid fault.save_index {self.save_index}: expected 1 for the first save, or more")
        for field in ("bandwidth_Bps", "hang_timeout_s", "heartbeat_s"):
            if not getattr(self, field) > 0:
                raise ValueError(f"invalid fault.{field} {getattr(self, field)}: expected a positive number")
        if self.latency_s < 0 or self.restart_backoff_s < 0:
            raise ValueError("invalid fault.latency_s or fault.restart_backoff_s: expected 0 or more seconds")
        if self.heartbeat_s >= self.hang_timeout_s:
            raise ValueError(
                f"invalid fault.hang_timeout_s {self.hang_timeout_s}: it must exceed fault.heartbeat_s ({self.heartbeat_s})"
            )

    @staticmethod
    def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise ValueError(f"invalid fault.{field} {value!r}: expected one of {', '.join(choices)}")

    def resolve_step(self, steps: int) -> "FaultSpec":
        """Return a copy with a random ``at_step`` drawn from ``seed`` in [1, steps)."""
        if self.at_step != -1:
            return self
        return dataclasses.replace(self, at_step=random.Random(self.seed).randrange(1, max(steps, 2)))

    def child_part(self) -> dict:
        """Return the settings a training process needs for the faults it injects itself."""
        return dataclasses.asdict(self)


class InjectedFault(RuntimeError):
    """An error raised on purpose by a fault."""


def first_attempt() -> bool:
    return os.environ.get(ATTEMPT_ENV, "0") == "0"


class FaultyStorage(LocalStorage):
    """A local directory that kills the process or fails inside a chosen save."""

    def __init__(self, root, fault: FaultSpec) -> None:
        super().__init__(root)
        self.fault = fault
        self.saves = 0  # shards written so far by this process, one per save
        self._fired = False

    def _armed(self) -> bool:
        return not self._fired and self.saves == self.fault.save_index

    def write_file(self, path, chunks):
        if not path.rsplit("/", 1)[-1].startswith("shard_"):
            return super().write_file(path, chunks)
        self.saves += 1
        kind, point = self.fault.kind, self.fault.point
        if self._armed() and kind == "kill_during_save" and point == "before_shard":
            _kill_self("before the shard write")
        if self._armed() and kind == "storage" and self.fault.error != "slow":
            self._fired = True
            raise _storage_error(self.fault.error, f"{self.root}/{path}")
        if kind == "kill_during_save" and point == "during_shard" and self._armed():
            chunks = _kill_halfway(chunks)
        if kind == "storage" and self.fault.error == "slow":
            chunks = self._throttled(chunks)
        written = super().write_file(path, chunks)
        if self._armed() and kind == "kill_during_save" and point == "after_shard":
            _kill_self("after the shard was fsynced")
        return written

    def commit(self, directory, manifest):
        armed = self._armed() and self.fault.kind == "kill_during_save"
        if armed and self.fault.point == "before_commit":
            _kill_self("after every shard, before the commit")
        super().commit(directory, manifest)
        if armed and self.fault.point == "after_commit":
            _kill_self("right after the commit")

    def _throttled(self, chunks):
        time.sleep(self.fault.latency_s)
        for chunk in chunks:
            time.sleep(len(chunk) / self.fault.bandwidth_Bps)
            yield chunk


def _kill_halfway(chunks):
    chunks = list(chunks)
    for chunk in chunks[: max(1, len(chunks) // 2)]:
        yield chunk[: max(1, len(chunk) // 2)] if len(chunks) == 1 else chunk
    _kill_self("halfway through the shard write")


def _kill_self(where: str) -> None:
    logger.warning("fault: SIGKILL %s", where)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # the signal is delivered before this returns


def _storage_error(kind: str, path: str) -> OSError:
    if kind == "enospc":
        return OSError(errno.ENOSPC, "No space left on device (injected)", path)
    if kind == "eacces":
        return PermissionError(errno.EACCES, "Permission denied (injected)", path)
    return ConnectionResetError(errno.ECONNRESET, "object-store request failed (injected)", path)


def corrupt_step(step_dir: Path, corruption: str, seed: int) -> str:
    """Damage a committed step in place; return what was done."""
    rng = random.Random(seed)
    shards = sorted(step_dir.glob("shard_*.bin"))
    manifest = step_dir / "manifest.json"
    if corruption == "bitflip" and shards:
        path = rng.choice(shards)
        data = bytearray(path.read_bytes())
        if data:
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            return f"flipped a bit at byte {position} of {path.name}"
    if corruption == "truncate" and shards:
        path = rng.choice(shards)
        size = path.stat().st_size
        os.truncate(path, rng.randrange(size) if size else 0)
        return f"truncated {path.name}"
    if corruption == "missing_shard" and shards:
        path = rng.choice(shards)
        path.unlink()
        return f"deleted {path.name}"
    if corruption == "missing_manifest":
        manifest.unlink()
        return "deleted manifest.json"
    data = bytearray(manifest.read_bytes())
    data[rng.randrange(len(data))] = ord("}")
    manifest.write_bytes(bytes(data[: rng.randrange(1, len(data))]))
    return "garbled manifest.json"
