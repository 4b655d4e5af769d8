"""Cascade R-CNN's RPN training layers: ``DetectionGroupLoss`` and ``DetectionGroupAccuracy``
(zhaoweicai/cascade-rcnn @ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c: ``src/caffe/layers/
detection_group_loss_layer.{cpp,cu}``, ``detection_group_accuracy_layer.{cpp,cu}``, with
``EncodeGroupBBoxes`` / ``BoundBBoxPreds`` / ``JaccardOverlap`` of ``src/caffe/util/bbox_util.cpp``).

Blob layout (the fork's): bottom 0 the class scores (N * G, C, H, W), bottom 1 the box offsets (N * G, 4, H, W),
bottom 2 DetectionData's labels concatenated and reshaped to (N * G, 6, H, W) ``[label, cx, cy, w, h,
overlap]``, G anchor groups (``field_w``/``field_h``) per image.

Deviations: the fork's ``shuffle`` of positives and negatives (boost mt19937 seeded at setup) is replaced by
keeping the candidates with the smallest keys drawn uniformly from ``neocaffe.rng`` on the inputs' device
(the same uniform choice; seeded runs repeat and resume exactly; not the fork's draws). ``BoundBBoxPreds``
clamps the fork's bottom 1 data in place; here the clamped copy is used for the loss and bottom 1 is left
as it was (later readers of that blob see the unclamped values).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.cascade_train_boxes import (FLT_MAX, FLT_MIN, anchor_grid, c_round, encode_group, group_bounds,
                                                 group_norm_values, iou_xywh)
from neocaffe.layers.registry import register_layer

MINING = ("random", "bootstrap", "mixture")
RANKING = ("conf_prob", "conf_loss")
BBOX_LOSSES = ("Smooth_L1", "Euclidean_L2")


class _GroupSetup(Layer):
    """What both layers read: ``field_w``/``field_h`` (one per group), ``stride``, ``cls_num``, ``objectness``,
    ``loss_param.ignore_label``, ``bbox_reg_param`` means / stds, and the bottoms' agreement."""

    exact_bottoms = 3
    allow_in_place = False

    def _group_setup(self, gp) -> None:
        self.groups = len(gp.field_h)
        if self.groups < 1 or len(gp.field_w) != self.groups:
            raise self.error(f"needs one field_w per field_h (at least one); received {len(gp.field_w)} field_w "
                             f"and {self.groups} field_h")
        self.fws, self.fhs = [float(v) for v in gp.field_w], [float(v) for v in gp.field_h]
        self.cls_num, self.stride, self.objectness = int(gp.cls_num), float(gp.stride), bool(gp.objectness)
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.means, self.stds = group_norm_values(self.param, self.error)
        if self.objectness and self.cls_num != 2:
            raise self.error(f"objectness needs cls_num 2; received {self.cls_num}")

    def _check(self, bottom_shapes: list[Shape]) -> None:
        c, b, g = (tuple(s) + (1,) * (4 - len(s)) for s in bottom_shapes)
        if c[0] % self.groups or not (c[0] == b[0] == g[0]) or not (c[2:] == b[2:] == g[2:]):
            raise self.error(f"bottoms must be (N * {self.groups}, C, H, W), (N * {self.groups}, 4, H, W), (N * "
                             f"{self.groups}, 6, H, W); received {bottom_shapes}")
        if c[1] != self.cls_num or b[1] != 4 or g[1] != 6:
            raise self.error(f"bottoms must have {self.cls_num} (cls_num), 4 and 6 channels; received {bottom_shapes}")

    def _views(self, conf: Tensor, bbox: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = conf.shape[0] // self.groups
        s = conf[0, 0].numel() if conf.dim() > 2 else 1
        return (conf.reshape(n, self.groups, self.cls_num, s), bbox.reshape(n, self.groups, 4, s),
                gt.detach().reshape(n, self.groups, 6, s).to(conf.dtype))

    def _fields(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.tensor(self.fws, dtype=torch.float32, device=x.device).to(x.dtype),
                torch.tensor(self.fhs, dtype=torch.float32, device=x.device).to(x.dtype))

    def _norm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.tensor(self.means, dtype=torch.float32, device=x.device).to(x.dtype),
                torch.tensor(self.stds, dtype=torch.float32, device=x.device).to(x.dtype))


def _spatial(x: Tensor) -> tuple[int, int]:
    """Caffe's legacy height and width of a (N, C, H, W) blob (axes past the last count as 1)."""
    shape = tuple(x.shape) + (1,) * (4 - x.dim())
    return int(shape[2]), int(np.prod(shape[3:]))


def _rank(score: Tensor, cand: Tensor, descending: bool) -> Tensor:
    """Per row, each candidate's place when the candidates are sorted by ``score`` (ascending: keys;
    descending: the fork's ``std::greater`` on (score, index), so ties put the later index first)."""
    m = score.shape[1]
    fill = -float("inf") if descending else float("inf")
    key = torch.where(cand, score, torch.full_like(score, fill))
    flip = torch.arange(m - 1, -1, -1, device=score.device)
    order = flip[torch.sort(key[:, flip], dim=1, descending=descending, stable=True).indices]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=score.device).expand_as(order).contiguous())
    return rank


class _GroupLossFn(torch.autograd.Function):
    """Top ``[conf + lambda * bbox, lambda * bbox]``; the fork's backward reads top diff [0] only."""

    @staticmethod
    def forward(ctx, conf: Tensor, bbox: Tensor, value: Tensor, conf_grad: Tensor, bbox_grad: Tensor):  # type: ignore[override]
        ctx.save_for_backward(conf_grad, bbox_grad)
        return value

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        conf_grad, bbox_grad = ctx.saved_tensors
        g0 = g.reshape(-1)[0]
        return g0 * conf_grad, g0 * bbox_grad, None, None, None


@register_layer("DetectionGroupLoss")
class DetectionGroupLoss(_GroupSetup):
    """The RPN loss (``detection_group_loss_layer.cpp``): softmax loss over the sampled anchors plus
    ``lambda`` times the box loss (``bbox_loss_type`` Smooth_L1 or Euclidean_L2) of the sampled positives
    against ``EncodeGroupBBoxes``' targets (bounded by ``field_xyr``/``field_whr`` when both are set).

    Per image: positives are label > 0, negatives label 0 with overlap < ``bg_threshold``; ``batch_size``
    -1 keeps every positive and ``max(min_num_neg, int(pos * bg_multiple))`` negatives, else
    ``round(batch_size / (1 + bg_multiple))`` positives and the rest negatives; too many negatives are
    chosen by ``neg_mining_type``: random, bootstrap (highest ``neg_ranking_type`` score: ``conf_prob``
    1 - p(background), ``conf_loss`` -log p(label)) or mixture (half each). ``pos_neg_weighted`` weights the
    softmax terms so positives carry 1 / (1 + bg_multiple) of the total. Both losses are means over their
    counts. Top (1, 1, 1, 2): ``[conf + lambda * bbox, lambda * bbox]``; the fork's backward scales by the
    top's first diff only (so a net's loss counts the second element as well, as Caffe's does).
    """

    exact_tops = 1
    is_loss = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        gp = self.param.detection_group_loss_param
        self._group_setup(gp)
        self.lam = float(np.float32(getattr(gp, "lambda")))
        self.bg_threshold, self.bg_multiple = float(np.float32(gp.bg_threshold)), float(gp.bg_multiple)
        self.mining, self.ranking, self.loss_type = gp.neg_mining_type, gp.neg_ranking_type, gp.bbox_loss_type
        self.batch, self.min_neg, self.weighted = int(gp.batch_size), int(gp.min_num_neg), bool(gp.pos_neg_weighted)
        for field, v, ok in (("neg_mining_type", self.mining, MINING), ("neg_ranking_type", self.ranking, RANKING),
                             ("bbox_loss_type", self.loss_type, BBOX_LOSSES)):
            if v not in ok:
                raise self.error(f"detection_group_loss_param.{field} '{v}' is unknown; expected one of {list(ok)}")
        if self.batch != -1 and self.batch <= 0:
            raise self.error(f"detection_group_loss_param.batch_size must be -1 or > 0; received {self.batch}")
        self.bounds = (group_bounds(gp.field_xyr, gp.field_whr, self.means, self.stds)
                       if gp.HasField("field_xyr") and gp.HasField("field_whr") else None)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        self._check(bottom_shapes)
        return [(1, 1, 1, 2)]

    def keep_map(self, prob: Tensor, label: Tensor, overlap: Tensor) -> Tensor:
        """The sampled anchors (N, G * S) as booleans (see the class docstring)."""
        pos = label > 0
        neg = (label == 0) & (overlap < self.bg_threshold)
        n_pos, n_neg = pos.sum(1).tolist(), neg.sum(1).tolist()
        if self.batch == -1:
            s_pos = n_pos
            s_neg = [min(max(int(np.float32(p) * np.float32(self.bg_multiple)), self.min_neg), q)
                     for p, q in zip(n_pos, n_neg)]
        else:
            want = c_round(self.batch / (1.0 + self.bg_multiple))
            s_pos = [min(want, p) for p in n_pos]
            s_neg = [min(self.batch - sp, q) for sp, q in zip(s_pos, n_neg)]
        dev = prob.device
        keys = torch.rand(label.shape, generator=rng.generator(dev), device=dev, dtype=torch.float64)
        sp = torch.tensor(s_pos, device=dev)[:, None]
        sn = torch.tensor(s_neg, device=dev)[:, None]
        keep = pos & (_rank(keys, pos, False) < sp)
        if self.mining == "random":
            return keep | (neg & (_rank(keys, neg, False) < sn))
        score = self._ranking(prob, label)
        if self.mining == "bootstrap":
            return keep | (neg & (_rank(score, neg, True) < sn))
        hard_n = torch.tensor([c_round(v * 0.5) for v in s_neg], device=dev)[:, None]
        hard = neg & (_rank(score, neg, True) < hard_n)
        rest = neg & ~hard
        return keep | hard | (rest & (_rank(keys, rest, False) < sn - hard_n))

    def _ranking(self, prob: Tensor, label: Tensor) -> Tensor:
        if self.ranking == "conf_prob":
            return (1 - prob[:, :, 0]).reshape(label.shape)
        lab = self._class(label)
        if bool(((lab < 0) | (lab >= self.cls_num)).any()):
            raise self.error(f"labels must be in [0, {self.cls_num}); received {lab.unique().tolist()}")
        p = prob.gather(2, lab.reshape(prob.shape[0], prob.shape[1], 1, -1)).reshape(label.shape)
        return -torch.log(p.clamp(min=FLT_MIN))

    def _class(self, label: Tensor) -> Tensor:
        return label.clamp(max=1) if self.objectness else label

    def forward(self, conf_in: Tensor, bbox_in: Tensor, gt_in: Tensor) -> Tensor:  # type: ignore[override]
        conf, bbox, gt = self._views(conf_in, bbox_in, gt_in)
        n, g, c, s = conf.shape
        dt, dev = conf.dtype, conf.device
        with torch.no_grad():
            prob = torch.softmax(conf.detach(), 2)
            label = gt[:, :, 0].to(torch.int64)                        # (N, G, S)
            keep = self.keep_map(prob, label.reshape(n, -1), gt[:, :, 5].reshape(n, -1)).reshape(n, g, s)
            total = int(keep.sum())
            w = torch.ones(n, g, s, dtype=dt, device=dev)
            if self.weighted:
                pos_sum, neg_sum = int((keep & (label > 0)).sum()), int((keep & (label <= 0)).sum())
                fg_w = float(np.float32(1) / np.float32(1 + self.bg_multiple))
                w = torch.where(label > 0, w * (fg_w * total / pos_sum) if pos_sum else w,
                                w * ((1 - fg_w) * total / neg_sum) if neg_sum else w)
            lab = self._class(label)
            valid = keep if self.ignore is None else keep & (lab != self.ignore)
            if bool((valid & ((lab < 0) | (lab >= c))).any()):
                raise self.error(f"labels must be in [0, {c}); received {lab[valid].unique().tolist()}")
            onehot = torch.nn.functional.one_hot(lab.clamp(0, c - 1), c).permute(0, 1, 3, 2).to(dt)
            p_lab = (prob * onehot).sum(2)
            terms = torch.where(valid, -torch.log(p_lab.clamp(min=FLT_MIN)) * w, torch.zeros_like(w))
            conf_count = int(valid.sum())
            conf_loss = terms.sum() / conf_count if conf_count else terms.sum() * 0
            conf_grad = torch.where(valid[:, :, None], (prob - onehot) * w[:, :, None], torch.zeros_like(prob))
            if conf_count:
                conf_grad = conf_grad / conf_count
            bbox_loss, bbox_grad = self._bbox(bbox.detach(), gt, label, keep, _spatial(conf_in))
            value = torch.stack([conf_loss + self.lam * bbox_loss, self.lam * bbox_loss]).reshape(1, 1, 1, 2)
        return _GroupLossFn.apply(conf_in, bbox_in, value, conf_grad.reshape(conf_in.shape),
                                  (self.lam * bbox_grad).reshape(bbox_in.shape))

    def _bbox(self, bbox: Tensor, gt: Tensor, label: Tensor, keep: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        n, g, _, s = bbox.shape
        h, w = hw
        pos = (label > 0)[:, :, None]
        fws, fhs = self._fields(bbox)
        mean, std = self._norm(bbox)
        enc = encode_group(gt[:, :, 1:5].reshape(n, g, 4, h, w), pos.reshape(n, g, 1, h, w), self.stride, fws, fhs,
                           mean, std).reshape(n, g, 4, s)
        pred = bbox
        if self.bounds is not None:
            lo = torch.tensor([self.bounds[0]] * 2 + [self.bounds[2]] * 2, dtype=torch.float32, device=bbox.device).to(bbox.dtype)
            hi = torch.tensor([self.bounds[1]] * 2 + [self.bounds[3]] * 2, dtype=torch.float32, device=bbox.device).to(bbox.dtype)
            pred = torch.minimum(torch.maximum(pred, lo.view(1, 1, 4, 1)), hi.view(1, 1, 4, 1))
        use = keep & (label > 0)
        if self.ignore is not None:
            use = use & (label != self.ignore)
        use4 = use[:, :, None].expand(-1, -1, 4, -1)
        d = pred - enc
        if self.loss_type == "Euclidean_L2":
            loss, grad = 0.5 * d * d, d
        else:
            big = d.abs() >= 1
            loss = torch.where(big, d.abs() - 0.5, 0.5 * d * d)
            grad = torch.where(big, torch.sign(d), d)
        zero = torch.zeros_like(d)
        loss, grad = torch.where(use4, loss, zero), torch.where(use4, grad, zero)
        count = 4 * int(use.sum())
        if count:
            return loss.sum() / count, grad / count
        return loss.sum() * 0, grad

    @classmethod
    def examples(cls) -> list[Example]:
        conf, bbox, gt = _example_blobs(np.random.default_rng(7))
        base = ('name: "l" type: "DetectionGroupLoss" bottom: "c" bottom: "b" bottom: "g" top: "loss" '
                'detection_group_loss_param { cls_num: 3 field_w: 16 field_w: 32 field_h: 16 field_h: 32 stride: 8 ')
        return [Example(base + 'bg_multiple: 100 min_num_neg: 0 }', [conf, bbox, gt], grad_bottoms=(), grad_params=False),
                Example(base + 'batch_size: 6 bg_multiple: 2 field_xyr: 1 field_whr: 8 neg_mining_type: "mixture" '
                        'bbox_loss_type: "Euclidean_L2" pos_neg_weighted: true } bbox_reg_param { bbox_mean: 0 '
                        'bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 bbox_std: 0.2 bbox_std: 0.2 }',
                        [conf, bbox, gt], grad_bottoms=(), grad_params=False)]


def _example_blobs(r: np.random.Generator, n: int = 2, g: int = 2, c: int = 3, h: int = 3, w: int = 4):
    label = r.choice([0, 0, 0, 1, 2], (n * g, 1, h, w)).astype(float)
    cx = r.uniform(0, 32, (n * g, 1, h, w))
    cy = r.uniform(0, 24, (n * g, 1, h, w))
    wh = r.uniform(8, 40, (n * g, 2, h, w))
    ov = np.where(label > 0, r.uniform(0.5, 1, label.shape), r.uniform(0, 0.6, label.shape))
    gt = np.concatenate([label, cx, cy, wh, ov], 1)
    return r.standard_normal((n * g, c, h, w)), 0.3 * r.standard_normal((n * g, 4, h, w)), gt


@register_layer("DetectionGroupAccuracy")
class DetectionGroupAccuracy(_GroupSetup):
    """The RPN's accuracy (``detection_group_accuracy_layer.cpp``): top 0 (1, 1, 1, 2) the argmax accuracy
    over anchors (background anchors with overlap >= ``bg_threshold`` and ``ignore_label`` skipped) and over
    the positives; top 1 (1, 1, 1, 1) the mean IoU of the decoded positive boxes (offsets times ``bbox_std``
    plus ``bbox_mean``, clamped to +-1 / ``field_xyr`` and log(``field_whr``)^+-1) with their ground truth;
    -1 where nothing counts. The fork's LayerSetUp skips LossLayer's: no loss weight."""

    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        gp = self.param.detection_group_accuracy_param
        self._group_setup(gp)
        self.bg_threshold = float(np.float32(gp.bg_threshold))
        f32 = np.float32
        self.xyr, self.whr = f32(gp.field_xyr), f32(gp.field_whr)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        self._check(bottom_shapes)
        return [(1, 1, 1, 2), (1, 1, 1, 1)][:len(self.param.top)]

    def forward(self, conf_in: Tensor, bbox_in: Tensor, gt_in: Tensor) -> list[Tensor]:  # type: ignore[override]
        h, w = _spatial(conf_in)
        conf, bbox, gt = self._views(conf_in.detach(), bbox_in.detach(), gt_in)
        dt, dev = conf.dtype, conf.device
        label = gt[:, :, 0].to(torch.int64)
        lab = label.clamp(max=1) if self.objectness else label
        use = ~(lab == 0) | (gt[:, :, 5] < self.bg_threshold)
        if self.ignore is not None:
            use = use & (lab != self.ignore)
        top = torch.where(conf > -FLT_MAX, conf, torch.full_like(conf, -FLT_MAX))
        right = use & (top.argmax(2) == lab) & (conf.max(2).values > -FLT_MAX)
        fore = use & (lab != 0)

        def mean(num: Tensor, den: Tensor) -> Tensor:
            d = den.sum()
            return torch.where(d > 0, num.sum().to(dt) / d.clamp(min=1), torch.full((), -1.0, dtype=dt, device=dev))

        acc = torch.stack([mean(right, use), mean(right & fore, fore)]).reshape(1, 1, 1, 2)
        if len(self.param.top) < 2:
            return [acc]
        n, g, _, s = bbox.shape
        t = bbox * self._norm(bbox)[1].view(1, 1, 4, 1) + self._norm(bbox)[0].view(1, 1, 4, 1)
        lo_xy, hi_xy = float(np.float32(-1) / self.xyr), float(np.float32(1) / self.xyr)
        lo_wh, hi_wh = float(np.float32(math.log(np.float32(1) / self.whr))), float(np.float32(math.log(self.whr)))
        t = torch.cat([t[:, :, :2].clamp(lo_xy, hi_xy), t[:, :, 2:].clamp(lo_wh, hi_wh)], 2).reshape(n, g, 4, h, w)
        fws, fhs = self._fields(bbox)
        cx, cy, fw, fh = anchor_grid(h, w, self.stride, fws, fhs, g, dt, dev)
        bw, bh = fw * torch.exp(t[:, :, 2:3]), fh * torch.exp(t[:, :, 3:4])
        box = torch.cat([t[:, :, 0:1] * fw + cx - bw / 2, t[:, :, 1:2] * fh + cy - bh / 2, bw, bh], 2)
        gb = gt[:, :, 1:5].reshape(n, g, 4, h, w)
        gbox = torch.cat([gb[:, :, 0:1] - gb[:, :, 2:3] / 2, gb[:, :, 1:2] - gb[:, :, 3:4] / 2, gb[:, :, 2:4]], 2)
        iou = iou_xywh(box.movedim(2, -1), gbox.movedim(2, -1)).reshape(n, g, s)
        pos = label > 0
        if self.ignore is not None:
            pos = pos & (label != self.ignore)
        iou_mean = mean(torch.where(pos, iou, torch.zeros_like(iou)), pos)
        return [acc, iou_mean.reshape(1, 1, 1, 1)]

    @classmethod
    def examples(cls) -> list[Example]:
        conf, bbox, gt = _example_blobs(np.random.default_rng(8))
        base = ('name: "a" type: "DetectionGroupAccuracy" bottom: "c" bottom: "b" bottom: "g" top: "acc" ')
        p = 'cls_num: 3 field_w: 16 field_w: 32 field_h: 16 field_h: 32 stride: 8 '
        return [Example(base + 'top: "iou" detection_group_accuracy_param { ' + p + 'field_whr: 8 field_xyr: 1 }',
                        [conf, bbox, gt], grad_bottoms=(), grad_params=False),
                Example(base + 'detection_group_accuracy_param { ' + p + '} loss_param { ignore_label: 2 }',
                        [conf, bbox, gt], grad_bottoms=(), grad_params=False)]


__all__ = ["DetectionGroupAccuracy", "DetectionGroupLoss"]
