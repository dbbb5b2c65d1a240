"""Options that compose a strategy from its axes: writer, codec, layout, storage."""

from __future__ import annotations

import dataclasses
import difflib
import enum

from strategies.errors import ConfigError


class Writer(str, enum.Enum):
    """When a save blocks the caller."""

    SYNC = "sync"  # until the checkpoint is durable
    ASYNC = "async"  # only while the state is copied off the live arrays


class Layout(str, enum.Enum):
    """Which ranks write which arrays."""

    COORDINATOR = "coordinator"  # one process writes every array


CODECS = ("raw", "zstd")


def _integer(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"invalid {field} {value!r}: expected an integer")
    return value


def _choice(enum_type: type[enum.Enum], field: str, value) -> enum.Enum:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise ConfigError(f"invalid {field} {value!r}: expected one of {allowed}") from None


@dataclasses.dataclass
class CheckpointOptions:
    """A checkpoint strategy and its settings.

    ``name`` labels the records of this strategy; it defaults to ``<writer>_<codec>``.
    """

    writer: Writer | str = Writer.SYNC
    codec: str = "raw"
    layout: Layout | str = Layout.COORDINATOR
    zstd_level: int = 3
    zstd_threads: int = 0  # 0 compresses on the calling thread; -1 uses every core
    max_in_flight: int = 1  # async saves staged or persisting at once
    keep_last: int | None = None  # committed steps to keep; None keeps all
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("zstd_level", "zstd_threads", "max_in_flight"):
            setattr(self, field, _integer(field, getattr(self, field)))
        if self.keep_last is not None:
            self.keep_last = _integer("keep_last", self.keep_last)
        self.writer = _choice(Writer, "writer", self.writer)
        self.layout = _choice(Layout, "layout", self.layout)
        if self.codec not in CODECS:
            raise ConfigError(f"invalid codec {self.codec!r}: expected one of {', '.join(CODECS)}")
        if not 1 <= int(self.zstd_level) <= 22:
            raise ConfigError(f"invalid zstd_level {self.zstd_level}: expected 1 to 22")
        if int(self.zstd_threads) < -1:
            raise ConfigError(f"invalid zstd_threads {self.zstd_threads}: expected -1, 0 or a positive count")
        if int(self.max_in_flight) < 1:
            raise ConfigError(f"invalid max_in_flight {self.max_in_flight}: expected 1 or more")
        if self.keep_last is not None and int(self.keep_last) < 1:
            raise ConfigError(f"invalid keep_last {self.keep_last}: expected 1 or more, or None to keep every step")
        if not self.name:
            self.name = f"{self.writer.value}_{self.codec}"

    @classmethod
    def from_name(cls, name: str, **settings) -> "CheckpointOptions":
        """Build options from a strategy name such as ``async_zstd``."""
        writer, _, codec = name.partition("_")
        if writer not in {w.value for w in Writer} or codec not in CODECS:
            raise ConfigError(_unknown_strategy_message(name))
        return cls(writer=writer, codec=codec, name=name, **settings)


def strategy_names() -> list[str]:
    """Return every strategy name that ``CheckpointOptions.from_name`` accepts."""
    return [f"{writer.value}_{codec}" for writer in Writer for codec in CODECS]


def _unknown_strategy_message(name: str) -> str:
    names = strategy_names()
    message = f"unknown strategy {name!r}: expected one of {', '.join(names)}"
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return message
