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
