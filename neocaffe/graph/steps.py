"""What every executor needs of one layer, as plain Python data, and the layer call they share.

A :class:`Step` holds a layer's wiring and flags (no protobuf: ``torch.compile`` traces loops over
steps). :func:`call_layer` runs one layer on its bottoms and brings its tops to the net's
conventions: host data moved to the net's device, 4-D data/Input tops in the net's memory format,
and, under ``force_backward``, data tops made leaves that receive a diff.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

from neocaffe.data.transfer import to_device
from neocaffe.graph.errors import NetError
from neocaffe.layers.base import PLAIN, LayerCall


class Step(NamedTuple):
    """One layer: its name, type, blob wiring and the flags the executors read."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    in_place: tuple[bool, ...]
    host: bool  # produces_host_data: tops move to the net's device
    input: bool  # an Input layer
    takes_call: bool  # forward takes a LayerCall
    loss_weights: tuple[float, ...]


def make_steps(plan: Any, layers: Sequence[Any], loss_weights: Sequence[Sequence[float]]) -> list[Step]:
    """The steps of ``plan``'s layers, in order."""
    return [Step(lp.param.name, lp.param.type, tuple(lp.bottoms), tuple(lp.tops), tuple(lp.in_place),
                 bool(layer.produces_host_data), lp.param.type == "Input", bool(layer.takes_call),
                 tuple(float(w) for w in lws))
            for lp, layer, lws in zip(plan.layers, layers, loss_weights)]


def rewritten_tops(steps: Sequence[Step]) -> list[list[bool]]:
    """For each layer's tops: whether a later layer rewrites that blob in place (so the blob's final
    value, which Caffe's backward reads as top data, is not the layer's own output)."""
    out = []
    for i, st in enumerate(steps):
        out.append([any(name in later.tops and later.in_place[later.tops.index(name)] for later in steps[i + 1:])
                    for name in st.tops])
    return out


def call_layer(layer: Any, step: Step, bottoms: Sequence[Tensor], call: LayerCall = PLAIN) -> list[Tensor]:
    """The layer's tops for ``bottoms`` (``call`` reaches layers that take one)."""
    out = layer(*bottoms, call=call) if step.takes_call else layer(*bottoms)
    tops = [out] if isinstance(out, Tensor) else list(out)
    if len(tops) != len(step.tops):
        raise NetError(f"layer '{step.name}' ({step.type}) returned {len(tops)} tops; "
                        f"the prototxt names {len(step.tops)}")
    return tops


def settles(device: torch.device, nhwc: bool, force_leaf: bool) -> bool:
    """Whether ``settle_top`` may change a top at all: never on the CPU without NHWC or a leaf to make
    (data layers produce CPU tensors)."""
    return device.type != "cpu" or nhwc or force_leaf


def settle_top(t: Tensor, step: Step, device: torch.device, nhwc: bool, force_leaf: bool) -> Tensor:
    """A top as the net keeps it: on ``device``; NHWC if ``nhwc`` and it is a 4-D data/Input top;
    a leaf with a diff if ``force_leaf`` (Caffe's force_backward on data tops)."""
    if step.host and t.device != device:
        t = to_device(t, device)  # pinned and asynchronous: a pageable copy would wait for the GPU
    if nhwc and (step.host or step.input) and t.dim() == 4 and t.is_floating_point():
        t = t.contiguous(memory_format=torch.channels_last)
    if force_leaf and (step.host or step.input) and not t.requires_grad and t.is_floating_point():
        t = t.detach().requires_grad_(True)
    return t


__all__ = ["Step", "make_steps", "rewritten_tops", "call_layer", "settle_top", "settles"]
