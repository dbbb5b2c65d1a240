"""The checkpoint manager: save, wait, restore, retention, close."""

from __future__ import annotations

import json
import logging
import numbers
import re
import os
import secrets
import signal
import threading
import time
import typing
import uuid

from strategies import format as fmt
from strategies import persist
from strategies.codecs import make_codec
from strategies.errors import (
    BackgroundSaveError,
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    NoCheckpointError,
    StorageError,
)
from strategies.layout import make_layout
from strategies.options import CheckpointOptions, Layout, Writer
from strategies.records import LoadRecord, SaveRecord
from strategies.objectstore import open_storage
from strategies.storage import Storage
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

    One job writes to a directory at a time: on a filesystem, rank 0 holds an flock on
    ``.writer.lock`` from its first save until ``close``, and a second writing process is
    rejected. Object stores have no such lock.

    With several processes, every rank creates its own Checkpointer on the same
    directory with its ``rank`` and the ``world_size``, and every rank calls ``save``
    for the same steps. The parallel layout then needs ``broadcast``, a collective that
    returns rank 0's integer on every rank (``strategies.mlx_distributed`` builds one
    from an MLX group). Rank 0 commits each step and applies retention.
    """

    def __init__(
        self,
        directory: str | os.PathLike | Storage,
        options: CheckpointOptions | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        broadcast: typing.Callable[[int], int] | None = None,
        read_only: bool = False,
    ) -> None:
        self.options = options or CheckpointOptions()
        self.storage = open_storage(directory)
        self.rank, self.world_size = _check_ranks(rank, world_size)
        if world_size > 1 and self.options.layout == Layout.PARALLEL and broadcast is None:
            raise ConfigError(
                f"the parallel layout on {world_size} ranks needs broadcast, a collective that returns rank 0's "
                "integer on every rank: pass broadcast=, e.g. from strategies.mlx_distributed()"
            )
        self._broadcast = broadcast
        self.read_only = read_only
        if not read_only:
            self.storage.check_writable()
        self._run_ids: dict[str, str | None] = {}  # step directory -> run id in its manifest
        self.run_id = self.options.run_id or self._adopted_run_id() or uuid.uuid4().hex
        self._codec = make_codec(self.options.codec, level=self.options.zstd_level, threads=self.options.zstd_threads)
        self._layout = make_layout(self.options.layout.value)
        self._writer = AsyncWriter(self.options.max_in_flight) if self.options.writer == Writer.ASYNC else SyncWriter()
        self._base: persist.Base | None = None
        self._saves = 0
        self._closed = False
        self._writer_lock: typing.Callable[[], None] | None = None
        self.records: list[SaveRecord | LoadRecord] = []
        if self.options.flush_on_sigterm:
            self._install_sigterm_flush()

    def save(self, state, step: int, metadata: dict | None = None) -> SaveHandle:
        """Checkpoint ``state`` as ``step``; block until durable (sync) or snapshotted (async)."""
        self._check_open()
        if self.read_only:
            raise CheckpointError(f"this Checkpointer of {self.storage.root} is read-only: open it with read_only=False to save")
        self._writer.raise_pending()
        step = _check_step(step)
        metadata = _check_metadata(metadata)
        # Only rank 0 checks here: it may commit this very save before another rank gets
        # here. Every rank that writes checks again before writing (persist.write_step).
        if self.rank == 0:
            self._take_writer_lock()
        if self.rank == 0 and step in self._committed():
            raise CheckpointError(
                f"step {step} is already committed in {self.storage.root}: committed steps are never overwritten; "
                "save under a new step number or use a new directory"
            )

        started = time.perf_counter()
        record = SaveRecord(step=step, strategy=self.options.name)
        record.wait_slot_s = self._writer.acquire_slot()
        try:
            self._writer.raise_pending()  # a save that failed while this one waited for its slot
        except BackgroundSaveError:
            self._writer.release_slot()
            raise
        try:
            job = self._snapshot(state, step, metadata, record)
        except BaseException:
            self._writer.release_slot()
            raise

        handle = SaveHandle(record)
        self.records.append(record)
        try:
            self._writer.submit(handle, lambda: self._persist(job, record, started), started)
        finally:
            record.stall_s = time.perf_counter() - started
        return handle

    def _snapshot(self, state, step: int, metadata: dict, record: SaveRecord) -> persist.SaveJob:
        """Copy the state off the live arrays (async, or delta which keeps a base) and agree on a save nonce."""
        nonce = self._agree_nonce()
        snapshot_started = time.perf_counter()
        structure, leaves = flatten(state, copy=False)
        pieces = self._layout.plan(leaves, self.rank, self.world_size)
        if self.options.writer == Writer.ASYNC or self._codec.uses_base:
            pieces = [piece.stage() for piece in pieces]  # copy only the bytes this rank writes
            for leaf in leaves:
                leaf.release()  # the manifest needs the description, not the live buffer
        record.snapshot_s = time.perf_counter() - snapshot_started
        record.bytes_state = sum(piece.nbytes for piece in pieces)

        full = self._saves % self.options.delta_full_every == 0
        self._saves += 1
        return persist.SaveJob(
            step=step, structure=structure, leaves=leaves, pieces=pieces, metadata=metadata, run_id=self.run_id, nonce=nonce,
            rank=self.rank, world_size=self.world_size, full=full,
        )

    def _agree_nonce(self) -> int:
        value = secrets.randbits(52) if self.rank == 0 else 0
        if self.world_size > 1 and self.options.layout == Layout.PARALLEL:
            value = int(self._broadcast(value))
        return value

    def _persist(self, job: persist.SaveJob, record: SaveRecord, started: float) -> None:
        # The base is chosen here, on the writer, where every earlier save of this
        # process has finished: it is the newest one this rank wrote successfully.
        job.base = None if job.full else self._base
        pieces = persist.write_step(self.storage, job, self._codec, self._layout, record, self.options.commit_timeout_s)
        if self._codec.uses_base:
            # NOTE: on ranks other than 0 the base is this rank's last written save, which
            # rank 0 may still fail to commit. Rank 0 then rejects the next delta save, and
            # the bases agree again at the next full checkpoint.
            self._base = persist.Base(job.step, {(p.leaf.name, p.start, p.stop): p.raw() for p in pieces})
        if self.rank == 0:
            try:
                self._apply_retention(job.step)
            except OSError as error:
                # The step is committed; a failed cleanup must not report the save as failed.
                logger.warning("step %d is committed, but retention in %s failed: %s", job.step, self.storage.root, error)
        logger.info(
            "saved step %d with %s on rank %d: %d bytes stored in %.3f s", job.step, self.options.name, self.rank,
            record.bytes_stored, time.perf_counter() - started,
        )

    def wait(self) -> None:
        """Block until every save made so far is committed; raise a background failure."""
        self._writer.wait_all()
        self._writer.raise_pending()

    def steps(self) -> list[int]:
        """Return the committed steps in ascending numeric order."""
        return sorted(self._committed())

    def _committed(self) -> dict[int, str]:
        """Map each committed step to its directory name (``step_10`` and ``step_00000010`` both parse)."""
        return {step: name for step, name in self._step_dirs().items() if self._is_committed(name)}

    def _is_committed(self, name: str) -> bool:
        try:
            return self.storage.is_committed(name)
        except PermissionError as error:
            logger.warning("cannot read step directory %s in %s, skipping it: %s", name, self.storage.root, error)
            return False

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
        """Return the newest committed step, or None when there is none (it may still fail verification)."""
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
            self._uncommit_corrupt(skipped)
            restored.record.skipped_steps = tuple(skipped)
            return restored
        raise CorruptCheckpointError(
            f"every committed step in {self.storage.root} failed verification ({', '.join(map(str, skipped))}): "
            "no usable checkpoint remains; see the log for the cause of each"
        )

    def _uncommit_corrupt(self, steps: list[int]) -> None:
        """Uncommit steps newer than the restored one that failed verification.

        Training resumes from the older step and will save these step numbers again;
        committed steps are never overwritten, so the corrupt ones step aside. Only rank 0
        does this, and only a writable Checkpointer. The files stay for inspection until
        the same step number is saved again.
        """
        if self.read_only or self.rank != 0:
            return
        committed = self._committed()
        for step in steps:
            if step in committed:
                logger.warning("uncommitting corrupt step %d in %s; its files stay for inspection", step, self.storage.root)
                self.storage.uncommit(committed[step])

    def _restore_step(self, step: int, target: str) -> Restored:
        committed = self._committed()
        if step not in committed:
            raise NoCheckpointError(
                f"step {step} is not a committed checkpoint in {self.storage.root}: committed steps are {sorted(committed)}"
            )
        record = LoadRecord(step=step, strategy=self.options.name)
        started = time.perf_counter()
        try:
            state, metadata = persist.read_step(self.storage, step, committed, target, record)
        except (KeyError, TypeError, ValueError, IndexError, MemoryError, OverflowError, RecursionError, OSError) as error:
            if isinstance(error, (ConfigError, StorageError)):
                raise
            # The manifest passed its checksum and schema checks yet does not describe its
            # data; treat it as corrupt so restore() can fall back.
            raise CorruptCheckpointError(
                f"step {step} in {self.storage.root} is inconsistent ({type(error).__name__}: {error}): "
                "restore an older step or delete this step directory"
            ) from error
        record.load_s = time.perf_counter() - started
        self.records.append(record)
        logger.info("restored step %d from %s in %.3f s", step, self.storage.root, record.load_s)
        return Restored(step, state, metadata, record)

    def _apply_retention(self, newest: int) -> None:
        """Remove uncommitted leftovers older than ``newest`` and, with keep_last, this run's old steps.

        Runs on rank 0 after a commit, on the writer thread, when no save of this
        process is writing. Delta bases of kept steps are kept too.
        """
        committed = self._committed()
        for step, name in self._step_dirs().items():
            if step < newest and step not in committed and self._holds_only_checkpoint_files(name):
                logger.info("removing uncommitted leftovers of step %d in %s", step, self.storage.root)
                self.storage.remove_tree(name)

        keep_last = self.options.keep_last
        if keep_last is None:
            return
        ours = [step for step in sorted(committed) if self._run_id_of(committed[step], step) == self.run_id]
        keep = set(ours[-keep_last:])
        keep.add(self._newest_verified(committed))
        keep |= self._delta_bases(keep, committed)
        for step in ours:
            if step not in keep and step < newest:
                logger.info("retention: removing step %d (keep_last=%d)", step, keep_last)
                self.storage.remove_tree(committed[step])
                self._run_ids.pop(committed[step], None)

    def _adopted_run_id(self) -> str | None:
        """Return the run id of the newest readable step, so a restarted job keeps its retention.

        Without ``options.run_id``, a Checkpointer on a directory that already contains
        steps continues that run. A new run in the same directory needs its own run_id.
        """
        if self.read_only:
            return None
        committed = self._committed()
        for step in sorted(committed, reverse=True):
            run_id = self._run_id_of(committed[step], step)
            if run_id:
                return run_id
        return None

    def _holds_only_checkpoint_files(self, name: str) -> bool:
        """Return whether a step directory contains nothing but files this library writes."""
        try:
            entries = self.storage.list_dir(name)
        except (OSError, CheckpointError):
            return False
        return all(_CHECKPOINT_FILE.fullmatch(entry) for entry in entries)

    def _run_id_of(self, directory: str, step: int) -> str | None:
        if directory not in self._run_ids:
            try:
                self._run_ids[directory] = persist.read_manifest(self.storage, step, directory).get("run_id")
            except CorruptCheckpointError:
                self._run_ids[directory] = None  # unreadable: never counted as this run's, never removed
        return self._run_ids[directory]

    def _delta_bases(self, steps: set[int], committed: dict[int, str]) -> set[int]:
        """Return every step that the delta chains of ``steps`` need."""
        needed: set[int] = set()
        pending = list(steps)
        while pending:
            step = pending.pop()
            try:
                base = persist.read_manifest(self.storage, step, committed[step]).get("base_step")
            except (CorruptCheckpointError, KeyError):
                continue
            if isinstance(base, int) and base in committed and base not in needed:
                needed.add(base)
                pending.append(base)
        return needed

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

    def _install_sigterm_flush(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError("flush_on_sigterm needs the Checkpointer to be created on the main thread")
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame) -> None:
            # The handler may interrupt the main thread while it has the writer's lock, so
            # the waiting happens on another thread. Once every pending save is durable,
            # that thread sends SIGTERM again, to the handler that was installed before.
            logger.warning("SIGTERM: finishing pending saves in %s before exiting", self.storage.root)
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            threading.Thread(target=flush_then_resend, name="strategies-sigterm-flush", daemon=False).start()

        def flush_then_resend() -> None:
            try:
                self._writer.wait_all()
            finally:
                if previous != signal.SIG_IGN:
                    os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)

    def close(self) -> None:
        """Finish every pending save and raise a background failure, if any."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
            self._writer.raise_pending()
        finally:
            self._release_writer_lock()

    def _take_writer_lock(self) -> None:
        """Hold the directory's writer lock from the first save, so a second writing job is rejected."""
        if self._writer_lock is not None or not hasattr(self.storage, "lock_writer"):
            return  # NOTE: object stores have no lock; one writing job per prefix is up to the caller
        release = self.storage.lock_writer()
        if release is None:
            raise CheckpointError(
                f"another process is saving into {self.storage.root} and has locked .writer.lock: "
                "use one writing job per directory, or wait for the other to finish"
            )
        self._writer_lock = release

    def _release_writer_lock(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock()
            self._writer_lock = None

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("this Checkpointer is closed: create a new one to save or restore")

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _check_ranks(rank, world_size) -> tuple[int, int]:
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"invalid {name} {value!r}: expected an integer")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"invalid rank {rank} of world_size {world_size}: expected 0 <= rank < world_size")
    return rank, world_size


MAX_STEP = 2**63 - 1

# Files a save writes into a step directory; anything else there belongs to someone else.
_CHECKPOINT_FILE = re.compile(r"shard_\d+\.bin|rank_\d+\.json|manifest\.json(\.tmp-\w+|\.corrupt-\w+)?|COMMITTED")


def _check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or not 0 <= step <= MAX_STEP:
        raise ConfigError(f"invalid step {step!r}: expected an integer from 0 to 2**63 - 1")
    return int(step)


def _check_metadata(metadata) -> dict:
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise ConfigError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        # The round trip is also the snapshot: later changes by the caller cannot reach an async save.
        return json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"metadata is not JSON-serializable ({error}): pass plain numbers, strings, lists and dicts") from error
