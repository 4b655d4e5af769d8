"""C3D-v1.0's ``DownSampling``: a label volume reduced by a majority vote over blocks.

Lineage: facebookarchive/C3D @ 71336a2 (``C3D-v1.0``): ``src/caffe/layers/down_sampling_layer.cpp`` (its ``.cu``
calls the CPU code), ``include/caffe/down_sampling_layer.hpp``. Its V1 type ``DOWN_SAMPLING`` upgrades to this name
and its V1 ``down_sampling_param`` to our ``LayerParameter.down_sampling_param`` (10002; proto/NUMBERING.md).

``down_sampling_param``: ``spatial_factor`` s and ``temporal_factor`` t, each > 1 (the fork's ``CHECK_GT``, whose
message says ">= 1": a factor of 1 is refused there and here), ``type`` (VOTE; AVERAGE is the fork's "NOT
implement yet" CHECK at the first forward, an error at setup here). One bottom (num, channels, length, height,
width) and one top of (num, channels, length / t, height / s, width / s), C's integer division: trailing
frames and pixels past a whole block are not read.

VOTE: ``lo``, ``hi`` = the smallest and largest value of the whole bottom; each value v votes for the index
``int(v - lo)`` (truncation toward zero) in an array of ``int(hi) - int(lo) + 1`` counters; each top voxel is
``best + lo`` with ``best`` the index with the most votes in its t x s x s block, the smallest index among
equal counts (the fork's scan keeps the first maximum, starting at index 0). Meant for integer labels, where
that is the block's most frequent label. No backward: the fork's is empty, so the bottom takes no diff.

Deviations: where a value's index falls past the fork's counters (non-integer values with a negative minimum, e.g. lo =
-0.5, v = 0.7: index 1 of 1 counter) the fork writes past its array; here such votes are dropped, which is
what its scan, which stops at the last counter, reads when the write harms nothing. ``type: NONE`` (the fork
computes nothing and leaves the top as it was) is an error.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.c3d import _five_axes
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

DS = caffe_pb2.DownSamplingParameter


@register_layer("DownSampling")
class DownSampling(Layer):
    """C3D-v1.0's ``DownSampling`` (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.down_sampling_param
        self.s, self.t = int(p.spatial_factor), int(p.temporal_factor)
        for name, v in (("spatial_factor", self.s), ("temporal_factor", self.t)):
            if v <= 1:
                raise self.error(f"down_sampling_param.{name} must be > 1 (C3D-v1.0's CHECK_GT); received {v}")
        if p.type != DS.VOTE:
            raise self.error(f"down_sampling_param.type {DS.DownSamplingType.Name(p.type)}: C3D-v1.0 computes only "
                             "VOTE (AVERAGE is its 'NOT implement yet' CHECK; NONE computes nothing)")
        self.reshape(bottom_shapes)

    def _five(self, shape: Shape) -> tuple[int, ...]:
        _five_axes(self, shape)  # fewer axes would leave a width of 1, smaller than any block
        return tuple(int(d) for d in shape)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c, length, h, w = self._five(bottom_shapes[0])
        top = (n, c, length // self.t, h // self.s, w // self.s)
        if 0 in top[2:]:
            raise self.error(f"the bottom {tuple(bottom_shapes[0])} is smaller than one block (temporal_factor "
                             f"{self.t}, spatial_factor {self.s} x {self.s}): the top would be empty {top}")
        return [top]

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach()
        n, c, length, h, w = self._five(tuple(x.shape))
        lt, lh, lw = length // self.t, h // self.s, w // self.s
        x5 = x.reshape(n, c, length, h, w)
        lo, hi = x5.min(), x5.max()
        counters = int(math.trunc(float(hi))) - int(math.trunc(float(lo))) + 1
        blocks = (x5[:, :, : lt * self.t, : lh * self.s, : lw * self.s]
                  .reshape(n, c, lt, self.t, lh, self.s, lw, self.s)
                  .permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(n, c, lt, lh, lw, -1))
        idx = torch.trunc(blocks - lo).to(torch.int64)  # the value's counter, as int(v - min_)
        valid = idx < counters  # the fork's scan reads no counter past its array
        votes = (idx[..., :, None] == idx[..., None, :]).sum(-1)  # each value's count within its block
        key = torch.where(valid, votes * (counters + 1) - idx, torch.full_like(idx, -1))
        best = idx.gather(-1, key.argmax(-1, keepdim=True))[..., 0]
        best = torch.where(key.max(-1).values >= 0, best, torch.zeros_like(best))  # no valid vote: counter 0
        return best.to(x.dtype) + lo

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(40)
        p = 'name: "ds" type: "DownSampling" bottom: "x" top: "y" down_sampling_param { spatial_factor: 2 temporal_factor: 2 }'
        return [Example(p, [r.integers(0, 4, (2, 1, 4, 5, 6)).astype(np.float64)], grad_bottoms=())]


__all__ = ["DownSampling"]
