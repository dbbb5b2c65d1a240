"""Projection of measured strategy costs to clusters of many device counts.

`project` runs the cluster model of `flashbench.sim` for every strategy of a cost
profile, plus the preset's model strategies (`in_memory_peer`, `replica_recovery`), at
every device count over the preset's replications, and returns one row per strategy and
device count. Every strategy at a device count sees the same failure traces (common
random numbers). `interval_curve` and `sweep_claim_parameters` run the extra
simulations behind the throughput-vs-interval plot and the claim verdicts of
`flashbench.report.write_paper_table`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

import numpy as np
import pandas as pd

from flashbench.sim import (
    MODEL_STRATEGIES,
    PROFILE_SCHEMA,
    RECOVERY_PARTS,
    SECONDS_PER_HOUR,
    ClusterPreset,
    FailureTrace,
    RunResult,
    StrategyCosts,
    Topology,
    checkpoint_io,
    choose_base_strategy,
    choose_interval,
    generate_failures,
    model_strategy_applies,
    model_strategy_costs,
    random_streams,
    simulate,
    strategy_costs,
    validate_profile_entry,
)

log = logging.getLogger(__name__)

# Two-sided 95% quantiles of Student's t distribution for 1-30 degrees of freedom.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

_Z975 = 1.959964

# Factors the claim sweep multiplies a parameter by: 1/16 to 16 in steps of sqrt(2).
SWEEP_FACTORS = tuple(2.0 ** (k / 2) for k in range(-8, 9))
SWEEP_REPLICATIONS = 6  # replications per sweep point; the sweep only locates a range
CURVE_REPLICATIONS = 8  # replications per point of the interval curve


def t_quantile_975(degrees_of_freedom: int) -> float:
    """Return the 0.975 quantile of Student's t distribution.

    Above 30 degrees of freedom it uses the Cornish-Fisher expansion around the normal
    quantile, which is accurate to about 1e-4 there.
    """
    if degrees_of_freedom < 1:
        raise ValueError(f"t_quantile_975: degrees_of_freedom={degrees_of_freedom} is invalid; it must be >= 1")

    if degrees_of_freedom <= len(_T975):
        return _T975[degrees_of_freedom - 1]

    z = _Z975
    nu = float(degrees_of_freedom)
    return z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)


def ci95_half_width(values: Sequence[float]) -> float:
    """Return the half-width of the 95% confidence interval of the mean of `values`.

    NaN values are left out. The result is NaN with fewer than two values left.
    """
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if finite.size < 2:
        return math.nan

    standard_error = finite.std(ddof=1) / math.sqrt(finite.size)
    return t_quantile_975(finite.size - 1) * standard_error


class MonteCarloProgress:
    """A status line of replications done, rewritten in place; silent unless the stream is a terminal."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total = total
        self.done = 0
        self._last_write_s = 0.0

    def advance(self, label: str, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if not self.enabled or now - self._last_write_s < 0.2:
            return

        self._last_write_s = now
        self.stream.write(f"\r\033[Ksimulating {label}: {self.done}/{self.total} runs")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def profile_strategies(profile: Mapping, preset: ClusterPreset | None = None) -> dict[str, Mapping]:
    """Return the strategy entries of a cost profile after checking its schema and keys.

    With a preset, its `profile_overrides` replace the profile's local quantities.
    """
    schema = profile.get("schema")
    if schema != PROFILE_SCHEMA:
        raise ValueError(
            f"cost profile: schema={schema!r} is not supported; this simulator reads schema {PROFILE_SCHEMA}"
        )

    entries = profile.get("strategies")
    if not isinstance(entries, Mapping) or not entries:
        raise ValueError("cost profile: 'strategies' is missing or empty; measure at least one strategy")

    if preset is not None:
        entries = preset.apply_profile_overrides(entries)

    for name, entry in entries.items():
        validate_profile_entry(name, entry)

    return dict(entries)


def _select_strategies(entries: Mapping[str, Mapping], preset: ClusterPreset, strategies: list[str] | None) -> list[str]:
    if strategies is None:
        return [*entries, *(name for name in preset.model_strategies if name not in entries)]

    unknown = [name for name in strategies if name not in entries and name not in MODEL_STRATEGIES]
    if unknown:
        raise ValueError(
            f"project: strategies {unknown} are not in the cost profile; measured strategies are "
            f"{sorted(entries)} and the model adds {list(MODEL_STRATEGIES)}"
        )

    if "replica_recovery" in strategies and "replica_recovery" not in entries and preset.step_s is None:
        raise ValueError(f"project: replica_recovery needs step_s in cluster preset {preset.name!r}; set it")

    if any(name in MODEL_STRATEGIES and name not in entries for name in strategies) and preset.peer_bandwidth_Bps is None:
        raise ValueError(f"project: model strategies need peer_bandwidth_Bps in cluster preset {preset.name!r}; set it")

    return list(strategies)


def _select_device_counts(preset: ClusterPreset, device_counts: list[int] | None) -> list[int]:
    if device_counts is None:
        # The preset's own device count always gets a row, because the report reads it.
        return sorted(set(preset.device_counts) | {preset.devices})

    for count in device_counts:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"project: device count {count!r} is invalid; use integers >= 1")

    return sorted({int(count) for count in device_counts})


def failure_traces(preset: ClusterPreset, devices: int, replications: int | None = None) -> list[FailureTrace]:
    """Draw the failure trace of each replication at one device count."""
    count = preset.replications if replications is None else replications
    return [
        generate_failures(preset, devices, preset.horizon_s, random_streams(preset.seed, devices, replication))
        for replication in range(count)
    ]


def _mean_and_ci(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    return (float(np.mean(finite)) if finite else math.nan), ci95_half_width(values)


def _summarize(runs: list[RunResult]) -> dict[str, float]:
    """Reduce the replications of one strategy and device count to the projection columns.

    Means per failure pool all replications, so runs without a failure add no NaN; their
    confidence intervals come from the per-run means.
    """
    failures = sum(run.failures for run in runs)
    checkpoints = sum(run.checkpoints for run in runs)
    summary: dict[str, float] = {}

    recovery_total = sum(run.seconds[name] for run in runs for name in RECOVERY_PARTS)
    summary["recovery_s"] = recovery_total / failures if failures else math.nan
    summary["recovery_ci95"] = ci95_half_width([run.recovery_s for run in runs])

    for name in RECOVERY_PARTS:
        total = sum(run.seconds[name] for run in runs)
        per_run = [run.seconds[name] / run.failures if run.failures else math.nan for run in runs]
        summary[f"{name}_s"] = total / failures if failures else math.nan
        summary[f"{name}_ci95"] = ci95_half_width(per_run)

    for column, values in (
        ("failures", [run.failures for run in runs]),
        ("fallbacks", [run.fallbacks for run in runs]),
        ("throughput_impact_pct", [run.throughput_impact_pct for run in runs]),
        ("checkpoints", [run.checkpoints for run in runs]),
    ):
        mean, ci95 = _mean_and_ci([float(v) for v in values])
        summary[column] = mean
        summary[column.removesuffix("_pct") + "_ci95"] = ci95

    wait_s = sum(run.seconds["wait"] for run in runs)
    summary["checkpoint_wait_s"] = wait_s / checkpoints if checkpoints else 0.0
    return summary


def _run_replications(
    costs: StrategyCosts,
    interval_s: float,
    preset: ClusterPreset,
    traces: Sequence[FailureTrace],
    topology: Topology | None,
    label: str,
    progress: MonteCarloProgress | None,
) -> list[RunResult]:
    runs = []
    for trace in traces:
        runs.append(simulate(costs, interval_s, preset.horizon_s, trace, topology))
        if progress is not None:
            progress.advance(label)

    return runs


def _cost_columns(costs: StrategyCosts, preset: ClusterPreset, devices: int) -> dict[str, object]:
    return {
        "devices": devices,
        "nodes": preset.nodes(devices),
        "data_parallel_groups": preset.data_parallel_group_count(devices),
        "mtbf_s": preset.mtbf_s(devices),
        "checkpoint_block_s": costs.block_s,
        "persist_s": costs.persist_s,
        "contention": costs.contention,
        "restore_cost_s": costs.load_s,
    }


def project_one(
    name: str,
    entry: Mapping,
    preset: ClusterPreset,
    devices: int,
    traces: Sequence[FailureTrace] | None = None,
    progress: MonteCarloProgress | None = None,
) -> dict[str, object]:
    """Simulate one measured strategy at one device count over the preset's replications."""
    traces = failure_traces(preset, devices) if traces is None else traces
    topology = preset.topology(devices)
    costs = strategy_costs(name, entry, preset, devices)
    interval_s, interval_rule = choose_interval(costs, preset, devices, traces[: preset.optimal_replications], topology)
    io = checkpoint_io(entry, preset, devices)

    started = time.perf_counter()
    runs = _run_replications(costs, interval_s, preset, traces, None, f"{name} on {devices} devices", progress)
    log.debug("projected %s on %d devices: %d replications in %.2f s", name, devices, len(runs), time.perf_counter() - started)

    return {
        "strategy": name,
        "kind": "storage",
        "writer": entry["writer"],
        "codec": entry["codec"],
        "layout": io.layout,
        "base_strategy": "",
        "applicable": True,
        "note": "",
        **_cost_columns(costs, preset, devices),
        "writers": io.writers,
        "encode_s": io.encode_s,
        "write_s": io.write_s,
        "compression_ratio": entry["compression_ratio"],
        "interval_s": interval_s,
        "interval_rule": interval_rule,
        **_summarize(runs),
        "replications": len(runs),
        "horizon_days": preset.horizon_days,
    }


def fallback_interval_s(base_costs: StrategyCosts, preset: ClusterPreset, devices: int) -> float:
    """Return the seconds of training between storage fallback checkpoints of the model strategies.

    That is the preset's `fallback_interval_s` when set. Otherwise it is the interval that
    the preset's rule gives the base strategy alone, by Daly's rule when the preset's rule
    is "optimal" or a number.
    """
    if preset.fallback_interval_s is not None:
        return float(preset.fallback_interval_s)

    rule_preset = preset if preset.interval_s in ("young", "daly") else dataclasses.replace(preset, interval_s="daly")
    return choose_interval(base_costs, rule_preset, devices)[0]


def model_costs(kind: str, entries: Mapping[str, Mapping], preset: ClusterPreset, devices: int) -> tuple[StrategyCosts, str]:
    """Return the costs of a model strategy at `devices` devices and the name of its base strategy."""
    base = choose_base_strategy(entries, preset, devices)
    base_costs = strategy_costs(base, entries[base], preset, devices)
    fallback_s = fallback_interval_s(base_costs, preset, devices)
    return model_strategy_costs(kind, base, entries[base], preset, devices, fallback_s), base


def project_model_one(
    kind: str,
    entries: Mapping[str, Mapping],
    preset: ClusterPreset,
    devices: int,
    traces: Sequence[FailureTrace] | None = None,
    progress: MonteCarloProgress | None = None,
) -> dict[str, object]:
    """Simulate `in_memory_peer` or `replica_recovery` at one device count.

    Where the strategy cannot run (one node, or one replica) the row has NaN figures,
    `applicable` False and the reason in `note`.
    """
    topology = preset.topology(devices)
    costs, base = model_costs(kind, entries, preset, devices)
    applies, reason = model_strategy_applies(kind, topology)
    row = {
        "strategy": kind,
        "kind": kind,
        "writer": kind,
        "codec": "raw",
        "layout": "peer",
        "base_strategy": base,
        "applicable": applies,
        "note": reason,
        **_cost_columns(costs, preset, devices),
        "writers": devices,
        "encode_s": 0.0,
        "write_s": 0.0,
        "compression_ratio": 1.0,
    }
    if not applies:
        if progress is not None:
            progress.advance(kind, preset.replications)

        empty = _summarize([])
        return {**row, "interval_s": math.nan, "interval_rule": "not applicable", **empty,
                "replications": 0, "horizon_days": preset.horizon_days}  # fmt: skip

    traces = failure_traces(preset, devices) if traces is None else traces
    interval_s, interval_rule = choose_interval(costs, preset, devices, traces[: preset.optimal_replications], topology)
    runs = _run_replications(costs, interval_s, preset, traces, topology, f"{kind} on {devices} devices", progress)

    return {
        **row,
        "interval_s": interval_s,
        "interval_rule": interval_rule,
        **_summarize(runs),
        "replications": len(runs),
        "horizon_days": preset.horizon_days,
    }


def project(
    profile: dict,
    preset: ClusterPreset,
    strategies: list[str] | None = None,
    device_counts: list[int] | None = None,
) -> pd.DataFrame:
    """Project every strategy of a cost profile onto the preset's cluster.

    `strategies` None means every measured strategy plus the preset's
    `model_strategies`; a list means exactly those names, measured or model. Returns one
    row per strategy and device count. Times are in seconds and means per failure,
    `failures` is the mean count per run, and the `*_ci95` columns are half-widths of 95%
    confidence intervals over the replications. Device counts default to the preset's
    `device_counts` plus its `devices`.
    """
    entries = profile_strategies(profile, preset)
    names = _select_strategies(entries, preset, strategies)
    counts = _select_device_counts(preset, device_counts)

    log.info(
        "projecting %d strategies on %s for %s devices, %d replications of %.0f days",
        len(names), preset.name, counts, preset.replications, preset.horizon_days,
    )  # fmt: skip
    started = time.perf_counter()
    progress = MonteCarloProgress(len(names) * len(counts) * preset.replications)

    rows = []
    for devices in counts:
        traces = failure_traces(preset, devices)
        for name in names:
            if name in entries:
                rows.append(project_one(name, entries[name], preset, devices, traces, progress))
            else:
                rows.append(project_model_one(name, entries, preset, devices, traces, progress))

    progress.close()
    log.info("projection finished in %.1f s", time.perf_counter() - started)
    return pd.DataFrame(rows)


# Extra simulations for the throughput-vs-interval plot and the claim verdicts


def _costs_at(name: str, entries: Mapping[str, Mapping], preset: ClusterPreset, devices: int) -> StrategyCosts:
    if name in entries:
        return strategy_costs(name, entries[name], preset, devices)

    return model_costs(name, entries, preset, devices)[0]


def interval_curve(
    profile: dict,
    preset: ClusterPreset,
    strategies: list[str] | None = None,
    points: int = 25,
    replications: int = CURVE_REPLICATIONS,
) -> pd.DataFrame:
    """Simulate throughput impact against the checkpoint interval at the preset's device count.

    Each strategy gets `points` intervals from 1/30 to 30 times the one its rule chose,
    over the same failure traces. For replica_recovery the interval is that of its storage
    fallback. Returns one row per strategy and interval, with the chosen interval and rule.
    """
    entries = profile_strategies(profile, preset)
    names = _select_strategies(entries, preset, strategies)
    devices = preset.devices
    topology = preset.topology(devices)
    traces = failure_traces(preset, devices, min(replications, preset.replications))
    progress = MonteCarloProgress(len(names) * points * len(traces))

    rows = []
    for name in names:
        costs = _costs_at(name, entries, preset, devices)
        if costs.kind != "storage" and not model_strategy_applies(costs.kind, topology)[0]:
            continue

        chosen_s, rule = choose_interval(costs, preset, devices, traces[: preset.optimal_replications], topology)
        if math.isinf(chosen_s):
            continue

        for interval_s in chosen_s * np.logspace(-math.log10(30), math.log10(30), points):
            interval_s = float(min(interval_s, preset.horizon_s))
            point_costs = costs
            if costs.kind == "replica_recovery":
                point_costs = dataclasses.replace(costs, fallback_interval_s=interval_s)

            impacts = [simulate(point_costs, interval_s, preset.horizon_s, trace, topology).throughput_impact_pct for trace in traces]
            progress.advance(f"interval curve of {name}", len(traces))
            rows.append({
                "strategy": name,
                "interval_s": interval_s,
                "throughput_impact_pct": float(np.mean(impacts)),
                "throughput_impact_ci95": ci95_half_width(impacts),
                "chosen_interval_s": chosen_s,
                "interval_rule": rule,
            })  # fmt: skip

    progress.close()
    return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class SweepParameter:
    """A cluster parameter the claim sweep scales, and how a reader sees its value."""

    name: str
    label: str  # as it reads in a verdict: "detect + restart"
    unit: str
    scale: Callable[[ClusterPreset, float], ClusterPreset]
    value: Callable[[ClusterPreset, int], float]  # the value in `unit` at a device count


def _scale_detect_restart(preset: ClusterPreset, factor: float) -> ClusterPreset:
    changes = {"restart_base_s": preset.restart_base_s * factor, "restart_per_device_s": preset.restart_per_device_s * factor}
    if preset.detection == "timeout":
        changes["detect_timeout_s"] = preset.detect_timeout_s * factor
    else:
        changes["heartbeat_interval_s"] = preset.heartbeat_interval_s * factor

    return dataclasses.replace(preset, **changes)


def _scale_bandwidth(preset: ClusterPreset, factor: float) -> ClusterPreset:
    return dataclasses.replace(
        preset,
        storage_bandwidth_Bps=preset.storage_bandwidth_Bps * factor,
        read_bandwidth_Bps=preset.read_bandwidth_Bps * factor,
        device_storage_bandwidth_Bps=preset.device_storage_bandwidth_Bps * factor,
    )


def _scale_failure_rate(preset: ClusterPreset, factor: float) -> ClusterPreset:
    return dataclasses.replace(
        preset,
        failures_per_unit_hour=preset.failures_per_unit_hour * factor,
        node_failures_per_node_hour=preset.node_failures_per_node_hour * factor,
    )


SWEEP_PARAMETERS = (
    SweepParameter(
        "detect_restart", "detect + restart", "s", _scale_detect_restart,
        lambda preset, devices: preset.detect_s + preset.restart_s(devices),
    ),
    SweepParameter(
        "storage_bandwidth", "aggregate storage write bandwidth (device links and reads scaled alike)", "GB/s",
        _scale_bandwidth, lambda preset, devices: preset.storage_bandwidth_Bps / 1e9,
    ),
    SweepParameter(
        "failure_rate", "job MTBF", "h", _scale_failure_rate,
        lambda preset, devices: preset.mtbf_s(devices) / SECONDS_PER_HOUR,
    ),
)  # fmt: skip


def sweep_claim_parameters(
    profile: dict,
    preset: ClusterPreset,
    strategies: list[str],
    factors: Sequence[float] = SWEEP_FACTORS,
    replications: int = SWEEP_REPLICATIONS,
) -> pd.DataFrame:
    """Project `strategies` at the preset's device count with each sweep parameter scaled.

    Returns one row per strategy, parameter and factor with the parameter's value and the
    projected recovery_s and throughput_impact_pct. The interval rule runs again at every
    point, so a faster storage also gets its own interval.
    """
    entries = profile_strategies(profile, preset)
    names = _select_strategies(entries, preset, strategies)
    base = dataclasses.replace(preset, replications=min(replications, preset.replications))
    devices = preset.devices
    progress = MonteCarloProgress(len(SWEEP_PARAMETERS) * len(factors) * len(names) * base.replications)

    rows = []
    for parameter in SWEEP_PARAMETERS:
        for factor in factors:
            scaled = parameter.scale(base, factor)
            traces = failure_traces(scaled, devices)
            for name in names:
                if name in entries:
                    row = project_one(name, entries[name], scaled, devices, traces, progress)
                else:
                    row = project_model_one(name, entries, scaled, devices, traces, progress)

                rows.append({
                    "strategy": name,
                    "parameter": parameter.name,
                    "label": parameter.label,
                    "unit": parameter.unit,
                    "factor": factor,
                    "value": parameter.value(scaled, devices),
                    "recovery_s": row["recovery_s"],
                    "throughput_impact_pct": row["throughput_impact_pct"],
                })  # fmt: skip

    progress.close()
    return pd.DataFrame(rows)

