"""MobileNet-YOLO's Gaussian YOLOv3 training loss ``GaussianYolov3`` (jwchoi384's Gaussian_YOLOv3 loss in
the fork's Yolov3 layer).

Lineage and source files: eric612/MobileNet-YOLO @ 69b4441c, ``src/caffe/layers/gaussian_yolov3_layer.{cpp,cu}``
(``delta_region_gaussian_box``, ``delta_region_gaussian_class_v3``) with ``get_gaussian_yolo_box`` and
``box_iou`` of ``src/caffe/util/bbox_util.cpp``; the anchor matching, label bottom and backward are
:mod:`neocaffe.layers.yolov3_loss`'s and :mod:`neocaffe.layers.region_loss`'s.

CPU and GPU paths: for this loss they agree. Both take the logistic of every channel but tw and th (the
fork's Forward_gpu with ``caffe_gpu_logistic_activate`` over channels 0-3, 5, 7, 8.., then Forward_cpu; the CPU
formula in CPU_ONLY builds), then run the same host loops; as for Yolov3 we follow the CPU formula. (The
fork's ``Yolov3DetectionOutput`` with ``gaussian_box``, whose CPU and CUDA paths do disagree, stays refused.)
"""
from __future__ import annotations

import numpy as np
from torch import Tensor

from neocaffe.layers.base import Example, Shape
from neocaffe.layers.region_loss import MAX_TRUTHS, best_over_truths, box_iou, host_array, logistic, prefix
from neocaffe.layers.registry import register_layer
from neocaffe.layers.yolov3_loss import FLT_MAX, IOU, Yolov3Loss

_SQRT_2PI = np.sqrt(np.pi * 2.0)


@register_layer("GaussianYolov3")
class GaussianYolov3(Yolov3Loss):
    """Gaussian YOLOv3's loss for one scale. ``yolov3_param`` as Yolov3's, with ``9 + num_class`` channels per
    box: ``tx, sx, ty, sy, tw, sw, th, sh, to, c_1..c_n`` (a mean and a sigma per coordinate). Read and
    unused: ``iou_loss`` (every overlap is the plain IoU), ``label_smooth_eps``, ``side``, ``noobject_scale``.

    Activations: sigmoid on every channel but tw, th. Objectness diff ``s``, 0 where the box's best IoU with a
    truth is above ``thresh`` (above 1, which only rounding allows, the fork also trains that box on its best
    truth: objectness ``-(1 - s)``, class and box diffs, as below). Each truth picks its anchors as Yolov3's
    (the fork's mask-slot quirk included) and gives its box: per coordinate, with ``t`` the target (``x*W - i``,
    ``y*H - j``, ``log(w * net_w / anchor_w)``, ...), mean ``m`` and sigma ``q``, ``e = (t - m) / q``,
    ``N = exp(-e^2 / 2) / (sqrt(2 pi) (q + 0.3))``, ``T = 0.5 / (N + 1e-9) * N * scale`` (``scale =
    coord_scale * (2 - w*h)``): mean diff ``-T * e / q``, sigma diff ``-T * (e^2 / q - 1 / (q + 0.3))``, each
    times ``iou_normalizer``, NaN/inf to 0, clipped to ``max_delta``, set (or with ``accumulate`` added);
    objectness ``-(1 - s)`` (times ``object_scale`` with ``use_logic_gradient``); class diffs ``-class_scale *
    (onehot - p)`` (focal form with ``use_focal_loss``), or, where the box's first class already has a diff,
    only the truth's class, ``-(1 - p)``. Loss: ``(sum of the objectness and class diff^2 + iou_normalizer *
    mean(1 - IoU)) / N`` over the assigned boxes, summed in float in the fork's order; the box diffs are not
    in the loss. Backward: ``diff * top_diff / N``; with ``use_logic_gradient`` the diff of every channel but
    tw, th is first multiplied by ``(1 - v) v``, where v is the sigmoid for the objectness and classes but
    the *raw* input for the eight box channels (the fork has put the raw values back in its buffer)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        super().setup(bottom_shapes)
        self.kind = IOU   # the fork's box_iou(pred, truth) without a kind, everywhere

    def channels(self) -> int:
        return self.num * (9 + self.classes)

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        a = host_array(x)
        ft = a.dtype.type
        n, _, h, w = a.shape
        hw, length = h * w, 9 + self.classes
        truths = host_array(label).astype(ft).reshape(n, MAX_TRUTHS, 5)
        net = (ft(w * self.anchors_scale), ft(h * self.anchors_scale))
        with np.errstate(all="ignore"):
            v = a.reshape(n, self.num, length, hw)
            swap = logistic(v)
            swap[:, :, [4, 6]] = v[:, :, [4, 6]]
            cell = np.arange(hw)
            mine = self.anchors.astype(ft)[self.mask[: self.num]][:, :, None]
            pred = (((cell % w).astype(ft) + swap[:, :, 0]) / ft(w), ((cell // w).astype(ft) + swap[:, :, 2]) / ft(h),
                    np.exp(swap[:, :, 4]) * mine[:, 0] / net[0], np.exp(swap[:, :, 6]) * mine[:, 1] / net[1])
            count = int(prefix(truths[:, :, 1] != 0).sum(1).max(initial=0))
            t = truths[:, None, None, :count]
            iou = box_iou(tuple(c[..., None] for c in pred), (t[..., 1], t[..., 2], t[..., 3], t[..., 4]))
            valid = prefix(truths[:, :count, 1] != 0)[:, None, None]
            best = best_over_truths(iou, valid)
            diff = np.zeros_like(v)
            diff[:, :, 8] = np.where(best > self.thresh, ft(0), swap[:, :, 8])
            entries = self._rare_entries(iou, valid, best, w) + [
                (b, t_, k, False) for b, t_, k in self._assignments(truths, self.anchors.astype(ft) / np.array(net, ft))]
            lost, assigned = self._write_entries(swap.reshape(-1), diff.reshape(-1), truths, entries, (h, w), net)
            loss = self._loss(diff, lost, assigned)
            swap[:, :, :8] = v[:, :, :8]  # the fork's loss loop puts the raw box channels back in its buffer
            if self.logic:
                keep = np.ones(length, bool)
                keep[[4, 6]] = False
                diff[:, :, keep] = diff[:, :, keep] * ((ft(1) - swap[:, :, keep]) * swap[:, :, keep])
        return self.finish(x, float(loss / ft(n)), diff)

    def _rare_entries(self, iou: np.ndarray, valid: np.ndarray, best: np.ndarray, w: int) -> list:
        """The boxes whose best IoU is above 1 (the fork's "best_iou > 1" branch), in its (image, cell, box)
        order, each with the first truth of that best IoU: (image, truth row, (slot, cell), True)."""
        out = []
        for b, k, s in sorted(zip(*np.nonzero(best > 1)), key=lambda e: (e[0], e[2], e[1])):
            first = int(np.flatnonzero(valid[b, 0, 0] & (iou[b, k, s] == best[b, k, s]))[0])
            out.append((int(b), first, (int(k), int(s)), True))
        return out

    def _loss(self, diff: np.ndarray, lost: np.floating, assigned: int) -> np.floating:
        """``loss += diff^2`` over the objectness and class channels in the fork's (image, cell, box, channel)
        order, in the data type, then ``+= iou_normalizer * sum(1 - iou) / count``."""
        ft = diff.dtype.type
        sq = (diff[:, :, 8:] * diff[:, :, 8:]).transpose(0, 3, 1, 2).reshape(-1)
        loss = np.add.accumulate(sq, dtype=sq.dtype)[-1] if sq.size else ft(0)
        if assigned:
            loss = loss + self.iou_normalizer.astype(ft) * lost / ft(assigned)
        return loss

    def _write_entries(self, swap: np.ndarray, diff: np.ndarray, truths: np.ndarray, entries: list, hw_: tuple[int, int],
               net: tuple) -> tuple[np.floating, int]:
        """Every assignment's diffs in the fork's order; returns (sum of ``1 - iou``, number of assignments)."""
        ft = swap.dtype.type
        h, w = hw_
        hw, length = h * w, 9 + self.classes
        lost, assigned = ft(0), 0
        for b, t, where, rare in entries:
            tr = truths[b, t]
            if rare:   # the box's own cell and anchor slot
                slot, s = where
                i, j = s % w, s // w
            else:
                slot = where
                i, j = self.cell_of(tr[1], tr[2], w, h)
            q = b * self.num * length * hw + slot * length * hw + j * w + i
            anchor = self.anchors.astype(ft)[self.mask[slot]]
            deltas, iou = self._box_delta(swap, q, hw, tr[1:5], (i, j), (w, h), net, anchor)
            box = q + np.arange(8) * hw
            if not self.accumulate:
                diff[box] = ft(0)
            diff[box] = diff[box] + deltas
            s_obj = swap[q + 8 * hw]
            if rare:
                diff[q + 8 * hw] = ft(-1) * (ft(1) - s_obj)
            else:
                lost, assigned = lost + (ft(1) - iou), assigned + 1
                diff[q + 8 * hw] = ft(-1) * (ft(1) - s_obj) * (self.object_scale.astype(ft) if self.logic else ft(1))
            self._gaussian_class_delta(swap, diff, q + 9 * hw, int(tr[0]), hw)
        return lost, assigned

    def _box_delta(self, swap: np.ndarray, q: int, hw: int, truth: np.ndarray, cell: tuple[int, int],
                   grid: tuple[int, int], net: tuple, anchor: np.ndarray) -> tuple[np.ndarray, np.floating]:
        """``delta_region_gaussian_box`` at flat index ``q``: the 8 diffs to add (means at 0, 2, 4, 6, sigmas at
        1, 3, 5, 7, already negated) and the box's IoU with the truth."""
        ft = swap.dtype.type
        f64 = np.float64
        (i, j), (w, h) = cell, grid
        x = swap[q + np.arange(8) * hw]
        pred = ((ft(i) + x[0]) / ft(w), (ft(j) + x[2]) / ft(h), np.exp(x[4]) * anchor[0] / net[0],
                np.exp(x[6]) * anchor[1] / net[1])
        iou = box_iou(pred, tuple(truth))
        target = np.array([truth[0] * ft(w) - ft(i), truth[1] * ft(h) - ft(j),
                           np.log(truth[2] * net[0] / anchor[0]), np.log(truth[3] * net[1] / anchor[1])], ft)
        scale = (self.coord_scale.astype(ft) * (ft(2) - truth[2] * truth[3])).astype(np.float32)
        mean, sigma = x[0::2], x[1::2]
        sigma_const, epsi = ft(0.3), ft(1e-9)  # Dtype(pow(10, -9))
        e = (target - mean) / sigma
        e2 = (e * e).astype(ft)
        nd = (np.exp(e2.astype(f64) * (-1. / 2.)) / (_SQRT_2PI * (sigma + sigma_const).astype(f64))).astype(ft)
        temp = (f64(0.5) / (nd + epsi).astype(f64) * nd.astype(f64) * f64(scale)).astype(ft)
        d_mean = ((temp * e).astype(f64) * (1. / sigma.astype(f64))).astype(ft)
        d_sigma = (temp.astype(f64) * ((e2 / sigma).astype(f64) - 1. / (sigma + sigma_const).astype(f64))).astype(ft)
        out = np.zeros(8, ft)
        for at, d in ((0, d_mean), (1, d_sigma)):
            d = (d * self.iou_normalizer.astype(ft)).astype(ft)
            d = np.where(np.isfinite(d), d, ft(0))
            if self.max_delta != FLT_MAX:
                m = self.max_delta.astype(ft)
                d = np.where(d > m, m, np.where(d < -m, -m, d))
            out[at::2] = -d
        return out, iou

    def _gaussian_class_delta(self, swap: np.ndarray, diff: np.ndarray, at: int, label: int, hw: int) -> None:
        """``delta_region_gaussian_class_v3`` at flat index ``at`` (the box's first class channel)."""
        ft = swap.dtype.type
        hit = at + hw * label
        self.check_index(hit, swap.size, f"class label {label}")
        if diff[at]:   # the fork tests the first class's diff, whatever the label
            diff[hit] = ft(-1) * (ft(1) - swap[hit])
            return
        c = at + hw * np.arange(self.classes)
        onehot = (np.arange(self.classes) == label).astype(ft)
        diff[c] = (ft(-1) * self.class_scale.astype(ft)) * (onehot - swap[c])
        if self.focal:
            pt = np.float32(swap[hit]) + np.float32(1e-15)
            grad = -(np.float32(1) - pt) * (np.float32(2) * pt * np.log(pt) + pt - np.float32(1))
            diff[c] = diff[c] * ft(np.float32(0.5) * grad)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(153)
        text = ('name: "loss" type: "GaussianYolov3" bottom: "x" bottom: "label" top: "loss" yolov3_param {{ num_class: 3 '
                'num: 2 anchors_scale: 8 biases: 6 biases: 8 biases: 10 biases: 14 biases: 23 biases: 27 '
                'biases: 37 biases: 58 mask: 2 mask: 3 thresh: 0.5 iou_thresh: 0.2 {} }}')
        label = np.zeros((2, 1, MAX_TRUTHS, 5))
        label[0, 0, :3] = [[1, 0.3, 0.4, 0.4, 0.5], [2, 0.8, 0.6, 0.9, 0.7], [0, 0.31, 0.42, 0.5, 0.6]]
        label[1, 0, :1] = [[0, 0.55, 0.2, 0.6, 0.8]]
        # the fork's diff is not the gradient of its loss (the box terms are not in the loss): forward only
        return [Example(text.format(''), [r.standard_normal((2, 24, 3, 4)), label], grad_bottoms=()),
                Example(text.format('use_logic_gradient: true use_focal_loss: true accumulate: false max_delta: 0.3'),
                        [r.standard_normal((2, 24, 3, 4)), label], grad_bottoms=())]
