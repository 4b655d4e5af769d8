"""netsolver: train a solver from given weights (the "Coordinating Filters" fork's ``python/netsolver.py``,
which its ``mixed_decomposer_tuner.py`` runs; same arguments).

    netsolver --solver S.prototxt [--weights W.caffemodel.h5] [--device -1|ID]

The solver's net gets ``--weights`` copied in by layer name, then ``solve()`` runs it to ``max_iter`` (with
its tests, display and snapshots), as ``caffe train --weights`` does. ``--device`` -1 trains on the CPU, an
id on that CUDA device (0 by default), overriding the solver's ``solver_mode``; without CUDA, a device id
trains on the CPU with a warning. Ours: the weights may be a binary ``.caffemodel`` too (the fork asserts
``.h5``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from neocaffe.cli.log import run_logged

__all__ = ["solve", "device_for", "main"]

log = logging.getLogger("neocaffe.tools.netsolver")


def device_for(device: int) -> str:
    """The torch device for the fork's ``--device`` (-1: CPU; an unavailable CUDA id: CPU with a warning)."""
    if device < 0:
        return "cpu"
    import torch

    if not torch.cuda.is_available() or device >= torch.cuda.device_count():
        log.warning("--device %d: no such CUDA device; training on the CPU", device)
        return "cpu"
    return f"cuda:{device}"


def solve(solver_file: str, weights: str | None = None, device: int = 0) -> int:
    """Train ``solver_file`` from ``weights``; returns the iteration reached."""
    from neocaffe.solver.solver import Solver

    solver = Solver(solver_file, device=device_for(device))
    try:
        if weights:
            solver.net.copy_from(weights)
        solver.solve()
        return solver.iter
    finally:
        solver.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netsolver", description=__doc__.split("\n\n")[0])
    ap.add_argument("--solver", required=True, help="Solver prototxt")
    ap.add_argument("--weights", help="Caffemodel (.caffemodel.h5 or .caffemodel)")
    ap.add_argument("--device", type=int, default=0, help="The GPU device id, -1 for CPU")
    a = ap.parse_args(argv)
    return run_logged(lambda: solve(a.solver, a.weights, a.device), (OSError, ValueError, RuntimeError), log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
