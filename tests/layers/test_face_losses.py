"""SphereFace's MarginInnerProduct (A-Softmax) and caffe-face's CenterLoss against loop ports of the
forks' CPU code (wy1iu/sphereface @ 966c44c, tools/caffe-sphereface/src/caffe/layers/
margin_inner_product_layer.cpp; ydwen/caffe-face @ 48ff38e, src/caffe/layers/center_loss_layer.cpp):
tops, bottom diffs, weight / center diffs, the in-place weight normalization, the lambda schedule, every
margin type, float labels; the errors; the schedule across a resume (layer state and solver snapshot);
and trimmed copies of the forks' training nets trained by the solver with the loss falling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE")


# -- loop ports of the forks' Forward_cpu / Backward_cpu ------------------------------------------
def port_lambda(base, gamma, power, lambda_min, it, f):
    """lambda_ = max(base * pow(1 + gamma * iter_, -power), lambda_min), in the data type ``f`` (the
    parameters are the proto's floats, widened for double)."""
    base, gamma, power, lambda_min = (float(np.float32(v)) for v in (base, gamma, power, lambda_min))
    if f is np.float64:
        return max(base * (1.0 + gamma * it) ** -power, lambda_min)
    t = f(1) + f(gamma) * f(it)
    lam = f(base) * f(np.float64(t) ** -np.float64(f(power)))
    return max(lam, f(lambda_min))


def port_margin(x, w, label, margin, lam, top_diff, f):
    """MarginInnerProductLayer::Forward_cpu + Backward_cpu on (M, K) ``x``, (N, K) ``w`` (normalized
    here in place, as the fork's forward does), integer-valued float ``label``. Returns top, the
    normalized weight, bottom diff and weight diff."""
    x, w, td = x.astype(f), w.astype(f).copy(), top_diff.astype(f)
    M, K = x.shape
    N = w.shape[0]
    lam = f(lam)
    for n in range(N):  # normalize weight
        w[n] = w[n] * (f(1) / f(np.sqrt(f(np.dot(w[n], w[n])))))
    x_norm = np.array([f(np.sqrt(f(np.dot(x[i], x[i])))) for i in range(M)], dtype=f)
    top = np.zeros((M, N), dtype=f)
    cos = np.zeros((M, N), dtype=f)
    for i in range(M):
        for j in range(N):
            top[i, j] = f(np.dot(x[i], w[j]))
            cos[i, j] = top[i, j] * (f(1) / x_norm[i])
    s0 = np.sign(cos)
    c2, c3, c4 = (np.array(np.power(cos.astype(np.float64), k), dtype=f) for k in (2, 3, 4))
    s1 = np.sign(np.abs(cos) - f(0.5))
    s2 = s0 * (s1 + 1) - 2
    s3 = s0 * np.sign(2 * c2 - 1)
    s4 = 2 * s0 + s3 - 3
    lab = [int(v) for v in label]  # static_cast<int>
    if margin != "SINGLE":
        for i in range(M):
            y = lab[i]
            if margin == "DOUBLE":
                psi = 2 * s0[i, y] * c2[i, y] - 1
            elif margin == "TRIPLE":
                psi = s1[i, y] * (4 * c3[i, y] - 3 * cos[i, y]) + s2[i, y]
            else:
                psi = s3[i, y] * (8 * c4[i, y] - 8 * c2[i, y] + 1) + s4[i, y]
            top[i, y] = x_norm[i] * psi
        for i in range(M):
            for j in range(N):
                top[i, j] = top[i, j] + lam * f(np.dot(x[i], w[j]))
        top = top * (f(1) / (f(1) + lam))
    w_diff = np.zeros((N, K), dtype=f)
    for j in range(N):
        for i in range(M):
            w_diff[j] += td[i, j] * x[i]
    bd = np.zeros((M, K), dtype=f)
    inv, rest = f(1) / (f(1) + lam), lam / (f(1) + lam)
    for i in range(M):
        y = lab[i]
        for j in range(N):
            if margin == "SINGLE":
                bd[i] += td[i, j] * w[j]
            elif j != y:
                bd[i] += inv * td[i, j] * w[j]
            else:
                if margin == "DOUBLE":
                    cw = 4 * s0[i, j] * cos[i, j]
                    cx = f(1) / -x_norm[i] * (2 * s0[i, j] * c2[i, j] + 1)
                elif margin == "TRIPLE":
                    cw = s1[i, j] * (12 * c2[i, j] - 3)
                    cx = f(1) / -x_norm[i] * (8 * s1[i, j] * c3[i, j] - s2[i, j])
                else:
                    cw = s3[i, j] * (32 * c3[i, j] - 16 * cos[i, j])
                    cx = f(1) / -x_norm[i] * (s3[i, j] * (24 * c4[i, j] - 8 * c2[i, j] - 1) - s4[i, j])
                unit = f(np.sqrt(cw * cw + cx * cx))
                bd[i] += inv * td[i, j] * (cw / unit) * w[j]
                bd[i] += inv * td[i, j] * (cx / unit) * x[i]
        if margin != "SINGLE":
            for j in range(N):
                bd[i] += rest * td[i, j] * w[j]
    return top, w, bd, w_diff


def port_center_loss(x, c, label, top_diff, f):
    """CenterLossLayer::Forward_cpu + Backward_cpu: loss, bottom diff and the center diff written."""
    x, c = x.astype(f), c.astype(f)
    M, K = x.shape
    N = c.shape[0]
    lab = [int(v) for v in label]
    dist = np.stack([x[i] - c[lab[i]] for i in range(M)])
    loss = f(np.dot(dist.ravel(), dist.ravel())) / f(M) / f(2)
    c_diff = np.zeros((N, K), dtype=f)
    for n in range(N):
        count, variation = 0, np.zeros(K, dtype=f)
        for m in range(M):
            if lab[m] == n:
                count += 1
                variation = variation - dist[m]
        c_diff[n] += (f(1) / (f(count) + f(1))) * variation
    bd = dist * (f(top_diff) / f(M))
    return loss, bd, c_diff


# -- helpers ----------------------------------------------------------------------------------------
def build(text: str, shapes, phase=TRAIN):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, shapes, phase)


def margin_text(margin: str, extra: str = "", n: int = 5, tops: int = 2) -> str:
    return ('name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" '
            + ('top: "lambda" ' if tops == 2 else "")
            + f'margin_inner_product_param {{ num_output: {n} type: {margin} '
              f'weight_filler {{ type: "gaussian" std: 0.7 }} {extra} }}')


SCHEDULE = dict(base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0)  # sphereface_model.prototxt's
SCHED_TEXT = "base: 1000 gamma: 0.12 power: 1 lambda_min: 5"


def run_margin(layer, x, label, td, dtype):
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    layer.blobs[0].grad = None
    tops = layer(xt, torch.tensor(label, dtype=dtype))
    tops = tops if isinstance(tops, tuple) else (tops,)
    tops[0].backward(torch.tensor(td, dtype=dtype))
    return [t.detach().numpy() for t in tops], xt.grad.numpy(), layer.blobs[0].grad.numpy()


# -- MarginInnerProduct -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("margin", TYPES)
def test_margin_matches_the_forks_cpu_code_over_iterations(margin, dtype):
    f = np.float64 if dtype == torch.float64 else np.float32
    tol = dict(rtol=1e-11, atol=1e-12) if f is np.float64 else dict(rtol=2e-5, atol=2e-6)
    r = np.random.default_rng(1)
    layer = build(margin_text(margin, SCHED_TEXT + " iteration: 10"), [(6, 2, 3), (6,)]).to(dtype)
    w = layer.blobs[0].detach().numpy().copy()
    for it in range(11, 14):  # three forwards: the schedule moves, the weights stay normalized
        x = r.standard_normal((6, 2, 3)) * r.uniform(0.5, 3, (6, 1, 1))
        label = r.integers(0, 5, 6).astype(np.float64)  # labels come as float blobs
        td = r.standard_normal((6, 5))
        (top, lam), bd, wd = run_margin(layer, x, label, td, dtype)
        lam_ref = port_lambda(**SCHEDULE, it=it, f=f)
        top_ref, w_ref, bd_ref, wd_ref = port_margin(x.reshape(6, 6), w, label, margin, lam_ref, td, f)
        assert lam.shape == (1,) and lam[0] == lam_ref  # the second top: lambda, bit for bit
        np.testing.assert_allclose(layer.blobs[0].detach().numpy(), w_ref, **tol)  # normalized in place
        np.testing.assert_allclose(top, top_ref, **tol)
        np.testing.assert_allclose(bd.reshape(6, 6), bd_ref, **tol)
        np.testing.assert_allclose(wd, wd_ref, **tol)
        w = layer.blobs[0].detach().numpy().copy()
    assert layer.iteration == 13


def _psi(c, margin):
    """cos(m theta) extended as the fork's forward does (cpp:196-258), for autograd's true gradient."""
    s0 = c.sign()
    if margin == "DOUBLE":
        return 2 * s0 * c ** 2 - 1
    if margin == "TRIPLE":
        s1 = (c.abs() - 0.5).sign()
        return s1 * (4 * c ** 3 - 3 * c) + s0 * (1 + s1) - 2
    s3 = s0 * (2 * c ** 2 - 1).sign()
    return s3 * (8 * c ** 4 - 8 * c ** 2 + 1) + 2 * s0 + s3 - 3


@pytest.mark.parametrize("margin", TYPES[1:])
def test_margin_bottom_diff_is_the_forks_direction_not_the_gradient(margin):
    """At the label column the bottom diff is the true gradient ``coeff_w w + coeff_x x`` divided by
    ``|(coeff_w, coeff_x)|``: parallel to it, of another length. Off the label column it is the plain
    inner product's (``w_j``), which is the true gradient there."""
    r = np.random.default_rng(2)
    layer = build(margin_text(margin, "base: 0 lambda_min: 0"), [(6, 3), (6,)]).double()  # lambda = 0
    x = torch.tensor(r.standard_normal((6, 3)) * 2, requires_grad=True)
    label = torch.tensor([0.0, 1.0, 2.0, 4.0, 3.0, 1.0])
    lab = label.long()
    top = layer(x, label)[0]
    on = torch.zeros(6, 5, dtype=torch.float64)
    on[torch.arange(6), lab] = 1.0
    (fork,) = torch.autograd.grad(top, x, on, retain_graph=True)
    w = layer.blobs[0].detach()
    xx = x.detach().clone().requires_grad_(True)
    norm = xx.norm(dim=1)
    cos = (xx * w[lab]).sum(1) / norm
    (true,) = torch.autograd.grad((norm * _psi(cos, margin)).sum(), xx)
    cosine = (fork * true).sum(1) / (fork.norm(dim=1) * true.norm(dim=1))
    np.testing.assert_allclose(cosine.numpy(), 1.0, rtol=1e-9)  # the same direction
    assert not torch.allclose(fork.norm(dim=1), true.norm(dim=1), rtol=1e-2)  # not the same length
    off = torch.zeros(6, 5, dtype=torch.float64)
    off[torch.arange(6), (lab + 1) % 5] = 1.0
    (plain,) = torch.autograd.grad(top, x, off)
    np.testing.assert_allclose(plain.numpy(), w[(lab + 1) % 5].numpy(), rtol=1e-12)


def test_margin_single_is_the_normalized_inner_product_with_its_true_gradient():
    r = np.random.default_rng(3)
    layer = build(margin_text("SINGLE", SCHED_TEXT, tops=1), [(3, 4), (3,)]).double()
    w0 = layer.blobs[0].detach().clone()
    x = torch.tensor(r.standard_normal((3, 4)), requires_grad=True)
    top = layer(x, torch.tensor([1.0, 0.0, 4.0]))
    assert isinstance(top, torch.Tensor)  # one top: no lambda (the fork would index top[1] out of range)
    wn = w0 / w0.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(top.detach().numpy(), (x @ wn.t()).detach().numpy(), rtol=1e-12)
    assert torch.autograd.gradcheck(lambda t: layer(t, torch.tensor([1.0, 0.0, 4.0])), (x,))


def test_margin_weight_is_normalized_in_the_parameter_itself():
    layer = build(margin_text("QUADRUPLE", SCHED_TEXT), [(2, 3), (2,)])
    param = layer.blobs[0]
    ptr, before = param.data_ptr(), param.detach().clone()
    layer(torch.ones(2, 3), torch.zeros(2))
    assert param.data_ptr() == ptr and layer.blobs[0] is param  # the same storage, rewritten
    np.testing.assert_allclose(param.detach().norm(dim=1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(param.detach().numpy(), (before / before.norm(dim=1, keepdim=True)).numpy(), rtol=1e-6)


def test_margin_labels_truncate_as_static_cast():
    r = np.random.default_rng(4)
    x = r.standard_normal((3, 4))
    outs = []
    for label in ([2.0, 0.0, 3.0], [2.9, 0.5, 3.99]):
        layer = build(margin_text("TRIPLE", SCHED_TEXT), [(3, 4), (3,)]).double()
        with torch.no_grad():
            layer.blobs[0].copy_(torch.as_tensor(r.standard_normal((5, 4))) if not outs else outs[0][1])
        w = layer.blobs[0].detach().clone()
        outs.append((layer(torch.tensor(x), torch.tensor(label))[0].detach(), w))
    assert torch.equal(outs[0][0], outs[1][0])


def test_lambda_schedule_floor_and_start():
    p = caffe_pb2.MarginInnerProductParameter(base=1000, gamma=0.12, power=1, lambda_min=5, iteration=0)
    from neocaffe.layers.face_losses import margin_lambda

    got = [margin_lambda(p, it) for it in (1, 2, 10, 100, 1000, 1658, 1659, 5000)]
    want = [float(port_lambda(**SCHEDULE, it=it, f=np.float32)) for it in (1, 2, 10, 100, 1000, 1658, 1659, 5000)]
    assert got == want
    assert got[0] == pytest.approx(1000 / 1.12, rel=1e-6) and got[-1] == 5.0 and got[-2] == 5.0
    assert got[-3] > 5.0  # 1000 / (1 + 0.12 * 1658) = 5.001; at 1659, 4.998: the floor
    layer = build(margin_text("DOUBLE", "base: 10 gamma: 1 power: 2 iteration: 4"), [(2, 3), (2,)])
    lams = [float(layer(torch.ones(2, 3), torch.zeros(2))[1]) for _ in range(3)]
    assert lams == [float(np.float32(10) * np.float32(np.float64(np.float32(1 + k)) ** -2.0)) for k in (5, 6, 7)]


def test_margin_resume_state_continues_the_schedule():
    x, label = torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])
    a = build(margin_text("QUADRUPLE", "base: 100 gamma: 0.5 power: 1"), [(4, 3), (4,)])
    for _ in range(5):
        a(x, label)
    state = a.resume_state()
    assert state == {"iteration": 5}
    b = build(margin_text("QUADRUPLE", "base: 100 gamma: 0.5 power: 1"), [(4, 3), (4,)])
    with torch.no_grad():
        b.blobs[0].copy_(a.blobs[0])
    b.load_resume_state(state)
    ya, la = a(x, label)
    yb, lb = b(x, label)
    assert float(la) == float(lb) == float(np.float32(100) * np.float32(1 / np.float64(np.float32(4.0))))
    assert torch.equal(ya, yb)
    with pytest.raises(LayerSetupError, match=r"layer 'fc6' \(MarginInnerProduct\): resume state"):
        b.load_resume_state({"iter": 3})


@pytest.mark.parametrize("text,shapes,match", [
    (margin_text("DOUBLE", n=0), [(2, 3), (2,)], r"num_output must be positive; received 0"),
    (margin_text("DOUBLE", "axis: 3"), [(2, 3), (2,)], r"margin_inner_product_param.axis 3 out of range"),
    (margin_text("DOUBLE"), [(2, 3), (3,)], r"one label per inner product.*received label shape \(3,\)"),
    (margin_text("DOUBLE", "axis: 2"), [(2, 3, 4), (2,)], r"bottom \(2, 3, 4\) makes 6"),
])
def test_margin_setup_errors(text, shapes, match):
    with pytest.raises(LayerSetupError, match=r"layer 'fc6' \(MarginInnerProduct\).*" + match):
        layer = build(text, shapes)
        layer.reshape(shapes)


def test_margin_runtime_errors():
    layer = build(margin_text("DOUBLE"), [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match=r"'fc6' \(MarginInnerProduct\).*expected 3"):
        layer.reshape([(2, 4), (2,)])
    with pytest.raises(LayerSetupError, match=r"'fc6' \(MarginInnerProduct\): label 5 out of range; expected "
                                              r"labels in \[0, 5\)"):
        layer(torch.ones(2, 3), torch.tensor([1.0, 5.0]))
    with pytest.raises(LayerSetupError, match=r"label -1 out of range"):
        layer(torch.ones(2, 3), torch.tensor([-1.0, 0.0]))
    text = margin_text("DOUBLE") + ' top: "extra"'
    with pytest.raises(LayerSetupError, match=r"'fc6' \(MarginInnerProduct\) takes at most 2 top"):
        build(text, [(2, 3), (2,)])


# -- CenterLoss -------------------------------------------------------------------------------------
def center_text(extra: str = "", n: int = 4) -> str:
    return ('name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss" '
            f'center_loss_param {{ num_output: {n} center_filler {{ type: "gaussian" std: 1 }} {extra} }}')


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("loss_weight", [1.0, 0.008])
def test_center_loss_matches_the_forks_cpu_code(dtype, loss_weight):
    f = np.float64 if dtype == torch.float64 else np.float32
    tol = dict(rtol=1e-12, atol=1e-14) if f is np.float64 else dict(rtol=1e-5, atol=1e-7)
    r = np.random.default_rng(5)
    layer = build(center_text(), [(7, 3, 1, 2), (7, 1, 1, 1)]).to(dtype)
    c = layer.blobs[0].detach().numpy().copy()
    x = r.standard_normal((7, 3, 1, 2))
    label = np.array([0, 2, 2, 1, 2, 0, 2], dtype=np.float64).reshape(7, 1, 1, 1)  # class 3 absent
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    loss = layer(xt, torch.tensor(label, dtype=dtype))
    assert loss.shape == ()
    loss.backward(torch.tensor(loss_weight, dtype=dtype))  # the top's diff is its loss weight
    ref_loss, ref_bd, ref_cd = port_center_loss(x.reshape(7, 6), c, label.ravel(), loss_weight, f)
    np.testing.assert_allclose(float(loss.detach()), ref_loss, **tol)
    np.testing.assert_allclose(xt.grad.numpy().reshape(7, 6), ref_bd, **tol)  # scaled by the loss weight
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), ref_cd, **tol)  # not scaled by it, nor by 1/M
    assert not layer.blobs[0].grad[3].any()
    # the fork's caffe_axpy adds the term to the diff: a second pass (iter_size 2) doubles it
    layer(xt, torch.tensor(label, dtype=dtype)).backward(torch.tensor(loss_weight, dtype=dtype))
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), 2 * ref_cd, **tol)


def test_center_loss_float_labels_and_axis():
    r = np.random.default_rng(6)
    x = r.standard_normal((3, 1, 5))
    a = build(center_text("axis: -1", n=3), [(3, 1, 5), (3,)]).double()
    b = build(center_text(n=3), [(3, 1, 5), (3,)]).double()
    with torch.no_grad():
        b.blobs[0].copy_(a.blobs[0])
    la = a(torch.tensor(x), torch.tensor([2.7, 0.2, 1.0]))  # static_cast<int>: 2, 0, 1
    lb = b(torch.tensor(x), torch.tensor([2.0, 0.0, 1.0]))
    assert float(la.detach()) == float(lb.detach())
    c = a.blobs[0].detach().numpy()
    assert float(la.detach()) == pytest.approx(sum(((x[i, 0] - c[k]) ** 2).sum() for i, k in enumerate((2, 0, 1))) / 3 / 2)


@pytest.mark.parametrize("text,shapes,match", [
    (center_text(n=0), [(2, 3), (2,)], r"num_output must be positive; received 0"),
    (center_text("axis: 2"), [(2, 3, 4), (2,)], r"axis 2 lumps more than the batch axis of bottom \(2, 3, 4\)"),
    (center_text("axis: 0"), [(2, 3), (2,)], r"axis 0 lumps"),
    (center_text(), [(2, 3), (2, 2)], r"labels of shape \(M,\) or \(M, 1, 1, 1\); received \(2, 2\)"),
    (center_text(), [(2, 3), (3,)], r"same first dimension; received \(2, 3\) and \(3,\)"),
])
def test_center_loss_setup_errors(text, shapes, match):
    with pytest.raises(LayerSetupError, match=r"layer 'center_loss' \(CenterLoss\).*" + match):
        layer = build(text, shapes)
        layer.reshape(shapes)


def test_center_loss_runtime_errors():
    layer = build(center_text(), [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match=r"'center_loss' \(CenterLoss\): label 4 out of range; expected labels "
                                              r"in \[0, 4\)"):
        layer(torch.ones(2, 3), torch.tensor([0.0, 4.0]))
    with pytest.raises(LayerSetupError, match=r"'center_loss' \(CenterLoss\).*does not hold 3 features"):
        layer.reshape([(2, 4), (2,)])


# -- the forks' own .caffemodel files (their parameters at LayerParameter 147) ---------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, as the forks' protoc writes it."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_the_forks_caffemodels_load_by_name(tmp_path):
    """A layer as the forks serialize it: ``margin_inner_product_param`` / ``center_loss_param`` at
    field 147 (master's ``sparsify_param`` here; the wire types of their fields differ, so they decode
    as unknown fields). The weights load by layer name into our layers."""
    import struct

    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    w = np.random.default_rng(10).standard_normal((5, 4)).astype(np.float32)
    c = np.random.default_rng(11).standard_normal((3, 4)).astype(np.float32)
    mip = b"\x08\x05" + b"\x10\x03" + b"\x2d" + struct.pack("<f", 1000.0)  # num_output 5, QUADRUPLE, base
    clp = b"\x08\x03"  # num_output 3
    net_bytes = b""
    for name, typ, arr, param in (("fc6", "MarginInnerProduct", w, mip), ("center_loss", "CenterLoss", c, clp)):
        blob = caffe_pb2.BlobProto()
        blob.shape.dim.extend(arr.shape)
        blob.data.extend(arr.ravel().tolist())
        lp = caffe_pb2.LayerParameter(name=name, type=typ)
        lp.blobs.append(blob)
        net_bytes += _field(100, lp.SerializeToString() + _field(147, param))
    (tmp_path / "fork.caffemodel").write_bytes(net_bytes)
    decoded = caffe_pb2.NetParameter.FromString(net_bytes)
    assert decoded.layer[0].type == "MarginInnerProduct" and decoded.layer[0].HasField("sparsify_param")
    net = Net(read_net('layer { name: "in" type: "Input" top: "fc5" top: "label" '
                       'input_param { shape { dim: 2 dim: 4 } shape { dim: 2 } } }\n'
                       f'layer {{ {margin_text("QUADRUPLE")} }}\nlayer {{ {center_text(n=3)} }}\n'), TRAIN)
    net.copy_from(str(tmp_path / "fork.caffemodel"))
    np.testing.assert_array_equal(net.params_by_layer()["fc6"][0].detach().numpy(), w)
    np.testing.assert_array_equal(net.params_by_layer()["center_loss"][0].detach().numpy(), c)


# -- in a net, layer by layer (pycaffe's Net: blob diffs kept) -------------------------------------
def test_both_layers_in_a_net_with_blob_diffs():
    """fc5 feeds the A-Softmax (+ SoftmaxWithLoss) and the CenterLoss (loss_weight 0.5): its diff is the
    sum of the two forks' bottom diffs; fc6's weight diff and the centers' diff are the forks'."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    text = ('force_backward: true\nlayer { name: "in" type: "Input" top: "fc5" top: "label" '
            'input_param { shape { dim: 6 dim: 4 } shape { dim: 6 } } }\n'
            f'layer {{ {margin_text("DOUBLE", SCHED_TEXT + " iteration: 100")} }}\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }\n'
            f'layer {{ {center_text(n=5)} loss_weight: 0.5 }}\n')
    net = Net(read_net(text), TRAIN)
    r = np.random.default_rng(9)
    x = r.standard_normal((6, 4)).astype(np.float32)
    label = np.array([0, 4, 1, 1, 3, 0], dtype=np.float32)
    net.set_blob("fc5", torch.tensor(x))
    net.set_blob("label", torch.tensor(label))
    w0, c0 = (net.params_by_layer()[n][0].detach().numpy().copy() for n in ("fc6", "center_loss"))
    net.forward()
    net.backward()
    lam = port_lambda(**SCHEDULE, it=101, f=np.float32)
    top, _, _, _ = port_margin(x, w0, label, "DOUBLE", lam, np.zeros((6, 5)), np.float32)
    prob = np.exp(top - top.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    td = prob.copy()
    td[np.arange(6), label.astype(int)] -= 1
    td /= 6  # SoftmaxWithLoss, VALID normalization
    _, _, bd_m, wd = port_margin(x, w0, label, "DOUBLE", lam, td, np.float32)
    _, bd_c, cd = port_center_loss(x, c0, label, 0.5, np.float32)
    np.testing.assert_allclose(net.blob_diff("fc5").numpy(), bd_m + bd_c, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.params_by_layer()["fc6"][0].grad.numpy(), wd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(net.params_by_layer()["center_loss"][0].grad.numpy(), cd, rtol=1e-5, atol=1e-7)
    assert float(net.blob_data["lambda"][0]) == lam


# -- in nets, with the solver -----------------------------------------------------------------------
def _h5_data(folder, n=48, classes=4, shape=(3, 16, 12), seed=0):
    """Images whose class is a bright block in a class-specific place, in two HDF5 files."""
    import h5py

    g = np.random.default_rng(seed)
    label = np.arange(n) % classes
    data = g.normal(0, 0.3, (n,) + shape).astype(np.float32)
    h, w = shape[1] // 2, shape[2] // 2
    for i, c in enumerate(label):
        data[i, c % 3, (c // 2) * h:(c // 2) * h + h, (c % 2) * w:(c % 2) * w + w] += 1.5
    with open(folder / "h5list.txt", "w") as lst:
        for j, rows in enumerate((slice(0, n // 2), slice(n // 2, n))):
            with h5py.File(folder / f"{j}.h5", "w") as fh:
                fh["data"] = data[rows]
                fh["label"] = label[rows].astype(np.float32)
            lst.write(f"{folder / f'{j}.h5'}\n")


def _conv(name, bottom, n, stride, filler):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
            'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } '
            f'convolution_param {{ num_output: {n} kernel_size: 3 stride: {stride} pad: 1 '
            f'weight_filler {{ {filler} }} bias_filler {{ type: "constant" value: 0 }} }} }}\n'
            f'layer {{ name: "relu{name[4:]}" type: "PReLU" bottom: "{name}" top: "{name}" }}\n')


def _data(folder):
    return (f'layer {{ name: "data" type: "HDF5Data" top: "data" top: "label" '
            f'hdf5_data_param {{ source: "{folder / "h5list.txt"}" batch_size: 16 shuffle: true }} }}\n')


def _fc(name, bottom, n):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}" '
            'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } '
            f'inner_product_param {{ num_output: {n} weight_filler {{ type: "xavier" }} '
            'bias_filler { type: "constant" value: 0 } } }\n')


def sphereface_net(folder, schedule: str) -> str:
    """sphereface_model.prototxt's first stage and head, trimmed: conv1_1 (stride 2, xavier) + PReLU,
    conv1_2 / conv1_3 (gaussian 0.01) + PReLU, res1_3 = conv1_1 + conv1_3, fc5, A-Softmax fc6
    (QUADRUPLE, with lambda as a second top) and SoftmaxWithLoss."""
    return (_data(folder)
            + _conv("conv1_1", "data", 8, 2, 'type: "xavier"')
            + _conv("conv1_2", "conv1_1", 8, 1, 'type: "gaussian" std: 0.01')
            + _conv("conv1_3", "conv1_2", 8, 1, 'type: "gaussian" std: 0.01')
            + 'layer { name: "res1_3" type: "Eltwise" bottom: "conv1_1" bottom: "conv1_3" top: "res1_3" '
              'eltwise_param { operation: 1 } }\n'
            + _fc("fc5", "res1_3", 16)
            + 'layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6" top: "lambda" '
              'param { lr_mult: 1 decay_mult: 1 } margin_inner_product_param { num_output: 4 type: QUADRUPLE '
              f'weight_filler {{ type: "xavier" }} {schedule} }} }}\n'
            'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "softmax_loss" }\n')


def center_loss_net(folder) -> str:
    """face_train_test.prototxt trimmed: conv + PReLU, fc5 (the feature), fc6 + SoftmaxWithLoss, and
    the CenterLoss on fc5 with its lr_mult 1, decay_mult 2 and loss_weight 0.008."""
    return (_data(folder)
            + _conv("conv1a", "data", 8, 2, 'type: "xavier"')
            + _conv("conv1b", "conv1a", 8, 2, 'type: "xavier"')
            + _fc("fc5", "conv1b", 8) + _fc("fc6", "fc5", 4)
            + 'layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "softmax_loss" }\n'
            'layer { name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss" '
            'param { lr_mult: 1 decay_mult: 2 } center_loss_param { num_output: 4 center_filler { type: "xavier" } } '
            'loss_weight: 0.008 }\n')


def _solver(folder, net: str, extra: str = ""):
    from neocaffe.solver.solver import Solver

    (folder / "net.prototxt").write_text(net)
    p = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{folder / "net.prototxt"}" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 '
                      f'weight_decay: 0.0005 display: 0 random_seed: 7 solver_mode: CPU {extra}', p)
    return Solver(p)


def _params(s, name):
    return s.net.params_by_layer()[name]


def test_sphereface_head_trains(tmp_path):
    """With the schedule started where lambda reaches its floor (iteration: 1600, lambda ~5.2 -> 5), the
    margin acts from the first step; the loss falls, the lambda top follows the schedule."""
    _h5_data(tmp_path)
    s = _solver(tmp_path, sphereface_net(tmp_path, SCHED_TEXT + " iteration: 1600"))
    losses, lams = [], []
    for _ in range(60):
        s.step(1)
        losses.append(float(s.net.blob_data["softmax_loss"]))
        lams.append(float(s.net.blob_data["lambda"][0]))
    assert lams == [float(port_lambda(**SCHEDULE, it=1600 + k, f=np.float32)) for k in range(1, 61)]
    assert lams[0] > 5.0 and lams[-1] == 5.0
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"SphereFace head: loss first 5 {first:.3f}, last 5 {last:.3f}")
    assert last < 0.5 * first, (first, last)
    s.net.forward()  # the forward rewrites fc6's weight: unit rows, where the solver reads them
    np.testing.assert_allclose(_params(s, "fc6")[0].detach().norm(dim=1).numpy(), 1.0, rtol=1e-6)
    s.close()


def test_sphereface_solver_and_snapshot_see_the_normalized_weights(tmp_path):
    from neocaffe.io.weights import load_weights

    _h5_data(tmp_path)
    s = _solver(tmp_path, sphereface_net(tmp_path, SCHED_TEXT),
                f'snapshot: 1 snapshot_prefix: "{tmp_path / "snap"}"')
    s.param.base_lr = 0.0  # the update adds nothing: what remains is the forward's in-place rewrite
    w0 = _params(s, "fc6")[0].detach().clone()
    s.step(1)
    w1 = _params(s, "fc6")[0].detach()
    np.testing.assert_allclose(w1.numpy(), (w0 / w0.norm(dim=1, keepdim=True)).numpy(), rtol=1e-6)
    saved = {lw.name: lw.blobs for lw in load_weights(str(tmp_path / "snap_iter_1.caffemodel"))}
    np.testing.assert_array_equal(np.asarray(saved["fc6"][0]), w1.numpy())
    s.close()


def test_sphereface_schedule_resumes_from_a_snapshot(tmp_path):
    _h5_data(tmp_path)
    extra = f'snapshot: 3 snapshot_prefix: "{tmp_path / "snap"}"'
    net = sphereface_net(tmp_path, "base: 1000 gamma: 0.5 power: 1 lambda_min: 5")
    a = _solver(tmp_path, net, extra)
    a.step(6)
    want_lam, want_w = float(a.net.blob_data["lambda"][0]), _params(a, "fc6")[0].detach().clone()
    a.close()
    b = _solver(tmp_path, net, extra)
    b.restore(str(tmp_path / "snap_iter_3.solverstate"))
    assert b.net.layer("fc6").iteration == 3
    b.step(3)
    assert float(b.net.blob_data["lambda"][0]) == want_lam == float(port_lambda(1000, 0.5, 1, 5, 6, np.float32))
    assert torch.equal(_params(b, "fc6")[0].detach(), want_w)
    b.close()


def test_center_loss_net_trains_and_the_solver_applies_the_multipliers(tmp_path):
    _h5_data(tmp_path)
    s = _solver(tmp_path, center_loss_net(tmp_path))
    c0 = _params(s, "center_loss")[0].detach().clone()
    s.step(1)
    feat, label = s.net.blob_data["fc5"].numpy(), s.net.blob_data["label"].numpy()
    _, _, term = port_center_loss(feat, c0.numpy(), label, 0.008, np.float32)
    # first SGD step (no history): c -= lr * lr_mult * (term + weight_decay * decay_mult * c)
    want = c0.numpy() - np.float32(0.05) * (term + np.float32(0.0005 * 2) * c0.numpy())
    np.testing.assert_allclose(_params(s, "center_loss")[0].detach().numpy(), want, rtol=1e-5, atol=1e-7)
    totals, centers = [], []
    for _ in range(50):
        s.step(1)
        totals.append(float(s.net.blob_data["softmax_loss"]) + 0.008 * float(s.net.blob_data["center_loss"]))
        centers.append(float(s.net.blob_data["center_loss"]))
    first, last = np.mean(totals[:5]), np.mean(totals[-5:])
    print(f"center-loss net: loss first 5 {first:.3f}, last 5 {last:.3f}; center loss {centers[0]:.3f} -> "
          f"{centers[-1]:.3f}")
    assert last < 0.5 * first, (first, last)
    assert math.isfinite(centers[-1])
    # each center has followed its class: nearer its class's mean feature than any other class's
    c = _params(s, "center_loss")[0].detach().numpy()
    feat, label = s.net.blob_data["fc5"].numpy(), s.net.blob_data["label"].numpy()
    means = np.stack([feat[label == k].mean(0) for k in range(4)])
    dist = np.linalg.norm(c[:, None] - means[None], axis=2)
    for k in range(4):
        assert dist[k, k] < 0.5 * np.delete(dist[k], k).min(), dist
    s.close()


def test_center_loss_lr_mult_scales_the_forks_term(tmp_path):
    """A net of an Input and the CenterLoss alone (lr_mult 0.5, decay_mult 0): one step moves each
    center by exactly lr * 0.5 * the fork's term."""
    net = ('layer { name: "in" type: "Input" top: "fc5" top: "label" '
           'input_param { shape { dim: 5 dim: 3 } shape { dim: 5 } } }\n'
           'layer { name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss" '
           'param { lr_mult: 0.5 decay_mult: 0 } center_loss_param { num_output: 3 '
           'center_filler { type: "gaussian" std: 1 } } loss_weight: 0.25 }\n')
    s = _solver(tmp_path, net)
    x = np.random.default_rng(8).standard_normal((5, 3)).astype(np.float32)
    label = np.array([0, 0, 2, 0, 2], dtype=np.float32)
    s.net.set_blob("fc5", torch.tensor(x))
    s.net.set_blob("label", torch.tensor(label))
    c0 = _params(s, "center_loss")[0].detach().clone()
    s.step(1)
    _, _, term = port_center_loss(x, c0.numpy(), label, 0.25, np.float32)
    want = c0.numpy() - np.float32(0.05 * 0.5) * term
    np.testing.assert_allclose(_params(s, "center_loss")[0].detach().numpy(), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(_params(s, "center_loss")[0].detach().numpy()[1], c0.numpy()[1])  # no sample
    s.close()
