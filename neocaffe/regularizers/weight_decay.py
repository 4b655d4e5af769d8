"""Weight decay: Caffe's L2 (``g += λ·w``) and L1 (``g += λ·sign(w)``), ``λ = weight_decay × decay_mult``.

``regularization_type`` comes from the solver (``"L2"`` default, or ``"L1"``); the fork's per-parameter
``ParamSpec.regularization_type``, when set, overrides it for that parameter. The penalty for the log
is the fork's: ``λ/2·Σw²`` for L2, ``λ·Σ|w|`` for L1.

The scnn branch's ``ParamSpec.decay_proto`` (wenwei202/caffe ``scnn``, ``src/caffe/net.cpp`` loads it,
``src/caffe/solvers/sgd_solver.cpp`` ``Regularize`` uses it) names a BlobProto file of per-weight
multipliers d, shaped as the parameter: L2 adds ``λ·(w∘d)`` with penalty ``λ/2·Σ w²d``, L1 adds
``λ·sign(w)∘d`` with penalty ``λ·Σ|w∘d|``. A path that does not exist is an error, as in the branch.
"""
from __future__ import annotations

from typing import Any, Sequence

import os

import numpy as np
import torch
from torch import Tensor

from neocaffe.graph.params import ParamInfo
from neocaffe.regularizers.base import Regularizer, register_regularizer

TYPES = ("L2", "L1")


def _check_type(kind: str, where: str) -> str:
    if kind not in TYPES:
        raise ValueError(f"{where}: unknown regularization type '{kind}'; valid types: {', '.join(TYPES)}")
    return kind


@register_regularizer("weight_decay")
class WeightDecay(Regularizer):
    """L2 or L1 weight decay exactly as Caffe's ``SGDSolver::Regularize`` computes it (float32)."""

    def __init__(self, weight_decay: float, regularization_type: str = "L2") -> None:
        self.weight_decay = np.float32(weight_decay)
        self.regularization_type = _check_type(regularization_type, "solver")
        self._individual: dict[ParamInfo, Tensor] = {}  # decay_proto multipliers on the device
        self._cached: tuple[tuple[ParamInfo, ...] | None, list[tuple[str, float, list[int]]]] = (None, [])

    @classmethod
    def from_solver(cls, solver_param: Any) -> "WeightDecay | None":
        if not solver_param.weight_decay:
            return None
        kind = _check_type(solver_param.regularization_type, "solver regularization_type")
        return cls(solver_param.weight_decay, kind)

    @classmethod
    def from_net(cls, solver_param: Any, infos: Sequence[ParamInfo]) -> "WeightDecay | None":
        """``from_solver``, with every ``decay_proto`` file read and checked now."""
        reg = cls.from_solver(solver_param)
        if reg is not None:
            reg._groups(infos)
        return reg

    def individual(self, info: ParamInfo) -> Tensor | None:
        """The ``decay_proto`` multipliers of ``info`` (read once), or None when it names no file."""
        path = info.spec.decay_proto if info.spec.DESCRIPTOR.fields_by_name.get("decay_proto") else ""
        if not path:
            return None
        if info not in self._individual:
            from neocaffe.io.binaryproto import read_blobproto
            from neocaffe.io.weights import fit_blob

            if not os.path.exists(path):
                raise ValueError(f"layer '{info.layer}' param {info.index} decay_proto: File does not exist: {path}")
            blob = read_blobproto(path)
            arr = fit_blob(np.asarray(blob.data, dtype=np.float32), tuple(info.param.shape), blob.legacy_shape,
                           layer=info.layer, index=info.index, path=path)
            self._individual[info] = torch.as_tensor(arr).to(info.param.device, info.param.dtype)
        return self._individual[info]

    def local_decay(self, info: ParamInfo) -> float:
        """``weight_decay × decay_mult`` in float32, as Caffe computes ``local_decay``."""
        return float(self.weight_decay * np.float32(info.decay_mult))

    def kind(self, info: ParamInfo) -> str:
        local = info.spec.regularization_type if info.spec.DESCRIPTOR.fields_by_name.get("regularization_type") else ""
        if local:
            return _check_type(local, f"layer '{info.layer}' param {info.index} regularization_type")
        return self.regularization_type

    def apply(self, info: ParamInfo, iteration: int, rate: float) -> Tensor | float:
        return self.apply_all([info], iteration, rate)[0]

    def _groups(self, infos: Sequence[ParamInfo]) -> list[tuple[str, float, list[int]]]:
        """(type, local decay, member indices) for ``infos``; fixed for a net, so built once."""
        key = tuple(infos)  # ParamInfo compares by identity
        if self._cached[0] != key:
            groups: dict[tuple[str, float], list[int]] = {}
            for k, info in enumerate(infos):
                decay = self.local_decay(info)
                if decay:
                    own = self.individual(info) is not None  # a decay_proto: a group of its own
                    groups.setdefault((self.kind(info), decay, k if own else -1), []).append(k)
            self._cached = (key, [(kind, decay, ks) for (kind, decay, _), ks in groups.items()])
        return self._cached[1]

    def apply_all(self, infos: Sequence[ParamInfo], iteration: int, rate: float,
                  penalty: bool = True) -> list[Tensor | float]:
        """All parameters of one type and decay in one multi-tensor op (Caffe's per-parameter math)."""
        out: list[Tensor | float] = [0.0] * len(infos)
        for kind, decay, ks in self._groups(infos):
            ws = [infos[k].param.detach() for k in ks]
            gs = [infos[k].param.grad for k in ks]
            d = self.individual(infos[ks[0]])
            if d is not None:  # the scnn branch's per-weight multipliers (one parameter)
                w, g = ws[0], gs[0]
                wd = w * d if kind == "L2" else torch.sign(w) * d
                g.add_(wd, alpha=decay)
                if penalty:
                    out[ks[0]] = (torch.dot((w * d).reshape(-1), w.reshape(-1)) * (decay / 2.0) if kind == "L2"
                                  else (w * d).abs().sum() * decay)
                continue
            if kind == "L2":
                torch._foreach_add_(gs, ws, alpha=decay)
            else:
                torch._foreach_add_(gs, torch._foreach_sign(ws), alpha=decay)
            if penalty:
                for k, w in zip(ks, ws):
                    out[k] = (torch.dot(w.reshape(-1), w.reshape(-1)) * (decay / 2.0) if kind == "L2"
                              else w.abs().sum() * decay)
        return out


__all__ = ["WeightDecay"]
