"""The measured cost profile: per-strategy costs that the cluster model consumes.

Every figure is computed from the event records of supervised runs (saves, loads,
steps, recoveries); no separate timer feeds it.
"""

from __future__ import annotations

import statistics

from strategies import CheckpointOptions

SCHEMA = 1


def _mean(values, default=0.0) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else default


def steady_steps(events: list[dict]) -> list[dict]:
    """Return the step events after the first of each process, whose time includes compilation."""
    steps, seen_attempts = [], set()
    for event in events:
        if event["event"] != "step":
            continue
        if event["attempt"] not in seen_attempts:
            seen_attempts.add(event["attempt"])
            continue
        steps.append(event)
    return steps


def strategy_profile(name: str, result, baseline_step_s: float) -> dict:
    """Summarize one strategy's run into per-byte and per-save costs."""
    options = CheckpointOptions.from_name(name)
    saves = [event["record"] for event in result.of("save")]
    loads = [event["record"] for event in result.of("load") + result.of("restored")]
    steps = steady_steps(result.events)

    bytes_state = _mean([s["bytes_state"] for s in saves], 1.0)
    bytes_stored = _mean([s["bytes_stored"] for s in saves], 1.0)
    return {
        "writer": options.writer.value,
        "codec": options.codec,
        "layout": options.layout.value,
        "saves": len(saves),
        "bytes_state": int(bytes_state),
        "bytes_stored": int(bytes_stored),
        "compression_ratio": bytes_state / bytes_stored,
        "stall_s": _mean([s["stall_s"] for s in saves]),
        "persist_s": _mean([s["persist_s"] for s in saves]),
        "snapshot_s_per_byte": _mean([s["snapshot_s"] for s in saves]) / bytes_state,
        "encode_s_per_byte": _mean([s["encode_s"] for s in saves]) / bytes_state,
        "write_s_per_byte": _mean([s["write_s"] + s["commit_s"] for s in saves]) / bytes_stored,
        "decode_s_per_byte": _mean([l["decode_s"] for l in loads]) / bytes_state,
        "read_s_per_byte": _mean([l["read_s"] + l["verify_s"] for l in loads]) / bytes_stored,
        "load_s": _mean([l["load_s"] for l in loads]),
        "step_s": _mean([e["step_s"] + e["stall_s"] for e in steps]),
        "baseline_step_s": baseline_step_s,
        "contention": _contention(steps) if options.writer.value == "async" else 0.0,
        "detect_s": _mean([r.detect_s for r in result.recoveries], None),
        "restart_s": _mean([r.restart_s for r in result.recoveries], None),
    }


def _contention(steps: list[dict]) -> float:
    """Fractional slowdown of steps that ran while a save persisted in the background.

    Both groups of steps come from the same process, side by side, so disk and CPU
    noise between runs does not enter the ratio.
    """
    busy = [e["step_s"] for e in steps if e.get("in_flight")]
    idle = [e["step_s"] for e in steps if not e.get("in_flight") and not e["stall_s"]]
    if not busy or not idle:
        return 0.0
    return max(0.0, statistics.median(busy) / statistics.median(idle) - 1.0)


def build_profile(results: dict, reference, machine: dict, workload: dict, parameters: int) -> dict:
    baseline = _mean([e["step_s"] for e in steady_steps(reference.events)])
    strategies = {name: strategy_profile(name, result, baseline) for name, result in results.items()}
    state_bytes = next((e["state_bytes"] for e in reference.of("ready")), 0)
    return {
        "schema": SCHEMA,
        "machine": machine,
        "workload": {"name": workload.get("name", ""), "parameters": parameters, "state_bytes": state_bytes},
        "strategies": strategies,
    }
