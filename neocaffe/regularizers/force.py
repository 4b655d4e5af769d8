"""Force regularization: Wen et al., "Coordinating Filters for Faster Deep Neural Networks" (ICCV 2017).

The fork (``SGDSolver::ForceRegularize``) pulls the filters of a layer towards each other on the unit
sphere, so that after training they span a low-rank space and ``neocaffe.tools.lowrank`` can drop most
of them. It runs after Normalize and L2/L1 weight decay and before the update rule, on every weight
with two or more axes whose ParamSpec has a non-zero ``force_mult``.

Here it is in matrix form over the whole weight. Rows are the filters flattened, ``w_i``, with lengths
``l_i = |w_i|`` and directions ``n_i = w_i / l_i``; ``d_ij = |n_i - n_j|``. A pair (i, j) counts when
both lengths exceed ``ZERO_THRESHOLD`` (1e-4) and, for every type but Degradation, ``d_ij`` does too.
Its coefficient is ``a_ij = d_ij ** -p`` with ``p`` = 0 (Degradation), 1 (Constant), 2 (Linear),
3 (Gravity); ``a_ij = 0`` for pairs that do not count and on the diagonal. Then, with A = (a_ij):

    F   = diag(A 1) N - A N                 row i: sum_j a_ij (n_i - n_j)
    T_i = F_i - (n_i . F_i) n_i             the part tangent to the sphere at n_i
    G_i = l_i T_i                           (the fork scales by l_i, not 1 / l_i)

``force_direction: "same"`` zeroes the entries of G whose sign is opposite to the current gradient's
(after weight decay). The strength is ``s = force_decay * force_mult`` ("fixed") or that times
``|grad| / |G|`` over the whole blob ("adaptive"; 0 when ``|G| < 1e-8``). The gradient becomes
``grad + s G``. ``force_iter = k >= 0`` applies the force on iterations 0 .. k-1 only (the fork's
trajectories settle it: ``iter < force_iter``); -1 never stops. The schedule is a pure function of the
iteration, so nothing here or in the SolverParameter changes as training goes.

The work is two products with the whole weight (W W^T, then an N x N mixing matrix times W) and the rest
on N x N matrices, done in float64 (``COMPUTE_DTYPE``; ``ForceRegularizer.compute_dtype`` to change):
``d_ij`` comes from ``|n_i|^2 + |n_j|^2 - 2 n_i . n_j``, which cancels badly in float32 exactly where
Gravity and Linear are largest (nearly parallel filters). The result is cast back to the gradient's dtype. The fork had
only Degradation and Constant on the GPU (Gravity and Linear were NOT_IMPLEMENTED); here all four run
on every device with the same code.

The returned penalty (for the log) is ``s * sum_{i<j} U(d_ij)`` over counted pairs, the potential whose
gradient on the sphere gives each pair's force: U = d^2/2 (Degradation), d (Constant), log d (Linear),
-1/d (Gravity). The fork logged nothing for this term.

The solver applies it to all parameters at once (``ForceRegularizer.apply_all``): weights of the same
shape (the two halves of each split AlexNet layer, say) go through one batched pass (``bmm``), so a
step launches one set of kernels per shape rather than per weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.regularizers.base import Regularizer, register_regularizer

__all__ = ["ForceRegularizer", "force_field", "force_gradient", "force_gradients", "FORCE_TYPES", "ZERO_THRESHOLD"]

ZERO_THRESHOLD = 1e-4  # the fork's ZERO_THRESHOLD: shorter filters and closer pairs are skipped
ADAPTIVE_EPS = 1e-8  # "adaptive" with a regularization gradient shorter than this adds nothing
COMPUTE_DTYPE = torch.float64

# force_type -> power p of the distance in a_ij = d_ij ** -p
FORCE_TYPES: dict[str, int] = {"Degradation": 0, "Constant": 1, "Linear": 2, "Gravity": 3}
FORCE_DIRECTIONS = ("all", "same")
FORCE_DECAY_TYPES = ("fixed", "adaptive")


def _check_choice(field: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise ValueError(f"SolverParameter.{field} must be one of {', '.join(sorted(choices))}. "
                         f"Received: {field} = {value!r}")


def _potential(d: Tensor, power: int) -> Tensor:
    if power == 0:
        return 0.5 * d * d
    if power == 1:
        return d
    if power == 2:
        return torch.log(d)
    return -1.0 / d


def force_field(weight: Tensor, force_type: str = "Degradation",
                dtype: torch.dtype = COMPUTE_DTYPE) -> tuple[Tensor, Tensor]:
    """The fork's raw force on each filter, ``G`` (shaped like ``weight``, in ``dtype``), and the
    potential ``sum_{i<j} U(d_ij)`` over the pairs that count (a 0-dim tensor).

    Two products with the whole weight and the rest on N x N matrices: with ``S = W W^T``,
    ``c_ij = S_ij / (l_i l_j)``, ``r = A 1`` and the radial parts ``p_i = n_i . F_i = r_i c_ii - (A o c)_i 1``,
    ``G = M W`` where ``M_ii = r_i - p_i`` and ``M_ij = -a_ij l_i / l_j``."""
    _check_choice("force_type", force_type, FORCE_TYPES)
    field, energy = _field_rows(weight.detach().reshape(1, weight.shape[0], -1).to(dtype), FORCE_TYPES[force_type])
    return field[0].reshape(weight.shape), energy[0]


def _field_rows(w: Tensor, power: int) -> tuple[Tensor, Tensor]:
    """``force_field`` for a stack of weights ``w`` (G, N, K): fields (G, N, K) and energies (G,)."""
    gram = w @ w.transpose(-1, -2)
    length = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    valid = length > ZERO_THRESHOLD
    inv = torch.where(valid, 1.0 / torch.where(valid, length, 1.0), 0.0)
    cos = gram * inv[..., :, None] * inv[..., None, :]
    sq = torch.diagonal(cos, dim1=-2, dim2=-1)
    dist = (sq[..., :, None] + sq[..., None, :] - 2.0 * cos).clamp_min(0.0).sqrt()
    eye = torch.eye(w.shape[-2], dtype=torch.bool, device=w.device)
    pair = valid[..., :, None] & valid[..., None, :] & ~eye
    if power > 0:
        pair &= dist > ZERO_THRESHOLD
        coef = torch.where(pair, torch.where(pair, dist, 1.0).pow(-power), 0.0)
    else:
        coef = pair.to(w.dtype)
    total = coef.sum(dim=-1)
    radial = total * sq - (coef * cos).sum(dim=-1)
    mix = -(length[..., :, None] * coef * inv[..., None, :])
    torch.diagonal(mix, dim1=-2, dim2=-1).copy_(torch.where(valid, total - radial, 0.0))
    field = mix @ w
    energy = torch.where(pair, _potential(torch.where(pair, dist, 1.0), power), 0.0).sum(dim=(-2, -1)) / 2
    return field, energy


def force_gradient(weight: Tensor, grad: Tensor, decay: float, force_type: str = "Degradation",
                   direction: str = "all", decay_type: str = "fixed",
                   dtype: torch.dtype = COMPUTE_DTYPE) -> tuple[Tensor, Tensor]:
    """What force regularization adds to ``grad`` for ``weight`` at strength ``decay`` (already times
    ``force_mult``), in ``grad``'s dtype, and its penalty for the log. ``grad`` is not changed.
    ``dtype``: where the work is done (float64 by default; float32 is faster and loses accuracy
    only for nearly parallel filters)."""
    deltas, penalties = force_gradients([weight], [grad], [decay], force_type, direction, decay_type, dtype)
    return deltas[0], penalties[0]


def force_gradients(weights: list[Tensor], grads: list[Tensor], decays: list[float] | Tensor,
                    force_type: str = "Degradation",
                    direction: str = "all", decay_type: str = "fixed",
                    dtype: torch.dtype = COMPUTE_DTYPE) -> tuple[list[Tensor], list[Tensor]]:
    """``force_gradient`` for several weights of ONE shape in one batched pass (each with its own
    strength ``decays[i]``); the deltas (in each grad's dtype) and penalties, in order."""
    _check_choice("force_type", force_type, FORCE_TYPES)
    _check_choice("force_direction", direction, FORCE_DIRECTIONS)
    _check_choice("force_decay_type", decay_type, FORCE_DECAY_TYPES)
    shape = weights[0].shape
    w = torch.stack([x.detach().reshape(shape[0], -1) for x in weights]).to(dtype)
    field, energy = _field_rows(w, FORCE_TYPES[force_type])
    if direction == "same" or decay_type == "adaptive":
        g = torch.stack([x.detach().reshape(shape[0], -1) for x in grads]).to(dtype)
    if direction == "same":
        field = torch.where(g * field < 0, 0.0, field)
    if isinstance(decays, Tensor):  # cached on the device by the caller: no host-to-device copy per step
        strength = decays.to(dtype)
    else:
        strength = torch.tensor([float(d) for d in decays], dtype=dtype, device=field.device)
    if decay_type == "adaptive":
        reg_len = torch.linalg.vector_norm(field, dim=(-2, -1))
        err_len = torch.linalg.vector_norm(g, dim=(-2, -1))
        ratio = err_len / torch.where(reg_len >= ADAPTIVE_EPS, reg_len, 1.0)
        strength = torch.where(reg_len >= ADAPTIVE_EPS, strength * ratio, 0.0)
    delta = strength[:, None, None] * field
    pen = strength * energy
    return ([delta[i].reshape(shape).to(gr.dtype) for i, gr in enumerate(grads)],
            [pen[i].to(gr.dtype) for i, gr in enumerate(grads)])


@register_regularizer("force")
@dataclass
class ForceRegularizer(Regularizer):
    """Force regularization from the SolverParameter's ``force_*`` fields; ``apply`` per parameter."""

    decay: float
    force_type: str = "Degradation"
    direction: str = "all"
    decay_type: str = "fixed"
    stop_iter: int = -1  # force_iter: active while iteration < stop_iter; -1: always
    compute_dtype: torch.dtype = COMPUTE_DTYPE

    def __post_init__(self) -> None:
        _check_choice("force_type", self.force_type, FORCE_TYPES)
        _check_choice("force_direction", self.direction, FORCE_DIRECTIONS)
        _check_choice("force_decay_type", self.decay_type, FORCE_DECAY_TYPES)
        # the groups of each parameter list asked for (the whole net's, or one weight's through `apply`)
        self._cached: dict[tuple[Any, ...], list[tuple[list[int], Tensor]]] = {}

    @classmethod
    def from_solver(cls, solver_param: Any) -> ForceRegularizer | None:
        """None when ``force_decay`` is 0 (the default): the fork then skips the whole step."""
        decay = float(solver_param.force_decay)
        if decay == 0.0:
            return None
        return cls(decay, solver_param.force_type, solver_param.force_direction,
                   solver_param.force_decay_type, int(solver_param.force_iter))

    def active(self, iteration: int) -> bool:
        return self.stop_iter < 0 or iteration < self.stop_iter

    def local_decay(self, info: Any) -> float:
        """``force_decay × force_mult``, multiplied in float32 as the fork does."""
        return float(np.float32(self.decay) * np.float32(info.mult("force_mult")))

    def _groups(self, infos: Any) -> list[tuple[list[int], Tensor]]:
        """Weights of one shape, dtype and device, with their strengths as a device tensor; fixed for
        a net, so built once (a tensor made from Python floats every step would synchronise CUDA)."""
        key = tuple(infos)  # ParamInfo compares by identity
        cached = self._cached.get(key)
        if cached is None:
            groups: dict[tuple[Any, ...], list[int]] = {}
            for k, info in enumerate(infos):
                param = info.param
                if param.grad is not None and param.dim() >= 2 and self.local_decay(info) != 0.0:
                    groups.setdefault((tuple(param.shape), param.dtype, param.device), []).append(k)
            cached = self._cached[key] = [
                (ks, torch.tensor([self.local_decay(infos[k]) for k in ks], dtype=self.compute_dtype, device=dev))
                for (_, _, dev), ks in groups.items()]
        return cached

    def apply_all(self, infos: Any, iteration: int, rate: float | None = None,
                  penalty: bool = True) -> list[Tensor | float]:
        """Every parameter at once: weights of one shape, dtype and device in one batched pass.
        ``rate`` (the learning rate) plays no part, as in the fork."""
        out: list[Tensor | float] = [0.0] * len(infos)
        if not self.active(iteration):
            return out
        with torch.no_grad():
            for members, strength in self._groups(infos):
                params = [infos[k].param for k in members]
                grads = [p.grad for p in params]
                deltas, pens = force_gradients(params, grads, strength, self.force_type, self.direction,
                                               self.decay_type, self.compute_dtype)
                torch._foreach_add_(grads, deltas)
                if penalty:
                    for k, pen in zip(members, pens):
                        out[k] = pen
        return out

    def apply(self, info: Any, iteration: int, rate: float | None = None) -> Tensor | float:
        """Add the force to ``info.param.grad`` in place; return the penalty (0.0 when not applied)."""
        return self.apply_all([info], iteration, rate)[0]
