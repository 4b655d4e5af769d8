"""happynear's face-recognition layers (the Caffe of AM-Softmax and NormFace: happynear/caffe-windows ms @
967eedf2, the same as AMSoftmax's submodule pin 504d8a85 but for normalize_layer.cpp's sign macro) against
loop ports of the fork's CPU code: Normalize (normalize_layer.cpp), InnerProduct ``normalize``
(inner_product_layer.cpp), LabelSpecificAdd (label_specific_add.cpp), ChannelScale (channel_scale_layer.cpp
and .cu for ``global_scale``), Flip (flip_layer.cpp), Scale ``min_value``/``max_value`` (scale_layer.cpp),
Accuracy ``min_is_better`` (accuracy_layer.cpp), the gaussian_unitball filler (filler.hpp); float64
gradient checks where the fork's backward is the gradient; the rule that tells happynear's Normalize from
SSD's; both forks' weight files; and the real AM-Softmax (happynear/AMSoftmax @ f57f7a7, prototxt/) and
NormFace (happynear/NormFace @ 8438887, prototxt/scaled_cosine_softmax.prototxt) nets, trained a few
iterations by the solver with the loss falling."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def _layer(text: str, shapes, phase=TRAIN):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, phase)


# -- loop ports of the fork's Forward_cpu / Backward_cpu ---------------------------------------------
def port_normalize(x, typ, top_diff, norm_diff=None, bp_norm=False, fix_gradient=False, f=np.float32):
    """NormalizeLayer (normalize_layer.cpp at ms; ``fix_gradient`` as the .cu) on a legacy (N, C, H, W)
    ``x``: top, norm (N, 1, H, W), bottom diff."""
    shape = x.shape + (1,) * (4 - x.ndim)
    n_, c_, h_, w_ = shape
    s_ = h_ * w_
    x = x.astype(f).reshape(n_, c_, s_)
    td = top_diff.astype(f).reshape(n_, c_, s_)
    top = np.zeros_like(x)
    norm = np.zeros((n_, s_), f)
    for n in range(n_):
        for s in range(s_):
            acc = f(0)
            for c in range(c_):
                acc = f(acc + (f(x[n, c, s] * x[n, c, s]) if typ == "L2" else abs(x[n, c, s])))
            acc = f(np.float64(acc) + 1e-6)
            norm[n, s] = f(np.sqrt(np.float64(acc))) if typ == "L2" else acc
            for c in range(c_):
                top[n, c, s] = f(x[n, c, s] / norm[n, s])
    bd = np.zeros_like(x)
    for n in range(n_):
        for s in range(s_):
            a = f(0)
            for c in range(c_):
                a = f(a + f(top[n, c, s] * td[n, c, s]))
            for c in range(c_):
                g = top[n, c, s] if typ == "L2" else f(np.sign(x[n, c, s]))
                d = f(td[n, c, s] - f(g * a))
                bd[n, c, s] = d if fix_gradient else f(d / norm[n, s])
                if bp_norm:
                    bd[n, c, s] = f(bd[n, c, s] + f(norm_diff.reshape(n_, s_)[n, s].astype(f) * g))
    return top.reshape(shape), norm.reshape(n_, 1, h_, w_), bd.reshape(shape)


def port_ip_normalize(x, w, top_diff, f=np.float32):
    """InnerProductLayer with ``normalize`` (inner_product_layer.cpp), no bias: the rewritten weight,
    top, bottom diff, weight diff."""
    x, w, td = x.astype(f), w.astype(f).copy(), top_diff.astype(f)
    for n in range(w.shape[0]):
        sum_sq = f(np.float64(f(np.dot(w[n], w[n]))) + 1e-6)
        w[n] = w[n] * f(f(1) / f(np.sqrt(np.float64(sum_sq))))
    return w, x @ w.T, td @ w, td.T @ x


def port_label_specific_add(x, label, bias):
    top = x.copy()
    dim = x.size // x.shape[0]
    flat = top.reshape(x.shape[0], dim)
    for i in range(x.shape[0]):
        gt = int(label[i])
        if flat[i, gt] > -bias:
            flat[i, gt] += bias
    return top


def port_bias_schedule(base, gamma, power, lo, hi, it):
    f = np.float32
    b = f(f(f(base) + f(np.float64(f(f(1) + f(gamma) * f(it))) ** np.float64(f(power)))) - f(1))
    return float(min(max(b, f(lo)), f(hi)))


def port_channel_scale(x, s, top_diff, f=np.float32):
    n_, c_ = x.shape[:2]
    sp = x.size // (n_ * c_)
    x3, td = x.astype(f).reshape(n_, c_, sp), top_diff.astype(f).reshape(n_, c_, sp)
    s2 = s.astype(f).reshape(n_, sp)
    top, bd = np.zeros_like(x3), np.zeros_like(x3)
    sd = np.zeros_like(s2)
    for n in range(n_):
        for p in range(sp):
            for c in range(c_):
                top[n, c, p] = s2[n, p] * x3[n, c, p]
                bd[n, c, p] = s2[n, p] * td[n, c, p]
                sd[n, p] = f(sd[n, p] + f(x3[n, c, p] * td[n, c, p]))
    return top.reshape(x.shape), bd.reshape(x.shape), sd.reshape(s.shape)


# -- Normalize -----------------------------------------------------------------------------------------
NORM = 'name: "norm1" type: "Normalize" bottom: "x" top: "y"'


@pytest.mark.parametrize("typ", ["L2", "L1"])
@pytest.mark.parametrize("shape, tops", [((4, 6), 1), ((2, 5, 2, 3), 2), ((3, 4, 2), 2)])
def test_normalize_matches_the_forks_cpu_code(typ, shape, tops):
    r = np.random.default_rng(1)
    x = r.standard_normal(shape).astype(np.float32)
    bp = tops == 2
    text = NORM + (' top: "norm"' if tops == 2 else "") + f' normalize_param {{ normalize_type: "{typ}" bp_norm: {str(bp).lower()} }}'
    layer = _layer(text, [shape])
    xt = torch.tensor(x, requires_grad=True)
    out = layer(xt)
    y, norm = (out, None) if tops == 1 else out
    legacy = shape + (1,) * (4 - len(shape))
    td = r.standard_normal(legacy).astype(np.float32)
    nd = r.standard_normal((legacy[0], 1) + legacy[2:]).astype(np.float32)
    want_y, want_norm, want_bd = port_normalize(x, typ, td, nd, bp)
    assert tuple(y.shape) == legacy and layer.reshape([shape])[0] == legacy  # the fork's 4-axis top
    np.testing.assert_allclose(y.detach().numpy(), want_y, rtol=2e-6, atol=1e-7)
    grads = [torch.tensor(td)] + ([torch.tensor(nd)] if tops == 2 else [])
    torch.autograd.backward([y] + ([norm] if tops == 2 else []), grads)
    np.testing.assert_allclose(xt.grad.numpy().reshape(legacy), want_bd, rtol=1e-5, atol=1e-6)
    if tops == 2:
        np.testing.assert_allclose(norm.detach().numpy(), want_norm, rtol=1e-6)


def test_normalize_float64_and_fix_gradient_and_no_bp_norm():
    r = np.random.default_rng(2)
    x = r.standard_normal((3, 4, 2, 2))
    td, nd = r.standard_normal(x.shape), r.standard_normal((3, 1, 2, 2))
    for extra, tops, bp, fix in (("fix_gradient: true", 1, False, True), ("", 2, False, False)):
        layer = _layer(NORM + (' top: "norm"' if tops == 2 else "") + f" normalize_param {{ {extra} }}", [x.shape]).double()
        xt = torch.tensor(x, requires_grad=True)
        out = layer(xt)
        y = out if tops == 1 else out[0]
        if tops == 2:
            assert not out[1].requires_grad  # without bp_norm the norm top passes no diff, as the fork's
        y.backward(torch.tensor(td))
        want_y, _, want_bd = port_normalize(x, "L2", td, nd, bp, fix, np.float64)
        np.testing.assert_allclose(y.detach().numpy(), want_y, rtol=1e-14)
        np.testing.assert_allclose(xt.grad.numpy(), want_bd, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("extra", ["", 'normalize_type: "L1"'])
def test_normalize_gradient_with_bp_norm_is_the_true_one(extra):
    r = np.random.default_rng(3)
    x = torch.tensor(r.uniform(0.2, 1.5, (2, 3, 2, 2)) * np.where(r.random((2, 3, 2, 2)) < 0.5, -1, 1))
    layer = _layer(f'{NORM} top: "norm" normalize_param {{ bp_norm: true {extra} }}', [tuple(x.shape)]).double()
    assert torch.autograd.gradcheck(lambda t: layer(t), (x.requires_grad_(),), atol=1e-7)


@pytest.mark.parametrize("text, shape, lineage", [
    (NORM, (4, 6), "happynear"),                                               # AM-Softmax's norm1 on fc5
    (NORM + ' top: "n"', (2, 8, 3, 3), "happynear"),                            # GNAP: the norm as a top
    (NORM + " normalize_param { }", (2, 8, 3, 3), "happynear"),
    (NORM + ' normalize_param { normalize_type: "L2" }', (4, 6), "happynear"),  # the deploy prototxt
    (NORM + " norm_param { }", (4, 6), "ssd"),
    (NORM + " norm_param { across_spatial: false channel_shared: false }", (2, 8, 3, 3), "ssd"),
])
def test_which_normalize(text, shape, lineage):
    layer = _layer(text, [shape])
    assert layer.lineage == lineage
    assert len(layer.blobs) == (1 if lineage == "ssd" else 0)


@pytest.mark.parametrize("text, shape, match", [
    (NORM, (2, 8, 3, 3), r"'norm1' \(Normalize\): sets neither norm_param nor normalize_param.*4-axis bottom.*"
                         r"`norm_param \{ \}` for SSD's or `normalize_param \{ \}` for happynear's"),
    (NORM, (2, 8, 3), "3-axis bottom"),
    (NORM + " norm_param { } normalize_param { }", (4, 6), "sets both norm_param"),
    (NORM + " norm_param { bp_norm: true }", (4, 6), r"norm_param sets happynear's fields \['bp_norm'\]"),
    (NORM + " normalize_param { eps: 0.001 }", (4, 6), r"normalize_param sets SSD's fields \['eps'\]"),
    (NORM + ' top: "n" norm_param { }', (4, 6), "SSD's Normalize .* takes exactly 1 top; received 2"),
    (NORM + ' normalize_param { normalize_type: "L3" }', (4, 6), "normalize_type 'L3' unknown"),
    (NORM + " normalize_param { }", (2, 3, 2, 2, 2), "at most 4 axes"),
])
def test_normalize_errors(text, shape, match):
    with pytest.raises(LayerSetupError, match=match):
        _layer(text, [shape])


# -- InnerProduct normalize ------------------------------------------------------------------------------
IP_L2 = ('name: "fc6_l2" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 '
         'normalize: true bias_term: false weight_filler { type: "gaussian" std: 0.7 } }')


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ip_normalize_rewrites_the_weight_and_backpropagates_as_the_fork(dtype):
    f = np.float32 if dtype == torch.float32 else np.float64
    r = np.random.default_rng(4)
    x = r.standard_normal((3, 4)).astype(f)
    td = r.standard_normal((3, 5)).astype(f)
    layer = _layer(IP_L2, [x.shape]).to(dtype)
    w0 = layer.blobs[0].detach().numpy().copy()
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(torch.tensor(td))
    w, top, bd, wd = port_ip_normalize(x, w0, td, f)
    tol = dict(rtol=2e-6, atol=1e-7) if f is np.float32 else dict(rtol=1e-13)
    np.testing.assert_allclose(layer.blobs[0].detach().numpy(), w, **tol)  # the blob itself was rewritten
    np.testing.assert_allclose(y.detach().numpy(), top, **tol)
    np.testing.assert_allclose(xt.grad.numpy(), bd, **tol)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), wd, **tol)  # w.r.t. the normalized rows
    with torch.no_grad():  # TEST and no-grad forwards normalize too
        layer.blobs[0].mul_(3)
        layer(xt)
    np.testing.assert_allclose(layer.blobs[0].detach().norm(dim=1).numpy(), 1.0, rtol=1e-6)


def test_ip_normalize_with_transpose_reads_the_memory_as_the_fork():
    """The fork's loop normalizes N rows of K of the blob's memory, also when it is stored (K, N)."""
    layer = _layer(IP_L2.replace("normalize: true", "normalize: true transpose: true"), [(2, 4)]).double()
    w0 = layer.blobs[0].detach().numpy().copy()  # (4, 5)
    layer(torch.ones(2, 4, dtype=torch.float64))
    rows = w0.reshape(5, 4)
    want = (rows / np.sqrt((rows * rows).sum(1, keepdims=True) + 1e-6)).reshape(4, 5)
    np.testing.assert_allclose(layer.blobs[0].detach().numpy(), want, rtol=1e-13)


# -- LabelSpecificAdd ------------------------------------------------------------------------------------
LSA = ('name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label" top: "fc6_margin" '
       '{} label_specific_add_param {{ {} }}')


def test_label_specific_add_matches_the_fork():
    r = np.random.default_rng(5)
    cos = r.uniform(-1, 1, (8, 6)).astype(np.float32)
    cos[0, 2] = np.float32(0.35)  # not > -bias: unchanged
    label = np.array([2, 0, 5, 1, 1, 3, 4, 0], np.float32) + np.float32(0.7)  # static_cast<int> truncates
    layer = _layer(LSA.format("", "bias: -0.35"), [cos.shape, label.shape])
    xt = torch.tensor(cos, requires_grad=True)
    y = layer(xt, torch.tensor(label))
    want = port_label_specific_add(cos, label, np.float32(-0.35))
    assert torch.equal(y.detach(), torch.tensor(want))
    assert y[0, 2] == np.float32(0.35)
    td = torch.tensor(r.standard_normal((8, 6)).astype(np.float32))
    y.backward(td)
    assert torch.equal(xt.grad, td)  # the fork's copy of the diff
    test = _layer(LSA.format('top: "margin"', "bias: -0.35"), [cos.shape, label.shape], TEST)
    y, m = test(torch.tensor(cos), torch.tensor(label))  # TEST: unchanged (transform_test never acts)
    assert torch.equal(y, torch.tensor(cos)) and float(m) == 0.0


def test_label_specific_add_schedule_and_margin_top():
    """face_train_test_wo_fn.prototxt's annealed margin: ``bias = clamp(-5e-05 * iter, -0.4, 0)``."""
    sched = "iteration: 7990 bias_base: 0 bias_gamma: -5e-05 bias_power: 1 bias_min: -0.4 bias_max: 0"
    cos = torch.full((2, 3), 0.9)
    label = torch.tensor([1.0, 2.0])
    layer = _layer(LSA.format('top: "margin"', sched), [(2, 3), (2,)])
    seen = []
    for _ in range(20):
        y, m = layer(cos, label)
        seen.append(float(m))
        assert float(y[0, 1]) == float(np.float32(np.float32(0.9) + np.float32(seen[-1])))
    assert seen == [port_bias_schedule(0, -5e-05, 1, -0.4, 0, 7990 + k) for k in range(20)]
    assert seen[-1] == pytest.approx(-0.4) and seen[0] > -0.4  # reaches bias_min
    assert layer.resume_state() == {"iteration": 8010}
    again = _layer(LSA.format('top: "margin"', sched), [(2, 3), (2,)])
    again.load_resume_state(layer.resume_state())
    assert float(again(cos, label)[1]) == port_bias_schedule(0, -5e-05, 1, -0.4, 0, 8010)


def test_label_specific_add_errors():
    with pytest.raises(LayerSetupError, match="one label per item"):
        _layer(LSA.format("", "bias: -0.35"), [(4, 6), (3,)])
    layer = _layer(LSA.format("", "bias: -0.35"), [(2, 6), (2,)])
    with pytest.raises(LayerSetupError, match=r"label 6 out of range; expected labels in \[0, 6\)"):
        layer(torch.zeros(2, 6), torch.tensor([0.0, 6.0]))


# -- ChannelScale, Flip ----------------------------------------------------------------------------------
CS = 'name: "fc6_margin_scale" type: "ChannelScale" bottom: "x" bottom: "s" top: "y"'


@pytest.mark.parametrize("shapes", [((5, 7), (5, 1, 1, 1)), ((2, 3, 2, 2), (2, 1, 2, 2))])
def test_channel_scale_matches_the_fork(shapes):
    r = np.random.default_rng(6)
    x, s = (r.standard_normal(sh).astype(np.float32) for sh in shapes)
    td = r.standard_normal(shapes[0]).astype(np.float32)
    layer = _layer(CS, list(shapes))
    xt, st = torch.tensor(x, requires_grad=True), torch.tensor(s, requires_grad=True)
    y = layer(xt, st)
    y.backward(torch.tensor(td))
    top, bd, sd = port_channel_scale(x, s, td)
    assert torch.equal(y.detach(), torch.tensor(top)) and torch.equal(xt.grad, torch.tensor(bd))
    np.testing.assert_allclose(st.grad.numpy(), sd, rtol=1e-6, atol=1e-7)
    xd, sdd = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, s))
    assert torch.autograd.gradcheck(lambda a, b: layer.double()(a, b), (xd, sdd))


def test_channel_scale_switches_and_global_scale():
    r = np.random.default_rng(7)
    x, s, td = r.standard_normal((3, 4)), r.uniform(1, 2, (3,)), r.standard_normal((3, 4))
    layer = _layer(CS + " channel_scale_param { do_forward: false do_backward_scale: false }", [(3, 4), (3,)]).double()
    xt, st = torch.tensor(x, requires_grad=True), torch.tensor(s, requires_grad=True)
    y = layer(xt, st)
    y.backward(torch.tensor(td))
    assert torch.equal(y.detach(), torch.tensor(x))
    np.testing.assert_array_equal(xt.grad.numpy(), s[:, None] * td)  # still scaled, as the fork
    assert not st.grad.any()
    g = _layer(CS + ' top: "g" channel_scale_param { global_scale: true max_global_scale: 1.7 }', [(3, 4), (3,)]).double()
    assert (g.param.param[0].lr_mult, float(g.blobs[0].detach())) == (0, -1.0)
    means = []
    for k in range(3):
        sk = s * (k + 1)
        y, factor = g(torch.tensor(x), torch.tensor(sk))
        m = np.abs(sk).sum() / 3
        means.append(min(m if k == 0 else means[-1] * 0.99 + m * 0.01, 1.7))
        assert float(factor) == pytest.approx(means[-1], rel=1e-7)
        np.testing.assert_allclose(y.numpy(), means[-1] * x, rtol=1e-6)
    with pytest.raises(LayerSetupError, match="needs channel_scale_param.global_scale"):
        _layer(CS + ' top: "g"', [(3, 4), (3,)])
    with pytest.raises(LayerSetupError, match="one scale per item and position"):
        _layer(CS, [(3, 4, 2, 2), (3, 1, 1, 1)])


def test_flip_matches_the_fork():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    for extra, want in (("", x[:, :, :, ::-1]), ("flip_param { flip_height: true }", x[:, :, ::-1, ::-1]),
                        ("flip_param { flip_width: false flip_height: true }", x[:, :, ::-1, :])):
        layer = _layer(f'name: "flip_data" type: "Flip" bottom: "data" top: "flip_data" {extra}', [x.shape])
        xt = torch.tensor(x, requires_grad=True)
        y = layer(xt)
        np.testing.assert_array_equal(y.detach().numpy(), want)
        y.backward(torch.tensor(x))
        np.testing.assert_array_equal(xt.grad.numpy(), want)  # the mirrored diff


# -- Scale min_value, Accuracy min_is_better, gaussian_unitball ------------------------------------------
def test_scale_min_value_clamps_the_blob_in_place():
    layer = _layer('name: "cosine_scale" type: "Scale" bottom: "cosine" top: "cosine" scale_param { num_axes: 0 '
                   'bias_term: false min_value: 0.01 filler { value: 10 } }', [(2, 3)])
    x = torch.tensor([[0.5, -0.25, 1.0], [0.0, 0.75, -1.0]])
    with torch.no_grad():
        layer.blobs[0].fill_(-3.0)
    y = layer(x)
    assert float(layer.blobs[0].detach()) == np.float32(0.01) and torch.equal(y, x * np.float32(0.01))
    two = _layer('name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 0 max_value: 2 }',
                 [(2, 3), (2,)])
    st = torch.tensor([1.0, 5.0], requires_grad=True)
    two(x, st).sum().backward()
    assert torch.equal(two(x, st).detach(), x * torch.tensor([[1.0], [2.0]]))
    assert torch.equal(st.grad, x.sum(1))  # the fork's diff of the clamped data: not masked


def test_accuracy_min_is_better_ranks_as_std_less():
    x = np.array([[0.3, 0.1, 0.1, 0.9], [0.5, 0.2, 0.7, 0.2], [0.4, 0.4, 0.4, 0.4]], np.float32)
    label = np.array([1.0, 3.0, 1.0])

    def port(k):  # std::partial_sort of (value, index) pairs with std::less, then membership of the label
        return np.mean([int(label[i]) in [j for _, j in sorted((v, j) for j, v in enumerate(row))[:k]]
                        for i, row in enumerate(x)])

    for k in (1, 2):
        layer = _layer(f'name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "a" accuracy_param {{ '
                       f'min_is_better: true top_k: {k} }}', [x.shape, label.shape])
        assert float(layer(torch.tensor(x), torch.tensor(label))) == pytest.approx(port(k))


def test_gaussian_unitball_filler():
    from neocaffe.layers.fillers import fill

    w = fill(caffe_pb2.FillerParameter(type="gaussian_unitball", std=5), (7, 3, 2))
    np.testing.assert_allclose(w.reshape(7, -1).norm(dim=1).numpy(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="sparsity not supported"):
        fill(caffe_pb2.FillerParameter(type="gaussian_unitball", sparse=2), (7, 3))


def test_softmax_loss_normalize_type():
    text = 'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" softmax_param {{ normalize_type: "{}" }}'
    _layer(text.format("Softmax"), [(2, 3), (2,)])
    _layer(text.format("L2"), [(2, 3), (2,)])  # happynear's normalized loss (tests/layers/test_softmax_normalize_type.py)
    with pytest.raises(LayerSetupError, match="normalize_type 'L3' unknown; expected 'Softmax', 'L2' or 'L1'"):
        _layer(text.format("L3"), [(2, 3), (2,)])


# -- the forks' weight files ------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _layer_bytes(name: str, typ: str, arrays=(), extra: bytes = b"") -> bytes:
    lp = caffe_pb2.LayerParameter(name=name, type=typ)
    for a in arrays:
        blob = lp.blobs.add()
        blob.shape.dim.extend(a.shape)
        blob.data.extend(a.ravel().tolist())
    return _field(100, lp.SerializeToString() + extra)


HEAD_TEXT = ('layer { name: "in" type: "Input" top: "fc5" top: "label" input_param { shape { dim: 2 dim: 4 } '
             'shape { dim: 2 } } }\n'
             'layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" top: "feature_norm" '
             'normalize_param { bp_norm: true } }\n'
             'layer { name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6" inner_product_param { '
             'num_output: 3 normalize: true bias_term: false } }\n'
             'layer { name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label" '
             'top: "fc6_margin" label_specific_add_param { bias: -0.35 } }\n'
             'layer { name: "fc6_margin_scale" type: "Scale" bottom: "fc6_margin" top: "s" param { lr_mult: 0 } '
             'scale_param { filler { type: "constant" value: 30 } } }\n')


def test_the_forks_caffemodels_load_by_name(tmp_path):
    """happynear's file: Normalize with no blobs (its normalize_param at 214, bp_norm at happynear's 3,
    which decodes here as SSD's channel_shared: weights load by name, types and blobs only), the
    normalized fc6 weight, the Scale's 30s (one per class, lr_mult 0). SSD's file: Normalize with its scale blob. Each loads into its
    lineage's layer; the other lineage's layer refuses it by blob count."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    w = np.random.default_rng(9).standard_normal((3, 4)).astype(np.float32)
    hn = (_layer_bytes("norm1", "Normalize", extra=_field(214, b"\x18\x01"))
          + _layer_bytes("fc6_l2", "InnerProduct", [w], _field(117, b"\x08\x03\x10\x00\x38\x01"))
          + _layer_bytes("label_specific_margin", "LabelSpecificAdd", extra=_field(241, b"\x0d" + struct.pack("<f", -0.35)))
          + _layer_bytes("fc6_margin_scale", "Scale", [np.full((3,), 30.0, np.float32)]))  # one per class
    (tmp_path / "am.caffemodel").write_bytes(hn)
    decoded = caffe_pb2.NetParameter.FromString(hn)
    assert decoded.layer[0].normalize_param.channel_shared and decoded.layer[1].inner_product_param.normalize
    net = Net(read_net(HEAD_TEXT), TRAIN)
    net.copy_from(str(tmp_path / "am.caffemodel"))
    np.testing.assert_array_equal(net.params_by_layer()["fc6_l2"][0].detach().numpy(), w)
    assert net.layer("norm1").lineage == "happynear" and not len(net.layer("norm1").blobs)

    scale = np.full((4,), 20.0, np.float32)
    (tmp_path / "ssd.caffemodel").write_bytes(_layer_bytes("norm1", "Normalize", [scale]))
    ssd_text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 2 dim: 2 } } }\n'
                'layer { name: "norm1" type: "Normalize" bottom: "x" top: "y" '
                'norm_param { across_spatial: false channel_shared: false } }\n')
    ssd = Net(read_net(ssd_text), TEST)
    ssd.copy_from(str(tmp_path / "ssd.caffemodel"))
    np.testing.assert_array_equal(ssd.params_by_layer()["norm1"][0].detach().numpy(), scale)
    with pytest.raises(Exception, match="Incompatible number of blobs for layer 'norm1'"):
        Net(read_net(ssd_text), TEST).copy_from(str(tmp_path / "am.caffemodel"))


# -- the real nets, trained by the solver ---------------------------------------------------------------
IMAGE_DATA = """layer {{ name: "data" type: "ImageData" top: "data" top: "label" include {{ phase: {phase} }}
  transform_param {{ mean_value: 128 scale: 0.0078125 mirror: true }}
  image_data_param {{ source: "C:/datasets/CASIA-maxpy-clean-aligned-96/{lst}.txt"
    root_folder: "C:/datasets/CASIA-maxpy-clean-aligned-96/" batch_size: {bs} shuffle: true }} }}
"""
REAL_DATA = (IMAGE_DATA.format(phase="TRAIN", lst="list", bs=256) + IMAGE_DATA.format(phase="TEST", lst="val", bs=32))


def _conv(name: str, bottom: str, n: int, first: bool) -> str:
    """A 3x3 convolution of the Face-ResNet and its in-place PReLU: a stage's first (stride 2, xavier,
    bias lr_mult 2) or a residual unit's (gaussian 0.01, bias lr_mult 0)."""
    bias_lr = "lr_mult: 2 decay_mult: 0" if first else "lr_mult: 0 decay_mult: 0"
    filler = 'type: "xavier"' if first else 'type: "gaussian" std: 0.01'
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            f'param {{ lr_mult: 1 decay_mult: 1 }} param {{ {bias_lr} }} convolution_param {{ num_output: {n} '
            f'kernel_size: 3 stride: {2 if first else 1} pad: 1 weight_filler {{ {filler} }} '
            f'bias_filler {{ type: "constant" value: 0 }} }} }}\n'
            f'layer {{ name: "relu{name[4:]}" type: "PReLU" bottom: "{name}" top: "{name}" }}\n')


def face_resnet(bottom: str = "data", widths=(64, 128, 256, 512)) -> str:
    """AMSoftmax's Face-ResNet trunk (prototxt/face_train_test.prototxt: conv1_1 ... res4_3, fc5 512): per
    stage a stride-2 convolution, then 1, 2, 4, 1 residual units of two convolutions each."""
    text, prev = "", bottom
    for stage, (n, units) in enumerate(zip(widths, (1, 2, 4, 1)), start=1):
        text += _conv(f"conv{stage}_1", prev, n, True)
        prev = f"conv{stage}_1"
        for u in range(units):
            a, b = f"conv{stage}_{2 * u + 2}", f"conv{stage}_{2 * u + 3}"
            text += _conv(a, prev, n, False) + _conv(b, a, n, False)
            text += (f'layer {{ name: "res{stage}_{2 * u + 3}" type: "Eltwise" bottom: "{prev}" bottom: "{b}" '
                     f'top: "res{stage}_{2 * u + 3}" eltwise_param {{ operation: 1 }} }}\n')
            prev = f"res{stage}_{2 * u + 3}"
    return text + (f'layer {{ name: "fc5" type: "InnerProduct" bottom: "{prev}" top: "fc5" param {{ lr_mult: 1 '
                   'decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } inner_product_param { num_output: 512 '
                   'weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0 } } }\n')


def am_softmax_head(classes: int = 10516, feature_normalized: bool = True) -> str:
    """face_train_test.prototxt's head (norm1, the normalized fc6_l2, the margin -0.35, the fixed scale 30,
    SoftmaxWithLoss, Accuracy in TEST); ``feature_normalized=False``: face_train_test_wo_fn.prototxt's (the
    norm as a second top with bp_norm, the annealed margin with its top, ChannelScale by the norm)."""
    if feature_normalized:
        norm = 'layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" }\n'
        margin = 'top: "fc6_margin" label_specific_add_param { bias: -0.35 }'
        scale = ('layer { name: "fc6_margin_scale" type: "Scale" bottom: "fc6_margin" top: "fc6_margin_scale" '
                 'param { lr_mult: 0 decay_mult: 0 } scale_param { filler { type: "constant" value: 30 } } }\n')
    else:
        norm = ('layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" top: "feature_norm" '
                'normalize_param { bp_norm: true } }\n')
        margin = ('top: "fc6_margin" top: "margin" label_specific_add_param { iteration: 0 bias_base: 0 '
                  'bias_gamma: -5e-05 bias_power: 1 bias_min: -0.4 bias_max: 0 }')
        scale = ('layer { name: "fc6_margin_scale" type: "ChannelScale" bottom: "fc6_margin" bottom: "feature_norm" '
                 'top: "fc6_margin_scale" }\n')
    return (norm + 'layer { name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6" param { lr_mult: 1 } '
            f'inner_product_param {{ num_output: {classes} normalize: true weight_filler {{ type: "xavier" }} '
            'bias_term: false } }\n'
            'layer { name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label" '
            f'{margin} }}\n' + scale
            + 'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale" bottom: "label" '
              'top: "softmax_loss" loss_weight: 1 }\n'
              'layer { name: "Accuracy" type: "Accuracy" bottom: "fc6" bottom: "label" top: "accuracy" '
              'include { phase: TEST } }\n')


def am_softmax_net(data: str = REAL_DATA, classes: int = 10516, feature_normalized: bool = True) -> str:
    """The text of AMSoftmax's prototxt/face_train_test.prototxt (or face_train_test_wo_fn.prototxt): it
    parses to the same NetParameter as the real file (checked against happynear/AMSoftmax @ f57f7a7)."""
    return 'name: "Face-ResNet"\n' + data + face_resnet() + am_softmax_head(classes, feature_normalized)


SMALL = (3, 16, 16)  # the Face-ResNet's four stride-2 stages make it 1 x 1 before fc5
STEPS = 10


def _input(n: int, shape=(3, 28, 24)) -> str:
    dims = " ".join(f"dim: {d}" for d in (n,) + shape)
    return (f'layer {{ name: "data" type: "Input" top: "data" top: "label" '
            f'input_param {{ shape {{ {dims} }} shape {{ dim: {n} }} }} }}\n')


def _batch(n: int, classes: int, shape=(3, 28, 24), seed=0):
    """Images whose class is a bright block in a class-specific place, in the fork's scaled range."""
    g = np.random.default_rng(seed)
    label = np.arange(n) % classes
    data = g.normal(0, 0.3, (n,) + shape).astype(np.float32)
    h, w = shape[1] // 2, shape[2] // 3
    for i, c in enumerate(label):
        data[i, c % 3, (c // 3 % 2) * h:(c // 3 % 2) * h + h, (c % 3) * w:(c % 3) * w + w] += 1.0
    return torch.tensor(data), torch.tensor(label, dtype=torch.float32)


def _solver(folder, net: str, base_lr: float = 0.1):
    """face_solver.prototxt's settings (momentum 0.9, weight_decay 0.0005), fixed lr, no snapshots."""
    from neocaffe.solver.solver import Solver

    (folder / "net.prototxt").write_text(net)
    p = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{folder / "net.prototxt"}" base_lr: {base_lr} lr_policy: "fixed" momentum: 0.9 '
                      'weight_decay: 0.0005 display: 0 random_seed: 3 solver_mode: CPU', p)
    return Solver(p)


def _train(s, data, label, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        s.net.set_blob("data", data)
        s.net.set_blob("label", label)
        s.step(1)
        losses.append(float(s.net.blob_data["softmax_loss"]))
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("feature_normalized", [True, False], ids=["face_train_test", "face_train_test_wo_fn"])
def test_am_softmax_face_resnet_trains(tmp_path, feature_normalized):
    """The real Face-ResNet and head at their widths on 16 x 16 images, 6 classes instead of 10516, the
    ImageData layers replaced by an Input fed one fixed batch: the loss falls, fc6's rows stay unit after
    every forward, the margin acts once the label cosines pass 0.35 (or follows its schedule), and the
    TEST net (Accuracy on the unmargined fc6) runs with the trained weights."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    data, label = _batch(12, 6, SMALL)
    s = _solver(tmp_path, am_softmax_net(_input(12, SMALL), 6, feature_normalized), base_lr=0.05)
    losses = _train(s, data, label, STEPS)
    net = s.net
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"AM-Softmax ({'fn' if feature_normalized else 'wo_fn'}): loss first 3 {first:.3f}, last 3 {last:.3f}")
    assert np.isfinite(losses).all() and last < 0.6 * first, losses
    net.forward()
    np.testing.assert_allclose(net.params_by_layer()["fc6_l2"][0].detach().norm(dim=1).numpy(), 1.0, rtol=1e-5)
    fc6, margin = net.blob_data["fc6"], net.blob_data["fc6_margin"]
    lab = label.long()
    cos_y = fc6.gather(1, lab[:, None]).squeeze(1)
    if feature_normalized:
        assert (cos_y > 0.35).any()
        want = torch.where(cos_y > 0.35, cos_y + np.float32(-0.35), cos_y)
        assert torch.equal(margin.gather(1, lab[:, None]).squeeze(1), want)
        assert np.allclose(net.blob_data["norm1"].reshape(12, -1).norm(dim=1).numpy(), 1.0, atol=1e-5)
    else:
        assert float(net.blob_data["margin"][0]) == port_bias_schedule(0, -5e-05, 1, -0.4, 0, STEPS)
        feat_norm = net.blob_data["fc5"].norm(dim=1)
        np.testing.assert_allclose(net.blob_data["feature_norm"].reshape(-1).numpy(), feat_norm.numpy(), rtol=1e-5)
        np.testing.assert_allclose(net.blob_data["fc6_margin_scale"].numpy(),
                                   (margin * feat_norm[:, None]).numpy(), rtol=1e-5)
    test = Net(read_net(am_softmax_net(_input(12, SMALL), 6, feature_normalized)), TEST)
    test.share_with(net)
    test.set_blob("data", data)
    test.set_blob("label", label)
    test.forward()
    assert torch.equal(test.blob_data["fc6_margin"], test.blob_data["fc6"])  # no margin in TEST
    assert 0.0 <= float(test.blob_data["accuracy"]) <= 1.0
    s.close()


def test_am_softmax_deploy_mirror_feature():
    """face_deploy_mirror_normalize.prototxt (its V1-style input header, Flip, Concat, the trunk, Slice, the
    sum of the two halves' fc5 and an L2 Normalize) on 2 images: the feature is normalize(fc5(x) +
    fc5(mirror(x)))."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    text = am_softmax_deploy(batch=2, size=(28, 24))
    net = Net(read_net(text), TEST)
    x = _batch(2, 2)[0]
    net.set_blob("data", x)
    net.forward()
    feat = net.blob_data["norm1"]
    assert tuple(feat.shape) == (2, 512, 1, 1)
    fc5 = net.blob_data["fc5"]
    both = fc5[:2] + fc5[2:]
    np.testing.assert_allclose(feat.reshape(2, -1).numpy(),
                               (both / torch.sqrt((both * both).sum(1, keepdim=True) + 1e-6)).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(net.blob_data["flip_data"].numpy(), x.flip(3).numpy())


def am_softmax_deploy(batch: int = 100, size=(112, 96)) -> str:
    """The text of AMSoftmax's prototxt/face_deploy_mirror_normalize.prototxt (same NetParameter as the
    real file at batch 100 and 112 x 96)."""
    return (f'input: "data"\ninput_dim: {batch}\ninput_dim: 3\ninput_dim: {size[0]}\ninput_dim: {size[1]}\n'
            'layer { name: "flip_data" type: "Flip" bottom: "data" top: "flip_data" }\n'
            'layer { name: "concat_data" type: "Concat" bottom: "data" bottom: "flip_data" top: "concat_data" '
            'concat_param { axis: 0 } }\n'
            + face_resnet("concat_data")
            + 'layer { name: "slice_fc5" type: "Slice" bottom: "fc5" top: "fc5_orig" top: "fc5_mirror" '
              'slice_param { axis: 0 } }\n'
              'layer { name: "eltmax_fc5" type: "Eltwise" bottom: "fc5_orig" bottom: "fc5_mirror" top: "eltmax_fc5" '
              'eltwise_param { operation: SUM } }\n'
              'layer { name: "normalize1" type: "Normalize" bottom: "eltmax_fc5" top: "norm1" '
              'normalize_param { normalize_type: "L2" } }\n')


# NormFace's prototxt/scaled_cosine_softmax.prototxt (happynear/NormFace @ 8438887), as written: the layers
# to put after a net's last inner product ("last_ip_layer"), 10572 CASIA-WebFace identities
SCALED_COSINE_SOFTMAX = """layer {
  name: "normalize1"
  type: "Normalize"
  bottom: "last_ip_layer"
  top: "norm1"
}
layer {
  name: "cosine_layer"
  type: "InnerProduct"
  bottom: "norm1"
  top: "cosine"
  param {
    lr_mult: 100
    decay_mult: 0
  }
  inner_product_param{
    bias_term: false
    normalize: true
    num_output: 10572
    weight_filler {
      type: "gaussian_unitball"
    }
  }
}
layer {
  name: "cosine_scale"
  type: "Scale"
  bottom: "cosine"
  top: "cosine"
  scale_param {
    num_axes: 0
    bias_term: false
    min_value: 0.01
    filler{
     value: 10
    }
    bias_filler{
      value: 0
    }
  }
}
layer {
  name: "softmax_loss"
  type: "SoftmaxWithLoss"
  bottom: "cosine"
  bottom: "label"
  top: "softmax_loss"
  loss_weight: 1
}

layer {
  name: "Accuracy"
  type: "Accuracy"
  bottom: "cosine"
  bottom: "label"
  top: "accuracy"
  include { 
    phase: TEST
  }
  accuracy_param {
    min_is_better: false
  }
}
"""


def test_normface_scaled_cosine_softmax_trains(tmp_path):
    """NormFace's head as written (10572 classes reduced to 6) after a small conv trunk whose last inner
    product is ``last_ip_layer``: the loss falls, the learned scale (lr_mult 1) moves from 10 and stays
    above min_value, the cosine weight rows stay unit (filled by gaussian_unitball)."""
    trunk = (_input(12) + _conv("conv1_1", "data", 16, True) + _conv("conv1_2", "conv1_1", 16, False)
             + 'layer { name: "ip" type: "InnerProduct" bottom: "conv1_2" top: "last_ip_layer" '
               'inner_product_param { num_output: 32 weight_filler { type: "xavier" } } }\n')
    head = SCALED_COSINE_SOFTMAX.replace("num_output: 10572", "num_output: 6")
    s = _solver(tmp_path, trunk + head, base_lr=0.01)
    w0 = s.net.params_by_layer()["cosine_layer"][0].detach()
    np.testing.assert_allclose(w0.norm(dim=1).numpy(), 1.0, rtol=1e-6)  # gaussian_unitball
    data, label = _batch(12, 6, seed=1)
    losses = _train(s, data, label, 30)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    scale = float(s.net.params_by_layer()["cosine_scale"][0].detach())
    print(f"NormFace: loss first 3 {first:.3f}, last 3 {last:.3f}; scale 10 -> {scale:.3f}")
    assert np.isfinite(losses).all() and last < 0.6 * first, losses
    assert scale != 10.0 and scale >= np.float32(0.01)
    s.net.forward()
    np.testing.assert_allclose(s.net.params_by_layer()["cosine_layer"][0].detach().norm(dim=1).numpy(), 1.0, rtol=1e-5)
    s.close()


def test_onnx_export_of_happynear_normalize_and_normalized_ip():
    """The deploy-time layers exported to ONNX equal the net: Flip, happynear's Normalize (L2 and L1, the
    norm top, 2-axis bottoms made 4-axis), ChannelScale by that norm, and InnerProduct ``normalize`` (its
    weight as the forward rewrites it, from a stored weight that is not unit yet)."""
    pytest.importorskip("onnxruntime")
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from tests.export.helpers import TOLERANCE, onnx_errors

    text = ('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'
            'layer { name: "flip" type: "Flip" bottom: "data" top: "flip" }\n'
            'layer { name: "gnap" type: "Normalize" bottom: "flip" top: "fmap" top: "fnorm" '
            'normalize_param { normalize_type: "L1" } }\n'
            'layer { name: "scaled" type: "ChannelScale" bottom: "fmap" bottom: "fnorm" top: "scaled" }\n'
            'layer { name: "fc5" type: "InnerProduct" bottom: "scaled" top: "fc5" inner_product_param { num_output: 6 '
            'weight_filler { type: "gaussian" std: 0.3 } } }\n'
            'layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" }\n'
            'layer { name: "fc6" type: "InnerProduct" bottom: "norm1" top: "fc6" inner_product_param { num_output: 4 '
            'normalize: true bias_term: false weight_filler { type: "gaussian" std: 2 } } }\n')
    net = Net(read_net(text), TEST)
    x = np.random.default_rng(12).standard_normal((2, 3, 4, 5)).astype(np.float32)
    errors = onnx_errors(net, {"data": x})
    assert set(errors) == {"fc6"} and errors["fc6"] <= TOLERANCE, errors


def test_scale_min_max_in_the_bn_chain_and_the_onnx_export():
    """A Scale with ``min_value``/``max_value`` whose stored value lies outside the range (a weight file
    from elsewhere) scales by the clamped value on every path: the eager forward, the inference path
    that fuses BatchNorm -> Scale -> ReLU into one kernel (which must leave such a Scale to its own
    forward), and the ONNX export (a Clip of the scale)."""
    pytest.importorskip("onnxruntime")
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from tests.export.helpers import TOLERANCE, onnx_errors

    # the Power layer gives BatchNorm a fresh top to work in place on, as a convolution would
    text = ('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'
            'layer { name: "copy" type: "Power" bottom: "data" top: "x" }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }\n'
            'layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true '
            'min_value: 0.5 max_value: 2 } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }\n')
    def fresh() -> Net:
        net = Net(read_net(text), TEST)
        bn, sc = net.layers[2], net.layers[3]
        with torch.no_grad():
            bn.blobs[0].copy_(torch.tensor([0.1, -0.2, 0.3]))
            bn.blobs[1].copy_(torch.tensor([1.0, 2.0, 0.5]))
            bn.blobs[2].fill_(1.0)
            sc.blobs[0].copy_(torch.tensor([5.0, 0.1, 1.5]))
            sc.blobs[1].copy_(torch.tensor([0.1, -0.1, 0.0]))
        return net

    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    mean = np.array([0.1, -0.2, 0.3], np.float32)[:, None, None]
    var = np.array([1.0, 2.0, 0.5], np.float32)[:, None, None]
    s = np.array([2.0, 0.5, 1.5], np.float32)[:, None, None]
    b = np.array([0.1, -0.1, 0.0], np.float32)[:, None, None]
    want = np.maximum((x - mean) / np.sqrt(var + np.float32(1e-5)) * s + b, 0)
    net = fresh()
    for _ in range(2):  # the second forward takes the steady path
        with torch.no_grad():
            net.forward({"data": torch.from_numpy(x.copy())})
        np.testing.assert_allclose(net.blob("x").numpy(), want, rtol=1e-5, atol=1e-6)
    errors = onnx_errors(fresh(), {"data": x})  # exported before any forward clamped the blob
    assert all(e <= TOLERANCE for e in errors.values()), errors
