"""ONNX emitters of the YOLO ports' detection outputs, Cascade R-CNN's deploy box layers and NormFace's
InnerDistance, each the arithmetic of its neocaffe layer (which follows its fork):

* eric612/MobileNet-YOLO @ 69b4441c (``neocaffe.layers.yolo``): ``YoloDetectionOutput``
  (yolo_detection_output_layer.cpp) and ``Yolov3DetectionOutput`` (yolov3_detection_output_layer.cpp), for
  one image. Every cell's boxes decoded at once (``x = (i + sigmoid(tx)) / W``, ``w = exp(tw) * anchor /
  size``); YOLOv2 scores ``sigmoid(to) * max softmax(c)`` (label the first argmax), YOLOv3 one candidate
  per class ``sigmoid(c) * sigmoid(to)``; one class-agnostic ``NonMaxSuppression`` over the candidates in
  the fork's order. onnxruntime's NMS keeps a score ``> score_threshold`` and suppresses at IoU ``>
  iou_threshold``, visiting equal scores lower index first (the fork's stable sort): YOLOv3's ``score >
  confidence_threshold`` is that; the fork's ``>=`` (YOLOv2's confidence, both IoU tests) is ``>`` the
  next float32 below the threshold. An ``nms_threshold <= 0`` is refused (the fork then drops disjoint
  boxes, onnxruntime never does). Rows ``[0, label + 1, score, x - w/2, y - h/2, x + w/2, y + h/2]`` in
  the order kept; no detection: one row ``[0, -1, ..., -1]``; output (1, 1, K, 7), K dynamic.
* zhaoweicai/cascade-rcnn @ 2252f46 (``neocaffe.layers.cascade_boxes``): ``DecodeBBox`` in TEST
  (DecodeBBoxesWithPrior: ``+ 1`` sizes, the means and stds of ``bbox_reg_param``; no clipping; the RoIs'
  batch column kept; rows may follow a Proposal's dynamic count). TRAIN (which drops boxes) is refused.
* happynear/caffe-windows ms @ 967eedf2 (``neocaffe.layers.normface_metric``): ``InnerDistance``, ``sum_k
  (x_mk - w_nk)^2`` (L2, no root) or ``sum_k |x_mk - w_nk|`` (L1) over the broadcast differences (as the
  layer: no ``|x|^2 + |w|^2 - 2 x.w`` cancellation); with ``normalize`` (own blob) the rows as the next
  forward normalizes them (``w / sqrt(w.w + 1e-6)``, in double).
* ``BoxGroupOutput`` (box_group_output_layer.cpp; ``neocaffe.layers.cascade_boxes``), one image: every
  pair's boxes decoded (DecodeGroupBBoxes: clamped deltas, ``field * exp``), clipped to ``W * stride`` x
  ``H * stride``, kept where ``1 - prob[0] >= fg_thr`` and both ``+ 1`` sides ``>= min_size``
  (``Compress``), sorted by ``TopK`` (equal scores lower index first: the layer's stable sort), the first
  ``max_nms_num``, then ``NonMaxSuppression`` on ``(x1, y1, x2 + 1, y2 + 1)`` with scores ``k, ..., 1`` (its
  order exactly the sorted one; its IoU the fork's ``+ 1`` one; suppressed at ``> iou_thr`` as the fork),
  ``max_post_nms_num`` as its ``max_output_boxes_per_class``. The fork's intersection is 0 for boxes that
  touch along one pixel row (``iy1 >= iy2``) or overlap by less than a pixel column (``ix1 > ix2``), where
  ONNX's is not; such an intersection is at most one row or column, an IoU of at most ``1 / (2 min_size -
  1)`` for boxes that pass ``min_size``, so the export is exact where ``iou_thr`` is above that (by 0.1 %,
  for float rounding) and is refused otherwise (and for ``nms_type`` IOMU/IOFU). Rows dynamic; no box:
  the fork's stand-in rows ``(0, 1, 1, 10, 10)`` and zeros. The export's dynamic-row tracking
  (``onnx_proposal.ROW_TYPES``) lists this type, so the RoI heads after it follow the count it writes.
"""
from __future__ import annotations

import math

import numpy as np

from neocaffe.export.onnx_fork import field, param
from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.registry import LayerNode, onnx_emitter
from neocaffe.layers.base import TRAIN

f32 = np.float32
INT64 = 7


def _below(v: float) -> float:
    """The float32 just below ``float32(v)``: ``s >= v`` is ``s > _below(v)`` for float32 ``s``."""
    return float(np.nextafter(f32(v), f32(-np.inf)))


def _one_image(n: LayerNode) -> None:
    for i, (s, dyn) in enumerate(zip(n.bottom_shapes, n.bottom_batch)):
        if s[0] != 1 or any(dyn):
            raise n.error(f"exported for a batch of one image; bottom {i} has shape {tuple(s)}"
                          f"{' with a dynamic batch' if any(dyn) else ''} (export with -batch 1)")


def _grid(g: OnnxGraph, head: str, shape: tuple[int, ...], boxes: int, depth: int) -> str:
    """The first ``boxes * depth`` channels of a (1, C, H, W) head as (H, W, boxes, depth): [j, i, k, D]."""
    _, C, H, W = shape
    x = head if C == boxes * depth else g.op("Slice", head, g.ints([0]), g.ints([boxes * depth]), g.ints([1]))
    x = g.reshape(x, (boxes, depth, H, W))
    return g.op("Transpose", x, perm=[2, 3, 0, 1])


def _field(g: OnnxGraph, v: str, a: int, b: int) -> str:
    """``v[..., a:b]`` of a (H, W, B, D) tensor."""
    return g.op("Slice", v, g.ints([a]), g.ints([b]), g.ints([3]))


def _centres(g: OnnxGraph, sig: str, H: int, W: int) -> tuple[str, str]:
    """``x = (i + sigmoid(tx)) / W``, ``y = (j + sigmoid(ty)) / H`` as (H, W, B, 1)."""
    cols = g.const(np.arange(W, dtype=f32).reshape(1, W, 1, 1), "cols")
    rows = g.const(np.arange(H, dtype=f32).reshape(H, 1, 1, 1), "rows")
    x = g.op("Div", g.op("Add", cols, _field(g, sig, 0, 1)), g.scalar(float(W)))
    y = g.op("Div", g.op("Add", rows, _field(g, sig, 1, 2)), g.scalar(float(H)))
    return x, y


def _corners(g: OnnxGraph, x: str, y: str, w: str, h: str) -> str:
    """``(x - w/2, y - h/2, x + w/2, y + h/2)`` along a new last axis of size 4 (from (..., 1) each)."""
    hw, hh = g.op("Div", w, g.scalar(2.0)), g.op("Div", h, g.scalar(2.0))
    return g.op("Concat", g.op("Sub", x, hw), g.op("Sub", y, hh), g.op("Add", x, hw), g.op("Add", y, hh), axis=-1)


def _nms_rows(g: OnnxGraph, boxes: str, scores: str, labels: str | None, per_box: int, score_thr: float,
              iou_thr: float) -> str:
    """Class-agnostic NMS over the candidates (``boxes`` (M, 4) corners, ``scores`` (M,)); the label of
    candidate c is ``labels[c]``, or ``c mod per_box`` when ``labels`` is None. The (1, 1, K, 7) rows."""
    sel = g.op("NonMaxSuppression", g.op("Unsqueeze", boxes, g.ints([0])),
               g.op("Reshape", scores, g.ints([1, 1, -1])), g.ints([2 ** 31 - 1], "max_out"),
               g.scalar(iou_thr), g.scalar(score_thr), hint="nms")  # (K, 3): 0, 0, candidate
    cand = g.op("Squeeze", g.op("Slice", sel, g.ints([2]), g.ints([3]), g.ints([1])), g.ints([1]), hint="kept")
    if labels is None:
        label = g.op("Cast", g.op("Mod", cand, g.const(np.int64(per_box), "classes", np.int64)), to=1)
    else:
        label = g.op("Gather", labels, cand, axis=0)
    col = lambda t: g.op("Unsqueeze", t, g.ints([1]))  # noqa: E731
    label = g.op("Add", label, g.scalar(1.0))
    rows = g.op("Concat", col(g.op("Mul", label, g.scalar(0.0))), col(label), col(g.op("Gather", scores, cand, axis=0)),
                g.op("Gather", boxes, cand, axis=0), axis=1)
    none = g.const(np.array([[0, -1, -1, -1, -1, -1, -1]], f32), "no_detection")
    count = g.op("Max", g.op("Shape", cand), g.ints([1], "one"))
    rows = g.op("Slice", g.op("Concat", rows, none, axis=0), g.ints([0]), count, g.ints([0]), hint="rows")
    return g.op("Reshape", rows, g.ints([1, 1, -1, 7]))


def _nms_threshold(n: LayerNode, value: float) -> float:
    if not f32(value) > 0:
        raise n.error(f"nms_threshold {float(f32(value))} <= 0 is not exported: the fork then drops boxes that do "
                      "not overlap at all, which ONNX NonMaxSuppression never does")
    return _below(value)


@onnx_emitter("YoloDetectionOutput")
def yolo_detection_output(g: OnnxGraph, n: LayerNode) -> list[str]:
    """YOLOv2 (one or two heads of num_box * D channels on a square grid)."""
    _one_image(n)
    p = param(n, "yolo_detection_output_param")
    classes, nb = int(p.num_classes), int(p.num_box)
    anchors = np.asarray(list(p.biases)[:2 * nb], f32).reshape(nb, 2)
    corners, scores, labels = [], [], []
    for head, shape in zip(n.inputs, n.bottom_shapes):
        _, C, H, W = shape
        v = _grid(g, head, tuple(shape), nb, C // nb)  # (S, S, B, D)
        sig = g.op("Sigmoid", _field(g, v, 0, 2))
        x, y = _centres(g, sig, H, W)
        wh = g.op("Div", g.op("Mul", g.op("Exp", _field(g, v, 2, 4)), g.const(anchors, "anchors")), g.scalar(float(W)))
        w, h = _field(g, wh, 0, 1), _field(g, wh, 1, 2)
        prob = g.op("Softmax", _field(g, v, 5, 5 + classes), axis=-1)
        score = g.op("Mul", g.op("Sigmoid", _field(g, v, 4, 5)), g.reduce("ReduceMax", prob, [3]))
        label = g.op("Cast", g.op("ArgMax", prob, axis=3, keepdims=1, select_last_index=0), to=1)
        corners.append(g.reshape(_corners(g, x, y, w, h), (H * W * nb, 4)))
        scores.append(g.reshape(score, (H * W * nb,)))
        labels.append(g.reshape(label, (H * W * nb,)))
    cat = lambda ts: ts[0] if len(ts) == 1 else g.op("Concat", *ts, axis=0)  # noqa: E731
    conf = _below(float(p.confidence_threshold))  # the fork keeps score >= confidence_threshold
    return [_nms_rows(g, cat(corners), cat(scores), cat(labels), 1, conf, _nms_threshold(n, p.nms_threshold))]


@onnx_emitter("Yolov3DetectionOutput")
def yolov3_detection_output(g: OnnxGraph, n: LayerNode) -> list[str]:
    """YOLOv3 (one head per scale; bottom t's anchors ``mask[t*G ...]``, sizes ``H * anchors_scale[t]``)."""
    _one_image(n)
    p = param(n, "yolov3_detection_output_param")
    if field(p, "gaussian_box", False):
        raise n.error("gaussian_box is not exported (the layer refuses it too)")
    L = n.layer
    if L is None:
        raise n.error("needs the built layer to read its anchors")
    classes, nb = int(L.classes), int(L.boxes)
    D = 5 + classes
    corners, scores = [], []
    for t, (head, shape) in enumerate(zip(n.inputs, n.bottom_shapes)):
        _, _, H, W = shape
        v = _grid(g, head, tuple(shape), nb, D)  # (H, W, B, D)
        sig = g.op("Sigmoid", v)
        x, y = _centres(g, sig, H, W)
        anchors = np.asarray(L.biases, f32).reshape(-1, 2)[L.anchor_rows[t]]  # (B, 2)
        size = np.array([W * L.scales[t], H * L.scales[t]], f32)
        wh = g.op("Div", g.op("Mul", g.op("Exp", _field(g, v, 2, 4)), g.const(anchors, "anchors")),
                  g.const(size, "net_size"))
        box = _corners(g, x, y, _field(g, wh, 0, 1), _field(g, wh, 1, 2))  # (H, W, B, 4)
        count = H * W * nb * classes  # candidates in the fork's order (cell, box, class)
        box = g.op("Expand", g.op("Unsqueeze", box, g.ints([3])), g.ints([H, W, nb, classes, 4], "per_class"))
        corners.append(g.reshape(box, (count, 4)))
        scores.append(g.reshape(g.op("Mul", _field(g, sig, 5, D), _field(g, sig, 4, 5)), (count,)))
    cat = lambda ts: ts[0] if len(ts) == 1 else g.op("Concat", *ts, axis=0)  # noqa: E731
    conf = float(f32(L.conf_thr))  # the fork keeps score > confidence_threshold: onnxruntime's own test
    return [_nms_rows(g, cat(corners), cat(scores), None, classes, conf, _nms_threshold(n, L.nms_thr))]


@onnx_emitter("DecodeBBox")
def decode_bbox(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Cascade R-CNN's DecodeBBox in TEST: ``(batch, decoded object box)`` per RoI, ``R x 5 x 1 x 1``."""
    if n.layer is not None and getattr(n.layer, "phase", None) == TRAIN:
        raise n.error("in TRAIN the layer drops boxes by their geometry and overlap; export the TEST phase")
    if len(n.inputs) > 2:
        raise n.error("the third bottom (matched ground truth) is for TRAIN only")
    R = int(n.bottom_shapes[0][0])
    dyn = (bool(n.bottom_batch[0][0]), False)
    bp = param(n, "bbox_reg_param")
    mean = [float(v) for v in bp.bbox_mean] if len(bp.bbox_mean) and len(bp.bbox_std) else [0.0] * 4
    std = [float(v) for v in bp.bbox_std] if len(bp.bbox_mean) and len(bp.bbox_std) else [1.0] * 4
    d = g.op("Slice", g.reshape(n.inputs[0], (R, 8), dyn), g.ints([4]), g.ints([8]), g.ints([1]))
    r = g.reshape(n.inputs[1], (R, 5), (bool(n.bottom_batch[1][0]), False))
    col = lambda t, a: g.op("Slice", t, g.ints([a]), g.ints([a + 1]), g.ints([1]))  # noqa: E731
    x1, y1, x2, y2 = (col(r, a) for a in (1, 2, 3, 4))
    one = g.scalar(1.0)
    pw, ph = g.op("Add", g.op("Sub", x2, x1), one), g.op("Add", g.op("Sub", y2, y1), one)
    cx, cy = g.op("Mul", g.scalar(0.5), g.op("Add", x2, x1)), g.op("Mul", g.scalar(0.5), g.op("Add", y2, y1))
    v = g.op("Add", g.op("Mul", d, g.const(np.asarray(std, f32), "std")), g.const(np.asarray(mean, f32), "mean"))
    tx, ty = g.op("Add", g.op("Mul", col(v, 0), pw), cx), g.op("Add", g.op("Mul", col(v, 1), ph), cy)
    tw, th = g.op("Mul", pw, g.op("Exp", col(v, 2))), g.op("Mul", ph, g.op("Exp", col(v, 3)))
    tx = g.op("Sub", tx, g.op("Div", g.op("Sub", tw, one), g.scalar(2.0)))
    ty = g.op("Sub", ty, g.op("Div", g.op("Sub", th, one), g.scalar(2.0)))
    out = g.op("Concat", col(r, 0), tx, ty, g.op("Sub", g.op("Add", tx, tw), one),
               g.op("Sub", g.op("Add", ty, th), one), axis=1)
    return [g.reshape(out, (R, 5, 1, 1), (dyn[0], False, False, False))]


@onnx_emitter("BoxGroupOutput")
def box_group_output(g: OnnxGraph, n: LayerNode) -> list[str]:
    """MS-CNN / Cascade R-CNN's proposals for one image (see the module docstring)."""
    L = n.layer
    if L is None:
        raise n.error("needs the built layer to read its groups and bounds")
    G0 = len(L.groups[0][0])
    if n.bottom_shapes[0][0] != G0 or any(any(b) for b in n.bottom_batch):
        raise n.error(f"exported for a batch of one image: bottom 0 {tuple(n.bottom_shapes[0])} must have "
                      f"{G0} rows (one per anchor size) and no dynamic batch (export with -batch 1)")
    mode = str(L.nms_type)
    if mode in ("IOMU", "IOFU"):
        raise n.error(f"box_group_output_param.nms_type '{mode}' has no ONNX NonMaxSuppression form (IoU only)")
    if not L.iou_thr * (2 * L.min_size - 1) >= 1.001:  # see the module docstring: the fork's touching-box rule
        raise n.error(f"iou_thr {L.iou_thr:g} < 1 / (2 min_size - 1) with min_size {L.min_size:g}: the fork scores "
                      "boxes that touch along one pixel row as not overlapping and ONNX NonMaxSuppression does not, "
                      "which can then decide another box; not exported")
    one = g.scalar(1.0)
    boxes, scores = [], []
    for j, (fw, fh, stride) in enumerate(L.groups):
        Gj, C, H, W = (tuple(n.bottom_shapes[2 * j]) + (1, 1, 1))[:4]
        d = g.reshape(n.inputs[2 * j + 1], (Gj, 4, H, W))
        v = g.op("Add", g.op("Mul", d, g.const(np.asarray(L.std, f32).reshape(1, 4, 1, 1), "std")),
                 g.const(np.asarray(L.mean, f32).reshape(1, 4, 1, 1), "mean"))
        lo = g.const(np.array([L.bounds[0]] * 2 + [L.bounds[2]] * 2, f32).reshape(1, 4, 1, 1), "lo")
        hi = g.const(np.array([L.bounds[1]] * 2 + [L.bounds[3]] * 2, f32).reshape(1, 4, 1, 1), "hi")
        v = g.op("Min", g.op("Max", v, lo), hi)
        part = lambda a: g.op("Slice", v, g.ints([a]), g.ints([a + 1]), g.ints([1]))  # noqa: E731
        fws = g.const(np.asarray(fw, f32).reshape(Gj, 1, 1, 1), "field_w")
        fhs = g.const(np.asarray(fh, f32).reshape(Gj, 1, 1, 1), "field_h")
        cw = g.const(((np.arange(W, dtype=f32) + f32(0.5)) * f32(stride)).reshape(1, 1, 1, W), "centre_x")
        ch = g.const(((np.arange(H, dtype=f32) + f32(0.5)) * f32(stride)).reshape(1, 1, H, 1), "centre_y")
        bw, bh = g.op("Mul", fws, g.op("Exp", part(2))), g.op("Mul", fhs, g.op("Exp", part(3)))
        x = g.op("Sub", g.op("Add", g.op("Mul", part(0), fws), cw), g.op("Div", bw, g.scalar(2.0)))
        y = g.op("Sub", g.op("Add", g.op("Mul", part(1), fhs), ch), g.op("Div", bh, g.scalar(2.0)))
        x2, y2 = g.op("Sub", g.op("Add", x, bw), one), g.op("Sub", g.op("Add", y, bh), one)
        zero = g.scalar(0.0)  # ClipBBox to W * stride x H * stride (no - 1)
        b = g.op("Concat", g.op("Max", x, zero), g.op("Max", y, zero),
                 g.op("Min", x2, g.scalar(float(W * int(stride)))), g.op("Min", y2, g.scalar(float(H * int(stride)))),
                 axis=1)  # (G, 4, H, W)
        boxes.append(g.reshape(g.op("Transpose", b, perm=[0, 2, 3, 1]), (Gj * H * W, 4)))
        p0 = g.op("Slice", g.reshape(n.inputs[2 * j], (Gj, C, H, W)), g.ints([0]), g.ints([1]), g.ints([1]))
        scores.append(g.reshape(g.op("Sub", one, p0), (Gj * H * W,)))
    b = boxes[0] if len(boxes) == 1 else g.op("Concat", *boxes, axis=0)
    s = scores[0] if len(scores) == 1 else g.op("Concat", *scores, axis=0)
    col = lambda t, a: g.op("Slice", t, g.ints([a]), g.ints([a + 1]), g.ints([1]))  # noqa: E731
    w1 = g.op("Add", g.op("Sub", col(b, 2), col(b, 0)), one)
    h1 = g.op("Add", g.op("Sub", col(b, 3), col(b, 1)), one)
    size = g.scalar(float(L.min_size))
    ok = g.op("And", g.op("GreaterOrEqual", w1, size), g.op("GreaterOrEqual", h1, size))
    ok = g.op("And", g.op("Reshape", ok, g.ints([-1])), g.op("GreaterOrEqual", s, g.scalar(float(L.fg_thr))))
    b, s = g.op("Compress", b, ok, axis=0), g.op("Compress", s, ok, axis=0)
    count = g.op("Shape", s)
    if L.max_nms > 0:
        count = g.op("Min", count, g.ints([L.max_nms], "max_nms"))
    s, order = g.op("TopK", s, count, outputs=2, axis=0, largest=1, sorted=1, hint="sorted")  # ties: lower first
    b = g.op("Gather", b, order, axis=0)
    # NMS in exactly this order (scores k, k-1, ..., 1) on (x1, y1, x2 + 1, y2 + 1): the fork's + 1 sizes
    rank = g.op("Cast", g.op("Range", g.op("Squeeze", count, g.ints([0])), g.const(np.int64(0), "zero", np.int64),
                             g.const(np.int64(-1), "step", np.int64)), to=1)
    shifted = g.op("Add", b, g.const(np.array([0, 0, 1, 1], f32), "plus_one"))
    max_out = L.max_post if L.max_post > 0 else 2 ** 31 - 1
    sel = g.op("NonMaxSuppression", g.op("Unsqueeze", shifted, g.ints([0])), g.op("Reshape", rank, g.ints([1, 1, -1])),
               g.ints([max_out], "max_out"), g.scalar(float(L.iou_thr)), hint="nms")
    kept = g.op("Squeeze", g.op("Slice", sel, g.ints([2]), g.ints([3]), g.ints([1])), g.ints([1]))
    rows = g.op("Concat", g.op("Mul", col(g.op("Gather", b, kept, axis=0), 0), g.scalar(0.0)),
                g.op("Gather", b, kept, axis=0), g.op("Unsqueeze", g.op("Gather", s, kept, axis=0), g.ints([1])),
                axis=1)
    k = g.op("Max", g.op("Shape", kept), g.ints([1], "one"))
    stand_ins = ([0, 1, 1, 10, 10], [0] * 6)  # the fork's rows when no box is left
    tops = []
    for width, stand_in in zip((5, 6), stand_ins[: len(n.top_shapes)]):
        t = rows if width == 6 else g.op("Slice", rows, g.ints([0]), g.ints([5]), g.ints([1]))
        t = g.op("Concat", t, g.const(np.array([stand_in], f32), "no_box"), axis=0)
        tops.append(g.op("Reshape", g.op("Slice", t, g.ints([0]), k, g.ints([0])), g.ints([-1, width, 1, 1])))
    return tops


@onnx_emitter("InnerDistance")
def inner_distance(g: OnnxGraph, n: LayerNode) -> list[str]:
    """NormFace's InnerDistance: ``y = sum_k (x - w)^2`` (L2) or ``|x - w|`` (L1) per item and row of w."""
    p = param(n, "inner_distance_param")
    L = n.layer
    if L is None:
        raise n.error("needs the built layer to read its axis and weights")
    x_shape, axis, K = n.bottom_shapes[0], int(L.axis), int(L.K)
    M = math.prod(x_shape[:axis])
    x = g.reshape(n.inputs[0], (M, 1, K), (any(n.bottom_batch[0][:axis]), False, False))
    if L.own_weight:
        w = np.asarray(n.blobs[0], f32).reshape(int(L.num_output), K)
        if L.normalize:  # as the next forward rewrites the blob: rows / sqrt(w.w + 1e-6), in double
            w64 = w.astype(np.float64)
            w = (w64 / np.sqrt((w64 * w64).sum(1, keepdims=True) + 1e-6)).astype(f32)
        wt = g.const(w.reshape(1, -1, K), "weight")
        N = w.shape[0]
    else:
        N = math.prod(n.bottom_shapes[1]) // K
        if any(n.bottom_batch[1]):
            raise n.error(f"the weights bottom {tuple(n.bottom_shapes[1])} follows the batch; it must be static")
        wt = g.reshape(n.inputs[1], (1, N, K))
    diff = g.op("Sub", x, wt)
    dist = g.op("Abs", diff) if str(p.distance_type) == "L1" else g.op("Mul", diff, diff)
    y = g.reduce("ReduceSum", dist, [2], keepdims=False)
    return [g.reshape(y, n.top_shapes[0], n.top_batch[0])]
