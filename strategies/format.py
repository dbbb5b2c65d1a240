"""The on-disk format: one directory per step, shard files and a JSON manifest.

A step directory is ``step_<number>``; its number is parsed, never sorted as text.
Shards are written and fsynced first. Then the storage commits the manifest: a
filesystem renames it into place, and an object store writes a marker last.
"""

from __future__ import annotations

import json
import re

import xxhash

from strategies.errors import CorruptCheckpointError
from strategies.storage import MANIFEST

FORMAT_NAME = "flashbench-checkpoint"
FORMAT_VERSION = 2

_STEP_DIR = re.compile(r"step_([0-9]+)")


def step_dir(step: int) -> str:
    return f"step_{step:08d}"


def parse_step(name: str) -> int | None:
    """Return the step number of a step directory name, or None for other names."""
    match = _STEP_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def checksum(data) -> str:
    return "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)


def encode_manifest(manifest: dict) -> bytes:
    """Serialize ``manifest`` with a checksum of its own content, so any change to it is detected."""
    manifest = {key: value for key, value in manifest.items() if key != "checksum"}
    manifest["checksum"] = _manifest_checksum(manifest)
    # Insertion order is kept: the tree's dict order is part of the state's structure.
    return json.dumps(manifest, indent=1).encode()


def _manifest_checksum(manifest: dict) -> str:
    return checksum(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())


def decode_manifest(data: bytes, where: str) -> dict:
    """Parse and validate a manifest; raise ``CorruptCheckpointError`` naming ``where``."""
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(
            f"manifest {where} is not valid JSON ({error}): the checkpoint is corrupt; "
            "restore an older step or delete this step directory"
        ) from error
    if isinstance(manifest, dict) and "checksum" in manifest:
        content = {key: value for key, value in manifest.items() if key != "checksum"}
        found = _manifest_checksum(content)
        if found != manifest["checksum"]:
            raise CorruptCheckpointError(
                f"manifest {where} failed its checksum: expected {manifest['checksum']}, found {found}; "
                "restore an older step or delete this step directory"
            )
    _validate_manifest(manifest, where)
    return manifest


def _validate_manifest(manifest, where: str) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CorruptCheckpointError(f"manifest {where} is not a {FORMAT_NAME} manifest: restore another step")
    if manifest.get("version") != FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"manifest {where} has format version {manifest.get('version')!r}, "
            f"this library reads version {FORMAT_VERSION}: upgrade strategies or restore another step"
        )
    missing = [key for key in ("step", "tree", "arrays", "shards", "codec", "metadata", "checksum") if key not in manifest]
    if missing:
        raise CorruptCheckpointError(f"manifest {where} lacks {', '.join(missing)}: restore another step")
    for key, kind in (("arrays", dict), ("shards", dict), ("metadata", dict), ("codec", dict)):
        if not isinstance(manifest[key], kind):
            raise CorruptCheckpointError(f"manifest {where}: {key} is a {type(manifest[key]).__name__}, expected an object")
    if not isinstance(manifest["step"], int):
        raise CorruptCheckpointError(f"manifest {where}: step {manifest['step']!r} is not an integer")
    for name, entry in manifest["shards"].items():
        if not isinstance(entry, dict) or not _is_count(entry.get("length")):
            raise CorruptCheckpointError(f"manifest {where}: entry of shard {name!r} is invalid")
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise CorruptCheckpointError(f"manifest {where}: shard name {name!r} is not a plain file name")
    for name, entry in manifest["arrays"].items():
        _validate_array_entry(name, entry, manifest["shards"], where)


def _validate_array_entry(name: str, entry, shards: dict, where: str) -> None:
    keys = ("dtype", "shape", "kind", "raw_length", "pieces")
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise CorruptCheckpointError(f"manifest {where}: entry of array {name!r} is incomplete")
    shape, raw_length = entry["shape"], entry["raw_length"]
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape) or not _is_count(raw_length):
        raise CorruptCheckpointError(f"manifest {where}: array {name!r} has an invalid shape or length")
    if not isinstance(entry["pieces"], list):
        raise CorruptCheckpointError(f"manifest {where}: pieces of array {name!r} are not a list")
    covered = 0
    for piece in entry["pieces"]:
        _validate_piece(name, piece, shards, where)
        if piece["start"] != covered or piece["stop"] < piece["start"]:
            raise CorruptCheckpointError(f"manifest {where}: pieces of array {name!r} leave a gap or overlap at byte {covered}")
        covered = piece["stop"]
    if covered != raw_length:
        raise CorruptCheckpointError(f"manifest {where}: pieces of array {name!r} cover {covered} of {raw_length} bytes")


def _validate_piece(name: str, piece, shards: dict, where: str) -> None:
    keys = ("shard", "start", "stop", "offset", "length", "checksum", "raw_checksum")
    if not isinstance(piece, dict) or any(key not in piece for key in keys):
        raise CorruptCheckpointError(f"manifest {where}: a piece of array {name!r} is incomplete")
    if piece["shard"] not in shards:
        raise CorruptCheckpointError(f"manifest {where}: array {name!r} names unknown shard {piece['shard']!r}")
    if not all(_is_count(piece[key]) for key in ("start", "stop", "offset", "length")):
        raise CorruptCheckpointError(f"manifest {where}: a piece of array {name!r} has an invalid offset or length")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
