"""R-FCN's OHEM losses: ``SoftmaxWithLossOHEM`` and ``SmoothL1LossOHEM``, losses that also give one loss
value per RoI (what ``BoxAnnotatorOHEM`` ranks to pick the hard examples).

Lineage: Microsoft/caffe @ 1a2be8e (the Caffe py-R-FCN names; R-FCN by Yi Li), ``src/caffe/layers/
softmax_loss_ohem_layer.{cpp,cu}`` and ``smooth_L1_loss_ohem_layer.{cpp,cu}`` (+ ``include/caffe/layers/
*_ohem_layer.hpp``). Both ``.cpp`` files leave ``Forward_cpu``/``Backward_cpu`` NOT_IMPLEMENTED: the GPU
code is the only reference, so there is no CPU/GPU disagreement to settle.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Shape, legacy_shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import (
    BATCH_SIZE, FLT_MIN, FULL, NONE, VALID, SoftmaxWithLoss, _LossLayer, _labels, _SoftmaxLossFn,
    normalization_mode, normalizer)
from neocaffe.proto import caffe_pb2

PRE_FIXED = caffe_pb2.LossParameter.PRE_FIXED  # 3003 here, the fork's 3 (proto/NUMBERING.md)


def _check_loss_weights(layer: _LossLayer) -> None:
    """The fork's LossLayer::LayerSetUp adds one ``loss_weight: 1`` when none is given, then
    Layer::SetLossWeights CHECKs one weight per top: a multi-top loss without loss_weight fails to build."""
    n = len(layer.param.top)
    if n > 1 and not len(layer.param.loss_weight):
        raise layer.error(f"loss_weight must be unspecified or specified once per top blob: with {n} tops and no "
                          f"loss_weight the fork's LossLayer adds a single loss_weight 1 (1 for {n} tops); received "
                          f"none; expected {n} (e.g. {' '.join(['loss_weight: 1'] + ['loss_weight: 0'] * (n - 1))})")


# -- SoftmaxWithLossOHEM ------------------------------------------------------------------------
class _SoftmaxLossOHEMFn(_SoftmaxLossFn):
    """SoftmaxWithLoss's forward plus the per-instance losses; the same backward (reused)."""

    @staticmethod
    def forward(ctx, x: Tensor, label: Tensor, axis: int, ignore: int | None, mode: int):  # type: ignore[override]
        outer, c = math.prod(x.shape[:axis]), x.shape[axis]
        inner = math.prod(x.shape[axis + 1:])
        prob = torch.softmax(x, dim=axis)
        lab = _labels(label).reshape(outer, 1, inner)
        valid = (lab != ignore) if ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        lab = torch.where(valid, lab, torch.zeros_like(lab))
        picked = prob.reshape(outer, c, inner).gather(1, lab).clamp(min=FLT_MIN)
        # the kernel writes 0 (not -0 * log p) for an ignored instance
        per = torch.where(valid, -torch.log(picked), torch.zeros_like(picked))
        vf = valid.to(x.dtype)
        norm = normalizer(mode, outer, inner, vf)
        ctx.save_for_backward(prob, lab, vf, norm)  # what _SoftmaxLossFn.backward reads
        ctx.shape3 = (outer, c, inner)
        loss = per.sum() / norm
        per = per.reshape(label.shape)
        ctx.mark_non_differentiable(prob, per)  # the returned tensors themselves
        return loss, prob, per

    @staticmethod
    def backward(ctx, g_loss: Tensor, g_prob: Tensor, g_per: Tensor):  # type: ignore[override]
        # the fork reads only top[0]'s diff: the probabilities' and the per-RoI losses' diffs are dropped
        return _SoftmaxLossFn.backward(ctx, g_loss, g_prob)


@register_layer("SoftmaxWithLossOHEM")
class SoftmaxWithLossOHEM(SoftmaxWithLoss):
    """SoftmaxWithLoss with up to three tops: the loss, the probabilities and the per-instance loss
    ``-log(max(p[label], FLT_MIN))`` (0 where the label is ignored), shaped like the labels
    (softmax_loss_ohem_layer.cu). Reads ``softmax_param.axis`` and ``loss_param {ignore_label
    normalization normalize}``; PRE_FIXED is refused (the fork's get_normalizer LOG(FATAL)s on it).

    Backward: SoftmaxWithLoss's, from top 0's diff alone; tops 1 and 2 carry no gradient. Default loss
    weight 1 on a single top; with 2 or 3 tops ``loss_weight`` must be given per top (the fork fails to
    build otherwise, see :func:`_check_loss_weights`). The fork uses bottom 0's diff as scratch for the
    per-instance losses and zeroes it at the end of forward (``Fix a bug, which happens when
    propagate_down[0] = false``): with ``propagate_down: false`` the bottom gets no diff, as here.
    """

    max_tops = 3

    def setup(self, bottom_shapes: list[Shape]) -> None:
        super().setup(bottom_shapes)
        if self.mode not in (FULL, VALID, BATCH_SIZE, NONE):
            name = caffe_pb2.LossParameter.NormalizationMode.Name(self.mode)
            raise self.error(f"loss_param.normalization {name} is unknown to SoftmaxWithLossOHEM (the fork's "
                             "get_normalizer); expected FULL, VALID, BATCH_SIZE or NONE")
        _check_loss_weights(self)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        tops = super().reshape(bottom_shapes[:2])[:2]
        return tops + [tuple(bottom_shapes[1])] * (len(self.param.top) - 2)

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        loss, prob, per = _SoftmaxLossOHEMFn.apply(x, label, self.axis, self.ignore, self.mode)
        return [loss, prob, per][: self.n_tops] if self.n_tops > 1 else loss

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(144)
        lab = r.integers(0, 3, (6, 1, 1, 1)).astype(float)
        lab[[1, 4]] = -1
        sp = r.integers(0, 3, (2, 1, 2, 2)).astype(float)
        sp[0, 0, 1, 0] = 255
        base = 'name: "loss" type: "SoftmaxWithLossOHEM" bottom: "x" bottom: "label" top: "loss"'
        return [
            Example(base, [r.standard_normal((5, 4)), r.integers(0, 4, (5,)).astype(float)]),
            Example(base + ' top: "prob" top: "per_roi" loss_weight: 1 loss_weight: 0 loss_weight: 0 '
                    'loss_param { ignore_label: -1 }', [r.standard_normal((6, 3, 1, 1)), lab]),
            Example(base + ' top: "prob" loss_weight: 1 loss_weight: 0 '
                    'loss_param { ignore_label: 255 normalize: false }', [r.standard_normal((2, 3, 2, 2)), sp]),
        ]


# -- SmoothL1LossOHEM ---------------------------------------------------------------------------
class _SmoothL1OHEMFn(torch.autograd.Function):
    """The fork's kernels: ``d = w * (b0 - b1)``; ``f(d) = 0.5 d^2`` if ``|d| < 1`` else ``|d| - 0.5``;
    backward ``±top_diff / normalizer * f'(d)`` with NO factor ``w`` (the true gradient has one)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, w: Tensor | None, norm: float, per_roi: bool):  # type: ignore[override]
        d = a - b.reshape(a.shape)
        if w is not None:
            d = w.reshape(a.shape) * d
        # the kernel evaluates 0.5 * val * val and abs_val - 0.5 in double and stores Dtype: both are one
        # rounding of the exact value, as the same operations in Dtype are
        absd = d.abs()
        small = absd < 1
        err = torch.where(small, 0.5 * d * d, absd - 0.5)
        norm_t = torch.tensor(norm, dtype=a.dtype, device=a.device)
        ctx.save_for_backward(d, small, norm_t)
        ctx.b_shape = b.shape
        if not per_roi:
            return err.sum() / norm_t
        n, c, h, wd = tuple(a.shape) + (1,) * (4 - a.dim())  # reshape checked <= 4 axes
        e = err.reshape(n, c, h * wd)
        per = torch.zeros((n, h * wd), dtype=a.dtype, device=a.device)
        for k in range(c):  # kernel_channel_sum: a Dtype sum over channels in order, from 0
            per = per + e[:, k]
        per = per.reshape(n, 1, h, wd)
        ctx.mark_non_differentiable(per)
        return err.sum() / norm_t, per

    @staticmethod
    def backward(ctx, g_loss: Tensor, *g_per: Tensor):  # type: ignore[override]
        d, small, norm_t = ctx.saved_tensors
        sign = (d > 0).to(d.dtype) - (d < 0).to(d.dtype)  # (0 < val) - (val < 0): 0 for NaN too
        fprime = torch.where(small, d, sign)
        alpha = g_loss / norm_t  # top[1]'s diff is never read
        ga = alpha * fprime if ctx.needs_input_grad[0] else None
        gb = ((-alpha) * fprime).reshape(ctx.b_shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None, None


@register_layer("SmoothL1LossOHEM")
class SmoothL1LossOHEM(_LossLayer):
    """R-FCN's smooth L1 loss with a per-RoI top (smooth_L1_loss_ohem_layer.cu). Bottoms: predictions,
    targets ``num x C [x H x W]`` and optionally inside weights ``w`` (no outside weights, no ``sigma``:
    ``smooth_l1_loss_param`` is not read). Tops: ``sum(f(w * (b0 - b1))) / normalizer`` and, optionally,
    the per-RoI loss ``num x 1 x H x W`` (the channel sum of ``f``; it carries no gradient).

    ``loss_param {normalization normalize pre_fixed_normalizer}``: FULL and VALID divide by
    ``num * H * W`` (there is no ignore label), BATCH_SIZE by ``num``, NONE by 1, PRE_FIXED by
    ``pre_fixed_normalizer``; then ``std::max(1, n)`` (so also 1 for NaN).

    Fork details followed here: the backward to bottoms 0 and 1 is ``±top_diff / normalizer * f'(d)``
    WITHOUT the factor ``w`` of the true gradient (equal to it for the 0/1 weights R-FCN feeds: ``f'(0)
    = 0``), the weights get no diff; LayerSetUp does not call LossLayer's, so no top has a default loss
    weight: a SmoothL1LossOHEM without ``loss_weight`` adds nothing to the net's loss. Every bottom
    allows force_backward. Bottoms are read through the legacy 4-axis accessors (at most 4 axes); the
    fork checks bottom 2's channels, height and width but not its num (it reads ``count`` values past a
    shorter one): here it must match bottom 0's num too.
    """

    exact_bottoms = None
    min_bottoms = 2
    max_bottoms = 3
    exact_tops = None
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        lp = self.param.loss_param
        self.mode = normalization_mode(lp)
        self.pre_fixed = float(lp.pre_fixed_normalizer)

    def allow_force_backward(self, bottom: int) -> bool:
        return True  # the fork's override

    def default_loss_weights(self) -> list[float]:
        return [0.0] * len(self.param.top)  # LossLayer::LayerSetUp never runs for this type

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        legacy = [legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(bottom_shapes)]
        super().reshape(bottom_shapes)
        n, c, h, w = legacy[0]
        for i, s in enumerate(bottom_shapes[1:], start=1):
            if legacy[i] != (n, c, h, w):
                raise self.error(f"bottom {i} must be {n} x {c} x {h} x {w} like bottom 0 {tuple(bottom_shapes[0])} "
                                 f"(num, channels, height, width); received shape {tuple(s)}")
        return [()] + [(n, 1, h, w)] * (len(self.param.top) - 1)

    def get_normalizer(self, shape: Shape, dtype: torch.dtype) -> float:
        """The fork's get_normalizer for a bottom of ``shape``, rounded to ``dtype`` (its Dtype)."""
        n, _, h, w = legacy_shape(shape, self)
        raw = {FULL: n * h * w, VALID: n * h * w, BATCH_SIZE: n, PRE_FIXED: self.pre_fixed, NONE: 1}[self.mode]
        v = torch.tensor(float(raw), dtype=dtype, device="cpu").item()
        return v if 1.0 < v else 1.0  # std::max(Dtype(1.0), normalizer)

    def forward(self, a: Tensor, b: Tensor, w: Tensor | None = None):  # type: ignore[override]
        self.reshape([tuple(t.shape) for t in (a, b, w) if t is not None])
        out = _SmoothL1OHEMFn.apply(a, b, None if w is None else w.detach(),
                                    self.get_normalizer(tuple(a.shape), a.dtype), self.n_tops > 1)
        return list(out) if self.n_tops > 1 else out

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(145)

        def off_kink(shape):  # |d| away from the kink at 1 so finite differences stay on one branch
            return r.choice([-1, 1], shape) * np.where(r.random(shape) < 0.5, r.uniform(0.05, 0.9, shape),
                                                       r.uniform(1.1, 3, shape))
        b = r.standard_normal((6, 8))
        binary = r.integers(0, 2, (6, 8)).astype(float)
        base = 'name: "loss" type: "SmoothL1LossOHEM" bottom: "a" bottom: "b" '
        return [
            Example(base + 'top: "loss" loss_weight: 1', [b + off_kink((6, 8)), b], grad_bottoms=(0, 1)),
            # 0/1 inside weights: the fork's backward (no factor w) is the true gradient, gradcheck holds
            Example(base + 'bottom: "w" top: "loss" top: "per_roi" loss_weight: 1 loss_weight: 0 '
                    'loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 3 }',
                    [b + off_kink((6, 8)), b, binary], grad_bottoms=(0, 1)),
            # other weights: the fork's backward leaves out w, so it is not the gradient of its forward;
            # no gradcheck (tests/layers/test_ohem_losses.py checks the fork's formula instead)
            Example(base + 'bottom: "w" top: "loss" top: "per_roi" loss_weight: 1 loss_weight: 0 '
                    'loss_param { normalize: false }',
                    [r.standard_normal((3, 4, 2, 2)), r.standard_normal((3, 4, 2, 2)), r.uniform(0, 2, (3, 4, 2, 2))],
                    grad_bottoms=()),
        ]
