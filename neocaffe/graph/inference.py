"""The lean inference path: forwards that record nothing for a backward.

A net runs here when nothing can follow that needs a graph: under ``torch.no_grad()`` (``caffe test``,
the solver's test nets, ``caffe.Classifier``), and for pycaffe's nets that need no backward at all
(a deploy net without ``force_backward``: Caffe would run no layer's Backward). Per layer it does only
what the forward needs: the layer's lean kernel (``Layer.lean_kernel``: its forward with the
geometry and kernel choices made once per bottom shape, built when a shape is first seen and
reused while the bottoms keep their shapes, dtypes and devices) or else its own ``forward`` (no
module-call hooks; layers skip their autograd Functions when nothing records), its tops moved where
the net keeps them, the blob values stored. The per-layer plan (what each layer reads and writes,
whether a layer may work truly in place) is built once and reused.

In place: a layer whose top is its bottom (ReLU, BatchNorm with global statistics, Scale with a learned
scale: ``Layer.lean_kernel_in_place``) overwrites its bottom's tensor, as Caffe's in-place layers do,
instead of allocating another, when that tensor is fresh: written in this forward by a layer that always
returns a tensor of its own (convolution, pooling, InnerProduct, ...), and read since by no layer that may
hand it on under another name (Split, Reshape, Flatten, Dropout in place at TEST, a one-bottom Concat
return their bottom or a view of it). Only on full forwards, so no tensor of an earlier forward is
touched, and never where a ``propagate_down`` is set.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
from torch import Tensor

from neocaffe.graph.steps import Step, settle_top
from neocaffe.layers.base import PLAIN, Layer

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

#: layer types whose forward always returns tensors of their own (never a bottom or a view of one);
#: Concat only with two bottoms or more
FRESH = frozenset({"Convolution", "Deconvolution", "InnerProduct", "Pooling", "Eltwise", "LRN", "Concat",
                   "BatchNorm", "Scale", "Bias", "PReLU", "Softmax", "Power", "ELU", "Sigmoid", "TanH"})


class _Op(NamedTuple):
    fn: Callable[..., Any]
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    settle: bool  # tops need settle_top (data/Input layers)
    loss_weights: tuple[float, ...]


def _signature(bottoms: list[Tensor]) -> tuple[Any, ...]:
    return tuple((t.shape, t.dtype, t.device) for t in bottoms)


def _offers_in_place(layer: Layer) -> bool:
    return type(layer).lean_kernel_in_place is not Layer.lean_kernel_in_place


def _fresh_tops(step: Step) -> bool:
    return step.type in FRESH and (step.type != "Concat" or len(step.bottoms) > 1)


class InferenceExecutor:
    """See the module docstring."""

    def __init__(self, net: "Net") -> None:
        self.net = net
        self.ops: list[_Op] = []
        self.layers = tuple(net.layers)
        #: per layer: (the bottoms' signature, the function built for it), or None until built;
        #: ``kernels_in_place`` the same for the in-place kernels of full forwards
        self.kernels: list[tuple[tuple[Any, ...], Callable[..., Any]] | None] = [None] * len(self.layers)
        self.kernels_in_place: list[tuple[tuple[Any, ...], Callable[..., Any]] | None] = [None] * len(self.layers)
        #: per layer: on full forwards, may it overwrite its bottom (see the module docstring)
        self.in_place: list[bool] = []
        fresh: set[str] = set()  # blobs whose current tensor no one else holds
        for i, (st, layer) in enumerate(zip(net.steps, net.layers)):
            fn = (lambda *b, _f=layer.forward: _f(*b, call=PLAIN)) if st.takes_call else layer.forward
            self.ops.append(_Op(fn, st.bottoms, st.tops, st.host or st.input, st.loss_weights))
            inplace = (st.in_place == (True,) and st.bottoms[0] in fresh and not (st.host or st.input)
                       and _offers_in_place(layer) and not len(net.plan.layers[i].param.propagate_down))
            self.in_place.append(inplace)
            if inplace:
                continue  # its top is its bottom's fresh tensor
            if not _fresh_tops(st):  # a top may be a bottom under another name
                fresh.difference_update(st.bottoms)
                fresh.difference_update(st.tops)
            else:
                fresh.update(st.tops)

    def reset(self) -> None:
        """Forget the kernels built (the parameters changed layout, dtype or device)."""
        self.kernels = [None] * len(self.layers)
        self.kernels_in_place = [None] * len(self.layers)

    def build(self, i: int, bottoms: list[Tensor], in_place: bool) -> Callable[..., Any]:
        """Layer ``i``'s function for these bottoms: its in-place kernel (``in_place`` and offered),
        else its lean kernel, else its forward."""
        layer = self.layers[i]
        return ((layer.lean_kernel_in_place(bottoms) if in_place else None) or layer.lean_kernel(bottoms)
                or self.ops[i].fn)

    def _kernel(self, i: int, bottoms: list[Tensor], in_place: bool) -> Callable[..., Any]:
        cache = self.kernels_in_place if in_place else self.kernels
        sig = _signature(bottoms)
        k = cache[i]
        if k is None or k[0] != sig:
            k = cache[i] = (sig, self.build(i, bottoms, in_place))
        return k[1]

    def forward(self, lo: int, hi: int) -> Tensor | None:
        """Layers ``lo``..``hi`` without autograd; the loss of their loss-weighted tops."""
        net = self.net
        vals = net.state.values
        nhwc = net.memory_format is torch.channels_last
        full = lo == 0 and hi == len(self.ops) - 1
        in_place = self.in_place
        loss: Tensor | None = None
        with torch.no_grad():
            for i in range(lo, hi + 1):
                op = self.ops[i]
                bottoms = [vals[b] for b in op.bottoms]
                out = self._kernel(i, bottoms, full and in_place[i])(*bottoms) if bottoms else op.fn()
                if len(op.tops) == 1:
                    tops = [out] if isinstance(out, Tensor) else list(out)
                else:
                    tops = list(out)
                if op.settle:
                    tops = [settle_top(t, net.steps[i], net.device, nhwc, False) for t in tops]
                for name, t, w in zip(op.tops, tops, op.loss_weights):
                    vals[name] = t
                    if w:
                        term = t.sum() * w
                        loss = term if loss is None else loss + term
        return loss


__all__ = ["InferenceExecutor", "FRESH"]
