"""The helpers daerduoCarey/SpatialTransformerLayer ships beside its SpatialTransformer (see
:mod:`neocaffe.layers.spatial_transformer`): ``LocLoss`` (``loc_loss_param``), ``PowerFile``
(``power_file_param``) and the ``"file"`` filler (``FillerParameter.file``).

Lineage: daerduoCarey/SpatialTransformerLayer @ cf2a461c (unchanged since 901fac1, 2015-12):
``src/caffe/layers/loc_loss_layer.{cpp,cu}``, ``src/caffe/layers/power_file_layer.{cpp,cu}``,
``include/caffe/filler.hpp`` (``FileFiller``); proto/NUMBERING.md, lineage stn. The fork's examples use
them as the CUB nets do: an InnerProduct regresses theta, ``PowerFile`` adds the initial crop read from a
text file (``shift_file``), ``LocLoss`` (or ``STLoss``) keeps the crop inside the image, and the MNIST nets
start the regressor's bias from ``bias_filler { type: "file" file: "bias_init.txt" }`` (``1 0 0 0 1 0``).

**LocLoss** (``LocLossForwardGPU``/``LocLossBackwardGPU``; the CPU paths are ``CHECK(false)``): one
bottom of any shape, ``threshold`` (required, > 0); each value beyond +-threshold pays
``(|x| - threshold)^2 / 2``; the loss is the sum divided by the bottom's count, the diff
``(x -+ threshold) / count`` times the top's diff beyond the threshold. Deviation: inside the threshold
the fork's kernel writes nothing, so such a value keeps whatever diff its blob last held (0 until it once
left the range, then the stale diff of that iteration); here its diff is 0, the gradient.

**PowerFile** (its CPU paths are ``CHECK(false)`` too): ``top = bottom + shift``, one shift per value of
an item (``count(1)`` of them, repeated over the batch), read from ``shift_file`` as the fork's
``ifstream >>`` loop reads: numbers separated by white space, up to ``count(1)``, stopping at the first
thing that is not a number; the rest stay 0, as do all of them without ``shift_file``. The diff passes
through unchanged; the shift is no parameter blob (the fork keeps it outside ``blobs_``, so no
``.caffemodel`` holds it). Deviation: a ``shift_file`` that cannot be read is an error naming it (the
fork's ``ifstream`` fails silently and shifts by 0); ``count(1)`` may not change after setup (the fork
would reallocate the shift and lose it).

**"file" filler** (``FileFiller``): the blob's ``count`` numbers from ``FillerParameter.file`` in order
(read as above), ``sparse`` must stay -1. Deviation: a missing file, or one with fewer numbers than the
blob's count, is an error (the fork's ``>>`` then leaves garbage or repeats the last number read). The
filler is in :mod:`neocaffe.layers.fillers`'s table.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.fillers import read_numbers
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer

@register_layer("LocLoss")
class LocLossLayer(_LossLayer):
    """The fork's LocLossLayer (see the module docstring)."""

    exact_bottoms = 1

    def allow_force_backward(self, bottom: int) -> bool:
        return True  # the fork's override

    def setup(self, bottom_shapes: list[Shape]) -> None:
        lp = self.param.loc_loss_param
        if not lp.HasField("threshold"):
            raise self.error("loc_loss_param.threshold is required (the fork's schema)")
        self.threshold = float(lp.threshold)
        if not self.threshold > 0:
            raise self.error(f"threshold should be larger than zero; received {self.threshold}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        t = torch.tensor(self.threshold, dtype=x.dtype, device=x.device)  # (Dtype) threshold
        over = torch.where(x < -t, x + t, torch.where(x > t, x - t, torch.zeros_like(x)))
        return (over * over / 2).sum() / max(x.numel(), 1)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(151)
        # values kept off the kinks at +-0.5
        x = r.choice([-1, 1], (3, 6)) * np.where(r.random((3, 6)) < 0.5, r.uniform(0, 0.45, (3, 6)),
                                                 r.uniform(0.55, 2, (3, 6)))
        return [Example('name: "ll" type: "LocLoss" bottom: "theta" top: "loss" '
                        'loc_loss_param { threshold: 0.5 } loss_weight: 0.01', [x])]


@register_layer("PowerFile")
class PowerFileLayer(Layer):
    """The fork's PowerFileLayer (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        shape = tuple(bottom_shapes[0])
        self.size = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        shift = np.zeros(self.size, dtype=np.float32)
        pp = self.param.power_file_param
        if pp.HasField("shift_file"):
            values = read_numbers(pp.shift_file, self.size, f"layer '{self.name}' (PowerFile) shift_file")
            shift[: len(values)] = values
        self.register_buffer("shift", torch.from_numpy(shift), persistent=False)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        size = int(np.prod(shape[1:], dtype=np.int64)) if shape else 1
        if size != self.size:
            raise self.error(f"bottom 0 must keep {self.size} values per item (the shift's length); "
                             f"received shape {shape}")
        return [shape]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        shift = self.shift.to(dtype=x.dtype, device=x.device)
        return (x.reshape(-1, self.size) + shift).reshape(x.shape)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(150)
        return [Example('name: "pf" type: "PowerFile" bottom: "pre_theta" top: "theta"', [r.standard_normal((2, 6))])]
