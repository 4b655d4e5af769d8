"""Vectorised forms of FlowNet 2.0's augmentation kernels (no layer is registered here).

lmb-freiburg/flownet2 @ b92e198b: ``src/caffe/layers/data_augmentation_layer.cu`` (``SpatialAugmentation``,
``ComputeChromaticEigenspace``, ``ChromaticEigenAugmentation``, ``ColorContrastAugmentation``,
``ApplyEffects``) and ``flow_augmentation_layer.cu`` (``WarpData``). Each function computes what the kernel
computes for every element, in the input's dtype, with the kernel's order of operations, clamps
(``fmaxf(a, fminf(f, b))``, so NaN goes to the upper bound, as C's) and border handling:

* spatial: ``x_src = t0 x + t2 y + t4`` clamped to ``[0, W - 1.05]`` (``[0, H - 1.05]``), bilinear from
  ``floor`` and ``floor + 1`` (the last row and column of an identity crop are thus blended 5 % with their
  neighbours, as in the fork);
* flow: nearest source pixel ``(int)(pos + 0.5)`` (truncation toward zero) with no clamp: the flat index
  ``W (H (2n + c) + yi) + xi`` reaches neighbouring rows, channels or items as the fork's does; beyond the
  buffer (the fork reads memory past or before it) the nearest element of the buffer is read.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _clampf(x: Tensor, lo: float, hi: float) -> Tensor:
    """C's ``fmaxf(lo, fminf(x, hi))``."""
    return torch.fmax(torch.fmin(x, x.new_tensor(hi)), x.new_tensor(lo))


def spatial_warp(x: Tensor, mats: Tensor, out_h: int, out_w: int) -> Tensor:
    """``SpatialAugmentation``: ``x`` (N, C, H, W) sampled at each item's matrix ``mats`` (N, 6)."""
    n, c, h, w = x.shape
    m = mats.to(x.dtype)
    xs = torch.arange(out_w, device=x.device, dtype=x.dtype).view(1, 1, out_w)
    ys = torch.arange(out_h, device=x.device, dtype=x.dtype).view(1, out_h, 1)
    t = [m[:, i].view(n, 1, 1) for i in range(6)]
    xpos = _clampf(xs * t[0] + ys * t[2] + t[4], 0.0, float(np.float32(w) - np.float32(1.05)))
    ypos = _clampf(xs * t[1] + ys * t[3] + t[5], 0.0, float(np.float32(h) - np.float32(1.05)))
    tlx, tly = torch.floor(xpos), torch.floor(ypos)
    xd, yd = xpos - tlx, ypos - tly
    x0, y0 = tlx.long(), tly.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = x.reshape(n, c, h * w)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        idx = (yy * w + xx).reshape(n, 1, out_h * out_w).expand(n, c, out_h * out_w)
        return torch.gather(flat, 2, idx).view(n, c, out_h, out_w)

    xd, yd = xd.unsqueeze(1), yd.unsqueeze(1)
    return (((1 - xd) * (1 - yd)) * at(y0, x0) + (xd * yd) * at(y1, x1)
            + ((1 - xd) * yd) * at(y1, x0) + (xd * (1 - yd)) * at(y0, x1))


def eigen_space(x: Tensor, eigvec: Tensor) -> dict[str, Tensor]:
    """``ComputeChromaticEigenspace`` plus the host step after it, over the whole batch ``x`` (N, 3, H, W):
    ``mean_rgb`` (the mean colour), ``max_abs_eig`` (largest |eigvec_c . rgb|), ``mean_eig`` (the mean
    colour in eigen space, divided by ``max_abs_eig`` where that exceeds 1e-2) and ``max_l``."""
    n, _, h, w = x.shape
    e = eigvec.to(x.dtype).view(3, 3)
    mean_rgb = (x / w / h).sum(dim=(0, 2, 3)) / n
    max_abs = torch.stack([(e[c, 0] * x[:, 0] + e[c, 1] * x[:, 1] + e[c, 2] * x[:, 2]).abs().amax()
                           for c in range(3)])
    mean_eig = e @ mean_rgb
    mean_eig = torch.where(max_abs > 1e-2, mean_eig / max_abs, mean_eig)
    return {"mean_rgb": mean_rgb, "max_abs_eig": max_abs, "mean_eig": mean_eig,
            "max_l": torch.sqrt((max_abs * max_abs).sum())}


def _spow(v: Tensor, p: Tensor) -> Tensor:
    """``copysign(pow(abs(v), p), v)``."""
    return torch.copysign(torch.pow(v.abs(), p), v)


def _gt_or(a: Tensor, b: Tensor) -> Tensor:
    """The fork's ``_max(a, b)`` macro: ``a > b ? a : b``."""
    return torch.where(a > b, a, b)


def chromatic_eigen(x: Tensor, k: dict[str, Tensor], space: dict[str, Tensor], eigvec: Tensor,
                    max_multiplier: float) -> Tensor:
    """``ChromaticEigenAugmentation`` of ``x`` (N, 3, H, W); ``k`` maps each eigen coefficient name to an (N,)
    tensor, ``space`` is :func:`eigen_space`'s."""
    n = x.shape[0]
    e = eigvec.to(x.dtype).view(3, 3)
    ma, me, ml = space["max_abs_eig"], space["mean_eig"], space["max_l"]

    def co(name: str) -> Tensor:
        return k[name].to(x.dtype).view(n, 1, 1)

    rgb = x - space["mean_rgb"].view(1, 3, 1, 1)
    eig = [e[c, 0] * rgb[:, 0] + e[c, 1] * rgb[:, 1] + e[c, 2] * rgb[:, 2] for c in range(3)]
    for c in range(3):
        v = _spow(eig[c] / ma[c], co(f"pow_nomean{c}"))
        v = (v + co(f"add_nomean{c}")) * co(f"mult_nomean{c}")
        eig[c] = torch.where(ma[c] > 1e-2, v, eig[c])
    eig = [eig[c] + me[c] for c in range(3)]
    v0 = (_spow(eig[0], co("pow_withmean0")) + co("add_withmean0")) * co("mult_withmean0")
    eig[0] = torch.where(ma[0] > 1e-2, v0, eig[0])
    s = torch.sqrt(eig[1] * eig[1] + eig[2] * eig[2])
    s1 = torch.fmax(torch.pow(s, co("pow_withmean1")) + co("add_withmean1"), s.new_zeros(())) * co("mult_withmean1")
    s1 = torch.where(s > 1e-2, s1, s)
    ang = co("col_angle")
    r1 = torch.cos(ang) * eig[1] - torch.sin(ang) * eig[2]
    r2 = torch.sin(ang) * eig[1] + torch.cos(ang) * eig[2]
    eig[1], eig[2] = torch.where(ang != 0, r1, eig[1]), torch.where(ang != 0, r2, eig[2])
    eig = [torch.where(ma[c] > 1e-2, eig[c] * ma[c], eig[c]) for c in range(3)]
    l1 = torch.sqrt(eig[0] * eig[0] + eig[1] * eig[1] + eig[2] * eig[2]) / ml
    for c in (1, 2):
        eig[c] = torch.where(s > 1e-2, eig[c] / s * s1, eig[c])
    if bool(ml > 1e-2):
        ln = torch.sqrt(eig[0] * eig[0] + eig[1] * eig[1] + eig[2] * eig[2])
        l1 = _gt_or(torch.pow(l1, co("lmult_pow")) + co("lmult_add"), l1.new_zeros(())) * co("lmult_mult") * ml
        for c in range(3):
            v = eig[c] / ln * l1
            v = torch.where(v > ma[c], ma[c].expand_as(v), v)
            eig[c] = torch.where(ln > 1e-2, v, eig[c])
    out = []
    for c in range(3):
        v = e[0, c] * eig[0] + e[1, c] * eig[1] + e[2, c] * eig[2]
        v = torch.where(v < max_multiplier, v, v.new_tensor(max_multiplier))  # _min(rgb, max_multiplier)
        out.append(_gt_or(v, v.new_zeros(())))
    return torch.stack(out, dim=1)


def color_contrast(x: Tensor, color: Tensor, gamma: Tensor, brightness: Tensor, contrast: Tensor,
                   max_multiplier: float) -> Tensor:
    """``ColorContrastAugmentation`` of ``x`` (N, 3, H, W): colour scaling with brightness compensation
    (clamped to [0, 1]), gamma, brightness, contrast, clamp to [0, max_multiplier]."""
    n = x.shape[0]
    col = color.to(x.dtype).view(n, 3, 1, 1)
    mean_in = x[:, 0] + x[:, 1] + x[:, 2]
    rgb = x * col
    mean_out = rgb[:, 0] + rgb[:, 1] + rgb[:, 2]
    bc = (mean_in / (mean_out + 0.01)).unsqueeze(1)
    rgb = _clampf(rgb * bc, 0.0, 1.0)
    rgb = torch.pow(rgb, gamma.to(x.dtype).view(n, 1, 1, 1)) + brightness.to(x.dtype).view(n, 1, 1, 1)
    rgb = 0.5 + (rgb - 0.5) * contrast.to(x.dtype).view(n, 1, 1, 1)
    return _clampf(rgb, 0.0, max_multiplier)


def effects(x: Tensor, shadow_nx: Tensor, shadow_ny: Tensor, shadow_distance: Tensor, shadow_strength: Tensor,
            max_multiplier: float) -> Tensor:
    """``ApplyEffects``: subtract ``shadow_strength`` beyond the shadow line, clamp to [0, max_multiplier]."""
    n, _, h, w = x.shape

    def col(t: Tensor) -> Tensor:
        return t.to(x.dtype).view(n, 1, 1, 1)

    xs = (torch.arange(w, device=x.device) - w // 2).to(x.dtype).view(1, 1, 1, w)
    ys = (torch.arange(h, device=x.device) - h // 2).to(x.dtype).view(1, 1, h, 1)
    side = xs * col(shadow_nx) + ys * col(shadow_ny) - col(shadow_distance) > 0
    return _clampf(torch.where(side, x - col(shadow_strength), x), 0.0, max_multiplier)


def flow_warp(flow: Tensor, m1: Tensor, m2_inv: Tensor, out_h: int, out_w: int) -> Tensor:
    """``WarpData``: the flow of crop 1's pixel to crop 2's, through image 1's matrix ``m1``, the source
    flow (nearest pixel) and the inverse of image 2's matrix ``m2_inv`` (both (N, 6))."""
    n, _, h, w = flow.shape
    a, b = m1.to(flow.dtype), m2_inv.to(flow.dtype)
    xs = torch.arange(out_w, device=flow.device, dtype=flow.dtype).view(1, 1, out_w)
    ys = torch.arange(out_h, device=flow.device, dtype=flow.dtype).view(1, out_h, 1)

    def t(m: Tensor, i: int) -> Tensor:
        return m[:, i].view(n, 1, 1)

    x1 = xs * t(a, 0) + ys * t(a, 2) + t(a, 4)
    y1 = xs * t(a, 1) + ys * t(a, 3) + t(a, 5)
    xi, yi = torch.trunc(x1 + 0.5).long(), torch.trunc(y1 + 0.5).long()
    item = torch.arange(n, device=flow.device).view(n, 1, 1)
    flat = flow.reshape(-1)
    last = flat.numel() - 1
    u = flat[(w * (h * (2 * item) + yi) + xi).clamp(0, last)]
    v = flat[(w * (h * (2 * item + 1) + yi) + xi).clamp(0, last)]
    x2, y2 = x1 + u, y1 + v
    x3 = x2 * t(b, 0) + y2 * t(b, 2) + t(b, 4)
    y3 = x2 * t(b, 1) + y2 * t(b, 3) + t(b, 5)
    return torch.stack([x3 - xs, y3 - ys], dim=1)


__all__ = ["chromatic_eigen", "color_contrast", "effects", "eigen_space", "flow_warp", "spatial_warp"]
