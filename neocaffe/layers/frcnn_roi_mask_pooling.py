"""D-X-Y/caffe-faster-rcnn's ``ROIMaskPooling``: RoI max pooling over a rescaled (or half) RoI with an
optional central mask (``roi_mask_pooling_param``).

Semantics of D-X-Y/caffe-faster-rcnn ``dev`` @ 1ae964d135bbfd9d04258b15b95c9dbb29a19149,
``src/caffe/FRCNN/roi_mask_pooling_layer.cu`` (``ROIMaskPoolForward`` / ``ROIMaskPoolBackward``): the fork's
CPU forward (``roi_mask_pooling_layer.cpp``) is plain ROIPooling that ignores ``half_part``, ``roi_scale``
and ``mask_scale``, and its CPU backward is NOT_IMPLEMENTED, so the CUDA kernels are the reference here,
on every device.

Per RoI ``(b, x1, y1, x2, y2)``: centre ``((x1 + x2) / 2, (y1 + y2) / 2)``, size ``(x2 - x1, y2 - y1)``
(no ``+1``); the pooled region is the RoI scaled by ``roi_scale`` about its centre, cut to its left
(``half_part`` 1), right (2), top (3) or bottom (4) half; when ``mask_scale > 0`` the central box scaled by
``mask_scale`` is the mask. Corners are rounded (C's ``round``) after ``* spatial_scale``; the bins are
ROIPooling's. In each bin, pixels are scanned row by row; a masked pixel compares as 0, and whenever a
pixel's compared value beats the running maximum, the running maximum becomes the pixel's *unmasked*
value (the kernel's quirk, kept) and the argmax that pixel. An empty bin gives 0, a bin nothing beats
``-FLT_MAX``. Backward (the kernel's): a pixel inside the (unmasked) pooled region takes the diff of
each bin in its feasible set whose argmax it is.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.roi import _feasible, _roi_bins, batch_index, caffe_round, rois_count, rois_2d

FLT_MAX = float(np.finfo(np.float32).max)


def _geometry(rois: Tensor, scale: float, half: int, roi_scale: float, mask_scale: float) -> tuple[Tensor, ...]:
    """Integer region corners (sw, sh, ew, eh), mask corners (mw1, mh1, mw2, mh2) and the region sizes."""
    r = rois
    s = torch.tensor(scale, dtype=r.dtype, device=r.device)
    x1, y1, x2, y2 = r[:, 1], r[:, 2], r[:, 3], r[:, 4]
    xc, yc = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = x2 - x1, y2 - y1
    rs = torch.tensor(roi_scale, dtype=r.dtype, device=r.device)
    xx1, xx2, yy1, yy2 = xc - w * rs / 2, xc + w * rs / 2, yc - h * rs / 2, yc + h * rs / 2
    if half == 1:
        xx2 = xc
    elif half == 2:
        xx1 = xc
    elif half == 3:
        yy2 = yc
    elif half == 4:
        yy1 = yc
    w64, h64, xc64, yc64 = w.double(), h.double(), xc.double(), yc.double()  # mask corners: `/ 2.0`, double
    ms = float(np.float32(mask_scale))
    mx1, mx2 = (xc64 - w64 * ms / 2.0).to(r.dtype), (xc64 + w64 * ms / 2.0).to(r.dtype)
    my1, my2 = (yc64 - h64 * ms / 2.0).to(r.dtype), (yc64 + h64 * ms / 2.0).to(r.dtype)
    sw, sh, ew, eh, m1w, m1h, m2w, m2h = (caffe_round(v * s).to(torch.int64) for v in (xx1, yy1, xx2, yy2,
                                                                                        mx1, my1, mx2, my2))
    roi_w = (ew - sw + 1).clamp(min=1).to(r.dtype)
    roi_h = (eh - sh + 1).clamp(min=1).to(r.dtype)
    return sw, sh, ew, eh, m1w, m1h, m2w, m2h, roi_w, roi_h


def mask_pool(x: Tensor, rois: Tensor, b: Tensor, p) -> tuple[Tensor, Tensor]:
    """Top ``[R, C, PH, PW]`` and argmax (flat ``h * W + w``; -1 for none) (see the module docstring)."""
    n, c, hgt, wid = x.shape
    sw, sh, ew, eh, m1w, m1h, m2w, m2h, roi_w, roi_h = _geometry(rois, p.spatial_scale, p.half_part, p.roi_scale,
                                                                p.mask_scale)
    hs, he = _roi_bins(sh, roi_h, p.pooled_h, hgt)        # [R, PH]
    ws, we = _roi_bins(sw, roi_w, p.pooled_w, wid)        # [R, PW]
    r_n = rois.shape[0]
    empty = (he.unsqueeze(2) <= hs.unsqueeze(2)) | (we.unsqueeze(1) <= ws.unsqueeze(1))     # [R, PH, PW]
    best = torch.where(empty, x.new_zeros(()), x.new_full((), -FLT_MAX)).unsqueeze(1).expand(r_n, c, -1, -1).clone()
    arg = torch.full_like(best, -1, dtype=torch.int64)
    kh_n = int((he - hs).max()) if he.numel() else 0
    kw_n = int((we - ws).max()) if we.numel() else 0
    masked = p.mask_scale > 0
    xb = x[b]                                                                                # [R, C, H, W]
    for kh in range(kh_n):
        hh = hs + kh                                                                         # [R, PH]
        for kw in range(kw_n):
            ww = ws + kw                                                                     # [R, PW]
            valid = ((hh < he).unsqueeze(2) & (ww < we).unsqueeze(1))                        # [R, PH, PW]
            hi, wi = hh.clamp(max=hgt - 1), ww.clamp(max=wid - 1)
            v = xb.gather(2, hi.view(r_n, 1, -1, 1).expand(r_n, c, -1, wid))                 # [R, C, PH, W]
            v = v.gather(3, wi.view(r_n, 1, 1, -1).expand(r_n, c, v.shape[2], -1))           # [R, C, PH, PW]
            cmp = v
            if masked:
                inside = ((ww.unsqueeze(1) >= m1w.view(-1, 1, 1)) & (ww.unsqueeze(1) <= m2w.view(-1, 1, 1))
                          & (hh.unsqueeze(2) >= m1h.view(-1, 1, 1)) & (hh.unsqueeze(2) <= m2h.view(-1, 1, 1)))
                cmp = torch.where(inside.unsqueeze(1), v.new_zeros(()), v)
            take = valid.unsqueeze(1) & (cmp > best)
            best = torch.where(take, v, best)
            arg = torch.where(take, (hi.unsqueeze(2) * wid + wi.unsqueeze(1)).unsqueeze(1), arg)
    return best, arg


class _MaskPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, b: Tensor, p):  # type: ignore[override]
        top, arg = mask_pool(x, rois, b, p)
        ctx.save_for_backward(rois, b, arg)
        ctx.meta = (x.shape, p)
        return top

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        rois, b, arg = ctx.saved_tensors
        (n, c, h, w), p = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        sw, sh, ew, eh, _, _, _, _, roi_w, roi_h = _geometry(rois, p.spatial_scale, p.half_part, p.roi_scale,
                                                             p.mask_scale)
        ph, pw = p.pooled_h, p.pooled_w
        hs, he = _roi_bins(sh, roi_h.to(g.dtype), ph, h)
        ws, we = _roi_bins(sw, roi_w.to(g.dtype), pw, w)
        hh = torch.div(arg, w, rounding_mode="floor")
        ww = arg - hh * w
        ri = torch.arange(arg.shape[0], device=g.device).view(-1, 1, 1, 1)
        fh = _feasible(sh, eh, roi_h.to(g.dtype), hs, he, ph)
        fw = _feasible(sw, ew, roi_w.to(g.dtype), ws, we, pw)
        kh = (hh - hs.unsqueeze(1).unsqueeze(-1)).clamp(0, fh.shape[-1] - 1)
        kw = (ww - ws.unsqueeze(1).unsqueeze(2)).clamp(0, fw.shape[-1] - 1)
        ok = ((arg >= 0) & fh[ri, torch.arange(ph, device=g.device).view(1, 1, -1, 1), kh]
              & fw[ri, torch.arange(pw, device=g.device).view(1, 1, 1, -1), kw])
        flat = (b.view(-1, 1, 1, 1) * c + torch.arange(c, device=g.device).view(1, c, 1, 1)) * (h * w) + arg.clamp(min=0)
        gx = g.new_zeros(n * c * h * w)
        gx.index_add_(0, flat.reshape(-1), torch.where(ok, g, torch.zeros_like(g)).reshape(-1))
        return gx.view(n, c, h, w), None, None, None


@register_layer("ROIMaskPooling")
class ROIMaskPooling(Layer):
    """See the module docstring. Bottoms: features ``N x C x H x W``, RoIs ``R x 5``; top ``R x C x PH x PW``."""

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.roi_mask_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error(f"roi_mask_pooling_param.pooled_h and pooled_w must be > 0; received "
                             f"{p.pooled_h}, {p.pooled_w}")
        self.p = p

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        _, c, _, _ = legacy_shape(bottom_shapes[0], self, "bottom 0")
        return [(rois_count(bottom_shapes[1]), c, int(self.p.pooled_h), int(self.p.pooled_w))]

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        r = rois_2d(rois, self).to(x.dtype)
        return _MaskPoolFn.apply(x, r, batch_index(r, x.shape[0], self), self.p)

    @classmethod
    def examples(cls) -> list[Example]:
        g = np.random.default_rng(3)
        x = g.permutation(2 * 3 * 8 * 9).reshape(2, 3, 8, 9) / 10.0 - 20  # distinct values: no ties
        rois = np.array([[0, 2, 3, 30, 28], [1, 0, 0, 35, 31], [1, 10, 4, 20, 22]], np.float64)
        out = []
        for extra in ("roi_scale: 1.2 mask_scale: 0.5", "half_part: 1", "half_part: 4 roi_scale: 0.8"):
            out.append(Example(f'name: "rmp" type: "ROIMaskPooling" bottom: "x" bottom: "rois" top: "y" '
                               f'roi_mask_pooling_param {{ pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 {extra} }}',
                               [x, rois]))
        return out


__all__ = ["ROIMaskPooling", "mask_pool"]
