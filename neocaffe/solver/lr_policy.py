"""Learning-rate policies, as pure functions of (SolverParameter, iteration, current_step).

Each returns ``(rate, current_step)``: the rate Caffe's ``SGDSolver::GetLearningRate`` computes for
iteration ``iter`` (a float32 value, returned as a Python float) and the ``current_step`` it leaves
behind (``step`` sets it to ``iter / stepsize``; ``multistep`` advances it by at most one stepvalue per
call, so a resumed run continues from the ``current_step`` stored in its solverstate).

The arithmetic follows Caffe's C++ types: ``float`` parameters, ``pow(float, int)`` promoted to
double (step, exp, multistep), ``pow(float, float)`` and ``exp(float)`` in float (inv, poly, sigmoid).

Intel Caffe's linear warm-up (``warmup_iter``, ``warmup_start_lr``; intel/caffe @ 44d53638
``src/caffe/solvers/sgd_solver.cpp`` ``GetLearningRate``/``GetWarmUpLR``) comes before the policy: while
``0 < iter < warmup_iter`` the rate is ``(iter·base_lr + (warmup_iter − iter)·warmup_start_lr) / warmup_iter`` in
float and the policy is not called (``current_step`` is left as it was: a ``multistep`` run whose first stepvalues
fall inside the warm-up catches up one step per iteration afterwards, as Intel's does). Unset
(``warmup_iter <= 0``) nothing changes. Intel's ``multifixed`` policy (``stagelr``/``stageiter``) is here too.

SSD's ``plateau`` (weiliu89/caffe ``ssd`` @ 7ef9b5cd ``src/caffe/solvers/sgd_solver.cpp`` ``GetLearningRate``; Intel
Caffe's is the same code, after its warm-up) is loss-driven: it reads the smoothed loss (``average_loss``) and keeps
``minimum_loss``/``iter_last_event`` (:class:`Plateau`, saved in the solverstate). It lives in ``LOSS_POLICIES``,
not ``POLICIES``: :func:`schedule` drives every policy with that state, :func:`learning_rate` the others only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

f32 = np.float32

Policy = Callable[[Any, int, int], "tuple[float, int]"]
FLT_MAX = float(np.finfo(np.float32).max)  # SSD's PreSolve: minimum_loss_ = numeric_limits<float>::max()


class LRPolicyError(ValueError):
    """A policy's parameters are missing or out of range, or the policy name is unknown."""


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise LRPolicyError(msg)


def _pow_int(base: float, exponent: int) -> float:
    """C++ ``pow(float, int)``: both promoted to double."""
    return math.pow(float(f32(base)), float(exponent))


def fixed(p: Any, it: int, step: int) -> tuple[float, int]:
    """``base_lr``."""
    return float(f32(p.base_lr)), step


def step_policy(p: Any, it: int, step: int) -> tuple[float, int]:
    """``base_lr · gamma^floor(iter / stepsize)``; sets ``current_step``."""
    _check(p.stepsize > 0, f"lr_policy 'step' needs stepsize > 0; received stepsize = {p.stepsize}")
    _check(p.gamma >= 0, f"lr_policy 'step' needs gamma >= 0; received gamma = {p.gamma}")
    step = it // p.stepsize
    return float(f32(float(f32(p.base_lr)) * _pow_int(p.gamma, step))), step


def exp_policy(p: Any, it: int, step: int) -> tuple[float, int]:
    """``base_lr · gamma^iter``."""
    _check(p.gamma >= 0, f"lr_policy 'exp' needs gamma >= 0; received gamma = {p.gamma}")
    return float(f32(float(f32(p.base_lr)) * _pow_int(p.gamma, it))), step


def inv(p: Any, it: int, step: int) -> tuple[float, int]:
    """``base_lr · (1 + gamma·iter)^(-power)``."""
    _check(p.gamma >= 0, f"lr_policy 'inv' needs gamma >= 0; received gamma = {p.gamma}")
    with np.errstate(all="ignore"):
        b = f32(1) + f32(p.gamma) * f32(it)
        r = f32(p.base_lr) * np.power(b, -f32(p.power), dtype=np.float32)
    return float(f32(r)), step


def multistep(p: Any, it: int, step: int) -> tuple[float, int]:
    """``base_lr · gamma^current_step``; ``current_step`` advances when ``iter`` reaches the next stepvalue."""
    if step < len(p.stepvalue) and it >= p.stepvalue[step]:
        step += 1
    _check(p.gamma >= 0, f"lr_policy 'multistep' needs gamma >= 0; received gamma = {p.gamma}")
    return float(f32(float(f32(p.base_lr)) * _pow_int(p.gamma, step))), step


def poly(p: Any, it: int, step: int) -> tuple[float, int]:
    """``base_lr · (1 - iter/max_iter)^power``."""
    _check(p.max_iter > 0, f"lr_policy 'poly' needs max_iter > 0; received max_iter = {p.max_iter}")
    with np.errstate(all="ignore"):
        b = f32(1) - f32(it) / f32(p.max_iter)
        r = f32(p.base_lr) * np.power(b, f32(p.power), dtype=np.float32)
    return float(f32(r)), step


def sigmoid(p: Any, it: int, step: int) -> tuple[float, int]:
    """``base_lr · 1/(1 + exp(-gamma·(iter - stepsize)))``."""
    _check(p.stepsize > 0, f"lr_policy 'sigmoid' needs stepsize > 0; received stepsize = {p.stepsize}")
    with np.errstate(all="ignore"):
        e = np.exp(-f32(p.gamma) * (f32(it) - f32(p.stepsize)), dtype=np.float32)
        r = f32(p.base_lr) * (f32(1) / (f32(1) + e))
    return float(f32(r)), step


def multifixed(p: Any, it: int, step: int) -> tuple[float, int]:
    """Intel Caffe's ``multifixed`` (intel/caffe @ 44d53638 ``sgd_solver.cpp`` ``GetLearningRate``; its YOLOv2 solver):
    ``stagelr[k]`` for the first stage ``k`` with ``iter <= stageiter[k]``, the last stage's once ``iter`` is past them
    all. ``stagelr`` and ``stageiter`` must have one entry per stage (Intel's ``CHECK_EQ``); none at all is an error
    here (Intel reads ``stagelr(-1)``). ``current_step`` is left as it was."""
    n = len(p.stagelr)
    _check(len(p.stageiter) == n, f"lr_policy 'multifixed' needs one stageiter per stagelr; received {len(p.stageiter)} "
           f"stageiter and {n} stagelr")
    _check(n > 0, "lr_policy 'multifixed' needs at least one stagelr/stageiter pair; received none")
    stage = next((k for k in range(n) if it <= p.stageiter[k]), n - 1)
    return float(f32(p.stagelr[stage])), step


POLICIES: dict[str, Policy] = {
    "fixed": fixed,
    "step": step_policy,
    "exp": exp_policy,
    "inv": inv,
    "multistep": multistep,
    "poly": poly,
    "sigmoid": sigmoid,
    "multifixed": multifixed,
}


@dataclass(frozen=True)
class Plateau:
    """The ``plateau`` policy's bookkeeping (SSD's ``SGDSolver::minimum_loss_``/``iter_last_event_``, SolverState
    ``minimum_loss``/``iter_last_event``): the lowest smoothed loss seen (float32) and the iteration of the last event
    (a new minimum or a step). Fresh: ``FLT_MAX`` and 0 (SSD's ``PreSolve``; its ``iter_last_event_`` is left
    uninitialised)."""

    minimum_loss: float = FLT_MAX
    iter_last_event: int = 0


def plateau(p: Any, it: int, step: int, smoothed_loss: float, state: Plateau) -> tuple[float, int, Plateau]:
    """SSD's ``plateau``: ``base_lr · gamma^current_step``. First a smoothed loss below ``minimum_loss`` becomes the
    minimum (an event at ``iter``); then, while ``current_step < len(plateau_winsize)``, ``iter >= iter_last_event +
    plateau_winsize[current_step]`` advances ``current_step`` by one (an event at ``iter``). Float32 comparison, as
    ``Dtype``. Checks SSD lacks: at least one ``plateau_winsize``, each >= 1, and ``gamma >= 0``."""
    winsize = list(p.plateau_winsize)
    _check(len(winsize) > 0, "lr_policy 'plateau' needs at least one plateau_winsize; received none")
    _check(all(w >= 1 for w in winsize), f"lr_policy 'plateau' needs every plateau_winsize >= 1; received {winsize}")
    _check(p.gamma >= 0, f"lr_policy 'plateau' needs gamma >= 0; received gamma = {p.gamma}")
    minimum, last = f32(state.minimum_loss), int(state.iter_last_event)
    if f32(smoothed_loss) < minimum:
        minimum, last = f32(smoothed_loss), it
    if step < len(winsize) and it >= last + winsize[step]:
        step, last = step + 1, it
    return float(f32(float(f32(p.base_lr)) * _pow_int(p.gamma, step))), step, Plateau(float(minimum), last)


LOSS_POLICIES = {"plateau": plateau}  # (p, iter, current_step, smoothed_loss, Plateau) -> (rate, current_step, Plateau)


def get_policy(name: str) -> Callable[..., tuple]:
    """The policy function for ``name`` (``POLICIES`` or ``LOSS_POLICIES``); the error lists the valid names."""
    policy = POLICIES.get(name) or LOSS_POLICIES.get(name)
    if policy is None:
        shown = f"'{name}'" if name else "none (lr_policy is not set)"
        raise LRPolicyError(
            f"Unknown learning rate policy: {shown}; valid policies: {', '.join([*POLICIES, *LOSS_POLICIES])}"
        )
    return policy


def check_policy(solver_param: Any) -> None:
    """Fail now on an unknown policy or its bad parameters (warm-up or not), as the first call would."""
    policy = get_policy(solver_param.lr_policy)
    if policy in LOSS_POLICIES.values():
        policy(solver_param, 0, 0, 0.0, Plateau())
    else:
        policy(solver_param, 0, 0)


def warmup_rate(solver_param: Any, iteration: int) -> float | None:
    """Intel Caffe's warm-up rate for ``iteration`` (``GetWarmUpLR``, a negative iteration counts as 0), or None
    outside the warm-up (``warmup_iter <= 0`` or ``iteration >= warmup_iter``). Float arithmetic as its C++:
    ``(float(iter)·base_lr + float(warmup_iter − iter)·warmup_start_lr) / float(warmup_iter)``."""
    w = int(solver_param.warmup_iter)
    if w <= 0 or iteration >= w:
        return None
    it = max(int(iteration), 0)
    with np.errstate(all="ignore"):
        r = (f32(it) * f32(solver_param.base_lr) + f32(w - it) * f32(solver_param.warmup_start_lr)) / f32(w)
    return float(f32(r))


def learning_rate(solver_param: Any, iteration: int, current_step: int = 0) -> tuple[float, int]:
    """``(rate, current_step)`` for ``iteration`` under ``solver_param.lr_policy``, after Intel Caffe's warm-up
    (:func:`warmup_rate`) when ``warmup_iter`` is set. An unknown policy fails even inside the warm-up."""
    policy = get_policy(solver_param.lr_policy)
    if policy in LOSS_POLICIES.values():
        raise LRPolicyError(f"lr_policy '{solver_param.lr_policy}' follows the smoothed loss; use schedule()")
    rate = warmup_rate(solver_param, int(iteration))
    if rate is not None:
        return rate, int(current_step)
    return policy(solver_param, int(iteration), int(current_step))


def schedule(solver_param: Any, iteration: int, current_step: int = 0, smoothed_loss: float = 0.0,
             state: Plateau = Plateau()) -> tuple[float, int, Plateau]:
    """``(rate, current_step, state)`` for any policy: :func:`learning_rate`'s, ``state`` unchanged, for those of
    ``POLICIES``; ``plateau`` with ``smoothed_loss`` (the solver's, including this iteration's loss) and ``state``.
    Inside Intel's warm-up no policy runs: ``current_step`` and ``state`` are left as they were."""
    policy = get_policy(solver_param.lr_policy)
    if policy not in LOSS_POLICIES.values():
        return (*learning_rate(solver_param, iteration, current_step), state)
    rate = warmup_rate(solver_param, int(iteration))
    if rate is not None:
        return rate, int(current_step), state
    return policy(solver_param, int(iteration), int(current_step), smoothed_loss, state)


__all__ = ["FLT_MAX", "LOSS_POLICIES", "POLICIES", "LRPolicyError", "Plateau", "check_policy", "get_policy",
           "learning_rate", "schedule", "warmup_rate"]
