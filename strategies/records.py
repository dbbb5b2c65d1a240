"""Timing and size records of saves and loads.

These records are the single source of every cost the harness reports: the
library fills them in while it works, and callers write them out as rows.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SaveRecord:
    """Costs of one save, in seconds and bytes."""

    step: int
    strategy: str
    stall_s: float = 0.0  # time the caller was blocked inside save()
    wait_slot_s: float = 0.0  # part of stall_s spent waiting for an in-flight save
    snapshot_s: float = 0.0  # copy of the live arrays into host memory
    encode_s: float = 0.0
    write_s: float = 0.0  # shard writes including fsync
    commit_s: float = 0.0  # manifest write, fsync and rename
    persist_s: float = 0.0  # from the save() call until the commit is durable
    bytes_state: int = 0
    bytes_stored: int = 0

    def as_row(self) -> dict:
        """Return the record as a flat dict for a CSV row, with ``op`` set to ``save``."""
        return {"op": "save", **dataclasses.asdict(self)}


@dataclasses.dataclass
class LoadRecord:
    """Costs of one restore, in seconds and bytes."""

    step: int
    strategy: str
    load_s: float = 0.0  # whole restore: read, verify, decode
    read_s: float = 0.0
    verify_s: float = 0.0
    decode_s: float = 0.0
    bytes_state: int = 0
    bytes_stored: int = 0
    skipped_steps: tuple[int, ...] = ()  # newer steps that failed verification

    def as_row(self) -> dict:
        """Return the record as a flat dict for a CSV row, with ``op`` set to ``load``."""
        row = {"op": "load", **dataclasses.asdict(self)}
        row["skipped_steps"] = " ".join(str(s) for s in self.skipped_steps)
        return row
