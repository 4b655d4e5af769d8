"""MobileNet-YOLO's YOLOv2 training loss ``RegionLoss``, and what the fork's YOLO losses share: the label
bottom, the fixed diff as the backward, the box overlap.

Lineage and source files: eric612/MobileNet-YOLO @ 69b4441c, ``src/caffe/layers/region_loss_layer.cpp``
and ``include/caffe/layers/region_loss_layer.hpp`` (no ``.cu``: on a GPU the fork runs this CPU code).

The label bottom is AnnotatedData's ``annotated_data_param { yolo_data_type: 1 }`` top: N x 1 x 300 x 5,
per image 300 rows ``[class, x, y, w, h]`` (class = group label - 1; centre and size normalized to the
image), zero rows after its last box. The fork reads it with a stride of 1500 values per image.

Like the fork, the layers compute the loss and a diff in one pass on the host (the fork's Forward_gpu,
where there is one, calls Forward_cpu too); the backward is that diff times ``top_diff / N``
(:class:`ForkDiff`), not the derivative of the loss, which it is not in general.

Intel Caffe's ``RegionLoss`` (its YOLOv2 nets, ``models/intel_optimized_models/yolo/yolov2_*.prototxt``): intel/caffe
@ 44d536385dc41804a673c527b4c2df2675770dff, ``src/caffe/layers/region_loss_layer.cpp`` and its header (CPU only),
copied from choasup/caffe-yolo9000's (@ e8a476c, the same loop; YOLO9000's ``softmax_tree``, the classification-only
truths and the logged statistics: :mod:`neocaffe.layers._yolo9000_region`, whose code this form runs).
Same type name and ``region_loss_param`` fields; no field tells the two apart, the label bottom does: Intel's reads
SSD's AnnotatedData label, 1 x 1 x K x 8 (:func:`ssd_label`), which MobileNet-YOLO's cannot read, so a layer set up
with that label computes Intel's loss. Same as MobileNet-YOLO's: the channel layout (Intel reorders to channel-last
and back), sigmoid objectness, softmax classes, the predicted boxes, the ``noobject_scale`` diff zeroed above
``thresh``, the anchor match (``bias_match``, first best, flat index 0 when none overlaps), the later truth
overwriting, the class diff, the backward ``diff * top_diff / N``. Differences, all Intel's code followed:

1. Label: rows ``[item, label, instance, xmin, ymin, xmax, ymax, difficult]``, item -1 skipped, class ``label - 1``,
   centre ``(min + max) / 2.`` and size ``max - min``; every truth of an image counts (MobileNet-YOLO stops at the
   first zero x for the best IoU, the first zero w for the deltas). An item outside the batch is refused (Intel
   indexes past its vector).
2. Grid: ``side`` is read and must equal the bottom's H and W (Intel loops over ``side`` cells a side).
3. Box deltas: scale ``coord_scale`` alone (no ``2 - w*h``, ``rescore`` is not read) and the gaps ``t - sigmoid(x)``,
   ``t - x`` clipped to [-1, 1] (a Huber-like delta: ``-scale * clip(gap) * s'(x)`` for x, y, ``-scale * clip(gap)``
   for w, h).
4. Assigned objectness: ``-object_scale * 2 * (1 - s)^3 * s * (1 - s)`` (``pow`` in double), not ``-object_scale *
   (iou or 1 - s) * s * (1 - s)``.
5. ``class_map`` is applied: the file (read at setup, path as written) maps class k to blob position line k.
6. Top: ``sum(diff^2)`` summed in float in N x C x H x W order, not divided by N (MobileNet-YOLO: ``/ N``).
7. ``exp``/``log``/``sigmoid`` in double (Intel's unqualified calls on a float read as C's double functions),
   rounded to the blob type; MobileNet-YOLO's port keeps them in float.
8. No warm-up term: Intel's prior-matching delta for the first ``12800 / N`` iterations is commented out (its global
   ``iter`` is counted and read nowhere), as is any rescore; ``jitter``, ``absolute``, ``random``, ``softmax`` are
   not read. ``softmax_tree`` (YOLO9000's hierarchical softmax) is read: :mod:`neocaffe.layers._yolo9000_region`;
   ``biases`` need ``2 * num`` values.
Deviations: a float64 blob computes in double throughout (Intel's double build keeps ``float`` intermediates: the
scales, the IoUs, the targets); a truth whose centre falls outside the grid is refused (Intel writes into another
cell's or image's channels), as for MobileNet-YOLO's.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._intel_region import best_over_truths, box_iou, inter_union, logistic64, read_class_map, ssd_label
from neocaffe.layers._yolo9000_region import intel_forward
from neocaffe.layers._yolo9000_tree import read_tree, tree_softmax
from neocaffe.layers.base import Example, Shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer

MAX_TRUTHS = 300  # rows per image in the fork's YOLO label
F64 = np.float64


class ForkDiff(torch.autograd.Function):
    """A loss whose bottom diff the fork computed in Forward: backward = ``diff * (top_diff / N)``."""

    @staticmethod
    def forward(ctx, x: Tensor, loss: Tensor, diff: Tensor):  # type: ignore[override]
        ctx.save_for_backward(diff)
        return loss.clone()

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        return diff * (g / diff.shape[0]), None, None


def host_array(t: Tensor) -> np.ndarray:
    """A bottom's values on the host, float64 for a float64 blob and float32 otherwise."""
    ft = np.float64 if t.dtype == torch.float64 else np.float32
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(ft))


def prefix(flags: np.ndarray) -> np.ndarray:
    """The rows before the first False of the last axis (the fork's ``break`` at a zero entry)."""
    return np.cumprod(flags, axis=-1).astype(bool)


def logistic(v: np.ndarray) -> np.ndarray:
    """``logistic_activate`` / ``sigmoid``: ``1. / (1. + exp(-x))`` in double, stored in the data type."""
    return (1.0 / (1.0 + np.exp(-v).astype(F64))).astype(v.dtype)


class YoloLossLayer(_LossLayer):
    """The fork's YOLO losses: bottoms (prediction N x C x H x W, label), a scalar top."""

    allow_in_place = False
    #: Caffe's LossLayer::Reshape check (Yolov3 calls it; RegionLoss's Reshape does not)
    same_first_dim = True

    def channels(self) -> int:
        raise NotImplementedError

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, label = bottom_shapes
        if len(x) != 4 or x[1] != self.channels():
            raise self.error(f"bottom 0 must be N x {self.channels()} x H x W (num * (coords + num_class + 1) "
                             f"channels); received {tuple(x)}")
        if math.prod(label) != x[0] * MAX_TRUTHS * 5:
            raise self.error(f"bottom 1 must be the YOLO label of AnnotatedData with yolo_data_type: 1, "
                             f"{x[0]} x 1 x {MAX_TRUTHS} x 5; received {tuple(label)}")
        return super().reshape(bottom_shapes) if self.same_first_dim else [()]

    def finish(self, x: Tensor, loss: float, diff: np.ndarray) -> Tensor:
        """The top, carrying the fork's diff as its backward."""
        t_loss = torch.tensor(loss, dtype=x.dtype, device=x.device)
        t_diff = torch.from_numpy(diff.reshape(x.shape)).to(device=x.device, dtype=x.dtype)
        return ForkDiff.apply(x, t_loss, t_diff)

    def cell_of(self, tx: np.floating, ty: np.floating, w: int, h: int) -> tuple[int, int]:
        """The grid cell ``(int(x * W), int(y * H))`` of a truth's centre; refused outside the grid, where
        the fork writes into other cells' channels or outside its blob."""
        i, j = int(tx * type(tx)(w)), int(ty * type(ty)(h))
        if not (0 <= i < w and 0 <= j < h):
            raise self.error(f"a truth's centre ({tx}, {ty}) lies outside the {h} x {w} grid (cell column {i}, "
                             f"row {j}); expected label centres in [0, 1)")
        return i, j

    def check_index(self, idx: int, total: int, what: str) -> None:
        """Refuse a flat index outside the blob (where the fork reads and writes out of bounds)."""
        if not 0 <= idx < total:
            raise self.error(f"{what} maps to flat index {idx}, outside the bottom's {total} values")


@register_layer("RegionLoss")
class RegionLoss(YoloLossLayer):
    """YOLOv2's region loss. ``region_loss_param``: ``num`` boxes of ``coords + num_class + 1`` channels
    (``tx ty tw th to c_1..c_n``, box k in channels ``k*len ..``) per cell of a square S x S grid (S =
    the bottom's width), ``biases`` (anchor w, h in cells), ``bias_match``, ``rescore``,
    ``object_scale``, ``noobject_scale``, ``class_scale``, ``coord_scale``, ``thresh``.

    Per box: ``s = sigmoid(to)``, class probabilities ``p = softmax(c)``, box ``((i + sigmoid(tx)) / S,
    (j + sigmoid(ty)) / S, exp(tw) * bw / S, exp(th) * bh / S)``. Objectness diff
    ``noobject_scale * s * (1 - s) * s``, 0 where the best IoU with a truth is above ``thresh``. Each truth
    (in label order; a later one overwrites) picks in its cell the box whose anchor (or, with
    ``bias_match: 0``, whose prediction) centred at 0 overlaps it most (none: flat index 0 of the blob,
    as the fork), with diffs ``-scale * (t - sigmoid(x)) * sigmoid'(x)`` for x, y, ``-scale * (t - x)`` for
    w, h (scale ``coord_scale``, times ``2 - w*h`` without rescore), ``-object_scale * (iou or 1 - s) *
    s * (1 - s)`` and ``-class_scale * (onehot - p)``. Loss ``sum(diff^2) / N``; backward ``diff *
    top_diff / N``.

    Read but unused by the fork, and so here: ``side``, ``softmax`` (always a softmax), ``jitter``,
    ``absolute``, ``random`` (nothing random happens in the layer; multi-scale training is the data
    layer's resize_param), ``softmax_tree``, ``class_map`` (the fork loads it into a map it never reads).
    Refused: ``coords`` other than 4 (the fork hard-codes channels 4 and 5 as objectness and first class),
    fewer than 10 ``biases`` (the fork replaces them with zeros: infinite box targets), a non-square grid.

    With SSD's label (1 x 1 x K x 8, :func:`ssd_label`) the layer is Intel Caffe's: see the module docstring.
    """

    same_first_dim = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.region_loss_param
        self.classes, self.num = int(p.num_class), int(p.num)
        #: Intel Caffe's RegionLoss (it reads SSD's label); else MobileNet-YOLO's
        self.intel = ssd_label(tuple(bottom_shapes[1]))
        if p.coords != 4:
            raise self.error(f"region_loss_param.coords = {p.coords} is not supported: the fork reads channel 4 "
                             "as the objectness and 5.. as the classes whatever coords says; expected 4")
        if self.num < 1:
            raise self.error(f"region_loss_param.num must be at least 1; received {self.num}")
        biases = list(p.biases)
        need, rule, why = ((2 * self.num, "2 * num", "Intel Caffe reads an anchor pair per box") if self.intel else
                           (max(10, 2 * self.num), "max(10, 2 * num)", "fewer than 10 the fork replaces with zeros"))
        if len(biases) < need:
            raise self.error(f"region_loss_param.biases needs at least {rule} = {need} values ({why}); "
                             f"received {len(biases)}")
        self.biases = np.asarray(biases, np.float32)
        self.bias_match, self.rescore = bool(p.bias_match), bool(p.rescore)
        self.scales = {k: np.float32(getattr(p, f"{k}_scale")) for k in ("object", "noobject", "class", "coord")}
        self.thresh = np.float32(p.thresh)
        self.side = int(p.side)
        self.class_map = read_class_map(p.class_map) if self.intel and p.class_map else None
        #: YOLO9000's WordTree (SSD's label only; MobileNet-YOLO's form reads the field and nothing else)
        self.softmax_tree, self.tree = str(p.softmax_tree), None
        if self.intel and self.softmax_tree:
            self.tree = read_tree(self.softmax_tree, self.error)
            if self.tree.n > self.classes:
                raise self.error(f"region_loss_param.softmax_tree {self.softmax_tree!r} has {self.tree.n} nodes, more "
                                 f"than num_class = {self.classes} (the fork's group softmax would run into the next "
                                 "box's channels); expected at most num_class")
        self.iterations, self.stats = 0, {}

    def channels(self) -> int:
        return self.num * (5 + self.classes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if not self.intel:
            out = super().reshape(bottom_shapes)
            if bottom_shapes[0][2] != bottom_shapes[0][3]:
                raise self.error(f"the fork takes the grid side from the width for both axes; bottom 0 must be "
                                 f"square; received {tuple(bottom_shapes[0])}")
            return out
        x, label = (tuple(s) for s in bottom_shapes)
        if len(x) != 4 or x[1] != self.channels() or x[2] != self.side or x[3] != self.side:
            raise self.error(f"bottom 0 must be N x {self.channels()} x {self.side} x {self.side} (num * (coords + "
                             f"num_class + 1) channels, region_loss_param.side = {self.side} cells a side, which Intel "
                             f"Caffe's RegionLoss loops over); received {x}")
        if not ssd_label(label):
            raise self.error(f"bottom 1 must stay SSD's detection label, 1 x 1 x K x 8 (the layer was set up with one: "
                             f"Intel Caffe's RegionLoss); received {label}")
        return [()]

    def exp(self, v: np.ndarray) -> np.ndarray:
        """``exp`` as the fork's arithmetic has it: float for MobileNet-YOLO, C's double ``exp`` for Intel."""
        return np.exp(v.astype(F64)) if self.intel else np.exp(v)

    def activate(self, a: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Both forks' activations: the bottom as N x num x len x S*S, the copy with sigmoid objectness and softmax
        classes, and every box's prediction (x, y, w, h)."""
        ft = a.dtype.type
        n, _, side, _ = a.shape
        stride, length = side * side, 5 + self.classes
        sigmoid = logistic64 if self.intel else logistic
        v = a.reshape(n, self.num, length, stride)
        swap = v.copy()
        swap[:, :, 4] = sigmoid(v[:, :, 4])
        if self.tree is not None:
            swap[:, :, 5:] = tree_softmax(v[:, :, 5:], self.tree, self.exp)
        else:
            e = self.exp(v[:, :, 5:] - v[:, :, 5:].max(axis=2, keepdims=True)).astype(ft)
            swap[:, :, 5:] = e / e.sum(axis=2, keepdims=True)
        cell = np.arange(stride)
        sig = sigmoid(v[:, :, :2])
        k = np.arange(self.num)[:, None]
        pred = (((cell % side).astype(ft) + sig[:, :, 0]) / ft(side), ((cell // side).astype(ft) + sig[:, :, 1]) / ft(side),
                (self.exp(v[:, :, 2]) * bias[k, 0] / side).astype(ft), (self.exp(v[:, :, 3]) * bias[k, 1] / side).astype(ft))
        return v, swap, pred

    def forward(self, x: Tensor, label: Tensor) -> Tensor:  # type: ignore[override]
        a = host_array(x)
        ft = a.dtype.type
        n, _, side, _ = a.shape
        bias = self.biases[: 2 * self.num].astype(ft).reshape(-1, 2)
        with np.errstate(all="ignore"):
            v, swap, pred = self.activate(a, bias)
            if self.intel:
                return intel_forward(self, x, v, swap, pred, host_array(label).astype(ft), bias)
            truths = host_array(label).astype(ft).reshape(n, MAX_TRUTHS, 5)
            count = int(prefix(truths[:, :, 1] != 0).sum(1).max(initial=0))
            t = truths[:, None, None, :count]
            iou = box_iou(tuple(c[..., None] for c in pred), (t[..., 1], t[..., 2], t[..., 3], t[..., 4]))
            best = best_over_truths(iou, prefix(truths[:, :count, 1] != 0)[:, None, None])
            s = swap[:, :, 4]
            diff = np.zeros_like(v)
            noobj = (ft(-1) * self.scales["noobject"].astype(ft)) * (ft(0) - s) * ((ft(1) - s) * s)
            diff[:, :, 4] = np.where(best > self.thresh, ft(0), noobj)
            self._truth_deltas(swap.reshape(-1), diff.reshape(-1), truths, side, bias)
        loss = ft((diff.astype(F64) ** 2).sum()) / ft(n)
        return self.finish(x, float(loss), diff)

    def best_anchor(self, swap: np.ndarray, idx2: np.ndarray, bias: np.ndarray, tw, th, side: int) -> tuple[int, int]:
        """Both forks' anchor match in a truth's cell (flat indices ``idx2`` of its boxes): the first box whose anchor
        (``bias_match``) or predicted size, centred at 0, overlaps the truth's most; (0, 0) where none overlaps."""
        ft, fs, stride = swap.dtype.type, swap.dtype.type(side), side * side
        if self.bias_match:
            pw, ph = bias[:, 0] / fs, bias[:, 1] / fs
        else:
            pw = (self.exp(swap[idx2 + 2 * stride]) * bias[:, 0] / side).astype(ft)
            ph = (self.exp(swap[idx2 + 3 * stride]) * bias[:, 1] / side).astype(ft)
        zero = np.zeros(self.num, ft)
        ious = box_iou((zero, zero, pw, ph), (ft(0), ft(0), tw, th))
        best_n, best_index, best_iou = 0, 0, ft(0)
        for q in range(self.num):
            if ious[q] > best_iou:
                best_n, best_index, best_iou = q, int(idx2[q]), ious[q]
        return best_n, best_index

    def _truth_deltas(self, swap: np.ndarray, diff: np.ndarray, truths: np.ndarray, side: int, bias: np.ndarray) -> None:
        """The fork's loop over each image's truths, in label order, writing ``diff`` (flat) in place."""
        ft = swap.dtype.type
        n = truths.shape[0]
        stride, length = side * side, 5 + self.classes
        per_image = self.num * length * stride
        valid = prefix(truths[:, :, 3] != 0)
        sc = {k: ft(v) for k, v in self.scales.items()}
        fs = ft(side)
        cls_off = np.arange(self.classes) * stride
        for b in range(n):
            for row in truths[b][valid[b]]:
                label, tx, ty, tw, th = row
                i, j = self.cell_of(tx, ty, side, side)
                pos = j * side + i
                idx2 = np.arange(self.num) * length * stride + pos + b * per_image
                best_n, bi = self.best_anchor(swap, idx2, bias, tw, th, side)
                scale = sc["coord"] if self.rescore else sc["coord"] * (ft(2) - tw * th)
                raw = swap[bi + np.arange(4) * stride]
                sg = logistic(raw[:2])
                box = ((ft(i) + sg[0]) / fs, (ft(j) + sg[1]) / fs, np.exp(raw[2]) * bias[best_n, 0] / fs,
                       np.exp(raw[3]) * bias[best_n, 1] / fs)
                iou = box_iou(box, (tx, ty, tw, th))
                target = np.array([tx * fs - ft(i), ty * fs - ft(j), np.log(tw * fs / bias[best_n, 0]),
                                   np.log(th * fs / bias[best_n, 1])], ft)
                diff[bi + np.arange(2) * stride] = ft(-1) * scale * (target[:2] - sg) * sg * (ft(1) - sg)
                diff[bi + np.arange(2, 4) * stride] = ft(-1) * scale * (target[2:] - raw[2:])
                s = swap[bi + 4 * stride]
                goal = iou if self.rescore else ft(1)
                diff[bi + 4 * stride] = ft(-1.0 * F64(sc["object"]) * F64(goal - s) * F64((ft(1) - s) * s))
                onehot = (np.arange(self.classes) == int(label)).astype(ft)
                c = bi + 5 * stride + cls_off
                diff[c] = (F64(-1.0) * F64(sc["class"]) * (onehot - swap[c]).astype(F64)).astype(ft)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(151)
        text = ('name: "loss" type: "RegionLoss" bottom: "x" bottom: "label" top: "loss" region_loss_param {{ '
                'num_class: 3 coords: 4 num: 2 object_scale: 5 noobject_scale: 1 class_scale: 1 coord_scale: 1 '
                'thresh: {} rescore: {} biases: 1.1 biases: 1.4 biases: 3.2 biases: 2.5 biases: 0.5 biases: 0.6 '
                'biases: 2 biases: 2 biases: 1 biases: 1 side: 3 }}')
        label = np.zeros((2, 1, MAX_TRUTHS, 5))
        label[0, 0, :2] = [[1, 0.3, 0.4, 0.2, 0.3], [2, 0.8, 0.6, 0.5, 0.4]]
        label[1, 0, 0] = [0, 0.55, 0.2, 0.6, 0.3]
        ssd = np.array([[[[0, 2, 0, 0.2, 0.25, 0.4, 0.55, 0], [1, 3, 0, 0.25, 0.05, 0.85, 0.35, 0],
                          [0, 3, 1, 0.55, 0.4, 1.0, 0.8, 0]]]])
        # The fork's diff is not the gradient of its loss sum(diff^2) / N (e.g. the objectness diff
        # s^2 (1 - s) has derivative terms the fork drops), so a gradient check cannot hold where the
        # loss has a truth or a live objectness term: the first two examples (and Intel's, SSD's label, the
        # fourth) check the forward only. The third has no truth and thresh < 0 (every objectness diff is
        # zeroed): the loss is 0 near the input, the fork's diff is 0, and the check runs the backward
        # (shape, device, dtype); the fifth is the same for Intel's (SSD's "no box" row of -1).
        return [Example(text.format(0.6, 1), [r.standard_normal((2, 16, 3, 3)), label], grad_bottoms=()),
                Example(text.format(0.3, 0), [r.standard_normal((2, 16, 3, 3)), label], grad_bottoms=()),
                Example(text.format(-1, 1), [r.standard_normal((2, 16, 3, 3)), np.zeros((2, 1, MAX_TRUTHS, 5))],
                        grad_bottoms=(0,)),
                Example(text.format(0.6, 1), [r.standard_normal((2, 16, 3, 3)), ssd], grad_bottoms=()),
                Example(text.format(-1, 1), [r.standard_normal((2, 16, 3, 3)), -np.ones((1, 1, 1, 8))],
                        grad_bottoms=(0,))]


__all__ = ["F64", "MAX_TRUTHS", "ForkDiff", "RegionLoss", "YoloLossLayer", "best_over_truths", "box_iou", "host_array",
           "inter_union", "logistic", "prefix"]
