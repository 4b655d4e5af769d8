"""The ordered chain of regularizers a solver applies after normalizing gradients.

Order: weight decay (L2/L1), then force regularization, then any other
registered regularizer by name. Every module in ``neocaffe.regularizers`` is imported once, so a
module registers itself just by existing (e.g. ``force.py``).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Sequence

import torch
from torch import Tensor

from neocaffe.graph.params import ParamInfo
from neocaffe.regularizers import base

#: Names in the order the chain applies them; other registered names follow, sorted.
ORDER = ("weight_decay", "force")
_NOT_MODULES = {"base", "chain"}
_loaded = False


def load_all() -> None:
    """Import every regularizer module of the package (each registers itself)."""
    global _loaded
    if _loaded:
        return
    import neocaffe.regularizers as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name not in _NOT_MODULES and not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _loaded = True


def _ordered_names() -> list[str]:
    load_all()
    names = list(base._REGISTRY)
    known = [n for n in ORDER if n in names]
    return known + sorted(n for n in names if n not in ORDER)


class RegularizerChain:
    """The regularizers a ``SolverParameter`` asks for, applied in :data:`ORDER`."""

    def __init__(self, regularizers: Sequence[base.Regularizer]) -> None:
        self.regularizers = list(regularizers)

    @classmethod
    def from_solver(cls, solver_param: Any) -> "RegularizerChain":
        members = []
        for name in _ordered_names():
            reg = base._REGISTRY[name].from_solver(solver_param)
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

    def __len__(self) -> int:
        return len(self.regularizers)

    def __repr__(self) -> str:
        return f"RegularizerChain({', '.join(self.names) or 'none'})"


def penalty_value(p: Tensor | float) -> float:
    """A penalty as a Python float (synchronizes with the device)."""
    return float(p.item()) if isinstance(p, torch.Tensor) else float(p)
