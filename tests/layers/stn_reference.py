"""Loop-by-loop NumPy ports of daerduoCarey/SpatialTransformerLayer @ cf2a461c's kernels and CPU loops,
independent of neocaffe's implementation (``src/caffe/layers/st_layer.{cpp,cu}``,
``st_loss_layer.cu``, ``loc_loss_layer.cu``). ``dt`` is the blob type (np.float32 or np.float64): every
arithmetic step is done in it, as the C++ does for ``Dtype``; the grid expressions evaluated in double
by the fork are evaluated in Python floats and then cast.

The CUDA kernels are written as one thread per ``index``; here that is one loop iteration per index.
"""
from __future__ import annotations

import math

import numpy as np

FIELDS = ("theta_1_1", "theta_1_2", "theta_1_3", "theta_2_1", "theta_2_2", "theta_2_3")


def output_grid(out_h, out_w, dt):
    """LayerSetUp's output_grid: (out_h * out_w, 3), rows (s-coordinate, t-coordinate, 1)."""
    g = np.zeros((out_h * out_w, 3), dtype=dt)
    for i in range(out_h * out_w):
        g[i, 0] = dt((i // out_w) * 1.0 / out_h * 2 - 1)
        g[i, 1] = dt((i % out_w) * 1.0 / out_w * 2 - 1)
        g[i, 2] = dt(1)
    return g


def full_theta_gpu(theta, fixed, dt):
    """Forward_gpu's set_value_to_constant / copy_values: fixed = {field index: value}."""
    n = theta.shape[0]
    free = theta.reshape(n, -1).astype(dt)
    full = np.zeros((n, 6), dtype=dt)
    k = 0
    for i in range(6):
        for index in range(n):
            if i in fixed:
                full[index, i] = dt(fixed[i])
            else:
                full[index, i] = free[index, k]
        if i not in fixed:
            k += 1
    return full


def input_grid(full, out_h, out_w, dt):
    """The per-item gemm output_grid (P x 3) x theta_i^T (3 x 2) -> (N, P, 2)."""
    g = output_grid(out_h, out_w, dt)
    n = full.shape[0]
    res = np.zeros((n, out_h * out_w, 2), dtype=dt)
    for i in range(n):
        for p in range(out_h * out_w):
            for r in range(2):
                acc = dt(0)
                for q in range(3):
                    acc = dt(acc + g[p, q] * full[i, 3 * r + q])
                res[i, p, r] = acc
    return res


def _inside(m, n, h, w):
    return 0 <= m < h and 0 <= n < w


def st_forward_gpu(U, theta, fixed, out_h, out_w, dt):
    """Forward_gpu: returns V (N, C, out_h, out_w) and the input grid."""
    U = U.astype(dt)
    N, C, H, W = U.shape
    grid = input_grid(full_theta_gpu(theta, fixed, dt), out_h, out_w, dt)
    V = np.zeros((N, C, out_h, out_w), dtype=dt).reshape(-1)
    pics = U.reshape(N, C, H * W)
    for index in range(N * C * out_h * out_w):
        t = index % out_w
        s = (index // out_w) % out_h
        j = (index // (out_w * out_h)) % C
        i = index // (out_w * out_h * C)
        px, py = grid[i, out_w * s + t]
        x = dt((px + dt(1)) / dt(2) * dt(H))
        y = dt((py + dt(1)) / dt(2) * dt(W))
        pic = pics[i, j]
        acc = dt(0)
        m, n = math.floor(x), math.floor(y)
        if _inside(m, n, H, W):
            acc = dt(acc + (dt(1) - (x - dt(m))) * (dt(1) - (y - dt(n))) * pic[m * W + n])
        m, n = math.floor(x) + 1, math.floor(y)
        if _inside(m, n, H, W):
            acc = dt(acc + (dt(1) - (dt(m) - x)) * (dt(1) - (y - dt(n))) * pic[m * W + n])
        m, n = math.floor(x), math.floor(y) + 1
        if _inside(m, n, H, W):
            acc = dt(acc + (dt(1) - (x - dt(m))) * (dt(1) - (dt(n) - y)) * pic[m * W + n])
        m, n = math.floor(x) + 1, math.floor(y) + 1
        if _inside(m, n, H, W):
            acc = dt(acc + (dt(1) - (dt(m) - x)) * (dt(1) - (dt(n) - y)) * pic[m * W + n])
        V[index] = acc
    return V.reshape(N, C, out_h, out_w), grid


def st_backward_gpu(U, theta, fixed, dV, out_h, out_w, dt, to_compute_dU=True):
    """Backward_gpu: (dU or None, dTheta shaped like bottom 1)."""
    U = U.astype(dt)
    dV = dV.astype(dt).reshape(-1)
    N, C, H, W = U.shape
    _, grid = st_forward_gpu(U, theta, fixed, out_h, out_w, dt)
    P = out_h * out_w
    tmp = np.zeros((N * 6, P * C), dtype=dt)  # dTheta_tmp
    pics = U.reshape(N, C, H * W)
    for index in range(N * C * P):
        t = index % out_w
        s = (index // out_w) % out_h
        j = (index // P) % C
        i = index // (P * C)
        px, py = grid[i, out_w * s + t]
        x = dt((px + dt(1)) / dt(2) * dt(H))
        y = dt((py + dt(1)) / dt(2) * dt(W))
        d = dV[index]
        u = pics[i, j]
        dpx = dt(0)
        dpy = dt(0)
        hh, ww = dt(H), dt(W)
        m, n = math.floor(x), math.floor(y)  # left-bottom
        if _inside(m, n, H, W):
            dpx = dt(dpx - (dt(1) - (y - dt(n))) * u[m * W + n] * d * hh / dt(2))
            dpy = dt(dpy - (dt(1) - (x - dt(m))) * u[m * W + n] * d * ww / dt(2))
        m, n = math.floor(x), math.floor(y) + 1  # left-top
        if _inside(m, n, H, W):
            dpx = dt(dpx - (dt(1) - (dt(n) - y)) * u[m * W + n] * d * hh / dt(2))
            dpy = dt(dpy + (dt(1) - (x - dt(m))) * u[m * W + n] * d * ww / dt(2))
        m, n = math.floor(x) + 1, math.floor(y)  # right-bottom
        if _inside(m, n, H, W):
            dpx = dt(dpx + (dt(1) - (y - dt(n))) * u[m * W + n] * d * hh / dt(2))
            dpy = dt(dpy - (dt(1) - (dt(m) - x)) * u[m * W + n] * d * ww / dt(2))
        m, n = math.floor(x) + 1, math.floor(y) + 1  # right-top
        if _inside(m, n, H, W):
            dpx = dt(dpx + (dt(1) - (dt(n) - y)) * u[m * W + n] * d * hh / dt(2))
            dpy = dt(dpy + (dt(1) - (dt(m) - x)) * u[m * W + n] * d * ww / dt(2))
        idx = j * P + s * out_w + t
        gs = s * 1.0 / out_h * 2 - 1
        gt = t * 1.0 / out_w * 2 - 1
        for k, v in enumerate((float(dpx) * gs, float(dpx) * gt, dpx, float(dpy) * gs, float(dpy) * gt, dpy)):
            tmp[6 * i + k, idx] = dt(tmp[6 * i + k, idx] + dt(v))
    full_diff = np.zeros(N * 6, dtype=dt)
    for r in range(N * 6):  # the gemm with all_ones_2
        acc = dt(0)
        for q in range(P * C):
            acc = dt(acc + tmp[r, q])
        full_diff[r] = acc
    full_diff = full_diff.reshape(N, 6)
    free = [i for i in range(6) if i not in fixed]
    dtheta = np.zeros((N, len(free)), dtype=dt)
    for k, i in enumerate(free):
        dtheta[:, k] = full_diff[:, i]
    dU = None
    if to_compute_dU:
        dU = np.zeros((N, C, H * W), dtype=dt)
        for index in range(N * C * P):
            t = index % out_w
            s = (index // out_w) % out_h
            j = (index // P) % C
            i = index // (P * C)
            px, py = grid[i, out_w * s + t]
            x = dt((px + dt(1)) / dt(2) * dt(H))
            y = dt((py + dt(1)) / dt(2) * dt(W))
            for dm, dn in ((0, 0), (1, 0), (0, 1), (1, 1)):
                m, n = math.floor(x) + dm, math.floor(y) + dn
                if _inside(m, n, H, W):
                    wx = dt(1) - (x - dt(m)) if dm == 0 else dt(1) - (dt(m) - x)
                    wy = dt(1) - (y - dt(n)) if dn == 0 else dt(1) - (dt(n) - y)
                    dU[i, j, m * W + n] = dt(dU[i, j, m * W + n] + wx * wy * dV[index])
        dU = dU.reshape(N, C, H, W)
    return dU, dtheta.reshape(theta.shape)


# -- the CPU loops (disabled in the fork by CHECK(false); they read bottom 1 as the full six) -----------
def _w(x, m):
    return max(0.0, 1 - abs(x - m))


def st_forward_cpu(U, theta6, out_h, out_w):
    """Forward_cpu + transform_forward_cpu, in float64."""
    N, C, H, W = U.shape
    grid = input_grid(theta6.reshape(N, 6).astype(np.float64), out_h, out_w, np.float64)
    V = np.zeros((N, C, out_h, out_w))
    for i in range(N):
        for j in range(C):
            for s in range(out_h):
                for t in range(out_w):
                    px, py = grid[i, out_w * s + t]
                    x, y = (px + 1) / 2 * H, (py + 1) / 2 * W
                    res = 0.0
                    for m, n in ((math.floor(x), math.floor(y)), (math.floor(x) + 1, math.floor(y)),
                                 (math.floor(x), math.floor(y) + 1), (math.floor(x) + 1, math.floor(y) + 1)):
                        if _inside(m, n, H, W):
                            res += _w(x, m) * _w(y, n) * U[i, j, m, n]
                    V[i, j, s, t] = res
    return V


def st_backward_cpu(U, theta6, dV, out_h, out_w):
    """Backward_cpu + transform_backward_cpu, in float64: (dU, dTheta (N, 6))."""
    N, C, H, W = U.shape
    grid = input_grid(theta6.reshape(N, 6).astype(np.float64), out_h, out_w, np.float64)
    dU = np.zeros_like(U, dtype=np.float64)
    dT = np.zeros((N, 6))
    for i in range(N):
        for s in range(out_h):
            for t in range(out_w):
                px, py = grid[i, out_w * s + t]
                x, y = (px + 1) / 2 * H, (py + 1) / 2 * W
                cdx = cdy = 0.0
                for j in range(C):
                    d = dV[i, j, s, t]
                    for m, n in ((math.floor(x), math.floor(y)), (math.floor(x) + 1, math.floor(y)),
                                 (math.floor(x), math.floor(y) + 1), (math.floor(x) + 1, math.floor(y) + 1)):
                        if not _inside(m, n, H, W):
                            continue
                        dU[i, j, m, n] += _w(x, m) * _w(y, n) * d
                        if abs(x - m) < 1:
                            v = _w(y, n) * U[i, j, m, n] * d * H / 2
                            cdx += v if m >= x else -v
                        if abs(y - n) < 1:
                            v = _w(x, m) * U[i, j, m, n] * d * W / 2
                            cdy += v if n >= y else -v
                gs, gt = s * 1.0 / out_h * 2 - 1, t * 1.0 / out_w * 2 - 1
                dT[i] += (cdx * gs, cdx * gt, cdx, cdy * gs, cdy * gt, cdy)
    return dU, dT


# -- the losses ----------------------------------------------------------------------------------------
def st_loss_gpu(theta, out_h, out_w, top_diff, dt):
    """STLossForwardGPU / STLossBackwardGPU: (loss, dtheta)."""
    N = theta.shape[0]
    th = theta.reshape(N, 6).astype(dt)
    P = out_h * out_w
    losses = np.zeros(N * P, dtype=dt)
    tmp = np.zeros((N * 6, P), dtype=dt)
    for index in range(N * P):
        t = index % out_w
        s = (index // out_w) % out_h
        i = index // P
        ix = dt(s * 2.0 / out_h - 1)
        iy = dt(t * 2.0 / out_w - 1)
        ox = dt(th[i, 0] * ix + th[i, 1] * iy + th[i, 2])
        oy = dt(th[i, 3] * ix + th[i, 4] * iy + th[i, 5])
        loss, d1, d2 = dt(0), dt(0), dt(0)
        if ox < -1:
            loss, d1 = dt(loss + (ox + dt(1)) * (ox + dt(1)) / dt(2)), dt(ox + dt(1))
        elif ox > 1:
            loss, d1 = dt(loss + (ox - dt(1)) * (ox - dt(1)) / dt(2)), dt(ox - dt(1))
        if oy < -1:
            loss, d2 = dt(loss + (oy + dt(1)) * (oy + dt(1)) / dt(2)), dt(oy + dt(1))
        elif oy > 1:
            loss, d2 = dt(loss + (oy - dt(1)) * (oy - dt(1)) / dt(2)), dt(oy - dt(1))
        losses[index] = loss
        for k, v in enumerate((d1 * ix, d1 * iy, d1, d2 * ix, d2 * iy, d2)):
            tmp[6 * i + k, s * out_w + t] = dt(v)
    total = dt(sum(abs(float(v)) for v in losses)) / dt(N * P)
    dtheta = np.array([dt(sum(float(v) for v in tmp[r])) for r in range(N * 6)], dtype=dt)
    return total, (dtheta * dt(top_diff / (N * P))).reshape(theta.shape)


def loc_loss_gpu(locs, threshold, top_diff, dt, stale=None):
    """LocLossForwardGPU / LocLossBackwardGPU: (loss, dlocs). Inside the threshold the kernel writes
    nothing: ``stale`` (default 0) is what the diff held before."""
    flat = locs.reshape(-1).astype(dt)
    thr = dt(threshold)
    n = flat.size
    losses = np.zeros(n, dtype=dt)
    d = np.zeros(n, dtype=dt) if stale is None else stale.reshape(-1).astype(dt).copy()
    for index in range(n):
        v = flat[index]
        if v < -thr:
            losses[index] = (v + thr) * (v + thr) / dt(2)
            d[index] = v + thr
        elif v > thr:
            losses[index] = (v - thr) * (v - thr) / dt(2)
            d[index] = v - thr
    total = dt(sum(abs(float(v)) for v in losses)) / dt(n)
    return total, (d * dt(top_diff / n)).reshape(locs.shape)
