"""A NumPy loop port of MobileNet-YOLO's GaussianYolov3 loss (eric612/MobileNet-YOLO @ 69b4441c,
gaussian_yolov3_layer.cpp: Forward_cpu with delta_region_gaussian_box and delta_region_gaussian_class_v3,
Backward_cpu; bbox_util.cpp's get_gaussian_yolo_box and box_iou), one scalar at a time on flat float32 arrays,
double where the fork mixes in double literals."""
from __future__ import annotations

import math

import numpy as np

from tests.layers.yolo_loss_reference import _iou, _sig

F = np.float32
FLT_MAX = F(3.4028235e38)


def gaussian_yolov3_reference(x, label, o):
    """(loss, bottom diff for top diff 1) of the fork's GaussianYolov3 layer; ``o`` as yolov3_reference's."""
    N, C, H, W = x.shape
    inp, lab = x.astype(F).reshape(-1), label.astype(F).reshape(-1)
    L, stride, count1 = 9 + o["classes"], H * W, C * H * W
    num, mask, biases, ascale = o["num"], o["mask"], [F(b) for b in o["biases"]], o["anchors_scale"]
    norm, max_delta = F(o["iou_normalizer"]), F(o["max_delta"])
    swap, diff = np.zeros_like(inp), np.zeros_like(inp)
    for q in range(inp.size):   # the CPU_ONLY build's activation
        swap[q] = inp[q] if (q % count1) // stride % L in (4, 6) else _sig(inp[q])

    def box(xs, n, index, i, j):   # get_gaussian_yolo_box
        return [(F(i) + xs[index]) / F(W), (F(j) + xs[index + 2 * stride]) / F(H),
                np.exp(xs[index + 4 * stride]) * biases[2 * n] / F(W * ascale),
                np.exp(xs[index + 6 * stride]) * biases[2 * n + 1] / F(H * ascale)]

    def fix(v):
        return F(0) if (math.isnan(v) or math.isinf(v)) else F(v)

    def clip(v):
        return max_delta if v > max_delta else (-max_delta if v < -max_delta else v)

    def delta_box(truth, n, index, i, j, scale):
        scale = F(scale)
        iou = _iou(box(swap, n, index, i, j), truth)
        targets = [truth[0] * F(W) - F(i), truth[1] * F(H) - F(j),
                   F(np.log(truth[2] * F(W * ascale) / biases[2 * n])), F(np.log(truth[3] * F(H * ascale) / biases[2 * n + 1]))]
        sig_c, eps = F(0.3), F(math.pow(10, -9))
        firsts, seconds = [], []
        for k, t in enumerate(targets):
            mu, sg = swap[index + 2 * k * stride], swap[index + (2 * k + 1) * stride]
            e = (t - mu) / sg
            e2 = F(math.pow(float(e), 2))
            nd = F(math.exp(float(e2) * (-1. / 2.)) / (math.sqrt(math.pi * 2.0) * float(sg + sig_c)))
            temp = F((1. / 2.) * 1. / float(nd + eps) * float(nd) * float(scale))
            firsts.append(F(float(temp * e) * (1. / float(sg))))
            seconds.append(F(float(temp) * (float(e2 / sg) - 1. / float(sg + sig_c))))
        firsts = [fix(d * norm) for d in firsts]
        if max_delta != FLT_MAX:
            firsts = [clip(d) for d in firsts]
        if not o["accumulate"]:
            for k in range(8):
                diff[index + k * stride] = 0
        for k in range(4):
            diff[index + 2 * k * stride] += F(-1) * firsts[k]
        seconds = [fix(d * norm) for d in seconds]
        if max_delta != FLT_MAX:
            seconds = [clip(d) for d in seconds]
        for k in range(4):
            diff[index + (2 * k + 1) * stride] += F(-1) * seconds[k]
        return iou

    def delta_class(index, c):
        scale = F(o["class_scale"])
        if diff[index]:
            diff[index + stride * c] = F(-1.0 * float(F(1) - swap[index + stride * c]))
            return
        if o["focal"]:
            pt = swap[index + stride * c] + F(1e-15)
            grad = -(F(1) - pt) * (F(2) * pt * np.log(pt) + pt - F(1))
            for n in range(o["classes"]):
                diff[index + stride * n] = F(-1.0 * float(scale) * float(F(n == c) - swap[index + n * stride]))
                diff[index + stride * n] *= F(0.5) * grad
            return
        for n in range(o["classes"]):
            diff[index + n * stride] = F(-1.0 * float(scale) * float(F(n == c) - swap[index + n * stride]))

    def int_index(val):
        return next((k for k in range(num) if mask[k] == val), -1)

    def anchor_iou(n, shift):
        return _iou([F(0), F(0), biases[2 * n] / F(W * ascale), biases[2 * n + 1] / F(H * ascale)], shift)

    avg_iou_loss, count = F(0), 0
    for b in range(N):
        for s in range(stride):
            for n in range(num):
                index = n * L * stride + s + b * count1
                pred = box(swap, mask[n], index, s % W, s // W)
                best, best_class, best_truth = F(0), -1, None
                for t in range(300):
                    row = lab[b * 1500 + t * 5: b * 1500 + t * 5 + 5]
                    if not row[1]:
                        break
                    v = _iou(pred, list(row[1:]))
                    if v > best:
                        best, best_class, best_truth = v, int(row[0]), list(row[1:])
                diff[index + 8 * stride] = F(-1) * (F(0) - swap[index + 8 * stride])
                if best > F(o["thresh"]):
                    diff[index + 8 * stride] = 0
                if best > 1:
                    diff[index + 8 * stride] = F(-1) * (F(1) - swap[index + 8 * stride])
                    delta_class(index + 9 * stride, best_class)
                    delta_box(best_truth, mask[n], index, s % W, s // W,
                              F(o["coord_scale"]) * (F(2) - best_truth[2] * best_truth[3]))
        for t in range(300):
            row = lab[b * 1500 + t * 5: b * 1500 + t * 5 + 5]
            c, truth = int(row[0]), list(row[1:])
            if not truth[2]:
                break
            i, j = int(truth[0] * F(W)), int(truth[1] * F(H))
            shift = [F(0), F(0), truth[2], truth[3]]
            best_n, best = -1, F(0)
            for n in range(len(biases) // 2):
                v = anchor_iou(n, shift)
                if v > best:
                    best_n, best = n, v
            slots = []
            if int_index(best_n) >= 0:
                best_n = int_index(best_n)
                slots.append(best_n)
            for n in range(len(biases) // 2):
                if int_index(n) >= 0 and n != best_n and F(o["iou_thresh"]) < 1 and anchor_iou(n, shift) > F(o["iou_thresh"]):
                    slots.append(int_index(n))
            for slot in slots:
                index = slot * L * stride + j * W + i + b * count1
                v = delta_box(truth, mask[slot], index, i, j, F(o["coord_scale"]) * (F(2) - truth[2] * truth[3]))
                avg_iou_loss += F(1) - v
                s8 = swap[index + 8 * stride]
                diff[index + 8 * stride] = F(-1.0 * float(F(1) - s8) * float(F(o["object_scale"]) if o["logic"] else 1.0))
                delta_class(index + 9 * stride, c)
                count += 1
    loss = F(0)
    for b in range(N):
        for s in range(stride):
            for n in range(num):
                index = n * L * stride + s + b * count1
                for c in range(L):
                    if c < 8:
                        swap[index + c * stride] = inp[index + c * stride]
                    else:
                        loss += diff[index + c * stride] * diff[index + c * stride]
    if count:
        loss += norm * avg_iou_loss / F(count)
    if o["logic"]:
        for q in range(diff.size):
            if (q % count1) // stride % L not in (4, 6):
                diff[q] = diff[q] * ((F(1) - swap[q]) * swap[q])
    return F(loss / F(N)), diff.reshape(x.shape) / F(N)
