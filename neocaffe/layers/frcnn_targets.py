"""D-X-Y/caffe-faster-rcnn's training targets: ``FrcnnAnchorTarget`` (RPN labels and box targets per
anchor) and ``FrcnnProposalTarget`` (sampled RoIs with class labels and per-class box targets), both
configured by the FRCNN JSON file (``neocaffe/data/frcnn_config.py``; which file:
``neocaffe/layers/frcnn_common.py``).

Semantics of D-X-Y/caffe-faster-rcnn ``dev`` @ 1ae964d135bbfd9d04258b15b95c9dbb29a19149,
``src/caffe/FRCNN/frcnn_anchor_target_layer.cpp`` and ``frcnn_proposal_target_layer.cpp`` (``Forward_cpu``;
the ``.cu`` files call them), computed in the bottoms' dtype:

FrcnnAnchorTarget (bottoms: RPN scores ``1 x C x H x W`` (only H, W read), ground truth ``G x 5``
(x1, y1, x2, y2, label), ``im_info``): anchors inside ``[-border, im_w + border) x [-border, im_h + border)``
(``x1, y1 >= -border``, ``x2 < im_w + border``, ``y2 < im_h + border``) are labelled: 0 where their best
IoU is ``< rpn_negative_overlap`` (before or, with ``rpn_clobber_positives``, after the positives), 1 where
an anchor's IoU with a ground truth box is within ``eps`` of that box's best IoU, and 1 where the best IoU
is ``>= rpn_positive_overlap``; surplus positives over ``int(rpn_fg_fraction * rpn_batchsize)`` and
negatives over ``rpn_batchsize - #positives`` are set to -1 at random. Targets: ``bbox_transform`` of each
inside anchor to its best box (first of equal IoUs); inside weights ``rpn_bbox_inside_weights`` on
positives; outside weights ``1 / #labelled`` (``rpn_positive_weight < 0``) or ``p / #positives`` and
``(1 - p) / #negatives``. Tops: labels ``1 x 1 x A*H x W`` (row ``k * H + h``), targets and both weights
``1 x 4A x H x W``; anchors outside the image: label -1, zeros. The ground truth boxes must lie in the
image (the fork's CHECKs).

FrcnnProposalTarget (bottoms: RoIs ``n x 5`` with batch index 0, ground truth ``G x 5`` with labels > 0):
the ground truth boxes join the RoIs; each RoI takes the last of its equally best ground truth boxes
(``<=``; IoU 0 counts); foreground: IoU ``>= fg_thresh``, a random ``min(int(int(batch_size) *
fg_fraction), #fg)`` of them; background: ``bg_thresh_lo <= IoU < bg_thresh_hi``, a random
``min(int(batch_size) - #fg taken, #bg)``; labels of background RoIs 0; targets ``bbox_transform`` to
the assigned box, normalised by ``bbox_normalize_means``/``stds`` when ``bbox_normalize_targets``, in
the 4 columns of the RoI's class, with ``bbox_inside_weights`` there; outside weights ``inside > 0``.
Tops: RoIs ``(K, 5, 1, 1)``, labels ``(K, 1, 1, 1)``, targets, inside and outside weights
``(K, 4 * n_classes, 1, 1)``; ``K`` depends on the values. Neither layer has a backward (the fork's are
NOT_IMPLEMENTED).

Deviation: the random choices (which surplus anchors are dropped, the fg/bg shuffles) draw uniformly from
neocaffe's seeded generator (``neocaffe.rng``), not from the fork's boost streams, so they repeat within
neocaffe but not the fork's exact picks.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape, legacy_shape
from neocaffe.layers.frcnn_common import (anchor_grid, bbox_transform, drop_random, example_config, ious, layer_config,
                                          random_order)
from neocaffe.layers.registry import register_layer


def _gt(gt: Tensor) -> Tensor:
    return gt.reshape(gt.shape[0], -1)[:, :5] if gt.shape[0] else gt.new_zeros(0, 5)


def anchor_targets(height: int, width: int, gt: Tensor, im_info: Tensor, cfg) -> list[Tensor]:
    """FrcnnAnchorTarget's four tops for one image (see the module docstring)."""
    dtype, dev = gt.dtype, gt.device
    a = cfg.n_anchors
    info = im_info.reshape(-1)
    im_h, im_w = info[0], info[1]
    boxes = _gt(gt)[:, :4]
    anchors = anchor_grid(cfg, height, width, dtype, dev)
    border = float(np.float32(cfg.rpn_allowed_border))
    inside = ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border) & (anchors[:, 2] < im_w + border)
              & (anchors[:, 3] < im_h + border))
    inds = torch.nonzero(inside).reshape(-1)
    anc = anchors[inds]
    n = anc.shape[0]
    labels = torch.full((n,), -1, dtype=torch.int64, device=dev)
    if boxes.shape[0]:
        iou = ious(anc, boxes)
        max_ov, argmax = iou.max(dim=1) if n else (iou.new_zeros(0), torch.zeros(0, dtype=torch.int64, device=dev))
        gt_max = iou.max(dim=0).values if n else iou.new_full((boxes.shape[0],), -1.0)
        best = ((gt_max[None, :] - iou).abs() <= float(np.float32(cfg.eps))).any(dim=1)
    else:  # no ground truth: every max stays -1
        max_ov = anc.new_full((n,), -1.0)
        argmax = torch.full((n,), -1, dtype=torch.int64, device=dev)
        best = torch.zeros(n, dtype=torch.bool, device=dev)
    neg = max_ov < float(np.float32(cfg.rpn_negative_overlap))
    if not cfg.rpn_clobber_positives:
        labels[neg] = 0
    labels[best | (max_ov >= float(np.float32(cfg.rpn_positive_overlap)))] = 1
    if cfg.rpn_clobber_positives:
        labels[neg] = 0
    labels = drop_random(labels, 1, int(np.float32(cfg.rpn_fg_fraction) * np.float32(cfg.rpn_batchsize)))
    labels = drop_random(labels, 0, cfg.rpn_batchsize - int((labels == 1).sum()))
    targets = anc.new_zeros(n, 4)
    has = argmax >= 0
    if bool(has.any()):
        targets[has] = bbox_transform(anc[has], boxes[argmax[has]])
    pos, negl = labels == 1, labels == 0
    w_in = anc.new_zeros(n, 4)
    w_in[pos] = torch.tensor(cfg.rpn_bbox_inside_weights, dtype=dtype, device=dev)
    n_pos, n_neg = int(pos.sum()), int(negl.sum())
    if cfg.rpn_positive_weight < 0:
        if n_pos + n_neg <= 0:
            raise ValueError("no anchor is labelled (the fork's CHECK_GT(num_examples, 0))")
        pw = nw = 1.0 / (n_pos + n_neg)
    else:
        p = float(np.float32(cfg.rpn_positive_weight))
        if not 0 < p < 1:
            raise ValueError(f"ilegal rpn_positive_weight {p} (expected in (0, 1))")
        pw = p / n_pos if n_pos else float("inf")
        nw = (1 - p) / n_neg if n_neg else float("inf")
    w_out = anc.new_zeros(n, 4)
    w_out[pos], w_out[negl] = pw, nw
    k = height * width * a
    all_labels = torch.full((k,), -1.0, dtype=dtype, device=dev)
    all_labels[inds] = labels.to(dtype)
    outs = [all_labels.reshape(height, width, a).permute(2, 0, 1).reshape(1, 1, a * height, width)]
    for t in (targets, w_in, w_out):
        full = t.new_zeros(k, 4)
        full[inds] = t
        outs.append(full.reshape(height, width, a * 4).permute(2, 0, 1).reshape(1, 4 * a, height, width))
    return outs


def proposal_targets(rois: Tensor, gt: Tensor, cfg) -> list[Tensor]:
    """FrcnnProposalTarget's five tops (see the module docstring)."""
    dtype, dev = rois.dtype, rois.device
    g = _gt(gt)
    boxes, gl = g[:, :4], g[:, 4].to(torch.int64)
    all_rois = torch.cat([rois.reshape(rois.shape[0], -1)[:, 1:5], boxes], dim=0)
    m = all_rois.shape[0]
    rois_per_image = int(np.float32(cfg.batch_size))
    fg_per_image = int(rois_per_image * np.float32(cfg.fg_fraction))
    if boxes.shape[0]:
        iou = ious(all_rois, boxes)
        flipped = iou.flip(1)  # the last of equal maxima (the fork's <=)
        max_ov, j = flipped.max(dim=1)
        assign = boxes.shape[0] - 1 - j
        max_ov = torch.maximum(max_ov, iou.new_zeros(()))
        labels = gl[assign]
    else:
        max_ov = all_rois.new_zeros(m)
        assign = torch.full((m,), -1, dtype=torch.int64, device=dev)
        labels = torch.zeros(m, dtype=torch.int64, device=dev)
    fg = torch.nonzero(max_ov >= float(np.float32(cfg.fg_thresh))).reshape(-1)
    n_fg = min(fg_per_image, fg.numel())
    if fg.numel():
        fg = fg[random_order(fg.numel(), dev)][:n_fg]
    bg = torch.nonzero((max_ov >= float(np.float32(cfg.bg_thresh_lo)))
                       & (max_ov < float(np.float32(cfg.bg_thresh_hi)))).reshape(-1)
    n_bg = min(rois_per_image - n_fg, bg.numel())
    if bg.numel():
        bg = bg[random_order(bg.numel(), dev)][:max(n_bg, 0)]
    keep = torch.cat([fg, bg])
    lab = labels[keep].clone()
    lab[n_fg:] = 0
    sel = all_rois[keep]
    a = assign[keep]
    gtb = torch.where((a >= 0)[:, None], boxes[a.clamp(min=0)] if boxes.shape[0] else sel.new_zeros(len(a), 4),
                      sel.new_zeros(()))
    t = bbox_transform(sel, gtb)
    if cfg.bbox_normalize_targets:
        t = (t - torch.tensor(cfg.bbox_normalize_means, dtype=dtype, device=dev)) \
            / torch.tensor(cfg.bbox_normalize_stds, dtype=dtype, device=dev)
    c = cfg.n_classes
    k = keep.numel()
    targets = sel.new_zeros(k, c, 4)
    w_in = sel.new_zeros(k, c, 4)
    fgm = lab > 0
    if bool(fgm.any()):
        r = torch.nonzero(fgm).reshape(-1)
        targets[r, lab[r]] = t[r]
        w_in[r, lab[r]] = torch.tensor(cfg.bbox_inside_weights, dtype=dtype, device=dev)
    out_rois = torch.cat([sel.new_zeros(k, 1), sel], dim=1).reshape(k, 5, 1, 1)
    return [out_rois, lab.to(dtype).reshape(k, 1, 1, 1), targets.reshape(k, 4 * c, 1, 1),
            w_in.reshape(k, 4 * c, 1, 1), (w_in > 0).to(dtype).reshape(k, 4 * c, 1, 1)]


@register_layer("FrcnnAnchorTarget")
class FrcnnAnchorTarget(Layer):
    """See the module docstring."""

    takes_net = True
    exact_bottoms = 3
    exact_tops = 4

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.cfg = layer_config(self)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        _, _, h, w = legacy_shape(bottom_shapes[0], self, "bottom 0")
        a = self.cfg.n_anchors
        return [(1, 1, a * h, w), (1, 4 * a, h, w), (1, 4 * a, h, w), (1, 4 * a, h, w)]

    def forward(self, scores: Tensor, gt: Tensor, im_info: Tensor):  # type: ignore[override]
        if scores.shape[0] != 1:
            raise self.error(f"only single item batches are supported; received batch {scores.shape[0]}")
        _, _, h, w = legacy_shape(tuple(scores.shape), self, "bottom 0")
        with torch.no_grad():
            g, info = _gt(gt.detach()).to(scores.dtype), im_info.detach().reshape(-1).to(scores.dtype)
            if g.shape[0] and bool(((g[:, 0] < 0) | (g[:, 1] < 0) | (g[:, 2] > info[1]) | (g[:, 3] > info[0])).any()):
                raise self.error(f"ground truth boxes must lie in the image {float(info[1])} x {float(info[0])} "
                                 f"(x1, y1 >= 0, x2 <= width, y2 <= height); received {g[:, :4].tolist()}")
            try:
                return anchor_targets(h, w, g, info, self.cfg)
            except ValueError as e:
                raise self.error(str(e)) from None

    @classmethod
    def examples(cls) -> list[Example]:
        gt = np.array([[20, 30, 150, 140, 1], [60, 50, 200, 180, 2]], np.float64)
        return [Example('name: "at" type: "FrcnnAnchorTarget" bottom: "s" bottom: "gt" bottom: "im" top: "l" '
                        'top: "t" top: "wi" top: "wo"', [np.zeros((1, 18, 13, 15)), gt, np.array([[200, 240, 1.0]])],
                        grad_bottoms=(), grad_params=False, phase=TRAIN)]


@register_layer("FrcnnProposalTarget")
class FrcnnProposalTarget(Layer):
    """See the module docstring."""

    value_dependent_shape = True
    takes_net = True
    exact_bottoms = 2
    exact_tops = 5

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.cfg = layer_config(self)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        c4 = 4 * self.cfg.n_classes
        return [(1, 5, 1, 1), (1, 1, 1, 1), (1, c4, 1, 1), (1, c4, 1, 1), (1, c4, 1, 1)]

    def forward(self, rois: Tensor, gt: Tensor):  # type: ignore[override]
        with torch.no_grad():
            r, g = rois.detach(), _gt(gt.detach()).to(rois.dtype)
            if r.numel() and bool((r.reshape(r.shape[0], -1)[:, 0] != 0).any()):
                raise self.error("Only single item batches are supported: every RoI's batch index must be 0")
            if g.shape[0] and bool((g[:, 4] <= 0).any()):
                raise self.error(f"Ground Truth Should Be Greater Than 0; received labels {g[:, 4].tolist()}")
            return proposal_targets(r, g, self.cfg)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(5)
        xy = r.uniform(0, 30, (12, 2))
        rois = np.concatenate([np.zeros((12, 1)), xy, xy + r.uniform(5, 30, (12, 2))], axis=1)
        gt = np.array([[4, 6, 40, 30, 1], [20, 10, 60, 44, 2]], np.float64)
        return [Example('name: "pt" type: "FrcnnProposalTarget" bottom: "rois" bottom: "gt" top: "r" top: "l" '
                        f'top: "t" top: "wi" top: "wo" window_data_param {{ config: "{example_config()}" }}', [rois, gt], grad_bottoms=(), grad_params=False, phase=TRAIN)]


__all__ = ["FrcnnAnchorTarget", "FrcnnProposalTarget", "anchor_targets", "proposal_targets"]
