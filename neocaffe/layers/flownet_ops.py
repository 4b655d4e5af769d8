"""FlowNet 2.0's small layers: ``ChannelNorm``, ``NegReLU`` (``relu_param``), ``Mean`` (``mean_param``) and
``Accum`` (``accum_param``).

Lineage: lmb-freiburg/flownet2 @ b92e198b56b0e52e1ba0a5a98dc0e39fa5ae70cc, ``src/caffe/layers/{channel_norm_layer,
neg_relu_layer,mean_layer,accum_layer}.{cpp,cu}`` and their headers under ``include/caffe/layers/``.

* **ChannelNorm**: top (N, 1, H, W) = ``sqrt(sum_c x^2)``. Backward (``Backward_cpu``/``NormBackward``):
  ``top_diff * x / (top + 1e-9)``, not the exact gradient at small norms: a :class:`torch.autograd.Function`.
* **NegReLU**: ``x < 0 ? x : negative_slope * x`` (``relu_param.negative_slope``, default 0); diff
  ``top_diff * ((x < 0) + negative_slope * (x >= 0))``, which is the gradient of that ``where``.
* **Mean**: one top per bottom, ``output_scale * (input_scale * x + mean_scale * m)``, ``m`` the mean (negated
  for ``operation: SUBTRACT``; ``operation`` is ``required``): from ``file`` (a BlobProto, read at set-up; its
  height and width must be the bottoms', element j of each image takes ``mean[j % mean.count]``) or from
  ``value`` (channel c takes ``value[c % len(value)]``; a bottom's channels must be a multiple of the count of
  either). The fork's Mean cannot do backward (its Backward is ``LOG(FATAL)``): a backward through it raises here.
* **Accum**: concatenates the bottoms along channels after resizing each to the top's size by bilinear
  interpolation on corner-aligned grids, ``xpos = w / (tw - 1) * (bw - 1)`` in float32, as ``Forward_cpu``.
  The size: with ``have_reference`` the last bottom's (which is not concatenated); else the largest bottom
  height and width, replaced by ``size_divisible_by`` (if set: each rounded up to a multiple) or by
  ``top_height`` x ``top_width``, but only where both exceed the largest bottom's. Backward (``Backward_cpu``):
  the transpose of the interpolation, i.e. the gradient: autograd's. A top of height or width 1 divides by zero
  in the fork: an error here.

Tested against loop ports in ``tests/layers/flownet_reference.py``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

f32 = np.float32


class _ChannelNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        top = (x * x).sum(1, keepdim=True).sqrt()
        ctx.save_for_backward(x, top)
        return top

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, top = ctx.saved_tensors
        return g * x / (top + 1e-9)


@register_layer("ChannelNorm")
class ChannelNorm(Layer):
    """``sqrt(sum_c x^2)`` with the fork's ``x / (norm + 1e-9)`` diff (module docstring)."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, _, h, w = legacy_shape(bottom_shapes[0], self)
        return [(n, 1, h, w)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return _ChannelNormFn.apply(x.reshape(legacy_shape(tuple(x.shape), self)))

    @classmethod
    def examples(cls) -> list[Example]:
        x = np.random.default_rng(61).standard_normal((2, 3, 4, 5)) * 10  # large norms: 1e-9 is below gradcheck's eps
        return [Example('name: "cn" type: "ChannelNorm" bottom: "x" top: "n"', [x])]


@register_layer("NegReLU")
class NegReLU(Layer):
    """``x < 0 ? x : negative_slope * x`` (``relu_param.negative_slope``)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.where(x < 0, x, x * self.slope)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(62)
        x = r.choice([-1.0, 1.0], size=(2, 3, 4)) * (0.1 + r.random((2, 3, 4)))  # away from the kink at 0
        return [Example('name: "nr" type: "NegReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.3 }', [x]),
                Example('name: "nr" type: "NegReLU" bottom: "x" top: "x"', [x])]


class _NoBackward(torch.autograd.Function):
    """Passes a computed top through; a backward to it raises, as the fork's LOG(FATAL) Backward."""

    @staticmethod
    def forward(ctx, x: Tensor, top: Tensor, who: str) -> Tensor:  # type: ignore[override]
        ctx.who = who
        return top

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        raise RuntimeError(f"{ctx.who} cannot do backward (the fork's Backward is LOG(FATAL)); its bottoms must "
                           "not need a diff (propagate_down: false, or no learnable layer below)")


@register_layer("Mean")
class Mean(Layer):
    """FlowNet 2.0's Mean: add or subtract a mean from ``mean_param`` (module docstring)."""

    min_bottoms = 1
    min_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        mp = self.param.mean_param
        if len(self.param.top) != len(bottom_shapes):
            raise self.error(f"needs as many tops as bottoms; received {len(bottom_shapes)} bottoms and "
                             f"{len(self.param.top)} tops")
        if not mp.HasField("operation"):
            raise self.error("mean_param.operation (ADD or SUBTRACT) is required")
        self.sign = -1.0 if mp.operation == caffe_pb2.MeanParameter.SUBTRACT else 1.0
        self.scales = (float(mp.input_scale), float(mp.mean_scale), float(mp.output_scale))
        if mp.HasField("file"):
            from neocaffe.io.binaryproto import read_blobproto

            arr = np.asarray(read_blobproto(mp.file).data, np.float32)
            self.mean_shape = legacy_shape(tuple(arr.shape), self, f"the mean in '{mp.file}'")
            self.mean = torch.as_tensor(arr.reshape(-1).copy())
        else:
            if not len(mp.value):
                raise self.error("mean_param needs a file or at least one value; received neither")
            self.mean_shape = None
            self.mean = torch.tensor(list(mp.value), dtype=torch.float32)
        self.reshape(bottom_shapes)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        for k, s in enumerate(bottom_shapes):
            _, c, h, w = legacy_shape(s, self, f"bottom {k}")
            if self.mean_shape is not None:
                mc, mh, mw = self.mean_shape[1:]
                if (mh, mw) != (h, w) or c % mc:
                    raise self.error(f"the mean file's blob {self.mean_shape} must have bottom {k}'s height and width "
                                     f"and a channel count dividing its channels; received bottom shape {tuple(s)}")
            elif c % len(self.mean):
                raise self.error(f"bottom {k}'s channels ({c}) must be a multiple of the {len(self.mean)} "
                                 "mean_param.value entries")
        return [tuple(s) for s in bottom_shapes]

    def forward(self, *bottoms: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        tops = []
        ins, ms, outs = self.scales
        for x in bottoms:
            n, c, h, w = legacy_shape(tuple(x.shape), self)
            mean = self.mean.to(device=x.device, dtype=x.dtype) * self.sign
            if self.mean_shape is None:
                m = mean.repeat(c // len(mean)).view(1, c, 1, 1)
            else:
                m = mean.repeat(c * h * w // len(mean)).view(1, c, h, w)
            top = (outs * (ins * x.detach().reshape(n, c, h, w) + ms * m)).reshape(x.shape)
            tops.append(_NoBackward.apply(x, top, f"layer '{self.name}' (Mean)") if x.requires_grad else top)
        return tuple(tops)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(63)
        return [Example('name: "m" type: "Mean" bottom: "a" bottom: "b" top: "ma" top: "mb" mean_param { operation: '
                        'SUBTRACT value: 0.4 value: 0.5 value: 0.6 input_scale: 2 output_scale: 0.5 }',
                        [r.random((2, 3, 2, 3)), r.random((1, 6, 1, 2))], grad_bottoms=())]


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 corner-aligned bilinear weights of one axis, as Accum's ``Forward_cpu``."""
    pos = ((np.arange(n_out, dtype=f32) / f32(n_out - 1)).astype(f32) * f32(n_in - 1)).astype(f32)
    tl = np.floor(pos).astype(np.int64)
    d = (pos - tl.astype(f32)).astype(f32)
    m = np.zeros((n_out, n_in), dtype=f32)
    rows = np.arange(n_out)
    m[rows, tl] += f32(1) - d
    nxt = tl + 1 < n_in  # past the last row/column the fork's weight is 0
    m[rows[nxt], tl[nxt] + 1] += d[nxt]
    return m


@register_layer("Accum")
class Accum(Layer):
    """FlowNet 2.0's Accum: resize and concatenate (module docstring)."""

    min_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.reference = bool(self.param.accum_param.have_reference)
        if self.reference and len(bottom_shapes) < 2:
            raise self.error("accum_param.have_reference needs at least two bottoms (the last is the reference); "
                             f"received {len(bottom_shapes)}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        ap = self.param.accum_param
        shapes = [legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(bottom_shapes)]
        data = shapes[:-1] if self.reference else shapes
        if any(s[0] != shapes[0][0] for s in data):
            raise self.error(f"all accumulated bottoms must have the same number of images; received {bottom_shapes}")
        if self.reference:
            height, width = shapes[-1][2:]
        else:
            mh, mw = max(s[2] for s in data), max(s[3] for s in data)
            if ap.HasField("size_divisible_by"):
                sdb = f32(ap.size_divisible_by)
                th, tw = int(math.ceil(f32(mh) / sdb) * sdb), int(math.ceil(f32(mw) / sdb) * sdb)
            else:
                th, tw = int(ap.top_height), int(ap.top_width)
            height, width = (th, tw) if th > mh and tw > mw else (mh, mw)
        if height == 1 or width == 1:
            raise self.error(f"a top of height or width 1 divides by zero in the fork's interpolation; the top would be "
                             f"{height} x {width}")
        return [(shapes[0][0], sum(s[1] for s in data), height, width)]

    def forward(self, *bottoms: Tensor) -> Tensor:  # type: ignore[override]
        top = self.reshape([tuple(b.shape) for b in bottoms])[0]
        data = bottoms[:-1] if self.reference else bottoms
        outs = []
        for b in data:
            x = b.reshape(legacy_shape(tuple(b.shape), self))
            wy = torch.as_tensor(_interp_matrix(x.shape[2], top[2]), device=x.device).to(x.dtype)
            wx = torch.as_tensor(_interp_matrix(x.shape[3], top[3]), device=x.device).to(x.dtype)
            outs.append(torch.einsum("oh,nchw,pw->ncop", wy, x, wx))
        return torch.cat(outs, 1)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(64)
        a, b = r.standard_normal((2, 2, 3, 4)), r.standard_normal((2, 1, 5, 7))
        return [Example('name: "acc" type: "Accum" bottom: "a" bottom: "b" top: "y"', [a, b], grad_bottoms=(0, 1)),
                Example('name: "acc" type: "Accum" bottom: "a" bottom: "b" top: "y" accum_param { size_divisible_by: 4 }',
                        [a, b], grad_bottoms=(0, 1)),
                Example('name: "acc" type: "Accum" bottom: "a" bottom: "ref" top: "y" accum_param { have_reference: true }',
                        [a, b], grad_bottoms=(0,))]
