"""The checkpoint manager: save, wait, restore, retention, close."""

from __future__ import annotations

import json
import logging
import os
import time

from strategies import format as fmt
from strategies import persist
from strategies.codecs import make_codec
from strategies.errors import CheckpointError, ConfigError, CorruptCheckpointError, NoCheckpointError
from strategies.layout import make_layout
from strategies.options import CheckpointOptions, Writer
from strategies.records import LoadRecord, SaveRecord
from strategies.storage import LocalStorage, Storage
from strategies.tree import flatten
from strategies.writers import AsyncWriter, SaveHandle, SyncWriter

logger = logging.getLogger(__name__)


class Restored:
    """A restored checkpoint: its step, state, metadata and load costs."""

    def __init__(self, step: int, state, metadata: dict, record: LoadRecord) -> None:
        self.step = step
        self.state = state
        self.metadata = metadata
        self.record = record


class Checkpointer:
    """Saves and restores training state in one directory with one strategy.

    ``save(state, step)`` returns a ``SaveHandle``; ``restore()`` returns the newest
    committed step that verifies, falling back past corrupt ones with a warning.
    """

    def __init__(
        self,
        directory: str | os.PathLike | Storage,
        options: CheckpointOptions | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        self.options = options or CheckpointOptions()
        self.storage = directory if hasattr(directory, "is_committed") else LocalStorage(directory)
        self.read_only = read_only
        if not read_only:
            self.storage.check_writable()
        self._codec = make_codec(self.options.codec, level=self.options.zstd_level, threads=self.options.zstd_threads)
        self._layout = make_layout(self.options.layout)
        self._writer = AsyncWriter(self.options.max_in_flight) if self.options.writer == Writer.ASYNC else SyncWriter()
        self._closed = False
        self.records: list[SaveRecord | LoadRecord] = []

    def save(self, state, step: int, metadata: dict | None = None) -> SaveHandle:
        """Checkpoint ``state`` as ``step``; block until durable (sync) or snapshotted (async)."""
        self._check_open()
        if self.read_only:
            raise CheckpointError(f"this Checkpointer of {self.storage.root} is read-only: open it with read_only=False to save")
        self._writer.raise_pending()
        step = _check_step(step)
        metadata = _check_metadata(metadata)
        if step in self._committed():
            raise CheckpointError(
                f"step {step} is already committed in {self.storage.root}: committed steps are never overwritten; "
                "save under a new step number or use a new directory"
            )

        started = time.perf_counter()
        record = SaveRecord(step=step, strategy=self.options.name)
        record.wait_slot_s = self._writer.acquire_slot()

        snapshot_started = time.perf_counter()
        copy = self.options.writer == Writer.ASYNC
        try:
            structure, leaves = flatten(state, copy=copy)
        except BaseException:
            self._release_slot()
            raise
        record.snapshot_s = time.perf_counter() - snapshot_started
        record.bytes_state = sum(leaf.nbytes for leaf in leaves)

        handle = SaveHandle(record)
        self.records.append(record)

        def persist_step() -> None:
            persist.write_step(self.storage, step, structure, leaves, metadata, self._codec, self._layout, record)
            self._apply_retention(step)
            logger.info(
                "saved step %d with %s: %d bytes stored in %.3f s", step, self.options.name, record.bytes_stored,
                time.perf_counter() - started,
            )

        try:
            self._writer.submit(handle, persist_step, started)
        finally:
            record.stall_s = time.perf_counter() - started
        return handle

    def _release_slot(self) -> None:
        if isinstance(self._writer, AsyncWriter):
            self._writer._slots.release()

    def wait(self) -> None:
        """Block until every save made so far is committed; raise a background failure."""
        self._writer.wait_all()
        self._writer.raise_pending()

    def steps(self) -> list[int]:
        """Return the committed steps in ascending numeric order."""
        return sorted(self._committed())

    def _committed(self) -> dict[int, str]:
        """Map each committed step to its directory name (``step_10`` and ``step_00000010`` both parse)."""
        return {step: name for step, name in self._step_dirs().items() if self.storage.is_committed(name)}

    def _step_dirs(self) -> dict[int, str]:
        found: dict[int, str] = {}
        for name in self.storage.list_dir():
            step = fmt.parse_step(name)
            if step is None:
                continue
            if step not in found or name == fmt.step_dir(step):
                found[step] = name
        return found

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, step: int | None = None, *, target: str = "auto") -> Restored:
        """Load ``step``, or the newest committed step that verifies when ``step`` is None.

        ``target`` picks the array type: ``auto`` (as saved), ``numpy`` or ``mlx``.
        """
        self._check_open()
        if target not in ("auto", "numpy", "mlx"):
            raise ConfigError(f"invalid target {target!r}: expected auto, numpy or mlx")
        if step is not None:
            return self._restore_step(_check_step(step), target)
        return self._restore_latest(target)

    def _restore_latest(self, target: str) -> Restored:
        steps = self.steps()
        if not steps:
            raise NoCheckpointError(f"no committed checkpoint in {self.storage.root}: save one first or check the path")
        skipped: list[int] = []
        for step in reversed(steps):
            try:
                restored = self._restore_step(step, target)
            except CorruptCheckpointError as error:
                logger.warning("step %d failed verification, trying an older step: %s", step, error)
                skipped.append(step)
                continue
            restored.record.skipped_steps = tuple(skipped)
            return restored
        raise CorruptCheckpointError(
            f"every committed step in {self.storage.root} failed verification ({', '.join(map(str, skipped))}): "
            "no usable checkpoint remains; see the log for the cause of each"
        )

    def _restore_step(self, step: int, target: str) -> Restored:
        committed = self._committed()
        if step not in committed:
            raise NoCheckpointError(
                f"step {step} is not a committed checkpoint in {self.storage.root}: committed steps are {sorted(committed)}"
            )
        record = LoadRecord(step=step, strategy=self.options.name)
        started = time.perf_counter()
        state, metadata = persist.read_step(self.storage, step, committed[step], target, record)
        record.load_s = time.perf_counter() - started
        self.records.append(record)
        logger.info("restored step %d from %s in %.3f s", step, self.storage.root, record.load_s)
        return Restored(step, state, metadata, record)

    def _apply_retention(self, newest: int) -> None:
        """Remove uncommitted leftovers older than ``newest`` and, with keep_last, old committed steps.

        This runs on the writer after a commit, when no other save is writing.
        """
        committed = self._committed()
        for step, name in self._step_dirs().items():
            if step < newest and step not in committed:
                logger.info("removing uncommitted leftovers of step %d in %s", step, self.storage.root)
                self.storage.remove_tree(name)

        keep_last = self.options.keep_last
        if keep_last is None:
            return
        steps = sorted(committed)
        keep = set(steps[-keep_last:])
        keep.add(self._newest_verified(committed))
        for step in steps:
            if step not in keep and step < newest:
                logger.info("retention: removing step %d (keep_last=%d)", step, keep_last)
                self.storage.remove_tree(committed[step])

    def _newest_verified(self, committed: dict[int, str]) -> int:
        # A manifest that parses is the cheap check; a full read of every shard would
        # cost as much as a restore on each save.
        for step in sorted(committed, reverse=True):
            try:
                persist.read_manifest(self.storage, step, committed[step])
                return step
            except CorruptCheckpointError:
                continue
        return max(committed)

    def close(self) -> None:
        """Finish every pending save and raise a background failure, if any."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._writer.raise_pending()

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this Checkpointer is closed: create a new one to save or restore")

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"invalid step {step!r}: expected a non-negative integer")
    return step


def _check_metadata(metadata) -> dict:
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise ConfigError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        # The round trip is also the snapshot: later changes by the caller cannot reach an async save.
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"metadata is not JSON-serializable ({error}): pass plain numbers, strings, lists and dicts") from error
