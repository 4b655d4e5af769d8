"""What a snapshot holds of a ``neocaffe.solver.solver.Solver`` and how the solver continues from it (the
bodies of ``Solver.state``, ``load_state``, ``resume_state`` and ``load_resume_state``): the
``.solverstate`` part (Caffe's ``SGDSolver::SnapshotSolverState`` / ``RestoreSolverStateFrom*``: iteration,
lr step, update history; SSD's plateau fields) and the ``.resume.pt`` part (random streams, data read
positions, smoothed-loss window, caffe-jacinto's sparsity state). ``neocaffe.solver.snapshot`` writes and
reads the files.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from neocaffe import rng
from neocaffe.io.solverstate import SolverState
from neocaffe.solver.lr_policy import Plateau
from neocaffe.solver.snapshot import RestoreError, load_net_resume_state, net_resume_state

if TYPE_CHECKING:
    from neocaffe.solver.solver import Solver

log = logging.getLogger("neocaffe.solver")
f32 = np.float32


def solver_state(solver: Solver) -> SolverState:
    """``Solver.state``: iteration, lr step and a host copy of the update rule's history."""
    history = [h.detach().to("cpu").float().numpy().copy() for h in solver.rule.history]
    state = SolverState(solver.iter, None, history, solver.current_step)
    if solver.param.lr_policy == "plateau":  # SSD writes them under every policy; other states stay BVLC's bytes
        state.minimum_loss, state.iter_last_event = solver.plateau.minimum_loss, solver.plateau.iter_last_event
    return state


def load_solver_state(solver: Solver, state: SolverState, weights: str | None = None, *,
                      log_history: bool = False) -> None:
    """``Solver.load_state``: RestoreError, with nothing changed, when the history does not fit."""
    try:
        solver.rule.check_history(state.history)
    except ValueError as e:
        raise RestoreError(str(e)) from None
    if weights:
        solver.net.copy_from(weights)
    solver.iter, solver.current_step = int(state.iter), int(state.current_step)
    if solver.sparsity is not None:  # connectivity and factor from the weights and iteration (companion: exact)
        solver.sparsity.restored(solver.iter)
    solver.plateau = Plateau(float(f32(1e38)) if state.minimum_loss is None else float(f32(state.minimum_loss)),
                           int(state.iter_last_event or 0))  # absent: SSD's proto defaults
    if log_history:  # Caffe's binary-proto restore (SGDSolver's, for every type) says so
        log.info("SGDSolver: restoring history")
    solver.rule.set_history(state.history)


def solver_resume_state(solver: Solver) -> dict:
    """``Solver.resume_state``: gathered from each owner."""
    return {"iter": solver.iter, "rng": rng.get_state(), "train_net": net_resume_state(solver.net),
            "test_nets": [net_resume_state(net) for net in solver.test_nets],
            **solver.loss_monitor.state(), **({"jacinto_sparsity": solver.sparsity.state()} if solver.sparsity else {})}


def load_solver_resume_state(solver: Solver, state: dict) -> None:
    """``Solver.load_resume_state``: each owner takes its part back."""
    parts = [(solver.net, state["train_net"])] + list(zip(solver.test_nets, state["test_nets"]))
    for net, part in parts:
        for name in load_net_resume_state(net, part):
            log.warning("the resume state holds a position for layer '%s', which net '%s' lacks", name, net.name)
    solver.loss_monitor.load_state(state)
    rng.set_state(state["rng"])
    if solver.sparsity is not None:
        solver.sparsity.load_state(state.get("jacinto_sparsity"))
