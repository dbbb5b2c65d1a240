"""Byte-grouping and delta codecs: smaller files, bit-exact restores, delta chains under corruption, failures and retention."""

import errno
import json
import time

import numpy as np
import pytest

from strategies import BackgroundSaveError, Checkpointer, CheckpointOptions, CorruptCheckpointError, StorageError
from strategies.storage import LocalStorage

SHARD = "shard_00000.bin"
STEPS = range(1, 7)
FULL_STEPS = [1, 4]  # with delta_full_every=3, saves 1 and 4 of 1..6 are full
DELTA_BASES = {2: 1, 3: 2, 5: 4, 6: 5}


def smooth_float32(count: int) -> np.ndarray:
    """Return a slowly varying float32 signal, like trained weights sorted along one axis."""
    return (1.0 + 0.01 * np.sin(np.linspace(0.0, 20.0, count))).astype(np.float32)


def training_states() -> dict[int, dict]:
    """Return the state of each step in STEPS. Each step adds small noise to 10% of the weights."""
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((256, 256)).astype(np.float32)
    bias = rng.standard_normal(256).astype(np.float32)
    states = {}
    for step in STEPS:
        changed = rng.choice(weights.size, weights.size // 10, replace=False)
        weights.reshape(-1)[changed] += (1e-3 * rng.standard_normal(changed.size)).astype(np.float32)
        bias[: bias.size // 10] -= np.float32(1e-4)
        states[step] = {
            "model": {"w": weights.copy(), "b": bias.copy()},
            "count": np.array([step], dtype=np.int64),
        }
    return states


STATES = training_states()


def leaf_bytes(state) -> dict[str, bytes]:
    return {
        "model/w": state["model"]["w"].tobytes(),
        "model/b": state["model"]["b"].tobytes(),
        "count": state["count"].tobytes(),
    }


def step_path(directory, step: int):
    return directory / f"step_{step:08d}"


def read_manifest(directory, step: int) -> dict:
    return json.loads((step_path(directory, step) / "manifest.json").read_text())


def shard_size(directory, step: int) -> int:
    return (step_path(directory, step) / SHARD).stat().st_size


def flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def delta_options(writer: str = "sync", **settings) -> CheckpointOptions:
    return CheckpointOptions.from_name(f"{writer}_delta_zstd", delta_full_every=3, **settings)


@pytest.fixture
def delta_run(tmp_path):
    """Return the directory of steps 1..6 saved with delta_zstd and delta_full_every=3."""
    directory = tmp_path / "ckpt"
    with Checkpointer(directory, delta_options()) as checkpointer:
        for step in STEPS:
            checkpointer.save(STATES[step], step=step)
    return directory


class FailingStorage(LocalStorage):
    """Local storage that raises EIO while writing ``failing_step``, on its shard or on its manifest."""

    def __init__(self, root, failing_step: int, where: str) -> None:
        super().__init__(root)
        self.prefix = f"step_{failing_step:08d}/"
        self.where = where

    def write_file(self, path, chunks):
        if self.where == "shard" and path.startswith(self.prefix) and path.endswith(".bin"):
            raise OSError(errno.EIO, "Input/output error (injected)", path)
        return super().write_file(path, chunks)

    def commit(self, directory, manifest):
        if self.where == "manifest" and f"{directory}/".startswith(self.prefix):
            raise OSError(errno.EIO, "Input/output error (injected)", directory)
        super().commit(directory, manifest)


class SlowStorage(LocalStorage):
    """Local storage that sleeps before every file write, so async saves overlap."""

    def write_file(self, path, chunks):
        time.sleep(0.05)
        return super().write_file(path, chunks)


# Byte grouping


def test_bytegroup_smaller_than_zstd(tmp_path):
    state = {"w": smooth_float32(1 << 18)}
    sizes = {}
    for codec in ("zstd", "bytegroup_zstd"):
        with Checkpointer(tmp_path / codec, CheckpointOptions.from_name(f"sync_{codec}")) as checkpointer:
            sizes[codec] = checkpointer.save(state, step=1).wait().bytes_stored

    assert sizes["bytegroup_zstd"] < 0.8 * sizes["zstd"]
    assert sizes["bytegroup_zstd"] == shard_size(tmp_path / "bytegroup_zstd", 1)


@pytest.mark.parametrize("strategy", ["sync_bytegroup_zstd", "async_bytegroup_zstd", "sync_bytegroup_zstd_parallel"])
def test_bytegroup_bit_exact(tmp_path, strategy):
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], dtype=np.float32)
    nan_payload = np.array([0x7FC00001, 0xFFFFFFFF], dtype=np.uint32).view(np.float32)
    state = {
        "smooth": smooth_float32(10_001),
        "special": np.concatenate([special, nan_payload]),
        "half": smooth_float32(333).astype(np.float16),
        "double": np.linspace(-1.0, 1.0, 77),
        "bytes": np.arange(13, dtype=np.uint8),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }

    with Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name(strategy)) as checkpointer:
        checkpointer.save(state, step=1)
    restored = Checkpointer(tmp_path / "ckpt").restore(step=1)

    for name, array in state.items():
        assert restored.state[name].dtype == array.dtype, name
        assert restored.state[name].shape == array.shape, name
        assert restored.state[name].tobytes() == array.tobytes(), name


# Delta chains


def test_delta_every_step_restores(delta_run):
    checkpointer = Checkpointer(delta_run)

    for step in STEPS:
        restored = checkpointer.restore(step=step)
        assert leaf_bytes(restored.state) == leaf_bytes(STATES[step]), f"step {step}"


def test_delta_full_steps_no_base(delta_run):
    for step in FULL_STEPS:
        assert read_manifest(delta_run, step)["base_step"] is None, f"step {step}"


def test_delta_base_is_previous(delta_run):
    for step, base in DELTA_BASES.items():
        assert read_manifest(delta_run, step)["base_step"] == base, f"step {step}"


def test_delta_smaller_than_full(delta_run):
    full_sizes = [shard_size(delta_run, step) for step in FULL_STEPS]
    delta_sizes = [shard_size(delta_run, step) for step in DELTA_BASES]

    assert max(delta_sizes) < 0.5 * min(full_sizes)


def test_corrupt_base_names_base(delta_run):
    flip_byte(step_path(delta_run, 2) / SHARD)

    with pytest.raises(CorruptCheckpointError) as raised:
        Checkpointer(delta_run).restore(step=3)

    message = str(raised.value)
    assert "delta step 3" in message
    assert "base" in message
    assert f"step_00000002/{SHARD}" in message
    assert "checksum" in message


def test_corrupt_base_latest_unaffected(delta_run):
    flip_byte(step_path(delta_run, 2) / SHARD)

    restored = Checkpointer(delta_run).restore()

    assert restored.step == 6
    assert leaf_bytes(restored.state) == leaf_bytes(STATES[6])
    assert restored.record.skipped_steps == ()


def test_corrupt_full_step_falls_back(delta_run, caplog):
    # Steps 5 and 6 are deltas on step 4, so a corrupt step 4 takes all three with it.
    flip_byte(step_path(delta_run, 4) / SHARD)

    with caplog.at_level("WARNING", logger="strategies"):
        restored = Checkpointer(delta_run).restore()

    assert restored.step == 3
    assert leaf_bytes(restored.state) == leaf_bytes(STATES[3])
    assert restored.record.skipped_steps == (6, 5, 4)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    warnings = [message for message in warnings if "failed verification" in message]
    assert len(warnings) == 3
    assert "step 6" in warnings[0]
    assert "base" in warnings[0]
    assert "step_00000004" in warnings[0]


@pytest.mark.parametrize("writer", ["sync", "async"])
@pytest.mark.parametrize("where", ["shard", "manifest"])
def test_failed_delta_then_next(tmp_path, writer, where):
    directory = tmp_path / "ckpt"
    checkpointer = Checkpointer(FailingStorage(directory, failing_step=2, where=where), delta_options(writer))
    checkpointer.save(STATES[1], step=1).wait()

    if writer == "sync":
        with pytest.raises(StorageError):
            checkpointer.save(STATES[2], step=2)
    else:
        with pytest.raises(BackgroundSaveError):
            checkpointer.save(STATES[2], step=2).wait()
        with pytest.raises(BackgroundSaveError):
            checkpointer.wait()  # the checkpointer raises the same failure, once
    for step in (3, 4, 5):
        checkpointer.save(STATES[step], step=step)
    checkpointer.close()

    assert checkpointer.steps() == [1, 3, 4, 5]
    assert read_manifest(directory, 3)["base_step"] == 1
    assert read_manifest(directory, 5)["base_step"] == 4
    reader = Checkpointer(directory)
    for step in (1, 3, 4, 5):
        assert leaf_bytes(reader.restore(step=step).state) == leaf_bytes(STATES[step]), f"step {step}"


# Retention with delta chains


def test_keep_last_keeps_chain(tmp_path):
    directory = tmp_path / "ckpt"
    with Checkpointer(directory, delta_options(keep_last=1)) as checkpointer:
        for step in STEPS:
            checkpointer.save(STATES[step], step=step)

    reader = Checkpointer(directory)
    assert reader.steps() == [4, 5, 6]
    assert sorted(path.name for path in directory.glob("step_*")) == [f"step_{step:08d}" for step in (4, 5, 6)]
    for step in reader.steps():
        assert leaf_bytes(reader.restore(step=step).state) == leaf_bytes(STATES[step]), f"step {step}"


def test_async_keep_last_delta(tmp_path):
    # With two saves in flight, save k+1 is snapshotted while save k persists, and save k's
    # retention removes step k-1: save k+1 must not be encoded against step k-1.
    directory = tmp_path / "ckpt"
    checkpointer = Checkpointer(SlowStorage(directory), delta_options("async", keep_last=1, max_in_flight=2))

    for step in STEPS:
        checkpointer.save(STATES[step], step=step)
    checkpointer.close()

    reader = Checkpointer(directory)
    assert reader.steps() == [4, 5, 6]
    for step in reader.steps():
        assert leaf_bytes(reader.restore(step=step).state) == leaf_bytes(STATES[step]), f"step {step}"
