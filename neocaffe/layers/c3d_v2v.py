"""C3D-v1.0's voxel-to-voxel (V2V) layers: ``Deconvolution3D``, ``VoxelWiseSoftmax``,
``VoxelWiseSoftmaxWithLoss``, ``VoxelCustomLoss``.

Lineage: facebookarchive/C3D @ 71336a2 (``C3D-v1.0``): ``src/caffe/layers/deconvolution3d_layer.cpp`` (+ ``.cu``)
with ``src/caffe/util/vol2col.cpp``, ``src/caffe/layers/voxel_wise_softmax_layer.cpp`` (its ``.cu`` calls the
CPU code), ``src/caffe/layers/voxel_wise_softmax_loss_layer.cpp`` (likewise) and
``src/caffe/layers/voxel_custom_loss_layer.cpp`` with ``src/caffe/layers/loss_layer.cpp`` (CPU only). Their V1
types ``DECONVOLUTION3D``, ``VOXEL_SOFTMAX``, ``VOXEL_SOFTMAX_LOSS`` and ``VOXEL_CUSTOM_LOSS`` upgrade to these
names (``neocaffe/io/legacy_types.py``); the fork's examples ``examples/v2v/*/deconv3d_*.prototxt`` use them.
Every blob of the fork has five axes (num, channels, length, height, width).

**Deconvolution3D** reads ``convolution_param``: ``num_output``, ``bias_term``, ``kernel_size`` (height and
width), ``kernel_depth``, ``stride`` (1), ``temporal_stride`` (1), ``pad`` (0), ``temporal_pad`` (0),
``weight_filler``, ``bias_filler``. Per item, the fork's forward is ``col = W^T x`` followed by col2vol into a
top of ``(L - 1) temporal_stride - 2 temporal_pad + kernel_depth`` by ``(H - 1) stride - 2 pad + kernel_size``
(width alike), plus the bias: the transpose of Convolution3D, which is ``conv_transpose3d`` here. Blobs:
weight ``(C, num_output, kernel_depth, k, k)`` (the fork's layout, which is PyTorch's), bias ``(num_output,)``
(the fork's 1x1x1x1xN loads into it). Its backward (the bias diff summed over every output voxel, the weight
diff ``x vol2col(dy)^T``, the bottom diff ``W vol2col(dy)``) is the gradient, which autograd gives.
``group`` and ``filter_group`` are not read by the fork's layer (a warning when set); upstream's geometry
fields (``kernel_h`` ... ``pad_w``, ``dilation``, ``axis``, a second ``kernel_size``/``stride``/``pad``) are
an error here.

**VoxelWiseSoftmax**: the softmax over channels at every (num, length, height, width): ``exp(x - max)``
divided by its sum over channels. Backward ``(dy - sum_c(dy y)) y``, the fork's formula (and the gradient).

**VoxelWiseSoftmaxWithLoss** (bottoms: scores, truth): the fork checks only that length, height and width
agree; the label of a voxel is channel 0 of the truth there, cast to int (truncation toward zero). Loss
``-sum log(max(prob[label], FLT_MIN)) / (num length height width)`` over the voxels whose label is below the
channel count; a label >= channels adds nothing but still counts in the divisor. Diff ``(prob -
onehot(label)) / (num length height width)`` at every voxel, times the loss weight; the truth gets none. (The
fork has no loss weights: every loss counts once, as our default weight 1.) At a skipped voxel the diff is
``prob / (num length height width)`` (the fork copies prob and subtracts nothing there), where the gradient
of the loss is 0: the fork's diff is the gradient only where every label is below the channel count.

**VoxelCustomLoss** (bottoms: prediction, truth of one shape): ``d = clip(x - y, -1, 1)``, loss ``sum d^2 /
count`` (the fork's ``|d| > 1`` branch cannot be taken after the clip); the fork's diff is ``d / num`` to the
prediction (times the loss weight here), none to the truth. That is not the gradient of the loss (``2 d /
count`` inside the clip, 0 outside), and it is what the fork trains with.

Deviations, on purpose:

* VoxelWiseSoftmax's max: for item ``i`` the fork's loop compares each channel with
  ``scale_data[bottom->offset(i, 0, l, h, w)]``, an index into the (num, 1, L, H, W) scale buffer computed
  with the bottom's strides. For item 0 (or a one-channel bottom) that is the running maximum; for the others
  it is another item's stale entry or memory past the buffer, so the fork subtracts that value's maximum with
  the last channel. The softmax does not change with the value subtracted, only its rounding does (or an
  overflow, where the value lies far below the scores): here every voxel subtracts its true maximum, the
  fork's value for item 0.
* Blobs of fewer than five axes (ours; the fork's are always five) are read as the fork's with the missing
  trailing axes of size 1 (an InnerProduct's (N, K) as (N, K, 1, 1, 1)); more than five is an error.
* Where the fork reads past its buffers, an error here: a negative label (the fork indexes a channel below 0).
  VoxelWiseSoftmaxWithLoss also refuses a truth with another num than the scores (the fork's CHECKs skip num:
  a smaller one is read past its end, a larger one's extra items are ignored).
* A loss layer written with a top gets the loss there (VoxelWiseSoftmaxWithLoss' CHECK refuses a top,
  VoxelCustomLoss leaves it unwritten); without one, the net adds it (Caffe's AutoTopBlobs).

C3D-v1.0's ``DownSampling`` (V1 ``DOWN_SAMPLING``, the majority vote that shrinks label volumes) is
:mod:`neocaffe.layers.c3d_downsampling`.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.c3d import _five_axes, conv3d_geometry
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import FLT_MIN, _LossLayer

log = logging.getLogger("neocaffe.layers")


def _as_five(layer: Layer, shape: Shape, what: str) -> tuple[int, int, int, int, int]:
    """``shape`` as the fork's (num, channels, length, height, width): missing trailing axes count as 1."""
    if not 2 <= len(shape) <= 5:
        raise layer.error(f"{what} must have 2 to 5 axes (C3D's num, channels, length, height, width); received "
                          f"shape {tuple(shape)}")
    return tuple(int(d) for d in shape) + (1,) * (5 - len(shape))  # type: ignore[return-value]


# ---------------------------------------------------------------- Deconvolution3D


@register_layer("Deconvolution3D")
class Deconvolution3DLayer(Layer):
    """C3D-v1.0's Deconvolution3DLayer (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        cp = self.param.convolution_param
        _five_axes(self, bottom_shapes[0])
        self.kernel, self.stride, self.pad, self.num_output = conv3d_geometry(self, cp)
        for field in ("group", "filter_group"):
            if getattr(cp, field) != 1:
                log.warning("layer '%s' (Deconvolution3D): convolution_param.%s = %d is not read by C3D-v1.0's "
                            "Deconvolution3D (every filter sees every channel)", self.name, field, getattr(cp, field))
        self.channels = int(bottom_shapes[0][1])
        self.add_blob(fill(cp.weight_filler, (self.channels, self.num_output) + self.kernel))
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.add_blob(fill(cp.bias_filler, (self.num_output,)))
        self.reshape(bottom_shapes)

    def _out(self, shape: Shape) -> tuple[int, int, int]:
        _five_axes(self, shape)
        if shape[1] != self.channels:
            raise self.error(f"bottom shape {tuple(shape)} has {shape[1]} channels; set up with {self.channels}")
        out = tuple((d - 1) * s - 2 * p + k for d, k, s, p in zip(shape[2:], self.kernel, self.stride, self.pad))
        if min(out) <= 0:
            raise self.error(f"bottom {tuple(shape)} gives an empty output {out}: (in - 1) stride - 2 pad + kernel "
                             f"with kernel {self.kernel}, stride {self.stride}, pad {self.pad}")
        return out  # type: ignore[return-value]

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        return [(s[0], self.num_output) + self._out(s)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._out(tuple(x.shape))
        w = getattr(self.blobs, "0")
        b = getattr(self.blobs, "1") if self.bias_term else None
        return F.conv_transpose3d(x, w, b, self.stride, self.pad)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(21)
        L = 'name: "d" type: "Deconvolution3D" bottom: "x" top: "y" '
        return [
            Example(L + 'convolution_param { num_output: 2 kernel_size: 4 kernel_depth: 4 pad: 1 temporal_pad: 1 '
                    'stride: 2 temporal_stride: 2 weight_filler { type: "gaussian" std: 0.3 } bias_filler { '
                    'type: "gaussian" std: 0.5 } }', [r.standard_normal((2, 1, 2, 2, 1))]),
            Example(L + 'convolution_param { num_output: 2 kernel_size: 3 kernel_depth: 2 stride: 3 bias_term: false '
                    'weight_filler { type: "xavier" } }', [r.standard_normal((1, 2, 1, 2, 1))]),
            Example(L + 'convolution_param { num_output: 1 kernel_size: 2 kernel_depth: 1 pad: 2 stride: 3 '
                    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } }',
                    [r.standard_normal((1, 2, 2, 3, 3))]),
        ]


# ---------------------------------------------------------------- VoxelWiseSoftmax


class _VoxelSoftmaxFn(torch.autograd.Function):
    """Over axis 1 of (N, C, V): ``exp(x - max) / sum``; backward ``(dy - sum(dy y)) y``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = voxel_softmax(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return (dy - (dy * y).sum(1, keepdim=True)) * y


def voxel_softmax(x: Tensor) -> Tensor:
    """The softmax over channels (axis 1) of an (N, C, ...) tensor, computed as the fork's loops do."""
    v = x.reshape(x.shape[0], x.shape[1], -1)
    e = torch.exp(v - v.amax(1, keepdim=True))
    return (e / e.sum(1, keepdim=True)).reshape(x.shape)


@register_layer("VoxelWiseSoftmax")
class VoxelWiseSoftmaxLayer(Layer):
    """C3D-v1.0's VoxelWiseSoftmaxLayer (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        _as_five(self, bottom_shapes[0], "the bottom")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        _as_five(self, bottom_shapes[0], "the bottom")
        return [tuple(bottom_shapes[0])]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        _as_five(self, tuple(x.shape), "the bottom")
        return _VoxelSoftmaxFn.apply(x)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(22)
        L = 'name: "prob" type: "VoxelWiseSoftmax" bottom: "x" top: "prob"'
        return [Example(L, [r.standard_normal((2, 3, 2, 3, 2)) * 3]), Example(L, [r.standard_normal((3, 4))])]


# ---------------------------------------------------------------- VoxelWiseSoftmaxWithLoss


class _VoxelSoftmaxLossFn(torch.autograd.Function):
    """The loss of the module docstring from scores (N, C, V) and labels (N, V) (int64, >= 0)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, label: Tensor) -> Tensor:
        prob = voxel_softmax(x)
        valid = label < x.shape[1]
        lab = torch.where(valid, label, torch.zeros_like(label)).unsqueeze(1)
        picked = prob.gather(1, lab).squeeze(1).clamp(min=FLT_MIN)
        n = torch.tensor(float(label.numel()), dtype=x.dtype, device=x.device)  # num * length * height * width
        loss = -(torch.log(picked) * valid.to(x.dtype)).sum() / n
        ctx.save_for_backward(prob, lab, valid, n)
        return loss

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        prob, lab, valid, n = ctx.saved_tensors
        grad = prob.clone()
        grad.scatter_add_(1, lab, -valid.to(prob.dtype).unsqueeze(1))
        grad *= torch.reciprocal(n)  # caffe_scal by Dtype(1) / (num length height width)
        return grad * g, None


@register_layer("VoxelWiseSoftmaxWithLoss")
class VoxelWiseSoftmaxWithLossLayer(_LossLayer):
    """C3D-v1.0's VoxelWiseSoftmaxWithLossLayer (see the module docstring)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = _as_five(self, bottom_shapes[0], "bottom 0 (the scores)")
        t = _as_five(self, bottom_shapes[1], "bottom 1 (the truth)")
        if x[2:] != t[2:]:
            raise self.error(f"the scores and the truth must have one length, height and width; received "
                             f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        return super().reshape(bottom_shapes)

    def forward(self, x: Tensor, truth: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(x.shape), tuple(truth.shape)])
        n = x.shape[0]
        label = truth.detach().reshape(n, truth.shape[1], -1)[:, 0].trunc()  # channel 0; static_cast<int>
        bad = ~(label >= 0)
        if bool(bad.any()):
            i, v = (int(a) for a in bad.nonzero()[0])
            raise self.error(f"truth (bottom 1) holds {truth.detach().reshape(n, truth.shape[1], -1)[i, 0, v].item()} "
                             f"at num {i}, voxel {v} of channel 0; expected a label >= 0 (labels >= the "
                             f"{x.shape[1]} channels are skipped)")
        return _VoxelSoftmaxLossFn.apply(x.reshape(n, x.shape[1], -1), label.to(torch.int64))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(23)
        truth = r.integers(0, 3, (2, 2, 2, 3, 2)).astype(float)  # channel 0 is the label
        truth[0, 0, 0, 0, 0] = 2.7  # truncated to 2
        skipped = r.integers(0, 5, (2, 1, 3)).astype(float)  # 4: no class of the four, skipped
        L = 'name: "loss" type: "VoxelWiseSoftmaxWithLoss" bottom: "x" bottom: "truth" top: "loss"'
        return [Example(L, [r.standard_normal((2, 3, 2, 3, 2)), truth]),
                # a skipped voxel's diff is prob / n, not the gradient (0): no gradient check
                Example(L, [r.standard_normal((2, 4, 3)), skipped], grad_bottoms=(), grad_params=False)]


# ---------------------------------------------------------------- VoxelCustomLoss


class _VoxelCustomLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:
        d = (x - y.reshape(x.shape)).clamp(-1.0, 1.0)
        ctx.save_for_backward(d)
        return (d * d).sum() / d.numel()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (d,) = ctx.saved_tensors
        return d * (g / d.shape[0]), None  # the fork's axpby: diff / num, not the gradient


@register_layer("VoxelCustomLoss")
class VoxelCustomLossLayer(_LossLayer):
    """C3D-v1.0's VoxelCustomLossLayer (see the module docstring)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = _as_five(self, bottom_shapes[0], "bottom 0 (the prediction)")
        t = _as_five(self, bottom_shapes[1], "bottom 1 (the truth)")
        if x[1:] != t[1:]:
            raise self.error(f"the prediction and the truth must have one channels, length, height and width "
                             f"(the fork's CHECK_EQs); received {tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        return super().reshape(bottom_shapes)

    def forward(self, x: Tensor, truth: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(x.shape), tuple(truth.shape)])
        return _VoxelCustomLossFn.apply(x, truth)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(24)
        L = 'name: "loss" type: "VoxelCustomLoss" bottom: "x" bottom: "truth" top: "loss"'
        # the fork's diff is not the gradient of its loss: no gradient check
        return [Example(L, [r.standard_normal((2, 2, 2, 3, 2)), r.standard_normal((2, 2, 2, 3, 2))], grad_bottoms=(),
                        grad_params=False)]


__all__ = ["Deconvolution3DLayer", "VoxelCustomLossLayer", "VoxelWiseSoftmaxLayer", "VoxelWiseSoftmaxWithLossLayer",
           "voxel_softmax"]
