"""Every unknown layer type of a net in one error, each with the layer's file:line."""
from __future__ import annotations

import pytest

from neocaffe.io.prototxt import read_net, read_net_with_source
from neocaffe.layers.registry import UnknownLayerError, check_layer_types

NET = """name: "n"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "x" type: "NoSuchLayerA" bottom: "data" top: "x" }
layer { name: "r" type: "ReLU" bottom: "x" top: "x" }
layer {
  name: "y" type: "NoSuchLayerB" bottom: "x" top: "y"
  include { phase: TRAIN }
}
"""


def test_all_unknown_types_listed(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net, source = read_net_with_source(str(path))
    with pytest.raises(UnknownLayerError) as info:
        check_layer_types(net, source)
    text = str(info.value)
    assert text.startswith(f"{path}: 2 unknown layer types:")
    assert f"{path}:3:1: unknown layer type 'NoSuchLayerA' in layer 'x'" in text
    assert f"{path}:5:1: unknown layer type 'NoSuchLayerB' in layer 'y'" in text
    assert "known types: " in text and "ReLU" in text


def test_included_filters_and_single_form():
    net, source = read_net_with_source(NET)
    with pytest.raises(UnknownLayerError, match=r"^Unknown layer type 'NoSuchLayerA' in layer 'x' \(<string>:3:1\); "
                                                r"known types: "):
        check_layer_types(net, source, included=lambda lp: not any(r.phase == 0 for r in lp.include))


def test_known_net_passes():
    net = read_net(NET.replace("NoSuchLayerA", "ReLU").replace("NoSuchLayerB", "Sigmoid"))
    check_layer_types(net, "net.prototxt")


def test_building_a_net_reports_every_unknown_type_with_its_line(tmp_path):
    """Caffe stops at the first unknown type; a net built here names them all, each at file:line:col,
    counting only the layers its NetState keeps."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source
    from neocaffe.layers.registry import UnknownLayerError

    path = tmp_path / "n.prototxt"
    path.write_text("layer { name: 'x' type: 'Input' top: 'x' input_param { shape { dim: 1 } } }\n"
                    "layer { name: 'a' type: 'Foo' bottom: 'x' top: 'y' }\n"
                    "layer { name: 't' type: 'Baz' bottom: 'x' top: 'w' include { phase: TRAIN } }\n"
                    "  layer { name: 'b' type: 'Bar' bottom: 'y' top: 'z' }\n")
    net_param, src = read_net_with_source(path)
    with pytest.raises(UnknownLayerError) as e:
        Net(net_param, 1, source=src)
    msg = str(e.value)
    assert f"{path}:2:1: unknown layer type 'Foo' in layer 'a'" in msg
    assert f"{path}:4:3: unknown layer type 'Bar' in layer 'b'" in msg and "Baz" not in msg
