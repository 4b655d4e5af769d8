"""A Net's opt-in speed modes, set from outside the training and inference loops: NHWC memory layout,
the fused Triton kernels (:mod:`neocaffe.graph.fusion`), ``torch.compile`` of the forward
(:mod:`neocaffe.graph.compiled`) and the frozen inference graphs (:mod:`neocaffe.graph.frozen`).

``set_memory_format(net, torch.channels_last)`` lays out every 4-D parameter and its diff in NHWC, and
from then on the net converts the 4-D float tops of its data and Input layers the same way, so the
convolutions see NHWC on both operands. Values are unchanged; shared parameters stay shared (their
storage is replaced once, through ``Parameter.data``). ``Net`` keeps a one-line method for each mode.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from neocaffe.graph import fusion
from neocaffe.graph.errors import NetError
from neocaffe.graph.frozen import FrozenExecutor
from neocaffe.graph.jacinto_quant import refuse as refuse_quantized

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
    net.lean.reset()


def set_fused_kernels(net: "Net", on: bool = True) -> list[str]:
    """The ``fused`` mode (Triton LRN and ReLU+LRN kernels on CUDA); returns the fused pairs' names."""
    net.fused_pairs = fusion.set_fused_kernels(net, on)
    net.update_executor()
    return [f"{net.steps[i].name}+{net.steps[j].name}" for i, j in net.fused_pairs.items()]


def set_compile(net: "Net", options: tuple[str, str, bool] | None) -> None:
    """Run full forwards through ``torch.compile(mode, backend, fullgraph)`` (``options``; None: eagerly)."""
    if options is not None:
        refuse_quantized(net, "the compiled mode (enable_compile)")
    net.compile_options = options
    net.update_executor()


def set_frozen(net: "Net", on: bool = True) -> None:
    """The ``frozen`` inference mode: a traced, frozen graph per input shape."""
    if on:
        refuse_quantized(net, "the frozen inference mode (set_frozen)")
    net.frozen = FrozenExecutor(net, net.lean) if on else None


__all__ = ["set_memory_format", "set_fused_kernels", "set_compile", "set_frozen"]
