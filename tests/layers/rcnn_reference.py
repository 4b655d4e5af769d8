"""NumPy references for the Faster R-CNN / R-FCN layers, written from the forks' sources line by line
(loops where the sources loop; float32 where they compute in float32):

* ``roi_pool``: caffe-fast-rcnn ``roi_pooling_layer.cpp`` (Forward_cpu, Backward_cpu);
* ``psroi_pool``: caffe-rfcn ``psroi_pooling_layer.cu`` (PSROIPoolingForward / BackwardAtomic);
* ``smooth_l1``: caffe-fast-rcnn ``smooth_L1_loss_layer.cu``;
* ``proposal_layer``: py-faster-rcnn ``lib/rpn/proposal_layer.py`` with ``generate_anchors.py``,
  ``bbox_transform.py`` and ``nms/gpu_nms.pyx`` + ``nms_kernel.cu`` (stable sorts).
"""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def c_round(x: float) -> int:
    """C's round of a float (halves away from zero), exact in double for float32 inputs."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def roi_pool(x: np.ndarray, rois: np.ndarray, ph_n: int, pw_n: int, scale: float, top_diff=None):
    """Forward (top, argmax) and, with ``top_diff``, Backward_cpu's bottom diff; dtype of ``x``."""
    dt = x.dtype.type
    n, c, h, w = x.shape
    r = rois.shape[0]
    top = np.full((r, c, ph_n, pw_n), -dt(3.4028234663852886e38), x.dtype)
    arg = np.full((r, c, ph_n, pw_n), -1, np.int64)
    s = dt(scale)
    geo = []
    for k in range(r):
        roi = rois[k].astype(x.dtype)
        b = int(roi[0])
        sw, sh, ew, eh = (c_round(float(dt(roi[i] * s))) for i in (1, 2, 3, 4))
        rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = dt(rh) / dt(ph_n), dt(rw) / dt(pw_n)
        geo.append((b, sw, sh, ew, eh, bh, bw))
        for ch in range(c):
            for ph in range(ph_n):
                for pw in range(pw_n):
                    hs = min(max(int(math.floor(dt(ph) * bh)) + sh, 0), h)
                    he = min(max(int(math.ceil(dt(ph + 1) * bh)) + sh, 0), h)
                    ws = min(max(int(math.floor(dt(pw) * bw)) + sw, 0), w)
                    we = min(max(int(math.ceil(dt(pw + 1) * bw)) + sw, 0), w)
                    if he <= hs or we <= ws:
                        top[k, ch, ph, pw] = 0
                        continue
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            if x[b, ch, hh, ww] > top[k, ch, ph, pw]:
                                top[k, ch, ph, pw] = x[b, ch, hh, ww]
                                arg[k, ch, ph, pw] = hh * w + ww
    if top_diff is None:
        return top, arg
    gx = np.zeros_like(x)
    for k in range(r):
        b, sw, sh, ew, eh, bh, bw = geo[k]
        for ch in range(c):
            for hh in range(max(0, sh), min(h, eh + 1)):
                for ww in range(max(0, sw), min(w, ew + 1)):
                    phs = min(max(int(math.floor(dt(hh - sh) / bh)), 0), ph_n)
                    phe = min(max(int(math.ceil(dt(hh - sh + 1) / bh)), 0), ph_n)
                    pws = min(max(int(math.floor(dt(ww - sw) / bw)), 0), pw_n)
                    pwe = min(max(int(math.ceil(dt(ww - sw + 1) / bw)), 0), pw_n)
                    for ph in range(phs, phe):
                        for pw in range(pws, pwe):
                            if arg[k, ch, ph, pw] == hh * w + ww:
                                gx[b, ch, hh, ww] += top_diff[k, ch, ph, pw]
    return top, arg, gx


def psroi_pool(x: np.ndarray, rois: np.ndarray, scale: float, dim: int, group: int, top_diff=None):
    """Forward and, with ``top_diff``, the atomic backward; dtype of ``x``."""
    dt = x.dtype.type
    n, c, h, w = x.shape
    r = rois.shape[0]
    top = np.zeros((r, dim, group, group), x.dtype)
    gx = np.zeros_like(x)
    s = dt(scale)
    for k in range(r):
        roi = rois[k].astype(x.dtype)
        b = int(roi[0])
        sw = dt(c_round(float(roi[1]))) * s
        sh = dt(c_round(float(roi[2]))) * s
        ew = dt(c_round(float(roi[3])) + 1.0) * s
        eh = dt(c_round(float(roi[4])) + 1.0) * s
        rw = dt(max(float(ew - sw), 0.1))
        rh = dt(max(float(eh - sh), 0.1))
        bh, bw = rh / dt(group), rw / dt(group)
        for ct in range(dim):
            for ph in range(group):
                for pw in range(group):
                    hs = min(max(int(math.floor(dt(ph) * bh + sh)), 0), h)
                    ws = min(max(int(math.floor(dt(pw) * bw + sw)), 0), w)
                    he = min(max(int(math.ceil(dt(ph + 1) * bh + sh)), 0), h)
                    we = min(max(int(math.ceil(dt(pw + 1) * bw + sw)), 0), w)
                    ch = (ct * group + ph) * group + pw
                    area = dt((he - hs) * (we - ws))
                    if he <= hs or we <= ws:
                        continue
                    total = dt(0)
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            total = dt(total + x[b, ch, hh, ww])
                    top[k, ct, ph, pw] = total / area
                    if top_diff is not None:
                        gx[b, ch, hs:he, ws:we] += top_diff[k, ct, ph, pw] / area
    return (top, gx) if top_diff is not None else top


def smooth_l1(a, b, w_in=None, w_out=None, sigma=1.0, top_diff=1.0):
    """(loss, diff of a, diff of b) in the dtype of ``a`` (the kernels' double-precision branches in double)."""
    dt = a.dtype.type
    s2 = f32(sigma) * f32(sigma)
    d = a - b
    if w_in is not None:
        d = w_in * d
    d64 = d.astype(np.float64)
    small = np.abs(d64) < 1.0 / float(s2)
    err = np.where(small, 0.5 * d64 * d64 * float(s2), np.abs(d64) - 0.5 / float(s2)).astype(a.dtype)
    if w_out is not None:
        err = w_out * err
    num = a.shape[0]
    loss = err.sum(dtype=a.dtype) / dt(num)
    dd = np.where(small, dt(s2) * d, np.sign(d)).astype(a.dtype)
    grads = []
    for sign in (1, -1):
        g = dt(sign * top_diff / num) * dd
        if w_in is not None:
            g = w_out * (w_in * g)
        grads.append(g)
    return loss, grads[0], grads[1]


# -- py-faster-rcnn's proposal layer ------------------------------------------------------------
def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)) -> np.ndarray:
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mkanchors(ws, hs, x, y):
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)))

    base = np.array([1, 1, base_size, base_size]) - 1
    w, h, x, y = whctrs(base)
    ws = np.round(np.sqrt(w * h / np.asarray(ratios, float)))
    hs = np.round(ws * np.asarray(ratios, float))
    ratio_anchors = mkanchors(ws, hs, x, y)
    out = []
    for i in range(ratio_anchors.shape[0]):
        w, h, x, y = whctrs(ratio_anchors[i])
        out.append(mkanchors(w * np.asarray(scales, float), h * np.asarray(scales, float), x, y))
    return np.vstack(out)


def bbox_transform_inv(boxes, deltas):
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + f32(1.0)
    heights = boxes[:, 3] - boxes[:, 1] + f32(1.0)
    ctr_x = boxes[:, 0] + f32(0.5) * widths
    ctr_y = boxes[:, 1] + f32(0.5) * heights
    px = deltas[:, 0] * widths + ctr_x
    py = deltas[:, 1] * heights + ctr_y
    pw = np.exp(deltas[:, 2]) * widths
    ph = np.exp(deltas[:, 3]) * heights
    return np.stack([px - f32(0.5) * pw, py - f32(0.5) * ph, px + f32(0.5) * pw, py + f32(0.5) * ph], axis=1)


def clip_boxes(boxes, im_shape):
    boxes = boxes.copy()
    boxes[:, 0::2] = np.maximum(np.minimum(boxes[:, 0::2], im_shape[1] - 1), 0)
    boxes[:, 1::2] = np.maximum(np.minimum(boxes[:, 1::2], im_shape[0] - 1), 0)
    return boxes


def _argsort_desc(scores):
    return np.argsort(scores, kind="stable")[::-1]


def gpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    """gpu_nms.pyx + nms_kernel.cu: float32 IoU, suppressed when > float(thresh)."""
    order = _argsort_desc(dets[:, 4])
    d = dets[order].astype(f32)
    thr = f32(thresh)
    removed = np.zeros(len(d), bool)
    keep = []
    for i in range(len(d)):  # the host pass over the kernel's masks; one kernel row at a time
        if removed[i]:
            continue
        keep.append(i)
        a, b = d[i], d[i + 1:]
        width = np.maximum(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]) + f32(1), f32(0))
        height = np.maximum(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]) + f32(1), f32(0))
        inter = width * height
        sa = (a[2] - a[0] + f32(1)) * (a[3] - a[1] + f32(1))
        sb = (b[:, 2] - b[:, 0] + f32(1)) * (b[:, 3] - b[:, 1] + f32(1))
        removed[i + 1:] |= inter / (sa + sb - inter) > thr
    return [int(order[k]) for k in keep]


def proposal_layer(scores_all, bbox_deltas, im_info, feat_stride=16, scales=(8, 16, 32), ratios=(0.5, 1, 2),
                   pre_nms_topn=6000, post_nms_topn=300, nms_thresh=0.7, min_size=16):
    """ProposalLayer.forward: (rois [n, 5] float32, scores [n, 1])."""
    anchors0 = generate_anchors(ratios=ratios, scales=np.array(scales))
    a = anchors0.shape[0]
    scores = scores_all[:, a:, :, :]
    im_info = im_info[0, :]
    height, width = scores.shape[-2:]
    shift_x, shift_y = np.meshgrid(np.arange(0, width) * feat_stride, np.arange(0, height) * feat_stride)
    shifts = np.vstack((shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel())).transpose()
    k = shifts.shape[0]
    anchors = (anchors0.reshape((1, a, 4)) + shifts.reshape((1, k, 4)).transpose((1, 0, 2))).reshape((k * a, 4))
    deltas = bbox_deltas.transpose((0, 2, 3, 1)).reshape((-1, 4))
    scores = scores.transpose((0, 2, 3, 1)).reshape((-1, 1))
    proposals = clip_boxes(bbox_transform_inv(anchors, deltas), im_info[:2])
    ws = proposals[:, 2] - proposals[:, 0] + 1
    hs = proposals[:, 3] - proposals[:, 1] + 1
    thr = float(min_size) * float(im_info[2])
    keep = np.where((ws >= thr) & (hs >= thr))[0]
    proposals, scores = proposals[keep, :], scores[keep]
    order = _argsort_desc(scores.ravel())
    if pre_nms_topn > 0:
        order = order[:pre_nms_topn]
    proposals, scores = proposals[order, :], scores[order]
    keep = gpu_nms(np.hstack((proposals, scores)), nms_thresh) if len(proposals) else []
    if post_nms_topn > 0:
        keep = keep[:post_nms_topn]
    proposals, scores = proposals[keep, :], scores[keep]
    rois = np.hstack((np.zeros((proposals.shape[0], 1), np.float32), proposals.astype(np.float32, copy=False)))
    return rois, scores
