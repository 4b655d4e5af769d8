"""Which slice of a data stream this process reads when several processes train one net.

With ``world`` processes of batch ``B`` each, the train data is read as one stream in chunks of
``world * B`` items; process ``rank`` takes the ``rank``-th ``B``-sized slice of every chunk. So a run of
two processes with batch B sees exactly the items of a one-process run with batch 2B, and the averaged
gradients are that run's (up to float rounding): Caffe's meaning of ``-gpu 0,1``.

Data layers read the shard when they are set up (``current()``); the solver sets it around building its
train net only (``with sharding(rank, world): ...``), so test nets read all their data in every process.

Caffe 1.0's DataLayer deals single items round-robin instead (rank r keeps items r, r+W, ...): each
iteration's W*B items, and so the averaged gradient, are the same; only which process holds which item
differs. B-sized slices keep each process's reads contiguous.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["current", "sharding", "global_batch"]

_current: tuple[int, int] = (0, 1)


def current() -> tuple[int, int]:
    """(rank, world) for data layers set up now; (0, 1) outside ``sharding``."""
    return _current


@contextlib.contextmanager
def sharding(rank: int, world: int) -> Iterator[None]:
    """Data layers set up inside read slice ``rank`` of every ``world`` batches."""
    global _current
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) and world >= 1; received rank {rank}, world {world}")
    saved, _current = _current, (int(rank), int(world))
    try:
        yield
    finally:
        _current = saved


def global_batch(k: int, rank: int, world: int) -> int:
    """The index, in the one-process stream of B-sized batches, of this process's batch ``k``."""
    return k * world + rank
