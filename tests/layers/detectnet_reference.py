"""Plain loop ports of NVIDIA/caffe @ 87a2554's DetectNet pieces, the references of test_detectnet*.py.

``l1_loss``: ``src/caffe/layers/l1_loss_layer.cpp`` (Forward_cpu/Backward_cpu). ``cluster``, ``score_det``,
``calc_map``: ``python/caffe/layers/detectnet/{clustering,mean_ap}.py`` written as the fork's loops run
(one cell, one box, one pair at a time). One change: the rectangles handed to ``cv2.groupRectangles`` are
truncated to int here, which the fork's OpenCV/Python 2 binding did itself (today's refuses floats).
"""
from __future__ import annotations

import math

import numpy as np

MAX_BOXES = 50


def l1_loss(a: np.ndarray, b: np.ndarray, top_diff: float = 1.0):
    """(loss, diff_a, diff_b) as NVCaffe's CPU code computes them, element by element."""
    a32, b32 = a.astype(np.float32).ravel(), b.astype(np.float32).ravel()
    num = a.shape[0] if a.ndim else 1
    diff = np.empty_like(a32)
    sign = np.empty_like(a32)
    asum = 0.0  # caffe_cpu_asum: BLAS sasum, its summation order unspecified; float64 here
    for i in range(a32.size):
        diff[i] = a32[i] - b32[i]
        sign[i] = int(np.float32(0) < diff[i]) - int(diff[i] < np.float32(0))  # caffe_cpu_sign
        asum += abs(float(diff[i]))
    loss = np.float32(asum) / np.float32(num)
    grads = []
    for s in (1, -1):
        alpha = np.float32(s) * np.float32(top_diff) / np.float32(num)
        grads.append((alpha * sign).reshape(a.shape))
    return float(loss), grads[0], grads[1].reshape(b.shape)


def _gridbox_to_boxes(cvg, boxes, size_x, size_y, stride, threshold, groundtruth):
    gx, gy = int(size_x / stride), int(size_y / stride)
    cw, ch = size_x / gx, size_y / gy
    out = []
    for y in range(gy):
        for x in range(gx):
            v = cvg[0][y][x]
            if (v > 0) if groundtruth else (v >= threshold):
                out.append([boxes[0][y][x] + x * cw, boxes[1][y][x] + y * ch,
                            boxes[2][y][x] + x * cw, boxes[3][y][x] + y * ch])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _vote(proposals, rect_thresh, rect_eps, min_height):
    import cv2

    dets = []
    if not proposals.any():
        return dets
    rects = [[int(e[0]), int(e[1]), int(e[2] - e[0]), int(e[3] - e[1])] for e in proposals.tolist()]
    nboxes, weights = cv2.groupRectangles(rects, rect_thresh, rect_eps)
    weights = np.asarray(weights).reshape(-1, 1)  # (k, 1) in the fork's OpenCV, (k,) in today's
    for rect, weight in zip(nboxes, weights):
        if rect[3] >= min_height:
            dets.append([rect[0], rect[1], rect[0] + rect[2], rect[1] + rect[3], math.log(weight[0])])
    return dets


def cluster(cvg_all, boxes_all, size_x, size_y, stride, threshold=0.0, rect_thresh=1, rect_eps=0.0,
            min_height=0, groundtruth=False):
    """One class's (N, 50, 5) from coverage (N, 1, Gy, Gx) and boxes (N, 4, Gy, Gx), the fork's ``cluster``."""
    out = np.zeros([cvg_all.shape[0], MAX_BOXES, 5])
    for i in range(cvg_all.shape[0]):
        props = _gridbox_to_boxes(cvg_all[i], boxes_all[i], size_x, size_y, stride, threshold, groundtruth)
        if groundtruth:
            cur = np.asarray(list({tuple(row) for row in props}), dtype=np.float16)
        else:
            cur = np.asarray(_vote(props, rect_thresh, rect_eps, min_height), dtype=np.float16)
        if cur.shape[0] != 0:
            r, c = cur.shape
            out[i, 0:r, 0:c] = cur
    return out


def _iou(det, rhs):
    x_overlap = max(0, min(det[2], rhs[2]) - max(det[0], rhs[0]))
    y_overlap = max(0, min(det[3], rhs[3]) - max(det[1], rhs[1]))
    overlap_area = x_overlap * y_overlap
    if overlap_area == 0:
        return 0
    det_area = (det[2] - det[0]) * (det[3] - det[1])
    rhs_area = (rhs[2] - rhs[0]) * (rhs[3] - rhs[1])
    return overlap_area / (det_area + rhs_area - overlap_area)


def score_det(gt_list, det_list, threshold=0.7):
    out = np.zeros([gt_list.shape[0], MAX_BOXES, 5])
    for k in range(gt_list.shape[0]):
        dets = [row for row in det_list[k, :, 0:4] if row.tolist() != [0, 0, 0, 0]]
        gts = [row for row in gt_list[k, :, 0:4] if row.tolist() != [0, 0, 0, 0]]
        gt_m, det_m = [0] * len(gts), [0] * len(dets)
        for i in range(len(gts)):
            for j in range(len(dets)):
                if _iou(dets[j], gts[i]) >= threshold and det_m[j] == 0:
                    gt_m[i] = det_m[j] = 1
                    break
        rows = ([list(d) + [1] for d, m in zip(dets, det_m) if m] + [list(d) + [2] for d, m in zip(dets, det_m) if not m]
                + [list(g) + [3] for g, m in zip(gts, gt_m) if not m])
        for r, row in enumerate(rows):
            out[k, r] = row
    return out


def calc_map(scored):
    tp = int(np.sum(scored[:, :, 4] == 1))
    fp = int(np.sum(scored[:, :, 4] == 2))
    tn = int(np.sum(scored[:, :, 4] == 3))
    precision = (float(tp) / float(tp + fp) if tp + fp != 0 else 0) * 100.0
    recall = (float(tp) / float(tp + tn) if tp + tn != 0 else 0) * 100.0
    return precision * recall / 100.0, precision, recall
