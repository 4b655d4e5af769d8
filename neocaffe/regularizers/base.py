"""The regularizer interface and registry.

A regularizer adds its term's gradient to each parameter's gradient *in place*, after the solver
has normalized the accumulated gradient (``÷ iter_size``) and before the update rule runs — Caffe's
``SGDSolver::Regularize`` slot. Each one is built from the ``SolverParameter`` alone
(``from_solver``) and returns ``None`` when the solver does not ask for it; schedules (e.g. the fork's
``force_iter``) live inside the regularizer. Nothing here mutates the ``SolverParameter``.

Write one as::

    @register_regularizer("force")
    class Force(Regularizer):
        @classmethod
        def from_solver(cls, solver_param):
            return cls(solver_param) if solver_param.force_decay else None

        def apply(self, info, iteration, rate):
            ...  # info.param.grad += ...
            return penalty  # a 0-dim float tensor (or 0.0)

``info`` is a :class:`neocaffe.graph.params.ParamInfo`: ``info.param`` (data and ``.grad``),
``info.layer``, ``info.index``, ``info.spec`` (the ``ParamSpec``), ``info.lr_mult``,
``info.decay_mult`` and ``info.mult("force_mult")``. ``rate`` is the solver's learning rate for this
iteration (before ``lr_mult``). The order of the chain is fixed in :mod:`neocaffe.regularizers.chain`.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence, TypeVar

from torch import Tensor

from neocaffe.graph.params import ParamInfo

__all__ = ["Regularizer", "register_regularizer", "regularizer_names", "get_regularizer_class"]

_REGISTRY: dict[str, type["Regularizer"]] = {}
T = TypeVar("T", bound=type)


class Regularizer:
    """Adds a regularization term's gradient to parameter gradients in place."""

    name: ClassVar[str] = ""

    @classmethod
    def from_solver(cls, solver_param: Any) -> "Regularizer | None":
        """An instance configured from ``solver_param``, or ``None`` when the solver does not use it."""
        raise NotImplementedError

    def apply(self, info: ParamInfo, iteration: int, rate: float) -> Tensor | float:
        """Add the term's gradient to ``info.param.grad`` in place; return the penalty (for the log)."""
        raise NotImplementedError

    def apply_all(self, infos: Sequence[ParamInfo], iteration: int, rate: float,
                  penalty: bool = True) -> list[Tensor | float]:
        """Apply to every learnable parameter in Caffe's order (override to batch the work). The
        penalties are for the log: with ``penalty`` False (the solver's non-display iterations) an
        override may skip computing them and return 0.0s."""
        return [self.apply(info, iteration, rate) for info in infos]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register_regularizer(name: str) -> Callable[[T], T]:
    """Class decorator registering a :class:`Regularizer` under ``name``; a duplicate name raises."""

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"regularizer '{name}' registered twice: {_REGISTRY[name].__module__} and {cls.__module__}"
            )
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def regularizer_names() -> list[str]:
    """Every registered regularizer name (after loading the package's modules)."""
    from neocaffe.regularizers.chain import load_all

    load_all()
    return sorted(_REGISTRY)


def get_regularizer_class(name: str) -> type["Regularizer"]:
    """The class registered as ``name``; the error lists the known names."""
    from neocaffe.regularizers.chain import load_all

    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown regularizer '{name}'; known: {', '.join(sorted(_REGISTRY))}") from None
