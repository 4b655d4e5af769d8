"""Ristretto's quantizers (pmgysel/caffe @ 614963cb, ``src/caffe/ristretto/layers/base_ristretto_layer.{cpp,cu}``):
dynamic fixed point, minifloat and power-of-two trimming of a tensor, the straight-through gradient the fork's
layers pass back, and a layer's ``quantization_param`` read once. Their semantics and deviations are in
``neocaffe.layers.ristretto``, whose layers use them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import TEST, Layer

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


__all__ = ["DYNAMIC_FIXED_POINT", "MINIFLOAT", "INTEGER_POWER_OF_2_WEIGHTS", "NEAREST", "STOCHASTIC", "PRECISIONS",
           "trim_fixed_point", "trim_minifloat", "trim_power_of_2", "straight_through", "Quantization",
           "quantized_params"]
