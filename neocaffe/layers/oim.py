"""person_search's OIM loss layers: ``LabeledMatching`` and ``UnlabeledMatching``.

Lineage: Cysu/caffe ``faster-rcnn`` @ aed38841ae4282d90575186b87c3287620913722 (Tong Xiao's Caffe, the
submodule ShuangLI59/person_search pins), ``src/caffe/layers/labeled_matching_layer.{cpp,cu}``,
``src/caffe/layers/unlabeled_matching_layer.{cpp,cu}``, ``include/caffe/common_layers.hpp``; the parameter
messages from its ``src/caffe/proto/caffe.proto`` (proto/NUMBERING.md, lineage oim). Xiao et al., "Joint
Detection and Identification Feature Learning for Person Search", CVPR 2017.

``LabeledMatching`` (``labeled_matching_param``: ``num_classes`` N, ``momentum`` m, default 0.5). Bottoms:
the features x (M, ...) (K = count from axis 1) and the labels (M values). Tops: the scores x @ W^T (M, N)
and the labels, shaped like bottom 1, with every label outside [0, N) (as ``static_cast<int>``) made -1.
Blobs: the lookup table W (N, K) and the timestamps (N,), both zero at set-up.
``UnlabeledMatching`` (``unlabeled_matching_param``: ``queue_size`` Q, default 1000, > 0). Bottoms: the
features and the labels; top: the scores x @ U^T (M, Q). Blob: the queue U (Q, K), zero at set-up.

Backward (both): the features' diff ``top_diff @ table`` (the gradient of the forward, computed from the
table before it changes), then, as the fork's ``Backward``, the table update, never in forward. The fork
gives the blobs no diff: it updates them itself when Caffe's ``param_propagate_down`` is on, i.e. when the
blob's ``lr_mult`` is not 0 (here: the blob ``requires_grad``, which the net sets from ``lr_mult``);
person_search's train.prototxt gives them ``lr_mult: 1, decay_mult: 0``, so the solver's own step on them
is zero. LabeledMatching: every timestamp + 1, then for each row i in order whose label l is in [0, N):
``W[l] = m W[l] + (1 - m) x_i`` (``caffe_cpu_axpby``) and timestamp[l] = 0; repeated labels in a batch
apply one after the other (here in rounds: the r-th occurrence of every label in round r). The fork
aborts when the two blobs' ``lr_mult`` disagree in being 0; so does this layer. UnlabeledMatching: each
row whose label is -1 (as ``static_cast<int>``, so labels in (-2, -1]) is copied, in order, to the queue
row ``tail``, and ``tail = (tail + 1) mod Q``; the tail starts at 0 at set-up.

Deviations: (1) the fork keeps the queue tail in the layer object only, so a run resumed from a snapshot
restarts it at 0; here it is the layer's resume state (``resume_state``), so a resume is exact.
(2) The fork's CUDA backward copies a queue row with ``caffe_gpu_memcpy(K, ...)``, which counts bytes:
only the first K / 4 floats of each unlabeled feature reach the queue on GPU (the rest of the row keeps
its older values). This layer copies all K values, as the fork's CPU code, on every device.
(3) The labels must hold exactly M values (the fork reads the first M and checks nothing).

The fork's other layers in person_search's nets: its ``BN`` (``bn_layer.{cpp,cu}``) is yjxiong/caffe's
(@ 9831a2b4: the ``.cu`` byte for byte; the ``.cpp`` adds only a redundant ``if (!frozen_)`` inside the
non-frozen branch), read here by ``neocaffe/layers/bn.py``'s PSPNet form. Its ``Normalize``
(``normalize_layer.{cpp,cu}``, no parameter) scales each item by ``sum(x^2)^-0.5`` over C*H*W, no epsilon;
neocaffe reads a parameterless Normalize of a 2-axis bottom as happynear's, ``(sum(x^2) + 1e-6)^-0.5``
over the channels at each position (on a 2-axis bottom: over C, the same items), the same form otherwise
(backward ``(dy - (y . dy) y) / norm``; both give a 4-axis top (N, C, 1, 1)). No field or type tells the two apart in
the eval nets (they hold no OIM layer), so the happynear form stays: for person_search's 256-d features
(norms far from 0) the two differ by about ``5e-7 / sum(x^2)`` relatively.
"""
from __future__ import annotations

import functools

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape
from neocaffe.layers.registry import register_layer


class _Match(torch.autograd.Function):
    """scores = x @ table^T; backward: x's diff = diff @ table, then ``update(x)`` (the fork's order)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, table: Tensor, update: Callable[[Tensor], None]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, table)
        ctx.update = update
        return x @ table.t()

    @staticmethod
    def backward(ctx: Any, diff: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        x, table = ctx.saved_tensors
        gx = diff @ table if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:  # param_propagate_down: lr_mult != 0
            with torch.no_grad():
                ctx.update(x.detach())
        return gx, None, None


class _Matching(Layer):
    """What both layers share: K from bottom 0, M labels in bottom 1."""

    exact_bottoms = 2
    allow_in_place = False

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0  # the labels get no diff

    def _features(self, bottom_shapes: list[Shape]) -> tuple[int, int]:
        s, ls = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(s) < 1:
            raise self.error(f"bottom 0 (features) must have a batch axis; received shape {s}")
        if math.prod(ls) != s[0]:
            raise self.error(f"bottom 1 (labels) must hold one label per item of bottom 0 ({s[0]}); "
                             f"received shape {ls}")
        return s[0], math.prod(s[1:])

    def _check_k(self, bottom_shapes: list[Shape]) -> int:
        m, k = self._features(bottom_shapes)
        if k != self.blobs[0].shape[1]:
            raise self.error(f"bottom 0 {tuple(bottom_shapes[0])} has {k} values per item; the table was set "
                             f"up for {self.blobs[0].shape[1]} (Input size incompatible with initialization)")
        return m

    def _scores(self, x: Tensor, update: Callable[[Tensor], None]) -> Tensor:
        # the backward's table update is a side effect: never traced (compile mode); wrapped at the first call,
        # because torch.compiler.disable imports torch._dynamo, which `import caffe` must not pay for
        return _untraced_match()(x.reshape(x.shape[0], -1), self.blobs[0], update)


@functools.cache
def _untraced_match() -> Callable[..., Tensor]:
    """``_Match.apply`` behind ``torch.compiler.disable`` (made once, on first use)."""
    return torch.compiler.disable(_Match.apply)


@register_layer("LabeledMatching")
class LabeledMatching(_Matching):
    """The OIM loss's lookup table of labeled identities (``labeled_matching_param``)."""

    exact_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.labeled_matching_param
        if not p.HasField("num_classes") or p.num_classes <= 0:
            raise self.error(f"labeled_matching_param.num_classes must be set and positive; received "
                             f"{p.num_classes if p.HasField('num_classes') else 'none'}")
        self.num_classes = int(p.num_classes)
        self.momentum = float(np.float32(p.momentum))
        self.rest = float(np.float32(1.0) - np.float32(p.momentum))  # (Dtype)1. - momentum_
        _, k = self._features(bottom_shapes)
        self.add_blob(torch.zeros(self.num_classes, k))  # instance features
        self.add_blob(torch.zeros(self.num_classes))  # update timestamps

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        m = self._check_k(bottom_shapes)
        return [(m, self.num_classes), tuple(bottom_shapes[1])]

    def _update(self, x: Tensor, labels: Tensor) -> None:
        table, stamps = self.blobs[0], self.blobs[1]
        stamps.add_(1)
        lab = torch.trunc(labels).long()
        keep = (lab >= 0) & (lab < self.num_classes)
        rows, lab = x[keep], lab[keep]
        if lab.numel() == 0:
            return
        # occurrence index of each row among the earlier rows of its label
        same = lab[:, None] == lab[None, :]
        nth = torch.tril(same, diagonal=-1).sum(1)
        for r in range(int(nth.max()) + 1):
            sel = nth == r
            ls = lab[sel]
            table[ls] = self.momentum * table[ls] + self.rest * rows[sel].to(table.dtype)
        stamps[lab] = 0

    def forward(self, x: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        if self.blobs[0].requires_grad != self.blobs[1].requires_grad:
            raise self.error("the instance table and the timestamps must both be updated or neither "
                             "(their lr_mult must both be 0 or both not 0)")
        labels = label.reshape(-1)
        scores = self._scores(x, lambda xd: self._update(xd, labels.detach()))
        lab = torch.trunc(label)
        out = torch.where((lab >= 0) & (lab < self.num_classes), label, torch.full_like(label, -1.0))
        return scores, out.detach()

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(3)
        p = ('name: "lm" type: "LabeledMatching" bottom: "feat" bottom: "label" top: "scores" top: "id_labels" '
             'labeled_matching_param {{ num_classes: 4 {} }}')

        def filled(layer: Any) -> None:  # a table as training leaves it, fixed (lr_mult 0): the gradient check
            with torch.no_grad():
                layer.blobs[0].copy_(torch.as_tensor(np.random.default_rng(4).standard_normal((4, 6))))
            for b in layer.blobs:
                b.requires_grad_(False)

        return [
            Example(p.format(""), [r.standard_normal((5, 6)), np.array([0.0, 3.0, -1.0, 5.0, 3.0])],
                    grad_params=False, phase=TRAIN, prepare=filled),
            # updated in backward (lr_mult 1): no gradient check, the table changes under it
            Example(p.format("momentum: 0.25"), [r.standard_normal((3, 2, 1, 3)), np.array([[2.0], [2.0], [1.0]])],
                    grad_bottoms=(), grad_params=False, phase=TRAIN),
        ]


@register_layer("UnlabeledMatching")
class UnlabeledMatching(_Matching):
    """The OIM loss's circular queue of unlabeled features (``unlabeled_matching_param``)."""

    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.unlabeled_matching_param
        if p.queue_size <= 0:
            raise self.error(f"unlabeled_matching_param.queue_size must be positive; received {p.queue_size}")
        self.queue_size = int(p.queue_size)
        self.tail = 0
        _, k = self._features(bottom_shapes)
        self.add_blob(torch.zeros(self.queue_size, k))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        m = self._check_k(bottom_shapes)
        return [(m, self.queue_size)]

    def _update(self, x: Tensor, labels: Tensor) -> None:
        rows = x[torch.trunc(labels) == -1]
        n, q = rows.shape[0], self.queue_size
        if n == 0:
            return
        start = self.tail
        if n > q:  # the earlier rows are overwritten within this batch
            rows, start = rows[n - q:], (self.tail + n - q) % q
        pos = (torch.arange(rows.shape[0], device=x.device) + start) % q
        self.blobs[0][pos] = rows.to(self.blobs[0].dtype)
        self.tail = (self.tail + n) % q

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        labels = label.reshape(-1)
        return self._scores(x, lambda xd: self._update(xd, labels.detach()))

    def resume_state(self) -> dict | None:
        return {"queue_tail": self.tail}

    def load_resume_state(self, state: dict) -> None:
        self.tail = int(state["queue_tail"]) % self.queue_size

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(5)
        p = ('name: "um" type: "UnlabeledMatching" bottom: "feat" bottom: "label" top: "scores" '
             'unlabeled_matching_param {{ queue_size: {} }}')

        def filled(layer: Any) -> None:
            with torch.no_grad():
                layer.blobs[0].copy_(torch.as_tensor(np.random.default_rng(6).standard_normal((3, 4))))
            layer.blobs[0].requires_grad_(False)

        return [
            Example(p.format(3), [r.standard_normal((4, 4)), np.array([-1.0, 2.0, -1.0, 0.0])],
                    grad_params=False, phase=TRAIN, prepare=filled),
            Example(p.format(2), [r.standard_normal((5, 1, 2, 2)), np.array([-1.0, -1.0, 1.0, -1.0, -1.0])],
                    grad_bottoms=(), grad_params=False, phase=TRAIN),
        ]
