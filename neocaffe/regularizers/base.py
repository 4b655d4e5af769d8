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

import importlib
import pkgutil
from typing import Any, Callable, ClassVar, Sequence, TypeVar

from torch import Tensor

from neocaffe.graph.params import ParamInfo

__all__ = ["Regularizer", "register_regularizer", "regularizer_names", "get_regularizer_class", "registered",
           "load_all"]

_REGISTRY: dict[str, type["Regularizer"]] = {}
_NOT_MODULES = {"base", "chain"}
_loaded = False
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

    @classmethod
    def from_net(cls, solver_param: Any, infos: Sequence[ParamInfo]) -> "Regularizer | None":
        """An instance for ``solver_param`` and the net's learnable parameters ``infos`` (their
        ParamSpecs and layer settings); by default ``from_solver``, for members that need only the solver."""
        return cls.from_solver(solver_param)

    def apply_all(self, infos: Sequence[ParamInfo], iteration: int, rate: float,
                  penalty: bool = True) -> list[Tensor | float]:
        """Apply to every learnable parameter in Caffe's order (override to batch the work). The
        penalties are for the log: with ``penalty`` False (the solver's non-display iterations) an
        override may skip computing them and return 0.0s."""
        return [self.apply(info, iteration, rate) for info in infos]

    def after_update(self, infos: Sequence[ParamInfo], iteration: int) -> None:
        """Called after the update rule has changed the weights (the scnn branch's ``Net::Update``
        masks and zeroing); nothing by default."""

    def display_lines(self, infos: Sequence[ParamInfo]) -> list[str]:
        """Log lines for display iterations (the scnn branch's sparsity lines); none by default."""
        return []

    def display_values(self, infos: Sequence[ParamInfo]) -> dict[str, float]:
        """The numbers of ``display_lines`` as ``{tag: value}`` for the solver's monitors (TensorBoard);
        none by default."""
        return {}

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


def load_all() -> None:
    """Import every regularizer module of the package once (each registers itself by existing)."""
    global _loaded
    if _loaded:
        return
    import neocaffe.regularizers as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name not in _NOT_MODULES and not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _loaded = True


def registered() -> dict[str, type["Regularizer"]]:
    """Name -> class for every registered regularizer (a copy; after loading the package's modules)."""
    load_all()
    return dict(_REGISTRY)


def regularizer_names() -> list[str]:
    """Every registered regularizer name (after loading the package's modules)."""
    return sorted(registered())


def get_regularizer_class(name: str) -> type["Regularizer"]:
    """The class registered as ``name``; the error lists the known names."""
    load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown regularizer '{name}'; known: {', '.join(sorted(_REGISTRY))}") from None
