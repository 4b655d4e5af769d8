"""The label side of NVCaffe's ``DetectNetTransformation``: DIGITS' bbox records and their rendering
into DetectNet's coverage/bbox grid (no torch; float32 arithmetic as NVCaffe's ``Dtype = float``).

Lineage: NVIDIA/caffe ``caffe-0.17`` @ 87a2554: ``include/caffe/util/detectnet_coverage.hpp``,
``src/caffe/util/detectnet_coverage_rectangular.cpp`` (``CoverageGenerator``, ``BboxLabel_``,
``TransformedLabel_``) and the label half of ``src/caffe/layers/detectnet_transform_layer.cpp``
(``blobToLabels``, ``flip/scale/rotate/crop_label_cpu``, ``getTransformationMatrix``, ``getRotatedSize``).

Label blob (DIGITS' ``pad_bbox``): per image, its values read flat; the first record is a header
``[n_boxes, 16, 0...]``, then ``n_boxes`` records of 16 values: x, y, width, height (top-left and size,
pixels), alpha, class, scenario, roty, truncated, occluded, dimensions (3), location (3). ``n_boxes``
must not exceed the blob's height (``CHECK_LE``), the record length must be 16 (``CHECK_EQ``).

Output per image: ``8 + n_cov`` channels on a grid of ``round(image_size / stride)`` cells: 0 foreground,
1-4 the box's top-left and bottom-right corners relative to the cell's top-left (pixels), 5-6 ``1/w``,
``1/h``, 7 obj_norm (``stride^2 / coverage area``, at least 1 unless ``obj_norm``), 8.. one-hot coverage
(``n_cov = max(object_class.dst) + 1``; with no ``object_class`` class 1 maps to 0). Boxes are pruned
(clipped to the image if ``crop_bboxes``, unknown classes and boxes of area < FLT_EPSILON dropped); each
box's coverage rectangle (centred, ``scale_cvg`` of its size, clamped by GRIDBOX_MIN's ``min_cvg_len`` /
GRIDBOX_MAX's ``max_cvg_len``) marks every cell it overlaps by more than FLT_EPSILON of a cell; later
boxes overwrite earlier ones cell by cell. ``coverage_type`` has one value (RECTANGULAR).

Rectangle intersection is OpenCV 2.4/3.x's ``Rect_::operator&=`` (max of the left edges, min of the right
edges minus it, empty when either side is <= 0); OpenCV 4's rewrite can round differently in the last bit.
The affine matrix of a rotation is solved in float64 by NumPy (OpenCV: its own LU), then rounded to
float32 as NVCaffe's ``Mat1v``: the rotated boxes agree to float32 rounding, not always bit for bit.
``truncated`` is updated by NVCaffe's pruning but never read afterwards: not computed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

F = np.float32
FLT_EPSILON = F(np.finfo(np.float32).eps)
RECORD = 16  # sizeof(BboxLabel_<float>) / sizeof(float)
HEADER = 8  # CoverageGenerator::TRANSFORMED_LABEL_SIZE


def parse_labels(flat: np.ndarray, height: int) -> np.ndarray:
    """One image's label values (any shape, read flat) -> (n, 16) float32 records (``blobToLabels``)."""
    flat = np.asarray(flat, dtype=F).reshape(-1)
    n, length = int(flat[0]), int(flat[1])  # static_cast<size_t>
    if length != RECORD:
        raise ValueError(f"label header gives a record length of {length}; expected {RECORD} (DIGITS' bbox record)")
    if n < 0 or n > height:
        raise ValueError(f"label header gives {n} boxes; expected at most the label blob's height {height}")
    if RECORD * (n + 1) > flat.size:
        raise ValueError(f"label header gives {n} boxes but the label holds {flat.size} values "
                         f"({RECORD * (n + 1)} needed)")
    return flat[RECORD:RECORD * (n + 1)].reshape(n, RECORD).copy()


def rect_and(ax, ay, aw, ah, bx, by, bw, bh):
    """OpenCV 3's float ``Rect_ & Rect_`` (elementwise on arrays): (x, y, w, h), zeros when empty."""
    x1, y1 = np.maximum(ax, bx), np.maximum(ay, by)
    w = np.minimum(F(ax + aw), F(bx + bw)) - x1
    h = np.minimum(F(ay + ah), F(by + bh)) - y1
    empty = (w <= 0) | (h <= 0)
    z = F(0)
    return (np.where(empty, z, x1).astype(F), np.where(empty, z, y1).astype(F),
            np.where(empty, z, w).astype(F), np.where(empty, z, h).astype(F))


# -- OpenCV geometry (float32 as cv::RotatedRect) -------------------------------------------------
def rotated_points(cx, cy, w, h, angle) -> np.ndarray:
    """``cv::RotatedRect(center, size, angle).points()``: 4 x 2 float32."""
    cx, cy, w, h = F(cx), F(cy), F(w), F(h)
    rad = float(F(angle)) * math.pi / 180.0
    b = F(F(math.cos(rad)) * F(0.5))
    a = F(F(math.sin(rad)) * F(0.5))
    p0 = (F(F(cx - F(a * h)) - F(b * w)), F(F(cy + F(b * h)) - F(a * w)))
    p1 = (F(F(cx + F(a * h)) - F(b * w)), F(F(cy - F(b * h)) - F(a * w)))
    p2 = (F(F(2) * cx - p0[0]), F(F(2) * cy - p0[1]))
    p3 = (F(F(2) * cx - p1[0]), F(F(2) * cy - p1[1]))
    return np.array([p0, p1, p2, p3], dtype=F)


def bounding_rect(pts: np.ndarray) -> tuple[int, int, int, int]:
    """``RotatedRect::boundingRect``: floor of the minima, ceil of the maxima, width/height + 1."""
    x0, y0 = math.floor(pts[:, 0].min()), math.floor(pts[:, 1].min())
    x1, y1 = math.ceil(pts[:, 0].max()), math.ceil(pts[:, 1].max())
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


def rotated_size(width: int, height: int, rotation: float) -> tuple[int, int]:
    """``getRotatedSize``: the bounding size of the image rotated about its (integer, truncated) centre."""
    _, _, w, h = bounding_rect(rotated_points(int(0.5 * width), int(0.5 * height), width, height, rotation))
    return w, h


def transformation_matrix(width: int, height: int, rotation: float) -> np.ndarray:
    """``getTransformationMatrix(Rect(0, 0, w, h), rotation)``: 2 x 3 float32."""
    cx, cy = F(F(width) * F(0.5)), F(F(height) * F(0.5))
    src = rotated_points(cx, cy, width, height, 0.0)
    bx, by, _, _ = bounding_rect(rotated_points(cx, cy, width, height, rotation))
    dst = rotated_points(F(cx - F(bx)), F(cy - F(by)), width, height, rotation)
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        a[2 * i, 0:3] = (src[i, 0], src[i, 1], 1.0)
        a[2 * i + 1, 3:6] = (src[i, 0], src[i, 1], 1.0)
        b[2 * i], b[2 * i + 1] = dst[i, 0], dst[i, 1]
    return np.linalg.solve(a, b).reshape(2, 3).astype(F)


# -- label transforms (records: (n, 16) float32; columns 0-3 the box) -----------------------------
def flip_labels(rec: np.ndarray, width: int) -> np.ndarray:
    out = rec.copy()
    out[:, 0] = (F(width) - rec[:, 0] - rec[:, 2]) - F(1)
    return out


def scale_labels(rec: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    sx, sy = F(F(new[0]) / F(old[0])), F(F(new[1]) / F(old[1]))
    out = rec.copy()
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = rec[:, 0] * sx, rec[:, 1] * sy, rec[:, 2] * sx, rec[:, 3] * sy
    return out


def rotate_labels(rec: np.ndarray, size: tuple[int, int], rotation: float) -> np.ndarray:
    m = transformation_matrix(size[0], size[1], rotation).astype(np.float64)
    out = rec.copy()
    brx, bry = rec[:, 0] + rec[:, 2], rec[:, 1] + rec[:, 3]
    cx, cy = (rec[:, 0] + brx) * F(0.5), (rec[:, 1] + bry) * F(0.5)
    nx = (m[0, 0] * cx + m[0, 1] * cy + m[0, 2]).astype(F)
    ny = (m[1, 0] * cx + m[1, 1] * cy + m[1, 2]).astype(F)
    out[:, 0], out[:, 1] = nx - (brx - cx), ny - (bry - cy)
    return out


def crop_labels(rec: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    out = rec.copy()
    out[:, 0] -= F(offset[0])
    out[:, 1] -= F(offset[1])
    return out


# -- the coverage generator ------------------------------------------------------------------------
@dataclass(frozen=True)
class CoverageGrid:
    """``RectangularCoverageGenerator`` built from a DetectNetGroundTruthParameter's values."""

    stride: int
    scale_cvg: float
    gridbox_min: bool  # GRIDBOX_MIN (else GRIDBOX_MAX)
    min_cvg_len: int
    max_cvg_len: int
    image_x: int
    image_y: int
    obj_norm: bool
    crop_bboxes: bool
    classes: tuple[tuple[int, int], ...]  # (src, dst), later mappings of one src win (std::map assignment)

    @classmethod
    def from_param(cls, g) -> "CoverageGrid":
        return cls(g.stride, g.scale_cvg, g.gridbox_type == 1, g.min_cvg_len, g.max_cvg_len, g.image_size_x,
                   g.image_size_y, g.obj_norm, g.crop_bboxes, tuple((m.src, m.dst) for m in g.object_class))

    @property
    def class_map(self) -> dict[int, int]:
        return dict(self.classes) if self.classes else {1: 0}

    @property
    def grid(self) -> tuple[int, int]:
        """(height, width) of the grid: cv::Rect from float sizes, rounded half to even (saturate_cast)."""
        inv = F(1.0 / self.stride)
        return int(np.rint(F(F(self.image_y) * inv))), int(np.rint(F(F(self.image_x) * inv)))

    @property
    def channels(self) -> int:
        return HEADER + max(self.class_map.values()) + 1

    def prune(self, rec: np.ndarray) -> np.ndarray:
        out = rec.copy()
        if self.crop_bboxes:
            x, y, w, h = rect_and(out[:, 0], out[:, 1], out[:, 2], out[:, 3], F(0), F(0), F(self.image_x),
                                  F(self.image_y))
            out[:, 0], out[:, 1], out[:, 2], out[:, 3] = x, y, w, h
        known = np.array([(c >= 0 and int(c) in self.class_map) for c in out[:, 5]], dtype=bool)
        keep = known & ~((out[:, 2] * out[:, 3]) < FLT_EPSILON)
        return out[keep]

    def coverage_box(self, x, y, w, h) -> tuple:
        cx, cy = F(F(x + F(x + w)) * F(0.5)), F(F(y + F(y + h)) * F(0.5))
        sw, sh = F(w * F(self.scale_cvg)), F(h * F(self.scale_cvg))
        if self.gridbox_min:
            sw = min(w, max(F(self.min_cvg_len), sw))
            sh = min(h, max(F(self.min_cvg_len), sh))
        else:
            sw = min(F(self.max_cvg_len), sw)
            sh = min(F(self.max_cvg_len), sh)
        ax, ay = F(cx + F(sw * F(0.5))), F(cy + F(sh * F(0.5)))
        bx, by = F(cx - F(sw * F(0.5))), F(cy - F(sh * F(0.5)))
        x0, y0 = min(ax, bx), min(ay, by)
        return x0, y0, F(max(ax, bx) - x0), F(max(ay, by) - y0)

    def grid_rect(self, x, y, w, h) -> tuple[int, int, int, int]:
        """``imageRectToGridRect``: (x0, y0, x1, y1) cells, clipped to the grid (empty: x0 == x1)."""
        s = F(self.stride)  # float stride, float quotients (Dtype)
        tx, ty = math.floor(F(F(x) / s)), math.floor(F(F(y) / s))
        bx, by = math.ceil(F(F(x + w) / s)), math.ceil(F(F(y + h) / s))
        x0, y0, x1, y1 = min(tx, bx), min(ty, by), max(tx, bx), max(ty, by)
        gh, gw = self.grid
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, gw), min(y1, gh)
        if x1 <= x0 or y1 <= y0:
            return 0, 0, 0, 0
        return x0, y0, x1, y1

    def generate(self, rec: np.ndarray) -> np.ndarray:
        """One image's records (after augmentation) -> (channels, grid_h, grid_w) float32."""
        gh, gw = self.grid
        out = np.zeros((self.channels, gh, gw), dtype=F)
        cmap = self.class_map
        s = F(self.stride)
        cell_area = F(self.stride * self.stride)
        min_norm = F(0.0 if self.obj_norm else 1.0)
        for r in self.prune(rec):
            x, y, w, h = r[0], r[1], r[2], r[3]
            cov = self.coverage_box(x, y, w, h)
            with np.errstate(divide="ignore", invalid="ignore"):
                norm = F(cell_area / F(cov[2] * cov[3]))
            x0, y0, x1, y1 = self.grid_rect(*cov)
            if x1 == x0:
                continue
            gy, gx = np.meshgrid(np.arange(y0, y1), np.arange(x0, x1), indexing="ij")
            cxs, cys = gx.astype(F) * s, gy.astype(F) * s
            _, _, iw, ih = rect_and(cov[0], cov[1], cov[2], cov[3], cxs, cys, s, s)
            hit = (F(iw * ih) / cell_area) > FLT_EPSILON
            yy, xx = gy[hit], gx[hit]
            cx, cy = cxs[hit], cys[hit]
            out[HEADER:, yy, xx] = 0
            out[HEADER + cmap[int(r[5])], yy, xx] = 1
            out[1, yy, xx] = x - cx
            out[2, yy, xx] = y - cy
            out[3, yy, xx] = F(x + w) - cx
            out[4, yy, xx] = F(y + h) - cy
            out[5, yy, xx] = F(1.0 / float(w))  # w, h != 0: pruned boxes have an area
            out[6, yy, xx] = F(1.0 / float(h))
            out[7, yy, xx] = max(min_norm, norm)
            out[0, yy, xx] = 1
        return out
