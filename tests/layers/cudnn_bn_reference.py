"""NumPy reference of cuDNN's spatial batch normalisation as cuDNN documents it, called as the forks call it.

cuDNN (``cudnnBatchNormalizationForwardTraining``, ``...ForwardInference``, ``...Backward``, mode SPATIAL): per
channel c over its m = N H W values, ``mean``, biased ``var``; ``y = scale (x - mean) / sqrt(var + eps) + bias``;
``running = (1 - factor) running + factor stat`` with the unbiased variance ``var m / (m - 1)``; the backward is
``dbias = sum dy``, ``dscale = sum dy xhat``, ``dx = scale inv_std / m (m dy - sum dy - xhat sum dy xhat)``.

The forks' calls: PSPNet / TSN (hszhao/PSPNet, yjxiong/caffe ``action_recog`` @ 9831a2b4, ``cudnn_bn_layer.cu``):
``eps = max(bn_eps, 1e-5)``, ``factor = 1 - momentum``. NVCaffe (NVIDIA/caffe ``caffe-0.17`` @ 87a25543,
``cudnn_batch_norm_layer.cu``): ``eps = max(eps, 1e-5)``, ``factor = 1`` at solver iteration 0, else
``1 - moving_average_fraction``. Plain loops over channels and values, float64."""
from __future__ import annotations

import numpy as np

CUDNN_BN_MIN_EPSILON = 1e-5


def _values(x: np.ndarray, c: int) -> np.ndarray:
    return np.asarray(x[:, c], np.float64).reshape(-1)


def forward_training(x, scale, bias, run_mean, run_var, factor, eps):
    """cudnnBatchNormalizationForwardTraining: (y, running mean, running var, save_mean, save_inv_var)."""
    n_c = x.shape[1]
    y = np.zeros(x.shape, np.float64)
    rm, rv = np.array(run_mean, np.float64).copy(), np.array(run_var, np.float64).copy()
    save_mean, save_inv = np.zeros(n_c), np.zeros(n_c)
    for c in range(n_c):
        v = _values(x, c)
        m = v.size
        mean = 0.0
        for a in v:
            mean += a
        mean /= m
        var = 0.0
        for a in v:
            var += (a - mean) ** 2
        var /= m
        inv = 1.0 / np.sqrt(var + eps)
        y[:, c] = scale[c] * (x[:, c] - mean) * inv + bias[c]
        rm[c] = (1 - factor) * rm[c] + factor * mean
        rv[c] = (1 - factor) * rv[c] + factor * var * m / (m - 1)
        save_mean[c], save_inv[c] = mean, inv
    return y, rm, rv, save_mean, save_inv


def forward_inference(x, scale, bias, run_mean, run_var, eps):
    """cudnnBatchNormalizationForwardInference."""
    y = np.zeros(x.shape, np.float64)
    for c in range(x.shape[1]):
        y[:, c] = scale[c] * (x[:, c] - run_mean[c]) / np.sqrt(run_var[c] + eps) + bias[c]
    return y


def backward(x, dy, scale, save_mean, save_inv):
    """cudnnBatchNormalizationBackward (alphaDataDiff 1, betaDataDiff 0): (dx, dscale, dbias)."""
    dx = np.zeros(x.shape, np.float64)
    dscale, dbias = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        xhat = (np.asarray(x[:, c], np.float64) - save_mean[c]) * save_inv[c]
        g = np.asarray(dy[:, c], np.float64)
        m = g.size
        s_dy, s_dyx = g.sum(), (g * xhat).sum()
        dbias[c], dscale[c] = s_dy, s_dyx
        dx[:, c] = scale[c] * save_inv[c] / m * (m * g - s_dy - xhat * s_dyx)
    return dx, dscale, dbias


def pspnet_call(eps: float, momentum: float) -> tuple[float, float]:
    """PSPNet's/TSN's CuDNNBNLayer: (epsilon, exponentialAverageFactor)."""
    return max(float(np.float32(eps)), CUDNN_BN_MIN_EPSILON), float(np.float32(1) - np.float32(momentum))


def nvcaffe_call(eps: float, maf: float, solver_iter: int) -> tuple[float, float]:
    """NVCaffe's CuDNNBatchNormLayer: (epsilon, factor)."""
    e = max(max(float(np.float32(eps)), float(np.float32(1e-5))), CUDNN_BN_MIN_EPSILON)
    return e, 1.0 if solver_iter == 0 else 1.0 - float(np.float32(maf))
