"""Speed benchmark of the cluster model against its three targets.

``python -m benchmarks.bench_sim [--profile PATH] [--out results/sim_speed] [--repeats 5]``

Targets, each measured for three failure models (the paper_4800 preset with exponential
gaps, the same with Weibull gaps of shape 0.7 drawn per device, and the node failures of
meta_rsc1):

1. 4,800 devices over 30 days: under 0.5 s per replication.
2. 100,000 devices over 30 days: under 5 s per replication.
3. 1,000 Monte Carlo replications of 4,800 devices over 30 days: under 60 s.

A replication is one failure trace drawn and one strategy simulated on it. Targets 1 and
2 take the slowest strategy of the profile, at its median over ``--repeats`` traces.
Target 3 times ``flashbench.projection.project`` with 1,000 replications of one strategy,
trace drawing and summary included; one more row times all strategies at once.
Writes ``sim_speed.csv`` and ``README.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from flashbench.projection import model_costs, profile_strategies, project
from flashbench.sim import ClusterPreset, choose_interval, generate_failures, random_streams, simulate, strategy_costs

REPO = Path(__file__).resolve().parents[1]
HORIZON_DAYS = 30.0
MONTE_CARLO_REPLICATIONS = 1000
MONTE_CARLO_STRATEGY = "async_zstd"

# (target, devices, limit in seconds, what the limit applies to)
TARGETS = (
    ("4,800 devices, 30 days, per replication", 4800, 0.5),
    ("100,000 devices, 30 days, per replication", 100000, 5.0),
)


def load_preset(name: str) -> ClusterPreset:
    mapping = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "cluster" / f"{name}.yaml"))
    return dataclasses.replace(ClusterPreset.from_mapping(mapping), horizon_days=HORIZON_DAYS)


def failure_models() -> dict[str, ClusterPreset]:
    """Return the failure models the targets are measured for, keyed by their name in the table."""
    paper = load_preset("paper_4800")
    return {
        "paper_4800 (exponential, device + node)": paper,
        "paper_4800, Weibull k=0.7 per device": dataclasses.replace(paper, failure_distribution="weibull", weibull_shape=0.7),
        "meta_rsc1 (exponential, node)": load_preset("meta_rsc1"),
    }


def time_replications(preset: ClusterPreset, entries: dict, devices: int, repeats: int) -> dict[str, object]:
    """Time `repeats` replications of every strategy at `devices` devices.

    Returns the median seconds per replication of the slowest strategy, its name, the
    median for all strategies on one trace, and the mean failure count per trace.
    """
    topology = preset.topology(devices)
    names = [*entries, *preset.model_strategies]
    plans = {}
    for name in names:
        costs = strategy_costs(name, entries[name], preset, devices) if name in entries else model_costs(name, entries, preset, devices)[0]
        plans[name] = (costs, choose_interval(costs, preset, devices)[0])

    per_strategy: dict[str, list[float]] = {name: [] for name in names}
    all_strategies: list[float] = []
    failures = []
    for replication in range(repeats):
        started = time.perf_counter()
        trace = generate_failures(preset, devices, preset.horizon_s, random_streams(preset.seed, devices, replication))
        trace_s = time.perf_counter() - started
        failures.append(len(trace))

        simulations_s = 0.0
        for name, (costs, interval_s) in plans.items():
            started = time.perf_counter()
            simulate(costs, interval_s, preset.horizon_s, trace, topology)
            simulation_s = time.perf_counter() - started
            per_strategy[name].append(trace_s + simulation_s)
            simulations_s += simulation_s

        all_strategies.append(trace_s + simulations_s)

    medians = {name: statistics.median(times) for name, times in per_strategy.items()}
    slowest = max(medians, key=medians.get)
    return {
        "seconds": medians[slowest],
        "slowest_strategy": slowest,
        "all_strategies_s": statistics.median(all_strategies),
        "failures_per_run": statistics.fmean(failures),
    }


def time_monte_carlo(profile: dict, preset: ClusterPreset, strategies: list[str] | None) -> float:
    many = dataclasses.replace(preset, replications=MONTE_CARLO_REPLICATIONS, devices=4800)
    started = time.perf_counter()
    project(profile, many, strategies=strategies, device_counts=[4800])
    return time.perf_counter() - started


def verdict(seconds: float, limit_s: float) -> tuple[str, str]:
    """Return PASS or MISS and the margin, e.g. ("PASS", "12.3x under the limit")."""
    if seconds <= limit_s:
        return "PASS", f"{limit_s / seconds:.1f}x under the limit"

    return "MISS", f"{seconds / limit_s:.1f}x over the limit"


def machine_description() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu

    versions = ", ".join(f"{package} {importlib.metadata.version(package)}" for package in ("numpy", "simpy", "pandas"))
    return {
        "platform": platform.platform(),
        "cpu": f"{cpu}, {os.cpu_count()} logical cores",
        "python": f"Python {platform.python_version()}; {versions}",
    }


def run(profile_path: Path, repeats: int) -> list[dict[str, object]]:
    profile = json.loads(profile_path.read_text())
    entries = profile_strategies(profile)
    rows = []

    for model, preset in failure_models().items():
        for target, devices, limit_s in TARGETS:
            timing = time_replications(preset, entries, devices, repeats)
            result, margin = verdict(timing["seconds"], limit_s)
            rows.append({
                "target": target, "failure_model": model, "devices": devices, "horizon_days": HORIZON_DAYS,
                "measured": f"median of {repeats}, slowest strategy ({timing['slowest_strategy']})",
                "seconds": timing["seconds"], "limit_s": limit_s, "result": result, "margin": margin,
                "failures_per_run": timing["failures_per_run"], "all_strategies_s": timing["all_strategies_s"],
            })  # fmt: skip
            print(f"{target} [{model}]: {timing['seconds']:.4f} s, {result} ({margin})", file=sys.stderr)

        seconds = time_monte_carlo(profile, preset, [MONTE_CARLO_STRATEGY])
        result, margin = verdict(seconds, 60.0)
        rows.append({
            "target": f"{MONTE_CARLO_REPLICATIONS:,} replications, 4,800 devices, 30 days", "failure_model": model,
            "devices": 4800, "horizon_days": HORIZON_DAYS, "measured": f"project() of {MONTE_CARLO_STRATEGY}, one run",
            "seconds": seconds, "limit_s": 60.0, "result": result, "margin": margin,
            "failures_per_run": "", "all_strategies_s": "",
        })  # fmt: skip
        print(f"1,000 replications [{model}]: {seconds:.2f} s, {result} ({margin})", file=sys.stderr)

    paper = next(iter(failure_models().values()))
    seconds = time_monte_carlo(profile, paper, None)
    rows.append({
        "target": f"{MONTE_CARLO_REPLICATIONS:,} replications, 4,800 devices, 30 days (every strategy; no limit)",
        "failure_model": next(iter(failure_models())), "devices": 4800, "horizon_days": HORIZON_DAYS,
        "measured": f"project() of all {len(entries) + len(paper.model_strategies)} strategies, one run",
        "seconds": seconds, "limit_s": "", "result": "", "margin": "", "failures_per_run": "", "all_strategies_s": "",
    })  # fmt: skip
    return rows


def write_results(rows: list[dict[str, object]], out: Path, command: str, profile_path: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sim_speed.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    machine = machine_description()
    lines = [
        "# Simulator speed",
        "",
        f"Measured on {datetime.date.today().isoformat()} by `benchmarks/bench_sim.py`.",
        "",
        f"- Command: `{command}` (from the repository root)",
        f"- Machine: {machine['platform']}; {machine['cpu']}",
        f"- Software: {machine['python']}",
        f"- Cost profile: `{profile_path}`",
        "",
        "A replication is one failure trace drawn and one strategy simulated over 30 days; the",
        "per-replication rows give the median over the traces for the slowest strategy. The",
        "1,000-replication rows time `project()` whole: traces, simulations and summary.",
        "",
        "| Target | Failure model | Measured | Seconds | Limit (s) | Result |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        result = f"{row['result']}, {row['margin']}" if row["result"] else "-"
        limit = row["limit_s"] if row["limit_s"] != "" else "-"
        lines.append(
            f"| {row['target']} | {row['failure_model']} | {row['measured']} | {float(row['seconds']):.4g} | {limit} | {result} |"
        )

    lines += [
        "",
        "Simulated time advances by failure and recovery events only. The checkpoint cycles",
        "between two failures are computed in closed form (`flashbench.sim.CycleSchedule`),",
        "so a run costs about the same at any checkpoint interval. Failure traces are drawn",
        "with vectorized numpy calls. Timings on a shared virtual machine vary between runs",
        "by tens of percent.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=REPO / "tests" / "data" / "profile_example.json",
                        help="cost profile JSON whose strategies are simulated")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "results" / "sim_speed", help="folder for sim_speed.csv and README.md")
    parser.add_argument("--repeats", type=int, default=5, help="traces per per-replication measurement")
    args = parser.parse_args()

    rows = run(args.profile, args.repeats)
    command = "python -m benchmarks.bench_sim " + shlex.join(sys.argv[1:])
    profile_path = args.profile.resolve()
    profile_shown = profile_path.relative_to(REPO) if profile_path.is_relative_to(REPO) else profile_path
    write_results(rows, args.out, command.strip(), profile_shown)
    print(f"wrote {args.out / 'sim_speed.csv'} and {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
