"""Loop-by-loop NumPy port of senlinuc/caffe_ocr's DenseBlock (src/caffe/layers/DenseBlock_layer.cu @ 81642f6, the
cuDNN path: BN by batch mean and biased variance in TRAIN, stored statistics updated by
``caffe_gpu_axpby(f, running_unbiased, 1 - f, stored)``, stored ones as they are in TEST, eps 1e-5; the convolution
indexing of DenseBlock_layer.cpp's ``convolution_Fwd``/``getZeroPaddedValue``, i.e. cuDNN's CUDNN_CONVOLUTION, a
flipped kernel), written independently of neocaffe for the tests. No dropout. Blobs: a list in the fork's order."""
from __future__ import annotations

import numpy as np

EPS = 1e-5


def _padded(x, n, c, h, w):
    """getZeroPaddedValue: 0 outside the blob."""
    if 0 <= h < x.shape[2] and 0 <= w < x.shape[3]:
        return x[n, c, h, w]
    return 0.0


def conv_fwd(x, filt):
    """convolution_Fwd: out[n, o, h, w] = sum_{i, fx, fy} filt[o, i, fx, fy] * x[n, i, h + kh/2 - fx, w + kw/2 - fy]."""
    n_img, c_in, height, width = x.shape
    c_out, _, kh, kw = filt.shape
    out = np.zeros((n_img, c_out, height, width))
    for n in range(n_img):
        for o in range(c_out):
            for h in range(height):
                for w in range(width):
                    acc = 0.0
                    for i in range(c_in):
                        for fx in range(kh):
                            for fy in range(kw):
                                acc += filt[o, i, fx, fy] * _padded(x, n, i, h + kh // 2 - fx, w + kw // 2 - fy)
                    out[n, o, h, w] = acc
    return out


def bn_fwd(x, scale, bias, mean_blob, var_blob, train, frac):
    """One cuDNN spatial BN; in TRAIN also the fork's update of ``mean_blob``/``var_blob`` (in place)."""
    n_img, chans, height, width = x.shape
    m = n_img * height * width
    y = np.zeros_like(x)
    for c in range(chans):
        if train:
            s = 0.0
            for n in range(n_img):
                for h in range(height):
                    for w in range(width):
                        s += x[n, c, h, w]
            mu = s / m
            sq = 0.0
            for n in range(n_img):
                for h in range(height):
                    for w in range(width):
                        sq += (x[n, c, h, w] - mu) ** 2
            var = sq / m
            mean_blob.flat[c] = frac * mu + (1 - frac) * mean_blob.flat[c]
            var_blob.flat[c] = frac * (var * m / (m - 1)) + (1 - frac) * var_blob.flat[c]
        else:
            mu, var = mean_blob.flat[c], var_blob.flat[c]
        inv = 1.0 / np.sqrt(var + EPS)
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    y[n, c, h, w] = scale.flat[c] * (x[n, c, h, w] - mu) * inv + bias.flat[c]
    return y


def relu(x):
    out = x.copy()
    for idx in np.ndindex(x.shape):
        out[idx] = x[idx] if x[idx] >= 0 else 0.0
    return out


def dense_block(x, blobs, num_transition, use_bc, train, frac):
    """Top of the block for bottom ``x``; ``blobs`` (float64 arrays, fork order) have their statistics updated
    in place in TRAIN."""
    T = num_transition
    merged = x.copy()
    for t in range(T):
        h = relu(bn_fwd(merged, blobs[T + t], blobs[2 * T + t], blobs[3 * T + t], blobs[4 * T + t], train, frac))
        if use_bc:
            h = conv_fwd(h, blobs[5 * T + t])
            h = relu(bn_fwd(h, blobs[6 * T + t], blobs[7 * T + t], blobs[8 * T + t], blobs[9 * T + t], train, frac))
        y = conv_fwd(h, blobs[t])
        n_img, c_prev, height, width = merged.shape
        grown = np.zeros((n_img, c_prev + y.shape[1], height, width))
        for n in range(n_img):  # mergeChannelData
            for c in range(grown.shape[1]):
                grown[n, c] = merged[n, c] if c < c_prev else y[n, c - c_prev]
        merged = grown
    return merged


def blob_shapes(c0, num_transition, growth, use_bc):
    """The shapes the fork's LayerSetUp gives its blobs, in order."""
    T, g = num_transition, growth
    chans = [c0 + t * g for t in range(T)]
    shapes = [(g, 4 * g if use_bc else c, 3, 3) for c in chans]
    for _ in range(4):  # scale, bias, mean, var
        shapes += [(1, c, 1, 1) for c in chans]
    if use_bc:
        shapes += [(4 * g, c, 1, 1) for c in chans]
        shapes += [(1, 4 * g, 1, 1)] * (4 * T)
    return shapes + [(1,)]
