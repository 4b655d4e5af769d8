"""Box arithmetic shared by the Cascade R-CNN training layers (zhaoweicai/cascade-rcnn @ 2252f46,
``src/caffe/util/bbox_util.cpp``: ``JaccardOverlap`` of (x, y, w, h) boxes, ``EncodeGroupBBoxes``, the
``field_xyr``/``field_whr`` bounds of ``DetectionGroupLossLayer::LayerSetUp``), vectorised over tensors.

Registers no layer type. Every function works on the inputs' device and dtype (the fork's ``Dtype``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

FLT_MIN = 1.1754943508222875e-38  # C's FLT_MIN, the floor of the fork's log(prob)
FLT_MAX = 3.4028234663852886e38


def c_round(v: float) -> int:
    """C's ``round``: half away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def iou_xywh(a: Tensor, b: Tensor) -> Tensor:
    """The fork's 8-argument ``JaccardOverlap(x1, y1, w1, h1, x2, y2, w2, h2, "IOU")`` of every row of
    ``a`` (..., 4) against the matching row of ``b`` (broadcast): 0 where a width or height is <= 0,
    the intersection counts pixels (``x + w - 1`` is the last column)."""
    x1, y1, w1, h1 = a.unbind(-1)
    x2, y2, w2, h2 = b.unbind(-1)
    tlx, tly = torch.maximum(x1, x2), torch.maximum(y1, y2)
    brx, bry = torch.minimum(x1 + w1 - 1, x2 + w2 - 1), torch.minimum(y1 + h1 - 1, y2 + h2 - 1)
    empty = (tlx > brx) | (tly > bry)
    over = torch.where(empty, torch.zeros_like(tlx), (brx - tlx + 1) * (bry - tly + 1))
    u = w1 * h1 + w2 * h2 - over
    bad = (w1 <= 0) | (h1 <= 0) | (w2 <= 0) | (h2 <= 0)
    return torch.where(bad, torch.zeros_like(over), over / torch.where(bad, torch.ones_like(u), u))


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(x1, y1, x2, y2) -> (x1, y1, x2 - x1 + 1, y2 - y1 + 1), in the boxes' dtype as the fork."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1 + 1, y2 - y1 + 1], -1)


def reg_norm(param: Any, dtype: torch.dtype, device: torch.device, error: Any) -> tuple[Tensor, Tensor] | None:
    """``bbox_reg_param``'s 4 means and 4 stds (None when either list is empty: no normalisation)."""
    bp = param.bbox_reg_param
    if not len(bp.bbox_mean) or not len(bp.bbox_std):
        return None
    if len(bp.bbox_mean) != 4 or len(bp.bbox_std) != 4:
        raise error(f"bbox_reg_param needs 4 bbox_mean and 4 bbox_std; received {len(bp.bbox_mean)} and "
                    f"{len(bp.bbox_std)}")
    return (torch.tensor(list(bp.bbox_mean), dtype=torch.float32, device=device).to(dtype),
            torch.tensor(list(bp.bbox_std), dtype=torch.float32, device=device).to(dtype))


def group_norm_values(param: Any, error: Any) -> tuple[list[float], list[float]]:
    """DetectionGroupLoss/Accuracy's means and stds: ``bbox_reg_param``'s (4 each, stds > 0) or 0 / 1."""
    bp = param.bbox_reg_param
    if len(bp.bbox_mean) and len(bp.bbox_std):
        if len(bp.bbox_mean) != 4 or len(bp.bbox_std) != 4:
            raise error(f"bbox_reg_param needs 4 bbox_mean and 4 bbox_std; received {len(bp.bbox_mean)} and "
                        f"{len(bp.bbox_std)}")
        if min(bp.bbox_std) <= 0:
            raise error(f"bbox_reg_param.bbox_std must be > 0; received {list(bp.bbox_std)}")
        return [float(v) for v in bp.bbox_mean], [float(v) for v in bp.bbox_std]
    return [0.0] * 4, [1.0] * 4


def anchor_grid(height: int, width: int, stride: float, fws: Tensor, fhs: Tensor, groups: int,
                dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per group and position: the anchor centre ``(w + 0.5) * stride`` / ``(h + 0.5) * stride`` and its
    field width/height, each (1, G, 1, H, W) for a (N, G, C, H, W) view."""
    cx = ((torch.arange(width, device=device, dtype=dtype) + 0.5) * stride).view(1, 1, 1, 1, width)
    cy = ((torch.arange(height, device=device, dtype=dtype) + 0.5) * stride).view(1, 1, 1, height, 1)
    return cx, cy, fws.view(1, groups, 1, 1, 1), fhs.view(1, groups, 1, 1, 1)


def encode_group(gt: Tensor, pos: Tensor, stride: float, fws: Tensor, fhs: Tensor, mean: Tensor,
                 std: Tensor) -> Tensor:
    """``EncodeGroupBBoxes``: ``gt`` (N, G, 4, H, W) of (cx, cy, w, h) -> normalised targets where ``pos``
    (N, G, 1, H, W) (label > 0), 0 elsewhere. Widths below 2 count as 2."""
    n, g, _, h, w = gt.shape
    cx, cy, fw, fh = anchor_grid(h, w, stride, fws, fhs, g, gt.dtype, gt.device)
    two = torch.full((), 2.0, dtype=gt.dtype, device=gt.device)
    t = torch.cat([(gt[:, :, 0:1] - cx) / fw, (gt[:, :, 1:2] - cy) / fh,
                   torch.log(torch.maximum(gt[:, :, 2:3], two) / fw),
                   torch.log(torch.maximum(gt[:, :, 3:4], two) / fh)], 2)
    t = (t - mean.view(1, 1, 4, 1, 1)) / std.view(1, 1, 4, 1, 1)
    return torch.where(pos, t, torch.zeros_like(t))


def group_bounds(xyr: float, whr: float, means: list[float], stds: list[float]) -> list[float]:
    """DetectionGroupLoss's ``bbox_bound_``: [min_xyr, max_xyr, min_whr, max_whr] in normalised units
    (float arithmetic as the fork's ``Dtype``)."""
    import numpy as np

    f = np.float32
    lo_xy, hi_xy = f(-1.0 / f(xyr)), f(1.0 / f(xyr))
    lo_wh, hi_wh = f(math.log(1.0 / f(whr))), f(math.log(f(whr)))
    xy_mean, wh_mean = f((f(means[0]) + f(means[1])) / 2.0), f((f(means[2]) + f(means[3])) / 2.0)
    xy_std, wh_std = f(math.sqrt(f(stds[0]) * f(stds[1]))), f(math.sqrt(f(stds[2]) * f(stds[3])))
    return [float(f(f(lo_xy - xy_mean) / xy_std)), float(f(f(hi_xy - xy_mean) / xy_std)),
            float(f(f(lo_wh - wh_mean) / wh_std)), float(f(f(hi_wh - wh_mean) / wh_std))]


__all__ = ["FLT_MAX", "FLT_MIN", "anchor_grid", "c_round", "encode_group", "group_bounds", "group_norm_values",
           "iou_xywh", "reg_norm", "xyxy_to_xywh"]
