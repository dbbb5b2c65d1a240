"""Object-store backends: checkpoints on S3, GCS or any other fsspec filesystem.

Object stores have no atomic rename, so a step is committed by a marker object,
``COMMITTED``, written after its shards and its manifest. Each single PUT is atomic on
S3 and GCS: a reader sees the whole object or none of it. A step directory without the
marker is not a checkpoint, whatever else it holds.

fsspec and its backends are imported when an ``FsspecStorage`` is created, so
``import strategies`` does not pay for them.
"""

from __future__ import annotations

import errno
import logging
import os
import typing
import urllib.parse
import uuid

from strategies.errors import ConfigError, StorageError
from strategies.storage import MANIFEST, LocalStorage, Storage

logger = logging.getLogger(__name__)

COMMITTED = "COMMITTED"

# Protocols whose "directories" are only key prefixes: they exist while an object
# below them exists, so makedirs has nothing to create. s3fs and gcsfs would create a
# missing bucket in makedirs, which a checkpoint library must not do behind the user's back.
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})


class FsspecStorage:
    """Checkpoint files under one fsspec URL, committed by a marker object written last.

    ``url`` is the root, such as ``s3://bucket/prefix``, ``gs://bucket/prefix`` or
    ``memory://prefix``; ``storage_options`` go to the fsspec filesystem (for s3fs:
    ``key``, ``secret``, ``endpoint_url``, ``client_kwargs`` and so on).

    ``fs`` is the fsspec filesystem. Listings and object metadata are read fresh on
    every call, not from fsspec's listing cache, because another process may have
    committed a step since this one last listed the root.
    """

    def __init__(self, url: str, **storage_options) -> None:
        import fsspec.core

        self.root = _redact_password(str(url).rstrip("/"))
        try:
            self.fs, self._root = fsspec.core.url_to_fs(str(url).rstrip("/"), **storage_options)
        except ImportError as error:
            raise ConfigError(
                f"no fsspec backend for {self.root!r} ({error}): install the package that provides it, "
                "such as s3fs for s3:// or gcsfs for gs://"
            ) from error
        except ValueError as error:
            raise ConfigError(f"invalid storage URL {self.root!r}: {error}") from error
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        self._has_directories = not protocols & OBJECT_STORE_PROTOCOLS

    def _full(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

    def check_writable(self) -> None:
        """Write and delete a probe object under the root; raise ``StorageError`` naming the fix."""
        probe = f".write-probe-{uuid.uuid4().hex}"
        try:
            self.makedirs("")
            self.fs.pipe_file(self._full(probe), b"probe")
            self.fs.rm_file(self._full(probe))
        except _backend_errors() as error:
            raise StorageError(
                f"checkpoint location {self.root!r} is not writable ({_describe(error)}): check that the bucket "
                "exists and is spelled right, that the credentials may write to it, and that the endpoint "
                "and region are right"
            ) from error

    def list_dir(self, path: str = "") -> list[str]:
        """Return the names of the objects and prefixes directly under ``path``."""
        directory = self._full(path)
        self.fs.invalidate_cache(directory)
        try:
            entries = self.fs.ls(directory, detail=False)
        except FileNotFoundError:
            return []
        except _backend_errors() as error:
            raise self._error("listing", path, error) from error
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.rstrip("/") != directory]
        return sorted(set(names))

    def exists(self, path: str) -> bool:
        """Return whether ``path`` is an object or a prefix with objects below it."""
        self._invalidate(path)
        try:
            self.fs.info(self._full(path))
        except FileNotFoundError:
            return False
        except _backend_errors() as error:
            raise self._error("checking", path, error) from error
        return True

    def makedirs(self, path: str) -> None:
        """Create ``path`` on filesystems with real directories; object stores need nothing."""
        if not self._has_directories:
            return
        try:
            self.fs.makedirs(self._full(path), exist_ok=True)
        except _backend_errors() as error:
            raise self._error("creating directory", path, error) from error

    def write_file(self, path: str, chunks: typing.Iterable[bytes | memoryview]) -> int:
        """Stream ``chunks`` into a new object and return the bytes written.

        s3fs uploads a part of a multipart upload each time its buffer fills (its
        ``default_block_size``, 50 MiB unless set), and completes the upload after the
        last chunk, so the object appears whole or not at all. If a chunk or an upload
        fails, the upload is aborted and no unfinished multipart upload is left behind.
        fsspec's memory filesystem, unlike s3fs, shows the object while it is written.
        """
        written = 0
        try:
            handle = self.fs.open(self._full(path), "wb", autocommit=False)
            try:
                for chunk in chunks:
                    handle.write(chunk)
                    written += memoryview(chunk).nbytes
                handle.close()
            except BaseException:
                self._discard(handle, path)
                raise
            handle.commit()
        except _backend_errors() as error:
            raise self._error("writing", path, error) from error
        return written

    def _discard(self, handle, path: str) -> None:
        try:
            handle.close()
        except _backend_errors() as error:
            logger.debug("closing the failed upload of %s/%s failed too: %s", self.root, path, error)
        try:
            handle.discard()
        except _backend_errors() as error:
            logger.warning(
                "aborting the failed upload of %s/%s failed (%s), so an unfinished multipart upload may remain "
                "until a bucket lifecycle rule removes it",
                self.root, path, error,
            )

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` as one object in a single request.

        A single PUT is atomic on S3 and GCS.
        """
        # NOTE: on file:// and other filesystems with real files, fsspec writes in place,
        # so a crash can leave a partial file. LocalStorage is the crash-safe choice there.
        try:
            self.fs.pipe_file(self._full(path), data)
        except _backend_errors() as error:
            raise self._error("writing", path, error) from error

    def commit(self, directory: str, manifest: bytes) -> None:
        """Write the manifest of ``directory``, then its ``COMMITTED`` marker."""
        self.write_atomic(f"{directory}/{MANIFEST}", manifest)
        self.write_atomic(f"{directory}/{COMMITTED}", b"")
        self._invalidate(directory)

    def is_committed(self, directory: str) -> bool:
        """Return whether the ``COMMITTED`` marker of ``directory`` exists."""
        return self.exists(f"{directory}/{COMMITTED}")

    def read_file(self, path: str) -> bytes:
        """Return the bytes of the object ``path``; raise ``FileNotFoundError`` if it is missing."""
        # s3fs takes the size from its listing cache when it has one, and a stale size
        # would cut short an object that another client has replaced.
        self._invalidate(path)
        try:
            return self.fs.cat_file(self._full(path))
        except FileNotFoundError:
            raise
        except _backend_errors() as error:
            raise self._error("reading", path, error) from error

    def size(self, path: str) -> int:
        """Return the size of the object ``path`` in bytes."""
        self._invalidate(path)
        try:
            return int(self.fs.size(self._full(path)))
        except FileNotFoundError:
            raise
        except _backend_errors() as error:
            raise self._error("reading the size of", path, error) from error

    def uncommit(self, directory: str) -> None:
        """Delete the ``COMMITTED`` marker of ``directory``; its other objects stay for inspection."""
        try:
            self._remove_if_present(f"{directory}/{COMMITTED}", recursive=False)
        except _backend_errors() as error:
            raise self._error("uncommitting", directory, error) from error
        finally:
            self._invalidate(directory)

    def remove_tree(self, path: str) -> None:
        """Delete every object under ``path``, the ``COMMITTED`` marker first.

        Deleting the marker first means a removal cut short leaves an uncommitted
        directory, never a committed step with missing shards. A missing ``path`` is
        not an error.
        """
        try:
            self._remove_if_present(f"{path}/{COMMITTED}", recursive=False)
            self._remove_if_present(path, recursive=True)
        except _backend_errors() as error:
            raise self._error("deleting", path, error) from error
        finally:
            self._invalidate(path)

    def _remove_if_present(self, path: str, recursive: bool) -> None:
        try:
            self.fs.rm(self._full(path), recursive=recursive)
        except FileNotFoundError:
            pass

    def _invalidate(self, path: str) -> None:
        full = self._full(path)
        self.fs.invalidate_cache(full)
        self.fs.invalidate_cache(full.rpartition("/")[0])

    def _error(self, operation: str, path: str, error: BaseException) -> StorageError:
        # Backend errors that carry no errno, such as botocore's, get EIO.
        return StorageError(
            getattr(error, "errno", None) or errno.EIO,
            f"{operation} {self.root}/{path} failed ({_describe(error)}): {_hint(error)}",
        )

    def __repr__(self) -> str:
        return f"FsspecStorage({self.root!r})"


def open_storage(location: str | os.PathLike | Storage, **storage_options) -> Storage:
    """Return the storage for ``location``: a path, a URL or a ready ``Storage``.

    A path or a ``file://`` URL opens a ``LocalStorage``, which commits by an atomic
    rename with fsync. Any other URL (``s3://``, ``gs://``, ``memory://``) opens an
    ``FsspecStorage`` with ``storage_options``. A ``Storage`` is returned as it is.
    """
    if hasattr(location, "is_committed"):
        if storage_options:
            raise ConfigError(f"storage options {sorted(storage_options)} cannot apply to a ready storage {location!r}")
        return location

    text = os.fspath(location)
    if "://" in text and not text.startswith("file://"):
        return FsspecStorage(text, **storage_options)
    if storage_options:
        raise ConfigError(
            f"storage options {sorted(storage_options)} apply only to fsspec URLs such as s3://bucket/prefix, "
            f"not to the local path {text!r}: remove them or pass a URL"
        )
    return LocalStorage(text.removeprefix("file://"))


def _backend_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types that fsspec backends raise for failed requests.

    s3fs translates S3 error responses to ``OSError`` subclasses, but raises botocore's
    own exceptions for missing credentials, unreachable endpoints and invalid
    parameters such as a malformed bucket name.
    """
    # NOTE: other backends (gcsfs, adlfs) may raise their own non-OSError types, and
    # those pass through unwrapped.
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _hint(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "check that the bucket exists and that the URL names it right"
    if isinstance(error, PermissionError):
        return "check that the credentials may read, write, list and delete under this prefix"
    if _is_credentials_error(error):
        return "pass key and secret as storage options or set the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables"
    return "check the credentials, the bucket name, the endpoint and the network, then try again"


def _is_credentials_error(error: BaseException) -> bool:
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:
        return False
    return isinstance(error, (NoCredentialsError, PartialCredentialsError))


def _redact_password(url: str) -> str:
    """Return ``url`` with the password of its user info replaced, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
