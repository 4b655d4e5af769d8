"""Loop-by-loop NumPy ports of NVCaffe's DetectNetTransformation (``detectnet_transform_layer.cu``'s
kernels, one pixel at a time; the label code of ``detectnet_transform_layer.cpp``; and
``detectnet_coverage_rectangular.cpp``, one cell at a time), in float32 scalars where NVCaffe's
``Dtype`` is float and float64 where its literals promote. Written apart from the layer module."""
from __future__ import annotations

import math

import numpy as np

F = np.float32
EPS = F(np.finfo(np.float32).eps)


def c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


# -- OpenCV helpers ------------------------------------------------------------------------------
def rr_points(cx, cy, w, h, angle):
    rad = float(F(angle)) * math.pi / 180.0
    b = F(F(math.cos(rad)) * F(0.5))
    a = F(F(math.sin(rad)) * F(0.5))
    cx, cy, w, h = F(cx), F(cy), F(w), F(h)
    pts = [None] * 4
    pts[0] = (cx - a * h - b * w, cy + b * h - a * w)
    pts[1] = (cx + a * h - b * w, cy - b * h - a * w)
    pts[2] = (F(2) * cx - pts[0][0], F(2) * cy - pts[0][1])
    pts[3] = (F(2) * cx - pts[1][0], F(2) * cy - pts[1][1])
    return pts


def bounding(pts):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0 = math.floor(min(xs)), math.floor(min(ys))
    return x0, y0, math.ceil(max(xs)) - x0 + 1, math.ceil(max(ys)) - y0 + 1


def rotated_size(w, h, rot):
    _, _, bw, bh = bounding(rr_points(int(0.5 * w), int(0.5 * h), w, h, rot))
    return bw, bh


def affine(w, h, rot):
    cx, cy = F(w) * F(0.5), F(h) * F(0.5)
    src = rr_points(cx, cy, w, h, 0.0)
    bx, by, _, _ = bounding(rr_points(cx, cy, w, h, rot))
    dst = rr_points(cx - F(bx), cy - F(by), w, h, rot)
    a, b = np.zeros((6, 6)), np.zeros(6)
    for i in range(3):
        a[2 * i] = [src[i][0], src[i][1], 1, 0, 0, 0]
        a[2 * i + 1] = [0, 0, 0, src[i][0], src[i][1], 1]
        b[2 * i], b[2 * i + 1] = dst[i]
    return np.linalg.solve(a, b).reshape(2, 3).astype(F)


def rect_and(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    w = min(F(a[0] + a[2]), F(b[0] + b[2])) - x1
    h = min(F(a[1] + a[3]), F(b[1] + b[3])) - y1
    if w <= 0 or h <= 0:
        return (F(0), F(0), F(0), F(0))
    return (F(x1), F(y1), F(w), F(h))


# -- get_augmentations -----------------------------------------------------------------------------
def augment(a, width, height, ix, iy, train, draws):
    """-> dict(hue, sat, flip, scale, rot, crop); ``draws``: an iterator of floats in [0, 1]."""
    if not train:
        return dict(hue=F(0), sat=F(1), flip=False, scale=(ix, iy), rot=F(0), crop=(0, 0))
    nxt = lambda: F(next(draws))  # noqa: E731
    hue, sat, flip, scale, rot = F(0), F(1), False, (width, height), F(0)
    if nxt() <= F(a["hue_rotation_prob"]):
        hue = (nxt() - F(0.5)) * F(2) * F(a["hue_rotation"])
        hue = max(min(hue, F(180)), F(-180))
    if nxt() <= F(a["desaturation_prob"]):
        sat = F(1.0 - float(nxt() * F(a["desaturation_max"])))
    flip = bool(nxt() <= F(a["flip_prob"]))
    if nxt() <= F(a["scale_prob"]):
        s = F(a["scale_min"]) + (F(a["scale_max"]) - F(a["scale_min"])) * nxt()
        scale = (c_round(float(F(width) * s)), c_round(float(F(height) * s)))
    if nxt() <= F(a["rotation_prob"]):
        rot = (nxt() - F(0.5)) * F(2) * F(a["max_rotate_degree"])
    before = rotated_size(scale[0], scale[1], rot) if abs(rot) > EPS else scale
    if nxt() <= F(a["crop_prob"]):
        px, py, sx, sy = float(nxt()), float(nxt()), a["shift_x"], a["shift_y"]
    else:
        px, py, sx, sy = 0.5, 0.5, 0, 0
    crop = (c_round(px * (before[0] - ix + sx) - sx // 2), c_round(py * (before[1] - iy + sy) - sy // 2))
    return dict(hue=F(hue), sat=F(sat), flip=flip, scale=scale, rot=F(rot), crop=crop)


# -- the .cu's kernels, one pixel at a time ---------------------------------------------------------
def rgb_to_hsv(r, g, b):
    mn, mx = min(min(r, g), b), max(max(r, g), b)
    delta = mx - mn
    if mx == 0 or delta == 0:
        return F(0), F(0), mx
    if r == mx:
        h = (g - b) / delta
    elif g == mx:
        h = F(2) + (b - r) / delta
    else:
        h = F(4) + (r - g) / delta
    h = h * F(60)
    # NVCaffe: ``if (h < 0)`` compares the pointer: never true
    return F(h), F(delta / mx), mx


def hsv_to_rgb(h, s, v):
    if s == 0:
        return v, v, v
    h = F(h / F(60))
    i = int(math.floor(h))
    f = F(h - F(i))
    p, q, t = v * (F(1) - s), v * (F(1) - s * f), v * (F(1) - s * (F(1) - f))
    return {0: (v, t, p), 1: (q, v, p), 2: (p, v, t), 3: (p, q, v), 4: (t, p, v)}.get(i, (v, p, q))


def color(img, aug):
    do_hue, do_sat = abs(aug["hue"]) > EPS, float(aug["sat"]) < 1.0 - 1.0 / 255
    out = img.copy()
    if not (do_hue or do_sat):
        return out
    for y in range(img.shape[1]):
        for x in range(img.shape[2]):
            h, s, v = rgb_to_hsv(img[0, y, x], img[1, y, x], img[2, y, x])
            if do_hue:
                h = F(h - aug["hue"])
            if do_sat:
                s = F(s * aug["sat"])
            out[:, y, x] = hsv_to_rgb(h, s, v)
    return out


def get_value(img, c, y, x):
    hgt, wid = img.shape[1:]
    x = 0 if x == -1 else (wid - 1 if x == wid else x)
    y = 0 if y == -1 else (hgt - 1 if y == hgt else y)
    return float(img[c, y, x]) if 0 <= x < wid and 0 <= y < hgt else 0.0


def cubic(d, v1, v2, v3, v4):
    d = float(d)
    return F(v2 + d * (-2.0 * v1 - 3.0 * v2 + 6.0 * v3 - 1.0 * v4 + d * (
        3.0 * v1 - 6.0 * v2 + 3.0 * v3 + 0.0 * v4 + d * (-1.0 * v1 + 3.0 * v2 - 3.0 * v3 + 1.0 * v4))) / 6.0)


def interp_x(img, c, y, x):
    fx, cx = math.floor(x), math.ceil(x)
    return cubic(F(x - F(fx)), get_value(img, c, y, fx - 1), get_value(img, c, y, fx),
                 get_value(img, c, y, cx), get_value(img, c, y, cx + 1))


def interp_xy(img, c, y, x):
    fy, cy = math.floor(y), math.ceil(y)
    return cubic(F(y - F(fy)), float(interp_x(img, c, fy - 1, x)), float(interp_x(img, c, fy, x)),
                 float(interp_x(img, c, cy, x)), float(interp_x(img, c, cy + 1, x)))


def spatial(img, aug, out_w, out_h):
    _, src_h, src_w = img.shape
    out = np.zeros((img.shape[0], out_h, out_w), dtype=F)
    for dy in range(out_h):
        for dx in range(out_w):
            x, y = F(dx) + F(aug["crop"][0]), F(dy) + F(aug["crop"][1])
            if abs(aug["rot"]) > EPS:
                wb, hb = F(aug["scale"][0] - 1), F(aug["scale"][1] - 1)
                angle = F(F(aug["rot"]) * F(math.pi)) / F(180)
                wa = F(abs(wb * F(math.cos(angle))) + abs(hb * F(math.sin(angle))))
                ha = F(abs(wb * F(math.sin(angle))) + abs(hb * F(math.cos(angle))))
                ccx, ccy = wa / F(2), ha / F(2)
                s, c = F(math.sin(-angle)), F(math.cos(-angle))
                tx, ty = x - ccx, y - ccy
                x, y = (tx * c) - (ty * s) + ccx, (tx * s) + (ty * c) + ccy
                x, y = x - (wa - wb) / F(2), y - (ha - hb) / F(2)
            if src_w != aug["scale"][0]:
                x = x * (F(src_w - 1) / F(aug["scale"][0] - 1))
            if src_h != aug["scale"][1]:
                y = y * (F(src_h - 1) / F(aug["scale"][1] - 1))
            if aug["flip"]:
                x = F(src_w) - x - F(1)
            for ch in range(img.shape[0]):
                out[ch, dy, dx] = interp_xy(img, ch, F(y), F(x))
    return out


def transform_image(img, aug, mean, out_w, out_h):
    """color -> mean subtraction (``mean``: 3 x H x W or 3 values) -> spatial, on one 3 x H x W image."""
    x = color(np.asarray(img, dtype=F), aug)
    if mean is not None:
        x = (x - np.asarray(mean, dtype=F).reshape(3, -1, 1) if np.ndim(mean) == 1 else x - mean).astype(F)
    return spatial(x, aug, out_w, out_h)


# -- labels ---------------------------------------------------------------------------------------
def labels_of(flat):
    flat = np.asarray(flat, dtype=F).reshape(-1)
    n, ln = int(flat[0]), int(flat[1])
    assert ln == 16
    return [[F(v) for v in flat[16 * (k + 1):16 * (k + 2)]] for k in range(n)]


def transform_labels(boxes, aug, size):
    out = []
    for b in boxes:
        b = list(b)
        if aug["flip"]:
            b[0] = F(size[0]) - b[0] - b[2] - F(1)
        if tuple(aug["scale"]) != tuple(size):
            sx, sy = F(aug["scale"][0]) / F(size[0]), F(aug["scale"][1]) / F(size[1])
            b[0], b[1], b[2], b[3] = b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy
        if abs(aug["rot"]) > EPS:
            m = affine(aug["scale"][0], aug["scale"][1], aug["rot"]).astype(np.float64)
            cx, cy = (b[0] + (b[0] + b[2])) * F(0.5), (b[1] + (b[1] + b[3])) * F(0.5)
            nx = F(m[0, 0] * cx + m[0, 1] * cy + m[0, 2])
            ny = F(m[1, 0] * cx + m[1, 1] * cy + m[1, 2])
            b[0], b[1] = nx - ((b[0] + b[2]) - cx), ny - ((b[1] + b[3]) - cy)
        b[0], b[1] = b[0] - F(aug["crop"][0]), b[1] - F(aug["crop"][1])
        out.append(b)
    return out


def coverage(boxes, g):
    """``CoverageGenerator::generate``; ``g``: dict of the DetectNetGroundTruthParameter's values."""
    cmap = dict(g["classes"]) or {1: 0}
    gw = int(np.rint(F(g["image_x"]) * F(1.0 / g["stride"])))
    gh = int(np.rint(F(g["image_y"]) * F(1.0 / g["stride"])))
    out = np.zeros((8 + max(cmap.values()) + 1, gh, gw), dtype=F)
    stride, area = F(g["stride"]), F(g["stride"] * g["stride"])
    pruned = []
    for b in boxes:
        b = list(b)
        if g["crop_bboxes"]:
            b[0], b[1], b[2], b[3] = rect_and(b[:4], (F(0), F(0), F(g["image_x"]), F(g["image_y"])))
        if b[5] < 0 or int(b[5]) not in cmap:
            continue
        if b[2] * b[3] < EPS:
            continue
        pruned.append(b)
    for b in pruned:
        x, y, w, h = b[:4]
        cx, cy = (x + (x + w)) * F(0.5), (y + (y + h)) * F(0.5)
        sw, sh = w * F(g["scale_cvg"]), h * F(g["scale_cvg"])
        if g["gridbox_min"]:
            sw, sh = min(w, max(F(g["min_cvg_len"]), sw)), min(h, max(F(g["min_cvg_len"]), sh))
        else:
            sw, sh = min(F(g["max_cvg_len"]), sw), min(F(g["max_cvg_len"]), sh)
        p1, p2 = (cx + sw * F(0.5), cy + sh * F(0.5)), (cx - sw * F(0.5), cy - sh * F(0.5))
        cov = (min(p1[0], p2[0]), min(p1[1], p2[1]), max(p1[0], p2[0]) - min(p1[0], p2[0]),
               max(p1[1], p2[1]) - min(p1[1], p2[1]))
        norm = F(area / (cov[2] * cov[3]))
        tl = (math.floor(cov[0] / stride), math.floor(cov[1] / stride))
        br = (math.ceil((cov[0] + cov[2]) / stride), math.ceil((cov[1] + cov[3]) / stride))
        x0, x1 = max(min(tl[0], br[0]), 0), min(max(tl[0], br[0]), gw)
        y0, y1 = max(min(tl[1], br[1]), 0), min(max(tl[1], br[1]), gh)
        if x1 <= x0 or y1 <= y0:
            continue
        for gy in range(y0, y1):
            for gx in range(x0, x1):
                box = (F(gx) * stride, F(gy) * stride, stride, stride)
                inter = rect_and(cov, box)
                if inter[2] * inter[3] / area > EPS:
                    out[8:, gy, gx] = 0
                    out[8 + cmap[int(b[5])], gy, gx] = 1
                    out[1, gy, gx] = x - box[0]
                    out[2, gy, gx] = y - box[1]
                    out[3, gy, gx] = (x + w) - box[0]
                    out[4, gy, gx] = (y + h) - box[1]
                    out[5, gy, gx] = 1.0 / float(w)
                    out[6, gy, gx] = 1.0 / float(h)
                    out[7, gy, gx] = max(F(0.0 if g["obj_norm"] else 1.0), norm)
                    out[0, gy, gx] = 1
    return out
