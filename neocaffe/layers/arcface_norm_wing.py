"""xialuxi/arcface-caffe's AdaCos feature normalization ``NormL2`` and its landmark loss ``WingLoss``.

Source: xialuxi/arcface-caffe @ 30ba26ad (``AdaCos/normL2_layer.{cpp,cu}``,
``landmark_and_pose/wing_loss_layer.{cpp,cu}``; ``WingLossParameter`` from ``landmark_and_pose/readme.md``).

**NormL2** (no parameter): per item (row i of the flattened N x D bottom)
``y = x / sqrt(sum x^2 + 1e-7)`` (the scale ``1 / sqrt(.)`` in double, as both files). The top has Caffe's
legacy 4-D shape (N, C, H, W) (a 2-axis bottom gives N x D x 1 x 1), as the fork's Reshape. Backward, the
fork's (also the true gradient): ``dx = (dy - y * (y . dy)) / sqrt(x . x + 1e-7)``. Deviation: not in place
(the fork's in-place backward would read y where it reads x).

**WingLoss** (``wing_loss_param { w epsilon }``, defaults 10 and 2): with ``d = b0 - b1`` (same count),
``loss = sum(w ln(1 + |d| / epsilon) where |d| < w, else |d| - C) / N``, ``C = w (1 - ln(1 + w / epsilon))``.
Backward to bottom 0 only: ``sign(d) w / (|d| + epsilon)`` or ``sign(d)``, times ``loss_weight / N`` (the true
gradient off the kinks). The fork's files do not compile as committed (``one_dot_data`` undeclared in the
``.cpp``, a ``const`` output in the ``.cu`` forward kernel); the formulas of both are the same and are followed.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer

NORM_EPS = 1e-7  # normL2_layer.cpp: added to the sum of squares (in double)


class _NormL2Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:  # type: ignore[override]
        inv = (1.0 / torch.sqrt((rows * rows).sum(1, keepdim=True).double() + NORM_EPS)).to(rows.dtype)
        y = rows * inv
        ctx.save_for_backward(y, inv)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        y, inv = ctx.saved_tensors  # x . x + 1e-7 is the forward's sum: the same scale
        return (dy - y * (y * dy).sum(1, keepdim=True)) * inv


@register_layer("NormL2")
class NormL2Layer(Layer):
    """AdaCos's per-item L2 normalization (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if not s or s[0] == 0:
            raise self.error(f"needs a bottom of at least one item (axis 0); received shape {s}")
        return [legacy_shape(s, self)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return _NormL2Fn.apply(x.reshape(x.shape[0], -1)).reshape(legacy_shape(tuple(x.shape), self))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(2)
        return [Example('name: "norm_fc5" type: "NormL2" bottom: "fc5" top: "norm_fc5"', [r.standard_normal((3, 6))]),
                Example('name: "n" type: "NormL2" bottom: "x" top: "y"', [r.standard_normal((2, 3, 2, 2))])]


class _WingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, w: float, eps: float, c: float) -> Tensor:  # type: ignore[override]
        d = a - b.reshape(a.shape)
        ad = d.abs()
        log_abs = torch.log(ad * (1.0 / eps) + 1) * w      # axpy(1 / epsilon) on ones, log, scal(w)
        loss = torch.where(ad < w, log_abs, ad - c).sum()
        num = a.shape[0]
        ctx.save_for_backward(d)
        ctx.w, ctx.eps, ctx.num = w, eps, num
        return loss / num

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (d,) = ctx.saved_tensors
        ad, sign = d.abs(), torch.sign(d)
        grad = torch.where(ad < ctx.w, sign * ctx.w / (ad + ctx.eps), sign)
        return grad * (g / ctx.num), None, None, None, None


@register_layer("WingLoss")
class WingLossLayer(_LossLayer):
    """The Wing loss for landmark regression (see the module docstring)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.wing_loss_param
        self.w, self.eps = float(np.float32(p.w)), float(np.float32(p.epsilon))
        if not self.w > 0 or not self.eps > 0:
            raise self.error(f"wing_loss_param needs w > 0 and epsilon > 0; received w {self.w:g}, "
                             f"epsilon {self.eps:g}")
        self.c = float(np.float32(self.w * (1.0 - math.log(1.0 + self.w / self.eps))))
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        out = super().reshape(bottom_shapes)
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if math.prod(a) != math.prod(b) or not a:
            raise self.error(f"predictions and targets must have one count (the fork subtracts them "
                             f"elementwise); received {a} and {b}")
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        w, eps, c = ((float(np.float32(v)) for v in (self.w, self.eps, self.c)) if a.dtype != torch.float64
                     else (self.w, self.eps, self.c))
        return _WingFn.apply(a, b.detach(), w, eps, c)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(158)
        b = r.standard_normal((3, 8))
        # |d| kept off 0 and off w (the kinks)
        d1 = r.choice([-1, 1], (3, 8)) * r.uniform(0.1, 20.0, (3, 8))
        d1 = np.where(np.abs(np.abs(d1) - 10) < 0.2, d1 * 1.1, d1)
        d2 = r.choice([-1, 1], (3, 8)) * r.uniform(0.05, 0.5, (3, 8))
        d2 = np.where(np.abs(np.abs(d2) - 0.25) < 0.02, d2 * 1.2, d2)
        base = 'name: "loss" type: "WingLoss" bottom: "fc" bottom: "landmark" top: "loss" '
        return [Example(base, [b + d1, b], phase=TRAIN),
                Example(base + "wing_loss_param { w: 0.25 epsilon: 0.1 }", [(b + d2).reshape(3, 8, 1, 1), b])]
