"""A loop-by-loop NumPy port of caffe-jacinto's dynamic fixed-point forward (mathmanu/caffe-jacinto ``caffe-0.17`` @
2678b2b8556cc64ba66d801537bb066fc070889a: ``src/caffe/net.cpp`` ``ForwardFromTo``, ``StartQuantization``,
``FinishQuantization``, ``UpdateQuantizationRangeInLayers``, ``GetTop/BottomLayerIds``, ``GetBottomLayerQParams``,
``EnableQuantizationForSelectedLayers``, ``SetQuantizationParams*``, ``EstiamteQScaleParams``;
``src/caffe/quantized_layer.cpp`` ``Quantize_cpu``/``Trim2FixedPoint_cpu``), kept in the fork's own shape: ranges per
layer and bottom/top, blob ids, the records as protobuf-like dicts, the trim as a per-element loop in float32.

The float layer computations are neocaffe's layers (the port drives a second Net built without ``quantize``); only
the quantization is ported. The reference for tests/graph/test_jacinto_quant.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from neocaffe.graph.steps import call_layer

f32 = np.float32
CONV_TYPES = ("Convolution", "InnerProduct", "Deconvolution")
QUANT_TYPES = CONV_TYPES + ("BatchNorm", "Scale", "ReLU", "PReLU", "Eltwise", "Concat", "Bias", "Pooling")
# layers whose Forward_cpu calls Quantize_cpu
CALLS_QUANTIZE = QUANT_TYPES + ("Data", "ImageData", "AnnotatedData", "WindowData", "VideoData", "ImageLabelData")


def new_qparams() -> dict:
    return dict(quantize=False, bitwidth=8, fracbits=0, unsigned_data=False, unsigned_quant=False, scale_target=1.0,
                scale_applied=1.0, has_scale_applied=False, shiftbits=0, offset=0.0, min=0.0, max=0.0)


def c_round(v):
    v = float(v)
    if not math.isfinite(v):
        return f32(v)
    t = float(math.trunc(v))
    if abs(v - t) >= 0.5:
        t += math.copysign(1.0, v)
    return f32(t)


def c_min(a, b):
    return b if b < a else a


def c_max(a, b):
    return b if a < b else a


def trim2fixedpoint_cpu(data: np.ndarray, bitwidth, rounding, scale, offset, unsigned_quant, clip) -> None:
    """Trim2FixedPoint_cpu, element by element, in place on a flat float32 array (NEAREST only)."""
    assert rounding == 0
    scale, offset = f32(scale), f32(offset)
    with np.errstate(all="ignore"):
        inv_scale = f32(1.0) / scale
        qrange = bitwidth if unsigned_quant else bitwidth - 1
        max_data = f32(f32(2.0 ** qrange) - f32(1))
        min_data = f32(0) if unsigned_quant else -f32(2.0 ** qrange)
        for index in range(data.size):
            v = f32(data[index] * scale) + offset
            if clip:
                v = c_max(c_min(v, max_data), min_data)
            v = c_round(v)
            data[index] = f32(v - offset) * inv_scale


def estimate_abs_bits(val) -> int:
    return int(math.ceil(float(np.log2(f32(abs(val)))))) if val != 0 else 0


def estimate_q_scale_params(mn, mx, bitwidth, power2_scale, unsigned_data, apply_offset, q: dict) -> None:
    scale_applied = f32(q["scale_applied"])
    q.update(bitwidth=bitwidth, unsigned_data=unsigned_data, unsigned_quant=unsigned_data or apply_offset,
             min=float(mn), max=float(mx), fracbits=0)
    mn, mx = f32(mn), f32(mx)
    with np.errstate(all="ignore"):
        max_val_abs = f32(c_max(f32(abs(mx)), f32(abs(mn)))) * scale_applied
        max_val_range = f32(abs(f32(mx - mn))) * scale_applied
        if power2_scale:
            if apply_offset:
                estimated_bits = estimate_abs_bits(max_val_range)
            elif unsigned_data:
                estimated_bits = estimate_abs_bits(max_val_abs)
            else:
                estimated_bits = estimate_abs_bits(max_val_abs) + 1
            shiftbits = estimated_bits - bitwidth
            denom = f32(1 << shiftbits) if shiftbits >= 0 else f32(1.0 / (1 << abs(shiftbits)))
            scale_relative = f32(1.0 / float(denom))
            scale_target = f32(scale_relative * scale_applied)
            q.update(shiftbits=shiftbits, scale_target=float(scale_target),
                     offset=float(f32(0) - mn * scale_target) if apply_offset else 0.0)
        else:
            max_qrange = f32((1 << bitwidth) - 1)
            max_qrange_half = f32((1 << (bitwidth - 1)) - 1)
            if apply_offset:
                scale_relative = max_qrange / max_val_range
            else:
                scale_relative = max_qrange / max_val_abs if unsigned_data else max_qrange_half / max_val_abs
            scale_target = f32(f32(scale_relative) * scale_applied)
            q.update(shiftbits=0, offset=float(f32(0) - mn * scale_target) if apply_offset else 0.0,
                     scale_target=float(scale_target))


class ForkNet:
    """The fork's Net with ``quantize: true`` around neocaffe's layers of ``net`` (a Net built without it);
    ``qp``: a NetQuantizationParameter."""

    def __init__(self, net, qp) -> None:
        self.net, self.qp = net, qp
        self.steps, self.layers = net.steps, net.layers
        self.L = len(self.steps)
        ids: dict[str, int] = {}
        self.bottom_ids, self.top_ids = [], []
        for st in self.steps:
            self.bottom_ids.append([ids[b] for b in st.bottoms])
            tops = []
            for t in st.tops:
                if t not in ids:
                    ids[t] = len(ids)
                tops.append(ids[t])
            self.top_ids.append(tops)
        self.blob_names = {v: k for k, v in ids.items()}
        self.infer_count = 0
        self.qparam = [None] * self.L  # the layer's quantization_param (None: has_quantization_param() false)
        self.min_in = [[0.0] * len(st.bottoms) for st in self.steps]
        self.max_in = [[0.0] * len(st.bottoms) for st in self.steps]
        self.min_out = [[0.0] * len(st.tops) for st in self.steps]
        self.max_out = [[0.0] * len(st.tops) for st in self.steps]
        self.min_w = [[0.0] * len(l.blobs) for l in self.layers]
        self.max_w = [[0.0] * len(l.blobs) for l in self.layers]
        self.blobs: dict[str, torch.Tensor] = {}

    # graph helpers (only_one = true)
    def top_layer_ids(self, layer_id):
        out = []
        for tid in self.top_ids[layer_id]:
            for s in range(layer_id + 1, self.L):
                if tid in self.bottom_ids[s]:
                    out.append(s)
                    break
        return out

    def bottom_layer_ids(self, layer_id):
        out = []
        for bid in self.bottom_ids[layer_id]:
            found = -1
            for s in range(layer_id):
                if bid in self.top_ids[s]:
                    found = s
            if found >= 0:
                out.append(found)
                break
        return out

    def top_type(self, i):
        ids = self.top_layer_ids(i)
        return self.steps[ids[0]].type if ids else ""

    def bottom_type(self, i):
        ids = self.bottom_layer_ids(i)
        return self.steps[ids[0]].type if ids else ""

    def bottom_type2(self, i):
        ids = self.bottom_layer_ids(i)
        if len(ids) == 1:
            ids2 = self.bottom_layer_ids(ids[0])
            return self.steps[ids2[0]].type if ids2 else ""
        return ""

    def qpar(self, i):
        if self.qparam[i] is None:
            self.qparam[i] = dict(qin=[], qw=[], qout=[], quantized_infer_count=0)
        return self.qparam[i]

    # the fork's steps
    def enable(self):
        qp = self.qp
        for i, st in enumerate(self.steps):
            t = st.type
            ignored = st.name in list(qp.ignored_layer_names)
            nxt, prev, prev2 = self.top_type(i), self.bottom_type(i), self.bottom_type2(i)
            merged = False
            if t in CONV_TYPES:
                merged = nxt in ("BatchNorm", "Scale", "ReLU")
            elif t == "BatchNorm":
                if nxt in ("Scale", "ReLU"):
                    merged = True
                elif nxt == "Convolution":
                    merged = prev != "Convolution"
            elif t == "Scale":
                if nxt == "ReLU":
                    merged = True
                elif nxt == "Convolution":
                    merged = prev != "Convolution" and prev2 != "Convolution"
            max_blobs = 1 if "data" in t.lower() else 1 << 30
            quant_type = t in QUANT_TYPES or "data" in t.lower()
            if qp.quantize_weights and quant_type and not ignored and t in CONV_TYPES:
                q = self.qpar(i)
                for k in range(len(self.layers[i].blobs)):
                    if len(q["qw"]) <= k:
                        q["qw"].append(new_qparams())
                    q["qw"][k]["quantize"] = True
            if qp.quantize_activations and quant_type and not merged and not ignored:
                q = self.qpar(i)
                for k in range(len(st.tops)):
                    if len(q["qout"]) <= k:
                        q["qout"].append(new_qparams())
                    if k < max_blobs:
                        q["qout"][k]["quantize"] = True

    def bottom_qparams(self, layer_id):
        out = []
        for bid in self.bottom_ids[layer_id]:
            found, found_top = -1, -1
            for s in range(layer_id):
                for t, tid in enumerate(self.top_ids[s]):
                    if tid == bid:
                        found, found_top = s, t
            if found >= 0:
                out.append(self.qparam[found]["qout"][found_top])
        return out

    def set_params(self):
        qp = self.qp
        for i, st in enumerate(self.steps):
            q = self.qpar(i)
            q["quantized_infer_count"] = self.infer_count - qp.quantization_start
            # weights
            for k in range(len(self.layers[i].blobs)):
                if len(q["qw"]) <= k:
                    q["qw"].append(new_qparams())
                bw = qp.bitwidth_bias if (st.type == "BatchNorm" or k > 0) else qp.bitwidth_weights
                estimate_q_scale_params(self.min_w[i][k], self.max_w[i][k], bw, qp.power2_scale_weights,
                                        self.min_w[i][k] >= 0, qp.apply_offset_weights, q["qw"][k])
            # inputs
            bots = self.bottom_qparams(i)
            assert len(bots) == len(st.bottoms)
            for b in range(len(st.bottoms)):
                if len(q["qin"]) <= b:
                    q["qin"].append(new_qparams())
                qi = q["qin"][b]
                if bots[b]["has_scale_applied"]:
                    qi["scale_applied"], qi["has_scale_applied"] = bots[b]["scale_applied"], True
                estimate_q_scale_params(self.min_in[i][b], self.max_in[i][b], qp.bitwidth_activations,
                                        qp.power2_scale_activations, self.min_in[i][b] >= 0,
                                        qp.apply_offset_activations, qi)
                if qi["quantize"]:
                    qi["scale_applied"], qi["has_scale_applied"] = qi["scale_target"], True
            # outputs
            sa_in_max = f32(-1.0) if st.bottoms else f32(1.0)
            for b in range(len(st.bottoms)):
                sa_in_max = c_max(sa_in_max, f32(q["qin"][b]["scale_applied"]))
            st_w = f32(q["qw"][0]["scale_target"]) if st.type in CONV_TYPES else f32(1.0)
            for k in range(len(st.tops)):
                if len(q["qout"]) <= k:
                    q["qout"].append(new_qparams())
                qo = q["qout"][k]
                if st.type in CONV_TYPES:
                    qo["scale_applied"], qo["has_scale_applied"] = float(f32(sa_in_max * st_w)), True
                estimate_q_scale_params(self.min_out[i][k], self.max_out[i][k], qp.bitwidth_activations,
                                        qp.power2_scale_activations, self.min_out[i][k] >= 0,
                                        qp.apply_offset_activations, qo)
                if st.type in CONV_TYPES and k > 0:
                    qo["scale_target"] = float(f32(q["qout"][0]["scale_target"]) * f32(q["qw"][0]["scale_target"]))
                if qo["quantize"]:
                    qo["scale_applied"], qo["has_scale_applied"] = qo["scale_target"], True

    def update_ranges(self):
        qp = self.qp
        expansion = f32(qp.range_expansion_factor)
        beta = f32(1.0) if self.infer_count == 0 else f32(qp.range_update_factor)
        alpha = f32(1.0 - float(beta))
        for i, st in enumerate(self.steps):
            for b, name in enumerate(st.bottoms):
                v = self.value(name)
                lo, hi = f32(v.min()) * expansion, f32(v.max()) * expansion
                self.min_in[i][b] = float(f32(self.min_in[i][b]) * alpha + lo * beta)
                self.max_in[i][b] = float(f32(self.max_in[i][b]) * alpha + hi * beta)
            for k, name in enumerate(st.tops):
                v = self.value(name)
                lo, hi = f32(v.min()) * expansion, f32(v.max()) * expansion
                self.min_out[i][k] = float(f32(self.min_out[i][k]) * alpha + lo * beta)
                self.max_out[i][k] = float(f32(self.max_out[i][k]) * alpha + hi * beta)
            for k, w in enumerate(self.layers[i].blobs):
                a = w.detach().cpu().numpy()
                self.min_w[i][k], self.max_w[i][k] = float(a.min()), float(a.max())

    def value(self, name) -> np.ndarray:
        return self.blobs[name].detach().cpu().numpy().astype(np.float32)

    def quantize_cpu(self, i, tops):
        q = self.qparam[i]
        if q is None or self.steps[i].type not in CALLS_QUANTIZE:
            return tops
        rounding = self.qp.rounding_scheme
        for k, w in enumerate(self.layers[i].blobs):
            qw = q["qw"][k]
            if qw["quantize"] and q["quantized_infer_count"] == 0:
                a = w.detach().cpu().numpy().astype(np.float32).reshape(-1).copy()
                trim2fixedpoint_cpu(a, qw["bitwidth"], rounding, qw["scale_target"], qw["offset"], qw["unsigned_quant"],
                                    k == 0)
                with torch.no_grad():
                    w.copy_(torch.from_numpy(a.reshape(tuple(w.shape))))
        out = []
        for k, t in enumerate(tops):
            qo = q["qout"][k]
            if qo["quantize"]:
                a = t.detach().cpu().numpy().astype(np.float32).reshape(-1).copy()
                trim2fixedpoint_cpu(a, qo["bitwidth"], rounding, qo["scale_target"], qo["offset"], qo["unsigned_quant"],
                                    True)
                t = torch.from_numpy(a.reshape(tuple(t.shape))).to(t.device)
            out.append(t)
        return out

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """One ``Net::Forward``: every blob's value after it (NumPy)."""
        for k, v in inputs.items():
            self.net.set_blob(k, v)
        qp = self.qp
        if qp.quantization_start > 0 and self.infer_count >= qp.quantization_start:
            if self.infer_count == qp.quantization_start:
                self.enable()
            self.set_params()
        with torch.no_grad():
            for i, st in enumerate(self.steps):
                tops = call_layer(self.layers[i], st, [self.blobs[b] for b in st.bottoms])
                tops = self.quantize_cpu(i, tops)
                for name, t in zip(st.tops, tops):
                    self.blobs[name] = t
            self.layers_weights_changed()
        self.update_ranges()
        self.infer_count += 1
        return {n: self.value(n) for n in self.blobs}

    def layers_weights_changed(self):
        for layer in self.layers:
            layer.weights_changed()
