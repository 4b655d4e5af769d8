"""ONNX emitters of the forks' sampling, attention and small layers, each writing the arithmetic of its neocaffe
layer (whose docstring cites the fork and its files):

* ``SpatialTransformer`` (daerduoCarey STN @ cf2a461c; ``neocaffe.layers.spatial_transformer``): theta's free
  entries completed with the fixed ones (a one-hot MatMul), the fork's grid ``s / out * 2 - 1`` (row first), source
  pixels ``(p + 1) / 2 * size``, and the four taps from ``floor`` gathered with the fork's weights, a tap outside the
  image adding 0. Not GridSample: its pixel convention (``align_corners`` 0 or 1) is not the fork's, and the
  conversion of the coordinates would round them.
* ``DeformableConvolution`` (unsky/Deformable-ConvNets-caffe @ e0f7abd; ``neocaffe.layers.deformable``): the
  fork's ``deformable_im2col`` spelled out (offsets read from the front of each image's block, a sample 0 unless
  ``0 <= h < H`` and ``0 <= w < W``, the floor clamped to the last row/column with weight 0 there), the columns
  through a grouped 1 x 1 Conv. Not ONNX DeformConv (opset 19): it samples points in (-1, 0) and (H - 1, H) as a
  blend with zero padding, where the fork gives 0 or the last row.
* ``PointwiseSpatialAttention`` (hszhao/PSANet @ ff91e4fb; ``neocaffe.layers.psanet``), COLLECT and DISTRIBUTE:
  the mask placed into the (H*W, H*W) buffer by a constant Gather index (the layer's ``placement``; an appended 0
  where the fork leaves the buffer 0), the optional Softmax on ``softmax_param.axis``, a MatMul and the scale.
* ``NormL2`` (xialuxi/arcface-caffe @ 30ba26ad, ``AdaCos/normL2_layer.cpp``; ``arcface_norm_wing``):
  ``x * (1 / sqrt(sum x^2 + 1e-7))``, the scale in double.
* ``DenseBlock`` (senlinuc/caffe_ocr @ 81642f61, ``DenseBlock_layer.cu``; ``neocaffe.layers.denseblock``), TEST
  only: per transition BatchNormalization with the stored statistics (eps 1e-5), ReLU, the optional 1 x 1
  bottleneck, the 3 x 3 filter applied flipped (cuDNN's convolution mode), concatenated. TRAIN (batch
  statistics, dropout) is refused.
* ``ROIMaskPooling`` (D-X-Y/caffe-faster-rcnn ``dev`` @ 1ae964d; ``neocaffe.layers.frcnn_roi_mask_pooling``)
  without a mask (``mask_scale <= 0``): the RoI scaled about its centre (or cut to a half), its corners
  ``round(v * spatial_scale)`` computed as the layer does, then ONNX MaxRoiPool at scale 1 (ROIPooling's bins;
  an empty bin gives 0). With a mask it is refused: the fork's kernel compares a masked pixel as 0 but keeps its
  unmasked value, an order-dependent scan that no ONNX reduction reproduces.
* FlowNet 2.0 (lmb-freiburg/flownet2 @ b92e198b; ``neocaffe.layers.flownet_ops``, ``flownet_resample``):
  ``NegReLU``, ``Mean`` (its constant mean), ``Accum`` (the layer's corner-aligned bilinear matrices, two MatMuls
  per bottom, concatenated), ``Downsample`` (the layer's tent matrices; NaN inputs weighed apart, NaN where their
  weight exceeds half).
* LiteFlowNet (twhui/LiteFlowNet @ e7d6c43b; ``neocaffe.layers.liteflownet``): ``ExpMax`` (the NaN-skipping
  channel maximum subtracted from image 0 only, the fork's quirk), ``NegSquare``, ``Grid`` (a constant pixel grid
  expanded to the batch). LiteFlowNet's ``Warp`` stays refused (``onnx_flownet``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph, onnx
from neocaffe.export.onnx_layers import need_layer
from neocaffe.export.registry import LayerNode, onnx_emitter

f32 = np.float32
FLT_MAX = float(np.finfo(f32).max)


def _legacy(g: OnnxGraph, n: LayerNode, i: int) -> tuple[str, tuple[int, int, int, int]]:
    """Bottom ``i`` viewed as Caffe's legacy (N, C, H, W)."""
    s = tuple(int(d) for d in n.bottom_shapes[i])
    if len(s) > 4:
        raise n.error(f"bottom {i} must have at most 4 axes; received shape {s}")
    s4 = s + (1,) * (4 - len(s))
    x = n.inputs[i] if len(s) == 4 else g.reshape(n.inputs[i], s4, tuple(n.bottom_batch[i][:1]) + (False,) * 3)
    return x, s4  # type: ignore[return-value]


def _batch(n: LayerNode, i: int, rank: int) -> tuple[bool, ...]:
    """Axis 0 of bottom ``i`` dynamic (the batch), the other ``rank - 1`` axes static."""
    return (bool(n.bottom_batch[i][0]),) + (False,) * (rank - 1) if n.bottom_batch[i] else (False,) * rank


def _lead(g: OnnxGraph, x: str, axes: int, tail: list[int]) -> str:
    """The shape ``x.shape[:axes] + tail`` (read from ``x``: a dynamic batch stays dynamic)."""
    return g.op("Concat", g.op("Slice", g.op("Shape", x), g.ints([0]), g.ints([axes])), g.ints(tail), axis=0)


# -- SpatialTransformer ------------------------------------------------------------------------------------
@onnx_emitter("SpatialTransformer")
def spatial_transformer(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.spatial_transformer import st_target_grid

    import torch

    L: Any = need_layer(n)
    N, C, H, W = n.bottom_shapes[0]
    oh, ow = int(L.out_h), int(L.out_w)
    fixed = list(L.fixed)
    free = [i for i, v in enumerate(fixed) if v is None]
    const = np.array([0.0 if v is None else v for v in fixed], np.float64).astype(f32).reshape(1, 6)
    if free:
        onehot = np.zeros((len(free), 6), f32)
        onehot[np.arange(len(free)), free] = 1
        th = g.reshape(n.inputs[1], (N, len(free)), _batch(n, 1, 2), hint="theta_free")
        th = g.op("Add", g.op("MatMul", th, g.const(onehot, "onehot")), g.const(const, "theta_fixed"), hint="theta")
    else:
        th = g.op("Expand", g.const(const, "theta_fixed"), _lead(g, n.inputs[0], 1, [6]), hint="theta")
    th = g.reshape(th, (N, 6, 1, 1), _batch(n, 1, 4))
    t = [g.op("Slice", th, g.ints([j]), g.ints([j + 1]), g.ints([1]), hint=f"t{j}") for j in range(6)]  # (N, 1, 1, 1)
    gs, gt = (a.numpy().reshape(1, 1, *a.shape) for a in st_target_grid(oh, ow, torch.zeros((), dtype=torch.float32)))
    gs, gt = g.const(gs, "grid_s"), g.const(gt, "grid_t")
    px = g.op("Add", g.op("Add", g.op("Mul", gs, t[0]), g.op("Mul", gt, t[1])), t[2], hint="px")
    py = g.op("Add", g.op("Add", g.op("Mul", gs, t[3]), g.op("Mul", gt, t[4])), t[5], hint="py")
    one, two = g.scalar(1.0), g.scalar(2.0)
    x = g.op("Mul", g.op("Div", g.op("Add", px, one), two), g.scalar(float(H)), hint="x")  # rows
    y = g.op("Mul", g.op("Div", g.op("Add", py, one), two), g.scalar(float(W)), hint="y")  # columns
    P = oh * ow
    bt = _batch(n, 0, 3)
    x, y = g.reshape(x, (N, 1, P), bt), g.reshape(y, (N, 1, P), bt)
    m0, n0 = g.op("Floor", x), g.op("Floor", y)
    flat = g.reshape(n.inputs[0], (N, C, H * W), bt, hint="flat")
    shape = _lead(g, flat, 2, [P])
    zero = g.scalar(0.0)
    v = None
    for dm, dn in ((0, 0), (1, 0), (0, 1), (1, 1)):
        m = g.op("Add", m0, g.scalar(float(dm))) if dm else m0
        nn = g.op("Add", n0, g.scalar(float(dn))) if dn else n0
        wx = g.op("Sub", one, g.op("Sub", x, m) if dm == 0 else g.op("Sub", m, x))
        wy = g.op("Sub", one, g.op("Sub", y, nn) if dn == 0 else g.op("Sub", nn, y))
        inside = g.op("And", g.op("And", g.op("GreaterOrEqual", m, zero), g.op("Less", m, g.scalar(float(H)))),
                      g.op("And", g.op("GreaterOrEqual", nn, zero), g.op("Less", nn, g.scalar(float(W)))))
        row = g.op("Clip", m, zero, g.scalar(float(H - 1)))
        col = g.op("Clip", nn, zero, g.scalar(float(W - 1)))
        idx = g.op("Cast", g.op("Add", g.op("Mul", row, g.scalar(float(W))), col), to=7, hint="index")
        val = g.op("GatherElements", flat, g.op("Expand", idx, shape), axis=2, hint="tap")
        term = g.op("Where", inside, g.op("Mul", g.op("Mul", wx, wy), val), zero)
        v = term if v is None else g.op("Add", v, term)
    return [g.reshape(v, (N, C, oh, ow), _batch(n, 0, 4))]


# -- DeformableConvolution -----------------------------------------------------------------------------------
@onnx_emitter("DeformableConvolution")
def deformable_convolution(g: OnnxGraph, n: LayerNode) -> list[str]:
    L: Any = need_layer(n)
    N, C, H, W = n.bottom_shapes[0]
    M, ho, wo = n.top_shapes[0][1:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = L.kernel, L.stride, L.pad, L.dilation
    k, dg = kh * kw, int(L.dg)
    cg = C // dg
    b6 = _batch(n, 1, 6)
    off = g.reshape(n.inputs[1], (-1, 2 * k * dg * H * W), hint="offsets")  # per image, its (2 k dg, H, W) block
    off = g.op("Slice", off, g.ints([0]), g.ints([dg * k * 2 * ho * wo]), g.ints([1]))
    off = g.reshape(off, (N, dg, k, 2, ho, wo), b6)

    def part(j: int) -> str:  # (N, dg, k, ho, wo): the y (0) or x (1) offsets
        return g.op("Squeeze", g.op("Slice", off, g.ints([j]), g.ints([j + 1]), g.ints([3])), g.ints([3]))

    tap_y = g.const((np.repeat(np.arange(kh), kw) * dh).astype(f32).reshape(1, 1, k, 1, 1), "tap_y")
    tap_x = g.const((np.tile(np.arange(kw), kh) * dw).astype(f32).reshape(1, 1, k, 1, 1), "tap_x")
    h_in = g.const((np.arange(ho) * sh - ph).astype(f32).reshape(1, 1, 1, ho, 1), "h_in")
    w_in = g.const((np.arange(wo) * sw - pw).astype(f32).reshape(1, 1, 1, 1, wo), "w_in")
    zero, one = g.scalar(0.0), g.scalar(1.0)
    axes = []
    for j, tap, start, size in ((0, tap_y, h_in, H), (1, tap_x, w_in, W)):
        mp = g.op("Add", tap, part(j), hint="map")
        pos = g.op("Add", start, mp, hint="pos")
        inside = g.op("And", g.op("GreaterOrEqual", pos, zero), g.op("Less", pos, g.scalar(float(size))))
        fl = g.op("Floor", mp)
        p0 = g.op("Add", start, fl)
        clamp = g.op("GreaterOrEqual", p0, g.scalar(float(size - 1)))
        frac = g.op("Where", clamp, zero, g.op("Sub", mp, fl), hint="frac")
        last = g.scalar(float(size - 1))
        p0 = g.op("Clip", p0, zero, last)
        p1 = g.op("Min", g.op("Where", clamp, p0, g.op("Add", p0, one)), last)
        axes.append((inside, p0, p1, frac, g.op("Sub", one, frac)))
    (in_y, y0, y1, ly, hy), (in_x, x0, x1, lx, hx) = axes
    mask = g.op("Cast", g.op("And", in_y, in_x), to=1, hint="mask")
    xs = g.reshape(n.inputs[0], (N, dg, cg, H * W), _batch(n, 0, 4))
    KP = k * ho * wo
    shape = _lead(g, xs, 3, [KP])
    cols = None
    for yy, xx, wgt in ((y0, x0, g.op("Mul", hy, hx)), (y0, x1, g.op("Mul", hy, lx)),
                        (y1, x0, g.op("Mul", ly, hx)), (y1, x1, g.op("Mul", ly, lx))):
        idx = g.op("Cast", g.op("Add", g.op("Mul", yy, g.scalar(float(W))), xx), to=7, hint="index")
        idx = g.op("Expand", g.reshape(idx, (N, dg, 1, KP), _batch(n, 1, 4)), shape)
        vals = g.reshape(g.op("GatherElements", xs, idx, axis=3), (N, dg, cg, k, ho, wo), b6)
        term = g.op("Mul", vals, g.op("Unsqueeze", g.op("Mul", wgt, mask), g.ints([2])))
        cols = term if cols is None else g.op("Add", cols, term)
    cols = g.reshape(cols, (N, C * k, ho, wo), _batch(n, 0, 4), hint="columns")
    grp = int(L.group)
    w = np.asarray(n.blobs[0], f32).reshape(M, C // grp * k, 1, 1)
    ins = [g.const(w, "weight")] + ([g.const(n.blobs[1], "bias")] if L.bias_term else [])
    return [g.op("Conv", cols, *ins, kernel_shape=[1, 1], group=grp)]


# -- PointwiseSpatialAttention --------------------------------------------------------------------------------
@onnx_emitter("PointwiseSpatialAttention")
def pointwise_spatial_attention(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.psanet import placement

    L: Any = need_layer(n)
    x, (N, C, H, W) = _legacy(g, n, 0)
    mask, ms = _legacy(g, n, 1)
    hw = H * W
    b = _batch(n, 0, 3)
    flat = g.op("Pad", g.reshape(mask, (N, ms[1] * hw), b[:2]), g.ints([0, 0, 0, 1]), hint="mask_flat")
    idx = placement(H, W, L.mask_h, L.mask_w, L.distribute).numpy().astype(np.int64)
    buf = g.op("Gather", flat, g.const(idx, "placement", np.int64), axis=1, hint="buffer")
    if L.is_softmax:
        buf = g.op("Softmax", g.reshape(buf, (N, hw, H, W), _batch(n, 0, 4)), axis=int(L.softmax_axis))
    buf = g.reshape(buf, (N, hw, hw), b)
    y = g.op("MatMul", g.reshape(x, (N, C, hw), b), buf)
    if L.scale != 1.0:
        y = g.op("Mul", y, g.scalar(float(f32(L.scale))))
    return [g.reshape(y, n.top_shapes[0], n.top_batch[0])]


# -- NormL2 -------------------------------------------------------------------------------------------------
@onnx_emitter("NormL2")
def norm_l2(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.arcface_norm_wing import NORM_EPS

    s = n.bottom_shapes[0]
    rows = g.reshape(n.inputs[0], (s[0], math.prod(s[1:])), _batch(n, 0, 2))
    sq = g.op("Cast", g.reduce("ReduceSum", g.op("Mul", rows, rows), [1]), to=onnx.TensorProto.DOUBLE)
    norm = g.op("Sqrt", g.op("Add", sq, g.const(np.float64(NORM_EPS), "eps", np.float64)))
    inv = g.op("Cast", g.op("Reciprocal", norm), to=onnx.TensorProto.FLOAT, hint="inv")
    return [g.reshape(g.op("Mul", rows, inv), n.top_shapes[0], n.top_batch[0])]


# -- DenseBlock ---------------------------------------------------------------------------------------------
@onnx_emitter("DenseBlock")
def dense_block(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.base import TRAIN
    from neocaffe.layers.denseblock import EPS

    L: Any = need_layer(n)
    if L.phase == TRAIN:
        raise n.error("the TRAIN phase normalises by the batch's statistics (and drops out); export the TEST phase")
    T, blobs = int(L.T), [np.asarray(b, f32) for b in n.blobs]

    def bn(x: str, k_scale: int, k_mean: int) -> str:
        ins = [g.const(blobs[i].reshape(-1), name) for i, name in
               ((k_scale, "scale"), (k_scale + T, "bias"), (k_mean, "mean"), (k_mean + T, "var"))]
        return g.op("Relu", g.op("BatchNormalization", x, *ins, epsilon=EPS))

    feats = n.inputs[0]
    for t in range(T):
        h = bn(feats, T + t, 3 * T + t)
        if L.bc:
            h = g.op("Conv", h, g.const(blobs[5 * T + t], "bottleneck"), kernel_shape=[1, 1])
            h = bn(h, 6 * T + t, 8 * T + t)
        w = np.ascontiguousarray(blobs[t][:, :, ::-1, ::-1])  # cuDNN's CONVOLUTION mode: the filter flipped
        y = g.op("Conv", h, g.const(w, "filter"), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        feats = g.op("Concat", feats, y, axis=1, hint="features")
    return [feats]


# -- FlowNet 2.0 / LiteFlowNet small layers ---------------------------------------------------------------------
@onnx_emitter("NegReLU")
def neg_relu(g: OnnxGraph, n: LayerNode) -> list[str]:
    x = n.inputs[0]
    slope = float(f32(n.param.relu_param.negative_slope))
    return [g.op("Where", g.op("Less", x, g.scalar(0.0)), x, g.op("Mul", x, g.scalar(slope)))]


@onnx_emitter("NegSquare")
def neg_square(g: OnnxGraph, n: LayerNode) -> list[str]:
    return [g.op("Neg", g.op("Mul", n.inputs[0], n.inputs[0]))]


@onnx_emitter("Mean")
def mean(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``output_scale * (input_scale * x + mean_scale * m)`` per bottom, ``m`` the layer's (signed) mean."""
    L: Any = need_layer(n)
    ins, ms, outs = (f32(v) for v in L.scales)
    mean_ = L.mean.numpy().astype(f32) * f32(L.sign)
    tops = []
    for i in range(len(n.inputs)):
        x, (_, c, h, w) = _legacy(g, n, i)
        m = np.tile(mean_, c // mean_.size).reshape(1, c, 1, 1) if L.mean_shape is None \
            else np.tile(mean_, c * h * w // mean_.size).reshape(1, c, h, w)
        y = g.op("Add", g.op("Mul", x, g.scalar(float(ins))), g.const((ms * m).astype(f32), "mean"))
        y = g.op("Mul", y, g.scalar(float(outs)))
        tops.append(y if len(n.bottom_shapes[i]) == 4 else g.reshape(y, n.top_shapes[i], n.top_batch[i]))
    return tops


def _two_matmuls(g: OnnxGraph, x: str, wy: np.ndarray, wx: np.ndarray) -> str:
    """``wy @ x @ wx^T`` over the last two axes (``einsum('oh,nchw,pw->ncop')``)."""
    y = g.op("MatMul", x, g.const(np.ascontiguousarray(wx.T.astype(f32)), "weights_x"))
    return g.op("MatMul", g.const(wy.astype(f32), "weights_y"), y)


@onnx_emitter("Accum")
def accum(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.flownet_ops import _interp_matrix

    L: Any = need_layer(n)
    top = n.top_shapes[0]
    data = range(len(n.inputs) - 1 if L.reference else len(n.inputs))
    outs = []
    for i in data:
        x, s = _legacy(g, n, i)
        outs.append(_two_matmuls(g, x, _interp_matrix(s[2], top[2]), _interp_matrix(s[3], top[3])))
    return [outs[0] if len(outs) == 1 else g.op("Concat", *outs, axis=1)]


@onnx_emitter("Downsample")
def downsample(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.flownet_resample import _tent

    x, s = _legacy(g, n, 0)
    top = n.top_shapes[0]
    if tuple(s[2:]) == tuple(top[2:]):
        return [g.op("Identity", x) if len(n.bottom_shapes[0]) == 4 else x]
    wy, wx = _tent(s[2], top[2]), _tent(s[3], top[3])
    nan = g.op("IsNaN", x)
    value = _two_matmuls(g, g.op("Where", nan, g.scalar(0.0), x), wy, wx)
    weight = _two_matmuls(g, g.op("Cast", g.op("Not", nan), to=1), wy, wx)
    nan_weight = _two_matmuls(g, g.op("Cast", nan, to=1), wy, wx)
    bad = g.op("Greater", g.op("Div", nan_weight, weight), g.scalar(0.5))
    return [g.op("Where", bad, g.scalar(float("nan")), g.op("Div", value, weight))]


@onnx_emitter("ExpMax")
def exp_max(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``outer * exp(inner * (x - m))``, ``m`` the NaN-skipping channel maximum of image 0 (0 for the others)."""
    L: Any = need_layer(n)
    x = n.inputs[0]
    big = np.iinfo(np.int64).max
    x0 = g.op("Slice", x, g.ints([0]), g.ints([1]), g.ints([0]), hint="image0")
    lowest = g.scalar(-FLT_MAX)
    m0 = g.op("Max", g.reduce("ReduceMax", g.op("Where", g.op("IsNaN", x0), lowest, x0), [1]), lowest, hint="max")
    t = g.op("Sub", x0, m0)
    if n.bottom_shapes[0][0] > 1 or n.bottom_batch[0][0]:
        t = g.op("Concat", t, g.op("Slice", x, g.ints([1]), g.ints([big]), g.ints([0])), axis=0)
    if float(L.inner) != 1:
        t = g.op("Mul", t, g.scalar(float(L.inner)))
    y = g.op("Exp", t)
    return [y if float(L.outer) == 1 else g.op("Mul", y, g.scalar(float(L.outer)))]


@onnx_emitter("Grid")
def grid(g: OnnxGraph, n: LayerNode) -> list[str]:
    _, (_, _, h, w) = _legacy(g, n, 0)
    xy = np.stack(np.meshgrid(np.arange(w, dtype=f32), np.arange(h, dtype=f32)))[None]  # (1, 2, H, W): x, y
    return [g.op("Expand", g.const(xy, "pixel_grid"), _lead(g, n.inputs[0], 1, [2, h, w]))]


# -- ROIMaskPooling ------------------------------------------------------------------------------------------
@onnx_emitter("ROIMaskPooling")
def roi_mask_pooling(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``frcnn_roi_mask_pooling._geometry``'s region (float32, as the layer), then MaxRoiPool at scale 1."""
    from neocaffe.export.onnx_vision import round_away

    L: Any = need_layer(n)
    p = L.p
    if float(p.mask_scale) > 0:
        raise n.error(f"roi_mask_pooling_param.mask_scale = {float(f32(p.mask_scale)):g}: the fork's kernel compares a "
                      "masked pixel as 0 but keeps its unmasked value as the running maximum (an order-dependent scan "
                      "no ONNX op reproduces); only mask_scale <= 0 is exported")
    R = int(n.bottom_shapes[1][0])
    rois = g.reshape(n.inputs[1], (R, 5), _batch(n, 1, 2), hint="rois")
    b, x1, y1, x2, y2 = (g.op("Slice", rois, g.ints([j]), g.ints([j + 1]), g.ints([1]), hint=f"roi{j}")
                         for j in range(5))
    two, rs = g.scalar(2.0), g.scalar(float(f32(p.roi_scale)))
    corners = []
    for lo, hi in ((x1, x2), (y1, y2)):
        c = g.op("Div", g.op("Add", lo, hi), two, hint="centre")
        half = g.op("Div", g.op("Mul", g.op("Sub", hi, lo), rs), two)
        corners.append([g.op("Sub", c, half), g.op("Add", c, half), c])
    (xx1, xx2, xc), (yy1, yy2, yc) = corners
    part = int(p.half_part)
    xx2, xx1, yy2, yy1 = (xc if part == 1 else xx2), (xc if part == 2 else xx1), (yc if part == 3 else yy2), \
        (yc if part == 4 else yy1)
    s = g.scalar(float(f32(p.spatial_scale)))
    region = [round_away(g, g.op("Mul", v, s)) for v in (xx1, yy1, xx2, yy2)]
    r = g.op("Concat", b, *region, axis=1, hint="region")
    return [g.op("MaxRoiPool", n.inputs[0], r, pooled_shape=[int(p.pooled_h), int(p.pooled_w)], spatial_scale=1.0)]
