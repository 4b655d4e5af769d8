"""The Fast R-CNN / R-FCN layers: ``ROIPooling``, ``PSROIPooling`` and ``SmoothL1Loss``.

Lineages and the source files their semantics come from:

* ``ROIPooling``, ``SmoothL1Loss``: rbgirshick/caffe-fast-rcnn (py-faster-rcnn's Caffe), branch
  ``faster-rcnn`` @ 4115385d, ``src/caffe/layers/roi_pooling_layer.{cpp,cu}`` and
  ``src/caffe/layers/smooth_L1_loss_layer.cu`` (the fork has no CPU SmoothL1Loss: the GPU code is
  the reference).
* ``PSROIPooling``: daijifeng001/caffe-rfcn (R-FCN) @ 543f8f6a, ``src/caffe/layers/psroi_pooling_layer.cu``
  (GPU only in the fork as well).

A RoI is a row ``(batch_index, x1, y1, x2, y2)`` of bottom 1 (``R x 5``, or ``R x 5 x 1 x 1``), in
image coordinates; ``spatial_scale`` maps it onto the feature map. Every pooling bin is computed in
the bottom's dtype with the fork's rounding (C's ``round``: halves away from zero), then pooled over
the bin's pixels gathered for all RoIs at once (no loop over boxes or pixels; RoIs are taken in
chunks so the gathered windows stay under a fixed element budget).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer

FLT_MAX = 3.4028234663852886e38
#: gathered window elements per chunk of RoIs (values; index tensors broadcast and stay small)
_WINDOW_BUDGET = 1 << 24


def caffe_round(x: Tensor) -> Tensor:
    """C's ``round``: to the nearest integer, halves away from zero (``torch.round`` rounds them to even)."""
    t = torch.trunc(x)
    return t + torch.sign(x) * ((x - t).abs() >= 0.5).to(x.dtype)


def rois_2d(rois: Tensor, layer: Layer) -> Tensor:
    """Bottom 1 as ``R x 5`` (the forks accept any shape whose per-RoI count is 5)."""
    if rois.dim() == 0 or math.prod(rois.shape[1:]) != 5:
        raise layer.error(f"RoIs (bottom 1) must hold 5 values per RoI (batch, x1, y1, x2, y2); "
                          f"received shape {tuple(rois.shape)}")
    return rois.detach().reshape(rois.shape[0], 5)


def check_rois_shape(shape: Shape, layer: Layer) -> int:
    """The RoI count of bottom 1's shape (Caffe: channels x height x width must be 5)."""
    if len(shape) == 0 or math.prod(shape[1:]) != 5:
        raise layer.error(f"RoIs (bottom 1) must hold 5 values per RoI (batch, x1, y1, x2, y2); "
                          f"received shape {tuple(shape)}")
    return int(shape[0])


def batch_index(rois: Tensor, batch: int, layer: Layer) -> Tensor:
    """``static_cast<int>(roi[0])``, checked against the batch size (the fork's CHECK_GE/CHECK_LT)."""
    b = rois[:, 0].to(torch.int64)
    if b.numel() and (bool((b < 0).any()) or bool((b >= batch).any())):
        raise layer.error(f"RoI batch indices must lie in [0, {batch}); received {b.min().item()}..{b.max().item()}")
    return b


def _windows(start: Tensor, end: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Pixel indices ``[..., K]`` of the half-open intervals ``[start, end)`` (clipped to ``[0, size]``
    already), K the longest interval, and the mask of those inside their interval."""
    k = max(int((end - start).max().item()) if end.numel() else 0, 1)
    off = torch.arange(k, device=start.device)
    idx = start.unsqueeze(-1) + off
    valid = off < (end - start).unsqueeze(-1)
    return idx.clamp(0, max(size - 1, 0)), valid


def _chunks(n: int, per_item: int) -> list[slice]:
    step = max(1, _WINDOW_BUDGET // max(per_item, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# -- ROIPooling ---------------------------------------------------------------------------------
def _roi_geometry(rois: Tensor, scale: float, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Per RoI: start/end (w, h) on the feature map and the bin sizes, as the fork computes them."""
    s = torch.tensor(scale, dtype=dtype, device=rois.device)
    r = rois.to(dtype)
    sw, sh, ew, eh = (caffe_round(r[:, k] * s).to(torch.int64) for k in (1, 2, 3, 4))
    roi_w = (ew - sw + 1).clamp(min=1)  # malformed RoIs are forced to 1 x 1
    roi_h = (eh - sh + 1).clamp(min=1)
    return sw, sh, ew, eh, roi_w.to(dtype), roi_h.to(dtype)


def _roi_bins(start: Tensor, roi_len: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
    """``[R, pooled]`` bin bounds: ``floor(p * bin) + start``, ``ceil((p + 1) * bin) + start``, clipped."""
    binsz = roi_len / pooled
    p = torch.arange(pooled, device=start.device, dtype=roi_len.dtype)
    lo = torch.floor(p * binsz.unsqueeze(1)).to(torch.int64) + start.unsqueeze(1)
    hi = torch.ceil((p + 1) * binsz.unsqueeze(1)).to(torch.int64) + start.unsqueeze(1)
    return lo.clamp(0, size), hi.clamp(0, size)


class _ROIPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, b: Tensor, scale: float, pooled: tuple[int, int]):  # type: ignore[override]
        n, c, h, w = x.shape
        ph, pw = pooled
        sw, sh, _, _, roi_w, roi_h = _roi_geometry(rois, scale, x.dtype)
        hs, he = _roi_bins(sh, roi_h, ph, h)
        ws, we = _roi_bins(sw, roi_w, pw, w)
        rows, rv = _windows(hs, he, h)   # [R, PH, KH]
        cols, cv = _windows(ws, we, w)   # [R, PW, KW]
        kh, kw = rows.shape[-1], cols.shape[-1]
        r = rois.shape[0]
        top = x.new_empty((r, c, ph, pw))
        arg = torch.empty((r, c, ph, pw), dtype=torch.int64, device=x.device)
        ch = torch.arange(c, device=x.device).view(1, c, 1, 1, 1, 1)
        for sl in _chunks(r, c * ph * pw * kh * kw):
            rr, cc = rows[sl].view(-1, 1, ph, 1, kh, 1), cols[sl].view(-1, 1, 1, pw, 1, kw)
            v = x[b[sl].view(-1, 1, 1, 1, 1, 1), ch, rr, cc]           # [r, C, PH, PW, KH, KW]
            inside = rv[sl].view(-1, 1, ph, 1, kh, 1) & cv[sl].view(-1, 1, 1, pw, 1, kw)
            v = torch.where(inside & ~torch.isnan(v), v, torch.full_like(v, -math.inf))  # NaN never wins '>'
            best, k = v.flatten(-2).max(dim=-1)                     # first maximum in row-major order
            plane = (rr * w + cc).expand(-1, 1, ph, pw, kh, kw).flatten(-2)
            idx = plane.expand(-1, c, -1, -1, -1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
            empty = ~(rv[sl].any(-1).view(-1, 1, ph, 1) & cv[sl].any(-1).view(-1, 1, 1, pw))
            none = best <= -FLT_MAX                                  # nothing beat Caffe's -FLT_MAX
            top[sl] = torch.where(empty, torch.zeros_like(best), torch.where(none, torch.full_like(best, -FLT_MAX), best))
            arg[sl] = torch.where(empty | none, torch.full_like(idx, -1), idx)
        ctx.save_for_backward(rois, b, arg)
        ctx.meta = (x.shape, scale, pooled)
        ctx.mark_non_differentiable(arg)
        return top, arg

    @staticmethod
    def backward(ctx, g: Tensor, _g_arg: Tensor):  # type: ignore[override]
        rois, b, arg = ctx.saved_tensors
        (n, c, h, w), scale, (ph, pw) = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        sw, sh, ew, eh, roi_w, roi_h = _roi_geometry(rois, scale, g.dtype)
        hh, ww = torch.div(arg, w, rounding_mode="floor"), arg % w
        v4 = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
        # the fork's backward: a bottom pixel takes the diff of the bins in its feasible set whose argmax it is
        ok = (arg >= 0) & (ww >= v4(sw)) & (ww <= v4(ew)) & (hh >= v4(sh)) & (hh <= v4(eh))
        for pix, start, roi_len, pooled, axis in ((hh, sh, roi_h, ph, 2), (ww, sw, roi_w, pw, 3)):
            binsz = v4(roi_len / pooled)
            lo = torch.floor((pix - v4(start)).to(g.dtype) / binsz).clamp(0, pooled)
            hi = torch.ceil((pix - v4(start) + 1).to(g.dtype) / binsz).clamp(0, pooled)
            shape = [1, 1, 1, 1]
            shape[axis] = pooled
            p = torch.arange(pooled, device=g.device, dtype=g.dtype).view(shape)
            ok &= (p >= lo) & (p < hi)
        flat = (b.view(-1, 1, 1, 1) * c + torch.arange(c, device=g.device).view(1, c, 1, 1)) * (h * w) + arg
        gx = g.new_zeros(n * c * h * w)
        gx.index_add_(0, flat[ok], g[ok])
        return gx.view(n, c, h, w), None, None, None, None


@register_layer("ROIPooling")
class ROIPooling(Layer):
    """Fast R-CNN's RoI max pooling (caffe-fast-rcnn ``roi_pooling_layer.cpp/.cu``).

    ``roi_pooling_param {pooled_h pooled_w spatial_scale}``. A RoI's corners are ``round(x * scale)``
    (halves away from zero); its size ``max(end - start + 1, 1)``; bin (ph, pw) covers rows
    ``[floor(ph * bin_h), ceil((ph + 1) * bin_h))`` + start, clipped to the map; an empty bin gives 0.
    The maximum is the first in row-major order (Caffe's strict ``>``). Backward: each bin's diff goes
    to its argmax pixel, where the fork's feasible-set test (computed in the dtype) admits that bin;
    the RoIs get no diff.
    """

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error(f"roi_pooling_param.pooled_h and pooled_w must be > 0; received {p.pooled_h}, {p.pooled_w}")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.scale = float(p.spatial_scale)

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        if len(x) != 4:
            raise self.error(f"bottom 0 must be N x C x H x W; received shape {tuple(x)}")
        return [(check_rois_shape(bottom_shapes[1], self), x[1], *self.pooled)]

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        r = rois_2d(rois, self)
        b = batch_index(r, x.shape[0], self)
        top, _ = _ROIPoolFn.apply(x, r, b, self.scale, self.pooled)
        return top

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(140)
        # distinct values (a permutation) so finite differences never move an argmax
        x = (r.permutation(2 * 1 * 6 * 7).reshape(2, 1, 6, 7) * 0.01).astype(float)
        # a whole-map RoI, fractional corners, a one-pixel RoI, one beyond the map (the fork's backward
        # of a malformed RoI, end < start, is not the gradient of its forward: tests/layers/test_roi.py)
        rois = np.array([[0, 0, 0, 13, 11], [1, 3.5, 2.4, 11.2, 9.8], [1, 8, 6, 8, 6], [0, -6, -4, 30, 22]], float)
        base = 'name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        return [Example(base + 'roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 }', [x, rois]),
                Example(base + 'roi_pooling_param { pooled_h: 4 pooled_w: 5 spatial_scale: 0.25 }', [x, rois])]


# -- PSROIPooling -------------------------------------------------------------------------------
def _psroi_bins(rois: Tensor, scale: float, pooled: int, size: int, k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """R-FCN's bins along one axis (k = 1: x, k = 2: y): start ``round(x1) * scale``, end
    ``(round(x2) + 1) * scale``, length at least 0.1, bounds ``floor(p * bin + start)`` and
    ``ceil((p + 1) * bin + start)`` clipped to ``[0, size]``; all in ``dtype`` (float32 in nets)."""
    s = torch.tensor(scale, dtype=dtype, device=rois.device)
    r = rois.to(dtype)
    start = caffe_round(r[:, k]) * s
    end = (caffe_round(r[:, k + 2]) + 1) * s
    length = torch.maximum(end - start, torch.tensor(0.1, dtype=dtype, device=rois.device))
    binsz = (length / pooled).unsqueeze(1)
    p = torch.arange(pooled, device=rois.device, dtype=dtype)
    lo = torch.floor(p * binsz + start.unsqueeze(1)).to(torch.int64)
    hi = torch.ceil((p + 1) * binsz + start.unsqueeze(1)).to(torch.int64)
    return lo.clamp(0, size), hi.clamp(0, size)


@register_layer("PSROIPooling")
class PSROIPooling(Layer):
    """R-FCN's position-sensitive RoI average pooling (caffe-rfcn ``psroi_pooling_layer.cu``).

    ``psroi_pooling_param {spatial_scale output_dim group_size}``; bottom 0 has
    ``output_dim * group_size^2`` channels; the top is ``R x output_dim x group_size x group_size``.
    Output (r, ctop, ph, pw) averages channel ``(ctop * group_size + ph) * group_size + pw`` over its
    bin (see ``_psroi_bins``); an empty bin gives 0. Backward (the fork's): ``top_diff / bin_area`` is
    added to every pixel of the bin; that is the gradient of this forward, so autograd computes it
    (sums over the bin's gathered pixels, accumulated back by index). The RoIs get no diff.
    """

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.psroi_pooling_param
        if p.output_dim <= 0 or p.group_size <= 0:
            raise self.error(f"psroi_pooling_param.output_dim and group_size must be > 0; "
                             f"received {p.output_dim}, {p.group_size}")
        self.scale, self.dim, self.group = float(p.spatial_scale), int(p.output_dim), int(p.group_size)

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        if len(x) != 4 or x[1] != self.dim * self.group * self.group:
            raise self.error(f"bottom 0 must be N x (output_dim * group_size^2 = "
                             f"{self.dim * self.group * self.group}) x H x W; received shape {tuple(x)}")
        return [(check_rois_shape(bottom_shapes[1], self), self.dim, self.group, self.group)]

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        r = rois_2d(rois, self)
        b = batch_index(r, x.shape[0], self)
        g, d = self.group, self.dim
        h, w = x.shape[2], x.shape[3]
        ws, we = _psroi_bins(r, self.scale, g, w, 1, x.dtype)
        hs, he = _psroi_bins(r, self.scale, g, h, 2, x.dtype)
        rows, rv = _windows(hs, he, h)   # [R, G, KH]
        cols, cv = _windows(ws, we, w)   # [R, G, KW]
        kh, kw = rows.shape[-1], cols.shape[-1]
        chan = torch.arange(d * g * g, device=x.device).view(1, d, g, g, 1, 1)
        area = ((he - hs).view(-1, 1, g, 1) * (we - ws).view(-1, 1, 1, g)).to(x.dtype)
        outs = []
        for sl in _chunks(r.shape[0], d * g * g * kh * kw):
            v = x[b[sl].view(-1, 1, 1, 1, 1, 1), chan,
                  rows[sl].view(-1, 1, g, 1, kh, 1), cols[sl].view(-1, 1, 1, g, 1, kw)]
            inside = rv[sl].view(-1, 1, g, 1, kh, 1) & cv[sl].view(-1, 1, 1, g, 1, kw)
            total = torch.where(inside, v, torch.zeros_like(v)).sum(dim=(-2, -1))
            a = area[sl]
            outs.append(torch.where(a > 0, total / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(total)))
        if not outs:
            return x.new_zeros((0, d, g, g))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(141)
        x = r.standard_normal((2, 1 * 2 * 2, 5, 6))
        rois = np.array([[0, 0, 0, 11, 9], [1, 3.5, 2.4, 9.2, 7.8], [1, 8, 6, 8, 6],
                         [0, -6, -4, 40, 30], [1, 10.5, 9, 4, 3]], float)
        return [Example('name: "psroi" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
                        'psroi_pooling_param { spatial_scale: 0.5 output_dim: 1 group_size: 2 }', [x, rois])]


# -- SmoothL1Loss -------------------------------------------------------------------------------
class _SmoothL1Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, w_in: Tensor | None, w_out: Tensor | None, sigma2: float):  # type: ignore[override]
        d = a - b.reshape(a.shape)
        if w_in is not None:
            d = w_in.reshape(a.shape) * d
        # the kernel compares and evaluates in double (1.0 / sigma2, 0.5 * val * val * sigma2), stores Dtype
        d64 = d.to(torch.float64)
        small = d64.abs() < 1.0 / sigma2
        err = torch.where(small, 0.5 * d64 * d64 * sigma2, d64.abs() - 0.5 / sigma2).to(a.dtype)
        if w_out is not None:
            err = w_out.reshape(a.shape) * err
        num = a.shape[0] if a.dim() else 1
        ctx.save_for_backward(d, small, w_in, w_out)
        ctx.num, ctx.sigma2, ctx.b_shape = num, sigma2, b.shape
        return err.sum() / num

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        d, small, w_in, w_out = ctx.saved_tensors
        s2 = torch.tensor(ctx.sigma2, dtype=d.dtype, device=d.device)
        dd = torch.where(small, s2 * d, torch.sign(d))
        grads = []
        for i, sign in ((0, 1.0), (1, -1.0)):
            if not ctx.needs_input_grad[i]:
                grads.append(None)
                continue
            gi = (sign * g / ctx.num) * dd
            if w_in is not None:
                gi = w_in.reshape(d.shape) * gi
                gi = w_out.reshape(d.shape) * gi
            grads.append(gi if i == 0 else gi.reshape(ctx.b_shape))
        return grads[0], grads[1], None, None, None


def _legacy_chw(shape: Shape) -> tuple[int, ...]:
    """Blob's legacy channels, height, width (1 past the last axis), what the fork's Reshape compares."""
    return tuple(int(shape[i]) if i < len(shape) else 1 for i in (1, 2, 3)) + tuple(shape[4:])


@register_layer("SmoothL1Loss")
class SmoothL1Loss(_LossLayer):
    """Fast R-CNN's smooth L1 loss (caffe-fast-rcnn ``smooth_L1_loss_layer.cu``).

    Bottoms: predictions, targets, and optionally both the inside and the outside weights (3 and 4).
    ``d = w_in * (b0 - b1)``; ``loss = sum(w_out * f(d)) / num`` with ``f(x) = 0.5 (sigma x)^2`` where
    ``|x| < 1 / sigma^2`` else ``|x| - 0.5 / sigma^2`` (``smooth_l1_loss_param.sigma``, default 1).
    Backward to both bottoms 0 and 1 (``±top_diff / num * f'(d) * w_in * w_out``, with
    ``f'(x) = sigma^2 x`` or ``sign(x)``); the weights get none.
    """

    exact_bottoms = None
    min_bottoms = 2
    max_bottoms = 4

    def setup(self, bottom_shapes: list[Shape]) -> None:
        sigma = np.float32(self.param.smooth_l1_loss_param.sigma)
        self.sigma2 = float(sigma * sigma)  # float * float in the fork
        if len(bottom_shapes) == 3:
            raise self.error("If weights are used, must specify both inside and outside weights "
                             "(bottoms 3 and 4); received 3 bottoms")

    def allow_force_backward(self, bottom: int) -> bool:
        return True  # the fork overrides LossLayer's rule: both inputs may get diffs

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        super().reshape(bottom_shapes)
        a = bottom_shapes[0]
        for i, s in enumerate(bottom_shapes[1:], start=1):
            if _legacy_chw(s) != _legacy_chw(a):
                raise self.error(f"bottom {i} must have the channels, height and width of bottom 0 "
                                 f"{tuple(a)}; received {tuple(s)}")
        return [()]

    def forward(self, a: Tensor, b: Tensor, w_in: Tensor | None = None, w_out: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if w_in is not None:
            w_in, w_out = w_in.detach(), w_out.detach()
        return _SmoothL1Fn.apply(a, b, w_in, w_out, self.sigma2)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(142)
        # |d| kept off the kink at 1 / sigma^2 (1, then 0.25) so finite differences stay on one branch
        d1 = r.choice([-1, 1], (4, 8)) * np.where(r.random((4, 8)) < 0.5, r.uniform(0.05, 0.9, (4, 8)), r.uniform(1.1, 3, (4, 8)))
        d2 = r.choice([-1, 1], (4, 8)) * np.where(r.random((4, 8)) < 0.5, r.uniform(0.02, 0.2, (4, 8)), r.uniform(0.3, 2, (4, 8)))
        b = r.standard_normal((4, 8))
        w_in, w_out = r.uniform(0.5, 2.0, (4, 8)), r.uniform(0.0, 1.5, (4, 8))
        base = 'name: "loss" type: "SmoothL1Loss" bottom: "a" bottom: "b" '
        return [Example(base + 'top: "loss"', [b + d1, b], grad_bottoms=(0, 1)),
                Example(base + 'bottom: "wi" bottom: "wo" top: "loss" smooth_l1_loss_param { sigma: 2 }',
                        [b + d2 / w_in, b, w_in, w_out], grad_bottoms=(0, 1))]
