"""``Python`` layers: ``python_param {module layer param_str}`` runs a user's class as Caffe's PythonLayer does.

The module is imported with the current directory added to ``sys.path`` (PYTHONPATH entries are there
already); the class is instantiated (with the LayerParameter when its constructor takes an argument,
as pycaffe's ``caffe.Layer`` does) and given ``param_str``, ``phase`` and ``blobs``. Then, as in Caffe:
``setup(bottom, top)`` and ``reshape(bottom, top)`` at construction, ``reshape`` + ``forward(bottom, top)``
on every forward, ``backward(top, propagate_down, bottom)`` on the way back. ``bottom``/``top`` are lists
of :class:`PyBlob` (NumPy ``.data``/``.diff``, ``.reshape(*shape)``, ``.shape``, ``.count``, ``.num``...).

User classes may subclass :class:`PythonLayerBase` (what ``caffe.Layer`` maps to) or nothing at all.
Learnable blobs (``self.blobs.add_blob(*shape)``) are parameters of the net; in ``backward`` their
``.diff`` starts at zero and what the user leaves there is ADDED to the parameter's gradient (Caffe hands
over the accumulated diff instead; the two agree for ``+=`` and for the usual one backward per step).
Bottom data are NumPy views of the bottom tensors on the CPU (copies for CUDA tensors).

A few well-known Python layers have native stand-ins (``NATIVE_STAND_INS``, keyed by ``(module, layer)``):
when such a module cannot be imported, the registered native layer runs in its place with the same
LayerParameter and one log line says so (what OpenCV does for py-faster-rcnn's proposal layer), so
the published test nets run unchanged; a module that imports still wins.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import get_layer_class, register_layer

log = logging.getLogger(__name__)

#: (python_param.module, python_param.layer) -> the registered type that runs when the module is absent
NATIVE_STAND_INS: dict[tuple[str, str], str] = {
    ("rpn.proposal_layer", "ProposalLayer"): "Proposal",  # py-faster-rcnn (neocaffe/layers/proposal.py)
}


class PyBlob:
    """A pycaffe-style blob over NumPy arrays."""

    def __init__(self, data: np.ndarray, diff: np.ndarray | None = None) -> None:
        self._data = data
        self._diff = diff

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None or self._diff.shape != self._data.shape:
            self._diff = np.zeros_like(self._data)
        return self._diff

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def _legacy(self, i: int) -> int:
        return int(self._data.shape[i]) if i < self._data.ndim else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob::Reshape: keeps the data when the count is unchanged, else fresh zeros."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if shape == self.shape:
            return
        if int(np.prod(shape)) == self.count:
            self._data = self._data.reshape(shape)
        else:
            self._data = np.zeros(shape, dtype=self._data.dtype)
        self._diff = None

    def __repr__(self) -> str:
        return f"PyBlob(shape={self.shape})"


class BlobVec:
    """``self.blobs`` of a Python layer: indexable, ``len``, ``add_blob(*shape)`` (a zero learnable blob)."""

    def __init__(self, layer: "PythonLayer") -> None:
        self._layer = layer
        self._views: list[PyBlob] | None = None  # set for the duration of a forward/backward call

    def _get(self) -> list[PyBlob]:
        if self._views is not None:
            return self._views
        out = []
        for p in self._layer.blobs:
            g = p.grad
            out.append(PyBlob(_host(p), _host(g) if g is not None else None))
        return out

    def __getitem__(self, i: int) -> PyBlob:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._layer.blobs)

    def __iter__(self):
        return iter(self._get())

    def add_blob(self, *shape: int) -> PyBlob:
        self._layer.add_blob(torch.zeros(tuple(int(s) for s in shape)))
        return self[len(self) - 1]


class PythonLayerBase:
    """Base class for user Python layers (pycaffe's ``caffe.Layer``); subclassing it is optional."""

    param_str: str = ""
    phase: int = 0

    def __init__(self, param: Any = None) -> None:
        self.layer_param = param

    def setup(self, bottom: list[PyBlob], top: list[PyBlob]) -> None:  # noqa: D102
        pass

    def reshape(self, bottom: list[PyBlob], top: list[PyBlob]) -> None:  # noqa: D102
        pass


def _host(t: Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's storage, or a host copy of a CUDA tensor."""
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t.cpu().numpy()


def _instantiate(cls: type, param: Any) -> Any:
    try:
        inspect.signature(cls).bind(param)
    except TypeError:
        return cls()
    except ValueError:  # no signature available (builtin base)
        pass
    return cls(param)


class _PythonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer: "PythonLayer", n_bottom: int, *tensors: Tensor):  # type: ignore[override]
        outs, top_arrays = layer.run_forward(tensors[:n_bottom], tensors[n_bottom:])
        ctx.layer, ctx.n_bottom, ctx.top_arrays = layer, n_bottom, top_arrays
        ctx.save_for_backward(*tensors)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        g = ctx.layer.run_backward(ctx.top_arrays, grads, tensors[: ctx.n_bottom], tensors[ctx.n_bottom:], needs)
        return (None, None, *g)


@register_layer("Python")
class PythonLayer(Layer):
    """Caffe's PythonLayer (see the module docstring); any number of bottoms and tops."""

    produces_host_data = True  # tops of a bottomless (data) layer are made on the host

    def setup(self, bottom_shapes: list[Shape]) -> None:
        pp = self.param.python_param
        self.native: Layer | None = None
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both module and layer")
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            mod = importlib.import_module(pp.module)
        except ImportError as e:
            stand_in = NATIVE_STAND_INS.get((pp.module, pp.layer))
            if stand_in is None:
                raise self.error(f"cannot import python_param.module '{pp.module}': {e} (sys.path: {sys.path})") from e
            log.info("layer '%s': python_param.module '%s' cannot be imported (%s); running neocaffe's native "
                     "'%s' layer in place of %s.%s", self.name, pp.module, e, stand_in, pp.module, pp.layer)
            self.native = get_layer_class(stand_in)(self.param, bottom_shapes, self.phase, self.context)
            return
        cls = getattr(mod, pp.layer, None)
        if cls is None:
            raise self.error(f"module '{pp.module}' ({getattr(mod, '__file__', '?')}) has no class '{pp.layer}'")
        self.py = _instantiate(cls, self.param)
        self.py.param_str = pp.param_str
        self.py.phase = int(self.phase)
        self.py.blobs = BlobVec(self)
        self.tops = [PyBlob(np.zeros((0,), dtype=np.float32)) for _ in self.param.top]
        self._call("setup", self._zero_bottoms(bottom_shapes), self.tops)

    def _call(self, method: str, *args: Any, required: bool = False) -> None:
        fn = getattr(self.py, method, None)
        if fn is None:
            if required:
                raise self.error(f"Python layer class {type(self.py).__name__} defines no {method}()")
            return
        fn(*args)

    @staticmethod
    def _zero_bottoms(shapes: list[Shape]) -> list[PyBlob]:
        return [PyBlob(np.zeros(tuple(s), dtype=np.float32)) for s in shapes]

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if self.native is not None:
            return self.native.reshape(bottom_shapes)
        self._call("reshape", self._zero_bottoms(bottom_shapes), self.tops)
        return [t.shape for t in self.tops]

    # -- running ------------------------------------------------------------------------------------
    def _bind_params(self, params: tuple[Tensor, ...], diffs: list[np.ndarray] | None) -> list[np.ndarray]:
        views = []
        for k, p in enumerate(params):
            d = diffs[k] if diffs is not None else (_host(p.grad) if p.grad is not None else None)
            views.append(PyBlob(_host(p), d))
        self.py.blobs._views = views
        return [v.data for v in views]

    def _release_params(self, params: tuple[Tensor, ...], arrays: list[np.ndarray]) -> None:
        self.py.blobs._views = None
        with torch.no_grad():
            for p, a in zip(params, arrays):
                if p.device.type != "cpu":  # host copies: write the user's changes back
                    p.copy_(torch.from_numpy(a))

    def run_forward(self, bottoms: tuple[Tensor, ...], params: tuple[Tensor, ...]):
        dtype = np.dtype(str(bottoms[0].dtype).replace("torch.", "")) if bottoms else np.dtype(np.float32)
        for t in self.tops:
            if t.data.dtype != dtype:
                t._data, t._diff = t.data.astype(dtype), None
        bviews = [PyBlob(_host(b)) for b in bottoms]
        arrays = self._bind_params(params, None)
        try:
            self._call("reshape", bviews, self.tops)
            self._call("forward", bviews, self.tops, required=True)
        finally:
            self._release_params(params, arrays)
        device = bottoms[0].device if bottoms else torch.device("cpu")
        top_arrays = [np.array(t.data, copy=True) for t in self.tops]
        return [torch.from_numpy(a).to(device) for a in top_arrays], top_arrays

    def run_backward(self, top_arrays, grads, bottoms, params, needs):
        nb = len(bottoms)
        tviews = [PyBlob(a, np.zeros_like(a) if g is None else np.array(_host(g), dtype=a.dtype, copy=True))
                  for a, g in zip(top_arrays, grads)]
        bviews = [PyBlob(_host(b), np.zeros(tuple(b.shape), dtype=_host(b).dtype)) for b in bottoms]
        pdiffs = [np.zeros(tuple(p.shape), dtype=_host(p).dtype) for p in params]
        arrays = self._bind_params(params, pdiffs)
        try:
            self._call("backward", tviews, [bool(n) for n in needs[:nb]], bviews, required=True)
        finally:
            self._release_params(params, arrays)
        diffs = [v.diff for v in bviews] + pdiffs
        return [torch.from_numpy(np.ascontiguousarray(d)).to(t.device, t.dtype) if needs[k] else None
                for k, (t, d) in enumerate(zip(list(bottoms) + list(params), diffs))]

    def allow_force_backward(self, bottom: int) -> bool:
        return self.native.allow_force_backward(bottom) if self.native is not None else True

    def forward(self, *bottoms: Tensor):  # type: ignore[override]
        if self.native is not None:
            return self.native(*bottoms)
        params = tuple(self.blobs)
        tensors = (*bottoms, *params)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            outs = _PythonFn.apply(self, len(bottoms), *tensors)
        else:
            outs, _ = self.run_forward(bottoms, params)
        return list(outs)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(50)
        return [
            Example('name: "py" type: "Python" bottom: "x" top: "y" '
                    'python_param { module: "neocaffe.layers.python_layer" layer: "ScaleExampleLayer" param_str: "1.5" }',
                    [r.standard_normal((2, 3))]),
            Example('name: "py" type: "Python" bottom: "a" bottom: "b" top: "s" top: "d" '
                    'python_param { module: "neocaffe.layers.python_layer" layer: "SumDiffExampleLayer" }',
                    [r.standard_normal((3, 2)), r.standard_normal((3, 2))], grad_bottoms=(0, 1)),
        ]


class ScaleExampleLayer(PythonLayerBase):
    """Example (contract test): ``top = w * bottom`` with a learnable scalar blob w = float(param_str)."""

    def setup(self, bottom, top):  # noqa: D102
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 1.0)

    def reshape(self, bottom, top):  # noqa: D102
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):  # noqa: D102
        top[0].data[...] = bottom[0].data * self.blobs[0].data[0]

    def backward(self, top, propagate_down, bottom):  # noqa: D102
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[0]
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)


class SumDiffExampleLayer:
    """Example of a user class that subclasses nothing: tops a + b and a - b."""

    def setup(self, bottom, top):  # noqa: D102
        if len(bottom) != 2 or len(top) != 2:
            raise Exception("needs two bottoms and two tops")

    def reshape(self, bottom, top):  # noqa: D102
        top[0].reshape(*bottom[0].shape)
        top[1].reshape(*bottom[0].shape)

    def forward(self, bottom, top):  # noqa: D102
        top[0].data[...] = bottom[0].data + bottom[1].data
        top[1].data[...] = bottom[0].data - bottom[1].data

    def backward(self, top, propagate_down, bottom):  # noqa: D102
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff + top[1].diff
        if propagate_down[1]:
            bottom[1].diff[...] = top[0].diff - top[1].diff
