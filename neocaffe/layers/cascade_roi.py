"""Cascade R-CNN's ``ROIAlign`` (zhaoweicai/cascade-rcnn @ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c,
``src/caffe/layers/roi_align_layer.cpp`` (forward) and ``roi_align_layer.cu`` (forward and backward; the CPU
backward is the header's NOT_IMPLEMENTED)). Its ``ROIPooling`` (``pad_ratio``) and ``PSROIPooling`` (R-FCN's)
are ``neocaffe.layers.roi``'s.

The fork's ROIAlign is not Mask R-CNN's: it takes one bilinear sample per *grid point*, not an average or a
maximum over sample points per bin. ``roi_pooling_param {pooled_h pooled_w spatial_scale pad_ratio}``; the
top is ``R x C x (pooled_h + 1) x (pooled_w + 1)`` (the fork's nets follow it with a 2 x 2, stride-1 AVE
``Pooling``, which makes ``pooled_h x pooled_w`` bins). Per RoI ``(b, x1, y1, x2, y2)``:

* ``pad = (x2 - x1 + 1) * pad_ratio`` (``y`` alike); start ``(x1 - pad) * spatial_scale - 0.5``, end
  ``(x2 + pad) * spatial_scale - 0.5``; bin ``(end - start) / pooled``; grid point ``p`` at
  ``start + p * bin`` (``p = 0 .. pooled``), all in the bottom's dtype as the fork computes them;
* a RoI with ``end - start <= 0`` on either axis gives 0 everywhere; a grid point outside
  ``[-0.5, size - 0.5]`` gives 0;
* otherwise bilinear interpolation where the point, its floor and floor + 1 are each clipped to
  ``[0, size - 1]`` first (so a point in ``[-0.5, 0)`` reads row 0 alone, one in ``(size - 1, size - 0.5]``
  the last row alone).

Backward (the ``.cu``'s): each grid point's diff goes to its four pixels with the bilinear weights; the
weights do not depend on the data, so that is this forward's gradient and autograd computes it. The RoIs
get no diff. No deviation from the fork.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.roi import batch_index, rois_count, rois_2d


def _grid(start: Tensor, end: Tensor, pooled: int) -> Tensor:
    """``[R, pooled + 1]`` grid coordinates ``start + p * ((end - start) / pooled)`` (the fork's order)."""
    binsz = (end - start) / pooled
    p = torch.arange(pooled + 1, device=start.device, dtype=start.dtype)
    return start.unsqueeze(1) + p * binsz.unsqueeze(1)


def _axis(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per grid coordinate: inside flag, floor and ceil pixel (clipped) and the weight of the ceil pixel."""
    inside = (coord >= -0.5) & (coord <= size - 0.5)
    lo = torch.floor(coord).to(torch.int64)
    hi = lo + 1
    c = coord.clamp(0, size - 1)
    lo, hi = lo.clamp(0, size - 1), hi.clamp(0, size - 1)
    return inside, lo, hi, c - lo.to(coord.dtype)


def roi_align(x: Tensor, rois: Tensor, b: Tensor, scale: float, pooled: tuple[int, int], pad_ratio: float) -> Tensor:
    """The fork's ROIAlign of ``x`` [N, C, H, W] over ``rois`` [R, 5] (batch ``b`` [R]): [R, C, ph + 1, pw + 1]."""
    n, c, h, w = x.shape
    dt = x.dtype
    r = rois.to(dt)
    s = torch.tensor(scale, dtype=dt, device=x.device)
    pr = torch.tensor(pad_ratio, dtype=dt, device=x.device)
    pad_w, pad_h = (r[:, 3] - r[:, 1] + 1) * pr, (r[:, 4] - r[:, 2] + 1) * pr
    sw, sh = (r[:, 1] - pad_w) * s - 0.5, (r[:, 2] - pad_h) * s - 0.5
    ew, eh = (r[:, 3] + pad_w) * s - 0.5, (r[:, 4] + pad_h) * s - 0.5
    ok_roi = ((eh - sh) > 0) & ((ew - sw) > 0)
    ih, h0, h1, lh = _axis(_grid(sh, eh, pooled[0]), h)                      # [R, P]
    iw, w0, w1, lw = _axis(_grid(sw, ew, pooled[1]), w)                      # [R, Q]
    hh, hw = 1 - lh, 1 - lw
    bi = b.view(-1, 1, 1)
    rows = x.permute(0, 2, 3, 1)                                             # [N, H, W, C]

    def at(hi: Tensor, wi: Tensor) -> Tensor:
        return rows[bi, hi.unsqueeze(2), wi.unsqueeze(1)]                    # [R, P, Q, C]

    wgt = lambda a, bb: (a.unsqueeze(2) * bb.unsqueeze(1)).unsqueeze(-1)    # noqa: E731
    val = (wgt(hh, hw) * at(h0, w0) + wgt(hh, lw) * at(h0, w1)
           + wgt(lh, hw) * at(h1, w0) + wgt(lh, lw) * at(h1, w1))
    keep = (ih.unsqueeze(2) & iw.unsqueeze(1) & ok_roi.view(-1, 1, 1)).unsqueeze(-1)
    val = torch.where(keep, val, torch.zeros((), dtype=dt, device=x.device))
    return val.permute(0, 3, 1, 2).contiguous()


@register_layer("ROIAlign")
class ROIAlign(Layer):
    """Cascade R-CNN's grid-point ROIAlign (see the module docstring). Bottoms: features ``N x C x H x W``,
    RoIs ``R x 5``; top ``R x C x (pooled_h + 1) x (pooled_w + 1)``."""

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error(f"roi_pooling_param.pooled_h and pooled_w must be > 0; received {p.pooled_h}, {p.pooled_w}")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.scale = float(p.spatial_scale)
        self.pad_ratio = float(p.pad_ratio)

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        if len(x) != 4:
            raise self.error(f"bottom 0 must be N x C x H x W; received shape {tuple(x)}")
        return [(rois_count(bottom_shapes[1]), x[1], self.pooled[0] + 1, self.pooled[1] + 1)]

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        r = rois_2d(rois, self)
        b = batch_index(r, x.shape[0], self)
        return roi_align(x, r, b, self.scale, self.pooled, self.pad_ratio)

    @classmethod
    def examples(cls) -> list[Example]:
        rng = np.random.default_rng(2018)
        x = rng.standard_normal((2, 3, 6, 7))
        # inside, fractional, one reaching past the borders, a malformed one (x2 < x1)
        rois = np.array([[0, 0, 0, 13, 11], [1, 3.3, 2.7, 9.6, 7.1], [0, -4.2, -3.1, 20.3, 15.7],
                         [1, 8, 6, 5, 9]], float)
        base = 'name: "ra" type: "ROIAlign" bottom: "x" bottom: "rois" top: "y" '
        return [Example(base + 'roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 }', [x, rois]),
                Example(base + 'roi_pooling_param { pooled_h: 2 pooled_w: 4 spatial_scale: 0.45 pad_ratio: 0.1 }',
                        [x, rois])]
