"""The experiment configuration, validated from the composed Hydra config."""

from __future__ import annotations

import dataclasses

from strategies import CheckpointOptions, ConfigError

from flashbench.faults import FaultSpec
from flashbench.workload.model import ModelConfig

WORKLOAD_KEYS = (
    "name", "d_model", "n_layers", "n_heads", "context", "dropout",
    "batch_size", "learning_rate", "weight_decay", "corpus_bytes", "compile",
)


@dataclasses.dataclass
class ExperimentConfig:
    """A validated experiment: strategies to run, training length, fault and cluster preset."""

    strategies: list[str]
    seed: int
    steps: int
    interval: int
    checkpoint: dict  # CheckpointOptions settings shared by every strategy
    checkpoint_dir: str | None
    workload: dict
    fault: FaultSpec
    cluster: dict
    blas: bool = True
    world_size: int = 1  # data-parallel training processes per run
    profile: str | None = None  # a profile.json to project instead of measuring a new one
    report: str = "standard"  # "standard" or "paper_table"

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError("strategy.names is empty: name at least one strategy, e.g. strategy=sync_zstd")
        duplicates = sorted({name for name in self.strategies if self.strategies.count(name) > 1})
        if duplicates:
            raise ConfigError(f"strategy.names lists {', '.join(duplicates)} more than once: name each strategy once")
        for name in self.strategies:
            CheckpointOptions.from_name(name, **self.checkpoint)
        if self.seed < 0:
            raise ConfigError(f"invalid seed {self.seed}: expected 0 or more")
        if self.report not in ("standard", "paper_table"):
            raise ConfigError(f"invalid report {self.report!r}: expected standard or paper_table")
        if self.world_size < 1:
            raise ConfigError(f"invalid train.world_size {self.world_size}: expected 1 or more processes")
        if int(self.workload.get("batch_size", 1)) % self.world_size:
            raise ConfigError(
                f"invalid workload.batch_size {self.workload['batch_size']}: it must be a multiple of "
                f"train.world_size ({self.world_size}) so every rank trains on the same number of rows"
            )
        if self.fault.rank >= self.world_size:
            raise ConfigError(f"invalid fault.rank {self.fault.rank}: expected a rank below train.world_size ({self.world_size})")
        if self.steps < 1:
            raise ConfigError(f"invalid train.steps {self.steps}: expected 1 or more")
        if self.interval < 1:
            raise ConfigError(f"invalid train.interval {self.interval}: expected a positive number of steps between checkpoints")
        saves = self.steps // self.interval
        if self.fault.kind in ("kill_during_save", "storage", "corrupt") and self.fault.save_index > saves:
            raise ConfigError(
                f"invalid fault.save_index {self.fault.save_index}: the run makes only {saves} saves "
                f"(train.steps {self.steps} / train.interval {self.interval}), so the fault would never fire"
            )
        if self.fault.kind in ("kill", "hang", "exception") and self.fault.at_step >= self.steps:
            raise ConfigError(
                f"invalid fault.at_step {self.fault.at_step}: it must be below train.steps ({self.steps}) for the fault to happen"
            )
        self._check_workload()

    def _check_workload(self) -> None:
        missing = [key for key in WORKLOAD_KEYS if key not in self.workload]
        if missing:
            raise ConfigError(f"workload lacks {', '.join(missing)}: start from conf/workload/small.yaml")
        try:
            ModelConfig(**{k: self.workload[k] for k in ("d_model", "n_layers", "n_heads", "context", "dropout")})
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if _integer("workload.batch_size", self.workload["batch_size"]) < 1:
            raise ConfigError(f"invalid workload.batch_size {self.workload['batch_size']}: expected a positive integer")
        if _integer("workload.corpus_bytes", self.workload["corpus_bytes"]) < MIN_CORPUS_BYTES:
            raise ConfigError(
                f"invalid workload.corpus_bytes {self.workload['corpus_bytes']}: expected at least {MIN_CORPUS_BYTES} bytes of text"
            )
        if float(self.workload["learning_rate"]) <= 0:
            raise ConfigError(f"invalid workload.learning_rate {self.workload['learning_rate']}: expected a positive number")

    @classmethod
    def from_mapping(cls, cfg: dict) -> "ExperimentConfig":
        """Build from the composed config as plain containers (``OmegaConf.to_container``)."""
        try:
            checkpoint = dict(cfg["checkpoint"])
            fault = cfg["fault"]
            return cls(
                strategies=list(cfg["strategy"]["names"]),
                seed=_integer("seed", cfg["seed"]),
                steps=_integer("train.steps", cfg["train"]["steps"]),
                interval=_integer("train.interval", cfg["train"]["interval"]),
                checkpoint_dir=checkpoint.pop("dir", None),
                checkpoint=checkpoint,
                workload=dict(cfg["workload"]),
                fault=_fault(fault, int(cfg["train"]["steps"])),
                cluster=dict(cfg["cluster"]),
                blas=bool(cfg.get("blas", True)),
                world_size=_integer("train.world_size", cfg["train"].get("world_size", 1)),
                profile=cfg.get("profile"),
                report=str(cfg.get("report", "standard")),
            )
        except KeyError as error:
            raise ConfigError(f"the config lacks the key {error}: compare it with conf/config.yaml") from None
        except (TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(f"invalid config value: {error}") from None


MIN_CORPUS_BYTES = 65536


def _integer(key: str, value) -> int:
    """Return ``value`` as an int, rejecting fractions and text instead of truncating them."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"invalid {key} {value!r}: expected an integer")
    return int(value)


def _fault(fault: dict, steps: int) -> FaultSpec:
    known = {field.name for field in dataclasses.fields(FaultSpec)}
    unknown = sorted(set(fault) - known)
    if unknown:
        raise ConfigError(f"unknown fault setting {unknown[0]!r}: expected one of {', '.join(sorted(known))}")
    for key in ("at_step", "rank", "save_index", "seed", "max_restarts"):
        if key in fault:
            fault[key] = _integer(f"fault.{key}", fault[key])
    try:
        return FaultSpec(**fault).resolve_step(steps)
    except ValueError as error:
        raise ConfigError(str(error)) from None
