"""Reports of a projection: projection.csv, table.md and recovery_vs_devices.png.

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

from flashbench.sim import ClusterPreset  # noqa: E402

log = logging.getLogger(__name__)

NO_CLAIM = "no claim"

# Pooled failure count below which the plot marks a mean recovery time as unreliable.
MIN_FAILURES_FOR_ESTIMATE = 10


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


def find_claim(writer: str, codec: str) -> Claim | None:
    """Return the claim row for a writer and codec, or None where the claim has none.

    Every codec except "raw" counts as compressed, so later codecs such as
    zstd_bytegroup are held to the "compressed" rows as well.
    """
    return CLAIMS.get((writer, codec != "raw"))


def verdict(value: float, claim: ClaimRange) -> str:
    """Return "below claim", "within claim" or "above claim" for a projected value."""
    if math.isnan(value):
        return "no data"

    if value < claim.low:
        return "below claim"

    if value > claim.high or (value == claim.high and not claim.high_inclusive):
        return "above claim"

    return "within claim"


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


def _format_interval(row: Mapping) -> str:
    return f"{format_duration(row['interval_s'])} ({row['interval_rule']})"


def _table_row(row: Mapping) -> list[str]:
    claim = find_claim(row["writer"], row["codec"])
    recovery = format_duration(row["recovery_s"])
    impact = format_percent(row["throughput_impact_pct"], row["throughput_impact_ci95"])
    if row["failures"] == 0:
        recovery = "no failures"

    if claim is None:
        return [row["strategy"], NO_CLAIM, "-", recovery, NO_CLAIM, "-", impact, NO_CLAIM, _format_interval(row)]

    return [
        row["strategy"],
        claim.configuration,
        claim.recovery_s.text,
        recovery,
        verdict(row["recovery_s"], claim.recovery_s),
        claim.impact_pct.text,
        impact,
        verdict(row["throughput_impact_pct"], claim.impact_pct),
        _format_interval(row),
    ]


TABLE_HEADER = [
    "Strategy",
    "Claimed configuration",
    "Claimed recovery",
    "Projected recovery",
    "Recovery verdict",
    "Claimed impact",
    "Projected impact",
    "Impact verdict",
    "Checkpoint interval",
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


def rows_at_devices(projection: pd.DataFrame, devices: int) -> pd.DataFrame:
    """Return the projection rows for one device count, raising ValueError if there are none."""
    rows = projection[projection["devices"] == devices]
    if rows.empty:
        available = sorted(projection["devices"].unique().tolist())
        raise ValueError(
            f"projection has no rows for {devices} devices (it has {available}); "
            f"add {devices} to the device counts of the projection"
        )

    return rows


def build_table(projection: pd.DataFrame, profile: Mapping, preset: ClusterPreset) -> str:
    """Build table.md: one row per strategy at the preset's device count, then two notes."""
    rows = rows_at_devices(projection, preset.devices)
    table = format_markdown_table(TABLE_HEADER, [_table_row(row) for row in rows.to_dict("records")])

    replications = int(rows["replications"].iloc[0])
    horizon_days = float(rows["horizon_days"].iloc[0])
    preset_line = (
        f"Projected at {preset.devices:,} devices with cluster preset {preset.name} over "
        f"{horizon_days:g} days and {replications} replications, from the cost profile of "
        f"{_describe_profile(profile)}. Impact is the loss of training throughput, "
        "100 * (1 - useful training time / wall time); ± is the 95% confidence half-width."
    )

    return "\n".join([table, "", preset_line, _describe_compression(profile), ""])


def plot_recovery_vs_devices(projection: pd.DataFrame, preset: ClusterPreset, path: pathlib.Path) -> None:
    """Plot mean recovery time per failure against device count, one line per strategy.

    Hollow markers flag points pooled from fewer than MIN_FAILURES_FOR_ESTIMATE simulated
    failures, whose mean is too noisy to read much into.
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
    axes.set_yscale("log")
    axes.set_xlabel("devices")
    axes.set_ylabel("mean recovery time per failure (min)")
    axes.set_title(
        f"Projected recovery time, cluster preset {preset.name}\n"
        f"(hollow: fewer than {MIN_FAILURES_FOR_ESTIMATE} failures simulated; dotted: {preset.devices:,} devices)",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()

    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


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
