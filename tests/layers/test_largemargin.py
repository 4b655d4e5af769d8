"""L-Softmax's LargeMarginInnerProduct against a loop port of the fork's CPU code (wy1iu/LargeMargin_Softmax_Loss
@ c3e9f20, src/caffe/layers/largemargin_inner_product_layer.cpp): tops, bottom and weight diffs, every margin
type, the lambda schedule (the fork's example nets' schedules), float labels; the backward as the gradient of
the forward (checked) and where it is not (a weight row of norm ~1e-9, an all-zero feature row); the .cpp's
rounding (not the .cu's); the errors; the schedule across a resume; the fork's .caffemodel; and a trimmed copy
of the fork's MNIST example net trained by the solver with the loss falling."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers.test_face_losses import port_lambda  # the same lambda_ line in both forks

TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE")


# -- a loop port of the fork's Forward_cpu / Backward_cpu --------------------------------------------
def port_lsoftmax(x, w, label, margin, lam, top_diff, f):
    """LargeMarginInnerProductLayer::Forward_cpu + Backward_cpu on (M, K) ``x``, (N, K) ``w`` and
    integer-valued float ``label``, in the data type ``f``. Returns top, bottom diff and weight diff
    (accumulated into zeros)."""
    x, w, td = x.astype(f), w.astype(f), top_diff.astype(f)
    M, K = x.shape
    N = w.shape[0]
    lam, eps = f(lam), f(1e-9)
    x_norm = np.array([f(np.sqrt(f(np.dot(x[i], x[i])))) for i in range(M)], dtype=f)
    w_norm = np.array([f(np.sqrt(f(np.dot(w[j], w[j])))) for j in range(N)], dtype=f)
    xw = np.array([[f(np.dot(x[i], w[j])) for j in range(N)] for i in range(M)], dtype=f)
    prod = np.array([[x_norm[i] * w_norm[j] for j in range(N)] for i in range(M)], dtype=f) + eps
    cos = xw / prod
    s0 = np.sign(cos)
    c2, c3, c4 = (np.array(np.power(cos.astype(np.float64), k), dtype=f) for k in (2, 3, 4))
    s1 = np.sign(np.abs(cos) - f(0.5))
    s2 = s0 * (s1 + 1) - 2
    s3 = s0 * np.sign(2 * c2 - 1)
    s4 = 2 * s0 + s3 - 3
    lab = [int(v) for v in label]  # static_cast<int>
    top = xw.copy()
    if margin != "SINGLE":
        for i in range(M):
            y = lab[i]
            if margin == "DOUBLE":
                psi = 2 * s0[i, y] * c2[i, y] - 1
            elif margin == "TRIPLE":
                psi = s1[i, y] * (4 * c3[i, y] - 3 * cos[i, y]) + s2[i, y]
            else:
                psi = s3[i, y] * (8 * c4[i, y] - 8 * c2[i, y] + 1) + s4[i, y]
            top[i, y] = prod[i, y] * psi
        top = lam * xw + top  # gemm, alpha = lambda, beta = 1
        top = top * (f(1) / (f(1) + lam))

    def coeffs(i, j):
        """(the coefficient of w_j in the bottom diff / of x_i in the weight diff, the cpp's factor of
        -ratio in the weight diff / of 1 / -ratio in the bottom diff)."""
        if margin == "DOUBLE":
            return 4 * s0[i, j] * cos[i, j], 2 * s0[i, j] * c2[i, j] + 1
        if margin == "TRIPLE":
            return s1[i, j] * (12 * c2[i, j] - 3), 8 * s1[i, j] * c3[i, j] - s2[i, j]
        return (s3[i, j] * (32 * c3[i, j] - 16 * cos[i, j]),
                s3[i, j] * (24 * c4[i, j] - 8 * c2[i, j] - 1) - s4[i, j])

    inv_w = f(1) / (w_norm + eps)
    ratio = np.array([[x_norm[i] * inv_w[j] for j in range(N)] for i in range(M)], dtype=f)
    inv, rest = f(1) / (f(1) + lam), lam / (f(1) + lam)
    wd = np.zeros((N, K), dtype=f)
    bd = np.zeros((M, K), dtype=f)
    if margin == "SINGLE":
        return top, td @ w, td.T @ x
    for i in range(N):
        for j in range(M):
            if lab[j] != i:
                wd[i] = inv * td[j, i] * x[j] + wd[i]
            else:
                cx, cw = coeffs(j, i)
                wd[i] = inv * td[j, i] * cx * x[j] + wd[i]
                wd[i] = inv * td[j, i] * -ratio[j, i] * cw * w[i] + wd[i]
    wd = rest * (td.T @ x) + wd
    for i in range(M):
        for j in range(N):
            if lab[i] != j:
                bd[i] = inv * td[i, j] * w[j] + bd[i]
            else:
                cw, cx = coeffs(i, j)
                bd[i] = inv * td[i, j] * cw * w[j] + bd[i]
                bd[i] = inv * td[i, j] / -ratio[i, j] * cx * x[i] + bd[i]
    bd = rest * (td @ w) + bd
    return top, bd, wd


# -- helpers ----------------------------------------------------------------------------------------
def build(text: str, shapes, phase=TRAIN):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, shapes, phase)


def lm_text(margin: str, extra: str = "", n: int = 5, tops: int = 2) -> str:
    return ('name: "ip2" type: "LargeMarginInnerProduct" bottom: "bn_ip" bottom: "label" top: "ip2" '
            + ('top: "lambda" ' if tops == 2 else "")
            + f'largemargin_inner_product_param {{ num_output: {n} type: {margin} '
              f'weight_filler {{ type: "gaussian" std: 0.7 }} {extra} }}')


MNIST = dict(base=1000.0, gamma=0.000025, power=35.0, lambda_min=0.0)  # myexamples/mnist's schedule
MNIST_TEXT = "base: 1000 gamma: 0.000025 power: 35 lambda_min: 0"
CIFAR = dict(base=1000.0, gamma=0.00002, power=45.0, lambda_min=0.0)  # myexamples/cifar10's (DOUBLE)


def run(layer, x, label, td, dtype):
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    layer.blobs[0].grad = None
    tops = layer(xt, torch.tensor(label, dtype=dtype))
    tops = tops if isinstance(tops, tuple) else (tops,)
    tops[0].backward(torch.tensor(td, dtype=dtype))
    return [t.detach().numpy() for t in tops], xt.grad.numpy(), layer.blobs[0].grad.numpy()


def true_forward(x, w, lab, margin, lam):
    """The forward written plainly, for autograd's exact derivative (with the fork's 1e-9)."""
    xw = x @ w.t()
    prod = x.norm(dim=1) * w.norm(dim=1)[lab] + 1e-9
    c = xw.gather(1, lab[:, None]).squeeze(1) / prod
    s0 = c.sign()
    if margin == "DOUBLE":
        psi = 2 * s0 * c ** 2 - 1
    elif margin == "TRIPLE":
        s1 = (c.abs() - 0.5).sign()
        psi = s1 * (4 * c ** 3 - 3 * c) + s0 * (1 + s1) - 2
    else:
        s3 = s0 * (2 * c ** 2 - 1).sign()
        psi = s3 * (8 * c ** 4 - 8 * c ** 2 + 1) + 2 * s0 + s3 - 3
    top = xw.scatter(1, lab[:, None], (prod * psi)[:, None])
    return (top + lam * xw) / (1 + lam)


# -- forward and backward against the port ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("margin", TYPES)
def test_matches_the_forks_cpu_code_over_iterations(margin, dtype):
    """Three forwards on the MNIST example's schedule from iteration 8000 (lambda ~1.7, moving): tops,
    lambda bit for bit, bottom diffs and the weight diff, which the layer accumulates as Caffe does."""
    f = np.float64 if dtype == torch.float64 else np.float32
    tol = dict(rtol=1e-10, atol=1e-12) if f is np.float64 else dict(rtol=2e-5, atol=2e-6)
    r = np.random.default_rng(1)
    layer = build(lm_text(margin, MNIST_TEXT + " iteration: 8000"), [(6, 2, 3), (6,)]).to(dtype)
    w = layer.blobs[0].detach().numpy().copy()
    wd_sum = np.zeros_like(w)
    for it in range(8001, 8004):
        x = r.standard_normal((6, 2, 3)) * r.uniform(0.5, 3, (6, 1, 1))
        label = r.integers(0, 5, 6).astype(np.float64)  # labels come as float blobs
        td = r.standard_normal((6, 5))
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        top, lam = layer(xt, torch.tensor(label, dtype=dtype))
        top.backward(torch.tensor(td, dtype=dtype))  # the weight's .grad accumulates across the three
        lam_ref = port_lambda(**MNIST, it=it, f=f)
        top_ref, bd_ref, wd_ref = port_lsoftmax(x.reshape(6, 6), w, label, margin, lam_ref, td, f)
        wd_sum += wd_ref
        assert lam.shape == (1,) and float(lam[0]) == lam_ref
        assert 1.0 < lam_ref < 2.0
        np.testing.assert_allclose(top.detach().numpy(), top_ref, **tol)
        np.testing.assert_allclose(xt.grad.numpy().reshape(6, 6), bd_ref, **tol)
        np.testing.assert_allclose(layer.blobs[0].grad.numpy(), wd_sum, **tol)
    np.testing.assert_array_equal(layer.blobs[0].detach().numpy(), w)  # no in-place normalization (SphereFace's)
    assert layer.iteration == 8003


def test_off_label_entries_are_the_cpp_rounding_not_the_cu():
    """The .cpp scales every entry by 1 / (1 + lambda) after adding lambda x.w (cpp:194-196); the .cu leaves
    the entries off the label column as x.w (cu:84-89). In float32 the two differ in the last bits; we are
    the .cpp's."""
    r = np.random.default_rng(2)
    layer = build(lm_text("DOUBLE", "base: 0.3"), [(64, 8), (64,)], phase=TRAIN)
    x = torch.tensor(r.standard_normal((64, 8)), dtype=torch.float32)
    label = torch.zeros(64)
    with torch.no_grad():
        top = layer(x, label)[0]
        xw = x @ layer.blobs[0].t()
    lam = np.float32(0.3)
    cpp = (xw.numpy() + lam * xw.numpy()) * (np.float32(1) / (np.float32(1) + lam))
    np.testing.assert_array_equal(top[:, 1:].numpy(), cpp[:, 1:])
    assert (top[:, 1:] != xw[:, 1:]).any()  # the .cu's would be x.w exactly


def test_single_is_the_plain_inner_product_and_still_outputs_lambda():
    """The fork's TEST-phase layer (SINGLE, ``base: 0 gamma: 1``): x W^T with its true gradients, lambda 0."""
    r = np.random.default_rng(3)
    layer = build(lm_text("SINGLE", "base: 0 gamma: 1 iteration: 0"), [(3, 4), (3,)]).double()
    w0 = layer.blobs[0].detach().clone()
    x = torch.tensor(r.standard_normal((3, 4)), requires_grad=True)
    top, lam = layer(x, torch.tensor([1.0, 0.0, 4.0]))
    assert float(lam[0]) == 0.0
    np.testing.assert_allclose(top.detach().numpy(), (x @ w0.t()).detach().numpy(), rtol=1e-12)
    assert torch.equal(layer.blobs[0].detach(), w0)  # the weight is left as it is
    assert torch.autograd.gradcheck(lambda t: layer(t, torch.tensor([1.0, 0.0, 4.0]))[0], (x,))
    one = build(lm_text("SINGLE", tops=1), [(3, 4), (3,)])
    assert isinstance(one(torch.ones(3, 4), torch.full((3,), 99.0)), torch.Tensor)  # labels unread, one top


def test_labels_truncate_as_static_cast():
    r = np.random.default_rng(4)
    layer = build(lm_text("TRIPLE", "base: 3"), [(3, 4), (3,)]).double()
    x = torch.tensor(r.standard_normal((3, 4)))
    a, b = (layer(x, torch.tensor(lab))[0] for lab in ([2.0, 0.0, 3.0], [2.9, 0.5, 3.99]))
    assert torch.equal(a, b)


# -- the backward is the gradient of the forward, except near a zero norm --------------------------
@pytest.mark.parametrize("margin", TYPES[1:])
@pytest.mark.parametrize("lam", [0.0, 0.7, 40.0])
def test_backward_is_the_gradient(margin, lam):
    """Bottom and weight diffs equal autograd's derivative of the forward written plainly (the fork's 1e-9
    left out of the derivative shows at 1e-9 relative), and pass a float64 finite-difference check."""
    r = np.random.default_rng(5)
    layer = build(lm_text(margin, f"base: {lam}", n=6), [(8, 5), (8,)]).double()
    x = torch.tensor(r.standard_normal((8, 5)) * r.uniform(0.5, 2, (8, 1)), requires_grad=True)
    label = torch.tensor(r.integers(0, 6, 8), dtype=torch.float64)
    lab = label.long()
    td = torch.tensor(r.standard_normal((8, 6)))
    w = layer.blobs[0]
    gx, gw = torch.autograd.grad(layer(x, label)[0], (x, w), td)
    wt = w.detach().clone().requires_grad_(True)
    tx, tw = torch.autograd.grad(true_forward(x, wt, lab, margin, lam), (x, wt), td)
    np.testing.assert_allclose(gx.numpy(), tx.numpy(), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gw.numpy(), tw.numpy(), rtol=1e-7, atol=1e-8)
    xs = x.detach()[:3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: torch.func.functional_call(layer, {"blobs.0": b}, (a, label[:3]))[0],
        (xs, w.detach().clone().requires_grad_(True)), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_backward_is_not_the_gradient_at_a_weight_row_of_norm_near_1e9():
    """The derivative has |w_y| where the fork writes |w_y| + 1e-9 (cpp:249-253): for a weight row of norm
    1e-9 the fork's label-column terms are off by a factor ~2 (the weight diff's by O(1); the bottom diff's,
    of the order of w_y, by ~1e-9), while the rows of the other labels stay the gradient. The top diff
    here sits on the label column only, where the margin is."""
    r = np.random.default_rng(6)
    layer = build(lm_text("QUADRUPLE", "base: 0", n=3), [(4, 3), (4,)]).double()
    with torch.no_grad():
        layer.blobs[0][1] *= 1e-9 / layer.blobs[0][1].norm()
    x = torch.tensor(r.standard_normal((4, 3)), requires_grad=True)
    label = torch.tensor([1.0, 1.0, 0.0, 2.0])
    td = torch.zeros(4, 3, dtype=torch.float64)
    td[torch.arange(4), label.long()] = torch.tensor(r.uniform(0.5, 1.5, 4))
    w = layer.blobs[0]
    gx, gw = torch.autograd.grad(layer(x, label)[0], (x, w), td)
    wt = w.detach().clone().requires_grad_(True)
    tx, tw = torch.autograd.grad(true_forward(x, wt, label.long(), "QUADRUPLE", 0.0), (x, wt), td)
    np.testing.assert_allclose(gx[2:].numpy(), tx[2:].numpy(), rtol=1e-7)  # labels 0 and 2: the gradient
    np.testing.assert_allclose(gw[[0, 2]].numpy(), tw[[0, 2]].numpy(), rtol=1e-7)
    assert not np.allclose(gx[:2].numpy(), tx[:2].numpy(), rtol=0.1, atol=0)  # label 1: not the gradient
    assert not np.allclose(gw[1].numpy(), tw[1].numpy(), rtol=0.1, atol=0)


def test_all_zero_feature_row_gets_a_nan_diff_as_in_the_fork():
    """x_i = 0: the forward is finite (cos = 0 / 1e-9), the bottom diff divides by |x_i| / (|w| + 1e-9) = 0
    and multiplies by x_i = 0: NaN in that row (cpp:392-395; the .cu's -|w| / |x| alike); the other rows
    and the weight diff stay finite."""
    layer = build(lm_text("DOUBLE", "base: 1"), [(3, 4), (3,)])
    x = torch.tensor([[0.0, 0, 0, 0], [1.0, 2, -1, 0.5], [0.3, -0.2, 0.1, 1]], requires_grad=True)
    top = layer(x, torch.tensor([2.0, 0.0, 4.0]))[0]
    assert torch.isfinite(top).all()
    top.backward(torch.ones_like(top))
    assert torch.isnan(x.grad[0]).all() and torch.isfinite(x.grad[1:]).all()
    assert torch.isfinite(layer.blobs[0].grad).all()
    with np.errstate(divide="ignore", invalid="ignore"):
        port = port_lsoftmax(x.detach().numpy(), layer.blobs[0].detach().numpy(), [2, 0, 4], "DOUBLE", 1.0,
                             np.ones((3, 5)), np.float32)
    assert np.isnan(port[1][0]).all()


# -- the lambda schedule ---------------------------------------------------------------------------
def test_lambda_schedules_of_the_forks_example_nets():
    from neocaffe.layers.face_losses import margin_lambda

    its = (1, 2, 1000, 5000, 8000, 10000, 20000, 30000)
    for sched in (MNIST, CIFAR):
        p = caffe_pb2.LargeMarginInnerProductParameter(**sched)
        got = [margin_lambda(p, it) for it in its]
        assert got == [float(port_lambda(**sched, it=it, f=np.float32)) for it in its]
        assert got[0] == pytest.approx(1000 / (1 + sched["gamma"]) ** sched["power"], rel=1e-5)
        assert all(a > b for a, b in zip(got, got[1:])) and got[-1] < 1e-3  # no floor: lambda_min 0
    layer = build(lm_text("QUADRUPLE", MNIST_TEXT + " iteration: 4"), [(2, 3), (2,)])
    lams = [float(layer(torch.ones(2, 3), torch.zeros(2))[1]) for _ in range(3)]
    assert lams == [float(port_lambda(**MNIST, it=k, f=np.float32)) for k in (5, 6, 7)]
    floor = build(lm_text("DOUBLE", "base: 100 gamma: 1 power: 1 lambda_min: 7"), [(2, 3), (2,)])
    assert [float(floor(torch.ones(2, 3), torch.zeros(2))[1]) for _ in range(15)][-1] == 7.0


def test_resume_state_continues_the_schedule():
    x, label = torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0])
    a = build(lm_text("QUADRUPLE", "base: 100 gamma: 0.5 power: 1"), [(4, 3), (4,)])
    for _ in range(5):
        a(x, label)
    state = a.resume_state()
    assert state == {"iteration": 5}
    b = build(lm_text("QUADRUPLE", "base: 100 gamma: 0.5 power: 1"), [(4, 3), (4,)])
    with torch.no_grad():
        b.blobs[0].copy_(a.blobs[0])
    b.load_resume_state(state)
    (ya, la), (yb, lb) = a(x, label), b(x, label)
    assert float(la) == float(lb) == float(np.float32(100) * np.float32(1 / np.float64(np.float32(4.0))))
    assert torch.equal(ya, yb)
    with pytest.raises(LayerSetupError, match=r"layer 'ip2' \(LargeMarginInnerProduct\): resume state"):
        b.load_resume_state({"iter": 3})


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,shapes,match", [
    (lm_text("DOUBLE", n=0), [(2, 3), (2,)], r"largemargin_inner_product_param.num_output must be positive; "
                                             r"received 0"),
    (lm_text("DOUBLE", "axis: 3"), [(2, 3), (2,)], r"largemargin_inner_product_param.axis 3 out of range"),
    (lm_text("DOUBLE"), [(2, 3), (3,)], r"one label per inner product.*received label shape \(3,\)"),
    (lm_text("DOUBLE", "axis: 2"), [(2, 3, 4), (2,)], r"bottom \(2, 3, 4\) makes 6"),
    (lm_text("DOUBLE") + ' top: "extra"', [(2, 3), (2,)], r"takes at most 2 top"),
    ('name: "ip2" type: "LargeMarginInnerProduct" bottom: "x" top: "y" largemargin_inner_product_param '
     '{ num_output: 2 }', [(2, 3)], r"takes exactly 2 bottom"),
])
def test_setup_errors(text, shapes, match):
    with pytest.raises(LayerSetupError, match=r"layer 'ip2' \(LargeMarginInnerProduct\).*" + match):
        layer = build(text, shapes)
        layer.reshape(shapes)


def test_runtime_errors():
    layer = build(lm_text("QUADRUPLE"), [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match=r"'ip2' \(LargeMarginInnerProduct\): input size incompatible.*"
                                              r"has 4 inputs from axis 1; expected 3"):
        layer.reshape([(2, 4), (2,)])
    with pytest.raises(LayerSetupError, match=r"'ip2' \(LargeMarginInnerProduct\): label 5 out of range; "
                                              r"expected labels in \[0, 5\)"):
        layer(torch.ones(2, 3), torch.tensor([1.0, 5.0]))
    with pytest.raises(LayerSetupError, match=r"label -1 out of range"):
        layer(torch.ones(2, 3), torch.tensor([-1.0, 0.0]))


def test_schema_numbers():
    """largemargin_inner_product_param moves from the fork's 202 (SSD's permute_param) to 3202; the message
    keeps the fork's numbers and defaults; the fork's bn_param (201) is ours at 152."""
    lp = caffe_pb2.LayerParameter.DESCRIPTOR
    assert lp.fields_by_name["largemargin_inner_product_param"].number == 3202
    assert lp.fields_by_name["permute_param"].number == 202
    d = caffe_pb2.LargeMarginInnerProductParameter.DESCRIPTOR
    assert [(f.name, f.number) for f in d.fields] == [
        ("num_output", 1), ("type", 2), ("weight_filler", 3), ("axis", 4), ("base", 5), ("gamma", 6),
        ("power", 7), ("iteration", 8), ("lambda_min", 9)]
    p = caffe_pb2.LargeMarginInnerProductParameter()
    assert (p.type, p.axis, p.base, p.gamma, p.power, p.iteration, p.lambda_min) == (0, 1, 1, 0, 1, 0, 0)
    assert [v.name for v in d.enum_types_by_name["LargeMarginType"].values] == list(TYPES)
    from tests.test_proto_schema import _lineages, _moved_rows, _table

    assert "lsoftmax" in _lineages()
    assert ["LayerParameter", "largemargin_inner_product_param", "202", "lsoftmax", "3202"] in [
        r[:5] for r in _moved_rows()]
    assert ["LayerParameter", "bn_param", "lsoftmax", "201", "152"] in _table("Same name, other number")


# -- the fork's files -------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_the_forks_caffemodel_loads_by_name_with_its_bn_blobs(tmp_path, caplog):
    """The fork writes ``largemargin_inner_product_param`` at 202 (SSD's ``permute_param`` here: decoded as
    that, or as unknown fields); the weight loads by layer name. Its BN stores (1, C) blobs whose fourth is
    a running inverse std: they load into the BN of a net with a LargeMarginInnerProduct (L-Softmax's lineage,
    neocaffe.layers.lineage); elsewhere BN is PSPNet's, which takes 1 x C blobs too (TSN's) and refuses other
    shapes, naming layer and shapes."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    w = np.random.default_rng(10).standard_normal((5, 4)).astype(np.float32)
    param = b"\x08\x05" + b"\x10\x03"  # num_output 5, type QUADRUPLE
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(w.shape)
    blob.data.extend(w.ravel().tolist())
    lp = caffe_pb2.LayerParameter(name="ip2", type="LargeMarginInnerProduct")
    lp.blobs.append(blob)
    (tmp_path / "ip2.caffemodel").write_bytes(_field(100, lp.SerializeToString() + _field(202, param)))
    bn = caffe_pb2.LayerParameter(name="bn_ip", type="BN")
    for v in (1.0, 0.0, 0.0, 1.0):  # slope, bias, mean, inverse std: as the fork's LayerSetUp makes them
        b = bn.blobs.add()
        b.shape.dim.extend([1, 4])
        b.data.extend([v] * 4)
    (tmp_path / "bn.caffemodel").write_bytes(_field(100, bn.SerializeToString()))
    net = Net(read_net('layer { name: "in" type: "Input" top: "fc" top: "label" '
                       'input_param { shape { dim: 2 dim: 4 } shape { dim: 2 } } }\n'
                       'layer { name: "bn_ip" type: "BN" bottom: "fc" top: "bn_ip" bn_param { '
                       'slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 } } }\n'
                       f'layer {{ {lm_text("QUADRUPLE")} }}\n'), TRAIN)
    net.copy_from(str(tmp_path / "ip2.caffemodel"))
    np.testing.assert_array_equal(net.params_by_layer()["ip2"][0].detach().numpy(), w)
    net.copy_from(str(tmp_path / "bn.caffemodel"))
    assert [tuple(b.shape) for b in net.params_by_layer()["bn_ip"]] == [(1, 4)] * 4
    pspnet = Net(read_net('layer { name: "in" type: "Input" top: "fc" input_param { shape { dim: 2 dim: 4 } } }\n'
                          'layer { name: "bn_ip" type: "BN" bottom: "fc" top: "bn_ip" bn_param { '
                          'slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 } } }\n'),
                 TRAIN)
    # a net without L-Softmax's types reads BN as PSPNet's, which also takes 1 x C blobs (TSN's released models
    # store them so): the four blobs load as PSPNet's, the fourth read as a variance (the lineage decides)
    with caplog.at_level(logging.WARNING, logger="neocaffe.weights"):
        pspnet.copy_from(str(tmp_path / "bn.caffemodel"))
    assert [tuple(b.shape) for b in pspnet.params_by_layer()["bn_ip"]] == [(1, 4, 1, 1)] * 4
    notes = [r.getMessage() for r in caplog.records if "1 x C" in r.getMessage()]
    assert len(notes) == 1 and 'lineage: "lsoftmax"' in notes[0] and "'bn_ip'" in notes[0]
    bad = caffe_pb2.LayerParameter(name="bn_ip", type="BN")
    for _ in range(4):
        b = bad.blobs.add()
        b.shape.dim.extend([1, 5])
        b.data.extend([1.0] * 5)
    (tmp_path / "bad.caffemodel").write_bytes(_field(100, bad.SerializeToString()))
    with pytest.raises(Exception, match=r"layer 'bn_ip'.*shape mismatch. Source param shape is 1 5; "
                                        r"target param shape is 1 4 1 1 \(or TSN's 1 4\)"):
        pspnet.copy_from(str(tmp_path / "bad.caffemodel"))


# -- the fork's MNIST example, trimmed, trained by the solver --------------------------------------
def _mnist_lmdb(path, n=160, classes=10, seed=0):
    """Uint8 12 x 12 images: noise and a bright 3 x 3 block at a place of the class's own."""
    from neocaffe.data.db_writer import DBWriter

    g = np.random.default_rng(seed)
    with DBWriter(str(path)) as db:
        for k in range(n):
            c = k % classes
            img = g.integers(0, 90, (12, 12))
            r0, c0 = 3 * (c // 4), 3 * (c % 4)
            img[r0:r0 + 3, c0:c0 + 3] += 150
            d = caffe_pb2.Datum(channels=1, height=12, width=12, label=c, data=img.astype(np.uint8).tobytes())
            db.put(f"{k:08d}", d.SerializeToString())


def _conv_bn_relu(name: str, bottom: str, bn: str, relu: str) -> str:
    """A conv block of the fork's net, as written there (msra, BN with constant slope 1 / bias 0)."""
    return f'''layer {{
  name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}
  convolution_param {{ num_output: 8 kernel_size: 3 stride: 1 pad: 1
    weight_filler {{ type: "msra" }} bias_filler {{ type: "constant" }} }}
}}
layer {{
  name: "{bn}" type: "BN" bottom: "{name}" top: "{bn}"
  param {{ lr_mult: 1 decay_mult: 0 }} param {{ lr_mult: 1 decay_mult: 0 }}
  bn_param {{ slope_filler {{ type: "constant" value: 1 }} bias_filler {{ type: "constant" value: 0 }} }}
}}
layer {{ name: "{relu}" type: "ReLU" bottom: "{bn}" top: "{bn}" }}
'''


def mnist_net(folder, iteration: int) -> str:
    """myexamples/mnist/model/mnist_train_test.prototxt of wy1iu/LargeMargin_Softmax_Loss @ c3e9f20 (unchanged
    since 7ef9bd5), trimmed: the Data layers (TRAIN / TEST, mean_value 127.5) on our small LMDB with batches
    of 16; pre_conv and conv1_1 with their BN + ReLU (8 outputs, not 64), pool1 (conv1_2 to conv3_3 and
    pool2 / pool3 left out), ip1 (32, not 512) + bn_ip + relu_ip; ip2: the TRAIN layer QUADRUPLE with the
    fork's schedule (started at ``iteration``), the TEST layer SINGLE sharing the weight by the param name
    "ip2" with lr_mult 0; Accuracy (TEST) and SoftmaxWithLoss. Its BN runs as PSPNet's (bn.py): the same
    TRAIN-phase forward and backward (its TEST phase reads the running statistics otherwise, see
    neocaffe/layers/largemargin.py)."""
    data = ''.join(f'''layer {{
  name: "mnist" type: "Data" top: "data" top: "label"
  include {{ phase: {phase} }}
  transform_param {{ mean_value: 127.5 }}
  data_param {{ source: "{folder / 'lmdb'}" batch_size: 16 backend: LMDB }}
}}
''' for phase in ("TRAIN", "TEST"))
    ip2 = ''.join(f'''layer {{
  name: "ip2" type: "LargeMarginInnerProduct" bottom: "bn_ip" bottom: "label" top: "ip2" top: "lambda"
  param {{ name: "ip2" lr_mult: {lr} }}
  largemargin_inner_product_param {{ num_output: 10 {margin} iteration: {iteration if phase == 'TRAIN' else 0}
    weight_filler {{ type: "msra" }} }}
  include {{ phase: {phase} }}
}}
''' for phase, lr, margin in (("TRAIN", 1, "type: QUADRUPLE base: 1000 gamma: 0.000025 power: 35 lambda_min: 0"),
                              ("TEST", 0, "type: SINGLE base: 0 gamma: 1 lambda_min: 0")))
    return ('name: "MNISTNet"\n' + data
            + _conv_bn_relu("pre_conv", "data", "pre_bn", "pre_relu")
            + _conv_bn_relu("conv1_1", "pre_bn", "bn1_1", "relu1_1")
            + 'layer { name: "pool1" type: "Pooling" bottom: "bn1_1" top: "pool1" '
              'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            + '''layer {
  name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 32 weight_filler { type: "msra" } bias_filler { type: "constant" } }
}
layer {
  name: "bn_ip" type: "BN" bottom: "ip1" top: "bn_ip"
  param { lr_mult: 1 decay_mult: 0 } param { lr_mult: 1 decay_mult: 0 }
  bn_param { slope_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0 } }
}
layer { name: "relu_ip" type: "ReLU" bottom: "bn_ip" top: "bn_ip" }
''' + ip2
            + 'layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" '
              'include { phase: TEST } }\n'
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }\n')


def _solver(folder, net: str, extra: str = ""):
    """myexamples/mnist/mnist_solver.prototxt's numbers (base_lr 0.1, momentum 0.9, weight_decay 0.0005,
    multistep at 5000 / 7500 / ...), test_iter 4 and no display, on the CPU."""
    from neocaffe.solver.solver import Solver

    (folder / "net.prototxt").write_text(net)
    p = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{folder / "net.prototxt"}" test_iter: 4 test_interval: 100000 base_lr: 0.1 '
                      'momentum: 0.9 weight_decay: 0.0005 lr_policy: "multistep" gamma: 0.1 stepvalue: 5000 '
                      'stepvalue: 7500 display: 0 random_seed: 3 solver_mode: CPU '
                      f'test_initialization: false {extra}', p)
    return Solver(p)


def test_the_forks_mnist_net_trains(tmp_path):
    """From iteration 8000 of the fork's schedule (lambda ~1.7: the margin acts from the first step) the
    loss falls; lambda follows the schedule; the TEST net's SINGLE layer, sharing the weight, classifies."""
    _mnist_lmdb(tmp_path / "lmdb")
    s = _solver(tmp_path, mnist_net(tmp_path, 8000))
    losses, lams = [], []
    for _ in range(40):
        s.step(1)
        losses.append(float(s.net.blob_data["loss"]))
        lams.append(float(s.net.blob_data["lambda"][0]))
    assert lams == [float(port_lambda(**MNIST, it=8000 + k, f=np.float32)) for k in range(1, 41)]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"L-Softmax MNIST net: loss first 5 {first:.3f}, last 5 {last:.3f}")
    assert last < 0.5 * first, (first, last)
    means = dict(zip(s.test_nets[0].outputs, s.test(0)))
    print(f"TEST net (SINGLE ip2): {means}")
    assert means["accuracy"] > 0.5 and means["lambda"] == 0.0
    s.close()


def test_the_schedule_resumes_from_a_snapshot(tmp_path):
    _mnist_lmdb(tmp_path / "lmdb", n=64)
    extra = f'snapshot: 3 snapshot_prefix: "{tmp_path / "snap"}"'
    net = mnist_net(tmp_path, 0)
    a = _solver(tmp_path, net, extra)
    a.step(6)
    want_lam, want_w = float(a.net.blob_data["lambda"][0]), a.net.params_by_layer()["ip2"][0].detach().clone()
    a.close()
    b = _solver(tmp_path, net, extra)
    b.restore(str(tmp_path / "snap_iter_3.solverstate"))
    assert b.net.layer("ip2").iteration == 3
    b.step(3)
    assert float(b.net.blob_data["lambda"][0]) == want_lam == float(port_lambda(**MNIST, it=6, f=np.float32))
    assert torch.equal(b.net.params_by_layer()["ip2"][0].detach(), want_w)
    b.close()
