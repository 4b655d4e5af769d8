"""``caffe.draw``: draw a NetParameter as a Graphviz graph (pycaffe's ``caffe/draw.py``).

Layers are boxes labelled ``name (Type)`` (Pooling adds its method; Convolution, Deconvolution and
Pooling add kernel size, stride and pad; with ``display_lrm`` learning layers add their lr
multipliers), blobs are octagons, and in-place layers are green. Needs ``pydot`` (or
``pydotplus``); images are rendered by Graphviz's ``dot`` program, and where it is missing PNG, JPEG,
BMP, TIFF, SVG and PDF are drawn by ``caffe._draw_layout`` (a ranked layout, one warning). Writing
``.raw``, ``.dot`` or ``.gv`` gives the Graphviz source and needs no ``dot``.

V1 nets (``layers { type: CONVOLUTION }``) are upgraded first when neocaffe's upgrader is
available, so old prototxts draw too.
"""
from __future__ import annotations

import logging
from typing import Any

from caffe.proto import caffe_pb2

log = logging.getLogger("caffe.draw")
_WARNED = False  # the missing-Graphviz warning is logged once per process

__all__ = [
    "get_pydot_graph", "draw_net", "draw_net_to_file", "get_layer_label", "get_edge_label",
    "get_layer_lr_mult", "get_pooling_types_dict", "choose_color_by_layertype",
]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

_LAYER_COLORS = {
    "Convolution": "#FF5050",
    "Deconvolution": "#FF5050",
    "Pooling": "#FF9900",
    "InnerProduct": "#CC33FF",
}
_LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
_SOURCE_FORMATS = ("raw", "dot", "gv", "canon")


def _pydot() -> Any:
    try:
        import pydotplus as pydot  # type: ignore[import-not-found]
    except ImportError:
        try:
            import pydot  # type: ignore[import-not-found]
        except ImportError as e:
            raise ImportError(
                "caffe.draw needs pydot: pip install pydot (and Graphviz's `dot` program, e.g. "
                "apt-get install graphviz, to render images)"
            ) from e
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (0 -> 'MAX', ...)."""
    return {v.number: v.name for v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values}


def get_edge_label(layer: Any) -> str:
    """Label for a layer's output edges: the batch size of Data layers, the output count of
    Convolution/Deconvolution/InnerProduct, else empty."""
    if layer.type == "Data":
        return "Batch " + str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer: Any) -> tuple[float, float]:
    """(weight, bias) lr multipliers of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in _LEARNING_TYPES:
        raise ValueError("%s layers do not have a learning rate multiplier" % layer.type)
    specs = list(layer.param)
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    mults = [s.lr_mult for s in specs] + [1.0] * (2 - len(specs))
    return mults[0], mults[1]


def get_layer_label(layer: Any, rankdir: str, display_lrm: bool = False) -> str:
    """The quoted node label of a layer; words are separated by spaces in vertical layouts
    (TB, BT) and by newlines in horizontal ones."""
    sep = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        parts = [layer.name, "(%s %s)" % (layer.type, get_pooling_types_dict()[layer.pooling_param.pool])]
    else:
        parts = [layer.name, "(%s)" % layer.type]
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            c = layer.convolution_param
            kernel = c.kernel_size[0] if len(c.kernel_size) else 1
            stride = c.stride[0] if len(c.stride) else 1
            pad = c.pad[0] if len(c.pad) else 0
        parts.append(sep.join(["kernel size: %d" % kernel, "stride: %d" % stride, "pad: %d" % pad]))
    if display_lrm and layer.type in _LEARNING_TYPES:
        w_mult, b_mult = get_layer_lr_mult(layer)
        if w_mult or b_mult:
            parts.append("lr mult: %.1f, %.1f" % (w_mult, b_mult))
    return '"%s"' % sep.join(parts)


def choose_color_by_layertype(layertype: str) -> str:
    """Fill colour of a layer node."""
    return _LAYER_COLORS.get(layertype, "#6495ED")


def _in_phase(layer: Any, phase: int | None) -> bool:
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError("layer " + layer.name + " has both include and exclude specified.")
    keep = len(layer.include) == 0 or any(r.phase == phase for r in layer.include)
    return keep and not any(r.phase == phase for r in layer.exclude)


def _layers_of(caffe_net: Any) -> list[Any]:
    if len(caffe_net.layer) or not len(caffe_net.layers):
        return list(caffe_net.layer)
    try:  # a V1 net: draw its upgraded form
        from neocaffe.io.upgrade import upgrade_net
    except ImportError as e:  # pragma: no cover - the upgrader ships with neocaffe
        raise ValueError(
            "caffe.draw: this NetParameter uses V1 'layers'; upgrade it first (upgrade_net_proto_text)"
        ) from e
    out = upgrade_net(caffe_net, source=caffe_net.name or "<net>")
    return list((out[0] if isinstance(out, tuple) else out).layer)


def get_pydot_graph(caffe_net: Any, rankdir: str, label_edges: bool = True, phase: int | None = None,
                    display_lrm: bool = False) -> Any:
    """A pydot.Dot of the net. ``phase``: draw only the layers of that phase (None: all)."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name if caffe_net.name else "Net", graph_type="digraph", rankdir=rankdir)
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str, str]] = []
    for layer in _layers_of(caffe_net):
        if not _in_phase(layer, phase):
            continue
        node_name = "%s_%s" % (layer.name, layer.type)
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        if in_place:
            style = dict(NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        nodes[node_name] = pydot.Node(label, **style)
        for blob in layer.bottom:
            nodes[blob + "_blob"] = pydot.Node("%s" % blob, **BLOB_STYLE)
            edges.append((blob + "_blob", node_name, '""'))
        for blob in layer.top:
            nodes[blob + "_blob"] = pydot.Node("%s" % blob)
            edges.append((node_name, blob + "_blob", get_edge_label(layer) if label_edges else '""'))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def _render(graph: Any, ext: str) -> bytes:
    if ext in _SOURCE_FORMATS:
        text = graph.to_string()
        return text.encode("utf-8") if isinstance(text, str) else text
    try:
        return graph.create(format=ext)
    except (FileNotFoundError, OSError) as e:
        from caffe import _draw_layout

        if ext.lower() not in _draw_layout.FORMATS:
            raise RuntimeError(
                f"caffe.draw: rendering '{ext}' needs Graphviz's `dot` program ({e}); install Graphviz "
                f"(e.g. apt-get install graphviz), draw to {', '.join(_draw_layout.FORMATS)} (caffe.draw's own "
                "layout), or to a .raw/.dot file to get the graph source"
            ) from e
        global _WARNED
        if not _WARNED:
            _WARNED = True
            log.warning("caffe.draw: Graphviz's `dot` program is not here (%s); drawing with caffe.draw's own "
                        "ranked layout instead (install Graphviz for dot's)", e)
        return _draw_layout.render(graph, ext, _unquoted(graph.get_attributes().get("rankdir", "LR")))


def _unquoted(s: Any) -> str:
    s = str(s)
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def draw_net(caffe_net: Any, rankdir: str, ext: str = "png", phase: int | None = None,
             display_lrm: bool = False) -> bytes:
    """The drawing encoded as ``ext`` (png, svg, pdf, ...; raw/dot/gv give Graphviz source)."""
    return _render(get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm), ext)


def draw_net_to_file(caffe_net: Any, filename: str, rankdir: str = "LR", phase: int | None = None,
                     display_lrm: bool = False) -> None:
    """Draw to ``filename``; its extension picks the format (``.raw`` writes Graphviz source)."""
    ext = filename[filename.rfind(".") + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, "wb") as f:
        f.write(data)


def main(argv: Any = None) -> int:
    """BVLC's ``python/draw_net.py``: INPUT_NET_PROTO_FILE OUTPUT_IMAGE_FILE [--rankdir R] [--phase P]
    [--display_lrm]; the prototxt is read as Caffe's script reads it (text format, no upgrade here:
    ``draw_net_to_file`` upgrades V1 nets)."""
    from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser

    from google.protobuf import text_format

    import caffe

    ap = ArgumentParser(prog="draw_net", description="Draw a graph of the net architecture.",
                        formatter_class=ArgumentDefaultsHelpFormatter)
    ap.add_argument("input_net_proto_file", help="Input network prototxt file")
    ap.add_argument("output_image_file", help="Output image file")
    ap.add_argument("--rankdir", default="LR",
                    help="One of TB (top-bottom, i.e., vertical), RL (right-left, i.e., horizontal), or another "
                         "valid dot option; see http://www.graphviz.org/doc/info/attrs.html#k:rankdir")
    ap.add_argument("--phase", default="ALL",
                    help="Which network phase to draw: can be TRAIN, TEST, or ALL. If ALL, then all layers are "
                         "drawn regardless of phase.")
    ap.add_argument("--display_lrm", action="store_true",
                    help="Use this flag to visualize the learning rate multiplier, when non-zero, for the "
                         "convolution and inner product layers.")
    args = ap.parse_args(argv)
    net = caffe_pb2.NetParameter()
    with open(args.input_net_proto_file) as f:
        text_format.Merge(f.read(), net)
    print(f"Drawing net to {args.output_image_file}")
    phases = {"TRAIN": caffe.TRAIN, "TEST": caffe.TEST, "ALL": None}
    if args.phase not in phases:
        raise ValueError("Unknown phase: " + args.phase)
    draw_net_to_file(net, args.output_image_file, args.rankdir, phases[args.phase], args.display_lrm)
    return 0
