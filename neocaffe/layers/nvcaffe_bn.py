"""NVCaffe's ``BatchNorm`` (NVIDIA/caffe 0.17, ``src/caffe/layers/batch_norm_layer.cpp``/``.cu``, engine CAFFE).

Asked for by ``batch_norm_param { scale_bias: true }`` or a ``scale_filler``/``bias_filler`` (NVCaffe sets
``scale_bias`` implicitly then); without them ``BatchNorm`` stays BVLC's (``neocaffe.layers.normalization``).

* Blobs: 0 mean (C), 1 variance (C), 2 "variance correction" (1,) = 1 (never read), 3 scale (C; ``scale_filler``
  or 1), 4 bias (C; ``bias_filler`` or 0). The stored statistics are used as they are (no division by blob 2).
* ParamSpecs, as its LayerSetUp overwrites them: blobs 0-2 ``lr_mult: 0, decay_mult: 0``; 3-4 ``lr_mult: 1,
  decay_mult: 1`` whatever the prototxt says.
* ``eps`` = max(eps, 1e-5); ``use_global_stats`` is read and ignored: TEST uses the stored statistics, TRAIN the
  batch's (biased variance) and updates the blobs: the layer's first two TRAIN forwards copy the batch mean and
  variance, later ones ``b = (1 - maf) * batch + maf * b``. The variance stored is the batch's, as the ``.cu``
  (the GPU path NVCaffe runs) stores it; its ``Forward_cpu`` adds ``eps`` to that buffer first and so stores
  ``var + eps``: the two paths disagree, and we follow the ``.cu``.
* ``x_norm = (x - mean) * (var + eps)^-0.5``; ``y = x_norm * scale + bias``. Backward (TRAIN):
  ``dscale = sum(dy * x_norm)``, ``dbias = sum(dy)``, ``g = dy * scale``,
  ``dx = (g - mean(g) - mean(g * x_norm) * x_norm) * (var + eps)^-0.5``.
  In TEST neocaffe's backward is the gradient of the TEST forward (NVCaffe's reuses its last TRAIN buffers).

Its cuDNN engine (``cudnn_batch_norm_layer.cpp``/``.cu``; ``neocaffe.layers._cudnn_bn``) runs where
``batch_norm_param.engine: CUDNN``. NVCaffe's ``GetBatchNormLayer`` (``layer_factory.cpp``) resolves ``DEFAULT`` to
CUDNN in every cuDNN build; here ``DEFAULT`` is the CAFFE engine above (``_cudnn_bn.DEFAULT_ENGINE_NOTE``). The
CUDNN engine's TRAIN forward and backward are the formulas above with ``eps = max(eps, CUDNN_BN_MIN_EPSILON)``
(the same value in float32); its running statistics are cuDNN's: ``b = (1 - f) * b + f * batch`` with the batch
mean and the *unbiased* batch variance (``m / (m - 1)`` times the biased one, ``m`` = N H W; ``m = 1`` is an
error), ``f = 1 - moving_average_fraction``, except ``f = 1`` (the batch's statistics copied) while the solver's
iteration (``LayerBase::iter()``, told to the layer by the solver's ``set_iteration``) is 0, which is every TRAIN
forward of a net run without a solver. TEST is the CAFFE engine's. Only the ``scale_bias`` form has it: a
``BatchNorm`` without ``scale_bias`` runs BVLC's layer whatever ``engine`` says (``neocaffe.layers.normalization``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._cudnn_bn import channel_count, cudnn_eps, update_running, uses_cudnn
from neocaffe.layers.fillers import fill

f32 = np.float32


def is_nvcaffe_bn(bp) -> bool:
    """NVCaffe's scale_bias form (its LayerSetUp: ``scale_bias`` or either filler set)."""
    return bool(bp.scale_bias) or bp.HasField("scale_filler") or bp.HasField("bias_filler")


def _dims(x: Tensor) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


def _cast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


class _NVBatchNormTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor | None, bias: Tensor | None, eps: float):  # type: ignore[override]
        dims = _dims(x)
        m = x.numel() // x.shape[1]
        F = float(f32(1.0 / m))  # Dtype F = 1. / (N * S)
        mean = x.sum(dims) * F
        xc = x - _cast(mean, x)
        var = (xc * xc).sum(dims) * F
        inv_var = torch.pow(var + eps, -0.5)
        xn = xc * _cast(inv_var, x)
        y = xn if scale is None else xn * _cast(scale, x) + _cast(bias, x)
        ctx.save_for_backward(xn, inv_var, scale)
        ctx.dims, ctx.F = dims, F
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean, _dvar):  # type: ignore[override]
        xn, inv_var, scale = ctx.saved_tensors
        dims, F = ctx.dims, ctx.F
        dscale = dbias = None
        if scale is not None:
            dscale = (dy * xn).sum(dims)
            dbias = dy.sum(dims)
            dy = dy * _cast(scale, dy)
        t = _cast((dy * xn).sum(dims) * F, dy) * xn
        t = _cast(dy.sum(dims) * F, dy) + t
        dx = (dy - t) * _cast(inv_var, dy)
        return dx, dscale, dbias, None


class NVCaffeBatchNorm:
    """The state and math of one NVCaffe BatchNorm, held by its ``BatchNormLayer`` (``layer.nv``)."""

    def __init__(self, layer, channels: int) -> None:
        bp = layer.param.batch_norm_param
        self.maf = float(f32(bp.moving_average_fraction))
        self.eps = float(max(f32(bp.eps), f32(1e-5)))
        self.scale_bias = is_nvcaffe_bn(bp)
        self.iter = 0  # NVCaffe's iter_: TRAIN forwards so far (not stored in weight files, as there)
        #: the cuDNN engine (``engine: CUDNN``); its moving-average factor reads the solver's iteration
        self.cudnn = uses_cudnn(bp.engine)
        self.solver_iter = 0  # LayerBase::iter(): the parent solver's iteration, 0 without a solver
        if self.cudnn:
            self.eps = cudnn_eps(self.eps)
            layer.set_iteration = self.set_iteration  # Net.set_iteration reaches it (read by the CUDNN engine only)
        layer.add_blob(torch.zeros(channels))
        layer.add_blob(torch.zeros(channels))
        layer.add_blob(torch.ones(1))
        if self.scale_bias:
            layer.add_blob(fill(bp.scale_filler, (channels,)) if bp.HasField("scale_filler")
                           else torch.ones(channels))
            layer.add_blob(fill(bp.bias_filler, (channels,)) if bp.HasField("bias_filler")
                           else torch.zeros(channels))
        for i in range(5 if self.scale_bias else 3):
            spec = layer.param.param[i] if len(layer.param.param) > i else layer.param.param.add()
            spec.lr_mult = spec.decay_mult = 1.0 if i >= 3 else 0.0

    def set_iteration(self, iteration: int, stop: int) -> None:
        """The solver's iteration (``Net.set_iteration``), which NVCaffe's cuDNN engine reads as ``iter()``."""
        self.solver_iter = int(iteration)

    def forward(self, layer, x: Tensor, train: bool) -> Tensor:
        blobs = list(layer.blobs)
        scale, bias = (blobs[3], blobs[4]) if self.scale_bias else (None, None)
        if not train:
            mean, var = blobs[0].detach().to(x.dtype), blobs[1].detach().to(x.dtype)
            xn = (x - _cast(mean, x)) * _cast(torch.pow(var + self.eps, -0.5), x)
            return xn if scale is None else xn * _cast(scale.to(x.dtype), x) + _cast(bias.to(x.dtype), x)
        y, mean, var = _NVBatchNormTrain.apply(x, scale, bias, self.eps)
        b0, b1 = blobs[0].detach(), blobs[1].detach()
        if self.cudnn:  # cudnnBatchNormalizationForwardTraining's running statistics
            factor = 1.0 if self.solver_iter == 0 else 1.0 - self.maf
            try:
                update_running(b0, b1, mean, var, channel_count(x), factor)
            except ValueError as e:
                raise layer.error(f"engine CUDNN: {e}") from None
            return y
        with torch.no_grad():
            if self.iter > 1:
                a = float(f32(1.0 - self.maf))
                b0.mul_(self.maf).add_((mean * a).to(b0.dtype))
                b1.mul_(self.maf).add_((var * a).to(b1.dtype))
            else:
                b0.copy_(mean)
                b1.copy_(var)
        self.iter += 1
        return y


__all__ = ["NVCaffeBatchNorm", "is_nvcaffe_bn"]
