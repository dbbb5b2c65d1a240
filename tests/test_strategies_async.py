"""Async writer: background failures surface once, snapshots are taken at save time, in-flight saves are bounded."""

import errno
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from strategies import BackgroundSaveError, Checkpointer, CheckpointOptions
from strategies.storage import LocalStorage
from strategies.tree import HostArray

REPO = Path(__file__).resolve().parents[1]


class FailingStorage(LocalStorage):
    """Local storage that raises EIO on the shard writes of the steps in ``failing_steps``."""

    def __init__(self, root, failing_steps, delay_s: float = 0.0) -> None:
        super().__init__(root)
        self.failing_steps = set(failing_steps)
        self.delay_s = delay_s

    def write_file(self, path, chunks):
        if any(path.startswith(f"step_{step:08d}/") for step in self.failing_steps):
            time.sleep(self.delay_s)
            raise OSError(errno.EIO, "Input/output error (injected)", path)
        return super().write_file(path, chunks)


class SlowStorage(LocalStorage):
    """Local storage that sleeps before each shard write and records the order and overlap of writes and commits."""

    def __init__(self, root, delay_s: float) -> None:
        super().__init__(root)
        self.delay_s = delay_s
        self.committed: list[str] = []
        self.writing = 0
        self.max_writing = 0
        self._lock = threading.Lock()

    def write_file(self, path, chunks):
        if ".tmp-" in path:
            return super().write_file(path, chunks)
        with self._lock:
            self.writing += 1
            self.max_writing = max(self.max_writing, self.writing)
        try:
            time.sleep(self.delay_s)
            return super().write_file(path, chunks)
        finally:
            with self._lock:
                self.writing -= 1

    def write_atomic(self, path, data):
        super().write_atomic(path, data)
        self.committed.append(path.split("/")[0])


def state_for(step: int) -> dict:
    return {"w": np.full((16, 16), float(step), dtype=np.float32)}


def wait_until_done(handle, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not handle.done():
        assert time.monotonic() < deadline, f"save of step {handle.step} did not finish in {timeout_s} s"
        time.sleep(0.005)


def checkpointer_with_failed_save(tmp_path):
    """Return a checkpointer whose step 1 committed and whose step 2 failed in the background."""
    storage = FailingStorage(tmp_path / "ckpt", failing_steps=[2])
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_raw"))
    checkpointer.save(state_for(1), step=1).wait()
    handle = checkpointer.save(state_for(2), step=2)
    wait_until_done(handle)
    return checkpointer, handle


def assert_step_1_loadable(checkpointer) -> None:
    restored = checkpointer.restore()
    assert restored.step == 1
    assert restored.state["w"].tobytes() == state_for(1)["w"].tobytes()


def test_async_error_on_next_save(tmp_path):
    checkpointer, handle = checkpointer_with_failed_save(tmp_path)

    with pytest.raises(BackgroundSaveError) as raised:
        checkpointer.save(state_for(3), step=3)

    assert "step 2" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)
    checkpointer.wait()
    checkpointer.close()
    assert checkpointer.steps() == [1]
    assert_step_1_loadable(Checkpointer(tmp_path / "ckpt"))
    with pytest.raises(BackgroundSaveError):
        handle.wait()


def test_async_error_on_wait(tmp_path):
    checkpointer, handle = checkpointer_with_failed_save(tmp_path)

    with pytest.raises(BackgroundSaveError) as raised:
        checkpointer.wait()

    assert "step 2" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)
    checkpointer.wait()
    checkpointer.save(state_for(3), step=3)
    checkpointer.close()
    assert checkpointer.steps() == [1, 3]
    restored = Checkpointer(tmp_path / "ckpt").restore(step=1)
    assert restored.state["w"].tobytes() == state_for(1)["w"].tobytes()
    with pytest.raises(BackgroundSaveError):
        handle.wait()


def test_async_error_on_close(tmp_path):
    checkpointer, handle = checkpointer_with_failed_save(tmp_path)

    with pytest.raises(BackgroundSaveError) as raised:
        checkpointer.close()

    assert "step 2" in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError)
    checkpointer.close()
    checkpointer.wait()
    assert_step_1_loadable(Checkpointer(tmp_path / "ckpt"))
    with pytest.raises(BackgroundSaveError):
        handle.wait()


def test_async_second_error_not_lost(tmp_path):
    # Step 1 fails only after a delay, so save(2) is made while step 1 is still in flight.
    storage = FailingStorage(tmp_path / "ckpt", failing_steps=[1, 2], delay_s=0.5)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_raw", max_in_flight=2))
    checkpointer.save(state_for(1), step=1)
    handle = checkpointer.save(state_for(2), step=2)
    wait_until_done(handle)

    with pytest.raises(BackgroundSaveError) as raised:
        checkpointer.wait()

    assert "step 1, 2 failed" in str(raised.value)
    checkpointer.wait()  # each failure is raised once


def test_handle_wait_returns_record(tmp_path):
    checkpointer = Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name("async_zstd"))

    record = checkpointer.save(state_for(7), step=7).wait()

    assert record.step == 7
    assert record.persist_s >= record.snapshot_s
    assert record.bytes_state == state_for(7)["w"].nbytes
    assert record.bytes_stored > 0
    checkpointer.close()


def test_handle_wait_timeout(tmp_path):
    checkpointer = Checkpointer(SlowStorage(tmp_path / "ckpt", delay_s=0.3), CheckpointOptions.from_name("async_raw"))
    handle = checkpointer.save(state_for(1), step=1)

    with pytest.raises(TimeoutError) as raised:
        handle.wait(timeout=0.01)

    assert "step 1" in str(raised.value)
    checkpointer.close()
    assert handle.done()


def test_snapshot_numpy_in_place(tmp_path):
    storage = SlowStorage(tmp_path / "ckpt", delay_s=0.1)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_raw"))
    weights = np.arange(256, dtype=np.float32).reshape(16, 16)
    expected = weights.tobytes()
    state = {"w": weights, "layers": [weights[::2]]}

    checkpointer.save(state, step=1)
    weights += 1000.0
    weights[0, 0] = -1.0
    checkpointer.close()

    restored = Checkpointer(tmp_path / "ckpt").restore()
    assert restored.state["w"].tobytes() == expected
    assert restored.state["layers"][0].tobytes() == np.frombuffer(expected, np.float32).reshape(16, 16)[::2].tobytes()


def test_snapshot_mlx_update(tmp_path):
    storage = SlowStorage(tmp_path / "ckpt", delay_s=0.1)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_zstd"))
    weights = mx.arange(16, dtype=mx.float32)
    bias = mx.zeros((4,), dtype=mx.bfloat16)
    state = {"w": weights, "b": bias}
    expected_w = np.array(weights).tobytes()
    expected_b = np.array(bias.view(mx.uint16)).tobytes()

    checkpointer.save(state, step=1)
    weights[0] = 500.0
    state["b"] = bias + 1
    checkpointer.close()

    restored = Checkpointer(tmp_path / "ckpt").restore()
    assert np.array(restored.state["w"]).tobytes() == expected_w
    assert np.array(restored.state["b"].view(mx.uint16)).tobytes() == expected_b


def test_snapshot_metadata_update(tmp_path):
    storage = SlowStorage(tmp_path / "ckpt", delay_s=0.1)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_raw"))
    metadata = {"data_position": {"index": 1}}

    checkpointer.save(state_for(1), step=1, metadata=metadata)
    metadata["data_position"]["index"] = 999
    checkpointer.close()

    assert Checkpointer(tmp_path / "ckpt").restore().metadata == {"data_position": {"index": 1}}


def count_host_arrays() -> int:
    return sum(1 for item in gc.get_objects() if isinstance(item, HostArray))


def test_second_save_waits_for_slot(tmp_path):
    storage = SlowStorage(tmp_path / "ckpt", delay_s=0.3)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_raw", max_in_flight=1))

    first = checkpointer.save(state_for(1), step=1)
    second = checkpointer.save(state_for(2), step=2)
    checkpointer.close()

    assert first.record.wait_slot_s < 0.1
    assert first.record.stall_s < 0.1
    assert first.record.persist_s > 0.3
    assert second.record.wait_slot_s > 0.15
    assert second.record.stall_s >= second.record.wait_slot_s
    assert storage.committed == ["step_00000001", "step_00000002"]


@pytest.mark.parametrize("max_in_flight", [1, 2])
def test_in_flight_bounded(tmp_path, max_in_flight):
    storage = SlowStorage(tmp_path / "ckpt", delay_s=0.05)
    options = CheckpointOptions.from_name("async_raw", max_in_flight=max_in_flight)
    checkpointer = Checkpointer(storage, options)
    state = {"w": np.zeros((4,), dtype=np.float32)}  # one leaf, so one HostArray per snapshot
    gc.collect()
    baseline = count_host_arrays()

    alive = []
    pending = []
    for step in range(6):
        checkpointer.save(state, step=step)
        alive.append(count_host_arrays() - baseline)
        pending.append(checkpointer._writer._pending)
    checkpointer.close()

    assert max(alive) <= max_in_flight
    assert max(pending) == max_in_flight
    assert storage.max_writing == 1


def test_twenty_saves_commit_in_order(tmp_path):
    storage = SlowStorage(tmp_path / "ckpt", delay_s=0.01)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_zstd", max_in_flight=2))

    handles = [checkpointer.save(state_for(step), step=step, metadata={"step": step}) for step in range(20)]
    checkpointer.wait()

    assert all(handle.done() for handle in handles)
    assert storage.committed == [f"step_{step:08d}" for step in range(20)]
    assert checkpointer.steps() == list(range(20))
    restored = checkpointer.restore()
    assert restored.step == 19
    assert restored.state["w"].tobytes() == state_for(19)["w"].tobytes()
    checkpointer.close()


def test_writer_thread_not_daemon(tmp_path):
    storage = SlowStorage(tmp_path / "ckpt", delay_s=0.2)
    checkpointer = Checkpointer(storage, CheckpointOptions.from_name("async_raw"))

    checkpointer.save(state_for(1), step=1)
    writers = [thread for thread in threading.enumerate() if thread.name == "strategies-async-writer"]

    assert len(writers) == 1
    assert not writers[0].daemon
    checkpointer.close()


# The child returns from save() while the slow shard write is still running, and then
# exits without wait() or close().
EXIT_CHILD = textwrap.dedent(
    """
    import sys
    import time

    import numpy as np

    from strategies import Checkpointer, CheckpointOptions
    from strategies.storage import LocalStorage


    class SlowStorage(LocalStorage):
        def write_file(self, path, chunks):
            time.sleep(0.3)
            return super().write_file(path, chunks)


    checkpointer = Checkpointer(SlowStorage(sys.argv[1]), CheckpointOptions.from_name("async_zstd"))
    handle = checkpointer.save({"w": np.arange(16, dtype=np.float32)}, step=1)
    print("done" if handle.done() else "pending")
    """
)


def test_exit_finishes_pending_save(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(EXIT_CHILD)

    child = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt")],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "pending"
    restored = Checkpointer(tmp_path / "ckpt").restore()
    assert restored.state["w"].tobytes() == np.arange(16, dtype=np.float32).tobytes()
