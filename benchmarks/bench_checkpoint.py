"""Checkpoint benchmark: every strategy against the disk's limits and common formats, on trained state.

``python -m benchmarks.bench_checkpoint [--workload gpt100m] [--steps N] [--out results/bench] [--quick]``

1. A child process with fast BLAS trains the workload for ``--steps`` steps and saves the
   state with ``sync_raw`` (state A), trains one more step and saves again (state B).
2. Each method then runs in a fresh child process that restores state B with
   ``target="numpy"``, saves it, evicts the written files from the page cache and loads
   them back. ``delta_zstd`` first saves state A in full, so its measured save is the
   delta of one real training step. Disk limits are measured first and last.
3. Another child computes the order-0 byte-plane entropy bound of state B.
4. The parent writes ``bench.csv``, ``bench.md`` and ``bench.png`` and prints the targets.

Pickle appears here only as a baseline format; the ``strategies`` library never uses it.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import dataclasses
import datetime
import gzip
import importlib.metadata
import json
import math
import mmap
import os
import pickle
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from strategies import CheckpointOptions, Checkpointer
from strategies.codecs import CODECS
from strategies.tree import flatten

REPO = Path(__file__).resolve().parents[1]
GB = 1e9  # throughputs are in GB/s with 1 GB = 10^9 bytes
MB = 1e6
CHUNK = 64 << 20  # bytes per read or write call of the disk baselines
SMALL_WRITE = 1 << 20  # arrays below this size are coalesced before the sequential write
TARGET_STALL_FRACTION = 0.02
TARGET_DISK_FRACTION = 0.90
TARGET_BOUND_FRACTION = 0.95
TARGET_SPEEDUP_OVER_GZIP = 25.0
PACKAGES = ("numpy", "mlx", "zstandard", "xxhash", "cmeel-openblas", "matplotlib", "omegaconf")

COLUMNS = (
    "method", "family", "bytes_state", "bytes_stored", "ratio", "save_s", "stall_s", "persist_s",
    "snapshot_s", "encode_s", "write_s", "commit_s", "load_s", "read_s", "verify_s", "decode_s",
    "save_gbps", "load_gbps", "encode_gbps", "write_gbps", "save_peak_rss_mb", "load_peak_rss_mb",
    "base_save_s", "base_bytes_stored", "warm_read_gbps", "save_s_min", "save_s_max", "load_s_min", "load_s_max",
    "repeats", "cache_drop", "verified",
)
# Columns that keep the first repeat's value or the max over repeats instead of the median.
FIRST_OF_REPEATS = ("family", "bytes_state", "bytes_stored", "base_bytes_stored", "cache_drop")
MAX_OF_REPEATS = ("save_peak_rss_mb", "load_peak_rss_mb")


# ---------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_checkpoint", description=__doc__.split("\n")[0])
    parser.add_argument("--workload", help="workload name in conf/workload/ or a YAML path (default: gpt100m, small with --quick)")
    parser.add_argument("--steps", type=int, default=3, help="training steps before state A; state B is one step later (default: 3)")
    parser.add_argument("--out", default="results/bench", help="folder for bench.csv, bench.md and bench.png (default: results/bench)")
    parser.add_argument("--quick", action="store_true", help="smoke run on the small workload (about 18 MB of state)")
    parser.add_argument(
        "--scratch", default=".",
        help="folder in which a temporary scratch folder is created and deleted; it must be on the disk to measure (default: .)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="save-and-load cycles per method; the table shows the median (default: 3)",
    )
    parser.add_argument("--zstd-level", type=int, default=3, help="Zstandard level of the zstd codecs (default: 3)")
    parser.add_argument("--zstd-threads", type=int, default=2, help="Zstandard worker threads of the zstd codecs (default: 2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: the role of a child process
    parser.add_argument("--spec", help=argparse.SUPPRESS)  # internal: the JSON spec of a child process
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"invalid --steps {args.steps}: expected 1 or more")
    if args.repeats < 1:
        parser.error(f"invalid --repeats {args.repeats}: expected 1 or more")
    if args.workload is None:
        args.workload = "small" if args.quick else "gpt100m"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return run_role(args.child, Path(args.spec))
    return run_benchmark(args, argv)


# ---------------------------------------------------------------------------
# The parent process


def run_benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    workload = load_workload(args.workload)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".bench-scratch-", dir=args.scratch)).resolve()
    print(f"scratch folder: {scratch} (deleted at the end)", flush=True)
    try:
        machine = describe_machine(scratch)
        training = train_state(args, workload, scratch)
        training_s = time.perf_counter() - started
        rows = measure_methods(args, training, scratch)
        print("entropy bound and codec parts", flush=True)
        spec = {
            "state_dir": training["state_dir"], "step": training["step"],
            "zstd_level": args.zstd_level, "zstd_threads": args.zstd_threads,
        }
        entropy = run_child("entropy", spec, scratch)
    finally:
        shutil.rmtree(scratch)
        print(f"deleted scratch folder {scratch}", flush=True)

    wall_s = time.perf_counter() - started
    command = shlex.join(["python", "-m", "benchmarks.bench_checkpoint", *argv])
    targets = evaluate_targets(rows, entropy, args)
    machine["load_average_end"] = os.getloadavg()
    run = {"command": command, "wall_s": wall_s, "training_s": training_s, "machine": machine, "training": training}
    write_csv(rows, out / "bench.csv")
    write_plot(rows, out / "bench.png")
    report = render_report(run, rows, entropy, targets, args)
    (out / "bench.md").write_text(report)
    print("\n" + report, flush=True)
    print(f"wrote {out / 'bench.csv'}, {out / 'bench.md'} and {out / 'bench.png'} in {wall_s:.0f} s", flush=True)
    return 0


def load_workload(name: str) -> dict:
    from omegaconf import OmegaConf

    path = Path(name) if name.endswith((".yaml", ".yml")) else REPO / "conf" / "workload" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (REPO / "conf" / "workload").glob("*.yaml"))
        raise SystemExit(f"workload {name!r} not found at {path}: expected one of {', '.join(known)} or a YAML path")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def child_env(fast_blas: bool) -> dict[str, str]:
    from flashbench.blas import fast_blas_env

    env = fast_blas_env() if fast_blas else dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_child(role: str, spec: dict, scratch: Path, fast_blas: bool = False) -> dict:
    """Run one role in a fresh Python process; return the JSON result it writes."""
    label = spec.get("label", role)
    spec_path = scratch / f"{label}.spec.json"
    result_path = scratch / f"{label}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    command = [sys.executable, "-m", "benchmarks.bench_checkpoint", "--child", role, "--spec", str(spec_path)]
    completed = subprocess.run(command, cwd=REPO, env=child_env(fast_blas), check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the {label} child process failed with exit code {completed.returncode}; its output is above")
    return json.loads(result_path.read_text())


def train_state(args: argparse.Namespace, workload: dict, scratch: Path) -> dict:
    print(f"training {workload.get('name', args.workload)} for {args.steps + 1} steps in a child process with fast BLAS", flush=True)
    spec = {"workload": workload, "seed": args.seed, "steps": args.steps, "state_dir": str(scratch / "state")}
    training = run_child("train", spec, scratch, fast_blas=True)
    training["state_dir"] = spec["state_dir"]
    return training


def method_plan() -> list[tuple[str, str]]:
    """Return (label, method) pairs in run order: disk limits first and last, sync next to async."""
    plan = [("disk_sequential_first", "disk_sequential")]
    for codec in CODECS:
        plan += [(f"{writer}_{codec}", f"{writer}_{codec}") for writer in ("sync", "async")]
    plan += [(name, name) for name in BASELINES]
    plan.append(("disk_sequential_last", "disk_sequential"))
    return plan


def measure_methods(args: argparse.Namespace, training: dict, scratch: Path) -> list[dict]:
    rows = []
    plan = method_plan()
    for index, (label, method) in enumerate(plan, 1):
        print(f"[{index}/{len(plan)}] {label}", flush=True)
        work = scratch / "work" / label
        spec = {
            "label": label, "method": method, "state_dir": training["state_dir"], "step": training["step"],
            "base_step": training["base_step"], "work_dir": str(work),
            "zstd_level": args.zstd_level, "zstd_threads": args.zstd_threads, "repeats": args.repeats,
        }
        row = run_child("measure", spec, scratch)
        shutil.rmtree(work, ignore_errors=True)
        print(
            f"    save {row['save_s']:.3f} s ({row['save_gbps']:.3f} GB/s), stall {row['stall_s']:.3f} s, "
            f"ratio {row['ratio']:.3f}, load {row['load_s']:.3f} s ({row['load_gbps']:.3f} GB/s), verified {row['verified']}",
            flush=True,
        )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Child processes


def run_role(role: str, spec_path: Path) -> int:
    roles = {"train": child_train, "measure": child_measure, "entropy": child_entropy}
    if role not in roles:
        raise SystemExit(f"unknown child role {role!r}: expected one of {', '.join(roles)}")
    spec = json.loads(spec_path.read_text())
    result = roles[role](spec)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def child_train(spec: dict) -> dict:
    """Train, then save state A at step ``steps`` and state B one step later with sync_raw."""
    from flashbench.blas import loaded_blas
    from flashbench.train import Trainer, TrainSpec

    first = spec["steps"]
    trainer = Trainer(TrainSpec(workload=spec["workload"], seed=spec["seed"], steps=first + 1))
    trainer.compile()
    history = []
    with Checkpointer(spec["state_dir"], CheckpointOptions.from_name("sync_raw")) as checkpointer:
        for target in (first, first + 1):
            while trainer.step < target:
                started = time.perf_counter()
                loss = trainer.train_one()
                step_s = time.perf_counter() - started
                history.append({"step": trainer.step, "loss": loss, "step_s": step_s})
                print(f"    train step {trainer.step}/{first + 1}: loss {loss:.4f} in {step_s:.1f} s", flush=True)
            checkpointer.save(trainer.state(), trainer.step, trainer.metadata()).wait()
    return {
        "parameters": trainer.parameters, "base_step": first, "step": first + 1, "history": history,
        "blas": loaded_blas(), "workload": spec["workload"],
    }


def child_measure(spec: dict) -> dict:
    """Run ``repeats`` save-and-load cycles of one method, each in a new folder; return the combined row."""
    method = spec["method"]
    state = restore_state(spec["state_dir"], spec["step"])
    base = restore_state(spec["state_dir"], spec["base_step"]) if method.endswith("delta_zstd") else None
    runs = []
    for index in range(spec["repeats"]):
        work = Path(spec["work_dir"]) / f"run_{index}"
        work.mkdir(parents=True)
        if method == "disk_sequential":
            runs.append(measure_disk(flat_arrays(state), work))
        elif method in BASELINES:
            runs.append(measure_baseline(BASELINES[method], flat_arrays(state), work))
        else:
            runs.append(measure_strategy(method, state, base, spec, work))
        shutil.rmtree(work)
    return finish_row({**combine_runs(runs), "method": spec["label"]})


def combine_runs(runs: list[dict]) -> dict:
    """Merge the rows of repeated cycles: the median of each time, the max of each peak RSS."""
    row = {}
    for column in runs[0]:
        values = [run[column] for run in runs]
        if column in FIRST_OF_REPEATS:
            row[column] = values[0]
        elif column == "verified":
            row[column] = all(values)
        elif column in MAX_OF_REPEATS:
            row[column] = None if None in values else max(values)
        else:
            row[column] = statistics.median(values)
    for column in ("save_s", "load_s"):
        row[f"{column}_min"] = min(run[column] for run in runs)
        row[f"{column}_max"] = max(run[column] for run in runs)
    row["repeats"] = len(runs)
    return row


def restore_state(state_dir: str, step: int):
    with Checkpointer(state_dir, read_only=True) as checkpointer:
        return checkpointer.restore(step, target="numpy").state


def flat_arrays(state) -> dict[str, np.ndarray]:
    """Map each array's path in ``state`` to the array, without copying."""
    return {leaf.name: leaf.data for leaf in flatten(state, copy=False)[1]}


def same_arrays(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> bool:
    """Return True when both have the same names, dtypes, shapes and bytes."""
    if sorted(expected) != sorted(actual):
        return False
    for name, array in expected.items():
        other = np.asarray(actual[name])
        if other.dtype != array.dtype or other.shape != array.shape:
            return False
        if not np.array_equal(other.reshape(-1).view(np.uint8), array.reshape(-1).view(np.uint8)):
            return False
    return True


def finish_row(row: dict) -> dict:
    """Fill the derived columns: ratio and throughputs."""
    state = row["bytes_state"]
    row["ratio"] = state / row["bytes_stored"] if row.get("bytes_stored") else float("nan")
    row["save_gbps"] = state / row["save_s"] / GB
    row["load_gbps"] = state / row["load_s"] / GB
    if row.get("encode_s"):
        row["encode_gbps"] = state / row["encode_s"] / GB
    if row.get("write_s"):
        row["write_gbps"] = row["bytes_stored"] / row["write_s"] / GB
    return row


class PeakRss:
    """Peak resident memory above the level at entry, from /proc/self (Linux).

    Entry resets the kernel's high-water mark (``clear_refs`` 5), so the peak covers only
    the block. Off Linux ``increase_mb`` stays None.
    """

    increase_mb: float | None = None

    def __enter__(self) -> "PeakRss":
        release_free_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._start_kib = _status_kib("VmRSS")
        except OSError:
            self._start_kib = None
        return self

    def __exit__(self, *exc_info) -> None:
        if self._start_kib is not None:
            self.increase_mb = (_status_kib("VmHWM") - self._start_kib) * 1024 / MB


def release_free_memory() -> None:
    """Return freed heap memory to the OS, so that RSS counts live memory only.

    glibc keeps freed chunks resident and reuses them, which would hide allocations
    from the high-water mark, so ``malloc_trim(0)`` releases them. Without glibc this
    step does nothing. MLX keeps a cache of freed buffers of its own, cleared here too.
    """
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        mx.clear_cache()
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} missing from /proc/self/status")


def drop_page_cache(folder: Path) -> str:
    """Evict the files under ``folder`` from the page cache; return what ran and what stayed cached.

    Every file gets ``posix_fadvise(DONTNEED)``; as root, ``/proc/sys/vm/drop_caches``
    also drops the whole cache. The files must already be fsynced, because fadvise
    leaves dirty pages in the cache. The result names each method with the share of the
    files' pages still cached after it, e.g. ``fadvise 0.0% + drop_caches 0.0%``.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    steps = []
    os.sync()
    if hasattr(os, "posix_fadvise"):
        for path in files:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)
        steps.append(f"fadvise {_cached_share(files)}")
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        steps.append(f"drop_caches {_cached_share(files)}")
    except OSError:
        pass
    return " + ".join(steps) or "none"


def _cached_share(files: list[Path]) -> str:
    counts = [cached_pages(path) for path in files]
    if not counts or None in counts:
        return "(cached share unknown)"
    cached, total = sum(c for c, _ in counts), sum(t for _, t in counts)
    return f"{cached / max(total, 1) * 100:.1f}%"


def cached_pages(path: Path) -> tuple[int, int] | None:
    """Return (pages in the page cache, pages) of ``path`` from mincore(2), or None where unavailable."""
    size = path.stat().st_size
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    if size == 0:
        return 0, 0
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    descriptor = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, descriptor, 0)
        if address is None or address == ctypes.c_void_p(-1).value:
            return None
        try:
            residency = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(address), size, residency) != 0:
                return None
            return int((np.frombuffer(residency, np.uint8) & 1).sum()), pages
        finally:
            libc.munmap(ctypes.c_void_p(address), size)
    finally:
        os.close(descriptor)


def fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------
# Strategies of the library


def measure_strategy(method: str, state, base_state, spec: dict, work: Path) -> dict:
    options = CheckpointOptions.from_name(method, zstd_level=spec["zstd_level"], zstd_threads=spec["zstd_threads"])
    row = {"family": "strategy"}
    with Checkpointer(work, options) as checkpointer:
        if options.codec == "delta_zstd":
            base = checkpointer.save(base_state, spec["base_step"]).wait()
            row.update(base_save_s=base.persist_s, base_bytes_stored=base.bytes_stored)
        with PeakRss() as peak:
            started = time.perf_counter()
            record = checkpointer.save(state, spec["step"]).wait()
            row["save_s"] = time.perf_counter() - started
    row["save_peak_rss_mb"] = peak.increase_mb
    for field in ("stall_s", "persist_s", "snapshot_s", "encode_s", "write_s", "commit_s", "bytes_state", "bytes_stored"):
        row[field] = getattr(record, field)

    row["cache_drop"] = drop_page_cache(work)
    with Checkpointer(work, options, read_only=True) as reader, PeakRss() as peak:
        started = time.perf_counter()
        restored = reader.restore(spec["step"], target="numpy")
        row["load_s"] = time.perf_counter() - started
    row["load_peak_rss_mb"] = peak.increase_mb
    for field in ("read_s", "verify_s", "decode_s"):
        row[field] = getattr(restored.record, field)
    row["verified"] = same_arrays(flat_arrays(state), flat_arrays(restored.state))
    return row


# ---------------------------------------------------------------------------
# Disk limits and baseline formats


def measure_disk(arrays: dict[str, np.ndarray], work: Path) -> dict:
    """Time a sequential write of the state's bytes to one file, then a cold and a warm read."""
    path = work / "sequential.bin"
    with PeakRss() as save_peak:
        started = time.perf_counter()
        written = write_sequential(path, arrays.values())
        save_s = time.perf_counter() - started
    buffer = bytearray(written)

    cache_drop = drop_page_cache(work)
    with PeakRss() as load_peak:
        load_s = _timed_read(path, buffer)
    warm_s = _timed_read(path, buffer)
    return {
        "family": "disk", "bytes_state": written, "bytes_stored": written, "save_s": save_s, "stall_s": save_s,
        "persist_s": save_s, "write_s": save_s, "load_s": load_s, "read_s": load_s,
        "save_peak_rss_mb": save_peak.increase_mb, "load_peak_rss_mb": load_peak.increase_mb,
        "warm_read_gbps": written / warm_s / GB, "cache_drop": cache_drop,
        "verified": _matches_concatenation(buffer, arrays.values()),
    }


def write_sequential(path: Path, arrays) -> int:
    """Write every array's bytes to ``path`` in large writes, fsync it; return the byte count."""
    written = 0
    pending = bytearray()
    with open(path, "wb", buffering=0) as handle:
        for array in arrays:
            data = memoryview(array.reshape(-1).view(np.uint8))
            if len(data) < SMALL_WRITE:
                pending += data
                if len(pending) < CHUNK:
                    continue
                data, pending = memoryview(pending), bytearray()
            elif pending:
                written += _write_all(handle, memoryview(pending))
                pending = bytearray()
            written += _write_all(handle, data)
        if pending:
            written += _write_all(handle, memoryview(pending))
        os.fsync(handle.fileno())
    return written


def _write_all(handle, data: memoryview) -> int:
    done = 0
    while done < len(data):
        done += handle.write(data[done : done + CHUNK])
    return done


def _timed_read(path: Path, buffer: bytearray) -> float:
    view = memoryview(buffer)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        done = 0
        while done < len(view):
            count = handle.readinto(view[done : done + CHUNK])
            if not count:
                raise OSError(f"{path} ended after {done} of {len(view)} bytes")
            done += count
    return time.perf_counter() - started


def _matches_concatenation(buffer: bytearray, arrays) -> bool:
    offset = 0
    for array in arrays:
        data = array.reshape(-1).view(np.uint8)
        if not np.array_equal(np.frombuffer(buffer, np.uint8, len(data), offset), data):
            return False
        offset += len(data)
    return offset == len(buffer)


@dataclasses.dataclass(frozen=True)
class Baseline:
    """A common way to save and load a dict of arrays, timed like a strategy."""

    save: Callable[[dict, Path], None]
    load: Callable[[Path, list[str]], dict]
    prepare: Callable[[dict], dict] = lambda arrays: arrays  # untimed conversion before the save
    to_numpy: Callable[[dict], dict] = lambda arrays: arrays  # untimed conversion before verification


def measure_baseline(baseline: Baseline, arrays: dict[str, np.ndarray], work: Path) -> dict:
    prepared = baseline.prepare(arrays)
    with PeakRss() as save_peak:
        started = time.perf_counter()
        baseline.save(prepared, work)
        save_s = time.perf_counter() - started
    del prepared
    stored = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
    cache_drop = drop_page_cache(work)
    with PeakRss() as load_peak:
        started = time.perf_counter()
        loaded = baseline.load(work, list(arrays))
        load_s = time.perf_counter() - started
    return {
        "family": "baseline", "bytes_state": sum(a.nbytes for a in arrays.values()), "bytes_stored": stored,
        "save_s": save_s, "stall_s": save_s, "persist_s": save_s, "load_s": load_s,
        "save_peak_rss_mb": save_peak.increase_mb, "load_peak_rss_mb": load_peak.increase_mb,
        "cache_drop": cache_drop, "verified": same_arrays(arrays, baseline.to_numpy(loaded)),
    }


def save_numpy(arrays: dict, folder: Path) -> None:
    for index, array in enumerate(arrays.values()):
        with open(folder / f"{index:05d}.npy", "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
    fsync_path(folder)


def load_numpy(folder: Path, names: list[str]) -> dict:
    return {name: np.load(folder / f"{index:05d}.npy", allow_pickle=False) for index, name in enumerate(names)}


def save_pickle(arrays: dict, folder: Path) -> None:
    with open(folder / "state.pkl", "wb") as handle:
        pickle.dump(arrays, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())


def load_pickle(folder: Path, names: list[str]) -> dict:
    # Baseline only: this reads back the file this process has just written.
    with open(folder / "state.pkl", "rb") as handle:
        return pickle.load(handle)


def save_pickle_gzip(arrays: dict, folder: Path) -> None:
    with gzip.open(folder / "state.pkl.gz", "wb", compresslevel=6) as handle:
        pickle.dump(arrays, handle, protocol=pickle.HIGHEST_PROTOCOL)
    fsync_path(folder / "state.pkl.gz")


def load_pickle_gzip(folder: Path, names: list[str]) -> dict:
    # Baseline only: this reads back the file this process has just written.
    with gzip.open(folder / "state.pkl.gz", "rb") as handle:
        return pickle.load(handle)


def to_mlx(arrays: dict) -> dict:
    import mlx.core as mx

    converted = {name: mx.array(array) for name, array in arrays.items()}
    mx.eval(list(converted.values()))
    return converted


def save_safetensors(arrays: dict, folder: Path) -> None:
    import mlx.core as mx

    mx.save_safetensors(str(folder / "state.safetensors"), arrays)
    fsync_path(folder / "state.safetensors")


def load_safetensors(folder: Path, names: list[str]) -> dict:
    import mlx.core as mx

    arrays = mx.load(str(folder / "state.safetensors"))
    mx.eval(list(arrays.values()))  # mx.load is lazy: evaluation reads the data
    return arrays


def mlx_to_numpy(arrays: dict) -> dict:
    return {name: np.array(array) for name, array in arrays.items()}


BASELINES = {
    "numpy_save": Baseline(save_numpy, load_numpy),
    "mlx_safetensors": Baseline(save_safetensors, load_safetensors, prepare=to_mlx, to_numpy=mlx_to_numpy),
    "pickle": Baseline(save_pickle, load_pickle),
    "pickle_gzip6": Baseline(save_pickle_gzip, load_pickle_gzip),
}


# ---------------------------------------------------------------------------
# Order-0 byte-plane entropy bound


def child_entropy(spec: dict) -> dict:
    """Compute the order-0 entropy of each byte plane of the float32 arrays of the state.

    Byte k of every little-endian float32 forms plane k; plane 3 contains the sign and the
    high exponent bits. ``plane_bound_ratio`` uses one histogram per plane over the whole
    state. ``array_plane_bound_ratio`` uses one per plane of each array, which a coder
    that adapts its table to each array could approach. Arrays of other dtypes count as
    stored uncompressed.
    """
    arrays = flat_arrays(restore_state(spec["state_dir"], spec["step"]))
    histograms = np.zeros((4, 256), dtype=np.int64)
    array_plane_bits = 0.0
    other_bytes = 0
    for array in arrays.values():
        if array.dtype != np.float32:
            other_bytes += array.nbytes
            continue
        planes = array.reshape(-1).view(np.uint8).reshape(-1, 4)
        for plane in range(4):
            counts = np.bincount(planes[:, plane], minlength=256)
            histograms[plane] += counts
            array_plane_bits += entropy_bits_per_byte(counts) * counts.sum()

    plane_bits = [entropy_bits_per_byte(counts) for counts in histograms]
    parts = time_codec_parts(list(arrays.values()), spec["zstd_level"], spec["zstd_threads"])
    float_bytes = int(histograms.sum())
    plane_stored = sum(bits * counts.sum() / 8 for bits, counts in zip(plane_bits, histograms)) + other_bytes
    total = float_bytes + other_bytes
    return {
        "float32_bytes": float_bytes, "other_bytes": other_bytes, "plane_bits_per_byte": plane_bits,
        "plane_bound_ratio": total / plane_stored,
        "array_plane_bound_ratio": total / (array_plane_bits / 8 + other_bytes),
        "codec_parts_gbps": parts,
    }


def time_codec_parts(arrays: list[np.ndarray], level: int, threads: int) -> dict[str, float]:
    """Time each step of the bytegroup_zstd encoder alone over the state, in GB/s of state."""
    import xxhash
    import zstandard

    from strategies.codecs import group_bytes

    total = sum(array.nbytes for array in arrays)
    buffers = [memoryview(array.reshape(-1).view(np.uint8)) for array in arrays]
    speeds = {}
    started = time.perf_counter()
    grouped = [group_bytes(buffer, array.dtype.itemsize) for buffer, array in zip(buffers, arrays)]
    speeds["byte grouping"] = total / (time.perf_counter() - started) / GB
    for count in sorted({0, threads}):
        compressor = zstandard.ZstdCompressor(level=level, threads=count)
        started = time.perf_counter()
        for data in grouped:
            compressor.compress(data)
        speeds[f"zstd level {level}, {count} threads"] = total / (time.perf_counter() - started) / GB
    started = time.perf_counter()
    for buffer in buffers:
        xxhash.xxh3_64_hexdigest(buffer)
    speeds["xxh3 checksum"] = total / (time.perf_counter() - started) / GB
    return speeds


def entropy_bits_per_byte(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    probabilities = counts[counts > 0] / total
    return float(-(probabilities * np.log2(probabilities)).sum())


# ---------------------------------------------------------------------------
# Targets


@dataclasses.dataclass
class Target:
    """One target line: what is compared, the measured value, the threshold and the measured breakdown."""

    name: str
    value: float
    threshold: float
    higher_is_better: bool
    unit: str
    detail: str

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def line(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        share = self.value / self.threshold
        if self.higher_is_better:
            margin_text = f"{abs(share - 1) * 100:.1f}% {'above' if self.passed else 'below'} the target"
        elif self.passed:
            margin_text = f"{(1 - share) * 100:.1f}% below the limit"
        else:
            margin_text = f"{share:.1f} times the limit"
        comparison = ">=" if self.higher_is_better else "<="
        return (
            f"{verdict} {self.name}: {self.value:.4g}{self.unit} (target {comparison} {self.threshold:.4g}{self.unit}), "
            f"{margin_text}. {self.detail}"
        )


def evaluate_targets(rows: list[dict], entropy: dict, args: argparse.Namespace) -> list[Target]:
    by_method = {row["method"]: row for row in rows}
    write_limit, read_limit = disk_limits(rows)
    targets = [stall_target(by_method, codec) for codec in CODECS]
    targets += raw_targets(by_method, write_limit, read_limit)
    best = best_codec(by_method)
    targets += codec_targets(best, entropy, write_limit, args)
    gzip_row = by_method["pickle_gzip6"]
    targets.append(Target(
        f"save with {best['method']} vs pickle + gzip level 6", gzip_row["save_s"] / best["save_s"],
        TARGET_SPEEDUP_OVER_GZIP, True, "x",
        f"pickle + gzip took {gzip_row['save_s']:.2f} s ({gzip_row['save_gbps']:.3f} GB/s, ratio {gzip_row['ratio']:.3f}), "
        f"{best['method']} {best['save_s']:.2f} s.",
    ))
    return targets


def disk_limits(rows: list[dict]) -> tuple[float, float]:
    """Return the higher sequential write and cold read throughputs (GB/s) of the disk rows."""
    disk = [row for row in rows if row["family"] == "disk"]
    return max(row["save_gbps"] for row in disk), max(row["load_gbps"] for row in disk)


def best_codec(by_method: dict) -> dict:
    """Return the sync row of the full-state lossless codec with the highest ratio (delta excluded)."""
    candidates = [by_method[f"sync_{codec}"] for codec in CODECS if codec not in ("raw", "delta_zstd")]
    return max(candidates, key=lambda row: row["ratio"])


def stall_target(by_method: dict, codec: str) -> Target:
    async_row, sync_row = by_method[f"async_{codec}"], by_method[f"sync_{codec}"]
    return Target(
        f"async_{codec} blocking time / sync_{codec} save time", async_row["stall_s"] / sync_row["save_s"] * 100,
        TARGET_STALL_FRACTION * 100, False, "%",
        f"Stall {async_row['stall_s']:.3f} s, of which the snapshot copy is {async_row['snapshot_s']:.3f} s "
        f"({async_row['bytes_state'] / async_row['snapshot_s'] / GB:.2f} GB/s); sync save {sync_row['save_s']:.3f} s.",
    )


def raw_targets(by_method: dict, write_limit: float, read_limit: float) -> list[Target]:
    raw = by_method["sync_raw"]
    fastest = max((row for row in by_method.values() if row["family"] == "baseline"), key=lambda row: row["load_gbps"])
    save = Target(
        "sync_raw save throughput / sequential-write limit", raw["save_gbps"] / write_limit * 100,
        TARGET_DISK_FRACTION * 100, True, "%",
        f"{raw['save_gbps']:.3f} vs {write_limit:.3f} GB/s; of the {raw['save_s']:.3f} s, checksums "
        f"{raw['encode_s']:.3f} s, shard write and fsync {raw['write_s']:.3f} s, manifest commit {raw['commit_s']:.3f} s.",
    )
    load = Target(
        "sync_raw load throughput / cold-read limit", raw["load_gbps"] / read_limit * 100,
        TARGET_DISK_FRACTION * 100, True, "%",
        f"{raw['load_gbps']:.3f} vs {read_limit:.3f} GB/s; of the {raw['load_s']:.3f} s, read {raw['read_s']:.3f} s, "
        f"shard checksum {raw['verify_s']:.3f} s, per-array checksum, copies and conversion {raw['decode_s']:.3f} s. "
        f"The fastest baseline load, {fastest['method']}, reached {fastest['load_gbps']:.3f} GB/s on the same bytes.",
    )
    return [save, load]


def codec_targets(best: dict, entropy: dict, write_limit: float, args: argparse.Namespace) -> list[Target]:
    # The higher of the two order-0 bounds, because zstd codes array by array and so
    # can approach the bound with one table per plane of each array.
    bound = max(entropy["plane_bound_ratio"], entropy["array_plane_bound_ratio"])
    ratio = Target(
        f"{best['method']} ratio / order-0 byte-plane bound", best["ratio"] / bound * 100,
        TARGET_BOUND_FRACTION * 100, True, "%",
        f"Ratio {best['ratio']:.4f} vs bound {bound:.4f} (the larger of {entropy['plane_bound_ratio']:.4f} with one "
        f"histogram per plane over the state and {entropy['array_plane_bound_ratio']:.4f} with one per plane of each "
        f"array). zstd level {args.zstd_level}.",
    )
    speed = Target(
        f"{best['method']} encode throughput ({args.zstd_threads} zstd threads) / sequential-write limit",
        best["encode_gbps"] / write_limit * 100, 100.0, True, "%",
        f"Encode {best['encode_gbps']:.3f} GB/s of state (codec and checksums, {best['encode_s']:.3f} s) vs disk "
        f"{write_limit:.3f} GB/s; the writer encodes and writes one piece after the other, so the save took "
        f"{best['save_s']:.3f} s = encode {best['encode_s']:.3f} s + write {best['write_s']:.3f} s + commit {best['commit_s']:.3f} s.",
    )
    return [ratio, speed]


# ---------------------------------------------------------------------------
# Machine description and outputs


def describe_machine(scratch: Path) -> dict:
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": _meminfo_kib("MemTotal") / 2**20,
        "filesystem": _filesystem_of(scratch), "scratch": str(scratch), "load_average": os.getloadavg(),
        "python": platform.python_version(), "platform": platform.platform(), "packages": _package_versions(),
        "commit": _git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kib(field: str) -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _filesystem_of(path: Path) -> str:
    """Describe the mount that contains ``path``: device, type, mount point and size."""
    best = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount_point, fs_type = line.split()[:3]
            if str(path).startswith(mount_point.rstrip("/") + "/") and (best is None or len(mount_point) > len(best[1])):
                best = (device, mount_point, fs_type)
    except OSError:
        pass
    usage = shutil.disk_usage(path)
    size = f"{usage.total / 2**30:.0f} GiB, {usage.free / 2**30:.0f} GiB free"
    if best is None:
        return f"unknown filesystem ({size})"
    device, mount_point, fs_type = best
    return f"{device} ({fs_type}, mounted at {mount_point}, {size}{_disk_kind(device)})"


def _disk_kind(device: str) -> str:
    name = Path(device).name.rstrip("0123456789")
    rotational = Path(f"/sys/block/{name}/queue/rotational")
    try:
        return ", rotational" if rotational.read_text().strip() == "1" else ", non-rotational"
    except OSError:
        return ""


def _package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + (" with uncommitted changes" if status.stdout.strip() else "")


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: _csv_value(row.get(column)) for column in COLUMNS})


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [row for row in rows if row["family"] != "disk"]
    write_limit, read_limit = disk_limits(rows)
    names = [row["method"] for row in methods]
    positions = np.arange(len(names))
    figure, axes = plt.subplots(1, 2, figsize=(13, 0.42 * len(names) + 1.8), sharey=True)
    panels = (("save", "save_gbps", write_limit, "sequential write"), ("load", "load_gbps", read_limit, "cold read"))
    for axis, (title, column, limit, limit_name) in zip(axes, panels):
        values = [row[column] for row in methods]
        colors = ["tab:blue" if row["family"] == "strategy" else "tab:gray" for row in methods]
        axis.barh(positions, values, color=colors)
        for position, value in zip(positions, values):
            axis.text(value * 1.05, position, f"{value:.3g}", va="center", fontsize=8)
        axis.axvline(limit, color="tab:red", linestyle="--", label=f"disk {limit_name}: {limit:.3g} GB/s")
        axis.set_xscale("log")
        axis.set_xlim(min(values) / 2, max(values + [limit]) * 3)
        axis.set_xlabel(f"{title} throughput, GB/s of state (1 GB = 1e9 bytes, log scale)")
        axis.set_title(f"{title} (blue: strategies, gray: baselines)")
        axis.legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(positions, names)
    axes[0].invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def render_report(run: dict, rows: list[dict], entropy: dict, targets: list[Target], args) -> str:
    machine, training = run["machine"], run["training"]
    write_limit, read_limit = disk_limits(rows)
    state_bytes = rows[0]["bytes_state"]
    lines = [
        "# Checkpoint benchmark",
        "",
        f"Command (from the repository root): `{run['command']}`",
        "",
        f"Wall time {run['wall_s']:.0f} s, of which training {run['training_s']:.0f} s; run on {machine['date']} "
        f"at commit {machine['commit']}.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores; RAM {machine['ram_gib']:.1f} GiB; "
        f"load average {_load_average(machine['load_average'])} at the start and "
        f"{_load_average(machine['load_average_end'])} at the end (other jobs may share the machine)",
        f"- Scratch folder: `{machine['scratch']}` on {machine['filesystem']}; deleted after the run",
        f"- Python {machine['python']} on {machine['platform']}; "
        + ", ".join(f"{name} {version}" for name, version in machine["packages"].items()),
        f"- Training BLAS: `{training['blas']}`",
        "",
        *state_section(training, entropy, state_bytes),
        "",
        "## Results",
        "",
        *results_table(rows),
        "",
        *method_notes(rows, args, write_limit, read_limit),
        "",
        "## Targets",
        "",
        *[f"- {target.line()}" for target in targets],
        "",
        "## Order-0 byte-plane entropy of the float32 arrays",
        "",
        "| plane | bytes | entropy, bits/byte | order-0 ratio |",
        "|---|---|---|---|",
        *[
            f"| {plane} ({name}) | {entropy['float32_bytes'] // 4} | {bits:.3f} | {8 / bits if bits else math.inf:.3f} |"
            for plane, (name, bits) in enumerate(
                zip(("mantissa low", "mantissa middle", "mantissa high + exponent low bit", "sign + 7 exponent bits"),
                    entropy["plane_bits_per_byte"])
            )
        ],
        "",
        f"Bound for the whole state: ratio {entropy['plane_bound_ratio']:.4f} with one histogram per plane, "
        f"{entropy['array_plane_bound_ratio']:.4f} with one per plane of each array; "
        f"{entropy['other_bytes']} bytes of other dtypes count as stored uncompressed.",
        "",
        "Steps of the `bytegroup_zstd` encoder timed alone over state B (GB/s of state): "
        + ", ".join(f"{name} {speed:.3f}" for name, speed in entropy["codec_parts_gbps"].items())
        + ". The library's encode time also includes two xxh3 checksums per piece (raw and encoded bytes).",
        "",
    ]
    return "\n".join(lines)


def _load_average(values) -> str:
    return "/".join(f"{value:.2f}" for value in values)


def state_section(training: dict, entropy: dict, state_bytes: int) -> list[str]:
    history = training["history"]
    losses = ", ".join(f"{item['loss']:.3f}" for item in history)
    step_times = ", ".join(f"{item['step_s']:.1f}" for item in history)
    return [
        "## State",
        "",
        f"- Workload `{training['workload'].get('name')}`: {training['parameters']:,} parameters; the state "
        f"(parameters, AdamW state, RNG key) is {state_bytes:,} bytes, {entropy['float32_bytes']:,} of them float32.",
        f"- Trained {len(history)} steps (loss {losses}; seconds per step {step_times}), saved with `sync_raw` at step "
        f"{training['base_step']} (state A) and {training['step']} (state B). Every method saves and loads state B; "
        f"`delta_zstd` first saves state A in full and its row is the delta save of state B.",
        f"- NOTE: after {training['step']} AdamW steps the moment estimates m and v are young (a few gradients, "
        "scaled down by beta1 and beta2), so their bytes may compress differently from those of a long run.",
    ]


def results_table(rows: list[dict]) -> list[str]:
    header = (
        "| method | stored MB | ratio | save s (min-max) | stall s | persist s | save GB/s | load s (min-max) | load GB/s "
        "| save peak RSS MB | load peak RSS MB | cache drop | verified |"
    )
    lines = [header, "|" + "---|" * 13]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['bytes_stored'] / MB:.1f} | {row['ratio']:.3f} | {_range(row, 'save_s')} "
            f"| {row['stall_s']:.3f} | {row['persist_s']:.3f} | {row['save_gbps']:.3f} | {_range(row, 'load_s')} "
            f"| {row['load_gbps']:.3f} | {_mb(row['save_peak_rss_mb'])} | {_mb(row['load_peak_rss_mb'])} "
            f"| {row['cache_drop']} | {row['verified']} |"
        )
    return lines


def _range(row: dict, column: str) -> str:
    return f"{row[column]:.3f} ({row[column + '_min']:.3f}-{row[column + '_max']:.3f})"


def _mb(value) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def method_notes(rows: list[dict], args, write_limit: float, read_limit: float) -> list[str]:
    disk = [row for row in rows if row["family"] == "disk"]
    delta = [row for row in rows if row["method"].endswith("delta_zstd")]
    lines = [
        "How to read it:",
        "",
        "- Throughputs are bytes of state per second (1 GB = 10^9 bytes); ratio is state bytes / stored bytes.",
        f"- Each row is the median of {rows[0]['repeats']} save-and-load cycles in one child process (peak RSS: the "
        "max); the min-max range shows how much the disk and the other jobs varied.",
        "- save s: from the save call until the data is durable (fsynced). stall s: the part that blocked the caller. "
        "Every load starts with the written files evicted from the page cache; `cache drop` names the methods "
        "that ran and the share of the files' pages still cached after each, from mincore(2).",
        f"- zstd codecs run at level {args.zstd_level} with {args.zstd_threads} worker threads.",
        f"- Disk limits: the better of the {len(disk)} disk rows, {write_limit:.3f} GB/s sequential write and "
        f"{read_limit:.3f} GB/s cold read. Warm reads (from the page cache) reached "
        + " and ".join(f"{row['warm_read_gbps']:.3f}" for row in disk) + " GB/s.",
        "- Baselines write one file (`pickle`, `pickle_gzip6`: `gzip.open(..., compresslevel=6)`; `mlx_safetensors`: "
        "`mx.save_safetensors`, with the numpy-to-MLX conversion untimed) or one `.npy` per array (`numpy_save`), "
        "each fsynced; they have no manifest or checksums. Pickle uses the highest protocol.",
    ]
    for row in delta:
        lines.append(
            f"- {row['method']}: the full save of state A took {row['base_save_s']:.3f} s and stored "
            f"{row['base_bytes_stored'] / MB:.1f} MB; its load reads state A too, and its stored MB counts only state B."
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
