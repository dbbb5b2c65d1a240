"""Round trips through every strategy: arrays come back bit for bit, containers and metadata unchanged."""

import mlx.core as mx
import numpy as np
import pytest

from strategies import Checkpointer, CheckpointOptions, ConfigError, strategy_names

CODECS = ["raw", "zstd", "bytegroup_zstd", "delta_zstd"]
STRATEGIES = [f"{writer}_{codec}" for writer in ("sync", "async") for codec in CODECS]

# Unsigned integer type of each item size, for MLX arrays built from random bits.
BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

MLX_DTYPES = [
    "bool_", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "complex64",
]
NUMPY_DTYPES = [
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64", "complex64", "complex128",
]

METADATA = {
    "data_position": {"epoch": 2, "index": 17},
    "rng": [123456789, 0, 42],
    "learning_rate": 3e-4,
    "config_digest": "sha256:ab12",
    "note": "ünïcode",
    "resumed": True,
    "parent": None,
}


def random_numpy(dtype: str, shape, seed: int = 0) -> np.ndarray:
    """Build an array from random bits, so floats can hold NaN payloads and subnormals that == would miss."""
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    itemsize = np.dtype(dtype).itemsize
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(rng.bytes(count * itemsize), dtype=dtype).reshape(shape).copy()


def random_mlx(dtype: str, shape, seed: int = 0) -> mx.array:
    mlx_dtype = getattr(mx, dtype)
    if dtype == "bool_":
        return mx.array(random_numpy("bool", shape, seed))
    if dtype == "complex64":
        return mx.array(random_numpy("complex64", shape, seed))
    bits = random_numpy(np.dtype(BITS[mlx_dtype.size]).name, shape, seed)
    return mx.array(bits).view(mlx_dtype)


def array_bytes(array) -> bytes:
    """Return the raw bytes of a NumPy or MLX array in C order."""
    if isinstance(array, mx.array):
        if array.dtype == mx.bfloat16:
            # NumPy has no bfloat16, so its bits are read as uint16.
            array = array.view(mx.uint16)
        array = np.array(array)
    return np.ascontiguousarray(array).tobytes()


def dtype_name(array) -> str:
    if isinstance(array, mx.array):
        return str(array.dtype).rsplit(".", 1)[-1]
    return array.dtype.name


def save_and_restore(tmp_path, strategy: str, state, metadata=None, **settings):
    with Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name(strategy, **settings)) as checkpointer:
        checkpointer.save(state, step=1, metadata=metadata)
        checkpointer.wait()
        return checkpointer.restore()


def assert_same_array(expected, actual) -> None:
    assert type(actual) is type(expected)
    assert dtype_name(actual) == dtype_name(expected)
    assert tuple(actual.shape) == tuple(expected.shape)
    assert array_bytes(actual) == array_bytes(expected)


def test_strategy_names_listed():
    assert strategy_names() == STRATEGIES


@pytest.mark.parametrize("dtype", MLX_DTYPES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mlx_dtype_round_trip(tmp_path, strategy, dtype):
    array = random_mlx(dtype, (3, 5))

    restored = save_and_restore(tmp_path, strategy, {"w": array})

    assert_same_array(array, restored.state["w"])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mlx_float64_round_trip(tmp_path, strategy):
    array = random_mlx("float64", (3, 5))

    restored = save_and_restore(tmp_path, strategy, {"w": array})

    assert_same_array(array, restored.state["w"])


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_numpy_dtype_round_trip(tmp_path, strategy, dtype):
    array = random_numpy(dtype, (4, 3))

    restored = save_and_restore(tmp_path, strategy, {"w": array})

    assert_same_array(array, restored.state["w"])


def numpy_edge_arrays() -> dict:
    base = random_numpy("float32", (6, 8), seed=1)
    return {
        "scalar": np.array(2.5, dtype=np.float64),
        "scalar_int": np.array(-7, dtype=np.int16),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "empty_1d": np.zeros((0,), dtype=np.int64),
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "reversed": base[::-1],
        "fortran": np.asfortranarray(random_numpy("int32", (5, 4), seed=2)),
    }


def mlx_edge_arrays() -> dict:
    base = random_mlx("float32", (6, 8), seed=3)
    return {
        "scalar": mx.array(1.5),
        "empty": mx.zeros((0, 3)),
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "bf16_transposed": random_mlx("bfloat16", (4, 6), seed=4).T,
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_numpy_edge_shapes_round_trip(tmp_path, strategy):
    state = numpy_edge_arrays()

    restored = save_and_restore(tmp_path, strategy, state)

    assert sorted(restored.state) == sorted(state)
    for name, array in state.items():
        assert_same_array(array, restored.state[name])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mlx_edge_shapes_round_trip(tmp_path, strategy):
    state = mlx_edge_arrays()

    restored = save_and_restore(tmp_path, strategy, state)

    assert sorted(restored.state) == sorted(state)
    for name, array in state.items():
        assert_same_array(array, restored.state[name])


def nested_state() -> dict:
    return {
        "model": {
            "layers": [
                {"w": random_numpy("float32", (3, 2), seed=10), "b": random_mlx("bfloat16", (2,), seed=11)},
                {"w": random_numpy("float32", (3, 2), seed=12), "b": random_mlx("bfloat16", (2,), seed=13)},
            ],
            "embedding": random_mlx("float16", (5, 4), seed=14),
        },
        "optimizer": (
            {"m": random_numpy("float64", (3,), seed=15)},
            [random_numpy("int64", (2, 2), seed=16), (random_mlx("int8", (3,), seed=17),)],
        ),
        "empty_list": [],
        "empty_tuple": (),
        "empty_dict": {},
        "__list__": random_numpy("uint8", (2,), seed=18),  # reserved names are allowed beside other keys
    }


def container_paths(tree, path=()) -> dict:
    """Map the path of every container and leaf to its type name."""
    types = {path: type(tree).__name__}
    if isinstance(tree, dict):
        for key, value in tree.items():
            types.update(container_paths(value, path + (key,)))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            types.update(container_paths(value, path + (index,)))
    return types


def leaves(tree, path=()) -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in leaves(value, path + (key,)).items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for index, value in enumerate(tree) for k, v in leaves(value, path + (index,)).items()}
    return {path: tree}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nested_containers_round_trip(tmp_path, strategy):
    state = nested_state()

    restored = save_and_restore(tmp_path, strategy, state)

    assert container_paths(restored.state) == container_paths(state)
    restored_leaves = leaves(restored.state)
    for path, array in leaves(state).items():
        assert_same_array(array, restored_leaves[path])


def test_dict_key_order_kept(tmp_path):
    state = {"optimizer": np.arange(1), "model": {"b": np.arange(2), "a": np.arange(3)}}

    restored = save_and_restore(tmp_path, "sync_raw", state)

    assert list(restored.state) == ["optimizer", "model"]
    assert list(restored.state["model"]) == ["b", "a"]


@pytest.mark.parametrize("state", [[np.arange(3), np.ones(2)], (np.arange(3),), np.arange(4)], ids=["list", "tuple", "array"])
def test_top_level_container_round_trip(tmp_path, state):
    restored = save_and_restore(tmp_path, "sync_raw", state)

    assert container_paths(restored.state) == container_paths(state)
    restored_leaves = leaves(restored.state)
    for path, array in leaves(state).items():
        assert_same_array(array, restored_leaves[path])


def test_empty_key_beside_root_key(tmp_path):
    state = {"": np.array([1, 1]), "root": np.array([2, 2])}

    restored = save_and_restore(tmp_path, "sync_raw", state)

    assert array_bytes(restored.state[""]) == array_bytes(state[""])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_metadata_round_trip(tmp_path, strategy):
    restored = save_and_restore(tmp_path, strategy, {"w": np.arange(3)}, metadata=METADATA)

    assert restored.metadata == METADATA


def test_metadata_defaults_to_empty(tmp_path):
    restored = save_and_restore(tmp_path, "sync_raw", {"w": np.arange(3)})

    assert restored.metadata == {}


def test_restore_step_and_record(tmp_path):
    state = {"w": random_numpy("float32", (64, 64))}

    restored = save_and_restore(tmp_path, "sync_zstd", state)

    assert restored.step == 1
    assert restored.record.step == 1
    assert restored.record.bytes_state == state["w"].nbytes
    assert restored.record.skipped_steps == ()


def test_zstd_settings_round_trip(tmp_path):
    state = {"w": random_numpy("float32", (256, 64)), "zeros": np.zeros((512, 64), dtype=np.float32)}

    restored = save_and_restore(tmp_path, "async_zstd", state, zstd_level=19, zstd_threads=2)

    for name, array in state.items():
        assert_same_array(array, restored.state[name])


def test_zstd_stores_fewer_bytes(tmp_path):
    state = {"zeros": np.zeros((512, 64), dtype=np.float32)}

    with Checkpointer(tmp_path / "ckpt", CheckpointOptions.from_name("sync_zstd")) as checkpointer:
        record = checkpointer.save(state, step=1).wait()

    assert record.bytes_state == state["zeros"].nbytes
    assert record.bytes_stored < state["zeros"].nbytes // 10


def test_numpy_saved_restored_as_mlx(tmp_path):
    array = random_numpy("int32", (3, 4))

    with Checkpointer(tmp_path / "ckpt") as checkpointer:
        checkpointer.save({"w": array}, step=1)
        restored = checkpointer.restore(target="mlx")

    assert isinstance(restored.state["w"], mx.array)
    assert restored.state["w"].dtype == mx.int32
    assert array_bytes(restored.state["w"]) == array.tobytes()


def test_mlx_saved_restored_as_numpy(tmp_path):
    array = random_mlx("float16", (3, 4))

    with Checkpointer(tmp_path / "ckpt") as checkpointer:
        checkpointer.save({"w": array}, step=1)
        restored = checkpointer.restore(target="numpy")

    assert isinstance(restored.state["w"], np.ndarray)
    assert restored.state["w"].dtype == np.float16
    assert restored.state["w"].tobytes() == array_bytes(array)


def test_bfloat16_to_numpy_rejected(tmp_path):
    with Checkpointer(tmp_path / "ckpt") as checkpointer:
        checkpointer.save({"w": random_mlx("bfloat16", (2,))}, step=1)
        with pytest.raises(ConfigError) as raised:
            checkpointer.restore(target="numpy")

    assert "'w'" in str(raised.value)
    assert "target='mlx'" in str(raised.value)


def test_restored_numpy_is_writable(tmp_path):
    restored = save_and_restore(tmp_path, "sync_raw", {"w": np.arange(4)})

    restored.state["w"][0] = 9

    assert restored.state["w"][0] == 9
