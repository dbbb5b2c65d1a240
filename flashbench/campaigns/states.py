"""Small seeded training-like states, saved on one or two ranks and compared bit for bit.

The library-level campaigns (integrity, storage, bad_inputs) save these states instead
of training a model, so one trial takes milliseconds. Two ranks run as two threads of
this process, each with its own Checkpointer on the same directory, which exercises the
parallel layout's per-rank shards and rank 0's commit without starting processes.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import numpy as np

from strategies import CheckpointOptions, Checkpointer

WRITERS = ("sync", "async")
CODECS = ("raw", "zstd", "bytegroup_zstd", "delta_zstd")
STRATEGIES = tuple(f"{writer}_{codec}" for writer in WRITERS for codec in CODECS)
LAYOUTS = {"coordinator": 1, "parallel": 2}  # layout -> ranks that save


def initial_state(seed: int) -> dict:
    """Return a state of about 25 KB with every element size from 1 to 8 bytes, a 0-d and an empty array."""
    rng = np.random.default_rng(seed)
    layers = [
        {"w": rng.standard_normal((32, 32), dtype=np.float32), "b": rng.standard_normal(32).astype(np.float16)}
        for _ in range(2)
    ]
    return {
        "model": {"embed": rng.standard_normal((64, 32), dtype=np.float32), "layers": layers},
        "optimizer": {
            "m": rng.standard_normal((64, 32), dtype=np.float32) * 1e-3,
            "count": np.array(0, dtype=np.int64),
        },
        "rng": rng.integers(0, 2**32, size=2, dtype=np.uint32),
        "mask": rng.random(16) < 0.5,
        "bytes": rng.integers(0, 256, size=100, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def next_state(state: dict, seed: int) -> dict:
    """Return a copy of ``state`` after one training-like update: small changes to the floats."""
    rng = np.random.default_rng(seed)
    updated = _map_arrays(state, lambda array: _update(array, rng))
    updated["optimizer"]["count"] = np.array(state["optimizer"]["count"] + 1, dtype=np.int64)  # + 1 gives a NumPy scalar
    updated["rng"] = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    return updated


def _update(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if array.dtype.kind != "f" or array.size == 0:
        return array.copy()
    step = rng.standard_normal(array.shape).astype(array.dtype) * array.dtype.type(1e-3)
    return array + step


def _map_arrays(node, function):
    if isinstance(node, dict):
        return {key: _map_arrays(value, function) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_map_arrays(item, function) for item in node)
    return function(node)


def states_for_steps(steps: list[int], seed: int) -> dict[int, dict]:
    """Return the state saved at each of ``steps``, each one update after the previous."""
    states = {}
    state = initial_state(seed)
    for index, step in enumerate(steps):
        if index:
            state = next_state(state, seed * 7919 + step)
        states[step] = state
    return states


def same_state(restored, expected) -> bool:
    """Return whether two states have the same structure and bit-identical arrays (dtype and shape included)."""
    if isinstance(expected, dict):
        return isinstance(restored, dict) and list(restored) == list(expected) and all(
            same_state(restored[key], expected[key]) for key in expected
        )
    if isinstance(expected, (list, tuple)):
        return type(restored) is type(expected) and len(restored) == len(expected) and all(
            same_state(got, want) for got, want in zip(restored, expected)
        )
    return (
        isinstance(restored, np.ndarray)
        and restored.dtype == expected.dtype
        and restored.shape == expected.shape
        and restored.tobytes() == expected.tobytes()
    )


class ThreadBroadcast:
    """The broadcast collective of the parallel layout for ranks that are threads of one process."""

    def __init__(self, world_size: int) -> None:
        self._barrier = threading.Barrier(world_size, timeout=60)
        self._value = 0

    def for_rank(self, rank: int):
        def broadcast(value: int) -> int:
            if rank == 0:
                self._value = value
            self._barrier.wait()  # rank 0's value is set
            result = self._value
            self._barrier.wait()  # every rank read it before the next call may overwrite it
            return result

        return broadcast


def open_ranks(directory: Path | object, strategy: str, layout: str, **settings) -> list[Checkpointer]:
    """Open one Checkpointer per rank of ``layout`` on ``directory`` (a path or a storage object)."""
    world_size = LAYOUTS[layout]
    options = CheckpointOptions.from_name(strategy, layout=layout, **settings)
    if world_size == 1:
        return [Checkpointer(directory, options)]
    broadcast = ThreadBroadcast(world_size)
    return [
        Checkpointer(directory, options, rank=rank, world_size=world_size, broadcast=broadcast.for_rank(rank))
        for rank in range(world_size)
    ]


def save_steps(directory: Path, strategy: str, layout: str, states: dict[int, dict]) -> None:
    """Save each state under its step on every rank of ``layout``, and wait until all are committed."""
    checkpointers = open_ranks(directory, strategy, layout)
    with concurrent.futures.ThreadPoolExecutor(len(checkpointers)) as pool:
        for step, state in states.items():
            saves = [pool.submit(checkpointer.save, state, step) for checkpointer in checkpointers]
            for save in saves:
                save.result()
        for closed in [pool.submit(checkpointer.close) for checkpointer in checkpointers]:
            closed.result()
