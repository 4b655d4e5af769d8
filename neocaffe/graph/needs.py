"""Which layers, bottoms and parameters take part in backward: Caffe's ``Net::Init`` rules, as plain data.

Forward pass (each layer in order): a bottom needs backward if its blob does, unless the layer's
``propagate_down`` says otherwise (an explicit ``propagate_down: true`` wins even over a blob that
needs none); a parameter needs backward when its ``lr_mult`` != 0; a layer needs backward if any
bottom blob or parameter does, and then its tops need backward (an in-place top keeps its blob's
flag; a new top, an ``Input`` top included, starts without).

Backward pass (last layer first): a layer contributes to the loss if one of its tops has a loss weight
or feeds a layer that contributes; a layer that does not, or whose tops all skip backpropagation, runs
no backward and its bottoms get no diff. ``force_backward`` then makes every layer run backward, every
bottom its type allows (``allow_force_backward``; not a loss layer's labels) get a diff, and every
parameter get a diff whatever its ``lr_mult``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class BackwardNeeds:
    """Caffe's ``layer_need_backward_``, ``bottom_need_backward_`` and each layer's
    ``param_propagate_down``, one entry per layer of the plan."""

    layer: tuple[bool, ...]
    bottom: tuple[tuple[bool, ...], ...]
    param: tuple[tuple[bool, ...], ...]

    @property
    def any(self) -> bool:
        """Whether a backward would run any layer at all (no: a deploy net without ``force_backward``)."""
        return any(self.layer)


def backward_needs(plan: Any, layers: Sequence[Any], loss_weights: Sequence[Sequence[float]],
                   force_backward: bool) -> BackwardNeeds:
    """The need-backward flags of ``plan``'s layers (built ``layers``, their ``loss_weights``)."""
    blob_need: dict[str, bool] = {}
    layer_need: list[bool] = []
    bottom_need: list[list[bool]] = []
    param_need: list[list[bool]] = []
    for lp, layer in zip(plan.layers, layers):
        pd = list(lp.param.propagate_down)
        bn = [pd[j] if pd else blob_need.get(b, False) for j, b in enumerate(lp.bottoms)]
        need = any(blob_need.get(b, False) for b in lp.bottoms)
        specs = lp.param.param
        pn = [(specs[k].lr_mult if k < len(specs) else 1.0) != 0 for k in range(len(layer.blobs))]
        need = need or any(pn)
        for name, in_place in zip(lp.tops, lp.in_place):
            if not in_place:
                blob_need[name] = False
        if need:
            for name in lp.tops:
                blob_need[name] = True
        layer_need.append(need)
        bottom_need.append(bn)
        param_need.append(pn)

    under_loss: set[str] = set()
    skip: set[str] = set()
    for i in range(len(plan.layers) - 1, -1, -1):
        lp = plan.layers[i]
        contributes = any(w != 0 for w in loss_weights[i]) or any(t in under_loss for t in lp.tops)
        all_skip = all(t in skip for t in lp.tops)
        if layer_need[i] and all_skip:
            layer_need[i] = False
            bottom_need[i] = [False] * len(lp.bottoms)
        if not contributes:
            layer_need[i] = False
        for j, b in enumerate(lp.bottoms):
            if contributes:
                under_loss.add(b)
            else:
                bottom_need[i][j] = False
            if not bottom_need[i][j]:
                skip.add(b)

    if force_backward:
        for i, layer in enumerate(layers):
            layer_need[i] = True
            allow = getattr(layer, "allow_force_backward", None)
            bottom_need[i] = [bottom_need[i][j] or (allow(j) if allow else True)
                              for j in range(len(bottom_need[i]))]
            param_need[i] = [True] * len(param_need[i])
    return BackwardNeeds(tuple(layer_need), tuple(tuple(b) for b in bottom_need),
                         tuple(tuple(p) for p in param_need))


__all__ = ["BackwardNeeds", "backward_needs"]
