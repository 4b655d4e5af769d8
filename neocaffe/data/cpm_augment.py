"""OpenPose's augmentation and label rendering (CMU-Perceptual-Computing-Lab/caffe_train @ 76dd9563,
``src/caffe/cpm_data_transformer.cpp``: Transform_nv with mode 5, augmentation_scale / _rotate / _croppad / _flip
with masks, swapLeftRight, generateLabelMap, putGaussianMaps, putVecMaps).

Per record, in TRAIN: scale by ``target_dist / scale_provided`` times a multiplier drawn in [scale_min, scale_max]
with probability ``scale_prob`` (else 1); rotate by a degree in +-``max_rotate_degree`` about the image centre
into the rotated image's bounding box (grey 128, mask_miss 255 outside); crop ``crop_size_x`` x ``crop_size_y``
about the person's centre moved by a whole offset in +-``center_perterb_max`` (grey 128, mask_miss 255 outside);
flip with probability ``flip_prob``, left and right parts swapped. Image and mask go through OpenCV's bicubic
resize and warpAffine as in the fork; points follow in its float32/double arithmetic. The mask is then resized
by 1/``stride`` (bicubic). In TEST nothing is augmented (the fork's else branch).

Labels (``2 (num_parts + 1)`` channels of crop/stride): 0..num_parts-1 the weights mask_miss/255 (a channel
whose index is a part written with visibility 3 is left 0: the fork leaves the previous batch's value there),
num_parts the same mask; then the PAFs (x, y per limb), the part heatmaps and the background 1 - max(heatmaps).
Heatmaps: a Gaussian of ``sigma`` at grid point ``g * stride + stride/2 - 0.5`` per visible part of every person,
skipped where its exponent exceeds 4.6052, summed and clipped at 1. PAFs: the unit vector of the limb at grid
points (the joints scaled by the fork's fixed 0.125, whatever ``stride`` is) within distance 1 of the limb's line
and in its bounding box grown by 1; a later person overwrites an earlier one (the fork's count never grows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from neocaffe.data.cpm_records import PARTS, People

F32 = np.float32
# limbs (part pairs) per num_parts: COCO's 1-based, MPI's 0-based, as the fork writes them
_LIMBS = {56: ([2, 9, 10, 2, 12, 13, 2, 3, 4, 3, 2, 6, 7, 6, 2, 1, 1, 15, 16],
               [9, 10, 11, 12, 13, 14, 3, 4, 5, 17, 6, 7, 8, 18, 1, 15, 16, 17, 18], 1),
          43: ([0, 1, 2, 3, 1, 5, 6, 1, 14, 8, 9, 14, 11, 12],
               [1, 2, 3, 4, 5, 6, 7, 14, 8, 9, 10, 11, 12, 13], 0)}
# left/right parts swapped by a flip (1-based)
_SWAP = {56: ([3, 4, 5, 9, 10, 11, 15, 17], [6, 7, 8, 12, 13, 14, 16, 18]),
         43: ([3, 4, 5, 9, 10, 11], [6, 7, 8, 12, 13, 14])}


@dataclass(frozen=True)
class Draws:
    """One record's dice, each as the fork's ``rand() / RAND_MAX`` (float32 in [0, 1]); ``scale2`` is drawn only
    when ``scale <= scale_prob`` (else None)."""

    scale: float
    scale2: float | None
    rotate: float
    crop_x: float
    crop_y: float
    flip: float


def draw(rng: np.random.Generator, tp: object) -> Draws:
    """The dice of one record, in the fork's order (scale, [scale2], rotation, crop x, crop y, flip)."""
    def u() -> float:
        return float(F32(rng.random()))

    s = u()
    s2 = u() if F32(s) <= F32(tp.scale_prob) else None
    return Draws(s, s2, u(), u(), u(), u())


def rotated_bbox(w: int, h: int, cx: float, cy: float, degree: float) -> tuple[int, int]:
    """OpenCV's ``RotatedRect(center, Size(w, h), degree).boundingRect()`` width and height (float32 corners)."""
    ang = float(degree) * math.pi / 180.0
    b, a = F32(math.cos(ang)) * F32(0.5), F32(math.sin(ang)) * F32(0.5)
    cx, cy, w, h = F32(cx), F32(cy), F32(w), F32(h)
    x0, y0 = cx - a * h - b * w, cy + b * h - a * w
    x1, y1 = cx + a * h - b * w, cy - b * h - a * w
    xs = [x0, x1, F32(2) * cx - x0, F32(2) * cx - x1]
    ys = [y0, y1, F32(2) * cy - y0, F32(2) * cy - y1]
    left, top = math.floor(min(xs)), math.floor(min(ys))
    return math.ceil(max(xs)) - left + 1, math.ceil(max(ys)) - top + 1


def augment(img: np.ndarray, mask: np.ndarray, people: People, tp: object, d: Draws
            ) -> tuple[np.ndarray, np.ndarray, People]:
    """Scale, rotate, crop and flip (``cpm_transform_param`` ``tp``, dice ``d``): the crop (H x W x 3 uint8), its
    mask_miss (H x W uint8, before the 1/stride resize) and the people moved with them."""
    j, o = people.joints.copy(), people.objpos.copy()
    mult = F32(1) if F32(d.scale) > F32(tp.scale_prob) else (
        (F32(tp.scale_max) - F32(tp.scale_min)) * F32(d.scale2) + F32(tp.scale_min))
    scale = F32(tp.target_dist) / people.scale * mult
    img = cv2.resize(img, None, fx=float(scale), fy=float(scale), interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize(mask, None, fx=float(scale), fy=float(scale), interpolation=cv2.INTER_CUBIC)
    j, o = j * scale, o * scale
    # rotation about the centre into the rotated image's bounding box
    degree = F32((d.rotate - 0.5) * 2 * float(F32(tp.max_rotate_degree)))
    h, w = img.shape[:2]
    cx, cy = F32(w / 2.0), F32(h / 2.0)
    r = cv2.getRotationMatrix2D((float(cx), float(cy)), float(degree), 1.0)
    bw, bh = rotated_bbox(w, h, cx, cy, degree)
    r[0, 2] += bw / 2.0 - float(cx)
    r[1, 2] += bh / 2.0 - float(cy)
    img = cv2.warpAffine(img, r, (bw, bh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(128, 128, 128))
    mask = cv2.warpAffine(mask, r, (bw, bh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=255)

    def rotate(p: np.ndarray) -> np.ndarray:
        x, y = p[..., 0].astype(np.float64), p[..., 1].astype(np.float64)
        return np.stack([r[0, 0] * x + r[0, 1] * y + r[0, 2], r[1, 0] * x + r[1, 1] * y + r[1, 2]], -1).astype(F32)

    j, o = rotate(j), rotate(o)
    # crop about the (perturbed) centre
    cw, ch = int(tp.crop_size_x), int(tp.crop_size_y)
    dx = F32(int((d.crop_x - 0.5) * 2 * float(F32(tp.center_perterb_max))))
    dy = F32(int((d.crop_y - 0.5) * 2 * float(F32(tp.center_perterb_max))))
    cx, cy = int(np.rint(o[0] + dx)), int(np.rint(o[1] + dy))  # Point2i(Point2f): cvRound
    x0, y0 = cx - cw // 2, cy - ch // 2
    out = np.full((ch, cw, 3), 128, np.uint8)
    out_mask = np.full((ch, cw), 255, np.uint8)
    h, w = img.shape[:2]
    sx, sy = slice(max(x0, 0), min(x0 + cw, w)), slice(max(y0, 0), min(y0 + ch, h))
    if sx.start < sx.stop and sy.start < sy.stop:
        tx, ty = slice(sx.start - x0, sx.stop - x0), slice(sy.start - y0, sy.stop - y0)
        out[ty, tx], out_mask[ty, tx] = img[sy, sx], mask[sy, sx]
    shift = np.array([-x0, -y0], F32)
    j, o = j + shift, o + shift
    vis = people.vis
    if F32(d.flip) <= F32(tp.flip_prob):
        out, out_mask = np.ascontiguousarray(out[:, ::-1]), np.ascontiguousarray(out_mask[:, ::-1])
        j[..., 0], o[0] = F32(cw - 1) - j[..., 0], F32(cw - 1) - o[0]
        right, left = (np.array(v) - 1 for v in _SWAP[int(tp.num_parts)])
        j[:, np.r_[right, left]], vis = j[:, np.r_[left, right]], vis.copy()
        vis[:, np.r_[right, left]] = people.vis[:, np.r_[left, right]]
    return out, out_mask, People(j, vis, o, people.scale)


def _gaussians(shape: tuple[int, int], centres: np.ndarray, stride: int, sigma: float) -> np.ndarray:
    """The fork's putGaussianMaps for each centre in turn (sum clipped at 1)."""
    gy, gx = shape
    start = F32(stride / 2.0 - 0.5)
    xs = start + np.arange(gx, dtype=F32) * F32(stride)
    ys = (start + np.arange(gy, dtype=F32) * F32(stride))[:, None]
    out = np.zeros(shape, F32)
    s = float(F32(sigma))
    for c in centres:
        d2 = (xs - c[0]) * (xs - c[0]) + (ys - c[1]) * (ys - c[1])
        e = (d2.astype(np.float64) / 2.0 / s / s).astype(F32)
        out = np.minimum(out + np.where(e > 4.6052, F32(0), np.exp(-e)), F32(1))
    return out


def _paf(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, thre: int = 1) -> None:
    """The fork's putVecMaps (one person's limb a -> b) into the maps ``x``, ``y`` (overwriting)."""
    gy, gx = x.shape
    a = (a.astype(np.float64) * 0.125).astype(F32)
    b = (b.astype(np.float64) * 0.125).astype(F32)
    bc = b - a

    def rnd(v: float) -> int:  # std::round: halves away from zero
        return int(math.copysign(math.floor(abs(v) + 0.5), v))

    x0 = max(rnd(float(min(a[0], b[0]) - F32(thre))), 0)
    x1 = min(rnd(float(max(a[0], b[0]) + F32(thre))), gx)
    y0 = max(rnd(float(min(a[1], b[1]) - F32(thre))), 0)
    y1 = min(rnd(float(max(a[1], b[1]) + F32(thre))), gy)
    with np.errstate(invalid="ignore", divide="ignore"):
        bc = bc / np.sqrt(bc[0] * bc[0] + bc[1] * bc[1])
        bax = np.arange(x0, x1, dtype=F32) - a[0]
        bay = (np.arange(y0, y1, dtype=F32) - a[1])[:, None]
        hit = np.abs(bax * bc[1] - bay * bc[0]) <= thre
    x[y0:y1, x0:x1][hit], y[y0:y1, x0:x1][hit] = bc[0], bc[1]


def render_labels(people: People, mask: np.ndarray, grid: tuple[int, int], tp: object) -> np.ndarray:
    """The label of one record: ``2 (num_parts + 1)`` x grid float32 (weights, PAFs, heatmaps, background);
    ``mask``: mask_miss already resized by 1/stride."""
    n = int(tp.num_parts)
    parts = PARTS[n]
    first_heat = n + 1 + 2 * len(_LIMBS[n][0])
    out = np.zeros((2 * (n + 1), *grid), F32)
    weight = mask[: grid[0], : grid[1]].astype(F32) / F32(255)
    vis = np.zeros(n, F32)
    vis[:parts] = people.vis[0]
    out[: n][vis != 3] = weight
    out[n] = weight
    for i in range(parts):
        seen = people.vis[:, i] <= 1
        out[first_heat + i] = _gaussians(grid, people.joints[seen, i], int(tp.stride), float(tp.sigma))
    m1, m2, base = _LIMBS[n]
    for i, (p, q) in enumerate(zip(m1, m2)):
        p, q = p - base, q - base
        for k in range(len(people.vis)):
            if people.vis[k, p] <= 1 and people.vis[k, q] <= 1:
                _paf(out[n + 1 + 2 * i], out[n + 2 + 2 * i], people.joints[k, p], people.joints[k, q])
    heat = np.maximum(out[first_heat: first_heat + parts].max(0), 0)
    out[2 * n + 1] = np.maximum(1.0 - heat.astype(np.float64), 0.0).astype(F32)
    return out


__all__ = ["Draws", "augment", "draw", "render_labels", "rotated_bbox"]
