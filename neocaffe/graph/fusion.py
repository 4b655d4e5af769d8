"""Fused kernels for a net (the opt-in ``fused`` speed mode): which layers run as one kernel.

``set_fused_kernels(net, True)`` turns on the Triton LRN kernels (``neocaffe.layers.triton_lrn``)
in every ACROSS_CHANNELS LRN layer, and pairs each ReLU (negative_slope 0, in place on blob ``b``)
directly followed by an LRN reading ``b`` (CaffeNet's relu1/norm1 and relu2/norm2): the pair then
runs as one forward kernel writing relu(x) and the LRN top, and one backward kernel writing the
convolution's diff. A pair whose layers have ``propagate_down`` set, a forward that ends between the
two layers, or a net that keeps every blob's diff (pycaffe's, whose executor runs layer by layer) runs
them one by one; their LRN still uses its kernel. Off the GPU (no Triton, no CUDA) every layer runs its
eager code, so the mode is safe to ask for anywhere.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from neocaffe.layers import triton_lrn
from neocaffe.layers.base import TopRef
from neocaffe.layers.lrn import ACROSS_CHANNELS, LRNLayer

if TYPE_CHECKING:
    from neocaffe.graph.net import Net


def relu_lrn_pairs(net: "Net") -> dict[int, int]:
    """ReLU layer index -> the LRN directly after it that reads its in-place blob (ACROSS_CHANNELS,
    ReLU slope 0, neither with ``propagate_down``)."""
    steps = net.steps
    pairs: dict[int, int] = {}
    for i in range(len(steps) - 1):
        a, b = steps[i], steps[i + 1]
        relu, lrn = net.layers[i], net.layers[i + 1]
        params = (net.plan.layers[i].param, net.plan.layers[i + 1].param)
        if (a.type == "ReLU" and b.type == "LRN" and a.in_place == (True,) and b.bottoms == a.tops
                and b.in_place == (False,) and not any(len(p.propagate_down) for p in params)
                and getattr(relu, "slope", None) == 0.0 and isinstance(lrn, LRNLayer)
                and lrn.region == ACROSS_CHANNELS):
            pairs[i] = i + 1
    return pairs


def set_fused_kernels(net: "Net", on: bool) -> dict[int, int]:
    """Turn the LRN kernels on or off in every LRN layer; the pairs to fuse (empty when off)."""
    for layer in net.layers:
        if isinstance(layer, LRNLayer):
            layer.fused = on
    return relu_lrn_pairs(net) if on else {}


def run_relu_lrn(net: "Net", i: int, x: Tensor, ref: TopRef) -> tuple[Tensor, Tensor] | None:
    """(relu top, LRN top) of the pair starting at layer ``i`` in one kernel, or None when the
    kernels cannot run on ``x`` (the layers then run one by one). ``ref``: the LRN top's final value."""
    if not triton_lrn.available(x)[0]:
        return None
    lrn: LRNLayer = net.layers[i + 1]  # type: ignore[assignment]
    return triton_lrn.relu_lrn(x, lrn.size, lrn.alpha_over_size, lrn.beta, lrn.k, lrn.cache_ratio, ref)


__all__ = ["relu_lrn_pairs", "set_fused_kernels", "run_relu_lrn"]
