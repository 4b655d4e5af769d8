"""MobileNet-YOLO's YOLOv3 training loss ``Yolov3``.

Lineage and source files: eric612/MobileNet-YOLO @ 69b4441c, ``src/caffe/layers/yolov3_layer.{cpp,cu}``
(last changed in 6a4db28 "Add label_smooth") with ``box_iou``/``box_giou``/``box_diou``/``box_ciou``/
``get_region_box`` of ``src/caffe/util/bbox_util.cpp``. The label bottom and the backward are
:mod:`neocaffe.layers.region_loss`'s.

CPU and GPU paths: the fork's Forward_gpu computes the activations with ``0.5 * tanh(x / 2) + 0.5`` and
then runs Forward_cpu, whose own activation (``1 / (1 + exp(-x))``) is compiled only in CPU_ONLY builds;
we follow the CPU formula (the two differ in the last bits of float).
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from neocaffe.layers.base import Example, Shape
from neocaffe.layers.region_loss import (F64, MAX_TRUTHS, YoloLossLayer, best_over_truths, box_iou, host_array,
                                         inter_union, logistic, prefix)
from neocaffe.layers.registry import register_layer

IOU, GIOU, MSE, DIOU, CIOU = 0, 1, 2, 3, 4  # Yolov3Parameter.IOU_LOSS
FLT_MAX = np.float32(3.4028235e38)
_4_PI2, _8_PI2 = 4 / (math.pi * math.pi), 8 / (math.pi * math.pi)


def _enclosing(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``box_c``: width and height of the smallest box holding both."""
    top = np.fmin(a[1] - a[3] / 2, b[1] - b[3] / 2)
    bot = np.fmax(a[1] + a[3] / 2, b[1] + b[3] / 2)
    left = np.fmin(a[0] - a[2] / 2, b[0] - b[2] / 2)
    right = np.fmax(a[0] + a[2] / 2, b[0] + b[2] / 2)
    return right - left, bot - top


def box_metric(a: tuple, b: tuple, kind: int) -> np.ndarray:
    """``box_iou(a, b, type)``: IoU (``IOU``, ``MSE``), GIoU, DIoU (distance term to the power 0.6) or
    CIoU, broadcast over arrays, in the data type (double where the fork mixes in double literals)."""
    iou = box_iou(a, b)
    if kind in (IOU, MSE):
        return iou
    ft = iou.dtype.type
    with np.errstate(all="ignore"):
        w, h = _enclosing(a, b)
        if kind == GIOU:
            c = w * h
            _, u = inter_union(a, b)
            return np.where(c == 0, iou, iou - (c - u) / c).astype(ft)
        c = w * w + h * h
        d = (a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1])
        if kind == DIOU:
            return np.where(c == 0, iou, iou - np.power((d / c).astype(F64), 0.6).astype(ft)).astype(ft)
        ar = (np.arctan(b[2] / b[3]) - np.arctan(a[2] / a[3])).astype(F64)
        ar_loss = (_4_PI2 * ar * ar).astype(ft)
        alpha = (ar_loss / ((ft(1) - iou + ar_loss).astype(F64) + 0.000001)).astype(ft)
        return np.where(c == 0, iou, iou - (d / c + alpha * ar_loss)).astype(ft)


def iou_gradient(p: tuple, t: tuple, kind: int) -> tuple[np.ndarray, ...]:
    """``dx_box_iou``: the fork's (dx, dy, dw, dh) of IoU / GIoU / DIoU / CIoU for predictions ``p`` and
    truths ``t`` (centre-size arrays), with its corner selection and its replacements where the boxes
    do not intersect. The caller multiplies dw, dh by ``exp(t_w)``, ``exp(t_h)``."""
    ft = p[0].dtype.type
    z, one, half = ft(0), ft(1), ft(0.5)
    top, bot, left, right = p[1] - p[3] / 2, p[1] + p[3] / 2, p[0] - p[2] / 2, p[0] + p[2] / 2
    pt, pb, pl, pr = np.fmin(top, bot), np.fmax(top, bot), np.fmin(left, right), np.fmax(left, right)
    tt, tb, tl, tr = t[1] - t[3] / 2, t[1] + t[3] / 2, t[0] - t[2] / 2, t[0] + t[2] / 2
    x_area, t_area = (pb - pt) * (pr - pl), (tb - tt) * (tr - tl)
    ih, iw = np.fmin(pb, tb) - np.fmax(pt, tt), np.fmin(pr, tr) - np.fmax(pl, tl)
    inter = iw * ih
    union = x_area + t_area - inter
    dist2 = (p[0] - t[0]) * (p[0] - t[0]) + (p[1] - t[1]) * (p[1] - t[1])
    gw, gh = np.fmax(pr, tr) - np.fmin(pl, tl), np.fmax(pb, tb) - np.fmin(pt, tt)
    g_c = gw * gh
    d_x = {"t": -(pr - pl), "b": pr - pl, "l": -(pb - pt), "r": pb - pt}
    d_i = {"t": np.where(pt > tt, -iw, z), "b": np.where(pb < tb, iw, z),
           "l": np.where(pl > tl, -ih, z), "r": np.where(pr < tr, ih, z)}
    d_u = {k: d_x[k] - d_i[k] for k in d_x}
    d_c = {"t": np.where(pt < tt, -gw, z), "b": np.where(pb > tb, gw, z),
           "l": np.where(pl < tl, -gh, z), "r": np.where(pr > tr, gh, z)}
    g = {k: np.where(union > 0, (union * d_i[k] - inter * d_u[k]) / (union * union), z) for k in d_x}
    g["t"] = np.where(top < bot, g["t"], g["b"])
    g["b"] = np.where(top < bot, g["b"], g["t"])
    g["l"] = np.where(left < right, g["l"], g["r"])
    g["r"] = np.where(left < right, g["r"], g["l"])
    apart = (iw <= 0) | (ih <= 0)
    if kind == GIOU:
        for k in g:
            extra = (g_c * d_u[k] - union * d_c[k]) / (g_c * g_c)
            g[k] = np.where(apart, extra, np.where(g_c > 0, g[k] + extra, g[k]))
    dx, dy, dw, dh = g["l"] + g["r"], g["t"] + g["b"], g["r"] - g["l"], g["b"] - g["t"]
    if kind not in (DIOU, CIOU):
        return dx, dy, dw, dh
    cw, ch = _enclosing(p, t)
    c = cw * cw + ch * ch
    dcw_dx = np.where(pr > tr, one, z) - np.where(pl < tl, one, z)
    dcw_dw = np.where(pr > tr, half, z) - np.where(pl < tl, -half, z)
    dch_dy = np.where(pb > tb, one, z) - np.where(pt < tt, one, z)
    dch_dh = np.where(pb > tb, half, z) - np.where(pt < tt, -half, z)
    cc = c * c
    ex = (2 * (t[0] - p[0]) * c - (2 * cw * dcw_dx + 2 * ch * z) * dist2) / cc
    ey = (2 * (t[1] - p[1]) * c - (2 * cw * z + 2 * ch * dch_dy) * dist2) / cc
    ew = (2 * cw * dcw_dw + 2 * ch * z) * dist2 / cc
    eh = (2 * cw * z + 2 * ch * dch_dh) * dist2 / cc
    if kind == CIOU:
        ar = (np.arctan(t[2] / t[3]) - np.arctan(p[2] / p[3])).astype(F64)
        ar_loss = (_4_PI2 * ar * ar).astype(ft)
        alpha = (ar_loss / ((one - inter / union + ar_loss).astype(F64) + 0.000001)).astype(ft)
        ew = ew + alpha * (_8_PI2 * ar * p[3]).astype(ft)
        eh = eh + alpha * (-_8_PI2 * ar * p[2]).astype(ft)
    out = []
    for base, e in ((dx, ex), (dy, ey), (dw, ew), (dh, eh)):
        out.append(np.where(apart, e, np.where(c > 0, base + e, base)))
    return tuple(out)


@register_layer("Yolov3")
class Yolov3Loss(YoloLossLayer):
    """YOLOv3's loss for one scale. ``yolov3_param``: ``num`` boxes of ``5 + num_class`` channels
    (``tx ty tw th to c_1..c_n``) per cell of the H x W bottom, box k using anchor ``mask[k]`` of
    ``biases`` (pixels; the grid is ``W * anchors_scale`` by ``H * anchors_scale`` pixels), ``thresh``,
    ``iou_thresh``, ``coord_scale``, ``class_scale``, ``object_scale``, ``iou_loss`` (MSE, IOU, GIOU,
    DIOU, CIOU), ``iou_normalizer``, ``max_delta``, ``accumulate``, ``use_focal_loss``,
    ``use_logic_gradient``, ``label_smooth_eps`` (default 0.1). ``side`` and ``noobject_scale`` are read
    but unused by the fork.

    Activations: sigmoid on every channel but tw, th. Objectness diff ``s`` (the fork's ``-(0 - s)``), 0
    where the best overlap (of ``iou_loss``'s kind) of the box with a truth is above ``thresh``. Each
    truth (label order) picks among all anchors the one whose box centred at 0 overlaps it most; if that
    anchor is in ``mask`` its box in the truth's cell is assigned, and so is every other masked anchor
    overlapping above ``iou_thresh`` (< 1). The fork's quirk kept: after the first assignment it compares
    the other anchors with the *mask slot* of the best one, so where ``mask[k] != k`` the best anchor is
    assigned a second time when it also passes ``iou_thresh``. An assigned box gets box diffs (MSE:
    ``-scale * (t - x)`` on sigmoid(tx), sigmoid(ty), tw, th, scale ``coord_scale * (2 - w*h)``; IoU kinds:
    ``-dx_box_iou`` with dw, dh times ``exp(tw|th)``, times ``iou_normalizer``, NaN/inf to 0, clipped to
    ``max_delta``, added to the earlier ones with ``accumulate``), objectness ``-(1 - s)`` (times
    ``object_scale`` with ``use_logic_gradient``) and class diffs ``-class_scale * (y - p)`` with smoothed
    targets ``y * (1 - eps) + eps / 2`` (the focal form, or only the truth's class when its diff is
    already nonzero). Loss: MSE ``sum(diff^2) / N``; IoU kinds ``(sum of the objectness and class
    diff^2 + iou_normalizer * mean(1 - overlap)) / N`` where the overlap is GIoU, CIoU, or DIoU for both
    IOU and DIOU (the fork's return value). Backward: ``diff * top_diff / N``; with ``use_logic_gradient``
    the diff of every channel but tw, th is first multiplied by ``(1 - v) v``, v the sigmoid, except that
    for the IoU kinds the fork has already put the raw tx, ty back in its buffer, and so v is raw there.
    """

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.yolov3_param
        self.classes, self.num = int(p.num_class), int(p.num)
        if self.num < 1:
            raise self.error(f"yolov3_param.num must be at least 1; received {self.num}")
        self.mask = [int(m) for m in p.mask]
        if len(self.mask) < self.num:
            raise self.error(f"yolov3_param.mask needs num = {self.num} anchor indices (one per box); "
                             f"received {self.mask}")
        self.anchors = np.asarray(list(p.biases)[: 2 * (len(p.biases) // 2)], np.float32).reshape(-1, 2)
        if any(m >= len(self.anchors) for m in self.mask[: self.num]):
            raise self.error(f"yolov3_param.mask {self.mask[: self.num]} indexes anchors beyond the "
                             f"{len(self.anchors)} pairs of biases")
        self.slot_of: dict[int, int] = {}
        for k, m in enumerate(self.mask[: self.num]):
            self.slot_of.setdefault(m, k)  # the fork's int_index: the first match
        self.anchors_scale = int(p.anchors_scale)
        self.kind = int(p.iou_loss)
        f = np.float32
        self.thresh, self.iou_thresh = f(p.thresh), f(p.iou_thresh)
        self.coord_scale, self.class_scale, self.object_scale = f(p.coord_scale), f(p.class_scale), f(p.object_scale)
        self.iou_normalizer, self.max_delta, self.eps = f(p.iou_normalizer), f(p.max_delta), f(p.label_smooth_eps)
        self.accumulate, self.focal, self.logic = bool(p.accumulate), bool(p.use_focal_loss), bool(p.use_logic_gradient)

    def channels(self) -> int:
        return self.num * (5 + self.classes)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        a = host_array(x)
        ft = a.dtype.type
        n, _, h, w = a.shape
        hw, length = h * w, 5 + self.classes
        truths = host_array(label).astype(ft).reshape(n, MAX_TRUTHS, 5)
        anchors = self.anchors.astype(ft)
        net_w, net_h = ft(w * self.anchors_scale), ft(h * self.anchors_scale)
        with np.errstate(all="ignore"):
            v = a.reshape(n, self.num, length, hw)
            swap = logistic(v)
            swap[:, :, 2:4] = v[:, :, 2:4]
            cell = np.arange(hw)
            mine = anchors[self.mask[: self.num]][:, :, None]  # [num, 2, 1]
            pred = (((cell % w).astype(ft) + swap[:, :, 0]) / ft(w), ((cell // w).astype(ft) + swap[:, :, 1]) / ft(h),
                    np.exp(swap[:, :, 2]) * mine[:, 0] / net_w, np.exp(swap[:, :, 3]) * mine[:, 1] / net_h)
            count = int(prefix(truths[:, :, 1] != 0).sum(1).max(initial=0))
            t = truths[:, None, None, :count]
            iou = box_metric(tuple(c[..., None] for c in pred), (t[..., 1], t[..., 2], t[..., 3], t[..., 4]), self.kind)
            best = best_over_truths(iou, prefix(truths[:, :count, 1] != 0)[:, None, None])
            diff = np.zeros_like(v)
            diff[:, :, 4] = np.where(best > self.thresh, ft(0), swap[:, :, 4])
            entries = self._assignments(truths, anchors / np.array([net_w, net_h], ft))
            swap_f, diff_f = swap.reshape(-1), diff.reshape(-1)
            idx, deltas, overlap = self._box_deltas(swap_f, truths, entries, (h, w), (net_w, net_h))
            self._write_truths(swap_f, diff_f, truths, entries, idx, deltas, hw)
            if self.kind == MSE:
                loss = ft((diff.astype(F64) ** 2).sum())
            else:
                loss = ft((diff[:, :, 4:].astype(F64) ** 2).sum())
                if len(entries):
                    lost = ft(0)
                    for o in overlap:  # Dtype avg_iou_loss += 1 - iou, in order
                        lost = lost + (ft(1) - o)
                    loss = loss + self.iou_normalizer.astype(ft) * lost / ft(len(entries))
                swap[:, :, :2] = v[:, :, :2]  # the fork's loss loop puts the raw tx, ty back in its buffer
            if self.logic:
                keep = np.ones(length, bool)
                keep[2:4] = False
                diff[:, :, keep] = diff[:, :, keep] * ((ft(1) - swap[:, :, keep]) * swap[:, :, keep])
        return self.finish(x, float(loss / ft(n)), diff)

    def _assignments(self, truths: np.ndarray, anchor_wh: np.ndarray) -> list[tuple[int, int, int]]:
        """(image, truth row, box slot) in the fork's order: per image, per truth, the best anchor's slot
        first, then the other masked anchors above ``iou_thresh``."""
        ft = truths.dtype.type
        valid = prefix(truths[:, :, 3] != 0)
        zero = ft(0)
        ious = box_metric((zero, zero, anchor_wh[:, 0], anchor_wh[:, 1]),
                          (zero, zero, truths[:, :, 3, None], truths[:, :, 4, None]), self.kind)  # [N, 300, A]
        out = []
        for b, t in zip(*np.nonzero(valid)):
            row = ious[b, t]
            best_n, best = -1, ft(0)
            for q in range(len(row)):
                if row[q] > best:
                    best_n, best = q, row[q]
            slot = self.slot_of.get(best_n, -1)
            if slot >= 0:
                out.append((int(b), int(t), slot))
                best_n = slot  # the fork reuses best_n for the slot (see the class docstring)
            if self.iou_thresh < 1:
                for q in range(len(row)):
                    extra = self.slot_of.get(q, -1)
                    if extra >= 0 and q != best_n and row[q] > self.iou_thresh:
                        out.append((int(b), int(t), extra))
        return out

    def _box_deltas(self, swap: np.ndarray, truths: np.ndarray, entries: list, hw_: tuple[int, int],
                    net: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``delta_region_box`` for every assignment at once: (flat index of the box, its 4 box diffs,
        the overlap the fork returns)."""
        ft = swap.dtype.type
        h, w = hw_
        hw, length = h * w, 5 + self.classes
        if not entries:
            return np.zeros(0, np.int64), np.zeros((0, 4), ft), np.zeros(0, ft)
        e = np.asarray(entries, np.int64)
        tr = truths[e[:, 0], e[:, 1]]
        i, j = np.asarray([self.cell_of(r[1], r[2], w, h) for r in tr], np.int64).T
        idx = e[:, 2] * length * hw + j * w + i + e[:, 0] * self.num * length * hw
        raw = swap[idx[:, None] + np.arange(4) * hw]  # sigmoid(tx), sigmoid(ty), tw, th
        anchor = self.anchors.astype(ft)[np.asarray(self.mask)[e[:, 2]]]
        pred = ((i.astype(ft) + raw[:, 0]) / ft(w), (j.astype(ft) + raw[:, 1]) / ft(h),
                np.exp(raw[:, 2]) * anchor[:, 0] / net[0], np.exp(raw[:, 3]) * anchor[:, 1] / net[1])
        truth = (tr[:, 1], tr[:, 2], tr[:, 3], tr[:, 4])
        scale = self.coord_scale.astype(ft) * (ft(2) - tr[:, 3] * tr[:, 4])
        if self.kind == MSE:
            target = np.stack([tr[:, 1] * ft(w) - i.astype(ft), tr[:, 2] * ft(h) - j.astype(ft),
                               np.log(tr[:, 3] * net[0] / anchor[:, 0]), np.log(tr[:, 4] * net[1] / anchor[:, 1])], 1)
            return idx, (ft(-1) * scale)[:, None] * (target - raw), box_iou(pred, truth)
        overlap = box_metric(pred, truth, self.kind if self.kind in (GIOU, CIOU) else DIOU)
        fixed = (pred[0], pred[1], np.where(pred[2] == 0, ft(1), pred[2]), np.where(pred[3] == 0, ft(1), pred[3]))
        dx, dy, dw, dh = iou_gradient(fixed, truth, self.kind)
        d = np.stack([dx, dy, dw * np.exp(raw[:, 2]), dh * np.exp(raw[:, 3])], 1) * self.iou_normalizer.astype(ft)
        d = np.where(np.isfinite(d), d, ft(0))
        if self.max_delta != FLT_MAX:
            m = self.max_delta.astype(ft)
            d = np.where(d > m, m, np.where(d < -m, -m, d))
        return idx, -d, overlap

    def _write_truths(self, swap: np.ndarray, diff: np.ndarray, truths: np.ndarray, entries: list, idx: np.ndarray,
               deltas: np.ndarray, hw: int) -> None:
        """Write each assignment's diffs in the fork's order (later ones overwrite or accumulate)."""
        ft = swap.dtype.type
        box = np.arange(4) * hw
        for k, (b, t, _) in enumerate(entries):
            q = int(idx[k])
            if self.kind == MSE or not self.accumulate:
                diff[q + box] = deltas[k]
            else:
                diff[q + box] = diff[q + box] + deltas[k]
            s = swap[q + 4 * hw]
            scale = self.object_scale.astype(ft) if self.logic else ft(1)
            diff[q + 4 * hw] = ft(-1) * (ft(1) - s) * scale
            self._class_delta(swap, diff, q + 5 * hw, int(truths[b, t, 0]), hw)

    def _class_delta(self, swap: np.ndarray, diff: np.ndarray, at: int, label: int, hw: int) -> None:
        """``delta_region_class_v3`` at flat index ``at`` (the box's first class channel)."""
        ft = swap.dtype.type
        scale = self.class_scale.astype(ft)
        hit = at + hw * label
        self.check_index(hit, swap.size, f"class label {label}")
        if diff[hit]:  # the truth's class already has a diff: only it is rewritten
            y = self._smooth(np.ones(1, ft))[0]
            r = y - swap[hit]
            if np.isfinite(r):
                diff[hit] = ft(-1) * scale * r
            return
        c = at + hw * np.arange(self.classes)
        p = swap[c]
        onehot = (np.arange(self.classes) == label).astype(ft)
        if self.focal:
            pt = swap[hit] + ft(1e-15)
            grad = -(ft(1) - pt) * (ft(2) * pt * np.log(pt) + pt - ft(1))
            diff[c] = (ft(-1) * scale * (onehot - p)) * (ft(0.5) * grad)
            return
        r = self._smooth(onehot) - p
        diff[c] = np.where(np.isfinite(r), ft(-1) * scale * r, diff[c])

    def _smooth(self, y: np.ndarray) -> np.ndarray:
        """``y * (1 - eps) + 0.5 * eps`` (the double literal makes the sum double) when eps is nonzero."""
        if not self.eps:
            return y
        ft = y.dtype.type
        return ((y * (ft(1) - self.eps.astype(ft))).astype(F64) + 0.5 * F64(self.eps)).astype(ft)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(152)
        text = ('name: "loss" type: "Yolov3" bottom: "x" bottom: "label" top: "loss" yolov3_param {{ num_class: 3 '
                'num: 2 anchors_scale: 8 biases: 6 biases: 8 biases: 10 biases: 14 biases: 23 biases: 27 '
                'biases: 37 biases: 58 mask: 2 mask: 3 {} }}')
        label = np.zeros((2, 1, MAX_TRUTHS, 5))
        label[0, 0, :3] = [[1, 0.3, 0.4, 0.4, 0.5], [2, 0.8, 0.6, 0.9, 0.7], [0, 0.31, 0.42, 0.5, 0.6]]
        label[1, 0, :1] = [[0, 0.55, 0.2, 0.6, 0.8]]
        # Where the fork's diff is not the gradient of its loss (the objectness term s^2 has derivative
        # 2 s s', the fork passes s; the IoU kinds drop the box terms from the loss), a gradient check
        # cannot hold, so the first two examples check the forward only. The third is a configuration
        # where the two agree: MSE with use_logic_gradient, every scale 1/2 (coord_scale * (2 - w*h) =
        # 1/2 for truths of area 0.63, one per box) and thresh < 0 (no objectness term off the truths).
        same = np.zeros((2, 1, MAX_TRUTHS, 5))
        same[0, 0, :2] = [[1, 0.3, 0.4, 0.7, 0.9], [2, 0.8, 0.6, 0.9, 0.7]]
        same[1, 0, :1] = [[0, 0.55, 0.2, 0.84, 0.75]]
        half = 'iou_loss: MSE use_logic_gradient: true object_scale: 0.5 class_scale: 0.5 thresh: -1 '
        return [Example(text.format('iou_loss: GIOU thresh: 0.5 iou_thresh: 0.2'),
                        [r.standard_normal((2, 16, 3, 4)), label], grad_bottoms=()),
                Example(text.format('iou_loss: CIOU use_focal_loss: true use_logic_gradient: true accumulate: false '
                                    'max_delta: 0.3 label_smooth_eps: 0'),
                        [r.standard_normal((2, 16, 3, 4)), label], grad_bottoms=()),
                Example(text.format(half + f'coord_scale: {0.5 / 1.37!r}'), [r.standard_normal((2, 16, 3, 4)), same])]
