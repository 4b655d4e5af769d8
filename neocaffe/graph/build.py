"""From a NetParameter to a plan and its layers: Caffe's Net::Init up to the backward flags.

Filter by NetState, add a loss layer's automatic tops, insert splits, wire the plan, then build each
layer from its LayerParameter and its bottoms' shapes. Errors name where the layer is written
(``train_val.prototxt:57:3: layer 'conv2' (Convolution): ...``) when the net's
:class:`~neocaffe.io.prototxt.NetSource` is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from neocaffe.graph.errors import NetError
from neocaffe.graph.needs import BackwardNeeds, backward_needs
from neocaffe.graph.params import ParamInfo, collect_params
from neocaffe.graph.plan import NetPlan, NetPlanError, insert_splits, make_plan
from neocaffe.graph.rules import filter_net, layer_included
from neocaffe.graph.steps import Step, make_steps
from neocaffe.layers.base import BuildContext, Layer, LayerSetupError, NetSoFar, Shape
from neocaffe.layers.blob_shape import allocation_failure, check_shape
from neocaffe.layers.registry import check_layer_types, get_layer_class

AUTOMATIC = "(automatic)"


@dataclass
class Built:
    """What :func:`build` makes: the split-inserted NetParameter, its plan, the layers, every blob's
    shape, each layer's loss weights (one per top) and each blob's, ``where`` each plan layer is
    written, the executors' steps, the backward flags and the learnable parameters."""

    net_param: Any
    plan: NetPlan
    layers: list[Layer]
    blob_shapes: dict[str, Shape]
    loss_weights: list[list[float]]
    blob_loss_weights: dict[str, float]
    where: list[str]
    steps: list[Step]
    needs: BackwardNeeds
    learnable: list[ParamInfo]


def _add_automatic_tops(net: Any, filename: str) -> None:
    """Caffe's AutoTopBlobs: a loss layer written without tops still gets its loss top, an anonymous
    blob (named "(automatic)") whose loss counts but which is no net output."""
    n = 0
    for lp in net.layer:
        cls = get_layer_class(lp.type, lp.name, filename)
        if not getattr(cls, "auto_top_blobs", False):
            continue
        needed = max(cls.min_tops or 0, cls.exact_tops or 0)
        while len(lp.top) < needed:
            lp.top.append(AUTOMATIC if n == 0 else f"{AUTOMATIC}_{n}")
            n += 1


def build(net_param: Any, state: Any, phase: int, source: Any, context: BuildContext) -> Built:
    """Build the layers of ``net_param`` for NetState ``state``. ``source``: a NetSource (layer
    lines) or a file name."""
    filename = getattr(source, "filename", source)
    check_layer_types(net_param, source, included=lambda lp: layer_included(lp, state))  # every unknown type at once
    kept: list[int] = []
    filtered = filter_net(net_param, state, kept)
    for lp in filtered.layer:
        if not lp.HasField("phase"):
            lp.phase = phase
    _add_automatic_tops(filtered, filename)
    def where_of(index: int | None) -> str:  # file:line of layer ``index`` of the filtered net
        return source.where(kept[index] if index is not None else None) if hasattr(source, "where") else filename

    origins: list[int | None] = []
    try:
        full = insert_splits(filtered, origins)
    except NetPlanError as e:
        raise NetError(f"{where_of(e.layer)}: {e}") from e
    where = [where_of(o) for o in origins]
    try:
        plan = make_plan(full)
    except NetPlanError as e:
        raise NetError(f"{where[e.layer] if e.layer is not None else filename}: {e}") from e
    plan.outputs = [o for o in plan.outputs if not o.startswith(AUTOMATIC)]
    shapes: dict[str, Shape] = {}
    layers: list[Layer] = []
    loss_weights: list[list[float]] = []
    for i, (lp, loc) in enumerate(zip(plan.layers, where)):
        p = lp.param
        cls = get_layer_class(p.type, p.name, loc)
        # a type that reads the net around it (HED's Crop) is told the layers wired before it
        told = {"net": NetSoFar(net_param, tuple(q.param for q in plan.layers[:i]), dict(shapes))} if cls.takes_net else {}
        try:
            layer: Layer = cls(p, [shapes[b] for b in lp.bottoms], p.phase, context, **told)
            top_shapes = [check_shape(s, f"top '{t}'") for t, s in
                          zip(lp.tops, layer.reshape([shapes[b] for b in lp.bottoms]))]
        except (LayerSetupError, ValueError) as e:
            msg = str(e)
            if f"layer '{p.name}'" not in msg:
                msg = f"layer '{p.name}' ({p.type}): {msg}"
            raise NetError(f"{loc}: {msg}") from e
        except Exception as e:  # noqa: BLE001 - only allocator failures (torch, OpenCV) are rewritten
            if not allocation_failure(e):  # a layer's own error (a Python layer's RuntimeError)
                raise
            raise NetError(f"{loc}: layer '{p.name}' ({p.type}): cannot build it with bottoms "
                           f"{[shapes[b] for b in lp.bottoms]}: {type(e).__name__}: {e}") from e
        if any(lp.in_place) and not layer.allow_in_place:
            raise NetError(f"{loc}: layer '{p.name}' ({p.type}) cannot work in place")
        if len(p.propagate_down) and len(p.propagate_down) != len(lp.bottoms):
            raise NetError(f"{loc}: layer '{p.name}': propagate_down has {len(p.propagate_down)} entries "
                           f"for {len(lp.bottoms)} bottoms; expected one per bottom or none")
        for name, shape in zip(lp.tops, top_shapes):
            shapes[name] = tuple(int(d) for d in shape)
        if len(p.loss_weight):
            if len(p.loss_weight) != len(p.top):
                raise NetError(f"{loc}: layer '{p.name}': loss_weight must be unspecified or specified once "
                               f"per top blob; received {len(p.loss_weight)} for {len(p.top)} tops")
            loss_weights.append([float(w) for w in p.loss_weight])
        else:
            loss_weights.append(layer.default_loss_weights())
        layers.append(layer)
    learnable = collect_params(layers)
    for info in learnable:
        # Caffe: a parameter gets a diff when its lr_mult != 0, and every one under force_backward
        info.param.requires_grad_(info.lr_mult != 0 or net_param.force_backward)
        if info.param.grad is None:
            info.param.grad = torch.zeros_like(info.param)
    by_blob = {t: w for lp, lws in zip(plan.layers, loss_weights) for t, w in zip(lp.tops, lws)}
    return Built(full, plan, layers, shapes, loss_weights, by_blob, where, make_steps(plan, layers, loss_weights),
                 backward_needs(plan, layers, loss_weights, net_param.force_backward), learnable)


__all__ = ["AUTOMATIC", "Built", "build"]
