"""A deploy net for export: the TEST phase of a prototxt, inputs from Input layers, weights loaded.

A prototxt that still reads training data (``Data``, ``ImageData``, ``HDF5Data``, ... or a Python
data layer) is refused with the layer to replace, unless ``input_shapes`` names the shape of its
data top(s): the data layer then becomes an Input layer, its other tops (labels) are dropped, and so
is every layer that reads a dropped blob (losses, accuracies).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from neocaffe.export.registry import ExportError
from neocaffe.graph.rules import filter_net, layer_included, make_state
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.export")

TEST = 1
Shape = tuple[int, ...]


def parse_shapes(specs: Sequence[str]) -> dict[str, Shape]:
    """``["data=1,3,227,227", "im_info=1,3"]`` (or one unnamed ``"1,3,227,227"``) -> {blob: shape}
    (the unnamed entry has the key "")."""
    out: dict[str, Shape] = {}
    for spec in specs:
        name, eq, dims = spec.rpartition("=") if "=" in spec else ("", "", spec)
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise ExportError(f"input shape '{spec}': expected name=d0,d1,... (integers); e.g. data=1,3,227,227") from None
        if not shape or any(d <= 0 for d in shape):
            raise ExportError(f"input shape '{spec}': expected positive dimensions; e.g. data=1,3,227,227")
        out[name.strip()] = shape
    return out


def _is_data_layer(lp: Any) -> bool:
    if lp.type == "Input" or len(lp.bottom):
        return False
    if lp.type == "Python":
        return True
    try:
        return bool(get_layer_class(lp.type, lp.name).produces_host_data)
    except ValueError:
        return False


def replace_data_layers(net: Any, input_shapes: Mapping[str, Shape], filename: str = "<net>",
                        lines: Sequence[int | None] = ()) -> Any:
    """A copy of ``net`` (a NetParameter of one phase) whose data layers become Input layers with
    ``input_shapes``; layers reading the other data tops are dropped. Without a shape for a data
    layer: an error naming the layer (``filename:line`` from ``lines``) and how to replace it."""
    shapes = dict(input_shapes)
    data = [(i, lp) for i, lp in enumerate(net.layer) if _is_data_layer(lp)]
    if "" in shapes:
        if len(data) != 1:
            raise ExportError(f"{filename}: an unnamed input shape needs exactly one data layer; found {len(data)} "
                              "(name the blob: -input_shape data=1,3,227,227)")
        shapes[data[0][1].top[0]] = shapes.pop("")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    dead: set[str] = set()
    data_idx = {i for i, _ in data}
    for i, lp in enumerate(net.layer):
        if i in data_idx:
            given = [t for t in lp.top if t in shapes]
            if not given:
                where = f"{filename}:{lines[i]}" if i < len(lines) and lines[i] else filename
                raise ExportError(
                    f"{where}: layer '{lp.name}' ({lp.type}) reads training data; a deployed net takes its input "
                    f"from an Input layer. Replace it with layer {{ name: \"{lp.name}\" type: "
                    f"\"Input\" top: \"{lp.top[0]}\" input_param {{ shape {{ dim: N dim: C dim: H dim: W }} }} }} "
                    f"or name its shape: -input_shape {lp.top[0]}=N,C,H,W")
            inp = out.layer.add(name=lp.name, type="Input")
            for t in given:
                inp.top.append(t)
                inp.input_param.shape.add().dim.extend(shapes.pop(t))
            dead.update(t for t in lp.top if t not in given)
            continue
        if any(b in dead for b in lp.bottom):
            log.info("Dropping layer '%s' (%s): it reads %s, which the deploy net does not have",
                     lp.name, lp.type, ", ".join(b for b in lp.bottom if b in dead))
            dead.update(lp.top)
            continue
        dead.difference_update(lp.top)
        out.layer.add().CopyFrom(lp)
    if shapes:
        for lp in out.layer:  # shapes for blobs of Input layers replace their declared shapes
            if lp.type == "Input" and any(t in shapes for t in lp.top):
                declared = list(lp.input_param.shape)
                del lp.input_param.shape[:]
                for j, t in enumerate(lp.top):
                    old = declared[0] if len(declared) == 1 else (declared[j] if j < len(declared) else None)
                    dims = shapes.pop(t) if t in shapes else (tuple(old.dim) if old is not None else ())
                    lp.input_param.shape.add().dim.extend(dims)
    if shapes:
        raise ExportError(f"{filename}: -input_shape names {', '.join(sorted(shapes))}, which no data or Input "
                          "layer produces")
    return out


def set_batch(net: Any, batch: int) -> None:
    """Axis 0 of every Input shape becomes ``batch`` (in place)."""
    for lp in net.layer:
        if lp.type == "Input":
            for s in lp.input_param.shape:
                if len(s.dim):
                    s.dim[0] = batch


def load_deploy_net(model: str, weights: str | Sequence[str] | None = None, *,
                    input_shapes: Mapping[str, Shape] | None = None, batch: int | None = None,
                    level: int = 0, stages: Sequence[str] = (), device: Any = "cpu") -> Any:
    """The TEST-phase ``Net`` of prototxt ``model`` with ``weights`` (path(s); None keeps the fillers'
    values), data layers replaced as the module docstring says, axis 0 of the inputs set to ``batch``."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source

    param, source = read_net_with_source(model)
    state = make_state(TEST, level, stages, base=param.state if param.HasField("state") else None)
    filtered = filter_net(param, state)
    lines = [ln for lp, ln in zip(param.layer, source.layer_lines) if layer_included(lp, state)] \
        if len(source.layer_lines) == len(param.layer) else []
    net_param = replace_data_layers(filtered, input_shapes or {}, source.filename, lines)
    if batch is not None:
        set_batch(net_param, batch)
    net = Net(net_param, TEST, level, stages, source=str(model), device=device, keep_blob_diffs=False)
    for w in [weights] if isinstance(weights, str) else list(weights or []):
        net.copy_from(w)
    return net
