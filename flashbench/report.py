"""Reports of a projection: tables, verdicts and plots.

`write_reports` writes projection.csv, table.md and recovery_vs_devices.png from a
projection. `write_paper_table` writes the table of the published claim below: it
projects every strategy, runs the interval curve and the claim sweep of
`flashbench.projection`, and also writes verdicts.csv, throughput_vs_interval.png and
recovery_breakdown_projected.png.

table.md sets the projection at the preset's device count beside the published claim
for 4,800 devices:

| Configuration      | Recovery time | Throughput impact |
|--------------------|---------------|-------------------|
| Sync, uncompressed | 10+ min       | 20-30% slowdown   |
| Sync, compressed   | 5 min         | 10-15% slowdown   |
| Async, compressed  | 150 s         | <5% slowdown      |

The same claim states that compressed checkpoints are 5-10x smaller.
"""

from __future__ import annotations

import logging
import math
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from flashbench.projection import (  # noqa: E402
    SWEEP_FACTORS,
    SWEEP_REPLICATIONS,
    interval_curve,
    project,
    sweep_claim_parameters,
)
from flashbench.sim import RECOVERY_PARTS, ClusterPreset  # noqa: E402

log = logging.getLogger(__name__)

NO_CLAIM = "no claim"
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"

# Pooled failure count below which the plot marks a mean recovery time as unreliable.
MIN_FAILURES_FOR_ESTIMATE = 10

INTERVAL_RULE_TEXT = {
    "young": "Young's rule sqrt(2 * delta * MTBF) per strategy",
    "daly": "Daly's higher-order rule per strategy",
    "optimal": "the simulated optimum per strategy (golden-section search over the log interval, common random numbers)",
}


@dataclass(frozen=True)
class ClaimRange:
    """A claimed value as printed in the claim and the range of values it is read as."""

    text: str
    low: float
    high: float
    high_inclusive: bool = True  # False for "<5%", which excludes 5% itself

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"claim {self.text!r}: low={self.low} is above high={self.high}; swap them")

    def contains(self, value: float) -> bool:
        return verdict(value, self) == "within claim"


@dataclass(frozen=True)
class Claim:
    """One row of the published claim: recovery in seconds, throughput impact in percent."""

    configuration: str
    recovery_s: ClaimRange
    impact_pct: ClaimRange


# Keyed by (writer, compressed). "5 min" is read as 4-6 min and "150 s" as 120-180 s.
CLAIMS: dict[tuple[str, bool], Claim] = {
    ("sync", False): Claim(
        "Sync, uncompressed",
        ClaimRange("10+ min", 600.0, math.inf),
        ClaimRange("20-30%", 20.0, 30.0),
    ),
    ("sync", True): Claim(
        "Sync, compressed",
        ClaimRange("5 min", 240.0, 360.0),
        ClaimRange("10-15%", 10.0, 15.0),
    ),
    ("async", True): Claim(
        "Async, compressed",
        ClaimRange("150 s", 120.0, 180.0),
        ClaimRange("<5%", -math.inf, 5.0, high_inclusive=False),
    ),
}

COMPRESSION_CLAIM = ClaimRange("5-10x smaller", 5.0, 10.0)

# Projection columns and table labels of the two claimed metrics.
METRICS = {"recovery": "recovery_s", "impact": "throughput_impact_pct"}


def find_claim(writer: str, codec: str) -> Claim | None:
    """Return the claim row for a writer and codec, or None where the claim has none.

    Every codec except "raw" counts as compressed, so later codecs such as
    zstd_bytegroup are held to the "compressed" rows as well.
    """
    return CLAIMS.get((writer, codec != "raw"))


def claim_range(claim: Claim, metric: str) -> ClaimRange:
    return claim.recovery_s if metric == "recovery" else claim.impact_pct


def verdict(value: float, claim: ClaimRange) -> str:
    """Return "below claim", "within claim" or "above claim" for a projected value."""
    if math.isnan(value):
        return "no data"

    if value < claim.low:
        return "below claim"

    if value > claim.high or (value == claim.high and not claim.high_inclusive):
        return "above claim"

    return "within claim"


def cell_verdict(value: float, claim: ClaimRange) -> str:
    """Return "reproduced" when the projected mean lies in the claimed range, else "not reproduced"."""
    if math.isnan(value):
        return "no data"

    return REPRODUCED if claim.contains(value) else NOT_REPRODUCED


def format_duration(seconds: float) -> str:
    """Format seconds in the unit a reader expects: "85 s", "3.2 min" or "1.5 h"."""
    if math.isnan(seconds):
        return "n/a"

    if seconds < 120:
        return f"{seconds:.0f} s"

    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"

    return f"{seconds / 3600:.1f} h"


def format_percent(value: float, ci95: float) -> str:
    """Format a percentage with its 95% confidence half-width, e.g. "1.4% ± 0.2".

    A half-width under 0.1 (or a value under 1 without one) gets two decimals, so that it
    does not round to 0.
    """
    if math.isnan(value):
        return "n/a"

    if math.isnan(ci95):
        decimals = 1 if abs(value) >= 1 else 2
        return f"{value:.{decimals}f}%"

    decimals = 1 if ci95 >= 0.1 else 2

    return f"{value:.{decimals}f}% ± {ci95:.{decimals}f}"


def format_value(value: float, unit: str) -> str:
    """Format a sweep parameter's value: durations as format_duration, other units with 3 digits
    below 100 and as whole numbers above, e.g. "0.933 h" or "8,000 GB/s"."""
    if unit == "s":
        return format_duration(value)

    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"

    return f"{value:.3g} {unit}"


# Verdicts with a parameter range


def range_text(label: str, unit: str, low: float, high: float, low_at_edge: bool, high_at_edge: bool) -> str:
    """Word the parameter range over which a claim holds, e.g. "holds only when X is in 10 s to 40 s".

    An end that lies on the edge of the sweep is marked, because the claim may hold
    beyond it as well.
    """
    low_text = format_value(low, unit) + (" (sweep edge)" if low_at_edge else "")
    high_text = format_value(high, unit) + (" (sweep edge)" if high_at_edge else "")
    if low == high:
        return f"holds only when {label} is near {low_text}"

    return f"holds only when {label} is in {low_text} to {high_text}"


def _within_run(rows: pd.DataFrame, column: str, claim: ClaimRange) -> pd.DataFrame | None:
    """Return the longest run of consecutive sweep points (by factor) inside the claimed range."""
    rows = rows.sort_values("factor")
    best: list[int] = []
    current: list[int] = []
    for index, value in zip(rows.index, rows[column]):
        if claim.contains(value):
            current.append(index)
            if len(current) > len(best):
                best = list(current)
        else:
            current = []

    return rows.loc[best] if best else None


def _influence(rows: pd.DataFrame, column: str) -> float:
    """Relative spread of a metric over one parameter's sweep: (max - min) / mean."""
    values = rows[column].dropna()
    if values.empty or values.abs().mean() == 0:
        return 0.0

    return float((values.max() - values.min()) / values.abs().mean())


def sweep_verdict(strategy: str, metric: str, claim: ClaimRange, sweep: pd.DataFrame) -> dict[str, object]:
    """Find the parameter range over which a claim not reproduced at the preset would hold.

    Parameters are tried from the most influential down, by the relative spread of the
    metric over each sweep. The first one with sweep points inside the claimed range
    gives the range, to the precision of the sweep grid.
    """
    column = METRICS[metric]
    rows = sweep[sweep["strategy"] == strategy]
    ranked = sorted(rows.groupby("parameter"), key=lambda item: _influence(item[1], column), reverse=True)

    for parameter, parameter_rows in ranked:
        run = _within_run(parameter_rows, column, claim)
        if run is None:
            continue

        values = run["value"]
        all_values = parameter_rows["value"]
        low, high = float(values.min()), float(values.max())
        label, unit = parameter_rows["label"].iloc[0], parameter_rows["unit"].iloc[0]
        low_at_edge = math.isclose(low, float(all_values.min()))
        high_at_edge = math.isclose(high, float(all_values.max()))
        return {
            "verdict": range_text(label, unit, low, high, low_at_edge, high_at_edge),
            "parameter": parameter,
            "range_low": low,
            "range_high": high,
            "unit": unit,
        }

    most = ranked[0][0] if ranked else ""
    return {"verdict": NOT_REPRODUCED, "parameter": most, "range_low": math.nan, "range_high": math.nan, "unit": ""}


def claim_verdicts(rows: pd.DataFrame, sweep: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return one verdict per claimed strategy and metric (recovery, impact) at one device count.

    Without a sweep a cell is "reproduced" or "not reproduced"; with one, a cell not
    reproduced at the preset can become "holds only when <parameter> is in <range>".
    """
    verdicts = []
    for row in rows.to_dict("records"):
        claim = find_claim(row["writer"], row["codec"])
        if claim is None:
            continue

        for metric, column in METRICS.items():
            claimed = claim_range(claim, metric)
            value = row[column]
            entry = {"verdict": cell_verdict(value, claimed), "parameter": "", "range_low": math.nan, "range_high": math.nan, "unit": ""}
            if entry["verdict"] == NOT_REPRODUCED and sweep is not None and not sweep.empty:
                entry = sweep_verdict(row["strategy"], metric, claimed, sweep)

            ci_column = "recovery_ci95" if metric == "recovery" else "throughput_impact_ci95"
            verdicts.append({
                "strategy": row["strategy"],
                "configuration": claim.configuration,
                "metric": metric,
                "claimed": claimed.text,
                "projected": value,
                "projected_ci95": row.get(ci_column, math.nan),
                **entry,
            })  # fmt: skip

    columns = ["strategy", "configuration", "metric", "claimed", "projected", "projected_ci95", "verdict",
               "parameter", "range_low", "range_high", "unit"]  # fmt: skip
    return pd.DataFrame(verdicts, columns=columns)


# table.md


TABLE_HEADER = [
    "Strategy",
    "Claimed configuration",
    "Claimed recovery",
    "Projected recovery",
    "Recovery verdict",
    "Claimed impact",
    "Projected impact",
    "Impact verdict",
    "Detect",
    "Restart",
    "Load",
    "Recompute",
    "Checkpoint interval",
]


def _format_interval(row: Mapping) -> str:
    if row.get("applicable", True) is False or math.isnan(row["interval_s"]):
        return "n/a"

    return f"{format_duration(row['interval_s'])} ({row['interval_rule']})"


def _recovery_parts(row: Mapping) -> list[str]:
    if row["failures"] == 0 or math.isnan(row["failures"]):
        return ["-"] * len(RECOVERY_PARTS)

    return [format_duration(row[f"{part}_s"]) for part in RECOVERY_PARTS]


def _table_row(row: Mapping, verdict_text: Mapping[tuple[str, str], str]) -> list[str]:
    claim = find_claim(row["writer"], row["codec"])
    recovery = format_duration(row["recovery_s"])
    impact = format_percent(row["throughput_impact_pct"], row["throughput_impact_ci95"])
    if row.get("applicable", True) is False:
        recovery = impact = f"n/a ({row.get('note', '')})"
    elif row["failures"] == 0:
        recovery = "no failures"

    parts = _recovery_parts(row)
    interval = _format_interval(row)
    if claim is None:
        return [row["strategy"], NO_CLAIM, "-", recovery, NO_CLAIM, "-", impact, NO_CLAIM, *parts, interval]

    return [
        row["strategy"],
        claim.configuration,
        claim.recovery_s.text,
        recovery,
        verdict_text.get((row["strategy"], "recovery"), cell_verdict(row["recovery_s"], claim.recovery_s)),
        claim.impact_pct.text,
        impact,
        verdict_text.get((row["strategy"], "impact"), cell_verdict(row["throughput_impact_pct"], claim.impact_pct)),
        *parts,
        interval,
    ]


def format_markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Format a Markdown table with padded columns so it also reads well in a terminal."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def format_line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([format_line(header), separator, *(format_line(row) for row in rows)])


def _describe_profile(profile: Mapping) -> str:
    workload = profile.get("workload", {})
    machine = profile.get("machine", {})
    parts = [f"workload {workload.get('name', 'unknown')}"]

    if "parameters" in workload:
        parts.append(f"{workload['parameters']:,} parameters")

    parts.append(f"measured on {machine.get('platform', 'an unknown platform')}")
    parts.append(f"schema {profile.get('schema')}")

    if "path" in profile:
        parts.append(f"file {profile['path']}")

    return ", ".join(parts)


def _describe_compression(profile: Mapping) -> str:
    ratios = []
    for name, entry in profile.get("strategies", {}).items():
        if entry.get("codec") == "raw":
            continue

        ratio = entry["compression_ratio"]
        ratios.append(f"{name} {ratio:.2f}x ({verdict(ratio, COMPRESSION_CLAIM)})")

    if not ratios:
        return f"No compressed strategy was measured; the claim states {COMPRESSION_CLAIM.text}."

    return f"Measured compression ratios: {', '.join(ratios)}; the claim states {COMPRESSION_CLAIM.text}."


def _describe_failures(preset: ClusterPreset) -> str:
    distribution = preset.failure_distribution
    if distribution == "weibull":
        distribution = f"Weibull (shape {preset.weibull_shape:g})"

    text = f"Failures: {distribution} gaps, {preset.failures_per_unit_hour:.3g} per {preset.failure_unit} per hour"
    if preset.node_failures_per_node_hour > 0:
        text += f", plus {preset.node_failures_per_node_hour:.3g} node failures per node per hour"

    mtbf_h = preset.mtbf_s(preset.devices) / 3600.0
    return f"{text}; job MTBF {mtbf_h:.3g} h at {preset.devices:,} devices."


def _describe_interval(preset: ClusterPreset) -> str:
    if isinstance(preset.interval_s, str):
        rule = INTERVAL_RULE_TEXT[preset.interval_s]
    else:
        rule = f"a fixed {format_duration(float(preset.interval_s))} from the preset"

    return (
        f"Checkpoint interval: {rule} (column 'Checkpoint interval' names the rule per row; "
        "Young and Daly use the block plus the work lost to contention as delta)."
    )


def _describe_model_strategies(rows: pd.DataFrame) -> str | None:
    model = rows[rows["kind"] != "storage"] if "kind" in rows else rows.iloc[0:0]
    if model.empty:
        return None

    bases = ", ".join(f"{row['strategy']} over {row['base_strategy']}" for row in model.to_dict("records"))
    return (
        f"Model strategies ({bases}): in_memory_peer restores from a peer node's memory and "
        "replica_recovery from a healthy data-parallel replica; both fall back to the base "
        "strategy's storage checkpoint, and the claim has no row for them."
    )


def build_table(
    projection: pd.DataFrame,
    profile: Mapping,
    preset: ClusterPreset,
    verdicts: pd.DataFrame | None = None,
) -> str:
    """Build table.md: one row per strategy at the preset's device count, then notes."""
    rows = rows_at_devices(projection, preset.devices)
    verdict_text = {}
    if verdicts is not None:
        verdict_text = {(v["strategy"], v["metric"]): v["verdict"] for v in verdicts.to_dict("records")}

    table = format_markdown_table(TABLE_HEADER, [_table_row(row, verdict_text) for row in rows.to_dict("records")])

    replications = int(rows["replications"].max())
    horizon_days = float(rows["horizon_days"].iloc[0])
    preset_line = (
        f"Projected at {preset.devices:,} devices with cluster preset {preset.name} over "
        f"{horizon_days:g} days and {replications} replications, from the cost profile of "
        f"{_describe_profile(profile)}. Impact is the loss of training throughput, "
        "100 * (1 - useful training time / wall time); ± is the 95% confidence half-width. "
        "Detect, restart, load and recompute are means per failure and add up to the projected recovery."
    )
    notes = [preset_line, _describe_failures(preset), _describe_interval(preset)]

    model_line = _describe_model_strategies(rows)
    if model_line:
        notes.append(model_line)

    notes.append(
        "Verdicts: reproduced when the projected mean lies in the claimed range; "
        "'holds only when' names the range of the most influential parameter that reaches "
        "the claim, from a sweep of 1/16x to 16x in steps of sqrt(2) with the other numbers "
        "fixed (grid precision); otherwise not reproduced."
    )
    notes.append(_describe_compression(profile))
    return "\n".join([table, "", *(f"{note}\n" for note in notes)])


def rows_at_devices(projection: pd.DataFrame, devices: int) -> pd.DataFrame:
    """Return the projection rows for one device count, raising ValueError if there are none."""
    rows = projection[projection["devices"] == devices]
    if rows.empty:
        available = sorted(projection["devices"].unique().tolist())
        raise ValueError(
            f"projection has no rows for {devices} devices (it has {available}); "
            f"add {devices} to the device counts of the projection"
        )

    if "kind" not in rows:
        rows = rows.assign(kind="storage", base_strategy="")

    return rows


# Plots


def plot_recovery_vs_devices(projection: pd.DataFrame, preset: ClusterPreset, path: pathlib.Path) -> None:
    """Plot mean recovery time per failure against device count, one line per strategy.

    Hollow markers flag points pooled from fewer than MIN_FAILURES_FOR_ESTIMATE simulated
    failures, whose mean is too noisy to read much into. Strategies that cannot run at a
    device count leave a gap.
    """
    figure, axes = plt.subplots(figsize=(7.5, 4.5))

    for index, (strategy, rows) in enumerate(projection.groupby("strategy", sort=False)):
        rows = rows.sort_values("devices")
        minutes = rows["recovery_s"] / 60.0
        color = f"C{index}"
        axes.plot(rows["devices"], minutes, marker="o", color=color, label=strategy)

        pooled_failures = rows["failures"] * rows["replications"]
        sparse = pooled_failures < MIN_FAILURES_FOR_ESTIMATE
        axes.plot(
            rows["devices"][sparse],
            minutes[sparse],
            linestyle="none",
            marker="o",
            color=color,
            markerfacecolor="white",
        )

    axes.axvline(preset.devices, color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    if (projection["recovery_s"] > 0).any():  # a log axis needs at least one positive value
        axes.set_yscale("log")
    axes.set_xlabel("devices")
    axes.set_ylabel("mean recovery time per failure (min)")
    axes.set_title(
        f"Projected recovery time, cluster preset {preset.name}\n"
        f"(hollow: fewer than {MIN_FAILURES_FOR_ESTIMATE} failures simulated; dotted: {preset.devices:,} devices)",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)

    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def plot_throughput_vs_interval(curve: pd.DataFrame, preset: ClusterPreset, path: pathlib.Path) -> None:
    """Plot throughput impact against checkpoint interval per strategy (the U-curve).

    A star marks the least simulated impact on each curve's grid, a hollow circle the
    interval the preset's rule chose.
    """
    figure, axes = plt.subplots(figsize=(7.5, 4.5))

    for index, (strategy, rows) in enumerate(curve.groupby("strategy", sort=False)):
        rows = rows.sort_values("interval_s")
        color = f"C{index}"
        axes.plot(rows["interval_s"], rows["throughput_impact_pct"], color=color, label=strategy)

        best = rows.loc[rows["throughput_impact_pct"].idxmin()]
        axes.plot(best["interval_s"], best["throughput_impact_pct"], marker="*", markersize=12, color=color)

        chosen_s = rows["chosen_interval_s"].iloc[0]
        nearest = rows.iloc[(rows["interval_s"] - chosen_s).abs().argmin()]
        axes.plot(chosen_s, nearest["throughput_impact_pct"], marker="o", markerfacecolor="white", color=color)

    axes.set_xscale("log")
    if (curve["throughput_impact_pct"] > 0).any():
        axes.set_yscale("log")
    axes.set_xlabel("checkpoint interval (s of training; replica_recovery: its storage fallback)")
    axes.set_ylabel("throughput impact (%)")
    axes.set_title(
        f"Throughput impact vs checkpoint interval, {preset.devices:,} devices, preset {preset.name}\n"
        "(star: least simulated impact on the grid; hollow circle: the interval the rule chose)",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)

    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def plot_recovery_breakdown_projected(rows: pd.DataFrame, preset: ClusterPreset, path: pathlib.Path) -> None:
    """Draw the projected recovery of each strategy as stacked bars of its parts, in seconds."""
    rows = rows[rows["failures"] > 0]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.3 * len(rows)), 4.5))
    bottom = pd.Series(0.0, index=rows.index)

    for part in RECOVERY_PARTS:
        values = rows[f"{part}_s"].fillna(0.0)
        axes.bar(rows["strategy"], values, bottom=bottom, label=part)
        bottom += values

    for x, total in enumerate(bottom):
        axes.annotate(format_duration(total), (x, total), ha="center", va="bottom", fontsize=8)

    axes.set_ylabel("seconds (mean per failure)")
    axes.set_title(f"Projected recovery by part, {preset.devices:,} devices, preset {preset.name}", fontsize=10)
    axes.legend()
    axes.tick_params(axis="x", rotation=20)

    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


# Entry points


def write_reports(
    projection: pd.DataFrame,
    profile: dict,
    preset: ClusterPreset,
    out_dir: pathlib.Path,
) -> str:
    """Write projection.csv, table.md and recovery_vs_devices.png into `out_dir`.

    Returns the text of table.md so the caller can print it.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    projection.to_csv(out_dir / "projection.csv", index=False)

    table = build_table(projection, profile, preset)
    (out_dir / "table.md").write_text(table, encoding="utf-8")

    plot_recovery_vs_devices(projection, preset, out_dir / "recovery_vs_devices.png")

    log.info("wrote projection.csv, table.md and recovery_vs_devices.png to %s", out_dir)
    return table


PAPER_TABLE_FILES = (
    "projection.csv",
    "table.md",
    "verdicts.csv",
    "interval_curve.csv",
    "claim_sweep.csv",
    "recovery_vs_devices.png",
    "throughput_vs_interval.png",
    "recovery_breakdown_projected.png",
)


def write_paper_table(profile: dict, preset: ClusterPreset, out_dir: pathlib.Path) -> str:
    """Project every strategy and write the published claim's table with verdicts, data and plots.

    Writes PAPER_TABLE_FILES into `out_dir`. They are the projection of every measured and
    model strategy at every device count, table.md with a verdict per claimed cell, the
    verdicts, the interval curve and the claim sweep as CSV, and the three plots.
    Returns the text of table.md.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    projection = project(profile, preset)
    rows = rows_at_devices(projection, preset.devices)
    claimed = [row["strategy"] for row in rows.to_dict("records") if find_claim(row["writer"], row["codec"])]

    log.info("sweeping %d claimed strategies over %d factors", len(claimed), len(SWEEP_FACTORS))
    sweep = sweep_claim_parameters(profile, preset, claimed) if claimed else pd.DataFrame()
    verdicts = claim_verdicts(rows, sweep)
    curve = interval_curve(profile, preset)

    projection.to_csv(out_dir / "projection.csv", index=False)
    verdicts.to_csv(out_dir / "verdicts.csv", index=False)
    curve.to_csv(out_dir / "interval_curve.csv", index=False)
    sweep.to_csv(out_dir / "claim_sweep.csv", index=False)

    table = build_table(projection, profile, preset, verdicts)
    table += (
        f"\nThe claim sweep ran {min(SWEEP_REPLICATIONS, preset.replications)} replications per point; "
        "claim_sweep.csv holds every point and verdicts.csv the ranges.\n"
    )
    (out_dir / "table.md").write_text(table, encoding="utf-8")

    plot_recovery_vs_devices(projection, preset, out_dir / "recovery_vs_devices.png")
    plot_throughput_vs_interval(curve, preset, out_dir / "throughput_vs_interval.png")
    plot_recovery_breakdown_projected(rows, preset, out_dir / "recovery_breakdown_projected.png")

    log.info("wrote the claim table (%s) to %s", ", ".join(PAPER_TABLE_FILES), out_dir)
    return table
