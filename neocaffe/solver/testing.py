"""The solver's test phase (Caffe's Solver::TestAll/Test; SSD's TestDetection for ``eval_type:
"detection"``, :mod:`neocaffe.solver.detection_eval`) and the output log lines of its test and
display iterations. The :class:`Tester` is composed into ``neocaffe.solver.solver.Solver`` with
explicit arguments; it owns the mean scores of the last test of each net."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch

from neocaffe.solver.detection_eval import AP_VERSIONS, EVAL_TYPES, DetectionScores
from neocaffe.solver.lr_policy import warmup_rate
from neocaffe.solver.tensorboard import output_values

log = logging.getLogger("neocaffe.solver")
f32 = np.float32
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"  # Caffe's SolverAction


def fmt(x: float) -> str:
    """A number as C++ ``ostream << float`` prints it (6 significant digits, like ``%g``)."""
    return "%g" % float(f32(x))


def log_outputs(net: Any, kind: str, values: Sequence[torch.Tensor], divide: int = 1) -> list[float]:
    """Log ``    <kind> net output #k: <blob> = <mean>[ (* w = w*mean loss)]`` for every value of every
    output blob of ``net`` (Caffe's wording), each divided by ``divide``; returns the means in order."""
    weights = net.blob_loss_weights
    out: list[float] = []
    k = 0
    for name, v in zip(net.outputs, values):
        w = f32(weights.get(name, 0.0))
        for x in v.detach().float().reshape(-1).cpu().numpy():
            mean = f32(x) / f32(divide)
            out.append(float(mean))
            extra = f" (* {fmt(w)} = {fmt(w * mean)} loss)" if w else ""
            log.info("    %s net output #%d: %s = %s%s", kind, k, name, fmt(mean), extra)
            k += 1
    return out


def log_regularization(penalties: dict[str, float], smoothed_loss: float) -> dict[str, float]:
    """The fork's display line (its train scripts grep ``loss+`` and keep fields 8 and 11 as loss.info):
    the sum of the regularization ``penalties`` and that sum plus the smoothed loss; returns the values
    tagged for the monitors."""
    reg = sum(penalties.values())
    log.info("    Total regularization terms: %s loss+regular. : %s", fmt(f32(reg)), fmt(f32(reg) + f32(smoothed_loss)))
    return {**{f"regularization/{k}": v for k, v in penalties.items()}, "regularization/total": float(f32(reg)),
            "train/loss+regular": float(f32(reg) + f32(smoothed_loss))}


def log_sparsity(weight_decay: float, infos: Sequence[Any]) -> dict[str, float]:
    """The fork's ``Sparsity %`` display line: percent of exact zeros of every parameter that
    ``weight_decay`` (SolverParameter) x ``decay_mult`` (ParamSpec) decays; returns them tagged."""
    decayed = [i for i in infos if weight_decay * i.decay_mult]
    if not decayed:
        return {}
    with torch.no_grad():
        zeros = torch.stack([(i.param == 0).sum() * (100.0 / i.param.numel()) for i in decayed]).cpu().tolist()
    log.info("    Sparsity %%: %s", " ".join(fmt(f32(z)) for z in zeros))
    return {f"sparsity/{i.name}": float(f32(z)) for i, z in zip(decayed, zeros)}


def log_display_sparsity(weight_decay: float, regularizers: Any, infos: Sequence[Any],
                         monitored: bool) -> dict[str, float]:
    """A display iteration's sparsity lines: the regularizer chain's (the scnn branch's four lines), else the
    fork's ``Sparsity %`` line (:func:`log_sparsity`); returns the values tagged for the monitors (the chain's
    only when ``monitored``: computing them reads the weights)."""
    shown = dict(regularizers.display_values(infos)) if monitored else {}
    lines = regularizers.display_lines(infos)
    for line in lines:
        log.info("%s", line)
    if not lines:
        shown.update(log_sparsity(weight_decay, infos))
    return shown


def log_schedule(p: Any, iteration: int, old_step: int, new_step: int, plateau: Any, display: bool) -> None:
    """The learning-rate policy's status lines (SolverParameter ``lr_policy``): ``MultiStep``/``Plateau Status:
    Iteration N, step = k`` when the step advanced, and SSD's ``Plateau Status: ... current minimum_loss`` on a
    display iteration that follows an event within the last ``display`` iterations (none inside Intel's warm-up)."""
    if p.lr_policy in ("multistep", "plateau") and new_step != old_step:
        log.info("%s Status: Iteration %d, step = %d", "MultiStep" if p.lr_policy == "multistep" else "Plateau",
                 iteration, new_step)
    if (p.lr_policy == "plateau" and display and plateau.iter_last_event > iteration - p.display
            and warmup_rate(p, iteration) is None):
        log.info("Plateau Status: Iteration %d, current minimum_loss = %s", iteration, fmt(plateau.minimum_loss))


class Tester:
    """Runs the test nets as Caffe's Solver::TestAll does.

    ``param``: the SolverParameter (``test_iter``, ``test_compute_loss``); ``test_nets``: the nets, which
    take the train net's weights before each test; ``rank``: data-parallel rank (only 0 tests);
    ``monitors``: observers with ``on_test(iteration, net_index, values, seconds)``; ``requested``: returns
    the pending action (``"none"``, ``"stop"``, ``"snapshot"``) once per test batch; ``autocast``: the
    context manager each forward runs in; ``snapshot``: writes a snapshot (a ``"snapshot"`` request)."""

    def __init__(self, param: Any, test_nets: Sequence[Any], *, rank: int, monitors: Sequence[Any],
                 requested: Callable[[], str], autocast: Callable[[], ContextManager[Any]],
                 snapshot: Callable[[], Any]) -> None:
        self.param = param
        self.test_nets = test_nets
        self.rank = rank
        self.monitors = monitors
        self.requested = requested
        self.autocast = autocast
        self.snapshot = snapshot
        self.mean_scores: list[list[float]] = [[] for _ in test_nets]
        if param.eval_type not in EVAL_TYPES:
            raise ValueError(f"Unknown evaluation type: {param.eval_type}; expected one of {', '.join(EVAL_TYPES)}")
        if param.eval_type == "detection" and param.ap_version not in AP_VERSIONS:
            raise ValueError(f"Unknown ap_version: {param.ap_version}; expected one of {', '.join(AP_VERSIONS)}")
        self.detection = param.eval_type == "detection"

    def test_all(self, train_net: Any, iteration: int) -> bool:
        """Test every net in turn at ``iteration``; True when a stop was requested (the rest not run)."""
        if self.rank != 0:  # data-parallel: Caffe tests on the root solver only
            return False
        for i in range(len(self.test_nets)):
            if self.test(i, train_net, iteration) is None:
                return True
        return False

    def test(self, i: int, train_net: Any, iteration: int) -> list[float] | None:
        """Run test net ``i`` for ``test_iter[i]`` batches and log the mean of every output; None when a
        stop was requested before the last batch (``Test interrupted.``)."""
        p = self.param
        start = time.perf_counter()
        log.info("Iteration %d, Testing net (#%d)", iteration, i)
        net = self.test_nets[i]
        net.share_with(train_net)
        n_iter = p.test_iter[i]
        sums: list[torch.Tensor] | None = None
        scores = DetectionScores() if self.detection else None
        loss: Any = 0.0
        stop = False
        for _ in range(n_iter):
            request = self.requested()
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    stop = True
                request = self.requested()
            if stop:
                break
            with torch.no_grad(), self.autocast():
                iter_loss = net.forward()
            if p.test_compute_loss:
                loss = loss + iter_loss.float()
            outs = [net.blob_data[n].detach().float().reshape(-1) for n in net.outputs]
            if scores is not None:  # SSD's TestDetection: DetectionEvaluate rows, not means
                for j, (name, o) in enumerate(zip(net.outputs, outs)):
                    scores.add(j, o.cpu().numpy(), name)
                continue
            if sums is None:
                sums = [o.clone() for o in outs]
            else:
                for s, o in zip(sums, outs):
                    s.add_(o)
        if stop:
            log.info("Test interrupted.")
            return None
        shown = {}
        if p.test_compute_loss:
            shown["loss"] = float(f32(float(loss)) / f32(n_iter))
            log.info("Test loss: %s", fmt(shown["loss"]))
        if scores is not None:
            means = scores.mean_aps(p.ap_version, p.show_per_class_result)
            for j, m in enumerate(means):
                log.info("    Test net output #%d: %s = %s", j, net.outputs[j], fmt(m))
        else:
            means = log_outputs(net, "Test", sums or [], divide=n_iter)
        self.mean_scores[i] = means
        shown.update({net.outputs[j]: m for j, m in enumerate(means)} if scores is not None
                     else output_values(net, means))
        for m in self.monitors:
            m.on_test(iteration, i, shown, time.perf_counter() - start)
        return means
