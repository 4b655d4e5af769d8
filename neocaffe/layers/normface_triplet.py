"""happynear's ``GeneralTripletLoss`` of NormFace (happynear/NormFace: ``prototxt/
normalized_Euclidean_triplet.prototxt``): a triplet hinge on distances such as InnerDistance's, each item's
label distance against its distances to the other classes' centers.

Source: happynear/caffe-windows, branch ``ms`` @ 967eedf2 (``src/caffe/layers/general_triplet_loss_layer.cpp``,
CPU only: the GPU runs the CPU code; ``include/caffe/layers/general_triplet_loss_layer.hpp``); the files and
``GeneralTripletParameter`` (``general_triplet_loss_param``, 217) are the same at 504d8a85, AMSoftmax's pin.

Bottoms: the distances d (num x dim, num the first axis) and labels (num values in [0, dim), read as
``static_cast<int>``); exactly two: the layer is a LossLayer and does not override its
``ExactNumBottomBlobs`` (2), so the ``.cpp``'s per-item weights from a third bottom are never reached. Tops:
the loss and, optionally, ``(sum_i d_i,label_i / num, sum of every other entry / num / (dim - 1))`` (all
negatives, inside the margin or not). With ``s_i = d_i,label_i`` the fork's forward writes, for j != label_i,
``h_ij = max(0, s_i + margin - d_ij) * negative_weight`` and 0 at the label; ``hardest_only``: a row keeps
only its first largest ``h_ij > 0`` (none: the row is kept whole, which matters only for a negative
``negative_weight``, whose terms are never ``> 0``); ``positive_first``: a row with ``s_i >
positive_upper_bound`` keeps nothing. Loss ``sum |h| / num``: the label distances themselves add nothing
to the reported loss (``add_center_loss`` acts in the backward only).

Backward, the fork's diff times ``loss_weight / num`` (from the forward's data and choices):

* a ``positive_first`` row past the bound: ``positive_weight`` at its label, 0 elsewhere;
* otherwise, without ``hardest_only``: ``-negative_weight`` where ``s_i + margin > d_ij``, else 0; with
  it, ``-negative_weight`` at the row's hardest negative if it has one **and its distance is not 0** (the
  fork tests ``bottom_data[hardest]`` where it means the diff): a hardest negative at distance 0 keeps
  its forward value ``h_ij``, and a row without one keeps the forward's values (0 but for a negative
  ``negative_weight``);
* the label entry: ``positive_weight`` if ``add_center_loss`` or the row has a negative diff counted
  above, else 0.

Not the gradient of the loss: the label entry is ``positive_weight`` where the loss's derivative is
``negative_weight`` times the number of active negatives (a pull toward the center, the "center loss" of
``add_center_loss``, that the loss does not report), ``positive_first`` rows get it with a loss of 0, a
negative ``negative_weight`` gets ``-negative_weight`` under ``|.|``, and the zero-distance quirk above.
It is the gradient for ``hardest_only``, ``add_center_loss: false``, no ``positive_first`` and
``positive_weight == negative_weight > 0`` (away from the hinge's kinks, ties and zero distances). The
distance top passes no diff (its loss weight, NormFace's ``loss_weight: 1``, counts in the reported loss
only). Nothing is kept across forwards (the hardest indices are the forward's, read by its backward).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TEST, TRAIN, Example, Shape
from neocaffe.layers.face_losses import _labels
from neocaffe.layers.normface_metric import _PresetDiffLoss
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer


@register_layer("GeneralTripletLoss")
class GeneralTripletLossLayer(_LossLayer):
    """happynear's ``GeneralTripletLoss`` (see the module docstring)."""

    exact_tops = None
    min_tops = 1
    max_tops = 2
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.p = self.param.general_triplet_loss_param

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        out = super().reshape(bottom_shapes)
        s, ls = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if not s or s[0] == 0 or math.prod(ls) != s[0]:
            raise self.error(f"needs one label per item of the distances: distances {s}, labels {ls}")
        return out + [(2,)][: self.n_tops - 1]

    def _terms(self, d: Tensor, lab: Tensor) -> tuple[Tensor, Tensor]:
        """The fork's Forward_cpu and Backward_cpu on distances (num, dim): the loss and the diff before
        ``* loss_weight / num``."""
        p = self.p
        num, dim = d.shape
        cols = torch.arange(dim, device=d.device)[None, :]
        pos = cols == lab[:, None]
        zero = d.new_zeros(())
        same = d.gather(1, lab[:, None])  # (num, 1)
        reach = same + p.margin  # Dtype: s + margin, then compared with (or minus) each d
        h = torch.where(pos, zero, (reach - d).clamp(min=0) * p.negative_weight)
        if p.hardest_only:  # the first largest h > 0 of each row
            cand = ~pos & (h > 0)
            found = cand.any(1, keepdim=True)
            hard = torch.where(cand, h, h.new_full((), -math.inf)).argmax(1, keepdim=True)
            is_hard = cols == hard
            h = torch.where(found & ~is_hard, zero, h)  # the label entry is 0 already
        first = same > p.positive_upper_bound if p.positive_first else torch.zeros_like(same, dtype=torch.bool)
        h = torch.where(first, zero, h)
        loss = h.abs().sum() / num
        # Backward_cpu: it rewrites the forward's values in bottom_diff
        if p.hardest_only:
            hit = found & (d.gather(1, hard) != 0)  # the fork's `bottom_data[hardest]`: a distance, not a diff
            neg = torch.where(hit & is_hard, zero - p.negative_weight, h)
            counted = hit
        else:
            active = ~pos & (reach > d)
            neg = torch.where(active, zero - p.negative_weight, zero)
            counted = active.any(1, keepdim=True)
        center = torch.full_like(same, p.positive_weight) if p.add_center_loss else \
            torch.where(counted, same.new_full((), p.positive_weight), zero)
        diff = torch.where(pos, center, neg)
        diff = torch.where(first, torch.where(pos, d.new_full((), p.positive_weight), zero), diff)
        return loss, diff

    def forward(self, x: Tensor, label: Tensor):  # type: ignore[override]
        num = x.shape[0]
        d = x.detach().reshape(num, -1)
        dim = d.shape[1]
        with torch.no_grad():
            lab = _labels(self, label, dim)
            loss, diff = self._terms(d, lab)
        top = _PresetDiffLoss.apply(x, loss, diff)
        if self.n_tops == 1:
            return top
        with torch.no_grad():  # every label distance; every other entry, inside the margin or not
            pos = torch.arange(dim, device=d.device)[None, :] == lab[:, None]
            pos_sum, neg_sum = torch.where(pos, d, 0).sum(), torch.where(pos, 0, d).sum()
            return top, torch.stack([pos_sum / num, neg_sum / num / (dim - 1)])

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(217)
        # distinct distances away from the hinge's kinks (margin 0.3: no |s + 0.3 - d| below 0.02)
        d = r.permutation(np.linspace(0.1, 2.0, 20)).reshape(5, 4) + r.uniform(-0.01, 0.01, (5, 4))
        label = np.array([0.0, 3.0, 1.0, 2.0, 3.0])
        p = ('name: "triplet_loss" type: "GeneralTripletLoss" bottom: "d" bottom: "label" top: "triplet_loss" '
             '{} general_triplet_loss_param {{ {} }}')
        # the gradient only for hardest_only without the center term (positive_weight = negative_weight)
        return [Example(p.format('top: "mean_distance"', "margin: 0.3 hardest_only: true add_center_loss: false"),
                        [d, label], phase=TRAIN),
                Example(p.format('top: "mean_distance"', "margin: 0.8 add_center_loss: true hardest_only: true"),
                        [d, label], grad_bottoms=(), phase=TRAIN),
                Example(p.format("", "margin: 0.5 positive_first: true positive_upper_bound: 1 positive_weight: 2 "
                                 "negative_weight: 0.5"), [d, label], grad_bottoms=(), phase=TEST)]
