"""The flashbench command from the shell: outputs, multirun sweeps and bad input."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

FAST = [
    "workload=tiny",
    "train.steps=12",
    "train.interval=4",
    "fault.at_step=6",
    "cluster.replications=2",
    "cluster.horizon_days=5",
    "cluster.device_counts=[8,4800]",
]


def flashbench(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "flashbench.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900
    )


def assert_one_line_error(completed, *fragments):
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_default_strategies_write_every_output(tmp_path, child_env):
    completed = flashbench(*FAST, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=child_env)
    assert completed.returncode == 0, completed.stderr

    run = tmp_path / "run"
    assert completed.stdout.strip().splitlines()[-1] == f"results: {run}"
    for name in ("costs.csv", "recovery.csv", "profile.json", "projection.csv", "table.md", "recovery_vs_devices.png", "recovery_breakdown.png"):
        assert (run / name).is_file(), name
    assert (run / ".hydra" / "config.yaml").is_file()

    costs = pd.read_csv(run / "costs.csv")
    for column in ("strategy", "step", "op", "stall_s", "persist_s", "bytes_state", "bytes_stored", "load_s"):
        assert column in costs.columns
    assert set(costs.strategy) == {"sync_raw", "sync_zstd", "async_raw", "async_zstd"}

    recovery = pd.read_csv(run / "recovery.csv")
    assert len(recovery) == 4
    assert recovery.bit_exact.all()
    assert (recovery.total_s > 0).all()

    projection = pd.read_csv(run / "projection.csv")
    at_4800 = projection[projection.devices == 4800]
    assert sorted(at_4800.strategy) == ["async_raw", "async_zstd", "sync_raw", "sync_zstd"]
    table = (run / "table.md").read_text()
    for name in ("sync_raw", "sync_zstd", "async_raw", "async_zstd"):
        assert name in table
        assert name in completed.stdout


@pytest.mark.slow
def test_multirun_sweeps_two_axes(tmp_path, child_env):
    sweep = tmp_path / "sweep"
    completed = flashbench(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "strategy=sync_raw,async_zstd", "cluster.devices=1200,4800", "fault=none", *FAST[:3],
        "cluster.replications=2", "cluster.horizon_days=5", "cluster.device_counts=[8]",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=child_env,
    )
    assert completed.returncode == 0, completed.stderr
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir() and path.name.isdigit())
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        seen.add((config["strategy"]["names"][0], config["cluster"]["devices"]))
        assert (job / "projection.csv").is_file()
    assert seen == {("sync_raw", 1200), ("sync_raw", 4800), ("async_zstd", 1200), ("async_zstd", 4800)}

    collected = subprocess.run(
        [sys.executable, "-m", "flashbench.collect", str(sweep)], capture_output=True, text=True, cwd=tmp_path
    )
    assert collected.returncode == 0, collected.stderr
    table = pd.read_csv(sweep / "sweep_projection.csv")
    assert table["job"].nunique() == 4
    pairs = set(zip(table["override.strategy"], table["override.cluster.devices"]))
    assert pairs == {("sync_raw", 1200), ("sync_raw", 4800), ("async_zstd", 1200), ("async_zstd", 4800)}


def test_unknown_strategy_is_one_line(tmp_path):
    completed = flashbench("strategy=sync_zstdd", cwd=tmp_path)
    assert completed.returncode == 2
    assert_one_line_error(completed, "sync_zstdd", "did you mean 'sync_zstd'")


def test_unknown_strategy_in_names_is_one_line(tmp_path):
    completed = flashbench("strategy.names=[sync_raw,lz4]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(completed, "'lz4'", "sync_raw")


def test_negative_interval_is_one_line(tmp_path):
    completed = flashbench("train.interval=-5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert completed.returncode == 2
    assert_one_line_error(completed, "train.interval -5")


def test_unwritable_checkpoint_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    completed = flashbench(f"checkpoint.dir={blocker / 'ckpt'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(completed, str(blocker / "ckpt"), "not writable")


def test_invalid_cluster_value_is_one_line(tmp_path):
    completed = flashbench("cluster.storage_bandwidth_Bps=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(completed, "storage_bandwidth_Bps")


def test_corrupt_manifest_is_one_line(tmp_path):
    from strategies import CheckpointOptions, Checkpointer
    import numpy as np

    with Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name("sync_raw")) as checkpointer:
        checkpointer.save({"w": np.arange(4)}, 1)
    (tmp_path / "ckpt" / "step_00000001" / "manifest.json").write_text("{ not json")

    completed = subprocess.run(
        [sys.executable, "-m", "strategies", "verify", str(tmp_path / "ckpt")], capture_output=True, text=True
    )
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr + completed.stdout
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "manifest.json is not valid JSON" in lines[0]


def test_saved_profile_projects_without_training(tmp_path):
    profile = Path(__file__).parent / "data" / "profile_example.json"
    completed = flashbench(
        f"profile={profile}", "cluster.replications=2", "cluster.horizon_days=5", "cluster.device_counts=[8]",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    assert not (tmp_path / "run" / "costs.csv").exists()  # nothing was measured
    projection = pd.read_csv(tmp_path / "run" / "projection.csv")
    assert sorted(set(projection.strategy)) == ["async_raw", "async_zstd", "sync_raw", "sync_zstd"]


def test_missing_profile_is_one_line(tmp_path):
    completed = flashbench(f"profile={tmp_path / 'nope.json'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert completed.returncode == 2
    assert_one_line_error(completed, "nope.json", "does not exist")
