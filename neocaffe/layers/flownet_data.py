"""FlowNet 2.0's CustomData layer (lmb-freiburg/flownet2 @ b92e198b, ``src/caffe/layers/custom_data_layer.cpp``).

Reads an LMDB of ``convert_imageset_and_flow`` records (see :mod:`neocaffe.data.flownet_db`) and splits each
record's channels at ``data_param.slice_point`` into one top per slice, decoded per ``encoding``; a last top
gets the labels when there is one more top than slices. ``(value - mean) * scale`` with ``mean_file`` (a
1 x C x H x W binaryproto) or ``subtract`` (one value per channel, from the first); ``batch_size``,
``preselection_file``/``preselection_label``, ``range_start``/``range_end``, ``rand_permute`` with
``rand_permute_seed``, ``rand_permute_order``, ``block_size``, ``permute_every_iter``, ``prefetch``.

As the fork: LMDB only, no ``rand_skip``, ``crop_size`` or ``mirror`` (errors here, fatal there); records
are read by index (key ``"%08d"``, the first key at or after it); the tops' shapes come from the first record.
A nonzero ``rand_permute_seed`` gives the fork's own permutations (glibc's ``rand`` reproduced). Deviation:
``rand_permute_seed: 0`` (the fork: whatever state the process's ``rand()`` is in) seeds from
``neocaffe.rng``, so seeded runs repeat. Batch ``k`` is a function of ``k`` alone, so a resumed run reads
on exactly.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.flownet_db import ENCODINGS, FlowDBError, PairBatches, ReadOrder
from neocaffe.data.prefetch import default_workers
from neocaffe.data.sources import DBReader
from neocaffe.data.transformer import load_mean_file
from neocaffe.layers.base import Example, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

DP = caffe_pb2.DataParameter


@register_layer("CustomData")
class CustomDataLayer(PrefetchedLayer):
    """Image pairs, flow and occlusions from a FlowNet LMDB, one top per slice (+ labels)."""

    min_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp = self.param.data_param
        if not dp.source:
            raise self.error("data_param.source is empty; expected the path of an LMDB")
        if dp.backend != DP.LMDB:
            raise self.error("data_param.backend must be LMDB (LevelDB is not supported by CustomData)")
        for field, what in (("rand_skip", "rand_skip"), ("crop_size", "cropping"), ("mirror", "mirror")):
            if getattr(dp, field):
                raise self.error(f"data_param.{field} is set; CustomData does not support {what}")
        if dp.batch_size <= 0:
            raise self.error(f"data_param.batch_size must be positive; received {dp.batch_size}")
        self.slices = [int(v) for v in dp.slice_point]
        self.encodings = [int(v) for v in dp.encoding]
        for e in self.encodings:
            if e not in ENCODINGS:
                raise self.error(f"data_param.encoding {e} is not one of {sorted(ENCODINGS.values())}")
        n_top = len(self.param.top)
        if n_top not in (len(self.slices) + 1, len(self.slices) + 2):
            raise self.error(f"has {n_top} tops for {len(self.slices) + 1} slices; expected one per slice, plus "
                             "one for labels")
        self.labels = n_top == len(self.slices) + 2
        self.source = os.path.abspath(dp.source)
        self.where = f"data_param.source '{dp.source}'"
        try:
            with DBReader(self.source, "lmdb", self.where) as reader:
                entries = reader.count()
                first = caffe_pb2.Datum.FromString(bytes(reader.peek()[1]))
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        c, h, w = int(first.channels), int(first.height), int(first.width)
        bounds = [0, *self.slices, c]
        if any(b <= a for a, b in zip(bounds, bounds[1:])) or n_top > c:
            raise self.error(f"slice points {self.slices} do not split the records' {c} channels into increasing, "
                             "nonempty slices")
        self.shape = (c, h, w)
        labels = None
        if dp.HasField("preselection_file"):
            if not dp.HasField("preselection_label"):
                raise self.error("preselection_file without preselection_label; expected both")
            with open(dp.preselection_file) as f:
                labels = [int(v) for v in f.read().split()]
            if len(labels) != entries:
                raise self.error(f"preselection error: the database has {entries} entries and "
                                 f"{dp.preselection_file} lists {len(labels)} labels")
        self.batch_size = int(dp.batch_size)
        self.perm_seed = int(dp.rand_permute_seed)
        self.seed = self.perm_seed or data_seed() % 2**32
        self._labels_list = labels
        self._reseeded()
        mean = np.zeros((c, h, w), np.float32)
        if dp.HasField("mean_file"):
            try:
                mean = load_mean_file(dp.mean_file)
            except (*DATA_ERRORS, OSError) as e:
                raise self.error(str(e)) from None
            if mean.shape != (c, h, w):
                raise self.error(f"mean_file {dp.mean_file} is {mean.shape}; expected {(c, h, w)}")
        elif len(dp.subtract):
            if len(dp.subtract) > c:
                raise self.error(f"data_param.subtract has {len(dp.subtract)} values for {c} channels")
            for i, v in enumerate(dp.subtract):
                mean[i] = v
        self.register_buffer("mean", torch.from_numpy(mean).unsqueeze(0), persistent=False)
        self.scale = float(dp.scale)
        self._top_shapes = [(self.batch_size, b - a, h, w) for a, b in zip(bounds, bounds[1:])]
        if self.labels:
            self._top_shapes.append((self.batch_size, 1, 1, 1))

    def _reseeded(self) -> None:
        dp = self.param.data_param
        try:
            with DBReader(self.source, "lmdb", self.where) as reader:
                entries = reader.count()
            self.order = ReadOrder(entries, self.batch_size, labels=self._labels_list,
                                   label=int(dp.preselection_label), range_start=int(dp.range_start),
                                   range_end=int(dp.range_end), rand_permute=bool(dp.rand_permute), seed=self.seed,
                                   range_first=dp.rand_permute_order == DP.FIRST_RANGE_THEN_PERMUTE,
                                   block_size=int(dp.block_size), every=int(dp.permute_every_iter))
        except (FlowDBError, *DATA_ERRORS) as e:
            raise self.error(str(e)) from None

    def _maker(self) -> PairBatches:
        return PairBatches(self.source, self.where, self.order, self.shape, self.slices, self.encodings,
                           self.context.rank, self.context.world)

    def _workers_and_depth(self) -> tuple[int, int]:
        n = math.ceil(self.order.size / self.batch_size)
        return default_workers(n, self.context.data_workers), int(self.param.data_param.prefetch)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        y = (x.to(torch.float32) - self.mean.to(x.device)) * self.scale
        self._release(batch)
        bounds = [0, *self.slices, self.shape[0]]
        tops = [y[:, a:b].contiguous() for a, b in zip(bounds, bounds[1:])]
        if self.labels:
            tops.append(torch.as_tensor(get("labels"), dtype=torch.float32).view(-1, 1, 1, 1).to(y.device))
        return tops

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        from neocaffe.data.examples import example_folder

        folder = example_folder()
        path = os.path.join(folder, "flownet_pairs_lmdb")
        if not os.path.exists(path):
            r = np.random.default_rng(0)
            pairs = [(r.integers(0, 256, (3, 4, 5)), r.integers(0, 256, (3, 4, 5)), r.normal(0, 3, (2, 4, 5)),
                      r.integers(0, 2, (4, 5)), f"{i:05d}_flow.flo") for i in range(5)]
            from neocaffe.data.flownet_db import write_pair_lmdb

            tmp = f"{path}.{os.getpid()}"
            write_pair_lmdb(tmp, pairs)
            try:
                os.rename(tmp, path)
            except OSError:
                pass
        enc = "slice_point: 3 slice_point: 6 slice_point: 8 encoding: UINT8 encoding: UINT8 encoding: UINT16FLOW " \
              "encoding: BOOL1"
        return [Example(f'name: "pairs" type: "CustomData" top: "img0" top: "img1" top: "flow" top: "occ" top: "label" '
                        f'data_param {{ source: "{path}" batch_size: 3 backend: LMDB rand_permute: true '
                        f'rand_permute_seed: 77 {enc} subtract: 10 scale: 0.5 }}',
                        [], grad_bottoms=(), grad_params=False, phase=0)]


__all__ = ["CustomDataLayer"]
