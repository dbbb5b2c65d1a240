"""Crash-safe checkpoints for training state: sync or async, raw or zstd.

Example::

    from strategies import Checkpointer, CheckpointOptions

    ckpt = Checkpointer("/checkpoints/run1", CheckpointOptions.from_name("async_zstd", keep_last=3))
    ckpt.save({"model": params, "optimizer": opt_state}, step=100, metadata={"data_step": 100})
    restored = ckpt.restore()  # newest committed step that verifies
    ckpt.close()
"""

from strategies.checkpointer import Checkpointer, Restored
from strategies.errors import (
    BackgroundSaveError,
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    NoCheckpointError,
    StorageError,
)
from strategies.options import CheckpointOptions, Layout, Writer, strategy_names
from strategies.records import LoadRecord, SaveRecord
from strategies.writers import SaveHandle

__all__ = [
    "BackgroundSaveError",
    "CheckpointError",
    "CheckpointOptions",
    "Checkpointer",
    "ConfigError",
    "CorruptCheckpointError",
    "Layout",
    "LoadRecord",
    "NoCheckpointError",
    "Restored",
    "SaveHandle",
    "SaveRecord",
    "StorageError",
    "Writer",
    "strategy_names",
]
