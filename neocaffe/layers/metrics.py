"""Accuracy and ArgMax: forward-only layers (Caffe has no backward for them; their tops carry no gradient).

Ties follow Caffe's ``std::partial_sort`` of (value, index) pairs with ``std::greater``: among equal
values the LARGER class index ranks first.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, canonical_axis
from neocaffe.layers.registry import register_layer


def _rank_desc(x: Tensor, dim: int, k: int) -> tuple[Tensor, Tensor]:
    """The top ``k`` (values, indices) along ``dim`` in Caffe's order: descending value, ties by
    descending index."""
    n = x.shape[dim]
    vals, idx = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    vals, idx = vals.narrow(dim, 0, k), idx.narrow(dim, 0, k)
    return vals, (n - 1) - idx


@register_layer("Accuracy")
class Accuracy(Layer):
    """``accuracy_param {top_k axis ignore_label}``; optional second top: per-class accuracy (num_labels,).

    A prediction counts when fewer than ``top_k`` classes rank above the true class, ranking as Caffe's
    partial_sort does (value, then larger index first). The accuracy is correct / non-ignored count
    (0/0 gives NaN, as in the fork); a class never seen gets per-class accuracy 0.

    happynear's ``min_is_better`` (caffe-windows ms @ 967eedf2, ``accuracy_layer.cpp``: ``std::less``, for
    NormFace's distances): the smallest scores rank first, ties by the smaller class index.
    """

    exact_bottoms = 2
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ap = self.param.accuracy_param
        self.top_k = int(ap.top_k)
        self.ignore = ap.ignore_label if ap.HasField("ignore_label") else None
        self.min_is_better = bool(ap.min_is_better)
        self.axis = canonical_axis(ap.axis, len(bottom_shapes[0]), self)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, label = bottom_shapes
        outer, c, inner = math.prod(x[: self.axis]), x[self.axis], math.prod(x[self.axis + 1:])
        if self.top_k > math.prod(x) // max(math.prod(label), 1):
            raise self.error(f"top_k ({self.top_k}) must be less than or equal to the number of classes ({c})")
        if outer * inner != math.prod(label):
            raise self.error(
                f"number of labels must match number of predictions: prediction shape {x} with axis "
                f"{self.axis} needs {outer * inner} labels; received label shape {label}"
            )
        return [()] + [(c,)] * (len(self.param.top) - 1)

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        x = x.detach()
        outer, c = math.prod(x.shape[: self.axis]), x.shape[self.axis]
        x3 = x.reshape(outer, c, -1)
        lab = label.detach().to(torch.int64).reshape(outer, 1, -1)
        valid = (lab != self.ignore) if self.ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        lab = torch.where(valid, lab, torch.zeros_like(lab))
        true_v = x3.gather(1, lab)
        cls = torch.arange(c, device=x.device).reshape(1, c, 1)
        if self.min_is_better:  # std::less on (value, index) pairs
            rank = (x3 < true_v).sum(1, keepdim=True) + ((x3 == true_v) & (cls < lab)).sum(1, keepdim=True)
        else:
            rank = (x3 > true_v).sum(1, keepdim=True) + ((x3 == true_v) & (cls > lab)).sum(1, keepdim=True)
        hit = ((rank < self.top_k) & valid).to(x.dtype)
        vf = valid.to(x.dtype)
        acc = hit.sum() / vf.sum()
        if len(self.param.top) == 1:
            return acc
        flat = lab.reshape(-1)
        nums = torch.zeros(c, dtype=x.dtype, device=x.device).index_add_(0, flat, vf.reshape(-1))
        hits = torch.zeros(c, dtype=x.dtype, device=x.device).index_add_(0, flat, hit.reshape(-1))
        per_class = torch.where(nums == 0, torch.zeros_like(nums), hits / nums.clamp(min=1))
        return [acc, per_class]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(10)
        return [
            Example('name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc"',
                    [r.standard_normal((6, 4)), r.integers(0, 4, (6,)).astype(float)], grad_bottoms=()),
            Example('name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" top: "pc" '
                    "accuracy_param { top_k: 2 ignore_label: 1 }",
                    [r.standard_normal((2, 3, 2, 2)), r.integers(0, 3, (2, 2, 2)).astype(float)], grad_bottoms=()),
            Example('name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" '
                    "accuracy_param { min_is_better: true }",
                    [r.standard_normal((6, 4)), r.integers(0, 4, (6,)).astype(float)], grad_bottoms=()),
        ]


@register_layer("ArgMax")
class ArgMax(Layer):
    """``argmax_param {out_max_val top_k axis}``. With ``axis``: the axis becomes ``top_k`` long and holds
    indices (or values with ``out_max_val``). Without: the input is flattened per item and the top is
    (N, 1, top_k) of indices, or (N, 2, top_k) of indices then values, padded with 1s to the input's rank.
    """

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ap = self.param.argmax_param
        self.out_max_val, self.top_k = ap.out_max_val, int(ap.top_k)
        shape = bottom_shapes[0]
        if self.top_k < 1:
            raise self.error("top_k must not be less than 1")
        self.axis = canonical_axis(ap.axis, len(shape), self) if ap.HasField("axis") else None
        limit = shape[self.axis] if self.axis is not None else math.prod(shape[1:])
        if self.top_k > limit:
            raise self.error(f"top_k ({self.top_k}) must be less than or equal to {limit}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        if self.axis is not None:
            return [x[: self.axis] + (self.top_k,) + x[self.axis + 1:]]
        shape = [1] * max(3, len(x))
        shape[0], shape[1], shape[2] = x[0], 2 if self.out_max_val else 1, self.top_k
        return [tuple(shape)]

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach()
        if self.axis is not None:
            vals, idx = _rank_desc(x, self.axis, self.top_k)
            return vals if self.out_max_val else idx.to(x.dtype)
        vals, idx = _rank_desc(x.reshape(x.shape[0], -1), 1, self.top_k)
        out = torch.stack([idx.to(x.dtype), vals], 1) if self.out_max_val else idx.to(x.dtype)[:, None]
        return out.reshape(self.reshape([tuple(x.shape)])[0])

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(11)
        return [
            Example('name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 2 out_max_val: true }',
                    [r.standard_normal((3, 2, 2, 2))], grad_bottoms=()),
            Example('name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 }',
                    [r.standard_normal((2, 5, 3))], grad_bottoms=()),
        ]
