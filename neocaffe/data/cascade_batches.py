"""Batches of Cascade R-CNN's DetectionData and EvalData layers (zhaoweicai/cascade-rcnn @
2252f46158ea6555868ca6fa5c221ea71d9b5e6c, ``src/caffe/layers/detection_data_layer.cpp`` and
``eval_data_layer.cpp`` load_batch; the photometric distortion is SSD's ``ApplyDistort``,
:func:`neocaffe.data.annotated_batches.distort`).

DetectionData, per image of the batch (batch ``k`` holds list places ``k * B .. k * B + B - 1`` of the
passes' orders, :func:`neocaffe.data.cascade_windows.list_order`): distort, mirror, resize (``resize_width``/
``resize_height``, ``resize_ratio`` or the short side to ``round(short_size * template_ratio / 32) * 32``),
the first image of the batch fixing the template (``crop_*`` / ``short_size`` x ``long_size`` by its
orientation, else its size), an optional random rescale about a chosen box (``min_scale``/``max_scale`` or
``low_scale_ratio``/``high_scale_ratio`` with probability ``multiscale_prob``, ``min_whaspect``/``max_whaspect``),
then a crop or a pad into the template near the chosen box with +-10 pixels of noise. Labels per stride:
anchors of ``field_w`` x ``field_h`` at ``(w + 0.5) * stride`` take the best-overlapping box (IoU >
``fg_threshold``: ``[label (0 for ignored boxes), cx, cy, w, h, IoU]``), else overlap 1 where the anchor is
outside the copied image (or ``anchor_ignore_*``) or covered by ignored regions (``ignore_fg_threshold``),
else its best IoU; boxes no anchor took are picked up at their centre in their best blob
(``pickup_iou_thr``). Random draws come from ``(seed, k)`` in the fork's order (template ratio; per image the
distortion, mirror coin, chosen box (or centre), multiscale coin, log scale, log aspect, noise x, noise y).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from neocaffe.data.annotated_batches import distort
from neocaffe.data.cascade_windows import CascadeWindows, bbox_overlap, list_order
from neocaffe.data.datum import DatumError, read_image
from neocaffe.data.shard import global_batch

__all__ = ["DetectionBatchMaker", "DetectionConfig", "EvalBatchMaker", "anchor_labels", "c_round"]

f32 = np.float32


def c_round(v: float) -> int:
    """C's ``round``: half away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


@dataclass
class DetectionConfig:
    """The ``detection_data_param`` / ``transform_param`` fields a batch reads (None: field unset)."""

    batch_size: int
    strides: list[int]
    field_ws: list[float]
    field_hs: list[float]
    mirror: bool = False
    scale: float = 1.0
    mean: list[float] | None = None
    fg_threshold: float = 0.5
    ignore_fg_threshold: float = 0.4
    min_gt_width: float = 0.0
    min_gt_height: float = 0.0
    resize_wh: tuple[int, int] | None = None
    resize_ratio: float | None = None
    short_long: tuple[int, int] | None = None
    crop_wh: tuple[int, int] | None = None
    crop_short_long: tuple[int, int] | None = None
    template_ratios: list[float] = field(default_factory=list)
    scale_range: tuple[float, float] | None = None        # min_scale, max_scale
    ratio_range: tuple[float, float] | None = None        # low_scale_ratio, high_scale_ratio
    multiscale_prob: float = 0.5
    whaspect: tuple[float, float] | None = None
    anchor_margin: float | None = None
    anchor_iou: float | None = None
    pickup_iou_thr: float = 0.2
    shuffle: str | None = None
    mix_group_size: int = 64
    distort: Any = None                                    # DistortionParameter or None
    template: tuple[int, int] = (0, 0)                     # setup's (height, width)

    @property
    def need_reshape(self) -> bool:
        return self.crop_wh is None and self.resize_wh is None


def _load(path: str, cwd: str, where: str) -> np.ndarray:
    img = read_image(os.path.join(cwd, path), is_color=True)
    if img is None:
        raise DatumError(f"{where}: Could not open or find file {path}")
    return img


def anchor_labels(cfg: DetectionConfig, nn: int, th: int, tw: int, src: tuple[int, int], copy: tuple[int, int],
                  gts: np.ndarray, roni: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label blob ``nn`` of one image (6, lh, lw), each box's best IoU over the considered anchors and
    whether the image's boxes matched any anchor. ``src``: the image's (x, y) offset in the template,
    ``copy``: its copied (w, h); ``gts`` (k, 7) ``[label, ignore, difficult, x1, y1, x2, y2]`` float32."""
    s = cfg.strides[nn]
    lh, lw = c_round(f32(th) / f32(s)), c_round(f32(tw) / f32(s))
    ox, oy = c_round(f32(src[0]) / f32(s)), c_round(f32(src[1]) / f32(s))
    cw, ch = c_round(f32(copy[0]) / f32(s)), c_round(f32(copy[1]) / f32(s))
    out = np.zeros((6, lh, lw), f32)
    rw, rh = f32(cfg.field_ws[nn]) / f32(2), f32(cfg.field_hs[nn]) / f32(2)
    cx = ((np.arange(lw) + 0.5) * s)[None, :]
    cy = ((np.arange(lh) + 0.5) * s)[:, None]
    x1, x2 = np.broadcast_to(f32(cx - rw), (lh, lw)), np.broadcast_to(f32(cx + rw), (lh, lw))
    y1, y2 = np.broadcast_to(f32(cy - rh), (lh, lw)), np.broadcast_to(f32(cy + rh), (lh, lw))
    anchors = np.stack([x1, y1, x2, y2], -1)
    hh, ww = np.meshgrid(np.arange(lh), np.arange(lw), indexing="ij")
    outside = (ww < ox) | (ww >= ox + cw) | (hh < oy) | (hh >= oy + ch)
    if cfg.anchor_margin is not None:
        wm, hm = f32(cfg.anchor_margin) * rw, f32(cfg.anchor_margin) * rh
        outside |= ((x1 < src[0] - wm) | (x2 >= src[0] + copy[0] + wm) | (y1 < src[1] - hm)
                    | (y2 >= src[1] + copy[1] + hm))
    elif cfg.anchor_iou is not None:
        image = np.array([src[0], src[1], src[0] + copy[0], src[1] + copy[1]], f32)
        outside |= bbox_overlap(anchors, image, "IOFU") < f32(cfg.anchor_iou)
    ignore_sum = np.zeros((lh, lw), f32)
    for r in roni:                                    # summed in the fork's order, in float
        ignore_sum = (ignore_sum + bbox_overlap(anchors, r, "IOFU")).astype(f32)
    k = len(gts)
    iou = bbox_overlap(gts[None, None, :, 3:7], anchors[:, :, None, :]) if k else np.zeros((lh, lw, 0), f32)
    max_iou = iou.max(-1, initial=0).astype(f32)
    match = np.where(max_iou > 0, iou.argmax(-1) if k else 0, -1)
    fg = ~outside & (max_iou > f32(cfg.fg_threshold))
    g = gts[np.clip(match, 0, None)] if k else np.zeros((lh, lw, 7), f32)
    out[0] = np.where(fg & (g[..., 1] == 0), g[..., 0], 0)
    out[1] = np.where(fg, (g[..., 3] + g[..., 5]) / f32(2), 0)
    out[2] = np.where(fg, (g[..., 4] + g[..., 6]) / f32(2), 0)
    out[3] = np.where(fg, g[..., 5] - g[..., 3] + f32(1), 0)
    out[4] = np.where(fg, g[..., 6] - g[..., 4] + f32(1), 0)
    ignored = ~fg & ~outside & (ignore_sum >= f32(cfg.ignore_fg_threshold))
    out[5] = np.where(outside | ignored, f32(1), max_iou)
    best = np.where(~outside[..., None], iou, 0).reshape(lh * lw, k).max(0, initial=0).astype(f32)
    matched = np.bincount(match[fg], minlength=k)[:k] > 0
    return out, best, matched


class DetectionBatchMaker:
    """Batch ``k`` of a DetectionData layer (see the module docstring)."""

    def __init__(self, windows: CascadeWindows, cfg: DetectionConfig, seed: int, output_gt: bool,
                 rank: int = 0, world: int = 1) -> None:
        self.windows, self.cfg, self.seed, self.output_gt = windows, cfg, int(seed), output_gt
        self.rank, self.world = int(rank), int(world)
        self.cwd = os.getcwd()
        self._orders: dict[int, np.ndarray] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: list_order(self.windows, self.cfg.shuffle, self.seed, epoch,
                                              self.cfg.mix_group_size)}
        return self._orders[epoch]

    def image_at(self, place: int) -> int:
        n = len(self.windows.images)
        return int(self.order(place // n)[place % n])

    def make(self, k: int) -> dict:
        cfg, gb = self.cfg, global_batch(k, self.rank, self.world)
        g = np.random.default_rng([self.seed, 0, gb])
        ratio = f32(cfg.template_ratios[int(g.integers(0, len(cfg.template_ratios)))]) if cfg.template_ratios else f32(1)
        th, tw = cfg.template
        data, labels, gt_rows = None, [], []
        for item in range(cfg.batch_size):
            index = self.image_at(gb * cfg.batch_size + item)
            path, _, line = self.windows.images[index]
            img = _load(path, self.cwd, f"{self.windows.path}:{line}")
            img, gts, roni, th, tw, src, copy = self._geometry(img, index, item, g, ratio, th, tw)
            if item == 0:
                c = img.shape[2]
                data = np.zeros((cfg.batch_size, c, th, tw), f32)
                labels = [np.zeros((cfg.batch_size, 6, c_round(f32(th) / f32(s)), c_round(f32(tw) / f32(s))), f32)
                          for s in cfg.strides]
            self._copy(data, item, img, src, copy)
            self._labels(labels, item, gts, roni, th, tw, src, copy, gt_rows)
        gt = np.asarray(gt_rows, f32).reshape(-1, 8) if gt_rows else np.full((1, 8), -1, f32)
        out = {"data": data, "labels": labels}
        if self.output_gt:
            out["gt"] = gt
        return out

    def _geometry(self, img: np.ndarray, index: int, item: int, g: np.random.Generator, ratio: np.float32,
                  th: int, tw: int):
        """Distort, mirror, resize, rescale and place one image: (image, boxes, regions, template h, w,
        (src x, src y), (copy w, copy h)); the image returned is the part copied (dst offsets applied)."""
        cfg = self.cfg
        gts, roni = self.windows.gts[index].copy(), self.windows.roni[index].copy()
        if cfg.distort is not None:
            img = distort(img, cfg.distort, g)
        h, w = img.shape[:2]
        if cfg.mirror and g.integers(0, 2):
            img = img[:, ::-1]
            gts[:, [3, 5]] = np.stack([f32(w) - gts[:, 5], f32(w) - gts[:, 3]], 1)
            roni[:, [0, 2]] = np.stack([f32(w) - roni[:, 2], f32(w) - roni[:, 0]], 1)
        if cfg.resize_wh is not None:
            rw, rh = cfg.resize_wh
        elif cfg.resize_ratio is not None:
            rw, rh = c_round(f32(w) * f32(cfg.resize_ratio)), c_round(f32(h) * f32(cfg.resize_ratio))
        elif cfg.short_long is not None:
            short = c_round(f32(f32(cfg.short_long[0]) * ratio) / f32(32)) * 32
            sc = f32(short) / f32(min(w, h))
            rw, rh = c_round(f32(w) * sc), c_round(f32(h) * sc)
        else:
            rw, rh = w, h
        if (rw, rh) != (w, h):
            fx, fy = f32(rw) / f32(w), f32(rh) / f32(h)
            img = cv2.resize(np.ascontiguousarray(img), (rw, rh), interpolation=cv2.INTER_LINEAR)
            _affine(gts, roni, fx, fy, 0, 0)
        h, w = img.shape[:2]
        if item == 0 and cfg.need_reshape:
            th, tw = self._template(h, w, ratio)
        if len(gts):
            sel = int(g.integers(0, len(gts)))
            scx, scy = f32(float(gts[sel, 3] + gts[sel, 5]) / 2.0), f32(float(gts[sel, 4] + gts[sel, 6]) / 2.0)
        else:
            sel = -1
            scx = f32(w / 2.0) if tw > w else f32(int(g.integers(0, w - tw + 1)) + tw / 2.0)
            scy = f32(h / 2.0) if th > h else f32(int(g.integers(0, h - th + 1)) + th / 2.0)
        wf = hf = f32(1)
        if g.random() < cfg.multiscale_prob and (cfg.scale_range or cfg.ratio_range):
            wf, hf = self._rescale(g, gts, sel)
        rsh, rsw = c_round(f32(h) * hf), c_round(f32(w) * wf)
        if wf != 1 or hf != 1:
            if wf > 1.5 or hf > 1.5:
                cw_, ch_ = min(c_round(1.2 * w / float(wf)), w), min(c_round(1.2 * h / float(hf)), h)
                x1, y1 = max(c_round(float(scx) - cw_ * 0.5), 0), max(c_round(float(scy) - ch_ * 0.5), 0)
                x1 -= max(x1 + cw_ - w, 0)
                y1 -= max(y1 + ch_ - h, 0)
                img = img[y1:y1 + ch_, x1:x1 + cw_]
                scx, scy = f32(scx - f32(x1)), f32(scy - f32(y1))
                _affine(gts, roni, f32(1), f32(1), -x1, -y1)
                rsw, rsh = c_round(f32(img.shape[1]) * wf), c_round(f32(img.shape[0]) * hf)
            img = cv2.resize(np.ascontiguousarray(img), (rsw, rsh), interpolation=cv2.INTER_LINEAR)
        _affine(gts, roni, wf, hf, 0, 0)
        nx, ny = int(g.integers(0, 20)) - 10, int(g.integers(0, 20)) - 10
        sx, dx, cpw = _place(tw, rsw, float(scx), wf, nx)
        sy, dy, cph = _place(th, rsh, float(scy), hf, ny)
        _affine(gts, roni, f32(1), f32(1), sx - dx, sy - dy)
        if cpw > img.shape[1] or cph > img.shape[0]:
            raise DatumError(f"{self.windows.path}: image {index} copies {cpw} x {cph} pixels from {img.shape[1]} x "
                             f"{img.shape[0]}")
        return img[dy:dy + cph, dx:dx + cpw], gts, roni, th, tw, (sx, sy), (cpw, cph)

    def _template(self, h: int, w: int, ratio: np.float32) -> tuple[int, int]:
        cfg = self.cfg
        if cfg.crop_short_long is not None:
            s, lo = cfg.crop_short_long
            return (lo, s) if h >= w else (s, lo)
        if cfg.short_long is not None:
            s, lo = cfg.short_long
            tw_, th_ = (s, lo) if h >= w else (lo, s)
            return c_round(f32(f32(th_) * ratio) / f32(32)) * 32, c_round(f32(f32(tw_) * ratio) / f32(32)) * 32
        return h, w

    def _rescale(self, g: np.random.Generator, gts: np.ndarray, sel: int) -> tuple[np.float32, np.float32]:
        cfg = self.cfg
        if cfg.ratio_range is not None:
            lo, hi = f32(math.log2(f32(cfg.ratio_range[0]))), f32(math.log2(f32(cfg.ratio_range[1])))
        elif sel >= 0:
            ow, oh = f32(gts[sel, 5] - gts[sel, 3] + f32(1)), f32(gts[sel, 6] - gts[sel, 4] + f32(1))
            obj = f32(math.sqrt(f32(ow * oh)))
            lo, hi = f32(math.log2(f32(cfg.scale_range[0]) / obj)), f32(math.log2(f32(cfg.scale_range[1]) / obj))
        else:
            lo = hi = f32(1)
        if hi < lo:
            raise DatumError(f"multiscale range is empty ({lo} > {hi})")
        s = f32(2 ** float(f32(g.uniform(lo, hi))))
        wf = hf = s
        if cfg.whaspect is not None:
            a_lo, a_hi = f32(math.log2(f32(cfg.whaspect[0]))), f32(math.log2(f32(cfg.whaspect[1])))
            a = f32(2 ** float(f32(g.uniform(a_lo, a_hi))))
            wf, hf = f32(wf * f32(math.sqrt(a))), f32(hf / f32(math.sqrt(a)))
        return wf, hf

    def _copy(self, data: np.ndarray, item: int, img: np.ndarray, src: tuple[int, int], copy: tuple[int, int]) -> None:
        cfg = self.cfg
        x = img.transpose(2, 0, 1).astype(f32)
        if cfg.mean is not None:
            x = x - np.asarray(cfg.mean, f32)[:, None, None]
        data[item, :, src[1]:src[1] + copy[1], src[0]:src[0] + copy[0]] = x * f32(cfg.scale)

    def _labels(self, labels: list[np.ndarray], item: int, gts: np.ndarray, roni: np.ndarray, th: int, tw: int,
                src: tuple[int, int], copy: tuple[int, int], gt_rows: list) -> None:
        cfg = self.cfg
        cx, cy = (gts[:, 3] + gts[:, 5]) / f32(2), (gts[:, 4] + gts[:, 6]) / f32(2)
        bw, bh = gts[:, 5] - gts[:, 3] + f32(1), gts[:, 6] - gts[:, 4] + f32(1)
        gts[:, 1] = np.where((cx < 0) | (cx >= tw) | (cy < 0) | (cy >= th) | (bw < f32(cfg.min_gt_width))
                             | (bh < f32(cfg.min_gt_height)), 1, gts[:, 1] != 0)
        for b in gts:                                   # BBox's ignore / difficult are bools
            gt_rows.append([item, b[3], b[4], b[5], b[6], b[0], float(b[1] != 0), float(b[2] != 0)])
        k = len(gts)
        best, blob, matched = np.zeros(k, f32), np.zeros(k, np.int64), np.zeros(k, bool)
        for nn in range(len(cfg.strides)):
            lab, b, m = anchor_labels(cfg, nn, th, tw, src, copy, gts, roni)
            labels[nn][item] = lab
            better = b > best
            best, blob = np.where(better, b, best), np.where(better, nn, blob)
            matched |= m
        for j in range(k):                                            # pick up the boxes no anchor took
            if gts[j, 1] or matched[j] or not len(cfg.strides) or best[j] < f32(cfg.pickup_iou_thr):
                continue
            nn, s = int(blob[j]), cfg.strides[int(blob[j])]
            lab = labels[nn][item]
            hc = min(max(math.floor(cy[j] / f32(s)), 0), lab.shape[1] - 1)
            wc = min(max(math.floor(cx[j] / f32(s)), 0), lab.shape[2] - 1)
            if lab[0, hc, wc] > 0:
                continue
            lab[:, hc, wc] = [gts[j, 0], cx[j], cy[j], bw[j], bh[j], best[j]]


def _affine(gts: np.ndarray, roni: np.ndarray, sx: Any, sy: Any, dx: Any, dy: Any) -> None:
    """AffineBBoxes on the boxes (columns 3..6) and the regions, in float32, in place."""
    for arr, c in ((gts, 3), (roni, 0)):
        arr[:, [c, c + 2]] = f32(sx) * arr[:, [c, c + 2]] + f32(dx)
        arr[:, [c + 1, c + 3]] = f32(sy) * arr[:, [c + 1, c + 3]] + f32(dy)


def _place(t: int, r: int, center: float, factor: Any, noise: int) -> tuple[int, int, int]:
    """One axis of the copy: (offset in the template, offset in the image, length)."""
    if r < t:
        return min(max(c_round((t - r) / 2.0) + noise, 0), t - r), 0, r
    if r > t:
        c = c_round(f32(f32(center) * f32(factor))) + noise
        return 0, min(max(c - c_round(t / 2.0), 0), r - t), t
    return 0, 0, t


class EvalBatchMaker:
    """Batch ``k`` of an EvalData layer: the listed images in order, resized (``resize`` (w, h), or the short
    side to ``short_size`` with each side at most ``long_size``), each side then rounded to a multiple of 32;
    ``(pixel - mean) * scale``; ground truth ``[item, x1, y1, x2, y2, label, ignore, difficult]`` in the
    resized image (one row of -1 without any) and each image's (height, width)."""

    def __init__(self, windows: CascadeWindows, batch_size: int, scale: float, mean: list[float] | None,
                 resize: tuple[int, int] | None, short_long: tuple[int, int] | None, rank: int = 0, world: int = 1):
        self.windows, self.batch_size, self.scale, self.mean = windows, int(batch_size), f32(scale), mean
        self.resize, self.short_long, self.rank, self.world = resize, short_long, int(rank), int(world)
        self.cwd = os.getcwd()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def make(self, k: int) -> dict:
        n = len(self.windows.images)
        gb = global_batch(k, self.rank, self.world)
        data, rows, sizes = None, [], np.zeros((self.batch_size, 2), f32)
        for item in range(self.batch_size):
            index = (gb * self.batch_size + item) % n
            path, _, line = self.windows.images[index]
            img = _load(path, self.cwd, f"{self.windows.path}:{line}")
            h, w = img.shape[:2]
            rw, rh = w, h
            if self.resize is not None:
                rw, rh = self.resize
            elif self.short_long is not None:
                sc = f32(self.short_long[0]) / f32(min(w, h))
                rw, rh = min(c_round(f32(w) * sc), self.short_long[1]), min(c_round(f32(h) * sc), self.short_long[1])
            rw, rh = c_round(rw / 32.0) * 32, c_round(rh / 32.0) * 32
            gts = self.windows.gts[index].copy()
            if (rw, rh) != (w, h):
                img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
                _affine(gts, np.zeros((0, 4), f32), f32(rw) / f32(w), f32(rh) / f32(h), 0, 0)
            if item == 0:
                data = np.zeros((self.batch_size, img.shape[2], rh, rw), f32)
            if img.shape[:2] != data.shape[2:]:
                raise DatumError(f"{self.windows.path}:{line}: image {path} resizes to {rw} x {rh}, the batch's first "
                                 f"to {data.shape[3]} x {data.shape[2]}; EvalData needs batch_size 1 or resize_width/height")
            sizes[item] = (rh, rw)
            x = img.transpose(2, 0, 1).astype(f32)
            if self.mean is not None:
                x = x - np.asarray(self.mean, f32)[:, None, None]
            data[item] = x * self.scale
            rows += [[item, b[3], b[4], b[5], b[6], b[0], float(b[1] != 0), float(b[2] != 0)] for b in gts]
        gt = np.asarray(rows, f32).reshape(-1, 8) if rows else np.full((1, 8), -1, f32)
        return {"data": data, "gt": gt, "sizes": sizes}
