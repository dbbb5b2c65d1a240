"""Options that compose a strategy from its axes: writer, codec, layout, storage."""

from __future__ import annotations

import dataclasses
import difflib
import enum

from strategies.codecs import CODECS
from strategies.errors import ConfigError


class Writer(str, enum.Enum):
    """When a save blocks the caller."""

    SYNC = "sync"  # until the checkpoint is durable
    ASYNC = "async"  # only while the state is copied off the live arrays


class Layout(str, enum.Enum):
    """Assignment of the state's bytes to the ranks that write them."""

    COORDINATOR = "coordinator"  # rank 0 writes every array
    PARALLEL = "parallel"  # every rank writes an equal share of the bytes


def _choice(enum_type: type[enum.Enum], field: str, value) -> enum.Enum:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise ConfigError(f"invalid {field} {value!r}: expected one of {allowed}") from None


def _integer(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"invalid {field} {value!r}: expected an integer")
    return value


@dataclasses.dataclass
class CheckpointOptions:
    """A checkpoint strategy and its settings.

    ``name`` labels the records of this strategy; it defaults to
    ``<writer>_<codec>_<layout>``, without the layout when it is the coordinator.
    """

    writer: Writer | str = Writer.SYNC
    codec: str = "raw"
    layout: Layout | str = Layout.COORDINATOR
    zstd_level: int = 3
    zstd_threads: int = 0  # 0 compresses on the writing thread; -1 uses every core
    max_in_flight: int = 1  # async saves staged or persisting at once
    keep_last: int | None = None  # committed steps of this run to keep; None keeps all
    delta_full_every: int = 4  # with delta_zstd, every n-th save is a full checkpoint
    run_id: str | None = None  # steps of other run ids are never removed by retention
    commit_timeout_s: float = 600.0  # how long rank 0 waits for the other ranks' shards
    flush_on_sigterm: bool = False  # on SIGTERM, finish pending saves before the process ends
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("zstd_level", "zstd_threads", "max_in_flight", "delta_full_every"):
            setattr(self, field, _integer(field, getattr(self, field)))
        if self.keep_last is not None:
            self.keep_last = _integer("keep_last", self.keep_last)
        self.writer = _choice(Writer, "writer", self.writer)
        self.layout = _choice(Layout, "layout", self.layout)
        if self.codec not in CODECS:
            raise ConfigError(f"invalid codec {self.codec!r}: expected one of {', '.join(CODECS)}")
        self._check_ranges()
        if not self.name:
            suffix = "" if self.layout == Layout.COORDINATOR else f"_{self.layout.value}"
            self.name = f"{self.writer.value}_{self.codec}{suffix}"

    def _check_ranges(self) -> None:
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError(f"invalid zstd_level {self.zstd_level}: expected 1 to 22")
        if self.zstd_threads < -1:
            raise ConfigError(f"invalid zstd_threads {self.zstd_threads}: expected -1, 0 or a positive count")
        if self.max_in_flight < 1:
            raise ConfigError(f"invalid max_in_flight {self.max_in_flight}: expected 1 or more")
        if self.keep_last is not None and self.keep_last < 1:
            raise ConfigError(f"invalid keep_last {self.keep_last}: expected 1 or more, or None to keep every step")
        if self.delta_full_every < 1:
            raise ConfigError(f"invalid delta_full_every {self.delta_full_every}: expected 1 or more")
        if not isinstance(self.commit_timeout_s, (int, float)) or not self.commit_timeout_s > 0:
            raise ConfigError(f"invalid commit_timeout_s {self.commit_timeout_s!r}: expected a positive number of seconds")
        if self.run_id is not None and (not isinstance(self.run_id, str) or not self.run_id):
            raise ConfigError(f"invalid run_id {self.run_id!r}: expected a non-empty string or None")

    @classmethod
    def from_name(cls, name: str, **settings) -> "CheckpointOptions":
        """Build options from a strategy name: ``<writer>_<codec>[_<layout>]``, e.g. ``async_zstd_parallel``."""
        writer, _, rest = str(name).partition("_")
        layout = Layout.COORDINATOR.value
        for candidate in Layout:
            if rest.endswith("_" + candidate.value):
                rest, layout = rest[: -len(candidate.value) - 1], candidate.value
        if writer not in {w.value for w in Writer} or rest not in CODECS:
            raise ConfigError(_unknown_strategy_message(str(name)))
        settings.setdefault("layout", layout)
        return cls(writer=writer, codec=rest, name=name, **settings)


def strategy_names(layouts: bool = False) -> list[str]:
    """Return the strategy names ``CheckpointOptions.from_name`` accepts, one per writer and codec.

    With ``layouts``, also the names with a ``_parallel`` or ``_coordinator`` suffix.
    """
    names = [f"{writer.value}_{codec}" for writer in Writer for codec in CODECS]
    if layouts:
        names += [f"{name}_{layout.value}" for name in list(names) for layout in Layout]
    return names


def _unknown_strategy_message(name: str) -> str:
    names = strategy_names()
    message = f"unknown strategy {name!r}: expected <writer>_<codec>[_<layout>], one of {', '.join(names)}, optionally with _parallel"
    close = difflib.get_close_matches(name, strategy_names(layouts=True), n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message
