"""Atomic commit under SIGKILL, and how committed steps are found on disk."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from strategies import CheckpointError, Checkpointer, CheckpointOptions

REPO = Path(__file__).resolve().parents[1]

# The child saves step 1, then arms a LocalStorage subclass that kills its own process
# with SIGKILL while step 2's manifest is written. Shards are already fsynced by then.
#   manifest_write: on entry to write_atomic, before the temporary manifest exists.
#   manifest_rename: after the temporary manifest is written and fsynced, before the rename.
CHILD = textwrap.dedent(
    """
    import os
    import signal
    import sys

    import numpy as np

    from strategies import Checkpointer, CheckpointOptions
    from strategies.storage import LocalStorage

    directory, strategy, kill_point = sys.argv[1:4]


    class KillingStorage(LocalStorage):
        armed = False

        def write_atomic(self, path, data):
            if self.armed and kill_point == "manifest_write" and path.endswith("manifest.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            super().write_atomic(path, data)

        def _rename(self, source, target):
            if self.armed and kill_point == "manifest_rename" and target.name == "manifest.json":
                os.kill(os.getpid(), signal.SIGKILL)
            super()._rename(source, target)


    storage = KillingStorage(directory)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name(strategy))
    checkpointer.save({"w": np.full((64, 64), 1.0, dtype=np.float32)}, step=1, metadata={"saved": 1})
    checkpointer.wait()
    storage.armed = True
    checkpointer.save({"w": np.full((64, 64), 2.0, dtype=np.float32)}, step=2, metadata={"saved": 2})
    checkpointer.wait()
    print("step 2 committed although the process should have been killed")
    sys.exit(3)
    """
)


def state_for(step: int) -> dict:
    return {"w": np.full((64, 64), float(step), dtype=np.float32)}


def run_killed_child(tmp_path: Path, directory: Path, strategy: str, kill_point: str) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(script), str(directory), strategy, kill_point],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("kill_point", ["manifest_write", "manifest_rename"])
@pytest.mark.parametrize("strategy", ["sync_raw", "async_zstd"])
def test_sigkill_before_commit(tmp_path, strategy, kill_point):
    directory = tmp_path / "ckpt"

    child = run_killed_child(tmp_path, directory, strategy, kill_point)

    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    step_2 = directory / "step_00000002"
    assert (step_2 / "shard_00000.bin").is_file()
    assert not (step_2 / "manifest.json").exists()
    temporary_manifests = [name for name in os.listdir(step_2) if name.startswith("manifest.json.tmp-")]
    assert len(temporary_manifests) == (1 if kill_point == "manifest_rename" else 0)

    checkpointer = Checkpointer(directory, CheckpointOptions.from_name(strategy))
    assert checkpointer.steps() == [1]
    assert checkpointer.latest_step() == 1
    restored = checkpointer.restore()
    assert restored.step == 1
    assert restored.state["w"].tobytes() == state_for(1)["w"].tobytes()
    assert restored.metadata == {"saved": 1}

    checkpointer.save(state_for(2), step=2, metadata={"saved": 2})
    checkpointer.close()
    assert sorted(os.listdir(step_2)) == ["manifest.json", "shard_00000.bin"]
    reopened = Checkpointer(directory, CheckpointOptions.from_name(strategy))
    assert reopened.steps() == [1, 2]
    assert reopened.restore().state["w"].tobytes() == state_for(2)["w"].tobytes()


def save_steps(directory: Path, steps, **settings) -> Checkpointer:
    checkpointer = Checkpointer(directory, CheckpointOptions(**settings))
    for step in steps:
        checkpointer.save(state_for(step), step=step, metadata={"saved": step})
    return checkpointer


# Names are padded to 8 digits, so only steps past 99_999_999 sort wrongly as text:
# step_99999999 sorts after step_100000000.
@pytest.mark.parametrize("steps", [(9, 10), (99, 100), (10, 9), (99_999_999, 100_000_000)])
def test_latest_step_numeric(tmp_path, steps):
    checkpointer = save_steps(tmp_path / "ckpt", steps)

    assert checkpointer.latest_step() == max(steps)
    assert checkpointer.steps() == sorted(steps)
    assert checkpointer.restore().step == max(steps)


def rename_unpadded(directory: Path, steps) -> None:
    for step in steps:
        os.rename(directory / f"step_{step:08d}", directory / f"step_{step}")


def test_latest_step_unpadded_names(tmp_path):
    directory = tmp_path / "ckpt"
    save_steps(directory, [9, 10, 100])
    rename_unpadded(directory, [9, 10, 100])

    checkpointer = Checkpointer(directory)

    assert checkpointer.steps() == [9, 10, 100]
    assert checkpointer.latest_step() == 100


def test_restore_unpadded_names(tmp_path):
    directory = tmp_path / "ckpt"
    save_steps(directory, [9, 10])
    rename_unpadded(directory, [9, 10])

    restored = Checkpointer(directory).restore()

    assert restored.step == 10


def test_retention_unpadded_names(tmp_path):
    directory = tmp_path / "ckpt"
    save_steps(directory, [9, 10], run_id="run-a")
    rename_unpadded(directory, [9, 10])

    checkpointer = save_steps(directory, [11], keep_last=1, run_id="run-a")

    assert checkpointer.steps() == [11]


def test_retention_keeps_other_runs(tmp_path):
    directory = tmp_path / "ckpt"
    save_steps(directory, [9, 10], run_id="run-a")

    checkpointer = save_steps(directory, [11, 12, 13], keep_last=1, run_id="run-b")

    assert checkpointer.steps() == [9, 10, 13]


def test_steps_ignore_other_names(tmp_path):
    directory = tmp_path / "ckpt"
    checkpointer = save_steps(directory, [3])
    for name in ["step_abc", "tmp", "step_", "step_-4", "step_5.bak", "Step_00000006", "step_00000008"]:
        (directory / name).mkdir()
    for name in ["step_abc", "tmp", "step_5.bak", "step_-4"]:
        (directory / name / "manifest.json").write_text("{}")
    (directory / "step_00000007").write_text("a regular file, not a step directory")
    (directory / "notes.txt").write_text("not a step")
    (directory / "step_00000012").mkdir()
    (directory / "step_00000012" / "manifest.json.tmp-0123").write_text("{}")

    assert checkpointer.steps() == [3]
    assert checkpointer.latest_step() == 3
    assert checkpointer.restore().step == 3


def test_steps_empty_directory(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt")

    assert checkpointer.steps() == []
    assert checkpointer.latest_step() is None


def test_committed_files_on_disk(tmp_path):
    directory = tmp_path / "ckpt"

    save_steps(directory, [5])

    assert sorted(os.listdir(directory)) == [".writer.lock", "step_00000005"]
    assert sorted(os.listdir(directory / "step_00000005")) == ["manifest.json", "shard_00000.bin"]


def test_second_writer_rejected(tmp_path):
    directory = tmp_path / "ckpt"
    script = (
        "import sys, time, numpy as np\n"
        "from strategies import Checkpointer\n"
        "c = Checkpointer(sys.argv[1]); c.save({'w': np.zeros(4)}, 1)\n"
        "print('saved', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(directory)], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        assert holder.stdout.readline().strip() == "saved"
        second = Checkpointer(directory)
        with pytest.raises(CheckpointError) as raised:
            second.save(state_for(2), step=2)
        assert "another process is saving" in str(raised.value)
        assert second.steps() == [1]
    finally:
        holder.kill()
        holder.wait()

    third = Checkpointer(directory)  # the killed holder's lock went with its process
    third.save(state_for(2), step=2)
    assert third.steps() == [1, 2]
