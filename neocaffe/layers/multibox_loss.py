"""SSD's MultiBoxLoss (lineage: weiliu89/caffe, branch ssd; ``src/caffe/layers/multibox_loss_layer.cpp``,
with FindMatches, MineHardExamples, EncodeLocPrediction and EncodeConfPrediction of
``src/caffe/util/bbox_util.cpp``, its internal ``smooth_L1_loss_layer.cpp`` / EuclideanLoss and
SoftmaxWithLoss (normalization NONE) / SigmoidCrossEntropyLoss), with RefineDet's anchor refinement
(lineage: sfzhang15/RefineDet @ a9ca4b2: the same files, CasRegFindMatches and CasRegEncodeLocPrediction).

Bottoms: location predictions (N, P*L*4), confidences (N, P*C), priors (1, 2, P*4), ground truth
(1, 1, G, 8) from AnnotatedData. Loss = (loc_weight * loc loss + conf loss) / normalizer, the
normalizer from ``loss_param.normalization`` with VALID = the number of matches. As in the fork, a term
counts only where the layer's ``propagate_down`` (default true, true, false, false) is true, and the
backward is the fork's: the location diff is taken with respect to the encoded prediction (also when
``encode_variance_in_target`` divides it by the variance), the confidence diff is softmax - one-hot
(sigmoid - target) on the selected priors.

RefineDet's forms add the ARM's bottoms after the ground truth: ``arm_conf`` (5 bottoms; its nets pass the
softmaxed ``arm_conf_flatten``): priors of objectness below ``objectness_score`` are not mined; and
``arm_loc`` (6 bottoms): matching and encoding against the priors refined by the ARM's offsets. With
``num_classes`` 2 (its ARM loss) labels >= 2 count as 1. Details and where the fork keeps the original
priors: :mod:`neocaffe.layers._refinedet`.

TextBoxes++'s forms (MhLiao/TextBoxes_plusplus @ 39d4898: the same files): location heads of 12 (``use_polygon``,
its default) or 9 (``use_polygon: false``) values per prior and a label bottom of 16 columns a row; see
:mod:`neocaffe.layers._textboxes`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import _bbox, _refinedet, _textboxes
from neocaffe.layers import _multibox as mb
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.detection_output import check_heads, prior_hint
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import normalization_mode

FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


class _FixedGradFn(torch.autograd.Function):
    """A loss whose diffs were computed with it: backward = top diff * those diffs."""

    @staticmethod
    def forward(ctx, loc: Tensor, conf: Tensor, loss: Tensor, g_loc: Tensor, g_conf: Tensor):  # type: ignore[override]
        ctx.save_for_backward(g_loc, g_conf)
        return loss.clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        g_loc, g_conf = ctx.saved_tensors
        return g_loc * g, g_conf * g, None, None, None


@register_layer("MultiBoxLoss")
class MultiBoxLoss(Layer):
    """``multibox_loss_param``: matching (``match_type``, ``overlap_threshold``,
    ``use_prior_for_matching``, ``ignore_cross_boundary_bbox``), mining (``mining_type`` NONE,
    MAX_NEGATIVE with ``neg_pos_ratio`` / ``neg_overlap``, HARD_EXAMPLE with ``sample_size``, optional
    ``nms_param``), losses (``loc_loss_type`` SMOOTH_L1 / L2, ``conf_loss_type`` SOFTMAX / LOGISTIC,
    ``loc_weight``), box coding (``code_type``, ``encode_variance_in_target``, ``bp_inside``); RefineDet's
    ``objectness_score`` (with the ARM bottoms ``arm_conf``, ``arm_loc``).

    NVCaffe's ``ignore_difficult_gt`` (NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7) is
    in its caffe.proto only: its ``multibox_loss_layer.cpp`` never reads it (difficult boxes follow
    ``use_difficult_gt``, as here), so it changes nothing there or here."""

    is_loss = True
    min_bottoms = 4
    max_bottoms = 6   # RefineDet: + arm_conf, + arm_loc
    exact_tops = 1
    auto_top_blobs = True
    allow_in_place = False
    takes_net = True  # a prior-count error names FaceBoxes' / TextBoxes v1's lineage where the net looks like theirs

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.multibox_loss_param
        self.prior_hint = prior_hint(self)
        if not p.HasField("num_classes"):
            raise self.error("multibox_loss_param: must provide num_classes")
        self.num_classes = int(p.num_classes)
        if self.num_classes < 1:
            raise self.error("multibox_loss_param.num_classes should not be less than 1")
        self.share = p.share_location
        self.loc_classes = 1 if self.share else self.num_classes
        self.background = int(p.background_label_id)
        self.mining = int(p.mining_type)
        if p.HasField("do_neg_mining") and p.do_neg_mining != (self.mining != mb.NONE_MINING):
            raise self.error("multibox_loss_param.do_neg_mining (deprecated) disagrees with mining_type")
        if self.mining != mb.NONE_MINING and not self.share:
            raise self.error("negative mining is only supported with share_location: true")
        self.mode = normalization_mode(self.param.loss_param)
        self.conf_type = int(p.conf_loss_type)
        if self.conf_type == mb.SOFTMAX and not 0 <= self.background < self.num_classes:
            raise self.error("background_label_id should be within [0, num_classes) for Softmax")
        if p.map_object_to_agnostic and self.num_classes != (2 if self.background >= 0 else 1):
            raise self.error("map_object_to_agnostic needs num_classes 2 (1 without a background class)")
        pd = list(self.param.propagate_down)
        self.use_loc, self.use_conf = (pd[0], pd[1]) if len(pd) >= 2 else (True, True)
        self.arm_conf_at = 4 if len(bottom_shapes) >= 5 else None
        self.arm_loc_at = 5 if len(bottom_shapes) >= 6 else None
        if self.arm_loc_at is not None and not self.share:
            raise _refinedet.share_error(self.error)
        _refinedet.check_arm(self.error, bottom_shapes, _refinedet.num_priors(bottom_shapes), self.arm_conf_at,
                             self.arm_loc_at)
        self.objectness_score = _refinedet.objectness_score(p)
        # RefineDet's GetGroundTruth: with two classes, labels >= 2 are the object class (see _refinedet)
        self.two_class = self.num_classes == 2 and (self.share or self.arm_conf_at is not None)
        self.p = p
        loc, prior = bottom_shapes[0], bottom_shapes[2]
        per_prior = int(np.prod(loc[1:])) / max(1, ((prior[2] if len(prior) > 2 else 1) // 4) * self.loc_classes)
        # TextBoxes++'s forms (12 or 9 location values per prior, a 16-column label blob): see _textboxes
        self.form = _textboxes.loss_form(p, per_prior, self.error)
        if self.form != _textboxes.SSD and self.arm_conf_at is not None:
            raise self.error("TextBoxes++'s quadrilateral / rotated-box training takes no RefineDet ARM bottoms")
        self.two_class = self.two_class and self.form == _textboxes.SSD   # RefineDet's mapping, not the fork's
        if self.form != _textboxes.SSD and int(np.prod(bottom_shapes[3])) % _textboxes.LABEL_COLUMNS:
            raise self.error(f"TextBoxes++'s label bottom has {_textboxes.LABEL_COLUMNS} values a row (SSD's 8, then "
                             f"the quadrilateral); received shape {tuple(bottom_shapes[3])}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        num_priors = check_heads(self, bottom_shapes, self.loc_classes, self.num_classes, self.form, self.prior_hint)
        _refinedet.check_arm(self.error, bottom_shapes, num_priors, self.arm_conf_at, self.arm_loc_at)
        return [()]

    # -- the fork's forward, all images at once --------------------------------------------------
    def _matches(self, loc: Tensor, gt: mb.GroundTruth, prior: Tensor, var: Tensor,
                 match_prior: Tensor) -> tuple[Tensor, Tensor]:
        """FindMatches (CasRegFindMatches: ``match_prior`` are the refined priors [N, P, 4], else ``prior``):
        (indices [N, L, P], overlaps [N, L, P])."""
        p = self.p
        if p.use_prior_for_matching:
            idx, ov = mb.match(match_prior, gt, gt.valid, p.match_type, p.overlap_threshold,
                               p.ignore_cross_boundary_bbox)
            if self.share:
                return idx.unsqueeze(1), ov.unsqueeze(1)
            lab = torch.gather(gt.labels, 1, idx.clamp(min=0))                  # label of each match
            c = torch.arange(self.num_classes, device=loc.device).view(1, -1, 1)
            per = torch.where((idx.unsqueeze(1) > -1) & (lab.unsqueeze(1) == c), idx.unsqueeze(1),
                              torch.full_like(idx.unsqueeze(1), -1))
            return per, ov.unsqueeze(1).expand(-1, self.num_classes, -1)
        decoded = _bbox.decode(prior, var, loc, p.code_type, p.encode_variance_in_target)   # [N, L, P, 4]
        out_i, out_o = [], []
        for c in range(self.loc_classes):       # one matching per location class (1 when shared)
            mask = gt.valid if self.share else gt.valid & (gt.labels == c)
            idx, ov = mb.match(decoded[:, c], gt, mask, p.match_type, p.overlap_threshold,
                               p.ignore_cross_boundary_bbox)
            if not self.share and c == self.background:
                idx = torch.full_like(idx, -1)
            out_i.append(idx)
            out_o.append(ov)
        return torch.stack(out_i, 1), torch.stack(out_o, 1)

    def _encoded(self, loc: Tensor, gt: mb.GroundTruth, prior: Tensor, var: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """EncodeLocPrediction for every (image, class, prior) (valid where idx > -1): (pred, target)."""
        p = self.p
        n, lcls, num_priors = idx.shape
        gt_boxes = torch.gather(gt.boxes.unsqueeze(1).expand(-1, lcls, -1, -1), 2,
                                idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, -1, 4)) if gt.boxes.shape[1] else \
            torch.zeros(n, lcls, num_priors, 4, dtype=loc.dtype, device=loc.device)
        ok = (idx > -1).unsqueeze(-1)
        safe_gt = torch.where(ok, gt_boxes, prior.expand_as(gt_boxes))      # keep logs finite off-match
        target = _bbox.encode(prior, var, safe_gt, p.code_type, p.encode_variance_in_target)
        pred = loc
        if p.bp_inside:
            match_box = prior.expand_as(loc)
            if not p.use_prior_for_matching:
                match_box = _bbox.decode(prior, var, loc, p.code_type, p.encode_variance_in_target)
            outside = (match_box < 0) | (match_box > 1)
            pred = torch.where(outside, target, loc)
        if p.encode_variance_in_target:
            pred, target = pred / var, target / var
        return pred, target

    def _loc_terms(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The location loss per coordinate and its derivative: (elem, dloss)."""
        diff = pred - target
        if self.p.loc_loss_type == mb.SMOOTH_L1:
            small = diff.abs() < 1
            return torch.where(small, 0.5 * diff * diff, diff.abs() - 0.5), torch.where(small, diff, torch.sign(diff))
        return 0.5 * diff * diff, diff

    def forward(self, loc_in: Tensor, conf_in: Tensor, prior_in: Tensor, gt_in: Tensor,  # type: ignore[override]
                arm_conf_in: Tensor | None = None, arm_loc_in: Tensor | None = None) -> Tensor:
        p = self.p
        n = loc_in.shape[0]
        num_priors = prior_in.shape[-1] // 4
        c = self.num_classes
        with torch.no_grad():
            loc = loc_in.detach().reshape(n, num_priors, self.loc_classes, self.form).transpose(1, 2)  # [N, L, P, F]
            if self.form != _textboxes.SSD:
                loc_full, loc = loc, loc[..., :4]
            conf = conf_in.detach().reshape(n, num_priors, c)
            pri = prior_in.detach().reshape(-1)[: 2 * num_priors * 4].view(2, num_priors, 4)
            prior, var = pri[0], pri[1]
            gt_rows = gt_in.detach().to(loc.dtype)
            if self.two_class:
                gt_rows = _refinedet.two_class_labels(gt_rows)
            if self.form != _textboxes.SSD:
                gt_rows, quads = _textboxes.label_rows(gt_rows, n, p.use_difficult_gt)
            gt = mb.ground_truth(gt_rows, n, self.background, p.use_difficult_gt)
            refined = prior if arm_loc_in is None else _refinedet.refined_priors(
                prior, var, arm_loc_in.detach().to(loc.dtype), p.code_type, p.encode_variance_in_target)
            idx, overlaps = self._matches(loc, gt, prior, var, refined)
            pred, target = self._encoded(loc, gt, refined if arm_loc_in is None else refined.unsqueeze(1), var, idx)
            elem, dloss = self._loc_terms(pred, target)
            mine_elem = elem  # SSD's 4-offset terms rank the hard examples, TextBoxes++'s forms too
            if self.form != _textboxes.SSD:
                elem, dloss = self._loc_terms(*_textboxes.loc_pairs(
                    loc_full, target, quads, idx, prior, var, self.form, p.bp_inside))
            matched = idx > -1                                                   # [N, L, P]
            neg = torch.zeros(n, num_priors, dtype=torch.bool, device=loc.device)
            gt_label = torch.gather(gt.labels, 1, idx[:, 0].clamp(min=0)) if gt.labels.shape[1] else \
                torch.zeros(n, num_priors, dtype=torch.int64, device=loc.device)
            if self.mining != mb.NONE_MINING:
                if arm_loc_in is not None and self.mining == mb.HARD_EXAMPLE:   # the fork's SSD encoding here
                    mine_elem = self._loc_terms(*self._encoded(loc, gt, prior, var, idx))[0]
                objectness = None if arm_conf_in is None else \
                    _refinedet.objectness(arm_conf_in.detach(), num_priors) >= self.objectness_score
                matched, neg = self._mine(conf, loc, idx, overlaps, gt_label, mine_elem, prior, var, gt.has_gt,
                                          objectness)
            num_matches = int(matched.sum())
            norm = self._normalizer(n, num_priors, num_matches)
            loss = torch.zeros((), dtype=loc_in.dtype, device=loc_in.device)
            g_loc = torch.zeros_like(dloss)
            if self.use_loc and num_matches:
                m = matched.unsqueeze(-1).to(loc.dtype)
                loc_loss = p.loc_weight * (elem * m).sum() / norm
                if self.form != _textboxes.SSD:    # the fork caps the reported term at 20, not its diff
                    loc_loss = loc_loss.to(torch.float32).clamp(max=20.0).to(loss.dtype)
                loss = loss + loc_loss
                g_loc = dloss * m * (p.loc_weight / norm)
            conf_loss, g_conf = self._conf_loss(conf, matched, neg, idx, gt, gt_label)
            if self.use_conf:
                loss = loss + conf_loss / norm
                g_conf = g_conf / norm
            else:
                g_conf = torch.zeros_like(g_conf)
        g_loc = g_loc.transpose(1, 2).reshape(loc_in.shape)
        return _FixedGradFn.apply(loc_in, conf_in, loss, g_loc, g_conf.reshape(conf_in.shape))

    def _normalizer(self, n: int, num_priors: int, num_matches: int) -> float:
        count = {FULL: n * num_priors, VALID: num_matches, BATCH_SIZE: n, NONE: 1}[self.mode]
        return float(max(1.0, count))

    def _mine(self, conf: Tensor, loc: Tensor, idx: Tensor, overlaps: Tensor, gt_label: Tensor, loc_elem: Tensor,
              prior: Tensor, var: Tensor, has_gt: Tensor, objectness: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """MineHardExamples (share_location): (positives [N, 1, P], negatives [N, P]); an image without
        ground truth has no matches in the fork's map, so nothing is mined from it. ``objectness`` [N, P]
        (RefineDet's arm_conf >= objectness_score): only those priors are candidates."""
        p = self.p
        idx0, ov0 = idx[:, 0], overlaps[:, 0]
        labels = torch.where(idx0 > -1, gt_label, torch.full_like(gt_label, self.background))
        loss = mb.conf_loss_per_prior(conf, labels, self.conf_type)
        if self.mining == mb.HARD_EXAMPLE:
            loss = loss + torch.where(idx0 > -1, loc_elem[:, 0].sum(-1), torch.zeros_like(loss))
            eligible = torch.ones_like(idx0, dtype=torch.bool)
            candidates = eligible if objectness is None else eligible & objectness
            count = candidates.sum(1).clamp(max=int(p.sample_size))
            if p.sample_size <= 0:
                raise self.error("multibox_loss_param.sample_size must be positive for HARD_EXAMPLE")
        else:
            eligible = (idx0 == -1) & (ov0 < p.neg_overlap)
            candidates = eligible if objectness is None else eligible & objectness
            num_pos = (idx0 > -1).sum(1)
            count = torch.minimum((num_pos.to(torch.float32) * np.float32(p.neg_pos_ratio)).to(torch.int64),
                                  candidates.sum(1))
        if p.HasField("nms_param") and p.nms_param.nms_threshold > 0:
            boxes = prior.expand(idx0.shape[0], -1, -1) if p.use_prior_for_nms else \
                _bbox.decode(prior, var, loc[:, 0], p.code_type, p.encode_variance_in_target)
            top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1
            selected = mb.select_after_nms(loss, eligible, count, boxes, p.nms_param.nms_threshold, top_k)
            if objectness is not None:
                selected = _refinedet.remap_nms_picks(selected, eligible, candidates, self.error)
        else:
            selected = mb.select_top(loss, candidates, count)
        matched = idx > -1
        if self.mining == mb.HARD_EXAMPLE:
            matched = matched & selected.unsqueeze(1)
        return matched, selected & (idx0 == -1) & has_gt.unsqueeze(1)

    def _conf_loss(self, conf: Tensor, matched: Tensor, neg: Tensor, idx: Tensor, gt: mb.GroundTruth,
                   gt_label: Tensor) -> tuple[Tensor, Tensor]:
        """EncodeConfPrediction + the internal confidence loss: (summed loss, diff [N, P, C])."""
        p = self.p
        n, num_priors, c = conf.shape
        pos = matched.any(1)                                     # a prior matches in one class at most
        if self.share:
            label = gt_label
        else:   # the label of its match in the lowest class where it matched (the fork's map order)
            first = torch.argmax((idx > -1).to(torch.int64), dim=1, keepdim=True)
            g_idx = torch.gather(idx, 1, first).squeeze(1).clamp(min=0)
            label = torch.gather(gt.labels, 1, g_idx) if gt.labels.shape[1] else gt_label
        if p.map_object_to_agnostic:
            label = torch.full_like(label, self.background + 1)
        if self.mining != mb.NONE_MINING:
            rows = (pos | neg) & gt.has_gt.unsqueeze(1)
            target_label = torch.where(pos, label, torch.full_like(label, self.background))
        else:
            rows = torch.ones_like(pos)
            target_label = torch.where(pos, label, torch.full_like(label, self.background))
        w = rows.unsqueeze(-1).to(conf.dtype)
        if self.conf_type == mb.SOFTMAX:
            e = torch.exp(conf - conf.amax(dim=2, keepdim=True))
            prob = e / e.sum(dim=2, keepdim=True)
            p_lab = torch.gather(prob, 2, target_label.unsqueeze(-1)).squeeze(-1)
            loss = -(torch.log(p_lab.clamp(min=mb.FLT_MIN)) * rows.to(conf.dtype)).sum()
            onehot = torch.zeros_like(prob).scatter_(2, target_label.unsqueeze(-1), 1.0)
            return loss, (prob - onehot) * w
        target = self._logistic_target(conf, pos, rows, label)
        loss = (mb.logistic_loss(conf, target) * w).sum()
        return loss, (torch.sigmoid(conf) - target) * w

    def _logistic_target(self, conf: Tensor, pos: Tensor, rows: Tensor, label: Tensor) -> Tensor:
        """The fork's conf_gt for LOGISTIC: filled with the background id, 1 at each row's class; without
        mining the fork advances its pointer by P (not P * C) per image, and so do we."""
        n, num_priors, c = conf.shape
        flat = torch.full((n * num_priors * c,), float(self.background), dtype=conf.dtype, device=conf.device)
        img = torch.arange(n, device=conf.device).view(-1, 1).expand(-1, num_priors)
        pri = torch.arange(num_priors, device=conf.device).view(1, -1).expand(n, -1)
        if self.mining != mb.NONE_MINING:
            cls = torch.where(pos, label, torch.full_like(label, self.background))
            on = rows & (pos | ((0 <= cls) & (cls < c)))
            at = (img * num_priors + pri) * c + cls
        else:
            on = pos
            at = img * num_priors + pri * c + label
        flat[at[on]] = 1.0
        return flat.view(n, num_priors, c)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(143)
        num_priors = 12
        xy = r.uniform(0.05, 0.6, (num_priors, 2))
        wh = r.uniform(0.15, 0.35, (num_priors, 2))
        prior = np.stack([np.concatenate([xy, xy + wh], 1).reshape(-1),
                          np.tile([0.1, 0.1, 0.2, 0.2], num_priors)])[None]
        gt = np.array([[0, 1, 0, 0.1, 0.1, 0.4, 0.45, 0], [0, 2, 1, 0.5, 0.4, 0.9, 0.8, 0],
                       [1, 1, 0, 0.3, 0.2, 0.6, 0.7, 0]], float)[None, None]
        obj = np.random.default_rng(144).uniform(0, 1, (2, num_priors))   # RefineDet's example; r's draws unchanged
        base = ('name: "mbox" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior" bottom: "label" '
                'top: "loss" multibox_loss_param { num_classes: 3 share_location: true match_type: PER_PREDICTION '
                'overlap_threshold: 0.3 background_label_id: 0 neg_pos_ratio: 2 neg_overlap: 0.3 code_type: CENTER_SIZE')
        return [Example(base + ' loc_loss_type: SMOOTH_L1 mining_type: MAX_NEGATIVE }',
                        [r.standard_normal((2, num_priors * 4)), r.standard_normal((2, num_priors * 3)) * 2, prior, gt],
                        grad_bottoms=(0, 1), grad_params=False),
                Example(base + ' loc_loss_type: L2 conf_loss_type: LOGISTIC mining_type: NONE } '
                        'loss_param { normalization: BATCH_SIZE }',
                        [r.standard_normal((2, num_priors * 4)), r.standard_normal((2, num_priors * 3)), prior, gt],
                        grad_bottoms=(0, 1), grad_params=False),
                # RefineDet's ODM loss: the ARM's softmaxed scores and offsets after the ground truth
                Example(base.replace('bottom: "label"', 'bottom: "label" bottom: "arm_conf" bottom: "arm_loc"')
                        + ' loc_loss_type: SMOOTH_L1 mining_type: MAX_NEGATIVE objectness_score: 0.3 }',
                        [r.standard_normal((2, num_priors * 4)), r.standard_normal((2, num_priors * 3)) * 2, prior, gt,
                         np.stack([1 - obj, obj], -1).reshape(2, -1), r.standard_normal((2, num_priors * 4)) * 0.3],
                        grad_bottoms=(0, 1), grad_params=False)]
