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

One pass: on full forwards a BatchNorm with stored statistics followed, truly in place on its top, by a Scale
and/or a ReLU runs as one native kernel (:mod:`neocaffe.layers.channel_chain`), with the layers' numbers bit
for bit; where that kernel cannot be built the layers run one by one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
from torch import Tensor

from neocaffe.graph.grad_mode import no_grad
from neocaffe.graph.steps import Step, settle_top, settles
from neocaffe.layers.base import PLAIN, Layer
from neocaffe.layers.channel_chain import bn_chain

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


def _chains(steps: list[Step], in_place: list[bool]) -> list[tuple[int | None, int | None] | None]:
    """Per layer: where a BatchNorm heads a chain its followers run with it (the index of a Scale, of
    a ReLU, or None each), else None. A follower must work truly in place on the BatchNorm's top
    (``in_place``), so no blob shows the values between the links; no link may carry a loss weight."""
    out: list[tuple[int | None, int | None] | None] = [None] * len(steps)

    def plain(st: Step) -> bool:
        return len(st.bottoms) == 1 and len(st.tops) == 1 and not any(st.loss_weights) and not (st.host or st.input)

    for i, st in enumerate(steps):
        if st.type != "BatchNorm" or not plain(st) or (st.in_place == (True,) and not in_place[i]):
            continue
        links: list[int | None] = []
        j = i + 1
        for kind in ("Scale", "ReLU"):
            nxt = steps[j] if j < len(steps) else None
            if nxt is not None and nxt.type == kind and plain(nxt) and in_place[j] and nxt.bottoms == st.tops:
                links.append(j)
                j += 1
            else:
                links.append(None)
        out[i] = (links[0], links[1])
    return out


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
        #: per layer: the BatchNorm -> Scale -> ReLU chain it heads on full forwards (``_chains``), and
        #: per head (the bottoms' signature, the one-pass kernel or None where it has none)
        self.chains = _chains(net.steps, self.in_place)
        self.kernels_chain: list[tuple[tuple[Any, ...], Callable[..., Any] | None] | None] = [None] * len(self.layers)
        # Steady forwards: where the layers without bottoms (data, Input) come first and every later
        # layer's top shapes follow from its bottoms' shapes alone, a full forward whose source tops
        # keep their signatures runs the kernels the last one took, looking nothing up
        steps = net.steps
        first = next((i for i, st in enumerate(steps) if st.bottoms), len(steps))
        static = all(st.bottoms and not (st.host or st.input or st.type == "Python" or layer.value_dependent_shape)
                     for st, layer in zip(steps[first:], net.layers[first:]))
        #: the first layer of steady forwards (None: this net has none); the source layers' tops
        self.steady_from: int | None = first if static else None
        self.source_tops = [name for st in steps[:first] for name in st.tops]
        #: the source tops' signature and the kernels the forward after them took
        self.steady: tuple[tuple[Any, ...], list[_Planned]] | None = None

    def reset(self) -> None:
        """Forget the kernels built (the parameters changed layout, dtype or device)."""
        self.kernels = [None] * len(self.layers)
        self.kernels_in_place = [None] * len(self.layers)
        self.kernels_chain = [None] * len(self.layers)
        self.steady = None

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

    def _chain_kernel(self, i: int, bottoms: list[Tensor]) -> tuple[Callable[..., Any] | None, int]:
        """The one-pass kernel of the chain layer ``i`` heads (or None) and the chain's last layer."""
        scale, relu = self.chains[i]  # type: ignore[misc]
        sig = _signature(bottoms)
        k = self.kernels_chain[i]
        if k is None or k[0] != sig:
            layers = self.layers
            k = self.kernels_chain[i] = (sig, bn_chain(layers[i], layers[scale] if scale is not None else None,
                                                       layers[relu] if relu is not None else None, bottoms[0],
                                                       self.in_place[i]))
        return k[1], max(j for j in (i, scale, relu) if j is not None)

    def forward(self, lo: int, hi: int) -> Tensor | None:
        """Layers ``lo``..``hi`` without autograd; the loss of their loss-weighted tops."""
        full = lo == 0 and hi == len(self.ops) - 1
        with no_grad():
            if not (full and self.steady_from is not None):
                return self._run(lo, hi, full, None, None)
            return self.after_sources(self._run(0, self.steady_from - 1, True, None, None))

    def after_sources(self, loss: Tensor | None) -> Tensor | None:
        """The rest of a full forward of a net with steady forwards (``steady_from`` is not None), its
        source layers run (``loss``: theirs): the kernels the last forward took where the sources'
        tops kept their signatures. Call without autograd."""
        vals = self.net.state.values
        key = _signature([vals[name] for name in self.source_tops])
        if self.steady is not None and self.steady[0] == key:
            return _run_steady(self.steady[1], vals, loss)
        plan: list[_Planned] = []
        loss = self._run(self.steady_from, len(self.ops) - 1, True, plan, loss)  # type: ignore[arg-type]
        self.steady = (key, plan)
        return loss

    def _run(self, lo: int, hi: int, full: bool, plan: list[_Planned] | None, loss: Tensor | None) -> Tensor | None:
        """Layers ``lo``..``hi``, each kernel looked up for its bottoms; ``plan``: where to note what ran."""
        net = self.net
        vals = net.state.values
        nhwc = net.memory_format is torch.channels_last
        settle = settles(net.device, nhwc, False)
        in_place, chains = self.in_place, self.chains
        i = lo - 1
        while i < hi:
            i += 1
            op = self.ops[i]
            bottoms = [vals[b] for b in op.bottoms]
            if full and chains[i] is not None:
                fn, last = self._chain_kernel(i, bottoms)
                if fn is not None:  # the chain in one pass: its last layer's top (the same name) gets the value
                    vals[op.tops[0]] = fn(bottoms[0])
                    if plan is not None:
                        plan.append(_Planned(fn, op.bottoms[0], op.bottoms, op.tops[0], op.tops, ()))
                    i = last
                    continue
            fn = self._kernel(i, bottoms, full and in_place[i]) if bottoms else op.fn
            out = fn(*bottoms)
            single = len(op.tops) == 1 and isinstance(out, Tensor)
            tops = [out] if single else list(out)
            if op.settle and settle:
                tops = [settle_top(t, net.steps[i], net.device, nhwc, False) for t in tops]
            if plan is not None:
                plan.append(_Planned(fn, op.bottoms[0] if len(op.bottoms) == 1 else None, op.bottoms,
                                     op.tops[0] if single else None, op.tops,
                                     op.loss_weights if any(op.loss_weights) else ()))
            for name, t, w in zip(op.tops, tops, op.loss_weights):
                vals[name] = t
                if w:
                    loss = _add(loss, t, w)
        return loss


class _Planned(NamedTuple):
    """One layer of a steady forward: its kernel, what it reads and writes, its loss weights (or ())."""
    fn: Callable[..., Any]
    bottom: str | None  # the one bottom, when there is one
    bottoms: tuple[str, ...]
    top: str | None  # the one top, when the kernel returns a tensor
    tops: tuple[str, ...]
    loss_weights: tuple[float, ...]


def _add(loss: Tensor | None, t: Tensor, w: float) -> Tensor:
    term = t.sum() * w
    return term if loss is None else loss + term


def _run_steady(plan: list[_Planned], vals: dict[str, Tensor], loss: Tensor | None) -> Tensor | None:
    """The layers after the sources with the kernels they took last time (the inputs kept their
    shapes, dtypes and devices, so every bottom did)."""
    for fn, bottom, bottoms, top, tops, weights in plan:
        out = fn(vals[bottom]) if bottom is not None else fn(*[vals[b] for b in bottoms])
        if top is not None:
            vals[top] = out
        else:
            vals.update(zip(tops, out))
        if weights:
            for name, w in zip(tops, weights):
                if w:
                    loss = _add(loss, vals[name], w)
    return loss


__all__ = ["InferenceExecutor", "FRESH"]
