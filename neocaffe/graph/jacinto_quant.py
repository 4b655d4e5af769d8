"""TI caffe-jacinto's dynamic fixed-point inference: ``NetParameter.quantize`` and ``net_quantization_param``.

Semantics from mathmanu/caffe-jacinto, branch ``caffe-0.17`` @ 2678b2b8556cc64ba66d801537bb066fc070889a:
``src/caffe/net.cpp`` (``ForwardFromTo``, ``StartQuantization``/``FinishQuantization``,
``UpdateQuantizationRangeInLayers``, ``GetBottomLayerQParams``, ``GetTopLayerType``/``GetBottomLayerType`` (and
their ``2`` forms), ``EnableQuantizationForSelectedLayers``, ``SetQuantizationParams*``, ``EstiamteQScaleParams``,
``DisplayQuantizationParams``), ``src/caffe/quantized_layer.cpp`` (``Quantize_cpu``, ``Trim2FixedPoint_cpu``) and the
layers that call it at the end of their forward.

What the net does, per forward (``infer_count`` counts them, partial forwards included):

* before the layers, from forward ``quantization_start`` on: at exactly that forward the layers are selected
  (weights of Convolution/InnerProduct/Deconvolution; the outputs of Convolution, InnerProduct, Deconvolution,
  BatchNorm, Scale, ReLU, PReLU, Eltwise, Concat, Bias, Pooling and of every type whose name holds "data", its
  first top only, unless the layer is "merged": a Convolution/InnerProduct/Deconvolution whose first consumer is
  a BatchNorm, Scale or ReLU, a BatchNorm followed by a Scale or ReLU (or by a Convolution when not preceded by
  one), a Scale followed by a ReLU (or by a Convolution when neither of the two layers before it is one);
  ``ignored_layer_names`` are never selected). Then each layer's scales are set from the ranges of the forwards
  before: ``scale = (2^(bits-1) - 1) / max|x|`` (signed) or ``(2^bits - 1) / max|x|`` (unsigned: the range's min
  >= 0) or ``(2^bits - 1) / (max - min)`` with ``offset = -min * scale`` (``apply_offset_*``), or with
  ``power2_scale_*`` a power of two from ``ceil(log2)`` of the range, times the ``scale_applied`` the fork carries
  from layer to layer (a convolution's output carries its input's times its weights'). Weights take
  ``bitwidth_weights`` (clipped), biases ``bitwidth_bias`` (not clipped), activations ``bitwidth_activations``
  (clipped);
* each selected layer, after its forward: at the first quantized forward only, its weights are quantized in place
  (they stay quantized; that forward itself ran on the float weights); its selected tops are quantized:
  ``x -> (round(clip(x * scale + offset)) - offset) / scale`` in float32;
* after the layers: the running ranges ``r = (1 - f) r + f * 1.25 * (min, max)`` of every blob's final value
  (an in-place chain's last, quantized one; ``f`` = ``range_update_factor``, 1 at the first forward; 1.25 =
  ``range_expansion_factor``), the weights' ranges as they are.

A quantized net's forwards run here, layer by layer with the layers' lean kernels (``InferenceExecutor.build``;
no in-place kernels, no one-pass BatchNorm chains, no autograd), whatever the net's executor.

Deviations and choices, all following the fork's CPU build (neocaffe runs the same code on every device):

* rounding NEAREST is C's ``round`` (ties away from zero) and the clip comes before it, as
  ``Trim2FixedPoint_cpu``; the fork's CUDA kernel (``quantized_layer.cu``) uses ``rint`` (ties to even) with a
  fused multiply-add, and its prefetching data layers (Data, ImageData, AnnotatedData, WindowData, VideoData) do
  not quantize on the GPU (``base_data_layer.cu`` never calls ``Quantize_gpu``); neocaffe quantizes their first
  top on every device, as the CPU build does;
* rounding STOCHASTIC is ``floor(x + u)`` with ``u`` from torch's generator (the fork: C's ``rand()``);
* ``ceil(log2(v))`` (power-of-two scales) is taken in float32 (``log2f``);
* the fork's per-layer ``quantization_param`` (its layer-level ``QuantizationParameter``) is not in neocaffe's
  schema (proto/NUMBERING.md, row ``jacinto``): no layer's inputs are quantized (only that message can ask) and
  ``CopyQuantizationRangeInLayers`` (ranges read back from a weight file's layers) has nothing to copy;
* the fork's quirks kept: a blob whose range is empty (a weight blob of equal values, e.g. an untrained zero bias)
  gets the scale ``1/0 = inf`` and becomes NaN; the weights are quantized in place, so a test net sharing them
  with a training net (``Net.share_with``, as the solver's test nets do) quantizes the training weights too, as
  NVCaffe's shared blobs do; values above a running range are clipped;
* TRAIN nets with ``quantize: true`` are refused: the fork quantizes training forwards too (stochastic rounding,
  weights quantized in place once), which neocaffe does not port; so are backward passes of a quantized net,
  the frozen, compiled and fold_bn modes, and export (see :func:`refuse`).

The state (the counter, the ranges, every layer's scales) has one owner: :class:`JacintoQuant`, which also runs
the quantized forwards; the Net holds one (``net.quant``) only when the net quantizes, so plain nets pay nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import Tensor

from neocaffe.graph._jacinto_fixed import QParams, estimate, trim
from neocaffe.graph.errors import NetError
from neocaffe.graph.grad_mode import no_grad
from neocaffe.graph.steps import settle_top, settles
from neocaffe.layers.base import TRAIN

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

log = logging.getLogger("neocaffe.graph")
f32 = np.float32

#: types whose weights are quantized (and whose output scale carries the weights' scale)
WEIGHTED = frozenset({"Convolution", "InnerProduct", "Deconvolution"})
#: types ``EnableQuantizationForSelectedLayers`` selects (besides any type whose name holds "data")
SELECTED = WEIGHTED | {"BatchNorm", "Scale", "ReLU", "PReLU", "Eltwise", "Concat", "Bias", "Pooling"}
#: data types whose forward calls ``Quantize_cpu`` (BasePrefetchingDataLayer's subclasses, ImageLabelData); the
#: other "data" types (Input is not one; DummyData, HDF5Data, MemoryData) are selected but quantize nothing
TRIMMING_DATA = frozenset({"Data", "ImageData", "AnnotatedData", "WindowData", "VideoData", "ImageLabelData"})
FLOAT, DYNAMIC_FIXED_POINT = 0, 1


@dataclass
class LayerQ:
    """A layer's records: per bottom, per parameter blob, per top."""

    qin: list[QParams] = field(default_factory=list)
    qw: list[QParams] = field(default_factory=list)
    qout: list[QParams] = field(default_factory=list)


def settings(net_param: Any) -> Any:
    """``net_quantization_param`` as the net sets it (its defaults where it does not)."""
    return net_param.net_quantization_param


def active(net_param: Any) -> bool:
    """Whether ``net_param`` changes any number: ``quantize: true`` with ``quantization_start > 0``,
    ``update_quantization_param`` and a precision other than FLOAT (the fork does nothing otherwise)."""
    s = settings(net_param)
    return bool(net_param.quantize) and s.quantization_start > 0 and s.update_quantization_param \
        and s.precision != FLOAT


def refusal(net: Any, what: str) -> str | None:
    """Why ``what`` (a mode, an export) is refused for ``net``: it quantizes and ``what`` would compute in float
    (None when ``net`` does not quantize)."""
    if getattr(net, "quant", None) is None:
        return None
    return (f"{getattr(net, 'source', '<net>')}: net '{net.name}' sets quantize: true (NetParameter.quantize, "
            f"caffe-jacinto's dynamic fixed point): received a request for {what}, which would not quantize; "
            "expected the net without quantize: true")


def refuse(net: Any, what: str) -> None:
    """Raise :class:`NetError` with :func:`refusal`'s reason when there is one."""
    why = refusal(net, what)
    if why is not None:
        raise NetError(why)


def attach(net: "Net", net_param: Any) -> "JacintoQuant | None":
    """The quantizer of ``net`` when ``net_param`` asks for one (see :func:`active`), else None."""
    if not net_param.quantize:
        return None
    if not active(net_param):
        log.info("%s: net '%s' sets quantize: true with quantization_start <= 0, update_quantization_param: false "
                 "or precision FLOAT: caffe-jacinto then computes in float, and so does neocaffe", net.source, net.name)
        return None
    if net.phase == TRAIN:
        raise NetError(f"{net.source}: net '{net.name}' sets quantize: true (NetParameter.quantize) in the TRAIN "
                       "phase: caffe-jacinto quantizes training forwards too (stochastic rounding, weights "
                       "quantized once in place), which neocaffe does not port; expected quantize: true only in "
                       "TEST nets (its released test_quantize/test.prototxt and deploy.prototxt)")
    if settings(net_param).precision not in (FLOAT, DYNAMIC_FIXED_POINT):
        raise NetError(f"{net.source}: net '{net.name}': net_quantization_param.precision = "
                       f"{settings(net_param).precision}; expected FLOAT or DYNAMIC_FIXED_POINT")
    return JacintoQuant(net, settings(net_param))


class JacintoQuant:
    """The quantization state of one net and its quantized forwards (see the module docstring).

    ``infer_count``: forwards run (the fork's ``infer_count_``). ``layer_q``: per layer its :class:`LayerQ`.
    ``rmin``/``rmax``: the running range of each blob of ``blob_names``; ``weight_ranges``: per layer, per
    parameter blob, its (min, max) after the last forward.
    """

    def __init__(self, net: "Net", qparam: Any) -> None:
        self.net = net
        self.p = qparam
        self.infer_count = 0
        steps = net.steps
        self.types = [st.type for st in steps]
        self.names = [st.name for st in steps]
        self.layer_q = [LayerQ() for _ in steps]
        self.started = False  # SetQuantizationParams ran: every layer has its records
        self.blob_names = list(dict.fromkeys(n for st in steps for n in (*st.bottoms, *st.tops)))
        self.blob_index = {n: k for k, n in enumerate(self.blob_names)}
        self.rmin = np.zeros(len(self.blob_names), np.float32)
        self.rmax = np.zeros(len(self.blob_names), np.float32)
        self.weight_ranges: list[list[tuple[float, float]]] = [[(0.0, 0.0)] * len(l.blobs) for l in net.layers]
        # per layer, per bottom: (producing layer, its top index), the last writer before it (GetBottomLayerQParams)
        self.producers: list[list[tuple[int, int]]] = []
        last: dict[str, tuple[int, int]] = {}
        for i, st in enumerate(steps):
            prod = []
            for b in st.bottoms:
                if b not in last:
                    raise NetError(f"{net.source}: layer '{st.name}': bottom '{b}' has no producing layer; "
                                   "quantize: true needs every blob written by a layer (an Input layer for inputs)")
                prod.append(last[b])
            self.producers.append(prod)
            for t, name in enumerate(st.tops):
                last[name] = (i, t)
        self.trims = [t in SELECTED or t in TRIMMING_DATA for t in self.types]
        self.kernels: dict[int, tuple[Any, Callable[..., Any]]] = {}

    # -- the layer graph (GetTopLayerType / GetBottomLayerType of the fork, only_one = true) ----------
    def _next(self, i: int) -> int | None:
        steps = self.net.steps
        for name in steps[i].tops:
            for j in range(i + 1, len(steps)):
                if name in steps[j].bottoms:
                    return j
        return None

    def _prev(self, i: int) -> int | None:
        for name in self.net.steps[i].bottoms:
            j = max((j for j in range(i) if name in self.net.steps[j].tops), default=None)
            if j is not None:
                return j
        return None

    def _type(self, i: int | None) -> str:
        return self.types[i] if i is not None else ""

    def merged(self, i: int) -> bool:
        """Whether the fork treats layer ``i`` as merged into the next (its output is not quantized)."""
        p = self._prev(i)
        t, nxt, prev = self.types[i], self._type(self._next(i)), self._type(p)
        prev2 = self._type(self._prev(p)) if p is not None else ""
        if t in WEIGHTED:
            return nxt in ("BatchNorm", "Scale", "ReLU")
        if t == "BatchNorm":
            return nxt in ("Scale", "ReLU") or (nxt == "Convolution" and prev != "Convolution")
        if t == "Scale":
            return nxt == "ReLU" or (nxt == "Convolution" and prev != "Convolution" and prev2 != "Convolution")
        return False

    # -- the fork's per-forward steps ----------------------------------------------------------------
    def enable(self) -> None:
        """Select the layers whose weights and outputs are quantized (``EnableQuantizationForSelectedLayers``)."""
        ignored = set(self.p.ignored_layer_names)
        chosen = []
        for i, (t, name) in enumerate(zip(self.types, self.names)):
            lq, st = self.layer_q[i], self.net.steps[i]
            is_data = "data" in t.lower()
            if (t not in SELECTED and not is_data) or name in ignored:
                continue
            if self.p.quantize_weights and t in WEIGHTED:
                _grow(lq.qw, len(self.net.layers[i].blobs))
                for q in lq.qw:
                    q.quantize = True
            if self.p.quantize_activations and not self.merged(i):
                _grow(lq.qout, len(st.tops))
                for k, q in enumerate(lq.qout):
                    q.quantize = q.quantize or k < (1 if is_data else len(st.tops))
                chosen.append(name)
        log.info("net '%s': quantizing (caffe-jacinto) from forward %d: outputs of %d layers (%s)", self.net.name,
                 self.infer_count, len(chosen), ", ".join(chosen[:6]) + (" ..." if len(chosen) > 6 else ""))

    def set_params(self) -> None:
        """Every layer's weight, input and output scales from the ranges (``SetQuantizationParams``)."""
        p = self.p
        for i, st in enumerate(self.net.steps):
            lq, t = self.layer_q[i], self.types[i]
            blobs = self.net.layers[i].blobs
            _grow(lq.qw, len(blobs))
            for k in range(len(blobs)):
                lo, hi = self.weight_ranges[i][k]
                bits = p.bitwidth_bias if (t == "BatchNorm" or k > 0) else p.bitwidth_weights
                estimate(lq.qw[k], lo, hi, bits, p.power2_scale_weights, lo >= 0, p.apply_offset_weights)
            _grow(lq.qin, len(st.bottoms))
            for b, name in enumerate(st.bottoms):
                q = lq.qin[b]
                j, k = self.producers[i][b]
                src = self.layer_q[j].qout[k]
                if src.has_scale_applied:
                    q.apply_scale(src.scale_applied)
                lo, hi = self._range(name)
                estimate(q, lo, hi, p.bitwidth_activations, p.power2_scale_activations, lo >= 0,
                         p.apply_offset_activations)
                if q.quantize:
                    q.apply_scale(q.scale_target)
            self._set_outputs(i)
        self.started = True

    def _set_outputs(self, i: int) -> None:
        p, st, lq, t = self.p, self.net.steps[i], self.layer_q[i], self.types[i]
        sa_in = f32(-1.0 if st.bottoms else 1.0)
        for q in lq.qin:
            sa_in = max(sa_in, f32(q.scale_applied))
        sw = f32(lq.qw[0].scale_target) if t in WEIGHTED else f32(1.0)
        _grow(lq.qout, len(st.tops))
        for k, name in enumerate(st.tops):
            q = lq.qout[k]
            lo, hi = self._range(name)
            if t in WEIGHTED:
                q.apply_scale(sa_in * sw)
            estimate(q, lo, hi, p.bitwidth_activations, p.power2_scale_activations, lo >= 0, p.apply_offset_activations)
            if t in WEIGHTED and k > 0:  # the fork's "bias" case: a second top's scale is top 0's times the weights'
                q.scale_target = float(f32(lq.qout[0].scale_target) * f32(lq.qw[0].scale_target))
            if q.quantize:
                q.apply_scale(q.scale_target)

    def _range(self, name: str) -> tuple[float, float]:
        k = self.blob_index[name]
        return float(self.rmin[k]), float(self.rmax[k])

    def update_ranges(self) -> None:
        """The running ranges of every blob and the weights' ranges (``UpdateQuantizationRangeInLayers``)."""
        net = self.net
        values = [net.state.value(n) for n in self.blob_names]
        weights = [w for l in net.layers for w in l.blobs]
        stats = torch.stack([s for v in (*values, *weights) for s in _minmax(v)]).cpu().numpy().astype(np.float32)
        n = len(values)
        beta = f32(1.0) if self.infer_count == 0 else f32(self.p.range_update_factor)
        alpha = f32(1.0 - float(beta))
        grow = f32(self.p.range_expansion_factor)
        self.rmin = self.rmin * alpha + (stats[0:2 * n:2] * grow) * beta
        self.rmax = self.rmax * alpha + (stats[1:2 * n:2] * grow) * beta
        k = 2 * n
        for i, l in enumerate(net.layers):
            self.weight_ranges[i] = []
            for _ in l.blobs:
                self.weight_ranges[i].append((float(stats[k]), float(stats[k + 1])))
                k += 2

    # -- the quantized forward ---------------------------------------------------------------------
    def forward(self, lo: int, hi: int) -> Tensor | None:
        """Layers ``lo``..``hi`` as the fork's ``ForwardFromTo`` runs them with ``quantize: true``."""
        p = self.p
        if self.infer_count >= p.quantization_start:
            if self.infer_count == p.quantization_start:
                self.enable()
            self.set_params()
        first = self.started and self.infer_count == p.quantization_start  # quantized_infer_count == 0
        with no_grad():
            loss = self._run(lo, hi, first)
            self.update_ranges()
        if first:
            self.net.weights_changed()
            self.kernels.clear()
        if p.display_quantization > 0 and self.infer_count >= p.quantization_start \
                and self.infer_count % p.display_quantization == 0:
            for line in self.describe():
                log.info("%s", line)
        self.infer_count += 1
        return loss

    def _run(self, lo: int, hi: int, first: bool) -> Tensor | None:
        net = self.net
        vals = net.state.values
        nhwc = net.memory_format is torch.channels_last
        settle = settles(net.device, nhwc, False)
        rounding = self.p.rounding_scheme
        loss: Tensor | None = None
        for i in range(lo, hi + 1):
            st = net.steps[i]
            bottoms = [vals[b] for b in st.bottoms]
            out = self._kernel(i, bottoms)(*bottoms)
            tops = [out] if len(st.tops) == 1 and isinstance(out, Tensor) else list(out)
            if settle and (st.host or st.input):
                tops = [settle_top(t, st, net.device, nhwc, False) for t in tops]
            if self.started and self.trims[i]:
                lq = self.layer_q[i]
                if first:
                    for k, (q, w) in enumerate(zip(lq.qw, net.layers[i].blobs)):
                        if q.quantize:
                            w.data.copy_(trim(w.data, q, rounding, k == 0))
                for k, q in enumerate(lq.qout[:len(tops)]):
                    if q.quantize and tops[k].is_floating_point():
                        tops[k] = trim(tops[k], q, rounding, True)
            for name, t, w in zip(st.tops, tops, st.loss_weights):
                vals[name] = t
                if w:
                    term = t.sum() * w
                    loss = term if loss is None else loss + term
        return loss

    def _kernel(self, i: int, bottoms: list[Tensor]) -> Callable[..., Any]:
        sig = tuple((t.shape, t.dtype, t.device) for t in bottoms)
        k = self.kernels.get(i)
        if k is None or k[0] != sig:
            k = self.kernels[i] = (sig, self.net.lean.build(i, bottoms, False) if bottoms else self.net.lean.ops[i].fn)
        return k[1]

    def describe(self) -> list[str]:
        """The quantized records, one line each (``DisplayQuantizationParams``)."""
        out = [f"Quantizing the net: {self.net.name} Test"]
        for i, lq in enumerate(self.layer_q):
            for label, qs in (("weights", lq.qw[:1]), ("bias", lq.qw[1:2]), ("output", lq.qout[:1])):
                for q in qs:
                    if q.quantize:
                        out.append(f" Q {label}:{i} Name:{self.names[i]} bitwidth:{q.bitwidth} fracbits:{q.fracbits} "
                                   f"scale:{q.scale_target:.7g} offset:{q.offset:.7g} unsigned_data:"
                                   f"{int(q.unsigned_data)} min:{q.min:.7g} max:{q.max:.7g} "
                                   f"scale_applied:{q.scale_applied:.7g} scale_target:{q.scale_target:.7g}")
        return out

    def qparams(self, layer: str) -> LayerQ:
        """Layer ``layer``'s records."""
        return self.layer_q[self.names.index(layer)]


def _grow(qs: list[QParams], n: int) -> None:
    while len(qs) < n:
        qs.append(QParams())


def _minmax(t: Tensor) -> tuple[Tensor, Tensor]:
    if t.numel() == 0:
        z = torch.zeros((), dtype=torch.float32, device=t.device)
        return z, z
    lo, hi = torch.aminmax(t.detach())
    return lo.float(), hi.float()


__all__ = ["JacintoQuant", "QParams", "LayerQ", "attach", "active", "refuse", "refusal", "estimate", "trim", "SELECTED",
           "WEIGHTED", "TRIMMING_DATA"]
