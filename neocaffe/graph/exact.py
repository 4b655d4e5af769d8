"""Caffe's own Forward/Backward, layer by layer: the executor of nets whose blob diffs are read.

Each layer that needs backward (:mod:`neocaffe.graph.needs`: Caffe's ``layer_need_backward_``) runs on
bottoms detached from the layer below, so it records an autograd graph of its own; the others run
without one. A backward over layers ``start`` down to ``end`` (``Net::BackwardFromTo``) then calls
each layer's backward in turn, exactly as Caffe does with its Blobs: the layer reads its top diffs
from the net's :class:`~neocaffe.graph.blobs.BlobState` (a loss top's is its loss weight unless set,
an output's is what the user set or zeros, any other what the layer above wrote) and writes the diffs
of the bottoms that need one back into it. A blob rewritten in place is one blob, so each in-place
layer's backward overwrites the diff its top diff came from: after a backward a blob's diff is the
gradient at the value its first writer produced. Blobs no layer writes keep their diff; parameter
diffs accumulate. Layers whose backward reads top data see the blob's value at backward time.

A net that needs no backward at all (a deploy net without ``force_backward``) records nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, NamedTuple

import torch
from torch import Tensor

from neocaffe.graph.errors import NetError
from neocaffe.graph.steps import call_layer, rewritten_tops, settle_top
from neocaffe.layers.base import PLAIN, LayerCall, TopRef

if TYPE_CHECKING:
    from neocaffe.graph.net import Net


class _Record(NamedTuple):
    bottoms: list[Tensor]  # leaves: the diff of those that need one lands in .grad
    tops: list[Tensor]
    call: LayerCall


class CaffeExecutor:
    """See the module docstring."""

    records_blob_diffs = True

    def __init__(self, net: "Net") -> None:
        self.net = net
        self.records: dict[int, _Record] = {}
        self.rewritten = rewritten_tops(net.steps)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, lo: int, hi: int, track: bool) -> Tensor | None:
        """Layers ``lo``..``hi`` (Caffe's ForwardFromTo); the loss of their loss-weighted tops."""
        net = self.net
        state, needs = net.state, net.needs
        nhwc = net.memory_format is torch.channels_last
        loss: Tensor | None = None
        for i in range(lo, hi + 1):
            st = net.steps[i]
            values = [state.value(b) for b in st.bottoms]
            if track and needs.layer[i]:
                bottoms = [v.detach().requires_grad_(need and v.is_floating_point())
                           for v, need in zip(values, needs.bottom[i])]
                call = LayerCall(tuple(TopRef() for _ in st.tops), accumulate=True) if st.takes_call else PLAIN
                with torch.enable_grad():
                    tops = [settle_top(t, st, net.device, nhwc, False)
                            for t in call_layer(net.layers[i], st, bottoms, call)]
                self.records[i] = _Record(bottoms, tops, call)
            else:
                with torch.no_grad():
                    tops = [settle_top(t, st, net.device, nhwc, False)
                            for t in call_layer(net.layers[i], st, values)]
                self.records.pop(i, None)
            for name, t, w in zip(st.tops, tops, st.loss_weights):
                state.values[name] = t.detach()
                if w:
                    term = t.detach().sum() * w
                    loss = term if loss is None else loss + term
        return loss

    # -- backward -------------------------------------------------------------------------------
    def backward(self, top_diffs: Mapping[str, Tensor], hi: int, lo: int) -> None:
        """Layers ``hi`` down to ``lo`` (Caffe's BackwardFromTo); ``top_diffs`` are written into the
        blobs' diffs first."""
        net = self.net
        state, needs = net.state, net.needs
        for name, d in top_diffs.items():
            state.set_diff(name, d)
        missing = self._missing(lo, hi)
        if missing:
            raise NetError(f"{net.source}: backward over layers {net.steps[lo].name}..{net.steps[hi].name} "
                                f"needs a forward through them with gradients enabled; not run: {', '.join(missing)}")
        for i in range(hi, lo - 1, -1):
            if needs.layer[i]:
                self._layer_backward(i)

    def forget(self, lo: int, hi: int) -> None:
        """Layers ``lo``..``hi`` ran elsewhere: their records are stale."""
        if not self.records:
            return
        for i in range(lo, hi + 1):
            self.records.pop(i, None)

    def _missing(self, lo: int, hi: int) -> list[str]:
        needs = self.net.needs
        return [self.net.steps[i].name for i in range(lo, hi + 1) if needs.layer[i] and i not in self.records]

    def ready(self, lo: int, hi: int) -> bool:
        """Whether a backward over layers ``hi`` down to ``lo`` has what it needs from the last forward."""
        return not self._missing(lo, hi)

    def _layer_backward(self, i: int) -> None:
        net = self.net
        st, rec, state = net.steps[i], self.records[i], net.state
        for ref, name, rewritten in zip(rec.call.tops, st.tops, self.rewritten[i]):
            ref.value = state.value(name) if rewritten else None
        tensors, grads = [], []
        for name, t in zip(st.tops, rec.tops):
            if t.requires_grad:
                tensors.append(t)
                grads.append(state.diff(name).to(t.dtype))
        inputs = [b for b in rec.bottoms if b.requires_grad]
        inputs += [p for p, need in zip(net.layers[i].blobs, net.needs.param[i]) if need and p.requires_grad]
        if not tensors or not inputs:
            return
        for b in rec.bottoms:
            b.grad = None
        torch.autograd.backward(tensors, grads, retain_graph=True, inputs=inputs)
        for name, b in zip(st.bottoms, rec.bottoms):
            if b.requires_grad:
                state.write_diff(name, b.grad if b.grad is not None else torch.zeros_like(b))

    def recorded(self, name: str) -> Tensor | None:
        """The tensor of blob ``name``'s last value, with the autograd history of its layer."""
        for i in sorted(self.records, reverse=True):
            for top, t in zip(self.net.steps[i].tops, self.records[i].tops):
                if top == name:
                    return t
        return None


__all__ = ["CaffeExecutor"]
