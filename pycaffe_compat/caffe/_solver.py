"""pycaffe's solvers: ``caffe.SGDSolver(path)`` ... ``caffe.AdamSolver(path)``, ``caffe.get_solver(path)``,
over neocaffe's core Solver; and Caffe's multi-process hooks (solver count/rank, ``caffe.NCCL``)
mapped onto ``torch.distributed``.

As in pycaffe, the solver runs where ``caffe.set_mode_cpu/gpu`` and ``caffe.set_device`` say; the
file's ``solver_mode`` is ignored. ``solver.net`` and ``solver.test_nets`` are ``caffe.Net`` views
of the solver's own nets; the test nets share the train net's weights, so writing
``solver.net.params[...][0].data`` (or ``solver.net.copy_from(...)``) changes what they compute.

Under pycaffe the solver's nets run Caffe's layer-by-layer backward, so after ``step`` every blob's
``diff`` holds what the last iteration's backward left, as in Caffe (``caffe train`` runs the nets
without blob diffs, which is faster on small nets).
"""
from __future__ import annotations

import logging
import os
import tempfile
import uuid
from typing import Any, Callable

from neocaffe.graph.timing import now
from neocaffe.proto import caffe_pb2
from neocaffe.solver.rules import rule_name
from neocaffe.solver.solver import Solver as CoreSolver

from caffe import _mode
from caffe._blob import HostMirrors
from caffe._net import Net

__all__ = [
    "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
    "AdamSolver", "get_solver", "set_solver_count", "set_solver_rank", "set_multiprocess", "solver_count",
    "solver_rank", "multiprocess", "NCCL", "has_nccl", "init_log", "log", "Timer",
]


def _read_solver(source: Any) -> Any:
    if isinstance(source, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        return param, None
    from neocaffe.io.prototxt import read_solver

    path = os.fspath(source)
    return read_solver(path), path


class Solver:
    """A pycaffe solver: ``net``, ``test_nets``, ``iter``, ``param``, ``step(n)``, ``solve()``,
    ``snapshot()``, ``restore(path)``, ``apply_update()``, ``add_callback(on_start,
    on_gradients_ready)``, ``share_weights(net)``.

    ``Solver(path)`` (or ``caffe.get_solver(path)``) uses the type the file names; the typed
    classes (``SGDSolver`` ...) use their own type whatever the file says, as Caffe's do.
    """

    _type: str | None = None

    def __init__(self, solver_file: Any) -> None:
        self._setup(*_read_solver(solver_file))

    def _setup(self, param: Any, path: str | None) -> None:
        if self._type is not None:
            param.type = self._type
            param.ClearField("solver_type")
        self._solver = CoreSolver(param, device=_mode.current_device(), source=path)
        # pycaffe reads blob diffs after a step, as Caffe's: the nets run Caffe's layer-by-layer backward
        for core in [self._solver.net, *self._solver.test_nets]:
            core.set_keep_blob_diffs(True)
        # the nets share their weights, so they share one set of host mirrors too
        self._mirrors = HostMirrors()
        self._net = Net.from_core(self._solver.net, self._mirrors)
        self._test_nets = [Net.from_core(n, self._mirrors) for n in self._solver.test_nets]

    # -- views ----------------------------------------------------------------------------------
    @property
    def net(self) -> Net:
        """The train net (a ``caffe.Net`` over the solver's own)."""
        return self._net

    @property
    def test_nets(self) -> list[Net]:
        """The test nets, sharing the train net's weights."""
        return list(self._test_nets)

    @property
    def iter(self) -> int:
        """Iterations done so far."""
        return int(self._solver.iter)

    @property
    def param(self) -> Any:
        """The SolverParameter (treat as read-only, as Caffe's is const)."""
        return self._solver.param

    @property
    def type(self) -> str:
        """The update rule: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta or Adam."""
        return self._solver.type

    # -- host/device hand-over ------------------------------------------------------------------
    def _before(self) -> None:
        """Write NumPy edits of the views back to the device (no-op on the CPU)."""
        self._mirrors.push()

    def _after(self) -> None:
        """The solver wrote on the device: the next read of each view sees its values."""
        self._mirrors.device_wrote()

    # -- training -------------------------------------------------------------------------------
    def step(self, iters: int) -> None:
        """Run ``iters`` training iterations (testing, displaying and snapshotting on their intervals)."""
        self._before()
        try:
            self._solver.step(int(iters))
        finally:
            self._after()

    def solve(self, resume_file: str | None = None) -> None:
        """Train to ``max_iter``, first restoring ``resume_file`` (a .solverstate) if given."""
        self._before()
        try:
            self._solver.solve(resume_file or None)
        finally:
            self._after()

    def apply_update(self) -> None:
        """Update the weights from the current parameter diffs (Caffe's ApplyUpdate; ``iter``
        is not advanced)."""
        self._before()
        try:
            self._solver.apply_update()
        finally:
            self._after()

    def snapshot(self) -> None:
        """Write ``<snapshot_prefix>_iter_<iter>.caffemodel`` and ``.solverstate`` (or .h5 forms)."""
        self._before()
        self._solver.snapshot()

    def restore(self, state_file: str) -> None:
        """Continue from a .solverstate[.h5]: iteration, learning-rate step, history and weights."""
        self._before()
        try:
            self._solver.restore(os.fspath(state_file))
        finally:
            self._after()

    def add_callback(self, on_start: Any, on_gradients_ready: Callable[[], None] | None = None) -> None:
        """Call ``on_start()`` before each iteration's forward and ``on_gradients_ready()`` after its
        backward, before the update; or register an object with those two methods (e.g. a
        ``caffe.NCCL``)."""
        if on_gradients_ready is None and hasattr(on_start, "on_gradients_ready"):
            obj = on_start
            on_start, on_gradients_ready = obj.on_start, obj.on_gradients_ready
        self._solver.add_callback(on_start=self._wrapped(on_start),
                                  on_gradients_ready=self._wrapped(on_gradients_ready))

    def _wrapped(self, fn: Callable[[], None] | None) -> Callable[[], None]:
        def call() -> None:
            if fn is None:
                return
            self._after()
            try:
                fn()
            finally:
                self._before()

        return call

    def share_weights(self, net: Net) -> None:
        """Make ``net`` use this solver's train-net weights for layers of the same name."""
        net.share_with(self._net)

    def __repr__(self) -> str:
        return f"<caffe.{type(self).__name__} type={self.type} iter={self.iter}>"


class SGDSolver(Solver):
    _type = "SGD"


class NesterovSolver(Solver):
    _type = "Nesterov"


class AdaGradSolver(Solver):
    _type = "AdaGrad"


class RMSPropSolver(Solver):
    _type = "RMSProp"


class AdaDeltaSolver(Solver):
    _type = "AdaDelta"


class AdamSolver(Solver):
    _type = "Adam"


_CLASSES: dict[str, type[Solver]] = {
    cls._type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)
}


def get_solver(solver_file: Any) -> Solver:
    """A solver of the class for the type the solver prototxt names (``type: "Adam"`` gives an
    ``AdamSolver``; legacy ``solver_type`` too), as Caffe's SolverRegistry creates."""
    param, path = _read_solver(solver_file)
    cls = _CLASSES.get(rule_name(param), Solver)  # an unknown type: the base class reports it
    solver = cls.__new__(cls)
    solver._setup(param, path)
    return solver


# ---------------------------------------------------------------------------------------------
# Multi-process training: Caffe's solver count/rank and NCCL, on torch.distributed
# ---------------------------------------------------------------------------------------------
_multi = {"count": 1, "rank": 0, "multiprocess": False}


def set_solver_count(count: int) -> None:
    """Number of solvers (processes) training together."""
    if int(count) < 1:
        raise ValueError(f"caffe.set_solver_count: the count must be >= 1; received {count}")
    _multi["count"] = int(count)


def set_solver_rank(rank: int) -> None:
    """This process's solver rank (0 is the root, which logs and snapshots)."""
    if int(rank) < 0:
        raise ValueError(f"caffe.set_solver_rank: the rank must be >= 0; received {rank}")
    _multi["rank"] = int(rank)


def set_multiprocess(value: bool) -> None:
    """Whether solvers run in separate processes (the only way neocaffe runs several)."""
    _multi["multiprocess"] = bool(value)


def solver_count() -> int:
    return _multi["count"]


def solver_rank() -> int:
    return _multi["rank"]


def multiprocess() -> bool:
    return _multi["multiprocess"]


def has_nccl() -> bool:
    """True: gradients are averaged over processes with torch.distributed (NCCL on CUDA, gloo on CPU)."""
    try:
        import torch.distributed as dist

        return dist.is_available()
    except ImportError:  # pragma: no cover
        return False


def _uid_text(uid: bytes | str) -> str:
    """The torch.distributed init address a uid names (``bytes`` from ``new_uid()``, or text)."""
    if isinstance(uid, (bytes, bytearray)):
        try:
            return bytes(uid).decode()
        except UnicodeDecodeError:
            raise ValueError(f"caffe.NCCL: the uid is not one NCCL.new_uid() made; received {bytes(uid)[:32]!r}")
    return str(uid)


class NCCL:
    """``caffe.NCCL(solver, uid)``: joins this process to the group named by ``uid`` (from
    ``NCCL.new_uid()`` in the parent) as rank ``caffe.solver_rank()`` of ``caffe.solver_count()``,
    using torch.distributed (NCCL backend on CUDA, gloo on the CPU).

    ``bcast()`` copies rank 0's weights to every rank; registered with
    ``solver.add_callback(nccl)`` it averages the gradients over the ranks before each update,
    as Caffe's NCCL does. Each rank reads its own data: give each process its own source (or
    shuffle with different seeds).
    """

    def __init__(self, solver: Solver, uid: bytes | str) -> None:
        import torch.distributed as dist

        from neocaffe.solver.parallel import DataParallel

        if not dist.is_available():
            raise RuntimeError("caffe.NCCL: this PyTorch build has no torch.distributed")
        self.solver = solver
        count, rank = solver_count(), solver_rank()
        if not dist.is_initialized() and rank >= count:
            raise ValueError(f"caffe.NCCL: solver rank {rank} is not below the solver count {count}; "
                             "call caffe.set_solver_count and caffe.set_solver_rank first")
        # buckets, Caffe's float32 1/W scaling and the backend choice live in DataParallel
        self.parallel = DataParallel(solver._solver.device, init_method=_uid_text(uid), world_size=count, rank=rank)

    @staticmethod
    def new_uid() -> bytes:
        """A rendezvous address for one group of solvers (a fresh file in the temp folder), as
        ``bytes`` like BVLC's ``NCCL.new_uid()`` on Python 3 (its ncclUniqueId)."""
        path = os.path.join(tempfile.gettempdir(), f"neocaffe_nccl_{uuid.uuid4().hex}")
        return ("file://" + path).encode()

    def _params(self) -> list[Any]:
        return [info.param for info in self.solver._solver.net.learnable]

    def bcast(self) -> None:
        """Copy the root's (rank 0's) weights to every rank."""
        self.parallel.broadcast([p.data for p in self._params()], src=0)

    def on_start(self) -> None:
        pass

    def on_gradients_ready(self) -> None:
        """Average the parameter gradients over the ranks (sum, then x float32(1/W), as Caffe's NCCL)."""
        self.parallel.average_gradients([p.grad for p in self._params()])


# ---------------------------------------------------------------------------------------------
# Logging and timing (pycaffe's init_log, log, Timer; used by Caffe's python/train.py)
# ---------------------------------------------------------------------------------------------
_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


def init_log(level: int = 0, stderr: bool = True) -> None:
    """Show neocaffe's log lines (solver progress, ...) on stderr in glog's format, from
    ``level`` up (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL). ``stderr`` is accepted for pycaffe's
    signature; lines always go to stderr."""
    from neocaffe.cli.log import setup

    setup(level=_LEVELS.get(int(level), logging.INFO))


def log(message: str) -> None:
    """Write one INFO line to the log (Caffe's ``LOG(INFO) << message``)."""
    logging.getLogger("neocaffe.caffe").info("%s", message)


class Timer:
    """pycaffe's ``caffe.Timer``: ``start()``, ``stop()``, ``ms`` (elapsed milliseconds of the
    last start..stop; CUDA work is waited for in GPU mode)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._ms = 0.0

    def start(self) -> None:
        self._start = now(_mode.current_device())

    def stop(self) -> None:
        if self._start is not None:
            self._ms = (now(_mode.current_device()) - self._start) * 1000.0
            self._start = None

    @property
    def ms(self) -> float:
        return self._ms
