"""Rank, world size and the integer broadcast a multi-process Checkpointer needs, from MLX.

Example::

    group = mx.distributed.init()
    checkpointer = Checkpointer(path, options, **strategies.mlx_distributed(group))
"""

from __future__ import annotations

_HALF_BITS = 26  # a 52-bit integer travels as two int32 halves, exact in any all_sum


def mlx_distributed(group=None) -> dict:
    """Return ``rank``, ``world_size`` and ``broadcast`` keyword arguments for ``Checkpointer``."""
    import mlx.core as mx

    group = group or mx.distributed.init()

    def broadcast(value: int) -> int:
        """Return rank 0's ``value`` (0 <= value < 2**52) on every rank; a collective call."""
        mine = value if group.rank() == 0 else 0
        halves = mx.array([mine >> _HALF_BITS, mine & ((1 << _HALF_BITS) - 1)], dtype=mx.int32)
        total = mx.distributed.all_sum(halves, group=group)
        high, low = (int(x) for x in total.tolist())
        return (high << _HALF_BITS) | low

    return {"rank": group.rank(), "world_size": group.size(), "broadcast": broadcast}
