"""Simpy model of checkpointing and failure recovery for one training job on a cluster.

The model reads a measured cost profile (a dict loaded from profile.json) and a cluster
preset, scales the per-byte costs of each strategy to the cluster, and simulates a job
of D devices over a horizon. It never imports MLX or `strategies`, so a profile measured
on one machine can be projected anywhere. Units: seconds, bytes and bytes/s throughout.

Assumptions of the model:

Failures
- Failures strike units: single devices, or nodes of `devices_per_node` devices
  (`failure_unit`). Each unit fails independently at `failures_per_unit_hour` and is
  replaced, so the same unit can fail again. Optional correlated node failures
  (`node_failures_per_node_hour`) take all devices of a node at once, on top of the unit
  failures. Every failure interrupts the job process (a simpy interrupt), also during a
  recovery, which then starts again from detection.
- Exponential gaps: the per-unit Poisson processes superpose into one Poisson process of
  rate units * rate per unit, drawn in one vectorized step (a Poisson count, sorted
  uniform times, uniform unit ids).
- Weibull gaps with shape k: each unit is a renewal process whose Weibull scale makes the
  mean gap 1 / rate. Units have been in service long before the job starts (a stationary
  renewal process). A unit's first failure therefore follows the forward-recurrence
  distribution, for which (X / scale)^k is Gamma(1/k, 1). The expected failure count in
  any window is then exactly window * rate. All units are drawn together in vectorized
  rounds until each is past the horizon.

Checkpoint cost (per strategy, from the profile, at D devices)
- Layout `parallel`: every device writes its own `checkpoint_bytes_per_device`. Layout
  `coordinator`: one writer per data-parallel group (`devices_per_replica` devices, or
  D / `data_parallel_groups`) writes the state of its whole group through one link.
  All writers of a checkpoint write at once, so each gets
  min(device link, aggregate storage bandwidth / writers) for the whole write. Every
  device's bytes are written; the model does not deduplicate replicated state.
- A writer encodes its state bytes at `encode_s_per_byte` and writes the stored bytes
  (state / compression_ratio). With `encode_write_overlap` (default) the two run as a
  pipeline over chunks and take max(encode, write): the streaming writer can encode one
  chunk while the previous one is written. Compression then shortens a save exactly when
  the bandwidth per writer is below the codec's throughput. Without overlap they add up.
- A sync checkpoint blocks training for the encode and write and commits when the block
  ends. An async checkpoint blocks for the snapshot (each device copies its own state)
  and persists in the background. Training runs slowed by the measured `contention`
  meanwhile, and the checkpoint commits when the persist ends. At most one persist is in
  flight: a checkpoint that falls due earlier waits for it. A failure drops a persist in
  flight.

Recovery
- Detection: `timeout` takes `detect_timeout_s` (a collective watchdog); `heartbeat`
  takes heartbeat_interval_s * heartbeat_missed_beats. Both are constants per failure.
- Restart: `full_job` takes restart_base_s + restart_per_device_s * D. The term grows
  linearly because every rank must rejoin a rendezvous and the communicator before the
  job resumes. `failed_ranks_only` takes restart_base_s at any scale.
- Load: every reader reads its stored bytes at min(device link, aggregate read bandwidth
  / readers), then decodes its state bytes at `decode_s_per_byte`; readers are the
  writers of the layout.
- Recompute: training from the restored position back to the pre-failure position,
  booked as recompute including any checkpoint blocks and waits on the way.
- Local quantities (compression ratio, per-byte snapshot, encode and decode costs,
  contention) come from the profile unless the preset's `profile_overrides` sets them;
  cluster quantities (sizes, bandwidths, failure rates, detection, restart) come from
  the preset.

Strategies beyond storage checkpoints (their local costs come from a measured base
strategy of the profile, the rest from the preset)
- `in_memory_peer`: each device snapshots its state to host memory (the base strategy's
  snapshot cost) and copies it to a partner node's memory at `peer_bandwidth_Bps` in the
  background, under the base strategy's contention. Nodes pair up (0-1, 2-3, and the
  last node of an odd count joins the node before it). A device failure leaves the host
  memory of its node in service, so only node failures destroy copies. A checkpoint is
  lost only if both nodes of a pair suffer node failures after the last in-memory
  commit. Then the job falls back to the storage checkpoint of the base strategy, which
  is written every round(fallback_interval_s / interval) in-memory checkpoints, starting
  with the first one after each restart. Restore from a peer takes
  bytes_per_device / peer_bandwidth_Bps.
- `replica_recovery`: no checkpoint tier. The lost devices copy their state from a
  healthy data-parallel replica at `peer_bandwidth_Bps`, and training loses at most the
  step in progress (`step_s`). It needs at least 2 replicas. It fails when all replicas
  of some shard (devices at the same position in every data-parallel group) are lost
  before the current recovery ends, for example when replicas share a node that fails;
  then the job falls back to the base strategy's storage checkpoint every
  `fallback_interval_s`.

Time
- Between two failures the job's timeline is deterministic: a prefix of training, then a
  periodic cycle of checkpoints. `CycleSchedule` computes positions, commits and time
  buckets in closed form, so simulated time advances by failure and recovery events,
  never per device or per checkpoint, and a run costs the same at any interval.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
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

# Local, per-byte quantities of a profile entry that a preset may override.
OVERRIDABLE_PROFILE_KEYS = (
    "compression_ratio",
    "snapshot_s_per_byte",
    "encode_s_per_byte",
    "decode_s_per_byte",
    "contention",
)
LAYOUTS = ("coordinator", "parallel")
FAILURE_UNITS = ("device", "node")
FAILURE_DISTRIBUTIONS = ("exponential", "weibull")
# "measured" takes the detect and restart seconds that the local fault runs recorded in
# the profile (recovery.csv), instead of a cluster figure from the preset.
DETECTIONS = ("timeout", "heartbeat", "measured")
RESTART_POLICIES = ("full_job", "failed_ranks_only", "measured")
INTERVAL_RULES = ("young", "daly", "optimal")

# Strategies the model adds beside the measured storage strategies.
MODEL_STRATEGIES = ("in_memory_peer", "replica_recovery")
KINDS = ("storage", *MODEL_STRATEGIES)

# Time buckets of one run. They partition the horizon, so they always sum to it.
TIME_BUCKETS = ("train", "block", "wait", "detect", "restart", "load", "recompute")
RECOVERY_PARTS = ("detect", "restart", "load", "recompute")

DEFAULT_DEVICE_COUNTS = (8, 64, 512, 1200, 4800, 16384, 100000)

# Checkpoints one in_memory_peer cycle may hold; a cycle is materialized as a list of phases.
MAX_CHECKPOINTS_PER_CYCLE = 10_000


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


def _require_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"cluster preset: {name}={value!r} is invalid; expected one of {list(choices)}")


@dataclass(frozen=True)
class ClusterPreset:
    """Sizes, bandwidths, failure model and recovery timing of one cluster (a conf/cluster file)."""

    name: str
    failures_per_unit_hour: float  # independent failures per unit (see failure_unit) per hour
    checkpoint_bytes_per_device: float  # bytes of training state each device saves
    storage_bandwidth_Bps: float  # aggregate write bandwidth, bytes/s, shared by all writers
    device_storage_bandwidth_Bps: float  # per-link cap on one writer's or reader's storage I/O, bytes/s
    read_bandwidth_Bps: float  # aggregate read bandwidth, bytes/s, shared by all readers
    restart_base_s: float  # seconds to reschedule, start processes and re-form the communicator
    devices: int = 4800
    devices_per_node: int = 8
    devices_per_replica: int | None = None  # devices of one data-parallel group (one model replica)
    data_parallel_groups: int | None = None  # alternative to devices_per_replica: a fixed group count
    failure_unit: str = "device"  # "device" or "node": what one independent failure takes down
    failure_distribution: str = "exponential"  # or "weibull": gaps between failures of one unit
    weibull_shape: float = 1.0  # Weibull shape k; k < 1 means a falling hazard rate
    node_failures_per_node_hour: float = 0.0  # correlated failures that take a whole node
    encode_write_overlap: bool = True  # True: persist = max(encode, write); False: their sum
    peer_bandwidth_Bps: float | None = None  # per-device network bandwidth to another node, bytes/s
    detection: str = "timeout"  # "timeout" or "heartbeat"
    detect_timeout_s: float | None = None  # seconds until a collective timeout fires
    heartbeat_interval_s: float | None = None  # seconds between heartbeats
    heartbeat_missed_beats: int = 3  # missed heartbeats that declare a rank dead
    restart_policy: str = "full_job"  # or "failed_ranks_only"
    restart_per_device_s: float = 0.0  # extra restart seconds per device under full_job
    step_s: float | None = None  # seconds of one training step of the job on this cluster
    model_strategies: tuple[str, ...] = MODEL_STRATEGIES  # projected beside the measured strategies
    fallback_interval_s: float | None = None  # storage fallback of the model strategies; None: the rule's
    profile_overrides: dict | None = None  # {strategy name or "all": {profile key: value}}
    interval_s: float | str = "young"  # seconds of training between checkpoints, or a rule name
    optimal_replications: int = 4  # replications the "optimal" interval search averages
    horizon_days: float = 30.0  # simulated wall-clock time of the job
    replications: int = 20  # Monte Carlo runs per strategy and device count
    seed: int = 0
    device_counts: tuple[int, ...] = DEFAULT_DEVICE_COUNTS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"cluster preset: name={self.name!r} is invalid; set it to a non-empty string")

        self._validate_sizes()
        self._validate_failures()
        self._validate_recovery()
        self._validate_interval()
        self._validate_simulation()
        self._validate_model_strategies()
        self._validate_profile_overrides()

    def _validate_sizes(self) -> None:
        _require_positive_int("devices", self.devices)
        _require_positive_int("devices_per_node", self.devices_per_node)
        if self.devices_per_replica is not None and self.data_parallel_groups is not None:
            raise ValueError(
                "cluster preset: devices_per_replica and data_parallel_groups are both set; "
                "set only one of them"
            )

        if self.devices_per_replica is not None:
            _require_positive_int("devices_per_replica", self.devices_per_replica)

        if self.data_parallel_groups is not None:
            _require_positive_int("data_parallel_groups", self.data_parallel_groups)

        _require_positive("checkpoint_bytes_per_device", self.checkpoint_bytes_per_device)
        _require_positive("storage_bandwidth_Bps", self.storage_bandwidth_Bps)
        _require_positive("device_storage_bandwidth_Bps", self.device_storage_bandwidth_Bps)
        _require_positive("read_bandwidth_Bps", self.read_bandwidth_Bps)
        if self.peer_bandwidth_Bps is not None:
            _require_positive("peer_bandwidth_Bps", self.peer_bandwidth_Bps)

        if not isinstance(self.encode_write_overlap, bool):
            raise ValueError(
                f"cluster preset: encode_write_overlap={self.encode_write_overlap!r} is invalid; set it to true or false"
            )

    def _validate_failures(self) -> None:
        _require_choice("failure_unit", self.failure_unit, FAILURE_UNITS)
        _require_choice("failure_distribution", self.failure_distribution, FAILURE_DISTRIBUTIONS)
        _require_non_negative("failures_per_unit_hour", self.failures_per_unit_hour)
        _require_non_negative("node_failures_per_node_hour", self.node_failures_per_node_hour)
        _require_positive("weibull_shape", self.weibull_shape)

    def _validate_recovery(self) -> None:
        _require_choice("detection", self.detection, DETECTIONS)
        if self.detection == "timeout":
            _require_non_negative("detect_timeout_s", self.detect_timeout_s)
        elif self.detection == "heartbeat":
            _require_positive("heartbeat_interval_s", self.heartbeat_interval_s)
            _require_positive_int("heartbeat_missed_beats", self.heartbeat_missed_beats)

        _require_choice("restart_policy", self.restart_policy, RESTART_POLICIES)
        _require_non_negative("restart_base_s", self.restart_base_s)
        _require_non_negative("restart_per_device_s", self.restart_per_device_s)

    def _validate_interval(self) -> None:
        if self.interval_s in INTERVAL_RULES:
            return

        if not _is_number(self.interval_s) or not self.interval_s > 0 or math.isinf(self.interval_s):
            raise ValueError(
                f"cluster preset: interval_s={self.interval_s!r} is invalid; "
                f"set it to a positive number of seconds or to one of {list(INTERVAL_RULES)}"
            )

    def _validate_simulation(self) -> None:
        _require_positive("horizon_days", self.horizon_days)
        _require_positive_int("replications", self.replications)
        _require_positive_int("optimal_replications", self.optimal_replications)

        if not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"cluster preset: seed={self.seed!r} is invalid; set it to an integer >= 0")

        counts = tuple(self.device_counts)
        if not counts:
            raise ValueError("cluster preset: device_counts is empty; list at least one device count")

        for count in counts:
            _require_positive_int("device_counts entry", count)

        # Frozen dataclass: a list from YAML is stored as a tuple so the preset stays hashable.
        object.__setattr__(self, "device_counts", counts)

    def _validate_model_strategies(self) -> None:
        names = tuple(self.model_strategies)
        unknown = [name for name in names if name not in MODEL_STRATEGIES]
        if unknown:
            raise ValueError(
                f"cluster preset: model_strategies {unknown} are unknown; expected names from {list(MODEL_STRATEGIES)}"
            )

        object.__setattr__(self, "model_strategies", names)
        if names and self.peer_bandwidth_Bps is None:
            raise ValueError(
                f"cluster preset: model_strategies {list(names)} need peer_bandwidth_Bps; "
                "set it, or set model_strategies to []"
            )

        if "replica_recovery" in names and self.step_s is None:
            raise ValueError("cluster preset: replica_recovery needs step_s; set it, or drop it from model_strategies")

        if self.step_s is not None:
            _require_positive("step_s", self.step_s)

        if self.fallback_interval_s is not None:
            _require_positive("fallback_interval_s", self.fallback_interval_s)

    def _validate_profile_overrides(self) -> None:
        if self.profile_overrides is None:
            return

        if not isinstance(self.profile_overrides, Mapping):
            raise ValueError(
                f"cluster preset: profile_overrides={self.profile_overrides!r} is invalid; "
                'set it to a mapping such as {all: {contention: 0.05}}'
            )

        for strategy, values in self.profile_overrides.items():
            if not isinstance(values, Mapping):
                raise ValueError(
                    f"cluster preset: profile_overrides[{strategy!r}]={values!r} is invalid; "
                    f"set it to a mapping of keys from {list(OVERRIDABLE_PROFILE_KEYS)} to numbers"
                )

            unknown = sorted(set(values) - set(OVERRIDABLE_PROFILE_KEYS))
            if unknown:
                raise ValueError(
                    f"cluster preset: profile_overrides[{strategy!r}] has invalid keys {unknown}; "
                    f"a preset may override only {list(OVERRIDABLE_PROFILE_KEYS)}"
                )

            for key, value in values.items():
                if not _is_number(value) or not value >= 0 or math.isinf(value):
                    raise ValueError(
                        f"cluster preset: profile_overrides[{strategy!r}][{key!r}]={value!r} is invalid; "
                        "set it to a finite number >= 0"
                    )

    def apply_profile_overrides(self, entries: Mapping[str, Mapping]) -> dict[str, dict]:
        """Return the profile's strategy entries with this preset's overrides applied.

        Overrides under "all" apply to every strategy, then those under a strategy's name.
        """
        overrides = self.profile_overrides or {}
        unknown = sorted(set(overrides) - set(entries) - {"all"})
        if unknown:
            raise ValueError(
                f"cluster preset {self.name!r}: profile_overrides names strategies {unknown} that the "
                f"profile does not measure; measured strategies are {sorted(entries)}"
            )

        return {
            name: {**entry, **overrides.get("all", {}), **overrides.get(name, {})}
            for name, entry in entries.items()
        }

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
        for key in ("device_counts", "model_strategies"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])

        if values.get("profile_overrides") is not None:
            values["profile_overrides"] = {name: dict(keys) for name, keys in values["profile_overrides"].items()}

        return cls(**values)

    @property
    def horizon_s(self) -> float:
        return self.horizon_days * SECONDS_PER_DAY

    @property
    def detect_s(self) -> float:
        """Seconds from a failure to its detection (0 under ``measured``: the profile then supplies it)."""
        if self.detection == "measured":
            return 0.0
        if self.detection == "timeout":
            return float(self.detect_timeout_s)

        return float(self.heartbeat_interval_s * self.heartbeat_missed_beats)

    def restart_s(self, devices: int) -> float:
        """Seconds from detection to processes ready to load, for a job of `devices` devices."""
        if self.restart_policy == "measured":
            return 0.0
        if self.restart_policy == "failed_ranks_only":
            return float(self.restart_base_s)

        return float(self.restart_base_s + self.restart_per_device_s * devices)

    def nodes(self, devices: int) -> int:
        return math.ceil(devices / self.devices_per_node)

    def failure_units(self, devices: int) -> int:
        return devices if self.failure_unit == "device" else self.nodes(devices)

    def data_parallel_group_count(self, devices: int) -> int:
        """Number of data-parallel groups (model replicas); 1 when the preset sets neither key."""
        if self.data_parallel_groups is not None:
            return min(self.data_parallel_groups, devices)

        if self.devices_per_replica is not None:
            return max(1, math.ceil(devices / self.devices_per_replica))

        return 1

    def failure_rate_per_s(self, devices: int) -> float:
        """Mean job failure rate in failures per second for `devices` devices."""
        unit_rate = self.failure_units(devices) * self.failures_per_unit_hour
        node_rate = self.nodes(devices) * self.node_failures_per_node_hour
        return (unit_rate + node_rate) / SECONDS_PER_HOUR

    def mtbf_s(self, devices: int) -> float:
        """Mean time between job failures in seconds; infinite when the rate is 0."""
        rate = self.failure_rate_per_s(devices)
        if rate == 0:
            return math.inf

        return 1.0 / rate

    def topology(self, devices: int) -> Topology:
        groups = self.data_parallel_group_count(devices)
        return Topology(devices, self.devices_per_node, math.ceil(devices / groups))


@dataclass(frozen=True)
class Topology:
    """Placement of a job's devices: nodes, data-parallel groups and in-memory partners.

    Device d sits on node d // devices_per_node and stores shard d % devices_per_group of
    data-parallel group d // devices_per_group.
    """

    devices: int
    devices_per_node: int
    devices_per_group: int

    @property
    def nodes(self) -> int:
        return math.ceil(self.devices / self.devices_per_node)

    @property
    def groups(self) -> int:
        return math.ceil(self.devices / self.devices_per_group)

    def node_devices(self, node: int) -> range:
        start = node * self.devices_per_node
        return range(start, min(start + self.devices_per_node, self.devices))

    def partner(self, node: int) -> int:
        """Return the node that stores this node's in-memory checkpoint copy; -1 on a one-node job."""
        if self.nodes < 2:
            return -1

        other = node ^ 1
        return other if other < self.nodes else node - 1

    def shard_copies(self, shard: int) -> int:
        """Return the number of data-parallel groups that store `shard`."""
        full_groups, remainder = divmod(self.devices, self.devices_per_group)
        return full_groups + (1 if shard < remainder else 0)


# Failures


@dataclass(frozen=True)
class FailureEvent:
    """One failure: the node it hit and the device, or -1 when it took the whole node."""

    node: int
    device: int


@dataclass(frozen=True)
class FailureTrace:
    """Failure times of one run in seconds, ascending, with the node and device each one hit."""

    times_s: tuple[float, ...]
    nodes: tuple[int, ...]
    devices: tuple[int, ...]  # -1: a node failure that takes all devices of the node

    def __len__(self) -> int:
        return len(self.times_s)

    @classmethod
    def scripted(cls, times_s: Sequence[float], node: int = 0, device: int = 0) -> FailureTrace:
        """Build a trace with fixed failure times, all on one device (device=-1: the whole node)."""
        times = tuple(float(t) for t in times_s)
        if any(later < earlier for earlier, later in zip(times, times[1:])):
            raise ValueError(f"failure trace: times_s={list(times)} must be ascending")

        return cls(times, (node,) * len(times), (device,) * len(times))


def random_streams(seed: int, devices: int, replication: int) -> dict[str, np.random.Generator]:
    """Return one independent generator per random component of a run.

    The streams depend on the seed, the device count and the replication only, so every
    strategy gets the same failure times (common random numbers), which sharpens the
    comparison between strategies.
    """
    components = ("unit_failures", "node_failures")
    children = np.random.SeedSequence([seed, devices, replication]).spawn(len(components))
    return {name: np.random.default_rng(child) for name, child in zip(components, children)}


def failure_times(
    rng: np.random.Generator,
    units: int,
    rate_per_s: float,
    horizon_s: float,
    distribution: str = "exponential",
    weibull_shape: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the failures of `units` independent units before `horizon_s`.

    Returns (times in seconds, ascending; unit index of each failure). Each unit fails at
    `rate_per_s` on average under either distribution (see the module docstring).
    """
    if units < 1 or rate_per_s <= 0:
        return np.empty(0), np.empty(0, dtype=np.int64)

    if distribution == "exponential":
        count = rng.poisson(units * rate_per_s * horizon_s)
        times = np.sort(rng.uniform(0.0, horizon_s, count))
        return times, rng.integers(0, units, count)

    if distribution != "weibull":
        raise ValueError(f"failure_times: distribution={distribution!r} is invalid; expected one of {list(FAILURE_DISTRIBUTIONS)}")

    return _weibull_renewal_times(rng, units, rate_per_s, horizon_s, weibull_shape)


def _weibull_renewal_times(
    rng: np.random.Generator, units: int, rate_per_s: float, horizon_s: float, shape: float
) -> tuple[np.ndarray, np.ndarray]:
    scale_s = 1.0 / (rate_per_s * math.gamma(1.0 + 1.0 / shape))

    # Forward-recurrence time of a stationary renewal process: (X / scale)^k ~ Gamma(1/k, 1).
    next_s = scale_s * rng.gamma(1.0 / shape, size=units) ** (1.0 / shape)
    unit_ids = np.arange(units)
    times_chunks, unit_chunks = [], []

    while True:
        alive = next_s < horizon_s
        next_s, unit_ids = next_s[alive], unit_ids[alive]
        if next_s.size == 0:
            break

        times_chunks.append(next_s)
        unit_chunks.append(unit_ids)
        next_s = next_s + scale_s * rng.weibull(shape, size=next_s.size)

    if not times_chunks:
        return np.empty(0), np.empty(0, dtype=np.int64)

    times = np.concatenate(times_chunks)
    unit_of = np.concatenate(unit_chunks)
    order = np.argsort(times, kind="stable")
    return times[order], unit_of[order]


def generate_failures(
    preset: ClusterPreset, devices: int, horizon_s: float, streams: Mapping[str, np.random.Generator]
) -> FailureTrace:
    """Draw the failure trace of one run of `devices` devices, unit and node failures merged."""
    topology = preset.topology(devices)
    unit_rate_per_s = preset.failures_per_unit_hour / SECONDS_PER_HOUR
    node_rate_per_s = preset.node_failures_per_node_hour / SECONDS_PER_HOUR
    distribution, shape = preset.failure_distribution, preset.weibull_shape

    times, units = failure_times(
        streams["unit_failures"], preset.failure_units(devices), unit_rate_per_s, horizon_s, distribution, shape
    )
    if preset.failure_unit == "device":
        unit_nodes, unit_devices = units // topology.devices_per_node, units
    else:
        unit_nodes, unit_devices = units, np.full(units.size, -1)

    node_times, node_ids = failure_times(
        streams["node_failures"], topology.nodes, node_rate_per_s, horizon_s, distribution, shape
    )

    all_times = np.concatenate([times, node_times])
    all_nodes = np.concatenate([unit_nodes, node_ids]).astype(np.int64)
    all_devices = np.concatenate([unit_devices, np.full(node_ids.size, -1)]).astype(np.int64)
    order = np.argsort(all_times, kind="stable")

    return FailureTrace(
        tuple(all_times[order].tolist()), tuple(all_nodes[order].tolist()), tuple(all_devices[order].tolist())
    )


# Costs


@dataclass(frozen=True)
class StrategyCosts:
    """Cluster-scale costs of one strategy at one device count, in seconds.

    For `storage` strategies the first six fields describe the storage checkpoint. For
    `in_memory_peer` they describe the in-memory tier: snapshot block, copy to the peer
    and restore from the peer. For `replica_recovery` the restore is the copy from a
    replica. The `fallback_*` fields of both describe the base strategy's storage
    checkpoint behind them.
    """

    block_s: float  # training loop blocked per checkpoint
    persist_s: float  # background time from the end of the block to the commit; 0 for sync
    contention: float  # fractional slowdown of training while a persist runs
    load_s: float  # restore of the state on recovery
    detect_s: float
    restart_s: float
    kind: str = "storage"
    fallback_block_s: float = 0.0
    fallback_persist_s: float = 0.0
    fallback_load_s: float = 0.0
    fallback_interval_s: float = math.inf  # seconds of training between fallback checkpoints; inf: none
    step_s: float = 0.0  # replica_recovery: the work lost at most per failure

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"strategy costs: kind={self.kind!r} is invalid; expected one of {list(KINDS)}")

        names = (
            "block_s", "persist_s", "contention", "load_s", "detect_s", "restart_s",
            "fallback_block_s", "fallback_persist_s", "fallback_load_s", "step_s",
        )  # fmt: skip
        for name in names:
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0 or math.isinf(value):
                raise ValueError(f"strategy costs: {name}={value!r} is invalid; it must be a finite number >= 0")

        if not _is_number(self.fallback_interval_s) or not self.fallback_interval_s > 0:
            raise ValueError(
                f"strategy costs: fallback_interval_s={self.fallback_interval_s!r} is invalid; it must be > 0 or inf"
            )


@dataclass(frozen=True)
class CheckpointIO:
    """Storage time of one checkpoint of one strategy at one device count, per writer."""

    layout: str
    writers: int  # writers, and readers on recovery
    state_bytes_per_writer: float
    snapshot_s: float  # each device copies its own state off the live arrays
    encode_s: float
    write_s: float
    persist_s: float  # encode and write, overlapped or added (see encode_write_overlap)
    read_s: float
    decode_s: float

    @property
    def load_s(self) -> float:
        return self.read_s + self.decode_s


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

    layout = entry.get("layout", "parallel")
    if layout not in LAYOUTS:
        raise ValueError(
            f"profile strategy {name!r}: layout={layout!r} is invalid; expected one of {list(LAYOUTS)}"
        )

    ratio = entry["compression_ratio"]
    if not _is_number(ratio) or not ratio > 0:
        raise ValueError(
            f"profile strategy {name!r}: compression_ratio={ratio!r} is invalid; it must be > 0 "
            "(bytes_state / bytes_stored)"
        )


def checkpoint_io(entry: Mapping, preset: ClusterPreset, devices: int) -> CheckpointIO:
    """Scale one profile entry's per-byte costs to the writers of `devices` devices.

    A profile without a `layout` key predates layouts; it counts as `parallel`, the
    layout every earlier projection assumed.
    """
    layout = entry.get("layout", "parallel")
    writers = preset.data_parallel_group_count(devices) if layout == "coordinator" else devices
    state_bytes = preset.checkpoint_bytes_per_device * devices / writers
    stored_bytes = state_bytes / entry["compression_ratio"]

    write_Bps = min(preset.device_storage_bandwidth_Bps, preset.storage_bandwidth_Bps / writers)
    read_Bps = min(preset.device_storage_bandwidth_Bps, preset.read_bandwidth_Bps / writers)
    encode_s = entry["encode_s_per_byte"] * state_bytes
    write_s = stored_bytes / write_Bps
    persist_s = max(encode_s, write_s) if preset.encode_write_overlap else encode_s + write_s

    return CheckpointIO(
        layout=layout,
        writers=writers,
        state_bytes_per_writer=state_bytes,
        snapshot_s=entry["snapshot_s_per_byte"] * preset.checkpoint_bytes_per_device,
        encode_s=encode_s,
        write_s=write_s,
        persist_s=persist_s,
        read_s=stored_bytes / read_Bps,
        decode_s=entry["decode_s_per_byte"] * state_bytes,
    )


def strategy_costs(name: str, entry: Mapping, preset: ClusterPreset, devices: int) -> StrategyCosts:
    """Scale one measured profile entry to a storage strategy on `devices` devices."""
    validate_profile_entry(name, entry)
    io = checkpoint_io(entry, preset, devices)

    if entry["writer"] == "sync":
        block_s, persist_s, contention = io.persist_s, 0.0, 0.0
    else:
        block_s, persist_s, contention = io.snapshot_s, io.persist_s, entry["contention"]

    return StrategyCosts(
        block_s=block_s,
        persist_s=persist_s,
        contention=contention,
        load_s=io.load_s,
        detect_s=recovery_detect_s(preset, name, entry),
        restart_s=recovery_restart_s(preset, name, entry, devices),
    )


def recovery_detect_s(preset: ClusterPreset, name: str, entry: Mapping) -> float:
    """Detection seconds: the preset's, or the profile's measured value under ``detection: measured``."""
    if preset.detection != "measured":
        return preset.detect_s
    return _measured(entry, "detect_s", name, "detection")


def recovery_restart_s(preset: ClusterPreset, name: str, entry: Mapping, devices: int) -> float:
    """Restart seconds: the preset's, or the profile's measured value under ``restart_policy: measured``."""
    if preset.restart_policy != "measured":
        return preset.restart_s(devices)
    return _measured(entry, "restart_s", name, "restart_policy")


def _measured(entry: Mapping, key: str, name: str, setting: str) -> float:
    value = entry.get(key)
    if not _is_number(value) or value < 0:
        raise ValueError(
            f"profile strategy {name!r} has no measured {key} (found {value!r}), which cluster {setting}=measured needs: "
            "measure the profile with a kill fault, or choose another cluster setting"
        )
    return float(value)


def choose_base_strategy(entries: Mapping[str, Mapping], preset: ClusterPreset, devices: int) -> str:
    """Pick the measured strategy whose storage checkpoint backs the model strategies.

    It is the async strategy with the shortest persist at `devices` devices (its snapshot
    is the copy to host memory), or the sync strategy with the shortest block when the
    profile has no async one.
    """
    if not entries:
        raise ValueError("choose_base_strategy: the cost profile has no strategies")

    def persist_cost(name: str) -> tuple[int, float]:
        costs = strategy_costs(name, entries[name], preset, devices)
        is_async = entries[name]["writer"] == "async"
        return (0 if is_async else 1, costs.persist_s if is_async else costs.block_s)

    return min(entries, key=persist_cost)


def model_strategy_costs(
    kind: str, base_name: str, base_entry: Mapping, preset: ClusterPreset, devices: int, fallback_interval_s: float
) -> StrategyCosts:
    """Costs of `in_memory_peer` or `replica_recovery` on `devices` devices, over a measured base strategy."""
    if kind not in MODEL_STRATEGIES:
        raise ValueError(f"model_strategy_costs: kind={kind!r} is invalid; expected one of {list(MODEL_STRATEGIES)}")

    fallback = strategy_costs(base_name, base_entry, preset, devices)
    peer_copy_s = preset.checkpoint_bytes_per_device / preset.peer_bandwidth_Bps
    contention = base_entry["contention"] if base_entry["writer"] == "async" else 0.0
    shared = dict(
        contention=contention,
        load_s=peer_copy_s,
        detect_s=recovery_detect_s(preset, base_name, base_entry),
        restart_s=recovery_restart_s(preset, base_name, base_entry, devices),
        kind=kind,
        fallback_block_s=fallback.block_s,
        fallback_persist_s=fallback.persist_s,
        fallback_load_s=fallback.load_s,
        fallback_interval_s=fallback_interval_s,
    )

    if kind == "in_memory_peer":
        snapshot_s = base_entry["snapshot_s_per_byte"] * preset.checkpoint_bytes_per_device
        return StrategyCosts(block_s=snapshot_s, persist_s=peer_copy_s, **shared)

    return StrategyCosts(block_s=0.0, persist_s=0.0, step_s=float(preset.step_s), **shared)


def model_strategy_applies(kind: str, topology: Topology) -> tuple[bool, str]:
    """Return whether a model strategy can run on `topology` and, when it cannot, why."""
    if kind == "in_memory_peer" and topology.nodes < 2:
        return False, "in_memory_peer needs at least 2 nodes"

    if kind == "replica_recovery" and topology.groups < 2:
        return False, "replica_recovery needs at least 2 data-parallel replicas"

    return True, ""


# Intervals


def effective_delta_s(costs: StrategyCosts) -> float:
    """Seconds of training lost per checkpoint: the block plus the work lost to contention."""
    return costs.block_s + costs.persist_s * costs.contention / (1.0 + costs.contention)


def young_interval(delta_s: float, mtbf_s: float) -> float:
    """Young's first-order optimal checkpoint interval sqrt(2 * delta * MTBF), in seconds.

    `delta_s` is the cost of one checkpoint and `mtbf_s` the job's mean time between
    failures (J. W. Young, "A first order approximation to the optimum checkpoint
    interval", Communications of the ACM 17(9), 1974).
    """
    if not delta_s >= 0:
        raise ValueError(f"young_interval: delta_s={delta_s!r} is invalid; it must be >= 0")

    if not mtbf_s > 0:
        raise ValueError(f"young_interval: mtbf_s={mtbf_s!r} is invalid; it must be > 0")

    return math.sqrt(2.0 * delta_s * mtbf_s)


def daly_interval(delta_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimal checkpoint interval in seconds.

    For delta < 2M it is sqrt(2 delta M) [1 + (1/3) sqrt(delta / 2M) + (1/9) (delta / 2M)]
    - delta, else M (J. T. Daly, "A higher order estimate of the optimum checkpoint
    interval for restart dumps", Future Generation Computer Systems 22(3), 2006,
    doi:10.1016/j.future.2004.11.016).
    """
    young_s = young_interval(delta_s, mtbf_s)
    if delta_s >= 2.0 * mtbf_s:
        return mtbf_s

    ratio = delta_s / (2.0 * mtbf_s)
    return young_s * (1.0 + math.sqrt(ratio) / 3.0 + ratio / 9.0) - delta_s


def choose_interval(
    costs: StrategyCosts,
    preset: ClusterPreset,
    devices: int,
    traces: Sequence[FailureTrace] = (),
    topology: Topology | None = None,
) -> tuple[float, str]:
    """Return the checkpoint interval in seconds of training and how it was chosen.

    Young and Daly use the effective delta (block plus contention loss) and the job MTBF.
    An async interval shorter than the persist is raised to it, because a checkpoint due
    earlier only waits for the previous persist. "optimal" searches the simulated optimum
    over `traces`. A replica_recovery interval is the one of its storage fallback.
    """
    if costs.kind == "replica_recovery":
        return costs.fallback_interval_s, "storage fallback"

    if preset.interval_s not in INTERVAL_RULES:
        return float(preset.interval_s), "preset"

    mtbf_s = preset.mtbf_s(devices)
    if math.isinf(mtbf_s):
        return preset.horizon_s, "horizon (no failures)"

    delta_s = effective_delta_s(costs)
    if preset.interval_s == "optimal":
        start_s = max(daly_interval(delta_s, mtbf_s), costs.persist_s)
        return optimal_interval(costs, traces, preset.horizon_s, start_s, topology), "optimal (simulated)"

    rule = "Young" if preset.interval_s == "young" else "Daly"
    interval_s = young_interval(delta_s, mtbf_s) if rule == "Young" else daly_interval(delta_s, mtbf_s)
    if interval_s < costs.persist_s:
        interval_s = costs.persist_s
        rule += ", raised to persist time"

    if not interval_s > 0:
        raise ValueError(
            f"cluster preset {preset.name!r}: the {rule} interval is 0 s because the checkpoint "
            "costs nothing to block or persist; set interval_s to a number of seconds"
        )

    return interval_s, rule


def mean_impact_pct(
    costs: StrategyCosts, interval_s: float, traces: Sequence[FailureTrace], horizon_s: float, topology: Topology | None
) -> float:
    """Mean simulated throughput impact in percent over `traces` at one interval."""
    impacts = [simulate(costs, interval_s, horizon_s, trace, topology).throughput_impact_pct for trace in traces]
    return float(np.mean(impacts))


def optimal_interval(
    costs: StrategyCosts,
    traces: Sequence[FailureTrace],
    horizon_s: float,
    start_s: float,
    topology: Topology | None = None,
    span: float = 16.0,
    tolerance: float = 0.01,
) -> float:
    """Search the interval with the least mean simulated impact over `traces`, in seconds.

    All candidates see the same failure traces (common random numbers). A coarse grid of
    9 intervals over [start / span, start * span] (lower end at least the persist time)
    brackets the optimum, then a golden-section search over the log interval narrows it
    to `tolerance` (relative).
    """
    if not traces:
        raise ValueError("optimal_interval: no failure traces; the search needs at least one replication")

    low = math.log(max(start_s / span, costs.persist_s, 1e-3))
    high = math.log(min(start_s * span, horizon_s))
    if not high > low:
        return math.exp(low)

    def impact(log_interval: float) -> float:
        return mean_impact_pct(costs, math.exp(log_interval), traces, horizon_s, topology)

    grid = np.linspace(low, high, 9)
    values = [impact(x) for x in grid]
    best = int(np.argmin(values))
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]

    golden = (math.sqrt(5.0) - 1.0) / 2.0
    inner_left = right - golden * (right - left)
    inner_right = left + golden * (right - left)
    value_left, value_right = impact(inner_left), impact(inner_right)
    while right - left > tolerance:
        if value_left <= value_right:
            right, inner_right, value_right = inner_right, inner_left, value_left
            inner_left = right - golden * (right - left)
            value_left = impact(inner_left)
        else:
            left, inner_left, value_left = inner_left, inner_right, value_right
            inner_right = left + golden * (right - left)
            value_right = impact(inner_right)

    candidates = [(values[best], grid[best]), (value_left, inner_left), (value_right, inner_right)]
    return math.exp(min(candidates)[1])


# Deterministic timeline between failures


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint of a cycle: its block, its persist and the tiers it commits."""

    block_s: float
    persist_s: float
    commits: tuple[tuple[str, float], ...]  # (tier, seconds after the block ends)


def checkpoint_cycle(costs: StrategyCosts, interval_s: float) -> list[CheckpointSpec]:
    """Return the checkpoints of one period of the strategy's schedule."""
    if costs.kind == "storage":
        return [CheckpointSpec(costs.block_s, costs.persist_s, (("storage", costs.persist_s),))]

    if costs.kind == "replica_recovery":
        persist_s = costs.fallback_persist_s
        return [CheckpointSpec(costs.fallback_block_s, persist_s, (("storage", persist_s),))]

    memory = CheckpointSpec(costs.block_s, costs.persist_s, (("memory", costs.persist_s),))
    if math.isinf(costs.fallback_interval_s):
        return [memory]

    # The first in-memory checkpoint of each period also writes the storage fallback
    # from host memory, after the copy to the peer.
    per_fallback = max(1, round(costs.fallback_interval_s / interval_s))
    if per_fallback > MAX_CHECKPOINTS_PER_CYCLE:
        # NOTE: the fallback then runs more often than fallback_interval_s requests, so
        # its cost is overstated. Only intervals under 1/10,000 of it get here.
        log.warning(
            "in_memory_peer: %d in-memory checkpoints per storage fallback capped at %d",
            per_fallback, MAX_CHECKPOINTS_PER_CYCLE,
        )  # fmt: skip
        per_fallback = MAX_CHECKPOINTS_PER_CYCLE
    both_persist_s = costs.persist_s + costs.fallback_persist_s
    with_storage = CheckpointSpec(
        max(costs.block_s, costs.fallback_block_s),
        both_persist_s,
        (("memory", costs.persist_s), ("storage", both_persist_s)),
    )
    return [with_storage] + [memory] * (per_fallback - 1)


class CycleSchedule:
    """Closed-form timeline of training between two failures.

    A segment starts with no persist in flight: it trains `prefix_work` seconds of work
    at full speed, then repeats a cycle that starts with the block of a checkpoint. Each
    checkpoint of the cycle is followed by `interval_s` of work: slowed by contention
    while its persist runs, then at full speed, or, if the work is done first, a wait for
    the persist. Every persist therefore ends by the next block, so each cycle starts in
    the same state and the timeline is periodic.
    """

    def __init__(self, interval_s: float, checkpoints: Sequence[CheckpointSpec], contention: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"CycleSchedule: interval_s={interval_s!r} is invalid; it must be > 0")

        self.interval_s = interval_s
        self.checkpoints_per_cycle = len(checkpoints)
        self.cycle_work_s = interval_s * len(checkpoints)

        slow_rate = 1.0 / (1.0 + contention)  # work per wall second while a persist runs
        phases: list[tuple[str, float, float]] = []  # (bucket, wall seconds, work rate)
        commits: dict[str, list[tuple[float, int]]] = {}
        block_ends: list[float] = []
        wall_s = 0.0

        for index, spec in enumerate(checkpoints):
            phases.append(("block", spec.block_s, 0.0))
            wall_s += spec.block_s
            block_ends.append(wall_s)
            for tier, after_s in spec.commits:
                commits.setdefault(tier, []).append((wall_s + after_s, index))

            for phase in self._after_block(spec.persist_s, interval_s, slow_rate):
                phases.append(phase)
                wall_s += phase[1]

        self.cycle_wall_s = wall_s
        self._block_ends = block_ends
        self._commits = {tier: sorted(entries) for tier, entries in commits.items()}
        self._commit_offsets = {tier: [offset for offset, _ in entries] for tier, entries in self._commits.items()}
        self._index_phases(phases)

    @staticmethod
    def _after_block(persist_s: float, interval_s: float, slow_rate: float) -> list[tuple[str, float, float]]:
        if persist_s == 0:
            return [("train", interval_s, 1.0)]

        slow_work_s = persist_s * slow_rate
        if slow_work_s >= interval_s:
            slow_wall_s = interval_s / slow_rate
            return [("train", slow_wall_s, slow_rate), ("wait", persist_s - slow_wall_s, 0.0)]

        return [("train", persist_s, slow_rate), ("train", interval_s - slow_work_s, 1.0)]

    def _index_phases(self, phases: list[tuple[str, float, float]]) -> None:
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._work_starts: list[float] = []
        self._work_ends: list[float] = []
        self._rates: list[float] = []
        self._buckets: list[int] = []
        self._bucket_starts: list[tuple[float, float, float]] = []  # train, block, wait before the phase

        wall_s = work_s = 0.0
        totals = [0.0, 0.0, 0.0]
        for bucket, duration_s, rate in phases:
            if duration_s <= 0:
                continue

            bucket_index = ("train", "block", "wait").index(bucket)
            self._starts.append(wall_s)
            self._work_starts.append(work_s)
            self._bucket_starts.append(tuple(totals))
            wall_s += duration_s
            work_s += duration_s * rate
            totals[bucket_index] += duration_s
            self._ends.append(wall_s)
            self._work_ends.append(work_s)
            self._rates.append(rate)
            self._buckets.append(bucket_index)

        self._cycle_buckets = tuple(totals)

    def _split(self, prefix_work: float, elapsed_s: float) -> tuple[int, float]:
        """Return (complete cycles, seconds into the current cycle) after the prefix."""
        after_s = elapsed_s - prefix_work
        cycles = math.floor(after_s / self.cycle_wall_s)
        remainder_s = after_s - cycles * self.cycle_wall_s
        if remainder_s >= self.cycle_wall_s:  # floating-point edge
            cycles, remainder_s = cycles + 1, 0.0

        return cycles, max(remainder_s, 0.0)

    def work_at(self, prefix_work: float, elapsed_s: float) -> float:
        """Work done `elapsed_s` after the segment start, in seconds of work."""
        if elapsed_s <= prefix_work:
            return elapsed_s

        cycles, remainder_s = self._split(prefix_work, elapsed_s)
        index = bisect.bisect_right(self._ends, remainder_s)
        in_cycle = 0.0
        if index < len(self._ends):
            in_cycle = self._work_starts[index] + (remainder_s - self._starts[index]) * self._rates[index]
        elif self._work_ends:
            in_cycle = self._work_ends[-1]

        return prefix_work + cycles * self.cycle_work_s + in_cycle

    def buckets_at(self, prefix_work: float, elapsed_s: float) -> tuple[float, float, float]:
        """Seconds spent training, blocked and waiting in the first `elapsed_s` of the segment."""
        if elapsed_s <= prefix_work:
            return (elapsed_s, 0.0, 0.0)

        cycles, remainder_s = self._split(prefix_work, elapsed_s)
        totals = [prefix_work + cycles * self._cycle_buckets[0], cycles * self._cycle_buckets[1], cycles * self._cycle_buckets[2]]
        index = bisect.bisect_right(self._ends, remainder_s)
        if index < len(self._ends):
            before = self._bucket_starts[index]
            for bucket in range(3):
                totals[bucket] += before[bucket]
            totals[self._buckets[index]] += remainder_s - self._starts[index]
        else:
            for bucket in range(3):
                totals[bucket] += self._cycle_buckets[bucket]

        return (totals[0], totals[1], totals[2])

    def blocks_at(self, prefix_work: float, elapsed_s: float) -> int:
        """Checkpoint blocks completed in the first `elapsed_s` of the segment."""
        if elapsed_s < prefix_work:
            return 0

        cycles, remainder_s = self._split(prefix_work, elapsed_s)
        return cycles * self.checkpoints_per_cycle + bisect.bisect_right(self._block_ends, remainder_s)

    def last_commit(self, prefix_work: float, elapsed_s: float, tier: str) -> tuple[int, float] | None:
        """Return (checkpoint ordinal in the segment, commit time after the segment start) of
        the last commit of `tier` within `elapsed_s`, or None. Ordinal m captured the work
        prefix_work + m * interval_s."""
        offsets = self._commit_offsets.get(tier)
        if not offsets or elapsed_s < prefix_work:
            return None

        cycles, remainder_s = self._split(prefix_work, elapsed_s)
        index = bisect.bisect_right(offsets, remainder_s)
        if index == 0:
            if cycles == 0:
                return None
            cycles, index = cycles - 1, len(offsets)

        offset_s, checkpoint = self._commits[tier][index - 1]
        ordinal = cycles * self.checkpoints_per_cycle + checkpoint
        return ordinal, prefix_work + cycles * self.cycle_wall_s + offset_s

    def wall_for_work(self, prefix_work: float, work_s: float) -> float:
        """Earliest seconds after the segment start at which `work_s` of work is done."""
        if work_s <= prefix_work:
            return work_s

        after = work_s - prefix_work
        cycles = math.ceil(after / self.cycle_work_s) - 1
        remainder = after - cycles * self.cycle_work_s
        # The first phase whose end reaches the remainder is a training phase, because
        # blocks and waits end at the same work as the phase before them. Rounding can
        # push the remainder past the cycle's last phase, hence the step back.
        index = min(bisect.bisect_left(self._work_ends, remainder), len(self._work_ends) - 1)
        while self._rates[index] == 0 and index > 0:
            index -= 1

        in_cycle = self._starts[index] + (remainder - self._work_starts[index]) / self._rates[index]
        return prefix_work + cycles * self.cycle_wall_s + in_cycle


@functools.lru_cache(maxsize=256)
def schedule_for(costs: StrategyCosts, interval_s: float) -> CycleSchedule:
    """Return the (cached) schedule of a strategy at an interval."""
    return CycleSchedule(interval_s, checkpoint_cycle(costs, interval_s), costs.contention)


# The simulation


@dataclass
class RunResult:
    """Totals of one simulated run."""

    horizon_s: float
    useful_s: float  # seconds of failure-free, checkpoint-free training achieved
    failures: int
    checkpoints: int  # checkpoint blocks completed, committed or not
    seconds: dict[str, float] = field(default_factory=dict)  # time per TIME_BUCKETS entry
    fallbacks: int = 0  # recoveries of a model strategy that restored from the storage fallback

    @property
    def throughput_impact_pct(self) -> float:
        return 100.0 * (1.0 - self.useful_s / self.horizon_s)

    @property
    def recovery_s(self) -> float:
        """Mean seconds per failure from the fault to training back at the pre-failure point."""
        if self.failures == 0:
            return math.nan

        return sum(self.seconds[name] for name in RECOVERY_PARTS) / self.failures


@dataclass
class _Segment:
    """Training since the last recovery (or the job start), on the deterministic schedule."""

    start_s: float
    start_work: float
    prefix_work: float


class _TrainingJob:
    """The training process of one run; its state is the job's position and checkpoints."""

    def __init__(
        self, env: simpy.Environment, costs: StrategyCosts, interval_s: float, topology: Topology | None
    ) -> None:
        self.env = env
        self.costs = costs
        self.interval_s = interval_s
        self.topology = topology
        self.schedule = schedule_for(costs, interval_s) if math.isfinite(interval_s) else None

        self.work = 0.0  # position: seconds of training done and kept
        self.storage_work = 0.0  # the job starts from a committed initial state
        self.memory_work = 0.0
        self.memory_commit_s = 0.0
        self.memory_valid = False  # no in-memory checkpoint before the first one commits
        self.target_work: float | None = None  # pre-failure point while recomputing

        self.recovering = False
        self.recovery_fallback = False  # this recovery restores from the storage fallback
        self.node_failed_s: dict[int, float] = {}  # in_memory_peer: last node failure per node
        self.lost_devices: set[int] = set()  # replica_recovery: devices lost in this recovery
        self.shard_losses: dict[int, int] = {}

        self.phase: str | None = None
        self.phase_start_s = 0.0
        self.segment: _Segment | None = None
        self.failures = 0
        self.fallbacks = 0
        self.checkpoints = 0
        self.seconds = dict.fromkeys(TIME_BUCKETS, 0.0)

        self.process = env.process(self._run())

    def _run(self):
        while True:
            try:
                if self.recovering:
                    yield from self._recover()
                else:
                    yield from self._train()
            except simpy.Interrupt as interrupt:
                self._fail(interrupt.cause)

    def _recover(self):
        load_s = self.costs.fallback_load_s if self.recovery_fallback else self.costs.load_s
        for phase, duration_s in (("detect", self.costs.detect_s), ("restart", self.costs.restart_s), ("load", load_s)):
            self.phase, self.phase_start_s = phase, self.env.now
            yield self.env.timeout(duration_s)
            self.close_phase()

        self._finish_recovery()

    def _train(self):
        base_work = self.storage_work if self.costs.kind == "replica_recovery" else self.work
        next_due = base_work + self.interval_s
        self.segment = _Segment(self.env.now, self.work, max(0.0, next_due - self.work))
        self.phase, self.phase_start_s = "segment", self.env.now

        # Training follows the schedule until a failure interrupts it or the horizon ends the run.
        yield self.env.event()

    def close_phase(self) -> None:
        """Book the time since the phase began; a training segment also books work and commits."""
        if self.phase is None:
            return

        if self.phase == "segment":
            self._close_segment()
        else:
            self.seconds[self.phase] += self.env.now - self.phase_start_s

        self.phase = None

    def _close_segment(self) -> None:
        segment, schedule = self.segment, self.schedule
        elapsed_s = self.env.now - segment.start_s
        if schedule is None:  # no checkpoints at all
            self._book_training(elapsed_s, (elapsed_s, 0.0, 0.0), lambda work: work - segment.start_work)
            self.work = segment.start_work + elapsed_s
            return

        prefix = segment.prefix_work
        buckets = schedule.buckets_at(prefix, elapsed_s)
        self._book_training(elapsed_s, buckets, lambda work: schedule.wall_for_work(prefix, work - segment.start_work))
        self.work = segment.start_work + schedule.work_at(prefix, elapsed_s)
        self.checkpoints += schedule.blocks_at(prefix, elapsed_s)

        for tier in ("storage", "memory"):
            commit = schedule.last_commit(prefix, elapsed_s, tier)
            if commit is None:
                continue

            ordinal, after_s = commit
            captured_work = segment.start_work + prefix + ordinal * self.interval_s
            if tier == "storage":
                self.storage_work = captured_work
            else:
                self.memory_work = captured_work
                self.memory_commit_s = segment.start_s + after_s
                self.memory_valid = True

    def _book_training(self, elapsed_s: float, buckets: tuple[float, float, float], wall_for_work) -> None:
        """Book train, block and wait seconds, the part before the pre-failure point as recompute."""
        recompute_s = 0.0
        if self.target_work is not None:
            if self.target_work > self.segment.start_work:
                recompute_s = min(elapsed_s, wall_for_work(self.target_work))

            if recompute_s < elapsed_s:  # the pre-failure point was reached in this segment
                self.target_work = None

        if recompute_s > 0 and self.schedule is not None:
            before = self.schedule.buckets_at(self.segment.prefix_work, recompute_s)
            buckets = tuple(total - early for total, early in zip(buckets, before))
        elif recompute_s > 0:
            buckets = (buckets[0] - recompute_s, 0.0, 0.0)

        self.seconds["recompute"] += recompute_s
        for name, seconds in zip(("train", "block", "wait"), buckets):
            self.seconds[name] += seconds

    def _fail(self, event: FailureEvent) -> None:
        self.close_phase()
        self.failures += 1

        if self.target_work is None or self.work > self.target_work:
            self.target_work = self.work

        restore_work = self._restore_point(event)
        self.work = min(self.work, restore_work)
        self.recovering = True

    def _restore_point(self, event: FailureEvent) -> float:
        """Return the work position the job restores to after `event`, and note a fallback."""
        kind = self.costs.kind
        if kind == "in_memory_peer" and self._memory_checkpoint_survives(event):
            return self.memory_work

        if kind == "replica_recovery" and self._replicas_survive(event):
            step_s = self.costs.step_s
            return math.floor(self.work / step_s) * step_s if step_s > 0 else self.work

        if kind != "storage":
            self.recovery_fallback = True

        return self.storage_work

    def _memory_checkpoint_survives(self, event: FailureEvent) -> bool:
        if event.device < 0:
            partner = self.topology.partner(event.node)
            partner_failed_s = self.node_failed_s.get(partner, -math.inf)
            self.node_failed_s[event.node] = self.env.now
            if partner_failed_s >= self.memory_commit_s:
                return False

        return self.memory_valid and not self.recovery_fallback

    def _replicas_survive(self, event: FailureEvent) -> bool:
        topology = self.topology
        lost = topology.node_devices(event.node) if event.device < 0 else (event.device,)
        for device in lost:
            if device in self.lost_devices:
                continue

            self.lost_devices.add(device)
            shard = device % topology.devices_per_group
            self.shard_losses[shard] = self.shard_losses.get(shard, 0) + 1
            if self.shard_losses[shard] >= topology.shard_copies(shard):
                self.recovery_fallback = True

        return not self.recovery_fallback

    def _finish_recovery(self) -> None:
        self.recovering = False
        self.lost_devices.clear()
        self.shard_losses.clear()
        if self.recovery_fallback:
            self.fallbacks += 1
            self.memory_valid = False
            self.memory_work = self.storage_work
            self.recovery_fallback = False


def _inject_failures(env: simpy.Environment, job: _TrainingJob, trace: FailureTrace):
    for time_s, node, device in zip(trace.times_s, trace.nodes, trace.devices):
        yield env.timeout(max(0.0, time_s - env.now))
        job.process.interrupt(FailureEvent(node, device))


def simulate(
    costs: StrategyCosts,
    interval_s: float,
    horizon_s: float,
    failures: FailureTrace,
    topology: Topology | None = None,
) -> RunResult:
    """Simulate one run of the training job for `horizon_s` seconds and return its totals.

    `topology` is required for in_memory_peer and replica_recovery, whose losses depend
    on which node and device failed. Simultaneous events run in the order simpy scheduled
    them, so a run is deterministic for a given trace.
    """
    if not interval_s > 0:
        raise ValueError(f"simulate: interval_s={interval_s!r} is invalid; it must be > 0")

    if not horizon_s > 0:
        raise ValueError(f"simulate: horizon_s={horizon_s!r} is invalid; it must be > 0")

    if costs.kind != "storage" and topology is None:
        raise ValueError(f"simulate: a {costs.kind} strategy needs the job topology; pass topology=")

    env = simpy.Environment()
    job = _TrainingJob(env, costs, interval_s, topology)
    if len(failures):
        env.process(_inject_failures(env, job, failures))

    env.run(until=horizon_s)
    job.close_phase()

    return RunResult(
        horizon_s=horizon_s,
        useful_s=job.work,
        failures=job.failures,
        checkpoints=job.checkpoints,
        seconds=job.seconds,
        fallbacks=job.fallbacks,
    )
