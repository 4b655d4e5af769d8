"""The ordered chain of regularizers a solver applies after normalizing gradients.

Order: weight decay (L2/L1), then force regularization, then the scnn branch's group lasso, then any
other registered regularizer by name. Every module in ``neocaffe.regularizers`` is imported once
(``base.load_all``), so a module registers itself just by existing (e.g. ``force.py``). After the update
rule has changed the weights, the chain's ``after_update`` lets members mask or zero them (the scnn
branch's ``Net::Update``); on display iterations ``display_lines`` gives their log lines.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from neocaffe.graph.params import ParamInfo
from neocaffe.regularizers import base

#: Names in the order the chain applies them; other registered names follow, sorted.
ORDER = ("weight_decay", "force", "group_lasso")


def load_all() -> None:
    """Import every regularizer module of the package (each registers itself)."""
    base.load_all()


def _ordered_names() -> list[str]:
    names = list(base.registered())
    known = [n for n in ORDER if n in names]
    return known + sorted(n for n in names if n not in ORDER)


class RegularizerChain:
    """The regularizers a ``SolverParameter`` asks for, applied in :data:`ORDER`."""

    def __init__(self, regularizers: Sequence[base.Regularizer]) -> None:
        self.regularizers = list(regularizers)

    @classmethod
    def from_solver(cls, solver_param: Any, infos: Sequence[ParamInfo] | None = None) -> "RegularizerChain":
        """The members ``solver_param`` asks for; with the net's learnable ``infos`` also those that a
        layer's settings ask for (``connectivity_mode``)."""
        classes = base.registered()
        members = []
        for name in _ordered_names():
            klass = classes[name]
            reg = klass.from_solver(solver_param) if infos is None else klass.from_net(solver_param, infos)
            if reg is not None:
                members.append(reg)
        return cls(members)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.regularizers]

    def apply(self, infos: Sequence[ParamInfo], iteration: int, rate: float,
              penalty: bool = True) -> dict[str, Tensor | float]:
        """Apply every member to every parameter; returns each member's total penalty (lazy tensors;
        0.0 everywhere when ``penalty`` is False, which spares the kernels that compute them)."""
        totals: dict[str, Tensor | float] = {}
        for reg in self.regularizers:
            total: Tensor | float = 0.0
            for p in reg.apply_all(infos, iteration, rate, penalty):
                if isinstance(p, Tensor) or p:
                    total = total + p  # in parameter order, as Caffe accumulates its float term
            totals[reg.name] = total
        return totals

    def after_update(self, infos: Sequence[ParamInfo], iteration: int) -> None:
        """Each member's work on the updated weights, in order."""
        for reg in self.regularizers:
            reg.after_update(infos, iteration)

    def display_lines(self, infos: Sequence[ParamInfo]) -> list[str]:
        """The members' log lines for a display iteration."""
        return [line for reg in self.regularizers for line in reg.display_lines(infos)]

    def display_values(self, infos: Sequence[ParamInfo]) -> dict[str, float]:
        """The members' display numbers, tagged (``Regularizer.display_values``)."""
        return {tag: v for reg in self.regularizers for tag, v in reg.display_values(infos).items()}

    def __len__(self) -> int:
        return len(self.regularizers)

    def __repr__(self) -> str:
        return f"RegularizerChain({', '.join(self.names) or 'none'})"


def penalty_value(p: Tensor | float) -> float:
    """A penalty as a Python float (synchronizes with the device)."""
    return float(p.item()) if isinstance(p, torch.Tensor) else float(p)
