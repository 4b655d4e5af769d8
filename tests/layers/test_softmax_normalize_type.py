"""happynear's SoftmaxWithLoss ``softmax_param.normalize_type`` "L2"/"L1" (caffe-windows ms @ 967eedf2:
softmax_loss_layer.cpp builds its Normalize layer, normalize_layer.cpp, from the loss layer's own parameter in
place of the Softmax, and never runs its backward) against loop ports of the fork's CPU code: the loss and
the bottom diff with a top diff (loss_weight) != 1, ignore_label and the four normalization modes; the norm
chosen by ``normalize_param`` (softmax_param's "L1" alone is L2, as in the fork); the Normalize over the
legacy C whatever the softmax axis; checks that the fork's diff is not the loss's gradient (and a float64
gradient check of the "Softmax" default, where it is); the errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

f32 = np.float32
FLT_MIN = f32(1.17549435e-38)
HEAD = 'name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss"'
MODES = {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3}


def _layer(text: str, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, TRAIN)


def _text(softmax_type="L2", norm_type=None, extra="", axis=""):
    norm = f' normalize_param {{ normalize_type: "{norm_type}" }}' if norm_type else ""
    return f'{HEAD} softmax_param {{ normalize_type: "{softmax_type}" {axis}}}{norm} {extra}'


# -- loop ports of the fork's Forward_cpu / Backward_cpu ------------------------------------------
def port_normalize(x, typ, f=f32):
    """NormalizeLayer::Forward_cpu on the legacy (num, channels, spatial): caffe_sqr/caffe_abs, the channel
    sum in order in Dtype, ``+= 1e-6`` (in double, stored Dtype), sqrt (L2), ``top = x / norm``."""
    shape = x.shape
    n_, c_ = shape[0], shape[1] if len(shape) > 1 else 1
    v = x.astype(f).reshape(n_, c_, -1)
    sq = v * v if typ == "L2" else np.abs(v)
    top = np.zeros_like(v)
    for n in range(n_):
        for s in range(v.shape[2]):
            norm = f(0)
            for c in range(c_):
                norm = f(norm + sq[n, c, s])
            norm = f(np.float64(norm) + 1e-6)
            if typ == "L2":
                norm = f(np.sqrt(np.float64(norm)))
            for c in range(c_):
                top[n, c, s] = f(v[n, c, s] / norm)
    return top.reshape(shape)


def port_softmax_loss(prob, label, axis, ignore, mode, top_diff, f=f32):
    """SoftmaxWithLossLayer::Forward_cpu then Backward_cpu (two bottoms) on ``prob`` (the Normalize top, the
    memory of the bottom's shape): loss, bottom diff."""
    p = prob.astype(f).reshape(-1)
    outer, inner = int(np.prod(prob.shape[:axis])), int(np.prod(prob.shape[axis + 1:]))
    channels, dim = prob.shape[axis], p.size // outer
    lab = label.reshape(-1)

    def get_normalizer(count):
        n = {0: f(outer * inner), 1: count, 2: f(outer), 3: f(1)}[mode]
        return max(f(1), n)

    loss, count = f(0), f(0)
    for i in range(outer):
        for j in range(inner):
            lv = int(lab[i * inner + j])  # static_cast<int>
            if ignore is not None and lv == ignore:
                continue
            loss = f(loss - f(np.log(np.float64(max(p[i * dim + lv * inner + j], FLT_MIN)))))
            count = f(count + 1)
    loss = f(loss / get_normalizer(count))
    diff, count = p.copy(), f(0)
    for i in range(outer):
        for j in range(inner):
            lv = int(lab[i * inner + j])
            if ignore is not None and lv == ignore:
                for c in range(channels):
                    diff[i * dim + c * inner + j] = 0
            else:
                diff[i * dim + lv * inner + j] = f(diff[i * dim + lv * inner + j] - 1)
                count = f(count + 1)
    scale = f(f(top_diff) / get_normalizer(count))
    return loss, (diff * scale).reshape(prob.shape)


def _run(text, x, label, top_diff, dtype=torch.float32):
    layer = _layer(text, [x.shape, label.shape])
    if dtype == torch.float64:
        layer = layer.double()
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    out = layer(xt, torch.tensor(label, dtype=dtype))
    loss = out[0] if isinstance(out, list) else out
    loss.backward(torch.tensor(top_diff, dtype=dtype))
    return out, xt.grad.numpy()


def _labels(r, shape, c, ignore=None, n_ignored=0):
    lab = r.integers(0, c, shape).astype(np.float64)
    if n_ignored:
        lab.reshape(-1)[r.choice(lab.size, n_ignored, replace=False)] = ignore
    return lab


# -- the fork's loss and diff -----------------------------------------------------------------------
@pytest.mark.parametrize("typ", ["L2", "L1"])
@pytest.mark.parametrize("mode", list(MODES))
def test_loss_and_diff_match_the_fork(typ, mode):
    """(N, C, H, W) with axis 1, ignore_label 255 at 3 of 8 positions, top diff 0.7: loss and diff as the
    fork's loops, in float32. The fork's normalize_type is set in both fields (see the next test)."""
    r = np.random.default_rng(MODES[mode] + (10 if typ == "L1" else 0))
    x = r.standard_normal((2, 3, 2, 2)).astype(f32)
    label = _labels(r, (2, 1, 2, 2), 3, 255, 3)
    text = _text(typ, typ, f"loss_param {{ ignore_label: 255 normalization: {mode} }}")
    loss, grad = _run(text, x, label, 0.7)
    ref_loss, ref_diff = port_softmax_loss(port_normalize(x, typ), label, 1, 255, MODES[mode], 0.7)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=2e-6)
    np.testing.assert_allclose(grad, ref_diff, rtol=2e-6, atol=1e-7)
    ignored = np.broadcast_to(label == 255, x.shape)
    assert (grad[ignored] == 0).all() and (grad[~ignored] != 0).all()


@pytest.mark.parametrize("legacy", ["normalize: true", "normalize: false", ""])
def test_legacy_normalize_and_no_ignore_label(legacy):
    """(N, C) with no ignore_label; loss_param.normalize (VALID/BATCH_SIZE) or the default VALID; float64."""
    r = np.random.default_rng(3)
    x = r.standard_normal((5, 4))
    label = _labels(r, (5,), 4)
    mode = {"normalize: true": 1, "normalize: false": 2, "": 1}[legacy]
    loss, grad = _run(_text("L2", extra=f"loss_param {{ {legacy} }}"), x, label, 2.5, torch.float64)
    ref_loss, ref_diff = port_softmax_loss(port_normalize(x, "L2", np.float64), label, 1, None, mode, 2.5, np.float64)
    # rtol 1e-10: a clamped term is log of softmax_loss.FLT_MIN = 1.17549435e-38 in double, Caffe's is 2**-126
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_diff, rtol=1e-12, atol=1e-15)


def test_the_norm_comes_from_normalize_param():
    """The fork's Normalize reads normalize_param.normalize_type (default "L2"): softmax_param's "L1" alone
    is L2; "L2" with normalize_param's "L1" is L1."""
    r = np.random.default_rng(4)
    x = r.standard_normal((4, 5)).astype(f32)
    label = _labels(r, (4,), 5)
    l2 = port_softmax_loss(port_normalize(x, "L2"), label, 1, None, 1, 1.0)
    l1 = port_softmax_loss(port_normalize(x, "L1"), label, 1, None, 1, 1.0)
    assert abs(l1[0] - l2[0]) > 0.1
    for text, (ref_loss, ref_diff) in [(_text("L1"), l2), (_text("L2"), l2), (_text("L1", "L2"), l2),
                                       (_text("L1", "L1"), l1), (_text("L2", "L1"), l1)]:
        loss, grad = _run(text, x, label, 1.0)
        np.testing.assert_allclose(loss.item(), ref_loss, rtol=2e-6, err_msg=text)
        np.testing.assert_allclose(grad, ref_diff, rtol=2e-6, atol=1e-7, err_msg=text)


def test_normalize_over_legacy_channels_whatever_the_axis():
    """softmax_param.axis 2 on (2, 3, 4): the fork normalizes over axis 1 (the legacy C), its loss reads
    prob[label] along axis 2 on the same memory."""
    r = np.random.default_rng(5)
    x = r.standard_normal((2, 3, 4)).astype(f32)
    label = _labels(r, (2, 3), 4, -1, 1)
    text = _text("L2", extra="loss_param { ignore_label: -1 }", axis="axis: 2 ")
    loss, grad = _run(text, x, label, 0.3)
    ref_loss, ref_diff = port_softmax_loss(port_normalize(x, "L2"), label, 2, -1, 1, 0.3)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=2e-6)
    np.testing.assert_allclose(grad, ref_diff, rtol=2e-6, atol=1e-7)
    axis2 = x / np.sqrt((x * x).sum(2, keepdims=True) + 1e-6)  # what a normalization along the axis would be
    assert not np.allclose(port_softmax_loss(axis2, label, 2, -1, 1, 0.3)[0], ref_loss)


def test_nonpositive_score_clamps_and_prob_top():
    """A label whose normalized score is <= 0: the loss term is -log(FLT_MIN), the diff still prob - 1;
    the second top is the normalized x (no diff)."""
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 4.0]], f32)
    label = np.array([1.0, 0.0])
    (loss, prob), grad = _run(_text("L2", extra='top: "prob"'), x, label, 1.0)
    y = port_normalize(x, "L2")
    np.testing.assert_allclose(prob.detach().numpy(), y, rtol=1e-6)
    assert not prob.requires_grad
    np.testing.assert_allclose(loss.item(), -np.log(FLT_MIN), rtol=1e-6)  # (87.34 * 2) / 2
    ref = y.copy()
    ref[[0, 1], [1, 0]] -= 1
    np.testing.assert_allclose(grad, ref / 2, rtol=1e-6)


def test_loss_weight_in_a_net():
    """Through a Net with loss_weight 0.4: the loss and x's diff are the fork's with top diff 0.4."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    text = ('force_backward: true\nlayer { name: "in" type: "Input" top: "x" top: "label" '
            'input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } } }\n'
            f'layer {{ {_text("L1", "L1", "loss_weight: 0.4 loss_param { normalization: BATCH_SIZE }")} }}\n')
    net = Net(read_net(text), TRAIN)
    r = np.random.default_rng(6)
    x = r.standard_normal((3, 4)).astype(f32)
    label = np.array([3.0, 0.0, 2.0], f32)
    net.set_blob("x", torch.tensor(x))
    net.set_blob("label", torch.tensor(label))
    total = net.forward()
    net.backward()
    ref_loss, ref_diff = port_softmax_loss(port_normalize(x, "L1"), label, 1, None, 2, 0.4)
    np.testing.assert_allclose(net.blob("loss").item(), ref_loss, rtol=2e-6)
    np.testing.assert_allclose(total.item(), f32(0.4) * ref_loss, rtol=2e-6)
    np.testing.assert_allclose(net.blob_diff("x").numpy(), ref_diff, rtol=2e-6, atol=1e-7)


# -- gradients ------------------------------------------------------------------------------------
@pytest.mark.parametrize("typ", ["L2", "L1"])
def test_the_fork_diff_is_not_the_gradient(typ):
    """The fork's diff is (prob - onehot) / normalizer with the normalized prob: not the loss's gradient
    (a float64 gradient check fails), though it is what the layer returns."""
    r = np.random.default_rng(7)
    x = torch.tensor(r.uniform(0.5, 1.5, (3, 4)), requires_grad=True)  # positive: no clamp, no |x| kink
    label = torch.tensor([0.0, 2.0, 3.0], dtype=torch.float64)
    layer = _layer(_text(typ, typ), [(3, 4), (3,)]).double()
    assert not torch.autograd.gradcheck(lambda a: layer(a, label), (x,), raise_exception=False)
    def true_loss(a):
        s = a.abs().sum(1, keepdim=True) + 1e-6 if typ == "L1" else (a.square().sum(1, keepdim=True) + 1e-6).sqrt()
        return -torch.log(a / s)[[0, 1, 2], [0, 2, 3]].sum() / 3

    true_grad = torch.autograd.functional.jacobian(true_loss, x.detach())
    layer(x, label).backward()
    assert not torch.allclose(x.grad, true_grad, atol=1e-3)
    assert torch.allclose(layer(x, label), true_loss(x.detach()))  # the same loss


def test_softmax_default_is_the_gradient_and_unchanged():
    """The "Softmax" default (written or not): the float64 gradient check holds, and the port with the
    softmax as prob gives the loss and diff."""
    r = np.random.default_rng(8)
    x = r.standard_normal((2, 3, 2))
    label = _labels(r, (2, 2), 3, 7, 1)
    extra = "loss_param { ignore_label: 7 normalization: FULL }"
    layer = _layer(_text("Softmax", extra=extra), [(2, 3, 2), (2, 2)]).double()
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.tensor(label)
    assert torch.autograd.gradcheck(lambda a: layer(a, lt) * 0.6, (xt,))
    e = np.exp(x - x.max(1, keepdims=True))
    ref_loss, ref_diff = port_softmax_loss(e / e.sum(1, keepdims=True), label, 1, 7, 0, 0.6, np.float64)
    for text in (_text("Softmax", extra=extra), f"{HEAD} {extra}"):
        loss, grad = _run(text, x, label, 0.6, torch.float64)
        np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_diff, rtol=1e-12, atol=1e-15)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, shapes, match", [
    (_text("L3"), [(2, 3), (2,)], r"softmax_param.normalize_type 'L3' unknown; expected 'Softmax', 'L2' or 'L1'"),
    (_text("softmax"), [(2, 3), (2,)], r"normalize_type 'softmax' unknown"),
    (_text("L2", "L3"), [(2, 3), (2,)], r"normalize_param.normalize_type 'L3' unknown"),
    (_text("L2"), [(1, 2, 3, 1, 2), (1, 3, 1, 2)], r"at most 4 axes .*received shape \(1, 2, 3, 1, 2\)"),
    (_text("L2").replace('"SoftmaxWithLoss"', '"SoftmaxWithLossOHEM"'), [(2, 3), (2,)],
     r"\(SoftmaxWithLossOHEM\): softmax_param.normalize_type 'L2' is happynear's SoftmaxWithLoss's"),
])
def test_errors(text, shapes, match):
    with pytest.raises(LayerSetupError, match=match):
        _layer(text, shapes).reshape(shapes)
