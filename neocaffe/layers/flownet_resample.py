"""FlowNet 2.0's resizing layers without a backward: ``Resample`` (``resample_param``) and ``Downsample``
(``downsample_param``).

Lineage: lmb-freiburg/flownet2 @ b92e198b56b0e52e1ba0a5a98dc0e39fa5ae70cc, ``src/caffe/layers/resample_layer.
{cpp,cu,hpp}`` and ``downsample_layer.{cpp,cu}``, ``include/caffe/layers/downsample_layer.hpp`` (CPU forwards are
``NOT_IMPLEMENTED`` or fatal: the CUDA kernels are the semantics). Both declare ``AllowBackward() = false``: the
fork's Net never runs their backward and their tops need none, so here the tops carry no gradient.

**Resample**: bottom 0 (N, C, H, W); the top size is ``resample_param`` ``height`` x ``width`` (1 bottom) or
bottom 1's height x width (2 bottoms). ``fx = W / out_w``, ``fy = H / out_h`` (float32); output (yo, xo) sits at
``x_in = xo fx + fy / 2 - 0.5``, ``y_in = yo fy + fx / 2 - 0.5`` (the fork's half-pixel offsets swap fx and fy:
kept). ``type``: NEAREST takes the input at ``round(y_in), round(x_in)`` (CUDA's round, half away from zero);
LINEAR (triangle, kernel width 2) and CUBIC (``a = -0.5`` cubic, width 4) weigh the inputs within ``r`` of
``round(x_in)`` (``r = 2`` where ``f < 1``, else ``ceil(width * f)`` with antialias, ``ceil(width)`` without) by
``a_x k(a_x dx) * a_y k(a_y dy)``, ``a = 1 / f`` where antialiasing (``antialias`` and f > 1 on either axis) else 1,
skipping inputs outside the image, and divide by the sum of the weights (0 where it is 0). AREA: the fork refuses
it at set-up ("only CUBIC, LINEAR and NEAREST"), and so does this layer. ``factor`` is read by nothing.
Deviation: a NEAREST index past the image reads the flat blob as the fork does (the next row's pixel) and is
clamped to the blob where the fork would read outside it.

**Downsample**: bottom 0 (N, C, H, W); top ``downsample_param`` ``top_height`` x ``top_width`` (1 bottom) or
bottom 1's size (2 bottoms). Equal sizes: the top is the bottom (the fork shares data and diff, so a gradient
passes there). Otherwise, in float32 as the kernel: ``ws = (W - 1) / (tw - 1)``, radius ``ceil(ws)`` (rows
likewise), output x at ``botx = x / (tw - 1) * (W - 1)``; the inputs within the radius of ``round(botx)`` weigh
``max(0, 1 - |bx - botx| / ws) * max(0, 1 - |by - boty| / hs)``; NaN inputs add their weight to a NaN weight and
nothing else; the top is NaN where ``nan_weight / weight > 0.5`` and ``sum / weight`` elsewhere. A top of height
or width 1 with a larger bottom divides by zero in the fork: an error here. Inputs are taken as finite or NaN
(an infinite input spreads NaN through the weighted sums here, only through its window in the fork).

Both run the fork's Reshape only at set-up (``reshape_every_iter`` set false); here shapes follow the bottoms
of each forward. Tested against loop ports of the kernels in ``tests/layers/flownet_reference.py``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

_RT = caffe_pb2.ResampleParameter
f32 = np.float32


def _round_away(v: np.ndarray) -> np.ndarray:
    return (np.sign(v) * np.floor(np.abs(v) + f32(0.5))).astype(np.int64)


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = x * x * (f32(1.5) * x - f32(2.5)) + f32(1.0)
    far = x * (x * (f32(-0.5) * x + f32(2.5)) - f32(4.0)) + f32(2.0)
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, f32(0))).astype(f32)


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -1) & (x < 0), x + f32(1), np.where((x >= 0) & (x <= 1), f32(1) - x, f32(0))).astype(f32)


def resample_weights(n_in: int, n_out: int, pos: np.ndarray, a: np.float32, radius: int, cubic: bool) -> np.ndarray:
    """(n_out, n_in) float32 weights of one axis: ``a k(a (pos - i))`` for i within ``radius`` of round(pos)."""
    idx = np.arange(n_in)
    centre = _round_away(pos)[:, None]
    near = np.abs(idx[None, :] - centre) <= radius
    d = (pos[:, None] - idx[None, :].astype(f32)).astype(f32)
    k = (_cubic if cubic else _triangle)((a * d).astype(f32))
    return np.where(near, (a * k).astype(f32), f32(0))


def _apply(x: Tensor, wy: np.ndarray, wx: np.ndarray) -> Tensor:
    ty = torch.as_tensor(wy, device=x.device).to(x.dtype)
    tx = torch.as_tensor(wx, device=x.device).to(x.dtype)
    return torch.einsum("oh,nchw,pw->ncop", ty, x, tx)


@register_layer("Resample")
class Resample(Layer):
    """FlowNet 2.0's Resample (module docstring); no backward."""

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        rp = self.param.resample_param
        if rp.type not in (_RT.NEAREST, _RT.LINEAR, _RT.CUBIC):
            raise self.error(f"resample_param.type {_RT.ResampleType.Name(rp.type)} is not supported: the fork "
                             "implements only CUBIC, LINEAR and NEAREST interpolation")
        self.kind, self.antialias = int(rp.type), bool(rp.antialias)

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the fork's AllowBackward() is false

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c, _, _ = legacy_shape(bottom_shapes[0], self)
        if len(bottom_shapes) == 2:
            _, _, th, tw = legacy_shape(bottom_shapes[1], self, "bottom 1")
        else:
            th, tw = int(self.param.resample_param.height), int(self.param.resample_param.width)
        if th < 1 or tw < 1:
            raise self.error(f"the top must have height and width > 0 (resample_param.height/width, or bottom 1's "
                             f"size); received {th} x {tw}")
        return [(n, c, th, tw)]

    def forward(self, *bottoms: Tensor) -> Tensor:  # type: ignore[override]
        top = self.reshape([tuple(b.shape) for b in bottoms])[0]
        x = bottoms[0].detach().reshape(legacy_shape(tuple(bottoms[0].shape), self))
        with torch.no_grad():
            return self._resample(x, top[2], top[3])

    def _resample(self, x: Tensor, oh: int, ow: int) -> Tensor:
        n, c, h, w = x.shape
        fx, fy = f32(w) / f32(ow), f32(h) / f32(oh)
        xin = (np.arange(ow, dtype=f32) * fx + fy / f32(2) - f32(0.5)).astype(f32)
        yin = (np.arange(oh, dtype=f32) * fy + fx / f32(2) - f32(0.5)).astype(f32)
        if self.kind == _RT.NEAREST:
            yi, xi = _round_away(yin), _round_away(xin)
            planes = torch.arange(n * c, device=x.device).view(-1, 1, 1) * (h * w)
            rel = torch.as_tensor((yi[:, None] * w + xi[None, :]), device=x.device)
            flat = (planes + rel).clamp(0, n * c * h * w - 1)
            return x.reshape(-1)[flat.reshape(-1)].reshape(n, c, oh, ow)
        cubic = self.kind == _RT.CUBIC
        width = 4 if cubic else 2
        aa = bool(fx > 1 or fy > 1) and self.antialias
        ax, ay = f32(1) / (fx if aa else f32(1)), f32(1) / (fy if aa else f32(1))
        rx = 2 if fx < 1 else int(math.ceil(f32(width) / ax))
        ry = 2 if fy < 1 else int(math.ceil(f32(width) / ay))
        wx, wy = resample_weights(w, ow, xin, ax, rx, cubic), resample_weights(h, oh, yin, ay, ry, cubic)
        num = _apply(x, wy, wx)
        den = torch.as_tensor(np.outer(wy.sum(1, dtype=np.float64), wx.sum(1, dtype=np.float64)),
                              device=x.device).to(x.dtype)
        return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(51)
        x = r.standard_normal((2, 3, 6, 8))
        head = 'name: "rs" type: "Resample" bottom: "x" top: "y" '
        return [Example(head + "resample_param { width: 5 height: 3 type: LINEAR }", [x], grad_bottoms=()),
                Example(head + "resample_param { width: 12 height: 9 type: CUBIC antialias: false }", [x],
                        grad_bottoms=()),
                Example('name: "rs" type: "Resample" bottom: "x" bottom: "ref" top: "y" '
                        "resample_param { type: NEAREST }", [x, np.zeros((1, 1, 4, 4))], grad_bottoms=())]


@register_layer("Downsample")
class Downsample(Layer):
    """FlowNet 2.0's Downsample (module docstring); no backward."""

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1
    allow_in_place = False

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the fork's AllowBackward() is false

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c, h, w = legacy_shape(bottom_shapes[0], self)
        if len(bottom_shapes) == 2:
            _, _, th, tw = legacy_shape(bottom_shapes[1], self, "bottom 1")
        else:
            th, tw = int(self.param.downsample_param.top_height), int(self.param.downsample_param.top_width)
        if th < 1 or tw < 1:
            raise self.error(f"the top must have height and width > 0 (downsample_param.top_height/top_width, or "
                             f"bottom 1's size); received {th} x {tw}")
        if (th, tw) != (h, w) and (th == 1 and h > 1 or tw == 1 and w > 1):
            raise self.error(f"a top of height or width 1 from a larger bottom divides by zero in the fork's kernel; "
                             f"received bottom {h} x {w}, top {th} x {tw}")
        return [(n, c, th, tw)]

    def forward(self, *bottoms: Tensor) -> Tensor:  # type: ignore[override]
        top = self.reshape([tuple(b.shape) for b in bottoms])[0]
        x = bottoms[0].reshape(legacy_shape(tuple(bottoms[0].shape), self))
        if tuple(x.shape[2:]) == top[2:]:
            return x.view(top)  # the fork's ShareData/ShareDiff
        x = x.detach()
        with torch.no_grad():
            wy, wx = (_tent(b, t) for b, t in ((x.shape[2], top[2]), (x.shape[3], top[3])))
            nan = torch.isnan(x)
            value = _apply(torch.where(nan, torch.zeros_like(x), x), wy, wx)
            weight = _apply((~nan).to(x.dtype), wy, wx)
            nan_weight = _apply(nan.to(x.dtype), wy, wx)
            return torch.where(nan_weight / weight > 0.5, torch.full_like(value, float("nan")), value / weight)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(52)
        x = r.standard_normal((2, 2, 9, 13))
        return [Example('name: "ds" type: "Downsample" bottom: "x" top: "y" downsample_param { top_height: 4 '
                        'top_width: 5 }', [x], grad_bottoms=()),
                Example('name: "ds" type: "Downsample" bottom: "x" bottom: "ref" top: "y"', [x, np.zeros((1, 2, 3, 7))],
                        grad_bottoms=())]


def _tent(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 Downsample weights of one axis: ``max(0, 1 - |b - pos| / scale)`` within
    ``ceil(scale)`` of ``round(pos)``, ``pos = o / (n_out - 1) * (n_in - 1)``, ``scale = (n_in - 1) / (n_out - 1)``."""
    if n_out == n_in:
        return np.eye(n_in, dtype=f32)
    scale = f32(n_in - 1) / f32(n_out - 1)
    pos = ((np.arange(n_out, dtype=f32) / f32(n_out - 1)).astype(f32) * f32(n_in - 1)).astype(f32)
    idx = np.arange(n_in)
    near = np.abs(idx[None, :] - _round_away(pos)[:, None]) <= int(math.ceil(scale))
    wt = np.maximum(f32(0), f32(1) - (np.abs(idx[None, :].astype(f32) - pos[:, None]) / scale).astype(f32))
    return np.where(near, wt, f32(0)).astype(f32)
