"""Inspect a checkpoint directory: ``python -m strategies verify DIR [--step N]``.

``list`` prints the committed steps; ``verify`` reads and checks every shard of each
step (or of one step) and prints one line per step. The exit status is 0 when every
checked step verifies, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from strategies.checkpointer import Checkpointer
from strategies.errors import CheckpointError
from strategies.objectstore import open_storage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m strategies", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="print the committed steps of DIR")
    listing.add_argument("directory")
    verify = commands.add_parser("verify", help="read and check every committed step of DIR")
    verify.add_argument("directory")
    verify.add_argument("--step", type=int, help="check only this step")
    return parser


def _verify(checkpointer: Checkpointer, steps: list[int]) -> int:
    failures = 0
    for step in steps:
        try:
            restored = checkpointer.restore(step)
        except CheckpointError as error:
            failures += 1
            print(f"step {step}: FAILED: {error}")
            continue
        record = restored.record
        print(f"step {step}: ok, {record.bytes_state} bytes of state in {record.bytes_stored} stored")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (CheckpointError, OSError) as error:
        print(f"strategies: error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    storage = open_storage(args.directory)
    if not storage.exists(""):
        print(f"strategies: error: directory {args.directory!r} does not exist: check the path", file=sys.stderr)
        return 2
    checkpointer = Checkpointer(storage, read_only=True)
    steps = checkpointer.steps()
    if args.command == "list":
        print("\n".join(str(step) for step in steps) or f"no committed steps in {args.directory}")
        return 0
    if args.step is not None:
        steps = [args.step]
    if not steps:
        print(f"strategies: error: no committed steps in {args.directory}: nothing to verify", file=sys.stderr)
        return 1
    return _verify(checkpointer, steps)


if __name__ == "__main__":
    sys.exit(main())
