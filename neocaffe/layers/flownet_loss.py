"""FlowNet 2.0's losses: its ``L1Loss`` (``l1_loss_param``; the type string is registered by NVCaffe's port,
:mod:`neocaffe.layers.detectnet_l1`, which hands FlowNet's form to :func:`flownet_l1`) and ``LpqLoss``
(``lpq_loss_param``).

Lineage: lmb-freiburg/flownet2 @ b92e198b56b0e52e1ba0a5a98dc0e39fa5ae70cc, ``src/caffe/layers/l1loss_layer.{cpp,cu}``,
``lpq_loss_layer.{cpp,cu}``, ``include/caffe/layers/{l1_loss,lpq_loss}_layer.hpp`` (the CPU paths are
``NOT_IMPLEMENTED``: the CUDA code is the semantics), and the ``PowerLayer``, ``ConvolutionLayer`` and
``EltwiseLayer`` they run inside. Both take 1 bottom (d itself) or 2 of one shape (d = b0 - b1, Eltwise SUM with
coefficients 1, -1); both bottoms may take a diff (b1 gets the negative); the top is a scalar, loss weight 1.

Shared: ``mask = d == d`` (not NaN); the normaliser is ``count(mask) / C`` with ``normalize_by_num_entries``, else
N; NaN entries of d count as 0 and get no diff. ``sum_c`` below is the 1x1 Convolution whose weights are 1, or
``1 / C`` with ``l2_prescale_by_channels``. Power layers follow Caffe's ``PowerLayer`` (``y = (shift + x)^p``; its
diff ``p y / (shift + x)``, with its special cases p = 1, p = 2, shift = 0, p = 0).

* **L1Loss**, ``l2_per_location: false``: entries with ``|d| < plateau`` are masked too; loss
  ``sum |d| / norm``; diff ``sign(d) * top_diff / norm`` with the kernel's sign (``d > 0 ? 1 : -1``, so an entry
  at exactly 0 gets ``-top_diff / norm``: not the gradient), 0 where masked.
  ``l2_per_location: true``: ``s = sum_c d^2``; with ``plateau > 0`` locations with ``s < plateau^2`` get
  ``s = 0`` and no diff; loss ``sum sqrt(s + epsilon) / norm`` (masked and plateau locations still add
  ``sqrt(epsilon)``); diff through the Power layers and the sum. twhui/LiteFlowNet's Caffe (@ e7d6c43b,
  ``l1loss_layer.cpp``) takes ``l1_loss_param.power`` (default 0.5, FlowNet's square root) as that Power layer's
  power: ``sum (s + epsilon)^power / norm``.
* **LpqLoss**: ``a = |d|`` (as ``d * sign(d)`` with that sign), ``s = sum_c (p_epsilon + a)^p``, loss
  ``sum (q_epsilon + s)^q / norm``; diff through both Power layers, times the sign. p and q follow the
  schedule (``pq_episode_starts_at_iter``, ``p``, ``q``; one p and one q with no start: constant): before each
  forward the layer moves to the last episode whose start is at most the net's iteration, never back (the fork's
  queue, read from ``net->iter()``; here the solver's ``set_iteration``; a net without a solver stays at iteration
  0, as a test net in the fork).

Both backwards are written out (:class:`torch.autograd.Function`): they are the fork's, not autograd's, at the
kinks and where the sign rule differs. Deviation: with one bottom the fork writes the zeroed NaNs back into the
bottom's data (in place); here the bottom is left as it is. Tested against ports in
``tests/layers/flownet_reference.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer


def power(x: Tensor, p: float, shift: float) -> Tensor:
    """Caffe's PowerLayer forward with scale 1: ``(shift + x)^p`` (p = 0: ones)."""
    if p == 0:
        return torch.ones_like(x)
    t = x + shift if shift != 0 else x
    return t.pow(p) if p != 1 else t


def power_diff(x: Tensor, y: Tensor, top_diff: Tensor, p: float, shift: float) -> Tensor:
    """Caffe's PowerLayer backward with scale 1 (its branches: p = 0 or 1, p = 2, shift = 0, general)."""
    if p == 0:
        return torch.zeros_like(x)
    if p == 1:
        return top_diff * torch.ones_like(x)
    if p == 2:
        d = 2.0 * x + (2.0 * shift if shift != 0 else 0.0)
    elif shift == 0:
        d = p * (y / x)
    else:
        d = y / (x + shift) * p
    return top_diff * d


def _norm(mask: Tensor, by_entries: bool, n: int, dtype: torch.dtype) -> Tensor | float:
    return mask.sum().to(dtype) / mask.shape[1] if by_entries else float(n)


def _diff(a: Tensor, b: Tensor | None) -> Tensor:
    return a - b if b is not None else a


class _FlowNetL1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor | None, cfg: dict) -> Tensor:  # type: ignore[override]
        d = _diff(a, b)
        mask = ~torch.isnan(d)
        norm = _norm(mask, cfg["by_entries"], d.shape[0], d.dtype)
        zero = torch.zeros((), dtype=d.dtype, device=d.device)
        plateau = cfg["plateau"]
        if cfg["l2"]:
            d0 = torch.where(mask, d, zero)
            s = (d0 * d0 * cfg["w"](d)).sum(1, keepdim=True)
            keep = s.abs() >= float(np.float32(plateau) * np.float32(plateau)) if plateau > 0 else None  # float, as the kernel
            if keep is not None:
                s = torch.where(keep, s, zero)
            root = power(s, cfg["power"], cfg["eps"])
            ctx.save_for_backward(d0, mask, s, root, keep if keep is not None else mask[:, :1])
            loss = root.sum() / norm
        else:
            if plateau > 0:
                mask = mask & ~(d.abs() < plateau)
            d0 = torch.where(mask, d, zero)
            sign = torch.where(d0 > 0, 1.0, -1.0).to(d.dtype)
            ctx.save_for_backward(sign, mask)
            loss = (d0 * sign).sum() / norm
        ctx.cfg, ctx.norm, ctx.two = cfg, norm, b is not None
        return loss

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        cfg = ctx.cfg
        alpha = g / ctx.norm
        if cfg["l2"]:
            d0, mask, s, root, keep = ctx.saved_tensors
            ds = power_diff(s, root, alpha * torch.ones_like(root), cfg["power"], cfg["eps"])
            if cfg["plateau"] > 0:
                ds = torch.where(keep, ds, torch.zeros_like(ds))
            dd = power_diff(d0, None, ds * cfg["w"](d0), 2.0, 0.0)  # type: ignore[arg-type]
        else:
            sign, mask = ctx.saved_tensors
            dd = alpha * sign
        dd = torch.where(mask, dd, torch.zeros_like(dd))
        return (dd if ctx.needs_input_grad[0] else None,
                -dd if ctx.two and ctx.needs_input_grad[1] else None, None)


def _channel_weight(prescale: bool):
    def w(d: Tensor) -> Tensor | float:
        if not prescale:
            return 1.0
        return torch.tensor(np.float32(1) / np.float32(d.shape[1]), device=d.device).to(d.dtype)
    return w


def flownet_l1(a: Tensor, b: Tensor | None, p: Any) -> Tensor:
    """FlowNet's L1Loss of ``a`` (and ``b``) by ``l1_loss_param`` ``p`` (module docstring)."""
    cfg = {"l2": bool(p.l2_per_location), "by_entries": bool(p.normalize_by_num_entries), "power": float(p.power),
           "plateau": float(p.plateau), "eps": float(p.epsilon), "w": _channel_weight(bool(p.l2_prescale_by_channels))}
    return _FlowNetL1.apply(a, b, cfg)


def check_flownet_bottoms(layer: Layer, bottom_shapes: list[Shape]) -> list[Shape]:
    """FlowNet's losses: 1 bottom, or 2 of one shape (Eltwise's check); the top is a scalar."""
    if len(bottom_shapes) == 2 and tuple(bottom_shapes[0]) != tuple(bottom_shapes[1]):
        raise layer.error(f"both bottoms must have the same shape (the fork's Eltwise difference); received "
                          f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
    if len(bottom_shapes[0]) < 2:
        raise layer.error(f"bottoms must have a channel axis (N, C, ...); received shape {tuple(bottom_shapes[0])}")
    return [()]


class _Lpq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor | None, cfg: dict) -> Tensor:  # type: ignore[override]
        d = _diff(a, b)
        mask = ~torch.isnan(d)
        norm = _norm(mask, cfg["by_entries"], d.shape[0], d.dtype)
        d0 = torch.where(mask, d, torch.zeros((), dtype=d.dtype, device=d.device))
        sign = torch.where(d0 > 0, 1.0, -1.0).to(d.dtype)
        absd = d0 * sign
        pout = power(absd, cfg["p"], cfg["pe"])
        s = (pout * cfg["w"](d)).sum(1, keepdim=True)
        qout = power(s, cfg["q"], cfg["qe"])
        ctx.save_for_backward(mask, sign, absd, pout, s, qout)
        ctx.cfg, ctx.norm, ctx.two = cfg, norm, b is not None
        return qout.sum() / norm

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        mask, sign, absd, pout, s, qout = ctx.saved_tensors
        cfg = ctx.cfg
        ds = power_diff(s, qout, (g / ctx.norm) * torch.ones_like(qout), cfg["q"], cfg["qe"])
        da = power_diff(absd, pout, ds * cfg["w"](absd), cfg["p"], cfg["pe"])
        dd = torch.where(mask, da * sign, torch.zeros_like(da))
        return (dd if ctx.needs_input_grad[0] else None,
                -dd if ctx.two and ctx.needs_input_grad[1] else None, None)


@register_layer("LpqLoss")
class LpqLoss(Layer):
    """FlowNet 2.0's ``sum (q_eps + sum_c (p_eps + |d|)^p)^q / norm`` with its p/q schedule (module docstring)."""

    is_loss = True
    auto_top_blobs = True  # the fork's LossLayer::AutoTopBlobs
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        lp = self.param.lpq_loss_param
        starts, ps, qs = list(lp.pq_episode_starts_at_iter), list(lp.p), list(lp.q)
        if not starts and len(ps) == 1 and len(qs) == 1:
            starts = [0]
        elif not (len(starts) == len(ps) == len(qs)):
            raise self.error(f"incompatible sizes: pq_episode_starts_at_iter -> {len(starts)}, p -> {len(ps)}, "
                             f"q -> {len(qs)}")
        elif not starts:
            raise self.error("the Lpq schedule parameters must not be empty (give p and q)")
        elif any(x >= y for x, y in zip(starts, starts[1:])):
            raise self.error(f"pq_episode_starts_at_iter is not ordered or contains duplicates: {starts}")
        elif starts[0] != 0:
            raise self.error(f"the first entry of pq_episode_starts_at_iter must be 0; received {starts[0]}")
        self.schedule = [(int(s), float(np.float32(p)), float(np.float32(q))) for s, p, q in zip(starts, ps, qs)]
        self.step = 0  # the fork's queue: the episode in use, never moving back
        self.iteration = 0

    def set_iteration(self, iteration: int, stop: int) -> None:
        """The solver's iteration (the fork reads ``net->iter()`` at each forward)."""
        self.iteration = int(iteration)

    def allow_force_backward(self, bottom: int) -> bool:
        return True

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return check_flownet_bottoms(self, bottom_shapes)

    def forward(self, *bottoms: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(b.shape) for b in bottoms])
        while self.step + 1 < len(self.schedule) and self.iteration >= self.schedule[self.step + 1][0]:
            self.step += 1
        _, p, q = self.schedule[self.step]
        lp = self.param.lpq_loss_param
        cfg = {"p": p, "q": q, "pe": float(lp.p_epsilon), "qe": float(lp.q_epsilon),
               "by_entries": bool(lp.normalize_by_num_entries), "w": _channel_weight(bool(lp.l2_prescale_by_channels))}
        return _Lpq.apply(bottoms[0], bottoms[1] if len(bottoms) == 2 else None, cfg)

    def resume_state(self) -> dict | None:
        return {"step": self.step}

    def load_resume_state(self, state: dict) -> None:
        if not isinstance(state.get("step"), int) or not 0 <= state["step"] < len(self.schedule):
            raise self.error(f"resume state needs a 'step' in [0, {len(self.schedule)}); received {state!r}")
        self.step = state["step"]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(71)
        a = r.standard_normal((2, 3, 2, 3))
        b = a + r.choice([-1.0, 1.0], size=a.shape) * (0.2 + r.random(a.shape))  # |a - b| away from 0
        head = 'name: "lpq" type: "LpqLoss" bottom: "a" bottom: "b" top: "loss" '
        return [Example(head + "lpq_loss_param { p: 2 q: 0.5 }", [a, b], grad_bottoms=(0, 1)),
                Example(head + "lpq_loss_param { pq_episode_starts_at_iter: 0 pq_episode_starts_at_iter: 10 "
                        "p: 1.5 p: 2 q: 0.4 q: 1 p_epsilon: 0.1 l2_prescale_by_channels: true "
                        "normalize_by_num_entries: true } loss_weight: 2", [a, b], grad_bottoms=(0, 1)),
                Example('name: "lpq" type: "LpqLoss" bottom: "d" top: "loss" lpq_loss_param { p: 1 q: 1 }',
                        [b - a], grad_bottoms=(0,))]
