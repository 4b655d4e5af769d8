"""The net plan: Caffe's InsertSplits and the blob table, as plain data (no torch).

A blob read by several layers (or read by one and used as a loss) gets a ``Split`` layer named as
Caffe names it (``<blob>_<producer>_<top index>_split``, tops ``..._split_<k>``), so blob names,
``net.blobs`` order and diffs match real Caffe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neocaffe.proto import caffe_pb2


class NetPlanError(ValueError):
    """The layers do not connect: unknown bottom, a top produced twice, ... ``layer``: the index,
    in the NetParameter being wired, of the layer at fault (the builder turns it into file:line)."""

    def __init__(self, message: str, layer: int | None = None) -> None:
        super().__init__(message)
        self.layer = layer


def _split_layer_name(layer: str, blob: str, top_idx: int) -> str:
    return f"{blob}_{layer}_{top_idx}_split"


def _split_blob_name(layer: str, blob: str, top_idx: int, split_idx: int) -> str:
    return f"{blob}_{layer}_{top_idx}_split_{split_idx}"


def insert_splits(net: Any, origins: list[int | None] | None = None) -> Any:
    """Caffe's InsertSplits: a copy of ``net`` with Split layers for multiply-consumed tops.
    ``origins``, if given, receives for each layer of the copy the index of the layer of ``net`` it
    is (None for an inserted Split)."""
    last_top: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                raise NetPlanError(
                    f"Unknown bottom blob '{name}' (layer '{layer.name}', bottom index {j})", i
                )
            src = last_top[name]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            src = last_top[layer.top[j]]
            loss_weight[src] = layer.loss_weight[j]
            if layer.loss_weight[j] != 0:
                consumers[src] = consumers.get(src, 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(net.layer):
        new = out.layer.add()
        new.CopyFrom(layer)
        if origins is not None:
            origins.append(i)
        for j, name in enumerate(layer.bottom):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                new.bottom[j] = _split_blob_name(net.layer[src[0]].name, name, src[1], k)
        for j, name in enumerate(layer.top):
            idx = (i, j)
            count = consumers.get(idx, 0)
            if count > 1:
                lw = loss_weight.get(idx, 0.0)
                split = out.layer.add()
                if origins is not None:
                    origins.append(None)
                split.name = _split_layer_name(layer.name, name, j)
                split.type = "Split"
                split.bottom.append(name)
                for k in range(count):
                    split.top.append(_split_blob_name(layer.name, name, j, k))
                    if lw:
                        split.loss_weight.append(lw if k == 0 else 0.0)
                if lw:
                    new.ClearField("loss_weight")
                    next_split[idx] = next_split.get(idx, 0) + 1
    return out


@dataclass
class LayerPlan:
    """One layer of the plan: its parameter message and blob wiring."""

    param: Any
    bottoms: list[str]
    tops: list[str]
    in_place: list[bool]


@dataclass
class NetPlan:
    """The wired net: layers in order, blob names in creation order, inputs and outputs."""

    layers: list[LayerPlan]
    blob_names: list[str]
    inputs: list[str]
    outputs: list[str]


def make_plan(net: Any) -> NetPlan:
    """Wire ``net`` (filtered, split-inserted NetParameter) into a NetPlan with Caffe's checks."""
    blob_names: list[str] = []
    available: set[str] = set()
    inputs: list[str] = []
    layers: list[LayerPlan] = []
    for i, layer in enumerate(net.layer):
        for j, name in enumerate(layer.bottom):
            if name not in blob_names:
                raise NetPlanError(
                    f"Unknown bottom blob '{name}' (layer '{layer.name}', bottom index {j})", i
                )
            available.discard(name)
        in_place = []
        for j, name in enumerate(layer.top):
            ip = j < len(layer.bottom) and layer.bottom[j] == name
            if not ip and name in blob_names:
                raise NetPlanError(f"Top blob '{name}' produced by multiple sources (layer '{layer.name}')", i)
            if not ip:
                blob_names.append(name)
                if layer.type == "Input":
                    inputs.append(name)
            in_place.append(ip)
            available.add(name)
        layers.append(LayerPlan(layer, list(layer.bottom), list(layer.top), in_place))
    outputs = sorted(available)  # Caffe keeps them in a std::set
    return NetPlan(layers, blob_names, inputs, outputs)
