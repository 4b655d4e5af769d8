"""The scnn branch's weight zeroing, frozen connections and sparsity lines (wenwei202/caffe, ``scnn``).

Sources: ``src/caffe/net.cpp`` (``Net::Update`` calls ``Blob::Update`` then ``Blob::Zerout`` on every
learnable parameter), ``src/caffe/blob.cpp`` (``Zerout``, ``Disconnect``, the connectivity mask that
``Update`` multiplies the update by), ``src/caffe/layers/base_conv_layer.cpp`` and
``inner_product_layer.cpp`` (``WeightAlign``: ``connectivity_mode`` on the weight blob),
``src/caffe/util/math_functions.cpp`` (``caffe_cpu_all_zero_mask``, ``caffe_cpu_group_sparsity``) and
``src/caffe/solvers/sgd_solver.cpp`` (``ApplyUpdate``'s four sparsity lines, ``GetSparsity``,
``GetGroupSparsity``); the threshold is ``ZEROUT_THRESHOLD`` = 1e-4 of ``include/caffe/common.hpp``.

Active when the solver sets a group-lasso decay or a layer sets ``connectivity_mode``:

* after every update, each learnable weight with ``|w| < 1e-4`` becomes exactly 0 (``Zerout``);
* ``connectivity_mode`` on a Convolution, Deconvolution or InnerProduct layer freezes connections of
  its weight (blob 0): ``DISCONNECTED_ELTWISE`` every weight under the threshold,
  ``DISCONNECTED_GRPWISE`` every weight in an all-zero row (filter) or all-zero column (filter shape)
  of each convolution group. As in the branch (``WeightAlign`` from ``CopyTrainedLayersFrom``), the
  mask is set from weights copied into the layer (``Net.copy_from``: fine-tuning, restoring a
  snapshot), at the next update, and set again after each later copy; a layer whose weights were never
  copied (trained from its fillers) freezes nothing. The masked weights are zeroed then and stay 0;
* on display iterations, four lines of percentages per learnable parameter: element sparsity
  (``|w| < 1e-4``), column and row sparsity (all-zero columns and rows of the whole matrix) and, per
  ``block_group_lasso`` spec, block sparsity as ``(xdimen,ydimen):value;``.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe.graph.params import ParamInfo
from neocaffe.regularizers.base import Regularizer, register_regularizer
from neocaffe.regularizers.group_lasso import check_blocks, matrix_shape, ssl_enabled

__all__ = ["Connectivity", "ZEROUT_THRESHOLD", "connectivity_mask", "sparsity_percentages", "CONNECTED",
           "DISCONNECTED_ELTWISE", "DISCONNECTED_GRPWISE"]

log = logging.getLogger("neocaffe.solver")
f32 = np.float32

ZEROUT_THRESHOLD = 1e-4
CONNECTED, DISCONNECTED_ELTWISE, DISCONNECTED_GRPWISE = 0, 1, 2
MASKED_TYPES = frozenset({"Convolution", "Deconvolution", "InnerProduct"})  # layers with WeightAlign


def zerout(w: Tensor) -> Tensor:
    """``w`` with every entry strictly inside (-1e-4, 1e-4) set to 0, in place (``Blob::Zerout``)."""
    return w.masked_fill_(w.abs() < ZEROUT_THRESHOLD, 0.0)


def connectivity_mask(w: Tensor, mode: int, group: int = 1) -> Tensor:
    """The branch's connectivity of a weight already zeroed out: 1 where updates reach, 0 where frozen.
    ELTWISE: the non-zero entries; GRPWISE: not in an all-zero row or all-zero column of its group."""
    if mode == DISCONNECTED_ELTWISE:
        return (w != 0).to(w.dtype)
    if mode != DISCONNECTED_GRPWISE:
        raise ValueError(f"connectivity_mode must be one of CONNECTED (0), DISCONNECTED_ELTWISE (1), "
                         f"DISCONNECTED_GRPWISE (2); received {mode}")
    rows, cols = matrix_shape(tuple(w.shape))
    nz = (w.reshape(group, rows // group, cols) != 0)
    keep = nz.any(dim=2, keepdim=True) & nz.any(dim=1, keepdim=True)
    return keep.to(w.dtype).reshape(w.shape)


def sparsity_percentages(w: Tensor, blocks: Sequence[tuple[int, int]] = ()) -> list[Tensor]:
    """Element, column and row sparsity of ``w`` and each block's, in percent (0-dim tensors on its device)."""
    rows, cols = matrix_shape(tuple(w.shape))
    m = w.detach().reshape(rows, cols)
    zero = m == 0
    out = [(m.abs() < ZEROUT_THRESHOLD).sum().float() * f32(100) / f32(m.numel()),  # GetSparsity
           zero.all(dim=0).sum().float() / f32(cols) * f32(100),  # 100 * caffe_cpu_group_sparsity
           zero.all(dim=1).sum().float() / f32(rows) * f32(100)]
    for x, y in blocks:
        nblocks = (rows // y) * (cols // x)
        out.append((zero.reshape(rows // y, y, cols // x, x).all(dim=3).all(dim=1).sum() * 100).float() / f32(nblocks))
    return out


def _fmt(x: float) -> str:
    return "%g" % float(f32(x))  # C++ ostream << float


@register_regularizer("connectivity")
class Connectivity(Regularizer):
    """Zeroing under 1e-4 after each update, ``connectivity_mode`` masks and the sparsity lines."""

    def __init__(self) -> None:
        self._masks: dict[ParamInfo, tuple[int, Tensor]] = {}  # (its loads when built, mask)

    @classmethod
    def from_solver(cls, solver_param: Any) -> "Connectivity | None":
        return cls() if ssl_enabled(solver_param) else None

    @classmethod
    def from_net(cls, solver_param: Any, infos: Sequence[ParamInfo]) -> "Connectivity | None":
        if ssl_enabled(solver_param) or any(i.connectivity_mode != CONNECTED for i in infos):
            for info in infos:  # the Block Sparsity line needs every block to tile its matrix (checked now)
                check_blocks(info, [(int(b.xdimen), int(b.ydimen)) for b in info.spec.block_group_lasso])
            return cls()
        return None

    def masks(self, infos: Sequence[ParamInfo]) -> list[tuple[int, Tensor]]:
        """(parameter index, mask) of each frozen weight; a layer's mask is built again when weights were
        copied into it since (zeroing its weights under the threshold first, as ``Disconnect`` does)."""
        out = []
        with torch.no_grad():
            for k, info in enumerate(infos):
                if (info.connectivity_mode == CONNECTED or info.index != 0 or info.layer_type not in MASKED_TYPES
                        or not info.loads):
                    continue
                cached = self._masks.get(info)
                if cached is None or cached[0] != info.loads:
                    w = zerout(info.param.data)
                    cached = (info.loads, connectivity_mask(w, info.connectivity_mode, info.group))
                    self._masks[info] = cached
                    what = "all zero weights" if info.connectivity_mode == DISCONNECTED_ELTWISE else \
                        "weights lying in all-zero groups"
                    log.info("%s of %s are frozen", what, info.layer)
                out.append((k, cached[1]))
        return out

    def apply_all(self, infos: Sequence[ParamInfo], iteration: int, rate: float,
                  penalty: bool = True) -> list[Tensor | float]:
        """No gradient term: sets the masks up before the first update."""
        self.masks(infos)
        return [0.0] * len(infos)

    def apply(self, info: ParamInfo, iteration: int, rate: float) -> Tensor | float:
        return self.apply_all([info], iteration, rate)[0]

    def after_update(self, infos: Sequence[ParamInfo], iteration: int) -> None:
        """Frozen connections back to 0 (the branch masks the update; the same for weights already 0),
        then every weight under the threshold to 0."""
        with torch.no_grad():
            for k, mask in self.masks(infos):
                infos[k].param.data.mul_(mask)
            for info in infos:
                zerout(info.param.data)

    def _percentages(self, infos: Sequence[ParamInfo]) -> tuple[list[list[tuple[int, int]]], list[list[float]]]:
        """Each blob's blocks and its element, column, row and block sparsity (one device read)."""
        specs = []
        for info in infos:
            blocks = [(int(s.xdimen), int(s.ydimen)) for s in info.spec.block_group_lasso]
            check_blocks(info, blocks)
            specs.append(blocks)
        with torch.no_grad():
            values = [sparsity_percentages(i.param, b) for i, b in zip(infos, specs)]
            flat = torch.stack([v for vs in values for v in vs]).cpu().tolist()
        it = iter(flat)
        return specs, [[next(it) for _ in range(3 + len(b))] for b in specs]

    def display_values(self, infos: Sequence[ParamInfo]) -> dict[str, float]:
        """``sparsity/{element,column,row}/<layer>/<i>`` and ``sparsity/block/<layer>/<i>/<x>x<y>``."""
        if not infos:
            return {}
        specs, per = self._percentages(infos)
        out: dict[str, float] = {}
        for info, blocks, p in zip(infos, specs, per):
            for kind, v in zip(("element", "column", "row"), p):
                out[f"sparsity/{kind}/{info.name}"] = float(f32(v))
            for (x, y), v in zip(blocks, p[3:]):
                out[f"sparsity/block/{info.name}/{x}x{y}"] = float(f32(v))
        return out

    def display_lines(self, infos: Sequence[ParamInfo]) -> list[str]:
        """``ApplyUpdate``'s four lines, with one device read for all the numbers."""
        if not infos:
            return []
        specs, per = self._percentages(infos)
        block = "".join("".join(f"({x},{y}):{_fmt(v)};" for (x, y), v in zip(b, p[3:])) + "\t"
                        for b, p in zip(specs, per))
        return ["    Element Sparsity %: \n" + "".join(f"{_fmt(p[0])}\t" for p in per),
                "     Column Sparsity %: \n" + "".join(f"{_fmt(p[1])}\t" for p in per),
                "        Row Sparsity %: \n" + "".join(f"{_fmt(p[2])}\t" for p in per),
                "      Block Sparsity %: \n" + block]
