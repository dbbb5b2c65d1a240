"""Writing one step to storage and reading it back, with verification.

A save writes this rank's pieces into its shard and fsyncs it. With several ranks
and the parallel layout, each rank then publishes an index of its pieces
(``rank_<r>.json``), and rank 0 waits for every index of this save before it builds
the manifest and commits it. The storage commits atomically (rename or marker).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import time

import xxhash

from strategies import format as fmt
from strategies.codecs import Codec, codec_for_manifest
from strategies.errors import CheckpointError, CorruptCheckpointError, StorageError
from strategies.layout import Layout, Piece, shard_name
from strategies.records import LoadRecord, SaveRecord
from strategies.storage import Storage
from strategies.tree import HostArray, from_bytes, itemsize_of, to_target, unflatten

logger = logging.getLogger(__name__)

POLL_S = 0.02  # how often rank 0 looks for the other ranks' indexes


@dataclasses.dataclass
class Base:
    """The committed checkpoint a delta save is encoded against: raw bytes per piece."""

    step: int
    pieces: dict[tuple[str, int, int], memoryview]


@dataclasses.dataclass
class SaveJob:
    """One rank's part of one save."""

    step: int
    structure: object
    leaves: list[HostArray]  # every array of the state; rank 0 describes them in the manifest
    pieces: list[Piece]  # the bytes this rank writes
    metadata: dict
    run_id: str
    nonce: int  # identical on every rank for one save, so rank 0 can ignore stale indexes
    rank: int = 0
    world_size: int = 1
    full: bool = True  # False: a delta codec may encode against ``base``
    base: Base | None = None


def write_step(storage: Storage, job: SaveJob, codec: Codec, layout: Layout, record: SaveRecord, timeout_s: float) -> list[Piece]:
    """Write this rank's pieces of ``job``; on rank 0 also commit the manifest. Return the pieces written."""
    directory = fmt.step_dir(job.step)
    if job.rank != 0 and layout.name != "parallel":
        return []  # the coordinator layout's other ranks write nothing
    try:
        return _write_and_commit(storage, directory, job, codec, layout, record, timeout_s)
    except OSError as error:
        _remove_partial(storage, directory, job)
        raise StorageError(
            error.errno,
            f"writing step {job.step} to {storage.root}/{directory} failed ({error.strerror or error}); the step is not committed and "
            "older checkpoints are untouched; free space or fix the storage, then save again",
        ) from error


def _remove_partial(storage: Storage, directory: str, job: SaveJob) -> None:
    """Remove what a failed save wrote, so it takes no space. With several ranks, others may still be writing."""
    if job.world_size != 1 or storage.is_committed(directory):
        return
    try:
        storage.remove_tree(directory)
    except OSError as error:
        logger.warning("cannot remove the partial step %d in %s: %s", job.step, storage.root, error)


def _write_and_commit(storage, directory, job: SaveJob, codec, layout, record, timeout_s) -> list[Piece]:
    _prepare_step_dir(storage, directory, job)
    pieces = job.pieces
    started = time.perf_counter()
    if pieces or job.rank == 0:
        index = _write_shard(storage, directory, job, pieces, codec, record)
    else:
        # A rank whose byte range contains no whole element still publishes an empty index.
        index = {"rank": job.rank, "nonce": job.nonce, "shard": None, "length": 0, "checksum": None, "pieces": [], "base_step": None}
    record.write_s = time.perf_counter() - started - record.encode_s
    record.bytes_stored = index["length"]

    started = time.perf_counter()
    if job.world_size > 1 and layout.name == "parallel":
        storage.write_atomic(f"{directory}/{_index_name(job.rank)}", json.dumps(index).encode())
    if job.rank == 0:
        indexes = [index] + _wait_for_indexes(storage, directory, job, layout, timeout_s)
        manifest = _build_manifest(storage, job, indexes, codec, layout)
        storage.commit(directory, fmt.encode_manifest(manifest))
    record.commit_s = time.perf_counter() - started
    return pieces


def _index_name(rank: int) -> str:
    return f"rank_{rank:05d}.json"


def _prepare_step_dir(storage: Storage, directory: str, job: SaveJob) -> None:
    if storage.is_committed(directory):
        raise CheckpointError(
            f"step {job.step} is already committed in {storage.root}/{directory}: committed steps are never "
            "overwritten; save under a new step number or use a new directory"
        )
    # With one rank, leftovers of a crashed save are removed. With several, another rank
    # may already be writing here, so each rank overwrites only its own files.
    if job.world_size == 1 and storage.exists(directory):
        logger.warning("removing uncommitted leftovers of step %d in %s/%s", job.step, storage.root, directory)
        storage.remove_tree(directory)
    storage.makedirs(directory)


def _write_shard(storage, directory: str, job: SaveJob, pieces: list[Piece], codec: Codec, record: SaveRecord) -> dict:
    hasher = xxhash.xxh3_64()
    entries: list[dict] = []
    offset = 0
    base_used = job.base if codec.uses_base and _base_matches(job.base, pieces) else None

    def chunks():
        nonlocal offset
        for piece in pieces:
            started = time.perf_counter()
            raw = piece.raw()
            base = base_used.pieces[_piece_key(piece)] if base_used else None
            encoded = codec.encode(raw, piece.leaf.itemsize, base)
            entry = {
                "array": piece.leaf.name, "start": piece.start, "stop": piece.stop, "offset": offset,
                "length": len(encoded), "checksum": fmt.checksum(encoded), "raw_checksum": fmt.checksum(raw),
            }
            if base is not None:
                entry["base_checksum"] = fmt.checksum(base)
            record.encode_s += time.perf_counter() - started
            hasher.update(encoded)
            entries.append(entry)
            offset += len(encoded)
            yield encoded

    shard = shard_name(job.rank)
    length = storage.write_file(f"{directory}/{shard}", chunks())
    return {
        "rank": job.rank, "nonce": job.nonce, "shard": shard, "length": length,
        "checksum": "xxh3_64:" + hasher.hexdigest(), "pieces": entries,
        "base_step": base_used.step if base_used else None,
    }


def _piece_key(piece: Piece) -> tuple[str, int, int]:
    return (piece.leaf.name, piece.start, piece.stop)


def _base_matches(base: Base | None, pieces: list[Piece]) -> bool:
    return base is not None and all(_piece_key(piece) in base.pieces for piece in pieces)


def _wait_for_indexes(storage, directory: str, job: SaveJob, layout: Layout, timeout_s: float) -> list[dict]:
    """Wait until every other rank has published its index for this save; return them."""
    if job.world_size == 1 or layout.name != "parallel":
        return []
    deadline = time.monotonic() + timeout_s
    found: dict[int, dict] = {}
    while len(found) < job.world_size - 1:
        for rank in range(1, job.world_size):
            if rank not in found:
                index = _read_index(storage, directory, rank)
                if index is not None and index.get("nonce") == job.nonce:
                    found[rank] = index
        if len(found) < job.world_size - 1:
            if time.monotonic() > deadline:
                missing = sorted(set(range(1, job.world_size)) - set(found))
                raise CheckpointError(
                    f"step {job.step}: ranks {missing} did not finish their shards within {timeout_s:g} s, so the step "
                    "is not committed; check that every rank calls save() for this step, or raise commit_timeout_s"
                )
            time.sleep(POLL_S)
    return [found[rank] for rank in sorted(found)]


def _read_index(storage, directory: str, rank: int) -> dict | None:
    try:
        return json.loads(storage.read_file(f"{directory}/{_index_name(rank)}"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # a stale or partly written index of another save; the writer replaces it


def _build_manifest(storage, job: SaveJob, indexes: list[dict], codec: Codec, layout: Layout) -> dict:
    base_steps = {index["base_step"] for index in indexes if index["pieces"]}
    if len(base_steps) > 1 or (base_steps and None not in base_steps and not storage.is_committed(fmt.step_dir(next(iter(base_steps))))):
        raise CheckpointError(
            f"step {job.step}: ranks encoded their delta pieces against different or uncommitted bases {sorted(map(str, base_steps))}; "
            "the step is not committed, and the next full checkpoint restores a common base"
        )
    pieces_by_array: dict[str, list[dict]] = {}
    for index in indexes:
        for entry in index["pieces"]:
            piece = {key: value for key, value in entry.items() if key != "array"}
            piece["shard"] = index["shard"]
            pieces_by_array.setdefault(entry["array"], []).append(piece)

    arrays = {}
    for leaf in job.leaves:
        arrays[leaf.name] = {
            "dtype": leaf.dtype, "shape": list(leaf.shape), "kind": leaf.kind, "raw_length": leaf.nbytes,
            "pieces": sorted(pieces_by_array.get(leaf.name, []), key=lambda piece: piece["start"]),
        }
    return {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "step": job.step,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "run_id": job.run_id,
        "world_size": job.world_size,
        "layout": layout.name,
        "codec": codec.params(),
        "base_step": next(iter(base_steps), None),
        "tree": job.structure,
        "arrays": arrays,
        "shards": {
            index["shard"]: {"length": index["length"], "checksum": index["checksum"]} for index in indexes if index["shard"]
        },
        "metadata": job.metadata,
    }


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


def read_step(storage: Storage, step: int, directories: dict[int, str], target: str, record: LoadRecord):
    """Read, verify and decode ``step``; return (state, metadata).

    ``directories`` maps committed steps to their directory names; a delta step's base
    chain is resolved through it.
    """
    manifest, raw = read_raw(storage, step, directories, record, depth=0)
    arrays = {}
    for name, entry in manifest["arrays"].items():
        started = time.perf_counter()
        array = from_bytes(raw[name], entry["dtype"], tuple(entry["shape"]), name)
        arrays[name] = to_target(array, entry["dtype"], entry["kind"], target, name)
        record.decode_s += time.perf_counter() - started
        record.bytes_state += entry["raw_length"]
    record.bytes_stored = sum(entry["length"] for entry in manifest["shards"].values())
    return unflatten(manifest["tree"], arrays), manifest["metadata"]


MAX_DELTA_CHAIN = 1000


def read_raw(storage: Storage, step: int, directories: dict[int, str], record: LoadRecord, depth: int):
    """Return the manifest of ``step`` and the verified raw bytes of each of its arrays."""
    if step not in directories:
        raise CorruptCheckpointError(f"step {step} is not committed in {storage.root}, but a delta checkpoint names it as its base")
    directory = directories[step]
    manifest = read_manifest(storage, step, directory)
    codec = codec_for_manifest(manifest["codec"])
    base_raw = _read_base(storage, step, manifest, directories, record, depth)
    shards = {
        name: _read_shard(storage, step, f"{directory}/{name}", entry, record) for name, entry in manifest["shards"].items()
    }
    raw = {}
    for name, entry in manifest["arrays"].items():
        raw[name] = _decode_array(name, entry, shards, codec, base_raw, record, step)
    return manifest, raw


def _read_base(storage, step, manifest, directories, record, depth) -> dict | None:
    base_step = manifest.get("base_step")
    if base_step is None:
        return None
    if depth >= MAX_DELTA_CHAIN or not isinstance(base_step, int) or base_step >= step:
        raise CorruptCheckpointError(f"step {step} names an invalid delta base {base_step!r}")
    try:
        return read_raw(storage, base_step, directories, record, depth + 1)[1]
    except CorruptCheckpointError as error:
        raise CorruptCheckpointError(f"delta step {step} cannot be rebuilt because its base failed: {error}") from error


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


def _decode_array(name, entry, shards, codec, base_raw, record, step):
    """Return the raw bytes of one array: a view into its shard when it is stored raw in one piece."""
    started = time.perf_counter()
    itemsize = itemsize_of(entry["dtype"], name)
    expected = math.prod(entry["shape"]) * itemsize
    if expected != entry["raw_length"]:
        raise CorruptCheckpointError(
            f"array {name!r} of step {step}: shape {entry['shape']} of {entry['dtype']} needs {expected} bytes, "
            f"the manifest records {entry['raw_length']}"
        )
    pieces = entry["pieces"]
    whole = len(pieces) == 1 and pieces[0]["start"] == 0 and pieces[0]["stop"] == entry["raw_length"]
    out = None if whole else bytearray(entry["raw_length"])
    for piece in pieces:
        shard = shards[piece["shard"]]
        stored = shard[piece["offset"] : piece["offset"] + piece["length"]]
        if len(stored) != piece["length"]:
            raise CorruptCheckpointError(f"array {name!r} of step {step} runs past the end of shard {piece['shard']}")
        base = _base_piece(name, piece, base_raw, step)
        try:
            raw = codec.decode(stored, piece["stop"] - piece["start"], itemsize, base)
        except CorruptCheckpointError as error:
            raise CorruptCheckpointError(f"array {name!r} of step {step} failed to decode from shard {piece['shard']}: {error}") from error
        found = fmt.checksum(raw)
        if found != piece["raw_checksum"]:
            raise CorruptCheckpointError(
                f"array {name!r} of step {step} decoded to wrong bytes: expected {piece['raw_checksum']}, found {found}"
            )
        if whole:
            out = raw
        else:
            out[piece["start"] : piece["stop"]] = raw
    record.decode_s += time.perf_counter() - started
    return out if out is not None else bytearray()


def _base_piece(name, piece, base_raw, step):
    if "base_checksum" not in piece:
        return None
    if base_raw is None or name not in base_raw:
        raise CorruptCheckpointError(f"delta piece of array {name!r} in step {step} has no base array to apply to")
    base = memoryview(base_raw[name])[piece["start"] : piece["stop"]]
    found = fmt.checksum(base)
    if found != piece["base_checksum"]:
        raise CorruptCheckpointError(
            f"delta base of array {name!r} in step {step} does not match: expected {piece['base_checksum']}, found {found}"
        )
    return base
