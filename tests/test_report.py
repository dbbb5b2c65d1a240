"""Tests of the projection reports (flashbench.report)."""

from __future__ import annotations

import json
import math
import pathlib

import pandas as pd
import pytest

from flashbench.projection import project
from flashbench.report import (
    CLAIMS,
    PAPER_TABLE_FILES,
    TABLE_HEADER,
    cell_verdict,
    claim_verdicts,
    find_claim,
    format_duration,
    format_percent,
    plot_recovery_breakdown_projected,
    plot_throughput_vs_interval,
    range_text,
    sweep_verdict,
    verdict,
    write_paper_table,
    write_reports,
)
from flashbench.sim import ClusterPreset

REPO = pathlib.Path(__file__).resolve().parents[1]
PROFILE_PATH = REPO / "tests" / "data" / "profile_example.json"

REPORT_FILES = ("projection.csv", "table.md", "recovery_vs_devices.png")


@pytest.fixture(scope="module")
def profile() -> dict:
    return json.loads(PROFILE_PATH.read_text())


def make_preset(**overrides) -> ClusterPreset:
    values = dict(
        name="hand_made",
        devices=4800,
        devices_per_replica=128,
        failures_per_unit_hour=2e-5,
        checkpoint_bytes_per_device=1e9,
        storage_bandwidth_Bps=1e12,
        device_storage_bandwidth_Bps=5e9,
        read_bandwidth_Bps=1e12,
        peer_bandwidth_Bps=5e10,
        detect_timeout_s=30.0,
        restart_base_s=90.0,
        step_s=10.0,
        horizon_days=2.0,
        replications=3,
        device_counts=(512, 4800),
    )
    values.update(overrides)
    return ClusterPreset(**values)


def projection_row(strategy: str, writer: str, codec: str, devices: int, recovery_s: float, impact_pct: float):
    return {
        "strategy": strategy,
        "writer": writer,
        "codec": codec,
        "devices": devices,
        "recovery_s": recovery_s,
        "recovery_ci95": 5.0,
        "detect_s": 30.0,
        "restart_s": 90.0,
        "load_s": 10.0,
        "recompute_s": recovery_s - 130.0,
        "failures": 70.0,
        "throughput_impact_pct": impact_pct,
        "throughput_impact_ci95": 0.3,
        "interval_s": 300.0,
        "interval_rule": "Young",
        "checkpoint_block_s": 3.0,
        "replications": 3,
        "horizon_days": 2.0,
    }


# Each row: strategy, writer, codec, recovery_s, impact %, recovery verdict, impact verdict.
HAND_MADE = [
    ("sync_raw", "sync", "raw", 700.0, 25.0, "reproduced", "reproduced"),
    ("sync_zstd", "sync", "zstd", 200.0, 16.0, "not reproduced", "not reproduced"),
    ("async_raw", "async", "raw", 150.0, 1.0, "no claim", "no claim"),
    ("async_zstd", "async", "zstd", 181.0, 5.0, "not reproduced", "not reproduced"),
]


@pytest.fixture
def hand_made_projection() -> pd.DataFrame:
    rows = []
    for strategy, writer, codec, recovery_s, impact_pct, _, _ in HAND_MADE:
        rows.append(projection_row(strategy, writer, codec, 4800, recovery_s, impact_pct))
        rows.append(projection_row(strategy, writer, codec, 512, recovery_s * 2, impact_pct / 4))

    return pd.DataFrame(rows)


def table_rows(table: str) -> dict[str, dict[str, str]]:
    """Parse the Markdown table at the top of table.md into {strategy: {header: cell}}."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))

    return rows


def test_write_reports_writes_files(hand_made_projection, profile, tmp_path):
    table = write_reports(hand_made_projection, profile, make_preset(), tmp_path / "out")

    for name in REPORT_FILES:
        assert (tmp_path / "out" / name).stat().st_size > 0, name

    assert (tmp_path / "out" / "table.md").read_text() == table
    assert (tmp_path / "out" / "recovery_vs_devices.png").read_bytes().startswith(b"\x89PNG")
    assert len(pd.read_csv(tmp_path / "out" / "projection.csv")) == len(hand_made_projection)


def test_table_has_one_row_per_strategy(hand_made_projection, profile, tmp_path):
    table = write_reports(hand_made_projection, profile, make_preset(), tmp_path)
    rows = table_rows(table)

    assert list(rows) == [strategy for strategy, *_ in HAND_MADE]
    assert list(rows["sync_raw"]) == TABLE_HEADER


@pytest.mark.parametrize("strategy, recovery_verdict, impact_verdict", [(r[0], r[5], r[6]) for r in HAND_MADE])
def test_table_verdicts(hand_made_projection, profile, tmp_path, strategy, recovery_verdict, impact_verdict):
    row = table_rows(write_reports(hand_made_projection, profile, make_preset(), tmp_path))[strategy]

    assert row["Recovery verdict"] == recovery_verdict
    assert row["Impact verdict"] == impact_verdict


def test_table_cells_read_in_human_units(hand_made_projection, profile, tmp_path):
    rows = table_rows(write_reports(hand_made_projection, profile, make_preset(), tmp_path))

    assert rows["sync_raw"]["Claimed configuration"] == "Sync, uncompressed"
    assert rows["sync_raw"]["Claimed recovery"] == "10+ min"
    assert rows["sync_raw"]["Projected recovery"] == "11.7 min"
    assert rows["sync_raw"]["Projected impact"] == "25.0% ± 0.3"
    assert rows["sync_raw"]["Checkpoint interval"] == "5.0 min (Young)"
    assert rows["async_zstd"]["Projected recovery"] == "3.0 min"
    assert rows["async_raw"]["Claimed configuration"] == "no claim"


def test_table_shows_recovery_parts(hand_made_projection, profile, tmp_path):
    row = table_rows(write_reports(hand_made_projection, profile, make_preset(), tmp_path))["sync_raw"]

    assert row["Detect"] == "30 s"
    assert row["Restart"] == "90 s"
    assert row["Load"] == "10 s"
    assert row["Recompute"] == "9.5 min"  # 700 - 130 s


def test_table_notes_preset_profile_and_compression(hand_made_projection, profile, tmp_path):
    table = write_reports(hand_made_projection, profile, make_preset(), tmp_path)
    notes = table.split("\n\n", 1)[1]

    assert "cluster preset hand_made" in notes
    assert "workload small" in notes
    assert "Young's rule" in notes
    assert "exponential gaps" in notes
    assert "sync_zstd 1.20x (below claim)" in notes
    assert "5-10x smaller" in notes


def test_write_reports_requires_preset_devices(hand_made_projection, profile, tmp_path):
    with pytest.raises(ValueError, match="no rows for 1200 devices"):
        write_reports(hand_made_projection, profile, make_preset(devices=1200), tmp_path)


def test_reports_from_real_projection(profile, tmp_path):
    preset = make_preset()
    table = write_reports(project(profile, preset), profile, preset, tmp_path)
    rows = table_rows(table)

    assert list(rows) == ["sync_raw", "sync_zstd", "async_raw", "async_zstd", "in_memory_peer", "replica_recovery"]
    assert rows["in_memory_peer"]["Claimed configuration"] == "no claim"
    assert "in_memory_peer over async_raw" in table
    assert (tmp_path / "recovery_vs_devices.png").exists()


def test_inapplicable_strategy_reads_not_applicable(profile, tmp_path):
    preset = make_preset(devices=64, device_counts=(64,))
    rows = table_rows(write_reports(project(profile, preset), profile, preset, tmp_path))

    assert rows["replica_recovery"]["Projected recovery"].startswith("n/a (replica_recovery needs")
    assert rows["replica_recovery"]["Checkpoint interval"] == "n/a"


# The published claim's table (write_paper_table)


def test_write_paper_table_writes_every_file(profile, tmp_path):
    preset = make_preset(device_counts=(8, 4800), replications=2, horizon_days=1.0)

    table = write_paper_table(profile, preset, tmp_path)

    for name in PAPER_TABLE_FILES:
        assert (tmp_path / name).stat().st_size > 0, name

    for name in ("recovery_vs_devices.png", "throughput_vs_interval.png", "recovery_breakdown_projected.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name

    assert (tmp_path / "table.md").read_text() == table
    verdicts = pd.read_csv(tmp_path / "verdicts.csv")
    assert sorted(set(verdicts["strategy"])) == ["async_zstd", "sync_raw", "sync_zstd"]
    assert set(verdicts["metric"]) == {"recovery", "impact"}
    for text in verdicts["verdict"]:
        assert text in ("reproduced", "not reproduced") or text.startswith("holds only when "), text

    rows = table_rows(table)
    for strategy in ("sync_raw", "sync_zstd", "async_zstd"):
        by_metric = verdicts[verdicts["strategy"] == strategy].set_index("metric")["verdict"]
        assert rows[strategy]["Recovery verdict"] == by_metric["recovery"]
        assert rows[strategy]["Impact verdict"] == by_metric["impact"]

    curve = pd.read_csv(tmp_path / "interval_curve.csv")
    assert set(curve["strategy"]) == {"sync_raw", "sync_zstd", "async_raw", "async_zstd", "in_memory_peer", "replica_recovery"}


def sweep_rows(strategy: str, parameter: str, label: str, unit: str, points: list[tuple[float, float, float]]) -> list[dict]:
    """Rows of a hand-made claim sweep: (factor, parameter value, recovery_s) per point."""
    return [
        {"strategy": strategy, "parameter": parameter, "label": label, "unit": unit, "factor": factor,
         "value": value, "recovery_s": recovery_s, "throughput_impact_pct": 1.0}
        for factor, value, recovery_s in points
    ]  # fmt: skip


@pytest.fixture
def hand_made_sweep() -> pd.DataFrame:
    # async_zstd recovery (claim 120-180 s) falls with detect + restart and barely moves
    # with bandwidth, so detect + restart is the most influential parameter.
    detect = [(0.25, 30.0, 140.0), (0.5, 60.0, 170.0), (1.0, 120.0, 230.0), (2.0, 240.0, 350.0), (4.0, 480.0, 590.0)]
    bandwidth = [(0.25, 500.0, 236.0), (0.5, 1000.0, 232.0), (1.0, 2000.0, 230.0), (2.0, 4000.0, 229.0), (4.0, 8000.0, 228.0)]
    rows = sweep_rows("async_zstd", "detect_restart", "detect + restart", "s", detect)
    rows += sweep_rows("async_zstd", "storage_bandwidth", "storage bandwidth", "GB/s", bandwidth)
    return pd.DataFrame(rows)


def test_sweep_verdict_names_parameter_range(hand_made_sweep):
    claim = CLAIMS[("async", True)].recovery_s

    result = sweep_verdict("async_zstd", "recovery", claim, hand_made_sweep)

    assert result["verdict"] == "holds only when detect + restart is in 30 s (sweep edge) to 60 s"
    assert result["parameter"] == "detect_restart"
    assert (result["range_low"], result["range_high"]) == (30.0, 60.0)


def test_sweep_verdict_without_point_in_range(hand_made_sweep):
    claim = CLAIMS[("sync", True)].recovery_s  # 240-360 s: only detect 240 s (350 s) is in range
    far = hand_made_sweep.assign(recovery_s=hand_made_sweep["recovery_s"] * 10)

    assert sweep_verdict("async_zstd", "recovery", claim, far)["verdict"] == "not reproduced"
    assert sweep_verdict("async_zstd", "recovery", claim, hand_made_sweep)["verdict"] == (
        "holds only when detect + restart is near 4.0 min"
    )


def test_claim_verdicts_use_sweep_only_when_not_reproduced(hand_made_projection, hand_made_sweep):
    rows = hand_made_projection[hand_made_projection["devices"] == 4800]

    plain = claim_verdicts(rows).set_index(["strategy", "metric"])["verdict"]
    swept = claim_verdicts(rows, hand_made_sweep).set_index(["strategy", "metric"])["verdict"]

    assert plain[("sync_raw", "recovery")] == swept[("sync_raw", "recovery")] == "reproduced"
    assert plain[("async_zstd", "recovery")] == "not reproduced"
    assert swept[("async_zstd", "recovery")].startswith("holds only when detect + restart is in")
    assert ("async_raw", "recovery") not in plain.index  # no claim, no verdict


def test_range_text_wording():
    assert range_text("job MTBF", "h", 1.5, 4.0, False, False) == "holds only when job MTBF is in 1.5 h to 4 h"
    assert range_text("storage bandwidth", "GB/s", 500.0, 8000.0, False, True) == (
        "holds only when storage bandwidth is in 500 GB/s to 8,000 GB/s (sweep edge)"
    )


def test_projected_plots_from_hand_made_frames(hand_made_projection, tmp_path):
    curve = pd.DataFrame([
        {"strategy": "sync_raw", "interval_s": interval_s, "throughput_impact_pct": impact,
         "chosen_interval_s": 300.0, "interval_rule": "Daly"}
        for interval_s, impact in [(30.0, 9.0), (100.0, 4.0), (300.0, 3.0), (1000.0, 4.5), (3000.0, 10.0)]
    ])  # fmt: skip
    rows = hand_made_projection[hand_made_projection["devices"] == 4800]

    plot_throughput_vs_interval(curve, make_preset(), tmp_path / "curve.png")
    plot_recovery_breakdown_projected(rows, make_preset(), tmp_path / "breakdown.png")

    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "breakdown.png").read_bytes().startswith(b"\x89PNG")


# Verdict logic on the claim ranges


def claim_for(strategy: str):
    writer, codec = strategy.split("_", 1)
    return find_claim(writer, codec)


@pytest.mark.parametrize(
    "strategy, recovery_s, expected",
    [
        ("sync_raw", 599.0, "below claim"),
        ("sync_raw", 600.0, "within claim"),
        ("sync_raw", 1e6, "within claim"),
        ("sync_zstd", 239.0, "below claim"),
        ("sync_zstd", 240.0, "within claim"),
        ("sync_zstd", 360.0, "within claim"),
        ("sync_zstd", 361.0, "above claim"),
        ("async_zstd", 119.0, "below claim"),
        ("async_zstd", 150.0, "within claim"),
        ("async_zstd", 180.0, "within claim"),
        ("async_zstd", 181.0, "above claim"),
    ],
)
def test_recovery_verdict(strategy, recovery_s, expected):
    assert verdict(recovery_s, claim_for(strategy).recovery_s) == expected


@pytest.mark.parametrize(
    "strategy, impact_pct, expected",
    [
        ("sync_raw", 19.9, "below claim"),
        ("sync_raw", 20.0, "within claim"),
        ("sync_raw", 30.0, "within claim"),
        ("sync_raw", 30.1, "above claim"),
        ("sync_zstd", 9.0, "below claim"),
        ("sync_zstd", 12.0, "within claim"),
        ("sync_zstd", 15.5, "above claim"),
        ("async_zstd", 0.0, "within claim"),
        ("async_zstd", 4.99, "within claim"),
        ("async_zstd", 5.0, "above claim"),
    ],
)
def test_impact_verdict(strategy, impact_pct, expected):
    assert verdict(impact_pct, claim_for(strategy).impact_pct) == expected


def test_verdict_of_nan_is_no_data():
    assert verdict(math.nan, CLAIMS[("sync", False)].recovery_s) == "no data"
    assert cell_verdict(math.nan, CLAIMS[("sync", False)].recovery_s) == "no data"


@pytest.mark.parametrize("value, expected", [(600.0, "reproduced"), (599.0, "not reproduced"), (1e6, "reproduced")])
def test_cell_verdict(value, expected):
    assert cell_verdict(value, CLAIMS[("sync", False)].recovery_s) == expected


def test_find_claim():
    assert find_claim("async", "raw") is None
    assert find_claim("sync", "raw").configuration == "Sync, uncompressed"
    assert find_claim("sync", "zstd").configuration == "Sync, compressed"
    assert find_claim("async", "zstd").configuration == "Async, compressed"
    assert find_claim("sync", "zstd_bytegroup").configuration == "Sync, compressed"


@pytest.mark.parametrize(
    "seconds, text",
    [(85.0, "85 s"), (119.4, "119 s"), (192.0, "3.2 min"), (5400.0, "90.0 min"), (7200.0, "2.0 h"), (math.nan, "n/a")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "value, ci95, text",
    [(1.4, 0.2, "1.4% ± 0.2"), (1.3, 0.04, "1.30% ± 0.04"), (25.0, math.nan, "25.0%"), (0.5, math.nan, "0.50%")],
)
def test_format_percent(value, ci95, text):
    assert format_percent(value, ci95) == text
