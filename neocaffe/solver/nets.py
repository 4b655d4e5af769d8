"""Building a solver's nets: the train net and its test nets, with Caffe's NetState precedence
(phase, then the net's own ``state``, then ``train_state``/``test_state``) and the test nets sharing
the train net's parameter storage."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from neocaffe.graph.intelcaffe import warn_solver as warn_intel_solver
from neocaffe.graph.net import Net
from neocaffe.graph.nvcaffe import warn_solver as warn_nvcaffe_solver
from neocaffe.layers.base import TEST, TRAIN, BuildContext
from neocaffe.proto import caffe_pb2
from neocaffe.solver.lr_policy import LRPolicyError

log = logging.getLogger("neocaffe.solver")


class SolverError(ValueError):
    """The solver parameters are inconsistent (Caffe's CHECK failures in Solver::Init)."""


def _read_net(path: str, named_by: str | None = None) -> tuple[Any, Any]:
    """(NetParameter, NetSource): the source lets layer errors name the line. ``named_by``: which
    solver field names ``path`` (``net of solver.prototxt``), said when the file cannot be used."""
    from neocaffe.io.errors import CaffeFileError, CaffeFileNotFoundError
    from neocaffe.io.prototxt import read_net_with_source

    try:  # a Path: the field is a file name even when it holds ':' or '{' (text sniffing is for str)
        return read_net_with_source(Path(path))
    except CaffeFileError as e:  # missing, a folder, unreadable: say which solver named it
        if named_by is None:
            raise
        what = f"{e.what} (the {named_by})"
        if isinstance(e, CaffeFileNotFoundError):
            raise CaffeFileNotFoundError(e.path, what) from None
        raise CaffeFileError(e.path, what, e.expected, e.received) from None


def _upgraded(net_param: Any, source: str) -> Any:
    try:
        from neocaffe.io.upgrade import upgrade_net
    except ImportError:  # pragma: no cover - upgrade module not present
        return net_param
    out = upgrade_net(net_param, source=source)
    return out[0] if isinstance(out, tuple) else out


def _with_state(net_param: Any, phase: int, *overrides: Any) -> Any:
    """A copy of ``net_param`` whose state is phase, then the net's own state, then ``overrides``."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net_param.state)
    for o in overrides:
        if o is not None:
            state.MergeFrom(o)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    out.state.CopyFrom(state)
    return out


def _build(net_param: Any, source: Any, device: Any, context: BuildContext | None = None) -> Net:
    st = net_param.state
    return Net(net_param, st.phase, st.level, list(st.stage), source=source, device=device,
               keep_blob_diffs=False, context=context)


def build_train_net(p: Any, solver_source: str | None, device: Any, context: BuildContext | None = None) -> Net:
    """The train net: exactly one of net, net_param, train_net, train_net_param; state TRAIN, then the
    net's own state, then ``train_state`` (Caffe's Solver::InitTrainNet). ``context``: the
    data-parallel rank and world its data layers read."""
    fields = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
    if len(fields) != 1:
        raise SolverError(
            "SolverParameter must specify exactly one train net using one of these fields: net, net_param, "
            f"train_net, train_net_param; received {', '.join(fields) or 'none'}"
        )
    f = fields[0]
    if f in ("net", "train_net"):
        path = getattr(p, f)
        log.info("Creating training net from %s file: %s", f, path)
        net_param, source = _read_net(path, f"{f} of {solver_source}" if solver_source else None)
    else:
        log.info("Creating training net specified in %s.", f)
        source = f"{solver_source or 'solver'}: {f}"
        net_param = _upgraded(getattr(p, f), source)
    net = _build(_with_state(net_param, TRAIN, p.train_state), source, device, context)
    return net


def build_test_nets(p: Any, solver_source: str | None, device: Any, train_net: Net) -> list[Net]:
    """The test nets (Caffe's Solver::InitTestNets), sharing the train net's parameters."""
    generic = int(p.HasField("net_param")) + int(p.HasField("net"))
    specific = len(p.test_net_param) + len(p.test_net)
    if generic > 1:
        raise SolverError("Both net_param and net_file may not be specified.")
    if (generic and len(p.test_iter) < specific) or (not generic and len(p.test_iter) != specific):
        raise SolverError(
            f"test_iter must be specified for each test network; received {len(p.test_iter)} test_iter for "
            f"{specific} test_net/test_net_param"
        )
    count = specific + (len(p.test_iter) - specific if generic else 0)
    if len(p.test_state) and len(p.test_state) != count:
        raise SolverError(f"test_state must be unspecified or specified once per test net ({count}); "
                          f"received {len(p.test_state)}")
    if not count and p.test_interval > 0 and generic:
        log.warning("test_interval is %d but no test_iter is given: no test net is built and nothing is tested "
                    "(Caffe builds one test net from '%s' per test_iter)", p.test_interval,
                    "net_param" if p.HasField("net_param") else p.net)
    if count and p.test_interval <= 0:
        raise SolverError(f"test_interval must be > 0 when there are test nets; received {p.test_interval}")
    sources: list[tuple[str, Any, Any]] = []  # (what, NetParameter, where its layers are written)
    for i, npm in enumerate(p.test_net_param):
        sources.append(("test_net_param", _upgraded(npm, f"test_net_param[{i}]"), f"test_net_param[{i}]"))
    for path in p.test_net:
        sources.append((f"test_net file: {path}", *_read_net(path, f"test_net of {solver_source}"
                                                            if solver_source else None)))
    for _ in range(count - specific):
        if p.HasField("net_param"):
            sources.append(("net_param", _upgraded(p.net_param, "net_param"), "net_param"))
        else:
            sources.append((f"net file: {p.net}", *_read_net(p.net, f"net of {solver_source}" if solver_source else None)))
    nets = []
    for i, (what, npm, src) in enumerate(sources):
        override = p.test_state[i] if len(p.test_state) else None
        log.info("Creating test net (#%d) specified by %s", i, what)
        net = _build(_with_state(npm, TEST, override), src, device)
        net.share_with(train_net)
        nets.append(net)
    return nets


def check_solver(p: Any, source: str) -> None:
    """Checks of Caffe's ``Solver::Init`` (``average_loss`` and ``iter_size`` at least 1), and the warnings for
    NVCaffe's and Intel Caffe's solver fields neocaffe reads but does not apply (``source``: the file, for them)."""
    warn_nvcaffe_solver(p, source)
    warn_intel_solver(p, source)
    if p.average_loss < 1:
        raise SolverError(f"average_loss should be non-negative (>= 1); received {p.average_loss}")
    if p.iter_size < 1:
        raise SolverError(f"iter_size must be at least 1; received {p.iter_size}")


def solver_device_id(param: Any, rank: int = 0, world: int = 1) -> int:
    """The GPU that ``SolverParameter.device_id`` gives process ``rank`` of ``world``. The field is repeated
    (yjxiong/caffe ``action_recog``, TSN's Caffe; ``device_id: 0`` and ``device_id: [0,1,2,3]`` both read),
    and read as that fork's ``tools/caffe.cpp`` reads it: none listed, GPU 0 (in data-parallel runs the
    process's own index); one process, the first id (a longer list is logged, not ignored: that process uses
    the first id only, and ``caffe train -gpu 0,1,2,3`` or a launcher with one process per id trains on all);
    process ``rank`` of a data-parallel run of ``world`` processes, the ``rank``-th id (the fork under MPI:
    ``device_id(MPI_my_rank)``, with at least as many ids as processes, else an error)."""
    ids = [int(i) for i in param.device_id]
    if world > 1:
        if not ids:
            return int(rank)
        if len(ids) < world:
            raise SolverError(f"device_id lists {len(ids)} device(s) {ids} for {world} processes; expected at "
                              "least one id per process (the fork's CHECK)")
        return ids[rank]
    if len(ids) > 1:
        log.warning("solver device_id lists %d devices %s; this single process uses the first, %d (TSN's "
                    "Caffe reads it so without MPI); run `caffe train -gpu %s` to train on all of them",
                    len(ids), ids, ids[0], ",".join(str(i) for i in ids))
    return ids[0] if ids else 0


def resolve_device(param: Any, device: Any = None) -> torch.device:
    """The device to run on: ``device`` if given, else ``solver_mode``/``device_id`` (GPU falls back
    to the CPU with a warning when CUDA is absent)."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SolverError(f"device {dev} requested but CUDA is not available on this machine")
        if dev.type == "cuda" and dev.index is None:  # 'cuda': the current device, by its index (set_device
            dev = torch.device("cuda", torch.cuda.current_device())  # and device comparisons need one)
        return dev
    if param.solver_mode == caffe_pb2.SolverParameter.GPU:
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            gpu = solver_device_id(param)
            if gpu >= n:
                raise SolverError(f"device_id {gpu} requested; this machine has {n} CUDA device(s)")
            return torch.device("cuda", gpu)
        log.warning("solver_mode is GPU but CUDA is not available: running on the CPU "
                    "(set solver_mode: CPU to silence this, or run where a GPU is)")
    return torch.device("cpu")


def names_solver_file(init: Callable[..., None]) -> Callable[..., None]:
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
