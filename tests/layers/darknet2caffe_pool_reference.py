"""Loop-by-loop NumPy port of ChenYingpeng/darknet2caffe's ``caffe_layers/pooling_layer/pooling_layer.cpp``
(@ f6d9ea33c199dc0881531f75651f2a9abafca73f): its ``Reshape`` (always CEIL; one more output row and column
when ``(kernel_h - stride_h) % 2 == 1``, before the pad clip and ``CHECK_LT``) and its ``Forward_cpu`` /
``Backward_cpu`` for MAX and AVE, which are BVLC's unchanged. A test reference only.

One liberty: a MAX window with nothing in it keeps mask -1, and the fork's ``Backward_cpu`` then adds its diff at
``bottom_diff[-1]`` (out of bounds of the plane); the port skips it.
"""
from __future__ import annotations

import math

import numpy as np

FLT_MAX = np.float32(3.4028234663852886e38)


def reshape(H: int, W: int, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int]) -> tuple[int, int]:
    """``PoolingLayer::Reshape``: (pooled_height, pooled_width)."""
    ph = int(math.ceil(np.float32(H + 2 * p[0] - k[0]) / np.float32(s[0]))) + 1
    pw = int(math.ceil(np.float32(W + 2 * p[1] - k[1]) / np.float32(s[1]))) + 1
    d = k[0] - s[0]
    if d % 2 == 1 and d > 0:  # C++: (kernel_h_ - stride_h_) % 2 == 1 holds for positive odd d only
        ph += 1
        pw += 1
    if p[0] or p[1]:
        if (ph - 1) * s[0] >= H + p[0]:
            ph -= 1
        if (pw - 1) * s[1] >= W + p[1]:
            pw -= 1
        if not ((ph - 1) * s[0] < H + p[0] and (pw - 1) * s[1] < W + p[1]):
            raise ValueError("CHECK_LT failed")
    return ph, pw


def forward(x: np.ndarray, method: str, k, s, p):
    """``Forward_cpu``: (top, mask or None). ``x``: N x C x H x W float32."""
    N, C, H, W = x.shape
    PH, PW = reshape(H, W, k, s, p)
    top = np.zeros((N, C, PH, PW), np.float32)
    mask = np.full((N, C, PH, PW), -1, np.int64) if method == "MAX" else None
    for n in range(N):
        for c in range(C):
            b = x[n, c]
            for ph in range(PH):
                for pw in range(PW):
                    hstart, wstart = ph * s[0] - p[0], pw * s[1] - p[1]
                    if method == "MAX":
                        hend, wend = min(hstart + k[0], H), min(wstart + k[1], W)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        t = -FLT_MAX
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                if b[h, w] > t:
                                    t = b[h, w]
                                    mask[n, c, ph, pw] = h * W + w
                        top[n, c, ph, pw] = t
                    else:
                        hend, wend = min(hstart + k[0], H + p[0]), min(wstart + k[1], W + p[1])
                        pool_size = (hend - hstart) * (wend - wstart)
                        hstart, wstart = max(hstart, 0), max(wstart, 0)
                        hend, wend = min(hend, H), min(wend, W)
                        acc = np.float32(0)
                        for h in range(hstart, hend):
                            for w in range(wstart, wend):
                                acc = np.float32(acc + b[h, w])
                        with np.errstate(divide="ignore", invalid="ignore"):
                            top[n, c, ph, pw] = np.float32(acc / np.float32(pool_size))
    return top, mask


def backward(x_shape, top_diff: np.ndarray, method: str, k, s, p, mask=None) -> np.ndarray:
    """``Backward_cpu``: the bottom diff."""
    N, C, H, W = x_shape
    PH, PW = top_diff.shape[-2:]
    bd = np.zeros(x_shape, np.float32)
    for n in range(N):
        for c in range(C):
            flat = bd[n, c].reshape(-1)
            for ph in range(PH):
                for pw in range(PW):
                    g = top_diff[n, c, ph, pw]
                    if method == "MAX":
                        i = mask[n, c, ph, pw]
                        if i >= 0:
                            flat[i] += g
                        continue
                    hstart, wstart = ph * s[0] - p[0], pw * s[1] - p[1]
                    hend, wend = min(hstart + k[0], H + p[0]), min(wstart + k[1], W + p[1])
                    pool_size = (hend - hstart) * (wend - wstart)
                    hstart, wstart = max(hstart, 0), max(wstart, 0)
                    hend, wend = min(hend, H), min(wend, W)
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            flat[h * W + w] += np.float32(g / np.float32(pool_size))
    return bd
