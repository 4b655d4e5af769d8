"""Cascade R-CNN's R-CNN-stage training layers: ``ProposalTarget``, ``HardMining``, ``BboxAccuracy``
(zhaoweicai/cascade-rcnn @ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c: ``src/caffe/layers/
proposal_target_layer.{cpp,cu}``, ``hard_mining_layer.cpp``, ``bbox_accuracy_layer.cpp``, with
``JaccardOverlap`` of ``src/caffe/util/bbox_util.cpp``). The RPN's ``DetectionGroupLoss`` and
``DetectionGroupAccuracy`` are in :mod:`neocaffe.layers.cascade_train_group`.

None of them back-propagates (the fork's backward is NOT_IMPLEMENTED): their tops carry no gradient.
Deviations: the fork's ``shuffle`` of the fg/bg candidates (boost mt19937 seeded at setup) is replaced by
ordering the candidates by keys drawn uniformly from ``neocaffe.rng`` (the same uniform random
permutation; a seeded run repeats and resumes exactly, the draws are not the fork's); the backup box the
fork draws when nothing was sampled comes from ``neocaffe.rng``'s NumPy generator and gives up after
10000 tries with an error instead of looping for ever. ProposalTarget takes 6 or 7 tops (the fork declares
at least 5 but writes the sixth, the matched boxes, always).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.cascade_train_boxes import c_round, iou_xywh, reg_norm, xyxy_to_xywh
from neocaffe.layers.registry import register_layer


def _rows(x: Tensor, cols: int) -> Tensor:
    return x.detach().reshape(x.shape[0], -1)[:, :cols] if x.dim() else x.detach().reshape(1, -1)


def _first_n_by_key(cand: Tensor, keys: Tensor, n: int) -> Tensor:
    """The fork's ``shuffle`` then ``resize(n)`` of the candidate indices ``cand``: the n with the
    smallest keys, in key order."""
    order = torch.argsort(keys[cand], stable=True)
    return cand[order[:n]]


@register_layer("ProposalTarget")
class ProposalTarget(Layer):
    """Samples the R-CNN stage's rois (``proposal_target_layer.cpp``).

    Bottoms: rois (R, 5) ``[image, x1, y1, x2, y2]`` and ground truth (G, 8) ``[image, x1, y1, x2, y2,
    label, ignored, difficult]`` (rows of image -1 skipped). With ``append_gtbox`` the ground-truth boxes
    join the rois. Each roi takes its best-overlapping box of its image: foreground where the IoU is
    >= ``fg_thr`` (rois matched to an ignored box are dropped), background in [``bg_thr_lw``,
    ``bg_thr_hg``), the rest discarded (``pickup_discard`` refills the background from them, in order).
    ``batch_size`` rois (-1: every fg and bg roi) with at most ``round(fg_fraction * batch_size)``
    foreground. Tops: rois (n, 5), labels (n, 1), targets, inside and outside weights (n, 4 * cls_num when
    ``bbox_reg_param.cls_aware``, else 8: class slot ``min(1, label)``; weights 1 where the roi's IoU is in
    [``bbox_thr_lw``, ``bbox_thr_hg``]), the matched boxes (n, 6) ``[label, x1, y1, x2, y2, IoU]`` (zeros
    for background) and, with a 7th top, the softmax sample weights (``iou_weighted``; foreground to
    ``fg_fraction`` of the total). Targets ``((gx - rx) / rw, (gy - ry) / rh, log(gw / rw), log(gh / rh))``
    of centres, minus ``bbox_mean``, over ``bbox_std``.
    """

    exact_bottoms = 2
    min_tops = 6
    max_tops = 7
    allow_in_place = False
    value_dependent_shape = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.proposal_target_param
        self.cls_aware = bool(self.param.bbox_reg_param.cls_aware)
        self.target_dim = int(p.cls_num) * 4 if self.cls_aware else 8
        if self.cls_aware and p.cls_num <= 0:
            raise self.error(f"proposal_target_param.cls_num must be > 0 with cls_aware; received {p.cls_num}")
        if p.batch_size != -1 and p.batch_size <= 0:
            raise self.error(f"proposal_target_param.batch_size must be -1 or > 0; received {p.batch_size}")
        if p.fg_thr < p.bg_thr_hg:
            raise self.error(f"proposal_target_param.fg_thr {p.fg_thr:g} must be >= bg_thr_hg {p.bg_thr_hg:g}")
        if len(bottom_shapes[0]) < 2 or bottom_shapes[0][1] != 5:
            raise self.error(f"bottom 0 (rois) must be (R, 5); received {bottom_shapes[0]}")
        if len(bottom_shapes[1]) < 2 or bottom_shapes[1][1] < 7:
            raise self.error(f"bottom 1 (gt boxes) must be (G, 8) [image, x1, y1, x2, y2, label, ignored, "
                             f"difficult]; received {bottom_shapes[1]}")
        reg_norm(self.param, torch.float32, torch.device("cpu"), self.error)  # checks the lists

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        p = self.param.proposal_target_param
        n = max(int(bottom_shapes[0][0]), 1) if p.batch_size == -1 else int(p.batch_size)
        dims = [5, 1, self.target_dim, self.target_dim, self.target_dim, 6, 1]
        return [(n, d, 1, 1) for d in dims[:len(self.param.top)]]

    def forward(self, rois_in: Tensor, gt_in: Tensor) -> list[Tensor]:  # type: ignore[override]
        p = self.param.proposal_target_param
        dev, dt = rois_in.device, rois_in.dtype
        rois = _rows(rois_in, 5)
        gt = _rows(gt_in, 7).to(dt)
        gt = gt[gt[:, 0].to(torch.int64) != -1]
        n_img = int(p.num_img_per_batch)
        if len(rois) and int(rois[:, 0].max()) >= n_img or len(gt) and not (
                (gt[:, 0] >= 0).all() and (gt[:, 0].to(torch.int64) < n_img).all()):
            raise self.error(f"image ids must be in [0, num_img_per_batch = {n_img}); received rois "
                             f"{rois[:, 0].unique().tolist()}, gt {gt[:, 0].unique().tolist()}")
        boxes = torch.cat([rois[:, :1], xyxy_to_xywh(rois[:, 1:5])], 1)              # [img, x, y, w, h]
        g_boxes = torch.cat([gt[:, :1], xyxy_to_xywh(gt[:, 1:5])], 1)
        g_label, g_ignored = gt[:, 5].to(torch.int64), gt[:, 6] != 0
        if p.append_gtbox:
            boxes = torch.cat([boxes, g_boxes], 0)
        nr, ng = len(boxes), len(g_boxes)
        same = boxes[:, None, 0] == g_boxes[None, :, 0]                                   # [R, G]
        ov = iou_xywh(boxes[:, None, 1:5], g_boxes[None, :, 1:5])
        ov = torch.where(same, ov, torch.full_like(ov, -float("inf")))
        if ng:
            max_ov, max_gt = ov.max(1)
        else:
            max_ov, max_gt = boxes.new_zeros(nr), torch.zeros(nr, dtype=torch.int64, device=dev)
        exist = same.any(1)
        max_ov = torch.where(exist, max_ov, torch.zeros_like(max_ov)).to(torch.float32).to(dt)  # float max_overlaps
        max_gt = torch.where(exist, max_gt, torch.full_like(max_gt, -1))
        f32 = np.float32
        is_fg = max_ov >= float(f32(p.fg_thr))
        if ng and bool((is_fg & (g_label[max_gt.clamp(min=0)] <= 0)).any()):
            raise self.error("a roi overlapping a ground-truth box by fg_thr matched a box of label <= 0")
        fg_ign = is_fg & (g_ignored[max_gt.clamp(min=0)] if ng else torch.zeros_like(is_fg))
        is_bg = ~is_fg & (max_ov >= float(f32(p.bg_thr_lw))) & (max_ov < float(f32(p.bg_thr_hg)))
        fg = torch.nonzero(is_fg & ~fg_ign).flatten()
        bg = torch.nonzero(is_bg).flatten()
        discard = torch.nonzero(~is_fg & ~is_bg).flatten()
        keys = torch.rand(nr, generator=rng.generator(dev), device=dev, dtype=torch.float64)
        if p.batch_size == -1:
            actual, fg_per = len(fg) + len(bg), len(fg)
        else:
            actual, fg_per = int(p.batch_size), c_round(float(f32(f32(p.fg_fraction) * f32(p.batch_size))))
        n_fg = min(fg_per, len(fg))
        if len(fg) > n_fg:
            fg = _first_n_by_key(fg, keys, n_fg)
        n_bg = min(actual - n_fg, len(bg))
        if len(bg) > actual - n_fg:
            bg = _first_n_by_key(bg, keys, n_bg)
        elif p.pickup_discard and len(discard):
            refind = min(actual - n_fg - len(bg), len(discard))
            bg = torch.cat([bg, discard[:max(refind, 0)]])
        keep = torch.cat([fg, bg])
        if len(keep) == 0:
            boxes = torch.cat([boxes, self._backup_box(g_boxes, dt, dev)], 0)
            keep = torch.tensor([nr], dtype=torch.int64, device=dev)
        return self._outputs(boxes, keep, n_fg, max_gt[fg], g_boxes, g_label, max_ov)

    def _outputs(self, boxes: Tensor, keep: Tensor, n_fg: int, fg_gt: Tensor, g_boxes: Tensor, g_label: Tensor,
                 max_ov: Tensor) -> list[Tensor]:
        """The tops for the kept rois (the first ``n_fg`` foreground, matched to ``fg_gt``)."""
        p, dt, dev = self.param.proposal_target_param, boxes.dtype, boxes.device
        n = len(keep)
        labels = torch.zeros(n, dtype=dt, device=dev)
        labels[:n_fg] = g_label[fg_gt].to(dt)
        kb = boxes[keep]
        rois_out = torch.stack([kb[:, 0], kb[:, 1], kb[:, 2], kb[:, 1] + kb[:, 3] - 1, kb[:, 2] + kb[:, 4] - 1], 1)
        targets = torch.zeros(n, self.target_dim, dtype=dt, device=dev)
        inside = torch.zeros_like(targets)
        match = torch.zeros(n, 6, dtype=dt, device=dev)
        if n_fg:
            r, g = kb[:n_fg, 1:5], g_boxes[fg_gt, 1:5]
            rcx, rcy = r[:, 0] + 0.5 * r[:, 2], r[:, 1] + 0.5 * r[:, 3]
            gcx, gcy = g[:, 0] + 0.5 * g[:, 2], g[:, 1] + 0.5 * g[:, 3]
            t = torch.stack([(gcx - rcx) / r[:, 2], (gcy - rcy) / r[:, 3],
                             torch.log(g[:, 2] / r[:, 2]), torch.log(g[:, 3] / r[:, 3])], 1)
            norm = reg_norm(self.param, dt, dev, self.error)
            if norm is not None:
                t = (t - norm[0]) / norm[1]
            ovl = max_ov[keep[:n_fg]]
            cls = g_label[fg_gt] if self.cls_aware else torch.ones_like(g_label[fg_gt])
            cols = cls[:, None] * 4 + torch.arange(4, device=dev)
            rows = torch.arange(n_fg, device=dev)[:, None].expand(-1, 4)
            targets[rows, cols] = t
            f32 = np.float32
            w = ((ovl >= float(f32(p.bbox_thr_lw))) & (ovl <= float(f32(p.bbox_thr_hg)))).to(dt)
            inside[rows, cols] = w[:, None].expand(-1, 4)
            match[:n_fg] = torch.stack([labels[:n_fg], g[:, 0], g[:, 1], g[:, 0] + g[:, 2] - 1,
                                        g[:, 1] + g[:, 3] - 1, ovl], 1)
        tops = [rois_out, labels[:, None], targets, inside, inside.clone(), match]
        if len(self.param.top) >= 7:
            tops.append(self._sample_weights(labels, match[:, 5], n)[:, None])
        return [t.reshape(t.shape[0], t.shape[1], 1, 1) for t in tops]

    def _sample_weights(self, labels: Tensor, overlap: Tensor, n: int) -> Tensor:
        p = self.param.proposal_target_param
        fg = labels > 0
        w = torch.ones_like(labels)
        if p.iou_weighted:
            w = torch.where(fg, overlap, w)
        pos, neg = float(w[fg].sum()), float(w[~fg].sum())
        if pos != 0:
            ff = float(np.float32(p.fg_fraction))
            w = torch.where(fg, w * (ff * n / pos), w * ((1 - ff) * n / neg) if neg else w)
        return w

    def _backup_box(self, g_boxes: Tensor, dt: torch.dtype, dev: torch.device) -> Tensor:
        """One random background box of at least 32 x 32 (``[img, x, y, w, h]``), drawn until its IoU
        with every box of its image is below ``fg_thr`` (the fork's ``caffe_rng_rand`` loop)."""
        p = self.param.proposal_target_param
        iw, ih, n_img = int(p.img_width), int(p.img_height), int(p.num_img_per_batch)
        if iw <= 32 or ih <= 32:
            raise self.error(f"no roi was sampled and the backup box needs img_width and img_height > 32; "
                             f"received {iw} x {ih}")
        g = rng.numpy_rng()
        gb = g_boxes.cpu().to(torch.float64)
        for _ in range(10000):
            img, x, y = int(g.integers(0, 2**32)) % n_img, int(g.integers(0, 2**32)) % (iw - 32), \
                int(g.integers(0, 2**32)) % (ih - 32)
            w, h = max(int(g.integers(0, 2**32)) % (iw - x), 32), max(int(g.integers(0, 2**32)) % (ih - y), 32)
            cand = torch.tensor([x, y, w, h], dtype=torch.float64, device="cpu")
            mine = gb[gb[:, 0] == img]
            if not len(mine) or float(iou_xywh(cand[None], mine[:, 1:5]).max()) < float(np.float32(p.fg_thr)):
                return torch.tensor([[img, x, y, w, h]], dtype=dt, device=dev)
        raise self.error("no backup box below fg_thr found in 10000 draws")

    @classmethod
    def examples(cls) -> list[Example]:
        rois = np.array([[0, 10, 10, 50, 50], [0, 12, 8, 48, 52], [0, 60, 60, 90, 95], [1, 5, 5, 30, 30],
                         [1, 40, 40, 70, 70], [0, 0, 0, 20, 20]], np.float64)
        gt = np.array([[0, 11, 9, 49, 51, 3, 0, 0], [1, 6, 4, 31, 29, 1, 0, 0], [1, 41, 41, 69, 72, 2, 0, 0]],
                      np.float64)
        base = 'name: "pt" type: "ProposalTarget" bottom: "rois" bottom: "gt" top: "r" top: "l" top: "t" ' \
               'top: "wi" top: "wo" top: "m" '
        reg = 'bbox_reg_param { bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 ' \
              'bbox_std: 0.2 bbox_std: 0.2 cls_aware: false }'
        return [Example(base + 'proposal_target_param { cls_num: 4 batch_size: -1 num_img_per_batch: 2 fg_thr: 0.5 '
                        'bg_thr_hg: 0.5 bg_thr_lw: 0 img_width: 100 img_height: 100 append_gtbox: false } ' + reg,
                        [rois, gt], grad_bottoms=(), grad_params=False),
                Example(base + 'top: "sw" proposal_target_param { cls_num: 4 batch_size: 3 num_img_per_batch: 2 '
                        'iou_weighted: true img_width: 100 img_height: 100 } bbox_reg_param { cls_aware: true }',
                        [rois, gt], grad_bottoms=(), grad_params=False)]


@register_layer("HardMining")
class HardMining(Layer):
    """Keeps the hardest rois (``hard_mining_layer.cpp``): bottom 0 the ranking score (R), bottom 1 the
    rois (R, 5) (image ids in [0, ``num_image``)), then any bottoms of R rows; top k is bottom k + 1's rows of
    the kept rois, in index order. Per image the ``num_roi_per_image`` highest scores (ties: the later
    roi first), then the highest of the rest until ``num_image * num_roi_per_image`` (at most R)."""

    min_bottoms = 2
    min_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        hp = self.param.hard_mining_param
        if len(bottom_shapes) != len(self.param.top) + 1:
            raise self.error(f"takes one top per bottom after the score; received {len(bottom_shapes)} bottoms "
                             f"and {len(self.param.top)} tops")
        if any(self.param.propagate_down):
            raise self.error("cannot back-propagate (propagate_down must be false for every bottom)")
        if hp.num_roi_per_image <= 0 or hp.num_image <= 0:
            raise self.error(f"hard_mining_param num_roi_per_image and num_image must be > 0; received "
                             f"{hp.num_roi_per_image}, {hp.num_image}")
        self.per_image, self.n_img = int(hp.num_roi_per_image), int(hp.num_image)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        r = int(bottom_shapes[0][0]) if bottom_shapes[0] else 1
        if int(np.prod(bottom_shapes[0])) != r:
            raise self.error(f"bottom 0 must hold one score per roi; received {bottom_shapes[0]}")
        if len(bottom_shapes[1]) < 2 or bottom_shapes[1][1] != 5:
            raise self.error(f"bottom 1 must be the rois (R, 5); received {bottom_shapes[1]}")
        for k, s in enumerate(bottom_shapes[1:], 1):
            if s[0] != r:
                raise self.error(f"bottom {k} must have {r} rows (one per roi); received {s}")
        b = min(self.per_image * self.n_img, r)
        return [(b,) + tuple(s[1:]) for s in bottom_shapes[1:]]

    def forward(self, score: Tensor, *rest: Tensor) -> list[Tensor]:  # type: ignore[override]
        s = score.detach().reshape(-1)
        r, dev = len(s), s.device
        img = rest[0].detach().reshape(r, -1)[:, 0].to(torch.int64)
        if r and (int(img.min()) < 0 or int(img.max()) >= self.n_img):
            raise self.error(f"roi image ids must be in [0, num_image = {self.n_img}); received {img.unique().tolist()}")
        idx = torch.arange(r, device=dev)
        order = torch.flip(idx, [0])                                 # (score, index) descending: later first
        order = order[torch.sort(s[order], descending=True, stable=True).indices]
        by_img = order[torch.sort(img[order], stable=True).indices]
        counts = torch.bincount(img, minlength=self.n_img)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty(r, dtype=torch.int64, device=dev)
        rank[by_img] = idx - starts[img[by_img]]
        first = rank < self.per_image
        batch = min(self.per_image * self.n_img, r)
        pick = batch - int(first.sum())
        left = order[~first[order]][:max(pick, 0)]
        keep = torch.sort(torch.cat([torch.nonzero(first).flatten(), left])).values
        return [b.detach()[keep] for b in rest]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(3)
        rois = np.concatenate([np.array([0, 0, 1, 1, 0, 1, 0, 0])[:, None], r.uniform(0, 50, (8, 4))], 1)
        return [Example('name: "hm" type: "HardMining" bottom: "s" bottom: "r" bottom: "x" top: "rr" top: "xx" '
                        'hard_mining_param { num_roi_per_image: 2 num_image: 2 }',
                        [r.standard_normal(8), rois, r.standard_normal((8, 3))], grad_bottoms=(), grad_params=False)]


@register_layer("BboxAccuracy")
class BboxAccuracy(Layer):
    """Mean IoU of the decoded boxes with their matched ground truth (``bbox_accuracy_layer.cpp``):
    bottoms box predictions (N, 4K), rois (N, 5), ProposalTarget's matched boxes (N, 6). Over the
    foreground rois (label > 0) whose IoU (column 5) is <= 0.975: top 0 the decoded boxes' mean IoU, top 1
    the rois' own; -1 without any. Predictions at class ``label`` (``min(1, label)`` without
    ``bbox_reg_param.cls_aware``), times ``bbox_std`` plus ``bbox_mean``."""

    exact_bottoms = 3
    min_tops = 1
    max_tops = 2
    allow_in_place = False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n = [s[0] if s else 1 for s in bottom_shapes]
        if len(set(n)) != 1:
            raise self.error(f"bottoms must have the same number of rows; received {bottom_shapes}")
        if not self.param.bbox_reg_param.cls_aware and (len(bottom_shapes[0]) < 2 or bottom_shapes[0][1] != 8):
            raise self.error(f"bottom 0 must be (N, 8) without cls_aware; received {bottom_shapes[0]}")
        return [(1, 1, 1, 1)] * len(self.param.top)

    def forward(self, pred_in: Tensor, rois_in: Tensor, gt_in: Tensor) -> list[Tensor]:  # type: ignore[override]
        n = pred_in.shape[0]
        pred, rois, gt = (x.detach().reshape(n, -1) for x in (pred_in, rois_in, gt_in))
        dt, dev = pred.dtype, pred.device
        label = gt[:, 0].to(torch.int64)
        use = (gt[:, 0] > 0) & ~(gt[:, -1] > 0.975)
        cls = label if self.param.bbox_reg_param.cls_aware else label.clamp(max=1)
        cols = cls.clamp(min=0)[:, None] * 4 + torch.arange(4, device=dev)
        if bool((use & (cols[:, 3] >= pred.shape[1])).any()):
            raise self.error(f"a foreground label needs column {int(cols[use, 3].max())} of the {pred.shape[1]} "
                             "box predictions (4 per class)")
        t = pred.gather(1, cols.clamp(max=pred.shape[1] - 1))
        norm = reg_norm(self.param, dt, dev, self.error)
        if norm is not None:
            t = t * norm[1] + norm[0]
        r = xyxy_to_xywh(rois[:, 1:5])
        g = xyxy_to_xywh(gt[:, 1:5])
        cx, cy = r[:, 0] + 0.5 * r[:, 2], r[:, 1] + 0.5 * r[:, 3]
        w, h = r[:, 2] * torch.exp(t[:, 2]), r[:, 3] * torch.exp(t[:, 3])
        box = torch.stack([t[:, 0] * r[:, 2] + cx - w / 2, t[:, 1] * r[:, 3] + cy - h / 2, w, h], 1)
        zero = torch.zeros((), dtype=dt, device=dev)
        after = torch.where(use, iou_xywh(box, g), zero).sum()
        before = torch.where(use, iou_xywh(r, g), zero).sum()
        cnt = use.sum()
        tops = [torch.where(cnt > 0, v / cnt.clamp(min=1), torch.full_like(v, -1.0)).reshape(1, 1, 1, 1)
                for v in (after, before)]
        return tops[:len(self.param.top)]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(5)
        rois = np.array([[0, 10, 10, 50, 50], [0, 20, 20, 60, 70], [0, 5, 5, 15, 15], [0, 30, 30, 40, 45]], float)
        gt = np.array([[2, 12, 11, 52, 49, 0.8], [0, 0, 0, 0, 0, 0], [1, 5, 5, 15, 15, 0.99], [3, 28, 31, 41, 44, 0.7]])
        base = 'name: "ba" type: "BboxAccuracy" bottom: "p" bottom: "r" bottom: "g" top: "iou" '
        return [Example(base + 'top: "pre" bbox_reg_param { cls_aware: false bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 '
                        'bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 bbox_std: 0.2 bbox_std: 0.2 }',
                        [0.5 * r.standard_normal((4, 8)), rois, gt], grad_bottoms=(), grad_params=False),
                Example(base + 'bbox_reg_param { cls_aware: true }', [0.3 * r.standard_normal((4, 16)), rois, gt],
                        grad_bottoms=(), grad_params=False)]


__all__ = ["BboxAccuracy", "HardMining", "ProposalTarget"]
