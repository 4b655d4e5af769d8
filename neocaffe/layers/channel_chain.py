"""BatchNorm (global statistics) -> Scale -> ReLU in one pass, with the layers' numbers bit for bit.

Caffe's deploy nets of the ResNet/MobileNet era follow nearly every convolution by a BatchNorm with
stored statistics, a Scale with a learned per-channel scale and bias, and a ReLU, all in place. Run one
by one they are five passes over the blob (subtract the mean, divide by the deviation, multiply, add,
clamp), and on one core the divide alone is the cost of a pass: on MobileNet v2 at batch 1 they took
half of the forward. ``bn_chain`` returns a function doing the same float32 operations per element,
in the same order, in one pass (``native``'s C kernel, no contraction, IEEE division):

    m = b0[c] * f,  s = sqrt(b1[c] * f + eps)   (f = 0 if b2 == 0 else 1 / b2; Caffe's BatchNormLayer)
    v = (x - m) / s;  v = v * g[c];  v = v + b[c]   (Caffe's ScaleLayer, with its BiasLayer)
    v = v < 0 ? 0 : v   or   v > 0 ? v : v * slope   (ReLU, leaky ReLU)

Missing links take g = 1, b = 0 (the same values; only the sign of a zero may differ). ``sqrt`` is
correctly rounded, as Caffe's ``caffe_sqrt`` (and BatchNormLayer.forward, which rounds through float64
for this reason). The statistics and the Scale's blobs are read at every call, so weights copied or
shared later are what it uses.
"""
from __future__ import annotations

import ctypes
from typing import Any, Callable

import torch
from torch import Tensor

from neocaffe.layers import native
from neocaffe.layers.base import Layer

SOURCE = r"""
#include <math.h>

void neocaffe_bn_chain(float *y, const float *x, long n, long c, long inner,
                       const float *b0, const float *b1, const float *b2, float eps,
                       const float *gam, const float *bet, int relu, float slope) {
    const float f = b2[0] == 0.0f ? 0.0f : 1.0f / b2[0];
    for (long p = 0; p < n * c; ++p) {
        const long ch = p % c;
        const float m = b0[ch] * f;
        const float s = sqrtf(b1[ch] * f + eps);
        const float g = gam ? gam[ch] : 1.0f, b = bet ? bet[ch] : 0.0f;
        const float *restrict xi = x + p * inner;
        float *yi = y + p * inner;
#define LOOP(EXPR) for (long k = 0; k < inner; ++k) { \
            float v = xi[k] - m; v = v / s; v = v * g; v = v + b; yi[k] = (EXPR); }
        if (relu == 0) { LOOP(v) }
        else if (relu == 1) { LOOP(v < 0.0f ? 0.0f : v) }
        else { LOOP(v > 0.0f ? v : v * slope) }
#undef LOOP
    }
}
"""

_P, _L, _F, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int


def _function() -> Any:
    """The C function, or None where no native kernel can be built."""
    return native.function("bn_chain", SOURCE, "neocaffe_bn_chain",
                           [_P, _P, _L, _L, _L, _P, _P, _P, _F, _P, _P, _I, _F])


def _plain(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def _scale_blobs(scale: Layer, x: Tensor) -> tuple[Any, Any] | None:
    """The Scale layer's (scale, bias or None) Parameters, where they are per channel of axis 1."""
    c = x.shape[1]
    if scale.axis != 1 or len(scale.blobs) == 0 or tuple(scale.blobs[0].shape) != (c,):
        return None
    sp = scale.param.scale_param
    if sp.HasField("min_value") or sp.HasField("max_value"):  # happynear's clamp runs in Scale's own forward
        return None
    if scale.bias_term and (getattr(scale, "bias_axis", 1) != 1 or tuple(scale.blobs[-1].shape) != (c,)):
        return None
    return scale.blobs[0], (scale.blobs[-1] if scale.bias_term else None)


def bn_chain(bn: Layer, scale: Layer | None, relu: Layer | None, x: Tensor,
             in_place: bool) -> Callable[[Tensor], Tensor] | None:
    """A function of bottoms like ``x`` computing ``bn`` (global statistics), then ``scale`` and
    ``relu`` (each optional) in one pass, into ``x`` itself when ``in_place`` else into a new tensor;
    None where the chain is not one this kernel covers (CPU float32 contiguous, per-channel blobs of
    axis 1), while tracing or compiling, or where no native kernel can be built."""
    if native.traceable_only(x) or not getattr(bn, "use_global", False) or x.dim() < 2 or not _plain(x):
        return None
    params = list(bn.blobs)
    c = x.shape[1]
    if [tuple(p.shape) for p in params] != [(c,), (c,), (1,)]:
        return None
    g = b = None
    if scale is not None:
        found = _scale_blobs(scale, x)
        if found is None:
            return None
        g, b = found
    mode, slope = 0, 0.0
    if relu is not None:
        slope = float(relu.slope)
        mode = 1 if slope == 0 else 2
    tensors = params + [t for t in (g, b) if t is not None]
    if not all(_plain(t.data) for t in tensors):
        return None
    run = _function()
    if run is None:
        return None
    n, inner = x.shape[0], x.numel() // (x.shape[0] * c) if x.numel() else 0
    eps = bn.eps
    b0, b1, b2 = params

    def chain(x: Tensor) -> Tensor:
        if not x.is_contiguous():  # e.g. channels_last: the loop reads NCHW planes
            y = chain(x.contiguous())
            return x.copy_(y) if in_place else y
        y = x if in_place else torch.empty_like(x)
        run(y.data_ptr(), x.data_ptr(), n, c, inner, b0.data_ptr(), b1.data_ptr(), b2.data_ptr(), eps,
            g.data_ptr() if g is not None else None, b.data_ptr() if b is not None else None, mode, slope)
        return y
    return chain


__all__ = ["bn_chain", "SOURCE"]
