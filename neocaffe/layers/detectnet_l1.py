"""NVCaffe's ``L1Loss`` (DIGITS' DetectNet bounding-box loss).

Lineage: NVIDIA/caffe (NVCaffe 0.15-0.17, ``caffe-0.17`` @ 87a2554):
``src/caffe/layers/l1_loss_layer.{cpp,cu}``, ``include/caffe/layers/l1_loss_layer.hpp``. DetectNet
(``examples/kitti/detectnet_network.prototxt``, DIGITS' ``examples/object-detection``) uses it for
``bbox_loss`` (bottoms ``bboxes-obj-masked-norm`` and ``bbox-obj-label-norm``, ``loss_weight: 2``) and
``coverage_loss`` is a EuclideanLoss.

Bottoms: a and b with equal first dimension (LossLayer's check) and ``count(1)`` (the layer's own
``CHECK_EQ``, "Inputs must have the same dimension"); a scalar top with loss weight 1 (LossLayer).

Forward, as ``Forward_cpu``/``Forward_gpu``: ``diff = a - b``, ``sign_ = sign(diff)`` (``caffe_cpu_sign``:
0 at 0), loss ``= asum(diff) / a.num()``, ``num()`` being LegacyShape(0) (so a 0-d bottom counts 1 and a
bottom of more than 4 axes is an error, as NVCaffe's Blob CHECKs). ``loss_param`` (``normalization``,
``normalize``, ``ignore_label``) is not read: the divisor is always the batch size.

Backward: bottom i (0 or 1) that propagates gets ``±top_diff / bottom[i].num() * sign_`` (+ for a, - for
b), overwriting its diff (``caffe_cpu_axpby`` with beta 0). Both bottoms may take a diff
(``AllowForceBackward`` true for both, as EuclideanLoss). At ``diff == 0`` the diff is 0 (a subgradient),
which ``gradcheck`` cannot see: the contract example keeps a and b apart.

The type string is FlowNet 2.0's too (lmb-freiburg/flownet2, NVlabs/PWC-Net: 1 or 2 bottoms, ``l1_loss_param``,
NaN masking, ``l2_per_location``): a layer that sets ``l1_loss_param``, has one bottom, or sits in a net of lineage
``flownet`` or one built on it, ``liteflownet`` (``NetParameter.lineage``, or a FlowNet or LiteFlowNet type in the
net: ``neocaffe.layers.lineage``) computes
FlowNet's loss (:func:`neocaffe.layers.flownet_loss.flownet_l1`); every other is NVCaffe's, as before.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, NetSoFar, Shape, legacy_shape
from neocaffe.layers.flownet_loss import check_flownet_bottoms, flownet_l1
from neocaffe.layers.lineage import descends, net_lineage
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer


class _L1LossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, num: int):  # type: ignore[override]
        diff = a - b.reshape(a.shape)
        sign = torch.sign(diff)
        ctx.save_for_backward(sign)
        ctx.b_shape, ctx.num = b.shape, num
        return diff.abs().sum() / num

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (sign,) = ctx.saved_tensors
        alpha = g / ctx.num
        ga = sign * alpha if ctx.needs_input_grad[0] else None
        gb = (sign * -alpha).reshape(ctx.b_shape) if ctx.needs_input_grad[1] else None
        return ga, gb, None


@register_layer("L1Loss")
class L1Loss(_LossLayer):
    """NVCaffe's ``sum|a - b| / N``; diffs ``±top_diff/N * sign(a - b)`` to both bottoms (module docstring);
    FlowNet's form where the layer or its net says so."""

    exact_bottoms = None  # NVCaffe's takes 2 (checked in setup); FlowNet's 1 or 2
    min_bottoms = 1
    max_bottoms = 2
    takes_net = True  # FlowNet's form without l1_loss_param is told by the net's lineage

    def setup(self, bottom_shapes: list[Shape]) -> None:
        net: NetSoFar | None = self.net_so_far
        self.flownet = (self.param.HasField("l1_loss_param") or len(bottom_shapes) == 1
                        or descends(net_lineage(net), "flownet"))
        if not self.flownet and len(bottom_shapes) != 2:
            raise self.error(f"takes exactly 2 bottom blob(s); received {len(bottom_shapes)}")

    def allow_force_backward(self, bottom: int) -> bool:
        return True

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if self.flownet:
            return check_flownet_bottoms(self, bottom_shapes)
        top = super().reshape(bottom_shapes)  # LossLayer::Reshape first, as the fork's Reshape
        a, b = bottom_shapes
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise self.error(f"inputs must have the same dimension (count from axis 1); received {a} and {b}")
        legacy_shape(a, self)
        legacy_shape(b, self)
        return top

    def forward(self, a: Tensor, b: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if self.flownet:
            self.reshape([tuple(a.shape)] + ([tuple(b.shape)] if b is not None else []))
            return flownet_l1(a, b, self.param.l1_loss_param)
        num = legacy_shape(tuple(a.shape), self)[0]
        return _L1LossFn.apply(a, b, num)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(5)
        a = r.standard_normal((3, 4, 2, 2))
        # keep |a - b| >= 0.1 so that the finite differences do not straddle the kink at 0
        step = r.choice([-1.0, 1.0], size=a.shape) * (0.1 + r.random(a.shape))
        return [Example('name: "loss" type: "L1Loss" bottom: "a" bottom: "b" top: "loss"',
                        [a, (a + step).reshape(3, 16)], grad_bottoms=(0, 1)),
                Example('name: "loss" type: "L1Loss" bottom: "a" bottom: "b" top: "loss" loss_weight: 2',
                        [a[:2, :1], a[:2, :1] - step[:2, :1]], grad_bottoms=(0,))] + flownet_examples(a, step)


def flownet_examples(a: np.ndarray, step: np.ndarray) -> list[Example]:
    """FlowNet's L1Loss (``l1_loss_param`` set, or one bottom); |a - b| kept away from the kinks."""
    head = 'name: "loss" type: "L1Loss" bottom: "a" bottom: "b" top: "loss" '
    return [Example(head + "l1_loss_param { l2_per_location: true }", [a, a + step], grad_bottoms=(0, 1)),
            Example(head + "l1_loss_param { normalize_by_num_entries: true epsilon: 0.1 l2_prescale_by_channels: "
                    "true l2_per_location: true }", [a, a + step], grad_bottoms=(0, 1)),
            Example(head + "l1_loss_param { plateau: 0.05 }", [a, a + step], grad_bottoms=(0, 1)),
            Example('name: "loss" type: "L1Loss" bottom: "d" top: "loss" loss_weight: 0.5', [step], grad_bottoms=(0,))]
