"""A loop-by-loop NumPy port of CMU-Perceptual-Computing-Lab/caffe_train @ 76dd9563's CPMDataTransformer
(``src/caffe/cpm_data_transformer.cpp``: ReadMetaData, TransformJoints, Transform_nv with mode 5, the masked
augmentation_scale / _rotate / _croppad / _flip, swapLeftRight, generateLabelMap, putGaussianMaps, putVecMaps),
for the tests. OpenCV calls stay OpenCV calls (cv2); the fork's ``rand() / RAND_MAX`` dice are given as a list,
consumed in the fork's order. float is np.float32, double Python's float."""
from __future__ import annotations

import math

import cv2
import numpy as np

f32 = np.float32


def _float(plane, r, byte):
    return f32(np.frombuffer(plane[r].tobytes()[byte:byte + 4], "<f4")[0])


def read_meta(plane, np_in_lmdb):
    m = {}
    height, width = _float(plane, 1, 0), _float(plane, 1, 4)
    m["w"], m["h"] = int(width), int(height)
    m["nop"] = int(np.int8(plane[2, 1]))
    m["objpos"] = [_float(plane, 3, 0) - f32(1), _float(plane, 3, 4) - f32(1)]
    m["scale_self"] = _float(plane, 4, 0)

    def joints(r, self_):
        pts, vis = [], []
        for i in range(np_in_lmdb):
            x = _float(plane, r, 4 * i) - f32(1)
            y = _float(plane, r + 1, 4 * i) - f32(1)
            v = _float(plane, r + 2, 4 * i)
            if self_ and v == 3:
                vv = 3
            else:
                vv = 0 if v == 0 else 1
                if x < 0 or y < 0 or x >= m["w"] or y >= m["h"]:
                    vv = 2
            pts.append([x, y])
            vis.append(f32(vv))
        return pts, vis

    m["self"] = joints(5, True)
    m["others"] = [joints(9 + m["nop"] + 3 * p, False) for p in range(m["nop"])]
    m["objpos_other"] = [[_float(plane, 8 + p, 0) - f32(1), _float(plane, 8 + p, 4) - f32(1)] for p in range(m["nop"])]
    return m


def transform_joints(j, np_):
    pts, vis = j
    if np_ == 56:
        a = [1, 6, 7, 9, 11, 6, 8, 10, 13, 15, 17, 12, 14, 16, 3, 2, 5, 4]
        b = [1, 7, 7, 9, 11, 6, 8, 10, 13, 15, 17, 12, 14, 16, 3, 2, 5, 4]
        a, b, n = [i - 1 for i in a], [i - 1 for i in b], 18
    else:
        a = [9, 8, 12, 11, 10, 13, 14, 15, 2, 1, 0, 3, 4, 5, 7]
        b = [9, 8, 12, 11, 10, 13, 14, 15, 2, 1, 0, 3, 4, 5, 6]
        n = 15
    out_p = [[f32(0), f32(0)] for _ in range(np_)]
    out_v = [f32(0)] * np_
    for i in range(len(pts)):
        if i < np_:
            out_p[i], out_v[i] = list(pts[i]), vis[i]
    for i in range(n):
        pa, pb = pts[a[i]], pts[b[i]]
        out_p[i] = [f32(float(pa[0] + pb[0]) * 0.5), f32(float(pa[1] + pb[1]) * 0.5)]
        va, vb = vis[a[i]], vis[b[i]]
        if va == 2 or vb == 2:
            out_v[i] = f32(2)
        elif np_ == 56 and (va == 3 or vb == 3):
            out_v[i] = f32(3)
        else:
            out_v[i] = f32(1 if (va != 0 and vb != 0) else 0)
    return out_p, out_v


def _all_points(m):
    yield m["objpos"]
    for p in m["self"][0]:
        yield p
    for p in range(m["nop"]):
        yield m["objpos_other"][p]
        for q in m["others"][p][0]:
            yield q


def transform_nv(arr, tp, train, dice):
    """The fork's Transform_nv on one record (C x H x W uint8): (data C x H' x W', label)."""
    dice = list(dice)
    np_ = int(tp.num_parts)
    c, h, w = arr.shape
    img = np.zeros((h, w, 3), np.uint8)
    mask_miss = np.ones((h, w), np.uint8)
    for i in range(h):
        for j in range(w):
            for ch in range(3):
                img[i, j, ch] = arr[ch, i, j]
            mask_miss[i, j] = arr[4, i, j]
    if tp.do_clahe:
        lab = cv2.cvtColor(img, cv2.COLOR_BGR2Lab)
        planes = list(cv2.split(lab))
        planes[0] = cv2.createCLAHE(int(tp.clahe_clip_limit), (int(tp.clahe_tile_size),) * 2).apply(planes[0])
        img = cv2.cvtColor(cv2.merge(planes), cv2.COLOR_Lab2BGR)
    if tp.gray == 1:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    m = read_meta(arr[3], int(tp.np_in_lmdb))
    m["self"] = transform_joints(m["self"], np_)
    m["others"] = [transform_joints(o, np_) for o in m["others"]]
    stride = int(tp.stride)
    cx_, cy_ = int(tp.crop_size_x), int(tp.crop_size_y)
    if train:
        # augmentation_scale
        d = f32(dice.pop(0))
        if d > f32(tp.scale_prob):
            mult = f32(1)
        else:
            d2 = f32(dice.pop(0))
            mult = (f32(tp.scale_max) - f32(tp.scale_min)) * d2 + f32(tp.scale_min)
        scale = f32(tp.target_dist) / m["scale_self"] * mult
        img = cv2.resize(img, None, fx=float(scale), fy=float(scale), interpolation=cv2.INTER_CUBIC)
        mask_miss = cv2.resize(mask_miss, None, fx=float(scale), fy=float(scale), interpolation=cv2.INTER_CUBIC)
        for p in _all_points(m):
            p[0], p[1] = p[0] * scale, p[1] * scale
        # augmentation_rotate
        d = f32(dice.pop(0))
        degree = f32((float(d) - 0.5) * 2 * float(f32(tp.max_rotate_degree)))
        center = (f32(img.shape[1] / 2.0), f32(img.shape[0] / 2.0))
        R = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), float(degree), 1.0)
        pts = cv2.boxPoints(((float(center[0]), float(center[1])), (img.shape[1], img.shape[0]), float(degree)))
        x0, y0 = math.floor(pts[:, 0].min()), math.floor(pts[:, 1].min())
        bw, bh = math.ceil(pts[:, 0].max()) - x0 + 1, math.ceil(pts[:, 1].max()) - y0 + 1
        R[0, 2] += bw / 2.0 - float(center[0])
        R[1, 2] += bh / 2.0 - float(center[1])
        img = cv2.warpAffine(img, R, (bw, bh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(128, 128, 128))
        mask_miss = cv2.warpAffine(mask_miss, R, (bw, bh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=255)
        for p in _all_points(m):
            x, y = float(p[0]), float(p[1])
            p[0] = f32(R[0, 0] * x + R[0, 1] * y + R[0, 2] * 1)
            p[1] = f32(R[1, 0] * x + R[1, 1] * y + R[1, 2] * 1)
        # augmentation_croppad
        dx, dy = f32(dice.pop(0)), f32(dice.pop(0))
        xo = f32(int((float(dx) - 0.5) * 2 * float(f32(tp.center_perterb_max))))
        yo = f32(int((float(dy) - 0.5) * 2 * float(f32(tp.center_perterb_max))))
        ccx, ccy = int(np.rint(m["objpos"][0] + xo)), int(np.rint(m["objpos"][1] + yo))
        off_l, off_u = -(ccx - cx_ // 2), -(ccy - cy_ // 2)
        dst = np.full((cy_, cx_, 3), 128, np.uint8)
        miss_aug = np.full((cy_, cx_), 255, np.uint8)
        for i in range(cy_):
            for j in range(cx_):
                xi, yi = ccx - cx_ // 2 + j, ccy - cy_ // 2 + i
                if 0 <= xi < img.shape[1] and 0 <= yi < img.shape[0]:
                    dst[i, j] = img[yi, xi]
                    miss_aug[i, j] = mask_miss[yi, xi]
        for p in _all_points(m):
            p[0], p[1] = p[0] + f32(off_l), p[1] + f32(off_u)
        # augmentation_flip
        d = f32(dice.pop(0))
        img = dst
        if d <= f32(tp.flip_prob):
            img = cv2.flip(dst, 1)
            miss_aug = cv2.flip(miss_aug, 1)
            wd = img.shape[1]
            for p in _all_points(m):
                p[0] = f32(wd - 1) - p[0]
            if np_ == 56:
                right, left = [3, 4, 5, 9, 10, 11, 15, 17], [6, 7, 8, 12, 13, 14, 16, 18]
            else:
                right, left = [3, 4, 5, 9, 10, 11], [6, 7, 8, 12, 13, 14]
            for pts_, vis in [m["self"]] + m["others"]:
                for r, l_ in zip(right, left):
                    pts_[r - 1], pts_[l_ - 1] = pts_[l_ - 1], pts_[r - 1]
                    vis[r - 1], vis[l_ - 1] = vis[l_ - 1], vis[r - 1]
        mask_miss = cv2.resize(miss_aug, None, fx=1.0 / stride, fy=1.0 / stride, interpolation=cv2.INTER_CUBIC)
    else:  # the fork reads an empty mask here; the layer resizes the record's
        mask_miss = cv2.resize(mask_miss, None, fx=1.0 / stride, fy=1.0 / stride, interpolation=cv2.INTER_CUBIC)
    rows, cols = img.shape[:2]
    data = np.zeros((c, rows, cols), np.float32)
    for i in range(rows):
        for j in range(cols):
            for ch in range(3):
                data[ch, i, j] = (int(img[i, j, ch]) - 128) / 256.0
    gx, gy = cols // stride, rows // stride
    label = np.zeros((2 * (np_ + 1), gy, gx), np.float32)
    for g_y in range(gy):
        for g_x in range(gx):
            weight = f32(mask_miss[g_y, g_x]) / f32(255)
            for i in range(np_):
                if m["self"][1][i] != 3:
                    label[i, g_y, g_x] = weight
            label[np_, g_y, g_x] = weight
    generate_label_map(label, m, tp, gx, gy)
    return data, label


def put_gaussian(entry, center, stride, gx, gy, sigma):
    start = f32(stride / 2.0 - 0.5)
    for g_y in range(gy):
        for g_x in range(gx):
            x = start + f32(g_x * stride)
            y = start + f32(g_y * stride)
            d2 = (x - center[0]) * (x - center[0]) + (y - center[1]) * (y - center[1])
            exponent = f32(float(d2) / 2.0 / float(f32(sigma)) / float(f32(sigma)))
            if exponent > 4.6052:
                continue
            entry[g_y, g_x] += np.exp(-exponent)
            if entry[g_y, g_x] > 1:
                entry[g_y, g_x] = 1


def _round(v):
    return math.copysign(math.floor(abs(float(v)) + 0.5), float(v))


def put_vec(ex, ey, count, a, b, gx, gy, thre=1):
    a = [f32(float(a[0]) * 0.125), f32(float(a[1]) * 0.125)]
    b = [f32(float(b[0]) * 0.125), f32(float(b[1]) * 0.125)]
    bc = [b[0] - a[0], b[1] - a[1]]
    min_x = max(int(_round(min(a[0], b[0]) - f32(thre))), 0)
    max_x = min(int(_round(max(a[0], b[0]) + f32(thre))), gx)
    min_y = max(int(_round(min(a[1], b[1]) - f32(thre))), 0)
    max_y = min(int(_round(max(a[1], b[1]) + f32(thre))), gy)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(bc[0] * bc[0] + bc[1] * bc[1])
        bc = [bc[0] / norm, bc[1] / norm]
        for g_y in range(min_y, max_y):
            for g_x in range(min_x, max_x):
                bax, bay = f32(g_x) - a[0], f32(g_y) - a[1]
                dist = abs(bax * bc[1] - bay * bc[0])
                if dist <= thre:
                    cnt = count[g_y, g_x]
                    if cnt == 0:
                        ex[g_y, g_x], ey[g_y, g_x] = bc[0], bc[1]
                    else:  # never reached: the fork never raises the count
                        ex[g_y, g_x] = (ex[g_y, g_x] * cnt + bc[0]) / (cnt + 1)
                        ey[g_y, g_x] = (ey[g_y, g_x] * cnt + bc[1]) / (cnt + 1)
                        count[g_y, g_x] = cnt + 1


def generate_label_map(label, m, tp, gx, gy):
    np_ = int(tp.num_parts)
    for i in range(np_ + 1, 2 * (np_ + 1)):
        label[i] = 0
    if np_ == 56:
        heat0, parts = np_ + 39, 18
        mid1 = [i - 1 for i in [2, 9, 10, 2, 12, 13, 2, 3, 4, 3, 2, 6, 7, 6, 2, 1, 1, 15, 16]]
        mid2 = [i - 1 for i in [9, 10, 11, 12, 13, 14, 3, 4, 5, 17, 6, 7, 8, 18, 1, 15, 16, 17, 18]]
    else:
        heat0, parts = np_ + 29, 15
        mid1 = [0, 1, 2, 3, 1, 5, 6, 1, 14, 8, 9, 14, 11, 12]
        mid2 = [1, 2, 3, 4, 5, 6, 7, 14, 8, 9, 10, 11, 12, 13]
    for i in range(parts):
        for pts, vis in [m["self"]] + m["others"]:
            if vis[i] <= 1:
                put_gaussian(label[heat0 + i], pts[i], int(tp.stride), gx, gy, tp.sigma)
    for i in range(len(mid1)):
        count = np.zeros((gy, gx), np.uint8)
        for pts, vis in [m["self"]] + m["others"]:
            if vis[mid1[i]] <= 1 and vis[mid2[i]] <= 1:
                put_vec(label[np_ + 1 + 2 * i], label[np_ + 2 + 2 * i], count, pts[mid1[i]], pts[mid2[i]], gx, gy)
    for g_y in range(gy):
        for g_x in range(gx):
            maximum = f32(0)
            for i in range(heat0, heat0 + parts):
                maximum = maximum if maximum > label[i, g_y, g_x] else label[i, g_y, g_x]
            label[2 * np_ + 1, g_y, g_x] = f32(max(1.0 - float(maximum), 0.0))
