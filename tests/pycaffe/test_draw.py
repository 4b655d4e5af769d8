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
