"""Power-cut simulation: which checkpoint survives when unsynced writes are lost.

A ``JournalingStorage`` records every change the checkpoint library makes to the
filesystem (mkdir, file write, fsync, rename, directory fsync, removal) and cuts the
power after a chosen number of them. ``durable_view`` replays the journal the way a
POSIX filesystem may after a crash. A file keeps only the content it had at its last
fsync, or else a torn prefix survives. A name created, renamed or removed in a
directory survives only if that directory was fsynced afterwards. Each trial then
opens the surviving files and checks that the checkpoint restored is the newest one
whose commit was durable, and that every committed step in them loads.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np

from strategies import BackgroundSaveError, CheckpointOptions, Checkpointer, NoCheckpointError
from strategies.format import MANIFEST, parse_step
from strategies.storage import LocalStorage

logger = logging.getLogger(__name__)

STRATEGIES = [f"{writer}_{codec}" for writer in ("sync", "async") for codec in ("raw", "zstd", "bytegroup_zstd", "delta_zstd")]
SAVES = 4
DEFAULT_TRIALS = 200


class PowerCut(BaseException):
    """The simulated power loss; a BaseException so no handler in the library swallows it."""


class JournalingStorage(LocalStorage):
    """Local storage that journals its filesystem changes and stops after ``cut_after`` of them."""

    def __init__(self, root, cut_after: int | None = None) -> None:
        super().__init__(root)
        self.ops: list[tuple] = []
        self.cut_after = cut_after

    def _record(self, *entry) -> None:
        if self.cut_after is not None and len(self.ops) >= self.cut_after:
            raise PowerCut(f"power cut after {self.cut_after} operations")
        self.ops.append(entry)

    def _relative(self, path) -> str:
        relative = Path(path).resolve().relative_to(Path(self.root).resolve()).as_posix()
        return "" if relative == "." else relative

    def _make_dir(self, target: Path) -> None:
        self._record("mkdir", self._relative(target))
        super()._make_dir(target)

    def _write_and_sync(self, target: Path, chunks) -> int:
        data = b"".join(bytes(chunk) for chunk in chunks)
        self._record("write", self._relative(target), data)
        written = super()._write_and_sync(target, [data])
        self._record("fsync", self._relative(target))
        return written

    def _rename(self, source: Path, target: Path) -> None:
        self._record("rename", self._relative(source), self._relative(target))
        super()._rename(source, target)

    def _remove_tree(self, target: Path) -> None:
        self._record("rmtree", self._relative(target))
        super()._remove_tree(target)

    def fsync_dir(self, path: str) -> None:
        self._record("fsync_dir", self._relative(self._path("" if path in (".", "") else path)))
        super().fsync_dir(path)


class _Replay:
    """Inodes and directory entries, both as the program saw them and as they are durable."""

    def __init__(self) -> None:
        self.next_id = 1
        self.kind = {0: "dir"}
        self.entries: dict[int, dict[str, int]] = {0: {}}  # as the running program observes them
        self.durable_entries: dict[int, dict[str, int]] = {0: {}}  # at each directory's last fsync
        self.data: dict[int, bytes] = {}
        self.synced: dict[int, bytes] = {}  # file content at its last fsync

    def lookup(self, path: str) -> tuple[int, str]:
        parts = path.split("/")
        directory = 0
        for part in parts[:-1]:
            directory = self.entries[directory][part]
        return directory, parts[-1]

    def inode(self, path: str) -> int:
        if not path:
            return 0
        parent, name = self.lookup(path)
        return self.entries[parent][name]

    def apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "mkdir":
            parent, name = self.lookup(op[1])
            self.entries[parent][name] = self._new("dir")
            self.entries[self.entries[parent][name]] = {}
        elif kind == "write":
            parent, name = self.lookup(op[1])
            inode = self.entries[parent].get(name) or self._new("file")  # "wb" truncates an existing file in place
            self.entries[parent][name] = inode
            self.data[inode] = op[2]
        elif kind == "fsync":
            inode = self.inode(op[1])
            self.synced[inode] = self.data[inode]
        elif kind == "rename":
            source_parent, source_name = self.lookup(op[1])
            target_parent, target_name = self.lookup(op[2])
            self.entries[target_parent][target_name] = self.entries[source_parent].pop(source_name)
        elif kind == "rmtree":
            parent, name = self.lookup(op[1])
            del self.entries[parent][name]
        elif kind == "fsync_dir":
            inode = self.inode(op[1])
            self.durable_entries[inode] = dict(self.entries[inode])

    def _new(self, kind: str) -> int:
        inode = self.next_id
        self.next_id += 1
        self.kind[inode] = kind
        return inode

    def materialize(self, target: Path, rng: random.Random, inode: int = 0) -> None:
        """Write the durable tree under ``target``; an unsynced file keeps a random prefix."""
        target.mkdir(parents=True, exist_ok=True)
        for name, child in self.durable_entries.get(inode, {}).items():
            if self.kind[child] == "dir":
                self.materialize(target / name, rng, child)
                continue
            content = self.synced.get(child)
            if content is None:
                written = self.data.get(child, b"")
                content = written[: rng.randrange(len(written) + 1)]
            (target / name).write_bytes(content)


def durable_view(ops: list[tuple], target: Path, seed: int) -> None:
    """Write into ``target`` what survives a power cut after ``ops``."""
    replay = _Replay()
    for op in ops:
        replay.apply(op)
    replay.materialize(target, random.Random(seed))


def state_for(step: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, step])
    return {
        "model": {"w": rng.standard_normal((64, 48), dtype=np.float32), "b": rng.standard_normal(48).astype(np.float16)},
        "optimizer": {"step": np.array(step, dtype=np.int64), "m": rng.standard_normal((64, 48), dtype=np.float32)},
    }


def save_all(storage: JournalingStorage, strategy: str, keep_last: int | None, seed: int) -> list[int]:
    """Make the trial's saves until they finish or the power is cut; return the steps acknowledged durable.

    A sync save is acknowledged when ``save`` returns, an async one when its handle
    finished without error: from then on the step must survive a power cut.
    """
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name(strategy, keep_last=keep_last, run_id="powercut"))
    handles = []
    try:
        for step in range(1, SAVES + 1):
            handles.append(checkpointer.save(state_for(step, seed), step, metadata={"step": step}))
        checkpointer.close()
    except PowerCut:
        pass
    except BackgroundSaveError as error:
        if not isinstance(error.__cause__, PowerCut):
            raise
    return [handle.step for handle in handles if _finished_cleanly(handle)]


def _finished_cleanly(handle) -> bool:
    if not handle.done():
        return False
    try:
        handle.wait(timeout=0)
    except BackgroundSaveError:
        return False
    return True


def check_survivors(directory: Path, seed: int, acknowledged: list[int]) -> dict:
    """Restore from the surviving files; return what was found and whether it is right.

    Right means: every committed step that survived loads with the values saved, the
    restore picks the newest of them without skipping any, and no acknowledged save
    was lost (retention may have removed older acknowledged steps on purpose).
    """
    committed = sorted(
        step for path in directory.glob("step_*")
        if (step := parse_step(path.name)) is not None and (path / MANIFEST).is_file()
    )
    checkpointer = Checkpointer(directory, read_only=True)
    loadable = 0
    for step in committed:
        restored = checkpointer.restore(step, target="numpy")  # raises if a committed step is partial
        loadable += _equal(restored.state, state_for(step, seed))
    newest_acknowledged = max(acknowledged, default=None)
    try:
        latest = checkpointer.restore(target="numpy")
    except NoCheckpointError:
        return {"committed": committed, "restored_step": None, "ok": not committed and newest_acknowledged is None}
    ok = (
        latest.step == max(committed)
        and not latest.record.skipped_steps
        and loadable == len(committed)
        and (newest_acknowledged is None or latest.step >= newest_acknowledged)
    )
    return {"committed": committed, "restored_step": latest.step, "ok": ok}


def _equal(restored: dict, expected: dict) -> bool:
    return all(
        restored[group][name].tobytes() == expected[group][name].tobytes() for group in expected for name in expected[group]
    )


def run_trial(trial: int, seed: int, scratch: Path, storage_type=JournalingStorage) -> dict:
    rng = random.Random(seed * 1_000_003 + trial)
    strategy = rng.choice(STRATEGIES)
    keep_last = rng.choice([None, 1, 2])
    state_seed = rng.randrange(1 << 30)

    dry = scratch / f"trial{trial}-full"
    full = storage_type(dry)
    save_all(full, strategy, keep_last, state_seed)
    cut = rng.randrange(len(full.ops) + 1)

    cut_dir, survivors = scratch / f"trial{trial}-cut", scratch / f"trial{trial}-survivors"
    storage = storage_type(cut_dir, cut_after=cut)
    acknowledged = save_all(storage, strategy, keep_last, state_seed)
    durable_view(storage.ops, survivors, seed=trial)
    try:
        found = check_survivors(survivors, state_seed, acknowledged)
        error = ""
    except Exception as caught:  # a committed step that does not load is the failure this campaign looks for
        found, error = {"committed": [], "restored_step": None, "ok": False}, f"{type(caught).__name__}: {caught}"
    for path in (dry, cut_dir, survivors):
        shutil.rmtree(path, ignore_errors=True)
    return {
        "trial": trial, "strategy": strategy, "keep_last": keep_last, "operations": len(full.ops), "cut_after": cut,
        "acknowledged": " ".join(map(str, acknowledged)),
        "committed_after_cut": " ".join(map(str, found["committed"])), "restored_step": found["restored_step"],
        "ok": found["ok"], "error": error,
    }


def run(trials: int, seed: int, scratch: Path, storage_type=JournalingStorage) -> tuple[list[dict], str]:
    """Run ``trials`` power-cut trials; return the rows and the summary line."""
    # The library logs each async save that the cut interrupts; those are expected here.
    logging.getLogger("strategies").setLevel(logging.CRITICAL)
    rows = [run_trial(trial, seed, scratch, storage_type) for trial in range(trials)]
    good = sum(row["ok"] for row in rows)
    return rows, f"no partial checkpoint chosen: {good}/{trials}"
