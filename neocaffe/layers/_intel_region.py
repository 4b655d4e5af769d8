"""Intel Caffe's RegionLoss label and helpers (intel/caffe @ 44d536385dc41804a673c527b4c2df2675770dff,
``src/caffe/layers/region_loss_layer.cpp``): which label bottom is Intel's, its rows as truths, its ``class_map`` file,
its double-precision ``sigmoid``; and the box overlaps every YOLO loss here shares (``box_iou``). The layer is
:class:`neocaffe.layers.region_loss.RegionLoss`, whose module docstring
lists where Intel's loss parts from MobileNet-YOLO's."""
from __future__ import annotations

from typing import Sequence

import numpy as np

F64 = np.float64


def ssd_label(shape: Sequence[int]) -> bool:
    """Whether a label bottom is SSD's detection label, 1 x 1 x K x 8 (AnnotatedData without ``yolo_data_type``),
    which Intel Caffe's RegionLoss reads, rather than MobileNet-YOLO's N x 1 x 300 x 5."""
    return len(shape) == 4 and shape[0] == shape[1] == 1 and shape[3] == 8


def logistic64(v: np.ndarray) -> np.ndarray:
    """Intel's ``sigmoid``: ``1. / (1. + exp(-x))`` with C's double ``exp`` (unqualified, on a float), in the data type."""
    return (1.0 / (1.0 + np.exp(-v.astype(F64)))).astype(v.dtype)


def read_class_map(path: str) -> dict[int, int]:
    """``region_loss_param.class_map``: line k holds the blob position of class k (``ss >> id``: 0 where a line does
    not start with an integer). A missing file gives an empty map (Intel logs "no map file"): every class reads 0."""
    out: dict[int, int] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for k, line in enumerate(lines):
        tok = line.split()
        out[k] = int(tok[0]) if tok and tok[0].lstrip("+-").isdigit() else 0
    return out


def intel_truths(label: np.ndarray, n: int, minus_one: bool = True) -> list[np.ndarray]:
    """Per image, its truths in label order as rows ``[label - 1, cx, cy, w, h]`` (``[label, ...]`` with
    ``minus_one`` False: the fork's rows with a ``softmax_tree``) from SSD's rows ``[item, label,
    instance, xmin, ymin, xmax, ymax, difficult]`` (centre ``(min + max) / 2.`` in double, rounded to the data type);
    rows of item -1 are skipped. A ValueError for an item outside the batch (Intel indexes past its vector)."""
    ft = label.dtype.type
    rows = label.reshape(-1, 8)
    item = np.trunc(rows[:, 0])
    keep = item != -1
    bad = keep & ~((item >= 0) & (item < n))
    if bad.any():
        raise ValueError(f"label row {int(np.argmax(bad))} names image {rows[bad][0, 0]}; expected -1 or an image of "
                         f"the batch, 0..{n - 1}")
    out = []
    for b in range(n):
        r = rows[keep & (item == b)]
        cx = ((r[:, 3] + r[:, 5]).astype(F64) / 2.0).astype(ft)
        cy = ((r[:, 4] + r[:, 6]).astype(F64) / 2.0).astype(ft)
        cls = r[:, 1] - ft(1) if minus_one else r[:, 1]
        out.append(np.stack([cls, cx, cy, r[:, 5] - r[:, 3], r[:, 6] - r[:, 4]], axis=1).astype(ft))
    return out


def inter_union(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``box_intersection`` (``overlap`` per axis, 0 when a side is negative) and ``box_union`` of
    centre-size boxes ``(x, y, w, h)`` (arrays, broadcast), in the data type."""
    def side(c1, s1, c2, s2):
        return np.minimum(c1 + s1 / 2, c2 + s2 / 2) - np.maximum(c1 - s1 / 2, c2 - s2 / 2)

    with np.errstate(all="ignore"):
        w, h = side(a[0], a[2], b[0], b[2]), side(a[1], a[3], b[1], b[3])
        inter = np.where((w < 0) | (h < 0), 0, w * h).astype(w.dtype)
        return inter, a[2] * a[3] + b[2] * b[3] - inter


def box_iou(a: tuple, b: tuple) -> np.ndarray:
    """``box_iou``: intersection over union."""
    inter, union = inter_union(a, b)
    with np.errstate(all="ignore"):
        return inter / union


def best_over_truths(iou: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The fork's ``if (iou > best_iou) best_iou = iou`` from 0 over the valid truths (last axis)."""
    return np.where(valid & (iou > 0), iou, 0).max(axis=-1, initial=0).astype(iou.dtype)
