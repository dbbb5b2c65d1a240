"""Writing one step to storage and reading it back, with verification."""

from __future__ import annotations

import datetime
import logging
import time

import xxhash

from strategies import format as fmt
from strategies.codecs import Codec, codec_for_manifest
from strategies.errors import CheckpointError, CorruptCheckpointError, StorageError
from strategies.layout import Layout
from strategies.records import LoadRecord, SaveRecord
from strategies.storage import Storage
from strategies.tree import HostArray, from_bytes, to_target, unflatten

logger = logging.getLogger(__name__)


def write_step(
    storage: Storage,
    step: int,
    structure,
    leaves: list[HostArray],
    metadata: dict,
    codec: Codec,
    layout: Layout,
    record: SaveRecord,
) -> None:
    """Write the shards of ``step``, then commit its manifest atomically."""
    directory = fmt.step_dir(step)
    try:
        _write_and_commit(storage, directory, step, structure, leaves, metadata, codec, layout, record)
    except OSError as error:
        raise StorageError(
            error.errno,
            f"writing step {step} to {storage.root}/{directory} failed: {error}; the step is not committed and "
            "older checkpoints are untouched; free space or fix the storage, then save again",
        ) from error


def _write_and_commit(storage, directory, step, structure, leaves, metadata, codec, layout, record) -> None:
    _prepare_step_dir(storage, directory, step)

    arrays: dict[str, dict] = {}
    shards: dict[str, dict] = {}
    started = time.perf_counter()
    for shard_name, shard_leaves in layout.plan(leaves).items():
        shards[shard_name] = _write_shard(storage, f"{directory}/{shard_name}", shard_leaves, codec, arrays, record)
    record.write_s = time.perf_counter() - started - record.encode_s

    started = time.perf_counter()
    manifest = {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "step": step,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "codec": codec.params(),
        "layout": layout.name,
        "tree": structure,
        "arrays": arrays,
        "shards": shards,
        "metadata": metadata,
    }
    storage.commit(directory, fmt.encode_manifest(manifest))
    record.commit_s = time.perf_counter() - started
    record.bytes_stored = sum(shard["length"] for shard in shards.values())


def _prepare_step_dir(storage: Storage, directory: str, step: int) -> None:
    if storage.is_committed(directory):
        raise CheckpointError(
            f"step {step} is already committed in {storage.root}/{directory}: committed steps are never "
            "overwritten; save under a new step number or use a new directory"
        )
    if storage.exists(directory):
        logger.warning("removing uncommitted leftovers of step %d in %s/%s", step, storage.root, directory)
        storage.remove_tree(directory)
    storage.makedirs(directory)


def _write_shard(storage, path, leaves, codec, arrays, record) -> dict:
    hasher = xxhash.xxh3_64()
    offset = 0

    def chunks():
        nonlocal offset
        for leaf in leaves:
            started = time.perf_counter()
            raw = leaf.buffer()
            encoded = codec.encode(raw)
            record.encode_s += time.perf_counter() - started
            hasher.update(encoded)
            arrays[leaf.name] = {
                "dtype": leaf.dtype,
                "shape": list(leaf.shape),
                "kind": leaf.kind,
                "shard": path.rsplit("/", 1)[-1],
                "offset": offset,
                "length": len(encoded),
                "raw_length": len(raw),
                "checksum": fmt.checksum(encoded),
                "raw_checksum": fmt.checksum(raw),
            }
            offset += len(encoded)
            yield encoded

    length = storage.write_file(path, chunks())
    return {"length": length, "checksum": "xxh3_64:" + hasher.hexdigest()}


def read_manifest(storage: Storage, step: int, directory: str | None = None) -> dict:
    path = f"{directory or fmt.step_dir(step)}/{fmt.MANIFEST}"
    try:
        data = storage.read_file(path)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"manifest {storage.root}/{path} is missing") from None
    manifest = fmt.decode_manifest(data, f"{storage.root}/{path}")
    if manifest["step"] != step:
        raise CorruptCheckpointError(
            f"manifest {storage.root}/{path} records step {manifest['step']!r} inside the directory of step {step}"
        )
    return manifest


def read_step(storage: Storage, step: int, directory: str, target: str, record: LoadRecord):
    """Read, verify and decode ``step`` from ``directory``; return (state, metadata)."""
    manifest = read_manifest(storage, step, directory)
    codec = codec_for_manifest(manifest["codec"])
    shards = {
        name: _read_shard(storage, step, f"{directory}/{name}", entry, record) for name, entry in manifest["shards"].items()
    }

    arrays = {}
    for name, entry in manifest["arrays"].items():
        arrays[name] = _decode_array(name, entry, shards[entry["shard"]], codec, target, record, step)
        record.bytes_state += entry["raw_length"]
    record.bytes_stored = sum(entry["length"] for entry in manifest["shards"].values())
    return unflatten(manifest["tree"], arrays), manifest["metadata"]


def _read_shard(storage, step, path, entry, record) -> memoryview:
    started = time.perf_counter()
    try:
        data = storage.read_file(path)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"shard {storage.root}/{path} of step {step} is missing") from None
    record.read_s += time.perf_counter() - started

    started = time.perf_counter()
    if len(data) != entry.get("length"):
        raise CorruptCheckpointError(
            f"shard {storage.root}/{path} of step {step} has {len(data)} bytes, the manifest expects {entry.get('length')}"
        )
    found = fmt.checksum(data)
    if found != entry.get("checksum"):
        raise CorruptCheckpointError(
            f"shard {storage.root}/{path} of step {step} failed its checksum: expected {entry.get('checksum')}, found {found}"
        )
    record.verify_s += time.perf_counter() - started
    return memoryview(data)


def _decode_array(name, entry, shard: memoryview, codec, target, record, step):
    stored = shard[entry["offset"] : entry["offset"] + entry["length"]]
    if len(stored) != entry["length"]:
        raise CorruptCheckpointError(f"array {name!r} of step {step} runs past the end of shard {entry['shard']}")

    started = time.perf_counter()
    raw = codec.decode(stored, entry["raw_length"])
    found = fmt.checksum(raw)
    if found != entry["raw_checksum"]:
        raise CorruptCheckpointError(
            f"array {name!r} of step {step} decoded to wrong bytes: expected {entry['raw_checksum']}, found {found}"
        )
    array = from_bytes(raw, entry["dtype"], tuple(entry["shape"]), name)
    result = to_target(array, entry["dtype"], entry["kind"], target, name)
    record.decode_s += time.perf_counter() - started
    return result
