"""pycaffe in GPU mode: NumPy views are host mirrors that must reach the device before each
forward/step and show the device's values after (skipped without CUDA)."""
from __future__ import annotations

import numpy as np
import pytest

import caffe

from .nets import simple_net_file, solver_file

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_mode():
    caffe.set_mode_gpu()
    caffe.set_device(0)
    yield
    caffe.set_mode_cpu()


def test_net_on_gpu_matches_cpu(tmp_path, gpu_mode):
    path = simple_net_file(tmp_path)
    gnet = caffe.Net(path, caffe.TRAIN)
    caffe.set_mode_cpu()
    cnet = caffe.Net(path, caffe.TRAIN)
    caffe.set_mode_gpu()
    for name in cnet.params:
        for c, g in zip(cnet.params[name], gnet.params[name]):
            g.data[...] = c.data
    x = np.random.RandomState(0).randn(*cnet.blobs["conv"].data.shape).astype(np.float32)
    for net in (cnet, gnet):
        net.forward()
        net.blobs["conv"].data[...] = x
    c = cnet.forward(start="ip")["loss"]
    g = gnet.forward(start="ip")["loss"]
    assert float(g) == pytest.approx(float(c), rel=1e-4)


def test_solver_on_gpu_sees_numpy_edits(tmp_path, gpu_mode):
    s = caffe.SGDSolver(solver_file(tmp_path, simple_net_file(tmp_path), weight_decay=0, momentum=0))
    s.net.blobs["label"].data[...] = 1
    s.net.params["ip"][0].data[...] = 0
    s.net.params["ip"][1].data[...] = 0
    s.step(1)
    w = s.net.params["ip"][0].data
    assert np.abs(w).max() > 0  # the zeros reached the device and one update came back
    assert np.abs(w).max() < 10.0
    np.testing.assert_array_equal(s.test_nets[0].params["ip"][0].data, w)
