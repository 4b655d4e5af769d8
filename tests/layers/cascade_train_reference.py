"""Loop-by-loop NumPy ports of Cascade R-CNN's training and evaluation layers (zhaoweicai/cascade-rcnn @
2252f46158ea6555868ca6fa5c221ea71d9b5e6c: ``src/caffe/layers/{proposal_target,detection_group_loss,
detection_group_accuracy,bbox_accuracy,hard_mining,smooth_L1_loss,detection_evaluate,detection_data,eval_data}
_layer.{cpp,cu}``, ``src/caffe/util/bbox_util.cpp``), the references of tests/layers/test_cascade_train*.py.

Where the fork calls ``shuffle`` (boost mt19937) the ports take ``keys`` and order the candidates by them (what
neocaffe draws instead); the data loop takes a ``Draws`` object replaying neocaffe's per-batch draws in the
fork's order. Everything else follows the C++ loops, in float32 where the fork computes in ``Dtype``/float.
"""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32
FLT_MIN = np.finfo(np.float32).tiny


def c_round(v):
    return int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))


def jaccard_xywh(x1, y1, w1, h1, x2, y2, w2, h2):
    """bbox_util.cpp's 8-argument JaccardOverlap, "IOU"."""
    x1, y1, w1, h1, x2, y2, w2, h2 = (f32(v) for v in (x1, y1, w1, h1, x2, y2, w2, h2))
    if w1 <= 0 or h1 <= 0 or w2 <= 0 or h2 <= 0:
        return f32(0)
    tlx, tly = max(x1, x2), max(y1, y2)
    brx, bry = min(f32(x1 + w1 - 1), f32(x2 + w2 - 1)), min(f32(y1 + h1 - 1), f32(y2 + h2 - 1))
    over = f32(0) if (tlx > brx or tly > bry) else f32(f32(brx - tlx + 1) * f32(bry - tly + 1))
    u = f32(f32(w1 * h1) + f32(w2 * h2) - over)
    return f32(over / u)


def jaccard_bbox(a, b, mode="IOU"):
    """bbox_util.cpp's JaccardOverlap(BBox, BBox, mode) (note ``inter_ymin >= inter_ymax``)."""
    a, b = [f32(v) for v in a], [f32(v) for v in b]
    if a[2] < a[0] or a[3] < a[1] or b[2] < b[0] or b[3] < b[1]:
        return f32(0)
    ix1, iy1, ix2, iy2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = f32(0) if (ix1 > ix2 or iy1 >= iy2) else f32(f32(ix2 - ix1 + 1) * f32(iy2 - iy1 + 1))

    def size(c):
        return f32(0) if (c[2] < c[0] or c[3] < c[1]) else f32(f32(c[2] - c[0] + 1) * f32(c[3] - c[1] + 1))

    union = size(a) if mode == "IOFU" else f32(f32(size(a) + size(b)) - inter)
    return f32(0) if union <= 0 else f32(inter / union)


def _shuffle(items, keys):
    return sorted(items, key=lambda p: keys[p[0]])


# -- ProposalTarget -----------------------------------------------------------------------------
def proposal_target(rois_data, gt_data, p, bbox_mean, bbox_std, cls_aware, keys, n_tops=6):
    """ProposalTargetLayer::Forward_cpu (``p``: a dict of proposal_target_param fields)."""
    rois_boxes = []
    for r in rois_data:
        bb = [f32(r[0]), f32(r[1]), f32(r[2]), f32(f32(r[3]) - f32(r[1]) + 1), f32(f32(r[4]) - f32(r[2]) + 1)]
        rois_boxes.append(bb)
    gt_boxes, gt_labels, gt_ignored = [], [], []
    for g in gt_data:
        if int(g[0]) == -1:
            continue
        bb = [f32(g[0]), f32(g[1]), f32(g[2]), f32(f32(g[3]) - f32(g[1]) + 1), f32(f32(g[4]) - f32(g[2]) + 1)]
        gt_boxes.append(bb)
        gt_labels.append(f32(g[5]))
        gt_ignored.append(f32(g[6]))
        if p["append_gtbox"]:
            rois_boxes.append(bb)
    num_rois, num_gt = len(rois_boxes), len(gt_boxes)
    max_gt, max_ov = [], []
    for i in range(num_rois):
        maxop, maxid, exist = -np.inf, -1, False
        for j in range(num_gt):
            if gt_boxes[j][0] != rois_boxes[i][0]:
                continue
            exist = True
            op = jaccard_xywh(*rois_boxes[i][1:], *gt_boxes[j][1:])
            if op > maxop:
                maxop, maxid = op, j
        max_gt.append(maxid if exist else -1)
        max_ov.append(f32(maxop) if exist else f32(0))
    fg, bg, discard = [], [], []
    for i in range(num_rois):
        if max_ov[i] >= f32(p["fg_thr"]):
            assert gt_labels[max_gt[i]] > 0
            if gt_ignored[max_gt[i]]:
                continue
            fg.append((i, max_gt[i]))
        elif f32(p["bg_thr_lw"]) <= max_ov[i] < f32(p["bg_thr_hg"]):
            bg.append((i, max_gt[i]))
        else:
            discard.append((i, max_gt[i]))
    bs = p["batch_size"]
    if bs == -1:
        actual, fg_per = len(fg) + len(bg), len(fg)
    else:
        actual, fg_per = bs, c_round(f32(f32(p["fg_fraction"]) * f32(bs)))
    n_fg = min(fg_per, len(fg))
    if len(fg) > n_fg:
        fg = _shuffle(fg, keys)[:n_fg]
    n_bg = min(actual - n_fg, len(bg))
    if len(bg) > actual - n_fg:
        bg = _shuffle(bg, keys)[:n_bg]
    elif p["pickup_discard"] and discard:
        for i in range(min(actual - n_fg - len(bg), len(discard))):
            bg.append(discard[i])
            n_bg += 1
    assert n_fg + n_bg > 0, "the port does not draw the backup box"
    keep = fg[:n_fg] + bg[:n_bg]
    labels = [int(gt_labels[g]) for _, g in fg[:n_fg]] + [0] * n_bg
    dim = p["cls_num"] * 4 if cls_aware else 8
    n = len(keep)
    out = {k: np.zeros((n, d), np.float32) for k, d in (("rois", 5), ("labels", 1), ("targets", dim),
                                                          ("inside", dim), ("outside", dim), ("match", 6))}
    for i, (bbid, gtid) in enumerate(keep):
        rb = rois_boxes[bbid]
        out["labels"][i, 0] = labels[i]
        out["rois"][i] = [rb[0], rb[1], rb[2], f32(f32(rb[1] + rb[3]) - 1), f32(f32(rb[2] + rb[4]) - 1)]
        if labels[i] == 0 or gtid < 0:
            continue
        gb = gt_boxes[gtid]
        bw, bh = rb[3], rb[4]
        bcx, bcy = f32(rb[1] + 0.5 * float(bw)), f32(rb[2] + 0.5 * float(bh))
        gw, gh = gb[3], gb[4]
        gcx, gcy = f32(gb[1] + 0.5 * float(gw)), f32(gb[2] + 0.5 * float(gh))
        t = [f32(f32(gcx - bcx) / bw), f32(f32(gcy - bcy) / bh), f32(np.log(f32(gw / bw))), f32(np.log(f32(gh / bh)))]
        if bbox_mean is not None:
            t = [f32(f32(t[j] - f32(bbox_mean[j])) / f32(bbox_std[j])) for j in range(4)]
        ov = max_ov[bbid]
        cls = labels[i] if cls_aware else min(1, labels[i])
        for j in range(4):
            out["targets"][i, cls * 4 + j] = t[j]
            w = 1.0 if f32(p["bbox_thr_lw"]) <= ov <= f32(p["bbox_thr_hg"]) else 0.0
            out["inside"][i, cls * 4 + j] = out["outside"][i, cls * 4 + j] = w
        out["match"][i] = [labels[i], gb[1], gb[2], f32(gb[1] + gw - 1), f32(gb[2] + gh - 1), ov]
    if n_tops >= 7:
        sw = np.ones(n, np.float32)
        if p["iou_weighted"]:
            sw = np.where(out["labels"][:, 0] > 0, out["match"][:, 5], 1).astype(np.float32)
        pos, neg = float(sw[out["labels"][:, 0] > 0].sum()), float(sw[out["labels"][:, 0] <= 0].sum())
        for i in range(n):
            if pos != 0:
                ff = float(f32(p["fg_fraction"]))
                sw[i] *= (ff * n / pos) if out["labels"][i, 0] > 0 else ((1 - ff) * n / neg)
        out["weights"] = sw[:, None]
    return out


# -- HardMining / BboxAccuracy / SmoothL1Loss -----------------------------------------------------
def hard_mining(score, rois, num_roi_per_image, num_image):
    image_rois = [[] for _ in range(num_image)]
    for i, s in enumerate(score):
        image_rois[int(rois[i, 0])].append((float(s), i))
    for lst in image_rois:
        lst.sort(reverse=True)
    keep, left = [], []
    for lst in image_rois:
        keep += [i for _, i in lst[:num_roi_per_image]]
        left += lst[num_roi_per_image:]
    batch = min(num_image * num_roi_per_image, len(score))
    left.sort(reverse=True)
    keep += [i for _, i in left[:batch - len(keep)]]
    return sorted(keep)


def bbox_accuracy(pred, rois, gt, cls_aware, mean, std):
    n, after, before, fg = len(pred), 0.0, 0.0, 0
    flags = [False] * n
    for i in range(n):
        if gt[i, 0] > 0:
            if gt[i, -1] > 0.975:
                flags[i] = True
                continue
            fg += 1
    for i in range(n):
        label = int(gt[i, 0])
        if label <= 0:
            continue
        if not cls_aware:
            label = min(1, label)
        px, py, pw, ph = (f32(pred[i, label * 4 + j]) for j in range(4))
        if mean is not None:
            px, py, pw, ph = (f32(f32(v * f32(std[j])) + f32(mean[j])) for j, v in enumerate((px, py, pw, ph)))
        rx, ry = f32(rois[i, 1]), f32(rois[i, 2])
        rw, rh = f32(f32(rois[i, 3]) - rx + 1), f32(f32(rois[i, 4]) - ry + 1)
        gx, gy = f32(gt[i, 1]), f32(gt[i, 2])
        gw, gh = f32(f32(gt[i, 3]) - gx + 1), f32(f32(gt[i, 4]) - gy + 1)
        cx, cy = f32(rx + 0.5 * float(rw)), f32(ry + 0.5 * float(rh))
        tw, th = f32(rw * f32(np.exp(pw))), f32(rh * f32(np.exp(ph)))
        tx, ty = f32(f32(f32(px * rw) + cx) - f32(tw / 2)), f32(f32(f32(py * rh) + cy) - f32(th / 2))
        if flags[i]:
            continue
        after += float(jaccard_xywh(tx, ty, tw, th, gx, gy, gw, gh))
        before += float(jaccard_xywh(rx, ry, rw, rh, gx, gy, gw, gh))
    return (after / fg, before / fg) if fg else (-1.0, -1.0)


def smooth_l1_per_instance(a, b, w_in, w_out, sigma):
    s2 = float(f32(sigma) * f32(sigma))
    d = (a - b) * (w_in if w_in is not None else 1)
    err = np.where(np.abs(d) < 1 / s2, 0.5 * d * d * s2, np.abs(d) - 0.5 / s2)
    err = err * (w_out if w_out is not None else 1)
    n, c = a.shape[:2]
    out = np.zeros((n, 1) + a.shape[2:])
    for i in range(n):
        for k in range(c):
            out[i, 0] += err[i, k]
    return err.sum() / n, out


# -- DetectionGroupLoss / DetectionGroupAccuracy ----------------------------------------------------
def _softmax(conf):
    e = np.exp(conf - conf.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def group_loss(conf, bbox, gt, p, mean, std, keys, ignore_label=None):
    """DetectionGroupLossLayer::Forward_cpu and Backward_cpu (top diff 1): (top, conf diff, bbox diff).
    ``p``: detection_group_loss_param fields as a dict; ``keys`` (num, G * S) replace the shuffles."""
    G, C = len(p["field_w"]), p["cls_num"]
    NG, _, H, W = conf.shape
    num, S = NG // G, H * W
    prob = _softmax(conf).reshape(NG, C, S)
    label = gt[:, 0].reshape(NG, S).astype(np.int64)
    overlap = gt[:, 5].reshape(NG, S)
    gbox = gt[:, 1:5].reshape(NG, 4, S)
    obj = p["objectness"]
    rank = np.zeros((NG, S))
    if p["neg_mining_type"] in ("bootstrap", "mixture"):
        for nn in range(G):
            for i in range(num):
                gi = i * G + nn
                for j in range(S):
                    if p["neg_ranking_type"] == "conf_prob":
                        rank[gi, j] = 1 - prob[gi, 0, j]
                    else:
                        lv = min(1, label[gi, j]) if obj else label[gi, j]
                        rank[gi, j] = -np.log(max(prob[gi, lv, j], FLT_MIN))
    keep = np.zeros((NG, S))
    total = 0
    bgm = float(p["bg_multiple"])
    for i in range(num):
        pos, negs = [], []
        for nn in range(G):
            for j in range(S):
                b = (i * G + nn, j)
                if label[b] > 0:
                    pos.append(nn * S + j)
                elif label[b] == 0 and overlap[b] < f32(p["bg_threshold"]):
                    negs.append((rank[b], nn * S + j))
        if p["batch_size"] == -1:
            sp = len(pos)
            sn = min(max(int(f32(sp) * f32(bgm)), p["min_num_neg"]), len(negs))
        else:
            sp = min(c_round(p["batch_size"] / (1.0 + bgm)), len(pos))
            sn = min(p["batch_size"] - sp, len(negs))
        total += sp + sn
        if len(pos) > sp:
            pos = sorted(pos, key=lambda q: keys[i, q])[:sp]
        if len(negs) > sn:
            if p["neg_mining_type"] == "random":
                nk = [q for _, q in sorted(negs, key=lambda t: keys[i, t[1]])[:sn]]
            elif p["neg_mining_type"] == "bootstrap":
                nk = [q for _, q in sorted(negs, reverse=True)[:sn]]
            else:
                hard = c_round(sn * 0.5)
                srt = sorted(negs, reverse=True)
                nk = [q for _, q in srt[:hard]]
                nk += [q for _, q in sorted(srt[hard:], key=lambda t: keys[i, t[1]])[:sn - hard]]
        else:
            nk = [q for _, q in negs]
        for q in pos + nk:
            keep[i * G + q // S, q % S] = 1
    wmap = np.ones((NG, S))
    if p["pos_neg_weighted"]:
        ps = ((keep > 0) & (label > 0)).sum()
        ns = ((keep > 0) & (label <= 0)).sum()
        fw = float(f32(1) / f32(1 + bgm))
        for idx in np.ndindex(NG, S):
            if label[idx] > 0:
                wmap[idx] *= fw * total / ps if ps else 1
            else:
                wmap[idx] *= (1 - fw) * total / ns if ns else 1
    conf_loss, cc = 0.0, 0
    cdiff = prob.copy()
    for idx in np.ndindex(NG, S):
        lv = min(1, label[idx]) if obj else label[idx]
        if (ignore_label is not None and lv == ignore_label) or keep[idx] == 0:
            cdiff[idx[0], :, idx[1]] = 0
            continue
        conf_loss -= np.log(max(prob[idx[0], lv, idx[1]], FLT_MIN)) * wmap[idx]
        cdiff[idx[0], lv, idx[1]] -= 1
        cc += 1
    cdiff *= wmap[:, None, :]
    # EncodeGroupBBoxes
    enc = np.zeros((NG, 4, S))
    for gi in range(NG):
        k = gi % G
        for s in range(S):
            if label[gi, s] > 0:
                h, w = s // W, s % W
                fw_, fh_ = p["field_w"][k], p["field_h"][k]
                t = [(gbox[gi, 0, s] - (w + 0.5) * p["stride"]) / fw_, (gbox[gi, 1, s] - (h + 0.5) * p["stride"]) / fh_,
                     np.log(max(gbox[gi, 2, s], 2) / fw_), np.log(max(gbox[gi, 3, s], 2) / fh_)]
                enc[gi, :, s] = [(t[j] - mean[j]) / std[j] for j in range(4)]
    pred = bbox.reshape(NG, 4, S).copy()
    if p.get("bounds") is not None:
        lo_xy, hi_xy, lo_wh, hi_wh = p["bounds"]
        pred[:, :2] = np.clip(pred[:, :2], lo_xy, hi_xy)
        pred[:, 2:] = np.clip(pred[:, 2:], lo_wh, hi_wh)
    bloss, bc = 0.0, 0
    bdiff = np.zeros((NG, 4, S))
    for idx in np.ndindex(NG, S):
        lv = label[idx]
        if (ignore_label is not None and lv == ignore_label) or lv == 0 or keep[idx] == 0:
            continue
        for k in range(4):
            d = pred[idx[0], k, idx[1]] - enc[idx[0], k, idx[1]]
            if p["bbox_loss_type"] == "Euclidean_L2":
                bloss += 0.5 * d * d
                bdiff[idx[0], k, idx[1]] = d
            elif d <= -1 or d >= 1:
                bloss += abs(d) - 0.5
                bdiff[idx[0], k, idx[1]] = np.sign(d)
            else:
                bloss += 0.5 * d * d
                bdiff[idx[0], k, idx[1]] = d
            bc += 1
    conf_loss = conf_loss / cc if cc else 0.0
    if bc:
        bloss /= bc
        bdiff /= bc
    lam = float(f32(p["lambda"]))
    if cc:
        cdiff /= cc
    return (np.array([conf_loss + lam * bloss, lam * bloss]), cdiff.reshape(conf.shape),
            (lam * bdiff).reshape(bbox.shape), keep)


def group_accuracy(conf, bbox, gt, p, mean, std, ignore_label=None):
    """DetectionGroupAccuracyLayer::Forward_cpu: (accuracy, foreground accuracy, mean IoU)."""
    G, C = len(p["field_w"]), p["cls_num"]
    NG, _, H, W = conf.shape
    S = H * W
    conf = conf.reshape(NG, C, S)
    label = gt[:, 0].reshape(NG, S).astype(np.int64)
    ov = gt[:, 5].reshape(NG, S)
    acc = fore = 0.0
    ac = fc = 0
    for i in range(NG):
        for j in range(S):
            lv = min(1, label[i, j]) if p["objectness"] else label[i, j]
            if ignore_label is not None and lv == ignore_label:
                continue
            if lv == 0 and ov[i, j] >= f32(p["bg_threshold"]):
                continue
            fc += lv != 0
            ac += 1
            mx, mid = -np.finfo(np.float32).max, -1
            for k in range(C):
                if conf[i, k, j] > mx:
                    mx, mid = conf[i, k, j], k
            if mid == lv:
                acc += 1
                fore += lv != 0
    acc = acc / ac if ac else -1.0
    fore = fore / fc if fc else -1.0
    whr, xyr = f32(p["field_whr"]), f32(p["field_xyr"])
    lo_wh, hi_wh, lo_xy, hi_xy = np.log(1 / whr), np.log(whr), -1 / xyr, 1 / xyr
    box = bbox.reshape(NG, 4, H, W)
    gb = gt[:, 1:5].reshape(NG, 4, H, W)
    iou, icount = 0.0, 0
    for i in range(NG):
        k = i % G
        for h in range(H):
            for w in range(W):
                lv = label[i, h * W + w]
                if (ignore_label is not None and lv == ignore_label) or lv == 0:
                    continue
                t = [box[i, c, h, w] * std[c] + mean[c] for c in range(4)]
                tx, ty = min(max(lo_xy, t[0]), hi_xy), min(max(lo_xy, t[1]), hi_xy)
                tw, th = min(max(lo_wh, t[2]), hi_wh), min(max(lo_wh, t[3]), hi_wh)
                tx = tx * p["field_w"][k] + (w + 0.5) * p["stride"]
                ty = ty * p["field_h"][k] + (h + 0.5) * p["stride"]
                tw, th = p["field_w"][k] * np.exp(tw), p["field_h"][k] * np.exp(th)
                tx, ty = tx - tw / 2, ty - th / 2
                gx, gy, gw, gh = gb[i, :, h, w]
                iou += float(jaccard_xywh(tx, ty, tw, th, gx - gw / 2, gy - gh / 2, gw, gh))
                icount += 1
    return acc, fore, (iou / icount if icount else -1.0)


# -- DetectionEvaluate (the fork's) ---------------------------------------------------------------------
def detection_evaluate(det, gt, sizes, name_sizes, count, num_classes, thr, use_difficult):
    """DetectionEvaluateLayer::Forward_cpu: (rows, count after)."""
    dets, gts = {}, {}
    for r in det:
        if int(r[0]) == -1:
            continue
        dets.setdefault(int(r[0]), {}).setdefault(int(r[5]), []).append([*r[1:5], r[6]])
    for r in gt:
        if int(r[0]) == -1:
            continue
        gts.setdefault(int(r[0]), {}).setdefault(int(r[5]), []).append([*r[1:5], r[7]])
    num_pos = {}
    for lb in gts.values():
        for lab, boxes in lb.items():
            num_pos[lab] = num_pos.get(lab, 0) + sum(1 for b in boxes if use_difficult or not b[4])
    rows = [[-1, c, num_pos.get(c, 0), -1, -1] for c in range(1, num_classes)]
    for img in sorted(dets):
        for lab in sorted(dets[img]):
            if lab == -1:
                continue
            boxes = dets[img][lab]
            if img not in gts or lab not in gts[img]:
                rows += [[img, lab, b[4], 0, 1] for b in boxes]
                continue
            h, w = name_sizes[count]
            hr, wr = f32(h) / f32(sizes[img, 0]), f32(w) / f32(sizes[img, 1])
            g = [[f32(b[0] * wr), f32(b[1] * hr), f32(b[2] * wr), f32(b[3] * hr), b[4]] for b in gts[img][lab]]
            d = [[f32(b[0] * wr), f32(b[1] * hr), f32(b[2] * wr), f32(b[3] * hr), b[4]] for b in boxes]
            d = sorted(d, key=lambda b: -b[4])
            visited = [False] * len(g)
            for b in d:
                best, jmax = -1.0, -1
                for j, gb in enumerate(g):
                    o = jaccard_bbox(b[:4], gb[:4])
                    if o > best:
                        best, jmax = o, j
                tp = fp = 0
                if best >= f32(thr):
                    if use_difficult or not g[jmax][4]:
                        tp, fp = (0, 1) if visited[jmax] else (1, 0)
                        visited[jmax] = True
                else:
                    fp = 1
                rows.append([img, lab, b[4], tp, fp])
        count = (count + 1) % len(name_sizes)
    return np.array(rows, np.float32), count


# -- DetectionData / EvalData load_batch ----------------------------------------------------------------
class BBox:
    def __init__(self, x1, y1, x2, y2, label=-1, ignore=0, difficult=0):
        self.xmin, self.ymin, self.xmax, self.ymax = f32(x1), f32(y1), f32(x2), f32(y2)
        self.label, self.ignore, self.difficult = label, bool(ignore), bool(difficult)

    def affine(self, ws, hs, wsh, hsh):
        ws, hs = f32(ws), f32(hs)
        self.xmin, self.xmax = f32(f32(ws * self.xmin) + f32(wsh)), f32(f32(ws * self.xmax) + f32(wsh))
        self.ymin, self.ymax = f32(f32(hs * self.ymin) + f32(hsh)), f32(f32(hs * self.ymax) + f32(hsh))

    def flip(self, width):
        self.xmin, self.xmax = f32(f32(width) - self.xmax), f32(f32(width) - self.xmin)

    def xyxy(self):
        return [self.xmin, self.ymin, self.xmax, self.ymax]


def read_window_file(path, root):
    """DataLayerSetUp's reading loop: [(path, windows, roni)]."""
    tok = open(path).read().split()
    out, i = [], 0
    while i < len(tok):
        assert tok[i] == "#"
        name = root + tok[i + 2]
        i += 6
        n = int(tok[i]); i += 1
        wins = []
        for _ in range(n):
            v = [int(t) for t in tok[i:i + 7]]; i += 7
            wins.append(BBox(*v[3:], label=v[0], ignore=v[1], difficult=v[2]))
        r = int(tok[i]); i += 1
        ronis = []
        for _ in range(r):
            v = [int(t) for t in tok[i:i + 4]]; i += 4
            ronis.append(BBox(*v))
        out.append((name, wins, ronis))
    return out


def detection_load_batch(db, images, cfg, g, template, distort_fn, imread):
    """DetectionDataLayer::load_batch for the listed ``images`` (indices into ``db``); ``cfg`` a dict of the
    layer's fields (keys as :class:`neocaffe.data.cascade_batches.DetectionConfig`), ``g`` the batch's
    generator, ``template`` the (height, width) the batch starts from."""
    import cv2

    th, tw = template
    B, strides = cfg["batch_size"], cfg["strides"]
    need_reshape = cfg["crop_wh"] is None and cfg["resize_wh"] is None
    multiscale_flag = cfg["scale_range"] is not None or cfg["ratio_range"] is not None
    ratio = f32(1)
    if cfg["template_ratios"]:
        ratio = f32(cfg["template_ratios"][int(g.integers(0, len(cfg["template_ratios"])))])
    data, labels, gt_boxes = None, None, []
    for item in range(B):
        name, wins0, ronis0 = db[images[item]]
        wins = [BBox(*b.xyxy(), b.label, b.ignore, b.difficult) for b in wins0]
        ronis = [BBox(*b.xyxy()) for b in ronis0]
        img = imread(name)
        if cfg["distort"] is not None:
            img = distort_fn(img, cfg["distort"], g)
        ih, iw = img.shape[:2]
        if cfg["mirror"] and g.integers(0, 2) % 2:
            img = img[:, ::-1]
            for b in wins + ronis:
                b.flip(iw)
        if cfg["resize_wh"] is not None:
            rw, rh = cfg["resize_wh"]
        elif cfg["resize_ratio"] is not None:
            rw, rh = c_round(f32(iw * f32(cfg["resize_ratio"]))), c_round(f32(ih * f32(cfg["resize_ratio"])))
        elif cfg["short_long"] is not None:
            short = c_round(f32(f32(cfg["short_long"][0] * ratio) / f32(32))) * 32
            sc = f32(f32(short) / f32(min(iw, ih)))
            rw, rh = c_round(f32(iw * sc)), c_round(f32(ih * sc))
        else:
            rw, rh = iw, ih
        if rw != iw or rh != ih:
            wf, hf = f32(f32(rw) / f32(iw)), f32(f32(rh) / f32(ih))
            img = cv2.resize(np.ascontiguousarray(img), (rw, rh), interpolation=cv2.INTER_LINEAR)
            for b in wins + ronis:
                b.affine(wf, hf, 0, 0)
        ih, iw = img.shape[:2]
        if item == 0 and need_reshape:
            if cfg["crop_short_long"] is not None:
                s, lo = cfg["crop_short_long"]
                tw, th = (s, lo) if ih >= iw else (lo, s)
            elif cfg["short_long"] is not None:
                s, lo = cfg["short_long"]
                tw, th = (s, lo) if ih >= iw else (lo, s)
                tw, th = c_round(f32(f32(tw * ratio) / f32(32))) * 32, c_round(f32(f32(th * ratio) / f32(32))) * 32
            else:
                tw, th = iw, ih
        sx = sy = dx = dy = 0
        cw, ch = tw, th
        wrf = hrf = f32(1)
        sel = -1
        if wins:
            sel = int(g.integers(0, len(wins)))
            scx, scy = f32(float(f32(wins[sel].xmin + wins[sel].xmax)) / 2.0), f32(float(f32(wins[sel].ymin + wins[sel].ymax)) / 2.0)
        else:
            scx = f32(iw / 2.0) if tw > iw else f32(int(g.integers(0, iw - tw + 1)) + tw / 2.0)
            scy = f32(ih / 2.0) if th > ih else f32(int(g.integers(0, ih - th + 1)) + th / 2.0)
        action = g.random() < cfg["multiscale_prob"]
        if action and multiscale_flag:
            if cfg["ratio_range"] is not None:
                lo, hi = f32(np.log2(f32(cfg["ratio_range"][0]))), f32(np.log2(f32(cfg["ratio_range"][1])))
            elif wins:
                ow, oh = f32(wins[sel].xmax - wins[sel].xmin + 1), f32(wins[sel].ymax - wins[sel].ymin + 1)
                obj = f32(np.sqrt(f32(ow * oh)))
                lo = f32(np.log2(f32(f32(cfg["scale_range"][0]) / obj)))
                hi = f32(np.log2(f32(f32(cfg["scale_range"][1]) / obj)))
            else:
                lo = hi = f32(1)
            r = f32(2.0 ** float(f32(g.uniform(lo, hi))))
            wrf = hrf = r
            if cfg["whaspect"] is not None:
                a_lo, a_hi = f32(np.log2(f32(cfg["whaspect"][0]))), f32(np.log2(f32(cfg["whaspect"][1])))
                a = f32(2.0 ** float(f32(g.uniform(a_lo, a_hi))))
                wrf, hrf = f32(wrf * f32(np.sqrt(a))), f32(hrf / f32(np.sqrt(a)))
        rsh, rsw = c_round(f32(ih * hrf)), c_round(f32(iw * wrf))
        if wrf != 1 or hrf != 1:
            if wrf > 1.5 or hrf > 1.5:
                crop_w, crop_h = min(c_round(1.2 * iw / float(wrf)), iw), min(c_round(1.2 * ih / float(hrf)), ih)
                x1, y1 = max(c_round(float(scx) - crop_w * 0.5), 0), max(c_round(float(scy) - crop_h * 0.5), 0)
                x1 -= max(x1 + crop_w - iw, 0)
                y1 -= max(y1 + crop_h - ih, 0)
                img = img[y1:y1 + crop_h, x1:x1 + crop_w]
                scx, scy = f32(scx - f32(x1)), f32(scy - f32(y1))
                for b in wins + ronis:
                    b.affine(1, 1, -x1, -y1)
                rsw, rsh = c_round(f32(img.shape[1] * wrf)), c_round(f32(img.shape[0] * hrf))
            img = cv2.resize(np.ascontiguousarray(img), (rsw, rsh), interpolation=cv2.INTER_LINEAR)
            ih, iw = img.shape[:2]
        for b in wins + ronis:
            b.affine(wrf, hrf, 0, 0)
        nx, ny = int(g.integers(0, 20)) - 10, int(g.integers(0, 20)) - 10
        if rsw < tw:
            dx, cw = 0, rsw
            sx = min(max(c_round((tw - rsw) / 2.0) + nx, 0), tw - rsw)
        elif rsw > tw:
            sx, cw = 0, tw
            cx = c_round(f32(scx * wrf)) + nx
            dx = min(max(cx - c_round(tw / 2.0), 0), rsw - tw)
        if rsh < th:
            dy, ch = 0, rsh
            sy = min(max(c_round((th - rsh) / 2.0) + ny, 0), th - rsh)
        elif rsh > th:
            sy, ch = 0, th
            cy = c_round(f32(scy * hrf)) + ny
            dy = min(max(cy - c_round(th / 2.0), 0), rsh - th)
        for b in wins + ronis:
            b.affine(1, 1, sx - dx, sy - dy)
        if item == 0:
            data = np.zeros((B, 3, th, tw), np.float32)
            labels = [np.zeros((B, 6, c_round(f32(th) / f32(s)), c_round(f32(tw) / f32(s))), np.float32) for s in strides]
        mean = cfg["mean"]
        for h in range(sy, sy + ch):
            for c in range(3):
                row = img[h - sy + dy, dx:dx + cw, c].astype(np.float32)
                data[item, c, h, sx:sx + cw] = ((row - f32(mean[c])) if mean else row) * f32(cfg["scale"])
        counts, blobid, best = [0] * len(wins), [0] * len(wins), [f32(0)] * len(wins)
        for b in wins:
            bx, by = f32((b.xmin + b.xmax) / f32(2)), f32((b.ymin + b.ymax) / f32(2))
            if bx < 0 or bx >= tw or by < 0 or by >= th:
                b.ignore = True
            if f32(b.xmax - b.xmin + 1) < f32(cfg["min_gt_width"]) or f32(b.ymax - b.ymin + 1) < f32(cfg["min_gt_height"]):
                b.ignore = True
            gt_boxes.append([item, b.xmin, b.ymin, b.xmax, b.ymax, b.label, int(b.ignore), int(b.difficult)])
        for nn, s in enumerate(strides):
            lh, lw = c_round(f32(th) / f32(s)), c_round(f32(tw) / f32(s))
            ox, oy = c_round(f32(sx) / f32(s)), c_round(f32(sy) / f32(s))
            lcw, lch = c_round(f32(cw) / f32(s)), c_round(f32(ch) / f32(s))
            rw_, rh_ = f32(f32(cfg["field_ws"][nn]) / f32(2)), f32(f32(cfg["field_hs"][nn]) / f32(2))
            lab = labels[nn][item]
            for h in range(lh):
                for w in range(lw):
                    if w < ox or w >= ox + lcw or h < oy or h >= oy + lch:
                        lab[5, h, w] = 1
                        continue
                    xx1, xx2 = f32((w + 0.5) * s - float(rw_)), f32((w + 0.5) * s + float(rw_))
                    yy1, yy2 = f32((h + 0.5) * s - float(rh_)), f32((h + 0.5) * s + float(rh_))
                    anchor = [xx1, yy1, xx2, yy2]
                    if cfg["anchor_margin"] is not None:
                        wm, hm = f32(f32(cfg["anchor_margin"]) * rw_), f32(f32(cfg["anchor_margin"]) * rh_)
                        if xx1 < sx - wm or xx2 >= sx + cw + wm or yy1 < sy - hm or yy2 >= sy + ch + hm:
                            lab[5, h, w] = 1
                            continue
                    elif cfg["anchor_iou"] is not None:
                        if jaccard_bbox(anchor, [sx, sy, sx + cw, sy + ch], "IOFU") < f32(cfg["anchor_iou"]):
                            lab[5, h, w] = 1
                            continue
                    ign = f32(0)
                    for r in ronis:
                        ign = f32(ign + jaccard_bbox(anchor, r.xyxy(), "IOFU"))
                    m, mx = -1, f32(0)
                    for k, b in enumerate(wins):
                        o = jaccard_bbox(b.xyxy(), anchor)
                        if o > mx:
                            m, mx = k, o
                        if o > best[k]:
                            best[k], blobid[k] = o, nn
                    if mx > f32(cfg["fg_threshold"]):
                        b = wins[m]
                        lab[:, h, w] = [0 if b.ignore else b.label, f32((b.xmin + b.xmax) / f32(2)),
                                        f32((b.ymin + b.ymax) / f32(2)), f32(b.xmax - b.xmin + 1),
                                        f32(b.ymax - b.ymin + 1), mx]
                        counts[m] += 1
                    elif ign >= f32(cfg["ignore_fg_threshold"]):
                        lab[5, h, w] = 1
                    else:
                        lab[5, h, w] = mx
        if strides:
            for k, b in enumerate(wins):
                if b.ignore or counts[k] > 0 or best[k] < f32(cfg["pickup_iou_thr"]):
                    continue
                nn, s = blobid[k], strides[blobid[k]]
                lab = labels[nn][item]
                bx, by = f32((b.xmin + b.xmax) / f32(2)), f32((b.ymin + b.ymax) / f32(2))
                hc = min(max(math.floor(by / f32(s)), 0), lab.shape[1] - 1)
                wc = min(max(math.floor(bx / f32(s)), 0), lab.shape[2] - 1)
                if lab[0, hc, wc] > 0:
                    continue
                lab[:, hc, wc] = [b.label, bx, by, f32(b.xmax - b.xmin + 1), f32(b.ymax - b.ymin + 1), best[k]]
    gt = np.array(gt_boxes, np.float32).reshape(-1, 8) if gt_boxes else np.full((1, 8), -1, np.float32)
    return data, labels, gt


def eval_load_batch(db, images, batch_size, scale, mean, resize, short_long, imread):
    """EvalDataLayer::load_batch."""
    import cv2

    data, rows, sizes = None, [], np.zeros((batch_size, 2), np.float32)
    for item in range(batch_size):
        name, wins0, _ = db[images[item]]
        wins = [BBox(*b.xyxy(), b.label, b.ignore, b.difficult) for b in wins0]
        img = imread(name)
        ih, iw = img.shape[:2]
        rw, rh = iw, ih
        if resize is not None:
            rw, rh = resize
        elif short_long is not None:
            sc = f32(f32(short_long[0]) / f32(min(iw, ih)))
            rw, rh = min(c_round(f32(iw * sc)), short_long[1]), min(c_round(f32(ih * sc)), short_long[1])
        rw, rh = c_round(rw / 32.0) * 32, c_round(rh / 32.0) * 32
        if rw != iw or rh != ih:
            img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
            for b in wins:
                b.affine(f32(rw) / f32(iw), f32(rh) / f32(ih), 0, 0)
        if item == 0:
            data = np.zeros((batch_size, 3, rh, rw), np.float32)
        sizes[item] = (rh, rw)
        for h in range(rh):
            for w in range(rw):
                for c in range(3):
                    px = f32(img[h, w, c])
                    data[item, c, h, w] = f32(f32(px - f32(mean[c])) * f32(scale)) if mean else f32(px * f32(scale))
        rows += [[item, b.xmin, b.ymin, b.xmax, b.ymax, b.label, int(b.ignore), int(b.difficult)] for b in wins]
    gt = np.array(rows, np.float32).reshape(-1, 8) if rows else np.full((1, 8), -1, np.float32)
    return data, gt, sizes
