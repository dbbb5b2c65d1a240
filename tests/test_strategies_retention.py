"""Retention: keep_last keeps the newest committed steps, never a corrupt newest step alone."""

import errno
import os

import numpy as np
import pytest

from strategies import BackgroundSaveError, Checkpointer, CheckpointOptions
from strategies.storage import LocalStorage


class NoSpaceStorage(LocalStorage):
    """Local storage that raises ENOSPC on the shard writes of the steps in ``full_steps``."""

    def __init__(self, root, full_steps) -> None:
        super().__init__(root)
        self.full_steps = set(full_steps)

    def write_file(self, path, chunks):
        if any(path.startswith(f"step_{step:08d}/") for step in self.full_steps):
            raise OSError(errno.ENOSPC, "No space left on device (injected)", path)
        return super().write_file(path, chunks)


def state_for(step: int) -> dict:
    return {"w": np.full((8, 8), float(step), dtype=np.float32)}


def step_directories(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith("step_"))


def garble_manifest(directory, step: int) -> None:
    (directory / f"step_{step:08d}" / "manifest.json").write_bytes(b'{"format": "flashbench-checkpoint", "ver')


@pytest.mark.parametrize("strategy", ["sync_raw", "async_zstd"])
def test_keep_last_two_of_five(tmp_path, strategy):
    directory = tmp_path / "ckpt"
    checkpointer = Checkpointer(directory, CheckpointOptions.from_name(strategy, keep_last=2))

    for step in range(1, 6):
        checkpointer.save(state_for(step), step=step)
    checkpointer.close()

    assert Checkpointer(directory).steps() == [4, 5]
    assert step_directories(directory) == ["step_00000004", "step_00000005"]


def test_keep_last_none_keeps_all(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", CheckpointOptions(keep_last=None))

    for step in range(1, 6):
        checkpointer.save(state_for(step), step=step)

    assert checkpointer.steps() == [1, 2, 3, 4, 5]


def test_corrupt_newest_then_save(tmp_path):
    directory = tmp_path / "ckpt"
    checkpointer = Checkpointer(directory, CheckpointOptions(keep_last=1))
    checkpointer.save(state_for(1), step=1)
    checkpointer.save(state_for(2), step=2)
    garble_manifest(directory, 2)

    checkpointer.save(state_for(3), step=3)

    assert checkpointer.steps() == [3]
    restored = checkpointer.restore()
    assert restored.step == 3
    assert restored.state["w"].tobytes() == state_for(3)["w"].tobytes()


def test_corrupt_newer_step_kept_with_verified(tmp_path):
    # A crashed run left step 1 and a corrupt step 5, and the resumed run saves step 2.
    directory = tmp_path / "ckpt"
    first_run = Checkpointer(directory)
    first_run.save(state_for(1), step=1)
    first_run.save(state_for(5), step=5)
    first_run.close()  # a crashed run's writer lock is released by the kernel
    garble_manifest(directory, 5)

    resumed = Checkpointer(directory, CheckpointOptions(keep_last=1))
    assert resumed.restore().step == 1
    resumed.save(state_for(2), step=2)

    # Step 5 was uncommitted. The resumed Checkpointer adopted step 1's run id, so it
    # continues that run and keep_last=1 removed step 1 after step 2 committed.
    assert resumed.steps() == [2]
    assert (directory / "step_00000005").is_dir()  # its files stay for inspection
    restored = resumed.restore()
    assert restored.step == 2
    assert restored.record.skipped_steps == ()
    assert restored.state["w"].tobytes() == state_for(2)["w"].tobytes()


def test_retention_sync_failed_save(tmp_path):
    directory = tmp_path / "ckpt"
    storage = NoSpaceStorage(directory, full_steps=[3])
    checkpointer = Checkpointer(storage, CheckpointOptions(keep_last=2))
    checkpointer.save(state_for(1), step=1)
    checkpointer.save(state_for(2), step=2)

    with pytest.raises(OSError) as raised:
        checkpointer.save(state_for(3), step=3)

    assert raised.value.errno == errno.ENOSPC
    assert checkpointer.steps() == [1, 2]
    assert checkpointer.restore().state["w"].tobytes() == state_for(2)["w"].tobytes()

    checkpointer.save(state_for(4), step=4)
    assert checkpointer.steps() == [2, 4]
    assert checkpointer.restore().step == 4


def test_retention_async_failed_save(tmp_path):
    directory = tmp_path / "ckpt"
    storage = NoSpaceStorage(directory, full_steps=[3])
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_raw", keep_last=2))
    checkpointer.save(state_for(1), step=1)
    checkpointer.save(state_for(2), step=2)
    handle = checkpointer.save(state_for(3), step=3)

    with pytest.raises(BackgroundSaveError) as raised:
        checkpointer.wait()

    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOSPC
    assert handle.done()
    assert checkpointer.steps() == [1, 2]

    checkpointer.save(state_for(4), step=4)
    checkpointer.close()
    assert Checkpointer(directory).steps() == [2, 4]
