"""MAX pooling of small nets in one native pass, with the Pooling layer's numbers bit for bit.

PyTorch's max pooling costs 15-55 us a call at the sizes of LeNet, MTCNN and the CIFAR-10 nets on one
core (LeNet's pool1, 20 x 24 x 24: 36 us in-run; MTCNN det2's 28 x 22 x 22: 56 us), a sixth to a
third of their whole forward, where OpenCV's complete LeNet takes 140 us. ``max_pool`` returns a
function doing Caffe's loop (``PoolingLayer::Forward_cpu``) in C, plane by plane:

    hstart = oh * stride - pad;  hend = min(hstart + kernel, H);  hstart = max(hstart, 0)   (and w)
    top = -FLT_MAX;  for h, w in the window, row-major: if (x > top || x is NaN) top = x

with the output size the layer computed (Caffe's rounding and clipping). The NaN rule is the layer's
documented deviation from Caffe (a NaN wins a window, as in PyTorch), kept so the lean path equals the
layer's forward for every input; otherwise the first maximum wins (strict ``>``), and a window of
-inf or an empty one gives -FLT_MAX, as in Caffe and the layer. It runs on the calling thread, and
its rows are short on small planes: PyTorch's channels_last pooling (vectorized over channels, on every
thread) is faster on many small planes with overlapping windows (MTCNN det2's pool1 at batch 16: 370 us
against 540), so the layer times both once per shape and keeps the faster (``layers.fastest``; the numbers
are the same either way).
"""
from __future__ import annotations

import ctypes
from typing import Any, Callable

import torch
from torch import Tensor

from neocaffe.layers import native

SOURCE = r"""
#include <float.h>
#include <stdlib.h>

typedef struct {
    float *y; const float *x; long planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw;
} pool_t;

#define TAKE(v, top) ((v) > (top) || (v) != (v) ? (v) : (top))

void neocaffe_max_pool(const pool_t *a) {
    const long W = a->W, OW = a->OW, kw = a->kw, sw = a->sw;
    /* one row of window maxima over the rows of a window, with -FLT_MAX beyond the input on both
       sides, so every window spans kw columns of it (-FLT_MAX never wins: Caffe's clipping) */
    const long len = a->pw + W + kw + OW * sw;
    float small[2048];
    float *buf = len <= 2048 ? small : (float *)malloc(sizeof(float) * len);
    if (!buf) return;
    for (long i = 0; i < len; ++i) buf[i] = -FLT_MAX;
    float *cm = buf + a->pw;
    for (long p = 0; p < a->planes; ++p) {
        const float *x = a->x + p * a->H * W;
        float *y = a->y + p * a->OH * OW;
        for (long oh = 0; oh < a->OH; ++oh) {
            long hs = oh * a->sh - a->ph, he = hs + a->kh;
            if (he > a->H) he = a->H;
            if (hs < 0) hs = 0;
            for (long w = 0; w < W; ++w) cm[w] = -FLT_MAX;
            for (long h = hs; h < he; ++h) {
                const float *restrict row = x + h * W;
                for (long w = 0; w < W; ++w) { const float v = row[w]; cm[w] = TAKE(v, cm[w]); }
            }
            float *restrict out = y + oh * OW;
            for (long ow = 0; ow < OW; ++ow) out[ow] = -FLT_MAX;
            for (long k = 0; k < kw; ++k) {
                const float *restrict c = buf + k;
                for (long ow = 0; ow < OW; ++ow) { const float v = c[ow * sw]; out[ow] = TAKE(v, out[ow]); }
            }
        }
    }
    if (buf != small) free(buf);
}
"""

_L = ctypes.c_long


class _Args(ctypes.Structure):
    """``pool_t``: the output and input addresses (set per call) and the geometry (set once)."""
    _fields_ = [("y", ctypes.c_void_p), ("x", ctypes.c_void_p)] + [
        (f, _L) for f in ("planes", "H", "W", "OH", "OW", "kh", "kw", "sh", "sw", "ph", "pw")]


def _function() -> Any:
    """The C function, or None where no native kernel can be built."""
    return native.function("max_pool", SOURCE, "neocaffe_max_pool", [ctypes.POINTER(_Args)])


def max_pool(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
             out: tuple[int, int]) -> Callable[[Tensor], Tensor] | None:
    """A function of bottoms like ``x`` (N x C x H x W, CPU float32) giving Caffe's MAX pooling into
    a new N x C x ``out`` tensor; None for other bottoms, while tracing or compiling, or where no native
    kernel can be built."""
    if native.traceable_only(x) or x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    run = _function()
    if run is None:
        return None
    n, c, h, w = x.shape
    shape = (n, c) + tuple(out)
    args = _Args(0, 0, n * c, h, w, out[0], out[1], kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1])
    ref = ctypes.byref(args)

    def pool(x: Tensor) -> Tensor:
        if not x.is_contiguous():  # e.g. channels_last: the loop reads NCHW
            x = x.contiguous()
        y = torch.empty(shape, dtype=torch.float32, device="cpu")  # the C loop writes float32 host memory
        args.y, args.x = y.data_ptr(), x.data_ptr()
        run(ref)
        return y
    return pool


__all__ = ["max_pool", "SOURCE"]
