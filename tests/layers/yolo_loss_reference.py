"""NumPy references for MobileNet-YOLO's training losses, written from the fork's loops (eric612/MobileNet-YOLO:
yolov3_layer.cpp Forward_cpu/Backward_cpu with delta_region_box, dx_box_iou, delta_region_class_v3;
region_loss_layer.cpp; bbox_util.cpp's box_iou/giou/diou/ciou), one scalar at a time on flat arrays,
float32: ``yolov3_reference`` and ``region_reference`` give the loss and the bottom diff."""
from __future__ import annotations

import math

import numpy as np

F = np.float32
IOU, GIOU, MSE, DIOU, CIOU = 0, 1, 2, 3, 4


# -- bbox_util.cpp, one box at a time ------------------------------------------------------------
def _sig(x):
    return F(1.0 / (1.0 + float(np.exp(F(-x)))))


def _overlap(x1, w1, x2, w2):
    l1, l2, r1, r2 = x1 - w1 / F(2), x2 - w2 / F(2), x1 + w1 / F(2), x2 + w2 / F(2)
    return (r1 if r1 < r2 else r2) - (l1 if l1 > l2 else l2)


def _inter(a, b):
    w, h = _overlap(a[0], a[2], b[0], b[2]), _overlap(a[1], a[3], b[1], b[3])
    return F(0) if (w < 0 or h < 0) else w * h


def _iou(a, b):
    return _inter(a, b) / (a[2] * a[3] + b[2] * b[3] - _inter(a, b))


def _box_c(a, b):
    top, bot = np.fmin(a[1] - a[3] / F(2), b[1] - b[3] / F(2)), np.fmax(a[1] + a[3] / F(2), b[1] + b[3] / F(2))
    left, right = np.fmin(a[0] - a[2] / F(2), b[0] - b[2] / F(2)), np.fmax(a[0] + a[2] / F(2), b[0] + b[2] / F(2))
    return right - left, bot - top


def _metric(a, b, kind):
    """box_iou(a, b, type)."""
    i = _iou(a, b)
    if kind in (IOU, MSE):
        return i
    w, h = _box_c(a, b)
    if kind == GIOU:
        c = w * h
        return i if c == 0 else i - (c - (a[2] * a[3] + b[2] * b[3] - _inter(a, b))) / c
    c = w * w + h * h
    if c == 0:
        return i
    d = (a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1])
    if kind == DIOU:
        return i - F(math.pow(float(d / c), 0.6))
    at = float(np.arctan(b[2] / b[3]) - np.arctan(a[2] / a[3]))
    ar_loss = F(4 / (math.pi * math.pi) * at * at)
    alpha = F(ar_loss / (float(F(1) - i + ar_loss) + 0.000001))
    return i - (d / c + alpha * ar_loss)


def _dx_box_iou(p, t, kind):
    z = F(0)
    p_top, p_bot, p_left, p_right = p[1] - p[3] / F(2), p[1] + p[3] / F(2), p[0] - p[2] / F(2), p[0] + p[2] / F(2)
    pt, pb, pl, pr = np.fmin(p_top, p_bot), np.fmax(p_top, p_bot), np.fmin(p_left, p_right), np.fmax(p_left, p_right)
    tt, tb, tl, tr = t[1] - t[3] / F(2), t[1] + t[3] / F(2), t[0] - t[2] / F(2), t[0] + t[2] / F(2)
    X, Xhat = (pb - pt) * (pr - pl), (tb - tt) * (tr - tl)
    Ih, Iw = np.fmin(pb, tb) - np.fmax(pt, tt), np.fmin(pr, tr) - np.fmax(pl, tl)
    I = Iw * Ih  # noqa: E741
    U = X + Xhat - I
    S = (p[0] - t[0]) * (p[0] - t[0]) + (p[1] - t[1]) * (p[1] - t[1])
    gCw, gCh = np.fmax(pr, tr) - np.fmin(pl, tl), np.fmax(pb, tb) - np.fmin(pt, tt)
    gC = gCw * gCh
    dX = [-(pr - pl), pr - pl, -(pb - pt), pb - pt]                      # t, b, l, r
    dI = [-Iw if pt > tt else z, Iw if pb < tb else z, -Ih if pl > tl else z, Ih if pr < tr else z]
    dU = [dX[k] - dI[k] for k in range(4)]
    dC = [-gCw if pt < tt else z, gCw if pb > tb else z, -gCh if pl < tl else z, gCh if pr > tr else z]
    g = [((U * dI[k]) - (I * dU[k])) / (U * U) if U > 0 else z for k in range(4)]
    g[0] = g[0] if p_top < p_bot else g[1]
    g[1] = g[1] if p_top < p_bot else g[0]
    g[2] = g[2] if p_left < p_right else g[3]
    g[3] = g[3] if p_left < p_right else g[2]
    if kind == GIOU:
        if gC > 0:
            g = [g[k] + ((gC * dU[k]) - (U * dC[k])) / (gC * gC) for k in range(4)]
        if Iw <= 0 or Ih <= 0:
            g = [((gC * dU[k]) - (U * dC[k])) / (gC * gC) for k in range(4)]
    dx, dy, dw, dh = g[2] + g[3], g[0] + g[1], g[3] - g[2], g[1] - g[0]
    if kind in (DIOU, CIOU):
        Cw, Ch = _box_c(p, t)
        C = Cw * Cw + Ch * Ch
        dCw_dx = (F(1) if pr > tr else z) - (F(1) if pl < tl else z)
        dCw_dw = (F(0.5) if pr > tr else z) - (F(-0.5) if pl < tl else z)
        dCh_dy = (F(1) if pb > tb else z) - (F(1) if pt < tt else z)
        dCh_dh = (F(0.5) if pb > tb else z) - (F(-0.5) if pt < tt else z)
        ex = (2 * (t[0] - p[0]) * C - (2 * Cw * dCw_dx + 2 * Ch * z) * S) / (C * C)
        ey = (2 * (t[1] - p[1]) * C - (2 * Cw * z + 2 * Ch * dCh_dy) * S) / (C * C)
        ew = (2 * Cw * dCw_dw + 2 * Ch * z) * S / (C * C)
        eh = (2 * Cw * z + 2 * Ch * dCh_dh) * S / (C * C)
        if kind == CIOU:
            at = float(np.arctan(t[2] / t[3]) - np.arctan(p[2] / p[3]))
            ar_loss = F(4 / (math.pi * math.pi) * at * at)
            alpha = F(ar_loss / (float(F(1) - I / U + ar_loss) + 0.000001))
            ew, eh = ew + alpha * F(8 / (math.pi * math.pi) * at * float(p[3])), eh + alpha * F(-8 / (math.pi * math.pi) * at * float(p[2]))
        if C > 0:
            dx, dy, dw, dh = dx + ex, dy + ey, dw + ew, dh + eh
        if Iw <= 0 or Ih <= 0:
            dx, dy, dw, dh = ex, ey, ew, eh
    return dx, dy, dw, dh


# -- yolov3_layer.cpp ------------------------------------------------------------------------------
def yolov3_reference(x, label, o):
    """(loss, bottom diff for top diff 1) of the fork's Yolov3 layer, options ``o`` (a dict)."""
    N, C, H, W = x.shape
    inp, lab = x.astype(F).reshape(-1), label.astype(F).reshape(-1)
    L, stride, count1 = 5 + o["classes"], H * W, C * H * W
    num, mask, biases, kind, ascale = o["num"], o["mask"], [F(b) for b in o["biases"]], o["iou_loss"], o["anchors_scale"]
    swap, diff = np.zeros_like(inp), np.zeros_like(inp)
    for q in range(inp.size):
        swap[q] = inp[q] if (q % count1) // stride % L in (2, 3) else _sig(inp[q])

    def region_box(xs, n, index, i, j):
        return [(i + xs[index]) / F(W), (j + xs[index + stride]) / F(H),
                np.exp(xs[index + 2 * stride]) * biases[2 * n] / F(W * ascale),
                np.exp(xs[index + 3 * stride]) * biases[2 * n + 1] / F(H * ascale)]

    def delta_box(truth, n, index, i, j, scale):
        pred = region_box(swap, n, index, i, j)
        if kind == MSE:
            tx, ty = truth[0] * F(W) - F(i), truth[1] * F(H) - F(j)
            tw, th = np.log(truth[2] * F(W * ascale) / biases[2 * n]), np.log(truth[3] * F(H * ascale) / biases[2 * n + 1])
            for k, t in enumerate((tx, ty, tw, th)):
                diff[index + k * stride] = F(-1) * scale * (t - swap[index + k * stride])
            return _iou(pred, truth)
        value = {GIOU: _metric(pred, truth, GIOU), CIOU: _metric(pred, truth, CIOU)}.get(kind, _metric(pred, truth, DIOU))
        pred[2] = F(1) if pred[2] == 0 else pred[2]
        pred[3] = F(1) if pred[3] == 0 else pred[3]
        d = list(_dx_box_iou(pred, truth, kind))
        d[2], d[3] = d[2] * np.exp(swap[index + 2 * stride]), d[3] * np.exp(swap[index + 3 * stride])
        for k in range(4):
            v = d[k] * F(o["iou_normalizer"])
            v = F(0) if not np.isfinite(v) else v
            v = min(max(v, -F(o["max_delta"])), F(o["max_delta"]))
            if not o["accumulate"]:
                diff[index + k * stride] = 0
            diff[index + k * stride] += -v
        return value

    def smooth(y):
        return F(float(y * (F(1) - F(o["eps"]))) + 0.5 * float(F(o["eps"]))) if o["eps"] else y

    def delta_class(index, c):
        scale = F(o["class_scale"])
        if diff[index + stride * c]:
            r = smooth(F(1)) - swap[index + stride * c]
            if np.isfinite(r):
                diff[index + stride * c] = F(-1) * scale * r
            return
        if o["focal"]:
            pt = swap[index + stride * c] + F(1e-15)
            grad = -(F(1) - pt) * (F(2) * pt * np.log(pt) + pt - F(1))
            for n in range(o["classes"]):
                diff[index + stride * n] = F(-1) * scale * (F(n == c) - swap[index + n * stride])
                diff[index + stride * n] *= F(0.5) * grad
            return
        for n in range(o["classes"]):
            r = smooth(F(n == c)) - swap[index + stride * n]
            if np.isfinite(r):
                diff[index + stride * n] = F(-1) * scale * r

    def int_index(val):
        return next((k for k in range(num) if mask[k] == val), -1)

    avg_iou_loss, count = F(0), 0
    for b in range(N):
        for s in range(stride):
            for n in range(num):
                index = n * L * stride + s + b * count1
                pred = region_box(swap, mask[n], index, s % W, s // W)
                best = F(0)
                for t in range(300):
                    row = lab[b * 1500 + t * 5: b * 1500 + t * 5 + 5]
                    if not row[1]:
                        break
                    v = _metric(pred, list(row[1:]), kind)
                    best = v if v > best else best
                diff[index + 4 * stride] = F(-1) * (F(0) - swap[index + 4 * stride])
                if best > F(o["thresh"]):
                    diff[index + 4 * stride] = 0
        for t in range(300):
            row = lab[b * 1500 + t * 5: b * 1500 + t * 5 + 5]
            c, truth = int(row[0]), list(row[1:])
            if not truth[2]:
                break
            i, j = int(truth[0] * F(W)), int(truth[1] * F(H))
            shift = [F(0), F(0), truth[2], truth[3]]
            best_n, best = -1, F(0)
            for n in range(len(biases) // 2):
                v = _metric([F(0), F(0), biases[2 * n] / F(W * ascale), biases[2 * n + 1] / F(H * ascale)], shift, kind)
                if v > best:
                    best_n, best = n, v
            slots = []
            if int_index(best_n) >= 0:
                best_n = int_index(best_n)
                slots.append(best_n)
            for n in range(len(biases) // 2):
                v = _metric([F(0), F(0), biases[2 * n] / F(W * ascale), biases[2 * n + 1] / F(H * ascale)], shift, kind)
                if int_index(n) >= 0 and n != best_n and F(o["iou_thresh"]) < 1 and v > F(o["iou_thresh"]):
                    slots.append(int_index(n))
            for slot in slots:
                index = slot * L * stride + j * W + i + b * count1
                v = delta_box(truth, mask[slot], index, i, j, F(o["coord_scale"]) * (F(2) - truth[2] * truth[3]))
                avg_iou_loss += F(1) - v
                s4 = swap[index + 4 * stride]
                diff[index + 4 * stride] = F(-1) * (F(1) - s4) * (F(o["object_scale"]) if o["logic"] else F(1))
                delta_class(index + 5 * stride, c)
                count += 1
    if kind == MSE:
        loss = float((diff.astype(np.float64) ** 2).sum())
    else:
        loss = sum(float(diff[q]) ** 2 for q in range(diff.size) if (q % count1) // stride % L >= 4)
        for q in range(diff.size):
            if (q % count1) // stride % L < 4:
                swap[q] = inp[q]
        if count:
            loss += float(F(o["iou_normalizer"]) * avg_iou_loss / F(count))
    if o["logic"]:
        for q in range(diff.size):
            if (q % count1) // stride % L not in (2, 3):
                diff[q] = diff[q] * ((F(1) - swap[q]) * swap[q])
    return loss / N, diff.reshape(x.shape) / N


# -- region_loss_layer.cpp -------------------------------------------------------------------------
def region_reference(x, label, o):
    N, C, H, W = x.shape
    side, stride, count1, L, num = W, W * W, C * H * W, 5 + o["classes"], o["num"]
    inp, lab, biases = x.astype(F).reshape(-1), label.astype(F).reshape(-1), [F(v) for v in o["biases"]]
    swap, diff = inp.copy(), np.zeros_like(inp)

    def region_box(index, n, i, j):
        return [(i + _sig(swap[index])) / F(side), (j + _sig(swap[index + stride])) / F(side),
                np.exp(swap[index + 2 * stride]) * biases[2 * n] / F(side),
                np.exp(swap[index + 3 * stride]) * biases[2 * n + 1] / F(side)]

    for b in range(N):
        for s in range(stride):
            for n in range(num):
                index = n * L * stride + s + b * count1
                swap[index + 4 * stride] = _sig(inp[index + 4 * stride])
                cls = [index + (5 + k) * stride for k in range(o["classes"])]
                e = [F(np.exp(swap[q] - max(swap[q2] for q2 in cls))) for q in cls]
                total = F(0)
                for v in e:
                    total += v
                for q, v in zip(cls, e):
                    swap[q] = v / total
                pred, best = region_box(index, n, s % side, s // side), F(0)
                for t in range(300):
                    row = lab[b * 1500 + t * 5: b * 1500 + t * 5 + 5]
                    if not row[1]:
                        break
                    v = _iou(pred, list(row[1:]))
                    best = v if v > best else best
                sw = swap[index + 4 * stride]
                diff[index + 4 * stride] = F(-1) * F(o["noobject_scale"]) * (F(0) - sw) * ((F(1) - sw) * sw)
                if best > F(o["thresh"]):
                    diff[index + 4 * stride] = 0
        for t in range(300):
            row = lab[b * 1500 + t * 5: b * 1500 + t * 5 + 5]
            c, truth = int(row[0]), list(row[1:])
            if not truth[2]:
                break
            i, j = int(truth[0] * F(side)), int(truth[1] * F(side))
            best, best_index, best_n = F(0), 0, 0
            for n in range(num):
                index2 = n * L * stride + j * side + i + b * count1
                pred = region_box(index2, n, i, j)
                if o["bias_match"]:
                    pred[2], pred[3] = biases[2 * n] / F(side), biases[2 * n + 1] / F(side)
                v = _iou([F(0), F(0), pred[2], pred[3]], [F(0), F(0), truth[2], truth[3]])
                if v > best:
                    best, best_index, best_n = v, index2, n
            scale = F(o["coord_scale"]) * (F(1) if o["rescore"] else (F(2) - truth[2] * truth[3]))
            pred = region_box(best_index, best_n, i, j)
            iou = _iou(pred, truth)
            tgt = [truth[0] * F(side) - F(i), truth[1] * F(side) - F(j),
                   np.log(truth[2] * F(side) / biases[2 * best_n]), np.log(truth[3] * F(side) / biases[2 * best_n + 1])]
            for k in range(2):
                sg = _sig(swap[best_index + k * stride])
                diff[best_index + k * stride] = F(-1) * scale * (tgt[k] - sg) * sg * (F(1) - sg)
            for k in range(2, 4):
                diff[best_index + k * stride] = F(-1) * scale * (tgt[k] - swap[best_index + k * stride])
            sw = swap[best_index + 4 * stride]
            goal = iou if o["rescore"] else F(1)
            diff[best_index + 4 * stride] = F(-1.0 * float(F(o["object_scale"])) * float(goal - sw) * float((F(1) - sw) * sw))
            for n in range(o["classes"]):
                q = best_index + (5 + n) * stride
                diff[q] = F(-1.0 * float(F(o["class_scale"])) * float(F(n == c) - swap[q]))
    return float((diff.astype(np.float64) ** 2).sum()) / N, diff.reshape(x.shape) / N
