"""SSD's DetectionOutput (weiliu89/caffe, branch ssd: detection_output_layer.cpp, util/bbox_util.cpp) as
ONNX operators, for one image with shared locations.

The fork: decode every prior's box (``code_type``: CORNER, CENTER_SIZE, CORNER_SIZE; variances from the
prior blob unless ``variance_encoded_in_target``); per class but the background, keep the scores above
``confidence_threshold``, the ``nms_param.top_k`` highest (stable order), then greedy NMS (a box goes
when its Jaccard overlap with a kept one exceeds ``nms_threshold``); with ``keep_top_k`` the highest
scores over all classes; rows ``[image, label, score, xmin, ymin, xmax, ymax]`` by label, then by
descending score; no detection: one row ``[0, -1, ..., -1]``. Output shape (1, 1, rows, 7).

Here: TopK per class picks the candidates, NonMaxSuppression (each class a "batch" of its candidates)
the survivors, TopK the ``keep_top_k``, and a TopK on the negated label (ties keep their order) the
rows' order. Adaptive NMS (``eta`` < 1) has no ONNX counterpart and is refused.
"""
from __future__ import annotations

import numpy as np

from neocaffe.export.onnx_fork import field, param
from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.registry import LayerNode, onnx_emitter
from neocaffe.layers import _refinedet

f32 = np.float32
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3  # PriorBoxParameter.CodeType


def _decode(g: OnnxGraph, loc: str, prior: str, var: str, code: int, in_target: bool) -> str:
    """Decoded boxes (P, 4) as xmin, ymin, xmax, ymax from loc (P, 4), priors and variances (P, 4)."""
    def col(t: str, a: int, b: int) -> str:
        return g.op("Slice", t, g.ints([a]), g.ints([b]), g.ints([1]), hint="col")

    scaled = loc if in_target else g.op("Mul", loc, var)
    if code == CORNER:
        return g.op("Add", prior, scaled)
    p_min, p_max = col(prior, 0, 2), col(prior, 2, 4)
    size = g.op("Sub", p_max, p_min)  # prior width, height
    if code == CORNER_SIZE:
        return g.op("Add", prior, g.op("Mul", scaled, g.op("Concat", size, size, axis=1)))
    if code != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code}")
    center = g.op("Div", g.op("Add", p_min, p_max), g.scalar(2.0))
    c = g.op("Add", g.op("Mul", col(scaled, 0, 2), size), center)
    half = g.op("Div", g.op("Mul", g.op("Exp", col(scaled, 2, 4)), size), g.scalar(2.0))
    return g.op("Concat", g.op("Sub", c, half), g.op("Add", c, half), axis=1)


@onnx_emitter("DetectionOutput")
def detection_output(g: OnnxGraph, n: LayerNode) -> list[str]:
    p = param(n, "detection_output_param")
    nms = field(p, "nms_param", None)
    num_classes = int(p.num_classes)
    code = int(field(p, "code_type", CORNER))
    eta = float(field(nms, "eta", 1.0)) if nms is not None else 1.0
    if n.bottom_shapes[0][0] != 1 or any(n.bottom_batch[0]):
        raise n.error(f"exported for a batch of one image; the loc bottom has shape {n.bottom_shapes[0]} "
                      "(export with -batch 1)")
    if not field(p, "share_location", True):
        raise n.error("share_location: false is not exported")
    if eta != 1.0:
        raise n.error(f"adaptive NMS (nms_param.eta {eta} < 1) has no ONNX equivalent")
    arm_conf_at, arm_loc_at, _ = _refinedet.detection_output_bottoms(p, [tuple(s) for s in n.bottom_shapes], n.error)
    if arm_conf_at is not None or arm_loc_at is not None:
        raise n.error("RefineDet's anchor refinement bottoms (arm_conf, arm_loc) are not exported")
    if code not in (CORNER, CENTER_SIZE, CORNER_SIZE):
        raise n.error(f"unknown code_type {code}")
    P = int(n.bottom_shapes[2][2]) // 4
    background = int(field(p, "background_label_id", 0))
    labels = [c for c in range(num_classes) if c != background]
    top_k = int(field(nms, "top_k", -1)) if nms is not None else -1
    k = P if top_k < 0 else min(top_k, P)
    keep_top_k = int(field(p, "keep_top_k", -1))
    threshold = field(p, "confidence_threshold", None)

    loc = g.op("Reshape", n.inputs[0], g.ints([P, 4]), hint="loc")
    priors = g.op("Reshape", n.inputs[2], g.ints([2, P, 4]), hint="priors")
    prior = g.op("Squeeze", g.op("Slice", priors, g.ints([0]), g.ints([1]), g.ints([0])), g.ints([0]))
    var = g.op("Squeeze", g.op("Slice", priors, g.ints([1]), g.ints([2]), g.ints([0])), g.ints([0]))
    boxes = _decode(g, loc, prior, var, code, bool(field(p, "variance_encoded_in_target", False)))

    conf = g.op("Transpose", g.op("Reshape", n.inputs[1], g.ints([P, num_classes])), perm=[1, 0])  # (C, P)
    conf = g.op("Gather", conf, g.ints(labels, "labels"), axis=0)
    top_v, top_i = g.op("TopK", conf, g.ints([k], "k"), outputs=2, axis=1, largest=1, sorted=1, hint="candidates")
    cand = g.op("Gather", boxes, top_i, axis=0)  # (classes, k, 4)
    nms_in = [cand, g.op("Unsqueeze", top_v, g.ints([1])), g.ints([k], "max_out"),
              g.scalar(float(f32(field(nms, "nms_threshold", 0.3) if nms is not None else 0.3)))]
    if threshold is not None:
        nms_in.append(g.scalar(float(f32(threshold))))
    sel = g.op("NonMaxSuppression", *nms_in)  # (M, 3): class row, 0, candidate
    pick = g.op("Gather", sel, g.ints([0, 2], "cols"), axis=1)
    score = g.op("GatherND", top_v, pick)
    box = g.op("Gather", boxes, g.op("GatherND", top_i, pick), axis=0)
    label = g.op("Gather", g.const(np.array(labels, f32), "label_values"),
                 g.op("Squeeze", g.op("Slice", pick, g.ints([0]), g.ints([1]), g.ints([1])), g.ints([1])), axis=0)

    m = g.op("Shape", score)
    count = g.op("Min", m, g.ints([keep_top_k], "keep")) if keep_top_k > -1 else m
    score, order = g.op("TopK", score, count, outputs=2, axis=0, largest=1, sorted=1, hint="keep_top_k")
    label = g.op("Gather", label, order, axis=0)
    _, by_label = g.op("TopK", g.op("Neg", label), count, outputs=2, axis=0, largest=1, sorted=1, hint="by_label")
    col = lambda t: g.op("Unsqueeze", g.op("Gather", t, by_label, axis=0), g.ints([1]))  # noqa: E731
    rows = g.op("Concat", g.op("Mul", col(label), g.scalar(0.0)), col(label), col(score),
                g.op("Gather", g.op("Gather", box, order, axis=0), by_label, axis=0), axis=1)
    none = g.const(np.array([[0, -1, -1, -1, -1, -1, -1]], f32), "no_detection")
    rows = g.op("Slice", g.op("Concat", rows, none, axis=0), g.ints([0]), g.op("Max", count, g.ints([1], "one")),
                g.ints([0]), hint="rows")
    return [g.op("Reshape", rows, g.ints([1, 1, -1, 7]))]
