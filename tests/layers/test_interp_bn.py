"""PSPNet's ``Interp`` and the two forks' ``BN`` against NumPy ports of their C++ (hszhao/PSPNet
interp_layer.cpp + util/interp.cpp + bn_layer.cpp; alexgkendall/caffe-segnet bn_layer.cpp). The
float64 gradient checks of every configuration are in test_contract.py; here the backward is also
compared with the forks' own backward formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

f32 = np.float32


def _layer(text: str, shapes, phase=TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], phase)


# -- Interp ----------------------------------------------------------------------------------------
def interp2_ref(x: np.ndarray, pad_beg: int, pad_end: int, h2: int, w2: int) -> np.ndarray:
    """caffe_cpu_interp2<Dtype, false>, loop for loop (the ratios and positions in float32)."""
    N, C, H, W = x.shape
    y1 = x1 = -pad_beg
    h1s, w1s = H + pad_beg + pad_end, W + pad_beg + pad_end
    out = np.zeros((N, C, h2, w2), x.dtype)
    one = x.dtype.type(1)
    if (h1s, w1s) == (h2, w2):
        return x[:, :, y1:y1 + h1s, x1:x1 + w1s].copy()
    rh = f32(h1s - 1) / f32(h2 - 1) if h2 > 1 else f32(0)
    rw = f32(w1s - 1) / f32(w2 - 1) if w2 > 1 else f32(0)
    for i in range(h2):
        h1r = f32(rh * f32(i))
        h1 = int(h1r)
        h1p = 1 if h1 < h1s - 1 else 0
        hl1 = x.dtype.type(f32(h1r - f32(h1)))
        hl0 = one - hl1
        for j in range(w2):
            w1r = f32(rw * f32(j))
            w1 = int(w1r)
            w1p = 1 if w1 < w1s - 1 else 0
            wl1 = x.dtype.type(f32(w1r - f32(w1)))
            wl0 = one - wl1
            p = x[:, :, y1 + h1:, x1 + w1:]
            out[:, :, i, j] = (hl0 * (wl0 * p[:, :, 0, 0] + wl1 * p[:, :, 0, w1p])
                               + hl1 * (wl0 * p[:, :, h1p, 0] + wl1 * p[:, :, h1p, w1p]))
    return out


def interp2_backward_ref(dy: np.ndarray, shape, pad_beg: int, pad_end: int) -> np.ndarray:
    """caffe_cpu_interp2_backward: the same taps, accumulated into the bottom diff."""
    N, C, H, W = shape
    y1 = x1 = -pad_beg
    h1s, w1s = H + pad_beg + pad_end, W + pad_beg + pad_end
    h2, w2 = dy.shape[2:]
    dx = np.zeros(shape, dy.dtype)
    if (h1s, w1s) == (h2, w2):
        dx[:, :, y1:y1 + h1s, x1:x1 + w1s] += dy
        return dx
    rh = f32(h1s - 1) / f32(h2 - 1) if h2 > 1 else f32(0)
    rw = f32(w1s - 1) / f32(w2 - 1) if w2 > 1 else f32(0)
    for i in range(h2):
        h1r = f32(rh * f32(i)); h1 = int(h1r); h1p = 1 if h1 < h1s - 1 else 0  # noqa: E702
        hl1 = float(f32(h1r - f32(h1))); hl0 = 1 - hl1  # noqa: E702
        for j in range(w2):
            w1r = f32(rw * f32(j)); w1 = int(w1r); w1p = 1 if w1 < w1s - 1 else 0  # noqa: E702
            wl1 = float(f32(w1r - f32(w1))); wl0 = 1 - wl1  # noqa: E702
            g = dy[:, :, i, j]
            dx[:, :, y1 + h1, x1 + w1] += hl0 * wl0 * g
            dx[:, :, y1 + h1, x1 + w1 + w1p] += hl0 * wl1 * g
            dx[:, :, y1 + h1 + h1p, x1 + w1] += hl1 * wl0 * g
            dx[:, :, y1 + h1 + h1p, x1 + w1 + w1p] += hl1 * wl1 * g
    return dx


INTERP_CASES = [  # interp_param, bottom shape, expected top H x W (interp_layer.cpp's Reshape)
    ("zoom_factor: 8", (1, 2, 6, 5), (41, 33)),
    ("shrink_factor: 3", (2, 2, 10, 7), (4, 3)),
    ("shrink_factor: 2 zoom_factor: 3", (1, 3, 9, 6), (13, 7)),
    ("height: 60 width: 60", (1, 2, 1, 1), (60, 60)),            # PSPNet's pyramid pooling: 1 x 1 -> 60 x 60
    ("height: 13 width: 7 zoom_factor: 2 shrink_factor: 2", (1, 1, 5, 5), (13, 7)),  # height/width first
    ("height: 9 width: 11 pad_beg: -1 pad_end: -2", (1, 2, 8, 9), (9, 11)),
    ("zoom_factor: 1 pad_beg: -2 pad_end: -1", (1, 2, 8, 7), (5, 4)),  # a pure crop
    ("height: 7 width: 1", (1, 2, 5, 4), (7, 1)),
    ("height: 473 width: 17", (1, 1, 60, 3), (473, 17)),
]


@pytest.mark.parametrize("cfg,shape,out_hw", INTERP_CASES)
def test_interp_forward_and_backward_match_the_fork(cfg, shape, out_hw):
    layer = _layer(f'name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {cfg} }}', [shape])
    p = layer.param.interp_param
    assert layer.reshape([shape]) == [shape[:2] + out_hw]
    x = np.random.default_rng(3).standard_normal(shape).astype(f32)
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt)
    ref = interp2_ref(x, p.pad_beg, p.pad_end, *out_hw)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=0, atol=2e-6)
    dy = np.random.default_rng(4).standard_normal(ref.shape).astype(f32)
    (dx,) = torch.autograd.grad(y, xt, torch.from_numpy(dy))
    np.testing.assert_allclose(dx.numpy(), interp2_backward_ref(dy.astype(np.float64), shape, p.pad_beg, p.pad_end),
                               rtol=1e-5, atol=1e-5)


def test_interp_float64_uses_the_forks_float32_positions():
    """ratio and ``ratio * h2`` are float in the fork even for double blobs: 13 -> 7 rows (ratio 2)
    is exact, 6 -> 11 (ratio 0.5) too, but 5 -> 8 rows has float32 weights, not float64 ones."""
    x = np.random.default_rng(5).standard_normal((1, 1, 5, 5))
    layer = _layer('name: "i" type: "Interp" bottom: "x" top: "y" interp_param { height: 8 width: 8 }', [x.shape])
    y = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(y, interp2_ref(x, 0, 0, 8, 8))


@pytest.mark.parametrize("cfg,why", [("pad_beg: 1 zoom_factor: 2", "non-positive"),
                                     ("zoom_factor: 0", "positive"), ("shrink_factor: 0", "positive"),
                                     ("height: 5", "needs shrink_factor, zoom_factor, or height and width"),
                                     ("pad_beg: -3 pad_end: -3 zoom_factor: 2", "empty")])
def test_interp_rejects_what_the_fork_checks(cfg, why):
    with pytest.raises(LayerSetupError, match=why):
        _layer(f'name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {cfg} }}', [(1, 1, 5, 5)])


# -- BN: PSPNet ------------------------------------------------------------------------------------
def _psp_text(extra: str = "") -> str:
    return ('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { slope_filler { type: "constant" value: 1 } '
            f'bias_filler {{ type: "constant" value: 0 }} {extra} }}')


def psp_bn_ref(x, slope, bias, mean, var, eps, use_stored, momentum):
    """bn_layer.cpp Forward_cpu: (y, x_norm, inv_std, new running mean, new running var)."""
    if use_stored:
        m, v = mean, var
        new_mean, new_var = mean, var
    else:
        m = x.mean(axis=(0, 2, 3), keepdims=True)
        v = ((x - m) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        new_mean = (1 - momentum) * m + momentum * mean
        new_var = (1 - momentum) * v + momentum * var
    inv = (v + eps) ** -0.5
    xn = (x - m) * inv
    return xn * slope + bias, xn, inv, new_mean, new_var


def psp_bn_backward_ref(dy, xn, inv, slope):
    """bn_layer.cpp Backward_cpu (not frozen): slope diff, bias diff, bottom diff."""
    axes = (0, 2, 3)
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    g = dy * slope
    dx = g - xn * (xn * g).sum(axes, keepdims=True) / m - g.sum(axes, keepdims=True) / m
    return (xn * dy).sum(axes, keepdims=True), dy.sum(axes, keepdims=True), dx * inv


@pytest.mark.parametrize("phase,frozen", [(TRAIN, False), (TEST, False), (TRAIN, True), (TEST, True)])
def test_pspnet_bn_forward_backward_and_running_statistics(phase, frozen):
    r = np.random.default_rng(7)
    x = r.standard_normal((3, 4, 5, 6)) * 1.5 + 0.3
    layer = _layer(_psp_text(f"momentum: 0.8 eps: 0.001 frozen: {str(frozen).lower()}"), [x.shape], phase).double()
    assert layer.lineage == "pspnet" and len(layer.blobs) == 4
    assert [tuple(b.shape) for b in layer.blobs] == [(1, 4, 1, 1)] * 4
    assert float(layer.blobs[3].detach().sum()) == (4.0 if frozen else 0.0)  # variance filled 1 when frozen
    vals = [r.uniform(0.5, 1.5, (1, 4, 1, 1)), r.normal(0, 0.2, (1, 4, 1, 1)), r.normal(0, 0.3, (1, 4, 1, 1)),
            r.uniform(0.5, 2.0, (1, 4, 1, 1))]
    with torch.no_grad():
        for b, v in zip(layer.blobs, vals):
            b.copy_(torch.from_numpy(v))
    eps = float(f32(0.001))
    use_stored = frozen or phase == TEST
    ref, xn, inv, new_mean, new_var = psp_bn_ref(x, *vals, eps, use_stored, float(f32(0.8)))
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[2].detach().numpy(), new_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[3].detach().numpy(), new_var, rtol=1e-12, atol=1e-12)
    dy = r.standard_normal(x.shape)
    grads = torch.autograd.grad(y, [xt, layer.blobs[0], layer.blobs[1]], torch.from_numpy(dy), allow_unused=True)
    if frozen:  # the fork: bottom diff dy * slope / std; no slope or bias diff
        np.testing.assert_allclose(grads[0].numpy(), dy * vals[0] * inv, rtol=1e-10)
        assert grads[1] is None and grads[2] is None
    else:
        d_slope, d_bias, dx = psp_bn_backward_ref(dy, xn, inv, vals[0])
        np.testing.assert_allclose(grads[1].numpy(), d_slope, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads[2].numpy(), d_bias, rtol=1e-10, atol=1e-12)
        if phase == TRAIN:
            np.testing.assert_allclose(grads[0].numpy(), dx, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("frozen,zeroed", [(False, [2, 3]), (True, [0, 1, 2, 3])])
def test_pspnet_bn_forces_the_forks_learning_rates(frozen, zeroed):
    text = _psp_text(f"frozen: {str(frozen).lower()}").replace('top: "y"', 'top: "y" param { lr_mult: 1 decay_mult: 0 } '
                                                              'param { lr_mult: 2 decay_mult: 0 } param { lr_mult: 5 }')
    layer = _layer(text, [(2, 3, 4, 4)])
    specs = layer.param.param
    assert len(specs) == 4
    for i in range(4):
        assert (specs[i].lr_mult == 0 and specs[i].decay_mult == 0) == (i in zeroed)


def test_pspnet_bn_in_place_in_a_train_net_gives_diffs_to_slope_and_bias_only():
    from neocaffe.graph.net import Net

    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } } '
            'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 3 '
            'kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } } '
            'layer { ' + _psp_text("momentum: 0.9").replace('bottom: "x" top: "y"', 'bottom: "c" top: "c"') + ' } '
            'layer { name: "l" type: "EuclideanLoss" bottom: "c" bottom: "x" top: "l" }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    net.set_blob("x", x)
    net.forward()
    net.backward()
    bn = [layer for layer in net.layers if layer.type_name == "BN"][0]
    c = net.blob_data["c"]
    assert abs(float(c.mean())) < 1e-5  # normalized by the batch's statistics (slope 1, bias 0)
    assert float(bn.blobs[0].grad.abs().sum()) > 0 and float(bn.blobs[1].grad.abs().sum()) > 0
    for b in bn.blobs[2:]:  # stored statistics get no diff
        assert b.grad is None or not bool(b.grad.any())
    assert float(bn.blobs[3].abs().sum()) > 0  # the running variance moved from 0


def test_pspnet_bn_loads_and_runs_a_fork_caffemodel_by_blob_name(tmp_path):
    """A .caffemodel written for the fork's 4 blobs loads onto the layer by name."""
    from neocaffe.graph.net import Net
    from neocaffe.io.weights import LayerWeights, save_weights

    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } } '
            'layer { ' + _psp_text("frozen: true").replace('top: "y"', 'top: "x"') + ' }')
    blobs = [np.array([2.0, 3.0]), np.array([0.5, -1.0]), np.array([1.0, -2.0]), np.array([4.0, 0.25])]
    save_weights(tmp_path / "w.caffemodel",
                 [LayerWeights("bn", "BN", [b.reshape(1, 2, 1, 1).astype(f32) for b in blobs])], hdf5=False)
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    net.copy_from(str(tmp_path / "w.caffemodel"))
    x = np.arange(18, dtype=f32).reshape(1, 2, 3, 3)
    net.set_blob("x", torch.from_numpy(x.copy()))
    net.forward()
    sl, bi, mu, va = (b.reshape(1, 2, 1, 1).astype(f32) for b in blobs)
    ref = (x - mu) * (va + f32(1e-5)) ** f32(-0.5) * sl + bi
    np.testing.assert_allclose(net.blob_data["x"].numpy(), ref, rtol=1e-6)


# -- BN: SegNet ------------------------------------------------------------------------------------
def segnet_learn_ref(x, scale, shift):
    """caffe-segnet bn_layer.cpp LEARN: variance as E(x^2) - (E x)^2, var_eps_ 1e-9."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = (x ** 2).mean(axis=(0, 2, 3), keepdims=True) - mean ** 2
    std = np.sqrt(var + 1e-9)
    xn = (x - mean) / std
    return xn * scale + shift, xn, std, mean, var


def segnet_learn_backward_ref(dy, xn, std, scale):
    """caffe-segnet Backward_cpu LEARN, step by step as the fork computes it."""
    axes = (0, 2, 3)
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    buf = dy * scale
    dx = xn * (xn * buf).sum(axes, keepdims=True)
    dx = dx + buf.sum(axes, keepdims=True)
    dx = buf - dx / m
    return (xn * dy).sum(axes, keepdims=True), dy.sum(axes, keepdims=True), dx / std


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_segnet_bn_learn_uses_batch_statistics_in_every_phase(phase):
    r = np.random.default_rng(9)
    x = r.standard_normal((2, 3, 4, 5)) * 2 - 1
    text = ('name: "bn" type: "BN" bottom: "x" top: "y" top: "m" top: "v" bn_param { '
            'scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } }')
    layer = _layer(text, [x.shape], phase).double()
    assert layer.lineage == "segnet" and len(layer.blobs) == 2
    assert layer.reshape([x.shape]) == [x.shape, (1, 3, 1, 1), (1, 3, 1, 1)]
    scale, shift = r.uniform(0.5, 1.5, (1, 3, 1, 1)), r.normal(0, 0.1, (1, 3, 1, 1))
    with torch.no_grad():
        layer.blobs[0].copy_(torch.from_numpy(scale))
        layer.blobs[1].copy_(torch.from_numpy(shift))
    xt = torch.from_numpy(x).requires_grad_(True)
    y, m, v = layer(xt)
    ref, xn, std, mean, var = segnet_learn_ref(x, scale, shift)
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(v.numpy(), var, rtol=1e-12)
    assert not m.requires_grad and not v.requires_grad  # the fork gives tops 1 and 2 no diff
    dy = r.standard_normal(x.shape)
    gx, gs, gb = torch.autograd.grad(y, [xt, layer.blobs[0], layer.blobs[1]], torch.from_numpy(dy))
    d_scale, d_shift, dx = segnet_learn_backward_ref(dy, xn, std, scale)
    np.testing.assert_allclose(gs.numpy(), d_scale, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gb.numpy(), d_shift, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gx.numpy(), dx, rtol=1e-9, atol=1e-12)


def test_segnet_bn_inference_is_affine_with_the_forks_diffs():
    r = np.random.default_rng(10)
    x = r.standard_normal((2, 3, 2, 2))
    layer = _layer('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { bn_mode: INFERENCE '
                   'scale_filler { type: "constant" value: 2 } shift_filler { type: "constant" value: -0.5 } }',
                   [x.shape]).double()
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt)
    np.testing.assert_allclose(y.detach().numpy(), 2 * x - 0.5, rtol=1e-15)
    dy = r.standard_normal(x.shape)
    gx, gs, gb = torch.autograd.grad(y, [xt, layer.blobs[0], layer.blobs[1]], torch.from_numpy(dy))
    np.testing.assert_allclose(gx.numpy(), 2 * dy)
    np.testing.assert_allclose(gs.numpy(), (x * dy).sum((0, 2, 3), keepdims=True))
    np.testing.assert_allclose(gb.numpy(), dy.sum((0, 2, 3), keepdims=True))


@pytest.mark.parametrize("bn_param,ntops,lineage", [
    ("frozen: false", 1, "pspnet"), ("momentum: 0.9", 1, "pspnet"), ('slope_filler { type: "constant" }', 1, "pspnet"),
    ("bn_mode: LEARN", 1, "segnet"), ('shift_filler { type: "constant" }', 1, "segnet"), ("", 3, "segnet"),
])
def test_bn_lineage_is_told_by_the_fields_set(bn_param, ntops, lineage):
    tops = " ".join(f'top: "t{i}"' for i in range(ntops))
    layer = _layer(f'name: "bn" type: "BN" bottom: "x" {tops} bn_param {{ {bn_param} }}', [(1, 2, 3, 3)])
    assert layer.lineage == lineage
    assert len(layer.blobs) == (4 if lineage == "pspnet" else 2)


@pytest.mark.parametrize("text,why", [
    ('bn_param { frozen: true bn_mode: INFERENCE }', "one BN layer is of one lineage"),
    ('bn_param { }', "cannot be told"),
    ('', "cannot be told"),
    ('top: "m" bn_param { eps: 0.001 }', "exactly 1 top"),
])
def test_bn_lineage_errors_name_the_fields(text, why):
    with pytest.raises(LayerSetupError, match=why):
        _layer(f'name: "bn" type: "BN" bottom: "x" top: "y" {text}', [(1, 2, 3, 3)])


def test_fork_bn_folds_into_its_convolution_and_interp_traces_in_frozen_mode():
    """export.modes: a frozen PSPNet BN (and SegNet's INFERENCE BN) folds into the Convolution before
    it; the frozen mode traces Interp; every mode within 1e-5 of the fp32 eager net."""
    from neocaffe.export.modes import InferenceModes
    from neocaffe.graph.net import Net

    conv = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } } } '
            'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 '
            'kernel_size: 3 bias_term: false weight_filler { type: "gaussian" std: 0.3 } } } ')
    tail = 'layer { name: "i" type: "Interp" bottom: "c" top: "y" interp_param { zoom_factor: 3 } }'
    bns = ['bn_param { slope_filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } '
           'frozen: true }',
           'bn_param { bn_mode: INFERENCE scale_filler { type: "uniform" min: 0.5 max: 1.5 } '
           'shift_filler { type: "gaussian" std: 0.1 } }']
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    for bn in bns:
        text = conv + f'layer {{ name: "bn" type: "BN" bottom: "c" top: "c" {bn} }} ' + tail
        ref = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
        with torch.no_grad():
            for b in ref.layers[2].blobs[2:]:
                b.uniform_(0.5, 2.0)
        ref.set_blob("x", x)
        ref.forward()
        want = ref.blob_data["y"].clone()
        for mode in (InferenceModes(fold_bn=True), InferenceModes(frozen=True),
                     InferenceModes(fold_bn=True, channels_last=True, frozen=True)):
            net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TEST)
            net.copy_from(ref.to_weights())
            net = mode.apply(net)
            net.set_blob("x", x)
            net.forward()
            got = net.blob_data["y"]
            assert float((got - want).abs().max() / want.abs().max()) <= 1e-5, mode.names()
            assert ("BN" in [la.type_name for la in net.layers]) == (not mode.fold_bn), mode.names()
            assert net.frozen is None or net.frozen.failed is None
