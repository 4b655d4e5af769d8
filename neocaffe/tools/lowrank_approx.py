"""lowrank_approx: split D x D convolutions into a vertical D x 1 and a horizontal 1 x D convolution (Tai et
al., "Convolutional neural networks with low-rank regularization", ICLR 2016), as the "Coordinating
Filters" fork's ``python/lowrank_approx.py`` does (it took the method from chengtaipu/lowrankcnn); its
``mixed_decomposer_tuner.py`` runs it before ``nn_decomposer``. Same arguments:

    lowrank_approx --model NET.prototxt --config ranks.json [--weights W.caffemodel.h5]
                   [--save_model OUT.prototxt] [--save_weights OUT.caffemodel.h5]

Each Convolution ``<name>`` listed in the JSON config ``{"<name>": K}`` (a square D x D kernel, N filters,
group g) becomes

* ``<name>_v``: K filters of D x 1 (pad and stride on the height only), group g, its bias zero and frozen
  (the second ParamSpec's ``lr_mult`` 0; ParamSpecs are added where the layer had fewer than two);
* ``<name>_h``: N filters of 1 x D (pad and stride on the width only) from ``<name>_v`` to the original
  top, group g, holding the original bias.

Weights (per group, K/g components each): the filters W (N x C x D x D) arranged as the (C*D) x (D*N)
matrix M[(c, y), (x, n)] = W[n, c, y, x] are approximated by the best rank-K/g product of their SVD,
M ~ U_K S_K V_K^T: the vertical filters are U_K sqrt(S_K), the horizontal ones sqrt(S_K) V_K^T. At
K/g = min(C*D, D*N) the pair computes the original convolution up to float rounding. Other layers keep
their weights. Outputs default to the input names with ``_lowrank`` before their last extension
(``net_lowrank.prototxt``, ``w.caffemodel_lowrank.h5``: the fork's names, which its other scripts use). Ours: ``--weights`` may also be a binary ``.caffemodel``;
errors name the layer (a non-square kernel, K not a multiple of the group, a missing layer or weight).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from neocaffe.io.prototxt import read_net, write_prototxt
from neocaffe.io.weights import LayerWeights, load_weights, save_weights
from neocaffe.proto import caffe_pb2
from neocaffe.tools.lowrank import LowRankError, conv_weight, modern_blobs

__all__ = ["vh_layers", "vh_weights", "approximate", "main"]


def _first(values: Sequence[int], default: int) -> int:
    return int(values[0]) if len(values) else default


def vh_layers(conv: Any, rank: int) -> tuple[Any, Any]:
    """The ``<name>_v`` and ``<name>_h`` LayerParameters replacing Convolution ``conv``."""
    p = conv.convolution_param
    if p.HasField("kernel_h") or p.HasField("kernel_w") or len(p.kernel_size) != 1:
        raise LowRankError(f"layer '{conv.name}': lowrank_approx needs one square kernel_size; received "
                           f"kernel_size {list(p.kernel_size)}, kernel_h {p.kernel_h}, kernel_w {p.kernel_w}")
    if rank < 1 or rank % max(p.group, 1):
        raise LowRankError(f"layer '{conv.name}': rank {rank} must be a positive multiple of the group ({p.group})")
    d, pad, stride = int(p.kernel_size[0]), _first(p.pad, 0), _first(p.stride, 1)

    def copy(name: str) -> Any:
        new = caffe_pb2.LayerParameter()
        new.CopyFrom(conv)
        new.name = name
        for f in ("kernel_size", "pad", "stride"):
            new.convolution_param.ClearField(f)
        return new

    v, h = copy(conv.name + "_v"), copy(conv.name + "_h")
    del v.top[:]
    v.top.append(v.name)
    while len(v.param) < 2:
        v.param.add()
    v.param[1].lr_mult = 0
    vp = v.convolution_param
    vp.num_output, vp.bias_term = rank, True
    vp.kernel_h, vp.kernel_w, vp.pad_h, vp.pad_w, vp.stride_h, vp.stride_w = d, 1, pad, 0, stride, 1
    del h.bottom[:]
    h.bottom.append(v.name)
    hp = h.convolution_param
    hp.kernel_h, hp.kernel_w, hp.pad_h, hp.pad_w, hp.stride_h, hp.stride_w = 1, d, 0, pad, 1, stride
    return v, h


def vh_weights(weight: np.ndarray, rank: int, group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(vertical K x C x D x 1, horizontal N x K/g x 1 x D) filters whose composition best approximates
    ``weight`` (N x C x D x D) at rank K/g per group (see the module docstring)."""
    n, c, d, d2 = weight.shape
    if d != d2:
        raise LowRankError(f"weights of shape {weight.shape}: lowrank_approx needs square kernels")
    per, n_g = rank // group, n // group
    if per > min(c * d, d * n_g):
        raise LowRankError(f"rank {rank} exceeds what a group's {c * d} x {d * n_g} matrix holds "
                           f"({min(c * d, d * n_g)} per group)")
    vs, hs = [], []
    for g in range(group):
        m = weight[g * n_g:(g + 1) * n_g].astype(np.float64).transpose(1, 2, 3, 0).reshape(c * d, d * n_g)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        root = np.sqrt(s[:per])
        vs.append((u[:, :per] * root).reshape(c, d, 1, per).transpose(3, 0, 1, 2))
        hs.append((vt[:per] * root[:, None]).reshape(per, 1, d, n_g).transpose(3, 0, 1, 2))
    return np.concatenate(vs).astype(np.float32), np.concatenate(hs).astype(np.float32)


def approximate(net: Any, weights: Sequence[LayerWeights] | None, config: dict[str, int]) -> tuple[Any, list[LayerWeights]]:
    """The new net and (when ``weights`` are given) its weights."""
    convs = {lp.name: lp for lp in net.layer if lp.type == "Convolution"}
    for name in config:
        if name not in convs:
            raise LowRankError(f"config names layer '{name}', which is not a Convolution of the net "
                               f"(its convolutions: {', '.join(convs) or 'none'})")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    stored = {lw.name: lw for lw in weights or ()}
    new_weights: list[LayerWeights] = []
    for lp in net.layer:
        lw = stored.get(lp.name)
        if lp.name not in config:
            out.layer.add().CopyFrom(lp)
            if lw is not None and lw.blobs:
                new_weights.append(LayerWeights(lp.name, lp.type, modern_blobs(lp.type, lw)))
            continue
        rank = int(config[lp.name])
        v, h = vh_layers(lp, rank)
        out.layer.add().CopyFrom(v)
        out.layer.add().CopyFrom(h)
        if weights is None:
            continue
        if lw is None or not lw.blobs:
            raise LowRankError(f"layer '{lp.name}' has no weights in the caffemodel")
        w, b = conv_weight(lp, lw.blobs)
        try:
            vw, hw = vh_weights(w, rank, max(lp.convolution_param.group, 1))
        except LowRankError as e:
            raise LowRankError(f"layer '{lp.name}': {e}") from None
        bias = b.astype(np.float32) if b is not None else np.zeros(w.shape[0], np.float32)
        new_weights.append(LayerWeights(v.name, v.type, [vw, np.zeros(rank, np.float32)]))
        h_blobs = [hw, bias] if lp.convolution_param.bias_term else [hw]
        new_weights.append(LayerWeights(h.name, h.type, h_blobs))
    return out, new_weights


def run(model: str, config: str, weights: str | None = None, save_model: str | None = None,
        save_weights_path: str | None = None) -> tuple[str, str | None]:
    """Write the approximated net (and weights); returns their paths."""
    try:
        with open(config) as f:
            conf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LowRankError(f"--config {config}: {e}") from None
    if not isinstance(conf, dict):
        raise LowRankError(f"--config {config}: expected a JSON object {{layer: rank}}; received {type(conf).__name__}")
    net = read_net(model)
    stored = load_weights(weights) if weights else None
    new_net, new_weights = approximate(net, stored, conf)
    prefix, ext = os.path.splitext(model)
    save_model = save_model or f"{prefix}_lowrank{ext}"
    write_prototxt(new_net, save_model)
    if weights is None:
        return save_model, None
    prefix, ext = os.path.splitext(weights)
    save_weights_path = save_weights_path or f"{prefix}_lowrank{ext}"
    save_weights(save_weights_path, new_weights)
    return save_model, save_weights_path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lowrank_approx", description="Low-rank approximation")
    ap.add_argument("--model", required=True, help="Prototxt of the original net")
    ap.add_argument("--config", required=True, help="JSON config file specifying the low-rank approximation")
    ap.add_argument("--weights", help="Caffemodel of the original net")
    ap.add_argument("--save_model", help="Path to the prototxt of the low-rank approximated net")
    ap.add_argument("--save_weights", help="Path to the caffemodel of the low-rank approximated net")
    a = ap.parse_args(argv)
    try:
        paths = run(a.model, a.config, a.weights, a.save_model, a.save_weights)
    except (LowRankError, ValueError, OSError) as e:
        print(f"lowrank_approx: error: {e}", file=sys.stderr)
        return 1
    for p in paths:
        if p is not None:
            print(f"Saved as {p}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
