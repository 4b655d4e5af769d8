"""Opt-in pytest plugin: CUDA's device rule checked on the CPU. With it, the CPU tests run every layer's
forward (and lean kernel), ``Net.forward``/``backward`` and ``Solver.step`` with PyTorch's default device
set to ``meta``. A tensor that code makes without ``device=`` (``torch.zeros(n)``, ``torch.tensor(...)``)
then lands on meta, and mixing it with the CPU tensors around it raises, as mixing a CPU tensor into CUDA
work raises on a GPU; a top left on meta fails the test that reads it. Data layers (and Python layers,
user code) make their tops on the host by design: their forwards keep the CPU as default device.

    python -m pytest -p tests.device_audit -n 2 tests/layers tests/graph tests/solver tests/pycaffe

It is not part of the suite's default run (a context manager per call costs time, and meta ops that do
not check devices, such as ``scatter_reduce``'s index, are not caught everywhere); run it after changing
layer, graph or solver code. On 2026-12-06 it found DetectionEvaluate's host-made tables (fixed), and
nothing else in tests/layers, graph, solver, regularizers, pycaffe, speed, research, export, cli and
harness.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch


def _under(fn: Callable[..., Any], device: str) -> Callable[..., Any]:
    if getattr(fn, "audited", False):  # inherited from a class already wrapped
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # Dynamo cannot enter a device context
            return fn(*args, **kwargs)
        with torch.device(device):
            return fn(*args, **kwargs)
    run.audited = True  # type: ignore[attr-defined]
    return run


def _kernel_under_meta(make: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(make)
    def lean(self: Any, *args: Any, **kwargs: Any) -> Any:
        kernel = make(self, *args, **kwargs)
        return None if kernel is None else _under(kernel, "meta")
    return lean


def pytest_configure(config: Any) -> None:
    from neocaffe.graph.net import Net
    from neocaffe.layers import layer_types
    from neocaffe.layers.registry import get_layer_class
    from neocaffe.solver.solver import Solver

    for type_name in layer_types():
        cls = get_layer_class(type_name)
        if cls.produces_host_data or type_name == "Python":
            cls.forward = _under(cls.forward, "cpu")
            continue
        cls.forward = _under(cls.forward, "meta")
        for name in ("lean_kernel", "lean_kernel_in_place"):
            if name in cls.__dict__:
                setattr(cls, name, _kernel_under_meta(cls.__dict__[name]))
    Net.forward = _under(Net.forward, "meta")
    Net.backward = _under(Net.backward, "meta")
    Solver.step = _under(Solver.step, "meta")
