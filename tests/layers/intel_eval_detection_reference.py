"""A loop-by-loop NumPy port of Intel Caffe's EvalDetection forward (intel/caffe @ 44d5363,
``src/caffe/layers/eval_detection_layer.cpp`` and ``Calc_iou`` of ``region_loss_layer.cpp``), one scalar at a time in
its float/double types, written independently of the layer's vectorized code. Its ``std::sort`` is read as a stable
sort (ties keep generation order), as neocaffe's layer does."""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def _sigmoid(v):
    return f32(1.0 / (1.0 + math.exp(-float(v))))


def _overlap(x1, w1, x2, w2):
    left = max(f32(x1 - w1 / f32(2)), f32(x2 - w2 / f32(2)))
    right = min(f32(x1 + w1 / f32(2)), f32(x2 + w2 / f32(2)))
    return f32(right - left)


def _iou(a, b):
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    if w < 0 or h < 0:
        return f32(0)
    inter = f32(w * h)
    union = f32(f32(f32(a[2] * a[3]) + f32(b[2] * b[3])) - inter)
    with np.errstate(all="ignore"):
        return f32(inter / union)


def eval_detection(head, gt, side, num_class, num_object, threshold, nms, biases, score_type):
    """Top (N, num_class + side² * num_object * 4) of Intel's Forward_cpu; score_type 0 OBJ, 1 PROB, 2 MULTIPLY."""
    head = np.asarray(head, dtype=f32)
    n, c, hgt, wid = head.shape
    threshold, nms = f32(threshold), f32(nms)
    biases = [f32(b) for b in biases]
    # the swap: (b, h, w, c) order
    swap = np.zeros(head.size, dtype=f32)
    k = 0
    for b in range(n):
        for y in range(hgt):
            for x in range(wid):
                for ch in range(c):
                    swap[k] = head[b, ch, y, x]
                    k += 1
    flat = np.asarray(gt, dtype=f32).reshape(-1)
    rows_gt = np.asarray(gt).shape[2]
    labels = [[] for _ in range(n + 1)]
    for r in range(rows_gt):
        item = int(flat[r * 8])
        if item == -1:
            continue
        xmin, ymin, xmax, ymax = (flat[r * 8 + q] for q in (3, 4, 5, 6))
        labels[item].append([f32(flat[r * 8 + 1] - f32(1)), f32(f32(xmin + xmax) / 2.0), f32(f32(ymin + ymax) / 2.0),
                             f32(xmax - xmin), f32(ymax - ymin)])
    per_image = side * side * num_object * (num_class + 5)
    top = np.zeros((n, num_class + side * side * num_object * 4), dtype=f32)
    for b in range(n):
        gts = {}
        for box in labels[b]:
            gts.setdefault(int(box[0]), []).append(box[1:])
        for lab, lst in gts.items():
            top[b, lab] += len(lst)
        data = swap[b * per_image:(b + 1) * per_image]
        tmp = []
        for j in range(side):
            for i in range(side):
                for a in range(5):
                    idx = (j * side + i) * num_object * (num_class + 5) + a * (num_class + 5)
                    x = f32(f32(f32(i) + _sigmoid(data[idx])) / f32(side))
                    y = f32(f32(f32(j) + _sigmoid(data[idx + 1])) / f32(side))
                    w = f32(math.exp(float(data[idx + 2])) * float(biases[2 * a]) / side)
                    h = f32(math.exp(float(data[idx + 3])) * float(biases[2 * a + 1]) / side)
                    large = data[idx + 5]
                    for q in range(num_class):
                        if data[idx + 5 + q] > large:
                            large = data[idx + 5 + q]
                    total = f32(0)
                    for q in range(num_class):
                        e = f32(math.exp(float(f32(data[idx + 5 + q] - large))))
                        total = f32(total + e)
                        data[idx + 5 + q] = e
                    for q in range(num_class):
                        data[idx + 5 + q] = f32(data[idx + 5 + q] / total)
                    label, best = 0, data[idx + 5]
                    for q in range(num_class):
                        if best < data[idx + 5 + q]:
                            best, label = data[idx + 5 + q], q
                    obj = _sigmoid(data[idx + 4])
                    score = obj if score_type == 0 else best if score_type == 1 else f32(obj * best)
                    tmp.append((label, f32(score), [x, y, w, h]))
        preds = {}
        if nms >= 0:
            tmp.sort(key=lambda t: -float(t[1]))   # Python's sort is stable
            gone = set()
            for i in range(len(tmp) - 1):
                if i in gone:
                    continue
                for j in range(i + 1, len(tmp)):
                    if j in gone:
                        continue
                    if _iou(tmp[i][2], tmp[j][2]) >= nms:
                        gone.add(j)
            for i in range(len(tmp)):
                if i in gone or float(tmp[i][1]) < 0.005:
                    continue
                preds.setdefault(tmp[i][0], []).append(tmp[i])
        base, count = num_class, 0
        for lab in sorted(preds):
            if lab not in gts:
                for p in preds[lab]:
                    top[b, base + count * 4:base + count * 4 + 4] = (p[0], p[1], 0, 1)
                    count += 1
                continue
            g = gts[lab]
            taken = [False] * len(g)
            for p in preds[lab]:
                top[b, base + count * 4] = p[0]
                top[b, base + count * 4 + 1] = p[1]
                best_iou, at = f32(-1), -1
                for q in range(len(g)):
                    v = _iou(p[2], g[q])
                    if v > best_iou:
                        best_iou, at = v, q
                if best_iou >= threshold:
                    if not taken[at]:
                        taken[at] = True
                        top[b, base + count * 4 + 2:base + count * 4 + 4] = (1, 0)
                    else:
                        top[b, base + count * 4 + 2:base + count * 4 + 4] = (0, 1)
                count += 1
    return top
