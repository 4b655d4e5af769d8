"""Faster R-CNN's region proposals as ONNX operators: ``Proposal`` (neocaffe/layers/proposal.py, the
semantics of rbgirshick/py-faster-rcnn's ``lib/rpn/proposal_layer.py``), and a ``Python`` layer whose
``(module, layer)`` has a native stand-in (``python_layer.NATIVE_STAND_INS``) exported as that stand-in.

The Proposal graph, for one image (shapes are static at export, so the anchors are a constant):

1. anchors ``(H*W*A, 4)`` as the layer builds them (float64 anchors plus shifts, then float32), with
   their ``x2 - x1 + 1`` sizes and ``x1 + 0.5 * w`` centres as float32 constants;
   ``bbox_transform_inv`` as the same float32 operations in the same order; clipped by ``im_info``;
2. the min-size filter (``w, h >= min_size * im_info[2]``, compared in float64 as NumPy did) as a
   ``Compress``: the dropped boxes are gone, not pushed to the end;
3. the layer's two stable descending sorts: ``TopK`` puts equal values at the lower index first (the
   ONNX rule, onnxruntime's ``GreaterValueCmp``), so each sort runs on the reversed list to give ties
   the higher index first as ``sort(stable).flip`` does; the first keeps ``pre_nms_topn``, the second
   (py-faster-rcnn's NMS sorts again) turns the ties back into anchor order;
4. ``NonMaxSuppression`` on boxes given as ``(x1, y1, x2 + 1, y2 + 1)``: its intersection
   ``min(x2 + 1) - max(x1)`` and areas ``(x2 + 1 - x1)(y2 + 1 - y1)`` are the CUDA kernel's ``+1``
   ones, and it suppresses when IoU ``> iou_threshold`` (onnxruntime's ``SuppressByIOU``), as the
   kernel does. Its scores are ``k, k-1, ..., 1`` so that its order is exactly the sorted order
   (no tie rule of its own); ``max_output_boxes_per_class`` is ``post_nms_topn``;
5. RoIs ``(n, 5)`` with a zero batch column and, when asked, their scores ``(n, 1)``; ``n`` is
   dynamic (the net's later axes that follow it are dynamic too, see ``onnx.row_axes``).

Float32 rounding: ``x2 + 1 - x1`` here and ``x2 - x1 + 1`` in the layer can differ in the last bit,
so an IoU within ~1e-7 of the threshold may be decided differently (as may a width within an ulp
of the min size when onnxruntime's ``Exp`` differs from torch's by an ulp).
"""
from __future__ import annotations

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.registry import LayerNode, emitter_of, onnx_emitter
from neocaffe.layers.base import TEST
from neocaffe.layers.proposal import ProposalConfig, proposal_config
from neocaffe.layers.python_layer import NATIVE_STAND_INS

f32 = np.float32
FLOAT, DOUBLE = 1, 11  # onnx.TensorProto data types
INT64_MIN = -(2 ** 63)
#: layer types whose tops have as many rows (axis 0) as the data give (Cascade R-CNN's BoxGroupOutput
#: writes its kept RoIs, its ScaleRoute the routed ones; D-X-Y's FrcnnProposal its RoIs)
ROW_TYPES = {"Proposal", "BoxGroupOutput", "ScaleRoute", "FrcnnProposal"}


def stand_in_type(param) -> str:
    """The layer type ``param`` runs as: a ``Python`` layer with a native stand-in is that type."""
    if param.type == "Python":
        pp = param.python_param
        return NATIVE_STAND_INS.get((pp.module, pp.layer), "Python")
    return str(param.type)


def has_varying_rows(param) -> bool:
    """Whether the layer's tops have a data-dependent number of rows (axis 0)."""
    return stand_in_type(param) in ROW_TYPES


def anchor_constants(cfg: ProposalConfig, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor of a ``height x width`` map, ordered (h, w, anchor): the float32 sizes ``(w, h)`` and
    centres ``(x, y)`` that ``bbox_transform_inv`` computes from the layer's anchors."""
    sx = np.arange(width, dtype=np.float64) * cfg.feat_stride
    sy = np.arange(height, dtype=np.float64) * cfg.feat_stride
    shift_y, shift_x = np.meshgrid(sy, sx, indexing="ij")
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
    anchors = (cfg.anchors[None] + shifts).reshape(-1, 4).astype(f32)
    size = (anchors[:, 2:] - anchors[:, :2]) + f32(1)
    centre = anchors[:, :2] + f32(0.5) * size
    return size.astype(f32), centre.astype(f32)


def _reverse(g: OnnxGraph, x: str) -> str:
    return g.op("Slice", x, g.ints([-1]), g.ints([INT64_MIN]), g.ints([0]), g.ints([-1]), hint="reversed")


def _stable_descending(g: OnnxGraph, scores: str, count: str, k: str) -> str:
    """Positions of the ``k`` highest of the 1-D ``scores`` (``count`` long), ties at the higher
    position first: ``torch.sort(stable=True).indices.flip(0)[:k]``."""
    _, idx = g.op("TopK", _reverse(g, scores), k, outputs=2, axis=0, largest=1, sorted=1, hint="sort")
    return g.op("Sub", g.op("Sub", count, g.ints([1], "one")), idx, hint="order")


def _config(n: LayerNode) -> ProposalConfig:
    try:
        return proposal_config(n.param, int(getattr(n.layer, "phase", TEST)))
    except ValueError as e:
        raise n.error(str(e)) from None


@onnx_emitter("Proposal")
def proposal(g: OnnxGraph, n: LayerNode) -> list[str]:
    """See the module docstring. Bottoms: scores ``1 x 2A x H x W``, deltas ``1 x 4A x H x W``, ``im_info``."""
    cfg = _config(n)
    s, d = n.bottom_shapes[0], n.bottom_shapes[1]
    a = int(cfg.anchors.shape[0])
    if len(s) != 4 or s[0] != 1 or s[1] != 2 * a or tuple(d) != (1, 4 * a, *s[2:]) or any(n.bottom_batch[0]):
        raise n.error(f"exported for one image's scores 1 x {2 * a} x H x W and deltas 1 x {4 * a} x H x W "
                      f"({a} anchors); received {tuple(s)} and {tuple(d)} (export with -batch 1)")
    if int(np.prod(n.bottom_shapes[2])) < 3:
        raise n.error(f"im_info (bottom 2) must hold height, width, scale; received shape {tuple(n.bottom_shapes[2])}")
    size, centre = anchor_constants(cfg, int(s[2]), int(s[3]))

    nhwc = [0, 2, 3, 1]  # (h, w, anchor) order, as the layer flattens
    fg = g.op("Slice", n.inputs[0], g.ints([a]), g.ints([2 * a]), g.ints([1]), hint="fg")
    fg = g.op("Reshape", g.op("Transpose", fg, perm=nhwc), g.ints([-1]), hint="fg_scores")
    deltas = g.op("Reshape", g.op("Transpose", n.inputs[1], perm=nhwc), g.ints([-1, 4]), hint="deltas")
    col = lambda t, lo, hi: g.op("Slice", t, g.ints([lo]), g.ints([hi]), g.ints([1]), hint="cols")  # noqa: E731
    wh = g.const(size, "anchor_size")
    ctr = g.op("Add", g.op("Mul", col(deltas, 0, 2), wh), g.const(centre, "anchor_centre"), hint="centre")
    half = g.op("Mul", g.op("Mul", g.op("Exp", col(deltas, 2, 4)), wh), g.scalar(0.5), hint="half_size")
    boxes = g.op("Concat", g.op("Sub", ctr, half), g.op("Add", ctr, half), axis=1, hint="boxes")

    info = g.op("Reshape", n.inputs[2], g.ints([-1]), hint="im_info")
    limit = g.op("Sub", g.op("Gather", info, g.ints([1, 0, 1, 0], "wh_index"), axis=0), g.scalar(1.0), hint="limit")
    boxes = g.op("Max", g.op("Min", boxes, limit), g.scalar(0.0), hint="clipped")

    sides = g.op("Add", g.op("Sub", col(boxes, 2, 4), col(boxes, 0, 2)), g.scalar(1.0), hint="sides")
    floor = g.op("Mul", g.op("Cast", g.op("Gather", info, g.ints([2], "scale_index"), axis=0), to=DOUBLE),
                 g.const(np.float64(cfg.min_size), "min_size", np.float64), hint="min_size")
    big = g.op("GreaterOrEqual", g.op("Cast", sides, to=DOUBLE), floor, hint="big_enough")
    keep = g.op("Reshape", g.op("And", col(big, 0, 1), col(big, 1, 2)), g.ints([-1]), hint="keep")
    boxes = g.op("Compress", boxes, keep, axis=0, hint="kept_boxes")
    fg = g.op("Compress", fg, keep, axis=0, hint="kept_scores")

    count = g.op("Shape", fg, hint="count")
    k = g.op("Min", count, g.ints([cfg.pre_nms_topn], "pre_nms_topn")) if cfg.pre_nms_topn > 0 else count
    order = _stable_descending(g, fg, count, k)  # proposal_layer.py: order, then [:pre_nms_topn]
    boxes, fg = g.op("Gather", boxes, order, axis=0), g.op("Gather", fg, order, axis=0)
    order = _stable_descending(g, fg, k, k)  # gpu_nms sorts the candidates again
    boxes, fg = g.op("Gather", boxes, order, axis=0), g.op("Gather", fg, order, axis=0)

    plus_one = g.op("Add", boxes, g.const(np.array([0, 0, 1, 1], f32), "plus_one"), hint="nms_boxes")
    rank = g.op("Range", g.op("Squeeze", k, g.ints([0])), g.const(np.int64(0), "zero", np.int64),
                g.const(np.int64(-1), "minus_one", np.int64), hint="rank")
    rank = g.op("Reshape", g.op("Cast", rank, to=FLOAT), g.ints([1, 1, -1]), hint="nms_scores")
    max_out = g.ints([cfg.post_nms_topn], "post_nms_topn") if cfg.post_nms_topn > 0 else k
    threshold = g.scalar(float(f32(cfg.nms_thresh)))
    sel = g.op("NonMaxSuppression", g.op("Unsqueeze", plus_one, g.ints([0])), rank, max_out, threshold, hint="nms")
    kept = g.op("Reshape", g.op("Gather", sel, g.ints([2], "box_col"), axis=1), g.ints([-1]), hint="kept")

    zeros = g.op("ConstantOfShape", g.op("Concat", g.op("Shape", kept), g.ints([1], "one"), axis=0),
                 value=_zero(), hint="batch_index")
    rois = g.op("Concat", zeros, g.op("Gather", boxes, kept, axis=0), axis=1, hint="rois")
    tops = [rois]
    if len(n.top_shapes) > 1:
        tops.append(g.op("Unsqueeze", g.op("Gather", fg, kept, axis=0), g.ints([1]), hint="roi_scores"))
    return tops


def _zero():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, f32))


@onnx_emitter("Python")
def python_layer(g: OnnxGraph, n: LayerNode) -> list[str]:
    """A ``Python`` layer with a native stand-in, exported as the stand-in (which has its semantics);
    any other runs the user's code, which ONNX cannot hold: an error naming the layer."""
    pp = n.param.python_param
    stand_in = stand_in_type(n.param)
    emit = emitter_of(stand_in) if stand_in != "Python" else None
    if emit is None:
        known = ", ".join(f"{m}.{c}" for m, c in sorted(NATIVE_STAND_INS))
        if not n.bottom_shapes:
            raise n.error(f"reads its data from the user's Python class {pp.module}.{pp.layer}; a deployed net "
                          "takes its input from an Input layer (replace the layer, or name the input's shape: "
                          "caffe export -input_shape <blob>=N,C,H,W)")
        raise n.error(f"runs the user's Python class {pp.module}.{pp.layer}, which has no ONNX equivalent; "
                      f"the Python layers that export are those with a native stand-in ({known})")
    native = getattr(n.layer, "native", None)
    node = LayerNode(param=n.param, inputs=n.inputs, bottom_shapes=n.bottom_shapes, top_shapes=n.top_shapes,
                     blobs=n.blobs, layer=native if native is not None else n.layer, bottom_batch=n.bottom_batch,
                     top_batch=n.top_batch)
    return emit(g, node)
