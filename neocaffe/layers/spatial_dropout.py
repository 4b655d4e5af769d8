"""Intel Caffe's ``SpatialDropout``: Dropout of whole channels (one draw per image and channel).

Lineage and source files: intel/caffe @ 44d536385dc41804a673c527b4c2df2675770dff,
``src/caffe/layers/spatial_dropout_layer.cpp`` and ``include/caffe/layers/spatial_dropout_layer.hpp`` (CPU only: the
fork has no ``.cu``; neocaffe runs the same formula on every device).

The fork's arithmetic: ``threshold_ = dropout_param.dropout_ratio`` (p), ``scale_ = 1. / (1. - threshold_)`` stored
in the blob type. TRAIN: ``caffe_rng_bernoulli(num * channels, 1 - p)`` gives one keep/drop draw per (image,
channel); a kept channel is ``scale_ * x`` over its whole H x W plane, a dropped one is set to 0. Backward: the same
per-channel mask, ``scale_ * top_diff`` or 0. TEST: a copy, forward and backward (no scaling at any phase; the
header declares a ``scale_train_`` member that nothing sets or reads, and the fork's proto has no such field).

Quirks followed: the layer reads ``dropout_param.dropout_ratio``, not ``spatial_dropout_param.dropout_ratio`` (the
fork defines ``spatial_dropout_param`` = 155 with its own ``dropout_ratio`` and never reads it); a prototxt that sets
only ``spatial_dropout_param`` runs with ``dropout_param``'s default p = 0.5, as in Intel Caffe, and gets a
warning naming both values. Blobs of 2 or 3 axes use Caffe's legacy num/channels/height/width (a 2-D N x C blob drops
single elements); more than 4 axes is an error (``Blob::LegacyShape``).

Deviations: p outside [0, 1) is an error (the fork only ``DCHECK``s 0 < p < 1, in debug builds; p = 0 keeps every
channel with scale 1, as the fork's release build). The draws come from ``neocaffe.rng`` (the generator of the
bottom's device), one Bernoulli tensor of N x C per TRAIN forward, as neocaffe's Dropout draws its mask, so a seeded
run repeats and a resumed one continues; Caffe's boost/mt19937 stream is not reproduced.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import PLAIN, TRAIN, Example, LayerCall, Shape, legacy_shape
from neocaffe.layers.neuron import NeuronLayer, f32
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe")


@register_layer("SpatialDropout")
class SpatialDropoutLayer(NeuronLayer):
    """``dropout_param.dropout_ratio`` p. TRAIN: keep each (image, channel) plane with probability 1-p and scale it by
    ``1 / (1 - p)`` (Caffe's float rounding for float blobs), else 0; TEST: identity."""

    def configure(self, bottom_shapes: list[Shape]) -> None:
        p = f32(self.param.dropout_param.dropout_ratio)
        if not 0 <= p < 1:
            raise self.error(f"dropout_param.dropout_ratio must be in [0, 1); received {float(p)}")
        sp = self.param.spatial_dropout_param if self.param.HasField("spatial_dropout_param") else None
        if sp is not None and f32(sp.dropout_ratio) != p:
            log.warning("layer '%s' (SpatialDropout): spatial_dropout_param.dropout_ratio = %g is not read by Intel "
                        "Caffe's SpatialDropout; it drops with dropout_param.dropout_ratio = %g", self.name,
                        float(f32(sp.dropout_ratio)), float(p))
        legacy_shape(bottom_shapes[0], self)
        self.ratio = float(p)
        self.scale64 = float(1.0 / (1.0 - np.float64(p)))  # scale_ for a double blob
        self.scale = float(f32(self.scale64))  # scale_ for a float blob

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        legacy_shape(bottom_shapes[0], self)
        return [tuple(bottom_shapes[0])]

    def draw_mask(self, x: Tensor) -> Tensor:
        """The keep mask, N x C (legacy num and channels), from ``neocaffe.rng``: True = kept."""
        n, c, _, _ = legacy_shape(tuple(x.shape), self)
        u = torch.empty((n, c), dtype=torch.float32, device=x.device)
        if torch.compiler.is_compiling():  # torch.compile cannot trace an explicit generator: its own RNG
            return u.bernoulli_(1.0 - self.ratio).bool()
        return u.bernoulli_(1.0 - self.ratio, generator=rng.generator(x.device)).bool()

    def apply_mask(self, x: Tensor, mask: Tensor) -> Tensor:
        """``scale_ * x`` on kept planes, 0 on dropped ones (autograd gives the fork's backward: the same mask times
        ``scale_``, 0 where dropped, whatever the top diff holds there)."""
        n, c, _, _ = legacy_shape(tuple(x.shape), self)
        scale = self.scale64 if x.dtype == torch.float64 else self.scale
        return (x.reshape(n, c, -1) * scale).masked_fill_(~mask.reshape(n, c, 1), 0).reshape(x.shape)

    def forward(self, x: Tensor, call: LayerCall = PLAIN) -> Tensor:  # type: ignore[override]
        if self.phase != TRAIN:
            return x.view_as(x) if self.in_place else x.clone()
        return self.apply_mask(x, self.draw_mask(x))

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """TEST: the bottom copied (in place: the blob itself)."""
        if self.phase == TRAIN:
            return None
        return (lambda x: x.view_as(x)) if self.in_place else torch.clone

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(155)
        d = 'name: "sd" type: "SpatialDropout" bottom: "x" '
        return [Example(d + 'top: "y" dropout_param { dropout_ratio: 0.4 }', [r.standard_normal((2, 5, 3, 2))],
                        phase=TRAIN),
                Example(d + 'top: "y" dropout_param { dropout_ratio: 0.5 }', [r.standard_normal((3, 4))], phase=TRAIN),
                Example(d + 'top: "x"', [r.standard_normal((2, 3, 2, 2))]),
                Example(d + 'top: "y"', [r.standard_normal((1, 2, 3, 1))])]
