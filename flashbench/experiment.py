"""The default experiment: train with each strategy, inject a fault, measure, project.

Steps: the matmul benchmark, an uninterrupted reference run without checkpoints, one
supervised run per strategy (with the configured fault), then the cost profile, the
cluster projection and the reports, all written into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd

from strategies.storage import LocalStorage

from flashbench import blas, profile
from flashbench.config import ExperimentConfig
from flashbench.progress import Progress
from flashbench.faults import FaultSpec
from flashbench.supervisor import Recovery, RunResult, Supervisor
from flashbench.train import TrainSpec

logger = logging.getLogger(__name__)


def child_env(config: ExperimentConfig) -> dict[str, str]:
    env = blas.fast_blas_env() if config.blas else dict(os.environ)
    # Children must import this source tree even when it is not installed.
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def measure_machine(env: dict[str, str]) -> dict:
    """Run the matmul benchmark in a child with the training environment."""
    completed = subprocess.run(
        [sys.executable, "-m", "flashbench.blas"], env=env, capture_output=True, text=True, check=True, timeout=600
    )  # env already carries the fast BLAS, so the child measures in place
    machine = json.loads(completed.stdout)
    machine.update(platform=f"{platform.system()}-{platform.machine()}", cpu_count=os.cpu_count(), python=platform.python_version())
    return machine


def train_spec(config: ExperimentConfig, strategy: str | None, checkpoint_root: Path) -> TrainSpec:
    return TrainSpec(
        workload=config.workload,
        seed=config.seed,
        steps=config.steps,
        interval=config.interval if strategy else 0,
        strategy=strategy,
        checkpoint_dir=str(checkpoint_root / strategy) if strategy else None,
        checkpoint=config.checkpoint,
        world_size=config.world_size,
        run_id=f"{checkpoint_root.name}-{strategy}" if strategy else None,
        fault=config.fault.child_part() if strategy else {},
    )


def run_experiment(config: ExperimentConfig, run_dir: Path) -> dict:
    """Run every measurement of ``config`` and write the result files into ``run_dir``."""
    checkpoint_root = Path(config.checkpoint_dir) if config.checkpoint_dir else run_dir / "checkpoints"
    for name in config.strategies:
        LocalStorage(checkpoint_root / name).check_writable()
        if LocalStorage(checkpoint_root / name).list_dir():
            raise ValueError(
                f"checkpoint directory {checkpoint_root / name} is not empty: the experiment needs fresh directories; "
                "choose another checkpoint.dir or empty this one"
            )
    env = child_env(config)
    logs = run_dir / "logs"
    progress = Progress(len(config.strategies) + 1, config.steps)

    machine = measure_machine(env)
    logger.info("matmul: MLX %.1f GFLOP/s, NumPy %.1f GFLOP/s", machine["matmul_gflops_mlx"], machine["matmul_gflops_numpy"])

    progress.start("reference (no checkpoints)")
    quiet = FaultSpec(heartbeat_s=config.fault.heartbeat_s, hang_timeout_s=config.fault.hang_timeout_s)
    reference = Supervisor(train_spec(config, None, checkpoint_root), quiet, logs, env, progress.event).run()
    progress.finish(f"reference: {config.steps} steps in {reference.wall_s:.1f} s")

    results: dict[str, RunResult] = {}
    for name in config.strategies:
        progress.start(name)
        result = Supervisor(train_spec(config, name, checkpoint_root), config.fault, logs, env, progress.event).run()
        for recovery in result.recoveries:
            recovery.bit_exact = result.digest == reference.digest
        results[name] = result
        progress.finish(_run_summary(name, result, reference))
    return _write_measurements(config, run_dir, machine, reference, results)


def _run_summary(name: str, result: RunResult, reference: RunResult) -> str:
    exact = "bit-exact" if result.digest == reference.digest else "NOT bit-exact"
    kills = f", {len(result.recoveries)} kill(s) recovered" if result.recoveries else ""
    return f"{name}: {len(result.of('save'))} saves{kills}, final state {exact} with the reference, {result.wall_s:.1f} s"


def _write_measurements(config, run_dir: Path, machine: dict, reference: RunResult, results: dict) -> dict:
    costs = []
    for result in results.values():
        for event in result.of("save") + result.of("load") + result.of("restored"):
            costs.append({"attempt": event["attempt"], "when": event["event"], **event["record"]})
    pd.DataFrame(costs).to_csv(run_dir / "costs.csv", index=False)

    steps = [
        {key: event.get(key) for key in ("strategy", "attempt", "step", "step_s", "stall_s", "in_flight", "loss")}
        for result in [reference, *results.values()]
        for event in result.of("step")
    ]
    pd.DataFrame(steps).to_csv(run_dir / "steps.csv", index=False)

    recoveries = [dataclasses.asdict(r) for result in results.values() for r in result.recoveries]
    columns = [field.name for field in dataclasses.fields(Recovery)]
    recovery_table = pd.DataFrame(recoveries, columns=columns)
    recovery_table.to_csv(run_dir / "recovery.csv", index=False)
    if not recovery_table.empty:
        plot_recovery_breakdown(recovery_table, run_dir / "recovery_breakdown.png")

    runs = [
        {"strategy": name, "saves": len(r.of("save")), "kills": len(r.recoveries), "wall_s": r.wall_s,
         "bit_exact": r.digest == reference.digest, "digest": r.digest}
        for name, r in results.items()
    ]
    pd.DataFrame(runs).to_csv(run_dir / "runs.csv", index=False)

    parameters = next((e["parameters"] for e in reference.of("ready")), 0)
    cost_profile = profile.build_profile(results, reference, machine, config.workload, parameters)
    (run_dir / "profile.json").write_text(json.dumps(cost_profile, indent=1))
    return cost_profile



RECOVERY_PARTS = ("detect_s", "restart_s", "load_s", "recompute_s")


def plot_recovery_breakdown(recovery: pd.DataFrame, path: Path) -> None:
    """Draw the measured recovery of each strategy as stacked bars of its parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = recovery.groupby("strategy", sort=False)[list(RECOVERY_PARTS)].mean()
    figure, axes = plt.subplots(figsize=(max(5, 1.4 * len(means)), 4))
    bottom = pd.Series(0.0, index=means.index)
    for part in RECOVERY_PARTS:
        axes.bar(means.index, means[part], bottom=bottom, label=part.removesuffix("_s"))
        bottom += means[part]
    axes.set_ylabel("seconds (mean per fault)")
    axes.set_title("Measured recovery after an injected fault, by part")
    axes.legend()
    axes.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
