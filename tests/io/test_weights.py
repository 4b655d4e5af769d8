"""Weights: the minimal view against full protobuf parses, legacy shapes, every encoding, round trips."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from neocaffe.io import (CaffeFileError, LayerWeights, fit_blob, load_weights, read_caffemodel,
                         read_caffemodel_h5, save_caffemodel, save_caffemodel_h5, save_weights, shape_equals,
                         weights_by_name)
from neocaffe.io.binaryproto import varint
from neocaffe.proto import caffe_pb2

from .conftest import shared_params

BINARY = shared_params("realdata/*/*.caffemodel", "fixtures/**/*.caffemodel")
HDF5 = shared_params("realdata/*/*.caffemodel.h5", "fixtures/**/*.caffemodel.h5")


def _proto_blob_array(blob) -> tuple[np.ndarray, tuple[int, ...] | None]:
    legacy = None
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        legacy = (blob.num, blob.channels, blob.height, blob.width)
    shape = legacy if legacy is not None else tuple(blob.shape.dim)
    values = blob.double_data if len(blob.double_data) else blob.data
    return np.asarray(values, dtype=np.float64 if len(blob.double_data) else np.float32).reshape(shape), legacy


@pytest.mark.parametrize("path", BINARY)
def test_minimal_view_equals_full_parse(path: Path):
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    layers = read_caffemodel(path)
    proto_layers = list(net.layer) or list(net.layers)
    assert [lw.name for lw in layers] == [p.name for p in proto_layers]
    for lw, p in zip(layers, proto_layers):
        assert len(lw.blobs) == len(p.blobs) == len(lw.legacy_shapes)
        for arr, legacy, blob in zip(lw.blobs, lw.legacy_shapes, p.blobs):
            expected, expected_legacy = _proto_blob_array(blob)
            assert legacy == expected_legacy
            assert arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable
            np.testing.assert_array_equal(arr, expected)
    assert load_weights(path)[0].name == layers[0].name


@pytest.mark.parametrize("path", BINARY)
def test_round_trip_caffemodel(path: Path, tmp_path: Path):
    layers = read_caffemodel(path)
    out = tmp_path / "copy.caffemodel"
    save_caffemodel(out, layers)
    again = read_caffemodel(out)
    assert [(lw.name, lw.type, lw.legacy_shapes) for lw in again] == \
        [(lw.name, lw.type, lw.legacy_shapes) for lw in layers]
    for a, b in zip(layers, again):
        for x, y in zip(a.blobs, b.blobs):
            assert x.shape == y.shape
            np.testing.assert_array_equal(x, y)
    # the file is a valid NetParameter for protobuf too
    net = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert [layer.name for layer in net.layer] == [lw.name for lw in layers]


@pytest.mark.parametrize("path", shared_params("fixtures/logs/snap_binary/*.caffemodel",
                                               "fixtures/solver/*.caffemodel"))
def test_writer_reproduces_caffe_snapshot_bytes(path: Path, tmp_path: Path):
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    out = tmp_path / "again.caffemodel"
    save_caffemodel(out, read_caffemodel(path), net_param=net)
    assert out.read_bytes() == path.read_bytes()


def test_v1_legacy_shapes_fit_like_caffe(shared):
    layers = weights_by_name(load_weights(shared / "realdata" / "lenet_v1_2014" / "lenet_iter_10000.caffemodel"))
    ip1 = layers["ip1"]
    assert ip1.type == "InnerProduct" and ip1.legacy_shapes == [(1, 1, 500, 800), (1, 1, 1, 500)]
    assert fit_blob(ip1.blobs[0], (500, 800), ip1.legacy_shapes[0]).shape == (500, 800)
    assert fit_blob(ip1.blobs[1], (500,), ip1.legacy_shapes[1]).shape == (500,)
    conv1 = layers["conv1"]
    assert fit_blob(conv1.blobs[0], (20, 1, 5, 5), conv1.legacy_shapes[0]).shape == (20, 1, 5, 5)
    with pytest.raises(CaffeFileError, match=r"Cannot copy param 0 weights from layer 'ip1'; shape mismatch. "
                                             r"Source param shape is 1 1 500 800 \(400000\); target param "
                                             r"shape is 800 500 \(400000\)"):
        fit_blob(ip1.blobs[0], (800, 500), ip1.legacy_shapes[0], layer="ip1", path="lenet.caffemodel")
    assert fit_blob(ip1.blobs[0], (800, 500), ip1.legacy_shapes[0], strict=False).shape == (800, 500)
    assert shape_equals((3,), (3,), None) and not shape_equals((1, 3), (3,), None)
    assert shape_equals((2, 3, 4, 5, 6)[:4], (0,), (2, 3, 4, 5)) and not shape_equals((1, 2, 3, 4, 5), (), (1, 2, 3, 4))


def _lenet_numpy(layers: dict[str, LayerWeights], images: np.ndarray) -> np.ndarray:
    """LeNet forward in float64 NumPy: conv(20,5) pool2 conv(50,5) pool2 ip(500) relu ip(10)."""
    def weights(name, shape_w, shape_b):
        lw = layers[name]
        return (fit_blob(lw.blobs[0], shape_w, lw.legacy_shapes[0]).astype(np.float64),
                fit_blob(lw.blobs[1], shape_b, lw.legacy_shapes[1]).astype(np.float64))

    def conv(x, w, b):
        win = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
        return np.einsum("nchwij,ocij->nohw", win, w) + b[None, :, None, None]

    def pool(x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    w1, b1 = weights("conv1", (20, 1, 5, 5), (20,))
    w2, b2 = weights("conv2", (50, 20, 5, 5), (50,))
    w3, b3 = weights("ip1", (500, 800), (500,))
    w4, b4 = weights("ip2", (10, 500), (10,))
    x = pool(conv(pool(conv(images, w1, b1)), w2, b2)).reshape(len(images), -1)
    return np.maximum(x @ w3.T + b3, 0) @ w4.T + b4


@pytest.mark.parametrize("model,logits", [("lenet_v1_2014", "lenet_v1_iter10000"),
                                          ("lenet_v2_2016", "lenet_v2_iter10000")])
def test_lenet_weights_reproduce_caffe_logits(shared, model, logits):
    import gzip

    raw = gzip.decompress((shared / "realdata" / "mnist_idx_pypi" / "t10k-images.idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, 20 * 784, 16).reshape(20, 1, 28, 28) * np.float64(0.00390625)
    layers = weights_by_name(load_weights(shared / "realdata" / model / "lenet_iter_10000.caffemodel"))
    expected = np.load(shared / "fixtures" / "models" / f"{logits}_ip2_first100.npy")[:20]
    np.testing.assert_allclose(_lenet_numpy(layers, images), expected, rtol=1e-4, atol=1e-4)


def _unpacked(values: np.ndarray, tag: int, fmt: str) -> bytes:
    return b"".join(bytes([tag]) + struct.pack(fmt, v) for v in values)


def test_unpacked_and_split_encodings(tmp_path: Path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal(10).astype(np.float32)
    shape = caffe_pb2.BlobShape(dim=[2, 5]).SerializeToString()
    # unpacked floats, interrupted by the shape field, continued by a packed chunk: protobuf concatenates
    blob = (_unpacked(data[:3], 0x2D, "<f") + bytes([0x3A, len(shape)]) + shape + _unpacked(data[3:6], 0x2D, "<f")
            + bytes([0x2A, 16]) + data[6:].tobytes())
    legacy_double = (bytes([0x08, 1, 0x10, 1, 0x18, 2, 0x20, 5])
                     + _unpacked(data.astype(np.float64), 0x41, "<d"))
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct").SerializeToString()
    body = layer + b"\x3a" + varint(len(blob)) + blob + b"\x3a" + varint(len(legacy_double)) + legacy_double
    net = b"\xa2\x06" + varint(len(body)) + body
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(net)
    (lw,) = read_caffemodel(path)
    np.testing.assert_array_equal(lw.blobs[0], data.reshape(2, 5))
    assert lw.blobs[1].dtype == np.float64 and lw.legacy_shapes[1] == (1, 1, 2, 5)
    np.testing.assert_array_equal(lw.blobs[1].reshape(-1), data.astype(np.float64))
    proto = caffe_pb2.NetParameter.FromString(net)        # protobuf agrees
    np.testing.assert_array_equal(np.array(proto.layer[0].blobs[0].data, np.float32), data)


def test_v0_binary_weights(tmp_path: Path):
    net = caffe_pb2.NetParameter()
    pad = net.layers.add()
    pad.layer.name, pad.layer.type, pad.layer.pad = "pad1", "padding", 1
    conv = net.layers.add()
    conv.layer.name, conv.layer.type = "conv1", "conv"
    w = conv.layer.blobs.add()
    w.num, w.channels, w.height, w.width = 2, 1, 3, 3
    w.data.extend(np.arange(18, dtype=np.float32))
    v1 = net.layers.add()
    v1.name, v1.type = "fc", caffe_pb2.V1LayerParameter.INNER_PRODUCT
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    layers = read_caffemodel(path)
    assert [(lw.name, lw.type) for lw in layers] == [("conv1", "Convolution"), ("fc", "InnerProduct")]
    np.testing.assert_array_equal(layers[0].blobs[0].reshape(-1), np.arange(18, dtype=np.float32))


@pytest.mark.parametrize("path", HDF5)
def test_hdf5_weights_read_and_round_trip(path: Path, tmp_path: Path):
    import h5py

    layers = load_weights(path)                      # sniffed by content
    with h5py.File(path, "r") as h5:
        assert [lw.name for lw in layers] == list(h5["data"].keys())
        for lw in layers:
            assert len(lw.blobs) == len(h5["data"][lw.name])
            for i, arr in enumerate(lw.blobs):
                np.testing.assert_array_equal(arr, h5["data"][lw.name][str(i)][()])
    npz = path.parents[1] / "weights_npz" / f"{path.parent.name}__{path.name}.npz"
    if npz.exists():
        ref = np.load(npz)
        got = {f"{lw.name}/{i}": b for lw in layers for i, b in enumerate(lw.blobs)}
        assert set(ref.keys()) == set(got)
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key])
    out = tmp_path / "copy.caffemodel.h5"
    save_caffemodel_h5(out, layers)
    again = read_caffemodel_h5(out)
    assert [lw.name for lw in again] == [lw.name for lw in layers]
    for a, b in zip(layers, again):
        assert all(np.array_equal(x, y) and x.shape == y.shape for x, y in zip(a.blobs, b.blobs))


def test_binary_and_hdf5_snapshots_agree(shared):
    logs = shared / "fixtures" / "logs"
    binary = weights_by_name(load_weights(logs / "snap_binary" / "lognet_iter_20.caffemodel"))
    hdf5 = weights_by_name(load_weights(logs / "snap_hdf5" / "lognet_iter_20.caffemodel.h5"))
    for name, lw in hdf5.items():
        assert all(np.array_equal(a, b) for a, b in zip(lw.blobs, binary[name].blobs))


def test_sniffing_by_content_and_diffs(tmp_path: Path):
    rng = np.random.default_rng(1)
    layers = [LayerWeights("conv", "Convolution", [rng.standard_normal((3, 2, 2, 2), dtype=np.float32),
                                                   rng.standard_normal(3, dtype=np.float32)],
                           diffs=[np.ones((3, 2, 2, 2), np.float32), np.zeros(3, np.float32)]),
              LayerWeights("relu", "ReLU", [])]
    h5_named_binary = tmp_path / "weights.caffemodel"
    save_weights(h5_named_binary, layers, hdf5=True)
    binary_named_h5 = tmp_path / "weights.caffemodel.h5"
    save_weights(binary_named_h5, layers, hdf5=False, write_diff=True)
    for path in (h5_named_binary, binary_named_h5):
        got = weights_by_name(load_weights(path))
        np.testing.assert_array_equal(got["conv"].blobs[0], layers[0].blobs[0])
        assert got["relu"].blobs == []
    got = load_weights(binary_named_h5, want_diff=True)[0]
    np.testing.assert_array_equal(got.diffs[0], layers[0].diffs[0])
    save_caffemodel_h5(tmp_path / "d.h5", layers, write_diff=True)
    got = read_caffemodel_h5(tmp_path / "d.h5", want_diff=True)[0]
    np.testing.assert_array_equal(got.diffs[0], layers[0].diffs[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "weights.caffemodel", "weights.caffemodel.h5"]


def test_save_with_net_param_keeps_config(tmp_path: Path):
    net = caffe_pb2.NetParameter(name="n")
    conv = net.layer.add(name="c", type="Convolution", bottom=["x"], top=["c"])
    conv.convolution_param.num_output = 2
    net.layer.add(name="r", type="ReLU", bottom=["c"], top=["c"])
    w = LayerWeights("c", "Convolution", [np.ones((2, 1, 1, 1), np.float32)])
    save_caffemodel(tmp_path / "m.caffemodel", [w], net_param=net)
    back = caffe_pb2.NetParameter.FromString((tmp_path / "m.caffemodel").read_bytes())
    assert back.name == "n" and back.layer[0].convolution_param.num_output == 2
    assert list(back.layer[0].blobs[0].shape.dim) == [2, 1, 1, 1] and len(back.layer[1].blobs) == 0
    with pytest.raises(ValueError, match="not in net_param"):
        save_caffemodel(tmp_path / "m2.caffemodel", [LayerWeights("zz", "", [])], net_param=net)


def test_opencv_layer_caffemodels_with_deprecated_input_field(shared):
    """PROVENANCE (opencv_caffe_layers_2015): saved with the deprecated NetParameter `input` field."""
    from neocaffe.io import read_net_binary

    folder = shared / "realdata" / "opencv_caffe_layers_2015"
    net = read_net_binary(folder / "layer_inner_product.caffemodel")
    assert len(net.input) == 0 and [layer.name for layer in net.layer] == ["output"]
    raw = caffe_pb2.NetParameter.FromString((folder / "layer_inner_product.caffemodel").read_bytes())
    assert list(raw.input) == ["input"]
    (ip,) = read_caffemodel(folder / "layer_inner_product.caffemodel")
    x = np.load(folder / "blob.npy")
    expected = np.load(folder / "layer_inner_product.npy")
    got = x.astype(np.float64) @ ip.blobs[0].T.astype(np.float64) + ip.blobs[1]   # InnerProduct axis 3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
