"""lowrank_netsolver: train a decomposed net while lowering its ranks (the "Coordinating Filters" fork's
``python/lowrank_netsolver.py``, run by its ``train_script_dp_lowrank.sh``; same arguments).

    lowrank_netsolver --solver S.prototxt --weights W.caffemodel[.h5] [--ratio 0.99] [--lra_type pca|svd]
                      [--pruning_iter N] [--device -1|ID]

The solver's net is one ``lowrank`` (the fork's nn_decomposer) wrote: each decomposed layer is a
``<name>_lowrank`` Convolution or InnerProduct (the basis, no bias) followed by ``<name>_linear`` (the 1x1
combination, with the bias). Training runs in steps of ``test_interval`` iterations. After each step every
``_lowrank`` layer's weights are decomposed again (``--lra_type`` pca or svd, keeping ``--ratio`` of the
information, as ``lowrank --rankratio``); the ranks are recorded. When one rank falls below the layer's
current ``num_output`` (and pruning is still on: ``--pruning_iter`` -1, the default, or not yet passed),
the net is rebuilt with the lower ranks, its ``_linear`` weights multiplied by the new combinations so that
the net computes what it did up to the discarded part, and written as
``<snapshot_prefix>_<r1>_<r2>..._net.prototxt`` and ``<snapshot_prefix>_<r1>_..caffemodel.h5``; a solver for
the rest of the run, ``<snapshot_prefix>_<r1>_..._solver.prototxt``, gets the learning rate reached so far
as ``base_lr``, the remaining ``max_iter``, the ``stepvalue``s and ``force_iter`` shifted by the iterations
done; and training goes on from those files in a new solver (its iterations count from 0 again, as in the
fork). At ``max_iter`` the last solver's ``solve()`` finishes (its final snapshot and test), and the ranks
of every check are written to ``<snapshot_prefix>.ranks`` (one row per check, ``%d``) and plotted in
``<snapshot_prefix>_ranks.png``.

As the fork: ``lr_policy`` must be ``multistep``; the steps are whole ``test_interval``s (a ``max_iter``
that is not a multiple of it is passed by the last step); ``--device`` -1 trains on the CPU, an id on
that CUDA device (0 by default), which overrides the solver's ``solver_mode``. Ours: ``--weights`` may be
a binary ``.caffemodel`` too (the fork requires ``.h5``); without CUDA a device id trains on the CPU with
a warning; a net without ``_lowrank``/``_linear`` pairs, a ``test_interval`` of 0 or a ``kmeans`` type are
errors before training starts.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from neocaffe.cli.log import run_logged
from neocaffe.proto import caffe_pb2
from neocaffe.tools.lowrank import LowRankError, decompose_filters
from neocaffe.tools.netsolver import device_for

__all__ = ["RankCheck", "check_ranks", "continuation_solver", "train", "main"]

log = logging.getLogger("neocaffe.tools.lowrank_netsolver")

KINDS = {"Convolution": "convolution_param", "InnerProduct": "inner_product_param"}
LRA_TYPES = ("pca", "svd")


@dataclass
class RankCheck:
    """One check of the ranks: the (possibly rebuilt) net, its weights by layer name, the rank found for
    every ``_lowrank`` layer in net order, and whether the net was rebuilt."""

    net: Any
    params: dict[str, list[np.ndarray]]
    ranks: list[int] = field(default_factory=list)
    changed: bool = False

    @property
    def rank_info(self) -> str:
        """``_r1_r2...``, the fork's file-name part."""
        return "".join(f"_{r}" for r in self.ranks)


def _pairs(net: Any) -> list[tuple[int, Any, Any]]:
    """(index, lowrank layer, linear layer) for every ``_lowrank`` Convolution/InnerProduct, checked."""
    layers = list(net.layer)
    out = []
    for i, lp in enumerate(layers):
        if lp.type not in KINDS or not lp.name.endswith("_lowrank"):
            continue
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is None or nxt.type != lp.type or not nxt.name.endswith("_linear"):
            found = f"'{nxt.name}' ({nxt.type})" if nxt is not None else "no layer"
            raise LowRankError(f"layer '{lp.name}' must be followed by its {lp.type} '<name>_linear' layer "
                               f"(as lowrank writes them); found {found}")
        if lp.type == "Convolution":
            p = nxt.convolution_param
            kernel = [*p.kernel_size] or [p.kernel_h, p.kernel_w]
            if any(k != 1 for k in kernel) or p.group != 1:
                raise LowRankError(f"layer '{nxt.name}' must be a 1x1 convolution with group 1; received kernel "
                                   f"{list(kernel)}, group {p.group}")
        out.append((i, lp, nxt))
    return out


def check_ranks(net: Any, params: dict[str, list[np.ndarray]], ratio: float, lra_type: str = "pca",
                prune: bool = True) -> RankCheck:
    """Decompose every ``_lowrank`` layer's weights again; where the rank that keeps ``ratio`` is below the
    layer's outputs and ``prune`` is on, lower it (the basis replaces the weights, and the ``_linear``
    weights become their product with the new combinations). ``net`` and ``params`` are not changed."""
    out_net = caffe_pb2.NetParameter()
    out_net.CopyFrom(net)
    out = {name: list(blobs) for name, blobs in params.items()}
    check = RankCheck(out_net, out)
    for i, lp, lin in _pairs(net):
        for name in (lp.name, lin.name):
            if name not in params:
                raise LowRankError(f"layer '{name}' has no weights")
        weight = np.asarray(params[lp.name][0], np.float32)
        group = lp.convolution_param.group if lp.type == "Convolution" else 1
        try:
            basis, coeffs, rank = decompose_filters(weight, lra_type, ratio=ratio, group=group)
        except LowRankError as e:
            raise LowRankError(f"layer '{lp.name}': {e}") from None
        check.ranks.append(rank)
        if rank >= weight.shape[0] or not prune:
            continue
        check.changed = True
        getattr(out_net.layer[i], KINDS[lp.type]).num_output = rank
        linear = np.asarray(params[lin.name][0], np.float32)
        n_out = linear.shape[0]
        combined = linear.reshape(n_out, -1).astype(np.float64) @ coeffs.reshape(weight.shape[0], rank)
        shape = (n_out, rank) + linear.shape[2:]
        out[lp.name] = [basis.astype(np.float32)]
        out[lin.name] = [combined.astype(np.float32).reshape(shape), *params[lin.name][1:]]
    return check


def continuation_solver(param: Any, done: int, net_path: str) -> Any:
    """The fork's solver for the rest of a run after ``done`` iterations: ``net`` = ``net_path``,
    ``base_lr`` the multistep rate reached, ``max_iter``, ``stepvalue`` and ``force_iter`` shifted."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(param)
    out.net = net_path
    steps = list(param.stepvalue)
    out.base_lr = param.base_lr * param.gamma ** sum(done >= s for s in steps)
    out.max_iter = param.max_iter - done
    if param.force_iter not in (-1, 0):
        out.force_iter = max(param.force_iter - done, 0)
    del out.stepvalue[:]
    out.stepvalue.extend(s - done for s in steps if s - done > 0)
    return out


def _check_solver(param: Any, source: str) -> None:
    if param.lr_policy != "multistep":
        raise LowRankError(f"{source}: Only multistep lr_policy is supported in lowrank_netsolver; "
                           f"received lr_policy \"{param.lr_policy}\"")
    if param.test_interval <= 0:
        raise LowRankError(f"{source}: test_interval must be positive (the ranks are checked every "
                           f"test_interval iterations); received {param.test_interval}")


def _segment(solver_file: str, weights: str, ratio: float, lra_type: str, pruning_iter: float, device: str,
             rank_mat: list[list[int]]) -> tuple[str, str, float] | None:
    """Train from ``solver_file`` + ``weights`` until the ranks drop (returns the next solver, weights and
    pruning_iter) or the run ends (None)."""
    from neocaffe.io.prototxt import read_net, read_solver, to_text
    from neocaffe.io.weights import LayerWeights, save_weights
    from neocaffe.solver.solver import Solver

    param = read_solver(solver_file)
    _check_solver(param, solver_file)
    net = read_net(param.net)
    if not _pairs(net):
        raise LowRankError(f"{param.net}: no '<name>_lowrank' layer followed by '<name>_linear' to lower the "
                           "rank of (decompose the net with lowrank / nn_decomposer.py first)")
    solver = Solver(param, device=device, source=solver_file)
    try:
        solver.net.copy_from(weights)
        done = 0
        while done < param.max_iter:
            solver.step(param.test_interval)
            done += param.test_interval
            prune = pruning_iter == -1 or pruning_iter >= done
            params = {lw.name: lw.blobs for lw in solver.net.to_weights() if lw.blobs}
            check = check_ranks(net, params, ratio, lra_type, prune)
            rank_mat.append(check.ranks)
            log.info("Iteration %d, ranks%s", solver.iter, "".join(f" {r}" for r in check.ranks))
            if not check.changed:
                continue
            prefix = param.snapshot_prefix
            net_path = f"{prefix}{check.rank_info}_net.prototxt"
            with open(net_path, "w") as f:
                f.write(to_text(check.net))
            print(f"Saved as {net_path}")
            solver_path = f"{prefix}{check.rank_info}_solver.prototxt"
            with open(solver_path, "w") as f:
                f.write(to_text(continuation_solver(param, done, net_path)))
            print(f"Saved as {solver_path}")
            if done == param.max_iter:
                solver.solve()
            types = {lp.name: lp.type for lp in check.net.layer}
            weights_path = f"{prefix}{check.rank_info}.caffemodel.h5"
            save_weights(weights_path, [LayerWeights(lp.name, types[lp.name], check.params[lp.name])
                                        for lp in check.net.layer if lp.name in check.params], hdf5=True)
            print(f"Saved as {weights_path}")
            if pruning_iter not in (-1, 0):
                pruning_iter = max(pruning_iter - done, 0)
            return solver_path, weights_path, pruning_iter
        solver.solve()
        print("Optimization done!")
        _write_ranks(param.snapshot_prefix, rank_mat)
        return None
    finally:
        solver.close()


def _write_ranks(prefix: str, rank_mat: list[list[int]]) -> None:
    np.savetxt(f"{prefix}.ranks", np.asarray(rank_mat, dtype=np.int64).reshape(len(rank_mat), -1), fmt="%d")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(np.asarray(rank_mat))
    fig.savefig(f"{prefix}_ranks.png")
    plt.close(fig)


def train(solver_file: str, weights: str, ratio: float = 0.99, lra_type: str = "pca", pruning_iter: float = -1,
          device: int = 0) -> list[list[int]]:
    """The whole run (see the module docstring); returns the ranks of every check."""
    if lra_type not in LRA_TYPES:
        raise LowRankError(f"--lra_type must be pca or svd; received {lra_type!r}")
    if not 0.0 < ratio <= 1.0:
        raise LowRankError(f"--ratio must be in (0, 1]; received {ratio}")
    where = device_for(device)
    rank_mat: list[list[int]] = []
    step: tuple[str, str, float] | None = (solver_file, weights, pruning_iter)
    while step is not None:
        step = _segment(*step[:2], ratio, lra_type, step[2], where, rank_mat)
    return rank_mat


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lowrank_netsolver", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solver", required=True, help="Solver prototxt (multistep) of a decomposed net")
    ap.add_argument("--lra_type", default="pca", help="The type of low rank approximation (pca or svd)")
    ap.add_argument("--weights", required=True, help="Weights of the decomposed net (.caffemodel.h5 or .caffemodel)")
    ap.add_argument("--ratio", type=float, default=0.99, help="The ratio of information kept (default 0.99)")
    ap.add_argument("--pruning_iter", type=float, default=-1, help="Lower ranks up to this iteration (-1: always)")
    ap.add_argument("--device", type=int, default=0, help="The GPU device id, -1 for CPU")
    a = ap.parse_args(argv)
    return run_logged(lambda: train(a.solver, a.weights, a.ratio, a.lra_type, a.pruning_iter, a.device),
                      (LowRankError, OSError, ValueError, RuntimeError), log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
