"""mixed_decomposer_tuner: two decompositions in a row, then fine-tuning (the "Coordinating Filters" fork's
``python/mixed_decomposer_tuner.py``, run by its ``train_script_ft_mixed.sh``; same arguments).

    mixed_decomposer_tuner --solver S.prototxt --model NET.prototxt --weights W.caffemodel.h5 \\
        --rank_config1 iclr.json --rank_config2 cvpr.json --path RUN_DIR [--device -1|ID]

As the fork: ``lowrank_approx`` splits the convolutions of ``--rank_config1`` into vertical and horizontal
ones (``RUN_DIR/lowrank_net.prototxt``, ``RUN_DIR/lowrank_weights.caffemodel.h5``); ``lowrank`` (the fork's
nn_decomposer) then decomposes the layers of ``--rank_config2`` of that net into basis filters and 1x1
combinations (``...lowrank_net.prototxt.lowrank.prototxt``, ``...lowrank_weights.caffemodel.h5.lowrank.caffemodel.h5``);
the solver file itself is rewritten with ``net`` set to the result (as the fork does); and ``netsolver``
trains it from the decomposed weights. Ours: a step that fails stops the run with its error (the fork
went on to the next step).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from neocaffe.cli.log import run_logged
from neocaffe.tools import lowrank, lowrank_approx, netsolver
from neocaffe.tools.lowrank import LowRankError

__all__ = ["run", "main"]

log = logging.getLogger("neocaffe.tools.mixed_decomposer_tuner")


def run(solver: str, model: str, weights: str, rank_config1: str, rank_config2: str, path: str,
        device: int = 0) -> str:
    """The three steps (see the module docstring); returns the decomposed net's path."""
    from neocaffe.io.prototxt import read_solver, write_prototxt

    save_model = os.path.join(path, "lowrank_net.prototxt")
    save_weights = os.path.join(path, "lowrank_weights.caffemodel.h5")
    lowrank_approx.run(model, rank_config1, weights, save_model, save_weights)
    status = lowrank.main(["--prototxt", save_model, "--caffemodel", save_weights, "--rank_config", rank_config2])
    if status != 0:
        raise LowRankError(f"decomposing {save_model} with --rank_config {rank_config2} failed (see above)")
    net_path = save_model + lowrank.SUFFIX_NET
    weights_path = save_weights + lowrank.SUFFIX_WEIGHTS["hdf5"]
    param = read_solver(solver)
    param.net = net_path
    write_prototxt(param, solver)
    netsolver.solve(solver, weights_path, device)
    return net_path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mixed_decomposer_tuner", description="Low-rank approximating and fine-tuning")
    ap.add_argument("--solver", required=True, help="Solver prototxt")
    ap.add_argument("--model", required=True, help="Prototxt of the original net")
    ap.add_argument("--weights", required=True, help="Caffemodel of the original net (.caffemodel.h5 or .caffemodel)")
    ap.add_argument("--rank_config1", required=True, help="JSON ranks of the vertical/horizontal split (lowrank_approx)")
    ap.add_argument("--rank_config2", required=True, help="JSON ranks of the basis decomposition (nn_decomposer)")
    ap.add_argument("--device", type=int, default=0, help="The GPU device id, -1 for CPU")
    ap.add_argument("--path", required=True, help="The folder for the generated nets and weights")
    a = ap.parse_args(argv)
    return run_logged(lambda: run(a.solver, a.model, a.weights, a.rank_config1, a.rank_config2, a.path, a.device),
                      (LowRankError, OSError, ValueError, RuntimeError), log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
