"""lowrank: decompose convolutions into a few basis filters plus a 1x1 combination (the fork's nn_decomposer).

Each decomposed Convolution ``<name>`` with N filters becomes

* ``<name>_lowrank``: K filters of the original kernel, stride, pad and group, no bias, writing top
  ``<top>_lowrank``; its weights are the K basis filters;
* ``<name>_linear``: a 1x1 convolution (stride 1, pad 0, dilation 1) from ``<top>_lowrank`` to the
  original top with the original ``num_output``, group, ParamSpecs and bias; its weights hold each
  original filter's coefficients on the basis, and it takes over the original bias.

The basis comes from the filter matrix W (N rows, one flattened filter each), per group:

* ``pca`` (default): eigenvectors V of W W^T / (D - 1) (D = filter size; not mean-centred, as the fork's
  ``pittnuts.pca``), largest first. Basis = V_K^T W, coefficients = V_K. With ``--rankratio r`` K is the
  smallest k whose eigenvalues hold a fraction >= r of their sum.
* ``svd``: W^T = U S V^T. Basis = (U_K sqrt(S_K))^T, coefficients = V_K sqrt(S_K). With ``--rankratio r``
  K is the smallest k with sqrt(sum_{i<=k} s_i^2 / sum s_i^2) >= r -- the fork's ``rank_by_ratio_2``
  compares the *norm*, not the energy, so ``svd`` at r keeps the rank ``pca`` keeps at r^2.
* ``kmeans`` (``--ranks``/``--rank_config`` only; needs scikit-learn): K cluster centres, each filter
  replaced by its centre (one-hot coefficients).

At full rank (K = N) pca and svd reproduce every filter exactly, so the new net computes what the old one
did up to float rounding. Ranks: ``--ranks 10,20,...`` (one per decomposed layer, in net order),
``--rank_config ranks.json`` ({"layer": K}: only those layers), or ``--rankratio r`` (every conv layer;
grouped convolutions are refused, as in the fork). With a group g, a given K is rounded down to a
multiple of g and each group gets K/g basis filters of its own. ``--except_layers names.json`` (a list)
keeps layers as they are; ``--enable_fc`` decomposes InnerProduct layers the same way. An InnerProduct whose
weights come from a bottom (happynear's form) has no weights of its own to decompose: ``--ranks`` and
``--rankratio`` keep it as it is (and give it no rank), ``--rank_config`` naming it is an error.

Outputs, named as the fork names them (its scripts depend on these suffixes):
``<prototxt>.lowrank.prototxt`` and ``<caffemodel>.lowrank.caffemodel.h5`` (``--format binary`` writes
``<caffemodel>.lowrank.caffemodel``). Layers left as they were keep their weights from the input file.

Decompose, then fine-tune (the paper's recipe): the outputs train on as any net, e.g. ``caffe train
--solver=<a solver whose net is the .lowrank.prototxt> --weights=<the .lowrank.caffemodel.h5>`` or pycaffe's
``solver.net.copy_from(...)``; the fork's AlexNet ranks are ``models/bvlc_alexnet/config_iccv.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from neocaffe.io.caffemodel import LayerWeights
from neocaffe.io.prototxt import read_net, write_prototxt
from neocaffe.io.weights import load_weights, save_weights, weights_by_name
from neocaffe.proto import caffe_pb2

__all__ = ["rank_by_energy", "rank_by_norm", "basis_pca", "basis_svd", "basis_kmeans", "decompose_filters",
           "decompose_net", "LowRankResult", "LowRankError", "conv_weight", "modern_blobs", "weight_from_bottom",
           "main"]

LRA_TYPES = ("pca", "svd", "kmeans")
SUFFIX_NET = ".lowrank.prototxt"
SUFFIX_WEIGHTS = {"hdf5": ".lowrank.caffemodel.h5", "binary": ".lowrank.caffemodel"}


class LowRankError(ValueError):
    """The decomposition cannot be done as asked (names the layer and what was received)."""


# -- ranks ------------------------------------------------------------------------------------------
def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio <= 1.0:
        raise LowRankError(f"rankratio must be in (0, 1]. Received: {ratio}")


def rank_by_energy(eig_values: np.ndarray, ratio: float) -> int:
    """The smallest k whose k largest eigenvalues hold a fraction >= ``ratio`` of their sum (PCA)."""
    _check_ratio(ratio)
    vals = np.asarray(eig_values, dtype=np.float64)
    frac = np.cumsum(vals) / vals.sum()
    hit = np.nonzero(frac >= ratio)[0]
    return int(hit[0]) + 1 if hit.size else int(vals.size)


def rank_by_norm(singular_values: np.ndarray, ratio: float) -> int:
    """The smallest k with ``|s_1..k| / |s| >= ratio`` (the fork's SVD rule: a norm, not an energy)."""
    _check_ratio(ratio)
    s = np.asarray(singular_values, dtype=np.float64)
    frac = np.sqrt(np.cumsum(s * s)) / np.linalg.norm(s)
    hit = np.nonzero(frac >= ratio)[0]
    return int(hit[0]) + 1 if hit.size else int(s.size)


# -- bases: rows of ``mat`` (N x D) ~ coeffs (N x K) @ basis (K x D) ---------------------------------
def _resolve_rank(rank: int | None, ratio: float | None, spectrum: np.ndarray, rule: Any, most: int,
                  what: str = "the number of filters") -> int:
    if ratio is not None:
        return rule(spectrum, ratio)
    if rank is None or not 1 <= rank <= most:
        raise LowRankError(f"rank must be between 1 and {what} ({most}). Received: {rank}")
    return rank


def basis_pca(mat: np.ndarray, ratio: float | None = None, rank: int | None = None):
    """(basis K x D, coeffs N x K, K) from the eigenvectors of ``mat mat^T / (D - 1)``."""
    w = np.asarray(mat, dtype=np.float64)
    rows, dim = w.shape
    if dim < 2:
        raise LowRankError(f"PCA needs filters of two or more values. Received: filter size {dim}")
    vals, vecs = np.linalg.eigh(w @ w.T / (dim - 1))
    vals, vecs = vals[::-1], vecs[:, ::-1]
    k = _resolve_rank(rank, ratio, vals, rank_by_energy, rows)
    return vecs[:, :k].T @ w, vecs[:, :k], k


def basis_svd(mat: np.ndarray, ratio: float | None = None, rank: int | None = None):
    """(basis K x D, coeffs N x K, K) from ``mat^T = U S V^T``, sqrt(S) on each side."""
    w = np.asarray(mat, dtype=np.float64)
    rows, dim = w.shape
    u, s, vt = np.linalg.svd(w.T, full_matrices=False)
    k = _resolve_rank(rank, ratio, s, rank_by_norm, min(rows, dim),
                      "the number of filters and the filter size (svd)")
    root = np.sqrt(s[:k])
    return (u[:, :k] * root).T, (vt[:k].T * root), k


def basis_kmeans(mat: np.ndarray, ratio: float | None = None, rank: int | None = None):
    """(K cluster centres, one-hot coeffs, K): each filter replaced by its cluster's centre."""
    if ratio is not None:
        raise LowRankError("--lra_type kmeans needs --ranks or --rank_config, not --rankratio")
    try:
        from sklearn.cluster import KMeans
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise LowRankError("--lra_type kmeans needs scikit-learn (pip install scikit-learn)") from e
    w = np.asarray(mat, dtype=np.float64)
    k = _resolve_rank(rank, None, np.empty(0), None, w.shape[0])
    km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(w)
    return km.cluster_centers_, np.eye(k)[km.labels_], k


BASES = {"pca": basis_pca, "svd": basis_svd, "kmeans": basis_kmeans}


def decompose_filters(weight: np.ndarray, lra_type: str = "pca", *, ratio: float | None = None,
                      rank: int | None = None, group: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """Split ``weight`` (N, C, *kernel) into basis filters (K, C, *kernel) and 1x1 combinations
    (N, K/group, 1, ...), per group. Give ``ratio`` (group 1 only) or ``rank`` (rounded down to a
    multiple of ``group``)."""
    if lra_type not in BASES:
        raise LowRankError(f"--lra_type must be one of {', '.join(LRA_TYPES)}. Received: {lra_type!r}")
    rows = weight.shape[0]
    ones = (1,) * (weight.ndim - 2)
    if ratio is not None:
        if group != 1:
            raise LowRankError(f"--rankratio cannot decompose a grouped convolution (group {group}); "
                               f"give --ranks or --rank_config")
        basis, coeffs, k = BASES[lra_type](weight.reshape(rows, -1), ratio=ratio)
        return (basis.reshape((k,) + weight.shape[1:]).astype(np.float32),
                coeffs.reshape((rows, k) + ones).astype(np.float32), k)
    if rank is None:
        raise LowRankError("give a rank or a ratio")
    k = rank // group * group
    if k < group:
        raise LowRankError(f"rank {rank} is below the group count {group}")
    per, rows_g = k // group, rows // group
    bases, coeffs = [], []
    for g in range(group):
        block = weight[g * rows_g:(g + 1) * rows_g].reshape(rows_g, -1)
        b, c, _ = BASES[lra_type](block, rank=per)
        bases.append(b)
        coeffs.append(c)
    basis = np.concatenate(bases).reshape((k,) + weight.shape[1:])
    return basis.astype(np.float32), np.concatenate(coeffs).reshape((rows, per) + ones).astype(np.float32), k


# -- net surgery -------------------------------------------------------------------------------------
def _lowrank_layer(lp: Any, rank: int, kind: str) -> Any:
    new = caffe_pb2.LayerParameter()
    new.CopyFrom(lp)
    new.name = lp.name + "_lowrank"
    new.top[0] = lp.top[0] + "_lowrank"
    if len(new.param) == 2:
        del new.param[1]
    p = getattr(new, kind)
    p.num_output = rank
    p.ClearField("bias_filler")
    p.bias_term = False
    return new


def _linear_layer(lp: Any, kind: str) -> Any:
    new = caffe_pb2.LayerParameter()
    new.CopyFrom(lp)
    new.name = lp.name + "_linear"
    new.bottom[0] = lp.top[0] + "_lowrank"
    if kind == "convolution_param":
        p = new.convolution_param
        for f in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w"):
            p.ClearField(f)
        del p.kernel_size[:]
        p.kernel_size.append(1)
        if len(p.stride):
            del p.stride[:]
            p.stride.append(1)
        if len(p.pad):
            del p.pad[:]
            p.pad.append(0)
        if len(p.dilation):
            del p.dilation[:]
            p.dilation.append(1)
    return new


def _squeeze_legacy(arr: np.ndarray, ndim: int) -> np.ndarray:
    lead = arr.ndim - ndim
    if lead > 0 and all(d == 1 for d in arr.shape[:lead]):
        return arr.reshape(arr.shape[lead:])
    return arr


def conv_weight(lp: Any, blobs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """A Convolution/InnerProduct layer's (weight, bias) as arrays of their modern shapes."""
    w, b = np.asarray(blobs[0]), (np.asarray(blobs[1]).reshape(-1) if len(blobs) > 1 else None)
    if lp.type == "InnerProduct":
        p = lp.inner_product_param
        if p.transpose:
            raise LowRankError(f"layer '{lp.name}': InnerProduct with transpose: true is not supported")
        w = w.reshape(p.num_output, -1)
    elif w.ndim < 3:
        raise LowRankError(f"layer '{lp.name}': convolution weights of shape {w.shape}, expected (N, C, *kernel)")
    return w, b


def weight_from_bottom(lp: Any) -> bool:
    """An InnerProduct in happynear's form (caffe-windows ``ms``): bottom 1 is its weight (bottom 2 its
    bias), so the layer has no blobs of its own to decompose."""
    return lp.type == "InnerProduct" and len(lp.bottom) > 1


def modern_blobs(lp_type: str, lw: LayerWeights) -> list[np.ndarray]:
    """Blobs with legacy (num, channels, height, width) shapes turned into what the layer holds now,
    for HDF5 (which keeps no legacy marker): InnerProduct weights 2-D, biases and others squeezed."""
    out = []
    for i, (arr, legacy) in enumerate(zip(lw.blobs, lw.legacy_shapes)):
        if legacy is None or arr.ndim < 4:
            out.append(arr)
        elif lp_type in ("Convolution", "Deconvolution") and i == 0:
            out.append(arr)
        elif lp_type == "InnerProduct" and i == 0:
            out.append(_squeeze_legacy(arr, 2))
        else:
            out.append(_squeeze_legacy(arr, max(1, sum(1 for d in arr.shape if d != 1))))
    return out


@dataclass
class LowRankResult:
    net: Any  # NetParameter
    weights: list[LayerWeights]
    info: list[str] = field(default_factory=list)
    ranks: dict[str, int] = field(default_factory=dict)


def decompose_net(net: Any, weights: Sequence[LayerWeights], *, ranks: Sequence[int] | None = None,
                  rankratio: float | None = None, rank_config: dict[str, int] | None = None,
                  except_layers: Sequence[str] | None = None, lra_type: str = "pca",
                  enable_fc: bool = False, modern: bool = True) -> LowRankResult:
    """Decompose ``net`` (an upgraded NetParameter) with ``weights`` (from `load_weights`)."""
    if (ranks is not None) + (rankratio is not None) + (rank_config is not None) != 1:
        raise LowRankError("use exactly one of --rankratio, --ranks or --rank_config")
    if lra_type not in LRA_TYPES:
        raise LowRankError(f"--lra_type must be one of {', '.join(LRA_TYPES)}. Received: {lra_type!r}")
    stored = weights_by_name(weights)
    excluded = set(except_layers or ())
    out_net = caffe_pb2.NetParameter()
    out_net.CopyFrom(net)
    del out_net.layer[:]
    result = LowRankResult(out_net, [])
    used = 0
    for lp in net.layer:
        kind = {"Convolution": "convolution_param", "InnerProduct": "inner_product_param"}.get(lp.type)
        chosen = (kind is not None and (lp.type == "Convolution" or enable_fc)
                  and (rank_config is None or lp.name in rank_config) and lp.name not in excluded)
        if chosen and weight_from_bottom(lp):
            if rank_config is not None:
                raise LowRankError(f"layer '{lp.name}' (InnerProduct) takes its weights from bottom "
                                   f"'{lp.bottom[1]}', not from learned blobs: it cannot be decomposed; "
                                   "expected a layer with its own weights in --rank_config")
            chosen = False  # nothing of its own to decompose: kept as it is
        lw = stored.get(lp.name)
        if not chosen:
            out_net.layer.add().CopyFrom(lp)
            if lw is not None and lw.blobs:
                blobs = modern_blobs(lp.type, lw) if modern else list(lw.blobs)
                legacy = [None] * len(blobs) if modern else list(lw.legacy_shapes)
                result.weights.append(LayerWeights(lp.name, lp.type, blobs, legacy))
            continue
        if lw is None or not lw.blobs:
            raise LowRankError(f"layer '{lp.name}' ({lp.type}) has no weights in the caffemodel")
        w, b = conv_weight(lp, lw.blobs)
        group = lp.convolution_param.group if lp.type == "Convolution" else 1
        rank = None
        if ranks is not None:
            if used >= len(ranks):
                raise LowRankError(f"--ranks gives {len(ranks)} ranks but layer '{lp.name}' is decomposed "
                                   f"layer #{used + 1}")
            rank = int(ranks[used])
        elif rank_config is not None:
            rank = int(rank_config[lp.name])
        used += 1
        try:
            if lp.type == "Convolution":
                basis, coeffs, k = decompose_filters(w, lra_type, ratio=rankratio, rank=rank, group=group)
            else:
                basis, coeffs, k = BASES[lra_type](w, ratio=rankratio, rank=rank)
                basis, coeffs = basis.astype(np.float32), coeffs.astype(np.float32)
        except LowRankError as e:
            raise LowRankError(f"layer '{lp.name}' ({lp.type}, {w.shape[0]} outputs): {e}") from None
        low, lin = _lowrank_layer(lp, k, kind), _linear_layer(lp, kind)
        out_net.layer.add().CopyFrom(low)
        out_net.layer.add().CopyFrom(lin)
        result.weights.append(LayerWeights(low.name, low.type, [basis]))
        bias_term = getattr(lp, kind).bias_term
        lin_blobs = [coeffs] + ([b.astype(np.float32)] if bias_term and b is not None else [])
        result.weights.append(LayerWeights(lin.name, lin.type, lin_blobs))
        result.ranks[lp.name] = k
        unit = "filters" if lp.type == "Convolution" else "neurons"
        result.info.append(f"{lp.name}\t{k}/{w.shape[0]} {unit}")
    if ranks is not None and used < len(ranks):
        raise LowRankError(f"--ranks gives {len(ranks)} ranks for {used} decomposed layers")
    return result


# -- command line ------------------------------------------------------------------------------------
def _load_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LowRankError(f"{what} {path}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lowrank", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prototxt", required=True, help="the original network structure")
    ap.add_argument("--caffemodel", required=True, help="the trained weights to decompose (.caffemodel[.h5])")
    ap.add_argument("--rankratio", type=float, help="fraction of information kept (see --lra_type)")
    ap.add_argument("--ranks", type=str, help="comma-separated rank of each decomposed layer, in net order")
    ap.add_argument("--rank_config", type=str, help="JSON file {layer: rank}; only those layers")
    ap.add_argument("--except_layers", type=str, help="JSON file listing layers to keep as they are")
    ap.add_argument("--lra_type", default="pca", choices=LRA_TYPES, help="pca (default), svd or kmeans")
    ap.add_argument("--enable_fc", dest="enable_fc", action="store_true", help="decompose InnerProduct too")
    ap.add_argument("--no-enable_fc", dest="enable_fc", action="store_false")
    ap.add_argument("--format", choices=tuple(SUFFIX_WEIGHTS), default="hdf5",
                    help="weights file: hdf5 (<caffemodel>.lowrank.caffemodel.h5, the fork's) or binary")
    ap.add_argument("--output_prototxt", help="default: <prototxt>.lowrank.prototxt")
    ap.add_argument("--output_caffemodel", help="default: <caffemodel>.lowrank.caffemodel[.h5]")
    ap.set_defaults(enable_fc=False)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if (args.rankratio is not None) + (args.ranks is not None) + (args.rank_config is not None) != 1:
        ap.error("use exactly one of --rankratio, --ranks or --rank_config")
    try:
        ranks = None
        if args.ranks is not None:
            try:
                ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
            except ValueError:
                raise LowRankError(f"--ranks must be integers separated by commas. Received: {args.ranks!r}")
        rank_config = _load_json(args.rank_config, "--rank_config") if args.rank_config else None
        except_layers = _load_json(args.except_layers, "--except_layers") if args.except_layers else None
        net = read_net(args.prototxt)
        weights = load_weights(args.caffemodel)
        binary = args.format == "binary"
        result = decompose_net(net, weights, ranks=ranks, rankratio=args.rankratio, rank_config=rank_config,
                               except_layers=except_layers, lra_type=args.lra_type,
                               enable_fc=args.enable_fc, modern=not binary)
        out_net = args.output_prototxt or args.prototxt + SUFFIX_NET
        out_weights = args.output_caffemodel or args.caffemodel + SUFFIX_WEIGHTS[args.format]
        write_prototxt(result.net, out_net)
        save_weights(out_weights, result.weights, hdf5=not binary)
    except (LowRankError, ValueError, OSError) as e:
        print(f"lowrank: error: {e}", file=sys.stderr)
        return 1
    print("\n".join(result.info))
    print(f"Saved as {out_net}")
    print(f"Saved as {out_weights}")
    print("Done!")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
