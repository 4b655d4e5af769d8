"""SSD's ground-truth matching and hard example mining (weiliu89/caffe ``src/caffe/util/bbox_util.cpp``:
GetGroundTruth, MatchBBox, FindMatches, ComputeConfLoss, MineHardExamples), batched over images.

Matches are [N, L, P] integer tensors (L location classes: 1 with ``share_location``): the index of the
matched ground-truth box of the image, -1 for none, -2 for a prior ignored as cross-boundary. The only
loops are over the ground-truth boxes of the bipartite matching (one argmax over all images a step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from neocaffe.layers import _bbox

FLT_MIN = 1.17549435e-38
NONE_MINING, MAX_NEGATIVE, HARD_EXAMPLE = 0, 1, 2
BIPARTITE, PER_PREDICTION = 0, 1
L2, SMOOTH_L1 = 0, 1
SOFTMAX, LOGISTIC = 0, 1


@dataclass
class GroundTruth:
    """Ground-truth boxes per image, padded: ``boxes`` [N, G, 4], ``labels`` [N, G], ``valid`` [N, G];
    ``has_gt`` [N]: the image appears in the fork's all_gt_bboxes map."""

    boxes: Tensor
    labels: Tensor
    valid: Tensor
    has_gt: Tensor


def ground_truth(gt: Tensor, num: int, background: int, use_difficult: bool) -> GroundTruth:
    """GetGroundTruth of the (1, 1, G, 8) label blob: rows ``[item, label, instance, xmin, ymin, xmax,
    ymax, difficult]``; rows with item -1 are skipped, difficult ones unless ``use_difficult``."""
    rows = gt.reshape(-1, 8)
    item = rows[:, 0].to(torch.int64)          # static_cast<int>
    label = rows[:, 1].to(torch.int64)
    keep = item != -1
    if not use_difficult:
        keep &= rows[:, 7] == 0
    if bool((label[keep] == background).any()):
        raise ValueError(f"found background label {background} in the ground truth")
    rows, item, label = rows[keep], item[keep], label[keep]
    if bool(((item < 0) | (item >= num)).any()):
        raise ValueError(f"ground-truth item ids must be in [0, {num}); received {sorted(set(item.tolist()))}")
    order = torch.sort(item, stable=True).indices
    rows, item, label = rows[order], item[order], label[order]
    counts = torch.bincount(item, minlength=num)
    g = int(counts.max()) if counts.numel() and item.numel() else 0
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(item.numel(), device=gt.device) - start[item]
    boxes = torch.zeros(num, g, 4, dtype=gt.dtype, device=gt.device)
    labels = torch.full((num, g), -1, dtype=torch.int64, device=gt.device)
    valid = torch.zeros(num, g, dtype=torch.bool, device=gt.device)
    boxes[item, slot] = rows[:, 3:7]
    labels[item, slot] = label
    valid[item, slot] = True
    return GroundTruth(boxes, labels, valid, counts > 0)


def match(preds: Tensor, gt: GroundTruth, gt_mask: Tensor, match_type: int, threshold: float,
          ignore_cross_boundary: bool) -> tuple[Tensor, Tensor]:
    """MatchBBox of predicted boxes ``preds`` [N, P, 4] (or [P, 4] priors) against the ground truth where
    ``gt_mask`` [N, G]: (indices [N, P], overlaps [N, P])."""
    n, g = gt.valid.shape
    if preds.dim() == 2:
        preds = preds.unsqueeze(0).expand(n, -1, -1)
    p = preds.shape[1]
    indices = torch.full((n, p), -1, dtype=torch.int64, device=preds.device)
    overlaps = torch.zeros(n, p, dtype=preds.dtype, device=preds.device)
    if g == 0:
        return indices, overlaps
    ov = _bbox.iou(preds, gt.boxes)                                          # [N, P, G]
    present = (ov > 1e-6) & gt_mask.unsqueeze(1)
    if ignore_cross_boundary:
        cross = ((preds < 0) | (preds > 1)).any(dim=-1)
        indices[cross] = -2
        present &= ~cross.unsqueeze(-1)
    has_gt = gt_mask.any(dim=1)
    ov = torch.where(present, ov, torch.full_like(ov, -1.0))
    overlaps = torch.where(has_gt.unsqueeze(1), ov.amax(dim=2).clamp(min=0), overlaps)
    # bipartite: repeatedly the largest overlap among unmatched predictions and unused ground truth
    pool = gt_mask.clone()
    rows = torch.arange(n, device=preds.device)
    for _ in range(g):
        cand = present & (indices == -1).unsqueeze(-1) & pool.unsqueeze(1)
        flat = torch.where(cand, ov, torch.full_like(ov, -1.0)).reshape(n, -1)
        where = flat.argmax(dim=1)                         # first maximum in (prediction, gt) order
        best = torch.gather(flat, 1, where.unsqueeze(1)).squeeze(1)
        found = best > -1
        if not bool(found.any()):
            break
        pi, gj = torch.div(where, g, rounding_mode="floor"), where % g
        indices[rows[found], pi[found]] = gj[found]
        overlaps[rows[found], pi[found]] = best[found]
        pool[rows[found], gj[found]] = False
    if match_type == PER_PREDICTION:
        cand = present & (ov >= threshold) & (indices == -1).unsqueeze(-1)
        scored = torch.where(cand, ov, torch.full_like(ov, -1.0))
        j = scored.argmax(dim=2)                           # first maximum in gt order
        best = torch.gather(scored, 2, j.unsqueeze(-1)).squeeze(-1)
        take = best > -1
        indices = torch.where(take, j, indices)
        overlaps = torch.where(take, best, overlaps)
    return indices, overlaps


def conf_loss_per_prior(conf: Tensor, labels: Tensor, conf_type: int) -> Tensor:
    """ComputeConfLoss: the loss of each prior's scores ``conf`` [N, P, C] for ``labels`` [N, P]."""
    if conf_type == SOFTMAX:
        e = torch.exp(conf - conf.amax(dim=2, keepdim=True))
        prob = torch.gather(e, 2, labels.unsqueeze(-1)).squeeze(-1) / e.sum(dim=2)
        return -torch.log(prob.clamp(min=FLT_MIN))
    target = torch.zeros_like(conf)
    target.scatter_(2, labels.unsqueeze(-1), 1.0)
    return logistic_loss(conf, target).sum(dim=2)


def logistic_loss(x: Tensor, target: Tensor) -> Tensor:
    """SigmoidCrossEntropyLoss's per-element loss, in the fork's overflow-safe form."""
    pos = (x >= 0).to(x.dtype)
    return -(x * (target - pos) - torch.log(1 + torch.exp(x - 2 * x * pos)))


def select_top(loss: Tensor, eligible: Tensor, count: Tensor) -> Tensor:
    """Per row, the ``count`` eligible entries of largest ``loss`` (ties: lower index first)."""
    keyed = torch.where(eligible, loss, torch.full_like(loss, -float("inf")))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(loss.shape[1], device=loss.device).expand_as(order))
    return eligible & (rank < count.unsqueeze(1))


def select_after_nms(loss: Tensor, eligible: Tensor, count: Tensor, boxes: Tensor, threshold: float,
                     top_k: int) -> Tensor:
    """Mining with ``nms_param``: ApplyNMS on the eligible boxes by loss (boxes smaller than 1e-5
    dropped, at most ``top_k``), then the first ``count`` survivors."""
    n, p = loss.shape
    keyed = torch.where(eligible, loss, torch.full_like(loss, -float("inf")))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices
    n_elig = eligible.sum(dim=1)
    if top_k > -1:
        n_elig = n_elig.clamp(max=top_k)
    valid = torch.arange(p, device=loss.device).unsqueeze(0) < n_elig.unsqueeze(1)
    cand = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    valid &= _bbox.bbox_size(cand) >= 1e-5
    keep = _bbox.greedy_nms(cand, valid, threshold)
    if top_k > -1:
        keep &= torch.cumsum(keep.to(torch.int64), dim=1) <= top_k
    keep &= torch.cumsum(keep.to(torch.int64), dim=1) <= count.unsqueeze(1)
    selected = torch.zeros_like(eligible)
    selected.scatter_(1, order, keep)
    return selected
