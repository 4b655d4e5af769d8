"""Group lasso: the structured sparsity learning (SSL) of Wen et al., "Learning Structured Sparsity in
Deep Neural Networks" (NIPS 2016), the fork's ``scnn`` branch.

Source: wenwei202/caffe branch ``scnn``, ``src/caffe/solvers/sgd_solver.cpp``
(``SGDSolver::GroupLassoRegularize``) with its kernels in ``src/caffe/util/math_functions.cu``
(``col_group_lasso_kernel``, ``row_group_lasso_kernel``, ``block_group_lasso_kernel``,
``div_checkzero_kernel``); the multipliers come from ``src/caffe/net.cpp`` (``params_breadth_decay``,
``params_kernel_shape_decay``, ``params_block_group_lasso``, ``param_groups``).

Each parameter is seen as a matrix W of ``shape[0]`` rows (filters) by ``count / shape[0]`` columns
(the flattened filter). For a group g of weights with norm ``|g| = sqrt(sum g^2)`` the term is
``lambda * |g|``; its gradient ``lambda * w / |g|`` (0 where ``|g| = 0``) is added to each member w:

* ``kernel_shape_decay x kernel_shape_decay_mult``: the columns (filter shapes), within each
  convolution group (``convolution_param.group`` when the layer has one, else 1);
* ``breadth_decay x breadth_decay_mult``: the rows (filters), within each convolution group;
* ``block_group_decay x block_decay_mult`` for each ``block_group_lasso { xdimen ydimen }``: the
  ``ydimen x xdimen`` blocks of the whole matrix (``ydimen`` rows, ``xdimen`` columns; the dimensions
  must divide the matrix's, as the branch CHECKs).

In that order, after weight decay (``SGDSolver::Regularize``), before the update rule. The penalty,
``sum lambda |g|`` over every group, goes into the solver's "Total regularization terms" line, as the
branch adds ``GroupLassoRegularize``'s term to ``total_regularization_term_``. The branch ran the breadth
and kernel-shape terms on the GPU only (its CPU path is a ``LOG(FATAL)``); here all three run on
every device, and the parameters of one shape and grouping go through one batched pass. The branch's
zeroing of small weights, its frozen connections and sparsity lines: ``neocaffe.regularizers.connectivity``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe.graph.params import ParamInfo
from neocaffe.regularizers.base import Regularizer, register_regularizer

__all__ = ["GroupLasso", "group_lasso_gradients", "matrix_shape", "check_blocks", "ssl_enabled"]

SOLVER_FIELDS = ("breadth_decay", "kernel_shape_decay", "block_group_decay")


def ssl_enabled(solver_param: Any) -> bool:
    """Whether the solver sets any of the scnn branch's group-lasso decays."""
    return any(float(getattr(solver_param, f)) != 0.0 for f in SOLVER_FIELDS)


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The branch's matrix view of a blob: ``shape[0]`` rows by ``count / shape[0]`` columns."""
    rows = int(shape[0])
    return rows, int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1


def check_blocks(info: ParamInfo, blocks: Sequence[tuple[int, int]]) -> None:
    """The branch CHECKs that each block's ``ydimen`` divides the rows and ``xdimen`` the columns."""
    rows, cols = matrix_shape(tuple(info.param.shape))
    for x, y in blocks:
        if x < 1 or y < 1 or rows % y or cols % x:
            raise ValueError(
                f"layer '{info.layer}' param {info.index}: block_group_lasso {{ xdimen: {x} ydimen: {y} }} does not "
                f"tile its {rows} x {cols} matrix (rows = filters, columns = flattened filter); expected ydimen to "
                f"divide {rows} and xdimen to divide {cols}")


def _unit(w: Tensor, norm: Tensor) -> Tensor:
    """``w / norm`` where ``norm`` is non-zero, else 0 (the branch's ``div_checkzero``)."""
    nz = norm > 0
    return torch.where(nz, w / torch.where(nz, norm, torch.ones_like(norm)), torch.zeros_like(w))


def group_lasso_gradients(w: Tensor, group: int, kernel_shape: Tensor | None, breadth: Tensor | None,
                          blocks: Sequence[tuple[int, int, Tensor]] = ()) -> tuple[Tensor, Tensor]:
    """The group-lasso gradient and penalty for a stack of matrices ``w`` (B, rows, cols), each member
    with its own strengths: ``kernel_shape`` and ``breadth`` (B,) or None, and ``blocks`` of
    ``(xdimen, ydimen, strengths (B,))``. Returns the gradients (B, rows, cols) and penalties (B,)."""
    b, rows, cols = w.shape
    delta = torch.zeros_like(w)
    penalty = torch.zeros(b, dtype=w.dtype, device=w.device)
    wg = w.reshape(b, group, rows // group, cols)
    if kernel_shape is not None:  # columns within each convolution group
        norm = wg.square().sum(dim=2, keepdim=True).sqrt()
        delta += (kernel_shape.reshape(b, 1, 1, 1) * _unit(wg, norm)).reshape(b, rows, cols)
        penalty += kernel_shape * norm.sum(dim=(1, 2, 3))
    if breadth is not None:  # rows (filters) within each convolution group
        norm = wg.square().sum(dim=3, keepdim=True).sqrt()
        delta += (breadth.reshape(b, 1, 1, 1) * _unit(wg, norm)).reshape(b, rows, cols)
        penalty += breadth * norm.sum(dim=(1, 2, 3))
    for x, y, strength in blocks:  # ydimen x xdimen blocks of the whole matrix
        wb = w.reshape(b, rows // y, y, cols // x, x)
        norm = wb.square().sum(dim=(2, 4), keepdim=True).sqrt()
        delta += (strength.reshape(b, 1, 1, 1, 1) * _unit(wb, norm)).reshape(b, rows, cols)
        penalty += strength * norm.sum(dim=(1, 2, 3, 4))
    return delta, penalty


@dataclass
class _Batch:
    members: list[int]
    group: int
    kernel_shape: Tensor | None
    breadth: Tensor | None
    blocks: list[tuple[int, int, Tensor]]


@register_regularizer("group_lasso")
class GroupLasso(Regularizer):
    """The scnn branch's ``breadth_decay``, ``kernel_shape_decay`` and ``block_group_decay``."""

    def __init__(self, breadth_decay: float = 0.0, kernel_shape_decay: float = 0.0,
                 block_group_decay: float = 0.0) -> None:
        self.breadth_decay = np.float32(breadth_decay)
        self.kernel_shape_decay = np.float32(kernel_shape_decay)
        self.block_group_decay = np.float32(block_group_decay)
        self._cached: tuple[Any, list[_Batch]] = (None, [])

    @classmethod
    def from_solver(cls, solver_param: Any) -> "GroupLasso | None":
        """None unless one of the three decays is set."""
        if not ssl_enabled(solver_param):
            return None
        return cls(*(float(getattr(solver_param, f)) for f in SOLVER_FIELDS))

    @classmethod
    def from_net(cls, solver_param: Any, infos: Sequence[ParamInfo]) -> "GroupLasso | None":
        """``from_solver``, with the parameters' groupings and blocks checked now (a ValueError)."""
        reg = cls.from_solver(solver_param)
        if reg is not None:
            reg._batches(infos)
        return reg

    def decays(self, info: ParamInfo) -> tuple[float, float, list[tuple[int, int, float]]]:
        """``(kernel shape, breadth, [(xdimen, ydimen, block)])`` local decays of ``info``, multiplied
        in float32 as the branch does; blocks with a zero decay are left out."""
        kernel = float(self.kernel_shape_decay * np.float32(info.mult("kernel_shape_decay_mult")))
        breadth = float(self.breadth_decay * np.float32(info.mult("breadth_decay_mult")))
        blocks = [(int(s.xdimen), int(s.ydimen), float(np.float32(s.block_decay_mult) * self.block_group_decay))
                  for s in info.spec.block_group_lasso]
        return kernel, breadth, [bl for bl in blocks if bl[2] != 0.0]

    def _batches(self, infos: Sequence[ParamInfo]) -> list[_Batch]:
        """Parameters of one shape, dtype, device, grouping and block layout, with their strengths as
        device tensors; fixed for a net, so built once."""
        key = tuple(infos)  # ParamInfo compares by identity
        if self._cached[0] == key:
            return self._cached[1]
        found: dict[tuple[Any, ...], list[tuple[int, float, float, list[tuple[int, int, float]]]]] = {}
        for k, info in enumerate(infos):
            kernel, breadth, blocks = self.decays(info)
            if not (kernel or breadth or blocks):
                continue
            check_blocks(info, [(x, y) for x, y, _ in blocks])
            p = info.param
            rows = int(p.shape[0])
            if rows % info.group:
                raise ValueError(f"layer '{info.layer}' param {info.index}: {rows} filters do not split into "
                                 f"group = {info.group}")
            layout = (tuple(p.shape), p.dtype, p.device, info.group, tuple((x, y) for x, y, _ in blocks),
                      kernel != 0.0, breadth != 0.0)
            found.setdefault(layout, []).append((k, kernel, breadth, blocks))
        batches = []
        for (_, dtype, device, group, _, has_k, has_b), entries in found.items():
            def vec(values: list[float]) -> Tensor:
                return torch.tensor(values, dtype=dtype, device=device)

            blocks = [(x, y, vec([e[3][j][2] for e in entries])) for j, (x, y, _) in enumerate(entries[0][3])]
            batches.append(_Batch([e[0] for e in entries], group, vec([e[1] for e in entries]) if has_k else None,
                                  vec([e[2] for e in entries]) if has_b else None, blocks))
        self._cached = (key, batches)
        return batches

    def apply_all(self, infos: Sequence[ParamInfo], iteration: int, rate: float,
                  penalty: bool = True) -> list[Tensor | float]:
        """Every parameter at once, one batched pass per layout; ``rate`` plays no part, as in the branch."""
        out: list[Tensor | float] = [0.0] * len(infos)
        with torch.no_grad():
            for batch in self._batches(infos):
                params = [infos[k].param for k in batch.members]
                rows, cols = matrix_shape(tuple(params[0].shape))
                w = torch.stack([p.detach().reshape(rows, cols) for p in params])
                delta, pens = group_lasso_gradients(w, batch.group, batch.kernel_shape, batch.breadth, batch.blocks)
                torch._foreach_add_([p.grad for p in params], [d.reshape(p.shape) for d, p in zip(delta, params)])
                if penalty:
                    for k, pen in zip(batch.members, pens):
                        out[k] = pen
        return out

    def apply(self, info: ParamInfo, iteration: int, rate: float) -> Tensor | float:
        return self.apply_all([info], iteration, rate)[0]

    def __repr__(self) -> str:
        return (f"GroupLasso(breadth_decay={self.breadth_decay:g}, kernel_shape_decay={self.kernel_shape_decay:g}, "
                f"block_group_decay={self.block_group_decay:g})")
