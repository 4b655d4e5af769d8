"""The Solver: Caffe's training loop on a neocaffe Net.

One iteration (``step``) is Caffe's ``Solver::Step`` + ``SGDSolver::ApplyUpdate``::

    zero diffs -> [test] -> on_start -> forward/backward x iter_size -> [display] -> on_gradients_ready
    -> lr policy -> clip_gradients (global L2) -> / iter_size -> [Intel's LARS multipliers] -> regularizers
    -> update rule -> w -= update (none under Intel's ``disabled_update``)
    -> [caffe-jacinto's ThresholdNet, ``jacinto_sparsity``] -> iter += 1 -> [snapshot] -> [stop]

Log lines use Caffe's wording (``Iteration N, loss = x``, ``Test net output #k: ...``) through the
``neocaffe.solver`` logger; ``neocaffe.cli.log`` formats them the way glog does. The solver never
edits its ``SolverParameter``.

No host-device synchronisation inside an iteration on a GPU: each iteration's loss stays on the device
(``neocaffe.solver.loss_monitor``) and is read back every ``loss_check_interval`` iterations (default 50
on CUDA, 1 on the CPU) and on display, snapshot and test iterations and at the end of ``step``. A
loss that is not finite stops training at that read-back: before the update on that iteration (on a
GPU up to ``loss_check_interval - 1`` updates after the bad iteration, which the log names), and never
after writing a snapshot of the bad state. Gradient clipping scales on the device and logs its line
on read-back iterations only. Speed modes: ``neocaffe.solver.speed``; several processes:
``neocaffe.solver.parallel``.
"""
from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.io.solverstate import SolverState
from neocaffe.layers.base import BuildContext
from neocaffe.proto import caffe_pb2
from neocaffe.regularizers.chain import RegularizerChain, penalty_value
from neocaffe.solver.lr_policy import Plateau, check_policy, schedule
from neocaffe.solver.nets import SolverError, build_test_nets, build_train_net, check_solver, names_solver_file
from neocaffe.solver.nets import resolve_device
from neocaffe.solver import tensorboard as tb
from neocaffe.solver.rules import UpdateRule, lars_multipliers, make_rule, rule_name
from neocaffe.solver.speed import SpeedModeError, SpeedModes, apply_backend_flags, apply_modes, autocast
from neocaffe.solver.clip import clip_gradients
from neocaffe.solver.jacinto_sparsity import JacintoSparsity
from neocaffe.solver.loss_monitor import SmoothedLoss, check_interval, divergence
from neocaffe.solver.resume import load_solver_resume_state, load_solver_state, solver_resume_state, solver_state
from neocaffe.solver.snapshot import GoodSnapshots, check_snapshot_prefix, restore, write_snapshot
from neocaffe.solver.testing import NONE, SNAPSHOT, STOP, Tester, fmt, log_display_sparsity, log_outputs
from neocaffe.solver.testing import log_regularization, log_schedule

log = logging.getLogger("neocaffe.solver")
f32 = np.float32


class Solver:
    """Caffe's SGDSolver family. ``param``: a SolverParameter or a solver prototxt path.

    ``device``: overrides ``solver_mode``/``device_id``. ``action_request``: called once per
    iteration (and per test batch); returns ``"none"``, ``"stop"`` or ``"snapshot"`` (Caffe's
    SIGINT/SIGHUP hook). Speed modes (``neocaffe.solver.speed``; None: from the ``NEOCAFFE_*``
    environment, else off): ``precision`` ``fp32`` (Caffe-exact, default), ``tf32`` or ``bf16``;
    ``channels_last``; ``cudnn_benchmark``; ``compile`` (a torch.compile mode or True); ``fused``
    (Triton LRN and ReLU+LRN kernels on CUDA).
    ``loss_check_interval``: iterations between read-backs of the loss (see the module docstring).
    ``data_parallel``: a ``neocaffe.solver.parallel.DataParallel`` (this process is one of several).
    ``tensorboard``: a directory for TensorBoard scalars of what the log shows (None: ``NEOCAFFE_TENSORBOARD``,
    else off); ``tensorboard_histograms``: weight histograms on snapshots (``neocaffe.solver.tensorboard``).
    ``source``: the prototxt a SolverParameter ``param`` was read from (``caffe train -solver``), named in
    errors as when ``param`` is that path.
    """

    @names_solver_file
    def __init__(self, param: Any, *, device: Any = None, action_request: Callable[[], str] | None = None,
                 precision: str | None = None, channels_last: bool | None = None,
                 cudnn_benchmark: bool | None = None, compile: str | bool | None = None,
                 fused: bool | None = None, loss_check_interval: int | None = None, data_parallel: Any = None,
                 tensorboard: str | os.PathLike | None = None, tensorboard_histograms: bool | None = None,
                 source: str | os.PathLike | None = None) -> None:
        self.source = os.fspath(source) if source is not None else None
        if isinstance(param, (str, os.PathLike)):
            from neocaffe.io.prototxt import read_solver

            self.source = os.fspath(param)
            param = read_solver(self.source)
        self.param = caffe_pb2.SolverParameter()
        self.param.CopyFrom(param)
        p = self.param
        log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(p).rstrip("\n"))
        check_solver(p, self.source or "<solver>")
        try:
            self.modes = SpeedModes.resolve(precision, channels_last, cudnn_benchmark, compile, fused)
        except SpeedModeError as e:
            raise SolverError(str(e)) from None
        check_policy(p)  # unknown policies and their bad parameters fail now (warm-up or not)
        self.precision = self.modes.precision
        self.dp = data_parallel
        if data_parallel is not None and p.lr_policy == "plateau":  # each process's loss would pick its own rate
            raise SolverError("lr_policy 'plateau' follows one process's smoothed loss; it is not supported with "
                              f"data-parallel training (received {data_parallel.world_size} processes)")
        self.rank = data_parallel.rank if data_parallel is not None else 0
        self.world_size = data_parallel.world_size if data_parallel is not None else 1
        check_snapshot_prefix(p)
        if p.random_seed >= 0:
            rng.set_seed(p.random_seed)
        self.device = resolve_device(p, device)
        apply_backend_flags(self.modes, self.device)
        self.net = build_train_net(p, self.source, self.device, BuildContext(self.rank, self.world_size))  # own data
        self.test_nets = build_test_nets(p, self.source, self.device, self.net) if self.rank == 0 else []  # root tests
        self.rule: UpdateRule = make_rule(p, [i.param for i in self.net.learnable])
        self.rule.to(self.device)
        apply_modes(self.modes, self.device, self.net, self.test_nets, self.rule)
        plateau = p.lr_policy == "plateau"  # reads the smoothed loss every iteration
        try:
            self.loss_check_interval = check_interval(loss_check_interval, self.device, plateau)
        except ValueError as e:
            raise SolverError(str(e)) from None
        self.loss_monitor = SmoothedLoss(p.average_loss, p.iter_size)
        try:
            self.regularizers = RegularizerChain.from_solver(p, self.net.learnable)
        except ValueError as e:
            raise SolverError(f"{self.net.source}: {e}") from None
        self.penalties: dict[str, Any] = {}
        self.sparsity = JacintoSparsity.from_solver(p, self.net, self.rank)  # caffe-jacinto's sparse_mode
        self.iter = 0
        self.current_step = 0
        self.plateau = Plateau()  # the plateau policy's minimum_loss / iter_last_event (lr_policy.Plateau)
        self.action_request = action_request
        self.requested_early_exit = False
        self.diverged = False
        self.callbacks: list[Any] = []
        self.monitors: list[Any] = []  # on_display/on_test/on_snapshot observers (TensorBoard)
        self.shown: dict[str, float] = {}  # what the last display iteration logged, tagged for the monitors
        self.last_snapshot: tuple[str, str] | None = None
        self.snapshots = GoodSnapshots()  # which snapshot a diverged run names as good
        if self.dp is not None:
            self.sync_parameters()
        try:  # data-parallel: the root logs, as it tests and snapshots
            self.monitors += tb.writers(tensorboard, tensorboard_histograms, self.net, p.iter_size,
                                         self.rank, self.world_size)
        except tb.TensorBoardError as e:
            raise SolverError(str(e)) from None
        self.tester = Tester(p, self.test_nets, rank=self.rank, monitors=self.monitors, requested=self._requested,
                             autocast=self._autocast, snapshot=self.snapshot)
        log.info("Solver scaffolding done.")

    # -- construction ---------------------------------------------------------------------------
    @property
    def type(self) -> str:
        return rule_name(self.param)

    def close(self) -> None:
        """Close the monitors' files (TensorBoard); they flush after every event, so this only frees them."""
        for m in self.monitors:
            m.close()

    def sync_parameters(self) -> None:
        """Data-parallel: every process takes rank 0's weights and solver history (after loading)."""
        if self.dp is not None:
            self.dp.broadcast([i.param.data for i in self.net.learnable] + list(self.rule.history))

    # -- hooks ----------------------------------------------------------------------------------
    def add_callback(self, callback: Any = None, *, on_start: Callable[[], None] | None = None,
                     on_gradients_ready: Callable[[], None] | None = None) -> None:
        """Register an object with ``on_start``/``on_gradients_ready`` methods, or the two functions."""
        if callback is None:
            callback = SimpleNamespace(on_start=on_start or (lambda: None),
                                       on_gradients_ready=on_gradients_ready or (lambda: None))
        self.callbacks.append(callback)

    def _requested(self) -> str:
        return self.action_request() if self.action_request is not None else NONE

    def _autocast(self) -> Any:
        return autocast(self.modes, self.device)

    @property
    def smoothed_loss(self) -> float:
        """Caffe's smoothed loss, the ``loss = ...`` of the display lines (``loss_monitor``)."""
        return self.loss_monitor.value

    @property
    def losses(self) -> list[float]:
        """The smoothed loss's window of iteration losses (``loss_monitor``)."""
        return self.loss_monitor.losses

    # -- testing (neocaffe.solver.testing) ------------------------------------------------------
    @property
    def mean_scores(self) -> list[list[float]]:
        """Per test net, the output means of its last test."""
        return self.tester.mean_scores

    def test_all(self) -> None:
        """Caffe's TestAll: every test net at this iteration, unless a stop was requested."""
        if not self.requested_early_exit and self.tester.test_all(self.net, self.iter):
            self.requested_early_exit = True

    def test(self, i: int) -> list[float]:
        """Run test net ``i`` for ``test_iter[i]`` batches, log and return the mean of every output."""
        means = self.tester.test(i, self.net, self.iter)
        if means is None:
            self.requested_early_exit = True
        return means or []

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
        if self.sparsity is not None:  # the fork's Solve stores the connectivity (a restore has set it)
            self.sparsity.start()
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
            self.loss_monitor.add(loss, self.iter)
            log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
            for m in self.monitors:
                m.on_display(self.iter, {"train/loss": float(f32(self.smoothed_loss))})
        if p.test_interval and (self.iter - p.test_offset) % p.test_interval == 0:  # Intel's test_offset
            self.test_all()
        log.info("Optimization Done.")
        return True

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self.loss_monitor.start(start_iter)  # Caffe starts a new window at every Step
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            self.net.set_iteration(self.iter, stop_iter)  # MobileNet-YOLO's net_->set_iter(iter_, stop_iter)
            if p.test_interval and (self.iter - p.test_offset) % p.test_interval == 0 and (
                    self.iter > 0 or p.test_initialization):
                if self._read_losses():
                    break
                self.test_all()
                if self.dp is not None:
                    self.requested_early_exit = bool(self.dp.agree(self.requested_early_exit)[0])
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
            self.loss_monitor.push(self.iter, total)
            read_back = display or (self.iter - start_iter + 1) % self.loss_check_interval == 0
            if read_back and self._read_losses():
                break
            if display:
                log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
                means = log_outputs(self.net, "Train", [self.net.blob_data[n] for n in self.net.outputs])
                self.shown = {"train/loss": float(f32(self.smoothed_loss)),
                              **{f"train/{k}": v for k, v in tb.output_values(self.net, means).items()}}
            if self.dp is not None:  # Caffe's NCCL::on_gradients_ready: sum, then scale by 1/solvers
                self.dp.average_gradients([i.param.grad for i in self.net.learnable])
            for cb in self.callbacks:
                cb.on_gradients_ready()
            self.apply_update(display, read_back)
            if display:
                penalties = {k: penalty_value(v) for k, v in self.penalties.items()}
                self.shown.update(log_regularization(penalties, self.smoothed_loss))
                for m in self.monitors:
                    m.on_display(self.iter, self.shown)
            if self.sparsity is not None:  # caffe-jacinto's ThresholdNet and display_sparsity
                self.sparsity.after_update(self.iter)
            self.iter += 1
            request = self._requested()
            snap, stop = request == SNAPSHOT, request == STOP
            if self.dp is not None:
                snap, stop = (bool(x) for x in self.dp.agree(snap, stop))
            if (p.snapshot and self.iter % p.snapshot == 0) or snap:
                if self._read_losses():  # never snapshot a state that followed a bad loss
                    break
                self.snapshot()
            if stop:
                self.requested_early_exit = True
                break
        if not self.diverged:  # the losses still on the device
            self._read_losses()
        if self.sparsity is not None and iters > 0 and not self.diverged:
            self.sparsity.step_end(self.iter)

    def _read_losses(self) -> bool:
        """Read the pending losses back from the device (``SmoothedLoss.read_back``). True when one is
        not finite: training diverged (data-parallel: in any process; the processes agree)."""
        read, bad = self.loss_monitor.read_back()
        diverged = bad is not None
        if self.dp is not None:
            diverged = bool(self.dp.agree(diverged)[0])
        self.snapshots.confirm(read, bad, diverged)  # the losses read finite confirm their snapshots
        if diverged and not self.diverged:  # stop; bad is None when another data-parallel process's loss was
            loss, iteration = bad or (float("nan"), None)
            log.error("%s", divergence(loss, iteration, self.iter, self.loss_check_interval, self.snapshots.describe()))
            self.diverged = self.requested_early_exit = True
        return diverged

    def apply_update(self, display: bool = False, read_back: bool = True) -> None:
        """Caffe's SGDSolver::ApplyUpdate on the gradients the last forward/backward left.
        ``read_back``: this iteration may synchronise with the device (to log gradient clipping)."""
        p = self.param
        step = self.current_step
        rate, self.current_step, self.plateau = schedule(p, self.iter, step, self.smoothed_loss, self.plateau)
        log_schedule(p, self.iter, step, self.current_step, self.plateau, display)
        infos = self.net.learnable
        if display:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
            self.shown["train/lr"] = float(rate)
        if p.disabled_update:  # Intel Caffe's: Solver::Step calls PrintLearningRate (the rate, its line) instead
            return
        if display:
            self.shown.update(log_display_sparsity(p.weight_decay, self.regularizers, infos, bool(self.monitors)))
        if not infos:
            return
        with torch.no_grad():
            grads = [i.param.grad for i in infos]
            clip_gradients(grads, self.param.clip_gradients, read_back or self.loss_check_interval == 1)
            if p.iter_size != 1:
                torch._foreach_mul_(grads, float(f32(1) / f32(p.iter_size)))
            mults = lars_multipliers(p, [i.param for i in infos], grads, [i.lr_mult for i in infos])  # Intel's LARS
            self.penalties = self.regularizers.apply(infos, self.iter, rate, penalty=display)  # logged on display only
            self.rule.compute(grads, UpdateRule.local_rates(rate, mults), self.iter)
            self.rule.apply([i.param for i in infos], grads)
            self.regularizers.after_update(infos, self.iter)  # the scnn branch's masks and zeroing
        self.net.weights_changed()  # what layers derive from the weights (conv_mode) is derived anew

    # -- snapshots (neocaffe.solver.snapshot) --------------------------------------------------
    def snapshot(self) -> tuple[str, str]:
        """Write ``<prefix>_iter_<N>.caffemodel[.h5]`` and ``.solverstate[.h5]``; returns both names."""
        if self.rank != 0:  # data-parallel: every process holds the same state; the root writes it
            return self.last_snapshot  # type: ignore[return-value]
        start = time.perf_counter()
        self.last_snapshot = write_snapshot(self.param, self.net, self.state(), self.resume_state())
        self.snapshots.written(self.iter, self.last_snapshot)
        for m in self.monitors:
            m.on_snapshot(self.iter, self.net, time.perf_counter() - start)
        return self.last_snapshot

    def restore(self, path: str) -> None:
        """Continue from a ``.solverstate[.h5]`` (iteration, lr step, history, weights) and its ``.resume.pt``."""
        restore(self, path)
        self.snapshots.forget_unconfirmed()

    def state(self) -> SolverState:
        """What a ``.solverstate`` holds: iteration, lr step (``current_step``) and a host copy of the
        update rule's history; ``learned_net`` None (a snapshot names the weights file it writes)."""
        return solver_state(self)

    def load_state(self, state: SolverState, weights: str | None = None, *, log_history: bool = False) -> None:
        """Continue from ``state``: the weights file ``weights`` (its ``learned_net``), iteration, lr step
        and history. RestoreError, with nothing changed, when the history does not fit this solver's."""
        load_solver_state(self, state, weights, log_history=log_history)

    def resume_state(self) -> dict:
        """What a resumed run needs beyond the solverstate, gathered from each owner: the random
        streams, every data layer's read position (train and test nets) and the smoothed-loss window."""
        return solver_resume_state(self)

    def load_resume_state(self, state: dict) -> None:
        """Continue from ``resume_state()``'s result: the next ``step`` reads the next batch, draws the
        next random numbers and continues the smoothed-loss window, as the interrupted run would have."""
        load_solver_resume_state(self, state)
