"""The Solver: Caffe's training loop on a neocaffe Net.

One iteration (``step``) is Caffe's ``Solver::Step`` + ``SGDSolver::ApplyUpdate``::

    zero diffs -> [test] -> on_start -> forward/backward x iter_size -> [display] -> on_gradients_ready
    -> lr policy -> clip_gradients (global L2) -> / iter_size -> regularizers -> update rule -> w -= update
    -> iter += 1 -> [snapshot] -> [stop]

Log lines use Caffe's wording (``Iteration N, loss = x``, ``Test net output #k: ...``) through the
``neocaffe.solver`` logger; ``neocaffe.cli.log`` formats them the way glog does. The solver never
edits its ``SolverParameter``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.proto import caffe_pb2
from neocaffe.regularizers.chain import RegularizerChain, penalty_value
from neocaffe.solver.lr_policy import get_policy, learning_rate
from neocaffe.solver.nets import SolverError, build_test_nets, build_train_net
from neocaffe.solver.rules import UpdateRule, make_rule, rule_name

log = logging.getLogger("neocaffe.solver")
f32 = np.float32

NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"  # Caffe's SolverAction
PRECISIONS = ("fp32", "tf32", "bf16")


def _fmt(x: float) -> str:
    """A number as C++ ``ostream << float`` prints it (6 significant digits, like ``%g``)."""
    return "%g" % float(f32(x))


def resolve_device(param: Any, device: Any = None) -> torch.device:
    """The device to run on: ``device`` if given, else ``solver_mode``/``device_id`` (GPU falls back
    to the CPU with a warning when CUDA is absent)."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SolverError(f"device {dev} requested but CUDA is not available on this machine")
        return dev
    if param.solver_mode == caffe_pb2.SolverParameter.GPU:
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            if param.device_id >= n:
                raise SolverError(f"device_id {param.device_id} requested; this machine has {n} CUDA device(s)")
            return torch.device("cuda", param.device_id)
        log.warning("solver_mode is GPU but CUDA is not available: running on the CPU "
                    "(set solver_mode: CPU to silence this, or run where a GPU is)")
    return torch.device("cpu")


class Solver:
    """Caffe's SGDSolver family. ``param``: a SolverParameter or a solver prototxt path.

    ``device``: overrides ``solver_mode``/``device_id``. ``action_request``: called once per
    iteration (and per test batch); returns ``"none"``, ``"stop"`` or ``"snapshot"`` (Caffe's
    SIGINT/SIGHUP hook). ``precision``: ``fp32`` (Caffe-exact, default), ``tf32`` or ``bf16``
    (opt-in, not Caffe-exact).
    """

    def __init__(self, param: Any, *, device: Any = None, action_request: Callable[[], str] | None = None,
                 precision: str = "fp32") -> None:
        self.source = None
        if isinstance(param, (str, os.PathLike)):
            from neocaffe.io.prototxt import read_solver

            self.source = os.fspath(param)
            param = read_solver(self.source)
        self.param = caffe_pb2.SolverParameter()
        self.param.CopyFrom(param)
        p = self.param
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(p).rstrip("\n"))
        if p.average_loss < 1:
            raise SolverError(f"average_loss should be non-negative (>= 1); received {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"iter_size must be at least 1; received {p.iter_size}")
        if precision not in PRECISIONS:
            raise SolverError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
        get_policy(p.lr_policy)  # unknown policies fail now, not at the first update
        self.precision = precision
        self._check_snapshot_prefix()
        if p.random_seed >= 0:
            rng.set_seed(p.random_seed)
        self.device = resolve_device(p, device)
        self._set_precision()
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        self.rule: UpdateRule = make_rule(p, [i.param for i in self.net.learnable])
        self.rule.to(self.device)
        self.regularizers = RegularizerChain.from_solver(p)
        self.penalties: dict[str, Any] = {}
        self.iter = 0
        self.current_step = 0
        self.action_request = action_request
        self.requested_early_exit = False
        self.diverged = False
        self.callbacks: list[Any] = []
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        self.mean_scores: list[list[float]] = [[] for _ in self.test_nets]
        self.last_snapshot: tuple[str, str] | None = None
        self.rate = 0.0
        log.info("Solver scaffolding done.")

    # -- construction ---------------------------------------------------------------------------
    @property
    def type(self) -> str:
        return rule_name(self.param)

    def _check_snapshot_prefix(self) -> None:
        p = self.param
        if not p.snapshot:
            return
        if not p.HasField("snapshot_prefix"):
            raise SolverError("In solver params, snapshot is specified but snapshot_prefix is not")
        probe = f"{p.snapshot_prefix}_iter_0.tempfile"
        try:
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            raise SolverError(
                f"Cannot write to snapshot prefix '{p.snapshot_prefix}'. Make sure that the directory exists "
                f"and is writeable ({e.strerror})"
            ) from None

    def _set_precision(self) -> None:
        if self.device.type == "cuda":
            allow = self.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = allow
            torch.backends.cudnn.allow_tf32 = allow

    def _init_train_net(self) -> Net:
        return build_train_net(self.param, self.source, self.device)

    def _init_test_nets(self) -> list[Net]:
        return build_test_nets(self.param, self.source, self.device, self.net)

    # -- hooks ----------------------------------------------------------------------------------
    def add_callback(self, callback: Any = None, *, on_start: Callable[[], None] | None = None,
                     on_gradients_ready: Callable[[], None] | None = None) -> None:
        """Register an object with ``on_start``/``on_gradients_ready`` methods, or the two functions."""
        if callback is None:
            callback = type("Callback", (), {})()
            callback.on_start = on_start or (lambda: None)
            callback.on_gradients_ready = on_gradients_ready or (lambda: None)
        self.callbacks.append(callback)

    def _requested(self) -> str:
        return self.action_request() if self.action_request is not None else NONE

    def _autocast(self) -> Any:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- training -------------------------------------------------------------------------------
    def solve(self, resume_file: str | None = None) -> bool:
        """Train to ``max_iter`` (Caffe's Solver::Solve); False when stopped early or diverged."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        if self.diverged:
            return False
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return False
        if p.display and self.iter % p.display == 0:
            with torch.no_grad(), self._autocast():
                loss = float(self.net.forward())
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, _fmt(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")
        return True

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self.losses, self.smoothed_loss = [], 0.0
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self.requested_early_exit:
                    break
            for cb in self.callbacks:
                cb.on_start()
            display = bool(p.display) and self.iter % p.display == 0
            total: Any = 0.0
            for _ in range(p.iter_size):
                with self._autocast():
                    loss = self.net.forward()
                self.net.backward()
                total = total + loss.detach().float()
            loss_value = float(f32(float(total)) / f32(p.iter_size))
            if not math.isfinite(loss_value):
                self._diverge(loss_value)
                break
            self._update_smoothed_loss(loss_value, start_iter, p.average_loss)
            if display:
                log.info("Iteration %d, loss = %s", self.iter, _fmt(self.smoothed_loss))
                self._log_outputs(self.net, "Train", [self.net.blob_data[n] for n in self.net.outputs])
            for cb in self.callbacks:
                cb.on_gradients_ready()
            self.apply_update(display)
            if display:
                # the fork's line: its train scripts grep 'loss+' and keep fields 8 and 11 as loss.info
                reg = sum(penalty_value(v) for v in self.penalties.values())
                log.info("    Total regularization terms: %s loss+regular. : %s", _fmt(f32(reg)),
                         _fmt(f32(reg) + f32(self.smoothed_loss)))
            self.iter += 1
            request = self._requested()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT:
                self.snapshot()
            if request == STOP:
                self.requested_early_exit = True
                break

    def _diverge(self, loss: float) -> None:
        last = self.last_snapshot[1] if self.last_snapshot else None
        kept = f"the last good snapshot is {last}" if last else "no snapshot was written before it"
        log.error("Iteration %d, loss = %s: the loss is not finite; stopping before the update. "
                  "No snapshot is written for this state; %s.", self.iter, loss, kept)
        self.diverged = True
        self.requested_early_exit = True

    def _update_smoothed_loss(self, loss: float, start_iter: int, average_loss: int) -> None:
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = float((f32(self.smoothed_loss) * f32(size - 1) + f32(loss)) / f32(size))
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss = float(f32(self.smoothed_loss) + (f32(loss) - f32(self.losses[idx])) / f32(average_loss))
            self.losses[idx] = loss

    def apply_update(self, display: bool = False) -> None:
        """Caffe's SGDSolver::ApplyUpdate on the gradients the last forward/backward left."""
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        self.rate = rate
        infos = self.net.learnable
        if display:
            log.info("Iteration %d, lr = %s", self.iter, _fmt(rate))
            self._log_sparsity(infos)
        if not infos:
            return
        with torch.no_grad():
            grads = [i.param.grad for i in infos]
            self._clip_gradients(grads)
            if p.iter_size != 1:
                torch._foreach_mul_(grads, float(f32(1) / f32(p.iter_size)))
            self.penalties = self.regularizers.apply(infos, self.iter, rate)
            self.rule.compute(grads, UpdateRule.local_rates(rate, [i.lr_mult for i in infos]), self.iter)
            self.rule.apply([i.param for i in infos], grads)

    def _log_sparsity(self, infos: Sequence[Any]) -> None:
        """The fork's "Sparsity %" line: percent of exact zeros of every weight-decayed parameter."""
        decayed = [i.param for i in infos if self.param.weight_decay * i.decay_mult]
        if not decayed:
            return
        with torch.no_grad():
            zeros = torch.stack([(p == 0).sum() * (100.0 / p.numel()) for p in decayed]).cpu().tolist()
        log.info("    Sparsity %%: %s", " ".join(_fmt(f32(z)) for z in zeros))

    def _clip_gradients(self, grads: Sequence[torch.Tensor]) -> None:
        clip = f32(self.param.clip_gradients)
        if clip < 0:
            return
        sumsq = f32(0)
        for n in torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)) for g in grads]).cpu().numpy():
            sumsq = f32(sumsq + f32(n))
        norm = f32(np.sqrt(sumsq))
        if norm > clip:
            scale = f32(clip / norm)
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     _fmt(norm), _fmt(clip), _fmt(scale))
            torch._foreach_mul_(list(grads), float(scale))

    # -- testing --------------------------------------------------------------------------------
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, i: int) -> list[float]:
        """Run test net ``i`` for ``test_iter[i]`` batches and log the mean of every output."""
        p = self.param
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
        if p.test_compute_loss:
            log.info("Test loss: %s", _fmt(f32(float(loss)) / f32(n_iter)))
        means = self._log_outputs(net, "Test", sums or [], divide=n_iter)
        self.mean_scores[i] = means
        return means

    def _log_outputs(self, net: Net, kind: str, values: Sequence[torch.Tensor], divide: int = 1) -> list[float]:
        weights = {}
        for lp, lws in zip(net.plan.layers, net.loss_weights):
            for t, w in zip(lp.tops, lws):
                weights[t] = w
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

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self) -> tuple[str, str]:
        """Write ``<prefix>_iter_<N>.caffemodel[.h5]`` and ``.solverstate[.h5]``; returns both names."""
        from neocaffe.solver.snapshot import write_snapshot

        self.last_snapshot = write_snapshot(self)
        return self.last_snapshot

    def restore(self, path: str) -> None:
        """Continue from a ``.solverstate`` or ``.solverstate.h5``: iteration, lr step, history, weights."""
        from neocaffe.solver.snapshot import restore

        restore(self, path)
