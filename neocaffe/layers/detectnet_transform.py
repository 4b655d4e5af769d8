"""NVCaffe's ``DetectNetTransformation`` (DIGITS DetectNet's training-time data/label transformation).

Lineage: NVIDIA/caffe (NVCaffe 0.15-0.17, ``caffe-0.17`` @ 87a2554):
``src/caffe/layers/detectnet_transform_layer.{cpp,cu}``, ``include/caffe/layers/detectnet_transform_layer.hpp``,
``src/caffe/util/detectnet_coverage_rectangular.cpp``; used by ``examples/kitti/detectnet_network.prototxt``
(bottoms ``data`` (N x 3 x H x W, 0..255) and ``label`` (DIGITS' bbox records, see
:mod:`neocaffe.layers._detectnet_labels`); tops ``transformed_data`` (N x 3 x image_size_y x image_size_x)
and ``transformed_label`` (N x (8 + classes) x grid_y x grid_x)).

Per image, an :class:`Augment` is drawn (``get_augmentations``). TRAIN, in NVCaffe's draw order: hue with
``hue_rotation_prob`` (``(u - 0.5) * 2 * hue_rotation``, clamped to +-180), desaturation with
``desaturation_prob`` (``1 - u * desaturation_max``), flip with ``flip_prob``, scale with ``scale_prob``
(``round(size * (scale_min + (scale_max - scale_min) u))``), rotation with ``rotation_prob``
(``(u - 0.5) * 2 * max_rotate_degree``), then the crop offset ``round(p * (before - image_size + shift) -
shift / 2)`` per axis with ``p = u`` and ``shift_x/y`` when a crop is drawn (``crop_prob``), else 0.5 and no
shift (``before``: the scaled size, or its rotated bounding size). Each event fires when ``u <= prob``. TEST:
nothing is drawn; the image (and its boxes) is scaled to image_size_x x image_size_y, offset 0.

The image follows the ``.cu`` (NVCaffe's GPU path, what DIGITS trains with; the ``.cpp`` differs, see below):
on the 0..255 values, colour first (per pixel, channel 0 taken as R: RGB -> HSV (``h`` in degrees, never
wrapped: ``if (h < 0)`` there compares the pointer), ``h -= hue_rotation``, ``s *= saturation``, HSV -> RGB
with any sector outside 0..4 taken as sector 5), done only when ``|hue| > FLT_EPSILON`` or
``saturation < 1 - 1/255``; then mean subtraction (``transform_param.mean_value`` (1 or 3 values, each
``v / 255 * 255`` in float) or ``mean_file`` resized to the bottom's size by OpenCV's INTER_CUBIC); then one
inverse mapping per output pixel: + crop offset, rotation by ``-angle`` about the centre of the rotated
(w - 1, h - 1) box, scale by ``(src - 1) / (scaled - 1)`` (align-corners), flip ``x -> W - 1 - x``, sampled
by a 4 x 4 Lagrange cubic (in double, each row rounded to float) whose taps replicate the border for one
pixel and read 0 beyond (so padding is 0 after mean subtraction).

The labels (both paths: the CPU) flip across the original width (``x -> W - x - w - 1``), scale, rotate
their centres by OpenCV's rotated-rectangle affine matrix, shift by the crop offset, and render into the
grid (:class:`neocaffe.layers._detectnet_labels.CoverageGrid`).

Where the ``.cpp`` (NVCaffe's CPU path) differs, followed the ``.cu``: the ``.cpp`` works on [0,1] values
(then times 255), uses OpenCV's BGR->HSV (channel 0 as B, hue wrapped) with ``h += hue_rotation`` (the same
sense of rotation as the ``.cu``'s, which mirrors the hue by swapping R and B; they differ only where the
``.cu``'s unwrapped hue leaves 0..360), resizes with ``cv::resize`` INTER_CUBIC (half-pixel centres),
rotates with ``warpAffine`` INTER_LINEAR/BORDER_TRANSPARENT and crops with zero padding.

Deviations: the random draws come from ``neocaffe.rng``'s NumPy generator (a float32 in [0, 1); NVCaffe's
boost stream and its order across layers cannot be reproduced), so seeded runs repeat within neocaffe;
``uniform`` (a callable) or :meth:`transform` with explicit :class:`Augment` s inject draws. The image is
computed in float32 with float64 where the ``.cu`` promotes; nvcc's FMA contraction and CUDA's ``cosf``
are not reproduced bit for bit. ``mean_value`` with 2 or more than 3 values (NVCaffe: uninitialised means)
is an error. The layer has no backward (NVCaffe's is empty): its bottoms take no diff.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers._detectnet_labels import (FLT_EPSILON, CoverageGrid, crop_labels, flip_labels,
                                               parse_labels, rotate_labels, rotated_size, scale_labels)
from neocaffe.layers.base import TRAIN, Example, Shape, legacy_shape
from neocaffe.layers.base import Layer
from neocaffe.layers.registry import register_layer

F = np.float32


@dataclass(frozen=True)
class Augment:
    """NVCaffe's ``AugmentSelection`` for one image."""

    hue_rotation: float = 0.0
    saturation: float = 1.0
    flip: bool = False
    scale: tuple[int, int] = (0, 0)  # (width, height)
    rotation: float = 0.0
    crop_offset: tuple[int, int] = (0, 0)  # (x, y)

    @property
    def do_hue(self) -> bool:
        return abs(F(self.hue_rotation)) > FLT_EPSILON

    @property
    def do_desaturation(self) -> bool:
        return float(F(self.saturation)) < 1.0 - 1.0 / 255

    @property
    def do_rotation(self) -> bool:
        return abs(F(self.rotation)) > FLT_EPSILON


def _round(v: float) -> int:
    """C's ``round``: half away from zero."""
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def draw_augment(a, width: int, height: int, image_x: int, image_y: int, train: bool,
                 uniform: Callable[[], float]) -> Augment:
    """``get_augmentations`` for an image of ``width`` x ``height``; ``a``: DetectNetAugmentationParameter."""
    if not train:
        return Augment(scale=(image_x, image_y))

    def u() -> np.float32:
        return F(uniform())

    hue, sat, scale, rot = F(0), F(1), (width, height), F(0)
    if u() <= F(a.hue_rotation_prob):
        hue = F(F(F(u() - F(0.5)) * F(2)) * F(a.hue_rotation))
        hue = F(max(min(hue, F(180)), F(-180)))
    if u() <= F(a.desaturation_prob):
        sat = F(1.0 - float(F(u() * F(a.desaturation_max))))
    flip = bool(u() <= F(a.flip_prob))
    if u() <= F(a.scale_prob):
        s = F(F(a.scale_min) + F(F(F(a.scale_max) - F(a.scale_min)) * u()))
        scale = (_round(float(F(F(width) * s))), _round(float(F(F(height) * s))))
    if u() <= F(a.rotation_prob):
        rot = F(F(F(u() - F(0.5)) * F(2)) * F(a.max_rotate_degree))
    before = scale
    if abs(rot) > FLT_EPSILON:
        before = rotated_size(scale[0], scale[1], float(rot))
    if u() <= F(a.crop_prob):
        px, py = float(u()), float(u())
        sx, sy = int(a.shift_x), int(a.shift_y)
    else:
        px, py, sx, sy = 0.5, 0.5, 0, 0
    crop = (_round(px * (before[0] - image_x + sx) - sx // 2), _round(py * (before[1] - image_y + sy) - sy // 2))
    return Augment(float(hue), float(sat), flip, scale, float(rot), crop)


# -- the image path (the .cu's kernels) ---------------------------------------------------------------
def color_transform(img: Tensor, aug: Augment) -> Tensor:
    """``color_transformations`` on one 3 x H x W float32 image (0..255)."""
    if not (aug.do_hue or aug.do_desaturation):
        return img
    r, g, b = img[0], img[1], img[2]
    mn, mx = torch.minimum(torch.minimum(r, g), b), torch.maximum(torch.maximum(r, g), b)
    delta = mx - mn
    gray = (mx == 0) | (delta == 0)
    h = torch.where(r == mx, (g - b) / delta, torch.where(g == mx, 2 + (b - r) / delta, 4 + (r - g) / delta)) * 60
    s = delta / mx
    h, s = torch.where(gray, 0.0, h), torch.where(gray, 0.0, s)
    v = mx
    if aug.do_hue:
        h = h - F(aug.hue_rotation)
    if aug.do_desaturation:
        s = s * F(aug.saturation)
    h = h / 60
    i = torch.floor(h)
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sectors = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v)]
    out = [v, p, q]  # the default: sector 5 (and any sector outside 0..5: the hue is never wrapped)
    for k, sec in enumerate(sectors):
        hit = i == k
        out = [torch.where(hit, sec[c], out[c]) for c in range(3)]
    grey = s == 0
    return torch.stack([torch.where(grey, v, out[c]) for c in range(3)])


def _cubic(d: Tensor, v1: Tensor, v2: Tensor, v3: Tensor, v4: Tensor) -> Tensor:
    """``cubic_interpolation`` (double arithmetic, as the literals promote it)."""
    inner = (-2.0 * v1 - 3.0 * v2 + 6.0 * v3 - 1.0 * v4
             + d * (3.0 * v1 - 6.0 * v2 + 3.0 * v3 + 0.0 * v4 + d * (-1.0 * v1 + 3.0 * v2 - 3.0 * v3 + 1.0 * v4)))
    return v2 + d * inner / 6.0


def _taps(c: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``get_value``'s index: -1 and n replicate the border, other outside indices read 0."""
    c = torch.where(c == -1, 0, torch.where(c == n, n - 1, c))
    ok = (c >= 0) & (c < n)
    return c.clamp(0, n - 1), ok


def sample_cubic(src: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``interpolate_xy`` at float32 source coordinates ``x``, ``y`` (Ho x Wo) of ``src`` (C x H x W)."""
    _, hgt, wid = src.shape
    fx, cx, fy, cy = torch.floor(x), torch.ceil(x), torch.floor(y), torch.ceil(y)
    dx, dy = (x - fx).double(), (y - fy).double()
    cols = [_taps(c.long(), wid) for c in (fx - 1, fx, cx, cx + 1)]
    rows = [_taps(r.long(), hgt) for r in (fy - 1, fy, cy, cy + 1)]
    srcd = src.double()
    zero = torch.zeros((), dtype=torch.float64, device=src.device)
    row_vals = []
    for ri, rok in rows:
        taps = [torch.where(rok & cok, srcd[:, ri, ci], zero) for ci, cok in cols]
        row_vals.append(_cubic(dx, *taps).float().double())  # interpolate_x returns Dtype
    return _cubic(dy, *row_vals).float()


def source_coords(aug: Augment, src_w: int, src_h: int, out_w: int, out_h: int,
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """``spatial_transformations``' inverse mapping: the source x, y (float32) of every output pixel."""
    y, x = torch.meshgrid(torch.arange(out_h, dtype=torch.float32, device=device),
                          torch.arange(out_w, dtype=torch.float32, device=device), indexing="ij")
    x, y = x + F(aug.crop_offset[0]), y + F(aug.crop_offset[1])
    if aug.do_rotation:
        wb, hb = F(aug.scale[0] - 1), F(aug.scale[1] - 1)
        angle = F(F(F(aug.rotation) * F(math.pi)) / F(180))
        c, s = F(math.cos(angle)), F(math.sin(angle))
        wa = F(abs(F(wb * c)) + abs(F(hb * s)))
        ha = F(abs(F(wb * s)) + abs(F(hb * c)))
        ccx, ccy = F(wa / F(2)), F(ha / F(2))
        sn = F(math.sin(-angle))
        tx, ty = x - ccx, y - ccy
        x, y = (tx * c - ty * sn) + ccx, (tx * sn + ty * c) + ccy
        x, y = x - F(F(wa - wb) / F(2)), y - F(F(ha - hb) / F(2))
    if src_w != aug.scale[0]:
        x = x * F(F(src_w - 1) / F(aug.scale[0] - 1))
    if src_h != aug.scale[1]:
        y = y * F(F(src_h - 1) / F(aug.scale[1] - 1))
    if aug.flip:
        x = (F(src_w) - x) - F(1)
    return x, y


@register_layer("DetectNetTransformation")
class DetectNetTransformation(Layer):
    """DIGITS DetectNet's augmentation + coverage/bbox ground truth (module docstring)."""

    exact_bottoms = 2
    exact_tops = 2
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param
        self.grid = CoverageGrid.from_param(p.detectnet_groundtruth_param)
        if self.grid.stride == 0:
            raise self.error("detectnet_groundtruth_param.stride must be positive")
        self.aug_param = p.detectnet_augmentation_param
        tp = p.transform_param
        #: the draw source: a callable giving a float in [0, 1] (tests inject fixed draws here)
        self.uniform: Callable[[], float] = lambda: float(rng.numpy_rng().random())
        self.mean_values: tuple[float, ...] | None = None
        self._mean_file: np.ndarray | None = None
        self._mean_sized: dict[tuple[int, int], np.ndarray] = {}
        if tp.HasField("mean_file"):
            from neocaffe.io.binaryproto import read_blobproto

            m = np.asarray(read_blobproto(tp.mean_file).data, dtype=F)
            m = m.reshape((-1,) + m.shape[-3:]) if m.ndim >= 3 else m
            if m.ndim != 4 or m.shape[1] != 3:
                raise self.error(f"transform_param.mean_file must hold a 3-channel mean; received shape {m.shape}")
            self._mean_file = np.ascontiguousarray(m[0].transpose(1, 2, 0))  # HWC, as blobToMats(...).at(0)
        elif len(tp.mean_value):
            if len(tp.mean_value) not in (1, 3):
                raise self.error(f"transform_param.mean_value takes 1 or 3 values; received {len(tp.mean_value)}")
            vals = list(tp.mean_value) * (3 if len(tp.mean_value) == 1 else 1)
            self.mean_values = tuple(float(F(F(F(v) / F(255)) * F(255))) for v in vals)
        self.reshape(bottom_shapes)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, c, _, _ = legacy_shape(bottom_shapes[0], self)
        ln = legacy_shape(bottom_shapes[1], self, "label bottom")[0]
        if c != 3:
            raise self.error(f"the image bottom must have 3 channels; received shape {tuple(bottom_shapes[0])}")
        if n != ln:
            raise self.error(f"image and label bottoms must have equal num; received {n} and {ln}")
        gh, gw = self.grid.grid
        return [(n, 3, self.grid.image_y, self.grid.image_x), (ln, self.grid.channels, gh, gw)]

    def _mean_image(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._mean_sized:
            m = self._mean_file
            if m.shape[:2] != (h, w):
                import cv2

                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_CUBIC)
            self._mean_sized[(h, w)] = np.ascontiguousarray(np.asarray(m, dtype=F).transpose(2, 0, 1))
        return self._mean_sized[(h, w)]

    def draw(self, width: int, height: int) -> Augment:
        return draw_augment(self.aug_param, width, height, self.grid.image_x, self.grid.image_y,
                            self.phase == TRAIN, self.uniform)

    def forward(self, data: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        self.reshape([tuple(data.shape), tuple(label.shape)])
        w, h = int(data.shape[3]), int(data.shape[2])
        augs = [self.draw(w, h) for _ in range(int(data.shape[0]))]
        return self.transform(data, label, augs)

    def transform(self, data: Tensor, label: Tensor, augs: Sequence[Augment]) -> tuple[Tensor, Tensor]:
        """Both tops for given augmentations (one per image)."""
        with torch.no_grad():
            src = data.detach().to(torch.float32).reshape(data.shape[0], 3, data.shape[2], data.shape[3])
            n, _, h, w = src.shape
            mean = None
            if self._mean_file is not None:
                mean = torch.from_numpy(self._mean_image(h, w)).to(src.device)
            elif self.mean_values is not None:
                mean = torch.tensor(self.mean_values, dtype=torch.float32, device=src.device).view(3, 1, 1)
            images = []
            for i, aug in enumerate(augs):
                img = color_transform(src[i], aug)
                if mean is not None:
                    img = img - mean
                x, y = source_coords(aug, w, h, self.grid.image_x, self.grid.image_y, src.device)
                images.append(sample_cubic(img, x, y))
            top0 = torch.stack(images) if images else src.new_zeros((0, 3, self.grid.image_y, self.grid.image_x))
            lab = label.detach().to("cpu", torch.float32).numpy().reshape(label.shape[0], -1)
            height = legacy_shape(tuple(label.shape), self, "label bottom")[2]
            maps = [self.label_map(lab[i], height, aug, (w, h)) for i, aug in enumerate(augs)]
            gh, gw = self.grid.grid
            top1 = (torch.from_numpy(np.stack(maps)) if maps
                    else torch.zeros((0, self.grid.channels, gh, gw)))
        return top0.to(data.dtype), top1.to(device=data.device, dtype=data.dtype)

    def label_map(self, flat: np.ndarray, height: int, aug: Augment, size: tuple[int, int]) -> np.ndarray:
        """``transform_label_cpu``: one image's label values -> its grid (float32)."""
        try:
            rec = parse_labels(flat, height)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        if aug.flip:
            rec = flip_labels(rec, size[0])
        if tuple(aug.scale) != tuple(size):
            rec = scale_labels(rec, size, aug.scale)
        if aug.do_rotation:
            rec = rotate_labels(rec, aug.scale, aug.rotation)
        rec = crop_labels(rec, aug.crop_offset)
        return self.grid.generate(rec)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(2)
        images = r.random((2, 3, 12, 20)) * 255
        labels = np.zeros((2, 1, 4, 16))
        labels[:, 0, 0, :2] = (2, 16)
        labels[0, 0, 1, :6] = (1, 2, 8, 6, 0, 1)
        labels[0, 0, 2, :6] = (10, 4, 9, 7, 0, 2)
        labels[1, 0, 0, 0] = 1
        labels[1, 0, 1, :6] = (-3, 5, 12, 9, 0, 1)
        gt = ('detectnet_groundtruth_param { stride: 4 scale_cvg: 0.5 gridbox_type: GRIDBOX_MIN min_cvg_len: 4 '
              'image_size_x: 16 image_size_y: 12 obj_norm: true object_class { src: 1 dst: 0 } '
              'object_class { src: 2 dst: 1 } }')
        head = 'name: "t" type: "DetectNetTransformation" bottom: "data" bottom: "label" top: "tdata" top: "tlabel" '
        aug = ('detectnet_augmentation_param { crop_prob: 1 shift_x: 2 shift_y: 2 flip_prob: 0.5 scale_prob: 0.5 '
               'scale_min: 0.8 scale_max: 1.2 rotation_prob: 0.5 max_rotate_degree: 5 hue_rotation_prob: 0.5 '
               'hue_rotation: 30 desaturation_prob: 0.5 desaturation_max: 0.8 } ')
        return [Example(head + gt + ' transform_param { mean_value: 127 }', [images, labels],
                        grad_bottoms=(), grad_params=False, phase=1),
                Example(head + gt + aug + ' transform_param { mean_value: 100 mean_value: 110 mean_value: 120 }',
                        [images, labels], grad_bottoms=(), grad_params=False, phase=0)]
