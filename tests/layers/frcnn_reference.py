"""Loop-by-loop NumPy ports of D-X-Y/caffe-faster-rcnn's CPU code (``dev`` @ 1ae964d1):
``src/caffe/FRCNN/frcnn_anchor_target_layer.cpp``, ``frcnn_proposal_layer.cpp``,
``frcnn_proposal_target_layer.cpp``, ``frcnn_roi_data_layer.cpp`` (the box handling) and
``util/frcnn_bbox*.cpp``, in float32 as the fork's ``Dtype``. The random choices come in as ``perm(n)``
(a permutation of ``range(n)``): the fork's ``caffe_rng_rand() % n`` set and ``std::shuffle`` are
uniform choices of the same kind, fixed here so the port and the layer make the same ones.
"""
from __future__ import annotations

import numpy as np

f32 = np.float32


def get_iou(a, b):
    xx1, yy1, xx2, yy2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(f32(0), f32(xx2 - xx1 + 1)) * max(f32(0), f32(yy2 - yy1 + 1))
    area_a = f32(a[2] - a[0] + 1) * f32(a[3] - a[1] + 1)
    area_b = f32(b[2] - b[0] + 1) * f32(b[3] - b[1] + 1)
    return f32(inter / f32(area_a + area_b - inter))


def bbox_transform(ex, gt):
    ew, eh = f32(ex[2] - ex[0] + 1), f32(ex[3] - ex[1] + 1)
    ecx, ecy = f32(ex[0] + f32(0.5) * ew), f32(ex[1] + f32(0.5) * eh)
    gw, gh = f32(gt[2] - gt[0] + 1), f32(gt[3] - gt[1] + 1)
    gcx, gcy = f32(gt[0] + f32(0.5) * gw), f32(gt[1] + f32(0.5) * gh)
    return [f32((gcx - ecx) / ew), f32((gcy - ecy) / eh), f32(np.log(f32(gw / ew))), f32(np.log(f32(gh / eh)))]


def bbox_transform_inv(box, d):
    w, h = f32(box[2] - box[0] + 1), f32(box[3] - box[1] + 1)
    cx, cy = f32(box[0] + f32(0.5) * w), f32(box[1] + f32(0.5) * h)
    px, py = f32(d[0] * w + cx), f32(d[1] * h + cy)
    pw, ph = f32(np.exp(f32(d[2])) * w), f32(np.exp(f32(d[3])) * h)
    return [f32(px - f32(0.5) * pw), f32(py - f32(0.5) * ph), f32(px + f32(0.5) * pw), f32(py + f32(0.5) * ph)]


def anchor_target(height, width, gt, im_info, cfg, perm):
    """FrcnnAnchorTarget::Forward_cpu: (labels, targets, inside, outside) in the fork's top layout."""
    a_n = len(cfg.anchors) // 4
    anc_cfg = [f32(v) for v in cfg.anchors]
    border = f32(cfg.rpn_allowed_border)
    im_h, im_w = f32(im_info[0]), f32(im_info[1])
    gts = [[f32(v) for v in row[:4]] for row in gt]
    inds, anchors = [], []
    for h in range(height):
        for w in range(width):
            for k in range(a_n):
                x1 = f32(w * cfg.feat_stride + anc_cfg[4 * k])
                y1 = f32(h * cfg.feat_stride + anc_cfg[4 * k + 1])
                x2 = f32(w * cfg.feat_stride + anc_cfg[4 * k + 2])
                y2 = f32(h * cfg.feat_stride + anc_cfg[4 * k + 3])
                if x1 >= -border and y1 >= -border and x2 < im_w + border and y2 < im_h + border:
                    inds.append((h * width + w) * a_n + k)
                    anchors.append([x1, y1, x2, y2])
    n = len(anchors)
    labels = [-1] * n
    max_ov, argmax = [f32(-1)] * n, [-1] * n
    gt_max = [f32(-1)] * len(gts)
    ious = [[get_iou(anchors[i], g) for g in gts] for i in range(n)]
    for i in range(n):
        for j in range(len(gts)):
            if ious[i][j] > max_ov[i]:
                max_ov[i], argmax[i] = ious[i][j], j
            if ious[i][j] > gt_max[j]:
                gt_max[j] = ious[i][j]
    if not cfg.rpn_clobber_positives:
        for i in range(n):
            if max_ov[i] < f32(cfg.rpn_negative_overlap):
                labels[i] = 0
    for j in range(len(gts)):
        for i in range(n):
            if abs(f32(gt_max[j] - ious[i][j])) <= f32(cfg.eps):
                labels[i] = 1
    for i in range(n):
        if max_ov[i] >= f32(cfg.rpn_positive_overlap):
            labels[i] = 1
    if cfg.rpn_clobber_positives:
        for i in range(n):
            if max_ov[i] < f32(cfg.rpn_negative_overlap):
                labels[i] = 0
    num_fg = int(f32(cfg.rpn_fg_fraction) * f32(cfg.rpn_batchsize))
    fg = [i for i in range(n) if labels[i] == 1]
    if len(fg) > num_fg:
        for t in perm(len(fg))[: len(fg) - num_fg]:
            labels[fg[t]] = -1
    num_bg = cfg.rpn_batchsize - labels.count(1)
    bg = [i for i in range(n) if labels[i] == 0]
    if len(bg) > num_bg:
        for t in perm(len(bg))[: len(bg) - num_bg]:
            labels[bg[t]] = -1
    targets = [bbox_transform(anchors[i], gts[argmax[i]]) if argmax[i] >= 0 else [f32(0)] * 4 for i in range(n)]
    w_in = [[f32(v) for v in cfg.rpn_bbox_inside_weights] if labels[i] == 1 else [f32(0)] * 4 for i in range(n)]
    if cfg.rpn_positive_weight < 0:
        ne = n - labels.count(-1)
        pw = nw = f32(1) / f32(ne)
    else:
        pw = f32(cfg.rpn_positive_weight) / labels.count(1)
        nw = f32(1 - f32(cfg.rpn_positive_weight)) / labels.count(0)
    w_out = [[pw] * 4 if labels[i] == 1 else [nw] * 4 if labels[i] == 0 else [f32(0)] * 4 for i in range(n)]
    top_l = np.full((1, 1, a_n * height, width), -1, np.float32)
    tops = [np.zeros((1, a_n * 4, height, width), np.float32) for _ in range(3)]
    for idx, ind in enumerate(inds):
        k, hh, ww = ind % a_n, (ind // a_n) // width, (ind // a_n) % width
        top_l[0, 0, k * height + hh, ww] = labels[idx]
        for c in range(4):
            tops[0][0, k * 4 + c, hh, ww] = targets[idx][c]
            tops[1][0, k * 4 + c, hh, ww] = w_in[idx][c]
            tops[2][0, k * 4 + c, hh, ww] = w_out[idx][c]
    return [top_l] + tops


def proposal(score, bbox, im_info, cfg, train):
    """FrcnnProposalLayer::Forward_cpu: (rois (n, 5), scores (n,))."""
    if train:
        pre, post, thr, ms = cfg.rpn_pre_nms_top_n, cfg.rpn_post_nms_top_n, cfg.rpn_nms_thresh, cfg.rpn_min_size
    else:
        pre, post, thr, ms = (cfg.test_rpn_pre_nms_top_n, cfg.test_rpn_post_nms_top_n, cfg.test_rpn_nms_thresh,
                              cfg.test_rpn_min_size)
    _, _, height, width = bbox.shape
    a_n = len(cfg.anchors) // 4
    anc = [f32(v) for v in cfg.anchors]
    im_h, im_w = f32(im_info[0]), f32(im_info[1])
    bounds = [im_w - 1, im_h - 1, im_w - 1, im_h - 1]
    min_size = f32(f32(im_info[2]) * int(ms))
    sv, boxes = [], []
    for j in range(height):
        for i in range(width):
            for k in range(a_n):
                s = score[0, a_n + k, j, i]
                a = [f32(anc[4 * k] + i * cfg.feat_stride), f32(anc[4 * k + 1] + j * cfg.feat_stride),
                     f32(anc[4 * k + 2] + i * cfg.feat_stride), f32(anc[4 * k + 3] + j * cfg.feat_stride)]
                d = [bbox[0, k * 4 + q, j, i] for q in range(4)]
                c = bbox_transform_inv(a, d)
                c = [max(f32(0), min(c[q], bounds[q])) for q in range(4)]
                if f32(c[2] - c[0] + 1) >= min_size and f32(c[3] - c[1] + 1) >= min_size:
                    sv.append((s, len(sv)))
                    boxes.append(c)
    sv.sort(reverse=True)
    n = min(len(sv), pre)
    sv = sv[:n]
    select = [True] * n
    out, scores = [], []
    i = 0
    while i < n and len(out) < post:
        if select[i]:
            ci = sv[i][1]
            for j in range(i + 1, n):
                if select[j] and get_iou(boxes[ci], boxes[sv[j][1]]) > f32(thr):
                    select[j] = False
            out.append([0.0] + boxes[ci])
            scores.append(sv[i][0])
        i += 1
    return np.array(out, np.float32).reshape(-1, 5), np.array(scores, np.float32)


def proposal_target(rois, gt, cfg, perm):
    """FrcnnProposalTargetLayer::Forward_cpu + _sample_rois: the five tops as 2-D arrays."""
    all_rois = [[f32(v) for v in r[1:5]] for r in rois]
    gts = [[f32(v) for v in g[:4]] for g in gt]
    gl = [int(g[4]) for g in gt]
    all_rois += gts
    rpi = int(f32(cfg.batch_size))
    fgpi = int(rpi * f32(cfg.fg_fraction))
    m = len(all_rois)
    max_ov, assign = [f32(0)] * m, [-1] * m
    for i in range(m):
        for j in range(len(gts)):
            o = get_iou(all_rois[i], gts[j])
            if max_ov[i] <= o:
                max_ov[i], assign[i] = o, j
    labels_all = [gl[assign[i]] if assign[i] >= 0 else 0 for i in range(m)]
    fg = [i for i in range(m) if max_ov[i] >= f32(cfg.fg_thresh)]
    n_fg = min(fgpi, len(fg))
    if fg:
        fg = [fg[t] for t in perm(len(fg))][:n_fg]
    bg = [i for i in range(m) if f32(cfg.bg_thresh_lo) <= max_ov[i] < f32(cfg.bg_thresh_hi)]
    n_bg = min(rpi - n_fg, len(bg))
    if bg:
        bg = [bg[t] for t in perm(len(bg))][:n_bg]
    keep = fg + bg
    labels = [labels_all[k] if i < n_fg else 0 for i, k in enumerate(keep)]
    sel = [all_rois[k] for k in keep]
    gtb = [gts[assign[k]] if assign[k] >= 0 else [f32(0)] * 4 for k in keep]
    t = [bbox_transform(r, g) for r, g in zip(sel, gtb)]
    if cfg.bbox_normalize_targets:
        t = [[f32(f32(v[j] - f32(cfg.bbox_normalize_means[j])) / f32(cfg.bbox_normalize_stds[j])) for j in range(4)]
             for v in t]
    c = cfg.n_classes
    k = len(keep)
    tg, wi = np.zeros((k, 4 * c), np.float32), np.zeros((k, 4 * c), np.float32)
    for i in range(k):
        if labels[i] > 0:
            tg[i, 4 * labels[i]: 4 * labels[i] + 4] = t[i]
            wi[i, 4 * labels[i]: 4 * labels[i] + 4] = cfg.bbox_inside_weights
    out_rois = np.array([[0.0] + r for r in sel], np.float32).reshape(-1, 5)
    return [out_rois, np.array(labels, np.float32).reshape(-1, 1), tg, wi, (wi > 0).astype(np.float32)]


def roi_data_boxes(rois, cols, rows, im_scale, out_h, out_w, mirror):
    """FrcnnRoiDataLayer::load_batch's box handling: rows [label, x1, y1, x2, y2] -> (n, 5) x1 y1 x2 y2 label."""
    out = []
    for label, x1, y1, x2, y2 in rois:
        x1, y1, x2, y2 = f32(x1), f32(y1), f32(x2), f32(y2)
        if not (x1 >= 0 and y1 >= 0 and x2 < cols and y2 < rows):
            x1, y1 = max(f32(0), x1), max(f32(0), y1)
            x2, y2 = min(f32(cols - 1), x2), min(f32(rows - 1), y2)
        if mirror:
            x1, x2 = f32(cols - x2 - 1), f32(cols - x1 - 1)
        b = [f32(x1 * f32(im_scale)), f32(y1 * f32(im_scale)), f32(x2 * f32(im_scale)), f32(y2 * f32(im_scale)),
             f32(label)]
        if b[3] >= out_h:
            b[3] = f32(out_h - 1)
        if b[2] >= out_w:
            b[2] = f32(out_w - 1)
        b[0], b[1] = max(b[0], f32(0)), max(b[1], f32(0))
        out.append(b)
    return np.array(out, np.float32).reshape(-1, 5)


def _cround(v):
    return int(np.sign(v) * np.floor(abs(v) + 0.5))


def _mask_geometry(r, scale, half, roi_scale, mask_scale):
    x1, y1, x2, y2 = (f32(v) for v in r[1:5])
    xc, yc = f32((x1 + x2) / f32(2)), f32((y1 + y2) / f32(2))
    w, h = f32(x2 - x1), f32(y2 - y1)
    rs = f32(roi_scale)
    xx1, xx2 = f32(xc - f32(w * rs) / f32(2)), f32(xc + f32(w * rs) / f32(2))
    yy1, yy2 = f32(yc - f32(h * rs) / f32(2)), f32(yc + f32(h * rs) / f32(2))
    if half == 1:
        xx2 = xc
    elif half == 2:
        xx1 = xc
    elif half == 3:
        yy2 = yc
    elif half == 4:
        yy1 = yc
    ms = float(f32(mask_scale))
    m = [f32(float(xc) - float(w) * ms / 2.0), f32(float(yc) - float(h) * ms / 2.0),
         f32(float(xc) + float(w) * ms / 2.0), f32(float(yc) + float(h) * ms / 2.0)]
    s = f32(scale)
    roi = [_cround(f32(v * s)) for v in (xx1, yy1, xx2, yy2)]
    mask = [_cround(f32(v * s)) for v in m]
    return roi, mask


def roi_mask_pool_forward(x, rois, pooled_h, pooled_w, scale, half, roi_scale, mask_scale):
    """ROIMaskPoolForward (the CUDA kernel), one output at a time: (top, argmax)."""
    n, c, height, width = x.shape
    r_n = len(rois)
    top = np.zeros((r_n, c, pooled_h, pooled_w), x.dtype)
    arg = np.full((r_n, c, pooled_h, pooled_w), -1, np.int64)
    for r in range(r_n):
        (sw, sh, ew, eh), (mw1, mh1, mw2, mh2) = _mask_geometry(rois[r], scale, half, roi_scale, mask_scale)
        roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = f32(roi_h) / f32(pooled_h), f32(roi_w) / f32(pooled_w)
        b = int(rois[r][0])
        for ch in range(c):
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    hs = min(max(int(np.floor(f32(ph) * bh)) + sh, 0), height)
                    he = min(max(int(np.ceil(f32(ph + 1) * bh)) + sh, 0), height)
                    ws = min(max(int(np.floor(f32(pw) * bw)) + sw, 0), width)
                    we = min(max(int(np.ceil(f32(pw + 1) * bw)) + sw, 0), width)
                    empty = he <= hs or we <= ws
                    best, idx = (0.0 if empty else -float(np.finfo(np.float32).max)), -1
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            v = x[b, ch, hh, ww]
                            if mask_scale > 0 and mw1 <= ww <= mw2 and mh1 <= hh <= mh2:
                                v = 0
                            if v > best:
                                best, idx = x[b, ch, hh, ww], hh * width + ww
                    top[r, ch, ph, pw], arg[r, ch, ph, pw] = best, idx
    return top, arg


def roi_mask_pool_backward(top_diff, arg, rois, shape, pooled_h, pooled_w, scale, half, roi_scale, mask_scale):
    """ROIMaskPoolBackward (the CUDA kernel), one bottom pixel at a time."""
    n, c, height, width = shape
    out = np.zeros(shape, top_diff.dtype)
    geo = [_mask_geometry(r, scale, half, roi_scale, mask_scale)[0] for r in rois]
    for b in range(n):
        for ch in range(c):
            for h in range(height):
                for w in range(width):
                    grad = 0.0
                    for r, (sw, sh, ew, eh) in enumerate(geo):
                        if int(rois[r][0]) != b or not (sw <= w <= ew and sh <= h <= eh):
                            continue
                        roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
                        bh, bw = f32(roi_h) / f32(pooled_h), f32(roi_w) / f32(pooled_w)
                        phs = min(max(int(np.floor(f32(h - sh) / bh)), 0), pooled_h)
                        phe = min(max(int(np.ceil(f32(h - sh + 1) / bh)), 0), pooled_h)
                        pws = min(max(int(np.floor(f32(w - sw) / bw)), 0), pooled_w)
                        pwe = min(max(int(np.ceil(f32(w - sw + 1) / bw)), 0), pooled_w)
                        for ph in range(phs, phe):
                            for pw in range(pws, pwe):
                                if arg[r, ch, ph, pw] == h * width + w:
                                    grad += top_diff[r, ch, ph, pw]
                    out[b, ch, h, w] = grad
    return out
