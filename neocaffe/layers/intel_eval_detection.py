"""Intel Caffe's ``EvalDetection``: the TEST-time detection record of its YOLOv2 nets.

Lineage: intel/caffe @ 44d536385dc41804a673c527b4c2df2675770dff (Intel Distribution of Caffe 1.1.6):
``src/caffe/layers/eval_detection_layer.cpp``, ``include/caffe/layers/eval_detection_layer.hpp``, with
``Calc_iou``/``Overlap`` of ``src/caffe/layers/region_loss_layer.cpp``; its nets are
``models/intel_optimized_models/yolo/yolov2_test*.prototxt`` and ``models/intel_optimized_models/int8/yolov2_int8*``
(bottoms ``conv_reg``, ``label`` and an unread ``data``; ``side: 17``, ``num_class: 20``, ``num_object: 5``,
``nms: 0.45``, ten VOC anchor ``biases``).

Bottoms: the YOLOv2 head (N, C, H, W) with ``count(1) == side² * num_object * (num_class + 5)``, and
AnnotatedData's ground truth (1, 1, G, 8: ``[item, label, instance, xmin, ymin, xmax, ymax, difficult]``);
more bottoms are allowed and not read. Top: (N, num_class + side² * num_object * 4).

Forward, as its ``Forward_cpu`` (it has no GPU forward and no backward):

* the head is read channel-last, ``(N, H, W, C)`` flattened, as its ``swap`` blob; entry ``(p, n, k)`` of an
  image is element ``(p * num_object + n) * (num_class + 5) + k``, cell ``p = j * side + i``;
* for every cell and the first **five** anchors (its loop bound is the literal 5, whatever ``num_object``;
  neocaffe requires ``num_object >= 5`` and ten biases, where Intel reads past the cell or the vector):
  ``x = (i + σ(t0)) / side``, ``y = (j + σ(t1)) / side``, ``w = exp(t2) * biases[2n] / side``,
  ``h = exp(t3) * biases[2n+1] / side``, a softmax over the ``num_class`` scores from ``t5``, the label its first
  maximum, the score ``σ(t4)`` (OBJ), that maximum (PROB) or their product (MULTIPLY);
* with ``nms >= 0``: the boxes sorted by descending score, class-agnostic greedy NMS (``ApplyNms``: a later box
  goes when its IoU with a kept one is ``>= nms``), and the kept boxes with score ``>= 0.005`` grouped by label
  (ascending, as its ``std::map``), best first within a label. With ``nms < 0`` (the schema's default) Intel's
  code makes **no** predictions at all (its other branch only sorts an empty map): rows stay zero;
* ground truth rows with item ``-1`` are skipped; ``label - 1`` is the class (VOC's 1..20 → 0..19), the box
  becomes centre/size; an item equal to N is dropped (its "batch + 1" fix);
* row of image b: ``[count of ground truth of class c for c in 0..num_class-1]`` then, per prediction,
  ``[label, score, tp, fp]``; a prediction of a label without ground truth is ``(0, 1)``; otherwise its best
  ground truth (first maximum of ``Calc_iou``, strictly above -1) is a true positive when the IoU is ``>=
  threshold`` and no earlier prediction of that label took it, a false positive when it was taken, and
  ``(0, 0)`` when the IoU is below ``threshold`` (Intel leaves both zero: its quirk, kept).

Float details: Dtype float. ``σ`` is its ``inline float sigmoid(float)`` computing ``1. / (1. + exp(-x))`` in
double (the unqualified ``exp`` on a float reads as C's double ``exp``), rounded to float; ``x``/``y`` are float
sums and quotients; ``w``/``h`` are ``exp(double) * bias / side`` in double, then float; the softmax's exponentials
are double ``exp`` of the float difference, rounded to float, summed in float in class order; the score threshold
compares the float score with the double 0.005; IoU is all float. Where a libm's float ``exp`` overload were picked
instead, values differ by at most a float ulp.

Deviations: Intel sorts with ``std::sort`` (not stable: the order of equal scores is the library's); neocaffe's sort
is stable (ties keep cell/anchor order). Intel's default builds (``Makefile``/``CMakeLists.txt`` set
``ENABLE_NMS_OPTIMIZATION``) run, on AVX-512 CPUs only, another NMS (``cpu_nms_avx512_parallize_inner``: corners,
suppress when ``inter > nms * union``); neocaffe runs the portable ``ApplyNms`` every machine runs otherwise (they
differ only at an IoU equal to ``nms`` and by rounding). Configurations where Intel reads or writes out of bounds
are errors naming the layer: ``num_object < 5``, fewer than ten biases, ``C`` not divisible by ``num_object``, a
ground-truth class outside ``[0, num_class)`` (its count would land in another row), an item outside ``[-1, N]``.
The top is computed in float32 whatever the input dtype and returned in the input's dtype and device.

choasup/caffe-yolo9000's form (where ``save_output_param`` is set, or the net's ``lineage`` is ``"yolo9000"``): the
same decode, ground truth and rows, with its own predictions (one box per class, NMS per class) and result file:
:mod:`neocaffe.layers._yolo9000_eval`.

Intel's solver does not read these rows (its ``TestDetection`` wants SSD's 5-column rows); ``caffe test`` and its
scripts print/average them. The layer is a metric: no backward, no ``force_backward`` diff.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._yolo9000_eval import ResultFile, class_candidates, nms_by_class
from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.registry import register_layer

_ANCHORS = 5        # the literal loop bound of Intel's GetPredBox
_MIN_SCORE = 0.005  # "from darknet": kept boxes below this are dropped (compared in double)
_F = np.float32
log = logging.getLogger("neocaffe.layers.eval_detection")


def sigmoid_f(v: np.ndarray) -> np.ndarray:
    """Intel's ``float sigmoid(float)``: double arithmetic, rounded to float."""
    return (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(_F)


def calc_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Calc_iou<float>`` of centre/size boxes, broadcast over the leading axes (``[..., 4]``)."""
    def overlap(x1, w1, x2, w2):
        left = np.maximum(x1 - w1 / _F(2), x2 - w2 / _F(2))
        right = np.minimum(x1 + w1 / _F(2), x2 + w2 / _F(2))
        return right - left
    with np.errstate(all="ignore"):
        w = overlap(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
        h = overlap(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
        union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - w * h
        iou = (w * h) / union
    return np.where((w < 0) | (h < 0), _F(0), iou).astype(_F)


@register_layer("EvalDetection")
class EvalDetection(Layer):
    """Intel Caffe's YOLOv2 detection record (module docstring): decode, NMS, match; one row per image."""

    min_bottoms = 2   # Intel's nets wire a third bottom (``data``) that the layer never reads
    takes_net = True  # the net's ``lineage`` ("yolo9000": choasup's form)
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.eval_detection_param
        self.side, self.num_class, self.num_object = int(p.side), int(p.num_class), int(p.num_object)
        self.threshold, self.nms = _F(p.threshold), _F(p.nms)
        self.biases = np.asarray(p.biases, dtype=_F)
        self.score_type = int(p.score_type)   # OBJ 0, PROB 1, MULTIPLY 2 (the enum's values)
        #: choasup/caffe-yolo9000's form (module docstring)
        try:
            self.yolo9000 = p.HasField("save_output_param") or net_lineage(self.net_so_far) == "yolo9000"
        except ValueError as e:
            raise self.error(str(e)) from None
        self.results = ResultFile(p.save_output_param, self.error) if p.HasField("save_output_param") else None
        self.warned = False   # more predictions than rows: warned once (choasup's form)
        if self.side < 1 or self.num_class < 1:
            raise self.error(f"eval_detection_param needs side >= 1 and num_class >= 1; received side {self.side}, "
                             f"num_class {self.num_class}")
        if self.num_object < _ANCHORS:
            raise self.error(f"eval_detection_param.num_object must be >= {_ANCHORS} (Intel's GetPredBox always reads "
                             f"{_ANCHORS} anchors per cell); received {self.num_object}")
        if len(self.biases) < 2 * _ANCHORS:
            raise self.error(f"eval_detection_param needs at least {2 * _ANCHORS} biases (w, h of {_ANCHORS} anchors); "
                             f"received {len(self.biases)}")

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        head, gt = bottom_shapes[0], bottom_shapes[1]
        n, c, _, _ = legacy_shape(tuple(head), self)
        want = self.side * self.side * self.num_object * (self.num_class + 5)
        if math.prod(head[1:]) != want:
            raise self.error(f"bottom 0 must hold side² * num_object * (num_class + 5) = {want} values per image "
                             f"(side {self.side}, num_object {self.num_object}, num_class {self.num_class}); "
                             f"received shape {tuple(head)}")
        if c % self.num_object:
            raise self.error(f"bottom 0's channels must be a multiple of num_object {self.num_object}; received "
                             f"shape {tuple(head)}")
        g = legacy_shape(tuple(gt), self)[2]
        if math.prod(gt) < 8 * g:
            raise self.error(f"bottom 1 (ground truth) must hold 8 values per row for its {g} rows (height); "
                             f"received shape {tuple(gt)}")
        return [(n, self.num_class + self.side * self.side * self.num_object * 4)]

    def forward(self, head: Tensor, gt: Tensor, *unread: Tensor) -> Tensor:  # type: ignore[override]
        (n, out_w), = self.reshape([tuple(head.shape), tuple(gt.shape)])
        x = head.detach().to("cpu", torch.float32).numpy().reshape(legacy_shape(tuple(head.shape), self))
        g_rows = legacy_shape(tuple(gt.shape), self)[2]
        labels = gt.detach().to("cpu", torch.float32).numpy().reshape(-1)[: 8 * g_rows].reshape(g_rows, 8)
        cells = x.transpose(0, 2, 3, 1).reshape(n, self.side * self.side, self.num_object, self.num_class + 5)
        boxes, obj, prob = self._decode(cells[:, :, :_ANCHORS])
        truth = self._ground_truth(labels, n)
        top = np.zeros((n, out_w), dtype=_F)
        for b in range(n):
            t_cls, t_box = truth[b]
            np.add.at(top[b], t_cls, 1)
            rows = top[b, self.num_class:].reshape(-1, 4)
            if self.yolo9000:
                lab, sc, bx = self._class_boxes(boxes[b], obj[b], prob[b])
                if self.results is not None:
                    self.results.add(lab, sc, bx)
                if len(lab) > len(rows) and not self.warned:
                    self.warned = True
                    log.warning("layer %r (EvalDetection): image %d has %d predictions after the per-class NMS, more "
                                "than its %d rows (side² * num_object); the top keeps the first %d (choasup's layer "
                                "writes the rest into the next image's row or past its top); the result file has all",
                                self.name, b, len(lab), len(rows), len(rows))
                self._match(rows, lab[:len(rows)], sc[:len(rows)], bx[:len(rows)], t_cls, t_box)
            elif self.nms >= 0:
                label = prob[b].argmax(axis=-1)  # the first maximum, as its strict '<' scan
                best = np.take_along_axis(prob[b], label[..., None], axis=-1)[..., 0]
                score = {0: obj[b], 1: best}.get(self.score_type, obj[b] * best).astype(_F)
                self._record(rows, boxes[b], score, label, t_cls, t_box)
        return torch.as_tensor(top, device=head.device).to(head.dtype)

    # -- steps ---------------------------------------------------------------------------------------
    def _decode(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, K, 4), objectness (N, K), class probabilities (N, K, C) in Intel's order (cell j, i, then
        anchor), K = side² * 5."""
        n, cells = t.shape[0], self.side * self.side
        p = np.arange(cells)
        i = (p % self.side).astype(_F)[None, :, None]
        j = (p // self.side).astype(_F)[None, :, None]
        side_f = _F(self.side)
        bw = self.biases[0:2 * _ANCHORS:2].astype(np.float64)
        bh = self.biases[1:2 * _ANCHORS:2].astype(np.float64)
        bx = (i + sigmoid_f(t[..., 0])) / side_f
        by = (j + sigmoid_f(t[..., 1])) / side_f
        with np.errstate(over="ignore"):
            ww = (np.exp(t[..., 2].astype(np.float64)) * bw / self.side).astype(_F)
            hh = (np.exp(t[..., 3].astype(np.float64)) * bh / self.side).astype(_F)
        logits = t[..., 5:5 + self.num_class]
        large = logits.max(axis=-1, keepdims=True)
        e = np.exp((logits - large).astype(np.float64)).astype(_F)
        total = np.zeros(e.shape[:-1], dtype=_F)
        for c in range(self.num_class):   # float sum in class order, as its loop
            total = total + e[..., c]
        prob = (e / total[..., None]).astype(_F)
        obj = sigmoid_f(t[..., 4])
        box = np.stack([bx, by, ww, hh], axis=-1).astype(_F)
        return box.reshape(n, -1, 4), obj.reshape(n, -1), prob.reshape(n, -1, self.num_class)

    def _class_boxes(self, boxes: np.ndarray, obj: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, ...]:
        """choasup's predictions of one image: classes, scores, boxes, grouped by class ascending, best first."""
        if self.nms < 0:
            return np.zeros(0, np.int64), np.zeros(0, _F), np.zeros((0, 4), _F)
        k, c, score = class_candidates(obj, prob, self.score_type)
        kept = nms_by_class(c, score, boxes[k], float(self.nms), calc_iou)
        sel = kept[np.argsort(c[kept], kind="stable")]
        return c[sel], score[sel], boxes[k[sel]]

    def _ground_truth(self, labels: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: classes (G,) and centre/size boxes (G, 4), in the label rows' order."""
        item = np.trunc(labels[:, 0]).astype(np.int64)
        keep = item != -1
        last = n - 1 if self.yolo9000 else n   # Intel drops item N ("batch + 1"); choasup indexes past its vector
        bad = keep & ((item < 0) | (item > last))
        if bad.any():
            raise self.error(f"ground-truth item ids must be -1 or in [0, {last}] for a batch of {n}; received "
                             f"{sorted(set(item[bad].tolist()))}")
        cls = np.trunc(labels[:, 1] - _F(1)).astype(np.int64)
        bad = keep & (item < n) & ((cls < 0) | (cls >= self.num_class))
        if bad.any():
            raise self.error(f"ground-truth labels must be in [1, {self.num_class}] (label - 1 indexes the class "
                             f"counts); received {sorted(set((cls[bad] + 1).tolist()))}")
        xmin, ymin, xmax, ymax = (labels[:, k] for k in (3, 4, 5, 6))
        box = np.stack([(xmin + xmax) / _F(2), (ymin + ymax) / _F(2), xmax - xmin, ymax - ymin], axis=-1).astype(_F)
        return [(cls[keep & (item == b)], box[keep & (item == b)]) for b in range(n)]

    def _record(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                t_cls: np.ndarray, t_box: np.ndarray) -> None:
        """NMS, the score floor and the matching of one image, written into its (K, 4) prediction rows."""
        order = np.argsort(-scores, kind="stable")
        boxes, scores, classes = boxes[order], scores[order], classes[order]
        iou = calc_iou(boxes[:, None, :], boxes[None, :, :])
        gone = np.zeros(len(boxes), dtype=bool)
        for a in range(len(boxes) - 1):   # ApplyNms: a suppressed box suppresses nothing
            if not gone[a]:
                gone[a + 1:] |= iou[a, a + 1:] >= self.nms
        kept = np.flatnonzero(~gone & ~(scores.astype(np.float64) < _MIN_SCORE))
        sel = kept[np.argsort(classes[kept], kind="stable")]
        self._match(rows, classes[sel], scores[sel], boxes[sel], t_cls, t_box)

    def _match(self, rows: np.ndarray, classes: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
               t_cls: np.ndarray, t_box: np.ndarray) -> None:
        """The predictions (grouped by class ascending, best first) against the ground truth, into ``rows``."""
        k = 0
        for label in np.unique(classes):
            mine = np.flatnonzero(classes == label)
            rows[k:k + len(mine), 0] = label
            rows[k:k + len(mine), 1] = scores[mine]
            truth = t_box[t_cls == label]
            if len(truth) == 0:
                rows[k:k + len(mine), 3] = 1
                k += len(mine)
                continue
            over = calc_iou(boxes[mine][:, None, :], truth[None, :, :])
            taken = np.zeros(len(truth), dtype=bool)
            for r in range(len(mine)):
                cand = np.where(over[r] > -1, over[r], -np.inf)   # its max starts at -1, strict '>' (NaN never)
                g = int(cand.argmax())
                if cand[g] > -1 and cand[g] >= self.threshold:
                    rows[k + r, 2:] = (0, 1) if taken[g] else (1, 0)
                    taken[g] = True
            k += len(mine)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(11)
        biases = " ".join(f"biases: {v}" for v in (1.3, 1.7, 3.2, 4.0, 5.1, 8.1, 9.5, 4.8, 11.2, 10.0))
        gt = np.array([[0, 1, 0, 0.1, 0.1, 0.5, 0.6, 0], [0, 2, 1, 0.4, 0.3, 0.9, 0.8, 0],
                       [1, 3, 0, 0.2, 0.2, 0.7, 0.9, 0], [-1, -1, -1, -1, -1, -1, -1, -1]], dtype=np.float64)
        head = r.standard_normal((2, 5 * 8, 3, 3)) * 2
        return [Example(f'name: "eval_det" type: "EvalDetection" bottom: "conv_reg" bottom: "label" top: "eval_det" '
                        f'eval_detection_param {{ side: 3 num_class: 3 num_object: 5 threshold: 0.3 nms: 0.45 '
                        f'{biases} }}', [head, gt.reshape(1, 1, 4, 8)], grad_bottoms=()),
                Example(f'name: "eval_det" type: "EvalDetection" bottom: "conv_reg" bottom: "label" bottom: "data" '
                        f'top: "eval_det" eval_detection_param {{ side: 2 num_class: 3 num_object: 6 '
                        f'score_type: OBJ nms: 0.3 {biases} }}',
                        [r.standard_normal((2, 6 * 8, 2, 2)), gt.reshape(1, 1, 4, 8), np.zeros((2, 3, 4, 4))],
                        grad_bottoms=())]
