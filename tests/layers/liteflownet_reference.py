"""Loop-by-loop NumPy ports of twhui/LiteFlowNet's own kernels, the reference of ``tests/layers/test_liteflownet.py``.

twhui/LiteFlowNet @ e7d6c43b3e5d36bf4d071c75abb79bcd7ce6cd59: ``src/caffe/layers/expmax_layer.{cpp,cu}``,
``negsquare_layer.cu``, ``grid_layer.cpp``, ``warp_layer.{cpp,cu}``. Every value is computed in the arrays' dtype
(the kernels' ``Dtype``), in the kernels' order; one thread of a CUDA kernel is one iteration of a loop here.
"""
from __future__ import annotations

import math

import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)


# -- ExpMax (expmax_layer.cu; LayerSetUp in expmax_layer.cpp) -----------------------------------------------------
def expmax_scales(base: float, scale: float, shift: float) -> tuple[np.float32, np.float32]:
    """``inner_scale_``, ``outer_scale_`` as LayerSetUp computes them (float members)."""
    base, scale, shift = np.float32(base), np.float32(scale), np.float32(shift)
    log_base = np.float32(1) if base == -1 else np.float32(math.log(base))
    inner = np.float32(log_base * scale)
    if shift == 0:
        outer = np.float32(1)
    else:
        outer = np.float32(math.pow(base, shift)) if base != -1 else np.float32(math.exp(shift))  # powf / expf
    return inner, outer


def expmax_forward(x: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Forward_gpu: channel max over ``outer_num_ = 1`` image, subtract from every image's slot of ``scale_``
    (zeros past image 0), scale, exp, scale."""
    dt = x.dtype.type
    n_img, channels = x.shape[0], x.shape[1]
    inner_num = int(np.prod(x.shape[2:])) if x.ndim > 2 else 1
    top = x.reshape(-1).copy()
    scale_data = np.zeros(n_img * inner_num, dtype=x.dtype)  # the buffer's first allocation is zeroed
    for index in range(1 * inner_num):  # kernel_channel_max(outer_num_ = 1, ...)
        n, s = index // inner_num, index % inner_num
        maxval = dt(-FLT_MAX)
        for c in range(channels):
            v = top[(n * channels + c) * inner_num + s]
            maxval = v if v > maxval else maxval  # CUDA max(): the non-NaN operand
        scale_data[index] = maxval
    for index in range(top.size):  # kernel_channel_subtract
        n, s = index // channels // inner_num, index % inner_num
        top[index] -= scale_data[n * inner_num + s]
    if dt(inner) != 1:
        top = (top * dt(inner)).astype(x.dtype)
    top = np.exp(top).astype(x.dtype)
    if dt(outer) != 1:
        top = (top * dt(outer)).astype(x.dtype)
    return top.reshape(x.shape)


def expmax_backward(top: np.ndarray, top_diff: np.ndarray, inner: float) -> np.ndarray:
    """Backward_gpu: ``bottom_diff = top_data * top_diff``, then scaled by ``inner_scale_``."""
    d = (top * top_diff).astype(top.dtype)
    return d if top.dtype.type(inner) == 1 else (d * top.dtype.type(inner)).astype(top.dtype)


# -- NegSquare (negsquare_layer.cu) -------------------------------------------------------------------------------
def negsquare_forward(x: np.ndarray) -> np.ndarray:
    """caffe_copy, caffe_gpu_powx(2), caffe_gpu_scal(-1)."""
    return ((x ** 2) * x.dtype.type(-1)).astype(x.dtype)


def negsquare_backward(top_diff: np.ndarray, bottom_diff: np.ndarray | None) -> np.ndarray:
    """Backward_gpu: ``caffe_gpu_scal(-1, bottom_diff)`` then ``bottom_diff = top_diff * bottom_diff``.
    ``bottom_diff``: the bottom blob's diff before the call (None: in place, the top's diff itself)."""
    td = top_diff.reshape(-1).copy()
    bd = td if bottom_diff is None else bottom_diff.reshape(-1).copy()  # in place: one buffer
    for i in range(bd.size):
        bd[i] = bd[i] * bd.dtype.type(-1)
    for i in range(bd.size):
        bd[i] = td[i] * bd[i]
    return bd.reshape(top_diff.shape)


# -- Grid (grid_layer.cpp) ----------------------------------------------------------------------------------------
def grid_forward(num: int, height: int, width: int, dtype=np.float32) -> np.ndarray:
    top = np.empty(num * 2 * height * width, dtype=dtype)
    for n in range(num):
        for h in range(height):
            for w in range(width):
                top[((n * 2) * height + h) * width + w] = w
                top[((n * 2 + 1) * height + h) * width + w] = h
    return top.reshape(num, 2, height, width)


# -- Warp (warp_layer.cu, warp_layer.cpp) -------------------------------------------------------------------------
def _corners(x, y):
    """The four (px, py, weight_x, weight_y) of ForwardGPU, in its order."""
    one = type(x)(1)
    fx, fy = math.floor(x), math.floor(y)
    return ((fx, fy, one - (x - fx), one - (y - fy)), (fx + 1, fy, one - ((fx + 1) - x), one - (y - fy)),
            (fx, fy + 1, one - (x - fx), one - ((fy + 1) - y)), (fx + 1, fy + 1, one - ((fx + 1) - x), one - ((fy + 1) - y)))


def warp_forward_gpu(u: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """ForwardGPU: one thread per top element; each corner inside adds ``wx * wy * U``."""
    n_img, c_n, h_n, w_n = u.shape
    uf, cf = u.reshape(-1), coords.reshape(-1)
    hw = h_n * w_n
    v = np.zeros(n_img * c_n * hw, dtype=u.dtype)
    for index in range(v.size):
        w, h, c, n = index % w_n, (index // w_n) % h_n, (index // hw) % c_n, index // (hw * c_n)
        ci = 2 * n * hw + h * w_n + w
        x, y = cf[ci], cf[ci + hw]
        for px, py, wx, wy in _corners(x, y):
            if 0 <= px < w_n and 0 <= py < h_n:
                v[index] += wx * wy * uf[(n * c_n + c) * hw + py * w_n + px]
    return v.reshape(u.shape)


def warp_backward_gpu(u: np.ndarray, coords: np.ndarray, dv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BackwardGPU_dU (the weights scatter dV) and BackwardGPU_dp (one launch per channel, in channel order)."""
    n_img, c_n, h_n, w_n = u.shape
    uf, cf, dvf = u.reshape(-1), coords.reshape(-1), dv.reshape(-1)
    hw = h_n * w_n
    du = np.zeros(u.size, dtype=u.dtype)
    for index in range(dvf.size):
        w, h, c, n = index % w_n, (index // w_n) % h_n, (index // hw) % c_n, index // (hw * c_n)
        ci = 2 * n * hw + h * w_n + w
        for px, py, wx, wy in _corners(cf[ci], cf[ci + hw]):
            if 0 <= px < w_n and 0 <= py < h_n:
                du[(n * c_n + c) * hw + py * w_n + px] += wx * wy * dvf[index]
    dp = np.zeros(coords.size, dtype=u.dtype)
    zero = u.dtype.type(0)
    for c in range(c_n):
        for index_ in range(n_img * hw):
            w, h, n = index_ % w_n, (index_ // w_n) % h_n, index_ // hw
            index = (n * c_n + c) * hw + h * w_n + w
            ci = 2 * n * hw + h * w_n + w
            x, y = cf[ci], cf[ci + hw]
            fx, fy = math.floor(x), math.floor(y)
            one = u.dtype.type(1)
            dpx, dpy = zero, zero
            for px, py, sx, sy, wy, wx in ((fx, fy, -1, -1, one - (y - fy), one - (x - fx)),
                                           (fx, fy + 1, -1, 1, one - ((fy + 1) - y), one - (x - fx)),
                                           (fx + 1, fy, 1, -1, one - (y - fy), one - ((fx + 1) - x)),
                                           (fx + 1, fy + 1, 1, 1, one - ((fy + 1) - y), one - ((fx + 1) - x))):
                if 0 <= px < w_n and 0 <= py < h_n:
                    val = uf[(n * c_n + c) * hw + py * w_n + px]
                    dpx = dpx + wy * val if sx > 0 else dpx - wy * val
                    dpy = dpy + wx * val if sy > 0 else dpy - wx * val
            dp[2 * n * hw + h * w_n + w] += dpx * dvf[index]
            dp[2 * n * hw + h * w_n + w + hw] += dpy * dvf[index]
    return du.reshape(u.shape), dp.reshape(coords.shape)


def _get(v, x, y, c, n, cc, w_n, h_n):
    return 0.0 if x < 0 or x > w_n - 1 or y < 0 or y > h_n - 1 else v[((n * cc + c) * h_n + y) * w_n + x]


def warp_forward_cpu(u: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Forward_cpu (float locals): ``w00 v00 + w01 v01 + w10 v10 + w11 v11``, corners outside read 0."""
    n_img, c_n, h_n, w_n = u.shape
    uf, cf = u.reshape(-1), coords.reshape(-1)
    f = np.float32
    vt = np.zeros(u.size, dtype=u.dtype)
    for n in range(n_img):
        for h in range(h_n):
            for w in range(w_n):
                index = (n * 2 * h_n + h) * w_n + w
                x, y = f(cf[index]), f(cf[index + h_n * w_n])
                x0, y0 = math.floor(x), math.floor(y)
                wx, wy = f(x - x0), f(y - y0)
                w00, w01, w10, w11 = (1 - wx) * (1 - wy), (1 - wx) * wy, wx * (1 - wy), wx * wy
                for c in range(c_n):
                    vt[((n * c_n + c) * h_n + h) * w_n + w] = (
                        w00 * f(_get(uf, x0, y0, c, n, c_n, w_n, h_n)) + w01 * f(_get(uf, x0, y0 + 1, c, n, c_n, w_n, h_n))
                        + w10 * f(_get(uf, x0 + 1, y0, c, n, c_n, w_n, h_n))
                        + w11 * f(_get(uf, x0 + 1, y0 + 1, c, n, c_n, w_n, h_n)))
    return vt.reshape(u.shape)
