"""caffe.draw: pycaffe's test_draw (draw every net prototxt of the source tree) and the options."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

import caffe.draw
from caffe.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[2]


def net_prototxts() -> list[Path]:
    out = []
    for folder in ("models", "examples"):
        out += [p for p in sorted((REPO / folder).rglob("*.prototxt")) if "solver" not in p.name]
    return out


@pytest.mark.parametrize("path", net_prototxts(), ids=lambda p: str(p.relative_to(REPO)))
def test_draw_net(path):
    net = caffe_pb2.NetParameter()
    text_format.Merge(path.read_text(), net)
    for rankdir in ("LR", "TB"):
        dot = caffe.draw.draw_net(net, rankdir, ext="raw").decode()
        assert dot.startswith("digraph") and f"rankdir={rankdir}" in dot


def test_layer_label_and_lr_mult():
    layer = caffe_pb2.LayerParameter(name="c", type="Convolution")
    layer.convolution_param.kernel_size.append(3)
    layer.convolution_param.stride.append(2)
    layer.param.add(lr_mult=0.5)
    assert caffe.draw.get_layer_label(layer, "LR") == r'"c\n(Convolution)\nkernel size: 3\nstride: 2\npad: 0"'
    assert caffe.draw.get_layer_lr_mult(layer) == (0.5, 1.0)
    assert caffe.draw.get_layer_label(layer, "BT", display_lrm=True).endswith('lr mult: 0.5, 1.0"')
    frozen = caffe_pb2.LayerParameter(name="f", type="InnerProduct")
    frozen.param.add(lr_mult=0)
    frozen.param.add(lr_mult=0)
    assert "lr mult" not in caffe.draw.get_layer_label(frozen, "LR", display_lrm=True)
    with pytest.raises(ValueError):
        caffe.draw.get_layer_lr_mult(caffe_pb2.LayerParameter(type="ReLU"))
    assert caffe.draw.get_pooling_types_dict()[0] == "MAX"
    assert caffe.draw.choose_color_by_layertype("Pooling") == "#FF9900"


def test_include_and_exclude_together_is_an_error():
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="x", type="ReLU")
    layer.include.add(phase=caffe_pb2.TRAIN)
    layer.exclude.add(phase=caffe_pb2.TEST)
    with pytest.raises(ValueError, match="both include and exclude"):
        caffe.draw.get_pydot_graph(net, "LR", phase=caffe_pb2.TRAIN)
    caffe.draw.get_pydot_graph(net, "LR")  # no phase: everything is drawn


def test_draw_net_to_file_picks_the_format_from_the_name(tmp_path):
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="d", type="Input", top=["data"])
    caffe.draw.draw_net_to_file(net, str(tmp_path / "n.dot"))
    assert (tmp_path / "n.dot").read_text().startswith("digraph n {")


def test_missing_pydot_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pydot", None)
    monkeypatch.setitem(__import__("sys").modules, "pydotplus", None)
    with pytest.raises(ImportError, match="pip install pydot"):
        caffe.draw.get_pydot_graph(caffe_pb2.NetParameter(), "LR")


def _no_dot(monkeypatch):
    """Graphviz's ``dot`` missing (as on this CI machine), whatever this machine has."""
    import pydot

    def create(self, *args, **kwargs):
        raise FileNotFoundError('[Errno 2] "dot" not found in path.')
    monkeypatch.setattr(pydot.Dot, "create", create)
    monkeypatch.setattr(caffe.draw, "_WARNED", False)


@pytest.mark.parametrize("rankdir", ["LR", "TB", "BT", "RL"])
def test_without_graphviz_images_come_from_the_ranked_layout(monkeypatch, caplog, rankdir):
    import xml.etree.ElementTree as ET

    import cv2
    import numpy as np

    _no_dot(monkeypatch)
    net = caffe_pb2.NetParameter()
    text_format.Merge((REPO / "models" / "bvlc_alexnet" / "train_val.prototxt").read_text(), net)
    png = caffe.draw.draw_net(net, rankdir, ext="png")
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    layers, blobs = len(net.layer), len({b for lp in net.layer for b in list(lp.bottom) + list(lp.top)})
    ranks = 20  # data -> conv1 ... fc8 -> loss, as blob/layer alternations
    long_side, short_side = max(img.shape[:2]), min(img.shape[:2])
    assert long_side > ranks * 40 and short_side > 100
    assert (img.shape[1] > img.shape[0]) == (rankdir in ("LR", "RL"))
    # the convolution boxes' colour (#FF5050) and the blobs' grey are drawn
    assert (np.abs(img.astype(int) - [0x50, 0x50, 0xFF]).sum(-1) == 0).sum() > 1000
    assert (np.abs(img.astype(int) - [0xE0, 0xE0, 0xE0]).sum(-1) == 0).sum() > 1000
    svg = ET.fromstring(caffe.draw.draw_net(net, rankdir, ext="svg"))
    ns = "{http://www.w3.org/2000/svg}"
    # every layer node (the two "data (Data)" phases are one node, as in dot) and every blob node: octagons,
    # and plain ellipses for the blobs no layer reads (caffe.draw styles a blob where it is a bottom)
    read = {b for lp in net.layer for b in lp.bottom}
    assert len(svg.findall(ns + "rect")) - 1 == layers - 1
    assert len(svg.findall(ns + "polygon")) == len(read) and len(svg.findall(ns + "ellipse")) == blobs - len(read)
    texts = [t.text for t in svg.iter(ns + "text")]
    assert "conv1 (Convolution)" in " ".join(texts) or "conv1" in texts
    assert caffe.draw.draw_net(net, rankdir, ext="pdf").startswith(b"%PDF")
    assert caplog.text.count("Graphviz's `dot` program is not here") == 1


def test_without_graphviz_bvlcs_draw_net_script_writes_an_image(monkeypatch, tmp_path):
    import cv2

    _no_dot(monkeypatch)
    out = tmp_path / "lenet.jpg"
    assert caffe.draw.main([str(REPO / "examples" / "mnist" / "lenet_train_test.prototxt"), str(out),
                            "--rankdir", "TB", "--phase", "TEST"]) == 0
    assert cv2.imread(str(out)) is not None
    with pytest.raises(RuntimeError, match="needs Graphviz's `dot` program"):
        caffe.draw.draw_net(caffe_pb2.NetParameter(name="n"), "LR", ext="gif")
