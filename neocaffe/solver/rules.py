"""Update rules in Caffe's exact math: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

Each rule turns the (normalized, regularized) gradients into update values *in place* — Caffe's
``ComputeUpdateValue`` writes into the parameter diff — and the solver then applies ``w -= diff``
(``Net::Update``). The work is batched over all parameters with ``torch._foreach_*`` ops.

``history`` has Caffe's layout, so a ``.solverstate`` maps onto it one to one: one blob per learnable
parameter (in ``learnable_params`` order, each of its parameter's shape); AdaDelta and Adam append a
second set after the first (``history[N + i]`` is parameter ``i``'s second moment).

Scalars follow Caffe's float32 arithmetic (``local_rate = rate × lr_mult`` in float, Adam's bias
correction in double then float); they are never folded into other constants. Intel Caffe's LARS
(``local_lr_auto``/``local_gw_ratio``) replaces the ``lr_mult`` of each blob by its own ratio of norms:
:func:`lars_multipliers`, which the solver calls before the regularizers.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe.solver.lr_policy import warmup_rate

f32 = np.float32


class UpdateRule:
    """Base class: owns the history blobs; ``compute`` rewrites the gradients as update values."""

    type_name: ClassVar[str] = ""
    history_sets: ClassVar[int] = 1

    def __init__(self, solver_param: Any, params: Sequence[Tensor]) -> None:
        self.param = solver_param
        self.history: list[Tensor] = [
            torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
            for _ in range(self.history_sets)
            for p in params
        ]
        self.n = len(params)

    # -- to override ------------------------------------------------------------------------
    def compute(self, grads: list[Tensor], local_rates: list[float], iteration: int) -> None:
        """Replace each gradient (in place) by its update value for ``iteration``."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    @staticmethod
    def local_rates(rate: float, lr_mults: Sequence[float]) -> list[float]:
        """``rate × lr_mult`` in float32 for each parameter (Caffe's ``local_rate``)."""
        r = f32(rate)
        return [float(r * f32(m)) for m in lr_mults]

    @staticmethod
    def apply(params: Sequence[Tensor], updates: Sequence[Tensor]) -> None:
        """``w -= update`` for every parameter (``Net::Update``)."""
        with torch.no_grad():
            torch._foreach_sub_([p.data for p in params], list(updates))

    def check_history(self, blobs: Sequence[Any]) -> None:
        """ValueError unless ``blobs`` (arrays or tensors, Caffe's order) fit this rule's history slots."""
        if len(blobs) != len(self.history):
            raise ValueError(
                f"Incorrect length of history blobs: the {self.type_name} solver keeps {len(self.history)} "
                f"({self.history_sets} per learnable parameter, {self.n} parameters); received {len(blobs)}"
            )
        for i, (slot, b) in enumerate(zip(self.history, blobs)):
            shape = tuple(b.shape) if isinstance(b, Tensor) else np.shape(b)
            if math.prod(shape) != slot.numel():
                raise ValueError(
                    f"history blob {i} has {math.prod(shape)} values (shape {shape}); the parameter "
                    f"it belongs to has {slot.numel()} (shape {tuple(slot.shape)})"
                )

    def set_history(self, blobs: Sequence[Any]) -> None:
        """Load history blobs (arrays or tensors) in Caffe's order; each must match its slot's count
        (checked for all before any is loaded)."""
        self.check_history(blobs)
        for slot, b in zip(self.history, blobs):
            t = torch.as_tensor(np.asarray(b, dtype=np.float32) if not isinstance(b, Tensor) else b)
            slot.copy_(t.reshape(slot.shape).to(slot.device, torch.float32))

    def to(self, device: torch.device | str) -> "UpdateRule":
        self.history = [h.to(device) for h in self.history]
        return self


class SGD(UpdateRule):
    """``v = momentum·v + local_rate·g;  update = v``.

    ``warmup_momentum_correction`` (default False): Intel Caffe's ``SGDSolver::ComputeUpdateValue`` scales the
    momentum during its warm-up (``warmup_iter``) by ``rate / prev_rate`` (this iteration's warm-up rate over the
    last one's, in float); that function runs only where ``ENABLE_SGD_FUSION`` is off or in GPU mode. Intel's
    CPU builds (g++ >= 4.9 or icc, its Makefile and CMake both) define ``ENABLE_SGD_FUSION``, and their ``SGD``
    updates through ``SGDFusion``, which applies the warm-up rate with the momentum unchanged: the default here.
    Set it True for Intel's unfused path."""

    type_name = "SGD"
    warmup_momentum_correction: bool = False

    def compute(self, grads: list[Tensor], local_rates: list[float], iteration: int) -> None:
        m = f32(self.param.momentum)
        if self.warmup_momentum_correction:
            rate = warmup_rate(self.param, iteration)
            if rate is not None:  # Intel's GetWarmUpLR(iter - 1) counts iteration -1 as 0
                with np.errstate(all="ignore"):
                    m = f32(m * (f32(rate) / f32(warmup_rate(self.param, iteration - 1))))
        m = float(m)
        h = self.history
        torch._foreach_mul_(grads, local_rates)  # the diff is overwritten below: scale it in place
        torch._foreach_mul_(h, m)
        torch._foreach_add_(h, grads)
        torch._foreach_copy_(grads, h)


class Nesterov(UpdateRule):
    """``v' = momentum·v + local_rate·g;  update = (1+momentum)·v' − momentum·v``."""

    type_name = "Nesterov"

    def compute(self, grads: list[Tensor], local_rates: list[float], iteration: int) -> None:
        m = f32(self.param.momentum)
        h = self.history
        back = torch._foreach_mul(h, float(-m))
        torch._foreach_mul_(h, float(m))
        torch._foreach_mul_(grads, local_rates)
        torch._foreach_add_(h, grads)
        torch._foreach_add_(back, h, alpha=float(f32(1) + m))
        torch._foreach_copy_(grads, back)


class AdaGrad(UpdateRule):
    """``h += g²;  update = local_rate · g / (sqrt(h) + delta)``."""

    type_name = "AdaGrad"

    def compute(self, grads: list[Tensor], local_rates: list[float], iteration: int) -> None:
        delta = float(f32(self.param.delta))
        h = self.history
        torch._foreach_add_(h, torch._foreach_mul(grads, grads))
        den = torch._foreach_sqrt(h)
        torch._foreach_add_(den, delta)
        torch._foreach_div_(grads, den)
        torch._foreach_mul_(grads, local_rates)


class RMSProp(UpdateRule):
    """``h = (1−rms_decay)·g² + rms_decay·h;  update = local_rate · g / (sqrt(h) + delta)``."""

    type_name = "RMSProp"

    def compute(self, grads: list[Tensor], local_rates: list[float], iteration: int) -> None:
        d = f32(self.param.rms_decay)
        delta = float(f32(self.param.delta))
        h = self.history
        sq = torch._foreach_mul(grads, grads)
        torch._foreach_mul_(h, float(d))
        torch._foreach_add_(h, sq, alpha=float(f32(1) - d))
        den = torch._foreach_sqrt(h)
        torch._foreach_add_(den, delta)
        torch._foreach_div_(grads, den)
        torch._foreach_mul_(grads, local_rates)


class AdaDelta(UpdateRule):
    """Zeiler's AdaDelta as Caffe computes it; ``history[:N]`` = E[g²], ``history[N:]`` = E[Δx²]."""

    type_name = "AdaDelta"
    history_sets = 2

    def compute(self, grads: list[Tensor], local_rates: list[float], iteration: int) -> None:
        m = f32(self.param.momentum)
        one_m = float(f32(1) - m)
        delta = float(f32(self.param.delta))
        hg, hu = self.history[: self.n], self.history[self.n :]
        torch._foreach_mul_(hg, float(m))
        torch._foreach_add_(hg, torch._foreach_mul(grads, grads), alpha=one_m)
        num = torch._foreach_add(hu, delta)
        den = torch._foreach_add(hg, delta)
        torch._foreach_div_(num, den)
        torch._foreach_sqrt_(num)
        torch._foreach_mul_(grads, num)
        torch._foreach_mul_(hu, float(m))
        torch._foreach_add_(hu, torch._foreach_mul(grads, grads), alpha=one_m)
        torch._foreach_mul_(grads, local_rates)


class Adam(UpdateRule):
    """Adam with Caffe's bias correction folded into the rate; ``history[:N]`` = m, ``history[N:]`` = v."""

    type_name = "Adam"
    history_sets = 2

    def compute(self, grads: list[Tensor], local_rates: list[float], iteration: int) -> None:
        b1 = f32(self.param.momentum)
        b2 = f32(self.param.momentum2)
        eps = float(f32(self.param.delta))
        t = iteration + 1
        correction = f32(math.sqrt(1.0 - math.pow(float(b2), t)) / (1.0 - math.pow(float(b1), t)))
        m, v = self.history[: self.n], self.history[self.n :]
        torch._foreach_mul_(m, float(b1))
        torch._foreach_add_(m, grads, alpha=float(f32(1) - b1))
        torch._foreach_mul_(v, float(b2))
        torch._foreach_add_(v, torch._foreach_mul(grads, grads), alpha=float(f32(1) - b2))
        den = torch._foreach_sqrt(v)
        torch._foreach_add_(den, eps)
        upd = torch._foreach_div(m, den)
        torch._foreach_mul_(upd, [float(f32(r) * correction) for r in local_rates])
        torch._foreach_copy_(grads, upd)


RULES: dict[str, type[UpdateRule]] = {
    cls.type_name: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)
}

#: the old ``solver_type`` enum (SGD = 0 ... ADAM = 5) -> ``type`` string
LEGACY_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def lars_multipliers(solver_param: Any, params: Sequence[Tensor], grads: Sequence[Tensor],
                     lr_mults: Sequence[float]) -> list[float]:
    """The per-blob multipliers of ``rate`` (Caffe's ``params_lr``, Intel's ``GetLocalRate``): ``lr_mults`` unchanged
    unless Intel Caffe's LARS is on (``local_lr_auto`` with an ``SGD`` solver), else, for each blob,
    ``local_gw_ratio·‖w‖ / (‖g‖ + weight_decay·‖w‖)`` in float (1 where either norm is 0, or not a number) in place of
    its ``lr_mult`` when ``lr_mult > 0`` (a blob with ``lr_mult <= 0`` keeps it: LARS does not multiply ``lr_mult``).

    intel/caffe @ 44d53638 ``sgd_solver.cpp``: ``GetLocalRate`` reads the norms after ``Normalize`` (÷ iter_size) and
    gradient clipping and before ``Regularize`` (weight decay), in both its fused CPU SGD (``SGDFusion``, what its
    ``ENABLE_SGD_FUSION`` CPU builds run) and its unfused one (``ComputeUpdateValue``, which calls ``Regularize`` only
    after ``GetLocalRate`` for ``SGD``); ``weight_decay`` is the solver's (not × ``decay_mult``, whatever
    ``regularization_type``); momentum is unchanged. Nesterov, AdaGrad, RMSProp, AdaDelta and Adam read ``params_lr``
    directly: LARS changes nothing for them. Call with the gradients after ÷ iter_size and before the regularizers.
    ``‖·‖``: ``sqrt`` in float of the sum of squares rounded to float (summed here in double; Intel: MKL's
    ``cblas_sdot`` in float, in MKL's order). One host synchronisation per iteration while LARS is on."""
    mults = [float(m) for m in lr_mults]
    if not solver_param.local_lr_auto or rule_name(solver_param) != "SGD" or not params:
        return mults
    sums = torch.stack([t.detach().reshape(-1).double().square().sum() for ts in (params, grads) for t in ts])
    norms = np.sqrt(sums.cpu().numpy().astype(np.float32))  # float sumsq, float sqrt
    w_norm, g_norm = norms[: len(params)], norms[len(params):]
    ratio, wd = f32(solver_param.local_gw_ratio), f32(solver_param.weight_decay)
    out = []
    with np.errstate(all="ignore"):
        for m, wn, gn in zip(mults, w_norm, g_norm):
            r = f32(1)
            if wn > 0 and gn > 0:
                r = f32(ratio * wn) / f32(gn + f32(wd * wn))
            out.append(float(f32(r)) if f32(m) > 0 else m)
    return out


def rule_name(solver_param: Any) -> str:
    """The solver type: ``type`` if set, else the legacy ``solver_type`` enum, else ``SGD``."""
    if solver_param.HasField("type"):
        return solver_param.type
    if solver_param.HasField("solver_type"):
        return LEGACY_TYPES.get(int(solver_param.solver_type), str(solver_param.solver_type))
    return solver_param.type  # default "SGD"


def make_rule(solver_param: Any, params: Sequence[Tensor]) -> UpdateRule:
    """The update rule the solver parameter names, with zeroed history for ``params``."""
    name = rule_name(solver_param)
    try:
        cls = RULES[name]
    except KeyError:
        raise ValueError(f"Unknown solver type: '{name}'; known types: {', '.join(RULES)}") from None
    _check(cls, solver_param)
    return cls(solver_param, params)


def _check(cls: type[UpdateRule], p: Any) -> None:
    # Caffe's CHECKs in the solver constructors
    if cls is AdaGrad and p.momentum != 0:
        raise ValueError("Momentum cannot be used with AdaGrad.")
    if cls is RMSProp:
        if p.momentum != 0:
            raise ValueError("Momentum cannot be used with RMSProp.")
        if not (0 <= p.rms_decay < 1):
            raise ValueError(f"rms_decay should lie between 0 and 1; received {p.rms_decay}")
    if cls is Adam:  # beta2 = 1 zeroes the bias correction, > 1 takes a negative root; beta1 = 1 divides by 0
        for field in ("momentum", "momentum2"):
            value = getattr(p, field)
            if not (0 <= value < 1):
                raise ValueError(f"Adam's {field} (beta{1 if field == 'momentum' else 2}) must lie in [0, 1); "
                                 f"received {field}: {value:.7g}")


__all__ = ["UpdateRule", "SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "RULES", "make_rule", "rule_name",
           "lars_multipliers"]
