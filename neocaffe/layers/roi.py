"""The Fast R-CNN / R-FCN RoI pooling layers: ``ROIPooling`` and ``PSROIPooling`` (their loss,
``SmoothL1Loss``, is in smooth_l1_loss.py; region proposals in proposal.py).

Lineages and the source files their semantics come from:

* ``ROIPooling``: rbgirshick/caffe-fast-rcnn (py-faster-rcnn's Caffe), branch ``faster-rcnn`` @
  4115385d, ``src/caffe/layers/roi_pooling_layer.{cpp,cu}``.
* ``PSROIPooling``: daijifeng001/caffe-rfcn (R-FCN) @ 543f8f6a, ``src/caffe/layers/psroi_pooling_layer.cu``
  (GPU only in the fork as well).
* zhaoweicai/cascade-rcnn @ 2252f461 (Cascade R-CNN, MS-CNN) ships both: its ``psroi_pooling_layer.cu`` is
  R-FCN's; its ``roi_pooling_layer.{cpp,cu}`` adds ``roi_pooling_param.pad_ratio`` (each RoI grows by
  ``(x2 - x1 + 1) * pad_ratio`` on both sides before the rounding) and its backward (``.cu`` only; the CPU
  one is NOT_IMPLEMENTED) adds each bin's diff to its argmax pixel, without fast-rcnn's feasible-set test.
  Both are on where the layer sets ``pad_ratio`` (all of the fork's nets do, most as 0) or the net is of
  lineage ``"cascade"`` (``neocaffe.layers.lineage``); otherwise fast-rcnn's, unchanged.

A RoI is a row ``(batch_index, x1, y1, x2, y2)`` of bottom 1 (``R x 5``, or ``R x 5 x 1 x 1``), in
image coordinates; ``spatial_scale`` maps it onto the feature map. Every pooling bin is computed in
the bottom's dtype with the fork's rounding (C's ``round``: halves away from zero). No loop over boxes
or pixels: a bin's maximum is read from a sparse table of power-of-two window maxima (4 lookups per
bin and channel, whatever its size; one pass per window-size level), a bin's sum from an integral
image (4 lookups).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.registry import register_layer

FLT_MAX = 3.4028234663852886e38
_NO_INDEX = torch.iinfo(torch.int32).max


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


def rois_count(shape: Shape) -> int:
    """The RoI count of bottom 1's shape: its num, as the forks' Reshape reads it. The 5 values per RoI are
    checked when the RoIs are read (:func:`rois_2d`), not here: the forks' Reshape does not check them, and a
    deploy net may declare a placeholder (``input_shape { dim: 1 dim: 4 }``: ShuangLI59/person_search's
    eval_probe.prototxt) that the script reshapes before its forward."""
    return int(shape[0]) if len(shape) else 1


def batch_index(rois: Tensor, batch: int, layer: Layer) -> Tensor:
    """``static_cast<int>(roi[0])``, checked against the batch size (the fork's CHECK_GE/CHECK_LT)."""
    b = rois[:, 0].to(torch.int64)
    if b.numel() and (bool((b < 0).any()) or bool((b >= batch).any())):
        raise layer.error(f"RoI batch indices must lie in [0, {batch}); received {b.min().item()}..{b.max().item()}")
    return b


# -- ROIPooling ---------------------------------------------------------------------------------
def _roi_geometry(rois: Tensor, scale: float, dtype: torch.dtype, pad_ratio: float = 0.0) -> tuple[Tensor, ...]:
    """Per RoI: start/end (w, h) on the feature map and the bin sizes, as the fork computes them
    (``pad_ratio``: cascade-rcnn's, the corners moved out by ``(x2 - x1 + 1) * pad_ratio`` first)."""
    s = torch.tensor(scale, dtype=dtype, device=rois.device)
    r = rois.to(dtype)
    if pad_ratio:
        pr = torch.tensor(pad_ratio, dtype=dtype, device=rois.device)
        pw, ph = (r[:, 3] - r[:, 1] + 1) * pr, (r[:, 4] - r[:, 2] + 1) * pr
        r = torch.stack([r[:, 0], r[:, 1] - pw, r[:, 2] - ph, r[:, 3] + pw, r[:, 4] + ph], 1)
    sw, sh, ew, eh = (caffe_round(r[:, k] * s).to(torch.int64) for k in (1, 2, 3, 4))
    roi_w = (ew - sw + 1).clamp(min=1)  # malformed RoIs are forced to 1 x 1
    roi_h = (eh - sh + 1).clamp(min=1)
    return sw, sh, ew, eh, roi_w.to(dtype), roi_h.to(dtype)


def _roi_pool(x: Tensor, rois: Tensor, b: Tensor, scale: float, pooled: tuple[int, int],
              with_arg: bool, pad_ratio: float = 0.0) -> tuple[Tensor, Tensor | None]:
    sw, sh, _, _, roi_w, roi_h = _roi_geometry(rois, scale, x.dtype, pad_ratio)
    hs, he = _roi_bins(sh, roi_h, pooled[0], x.shape[2])
    ws, we = _roi_bins(sw, roi_w, pooled[1], x.shape[3])
    return range_max(x, b, hs, he, ws, we, with_arg)


def _roi_bins(start: Tensor, roi_len: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
    """``[R, pooled]`` bin bounds: ``floor(p * bin) + start``, ``ceil((p + 1) * bin) + start``, clipped."""
    binsz = roi_len / pooled
    p = torch.arange(pooled, device=start.device, dtype=roi_len.dtype)
    lo = torch.floor(p * binsz.unsqueeze(1)).to(torch.int64) + start.unsqueeze(1)
    hi = torch.ceil((p + 1) * binsz.unsqueeze(1)).to(torch.int64) + start.unsqueeze(1)
    return lo.clamp(0, size), hi.clamp(0, size)


def _floor_log2(n: Tensor) -> Tensor:
    """``floor(log2(n))`` of positive integers, exactly."""
    k = torch.floor(torch.log2(n.to(torch.float64))).to(torch.int64)
    return k + ((1 << (k + 1)) <= n).to(torch.int64) - ((1 << k) > n).to(torch.int64)


def _max_shift(v: Tensor, idx: Tensor | None, step: int, dim: int) -> tuple[Tensor, Tensor | None]:
    """Window maxima twice as long along ``dim``: ``max(v[i], v[i + step])``; on equal values the smaller
    flat index (the first in row-major order) is kept. Windows running off the end are never read."""
    size = v.shape[dim]
    pad = [0, 0] * (v.dim() - 1 - dim) + [0, min(step, size)]
    other = F.pad(v.narrow(dim, min(step, size), size - min(step, size)), pad, value=-math.inf)
    out = torch.maximum(v, other)
    if idx is None:
        return out, None
    oidx = F.pad(idx.narrow(dim, min(step, size), size - min(step, size)), pad, value=_NO_INDEX)
    return out, torch.where(other > v, oidx, torch.where(v > other, idx, torch.minimum(idx, oidx)))


def range_max(x: Tensor, b: Tensor, hs: Tensor, he: Tensor, ws: Tensor, we: Tensor,
              with_arg: bool) -> tuple[Tensor, Tensor | None]:
    """Caffe's RoI max pooling of ``x`` [N, C, H, W] over bins ``[hs, he) x [ws, we)`` (``[R, P]`` and
    ``[R, Q]``, clipped) of image ``b`` [R]: top [R, C, P, Q] and (``with_arg``) the argmax ``h * W + w``
    (-1 where nothing beat ``-FLT_MAX``). NaN never wins (Caffe's ``>``); an empty bin gives 0.

    A bin of ``lh x lw`` pixels is the union of 4 windows of ``2^a x 2^b`` (``a = floor(log2 lh)``),
    read from the table of such window maxima, built once per level for the whole map."""
    n, c, h, w = x.shape
    r, p, q = hs.shape[0], hs.shape[1], ws.shape[1]
    lh, lw = he - hs, we - ws
    full = (lh > 0).unsqueeze(2) & (lw > 0).unsqueeze(1)                     # [R, P, Q]
    la, lb = _floor_log2(lh.clamp(min=1)), _floor_log2(lw.clamp(min=1))
    top = x.new_zeros((r, p, q, c))
    arg = torch.full((r, p, q, c), -1, dtype=torch.int64, device=x.device) if with_arg else None
    # channels last: a lookup reads C contiguous values
    rows = torch.where(torch.isnan(x), torch.full_like(x, -math.inf), x).permute(0, 2, 3, 1).contiguous()
    rows_i = (torch.arange(h * w, device=x.device, dtype=torch.int32).view(1, h, w, 1).expand(n, h, w, c)
              if with_arg else None)
    for a in range(int(la.max()) + 1 if r else 0):
        if a:
            rows, rows_i = _max_shift(rows, rows_i, 1 << (a - 1), 1)
        tab, tab_i = rows, rows_i
        for bb in range(int(lb.max()) + 1):
            if bb:
                tab, tab_i = _max_shift(tab, tab_i, 1 << (bb - 1), 2)
            ri, pi, qi = torch.nonzero(full & (la == a).unsqueeze(2) & (lb == bb).unsqueeze(1), as_tuple=True)
            if ri.numel() == 0:
                continue
            h0, h1 = hs[ri, pi], he[ri, pi] - (1 << a)
            w0, w1 = ws[ri, qi], we[ri, qi] - (1 << bb)
            hk, wk = torch.stack([h0, h0, h1, h1], 1), torch.stack([w0, w1, w0, w1], 1)
            at = (b[ri].unsqueeze(1), hk, wk)
            v = tab[at]                                                          # [S, 4, C]
            best = torch.maximum(torch.maximum(v[:, 0], v[:, 1]), torch.maximum(v[:, 2], v[:, 3]))
            top[ri, pi, qi] = best
            if arg is not None:
                cand = tab_i[at].masked_fill_(v != best.unsqueeze(1), _NO_INDEX)  # ties: the first pixel
                first = torch.minimum(torch.minimum(cand[:, 0], cand[:, 1]), torch.minimum(cand[:, 2], cand[:, 3]))
                arg[ri, pi, qi] = first.to(torch.int64).masked_fill_(best <= -FLT_MAX, -1)
    # nothing beat Caffe's initial -FLT_MAX (all -inf or NaN): the top keeps -FLT_MAX, the argmax -1
    top = top.clamp_(min=-FLT_MAX).permute(0, 3, 1, 2).contiguous()
    return top, arg.permute(0, 3, 1, 2).contiguous() if arg is not None else None


def _feasible(start: Tensor, end: Tensor, roi_len: Tensor, lo: Tensor, hi: Tensor, pooled: int) -> Tensor:
    """``[R, P, K]``: whether pixel ``lo[r, p] + k`` of bin p passes the fork's backward test for bin p:
    inside ``[start, end]`` and ``p`` in ``[floor((pix - start) / bin), ceil((pix - start + 1) / bin))``
    (computed in ``roi_len``'s dtype, as the fork does in Dtype)."""
    k = torch.arange(max(int((hi - lo).max()) if hi.numel() else 1, 1), device=lo.device)
    pix = lo.unsqueeze(-1) + k
    s, binsz = start.view(-1, 1, 1), (roi_len / pooled).view(-1, 1, 1)
    first = torch.floor((pix - s).to(roi_len.dtype) / binsz).clamp(0, pooled)
    last = torch.ceil((pix - s + 1).to(roi_len.dtype) / binsz).clamp(0, pooled)
    p = torch.arange(pooled, device=lo.device, dtype=roi_len.dtype).view(1, -1, 1)
    return (k < (hi - lo).unsqueeze(-1)) & (pix >= s) & (pix <= end.view(-1, 1, 1)) & (p >= first) & (p < last)


class _ROIPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, b: Tensor, scale: float, pooled: tuple[int, int],  # type: ignore[override]
                cascade: float | None = None):
        top, arg = _roi_pool(x, rois, b, scale, pooled, with_arg=True, pad_ratio=cascade or 0.0)
        ctx.save_for_backward(rois, b, arg)
        ctx.meta = (x.shape, scale, pooled, cascade)
        return top

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        rois, b, arg = ctx.saved_tensors
        (n, c, h, w), scale, (ph, pw), cascade = ctx.meta
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if cascade is not None:  # cascade-rcnn's ROIPoolBackward: each bin's diff to its argmax
            flat = ((b.view(-1, 1, 1, 1) * c + torch.arange(c, device=g.device).view(1, c, 1, 1)) * (h * w)
                    + arg.clamp(min=0))
            gx = g.new_zeros(n * c * h * w)
            gx.index_add_(0, flat.reshape(-1), torch.where(arg >= 0, g, torch.zeros_like(g)).reshape(-1))
            return gx.view(n, c, h, w), None, None, None, None, None
        sw, sh, ew, eh, roi_w, roi_h = _roi_geometry(rois, scale, g.dtype)
        hs, he = _roi_bins(sh, roi_h, ph, h)
        ws, we = _roi_bins(sw, roi_w, pw, w)
        hh = torch.div(arg, w, rounding_mode="floor")
        ww = arg - hh * w
        ri = torch.arange(arg.shape[0], device=g.device).view(-1, 1, 1, 1)
        # the fork's backward: a bottom pixel takes the diff of the bins in its feasible set whose argmax
        # it is; feasibility is a property of (RoI, bin, pixel of the bin), tabled once per axis
        fh = _feasible(sh, eh, roi_h, hs, he, ph)
        fw = _feasible(sw, ew, roi_w, ws, we, pw)
        kh = (hh - hs.unsqueeze(1).unsqueeze(-1)).clamp(0, fh.shape[-1] - 1)
        kw = (ww - ws.unsqueeze(1).unsqueeze(2)).clamp(0, fw.shape[-1] - 1)
        ok = ((arg >= 0) & fh[ri, torch.arange(ph, device=g.device).view(1, 1, -1, 1), kh]
              & fw[ri, torch.arange(pw, device=g.device).view(1, 1, 1, -1), kw])
        flat = (b.view(-1, 1, 1, 1) * c + torch.arange(c, device=g.device).view(1, c, 1, 1)) * (h * w) + arg.clamp(min=0)
        gx = g.new_zeros(n * c * h * w)
        gx.index_add_(0, flat.reshape(-1), torch.where(ok, g, torch.zeros_like(g)).reshape(-1))
        return gx.view(n, c, h, w), None, None, None, None, None


@register_layer("ROIPooling")
class ROIPooling(Layer):
    """Fast R-CNN's RoI max pooling (caffe-fast-rcnn ``roi_pooling_layer.cpp/.cu``).

    ``roi_pooling_param {pooled_h pooled_w spatial_scale}``. A RoI's corners are ``round(x * scale)``
    (halves away from zero); its size ``max(end - start + 1, 1)``; bin (ph, pw) covers rows
    ``[floor(ph * bin_h), ceil((ph + 1) * bin_h))`` + start, clipped to the map; an empty bin gives 0.
    The maximum is the first in row-major order (Caffe's strict ``>``). Backward: each bin's diff goes
    to its argmax pixel, where the fork's feasible-set test (computed in the dtype) admits that bin;
    the RoIs get no diff. cascade-rcnn's form (``pad_ratio`` set, or a net of lineage ``"cascade"``): the
    RoI padded first, and every bin's diff to its argmax (module docstring).
    """

    exact_bottoms = 2
    exact_tops = 1
    takes_net = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error(f"roi_pooling_param.pooled_h and pooled_w must be > 0; received {p.pooled_h}, {p.pooled_w}")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.scale = float(p.spatial_scale)
        #: cascade-rcnn's form (its pad_ratio; argmax backward): told by the field, else by the net's lineage
        self.cascade: float | None = float(p.pad_ratio) if p.HasField("pad_ratio") else None
        if self.cascade is None and self.net_so_far is not None:
            try:
                if net_lineage(self.net_so_far) == "cascade":
                    self.cascade = 0.0
            except ValueError:
                pass  # several forks' own types: ROIPooling keeps fast-rcnn's form

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        if len(x) != 4:
            raise self.error(f"bottom 0 must be N x C x H x W; received shape {tuple(x)}")
        return [(rois_count(bottom_shapes[1]), x[1], *self.pooled)]

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        r = rois_2d(rois, self)
        b = batch_index(r, x.shape[0], self)
        if torch.is_grad_enabled() and x.requires_grad:
            return _ROIPoolFn.apply(x, r, b, self.scale, self.pooled, self.cascade)
        return _roi_pool(x, r, b, self.scale, self.pooled, with_arg=False, pad_ratio=self.cascade or 0.0)[0]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(140)
        # distinct values (a permutation) so finite differences never move an argmax
        x = (r.permutation(2 * 1 * 6 * 7).reshape(2, 1, 6, 7) * 0.01).astype(float)
        # a whole-map RoI, fractional corners, a one-pixel RoI, one beyond the map (the fork's backward
        # of a malformed RoI, end < start, is not the gradient of its forward: tests/layers/test_roi.py)
        rois = np.array([[0, 0, 0, 13, 11], [1, 3.5, 2.4, 11.2, 9.8], [1, 8, 6, 8, 6], [0, -6, -4, 30, 22]], float)
        base = 'name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        # cascade-rcnn's form (pad_ratio set): RoIs within the map, so its argmax backward is the gradient
        crois = np.array([[0, 0, 0, 11, 9], [1, 3.5, 2.4, 9.2, 7.8], [1, 6, 4, 8, 6]], float)
        return [Example(base + 'roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 }', [x, rois]),
                Example(base + 'roi_pooling_param { pooled_h: 4 pooled_w: 5 spatial_scale: 0.25 }', [x, rois]),
                Example(base + 'roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 pad_ratio: 0.1 }',
                        [x, crois])]


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
    bin (see ``_psroi_bins``); an empty bin gives 0. The sum is exact (float64) where the fork adds in
    float32, pixel by pixel: they differ by float32 rounding. Backward (the fork's): ``top_diff /
    bin_area`` is added to every pixel of the bin; that is the gradient of this forward, so autograd
    computes it (through the integral image). The RoIs get no diff.
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
        return [(rois_count(bottom_shapes[1]), self.dim, self.group, self.group)]

    def forward(self, x: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        r = rois_2d(rois, self)
        b = batch_index(r, x.shape[0], self)
        g, d = self.group, self.dim
        h, w = x.shape[2], x.shape[3]
        ws, we = _psroi_bins(r, self.scale, g, w, 1, x.dtype)
        hs, he = _psroi_bins(r, self.scale, g, h, 2, x.dtype)
        # bin sums from an integral image in float64 (exact for float32 data, whatever the map's size);
        # its autograd backward adds top_diff / area to every pixel of the bin, the fork's backward
        integral = F.pad(x.to(torch.float64).cumsum(2).cumsum(3), (1, 0, 1, 0))
        bi = b.view(-1, 1, 1, 1)
        chan = torch.arange(d * g * g, device=x.device).view(1, d, g, g)
        h0, h1 = hs.view(-1, 1, g, 1), he.view(-1, 1, g, 1)
        w0, w1 = ws.view(-1, 1, 1, g), we.view(-1, 1, 1, g)
        total = (integral[bi, chan, h1, w1] - integral[bi, chan, h0, w1]
                 - integral[bi, chan, h1, w0] + integral[bi, chan, h0, w0])
        area = ((h1 - h0) * (w1 - w0)).to(torch.float64)
        out = torch.where(area > 0, total / area.clamp(min=1), torch.zeros_like(total))
        return out.to(x.dtype)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(141)
        x = r.standard_normal((2, 1 * 2 * 2, 5, 6))
        rois = np.array([[0, 0, 0, 11, 9], [1, 3.5, 2.4, 9.2, 7.8], [1, 8, 6, 8, 6],
                         [0, -6, -4, 40, 30], [1, 10.5, 9, 4, 3]], float)
        return [Example('name: "psroi" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
                        'psroi_pooling_param { spatial_scale: 0.5 output_dim: 1 group_size: 2 }', [x, rois])]
