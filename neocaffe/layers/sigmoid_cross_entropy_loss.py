"""SigmoidCrossEntropyLoss: Caffe's sigmoid cross-entropy on logits (sigmoid_cross_entropy_loss_layer.cpp),
with ``loss_param.ignore_label`` and Caffe's LossLayer normalization (``softmax_loss.normalization_mode``,
``normalizer``; default BATCH_SIZE), or s9xie/hed's and yun-liu/RCF's class-balanced losses of the same name
(:mod:`neocaffe.layers.hed`, :mod:`neocaffe.layers.rcf`).

The loss is a 0-d top (Caffe's scalar loss blob). The backward is an ``autograd.Function`` with Caffe's
formula: the diff is scaled by ``top_diff / normalizer`` computed in the data type, labels never get a diff.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import hed, rcf
from neocaffe.layers.base import Example, NetSoFar, Shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import BATCH_SIZE, _labels, _LossLayer, normalization_mode, normalizer
from neocaffe.proto import caffe_pb2


class _SigmoidCEFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, ignore: int | None, mode: int):  # type: ignore[override]
        outer = x.shape[0] if x.dim() else 1
        inner = x.numel() // max(outer, 1)
        t = t.detach().reshape(x.shape).to(x.dtype)
        valid = (_labels(t) != ignore) if ignore is not None else torch.ones_like(x, dtype=torch.bool)
        vf = valid.to(x.dtype)
        pos = (x >= 0).to(x.dtype)
        elem = x * (t - pos) - torch.log(1 + torch.exp(x - 2 * x * pos))
        norm = normalizer(mode, outer, inner, vf)
        ctx.save_for_backward(x, t, vf, norm)
        return -(elem * vf).sum() / norm

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, t, vf, norm = ctx.saved_tensors
        return (torch.sigmoid(x) - t) * vf * (g / norm), None, None, None


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_LossLayer):
    """Caffe's stable formula ``-(x(t - [x>=0]) - log(1 + exp(x - 2x[x>=0])))``; ``loss_param.ignore_label``
    and ``normalization`` (default BATCH_SIZE when neither it nor ``normalize`` is set, as in Caffe).
    Or s9xie/hed's class-balanced loss of the same name (:mod:`neocaffe.layers.hed`: the rule that tells
    the two apart, and the fork's formulas), or yun-liu/RCF's (:mod:`neocaffe.layers.rcf`)."""

    takes_net = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        try:
            form = rcf.sigmoid_ce_form(self.param, self.net_so_far, self.name)
            self.hed, self.rcf = form == "hed", form == "rcf"
        except ValueError as e:
            raise self.error(str(e)) from None
        lp = self.param.loss_param
        self.ignore = lp.ignore_label if lp.HasField("ignore_label") else None
        self.mode = normalization_mode(lp, default=BATCH_SIZE)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if math.prod(bottom_shapes[0]) != math.prod(bottom_shapes[1]):
            raise self.error(f"inputs must have the same count; received {bottom_shapes[0]} and {bottom_shapes[1]}")
        return super().reshape(bottom_shapes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:  # type: ignore[override]
        if self.hed:
            return hed.BalancedSigmoidCE.apply(x, t)
        if self.rcf:
            return hed.BalancedSigmoidCE.apply(x, t, rcf.NEG_WEIGHT, 0.0)
        return _SigmoidCEFn.apply(x, t, self.ignore, self.mode)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(2)
        t = r.uniform(0, 1, (3, 4))
        t2 = r.integers(0, 2, (3, 4)).astype(float)
        t2[0, :2] = -1
        t3 = (r.uniform(0, 1, (2, 1, 3, 4)) < 0.3).astype(float)  # HED's edge maps: 0/1, positives rare
        base = 'name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss"'
        hed_net = NetSoFar(caffe_pb2.NetParameter(lineage="hed"))
        rcf_net = NetSoFar(caffe_pb2.NetParameter(lineage="rcf"))
        t4 = t3.copy()
        t4[0, 0, 0, :2] = (0.25, 0.5)  # RCF's weak edges: no diff
        return [
            Example(base, [r.standard_normal((3, 4)) * 2, t]),
            Example(base + " loss_param { ignore_label: -1 normalization: VALID }", [r.standard_normal((3, 4)), t2]),
            Example(base, [r.standard_normal((2, 1, 3, 4)) * 2, t3], net=hed_net),
            Example(base, [r.standard_normal((2, 1, 3, 4)) * 2, t4], net=rcf_net),
        ]
