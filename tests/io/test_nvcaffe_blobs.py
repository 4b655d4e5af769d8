"""NVCaffe's BlobProto raw_data/raw_diff (NVIDIA/caffe 0.17.4, Blob::FromProto / ToProto): read in each encoding
from hand-built protos and .caffemodels; neocaffe's writer keeps BVLC's float ``data``."""
from __future__ import annotations

import numpy as np
import pytest

from neocaffe.io.binaryproto import WireError, decode_blob
from neocaffe.io.caffemodel import LayerWeights, read_caffemodel, save_caffemodel
from neocaffe.proto import caffe_pb2

f32 = np.float32


def _blob(values, type_code, shape, diff=None):
    b = caffe_pb2.BlobProto()
    b.shape.dim.extend(shape)
    b.raw_data_type = type_code
    b.raw_data = values.tobytes()
    if diff is not None:
        b.raw_diff_type = type_code
        b.raw_diff = diff.tobytes()
    return b.SerializeToString()


@pytest.mark.parametrize("type_code,dtype", [(caffe_pb2.FLOAT16, np.float16), (caffe_pb2.FLOAT, np.float32),
                                             (caffe_pb2.DOUBLE, np.float64)])
def test_raw_blob_each_type(type_code, dtype):
    x = (np.random.default_rng(0).standard_normal(24) * 3).astype(dtype)
    d = (x * 2).astype(dtype)
    buf = _blob(x, type_code, (2, 3, 4), d)
    got = decode_blob(buf, 0, len(buf), want_diff=True)
    assert got.data.shape == (2, 3, 4) and got.data.dtype == (np.float64 if dtype == np.float64 else np.float32)
    np.testing.assert_array_equal(got.data.reshape(-1), x.astype(got.data.dtype))  # fp16 -> fp32 exact
    np.testing.assert_array_equal(got.diff.reshape(-1), d.astype(got.diff.dtype))


def test_fp16_specials_exact():
    x = np.array([65504, -0.0, 6e-8, np.inf, 1 / 3], np.float16)
    got = decode_blob(_blob(x, caffe_pb2.FLOAT16, (5,)), 0, len(_blob(x, caffe_pb2.FLOAT16, (5,)))).data
    assert got.tobytes() == x.astype(f32).tobytes()


def test_data_field_wins_over_raw():
    b = caffe_pb2.BlobProto()
    b.shape.dim.append(2)
    b.data.extend([1.0, 2.0])
    b.raw_data_type = caffe_pb2.FLOAT16
    b.raw_data = np.array([5, 6], np.float16).tobytes()
    buf = b.SerializeToString()
    np.testing.assert_array_equal(decode_blob(buf, 0, len(buf)).data, [1.0, 2.0])


@pytest.mark.parametrize("edit,match", [
    (lambda b: b.ClearField("raw_data_type"), "no raw_data_type"),
    (lambda b: setattr(b, "raw_data_type", caffe_pb2.INT), "unsupported raw_data_type INT"),
    (lambda b: setattr(b, "raw_data", b.raw_data[:-2]), "holds 4 values but its raw_data has 3"),
    (lambda b: setattr(b, "raw_data", b.raw_data[:-1]), "not a multiple of 2"),
])
def test_bad_raw_blobs_are_clear_errors(edit, match):
    b = caffe_pb2.BlobProto.FromString(_blob(np.ones(4, np.float16), caffe_pb2.FLOAT16, (4,)))
    edit(b)
    buf = b.SerializeToString()
    with pytest.raises(WireError, match=match):
        decode_blob(buf, 0, len(buf))


def test_nvcaffe_caffemodel_reads_and_rewrites_as_bvlc(tmp_path):
    rng = np.random.default_rng(1)
    w16 = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    b32 = rng.standard_normal(4).astype(f32)
    net = caffe_pb2.NetParameter(name="nv")
    lp = net.layer.add(name="conv", type="Convolution")
    lp.forward_type = caffe_pb2.FLOAT16
    lp.blobs.add().MergeFromString(_blob(w16, caffe_pb2.FLOAT16, w16.shape))
    lp.blobs.add().MergeFromString(_blob(b32, caffe_pb2.FLOAT, b32.shape))
    path = tmp_path / "nv.caffemodel"
    path.write_bytes(net.SerializeToString())
    layers = read_caffemodel(path)
    assert [(x.name, x.type) for x in layers] == [("conv", "Convolution")]
    np.testing.assert_array_equal(layers[0].blobs[0], w16.astype(f32))
    np.testing.assert_array_equal(layers[0].blobs[1], b32)
    out = tmp_path / "bvlc.caffemodel"
    save_caffemodel(out, [LayerWeights("conv", "Convolution", [np.asarray(b) for b in layers[0].blobs])])
    written = caffe_pb2.NetParameter.FromString(out.read_bytes())
    blob = written.layer[0].blobs[0]
    assert not blob.HasField("raw_data") and not blob.HasField("raw_data_type") and len(blob.data) == w16.size
    np.testing.assert_array_equal(np.array(blob.data, f32), w16.astype(f32).reshape(-1))
