"""Runs training in a child process, injects a fault, restarts it and times the recovery.

The child reports events as JSON lines (see ``flashbench.train``); every ``step``
event is also its heartbeat. A ``kill`` fault sends SIGKILL once the child reports
the chosen step; the supervisor sees the exit, starts a new child, which resumes from
the newest committed checkpoint, and the recovery is split into detect, restart,
load and recompute seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flashbench.train import TrainSpec

logger = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """A training process failed for a reason other than an injected fault."""


@dataclasses.dataclass
class FaultSpec:
    """The fault to inject into one supervised run."""

    kind: str = "none"  # "none" or "kill"
    at_step: int = 0  # the child is killed once it reports this step
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ("none", "kill"):
            raise ValueError(f"invalid fault.kind {self.kind!r}: expected none or kill")
        if self.kind == "kill" and self.at_step < 1:
            raise ValueError(f"invalid fault.at_step {self.at_step}: expected a step of 1 or more")
        if self.max_restarts < 0:
            raise ValueError(f"invalid fault.max_restarts {self.max_restarts}: expected 0 or more")


@dataclasses.dataclass
class Recovery:
    """One injected fault and the parts of its recovery, in seconds."""

    fault: str
    strategy: str
    fault_step: int  # last step the killed process reported
    resumed_step: int  # checkpoint step the new process restored (0: started over)
    detect_s: float = 0.0
    restart_s: float = 0.0
    load_s: float = 0.0
    recompute_s: float = 0.0
    total_s: float = 0.0
    bit_exact: bool | None = None


@dataclasses.dataclass
class RunResult:
    """Everything a supervised run reported."""

    strategy: str
    events: list[dict]
    recoveries: list[Recovery]
    digest: str
    wall_s: float

    def of(self, kind: str) -> list[dict]:
        return [event for event in self.events if event["event"] == kind]


class Supervisor:
    """Starts, watches and restarts the training process of one run."""

    def __init__(self, spec: TrainSpec, fault: FaultSpec, work_dir: Path, env: dict[str, str], on_event=None) -> None:
        self.spec = spec
        self.fault = fault
        self.work_dir = work_dir
        self.env = env
        self.on_event = on_event or (lambda event: None)
        self.label = spec.strategy or "reference"

    def run(self) -> RunResult:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        spec_path = self.work_dir / f"{self.label}.spec.json"
        spec_path.write_text(json.dumps(dataclasses.asdict(self.spec), indent=1))

        started = time.monotonic()
        events: list[dict] = []
        recoveries: list[Recovery] = []
        fault_pending = self.fault.kind == "kill"
        for attempt in range(self.fault.max_restarts + 1):
            outcome = self._attempt(spec_path, attempt, events, fault_pending)
            if recoveries:
                self._finish_recovery(recoveries[-1], outcome["events"])
            if outcome["returncode"] == 0:
                return RunResult(self.label, events, recoveries, outcome["digest"], time.monotonic() - started)
            if not outcome["killed"]:
                raise TrainingFailed(self._failure_message(outcome, attempt))
            fault_pending = False
            recoveries.append(self._start_recovery(outcome))
        raise TrainingFailed(f"{self.label}: still failing after {self.fault.max_restarts} restarts; see {self.work_dir}")

    def _attempt(self, spec_path: Path, attempt: int, events: list[dict], fault_pending: bool) -> dict:
        log_path = self.work_dir / f"{self.label}.attempt{attempt}.log"
        with open(log_path, "w") as log:
            launched = time.monotonic()
            child = subprocess.Popen(
                [sys.executable, "-m", "flashbench.train", str(spec_path)],
                stdout=subprocess.PIPE, stderr=log, env=self.env, text=True, bufsize=1,
            )
            outcome = {"launched": launched, "events": [], "killed": False, "digest": "", "log": log_path}
            for line in child.stdout:
                event = self._parse(line, attempt)
                if event is None:
                    continue
                outcome["events"].append(event)
                events.append(event)
                self.on_event(event)
                if fault_pending and not outcome["killed"] and event["event"] == "step" and event["step"] >= self.fault.at_step:
                    os.kill(child.pid, signal.SIGKILL)
                    outcome["killed"], outcome["kill_t"] = True, time.monotonic()
                    logger.info("%s: sent SIGKILL to pid %d at step %d", self.label, child.pid, event["step"])
                if event["event"] == "done":
                    outcome["digest"] = event["digest"]
            outcome["returncode"] = child.wait()
            outcome["exit_t"] = time.monotonic()
        return outcome

    def _parse(self, line: str, attempt: int) -> dict | None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            logger.debug("%s: ignoring a non-event line: %s", self.label, line.rstrip())
            return None
        event["attempt"] = attempt
        event["strategy"] = self.label
        return event

    def _start_recovery(self, outcome: dict) -> Recovery:
        steps = [event["step"] for event in outcome["events"] if event["event"] == "step"]
        recovery = Recovery(fault=self.fault.kind, strategy=self.label, fault_step=max(steps, default=0), resumed_step=0)
        recovery.detect_s = outcome["exit_t"] - outcome["kill_t"]
        recovery._exit_t = outcome["exit_t"]
        return recovery

    def _finish_recovery(self, recovery: Recovery, events: list[dict]) -> None:
        """Fill restart, load and recompute from the events of the process that recovered."""
        if recovery.total_s:
            return
        ready = next((e for e in events if e["event"] == "ready"), None)
        restored = next((e for e in events if e["event"] == "restored"), None)
        caught_up = next((e for e in events if e["event"] == "step" and e["step"] >= recovery.fault_step), None)
        if ready is None or caught_up is None:
            return  # this attempt failed too early; the next one fills the recovery
        recovery.restart_s = ready["t"] - recovery._exit_t
        loaded_t = ready["t"]
        if restored is not None:
            recovery.resumed_step = restored["step"]
            recovery.load_s = restored["t"] - ready["t"]
            loaded_t = restored["t"]
        recovery.recompute_s = caught_up["t"] - loaded_t
        recovery.total_s = recovery.detect_s + recovery.restart_s + recovery.load_s + recovery.recompute_s

    def _failure_message(self, outcome: dict, attempt: int) -> str:
        errors = [event for event in outcome["events"] if event["event"] == "error"]
        if errors:
            return errors[-1]["message"]
        tail = Path(outcome["log"]).read_text().strip().splitlines()[-1:] or ["no output"]
        return f"{self.label}: training process exited with status {outcome['returncode']} ({tail[0]}); log: {outcome['log']}"
