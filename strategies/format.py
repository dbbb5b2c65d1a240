"""The on-disk format: one directory per step, shard files and a JSON manifest.

A step directory is ``step_<number>``; its number is parsed, never sorted as text.
Shards are written and fsynced first; then the storage commits the manifest: on a
filesystem by renaming it into place, on an object store by a marker written last.
"""

from __future__ import annotations

import json
import re

import xxhash

from strategies.errors import CorruptCheckpointError
from strategies.storage import MANIFEST

FORMAT_NAME = "flashbench-checkpoint"
FORMAT_VERSION = 1

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
    # Insertion order is kept: the tree's dict order is part of the state's structure.
    return json.dumps(manifest, indent=1).encode()


def decode_manifest(data: bytes, where: str) -> dict:
    """Parse and validate a manifest; raise ``CorruptCheckpointError`` naming ``where``."""
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(
            f"manifest {where} is not valid JSON ({error}): the checkpoint is corrupt; "
            "restore an older step or delete this step directory"
        ) from error
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
    missing = [key for key in ("step", "tree", "arrays", "shards", "codec", "metadata") if key not in manifest]
    if missing:
        raise CorruptCheckpointError(f"manifest {where} lacks {', '.join(missing)}: restore another step")
    for key, kind in (("arrays", dict), ("shards", dict), ("metadata", dict), ("codec", dict)):
        if not isinstance(manifest[key], kind):
            raise CorruptCheckpointError(f"manifest {where}: {key} is a {type(manifest[key]).__name__}, expected an object")
    if not isinstance(manifest["step"], int):
        raise CorruptCheckpointError(f"manifest {where}: step {manifest['step']!r} is not an integer")
    for name, entry in manifest["shards"].items():
        if not isinstance(entry, dict):
            raise CorruptCheckpointError(f"manifest {where}: entry of shard {name!r} is not an object")
    for name, entry in manifest["arrays"].items():
        _validate_array_entry(name, entry, manifest["shards"], where)


def _validate_array_entry(name: str, entry, shards: dict, where: str) -> None:
    keys = ("dtype", "shape", "shard", "offset", "length", "raw_length", "checksum", "raw_checksum", "kind")
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise CorruptCheckpointError(f"manifest {where}: entry of array {name!r} is incomplete")
    if entry["shard"] not in shards:
        raise CorruptCheckpointError(f"manifest {where}: array {name!r} names unknown shard {entry['shard']!r}")
    numbers = (entry["offset"], entry["length"], entry["raw_length"])
    if not all(isinstance(n, int) and n >= 0 for n in numbers):
        raise CorruptCheckpointError(f"manifest {where}: array {name!r} has invalid offset or length")
