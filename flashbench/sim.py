"""Simpy model of checkpointing and failure recovery for one training job on a cluster.

The model reads a measured cost profile (a dict loaded from profile.json) and a cluster
preset, scales the per-byte costs of each strategy to the cluster, and simulates a job
of D devices over a horizon. It never imports MLX or `strategies`, so a profile measured
on one machine can be projected anywhere.

Model v1:

- Failures of the whole job arrive as a Poisson process with rate
  devices * failures_per_device_hour, the superposition of independent per-device
  exponential failures. Each failure interrupts the training process.
- Training progress is counted in seconds of failure-free, checkpoint-free training
  ("work"). A checkpoint is taken after every `interval_s` of work.
- Every device saves `checkpoint_bytes_per_device` at every device count, so the model
  grows with the cluster (weak scaling) and storage bandwidth per device shrinks.
- A sync checkpoint blocks training for encode + write and commits when the block ends.
  An async checkpoint blocks for the snapshot only. Encode + write then run in the
  background (the persist), training runs slowed by `contention` meanwhile, and the
  checkpoint commits when the persist ends. At most one persist is in flight: a
  checkpoint that falls due earlier waits for it.
- A failure rolls training back to the last committed checkpoint and starts a recovery:
  detect, restart, load, then recompute until training is back at the pre-failure
  point. A failure during a recovery starts the recovery again from detection.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields

import numpy as np
import simpy

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0

PROFILE_SCHEMA = 1

# Keys every strategy entry of a schema-1 profile must contain for the model to use it.
REQUIRED_PROFILE_KEYS = (
    "writer",
    "codec",
    "compression_ratio",
    "snapshot_s_per_byte",
    "encode_s_per_byte",
    "decode_s_per_byte",
    "contention",
)

WRITERS = ("sync", "async")

# Time buckets of one run. They partition the horizon, so they always sum to it.
TIME_BUCKETS = ("train", "block", "wait", "detect", "restart", "load", "recompute")

DEFAULT_DEVICE_COUNTS = (8, 64, 512, 1200, 4800, 16384, 100000)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _require_positive(name: str, value: object) -> None:
    if not _is_number(value) or not value > 0 or math.isinf(value):
        raise ValueError(f"cluster preset: {name}={value!r} is invalid; set it to a positive, finite number")


def _require_non_negative(name: str, value: object) -> None:
    if not _is_number(value) or not value >= 0 or math.isinf(value):
        raise ValueError(f"cluster preset: {name}={value!r} is invalid; set it to a number >= 0")


def _require_positive_int(name: str, value: object) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"cluster preset: {name}={value!r} is invalid; set it to an integer >= 1")


@dataclass(frozen=True)
class ClusterPreset:
    """Sizes, bandwidths, failure rate and timing of one cluster (a conf/cluster file)."""

    name: str
    failures_per_device_hour: float  # failures per device per hour of training
    checkpoint_bytes_per_device: float  # bytes of training state each device saves
    storage_bandwidth_Bps: float  # aggregate write bandwidth, bytes/s, shared by all writers
    device_storage_bandwidth_Bps: float  # per-device (per-link) cap on storage I/O, bytes/s
    read_bandwidth_Bps: float  # aggregate read bandwidth, bytes/s, shared by all readers
    detect_s: float  # seconds from a failure to its detection
    restart_s: float  # seconds to reschedule, start processes and re-form the communicator
    devices: int = 4800
    interval_s: float | str = "young"  # seconds of training between checkpoints, or "young"
    horizon_days: float = 30.0  # simulated wall-clock time of the job
    replications: int = 20  # Monte Carlo runs per strategy and device count
    seed: int = 0
    device_counts: tuple[int, ...] = DEFAULT_DEVICE_COUNTS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"cluster preset: name={self.name!r} is invalid; set it to a non-empty string")

        _require_positive_int("devices", self.devices)
        _require_non_negative("failures_per_device_hour", self.failures_per_device_hour)
        _require_positive("checkpoint_bytes_per_device", self.checkpoint_bytes_per_device)
        _require_positive("storage_bandwidth_Bps", self.storage_bandwidth_Bps)
        _require_positive("device_storage_bandwidth_Bps", self.device_storage_bandwidth_Bps)
        _require_positive("read_bandwidth_Bps", self.read_bandwidth_Bps)
        _require_non_negative("detect_s", self.detect_s)
        _require_non_negative("restart_s", self.restart_s)
        _require_positive("horizon_days", self.horizon_days)
        _require_positive_int("replications", self.replications)

        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"cluster preset: seed={self.seed!r} is invalid; set it to an integer >= 0")

        self._validate_interval()
        self._validate_device_counts()

    def _validate_interval(self) -> None:
        if self.interval_s == "young":
            return

        if not _is_number(self.interval_s) or not self.interval_s > 0 or math.isinf(self.interval_s):
            raise ValueError(
                f"cluster preset: interval_s={self.interval_s!r} is invalid; "
                'set it to a positive number of seconds or to "young"'
            )

    def _validate_device_counts(self) -> None:
        counts = tuple(self.device_counts)
        if not counts:
            raise ValueError("cluster preset: device_counts is empty; list at least one device count")

        for count in counts:
            _require_positive_int("device_counts entry", count)

        # Frozen dataclass: a list from YAML is stored as a tuple so the preset stays hashable.
        object.__setattr__(self, "device_counts", counts)

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> ClusterPreset:
        """Build a validated preset from a mapping such as a composed Hydra `cluster` node.

        Raises ValueError for unknown or missing keys and for invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"cluster preset: unknown keys {unknown}; the known keys are {sorted(known)}"
            )

        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(mapping))
        if missing:
            raise ValueError(f"cluster preset: missing keys {missing}; add them to the preset file")

        values = dict(mapping)
        if "device_counts" in values:
            values["device_counts"] = tuple(values["device_counts"])

        return cls(**values)

    @property
    def horizon_s(self) -> float:
        return self.horizon_days * SECONDS_PER_DAY

    def failure_rate_per_s(self, devices: int) -> float:
        """Job failure rate in failures per second for `devices` devices."""
        return devices * self.failures_per_device_hour / SECONDS_PER_HOUR

    def mtbf_s(self, devices: int) -> float:
        """Mean time between job failures in seconds; infinite when the rate is 0."""
        rate = self.failure_rate_per_s(devices)
        if rate == 0:
            return math.inf

        return 1.0 / rate


@dataclass(frozen=True)
class StrategyCosts:
    """Cluster-scale costs of one strategy at one device count, in seconds per checkpoint."""

    block_s: float  # training loop blocked per checkpoint
    persist_s: float  # background time from the end of the block to the commit; 0 for sync
    contention: float  # fractional slowdown of training while a persist runs
    load_s: float  # read + decode of one checkpoint on recovery
    detect_s: float
    restart_s: float

    def __post_init__(self) -> None:
        for name in ("block_s", "persist_s", "contention", "load_s", "detect_s", "restart_s"):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0 or math.isinf(value):
                raise ValueError(f"strategy costs: {name}={value!r} is invalid; it must be a finite number >= 0")


def validate_profile_entry(name: str, entry: Mapping) -> None:
    """Raise ValueError unless a profile strategy entry has every key the model reads."""
    missing = [key for key in REQUIRED_PROFILE_KEYS if key not in entry]
    if missing:
        raise ValueError(
            f"profile strategy {name!r}: missing keys {missing}; re-measure the profile "
            f"with a harness that writes schema {PROFILE_SCHEMA}"
        )

    if entry["writer"] not in WRITERS:
        raise ValueError(
            f"profile strategy {name!r}: writer={entry['writer']!r} is invalid; expected one of {list(WRITERS)}"
        )

    ratio = entry["compression_ratio"]
    if not _is_number(ratio) or not ratio > 0:
        raise ValueError(
            f"profile strategy {name!r}: compression_ratio={ratio!r} is invalid; it must be > 0 "
            "(bytes_state / bytes_stored)"
        )


def write_time_s(stored_bytes: float, preset: ClusterPreset, devices: int) -> float:
    """Seconds for every device to write `stored_bytes` at once through shared storage."""
    per_device_Bps = min(preset.device_storage_bandwidth_Bps, preset.storage_bandwidth_Bps / devices)
    return stored_bytes / per_device_Bps


def read_time_s(stored_bytes: float, preset: ClusterPreset, devices: int) -> float:
    """Seconds for every device to read `stored_bytes` at once through shared storage."""
    per_device_Bps = min(preset.device_storage_bandwidth_Bps, preset.read_bandwidth_Bps / devices)
    return stored_bytes / per_device_Bps


def strategy_costs(name: str, entry: Mapping, preset: ClusterPreset, devices: int) -> StrategyCosts:
    """Scale one measured profile entry to `devices` devices of the preset's cluster.

    Per-byte CPU costs (snapshot, encode, decode) run in parallel on every device, so they
    scale with the bytes of one device. Storage time uses the bandwidth share of one
    device when all devices write or read at once.
    """
    validate_profile_entry(name, entry)
    state_bytes = preset.checkpoint_bytes_per_device
    stored_bytes = state_bytes / entry["compression_ratio"]

    encode_s = entry["encode_s_per_byte"] * state_bytes
    write_s = write_time_s(stored_bytes, preset, devices)
    load_s = read_time_s(stored_bytes, preset, devices) + entry["decode_s_per_byte"] * state_bytes

    if entry["writer"] == "sync":
        block_s = encode_s + write_s
        persist_s = 0.0
        contention = 0.0
    else:
        block_s = entry["snapshot_s_per_byte"] * state_bytes
        persist_s = encode_s + write_s
        contention = entry["contention"]

    return StrategyCosts(
        block_s=block_s,
        persist_s=persist_s,
        contention=contention,
        load_s=load_s,
        detect_s=preset.detect_s,
        restart_s=preset.restart_s,
    )


def young_interval(delta_s: float, mtbf_s: float) -> float:
    """Young's first-order optimal checkpoint interval sqrt(2 * delta * MTBF), in seconds.

    `delta_s` is the blocking cost of one checkpoint and `mtbf_s` the job's mean time
    between failures (J. W. Young, "A first order approximation to the optimum checkpoint
    interval", Communications of the ACM 17(9), 1974).
    """
    if not delta_s >= 0:
        raise ValueError(f"young_interval: delta_s={delta_s!r} is invalid; it must be >= 0")

    if not mtbf_s > 0:
        raise ValueError(f"young_interval: mtbf_s={mtbf_s!r} is invalid; it must be > 0")

    return math.sqrt(2.0 * delta_s * mtbf_s)


def choose_interval(costs: StrategyCosts, preset: ClusterPreset, devices: int) -> tuple[float, str]:
    """Return the checkpoint interval in seconds of training and how it was chosen.

    With "young", delta is the blocking cost of one checkpoint. An async interval shorter
    than the persist time is raised to it, because a checkpoint due earlier only waits
    for the previous persist and adds blocking that Young's delta does not count.
    """
    if preset.interval_s != "young":
        return float(preset.interval_s), "preset"

    mtbf_s = preset.mtbf_s(devices)
    if math.isinf(mtbf_s):
        return preset.horizon_s, "horizon (no failures)"

    interval_s = young_interval(costs.block_s, mtbf_s)
    rule = "Young"
    if interval_s < costs.persist_s:
        interval_s = costs.persist_s
        rule = "Young, raised to persist time"

    if not interval_s > 0:
        raise ValueError(
            f"cluster preset {preset.name!r}: the Young interval is 0 s because the checkpoint "
            "costs nothing to block or persist; set interval_s to a number of seconds"
        )

    return interval_s, rule


@dataclass
class RunResult:
    """Totals of one simulated run."""

    horizon_s: float
    useful_s: float  # seconds of failure-free, checkpoint-free training achieved
    failures: int
    checkpoints: int  # checkpoint blocks completed, committed or not
    seconds: dict[str, float] = field(default_factory=dict)  # time per TIME_BUCKETS entry

    @property
    def throughput_impact_pct(self) -> float:
        return 100.0 * (1.0 - self.useful_s / self.horizon_s)

    @property
    def recovery_s(self) -> float:
        """Mean seconds per failure from the fault to training back at the pre-failure point."""
        if self.failures == 0:
            return math.nan

        return sum(self.seconds[name] for name in ("detect", "restart", "load", "recompute")) / self.failures


@dataclass
class _Pending:
    """An async checkpoint whose persist has not committed yet."""

    work: float  # training position the checkpoint captured, seconds of work
    commit_s: float  # simulation time at which the persist commits


class _TrainingJob:
    """The training process of one run; its state is the job's position and checkpoints."""

    def __init__(self, env: simpy.Environment, costs: StrategyCosts, interval_s: float) -> None:
        self.env = env
        self.costs = costs
        self.interval_s = interval_s
        self.slow_rate = 1.0 / (1.0 + costs.contention)  # work per second during a persist

        self.work = 0.0  # position at the start of the current phase
        self.committed_work = 0.0  # the job starts from a committed initial state
        self.next_checkpoint_work = interval_s
        self.pending: _Pending | None = None
        self.target_work: float | None = None  # pre-failure point while recovering
        self.restarting = False  # detect, restart and load still to do

        self.phase = "train"
        self.phase_start_s = 0.0
        self.phase_open = False
        self.failures = 0
        self.checkpoints = 0
        self.seconds = dict.fromkeys(TIME_BUCKETS, 0.0)

        self.process = env.process(self._run())

    def _run(self):
        while True:
            try:
                if self.restarting:
                    yield from self._restart()
                else:
                    yield from self._train_to_checkpoint()
                    yield from self._checkpoint()
            except simpy.Interrupt:
                self._fail()

    def _restart(self):
        for phase, duration_s in (
            ("detect", self.costs.detect_s),
            ("restart", self.costs.restart_s),
            ("load", self.costs.load_s),
        ):
            yield from self._spend(phase, duration_s)

        self.restarting = False

    def _train_to_checkpoint(self):
        while True:
            self._end_recovery_if_done()
            if self.work >= self.next_checkpoint_work:
                return

            end_work = self.next_checkpoint_work
            if self.target_work is not None:
                # Stop at the pre-failure point so the recompute time ends exactly there.
                end_work = min(end_work, self.target_work)

            yield from self._train_to(end_work)

    def _end_recovery_if_done(self) -> None:
        if self.target_work is not None and self.work >= self.target_work:
            self.target_work = None

    def _train_to(self, end_work: float):
        wall_s = self._wall_for_work(end_work - self.work, self.env.now)
        yield from self._spend("train", wall_s)
        self.work = end_work

    def _checkpoint(self):
        if self.pending is not None and self.pending.commit_s > self.env.now:
            yield from self._spend("wait", self.pending.commit_s - self.env.now)

        if self.pending is not None:
            self._commit()

        captured_work = self.work
        yield from self._spend("block", self.costs.block_s)
        self.checkpoints += 1

        if self.costs.persist_s == 0:
            self.committed_work = captured_work
        else:
            self.pending = _Pending(work=captured_work, commit_s=self.env.now + self.costs.persist_s)

        self.next_checkpoint_work = captured_work + self.interval_s

    def _commit(self) -> None:
        self.committed_work = self.pending.work
        self.pending = None

    def _fail(self) -> None:
        self.close_phase()
        self.failures += 1

        # An async checkpoint counts only if its persist committed before the failure.
        if self.pending is not None and self.pending.commit_s <= self.env.now:
            self._commit()
        self.pending = None

        pre_failure_work = self.work
        if self.target_work is not None:
            pre_failure_work = max(pre_failure_work, self.target_work)

        self.target_work = pre_failure_work
        self.work = self.committed_work
        self.next_checkpoint_work = self.committed_work + self.interval_s
        self.restarting = True

    def _spend(self, phase: str, duration_s: float):
        self.phase = phase
        self.phase_start_s = self.env.now
        self.phase_open = True
        yield self.env.timeout(duration_s)
        self.close_phase()

    def close_phase(self) -> None:
        """Book the time since the phase began and, in a training phase, the work done."""
        if not self.phase_open:
            return

        elapsed_s = self.env.now - self.phase_start_s
        if self.phase == "train":
            self.work += self._work_for_wall(elapsed_s, self.phase_start_s)

        bucket = self.phase
        if bucket in ("train", "block", "wait") and self.target_work is not None:
            bucket = "recompute"

        self.seconds[bucket] += elapsed_s
        self.phase_open = False

    def _persist_end_s(self) -> float:
        if self.pending is None:
            return -math.inf

        return self.pending.commit_s

    def _wall_for_work(self, work_s: float, start_s: float) -> float:
        slow_wall_s = max(0.0, self._persist_end_s() - start_s)
        slow_work_s = slow_wall_s * self.slow_rate
        if work_s <= slow_work_s:
            return work_s / self.slow_rate

        return slow_wall_s + (work_s - slow_work_s)

    def _work_for_wall(self, wall_s: float, start_s: float) -> float:
        slow_wall_s = max(0.0, self._persist_end_s() - start_s)
        if wall_s <= slow_wall_s:
            return wall_s * self.slow_rate

        return slow_wall_s * self.slow_rate + (wall_s - slow_wall_s)


def _failure_arrivals(env: simpy.Environment, job: _TrainingJob, rate_per_s: float, rng: np.random.Generator):
    mean_gap_s = 1.0 / rate_per_s
    while True:
        yield env.timeout(rng.exponential(mean_gap_s))
        job.process.interrupt("failure")


def random_streams(seed: int, devices: int, replication: int) -> dict[str, np.random.Generator]:
    """Return one independent generator per random component of a run.

    The streams depend on the seed, the device count and the replication only, so every
    strategy gets the same failure times (common random numbers), which sharpens the
    comparison between strategies.
    """
    components = ("failures",)
    children = np.random.SeedSequence([seed, devices, replication]).spawn(len(components))
    return {name: np.random.default_rng(child) for name, child in zip(components, children)}


def simulate(
    costs: StrategyCosts,
    failure_rate_per_s: float,
    interval_s: float,
    horizon_s: float,
    streams: Mapping[str, np.random.Generator],
) -> RunResult:
    """Simulate one run of the training job for `horizon_s` seconds and return its totals.

    Simultaneous events run in the order simpy scheduled them, so a run is deterministic
    for given streams.
    """
    if not interval_s > 0:
        raise ValueError(f"simulate: interval_s={interval_s!r} is invalid; it must be > 0")

    if not horizon_s > 0:
        raise ValueError(f"simulate: horizon_s={horizon_s!r} is invalid; it must be > 0")

    env = simpy.Environment()
    job = _TrainingJob(env, costs, interval_s)
    if failure_rate_per_s > 0:
        env.process(_failure_arrivals(env, job, failure_rate_per_s, streams["failures"]))

    env.run(until=horizon_s)
    job.close_phase()

    return RunResult(
        horizon_s=horizon_s,
        useful_s=job.work,
        failures=job.failures,
        checkpoints=job.checkpoints,
        seconds=job.seconds,
    )
