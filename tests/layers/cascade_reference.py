"""Loop-by-loop NumPy ports of zhaoweicai/cascade-rcnn's inference layers (@ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c),
the references of tests/layers/test_cascade_infer.py. Each follows the fork's C++ line by line in float32
(``np.float32`` scalars, as ``Dtype = float`` and the ``BBox`` struct's floats):

* ``roi_align_forward`` / ``roi_align_backward``: ``src/caffe/layers/roi_align_layer.cpp`` (Forward_cpu) and
  ``roi_align_layer.cu`` (ROIAlignBackward);
* ``roi_pool_forward`` / ``roi_pool_backward``: ``roi_pooling_layer.cpp`` (Forward_cpu, with pad_ratio) and
  ``roi_pooling_layer.cu`` (ROIPoolBackward: each bin's diff to its argmax);
* ``scale_route``: ``scale_route_layer.cpp``;
* ``decode_bbox``: ``decode_bbox_layer.cpp`` with ``bbox_util.cpp``'s DecodeBBoxesWithPrior;
* ``box_group_output``: ``box_group_output_layer.cpp`` with DecodeGroupBBoxes, ClipBBox, ApplyNMS,
  JaccardOverlap;
* ``frcnn_output``: ``frcnn_output_layer.cpp`` (the detections; not the file writing).
"""
from __future__ import annotations

import math

import numpy as np

F = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


def c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


# -- ROIAlign ---------------------------------------------------------------------------------------
def _align_point(roi, ph, pw, pooled_h, pooled_w, scale, pad_ratio, height, width):
    """The grid point's four (index, weight) pairs, or None where the fork writes 0 / skips."""
    pad_w = (F(roi[3]) - F(roi[1]) + F(1)) * F(pad_ratio)
    pad_h = (F(roi[4]) - F(roi[2]) + F(1)) * F(pad_ratio)
    sw = F((F(roi[1]) - pad_w) * F(scale)) - F(0.5)
    sh = F((F(roi[2]) - pad_h) * F(scale)) - F(0.5)
    ew = F((F(roi[3]) + pad_w) * F(scale)) - F(0.5)
    eh = F((F(roi[4]) + pad_h) * F(scale)) - F(0.5)
    rh, rw = F(eh - sh), F(ew - sw)
    if rh <= 0 or rw <= 0:
        return None
    bh, bw = F(rh / F(pooled_h)), F(rw / F(pooled_w))
    hf = F(sh + F(F(ph) * bh))
    wf = F(sw + F(F(pw) * bw))
    if hf < -0.5 or hf > height - 0.5 or wf < -0.5 or wf > width - 0.5:
        return None
    hfl, wfl = int(math.floor(hf)), int(math.floor(wf))
    hce, wce = hfl + 1, wfl + 1
    hf = F(min(max(hf, F(0)), F(height - 1)))
    wf = F(min(max(wf, F(0)), F(width - 1)))
    hfl, wfl = min(max(hfl, 0), height - 1), min(max(wfl, 0), width - 1)
    hce, wce = min(max(hce, 0), height - 1), min(max(wce, 0), width - 1)
    lh, lw = F(hf - F(hfl)), F(wf - F(wfl))
    hh, hw = F(1) - lh, F(1) - lw
    return [(hfl * width + wfl, F(hw * hh)), (hfl * width + wce, F(lw * hh)),
            (hce * width + wfl, F(hw * lh)), (hce * width + wce, F(lw * lh))]


def roi_align_forward(x, rois, pooled_h, pooled_w, scale, pad_ratio=0.0):
    x = np.asarray(x, F)
    n, c, h, w = x.shape
    top = np.zeros((len(rois), c, pooled_h + 1, pooled_w + 1), F)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        for ch in range(c):
            data = x[b, ch].ravel()
            for ph in range(pooled_h + 1):
                for pw in range(pooled_w + 1):
                    pts = _align_point(roi, ph, pw, pooled_h, pooled_w, scale, pad_ratio, h, w)
                    if pts is None:
                        continue
                    val = F(0)
                    for idx, wt in pts:  # w00*v00 + w10*v10 + w01*v01 + w11*v11, left to right
                        val = F(val + F(wt * data[idx]))
                    top[r, ch, ph, pw] = val
    return top


def roi_align_backward(x_shape, rois, top_diff, pooled_h, pooled_w, scale, pad_ratio=0.0):
    n, c, h, w = x_shape
    g = np.zeros((n, c, h * w), np.float64)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        for ch in range(c):
            for ph in range(pooled_h + 1):
                for pw in range(pooled_w + 1):
                    pts = _align_point(roi, ph, pw, pooled_h, pooled_w, scale, pad_ratio, h, w)
                    if pts is None:
                        continue
                    for idx, wt in pts:
                        g[b, ch, idx] += float(wt) * float(top_diff[r, ch, ph, pw])
    return g.reshape(n, c, h, w)


# -- ROIPooling (the fork's, with pad_ratio and its argmax backward) ---------------------------------
def roi_pool_forward(x, rois, pooled_h, pooled_w, scale, pad_ratio=0.0):
    x = np.asarray(x, F)
    n, c, h, w = x.shape
    top = np.full((len(rois), c, pooled_h, pooled_w), -FLT_MAX, F)
    arg = np.full(top.shape, -1, np.int64)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        pad_w = (F(roi[3]) - F(roi[1]) + F(1)) * F(pad_ratio)
        pad_h = (F(roi[4]) - F(roi[2]) + F(1)) * F(pad_ratio)
        sw = c_round(float(F((F(roi[1]) - pad_w) * F(scale))))
        sh = c_round(float(F((F(roi[2]) - pad_h) * F(scale))))
        ew = c_round(float(F((F(roi[3]) + pad_w) * F(scale))))
        eh = c_round(float(F((F(roi[4]) + pad_h) * F(scale))))
        rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = F(F(rh) / F(pooled_h)), F(F(rw) / F(pooled_w))
        for ch in range(c):
            data = x[b, ch].ravel()
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hs = min(max(int(math.floor(F(F(ph) * bh))) + sh, 0), h)
                    he = min(max(int(math.ceil(F(F(ph + 1) * bh))) + sh, 0), h)
                    ws = min(max(int(math.floor(F(F(pw) * bw))) + sw, 0), w)
                    we = min(max(int(math.ceil(F(F(pw + 1) * bw))) + sw, 0), w)
                    if he <= hs or we <= ws:
                        top[r, ch, ph, pw] = 0
                        arg[r, ch, ph, pw] = -1
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            if data[hh * w + ww] > top[r, ch, ph, pw]:
                                top[r, ch, ph, pw] = data[hh * w + ww]
                                arg[r, ch, ph, pw] = hh * w + ww
    return top, arg


def roi_pool_backward(x_shape, rois, top_diff, arg):
    n, c, h, w = x_shape
    g = np.zeros((n, c, h * w), np.float64)
    for r, roi in enumerate(rois):
        for ch in range(c):
            for idx, d in zip(arg[r, ch].ravel(), top_diff[r, ch].ravel()):
                if idx >= 0:
                    g[int(roi[0]), ch, idx] += d
    return g.reshape(n, c, h, w)


# -- boxes (bbox_util.cpp) ---------------------------------------------------------------------------
def bbox_size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return F(0)
    return F(F(b[2] - b[0] + F(1)) * F(b[3] - b[1] + F(1)))


def jaccard(b1, b2, mode="IOU"):
    if b1[2] < b1[0] or b1[3] < b1[1] or b2[2] < b2[0] or b2[3] < b2[1]:
        return F(0)
    ix1, iy1 = max(b1[0], b2[0]), max(b1[1], b2[1])
    ix2, iy2 = min(b1[2], b2[2]), min(b1[3], b2[3])
    inter = F(0) if (ix1 > ix2 or iy1 >= iy2) else F(F(ix2 - ix1 + F(1)) * F(iy2 - iy1 + F(1)))
    s1, s2 = bbox_size(b1), bbox_size(b2)
    if mode == "IOMU":
        u = min(s1, s2)
    elif mode == "IOFU":
        u = s1
    else:
        u = F(F(s1 + s2) - inter)
    return F(0) if u <= 0 else F(inter / u)


def apply_nms(boxes, iou_thr, mode="IOU"):
    """Greedy ApplyNMS over ``boxes``: a list of (x1, y1, x2, y2, score, ...) tuples in their order."""
    kp = [True] * len(boxes)
    for i in range(len(boxes)):
        if not kp[i]:
            continue
        for j in range(i + 1, len(boxes)):
            if kp[j] and jaccard(boxes[i], boxes[j], mode) > F(iou_thr):
                kp[j] = False
    return [b for b, k in zip(boxes, kp) if k]


def _sort_desc(items, key):
    return sorted(items, key=lambda t: -float(key(t)))  # stable: ties keep their order (see the layer)


def decode_with_prior(delta4, prior, mean, std):
    pw, ph = F(prior[2] - prior[0] + F(1)), F(prior[3] - prior[1] + F(1))
    cx, cy = F(0.5 * float(F(prior[2] + prior[0]))), F(0.5 * float(F(prior[3] + prior[1])))
    bx = F(F(F(delta4[0]) * F(std[0])) + F(mean[0]))
    by = F(F(F(delta4[1]) * F(std[1])) + F(mean[1]))
    bw = F(F(F(delta4[2]) * F(std[2])) + F(mean[2]))
    bh = F(F(F(delta4[3]) * F(std[3])) + F(mean[3]))
    tx, ty = F(F(bx * pw) + cx), F(F(by * ph) + cy)
    tw, th = F(pw * F(math.exp(float(bw)))), F(ph * F(math.exp(float(bh))))
    tx, ty = F(tx - F(F(tw - F(1)) / F(2))), F(ty - F(F(th - F(1)) / F(2)))
    return [tx, ty, F(F(tx + tw) - F(1)), F(F(ty + th) - F(1))]


# -- layers -----------------------------------------------------------------------------------------
def scale_route(rois, low=None, high=None):
    lo = F(low) if low is not None else F(0)
    hi = F(high) if high is not None else F(FLT_MAX)
    if low is not None and high is not None:
        mid = F(math.sqrt(float(F(lo * hi))))
    else:
        mid = lo if low is not None else hi if high is not None else F(256)
    sel, best, best_i = [], FLT_MAX, -1
    for i, r in enumerate(rois):
        s = F(math.sqrt(float(bbox_size([F(v) for v in r[1:5]]))))
        if lo <= s < hi:
            sel.append(i)
        d = abs(math.log2(float(s) / float(mid))) if s > 0 else math.inf
        d = float(F(d)) if math.isfinite(d) else d
        if d < best:
            best, best_i = d, i
    return sel if sel else [best_i]


def decode_bbox(deltas, rois, mean, std, train=False, gt=None, gt_iou_thr=0.95):
    out = []
    for i, (d, r) in enumerate(zip(deltas, rois)):
        b = decode_with_prior([F(v) for v in d[4:8]], [F(v) for v in r[1:5]], mean, std)
        if train and (b[0] > b[2] or b[1] > b[3]):
            continue
        if train and gt is not None and F(gt[i][-1]) >= F(gt_iou_thr):
            continue
        out.append([F(r[0])] + b)
    return np.array(out, F)


def box_group_output(pairs, groups, fg_thr, iou_thr, nms_type="IOU", field_whr=2.0, field_xyr=2.0,
                     max_nms_num=0, max_post_nms_num=0, min_size=15.0, mean=(0, 0, 0, 0), std=(1, 1, 1, 1)):
    """``pairs``: [(prob (N*G, C, H, W), deltas (N*G, 4, H, W))]; ``groups``: [(field_w, field_h, stride)]."""
    bounds = [F(F(-1) / F(field_xyr)), F(F(1) / F(field_xyr)), F(math.log(float(F(F(1) / F(field_whr))))),
              F(math.log(float(F(field_whr))))]
    num = pairs[0][0].shape[0] // len(groups[0][0])
    rows = []
    for i in range(num):
        boxes = []
        for (prob, delt), (fws, fhs, stride) in zip(pairs, groups):
            g = len(fws)
            _, _, h, w = prob.shape
            for k in range(g):
                gi = i * g + k
                for s in range(h * w):
                    score = F(F(1) - F(prob[gi, 0].ravel()[s]))
                    if not score >= F(fg_thr):
                        continue
                    hh, ww = s // w, s % w
                    v = [F(F(F(delt[gi, j].ravel()[s]) * F(std[j])) + F(mean[j])) for j in range(4)]
                    bx = min(bounds[1], max(bounds[0], v[0]))
                    by = min(bounds[1], max(bounds[0], v[1]))
                    bw = min(bounds[3], max(bounds[2], v[2]))
                    bh = min(bounds[3], max(bounds[2], v[3]))
                    bx = F(F(bx * F(fws[k])) + F(F(F(ww) + F(0.5)) * F(stride)))
                    by = F(F(by * F(fhs[k])) + F(F(F(hh) + F(0.5)) * F(stride)))
                    bw = F(F(fws[k]) * F(math.exp(float(bw))))
                    bh = F(F(fhs[k]) * F(math.exp(float(bh))))
                    bx, by = F(bx - F(bw / F(2))), F(by - F(bh / F(2)))
                    b = [bx, by, F(F(bx + bw) - F(1)), F(F(by + bh) - F(1))]
                    b = [max(F(0), b[0]), max(F(0), b[1]), min(F(w * stride), b[2]), min(F(h * stride), b[3])]
                    if F(b[2] - b[0] + F(1)) >= F(min_size) and F(b[3] - b[1] + F(1)) >= F(min_size):
                        boxes.append((*b, score))
        if not boxes:
            continue
        boxes = _sort_desc(boxes, lambda t: t[4])
        if max_nms_num > 0:
            boxes = boxes[:max_nms_num]
        kept = apply_nms(boxes, iou_thr, nms_type)
        if max_post_nms_num > 0:
            kept = kept[:max_post_nms_num]
        rows += [(i, *b) for b in kept]
    if not rows:
        return np.array([[0, 1, 1, 10, 10]], F), np.zeros((1, 6), F)
    a = np.array(rows, F)
    return a[:, :5], a


def frcnn_output(prob, deltas, rois, size_hw, conf_thr=0.0, iou_thr=0.5, nms_type="IOU", max_det_num=0,
                 cls_aware=True, mean=(0, 0, 0, 0), std=(1, 1, 1, 1)):
    r, c = prob.shape
    k = deltas.shape[1] // 4
    pred = [[decode_with_prior([F(v) for v in deltas[i, 4 * j:4 * j + 4]], [F(v) for v in rois[i, 1:5]], mean, std)
             for j in range(k)] for i in range(r)]
    cls_boxes = {}
    total = 0
    for cls in range(1, c):
        boxes = []
        for i in range(r):
            s = F(prob[i, cls])
            if s >= F(conf_thr):
                b = pred[i][cls if cls_aware else 1]
                b = [max(F(0), b[0]), max(F(0), b[1]), min(F(size_hw[1]), b[2]), min(F(size_hw[0]), b[3])]
                boxes.append((*b, s))
        if not boxes:
            continue
        boxes = _sort_desc(boxes, lambda t: t[4])
        cls_boxes[cls] = apply_nms(boxes, iou_thr, nms_type)
        total += len(cls_boxes[cls])
    if max_det_num > 0 and total > max_det_num:
        pairs = [(b[4], cls, j) for cls in sorted(cls_boxes) for j, b in enumerate(cls_boxes[cls])]
        pairs = _sort_desc(pairs, lambda t: t[0])[:max_det_num]
        new = {}
        for _, cls, j in pairs:
            new.setdefault(cls, []).append(cls_boxes[cls][j])
        cls_boxes = new
    out = [[0, -1, -1, -1, -1, -1, -1]]
    for cls in sorted(cls_boxes):
        out += [[0, *b[:4], cls, b[4]] for b in cls_boxes[cls]]
    return np.array(out, F)
