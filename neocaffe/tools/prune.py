"""prune: from structured sparsity to a smaller dense net (after SSL, the fork's ``scnn`` branch).

Reads a net (prototxt) and its trained weights and writes a smaller dense prototxt + weights that compute
the same outputs: the filters, input channels and kernel borders whose weights are zero go (a weight is
zero when ``|w| < --threshold``, the scnn branch's sparsity test with its ``ZEROUT_THRESHOLD`` 1e-4 as the
default; ``--threshold 0``: exact zeros only). What a removed channel feeds is pruned with it: the next
Convolution's input channels (per group), an InnerProduct's input columns (after a convolution: the
channel's H x W columns), BatchNorm statistics, Scale/Bias/PReLU parameters, Eltwise and Concat
(see ``neocaffe.tools.prune_plan`` for which channels go and why). A zero filter whose output is a non-zero
constant (its bias through ReLU/BatchNorm/Scale/...) is folded into its readers' biases.

Kernels shrink where a dense layer can: the first and last kernel rows (columns) of a convolution,
when zero in every filter and channel and the padding is at least the dilation, go with one dilation of
padding (the output is unchanged). Other zero filter-shape columns stay (a dense kernel cannot skip them)
and are counted in the report.

The outputs equal the original's up to float rounding when the removed weights are exactly zero, and
within the threshold's effect otherwise. BatchNorm is taken with its stored statistics (a deploy/TEST net).
Files: ``<prototxt>.pruned.prototxt`` and ``<caffemodel>.pruned.caffemodel.h5`` (``--format binary``:
``.pruned.caffemodel``). The result trains on as any net (fine-tune it with ``caffe train --weights``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from neocaffe.cli.log import glog_to_stderr
from neocaffe.io.caffemodel import LayerWeights
from neocaffe.io.prototxt import read_net, write_prototxt
from neocaffe.io.weights import load_weights, save_weights, weights_by_name
from neocaffe.progress import Progress
from neocaffe.proto import caffe_pb2
from neocaffe.tools.lowrank import modern_blobs
from neocaffe.tools.prune_plan import Graph, Plan, PruneError, is_zero, make_plan

__all__ = ["prune_net", "PruneResult", "PruneError", "main", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 1e-4
log = logging.getLogger("neocaffe.tools.prune")
SUFFIX_NET = ".pruned.prototxt"
SUFFIX_WEIGHTS = {"hdf5": ".pruned.caffemodel.h5", "binary": ".pruned.caffemodel"}
f32 = np.float32


@dataclass
class PruneResult:
    net: Any  # NetParameter
    weights: list[LayerWeights]
    info: list[str] = field(default_factory=list)
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (filters kept, filters before)


# -- the constant a dead channel carries through channel-wise layers ---------------------------------
def _pool_constant(lp: Any, x: float) -> float | None:
    p = lp.pooling_param
    if p.pool == caffe_pb2.PoolingParameter.MAX:
        return x  # Caffe's MAX pooling skips the padding
    if p.pool == caffe_pb2.PoolingParameter.AVE and not (p.pad or p.pad_h or p.pad_w):
        return x
    return None


def constant(work: dict[str, list[np.ndarray]], g: Graph, v: int, ch: int) -> float | None:
    """The value of channel ``ch`` of version ``v`` of a dead class, or None when it is not one constant."""
    i = g.versions[v].producer
    if i < 0:
        return None
    lp = g.layers[i]
    t, blobs = lp.type, work.get(lp.name, [])
    if t in ("Convolution", "InnerProduct"):
        return float(blobs[1].reshape(-1)[ch]) if len(blobs) > 1 else 0.0
    if t == "Concat":
        for b in g.bottoms[i]:
            c = g.versions[b].channels or 0
            if ch < c:
                return constant(work, g, b, ch)
            ch -= c
        return None
    ins = [constant(work, g, b, ch) for b in g.bottoms[i]]
    if any(x is None for x in ins):
        return None
    x = f32(ins[0])  # type: ignore[arg-type]
    if t == "Eltwise":
        p = lp.eltwise_param
        vals = [f32(a) for a in ins]  # type: ignore[arg-type]
        if p.operation == caffe_pb2.EltwiseParameter.PROD:
            return float(np.prod(vals, dtype=f32))
        if p.operation == caffe_pb2.EltwiseParameter.MAX:
            return float(max(vals))
        coeffs = list(p.coeff) or [1.0] * len(vals)
        return float(sum((f32(c) * a for c, a in zip(coeffs, vals)), f32(0)))
    if t == "ReLU":
        return float(x if x > 0 else x * f32(lp.relu_param.negative_slope))
    if t == "PReLU":
        slope = blobs[0].reshape(-1)
        return float(x if x > 0 else x * slope[0 if lp.prelu_param.channel_shared else ch])
    if t == "BatchNorm":
        scale = blobs[2].reshape(-1)[0]
        factor = f32(0) if scale == 0 else f32(1) / f32(scale)
        mean, var = blobs[0].reshape(-1)[ch] * factor, blobs[1].reshape(-1)[ch] * factor
        return float((x - mean) / np.sqrt(var + f32(lp.batch_norm_param.eps)))
    if t == "Scale":
        return float(x * blobs[0].reshape(-1)[ch] + (blobs[1].reshape(-1)[ch] if len(blobs) > 1 else 0))
    if t == "Bias":
        return float(x + blobs[0].reshape(-1)[ch])
    if t in ("Dropout", "Split", "Flatten"):
        return float(x)
    if t == "Pooling":
        return _pool_constant(lp, float(x))
    if t == "Power":
        p = lp.power_param
        return float((f32(p.shift) + f32(p.scale) * x) ** f32(p.power))
    simple = {"Sigmoid": lambda a: 1 / (1 + np.exp(-a)), "TanH": np.tanh, "AbsVal": abs,
              "ELU": lambda a: a if a > 0 else f32(lp.elu_param.alpha) * (np.exp(a) - 1)}
    return float(simple[t](x)) if t in simple else None


# -- applying the plan --------------------------------------------------------------------------------
def _kept(plan: Plan, v: int | None, count: int) -> list[int]:
    if v is None or plan.graph.versions[v].channels != count:
        return list(range(count))
    return [c for c in range(count) if not plan.gone(v, c)]


def _conv(plan: Plan, i: int, lp: Any, blobs: list[np.ndarray], out: Any, info: list[str]) -> list[np.ndarray]:
    g = plan.graph
    w = blobs[0]
    groups = int(lp.convolution_param.group)
    n, per_in = w.shape[0], w.shape[1]
    v_in = g.bottoms[i][0] if g.bottoms[i] else None
    keep_out = _kept(plan, g.tops[i][0], n)
    keep_in = _kept(plan, v_in, per_in * groups)
    per_out = n // groups
    pairs = []
    for gi in range(groups):
        r = [o for o in keep_out if o // per_out == gi]
        c = [k - gi * per_in for k in keep_in if k // per_in == gi]
        if r or c:  # else a whole group removed
            pairs.append((r, c))
    if any(len(c) != len(pairs[0][1]) or len(r) != len(pairs[0][0]) for r, c in pairs):
        raise PruneError(f"layer '{lp.name}': unequal groups after pruning")  # the plan prevents this
    rows = [o for r, _ in pairs for o in r]
    new_w = np.concatenate([w[r][:, c] for r, c in pairs], axis=0)
    cp = out.convolution_param
    cp.num_output, cp.group = len(rows), len(pairs)
    new_w = _shrink_kernel(lp.name, cp, new_w, plan, info)
    info.append(f"{lp.name}\t{len(rows)}/{n} filters, {len(keep_in)}/{per_in * groups} input channels, "
                f"kernel {'x'.join(map(str, new_w.shape[2:]))}, "
                f"{int(is_zero(new_w, plan.threshold).all(axis=0).sum())} zero filter-shape columns left")
    return [new_w] + [b.reshape(-1)[rows] for b in blobs[1:]]


def _shrink_kernel(name: str, cp: Any, w: np.ndarray, plan: Plan, info: list[str]) -> np.ndarray:
    """Drop the first and last kernel rows/columns while they are zero and the padding allows it."""
    if w.ndim != 4:
        return w
    thr = plan.threshold
    kernel = [int(cp.kernel_h or cp.kernel_size[0]), int(cp.kernel_w or cp.kernel_size[-1])]
    pad = [int(cp.pad_h or (cp.pad[0] if len(cp.pad) else 0)), int(cp.pad_w or (cp.pad[-1] if len(cp.pad) else 0))]
    dil = [int(cp.dilation[0]) if len(cp.dilation) else 1, int(cp.dilation[-1]) if len(cp.dilation) else 1]
    changed = False
    for axis in (0, 1):
        while w.shape[2 + axis] >= 3 and pad[axis] >= dil[axis]:
            edge = np.take(w, [0, w.shape[2 + axis] - 1], axis=2 + axis)
            if not is_zero(edge, thr).all():
                break
            w = np.take(w, range(1, w.shape[2 + axis] - 1), axis=2 + axis)
            kernel[axis] -= 2
            pad[axis] -= dil[axis]
            changed = True
    if changed:
        del cp.kernel_size[:]
        del cp.pad[:]
        cp.kernel_h, cp.kernel_w, cp.pad_h, cp.pad_w = kernel[0], kernel[1], pad[0], pad[1]
    return w


def _inner_product(plan: Plan, i: int, lp: Any, blobs: list[np.ndarray], out: Any,
                   info: list[str]) -> list[np.ndarray]:
    g = plan.graph
    w = blobs[0]
    v_in = g.bottoms[i][0] if g.bottoms[i] else None
    c_in = g.versions[v_in].channels if v_in is not None else None
    keep_out = _kept(plan, g.tops[i][0], w.shape[0])
    cols = list(range(w.shape[1]))
    if c_in and w.shape[1] % c_in == 0:
        hw = w.shape[1] // c_in
        cols = [c * hw + j for c in _kept(plan, v_in, c_in) for j in range(hw)]
    out.inner_product_param.num_output = len(keep_out)
    info.append(f"{lp.name}\t{len(keep_out)}/{w.shape[0]} outputs, {len(cols)}/{w.shape[1]} inputs")
    return [w[keep_out][:, cols]] + [b.reshape(-1)[keep_out] for b in blobs[1:]]


def _channelwise(plan: Plan, i: int, lp: Any, blobs: list[np.ndarray]) -> list[np.ndarray]:
    g = plan.graph
    v = g.tops[i][0] if g.tops[i] else None
    c = g.versions[v].channels if v is not None else None
    if not c:
        return blobs
    keep = _kept(plan, v, c)
    out = []
    for k, b in enumerate(blobs):
        flat = b.reshape(-1)
        per_channel = flat.size == c and not (lp.type == "BatchNorm" and k == 2)
        out.append(flat[keep] if per_channel else b)
    return out


def prune_net(net: Any, weights: Sequence[LayerWeights], threshold: float = DEFAULT_THRESHOLD) -> PruneResult:
    """Prune ``net`` (an upgraded NetParameter) with ``weights`` (from ``load_weights``)."""
    if threshold < 0:
        raise PruneError(f"threshold must be >= 0. Received: {threshold}")
    stored = weights_by_name(weights)
    arrays = {lp.name: [np.asarray(a, dtype=f32) for a in modern_blobs(lp.type, stored[lp.name])]
              for lp in net.layer if lp.name in stored and stored[lp.name].blobs}
    layers = list(net.layer)
    plan = make_plan(layers, arrays, {}, threshold, constant)
    out_net = caffe_pb2.NetParameter()
    out_net.CopyFrom(net)
    result = PruneResult(out_net, [])
    for i, lp in enumerate(layers):
        out = out_net.layer[i]
        blobs = plan.weights.get(lp.name)
        if blobs is None:
            continue
        before = int(blobs[0].shape[0])
        if lp.type == "Convolution" and plan.graph.reader_ok(i, 0):
            blobs = _conv(plan, i, lp, blobs, out, result.info)
            result.kept[lp.name] = (int(blobs[0].shape[0]), before)
        elif lp.type == "InnerProduct" and plan.graph.reader_ok(i, 0):
            blobs = _inner_product(plan, i, lp, blobs, out, result.info)
            result.kept[lp.name] = (int(blobs[0].shape[0]), before)
        elif lp.type in ("BatchNorm", "Scale", "Bias", "PReLU"):
            blobs = _channelwise(plan, i, lp, blobs)
        if lp.name in plan.added_bias:
            getattr(out, "convolution_param" if lp.type == "Convolution" else "inner_product_param").bias_term = True
        result.weights.append(LayerWeights(lp.name, lp.type, [np.ascontiguousarray(b, dtype=f32) for b in blobs]))
    return result


# -- command line ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prototxt", required=True, help="the trained net's structure (deploy or train_val)")
    ap.add_argument("--caffemodel", required=True, help="its weights (.caffemodel[.h5])")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                    help="a weight counts as zero when |w| < threshold (default 1e-4; 0: exact zeros)")
    ap.add_argument("--format", choices=tuple(SUFFIX_WEIGHTS), default="hdf5", help="weights file: hdf5 or binary")
    ap.add_argument("--output_prototxt", help="default: <prototxt>.pruned.prototxt")
    ap.add_argument("--output_caffemodel", help="default: <caffemodel>.pruned.caffemodel[.h5]")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with glog_to_stderr(), Progress(3, "prune", "steps", log) as bar:  # a bar on a terminal only
            bar.stage("reading")
            net, weights = read_net(args.prototxt), load_weights(args.caffemodel)
            bar.update()
            bar.stage("pruning")
            result = prune_net(net, weights, args.threshold)
            bar.update()
            bar.stage("writing")
            out_net = args.output_prototxt or args.prototxt + SUFFIX_NET
            out_weights = args.output_caffemodel or args.caffemodel + SUFFIX_WEIGHTS[args.format]
            write_prototxt(result.net, out_net)
            save_weights(out_weights, result.weights, hdf5=args.format == "hdf5")
            bar.update()
    except (PruneError, ValueError, OSError) as e:
        print(f"prune: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(result.info))
    print(f"Saved as {out_net}")
    print(f"Saved as {out_weights}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
