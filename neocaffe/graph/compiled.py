"""``torch.compile`` of a Net's forward (the opt-in ``compile`` speed mode, :mod:`neocaffe.graph.modes`).

``enable_compile(net)`` compiles the net's forward *after* its leading data and Input layers (those read
files, queues and buffers and stay eager) into one function; its backward is compiled along with it
(AOTAutograd). The loop over layers reads only plain data (``Net.steps``), so Dynamo traces it into one
graph for nets whose layers do (AlexNet/CaffeNet: ``fullgraph=True`` holds). A layer that breaks the
graph makes Dynamo fall back to compiling each layer's forward on its own: still correct, less fused
(``TORCH_LOGS=graph_breaks`` names it). Partial forwards (``start``/``end``) and forwards that keep blob
diffs run eagerly.

Deliberate differences of the compiled path (it is opt-in and not Caffe-exact):

* a layer whose Caffe backward reads its top *after later in-place layers* (``TopRef``) reads its own
  output instead, because the backward is traced together with the forward;
* Dropout masks come from torch's generator inside the graph, not ``neocaffe.rng``'s stream;
* inductor may fuse multiply-adds, so float32 results differ from eager in the last bits.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from neocaffe.graph.eager import GraphExecutor
from neocaffe.layers.base import PLAIN


class CompiledExecutor:
    """Full forwards through ``torch.compile`` (see the module docstring); partial ones, and the
    backward, through the :class:`~neocaffe.graph.eager.GraphExecutor` it wraps and shares its state with."""

    records_blob_diffs = False

    def __init__(self, eager: GraphExecutor, mode: str = "default", backend: str = "inductor",
                 fullgraph: bool = False) -> None:
        self.eager = eager
        net = eager.net
        n = len(net.steps)
        k = 0
        while k < n and (net.steps[k].host or net.steps[k].input):
            k += 1
        produced: set[str] = set()
        needed: list[str] = []
        for st in net.steps[k:]:
            for b in st.bottoms:
                if b not in produced and b not in needed:
                    needed.append(b)
            produced.update(st.tops)
        self.start, self.inputs = k, needed
        self.calls = [PLAIN] * n  # no TopRefs and no in-place parameter diffs inside a traced graph
        kwargs: dict[str, Any] = {"backend": backend, "fullgraph": fullgraph}
        if mode not in ("", "default"):
            kwargs["mode"] = mode
        self.fn = torch.compile(self._core, **kwargs)

    def _core(self, vals_in: dict[str, Tensor]) -> tuple[Any, Any, Any]:
        vals = dict(vals_in)
        terms: list[tuple[Tensor, float]] = []
        eager = self.eager
        loss = eager.run(self.start, len(eager.net.steps) - 1, vals, terms, torch.is_grad_enabled(),
                         self.calls, eager.pairs)
        return vals, terms, loss

    def forward(self, lo: int, hi: int, track: bool) -> Tensor | None:
        eager = self.eager
        if lo != 0 or hi != len(eager.net.steps) - 1:
            return eager.forward(lo, hi, track)
        eager.begin()
        k = self.start
        loss = eager.forward(0, k - 1, track) if k else None  # the data and Input layers, eagerly
        if k == len(eager.net.steps):
            return loss
        vals, terms, core_loss = self.fn({b: eager.recorded(b) for b in self.inputs})
        eager.adopt(vals, terms)
        if core_loss is None:
            return loss
        return core_loss if loss is None else loss + core_loss

    def backward(self, top_diffs: Any, retain_graph: bool) -> None:
        self.eager.backward(top_diffs, retain_graph)

    def forget(self, lo: int, hi: int) -> None:
        self.eager.forget(lo, hi)

    def ready(self, lo: int, hi: int) -> bool:
        return self.eager.ready(lo, hi)

    def recorded(self, name: str) -> Tensor | None:
        return self.eager.recorded(name)


__all__ = ["CompiledExecutor"]
