"""GlobalLSEMargin (happynear/caffe-windows @ 0f293af5, global_lse_margin_layer.cu) against a NumPy port of
the fork's kernels and host loops, forward and backward, over several forwards (the margin is a running
estimate); its setup defaults, clamping, the third bottom, a training run, and its errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TRAIN
from neocaffe.layers.normface_lse import GlobalLSEMarginLayer, mean_shift
from neocaffe.proto import caffe_pb2

f32 = np.float32


# -- the fork, ported loop by loop (float32 as Dtype = float) ------------------------------------------
def fork_mean_shift(margins, mu, loop=1, max_restarts=3):
    """global_lse_margin_layer.cu MeanShift; ``max_restarts`` stops the fork's endless restart."""
    mu, last, restarts = f32(mu), f32(mu), 0
    while loop:
        loop -= 1
        count, total = 0, f32(0)
        for v in margins:
            if abs(float(f32(v - mu))) < 0.1:
                total = f32(total + v)
                count += 1
        if count == 0:
            restarts += 1
            if restarts > max_restarts:
                return None  # the fork hangs here
            total = f32(0)
            for v in margins:
                total = f32(total + v)
            mu = f32(total / f32(len(margins)))
            last = mu
            loop += 1
            continue
        mu = f32(total / f32(count))
        if abs(float(f32(last - mu))) < 0.001:
            break
        last = mu
    return mu


def fork_forward(x, label, s, m, norm=None, lo=0.0, hi=float(np.finfo(f32).max)):
    """One Forward_gpu: (top, statistics, new s, new m)."""
    x = np.asarray(x, f32).reshape(len(label), -1)
    num, dim = x.shape
    s = f32(min(max(s, lo), hi))
    gt = label.astype(int)
    target = np.array([x[i, gt[i]] for i in range(num)], f32)
    maxneg = np.empty(num, f32)
    for i in range(num):
        best = f32(-1.0)
        for j in range(dim):
            if j != gt[i] and x[i, j] > best:
                best = x[i, j]
        maxneg[i] = best
    a = np.asarray(norm, f32) if norm is not None else np.full(num, s, f32)
    lse = np.empty(num, f32)
    for i in range(num):
        total = f32(0)
        for j in range(dim):
            if j != gt[i]:
                total = f32(total + f32(np.exp(f32(a[i] * f32(x[i, j] - maxneg[i])))))
        lse[i] = f32(f32(np.log(total)) / a[i]) + maxneg[i]
    margins = (target - lse).astype(f32)
    if m == 0:
        new = fork_mean_shift(margins, f32(margins.sum(dtype=f32) / f32(num)), 20)
        if new is not None and not math.isnan(new):
            m = f32(new)
    else:
        shift = fork_mean_shift(margins, m)
        if shift is not None and not math.isnan(shift):
            m = f32(0.9 * float(m) + 0.1 * float(shift))
    top = x.copy()
    if m > 0:
        for i in range(num):
            top[i, gt[i]] = f32(x[i, gt[i]] - m)
    top = (top * a[:, None]).astype(f32)
    stats = np.array([a.mean() if norm is not None else s, target.mean(), lse.mean(), maxneg.mean(), m], f32)
    return top, stats, s, m


def fork_backward(top_diff, top, s, norm=None):
    """Backward_gpu: (bottom diff, s diff or None, norm diff or None)."""
    if norm is not None:
        norm = np.asarray(norm, f32)
        return (top_diff * norm[:, None]).astype(f32), None, (top_diff * top).sum(1) / norm
    return (top_diff * s).astype(f32), float((top_diff * top).sum()) / s, None


# -- helpers --------------------------------------------------------------------------------------------
def make_layer(extra="", bottoms=('"x"', '"label"'), tops=('"y"',)):
    text = ('name: "lse" type: "GlobalLSEMargin" ' + " ".join(f"bottom: {b}" for b in bottoms) + " "
            + " ".join(f"top: {t}" for t in tops) + f" {extra}")
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def cosines(rng, num, dim, lift=0.5):
    """Cosine-like logits whose target stands out by about ``lift``: positive margins."""
    x = rng.uniform(-0.3, 0.3, (num, dim)).astype(f32)
    label = rng.integers(0, dim, num)
    x[np.arange(num), label] = np.clip(x[np.arange(num), label] + lift, -1, 1)
    return x, label.astype(f32)


def test_forwards_and_backwards_match_the_forks_kernels_over_a_run():
    rng = np.random.default_rng(0)
    lp = make_layer(tops=('"y"', '"stats"'))
    x, label = cosines(rng, 8, 10)
    layer = GlobalLSEMarginLayer(lp, [x.shape, label.shape], TRAIN)
    assert [p.lr_mult for p in layer.param.param] == [1.0, 0.0]
    assert [p.decay_mult for p in layer.param.param] == [0.0, 0.0]
    s, m = f32(30.0), f32(0.0)
    for step in range(5):
        x, label = cosines(rng, 8, 10, lift=0.4 + 0.05 * step)
        want_top, want_stats, s, m = fork_forward(x, label, s, m)
        xt = torch.from_numpy(x).requires_grad_(True)
        layer.blobs[0].grad = None
        top, stats = layer(xt, torch.from_numpy(label))
        np.testing.assert_allclose(top.detach().numpy(), want_top, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(stats.numpy(), want_stats, rtol=1e-5, atol=1e-6)
        assert float(layer.blobs[1].detach()) == pytest.approx(float(m), rel=1e-5, abs=1e-7)
        assert float(layer.blobs[1].detach()) > 0  # these margins are positive: the target logit was shifted
        dy = rng.standard_normal(x.shape).astype(f32)
        top.backward(torch.from_numpy(dy))
        want_dx, want_ds, _ = fork_backward(dy, want_top, s)
        np.testing.assert_allclose(xt.grad.numpy(), want_dx, rtol=1e-6)
        assert float(layer.blobs[0].grad) == pytest.approx(want_ds, rel=1e-4, abs=1e-4)


def test_third_bottom_scales_each_item_and_takes_its_diff():
    rng = np.random.default_rng(1)
    x, label = cosines(rng, 6, 7)
    norm = rng.uniform(5, 20, 6).astype(f32)
    lp = make_layer(bottoms=('"x"', '"label"', '"norm"'), tops=('"y"', '"stats"'))
    layer = GlobalLSEMarginLayer(lp, [x.shape, label.shape, norm.shape], TRAIN)
    assert [p.lr_mult for p in layer.param.param] == [0.0, 0.0]
    m = f32(0.0)
    for _ in range(2):
        want_top, want_stats, _, m = fork_forward(x, label, 30.0, m, norm=norm)
        xt, nt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(norm).requires_grad_(True)
        top, stats = layer(xt, torch.from_numpy(label), nt)
        np.testing.assert_allclose(top.detach().numpy(), want_top, rtol=2e-6, atol=2e-5)
        np.testing.assert_allclose(stats.numpy(), want_stats, rtol=1e-5, atol=1e-6)
        dy = rng.standard_normal(x.shape).astype(f32)
        top.backward(torch.from_numpy(dy))
        want_dx, _, want_dn = fork_backward(dy, want_top, None, norm=norm)
        np.testing.assert_allclose(xt.grad.numpy(), want_dx, rtol=1e-6)
        np.testing.assert_allclose(nt.grad.numpy(), want_dn, rtol=1e-4, atol=1e-5)
        assert layer.blobs[0].grad is None  # s is not used with item scales


def test_scale_filler_and_clamping_in_place():
    rng = np.random.default_rng(2)
    x, label = cosines(rng, 4, 5)
    lp = make_layer('scale_param { filler { type: "constant" value: 64 } min_value: 1 max_value: 16 }')
    layer = GlobalLSEMarginLayer(lp, [x.shape, label.shape], TRAIN)
    assert float(layer.blobs[0].detach()) == 64.0
    top = layer(torch.from_numpy(x), torch.from_numpy(label))
    assert float(layer.blobs[0].detach()) == 16.0  # clamped in place, then used
    want, *_ = fork_forward(x, label, 64.0, 0.0, lo=1.0, hi=16.0)
    np.testing.assert_allclose(top.detach().numpy(), want, rtol=2e-6, atol=2e-6)
    layer.blobs[0].data.fill_(0.5)
    layer(torch.from_numpy(x), torch.from_numpy(label))
    assert float(layer.blobs[0].detach()) == 1.0


def test_negative_margins_leave_the_logits_unshifted():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 0.9, (5, 6)).astype(f32)
    label = rng.integers(0, 6, 5)
    x[np.arange(5), label] = -0.5
    layer = GlobalLSEMarginLayer(make_layer(), [x.shape, label.shape], TRAIN)
    top = layer(torch.from_numpy(x), torch.from_numpy(label.astype(f32)))
    assert float(layer.blobs[1].detach()) < 0
    np.testing.assert_allclose(top.detach().numpy(), 30.0 * x, rtol=1e-6)


def test_mean_shift_rounds_restart_and_the_forks_endless_restart():
    margins = np.array([0.50, 0.52, 0.55, 0.60, 0.90, 0.95], f32)  # mean 0.67: 0.60 lies within 0.1
    for mu, rounds in ((0.5, 1), (0.5, 20), (0.92, 1), (0.0, 1), (0.0, 20), (0.75, 20)):
        want = fork_mean_shift(margins, mu, rounds)
        assert want is not None and mean_shift(margins, mu, rounds) == float(want), (mu, rounds)
    # no margin within 0.1 of the mean of all: the fork restarts there forever; here that mean is returned
    split = np.array([0.0, 1.0], f32)
    assert fork_mean_shift(split, 0.3) is None
    assert mean_shift(split, 0.3, 1) == 0.5


def test_trains_with_the_solver_behind_a_cosine_layer(tmp_path):
    """AM-Softmax's head with the margin estimated instead of set: normalized features, a normalized
    InnerProduct, GlobalLSEMargin, SoftmaxWithLoss; the solver's steps lower the loss, s learns within its
    bounds, and the margin is a running estimate."""
    from tests.layers.test_normface import _batch, _conv, _input, _solver

    head = """
layer { name: "fc5" type: "InnerProduct" bottom: "conv1" top: "fc5" inner_product_param { num_output: 16
        weight_filler { type: "xavier" } } }
layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" }
layer { name: "fc6" type: "InnerProduct" bottom: "norm1" top: "fc6" param { lr_mult: 1 decay_mult: 1 }
        inner_product_param { num_output: 6 normalize: true bias_term: false weight_filler { type: "xavier" } } }
layer { name: "lse" type: "GlobalLSEMargin" bottom: "fc6" bottom: "label" top: "fc6_margin" top: "stats"
        scale_param { min_value: 4 max_value: 12 filler { type: "constant" value: 8 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6_margin" bottom: "label" top: "loss" }
"""
    s = _solver(tmp_path, _input(12) + _conv("conv1", "data", 8, True) + head, base_lr=0.05)
    data, label = _batch(12, 6, seed=5)
    losses, margins = [], []
    for _ in range(20):
        s.net.set_blob("data", data)
        s.net.set_blob("label", label)
        s.step(1)
        losses.append(float(s.net.blob_data["loss"]))
        stats = s.net.blob_data["stats"].numpy()
        margins.append(float(stats[4]))
        assert 4.0 <= float(stats[0]) <= 12.0
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"GlobalLSEMargin head: loss first 3 {first:.3f}, last 3 {last:.3f}; margin {margins[0]:.3f} -> "
          f"{margins[-1]:.3f}; s {float(stats[0]):.3f}")
    assert np.isfinite(losses).all() and last < 0.7 * first, losses
    assert margins[0] != 0.0 and len(set(margins)) > 1
    s.close()


@pytest.mark.parametrize("shapes, extra, match", [
    ([(4, 1), (4,)], "", "at least 2 logits"),
    ([(4, 5), (3,)], "", r"bottom 1 needs one label per item of bottom 0 \(4\); received shape \(3,\)"),
    ([(4, 5), (4,), (2, 2, 2)], "", r"bottom 2 needs one scale per item"),
    ([(4, 5), (4,)], "param { lr_mult: 1 } param { lr_mult: 1 }", "running estimate.*lr_mult"),
])
def test_bad_shapes_and_params_are_named(shapes, extra, match):
    bottoms = ('"x"', '"label"', '"norm"')[: len(shapes)]
    with pytest.raises(Exception, match=match) as e:
        GlobalLSEMarginLayer(make_layer(extra, bottoms=bottoms), shapes, TRAIN)
    assert "lse" in str(e.value)


def test_label_out_of_range_is_an_error():
    layer = GlobalLSEMarginLayer(make_layer(), [(2, 3), (2,)], TRAIN)
    with pytest.raises(Exception, match=r"label 3 out of range; expected labels in \[0, 3\)"):
        layer(torch.zeros(2, 3), torch.tensor([0.0, 3.0]))
