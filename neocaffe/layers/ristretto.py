"""Ristretto's quantized layers (pmgysel/caffe @ 614963cb, the CNN approximation framework):
``ConvolutionRistretto``, ``DeconvolutionRistretto``, ``FcRistretto`` and ``LRNRistretto``.

Sources: ``src/caffe/ristretto/layers/base_ristretto_layer.{cpp,cu}`` (the quantizers),
``include/ristretto/base_ristretto_layer.{hpp,cuh}``, ``conv_ristretto_layer.{cpp,cu}``,
``deconv_ristretto_layer.{cpp,cu}``, ``fc_ristretto_layer.{cpp,cu}``, ``lrn_ristretto_layer.{cpp,cu}``;
``quantization_param`` (``QuantizationParameter``) from the fork's ``caffe.proto`` (field 149 there,
4149 here: proto/NUMBERING.md). Each layer is its upstream layer (geometry, blobs, fillers, reshape
reused from :mod:`conv`, :mod:`inner_product`, :mod:`lrn`) around the fork's quantizers:

* **weights**: every forward quantizes a copy of the full-precision blobs (the blobs themselves never
  change), with ``rounding_scheme`` in TEST and always STOCHASTIC in TRAIN; DYNAMIC_FIXED_POINT trims
  weight and bias to ``bw_params``/``fl_params``, MINIFLOAT both to ``mant_bits``/``exp_bits``,
  INTEGER_POWER_OF_2_WEIGHTS the weight to +/-2^e (e in ``[exp_min, exp_max]``) and leaves the bias;
* **activations** (TEST only): every bottom before, every top after the layer's arithmetic, with
  ``rounding_scheme``: ``bw_layer_in``/``fl_layer_in`` and ``bw_layer_out``/``fl_layer_out`` (dynamic
  fixed point, INTEGER_POWER_OF_2_WEIGHTS too: the ``.cu``), or minifloat;
* **backward** (the fork's Backward_cpu): the upstream layer's gradients with the quantized weights,
  the weight and bias diffs going to the full-precision blobs, and straight through the activation
  quantizers (the bottom diff is ``top_diff`` times the quantized weights: a straight-through estimator).

``LRNRistretto`` (only ACROSS_CHANNELS, only MINIFLOAT, in every phase; the fork has it on the GPU only,
``lrn_ristretto_layer.cu``): ``scale`` is the upstream running channel sum with every intermediate
(input, square, sum, ``alpha/n * sum``, ``k + ...``) rounded to minifloat, NEAREST (``rint``: ties to
even) whatever ``rounding_scheme`` says; top = q(q(x) * q(scale^-beta)). Backward: upstream's
CrossChannelBackward with that quantized scale and top and the unquantized bottom.

The quantizers, the ``.cpp``'s arithmetic in the layer's data type (float32 results equal the fork's
bit for bit): fixed point saturates to ``[-2^(bw-1), 2^(bw-1)-1] * 2^-fl`` (bounds rounded to the data
type), scales by ``2^fl``, rounds (C's ``round``: ties away from zero; STOCHASTIC ``floor(v + u)``, u in
[0, 1) in double) and scales back. Minifloat reads the float32 bits: zero and denormal inputs and
exponents below the format's become 0; exponents above saturate to the largest exponent and mantissa;
else the mantissa is rounded to ``mant_bits`` (a carry gives the next power of two). Power of two:
``e = log2f(|x|)`` rounded (STOCHASTIC: ``floorf(e + u)``), clamped, ``sign * 2^e`` (0 gives +2^exp_min).
STOCHASTIC draws one uniform per element from neocaffe's seeded generator (the fork: ``rand()``).

Where the ``.cpp`` and ``.cu`` part, we follow the ``.cpp`` (ties away from zero, u in [0, 1)) except:
(1) ``Trim2MiniFloat_cpu`` returns from the whole loop at the first zero or underflowing element
(``return`` for ``continue``), leaving every later element unquantized; here, as the ``.cu``, each
element is trimmed on its own; (2) ``QuantizeLayerInputs/Outputs_cpu`` leave the activations of
INTEGER_POWER_OF_2_WEIGHTS layers untouched, while the ``.cu`` (and the tool, which writes 8-bit
``bw_layer_in``/``bw_layer_out`` for such nets) trims them to dynamic fixed point: we follow the ``.cu``.

Deviations: the fork trims its bottoms **in place** in TEST (the blob, and later readers of it, keep the
trimmed values); here the layer trims a copy. The tops agree wherever a blob's readers quantize it
alike (the tool writes ``fl_layer_in`` from the blob's range, so SqueezeNet's two expand layers do) and
MAX pooling (monotone) reads it, and differ only where another kind of reader follows a Ristretto
layer on the same blob. LRNRistretto also runs on the CPU (the fork stops there), its ``pow`` is torch's
(CUDA's ``powf`` may round the last bit otherwise before the minifloat rounding). FcRistretto takes one
bottom (the fork's ``ExactNumBottomBlobs``), not happynear's ``normalize``. Parameters out of what the
fork's arithmetic handles are errors naming the layer: bit widths below 1, a fixed-point grid outside
float32's range, ``exp_bits`` outside [1, 30], ``mant_bits`` above 23, ``exp_min > exp_max``.
Ristretto V1 (``55c64c20``, before ``fc109ba1``): its enum spellings ``FIXED_POINT``, ``MINI_FLOATING_POINT``,
``POWER_2_WEIGHTS`` are aliases of the three above (the same numbers), so its prototxts parse and run with
V2's arithmetic. V1 differs in two places: it trimmed no layer inputs (V2 trims them to ``bw_layer_in``/
``fl_layer_in``, 32/16 when unset: only values off the 2^-16 grid or beyond 2^15 change) and left the
activations of POWER_2_WEIGHTS layers untouched. V1's ``DataRistretto`` layer is not carried.
The fork's ``ristretto quantize`` tool (the search for bit widths over a trained net) is
``neocaffe.tools.ristretto``; its output prototxts build, run and fine-tune here.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import PLAIN, TEST, TRAIN, Example, LayerCall, Shape, TopRef
from neocaffe.layers.conv import _CONV, _DECONV, ConvolutionLayer
from neocaffe.layers.inner_product import InnerProductLayer
from neocaffe.layers.lrn import ACROSS_CHANNELS, LRNLayer, _CrossChannelLRN
from neocaffe.layers.registry import register_layer
from neocaffe.layers.ristretto_quant import (MINIFLOAT, NEAREST, Quantization, quantized_params, straight_through,
                                            trim_minifloat)


# -- the layers -------------------------------------------------------------------------------------
def _examples(type_name: str, conv: str, shapes: Sequence[tuple[int, ...]], seed: int) -> list[Example]:
    r = np.random.default_rng(seed)
    head = f'name: "q" type: "{type_name}" bottom: "x" top: "y" {conv} '

    def x():
        return [r.standard_normal(s) for s in shapes[:1]]
    return [
        Example(head + 'quantization_param { bw_params: 6 fl_params: 4 }', x(), grad_params=False, phase=TRAIN),
        Example(head + 'quantization_param { bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 6 fl_layer_out: 2 '
                'bw_params: 8 fl_params: 6 rounding_scheme: NEAREST }', x(), grad_bottoms=(), grad_params=False),
        Example(head + 'quantization_param { precision: MINIFLOAT mant_bits: 3 exp_bits: 4 }', x(),
                grad_params=False, phase=TRAIN),
        Example(head + 'quantization_param { precision: MINIFLOAT mant_bits: 2 exp_bits: 3 rounding_scheme: '
                'STOCHASTIC }', x(), grad_bottoms=(), grad_params=False),
        Example(head + 'quantization_param { precision: INTEGER_POWER_OF_2_WEIGHTS exp_min: -4 exp_max: 0 '
                'bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 3 }', x(), grad_bottoms=(),
                grad_params=False),
    ]


@register_layer("ConvolutionRistretto")
class ConvolutionRistrettoLayer(ConvolutionLayer):
    """Ristretto's ConvolutionRistrettoLayer: Convolution with quantized weights and, in TEST, quantized
    bottoms and tops (see the module docstring)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        super().setup(bottom_shapes)
        self.quant = Quantization.read(self)

    def forward(self, *bottoms: Tensor) -> Tensor | list[Tensor]:
        """``_ConvBase``'s generic path (its geometry) with the quantized weights, the activations
        trimmed in TEST (the deconvolution's too: ``transposed``)."""
        q, test = self.quant, self.phase == TEST
        w, b = quantized_params(q, self.phase, self.blobs[0], self.blobs[1] if self.bias_term else None)
        if self.n_sp == 0:
            w = w.unsqueeze(-1)
        stride, pad, dil = self._torch_geometry()
        nd = max(self.n_sp, 1)
        tops = []
        for x in bottoms:
            if test:
                x = straight_through(x, lambda t: q.activations(t, out=False))
            lead = x.shape[: self.axis]
            xf = self._flat(x)
            if self.transposed:
                y = _DECONV[nd](xf, w, b, stride, pad, 0, self.group, dil)
            else:
                y = _CONV[nd](xf, w, b, stride, pad, dil, self.group)
            y = self._unflat(y, lead)
            tops.append(straight_through(y, lambda t: q.activations(t, out=True)) if test else y)
        return tops[0] if len(tops) == 1 else tops

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        return None

    @classmethod
    def examples(cls) -> list[Example]:
        conv = ('convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 weight_filler { '
                'type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.5 } }')
        return _examples("ConvolutionRistretto", conv, [(2, 4, 5, 6)], 30)


@register_layer("DeconvolutionRistretto")
class DeconvolutionRistrettoLayer(ConvolutionRistrettoLayer):
    """Ristretto's DeconvolutionRistrettoLayer: Deconvolution (``transposed``: weight (C, num_output/group,
    k...), the convolution's backward as the forward) with quantized weights and, in TEST, quantized
    bottoms and tops."""

    transposed = True

    @classmethod
    def examples(cls) -> list[Example]:
        conv = ('convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 weight_filler { '
                'type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.5 } }')
        return _examples("DeconvolutionRistretto", conv, [(2, 2, 3, 4)], 31)


@register_layer("FcRistretto")
class FcRistrettoLayer(InnerProductLayer):
    """Ristretto's FcRistrettoLayer: InnerProduct (one bottom) with quantized weights and, in TEST,
    quantized bottom and top."""

    exact_bottoms = 1
    min_bottoms = max_bottoms = None
    takes_call = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        super().setup(bottom_shapes)
        if self.normalize:
            raise self.error("inner_product_param.normalize is happynear's InnerProduct's; FcRistretto does not read it")
        self.quant = Quantization.read(self)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        q, test = self.quant, self.phase == TEST
        w, b = quantized_params(q, self.phase, self.blobs[0], self.blobs[1] if self.bias_term else None)
        if test:
            x = straight_through(x, lambda t: q.activations(t, out=False))
        x2 = x.reshape(-1, self.K)
        if self.transpose:
            y = torch.addmm(b, x2, w) if b is not None else x2 @ w
        else:
            y = F.linear(x2, w, b)
        y = y.reshape(tuple(x.shape[: self.axis]) + (self.num_output,))
        return straight_through(y, lambda t: q.activations(t, out=True)) if test else y

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        return None

    @classmethod
    def examples(cls) -> list[Example]:
        ip = ('inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.4 } '
              'bias_filler { type: "gaussian" std: 0.5 } }')
        out = _examples("FcRistretto", ip, [(3, 2, 2, 2)], 32)
        r = np.random.default_rng(33)
        out.append(Example('name: "q" type: "FcRistretto" bottom: "x" top: "y" inner_product_param { num_output: 4 '
                           'transpose: true axis: -1 bias_term: false weight_filler { type: "xavier" } } '
                           'quantization_param { bw_params: 5 fl_params: 3 }', [r.standard_normal((2, 3, 5))],
                           grad_params=False, phase=TRAIN))
        return out


def ristretto_lrn(x: Tensor, size: int, alpha_over_size: float, beta: float, k: float,
                  q: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """``LRNFillScaleQ`` + ``LRNComputeOutputQ``: (quantized scale, top), every intermediate rounded by
    ``q``; the running sum over the channels in the kernel's order, for all positions at once."""
    channels, post = x.shape[1], size - (size - 1) // 2 - 1
    xq = q(x)
    sq = q(xq * xq)
    scale = torch.empty_like(x)
    accum = torch.zeros_like(x[:, 0])
    for head in range(channels + post):
        if head < channels:
            accum = q(accum + sq[:, head])
        if head >= post:
            if head >= size:
                accum = q(accum - sq[:, head - size])
            scale[:, head - post] = q(k + q(accum * alpha_over_size))
    return scale, q(xq * q(scale.pow(-beta)))


class _LRNRistretto(torch.autograd.Function):
    """The quantized forward; upstream's CrossChannelBackward (``_CrossChannelLRN``'s) on its scale and top."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: "LRNRistrettoLayer", top_ref: TopRef) -> Tensor:  # noqa: D102
        scale, y = ristretto_lrn(x, layer.size, layer.alpha_over_size, layer.beta, layer.k, layer.minifloat)
        ctx.save_for_backward(x, scale, y)
        ctx.cfg = (layer.size, layer.beta, layer.cache_ratio, top_ref)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # noqa: D102
        return _CrossChannelLRN.backward(ctx, dy)[0], None, None


@register_layer("LRNRistretto")
class LRNRistrettoLayer(LRNLayer):
    """Ristretto's LRNRistrettoLayer: ACROSS_CHANNELS LRN with minifloat inputs, intermediates and
    outputs (the fork's ``.cu``; see the module docstring)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        super().setup(bottom_shapes)
        if self.region != ACROSS_CHANNELS:
            raise self.error("LRNRistretto supports lrn_param.norm_region ACROSS_CHANNELS only (the fork stops "
                             "on WITHIN_CHANNEL)")
        self.quant = Quantization.read(self, (MINIFLOAT,))

    def minifloat(self, t: Tensor) -> Tensor:
        """The kernels' ``toFP``: minifloat, NEAREST with ``rint``'s ties to even."""
        return trim_minifloat(t, self.quant.mant_bits, self.quant.exp_bits, NEAREST, ties_to_even=True)

    def forward(self, x: Tensor, call: LayerCall = PLAIN) -> Tensor:  # type: ignore[override]
        if not (x.requires_grad and torch.is_grad_enabled()):
            return ristretto_lrn(x, self.size, self.alpha_over_size, self.beta, self.k, self.minifloat)[1]
        return _LRNRistretto.apply(x, self, call.top(0))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(34)
        head = 'name: "n" type: "LRNRistretto" bottom: "x" top: "y" lrn_param { '
        return [
            Example(head + 'local_size: 5 alpha: 0.0001 beta: 0.75 } quantization_param { precision: MINIFLOAT '
                    'mant_bits: 10 exp_bits: 5 }', [r.standard_normal((2, 7, 3, 4)) * 40], grad_bottoms=(),
                    grad_params=False),
            Example(head + 'local_size: 3 alpha: 0.5 beta: 0.6 k: 2 } quantization_param { precision: MINIFLOAT '
                    'mant_bits: 3 exp_bits: 4 }', [r.standard_normal((2, 4, 3, 3)) * 2], grad_bottoms=(),
                    grad_params=False, phase=TRAIN),
        ]
