"""Cascade R-CNN's window file and list orders (zhaoweicai/cascade-rcnn @ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c,
``src/caffe/layers/detection_data_layer.cpp`` / ``eval_data_layer.cpp`` DataLayerSetUp, ShuffleList,
ShuffleAspectGroupList, ShuffleMixAspectGroupList), and the fork's ``BBox`` overlap
(``src/caffe/util/bbox_util.cpp`` JaccardOverlap on BBox: "IOU" and "IOFU").

The file repeats, per image (whitespace-separated, as ``ifstream >>`` reads it)::

    # <image_index>
    <image path>            (root_folder prepended)
    <channels> <height> <width>
    <num_gts>
    <label> <ignore> <difficult> <x1> <y1> <x2> <y2>     (num_gts lines, label > 0)
    <num_ignored_regions>
    <x1> <y1> <x2> <y2>                                  (one line per region)

``image_index`` must count 0, 1, ... (the fork indexes its tables by it). Orders: without ``shuffle`` the
file's; ``random`` a permutation; ``random_aspect`` the portrait images (height >= width, as listed) and
the landscape ones each permuted, one group after the other (a coin picks which first);
``random_mix_aspect`` alternates the two groups by ``mix_group_size`` images. Each pass's order is drawn
from ``(seed, pass)``, so any pass is known without the ones before (the fork permutes its last order again).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neocaffe.data.sources import DataSourceError
from neocaffe.data.windows import WindowTokens

__all__ = ["CascadeWindows", "SHUFFLES", "bbox_overlap", "list_order", "read_cascade_windows"]

SHUFFLES = ("random", "random_aspect", "random_mix_aspect")


@dataclass
class CascadeWindows:
    """``images``: (path with root_folder, (channels, height, width), line of its ``#``); ``gts``: per image a
    (k, 7) float32 array ``[label, ignore, difficult, x1, y1, x2, y2]``; ``roni``: per image (r, 4) float32
    regions of no interest."""

    path: str
    images: list[tuple[str, tuple[int, int, int], int]]
    gts: list[np.ndarray]
    roni: list[np.ndarray]

    @property
    def portrait(self) -> list[int]:
        return [i for i, (_, (_, h, w), _) in enumerate(self.images) if h >= w]

    @property
    def landscape(self) -> list[int]:
        return [i for i, (_, (_, h, w), _) in enumerate(self.images) if h < w]


def read_cascade_windows(path: str, root_folder: str = "") -> CascadeWindows:
    """Parse ``path`` (see the module docstring); a malformed file is a DataSourceError naming its line."""
    tokens = WindowTokens(path)
    take = tokens.take
    images, gts, roni = [], [], []
    if not len(tokens):
        raise DataSourceError(f"Window file is empty: {path}")
    while tokens.more:
        tag, no = take("'#'", str)
        if tag != "#":
            raise DataSourceError(f"{path}:{no}: expected '#' starting an image; received '{tag}'")
        index, _ = take("the image index")
        if index != len(images):
            raise DataSourceError(f"{path}:{no}: image index {index} out of order; expected {len(images)} (the fork "
                                  "indexes its tables by it)")
        name, _ = take("the image path", str)
        c, h, w = (take(f"the image {d}")[0] for d in ("channels", "height", "width"))
        images.append((root_folder + name, (c, h, w), no))
        n, _ = take("the number of ground-truth boxes")
        rows = []
        for _ in range(n):
            vals = [take(what)[0] for what in ("a label", "ignore", "difficult", "x1", "y1", "x2", "y2")]
            if vals[0] <= 0:
                raise DataSourceError(f"{path}:{tokens.line}: a box's label must be > 0; received {vals[0]}")
            rows.append(vals)
        gts.append(np.asarray(rows, np.float32).reshape(-1, 7))
        r, _ = take("the number of ignored regions")
        roni.append(np.asarray([[take(c)[0] for c in ("x1", "y1", "x2", "y2")] for _ in range(r)],
                               np.float32).reshape(-1, 4))
    return CascadeWindows(path, images, gts, roni)


def list_order(windows: CascadeWindows, shuffle: str | None, seed: int, epoch: int, mix_group_size: int) -> np.ndarray:
    """The image order of pass ``epoch`` (see the module docstring); ``shuffle`` None: the file's order."""
    n = len(windows.images)
    if shuffle is None:
        return np.arange(n)
    g = np.random.default_rng([seed, 1, epoch])
    if shuffle == "random":
        return g.permutation(n)
    tall = np.asarray(windows.portrait, np.int64)[g.permutation(len(windows.portrait))]
    wide = np.asarray(windows.landscape, np.int64)[g.permutation(len(windows.landscape))]
    first, second = (tall, wide) if g.integers(0, 2) else (wide, tall)
    if shuffle == "random_aspect":
        return np.concatenate([first, second])
    out, counts, idx = [], [0, 0], 0
    lists = (first, second)
    while counts[0] < len(first) and counts[1] < len(second):
        which = (idx // mix_group_size) % 2
        out.append(lists[which][counts[which]])
        counts[which] += 1
        idx += 1
    out += list(first[counts[0]:]) + list(second[counts[1]:])
    return np.asarray(out, np.int64)


def _size(b: np.ndarray) -> np.ndarray:
    f = np.float32
    ok = (b[..., 2] >= b[..., 0]) & (b[..., 3] >= b[..., 1])
    return np.where(ok, (b[..., 2] - b[..., 0] + f(1)) * (b[..., 3] - b[..., 1] + f(1)), f(0)).astype(f)


def bbox_overlap(a: np.ndarray, b: np.ndarray, mode: str = "IOU") -> np.ndarray:
    """The fork's ``JaccardOverlap(BBox, BBox, mode)`` in float32 for (..., 4) ``[x1, y1, x2, y2]`` arrays
    (broadcast): 0 for an invalid box; no overlap where ``ix1 > ix2`` or ``iy1 >= iy2`` (the fork's own
    asymmetry); ``IOFU`` divides by the first box's size."""
    f = np.float32
    a, b = np.asarray(a, f), np.asarray(b, f)
    ix1, iy1 = np.maximum(a[..., 0], b[..., 0]), np.maximum(a[..., 1], b[..., 1])
    ix2, iy2 = np.minimum(a[..., 2], b[..., 2]), np.minimum(a[..., 3], b[..., 3])
    inter = np.where((ix1 > ix2) | (iy1 >= iy2), f(0), (ix2 - ix1 + f(1)) * (iy2 - iy1 + f(1))).astype(f)
    sa, sb = _size(a), _size(b)
    union = sa if mode == "IOFU" else (sa + sb - inter).astype(f)
    valid = (a[..., 2] >= a[..., 0]) & (a[..., 3] >= a[..., 1]) & (b[..., 2] >= b[..., 0]) & (b[..., 3] >= b[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(valid & (union > 0), inter / np.where(union > 0, union, f(1)), f(0))
    return out.astype(f)
