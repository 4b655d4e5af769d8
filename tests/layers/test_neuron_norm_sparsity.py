"""NumPy references for neuron, normalization and sparsity layer options the goldens do not cover,
and Caffe's in-place semantics (backward reads the blob's final data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

f32 = np.float32
SHAPE = (2, 3, 4, 5)


def _x(seed=0, shape=SHAPE, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(f32)


def _net(layers: str, phase=TEST, shapes=(("x", SHAPE),)) -> Net:
    inputs = "".join(
        f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ {" ".join(f"dim: {d}" for d in s)} }} }} }}\n'
        for n, s in shapes
    )
    text = f"force_backward: true\n{inputs}{layers}"
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def _run(net: Net, inputs: dict, top: str, dy: np.ndarray):
    for k, v in inputs.items():
        net.set_blob(k, torch.from_numpy(v))
    net.forward()
    net.clear_param_diffs()
    net.backward({top: torch.from_numpy(dy)})
    return net.blob_data[top].detach().numpy(), {k: net.blob_diff(k).detach().numpy() for k in inputs}


def _layer(text: str, shapes, phase=TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, phase)


def _grad(layer, x: np.ndarray, dy: np.ndarray):
    t = torch.from_numpy(x).requires_grad_(True)
    y = layer(t)
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), t.grad.numpy()


def close(a, b, rtol=2e-6, atol=1e-7):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# -- neuron --------------------------------------------------------------------------------------
def test_relu_gradient_at_zero_is_slope():
    x = np.array([[-1.0, 0.0, 2.0, 0.0]], dtype=f32)
    layer = _layer('name: "r" type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.25 }', [x.shape])
    y, dx = _grad(layer, x, np.ones_like(x))
    close(y, [[-0.25, 0.0, 2.0, 0.0]])
    close(dx, [[0.25, 0.25, 1.0, 0.25]])


@pytest.mark.parametrize("cfg, ref_y, ref_dx", [
    ("power: 3 scale: 1.5", lambda x: (f32(1.5) * x) ** 3, lambda x, y: 3 * y / x),  # shift 0: power*y/x
    ("power: 1.5 scale: 0.5 shift: 2", lambda x: (f32(0.5) * x + 2) ** f32(1.5),
     lambda x, y: f32(0.75) * y / (f32(0.5) * x + 2)),
    ("power: 0 shift: 3", lambda x: np.ones_like(x), lambda x, y: np.zeros_like(x)),
    ("power: 2 scale: 0 shift: 3", lambda x: np.full_like(x, 9.0), lambda x, y: np.zeros_like(x)),
    ("power: 1 scale: -2 shift: 1", lambda x: 1 - 2 * x, lambda x, y: np.full_like(x, -2.0)),
])
def test_power_special_cases(cfg, ref_y, ref_dx):
    x = np.abs(_x(1)) + f32(0.5)
    dy = _x(2)
    layer = _layer(f'name: "p" type: "Power" bottom: "x" top: "y" power_param {{ {cfg} }}', [SHAPE])
    y, dx = _grad(layer, x, dy)
    close(y, ref_y(x), rtol=1e-5)
    close(dx, dy * ref_dx(x, ref_y(x)), rtol=1e-5, atol=1e-6)


def test_inplace_power_reads_its_output_as_bottom_like_caffe():
    """In place, Caffe's Power backward reads bottom data = the blob = y: dx = dy*2*scale*(shift+scale*y)."""
    x = _x(3)
    dy = _x(4)
    net = _net('layer { name: "p" type: "Power" bottom: "x" top: "x" power_param { power: 2 scale: 0.5 shift: 1 } }')
    y, d = _run(net, {"x": x}, "x", dy)
    close(y, (f32(0.5) * x + 1) ** 2, rtol=1e-6)
    close(d["x"], dy * (f32(0.5) * y + 1), rtol=1e-5, atol=1e-6)


def test_exp_log_defaults_and_shift():
    x = _x(5)
    dy = _x(6)
    layer = _layer('name: "e" type: "Exp" bottom: "x" top: "y" exp_param { shift: 0.5 scale: 2 }', [SHAPE])
    y, dx = _grad(layer, x, dy)
    ref = np.exp(2 * x.astype(np.float64) + 0.5)
    close(y, ref, rtol=1e-6)
    close(dx, dy * ref * 2, rtol=1e-5)
    pos = np.abs(x) + f32(0.1)
    layer = _layer('name: "l" type: "Log" bottom: "x" top: "y"', [SHAPE])
    y, dx = _grad(layer, pos, dy)
    close(y, np.log(pos), rtol=1e-6)
    close(dx, dy / pos, rtol=1e-6)
    with pytest.raises(LayerSetupError, match="strictly positive"):
        _layer('name: "l" type: "Log" bottom: "x" top: "y" log_param { base: -2 }', [SHAPE])


def test_clip_swish_bnll():
    x = _x(7, scale=3.0)
    x[0, 0, 0, :2] = [-0.5, 0.8]  # exactly on the bounds: gradient passes
    dy = _x(8)
    y, dx = _grad(_layer('name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -0.5 max: 0.8 }', [SHAPE]), x, dy)
    close(y, np.clip(x, f32(-0.5), f32(0.8)))
    close(dx, dy * ((x >= f32(-0.5)) & (x <= f32(0.8))))
    y, dx = _grad(_layer('name: "s" type: "Swish" bottom: "x" top: "y" swish_param { beta: 1.5 }', [SHAPE]), x, dy)
    s = 1 / (1 + np.exp(-1.5 * x.astype(np.float64)))
    close(y, x * s, rtol=1e-5, atol=1e-6)
    close(dx, dy * (1.5 * x * s + s * (1 - 1.5 * x * s)), rtol=1e-5, atol=1e-6)
    big = np.array([[-80.0, -1.0, 0.0, 1.0, 80.0]], dtype=f32)
    y, dx = _grad(_layer('name: "b" type: "BNLL" bottom: "x" top: "y"', [big.shape]), big, np.ones_like(big))
    close(y, np.logaddexp(0, big.astype(np.float64)), rtol=1e-6)
    e = np.exp(np.minimum(big.astype(np.float64), 50))
    close(dx, e / (e + 1), rtol=1e-6)


def test_threshold_has_no_gradient():
    layer = _layer('name: "t" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.2 }', [(4,)])
    x = torch.tensor([0.1, 0.2, 0.3, -1.0], requires_grad=True)
    y = layer(x)
    assert y.tolist() == [0.0, 0.0, 1.0, 0.0] and not y.requires_grad


def test_prelu_in_place_uses_the_original_bottom():
    x = _x(9)
    dy = _x(10)
    net = _net('layer { name: "p" type: "PReLU" bottom: "x" top: "x" }')
    y, d = _run(net, {"x": x}, "x", dy)
    close(y, np.where(x > 0, x, f32(0.25) * x))
    close(d["x"], np.where(x > 0, dy, f32(0.25) * dy))
    w = net.layer("p").blobs[0]
    assert tuple(w.shape) == (3,)
    close(w.grad.numpy(), (dy * x * (x <= 0)).sum((0, 2, 3)), rtol=1e-5)


def test_dropout_scale_mask_and_phases():
    p = f32(0.6)
    scale = f32(1.0 / (1.0 - np.float64(p)))
    assert scale == f32(2.5000002)
    x = _x(11, shape=(4, 6, 10, 10))
    dy = _x(12, shape=x.shape)
    rng.set_seed(1)
    net = _net('layer { name: "fc" type: "ReLU" bottom: "x" top: "x" }\n'
               'layer { name: "d" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.6 } }',
               TRAIN, (("x", x.shape),))
    y, d = _run(net, {"x": x}, "x", dy)
    r = np.maximum(x, 0)
    kept = y != 0
    np.testing.assert_array_equal(y[kept], (r * scale)[kept])
    np.testing.assert_array_equal(d["x"], np.where(kept & (x > 0), dy * scale, 0))
    assert abs(kept[x > 0].mean() - 0.4) < 0.05
    net = _net('layer { name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.6 } }')
    y, d = _run(net, {"x": x}, "y", dy)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(d["x"], dy)
    with pytest.raises(LayerSetupError, match="dropout_ratio"):
        _layer('name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 1 }', [SHAPE])


# -- normalization -------------------------------------------------------------------------------
def _bn_ref(x, eps):
    m = x.mean((0, 2, 3), keepdims=True)
    v = ((x - m) ** 2).mean((0, 2, 3), keepdims=True)
    return (x - m) / np.sqrt(v + eps), m.ravel(), v.ravel()


def test_batchnorm_forces_lr_mult_zero():
    layer = _layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y"', [SHAPE])
    assert [p.lr_mult for p in layer.param.param] == [0, 0, 0]
    assert [tuple(b.shape) for b in layer.blobs] == [(3,), (3,), (1,)]
    layer = _layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 0 decay_mult: 0 }', [SHAPE])
    assert len(layer.param.param) == 3 and layer.param.param[0].decay_mult == 0
    with pytest.raises(LayerSetupError, match="statistics"):
        _layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 }', [SHAPE])


def test_batchnorm_train_updates_and_backward():
    x = _x(13) * 2 + 1
    dy = _x(14)
    net = _net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { moving_average_fraction: 0.5 } }', TRAIN)
    bn = net.layer("bn")
    with torch.no_grad():
        bn.blobs[0].copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.blobs[1].copy_(torch.tensor([4.0, 5.0, 6.0]))
        bn.blobs[2].fill_(2.0)
    y, d = _run(net, {"x": x}, "y", dy)
    xd = x.astype(np.float64)
    ref, m, v = _bn_ref(xd, 1e-5)
    close(y, ref, rtol=1e-5, atol=1e-6)
    n = x.size // 3
    close(bn.blobs[0].detach().numpy(), 0.5 * np.array([1, 2, 3]) + m, rtol=1e-5)
    close(bn.blobs[1].detach().numpy(), 0.5 * np.array([4, 5, 6]) + n / (n - 1) * v, rtol=1e-5)
    close(bn.blobs[2].detach().numpy(), [2.0])
    std = np.sqrt(v + 1e-5).reshape(1, 3, 1, 1)
    dyd = dy.astype(np.float64)
    ref_dx = (dyd - dyd.mean((0, 2, 3), keepdims=True) - (dyd * ref).mean((0, 2, 3), keepdims=True) * ref) / std
    close(d["x"], ref_dx, rtol=1e-5, atol=1e-6)
    assert all(float(b.grad.abs().sum()) == 0 for b in bn.blobs)


def test_batchnorm_global_stats():
    x = _x(15)
    dy = _x(16)
    # use_global_stats in TRAIN: stored statistics, gradient dy / std; scale factor 0 -> stats 0
    net = _net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { use_global_stats: true } }', TRAIN)
    y, d = _run(net, {"x": x}, "y", dy)
    close(y, x / np.sqrt(f32(1e-5)), rtol=1e-6)
    close(d["x"], dy / np.sqrt(f32(1e-5)), rtol=1e-6)
    net = _net('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }')
    bn = net.layer("bn")
    with torch.no_grad():
        bn.blobs[0].copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.blobs[1].copy_(torch.tensor([4.0, 5.0, 6.0]))
        bn.blobs[2].fill_(4.0)
    y, d = _run(net, {"x": x}, "y", dy)
    m = np.array([0.25, 0.5, 0.75]).reshape(1, 3, 1, 1)
    s = np.sqrt(np.array([1.0, 1.25, 1.5]) + 1e-5).reshape(1, 3, 1, 1)
    close(y, (x - m) / s, rtol=1e-6)
    close(d["x"], dy / s, rtol=1e-6)


def test_scale_bias_options():
    x = _x(17)
    dy = _x(18)
    net = _net('layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: -3 num_axes: -1 bias_term: true '
               'filler { type: "gaussian" } bias_filler { type: "gaussian" } } }')
    s = net.layer("s")
    assert [tuple(b.shape) for b in s.blobs] == [(3, 4, 5), (3, 4, 5)]
    w, b = (t.detach().numpy().copy() for t in s.blobs)
    y, d = _run(net, {"x": x}, "y", dy)
    close(y, x * w + b, rtol=1e-6)
    close(d["x"], dy * w, rtol=1e-6)
    close(s.blobs[0].grad.numpy(), (dy * x).sum(0), rtol=1e-5, atol=1e-6)
    close(s.blobs[1].grad.numpy(), dy.sum(0), rtol=1e-5, atol=1e-6)
    # num_axes 0: a scalar scale, default filler 1
    net = _net('layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 } }')
    assert tuple(net.layer("s").blobs[0].shape) == () and float(net.layer("s").blobs[0].detach()) == 1.0
    # Bias from a second bottom at axis 2
    bb = _x(19, shape=(4, 5))
    net = _net('layer { name: "b" type: "Bias" bottom: "x" bottom: "b" top: "y" bias_param { axis: 2 } }',
               shapes=(("x", SHAPE), ("b", (4, 5))))
    y, d = _run(net, {"x": x, "b": bb}, "y", dy)
    close(y, x + bb)
    close(d["b"], dy.sum((0, 1)), rtol=1e-5, atol=1e-6)
    with pytest.raises(LayerSetupError, match="does not match"):
        _layer('name: "b" type: "Bias" bottom: "x" bottom: "b" top: "y"', [SHAPE, (4,)])


def test_mvn_across_channels_backward_is_caffes():
    """Caffe's MVN backward divides by (std + eps) and omits eps from the variance term."""
    x = _x(20)
    dy = _x(21)
    layer = _layer('name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true eps: 0.1 }', [SHAPE])
    y, dx = _grad(layer, x, dy)
    r = x.reshape(2, -1).astype(np.float64)
    xc = r - r.mean(1, keepdims=True)
    std = np.sqrt((xc ** 2).mean(1, keepdims=True)) + f32(0.1)
    ry = xc / std
    close(y, ry.reshape(SHAPE), rtol=1e-5, atol=1e-6)
    g = dy.reshape(2, -1)
    ref = (g - g.mean(1, keepdims=True) - (g * ry).mean(1, keepdims=True) * ry) / std
    close(dx, ref.reshape(SHAPE), rtol=1e-5, atol=1e-6)


# -- sparsity ------------------------------------------------------------------------------------
def test_sparsify_in_place_before_relu_reads_final_top():
    """sp_conv5 then relu5 in place: Sparsify's backward sees relu(softshrink(x))."""
    x = _x(22)
    dy = _x(23)
    net = _net('layer { name: "sp" type: "Sparsify" bottom: "x" top: "x" sparsify_param { thre: 0.2 coef: 0.01 } }\n'
               'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }')
    y, d = _run(net, {"x": x}, "x", dy)
    shrunk = np.sign(x) * np.maximum(np.abs(x) - f32(0.2), 0)
    top = np.maximum(shrunk, 0)
    close(y, top)
    relu_dx = dy * (top > 0)
    close(d["x"], (relu_dx + f32(0.01) * np.sign(top)) * (top != 0))
    with pytest.raises(LayerSetupError, match=">= 0"):
        _layer('name: "s" type: "Sparsify" bottom: "x" top: "y" sparsify_param { coef: -1 }', [SHAPE])


def test_symmetric_rectify_clamp_decay_and_default_filler():
    x = _x(24)
    dy = _x(25)
    net = _net('layer { name: "sr" type: "SymmetricRectify" bottom: "x" top: "y" '
               'symmetric_rectify_param { thre_decay: 0.01 } }')
    sr = net.layer("sr")
    assert sr.blobs[0].detach().tolist() == [0.0, 0.0, 0.0]
    with torch.no_grad():
        sr.blobs[0].copy_(torch.tensor([-0.3, 0.1, 0.5]))
    y, d = _run(net, {"x": x}, "y", dy)
    t = np.array([0.0, 0.1, 0.5], dtype=f32)
    close(sr.blobs[0].detach().numpy(), t)
    tv = t.reshape(1, 3, 1, 1)
    ref = np.where(np.abs(x) <= tv, 0, np.where(x > tv, x - tv, x + tv))
    close(y, ref)
    close(d["x"], dy * (ref != 0))
    close(sr.blobs[0].grad.numpy(), (dy * ((ref < 0).astype(f32) - (ref > 0))).sum((0, 2, 3)) - 0.01,
          rtol=1e-5, atol=1e-6)
