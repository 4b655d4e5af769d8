"""Loop ports of TSN's Caffe's layers (yjxiong/caffe action_recog @ 9831a2b4), the reference of
tests/layers/test_tsn_layers.py: ``batch_reduction_layer.cpp`` (Forward_cpu/Backward_cpu), ``sync_bn_layer.cu``
(its kernels, one thread's work at a time, one process) and ``bn_layer.cpp`` (Forward_cpu/Backward_cpu, CAFFE
engine), statement for statement on flat float32 arrays."""
from __future__ import annotations

import numpy as np

f32 = np.float32


def batch_reduction(x, axis, levels, op, pos=False, k=1):
    """Forward and a backward closure; ``op``: "SUM", "MEAN" or "TOPK"."""
    shape = x.shape
    levels = list(levels) or [1]
    ticks = [shape[axis]] if levels == [1] else [v * v for v in levels]
    step = int(np.prod(shape[axis + 2:] if pos else shape[axis + 1:], dtype=np.int64))
    num = int(np.prod(shape[:axis], dtype=np.int64))
    n_out = len(levels) if levels != [1] else 1
    bottom = x.astype(f32).reshape(-1)
    top = np.zeros(num * n_out * step, f32)
    idx = np.zeros(bottom.size, f32)
    if op != "TOPK":
        b = t_ = 0
        for n in range(num):
            for tick in ticks:
                coeff = f32(1) / f32(tick) if op == "MEAN" else f32(1)
                for t in range(tick):
                    top[t_:t_ + step] = coeff * bottom[b:b + step] + top[t_:t_ + step]
                    stride = 1 if t == tick - 1 else tick + 1
                    b += step * stride if pos else step
                t_ += step
    else:
        tick = ticks[0]
        b = t_ = 0
        for n in range(num):
            for i in range(step):
                buf = [(bottom[b + t * step + i], t) for t in range(tick)]
                buf.sort(key=lambda p: -p[0])  # descending (distinct values in the tests)
                acc = f32(0)
                for ko in range(k):
                    acc += buf[ko][0]
                    idx[b + buf[ko][1] * step + i] = ko + 1
                top[t_ + i] = acc / f32(k)
            t_ += step
            b += tick * step

    def backward(top_diff):
        td = top_diff.astype(f32).reshape(-1)
        bd = np.zeros(bottom.size, f32)  # pos: caffe_set(0); otherwise every entry is written
        if op != "TOPK":
            b = t_ = 0
            for n in range(num):
                for tick in ticks:
                    coeff = f32(1) / f32(tick) if op == "MEAN" else f32(1)
                    for t in range(tick):
                        bd[b:b + step] = coeff * td[t_:t_ + step]
                        stride = 1 if t == tick - 1 else tick + 1
                        b += step * stride if pos else step
                    t_ += step
        else:
            tick = ticks[0]
            b = t_ = 0
            for n in range(num):
                for i in range(step):
                    diff = td[t_ + i] / f32(k)
                    for t in range(tick):
                        bd[b + t * step + i] = diff if idx[b + t * step + i] >= 1 else 0
                t_ += step
                b += tick * step
        return bd.reshape(shape)

    return top, backward


def sync_bn_train(x, slope, bias, run_mean, run_var, momentum, eps, dy):
    """One process (MPI_all_rank 1): the TRAIN forward (top, new running mean/var) and the backward
    (bottom diff, slope diff, bias diff)."""
    N, C = x.shape[:2]
    S = int(np.prod(x.shape[2:], dtype=np.int64))
    xb, g = x.astype(f32).reshape(N, C, S), dy.astype(f32).reshape(N, C, S)
    m = N * S
    mean, var = np.zeros(C, f32), np.zeros(C, f32)
    for c in range(C):  # kernel_local_stats (sequential sums here)
        s1 = s2 = f32(0)
        for n in range(N):
            for i in range(S):
                s1 += xb[n, c, i]
                s2 += xb[n, c, i] * xb[n, c, i]
        mean[c], var[c] = s1 / f32(m), s2 / f32(m)
    var = var - mean * mean
    if m > 1:
        var = var * (f32(m) / f32(m - 1))
    new_mean = (f32(1) - f32(momentum)) * mean + f32(momentum) * run_mean
    new_var = (f32(1) - f32(momentum)) * var + f32(momentum) * run_var
    top = np.zeros_like(xb)
    for n in range(N):
        for c in range(C):
            for i in range(S):
                top[n, c, i] = (xb[n, c, i] - mean[c]) / np.sqrt(var[c] + f32(eps)) * slope[c] + bias[c]
    ds, db = np.zeros(C, f32), np.zeros(C, f32)
    for c in range(C):  # kernel_backward_scale_bias
        for n in range(N):
            for i in range(S):
                ds[c] += g[n, c, i] * (xb[n, c, i] - mean[c]) / np.sqrt(var[c] + f32(eps))
                db[c] += g[n, c, i]
    dx = np.zeros_like(xb)
    for n in range(N):  # kernel_backward_bottom
        for c in range(C):
            inv_std = f32(1) / np.sqrt(var[c] + f32(eps))
            for i in range(S):
                x_norm = (xb[n, c, i] - mean[c]) * inv_std
                dx[n, c, i] = slope[c] * inv_std * (g[n, c, i] - (x_norm * ds[c] + db[c]) / f32(m))
    return top.reshape(x.shape), new_mean, new_var, dx.reshape(x.shape), ds, db


def bn_caffe(x, slope, bias, run_mean, run_var, momentum, eps, frozen, train, dy):
    """bn_layer.cpp (CAFFE engine): top, new running mean/var, bottom diff, slope diff, bias diff (None when
    frozen)."""
    N, C = x.shape[:2]
    S = int(np.prod(x.shape[2:], dtype=np.int64))
    xb, g = x.astype(f32).reshape(N, C, S), dy.astype(f32).reshape(N, C, S)
    run_mean, run_var = run_mean.astype(f32).copy(), run_var.astype(f32).copy()
    if frozen or not train:
        mean = run_mean.copy()
    else:
        mean = (xb.mean(2, dtype=f32)).mean(0, dtype=f32)
        run_mean = (f32(1) - f32(momentum)) * mean + f32(momentum) * run_mean
    xc = xb - mean[None, :, None]
    if frozen or not train:
        var = run_var.copy()
    else:
        var = ((xc * xc).mean(2, dtype=f32)).mean(0, dtype=f32)
        run_var = (f32(1) - f32(momentum)) * var + f32(momentum) * run_var
    inv = (var + f32(eps)) ** f32(-0.5)
    x_norm = xc * inv[None, :, None]
    top = x_norm * slope[None, :, None] + bias[None, :, None]
    if frozen:
        dx = g * (slope * (run_var + f32(eps)) ** f32(-0.5))[None, :, None]
        return top.reshape(x.shape), run_mean, run_var, dx.reshape(x.shape), None, None
    ds = (x_norm * g).sum(2).sum(0)
    db = g.sum(2).sum(0)
    gs = g * slope[None, :, None]
    s1 = (x_norm * gs).sum(2).sum(0)
    dx = x_norm * s1[None, :, None]
    s2 = gs.sum(2).sum(0)
    dx = dx + s2[None, :, None]
    dx = gs + f32(-1) / f32(N * S) * dx
    dx = dx * inv[None, :, None]
    return top.reshape(x.shape), run_mean, run_var, dx.reshape(x.shape), ds, db
