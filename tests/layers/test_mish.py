"""darknet2caffe's Mish (ChenYingpeng/darknet2caffe @ f6d9ea33, caffe_layers/mish_layer/mish_layer.{cpp,cu})
against a loop-by-loop port of its float code, in a net written as its yolov4.prototxt writes the layer (in
place after BatchNorm + Scale), and its backward, which evaluates the gradient formula at the top's value."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.layers.base import TRAIN
from neocaffe.layers.mish import mish, mish_diff
from neocaffe.proto import caffe_pb2

f32 = np.float32


def _softplus(x: np.float32) -> np.float32:
    if x > f32(20):
        return x
    if x < f32(-20):
        return f32(np.exp(x))
    return f32(np.log(f32(np.exp(x)) + f32(1)))


def port_forward(x: np.ndarray) -> np.ndarray:
    """Forward_cpu: ``float x_val``; x_val * tanh_activate(softplus_activate(x_val, 20))."""
    out = np.empty(x.size, f32)
    for i, v in enumerate(x.ravel()):
        v = f32(v)
        sp = _softplus(v)
        tanh_a = f32(f32(2) / f32(f32(1) + f32(np.exp(f32(-2) * sp))) - f32(1))
        out[i] = f32(v * tanh_a)
    return out.reshape(x.shape)


def port_backward(top: np.ndarray, top_diff: np.ndarray) -> np.ndarray:
    """MishBackward (.cu, float): the formula at inp = top_data."""
    out = np.empty(top.size, f32)
    for i, (inp, d) in enumerate(zip(top.ravel(), top_diff.ravel())):
        inp = f32(inp)
        sp = _softplus(inp)
        grad_sp = f32(f32(1) - f32(np.exp(-sp)))
        tsp = f32(math.tanh(sp))
        grad_tsp = f32(f32(f32(1) - f32(tsp * tsp)) * grad_sp)
        out[i] = f32(f32(d) * f32(f32(inp * grad_tsp) + tsp))
    return out.reshape(top.shape)


X = np.concatenate([np.array([-30, -20.5, -20, -19.9, -3, -1e-3, 0, 1e-3, 0.5, 3, 19.9, 20, 20.5, 40], f32),
                    np.random.default_rng(0).normal(0, 4, 200).astype(f32)])


def test_forward_is_the_forks_float_code():
    got = mish(torch.from_numpy(X)).numpy()
    want = port_forward(X)
    # a last-bit difference between libms' exp near 1 becomes ~1 ulp of 1 in 2 / (1 + exp(-2 v)) - 1, i.e.
    # |x| * 2^-23 in y (relative 3e-4 where tanh is small): bounded by that, not by y's own ulp
    bound = 2 * np.abs(X) * 2.0 ** -23 + 2e-7 * np.abs(want)
    assert (np.abs(got - want) <= bound).all(), np.abs(got - want).max()
    assert (got == want).mean() > 0.8
    # and it is Mish, to the float cancellation of darknet's 2 / (1 + exp(-2 v)) - 1 for small v
    np.testing.assert_allclose(got, F.mish(torch.from_numpy(X).double()).numpy(), rtol=1e-5, atol=3e-6)


def test_double_blobs_compute_in_float_as_the_fork_reads_them():
    x = torch.from_numpy(X.astype(np.float64) + 1e-9)
    got = mish(x)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), mish(x.float()).double().numpy())


def test_backward_is_the_formula_at_the_top_not_the_gradient():
    y = mish(torch.from_numpy(X))
    dy = torch.from_numpy(np.random.default_rng(1).normal(size=X.shape).astype(f32))
    got = mish_diff(y, dy).numpy()
    np.testing.assert_allclose(got, port_backward(y.numpy(), dy.numpy()), rtol=1e-6, atol=1e-6)
    x = torch.from_numpy(X.astype(np.float64)).requires_grad_()
    F.mish(x).backward(dy.double())
    true = x.grad.numpy()
    assert np.abs(got - true)[(X > -2) & (X < 1) & (X != 0)].max() > 1e-2   # the fork's diff differs here
    big = X > 20.5
    np.testing.assert_allclose(got[big], true[big], rtol=1e-5)   # y = x there: the two agree


NET = '''name: "mish_net"
layer { name: "in" type: "Input" top: "data" top: "t" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 }
  shape { dim: 2 dim: 4 dim: 6 dim: 6 } } }
layer { bottom: "data" top: "layer1-conv" name: "layer1-conv" type: "Convolution"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 bias_term: false
                      weight_filler { type: "gaussian" std: 0.3 } } }
layer { bottom: "layer1-conv" top: "layer1-conv" name: "layer1-bn" type: "BatchNorm"
  batch_norm_param { use_global_stats: true } }
layer { bottom: "layer1-conv" top: "layer1-conv" name: "layer1-scale" type: "Scale" scale_param { bias_term: true } }
layer { bottom: "layer1-conv" top: "layer1-conv" name: "layer1-act" type: "Mish" }
layer { name: "loss" type: "EuclideanLoss" bottom: "layer1-conv" bottom: "t" top: "loss" }
'''


def test_in_place_in_a_net_forward_and_backward():
    param = text_format.Parse(NET, caffe_pb2.NetParameter())
    net = Net(param, TRAIN)
    g = np.random.default_rng(2)
    with torch.no_grad():
        net.layer("layer1-bn").blobs[0].copy_(torch.from_numpy(g.normal(size=4).astype(f32)))
        net.layer("layer1-bn").blobs[1].copy_(torch.from_numpy(g.uniform(0.5, 2, 4).astype(f32)))
        net.layer("layer1-bn").blobs[2].fill_(1)
    x = g.normal(size=(2, 3, 6, 6)).astype(f32)
    t = g.normal(size=(2, 4, 6, 6)).astype(f32)
    net.blob_data["data"].copy_(torch.from_numpy(x))
    net.blob_data["t"].copy_(torch.from_numpy(t))
    loss = net.forward()
    net.backward()
    # recompute: the pre-activation from a twin net without the Mish, then the fork's loops
    pre_param = text_format.Parse(NET.replace('type: "Mish"', 'type: "Power"'), caffe_pb2.NetParameter())
    twin = Net(pre_param, TRAIN)
    for name in ("layer1-conv", "layer1-bn", "layer1-scale"):
        with torch.no_grad():
            for a, b in zip(twin.layer(name).blobs, net.layer(name).blobs):
                a.copy_(b)
    twin.blob_data["data"].copy_(torch.from_numpy(x))
    twin.blob_data["t"].copy_(torch.from_numpy(t))
    twin.forward()
    pre = twin.blob_data["layer1-conv"].detach().numpy()
    y = port_forward(pre)
    np.testing.assert_allclose(float(loss), ((y - t) ** 2).sum() / 2 / 2, rtol=1e-5)
    # the gradient into the Scale's bias: sum over the fork's diff of the Mish
    d_top = (y - t) / 2
    d_pre = port_backward(y, d_top)
    np.testing.assert_allclose(net.layer("layer1-scale").blobs[1].grad.numpy(), d_pre.sum((0, 2, 3)),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.from_numpy(X)
    np.testing.assert_allclose(mish(x.cuda()).cpu().numpy(), mish(x).numpy(), rtol=1e-6, atol=1e-7)
    y = mish(x)
    np.testing.assert_allclose(mish_diff(y.cuda(), torch.ones_like(y).cuda()).cpu().numpy(),
                               mish_diff(y, torch.ones_like(y)).numpy(), rtol=1e-6, atol=1e-7)


def test_onnx_export_runs_on_onnxruntime():
    from tests.export.helpers import onnx_errors

    text = ('name: "m" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 } } } '
            'layer { name: "act" type: "Mish" bottom: "x" top: "x" }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), 1)
    x = np.random.default_rng(5).normal(0, 5, (2, 3, 5)).astype(f32)
    assert max(onnx_errors(net, {"x": x}).values()) < 1e-5
