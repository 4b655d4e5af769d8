"""The solver's test phase (Caffe's Solver::TestAll/Test) and its output log lines, as a mixin of
``neocaffe.solver.solver.Solver``."""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import torch

from neocaffe.solver.tensorboard import output_values

log = logging.getLogger("neocaffe.solver")
f32 = np.float32
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"  # Caffe's SolverAction


def _fmt(x: float) -> str:
    """A number as C++ ``ostream << float`` prints it (6 significant digits, like ``%g``)."""
    return "%g" % float(f32(x))


class TestingMixin:
    """``test_all``/``test`` for a solver with ``param``, ``net``, ``test_nets``, ``rank``, ``iter``,
    ``mean_scores``, ``monitors``, ``requested_early_exit``, ``_requested``, ``_autocast`` and ``snapshot``."""

    param: Any
    net: Any
    test_nets: list[Any]
    mean_scores: list[list[float]]
    monitors: list[Any]

    def test_all(self) -> None:
        if self.rank != 0:  # data-parallel: Caffe tests on the root solver only
            return
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, i: int) -> list[float]:
        """Run test net ``i`` for ``test_iter[i]`` batches and log the mean of every output."""
        p = self.param
        start = time.perf_counter()
        log.info("Iteration %d, Testing net (#%d)", self.iter, i)
        net = self.test_nets[i]
        net.share_with(self.net)
        n_iter = p.test_iter[i]
        sums: list[torch.Tensor] | None = None
        loss: Any = 0.0
        for _ in range(n_iter):
            request = self._requested()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self.requested_early_exit = True
                request = self._requested()
            if self.requested_early_exit:
                break
            with torch.no_grad(), self._autocast():
                iter_loss = net.forward()
            if p.test_compute_loss:
                loss = loss + iter_loss.float()
            outs = [net.blob_data[n].detach().float().reshape(-1) for n in net.outputs]
            if sums is None:
                sums = [o.clone() for o in outs]
            else:
                for s, o in zip(sums, outs):
                    s.add_(o)
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return []
        shown = {}
        if p.test_compute_loss:
            shown["loss"] = float(f32(float(loss)) / f32(n_iter))
            log.info("Test loss: %s", _fmt(shown["loss"]))
        means = self._log_outputs(net, "Test", sums or [], divide=n_iter)
        self.mean_scores[i] = means
        shown.update(output_values(net, means))
        for m in self.monitors:
            m.on_test(self.iter, i, shown, time.perf_counter() - start)
        return means

    def _log_outputs(self, net: Any, kind: str, values: Sequence[torch.Tensor], divide: int = 1) -> list[float]:
        weights = net.blob_loss_weights
        out: list[float] = []
        k = 0
        for name, v in zip(net.outputs, values):
            w = f32(weights.get(name, 0.0))
            for x in v.detach().float().reshape(-1).cpu().numpy():
                mean = f32(x) / f32(divide)
                out.append(float(mean))
                extra = f" (* {_fmt(w)} = {_fmt(w * mean)} loss)" if w else ""
                log.info("    %s net output #%d: %s = %s%s", kind, k, name, _fmt(mean), extra)
                k += 1
        return out
