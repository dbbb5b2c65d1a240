"""Runs training in a child process, injects a fault, restarts it and times the recovery.

The child reports events as JSON lines (see ``flashbench.train``), and its
``heartbeat`` and ``step`` events show it is alive. A ``kill`` fault sends SIGKILL once
the child reports the chosen step. The supervisor detects the exit and starts a new
child, which resumes from the newest committed checkpoint. The recovery is split into
detect, restart, load and recompute seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from flashbench.faults import ATTEMPT_ENV, FaultSpec, corrupt_step
from flashbench.train import TrainSpec

logger = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """A training process failed for a reason other than an injected fault."""


@dataclasses.dataclass
class Recovery:
    """One injected fault and the parts of its recovery, in seconds."""

    fault: str
    strategy: str
    rank: int  # the rank that failed first
    cause: str  # what the supervisor saw: the signal, exit status, error or silence
    fault_step: int  # last step the failed rank reported
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
    """Starts, watches and restarts the training processes (one per rank) of one run."""

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
        self.spec.fault = self.fault.child_part()
        spec_path.write_text(json.dumps(dataclasses.asdict(self.spec), indent=1))

        started = time.monotonic()
        events: list[dict] = []
        recoveries: list[Recovery] = []
        fault_pending = self.fault.kind in ("kill", "corrupt")
        for attempt in range(self.fault.max_restarts + 1):
            if attempt:
                self._back_off(attempt)
            outcome = self._attempt(spec_path, attempt, events, fault_pending)
            if recoveries:
                self._finish_recovery(recoveries[-1], outcome["events"])
            if outcome["returncode"] == 0 and not outcome["failure"]:
                return RunResult(self.label, events, recoveries, self._digest(outcome), time.monotonic() - started)
            if not outcome["retryable"]:
                raise TrainingFailed(self._failure_message(outcome))
            fault_pending = False
            recoveries.append(self._start_recovery(outcome))
            logger.warning(
                "%s: rank %d failed at step %d (%s); restarting all ranks (restart %d of %d)", self.label,
                recoveries[-1].rank, recoveries[-1].fault_step, recoveries[-1].cause, attempt + 1, self.fault.max_restarts,
            )
        raise TrainingFailed(
            f"{self.label}: still failing after {self.fault.max_restarts} restarts (last cause: {recoveries[-1].cause}); "
            f"see the logs in {self.work_dir}"
        )

    def _back_off(self, attempt: int) -> None:
        delay = self.fault.restart_backoff_s * 2 ** (attempt - 1)
        if delay:
            time.sleep(delay)

    def _launch(self, spec_path: Path, attempt: int) -> list[subprocess.Popen]:
        """Start one process per rank; with several ranks, give them a ring on 127.0.0.1."""
        world = self.spec.world_size
        env = dict(self.env)
        if world > 1:
            hostfile = self.work_dir / f"{self.label}.hosts{attempt}.json"
            hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"] for port in _free_ports(world)]))
            env["MLX_HOSTFILE"] = str(hostfile)
        children = []
        env[ATTEMPT_ENV] = str(attempt)
        for rank in range(world):
            env["MLX_RANK"] = str(rank)
            log = open(self.work_dir / f"{self.label}.attempt{attempt}.rank{rank}.log", "w")
            children.append(subprocess.Popen(
                [sys.executable, "-m", "flashbench.train", str(spec_path)],
                stdout=subprocess.PIPE, stderr=log, env=dict(env), text=True, bufsize=1,
            ))
            log.close()
        return children

    def _attempt(self, spec_path: Path, attempt: int, events: list[dict], fault_pending: bool) -> dict:
        launched = time.monotonic()
        children = self._launch(spec_path, attempt)
        lines: queue.Queue = queue.Queue()
        readers = [threading.Thread(target=_pump, args=(rank, child, lines), daemon=True) for rank, child in enumerate(children)]
        for reader in readers:
            reader.start()

        outcome = {
            "launched": launched, "events": [], "killed": False, "done": {}, "returncodes": {}, "attempt": attempt,
            "failure": None, "retryable": True, "saves": 0,
        }
        last_heard = {rank: time.monotonic() for rank in range(len(children))}
        open_streams = len(children)
        while open_streams:
            try:
                rank, line = lines.get(timeout=min(0.2, self.fault.hang_timeout_s / 4))
            except queue.Empty:
                self._check_heartbeats(last_heard, children, outcome)
                continue
            if line is None:
                open_streams -= 1
                self._on_exit(rank, children, outcome)
                continue
            last_heard[rank] = time.monotonic()
            event = self._parse(line, attempt, rank)
            if event is None:
                continue
            self._check_heartbeats(last_heard, children, outcome)
            outcome["events"].append(event)
            if event["event"] != "heartbeat":
                events.append(event)
            if rank == 0:
                self.on_event(event)
            if event["event"] == "done":
                outcome["done"][rank] = event["digest"]
            if event["event"] == "error":
                outcome["retryable"] = outcome["retryable"] and event.get("retryable", True)
            if fault_pending and not outcome["killed"]:
                self._inject(event, rank, children, outcome)

        codes = [child.wait() for child in children]
        outcome["exit_t"] = outcome.get("exit_t", time.monotonic())
        outcome["returncode"] = next((code for code in codes if code != 0), 0)
        outcome["log"] = self.work_dir / f"{self.label}.attempt{attempt}.rank{codes.index(outcome['returncode'])}.log"
        return outcome

    def _inject(self, event: dict, rank: int, children: list[subprocess.Popen], outcome: dict) -> None:
        """Send the supervisor-side faults: a kill at a step, or corruption after a commit."""
        fault = self.fault
        if fault.kind == "kill" and rank == fault.rank and event["event"] == "step" and event["step"] >= fault.at_step:
            os.kill(children[rank].pid, signal.SIGKILL)
            outcome["killed"], outcome["kill_t"] = True, time.monotonic()
            logger.info("%s: sent SIGKILL to rank %d (pid %d) at step %d", self.label, rank, children[rank].pid, event["step"])
        if fault.kind == "corrupt" and rank == 0 and event["event"] == "save":
            outcome["saves"] += 1
            if outcome["saves"] == fault.save_index:
                step_dir = Path(self.spec.checkpoint_dir) / _step_dir_name(event["step"])
                for child in children:
                    child.kill()
                outcome["killed"], outcome["kill_t"] = True, time.monotonic()
                done = corrupt_step(step_dir, fault.corruption, fault.seed)
                logger.info("%s: killed the job and corrupted step %d: %s", self.label, event["step"], done)

    def _check_heartbeats(self, last_heard: dict[int, float], children: list[subprocess.Popen], outcome: dict) -> None:
        """Treat a rank whose heartbeat has been silent for hang_timeout_s as hung: stop the job."""
        if outcome["failure"]:
            return
        now = time.monotonic()
        for rank, last in last_heard.items():
            if children[rank].poll() is None and now - last > self.fault.hang_timeout_s:
                outcome["failure"] = f"hang: no heartbeat for {now - last:.1f} s"
                outcome["failed_rank"], outcome["fault_t"], outcome["exit_t"] = rank, last, now
                logger.warning("%s: rank %d sent no heartbeat for %.1f s; stopping the job", self.label, rank, now - last)
                for child in children:
                    child.kill()
                return

    def _on_exit(self, rank: int, children: list[subprocess.Popen], outcome: dict) -> None:
        """Record a rank's exit; after a failure, stop the other ranks so the job can restart."""
        code = children[rank].wait()
        outcome["returncodes"][rank] = code
        if code != 0 and "exit_t" not in outcome:
            outcome["exit_t"] = time.monotonic()
            outcome["failed_rank"] = rank
            outcome["failure"] = _describe_exit(code, outcome["events"], rank)
            survivors = [child for child in children if child.poll() is None]
            if survivors:
                logger.info("%s: rank %d exited with %d, stopping %d other rank(s)", self.label, rank, code, len(survivors))
            for child in survivors:
                child.kill()

    def _digest(self, outcome: dict) -> str:
        digests = set(outcome["done"].values())
        if len(digests) != 1 or len(outcome["done"]) != self.spec.world_size:
            raise TrainingFailed(f"{self.label}: ranks finished with different states {outcome['done']}; replicas diverged")
        return digests.pop()

    def _parse(self, line: str, attempt: int, rank: int) -> dict | None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            logger.debug("%s: ignoring a non-event line: %s", self.label, line.rstrip())
            return None
        event.update(attempt=attempt, strategy=self.label, rank=rank)
        return event

    def _start_recovery(self, outcome: dict) -> Recovery:
        rank = outcome.get("failed_rank", self.fault.rank)
        steps = [e["step"] for e in outcome["events"] if e["event"] in ("step", "heartbeat") and e["rank"] == rank]
        recovery = Recovery(
            fault=self.fault.kind, strategy=self.label, rank=rank, cause=outcome["failure"] or "unknown",
            fault_step=max(steps, default=0), resumed_step=0,
        )
        # The fault's moment: the supervisor's own kill, the last heartbeat of a hung rank,
        # or, for faults inside the process, its last report before the exit.
        fault_t = outcome.get("kill_t") or outcome.get("fault_t") or _last_report(outcome["events"], rank, outcome["exit_t"])
        recovery.detect_s = max(0.0, outcome["exit_t"] - fault_t)
        recovery._exit_t = outcome["exit_t"]  # restart_s counts from here: stopping the other ranks, relaunching
        return recovery

    def _finish_recovery(self, recovery: Recovery, events: list[dict]) -> None:
        """Fill restart, load and recompute from rank 0's events in the process that recovered."""
        if recovery.total_s:
            return
        events = [event for event in events if event["rank"] == 0]
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

    def _failure_message(self, outcome: dict) -> str:
        errors = [event for event in outcome["events"] if event["event"] == "error"]
        if errors:
            return errors[-1]["message"]
        tail = Path(outcome["log"]).read_text().strip().splitlines()[-1:] or ["no output"]
        return f"{self.label}: training process exited with status {outcome['returncode']} ({tail[0]}); log: {outcome['log']}"


def _describe_exit(code: int, events: list[dict], rank: int) -> str:
    errors = [e for e in events if e["event"] == "error" and e["rank"] == rank]
    if errors:
        return f"{errors[-1].get('kind', 'error')}: {errors[-1]['message']}"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _last_report(events: list[dict], rank: int, default: float) -> float:
    times = [e["t"] for e in events if e["rank"] == rank]
    return max(times, default=default)


def _step_dir_name(step: int) -> str:
    from strategies.format import step_dir

    return step_dir(step)


def _pump(rank: int, child: subprocess.Popen, lines: queue.Queue) -> None:
    for line in child.stdout:
        lines.put((rank, line))
    lines.put((rank, None))


def _free_ports(count: int) -> list[int]:
    """Return ``count`` TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
