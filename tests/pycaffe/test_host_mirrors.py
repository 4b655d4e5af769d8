"""Blob views as host mirrors (what ``.data`` / ``.diff`` are on CUDA), exercised on the CPU:
``HostMirrors.copy_on_cpu`` makes every view a host copy that is written back before the next
forward, backward or solver step, exactly as on a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe._blob import HostMirrors

from .nets import simple_net_file, solver_file


INPUT_NET = """name: 'mirrornet' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 3 dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 }
                        bias_filler { type: 'constant' value: 0.5 } } }
"""


@pytest.fixture(autouse=True)
def host_copies(monkeypatch):
    monkeypatch.setattr(HostMirrors, "copy_on_cpu", True)


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "mirror.prototxt"
    path.write_text(INPUT_NET)
    return caffe.Net(str(path), caffe.TEST)


def _ip(net, x):
    return x @ net.params["ip"][0].data.T + net.params["ip"][1].data


def test_views_are_host_copies_written_back_on_forward(net):
    view = net.blobs["data"].data
    assert not np.shares_memory(view, net._net.blob_data["data"].numpy())  # a mirror, not the tensor
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    view[...] = x
    np.testing.assert_allclose(net.forward()["ip"], _ip(net, x), rtol=1e-5, atol=1e-6)


def test_row_writes_through_separate_accesses_all_arrive(net):
    """Each ``.data`` access is the same host copy: the second row write does not bring back a stale
    first row (the mirrors were keyed by the tensor object, new on every access)."""
    net.blobs["data"].data[...] = 0
    net.blobs["data"].data[0] = 1
    net.blobs["data"].data[1] = 2
    x = np.zeros((3, 4), np.float32)
    x[0], x[1] = 1, 2
    np.testing.assert_allclose(net.forward()["ip"], _ip(net, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.blobs["data"].data, x)
    assert np.shares_memory(net.blobs["data"].data, net.blobs["data"].data)


def test_param_write_survives_a_later_read(net):
    """Write a weight, read it back, forward: the forward uses the written weight."""
    net.params["ip"][0].data[...] = 5
    assert (net.params["ip"][0].data == 5).all()
    x = np.ones((3, 4), np.float32)
    out = net.forward(data=x)["ip"]
    np.testing.assert_allclose(out, np.full((3, 2), 20.5, np.float32))
    assert (net.params["ip"][0].data == 5).all()


def test_diff_writes_through_separate_accesses_all_arrive(net):
    net.forward(data=np.ones((3, 4), np.float32))
    net.blobs["ip"].diff[...] = 0
    net.blobs["ip"].diff[0] = 1
    net.blobs["ip"].diff[2] = 3
    g = np.zeros((3, 2), np.float32)
    g[0], g[2] = 1, 3
    out = net.backward()
    np.testing.assert_allclose(out["data"], g @ net.params["ip"][0].data, rtol=1e-5, atol=1e-6)


def test_views_of_one_storage_share_one_host_copy(net):
    """Two tensors over one storage (a blob and a reshaped view of it, as Flatten/Reshape tops are)
    get one host copy, so a write through either is what reaches the device."""
    t = net.blobs["data"]._get_data()
    flat = t.view(-1)
    a = net._mirrors.view(t)
    b = net._mirrors.view(flat)
    b[...] = 7
    assert (a == 7).all()
    a[0, 0] = 1
    net._mirrors.push()
    assert float(t[0, 0]) == 1 and (t.view(-1)[1:] == 7).all()


def test_reading_blobs_between_forward_and_backward(net):
    """Writing a read blob's mirror back before backward must not invalidate the forward's graph
    (autograd's in-place check): Caffe's backward reads whatever the blobs hold."""
    x = np.ones((3, 4), np.float32)
    net.forward(data=x)
    assert (net.blobs["data"].data == 1).all()
    g = np.ones((3, 2), np.float32)
    out = net.backward(ip=g)
    np.testing.assert_allclose(out["data"], g @ net.params["ip"][0].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["ip"][0].diff, g.T @ x, rtol=1e-5, atol=1e-6)


def test_solver_nets_share_one_set_of_mirrors(tmp_path):
    """The train and test nets share their weights: a write through the train net's view is what
    the test net reads and computes with (each net had its own mirrors, so the test net missed it)."""
    s = caffe.SGDSolver(solver_file(tmp_path, simple_net_file(tmp_path)))
    train, test = s.net, s.test_nets[0]
    test.params["ip"][0].data  # a mirror on the test net's side first
    train.params["ip"][0].data[...] = 0
    train.params["ip"][1].data[...] = 0
    assert (test.params["ip"][0].data == 0).all()
    assert float(test.forward()["loss"]) == pytest.approx(np.log(13), rel=1e-6)  # uniform softmax
    assert (train.params["ip"][0].data == 0).all()


def test_share_with_keeps_pending_writes_and_shares_mirrors(net, tmp_path):
    """share_with rebuilds the views: writes not yet on the device must be pushed first, and the
    two nets, now sharing weights, must share their host copies too."""
    path = tmp_path / "other.prototxt"
    path.write_text(INPUT_NET)
    other = caffe.Net(str(path), caffe.TEST)
    x = np.full((3, 4), 2, np.float32)
    net.blobs["data"].data[...] = x
    net.share_with(other)
    np.testing.assert_array_equal(net.blobs["data"].data, x)
    other.params["ip"][0].data[...] = 0.25
    assert (net.params["ip"][0].data == 0.25).all()
    np.testing.assert_allclose(net.forward()["ip"], np.full((3, 2), 2.5, np.float32))


def test_forward_inputs_go_straight_to_the_device(net, monkeypatch):
    """forward(data=x) copies x to the blob's tensor directly: no host copy of the old input is
    made only to be overwritten, and a mirror read earlier does not overwrite x."""
    viewed = []
    view = HostMirrors.view

    def spy(self, t):
        viewed.append(t.untyped_storage().data_ptr())
        return view(self, t)

    monkeypatch.setattr(HostMirrors, "view", spy)
    stale = net.blobs["data"].data  # a pending mirror of the old input
    stale[...] = 9
    viewed.clear()
    x = np.arange(12, dtype=np.float64).reshape(4, 3).T[::-1]  # float64, not contiguous, negative strides
    out = net.forward(data=x)["ip"]
    data_ptr = net._net.blob_data["data"].untyped_storage().data_ptr()
    assert data_ptr not in viewed
    np.testing.assert_allclose(out, _ip(net, x.astype(np.float32)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(net.blobs["data"].data, x)
    with pytest.raises(ValueError, match="batch"):
        net.forward(data=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError):
        net.forward(data=np.zeros((3, 5), np.float32))


@pytest.mark.parametrize("load", ["copy_from", "load_hdf5"])
def test_loaded_weights_replace_what_the_host_copies_held(net, tmp_path, load):
    """``copy_from`` writes on the device: arrays taken before must show the loaded weights, and the next
    forward must not write their old values back over them."""
    new = np.full_like(net.params["ip"][0].data, 0.25)
    net.params["ip"][0].data[...] = new
    path = tmp_path / ("w.caffemodel.h5" if load == "load_hdf5" else "w.caffemodel")
    (net.save_hdf5 if load == "load_hdf5" else net.save)(str(path))
    fresh = caffe.Net(str(tmp_path / "mirror.prototxt"), caffe.TEST)
    old = fresh.params["ip"][0].data.copy()  # the user has looked at the weights: a host copy exists
    assert not np.array_equal(old, new)
    net = fresh
    getattr(net, load)(str(path))
    np.testing.assert_array_equal(net.params["ip"][0].data, new)
    x = np.ones((3, 4), np.float32)
    net.blobs["data"].data[...] = x
    np.testing.assert_allclose(net.forward()["ip"], x @ new.T + net.params["ip"][1].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net._net.layer("ip").blobs[0].detach().numpy(), new)
