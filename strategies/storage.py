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
        if self._path(path).is_dir():
            return
        self._make_dir(self._path(path))
        self.fsync_dir(str(Path(path).parent) if Path(path).parent != Path(".") else "")

    def write_file(self, path: str, chunks: typing.Iterable[bytes | memoryview]) -> int:
        """Write ``chunks`` to a new file and fsync it; return the bytes written."""
        return self._write_and_sync(self._path(path), chunks)

    # The primitives below are the only calls that change the filesystem, so a subclass
    # can journal them (the power-cut simulation does).

    def _make_dir(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)

    def _write_and_sync(self, target: Path, chunks) -> int:
        written = 0
        with open(target, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        return written

    def _rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def _remove_tree(self, target: Path) -> None:
        shutil.rmtree(target)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` under a temporary name, fsync it, rename it into place, fsync the directory."""
        target = self._path(path)
        temporary = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
        self.fsync_dir(str(Path(path).parent))
        try:
            self._write_and_sync(temporary, [data])
            self._rename(temporary, target)
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
        self._rename(manifest, manifest.with_name(f"{MANIFEST}.corrupt-{uuid.uuid4().hex[:8]}"))
        self.fsync_dir(directory)

    def lock_writer(self) -> typing.Callable[[], None] | None:
        """Take the directory's writer lock without waiting; return its release, or None if another process has it.

        The lock is an flock on ``.writer.lock`` in the root. The kernel drops it when the
        process exits, so a killed job never leaves it behind.
        """
        import fcntl

        handle = open(self._root / ".writer.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()

        def release() -> None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

        return release

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

    def read_file(self, path: str) -> bytearray:
        """Read a whole file into one writable buffer, so restored arrays can be views of it."""
        with open(self._path(path), "rb") as handle:
            buffer = bytearray(os.fstat(handle.fileno()).st_size)
            read = handle.readinto(buffer)
            return buffer if read == len(buffer) else buffer[:read]

    def size(self, path: str) -> int:
        return self._path(path).stat().st_size

    def remove_tree(self, path: str) -> None:
        self._remove_tree(self._path(path))
        self.fsync_dir(str(Path(path).parent))
