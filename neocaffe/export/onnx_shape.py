"""ONNX emitters of Caffe's blob plumbing and arithmetic: Concat, Slice, Split, Flatten, Reshape, Crop (and
RCF's AutoCrop), Tile, Eltwise, Reduction, Silence, Parameter, BatchReindex, Filter, Embed, DummyData, ArgMax.

Reshapes use the static top shape of the net (Caffe's ``0``/``-1`` rules already resolved), with a
dynamic batch axis written as -1.
"""
from __future__ import annotations

import math

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.registry import LayerNode, onnx_emitter

f32 = np.float32
PROD, SUM, MAX = 0, 1, 2  # EltwiseParameter.EltwiseOp
R_SUM, R_ASUM, R_SUMSQ, R_MEAN = 1, 2, 3, 4  # ReductionParameter.ReductionOp
INT64_MIN = -(2 ** 63)


def _axis(n: LayerNode, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise n.error(f"axis {axis} out of range for a {rank}-D bottom")
    return axis % rank if rank else 0


def _legacy_axis(n: LayerNode, msg, legacy: str) -> int:
    rank = len(n.bottom_shapes[0])
    return int(getattr(msg, legacy)) if msg.HasField(legacy) else _axis(n, int(msg.axis), rank)


@onnx_emitter("Concat")
def concat(g: OnnxGraph, n: LayerNode) -> list[str]:
    if len(n.inputs) == 1:
        return [n.inputs[0]]
    return [g.op("Concat", *n.inputs, axis=_legacy_axis(n, n.param.concat_param, "concat_dim"))]


@onnx_emitter("Slice")
def slice_(g: OnnxGraph, n: LayerNode) -> list[str]:
    axis = _legacy_axis(n, n.param.slice_param, "slice_dim")
    sizes = [int(s[axis]) for s in n.top_shapes]
    if len(sizes) == 1:
        return [n.inputs[0]]
    return list(g.op("Split", n.inputs[0], g.ints(sizes, "split"), outputs=len(sizes), axis=axis))


@onnx_emitter("Split")
def split(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Caffe's Split copies its bottom to every top: in ONNX every consumer reads the one tensor."""
    return [n.inputs[0]] * len(n.top_shapes)


@onnx_emitter("Flatten", "Reshape")
def reshape(g: OnnxGraph, n: LayerNode) -> list[str]:
    return [g.reshape(n.inputs[0], n.top_shapes[0], n.top_batch[0])]


@onnx_emitter("Crop", "AutoCrop")
def crop(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Axes from ``axis`` on cropped to the second bottom's size at ``offset`` (one, or one per axis); a
    built layer gives its own window (HED's Crop, RCF's AutoCrop: the offsets their coordinate maps found)."""
    cp = n.param.crop_param
    x, ref = n.bottom_shapes
    if n.layer is not None:
        start, offs = n.layer.window(tuple(x), tuple(ref))
    elif n.type == "AutoCrop":
        raise n.error("needs the built layer: its offsets come from the net's coordinate maps")
    else:
        start = _axis(n, int(cp.axis), len(x))
        offs = [int(cp.offset[0] if len(cp.offset) == 1 else (cp.offset[i - start] if len(cp.offset) else 0))
                for i in range(start, len(x))]
    axes = list(range(start, len(x)))
    ends = [o + int(ref[i]) for o, i in zip(offs, axes)]
    return [g.op("Slice", n.inputs[0], g.ints(offs), g.ints(ends), g.ints(axes))]


@onnx_emitter("Tile")
def tile(g: OnnxGraph, n: LayerNode) -> list[str]:
    tp = n.param.tile_param
    rank = len(n.bottom_shapes[0])
    reps = [1] * rank
    reps[_axis(n, int(tp.axis), rank)] = int(tp.tiles)
    return [g.op("Tile", n.inputs[0], g.ints(reps, "repeats"))]


@onnx_emitter("Eltwise")
def eltwise(g: OnnxGraph, n: LayerNode) -> list[str]:
    """PROD: products in bottom order; SUM: ``sum(coeff_i * x_i)`` (a coefficient of 1 multiplies
    nothing); MAX: element-wise maximum."""
    ep = n.param.eltwise_param
    xs = n.inputs
    if ep.operation == MAX:
        return [g.op("Max", *xs)]
    if ep.operation == PROD:
        y = xs[0]
        for x in xs[1:]:
            y = g.op("Mul", y, x)
        return [y]
    coeff = [float(c) for c in ep.coeff] or [1.0] * len(xs)
    terms = [x if c == 1.0 else g.op("Mul", x, g.scalar(c)) for x, c in zip(xs, coeff)]
    y = terms[0]
    for t in terms[1:]:
        y = g.op("Add", y, t)
    return [y]


@onnx_emitter("Reduction")
def reduction(g: OnnxGraph, n: LayerNode) -> list[str]:
    """SUM/ASUM/SUMSQ/MEAN over ``axis`` and every later axis, times ``coeff`` (MEAN: ``coeff/count``)."""
    rp = n.param.reduction_param
    shape = n.bottom_shapes[0]
    axis = _axis(n, int(rp.axis), len(shape)) if shape else 0
    x = g.reshape(n.inputs[0], tuple(shape[:axis]) + (math.prod(shape[axis:]),),
                  tuple(n.bottom_batch[0][:axis]) + (False,))
    if rp.operation == R_ASUM:
        x = g.op("Abs", x)
    elif rp.operation == R_SUMSQ:
        x = g.op("Mul", x, x)
    y = g.reduce("ReduceSum", x, [axis], keepdims=False)
    coeff = f32(rp.coeff)
    if rp.operation == R_MEAN:
        coeff = f32(coeff / f32(math.prod(shape[axis:])))
    return [y if coeff == 1 else g.op("Mul", y, g.scalar(float(coeff)))]


@onnx_emitter("Silence")
def silence(g: OnnxGraph, n: LayerNode) -> list[str]:
    return []


@onnx_emitter("Parameter")
def parameter(g: OnnxGraph, n: LayerNode) -> list[str]:
    return [g.const(n.blobs[0], "parameter")]


@onnx_emitter("BatchReindex")
def batch_reindex(g: OnnxGraph, n: LayerNode) -> list[str]:
    idx = g.op("Cast", n.inputs[1], to=7)  # INT64, truncating like Caffe's static_cast<int>
    return [g.op("Gather", n.inputs[0], idx, axis=0)]


@onnx_emitter("Filter")
def filter_(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Items (axis 0) whose selector is non-zero: ONNX Compress (the output length depends on the data)."""
    sel = g.op("Reshape", n.inputs[-1], g.ints([-1]))
    keep = g.op("Not", g.op("Equal", sel, g.scalar(0.0)))
    return [g.op("Compress", x, keep, axis=0) for x in n.inputs[:-1]]


@onnx_emitter("Embed")
def embed(g: OnnxGraph, n: LayerNode) -> list[str]:
    y = g.op("Gather", g.const(n.blobs[0], "weight"), g.op("Cast", n.inputs[0], to=7), axis=0)
    return [g.op("Add", y, g.const(n.blobs[1], "bias")) if len(n.blobs) > 1 else y]


@onnx_emitter("DummyData")
def dummy_data(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Constant fillers only (any other filler draws new numbers on every forward)."""
    L = n.layer
    if L is None or any(f.type != "constant" for f in L.fillers):
        raise n.error("only constant fillers are exported (a random filler refills on every forward); "
                      "replace the layer by an Input layer")
    return [g.const(np.full(s, f32(f.value), f32), "dummy") for f, s in zip(L.fillers, n.top_shapes)]


@onnx_emitter("ArgMax")
def argmax(g: OnnxGraph, n: LayerNode) -> list[str]:
    """TopK on the input reversed along the axis, so that ties rank the larger index first (Caffe's
    partial_sort with std::greater); indices as floats. Without ``axis``: (N, 1 or 2, top_k)."""
    ap = n.param.argmax_param
    shape = n.bottom_shapes[0]
    k = g.ints([int(ap.top_k)], "k")
    if ap.HasField("axis"):
        axis = _axis(n, int(ap.axis), len(shape))
        x, length = n.inputs[0], int(shape[axis])
    else:
        axis, length = 1, math.prod(shape[1:])
        x = g.op("Flatten", n.inputs[0], axis=1)
    rev = g.op("Slice", x, g.ints([-1]), g.ints([INT64_MIN]), g.ints([axis]), g.ints([-1]), hint="reverse")
    vals, idx = g.op("TopK", rev, k, outputs=2, axis=axis, largest=1, sorted=1)
    idx = g.op("Cast", g.op("Sub", g.const(np.int64(length - 1), "last", np.int64), idx), to=1)
    if ap.HasField("axis"):
        return [vals if ap.out_max_val else idx]
    one = g.ints([1], "axis1")
    out = g.op("Unsqueeze", idx, one)
    if ap.out_max_val:
        out = g.op("Concat", out, g.op("Unsqueeze", vals, one), axis=1)
    return [g.reshape(out, n.top_shapes[0], n.top_batch[0])]
