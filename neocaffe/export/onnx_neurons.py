"""ONNX emitters of Caffe's neuron layers: ReLU (leaky), PReLU, Sigmoid/TanH/AbsVal/BNLL, ELU (NVCaffe's
``lambda``), Mish, Power (Caffe's constant case), Exp, Log, Threshold, Clip, Swish, Dropout (caffe-fast-rcnn's
``scale_train``) and SpatialDropout, with Caffe's float constants.
"""
from __future__ import annotations

import numpy as np

from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.onnx_layers import need_layer
from neocaffe.export.registry import LayerNode, onnx_emitter

f32 = np.float32


@onnx_emitter("ReLU")
def relu(g: OnnxGraph, n: LayerNode) -> list[str]:
    slope = float(f32(n.param.relu_param.negative_slope))
    return [g.op("Relu", n.inputs[0]) if slope == 0 else g.op("LeakyRelu", n.inputs[0], alpha=slope)]


@onnx_emitter("PReLU")
def prelu(g: OnnxGraph, n: LayerNode) -> list[str]:
    w = n.blobs[0]
    rank = len(n.bottom_shapes[0])
    w = w.reshape(1) if w.ndim == 0 else w.reshape(w.shape + (1,) * (rank - 2))
    return [g.op("PRelu", n.inputs[0], g.const(w, "slope"))]


def _unary(op_type: str):
    def emit(g: OnnxGraph, n: LayerNode) -> list[str]:
        return [g.op(op_type, n.inputs[0])]
    return emit


for _t, _op in (("Sigmoid", "Sigmoid"), ("TanH", "Tanh"), ("AbsVal", "Abs"), ("BNLL", "Softplus")):
    onnx_emitter(_t)(_unary(_op))


@onnx_emitter("ELU")
def elu(g: OnnxGraph, n: LayerNode) -> list[str]:
    y = g.op("Elu", n.inputs[0], alpha=float(f32(n.param.elu_param.alpha)))
    lam = float(f32(getattr(n.param.elu_param, "lambda")))  # NVCaffe's scale (default 1)
    return [y if lam == 1 else g.op("Mul", y, g.scalar(lam))]


@onnx_emitter("Mish")
def mish(g: OnnxGraph, n: LayerNode) -> list[str]:
    """x * tanh(softplus(x)): darknet2caffe's Mish to float rounding (its float formula cancels for small
    softplus values: neocaffe.layers.mish)."""
    x = n.inputs[0]
    return [g.op("Mul", x, g.op("Tanh", g.op("Softplus", x)))]


def _affine(g: OnnxGraph, x: str, scale: float, shift: float) -> str:
    if scale != 1:
        x = g.op("Mul", x, g.scalar(scale))
    return g.op("Add", x, g.scalar(shift)) if shift != 0 else x


@onnx_emitter("Power")
def power(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``(shift + scale*x)^power``; a constant when ``power*scale == 0`` (Caffe's special case)."""
    p = n.param.power_param
    pw, scale, shift = f32(p.power), f32(p.scale), f32(p.shift)
    x = n.inputs[0]
    if f32(pw * scale) == 0:
        value = 1.0 if pw == 0 else float(f32(np.power(shift, pw)))
        return [g.op("ConstantOfShape", g.op("Shape", x), value=_tensor(value))]
    y = _affine(g, x, float(scale), float(shift))
    if pw != 1:
        y = g.op("Pow", y, g.scalar(pw))
    return [y]


def _tensor(value: float):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array([value], f32))


@onnx_emitter("Exp")
def exp(g: OnnxGraph, n: LayerNode) -> list[str]:
    """``outer * exp(inner * x)`` with Caffe's float constants (the layer's own)."""
    L = need_layer(n)
    y = g.op("Exp", g.op("Mul", n.inputs[0], g.scalar(L.inner)) if L.inner != 1 else n.inputs[0])
    return [g.op("Mul", y, g.scalar(L.outer)) if L.outer != 1 else y]


@onnx_emitter("Log")
def log(g: OnnxGraph, n: LayerNode) -> list[str]:
    L = need_layer(n)
    y = g.op("Log", _affine(g, n.inputs[0], float(L.scale), float(L.shift)))
    return [g.op("Mul", y, g.scalar(L.base_scale)) if L.base_scale != 1 else y]


@onnx_emitter("Threshold")
def threshold(g: OnnxGraph, n: LayerNode) -> list[str]:
    t = float(f32(n.param.threshold_param.threshold))
    return [g.op("Cast", g.op("Greater", n.inputs[0], g.scalar(t)), to=1)]


@onnx_emitter("Clip")
def clip(g: OnnxGraph, n: LayerNode) -> list[str]:
    p = n.param.clip_param
    return [g.op("Clip", n.inputs[0], g.scalar(float(f32(p.min))), g.scalar(float(f32(p.max))))]


@onnx_emitter("Swish")
def swish(g: OnnxGraph, n: LayerNode) -> list[str]:
    beta = float(f32(n.param.swish_param.beta))
    x = n.inputs[0]
    return [g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.scalar(beta)) if beta != 1 else x))]


@onnx_emitter("Dropout")
def dropout(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Identity at TEST time (Caffe's Dropout scales at TRAIN time); caffe-fast-rcnn's
    ``scale_train: false`` scales at TEST time instead: ``x * float(1 / scale)``."""
    if n.param.dropout_param.scale_train:
        return [n.inputs[0]]
    scale = f32(1.0 / (1.0 - np.float64(f32(n.param.dropout_param.dropout_ratio))))
    return [g.op("Mul", n.inputs[0], g.scalar(float(f32(1.0 / float(scale)))))]


@onnx_emitter("SpatialDropout")
def spatial_dropout(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Intel Caffe's SpatialDropout is a copy at TEST time (it scales kept channels at TRAIN time)."""
    return [n.inputs[0]]
