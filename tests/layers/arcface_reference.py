"""Loop-by-loop NumPy ports of xialuxi/arcface-caffe's layer code (@ 30ba26ad96589b0ecdfbb454bf089c1fdcc11ab2),
the reference the arcface tests check neocaffe against. ``Dtype`` arithmetic in np.float32, the fork's double
arithmetic in Python floats, element loops as the fork writes them.

Files: cosin_add_m_layer.{cpp,cu}, SV_X_Softmax/sv-x-softmax.cpp, combined_margin_layer.cpp,
AdaCos/adacos_add_m_scale_layer.{cpp,cu}, AdaCos/normL2_layer.cpp, landmark_and_pose/wing_loss_layer.cpp,
landmark_and_pose/smooth_L1_loss_layer.cpp, landmark_and_pose/depthwise_conv_layer.cu (ConvForward),
mxnet_to_caffe/axpy_layer.cpp (Backward_cpu).
"""
from __future__ import annotations

import math

import numpy as np

F = np.float32


def _consts(m: float):
    m_ = F(m)
    return m_, F(math.sin(m_)), F(math.cos(m_)), F(math.cos(math.pi - m_))


# -- CosinAddm (ArcFace) -----------------------------------------------------------------------------
def cosin_add_m_cpu(x: np.ndarray, label: np.ndarray, m: float, t: float | None = None, skip_negative: bool = False):
    """cosin_add_m_layer.cpp Forward_cpu (``t``: sv-x-softmax.cpp, which also skips negative labels).
    Returns (top, cos_t, tpflag)."""
    m_, sin_m, cos_m, threshold = _consts(m)
    num = x.shape[0]
    dim = x.size // num
    top = x.reshape(num, dim).astype(F).copy()
    cos_t = top.copy()
    flag = np.zeros_like(top)
    for i in range(num):
        gt = int(label.reshape(-1)[i])
        if (skip_negative or t is not None) and gt < 0:
            continue
        c2 = F(cos_t[i, gt] * cos_t[i, gt])
        sin_theta = F(np.sqrt(F(F(1) - c2))) if c2 <= 1 else F(np.nan)
        if cos_t[i, gt] > F(1):
            cos_t[i, gt] = F(1)
            sin_theta = F(0)
        if cos_t[i, gt] <= threshold:
            top[i, gt] = F(float(cos_t[i, gt]) - math.sin(math.pi - float(m_)) * float(m_))
            flag[i, gt] = 1
        else:
            top[i, gt] = F(F(cos_t[i, gt] * cos_m) - F(sin_theta * sin_m))
        if t is not None:
            tt = F(t)
            for j in range(dim):
                if j == gt:
                    continue
                if top[i, j] > top[i, gt]:
                    top[i, j] = F(F(top[i, j] * tt) + tt - F(1))
                    flag[i, j] = 2
    return top.reshape(x.shape), cos_t, flag


def cosin_add_m_cpu_backward(top_diff: np.ndarray, label: np.ndarray, cos_t, flag, m: float,
                             t: float | None = None, skip_negative: bool = False) -> np.ndarray:
    """cosin_add_m_layer.cpp Backward_cpu (``t``: sv-x-softmax.cpp's)."""
    _, sin_m, cos_m, _ = _consts(m)
    num = cos_t.shape[0]
    dim = cos_t.shape[1]
    td = top_diff.reshape(num, dim).astype(F)
    bd = td.copy()
    for i in range(num):
        gt = int(label.reshape(-1)[i])
        if (skip_negative or t is not None) and gt < 0:
            continue
        c = cos_t[i, gt]
        s2 = F(c * c)
        if c == F(1):
            s2 = F(1)
        sin_theta = F(np.sqrt(F(F(1) - s2))) if s2 <= 1 else F(np.nan)
        coffe = F(1) if sin_theta == 0 else F(cos_m + F(F(sin_m * c) / sin_theta))
        if (flag[i, gt] == 1) if t is not None else (flag[i, gt] > 0):
            coffe = F(1)
        bd[i, gt] = F(coffe * td[i, gt])
        if t is not None:
            for j in range(dim):
                if j != gt and flag[i, j] == 2:
                    bd[i, j] = F(bd[i, j] * F(t))
    return bd.reshape(top_diff.shape)


def cosin_add_m_gpu(x: np.ndarray, label: np.ndarray, m: float, phase_test: bool = False):
    """cosin_add_m_layer.cu Forward_gpu (CosinAddmForward): TEST returns the copy; ``c >= 1`` left alone."""
    m_, _, _, threshold = _consts(m)
    num = x.shape[0]
    dim = x.size // num
    top = x.reshape(num, dim).astype(F).copy()
    flag = np.zeros_like(top)
    if phase_test:
        return top.reshape(x.shape), flag
    for i in range(num):
        gt = int(label.reshape(-1)[i])
        if top[i, gt] < F(1):
            theta = F(np.arccos(top[i, gt]))
            if top[i, gt] > threshold:
                top[i, gt] = F(np.cos(F(theta + m_)))
            else:
                top[i, gt] = F(top[i, gt] - F(m_ * F(np.sin(m_))))
                flag[i, gt] = 1
    return top.reshape(x.shape), flag


# -- CombinedMargin ------------------------------------------------------------------------------------
def combined_margin_cpu(x: np.ndarray, label: np.ndarray, m1: float, m2: float, m3: float):
    """combined_margin_layer.cpp Forward_cpu. Returns (top, m1_x_m2)."""
    m1, m2, m3 = F(m1), F(m2), F(m3)
    num = x.shape[0]
    dim = x.size // num
    xb = x.reshape(num, dim).astype(F)
    top = xb.copy()
    mxm = np.zeros_like(xb)
    with np.errstate(invalid="ignore"):
        for idx in range(xb.size):
            i, j = divmod(idx, dim)
            arccos_x = F(np.arccos(xb[i, j]))
            mxm[i, j] = F(F(m1 * arccos_x) + m2)
    for i in range(num):
        gt = int(label.reshape(-1)[i])
        if gt < 0:
            continue
        top[i, gt] = F(F(np.cos(mxm[i, gt])) - m3)
    return top.reshape(x.shape), mxm


def combined_margin_cpu_backward(top_diff, x, label, mxm, m1: float) -> np.ndarray:
    """combined_margin_layer.cpp Backward_cpu."""
    num = x.shape[0]
    dim = x.size // num
    xb = x.reshape(num, dim).astype(F)
    bd = top_diff.reshape(num, dim).astype(F).copy()
    for i in range(num):
        gt = int(label.reshape(-1)[i])
        if gt < 0:
            continue
        xv = float(xb[i, gt])
        diff_gt = float(F(m1)) * (1 - xv ** 2) ** -0.5 * float(F(np.sin(mxm[i, gt])))
        bd[i, gt] = F(float(bd[i, gt]) * diff_gt)
    return bd.reshape(top_diff.shape)


# -- AdaCosAddmScale -----------------------------------------------------------------------------------
def adacos_initial_scale(num_classes: float) -> float:
    """``s_d = sqrt(2) * log(num_classes - 1)`` (LayerSetUp), stored as Dtype."""
    return float(F(math.sqrt(2) * math.log(float(F(num_classes)) - 1)))


def adacos_cpu(x: np.ndarray, label: np.ndarray, m: float, s_prev: float):
    """adacos_add_m_scale_layer.cpp Forward_cpu. Returns (top, s_d, cos_t, tpflag)."""
    top, cos_t, flag = cosin_add_m_cpu(x, label, m, skip_negative=True)
    num = x.shape[0]
    dim = x.size // num
    xb = x.reshape(num, dim).astype(F)
    bi = np.ones_like(xb)
    for i in range(num):
        gt = int(label.reshape(-1)[i])
        if gt >= 0:
            bi[i, gt] = 0
    sum_theta = F(0)
    for v in xb.reshape(-1):
        sum_theta = F(sum_theta + F(np.arccos(v)))
    sum_theta = F(sum_theta / F(xb.size))
    cos_theta_med = F(math.cos(min(float(sum_theta), math.pi / 4)))
    bi = np.exp(F(s_prev) * (xb * bi)).astype(F)
    asum = F(0)
    for v in bi.reshape(-1):
        asum = F(asum + abs(v))
    s_d = F(F(np.log(F(asum / F(num)))) / cos_theta_med)
    return (top.reshape(num, dim) * s_d).astype(F).reshape(x.shape), float(s_d), cos_t, flag


def adacos_cpu_backward(top_diff, label, cos_t, flag, m: float, s_d: float) -> np.ndarray:
    """adacos_add_m_scale_layer.cpp Backward_cpu: ``s_d * top_diff``, the margin coefficient at the label."""
    scaled = (top_diff.astype(F) * F(s_d)).astype(F)
    return cosin_add_m_cpu_backward(scaled, label, cos_t, flag, m, skip_negative=True)


def adacos_gpu_scale(x: np.ndarray, label: np.ndarray, s_prev: float) -> float:
    """adacos_add_m_scale_layer.cu's new ``s_d``: ``ComputeAcos`` over the first ``num`` entries only, the
    asum over all ``count`` (raw cosines past ``num``), ``bi`` from the unclamped copy ``cos_t``."""
    num = x.shape[0]
    dim = x.size // num
    flat = x.reshape(-1).astype(F).copy()
    flat[:num] = np.arccos(flat[:num])
    avg = F(F(np.abs(flat).sum(dtype=np.float64)) / F(flat.size))
    cos_med = F(math.cos(min(float(avg), math.pi / 4)))
    bi = np.ones((num, dim), F)
    for i in range(num):
        bi[i, int(label.reshape(-1)[i])] = 0
    e = np.exp(F(s_prev) * (x.reshape(num, dim).astype(F) * bi)).astype(F)
    return float(F(F(np.log(F(F(e.sum(dtype=np.float64)) / F(num)))) / cos_med))


# -- NormL2 ----------------------------------------------------------------------------------------------
def norm_l2_cpu(x: np.ndarray) -> np.ndarray:
    """normL2_layer.cpp Forward_cpu."""
    n = x.shape[0]
    xb = x.reshape(n, -1).astype(F)
    top = np.zeros_like(xb)
    for i in range(n):
        normsqrt = F(0)
        for v in xb[i]:
            normsqrt = F(normsqrt + F(v * v))
        scale = F(1.0 / math.sqrt(float(normsqrt) + 1e-7))
        top[i] = (scale * xb[i]).astype(F)
    return top


def norm_l2_cpu_backward(top_diff: np.ndarray, top: np.ndarray, x: np.ndarray) -> np.ndarray:
    """normL2_layer.cpp Backward_cpu."""
    n = x.shape[0]
    td, y, xb = (a.reshape(n, -1).astype(F) for a in (top_diff, top, x))
    bd = np.zeros_like(xb)
    for i in range(n):
        a = F(np.dot(y[i], td[i]))
        bd[i] = (td[i] - (a * y[i]).astype(F)).astype(F)
        nrm = F(np.dot(xb[i], xb[i]))
        bd[i] = (F(1.0 / math.sqrt(float(nrm) + 1e-7)) * bd[i]).astype(F)
    return bd


# -- WingLoss --------------------------------------------------------------------------------------------
def wing_loss_cpu(a: np.ndarray, b: np.ndarray, w: float, epsilon: float) -> tuple[float, np.ndarray]:
    """wing_loss_layer.cpp Forward_cpu. Returns (loss, diff_)."""
    w, eps = F(w), F(epsilon)
    c = F(float(w) * (1.0 - math.log(1.0 + float(w) / float(eps))))
    d = (a.astype(F) - b.reshape(a.shape).astype(F)).reshape(-1)
    loss = F(0)
    scale = F(1.0 / float(eps))
    for v in d:
        av = F(abs(v))
        log_abs = F(F(np.log(F(F(scale * av) + F(1)))) * w)
        loss = F(loss + (log_abs if w > av else F(av - c)))
    return float(F(loss / F(a.shape[0]))), d.reshape(a.shape)


def wing_loss_cpu_backward(diff: np.ndarray, w: float, epsilon: float, loss_weight: float, num: int) -> np.ndarray:
    """wing_loss_layer.cpp Backward_cpu."""
    w, eps = F(w), F(epsilon)
    out = np.zeros(diff.size, F)
    for i, v in enumerate(diff.reshape(-1)):
        sign = F(int(F(0) < v) - int(v < F(0)))
        av = F(abs(v))
        out[i] = F(F(sign * w) / F(av + eps)) if w > av else sign
    return (out * F(F(loss_weight) / F(num))).astype(F).reshape(diff.shape)


# -- the fork's SmoothL1Loss (landmark_and_pose/smooth_L1_loss_layer.cpp) ----------------------------------
def smooth_l1_cpu(bottoms: list[np.ndarray], loss_weight: float = 1.0) -> tuple[float, list[np.ndarray]]:
    """Forward_cpu and Backward_cpu of the fork's CPU SmoothL1Loss: sigma ignored (1), inside weights (bottom
    2) applied to the difference in forward only, outside weights (bottom 3) ignored. Returns (loss, diffs of
    bottoms 0 and 1)."""
    a, b = (v.astype(F) for v in bottoms[:2])
    d = (a - b.reshape(a.shape)).astype(F)
    if len(bottoms) >= 3:
        d = (bottoms[2].astype(F).reshape(a.shape) * d).astype(F)
    err = np.where(np.abs(d) < 1, F(0.5) * d * d, np.abs(d) - F(0.5)).astype(F)
    loss = float(F(F(np.abs(err).sum(dtype=np.float64)) / F(a.shape[0])))
    dd = np.where(np.abs(d) < 1, d, np.sign(d)).astype(F)
    return loss, [(F(s * F(loss_weight) / F(a.shape[0])) * dd).astype(F) for s in (1, -1)]


# -- DepthwiseConvolution's CUDA forward (landmark_and_pose/depthwise_conv_layer.cu, ConvForward) -----------
def depthwise_gpu_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, kernel: tuple[int, int],
                          stride: tuple[int, int], pad: tuple[int, int]) -> np.ndarray:
    """One output per (n, c, ph, pw) as the kernel computes it (no dilation; the kernel offset
    ``khstart = kernel_h - hend`` where ``hend < kernel_h``)."""
    n_, ch, h, w = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph_, pw_ = pad
    oh = (h + 2 * ph_ - kh) // sh + 1
    ow = (w + 2 * pw_ - kw) // sw + 1
    out = np.zeros((n_, ch, oh, ow), F)
    for n in range(n_):
        for c in range(ch):
            for ph in range(oh):
                for pw in range(ow):
                    hstart, wstart = ph * sh - ph_, pw * sw - pw_
                    hend, wend = min(hstart + kh, h + ph_), min(wstart + kw, w + pw_)
                    hstart, wstart = max(hstart, 0), max(wstart, 0)
                    hend, wend = min(hend, h), min(wend, w)
                    khs = kh - hend if hend < kh else 0
                    kws = kw - wend if wend < kw else 0
                    acc = F(0)
                    for hh in range(hstart, hend):
                        for ww in range(wstart, wend):
                            acc = F(acc + F(x[n, c, hh, ww] * weight[c, 0, khs + hh - hstart, kws + ww - wstart]))
                    if bias is not None:
                        acc = F(acc + bias[c])
                    out[n, c, ph, pw] = acc
    return out


# -- Axpy's CPU backward (mxnet_to_caffe/axpy_layer.cpp) ------------------------------------------------------
def axpy_cpu_backward(a, x, top_diff, propagate_down: tuple[bool, bool, bool], x_diff_before: np.ndarray):
    """The fork's Backward_cpu; its second block tests ``propagate_down[0]`` (SENet's tests
    ``propagate_down[1]``). ``x_diff_before``: what the x diff held before (it is not written when
    ``propagate_down`` is (False, True, ...)). Returns (a_diff or None, x_diff, y_diff or None)."""
    n, c = x.shape[:2]
    sp = x[0, 0].size
    x_diff = x_diff_before.astype(F).copy()
    a_diff = y_diff = None
    if propagate_down[0]:
        x_diff = (top_diff * x).astype(F)
        a_diff = x_diff.reshape(n * c, sp).sum(1, dtype=np.float64).astype(F).reshape(a.shape)
        if not propagate_down[1]:
            x_diff = np.zeros_like(x_diff)
    if propagate_down[0]:
        x_diff = (a.reshape(n, c, *([1] * (x.ndim - 2))).astype(F) * top_diff).astype(F)
    if propagate_down[2]:
        y_diff = top_diff.astype(F).copy()
    return a_diff, x_diff, y_diff
