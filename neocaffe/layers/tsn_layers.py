"""TSN's Caffe's other layers: ``BatchReduction``, ``SyncBN``, ``Gather``, ``Scatter``.

Lineage: yjxiong/caffe, branch ``action_recog`` @ 9831a2b4: ``src/caffe/layers/batch_reduction_layer.cpp``,
``sync_bn_layer.cu`` (its ``.cpp`` forward and backward are empty: the layer is the CUDA code, built with MPI),
``gather_layer.cpp``, ``scatter_layer.cpp``. None of TSN's released nets uses them; they serve the fork's
multi-GPU (MPI) training and its temporal pyramids.

* ``BatchReduction`` (``batch_reduction_param { level reduction_param { operation axis k } pos }``): along
  ``axis``, level ``l`` reduces the next ``l * l`` entries (SUM or MEAN), the levels' outputs stacked on a new
  axis; ``level`` unset or ``[1]``: the whole axis, no new axis. ``pos``: one level, the diagonal of the
  ``axis`` x ``axis + 1`` square (both axes reduced). ``TOPK``: one level, the mean of the ``k`` largest.
  ASUM/SUMSQ: the fork's NOT_IMPLEMENTED, an error here. Its backward is the gradient of the forward (the
  fork's loops: each entry's ``coeff * dy``; TOPK's ``dy / k`` to the chosen entries; ties go to the
  entries ``torch.topk`` picks, the fork's ``std::sort`` with ``>=`` leaves them unspecified).
* ``SyncBN`` (``bn_param`` ``momentum``, ``eps``, ``slope_filler``, ``bias_filler``; four blobs of 1 x C:
  slope, bias, running mean, running variance; the last two get ``lr_mult: 0, decay_mult: 0`` as the
  fork's LayerSetUp): TRAIN normalises with the batch mean and the *unbiased* variance ``(E x^2 - (E x)^2)
  m / (m - 1)`` (``m`` = N H W), and the running statistics become ``(1 - momentum) batch + momentum
  stored``; TEST uses the stored ones. Backward: the fork's formula ``slope / sqrt(var + eps) (dy - (x_hat
  d_slope + d_bias) / m)`` (the biased-variance gradient: not the exact gradient of the unbiased forward),
  and the slope/bias diffs only where the bottom takes a diff (the fork computes none otherwise).
* ``Gather`` / ``Scatter``: MPI collectives over the fork's processes (all-gather the batch forward, scatter
  the diffs back, scaled by the process count). On one process they are the identity (the fork shares data
  and diff), as here. neocaffe's data-parallel runs (``torch.distributed``) do not carry them: building one
  in a run of more than one process is an error, as is ``SyncBN`` there (its statistics would be one
  process's, not all processes').
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TEST, Example, Layer, Shape, canonical_axis
from neocaffe.layers.bn import check_channels, force_zero_lr
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer

SUM, ASUM, SUMSQ, MEAN, TOPK = 1, 2, 3, 4, 5  # ReductionParameter.ReductionOp
f32 = np.float32


def _one_process(layer: Layer, what: str) -> None:
    if layer.context.world > 1:
        raise layer.error(f"{what} in a data-parallel run of {layer.context.world} processes: neocaffe carries "
                          "the fork's MPI collectives on one process only (where they are the identity)")


@register_layer("BatchReduction")
class BatchReduction(Layer):
    """See the module docstring."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        bp = self.param.batch_reduction_param
        rp = bp.reduction_param
        self.op, self.pos, self.k = int(rp.operation), bool(bp.pos), int(rp.k)
        self.levels = [int(v) for v in bp.level] or [1]
        if self.op in (ASUM, SUMSQ):
            raise self.error("reduction_param.operation ASUM and SUMSQ are not implemented in the fork "
                             "(NOT_IMPLEMENTED); expected SUM, MEAN or TOPK")
        if self.op not in (SUM, MEAN, TOPK):
            raise self.error(f"unknown reduction_param.operation {self.op}; expected SUM, MEAN or TOPK")
        if len(self.levels) > 1 and self.pos:
            raise self.error("Cannot do pos-sensitive reduction when level is more than 1")
        if self.op == TOPK and (len(self.levels) > 1 or self.pos):
            raise self.error("For now top-k reduction only works with 1 level (and without pos)")
        if any(v <= 0 for v in self.levels):
            raise self.error(f"batch_reduction_param.level must be positive; received {self.levels}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        axis = canonical_axis(self.param.batch_reduction_param.reduction_param.axis, len(s), self,
                              "batch_reduction_param.reduction_param.axis")
        self.axis = axis
        glob = self.levels == [1]
        self.ticks = [s[axis]] if glob else [v * v for v in self.levels]
        if not glob and sum(self.ticks) != s[axis]:
            raise self.error(f"levels {self.levels} reduce {sum(self.ticks)} entries of axis {axis}; the bottom "
                             f"{s} has {s[axis]} (the fork's CHECK_EQ)")
        if self.op == TOPK and not 0 < self.k <= self.ticks[0]:
            raise self.error(f"reduction_param.k {self.k} must be in [1, {self.ticks[0]}]")
        top = list(s[:axis]) + ([] if glob else [len(self.levels)])
        if self.pos:
            if len(s) < axis + 2 or s[axis + 1] != s[axis]:
                raise self.error(f"pos reduces the square of axes {axis} and {axis + 1}; received shape {s}")
            return [tuple(top + list(s[axis + 2:]))]
        return [tuple(top + list(s[axis + 1:]))]

    def forward(self, x: Tensor) -> Tensor:
        (top,) = self.reshape([tuple(x.shape)])
        a = self.axis
        num = int(np.prod(x.shape[:a], dtype=np.int64))
        if self.pos:
            t = self.ticks[0]
            sq = x.reshape(num, t, t, -1).diagonal(dim1=1, dim2=2)  # (num, step, t)
            out = sq.sum(-1) * (1.0 / t if self.op == MEAN else 1.0)
            return out.reshape(top)
        xr = x.reshape(num, x.shape[a], -1)
        if self.op == TOPK:
            return (xr.topk(self.k, dim=1).values.sum(1) / self.k).reshape(top)
        parts, start = [], 0
        for t in self.ticks:
            seg = xr[:, start:start + t].sum(1)
            parts.append(seg * float(f32(1) / f32(t)) if self.op == MEAN else seg)
            start += t
        return torch.stack(parts, 1).reshape(top)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(41)
        head = 'name: "br" type: "BatchReduction" bottom: "x" top: "y" batch_reduction_param { '
        return [Example(head + 'reduction_param { operation: MEAN axis: 1 } }', [r.standard_normal((2, 5, 3))]),
                Example(head + 'level: 1 level: 2 reduction_param { operation: SUM axis: 1 } }',
                        [r.standard_normal((2, 5, 2, 2))]),
                Example(head + 'pos: true reduction_param { operation: MEAN axis: 1 } }',
                        [r.standard_normal((2, 3, 3, 2))]),
                Example(head + 'reduction_param { operation: TOPK k: 2 axis: 1 } }',
                        [r.permutation(24).reshape(2, 4, 3) * 0.1])]


class _SyncBNTrain(torch.autograd.Function):
    """SyncBN's TRAIN forward (unbiased variance) with the fork's backward."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: Tensor, bias: Tensor, eps: float):  # type: ignore[override]
        dims = (0,) + tuple(range(2, x.dim()))
        view = (1, -1) + (1,) * (x.dim() - 2)
        m = x.numel() // x.shape[1]
        mean = x.sum(dims) / m
        var = (x * x).sum(dims) / m - mean * mean
        if m > 1:
            var = var * (m / (m - 1))
        inv_std = (var + eps).rsqrt()
        x_hat = (x - mean.reshape(view)) * inv_std.reshape(view)
        ctx.save_for_backward(x_hat, inv_std, slope)
        ctx.m = m
        return x_hat * slope.reshape(view) + bias.reshape(view), mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _dmean: Any, _dvar: Any):  # type: ignore[override]
        x_hat, inv_std, slope = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:  # the fork computes every diff inside `if (propagate_down[0])`
            return None, None, None, None
        dims = (0,) + tuple(range(2, dy.dim()))
        view = (1, -1) + (1,) * (dy.dim() - 2)
        d_slope, d_bias = (dy * x_hat).sum(dims), dy.sum(dims)
        dx = (slope * inv_std).reshape(view) * (dy - (x_hat * d_slope.reshape(view) + d_bias.reshape(view)) / ctx.m)
        return dx, d_slope.reshape(slope.shape), d_bias.reshape(slope.shape), None


@register_layer("SyncBN")
class SyncBN(Layer):
    """See the module docstring."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        _one_process(self, "SyncBN")
        s = bottom_shapes[0]
        if len(s) < 2:
            raise self.error(f"needs a bottom with at least 2 axes (N, C, ...); received shape {tuple(s)}")
        bp = self.param.bn_param
        self.channels, self.momentum, self.eps = int(s[1]), float(f32(bp.momentum)), float(f32(bp.eps))
        shape = (1, self.channels)
        self.add_blob(fill(bp.slope_filler, shape))
        self.add_blob(fill(bp.bias_filler, shape))
        self.add_blob(torch.zeros(shape))
        self.add_blob(torch.zeros(shape))
        force_zero_lr(self.param, (2, 3))

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [check_channels(self, bottom_shapes[0])]

    def forward(self, x: Tensor) -> Tensor:
        slope, bias, run_mean, run_var = self.blobs
        view = (1, -1) + (1,) * (x.dim() - 2)
        if self.phase == TEST:
            mean, var = run_mean.detach().reshape(view), run_var.detach().reshape(view)
            return (x - mean) / torch.sqrt(var + self.eps) * slope.reshape(view) + bias.reshape(view)
        y, mean, var = _SyncBNTrain.apply(x, slope.reshape(-1), bias.reshape(-1), self.eps)
        with torch.no_grad():
            take = float(f32(1) - f32(self.momentum))
            run_mean.mul_(self.momentum).add_(mean.detach().reshape(run_mean.shape).to(run_mean.dtype), alpha=take)
            run_var.mul_(self.momentum).add_(var.detach().reshape(run_var.shape).to(run_var.dtype), alpha=take)
        return y

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        x = np.random.default_rng(43).standard_normal((3, 2, 2, 3)) * 2 + 0.5

        def stats(layer: Any) -> None:
            with torch.no_grad():
                layer.blobs[2].copy_(torch.tensor([[0.2, -0.3]]))
                layer.blobs[3].copy_(torch.tensor([[0.5, 2.0]]))

        head = ('name: "sbn" type: "SyncBN" bottom: "x" top: "y" bn_param { slope_filler { type: "uniform" min: 0.5 '
                'max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } }')
        # TRAIN: the fork's backward is not the gradient of its unbiased forward: checked in tests/layers/test_tsn_layers.py
        return [Example(head, [x], grad_bottoms=(), grad_params=False, phase=0),
                Example(head, [x], grad_params=False, prepare=stats)]  # stored statistics: no diff for them


class _Identity(Layer):
    """Gather/Scatter on one process: every top is its bottom."""

    min_bottoms = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        _one_process(self, self.type_name)
        if len(self.param.top) != len(bottom_shapes):
            raise self.error(f"The number of bottom and top blobs must be the same; received {len(bottom_shapes)} "
                             f"bottoms, {len(self.param.top)} tops")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(s) for s in bottom_shapes]

    def forward(self, *xs: Tensor) -> Any:
        return xs[0] if len(xs) == 1 else list(xs)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        r = np.random.default_rng(47)
        t = cls.type_name
        return [Example(f'name: "g" type: "{t}" bottom: "x" top: "y"', [r.standard_normal((2, 3))]),
                Example(f'name: "g" type: "{t}" bottom: "x" bottom: "z" top: "y" top: "w"',
                        [r.standard_normal((2, 3)), r.standard_normal((4, 1, 2))], grad_bottoms=(0, 1))]


@register_layer("Gather")
class Gather(_Identity):
    """See the module docstring."""


@register_layer("Scatter")
class Scatter(_Identity):
    """See the module docstring."""


__all__ = ["BatchReduction", "Gather", "Scatter", "SyncBN"]
