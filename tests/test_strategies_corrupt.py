"""Corrupt checkpoints: verification names what failed, and restore falls back to an older step."""

import json

import numpy as np
import pytest
import xxhash

from strategies import Checkpointer, CheckpointOptions, CorruptCheckpointError
from strategies.format import encode_manifest

SHARD = "shard_00000.bin"


def state_for(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal((32, 32)).astype(np.float32), "b": np.full((4,), step, dtype=np.int64)}


@pytest.fixture(params=["sync_raw", "sync_zstd"])
def saved(request, tmp_path):
    """Return (checkpointer, directory) with steps 1 and 2 committed."""
    directory = tmp_path / "ckpt"
    checkpointer = Checkpointer(directory, CheckpointOptions.from_name(request.param))
    checkpointer.save(state_for(1), step=1, metadata={"saved": 1})
    checkpointer.save(state_for(2), step=2, metadata={"saved": 2})
    return checkpointer, directory


def shard_path(directory, step: int):
    return directory / f"step_{step:08d}" / SHARD


def manifest_path(directory, step: int):
    return directory / f"step_{step:08d}" / "manifest.json"


def read_manifest(directory, step: int) -> dict:
    return json.loads(manifest_path(directory, step).read_text())


def write_manifest(directory, step: int, manifest: dict) -> None:
    # Re-sealed with a valid manifest checksum, so the checks behind it are reached.
    manifest_path(directory, step).write_bytes(encode_manifest(manifest))


def test_manifest_edit_caught_by_checksum(saved):
    checkpointer, directory = saved
    manifest = read_manifest(directory, 2)
    manifest["metadata"]["saved"] = 99
    manifest_path(directory, 2).write_text(json.dumps(manifest))

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert "manifest.json failed its checksum" in str(raised.value)


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def assert_step_1(restored) -> None:
    assert restored.step == 1
    assert restored.state["w"].tobytes() == state_for(1)["w"].tobytes()
    assert restored.state["b"].tobytes() == state_for(1)["b"].tobytes()
    assert restored.metadata == {"saved": 1}


def test_flipped_byte_falls_back(saved):
    checkpointer, directory = saved
    flip_byte(shard_path(directory, 2), 20)

    restored = checkpointer.restore()

    assert_step_1(restored)
    assert restored.record.skipped_steps == (2,)


def test_flipped_byte_fallback_logged(saved, caplog):
    checkpointer, directory = saved
    flip_byte(shard_path(directory, 2), 20)

    with caplog.at_level("WARNING", logger="strategies"):
        checkpointer.restore()

    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "step 2" in warnings[0]
    assert SHARD in warnings[0]
    assert "uncommitting corrupt step 2" in warnings[1]


def test_fallback_uncommits_corrupt_step(saved):
    checkpointer, directory = saved
    flip_byte(shard_path(directory, 2), 20)

    checkpointer.restore()

    assert checkpointer.steps() == [1]
    assert list((directory / "step_00000002").glob("manifest.json.corrupt-*"))
    checkpointer.save(state_for(2), step=2).wait()
    assert checkpointer.restore().step == 2


def test_flipped_byte_named_step(saved):
    checkpointer, directory = saved
    path = shard_path(directory, 2)
    expected = read_manifest(directory, 2)["shards"][SHARD]["checksum"]
    flip_byte(path, 20)
    found = "xxh3_64:" + xxhash.xxh3_64_hexdigest(path.read_bytes())

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    message = str(raised.value)
    assert str(path) in message
    assert expected in message
    assert found in message


def test_decoded_bytes_verified(tmp_path):
    # The shard checksum is made to match the tampered bytes, so only the per-array checksum of
    # the decoded bytes can catch the change.
    directory = tmp_path / "ckpt"
    checkpointer = Checkpointer(directory, CheckpointOptions.from_name("sync_raw"))
    checkpointer.save(state_for(1), step=1)
    path = shard_path(directory, 1)
    flip_byte(path, 3)
    manifest = read_manifest(directory, 1)
    manifest["shards"][SHARD]["checksum"] = "xxh3_64:" + xxhash.xxh3_64_hexdigest(path.read_bytes())
    for entry in manifest["arrays"].values():
        for piece in entry["pieces"]:
            stored = path.read_bytes()[piece["offset"] : piece["offset"] + piece["length"]]
            piece["checksum"] = "xxh3_64:" + xxhash.xxh3_64_hexdigest(stored)
    write_manifest(directory, 1, manifest)

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=1)

    assert "decoded to wrong bytes" in str(raised.value)


def test_garbled_manifest_named(saved):
    checkpointer, directory = saved
    manifest_path(directory, 2).write_bytes(b'{"format": "flashbench-checkpoint", "arr')

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert str(manifest_path(directory, 2)) in str(raised.value)


def test_garbled_manifest_falls_back(saved):
    checkpointer, directory = saved
    manifest_path(directory, 2).write_bytes(b"\xff\xfe not json")

    restored = checkpointer.restore()

    assert_step_1(restored)
    assert restored.record.skipped_steps == (2,)


def test_empty_manifest_falls_back(saved):
    checkpointer, directory = saved
    manifest_path(directory, 2).write_bytes(b"")

    assert_step_1(checkpointer.restore())


@pytest.mark.parametrize(
    "changes",
    [{"arrays": []}, {"arrays": {}, "shards": []}],
    ids=["arrays_list", "shards_list"],
)
def test_manifest_wrong_shape_falls_back(saved, changes):
    checkpointer, directory = saved
    manifest = read_manifest(directory, 2)
    manifest.update(changes)
    write_manifest(directory, 2, manifest)

    assert_step_1(checkpointer.restore())


def test_manifest_other_step(saved):
    checkpointer, directory = saved
    manifest_path(directory, 2).write_bytes(manifest_path(directory, 1).read_bytes())

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert "records step 1" in str(raised.value)
    assert_step_1(checkpointer.restore())


def test_truncated_shard_named(saved):
    checkpointer, directory = saved
    path = shard_path(directory, 2)
    length = path.stat().st_size
    path.write_bytes(path.read_bytes()[: length // 2])

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    message = str(raised.value)
    assert str(path) in message
    assert f"has {length // 2} bytes" in message
    assert f"expects {length}" in message
    assert_step_1(checkpointer.restore())


def test_missing_shard_named(saved):
    checkpointer, directory = saved
    path = shard_path(directory, 2)
    path.unlink()

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert str(path) in str(raised.value)
    assert "missing" in str(raised.value)
    assert_step_1(checkpointer.restore())


def test_unknown_codec_named(saved):
    checkpointer, directory = saved
    manifest = read_manifest(directory, 2)
    manifest["codec"] = {"name": "lz4"}
    write_manifest(directory, 2, manifest)

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert "'lz4'" in str(raised.value)
    assert_step_1(checkpointer.restore())


def test_unknown_dtype_named(saved):
    checkpointer, directory = saved
    manifest = read_manifest(directory, 2)
    manifest["arrays"]["w"]["dtype"] = "float7"
    write_manifest(directory, 2, manifest)

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert "'float7'" in str(raised.value)


def test_wrong_shape_in_manifest(saved):
    checkpointer, directory = saved
    manifest = read_manifest(directory, 2)
    manifest["arrays"]["w"]["shape"] = [33, 32]
    write_manifest(directory, 2, manifest)

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert "[33, 32]" in str(raised.value)


def test_newer_format_version(saved):
    checkpointer, directory = saved
    manifest = read_manifest(directory, 2)
    manifest["version"] = 99
    write_manifest(directory, 2, manifest)

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore(step=2)

    assert "version 99" in str(raised.value)


def test_all_steps_corrupt(saved):
    checkpointer, directory = saved
    flip_byte(shard_path(directory, 1), 5)
    manifest_path(directory, 2).write_bytes(b"garbage")

    with pytest.raises(CorruptCheckpointError) as raised:
        checkpointer.restore()

    message = str(raised.value)
    assert "every committed step" in message
    assert str(directory) in message
    assert "(2, 1)" in message
