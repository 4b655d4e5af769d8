"""The Solver: Caffe's training loop on a neocaffe Net.

One iteration (``step``) is Caffe's ``Solver::Step`` + ``SGDSolver::ApplyUpdate``::

    zero diffs -> [test] -> on_start -> forward/backward x iter_size -> [display] -> on_gradients_ready
    -> lr policy -> clip_gradients (global L2) -> / iter_size -> regularizers -> update rule -> w -= update
    -> iter += 1 -> [snapshot] -> [stop]

Log lines use Caffe's wording (``Iteration N, loss = x``, ``Test net output #k: ...``) through the
``neocaffe.solver`` logger; ``neocaffe.cli.log`` formats them the way glog does. The solver never
edits its ``SolverParameter``.

No host-device synchronisation inside an iteration on a GPU: each iteration's loss stays on the device
and is read back, all pending ones at once, every ``loss_check_interval`` iterations (default 50 on
CUDA, 1 on the CPU where reading costs nothing) and on display, snapshot and test iterations and at the
end of ``step``. The smoothed loss is then replayed in Caffe's float32 order, so logs are unchanged. A
loss that is not finite stops training at that read-back: before the update on that iteration (on a
GPU up to ``loss_check_interval - 1`` updates after the bad iteration, which the log names), and never
after writing a snapshot of the bad state. Gradient clipping scales on the device and logs its line
on read-back iterations only. Speed modes: ``neocaffe.solver.speed``; several processes:
``neocaffe.solver.parallel``.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.layers.base import BuildContext
from neocaffe.proto import caffe_pb2
from neocaffe.regularizers.chain import RegularizerChain, penalty_value
from neocaffe.solver.lr_policy import LRPolicyError, get_policy, learning_rate
from neocaffe.solver.nets import SolverError, build_test_nets, build_train_net
from neocaffe.solver import tensorboard
from neocaffe.solver.rules import UpdateRule, make_rule, rule_name
from neocaffe.solver.speed import PRECISIONS  # noqa: F401 (importable from here, as before)
from neocaffe.solver.speed import SpeedModeError, SpeedModes, apply_backend_flags, autocast, compile_supported
from neocaffe.solver.testing import TestingMixin, _fmt

log = logging.getLogger("neocaffe.solver")
f32 = np.float32

NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"  # Caffe's SolverAction
DEFAULT_GPU_LOSS_CHECK_INTERVAL = 50


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


def _names_solver_file(init: Callable[..., None]) -> Callable[..., None]:
    """A solver built from a prototxt path names it in its own parameter errors (unknown type or
    lr_policy, Caffe's CHECKs on the SolverParameter): ``solver.prototxt: Unknown solver type ...``.
    Errors of the nets, the weights and the data already name their own files and pass unchanged."""

    @functools.wraps(init)
    def wrapper(self: Any, param: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, param, *args, **kwargs)
        except (SolverError, LRPolicyError, ValueError) as e:
            source = os.fspath(param) if isinstance(param, (str, os.PathLike)) else kwargs.get("source")
            own = type(e) in (SolverError, LRPolicyError, ValueError)
            if not source or not own or os.fspath(source) in str(e):
                raise
            raise (SolverError if type(e) is ValueError else type(e))(f"{os.fspath(source)}: {e}") from e

    return wrapper


class Solver(TestingMixin):
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

    @_names_solver_file
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
        if p.average_loss < 1:
            raise SolverError(f"average_loss should be non-negative (>= 1); received {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"iter_size must be at least 1; received {p.iter_size}")
        try:
            self.modes = SpeedModes.resolve(precision, channels_last, cudnn_benchmark, compile, fused)
        except SpeedModeError as e:
            raise SolverError(str(e)) from None
        learning_rate(p, 0)  # unknown policies and their bad parameters fail now, not at the first update
        self.precision = self.modes.precision
        self.dp = data_parallel
        self.rank = data_parallel.rank if data_parallel is not None else 0
        self.world_size = data_parallel.world_size if data_parallel is not None else 1
        self._check_snapshot_prefix()
        if p.random_seed >= 0:
            rng.set_seed(p.random_seed)
        self.device = resolve_device(p, device)
        apply_backend_flags(self.modes, self.device)
        self.net = self._init_train_net()  # each process reads its own slice of the train data
        self.test_nets = self._init_test_nets() if self.rank == 0 else []  # Caffe tests on the root solver
        self.rule: UpdateRule = make_rule(p, [i.param for i in self.net.learnable])
        self.rule.to(self.device)
        self._apply_modes()
        if loss_check_interval is None:
            loss_check_interval = 1 if self.device.type == "cpu" else DEFAULT_GPU_LOSS_CHECK_INTERVAL
        if loss_check_interval < 1:
            raise SolverError(f"loss_check_interval must be at least 1; received {loss_check_interval}")
        self.loss_check_interval = int(loss_check_interval)
        self._pending: list[tuple[int, Any]] = []
        try:
            self.regularizers = RegularizerChain.from_solver(p, self.net.learnable)
        except ValueError as e:
            raise SolverError(f"{self.net.source}: {e}") from None
        self.penalties: dict[str, Any] = {}
        self.iter = 0
        self.current_step = 0
        self.action_request = action_request
        self.requested_early_exit = False
        self.diverged = False
        self.callbacks: list[Any] = []
        self.monitors: list[Any] = []  # on_display/on_test/on_snapshot observers (TensorBoard)
        self.shown: dict[str, float] = {}  # what the last display iteration logged, tagged for the monitors
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        self.loss_origin = 0  # the iteration the smoothed-loss window started at
        self._continue_losses = False  # restored from a snapshot: the next step continues its window
        self.mean_scores: list[list[float]] = [[] for _ in self.test_nets]
        self.last_snapshot: tuple[str, str] | None = None
        if self.dp is not None:
            self.sync_parameters()
        self._add_tensorboard(tensorboard, tensorboard_histograms)
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

    def _apply_modes(self) -> None:
        m = self.modes
        if not m.caffe_exact or m.channels_last or m.cudnn_benchmark or m.fused:
            log.info("Speed modes: %s (%s)", m.describe(), "Caffe-exact" if m.caffe_exact else "not Caffe-exact")
        if m.fused:
            pairs = self.net.set_fused_kernels(True)
            for net in self.test_nets:
                net.set_fused_kernels(True)
            log.info("Fused kernels: LRN layers%s", f", ReLU+LRN pairs {', '.join(pairs)}" if pairs else "")
        if m.channels_last:
            for net in [self.net, *self.test_nets]:
                net.set_memory_format(torch.channels_last)
            self.rule.history = [h.contiguous(memory_format=torch.channels_last) if h.dim() == 4 else h
                                 for h in self.rule.history]
        if m.compile:
            ok, why = compile_supported(self.device)
            if ok:
                self.net.enable_compile(m.compile)
            else:
                log.warning("compile=%s asked for, but torch.compile cannot run here (%s): running eagerly",
                            m.compile, why)

    def _add_tensorboard(self, logdir: Any, histograms: bool | None) -> None:
        try:
            logdir, histograms = tensorboard.resolve(logdir, histograms)
            if logdir and self.rank == 0:  # data-parallel: the root logs, as it tests and snapshots
                ipi = tensorboard.images_per_iteration(self.net, self.param.iter_size, self.world_size)
                self.monitors.append(tensorboard.TensorBoardWriter(logdir, histograms, ipi))
        except tensorboard.TensorBoardError as e:
            raise SolverError(str(e)) from None

    def close(self) -> None:
        """Close the monitors' files (TensorBoard); they flush after every event, so this only frees them."""
        for m in self.monitors:
            m.close()

    def sync_parameters(self) -> None:
        """Data-parallel: every process takes rank 0's weights and solver history (after loading)."""
        if self.dp is not None:
            self.dp.broadcast([i.param.data for i in self.net.learnable] + list(self.rule.history))

    def _init_train_net(self) -> Net:
        return build_train_net(self.param, self.source, self.device, BuildContext(self.rank, self.world_size))

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
        return autocast(self.modes, self.device)

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
            self._update_smoothed_loss(loss, self.loss_origin, p.average_loss)
            log.info("Iteration %d, loss = %s", self.iter, _fmt(self.smoothed_loss))
            for m in self.monitors:
                m.on_display(self.iter, {"train/loss": float(f32(self.smoothed_loss))})
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")
        return True

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        if not self._continue_losses:  # Caffe starts a new window at every Step
            self.losses, self.smoothed_loss, self.loss_origin = [], 0.0, start_iter
        self._continue_losses = False
        origin = self.loss_origin
        self._pending = []
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                if self._read_losses(origin):
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
            self._pending.append((self.iter, total))
            read_back = display or (self.iter - start_iter + 1) % self.loss_check_interval == 0
            if read_back and self._read_losses(origin):
                break
            if display:
                log.info("Iteration %d, loss = %s", self.iter, _fmt(self.smoothed_loss))
                means = self._log_outputs(self.net, "Train", [self.net.blob_data[n] for n in self.net.outputs])
                self.shown = {"train/loss": float(f32(self.smoothed_loss)),
                              **{f"train/{k}": v for k, v in tensorboard.output_values(self.net, means).items()}}
            if self.dp is not None:  # Caffe's NCCL::on_gradients_ready: sum, then scale by 1/solvers
                self.dp.average_gradients([i.param.grad for i in self.net.learnable])
            for cb in self.callbacks:
                cb.on_gradients_ready()
            self.apply_update(display, read_back)
            if display:
                # the fork's line: its train scripts grep 'loss+' and keep fields 8 and 11 as loss.info
                penalties = {k: penalty_value(v) for k, v in self.penalties.items()}
                reg = sum(penalties.values())
                log.info("    Total regularization terms: %s loss+regular. : %s", _fmt(f32(reg)),
                         _fmt(f32(reg) + f32(self.smoothed_loss)))
                self.shown.update({f"regularization/{k}": v for k, v in penalties.items()})
                self.shown.update({"regularization/total": float(f32(reg)),
                                   "train/loss+regular": float(f32(reg) + f32(self.smoothed_loss))})
                for m in self.monitors:
                    m.on_display(self.iter, self.shown)
            self.iter += 1
            request = self._requested()
            snap, stop = request == SNAPSHOT, request == STOP
            if self.dp is not None:
                snap, stop = (bool(x) for x in self.dp.agree(snap, stop))
            if (p.snapshot and self.iter % p.snapshot == 0) or snap:
                if self._read_losses(origin):  # never snapshot a state that followed a bad loss
                    break
                self.snapshot()
            if stop:
                self.requested_early_exit = True
                break
        if not self.diverged:  # the losses still on the device
            self._read_losses(origin)

    def _read_losses(self, start_iter: int) -> bool:
        """Read the pending losses back from the device (one synchronisation), fold them into the
        smoothed loss in order, and stop at the first that is not finite. True when training diverged
        (data-parallel: in any process; the processes agree)."""
        pending, self._pending = self._pending, []
        bad: tuple[float, int] | None = None
        if pending:
            values = torch.stack([t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float32)
                                  for _, t in pending]).cpu().numpy()
            for (it, _), v in zip(pending, values):
                loss_value = float(f32(v) / f32(self.param.iter_size))
                if not math.isfinite(loss_value):
                    bad = (loss_value, it)
                    break
                self._update_smoothed_loss(loss_value, start_iter, self.param.average_loss, it)
        diverged = bad is not None
        if self.dp is not None:
            diverged = bool(self.dp.agree(diverged)[0])
        if diverged and not self.diverged:
            self._diverge(*(bad or (float("nan"), None)))
        return diverged

    def _diverge(self, loss: float, iteration: int | None = None) -> None:
        """Stop: the loss of ``iteration`` is not finite (None: another data-parallel process's was)."""
        last = self.last_snapshot[1] if self.last_snapshot else None
        kept = f"the last good snapshot is {last}" if last else "no snapshot was written before it"
        if iteration is None:
            log.error("Iteration %d: the loss of another data-parallel process is not finite; stopping. "
                      "No snapshot is written for this state; %s.", self.iter, kept)
        else:
            when = ("stopping before the update" if iteration == self.iter else
                    f"seen at iteration {self.iter} (losses are read back from the device every "
                    f"{self.loss_check_interval} iterations), stopping there")
            log.error("Iteration %d, loss = %s: the loss is not finite; %s. No snapshot is written for this "
                      "state; %s.", iteration, loss, when, kept)
        self.diverged = True
        self.requested_early_exit = True

    def _update_smoothed_loss(self, loss: float, start_iter: int, average_loss: int,
                              iteration: int | None = None) -> None:
        """Caffe's UpdateSmoothedLoss with the loss of ``iteration`` (default: the current one)."""
        it = self.iter if iteration is None else iteration
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = float((f32(self.smoothed_loss) * f32(size - 1) + f32(loss)) / f32(size))
        else:
            idx = (it - start_iter) % average_loss
            self.smoothed_loss = float(f32(self.smoothed_loss) + (f32(loss) - f32(self.losses[idx])) / f32(average_loss))
            self.losses[idx] = loss

    def apply_update(self, display: bool = False, read_back: bool = True) -> None:
        """Caffe's SGDSolver::ApplyUpdate on the gradients the last forward/backward left.
        ``read_back``: this iteration may synchronise with the device (to log gradient clipping)."""
        p = self.param
        step = self.current_step
        rate, self.current_step = learning_rate(p, self.iter, step)
        if p.lr_policy == "multistep" and self.current_step != step:
            log.info("MultiStep Status: Iteration %d, step = %d", self.iter, self.current_step)
        infos = self.net.learnable
        if display:
            log.info("Iteration %d, lr = %s", self.iter, _fmt(rate))
            self.shown["train/lr"] = float(rate)
            if self.monitors:
                self.shown.update(self.regularizers.display_values(infos))
            lines = self.regularizers.display_lines(infos)  # the scnn branch's four sparsity lines
            for line in lines:
                log.info("%s", line)
            if not lines:
                self._log_sparsity(infos)
        if not infos:
            return
        with torch.no_grad():
            grads = [i.param.grad for i in infos]
            self._clip_gradients(grads, read_back or self.loss_check_interval == 1)
            if p.iter_size != 1:
                torch._foreach_mul_(grads, float(f32(1) / f32(p.iter_size)))
            self.penalties = self.regularizers.apply(infos, self.iter, rate, penalty=display)  # logged on display only
            self.rule.compute(grads, UpdateRule.local_rates(rate, [i.lr_mult for i in infos]), self.iter)
            self.rule.apply([i.param for i in infos], grads)
            self.regularizers.after_update(infos, self.iter)  # the scnn branch's masks and zeroing

    def _log_sparsity(self, infos: Sequence[Any]) -> None:
        """The fork's "Sparsity %" line: percent of exact zeros of every weight-decayed parameter."""
        decayed = [i for i in infos if self.param.weight_decay * i.decay_mult]
        if not decayed:
            return
        with torch.no_grad():
            zeros = torch.stack([(i.param == 0).sum() * (100.0 / i.param.numel()) for i in decayed]).cpu().tolist()
        log.info("    Sparsity %%: %s", " ".join(_fmt(f32(z)) for z in zeros))
        self.shown.update({f"sparsity/{i.name}": float(f32(z)) for i, z in zip(decayed, zeros)})

    def _clip_gradients(self, grads: Sequence[torch.Tensor], read_back: bool = True) -> None:
        """Caffe's ClipGradients: the global L2 norm summed in float32 in parameter order, then one
        scale. ``read_back`` False: all on the device, no synchronisation and no log line."""
        clip = float(f32(self.param.clip_gradients))
        if clip < 0 or not grads:
            return
        sumsq = None
        for g in grads:
            d = torch.dot(g.reshape(-1), g.reshape(-1))
            sumsq = d if sumsq is None else sumsq + d
        norm = torch.sqrt(sumsq)
        if read_back:
            n = f32(norm.item())
            if n > clip:
                scale = f32(f32(clip) / n)
                log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                         _fmt(n), _fmt(clip), _fmt(scale))
                torch._foreach_mul_(list(grads), float(scale))
            return
        torch._foreach_mul_(list(grads), torch.where(norm > clip, clip / norm, torch.ones_like(norm)))

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self) -> tuple[str, str]:
        """Write ``<prefix>_iter_<N>.caffemodel[.h5]`` and ``.solverstate[.h5]``; returns both names."""
        from neocaffe.solver.snapshot import write_snapshot

        if self.rank != 0:  # data-parallel: every process holds the same state; the root writes it
            return self.last_snapshot  # type: ignore[return-value]
        start = time.perf_counter()
        self.last_snapshot = write_snapshot(self)
        for m in self.monitors:
            m.on_snapshot(self.iter, self.net, time.perf_counter() - start)
        return self.last_snapshot

    def restore(self, path: str) -> None:
        """Continue from a ``.solverstate`` or ``.solverstate.h5``: iteration, lr step, history, weights,
        and from its companion ``.resume.pt`` when there is one (``load_resume_state``)."""
        from neocaffe.solver.snapshot import restore

        restore(self, path)

    def resume_state(self) -> dict:
        """What a resumed run needs beyond the solverstate, gathered from each owner: the random
        streams, every data layer's read position (train and test nets) and the smoothed-loss window."""
        return {"iter": self.iter, "rng": rng.get_state(), "train_net": self.net.resume_state(),
                "test_nets": [net.resume_state() for net in self.test_nets],
                "losses": [float(v) for v in self.losses], "smoothed_loss": float(self.smoothed_loss),
                "loss_origin": int(self.loss_origin)}

    def load_resume_state(self, state: dict) -> None:
        """Continue from ``resume_state()``'s result: the next ``step`` reads the next batch, draws the
        next random numbers and continues the smoothed-loss window, as the interrupted run would have."""
        parts = [(self.net, state["train_net"])] + list(zip(self.test_nets, state["test_nets"]))
        for net, part in parts:
            for name in net.load_resume_state(part):
                log.warning("the resume state holds a position for layer '%s', which net '%s' lacks", name, net.name)
        self.losses, self.smoothed_loss = [float(v) for v in state["losses"]], float(state["smoothed_loss"])
        self.loss_origin, self._continue_losses = int(state["loss_origin"]), True
        rng.set_state(state["rng"])
