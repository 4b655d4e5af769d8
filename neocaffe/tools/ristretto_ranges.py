"""What ``ristretto quantize`` computes before and between its runs of the net (pmgysel/caffe @ 614963cb,
``src/caffe/ristretto/quantization.cpp``, ``Net::RangeInLayers``/``findMax`` of ``src/caffe/net.cpp``): the
layers' value ranges, the integer lengths and exponent bits they give, the prototxt edits of each trimming
mode and the choice of a bit width. The search that uses them is ``neocaffe.tools.ristretto``."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from neocaffe.proto import caffe_pb2

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

log = logging.getLogger("neocaffe.tools.ristretto")
f32 = np.float32
QP = caffe_pb2.QuantizationParameter

BITWIDTHS = (16, 8, 4, 2, 1)      # `for (bitwidth = 16; bitwidth > 0; bitwidth /= 2)`
MIN_EXP_BITS = 4                   # the fork's starting exp_bits_
POW2_EXP = (-8, -1)                # integer-power-of-two weights: 2^e, e in [-8, -1]
POW2_ACTIVATION_BITS = 8
MEASURED = ("Convolution", "InnerProduct")  # RangeInLayers' types


class RistrettoError(ValueError):
    """The tool cannot run as asked; the message names what was received and what was expected."""


# -- the ranges (Net::RangeInLayers) ---------------------------------------------------------------------
def _max_abs(t: torch.Tensor) -> np.float32:
    """``findMax`` (as the ranges use it, from 0): the largest |x|, NaN skipped (std::max keeps its first argument)."""
    a = t.detach().float().abs()
    a = a[~torch.isnan(a)]
    return f32(float(a.max()) if a.numel() else 0.0)


@dataclass
class Ranges:
    """Per Convolution/InnerProduct layer of the TRAIN net (net order): the largest |value| of its first
    bottom, first top and weights over the batches seen, each from 0 (``[in, out, params]`` by name)."""

    table: dict[str, list[np.float32]] = field(default_factory=dict)

    def update(self, net: "Net") -> None:
        """Take in the blobs of ``net``'s last forward."""
        for lp, layer in zip(net.plan.layers, net.layers):
            if lp.param.type in MEASURED:
                m = self.table.setdefault(lp.param.name, [f32(0)] * 3)
                m[0] = max(m[0], _max_abs(net.blob_data[lp.bottoms[0]]))
                m[1] = max(m[1], _max_abs(net.blob_data[lp.tops[0]]))
                m[2] = max(m[2], _max_abs(layer.blobs[0])) if len(layer.blobs) else m[2]


def integer_length(max_abs: float, plus: float = 0.0) -> int | None:
    """``(int)ceil(log2(max_abs) + plus)`` (log2 in double); None where log2 is undefined (max <= 0)."""
    return math.ceil(math.log2(float(max_abs)) + plus) if max_abs > 0 else None


def minifloat_exp_bits(ranges: Ranges) -> int:
    """``Quantize2MiniFloat``'s exponent bits: at least 4, else ``ceil(log2(log2(max) - 1) + 1)`` for the
    largest input or output; one with ``log2(max) - 1 <= 0`` adds nothing (the fork's NaN/-inf cast to int
    gives INT_MIN on x86)."""
    bits = MIN_EXP_BITS
    for m_in, m_out, _ in ranges.table.values():
        for m in (m_in, m_out):
            inner = math.log2(float(m)) - 1 if m > 0 else -math.inf
            bits = max(bits, math.ceil(math.log2(inner) + 1)) if inner > 0 else bits
    return bits


class IntegerLengths:
    """``il_in_``/``il_out_``/``il_params_`` by layer name (logged as the fork's debug lines); ``get`` raises
    an error naming the layer where one is missing or undefined."""

    def __init__(self, ranges: Ranges, log_them: bool = True) -> None:
        self.table = {n: (integer_length(i), integer_length(o), integer_length(p, 1.0))
                      for n, (i, o, p) in ranges.table.items()}
        for n, il in self.table.items() if log_them else ():
            log.info("Layer %s, integer length input=%s, integer length output=%s, integer length parameters=%s",
                     n, *("undefined" if v is None else v for v in il))

    def get(self, layer: Any, part: int) -> int:
        if layer.name not in self.table:
            raise RistrettoError(
                f"layer '{layer.name}' ({layer.type}): the dynamic fixed point edit converts it (its type contains "
                f"'Convolution' or 'InnerProduct') but no ranges were measured for it: expected a layer of type "
                f"exactly Convolution or InnerProduct in the TRAIN net; measured: {', '.join(self.table) or 'none'}")
        il = self.table[layer.name][part]
        if il is None:
            raise RistrettoError(f"layer '{layer.name}' ({layer.type}): the largest |{('input', 'output', 'weight')[part]}|"
                                 " over the statistics batches is 0, so its integer length log2(0) is undefined: "
                                 "expected a non-zero range")
        return il


# -- the edits (EditNetDescription*) -------------------------------------------------------------------------
def edit_dynamic_fixed_point(param: Any, il: IntegerLengths, layers: str, part: str, bw_conv: int, bw_fc: int,
                             bw_in: int, bw_out: int) -> None:
    """``EditNetDescriptionDynamicFixedPoint``, in place: ``layers`` names the kinds ("Convolution",
    "InnerProduct", "Convolution_and_InnerProduct"), ``part`` the parts ("Parameters", "Activations",
    "Parameters_and_Activations"), each matched as a substring as the fork does, and so are the types."""
    for layer in param.layer:
        kinds = []
        if "Convolution" in layers and "Convolution" in layer.type:
            kinds.append(("ConvolutionRistretto", bw_conv))
        if "InnerProduct" in layers and ("InnerProduct" in layer.type or "FcRistretto" in layer.type):
            kinds.append(("FcRistretto", bw_fc))
        for new_type, bw_params in kinds:
            q = layer.quantization_param
            if "Parameters" in part:
                q.fl_params, q.bw_params = bw_params - il.get(layer, 2), bw_params
            if "Activations" in part:
                q.fl_layer_in, q.fl_layer_out = bw_in - il.get(layer, 0), bw_out - il.get(layer, 1)
                q.bw_layer_in, q.bw_layer_out = bw_in, bw_out
            layer.type = new_type


def _exact_types(param: Any, fill: Callable[[Any], None]) -> None:
    for layer in param.layer:
        if layer.type in ("Convolution", "ConvolutionRistretto"):
            layer.type = "ConvolutionRistretto"
        elif layer.type in ("InnerProduct", "FcRistretto"):
            layer.type = "FcRistretto"
        else:
            continue
        fill(layer.quantization_param)


def edit_minifloat(param: Any, bitwidth: int, exp_bits: int) -> None:
    """``EditNetDescriptionMiniFloat``: MINIFLOAT with ``mant_bits = bitwidth - exp_bits - 1``."""
    def fill(q: Any) -> None:
        q.precision, q.mant_bits, q.exp_bits = QP.MINIFLOAT, bitwidth - exp_bits - 1, exp_bits
    _exact_types(param, fill)


def edit_power_of_2_weights(param: Any) -> None:
    """``EditNetDescriptionIntegerPowerOf2Weights``: weights +/-2^e, e in [-8, -1]."""
    def fill(q: Any) -> None:
        q.precision, q.exp_min, q.exp_max = QP.INTEGER_POWER_OF_2_WEIGHTS, *POW2_EXP
    _exact_types(param, fill)


def fails(accuracy: float, baseline: float, error_margin: float) -> bool:
    """``accuracy + error_margin / 100 < baseline`` (in double, as the fork's float + double)."""
    return float(accuracy) + error_margin / 100 < float(baseline)


def choose_bitwidth(tried: Sequence[tuple[int, float]], baseline: float, error_margin: float) -> int:
    """The last width of ``tried`` (in order) before the first that fails; 32 when the first fails."""
    best = 32
    for bw, acc in tried:
        if fails(acc, baseline, error_margin):
            break
        best = bw
    return best


__all__ = ["RistrettoError", "Ranges", "IntegerLengths", "integer_length", "minifloat_exp_bits", "fails",
           "choose_bitwidth", "edit_dynamic_fixed_point", "edit_minifloat", "edit_power_of_2_weights", "BITWIDTHS",
           "MIN_EXP_BITS", "POW2_EXP", "POW2_ACTIVATION_BITS", "MEASURED"]
