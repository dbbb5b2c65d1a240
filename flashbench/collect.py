"""Collect the runs of a Hydra sweep into one table.

``python -m flashbench.collect multirun/2026-12-04/10-00-00`` reads every job folder
of the sweep (a folder holding ``.hydra/overrides.yaml``), takes its result file
(``projection.csv`` by default), adds a column ``override.<key>`` per command-line
override and a ``job`` column,
and writes the union to ``sweep_<file>`` in the sweep folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Return the job folders of a sweep in job-number order."""
    jobs = [path.parent.parent for path in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda path: (not path.name.isdigit(), int(path.name) if path.name.isdigit() else 0, path.name))


def overrides_of(job: Path) -> dict[str, str]:
    """Return the command-line overrides of one job as key -> value."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    pairs = (item.lstrip("+~").split("=", 1) for item in overrides if "=" in item)
    return {key: value for key, value in pairs if not key.startswith("hydra")}


def collect(sweep_dir: str | Path, result: str = "projection.csv") -> pd.DataFrame:
    """Return the ``result`` files of every job of a sweep as one DataFrame."""
    sweep_dir = Path(sweep_dir)
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise ValueError(f"no sweep jobs under {str(sweep_dir)!r}: pass the folder that Hydra's -m run printed, e.g. multirun/<date>/<time>")
    frames = []
    for job in jobs:
        path = job / result
        if not path.is_file():
            raise ValueError(f"job {job.name} has no {result}: it failed or is still running; see {job}")
        frame = pd.read_csv(path)
        for key, value in overrides_of(job).items():
            frame.insert(0, f"override.{key}", value)
        frame.insert(0, "job", job.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashbench.collect", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the sweep folder, e.g. multirun/<date>/<time>")
    parser.add_argument("--result", default="projection.csv", help="result file of each job to collect (default projection.csv)")
    parser.add_argument("--out", help="output CSV (default: <sweep_dir>/sweep_<result>)")
    args = parser.parse_args(argv)
    try:
        table = collect(args.sweep_dir, args.result)
    except ValueError as error:
        print(f"flashbench.collect: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.sweep_dir) / f"sweep_{args.result}"
    table.to_csv(out, index=False)
    print(f"{len(table)} rows from {table['job'].nunique()} jobs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
