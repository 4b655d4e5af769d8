"""Fold BatchNorm / Scale / Bias into the Convolution, Deconvolution or InnerProduct before them.

A chain ``conv -> BatchNorm -> Scale`` (in place or not) whose intermediate values nobody else reads
computes, per output channel c, ``a_c * conv(x)_c + b_c``; scaling the kernel of channel c by ``a_c``
and setting its bias to ``a_c * bias_c + b_c`` gives one layer with the same output (to float32
rounding: the folded numbers are computed in float64). Inference only: the folded net has no
BatchNorm statistics to update.

* ``fold_batchnorm(net_param, weights)``: on a NetParameter and its weights (layer name -> arrays);
  returns the folded NetParameter, its weights and the chains folded.
* ``fold_net(net)``: a new neocaffe ``Net`` (same phase and device) with the folded layers.

Layer types that are a per-channel affine map register a rule with ``@affine_rule("Type")``
(BatchNorm with global statistics, Scale and Bias with one bottom on axis 1, and the forks' BN with
stored statistics are built in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from neocaffe.graph.rules import filter_net, make_state
from neocaffe.layers._cudnn_bn import engine_eps
from neocaffe.layers.nvcaffe_bn import is_nvcaffe_bn
from neocaffe.proto import caffe_pb2

TEST = 1
#: the layers whose output channels take the fold, and their weight's output-channel layout
FOLD_INTO = ("Convolution", "Deconvolution", "InnerProduct")

Affine = tuple[np.ndarray, np.ndarray]  # per-channel multiplier and offset (float64)
AffineRule = Callable[[Any, Sequence[np.ndarray], int], "Affine | None"]
_RULES: dict[str, AffineRule] = {}


def affine_rule(type_name: str) -> Callable[[AffineRule], AffineRule]:
    """Register ``fn(layer_param, blobs, phase) -> (a, b) | None``: the layer as ``y = a_c x + b_c``
    over axis 1, or None when this configuration is not such a map."""

    def deco(fn: AffineRule) -> AffineRule:
        _RULES[type_name] = fn
        return fn

    return deco


@affine_rule("BatchNorm")
def _batch_norm(p: Any, blobs: Sequence[np.ndarray], phase: int) -> Affine | None:
    bp = p.batch_norm_param
    if is_nvcaffe_bn(bp):  # NVCaffe's scale_bias form: TEST only, statistics as stored, eps >= 1e-5
        if phase != TEST or len(blobs) < 5:
            return None
        mean, var, _, scale, bias = (np.asarray(b, np.float32).reshape(-1).astype(np.float64) for b in blobs[:5])
        inv = scale / np.sqrt(var + float(max(np.float32(bp.eps), np.float32(1e-5))))
        return inv, bias - mean * inv
    use_global = bp.use_global_stats if bp.HasField("use_global_stats") else phase == TEST
    if not use_global or len(blobs) < 3:
        return None
    b0, b1, b2 = (np.asarray(b, np.float32) for b in blobs[:3])
    factor = np.float32(0) if b2.reshape(-1)[0] == 0 else np.float32(1) / b2.reshape(-1)[0]
    mean, var = (b0 * factor).astype(np.float64), (b1 * factor).astype(np.float64)
    inv = 1.0 / np.sqrt(var + float(np.float32(bp.eps)))
    return inv, -mean * inv


@affine_rule("BN")
def _fork_bn(p: Any, blobs: Sequence[np.ndarray], phase: int) -> Affine | None:
    """PSPNet's BN with stored statistics (TEST or frozen; L-Softmax's, told by its 1 x C blobs, stores the
    inverse std), SegNet's in INFERENCE mode (layers/bn.py)."""
    from neocaffe.layers.bn import INFERENCE, bn_lineage

    try:
        lineage = bn_lineage(p, len(p.top))
    except ValueError:
        return None
    flat = [np.asarray(b, np.float64).reshape(-1) for b in blobs]
    if lineage == "pspnet" and len(flat) == 4 and (phase == TEST or p.bn_param.frozen):
        slope, bias, mean, var = flat
        if np.asarray(blobs[0]).ndim == 2:  # L-Softmax's 1 x C blobs: blob 3 is the inverse std itself
            inv = var
        else:
            eps = np.float32(engine_eps(p.bn_param.eps, p.bn_param.engine))  # the cuDNN engine clamps at 1e-5
            inv = np.asarray(np.float32(var.astype(np.float32) + eps), np.float64) ** -0.5
        return slope * inv, bias - mean * slope * inv
    if lineage == "segnet" and len(flat) == 2 and p.bn_param.bn_mode == INFERENCE:
        return flat[0], flat[1]
    return None


def _axis1_blob(msg: Any, blob: np.ndarray) -> bool:
    return int(msg.axis) == 1 and np.asarray(blob).ndim == 1


@affine_rule("Scale")
def _scale(p: Any, blobs: Sequence[np.ndarray], phase: int) -> Affine | None:
    if len(p.bottom) != 1 or not blobs or not _axis1_blob(p.scale_param, blobs[0]):
        return None
    if p.scale_param.HasField("min_value") or p.scale_param.HasField("max_value"):  # happynear's clamp
        return None
    a = np.asarray(blobs[0], np.float64)
    b = np.asarray(blobs[1], np.float64) if p.scale_param.bias_term else np.zeros_like(a)
    return a, b


@affine_rule("Bias")
def _bias(p: Any, blobs: Sequence[np.ndarray], phase: int) -> Affine | None:
    if len(p.bottom) != 1 or not blobs or not _axis1_blob(p.bias_param, blobs[0]):
        return None
    b = np.asarray(blobs[0], np.float64)
    return np.ones_like(b), b


@dataclass
class FoldedChain:
    """One fold: the layer that took it and the affine layers removed."""

    layer: str
    removed: list[str]


def _consumers(layers: Sequence[Any]) -> dict[tuple[int, int], list[int]]:
    """(layer, top index) -> the layers reading that value (Caffe's in-place rebinding of names)."""
    last: dict[str, tuple[int, int]] = {}
    readers: dict[tuple[int, int], list[int]] = {}
    for i, lp in enumerate(layers):
        for b in lp.bottom:
            if b in last:
                readers.setdefault(last[b], []).append(i)
        for j, t in enumerate(lp.top):
            last[t] = (i, j)
            readers.setdefault((i, j), [])
    return readers


def _chain(layers: Sequence[Any], weights: Mapping[str, Sequence[np.ndarray]], i: int, readers: Any,
           phase: int) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """The affine layers after layer ``i`` that fold into it, with the composed (a, b)."""
    lp = layers[i]
    if lp.type not in FOLD_INTO or len(lp.bottom) != 1 or len(lp.top) != 1 or any(s.name for s in lp.param):
        return None
    if lp.type == "InnerProduct" and lp.inner_product_param.normalize:  # happynear's: renormalized each forward
        return None
    if lp.name not in weights:
        return None
    chain: list[int] = []
    a = b = None
    at = (i, 0)
    while len(readers.get(at, [])) == 1:
        k = readers[at][0]
        nxt = layers[k]
        rule = _RULES.get(nxt.type)
        if rule is None or len(nxt.bottom) != 1 or len(nxt.top) != 1 or any(s.name for s in nxt.param):
            break
        ab = rule(nxt, list(weights.get(nxt.name, [])), phase)
        if ab is None:
            break
        a, b = ab if a is None else (ab[0] * a, ab[0] * b + ab[1])
        chain.append(k)
        at = (k, 0)
    return (chain, a, b) if chain else None


def _fold_weights(lp: Any, blobs: Sequence[np.ndarray], a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """The folded (weight, bias) of layer ``lp`` for the per-output-channel map ``a x + b``."""
    w = np.asarray(blobs[0], np.float64)
    if lp.type == "InnerProduct":
        bias_term, transposed = lp.inner_product_param.bias_term, lp.inner_product_param.transpose
        n_out = w.shape[1] if transposed else w.shape[0]
        w = w * a[None, :] if transposed else w * a[:, None]
    else:
        bias_term = lp.convolution_param.bias_term
        if lp.type == "Deconvolution":  # weight (C_in, M/group, k...): channel group*(M/group) + j
            group = max(int(lp.convolution_param.group), 1)
            per = w.shape[1]
            n_out = per * group
            g_of = np.arange(w.shape[0]) // (w.shape[0] // group)
            idx = g_of[:, None] * per + np.arange(per)[None, :]
            w = w * a[idx].reshape(idx.shape + (1,) * (w.ndim - 2))
        else:
            n_out = w.shape[0]
            w = w * a.reshape((-1,) + (1,) * (w.ndim - 1))
    if a.shape != (n_out,):
        raise ValueError(f"layer '{lp.name}': {n_out} output channels, but the folded layers hold {a.shape[0]}")
    bias = np.asarray(blobs[1], np.float64) if bias_term and len(blobs) > 1 else np.zeros(n_out)
    return [w.astype(np.float32), (a * bias + b).astype(np.float32)]


def fold_batchnorm(net_param: Any, weights: Mapping[str, Sequence[np.ndarray]], phase: int = TEST
                   ) -> tuple[Any, dict[str, list[np.ndarray]], list[FoldedChain]]:
    """Fold every foldable chain of ``net_param`` (filtered to ``phase``). ``weights``: layer name ->
    blobs (arrays in Caffe's shapes). Returns (folded NetParameter, its weights, the chains)."""
    net = filter_net(net_param, make_state(phase, base=net_param.state if net_param.HasField("state") else None))
    layers = list(net.layer)
    readers = _consumers(layers)
    out_w = {name: [np.asarray(b, np.float32) for b in blobs] for name, blobs in weights.items()}
    drop: set[int] = set()
    chains: list[FoldedChain] = []
    new_top: dict[int, str] = {}
    for i, lp in enumerate(layers):
        if i in drop:
            continue
        found = _chain(layers, weights, i, readers, phase)
        if found is None:
            continue
        chain, a, b = found
        out_w[lp.name] = _fold_weights(lp, weights[lp.name], a, b)
        for k in chain:
            out_w.pop(layers[k].name, None)
        drop.update(chain)
        new_top[i] = layers[chain[-1]].top[0]
        chains.append(FoldedChain(lp.name, [layers[k].name for k in chain]))
    folded = caffe_pb2.NetParameter()
    folded.CopyFrom(net)
    del folded.layer[:]
    for i, lp in enumerate(layers):
        if i in drop:
            continue
        layer = folded.layer.add()
        layer.CopyFrom(lp)
        if i in new_top:
            layer.top[0] = new_top[i]
            msg = layer.inner_product_param if lp.type == "InnerProduct" else layer.convolution_param
            msg.bias_term = True
    return folded, out_w, chains


def fold_net(net: Any) -> tuple[Any, list[FoldedChain]]:
    """A new ``Net`` (same phase, device and input shapes) computing ``net``'s outputs with the
    chains folded, and the chains folded."""
    import torch

    from neocaffe.graph.jacinto_quant import refuse
    from neocaffe.graph.net import Net

    refuse(net, "fold_bn (BatchNorm/Scale folded into the weights)")

    param = caffe_pb2.NetParameter(name=net.name)
    if net.net_param.HasField("lineage"):  # the semantics of the forks' shared type names (a HED Crop's offsets)
        param.lineage = net.net_param.lineage
    for lp in net.plan.layers:
        layer = param.layer.add()
        layer.CopyFrom(lp.param)
        del layer.include[:]
        del layer.exclude[:]
    for lp in param.layer:  # the Input blobs hold the net's current shapes
        if lp.type == "Input":
            del lp.input_param.shape[:]
            for t in lp.top:
                lp.input_param.shape.add().dim.extend(net.blob_shapes[t])
    weights = {name: [b.detach().cpu().numpy() for b in blobs] for name, blobs in net.params_by_layer().items()}
    phase = getattr(net, "phase", TEST)
    folded, fw, chains = fold_batchnorm(param, weights, phase)
    out = Net(folded, phase, source=f"{getattr(net, 'source', '<net>')} (folded)", device=net.device,
              keep_blob_diffs=False)
    with torch.no_grad():
        for name, blobs in out.params_by_layer().items():
            for blob, value in zip(blobs, fw[name]):
                blob.copy_(torch.from_numpy(np.asarray(value, np.float32).reshape(tuple(blob.shape))))
    out.folded_layers = frozenset(c.layer for c in chains)
    return out, chains
