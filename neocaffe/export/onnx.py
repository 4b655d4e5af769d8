"""A Net as an ONNX model, built node by node from its plan (not traced), one emitter per layer type.

Graph inputs are the net's Input blobs, graph outputs its output blobs (Caffe's names); the final
value of every blob carries the blob's name (an in-place chain's last layer writes ``conv1``). The
weights are initializers. With ``dynamic_batch`` axis 0 of every input is the symbolic ``batch``;
which axes of every other blob follow it is found by reshaping the layers at two batch sizes. The
same way, the axes that follow the number of RoIs a Proposal layer writes (Faster R-CNN's RoIPooling
and fully connected head) are dynamic, and unnamed in the graph's outputs.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from neocaffe.export import onnx_detection, onnx_fork, onnx_layers, onnx_shape  # noqa: F401  (register the emitters)
from neocaffe.export import onnx_neurons  # noqa: F401  (ReLU, PReLU, Sigmoid, ..., Dropout)
from neocaffe.export import onnx_flownet  # noqa: F401  (FlowNet's and PWC-Net's layers)
from neocaffe.export import onnx_sequence, onnx_yolo  # noqa: F401  (LSTM/RNN, CTPN, CTC decoder; YOLO, Cascade R-CNN)
from neocaffe.export import onnx_vision, onnx_vision2  # noqa: F401  (C3D, Ristretto, RoI, STN, PSANet, ...)
from neocaffe.export import onnx_misc  # noqa: F401  (TSN, ScaleRoute, FrcnnProposal, FrcnnOutput, DomainTransform)
from neocaffe.export.onnx_proposal import has_varying_rows
from neocaffe.export.onnx_graph import DEFAULT_OPSET, OnnxGraph, helper, onnx
from neocaffe.export.registry import ExportError, LayerNode, exportable_types, get_emitter
from neocaffe.graph.jacinto_quant import refusal

__all__ = ["export_onnx", "build_graph", "layer_model", "exportable_types", "DEFAULT_OPSET"]

Shape = tuple[int, ...]
#: weights above this size are written as external data (ONNX's protobuf limit is 2 GB)
EXTERNAL_DATA_BYTES = 1_800_000_000


def _walk_shapes(net: Any, input_shapes: dict[str, Shape], more_rows: bool = False) -> dict[str, Shape]:
    """Every blob's shape for these Input shapes, from the layers' own ``reshape`` (Caffe's Reshape);
    ``more_rows``: one row more in the tops of every layer whose row count depends on the data."""
    shapes: dict[str, Shape] = {}
    for lp, layer in zip(net.plan.layers, net.layers):
        if lp.param.type == "Input":
            tops = [input_shapes[t] for t in lp.tops]
        else:
            try:
                tops = layer.reshape([shapes[b] for b in lp.bottoms])
            except ValueError as e:
                what = "another number of rows" if more_rows else "another batch size, so the batch cannot be dynamic"
                raise ExportError(f"layer '{lp.param.name}' ({lp.param.type}) does not take {what}: {e}") from e
            if more_rows and has_varying_rows(lp.param):
                tops = [(s[0] + 1,) + tuple(s[1:]) if len(s) else s for s in tops]
        for name, s in zip(lp.tops, tops):
            shapes[name] = tuple(int(d) for d in s)
    return shapes


def batch_axes(net: Any) -> dict[str, tuple[bool, ...]]:
    """Per blob, which axes change size when the batch (axis 0 of every input) grows by one."""
    base = {name: tuple(net.blob_shapes[name]) for name in net.inputs}
    grown = {name: (s[0] + 1,) + s[1:] if s else s for name, s in base.items()}
    return _changed_axes(net, base, grown, False, "the batch size; export with a fixed -batch")


def row_axes(net: Any) -> dict[str, tuple[bool, ...]]:
    """Per blob, which axes change size when every Proposal layer (or Python stand-in) writes one
    more RoI; all False when the net has none."""
    base = {name: tuple(net.blob_shapes[name]) for name in net.inputs}
    if not any(has_varying_rows(lp.param) for lp in net.plan.layers):
        return {name: (False,) * len(s) for name, s in net.blob_shapes.items()}
    return _changed_axes(net, base, base, True, "the number of RoIs")


def _changed_axes(net: Any, base: dict[str, Shape], grown: dict[str, Shape], more_rows: bool,
                  what: str) -> dict[str, tuple[bool, ...]]:
    try:
        a, b = _walk_shapes(net, base), _walk_shapes(net, grown, more_rows)
    finally:
        _walk_shapes(net, base)  # the layers keep the geometry of the net's own shapes
    out: dict[str, tuple[bool, ...]] = {}
    for name, s in a.items():
        t = b[name]
        if len(s) != len(t):
            raise ExportError(f"blob '{name}' changes its number of axes with {what}")
        out[name] = tuple(x != y for x, y in zip(s, t))
    return out


def _blobs(layer: Any) -> list[np.ndarray]:
    return [b.detach().to("cpu").float().numpy() for b in layer.blobs]


def _value_info(name: str, shape: Sequence[int] | None, batch: Sequence[bool] = (), rows: Sequence[bool] = ()) -> Any:
    if shape is None:
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    # axis 0 following the batch is the symbolic "batch"; another axis that follows it, or the RoI count, is unnamed
    dims: list[Any] = [("batch" if i == 0 else None) if (batch and batch[i]) else None if (rows and rows[i]) else int(d)
                       for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def _either(a: dict[str, tuple[bool, ...]], b: dict[str, tuple[bool, ...]]) -> dict[str, tuple[bool, ...]]:
    return {name: tuple(x or y for x, y in zip(s, b[name])) for name, s in a.items()}


def build_graph(net: Any, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False) -> Any:
    """The ONNX ModelProto of ``net`` (a neocaffe ``Net``); see the module docstring."""
    why = refusal(net, "an ONNX export (float operators only)")
    if why is not None:
        raise ExportError(why)
    g = OnnxGraph(opset)
    shapes = {name: tuple(s) for name, s in net.blob_shapes.items()}
    batch = batch_axes(net) if dynamic_batch else {name: (False,) * len(s) for name, s in shapes.items()}
    rows = row_axes(net)
    dynamic = _either(batch, rows)
    for name in net.blob_names:
        g.reserve(name)
    current: dict[str, str] = {}
    inputs = []
    for lp, layer in zip(net.plan.layers, net.layers):
        p = lp.param
        if p.type == "Input":
            for top in lp.tops:
                inputs.append(_value_info(top, shapes[top], batch[top]))
                current[top] = top
            continue
        node = LayerNode(param=p, inputs=[current[b] for b in lp.bottoms],
                         bottom_shapes=[shapes[b] for b in lp.bottoms], top_shapes=[shapes[t] for t in lp.tops],
                         blobs=_blobs(layer), layer=layer, bottom_batch=[dynamic[b] for b in lp.bottoms],
                         top_batch=[dynamic[t] for t in lp.tops])
        emit = get_emitter(node)
        with g.scope(p.name):
            outs = emit(g, node)
        if len(outs) != len(lp.tops):
            raise node.error(f"the exporter returned {len(outs)} tops; the prototxt names {len(lp.tops)}")
        current.update(zip(lp.tops, outs))
    outputs = _name_outputs(g, net, current, shapes, batch, rows)
    graph = helper.make_graph(g.nodes, net.name or "net", inputs, outputs, g.initializers)
    return _model(graph, opset)


def _model(graph: Any, opset: int) -> Any:
    model = helper.make_model(graph, producer_name="neocaffe", opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, _ir_version(opset))
    return model


def _ir_version(opset: int) -> int:
    """The IR version that goes with ``opset`` (onnx's table), so older runtimes load the file."""
    for row in helper.VERSION_TABLE:  # (release, IR version, ai.onnx opset, ...), oldest first
        if row[2] == opset:
            return int(row[1])
    return int(onnx.IR_VERSION)


def _name_outputs(g: OnnxGraph, net: Any, current: dict[str, str], shapes: dict[str, Shape],
                  batch: dict[str, tuple[bool, ...]], rows: dict[str, tuple[bool, ...]]) -> list[Any]:
    """Give every blob's final tensor the blob's name; the graph outputs are the net's outputs."""
    rename: dict[str, str] = {}
    named: set[str] = set(net.inputs)
    for blob in net.blob_names:
        t = current.get(blob)
        if t is None or t in rename or t == blob or t not in g.producer or blob in named:
            continue
        rename[t] = blob
        named.add(blob)
    for node in g.nodes:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name in rename:
                    seq[i] = rename[name]
    outputs = []
    for blob in net.outputs:
        t = rename.get(current[blob], current[blob])
        if t != blob:  # an alias (Split, Dropout) or an input rewritten in place: a named copy
            out = blob if blob not in named else g.fresh(f"{blob}_out")
            g.nodes.append(helper.make_node("Identity", [t], [out], name=g.fresh(f"{blob}_identity")))
            named.add(out)
            t = out
        outputs.append(_value_info(t, shapes[blob], batch[blob], rows[blob]))
    return outputs


def layer_model(node: LayerNode, opset: int = DEFAULT_OPSET) -> Any:
    """A model of one layer: graph inputs ``node.inputs`` (static ``bottom_shapes``), outputs ``top0``,
    ``top1``, ... For testing an emitter on its own (a fork layer before neocaffe builds it, say)."""
    g = OnnxGraph(opset)
    for name in node.inputs:
        g.reserve(name)
    with g.scope(node.name):
        outs = get_emitter(node)(g, node)
    outputs = []
    for j, t in enumerate(outs):
        g.nodes.append(helper.make_node("Identity", [t], [f"top{j}"], name=g.fresh(f"top{j}_identity")))
        outputs.append(helper.make_tensor_value_info(f"top{j}", onnx.TensorProto.FLOAT, None))
    inputs = [_value_info(name, shape) for name, shape in zip(node.inputs, node.bottom_shapes)]
    graph = helper.make_graph(g.nodes, node.name, inputs, outputs, g.initializers)
    return _model(graph, opset)


def export_onnx(net: Any, path: str | os.PathLike[str] | None = None, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, check: bool = True) -> Any:
    """Export ``net`` (a neocaffe ``Net`` in the TEST phase, weights loaded) to ONNX; write it to
    ``path`` when given (weights over 1.8 GB go to ``<path>.data``). ``check``: run onnx's checker.
    Returns the ModelProto."""
    model = build_graph(net, opset, dynamic_batch)
    large = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    if check and not large:
        onnx.checker.check_model(model)
    if path is not None:
        path = os.fspath(path)
        if large:  # a protobuf holds at most 2 GB: the weights go to <name>.data beside the model
            onnx.save(model, path, save_as_external_data=True, location=f"{os.path.basename(path)}.data")
            if check:
                onnx.checker.check_model(path)
        else:
            tmp = f"{path}.tmp"
            onnx.save(model, tmp)
            os.replace(tmp, path)
    return model
