"""Solver snapshots: write ``<prefix>_iter_<N>.caffemodel`` + ``.solverstate`` (BINARYPROTO) or
``.caffemodel.h5`` + ``.solverstate.h5`` (HDF5), and restore from either.

Files are written through neocaffe.io's writers, each to a temporary name renamed into place, the
weights first: an interrupted snapshot never leaves a truncated file under a final name, and a
``.solverstate`` never points at a missing ``.caffemodel``. The solverstate's ``learned_net`` is the
weights file name exactly as written (the snapshot prefix, relative to the working directory), as
Caffe stores it.

Beside each solverstate, ``<solverstate>.resume.pt`` (``torch.save``, read with ``weights_only``) holds what
the Caffe format cannot: every data layer's read position and seeds, the random streams and the
smoothed-loss window (``Solver.resume_state``). With it a resumed run continues the exact trajectory;
without it (a Caffe snapshot) the data restart as Caffe's do.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Protocol

from neocaffe.io.solverstate import SolverState, read_solverstate, write_solverstate, write_solverstate_h5
from neocaffe.proto import caffe_pb2
from neocaffe.solver.nets import SolverError

log = logging.getLogger("neocaffe.solver")
HDF5 = caffe_pb2.SolverParameter.HDF5
BINARYPROTO = caffe_pb2.SolverParameter.BINARYPROTO
RESUME_SUFFIX = ".resume.pt"
RESUME_FORMAT = 1


class RestoreError(ValueError):
    """A solverstate that does not fit the solver it is restored into."""


def snapshot_filename(prefix: str, iteration: int, extension: str) -> str:
    """Caffe's ``SnapshotFilename``: ``<prefix>_iter_<N><extension>``."""
    return f"{prefix}_iter_{iteration}{extension}"


def check_snapshot_prefix(p: Any) -> None:
    """Caffe's CheckSnapshotWritePermissions: with ``snapshot`` set, ``snapshot_prefix`` (SolverParameter)
    must be given and a file beside it writable. Also with only ``snapshot_after_train`` and a
    ``snapshot_prefix`` (else the final snapshot fails after the whole run)."""
    if not (p.snapshot or (p.snapshot_after_train and p.HasField("snapshot_prefix"))):
        return
    if not p.HasField("snapshot_prefix"):
        raise SolverError("In solver params, snapshot is specified but snapshot_prefix is not")
    probe = f"{p.snapshot_prefix}_iter_0.{os.getpid()}.tempfile"  # one per process: data-parallel ranks probe at once
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise SolverError(
            f"Cannot write to snapshot prefix '{p.snapshot_prefix}'. Make sure that the directory exists "
            f"and is writeable (folder '{os.path.dirname(probe) or '.'}': {e.strerror})"
        ) from None


class GoodSnapshots:
    """Which snapshot a diverged run can go back to. A snapshot written at iteration N holds the weights
    iteration N's forward uses, so it is good only once that loss is read back finite: with
    ``snapshot: 1`` the newest snapshot when a loss turns NaN holds the weights that gave the NaN.
    ``good``: the newest confirmed (weights, solverstate) names; ``unconfirmed``: (iteration, names)
    written since, their loss not yet read."""

    def __init__(self) -> None:
        self.good: tuple[str, str] | None = None
        self.unconfirmed: list[tuple[int, tuple[str, str]]] = []

    def written(self, iteration: int, files: tuple[str, str]) -> None:
        self.unconfirmed.append((iteration, files))

    def confirm(self, read: list[int], bad: tuple[float, int] | None, diverged: bool) -> None:
        """The losses of iterations ``read`` came back, in order, up to the ``bad`` one (loss, iteration)
        when one was not finite here; ``diverged``: here or in another data-parallel process (then no
        iteration of this read is known good)."""
        upto = (bad[1] - 1 if bad else None) if diverged else (read[-1] if read else None)
        while upto is not None and self.unconfirmed and self.unconfirmed[0][0] <= upto:
            self.good = self.unconfirmed.pop(0)[1]

    def forget_unconfirmed(self) -> None:
        """A restore: the snapshots written since the last confirmed one are another trajectory's."""
        self.unconfirmed = []

    def describe(self) -> str:
        """For the divergence log line: the last good snapshot, and the newer one not to resume from."""
        text = f"the last good snapshot is {self.good[1]}" if self.good else "no snapshot gave a finite loss before it"
        if self.unconfirmed:
            it, (_, state) = self.unconfirmed[-1]
            text += (f" ({state}, written at iteration {it}, holds weights whose loss is not finite or was not "
                     "read; do not resume from it)")
        return text


class Stateful(Protocol):
    """What ``restore`` needs of a solver (``neocaffe.solver.solver.Solver``)."""

    def load_state(self, state: SolverState, weights: str | None = None, *, log_history: bool = False) -> None: ...

    def load_resume_state(self, state: dict) -> None: ...


def write_snapshot(p: Any, net: Any, state: SolverState, resume: dict) -> tuple[str, str]:
    """Write ``net``'s weights and the solver ``state`` as SolverParameter ``p`` asks (``snapshot_prefix``,
    ``snapshot_format``, ``snapshot_diff``), and ``resume`` (``Solver.resume_state``) beside them;
    returns (weights file, solverstate file)."""
    from neocaffe.io.weights import save_caffemodel, save_caffemodel_h5

    prefix = p.snapshot_prefix
    diff = bool(p.snapshot_diff)
    layers = net.to_weights(with_diffs=diff)
    if p.snapshot_format == HDF5:
        model = snapshot_filename(prefix, state.iter, ".caffemodel.h5")
        log.info("Snapshotting to HDF5 file %s", model)
        save_caffemodel_h5(model, layers, write_diff=diff)
    else:
        model = snapshot_filename(prefix, state.iter, ".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        net_param = caffe_pb2.NetParameter()
        net_param.CopyFrom(net.net_param)
        save_caffemodel(model, layers, net_param=net_param, write_diff=diff)
    state = replace(state, learned_net=model)
    if p.snapshot_format == HDF5:
        path = snapshot_filename(prefix, state.iter, ".solverstate.h5")
        log.info("Snapshotting solver state to HDF5 file %s", path)
        write_solverstate_h5(path, state)
    else:
        path = snapshot_filename(prefix, state.iter, ".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", path)
        write_solverstate(path, state)
    write_resume_state(resume_filename(path), resume, path)
    return model, path


def resume_filename(state_file: str) -> str:
    """The companion of a solverstate: ``<state_file>.resume.pt`` (what a ``.solverstate`` cannot hold
    without becoming unreadable to Caffe: data read positions, random streams, the smoothed loss)."""
    return os.fspath(state_file) + RESUME_SUFFIX


def write_resume_state(path: str, extra: dict, state_file: str) -> None:
    """``torch.save`` of ``extra`` (plain values and tensors) with the solverstate's name and size, to a
    temporary name renamed into place, after the solverstate: a companion never outlives its pair."""
    import torch

    payload = {"format": RESUME_FORMAT, "solverstate": os.path.basename(state_file),
               "solverstate_bytes": os.path.getsize(state_file), **extra}
    from neocaffe.io.files import atomic_path

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def net_resume_state(net: Any) -> dict[str, dict]:
    """Every layer's ``resume_state()`` that is not None (data read positions), by layer name."""
    out: dict[str, dict] = {}
    for name, layer in zip(net.layer_names, net.layers):
        state = layer.resume_state()
        if state is not None:
            out[name] = state
    return out


def load_net_resume_state(net: Any, state: dict[str, dict]) -> list[str]:
    """Give each layer of ``net`` named in ``state`` its part back; returns the names ``net`` has no layer of."""
    names = net.layer_names
    for name, part in state.items():
        if name in names:
            net.layers[names.index(name)].load_resume_state(part)
    return [n for n in state if n not in names]


def read_resume_state(path: str, state_file: str) -> dict | None:
    """The companion's contents, or None (logged) when it belongs to another solverstate."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RestoreError(f"{path}: cannot read this resume companion of {state_file} ({type(e).__name__}: {e}); "
                           "remove it to resume as Caffe does (data read from the start)") from None
    if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
        raise RestoreError(f"{path}: not a neocaffe resume companion of format {RESUME_FORMAT}; received "
                           f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__}")
    if not isinstance(payload.get("solverstate_bytes"), int):  # a damaged companion (its pickle still loads)
        raise RestoreError(f"{path}: a resume companion of {state_file} without the size of its solverstate "
                           f"(solverstate_bytes: {payload.get('solverstate_bytes')!r}); remove it to resume as "
                           "Caffe does (data read from the start)")
    if payload["solverstate_bytes"] != os.path.getsize(state_file):
        log.warning("%s was written with a solverstate of %d bytes; %s has %d: ignoring it (data read from the "
                    "start, as in Caffe)", path, payload["solverstate_bytes"], state_file, os.path.getsize(state_file))
        return None
    return payload


def resolve_learned_net(learned_net: str, state_file: str) -> str:
    """``learned_net`` as Caffe opens it (relative to the working directory); if absent there, the
    file of that name beside the solverstate (snapshots moved together still resume)."""
    if os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.path.abspath(state_file)), os.path.basename(learned_net))
    if os.path.exists(beside):
        log.info("learned_net %s not found from the working directory; using %s beside the solverstate",
                 learned_net, beside)
        return beside
    from neocaffe.io.errors import CaffeFileNotFoundError

    raise CaffeFileNotFoundError(
        learned_net,
        f"no such file (the weights named by {state_file}'s learned_net; looked in the working directory "
        f"{os.getcwd()} and beside the solverstate)",
    )


def restore(solver: Stateful, path: str) -> None:
    """Load iteration, current_step, history and (via learned_net) the weights from ``path``
    (``solver.load_state``), then its ``.resume.pt`` companion (``solver.load_resume_state``)."""
    path = os.fspath(path)
    state = read_solverstate(path)
    weights = resolve_learned_net(state.learned_net, path) if state.learned_net else None
    try:  # Caffe's binary-proto restore (SGDSolver's) logs restoring history; its HDF5 restore is silent
        solver.load_state(state, weights, log_history=not path.endswith(".h5"))
    except RestoreError as e:
        raise RestoreError(f"{path}: {e}") from None
    companion = resume_filename(path)
    extra = read_resume_state(companion, path) if os.path.exists(companion) else None
    try:
        if extra is not None and int(extra["iter"]) != int(state.iter):
            log.warning("%s is for iteration %d, %s for %d: ignoring it (data read from the start, as in Caffe)",
                        companion, int(extra["iter"]), path, int(state.iter))
            extra = None
        if extra is not None:
            log.info("Restoring data positions, random state and smoothed loss from %s", companion)
            solver.load_resume_state(extra)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        # a damaged companion (a random state torch refuses, a missing entry): one error naming it
        raise RestoreError(f"{companion}: cannot restore this resume companion of {path} ({type(e).__name__}: "
                           f"{e}); remove it to resume as Caffe does (data read from the start)") from None
    if extra is None and not os.path.exists(companion):
        log.info("No %s beside the solverstate (a Caffe snapshot): data layers restart from their first "
                 "record and random streams are not restored, as in Caffe", os.path.basename(companion))
