"""Crash campaign: SIGKILL a training rank inside a save, restart it, and check the resumed run.

Each trial trains the tiny workload for 8 steps under the supervisor with one strategy
(writer sync or async, codec raw, zstd, bytegroup_zstd or delta_zstd) and one layout
(coordinator on one rank, parallel on two), saving every 2 steps with keep_last=2. One
rank kills itself inside its save number 1, 2 or 3 at one point: before_shard,
during_shard, after_shard, before_commit or after_commit. The commit points are drawn
only for rank 0, the rank that commits; the shard points of the parallel layout are
drawn for either rank. A trial is consistent when the run recovered exactly once, from
that SIGKILL, resumed from the newest step committed at the kill, and ended with the
same state digest as an uninterrupted run on the same number of ranks.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import yaml

from flashbench.blas import fast_blas_env
from flashbench.campaigns.states import LAYOUTS, STRATEGIES
from flashbench.faults import SAVE_POINTS, FaultSpec
from flashbench.supervisor import RunResult, Supervisor
from flashbench.train import TrainSpec

DEFAULT_TRIALS = 200
REPO = Path(__file__).resolve().parents[2]
STEPS, INTERVAL = 8, 2  # saves at steps 2, 4, 6 and 8
SAVE_INDEXES = (1, 2, 3)
TRAIN_SEED = 7
KEEP_LAST = 2  # retention runs in every trial; it never removes the newest committed step
COMMIT_POINTS = ("before_commit", "after_commit")  # only rank 0 commits
KILLED = "killed by SIGKILL"
TIMINGS = ("detect_s", "restart_s", "load_s", "recompute_s", "total_s")
COLUMNS = (
    "trial", "strategy", "layout", "world_size", "point", "save_index", "rank", "expected_step", "recoveries", "cause",
    "resumed_step", "bit_exact", "ok", *TIMINGS, "error",
)


def child_env() -> dict[str, str]:
    """Return the environment of training processes: fast BLAS and this repository on PYTHONPATH."""
    env = fast_blas_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def tiny_workload() -> dict:
    return yaml.safe_load((REPO / "conf" / "workload" / "tiny.yaml").read_text())


def draw_trial(trial: int, seed: int) -> dict:
    """Draw the strategy, layout, kill point, save and rank of one trial from its own seeded stream."""
    rng = random.Random(seed * 1_000_003 + trial)
    strategy = rng.choice(STRATEGIES)
    layout = rng.choice(list(LAYOUTS))
    point = rng.choice(SAVE_POINTS)
    save_index = rng.choice(SAVE_INDEXES)
    world_size = LAYOUTS[layout]
    rank = 0 if point in COMMIT_POINTS or layout == "coordinator" else rng.randrange(world_size)
    return {
        "trial": trial, "strategy": strategy if layout == "coordinator" else f"{strategy}_{layout}", "layout": layout,
        "world_size": world_size, "point": point, "save_index": save_index, "rank": rank,
        "expected_step": expected_step(point, save_index),
    }


def expected_step(point: str, save_index: int) -> int:
    """Return the newest committed step when the kill hits save ``save_index`` at ``point``."""
    committed_saves = save_index if point == "after_commit" else save_index - 1
    return INTERVAL * committed_saves


def train_spec(workload: dict, world_size: int, strategy: str | None = None, directory: Path | None = None, run_id=None) -> TrainSpec:
    return TrainSpec(
        workload=workload, seed=TRAIN_SEED, steps=STEPS, interval=INTERVAL if strategy else 0, strategy=strategy,
        checkpoint_dir=str(directory) if strategy else None, checkpoint={"keep_last": KEEP_LAST} if strategy else {},
        world_size=world_size, run_id=run_id,
    )


def reference_digest(workload: dict, world_size: int, work_dir: Path, env: dict) -> str:
    """Return the final state digest of an uninterrupted run without checkpoints on ``world_size`` ranks."""
    return Supervisor(train_spec(workload, world_size), FaultSpec(), work_dir, env).run().digest


def check_trial(result: RunResult, expected: int, reference: str) -> dict:
    """Return the checked fields of one finished run: recoveries, cause, resumed step, digest, timings, ok."""
    checked = {"recoveries": len(result.recoveries), "cause": "", "resumed_step": None}
    checked["bit_exact"] = result.digest == reference
    checked.update({name: None for name in TIMINGS})
    if len(result.recoveries) == 1:
        recovery = result.recoveries[0]
        checked.update(cause=recovery.cause, resumed_step=recovery.resumed_step)
        checked.update({name: round(getattr(recovery, name), 4) for name in TIMINGS})
    checked["ok"] = (
        checked["recoveries"] == 1 and checked["cause"] == KILLED and checked["resumed_step"] == expected
        and checked["bit_exact"]
    )
    return checked


def run_trial(drawn: dict, workload: dict, references: dict[int, str], scratch: Path, env: dict) -> dict:
    work_dir = scratch / f"trial{drawn['trial']}"
    fault = FaultSpec(kind="kill_during_save", point=drawn["point"], save_index=drawn["save_index"], rank=drawn["rank"])
    spec = train_spec(workload, drawn["world_size"], drawn["strategy"], work_dir / "ckpt", run_id=f"crash-{drawn['trial']}")
    row = dict(drawn)
    try:
        result = Supervisor(spec, fault, work_dir, env).run()
    except Exception as error:  # a run that does not finish is a failed trial; its logs stay in the scratch folder
        row.update(recoveries=None, ok=False, error=f"{type(error).__name__}: {error}")
        return row
    row.update(check_trial(result, drawn["expected_step"], references[drawn["world_size"]]), error="")
    if row["ok"]:
        shutil.rmtree(work_dir)
    return row


def run(trials: int, seed: int, scratch: Path, progress=None) -> tuple[list[dict], str]:
    """Run ``trials`` kill-during-save trials; return the rows and the summary line."""
    env = child_env()
    workload = tiny_workload()
    drawn = [draw_trial(trial, seed) for trial in range(trials)]
    world_sizes = sorted({trial["world_size"] for trial in drawn})
    references = {world: reference_digest(workload, world, scratch / f"reference-{world}", env) for world in world_sizes}

    rows = []
    for trial in drawn:
        rows.append(run_trial(trial, workload, references, scratch, env))
        if progress:
            progress(len(rows), f"{trial['strategy']} {trial['point']} save {trial['save_index']} rank {trial['rank']}")
    consistent = sum(row["ok"] for row in rows)
    return rows, f"consistent: {consistent}/{trials}"
