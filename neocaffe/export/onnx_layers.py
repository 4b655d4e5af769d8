"""ONNX emitters of Caffe's compute layers: convolution, pooling (Caffe's geometry), LRN, InnerProduct,
BatchNorm/Scale/Bias/MVN, Softmax and the fork's Sparsify/SymmetricRectify (the neuron layers' are in
``onnx_neurons``).

Caffe's rules that ONNX's own attributes do not express are spelled out with explicit ops:
pooling's ceil-mode output size with the clip of the last window (asymmetric end pads), AVE pooling's
divisor clipped to the padded extent (a constant correction grid where it differs from k*k), windows
entirely past the input (MAX: -FLT_MAX, AVE: NaN, as Caffe), LRN within a channel (Caffe's
Power/Pooling/Power/Eltwise composition).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.registry import LayerNode, onnx_emitter
from neocaffe.layers.base import TEST
from neocaffe.layers.pool_ops import AVE, FLT_MAX, FLT_MIN, MAX, STOCHASTIC, caffe_pooled_size

f32 = np.float32


def need_layer(n: LayerNode) -> object:
    if n.layer is None:
        raise n.error("needs the built layer to read its geometry")
    return n.layer


# -- convolution ------------------------------------------------------------------------------------
@onnx_emitter("Convolution", "Deconvolution")
def conv(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Conv / ConvTranspose (Caffe's weight layouts are ONNX's); axes before ``axis`` fold into the batch."""
    L = need_layer(n)
    transposed = n.type == "Deconvolution" or bool(getattr(L, "transposed", False))
    n_sp, axis = int(L.n_sp), int(L.axis)
    w = n.blobs[0] if n_sp else n.blobs[0][..., None]
    inputs = [g.const(w, "weight")] + ([g.const(n.blobs[1], "bias")] if L.bias_term else [])
    k = list(w.shape[2:])
    attrs = dict(kernel_shape=k, strides=list(L.stride) or [1], dilations=list(L.dilation) or [1],
                 pads=list(L.pad) * 2 or [0, 0], group=int(L.group))
    tops = []
    for x, shape, bshape, top, tbatch in zip(n.inputs, n.bottom_shapes, n.bottom_batch, n.top_shapes, n.top_batch):
        direct = axis == 1 and n_sp > 0
        if not direct:  # (lead..., C, spatial...) -> (prod(lead), C, spatial... or 1)
            flat = (math.prod(shape[:axis]), shape[axis]) + (tuple(shape[axis + 1:]) or (1,))
            x = g.reshape(x, flat, (any(bshape[:axis]),) + (False,) * (len(flat) - 1))
        y = g.op("ConvTranspose" if transposed else "Conv", x, *inputs, **attrs)
        tops.append(y if direct else g.reshape(y, top, tbatch))
    return tops


@onnx_emitter("Im2col")
def im2col(g: OnnxGraph, n: LayerNode) -> list[str]:
    """A grouped convolution with one-hot kernels: channel ``c*prod(kernel) + offset`` (exact copies)."""
    L = need_layer(n)
    if int(L.axis) != 1:
        raise n.error("convolution_param.axis other than 1 is not exported for Im2col")
    kdim, C = math.prod(L.kernel), int(L.channels)
    eye = np.eye(kdim, dtype=f32).reshape((kdim, 1) + tuple(L.kernel))
    w = np.tile(eye, (C,) + (1,) * (len(L.kernel) + 1))
    y = g.op("Conv", n.inputs[0], g.const(w, "onehot"), kernel_shape=list(L.kernel), strides=list(L.stride),
             dilations=list(L.dilation), pads=list(L.pad) * 2, group=C)
    return [y]


# -- pooling ----------------------------------------------------------------------------------------
def _window_sizes(out: int, size: int, k: int, s: int, p: int) -> list[int]:
    """Caffe's AVE divisor factor per output position: ``min(start + k, size + p) - start``."""
    return [min(i * s - p + k, size + p) - (i * s - p) for i in range(out)]


def caffe_pool(g: OnnxGraph, n: LayerNode, x: str, shape: Sequence[int], method: int, k: Sequence[int],
               s: Sequence[int], p: Sequence[int], round_mode: int = 0, need_mask: bool = False,
               out_hw: Sequence[int] | None = None) -> list[str]:
    """Caffe pooling of the 4-D tensor ``x`` (static ``shape``); returns [top] or [top, mask]. ``out_hw``: the
    layer's output plane where its Reshape is not BVLC's (darknet2caffe's extra windows; Forward is BVLC's)."""
    H, W = int(shape[2]), int(shape[3])
    clip = bool(p[0] or p[1])
    out = [caffe_pooled_size(H, k[0], s[0], p[0], clip, round_mode),
           caffe_pooled_size(W, k[1], s[1], p[1], clip, round_mode)] if out_hw is None else [int(o) for o in out_hw]
    end = [(out[i] - 1) * s[i] + k[i] - (H, W)[i] - p[i] for i in range(2)]  # right/bottom pad
    if min(end) < 0:  # the last windows stop before the input's end: drop what no window reads
        keep = [(H, W)[i] + min(end[i], 0) for i in range(2)]
        x = g.op("Slice", x, g.ints([0, 0]), g.ints(keep), g.ints([2, 3]), hint="crop")
        end = [max(e, 0) for e in end]
    empty = any((out[i] - 1) * s[i] - p[i] >= (H, W)[i] for i in range(2))  # windows wholly past the input
    pads = [p[0], p[1], end[0], end[1]]
    kk = k[0] * k[1]
    if method == MAX:
        if not empty:
            outs = g.op("MaxPool", x, outputs=2 if need_mask else 1, kernel_shape=list(k), strides=list(s), pads=pads)
            if not need_mask:
                return [outs]
            y, idx = outs
            mask = g.op("Cast", g.op("Mod", idx, g.const(np.int64(H * W), "hw", np.int64)), to=1, hint="mask")
            return [y, mask]
        if need_mask:
            raise n.error(f"the mask top of a pooling whose last window lies past the {H}x{W} input is not exported")
        xp = g.op("Pad", x, g.ints([0, 0, p[0], p[1], 0, 0, end[0], end[1]]), g.scalar(-FLT_MAX), hint="pad")
        return [g.op("MaxPool", xp, kernel_shape=list(k), strides=list(s))]
    sizes = np.outer(_window_sizes(out[0], H, k[0], s[0], p[0]), _window_sizes(out[1], W, k[1], s[1], p[1]))
    if method == AVE:
        if (sizes == kk).all():  # every window holds k*k positions of the padded input: ONNX's own rule
            return [g.op("AveragePool", x, kernel_shape=list(k), strides=list(s), pads=pads, count_include_pad=1)]
        xp = g.op("Pad", x, g.ints([0, 0, p[0], p[1], 0, 0, end[0], end[1]]), hint="pad")
        y = g.op("AveragePool", xp, kernel_shape=list(k), strides=list(s))
        with np.errstate(divide="ignore"):
            corr = (f32(kk) / sizes.astype(f32)).astype(f32)  # k*k / Caffe's divisor (inf for empty windows: NaN)
        return [g.op("Mul", y, g.const(corr, "divisor_fix"))]
    if method == STOCHASTIC:
        if n.layer is not None and getattr(n.layer, "phase", 1) == 0:
            raise n.error("STOCHASTIC pooling samples at TRAIN time; only its TEST form is exported")
        xp = g.op("Pad", x, g.ints([0, 0, 0, 0, 0, 0, end[0], end[1]]), hint="pad") if any(end) else x
        geo = dict(kernel_shape=list(k), strides=list(s))
        sq = g.op("Mul", g.op("AveragePool", g.op("Mul", xp, xp), **geo), g.scalar(kk))
        sm = g.op("Add", g.op("Mul", g.op("AveragePool", xp, **geo), g.scalar(kk)), g.scalar(FLT_MIN))
        return [g.op("Div", sq, sm)]
    raise n.error(f"unknown pooling method {method}")


@onnx_emitter("Pooling")
def pooling(g: OnnxGraph, n: LayerNode) -> list[str]:
    L = need_layer(n)
    shape = n.bottom_shapes[0]
    need_mask = len(n.top_shapes) > 1
    k, out = L.window(tuple(int(d) for d in shape))  # darknet2caffe's lineage: its Reshape's extra windows
    if L.global_pooling and L.method in (MAX, AVE) and not need_mask and tuple(out) == (1, 1):
        return [g.op("GlobalMaxPool" if L.method == MAX else "GlobalAveragePool", n.inputs[0])]
    return caffe_pool(g, n, n.inputs[0], shape, L.method, k, L.stride, L.pad, L.round_mode, need_mask, out)


@onnx_emitter("SPP")
def spp(g: OnnxGraph, n: LayerNode) -> list[str]:
    """One Caffe pooling per pyramid level, flattened and concatenated on axis 1."""
    L = need_layer(n)
    if L.method == STOCHASTIC:
        raise n.error("STOCHASTIC SPP samples in every phase (Caffe builds its pooling layers in TRAIN); not exported")
    shape = n.bottom_shapes[0]
    H, W = int(shape[2]), int(shape[3])
    outs = []
    for i in range(int(n.param.spp_param.pyramid_height)):  # Caffe's SPPLayer: 2^i bins per axis
        bins = 2 ** i
        k = (math.ceil(H / bins), math.ceil(W / bins))
        p = ((k[0] * bins - H + 1) // 2, (k[1] * bins - W + 1) // 2)
        outs.append(caffe_pool(g, n, n.inputs[0], shape, L.method, k, k, p)[0])
    if len(outs) == 1:
        return outs
    return [g.op("Concat", *[g.op("Flatten", y, axis=1) for y in outs], axis=1)]


# -- LRN ----------------------------------------------------------------------------------------------
@onnx_emitter("LRN")
def lrn(g: OnnxGraph, n: LayerNode) -> list[str]:
    """ACROSS_CHANNELS is ONNX's LRN (same window and formula); WITHIN_CHANNEL is Caffe's composition
    ``x * (1 + alpha * avgpool_k(x^2))^-beta`` with zero padding counted (``k`` unused, as in Caffe)."""
    L = need_layer(n)
    x = n.inputs[0]
    if L.region == 0:
        return [g.op("LRN", x, size=int(L.size), alpha=float(L.alpha), beta=float(L.beta), bias=float(L.k))]
    pad = (L.size - 1) // 2
    avg = g.op("AveragePool", g.op("Mul", x, x), kernel_shape=[L.size] * 2, strides=[1, 1], pads=[pad] * 4,
               count_include_pad=1)
    base = g.op("Add", g.op("Mul", avg, g.scalar(L.alpha)), g.scalar(getattr(L, "shift", 1.0)))  # LiteFlowNet's shift
    return [g.op("Mul", x, g.op("Pow", base, g.scalar(-L.beta)))]


# -- InnerProduct ------------------------------------------------------------------------------------
@onnx_emitter("InnerProduct")
def inner_product(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Flatten from ``axis``, Gemm (``transpose``: weight stored (K, N)), then the leading axes back.
    happynear's weights (and bias) from bottoms 1 (and 2): Gemm on those inputs, reshaped as the layer reads them."""
    p = n.param.inner_product_param
    shape = n.bottom_shapes[0]
    axis = int(p.axis) % len(shape) if len(shape) else 0
    x2 = g.op("Flatten", n.inputs[0], axis=axis)
    top = n.top_shapes[0]
    if len(n.inputs) > 1:
        return [_inner_product_from_bottoms(g, n, x2, axis)]
    w = n.blobs[0]
    if getattr(p, "normalize", False):  # happynear's: the rows as its forward rewrites them (InnerProductLayer.normalize_weight_)
        rows = np.asarray(w, f32).reshape(-1, int(np.prod(shape[axis:])) if len(shape) else 1)
        sq = ((rows * rows).sum(1, dtype=f32).astype(np.float64) + 1e-6).astype(f32)
        w = (rows * (f32(1) / np.sqrt(sq))[:, None]).reshape(np.shape(w))
    ins = [x2, g.const(w, "weight")] + ([g.const(n.blobs[1], "bias")] if p.bias_term else [])
    y = g.op("Gemm", *ins, transB=0 if p.transpose else 1)
    return [y if len(top) == 2 and axis == 1 else g.reshape(y, top, n.top_batch[0])]


def _inner_product_from_bottoms(g: OnnxGraph, n: LayerNode, x2: str, axis: int) -> str:
    """InnerProduct with its weights from bottom 1 (N = its first axis; N x K, K x N with ``transpose``) and,
    with ``bias_term``, the bias from bottom 2 (InnerProductLayer's weight-bottom form)."""
    p = n.param.inner_product_param
    shape, top = n.bottom_shapes[0], n.top_shapes[0]
    k, rows = math.prod(shape[axis:]), int(n.bottom_shapes[1][0])
    if p.bias_term and len(n.inputs) < 3:
        raise n.error("bias_term with the weights from bottom 1 needs the bias as bottom 2; received "
                      f"{len(n.inputs)} bottoms")
    if any(any(b) for b in n.bottom_batch[1:]):
        raise n.error("the weight (or bias) bottom's shape follows the batch size: export with a fixed -batch")
    w = g.reshape(n.inputs[1], (k, rows) if p.transpose else (rows, k), hint="weight")
    ins = [x2, w] + ([g.reshape(n.inputs[2], (rows,), hint="bias")] if p.bias_term else [])
    y = g.op("Gemm", *ins, transB=0 if p.transpose else 1)
    return y if len(top) == 2 and axis == 1 else g.reshape(y, top, n.top_batch[0])


# -- normalization ------------------------------------------------------------------------------------
def channel_view(v: np.ndarray, rank: int, axis: int = 1) -> np.ndarray:
    """``v`` (shape of the axes from ``axis``) shaped to broadcast against a ``rank``-D tensor."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (rank - axis - v.ndim))


@onnx_emitter("BatchNorm")
def batch_norm(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Global statistics: ONNX BatchNormalization with Caffe's mean/variance (blobs divided by the
    scale-factor blob, 0 when it is 0). Batch statistics (``use_global_stats: false``): spelled out."""
    L = need_layer(n)
    x, rank = n.inputs[0], len(n.bottom_shapes[0])
    eps = float(L.eps)
    if getattr(L, "nv", None) is not None:  # NVCaffe's scale_bias BatchNorm (layers/nvcaffe_bn.py)
        if L.phase != TEST:
            raise n.error("NVCaffe's BatchNorm (scale_bias) in TRAIN updates its statistics; export the TEST net")
        mean, var, _, gamma, beta = (np.asarray(b, f32).reshape(-1) for b in n.blobs[:5])
        return [g.op("BatchNormalization", x, g.const(gamma, "gamma"), g.const(beta, "beta"),
                     g.const(mean, "mean"), g.const(var, "var"), epsilon=eps)]
    if L.use_global:
        b0, b1, b2 = (np.asarray(b, f32) for b in n.blobs[:3])
        factor = np.where(b2 == 0, f32(0), f32(1) / np.where(b2 == 0, f32(1), b2)).astype(f32)
        mean, var = (b0 * factor).astype(f32), (b1 * factor).astype(f32)
        C = mean.shape[0]
        return [g.op("BatchNormalization", x, g.const(np.ones(C, f32), "gamma"), g.const(np.zeros(C, f32), "beta"),
                     g.const(mean, "mean"), g.const(var, "var"), epsilon=eps)]
    axes = [0] + list(range(2, rank))
    xc = g.op("Sub", x, g.reduce("ReduceMean", x, axes))
    var = g.reduce("ReduceMean", g.op("Mul", xc, xc), axes)
    return [g.op("Div", xc, g.op("Sqrt", g.op("Add", var, g.scalar(eps))))]


def _operand(g: OnnxGraph, n: LayerNode, axis: int, hint: str) -> str:
    """Scale/Bias's operand: the second bottom reshaped to broadcast from ``axis``, else blob 0."""
    rank = len(n.bottom_shapes[0])
    if len(n.inputs) > 1:
        s = n.bottom_shapes[1]
        if len(s) == 0:
            return n.inputs[1]
        shape = tuple(s) + (1,) * (rank - axis - len(s))
        return g.reshape(n.inputs[1], shape, tuple(n.bottom_batch[1]) + (False,) * (len(shape) - len(s)))
    return g.const(channel_view(n.blobs[0], rank, axis), hint)


@onnx_emitter("Scale")
def scale(g: OnnxGraph, n: LayerNode) -> list[str]:
    L = need_layer(n)
    s = _operand(g, n, int(L.axis), "scale")
    sp = n.param.scale_param
    if sp.HasField("min_value") or sp.HasField("max_value"):  # happynear's clamp of the scale, each forward
        lo = float(f32(sp.min_value)) if sp.HasField("min_value") else -float(np.finfo(f32).max)
        hi = float(f32(sp.max_value)) if sp.HasField("max_value") else float(np.finfo(f32).max)
        s = g.op("Clip", s, g.scalar(lo), g.scalar(hi))
    y = g.op("Mul", n.inputs[0], s)
    if L.bias_term:
        b = n.blobs[-1]
        y = g.op("Add", y, g.const(channel_view(b, len(n.bottom_shapes[0]), int(L.bias_axis)), "bias"))
    return [y]


@onnx_emitter("Bias")
def bias(g: OnnxGraph, n: LayerNode) -> list[str]:
    L = need_layer(n)
    return [g.op("Add", n.inputs[0], _operand(g, n, int(L.axis), "bias"))]


@onnx_emitter("MVN")
def mvn(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Rows of (n) or (n, c): subtract the mean; ``normalize_variance``: divide by ``sqrt(var) + eps``."""
    p = n.param.mvn_param
    shape, batch = n.bottom_shapes[0], n.bottom_batch[0]
    rows = shape[0] if p.across_channels or len(shape) < 2 else shape[0] * shape[1]
    flat = (rows, math.prod(shape) // max(rows, 1))
    x = g.reshape(n.inputs[0], flat, (any(batch[:2]), False))
    xc = g.op("Sub", x, g.reduce("ReduceMean", x, [1]))
    if p.normalize_variance:
        std = g.op("Sqrt", g.reduce("ReduceMean", g.op("Mul", xc, xc), [1]))
        xc = g.op("Div", xc, g.op("Add", std, g.scalar(float(f32(p.eps)))))
    return [g.reshape(xc, shape, batch)]


@onnx_emitter("Softmax")
def softmax(g: OnnxGraph, n: LayerNode) -> list[str]:
    axis = int(n.param.softmax_param.axis) % max(len(n.bottom_shapes[0]), 1)
    return [g.op("Softmax", n.inputs[0], axis=axis)]


# -- the fork's sparsity layers (wenwei202/caffe) ----------------------------------------------------------
@onnx_emitter("Sparsify")
def sparsify(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Forward: soft threshold by ``thre`` (ONNX Shrink), a copy when ``thre`` is 0."""
    thre = float(n.param.sparsify_param.thre)
    return [g.op("Shrink", n.inputs[0], bias=thre, lambd=thre) if thre > 0 else n.inputs[0]]


@onnx_emitter("SymmetricRectify")
def symmetric_rectify(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``sign(x) * max(|x| - t, 0)`` with the threshold blob clamped at 0 (as the forward does)."""
    t = np.maximum(np.asarray(n.blobs[0], f32), f32(0))
    t = g.const(channel_view(t, len(n.bottom_shapes[0])), "threshold")
    x = n.inputs[0]
    return [g.op("Mul", g.op("Sign", x), g.op("Relu", g.op("Sub", g.op("Abs", x), t)))]
