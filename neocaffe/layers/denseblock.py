"""senlinuc/caffe_ocr's ``DenseBlock``: a whole DenseNet dense block (its DenseNet + CTC text recognisers) in one layer.

Lineage: senlinuc/caffe_ocr @ 81642f61ea8f888e360cca30e08e05b7bc6d4556 (caffe_ocr in proto/NUMBERING.md),
``src/caffe/layers/DenseBlock_layer.cu`` (cuDNN; the semantics followed here), ``src/caffe/layers/DenseBlock_layer.cpp``
(LayerSetUp, Reshape, and a naive CPU path the fork marks as not for production), ``include/caffe/layers/
DenseBlock_layer.hpp``; ``denseblock_param`` (``DenseBlockParameter``, field 7147 here).

Bottom x (N, C0, H, W) -> top (N, C0 + T*g, H, W), T = ``numTransition``, g = ``growthRate``. C0 is the bottom's
channel count (the fork reads ``initChannel`` and then overrides it with the bottom's). Transition t (C_t = C0 + t*g
channels in the running map F_t, F_0 = x):

    h = ReLU(BN_t(F_t))                                      (C_t channels)
    use_BC: h = ReLU(BN'_t(conv1x1(h, W'_t)))                (4g channels; 1x1, no pad)
    y = conv(h, W_t)                                         (g channels; 3 x 3, pad 1, stride 1, no bias)
    TRAIN with use_dropout: y = dropout(y, dropout_amount)   (keep 1-p, scale 1/(1-p), as cudnnDropoutForward)
    F_{t+1} = concat(F_t, y) on the channels

* the convolutions are cuDNN's ``CUDNN_CONVOLUTION`` mode (both .cu and .cpp): the kernel is applied *flipped*
  (``out[h, w] = sum W[i, j] * in[h + 1 - i, w + 1 - j]``), unlike Caffe's Convolution layer (cross-correlation);
  so the fork's stored filters act flipped here too;
* the kernel is always 3 x 3, pad 1, stride 1: the fork never reads ``filter_H``, ``filter_W``, ``pad_h``,
  ``pad_w``, ``conv_verticalStride``, ``conv_horizentalStride`` (nor ``gpuIdx``, ``workspace_MB``,
  ``BC_ultra_space_efficient``, which only place buffers); here too, with a warning where one is set otherwise;
* BN (``CUDNN_BATCHNORM_SPATIAL``, eps = cuDNN 5-7's ``CUDNN_BN_MIN_EPSILON`` 1e-5): TRAIN normalises by the batch
  mean and *biased* variance over (N, H, W) and then updates the stored statistics
  ``mean <- f * batch_mean + (1 - f) * mean``, ``var <- f * m/(m-1) * batch_var + (1 - f) * var`` (f =
  ``moving_average_fraction``, m = N*H*W: cuDNN's running variance with factor 1 is the unbiased one, then the
  fork's ``caffe_gpu_axpby``); TEST normalises by the stored mean and variance as they are (no scale factor);
  ``y = scale * x_hat + bias``.

Blobs, in the fork's order (so its ``.caffemodel`` loads blob for blob): ``[0, T)`` filters W_t (g, C_t, 3, 3)
(with use_BC (g, 4g, 3, 3)); ``[T, 2T)`` BN scales (1, C_t, 1, 1); ``[2T, 3T)`` BN biases; ``[3T, 4T)`` stored means
(0 at setup); ``[4T, 5T)`` stored variances (1 at setup); with use_BC ``[5T, 6T)`` 1x1 filters W'_t (4g, C_t, 1, 1),
``[6T, 7T)`` BC scales (1, 4g, 1, 1), ``[7T, 8T)`` BC biases, ``[8T, 9T)`` BC means, ``[9T, 10T)`` BC variances; last
a (1,) blob of 0 (the CPU path's Caffe-BN-style scale factor; the GPU path never reads or writes it). Fillers:
``Filter_Filler`` for every filter, ``BN_Scaler_Filler`` / ``BN_Bias_Filler`` for the scales / biases (unset:
constant 0, as Caffe's default FillerParameter). As the fork's LayerSetUp, the layer adds the ParamSpecs itself:
lr_mult = decay_mult = 1 for filters, scales and biases, 0 for the statistics and the last blob.

Backward: the fork's cuDNN backward is the exact gradient of its TRAIN forward (cudnnBatchNormalizationBackward
from the batch statistics, ReLU, convolution and dropout backward, diffs accumulated over the concatenated map), so
autograd of the forward here is the fork's diff (checked in float64).

Deviations: dropout masks come from neocaffe's seeded generator (``neocaffe.rng``), not cuDNN's Philox states seeded
124816 + t, so the draws differ; a backward after a TEST-phase forward is the gradient of that forward (the fork's
recomputes TRAIN-mode BN, with dropout buffers that forward never wrote); the fork aborts ("Nope") when the
prototxt gives any ``param`` spec, here specs equal to the ones it adds are accepted and others are an error. The
fork's CPU path differs from its GPU path (normalises by the unbiased variance, accumulates ``mean = f*mean + batch``
with the last blob as Caffe's BatchNorm scale factor, and its BN backward accumulates stale sums); it is not
followed.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import TRAIN, Example, Layer
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.layers")

#: cuDNN 5-7's CUDNN_BN_MIN_EPSILON, the eps the fork passes to every BN call
EPS = 1e-5
#: fields the fork never reads, with their schema defaults (the geometry it hard-codes)
_IGNORED = {"filter_H": 3, "filter_W": 3, "pad_h": 1, "pad_w": 1, "conv_verticalStride": 1,
            "conv_horizentalStride": 1}


@register_layer("DenseBlock")
class DenseBlock(Layer):
    """caffe_ocr's fused DenseNet block (module docstring)."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-axis bottom (N, C, H, W); received shape {tuple(shape)}")
        p = self.param.denseblock_param
        self.c0, self.T, self.g = int(shape[1]), int(p.numTransition), int(p.growthRate)
        if self.T < 1 or self.g < 1:
            raise self.error(f"denseblock_param numTransition and growthRate must be positive; received "
                             f"{self.T} and {self.g}")
        for field, default in _IGNORED.items():
            if getattr(p, field) != default:
                log.warning("layer '%s' (DenseBlock): denseblock_param.%s = %d is ignored, as caffe_ocr ignores it "
                            "(3 x 3 kernel, pad 1, stride 1)", self.name, field, getattr(p, field))
        self.bc = bool(p.use_BC)
        self.f = float(np.float32(p.moving_average_fraction))
        self.dropout = float(np.float32(p.dropout_amount)) if p.use_dropout else 0.0
        if not 0 <= self.dropout < 1:
            raise self.error(f"denseblock_param.dropout_amount must be in [0, 1); received {self.dropout}")
        self.keep_scale = float(np.float32(1.0 / (1.0 - np.float32(self.dropout))))
        T, g = self.T, self.g
        chans = [self.c0 + t * g for t in range(T)]
        blobs: dict[int, Tensor] = {}
        for t, c in enumerate(chans):  # the fork's fill order: filter(s), scale(s), bias(es)
            blobs[t] = fill(p.Filter_Filler, (g, 4 * g if self.bc else c, 3, 3))
            if self.bc:
                blobs[5 * T + t] = fill(p.Filter_Filler, (4 * g, c, 1, 1))
            blobs[T + t] = fill(p.BN_Scaler_Filler, (1, c, 1, 1))
            if self.bc:
                blobs[6 * T + t] = fill(p.BN_Scaler_Filler, (1, 4 * g, 1, 1))
            blobs[2 * T + t] = fill(p.BN_Bias_Filler, (1, c, 1, 1))
            if self.bc:
                blobs[7 * T + t] = fill(p.BN_Bias_Filler, (1, 4 * g, 1, 1))
            blobs[3 * T + t], blobs[4 * T + t] = torch.zeros(1, c, 1, 1), torch.ones(1, c, 1, 1)
            if self.bc:
                blobs[8 * T + t], blobs[9 * T + t] = torch.zeros(1, 4 * g, 1, 1), torch.ones(1, 4 * g, 1, 1)
        n_blobs = (10 if self.bc else 5) * T + 1
        blobs[n_blobs - 1] = torch.zeros(1)
        for i in range(n_blobs):
            self.add_blob(blobs[i])
        self._add_param_specs(n_blobs)

    def _add_param_specs(self, n_blobs: int) -> None:
        T = self.T
        for i in range(n_blobs):
            stats = 3 * T <= i < 5 * T or i >= (8 * T if self.bc else 5 * T)
            mult = 0.0 if stats else 1.0
            if len(self.param.param) == i:
                spec = self.param.param.add()
                spec.lr_mult, spec.decay_mult = mult, mult
            elif self.param.param[i].lr_mult != mult or self.param.param[i].decay_mult != mult:
                raise self.error(f"caffe_ocr's DenseBlock sets its own param specs (lr_mult = decay_mult = {mult:g} "
                                 f"for blob {i}); the prototxt gives param[{i}] lr_mult "
                                 f"{self.param.param[i].lr_mult:g}, decay_mult {self.param.param[i].decay_mult:g}")

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4 or shape[1] != self.c0:
            raise self.error(f"bottom shape {shape} is not (N, {self.c0}, H, W) as at setup")
        return [(shape[0], self.c0 + self.T * self.g, shape[2], shape[3])]

    def _bn(self, x: Tensor, k_scale: int, k_mean: int) -> Tensor:
        """BN of ``x`` with scale/bias blobs ``k_scale``, ``k_scale + T`` and statistics ``k_mean``, ``k_mean + T``."""
        scale = self.blobs[k_scale].reshape(-1).to(x.dtype)
        bias = self.blobs[k_scale + self.T].reshape(-1).to(x.dtype)
        mean_blob, var_blob = self.blobs[k_mean], self.blobs[k_mean + self.T]
        if self.phase != TRAIN:
            return F.batch_norm(x, mean_blob.detach().reshape(-1).to(x.dtype), var_blob.detach().reshape(-1).to(x.dtype),
                                scale, bias, False, 0.0, EPS)
        y = F.batch_norm(x, None, None, scale, bias, True, 0.0, EPS)
        with torch.no_grad():
            var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), correction=0)
            m = x.numel() // x.shape[1]
            unbiased = var * (m / (m - 1)) if m > 1 else var
            mb, vb = mean_blob.detach(), var_blob.detach()
            mb.mul_(1 - self.f).add_(mean.reshape(mb.shape).to(mb.dtype), alpha=self.f)
            vb.mul_(1 - self.f).add_(unbiased.reshape(vb.shape).to(vb.dtype), alpha=self.f)
        return y

    def forward(self, x):  # type: ignore[override]
        T = self.T
        feats = x
        drop = self.phase == TRAIN and self.dropout > 0
        for t in range(T):
            h = F.relu(self._bn(feats, T + t, 3 * T + t))
            if self.bc:
                h = F.conv2d(h, self.blobs[5 * T + t].to(x.dtype))
                h = F.relu(self._bn(h, 6 * T + t, 8 * T + t))
            y = F.conv2d(h, self.blobs[t].to(x.dtype).flip((2, 3)), padding=1)
            if drop:
                if torch.compiler.is_compiling():  # torch.compile cannot trace an explicit generator (as Dropout)
                    mask = torch.empty_like(y).bernoulli_(1.0 - self.dropout)
                else:
                    mask = torch.empty_like(y).bernoulli_(1.0 - self.dropout, generator=rng.generator(y.device))
                y = y * mask.mul_(self.keep_scale)
            feats = torch.cat((feats, y), 1)
        return feats

    @classmethod
    def examples(cls) -> list[Example]:
        x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
        base = ('name: "db" type: "DenseBlock" bottom: "x" top: "y" denseblock_param { numTransition: 2 growthRate: 2 '
                'Filter_Filler { type: "msra" } BN_Scaler_Filler { type: "uniform" min: 0.5 max: 1.5 } '
                'BN_Bias_Filler { type: "uniform" min: -0.2 max: 0.2 } ')
        return [Example(base + '}', [x], phase=TRAIN, atol=1e-5),
                Example(base + 'use_BC: true }', [x], phase=TRAIN, atol=1e-5),
                Example(base + 'use_dropout: true dropout_amount: 0.3 }', [x], phase=TRAIN, atol=1e-5),
                Example(base + 'use_BC: true }', [x], grad_params=False)]


__all__ = ["DenseBlock", "EPS"]
