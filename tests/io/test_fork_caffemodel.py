""".caffemodel files written by the forks' Caffe load their blobs by layer name.

The forks give their own fields numbers that our schema uses for other fields, or does not know
(SegNet/ENet's `bn_param` = 45, ENet's `upsample_param` = 147 where ours is master's
`sparsify_param`, SegNet's 137 where ours is upstream's `embed_param`, Faster R-CNN's 8266711, R-FCN's
10001, ...). The files here are built byte by byte with those numbers: the weight reader takes only
names, types and blobs from them, and a full decode with our schema does not fail."""
from __future__ import annotations

import struct

import numpy as np

from neocaffe.graph.net import Net
from neocaffe.io import read_caffemodel
from neocaffe.io.caffemodel import read_net_binary
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST
from tests.records import varint

VARINT, I32, LEN = 0, 5, 2


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    tag = varint(number << 3 | wire)
    if wire == VARINT:
        return tag + varint(int(payload))
    if wire == I32:
        return tag + payload
    return tag + varint(len(payload)) + payload


def _f32(x: float) -> bytes:
    return struct.pack("<f", x)


def _blob(array: np.ndarray) -> bytes:
    shape = b"".join(varint(d) for d in array.shape)
    return (_field(7, LEN, _field(1, LEN, shape))                                   # shape { dim (packed) }
            + _field(5, LEN, np.ascontiguousarray(array, "<f4").tobytes()))          # data (packed)


def _layer(name: str, type_: str, blobs: list[np.ndarray], extra: bytes) -> bytes:
    body = _field(1, LEN, name.encode()) + _field(2, LEN, type_.encode()) + extra
    return _field(100, LEN, body + b"".join(_field(7, LEN, _blob(b)) for b in blobs))


def _fork_fields() -> bytes:
    """LayerParameter fields as the forks number them (wire types that often disagree with ours)."""
    return b"".join([
        _field(45, LEN, _field(3, VARINT, 1) + _field(1, LEN, _field(1, LEN, b"constant"))),  # segnet bn_param
        _field(137, LEN, _field(1, VARINT, 2) + _field(6, VARINT, 45)),     # segnet upsample_param (ours: embed)
        _field(147, LEN, _field(1, VARINT, 2)),                             # enet upsample_param (ours: sparsify)
        _field(143, LEN, _field(3, VARINT, 8)),                             # pspnet interp_param (ours: input)
        _field(8266711, LEN, _field(1, VARINT, 6) + _field(2, VARINT, 6) + _field(3, I32, _f32(0.0625))),
        _field(10001, LEN, _field(1, I32, _f32(0.0625)) + _field(2, VARINT, 21) + _field(3, VARINT, 7)),
        _field(206, LEN, _field(1, VARINT, 0) + _field(3, VARINT, 0)),      # ssd norm_param
        _field(101, LEN, _field(3, VARINT, 1) + _field(4, I32, _f32(0.5))),  # enet loss_param: 3, 4 are theirs
        _field(12, VARINT, 1),                                              # master's display
    ])


def test_fork_caffemodel_loads_by_name(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    s = rng.standard_normal(4).astype(np.float32)
    t = rng.standard_normal(4).astype(np.float32)
    data = (_layer("conv", "Convolution", [w, b], _fork_fields())
            + _layer("bn", "BN", [s, t], _fork_fields())          # a fork type, not in the net below
            + _layer("scale", "Scale", [s, t], _fork_fields()))
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(data)

    layers = read_caffemodel(path)
    assert [(lw.name, lw.type, len(lw.blobs)) for lw in layers] == \
        [("conv", "Convolution", 2), ("bn", "BN", 2), ("scale", "Scale", 2)]
    np.testing.assert_array_equal(layers[0].blobs[0], w)
    np.testing.assert_array_equal(layers[2].blobs[1], t)

    full = read_net_binary(path, upgrade=False)       # our schema decodes it (foreign parts as it can)
    assert [lp.name for lp in full.layer] == ["conv", "bn", "scale"]
    assert full.layer[0].roi_pooling_param.pooled_h == 6
    assert full.layer[0].psroi_pooling_param.group_size == 7

    net = Net(read_net("""
        input: "data" input_shape { dim: 1 dim: 3 dim: 5 dim: 5 }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 4 kernel_size: 3 } }
        layer { name: "scale" type: "Scale" bottom: "conv" top: "out" scale_param { bias_term: true } }
    """), TEST)
    copied = net.copy_from(str(path))
    assert set(copied) == {"conv", "scale"}
    params = net.params_by_layer()
    np.testing.assert_array_equal(params["conv"][0].detach().numpy(), w)
    np.testing.assert_array_equal(params["scale"][1].detach().numpy(), t)
