"""A small net's whole forward in one native call: the C program the frozen mode's ``native`` candidate runs.

MTCNN's P-Net at batch 1 is eleven layers of 1-100 pixels each: every PyTorch call costs more than its
arithmetic, and the net's eleven calls took 40 us where OpenCV's whole forward takes 15-20 us. Here the
layers run as one list of operations (``Op``) in one C call, image by image, over one memory arena
per thread, the activations laid out pixel-major (H x W x C, channels innermost):

* ``CONV``: Caffe's Convolution (grouped, strided, padded, dilated) and InnerProduct (a convolution
  whose kernel covers its whole bottom): per group, per block of 16 output channels, tiles of ``PT``
  output pixels accumulate ``x[pixel, k] * w[k, 16 channels]`` over ``k = (ky, kx, input channel)``
  starting from the bias, then an optional ReLU/PReLU (``act``) on the way out. Weights are packed once
  by ``pack_conv`` / ``pack_inner_product`` (output channels padded to 16 with zeros);
* ``POOL_MAX`` / ``POOL_AVE``: Caffe's window rule (``PoolingLayer::Forward_cpu``: AVE divides by the
  window clipped to the padded bottom; MAX takes the first maximum, a NaN wins as in the Pooling layer);
* ``ACT``: ReLU (``negative_slope``) or PReLU on its own; ``SOFTMAX`` over the channels (axis 1);
* ``TO_HWC`` / ``TO_CHW``: an input from, an output to, the net's N x C x H x W tensors.

Numbers: float32 with fused multiply-add (compiled with ``-ffp-contract=fast``) and a summation order
of its own, so convolutions and inner products differ from Caffe's in the last bits (the frozen mode's
stated tolerance); pooling, ReLU, PReLU are Caffe's operations. Images are split over
``plan_t.nthreads`` threads of an OpenMP parallel region: built with ``-fopenmp`` the library loads the
OpenMP runtime PyTorch already loaded (the same ``libgomp.so.1``), so its threads are PyTorch's and do
not compete with them for the cores; threads started per call (pthreads) cost MTCNN det1 at batch 16
more than they gained (76 us on 2 threads, 51 us on one).
"""
from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from neocaffe.layers import native

CONV, POOL_MAX, POOL_AVE, ACT, SOFTMAX, TO_HWC, TO_CHW = range(1, 8)
#: ``act`` of CONV and ACT operations
NO_ACT, RELU, PRELU = 0, 1, 2
#: output channels per weight block (one 512-bit vector)
BLOCK = 16

SOURCE = r"""
#include <float.h>
#include <math.h>
#include <string.h>

#define BLK 16
#define PT 6
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

enum { CONV = 1, POOL_MAX, POOL_AVE, ACT, SOFTMAX, TO_HWC, TO_CHW };

typedef struct {
    long kind, act, src, dst;
    long C, H, W, OC, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, group;
    const float *w, *b, *alpha;
    float slope;
    long shared;
} op_t;

typedef struct {
    const op_t *ops;
    long nops;
    float *const *inputs;
    float *const *outputs;
    float *const *arenas;
    long scratch, nimages, nthreads;
} plan_t;

#define TAKE(v, top) ((v) > (top) || (v) != (v) ? (v) : (top))

static inline float activate(float v, long act, float slope, const float *alpha, long c) {
    if (act == 1) return v > 0 ? v : (slope == 0 ? (v < 0 ? 0.0f : v) : v * slope);
    if (act == 2) return v > 0 ? v : v * alpha[c];
    return v;
}

typedef int v16i __attribute__((vector_size(64)));

/* m ? a : b, lane by lane (m: all ones or all zeros per lane) */
static inline v16 pick(v16i m, v16 a, v16 b) { return (v16)((m & (v16i)a) | (~m & (v16i)b)); }

/* 16 outputs of a convolution (nv of them real) through its activation into y */
static inline void finish(const op_t *o, v16 v, float *y, long nv, long oc0) {
    const v16 zero = {0};
    if (o->act == 1 && o->slope == 0) v = pick(v < zero, zero, v);
    else if (o->act == 1) v = pick(v > zero, v, v * o->slope);
    else if (o->act == 2) {
        const v16 a = o->shared ? zero + o->alpha[0] : *(const v16u *)(o->alpha + oc0);  /* padded to 16 */
        v = pick(v > zero, v, v * a);
    }
    if (nv == BLK) { *(v16u *)y = v; return; }
    float t[BLK];
    memcpy(t, &v, sizeof t);
    memcpy(y, t, sizeof(float) * nv);
}

static void conv(const op_t *o, const float *in, float *out, float *scratch) {
    const long C = o->C, H = o->H, W = o->W, OC = o->OC, OW = o->OW;
    const long kh = o->kh, kw = o->kw, sh = o->sh, sw = o->sw, dh = o->dh, dw = o->dw, G = o->group;
    const float *x = in;
    long PW = W;
    if (o->ph || o->pw) {
        const long PH = H + 2 * o->ph;
        PW = W + 2 * o->pw;
        memset(scratch, 0, sizeof(float) * PH * PW * C);
        for (long h = 0; h < H; ++h)
            memcpy(scratch + ((h + o->ph) * PW + o->pw) * C, in + h * W * C, sizeof(float) * W * C);
        x = scratch;
    }
    const long cg = C / G, og = OC / G, K = kh * kw * cg, P = o->OH * OW, nb = (og + BLK - 1) / BLK;
    for (long g = 0; g < G; ++g)
        for (long blk = 0; blk < nb; ++blk) {
            const float *wb = o->w + (g * nb + blk) * K * BLK;
            const v16 init = o->b ? *(const v16u *)(o->b + (g * nb + blk) * BLK) : (v16){0};
            const long oc0 = g * og + blk * BLK, nv = og - blk * BLK < BLK ? og - blk * BLK : BLK;
            long p0 = 0;
            for (; p0 + PT <= P; p0 += PT) {
                const float *xp[PT];
                for (long q = 0; q < PT; ++q) {
                    const long pp = p0 + q, oy = pp / OW, ox = pp % OW;
                    xp[q] = x + (oy * sh * PW + ox * sw) * C + g * cg;
                }
                v16 acc[PT];
                for (long q = 0; q < PT; ++q) acc[q] = init;
                for (long ky = 0; ky < kh; ++ky)
                    for (long kx = 0; kx < kw; ++kx) {
                        const long off = (ky * dh * PW + kx * dw) * C;
                        const float *wk = wb + (ky * kw + kx) * cg * BLK;
                        for (long ic = 0; ic < cg; ++ic) {
                            const v16 wv = *(const v16u *)(wk + ic * BLK);
                            for (long q = 0; q < PT; ++q) acc[q] += xp[q][off + ic] * wv;
                        }
                    }
                for (long q = 0; q < PT; ++q) finish(o, acc[q], out + (p0 + q) * OC + oc0, nv, oc0);
            }
            for (; p0 < P; ++p0) {  /* one pixel: four partial sums over the input channels */
                const long oy = p0 / OW, ox = p0 % OW;
                const float *xq = x + (oy * sh * PW + ox * sw) * C + g * cg;
                v16 a0 = init, a1 = {0}, a2 = {0}, a3 = {0};
                for (long ky = 0; ky < kh; ++ky)
                    for (long kx = 0; kx < kw; ++kx) {
                        const float *xr = xq + (ky * dh * PW + kx * dw) * C;
                        const float *wk = wb + (ky * kw + kx) * cg * BLK;
                        long ic = 0;
                        for (; ic + 4 <= cg; ic += 4) {
                            a0 += xr[ic] * *(const v16u *)(wk + ic * BLK);
                            a1 += xr[ic + 1] * *(const v16u *)(wk + (ic + 1) * BLK);
                            a2 += xr[ic + 2] * *(const v16u *)(wk + (ic + 2) * BLK);
                            a3 += xr[ic + 3] * *(const v16u *)(wk + (ic + 3) * BLK);
                        }
                        for (; ic < cg; ++ic) a0 += xr[ic] * *(const v16u *)(wk + ic * BLK);
                    }
                finish(o, (a0 + a1) + (a2 + a3), out + p0 * OC + oc0, nv, oc0);
            }
        }
}

static void pool(const op_t *o, const float *in, float *out, int ave) {
    const long C = o->C, H = o->H, W = o->W;
    for (long oy = 0; oy < o->OH; ++oy)
        for (long ox = 0; ox < o->OW; ++ox) {
            long hs = oy * o->sh - o->ph, ws = ox * o->sw - o->pw;
            long he = hs + o->kh, we = ws + o->kw;
            if (he > H + o->ph) he = H + o->ph;
            if (we > W + o->pw) we = W + o->pw;
            const float size = (float)((he - hs) * (we - ws));
            if (hs < 0) hs = 0;
            if (ws < 0) ws = 0;
            if (he > H) he = H;
            if (we > W) we = W;
            float *restrict y = out + (oy * o->OW + ox) * C;
            for (long c = 0; c < C; ++c) y[c] = ave ? 0.0f : -FLT_MAX;
            for (long h = hs; h < he; ++h)
                for (long w = ws; w < we; ++w) {
                    const float *restrict r = in + (h * W + w) * C;
                    if (ave)
                        for (long c = 0; c < C; ++c) y[c] += r[c];
                    else
                        for (long c = 0; c < C; ++c) { const float v = r[c]; y[c] = TAKE(v, y[c]); }
                }
            if (ave)
                for (long c = 0; c < C; ++c) y[c] /= size;
        }
}

static void act(const op_t *o, const float *in, float *out) {
    const long C = o->C, P = o->H * o->W;
    for (long p = 0; p < P; ++p)
        for (long c = 0; c < C; ++c)
            out[p * C + c] = activate(in[p * C + c], o->act, o->slope, o->alpha, o->shared ? 0 : c);
}

static void softmax(const op_t *o, const float *in, float *out) {
    const long C = o->C, P = o->H * o->W;
    for (long p = 0; p < P; ++p) {
        const float *x = in + p * C;
        float *y = out + p * C;
        float m = x[0], s = 0.0f;
        for (long c = 1; c < C; ++c) m = x[c] > m ? x[c] : m;
        for (long c = 0; c < C; ++c) { y[c] = expf(x[c] - m); s += y[c]; }
        for (long c = 0; c < C; ++c) y[c] /= s;
    }
}

static void transpose(const float *src, float *dst, long rows, long cols) {  /* dst[c][r] = src[r][c] */
    if (rows == 1 || cols == 1) { memcpy(dst, src, sizeof(float) * rows * cols); return; }
    for (long r = 0; r < rows; ++r)
        for (long c = 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
}

static void run_images(const plan_t *p, long t) {
    const long lo = p->nimages * t / p->nthreads, hi = p->nimages * (t + 1) / p->nthreads;
    float *arena = p->arenas[t];
    for (long n = lo; n < hi; ++n)
        for (long i = 0; i < p->nops; ++i) {
            const op_t *o = p->ops + i;
            const long size = o->C * o->H * o->W;
            switch (o->kind) {
            case CONV: conv(o, arena + o->src, arena + o->dst, arena + p->scratch); break;
            case POOL_MAX: pool(o, arena + o->src, arena + o->dst, 0); break;
            case POOL_AVE: pool(o, arena + o->src, arena + o->dst, 1); break;
            case ACT: act(o, arena + o->src, arena + o->dst); break;
            case SOFTMAX: softmax(o, arena + o->src, arena + o->dst); break;
            case TO_HWC: transpose(p->inputs[o->src] + n * size, arena + o->dst, o->C, o->H * o->W); break;
            case TO_CHW: transpose(arena + o->src, p->outputs[o->dst] + n * size, o->H * o->W, o->C); break;
            }
        }
}

void neocaffe_small_net(const plan_t *p) {
    const long T = p->nthreads;
#ifdef _OPENMP
    if (T > 1) {
#pragma omp parallel for num_threads(T) schedule(static, 1)
        for (long t = 0; t < T; ++t) run_images(p, t);
        return;
    }
#endif
    for (long t = 0; t < T; ++t) run_images(p, t);
}
"""

_L = ctypes.c_long
_P = ctypes.c_void_p


class Op(ctypes.Structure):
    """``op_t``: one operation; ``src``/``dst`` are arena offsets in floats (TO_HWC: ``src`` is an input's
    index; TO_CHW: ``dst`` an output's index); ``C, H, W`` the bottom's per-image shape; ``OC, OH, OW``
    the top's; the rest the window (``kh, kw, sh, sw, ph, pw, dh, dw``), ``group``, the packed weights
    ``w``, bias ``b`` and PReLU slopes ``alpha`` (``shared``: one slope), a ReLU's ``slope``."""
    _fields_ = [(f, _L) for f in ("kind", "act", "src", "dst", "C", "H", "W", "OC", "OH", "OW", "kh", "kw",
                                  "sh", "sw", "ph", "pw", "dh", "dw", "group")] + [
        ("w", _P), ("b", _P), ("alpha", _P), ("slope", ctypes.c_float), ("shared", _L)]


class Plan(ctypes.Structure):
    """``plan_t``: the operations, the inputs' and outputs' base addresses, one arena per thread (the
    padding scratch at offset ``scratch`` of each), the images and threads of this call."""
    _fields_ = [("ops", _P), ("nops", _L), ("inputs", _P), ("outputs", _P), ("arenas", _P),
                ("scratch", _L), ("nimages", _L), ("nthreads", _L)]


def function() -> Any:
    """The C entry point ``neocaffe_small_net(const plan_t *)``, or None where no native kernel can be
    built: with OpenMP where the compiler has it (``-fopenmp``), else running the threads' shares in turn."""
    args = ("small_net", SOURCE, "neocaffe_small_net", [ctypes.POINTER(Plan)])
    return (native.function(*args, extra_flags=("-ffp-contract=fast", "-fopenmp"))
            or native.function(*args, extra_flags=("-ffp-contract=fast",)))


def pack_conv(weight: np.ndarray, bias: np.ndarray | None, group: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Caffe's convolution weights (OC x C/group x kh x kw) as CONV reads them: per group, per block
    of 16 output channels, (ky, kx, input channel, 16) with the missing channels zero; the bias per block."""
    oc, cg, kh, kw = weight.shape
    og = oc // group
    nb = -(-og // BLOCK)
    w = np.zeros((group, nb * BLOCK, cg, kh, kw), np.float32)
    w[:, :og] = weight.reshape(group, og, cg, kh, kw)
    w = w.reshape(group, nb, BLOCK, cg, kh, kw).transpose(0, 1, 4, 5, 3, 2)
    b = None
    if bias is not None:
        b = np.zeros((group, nb * BLOCK), np.float32)
        b[:, :og] = bias.reshape(group, og)
    return np.ascontiguousarray(w), b


def pack_inner_product(weight: np.ndarray, bias: np.ndarray | None, transpose: bool, chw: tuple[int, int, int]
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """Caffe's InnerProduct weights (N x K, or K x N with ``transpose``) as a CONV whose kernel covers
    the bottom's ``chw`` (C x H x W per image, K = C * H * W in Caffe's flattening order)."""
    w = weight.T if transpose else weight
    return pack_conv(np.ascontiguousarray(w).reshape((w.shape[0],) + tuple(chw)), bias, 1)


__all__ = ["Op", "Plan", "function", "pack_conv", "pack_inner_product", "SOURCE", "CONV", "POOL_MAX",
           "POOL_AVE", "ACT", "SOFTMAX", "TO_HWC", "TO_CHW", "NO_ACT", "RELU", "PRELU", "BLOCK"]
