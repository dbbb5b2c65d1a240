"""Projection of measured strategy costs to clusters of many device counts.

`project` runs the cluster model of `flashbench.sim` for every strategy of a cost
profile and every device count, over the preset's replications, and returns one row
per strategy and device count.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Mapping

import numpy as np
import pandas as pd

from flashbench.sim import (
    PROFILE_SCHEMA,
    ClusterPreset,
    RunResult,
    choose_interval,
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

# Checkpoints per run above which a run takes seconds and earns a warning. One checkpoint
# costs about 10 microseconds (measured with Python 3.11 on a 2-core x86-64 Linux VM).
LONG_RUN_CHECKPOINTS = 500_000


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


def ci95_half_width(values: list[float]) -> float:
    """Return the half-width of the 95% confidence interval of the mean of `values`.

    NaN values are left out. The result is NaN with fewer than two values left.
    """
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if finite.size < 2:
        return math.nan

    standard_error = finite.std(ddof=1) / math.sqrt(finite.size)
    return t_quantile_975(finite.size - 1) * standard_error


def profile_strategies(profile: Mapping) -> dict[str, Mapping]:
    """Return the strategy entries of a cost profile after checking its schema and keys."""
    schema = profile.get("schema")
    if schema != PROFILE_SCHEMA:
        raise ValueError(
            f"cost profile: schema={schema!r} is not supported; this simulator reads schema {PROFILE_SCHEMA}"
        )

    entries = profile.get("strategies")
    if not isinstance(entries, Mapping) or not entries:
        raise ValueError("cost profile: 'strategies' is missing or empty; measure at least one strategy")

    for name, entry in entries.items():
        validate_profile_entry(name, entry)

    return dict(entries)


def _select_strategies(entries: Mapping[str, Mapping], strategies: list[str] | None) -> list[str]:
    if strategies is None:
        return list(entries)

    unknown = [name for name in strategies if name not in entries]
    if unknown:
        raise ValueError(
            f"project: strategies {unknown} are not in the cost profile; measured strategies are {sorted(entries)}"
        )

    return list(strategies)


def _select_device_counts(preset: ClusterPreset, device_counts: list[int] | None) -> list[int]:
    if device_counts is None:
        # The preset's own device count always gets a row, because the report reads it.
        return sorted(set(preset.device_counts) | {preset.devices})

    for count in device_counts:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ValueError(f"project: device count {count!r} is invalid; use integers >= 1")

    return sorted({int(count) for count in device_counts})


def _summarize(runs: list[RunResult]) -> dict[str, float]:
    """Reduce the replications of one strategy and device count to the projection columns."""
    failures = sum(run.failures for run in runs)
    checkpoints = sum(run.checkpoints for run in runs)
    parts = {name: sum(run.seconds[name] for run in runs) for name in ("detect", "restart", "load", "recompute")}

    # Means per failure pool all replications, so runs without a failure add no NaN.
    per_failure = {f"{name}_s": (total / failures if failures else math.nan) for name, total in parts.items()}
    recovery_s = sum(parts.values()) / failures if failures else math.nan

    impacts = [run.throughput_impact_pct for run in runs]
    wait_s = sum(run.seconds["wait"] for run in runs)

    return {
        "recovery_s": recovery_s,
        "recovery_ci95": ci95_half_width([run.recovery_s for run in runs]),
        **per_failure,
        "failures": failures / len(runs),
        "throughput_impact_pct": float(np.mean(impacts)),
        "throughput_impact_ci95": ci95_half_width(impacts),
        "checkpoints": checkpoints / len(runs),
        "checkpoint_wait_s": wait_s / checkpoints if checkpoints else 0.0,
    }


def project_one(name: str, entry: Mapping, preset: ClusterPreset, devices: int) -> dict[str, object]:
    """Simulate one strategy at one device count over the preset's replications."""
    costs = strategy_costs(name, entry, preset, devices)
    interval_s, interval_rule = choose_interval(costs, preset, devices)
    rate_per_s = preset.failure_rate_per_s(devices)

    checkpoints_per_run = preset.horizon_s / interval_s
    if checkpoints_per_run > LONG_RUN_CHECKPOINTS:
        log.warning(
            "%s on %d devices: interval %.3g s gives about %.0f checkpoints per run, so each "
            "replication may take seconds; raise interval_s or shorten horizon_days",
            name, devices, interval_s, checkpoints_per_run,
        )  # fmt: skip

    started = time.perf_counter()
    runs = [
        simulate(costs, rate_per_s, interval_s, preset.horizon_s, random_streams(preset.seed, devices, replication))
        for replication in range(preset.replications)
    ]
    elapsed_s = time.perf_counter() - started
    log.debug("projected %s on %d devices: %d replications in %.2f s", name, devices, len(runs), elapsed_s)

    return {
        "strategy": name,
        "writer": entry["writer"],
        "codec": entry["codec"],
        "layout": entry.get("layout", ""),
        "devices": devices,
        "compression_ratio": entry["compression_ratio"],
        "mtbf_s": preset.mtbf_s(devices),
        "interval_s": interval_s,
        "interval_rule": interval_rule,
        "checkpoint_block_s": costs.block_s,
        "persist_s": costs.persist_s,
        "contention": costs.contention,
        **_summarize(runs),
        "replications": preset.replications,
        "horizon_days": preset.horizon_days,
    }


def project(
    profile: dict,
    preset: ClusterPreset,
    strategies: list[str] | None = None,
    device_counts: list[int] | None = None,
) -> pd.DataFrame:
    """Project every strategy of a cost profile onto the preset's cluster.

    Returns one row per strategy and device count. Times are in seconds and means per
    failure, `failures` is the mean count per run, and the `*_ci95` columns are
    half-widths of 95% confidence intervals over the replications. Device counts default
    to the preset's `device_counts` plus its `devices`.
    """
    entries = profile_strategies(profile)
    names = _select_strategies(entries, strategies)
    counts = _select_device_counts(preset, device_counts)

    log.info(
        "projecting %d strategies on %s for %s devices, %d replications of %.0f days",
        len(names), preset.name, counts, preset.replications, preset.horizon_days,
    )  # fmt: skip
    started = time.perf_counter()

    rows = [project_one(name, entries[name], preset, devices) for name in names for devices in counts]

    log.info("projection finished in %.1f s", time.perf_counter() - started)
    return pd.DataFrame(rows)
