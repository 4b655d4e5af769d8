"""FaceBoxes' densified PriorBox (lineage: sfzhang15/FaceBoxes @ b52cc92f9362d3adc08d54666aeb9ebb62fdb7da,
``src/caffe/layers/prior_box_layer.cpp``; there is no ``.cu``: the fork's PriorBox runs on the CPU).

The fork keeps SSD's ``prior_box_param`` (its ``caffe.proto`` is SSD's @ 4817bf8, unchanged) and hard-codes
anchor densification by the *value* of each ``min_size`` (cast to int):

* ``min_size == 32``: 16 squares of side 32, centres ``(cx + j * 8, cy + i * 8)`` for ``i`` (rows, outer) and
  ``j`` (columns, inner) in ``-2 .. 1``; the shift is 8 pixels whatever the step;
* ``min_size == 64``: 4 squares, centres ``(cx + j * 16, cy + i * 16)``, ``i``, ``j`` in ``-1 .. 0``;
* any other ``min_size``: one square, centred at the cell centre.

Every min-size square spans ``centre +- (side - 1) / 2`` (SSD: ``side / 2``); the ``max_size`` prior and
the aspect-ratio priors keep SSD's ``side / 2``, and come after each min-size group as in SSD. The shifted
centre is summed in float (``center_x + j * 8``), the rest in double, stored as float, as the fork.

The fork's ``LayerSetUp`` declares ``num_priors_ = 21`` when there are exactly three ``min_size`` (whatever
they are), else SSD's ``len(aspect_ratios) * len(min_size)``, plus one per ``max_size``; its forward writes
as many priors as the rules above give. Where the two disagree the fork writes past its top blob or leaves
part of it unwritten, so :func:`layout` raises instead (deviation: an error, not undefined contents).
Clipping and variances are SSD's.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

#: min_size -> (grid side, shift in pixels) of its densified squares; other sizes: one square, no shift
DENSIFY = {32: (4, 8), 64: (2, 16)}
#: the released nets' first PriorBox (models/faceboxes/*.prototxt)
FORK_MIN_SIZES = (32, 64, 128)


def declared_priors(n_min: int, n_ratios: int, n_max: int) -> int:
    """The fork's ``num_priors_``: 21 for three ``min_size``, else ratios x min sizes; + one per max_size."""
    return (21 if n_min == 3 else n_ratios * n_min) + n_max


def layout(min_sizes: Sequence[float], max_sizes: Sequence[float], ratios: Sequence[float],
           error: Callable[[str], Exception]) -> np.ndarray:
    """(P, 4) float64 rows ``(dx, dy, half_w, half_h)`` of a cell's priors in the fork's order: ``dx``/``dy``
    the integer shift of the centre, ``half_*`` the half extents (``ratios``: SSD's, 1 first)."""
    rows: list[tuple[float, float, float, float]] = []
    for s, mn in enumerate(min_sizes):
        m = int(mn)
        side, shift = DENSIFY.get(m, (1, 0))
        half = (float(np.float32(m)) - 1.0) / 2.0   # (box_width - 1) / 2., box_width a float
        lo = -(side // 2)
        for i in range(lo, lo + side):
            for j in range(lo, lo + side):
                rows.append((j * shift, i * shift, half, half))
        if len(max_sizes):
            bw = float(np.float32(math.sqrt(m * int(max_sizes[s]))))
            rows.append((0, 0, bw / 2.0, bw / 2.0))
        for ar in ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            root = math.sqrt(float(np.float32(ar)))
            rows.append((0, 0, float(np.float32(m * root)) / 2.0, float(np.float32(m / root)) / 2.0))
    declared = declared_priors(len(min_sizes), len(ratios), len(max_sizes))
    if len(rows) != declared:
        raise error(f"FaceBoxes' PriorBox (lineage \"faceboxes\") declares {declared} priors per cell for "
                    f"min_size {list(min_sizes)}, {len(max_sizes)} max_size and {len(ratios)} aspect ratios "
                    f"(21 for three min_size, else ratios x min sizes), but its forward writes {len(rows)} "
                    f"(16 for min_size 32, 4 for 64, 1 for any other, + max_size and aspect-ratio priors): the fork "
                    f"overruns or leaves part of its top unwritten; expected a configuration where both agree, "
                    f"e.g. min_size 32, 64, 128 with no max_size or aspect_ratio")
    return np.array(rows, np.float64)


def priors(cells: np.ndarray, lh: int, lw: int, ih: int, iw: int, step_w: np.float32, step_h: np.float32,
           offset: float, clip: bool, variance: Sequence[float]) -> np.ndarray:
    """The fork's top (1, 2, lh*lw*P*4) for :func:`layout`'s ``cells``; ``step_*``: float32, as the fork."""
    f32 = np.float32
    cx = (np.arange(lw, dtype=f32) + f32(offset)) * step_w   # float center_x, as the fork
    cy = (np.arange(lh, dtype=f32) + f32(offset)) * step_h
    dx, dy = cells[:, 0].astype(f32), cells[:, 1].astype(f32)
    # center_x + j * 8 in float; then double arithmetic with the half extents, stored as float
    sx = (cx[None, :, None] + dx).astype(np.float64)           # (1, lw, P)
    sy = (cy[:, None, None] + dy).astype(np.float64)           # (lh, 1, P)
    hw, hh = cells[:, 2], cells[:, 3]
    boxes = np.stack(np.broadcast_arrays((sx - hw) / iw, (sy - hh) / ih, (sx + hw) / iw, (sy + hh) / ih),
                     axis=-1).astype(f32).reshape(-1)
    if clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.resize(np.array(variance, f32), boxes.size)
    return np.stack([boxes, var])[None]


def names_fork(min_sizes: Sequence[float]) -> bool:
    """Whether a PriorBox's ``min_size`` list is the released nets' 32, 64, 128 (for the prior-count hint)."""
    return tuple(int(m) for m in min_sizes) == FORK_MIN_SIZES


def prior_count_hint(net_param: object) -> str:
    """A sentence naming ``lineage: "faceboxes"`` where the net holds a PriorBox with the fork's min sizes
    and does not already say that lineage; else ``""`` (for DetectionOutput's / MultiBoxLoss's count error)."""
    if net_param is None or getattr(net_param, "lineage", "") == "faceboxes":
        return ""
    for lp in getattr(net_param, "layer", ()):
        if lp.type == "PriorBox" and names_fork(lp.prior_box_param.min_size):
            return (f"; PriorBox '{lp.name}' has FaceBoxes' min_size 32, 64, 128: if this is a FaceBoxes net "
                    f"(sfzhang15/FaceBoxes, 21 densified priors per cell), set lineage: \"faceboxes\" in the net")
    return ""


__all__ = ["DENSIFY", "FORK_MIN_SIZES", "declared_priors", "layout", "names_fork", "prior_count_hint", "priors"]
