"""Softmax and the softmax cross-entropy loss on logits, SoftmaxWithLoss; also the loss-layer base
(``_LossLayer``) and Caffe's LossLayer normalization that the other losses (losses.py,
sigmoid_cross_entropy_loss.py, ...) share.

Every loss returns a 0-d top (Caffe's scalar loss blob). Backward passes are ``autograd.Function``s
with Caffe's formulas: the diff is scaled by ``top_diff / normalizer`` computed in the data type, a
clamped probability still gets Caffe's (unclamped) gradient, labels never get a diff.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, canonical_axis, legacy_shape
from neocaffe.layers.normalization import caffe_sqrt, plus_eps
from neocaffe.layers.registry import register_layer

FLT_MIN = 1.17549435e-38  # Caffe clamps softmax probabilities to FLT_MIN before log
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3  # LossParameter.NormalizationMode
NORMALIZE_EPS = 1e-6  # happynear's normalize_layer.cpp: added to the sum of squares (L2) or of |x| (L1)


def normalization_mode(loss_param: Any, default: int = VALID) -> int:
    """``normalization`` if set, else legacy ``normalize`` (true VALID, false BATCH_SIZE), else ``default``."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return VALID if loss_param.normalize else BATCH_SIZE
    return default


def normalizer(mode: int, outer: int, inner: int, valid: Tensor) -> Tensor:
    """Caffe's LossLayer get_normalizer, as a tensor (no host sync): max(1, n)."""
    if mode == VALID:
        n = valid.sum().to(valid.dtype)
    else:
        n = float({FULL: outer * inner, BATCH_SIZE: outer, NONE: 1}[mode])
        n = torch.tensor(n, dtype=valid.dtype, device=valid.device)
    return n.clamp(min=1.0)


def _labels(label: Tensor) -> Tensor:
    return label.detach().to(torch.int64)  # static_cast<int>: truncation toward zero


class _LossLayer(Layer):
    """Caffe's LossLayer: two bottoms with the same first dimension, a scalar top with loss weight 1."""

    is_loss = True
    exact_bottoms = 2
    exact_tops = 1
    #: Caffe's LossLayer::AutoTopBlobs: a loss layer written without a top gets an anonymous one
    #: ("(automatic)"); the net has to add it before building the layer (graph/plan does not yet)
    auto_top_blobs = True

    def allow_force_backward(self, bottom: int) -> bool:
        """Caffe's LossLayer: never to the labels (bottom 1)."""
        return bottom != 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        a, b = bottom_shapes[0], bottom_shapes[1]
        if len(a) and len(b) and a[0] != b[0]:
            raise self.error(f"the data and label should have the same first dimension; received {a} and {b}")
        return [()]


# -- Softmax ------------------------------------------------------------------------------------
@register_layer("Softmax")
class Softmax(Layer):
    """``softmax_param.axis``. Backward ``(top_diff - sum(top_diff*top)) * top`` is torch's softmax backward."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(x, dim=self.axis)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(0)
        return [
            Example('name: "sm" type: "Softmax" bottom: "x" top: "y"', [r.standard_normal((2, 4, 3))]),
            Example('name: "sm" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: -1 }', [r.standard_normal((3, 5))]),
        ]


# -- SoftmaxWithLoss ----------------------------------------------------------------------------
class _SoftmaxLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, label: Tensor, axis: int, ignore: int | None, mode: int):  # type: ignore[override]
        return _SoftmaxLossFn.loss(ctx, x, torch.softmax(x, dim=axis), label, axis, ignore, mode)

    @staticmethod
    def loss(ctx, x: Tensor, prob: Tensor, label: Tensor, axis: int, ignore: int | None, mode: int,
             weights: Tensor | None = None):
        """``-sum log(max(prob[label], FLT_MIN)) / normalizer`` over the valid labels (each term times
        ``weights[label]`` when given); saves what backward reads."""
        outer, c = math.prod(x.shape[:axis]), x.shape[axis]
        inner = math.prod(x.shape[axis + 1:])
        p3 = prob.reshape(outer, c, inner)
        lab = _labels(label).reshape(outer, 1, inner)
        valid = (lab != ignore) if ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        lab = torch.where(valid, lab, torch.zeros_like(lab))
        picked = p3.gather(1, lab).clamp(min=FLT_MIN)
        vf = valid.to(x.dtype)
        norm = normalizer(mode, outer, inner, vf)  # the count of valid labels, unweighted (jacinto's too)
        terms = torch.log(picked) * vf
        loss = -(terms if weights is None else terms * weights.to(x.dtype)[lab]).sum() / norm
        ctx.save_for_backward(prob, lab, vf, norm)
        ctx.shape3 = (outer, c, inner)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, g_loss: Tensor, g_prob: Tensor):  # type: ignore[override]
        # Caffe ignores the diff of the prob top.
        prob, lab, vf, norm = ctx.saved_tensors
        grad = prob.reshape(ctx.shape3).clone()
        grad.scatter_add_(1, lab, -vf)
        grad *= vf
        grad *= g_loss / norm
        return grad.reshape(prob.shape), None, None, None, None


class _WeightedSoftmaxLossFn(_SoftmaxLossFn):
    """caffe-jacinto's ``loss_param.label_weights`` (see :class:`SoftmaxWithLoss`): each valid term times
    ``weights[label]``; the backward is the unweighted one, as the fork's."""

    @staticmethod
    def forward(ctx, x: Tensor, label: Tensor, axis: int, ignore: int | None, mode: int,  # type: ignore[override]
                weights: Tensor):
        return _SoftmaxLossFn.loss(ctx, x, torch.softmax(x, dim=axis), label, axis, ignore, mode, weights)

    @staticmethod
    def backward(ctx, g_loss: Tensor, g_prob: Tensor):  # type: ignore[override]
        return _SoftmaxLossFn.backward(ctx, g_loss, g_prob) + (None,)


class _SmoothedSoftmaxLossFn(_SoftmaxLossFn):
    """NVCaffe's ``loss_param.label_smoothing`` (see :class:`SoftmaxWithLoss`): the same forward; backward
    ``(prob - eps/(dim-1) - (1-eps)*onehot(label)) * valid * top_diff / normalizer``."""

    @staticmethod
    def forward(ctx, x: Tensor, label: Tensor, axis: int, ignore: int | None, mode: int,  # type: ignore[override]
                eps: float):
        ctx.eps = eps
        return _SoftmaxLossFn.loss(ctx, x, torch.softmax(x, dim=axis), label, axis, ignore, mode)

    @staticmethod
    def backward(ctx, g_loss: Tensor, g_prob: Tensor):  # type: ignore[override]
        prob, lab, vf, norm = ctx.saved_tensors
        outer, c, inner = ctx.shape3
        grad = prob.reshape(ctx.shape3).clone()
        if ctx.eps > 0:  # caffe_gpu_add_scalar(count, -eps / (dim - 1)): every element, the label's too
            dim = torch.tensor(c * inner - 1, dtype=prob.dtype, device=prob.device)
            grad += torch.tensor(-ctx.eps, dtype=prob.dtype, device=prob.device) / dim
        p1 = float(np.float32(1) - np.float32(ctx.eps))  # `1.F - float(label_smoothing)`
        grad.scatter_add_(1, lab, -p1 * vf)
        grad *= vf
        grad *= g_loss / norm
        return grad.reshape(prob.shape), None, None, None, None, None


def happynear_normalized(x: Tensor, l1: bool) -> Tensor:
    """happynear's Normalize forward (normalize_layer.cpp) on x read as the legacy (N, C, H, W): over C at
    each (n, h, w), ``x / sqrt(sum x^2 + 1e-6)`` (L2) or ``x / (sum |x| + 1e-6)`` (L1), the eps added in
    double to the sum in the data type (as :mod:`neocaffe.layers.normface`); returned in x's shape."""
    n, c = (tuple(x.shape) + (1, 1))[:2]
    v = x.reshape(n, c, -1)
    s = v.abs().sum(1, keepdim=True) if l1 else (v * v).sum(1, keepdim=True)
    s = plus_eps(s, NORMALIZE_EPS)
    return (v / (s if l1 else caffe_sqrt(s))).reshape(x.shape)


class _NormalizedLossFn(_SoftmaxLossFn):
    """happynear's ``normalize_type`` L2/L1: the normalized x takes the softmax's place in the same loss,
    and the diff is the same ``prob - onehot`` with the normalized x as prob (the fork never runs its
    Normalize layer's backward): not the gradient of the loss."""

    @staticmethod
    def forward(ctx, x: Tensor, label: Tensor, axis: int, ignore: int | None, mode: int,  # type: ignore[override]
                l1: bool):
        return _SoftmaxLossFn.loss(ctx, x, happynear_normalized(x, l1), label, axis, ignore, mode)

    @staticmethod
    def backward(ctx, g_loss: Tensor, g_prob: Tensor):  # type: ignore[override]
        return _SoftmaxLossFn.backward(ctx, g_loss, g_prob) + (None,)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(_LossLayer):
    """``softmax_param.axis``, ``loss_param {ignore_label normalization normalize}``; optional second top
    = the probabilities (its diff is ignored, as in Caffe).

    Deviation on purpose: the fork cannot build a two-top SoftmaxWithLoss (its internal Softmax copies the
    loss weights); upstream can, and so can we.

    happynear's ``softmax_param.normalize_type`` (caffe-windows ms @ 967eedf2, ``softmax_loss_layer.cpp``
    and ``.cu``; ``normalize_layer.cpp``), default "Softmax" (the softmax above). "L2" or "L1": the fork
    builds its ``Normalize`` layer from this layer's parameter in place of the Softmax, so

    - which norm is set by ``normalize_param.normalize_type`` (default "L2"), NOT by softmax_param's: "L1"
      alone normalizes by L2, as in the fork; ``normalize_param { normalize_type: "L1" }`` gives L1;
    - prob = x over C of the legacy (N, C, H, W) at each position (bottom 0 has at most 4 axes), whatever
      ``softmax_param.axis`` is (the loss still picks ``prob[label]`` along that axis, as the fork's loops on
      the same memory): ``x / sqrt(sum x^2 + 1e-6)`` (L2) or ``x / (sum |x| + 1e-6)`` (L1). The ``.cpp``'s
      eps; the ``.cu`` adds 1e-12 for L2, as our Normalize notes;
    - loss ``-sum log(max(prob[label], FLT_MIN)) / normalizer``, a prob <= 0 clamped to FLT_MIN (a term of 87.34);
      ignore_label and the four normalization modes as above; the optional second top is prob;
    - the bottom diff is the fork's, ``(prob - onehot(label)) * top_diff / normalizer`` (0 at ignored
      labels): the softmax's formula with the normalized prob. The fork never runs the Normalize layer's
      backward, so this is NOT the gradient of the loss above (``normalize_param``'s ``fix_gradient`` and
      ``bp_norm`` change nothing).

    No prototxt in happynear/caffe-windows, NormFace or AMSoftmax sets "L2"/"L1" here (they set "Softmax",
    or put Normalize layers of their own before the loss). SoftmaxWithLossOHEM (another fork) refuses them.

    NVCaffe's ``loss_param.label_smoothing`` eps (NVIDIA/caffe caffe-0.17 @
    87a25543a68e0e5e753923ac4a8b8be6392a41f7, ``src/caffe/layers/softmax_loss_layer.cu``, Backward_gpu and
    SoftmaxLossBackwardGPU), as its GPU computes it (its ``.cpp`` Backward_cpu reads the field but never uses
    it; CPU-mode NVCaffe trains unsmoothed):

    - the forward and the loss top are unchanged, ``-log(prob[label])`` unsmoothed (both of NVCaffe's forwards);
    - the bottom diff: eps > 0 first adds ``-eps/(dim-1)`` to every element, the label's included, where
      ``dim`` = C*inner (``prob.count/outer``: C only when the softmax axis is the last one with data, e.g.
      (N, C)); then ``1 - eps`` (float) is subtracted at the label; an ignored label's position is zeroed;
      then everything is scaled by ``top_diff / normalizer`` as without smoothing. The target is so
      ``(1-eps) onehot + eps/(dim-1)``, which sums to ``1 - eps + C*eps/(dim-1)``, not 1: the diff is the
      gradient of ``sum over valid positions of logsumexp(x) - target.x``, not of a smoothed cross-entropy;
    - eps < 0 skips the added constant but still subtracts ``1 - eps`` (as the ``.cu``); eps 0 (unset) is
      the plain softmax loss, bit for bit.

    label_smoothing with happynear's L2/L1 or in another type (SoftmaxWithLossOHEM, ...) is refused: no
    lineage defines it there.

    caffe-jacinto's ``loss_param.label_weights`` (mathmanu/caffe-jacinto caffe-0.17 @ 2678b2b8556cc64ba66d801537bb066fc070889a,
    ``src/caffe/layers/softmax_loss_layer.{cpp,cu}``), one per class (the softmax axis's size; the fork indexes them
    unchecked): loss ``-sum w[label] log(max(prob[label], FLT_MIN)) / normalizer``, the VALID count unweighted; the
    diff is the unweighted one (neither fork backward reads the weights), NOT the gradient of the weighted loss.
    Refused with label_smoothing, happynear's L2/L1 or in another type (no lineage defines the pair).
    """

    exact_tops = None
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self)
        self.l1 = self._normalize_l1()
        lp = self.param.loss_param
        self.ignore = lp.ignore_label if lp.HasField("ignore_label") else None
        self.mode = normalization_mode(lp)
        self.smoothing = float(lp.label_smoothing)
        if self.smoothing != 0 and (self.l1 is not None or self.type_name != "SoftmaxWithLoss"):
            raise self.error(f"loss_param.label_smoothing is NVCaffe's SoftmaxWithLoss's (its softmax); not defined "
                             f"for {self.type_name} with softmax_param.normalize_type "
                             f"'{self.param.softmax_param.normalize_type}'")
        self.n_weights = len(lp.label_weights)  # caffe-jacinto's, one per class (class docstring)
        if self.n_weights and (self.smoothing != 0 or self.l1 is not None or self.type_name != "SoftmaxWithLoss"):
            raise self.error(f"loss_param.label_weights is caffe-jacinto's SoftmaxWithLoss's (its softmax, without "
                             f"label_smoothing); not defined for {self.type_name} with softmax_param.normalize_type "
                             f"'{self.param.softmax_param.normalize_type}', label_smoothing {self.smoothing:g}")
        if self.n_weights:
            self.register_buffer("label_weights", torch.tensor(list(lp.label_weights), dtype=torch.float32),
                                 persistent=False)
        if self.mode not in (FULL, VALID, BATCH_SIZE, NONE):
            names = {v.number: v.name for v in lp.DESCRIPTOR.fields_by_name["normalization"].enum_type.values}
            raise self.error(f"loss_param.normalization {names.get(self.mode, self.mode)} is unknown to "
                             f"{self.type_name} (Caffe's get_normalizer); expected FULL, VALID, BATCH_SIZE or NONE")

    def _normalize_l1(self) -> bool | None:
        """None for the softmax; else whether happynear's Normalize takes the L1 norm (class docstring)."""
        typ = self.param.softmax_param.normalize_type
        if typ == "Softmax":
            return None
        if typ not in ("L2", "L1"):
            raise self.error(f"softmax_param.normalize_type '{typ}' unknown; expected 'Softmax', 'L2' or 'L1'")
        if self.type_name != "SoftmaxWithLoss":
            raise self.error(f"softmax_param.normalize_type '{typ}' is happynear's SoftmaxWithLoss's; "
                             f"{self.type_name} computes the softmax (expected 'Softmax')")
        norm = self.param.normalize_param.normalize_type  # the fork's Normalize reads its own field
        if norm not in ("L2", "L1"):
            raise self.error(f"normalize_param.normalize_type '{norm}' unknown (softmax_param.normalize_type "
                             f"'{typ}' runs happynear's Normalize, which reads it); expected 'L2' or 'L1'")
        return norm == "L1"

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        super().reshape(bottom_shapes)
        x, label = bottom_shapes
        outer, inner = math.prod(x[: self.axis]), math.prod(x[self.axis + 1:])
        if self.l1 is not None:
            legacy_shape(x, self, "bottom 0 (happynear's Normalize)")
        if outer * inner != math.prod(label):
            raise self.error(
                f"number of labels must match number of predictions: prediction shape {x} with softmax axis "
                f"{self.axis} needs {outer * inner} labels; received label shape {label}"
            )
        if self.n_weights and self.n_weights != x[self.axis]:
            raise self.error(f"loss_param.label_weights lists {self.n_weights} weights; expected one per class: "
                             f"{x[self.axis]} (axis {self.axis} of prediction shape {x})")
        return [()] + [tuple(x)] * (len(self.param.top) - 1)

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        if self.smoothing != 0:
            loss, prob = _SmoothedSoftmaxLossFn.apply(x, label, self.axis, self.ignore, self.mode, self.smoothing)
        elif self.n_weights:
            loss, prob = _WeightedSoftmaxLossFn.apply(x, label, self.axis, self.ignore, self.mode, self.label_weights)
        elif self.l1 is None:
            loss, prob = _SoftmaxLossFn.apply(x, label, self.axis, self.ignore, self.mode)
        else:
            loss, prob = _NormalizedLossFn.apply(x, label, self.axis, self.ignore, self.mode, self.l1)
        return [loss, prob] if self.n_tops == 2 else loss

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(1)
        lab = r.integers(0, 3, (2, 1, 2, 2)).astype(float)
        lab[0, 0, 0, 0] = 255
        base = 'name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss"'
        return [
            Example(base, [r.standard_normal((4, 5)), r.integers(0, 5, (4,)).astype(float)]),
            Example(base + ' top: "prob" loss_param { ignore_label: 255 normalization: FULL }',
                    [r.standard_normal((2, 3, 2, 2)), lab]),
            # NVCaffe's label smoothing: its diff is not the gradient of its (unsmoothed) loss
            Example(base + ' loss_param { ignore_label: 255 label_smoothing: 0.1 }',
                    [r.standard_normal((2, 3, 2, 2)), lab], grad_bottoms=()),
            # caffe-jacinto's label weights: its diff is the unweighted loss's gradient
            Example(base + ' loss_param { ignore_label: 255 label_weights: 0.5 label_weights: 2 label_weights: 1.5 }',
                    [r.standard_normal((2, 3, 2, 2)), lab], grad_bottoms=()),
        ]
