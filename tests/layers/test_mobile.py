"""The mobile nets' layers against NumPy ports of their forks' C++ (ReLU6, ShuffleChannel, Axpy,
DepthwiseConvolution, ConvolutionDepthwise); float64 gradient checks are in test_contract.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def _layer(text: str, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes])


def _t(a, grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


# -- ReLU6 (eric612/MobileNet-YOLO relu6_layer.cpp) ------------------------------------------------
def relu6_ref(x, slope):
    slope = float(np.float32(slope))  # a float field, used as the layer's Dtype
    y = np.minimum(np.maximum(x, 0) + slope * np.minimum(x, 0), 6.0)
    dx_of = lambda dy, b: dy * ((b > 0) + slope * (b <= 0)) * (b < 6)  # noqa: E731
    return y, dx_of


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_relu6_forward_and_backward_match_the_fork_at_the_kinks(slope):
    x = np.array([-3.0, -0.0, 0.0, 1e-7, 2.5, 6.0 - 1e-6, 6.0, 6.5, 100.0]).reshape(1, 1, 3, 3)
    layer = _layer(f'name: "r" type: "ReLU6" bottom: "x" top: "y" relu6_param {{ negative_slope: {slope} }}', [x.shape])
    xt = _t(x, True)
    y = layer(xt)
    ref, dx_of = relu6_ref(x, slope)
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    dy = np.arange(1, 10, dtype=float).reshape(x.shape)
    (g,) = torch.autograd.grad(y, xt, _t(dy))
    np.testing.assert_array_equal(g.numpy(), dx_of(dy, x))  # 0 at exactly 6, slope at 0


def test_relu6_in_place_in_a_net_reads_its_top_as_bottom_data():
    from neocaffe.graph.net import Net

    text = ('force_backward: true layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 '
            'dim: 2 dim: 3 } } } layer { name: "r" type: "ReLU6" bottom: "x" top: "x" relu6_param { '
            'negative_slope: 0.5 } } layer { name: "p" type: "Power" bottom: "x" top: "z" power_param { power: 2 } }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    x = np.array([[[[-2.0, 0.5, 3.0], [5.9, 6.0, 8.0]]]], np.float32)
    net.set_blob("x", torch.from_numpy(x.copy()))
    net.forward()
    net.backward({"z": torch.ones(1, 1, 2, 3)})
    y, dx_of = relu6_ref(x.astype(float), 0.5)
    np.testing.assert_allclose(net.blob_data["z"].detach().numpy(), y ** 2, rtol=1e-6)
    np.testing.assert_allclose(net.blob_diff("x").detach().numpy(), dx_of(2 * y, y), rtol=1e-6)


# -- ShuffleChannel (farmingyard/ShuffleNet shuffle_channel_layer.cpp) ----------------------------
def _resize(inp, group_row, group_column, length):
    """The fork's Resize_cpu on one image's flat data: block (i, j) -> (j, i)."""
    out = np.empty_like(inp)
    for i in range(group_row):
        for j in range(group_column):
            out[(j * group_row + i) * length:(j * group_row + i + 1) * length] = \
                inp[(i * group_column + j) * length:(i * group_column + j + 1) * length]
    return out


@pytest.mark.parametrize("shape,group", [((2, 12, 3, 2), 3), ((1, 8, 5), 4), ((3, 6, 1, 1), 1), ((1, 6, 2, 2), 6)])
def test_shuffle_channel_matches_the_forks_resize_forward_and_backward(shape, group):
    r = np.random.default_rng(5)
    x, dy = r.standard_normal(shape), r.standard_normal(shape)
    layer = _layer(f'name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param {{ group: {group} }}',
                   [shape])
    xt = _t(x, True)
    y = layer(xt)
    c, sp = shape[1], int(np.prod(shape[2:]))
    ref = np.stack([_resize(x[n].ravel(), group, c // group, sp) for n in range(shape[0])]).reshape(shape)
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    (g,) = torch.autograd.grad(y, xt, _t(dy))
    ref_dx = np.stack([_resize(dy[n].ravel(), c // group, group, sp) for n in range(shape[0])]).reshape(shape)
    np.testing.assert_array_equal(g.numpy(), ref_dx)


def test_shuffle_channel_rejects_a_group_that_does_not_divide_the_channels():
    layer = _layer('name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 4 }',
                   [(1, 6, 2, 2)])
    with pytest.raises(LayerSetupError, match="group 4 must divide"):
        layer.reshape([(1, 6, 2, 2)])
    with pytest.raises(LayerSetupError, match="greater than 0"):
        _layer('name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 0 }', [(1, 6)])


# -- Axpy (hujie-frank/SENet axpy_layer.cpp) -------------------------------------------------------
def test_axpy_matches_the_forks_forward_and_backward():
    r = np.random.default_rng(6)
    a, x, y = r.standard_normal((2, 3, 1, 1)), r.standard_normal((2, 3, 4, 5)), r.standard_normal((2, 3, 4, 5))
    dtop = r.standard_normal(x.shape)
    layer = _layer('name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z"', [a.shape, x.shape, y.shape])
    ins = [_t(v, True) for v in (a, x, y)]
    z = layer(*ins)
    # forward: copy y, then caffe_axpy(spatial, a[n, c], x[n, c], top[n, c]) per (n, c)
    ref = y.copy().reshape(6, 20)
    ref += a.reshape(6, 1) * x.reshape(6, 20)
    np.testing.assert_allclose(z.detach().numpy(), ref.reshape(x.shape), rtol=1e-12, atol=1e-14)
    ga, gx, gy = torch.autograd.grad(z, ins, _t(dtop))
    # backward: scale_diff = gemv(top_diff * x, ones); x_diff = a * top_diff; y_diff = top_diff
    np.testing.assert_allclose(ga.numpy(), (dtop * x).reshape(6, 20).sum(1).reshape(a.shape), rtol=1e-12)
    np.testing.assert_allclose(gx.numpy(), a * dtop, rtol=1e-14)
    np.testing.assert_array_equal(gy.numpy(), dtop)


def test_axpy_checks_its_bottoms_shapes():
    text = 'name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z"'
    layer = _layer(text, [(2, 3, 1, 1), (2, 3, 4, 4), (2, 3, 4, 4)])
    with pytest.raises(LayerSetupError, match="the scale"):
        layer.reshape([(2, 3, 2, 1), (2, 3, 4, 4), (2, 3, 4, 4)])
    with pytest.raises(LayerSetupError, match="one shape"):
        layer.reshape([(2, 3, 1, 1), (2, 3, 4, 4), (2, 3, 4, 5)])


# -- depthwise convolution (conv_dw_layer.cpp, depthwise_conv_layer.cpp) ---------------------------
def conv_dw_ref(x, w, b, stride, pad, dil):
    """conv_dw_layer.cpp's Forward_cpu, vectorized over images and channels: for each output pixel and
    kernel tap, the input pixel ``-pad + out * stride + k * dilation`` if inside the image."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(kh):
        for j in range(kw):
            hin = -pad[0] + np.arange(oh) * stride[0] + i * dil[0]
            win = -pad[1] + np.arange(ow) * stride[1] + j * dil[1]
            ok = ((hin >= 0) & (hin < h))[:, None] & ((win >= 0) & (win < wd))[None, :]
            vals = x[:, :, np.clip(hin, 0, h - 1)][:, :, :, np.clip(win, 0, wd - 1)]
            out += np.where(ok, vals, 0) * w[:, 0, i, j][None, :, None, None]
    return out + (0 if b is None else b[None, :, None, None])


@pytest.mark.parametrize("type_name,extra", [("ConvolutionDepthwise", ""), ("ConvolutionDepthwise", "num_output: 99"),
                                             ("DepthwiseConvolution", "num_output: 5 group: 5")])
@pytest.mark.parametrize("geom", [dict(k=(3, 3), s=(1, 1), p=(1, 1), d=(1, 1)), dict(k=(3, 3), s=(2, 2), p=(1, 1), d=(1, 1)),
                                  dict(k=(3, 2), s=(2, 1), p=(0, 1), d=(2, 1))])
def test_depthwise_convolutions_match_the_forks_direct_loops(type_name, extra, geom):
    r = np.random.default_rng(7)
    x = r.standard_normal((2, 5, 9, 8))
    k, s, p, d = geom["k"], geom["s"], geom["p"], geom["d"]
    text = (f'name: "dw" type: "{type_name}" bottom: "x" top: "y" convolution_param {{ {extra} kernel_h: {k[0]} '
            f'kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} dilation: {d[0]} '
            f'dilation: {d[1]} weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 1 }} }}')
    layer = _layer(text, [x.shape]).double()
    w, b = (blob.detach().numpy() for blob in layer.blobs)
    assert w.shape == (5, 1) + k and b.shape == (5,)
    xt = _t(x, True)
    y = layer(xt)
    ref = conv_dw_ref(x, w, b, s, p, d)
    assert tuple(layer.reshape([x.shape])[0]) == ref.shape
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    # backward: the fork's weight diff = sum over images and outputs of bottom * top_diff at each tap
    dy = r.standard_normal(ref.shape)
    gx, gw, gb = torch.autograd.grad(y, [xt, layer.blobs[0], layer.blobs[1]], _t(dy))
    eps = np.zeros_like(w)
    for c in range(5):
        for i in range(k[0]):
            for j in range(k[1]):
                eps[:] = 0
                eps[c, 0, i, j] = 1
                np.testing.assert_allclose(gw[c, 0, i, j].item(), (conv_dw_ref(x, eps, None, s, p, d) * dy).sum(),
                                           rtol=1e-10)
    np.testing.assert_allclose(gb.numpy(), dy.sum((0, 2, 3)), rtol=1e-12)
    # the bottom diff is the transpose of the (linear) forward: <dx, x'> = <dy, conv(x')>
    x2 = r.standard_normal(x.shape)
    np.testing.assert_allclose((gx.numpy() * x2).sum(), (conv_dw_ref(x2, w, None, s, p, d) * dy).sum(), rtol=1e-10)


def test_depthwise_convolution_needs_group_equal_to_the_channels():
    with pytest.raises(LayerSetupError, match="group = num_output"):
        _layer('name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
               'group: 2 kernel_size: 3 }', [(1, 4, 5, 5)])
    with pytest.raises(LayerSetupError, match="group = num_output"):
        _layer('name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "y" convolution_param { num_output: 8 '
               'group: 4 kernel_size: 3 }', [(1, 4, 5, 5)])
