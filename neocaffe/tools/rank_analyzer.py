"""rank_analyzer: how low-rank a trained net's layers are, and how sparse its Sparsify outputs run.

For every layer of a ``.caffemodel[.h5]`` whose first blob has two or more axes (Convolution,
InnerProduct, ...), the filters are the rows of that blob flattened (N rows). The rank printed is the
one ``lowrank --rankratio r`` would keep: with ``--lra_type pca`` (default) the smallest k whose largest
eigenvalues of W W^T hold a fraction >= r of their sum; with ``svd`` the fork's norm rule
(``|s_1..k| / |s| >= r``). Force regularization is meant to push these ranks down.

With ``--prototxt`` the net is also run forward for ``--batches`` batches (its data layers read their
sources as Caffe would) and, for each ``Sparsify`` layer, the share of exact zeros in its top blob (as
the next layer sees it) is printed, averaged over the batches; ``--blobs`` adds any other blobs.

    rank_analyzer --caffemodel net.caffemodel --ratio 0.95 0.99
    rank_analyzer --caffemodel net.caffemodel --prototxt train_val.prototxt --batches 5 --phase TEST
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from neocaffe.io.weights import load_weights
from neocaffe.tools.lowrank import LowRankError, modern_blobs, rank_by_energy, rank_by_norm

__all__ = ["LayerRank", "layer_ranks", "sparsify_sparsity", "main"]


@dataclass
class LayerRank:
    name: str
    type: str
    filters: int
    size: int  # values per filter
    ranks: dict[float, int]  # ratio -> rank

    size_axes: int = 0  # axes of the weight blob

    @property
    def unit(self) -> str:
        """"neurons" for InnerProduct (or an untyped 2-axis blob, as HDF5 files are), else "filters"."""
        return "neurons" if self.type == "InnerProduct" or (not self.type and self.size_axes == 2) else "filters"


def spectrum(weight: np.ndarray, lra_type: str = "pca") -> np.ndarray:
    """Eigenvalues of W W^T (pca) or singular values of W (svd), largest first, rows = filters."""
    w = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    s = np.linalg.svd(w, compute_uv=False)
    return s * s if lra_type == "pca" else s


def layer_ranks(weights: Sequence[Any], ratios: Sequence[float], lra_type: str = "pca",
                types: dict[str, str] | None = None, layers: Sequence[str] | None = None) -> list[LayerRank]:
    """A `LayerRank` for each layer with a weight blob of two or more axes (``types`` by name, e.g.
    from the prototxt, when the file does not say; ``layers`` to keep only those)."""
    if lra_type not in ("pca", "svd"):
        raise LowRankError(f"--lra_type must be pca or svd. Received: {lra_type!r}")
    rule = rank_by_energy if lra_type == "pca" else rank_by_norm
    out = []
    for lw in weights:
        if layers is not None and lw.name not in layers:
            continue
        kind = (types or {}).get(lw.name) or lw.type
        if not lw.blobs:
            continue
        w = modern_blobs(kind, lw)[0]
        if w.ndim < 2 or w.shape[0] < 1 or w.size == 0:
            continue
        spec = spectrum(w, lra_type)
        ranks = {r: (rule(spec, r) if spec.sum() > 0 else 0) for r in ratios}
        out.append(LayerRank(lw.name, kind, int(w.shape[0]), int(w.size // w.shape[0]), ranks, w.ndim))
    return out


def sparsify_sparsity(net: Any, batches: int, extra_blobs: Sequence[str] = ()) -> dict[str, float]:
    """Fraction of exact zeros in each Sparsify layer's top (and in ``extra_blobs``) over ``batches``
    forward passes of ``net`` (a `neocaffe.graph.net.Net` with its weights loaded)."""
    import torch

    names: list[str] = []
    for lp in net.plan.layers:
        if lp.param.type == "Sparsify":
            names.extend(t for t in lp.tops if t not in names)
    for b in extra_blobs:
        if b not in net.blob_names:
            raise LowRankError(f"--blobs: no blob '{b}' in the net; blobs: {', '.join(net.blob_names)}")
        if b not in names:
            names.append(b)
    zeros = {n: 0.0 for n in names}
    counts = {n: 0 for n in names}
    with torch.no_grad():
        for _ in range(batches):
            net.forward()
            for n in names:
                t = net.blob_data[n]
                zeros[n] += float((t == 0).sum().item())
                counts[n] += t.numel()
    return {n: zeros[n] / counts[n] if counts[n] else float("nan") for n in names}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rank_analyzer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--caffemodel", required=True, help="trained weights (.caffemodel or .caffemodel.h5)")
    ap.add_argument("--ratio", type=float, nargs="+", default=[0.95], help="energy ratio(s), default 0.95")
    ap.add_argument("--lra_type", choices=("pca", "svd"), default="pca", help="rank rule (as lowrank's)")
    ap.add_argument("--layers", help="comma-separated layer names to analyze (default: all)")
    ap.add_argument("--prototxt", help="net to run for the sparsity of its Sparsify outputs")
    ap.add_argument("--batches", type=int, default=5, help="forward passes for the sparsity (default 5)")
    ap.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST")
    ap.add_argument("--blobs", help="comma-separated extra blobs whose sparsity to report")
    ap.add_argument("--gpu", type=int, help="run the net on this CUDA device")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for r in args.ratio:
            if not 0.0 < r <= 1.0:
                raise LowRankError(f"--ratio must be in (0, 1]. Received: {r}")
        weights = load_weights(args.caffemodel)
        types: dict[str, str] = {}
        net_param = None
        if args.prototxt:
            from neocaffe.io.prototxt import read_net

            net_param = read_net(args.prototxt)
            types = {lp.name: lp.type for lp in net_param.layer}
        layers = [s.strip() for s in args.layers.split(",")] if args.layers else None
        rows = layer_ranks(weights, args.ratio, args.lra_type, types, layers)
        print(f"# rank at {', '.join(str(r) for r in args.ratio)} ({args.lra_type}) of {args.caffemodel}")
        for row in rows:
            cols = "\t".join(f"{row.ranks[r]}/{row.filters} {row.unit}" for r in args.ratio)
            print(f"{row.name}\t{cols}")
        if net_param is not None:
            from neocaffe.graph.net import Net
            from neocaffe.layers.base import TEST, TRAIN

            device = f"cuda:{args.gpu}" if args.gpu is not None else None
            net = Net(net_param, phase=TRAIN if args.phase == "TRAIN" else TEST, source=args.prototxt,
                      device=device, keep_blob_diffs=False)
            net.copy_from(weights, source=args.caffemodel)
            extra = [s.strip() for s in args.blobs.split(",")] if args.blobs else []
            found = sparsify_sparsity(net, args.batches, extra)
            if not found:
                print("# no Sparsify layers in the net")
            else:
                print(f"# zeros over {args.batches} batches ({args.phase})")
                for name, frac in found.items():
                    print(f"{name}\t{100.0 * frac:.2f}% zeros")
    except (LowRankError, ValueError, OSError) as e:
        print(f"rank_analyzer: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
