"""Caffe's other loss layers: EuclideanLoss, HingeLoss, InfogainLoss, MultinomialLogisticLoss,
ContrastiveLoss (the loss-layer base and the softmax cross-entropy are in softmax_loss.py, the sigmoid
cross-entropy in sigmoid_cross_entropy_loss.py).

Every loss returns a 0-d top (Caffe's scalar loss blob). Backward passes are ``autograd.Function``s
with Caffe's formulas: the diff is scaled by ``top_diff / normalizer`` computed in the data type, a
clamped probability still gets Caffe's (unclamped) gradient, labels never get a diff.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Shape, canonical_axis
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _labels, _LossLayer
from neocaffe.proto import caffe_pb2

LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD


# -- EuclideanLoss ------------------------------------------------------------------------------
class _EuclideanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor):  # type: ignore[override]
        diff = a - b.reshape(a.shape)
        ctx.save_for_backward(diff)
        ctx.b_shape = b.shape
        num = a.shape[0] if a.dim() else 1
        ctx.num = num
        return (diff * diff).sum() / num / 2

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        alpha = g / ctx.num
        ga = diff * alpha if ctx.needs_input_grad[0] else None
        gb = (diff * -alpha).reshape(ctx.b_shape) if ctx.needs_input_grad[1] else None
        return ga, gb


@register_layer("EuclideanLoss")
class EuclideanLoss(_LossLayer):
    """``sum((a - b)^2) / (2N)``; both bottoms get diffs (``±top_diff/N * (a - b)``)."""

    def allow_force_backward(self, bottom: int) -> bool:
        return True

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        a, b = bottom_shapes
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise self.error(f"inputs must have the same dimension; received {a} and {b}")
        return super().reshape(bottom_shapes)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        return _EuclideanFn.apply(a, b)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(3)
        return [Example('name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"',
                        [r.standard_normal((3, 4)), r.standard_normal((3, 4))], grad_bottoms=(0, 1))]


# -- HingeLoss ----------------------------------------------------------------------------------
class _HingeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, label: Tensor, l2: bool):  # type: ignore[override]
        num = x.shape[0]
        x2 = x.reshape(num, -1)
        lab = _labels(label).reshape(num, 1)
        sign = torch.ones_like(x2).scatter_(1, lab, -1.0)
        margins = (1 + x2 * sign).clamp(min=0)
        ctx.save_for_backward(margins * sign)
        ctx.num, ctx.l2, ctx.shape = num, l2, x.shape
        return (margins * margins).sum() / num if l2 else margins.sum() / num

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (d,) = ctx.saved_tensors
        grad = d * (g * 2 / ctx.num) if ctx.l2 else torch.sign(d) * (g / ctx.num)
        return grad.reshape(ctx.shape), None, None


@register_layer("HingeLoss")
class HingeLoss(_LossLayer):
    """One-vs-all hinge ``max(0, 1 - y_k x_k)`` summed (``hinge_loss_param.norm`` L1) or squared (L2), / N."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.l2 = self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        return _HingeFn.apply(x, label, self.l2)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(4)
        x = r.uniform(0.1, 0.9, (4, 3)) * r.choice([-1, 1], (4, 3)) * 3  # |1 -/+ x| away from 0
        x = np.where(np.abs(np.abs(x) - 1) < 0.1, x * 1.5, x)
        lab = r.integers(0, 3, (4,)).astype(float)
        base = 'name: "loss" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss"'
        return [Example(base, [x, lab]), Example(base + " hinge_loss_param { norm: L2 }", [x, lab])]


# -- InfogainLoss -------------------------------------------------------------------------------
def read_blobproto(path: str) -> np.ndarray:
    """A ``.binaryproto`` BlobProto as a float32 array (``neocaffe.io.binaryproto``; a plain protobuf
    parse where that module is absent)."""
    try:
        from neocaffe.io.binaryproto import read_blobproto as _read
    except ImportError:
        _read = None
    if _read is not None:
        return np.asarray(_read(path).data, dtype=np.float32)
    blob = caffe_pb2.BlobProto()
    with open(path, "rb") as f:
        blob.ParseFromString(f.read())
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: BlobProto holds {data.size} values for shape {shape}")
    return data.reshape(shape)


class _InfogainFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p: Tensor, label: Tensor, h: Tensor, num: int):  # type: ignore[override]
        p2 = p.reshape(num, -1)
        rows = h.detach().to(p.dtype).reshape(p2.shape[1], p2.shape[1])[_labels(label).reshape(num)]
        clamped = p2.clamp(min=LOG_THRESHOLD)
        ctx.save_for_backward(rows, clamped)
        ctx.num, ctx.shape = num, p.shape
        return -(rows * torch.log(clamped)).sum() / num

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        rows, clamped = ctx.saved_tensors
        return ((-g / ctx.num) * rows / clamped).reshape(ctx.shape), None, None, None


@register_layer("InfogainLoss")
class InfogainLoss(_LossLayer):
    """The fork's InfogainLoss: bottom 0 holds PROBABILITIES, ``loss = -sum_j H[l_i, j] log(max(p_ij, 1e-20)) / N``.
    H (dim x dim) comes from ``infogain_loss_param.source`` (binaryproto) or a third bottom.

    ``infogain_loss_param.axis`` (upstream) sets N = count(0, axis), dim = count(axis); axis 1 is the
    fork. Deviation on purpose: upstream's later InfogainLoss applies a softmax itself; we follow the fork.
    """

    exact_bottoms = None
    min_bottoms = 2
    max_bottoms = 3

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ip = self.param.infogain_loss_param
        self.axis = canonical_axis(ip.axis, len(bottom_shapes[0]), self)
        if len(bottom_shapes) < 3:
            if not ip.source:
                raise self.error("needs infogain_loss_param.source or a third bottom holding H")
            self.register_buffer("infogain", torch.from_numpy(read_blobproto(ip.source)), persistent=False)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, label = bottom_shapes[0], bottom_shapes[1]
        num, dim = math.prod(x[: self.axis]), math.prod(x[self.axis:])
        if math.prod(label) != num:
            raise self.error(f"needs one label per prediction ({num}); received label shape {label}")
        h = tuple(bottom_shapes[2]) if len(bottom_shapes) > 2 else tuple(self.infogain.shape)
        if math.prod(h) != dim * dim:
            raise self.error(f"infogain matrix H must be {dim} x {dim}; received shape {h}")
        return [()]

    def forward(self, p: Tensor, label: Tensor, h: Tensor | None = None) -> Tensor:  # type: ignore[override]
        h = self.infogain if h is None else h
        return _InfogainFn.apply(p, label, h, math.prod(p.shape[: self.axis]))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(5)
        p = r.uniform(0.1, 1.0, (4, 3))
        return [Example('name: "loss" type: "InfogainLoss" bottom: "p" bottom: "label" bottom: "H" top: "loss"',
                        [p / p.sum(1, keepdims=True), r.integers(0, 3, (4,)).astype(float), r.uniform(0, 1, (3, 3))])]


# -- MultinomialLogisticLoss --------------------------------------------------------------------
class _MultinomialFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p: Tensor, label: Tensor):  # type: ignore[override]
        num = p.shape[0]
        lab = _labels(label).reshape(num, 1)
        picked = p.reshape(num, -1).gather(1, lab).clamp(min=LOG_THRESHOLD)
        ctx.save_for_backward(lab, picked)
        ctx.num, ctx.shape = num, p.shape
        return -torch.log(picked).sum() / num

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        lab, picked = ctx.saved_tensors
        grad = torch.zeros((ctx.num, math.prod(ctx.shape[1:])), dtype=picked.dtype, device=picked.device)
        grad.scatter_(1, lab, (-g / ctx.num) / picked)
        return grad.reshape(ctx.shape), None


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_LossLayer):
    """``-sum log(max(p[label], 1e-20)) / N`` on probabilities; diff ``-top_diff/N / max(p, 1e-20)`` at the label."""

    def forward(self, p: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        return _MultinomialFn.apply(p, label)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(6)
        return [Example('name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss"',
                        [r.uniform(0.1, 1.0, (4, 3)), r.integers(0, 3, (4,)).astype(float)])]


# -- ContrastiveLoss ----------------------------------------------------------------------------
class _ContrastiveFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, sim: Tensor, margin: float, legacy: bool):  # type: ignore[override]
        num = a.shape[0]
        diff = (a - b).reshape(num, -1)
        dist_sq = (diff * diff).sum(1)
        similar = _labels(sim).reshape(num) != 0
        if legacy:
            dis = (margin - dist_sq).clamp(min=0)
        else:
            dis = (margin - torch.sqrt(dist_sq)).clamp(min=0)
            dis = dis * dis
        loss = torch.where(similar, dist_sq, dis).sum() / num / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy, ctx.num, ctx.shapes = margin, legacy, num, (a.shape, b.shape)
        return loss

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = g / ctx.num
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        coef = torch.where(similar, alpha, torch.where(mdist > 0, beta, torch.zeros_like(beta)))[:, None]
        ga = (diff * coef).reshape(ctx.shapes[0]) if ctx.needs_input_grad[0] else None
        gb = (diff * -coef).reshape(ctx.shapes[1]) if ctx.needs_input_grad[1] else None
        return ga, gb, None, None, None


@register_layer("ContrastiveLoss")
class ContrastiveLoss(_LossLayer):
    """``contrastive_loss_param {margin legacy_version}``: similar pairs d^2, dissimilar max(margin - d, 0)^2
    (legacy: max(margin - d^2, 0)), summed / 2N. Caffe's backward divides by ``d + 1e-4``."""

    exact_bottoms = 3

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 2  # the similarity labels

    def setup(self, bottom_shapes: list[Shape]) -> None:
        cp = self.param.contrastive_loss_param
        self.margin, self.legacy = float(np.float32(cp.margin)), cp.legacy_version

    def forward(self, a: Tensor, b: Tensor, sim: Tensor) -> Tensor:  # type: ignore[override]
        return _ContrastiveFn.apply(a, b, sim, self.margin, self.legacy)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(7)
        a, b = r.standard_normal((6, 3)) * 0.5, r.standard_normal((6, 3)) * 0.5
        sim = np.array([1.0, 0, 1, 0, 0, 1])
        base = 'name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss"'
        return [
            Example(base + " contrastive_loss_param { margin: 1.5 }", [a, b, sim], grad_bottoms=(0, 1), atol=1e-4),
            Example(base + " contrastive_loss_param { legacy_version: true }", [a, b, sim], grad_bottoms=(0, 1)),
        ]
