"""NumPy reference for Intel Caffe's YOLOv2 ``RegionLoss``, written from the fork's loops (intel/caffe @
44d536385dc41804a673c527b4c2df2675770dff, ``src/caffe/layers/region_loss_layer.cpp`` Forward_cpu/Backward_cpu with
Overlap, Calc_iou, sigmoid, softmax_region, get_region_box, delta_region_box, delta_region_class), one scalar at a
time, in the fork's memory layout (the ``swap`` blob: per image, per cell, per box, ``coords + num_class + 1``
values) and its float/double arithmetic. ``intel_region_reference`` gives the top (the loss) and the bottom diff
for ``top_diff = 1``. ``softmax_tree`` is ported in ``tests/layers/yolo9000_reference.py`` (choasup's same loop)."""
from __future__ import annotations

import math

import numpy as np

F = np.float32
D = np.float64


def _exp(v):
    """The fork's unqualified ``exp``/``log`` on a float: C's double functions (as for Intel's EvalDetection)."""
    with np.errstate(all="ignore"):
        return np.exp(D(v))


def _log(v):
    with np.errstate(all="ignore"):
        return np.log(D(v))


def _sig(x):
    """``Dtype sigmoid(Dtype x) { return 1. / (1. + exp(-x)); }``: in double, returned as the float."""
    return F(1.0 / (1.0 + _exp(F(-x))))


def _overlap(x1, w1, x2, w2):
    left = max(x1 - w1 / F(2), x2 - w2 / F(2))
    right = min(x1 + w1 / F(2), x2 + w2 / F(2))
    return right - left


def _calc_iou(box, truth):
    w = _overlap(box[0], box[2], truth[0], truth[2])
    h = _overlap(box[1], box[3], truth[1], truth[3])
    if w < 0 or h < 0:
        return F(0)
    inter = w * h
    union = box[2] * box[3] + truth[2] * truth[3] - inter
    with np.errstate(all="ignore"):
        return F(inter / union)


def _softmax_region(a, start, classes):
    large = a[start]
    for i in range(classes):
        if a[start + i] > large:
            large = a[start + i]
    total = F(0)
    for i in range(classes):
        e = F(_exp(a[start + i] - large))
        total = F(total + e)
        a[start + i] = e
    for i in range(classes):
        a[start + i] = a[start + i] / total


def _region_box(x, biases, n, index, i, j, w, h):
    return [(F(i) + _sig(x[index + 0])) / F(w), (F(j) + _sig(x[index + 1])) / F(h),
            F(_exp(x[index + 2]) * D(biases[2 * n]) / w), F(_exp(x[index + 3]) * D(biases[2 * n + 1]) / h)]


def _delta_region_box(truth, x, biases, n, index, i, j, w, h, delta, scale):
    pred = _region_box(x, biases, n, index, i, j, w, h)
    iou = _calc_iou(pred, truth)
    with np.errstate(all="ignore"):
        tx = F(truth[0] * F(w) - F(i))
        ty = F(truth[1] * F(h) - F(j))
        tw = F(_log(truth[2] * F(w) / biases[2 * n]))
        th = F(_log(truth[3] * F(h) / biases[2 * n + 1]))
    for k, t in ((0, tx), (1, ty)):
        s = _sig(x[index + k])
        if t - s > 1:
            delta[index + k] = F(-1) * scale * s * (F(1) - s)
        elif t - s < -1:
            delta[index + k] = scale * s * (F(1) - s)
        else:
            delta[index + k] = F(-1) * scale * (t - s) * s * (F(1) - s)
    for k, t in ((2, tw), (3, th)):
        if t - x[index + k] > 1:
            delta[index + k] = F(-1) * scale
        elif t - x[index + k] < -1:
            delta[index + k] = scale
        else:
            delta[index + k] = F(-1) * scale * (t - x[index + k])
    return iou


def _delta_region_class(data, diff, index, class_label, classes, scale):
    for n in range(classes):
        diff[index + n] = F(-1.0 * float(scale) * float(F(1 if n == class_label else 0) - data[index + n]))


def read_class_map(path: str) -> dict[int, int]:
    """LayerSetUp's ``cls_map_``: line k holds the blob position of class k (``ss >> id``: 0 where the line does not
    start with an integer)."""
    out = {}
    with open(path) as f:
        for k, line in enumerate(f.read().splitlines()):
            tok = line.split()
            try:
                out[k] = int(tok[0]) if tok else 0
            except ValueError:
                out[k] = 0
    return out


def intel_region_reference(x: np.ndarray, label: np.ndarray, o: dict) -> tuple[float, np.ndarray]:
    """``x``: N x C x H x W; ``label``: 1 x 1 x K x 8 (SSD's ``[item, label, instance, xmin, ymin, xmax, ymax,
    difficult]``); ``o``: side, classes, coords, num, biases, object_scale, noobject_scale, class_scale,
    coord_scale, thresh, bias_match, class_map (a dict or None). Returns (top, bottom diff for top_diff 1)."""
    N, C, H, W = x.shape
    side, num, classes, coords = o["side"], o["num"], o["classes"], o["coords"]
    biases = [F(b) for b in o["biases"]]
    sc = {k: F(o[k]) for k in ("object_scale", "noobject_scale", "class_scale", "coord_scale")}
    thresh = F(o["thresh"])
    bottom = x.astype(F)
    width = C // num
    # Reshape: swap(b, h*w, num, C/num) filled in (b, h, w, c) order
    swap = np.empty(N * H * W * C, F)
    index = 0
    for b in range(N):
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    swap[index] = bottom[b, c, h, w]
                    index += 1
    for b in range(N):
        for c in range(H * W):
            for h in range(num):
                index = b * H * W * C + c * num * width + h * width + 4
                swap[index] = _sig(swap[index])
    for b in range(N):
        for c in range(H * W):
            for h in range(num):
                index = b * H * W * C + c * num * width + h * width + 5
                _softmax_region(swap, index, classes)
    # Label: 8 values a row, item_id -1 skipped, label - 1, corners to centre and size
    lab = label.astype(F).reshape(-1)
    labels: list[list[list]] = [[] for _ in range(N)]
    for i in range(label.shape[2]):
        item = int(lab[i * 8])
        if item == -1:
            continue
        xmin, ymin, xmax, ymax = lab[i * 8 + 3], lab[i * 8 + 4], lab[i * 8 + 5], lab[i * 8 + 6]
        labels[item].append([F(lab[i * 8 + 1] - F(1)), F(D(xmin + xmax) / 2.0), F(D(ymin + ymax) / 2.0),
                             xmax - xmin, ymax - ymin])
    diff = np.zeros(N * C * H * W, F)
    per_image = H * W * C
    for b in range(N):
        for j in range(side):
            for i in range(side):
                for n in range(num):
                    index = b * per_image + (j * side + i) * num * width + n * width
                    pred = _region_box(swap, biases, n, index, i, j, side, side)
                    best_iou = F(0)
                    for box in labels[b]:
                        iou = _calc_iou(pred, box[1:5])
                        if iou > best_iou:
                            best_iou = iou
                    s = swap[index + 4]
                    diff[index + 4] = F(-1) * sc["noobject_scale"] * (F(0) - s) * s * (F(1) - s)
                    if best_iou > thresh:
                        diff[index + 4] = 0
        for box in labels[b]:
            class_label = int(box[0])
            truth = box[1:5]
            best_iou, best_index, best_n = F(0), 0, 0
            i, j = int(truth[0] * F(side)), int(truth[1] * F(side))
            pos = j * side + i
            size = coords + classes + 1
            for n in range(num):
                index = b * per_image + pos * size * num + n * size
                pred = _region_box(swap, biases, n, index, i, j, side, side)
                if o["bias_match"]:
                    pred[2], pred[3] = biases[2 * n] / F(side), biases[2 * n + 1] / F(side)
                pred[0], pred[1] = F(0), F(0)
                iou = _calc_iou(pred, [F(0), F(0), truth[2], truth[3]])
                if iou > best_iou:
                    best_index, best_iou, best_n = index, iou, n
            _delta_region_box(truth, swap, biases, best_n, best_index, i, j, side, side, diff, sc["coord_scale"])
            s = swap[best_index + 4]
            diff[best_index + 4] = F(-1.0 * float(sc["object_scale"]) * 2 * math.pow(float(F(1) - s), 3)
                                     * float(s * (F(1) - s)))
            if o.get("class_map") is not None:
                class_label = o["class_map"].get(class_label, 0)
            _delta_region_class(swap, diff, best_index + 5, class_label, classes, sc["class_scale"])
    # real_diff: back to N x C x H x W; the loss: sum of squares accumulated in float, in that order
    real = np.empty_like(diff)
    sindex = 0
    for b in range(N):
        for h in range(H):
            for w in range(W):
                for c in range(C):
                    real[b * H * W * C + c * H * W + h * W + w] = diff[sindex]
                    sindex += 1
    loss = F(0)
    for v in real:
        loss = F(loss + v * v)
    # Backward_cpu: alpha = top_diff / num
    return float(loss), (real * F(F(1) / F(N))).reshape(x.shape)
