"""ONNX emitters of FlowNet 2.0's and PWC-Net's layers (the layers' semantics are in their modules'
docstrings: ``neocaffe.layers.flownet_corr``, ``flownet_warp``, ``flownet_resample``, ``flownet_ops``).

* ``Correlation``/``Correlation1D`` (MULTIPLY and SUBTRACT, any kernel/strides/pad): the layer's own geometry
  (``flownet_corr.geometry``): both bottoms zero-padded once, one Slice of bottom 1 per displacement, the product
  (MULTIPLY) or absolute difference (SUBTRACT) summed over channels, the per-displacement maps concatenated, the
  K x K patch sums (K > 1 or stride_1 > 1) as a grouped Conv with a ones kernel, divided by ``K * K * C``. Exact
  up to the order of float32 summation.
* ``Warp`` (PWC-Net's; not LiteFlowNet's absolute-coordinate Warp, refused) and ``FlowWarp``: spelled out as the
  layers compute them: ``x = t + flow_x``, ``y = s + flow_y`` in float32, the validity mask (Warp: inside
  ``[0, W - 1] x [0, H - 1]``, ends included; FlowWarp: ``[0, W) x [0, H)``), the floor/ceil (Warp) or floor and
  clamped floor + 1 (FlowWarp) corners gathered from the flattened image (GatherElements), the bilinear weights,
  and 0 (FlowWarp NOT_A_NUMBER: NaN) where invalid. Not GridSample: its zero padding blends partial corners at
  the border, where these layers give 0, and its normalized coordinates round differently.
* ``Resample``: ONNX Resize matches the layer only in part (``half_pixel`` puts output x at ``(xo + 0.5) fx -
  0.5``; the layer's half-pixel offset uses ``fy`` on x and ``fx`` on y, and its antialiasing, its radius
  ``round(pos) +- r`` and its renormalization at the border are its own), so LINEAR and CUBIC are exported
  exactly as the layer computes them: two MatMuls with the layer's own per-axis weight matrices
  (``resample_weights``), divided by the outer product of their row sums (0 where that is 0). NEAREST is a
  Gather of the layer's flat indices within each (H * W) plane; indices that cross into the next channel or
  image (the fork's flat-blob read) are refused. The weight matrices are constants of the static sizes.
* ``ChannelNorm``: ``sqrt(ReduceSum_c x^2)``.

One-bottom ``Eltwise`` SUM (PWC-Net's flow scaling) is the generic Eltwise emitter (``onnx_shape``).
"""
from __future__ import annotations

import math

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.onnx_layers import need_layer
from neocaffe.export.registry import LayerNode, onnx_emitter

f32 = np.float32


def _legacy4(n: LayerNode, i: int) -> tuple[int, int, int, int]:
    s = tuple(int(d) for d in n.bottom_shapes[i])
    if len(s) > 4:
        raise n.error(f"bottom {i} must have at most 4 axes; received shape {s}")
    s = s + (1,) * (4 - len(s))
    return s  # type: ignore[return-value]


def _as4(g: OnnxGraph, n: LayerNode, i: int) -> str:
    """Bottom ``i`` viewed (N, C, H, W) as the layers' ``legacy_shape``."""
    s = tuple(n.bottom_shapes[i])
    if len(s) == 4:
        return n.inputs[i]
    s4 = _legacy4(n, i)
    return g.reshape(n.inputs[i], s4, tuple(n.bottom_batch[i][:1]) + (False,) * 3)


# -- Correlation ------------------------------------------------------------------------------------------
@onnx_emitter("Correlation", "Correlation1D")
def correlation(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.flownet_corr import geometry

    L = need_layer(n)
    s0 = _legacy4(n, 0)
    geo = geometry(s0, int(L.kernel), int(L.md), int(L.pad), int(L.s1), int(L.s2), bool(L.one_d),
                   int(L.single_direction))
    a, b = _as4(g, n, 0), _as4(g, n, 1)
    ph, pw = geo.pad_h + geo.eh, geo.pad_w + geo.ew
    if ph or pw:
        pads = g.ints([0, 0, ph, pw, 0, 0, ph, pw], "pads")
        a, b = g.op("Pad", a, pads, hint="pad0"), g.op("Pad", b, pads, hint="pad1")
    y0, x0 = geo.y0 + geo.eh, geo.x0 + geo.ew

    def window(x: str, dy: int, dx: int, hint: str) -> str:
        return g.op("Slice", x, g.ints([y0 + dy, x0 + dx]), g.ints([y0 + dy + geo.rows, x0 + dx + geo.cols]),
                    g.ints([2, 3]), hint=hint)

    win = window(a, 0, 0, "win0")
    maps = []
    for dy, dx in geo.disps:
        other = window(b, dy, dx, "win1")
        m = g.op("Abs", g.op("Sub", win, other)) if L.subtract else g.op("Mul", win, other)
        maps.append(g.reduce("ReduceSum", m, [1], hint="chan_sum"))
    y = maps[0] if len(maps) == 1 else g.op("Concat", *maps, axis=1)
    if geo.kernel > 1 or geo.stride1 > 1:
        D, K = len(geo.disps), geo.kernel
        y = g.op("Conv", y, g.const(np.ones((D, 1, K, K), f32), "patch_ones"), kernel_shape=[K, K],
                 strides=[geo.stride1] * 2, group=D)
        y = g.op("Slice", y, g.ints([0, 0]), g.ints([geo.top_h, geo.top_w]), g.ints([2, 3]), hint="top")
    y = g.op("Div", y, g.scalar(float(geo.kernel * geo.kernel * s0[1])))
    top = n.top_shapes[0]
    return [y if len(top) == 4 else g.reshape(y, top, n.top_batch[0])]


# -- Warp / FlowWarp -----------------------------------------------------------------------------------------
def _bilinear_warp(g: OnnxGraph, n: LayerNode, flow_warp: bool) -> str:
    """The common arithmetic of Warp (``flow_warp`` False) and FlowWarp (module docstring)."""
    N, C, H, W = _legacy4(n, 0)
    oh, ow = int(n.bottom_shapes[1][2]), int(n.bottom_shapes[1][3])
    u, flow = _as4(g, n, 0), n.inputs[1]
    fx = g.op("Slice", flow, g.ints([0]), g.ints([1]), g.ints([1]), hint="flow_x")  # (N, 1, oh, ow)
    fy = g.op("Slice", flow, g.ints([1]), g.ints([2]), g.ints([1]), hint="flow_y")
    xs = g.const(np.arange(ow, dtype=f32).reshape(1, 1, 1, ow), "grid_x")
    ys = g.const(np.arange(oh, dtype=f32).reshape(1, 1, oh, 1), "grid_y")
    x, y = g.op("Add", xs, fx, hint="x"), g.op("Add", ys, fy, hint="y")
    zero = g.scalar(0.0)
    if flow_warp:
        hi_x, hi_y = g.op("Less", x, g.scalar(float(W))), g.op("Less", y, g.scalar(float(H)))
    else:
        hi_x, hi_y = g.op("LessOrEqual", x, g.scalar(float(W - 1))), g.op("LessOrEqual", y, g.scalar(float(H - 1)))
    valid = g.op("And", g.op("And", g.op("GreaterOrEqual", x, zero), hi_x),
                 g.op("And", g.op("GreaterOrEqual", y, zero), hi_y), hint="valid")
    if flow_warp:  # floor clamped to the image, the next corner clamped to the last column / row
        xl = g.op("Clip", g.op("Floor", x), zero, g.scalar(float(W - 1)))
        yt = g.op("Clip", g.op("Floor", y), zero, g.scalar(float(H - 1)))
        xr = g.op("Min", g.op("Add", xl, g.scalar(1.0)), g.scalar(float(W - 1)))
        yb = g.op("Min", g.op("Add", yt, g.scalar(1.0)), g.scalar(float(H - 1)))
        ax = g.op("Where", valid, g.op("Sub", x, xl), zero, hint="ax")
        ay = g.op("Where", valid, g.op("Sub", y, yt), zero, hint="ay")
    else:  # coordinates zeroed where invalid, then floor and ceil
        x = g.op("Where", valid, x, zero)
        y = g.op("Where", valid, y, zero)
        xl, yt = g.op("Floor", x), g.op("Floor", y)
        xr, yb = g.op("Ceil", x), g.op("Ceil", y)
        ax, ay = g.op("Sub", x, xl, hint="ax"), g.op("Sub", y, yt, hint="ay")
    P = oh * ow
    flat = g.reshape(u, (N, C, H * W), tuple(n.bottom_batch[0][:1]) + (False, False), hint="flat")
    if any(n.bottom_batch[0]):
        shape = g.op("Concat", g.op("Slice", g.op("Shape", flat), g.ints([0]), g.ints([2])), g.ints([P]), axis=0)
    else:
        shape = g.ints([N, C, P], "gather_shape")
    batch = tuple(n.bottom_batch[1][:1]) + (False, False)

    def pick(yy: str, xx: str) -> str:
        idx = g.op("Cast", g.op("Add", g.op("Mul", yy, g.scalar(float(W))), xx), to=7, hint="index")
        idx = g.op("Expand", g.reshape(idx, (N, 1, P), batch), shape)
        return g.op("GatherElements", flat, idx, axis=2, hint="corner")

    one = g.scalar(1.0)
    ax, ay = g.reshape(ax, (N, 1, P), batch), g.reshape(ay, (N, 1, P), batch)
    bx, by = g.op("Sub", one, ax), g.op("Sub", one, ay)
    # (1-a)(1-b) TL + a(1-b) TR + (1-a) b BL + a b BR, in the layers' order
    terms = [(g.op("Mul", bx, by), yt, xl), (g.op("Mul", ax, by), yt, xr),
             (g.op("Mul", bx, ay), yb, xl), (g.op("Mul", ax, ay), yb, xr)]
    v = None
    for w, yy, xx in terms:
        t = g.op("Mul", w, pick(yy, xx))
        v = t if v is None else g.op("Add", v, t)
    fill = g.scalar(float("nan") if flow_warp and bool(getattr(n.layer, "fill_nan", False)) else 0.0)
    v = g.op("Where", g.reshape(valid, (N, 1, P), batch), v, fill)
    return g.reshape(v, (N, C, oh, ow), batch + (False,), hint="warped")


@onnx_emitter("Warp")
def warp(g: OnnxGraph, n: LayerNode) -> list[str]:
    L = need_layer(n)
    if getattr(L, "coords", False):
        raise n.error("LiteFlowNet's Warp (absolute sampling coordinates, lineage 'liteflownet') is not exported; "
                      "only PWC-Net's Warp (a displacement flow) is")
    return [_bilinear_warp(g, n, flow_warp=False)]


@onnx_emitter("FlowWarp")
def flow_warp(g: OnnxGraph, n: LayerNode) -> list[str]:
    need_layer(n)
    return [_bilinear_warp(g, n, flow_warp=True)]


# -- Resample ----------------------------------------------------------------------------------------------
@onnx_emitter("Resample")
def resample(g: OnnxGraph, n: LayerNode) -> list[str]:
    from neocaffe.layers.flownet_resample import _RT, _round_away, resample_weights

    L = need_layer(n)
    N, C, h, w = _legacy4(n, 0)
    oh, ow = int(n.top_shapes[0][2]), int(n.top_shapes[0][3])
    x = _as4(g, n, 0)
    fx, fy = f32(w) / f32(ow), f32(h) / f32(oh)
    xin = (np.arange(ow, dtype=f32) * fx + fy / f32(2) - f32(0.5)).astype(f32)
    yin = (np.arange(oh, dtype=f32) * fy + fx / f32(2) - f32(0.5)).astype(f32)
    kind = int(L.kind)
    if kind == _RT.NEAREST:
        yi, xi = _round_away(yin), _round_away(xin)
        rel = (yi[:, None] * w + xi[None, :]).reshape(-1)
        if rel.min() < 0 or rel.max() >= h * w:
            raise n.error(f"NEAREST resampling from {h}x{w} to {oh}x{ow} reads indices {int(rel.min())}..{int(rel.max())}"
                          f" outside each {h}x{w} plane (the fork's flat-blob read into the next channel); only "
                          "reads within the plane are exported")
        batch = tuple(n.bottom_batch[0][:1]) + (False, False)
        flat = g.reshape(x, (N, C, h * w), batch, hint="flat")
        y = g.op("Gather", flat, g.const(rel.astype(np.int64), "nearest_index", np.int64), axis=2)
        return [g.reshape(y, (N, C, oh, ow), batch + (False,))]
    if kind not in (_RT.LINEAR, _RT.CUBIC):
        raise n.error(f"resample_param.type {kind} is not exported; supported: NEAREST, LINEAR, CUBIC")
    cubic = kind == _RT.CUBIC
    width = 4 if cubic else 2
    aa = bool(fx > 1 or fy > 1) and bool(L.antialias)
    ax, ay = f32(1) / (fx if aa else f32(1)), f32(1) / (fy if aa else f32(1))
    rx = 2 if fx < 1 else int(math.ceil(f32(width) / ax))
    ry = 2 if fy < 1 else int(math.ceil(f32(width) / ay))
    wx, wy = resample_weights(w, ow, xin, ax, rx, cubic), resample_weights(h, oh, yin, ay, ry, cubic)
    y = g.op("MatMul", x, g.const(np.ascontiguousarray(wx.T), "weights_x"))  # (N, C, h, ow)
    y = g.op("MatMul", g.const(wy, "weights_y"), y)  # (N, C, oh, ow)
    den = np.outer(wy.sum(1, dtype=np.float64), wx.sum(1, dtype=np.float64)).astype(f32)
    zero = den == 0
    y = g.op("Div", y, g.const(np.where(zero, f32(1), den).astype(f32), "weight_sums"))
    if zero.any():
        y = g.op("Where", g.const(~zero, "nonzero", np.bool_), y, g.scalar(0.0))
    return [y]


# -- ChannelNorm ---------------------------------------------------------------------------------------------
@onnx_emitter("ChannelNorm")
def channel_norm(g: OnnxGraph, n: LayerNode) -> list[str]:
    x = _as4(g, n, 0)
    return [g.op("Sqrt", g.reduce("ReduceSum", g.op("Mul", x, x), [1]))]
