"""caffe.Net: pycaffe's test_net (blobs, params, forward/backward with start/end, inputs/outputs,
top/bottom names, save and read, levels and stages) plus Blob and Input-net behaviour."""
from __future__ import annotations

import gc
from collections import OrderedDict

import numpy as np
import pytest

import caffe

from .nets import simple_net_file


@pytest.fixture
def net_file(tmp_path):
    return simple_net_file(tmp_path, 13)


@pytest.fixture
def net(net_file):
    net = caffe.Net(net_file, caffe.TRAIN)
    # fill in valid labels
    net.blobs["label"].data[...] = np.random.RandomState(0).randint(13, size=net.blobs["label"].data.shape)
    return net


def test_memory(net_file):
    """Blobs and params stay usable after the net object is gone."""
    net = caffe.Net(net_file, caffe.TRAIN)
    params = sum(net.params.values(), [])
    blobs = list(net.blobs.values())
    del net
    gc.collect()
    total = 0
    for p in params:
        total += p.data.sum() + p.diff.sum()
    for bl in blobs:
        total += bl.data.sum() + bl.diff.sum()
    assert np.isfinite(total)


def test_layer_dict(net):
    layer_dict = net.layer_dict
    assert list(layer_dict.keys()) == list(net._layer_names)
    for i, name in enumerate(net._layer_names):
        assert layer_dict[name].type == net.layers[i].type


def test_forward_backward(net):
    out = net.forward()
    assert set(out) == {"loss"} and np.isfinite(out["loss"])
    diffs = net.backward()
    assert diffs == {}  # no inputs
    assert np.abs(net.params["conv"][0].diff).sum() > 0


def test_forward_start_end(net):
    net.forward()
    conv_blob = net.blobs["conv"]
    ip_blob = net.blobs["ip_blob"]
    sample_data = np.random.uniform(size=conv_blob.data.shape).astype(np.float32)
    conv_blob.data[...] = sample_data
    forward_blob = net.forward(start="ip", end="ip")
    assert "ip_blob" in forward_blob
    manual_forward = []
    for i in range(0, conv_blob.data.shape[0]):
        dot = np.dot(net.params["ip"][0].data, conv_blob.data[i].reshape(-1))
        manual_forward.append(dot + net.params["ip"][1].data)
    np.testing.assert_allclose(ip_blob.data, np.asarray(manual_forward), rtol=1e-4, atol=1e-3)


def test_backward_start_end(net):
    net.forward()
    conv_blob = net.blobs["conv"]
    ip_blob = net.blobs["ip_blob"]
    sample_data = np.random.uniform(size=ip_blob.data.shape).astype(np.float32)
    ip_blob.diff[...] = sample_data
    backward_blob = net.backward(start="ip", end="ip")
    assert "conv" in backward_blob
    manual_backward = []
    for i in range(0, conv_blob.data.shape[0]):
        dot = np.dot(ip_blob.diff[i], net.params["ip"][0].data)
        manual_backward.append(dot)
    manual_backward = np.asarray(manual_backward).reshape(conv_blob.data.shape)
    np.testing.assert_allclose(conv_blob.diff, manual_backward, rtol=1e-4, atol=1e-4)


def test_clear_param_diffs(net):
    net.forward()
    net.backward()
    diff = net.params["conv"][0].diff
    assert diff.any()
    net.clear_param_diffs()
    assert not net.params["conv"][0].diff.any()


def test_inputs_outputs(net):
    assert net.inputs == []
    assert net.outputs == ["loss"]


def test_top_bottom_names(net):
    assert net.top_names == OrderedDict([("data", ["data", "label"]), ("conv", ["conv"]),
                                         ("ip", ["ip_blob"]), ("loss", ["loss"])])
    assert net.bottom_names == OrderedDict([("data", []), ("conv", ["data"]), ("ip", ["conv"]),
                                            ("loss", ["ip_blob", "label"])])
    # the index form pycaffe builds those from
    names = list(net._blob_names)
    for i, layer in enumerate(net._layer_names):
        assert [names[k] for k in net._top_ids(i)] == net.top_names[layer]
        assert [names[k] for k in net._bottom_ids(i)] == net.bottom_names[layer]


def test_blob_loss_weights(net):
    assert net.blob_loss_weights["loss"] == 1
    assert net.blob_loss_weights["conv"] == 0


@pytest.mark.parametrize("hdf5", [False, True])
def test_save_and_read(net, net_file, tmp_path, hdf5):
    path = str(tmp_path / ("w.caffemodel.h5" if hdf5 else "w.caffemodel"))
    if hdf5:
        net.save_hdf5(path)
        net2 = caffe.Net(net_file, caffe.TRAIN)
        net2.load_hdf5(path)
    else:
        net.save(path)
        net2 = caffe.Net(net_file, path, caffe.TRAIN)
    for name in net.params:
        for i in range(len(net.params[name])):
            np.testing.assert_array_equal(net.params[name][i].data, net2.params[name][i].data)


def test_weights_keyword_and_copy_from(net, net_file, tmp_path):
    path = str(tmp_path / "w.caffemodel")
    net.save(path)
    net2 = caffe.Net(net_file, caffe.TEST, weights=path)
    np.testing.assert_array_equal(net2.params["ip"][0].data, net.params["ip"][0].data)
    net3 = caffe.Net(net_file, caffe.TEST)
    before = net3.params["ip"][0].data  # a view: copy_from writes into the same storage
    net3.copy_from(path)
    np.testing.assert_array_equal(before, net.params["ip"][0].data)


def test_share_with(net, net_file):
    other = caffe.Net(net_file, caffe.TEST)
    other.share_with(net)
    net.params["ip"][0].data[...] = 0.25
    assert (other.params["ip"][0].data == 0.25).all()


def test_phase_is_required(net_file):
    with pytest.raises(TypeError, match="phase"):
        caffe.Net(net_file)


def test_blob_api(net):
    b = net.blobs["data"]
    assert b.shape == (5, 2, 3, 4) and b.data.shape == (5, 2, 3, 4)
    assert (b.num, b.channels, b.height, b.width, b.count) == (5, 2, 3, 4, 120)
    assert b.data.dtype == np.float32 and b.diff.shape == b.data.shape
    loss = net.forward()["loss"]
    assert net.blobs["loss"].data.shape == () and float(net.blobs["loss"].data) == float(loss)


INPUT_NET = """name: 'inputnet' force_backward: true
input: 'data' input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: 'gaussian' std: 1 } } }
layer { type: 'ReLU' name: 'relu' bottom: 'conv' top: 'conv' }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 1 } } }
"""


@pytest.fixture
def input_net(tmp_path):
    f = tmp_path / "input.prototxt"
    f.write_text(INPUT_NET)
    return caffe.Net(str(f), caffe.TEST)


def _manual(net, x):
    w, b = net.params["conv"][0].data, net.params["conv"][1].data
    n, _, h, wd = x.shape
    conv = np.zeros((n, 2, h - 2, wd - 2), np.float64)
    for i in range(h - 2):
        for j in range(wd - 2):
            patch = x[:, :, i:i + 3, j:j + 3].reshape(n, -1)
            conv[:, :, i, j] = patch @ w.reshape(2, -1).T + b
    relu = np.maximum(conv, 0)
    return relu, relu.reshape(n, -1) @ net.params["ip"][0].data.T + net.params["ip"][1].data


def test_input_net_forward_kwargs_and_in_place_blob(input_net):
    x = np.random.RandomState(1).randn(2, 3, 4, 4).astype(np.float32)
    assert input_net.inputs == ["data"] and input_net.outputs == ["ip"]
    out = input_net.forward(data=x)
    relu, ip = _manual(input_net, x)
    np.testing.assert_allclose(out["ip"], ip, rtol=1e-4, atol=1e-4)
    # the in-place ReLU shows in the blob it rewrote (feature extraction reads this)
    np.testing.assert_allclose(input_net.blobs["conv"].data, relu, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        input_net.forward(data=np.zeros((3, 3, 4, 4), np.float32))


def test_input_net_backward_gives_input_diff(input_net):
    x = np.random.RandomState(2).randn(2, 3, 4, 4).astype(np.float32)
    input_net.forward(data=x)
    top = np.random.RandomState(3).randn(2, 3).astype(np.float32)
    diffs = input_net.backward(ip=top)
    assert set(diffs) == {"data"}
    # finite-difference check of one input element
    eps = 1e-2
    x2 = x.copy()
    x2[0, 1, 2, 2] += eps
    up = (input_net.forward(data=x2)["ip"] * top).sum()
    x2[0, 1, 2, 2] -= 2 * eps
    down = (input_net.forward(data=x2)["ip"] * top).sum()
    assert diffs["data"][0, 1, 2, 2] == pytest.approx((up - down) / (2 * eps), rel=2e-2, abs=2e-2)


def test_reshape_and_forward_all(input_net):
    input_net.blobs["data"].reshape(5, 3, 4, 4)
    input_net.reshape()
    assert input_net.blobs["data"].data.shape == (5, 3, 4, 4)
    assert input_net.blobs["conv"].data.shape == (5, 2, 2, 2)
    x = np.random.RandomState(4).randn(5, 3, 4, 4).astype(np.float32)
    np.testing.assert_allclose(input_net.forward(data=x)["ip"], _manual(input_net, x)[1], rtol=1e-4, atol=1e-4)
    input_net.blobs["data"].reshape(2, 3, 6, 6)
    with pytest.raises(Exception, match="inner product"):
        input_net.reshape()  # ip's weights were made for 2x2 conv maps: Caffe fails the same way
    input_net.blobs["data"].reshape(2, 3, 4, 4)
    input_net.reshape()
    xs = np.random.RandomState(5).randn(7, 3, 4, 4).astype(np.float32)
    out = input_net.forward_all(data=xs)
    assert out["ip"].shape == (7, 3)
    np.testing.assert_allclose(out["ip"], _manual(input_net, xs)[1], rtol=1e-4, atol=1e-4)


LEVELS = """
layer { name: "data" type: "DummyData" top: "data"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "NoLevel" type: "InnerProduct" bottom: "data" top: "NoLevel"
  inner_product_param { num_output: 1 } }
layer { name: "Level0Only" type: "InnerProduct" bottom: "data" top: "Level0Only"
  include { min_level: 0 max_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level1Only" type: "InnerProduct" bottom: "data" top: "Level1Only"
  include { min_level: 1 max_level: 1 } inner_product_param { num_output: 1 } }
layer { name: "Level>=0" type: "InnerProduct" bottom: "data" top: "Level>=0"
  include { min_level: 0 } inner_product_param { num_output: 1 } }
layer { name: "Level>=1" type: "InnerProduct" bottom: "data" top: "Level>=1"
  include { min_level: 1 } inner_product_param { num_output: 1 } }
"""

STAGES = """
layer { name: "data" type: "DummyData" top: "data"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "A" type: "InnerProduct" bottom: "data" top: "A"
  include { stage: "A" } inner_product_param { num_output: 1 } }
layer { name: "B" type: "InnerProduct" bottom: "data" top: "B"
  include { stage: "B" } inner_product_param { num_output: 1 } }
layer { name: "AorB" type: "InnerProduct" bottom: "data" top: "AorB"
  include { stage: "A" } include { stage: "B" } inner_product_param { num_output: 1 } }
layer { name: "AandB" type: "InnerProduct" bottom: "data" top: "AandB"
  include { stage: "A" stage: "B" } inner_product_param { num_output: 1 } }
"""

ALL_IN_ONE = """
layer { name: "train_data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TRAIN stage: "train" } }
layer { name: "val_data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
  include { phase: TEST stage: "val" } }
layer { name: "deploy_data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } include { phase: TEST stage: "deploy" } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  include: { phase: TRAIN stage: "train" } include: { phase: TEST stage: "val" } }
layer { name: "pred" type: "Softmax" bottom: "ip" top: "pred" include: { phase: TEST stage: "deploy" } }
"""


def _write(tmp_path, text):
    f = tmp_path / "n.prototxt"
    f.write_text(text)
    return str(f)


def _named_blobs(net):
    return [b for b in net.blobs.keys() if "data" not in b]


@pytest.mark.parametrize("level,blobs", [(0, ["NoLevel", "Level0Only", "Level>=0"]),
                                         (1, ["NoLevel", "Level1Only", "Level>=0", "Level>=1"])])
def test_levels(tmp_path, level, blobs):
    net = caffe.Net(_write(tmp_path, LEVELS), caffe.TEST, level=level)
    assert _named_blobs(net) == blobs


@pytest.mark.parametrize("stages,blobs", [(["A"], ["A", "AorB"]), (["B"], ["B", "AorB"]),
                                          (["A", "B"], ["A", "B", "AorB", "AandB"])])
def test_stages(tmp_path, stages, blobs):
    net = caffe.Net(_write(tmp_path, STAGES), caffe.TEST, stages=stages)
    assert _named_blobs(net) == blobs


@pytest.mark.parametrize("phase,stage,outputs", [(caffe.TRAIN, "train", ["loss"]), (caffe.TEST, "val", ["loss"]),
                                                 (caffe.TEST, "deploy", ["pred"])])
def test_all_in_one(tmp_path, phase, stage, outputs):
    net = caffe.Net(_write(tmp_path, ALL_IN_ONE), phase, stages=[stage])
    assert list(net.blobs["data"].shape) == [1, 1, 10, 10]
    assert net.outputs == outputs
