"""Python layers through caffe.Layer: pycaffe's test_python_layer and
test_python_layer_with_param_str, plus a Python data layer feeding a solver."""
from __future__ import annotations

import numpy as np
import pytest

import caffe

MODULE = "tests.pycaffe.pylayers"


def _write(tmp_path, text, name="net.prototxt"):
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def python_net(tmp_path):
    return _write(tmp_path, f"""name: 'pythonnet' force_backward: true
input: 'data' input_shape {{ dim: 10 dim: 9 dim: 8 }}
layer {{ type: 'Python' name: 'one' bottom: 'data' top: 'one'
  python_param {{ module: '{MODULE}' layer: 'SimpleLayer' }} }}
layer {{ type: 'Python' name: 'two' bottom: 'one' top: 'two'
  python_param {{ module: '{MODULE}' layer: 'SimpleLayer' }} }}
layer {{ type: 'Python' name: 'three' bottom: 'two' top: 'three'
  python_param {{ module: '{MODULE}' layer: 'SimpleLayer' }} }}""")


@pytest.fixture
def net(tmp_path):
    return caffe.Net(python_net(tmp_path), caffe.TRAIN)


def test_caffe_layer_is_the_python_layer_base():
    from neocaffe.layers.python_layer import PythonLayerBase

    assert caffe.Layer is PythonLayerBase


def test_forward(net):
    x = 8
    net.blobs["data"].data[...] = x
    net.forward()
    for y in net.blobs["three"].data.flat:
        assert y == 10 ** 3 * x


def test_backward(net):
    x = 7
    net.blobs["three"].diff[...] = x
    net.backward()
    for y in net.blobs["data"].diff.flat:
        assert y == 10 ** 3 * x


def test_reshape(net):
    s = 4
    net.blobs["data"].reshape(s, s, s, s)
    net.forward()
    for blob in net.blobs.values():
        for d in blob.data.shape:
            assert d == s


def test_exception(tmp_path):
    path = _write(tmp_path, f"""name: 'pythonnet' force_backward: true
input: 'data' input_shape {{ dim: 10 dim: 9 dim: 8 }}
layer {{ type: 'Python' name: 'layer' bottom: 'data' top: 'top'
  python_param {{ module: '{MODULE}' layer: 'ExceptionLayer' }} }}""")
    with pytest.raises(RuntimeError):
        caffe.Net(path, caffe.TEST)


def test_parameter(tmp_path):
    path = _write(tmp_path, f"""name: 'pythonnet' force_backward: true
input: 'data' input_shape {{ dim: 10 dim: 9 dim: 8 }}
layer {{ type: 'Python' name: 'layer' bottom: 'data' top: 'top'
  python_param {{ module: '{MODULE}' layer: 'ParameterLayer' }} }}""")
    net = caffe.Net(path, caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0
    assert layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1

    # saving and loading
    weights = str(tmp_path / "p.caffemodel")
    net.save(weights)
    layer.blobs[0].data[0] = -1
    assert layer.blobs[0].data[0] == -1
    net.copy_from(weights)
    assert layer.blobs[0].data[0] == 1

    # weight sharing
    net2 = caffe.Net(path, caffe.TRAIN)
    net2.share_with(net)
    layer = net2.layers[list(net2._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 1


def test_phase(tmp_path):
    path = _write(tmp_path, f"""name: 'pythonnet' force_backward: true
layer {{ type: 'Python' name: 'layer' top: 'phase'
  python_param {{ module: '{MODULE}' layer: 'PhaseLayer' }} }}""")
    for phase in caffe.TRAIN, caffe.TEST:
        net = caffe.Net(path, phase)
        assert net.forward()["phase"] == phase


@pytest.fixture
def param_net(tmp_path):
    return caffe.Net(_write(tmp_path, f"""name: 'pythonnet' force_backward: true
input: 'data' input_shape {{ dim: 10 dim: 9 dim: 8 }}
layer {{ type: 'Python' name: 'mul10' bottom: 'data' top: 'mul10'
  python_param {{ module: '{MODULE}' layer: 'SimpleParamLayer' param_str: '10' }} }}
layer {{ type: 'Python' name: 'mul2' bottom: 'mul10' top: 'mul2'
  python_param {{ module: '{MODULE}' layer: 'SimpleParamLayer' param_str: '2' }} }}"""), caffe.TRAIN)


def test_param_str_forward(param_net):
    x = 8
    param_net.blobs["data"].data[...] = x
    param_net.forward()
    for y in param_net.blobs["mul2"].data.flat:
        assert y == 2 * 10 * x


def test_param_str_backward(param_net):
    x = 7
    param_net.blobs["mul2"].diff[...] = x
    param_net.backward()
    for y in param_net.blobs["data"].diff.flat:
        assert y == 2 * 10 * x


def test_netspec_python_layer_builds(tmp_path):
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[2, 3]))
    n.out = caffe.layers.Python(n.data, module=MODULE, layer="SimpleParamLayer", param_str="3")
    net = caffe.Net(_write(tmp_path, str(n.to_proto())), caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(net.forward(data=x)["out"], 3 * x)


def test_python_data_layer_feeds_a_solver(tmp_path):
    net = _write(tmp_path, f"""name: 'pydata'
layer {{ type: 'Python' name: 'data' top: 'data' top: 'label'
  python_param {{ module: '{MODULE}' layer: 'QuadrantDataLayer' param_str: '16' }} }}
layer {{ type: 'InnerProduct' name: 'ip' bottom: 'data' top: 'ip'
  inner_product_param {{ num_output: 4 weight_filler {{ type: 'xavier' }} }} }}
layer {{ type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip' bottom: 'label' top: 'loss' }}""")
    solver = _write(tmp_path, f"net: '{net}'\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: 'fixed'\n"
                              f"max_iter: 100\nsnapshot_prefix: '{tmp_path / 's'}'\n", "solver.prototxt")
    s = caffe.SGDSolver(solver)
    s.step(1)
    first = float(s.net.blobs["loss"].data)
    s.step(40)
    assert float(s.net.blobs["loss"].data) < first / 3
