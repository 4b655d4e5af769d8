"""C3D-v1.0's 5-D BlobProto (facebookarchive/C3D @ 71336a2, C3D-v1.0/src/caffe/proto/caffe.proto and
src/caffe/blob.cpp): mean .binaryproto files and .caffemodel weights of the fork load as 5-D arrays, its V1
type numbers name its layers, the blobs fit our layers' shapes as the fork's CopyTrainedLayersFrom compares
them, and the V1 upgrade of its prototxt names its types."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe.io.binaryproto import decode_blob, encode_blob, read_blobproto, write_blobproto
from neocaffe.io.caffemodel import read_caffemodel, read_net_binary, save_caffemodel
from neocaffe.io.errors import CaffeFileError
from neocaffe.io.upgrade import upgrade_net
from neocaffe.io.weights import fit_blob, load_weights
from neocaffe.proto import caffe_pb2
from tests.io.c3d_files import c3d_blob, c3d_caffemodel

f32 = np.float32


def test_c3d_blob_decodes_five_dims():
    a = np.arange(2 * 3 * 4 * 5 * 6, dtype=f32).reshape(2, 3, 4, 5, 6)
    d = -a
    raw = c3d_blob(a, diff=d)
    b = decode_blob(raw, 0, len(raw))
    assert b.data.shape == (2, 3, 4, 5, 6) and b.legacy_shape == (2, 3, 4, 5, 6)
    np.testing.assert_array_equal(b.data, a)
    assert b.diff is None
    b = decode_blob(raw, 0, len(raw), want_diff=True)
    np.testing.assert_array_equal(b.diff, d)


def test_c3d_blob_without_length_is_length_one():
    """Blob::FromProto: a length of 0 reshapes to (num, channels, 1, height, width)."""
    a = np.ones((1, 2, 1, 3, 4), f32)
    raw = c3d_blob(a, dims=(1, 2, 0, 3, 4))
    assert decode_blob(raw, 0, len(raw)).data.shape == (1, 2, 1, 3, 4)


def test_c3d_blob_count_mismatch_is_an_error():
    raw = c3d_blob(np.ones(5, f32), dims=(1, 1, 1, 2, 3))
    with pytest.raises(Exception, match="holds 6 values but its data has 5"):
        decode_blob(raw, 0, len(raw))


def test_encoder_writes_the_fork_bytes_for_five_dims():
    a = np.random.default_rng(0).standard_normal((2, 1, 3, 2, 2)).astype(f32)
    chunks, n = encode_blob(a, legacy=True)
    raw = b"".join(bytes(c) for c in chunks)
    assert raw == c3d_blob(a) and n == len(raw)


def test_c3d_mean_binaryproto(tmp_path):
    """The fork's compute_volume_mean writes 1 x 3 x L x H x W (its sport1m mean: 1 x 3 x 16 x 128 x 171)."""
    mean = np.random.default_rng(1).uniform(80, 140, (1, 3, 4, 6, 7)).astype(f32)
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(c3d_blob(mean))
    b = read_blobproto(path)
    assert b.data.shape == (1, 3, 4, 6, 7)
    np.testing.assert_array_equal(b.data, mean)
    write_blobproto(tmp_path / "again.binaryproto", b.data, legacy=True)  # written back in the fork's numbering
    assert (tmp_path / "again.binaryproto").read_bytes() == path.read_bytes()


def _model(g):
    w = g.standard_normal((4, 3, 3, 3, 3)).astype(f32)
    b = g.standard_normal((1, 1, 1, 1, 4)).astype(f32)
    fw = g.standard_normal((1, 1, 1, 5, 8)).astype(f32)
    fb = g.standard_normal((1, 1, 1, 1, 5)).astype(f32)
    return w, b, fw, fb, [("conv1a", "CONVOLUTION3D", [w, b]), ("relu1a", "RELU", []), ("pool1", "POOLING3D", []),
                          ("fc6-1", "INNER_PRODUCT", [fw, fb])]


def test_c3d_caffemodel_types_and_fitting(tmp_path):
    g = np.random.default_rng(2)
    w, b, fw, fb, layers = _model(g)
    path = tmp_path / "c3d.caffemodel"
    path.write_bytes(c3d_caffemodel(layers))
    got = {lw.name: lw for lw in load_weights(path)}
    assert [(lw.name, lw.type) for lw in got.values()] == [("conv1a", "Convolution3D"), ("relu1a", "ReLU"),
                                                             ("pool1", "Pooling3D"), ("fc6-1", "InnerProduct")]
    conv, fc = got["conv1a"], got["fc6-1"]
    assert conv.legacy_shapes == [(4, 3, 3, 3, 3), (1, 1, 1, 1, 4)]
    np.testing.assert_array_equal(fit_blob(conv.blobs[0], (4, 3, 3, 3, 3), conv.legacy_shapes[0]), w)
    np.testing.assert_array_equal(fit_blob(conv.blobs[1], (4,), conv.legacy_shapes[1]), b.reshape(4))
    np.testing.assert_array_equal(fit_blob(fc.blobs[0], (5, 8), fc.legacy_shapes[0]), fw.reshape(5, 8))
    with pytest.raises(ValueError, match="shape mismatch"):
        fit_blob(fc.blobs[0], (8, 5), fc.legacy_shapes[0])
    # saved again (e.g. by caffemodel_convertor), the 5-D blobs keep the fork's numbering and read back alike
    save_caffemodel(tmp_path / "again.caffemodel", list(got.values()))
    again = read_caffemodel(tmp_path / "again.caffemodel")
    assert [lw.legacy_shapes for lw in again] == [lw.legacy_shapes for lw in got.values()]
    np.testing.assert_array_equal(again[0].blobs[0], w)


def test_c3d_caffemodel_gives_no_net_definition(tmp_path):
    path = tmp_path / "c3d.caffemodel"
    path.write_bytes(c3d_caffemodel(_model(np.random.default_rng(3))[-1]))
    with pytest.raises(CaffeFileError, match="C3D-v1.0"):
        read_net_binary(path)


def test_bvlc_v1_numbers_unchanged(tmp_path):
    """A BVLC V1 file (4-D blobs) keeps BVLC's meaning of 30 (ARGMAX): only a file of 5-D blobs is C3D's."""
    net = caffe_pb2.NetParameter()
    layer = net.layers.add(name="am", type=caffe_pb2.V1LayerParameter.ARGMAX)
    layer.blobs.add(num=1, channels=1, height=1, width=2, data=[1, 2])
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())
    assert read_caffemodel(path)[0].type == "ArgMax"


def test_v1_upgrade_names_c3d_types(caplog):
    net = text_format.Parse("""
      layers { name: "data" type: VIDEO_DATA top: "data" image_data_param { source: "l.txt" new_length: 16 } }
      layers { name: "c" type: CONVOLUTION3D bottom: "data" top: "c" blobs_lr: 1 blobs_lr: 2
        convolution_param { num_output: 4 kernel_size: 3 kernel_depth: 3 temporal_pad: 1 } }
      layers { name: "p" type: POOLING3D bottom: "c" top: "p" pooling_param { kernel_size: 2 kernel_depth: 2 } }
      layers { name: "e" type: ELTWISE_PRODUCT bottom: "p" bottom: "p" top: "e" }
      layers { name: "dc" type: DECONVOLUTION3D bottom: "e" top: "dc" }
      layers { name: "ds" type: DOWN_SAMPLING bottom: "e" top: "ds" down_sampling_param { spatial_factor: 2 } }
    """, caffe_pb2.NetParameter())
    with caplog.at_level(logging.ERROR, "neocaffe.io.upgrade"):
        out, lines = upgrade_net(net)
    assert [(layer.name, layer.type) for layer in out.layer] == [
        ("data", "VideoData"), ("c", "Convolution3D"), ("p", "Pooling3D"), ("e", "Eltwise"),
        ("dc", "Deconvolution3D"), ("ds", "DownSampling")]
    by = {layer.name: layer for layer in out.layer}
    assert by["data"].image_data_param.new_length == 16 and not by["data"].HasField("transform_param")
    assert by["c"].convolution_param.kernel_depth == 3 and [p.lr_mult for p in by["c"].param] == [1, 2]
    assert by["p"].pooling_param.kernel_depth == 2
    assert by["e"].eltwise_param.operation == caffe_pb2.EltwiseParameter.PROD
    assert by["ds"].down_sampling_param.spatial_factor == 2 and lines.ok and not caplog.text
