"""Which slice of a data stream this process reads when several processes train one net.

With ``world`` processes of batch ``B`` each, the train data is read as one stream in chunks of
``world * B`` items; process ``rank`` takes the ``rank``-th ``B``-sized slice of every chunk. So a run of
two processes with batch B sees exactly the items of a one-process run with batch 2B, and the averaged
gradients are that run's (up to float rounding): Caffe's meaning of ``-gpu 0,1``.

Data layers take ``(rank, world)`` from the build context the net is built with
(``neocaffe.layers.base.BuildContext``); the solver passes its own to the train net only, so test nets
read all their data in every process.

Caffe 1.0's DataLayer deals single items round-robin instead (rank r keeps items r, r+W, ...): each
iteration's W*B items, and so the averaged gradient, are the same; only which process holds which item
differs. B-sized slices keep each process's reads contiguous.
"""
from __future__ import annotations

__all__ = ["global_batch"]


def global_batch(k: int, rank: int, world: int) -> int:
    """The index, in the one-process stream of B-sized batches, of this process's batch ``k``."""
    return k * world + rank
