"""The fixed-point arithmetic of caffe-jacinto's ``quantize: true`` (mathmanu/caffe-jacinto ``caffe-0.17`` @
2678b2b8556cc64ba66d801537bb066fc070889a): one blob's record (``QuantizationParameter.QParams``), its scale from a
range (``Net::EstiamteQScaleParams``, ``Net::EstimateAbsBits`` in ``src/caffe/net.cpp``) and the trim of a tensor
(``QuantizedLayer::Trim2FixedPoint_cpu`` in ``src/caffe/quantized_layer.cpp``), in float32 as the fork computes
them. :mod:`neocaffe.graph.jacinto_quant` owns the state and uses these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

f32 = np.float32
NEAREST, STOCHASTIC = 0, 1


@dataclass
class QParams:
    """One blob's quantization record (the fork's ``QuantizationParameter.QParams``); floats are float32 values."""

    quantize: bool = False
    bitwidth: int = 8
    fracbits: int = 0
    unsigned_data: bool = False
    unsigned_quant: bool = False
    scale_target: float = 1.0
    scale_applied: float = 1.0
    has_scale_applied: bool = False  # proto2's has_scale_applied(): set once a value was written
    shiftbits: int = 0
    offset: float = 0.0
    min: float = 0.0
    max: float = 0.0

    def apply_scale(self, value: Any) -> None:
        self.scale_applied, self.has_scale_applied = float(value), True


def _abs_bits(v: Any) -> int:
    """``ceil(log2(|v|))``, 0 for 0 (the fork's ``EstimateAbsBits``, in float32)."""
    if v == 0 or not np.isfinite(v):
        return 0
    return int(math.ceil(float(np.log2(f32(abs(v))))))


def estimate(q: QParams, lo: float, hi: float, bits: int, power2: bool, unsigned: bool, offset: bool) -> None:
    """Set ``q``'s scale and offset for the range ``lo``..``hi`` (the fork's ``EstiamteQScaleParams``)."""
    sa = f32(q.scale_applied)
    lo32, hi32 = f32(lo), f32(hi)
    q.bitwidth, q.unsigned_data, q.unsigned_quant = bits, unsigned, unsigned or offset
    q.min, q.max, q.fracbits = float(lo32), float(hi32), 0
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        absmax = f32(max(abs(hi32), abs(lo32))) * sa
        span = f32(abs(hi32 - lo32)) * sa
        if power2:
            est = _abs_bits(span) if offset else (_abs_bits(absmax) + (0 if unsigned else 1))
            q.shiftbits = est - bits
            target = f32(2.0 ** -q.shiftbits) * sa
        else:
            top = f32(2 ** bits - 1) if (offset or unsigned) else f32(2 ** (bits - 1) - 1)
            target = top / (span if offset else absmax)
            target = f32(target) * sa
            q.shiftbits = 0
        q.scale_target = float(target)
        q.offset = float(f32(0) - lo32 * target) if offset else 0.0


def _round_half_away(y: Tensor) -> Tensor:
    """C's ``round``: to nearest, ties away from zero (``torch.round`` ties to even)."""
    t = torch.trunc(y)
    return torch.where((y - t).abs() >= 0.5, t + torch.sign(y), t)


def trim(x: Tensor, q: QParams, rounding: int, clip: bool) -> Tensor:
    """``x`` in ``q``'s fixed point, back in float (the fork's ``Trim2FixedPoint_cpu``)."""
    span = q.bitwidth if q.unsigned_quant else q.bitwidth - 1
    hi, lo = 2.0 ** span - 1, (0.0 if q.unsigned_quant else -(2.0 ** span))
    with np.errstate(divide="ignore"):
        inv = float(f32(1) / f32(q.scale_target))
    y = x * q.scale_target
    if q.offset:
        y = y + q.offset
    if clip:
        y = y.clamp(lo, hi)
    y = _round_half_away(y) if rounding == NEAREST else torch.floor(y + torch.rand_like(y))
    if q.offset:
        y = y - q.offset
    return y * inv


__all__ = ["QParams", "estimate", "trim", "NEAREST", "STOCHASTIC"]
