"""A Net's opt-in speed modes: NHWC memory layout and ``torch.compile`` of its forward.

``set_memory_format(net, torch.channels_last)`` lays out every 4-D parameter and its diff in NHWC, and
from then on the net converts the 4-D float tops of its data and Input layers the same way, so the
convolutions see NHWC on both operands. Values are unchanged; shared parameters stay shared (their
storage is replaced once, through ``Parameter.data``).

``enable_compile(net)`` compiles the net's forward *after* its leading data and Input layers (those read
files, queues and buffers and stay eager) into one function; its backward is compiled along with it
(AOTAutograd). The loop over layers reads only plain data (``Net._steps``), so Dynamo traces it into one
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

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from neocaffe.graph.net import Net


def set_memory_format(net: "Net", memory_format: torch.memory_format) -> None:
    """See the module docstring; ``memory_format``: ``torch.contiguous_format`` or ``torch.channels_last``."""
    from neocaffe.graph.net import NetError

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


def enable_compile(net: "Net", mode: str = "default", backend: str = "inductor", fullgraph: bool = False) -> None:
    """Compile ``net``'s full forwards from now on. ``mode``: torch.compile's (``reduce-overhead`` adds
    CUDA graphs); ``backend``: ``inductor`` (generates kernels) or e.g. ``aot_eager`` (traces only);
    ``fullgraph``: fail on a graph break instead of falling back."""
    n = len(net.layers)
    k = 0
    while k < n and (net._steps[k].host or net._steps[k].input):
        k += 1
    produced: set[str] = set()
    needed: list[str] = []
    for st in net._steps[k:]:
        for b in st.bottoms:
            if b not in produced and b not in needed:
                needed.append(b)
        produced.update(st.tops)
    net._core_start, net._core_inputs = k, needed
    kwargs: dict[str, Any] = {"backend": backend, "fullgraph": fullgraph}
    if mode not in ("", "default"):
        kwargs["mode"] = mode
    net._compiled = torch.compile(functools.partial(_core, net), **kwargs)


def _core(net: "Net", vals_in: dict[str, Tensor], first: dict[str, Tensor]) -> tuple[Any, Any, Any, Any]:
    vals = dict(vals_in)
    terms: list[tuple[Tensor, float]] = []
    loss = net._run_layers(net._core_start, len(net.layers) - 1, vals, first, terms, torch.is_grad_enabled())
    return vals, first, terms, loss


def forward_compiled(net: "Net", track: bool) -> Tensor | None:
    """One full forward: data/Input layers eagerly, the rest through the compiled function."""
    # The compiled graph holds each layer's backward as traced with the forward, so a backward that
    # reads an in-place top's final value (TopRef) reads its own output: refs stay None on this path
    # (one set by an eager forward would also force a recompile).
    for layer in net.layers:
        for ref in layer.top_refs:
            ref.value = None
    k = net._core_start
    loss = net._run_layers(0, k - 1, net.blob_data, net._first, net._loss_terms, track) if k else None
    if k == len(net.layers):
        return loss
    vals_in = {b: net.blob_data[b] for b in net._core_inputs}
    vals, first, terms, core_loss = net._compiled(vals_in, dict(net._first))
    net.blob_data.update(vals)
    net._first = dict(first)
    net._loss_terms.extend(terms)
    if core_loss is None:
        return loss
    return core_loss if loss is None else loss + core_loss


__all__ = ["set_memory_format", "enable_compile", "forward_compiled"]
