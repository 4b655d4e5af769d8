"""The lean inference path: forwards that record nothing for a backward.

A net runs here when nothing can follow that needs a graph: under ``torch.no_grad()`` (``caffe test``,
the solver's test nets, ``caffe.Classifier``), and for pycaffe's nets that need no backward at all
(a deploy net without ``force_backward``: Caffe would run no layer's Backward). Per layer it does only
what the forward needs: the layer's lean kernel (``Layer.lean_kernel``: its forward with the
geometry and kernel choices made once per bottom shape, built when a shape is first seen and
reused while the bottoms keep their shapes, dtypes and devices) or else its own ``forward`` (no
module-call hooks; layers skip their autograd Functions when nothing records), its tops moved where
the net keeps them, the blob values stored. The per-layer plan (what each layer reads and writes,
whether its ReLU may work truly in place) is built once and reused.

In place: a ReLU whose blob was just written by a layer that always returns a new tensor
(convolution, pooling, InnerProduct, ...) overwrites that tensor, as Caffe's in-place layers do,
instead of allocating another; only on full forwards, so no tensor of an earlier forward is touched.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
from torch import Tensor

from neocaffe.graph.steps import settle_top
from neocaffe.layers.base import PLAIN

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

#: layer types whose forward always returns tensors of their own (never a view of a bottom)
FRESH = frozenset({"Convolution", "Deconvolution", "InnerProduct", "Pooling", "Eltwise", "LRN", "Concat",
                   "BatchNorm", "Scale", "Bias", "PReLU", "Softmax", "Power", "ELU", "Sigmoid", "TanH"})


class _Op(NamedTuple):
    fn: Callable[..., Any]
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    settle: bool  # tops need settle_top (data/Input layers)
    loss_weights: tuple[float, ...]


def _relu_in_place(slope: float) -> Callable[[Tensor], Tensor]:
    if slope == 0:
        return torch.relu_
    return lambda x: torch.nn.functional.leaky_relu_(x, slope)


def _signature(bottoms: list[Tensor]) -> tuple[Any, ...]:
    return tuple((t.shape, t.dtype, t.device) for t in bottoms)


class InferenceExecutor:
    """See the module docstring."""

    def __init__(self, net: "Net") -> None:
        self.net = net
        self.ops: list[_Op] = []
        self.layers = tuple(net.layers)
        #: per layer: (the bottoms' signature, the function built for it), or None until built
        self.kernels: list[tuple[tuple[Any, ...], Callable[..., Any]] | None] = [None] * len(self.layers)
        self.in_place: list[_Op | None] = []
        fresh: set[str] = set()  # blobs whose current tensor no one else holds
        for st, layer in zip(net.steps, net.layers):
            fn = (lambda *b, _f=layer.forward: _f(*b, call=PLAIN)) if st.takes_call else layer.forward
            op = _Op(fn, st.bottoms, st.tops, st.host or st.input, st.loss_weights)
            self.ops.append(op)
            inplace = None
            if (st.type == "ReLU" and st.in_place == (True,) and st.bottoms[0] in fresh
                    and not len(net.plan.layers[len(self.ops) - 1].param.propagate_down)):
                inplace = _Op(_relu_in_place(float(getattr(layer, "slope", 0.0))), op.bottoms, op.tops, op.settle,
                              op.loss_weights)
            self.in_place.append(inplace)
            for j, name in enumerate(st.tops):
                if st.type in FRESH or (inplace is not None and st.in_place[j]):
                    fresh.add(name)
                else:
                    fresh.discard(name)

    def reset(self) -> None:
        """Forget the kernels built (the parameters changed layout, dtype or device)."""
        self.kernels = [None] * len(self.layers)

    def _kernel(self, i: int, bottoms: list[Tensor]) -> Callable[..., Any]:
        sig = _signature(bottoms)
        k = self.kernels[i]
        if k is None or k[0] != sig:
            k = self.kernels[i] = (sig, self.layers[i].lean_kernel(bottoms) or self.ops[i].fn)
        return k[1]

    def forward(self, lo: int, hi: int) -> Tensor | None:
        """Layers ``lo``..``hi`` without autograd; the loss of their loss-weighted tops."""
        net = self.net
        vals = net.state.values
        nhwc = net.memory_format is torch.channels_last
        full = lo == 0 and hi == len(self.ops) - 1
        loss: Tensor | None = None
        with torch.no_grad():
            for i in range(lo, hi + 1):
                op = self.in_place[i] if full else None
                if op is not None:
                    out = op.fn(vals[op.bottoms[0]])
                else:
                    op = self.ops[i]
                    bottoms = [vals[b] for b in op.bottoms]
                    out = self._kernel(i, bottoms)(*bottoms) if bottoms else op.fn()
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
