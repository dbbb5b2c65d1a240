"""Tests of the cluster model (flashbench.sim) and the projection built on it."""

from __future__ import annotations

import io
import json
import math
import pathlib
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from omegaconf import OmegaConf

from flashbench.projection import (
    MonteCarloProgress,
    ci95_half_width,
    failure_traces,
    model_costs,
    project,
    t_quantile_975,
)
from flashbench.sim import (
    MAX_CHECKPOINTS_PER_CYCLE,
    TIME_BUCKETS,
    ClusterPreset,
    FailureTrace,
    StrategyCosts,
    Topology,
    checkpoint_cycle,
    checkpoint_io,
    choose_interval,
    daly_interval,
    failure_times,
    generate_failures,
    mean_impact_pct,
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
        devices_per_replica=128,
        failures_per_unit_hour=LLAMA3_FAILURES_PER_DEVICE_HOUR,
        checkpoint_bytes_per_device=1.35e9,
        storage_bandwidth_Bps=2e12,
        device_storage_bandwidth_Bps=5e9,
        read_bandwidth_Bps=2e12,
        peer_bandwidth_Bps=5e10,
        detect_timeout_s=30.0,
        restart_base_s=90.0,
        step_s=20.0,
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


def costs(**overrides) -> StrategyCosts:
    values = dict(block_s=1.0, persist_s=0.0, contention=0.0, load_s=0.0, detect_s=0.0, restart_s=0.0)
    values.update(overrides)
    return StrategyCosts(**values)


def run_scripted(costs: StrategyCosts, interval_s: float, horizon_s: float, times_s: list[float], **trace):
    return simulate(costs, interval_s, horizon_s, FailureTrace.scripted(times_s, **trace))


def poisson_trace(mtbf_s: float, horizon_s: float, seed: int) -> FailureTrace:
    times, _ = failure_times(np.random.default_rng(seed), 1, 1.0 / mtbf_s, horizon_s)
    return FailureTrace.scripted(times.tolist())


# Interval rules


def test_young_interval_formula():
    assert young_interval(10.0, 20000.0) == pytest.approx(math.sqrt(2 * 10.0 * 20000.0))
    assert young_interval(0.5, 3600.0) == pytest.approx(60.0)
    assert young_interval(0.0, 3600.0) == 0.0


@pytest.mark.parametrize("delta_s, mtbf_s", [(-1.0, 100.0), (1.0, 0.0), (1.0, -5.0)])
def test_young_interval_rejects_invalid(delta_s, mtbf_s):
    with pytest.raises(ValueError, match="young_interval"):
        young_interval(delta_s, mtbf_s)


def test_daly_interval_formula():
    delta_s, mtbf_s = 10.0, 20000.0
    ratio = delta_s / (2 * mtbf_s)
    expected = math.sqrt(2 * delta_s * mtbf_s) * (1 + math.sqrt(ratio) / 3 + ratio / 9) - delta_s

    assert daly_interval(delta_s, mtbf_s) == pytest.approx(expected)
    assert daly_interval(delta_s, mtbf_s) < young_interval(delta_s, mtbf_s)
    assert daly_interval(300.0, 100.0) == 100.0  # delta >= 2M: checkpoint every MTBF


@pytest.mark.parametrize("mtbf_min, published_min", [(24 * 60, 117.0), (6 * 60, 57.0), (15, 9.1)])
def test_daly_interval_matches_published_optima(mtbf_min, published_min):
    # Daly's figure captions (doi:10.1016/j.future.2004.11.016) give the optimum for a
    # 5 min dump time at three MTBFs, rounded as printed.
    assert daly_interval(5.0, mtbf_min) == pytest.approx(published_min, abs=0.5)


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


def test_choose_interval_rules_use_effective_delta():
    preset = small_preset()
    mtbf_s = preset.mtbf_s(4800)
    async_costs = costs(block_s=1.0, persist_s=30.0, contention=0.5)
    delta_s = 1.0 + 30.0 * 0.5 / 1.5

    young_s, young_rule = choose_interval(async_costs, preset, 4800)
    daly_s, daly_rule = choose_interval(async_costs, replace(preset, interval_s="daly"), 4800)

    assert young_s == pytest.approx(young_interval(delta_s, mtbf_s))
    assert daly_s == pytest.approx(daly_interval(delta_s, mtbf_s))
    assert (young_rule, daly_rule) == ("Young", "Daly")


def test_choose_interval_without_failures_is_horizon():
    preset = small_preset(failures_per_unit_hour=0.0)

    assert choose_interval(costs(), preset, 4800) == (preset.horizon_s, "horizon (no failures)")


def test_optimal_interval_matches_daly_and_simulates_no_worse():
    # Constant costs, exponential failures: Daly's rule is close to the true optimum, so the
    # searched interval lies near it and, on the same traces, wastes no more.
    preset = small_preset(devices=1, failures_per_unit_hour=3600 / 20000.0, horizon_days=200.0, interval_s="optimal")
    sync_costs = costs(block_s=50.0, detect_s=20.0, restart_s=40.0)
    traces = [poisson_trace(20000.0, preset.horizon_s, seed) for seed in range(4)]

    optimal_s, rule = choose_interval(sync_costs, preset, 1, traces)
    daly_s = daly_interval(50.0, 20000.0)

    assert rule == "optimal (simulated)"
    assert daly_s / 1.5 < optimal_s < daly_s * 1.5
    optimal_impact = mean_impact_pct(sync_costs, optimal_s, traces, preset.horizon_s, None)
    daly_impact = mean_impact_pct(sync_costs, daly_s, traces, preset.horizon_s, None)
    assert optimal_impact <= daly_impact + 1e-9


def test_optimal_interval_requires_traces():
    with pytest.raises(ValueError, match="no failure traces"):
        choose_interval(costs(), small_preset(interval_s="optimal"), 4800)


# Analytic check


def test_waste_matches_daly_exact_expectation():
    """Simulated waste matches the exact expected waste for exponential failures within 2%.

    Failures arrive as a Poisson process of rate 1/M. A segment is tau of work plus a
    sync checkpoint delta and commits at its end. A failure anywhere in the segment costs
    the recovery R = detect + restart + load, which a further failure restarts, and the
    segment then runs again from its start. Let T(L) be the time to finish L seconds of
    failure-free work. Conditioning on the first failure at t ~ Exp(1/M):
    E[T] = L e^{-L/M} + integral_0^L (t + E[T_R] + E[T]) (1/M) e^{-t/M} dt, where
    E[T_R] is the expected time to complete the recovery itself. Solving both equations
    (as in J. T. Daly, doi:10.1016/j.future.2004.11.016) gives, per segment,
        E[T] = M e^{R/M} (e^{(tau + delta)/M} - 1).
    By the renewal-reward theorem the useful fraction over a long run is tau / E[T],
    so the expected waste fraction is 1 - tau / (M e^{R/M} (e^{(tau + delta)/M} - 1)).
    """
    delta_s, mtbf_s = 10.0, 20000.0
    detect_s, restart_s, load_s = 20.0, 25.0, 15.0
    recovery_s = detect_s + restart_s + load_s
    horizon_s = 4e7  # about 2,000 failures per run
    sync_costs = costs(block_s=delta_s, detect_s=detect_s, restart_s=restart_s, load_s=load_s)

    for tau_s in (daly_interval(delta_s, mtbf_s), 3000.0):
        segment_s = mtbf_s * math.exp(recovery_s / mtbf_s) * (math.exp((tau_s + delta_s) / mtbf_s) - 1)
        expected = 1 - tau_s / segment_s

        waste = [
            simulate(sync_costs, tau_s, horizon_s, poisson_trace(mtbf_s, horizon_s, seed)).throughput_impact_pct / 100
            for seed in range(20)
        ]

        assert np.mean(waste) == pytest.approx(expected, rel=0.02), tau_s


# Failure model


@pytest.mark.parametrize("distribution, shape", [("exponential", 1.0), ("weibull", 0.6), ("weibull", 1.0), ("weibull", 2.5)])
def test_failure_times_mean_rate(distribution, shape):
    # 20,000 units failing once per 50 days on average, seen for 30 days: about 12,000 failures.
    units, rate_per_s, horizon_s = 20000, 1 / (50 * 86400.0), 30 * 86400.0
    rng = np.random.default_rng(7)

    times, unit_ids = failure_times(rng, units, rate_per_s, horizon_s, distribution, shape)

    assert len(times) == pytest.approx(units * rate_per_s * horizon_s, rel=0.03)
    assert np.all(np.diff(times) >= 0)
    assert times.min() >= 0
    assert times.max() < horizon_s
    assert unit_ids.min() >= 0
    assert unit_ids.max() < units


def test_weibull_rate_is_constant_over_time():
    # Stationary renewal: a falling hazard (k < 1) must not bunch failures at the start.
    units, rate_per_s, horizon_s = 50000, 1 / (10 * 86400.0), 30 * 86400.0
    times, _ = failure_times(np.random.default_rng(3), units, rate_per_s, horizon_s, "weibull", 0.5)

    first_half = np.count_nonzero(times < horizon_s / 2)
    second_half = len(times) - first_half

    assert first_half == pytest.approx(second_half, rel=0.05)


def test_weibull_gaps_have_the_configured_mean():
    # Gaps between consecutive failures of one unit average 1 / rate.
    rate_per_s, horizon_s = 1 / 1000.0, 2e6
    times, unit_ids = failure_times(np.random.default_rng(11), 20, rate_per_s, horizon_s, "weibull", 1.7)

    gaps = [np.diff(times[unit_ids == unit]) for unit in range(20)]

    assert np.concatenate(gaps).mean() == pytest.approx(1000.0, rel=0.03)


def test_node_failures_take_whole_nodes():
    preset = small_preset(failures_per_unit_hour=0.0, node_failures_per_node_hour=1e-3, horizon_days=30.0)
    trace = generate_failures(preset, 4800, preset.horizon_s, random_streams(0, 4800, 0))
    expected = preset.nodes(4800) * 1e-3 * 30 * 24

    assert len(trace) == pytest.approx(expected, rel=0.1)
    assert set(trace.devices) == {-1}
    assert min(trace.nodes) >= 0
    assert max(trace.nodes) < preset.nodes(4800)


def test_device_failures_map_to_their_node():
    preset = small_preset(horizon_days=30.0)
    trace = generate_failures(preset, 4800, preset.horizon_s, random_streams(0, 4800, 0))

    assert len(trace) > 0
    assert all(device // 8 == node for node, device in zip(trace.nodes, trace.devices))


def test_node_failure_rate_adds_to_job_rate():
    preset = small_preset(failure_unit="node", failures_per_unit_hour=2e-4, node_failures_per_node_hour=1e-4)

    assert preset.failure_rate_per_s(4800) == pytest.approx(600 * 3e-4 / 3600)
    assert preset.failure_units(4800) == 600


def test_failure_traces_repeat_per_seed():
    preset = small_preset()

    assert failure_traces(preset, 4800, 2) == failure_traces(preset, 4800, 2)
    assert failure_traces(preset, 4800, 2) != failure_traces(replace(preset, seed=2), 4800, 2)


# Mechanics of one run


def test_time_buckets_partition_horizon(profile):
    preset = small_preset()
    scaled = strategy_costs("async_zstd", profile["strategies"]["async_zstd"], preset, 16384)
    interval_s, _ = choose_interval(scaled, preset, 16384)
    trace = generate_failures(preset, 16384, preset.horizon_s, random_streams(0, 16384, 0))

    run = simulate(scaled, interval_s, preset.horizon_s, trace)

    assert set(run.seconds) == set(TIME_BUCKETS)
    assert sum(run.seconds.values()) == pytest.approx(preset.horizon_s, rel=1e-9)
    assert run.failures > 0
    assert 0 < run.useful_s < preset.horizon_s


def test_sync_failure_loses_work_since_commit():
    # Checkpoint at work 100 commits at t=101; the failure at t=120 loses 19 s of work.
    run = run_scripted(costs(block_s=1.0), interval_s=100.0, horizon_s=1000.0, times_s=[120.0])

    assert run.failures == 1
    assert run.seconds["recompute"] == pytest.approx(19.0)
    assert run.recovery_s == pytest.approx(19.0)


def test_async_inflight_checkpoint_does_not_count():
    # The checkpoint at work 100 persists until t=151, so the failure at t=120 rolls back
    # to work 0. The recompute re-trains 100 s, blocks 1 s for the checkpoint at work 100
    # and trains 19 s more to reach the pre-failure point.
    run = run_scripted(costs(block_s=1.0, persist_s=50.0), interval_s=100.0, horizon_s=1000.0, times_s=[120.0])

    assert run.failures == 1
    assert run.seconds["recompute"] == pytest.approx(120.0)


def test_async_committed_checkpoint_counts():
    # Same as above with the failure at t=160, after the commit at t=151.
    run = run_scripted(costs(block_s=1.0, persist_s=50.0), interval_s=100.0, horizon_s=1000.0, times_s=[160.0])

    assert run.seconds["recompute"] == pytest.approx(59.0)


def test_failure_during_recovery_restarts_it():
    # Failures at t=50 and t=55, detection takes 10 s: the first detection is cut at
    # 5 s, then detect, restart and load run in full and 50 s of work are recomputed.
    slow_restart = costs(block_s=1.0, detect_s=10.0, restart_s=20.0, load_s=3.0)
    run = run_scripted(slow_restart, interval_s=100.0, horizon_s=1000.0, times_s=[50.0, 55.0])

    assert run.failures == 2
    assert run.seconds["detect"] == pytest.approx(15.0)
    assert run.seconds["restart"] == pytest.approx(20.0)
    assert run.seconds["load"] == pytest.approx(3.0)
    assert run.seconds["recompute"] == pytest.approx(50.0)
    assert run.recovery_s == pytest.approx((15.0 + 20.0 + 3.0 + 50.0) / 2)


def test_contention_slows_training_during_persist():
    # Contention 1.0 halves the training rate during the 10 s persist, so each segment
    # after the first takes 105 s for 100 s of work. Horizon 631 s = 101 + 5 * 106 s.
    run = run_scripted(costs(block_s=1.0, persist_s=10.0, contention=1.0), 100.0, 631.0, times_s=[])

    assert run.failures == 0
    assert run.useful_s == pytest.approx(600.0)


def test_checkpoint_waits_for_previous_persist():
    # Interval 10 s, persist 30 s: each checkpoint after the first waits 20 s.
    run = run_scripted(costs(block_s=1.0, persist_s=30.0), interval_s=10.0, horizon_s=72.0, times_s=[])

    assert run.seconds["wait"] == pytest.approx(40.0)
    assert run.useful_s == pytest.approx(30.0)
    assert run.checkpoints == 2


def test_recompute_crosses_the_cycle_structure():
    # Interval 10 s, persist 30 s, block 1 s, contention 1 (half speed while persisting).
    # After the first 10 s, each cycle is a 1 s block, 20 s of slowed training and a 10 s
    # wait: 31 s. Checkpoint k captures work 10 (k + 1) and commits at 41 + 31 k, so at
    # t=200 the last commit (t=196) captured work 60 while the position is 70 + 1.5.
    # The recompute trains 10 s at full speed (no persist in flight after the restart),
    # blocks 1 s and trains 1.5 s of work slowed, 3 s: 14 s in all.
    job_costs = costs(block_s=1.0, persist_s=30.0, contention=1.0)

    no_failure = run_scripted(job_costs, 10.0, 200.0, times_s=[])
    with_failure = run_scripted(job_costs, 10.0, 2000.0, times_s=[200.0])

    assert no_failure.useful_s == pytest.approx(71.5)
    assert no_failure.checkpoints == 7
    assert with_failure.seconds["recompute"] == pytest.approx(14.0)


def test_runs_are_deterministic(profile):
    preset = small_preset()
    scaled = strategy_costs("sync_raw", profile["strategies"]["sync_raw"], preset, 4800)
    trace = generate_failures(preset, 4800, preset.horizon_s, random_streams(7, 4800, 3))

    first = simulate(scaled, 500.0, preset.horizon_s, trace)
    second = simulate(scaled, 500.0, preset.horizon_s, trace)

    assert first == second


# Recovery model


def test_detection_heartbeat_and_timeout():
    assert small_preset(detect_timeout_s=600.0).detect_s == 600.0

    heartbeat = small_preset(detection="heartbeat", heartbeat_interval_s=5.0, heartbeat_missed_beats=4)
    assert heartbeat.detect_s == 20.0


def test_restart_policies_scale():
    full_job = small_preset(restart_base_s=60.0, restart_per_device_s=0.01)
    failed_only = replace(full_job, restart_policy="failed_ranks_only")

    assert full_job.restart_s(1000) == pytest.approx(70.0)
    assert full_job.restart_s(100000) == pytest.approx(1060.0)
    assert failed_only.restart_s(1000) == failed_only.restart_s(100000) == 60.0


def test_load_reads_then_decodes(profile):
    preset = small_preset(device_storage_bandwidth_Bps=1e9, read_bandwidth_Bps=1e15)
    entry = {**profile["strategies"]["sync_zstd"], "layout": "parallel"}

    io_costs = checkpoint_io(entry, preset, 64)
    expected_read_s = 1.35e9 / entry["compression_ratio"] / 1e9
    expected_decode_s = 1.35e9 * entry["decode_s_per_byte"]

    assert io_costs.read_s == pytest.approx(expected_read_s)
    assert io_costs.load_s == pytest.approx(expected_read_s + expected_decode_s)
    assert strategy_costs("sync_zstd", entry, preset, 64).load_s == pytest.approx(io_costs.load_s)


# Checkpoint cost model


def layout_entry(profile, layout: str) -> dict:
    return {**profile["strategies"]["sync_raw"], "layout": layout}


def test_coordinator_and_parallel_separate_with_fixed_groups(profile):
    # Eight coordinators, each writing its group's state through one 5 GB/s link, against
    # every device writing its own share. On 64 devices both are link-bound (ratio 8).
    # Once the parallel layout saturates the 2 TB/s storage, the coordinators reach only
    # 8 x 5 GB/s of it, so the ratio settles at 2e12 / 4e10 = 50 and the gap in seconds
    # grows with the device count.
    preset = small_preset(devices_per_replica=None, data_parallel_groups=8)
    ratios, gaps_s = [], []
    for devices in (64, 4800, 100000):
        coordinator = checkpoint_io(layout_entry(profile, "coordinator"), preset, devices)
        parallel = checkpoint_io(layout_entry(profile, "parallel"), preset, devices)
        assert coordinator.writers == 8
        assert parallel.writers == devices
        ratios.append(coordinator.write_s / parallel.write_s)
        gaps_s.append(coordinator.write_s - parallel.write_s)

    assert ratios == pytest.approx([8.0, 50.0, 50.0])
    assert gaps_s == sorted(gaps_s)
    assert gaps_s[-1] > 100 * gaps_s[0]


def test_coordinator_per_replica_converges_when_storage_bound(profile):
    # One coordinator per 128-device replica: link-bound at 4,800 devices (38 writers x
    # 5 GB/s < 2 TB/s) and 128x slower there, but both layouts share the aggregate
    # storage bandwidth once the coordinators alone saturate it.
    preset = small_preset(devices_per_replica=128)
    coordinator = checkpoint_io(layout_entry(profile, "coordinator"), preset, 4800)
    parallel = checkpoint_io(layout_entry(profile, "parallel"), preset, 4800)
    assert coordinator.write_s / parallel.write_s > 10

    coordinator = checkpoint_io(layout_entry(profile, "coordinator"), preset, 100000)
    parallel = checkpoint_io(layout_entry(profile, "parallel"), preset, 100000)
    assert coordinator.write_s == pytest.approx(parallel.write_s)


def compression_entries(encode_s_per_byte: float) -> tuple[dict, dict]:
    shared = dict(writer="sync", layout="parallel", snapshot_s_per_byte=1e-10, decode_s_per_byte=1e-10, contention=0.0)
    raw = dict(shared, codec="raw", compression_ratio=1.0, encode_s_per_byte=0.0)
    compressed = dict(shared, codec="zstd", compression_ratio=2.0, encode_s_per_byte=encode_s_per_byte)
    return raw, compressed


@pytest.mark.parametrize(
    "link_Bps, helps",
    [(0.25e9, True), (0.5e9, True), (0.9e9, True), (1.1e9, False), (2e9, False), (8e9, False)],
)
def test_compression_helps_only_below_codec_throughput(link_Bps, helps):
    # The codec encodes 1 GB/s (1e-9 s/byte) at ratio 2. With the pipelined persist,
    # max(bytes / 2 / bandwidth, bytes * 1e-9) < bytes / bandwidth exactly when the
    # bandwidth per writer is below 1 GB/s.
    raw, compressed = compression_entries(1e-9)
    preset = small_preset(device_storage_bandwidth_Bps=link_Bps, storage_bandwidth_Bps=1e18)

    raw_s = strategy_costs("raw", raw, preset, 64).block_s
    compressed_s = strategy_costs("zstd", compressed, preset, 64).block_s

    assert (compressed_s < raw_s) == helps


def test_compression_follows_bandwidth_share_per_writer():
    # The same link, but 4,800 writers share 1 TB/s: 0.21 GB/s each, below the codec's
    # 1 GB/s, so compression helps at scale although it does not on a few devices.
    raw, compressed = compression_entries(1e-9)
    preset = small_preset(device_storage_bandwidth_Bps=5e9, storage_bandwidth_Bps=1e12)

    assert strategy_costs("zstd", compressed, preset, 64).block_s > strategy_costs("raw", raw, preset, 64).block_s
    assert strategy_costs("zstd", compressed, preset, 4800).block_s < strategy_costs("raw", raw, preset, 4800).block_s


def test_serial_encode_and_write_add_up():
    _, compressed = compression_entries(1e-9)
    preset = small_preset(device_storage_bandwidth_Bps=1e9, storage_bandwidth_Bps=1e18, encode_write_overlap=False)

    io_costs = checkpoint_io(compressed, preset, 64)

    assert io_costs.persist_s == pytest.approx(io_costs.encode_s + io_costs.write_s)
    assert io_costs.persist_s == pytest.approx(1.35 + 0.675)


def test_async_persists_in_background(profile):
    preset = small_preset()
    entry = profile["strategies"]["async_zstd"]
    scaled = strategy_costs("async_zstd", entry, preset, 4800)
    io_costs = checkpoint_io(entry, preset, 4800)

    assert scaled.block_s == pytest.approx(entry["snapshot_s_per_byte"] * 1.35e9)
    assert scaled.persist_s == pytest.approx(max(io_costs.encode_s, io_costs.write_s))
    assert scaled.contention == entry["contention"]


# In-memory peer and replica recovery


def memory_costs(**overrides) -> StrategyCosts:
    values = dict(
        kind="in_memory_peer", block_s=1.0, persist_s=2.0, load_s=5.0, fallback_block_s=1.0,
        fallback_persist_s=20.0, fallback_load_s=50.0, fallback_interval_s=400.0,
    )  # fmt: skip
    values.update(overrides)
    return costs(**values)


def test_in_memory_peer_single_node_failure():
    # Memory checkpoints every 100 s of work, storage every 4th (the first after each
    # restart). A node failure at t=250 restores the memory checkpoint at work 200.
    topology = Topology(devices=32, devices_per_node=8, devices_per_group=32)
    trace = FailureTrace.scripted([250.0], node=0, device=-1)

    run = simulate(memory_costs(), 100.0, 2000.0, trace, topology)

    assert run.fallbacks == 0
    assert run.seconds["load"] == pytest.approx(5.0)
    assert run.seconds["recompute"] < 100.0


def test_in_memory_peer_partners_both_fail():
    # Nodes 0 and 1 are partners. Node 0 fails at t=250 and node 1 at t=252, during the
    # peer load and before the next memory commit, so the job loads the storage fallback.
    topology = Topology(devices=32, devices_per_node=8, devices_per_group=32)
    both = FailureTrace((250.0, 252.0), (0, 1), (-1, -1))
    other_pairs = FailureTrace((250.0, 252.0), (0, 2), (-1, -1))
    devices_only = FailureTrace((250.0, 252.0), (0, 1), (3, 9))

    fallback = simulate(memory_costs(), 100.0, 2000.0, both, topology)
    assert fallback.fallbacks == 1
    assert fallback.seconds["load"] == pytest.approx(2.0 + 50.0)  # peer load cut short, then storage

    for trace in (other_pairs, devices_only):
        run = simulate(memory_costs(), 100.0, 2000.0, trace, topology)
        assert run.fallbacks == 0
        assert run.seconds["load"] == pytest.approx(2.0 + 5.0)  # both loads from a peer


def test_in_memory_peer_window_closes_at_next_commit():
    # Node 1 fails long after node 0, with memory commits in between: no fallback.
    topology = Topology(devices=32, devices_per_node=8, devices_per_group=32)
    trace = FailureTrace((250.0, 900.0), (0, 1), (-1, -1))

    run = simulate(memory_costs(), 100.0, 3000.0, trace, topology)

    assert run.failures == 2
    assert run.fallbacks == 0


def test_partners_pair_nodes():
    topology = Topology(devices=40, devices_per_node=8, devices_per_group=40)

    assert [topology.partner(node) for node in range(5)] == [1, 0, 3, 2, 3]
    assert Topology(devices=8, devices_per_node=8, devices_per_group=8).partner(0) == -1


def replica_costs(**overrides) -> StrategyCosts:
    values = dict(
        kind="replica_recovery", block_s=0.0, load_s=4.0, step_s=10.0, fallback_block_s=1.0,
        fallback_persist_s=0.0, fallback_load_s=60.0, fallback_interval_s=1000.0,
    )  # fmt: skip
    values.update(overrides)
    return costs(**values)


def test_replica_recovery_loses_at_most_one_step():
    topology = Topology(devices=16, devices_per_node=8, devices_per_group=8)  # 2 replicas, one per node

    run = simulate(replica_costs(), 1000.0, 5000.0, FailureTrace.scripted([437.0], node=0, device=-1), topology)

    assert run.fallbacks == 0
    assert run.seconds["load"] == pytest.approx(4.0)
    assert run.seconds["recompute"] == pytest.approx(7.0)  # 437 % 10


def test_replica_recovery_shard_lost_everywhere():
    # Two replicas of 4 devices share one node: a node failure (correlated) takes every
    # copy of each shard and forces the storage fallback, while a device failure does not.
    topology = Topology(devices=8, devices_per_node=8, devices_per_group=4)
    node_failure = FailureTrace.scripted([437.0], node=0, device=-1)
    device_failure = FailureTrace.scripted([437.0], node=0, device=2)
    same_shard_twice = FailureTrace((437.0, 440.0), (0, 0), (2, 6))

    correlated = simulate(replica_costs(), 1000.0, 5000.0, node_failure, topology)
    assert correlated.fallbacks == 1
    assert correlated.seconds["load"] == pytest.approx(60.0)
    assert correlated.seconds["recompute"] == pytest.approx(437.0)  # back to the initial state

    single = simulate(replica_costs(), 1000.0, 5000.0, device_failure, topology)
    assert single.fallbacks == 0

    both_copies = simulate(replica_costs(), 1000.0, 5000.0, same_shard_twice, topology)
    assert both_copies.fallbacks == 1


def test_replica_fallback_restores_last_storage_commit():
    # Storage checkpoint every 100 s of work (block 1 s): at t=437 the last commit holds
    # work 400 (committed at t=404), so the fallback recomputes 437 - 404 = 33 s.
    topology = Topology(devices=8, devices_per_node=8, devices_per_group=4)
    trace = FailureTrace.scripted([437.0], node=0, device=-1)

    run = simulate(replica_costs(fallback_interval_s=100.0), 100.0, 5000.0, trace, topology)

    assert run.fallbacks == 1
    assert run.seconds["recompute"] == pytest.approx(33.0)


def test_model_strategies_beat_storage_recovery(projection):
    at_preset = projection[projection["devices"] == 4800].set_index("strategy")
    storage = at_preset[at_preset["kind"] == "storage"]

    for model in ("in_memory_peer", "replica_recovery"):
        assert at_preset.loc[model, "recovery_s"] < storage["recovery_s"].min(), model
        assert at_preset.loc[model, "load_s"] < storage["load_s"].min(), model

    assert at_preset.loc["replica_recovery", "recompute_s"] <= 20.0  # at most one 20 s step


def test_model_strategy_not_applicable_on_one_replica(profile):
    preset = small_preset()

    rows = project(profile, preset, strategies=["replica_recovery", "in_memory_peer"], device_counts=[8, 64])
    replica = rows[rows["strategy"] == "replica_recovery"].set_index("devices")
    memory = rows[rows["strategy"] == "in_memory_peer"].set_index("devices")

    assert not replica.loc[8, "applicable"]
    assert math.isnan(replica.loc[8, "recovery_s"])
    assert "2 data-parallel replicas" in replica.loc[8, "note"]
    assert not memory.loc[8, "applicable"]  # one node
    assert memory.loc[64, "applicable"]


def test_model_costs_take_local_costs_from_profile(profile):
    preset = small_preset()
    entries = profile["strategies"]

    memory, base = model_costs("in_memory_peer", entries, preset, 4800)

    assert entries[base]["writer"] == "async"
    assert memory.block_s == pytest.approx(entries[base]["snapshot_s_per_byte"] * 1.35e9)
    assert memory.persist_s == pytest.approx(1.35e9 / 5e10)
    assert memory.contention == entries[base]["contention"]
    assert memory.fallback_load_s == strategy_costs(base, entries[base], preset, 4800).load_s


def test_in_memory_cycle_is_capped():
    huge = memory_costs(fallback_interval_s=1e9)

    assert len(checkpoint_cycle(huge, 1.0)) == MAX_CHECKPOINTS_PER_CYCLE
    assert len(checkpoint_cycle(memory_costs(), 100.0)) == 4


# Projection


def test_profile_overrides_replace_local_quantities(profile):
    overrides = {"all": {"contention": 0.5}, "async_zstd": {"compression_ratio": 4.0}}
    preset = small_preset(profile_overrides=overrides)

    rows = project(profile, preset, strategies=["async_raw", "async_zstd"], device_counts=[4800]).set_index("strategy")

    assert rows.loc["async_raw", "contention"] == 0.5
    assert rows.loc["async_zstd", "contention"] == 0.5
    assert rows.loc["async_zstd", "compression_ratio"] == 4.0
    assert rows.loc["async_raw", "compression_ratio"] == profile["strategies"]["async_raw"]["compression_ratio"]


@pytest.mark.parametrize(
    "overrides, message",
    [({"all": {"detect_s": 1.0}}, "may override only"), ({"all": {"contention": -1}}, "contention"), ({"all": 3}, "mapping")],
)
def test_profile_overrides_reject_invalid(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_preset(profile_overrides=overrides)


def test_profile_overrides_reject_unmeasured_strategy(profile):
    preset = small_preset(profile_overrides={"sync_lz4": {"contention": 0.1}})

    with pytest.raises(ValueError, match="does not measure"):
        project(profile, preset, device_counts=[64])


def test_failures_grow_with_device_count(projection):
    for strategy, rows in projection[projection["applicable"]].groupby("strategy"):
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
        "recompute_s", "detect_ci95", "restart_ci95", "load_ci95", "recompute_ci95",
        "checkpoint_block_s", "interval_s", "interval_rule", "failures", "failures_ci95",
        "throughput_impact_pct", "throughput_impact_ci95", "kind", "base_strategy", "writers",
    }  # fmt: skip

    assert expected <= set(projection.columns)
    assert len(projection) == 6 * 4  # 4 measured + 2 model strategies, 4 device counts


def test_project_list_selects_exact_strategies(profile):
    rows = project(profile, small_preset(), strategies=["sync_raw"], device_counts=[64])

    assert rows["strategy"].tolist() == ["sync_raw"]


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


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal():
    piped, terminal = io.StringIO(), FakeTerminal()

    for stream in (piped, terminal):
        progress = MonteCarloProgress(10, stream)
        progress.advance("sync_raw on 64 devices")
        progress.close()

    assert piped.getvalue() == ""
    assert "1/10 runs" in terminal.getvalue()


# Presets


def load_preset(name: str) -> ClusterPreset:
    return ClusterPreset.from_mapping(OmegaConf.to_container(OmegaConf.load(CLUSTER_DIR / f"{name}.yaml")))


@pytest.mark.parametrize("name, devices", [("paper_4800", 4800), ("llama3_16k", 16384)])
def test_llama3_presets_load(name, devices):
    preset = load_preset(name)

    assert preset.name == name
    assert preset.devices == devices
    assert preset.interval_s == "daly"
    # 419 interruptions in 54 days on 16,384 GPUs, split into device and node failures.
    assert preset.failure_rate_per_s(16384) * 54 * 86400 == pytest.approx(419, rel=1e-4)
    # Both presets shard the 6.48e12 bytes of a 405B model at 16 bytes/param.
    assert preset.checkpoint_bytes_per_device * devices == pytest.approx(405e9 * 16, rel=1e-6)


@pytest.mark.parametrize("name, per_1000_node_days", [("meta_rsc1", 6.50), ("meta_rsc2", 2.34)])
def test_meta_rsc_presets_load(name, per_1000_node_days):
    preset = load_preset(name)

    assert preset.failure_unit == "node"
    assert preset.devices_per_node == 8
    assert preset.failure_rate_per_s(8000) * 86400 == pytest.approx(per_1000_node_days, rel=1e-4)  # 1,000 nodes


def test_every_preset_file_projects(profile):
    names = sorted(path.stem for path in CLUSTER_DIR.glob("*.yaml"))
    assert {"paper_4800", "llama3_16k", "meta_rsc1", "meta_rsc2"} <= set(names)

    for name in names:
        preset = replace(load_preset(name), replications=2, horizon_days=2.0)
        rows = project(profile, preset, device_counts=[preset.devices])
        assert rows["throughput_impact_pct"].notna().all(), name


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("storage_bandwidth_Bps", -1.0, "storage_bandwidth_Bps"),
        ("read_bandwidth_Bps", 0, "read_bandwidth_Bps"),
        ("interval_s", "often", "interval_s"),
        ("interval_s", -60, "interval_s"),
        ("devices", 0, "devices"),
        ("failures_per_unit_hour", -1e-5, "failures_per_unit_hour"),
        ("failure_unit", "rack", "failure_unit"),
        ("failure_distribution", "lognormal", "failure_distribution"),
        ("weibull_shape", 0.0, "weibull_shape"),
        ("detection", "ping", "detection"),
        ("detect_timeout_s", None, "detect_timeout_s"),
        ("restart_policy", "reboot", "restart_policy"),
        ("data_parallel_groups", 4, "both set"),
        ("model_strategies", ("erasure_coding",), "model_strategies"),
        ("peer_bandwidth_Bps", None, "peer_bandwidth_Bps"),
        ("step_s", None, "step_s"),
        ("replications", 2.5, "replications"),
        ("device_counts", (), "device_counts"),
    ],
)
def test_preset_rejects_invalid_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(small_preset(), **{field: value})


def test_heartbeat_needs_interval():
    with pytest.raises(ValueError, match="heartbeat_interval_s"):
        small_preset(detection="heartbeat")


def test_preset_rejects_unknown_and_missing_keys():
    mapping = OmegaConf.to_container(OmegaConf.load(CLUSTER_DIR / "paper_4800.yaml"))

    with pytest.raises(ValueError, match="unknown keys.*storage_bandwith_Bps"):
        ClusterPreset.from_mapping({**mapping, "storage_bandwith_Bps": 1e9})

    without_restart = {key: value for key, value in mapping.items() if key != "restart_base_s"}
    with pytest.raises(ValueError, match="missing keys.*restart_base_s"):
        ClusterPreset.from_mapping(without_restart)


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


def test_measured_detection_and_restart_come_from_profile():
    import json
    from pathlib import Path

    from flashbench.sim import ClusterPreset, strategy_costs

    profile = json.loads((Path(__file__).parent / "data" / "profile_example.json").read_text())
    entry = profile["strategies"]["sync_raw"]
    mapping = {**_paper_preset_mapping(), "detection": "measured", "restart_policy": "measured"}
    costs = strategy_costs("sync_raw", entry, ClusterPreset.from_mapping(mapping), 4800)
    assert costs.detect_s == entry["detect_s"]
    assert costs.restart_s == entry["restart_s"]


def test_measured_detection_needs_profile_value():
    import json
    from pathlib import Path

    import pytest

    from flashbench.sim import ClusterPreset, strategy_costs

    profile = json.loads((Path(__file__).parent / "data" / "profile_example.json").read_text())
    entry = {**profile["strategies"]["sync_raw"], "detect_s": None}
    preset = ClusterPreset.from_mapping({**_paper_preset_mapping(), "detection": "measured"})
    with pytest.raises(ValueError, match="no measured detect_s"):
        strategy_costs("sync_raw", entry, preset, 4800)


def _paper_preset_mapping() -> dict:
    from pathlib import Path

    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "cluster" / "paper_4800.yaml").read_text())
