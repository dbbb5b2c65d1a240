"""Crash-safe checkpoints for training state.

A strategy composes a writer (sync, async), a codec (raw, zstd, bytegroup_zstd,
delta_zstd), a layout (coordinator, parallel) and a storage (a directory, or an
fsspec URL through ``strategies.objectstore``).

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


def mlx_distributed(group=None) -> dict:
    """Return ``rank``, ``world_size`` and ``broadcast`` for a Checkpointer on an MLX distributed group."""
    from strategies.mlx_distributed import mlx_distributed as build

    return build(group)


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
    "mlx_distributed",
    "strategy_names",
]
