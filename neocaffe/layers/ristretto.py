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
The fork's ``ristretto quantize`` tool (the search for bit widths over a trained net) is
``neocaffe.tools.ristretto``; its output prototxts build, run and fine-tune here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import PLAIN, TEST, TRAIN, Example, Layer, LayerCall, Shape, TopRef
from neocaffe.layers.conv import _CONV, _DECONV, ConvolutionLayer
from neocaffe.layers.inner_product import InnerProductLayer
from neocaffe.layers.lrn import ACROSS_CHANNELS, LRNLayer, _CrossChannelLRN
from neocaffe.layers.registry import register_layer

DYNAMIC_FIXED_POINT, MINIFLOAT, INTEGER_POWER_OF_2_WEIGHTS = 0, 1, 2  # QuantizationParameter.Precision
NEAREST, STOCHASTIC = 0, 1  # QuantizationParameter.Rounding
PRECISIONS = {DYNAMIC_FIXED_POINT: "DYNAMIC_FIXED_POINT", MINIFLOAT: "MINIFLOAT",
              INTEGER_POWER_OF_2_WEIGHTS: "INTEGER_POWER_OF_2_WEIGHTS"}


# -- the quantizers ---------------------------------------------------------------------------------
def _in_type(dtype: torch.dtype, v: float) -> float:
    """``v`` as the data type holds it (a Dtype local of the fork's)."""
    return float(v) if dtype == torch.float64 else float(np.float32(v))


def _round_away(t: Tensor) -> Tensor:
    """C's ``round``: to the nearest integer, ties away from zero (exact in any float type)."""
    whole = t.trunc()
    frac = t - whole
    return torch.where(frac.abs() >= 0.5, whole + frac.sign(), whole)


def _pow2(e: Tensor) -> Tensor:
    """``2^e`` in float64, exactly, for integer ``e`` (int64) in [-1022, 1023] (clamped there)."""
    return ((e.clamp(-1022, 1023) + 1023) << 52).view(torch.float64)


def _uniform(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw in [0, 1) (double) per element: the fork's ``RandUniform_cpu``."""
    g = generator if generator is not None else rng.generator(like.device)
    return torch.rand(like.shape, dtype=torch.float64, device=like.device, generator=g)


def trim_fixed_point(x: Tensor, bw: int, fl: int, rounding: int = NEAREST,
                     generator: torch.Generator | None = None) -> Tensor:
    """``Trim2FixedPoint_cpu``: saturate, scale by 2^fl, round, scale back (the data type's roundings)."""
    dt, step = x.dtype, math.ldexp(1.0, -fl)
    hi = _in_type(dt, (2.0 ** (bw - 1) - 1) * step)
    lo = _in_type(dt, -(2.0 ** (bw - 1)) * step)
    s = (x.clamp(lo, hi).double() / step).to(dt)
    if rounding == STOCHASTIC:
        r = torch.floor(s.double() + _uniform(s, generator)).to(dt)
    else:
        r = _round_away(s)
    return (r.double() * step).to(dt)


def trim_minifloat(x: Tensor, mant_bits: int, exp_bits: int, rounding: int = NEAREST,
                   generator: torch.Generator | None = None, ties_to_even: bool = False) -> Tensor:
    """``Trim2MiniFloat``: the float32 bits re-encoded with ``mant_bits``/``exp_bits`` (see the module
    docstring); ``ties_to_even``: the ``.cu``'s ``rint`` for NEAREST (LRNRistretto's only path)."""
    bits = x.to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    sign, biased = bits >> 31, (bits >> 23) & 0xFF
    bias_out = 2 ** (exp_bits - 1) - 1
    exponent = biased - 127 + bias_out
    max_exp, max_mant = 2 ** exp_bits - 1, 2 ** mant_bits - 1
    tmp = (bits & 0x7FFFFF).to(torch.float64) / 2.0 ** (23 - mant_bits)
    if rounding == STOCHASTIC:
        mant = torch.floor(tmp + _uniform(tmp, generator))
    else:
        mant = torch.round(tmp) if ties_to_even else torch.floor(tmp + 0.5)  # tmp >= 0: floor(t + .5) is round
    flush = (biased == 0) | (exponent < 0)
    sat = exponent > max_exp
    mant = torch.where(sat, float(max_mant), mant)
    exponent = torch.where(sat, max_exp, exponent)
    value = (mant + 2.0 ** mant_bits) / 2.0 ** mant_bits * _pow2(exponent - bias_out)
    value = torch.where(sign == 1, -value, value)
    return torch.where(flush, 0.0, value).to(x.dtype)


def trim_power_of_2(x: Tensor, exp_min: int, exp_max: int, rounding: int = NEAREST,
                    generator: torch.Generator | None = None) -> Tensor:
    """``Trim2IntegerPowerOf2_cpu``: ``sign(x) * 2^clamp(round(log2f(|x|)), exp_min, exp_max)``."""
    e = torch.log2(x.to(torch.float32).abs())
    if rounding == STOCHASTIC:
        e = torch.floor((e.double() + _uniform(e, generator)).to(torch.float32))  # floorf of the double sum
    else:
        e = _round_away(e)
    e = e.clamp(float(exp_min), float(exp_max))
    value = torch.where(x >= 0, 1.0, -1.0).double() * _pow2(torch.nan_to_num(e).to(torch.int64))
    return torch.where(torch.isnan(e), float("nan"), value).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward ``fn(x)``; backward the identity (the fork's backward ignores its quantizers)."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:  # noqa: D102
        return fn(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        return g, None


def straight_through(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``fn(x)``, with the identity as its backward where ``x`` takes a gradient."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _StraightThrough.apply(x, fn)
    return fn(x)


@dataclass(frozen=True)
class Quantization:
    """A layer's ``quantization_param``, read and checked once (the fields of its precision, as the
    fork's constructors read them)."""

    precision: int
    rounding: int
    bw_in: int
    bw_out: int
    bw_params: int
    fl_in: int
    fl_out: int
    fl_params: int
    mant_bits: int
    exp_bits: int
    exp_min: int
    exp_max: int

    @classmethod
    def read(cls, layer: Layer, precisions: Sequence[int] = tuple(PRECISIONS)) -> "Quantization":
        qp = layer.param.quantization_param
        if qp.precision not in precisions:
            raise layer.error(f"{layer.type_name} supports quantization_param.precision "
                              f"{' / '.join(PRECISIONS[p] for p in precisions)} only; received "
                              f"{PRECISIONS.get(qp.precision, qp.precision)}")
        q = cls(int(qp.precision), int(qp.rounding_scheme), int(qp.bw_layer_in), int(qp.bw_layer_out),
                int(qp.bw_params), int(qp.fl_layer_in), int(qp.fl_layer_out), int(qp.fl_params),
                int(qp.mant_bits), int(qp.exp_bits), int(qp.exp_min), int(qp.exp_max))
        q._check(layer)
        return q

    def _check(self, layer: Layer) -> None:
        def bad(msg: str) -> Exception:
            return layer.error(f"quantization_param.{msg}")

        grids = [] if self.precision == MINIFLOAT else [("layer_in", self.bw_in, self.fl_in),
                                                          ("layer_out", self.bw_out, self.fl_out)]
        if self.precision == DYNAMIC_FIXED_POINT:
            grids.append(("params", self.bw_params, self.fl_params))
        for part, bw, fl in grids:
            if bw < 1:
                raise bad(f"bw_{part} = {bw}: a fixed-point number needs at least 1 bit")
            if fl > 149 or bw - 1 - fl > 127:
                raise bad(f"bw_{part} = {bw}, fl_{part} = {fl}: the fixed-point grid (step 2^{-fl}, largest "
                          f"magnitude 2^{bw - 1 - fl}) leaves float32's range (2^-149 to 2^127)")
        if self.precision == MINIFLOAT:
            if not 1 <= self.exp_bits <= 30:
                raise bad(f"exp_bits = {self.exp_bits}: must be in [1, 30]")
            if self.mant_bits > 23:
                raise bad(f"mant_bits = {self.mant_bits}: at most 23 (a float32 mantissa's bits)")
        if self.precision == INTEGER_POWER_OF_2_WEIGHTS:
            if not -149 <= self.exp_min <= self.exp_max <= 127:
                raise bad(f"exp_min = {self.exp_min}, exp_max = {self.exp_max}: need -149 <= exp_min <= "
                          "exp_max <= 127")

    def params(self, t: Tensor, rounding: int, bias: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
        """``QuantizeWeights_cpu`` on one blob (the bias of power-of-two layers is not trimmed)."""
        if self.precision == MINIFLOAT:
            return trim_minifloat(t, self.mant_bits, self.exp_bits, rounding, generator)
        if self.precision == DYNAMIC_FIXED_POINT:
            return trim_fixed_point(t, self.bw_params, self.fl_params, rounding, generator)
        return t.clone() if bias else trim_power_of_2(t, self.exp_min, self.exp_max, rounding, generator)

    def activations(self, t: Tensor, out: bool, generator: torch.Generator | None = None) -> Tensor:
        """``QuantizeLayerInputs`` / ``QuantizeLayerOutputs`` (the ``.cu``: power-of-two layers too)."""
        if self.precision == MINIFLOAT:
            return trim_minifloat(t, self.mant_bits, self.exp_bits, self.rounding, generator)
        bw, fl = (self.bw_out, self.fl_out) if out else (self.bw_in, self.fl_in)
        return trim_fixed_point(t, bw, fl, self.rounding, generator)


def quantized_params(q: Quantization, phase: int, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The quantized copies of the blobs the forward uses (TRAIN: STOCHASTIC rounding); their
    gradients go to the blobs unchanged."""
    rounding = q.rounding if phase == TEST else STOCHASTIC
    w = straight_through(weight, lambda t: q.params(t, rounding))
    b = None if bias is None else straight_through(bias, lambda t: q.params(t, rounding, bias=True))
    return w, b


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
