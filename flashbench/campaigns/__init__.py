"""Reliability campaigns: many seeded fault trials against the checkpoint library and the harness.

Run one with ``python -m flashbench.campaigns <name>``. Each campaign module has
``run(trials, seed, scratch) -> (rows, summary)``; the command writes the rows to
``<out>/<name>.csv`` and the summary line to ``<out>/README.md``. Modules are imported
only when their campaign runs.
"""

from __future__ import annotations

CAMPAIGNS = {
    "crash": "flashbench.campaigns.crash",
    "integrity": "flashbench.campaigns.integrity",
    "storage": "flashbench.campaigns.storage",
    "bad_inputs": "flashbench.campaigns.bad_inputs",
    "memory": "flashbench.campaigns.memory",
    "powercut": "flashbench.campaigns.powercut",
}

__all__ = ["CAMPAIGNS"]
