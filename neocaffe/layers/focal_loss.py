"""The softmax focal loss: ``FocalLoss`` (``focal_loss_param``), Lin et al., "Focal Loss for Dense Object
Detection" (ICCV 2017), as the Caffe layer most forks and training prototxts copied.

Lineage: zimenglan-sysu-512/Focal-Loss @ d767cb96be497e660f5e3774fe54fc1b5c8e4fb5, ``focal_loss_layer.hpp``,
``focal_loss_layer.cpp`` (the semantics below), ``focal_loss_layer.cu`` (the same numbers), its README's
``FocalLossParameter`` (proto/NUMBERING.md, lineage focalloss; ``focal_loss_param`` = 3124 here). The code at
HEAD is the one after the fork's 2017-08-18 commit "multiply the p_t instead of dividing it" (``10e0034``):
its diff is ``grad * (p - onehot)`` where the version before wrote ``(grad / p_t) * p_t * (p - onehot)``
(the same value, but for rounding and p_t = 0); HEAD is followed.

Bottoms: scores x and labels (``outer * inner`` of them, read by ``static_cast<int>``); tops: the loss and,
optionally, the probabilities (as SoftmaxWithLoss: the second top's diff is ignored). Fields: the internal
Softmax's ``softmax_param.axis`` (the fork builds it from a copy of this layer's parameter);
``loss_param.ignore_label``; ``loss_param.normalization`` (FULL, VALID (default), BATCH_SIZE, NONE), or the
legacy ``normalize`` (true: VALID, false: BATCH_SIZE) when ``normalization`` is unset, over ``max(1, n)``;
``focal_loss_param.alpha`` (default 0.25, must be > 0) and ``gamma`` (default 2, must be >= 0), the fork's
``CHECK_GT``/``CHECK_GE``.

Forward: ``p = softmax(x)``, at each non-ignored position with p_t = p[label]
``loss += -alpha (1 - p_t)^gamma log(max(p_t, FLT_MIN))``, then ``/ normalizer``.

Backward (the fork's diff): ``g = power - gamma (power / max(1 - p_t, 1e-10)) log(max(p_t, FLT_MIN)) p_t``
with ``power = alpha (1 - p_t)^gamma``, ``diff_c = g p_c`` (c != label), ``g (p_t - 1)`` (c = label), 0 at
ignored positions, all times ``top_diff / normalizer``. That is the gradient of the forward except where
the fork clamps (p_t < FLT_MIN; 1 - p_t < 1e-10, where the true term tends to 0 for gamma >= 1 and the
fork's too); a :class:`torch.autograd.Function` keeps the fork's formula, so for gamma < 1 and p_t = 1 it
stays finite where autograd's ``(1 - p_t)^(gamma - 1)`` would give NaN. gamma = 0, alpha = 1 is
SoftmaxWithLoss, forward and diff.

Quirks of the fork, followed: ``focal_loss_param.type`` and ``beta`` are read and logged but used by no
computation, so ``LINEAR`` (the README's ``-log(p_t) / gamma`` on ``sigmoid(gamma x_t + beta)``, never
implemented) gives ORIGIN's loss and diff. Its README spelled ``gamma`` as ``gama`` for its first hour; that
name is not carried (NUMBERING.md). Deviations: the fork cannot build a two-top FocalLoss that gives a
``loss_weight`` per top (its internal Softmax copies both weights for its one top and Caffe's SetUp
CHECK-fails); neocaffe can. A label outside [0, C) that is not the ignore_label is an index error here
(the fork reads out of bounds). liaomingg/Focal-Loss @ d2d3477f (``focal_loss_param`` = 151, ``alpha`` = 1,
``gamma`` = 2) computes the same loss and, where nothing is clamped, the same diff (it clamps p_j and p_t
to FLT_MIN and not ``1 - p_t``): its prototxts run this layer. The CUDA kernels compute the CPU's numbers
(the forward's ``caffe_gpu_asum`` adds |terms|, all >= 0 as alpha > 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Shape, canonical_axis
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import (BATCH_SIZE, FLT_MIN, FULL, NONE, VALID, _LossLayer, normalization_mode,
                                          normalizer)

#: focal_loss_layer.cpp's Backward_cpu: ``std::max(1 - p_t, eps)`` with ``const Dtype eps = 1e-10``
ONE_MINUS_P_EPS = 1e-10


class _FocalLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, label: Tensor, axis: int, ignore: int | None, mode: int,  # type: ignore[override]
                alpha: float, gamma: float):
        prob = torch.softmax(x, dim=axis)
        outer, c = math.prod(x.shape[:axis]), x.shape[axis]
        inner = math.prod(x.shape[axis + 1:])
        lab = label.detach().to(torch.int64).reshape(outer, 1, inner)  # static_cast<int>: toward zero
        valid = (lab != ignore) if ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        lab = torch.where(valid, lab, torch.zeros_like(lab))
        pt = prob.reshape(outer, c, inner).gather(1, lab)
        log_pt = torch.log(pt.clamp(min=FLT_MIN))  # compute_intermediate_values: log(max(p, FLT_MIN))
        power = torch.pow(1 - pt, gamma) * alpha  # caffe_sub, caffe_powx, caffe_scal(alpha)
        norm = normalizer(mode, outer, inner, valid.to(x.dtype))
        loss = torch.where(valid, -(power * log_pt), torch.zeros_like(pt)).sum() / norm
        ctx.save_for_backward(prob, lab, valid, pt, log_pt, power, norm)
        ctx.shape3 = (outer, c, inner)
        ctx.gamma = gamma
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, g_loss: Tensor, g_prob: Tensor):  # type: ignore[override]
        # Caffe ignores the diff of the prob top.
        prob, lab, valid, pt, log_pt, power, norm = ctx.saved_tensors
        g = power - ctx.gamma * (power / (1 - pt).clamp(min=ONE_MINUS_P_EPS)) * log_pt * pt
        diff = prob.reshape(ctx.shape3) * g
        diff.scatter_(1, lab, g * (pt - 1))
        diff = torch.where(valid, diff, torch.zeros_like(diff))
        diff = diff * (g_loss / norm)
        return diff.reshape(prob.shape), None, None, None, None, None, None


@register_layer("FocalLoss")
class FocalLoss(_LossLayer):
    """zimenglan-sysu-512/Focal-Loss's softmax focal loss (module docstring): ``softmax_param.axis``,
    ``loss_param {ignore_label normalization normalize}``, ``focal_loss_param {alpha gamma}`` (``type`` and
    ``beta`` are read by the fork and change nothing); optional second top = the probabilities."""

    exact_tops = None
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self, "softmax_param.axis")
        lp = self.param.loss_param
        self.ignore = lp.ignore_label if lp.HasField("ignore_label") else None
        self.mode = normalization_mode(lp)
        if self.mode not in (FULL, VALID, BATCH_SIZE, NONE):
            names = {v.number: v.name for v in lp.DESCRIPTOR.fields_by_name["normalization"].enum_type.values}
            raise self.error(f"loss_param.normalization {names.get(self.mode, self.mode)} is unknown to FocalLoss "
                             f"(the fork's get_normalizer); expected FULL, VALID, BATCH_SIZE or NONE")
        fp = self.param.focal_loss_param
        self.alpha, self.gamma = float(fp.alpha), float(fp.gamma)
        if not self.gamma >= 0:
            raise self.error(f"focal_loss_param.gamma must be >= 0 (the fork's CHECK_GE); received {self.gamma}")
        if not self.alpha > 0:
            raise self.error(f"focal_loss_param.alpha must be > 0 (the fork's CHECK_GT); received {self.alpha}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        super().reshape(bottom_shapes)
        x, label = bottom_shapes
        outer, inner = math.prod(x[: self.axis]), math.prod(x[self.axis + 1:])
        if outer * inner != math.prod(label):
            raise self.error(
                f"number of labels must match number of predictions: prediction shape {x} with softmax axis "
                f"{self.axis} needs {outer * inner} labels; received label shape {label}"
            )
        return [()] + [tuple(x)] * (len(self.param.top) - 1)

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        loss, prob = _FocalLossFn.apply(x, label, self.axis, self.ignore, self.mode, self.alpha, self.gamma)
        return [loss, prob] if self.n_tops == 2 else loss

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(11)
        lab = r.integers(0, 3, (2, 1, 2, 2)).astype(float)
        lab[0, 0, 0, 0] = 255
        base = 'name: "loss" type: "FocalLoss" bottom: "x" bottom: "label" top: "loss"'
        return [
            Example(base, [r.standard_normal((4, 5)), r.integers(0, 5, (4,)).astype(float)]),
            Example(base + ' top: "prob" loss_param { ignore_label: 255 normalization: FULL } '
                    'focal_loss_param { alpha: 0.5 gamma: 0.5 }', [r.standard_normal((2, 3, 2, 2)), lab]),
            Example(base + ' softmax_param { axis: -1 } loss_param { normalize: false } '
                    'focal_loss_param { type: LINEAR alpha: 1 gamma: 3 beta: 2 }',
                    [r.standard_normal((2, 3, 4)), r.integers(0, 4, (2, 3)).astype(float)]),
        ]
