"""Tests of the cluster model (flashbench.sim) and the projection built on it."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from flashbench.projection import ci95_half_width, project, t_quantile_975
from flashbench.sim import (
    TIME_BUCKETS,
    ClusterPreset,
    StrategyCosts,
    choose_interval,
    random_streams,
    simulate,
    strategy_costs,
    young_interval,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
PROFILE_PATH = REPO / "tests" / "data" / "profile_example.json"
CLUSTER_DIR = REPO / "conf" / "cluster"

LLAMA3_FAILURES_PER_DEVICE_HOUR = 419 / (54 * 24 * 16384)


@pytest.fixture(scope="module")
def profile() -> dict:
    return json.loads(PROFILE_PATH.read_text())


def small_preset(**overrides) -> ClusterPreset:
    values = dict(
        name="test",
        devices=4800,
        failures_per_device_hour=LLAMA3_FAILURES_PER_DEVICE_HOUR,
        checkpoint_bytes_per_device=1.35e9,
        storage_bandwidth_Bps=2e12,
        device_storage_bandwidth_Bps=5e9,
        read_bandwidth_Bps=2e12,
        detect_s=30.0,
        restart_s=90.0,
        horizon_days=5.0,
        replications=4,
        seed=1,
        device_counts=(64, 512, 4800, 16384),
    )
    values.update(overrides)
    return ClusterPreset(**values)


@pytest.fixture(scope="module")
def projection(profile):
    return project(profile, small_preset())


class ScriptedFailures:
    """A stand-in for the failure generator that returns fixed gaps between failures."""

    def __init__(self, gaps_s: list[float]) -> None:
        self.gaps_s = list(gaps_s)

    def exponential(self, mean_s: float) -> float:
        if self.gaps_s:
            return self.gaps_s.pop(0)

        return 1e12  # no further failure within any test horizon


def run_scripted(costs: StrategyCosts, interval_s: float, horizon_s: float, gaps_s: list[float]):
    return simulate(costs, 1e-9, interval_s, horizon_s, {"failures": ScriptedFailures(gaps_s)})


def costs(**overrides) -> StrategyCosts:
    values = dict(block_s=1.0, persist_s=0.0, contention=0.0, load_s=0.0, detect_s=0.0, restart_s=0.0)
    values.update(overrides)
    return StrategyCosts(**values)


# Young interval


def test_young_interval_formula():
    assert young_interval(10.0, 20000.0) == pytest.approx(math.sqrt(2 * 10.0 * 20000.0))
    assert young_interval(0.5, 3600.0) == pytest.approx(60.0)
    assert young_interval(0.0, 3600.0) == 0.0


@pytest.mark.parametrize("delta_s, mtbf_s", [(-1.0, 100.0), (1.0, 0.0), (1.0, -5.0)])
def test_young_interval_rejects_invalid(delta_s, mtbf_s):
    with pytest.raises(ValueError, match="young_interval"):
        young_interval(delta_s, mtbf_s)


def test_choose_interval_raises_async_to_persist():
    preset = small_preset(devices=100000)
    slow_persist = costs(block_s=0.3, persist_s=500.0)

    interval_s, rule = choose_interval(slow_persist, preset, 100000)

    assert interval_s == 500.0
    assert rule == "Young, raised to persist time"


def test_choose_interval_uses_preset_number():
    interval_s, rule = choose_interval(costs(), small_preset(interval_s=600), 4800)

    assert interval_s == 600.0
    assert rule == "preset"


# Analytic check


def test_waste_matches_first_order_analytic():
    # Sync checkpoints, constant costs, exponential failures with MTBF much longer than
    # the interval: waste ~ delta/tau + (tau/2 + R)/M to first order.
    delta_s, detect_s, restart_s, mtbf_s = 10.0, 20.0, 40.0, 20000.0
    sync_costs = costs(block_s=delta_s, detect_s=detect_s, restart_s=restart_s)
    tau_s = young_interval(delta_s, mtbf_s)
    expected = delta_s / tau_s + (tau_s / 2 + detect_s + restart_s) / mtbf_s

    # About 2,000 failures per run; the first-order formula runs about 1.5% high here.
    waste = [
        simulate(sync_costs, 1 / mtbf_s, tau_s, 4e7, random_streams(seed, 1, 0)).throughput_impact_pct / 100
        for seed in range(4)
    ]

    assert sum(waste) / len(waste) == pytest.approx(expected, rel=0.05)


# Mechanics of one run


def test_time_buckets_partition_horizon(profile):
    preset = small_preset()
    scaled = strategy_costs("async_zstd", profile["strategies"]["async_zstd"], preset, 16384)
    interval_s, _ = choose_interval(scaled, preset, 16384)

    run = simulate(scaled, preset.failure_rate_per_s(16384), interval_s, preset.horizon_s, random_streams(0, 16384, 0))

    assert set(run.seconds) == set(TIME_BUCKETS)
    assert sum(run.seconds.values()) == pytest.approx(preset.horizon_s, rel=1e-9)
    assert run.failures > 0
    assert 0 < run.useful_s < preset.horizon_s


def test_sync_failure_loses_work_since_commit():
    # Checkpoint at work 100 commits at t=101; the failure at t=120 loses 19 s of work.
    run = run_scripted(costs(block_s=1.0), interval_s=100.0, horizon_s=1000.0, gaps_s=[120.0])

    assert run.failures == 1
    assert run.seconds["recompute"] == pytest.approx(19.0)
    assert run.recovery_s == pytest.approx(19.0)


def test_async_inflight_checkpoint_does_not_count():
    # The checkpoint at work 100 persists until t=151, so the failure at t=120 rolls back
    # to work 0. The recompute re-trains 100 s, blocks 1 s for the checkpoint at work 100
    # and trains 19 s more to reach the pre-failure point.
    run = run_scripted(costs(block_s=1.0, persist_s=50.0), interval_s=100.0, horizon_s=1000.0, gaps_s=[120.0])

    assert run.failures == 1
    assert run.seconds["recompute"] == pytest.approx(120.0)


def test_async_committed_checkpoint_counts():
    # Same as above with the failure at t=160, after the commit at t=151.
    run = run_scripted(costs(block_s=1.0, persist_s=50.0), interval_s=100.0, horizon_s=1000.0, gaps_s=[160.0])

    assert run.seconds["recompute"] == pytest.approx(59.0)


def test_failure_during_recovery_restarts_it():
    # Failures at t=50 and t=55, detection takes 10 s: the first detection is cut at
    # 5 s, then detect, restart and load run in full and 50 s of work are recomputed.
    slow_restart = costs(block_s=1.0, detect_s=10.0, restart_s=20.0, load_s=3.0)
    run = run_scripted(slow_restart, interval_s=100.0, horizon_s=1000.0, gaps_s=[50.0, 5.0])

    assert run.failures == 2
    assert run.seconds["detect"] == pytest.approx(15.0)
    assert run.seconds["restart"] == pytest.approx(20.0)
    assert run.seconds["load"] == pytest.approx(3.0)
    assert run.seconds["recompute"] == pytest.approx(50.0)
    assert run.recovery_s == pytest.approx((15.0 + 20.0 + 3.0 + 50.0) / 2)


def test_contention_slows_training_during_persist():
    # Contention 1.0 halves the training rate during the 10 s persist, so each segment
    # after the first takes 105 s for 100 s of work. Horizon 631 s = 101 + 5 * 106 s.
    run = run_scripted(costs(block_s=1.0, persist_s=10.0, contention=1.0), 100.0, 631.0, gaps_s=[])

    assert run.failures == 0
    assert run.useful_s == pytest.approx(600.0)


def test_checkpoint_waits_for_previous_persist():
    # Interval 10 s, persist 30 s: each checkpoint after the first waits 20 s.
    run = run_scripted(costs(block_s=1.0, persist_s=30.0), interval_s=10.0, horizon_s=72.0, gaps_s=[])

    assert run.seconds["wait"] == pytest.approx(40.0)
    assert run.useful_s == pytest.approx(30.0)


def test_runs_are_deterministic(profile):
    preset = small_preset()
    scaled = strategy_costs("sync_raw", profile["strategies"]["sync_raw"], preset, 4800)

    first = simulate(scaled, preset.failure_rate_per_s(4800), 500.0, preset.horizon_s, random_streams(7, 4800, 3))
    second = simulate(scaled, preset.failure_rate_per_s(4800), 500.0, preset.horizon_s, random_streams(7, 4800, 3))

    assert first == second


# Projection


def test_failures_grow_with_device_count(projection):
    for strategy, rows in projection.groupby("strategy"):
        failures = rows.sort_values("devices")["failures"].tolist()
        assert failures == sorted(failures), strategy
        assert failures[0] < failures[-1], strategy


def test_async_blocks_less_than_sync(projection):
    at_preset = projection[projection["devices"] == 4800].set_index("strategy")

    assert at_preset.loc["async_zstd", "checkpoint_block_s"] < at_preset.loc["sync_zstd", "checkpoint_block_s"]
    assert at_preset.loc["async_raw", "checkpoint_block_s"] < at_preset.loc["sync_raw", "checkpoint_block_s"]


def test_recovery_parts_add_up(projection):
    with_failures = projection[projection["failures"] > 0]
    assert not with_failures.empty

    parts = with_failures[["detect_s", "restart_s", "load_s", "recompute_s"]].sum(axis=1)
    assert parts.to_numpy() == pytest.approx(with_failures["recovery_s"].to_numpy(), rel=1e-9)


def test_projection_columns_and_rows(projection):
    expected = {
        "strategy", "devices", "recovery_s", "recovery_ci95", "detect_s", "restart_s", "load_s",
        "recompute_s", "checkpoint_block_s", "interval_s", "interval_rule", "failures",
        "throughput_impact_pct", "throughput_impact_ci95",
    }  # fmt: skip

    assert expected <= set(projection.columns)
    assert len(projection) == 4 * 4


def test_project_rejects_unknown_strategy(profile):
    with pytest.raises(ValueError, match="not in the cost profile"):
        project(profile, small_preset(), strategies=["sync_lz4"])


def test_project_rejects_other_schema(profile):
    with pytest.raises(ValueError, match="schema"):
        project({**profile, "schema": 2}, small_preset())


def test_t_quantile_and_ci():
    assert t_quantile_975(19) == pytest.approx(2.093)
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=1e-3)
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=1e-3)
    assert math.isnan(ci95_half_width([1.0]))
    assert math.isnan(ci95_half_width([1.0, math.nan]))
    assert ci95_half_width([1.0, 3.0]) == pytest.approx(12.706 * 1.0)


# Presets


@pytest.mark.parametrize("name, devices", [("paper_4800", 4800), ("llama3_16k", 16384)])
def test_preset_files_load(name, devices):
    mapping = OmegaConf.to_container(OmegaConf.load(CLUSTER_DIR / f"{name}.yaml"))
    preset = ClusterPreset.from_mapping(mapping)

    assert preset.name == name
    assert preset.devices == devices
    assert preset.interval_s == "young"
    assert preset.failures_per_device_hour == pytest.approx(LLAMA3_FAILURES_PER_DEVICE_HOUR, rel=1e-4)
    # Both presets shard the 6.48e12 bytes of a 405B model at 16 bytes/param.
    assert preset.checkpoint_bytes_per_device * devices == pytest.approx(405e9 * 16, rel=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("storage_bandwidth_Bps", -1.0, "storage_bandwidth_Bps"),
        ("read_bandwidth_Bps", 0, "read_bandwidth_Bps"),
        ("interval_s", "often", "interval_s"),
        ("interval_s", -60, "interval_s"),
        ("devices", 0, "devices"),
        ("failures_per_device_hour", -1e-5, "failures_per_device_hour"),
        ("replications", 2.5, "replications"),
        ("device_counts", (), "device_counts"),
    ],
)
def test_preset_rejects_invalid_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(small_preset(), **{field: value})


def test_preset_rejects_unknown_and_missing_keys():
    mapping = OmegaConf.to_container(OmegaConf.load(CLUSTER_DIR / "paper_4800.yaml"))

    with pytest.raises(ValueError, match="unknown keys.*storage_bandwith_Bps"):
        ClusterPreset.from_mapping({**mapping, "storage_bandwith_Bps": 1e9})

    without_detect = {key: value for key, value in mapping.items() if key != "detect_s"}
    with pytest.raises(ValueError, match="missing keys.*detect_s"):
        ClusterPreset.from_mapping(without_detect)


# Boundaries


def test_simulator_never_imports_mlx():
    code = (
        "import sys\n"
        "import flashbench.sim, flashbench.projection\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'strategies'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
