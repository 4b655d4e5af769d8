"""ONNX emitters of C3D's 3-D layers, R-FCN's PSROIPooling and Ristretto's quantized layers, each writing the
arithmetic of its neocaffe layer (whose docstring cites the fork):

* C3D-v1.0 (facebookarchive/C3D @ 71336a2; ``neocaffe.layers.c3d``, ``c3d_v2v``): ``Convolution3D`` is a 3-D
  Conv, its output length ``(in + 2 pad - k) / stride + 1`` in C's truncating division (an input shorter than
  the kernel reads zeros past the padded end: larger end pads); ``Deconvolution3D`` a 3-D ConvTranspose;
  ``Pooling3D`` its output size ``ceil((in + 2 pad - k) / stride) + 1`` with no clipping of the last window:
  MAX over the bottom padded at the end with -FLT_MAX (a window past the bottom gives -FLT_MAX, as the fork);
  AVE the window sum (zeros in the padding) divided by the fork's ``pool_size`` (the window clipped at the padded
  end; 0/0 gives NaN where the fork does), as AveragePool times ``k^3 / pool_size``.
* R-FCN (daijifeng001/caffe-rfcn @ 543f8f6a; ``neocaffe.layers.roi.PSROIPooling``): the RoI's rounded (halves
  away from zero) corners, float32 bins ``floor(p bin + start)`` / ``ceil((p + 1) bin + start)`` clipped to the
  map, each bin's sum read from a float64 integral image (CumSum) with four Gathers, divided by its area; an
  empty bin gives 0.
* Ristretto (pmgysel/caffe @ 614963cb; ``neocaffe.layers.ristretto``): ``ConvolutionRistretto``,
  ``DeconvolutionRistretto``, ``FcRistretto`` in the TEST phase with NEAREST rounding: the weights quantized
  now (the layer's own quantizer) as constants; the bottoms and tops trimmed by ONNX ops exactly as the layer
  trims them: dynamic fixed point (clip, divide by the step, C's round with ties away from zero, times the step)
  or minifloat (the float32 exponent and mantissa found with Log, a table of powers of two and comparisons; the
  mantissa rounded ``floor(m + 0.5)``; zero, denormals and small exponents flushed, large ones saturated;
  infinities as the fork's bits give them). Deviation: a NaN stays NaN (the fork saturates its bits to +-largest,
  the sign being the NaN's sign bit, which no ONNX op reads).
  ``LRNRistretto`` (minifloat, ties to even, every phase): a Scan over the channels keeps the fork's rounded
  running sum. STOCHASTIC rounding (and the TRAIN phase, which rounds the weights stochastically) draws random
  numbers on every forward: refused, as it cannot export deterministically.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph, helper, onnx
from neocaffe.export.onnx_layers import conv, inner_product, need_layer
from neocaffe.export.registry import LayerNode, onnx_emitter

f32 = np.float32
FLT_MAX = float(np.finfo(f32).max)
#: per graph, the initializer of 2^-126 ... 2^127 that every minifloat trim reads
_POW2: "weakref.WeakKeyDictionary[OnnxGraph, str]" = weakref.WeakKeyDictionary()


# -- C3D ---------------------------------------------------------------------------------------------
@onnx_emitter("Convolution3D")
def convolution3d(g: OnnxGraph, n: LayerNode) -> list[str]:
    L: Any = need_layer(n)
    shape, out = n.bottom_shapes[0], n.top_shapes[0][2:]
    end = [p + max(0, (o - 1) * s + k - (d + 2 * p))
           for o, d, k, s, p in zip(out, shape[2:], L.kernel, L.stride, L.pad)]
    ins = [g.const(n.blobs[0], "weight")] + ([g.const(n.blobs[1], "bias")] if L.bias_term else [])
    return [g.op("Conv", n.inputs[0], *ins, kernel_shape=list(L.kernel), strides=list(L.stride),
                 pads=list(L.pad) + end)]


@onnx_emitter("Deconvolution3D")
def deconvolution3d(g: OnnxGraph, n: LayerNode) -> list[str]:
    L: Any = need_layer(n)
    ins = [g.const(n.blobs[0], "weight")] + ([g.const(n.blobs[1], "bias")] if L.bias_term else [])
    return [g.op("ConvTranspose", n.inputs[0], *ins, kernel_shape=list(L.kernel), strides=list(L.stride),
                 pads=list(L.pad) * 2)]


@onnx_emitter("Pooling3D")
def pooling3d(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.c3d import MAX, _ave_sizes

    L: Any = need_layer(n)
    shape, out = n.bottom_shapes[0], tuple(n.top_shapes[0][2:])
    k, s, p = tuple(L.kernel), tuple(L.stride), tuple(L.pad)
    geo = dict(kernel_shape=list(k), strides=list(s))
    if L.method == MAX:
        end = [max(0, (o - 1) * st + kk - d) for o, st, kk, d in zip(out, s, k, shape[2:])]
        x = n.inputs[0]
        if any(end):
            x = g.op("Pad", x, g.ints([0] * 5 + [0, 0] + end), g.scalar(-FLT_MAX), hint="pad")
        return [g.op("Max", g.op("MaxPool", x, **geo), g.scalar(-FLT_MAX))]
    end = [pp + max(0, (o - 1) * st + kk - d - 2 * pp) for o, st, kk, d, pp in zip(out, s, k, shape[2:], p)]
    x = n.inputs[0]
    if any(p) or any(end):
        x = g.op("Pad", x, g.ints([0, 0] + list(p) + [0, 0] + end), hint="pad")
    y = g.op("AveragePool", x, **geo)
    sizes = _ave_sizes(shape[2:], out, k, s, p).astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (f32(math.prod(k)) / sizes).astype(f32)
    return [g.op("Mul", y, g.const(corr, "divisor_fix"))]


# -- rounding idioms ------------------------------------------------------------------------------------
def round_away(g: OnnxGraph, x: str) -> str:
    """C's ``round``: ties away from zero, exactly (``trunc(x)`` plus ``sign`` where ``|frac| >= 0.5``)."""
    sign = g.op("Sign", x)
    whole = g.op("Mul", sign, g.op("Floor", g.op("Abs", x)), hint="trunc")
    frac = g.op("Sub", x, whole, hint="frac")
    up = g.op("GreaterOrEqual", g.op("Abs", frac), g.scalar(0.5))
    return g.op("Where", up, g.op("Add", whole, sign), whole, hint="round")


def trim_fixed_point(g: OnnxGraph, x: str, bw: int, fl: int) -> str:
    """Ristretto's ``Trim2FixedPoint`` (NEAREST): saturate, divide by the step 2^-fl, round, times the step."""
    step = math.ldexp(1.0, -fl)
    hi, lo = float(f32((2.0 ** (bw - 1) - 1) * step)), float(f32(-(2.0 ** (bw - 1)) * step))
    c = g.op("Min", g.op("Max", x, g.scalar(lo)), g.scalar(hi), hint="saturate")
    return g.op("Mul", round_away(g, g.op("Div", c, g.scalar(step))), g.scalar(step), hint="fixed_point")


def trim_minifloat(g: OnnxGraph, x: str, mant_bits: int, exp_bits: int, ties_to_even: bool = False) -> str:
    """Ristretto's ``Trim2MiniFloat`` (NEAREST) on float32 values, without their bits: ``|x| = 2^E (1 + m)``
    with E from Log corrected against a table of powers of two (exact), the mantissa ``m 2^mant_bits``
    rounded (``floor(t + 0.5)``, or Round's ties to even for ``ties_to_even``), exponents above the format's
    saturated to its largest value, zero, denormals and exponents below it flushed to 0."""
    bias = 2 ** (exp_bits - 1) - 1
    a = g.op("Abs", x)
    e = g.op("Floor", g.op("Mul", g.op("Log", a), g.scalar(1 / math.log(2.0))), hint="log2")
    e = g.op("Clip", e, g.scalar(-126.0), g.scalar(127.0))
    table = _POW2.get(g)
    if table is None:
        table = _POW2[g] = g.const(np.ldexp(np.ones(254), np.arange(-126, 128)).astype(f32), "pow2")
    at = g.op("Where", g.op("IsNaN", e), g.scalar(0.0), e)  # NaN: any index (the value stays NaN)
    pw = g.op("Gather", table, g.op("Cast", g.op("Add", at, g.scalar(126.0)), to=onnx.TensorProto.INT64), hint="pow2e")
    too_big = g.op("Cast", g.op("Greater", pw, a), to=1)  # Log rounded up past a power of two
    e = g.op("Sub", e, too_big)
    pw = g.op("Where", g.op("Cast", too_big, to=9), g.op("Mul", pw, g.scalar(0.5)), pw)
    too_small = g.op("And", g.op("LessOrEqual", g.op("Mul", pw, g.scalar(2.0)), a), g.op("Not", g.op("IsInf", a)))
    e = g.op("Where", too_small, g.op("Add", e, g.scalar(1.0)), e, hint="exponent")
    pw = g.op("Where", too_small, g.op("Mul", pw, g.scalar(2.0)), pw)
    t = g.op("Mul", g.op("Sub", g.op("Div", a, pw), g.scalar(1.0)), g.scalar(2.0 ** mant_bits), hint="mantissa")
    t = g.op("Round", t) if ties_to_even else g.op("Floor", g.op("Add", t, g.scalar(0.5)))
    v = g.op("Mul", g.op("Div", g.op("Add", t, g.scalar(2.0 ** mant_bits)), g.scalar(2.0 ** mant_bits)), pw)
    e_max = 2 ** (exp_bits - 1)  # the saturated exponent, unbiased
    mant = (2 ** mant_bits - 1 + 2.0 ** mant_bits) / 2.0 ** mant_bits
    with np.errstate(over="ignore"):
        largest = float(f32(math.ldexp(mant, e_max))) if e_max <= 128 else float("inf")
    v = g.op("Where", g.op("Greater", e, g.scalar(float(e_max))), g.scalar(largest), v)
    v = g.op("Where", g.op("Less", x, g.scalar(0.0)), g.op("Neg", v), v)
    flush = g.op("Or", g.op("Less", a, g.scalar(float(np.finfo(f32).tiny))), g.op("Less", e, g.scalar(float(-bias))))
    return g.op("Where", flush, g.scalar(0.0), v, hint="minifloat")


# -- Ristretto -------------------------------------------------------------------------------------------
def _quant(n: LayerNode) -> Any:
    from neocaffe.layers.base import TEST
    from neocaffe.layers.ristretto_quant import STOCHASTIC

    L: Any = need_layer(n)
    if getattr(L, "phase", TEST) != TEST and n.type != "LRNRistretto":
        raise n.error("the TRAIN phase rounds the weights STOCHASTIC on every forward and trims no activations; "
                      "export the TEST phase")
    q = L.quant
    if q.rounding == STOCHASTIC and n.type != "LRNRistretto":
        raise n.error("quantization_param.rounding_scheme = STOCHASTIC draws random numbers on every forward "
                      "(weights and activations); it cannot be exported deterministically: use NEAREST")
    return q


def _activations(g: OnnxGraph, q: Any, x: str, out: bool) -> str:
    """``Quantization.activations`` (NEAREST): minifloat, else dynamic fixed point (``bw/fl_layer_in/out``)."""
    from neocaffe.layers.ristretto_quant import MINIFLOAT

    if q.precision == MINIFLOAT:
        return trim_minifloat(g, x, q.mant_bits, q.exp_bits)
    return trim_fixed_point(g, x, *((q.bw_out, q.fl_out) if out else (q.bw_in, q.fl_in)))


def _quantized_node(n: LayerNode, g: OnnxGraph, q: Any) -> LayerNode:
    """``n`` with its weights quantized (the layer's own quantizer, NEAREST) and its bottoms trimmed."""
    import torch

    from neocaffe.layers.ristretto_quant import NEAREST

    blobs = [q.params(torch.from_numpy(np.asarray(b, f32)), NEAREST, bias=i == 1).numpy()
             for i, b in enumerate(n.blobs)]
    inputs = [_activations(g, q, x, out=False) for x in n.inputs]
    return dataclasses.replace(n, blobs=blobs, inputs=inputs)


@onnx_emitter("ConvolutionRistretto", "DeconvolutionRistretto")
def convolution_ristretto(g: OnnxGraph, n: LayerNode) -> list[str]:
    q = _quant(n)
    return [_activations(g, q, y, out=True) for y in conv(g, _quantized_node(n, g, q))]


@onnx_emitter("FcRistretto")
def fc_ristretto(g: OnnxGraph, n: LayerNode) -> list[str]:
    q = _quant(n)
    return [_activations(g, q, y, out=True) for y in inner_product(g, _quantized_node(n, g, q))]


@onnx_emitter("LRNRistretto")
def lrn_ristretto(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``ristretto_lrn``: every intermediate minifloat (ties to even); the running channel sum as a Scan."""
    L: Any = need_layer(n)
    q = L.quant
    mb, eb = int(q.mant_bits), int(q.exp_bits)
    shape = n.bottom_shapes[0]
    if len(shape) != 4:
        raise n.error(f"the bottom must be N x C x H x W; received shape {tuple(shape)}")
    C, size = int(shape[1]), int(L.size)
    post = size - (size - 1) // 2 - 1
    xq = trim_minifloat(g, n.inputs[0], mb, eb, True)
    sq = trim_minifloat(g, g.op("Mul", xq, xq), mb, eb, True)
    seq = g.op("Transpose", sq, perm=[1, 0, 2, 3], hint="channels_first")  # (C, N, H, W)
    zeros = g.op("ConstantOfShape", g.op("Shape", g.op("Slice", seq, g.ints([0]), g.ints([1]), g.ints([0]))),
                 value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]), hint="zeros")
    add = g.op("Concat", seq, *[zeros] * post, axis=0) if post else seq  # channel `head`, 0 past the last
    sub = g.op("Concat", *[zeros] * size, seq, axis=0)  # channel `head - size`, 0 before the window is full
    sub = g.op("Slice", sub, g.ints([0]), g.ints([C + post]), g.ints([0]))
    graph = _lrn_scan_body(g, n, L, mb, eb)
    init = g.op("Squeeze", zeros, g.ints([0]), hint="accum0")
    _, scales = g.op("Scan", init, add, sub, outputs=2, body=graph, num_scan_inputs=2, hint="scan")
    scale = g.op("Slice", scales, g.ints([post]), g.ints([C + post]), g.ints([0]), hint="scale")
    scale = g.op("Transpose", scale, perm=[1, 0, 2, 3])
    power = trim_minifloat(g, g.op("Pow", scale, g.scalar(-float(L.beta))), mb, eb, True)
    return [trim_minifloat(g, g.op("Mul", xq, power), mb, eb, True)]


def _lrn_scan_body(g: OnnxGraph, n: LayerNode, L: Any, mb: int, eb: int) -> Any:
    """The Scan body of ``lrn_ristretto``: ``accum = q(q(accum + add) - sub)`` (``q(v - 0) = v``: minifloat
    values trim to themselves), then the step's ``scale = q(k + q(accum * alpha / size))``. Its names live under a
    prefix reserved in ``g`` (names must be unique across a graph and its bodies)."""
    body = OnnxGraph(g.opset)
    with body.scope(g.fresh("scan_body")):
        acc_in, a_in, s_in = body.fresh("accum_in"), body.fresh("add"), body.fresh("sub")
        acc = trim_minifloat(body, body.op("Add", acc_in, a_in), mb, eb, True)
        acc = trim_minifloat(body, body.op("Sub", acc, s_in), mb, eb, True)
        scaled = trim_minifloat(body, body.op("Mul", acc, body.scalar(float(L.alpha_over_size))), mb, eb, True)
        scale = trim_minifloat(body, body.op("Add", scaled, body.scalar(float(L.k))), mb, eb, True)
        acc_out = body.op("Identity", acc, hint="accum_out")
        scale_out = body.op("Identity", scale, hint="scale_out")
    names = {t.name for t in body.initializers} | {acc_in, a_in, s_in}
    for node in body.nodes:
        names |= set(node.output) | {node.name}
    if any(g.is_taken(t) for t in names):
        raise n.error("the names of its Scan body clash with the graph's (rename the layer)")
    for t in names:
        g.reserve(t)
    rank3 = [None, None, None]  # (N, H, W) per step; older Scans want the body's output ranks
    info = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, rank3) for t in (acc_in, a_in, s_in)]
    outs = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, rank3) for t in (acc_out, scale_out)]
    return helper.make_graph(body.nodes, f"{n.name}_scan_body", info, outs, body.initializers)


# -- PSROIPooling --------------------------------------------------------------------------------------------
def _psroi_bins(g: OnnxGraph, rois: str, k: int, scale: float, pooled: int, size: int) -> tuple[str, str]:
    """``roi._psroi_bins`` along one axis (k = 1: x, 2: y): int64 (R, pooled) bounds clipped to [0, size]."""
    def col(j: int) -> str:
        return g.op("Slice", rois, g.ints([j]), g.ints([j + 1]), g.ints([1]), hint=f"roi{j}")  # (R, 1)

    s = g.scalar(float(f32(scale)))
    start = g.op("Mul", round_away(g, col(k)), s, hint="start")
    end = g.op("Mul", g.op("Add", round_away(g, col(k + 2)), g.scalar(1.0)), s, hint="end")
    length = g.op("Max", g.op("Sub", end, start), g.scalar(float(f32(0.1))))
    binsz = g.op("Div", length, g.scalar(float(pooled)), hint="bin")
    p = g.const(np.arange(pooled, dtype=f32).reshape(1, pooled), "bins")
    lo = g.op("Floor", g.op("Add", g.op("Mul", p, binsz), start))
    hi = g.op("Ceil", g.op("Add", g.op("Mul", g.op("Add", p, g.scalar(1.0)), binsz), start))
    bound = [g.scalar(0.0), g.scalar(float(size))]
    return (g.op("Cast", g.op("Clip", lo, *bound), to=7, hint="lo"),
            g.op("Cast", g.op("Clip", hi, *bound), to=7, hint="hi"))


@onnx_emitter("PSROIPooling")
def psroi_pooling(g: OnnxGraph, n: LayerNode) -> list[str]:
    L: Any = need_layer(n)
    N, C, H, W = n.bottom_shapes[0]
    d, gs = int(L.dim), int(L.group)
    R = int(n.bottom_shapes[1][0])
    rbatch = (bool(n.bottom_batch[1][0]), False)
    rois = g.reshape(n.inputs[1], (R, 5), rbatch, hint="rois")
    ws, we = _psroi_bins(g, rois, 1, L.scale, gs, W)
    hs, he = _psroi_bins(g, rois, 2, L.scale, gs, H)
    x = g.op("Cast", n.inputs[0], to=onnx.TensorProto.DOUBLE)
    integral = g.op("CumSum", g.op("CumSum", x, g.const(np.int64(2), "axis2", np.int64)),
                    g.const(np.int64(3), "axis3", np.int64))
    integral = g.op("Pad", integral, g.ints([0, 0, 1, 1, 0, 0, 0, 0]), hint="integral")
    flat = g.reshape(integral, (-1,), hint="flat")
    b = g.op("Cast", g.op("Slice", rois, g.ints([0]), g.ints([1]), g.ints([1])), to=7)  # (R, 1): trunc
    base = g.reshape(g.op("Mul", b, g.const(np.int64(C), "C", np.int64)), (R, 1, 1, 1),
                     (rbatch[0], False, False, False))
    chan = np.arange(d * gs * gs, dtype=np.int64).reshape(1, d, gs, gs)
    plane = g.op("Mul", g.op("Add", base, g.const(chan, "channel", np.int64)), g.const(np.int64(H + 1), "H1", np.int64))

    def view(t: str, shape: tuple[int, ...]) -> str:
        return g.reshape(t, shape, (rbatch[0], False, False, False))

    h0, h1 = view(hs, (R, 1, gs, 1)), view(he, (R, 1, gs, 1))
    w0, w1 = view(ws, (R, 1, 1, gs)), view(we, (R, 1, 1, gs))

    def at(h: str, w: str) -> str:
        idx = g.op("Add", g.op("Mul", g.op("Add", plane, h), g.const(np.int64(W + 1), "W1", np.int64)), w)
        return g.op("Gather", flat, idx, axis=0, hint="corner")

    total = g.op("Add", g.op("Sub", g.op("Sub", at(h1, w1), at(h0, w1)), at(h1, w0)), at(h0, w0), hint="sum")
    area = g.op("Cast", g.op("Mul", g.op("Sub", h1, h0), g.op("Sub", w1, w0)), to=onnx.TensorProto.DOUBLE, hint="area")
    zero = g.const(np.float64(0.0), "zero64", np.float64)
    one = g.const(np.float64(1.0), "one64", np.float64)
    out = g.op("Where", g.op("Greater", area, zero), g.op("Div", total, g.op("Max", area, one)), zero)
    return [g.op("Cast", out, to=onnx.TensorProto.FLOAT)]


# -- ROIAlign (cascade-rcnn) ------------------------------------------------------------------------------
def _roi_align_axis(g: OnnxGraph, lo_c: str, hi_c: str, pad_ratio: float, scale: float, pooled: int,
                    size: int) -> tuple[str, str, str, str, str, str]:
    """One axis of ``cascade_roi.roi_align`` from the RoI columns (R, 1): its valid flag (R, 1), and per grid
    point (R, pooled + 1) the inside flag, the clipped floor and ceil (int64) and the ceil's weight, and 1 minus it."""
    s, pr, half = g.scalar(float(f32(scale))), g.scalar(float(f32(pad_ratio))), g.scalar(0.5)
    pad = g.op("Mul", g.op("Add", g.op("Sub", hi_c, lo_c), g.scalar(1.0)), pr, hint="pad")
    start = g.op("Sub", g.op("Mul", g.op("Sub", lo_c, pad), s), half, hint="start")
    end = g.op("Sub", g.op("Mul", g.op("Add", hi_c, pad), s), half, hint="end")
    extent = g.op("Sub", end, start)
    ok = g.op("Greater", extent, g.scalar(0.0), hint="ok")
    p = g.const(np.arange(pooled + 1, dtype=f32).reshape(1, -1), "grid")
    coord = g.op("Add", start, g.op("Mul", p, g.op("Div", extent, g.scalar(float(pooled)))), hint="coord")
    inside = g.op("And", g.op("GreaterOrEqual", coord, g.scalar(-0.5)),
                  g.op("LessOrEqual", coord, g.scalar(size - 0.5)))
    lo = g.op("Floor", coord)
    top = g.scalar(float(size - 1))
    lo_k = g.op("Clip", lo, g.scalar(0.0), top)
    hi_k = g.op("Clip", g.op("Add", lo, g.scalar(1.0)), g.scalar(0.0), top)
    w_hi = g.op("Sub", g.op("Clip", coord, g.scalar(0.0), top), lo_k, hint="weight")
    return (ok, inside, g.op("Cast", lo_k, to=7), g.op("Cast", hi_k, to=7), w_hi,
            g.op("Sub", g.scalar(1.0), w_hi))


@onnx_emitter("ROIAlign")
def roi_align(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``cascade_roi.roi_align``: one bilinear sample per grid point (not ONNX RoiAlign's bin averages), the
    four corners gathered from the (N*H*W, C) rows, 0 outside ``[-0.5, size - 0.5]`` and for empty RoIs."""
    L: Any = need_layer(n)
    N, C, H, W = n.bottom_shapes[0]
    R = int(n.bottom_shapes[1][0])
    rb = bool(n.bottom_batch[1][0])
    rois = g.reshape(n.inputs[1], (R, 5), (rb, False), hint="rois")
    col = [g.op("Slice", rois, g.ints([j]), g.ints([j + 1]), g.ints([1]), hint=f"roi{j}") for j in range(5)]
    ok_w, in_w, w0, w1, lw, hw = _roi_align_axis(g, col[1], col[3], L.pad_ratio, L.scale, L.pooled[1], W)
    ok_h, in_h, h0, h1, lh, hh = _roi_align_axis(g, col[2], col[4], L.pad_ratio, L.scale, L.pooled[0], H)
    rows = g.reshape(g.op("Transpose", n.inputs[0], perm=[0, 2, 3, 1]), (-1, C), hint="rows")  # (N*H*W, C)
    base = g.reshape(g.op("Mul", g.op("Cast", col[0], to=7), g.const(np.int64(H * W), "HW", np.int64)), (R, 1, 1),
                     (rb, False, False))

    def vh(t: str) -> str:  # (R, P) -> (R, P, 1)
        return g.op("Unsqueeze", t, g.ints([2]))

    def vw(t: str) -> str:  # (R, Q) -> (R, 1, Q)
        return g.op("Unsqueeze", t, g.ints([1]))

    def at(h: str, w: str) -> str:
        idx = g.op("Add", g.op("Add", base, g.op("Mul", vh(h), g.const(np.int64(W), "W", np.int64))), vw(w))
        return g.op("Gather", rows, idx, axis=0, hint="corner")  # (R, P, Q, C)

    def wgt(a: str, b: str) -> str:
        return g.op("Unsqueeze", g.op("Mul", vh(a), vw(b)), g.ints([3]))

    val = None
    for a, b, h, w in ((hh, hw, h0, w0), (hh, lw, h0, w1), (lh, hw, h1, w0), (lh, lw, h1, w1)):
        t = g.op("Mul", wgt(a, b), at(h, w))
        val = t if val is None else g.op("Add", val, t)
    keep = g.op("And", g.op("And", vh(in_h), vw(in_w)), vh(g.op("And", ok_h, ok_w)))
    val = g.op("Where", g.op("Unsqueeze", keep, g.ints([3])), val, g.scalar(0.0))
    return [g.op("Transpose", val, perm=[0, 3, 1, 2])]


# -- VoxelWiseSoftmax (C3D) ---------------------------------------------------------------------------------
@onnx_emitter("VoxelWiseSoftmax")
def voxel_wise_softmax(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``c3d_v2v.voxel_softmax``: the softmax over channels at every voxel (Softmax on axis 1)."""
    return [g.op("Softmax", n.inputs[0], axis=1)]
