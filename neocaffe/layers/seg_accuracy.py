"""DeepLab's ``SegAccuracy``: pixel accuracy, mean class recall and mean IoU from a confusion matrix.

Lineage and source files: hszhao/PSPNet @ 798bdc9 (DeepLab v2's caffe), ``src/caffe/layers/seg_accuracy_layer.cpp``
and ``src/caffe/util/confusion_matrix.cpp``.

Fields read (``seg_accuracy_param``): ``ignore_label`` (repeated: pixels with any of them are skipped)
and ``reset`` (true: the matrix starts empty at every forward; false: it accumulates over forwards,
as the fork's member matrix does). ``metric`` is not read by the fork either: all three are reported.

Bottoms: scores (N, C, H, W) and labels (N, 1, H, W), labels truncated to integers as the fork's
``static_cast<int>``. The prediction is the arg max over C, ties to the larger class index (the fork's
``partial_sort`` with ``std::greater`` on (score, class) pairs). A label that is neither ignored nor
in 0..C-1 is an error, as the fork's LOG(FATAL). Top (1, 1, 1, 3): the matrix's accuracy (trace / total,
0 when empty), ``avgRecall`` (mean over classes with pixels of diag / row sum) and ``avgJaccard``
(mean over all C classes of diag / (row + column - diag), a class absent from both counting 1).
Forward only: the top carries no gradient.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer


def confusion_scores(m: Tensor) -> Tensor:
    """(accuracy, avgRecall(false), avgJaccard) of a C x C confusion matrix (rows: actual, columns:
    predicted), in float64 as the fork's ``ConfusionMatrix``."""
    m = m.to(torch.float64)
    diag, rows, cols = m.diagonal(), m.sum(1), m.sum(0)
    total = m.sum()
    acc = torch.where(total > 0, diag.sum() / total.clamp(min=1), torch.zeros_like(total))
    seen = rows > 0
    recall = torch.where(seen, diag / rows.clamp(min=1), torch.zeros_like(rows)).sum() / seen.sum().clamp(min=1)
    union = rows + cols - diag
    jac = torch.where(diag == union, torch.ones_like(diag), diag / union.clamp(min=1)).mean()
    return torch.stack([acc, recall, jac])


@register_layer("SegAccuracy")
class SegAccuracyLayer(Layer):
    """See the module docstring."""

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.seg_accuracy_param
        self.ignore = sorted(set(int(v) for v in p.ignore_label))
        self.reset = bool(p.reset)
        self.matrix: Tensor | None = None  # the accumulated confusion (reset: false)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, label = (legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(bottom_shapes))
        if x[1] < 1:
            raise self.error(f"the scores need at least one channel (class); received {bottom_shapes[0]}")
        if label[1] != 1 or (x[0], x[2], x[3]) != (label[0], label[2], label[3]):
            raise self.error(f"the label must be (N, 1, H, W) of the scores' N, H, W: scores {bottom_shapes[0]}, "
                             f"expected label {(x[0], 1, x[2], x[3])}; received {bottom_shapes[1]}")
        return [(1, 1, 1, 3)]

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        x = x.detach()
        n, c = x.shape[0], x.shape[1] if x.dim() > 1 else 1
        x = x.reshape(n, c, -1)
        pred = (c - 1) - x.flip(1).argmax(1)  # ties: the larger class, as the fork's partial_sort
        gt = label.detach().reshape(n, -1).trunc().to(torch.int64)
        keep = torch.ones_like(gt, dtype=torch.bool)
        for v in self.ignore:
            keep &= gt != v
        bad = keep & ((gt < 0) | (gt >= c))
        if bool(bad.any()):
            i, pos = (int(v) for v in bad.nonzero()[0])
            w = label.shape[-1] if label.dim() == 4 else 1
            raise self.error(f"unexpected label {int(gt[i, pos])} at num {i}, row {pos // w}, col {pos % w}; expected "
                             f"0..{c - 1} or an ignore_label {self.ignore}")
        counts = torch.bincount((gt[keep] * c + pred[keep]), minlength=c * c).reshape(c, c)
        if self.reset or self.matrix is None or self.matrix.shape != counts.shape:
            self.matrix = counts
        else:
            self.matrix = self.matrix.to(counts.device) + counts
        return confusion_scores(self.matrix).to(x.dtype).reshape(1, 1, 1, 3)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(12)
        lab = r.integers(0, 4, (2, 1, 3, 5)).astype(float)
        lab[0, 0, 1, :2] = 255
        return [
            Example('name: "a" type: "SegAccuracy" bottom: "x" bottom: "label" top: "acc" '
                    "seg_accuracy_param { ignore_label: 255 }", [r.standard_normal((2, 4, 3, 5)), lab],
                    grad_bottoms=()),
        ]
