"""``Python`` layers: user modules imported from the current directory, run through the Net."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net, NetError
from neocaffe.layers.python_layer import PyBlob
from neocaffe.proto import caffe_pb2

USER_MODULE = '''
import numpy as np

class EuclideanLossLayer:
    """pycaffe's classic example, subclassing nothing."""
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")
    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)
    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.
    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num * top[0].diff[0]

class CounterData:
    """A data layer that loads in reshape (as FCN's layers do) and advances in forward."""
    def __init__(self, param):
        self.param_name = param.name
    def setup(self, bottom, top):
        self.n = int(self.param_str)
        self.idx = 0
        self.seen_phase = self.phase
    def reshape(self, bottom, top):
        self.data = np.full((1, self.idx + 1), self.idx, dtype=np.float32)
        top[0].reshape(*self.data.shape)
    def forward(self, bottom, top):
        top[0].data[...] = self.data
        self.idx = (self.idx + 1) % self.n

class Scale:
    def setup(self, bottom, top):
        self.blobs.add_blob(2)
        self.blobs[0].data[...] = [2.0, -1.0]
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data[None, :]
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[None, :]
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(0)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = "nc_user_pylayers"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    sys.modules.pop(name, None)
    yield name
    sys.modules.pop(name, None)


def _net(text: str, phase: int = 1) -> Net:
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def test_python_loss_layer_forward_backward(user_module):
    net = _net(f'''
      force_backward: true
      layer {{ name: "in" type: "Input" top: "a" top: "b" input_param {{ shape {{ dim: 4 dim: 3 }} }} }}
      layer {{ name: "loss" type: "Python" bottom: "a" bottom: "b" top: "loss" loss_weight: 2
               python_param {{ module: "{user_module}" layer: "EuclideanLossLayer" }} }}''')
    r = np.random.default_rng(0)
    a, b = r.standard_normal((4, 3)).astype(np.float32), r.standard_normal((4, 3)).astype(np.float32)
    net.set_blob("a", torch.from_numpy(a))
    net.set_blob("b", torch.from_numpy(b))
    loss = net.forward()
    ref = np.sum((a - b) ** 2) / 4 / 2
    np.testing.assert_allclose(net.blob_data["loss"].detach().numpy(), [ref], rtol=1e-6)
    np.testing.assert_allclose(float(loss.detach()), 2 * ref, rtol=1e-6)
    net.backward()
    np.testing.assert_allclose(net.blob_diff("a").numpy(), 2 * (a - b) / 4, rtol=1e-6)
    np.testing.assert_allclose(net.blob_diff("b").numpy(), -2 * (a - b) / 4, rtol=1e-6)


def test_python_data_layer_reshapes_every_forward(user_module):
    net = _net(f'''
      layer {{ name: "data" type: "Python" top: "d"
               python_param {{ module: "{user_module}" layer: "CounterData" param_str: "3" }} }}''', phase=0)
    py = net.layer("data").py
    assert py.param_name == "data" and py.param_str == "3" and py.seen_phase == 0
    assert net.blob_shapes["d"] == (1, 1)
    outs = []
    for _ in range(4):
        net.forward()
        outs.append(net.blob_data["d"].numpy().copy())
    assert [o.shape for o in outs] == [(1, 1), (1, 2), (1, 3), (1, 1)]
    assert [float(o[0, 0]) for o in outs] == [0, 1, 2, 0]


def test_python_layer_learnable_blob(user_module):
    net = _net(f'''
      force_backward: true
      layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 3 dim: 2 }} }} }}
      layer {{ name: "sc" type: "Python" bottom: "x" top: "y" param {{ lr_mult: 1 }}
               python_param {{ module: "{user_module}" layer: "Scale" }} }}''')
    layer = net.layer("sc")
    assert [tuple(b.shape) for b in layer.blobs] == [(2,)]
    np.testing.assert_array_equal(layer.blobs[0].detach().numpy(), [2.0, -1.0])
    assert any(info.param is layer.blobs[0] for info in net.learnable)
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    net.set_blob("x", torch.from_numpy(x))
    net.forward()
    np.testing.assert_allclose(net.blob_data["y"].detach().numpy(), x * [2.0, -1.0])
    td = np.ones((3, 2), dtype=np.float32)
    net.clear_param_diffs()
    net.backward({"y": torch.from_numpy(td)})
    np.testing.assert_allclose(net.blob_diff("x").numpy(), td * [2.0, -1.0])
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), x.sum(0))
    net.forward()
    net.backward({"y": torch.from_numpy(td)})  # Caffe accumulates param diffs across backward passes
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), 2 * x.sum(0))
    assert layer.py.blobs[0].diff.tolist() == (2 * x.sum(0)).tolist()  # outside a call: the param's diff


def test_python_layer_import_errors_name_the_layer(user_module):
    with pytest.raises(NetError, match="'bad'.*no class 'Nope'"):
        _net(f'layer {{ name: "bad" type: "Python" top: "d" python_param {{ module: "{user_module}" layer: "Nope" }} }}')
    with pytest.raises(NetError, match="'bad'.*cannot import"):
        _net('layer { name: "bad" type: "Python" top: "d" python_param { module: "no_such_mod_xyz" layer: "L" } }')


def test_pyblob_legacy_accessors_and_reshape():
    b = PyBlob(np.zeros((2, 3, 4), dtype=np.float32))
    assert (b.num, b.channels, b.height, b.width, b.count, b.shape) == (2, 3, 4, 1, 24, (2, 3, 4))
    b.data[...] = 1
    b.reshape(4, 6)  # same count: data kept
    assert b.shape == (4, 6) and b.data.sum() == 24 and b.diff.shape == (4, 6)
    b.reshape((5,))
    assert b.shape == (5,) and b.data.sum() == 0
