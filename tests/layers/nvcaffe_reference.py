"""A loop-by-loop float32 NumPy port of NVCaffe's BatchNormLayer (NVIDIA/caffe 0.17.4 @ 87a25543,
src/caffe/layers/batch_norm_layer.cpp Forward_cpu / Backward_cpu), for tests/layers/test_nvcaffe_bn.py."""
from __future__ import annotations

import numpy as np

f32 = np.float32


def _mean_per_channel(x, N, C, S):
    out = np.zeros(C, f32)
    F = f32(1.0 / (N * S))
    for c in range(C):
        s = f32(0)
        for n in range(N):
            for i in range(S):
                s = f32(s + x[n, c, i])
        out[c] = f32(s * F)
    return out


def forward(x, blobs, train, iter_, maf, eps, scale_bias):
    """Returns (top, x_norm, inv_var, new blobs, new iter_)."""
    N, C = x.shape[:2]
    S = x.size // (N * C)
    x = x.reshape(N, C, S).astype(f32)
    blobs = [np.array(b, f32).reshape(-1) for b in blobs]
    eps = max(f32(eps), f32(1e-5))
    top = np.zeros_like(x)
    if not train:
        mean, var = blobs[0], blobs[1]
    else:
        mean = _mean_per_channel(x, N, C, S)
        xc = np.zeros_like(x)
        for n in range(N):
            for c in range(C):
                for i in range(S):
                    xc[n, c, i] = f32(x[n, c, i] - mean[c])
        var = _mean_per_channel(xc * xc, N, C, S)
    inv_var = np.array([f32(np.power(f32(v + eps), f32(-0.5))) for v in var], f32)
    for n in range(N):
        for c in range(C):
            for i in range(S):
                top[n, c, i] = f32(f32(x[n, c, i] - mean[c]) * inv_var[c])
    x_norm = top.copy()
    if train:
        for c in range(C):
            if iter_ > 1:
                a = f32(1.0 - f32(maf))
                blobs[0][c] = f32(f32(a * mean[c]) + f32(f32(maf) * blobs[0][c]))
                blobs[1][c] = f32(f32(a * var[c]) + f32(f32(maf) * blobs[1][c]))
            else:
                blobs[0][c], blobs[1][c] = mean[c], var[c]
        iter_ += 1
    if scale_bias:
        for n in range(N):
            for c in range(C):
                for i in range(S):
                    top[n, c, i] = f32(f32(top[n, c, i] * blobs[3][c]) + blobs[4][c])
    return top, x_norm, inv_var, blobs, iter_


def backward(dy, x_norm, inv_var, blobs, scale_bias):
    """Backward_cpu after a TRAIN forward: (bottom diff, scale diff, bias diff)."""
    N, C, S = x_norm.shape
    dy = dy.reshape(N, C, S).astype(f32)
    dscale = dbias = None
    if scale_bias:
        dscale = np.zeros(C, f32)
        dbias = np.zeros(C, f32)
        for c in range(C):
            for n in range(N):
                for i in range(S):
                    dscale[c] = f32(dscale[c] + f32(dy[n, c, i] * x_norm[n, c, i]))
                    dbias[c] = f32(dbias[c] + dy[n, c, i])
        g = np.zeros_like(dy)
        for n in range(N):
            for c in range(C):
                for i in range(S):
                    g[n, c, i] = f32(dy[n, c, i] * blobs[3][c])
        dy = g
    m1 = _mean_per_channel(dy * x_norm, N, C, S)
    m0 = _mean_per_channel(dy, N, C, S)
    dx = np.zeros_like(dy)
    for n in range(N):
        for c in range(C):
            for i in range(S):
                t = f32(m0[c] + f32(m1[c] * x_norm[n, c, i]))
                dx[n, c, i] = f32(f32(dy[n, c, i] - t) * inv_var[c])
    return dx, dscale, dbias
