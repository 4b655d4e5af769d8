"""A Net's opt-in speed modes: NHWC memory layout and ``torch.compile`` of its forward.

``set_memory_format(net, torch.channels_last)`` lays out every 4-D parameter and its diff in NHWC, and
from then on the net converts the 4-D float tops of its data and Input layers the same way, so the
convolutions see NHWC on both operands. Values are unchanged; shared parameters stay shared (their
storage is replaced once, through ``Parameter.data``).

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

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from neocaffe.graph.errors import NetError
from neocaffe.graph.eager import GraphExecutor
from neocaffe.layers.base import PLAIN

if TYPE_CHECKING:
    from neocaffe.graph.net import Net


def set_memory_format(net: "Net", memory_format: torch.memory_format) -> None:
    """See the module docstring; ``memory_format``: ``torch.contiguous_format`` or ``torch.channels_last``."""
    if memory_format not in (torch.contiguous_format, torch.channels_last):
        raise NetError(f"memory format {memory_format} is not supported; use torch.contiguous_format "
                       "or torch.channels_last")
    net.memory_format = memory_format
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=memory_format)
                if p.grad is not None:
                    p.grad = p.grad.contiguous(memory_format=memory_format)


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
        eager.tracked, eager.terms = {}, []
        k = self.start
        loss = eager.run(0, k - 1, eager.tracked, eager.terms, track, eager.calls, eager.pairs) if k else None
        if k == len(eager.net.steps):
            return loss
        vals, terms, core_loss = self.fn({b: eager.tracked[b] for b in self.inputs})
        eager.tracked.update(vals)
        eager.terms.extend(terms)
        state = eager.net.state
        for name, t in vals.items():
            state.values[name] = t.detach()
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


__all__ = ["set_memory_format", "CompiledExecutor"]
