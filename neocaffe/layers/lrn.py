"""LRN (local response normalization), Caffe's two regions, with Caffe's backward formulas.

Fields read (``lrn_param``): ``local_size`` (odd), ``alpha``, ``beta``, ``k``, ``norm_region``.
``engine`` is ignored.

ACROSS_CHANNELS: ``scale = k + alpha/local_size * sum_{window of local_size channels} x^2`` (zero
padded by ``(local_size-1)/2`` channels), ``y = x * scale^-beta``; backward
``dx = dy * scale^-beta - (2*alpha*beta/local_size) * x * sum_window(dy * y / scale)`` where ``y`` is
the top data as Caffe reads it (after later in-place layers). Caffe's CPU code accumulates the window
sums as a running sum over channels; here they are direct window sums (float32 rounding differences
only, no bias).

The opt-in ``fused`` speed mode runs ACROSS_CHANNELS as one Triton kernel per direction on CUDA
(``neocaffe.layers.triton_lrn``; Caffe's GPU running sum).

WITHIN_CHANNEL: Caffe composes Split, Power (x^2), AVE Pooling (kernel local_size, pad
(local_size-1)/2, stride 1, so every window divides by local_size^2, padded zeros included), Power
(``(1 + alpha * avg)^-beta``; ``k`` is not used) and Eltwise PROD; forward and backward follow those
layers' formulas step by step (bit-exact with Caffe's CPU results on the goldens). twhui/LiteFlowNet's Caffe
(@ e7d6c43b, ``lrn_layer.cpp``) reads ``lrn_param.shift`` as that Power layer's shift in place of 1
(``(shift + alpha * avg)^-beta``; default 1, so every other lineage's nets are unchanged).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers import triton_lrn
from neocaffe.layers.base import PLAIN, Example, Layer, LayerCall, Shape, TopRef
from neocaffe.layers.registry import register_layer

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


def _channel_window_sum(t: Tensor, size: int) -> Tensor:
    """Sum over a window of ``size`` channels centred on each channel (zero padded): shifted adds."""
    s = t.clone()
    for d in range(1, (size - 1) // 2 + 1):
        s[:, d:] += t[:, :-d]
        s[:, :-d] += t[:, d:]
    return s


def _across_scale(x: Tensor, size: int, alpha_over_size: float, k: float) -> Tensor:
    """Caffe's ``scale_``: k + alpha/n * (sum of squares over the channel window)."""
    return _channel_window_sum(x * x, size).mul_(alpha_over_size).add_(k)


class _CrossChannelLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha_over_size: float, beta: float, k: float,
                cache_ratio: float, top_ref: TopRef) -> Tensor:  # noqa: D102
        scale = _across_scale(x, size, alpha_over_size, k)
        y = x * scale.pow(-beta)
        ctx.save_for_backward(x, scale, y)  # like Caffe's scale_: scale^-beta is recomputed, not kept
        ctx.cfg = (size, beta, cache_ratio, top_ref)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # noqa: D102
        x, scale, y = ctx.saved_tensors
        size, beta, cache_ratio, top_ref = ctx.cfg
        top = top_ref.get(y)
        ratio = _channel_window_sum((dy * top).div_(scale), size)
        dx = dy * scale.pow(-beta)
        return dx.sub_(ratio.mul_(x).mul_(cache_ratio)), None, None, None, None, None, None


class _WithinChannelLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, diff_scale: float,  # noqa: D102
                shift: float = 1.0) -> Tensor:
        pad = (size - 1) // 2
        avg = F.avg_pool2d(x * x, size, 1, pad, count_include_pad=True)
        base = (avg * alpha).add_(shift) if alpha != 1.0 else avg + shift
        p = base.double().pow(-beta).to(base.dtype)  # rounds like Caffe's float powf
        ctx.save_for_backward(x, base, p)
        ctx.cfg = (size, diff_scale)
        return x * p

    @staticmethod
    def backward(ctx, dy: Tensor):  # noqa: D102
        x, base, p = ctx.saved_tensors
        size, diff_scale = ctx.cfg
        dx_prod = p * dy  # Eltwise PROD: the other bottom times the top diff
        dp = x * dy
        dpool = torch.zeros_like(dp) if diff_scale == 0 else dp * ((p / base) * diff_scale)  # Power backward
        # AVE pooling backward: each window spreads diff / size^2 over its (padded) inputs
        dsq = F.avg_pool2d(dpool / float(size * size), size, 1, (size - 1) // 2, divisor_override=1)
        dx_sq = dsq * (2.0 * x)  # Power(2) backward: 2x * diff
        return dx_prod + dx_sq, None, None, None, None, None


@register_layer("LRN")
class LRNLayer(Layer):
    """Caffe's LRNLayer (4-D bottoms)."""

    exact_bottoms = 1
    exact_tops = 1
    takes_call = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        lp = self.param.lrn_param
        self.size = int(lp.local_size)
        if self.size % 2 != 1:
            raise self.error(f"LRN only supports odd values for local_size; received {self.size}")
        self.region = int(lp.norm_region)
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise self.error(f"unknown norm_region {self.region}")
        f32 = np.float32
        self.alpha, self.beta, self.k = float(f32(lp.alpha)), float(f32(lp.beta)), float(f32(lp.k))
        self.shift = float(f32(lp.shift))  # LiteFlowNet's WITHIN_CHANNEL power shift (1 elsewhere)
        # Caffe's float constants: alpha_/size_ in float; 2.*alpha_*beta_/size_ in double, stored as float
        self.alpha_over_size = float(f32(lp.alpha) / f32(self.size))
        self.cache_ratio = float(f32(2.0 * self.alpha * self.beta / self.size))
        self.diff_scale = float(f32(-lp.beta) * f32(lp.alpha))  # PowerLayer: power_ * scale_
        self.fused = False  # the ``fused`` speed mode: Triton kernels where they can run (triton_lrn)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        if len(s) != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width); received shape {tuple(s)}")
        return [tuple(s)]

    def forward(self, x: Tensor, call: LayerCall = PLAIN) -> Tensor:  # type: ignore[override]
        if self.region == ACROSS_CHANNELS:
            if self.fused and triton_lrn.available(x)[0]:
                return triton_lrn.lrn(x, self.size, self.alpha_over_size, self.beta, self.k,
                                      self.cache_ratio, call.top(0))
            if not (x.requires_grad and torch.is_grad_enabled()):  # nothing to record: the forward alone
                return x * _across_scale(x, self.size, self.alpha_over_size, self.k).pow_(-self.beta)
            return _CrossChannelLRN.apply(x, self.size, self.alpha_over_size, self.beta, self.k,
                                          self.cache_ratio, call.top(0))
        return _WithinChannelLRN.apply(x, self.size, self.alpha, self.beta, self.diff_scale, self.shift)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(5)
        return [
            Example('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }',
                    [r.standard_normal((2, 7, 3, 4)) * 40]),
            Example('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }',
                    [r.standard_normal((2, 4, 3, 3)) * 2]),
            Example('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 '
                    'norm_region: WITHIN_CHANNEL }', [r.standard_normal((2, 3, 5, 6)) * 3]),
        ]
