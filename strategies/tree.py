"""Flattening of nested training state into named host arrays, and back.

State is a nested structure of dicts (string keys), lists and tuples whose leaves are
NumPy or MLX arrays. Each leaf gets a name made of its path (``model/layers/0/w``) and
the structure itself is stored as JSON, so a restore rebuilds the same containers.
MLX is imported only when an MLX array is met or requested.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from strategies.errors import ConfigError, CorruptCheckpointError

_LIST, _TUPLE, _ARRAY = "__list__", "__tuple__", "__array__"

# NumPy has no bfloat16, so its bits travel as uint16 and the manifest keeps the name.
_BITS_DTYPES = {"bfloat16": np.uint16}


@dataclasses.dataclass
class HostArray:
    """One leaf of the state as contiguous host memory."""

    name: str
    dtype: str  # dtype name as stored in the manifest (bfloat16 included)
    shape: tuple[int, ...]
    kind: str  # "mlx" or "numpy": the array type the restore gives back by default
    data: np.ndarray | None  # C-contiguous; bfloat16 viewed as uint16; None once released
    nbytes: int = dataclasses.field(init=False)
    itemsize: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = int(self.data.nbytes)
        self.itemsize = int(self.data.dtype.itemsize)

    def buffer(self) -> memoryview:
        if self.data is None:
            raise RuntimeError(f"array {self.name!r} was released after its snapshot; read the staged pieces")
        return memoryview(self.data.reshape(-1).view(np.uint8))

    def release(self) -> None:
        """Drop the reference to the live data; the description (name, dtype, shape, size) stays."""
        self.data = None


def flatten(state, *, copy: bool) -> tuple[object, list[HostArray]]:
    """Split ``state`` into a JSON structure and its leaves as host arrays.

    With ``copy`` every leaf is copied, so later updates of the live arrays cannot
    change what is saved. Without it, leaves may share memory with the caller.
    """
    leaves: list[HostArray] = []
    structure = _flatten(state, (), leaves, copy)
    names = [leaf.name for leaf in leaves]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"state paths {duplicates} name more than one array: rename the keys so every path is unique")
    return structure, leaves


def _flatten(node, path: tuple[str, ...], leaves: list[HostArray], copy: bool):
    if isinstance(node, dict):
        return _flatten_dict(node, path, leaves, copy)
    if isinstance(node, (list, tuple)):
        items = [_flatten(item, path + (str(i),), leaves, copy) for i, item in enumerate(node)]
        return {_LIST if isinstance(node, list) else _TUPLE: items}
    name = "/".join(path)
    leaves.append(to_host(node, name, copy=copy))
    return {_ARRAY: name}


def _flatten_dict(node: dict, path, leaves, copy):
    out = {}
    for key, value in node.items():
        if not isinstance(key, str) or "/" in key:
            where = "/".join(path) or "the top level"
            raise ConfigError(f"invalid state key {key!r} at {where}: keys must be strings without '/'")
        out[key] = _flatten(value, path + (key,), leaves, copy)
    if len(out) == 1 and next(iter(out)) in (_LIST, _TUPLE, _ARRAY):
        raise ConfigError(f"invalid state key {next(iter(out))!r}: this name is reserved; rename the key")
    return out


def to_host(value, name: str, *, copy: bool) -> HostArray:
    """Convert one NumPy or MLX array into a ``HostArray``."""
    if isinstance(value, np.ndarray):
        return _numpy_to_host(value, name, copy)
    if _is_mlx_array(value):
        return _mlx_to_host(value, name, copy)
    raise ConfigError(
        f"state leaf {name!r} is a {type(value).__name__}: leaves must be NumPy or MLX arrays; "
        "put scalars and strings into metadata instead"
    )


def _numpy_to_host(value: np.ndarray, name: str, copy: bool) -> HostArray:
    if value.dtype.kind in "OUSV":
        raise ConfigError(
            f"state leaf {name!r} has dtype {value.dtype}: object, text, bytes and structured arrays cannot be saved; "
            "store numbers, or put text into metadata"
        )
    data = value.astype(value.dtype.newbyteorder("="), copy=False)
    data = np.array(data, order="C", copy=True) if copy else np.ascontiguousarray(data)
    return HostArray(name, data.dtype.name, tuple(value.shape), "numpy", data)


def _is_mlx_array(value) -> bool:
    mx = sys.modules.get("mlx.core")
    return mx is not None and isinstance(value, mx.array)


def _mlx_to_host(value, name: str, copy: bool) -> HostArray:
    import mlx.core as mx

    dtype = str(value.dtype).rsplit(".", 1)[-1]
    if dtype == "bfloat16":
        value = value.view(mx.uint16)
    # np.array copies from the MLX buffer; np.asarray may share it.
    data = np.array(value, copy=True) if copy else np.asarray(value)
    data = np.ascontiguousarray(data)
    return HostArray(name, dtype, tuple(value.shape), "mlx", data)


def from_bytes(buffer, dtype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Build a host array from stored bytes, validating the size."""
    np_dtype = _numpy_dtype(dtype, name)
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(buffer) != expected:
        raise CorruptCheckpointError(
            f"array {name!r}: {len(buffer)} bytes do not fit shape {list(shape)} of {dtype} "
            f"({expected} bytes expected)"
        )
    return np.frombuffer(buffer, dtype=np_dtype).reshape(shape)


def _numpy_dtype(dtype: str, name: str) -> np.dtype:
    if not isinstance(dtype, str):
        raise CorruptCheckpointError(f"array {name!r} has invalid dtype {dtype!r} in the manifest: expected a dtype name")
    if dtype in _BITS_DTYPES:
        return np.dtype(_BITS_DTYPES[dtype])
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        raise CorruptCheckpointError(f"array {name!r} has unknown dtype {dtype!r} in the manifest") from None
    if np_dtype.kind in "OUSV":  # the kinds _numpy_to_host never saves
        raise CorruptCheckpointError(
            f"array {name!r} has dtype {dtype!r} in the manifest, which checkpoints never contain (object, text, bytes or structured)"
        )
    return np_dtype


def to_target(array: np.ndarray, dtype: str, kind: str, target: str, name: str):
    """Return ``array`` as the type requested: ``auto`` (as saved), ``numpy`` or ``mlx``."""
    requested = kind if target == "auto" else target
    if requested == "numpy":
        if dtype in _BITS_DTYPES:
            raise ConfigError(f"array {name!r} is {dtype}, which NumPy cannot hold: restore with target='mlx'")
        # A writable view (of a buffer read for this restore) is returned as it is; a
        # read-only one (decompressed bytes, another caller's buffer) is copied.
        return array if array.flags.writeable else np.array(array)
    import mlx.core as mx

    if dtype == "bfloat16":
        return mx.array(array).view(mx.bfloat16)
    mlx_dtype = getattr(mx, "bool_" if dtype == "bool" else dtype, None)
    if not isinstance(mlx_dtype, mx.Dtype):
        raise ConfigError(f"array {name!r} has dtype {dtype}, which MLX cannot hold: restore with target='numpy'")
    # mx.array would turn float64 into float32 without the explicit dtype.
    return mx.array(array, dtype=mlx_dtype)


def unflatten(structure, arrays: dict[str, object]):
    """Rebuild the nested state from its JSON structure and arrays by name."""
    if isinstance(structure, dict) and len(structure) == 1:
        (key, value), = structure.items()
        if key == _ARRAY:
            if not isinstance(value, str) or value not in arrays:
                raise CorruptCheckpointError(f"manifest tree names array {value!r}, which its arrays do not list")
            return arrays[value]
        if key == _LIST:
            return [unflatten(item, arrays) for item in value]
        if key == _TUPLE:
            return tuple(unflatten(item, arrays) for item in value)
    if isinstance(structure, dict):
        return {key: unflatten(value, arrays) for key, value in structure.items()}
    raise CorruptCheckpointError(f"manifest tree has an invalid node {structure!r}")


def itemsize_of(dtype: str, name: str) -> int:
    """Return the bytes per element of a manifest dtype name."""
    return _numpy_dtype(dtype, name).itemsize
