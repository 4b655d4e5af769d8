"""ONNX emitters of the remaining deploy-time fork layers, each writing the arithmetic of its neocaffe layer
(whose docstring cites the fork, its commit and files):

* yjxiong/caffe ``action_recog`` @ 9831a2b4 (TSN; ``neocaffe.layers.tsn_layers``): ``BatchReduction`` (SUM and
  MEAN per level as ReduceSum over slices, MEAN times ``float32(1 / ticks)``; ``pos``: the diagonal of the
  ``axis`` x ``axis + 1`` square as a constant Gather; TOPK: the ``k`` largest by TopK, summed, divided by k);
  ``Gather`` / ``Scatter`` (the identity on one process, as the layer); ``SyncBN`` in TEST (the stored
  statistics: ``(x - mean) / sqrt(var + eps) * slope + bias``, that order). SyncBN in TRAIN (batch statistics
  and running updates) is refused.
* zhaoweicai/cascade-rcnn @ 2252f46 (``neocaffe.layers.cascade_boxes``): ``ScaleRoute``. ``sqrt(BBoxSize)``
  of every RoI, the rows with ``low <= scale < high`` (NonZero, in order); when none, the one RoI with the
  smallest ``|log2(scale / mid)|`` (ArgMin, first of equals). ONNX has no Log2: it is ``log`` in double over
  ``ln 2`` rounded to float32 (torch's float32 ``log2`` is within an ulp of it, so a near tie between two RoIs'
  distances could pick the other). Rows are dynamic (``onnx_proposal.ROW_TYPES`` lists the type). The layer's
  errors are not checks in the graph: with no finite distance the first RoI is taken, with no RoI at all
  ArgMin has nothing to choose from.
* D-X-Y/caffe-faster-rcnn ``dev`` @ 1ae964d (``neocaffe.layers.frcnn_proposal``): ``FrcnnProposal``, one image,
  with the built layer's JSON config (``rpn_*`` keys in TRAIN, ``test_rpn_*`` otherwise): the layer's float32
  anchors, ``bbox_transform_inv`` and clip as ``onnx_proposal`` writes them, the min-size filter ``x2 - x1 + 1
  >= im_info[2] * int(min_size)`` in float32 (``Compress``), ONE stable descending sort (ties: later box first),
  the first ``pre_nms_top_n``, then ``NonMaxSuppression`` in that order on ``(x1, y1, x2 + 1, y2 + 1)`` (the
  ``+ 1`` IoU, ``> thresh``) keeping ``post_nms_top_n``. Tops ``(n, 5, 1, 1)``, ``(n, 1, 1, 1)``, n dynamic.
  Rounding caveats as ``onnx_proposal``'s (``x2 + 1 - x1`` vs ``x2 - x1 + 1`` in the IoU).
* hszhao/PSANet's DeepLab caffe @ 798bdc9 (``neocaffe.layers.domain_transform``): ``DomainTransform`` and
  ``DomainTransformForwardOnly``, unrolled for the static H and W: per iteration the weight image
  ``clip(exp_double((1 + g * spatial / range) * mult), min_weight, 1)``, set to 0 outside each image's size
  (bottom 2, truncated to int; a zero weight leaves the pixel as it is, which is the layer's copy outside the
  size), then the four recursive passes ``y[i] + w * (y[j] - y[i])``, one Sub/Mul/Add per column or row. The
  layer refuses sizes beyond H x W; the graph uses the whole map there. A pass along W is ``3 (W - 1)`` nodes
  (along H ``3 (H - 1)``), ``4 num_iter`` passes in all.
* zhaoweicai/cascade-rcnn @ 2252f46 (``neocaffe.layers.cascade_output``): ``FrcnnOutput``, one image, the
  detections only (``save_output_param``'s files are the layer's side effect: refused when it would write them).
  Every RoI's boxes decoded (DecodeBBoxesWithPrior, ``exp`` in double) and clipped to bottom 3's size; per class
  ``1 .. C-1`` the RoIs sorted by score (``TopK``: ties lower index first, the layer's stable sort), those with
  ``prob >= conf_thr`` a prefix; the fork's overlap of every pair (its ``+ 1`` sizes, intersection 0 when ``ix1 >
  ix2`` or ``iy1 >= iy2``, IOU / IOMU / IOFU denominators, 0 for an invalid box or ``den <= 0``) ``> iou_thr``,
  and its greedy NMS as a ``Loop`` over the sorted positions (the kept box at position i removes the later ones
  it overlaps), all classes at once: ``(C - 1) x R x R`` booleans. Rows ``(0, box, c, score)`` class by class;
  ``max_det_num``: the best ``max_det_num`` by ``TopK`` (ties: the earlier row), kept in that class order; the
  stand-in row ``(0, -1, ..., -1)`` first. The layer's checks (a RoI of another image, ``x2 < x1``) are not in
  the graph.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from neocaffe.export.onnx_graph import OnnxGraph, helper, onnx
from neocaffe.export.onnx_proposal import _stable_descending
from neocaffe.export.registry import LayerNode, onnx_emitter
from neocaffe.layers.base import TEST, TRAIN

f32 = np.float32
FLOAT, DOUBLE, INT64 = 1, 11, 7  # onnx.TensorProto data types
SUM, MEAN, TOPK = 1, 4, 5  # ReductionParameter.ReductionOp
FLT_MAX = 3.4028234663852886e38


def _built(n: LayerNode, what: str):
    if n.layer is None:
        raise n.error(f"needs the built layer to read {what}")
    return n.layer


def _cols(g: OnnxGraph, t: str, lo: int, hi: int, axis: int = 1) -> str:
    return g.op("Slice", t, g.ints([lo]), g.ints([hi]), g.ints([axis]), hint="cols")


# -- TSN ------------------------------------------------------------------------------------------
@onnx_emitter("BatchReduction")
def batch_reduction(g: OnnxGraph, n: LayerNode) -> list[str]:
    """TSN's BatchReduction (reads the built layer's op, levels, axis, k, pos)."""
    L = _built(n, "its levels and axis")
    s, dyn = tuple(n.bottom_shapes[0]), n.bottom_batch[0]
    a = int(L.axis)
    if any(dyn[a:]):
        raise n.error(f"the reduced axis {a} (or a later one) follows the batch in {tuple(s)}; export with a fixed "
                      "-batch")
    num, S, rest = math.prod(s[:a]), int(s[a]), math.prod(s[a + 1:])
    x = g.reshape(n.inputs[0], (num, S, rest), (any(dyn[:a]), False, False))
    if L.pos:
        t = int(L.ticks[0])
        x = g.reshape(x, (num, t * t, rest // t), (any(dyn[:a]), False, False))
        diag = g.op("Gather", x, g.ints([i * (t + 1) for i in range(t)], "diagonal"), axis=1)  # (num, t, step)
        y = g.reduce("ReduceSum", diag, [1], keepdims=False)
        if L.op == MEAN:
            y = g.op("Mul", y, g.scalar(float(f32(1.0 / t))))
    elif L.op == TOPK:
        vals, _ = g.op("TopK", x, g.ints([int(L.k)], "k"), outputs=2, axis=1, largest=1, sorted=1)
        y = g.op("Div", g.reduce("ReduceSum", vals, [1], keepdims=False), g.scalar(float(L.k)))
    else:
        parts, start = [], 0
        for t in L.ticks:
            seg = g.reduce("ReduceSum", _cols(g, x, start, start + int(t)), [1], keepdims=True)
            parts.append(g.op("Mul", seg, g.scalar(float(f32(1) / f32(t)))) if L.op == MEAN else seg)
            start += int(t)
        y = parts[0] if len(parts) == 1 else g.op("Concat", *parts, axis=1)
    return [g.reshape(y, n.top_shapes[0], n.top_batch[0])]


@onnx_emitter("Gather", "Scatter")
def identity(g: OnnxGraph, n: LayerNode) -> list[str]:
    """TSN's MPI Gather/Scatter on one process: every top is its bottom."""
    return list(n.inputs)


@onnx_emitter("SyncBN")
def sync_bn(g: OnnxGraph, n: LayerNode) -> list[str]:
    """TSN's SyncBN in TEST: the stored statistics (blobs slope, bias, mean, variance, each 1 x C)."""
    phase = int(getattr(n.layer, "phase", TEST))
    if phase == TRAIN:
        raise n.error("in TRAIN SyncBN normalises with the batch statistics and updates its stored ones; "
                      "export the TEST phase")
    if len(n.blobs) != 4:
        raise n.error(f"expected 4 blobs (slope, bias, mean, variance); received {len(n.blobs)}")
    rank = len(n.bottom_shapes[0])
    C = int(n.bottom_shapes[0][1])
    eps = float(f32(n.param.bn_param.eps))
    view = (1, C) + (1,) * (rank - 2)
    c = lambda i, hint: g.const(np.asarray(n.blobs[i], f32).reshape(view), hint)  # noqa: E731
    std = g.op("Sqrt", g.op("Add", c(3, "variance"), g.scalar(eps)))
    y = g.op("Div", g.op("Sub", n.inputs[0], c(2, "mean")), std)
    return [g.op("Add", g.op("Mul", y, c(0, "slope")), c(1, "bias"))]


# -- Cascade R-CNN's ScaleRoute ---------------------------------------------------------------------
@onnx_emitter("ScaleRoute")
def scale_route(g: OnnxGraph, n: LayerNode) -> list[str]:
    """The RoIs (and every bottom's rows) whose scale is in ``[low, high)`` (see the module docstring)."""
    L = _built(n, "its scales")
    legacy = [tuple(s) + (1,) * (4 - len(s)) for s in n.bottom_shapes]
    rois = g.op("Reshape", n.inputs[0], g.ints([-1, math.prod(legacy[0][1:])]), hint="rois")
    x1, y1, x2, y2 = (_cols(g, rois, c, c + 1) for c in (1, 2, 3, 4))
    one = g.scalar(1.0)
    w, h = g.op("Add", g.op("Sub", x2, x1), one), g.op("Add", g.op("Sub", y2, y1), one)
    bad = g.op("Or", g.op("Less", x2, x1), g.op("Less", y2, y1))
    size = g.op("Where", bad, g.scalar(0.0), g.op("Mul", w, h), hint="bbox_size")
    scale = g.op("Reshape", g.op("Sqrt", size), g.ints([-1]), hint="scale")
    inside = g.op("And", g.op("GreaterOrEqual", scale, g.scalar(L.low)), g.op("Less", scale, g.scalar(L.high)))
    sel = g.op("Reshape", g.op("NonZero", inside), g.ints([-1]), hint="selected")
    ratio = g.op("Cast", g.op("Div", scale, g.scalar(float(L.mid))), to=DOUBLE)
    log2 = g.op("Cast", g.op("Div", g.op("Log", ratio), g.const(np.float64(math.log(2.0)), "ln2", np.float64)),
                to=FLOAT)
    dist = g.op("Abs", log2)
    dist = g.op("Where", g.op("Less", dist, g.scalar(FLT_MAX)), dist, g.scalar(math.inf), hint="distance")
    nearest = g.op("ArgMin", dist, axis=0, keepdims=1, select_last_index=0)
    count = g.op("Max", g.op("Shape", sel), g.ints([1], "one"))
    sel = g.op("Slice", g.op("Concat", sel, nearest, axis=0), g.ints([0]), count, g.ints([0]), hint="routed")
    return [g.op("Reshape", g.op("Gather", x, sel, axis=0), g.ints([-1, *s[1:]]))
            for x, s in zip(n.inputs, legacy)]


# -- D-X-Y's FrcnnProposal --------------------------------------------------------------------------
@onnx_emitter("FrcnnProposal")
def frcnn_proposal(g: OnnxGraph, n: LayerNode) -> list[str]:
    """See the module docstring. Bottoms: probabilities ``1 x 2A x H x W``, deltas ``1 x 4A x H x W``, ``im_info``."""
    from neocaffe.layers.frcnn_common import anchor_grid

    L = _built(n, "its JSON config (window_data_param.config)")
    cfg = L.cfg
    if int(L.phase) == TRAIN:
        pre, post, thresh, min_size = cfg.rpn_pre_nms_top_n, cfg.rpn_post_nms_top_n, cfg.rpn_nms_thresh, cfg.rpn_min_size
    else:
        pre, post = cfg.test_rpn_pre_nms_top_n, cfg.test_rpn_post_nms_top_n
        thresh, min_size = cfg.test_rpn_nms_thresh, cfg.test_rpn_min_size
    a = int(cfg.n_anchors)
    d = tuple(n.bottom_shapes[1]) + (1,) * (4 - len(n.bottom_shapes[1]))
    if d[0] != 1 or any(any(b) for b in n.bottom_batch):
        raise n.error(f"exported for one image (the fork's CHECK); deltas {tuple(n.bottom_shapes[1])}"
                      f"{' with a dynamic batch' if any(any(b) for b in n.bottom_batch) else ''} (export with -batch 1)")
    H, W = int(d[2]), int(d[3])
    if int(pre) <= 0 or int(post) <= 0:  # the layer: no RoI
        return [g.const(np.zeros((0,) + tuple(s[1:]), f32), "no_roi") for s in n.top_shapes]
    anchors = anchor_grid(cfg, H, W, torch.float32, torch.device("cpu")).numpy()
    size = (anchors[:, 2:] - anchors[:, :2]) + f32(1)
    centre = anchors[:, :2] + f32(0.5) * size

    nhwc = [0, 2, 3, 1]
    fg = _cols(g, g.op("Reshape", n.inputs[0], g.ints([1, -1, H, W])), a, 2 * a)
    fg = g.op("Reshape", g.op("Transpose", fg, perm=nhwc), g.ints([-1]), hint="fg_scores")
    deltas = g.op("Reshape", g.op("Transpose", g.op("Reshape", n.inputs[1], g.ints([1, 4 * a, H, W])), perm=nhwc),
                  g.ints([-1, 4]), hint="deltas")
    wh = g.const(size.astype(f32), "anchor_size")
    ctr = g.op("Add", g.op("Mul", _cols(g, deltas, 0, 2), wh), g.const(centre.astype(f32), "anchor_centre"))
    half = g.op("Mul", g.op("Mul", g.op("Exp", _cols(g, deltas, 2, 4)), wh), g.scalar(0.5), hint="half_size")
    boxes = g.op("Concat", g.op("Sub", ctr, half), g.op("Add", ctr, half), axis=1, hint="boxes")
    info = g.op("Reshape", n.inputs[2], g.ints([-1]), hint="im_info")
    limit = g.op("Sub", g.op("Gather", info, g.ints([1, 0, 1, 0], "wh_index"), axis=0), g.scalar(1.0))
    boxes = g.op("Max", g.op("Min", boxes, limit), g.scalar(0.0), hint="clipped")

    sides = g.op("Add", g.op("Sub", _cols(g, boxes, 2, 4), _cols(g, boxes, 0, 2)), g.scalar(1.0), hint="sides")
    floor = g.op("Mul", g.op("Gather", info, g.ints([2], "scale_index"), axis=0), g.scalar(float(int(min_size))))
    big = g.op("GreaterOrEqual", sides, floor, hint="big_enough")
    keep = g.op("Reshape", g.op("And", _cols(g, big, 0, 1), _cols(g, big, 1, 2)), g.ints([-1]), hint="keep")
    boxes = g.op("Compress", boxes, keep, axis=0, hint="kept_boxes")
    fg = g.op("Compress", fg, keep, axis=0, hint="kept_scores")

    count = g.op("Shape", fg, hint="count")
    k = g.op("Min", count, g.ints([int(pre)], "pre_nms_top_n"))
    order = _stable_descending(g, fg, count, k)
    boxes, fg = g.op("Gather", boxes, order, axis=0), g.op("Gather", fg, order, axis=0)

    plus_one = g.op("Add", boxes, g.const(np.array([0, 0, 1, 1], f32), "plus_one"), hint="nms_boxes")
    rank = g.op("Range", g.op("Squeeze", k, g.ints([0])), g.const(np.int64(0), "zero", np.int64),
                g.const(np.int64(-1), "minus_one", np.int64), hint="rank")
    rank = g.op("Reshape", g.op("Cast", rank, to=FLOAT), g.ints([1, 1, -1]), hint="nms_scores")
    sel = g.op("NonMaxSuppression", g.op("Unsqueeze", plus_one, g.ints([0])), rank, g.ints([int(post)], "post"),
               g.scalar(float(f32(thresh))), hint="nms")
    kept = g.op("Reshape", _cols(g, sel, 2, 3), g.ints([-1]), hint="kept")
    kb = g.op("Gather", boxes, kept, axis=0)
    rois = g.op("Concat", g.op("Mul", _cols(g, kb, 0, 1), g.scalar(0.0)), kb, axis=1, hint="rois")
    tops = [g.op("Reshape", rois, g.ints([-1, 5, 1, 1]))]
    if len(n.top_shapes) > 1:
        tops.append(g.op("Reshape", g.op("Gather", fg, kept, axis=0), g.ints([-1, 1, 1, 1]), hint="roi_scores"))
    return tops


# -- DeepLab's DomainTransform ----------------------------------------------------------------------
def _pass(g: OnnxGraph, y: str, w: str, axis: int, length: int, reverse: bool) -> str:
    """One recursive pass along ``axis`` (3: columns, 2: rows), unrolled over its ``length`` entries."""
    if length < 2:
        return y
    ys = list(g.op("Split", y, g.ints([1] * length), axis=axis, outputs=length, hint="entry"))
    ws = list(g.op("Split", w, g.ints([1] * length), axis=axis, outputs=length, hint="weight"))
    steps = range(length - 2, -1, -1) if reverse else range(1, length)
    for i in steps:
        j, k = (i + 1, i + 1) if reverse else (i - 1, i)
        ys[i] = g.op("Add", ys[i], g.op("Mul", ws[k], g.op("Sub", ys[j], ys[i])))
    return g.op("Concat", *ys, axis=axis, hint="filtered")


def _dt_settings(n: LayerNode) -> tuple[int, float, float, float]:
    p = n.param.domain_transform_param
    L = n.layer
    if L is not None:
        return int(L.num_iter), float(L.spatial), float(L.range), float(L.min_weight)
    return int(p.num_iter), float(f32(p.spatial_sigma)), float(f32(p.range_sigma)), float(f32(p.min_weight))


@onnx_emitter("DomainTransform", "DomainTransformForwardOnly")
def domain_transform(g: OnnxGraph, n: LayerNode) -> list[str]:
    """DeepLab's edge-aware recursive filter (see the module docstring): scores, reference gradient, sizes."""
    iters, spatial, rng, lo = _dt_settings(n)
    if iters <= 0 or spatial <= 0 or rng <= 0 or lo < 0:
        raise n.error(f"domain_transform_param num_iter {iters}, spatial_sigma {spatial}, range_sigma {rng}, "
                      f"min_weight {lo}: expected positive, positive, positive, non-negative")
    N, C, H, W = (int(v) for v in n.bottom_shapes[0])
    if any(n.bottom_batch[0][1:]):
        raise n.error(f"the scores' C, H, W must be static; received {tuple(n.bottom_shapes[0])}")
    batch = bool(n.bottom_batch[0][0])
    hw = g.op("Cast", g.reshape(n.inputs[2], (N, 2), (batch, False)), to=INT64, hint="image_size")  # truncates
    rows = g.const(np.arange(H, dtype=np.int64).reshape(1, 1, H, 1), "rows", np.int64)
    cols = g.const(np.arange(W, dtype=np.int64).reshape(1, 1, 1, W), "cols", np.int64)
    h = g.op("Reshape", _cols(g, hw, 0, 1), g.ints([-1, 1, 1, 1]))
    w = g.op("Reshape", _cols(g, hw, 1, 2), g.ints([-1, 1, 1, 1]))
    inside = g.op("And", g.op("Less", rows, h), g.op("Less", cols, w), hint="inside")  # (N, 1, H, W)
    mult2 = float(f32(spatial) / f32(rng))
    y = n.inputs[0]
    for k in range(iters):
        sigma = float(f32(spatial * math.sqrt(3.0) * 2.0 ** (iters - (k + 1.0)) / math.sqrt(4.0 ** iters - 1.0)))
        mult1 = float(f32(-math.sqrt(2.0) / sigma))
        arg = g.op("Mul", g.op("Add", g.scalar(1.0), g.op("Mul", n.inputs[1], g.scalar(mult2))), g.scalar(mult1))
        wt = g.op("Cast", g.op("Exp", g.op("Cast", arg, to=DOUBLE)), to=FLOAT)
        wt = g.op("Clip", wt, g.scalar(lo), g.scalar(1.0))
        wt = g.op("Where", inside, wt, g.scalar(0.0), hint=f"weight_{k}")
        for axis, length, rev in ((3, W, False), (3, W, True), (2, H, False), (2, H, True)):
            y = _pass(g, y, wt, axis, length, rev)
    return [y if y != n.inputs[0] else g.op("Identity", y)]


# -- Cascade R-CNN's FrcnnOutput --------------------------------------------------------------------
def _fork_overlap(g: OnnxGraph, a: str, b: str, mode: str) -> str:
    """The fork's JaccardOverlap of boxes ``a`` (..., R, 1, 4) (the earlier box) and ``b`` (..., 1, R, 4)."""
    c = lambda t, i: g.op("Slice", t, g.ints([i]), g.ints([i + 1]), g.ints([-1]))  # noqa: E731
    one, zero = g.scalar(1.0), g.scalar(0.0)

    def size(t: str) -> tuple[str, str]:
        invalid = g.op("Or", g.op("Less", c(t, 2), c(t, 0)), g.op("Less", c(t, 3), c(t, 1)))
        area = g.op("Mul", g.op("Add", g.op("Sub", c(t, 2), c(t, 0)), one), g.op("Add", g.op("Sub", c(t, 3), c(t, 1)), one))
        return g.op("Where", invalid, zero, area), invalid

    ix1, iy1 = g.op("Max", c(a, 0), c(b, 0)), g.op("Max", c(a, 1), c(b, 1))
    ix2, iy2 = g.op("Min", c(a, 2), c(b, 2)), g.op("Min", c(a, 3), c(b, 3))
    inter = g.op("Mul", g.op("Add", g.op("Sub", ix2, ix1), one), g.op("Add", g.op("Sub", iy2, iy1), one))
    inter = g.op("Where", g.op("Or", g.op("Greater", ix1, ix2), g.op("GreaterOrEqual", iy1, iy2)), zero, inter)
    (sa, bad_a), (sb, bad_b) = size(a), size(b)
    if mode == "IOMU":
        den = g.op("Min", sa, sb)
    elif mode == "IOFU":
        den = sa
    else:
        den = g.op("Sub", g.op("Add", sa, sb), inter)
    bad = g.op("Or", g.op("Or", bad_a, bad_b), g.op("LessOrEqual", den, zero))
    return g.op("Where", bad, zero, g.op("Div", inter, g.op("Where", bad, one, den)), hint="overlap")


def _greedy_loop(g: OnnxGraph, n: LayerNode, over: str, alive: str, count: str) -> str:
    """``alive`` (K, R) after the greedy NMS: for i in 0..R-1, a live box i removes ``over[:, i]``'s later ones."""
    with g.scope(g.fresh("nms_loop")):
        it, cond, cur = g.fresh("i"), g.fresh("cond"), g.fresh("alive_in")
        first = len(g.nodes)
        row = g.op("Gather", over, it, axis=1)  # (K, R): box i's overlaps (later positions only)
        live = g.op("Unsqueeze", g.op("Gather", cur, it, axis=1), g.ints([1]))
        out = g.op("And", cur, g.op("Not", g.op("And", row, live)), hint="alive_out")
        cond_out = g.op("Identity", cond, hint="cond_out")
        nodes = g.nodes[first:]
        del g.nodes[first:]
    for t in list(g.producer):
        if g.producer[t] >= first:
            del g.producer[t]
    B = onnx.TensorProto.BOOL
    body = helper.make_graph(nodes, f"{n.name}_nms_body",
                             [helper.make_tensor_value_info(it, onnx.TensorProto.INT64, []),
                              helper.make_tensor_value_info(cond, B, []),
                              helper.make_tensor_value_info(cur, B, [None, None])],
                             [helper.make_tensor_value_info(cond_out, B, []),
                              helper.make_tensor_value_info(out, B, [None, None])])
    return g.op("Loop", g.op("Squeeze", count, g.ints([0])), "", alive, body=body, hint="nms_kept")


@onnx_emitter("FrcnnOutput")
def frcnn_output(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Cascade R-CNN's per-class detections of one image (see the module docstring)."""
    L = _built(n, "its thresholds and box statistics")
    if getattr(L, "saver", None) is not None:
        raise n.error("save_output_param writes result files at every forward, which an ONNX graph cannot do; "
                      "export a deploy net without save_output_param.output_directory")
    if any(n.bottom_batch[3]):
        raise n.error(f"bottom 3 (the input size 1 x 2) follows the batch: {tuple(n.bottom_shapes[3])}")
    C = int((tuple(n.bottom_shapes[0]) + (1,))[1])
    if C < 2:
        return [g.const(np.array([[0, -1, -1, -1, -1, -1, -1]], f32).reshape(1, 7, 1, 1), "no_detection")]
    K = C - 1
    prob = g.op("Reshape", n.inputs[0], g.ints([-1, C]), hint="prob")
    k = C if L.cls_aware else 2
    d = g.op("Reshape", n.inputs[1], g.ints([-1, k, 4]), hint="deltas")
    rois = g.op("Reshape", n.inputs[2], g.ints([-1, math.prod(tuple(n.bottom_shapes[2])[1:])]))
    c = lambda t, i: g.op("Slice", t, g.ints([i]), g.ints([i + 1]), g.ints([-1]))  # noqa: E731
    x1, y1, x2, y2 = (g.op("Unsqueeze", c(rois, i), g.ints([1])) for i in (1, 2, 3, 4))  # (R, 1, 1)
    one = g.scalar(1.0)
    pw, ph = g.op("Add", g.op("Sub", x2, x1), one), g.op("Add", g.op("Sub", y2, y1), one)
    cx, cy = g.op("Mul", g.scalar(0.5), g.op("Add", x2, x1)), g.op("Mul", g.scalar(0.5), g.op("Add", y2, y1))
    v = g.op("Add", g.op("Mul", d, g.const(np.asarray(L.std, f32), "std")), g.const(np.asarray(L.mean, f32), "mean"))
    ex = lambda t: g.op("Cast", g.op("Exp", g.op("Cast", t, to=DOUBLE)), to=FLOAT)  # noqa: E731
    tx, ty = g.op("Add", g.op("Mul", c(v, 0), pw), cx), g.op("Add", g.op("Mul", c(v, 1), ph), cy)
    tw, th = g.op("Mul", pw, ex(c(v, 2))), g.op("Mul", ph, ex(c(v, 3)))
    half = lambda t: g.op("Div", g.op("Sub", t, one), g.scalar(2.0))  # noqa: E731
    tx, ty = g.op("Sub", tx, half(tw)), g.op("Sub", ty, half(th))
    size = g.op("Reshape", n.inputs[3], g.ints([2]), hint="image_size")
    mh, mw = g.op("Gather", size, g.ints([0], "h_index")), g.op("Gather", size, g.ints([1], "w_index"))
    zero = g.scalar(0.0)
    boxes = g.op("Concat", g.op("Max", tx, zero), g.op("Max", ty, zero),
                 g.op("Min", g.op("Sub", g.op("Add", tx, tw), one), mw),
                 g.op("Min", g.op("Sub", g.op("Add", ty, th), one), mh), axis=2, hint="boxes")  # (R, k, 4)
    if L.cls_aware:  # class c's box: deltas of class c; class-agnostic: deltas 4-7 for every class
        boxes = g.op("Slice", boxes, g.ints([1]), g.ints([C]), g.ints([1]))
    else:
        boxes = g.op("Expand", g.op("Slice", boxes, g.ints([1]), g.ints([2]), g.ints([1])), g.ints([1, K, 1]))
    boxes = g.op("Transpose", boxes, perm=[1, 0, 2], hint="class_boxes")  # (K, R, 4)
    scores = g.op("Transpose", g.op("Slice", prob, g.ints([1]), g.ints([C]), g.ints([1])), perm=[1, 0])  # (K, R)
    count = g.op("Slice", g.op("Shape", scores), g.ints([1]), g.ints([2]), hint="rois_count")
    scores, order = g.op("TopK", scores, count, outputs=2, axis=1, largest=1, sorted=1, hint="sorted")
    boxes = g.op("GatherElements", boxes, g.op("Expand", g.op("Unsqueeze", order, g.ints([2])),
                                                g.op("Shape", boxes)), axis=1, hint="sorted_boxes")
    passed = g.op("GreaterOrEqual", scores, g.scalar(float(L.conf_thr)), hint="passed")
    over = g.op("Greater", _fork_overlap(g, g.op("Unsqueeze", boxes, g.ints([2])), g.op("Unsqueeze", boxes, g.ints([1])),
                                         str(L.nms_type)), g.scalar(float(L.iou_thr)))
    over = g.op("Squeeze", over, g.ints([3]))  # (K, R, R)
    pos = g.op("Range", g.op("Squeeze", count, g.ints([0])), g.const(np.int64(0), "zero", np.int64),
               g.const(np.int64(-1), "minus_one", np.int64))  # any order: only i < j matters
    later = g.op("Less", g.op("Unsqueeze", pos, g.ints([0])), g.op("Unsqueeze", pos, g.ints([1])))  # (R, R): j > i
    over = g.op("And", over, later, hint="suppresses")
    kept = g.op("Reshape", _greedy_loop(g, n, over, passed, count), g.ints([-1]))
    labels = g.const(np.arange(1, C, dtype=f32).reshape(K, 1, 1), "labels")
    zeros = g.op("Expand", zero, g.op("Shape", c(boxes, 0)), hint="zeros")  # (K, R, 1)
    rows = g.op("Concat", zeros, boxes, g.op("Add", zeros, labels), g.op("Unsqueeze", scores, g.ints([2])), axis=2)
    dets = g.op("Compress", g.op("Reshape", rows, g.ints([-1, 7])), kept, axis=0, hint="detections")
    if L.max_det > 0:
        score = g.op("Reshape", c(dets, 6), g.ints([-1]))
        m = g.op("Min", g.op("Shape", score), g.ints([int(L.max_det)], "max_det"))
        _, best = g.op("TopK", score, m, outputs=2, axis=0, largest=1, sorted=1, hint="best")
        best, _ = g.op("TopK", g.op("Cast", best, to=DOUBLE), m, outputs=2, axis=0, largest=0, sorted=1)
        dets = g.op("Gather", dets, g.op("Cast", best, to=INT64), axis=0, hint="best_rows")
    stand_in = g.const(np.array([[0, -1, -1, -1, -1, -1, -1]], f32), "stand_in")
    return [g.op("Reshape", g.op("Concat", stand_in, dets, axis=0), g.ints([-1, 7, 1, 1]))]
