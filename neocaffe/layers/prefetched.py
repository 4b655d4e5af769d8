"""What every data layer fed by worker processes shares: its prefetcher, read position and seed.

Data, ImageData, AnnotatedData and DenseImageData make batch ``k`` with a picklable batch maker in
``neocaffe.data.prefetch`` workers. This base starts the prefetcher on the first forward (with a
pin-memory thread in front when the layer runs on CUDA, see ``neocaffe.data.transfer.PinAhead``),
wraps the source's errors with the layer's name, and keeps the read position that snapshots record
(``resume_state``), so a resumed run reads on from the batch it stopped before.
"""
from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.data.datum import DatumError
from neocaffe.data.prefetch import BatchMaker, Prefetcher, default_workers
from neocaffe.data.sources import DataSourceError
from neocaffe.data.transfer import PinAhead, to_device
from neocaffe.layers.base import TEST, BuildContext, Layer, NetSoFar, Shape

log = logging.getLogger("neocaffe.data")
DATA_ERRORS = (DatumError, DataSourceError)


def data_seed() -> int:
    """The seed of a data layer's crops, mirrors and shuffles, drawn from ``neocaffe.rng``."""
    return int(rng.numpy_rng().integers(0, 2**62))


class PrefetchedLayer(Layer):
    """A data layer whose batches come from a :class:`Prefetcher`. Subclasses give ``_maker()``, set
    ``batch_size``, ``seed``, ``skip`` and ``_top_shapes`` in ``setup``, and rebuild what they made from
    ``seed``/``skip`` in ``_reseeded()``; a layer that reads a list sets ``entries`` and takes the
    default ``_workers_and_depth()``, others give their own."""

    exact_bottoms = 0
    allow_in_place = False
    produces_host_data = True
    batch_size = 0
    seed = 0  # crops, mirrors and shuffles of batch k come from (seed, k)
    skip = 0  # rand_skip's draw: records (items) skipped before the first batch
    entries: Sequence[Any] = ()  # a list layer's entries (its source's lines)
    _first_batch = 0  # the batch the prefetcher starts at (a resumed run's position)
    _prefetcher: Prefetcher | PinAhead | None = None

    def __init__(self, param: Any, bottom_shapes: Sequence[Shape], phase: int = TEST,
                 context: BuildContext | None = None, net: NetSoFar | None = None) -> None:
        super().__init__(param, bottom_shapes, phase, context, net)  # net: for types that declare takes_net
        # follows the net's device, so the first forward knows where the batches go
        self.register_buffer("device_mark", torch.zeros(0), persistent=False)

    def _maker(self) -> BatchMaker:
        raise NotImplementedError

    def _workers_and_depth(self) -> tuple[int, int]:
        """A list layer's worker processes (for the batches of one pass over ``entries``) and 4 batches
        made ahead."""
        return default_workers(math.ceil(len(self.entries) / self.batch_size), self.context.data_workers), 4

    def _reseeded(self) -> None:
        """``seed``/``skip`` were restored: rebuild what was made from them (none here)."""

    def draw_skip(self, rand_skip: int, listed: int, source: str, noun: str) -> int:
        """A list layer's ``rand_skip``: entries to skip, drawn in ``[0, rand_skip)`` from
        ``neocaffe.rng`` (0 when unset); more than the ``listed`` entries of ``source`` is Caffe's
        "Not enough points to skip"."""
        skip = int(rng.numpy_rng().integers(0, rand_skip)) if rand_skip else 0
        if skip >= listed:
            raise self.error(f"rand_skip: {rand_skip} drew {skip}, but {source} lists only {listed} {noun}; "
                             "expected more entries than the skip (Caffe: Not enough points to skip)")
        if skip:
            log.info("Skipping first %d data points.", skip)
        return skip

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return list(self._top_shapes)

    def _new_prefetcher(self) -> Prefetcher | PinAhead:
        workers, depth = self._workers_and_depth()
        source = Prefetcher(self._maker(), workers, depth, name=self.name, start=self._first_batch)
        device = self.device_mark.device
        return PinAhead(source, device) if workers and device.type == "cuda" else source

    def _next_batch(self) -> tuple[Any, Callable[[str], Any], Tensor]:
        """The next batch, a getter of its fields, and its data on the layer's device when that is
        CUDA (on the host otherwise); a source error is raised naming this layer."""
        if self._prefetcher is None:
            self._prefetcher = self._new_prefetcher()
        try:
            batch = self._prefetcher.next()
        except DATA_ERRORS as e:
            raise type(e)(f"layer '{self.name}' ({self.type_name}): {e}") from None
        get = batch.get if isinstance(batch, dict) else partial(getattr, batch)
        x = torch.as_tensor(get("data"))
        device = self.device_mark.device
        return batch, get, to_device(x, device) if device.type == "cuda" else x

    def _release(self, batch: Any) -> None:
        """``batch``'s host data has been consumed (copied or transformed): its buffer may be reused."""
        if self._prefetcher is not None:
            self._prefetcher.release(batch)

    def resume_state(self) -> dict:
        """The read position (the batch the next forward returns; batches prefetched ahead do not
        count), the seed of crops/mirrors/shuffles and rand_skip's draw."""
        batch = self._prefetcher.position if self._prefetcher is not None else self._first_batch
        return {"batch": int(batch), "seed": int(self.seed), "skip": int(self.skip), "batch_size": int(self.batch_size)}

    def load_resume_state(self, state: dict) -> None:
        """Continue reading where ``state`` was taken (a different batch_size: start over, as Caffe)."""
        if int(state["batch_size"]) != self.batch_size:
            log.warning("layer '%s': the snapshot's data position is for batch_size %d, this net has %d; "
                        "reading from the start", self.name, int(state["batch_size"]), self.batch_size)
            return
        self.close()
        self.seed, self.skip, self._first_batch = int(state["seed"]), int(state["skip"]), int(state["batch"])
        self._reseeded()

    def __getstate__(self) -> dict:
        """Copies and pickles leave the workers behind; a copy starts reading at the first batch."""
        state = dict(self.__dict__)
        state["_prefetcher"] = None
        return state

    def close(self) -> None:
        """Stop this layer's data workers."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None


__all__ = ["DATA_ERRORS", "PrefetchedLayer", "data_seed"]
