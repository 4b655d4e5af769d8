"""caffe.Net.backward(start=..., end=...) runs only those layers, as Caffe's BackwardFromTo: the start
layer's tops take the diffs set on them (in place or not), loss layers in the range their loss weight,
and nothing below ``end`` runs (lower parameter diffs and blob diffs keep what they had); and
forward_backward_all over inputs longer than the batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe

NET = """name: 'rangenet' force_backward: true
input: 'data' input_shape { dim: 2 dim: 3 dim: 6 dim: 6 }
layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1'
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 }
                      bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu1' type: 'ReLU' bottom: 'conv1' top: 'conv1' }
layer { name: 'conv2' type: 'Convolution' bottom: 'conv1' top: 'conv2'
  convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'relu2' type: 'ReLU' bottom: 'conv2' top: 'conv2' }
layer { name: 'ip' type: 'InnerProduct' bottom: 'conv2' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'l2' type: 'EuclideanLoss' bottom: 'ip' bottom: 'ip_target' top: 'l2' loss_weight: 0.5 }
input: 'ip_target' input_shape { dim: 2 dim: 3 }
"""


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal((2, 3, 6, 6))
    net.blobs["ip_target"].data[...] = rng.standard_normal((2, 3))
    return net


def _torch_params(net):
    return {name: [torch.tensor(b.data, requires_grad=True) for b in blobs] for name, blobs in net.params.items()}


def test_range_from_in_place_top_skips_the_relu_above(net):
    """start='conv2' seeds conv2's own output: relu2 (in place, later) does not run, so conv2's
    parameter diff is the diff set on the blob without relu2's mask; conv1 and below run."""
    net.forward()
    g = np.random.default_rng(1).standard_normal(net.blobs["conv2"].diff.shape).astype(np.float32)
    net.blobs["conv2"].diff[...] = g
    net.clear_param_diffs()
    out = net.backward(start="conv2")
    p = _torch_params(net)
    x = torch.tensor(net.blobs["data"].data, requires_grad=True)
    c1 = torch.relu(torch.nn.functional.conv2d(x, *p["conv1"]))
    c2 = torch.nn.functional.conv2d(c1, p["conv2"][0], p["conv2"][1])
    c2.backward(torch.from_numpy(g))
    np.testing.assert_allclose(net.params["conv2"][0].diff, p["conv2"][0].grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.params["conv1"][0].diff, p["conv1"][0].grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["data"], x.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(net.blobs["conv2"].diff, g)  # the seed diff stays as set
    assert not net.params["ip"][0].diff.any()  # above start: untouched


def test_range_stops_at_end(net):
    """end='conv2': conv1's parameter diff keeps its old value; conv1's blob diff is conv2's bottom diff."""
    net.forward()
    net.clear_param_diffs()
    net.params["conv1"][0].diff[...] = 7.0
    net.blobs["data"].diff[...] = 3.0
    out = net.backward(start="ip", end="conv2")
    assert list(out) == ["conv1"]
    assert (net.params["conv1"][0].diff == 7.0).all()
    assert (net.blobs["data"].diff == 3.0).all()
    # ip and l2 are in no range here: ip's top diff is what the last forward left (zeros)
    assert not net.params["conv2"][0].diff.any()


def test_range_with_a_loss_layer_uses_its_loss_weight(net):
    """start at the loss layer: EuclideanLoss gets its loss weight 0.5 as top diff, as in Caffe."""
    net.forward()
    net.clear_param_diffs()
    net.backward(start="l2", end="ip")
    ref = net.params["ip"][0].diff.copy()
    net.clear_param_diffs()
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, ref, rtol=1e-6)
    conv2 = net.blobs["conv2"].data.reshape(2, -1)
    ip_diff = 0.5 * (net.blobs["ip"].data - net.blobs["ip_target"].data) / 2  # d(0.5*E)/d ip, E = sum/(2N), N = 2
    np.testing.assert_allclose(ref, ip_diff.T @ conv2, rtol=1e-4, atol=1e-5)


def test_deep_dream_step(net):
    """Google's deepdream loop: forward(end=L), L.diff = L.data, backward(start=L) gives d(0.5|L|^2)/d data."""
    net.forward(end="relu1")
    dst = net.blobs["conv1"]
    dst.diff[:] = dst.data
    net.backward(start="relu1")
    p = _torch_params(net)
    x = torch.tensor(net.blobs["data"].data, requires_grad=True)
    y = torch.relu(torch.nn.functional.conv2d(x, *p["conv1"]))
    (0.5 * (y * y).sum()).backward()
    np.testing.assert_allclose(net.blobs["data"].diff, x.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_bad_range_is_a_clear_error(net):
    net.forward()
    with pytest.raises(Exception, match="expected end <= start"):
        net.backward(start="conv1", end="ip")


IP_NET = """name: 'ipnet' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 1 }
                        bias_filler { type: 'constant' value: 0.5 } } }
"""


def test_forward_backward_all_batches_and_drops_padding(tmp_path):
    """pycaffe's forward_backward_all: 5 rows through a batch-2 net (3 batches, the last padded)."""
    path = tmp_path / "ip.prototxt"
    path.write_text(IP_NET)
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    outs, diffs = net.forward_backward_all(blobs=["data"], diffs=["ip"], data=x, ip=g)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    assert set(outs) == {"ip", "data"} and set(diffs) == {"data", "ip"}
    np.testing.assert_allclose(outs["ip"], x @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["data"], x)
    np.testing.assert_allclose(diffs["data"], g @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diffs["ip"], g)
    with pytest.raises(KeyError, match="neither inputs"):
        net.forward_backward_all(nope=x)
