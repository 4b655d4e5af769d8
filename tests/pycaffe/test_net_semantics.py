"""caffe.Net forward/backward details that follow BVLC pycaffe and Caffe's Net: the diff set on a
loss output is its top diff, blob diffs survive a forward, backward's batch-size check,
forward_all without inputs, get_solver's typed classes."""
from __future__ import annotations

import numpy as np
import pytest

import caffe

from .nets import simple_net_file

IP_NET = """name: 'ipnet' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 4 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 1 }
                        bias_filler { type: 'constant' value: 0.5 } } }
"""


@pytest.fixture
def net(tmp_path):
    net = caffe.Net(simple_net_file(tmp_path, 13), caffe.TRAIN)
    net.blobs["label"].data[...] = np.random.RandomState(0).randint(13, size=net.blobs["label"].data.shape)
    return net


@pytest.fixture
def ip_net(tmp_path):
    path = tmp_path / "ip.prototxt"
    path.write_text(IP_NET)
    return caffe.Net(str(path), caffe.TEST)


def _ip_grad(net, **kwargs):
    net.clear_param_diffs()
    net.backward(**kwargs)
    return net.params["ip"][0].diff.copy()


def test_backward_uses_the_diff_set_on_a_loss_output(net):
    """backward(loss=2.0): the loss top's diff is its top diff (Caffe seeds it with the loss weight
    and reads it back in backward), so every gradient doubles."""
    net.forward()
    assert float(net.blobs["loss"].diff) == 1.0  # the loss weight
    ref = _ip_grad(net)
    assert np.abs(ref).sum() > 0
    np.testing.assert_allclose(_ip_grad(net, loss=2.0), 2 * ref, rtol=1e-5, atol=1e-5)
    assert float(net.blobs["loss"].diff) == 2.0
    net.blobs["loss"].diff[...] = 0.5
    np.testing.assert_allclose(_ip_grad(net), 0.5 * ref, rtol=1e-5, atol=1e-5)


def test_loss_diff_set_by_the_user_survives_a_forward(net):
    """Caffe sets a loss top's diff to its loss weight once, at setup; a forward leaves it."""
    net.forward()
    net.blobs["loss"].diff[...] = 3.0
    net.forward()  # DummyData draws new data: compare gradients of this one forward
    assert float(net.blobs["loss"].diff) == 3.0
    g3 = _ip_grad(net)
    net.blobs["loss"].diff[...] = 1.0
    np.testing.assert_allclose(g3, 3 * _ip_grad(net), rtol=1e-5, atol=1e-5)


def test_ranged_backward_from_a_loss_layer_uses_its_set_diff(net):
    net.forward()
    ref = _ip_grad(net, start="loss")
    np.testing.assert_allclose(_ip_grad(net, start="loss", loss=2.0), 2 * ref, rtol=1e-5, atol=1e-5)


def test_blob_diffs_survive_a_forward(net):
    """Caffe's forward leaves blob diffs alone: a diff reads what the last backward wrote until the
    next backward overwrites it (it read zeros after every forward)."""
    net.forward()
    net.backward()
    conv, data = net.blobs["conv"].diff.copy(), net.blobs["data"].diff.copy()
    assert np.abs(conv).sum() > 0 and np.abs(data).sum() > 0
    net.forward()
    np.testing.assert_array_equal(net.blobs["conv"].diff, conv)
    np.testing.assert_array_equal(net.blobs["data"].diff, data)
    net.blobs["ip_blob"].diff[...] = 4.0  # not an output: backward overwrites it
    net.backward()
    assert not np.array_equal(net.blobs["ip_blob"].diff, np.full((5, 13), 4.0, np.float32))


def test_output_diff_set_before_a_forward_is_the_next_backwards_top_diff(ip_net):
    x = np.random.RandomState(1).randn(2, 4).astype(np.float32)
    g = np.random.RandomState(2).randn(2, 3).astype(np.float32)
    ip_net.blobs["ip"].diff[...] = g
    out = ip_net.forward(data=x)
    np.testing.assert_array_equal(ip_net.blobs["ip"].diff, g)
    diffs = ip_net.backward()
    np.testing.assert_allclose(diffs["data"], g @ ip_net.params["ip"][0].data, rtol=1e-5, atol=1e-6)
    assert out["ip"].shape == (2, 3)


def test_backward_checks_the_batch_size(ip_net):
    ip_net.forward(data=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="Diff is not batch sized"):
        ip_net.backward(ip=np.zeros((3, 3), np.float32))
    with pytest.raises(KeyError, match="nope"):
        ip_net.backward(nope=np.zeros((2, 3), np.float32))


def test_forward_all_needs_input_arrays(net, ip_net):
    """BVLC's forward_all / forward_backward_all size the result by the first keyword array: without
    one they raise (StopIteration there) rather than return empty outputs."""
    with pytest.raises(ValueError, match="forward_all"):
        net.forward_all()
    with pytest.raises(ValueError, match="forward_all"):
        ip_net.forward_all(blobs=["data"])
    with pytest.raises(ValueError, match="forward_backward_all"):
        ip_net.forward_backward_all()


def test_top_and_bottom_ids_use_one_index(net, monkeypatch):
    """_top_ids / _bottom_ids look names up in one index built with the views, not a map rebuilt
    from the net's blob names on every call."""
    core_cls = type(net._net)
    names = core_cls.blob_names
    reads = []
    monkeypatch.setattr(core_cls, "blob_names", property(lambda self: reads.append(1) or names.fget(self)))
    ids = [(net._top_ids(i), net._bottom_ids(i)) for i in range(len(net.layers))]
    assert not reads
    assert ids == [([0, 1], []), ([2], [0]), ([3], [2]), ([4], [3, 1])]


def test_batches_are_cut_as_they_run(ip_net, monkeypatch):
    """forward_all / forward_backward_all cut one batch at a time (pycaffe's zip_longest over
    generators), never every batch of a long input up front."""
    events = []
    batches = ip_net._batches

    def cut(arrays):
        for batch in batches(arrays):
            events.append("cut")
            yield batch

    forward = ip_net.forward
    monkeypatch.setattr(ip_net, "_batches", cut)
    monkeypatch.setattr(ip_net, "forward", lambda *a, **k: events.append("forward") or forward(*a, **k))
    x = np.random.RandomState(3).randn(5, 4).astype(np.float32)
    g = np.random.RandomState(4).randn(5, 3).astype(np.float32)
    out = ip_net.forward_all(data=x)
    assert events == ["cut", "forward"] * 3
    events.clear()
    outs, diffs = ip_net.forward_backward_all(data=x, ip=g)
    assert events == ["cut", "cut", "forward"] * 3  # an input batch and a diff batch, then one step
    w, b = ip_net.params["ip"][0].data, ip_net.params["ip"][1].data
    for o in (out, outs):
        assert o["ip"].shape == (5, 3) and o["ip"].dtype == np.float32
        np.testing.assert_allclose(o["ip"], x @ w.T + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(diffs["data"], g @ w, rtol=1e-5, atol=1e-5)


DUMMY_NET = """name: 'dummy'
layer { name: 'd' type: 'DummyData' top: 'x' top: 'noise'
  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: 'constant' value: 1 }
                     data_filler { type: 'gaussian' } } }
layer { name: 'p' type: 'Power' bottom: 'x' top: 'y' power_param { scale: 2 } }
"""


def test_dummydata_constant_top_keeps_what_a_script_writes_before_the_first_forward(tmp_path):
    """Caffe's DummyData fills a constant top at setup and never again (LRCN's evaluation scripts feed their
    nets that way); a top with another filler refills on every forward."""
    path = tmp_path / "dummy.prototxt"
    path.write_text(DUMMY_NET)
    net = caffe.Net(str(path), caffe.TEST)
    np.testing.assert_array_equal(net.blobs["x"].data, np.ones((2, 3), np.float32))  # filled at setup
    fed = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = fed
    out = net.forward()
    np.testing.assert_array_equal(out["y"], 2 * fed)
    np.testing.assert_array_equal(net.blobs["x"].data, fed)
    net.blobs["x"].reshape(2, 3)  # to the shape it has: nothing changes (Caffe's Blob::Reshape)
    with pytest.raises(ValueError, match=r"received \(3, 3\)"):
        net.blobs["x"].reshape(3, 3)
    noise = net.blobs["noise"].data.copy()
    net.forward()
    assert not np.array_equal(net.blobs["noise"].data, noise)
