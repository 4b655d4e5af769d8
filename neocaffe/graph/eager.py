"""The training executor: one autograd graph per forward, one ``autograd.backward`` per backward.

What the solver's nets run. Blob values go to the net's :class:`~neocaffe.graph.blobs.BlobState`;
the executor keeps only what its backward needs: the tensor of each blob's last value (with its
autograd history), the loss terms, and, for layers whose Caffe backward reads top data, the
:class:`~neocaffe.layers.base.TopRef` it fills after each forward with the blob's final value. Parameter
diffs accumulate (Caffe's semantics); blob diffs are not kept: nets whose blob diffs are read
(pycaffe's) run :class:`~neocaffe.graph.exact.CaffeExecutor`.

``propagate_down: false`` cuts a bottom off the graph. The opt-in ``fused`` mode runs each ReLU+LRN
pair found by :mod:`neocaffe.graph.fusion` as one kernel.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
from torch import Tensor

from neocaffe.graph.fusion import run_relu_lrn
from neocaffe.graph.steps import call_layer, rewritten_tops, settle_top
from neocaffe.layers.base import PLAIN, LayerCall, TopRef

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

LossTerms = list[tuple[Tensor, float]]


class GraphExecutor:
    """See the module docstring. ``pairs``: fused ReLU layer index -> its LRN (the fused mode's)."""

    records_blob_diffs = False

    def __init__(self, net: "Net", pairs: Mapping[int, int] | None = None) -> None:
        self.net = net
        self.pairs: Mapping[int, int] = pairs if pairs is not None else {}
        self.tracked: dict[str, Tensor] = {}
        self.terms: LossTerms = []
        rewritten = rewritten_tops(net.steps)
        self.finals: list[list[tuple[TopRef, str]]] = []  # per layer: (its ref, blob) for rewritten tops
        self.calls: list[LayerCall] = []
        for st, rw in zip(net.steps, rewritten):
            refs = tuple(TopRef() for _ in st.tops) if any(rw) else ()
            self.calls.append(LayerCall(refs, accumulate=True) if st.takes_call else PLAIN)
            self.finals.append([(r, n) for r, n, w in zip(refs, st.tops, rw) if w])
        # bottoms cut off by an explicit propagate_down: false
        self.cut = [tuple(not k for k in lp.param.propagate_down) for lp in net.plan.layers]

    # -- forward --------------------------------------------------------------------------------
    def forward(self, lo: int, hi: int, track: bool) -> Tensor | None:
        """Run layers ``lo``..``hi``; the loss of their loss-weighted tops (None without any)."""
        if lo == 0:
            self.begin()
        vals = self.tracked
        state = self.net.state
        for st in self.net.steps[lo:hi + 1]:
            for b in st.bottoms:
                if b not in vals:
                    vals[b] = state.value(b)
        loss = self.run(lo, hi, vals, self.terms, track, self.calls, self.pairs)
        for i in range(lo, hi + 1):
            for name in self.net.steps[i].tops:
                state.values[name] = vals[name].detach()
            for ref, name in self.finals[i]:
                ref.value = vals[name].detach()
        return loss

    def begin(self) -> None:
        """A new forward from the first layer: forget the last one's tensors and loss terms."""
        self.tracked, self.terms = {}, []

    def adopt(self, vals: Mapping[str, Tensor], terms: LossTerms) -> None:
        """Take blob tensors and loss terms computed elsewhere (a compiled ``run``) as this forward's."""
        self.tracked.update(vals)
        self.terms.extend(terms)
        for name, t in vals.items():
            self.net.state.values[name] = t.detach()

    def run(self, lo: int, hi: int, vals: dict[str, Tensor], terms: LossTerms, track: bool,
            calls: list[LayerCall], pairs: Mapping[int, int]) -> Tensor | None:
        """Layers ``lo``..``hi`` on the tensors in ``vals`` (updated in place). Reads only plain data
        and writes nothing else, so ``torch.compile`` can trace it."""
        net = self.net
        nhwc = net.memory_format is torch.channels_last
        force = track and net.force_backward
        loss: Tensor | None = None
        fused_tops: dict[int, Tensor] = {}  # the LRN of a fused pair: its top, already computed
        for i in range(lo, hi + 1):
            st = net.steps[i]
            layer = net.layers[i]
            bottoms = [vals[b] for b in st.bottoms]
            cut = self.cut[i]
            if cut:
                bottoms = [b.detach() if c else b for b, c in zip(bottoms, cut)]
            if i in fused_tops:
                tops = [fused_tops.pop(i)]
            elif i in pairs and i < hi and (pair := run_relu_lrn(net, i, bottoms[0], calls[i + 1].top(0))) is not None:
                tops, fused_tops[i + 1] = [pair[0]], pair[1]
            else:
                tops = call_layer(layer, st, bottoms, calls[i])
            for name, t, w in zip(st.tops, tops, st.loss_weights):
                t = settle_top(t, st, net.device, nhwc, force)
                vals[name] = t
                if w:
                    terms.append((t, w))
                    term = t.sum() * w
                    loss = term if loss is None else loss + term
        return loss

    # -- backward -------------------------------------------------------------------------------
    def backward(self, top_diffs: Mapping[str, Tensor], retain_graph: bool) -> None:
        """Loss tops seeded with their loss weight, the blobs in ``top_diffs`` with the diffs given;
        parameter diffs accumulate into ``.grad``."""
        tensors: list[Tensor] = []
        grads: list[Tensor] = []
        for t, w in self.terms:
            if t.requires_grad:
                tensors.append(t)
                grads.append(torch.full_like(t, w))
        for name, diff in top_diffs.items():
            t = self.tracked.get(name)
            if t is not None and t.requires_grad:
                tensors.append(t)
                grads.append(diff.to(t.device, t.dtype).reshape(t.shape))
        if tensors:
            torch.autograd.backward(tensors, grads, retain_graph=retain_graph)

    def forget(self, lo: int, hi: int) -> None:
        """Blobs were recomputed elsewhere: the recorded graph no longer matches them."""
        self.tracked, self.terms = {}, []

    def ready(self, lo: int, hi: int) -> bool:
        """Whether a forward has recorded a graph to run backward on."""
        return bool(self.tracked)

    def recorded(self, name: str) -> Tensor | None:
        """The tensor of blob ``name``'s last value, with its autograd history (for timing hooks)."""
        return self.tracked.get(name)


__all__ = ["GraphExecutor"]
