"""The SSD-label form of ``RegionLoss``: choasup/caffe-yolo9000's, which Intel Caffe copied (one loop, the same
arithmetic), with YOLO9000's hierarchical softmax (``softmax_tree``), its classification-only truths and its logged
statistics. The layer is :class:`neocaffe.layers.region_loss.RegionLoss` (it calls :func:`intel_forward` when its
label bottom is SSD's); the module docstring there lists where this form parts from MobileNet-YOLO's.

Lineage: choasup/caffe-yolo9000 @ e8a476c4c23d756632f7a26c681a96e3ab672544, ``src/caffe/layers/region_loss_layer.cpp``
(Forward_cpu; no ``.cu``) and ``include/caffe/layers/region_loss_layer.hpp``; intel/caffe @ 44d53638 has the same file
less two log lines (and a commented-out ``diff_.Reshape``, which changes nothing). With ``softmax_tree``:

* the classes are ``softmax_region`` per group of the tree (:func:`neocaffe.layers._yolo9000_tree.tree_softmax`);
* a truth's class is SSD's label as it is (no ``- 1``), then ``class_map``'s line of that number (a number past the
  file's lines reads 0: ``std::map::operator[]``). The fork's ``voc.map`` lists VOC's classes 0..19 while the VOC
  label is 1..20, so label k takes map line k: the fork's off-by-one, kept;
* the class delta walks from that node up to its root (:func:`~neocaffe.layers._yolo9000_tree.delta_class_tree`);
* a truth with centre x and y both above 100000 marks a classification-only image: the first such truth of the image
  (in label order) is the only one read there. Every box's objectness gets ``-noobject_scale * (0 - s) * s * (1 - s)``
  (in double), the box with the highest ``s * p(label and its ancestors)`` (first in cell row, column, anchor order;
  flat index 0 of the blob, image 0's first box, when none is above 0) gets the tree class delta for the label (not
  mapped through ``class_map``) and objectness ``-object_scale * (0.3 - s) * s * (1 - s)`` where ``s < 0.3``, else
  0; the rest of that image (the IoU test, the truths' boxes) is skipped.

Statistics (``self.stats`` and the fork's two INFO lines, ``batch_mini_iter: .. loss: ..`` and ``avg_noobj: ..
avg_obj: .. avg_iou: .. avg_cat: .. recall: .. class_count: ..``): sums in the data type in the fork's order;
``avg_noobj`` over the boxes of images not classification-only, divided by every box of the batch; ``avg_obj``,
``avg_iou`` (the IoU of each truth with its assigned box's prediction), ``avg_cat`` (the assigned probability; with
the tree, the product along the path) and ``recall`` (IoU above 0.5) divided by the truth count (1 when none);
``class_count`` counts the truths and the classification-only images. Intel's copy logs neither line (no field tells
the two apart: neocaffe logs them for both). ``batch_mini_iter`` is the fork's process-wide ``iter``; here the layer's
own forward count. The fork's per-forward ``LOG(INFO)`` of the label's shape is not repeated.

Refused where the fork reads or writes out of bounds: a tree with more nodes than ``num_class`` (the group softmax
would run into the next box's channels), a class (after ``class_map``) outside the tree's nodes.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from torch import Tensor

from neocaffe.layers._intel_region import best_over_truths, box_iou, intel_truths, logistic64
from neocaffe.layers._yolo9000_tree import delta_class_tree, hierarchy_prob

F64 = np.float64
log = logging.getLogger("neocaffe.layers.region_loss")
_ONLY_CLASS = 100000  # darknet's marker of a classification-only truth (x and y above it)


def intel_forward(layer: Any, x: Tensor, v: np.ndarray, swap: np.ndarray, pred: tuple, label: np.ndarray,
                  bias: np.ndarray) -> Tensor:
    """The fork's Forward_cpu: per image either its classification-only truth, or the objectness diffs against every
    truth of the image and each truth's deltas; then the loss, the statistics and the log lines."""
    ft = swap.dtype.type
    n, side = v.shape[0], int(x.shape[3])
    tree = layer.tree
    try:
        truths = intel_truths(label, n, minus_one=tree is None)
    except ValueError as e:
        raise layer.error(str(e)) from None
    diff = np.zeros_like(v)
    flat_swap, flat_diff = swap.reshape(-1), diff.reshape(-1)  # views: the truths write ``diff``
    st = {k: ft(0) for k in ("anyobj", "obj", "iou", "cat", "recall")}
    count = class_count = 0
    only = [None] * n
    if tree is not None:
        for b, rows in enumerate(truths):
            marked = rows[(rows[:, 1] > _ONLY_CLASS) & (rows[:, 2] > _ONLY_CLASS)]
            only[b] = int(marked[0, 0]) if len(marked) else None
    normal = np.array([o is None for o in only])
    most = max(len(t) for t in truths)
    tb, valid = np.zeros((n, most, 5), ft), np.zeros((n, most), bool)
    for b, t in enumerate(truths):
        tb[b, : len(t)], valid[b, : len(t)] = t, True
    t = tb[:, None, None]
    iou = box_iou(tuple(c[..., None] for c in pred), (t[..., 1], t[..., 2], t[..., 3], t[..., 4]))
    best = best_over_truths(iou, valid[:, None, None])
    s = swap[:, :, 4]
    noobj = (ft(-1) * layer.scales["noobject"].astype(ft)) * (ft(0) - s) * s * (ft(1) - s)
    diff[normal, :, 4] = np.where(best > layer.thresh, ft(0), noobj)[normal]
    # avg_anyobj: the float sum over the images' cells, then anchors (the fork's swap order)
    objs = s.transpose(0, 2, 1)[normal].reshape(-1)
    st["anyobj"] = np.cumsum(objs, dtype=ft)[-1] if len(objs) else ft(0)
    for b in range(n):
        if only[b] is not None:
            st["cat"] = ft(st["cat"] + _only_class(layer, flat_swap, flat_diff, b, only[b], side))
            class_count += 1
            continue
        for row in truths[b]:
            t_iou, obj, cat = intel_truth(layer, flat_swap, flat_diff, b, row, side, bias, pred)
            st["recall"] = ft(st["recall"] + 1) if t_iou > 0.5 else st["recall"]
            st["iou"], st["obj"], st["cat"] = ft(st["iou"] + t_iou), ft(st["obj"] + obj), ft(st["cat"] + cat)
            count += 1
            class_count += 1
    loss = np.cumsum((diff * diff).reshape(-1), dtype=ft)[-1]  # the fork's float sum, in N x C x H x W order
    layer.iterations += 1
    count = max(count, 1)
    layer.stats = {"loss": float(loss), "avg_noobj": float(st["anyobj"] / ft(side * side * layer.num * n)),
                   **{f"avg_{k}": float(st[k] / ft(count)) for k in ("obj", "iou", "cat")},
                   "recall": float(st["recall"] / ft(count)), "class_count": class_count}
    if log.isEnabledFor(logging.INFO):
        log.info("batch_mini_iter: %d loss: %g", layer.iterations, float(loss))
        log.info("avg_noobj: %g avg_obj: %g avg_iou: %g avg_cat: %g recall: %g class_count: %d",
                 *(layer.stats[k] for k in ("avg_noobj", "avg_obj", "avg_iou", "avg_cat", "recall", "class_count")))
    return layer.finish(x, float(loss), diff)


def _tree_label(layer: Any, label: int, what: str) -> int:
    if not 0 <= label < layer.tree.n:
        raise layer.error(f"{what} {label} is not a node of the softmax_tree {layer.softmax_tree!r} ({layer.tree.n} "
                          f"nodes); expected 0..{layer.tree.n - 1}")
    return label


def _only_class(layer: Any, swap: np.ndarray, diff: np.ndarray, b: int, label: int, side: int) -> np.floating:
    """A classification-only image (module docstring); returns its ``avg_cat`` term."""
    ft = swap.dtype.type
    stride, length = side * side, 5 + layer.classes
    label = _tree_label(layer, label, "the classification-only truth's label")
    # flat index of (b, anchor, channel 0, cell) in the fork's loop order: cell row j, column i, then anchor
    idx = (b * layer.num * length * stride + np.arange(layer.num)[None, :] * length * stride
           + np.arange(stride)[:, None]).reshape(-1)
    s = swap[idx + 4 * stride]
    diff[idx + 4 * stride] = (-1.0 * F64(layer.scales["noobject"]) * (ft(0) - s).astype(F64) * s.astype(F64)
                              * (ft(1) - s).astype(F64)).astype(ft)
    p = np.array([s[k] * hierarchy_prob(swap, int(i) + 5 * stride, label, layer.tree, stride)
                  for k, i in enumerate(idx)], np.float32)
    k = int(np.argmax(p))
    maxi = int(idx[k]) if p[k] > 0 else 0
    cat = delta_class_tree(swap, diff, maxi + 5 * stride, label, layer.tree, stride, layer.scales["class"])
    s0 = swap[maxi + 4 * stride]
    obj_scale = ft(-1 * layer.scales["object"])
    diff[maxi + 4 * stride] = (ft(F64(obj_scale) * (0.3 - F64(s0)) * F64(s0) * F64(ft(1) - s0)) if F64(s0) < 0.3
                               else ft(0))
    return cat


def intel_truth(layer: Any, swap: np.ndarray, diff: np.ndarray, b: int, row: np.ndarray, side: int,
                bias: np.ndarray, pred: tuple) -> tuple[np.floating, np.floating, np.floating]:
    """One truth's deltas (delta_region_box, objectness and delta_region_class), written in place; returns its IoU
    with the assigned box's prediction, that box's objectness and the ``avg_cat`` term."""
    ft = swap.dtype.type
    label, tx, ty, tw, th = row
    i, j = layer.cell_of(tx, ty, side, side)
    stride, length, fs = side * side, 5 + layer.classes, ft(side)
    idx2 = (b * layer.num + np.arange(layer.num)) * length * stride + j * side + i
    best_n, bi = layer.best_anchor(swap, idx2, bias, tw, th, side)
    pos = j * side + i
    box = tuple(c[b, best_n, pos] for c in pred) if bi == idx2[best_n] else _box_at(swap, bi, stride, i, j, fs, bias)
    t_iou = np.float32(box_iou(box, (tx, ty, tw, th)))
    neg = ft(-1) * ft(layer.scales["coord"])
    raw = swap[bi + np.arange(4) * stride]
    sg = logistic64(raw[:2])
    target = np.array([tx * fs - ft(i), ty * fs - ft(j), np.log(F64(tw * fs / bias[best_n, 0])),
                       np.log(F64(th * fs / bias[best_n, 1]))], ft)
    one = ft(1)
    diff[bi + np.arange(2) * stride] = neg * np.clip(target[:2] - sg, -one, one) * sg * (one - sg)
    diff[bi + np.arange(2, 4) * stride] = neg * np.clip(target[2:] - raw[2:], -one, one)
    s = swap[bi + 4 * stride]
    diff[bi + 4 * stride] = ft(-1.0 * F64(layer.scales["object"]) * 2 * math.pow(F64(one - s), 3) * F64(s * (one - s)))
    cls = int(label)
    if layer.class_map is not None:
        cls = layer.class_map.get(cls, 0)
    c0 = bi + 5 * stride
    if layer.tree is not None:
        cls = _tree_label(layer, cls, "a truth's class (after class_map)")
        return t_iou, s, delta_class_tree(swap, diff, c0, cls, layer.tree, stride, layer.scales["class"])
    c = c0 + np.arange(layer.classes) * stride
    onehot = (np.arange(layer.classes) == cls).astype(ft)
    diff[c] = (F64(-1.0) * F64(layer.scales["class"]) * (onehot - swap[c]).astype(F64)).astype(ft)
    return t_iou, s, (swap[c0 + cls * stride] if 0 <= cls < layer.classes else ft(0))


def _box_at(swap: np.ndarray, bi: int, stride: int, i: int, j: int, fs: np.floating,
            bias: np.ndarray) -> tuple:
    """``get_region_box`` of anchor 0 at flat index ``bi`` (the fork's best_index 0 when no anchor overlaps: the
    blob's first box, read with cell (i, j) and anchor 0's bias)."""
    ft = swap.dtype.type
    raw = swap[bi + np.arange(4) * stride]
    sg = logistic64(raw[:2])
    return ((ft(i) + sg[0]) / fs, (ft(j) + sg[1]) / fs, ft(np.exp(F64(raw[2])) * bias[0, 0] / int(fs)),
            ft(np.exp(F64(raw[3])) * bias[0, 1] / int(fs)))
