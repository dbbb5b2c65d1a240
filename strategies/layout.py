"""Layouts: which rank writes which bytes of which array.

``coordinator``: rank 0 writes every array into one shard; other ranks write nothing.
It assumes rank 0 has the full state, as every rank does in data-parallel training.

``parallel``: every rank writes one shard holding an equal share of the state's bytes.
The arrays are laid end to end and cut into ``world_size`` ranges at element
boundaries, so a large array is split across ranks instead of landing whole on one.
Every rank computes the same cuts from the same state, with no communication.
"""

from __future__ import annotations

import dataclasses
import typing

from strategies.tree import HostArray


@dataclasses.dataclass(frozen=True)
class Piece:
    """Bytes ``start:stop`` of one array, written by one rank."""

    leaf: HostArray
    start: int
    stop: int
    staged: memoryview | None = None  # a private copy of the bytes, taken by the snapshot

    def raw(self) -> memoryview:
        if self.staged is not None:
            return self.staged
        return self.leaf.buffer()[self.start : self.stop]

    def stage(self) -> "Piece":
        """Return this piece with its bytes copied, so later updates of the live array cannot reach it."""
        return dataclasses.replace(self, staged=memoryview(bytes(self.raw())))

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


class Layout(typing.Protocol):
    """Assigns the bytes of every array to the shards of the ranks."""

    name: str

    def plan(self, leaves: list[HostArray], rank: int, world_size: int) -> list[Piece]: ...


def shard_name(rank: int) -> str:
    return f"shard_{rank:05d}.bin"


class CoordinatorLayout:
    """Rank 0 writes every array whole."""

    name = "coordinator"

    def plan(self, leaves: list[HostArray], rank: int, world_size: int) -> list[Piece]:
        if rank != 0:
            return []
        return [Piece(leaf, 0, leaf.nbytes) for leaf in leaves]


class ParallelLayout:
    """Every rank writes an equal share of the bytes, split at element boundaries."""

    name = "parallel"

    def plan(self, leaves: list[HostArray], rank: int, world_size: int) -> list[Piece]:
        total = sum(leaf.nbytes for leaf in leaves)
        low, high = rank * total // world_size, (rank + 1) * total // world_size
        pieces = []
        offset = 0
        for leaf in leaves:
            begin, end = offset, offset + leaf.nbytes
            offset = end
            if leaf.nbytes == 0:
                if rank == 0:
                    pieces.append(Piece(leaf, 0, 0))  # empty arrays still need an entry
                continue
            start = _align(low - begin, leaf) if low > begin else 0
            stop = _align(high - begin, leaf) if high < end else leaf.nbytes
            if stop > start:
                pieces.append(Piece(leaf, start, stop))
        return pieces


def _align(position: int, leaf: HostArray) -> int:
    """Round a byte position inside ``leaf`` down to an element boundary."""
    itemsize = leaf.itemsize or 1
    return max(0, min(leaf.nbytes, position - position % itemsize))


def make_layout(name: str) -> Layout:
    return ParallelLayout() if name == "parallel" else CoordinatorLayout()
