"""The cuDNN BatchNorm engines of the forks (``engine: CUDNN``): what changes numbers against their CAFFE engines.

Both forks call ``cudnnBatchNormalizationForwardTraining`` (TRAIN) / ``...ForwardInference`` (TEST) in
``CUDNN_BATCHNORM_SPATIAL`` mode (NVCaffe: ``..._SPATIAL_PERSISTENT`` in TRAIN with cuDNN >= 7, the same formulas)
and ``cudnnBatchNormalizationBackward``:

* **PSPNet / TSN** ``BN`` (hszhao/PSPNet @ 88d0b3ee and yjxiong/caffe ``action_recog`` @ 9831a2b4,
  ``src/caffe/layers/cudnn_bn_layer.cu``, the same file): ``epsilon = max(bn_eps, CUDNN_BN_MIN_EPSILON)`` in TRAIN,
  TEST, frozen and backward; ``exponentialAverageFactor = 1 - momentum``.
* **NVCaffe** ``BatchNorm`` (NVIDIA/caffe ``caffe-0.17`` @ 87a25543, ``src/caffe/layers/cudnn_batch_norm_layer.cpp``
  /``.cu``): ``eps = max(eps, CUDNN_BN_MIN_EPSILON)`` (its CAFFE engine already clamps at 1e-5);
  ``factor = 1 - moving_average_fraction``, but ``1.0`` while ``LayerBase::iter()`` (the parent solver's iteration,
  0 without a solver) is 0; without ``scale_bias`` the scale is ones and the bias zeros.

cuDNN's documented TRAIN result (m = N H W values a channel; ``var`` the biased batch variance):
``y = scale (x - mean) / sqrt(var + eps) + bias``, ``running_mean = (1 - f) running_mean + f mean``,
``running_var = (1 - f) running_var + f var m / (m - 1)`` (the *unbiased* variance: the CAFFE engines store the
biased one), ``save_mean = mean``, ``save_inv_var = 1 / sqrt(var + eps)``. Its backward is the exact gradient of
that forward with the saved statistics, the formula of the CAFFE engines' TRAIN backward, so nothing else changes
numbers beyond rounding. ``CUDNN_BN_MIN_EPSILON`` is 1e-5 in the cuDNN 5-7 headers these forks were built against.

``engine: DEFAULT`` (the field's default, so nearly every prototxt) runs the CAFFE engine here, for both forks,
though their layer factories (``GetBNLayer``, ``GetBatchNormLayer``) pick CUDNN in a cuDNN build, their standard GPU
build: (1) the forks choose at compile time, so the same prototxt gives the CAFFE engine in their CPU-only builds;
neocaffe has no build switch and runs one code on CPU and CUDA, so one fixed reading is needed, and CAFFE is the
engine every build of the forks has; (2) the TEST forward, which deployment and evaluation see, is the same in both
engines for ``eps >= 1e-5`` (NVCaffe's CAFFE engine clamps there too; hszhao's ICNet/PSANet prototxts set 1e-4), and
so are the TRAIN forward and backward: only the stored running variance differs, by ``m / (m - 1)`` on each batch's
share (``m`` = N H W: a relative 1e-3 or less for m >= 1000); (3) the same type names also name layers that have no
cuDNN engine here (L-Softmax's ``BN``, BVLC's ``BatchNorm``), and DEFAULT = CAFFE gives them all one reading;
(4) earlier neocaffe runs (and their tests) keep their trajectories bit for bit. ``engine: CUDNN`` gives the running
statistics a cuDNN build of the fork stores.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CUDNN_BN_MIN_EPSILON = 1e-5
CAFFE, CUDNN = 1, 2  # the forks' BNParameter.Engine / BatchNormParameter.Engine values


def uses_cudnn(engine: int) -> bool:
    """Whether a layer's ``engine`` field asks for the cuDNN engine. ``DEFAULT`` (0) is read as ``CAFFE``: see
    :data:`DEFAULT_ENGINE_NOTE`."""
    return int(engine) == CUDNN


#: Why ``engine: DEFAULT`` runs the CAFFE engine here (the module docstring argues it in full).
DEFAULT_ENGINE_NOTE = (
    "engine DEFAULT runs the CAFFE engine: the forks resolve DEFAULT at build time (CUDNN in a cuDNN build, CAFFE in "
    "a CPU-only one), neocaffe has no such build switch and runs one code on CPU and CUDA; the TEST forward (what "
    "deployment sees) is the same in both engines for eps >= 1e-5; set engine: CUDNN to get the statistics a "
    "cuDNN build stores")


def cudnn_eps(eps: float) -> float:
    """``max(eps, CUDNN_BN_MIN_EPSILON)``, the epsilon the forks pass to cuDNN."""
    return max(float(eps), CUDNN_BN_MIN_EPSILON)


def engine_eps(eps: float, engine: int) -> float:
    """The ``eps`` a PSPNet/TSN ``BN`` with this ``engine`` adds to its variance (what folding and export read):
    the float32 field, clamped at ``CUDNN_BN_MIN_EPSILON`` by the cuDNN engine."""
    e = float(np.float32(eps))
    return cudnn_eps(e) if uses_cudnn(engine) else e


class FrozenNormalize(torch.autograd.Function):
    """``xc * inv_fwd`` whose bottom diff is ``dy * inv_bwd``: PSPNet's/TSN's frozen cuDNN BN normalises with the
    clamped eps (``cudnnBatchNormalizationForwardInference``) and back-propagates with the layer's own
    (``BNLayer::Backward_gpu``)."""

    @staticmethod
    def forward(ctx, xc: Tensor, inv_fwd: Tensor, inv_bwd: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inv_bwd)
        return xc * inv_fwd

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        (inv_bwd,) = ctx.saved_tensors
        return dy * inv_bwd, None, None


def channel_count(x: Tensor) -> int:
    """m, the values per channel that one spatial batch normalisation averages over (N times the spatial size)."""
    return x.numel() // x.shape[1]


@torch.no_grad()
def update_running(run_mean: Tensor, run_var: Tensor, mean: Tensor, var: Tensor, m: int, factor: float) -> None:
    """cuDNN's ``resultRunningMean``/``resultRunningVariance`` update, in place: ``r = (1 - factor) r + factor s``,
    ``s`` the batch mean and the *unbiased* batch variance (``var`` is the biased one; ``m`` values a channel)."""
    if m < 2:
        raise ValueError(f"the cuDNN engine's unbiased running variance needs more than 1 value a channel; "
                         f"received {m} (N times the spatial size)")
    keep = 1.0 - float(factor)
    unbiased = var.detach().reshape(run_var.shape).to(run_var.dtype) * (m / (m - 1))
    run_mean.mul_(keep).add_(mean.detach().reshape(run_mean.shape).to(run_mean.dtype), alpha=float(factor))
    run_var.mul_(keep).add_(unbiased, alpha=float(factor))


__all__ = ["CAFFE", "CUDNN", "CUDNN_BN_MIN_EPSILON", "DEFAULT_ENGINE_NOTE", "FrozenNormalize", "channel_count",
           "cudnn_eps", "engine_eps", "update_running", "uses_cudnn"]
