"""R-FCN's ``BoxAnnotatorOHEM``: online hard example mining, the RoIs of highest loss per image.

Lineage: daijifeng001/caffe-rfcn (R-FCN) @ 543f8f6a, ``src/caffe/layers/box_annotator_ohem_layer.cu``
(its ``.cpp`` has the setup and the shape checks; its CPU forward and backward are NOT_IMPLEMENTED, so
the GPU file, which works on host copies, is the reference). Microsoft/caffe @ 1a2be8e, the Caffe that
py-R-FCN names, carries the same file unchanged. Reads ``box_annotator_ohem_param {roi_per_img
ignore_label}``.

Bottoms: RoIs ``R x 5 [x H x W]`` (column 0 the image's index in the batch), the per-RoI loss and the
labels ``R x 1 [x H x W]``, the box-regression loss weights ``R x C [x H x W]`` (blobs read with Caffe's
legacy num/channels/height/width accessors: fewer axes count as 1). Tops: labels ``R x 1 x H x W`` and
loss weights ``R x C x H x W``: those of the kept RoIs copied, ``ignore_label`` and 0 elsewhere.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer

_INT_MAX = 2**31 - 1

#: what each bottom holds, for the errors
_BOTTOMS = ("RoIs", "per-RoI loss", "labels", "bbox loss weights")


def hard_rois(batch: Tensor, loss: Tensor, per_img: int) -> Tensor:
    """Which RoIs the fork keeps (bool, one per RoI): RoIs sorted by descending loss, the first
    ``per_img`` of each image (image ``trunc(batch)``, the fork's ``int`` cast). Equal losses rank by
    RoI index (a stable sort; see :class:`BoxAnnotatorOHEM`); a NaN loss ranks last."""
    r = loss.numel()
    key = torch.where(torch.isnan(loss), torch.full_like(loss, -math.inf), loss)
    order = torch.sort(key, descending=True, stable=True).indices
    img = torch.trunc(batch).to(torch.int64)[order]
    grouped = torch.sort(img, stable=True).indices  # by image; by loss within one image
    g = img[grouped]
    pos = torch.arange(r, device=loss.device)
    starts = torch.ones(r, dtype=torch.bool, device=loss.device)
    starts[1:] = g[1:] != g[:-1]
    rank = pos - torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
    keep = torch.zeros(r, dtype=torch.bool, device=loss.device)
    keep[order[grouped]] = rank < per_img
    return keep


@register_layer("BoxAnnotatorOHEM")
class BoxAnnotatorOHEM(Layer):
    """R-FCN's hard-example annotator (caffe-rfcn ``box_annotator_ohem_layer.cu``).

    ``roi_per_img`` (required, > 0): RoIs kept per image; ``ignore_label`` (default -1): the label the
    other RoIs get. RoI ``i`` (position ``(n, s)``, ``s`` over height x width) has the loss ``bottom1[i]``
    and belongs to image ``int(bottom0[n, 0, s])``; RoIs are visited by descending loss and each image
    keeps its first ``roi_per_img``. A kept RoI's label and its ``C`` loss weights are copied to the tops;
    every other RoI gets ``ignore_label`` and zero weights. Nothing is propagated back (the fork's
    backward returns at once): the tops carry no gradient and no bottom gets a diff.

    Fork details: ties in loss are ordered by ``std::sort`` with ``loss[a] > loss[b]``, which is not
    stable; libstdc++'s sort is an insertion sort up to 16 elements (ties then keep RoI order, as here),
    beyond that the kept RoI among tied ones at an image's cut depends on the library's introsort.
    NaN losses (no order in the fork) rank last here. An image index that truncates below 0 (the
    fork indexes ``number_left`` out of bounds), a non-finite one, and a net with no RoIs (the fork's
    ``CHECK_GT(num_imgs, 0)``) are errors. With height x width > 1 the fork's count of images reads
    past the RoI blob (its loop runs ``R x H x W`` times over ``R`` RoIs); only its size was affected,
    never which RoIs are kept, so the results here are the fork's wherever it stays in bounds.
    """

    exact_bottoms = 4
    exact_tops = 2
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.box_annotator_ohem_param
        # roi_per_img is a required uint32 that the fork stores in an int and CHECKs > 0
        if not p.HasField("roi_per_img") or not 0 < p.roi_per_img <= _INT_MAX:
            got = p.roi_per_img if p.HasField("roi_per_img") else "nothing"
            raise self.error(f"box_annotator_ohem_param.roi_per_img (required) must be in [1, {_INT_MAX}]; "
                             f"received {got}")
        self.per_img = int(p.roi_per_img)
        self.ignore_label = int(p.ignore_label)

    def allow_force_backward(self, bottom: int) -> bool:
        return False  # the fork's backward writes no bottom diff

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c, h, w = legacy_shape(bottom_shapes[0], self, f"bottom 0 ({_BOTTOMS[0]})")
        if c != 5:
            raise self.error(f"bottom 0 (RoIs) must have 5 channels (batch index, x1, y1, x2, y2): num x 5 "
                             f"[x height x width]; received shape {tuple(bottom_shapes[0])}")
        for i in (1, 2):
            if legacy_shape(bottom_shapes[i], self, f"bottom {i} ({_BOTTOMS[i]})") != (n, 1, h, w):
                raise self.error(f"bottom {i} ({_BOTTOMS[i]}) must be {n} x 1 x {h} x {w}, one value per RoI of "
                                 f"bottom 0 {tuple(bottom_shapes[0])}; received shape {tuple(bottom_shapes[i])}")
        n3, c3, h3, w3 = legacy_shape(bottom_shapes[3], self, f"bottom 3 ({_BOTTOMS[3]})")
        if (n3, h3, w3) != (n, h, w):
            raise self.error(f"bottom 3 ({_BOTTOMS[3]}) must be {n} x channels x {h} x {w}, one row per RoI of "
                             f"bottom 0 {tuple(bottom_shapes[0])}; received shape {tuple(bottom_shapes[3])}")
        return [(n, 1, h, w), (n, c3, h, w)]

    def forward(self, rois: Tensor, loss: Tensor, labels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        lab_shape, w_shape = self.reshape([tuple(t.shape) for t in (rois, loss, labels, weights)])
        n, c, h, w = w_shape
        batch = rois.detach().reshape(n, 5, h * w)[:, 0, :].reshape(-1)
        self._check_batch(batch)
        keep = hard_rois(batch, loss.detach().reshape(-1), self.per_img)
        lab = labels.detach().reshape(-1)
        top_labels = torch.where(keep, lab, torch.full_like(lab, self.ignore_label))
        wt = weights.detach().reshape(n, c, h * w)
        top_weights = torch.where(keep.view(n, 1, h * w), wt, torch.zeros_like(wt))
        return top_labels.reshape(lab_shape), top_weights.reshape(w_shape)

    def _check_batch(self, batch: Tensor) -> None:
        if batch.numel() == 0:
            raise self.error("received no RoIs (bottom 0 is empty); the fork requires at least one image "
                             "(CHECK_GT(num_imgs, 0))")
        bad = ~torch.isfinite(batch) | (torch.trunc(batch) < 0)
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0, 0])
            raise self.error(f"RoI batch indices (bottom 0, channel 0) must be finite and > -1 (the fork casts "
                             f"them to int and indexes by them); received {batch[k].item()} at RoI position {k}")

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(143)
        rois = np.concatenate([r.integers(0, 3, (20, 1)), r.uniform(0, 50, (20, 4))], 1)
        loss = r.choice([0.25, 0.5, 1.0, 2.0], 20)  # many ties
        labels = r.integers(0, 4, 20).astype(float)
        weights = r.integers(0, 2, (20, 8)).astype(float)
        base = ('name: "ohem" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "loss" bottom: "labels" '
                'bottom: "w" top: "labels_ohem" top: "w_ohem" ')
        sp_rois = np.concatenate([r.integers(0, 2, (2, 1, 2, 3)), r.uniform(0, 9, (2, 4, 2, 3))], 1)
        return [
            Example(base + 'box_annotator_ohem_param { roi_per_img: 3 }', [rois, loss, labels, weights],
                    grad_bottoms=(), grad_params=False, phase=0),
            Example(base + 'box_annotator_ohem_param { roi_per_img: 4 ignore_label: 255 }',
                    [rois.reshape(20, 5, 1, 1), r.standard_normal((20, 1, 1, 1)), labels.reshape(20, 1),
                     weights.reshape(20, 8, 1, 1)], grad_bottoms=(), grad_params=False, phase=0),
            Example(base + 'box_annotator_ohem_param { roi_per_img: 2 }',
                    [sp_rois, r.standard_normal((2, 1, 2, 3)), r.integers(0, 3, (2, 1, 2, 3)).astype(float),
                     r.uniform(0, 1, (2, 4, 2, 3))], grad_bottoms=(), grad_params=False, phase=0),
        ]
