"""Storage backends: where checkpoint files live and how they are made durable."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import typing
import uuid
from pathlib import Path

from strategies.errors import StorageError

logger = logging.getLogger(__name__)


class Storage(typing.Protocol):
    """Files under one root, addressed by relative POSIX paths."""

    root: str

    def check_writable(self) -> None: ...

    def list_dir(self, path: str = "") -> list[str]: ...

    def exists(self, path: str) -> bool: ...

    def makedirs(self, path: str) -> None: ...

    def write_file(self, path: str, chunks: typing.Iterable[bytes | memoryview]) -> int: ...

    def write_atomic(self, path: str, data: bytes) -> None: ...

    def read_file(self, path: str) -> bytes: ...

    def size(self, path: str) -> int: ...

    def remove_tree(self, path: str) -> None: ...

    def commit(self, directory: str, manifest: bytes) -> None:
        """Publish ``manifest`` so that ``directory`` becomes a committed step, atomically."""
        ...

    def is_committed(self, directory: str) -> bool: ...

    def uncommit(self, directory: str) -> None:
        """Make a committed step uncommitted again, keeping its files for inspection."""
        ...


MANIFEST = "manifest.json"


class LocalStorage:
    """A local or network filesystem directory, with fsync of files and directories.

    A step is committed when its manifest has been renamed into place: the rename is
    atomic, and the file and its directory are fsynced around it.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = str(root)
        self._root = Path(root)

    def _path(self, path: str) -> Path:
        return self._root / path if path else self._root

    def check_writable(self) -> None:
        """Create the root if needed and prove a file can be written and synced there."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            probe = self._root / f".write-probe-{uuid.uuid4().hex}"
            with open(probe, "wb") as handle:
                handle.write(b"probe")
                os.fsync(handle.fileno())
            probe.unlink()
        except OSError as error:
            raise StorageError(
                f"checkpoint directory {self.root!r} is not writable ({error.strerror or error}): "
                "choose a directory you can write to, or fix its permissions"
            ) from error

    def list_dir(self, path: str = "") -> list[str]:
        try:
            return [entry.name for entry in os.scandir(self._path(path))]
        except FileNotFoundError:
            return []
        except OSError as error:
            raise StorageError(f"cannot list {self._path(path)}: {error}") from error

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def makedirs(self, path: str) -> None:
        target = self._path(path)
        target.mkdir(parents=True, exist_ok=True)
        self.fsync_dir(str(Path(path).parent) if Path(path).parent != Path(".") else "")

    def write_file(self, path: str, chunks: typing.Iterable[bytes | memoryview]) -> int:
        """Write ``chunks`` to a new file and fsync it; return the bytes written."""
        written = 0
        with open(self._path(path), "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        return written

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` under a temporary name, fsync it, rename it into place, fsync the directory."""
        target = self._path(path)
        temporary = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
        self.fsync_dir(str(Path(path).parent))
        try:
            self.write_file(str(temporary.relative_to(self._root)), [data])
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.fsync_dir(str(Path(path).parent))

    def commit(self, directory: str, manifest: bytes) -> None:
        self.write_atomic(f"{directory}/{MANIFEST}", manifest)

    def is_committed(self, directory: str) -> bool:
        return self._path(f"{directory}/{MANIFEST}").is_file()

    def uncommit(self, directory: str) -> None:
        manifest = self._path(f"{directory}/{MANIFEST}")
        os.replace(manifest, manifest.with_name(f"{MANIFEST}.corrupt-{uuid.uuid4().hex[:8]}"))
        self.fsync_dir(directory)

    def fsync_dir(self, path: str) -> None:
        descriptor = os.open(self._path("" if path == "." else path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        except OSError as error:
            # Some filesystems (and some network mounts) reject fsync on directories.
            if error.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
        finally:
            os.close(descriptor)

    def read_file(self, path: str) -> bytes:
        with open(self._path(path), "rb") as handle:
            return handle.read()

    def size(self, path: str) -> int:
        return self._path(path).stat().st_size

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(self._path(path), ignore_errors=False)
        self.fsync_dir(str(Path(path).parent))
