"""Cascade R-CNN's box layers: ``ScaleRoute``, ``DecodeBBox``, ``BoxGroupOutput`` (zhaoweicai/cascade-rcnn @
2252f46158ea6555868ca6fa5c221ea71d9b5e6c: ``src/caffe/layers/scale_route_layer.cpp``,
``decode_bbox_layer.cpp``, ``box_group_output_layer.{cpp,cu}``, and ``src/caffe/util/bbox_util.{cpp,cu}``'s
``BBoxSize``, ``JaccardOverlap``, ``ClipBBox``, ``ApplyNMS``, ``DecodeGroupBBoxes`` and
``DecodeBBoxesWithPrior``). ``FrcnnOutput`` is in ``cascade_output.py``.

Boxes are pixel boxes with the ``+ 1`` convention: ``BBoxSize = (x2 - x1 + 1) * (y2 - y1 + 1)`` (0 when
``x2 < x1`` or ``y2 < y1``). The fork's ``JaccardOverlap``: 0 if either box is invalid; intersection 0 when
``ix1 > ix2`` or ``iy1 >= iy2`` (the fork's asymmetric test, kept); denominator by ``nms_type``: ``"IOMU"``
the smaller size, ``"IOFU"`` the first box's, anything else the union; 0 when it is <= 0. NMS is the fork's
greedy ``ApplyNMS``: in the given order, a kept box removes every later one whose overlap is ``> iou_thr``.
All box arithmetic is in float32 (the fork's ``BBox`` holds floats).

None of these layers has a backward (the fork's are empty or absent; its nets set ``propagate_down: 0``).
Their tops have Caffe's 4-d shapes (``K x 5 x 1 x 1``, ``K x C x H x W``). Deviation: where scores tie,
the fork's ``std::partial_sort`` / ``std::sort`` leave the order unspecified; here it is the order of
collection (a stable sort).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape, legacy_shape
from neocaffe.layers.cascade_boxes_math import bbox_reg_stats, bbox_size, clip_boxes, decode_with_prior, greedy_nms
from neocaffe.layers.registry import register_layer

FLT_MAX = 3.4028234663852886e38
_F = torch.float32


# -- ScaleRoute -------------------------------------------------------------------------------------
@register_layer("ScaleRoute")
class ScaleRoute(Layer):
    """FPN routing of RoIs by size (``scale_route_layer.cpp``). Bottom 0: RoIs ``R x 5``; every bottom has R
    rows; top k holds the selected rows of bottom k. A RoI is selected where ``low_scale <= sqrt(BBoxSize)
    < high_scale`` (unset: 0 and FLT_MAX), in bottom order. If none is, the one RoI whose
    ``|log2(scale / mid)|`` is smallest (the first of equals) is taken alone, ``mid`` being
    ``sqrt(low * high)`` with both set, else the one set, else 256. No backward."""

    value_dependent_shape = True
    min_bottoms = 1
    min_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        if len(self.param.top) != len(bottom_shapes):
            raise self.error(f"needs as many tops as bottoms; received {len(bottom_shapes)} bottoms and "
                             f"{len(self.param.top)} tops")
        if any(self.param.propagate_down):
            raise self.error("propagate_down must be false for every bottom (the fork's CHECK)")
        p = self.param.scale_route_param
        lo = float(np.float32(p.low_scale)) if p.HasField("low_scale") else 0.0
        hi = float(np.float32(p.high_scale)) if p.HasField("high_scale") else FLT_MAX
        if p.HasField("low_scale") and lo <= 0:
            raise self.error(f"scale_route_param.low_scale must be > 0; received {lo}")
        if p.HasField("low_scale") and p.HasField("high_scale"):
            mid = float(np.sqrt(np.float32(lo * hi)))
        else:
            mid = lo if p.HasField("low_scale") else hi if p.HasField("high_scale") else 256.0
        if hi < lo:
            raise self.error(f"scale_route_param.high_scale ({hi}) must be >= low_scale ({lo})")
        self.low, self.high, self.mid = lo, hi, mid

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shapes = [legacy_shape(s, self) for s in bottom_shapes]
        if shapes[0][1] != 5:
            raise self.error(f"bottom 0 must be RoIs R x 5; received shape {tuple(bottom_shapes[0])}")
        if any(s[0] != shapes[0][0] for s in shapes):
            raise self.error(f"every bottom must have the RoIs' {shapes[0][0]} rows; received "
                             f"{[tuple(s) for s in bottom_shapes]}")
        return [(1, *s[1:]) for s in shapes]  # as the fork's Reshape; forward gives the real count

    def select(self, rois: Tensor) -> Tensor:
        """Indices of the routed RoIs (see the class docstring)."""
        r = rois.detach().reshape(rois.shape[0], -1)[:, 1:5].to(_F)
        scale = torch.sqrt(bbox_size(r))
        sel = torch.nonzero((scale >= self.low) & (scale < self.high)).flatten()
        if sel.numel() == 0:
            if r.shape[0] == 0:
                raise self.error("received no RoIs")
            dist = torch.abs(torch.log2(scale / torch.tensor(self.mid, dtype=_F, device=r.device)))
            dist = torch.where(dist < FLT_MAX, dist, torch.full_like(dist, math.inf))
            if not bool(torch.isfinite(dist).any()):
                raise self.error("no RoI has a finite scale to fall back on (the fork's CHECK_GE(min_mid_idx, 0))")
            sel = torch.argmin(dist).view(1)
        return sel

    def forward(self, *bottoms: Tensor) -> list[Tensor]:  # type: ignore[override]
        sel = self.select(bottoms[0])
        out = []
        for x in bottoms:
            s = legacy_shape(tuple(x.shape), self)
            out.append(x.detach().reshape(s)[sel])
        return out

    @classmethod
    def examples(cls) -> list[Example]:
        rois = np.array([[0, 0, 0, 30, 30], [0, 10, 10, 200, 150], [0, 5, 5, 70, 90]], float)
        feats = np.arange(3 * 2, dtype=float).reshape(3, 2)
        base = 'name: "sr" type: "ScaleRoute" bottom: "rois" bottom: "f" top: "r" top: "g" '
        return [Example(base + 'scale_route_param { low_scale: 112 high_scale: 224 }', [rois, feats], grad_bottoms=()),
                Example(base + 'scale_route_param { high_scale: 8 }', [rois, feats], grad_bottoms=())]


# -- DecodeBBox -------------------------------------------------------------------------------------
@register_layer("DecodeBBox")
class DecodeBBox(Layer):
    """Box deltas -> the next stage's RoIs (``decode_bbox_layer.cpp``). Bottoms: deltas ``R x 8``
    (class-agnostic: background, object), RoIs ``R x 5``, in TRAIN optionally the matched ground truth
    (its last column the overlap). Top ``K x 5 x 1 x 1``: each RoI's batch index and its object box
    (deltas 4-7) decoded with ``bbox_reg_param``'s means and stds (DecodeBBoxesWithPrior; no clipping). In
    TEST, K = R. In TRAIN, boxes with ``x1 > x2`` or ``y1 > y2`` are dropped, and with the third bottom so
    are those whose overlap is ``>= decode_bbox_param.gt_iou_thr``. No backward."""

    value_dependent_shape = True
    min_bottoms = 2
    max_bottoms = 3
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.mean, self.std = bbox_reg_stats(self)
        if len(bottom_shapes) == 3 and self.phase != TRAIN:
            raise self.error("a third bottom (matched ground truth) is for TRAIN only (the fork's CHECK)")
        self.gt_iou_thr = float(self.param.decode_bbox_param.gt_iou_thr)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        d, r = legacy_shape(bottom_shapes[0], self), legacy_shape(bottom_shapes[1], self)
        if d[1:] != (8, 1, 1) or r[1:] != (5, 1, 1) or d[0] != r[0]:
            raise self.error(f"needs deltas R x 8 and RoIs R x 5; received {tuple(bottom_shapes[0])} and "
                             f"{tuple(bottom_shapes[1])}")
        if len(bottom_shapes) == 3 and bottom_shapes[2][0] != d[0]:
            raise self.error(f"bottom 2 must have {d[0]} rows; received {tuple(bottom_shapes[2])}")
        return [(r[0], 5, 1, 1)]

    def forward(self, deltas: Tensor, rois: Tensor, *gt: Tensor) -> Tensor:  # type: ignore[override]
        d = deltas.detach().reshape(deltas.shape[0], 8)
        r = rois.detach().reshape(rois.shape[0], 5)
        boxes = decode_with_prior(d[:, 4:8].unsqueeze(1), r[:, 1:5], self.mean, self.std)[:, 0]
        keep = torch.ones(r.shape[0], dtype=torch.bool, device=r.device)
        if self.phase == TRAIN:
            keep &= ~((boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3]))
            if gt:
                g = gt[0].detach().reshape(gt[0].shape[0], -1)
                keep &= ~(g[:, -1].to(_F) >= np.float32(self.gt_iou_thr))
        if not bool(keep.any()):
            raise self.error("every decoded box was screened out (the fork's CHECK_GT(keep_num, 0))")
        out = torch.cat([r[:, :1].to(_F), boxes], 1)[keep]
        return out.to(deltas.dtype).view(-1, 5, 1, 1)

    @classmethod
    def examples(cls) -> list[Example]:
        rng = np.random.default_rng(155)
        rois = np.array([[0, 10, 12, 50, 40], [0, 0, 0, 99, 79], [1, 30.5, 20, 31.5, 60]], float)
        deltas = 0.5 * rng.standard_normal((3, 8))
        return [Example('name: "dec" type: "DecodeBBox" bottom: "d" bottom: "r" top: "p" bbox_reg_param { '
                        'bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 '
                        'bbox_std: 0.2 bbox_std: 0.2 }', [deltas, rois], grad_bottoms=())]


# -- BoxGroupOutput ---------------------------------------------------------------------------------
@register_layer("BoxGroupOutput")
class BoxGroupOutput(Layer):
    """MS-CNN / Cascade R-CNN's proposal layer (``box_group_output_layer.{cpp,cu}``). Bottoms: pairs
    (probabilities ``(N*G) x C x H x W``, deltas ``(N*G) x 4 x H x W``), one per ``box_group_param`` (its
    ``field_w``/``field_h``: the G anchor sizes, ``stride``). Per image, over every pair and group and
    position: score ``1 - prob[channel 0]``, kept where ``>= fg_thr``; the box (DecodeGroupBBoxes: deltas
    times ``bbox_reg_param`` std plus mean, x/y clamped to ``[-1/field_xyr, 1/field_xyr]``, w/h to
    ``[log(1/field_whr), log(field_whr)]``, centre ``x * field_w + (w + 0.5) * stride``, size
    ``field_w * exp``) clipped to ``W * stride`` x ``H * stride`` and kept where both sides ``+ 1`` are
    ``>= min_size``; sorted by score (the first ``max_nms_num`` if > 0), greedy NMS at ``iou_thr``
    (``nms_type``), then the first ``max_post_nms_num`` (if > 0). Top 0: ``K x 5 x 1 x 1`` RoIs
    ``(image, x1, y1, x2, y2)``, images in order; top 1 (optional): ``K x 6`` with the score. No box at
    all: the fork's stand-in ``(0, 1, 1, 10, 10)`` (and a zero row). No backward."""

    value_dependent_shape = True
    min_bottoms = 2
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.box_group_output_param
        if len(bottom_shapes) % 2:
            raise self.error(f"needs pairs of bottoms (probabilities, deltas); received {len(bottom_shapes)}")
        if len(p.box_group_param) != len(bottom_shapes) // 2:
            raise self.error(f"needs one box_group_param per bottom pair: {len(bottom_shapes) // 2}; received "
                             f"{len(p.box_group_param)}")
        self.groups = []
        for i, g in enumerate(p.box_group_param):
            if len(g.field_w) != len(g.field_h) or not len(g.field_w):
                raise self.error(f"box_group_param[{i}] needs as many field_w as field_h (> 0); received "
                                 f"{len(g.field_w)} and {len(g.field_h)}")
            self.groups.append((np.asarray(g.field_w, np.float32), np.asarray(g.field_h, np.float32), float(g.stride)))
        self.mean, self.std = bbox_reg_stats(self)
        whr, xyr = np.float32(p.field_whr), np.float32(p.field_xyr)
        # bbox_bound_ in Dtype (float32): [-1/xyr, 1/xyr, log(1/whr), log(whr)]
        self.bounds = [float(np.float32(-1) / xyr), float(np.float32(1) / xyr),
                       float(np.float32(math.log(np.float32(1) / whr))), float(np.float32(math.log(whr)))]
        self.fg_thr, self.iou_thr, self.nms_type = float(np.float32(p.fg_thr)), float(p.iou_thr), str(p.nms_type)
        self.max_nms, self.max_post = int(p.max_nms_num), int(p.max_post_nms_num)
        self.min_size = float(np.float32(p.min_size))

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = [legacy_shape(b, self) for b in bottom_shapes]
        num = s[0][0] // len(self.groups[0][0])
        for j, (fw, _, _) in enumerate(self.groups):
            pr, bb = s[2 * j], s[2 * j + 1]
            if (pr[0] // len(fw) != num or pr[1] != s[0][1] or bb[1] != 4 or bb[0] != pr[0] or bb[2:] != pr[2:]
                    or pr[0] % len(fw)):
                raise self.error(f"pair {j}: needs probabilities ({num}*{len(fw)}) x {s[0][1]} x H x W and deltas "
                                 f"({num}*{len(fw)}) x 4 x H x W; received {tuple(pr)} and {tuple(bb)}")
        return [(1, 5, 1, 1), (1, 6, 1, 1)][: self.n_tops]

    def decode(self, deltas: Tensor, fw: np.ndarray, fh: np.ndarray, stride: float) -> Tensor:
        """DecodeGroupBBoxes of ``deltas`` [N, G, 4, H, W] -> boxes [N, G, H, W, 4] (float32)."""
        d = deltas.to(_F)
        n, g, _, h, w = d.shape
        dev = d.device
        m = torch.tensor(self.mean, dtype=_F, device=dev).view(1, 1, 4, 1, 1)
        s = torch.tensor(self.std, dtype=_F, device=dev).view(1, 1, 4, 1, 1)
        v = d * s + m
        lo = torch.tensor(self.bounds[0::2], dtype=_F, device=dev)  # [min_xyr, min_whr]
        hi = torch.tensor(self.bounds[1::2], dtype=_F, device=dev)
        x, y = torch.minimum(hi[0], torch.maximum(lo[0], v[:, :, 0])), torch.minimum(hi[0], torch.maximum(lo[0], v[:, :, 1]))
        bw, bh = torch.minimum(hi[1], torch.maximum(lo[1], v[:, :, 2])), torch.minimum(hi[1], torch.maximum(lo[1], v[:, :, 3]))
        fws = torch.from_numpy(fw).to(dev).view(1, g, 1, 1)
        fhs = torch.from_numpy(fh).to(dev).view(1, g, 1, 1)
        st = torch.tensor(stride, dtype=_F, device=dev)
        cw = (torch.arange(w, device=dev, dtype=_F) + 0.5) * st
        ch = (torch.arange(h, device=dev, dtype=_F) + 0.5) * st
        x = x * fws + cw.view(1, 1, 1, w)
        y = y * fhs + ch.view(1, 1, h, 1)
        bw = fws * torch.exp(bw.double()).to(_F)
        bh = fhs * torch.exp(bh.double()).to(_F)
        x, y = x - bw / 2, y - bh / 2
        return torch.stack([x, y, x + bw - 1, y + bh - 1], -1)

    def forward(self, *bottoms: Tensor) -> list[Tensor]:  # type: ignore[override]
        num = bottoms[0].shape[0] // len(self.groups[0][0])
        per_image: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(num)]
        for j, (fw, fh, stride) in enumerate(self.groups):
            prob, deltas = bottoms[2 * j].detach(), bottoms[2 * j + 1].detach()
            g = len(fw)
            sp = legacy_shape(tuple(prob.shape), self)
            h, w = sp[2], sp[3]
            boxes = self.decode(deltas.reshape(num, g, 4, h, w), fw, fh, stride).reshape(num, -1, 4)
            score = (1 - prob.reshape(num, g, sp[1], h, w)[:, :, 0].to(_F)).reshape(num, -1)
            boxes = clip_boxes(boxes, float(w * int(stride)), float(h * int(stride)))
            for i in range(num):
                ok = ((score[i] >= self.fg_thr) & ((boxes[i, :, 2] - boxes[i, :, 0] + 1) >= self.min_size)
                      & ((boxes[i, :, 3] - boxes[i, :, 1] + 1) >= self.min_size))
                per_image[i].append((boxes[i][ok], score[i][ok]))
        rows = []
        for i in range(num):
            b = torch.cat([p[0] for p in per_image[i]])
            s = torch.cat([p[1] for p in per_image[i]])
            if b.shape[0] == 0:
                continue
            order = torch.sort(s, descending=True, stable=True).indices
            if self.max_nms > 0:
                order = order[: self.max_nms]
            b, s = b[order], s[order]
            kept = greedy_nms(b, self.iou_thr, self.nms_type)
            if self.max_post > 0:
                kept = kept[: self.max_post]
            idx = torch.full((kept.numel(), 1), float(i), dtype=_F, device=b.device)
            rows.append(torch.cat([idx, b[kept], s[kept].unsqueeze(1)], 1))
        dt, dev = bottoms[1].dtype, bottoms[1].device
        if rows:
            allr = torch.cat(rows).to(dt)
            tops = [allr[:, :5].reshape(-1, 5, 1, 1), allr.reshape(-1, 6, 1, 1)]
        else:
            tops = [torch.tensor([0, 1, 1, 10, 10], dtype=dt, device=dev).view(1, 5, 1, 1),
                    torch.zeros((1, 6, 1, 1), dtype=dt, device=dev)]
        return tops[: self.n_tops]

    @classmethod
    def examples(cls) -> list[Example]:
        rng = np.random.default_rng(158)
        prob = rng.uniform(0, 1, (2, 2, 3, 4))        # one image, 2 anchor sizes
        prob[:, 1] = 1 - prob[:, 0]
        deltas = 0.3 * rng.standard_normal((2, 4, 3, 4))
        base = 'name: "bgo" type: "BoxGroupOutput" bottom: "p" bottom: "d" top: "rois" top: "sc" '
        groups = 'box_group_param { field_w: 16 field_w: 32 field_h: 16 field_h: 32 stride: 8 }'
        # one kept box (max_post_nms_num 1), or none at all (fg_thr 1.5: the fork's stand-in row): what
        # reshape says
        return [Example(base + 'box_group_output_param { fg_thr: 0.1 iou_thr: 0.7 min_size: 2 field_whr: 8 '
                        'field_xyr: 1 max_post_nms_num: 1 ' + groups + ' }', [prob, deltas], grad_bottoms=()),
                Example(base + 'box_group_output_param { fg_thr: 1.5 ' + groups + ' }', [prob, deltas],
                        grad_bottoms=())]
