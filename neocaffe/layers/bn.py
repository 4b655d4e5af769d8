"""The forks' ``BN`` layer: one type name, three lineages with different blobs and formulas.

* **PSPNet** (hszhao/PSPNet @ 798bdc90, ``src/caffe/layers/bn_layer.cpp``): ``bn_param`` fields
  ``slope_filler``, ``bias_filler``, ``momentum`` (0.9), ``eps`` (1e-5), ``frozen``, ``engine``. Four
  blobs of shape 1 x C x 1 x 1: slope, bias, running mean, running variance (filled 0, and the variance
  1 when frozen). ``y = (x - mean) * (var + eps)^-0.5 * slope + bias``; in the TEST phase or when
  ``frozen`` the stored statistics, otherwise the batch's (mean over N, H, W; biased variance), and the
  stored ones become ``(1 - momentum) * batch + momentum * stored``. As the fork's LayerSetUp, blobs 2
  and 3 (and 0 and 1 when frozen) get ``lr_mult: 0, decay_mult: 0`` whatever the prototxt says; a frozen
  layer computes no slope/bias diff. Backward: the exact gradient of the forward (the fork's formula
  in TRAIN; in the TEST phase of a non-frozen layer the fork applies the batch-statistics formula to a
  forward that used the stored ones, and we give the gradient of the forward actually computed).
* **SegNet** (alexgkendall/caffe-segnet @ 344c113b, ``src/caffe/layers/bn_layer.cpp``; TimoSaemann's
  ENet fork has the same): ``bn_param`` fields ``scale_filler``, ``shift_filler``, ``bn_mode``. Two blobs
  of shape 1 x C x 1 x 1: scale, shift. LEARN: ``y = (x - E x) / sqrt(E x^2 - (E x)^2 + 1e-9) * scale +
  shift`` over N, H, W in every phase, optional tops 1 and 2 the batch mean and variance (1 x C x 1 x 1,
  no diff); INFERENCE: ``y = scale * x + shift``. Backward: the fork's, which is the exact gradient.

* **L-Softmax** (wy1iu/LargeMargin_Softmax_Loss @ c325f38, ``src/caffe/layers/bn_layer.cpp``: an earlier state
  of PSPNet's layer): PSPNet's ``bn_param`` fields, so it is told by the net instead (``neocaffe.layers.lineage``:
  ``lineage: "lsoftmax"``, or a net with L-Softmax's own ``LargeMarginInnerProduct`` and no lineage). Four
  blobs of shape 1 x C: slope, bias, running mean (0) and running *inverse standard deviation* (1). TRAIN
  (not frozen): the batch's mean and ``inv_std = (var + eps)^-0.5`` (biased variance), and the stored ones
  become ``(1 - momentum) * batch + momentum * stored``; TEST or ``frozen``: the stored mean and inverse
  standard deviation as they are (no eps). ``y = (x - mean) * inv_std * slope + bias``. Its ParamSpecs are the
  prototxt's (the fork forces no ``lr_mult: 0``: weight decay reaches the statistics, as there). Backward: the
  gradient of the forward (frozen: no slope/bias diff, the bottom's ``dy * slope * inv_std``, the fork's; in
  the TEST phase of a non-frozen layer the gradient of the forward computed, as for PSPNet's).

Which lineage a layer belongs to is read from the fields its ``bn_param`` sets (NUMBERING.md rule 6):
any PSPNet field means PSPNet (L-Softmax's in an L-Softmax net), any SegNet field SegNet, both an error;
with none set, a second or third top means SegNet (PSPNet's BN has exactly one); anything else is an error
that names the fields.

TSN's Caffe (yjxiong/caffe ``action_recog`` @ 9831a2b4, ``bn_layer.cpp``) has PSPNet's layer with blobs of
shape 1 x C: its forward, backward, running statistics and ``frozen`` are PSPNet's (tests/layers/test_tsn_layers.py
checks them against a port of its CAFFE engine), and a PSPNet-form BN loads 1 x C blobs too (TSN's released
models).

PSPNet's and TSN's cuDNN engine (``cudnn_bn_layer.cpp``/``.cu``, the same file in both forks;
``neocaffe.layers._cudnn_bn``) runs where ``bn_param.engine: CUDNN``. Its layer factory (``layer_factory.cpp``,
``GetBNLayer``) also resolves ``DEFAULT`` to CUDNN in a build with cuDNN >= 5, the forks' standard GPU build; here
``DEFAULT`` is the CAFFE engine (``_cudnn_bn``'s docstring says why). The CUDNN engine differs from the CAFFE one in:
``eps`` becomes ``max(eps, 1e-5)`` (``CUDNN_BN_MIN_EPSILON``) in every phase, so TEST outputs differ where
``eps < 1e-5`` (folding and ONNX export read the same value); the TRAIN update of the running variance takes the
*unbiased* batch variance (the biased one times ``m / (m - 1)``, ``m`` = N H W; a batch with ``m = 1`` is an error),
the running mean the same factor ``1 - momentum``. The TRAIN forward and backward (cuDNN's exact gradient with its
saved mean and inverse std) are the CAFFE engine's. Frozen, the fork's backward (``BNLayer::Backward_gpu``) uses the
unclamped ``eps`` while its forward uses the clamped one, and so does neocaffe's (they differ only where
``eps < 1e-5``). L-Softmax's BN keeps its CAFFE arithmetic whatever ``engine`` says (its fork's cuDNN engine is
not examined). Where it matters: TSN's BN-Inception RGB train_val nets (tests/layers/data/tsn) leave ``engine`` unset
with one non-frozen BN (the first) and 68 frozen ones, whose statistics no engine updates; its flow nets set
``engine: CAFFE``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._cudnn_bn import FrozenNormalize, channel_count, cudnn_eps, update_running, uses_cudnn
from neocaffe.layers.base import TEST, Example, Layer, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.registry import register_layer

f32 = np.float32
PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
SEGNET_FIELDS = ("scale_filler", "shift_filler", "bn_mode")
LEARN, INFERENCE = 0, 1  # BNParameter.BNMode
SEGNET_VAR_EPS = 1e-9  # var_eps_, fixed in SegNet's LayerSetUp


def bn_lineage(param, n_tops: int) -> str:
    """``"pspnet"`` or ``"segnet"`` for a BN ``LayerParameter``, from the ``bn_param`` fields it sets."""
    bp = param.bn_param
    psp = [f for f in PSPNET_FIELDS if bp.HasField(f)]
    seg = [f for f in SEGNET_FIELDS if bp.HasField(f)]
    if psp and seg:
        raise ValueError(f"bn_param sets PSPNet's {psp} and SegNet's {seg}: one BN layer is of one lineage")
    if psp:
        return "pspnet"
    if seg or n_tops > 1:
        return "segnet"
    raise ValueError(f"bn_param sets none of PSPNet's fields {list(PSPNET_FIELDS)} nor SegNet's "
                     f"{list(SEGNET_FIELDS)}, so which BN this is cannot be told; set e.g. `frozen` "
                     f"(PSPNet) or `bn_mode` (SegNet)")


def _channel_view(x: Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


def force_zero_lr(param: Any, which: tuple[int, ...]) -> None:
    """The forks' BN LayerSetUp (PSPNet's, TSN's BN and SyncBN): ParamSpecs up to 4, ``lr_mult = decay_mult = 0``
    on ``which`` (the running statistics, or every blob when frozen), whatever the prototxt says."""
    while len(param.param) < 4:
        param.param.add()
    for i in which:
        param.param[i].lr_mult = 0
        param.param[i].decay_mult = 0


def check_channels(layer: Layer, shape: Shape) -> tuple[int, ...]:
    """``shape`` as a tuple, after checking it has the ``layer.channels`` its blobs were made for."""
    s = tuple(shape)
    if len(s) < 2 or s[1] != layer.channels:
        raise layer.error(f"bottom shape {s} does not have the {layer.channels} channels the blobs were made for")
    return s


@register_layer("BN")
class BNLayer(Layer):
    """PSPNet's, SegNet's or L-Softmax's ``BN`` (see the module docstring)."""

    exact_bottoms = 1
    min_tops = 1
    max_tops = 3
    takes_net = True  # L-Softmax's BN reads as PSPNet's: the net tells them apart

    def setup(self, bottom_shapes: list[Shape]) -> None:
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom with at least 2 axes (N, C, ...); received shape {shape}")
        try:
            self.lineage = bn_lineage(self.param, len(self.param.top))
            if self.lineage == "pspnet" and net_lineage(self.net_so_far) == "lsoftmax":
                self.lineage = "lsoftmax"
        except ValueError as e:
            raise self.error(str(e)) from None
        self.channels = int(shape[1])
        blob_shape = (1, self.channels, 1, 1)
        bp = self.param.bn_param
        if self.lineage in ("pspnet", "lsoftmax"):
            if len(self.param.top) != 1:
                raise self.error(f"PSPNet's BN takes exactly 1 top; received {len(self.param.top)}")
            self.frozen = bool(bp.frozen)
            self.momentum = float(f32(bp.momentum))
            self.eps = float(f32(bp.eps))
            #: PSPNet's/TSN's cuDNN engine (``engine: CUDNN``; DEFAULT is CAFFE: ``_cudnn_bn.DEFAULT_ENGINE_NOTE``)
            self.cudnn = self.lineage == "pspnet" and uses_cudnn(bp.engine)
            self.bwd_eps = self.eps  # the eps of the fork's frozen backward, unclamped in both engines
            if self.cudnn:
                self.eps = cudnn_eps(self.eps)
            if self.lineage == "lsoftmax":
                blob_shape = (1, self.channels)
            self.add_blob(fill(bp.slope_filler, blob_shape))
            self.add_blob(fill(bp.bias_filler, blob_shape))
            self.add_blob(torch.zeros(blob_shape))
            self.add_blob(torch.full(blob_shape, 1.0 if self.frozen or self.lineage == "lsoftmax" else 0.0))
            if self.lineage == "pspnet":
                force_zero_lr(self.param, (0, 1, 2, 3) if self.frozen else (2, 3))
                self.copy_blobs = self._copy_pspnet_or_tsn  # weight loading's per-layer rule (graph/weights.py)
        else:
            self.mode = int(bp.bn_mode)
            self.add_blob(fill(bp.scale_filler, blob_shape))
            self.add_blob(fill(bp.shift_filler, blob_shape))

    def _copy_pspnet_or_tsn(self, arrays: list[np.ndarray]) -> str | None:
        """Load stored blobs: PSPNet's 1 x C x 1 x 1, or TSN's 1 x C (yjxiong/caffe ``action_recog``,
        ``bn_layer.cpp``: the same layer, whose blobs are 2-D; TSN's released models store them so). Any other
        count or shape is Caffe's shape-mismatch error. L-Softmax's BN also stores 1 x C blobs, its fourth a
        running inverse standard deviation, not a variance: a net without L-Softmax's types cannot tell them
        apart, so 1 x C blobs return a note (logged once per load by the weight loader) naming the fix."""
        if len(arrays) != len(self.blobs):
            raise self.error(f"Incompatible number of blobs: the layer has {len(self.blobs)}, the weights have "
                             f"{len(arrays)}")
        for k, (blob, arr) in enumerate(zip(self.blobs, arrays)):
            arr = np.asarray(arr, np.float32)
            if arr.shape not in (tuple(blob.shape), (1, self.channels)):
                raise self.error(f"Cannot copy param {k} weights; shape mismatch. Source param shape is "
                                 f"{' '.join(map(str, arr.shape))}; target param shape is "
                                 f"{' '.join(map(str, blob.shape))} (or TSN's 1 {self.channels})")
            with torch.no_grad():
                blob.copy_(torch.from_numpy(arr.reshape(blob.shape)).to(blob.device, blob.dtype))
        if any(np.ndim(a) == 2 for a in arrays):
            return ("BN blobs of shape 1 x C loaded as TSN's (yjxiong/caffe: blob 3 a running variance); if they come "
                    "from L-Softmax's Caffe (blob 3 a running inverse std), set lineage: \"lsoftmax\" in the net")
        return None

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = check_channels(self, bottom_shapes[0])
        stat = (1, self.channels, 1, 1)
        return [s] + [stat] * (len(self.param.top) - 1)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # type: ignore[override]
        if self.lineage in ("pspnet", "lsoftmax"):
            return self._pspnet(x)
        return self._segnet(x)

    # -- PSPNet ----------------------------------------------------------------------------------
    def _pspnet(self, x: Tensor) -> Tensor:
        view = _channel_view(x)
        slope, bias, run_mean, run_var = self.blobs
        if self.frozen:
            slope, bias = slope.detach(), bias.detach()
        lsoftmax = self.lineage == "lsoftmax"  # blob 3: the running inverse std, used as it is
        if self.frozen or self.phase == TEST:
            mean = run_mean.detach().to(x.dtype).reshape(view)
            var = run_var.detach().to(x.dtype).reshape(view)
            inv_std = var if lsoftmax else (var + self.eps).pow(-0.5)
        else:
            dims = (0,) + tuple(range(2, x.dim()))
            mean = x.mean(dims, keepdim=True)
            xc = x - mean
            var = (xc * xc).mean(dims, keepdim=True)
            inv_std = (var + self.eps).pow(-0.5)
            if self.cudnn:  # cuDNN's exponentialAverageFactor = 1 - momentum, unbiased variance
                try:
                    update_running(run_mean, run_var, mean, var, channel_count(x), float(f32(1) - f32(self.momentum)))
                except ValueError as e:
                    raise self.error(f"engine CUDNN: {e}") from None
            else:
                self._update_caffe(run_mean, run_var, mean, inv_std if lsoftmax else var)
        if self.frozen and self.eps != self.bwd_eps:  # cuDNN engine, eps < 1e-5: the fork's frozen backward
            y = FrozenNormalize.apply(x - mean, inv_std, (var + self.bwd_eps).pow(-0.5))
        else:
            y = (x - mean) * inv_std
        return y * slope.to(x.dtype).reshape(view) + bias.to(x.dtype).reshape(view)

    def _update_caffe(self, run_mean: Tensor, run_var: Tensor, mean: Tensor, stat: Tensor) -> None:
        """The CAFFE engine's running statistics: ``(1 - momentum) * batch + momentum * stored``."""
        with torch.no_grad():
            keep, take = self.momentum, float(f32(1) - f32(self.momentum))
            run_mean.mul_(keep).add_(mean.detach().reshape(run_mean.shape).to(run_mean.dtype), alpha=take)
            run_var.mul_(keep).add_(stat.detach().reshape(run_var.shape).to(run_var.dtype), alpha=take)

    # -- SegNet ----------------------------------------------------------------------------------
    def _segnet(self, x: Tensor) -> Tensor | list[Tensor]:
        view = _channel_view(x)
        scale, shift = (b.to(x.dtype).reshape(view) for b in self.blobs)
        stat_shape = (1, self.channels, 1, 1)
        if self.mode == INFERENCE:
            y = x * scale + shift
            stats = [x.new_zeros(stat_shape)] * 2  # the fork leaves these tops unwritten in INFERENCE
        elif self.mode == LEARN:
            dims = (0,) + tuple(range(2, x.dim()))
            mean = x.mean(dims, keepdim=True)
            var = (x * x).mean(dims, keepdim=True) - mean * mean   # E(x^2) - (E x)^2, as the fork
            y = (x - mean) / torch.sqrt(var + SEGNET_VAR_EPS) * scale + shift
            stats = [mean.detach().reshape(stat_shape), var.detach().reshape(stat_shape)]
        else:
            raise self.error(f"unknown bn_param.bn_mode {self.mode}; expected LEARN (0) or INFERENCE (1)")
        n = len(self.param.top)
        return y if n == 1 else [y] + stats[:n - 1]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(15)
        x = r.standard_normal((2, 3, 4, 5)) * 2 + 0.5
        psp = ('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { slope_filler { type: "uniform" min: 0.5 '
               'max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } ')
        seg = ('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { scale_filler { type: "uniform" min: 0.5 '
               'max: 1.5 } shift_filler { type: "constant" value: 0.001 } ')

        def stats(layer) -> None:  # meaningful stored statistics for the TEST-phase forms
            with torch.no_grad():
                layer.blobs[2].copy_(torch.linspace(-0.5, 0.5, layer.channels).reshape(1, -1, 1, 1))
                layer.blobs[3].copy_(torch.linspace(0.5, 2.0, layer.channels).reshape(1, -1, 1, 1))

        return [Example(psp + 'momentum: 0.95 }', [x], phase=0),
                Example(psp + 'eps: 0.001 }', [x], grad_params=False, prepare=stats),  # stored stats: no diff
                Example(psp + 'frozen: true }', [x], grad_params=False, phase=0, prepare=stats),
                Example(psp + 'engine: CUDNN momentum: 0.8 eps: 1e-7 }', [x], phase=0),  # cuDNN's statistics
                Example(seg + '}', [x], phase=0),
                Example(seg + 'bn_mode: INFERENCE }', [x]),
                Example(seg.replace('top: "y"', 'top: "y" top: "m" top: "v"') + '}', [x])]
