"""The box arithmetic of zhaoweicai/cascade-rcnn (@ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c,
``src/caffe/util/bbox_util.{cpp,cu}``: ``BBoxSize``, ``JaccardOverlap``, ``ClipBBox``, ``ApplyNMS``,
``DecodeBBoxesWithPrior``), vectorized in torch for the layers of ``cascade_boxes.py`` and
``cascade_output.py``. Boxes are float32 pixel boxes with the fork's ``+ 1`` convention (see
``cascade_boxes``'s docstring for the overlap rules).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Layer

_F = torch.float32


def bbox_size(b: Tensor) -> Tensor:
    """BBoxSize of ``b`` [..., 4]: ``(x2 - x1 + 1) * (y2 - y1 + 1)``, 0 for an invalid box."""
    bad = (b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])
    s = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return torch.where(bad, torch.zeros_like(s), s)


def overlap_matrix(a: Tensor, b: Tensor, mode: str = "IOU") -> Tensor:
    """JaccardOverlap(a[i], b[j], mode) for ``a`` [K, 4], ``b`` [M, 4]: [K, M]."""
    a1, b1 = a.unsqueeze(1), b.unsqueeze(0)
    ix1, iy1 = torch.maximum(a1[..., 0], b1[..., 0]), torch.maximum(a1[..., 1], b1[..., 1])
    ix2, iy2 = torch.minimum(a1[..., 2], b1[..., 2]), torch.minimum(a1[..., 3], b1[..., 3])
    inter = torch.where((ix1 > ix2) | (iy1 >= iy2), torch.zeros_like(ix1), (ix2 - ix1 + 1) * (iy2 - iy1 + 1))
    sa, sb = bbox_size(a).unsqueeze(1), bbox_size(b).unsqueeze(0)
    if mode == "IOMU":
        den = torch.minimum(sa, sb).expand_as(inter)
    elif mode == "IOFU":
        den = sa.expand_as(inter)
    else:
        den = sa + sb - inter
    bad = ((a1[..., 2] < a1[..., 0]) | (a1[..., 3] < a1[..., 1]) | (b1[..., 2] < b1[..., 0])
           | (b1[..., 3] < b1[..., 1]) | (den <= 0))
    return torch.where(bad, torch.zeros_like(inter), inter / torch.where(bad, torch.ones_like(den), den))


def overlaps_above(a: Tensor, b: Tensor, thr: float, mode: str = "IOU") -> Tensor:
    """``overlap_matrix(a, b, mode) > thr`` [K, M] with fewer, in-place temporaries (for ``thr >= 0``,
    where every case the fork scores 0 is below the threshold)."""
    if thr < 0:
        return overlap_matrix(a, b, mode) > thr
    a1, b1 = a.unsqueeze(1), b.unsqueeze(0)
    iw = torch.minimum(a1[..., 2], b1[..., 2]).sub_(torch.maximum(a1[..., 0], b1[..., 0]))
    ih = torch.minimum(a1[..., 3], b1[..., 3]).sub_(torch.maximum(a1[..., 1], b1[..., 1]))
    ok = (iw >= 0).logical_and_(ih > 0)
    ok &= ((a[:, 2] >= a[:, 0]) & (a[:, 3] >= a[:, 1])).unsqueeze(1)
    ok &= ((b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])).unsqueeze(0)
    inter = iw.add_(1).mul_(ih.add_(1))
    sa, sb = bbox_size(a).unsqueeze(1), bbox_size(b).unsqueeze(0)
    if mode == "IOMU":
        den = torch.minimum(sa, sb)
    elif mode == "IOFU":
        den = sa.expand_as(inter)
    else:
        den = (sa + sb).sub_(inter)
    ok &= den > 0
    return ok.logical_and_(inter.div_(den) > thr)


def greedy_nms(boxes: Tensor, iou_thr: float, mode: str = "IOU", block: int = 2048) -> Tensor:
    """Indices kept by the fork's greedy ``ApplyNMS`` of ``boxes`` [K, 4] in their given order: box j goes
    where a kept box i < j has ``JaccardOverlap(box i, box j) > iou_thr``. Blocks of ``block`` boxes in
    order: a block first loses the boxes the boxes kept so far remove, then is resolved in order with its
    own overlap matrix, so no K x K matrix is made."""
    k = boxes.shape[0]
    kept_idx: list[np.ndarray] = []
    kept = boxes[:0]
    for s in range(0, k, block):
        blk = boxes[s:s + block]
        alive = torch.ones(blk.shape[0], dtype=torch.bool, device=boxes.device)
        for c in range(0, kept.shape[0], block):
            alive &= ~overlaps_above(kept[c:c + block], blk, iou_thr, mode).any(0)
        over = overlaps_above(blk, blk, iou_thr, mode).cpu().numpy()
        keep = alive.cpu().numpy()
        for i in range(blk.shape[0]):
            if keep[i]:
                keep[i + 1:] &= ~over[i, i + 1:]
        kept_idx.append(s + np.flatnonzero(keep))
        kept = torch.cat([kept, blk[torch.from_numpy(keep).to(boxes.device)]])
    idx = np.concatenate(kept_idx) if kept_idx else np.zeros(0, np.int64)
    return torch.from_numpy(idx.astype(np.int64)).to(boxes.device)


def clip_boxes(b: Tensor, max_w: Tensor | float, max_h: Tensor | float) -> Tensor:
    """ClipBBox: ``x1, y1 >= 0``, ``x2 <= max_w``, ``y2 <= max_h`` (no ``- 1``, as the fork)."""
    z = torch.zeros((), dtype=b.dtype, device=b.device)
    mw = torch.as_tensor(max_w, dtype=b.dtype, device=b.device)
    mh = torch.as_tensor(max_h, dtype=b.dtype, device=b.device)
    return torch.stack([torch.maximum(z, b[..., 0]), torch.maximum(z, b[..., 1]),
                        torch.minimum(mw, b[..., 2]), torch.minimum(mh, b[..., 3])], -1)


def bbox_reg_stats(layer: Layer) -> tuple[list[float], list[float]]:
    """``bbox_reg_param.bbox_mean``/``bbox_std`` (4 each, stds > 0); unset: zeros and ones."""
    p = layer.param.bbox_reg_param
    if len(p.bbox_mean) > 0 and len(p.bbox_std) > 0:
        if len(p.bbox_mean) != 4 or len(p.bbox_std) != 4:
            raise layer.error(f"bbox_reg_param needs 4 bbox_mean and 4 bbox_std; received "
                              f"{len(p.bbox_mean)} and {len(p.bbox_std)}")
        if min(p.bbox_std) <= 0:
            raise layer.error(f"bbox_reg_param.bbox_std must be > 0; received {list(p.bbox_std)}")
        return [float(v) for v in p.bbox_mean], [float(v) for v in p.bbox_std]
    return [0.0] * 4, [1.0] * 4


def decode_with_prior(deltas: Tensor, prior: Tensor, mean: list[float], std: list[float]) -> Tensor:
    """DecodeBBoxesWithPrior: ``deltas`` [R, K, 4] against ``prior`` [R, 4] -> boxes [R, K, 4] (float32)."""
    d, p = deltas.to(_F), prior.to(_F)
    m = torch.tensor(mean, dtype=_F, device=d.device)
    s = torch.tensor(std, dtype=_F, device=d.device)
    pw, ph = (p[:, 2] - p[:, 0] + 1).unsqueeze(1), (p[:, 3] - p[:, 1] + 1).unsqueeze(1)
    cx, cy = (0.5 * (p[:, 2] + p[:, 0])).unsqueeze(1), (0.5 * (p[:, 3] + p[:, 1])).unsqueeze(1)
    v = d * s + m
    tx, ty = v[..., 0] * pw + cx, v[..., 1] * ph + cy
    tw = pw * torch.exp(v[..., 2].double()).to(_F)
    th = ph * torch.exp(v[..., 3].double()).to(_F)
    tx, ty = tx - (tw - 1) / 2, ty - (th - 1) / 2
    return torch.stack([tx, ty, tx + tw - 1, ty + th - 1], -1)
