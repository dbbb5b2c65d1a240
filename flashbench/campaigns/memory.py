"""Memory campaign: peak RSS growth of repeated async saves of one large array.

A child process fills a float32 NumPy state (one array of ``--size-mb`` MB, 1 MB =
2**20 bytes, normally distributed values) and makes ``--trials`` async_zstd saves of it
with max_in_flight=1 and keep_last=2, changing 1% of the values between saves. It
reads the peak resident set size (``resource.getrusage(...).ru_maxrss``) before the
first save, after each save returns, and after ``close()``. The growth of that peak
over the whole run must stay within 2.0 times the state size. One staged copy of the
state plus its compressed form fit in that, a second snapshot does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

DEFAULT_TRIALS = 20  # saves
DEFAULT_SIZE_MB = 256
MB = 1 << 20
LIMIT = 2.0  # peak RSS growth allowed, in multiples of the state size
REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("measurement", "label", "peak_rss_mb", "rss_mb", "growth_mb", "growth_x_state", "stall_s", "wait_slot_s")


def verdict(growth_bytes: int, state_bytes: int) -> str:
    """Return the summary line for a measured peak RSS growth."""
    ratio = growth_bytes / state_bytes
    result = "PASS" if ratio <= LIMIT else "MISS"
    return f"peak RSS growth: {growth_bytes / MB:.1f} MB = {ratio:.2f} x state (limit {LIMIT:.1f}x): {result}"


def run(trials: int, seed: int, scratch: Path, progress=None, size_mb: int = DEFAULT_SIZE_MB) -> tuple[list[dict], str]:
    """Run the child with ``trials`` saves of a ``size_mb`` MB state and return one row per measurement and the summary."""
    command = [
        sys.executable, "-m", "flashbench.campaigns.memory", "--child", str(scratch / "ckpt"), str(size_mb), str(trials),
        str(seed),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    samples = []
    for line in child.stdout:
        samples.append(json.loads(line))
        if progress:
            progress(len(samples), samples[-1]["label"])
    if child.wait() != 0:
        raise RuntimeError(f"the memory child process failed with exit status {child.returncode}: see its stderr above")

    state_bytes = size_mb * MB
    baseline = samples[0]["peak_kib"] * 1024  # ru_maxrss is in KiB on Linux
    rows = []
    for index, sample in enumerate(samples):
        growth = sample["peak_kib"] * 1024 - baseline
        rows.append({
            "measurement": index, "label": sample["label"], "peak_rss_mb": round(sample["peak_kib"] * 1024 / MB, 1),
            "rss_mb": round(sample["rss_bytes"] / MB, 1), "growth_mb": round(growth / MB, 1),
            "growth_x_state": round(growth / state_bytes, 3), "stall_s": sample.get("stall_s"),
            "wait_slot_s": sample.get("wait_slot_s"),
        })
    return rows, verdict(samples[-1]["peak_kib"] * 1024 - baseline, state_bytes)


# The child process.


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _report(label: str, **fields) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"label": label, "peak_kib": peak, "rss_bytes": _current_rss(), **fields}), flush=True)


def _child(directory: str, size_mb: int, saves: int, seed: int) -> None:
    import numpy as np

    from strategies import CheckpointOptions, Checkpointer

    rng = np.random.default_rng(seed)
    # Generated as float32 directly, so no float64 temporary raises the baseline peak.
    state = {"w": rng.standard_normal(size_mb * MB // 4, dtype=np.float32)}
    changed = max(1, state["w"].size // 100)
    checkpointer = Checkpointer(directory, CheckpointOptions.from_name("async_zstd", max_in_flight=1, keep_last=2))
    _report("before the first save")
    for step in range(1, saves + 1):
        start = int(rng.integers(0, state["w"].size - changed + 1))
        state["w"][start : start + changed] += np.float32(1e-3)  # in place: a training update allocates nothing here
        handle = checkpointer.save(state, step)
        _report(f"after save {step}", stall_s=round(handle.record.stall_s, 4), wait_slot_s=round(handle.record.wait_slot_s, 4))
    checkpointer.close()
    _report("after close")


def _child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flashbench.campaigns.memory")
    parser.add_argument("--child", required=True, metavar="DIRECTORY", help="checkpoint directory of the measured saves")
    parser.add_argument("size_mb", type=int)
    parser.add_argument("saves", type=int)
    parser.add_argument("seed", type=int)
    args = parser.parse_args(argv)
    _child(args.child, args.size_mb, args.saves, args.seed)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
