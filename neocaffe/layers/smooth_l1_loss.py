"""Fast R-CNN's ``SmoothL1Loss`` (rbgirshick/caffe-fast-rcnn, branch ``faster-rcnn`` @ 4115385d,
``src/caffe/layers/smooth_L1_loss_layer.cu``; the fork has no CPU version: the GPU kernels are the
reference), and Cascade R-CNN's form of it (zhaoweicai/cascade-rcnn @ 2252f46, the same file): the same loss
and backward, plus an optional second top, the per-instance loss (N, 1, H, W) (the weighted errors summed
over channels; HardMining ranks rois by it). The forms are told apart by the number of tops (Fast R-CNN's
layer takes exactly one), so no field or lineage is needed."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer


class _SmoothL1Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, w_in: Tensor | None, w_out: Tensor | None, sigma2: float):  # type: ignore[override]
        d = a - b.reshape(a.shape)
        if w_in is not None:
            d = w_in.reshape(a.shape) * d
        # the kernel compares and evaluates in double (1.0 / sigma2, 0.5 * val * val * sigma2), stores Dtype
        d64 = d.to(torch.float64)
        small = d64.abs() < 1.0 / sigma2
        err = torch.where(small, 0.5 * d64 * d64 * sigma2, d64.abs() - 0.5 / sigma2).to(a.dtype)
        if w_out is not None:
            err = w_out.reshape(a.shape) * err
        num = a.shape[0] if a.dim() else 1
        ctx.save_for_backward(d, small, w_in, w_out)
        ctx.num, ctx.sigma2, ctx.b_shape = num, sigma2, b.shape
        return err.sum() / num

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        d, small, w_in, w_out = ctx.saved_tensors
        s2 = torch.tensor(ctx.sigma2, dtype=d.dtype, device=d.device)
        dd = torch.where(small, s2 * d, torch.sign(d))
        grads = []
        for i, sign in ((0, 1.0), (1, -1.0)):
            if not ctx.needs_input_grad[i]:
                grads.append(None)
                continue
            gi = (sign * g / ctx.num) * dd
            if w_in is not None:
                gi = w_in.reshape(d.shape) * gi
                gi = w_out.reshape(d.shape) * gi
            grads.append(gi if i == 0 else gi.reshape(ctx.b_shape))
        return grads[0], grads[1], None, None, None


def _legacy_chw(shape: Shape) -> tuple[int, ...]:
    """Blob's legacy channels, height, width (1 past the last axis), what the fork's Reshape compares."""
    return tuple(int(shape[i]) if i < len(shape) else 1 for i in (1, 2, 3)) + tuple(shape[4:])


@register_layer("SmoothL1Loss")
class SmoothL1Loss(_LossLayer):
    """Fast R-CNN's smooth L1 loss (caffe-fast-rcnn ``smooth_L1_loss_layer.cu``).

    Bottoms: predictions, targets, and optionally both the inside and the outside weights (3 and 4).
    ``d = w_in * (b0 - b1)``; ``loss = sum(w_out * f(d)) / num`` with ``f(x) = 0.5 (sigma x)^2`` where
    ``|x| < 1 / sigma^2`` else ``|x| - 0.5 / sigma^2`` (``smooth_l1_loss_param.sigma``, default 1).
    Backward to both bottoms 0 and 1 (``±top_diff / num * f'(d) * w_in * w_out``, with
    ``f'(x) = sigma^2 x`` or ``sign(x)``); the weights get none.

    Cascade R-CNN's form (a second top): top 1 is (N, 1, H, W), ``sum_c w_out * f(d)`` per instance and
    position (the fork's ``kernel_channel_sum``); it carries no gradient (the fork's backward reads top 0 only)
    and, as any LossLayer's top past the first, has loss weight 0 by default.
    """

    exact_bottoms = None
    exact_tops = None
    min_tops = 1
    max_tops = 2
    min_bottoms = 2
    max_bottoms = 4

    def setup(self, bottom_shapes: list[Shape]) -> None:
        sigma = np.float32(self.param.smooth_l1_loss_param.sigma)
        self.sigma2 = float(sigma * sigma)  # float * float in the fork
        if len(bottom_shapes) == 3:
            raise self.error("If weights are used, must specify both inside and outside weights "
                             "(bottoms 3 and 4); received 3 bottoms")

    def allow_force_backward(self, bottom: int) -> bool:
        return True  # the fork overrides LossLayer's rule: both inputs may get diffs

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        super().reshape(bottom_shapes)
        a = bottom_shapes[0]
        for i, s in enumerate(bottom_shapes[1:], start=1):
            if _legacy_chw(s) != _legacy_chw(a):
                raise self.error(f"bottom {i} must have the channels, height and width of bottom 0 "
                                 f"{tuple(a)}; received {tuple(s)}")
        if len(self.param.top) == 2:  # Cascade R-CNN's per-instance loss: (num, 1, height, width)
            n, _, h, w = (tuple(a) + (1,) * 4)[:4]
            return [(), (n, 1, h, w)]
        return [()]

    def forward(self, a: Tensor, b: Tensor, w_in: Tensor | None = None, w_out: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if w_in is not None:
            w_in, w_out = w_in.detach(), w_out.detach()
        if len(self.param.top) < 2:
            return _SmoothL1Fn.apply(a, b, w_in, w_out, self.sigma2)
        with torch.no_grad():                   # Cascade R-CNN's second top: the per-instance loss
            d = a - b.reshape(a.shape)
            if w_in is not None:
                d = w_in.reshape(a.shape) * d
            d64 = d.to(torch.float64)
            err = torch.where(d64.abs() < 1.0 / self.sigma2, 0.5 * d64 * d64 * self.sigma2,
                              d64.abs() - 0.5 / self.sigma2).to(a.dtype)
            if w_out is not None:
                err = w_out.reshape(a.shape) * err
            n, _, h, w = (tuple(a.shape) + (1,) * 4)[:4]
            per = err.reshape(n, -1, h * w).sum(1).reshape(n, 1, h, w)
        return _SmoothL1Fn.apply(a, b, w_in, w_out, self.sigma2), per

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(142)
        # |d| kept off the kink at 1 / sigma^2 (1, then 0.25) so finite differences stay on one branch
        d1 = r.choice([-1, 1], (4, 8)) * np.where(r.random((4, 8)) < 0.5, r.uniform(0.05, 0.9, (4, 8)), r.uniform(1.1, 3, (4, 8)))
        d2 = r.choice([-1, 1], (4, 8)) * np.where(r.random((4, 8)) < 0.5, r.uniform(0.02, 0.2, (4, 8)), r.uniform(0.3, 2, (4, 8)))
        b = r.standard_normal((4, 8))
        w_in, w_out = r.uniform(0.5, 2.0, (4, 8)), r.uniform(0.0, 1.5, (4, 8))
        base = 'name: "loss" type: "SmoothL1Loss" bottom: "a" bottom: "b" '
        return [Example(base + 'top: "loss"', [b + d1, b], grad_bottoms=(0, 1)),
                Example(base + 'top: "loss" top: "per"', [b + d1, b], grad_bottoms=(0, 1)),  # Cascade R-CNN's
                Example(base + 'bottom: "wi" bottom: "wo" top: "loss" smooth_l1_loss_param { sigma: 2 }',
                        [b + d2 / w_in, b, w_in, w_out], grad_bottoms=(0, 1))]
