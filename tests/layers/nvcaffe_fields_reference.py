"""Loop-by-loop NumPy ports of NVCaffe's code (NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7)
for the layer fields neocaffe applies: ELU's ``lambda`` (src/caffe/layers/elu_layer.cpp, Forward_cpu/Backward_cpu,
same formulas as elu_layer.cu) and SoftmaxWithLoss's ``label_smoothing`` (src/caffe/layers/softmax_loss_layer.cpp
Forward_cpu + get_normalizer, and softmax_loss_layer.cu Backward_gpu + SoftmaxLossBackwardGPU). Written from
reading that code, element by element, in the blob's dtype; no torch."""
from __future__ import annotations

import numpy as np

FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


def elu_forward(x: np.ndarray, alpha: float, lam: float) -> np.ndarray:
    dt = x.dtype.type
    flat, top = x.ravel(), np.empty(x.size, x.dtype)
    for i in range(x.size):
        top[i] = dt(lam) * (max(flat[i], dt(0)) + dt(alpha) * (np.exp(min(flat[i], dt(0))) - dt(1)))
    return top.reshape(x.shape)


def elu_backward(x: np.ndarray, top: np.ndarray, top_diff: np.ndarray, alpha: float, lam: float) -> np.ndarray:
    dt = x.dtype.type
    b, t, d = x.ravel(), top.ravel(), top_diff.ravel()
    out = np.empty(x.size, x.dtype)
    for i in range(x.size):
        out[i] = dt(lam) * (d[i] * (dt(b[i] > 0) + (dt(alpha) + t[i]) * dt(b[i] <= 0)))
    return out.reshape(x.shape)


def _softmax(x3: np.ndarray) -> np.ndarray:
    m = x3.max(axis=1, keepdims=True)
    e = np.exp(x3 - m)
    return e / e.sum(axis=1, keepdims=True)


def _normalizer(mode: int, outer: int, inner: int, valid_count: int) -> float:
    n = {FULL: outer * inner, VALID: valid_count if valid_count != -1 else outer * inner,
         BATCH_SIZE: outer, NONE: 1}[mode]
    return max(1.0, float(n))


def softmax_loss_smoothed(x3: np.ndarray, label: np.ndarray, eps: float, ignore: int | None, mode: int,
                          top_diff: float = 1.0) -> tuple[float, np.ndarray]:
    """``x3``: (outer, C, inner); ``label``: (outer, inner). Returns (loss, bottom diff) as NVCaffe's GPU path:
    the forward is the plain one (the .cpp's and the .cu's agree), the backward the .cu's."""
    dt = x3.dtype.type
    outer, channels, inner = x3.shape
    prob = _softmax(x3)
    dim = channels * inner  # prob_->count() / outer_num_
    loss, count = 0.0, 0
    for i in range(outer):
        for j in range(inner):
            lv = int(label[i, j])
            if ignore is not None and lv == ignore:
                continue
            loss -= np.log(max(prob[i, lv, j], np.finfo(x3.dtype).tiny))
            count += 1
    loss = loss / _normalizer(mode, outer, inner, count)
    diff = prob.copy()  # caffe_gpu_memcpy(prob -> bottom_diff)
    if eps > 0:  # caffe_gpu_add_scalar(count, (Btype)(-label_smoothing_ / (dim - 1)))
        add = dt(dt(-eps) / dt(dim - 1))
        for i in range(outer):
            for c in range(channels):
                for j in range(inner):
                    diff[i, c, j] = diff[i, c, j] + add
    p1 = np.float32(1) - np.float32(eps)  # const float p1 = 1.F - float(label_smoothing)
    valid = 0
    for i in range(outer):  # SoftmaxLossBackwardGPU, one thread per (n, s)
        for j in range(inner):
            lv = int(label[i, j])
            if ignore is not None and lv == ignore:
                for c in range(channels):
                    diff[i, c, j] = 0
            else:
                diff[i, lv, j] = diff[i, lv, j] - dt(p1)
                valid += 1
    vc = valid if (mode == VALID and ignore is not None) else -1
    scale = dt(top_diff) / dt(_normalizer(mode, outer, inner, vc))
    for i in range(outer):
        for c in range(channels):
            for j in range(inner):
                diff[i, c, j] = diff[i, c, j] * scale
    return float(loss), diff
