"""Both ``Upsample`` layers against NumPy ports of their forks' loops: SegNet's max-unpooling
(alexgkendall/caffe-segnet upsample_layer.cpp) and the YOLO ports' nearest neighbour
(eric612/MobileNet-YOLO upsample_layer.cpp). Float64 gradient checks are in test_contract.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.layers.upsample import pooling_mask
from neocaffe.proto import caffe_pb2


def _layer(text: str, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes])


def segnet_forward_ref(x, mask, out_hw):
    n, c, h, w = x.shape
    top = np.zeros((n, c) + out_hw, x.dtype)
    for a in range(n):
        for b in range(c):
            flat = top[a, b].reshape(-1)
            for i in range(h * w):  # later writes win, as the fork's loop
                flat[int(mask[a, b].reshape(-1)[i])] = x[a, b].reshape(-1)[i]
    return top


def segnet_backward_ref(dy, mask):
    n, c, h, w = mask.shape
    dx = np.zeros(mask.shape, dy.dtype)
    for a in range(n):
        for b in range(c):
            for i in range(h * w):
                dx[a, b].reshape(-1)[i] = dy[a, b].reshape(-1)[int(mask[a, b].reshape(-1)[i])]
    return dx


SEG = 'name: "u" type: "Upsample" bottom: "x" bottom: "mask" top: "y" upsample_param '


@pytest.mark.parametrize("cfg,shape,window,out_hw", [
    ("{ scale: 2 }", (2, 3, 4, 5), (2, 2), (8, 10)),
    ("{ }", (1, 2, 3, 3), (2, 2), (6, 6)),                                  # scale defaults to 2
    ("{ upsample_h: 7 upsample_w: 9 }", (1, 2, 4, 5), (2, 2), (7, 9)),
    ("{ scale: 2 pad_out_h: true pad_out_w: true }", (2, 1, 3, 4), (2, 2), (5, 7)),
    ("{ scale_h: 3 scale_w: 2 }", (1, 2, 2, 3), (3, 2), (6, 6)),
])
def test_segnet_upsample_matches_the_fork(cfg, shape, window, out_hw):
    r = np.random.default_rng(1)
    x = r.standard_normal(shape)
    mask = pooling_mask(r, shape, window, out_hw)
    layer = _layer(SEG + cfg, [shape, shape])
    assert layer.kind == "segnet"
    assert layer.reshape([shape, shape]) == [shape[:2] + out_hw]
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt, torch.from_numpy(mask))
    np.testing.assert_array_equal(y.detach().numpy(), segnet_forward_ref(x, mask, out_hw))
    dy = r.standard_normal(y.shape)
    (dx,) = torch.autograd.grad(y, xt, torch.from_numpy(dy))
    np.testing.assert_array_equal(dx.numpy(), segnet_backward_ref(dy, mask))


def test_segnet_upsample_shared_indices_last_write_wins_and_each_reads_the_diff():
    """Overlapping pooling windows (kernel 3, stride 2) can give two outputs one argmax: the fork's
    forward keeps the later value, its backward gives both the diff at that index."""
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = np.array([[[[5.0, 5.0], [0.0, 5.0]]]])
    layer = _layer(SEG + "{ scale: 2 }", [x.shape, x.shape])
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt, torch.from_numpy(mask))
    np.testing.assert_array_equal(y.detach().numpy(), segnet_forward_ref(x, mask, (4, 4)))
    assert float(y.detach()[0, 0].reshape(-1)[5]) == 4.0 and float(y[0, 0, 0, 0].detach()) == 3.0
    dy = np.arange(16.0).reshape(1, 1, 4, 4)
    (dx,) = torch.autograd.grad(y, xt, torch.from_numpy(dy))
    np.testing.assert_array_equal(dx.numpy(), [[[[5.0, 5.0], [0.0, 5.0]]]])


def test_segnet_pooling_mask_then_upsample_in_a_net_unpools_the_maxima():
    """A MAX Pooling with two tops feeds Upsample its mask (SegNet's encoder/decoder pair)."""
    from neocaffe.graph.net import Net

    text = ('force_backward: true '
            'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 9 } } } '
            'layer { name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask" pooling_param { pool: MAX '
            'kernel_size: 2 stride: 2 } } '
            'layer { name: "up" type: "Upsample" bottom: "p" bottom: "mask" top: "u" upsample_param { '
            'upsample_h: 7 upsample_w: 9 } } '
            'layer { name: "sq" type: "Power" bottom: "u" top: "z" power_param { power: 2 } }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 9)).astype(np.float32)
    net.set_blob("x", torch.from_numpy(x))
    net.forward()
    p, mask, u = (net.blob_data[b].detach().numpy() for b in ("p", "mask", "u"))
    np.testing.assert_array_equal(u, segnet_forward_ref(p, mask, (7, 9)))
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)  # ceil mode: clipped windows
    windows = padded.reshape(2, 3, 4, 2, 5, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(p, windows)
    net.backward({"z": torch.ones(2, 3, 7, 9)})
    np.testing.assert_allclose(net.blob_diff("p").numpy(), segnet_backward_ref(2 * u, mask), rtol=1e-6)


def yolo_forward_ref(x, k):
    n, c, h, w = x.shape
    out = np.zeros((n, c, h * k, w * k), x.dtype)
    for i in range(h * k):
        for j in range(w * k):
            out[:, :, i, j] = x[:, :, i // k, j // k]
    return out


def yolo_backward_ref(dy, k):
    n, c, H, W = dy.shape
    dx = np.zeros((n, c, H // k, W // k), dy.dtype)
    for h in range(H // k):
        for w in range(W // k):
            for i in range(k):
                for j in range(k):
                    dx[:, :, h, w] += dy[:, :, h * k + j, w * k + i]
    return dx


@pytest.mark.parametrize("cfg,k", [("upsample_param { scale: 2 }", 2), ("upsample_param { scale: 3 }", 3), ("", 1)])
def test_yolo_upsample_matches_the_port(cfg, k):
    r = np.random.default_rng(3)
    x = r.standard_normal((2, 3, 4, 5))
    layer = _layer(f'name: "u" type: "Upsample" bottom: "x" top: "y" {cfg}', [x.shape])
    assert layer.kind == "yolo" and layer.scale == k  # unset scale: the ports' default 1
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt)
    np.testing.assert_array_equal(y.detach().numpy(), yolo_forward_ref(x, k))
    dy = r.standard_normal(y.shape)
    (dx,) = torch.autograd.grad(y, xt, torch.from_numpy(dy))
    np.testing.assert_allclose(dx.numpy(), yolo_backward_ref(dy, k), rtol=1e-12)


@pytest.mark.parametrize("text,shapes,why", [
    ('bottom: "x" top: "y" upsample_param { upsample_h: 8 upsample_w: 8 }', [(1, 1, 4, 4)], "SegNet's fields"),
    ('bottom: "x" top: "y" upsample_param { scale: 0 }', [(1, 1, 4, 4)], "at least 1"),
    ('bottom: "x" bottom: "m" top: "y" upsample_param { scale: 2 scale_h: 2 scale_w: 2 }', [(1, 1, 4, 4)] * 2,
     "required"),
    ('bottom: "x" bottom: "m" top: "y" upsample_param { scale: 3 pad_out_h: true }', [(1, 1, 4, 4)] * 2,
     "requires scale_h == 2"),
    ('bottom: "x" bottom: "m" top: "y" upsample_param { upsample_h: 1 upsample_w: 8 }', [(1, 1, 4, 4)] * 2,
     "greater than 1"),
    ('bottom: "x" bottom: "m" top: "y" upsample_param { scale: 2 }', [(1, 1, 4, 4), (1, 1, 4, 3)], "shape"),
])
def test_upsample_rejects_what_the_forks_check(text, shapes, why):
    with pytest.raises(LayerSetupError, match=why):
        _layer(f'name: "u" type: "Upsample" {text}', shapes)


def test_segnet_upsample_names_an_out_of_range_mask_index():
    layer = _layer(SEG + "{ scale: 2 }", [(1, 1, 2, 2)] * 2)
    with pytest.raises(LayerSetupError, match="out of range"):
        layer(torch.ones(1, 1, 2, 2), torch.tensor([[[[0.0, 1.0], [2.0, 16.0]]]]))


def test_segnet_and_yolo_nets_export_to_onnx_equal():
    """A SegNet-style encoder/decoder (MAX pooling's mask -> Upsample, SegNet BN in both modes) and a
    YOLOv3-style nearest upsampling, exported by onnx_fork's emitters, equal neocaffe under onnxruntime."""
    pytest.importorskip("onnxruntime")
    from neocaffe.graph.net import Net
    from tests.export.helpers import TOLERANCE, onnx_errors

    bn = ('layer {{ name: "bn" type: "BN" bottom: "c" top: "c" bn_param {{ bn_mode: {mode} scale_filler {{ '
          'type: "uniform" min: 0.5 max: 1.5 }} shift_filler {{ type: "gaussian" std: 0.1 }} }} }} ')
    head = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 9 } } } '
            'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 '
            'kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } } ')
    seg = ('layer { name: "pool" type: "Pooling" bottom: "c" top: "p" top: "mask" pooling_param { pool: MAX '
           'kernel_size: 2 stride: 2 } } '
           'layer { name: "up" type: "Upsample" bottom: "p" bottom: "mask" top: "u" upsample_param { '
           'upsample_h: 7 upsample_w: 9 } } ')
    yolo = 'layer { name: "up" type: "Upsample" bottom: "c" top: "u" upsample_param { scale: 2 } } '
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 9)).astype(np.float32)
    for text in (head + bn.format(mode="INFERENCE") + seg, head + bn.format(mode="LEARN") + seg,
                 head + bn.format(mode="INFERENCE") + yolo):
        net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
        assert max(onnx_errors(net, {"x": x}).values()) <= TOLERANCE
