"""Loop-by-loop NumPy ports of hszhao/PSANet @ ff91e4f, ``src/caffe/layers/pointwise_spatial_attention_layer.cpp``
(``PSAForward_buffer_mask_{collect,distribute}_cpu``, ``PSABackward_buffer_mask_{collect,distribute}_cpu``,
``Forward_cpu``, ``Backward_cpu``) and of the BVLC ``SoftmaxLayer::{Forward,Backward}_cpu`` the layer runs on
its buffer. Flat arrays and the fork's index arithmetic, independent of ``neocaffe.layers.psanet``."""
from __future__ import annotations

import numpy as np


def _bounds(h, w, fh, fw, mh, mw, hmh, hmw):
    return max(0, hmh - h), min(mh, fh + hmh - h), max(0, hmw - w), min(mw, fw + hmw - w)


def fill_buffer(mask, num, fh, fw, mh, mw, distribute):
    """PSAForward_buffer_mask_{collect,distribute}_cpu into a zeroed buffer (num, fh*fw, fh, fw)."""
    hmh, hmw = (mh - 1) // 2, (mw - 1) // 2
    m = np.ascontiguousarray(mask).reshape(-1)
    buf = np.zeros(num * fh * fw * fh * fw, dtype=m.dtype)
    for n in range(num):
        for h in range(fh):
            for w in range(fw):
                hs, he, ws, we = _bounds(h, w, fh, fw, mh, mw, hmh, hmw)
                for hidx in range(hs, he):
                    for widx in range(ws, we):
                        k = (hidx + h - hmh) * fw + (widx + w - hmw)
                        j = h * fw + w
                        row, col = (j, k) if distribute else (k, j)
                        buf[(n * fh * fw + row) * fh * fw + col] = m[((n * mh * mw + hidx * mw + widx) * fh + h) * fw + w]
    return buf.reshape(num, fh * fw, fh, fw)


def read_buffer_diff(buf_diff, num, fh, fw, mh, mw, distribute):
    """PSABackward_buffer_mask_{collect,distribute}_cpu into a zeroed mask diff (num, mh*mw, fh, fw)."""
    hmh, hmw = (mh - 1) // 2, (mw - 1) // 2
    b = np.ascontiguousarray(buf_diff).reshape(-1)
    md = np.zeros(num * mh * mw * fh * fw, dtype=b.dtype)
    for n in range(num):
        for h in range(fh):
            for w in range(fw):
                hs, he, ws, we = _bounds(h, w, fh, fw, mh, mw, hmh, hmw)
                for hidx in range(hs, he):
                    for widx in range(ws, we):
                        k = (hidx + h - hmh) * fw + (widx + w - hmw)
                        j = h * fw + w
                        row, col = (j, k) if distribute else (k, j)
                        md[((n * mh * mw + hidx * mw + widx) * fh + h) * fw + w] = b[(n * fh * fw + row) * fh * fw + col]
    return md.reshape(num, mh * mw, fh, fw)


def _outer_channels_inner(shape, axis):
    return int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))


def softmax_forward(bottom, axis=1):
    """SoftmaxLayer::Forward_cpu: per outer slice, subtract the max over the channels, exp, divide by the sum."""
    outer, ch, inner = _outer_channels_inner(bottom.shape, axis)
    b = bottom.reshape(outer, ch, inner)
    top = b.copy()
    for i in range(outer):
        scale = b[i, 0].copy()
        for j in range(ch):
            for k in range(inner):
                scale[k] = max(scale[k], b[i, j, k])
        for j in range(ch):
            top[i, j] -= scale
        top[i] = np.exp(top[i])
        scale = top[i].sum(axis=0)
        for j in range(ch):
            top[i, j] /= scale
    return top.reshape(bottom.shape)


def softmax_backward(top, top_diff, axis=1):
    """SoftmaxLayer::Backward_cpu: ``(top_diff - dot(top_diff, top) over the channels) * top``."""
    outer, ch, inner = _outer_channels_inner(top.shape, axis)
    t, d = top.reshape(outer, ch, inner), top_diff.reshape(outer, ch, inner)
    bd = d.copy()
    for i in range(outer):
        scale = np.array([np.dot(d[i, :, k], t[i, :, k]) for k in range(inner)])
        for j in range(ch):
            bd[i, j] -= scale
    return (bd * t).reshape(top.shape)


def _mask_size(param, fh, fw):
    if param.get("mask") is None:
        return 2 * fh - 1, 2 * fw - 1
    return param["mask"]


def forward(x, mask, param):
    """Forward_cpu. ``param``: ``mask`` (mh, mw) or None, ``factor`` or None, ``softmax``, ``distribute``,
    ``axis`` (the internal Softmax's). Returns (top, buffer after the softmax)."""
    num, ch, fh, fw = x.shape
    mh, mw = _mask_size(param, fh, fw)
    factor = np.float32(param["factor"]) if param.get("factor") else mh * mw  # the proto's float, or mh * mw
    alpha = x.dtype.type(1.0 / float(x.dtype.type(factor)))  # Dtype(1.0 / normalization_factor_), in double
    buf = fill_buffer(mask, num, fh, fw, mh, mw, param["distribute"])
    if param["softmax"]:
        buf = softmax_forward(buf, param.get("axis", 1))
    top = np.zeros_like(x).reshape(num, ch, fh * fw)
    for n in range(num):  # caffe_cpu_gemm(NoTrans, NoTrans, C, HW, HW, alpha, bottom, mask, 0, top)
        top[n] = alpha * (x[n].reshape(ch, -1) @ buf[n].reshape(fh * fw, fh * fw))
    return top.reshape(x.shape), buf


def backward(x, mask, top_diff, param):
    """Backward_cpu (both propagate_down): returns (x diff, mask diff)."""
    num, ch, fh, fw = x.shape
    mh, mw = _mask_size(param, fh, fw)
    factor = np.float32(param["factor"]) if param.get("factor") else mh * mw  # the proto's float, or mh * mw
    alpha = x.dtype.type(1.0 / float(x.dtype.type(factor)))  # Dtype(1.0 / normalization_factor_), in double
    _, buf = forward(x, mask, param)
    hw = fh * fw
    xd = np.zeros_like(x).reshape(num, ch, hw)
    bd = np.zeros_like(buf).reshape(num, hw, hw)
    for n in range(num):
        td = top_diff[n].reshape(ch, hw)
        xd[n] = alpha * (td @ buf[n].reshape(hw, hw).T)  # gemm(NoTrans, Trans)
        bd[n] = alpha * (x[n].reshape(ch, hw).T @ td)  # gemm(Trans, NoTrans)
    bd = bd.reshape(buf.shape)
    if param["softmax"]:
        bd = softmax_backward(buf, bd, param.get("axis", 1))
    md = read_buffer_diff(bd, num, fh, fw, mh, mw, param["distribute"])
    return xd.reshape(x.shape), md
