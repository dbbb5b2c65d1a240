"""Exceptions raised by the checkpoint library.

Every error names the offending value and what to do about it, so callers can show
``str(error)`` to a user as it is.
"""


class CheckpointError(Exception):
    """Base class of every error this library raises."""


class ConfigError(CheckpointError, ValueError):
    """An option or strategy name is invalid."""


class StorageError(CheckpointError, OSError):
    """The storage backend failed to read, write or list a path."""


class CorruptCheckpointError(CheckpointError):
    """A stored checkpoint failed verification (manifest, checksum or size)."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """No committed checkpoint matches the request."""


class BackgroundSaveError(CheckpointError):
    """An asynchronous save failed in the background; raised on the next call."""
