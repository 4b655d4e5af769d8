"""TSN's data transformer: fixed-position and multi-scale crops, optical-flow mirroring, grouped mean values.

Lineage: yjxiong/caffe, branch ``action_recog`` @ 9831a2b4 (the Caffe of Temporal Segment Networks),
``src/caffe/data_transformer.cpp``: ``DataTransformer::Transform(const Datum&, Dtype*)`` with
``fillFixOffset`` and ``fillCropSize``. ``transform_param`` fields read: ``crop_size``, ``mirror``, ``scale``,
``mean_value`` / ``mean_file``, ``multi_scale``, ``scale_ratios`` (empty: the fork's ``1, .875, .75, .66``),
``max_distort``, ``fix_crop``, ``more_fix_crop``, ``is_flow``.

Per item, in the fork's order of draws: ``mirror`` draws a coin (in every phase, as the fork: TSN's TEST nets
set ``mirror: false``); then, in TRAIN with a ``crop_size``: ``multi_scale`` picks one of the crop sizes
``int(min(H, W) * r)`` (r, r' in the ratios, snapped to ``crop_size`` within 3 pixels, pairs with
``|i - j| <= max_distort``), and ``fix_crop`` one of the 5 (``more_fix_crop``: 13) offsets on the quarter grid
``(H - crop_h) / 4``, else a uniform offset. TEST: the centre ``crop_size`` crop. A crop of another size than
``crop_size`` is resized to it (``cv2.resize``, bilinear, on the uint8 channels, as the fork). With ``is_flow``
and a mirror, the even channels (the x components of flow) become ``255 - v``, then the crop is flipped.
The value is ``(v - mean) * scale`` in float32; the mean values repeat in groups (9 values for 3 RGB
segments, 1 for all; the fork's CHECK: channels a multiple of their count); a ``mean_file`` is read at the
crop's offset (with ``multi_scale``: at (0, 0), the fork's index). The draws are neocaffe's (a generator
seeded per batch); the fork's ``caffe_rng_rand`` stream is not reproduced.

Transforming is split as the rest of neocaffe's data path: :func:`crop_item` makes the uint8 crop (resized,
flow-inverted, flipped) on the host, and the layer subtracts the mean and scales on its device.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from neocaffe.data.datum import DatumError

__all__ = ["DEFAULT_SCALE_RATIOS", "Draw", "TSNTransform", "crop_item", "crop_sizes", "draw_item",
           "fix_offsets", "group_means"]

f32 = np.float32
DEFAULT_SCALE_RATIOS = (f32(1.0), f32(0.875), f32(0.75), f32(0.66))  # the fork's _scale_rates


@dataclass(frozen=True)
class TSNTransform:
    """The ``transform_param`` fields TSN's VideoData reads, and the phase."""

    crop: int = 0
    mirror: bool = False
    multi_scale: bool = False
    fix_crop: bool = False
    more_fix_crop: bool = False
    scale_ratios: tuple[float, ...] = ()
    max_distort: int = 1
    is_flow: bool = False
    train: bool = False
    mean_file_fixed: bool = False  # multi_scale: a mean_file is read at (0, 0), not at the crop's offset


@dataclass(frozen=True)
class Draw:
    """One item's draws: the mirror coin, the crop's size and its offset."""

    mirror: bool
    crop_h: int
    crop_w: int
    h_off: int
    w_off: int


def fix_offsets(height: int, width: int, crop_h: int, crop_w: int, more: bool) -> list[tuple[int, int]]:
    """``fillFixOffset``: the corners and the centre (``more``: 8 more) on the quarter grid of the margins."""
    hq, wq = (height - crop_h) // 4, (width - crop_w) // 4
    out = [(0, 0), (0, 4 * wq), (4 * hq, 0), (4 * hq, 4 * wq), (2 * hq, 2 * wq)]
    if more:
        out += [(0, 2 * wq), (4 * hq, 2 * wq), (2 * hq, 0), (2 * hq, 4 * wq),
                (hq, wq), (hq, 3 * wq), (3 * hq, wq), (3 * hq, 3 * wq)]
    return out


def crop_sizes(height: int, width: int, crop: int, max_distort: int,
               ratios: tuple[float, ...] = ()) -> list[tuple[int, int]]:
    """``fillCropSize``: (crop_h, crop_w) for every pair of ratios at most ``max_distort`` apart in the list."""
    rates = [f32(r) for r in ratios] if ratios else list(DEFAULT_SCALE_RATIOS)
    base = f32(min(height, width))
    sizes = [int(base * r) for r in rates]  # float32 product, truncated (the fork's int())
    sizes = [crop if abs(s - crop) < 3 else s for s in sizes]
    return [(sizes[i], sizes[j]) for i in range(len(rates)) for j in range(len(rates)) if abs(i - j) <= max_distort]


def draw_item(t: TSNTransform, height: int, width: int, g: np.random.Generator) -> Draw:
    """An item's draws in the fork's order: mirror coin, crop size (multi_scale), offset."""
    mirror = bool(t.mirror and g.integers(0, 2))
    if not t.crop:
        return Draw(mirror, height, width, 0, 0)
    if not t.train:
        return Draw(mirror, t.crop, t.crop, (height - t.crop) // 2, (width - t.crop) // 2)
    ch = cw = t.crop
    if t.multi_scale:
        sizes = crop_sizes(height, width, t.crop, t.max_distort, t.scale_ratios)
        ch, cw = sizes[int(g.integers(0, len(sizes)))]
    if ch > height or cw > width:
        raise DatumError(f"the multi-scale crop {ch}x{cw} is larger than the {height}x{width} frames "
                         "(scale_ratios above 1?)")
    if t.fix_crop:
        offs = fix_offsets(height, width, ch, cw, t.more_fix_crop)
        h_off, w_off = offs[int(g.integers(0, len(offs)))]
    else:
        h_off, w_off = int(g.integers(0, height - ch + 1)), int(g.integers(0, width - cw + 1))
    return Draw(mirror, ch, cw, h_off, w_off)


def crop_item(datum: np.ndarray, t: TSNTransform, d: Draw) -> np.ndarray:
    """The uint8 crop of ``datum`` (C x H x W) for draw ``d``: cut, resized to ``crop`` x ``crop`` where its
    size differs, flow's x channels inverted when mirrored, flipped left-right when mirrored."""
    x = datum[:, d.h_off:d.h_off + d.crop_h, d.w_off:d.w_off + d.crop_w]
    if t.crop and (d.crop_h != t.crop or d.crop_w != t.crop):  # need_imgproc: resize channel by channel
        x = np.stack([cv2.resize(np.ascontiguousarray(c), (t.crop, t.crop)) for c in x])
    if d.mirror:
        if t.is_flow:
            x = x.copy()
            x[0::2] = 255 - x[0::2]
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x)


def group_means(values: list[float], channels: int) -> np.ndarray:
    """The per-channel mean of ``mean_value``: one value for every channel, or a group repeated to fill the
    channels (the fork's CHECK: ``channels`` a multiple of the group)."""
    if not values:
        return np.zeros(channels, f32)
    if len(values) != 1 and channels % len(values):
        raise DatumError(f"Specify either 1 mean_value or as many as channels: {channels}; received "
                         f"{len(values)} values (a group of them must divide the channels)")
    return np.asarray([values[c % len(values)] for c in range(channels)], f32)
