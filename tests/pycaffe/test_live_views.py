"""Arrays taken from ``blob.data`` / ``blob.diff`` are views of the blob, as in BVLC's pycaffe: they show
the values of later forwards and backwards (until a reshape), on the CPU directly and, through the
host mirror, on CUDA once the blob is read again (Caffe's SyncedMemory); here the CUDA path runs on the
CPU with ``HostMirrors.copy_on_cpu``."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe._blob import HostMirrors
from tests.conftest import shared_path

# BVLC's examples/net_surgery/conv.prototxt
CONV = """name: "convolution"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 1 dim: 1 dim: 100 dim: 100 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
"""

CHAIN = """name: 'n' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 4 weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip' top: 'ip' }
layer { name: 'out' type: 'InnerProduct' bottom: 'ip' top: 'out'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }
"""


def _net(tmp_path, text: str, name: str = "n.prototxt") -> caffe.Net:
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), caffe.TEST)


@pytest.fixture(params=["cpu", "host-mirror"])
def mirror_mode(request, monkeypatch):
    if request.param == "host-mirror":
        monkeypatch.setattr(HostMirrors, "copy_on_cpu", True)
    return request.param


def test_net_surgery_example_runs_as_in_bvlc(tmp_path):
    """BVLC's examples/net_surgery.ipynb, 'Editing model parameters': ``conv0`` is taken before the
    surgery and printed after it; Caffe prints a post-surgery output mean of 0.98."""
    net = _net(tmp_path, CONV)
    im = caffe.io.load_image(str(shared_path("realdata", "zoo_public_2026", "cat.jpg")), color=False).squeeze()
    im_input = im[np.newaxis, np.newaxis, :, :]
    net.blobs["data"].reshape(*im_input.shape)
    net.blobs["data"].data[...] = im_input
    net.forward()
    conv0 = net.blobs["conv"].data[0, 0]
    pre = float(conv0.mean())
    # filter 0 on the image (float64), whatever the gaussian filler drew: std 0.01 keeps it near 0
    w = net.params["conv"][0].data[0, 0].astype(np.float64)
    windows = np.lib.stride_tricks.sliding_window_view(im_input[0, 0].astype(np.float64), (5, 5))
    want = float((windows * w).sum(axis=(-1, -2)).mean())
    assert pre == pytest.approx(want, rel=1e-4, abs=1e-6) and abs(pre) < 0.2
    net.params["conv"][1].data[0] = 1.
    net.forward()
    post = float(conv0.mean())  # the array taken before the surgery shows the new output (Caffe: 0.98)
    assert abs(post - (pre + 1.0)) < 1e-5  # the bias moved every output of filter 0 by 1


def test_data_and_diff_arrays_follow_forward_and_backward(tmp_path, mirror_mode):
    net = _net(tmp_path, CHAIN)
    rng = np.random.default_rng(0)
    net.forward(data=rng.standard_normal((2, 3)))
    ip, out = net.blobs["ip"].data, net.blobs["out"].data
    net.backward(out=np.ones((2, 2), np.float32))
    d_ip, d_data = net.blobs["ip"].diff, net.blobs["data"].diff
    x2 = rng.standard_normal((2, 3)).astype(np.float32)
    net.forward(data=x2)
    g2 = rng.standard_normal((2, 2)).astype(np.float32)
    net.backward(out=g2)
    if mirror_mode == "host-mirror":  # Caffe on a GPU: the host copy is refreshed when the blob is read
        for name in ("ip", "out"):
            net.blobs[name].data
        for name in ("ip", "data"):
            net.blobs[name].diff
    w1, b1 = net.params["ip"][0].data, net.params["ip"][1].data
    w2 = net.params["out"][0].data
    pre = x2 @ w1.T + b1
    np.testing.assert_allclose(ip, np.maximum(pre, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, np.maximum(pre, 0) @ w2.T + net.params["out"][1].data, rtol=1e-5, atol=1e-5)
    dip = (g2 @ w2) * (pre > 0)
    np.testing.assert_allclose(d_ip, dip, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_data, dip @ w1, rtol=1e-5, atol=1e-5)


def test_a_written_view_feeds_the_next_forward_and_a_reshape_lets_go(tmp_path, mirror_mode):
    net = _net(tmp_path, CHAIN)
    data = net.blobs["data"].data
    data[...] = 1.0
    out = net.forward()["out"]
    ones = np.ones((2, 3), np.float32)
    w1, b1 = net.params["ip"][0].data, net.params["ip"][1].data
    expect = np.maximum(ones @ w1.T + b1, 0) @ net.params["out"][0].data.T + net.params["out"][1].data
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    old_ip = net.blobs["ip"].data
    before = old_ip.copy()
    net.blobs["data"].reshape(5, 3)
    net.reshape()
    net.forward(data=np.full((5, 3), 2.0, np.float32))
    assert net.blobs["ip"].data.shape == (5, 4)
    np.testing.assert_array_equal(old_ip, before)  # arrays of the old shape keep their values
    np.testing.assert_allclose(net.blobs["ip"].data, np.maximum(2 * ones[:1] @ w1.T + b1, 0).repeat(5, 0),
                               rtol=1e-5, atol=1e-5)


def test_solver_step_leaves_blob_diffs_and_views_follow_it(tmp_path):
    """After ``solver.step`` the train net's blob diffs are the last iteration's, as in Caffe, and an
    array taken before the step shows them."""
    from .nets import simple_net_file, solver_file

    s = caffe.SGDSolver(solver_file(tmp_path, simple_net_file(tmp_path)))
    view = s.net.blobs["ip_blob"].diff
    s.step(1)
    assert view.any()
    prob = np.exp(s.net.blobs["ip_blob"].data - s.net.blobs["ip_blob"].data.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    labels = s.net.blobs["label"].data.reshape(-1).astype(int)
    prob[np.arange(len(labels)), labels] -= 1
    # the blob data is the last forward's; the weights moved after it, the diff did not
    np.testing.assert_allclose(view, prob / len(labels), rtol=1e-4, atol=1e-6)


def test_blob_shape_and_count_allocate_nothing(tmp_path):
    """``blob.shape``/``count`` read the planned shape: asking how big a reshaped net's blobs would be
    (16 x 1 x 2000 x 2000 here, 0.7 GiB of conv output) allocates none of them."""
    import resource

    net = _net(tmp_path, CONV)
    net.blobs["data"].reshape(16, 1, 2000, 2000)
    net.reshape()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert net.blobs["conv"].shape == (16, 3, 1996, 1996)
    assert sum(b.count for b in net.blobs.values()) == 16 * (2000 * 2000 + 3 * 1996 * 1996)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: under 200 MiB
