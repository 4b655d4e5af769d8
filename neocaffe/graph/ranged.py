"""A backward over a range of layers (Caffe's ``Net::BackwardFromTo``), on the autograd graph.

The start layer's own tops (not the blob's final in-place value) are seeded with the diffs given,
loss layers in the range with their loss weight; the autograd ``inputs`` are the bottoms and
parameters of the layers in the range, so nothing below ``end`` runs. Needs the per-layer tensors a
net keeps when it keeps blob diffs (pycaffe's nets).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import torch
from torch import Tensor

from neocaffe.graph.net import NetError
from neocaffe.layers.base import net_backward

if TYPE_CHECKING:
    from neocaffe.graph.net import Net


def backward_range(net: "Net", top_diffs: Mapping[str, Tensor], retain_graph: bool,
                   start: int | str | None, end: int | str | None) -> None:
    """Layers ``start`` down to ``end`` only (Caffe's BackwardFromTo); see ``Net.backward``."""
    hi = len(net.layers) - 1 if start is None else (net.layer_index(start) if isinstance(start, str) else start)
    lo = 0 if end is None else (net.layer_index(end) if isinstance(end, str) else end)
    if not 0 <= lo <= hi < len(net.layers):
        raise NetError(f"{net.source}: backward from layer {hi} down to layer {lo}: "
                       f"expected end <= start within 0..{len(net.layers) - 1}")
    missing = [net.layer_names[i] for i in range(lo, hi + 1) if i not in net._layer_io]
    if missing:
        raise NetError(f"{net.source}: backward over layers {net.layer_names[lo]}..{net.layer_names[hi]} "
                       f"needs a forward through them with blob diffs kept; not run: {', '.join(missing)}")
    tensors: list[Tensor] = []
    grads: list[Tensor] = []
    given = {t for t in net.plan.layers[hi].tops if t in top_diffs}
    for i in range(lo, hi + 1):
        for j, (name, t) in enumerate(zip(net.plan.layers[i].tops, net._layer_io[i][1])):
            if not t.requires_grad:
                continue
            if i == hi and name in given:
                tensors.append(t)
                grads.append(top_diffs[name].to(t.device, t.dtype).reshape(t.shape))
            elif net.loss_weights[i][j]:
                tensors.append(t)
                grads.append(torch.full_like(t, net.loss_weights[i][j]))
    inputs: list[Tensor] = []
    seen: set[int] = set()
    written: dict[str, Tensor] = {}  # blob -> the tensor whose grad is its diff after this range
    for i in range(hi, lo - 1, -1):  # the lowest consumer of a blob writes its diff last, as in Caffe
        bottoms = net._layer_io[i][0]
        for name, t in zip(net.plan.layers[i].bottoms, bottoms):
            if t.requires_grad:
                written[name] = t
        for t in list(bottoms) + list(net.layers[i].parameters()):
            if t.requires_grad and id(t) not in seen:
                seen.add(id(t))
                inputs.append(t)
                if not t.is_leaf:
                    t.grad = None
    if tensors and inputs:
        with net_backward():
            torch.autograd.backward(tensors, grads, retain_graph=retain_graph, inputs=inputs)
    for name, t in written.items():
        net._range_diffs[name] = t.grad if t.grad is not None else torch.zeros_like(t.detach())
