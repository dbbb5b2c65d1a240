"""Several ranks in one process, one thread each: parallel and coordinator layouts on one directory."""

import errno
import json
import threading
import time

import numpy as np
import pytest

from strategies import CheckpointError, Checkpointer, CheckpointOptions, ConfigError, StorageError
from strategies.storage import LocalStorage

WORLD_SIZE = 4
JOIN_TIMEOUT_S = 30.0


class ThreadBroadcast:
    """A collective over threads that returns rank 0's value on every rank, like the broadcast of ``mlx_distributed``."""

    def __init__(self, parties: int) -> None:
        self._barrier = threading.Barrier(parties, timeout=JOIN_TIMEOUT_S)
        self._value = None

    def for_rank(self, rank: int):
        def broadcast(value: int) -> int:
            if rank == 0:
                self._value = value
            self._barrier.wait()
            result = self._value
            self._barrier.wait()  # rank 0 may not overwrite the slot until every rank has read it
            return result

        return broadcast


def make_ranks(directory, options: CheckpointOptions, world_size: int, storages=None) -> list[Checkpointer]:
    """Return one Checkpointer per rank, on ``directory`` or on ``storages[rank]`` when given."""
    collective = ThreadBroadcast(world_size)
    return [
        Checkpointer(
            directory if storages is None else storages[rank], options,
            rank=rank, world_size=world_size, broadcast=collective.for_rank(rank),
        )
        for rank in range(world_size)
    ]


def run_ranks(function, ranks) -> tuple[dict, dict]:
    """Call ``function(checkpointer)`` for every rank, each on its own thread. Return (results, errors) by rank."""
    results, errors = {}, {}

    def run(checkpointer):
        try:
            results[checkpointer.rank] = function(checkpointer)
        except BaseException as error:  # reported to the test thread
            errors[checkpointer.rank] = error

    threads = [threading.Thread(target=run, args=(checkpointer,), name=f"rank-{checkpointer.rank}") for checkpointer in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a rank thread is still running"
    return results, errors


def save_on_ranks(directory, options, state, steps=(1,), world_size: int = WORLD_SIZE) -> None:
    def save_steps(checkpointer):
        for step in steps:
            checkpointer.save(state if not callable(state) else state(step), step=step)
        checkpointer.close()

    _, errors = run_ranks(save_steps, make_ranks(directory, options, world_size))
    assert errors == {}


def training_state(seed: int = 0) -> dict:
    """Return one large array and several small ones of mixed item sizes."""
    rng = np.random.default_rng(seed)
    return {
        "embedding": rng.standard_normal((1000, 257)).astype(np.float32),
        "norm": rng.standard_normal(7),
        "steps": np.arange(33, dtype=np.int16),
        "head": {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": np.arange(11, dtype=np.uint8)},
        "empty": np.zeros((0,), dtype=np.float64),
    }


def leaf_bytes(state) -> dict[str, bytes]:
    return {
        "embedding": state["embedding"].tobytes(),
        "norm": state["norm"].tobytes(),
        "steps": state["steps"].tobytes(),
        "head/w": state["head"]["w"].tobytes(),
        "head/b": state["head"]["b"].tobytes(),
        "empty": state["empty"].tobytes(),
    }


def leaf_arrays(state) -> list[np.ndarray]:
    return [state["embedding"], state["norm"], state["steps"], state["head"]["w"], state["head"]["b"], state["empty"]]


def step_path(directory, step: int = 1):
    return directory / f"step_{step:08d}"


def read_manifest(directory, step: int = 1) -> dict:
    return json.loads((step_path(directory, step) / "manifest.json").read_text())


def shard_files(directory, step: int = 1) -> list[str]:
    return sorted(path.name for path in step_path(directory, step).iterdir() if path.name.startswith("shard_"))


@pytest.fixture
def saved(tmp_path):
    """Return the directory of step 1 of training_state saved on WORLD_SIZE ranks with sync_raw_parallel."""
    directory = tmp_path / "ckpt"
    save_on_ranks(directory, CheckpointOptions.from_name("sync_raw_parallel"), training_state())
    return directory


def test_one_shard_per_rank(saved):
    assert shard_files(saved) == [f"shard_{rank:05d}.bin" for rank in range(WORLD_SIZE)]


def test_one_manifest(saved):
    manifests = [path.name for path in step_path(saved).iterdir() if path.name.startswith("manifest")]

    assert manifests == ["manifest.json"]
    assert read_manifest(saved)["world_size"] == WORLD_SIZE
    assert sorted(read_manifest(saved)["shards"]) == shard_files(saved)


def test_shards_balanced_by_bytes(saved):
    arrays = leaf_arrays(training_state())
    sizes = [(step_path(saved) / name).stat().st_size for name in shard_files(saved)]
    # Cuts fall on element boundaries, so a share may be off by up to one element per array.
    tolerance = sum(array.dtype.itemsize for array in arrays) + WORLD_SIZE

    assert sum(sizes) == sum(array.nbytes for array in arrays)
    assert max(sizes) - min(sizes) <= tolerance


def test_large_array_split(saved):
    pieces = read_manifest(saved)["arrays"]["embedding"]["pieces"]

    assert sorted({piece["shard"] for piece in pieces}) == shard_files(saved)


@pytest.mark.parametrize("readers", [1, 2, WORLD_SIZE])
def test_restore_on_fewer_ranks(saved, readers):
    options = CheckpointOptions.from_name("sync_raw_parallel")
    results, errors = run_ranks(lambda checkpointer: checkpointer.restore(), make_ranks(saved, options, readers))

    assert errors == {}
    for rank, restored in results.items():
        assert restored.step == 1, f"rank {rank}"
        assert leaf_bytes(restored.state) == leaf_bytes(training_state()), f"rank {rank}"


def test_zstd_parallel_restores_single(tmp_path):
    directory = tmp_path / "ckpt"
    save_on_ranks(directory, CheckpointOptions.from_name("sync_zstd_parallel"), training_state())

    restored = Checkpointer(directory).restore()

    assert shard_files(directory) == [f"shard_{rank:05d}.bin" for rank in range(WORLD_SIZE)]
    assert leaf_bytes(restored.state) == leaf_bytes(training_state())


def test_missing_rank_times_out(tmp_path):
    # Rank 2 never calls save(), as if its process had died before the save.
    directory = tmp_path / "ckpt"
    options = CheckpointOptions(layout="parallel", commit_timeout_s=0.5)
    collective = ThreadBroadcast(2)
    ranks = [
        Checkpointer(directory, options, rank=rank, world_size=3, broadcast=collective.for_rank(rank)) for rank in (0, 1)
    ]

    _, errors = run_ranks(lambda checkpointer: checkpointer.save(training_state(), step=1), ranks)

    assert sorted(errors) == [0]
    assert isinstance(errors[0], CheckpointError)
    assert "ranks [2]" in str(errors[0])
    assert "commit_timeout_s" in str(errors[0])
    assert Checkpointer(directory).steps() == []


def test_timeout_message_seconds(tmp_path):
    options = CheckpointOptions(layout="parallel", commit_timeout_s=0.5)
    checkpointer = Checkpointer(tmp_path / "ckpt", options, rank=0, world_size=2, broadcast=lambda value: value)

    with pytest.raises(CheckpointError) as raised:
        checkpointer.save(training_state(), step=1)

    assert "0.5 s" in str(raised.value)


class SlowStorage(LocalStorage):
    """Local storage that sleeps before every file write."""

    def write_file(self, path, chunks):
        time.sleep(0.3)
        return super().write_file(path, chunks)


class IndexRecordingStorage(LocalStorage):
    """Local storage that records the nonce of every rank index it reads."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.nonces_read: list[int] = []

    def read_file(self, path):
        data = super().read_file(path)
        if "/rank_" in path:
            self.nonces_read.append(json.loads(data)["nonce"])
        return data


def test_stale_index_ignored(tmp_path):
    # A crashed earlier attempt of step 1 left rank 1's index and shard of another state and nonce.
    scratch, directory = tmp_path / "crashed", tmp_path / "ckpt"
    options = CheckpointOptions.from_name("sync_raw_parallel")
    save_on_ranks(scratch, options, training_state(seed=99), world_size=2)
    step_path(directory).mkdir(parents=True)
    for name in ("rank_00001.json", "shard_00001.bin"):
        (step_path(directory) / name).write_bytes((step_path(scratch) / name).read_bytes())
    stale_nonce = json.loads((step_path(directory) / "rank_00001.json").read_text())["nonce"]
    rank_0_storage = IndexRecordingStorage(directory)
    collective = ThreadBroadcast(2)
    ranks = [
        Checkpointer(storage, options, rank=rank, world_size=2, broadcast=collective.for_rank(rank))
        for rank, storage in enumerate([rank_0_storage, SlowStorage(directory)])  # rank 1 writes late
    ]

    _, errors = run_ranks(lambda checkpointer: checkpointer.save(training_state(), step=1), ranks)

    assert errors == {}
    assert rank_0_storage.nonces_read[0] == stale_nonce
    assert rank_0_storage.nonces_read[-1] != stale_nonce
    restored = Checkpointer(directory).restore()
    assert leaf_bytes(restored.state) == leaf_bytes(training_state())


def test_parallel_needs_broadcast(tmp_path):
    with pytest.raises(ConfigError) as raised:
        Checkpointer(tmp_path / "ckpt", CheckpointOptions(layout="parallel"), rank=1, world_size=2)

    assert "broadcast" in str(raised.value)


def test_rank_without_pieces(tmp_path):
    directory = tmp_path / "ckpt"
    state = {"w": np.array([1.5, -2.5])}
    options = CheckpointOptions.from_name("sync_raw_parallel", commit_timeout_s=2.0)

    _, errors = run_ranks(lambda checkpointer: checkpointer.save(state, step=1), make_ranks(directory, options, 4))

    assert errors == {}
    assert Checkpointer(directory).restore().state["w"].tobytes() == state["w"].tobytes()


def test_coordinator_rank_0_writes(tmp_path):
    directory = tmp_path / "ckpt"
    options = CheckpointOptions.from_name("sync_zstd")
    ranks = [Checkpointer(directory, options, rank=rank, world_size=WORLD_SIZE) for rank in range(WORLD_SIZE)]

    # The other ranks save first: a rank that comes after rank 0's commit is another case, tested below.
    records = {checkpointer.rank: checkpointer.save(training_state(), step=1).wait() for checkpointer in reversed(ranks)}

    assert shard_files(directory) == ["shard_00000.bin"]
    assert [record.bytes_stored for rank, record in sorted(records.items()) if rank != 0] == [0] * (WORLD_SIZE - 1)
    assert leaf_bytes(Checkpointer(directory).restore().state) == leaf_bytes(training_state())


def test_coordinator_late_rank(tmp_path):
    directory = tmp_path / "ckpt"
    options = CheckpointOptions.from_name("sync_raw")
    rank_0, rank_1 = (Checkpointer(directory, options, rank=rank, world_size=2) for rank in (0, 1))

    rank_0.save(training_state(), step=1)
    record = rank_1.save(training_state(), step=1).wait()

    assert record.bytes_stored == 0
    assert Checkpointer(directory).steps() == [1]
    assert shard_files(directory) == ["shard_00000.bin"]


def test_async_parallel_five_steps(tmp_path):
    directory = tmp_path / "ckpt"
    options = CheckpointOptions.from_name("async_zstd_parallel")

    save_on_ranks(directory, options, training_state, steps=range(1, 6), world_size=2)

    reader = Checkpointer(directory)
    assert reader.steps() == [1, 2, 3, 4, 5]
    for step in reader.steps():
        assert shard_files(directory, step) == ["shard_00000.bin", "shard_00001.bin"], f"step {step}"
        assert leaf_bytes(reader.restore(step=step).state) == leaf_bytes(training_state(step)), f"step {step}"


# Delta codec on several ranks


def drifting_state(step: int) -> dict:
    """Return training_state() with a few rows and one small array changed by ``step``."""
    state = training_state()
    state["embedding"][: 10 * step] += np.float32(step)
    state["steps"] += step
    return state


class FailingStorage(LocalStorage):
    """Local storage that raises EIO on the shard write of ``failing_step``."""

    def __init__(self, root, failing_step: int) -> None:
        super().__init__(root)
        self.prefix = f"step_{failing_step:08d}/shard_"

    def write_file(self, path, chunks):
        if path.startswith(self.prefix):
            raise OSError(errno.EIO, "Input/output error (injected)", path)
        return super().write_file(path, chunks)


def save_steps_on_ranks(ranks, steps) -> dict[int, dict[int, BaseException]]:
    """Save drifting_state(step) for each step on every rank, continuing after a failed save. Return the errors by rank and step."""

    def save_steps(checkpointer):
        errors = {}
        for step in steps:
            try:
                checkpointer.save(drifting_state(step), step=step).wait()
            except CheckpointError as error:
                errors[step] = error
        checkpointer.close()
        return errors

    results, errors = run_ranks(save_steps, ranks)
    assert errors == {}
    return results


def assert_steps_restore(directory) -> None:
    reader = Checkpointer(directory)
    for step in reader.steps():
        assert leaf_bytes(reader.restore(step=step).state) == leaf_bytes(drifting_state(step)), f"step {step}"


@pytest.mark.parametrize("writer", ["sync", "async"])
def test_delta_parallel_chain(tmp_path, writer):
    directory = tmp_path / "ckpt"
    options = CheckpointOptions.from_name(f"{writer}_delta_zstd_parallel", delta_full_every=3)

    errors = save_steps_on_ranks(make_ranks(directory, options, 2), range(1, 7))

    assert errors == {0: {}, 1: {}}
    assert Checkpointer(directory).steps() == [1, 2, 3, 4, 5, 6]
    bases = {step: read_manifest(directory, step)["base_step"] for step in range(1, 7)}
    assert bases == {1: None, 2: 1, 3: 2, 4: None, 5: 4, 6: 5}
    assert shard_files(directory, 6) == ["shard_00000.bin", "shard_00001.bin"]
    assert_steps_restore(directory)


def test_delta_rank_1_fails(tmp_path):
    directory = tmp_path / "ckpt"
    options = CheckpointOptions.from_name("sync_delta_zstd_parallel", delta_full_every=3, commit_timeout_s=0.5)
    storages = [LocalStorage(directory), FailingStorage(directory, failing_step=2)]

    errors = save_steps_on_ranks(make_ranks(directory, options, 2, storages), range(1, 6))

    assert sorted(errors[0]) == [2]
    assert "ranks [1]" in str(errors[0][2])
    assert sorted(errors[1]) == [2]
    assert isinstance(errors[1][2], StorageError)
    assert Checkpointer(directory).steps() == [1, 3, 4, 5]
    assert read_manifest(directory, 3)["base_step"] == 1
    assert_steps_restore(directory)


def test_delta_rank_0_fails(tmp_path):
    # Rank 1 wrote step 2 and encodes step 3 against it, but rank 0 never committed step 2:
    # rank 0 must not commit step 3 on mixed bases. The next full save, step 4, repairs the chain.
    directory = tmp_path / "ckpt"
    options = CheckpointOptions.from_name("sync_delta_zstd_parallel", delta_full_every=3)
    storages = [FailingStorage(directory, failing_step=2), LocalStorage(directory)]

    errors = save_steps_on_ranks(make_ranks(directory, options, 2, storages), range(1, 6))

    assert isinstance(errors[0][2], StorageError)
    assert errors[1] == {}
    steps = Checkpointer(directory).steps()
    assert 2 not in steps
    assert steps[-2:] == [4, 5]
    assert_steps_restore(directory)
