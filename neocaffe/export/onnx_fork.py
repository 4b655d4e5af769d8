"""ONNX emitters of the forks' layers, written against each fork's source (configuration read from the
LayerParameter by the fork's field names, sizes from the net's static shapes):

* SSD (weiliu89/caffe, branch ssd): ``Permute`` (permute_layer.cpp: the listed axes, then the rest in
  order), ``Normalize`` (normalize_layer.cpp: ``x / sqrt(sum x^2 + eps)`` over C,H,W or over C at
  each position, times the scale blob), ``PriorBox`` (a constant: its output depends only on shapes),
  ``DetectionOutput`` (see ``onnx_detection``).
* happynear (AM-Softmax's and NormFace's Caffe, caffe-windows ms): ``Normalize`` of its lineage
  (normalize_layer.cpp: over C at each position, ``sqrt(sum x^2 + 1e-6)`` or ``sum |x| + 1e-6``, no blob;
  the norm as an optional second top), ``Flip`` (flip_layer.cpp: W and/or H reversed), ``ChannelScale``
  (channel_scale_layer.cpp: ``x`` times bottom 1 per item and position, or the global-scale blob).
* PSPNet (hszhao/PSPNet): ``Interp`` (interp_layer.cpp + util/interp.cpp: bilinear with
  ``(in - 1) / (out - 1)`` steps, i.e. align_corners, on the input cropped by ``pad_beg``/``pad_end``),
  ``BN`` with four blobs (bn_layer.cpp, TEST or frozen: ``(x - mean) * (var + eps)^-0.5 * slope + bias``).
* SegNet (alexgkendall/caffe-segnet): ``Upsample`` with a mask bottom (upsample_layer.cpp: each value
  written at its pooling index in a zero map), ``BN`` with two blobs (bn_layer.cpp: INFERENCE
  ``scale * x + shift``; LEARN normalizes by the batch's statistics, ``E(x^2) - E(x)^2``).
* The YOLO ports: ``Upsample`` with one bottom (nearest neighbour by an integer factor).
* The YOLOv2 ports (eric612/MobileNet-YOLO): ``Reorg`` (reorg_layer.hpp's ``reorg_cpu`` order, both directions).
* ShuffleNet (farmingyard/ShuffleNet): ``ShuffleChannel`` (channel ``i*(C/g) + j`` goes to ``j*g + i``).
* SENet (hujie-frank/SENet): ``Axpy`` (``a * x + y``, a of shape (N, C, 1, 1)).
* The mobile nets: ``ReLU6`` (``min(max(x, 0) + slope * min(x, 0), 6)``),
  ``ConvolutionDepthwise``/``DepthwiseConvolution`` (a grouped Convolution).
* caffe-fast-rcnn (rbgirshick): ``ROIPooling`` as ONNX MaxRoiPool (the same rounding of the ROI and
  floor/ceil bins, empty bins 0).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.onnx_layers import channel_view, conv
from neocaffe.export.registry import LayerNode, onnx_emitter
from neocaffe.layers._cudnn_bn import engine_eps

f32 = np.float32


def field(msg: Any, name: str, default: Any) -> Any:
    """``msg.name``, or ``default`` when the field is unset (or absent from this schema)."""
    try:
        return getattr(msg, name) if msg.HasField(name) else default
    except (AttributeError, ValueError):
        return getattr(msg, name, default)


def param(n: LayerNode, name: str) -> Any:
    """The layer's ``<name>`` message (an error naming the layer when the schema lacks it)."""
    try:
        return getattr(n.param, name)
    except AttributeError:
        raise n.error(f"the schema has no {name}; this fork's fields are not in caffe.proto") from None


def _nchw_sizes(g: OnnxGraph, n: LayerNode, x: str, hw: tuple[int, int]) -> str:
    """The 4-D sizes (N, C, *hw) for Resize: static, or N and C read from ``x`` with a dynamic batch."""
    if not any(n.bottom_batch[0]):
        return g.ints(list(n.bottom_shapes[0][:2]) + list(hw), "sizes")
    lead = g.op("Slice", g.op("Shape", x), g.ints([0]), g.ints([2]), hint="nc")
    return g.op("Concat", lead, g.ints(hw, "hw"), axis=0, hint="sizes")


onnx_emitter("ConvolutionDepthwise", "DepthwiseConvolution")(conv)


@onnx_emitter("Permute")
def permute(g: OnnxGraph, n: LayerNode) -> list[str]:
    rank = len(n.bottom_shapes[0])
    order = [int(o) for o in param(n, "permute_param").order]
    if any(o >= rank for o in order) or len(set(order)) != len(order):
        raise n.error(f"permute_param.order {order} must list distinct axes below {rank}")
    order += [i for i in range(rank) if i not in order]
    return [g.op("Transpose", n.inputs[0], perm=order)]


@onnx_emitter("Normalize")
def normalize(g: OnnxGraph, n: LayerNode) -> list[str]:
    if getattr(n.layer, "lineage", "ssd") == "happynear":  # neocaffe.layers.normface: over C, no blob
        x, hn = n.inputs[0], n.layer.happynear
        sq = g.reduce("ReduceSum", g.op("Abs", x) if hn.l1 else g.op("Mul", x, x), [1])
        norm = g.op("Add", sq, g.scalar(1e-6))
        norm = norm if hn.l1 else g.op("Sqrt", norm)
        tops = [g.op("Div", x, norm), norm][: len(n.top_shapes)]
        return [t if len(s) == len(n.bottom_shapes[0]) else g.reshape(t, s, n.top_batch[i])
                for i, (t, s) in enumerate(zip(tops, n.top_shapes))]
    p = param(n, "norm_param")
    x, rank = n.inputs[0], len(n.bottom_shapes[0])
    axes = list(range(1, rank)) if field(p, "across_spatial", True) else [1]
    sq = g.reduce("ReduceSum", g.op("Mul", x, x), axes)
    norm = g.op("Sqrt", g.op("Add", sq, g.scalar(float(f32(field(p, "eps", 1e-10))))))
    y = g.op("Div", x, norm)
    scale = np.asarray(n.blobs[0], f32)
    if scale.size == 1:
        return [g.op("Mul", y, g.scalar(float(scale.reshape(-1)[0])))]
    return [g.op("Mul", y, g.const(channel_view(scale.reshape(-1), rank), "scale"))]


@onnx_emitter("Flip")
def flip(g: OnnxGraph, n: LayerNode) -> list[str]:
    p, rank = param(n, "flip_param"), len(n.bottom_shapes[0])
    axes = [a for a, on in ((2, field(p, "flip_height", False)), (3, field(p, "flip_width", True))) if on and a < rank]
    if not axes:
        return [g.op("Identity", n.inputs[0])]
    big = np.iinfo(np.int64).max
    return [g.op("Slice", n.inputs[0], g.ints([-1] * len(axes), "starts"), g.ints([-big] * len(axes), "ends"),
                 g.ints(axes, "axes"), g.ints([-1] * len(axes), "steps"))]


@onnx_emitter("ChannelScale")
def channel_scale(g: OnnxGraph, n: LayerNode) -> list[str]:
    p = param(n, "channel_scale_param")
    x, s = n.inputs
    if not field(p, "do_forward", True):
        y = g.op("Identity", x)
    elif field(p, "global_scale", False):
        y = g.op("Mul", x, g.scalar(float(np.asarray(n.blobs[0]).reshape(-1)[0])))
    else:  # s holds N x H x W values: view it (N, 1, H, W) against x's legacy (N, C, H, W)
        shape = tuple(n.bottom_shapes[0]) + (1,) * (4 - len(n.bottom_shapes[0]))
        view = (shape[0], 1) + shape[2:len(n.bottom_shapes[0])]
        y = g.op("Mul", x, g.reshape(s, view, tuple(n.bottom_batch[0][:1]) + (False,) * (len(view) - 1)))
    if len(n.top_shapes) == 1:
        return [y]
    value = float(np.asarray(n.blobs[0]).reshape(-1)[0]) if field(p, "do_forward", True) else 0.0
    return [y, g.const(np.array([value], f32), "global_scale")]


@onnx_emitter("PriorBox")
def prior_box(g: OnnxGraph, n: LayerNode) -> list[str]:
    """The layer's own output for the bottoms' shapes, as a constant (it reads no values)."""
    if n.layer is None:
        raise n.error("needs the built layer to compute its priors")
    import torch

    with torch.no_grad():
        out = n.layer(*[torch.zeros(s) for s in n.bottom_shapes])
    out = out if isinstance(out, torch.Tensor) else out[0]
    return [g.const(out.detach().cpu().float().numpy(), "priors")]


@onnx_emitter("Interp")
def interp(g: OnnxGraph, n: LayerNode) -> list[str]:
    p = param(n, "interp_param")
    beg, end = int(field(p, "pad_beg", 0)), int(field(p, "pad_end", 0))
    if beg > 0 or end > 0:
        raise n.error(f"only non-positive pad_beg/pad_end (cropping) are supported, as in PSPNet; received {beg}, {end}")
    H, W = n.bottom_shapes[0][2:]
    x = n.inputs[0]
    if beg or end:
        x = g.op("Slice", x, g.ints([-beg, -beg]), g.ints([H + end, W + end]), g.ints([2, 3]), hint="crop")
    hw = tuple(n.top_shapes[0][2:])
    if hw == (H + beg + end, W + beg + end):
        return [x if x != n.inputs[0] else g.op("Identity", x)]
    return [g.op("Resize", x, "", "", _nchw_sizes(g, n, x, hw), mode="linear",
                 coordinate_transformation_mode="align_corners")]


@onnx_emitter("Upsample")
def upsample(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Two bottoms (SegNet): scatter into zeros at the mask's indices; one bottom (YOLO ports):
    nearest neighbour by the integer factor between the bottom and top sizes."""
    (N, C, H, W), (Ho, Wo) = n.bottom_shapes[0], n.top_shapes[0][2:]
    x = n.inputs[0]
    if len(n.inputs) == 1:
        if Ho % H or Wo % W:
            raise n.error(f"nearest upsampling from {H}x{W} to {Ho}x{Wo} is not by an integer factor")
        scales = g.const(np.array([1, 1, Ho // H, Wo // W], f32), "scales")
        return [g.op("Resize", x, "", scales, mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")]
    batch = n.bottom_batch[0][:1] + (False, False)
    flat_x = g.reshape(x, (N, C, H * W), batch)
    idx = g.op("Cast", g.reshape(n.inputs[1], (N, C, H * W), batch), to=7)
    if any(batch):
        zeros_shape = g.op("Concat", g.op("Slice", g.op("Shape", x), g.ints([0]), g.ints([2])),
                           g.ints([Ho * Wo]), axis=0)
    else:
        zeros_shape = g.ints([N, C, Ho * Wo], "zeros_shape")
    zeros = g.op("ConstantOfShape", zeros_shape, value=_zero())
    y = g.op("ScatterElements", zeros, idx, flat_x, axis=2)
    return [g.reshape(y, (N, C, Ho, Wo), n.top_batch[0])]


def _zero() -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, f32))


@onnx_emitter("ShuffleChannel")
def shuffle_channel(g: OnnxGraph, n: LayerNode) -> list[str]:
    shape, batch = n.bottom_shapes[0], n.bottom_batch[0]
    group = int(field(param(n, "shuffle_channel_param"), "group", 1))
    C = shape[1]
    if group <= 0 or C % group:
        raise n.error(f"shuffle_channel_param.group {group} does not divide the {C} channels")
    split = (shape[0], group, C // group) + tuple(shape[2:])
    y = g.reshape(n.inputs[0], split, batch[:1] + (False,) * (len(split) - 1))
    y = g.op("Transpose", y, perm=[0, 2, 1] + list(range(3, len(split))))
    return [g.reshape(y, shape, batch)]


@onnx_emitter("ReLU6")
def relu6(g: OnnxGraph, n: LayerNode) -> list[str]:
    """relu6_layer.cpp: ``min(max(x, 0) + negative_slope * min(x, 0), 6)`` (``relu6_param``)."""
    rp = getattr(n.param, "relu6_param", None)
    slope = 0.0 if rp is None else float(field(rp, "negative_slope", 0.0))
    if slope == 0:
        return [g.op("Clip", n.inputs[0], g.scalar(0.0), g.scalar(6.0))]
    leaky = g.op("LeakyRelu", n.inputs[0], alpha=slope)
    return [g.op("Min", leaky, g.scalar(6.0))]


@onnx_emitter("Axpy")
def axpy(g: OnnxGraph, n: LayerNode) -> list[str]:
    """axpy_layer.cpp: ``a * bottom1 + bottom2``, the scale ``a`` (N x C, or N x C x 1 x 1) per channel."""
    a, x, y = n.inputs
    sa, sx = n.bottom_shapes[0], n.bottom_shapes[1]
    if len(sa) != len(sx):  # N x C: one scale per channel, broadcast over the spatial axes
        a = g.reshape(a, tuple(sx[:2]) + (1,) * (len(sx) - 2), n.bottom_batch[0][:1] + (False,) * (len(sx) - 1))
    return [g.op("Add", g.op("Mul", a, x), y)]


@onnx_emitter("ROIPooling")
def roi_pooling(g: OnnxGraph, n: LayerNode) -> list[str]:
    p = param(n, "roi_pooling_param")
    if float(field(p, "pad_ratio", 0.0)):  # cascade-rcnn's: each RoI grows before the rounding; ONNX has no such op
        raise n.error(f"roi_pooling_param.pad_ratio = {float(f32(p.pad_ratio))} (cascade-rcnn's padded RoIs) has no "
                      "ONNX MaxRoiPool form; only pad_ratio 0 is exported")
    rois = n.bottom_shapes[1]
    r = n.inputs[1]
    if len(rois) != 2:
        r = g.reshape(r, (rois[0], 5), (n.bottom_batch[1][0], False))
    return [g.op("MaxRoiPool", n.inputs[0], r, pooled_shape=[int(p.pooled_h), int(p.pooled_w)],
                 spatial_scale=float(f32(field(p, "spatial_scale", 1.0))))]


@onnx_emitter("BN")
def bn(g: OnnxGraph, n: LayerNode) -> list[str]:
    """PSPNet's BN (four blobs: slope, bias, mean, variance; TEST or frozen; L-Softmax's, with 1 x C blobs, stores
    the inverse std in place of the variance) or SegNet's (two blobs:
    scale, shift; INFERENCE mode is affine, LEARN mode normalizes by the batch's statistics)."""
    p = param(n, "bn_param")
    x, rank = n.inputs[0], len(n.bottom_shapes[0])
    blobs = [np.asarray(b, f32).reshape(-1) for b in n.blobs]
    view = [channel_view(b, rank) for b in blobs]
    if len(blobs) >= 4:
        if n.layer is not None and getattr(n.layer, "phase", 1) == 0 and not field(p, "frozen", False):
            raise n.error("a PSPNet BN in the TRAIN phase uses batch statistics; export the TEST phase")
        if np.asarray(n.blobs[0]).ndim == 2:  # L-Softmax's BN (1 x C blobs): blob 3 is the inverse std
            inv = blobs[3]
        else:
            eps = engine_eps(field(p, "eps", 1e-5), field(p, "engine", 0))  # the cuDNN engine clamps at 1e-5
            inv = (blobs[3] + f32(eps)).astype(f32) ** f32(-0.5)
        y = g.op("Mul", g.op("Sub", x, g.const(view[2], "mean")), g.const(channel_view(inv.astype(f32), rank), "inv_std"))
        return [g.op("Add", g.op("Mul", y, g.const(view[0], "slope")), g.const(view[1], "bias"))]
    if len(blobs) != 2:
        raise n.error(f"expected 2 (SegNet) or 4 (PSPNet) blobs; received {len(blobs)}")
    if int(field(p, "bn_mode", 0)) == 0:  # LEARN: the batch's own statistics, var = E(x^2) - E(x)^2
        axes = [0] + list(range(2, rank))
        mean = g.reduce("ReduceMean", x, axes)
        var = g.op("Sub", g.reduce("ReduceMean", g.op("Mul", x, x), axes), g.op("Mul", mean, mean))
        std = g.op("Sqrt", g.op("Add", var, g.scalar(float(f32(1e-9)))))  # var_eps_, fixed in the source
        x = g.op("Div", g.op("Sub", x, mean), std)
    return [g.op("Add", g.op("Mul", x, g.const(view[0], "scale")), g.const(view[1], "shift"))]


@onnx_emitter("Reorg")
def reorg(g: OnnxGraph, n: LayerNode) -> list[str]:
    """The YOLOv2 ports' reorg_layer (reorg_cpu's index order; see ``neocaffe.layers.yolo.ReorgLayer``):
    a reshape, a transpose and a reshape."""
    rp = param(n, "reorg_param")
    k, reverse = int(field(rp, "stride", 0)), bool(field(rp, "reverse", False))
    N, C, H, W = n.bottom_shapes[0]
    if k <= 0 or C % (k * k):
        raise n.error(f"reorg_param.stride {k} must be > 0 with stride^2 dividing the {C} channels")
    if reverse:
        split, perm = (N, k, k, C // (k * k), H, W), [0, 3, 4, 1, 5, 2]
    else:
        split, perm = (N, C // (k * k), H, k, W, k), [0, 3, 5, 1, 2, 4]
    y = g.reshape(n.inputs[0], split, n.bottom_batch[0][:1] + (False,) * 5)
    y = g.op("Transpose", y, perm=perm)
    return [g.reshape(y, n.top_shapes[0], n.top_batch[0])]
