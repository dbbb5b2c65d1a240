"""flush_on_sigterm: a SIGTERM during an async save commits it before the process ends by that signal."""

import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from strategies import Checkpointer, CheckpointOptions, ConfigError

REPO = Path(__file__).resolve().parents[1]

# The child starts an async save whose shard write sleeps 1 s, prints "saved" once
# save() has returned, and then sleeps until the parent's SIGTERM ends it.
CHILD = textwrap.dedent(
    """
    import sys
    import time

    import numpy as np

    from strategies import Checkpointer, CheckpointOptions
    from strategies.storage import LocalStorage


    class SlowStorage(LocalStorage):
        def write_file(self, path, chunks):
            time.sleep(1.0)
            return super().write_file(path, chunks)


    directory, flush = sys.argv[1], sys.argv[2] == "flush"
    options = CheckpointOptions.from_name("async_raw", flush_on_sigterm=flush)
    checkpointer = Checkpointer(SlowStorage(directory), options)
    checkpointer.save({"w": np.arange(1024, dtype=np.float32)}, step=1)
    print("saved", flush=True)
    time.sleep(60)
    print("not terminated", flush=True)
    """
)

EXPECTED = np.arange(1024, dtype=np.float32).tobytes()


def terminate_after_save(tmp_path, flush: bool) -> tuple[subprocess.Popen, bool]:
    """Run the child, send SIGTERM when it prints "saved". Return the child and whether step 1 was committed at that moment."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ckpt"), "flush" if flush else "no-flush"],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line == "saved\n", child.stderr.read() if not line else line
        committed_before = (tmp_path / "ckpt" / "step_00000001" / "manifest.json").exists()
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child, committed_before


def test_sigterm_flushes_save(tmp_path):
    child, committed_before = terminate_after_save(tmp_path, flush=True)

    assert not committed_before
    assert child.returncode == -signal.SIGTERM, child.stderr.read()
    restored = Checkpointer(tmp_path / "ckpt").restore()
    assert restored.step == 1
    assert restored.state["w"].tobytes() == EXPECTED


def test_sigterm_logs_flush(tmp_path):
    child, _ = terminate_after_save(tmp_path, flush=True)

    assert "SIGTERM: finishing pending saves" in child.stderr.read()


def test_sigterm_without_flush(tmp_path):
    child, committed_before = terminate_after_save(tmp_path, flush=False)

    assert not committed_before
    assert child.returncode == -signal.SIGTERM
    assert Checkpointer(tmp_path / "ckpt").steps() == []


def test_flush_needs_main_thread(tmp_path):
    options = CheckpointOptions.from_name("async_raw", flush_on_sigterm=True)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(Checkpointer, tmp_path / "ckpt", options)

    with pytest.raises(ConfigError) as raised:
        future.result()

    assert "main thread" in str(raised.value)
