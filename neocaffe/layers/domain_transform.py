"""DeepLab's ``DomainTransform`` and ``DomainTransformForwardOnly``: edge-aware recursive filtering of
scores guided by a learned edge map (Chen et al., CVPR 2016, "DT-EdgeNet").

Lineage and source files: hszhao/PSPNet @ 798bdc9 (DeepLab v2's caffe), ``src/caffe/layers/domain_transform_layer.cpp``
and ``domain_transform_forward_only_layer.cpp``.

Fields read (``domain_transform_param``): ``num_iter`` (> 0), ``spatial_sigma`` and ``range_sigma``
(> 0), ``min_weight`` (>= 0). Bottoms: the scores (N, C, H, W), the reference gradient (N, 1, H, W) and
each image's size (N, 1, 1, 2: height, width as ImageSegData's ``data_dim`` gives it; at most H, W).
For iteration ``k`` the weight image is ``clip(exp(-sqrt(2) / s_k * (1 + g * spatial / range)),
min_weight, 1)`` with ``s_k = spatial * sqrt(3) * 2^(num_iter - k - 1) / sqrt(4^num_iter - 1)``, and every
channel is filtered left to right, right to left, top to bottom and bottom to top inside the image's
size (``y[i] += w[i] * (y[i-1] - y[i])`` along each pass, the weight taken at the later pixel); pixels
outside the size are copied. DomainTransform's backward is the fork's: the exact adjoint of the
filtering for the scores, and for the reference gradient ``d w / d g = w * (-sqrt(2) / s_k) * spatial /
range`` also where the weight was clipped (the fork does not zero it there). DomainTransformForwardOnly
propagates nothing (its backward is commented out in the fork).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer


class _Weight(torch.autograd.Function):
    """The clipped weight image; backward as the fork's ComputeReferenceGradientDiff (no clip)."""

    @staticmethod
    def forward(ctx, g: Tensor, mult1: float, mult2: float, lo: float) -> Tensor:  # type: ignore[override]
        arg = (1 + g * mult2) * mult1  # float arithmetic, then the C library's double exp, as the fork
        w = torch.exp(arg.double()).to(g.dtype).clamp(min=lo, max=1.0)
        ctx.save_for_backward(w)
        ctx.k = mult1 * mult2
        return w

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        return grad * w * ctx.k, None, None, None


def _pass(y: Tensor, w: Tensor, dim: int, reverse: bool) -> Tensor:
    """One recursive pass along ``dim`` (-1: columns, -2: rows) of ``y`` (C, h, w) with weights ``w``
    (h, w): forward ``y[i] += w[i] * (y[i-1] - y[i])``; reverse ``y[i] += w[i+1] * (y[i+1] - y[i])``."""
    ys, ws = list(y.unbind(dim)), w.unbind(dim)
    n = len(ys)
    steps = range(n - 2, -1, -1) if reverse else range(1, n)
    for i in steps:
        j, k = (i + 1, i + 1) if reverse else (i - 1, i)
        ys[i] = ys[i] + ws[k] * (ys[j] - ys[i])
    return torch.stack(ys, dim)


class _DomainTransformBase(Layer):
    exact_bottoms = 3
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.domain_transform_param
        self.num_iter = int(p.num_iter)
        self.spatial, self.range = float(np.float32(p.spatial_sigma)), float(np.float32(p.range_sigma))
        self.min_weight = float(np.float32(p.min_weight))
        for name, ok, v in (("spatial_sigma", self.spatial > 0, self.spatial), ("range_sigma", self.range > 0, self.range),
                            ("min_weight", self.min_weight >= 0, self.min_weight), ("num_iter", self.num_iter > 0, self.num_iter)):
            if not ok:
                want = "non-negative" if name == "min_weight" else "positive"
                raise self.error(f"domain_transform_param.{name} must be {want}; received {v}")

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom < 2 and type(self) is DomainTransformLayer

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, g, dims = bottom_shapes
        if len(x) != 4:
            raise self.error(f"bottom 0 (scores) must be N x C x H x W; received {tuple(x)}")
        if tuple(g) != (x[0], 1, x[2], x[3]):
            raise self.error(f"bottom 1 (reference gradient) must be {(x[0], 1, x[2], x[3])} for scores {tuple(x)}; "
                             f"received {tuple(g)}")
        if not dims or dims[0] != x[0] or math.prod(dims[1:]) != 2:
            raise self.error(f"bottom 2 (image sizes) must hold (height, width) per image, e.g. {(x[0], 1, 1, 2)}; "
                             f"received {tuple(dims)}")
        return [tuple(x)]

    def _mults(self, k: int) -> tuple[float, float]:
        sigma = float(np.float32(self.spatial * math.sqrt(3.0) * 2.0 ** (self.num_iter - (k + 1.0))
                                 / math.sqrt(4.0 ** self.num_iter - 1.0)))
        return float(np.float32(-math.sqrt(2.0) / sigma)), float(np.float32(self.spatial) / np.float32(self.range))

    def forward(self, x: Tensor, g: Tensor, dims: Tensor) -> Tensor:  # type: ignore[override]
        n, _, hh, ww = x.shape
        sizes = dims.detach().reshape(n, 2).to(torch.int64).tolist()  # static_cast<int>
        outs = []
        for i, (h, w) in enumerate(sizes):
            if not (0 <= h <= hh and 0 <= w <= ww):
                raise self.error(f"image {i}: size {h}x{w} (bottom 2) is not within the scores' {hh}x{ww}")
            y = x[i]
            if h and w:
                inner = y[:, :h, :w]
                for k in range(self.num_iter):
                    m1, m2 = self._mults(k)
                    wt = _Weight.apply(g[i, 0, :h, :w], m1, m2, self.min_weight)
                    for dim, rev in ((-1, False), (-1, True), (-2, False), (-2, True)):
                        inner = _pass(inner, wt, dim, rev)
                y = torch.cat([torch.cat([inner, y[:, :h, w:]], -1), y[:, h:]], -2)
            outs.append(y)
        return torch.stack(outs)

    @classmethod
    def _example(cls, grads: tuple[int, ...]) -> list[Example]:
        r = np.random.default_rng(23)
        return [Example(f'name: "dt" type: "{cls.type_name}" bottom: "x" bottom: "g" bottom: "dim" top: "y" '  # type: ignore[attr-defined]
                        "domain_transform_param { num_iter: 2 spatial_sigma: 5 range_sigma: 0.5 min_weight: 0.1 }",
                        [r.standard_normal((2, 2, 4, 5)), r.uniform(0, 0.2, (2, 1, 4, 5)),
                         np.array([4, 5, 3, 4], float).reshape(2, 1, 1, 2)], grad_bottoms=grads)]


@register_layer("DomainTransform")
class DomainTransformLayer(_DomainTransformBase):
    """See the module docstring."""

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        # the reference gradient's backward ignores the clip (the fork's formula): min_weight 0.1 stays
        # below every weight of the example, so the gradient check of bottom 1 holds there
        return cls._example((0, 1))


@register_layer("DomainTransformForwardOnly")
class DomainTransformForwardOnlyLayer(_DomainTransformBase):
    """See the module docstring: DomainTransform's forward, no backward."""

    def forward(self, x: Tensor, g: Tensor, dims: Tensor) -> Tensor:  # type: ignore[override]
        with torch.no_grad():
            return super().forward(x.detach(), g.detach(), dims)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return cls._example(())
