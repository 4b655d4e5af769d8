"""FlowNet 2.0's correlation layers: ``Correlation`` (FlowNetC, PWC-Net's cost volume) and ``Correlation1D``
(DispNetCorr1D), both reading ``correlation_param``.

Lineage: lmb-freiburg/flownet2 @ b92e198b56b0e52e1ba0a5a98dc0e39fa5ae70cc, ``src/caffe/layers/correlation_layer.
{cpp,cu}``, ``correlation_layer1d.{cpp,cu}``, ``include/caffe/layers/correlation{,_1d}_layer.hpp`` (the CPU
paths are ``NOT_IMPLEMENTED``: the CUDA kernels are the semantics). NVlabs/PWC-Net's Caffe carries the same files.

Fields: ``kernel_size`` K (required, odd), ``max_displacement`` md (required), ``pad`` (both spatial sides for
Correlation, the width only for Correlation1D), ``stride_1`` s1, ``stride_2`` s2, ``correlation_type``
(MULTIPLY, SUBTRACT), ``single_direction`` (Correlation1D: -1 left, 0 both, 1 right). ``do_abs`` is read by
the fork and used by none of its kernels: it changes nothing here either.

Geometry, in the zero-padded bottoms: kr = (K - 1) / 2, border = md + kr, R = md / s2 (integer division).
Correlation: top (N, (2R + 1)^2, Ht, Wt), ``Ht = ceil((H + 2 pad - 2 border) / s1)`` (likewise Wt); channel
``(p + R) (2R + 1) + (o + R)`` holds the displacement (dy, dx) = (p s2, o s2); top (y, x) compares the K x K
patch of bottom 0 whose upper-left corner is (y s1 + md, x s1 + md) with bottom 1's patch displaced by (dy, dx).
Correlation1D pads only the width, ``Ht = ceil((H - 2 kr) / s1)``, the patch corner (y s1, x s1 + md), and
displacements dx = o s2 for o in [shift, shift + G), G = 2R + 1 (``single_direction`` 0, shift -R) or R + 1
(1: shift 0; -1: shift -(R + 1), as the fork writes it, so the leftmost reaches s2 past ``max_displacement``).
MULTIPLY: ``sum(patch0 * patch1) / (K * K * C)``; SUBTRACT: ``sum |patch0 - patch1| / (K * K * C)``.

Backward. MULTIPLY: the fork's ``CorrelateDataBackward{0,1}`` compute the gradient of the forward; here it is
autograd's. SUBTRACT: the fork's ``CorrelateDataBackward{0,1}Subtract`` read *both* padded bottoms at one
position, not the two positions the forward compared: the diff of bottom 0 at q is
``sum_d sg(q + d) A_d(q) / (K K C)`` and of bottom 1 at q ``-sum_d sg(q - d) A_d(q - d) / (K K C)``, where
``sg(r) = +1 if b0(r) >= b1(r) else -1`` (padding: +1) and ``A_d(q)`` sums the top diff of displacement d over
the top positions whose patch covers q. That is not the gradient of the forward: a
:class:`torch.autograd.Function` computes it as the fork does.

Deviation: Correlation1D with ``single_direction: -1`` reads s2 columns left of the padded row (the fork's flat
index runs into the previous row, or before the buffer for the first row); here those columns read as zeros.
Tested against loop ports of the CUDA kernels in ``tests/layers/flownet_reference.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

_CP = caffe_pb2.CorrelationParameter


@dataclass(frozen=True)
class Geometry:
    """Where a correlation reads: padding (pad_h, pad_w), extra zero margin (eh, ew) for reads past the
    fork's padded blob, the patch corner of top (0, 0) (y0, x0) in padded coordinates, K, s1, the top size,
    and the displacements (dy, dx) in top-channel order."""

    pad_h: int
    pad_w: int
    eh: int
    ew: int
    y0: int
    x0: int
    kernel: int
    stride1: int
    top_h: int
    top_w: int
    disps: tuple[tuple[int, int], ...]

    @property
    def rows(self) -> int:
        return (self.top_h - 1) * self.stride1 + self.kernel

    @property
    def cols(self) -> int:
        return (self.top_w - 1) * self.stride1 + self.kernel


def geometry(shape: tuple[int, int, int, int], kernel: int, md: int, pad: int, s1: int, s2: int,
             one_d: bool, single_direction: int = 0) -> Geometry:
    """The fork's Reshape arithmetic (see the module docstring); top sizes may come out < 1 (the caller checks)."""
    _, _, h, w = shape
    kr = (kernel - 1) // 2
    radius = md // s2
    if one_d:
        pad_h, pad_w, y0, x0 = 0, pad, 0, md
        top_h = math.ceil((h - 2 * kr) / s1)
        width = radius + 1 if single_direction != 0 else 2 * radius + 1
        shift = {-1: -width, 1: 0}.get(single_direction, -radius)
        disps = tuple((0, o * s2) for o in range(shift, shift + width))
    else:
        pad_h, pad_w, y0, x0 = pad, pad, md, md
        top_h = math.ceil((h + 2 * pad - 2 * (md + kr)) / s1)
        disps = tuple((p * s2, o * s2) for p in range(-radius, radius + 1) for o in range(-radius, radius + 1))
    top_w = math.ceil((w + 2 * pad_w - 2 * (md + kr)) / s1)
    rows, cols = (top_h - 1) * s1 + kernel, (top_w - 1) * s1 + kernel
    hp, wp = h + 2 * pad_h, w + 2 * pad_w
    eh = max([0] + [-(y0 + dy) for dy, _ in disps] + [y0 + dy + rows - hp for dy, _ in disps])
    ew = max([0] + [-(x0 + dx) for _, dx in disps] + [x0 + dx + cols - wp for _, dx in disps])
    return Geometry(pad_h, pad_w, eh, ew, y0, x0, kernel, s1, top_h, top_w, disps)


def _padded(x: Tensor, g: Geometry) -> Tensor:
    ph, pw = g.pad_h + g.eh, g.pad_w + g.ew
    return F.pad(x, (pw, pw, ph, ph)) if ph or pw else x


def _window(xp: Tensor, g: Geometry, dy: int = 0, dx: int = 0) -> Tensor:
    y, x = g.y0 + g.eh + dy, g.x0 + g.ew + dx
    return xp[:, :, y:y + g.rows, x:x + g.cols]


def _patch_sum(m: Tensor, g: Geometry) -> Tensor:
    """Sum over each top position's K x K patch (the map is already summed over channels)."""
    if g.kernel == 1 and g.stride1 == 1:
        return m
    hs, ws = (g.top_h - 1) * g.stride1 + 1, (g.top_w - 1) * g.stride1 + 1
    out = m[:, :, :hs:g.stride1, :ws:g.stride1]
    for j in range(g.kernel):
        for i in range(g.kernel):
            if i or j:
                out = out + m[:, :, j:j + hs:g.stride1, i:i + ws:g.stride1]
    return out


def correlate_multiply(a: Tensor, b: Tensor, g: Geometry) -> Tensor:
    """MULTIPLY forward (autograd gives the fork's backward, which is the true gradient)."""
    ap, bp = _padded(a, g), _padded(b, g)
    win = _window(ap, g)
    outs = [_patch_sum((win * _window(bp, g, dy, dx)).sum(1, keepdim=True), g) for dy, dx in g.disps]
    return torch.cat(outs, 1) / float(g.kernel * g.kernel * a.shape[1])


class _Subtract(torch.autograd.Function):
    """SUBTRACT: ``sum |patch0 - patch1| / (K K C)`` with the fork's sign-at-one-position backward."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, g: Geometry) -> Tensor:  # type: ignore[override]
        ap, bp = _padded(a, g), _padded(b, g)
        win = _window(ap, g)
        outs = [_patch_sum((win - _window(bp, g, dy, dx)).abs().sum(1, keepdim=True), g) for dy, dx in g.disps]
        ctx.save_for_backward(a, b)
        ctx.g = g
        return torch.cat(outs, 1) / float(g.kernel * g.kernel * a.shape[1])

    @staticmethod
    def backward(ctx, top_diff: Tensor):  # type: ignore[override]
        a, b = ctx.saved_tensors
        g: Geometry = ctx.g
        n_d = len(g.disps)
        ap, bp = _padded(a, g), _padded(b, g)
        sg = torch.where(ap >= bp, 1.0, -1.0).to(a.dtype)
        ones = torch.ones((n_d, 1, g.kernel, g.kernel), dtype=a.dtype, device=a.device)
        cover = F.conv_transpose2d(top_diff.contiguous(), ones, stride=g.stride1, groups=n_d)  # A_d on the patch box
        cover = cover[:, :, :g.rows, :g.cols]
        if cover.shape[2] < g.rows or cover.shape[3] < g.cols:
            cover = F.pad(cover, (0, g.cols - cover.shape[3], 0, g.rows - cover.shape[2]))
        g0, g1 = torch.zeros_like(ap), torch.zeros_like(bp)
        y, x = g.y0 + g.eh, g.x0 + g.ew
        for k, (dy, dx) in enumerate(g.disps):
            ak = cover[:, k:k + 1]
            g0[:, :, y:y + g.rows, x:x + g.cols] += _window(sg, g, dy, dx) * ak
            g1[:, :, y + dy:y + dy + g.rows, x + dx:x + dx + g.cols] -= _window(sg, g) * ak
        s = float(g.kernel * g.kernel * a.shape[1])
        h0, w0 = g.pad_h + g.eh, g.pad_w + g.ew
        h, w = a.shape[2], a.shape[3]
        da = g0[:, :, h0:h0 + h, w0:w0 + w] / s if ctx.needs_input_grad[0] else None
        db = g1[:, :, h0:h0 + h, w0:w0 + w] / s if ctx.needs_input_grad[1] else None
        return da, db, None


class _CorrelationBase(Layer):
    exact_bottoms = 2
    exact_tops = 1
    allow_in_place = False
    one_d = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        cp = self.param.correlation_param
        if not cp.HasField("kernel_size"):
            raise self.error("correlation_param.kernel_size is required (the fork's 'Filter kernel_size is not set')")
        if not cp.HasField("max_displacement"):
            raise self.error("correlation_param.max_displacement is required (the fork's 'Max displacement is required.')")
        self.kernel, self.md, self.pad = int(cp.kernel_size), int(cp.max_displacement), int(cp.pad)
        self.s1, self.s2 = int(cp.stride_1), int(cp.stride_2)
        if self.kernel % 2 == 0:
            raise self.error(f"correlation_param.kernel_size must be odd; received {self.kernel}")
        for field, v in (("stride_1", self.s1), ("stride_2", self.s2)):
            if v < 1:
                raise self.error(f"correlation_param.{field} must be >= 1; received {v}")
        self.single_direction = int(cp.single_direction) if self.one_d else 0
        if self.single_direction not in (-1, 0, 1):
            raise self.error("correlation_param.single_direction must be -1 (left), 0 (off), or 1 (right); "
                             f"received {self.single_direction}")
        self.subtract = cp.correlation_type == _CP.SUBTRACT

    def _geometry(self, bottom_shapes: list[Shape]) -> Geometry:
        s0, s1_ = (legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(bottom_shapes))
        for what, i in (("number of images", 0), ("channels", 1), ("height", 2), ("width", 3)):
            if s0[i] != s1_[i]:
                raise self.error(f"both bottoms must have the same {what}; received shapes "
                                 f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        g = geometry(s0, self.kernel, self.md, self.pad, self.s1, self.s2, self.one_d, self.single_direction)
        if g.top_h < 1 or g.top_w < 1:
            raise self.error(f"correlation cannot be done with these settings: neighborhood and kernel do not fit in "
                             f"bottoms of shape {tuple(bottom_shapes[0])} (top would be {g.top_h} x {g.top_w})")
        return g

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        g = self._geometry(bottom_shapes)
        return [(legacy_shape(bottom_shapes[0], self)[0], len(g.disps), g.top_h, g.top_w)]

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        shape = (a.shape, b.shape)
        g = self._geometry([tuple(s) for s in shape])
        a4, b4 = a.reshape(legacy_shape(tuple(a.shape), self)), b.reshape(legacy_shape(tuple(b.shape), self))
        return _Subtract.apply(a4, b4, g) if self.subtract else correlate_multiply(a4, b4, g)

    def extra_repr(self) -> str:
        kind = "SUBTRACT" if self.subtract else "MULTIPLY"
        return (f"kernel_size={self.kernel}, max_displacement={self.md}, pad={self.pad}, stride_1={self.s1}, "
                f"stride_2={self.s2}, {kind}")


@register_layer("Correlation")
class Correlation(_CorrelationBase):
    """FlowNet's 2-D correlation (module docstring)."""

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(31)
        head = 'name: "corr" type: "Correlation" bottom: "a" bottom: "b" top: "c" correlation_param { '
        a, b = r.standard_normal((2, 2, 3, 4)), r.standard_normal((2, 2, 3, 4))
        return [
            Example(head + "pad: 1 kernel_size: 1 max_displacement: 1 stride_1: 1 stride_2: 1 }", [a, b],
                    grad_bottoms=(0, 1)),
            Example(head + "pad: 2 kernel_size: 3 max_displacement: 2 stride_1: 2 stride_2: 2 }", [a, b],
                    grad_bottoms=(0, 1)),
            # SUBTRACT's backward is the fork's formula, not the gradient: no gradient check
            Example(head + "pad: 1 kernel_size: 3 max_displacement: 1 correlation_type: SUBTRACT }", [a, b],
                    grad_bottoms=()),
        ]


@register_layer("Correlation1D")
class Correlation1D(_CorrelationBase):
    """FlowNet's horizontal correlation (module docstring)."""

    one_d = True

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(32)
        head = 'name: "corr" type: "Correlation1D" bottom: "a" bottom: "b" top: "c" correlation_param { '
        a, b = r.standard_normal((2, 2, 3, 5)), r.standard_normal((2, 2, 3, 5))
        return [
            Example(head + "pad: 2 kernel_size: 1 max_displacement: 2 stride_2: 1 }", [a, b], grad_bottoms=(0, 1)),
            Example(head + "pad: 2 kernel_size: 3 max_displacement: 2 stride_1: 2 single_direction: -1 }", [a, b],
                    grad_bottoms=(0, 1)),
            Example(head + "pad: 2 kernel_size: 1 max_displacement: 2 single_direction: 1 "
                    "correlation_type: SUBTRACT }", [a, b], grad_bottoms=()),
        ]
