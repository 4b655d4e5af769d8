"""The YOLO ports' layers: ``Reorg`` (the passthrough layer), ``YoloDetectionOutput`` (YOLOv2) and
``Yolov3DetectionOutput``.

Lineage and source files: eric612/MobileNet-YOLO @ 69b4441c (the same ``reorg_layer`` is in the other
Caffe YOLOv2 ports, e.g. gklz1982/caffe-yolov2, eric612/Caffe-YOLOv3-Windows):

* ``Reorg``: ``include/caffe/layers/reorg_layer.hpp`` (``reorg_cpu``) and
  ``src/caffe/layers/reorg_layer.{cpp,cu}``; ``reorg_param {stride reverse}``. choasup/caffe-yolo9000 @
  e8a476c (``src/caffe/layers/reorg_layer.cpp``, CPU only) has the same forward (its ``reorg_cpu`` called with
  ``forward = 0``, no ``reverse``) and ``stride`` defaulting to 2 (its schema), which neocaffe's schema takes.
* ``YoloDetectionOutput``: ``src/caffe/layers/yolo_detection_output_layer.cpp`` (last changed in
  092f8df "Fix bugs"), with ``sigmoid`` from ``include/caffe/layers/region_loss_layer.hpp``;
  ``yolo_detection_output_param {num_classes num_box confidence_threshold nms_threshold biases}``.
* ``Yolov3DetectionOutput``: ``src/caffe/layers/yolov3_detection_output_layer.{cpp,cu}`` (last changed
  in 9e32643) with ``get_region_box`` of ``src/caffe/util/bbox_util.cpp``;
  ``yolov3_detection_output_param {num_classes num_box confidence_threshold nms_threshold biases mask
  anchors_scale mask_group_num gaussian_box}``.

No loop over boxes or pixels: the reorg is one reshape/permute, the detection output decodes every
cell at once and runs NMS as a fixed point over the IoU matrix (``_bbox.greedy_keep``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import _bbox
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer


@register_layer("Reorg")
class ReorgLayer(Layer):
    """YOLOv2's reorg with stride s (darknet's ``reorg_cpu`` called with ``forward = reverse``).

    ``reverse: false`` (the passthrough layer): bottom N x C x H x W, top N x C*s^2 x H/s x W/s. The
    fork reads the bottom's data as if it were C/s^2 x H*s x W*s and writes
    ``top_flat[((oy*s + ox)*C/s^2 + c)*H*W + h*W + w] = bottom_flat[c, h*s + oy, w*s + ox]`` (darknet's
    quirk: not a plain space-to-depth of the bottom's own rows). ``reverse: true``: the inverse
    permutation with the roles read the other way, top N x C/s^2 x H*s x W*s.

    ``stride``: 2 where ``reorg_param`` does not set it (yolo9000's default; MobileNet-YOLO and Intel CHECK
    that it is set, so this accepts every prototxt the three accept).

    Backward: the transpose of the permutation (the exact gradient). Deviation: the ports' Backward
    reads an internal ``diff_`` blob that nothing writes, so their bottom diff is always 0; yolo9000's
    Backward rewrites the top's data from the bottom's and leaves the bottom diff as it was (0).
    """

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.reorg_param
        if p.stride <= 0:
            raise self.error(f"Reorg needs reorg_param.stride > 0 (default 2); received {p.stride}")
        self.stride, self.reverse = int(p.stride), bool(p.reverse)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        k = self.stride
        if len(s) != 4 or s[1] % (k * k) or (not self.reverse and (s[2] % k or s[3] % k)):
            need = "C divisible by stride^2" + ("" if self.reverse else ", H and W by stride")
            raise self.error(f"bottom must be N x C x H x W with {need} (stride {k}); received {s}")
        if self.reverse:
            return [(s[0], s[1] // (k * k), s[2] * k, s[3] * k)]
        return [(s[0], s[1] * k * k, s[2] // k, s[3] // k)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        k, c2 = self.stride, c // (self.stride * self.stride)
        if self.reverse:
            return x.reshape(n, k, k, c2, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c2, h * k, w * k)
        return x.reshape(n, c2, h, k, w, k).permute(0, 3, 5, 1, 2, 4).reshape(n, c * k * k, h // k, w // k)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(142)
        return [Example('name: "rg" type: "Reorg" bottom: "x" top: "y" reorg_param { stride: 2 }',
                        [r.standard_normal((2, 8, 4, 6))]),
                Example('name: "rg" type: "Reorg" bottom: "x" top: "y" reorg_param { stride: 2 reverse: true }',
                        [r.standard_normal((1, 8, 3, 2))])]


def yolo_overlaps(cx: Tensor, cy: Tensor, w: Tensor, h: Tensor, threshold: float) -> Tensor:
    """``box_iou(i, j) >= threshold`` for every pair of center-size boxes [G, K] (the fork's ``overlap``,
    ``box_intersection`` (0 when either side is negative), ``box_union``): [G, K, K]."""
    def side(c: Tensor, s: Tensor) -> Tensor:
        lo, hi = c - s / 2, c + s / 2
        return torch.minimum(hi.unsqueeze(-1), hi.unsqueeze(-2)) - torch.maximum(lo.unsqueeze(-1), lo.unsqueeze(-2))

    ow, oh = side(cx, w), side(cy, h)
    inter = torch.where((ow < 0) | (oh < 0), torch.zeros_like(ow), ow * oh)
    area = w * h
    union = area.unsqueeze(-1) + area.unsqueeze(-2) - inter
    return inter / union >= threshold


@register_layer("YoloDetectionOutput")
class YoloDetectionOutputLayer(Layer):
    """MobileNet-YOLO's YOLOv2 detection output, from one or two heads (bottoms) of ``num_box * D``
    channels on a square S x S grid (the fork takes ``side`` = the bottom's width for both axes), box k
    of cell (row j, column i) in channels ``k*D .. k*D + D - 1``: ``tx ty tw th to c_1..c_classes``.

    Box: ``x = (i + sigmoid(tx)) / S``, ``y = (j + sigmoid(ty)) / S``, ``w = exp(tw) * biases[2k] / S``,
    ``h = exp(th) * biases[2k+1] / S``; score ``sigmoid(to) * max softmax(c)`` (label: the first argmax
    + 1); boxes scoring ``>= confidence_threshold`` are sorted by descending score (stable: ties keep
    the fork's push order) and go through one class-agnostic greedy NMS that drops a box whose IoU
    with a kept one is ``>= nms_threshold``. Top: 1 x 1 x K x 7 rows ``[image, label, score, x - w/2,
    y - h/2, x + w/2, y + h/2]`` (not clipped); with no detection at all, one row ``[n, -1, ..., -1]``
    per image. ``coords``, ``side`` and ``label_map_file`` do not change the numbers (the fork reads
    but does not use them).

    Deviation, batch > 1 only: the fork pools every image's boxes into one NMS and writes image 0 on
    every row; here each image has its own NMS and its own index. Batch 1 is the fork's exactly.
    """

    value_dependent_shape = True

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.yolo_detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("yolo_detection_output_param.num_classes must be set (the fork's CHECK)")
        self.classes, self.boxes = int(p.num_classes), int(p.num_box)
        self.conf_thr, self.nms_thr = float(np.float32(p.confidence_threshold)), float(np.float32(p.nms_threshold))
        if self.classes <= 0 or self.boxes <= 0:
            raise self.error(f"num_classes and num_box must be > 0; received {self.classes}, {self.boxes}")
        if len(p.biases) < 2 * self.boxes:
            raise self.error(f"yolo_detection_output_param.biases needs 2 * num_box = {2 * self.boxes} values "
                             f"(anchor width, height per box); received {len(p.biases)}")
        self.register_buffer("anchors", torch.tensor(list(p.biases)[:2 * self.boxes], dtype=torch.float32)
                             .view(self.boxes, 2), persistent=False)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        for b, s in enumerate(bottom_shapes):
            if len(s) != 4 or s[1] % self.boxes or s[1] // self.boxes < 5 + self.classes or s[2] != s[3]:
                raise self.error(f"bottom {b} must be N x num_box*(5 + num_classes at least) x S x S (num_box "
                                 f"{self.boxes}, num_classes {self.classes}; the fork assumes a square grid); "
                                 f"received {tuple(s)}")
            if s[0] != bottom_shapes[0][0]:
                raise self.error(f"the bottoms' batch sizes differ: {[tuple(t) for t in bottom_shapes]}")
        return [(1, 1, 1, 7)]  # the fork's placeholder: the row count is known after NMS

    def _decode(self, t: Tensor) -> tuple[Tensor, ...]:
        """Every box of one head: (x, y, w, h, score, label) each [N, S*S*num_box] in the fork's order."""
        n, c, s, _ = t.shape
        v = t.reshape(n, self.boxes, c // self.boxes, s, s).permute(0, 3, 4, 1, 2)  # [N, j, i, k, D]
        grid = torch.arange(s, device=t.device, dtype=t.dtype)
        anchors = self.anchors.to(t.dtype)
        x = (grid.view(1, 1, s, 1) + torch.sigmoid(v[..., 0])) / s
        y = (grid.view(1, s, 1, 1) + torch.sigmoid(v[..., 1])) / s
        w = torch.exp(v[..., 2]) * anchors[:, 0] / s
        h = torch.exp(v[..., 3]) * anchors[:, 1] / s
        prob, label = torch.softmax(v[..., 5:5 + self.classes], dim=-1).max(dim=-1)
        score = torch.sigmoid(v[..., 4]) * prob
        return tuple(a.reshape(n, -1) for a in (x, y, w, h, score, label.to(t.dtype)))

    def forward(self, *heads: Tensor) -> Tensor:  # type: ignore[override]
        parts = [self._decode(t.detach()) for t in heads]
        x, y, w, h, score, label = (torch.cat([p[f] for p in parts], dim=1) for f in range(6))
        n = x.shape[0]
        valid = score >= self.conf_thr
        m = int(valid.sum(1).max()) if valid.numel() else 0
        if m == 0:
            rows = torch.full((n, 7), -1.0, dtype=x.dtype, device=x.device)
            rows[:, 0] = torch.arange(n, device=x.device, dtype=x.dtype)
            return rows.view(1, 1, n, 7)
        key = torch.where(valid, score, torch.full_like(score, -float("inf")))
        order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :m]
        x, y, w, h, score, label, valid = (a.gather(1, order) for a in (x, y, w, h, score, label, valid))
        keep = _bbox.greedy_keep(yolo_overlaps(x, y, w, h, self.nms_thr), valid)
        img = torch.arange(n, device=x.device, dtype=x.dtype).view(n, 1).expand(n, m)
        rows = torch.stack([img, label + 1, score, x - w / 2, y - h / 2, x + w / 2, y + h / 2], dim=-1)
        return rows[keep].view(1, 1, -1, 7)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    @classmethod
    def examples(cls) -> list[Example]:
        # one box survives: every box scores ~0 but two (one per head in the second example) that
        # describe the same rectangle, so NMS keeps the first of them
        def head(s: int, boxes: list[tuple[int, list[float]]]) -> np.ndarray:
            t = np.zeros((1, 2, 8, s, s))
            t[:, :, 4] = -12.0
            for k, (tx, ty, tw, th) in boxes:
                t[0, k, :5, 0, 0] = [tx, ty, tw, th, 3.0]
                t[0, k, 5:, 0, 0] = [0.0, 4.0, 0.5]
            return t.reshape(1, 16, s, s)

        same = [(0, [0.2, -0.3, 0.0, 0.0]), (1, [0.2, -0.3, np.log(1.1 / 3.2), np.log(1.4 / 2.5)])]
        base = ('name: "det" type: "YoloDetectionOutput" bottom: "a" {} top: "det" yolo_detection_output_param {{ '
                'num_classes: 3 num_box: 2 confidence_threshold: 0.2 nms_threshold: 0.45 biases: 1.1 biases: 1.4 '
                'biases: 3.2 biases: 2.5 }}')
        a = head(1, [(0, [np.log(0.25 / 0.75), np.log(0.25 / 0.75), 0.0, 0.0])])
        b = head(2, [(0, [0.0, 0.0, np.log(2.0), np.log(2.0)])])
        return [Example(base.format(""), [head(2, same)], grad_bottoms=(), grad_params=False),
                Example(base.format('bottom: "b"'), [a, b], grad_bottoms=(), grad_params=False)]


@register_layer("Yolov3DetectionOutput")
class Yolov3DetectionOutputLayer(Layer):
    """MobileNet-YOLO's YOLOv3 detection output: one bottom per scale (``mask_group_num`` of them), each
    N x C x H x W with box k of cell (row j, column i) in channels ``k*D .. k*D + D - 1`` (D = 5 +
    num_classes): ``tx ty tw th to c_1..c_classes``. Bottom t uses the anchors ``mask[t*G + k]`` (G =
    ``len(mask) / mask_group_num``) and the network size ``H * anchors_scale[t]`` by ``W * anchors_scale[t]``.

    Box: ``x = (i + sigmoid(tx)) / W``, ``y = (j + sigmoid(ty)) / H``, ``w = exp(tw) * biases[2m] /
    (W * anchors_scale[t])``, ``h = exp(th) * biases[2m+1] / (H * anchors_scale[t])`` (``correct_yolo_boxes``
    with these sizes changes nothing). Each class whose ``sigmoid(c) * sigmoid(to)`` is above
    ``confidence_threshold`` gives a candidate (a box can stand for several classes), in the fork's order
    (bottom, image, cell, box, class); candidates sorted by descending score (stable: the fork's
    ``std::sort`` leaves ties in no defined order) go through one class-agnostic greedy NMS dropping a
    candidate whose IoU with a kept one is ``>= nms_threshold`` (float32, the fork's ``box_iou``). Top:
    1 x 1 x K x 7 rows ``[image, label + 1, score, x - w/2, y - h/2, x + w/2, y + h/2]`` (not clipped); with
    no candidate, one row ``[n, -1, ..., -1]`` per image.

    Deviations: at batch > 1 the fork pools every image's candidates into one NMS and writes image 0 on
    every row; here each image has its own NMS and index (batch 1 is the fork's). ``gaussian_box`` is an
    error: the fork's CPU path reads the objectness from a buffer it never wrote (and writes one class
    score past its array) while its CUDA path counts one uncertainty twice, so the two disagree.
    """

    value_dependent_shape = True

    min_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.yolov3_detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("yolov3_detection_output_param.num_classes must be set (the fork's CHECK)")
        if p.gaussian_box:
            raise self.error("yolov3_detection_output_param.gaussian_box is not reproduced: the fork's CPU and CUDA "
                             "paths compute different objectness scores for it (see the layer's docstring)")
        self.classes, self.boxes = int(p.num_classes), int(p.num_box)
        self.conf_thr, self.nms_thr = np.float32(p.confidence_threshold), np.float32(p.nms_threshold)
        groups = int(p.mask_group_num)
        if self.classes <= 0 or self.boxes <= 0 or groups <= 0:
            raise self.error(f"num_classes, num_box and mask_group_num must be > 0; received {self.classes}, "
                             f"{self.boxes}, {groups}")
        if len(bottom_shapes) != groups:
            raise self.error(f"takes mask_group_num = {groups} bottoms (one per scale); received {len(bottom_shapes)}")
        per = len(p.mask) // groups
        mask, biases, scales = list(p.mask), list(p.biases), list(p.anchors_scale)
        if len(scales) < groups:
            raise self.error(f"anchors_scale needs one value per bottom ({groups}); received {len(scales)}")
        self.anchor_rows: list[list[int]] = []
        for t in range(groups):
            rows = mask[t * per: t * per + self.boxes]
            if len(rows) < self.boxes or any(2 * m + 1 >= len(biases) for m in rows):
                raise self.error(f"bottom {t} reads mask[{t * per}..{t * per + self.boxes - 1}] as anchor indices "
                                 f"into biases ({len(biases)} values, {len(biases) // 2} anchors); mask holds {mask}")
            self.anchor_rows.append(rows)
        self.biases = np.float32(biases)
        self.scales = [int(v) for v in scales[:groups]]

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        need = self.boxes * (5 + self.classes)
        for b, s in enumerate(bottom_shapes):
            if len(s) != 4 or s[1] < need:
                raise self.error(f"bottom {b} must be N x num_box*(5 + num_classes) (at least {need}) x H x W; "
                                 f"received {tuple(s)}")
            if s[0] != bottom_shapes[0][0]:
                raise self.error(f"the bottoms' batch sizes differ: {[tuple(t) for t in bottom_shapes]}")
        return [(1, 1, 1, 7)]  # the fork's placeholder: the row count is known after NMS

    def _candidates(self, t: int, head: np.ndarray) -> tuple[np.ndarray, ...]:
        """One bottom's candidates per image: (x, y, w, h, score, label) each [N, H*W*B*classes]."""
        n, _, hh, ww = head.shape
        d = 5 + self.classes
        v = head[:, :self.boxes * d].reshape(n, self.boxes, d, hh, ww).transpose(0, 3, 4, 1, 2)  # [N, j, i, k, D]
        sig = (np.float32(1) / (np.float32(1) + np.exp(-v))).astype(np.float32)
        anchors = self.biases.reshape(-1, 2)[self.anchor_rows[t]]  # [B, 2]
        nw, nh = np.float32(ww * self.scales[t]), np.float32(hh * self.scales[t])
        x = (np.arange(ww, dtype=np.float32).reshape(1, 1, ww, 1) + sig[..., 0]) / np.float32(ww)
        y = (np.arange(hh, dtype=np.float32).reshape(1, hh, 1, 1) + sig[..., 1]) / np.float32(hh)
        w = np.exp(v[..., 2]) * anchors[:, 0] / nw
        h = np.exp(v[..., 3]) * anchors[:, 1] / nh
        score = sig[..., 5:5 + self.classes] * sig[..., 4:5]  # [N, j, i, k, classes]
        shape = score.shape
        label = np.broadcast_to(np.arange(self.classes, dtype=np.float32), shape)
        x, y, w, h = (np.broadcast_to(a[..., None], shape) for a in (x, y, w, h))
        return tuple(np.asarray(a, np.float32).reshape(n, -1) for a in (x, y, w, h, score, label))

    def forward(self, *heads: Tensor) -> Tensor:  # type: ignore[override]
        with np.errstate(over="ignore", invalid="ignore"):  # exp overflows to inf, as in the fork's float math
            parts = [self._candidates(t, h.detach().float().cpu().numpy()) for t, h in enumerate(heads)]
            x, y, w, h, score, label = (np.concatenate([p[f] for p in parts], axis=1) for f in range(6))
            n = x.shape[0]
            rows = []
            for i in range(n):
                cand = np.flatnonzero(score[i] > self.conf_thr)
                cand = cand[np.argsort(-score[i][cand], kind="stable")]
                for k in _yolo_nms(x[i][cand], y[i][cand], w[i][cand], h[i][cand], self.nms_thr):
                    c = cand[k]
                    rows.append((i, label[i, c] + 1, score[i, c], x[i, c] - w[i, c] / 2, y[i, c] - h[i, c] / 2,
                                 x[i, c] + w[i, c] / 2, y[i, c] + h[i, c] / 2))
        if not rows:
            rows = [(i, -1, -1, -1, -1, -1, -1) for i in range(n)]
        out = torch.tensor(np.float32(rows), dtype=heads[0].dtype, device=heads[0].device)
        return out.view(1, 1, -1, 7)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    @classmethod
    def examples(cls) -> list[Example]:
        # every box's objectness ~0 but one (box 1 of cell (1, 2) of the second scale, class 0): one row;
        # then nothing above the threshold: the fork's fake row
        r = np.random.default_rng(143)
        a, b = r.standard_normal((1, 14, 2, 3)), r.standard_normal((1, 14, 4, 6))
        for t in (a, b):
            t[:, 4] = t[:, 11] = -12.0  # to of box 0 and box 1 (D = 7)
        b[0, 7:14, 1, 2] = [0.3, -0.2, 0.1, 0.4, 4.0, 4.0, -4.0]
        text = ('name: "det" type: "Yolov3DetectionOutput" bottom: "a" bottom: "b" top: "det" '
                'yolov3_detection_output_param { num_classes: 2 num_box: 2 confidence_threshold: 0.3 '
                'nms_threshold: 0.45 biases: 10 biases: 14 biases: 23 biases: 27 biases: 37 biases: 58 '
                'biases: 81 biases: 82 mask: 2 mask: 3 mask: 0 mask: 1 anchors_scale: 32 anchors_scale: 16 '
                'mask_group_num: 2 }')
        none = b.copy()
        none[0, 11, 1, 2] = -12.0
        return [Example(text, [a, b], grad_bottoms=(), grad_params=False),
                Example(text, [a, none], grad_bottoms=(), grad_params=False)]

def _yolo_nms(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, threshold: np.float32) -> list[int]:
    """The fork's ``ApplyNms`` over candidates sorted by score: keep i unless a kept earlier candidate has
    ``box_iou >= threshold`` with it (float32 ``overlap``/``box_intersection``/``box_union``)."""
    f = np.float32
    left, right = x - w / f(2), x + w / f(2)
    top, bot = y - h / f(2), y + h / f(2)
    area = w * h
    alive = np.ones(len(x), bool)
    kept = []
    for i in range(len(x)):
        if not alive[i]:
            continue
        kept.append(i)
        rest = np.arange(i + 1, len(x))
        rest = rest[alive[rest]]
        ow = np.minimum(right[i], right[rest]) - np.maximum(left[i], left[rest])
        oh = np.minimum(bot[i], bot[rest]) - np.maximum(top[i], top[rest])
        inter = np.where((ow < 0) | (oh < 0), f(0), ow * oh).astype(np.float32)
        iou = inter / (area[i] + area[rest] - inter)
        alive[rest[iou >= threshold]] = False
    return kept
