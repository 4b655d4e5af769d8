"""R-CNN's window file and the batches of BVLC Caffe's WindowDataLayer (``src/caffe/layers/window_data_layer.cpp``).

The window file repeats, per image: ``# <image_index>``, the image path (``root_folder`` prepended),
its channels, height and width, the number of windows, then one ``<class> <overlap> <x1> <y1> <x2> <y2>``
line per window. A window with ``overlap >= fg_threshold`` is foreground (its class must be > 0); one
with ``overlap < bg_threshold`` is background (class and overlap set to 0); others are dropped.

A batch takes ``batch_size - int(batch_size * fg_fraction)`` background windows, then the foreground
ones, each drawn uniformly with replacement and mirrored at random (``mirror``). Each window is cut
from its colour image and warped (bilinear) to ``crop_size`` x ``crop_size``; with ``context_pad`` or
``crop_mode: "square"`` the window is first grown about its centre (square: to its longer side) so that
``context_pad`` pixels of context surround it after warping, clipped to the image, and the part outside
the image stays 0 in the top. Pixels become ``(pixel - mean) * scale`` with the mean file's value at the
pixel's place in the crop (offset ``(mean_width - crop_size) / 2`` on both axes, as Caffe) or the
channel's ``mean_value``. Caffe's float arithmetic and ``round`` (half away from zero) are kept. The
draws come from ``(seed, k)`` for batch ``k``, so any number of workers gives the same batches (Caffe's
boost stream cannot be reproduced).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from neocaffe.data.datum import DatumError, read_image
from neocaffe.data.shard import global_batch
from neocaffe.data.sources import DataSourceError

__all__ = ["WindowFile", "WindowBatchMaker", "read_window_file", "warp_window"]

#: columns of a window row
IMAGE, LABEL, OVERLAP, X1, Y1, X2, Y2 = range(7)


@dataclass
class WindowFile:
    """The images (path as read with ``root_folder``, (C, H, W) as listed, line of its ``#``) and the
    foreground and background windows as float32 rows ``[image, label, overlap, x1, y1, x2, y2]``."""

    path: str
    images: list[tuple[str, tuple[int, int, int], int]]
    fg: np.ndarray
    bg: np.ndarray
    lines: dict[str, np.ndarray]  # "fg"/"bg": the window file line of each row


class WindowTokens:
    """The whitespace-separated tokens of a window file (Fast R-CNN's, cascade-rcnn's), each with its line number,
    read in order by :meth:`take`; every error names the file and line."""

    def __init__(self, path: str) -> None:
        self.path, self.pos = path, 0
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                self.toks = [(tok, no) for no, line in enumerate(f, 1) for tok in line.split()]
        except OSError as e:
            raise DataSourceError(f"Failed to open window file {path}: {e.strerror or e}") from None

    def __len__(self) -> int:
        return len(self.toks)

    @property
    def more(self) -> bool:
        return self.pos < len(self.toks)

    @property
    def line(self) -> int:
        """The line of the token read last."""
        return self.toks[self.pos - 1][1] if self.pos else 0

    def take(self, what: str, kind: type = int) -> Any:
        """(the next token as ``kind``: int, float or str, its line); ``what``: what the file should hold there."""
        if self.pos >= len(self.toks):
            last = self.toks[-1][1] if self.toks else 0
            raise DataSourceError(f"{self.path}:{last}: the file ends where {what} should follow")
        tok, no = self.toks[self.pos]
        self.pos += 1
        if kind is str:
            return tok, no
        try:
            return (int(tok) if kind is int else float(tok)), no
        except ValueError:
            raise DataSourceError(f"{self.path}:{no}: {what} must be {'an integer' if kind is int else 'a number'}; "
                                  f"received '{tok}'") from None


def read_window_file(path: str, root_folder: str = "", fg_threshold: float = 0.5,
                     bg_threshold: float = 0.5) -> WindowFile:
    """The window file at ``path`` (see the module docstring); every error names its line."""
    toks = WindowTokens(path)
    if len(toks) < 2:
        raise DataSourceError(f"{path}: Window file is empty")
    take = toks.take

    images: list[tuple[str, tuple[int, int, int], int]] = []
    rows: dict[str, list[list[float]]] = {"fg": [], "bg": []}
    lines: dict[str, list[int]] = {"fg": [], "bg": []}
    fg_t, bg_t = np.float32(fg_threshold), np.float32(bg_threshold)
    while toks.more:
        mark, no = take("'#'", str)
        if mark != "#":
            raise DataSourceError(f"{path}:{no}: expected '#' opening an image's entry; received '{mark}'")
        index, no = take("the image index")
        if index != len(images):  # Caffe looks the image up by this number in its list of images
            raise DataSourceError(f"{path}:{no}: image index {index}; expected {len(images)} (the images are "
                                  f"numbered 0, 1, 2, ... in file order)")
        image, _ = take("the image path", str)
        size = tuple(take(f"image {index}'s {d}")[0] for d in ("channels", "height", "width"))
        images.append((root_folder + image, size, no))  # type: ignore[arg-type]
        count, _ = take(f"image {index}'s number of windows")
        for _ in range(count):
            label, wno = take("a window's class")
            overlap = np.float32(take("a window's overlap", float)[0])
            x1, y1, x2, y2 = (take(f"a window's {c}")[0] for c in ("x1", "y1", "x2", "y2"))
            if overlap >= fg_t:
                if label <= 0:
                    raise DataSourceError(f"{path}:{wno}: a foreground window (overlap {overlap:g} >= fg_threshold "
                                          f"{fg_threshold:g}) must have a class > 0; received {label}")
                rows["fg"].append([index, label, overlap, x1, y1, x2, y2])
                lines["fg"].append(wno)
            elif overlap < bg_t:
                rows["bg"].append([index, 0, 0, x1, y1, x2, y2])
                lines["bg"].append(wno)
    table = {k: np.asarray(v, np.float32).reshape(-1, 7) for k, v in rows.items()}
    return WindowFile(path, images, table["fg"], table["bg"], {k: np.asarray(v, np.int64) for k, v in lines.items()})


def _round(v: float) -> int:
    """C's ``round``: half away from zero (``v`` a float32 value, exact in a double)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def warp_window(img: np.ndarray, window: Sequence[float], crop: int, context_pad: int, square: bool,
                mirror: bool, where: str) -> tuple[np.ndarray, int, int]:
    """The window of ``img`` (H x W x C uint8) warped as Caffe warps it: the patch (h x w x C, mirrored
    when ``mirror``) and where it goes in the ``crop`` x ``crop`` top (pad_h, pad_w)."""
    f32 = np.float32
    x1, y1, x2, y2 = (int(window[i]) for i in (X1, Y1, X2, Y2))
    rows, cols = img.shape[:2]
    out_w = out_h = crop
    pad_h = pad_w = 0
    if context_pad > 0 or square:
        context_scale = f32(crop) / f32(crop - 2 * context_pad)
        half_h, half_w = f32(f32(y2 - y1 + 1) / 2.0), f32(f32(x2 - x1 + 1) / 2.0)
        cx, cy = f32(x1) + half_w, f32(y1) + half_h
        if square:
            half_h = half_w = max(half_h, half_w)
        x1, x2 = _round(float(cx - half_w * context_scale)), _round(float(cx + half_w * context_scale))
        y1, y2 = _round(float(cy - half_h * context_scale)), _round(float(cy + half_h * context_scale))
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        px1, py1 = max(0, -x1), max(0, -y1)
        px2, py2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + px1, x2 - px2, y1 + py1, y2 - py2
        if not (x1 > -1 and y1 > -1 and x2 < cols and y2 < rows) or x2 < x1 or y2 < y1:
            raise DatumError(f"{where}: the grown window ({x1}, {y1}, {x2}, {y2}) does not lie in the "
                             f"{cols}x{rows} image")
        sx, sy = f32(crop) / f32(unclipped_w), f32(crop) / f32(unclipped_h)
        out_w, out_h = _round(float(f32(x2 - x1 + 1) * sx)), _round(float(f32(y2 - y1 + 1) * sy))
        px1, px2 = _round(float(f32(px1) * sx)), _round(float(f32(px2) * sx))
        py1 = _round(float(f32(py1) * sy))
        pad_h, pad_w = py1, (px2 if mirror else px1)  # the padding is mirrored with the window
        out_h, out_w = min(out_h, crop - pad_h), min(out_w, crop - pad_w)
    elif x1 < 0 or y1 < 0 or x2 >= cols or y2 >= rows or x2 < x1 or y2 < y1:
        raise DatumError(f"{where}: window ({x1}, {y1}, {x2}, {y2}) does not lie in the {cols}x{rows} image")
    if out_w <= 0 or out_h <= 0:
        raise DatumError(f"{where}: window ({x1}, {y1}, {x2}, {y2}) warps to {out_w}x{out_h} pixels")
    patch = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    if patch.ndim == 2:
        patch = patch[:, :, None]
    return (patch[:, ::-1] if mirror else patch), pad_h, pad_w


class WindowBatchMaker:
    """Batch ``k`` of a WindowData layer (see the module docstring): ``mean`` is the mean file's
    C x H x W array or None, ``mean_values`` one value per channel or None. ``cache``: the encoded
    image files, read at setup (``cache_images``)."""

    def __init__(self, windows: WindowFile, batch_size: int, crop: int, mirror: bool, scale: float,
                 fg_fraction: float, context_pad: int, square: bool, seed: int, mean: np.ndarray | None = None,
                 mean_values: Sequence[float] | None = None, cache: list[bytes] | None = None,
                 rank: int = 0, world: int = 1) -> None:
        self.windows, self.batch_size, self.crop, self.mirror = windows, int(batch_size), int(crop), bool(mirror)
        self.scale, self.context_pad, self.square, self.seed = np.float32(scale), int(context_pad), square, int(seed)
        self.num_fg = int(np.float32(batch_size) * np.float32(fg_fraction))
        self.mean = mean
        self.mean_values = None if mean_values is None else np.asarray(mean_values, np.float32)
        self.cache, self.rank, self.world = cache, int(rank), int(world)
        self.cwd = os.getcwd()  # relative paths resolve as at setup

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def draws(self, k: int) -> list[tuple[str, int, bool]]:
        """Batch ``k``'s windows in order: (``"bg"``/``"fg"``, row, mirrored)."""
        g = np.random.default_rng([self.seed, global_batch(k, self.rank, self.world)])
        out = []
        for kind, n in (("bg", self.batch_size - self.num_fg), ("fg", self.num_fg)):
            rows = g.integers(0, len(getattr(self.windows, kind)), n) if n else []
            flips = g.integers(0, 2, n) if n and self.mirror else np.zeros(n, np.int64)
            out += [(kind, int(r), bool(f)) for r, f in zip(rows, flips)]
        return out

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` of the window file as H x W x 3 uint8 (BGR), from the cache or the disk."""
        path, _, line = self.windows.images[index]
        if self.cache is not None:
            img = cv2.imdecode(np.frombuffer(self.cache[index], np.uint8), cv2.IMREAD_COLOR)
        else:  # read_image: also names that are not UTF-8, which cv2.imread would crash on
            img = read_image(os.path.join(self.cwd, path), is_color=True)
        if img is None:
            raise DatumError(f"{self.windows.path}:{line}: Could not open or find file {path}")
        return img

    def make(self, k: int) -> dict:
        c, crop = 3, self.crop
        data = np.zeros((self.batch_size, c, crop, crop), np.float32)
        labels = np.zeros(self.batch_size, np.float32)
        for item, (kind, row, flip) in enumerate(self.draws(k)):
            window = getattr(self.windows, kind)[row]
            where = f"{self.windows.path}:{self.windows.lines[kind][row]}"
            patch, ph, pw = warp_window(self.image(int(window[IMAGE])), window, crop, self.context_pad,
                                        self.square, flip, where)
            h, w = patch.shape[:2]
            x = patch.transpose(2, 0, 1).astype(np.float32)
            if self.mean is not None:
                off = (self.mean.shape[2] - crop) // 2
                x -= self.mean[:, off + ph:off + ph + h, off + pw:off + pw + w]
            elif self.mean_values is not None:
                x -= self.mean_values[:, None, None]
            data[item, :, ph:ph + h, pw:pw + w] = x * self.scale
            labels[item] = window[LABEL]
        return {"data": data, "label": labels}
