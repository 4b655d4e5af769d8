"""Box arithmetic of SSD (weiliu89/caffe ``src/caffe/util/bbox_util.cpp``), vectorized in torch.

Boxes are ``[..., 4]`` tensors ``(xmin, ymin, xmax, ymax)`` in normalized coordinates. Every function
follows the fork's formula and operation order in the tensor's dtype (float32 in nets), so
thresholded decisions (IoU > nms_threshold, overlap >= overlap_threshold) come out as the fork's.
"""
from __future__ import annotations

import torch
from torch import Tensor

CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3  # PriorBoxParameter.CodeType
#: IoU-matrix entries per chunk of groups in NMS (a few MB per temporary: stays in cache)
_NMS_CHUNK = 1 << 20


def bbox_size(b: Tensor) -> Tensor:
    """BBoxSize (normalized): width * height, 0 for an invalid box (xmax < xmin or ymax < ymin)."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)


def iou(a: Tensor, b: Tensor) -> Tensor:
    """JaccardOverlap of every box of ``a`` [..., K, 4] with every box of ``b`` [..., M, 4]: [..., K, M].
    Disjoint boxes (IntersectBBox's test) and empty intersections give 0."""
    a1, b1 = a.unsqueeze(-2), b.unsqueeze(-3)
    disjoint = ((b1[..., 0] > a1[..., 2]) | (b1[..., 2] < a1[..., 0])
                | (b1[..., 1] > a1[..., 3]) | (b1[..., 3] < a1[..., 1]))
    iw = torch.minimum(a1[..., 2], b1[..., 2]) - torch.maximum(a1[..., 0], b1[..., 0])
    ih = torch.minimum(a1[..., 3], b1[..., 3]) - torch.maximum(a1[..., 1], b1[..., 1])
    inter = iw * ih
    union = bbox_size(a).unsqueeze(-1) + bbox_size(b).unsqueeze(-2) - inter
    ok = ~disjoint & (iw > 0) & (ih > 0)
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(inter))


def overlaps_above(boxes: Tensor, threshold: float) -> Tensor:
    """``iou(boxes, boxes) > threshold`` for boxes [G, K, 4], with fewer and in-place temporaries.
    (IntersectBBox's disjoint test is implied by a positive intersection width and height.)"""
    x0, y0, x1, y1 = boxes.unbind(-1)
    iw = torch.minimum(x1.unsqueeze(-1), x1.unsqueeze(-2)).sub_(torch.maximum(x0.unsqueeze(-1), x0.unsqueeze(-2)))
    ih = torch.minimum(y1.unsqueeze(-1), y1.unsqueeze(-2)).sub_(torch.maximum(y0.unsqueeze(-1), y0.unsqueeze(-2)))
    ok = (iw > 0).logical_and_(ih > 0)
    inter = iw.mul_(ih)
    sz = bbox_size(boxes)
    union = (sz.unsqueeze(-1) + sz.unsqueeze(-2)).sub_(inter)
    return ok.logical_and_(inter.div_(union) > threshold)


def _prior_geometry(prior: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    pw = prior[..., 2] - prior[..., 0]
    ph = prior[..., 3] - prior[..., 1]
    return pw, ph, (prior[..., 0] + prior[..., 2]) / 2, (prior[..., 1] + prior[..., 3]) / 2


def decode(prior: Tensor, var: Tensor, loc: Tensor, code_type: int, variance_in_target: bool) -> Tensor:
    """DecodeBBox of offsets ``loc`` [..., P, 4] against ``prior`` [P, 4] with variances ``var`` [P, 4]."""
    if code_type == CORNER:
        return prior + (loc if variance_in_target else var * loc)
    pw, ph, pcx, pcy = _prior_geometry(prior)
    if code_type == CORNER_SIZE:
        size = torch.stack([pw, ph, pw, ph], dim=-1)
        return prior + (loc * size if variance_in_target else var * loc * size)
    if code_type != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    if variance_in_target:
        cx = loc[..., 0] * pw + pcx
        cy = loc[..., 1] * ph + pcy
        w = torch.exp(loc[..., 2]) * pw
        h = torch.exp(loc[..., 3]) * ph
    else:
        cx = var[..., 0] * loc[..., 0] * pw + pcx
        cy = var[..., 1] * loc[..., 1] * ph + pcy
        w = torch.exp(var[..., 2] * loc[..., 2]) * pw
        h = torch.exp(var[..., 3] * loc[..., 3]) * ph
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def encode(prior: Tensor, var: Tensor, gt: Tensor, code_type: int, variance_in_target: bool) -> Tensor:
    """EncodeBBox of boxes ``gt`` [..., 4] against their priors [..., 4] (variances [..., 4])."""
    if code_type == CORNER:
        d = gt - prior
        return d if variance_in_target else d / var
    pw, ph, pcx, pcy = _prior_geometry(prior)
    if code_type == CORNER_SIZE:
        size = torch.stack([pw, ph, pw, ph], dim=-1)
        d = (gt - prior) / size
        return d if variance_in_target else d / var
    if code_type != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    bw = gt[..., 2] - gt[..., 0]
    bh = gt[..., 3] - gt[..., 1]
    bcx = (gt[..., 0] + gt[..., 2]) / 2
    bcy = (gt[..., 1] + gt[..., 3]) / 2
    out = torch.stack([(bcx - pcx) / pw, (bcy - pcy) / ph, torch.log(bw / pw), torch.log(bh / ph)], dim=-1)
    return out if variance_in_target else out / var


def greedy_nms(boxes: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """Greedy NMS of candidates already sorted by descending score: ``boxes`` [G, K, 4], ``valid`` [G, K]
    (candidates that take part). A candidate is kept unless a kept one before it overlaps it by more than
    ``threshold`` (ApplyNMSFast with eta = 1). Returns the kept mask [G, K].

    Solved without a loop over boxes: with S[j, i] = (j < i and IoU > threshold), ``keep = valid and
    not any(keep[j] and S[j, i])`` is iterated from keep = valid; each pass fixes at least the next
    candidate of every chain, and the fixed point is the greedy result (the recurrence has one
    solution)."""
    g, k = valid.shape
    if k == 0 or g == 0:
        return valid.clone()
    if g * k * k > _NMS_CHUNK and g > 1:
        step = max(1, _NMS_CHUNK // (k * k))
        return torch.cat([greedy_nms(boxes[i:i + step], valid[i:i + step], threshold) for i in range(0, g, step)])
    return greedy_keep(overlaps_above(boxes, threshold), valid)


def greedy_keep(over: Tensor, valid: Tensor) -> Tensor:
    """The greedy NMS result [G, K] from ``over`` [G, K, K] (bool, modified in place): whether candidate
    j, when kept, suppresses candidate i (only j < i is read); candidates sorted by descending score.
    See `greedy_nms` for the fixed-point iteration."""
    k = valid.shape[1]
    over &= torch.ones(k, k, dtype=torch.bool, device=over.device).triu(1)
    over &= valid.unsqueeze(-1) & valid.unsqueeze(-2)
    s = over.to(torch.float32)
    keep = valid.clone()
    for _ in range(k + 1):
        suppressed = torch.bmm(keep.to(torch.float32).unsqueeze(1), s).squeeze(1) > 0
        new = valid & ~suppressed
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def adaptive_nms(boxes: Tensor, valid: Tensor, threshold: float, eta: float) -> Tensor:
    """ApplyNMSFast with eta < 1 (the threshold shrinks by eta after each kept box while above 0.5):
    inherently sequential, so a loop over the candidates of each group (host side)."""
    over = iou(boxes, boxes).cpu()
    valid_c = valid.cpu()
    keep = torch.zeros_like(valid_c)
    for g in range(valid_c.shape[0]):
        kept: list[int] = []
        thr = threshold
        for i in torch.nonzero(valid_c[g]).flatten().tolist():
            if all(float(over[g, j, i]) <= thr for j in kept):
                kept.append(i)
                if eta < 1 and thr > 0.5:
                    thr *= eta
        keep[g, kept] = True
    return keep.to(valid.device)
