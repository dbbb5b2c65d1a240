"""``python -m flashbench.campaigns <name>``: run one reliability campaign and record its results.

Prints one summary line on stdout, writes ``<out>/<name>.csv`` (one row per trial) and
updates ``<out>/README.md``. Exits with 0 when every trial passed, 1 when some failed,
and 2 for invalid arguments or a campaign that cannot be loaded.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from flashbench.campaigns import CAMPAIGNS
from flashbench.campaigns.results import readme_section, summary_passed, update_readme, write_csv

EXIT_FAILED, EXIT_USAGE = 1, 2
FALLBACK_TRIALS = 100  # for a campaign module without DEFAULT_TRIALS, such as powercut


class TrialProgress:
    """A status line on stderr, rewritten in place, only while stderr is a terminal."""

    def __init__(self, name: str, total: int | None, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.name = name
        self.total = total
        self.started = time.monotonic()

    def __call__(self, done: int, label: str) -> None:
        if not self.enabled:
            return
        total = f"/{self.total}" if self.total else ""
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r\033[K{self.name}: {done}{total} ({elapsed:.0f} s) {label}")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flashbench.campaigns", description="Run one reliability campaign and record its results."
    )
    parser.add_argument("name", choices=list(CAMPAIGNS), help="the campaign to run")
    parser.add_argument(
        "--trials", type=int,
        help="trials to run; for bad_inputs the first N cases, for memory the number of saves (default: crash 200, integrity 1000, storage 50, bad_inputs every case, memory 20, powercut 100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the trials' random draws (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("results/reliability"), help="folder of the CSV and README (default: results/reliability)")
    parser.add_argument("--size-mb", type=int, help="memory only: size of the saved state in MB of 2**20 bytes (default: 256)")
    parser.add_argument("--scratch", type=Path, help="folder for the temporary files of the trials (default: the system's temporary folder)")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the temporary files, e.g. the logs of failed trials")
    parser.add_argument("--verbose", action="store_true", help="show the log messages of the library and the supervisor on stderr")
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error(f"invalid --trials {args.trials}: expected 1 or more")
    if args.size_mb is not None and args.name != "memory":
        parser.error(f"--size-mb applies to the memory campaign only, not to {args.name}")
    if args.size_mb is not None and args.size_mb < 1:
        parser.error(f"invalid --size-mb {args.size_mb}: expected 1 or more")
    return args


def load_campaign(name: str):
    """Import the module of campaign ``name``; exit with one line on stderr if it does not exist."""
    module_name = CAMPAIGNS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise  # the campaign module exists but a module it imports is missing, so the full error is shown
        print(
            f"flashbench.campaigns: error: the {name} campaign is not available because module {module_name} is missing. "
            "Add it or choose another campaign.",
            file=sys.stderr,
        )
        sys.exit(EXIT_USAGE)


def _keywords(module, args: argparse.Namespace, progress: TrialProgress) -> dict:
    """Return the optional keywords this campaign's ``run`` accepts."""
    accepted = inspect.signature(module.run).parameters
    keywords = {}
    if "progress" in accepted:
        keywords["progress"] = progress
    if "size_mb" in accepted and args.size_mb is not None:
        keywords["size_mb"] = args.size_mb
    return keywords


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    module = load_campaign(args.name)
    trials = args.trials if args.trials is not None else getattr(module, "DEFAULT_TRIALS", FALLBACK_TRIALS)

    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"flashbench-{args.name}-", dir=args.scratch))
    progress = TrialProgress(args.name, trials)
    started = time.perf_counter()
    try:
        rows, summary = module.run(trials, args.seed, scratch, **_keywords(module, args, progress))
    finally:
        progress.finish()
        if args.keep_scratch:
            print(f"flashbench.campaigns: scratch files kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    wall_s = time.perf_counter() - started

    csv_name = f"{args.name}.csv"
    write_csv(args.out / csv_name, rows, getattr(module, "COLUMNS", None))
    command = shlex.join(["python", "-m", "flashbench.campaigns", *argv])
    description = inspect.getdoc(module) or ""
    update_readme(args.out / "README.md", args.name, readme_section(args.name, description, summary, command, wall_s, csv_name))
    print(summary)
    return 0 if summary_passed(summary) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
