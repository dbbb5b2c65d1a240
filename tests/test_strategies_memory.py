"""Async saves keep memory bounded: one in-flight snapshot, not one per save, with slow storage."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from strategies import Checkpointer

REPO = Path(__file__).resolve().parents[1]
STATE_BYTES = 64 << 20
SAVES = 20
WRITE_DELAY_S = 0.05

# The child makes SAVES async_zstd saves of one STATE_BYTES array with max_in_flight=1
# on storage that sleeps before each shard write. It reports the peak RSS before the
# first save and after the last, wait_slot_s and stall_s of each save, and the maximum
# number of save jobs (each contains one snapshot) alive at the start of a shard write or
# right after a save() returned.
CHILD = textwrap.dedent(
    """
    import gc
    import json
    import resource
    import sys
    import time

    import numpy as np

    from strategies import Checkpointer, CheckpointOptions
    from strategies.storage import LocalStorage
    from strategies.persist import SaveJob

    directory, state_bytes, saves, delay_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])


    def count_snapshots():
        return sum(1 for item in gc.get_objects() if isinstance(item, SaveJob))


    class SlowStorage(LocalStorage):
        alive = []

        def write_file(self, path, chunks):
            if path.endswith(".bin"):
                self.alive.append(count_snapshots())
                time.sleep(delay_s)
            return super().write_file(path, chunks)


    # Generated as float32 directly, so no float64 temporary raises the baseline peak.
    state = {"w": np.random.default_rng(0).standard_normal(state_bytes // 4, dtype=np.float32)}
    storage = SlowStorage(directory)
    options = CheckpointOptions.from_name("async_zstd", max_in_flight=1, keep_last=2)
    checkpointer = Checkpointer(storage, options)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    handles = []
    for step in range(saves):
        handles.append(checkpointer.save(state, step=step))
        storage.alive.append(count_snapshots())
    after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    checkpointer.close()

    print(json.dumps({
        "before_kib": before_kib,
        "after_kib": after_kib,
        "wait_slot_s": [handle.record.wait_slot_s for handle in handles],
        "stall_s": [handle.record.stall_s for handle in handles],
        "max_alive": max(storage.alive),
        "samples": len(storage.alive),
    }))
    """
)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("memory")
    script = directory / "child.py"
    script.write_text(CHILD)
    child = subprocess.run(
        [sys.executable, str(script), str(directory / "ckpt"), str(STATE_BYTES), str(SAVES), str(WRITE_DELAY_S)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    return {"directory": directory / "ckpt", **json.loads(child.stdout)}


def test_rss_growth_bounded(report):
    growth_bytes = (report["after_kib"] - report["before_kib"]) * 1024  # ru_maxrss is in KiB on Linux

    assert growth_bytes < 3 * STATE_BYTES


def test_one_snapshot_alive(report):
    assert report["samples"] == 2 * SAVES
    assert report["max_alive"] <= 1


def test_wait_slot_recorded(report):
    waits = report["wait_slot_s"]

    assert len(waits) == SAVES
    assert waits[0] < WRITE_DELAY_S
    for index, wait_s in enumerate(waits[1:], start=1):
        assert wait_s > WRITE_DELAY_S, f"save {index}"


def test_stall_includes_wait(report):
    for index, (stall_s, wait_s) in enumerate(zip(report["stall_s"], report["wait_slot_s"])):
        assert stall_s >= wait_s, f"save {index}"


def test_last_save_restores(report):
    checkpointer = Checkpointer(report["directory"])
    expected = np.random.default_rng(0).standard_normal(STATE_BYTES // 4, dtype=np.float32)

    restored = checkpointer.restore()

    assert checkpointer.steps() == [SAVES - 2, SAVES - 1]
    assert restored.step == SAVES - 1
    assert restored.state["w"].tobytes() == expected.tobytes()
