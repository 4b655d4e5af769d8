"""Loop-by-loop NumPy ports (float32, the fork's index arithmetic) of the softmax focal losses, independent of
``neocaffe.layers.focal_loss``:

- zimenglan-sysu-512/Focal-Loss @ d767cb96be497e660f5e3774fe54fc1b5c8e4fb5, ``focal_loss_layer.cpp``
  (``get_normalizer``, ``compute_intermediate_values_of_cpu``, ``Forward_cpu``, ``Backward_cpu``) and
  ``focal_loss_layer.cu`` (``FocalLossForwardGPU`` + ``caffe_gpu_asum``, ``FocalLossBackwardGPU``), with the
  BVLC ``SoftmaxLayer::Forward_cpu`` the layer runs first;
- liaomingg/Focal-Loss @ d2d3477f0497576f252b9863bafb74a1d46a1d06, ``focal_loss_layer.cpp``
  (``Forward_cpu``, ``Backward_cpu``).

``mode`` is the LossParameter NormalizationMode number (FULL 0, VALID 1, BATCH_SIZE 2, NONE 3); ``ignore``
None for no ignore_label."""
from __future__ import annotations

import numpy as np

F = np.float32
FLT_MIN = F(1.17549435e-38)


def _dims(shape, axis):
    axis = axis % len(shape)
    return int(np.prod(shape[:axis], dtype=np.int64)), int(shape[axis]), int(np.prod(shape[axis + 1:], dtype=np.int64))


def softmax_cpu(x: np.ndarray, axis: int) -> np.ndarray:
    """BVLC SoftmaxLayer::Forward_cpu: per (outer, inner) subtract the channel max, exp, divide by the sum."""
    outer, c, inner = _dims(x.shape, axis)
    top = np.ascontiguousarray(x, dtype=F).reshape(-1).copy()
    for i in range(outer):
        for k in range(inner):
            m = top[i * c * inner + k]
            for j in range(c):
                m = max(m, top[i * c * inner + j * inner + k])
            s = F(0)
            for j in range(c):
                idx = i * c * inner + j * inner + k
                top[idx] = np.exp(F(top[idx] - m))
                s = F(s + top[idx])
            for j in range(c):
                idx = i * c * inner + j * inner + k
                top[idx] = F(top[idx] / s)
    return top.reshape(x.shape)


def get_normalizer(mode: int, outer: int, inner: int, valid_count: int) -> F:
    n = {0: outer * inner, 1: outer * inner if valid_count == -1 else valid_count, 2: outer, 3: 1}[mode]
    return max(F(1.0), F(n))


def _intermediate(prob: np.ndarray, alpha: float, gamma: float):
    """compute_intermediate_values_of_cpu: log(max(p, FLT_MIN)) and alpha * (1 - p)^gamma, elementwise."""
    p = prob.reshape(-1)
    log_prob = np.empty_like(p)
    power = np.empty_like(p)
    for i in range(p.size):
        log_prob[i] = np.log(max(p[i], FLT_MIN))
        power[i] = F(np.power(F(F(1) - p[i]), F(gamma)))  # caffe_sub, caffe_powx
        power[i] = F(power[i] * F(alpha))  # caffe_scal
    return log_prob, power


def zimenglan_forward_cpu(x, label, axis=1, ignore=None, mode=1, alpha=0.25, gamma=2.0):
    """Forward_cpu: (loss, prob)."""
    outer, c, inner = _dims(x.shape, axis)
    prob = softmax_cpu(x, axis)
    log_prob, power = _intermediate(prob, alpha, gamma)
    lab = np.asarray(label, dtype=F).reshape(-1)
    dim = prob.size // outer
    loss, count = F(0), 0
    for i in range(outer):
        for j in range(inner):
            v = int(lab[i * inner + j])
            if ignore is not None and v == ignore:
                continue
            index = i * dim + v * inner + j
            loss = F(loss - F(power[index] * log_prob[index]))
            count += 1
    return F(loss / get_normalizer(mode, outer, inner, count)), prob


def zimenglan_backward_cpu(x, label, top_diff=1.0, axis=1, ignore=None, mode=1, alpha=0.25, gamma=2.0):
    """Backward_cpu: bottom_diff (x's shape)."""
    outer, c, inner = _dims(x.shape, axis)
    prob = softmax_cpu(x, axis)
    log_prob, power = _intermediate(prob, alpha, gamma)
    p = prob.reshape(-1)
    lab = np.asarray(label, dtype=F).reshape(-1)
    dim = p.size // outer
    diff = np.zeros_like(p)
    eps = F(1e-10)
    count = 0
    for i in range(outer):
        for j in range(inner):
            v = int(lab[i * inner + j])
            if ignore is not None and v == ignore:
                for ch in range(c):
                    diff[i * dim + ch * inner + j] = 0
                continue
            ii = i * dim + v * inner + j
            grad = F(F(0) - F(F(F(F(gamma) * F(power[ii] / max(F(F(1) - p[ii]), eps))) * log_prob[ii]) * p[ii])
                     + power[ii])
            for ch in range(c):
                jj = i * dim + ch * inner + j
                diff[jj] = F(grad * F(p[ii] - F(1))) if ch == v else F(grad * p[jj])
            count += 1
    loss_weight = F(F(top_diff) / get_normalizer(mode, outer, inner, count))
    return (diff * loss_weight).reshape(x.shape)


def zimenglan_forward_gpu(x, label, axis=1, ignore=None, mode=1, alpha=0.25, gamma=2.0):
    """Forward_gpu: one FocalLossForwardGPU thread per (n, s) into loss/counts, then caffe_gpu_asum (|sum|);
    the valid count only for VALID with an ignore_label, else -1."""
    outer, c, inner = _dims(x.shape, axis)
    prob = softmax_cpu(x, axis)
    log_prob, power = _intermediate(prob, alpha, gamma)
    lab = np.asarray(label, dtype=F).reshape(-1)
    dim = prob.size // outer
    nthreads = outer * inner
    loss = np.zeros(nthreads, F)
    counts = np.zeros(nthreads, F)
    for index in range(nthreads):
        n, s = index // inner, index % inner
        v = int(lab[n * inner + s])
        if ignore is not None and v == ignore:
            loss[index], counts[index] = 0, 0
        else:
            ind = n * dim + v * inner + s
            loss[index] = F(-power[ind] * log_prob[ind])
            counts[index] = 1
    total = F(np.abs(loss).sum(dtype=F))
    valid = int(np.abs(counts).sum()) if (mode == 1 and ignore is not None) else -1
    return F(total / get_normalizer(mode, outer, inner, valid)), prob


def liaomingg_forward_cpu(x, label, axis=1, ignore=None, mode=1, alpha=0.25, gamma=2.0):
    """liaomingg's Forward_cpu: ``loss -= alpha * powf(1 - pk, gamma) * log(max(pk, FLT_MIN))``."""
    outer, c, inner = _dims(x.shape, axis)
    p = softmax_cpu(x, axis).reshape(-1)
    lab = np.asarray(label, dtype=F).reshape(-1)
    dim = p.size // outer
    loss, count = F(0), 0
    for i in range(outer):
        for j in range(inner):
            v = int(lab[i * inner + j])
            if ignore is not None and v == ignore:
                continue
            pk = p[i * dim + v * inner + j]
            loss = F(loss - F(F(F(alpha) * np.power(F(F(1) - pk), F(gamma))) * np.log(max(pk, FLT_MIN))))
            count += 1
    return F(loss / get_normalizer(mode, outer, inner, count))


def liaomingg_backward_cpu(x, label, top_diff=1.0, axis=1, ignore=None, mode=1, alpha=0.25, gamma=2.0):
    """liaomingg's Backward_cpu: pk and pj clamped to FLT_MIN, ``pow(1 - pk, gamma - 1)`` unclamped."""
    outer, c, inner = _dims(x.shape, axis)
    p = softmax_cpu(x, axis).reshape(-1)
    lab = np.asarray(label, dtype=F).reshape(-1)
    dim = p.size // outer
    diff = np.zeros_like(p)
    a, g = F(alpha), F(gamma)
    count = 0
    for i in range(outer):
        for j in range(inner):
            v = int(lab[i * inner + j])
            if ignore is not None and v == ignore:
                for ch in range(c):
                    diff[i * dim + ch * inner + j] = 0
                continue
            count += 1
            pk = max(p[i * dim + v * inner + j], FLT_MIN)
            for ch in range(c):
                idx = i * dim + ch * inner + j
                if ch == v:
                    diff[idx] = -1 * a * (-1 * g * np.power(1 - pk, g) * pk * np.log(pk) + np.power(1 - pk, g + 1))
                else:
                    pj = max(p[idx], FLT_MIN)
                    diff[idx] = -1 * a * (g * np.power(1 - pk, g - 1) * pk * pj * np.log(pk) - np.power(1 - pk, g) * pj)
    loss_weight = F(F(top_diff) / get_normalizer(mode, outer, inner, count))
    return (diff * loss_weight).reshape(x.shape)
