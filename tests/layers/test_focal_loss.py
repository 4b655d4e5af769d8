"""FocalLoss (zimenglan-sysu-512/Focal-Loss @ d767cb96) against loop ports of the fork's CPU and CUDA code
(tests/layers/focal_loss_reference.py), forward and the fork's backward; SoftmaxWithLoss at gamma 0, alpha 1;
float64 gradient checks (the fork's diff is the gradient); liaomingg/Focal-Loss's layer (same loss); and
xialuxi/arcface-caffe's cosin_add_m.prototxt (tests/layers/data/arcface) training with the real FocalLoss."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import focal_loss_reference as ref

F = np.float32
ARCFACE = Path(__file__).parent / "data" / "arcface"
MODES = {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3}


def _layer(shape, label_shape, extra: str = "", tops: int = 1, type_name: str = "FocalLoss"):
    top = ' top: "loss"' + (' top: "prob"' if tops == 2 else "")
    p = text_format.Parse(f'name: "fl" type: "{type_name}" bottom: "x" bottom: "label"{top} {extra}',
                          caffe_pb2.LayerParameter())
    return get_layer_class(type_name)(p, [tuple(shape), tuple(label_shape)], TRAIN)


def _run(layer, x, label, top_diff=1.0, dtype=torch.float32, device="cpu"):
    xt = torch.tensor(x, dtype=dtype, device=device, requires_grad=True)
    out = layer.to(device)(xt, torch.tensor(label, dtype=dtype, device=device))
    loss = out[0] if isinstance(out, list) else out
    loss.backward(torch.tensor(top_diff, dtype=dtype, device=device))
    return loss.detach().cpu().numpy(), xt.grad.cpu().numpy(), out


def _extra(axis=None, ignore=None, norm=None, alpha=None, gamma=None):
    s = f" softmax_param {{ axis: {axis} }}" if axis is not None else ""
    lp = (f" ignore_label: {ignore}" if ignore is not None else "") + (
        f" normalization: {norm}" if norm in MODES else f" normalize: {norm}" if norm is not None else "")
    s += f" loss_param {{{lp} }}" if lp else ""
    fp = (f" alpha: {alpha}" if alpha is not None else "") + (f" gamma: {gamma}" if gamma is not None else "")
    return s + (f" focal_loss_param {{{fp} }}" if fp else "")


def _mode(norm) -> int:
    return {None: 1, "true": 1, "false": 2}.get(norm, MODES.get(norm, 1))


# (x shape, label shape, softmax axis, ignore_label, normalization, alpha, gamma, logit scale)
CASES = [
    ((6, 5), (6,), None, None, None, None, None, 1.0),
    ((2, 4, 3, 5), (2, 1, 3, 5), None, 255, None, 0.25, 2, 2.0),
    ((2, 4, 3, 5), (2, 3, 5), None, 255, "FULL", 1, 0.5, 2.0),
    ((2, 4, 3, 5), (2, 15), None, -1, "BATCH_SIZE", 4, 5, 1.5),
    ((3, 2, 4), (3, 2), -1, 1, "NONE", 0.5, 1, 3.0),
    ((3, 4, 2, 3), (3, 4, 1, 3), 2, None, "true", 0.25, 0, 2.0),
    ((4, 6), (4,), None, 2, "false", 2, 3.5, 1.0),
    ((4, 6, 2), (4, 2), None, None, "VALID", 0.25, 2, 60.0),  # p_t = 1 and p_t < FLT_MIN: both clamps
    ((4, 6, 2), (4, 2), None, None, "VALID", 1, 0.5, 60.0),
]


def _case_data(i, xs, ls, axis, ignore, scale):
    r = np.random.default_rng(100 + i)
    x = (r.standard_normal(xs) * scale).astype(F)
    c = xs[axis if axis is not None else 1]
    lab = r.integers(0, c, ls).astype(F)
    if ignore is not None:
        flat = lab.reshape(-1)
        flat[r.choice(flat.size, max(1, flat.size // 4), replace=False)] = ignore
    return x, lab


@pytest.mark.parametrize("i", range(len(CASES)))
def test_forward_and_backward_match_the_forks_cpu_loops(i):
    xs, ls, axis, ignore, norm, alpha, gamma, scale = CASES[i]
    x, lab = _case_data(i, xs, ls, axis, ignore, scale)
    layer = _layer(xs, ls, _extra(axis, ignore, norm, alpha, gamma), tops=2)
    loss, grad, out = _run(layer, x, lab, top_diff=0.7)
    kw = dict(axis=axis if axis is not None else 1, ignore=ignore, mode=_mode(norm),
              alpha=alpha if alpha is not None else 0.25, gamma=gamma if gamma is not None else 2.0)
    want_loss, want_prob = ref.zimenglan_forward_cpu(x, lab, **kw)
    want_grad = ref.zimenglan_backward_cpu(x, lab, top_diff=0.7, **kw)
    gpu_loss, _ = ref.zimenglan_forward_gpu(x, lab, **kw)
    d_loss, d_grad = abs(float(loss) - float(want_loss)), np.abs(grad - want_grad).max()
    print(f"case {i}: loss {float(loss):.6g}, |loss - port| {d_loss:.3g}, max |diff - port| {d_grad:.3g}, "
          f"|.cu port - .cpp port| {abs(float(gpu_loss) - float(want_loss)):.3g}")
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(float(gpu_loss), float(want_loss), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-6 * max(1.0, np.abs(want_grad).max()))
    np.testing.assert_allclose(out[1].detach().numpy(), want_prob, rtol=0, atol=1e-6)
    if ignore is not None:  # ignored positions get no diff
        ax = kw["axis"] % x.ndim
        lab3 = lab.reshape(grad.shape[:ax] + (1,) + grad.shape[ax + 1:])
        assert not (grad * (np.broadcast_to(lab3, grad.shape) == ignore)).any()


@pytest.mark.parametrize("ignore, norm", [(None, None), (255, "VALID"), (255, "FULL"), (255, "BATCH_SIZE"), (255, "NONE")])
def test_gamma_0_alpha_1_is_softmax_with_loss(ignore, norm):
    r = np.random.default_rng(7)
    x = (r.standard_normal((3, 5, 2, 4)) * 3).astype(F)
    lab = r.integers(0, 5, (3, 1, 2, 4)).astype(F)
    if ignore is not None:
        lab[0, 0, 1, :2] = ignore
    extra = _extra(None, ignore, norm)
    ours = _run(_layer(x.shape, lab.shape, extra + " focal_loss_param { alpha: 1 gamma: 0 }"), x, lab, 1.3)
    theirs = _run(_layer(x.shape, lab.shape, extra, type_name="SoftmaxWithLoss"), x, lab, 1.3)
    print(f"gamma 0 alpha 1 vs SoftmaxWithLoss ({norm}): |loss| {abs(float(ours[0] - theirs[0])):.3g}, "
          f"max |diff| {np.abs(ours[1] - theirs[1]).max():.3g}")
    assert float(ours[0]) == float(theirs[0])
    assert np.array_equal(ours[1], theirs[1])


@pytest.mark.parametrize("gamma, alpha, axis, ignore", [(0, 1, None, None), (0.5, 0.25, None, 2), (2, 0.25, -1, None),
                                                        (4.5, 3, 1, 0)])
def test_float64_gradcheck(gamma, alpha, axis, ignore):
    """The fork's diff is the gradient of its loss (away from the clamps)."""
    r = np.random.default_rng(8)
    x = torch.tensor(r.standard_normal((3, 4, 5)), dtype=torch.float64, requires_grad=True)
    c = x.shape[axis if axis is not None else 1]
    lshape = (3, 5) if axis in (None, 1) else (3, 4)
    lab = torch.tensor(r.integers(0, c, lshape), dtype=torch.float64)
    layer = _layer(x.shape, lab.shape, _extra(axis, ignore, None, alpha, gamma)).double()
    assert torch.autograd.gradcheck(lambda t: layer(t, lab), (x,), atol=1e-8, rtol=1e-6, eps=1e-6)


def test_linear_type_and_beta_change_nothing():
    """The fork reads ``type`` and ``beta`` and computes ORIGIN's loss whatever they are."""
    r = np.random.default_rng(9)
    x = r.standard_normal((4, 3, 2)).astype(F)
    lab = r.integers(0, 3, (4, 2)).astype(F)
    a = _run(_layer(x.shape, lab.shape, "focal_loss_param { type: ORIGIN gamma: 1.5 }"), x, lab)
    b = _run(_layer(x.shape, lab.shape, "focal_loss_param { type: LINEAR gamma: 1.5 beta: -3 }"), x, lab)
    assert float(a[0]) == float(b[0]) and np.array_equal(a[1], b[1])


def test_defaults_and_the_prob_top():
    fp = caffe_pb2.FocalLossParameter()
    assert (fp.type, fp.gamma, fp.alpha, fp.beta) == (fp.ORIGIN, F(2), F(0.25), F(1))
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["focal_loss_param"].number == 3124
    r = np.random.default_rng(10)
    x = r.standard_normal((2, 3, 4)).astype(F)
    lab = r.integers(0, 3, (2, 4)).astype(F)
    layer = _layer(x.shape, lab.shape, tops=2)
    assert layer.reshape([x.shape, lab.shape]) == [(), x.shape]
    assert layer.default_loss_weights() == [1.0, 0.0]
    xt = torch.tensor(x, requires_grad=True)
    loss, prob = layer(xt, torch.tensor(lab))
    np.testing.assert_allclose(prob.numpy(), torch.softmax(torch.tensor(x), 1).numpy(), rtol=0, atol=0)
    assert not prob.requires_grad  # the prob top's diff is ignored, as Caffe's


@pytest.mark.parametrize("extra, shape, lshape, match", [
    ("focal_loss_param { gamma: -1 }", (2, 3), (2,), "gamma must be >= 0"),
    ("focal_loss_param { alpha: 0 }", (2, 3), (2,), "alpha must be > 0"),
    ("loss_param { normalization: PRE_FIXED }", (2, 3), (2,), "PRE_FIXED is unknown"),
    ("", (2, 3, 4), (2, 3), "needs 8 labels"),
    ("softmax_param { axis: 3 }", (2, 3, 4), (2, 3), "softmax_param.axis 3 out of range"),
])
def test_errors_name_the_layer(extra, shape, lshape, match):
    with pytest.raises(LayerSetupError, match=match) as e:
        layer = _layer(shape, lshape, extra)
        layer.reshape([shape, lshape])
    assert "'fl' (FocalLoss)" in str(e.value)


def test_the_readmes_layer_builds():
    """zimenglan's README example: ``loss_param { ignore_label: -1 normalize: true }`` is VALID over the
    non-ignored labels; a p_t of exactly 1 with gamma < 1 keeps a finite (zero) diff, where autograd's
    ``(1 - p_t)^(gamma - 1)`` gives NaN."""
    text = ('name: "loss_cls" type: "FocalLoss" bottom: "cls_score" bottom: "labels" propagate_down: 1 '
            'propagate_down: 0 top: "loss_cls" include { phase: TRAIN } loss_weight: 1 '
            'loss_param { ignore_label: -1 normalize: true } focal_loss_param { alpha: 0.25 gamma: 2 }')
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class("FocalLoss")(p, [(4, 3), (4,)], TRAIN)
    assert (layer.mode, layer.ignore, layer.alpha, layer.gamma) == (1, -1, 0.25, 2.0)
    x = np.array([[2, 0, 1], [0, 1, 0], [1, 1, 3], [0, 0, 0]], F)
    lab = np.array([0, -1, 2, 1], F)
    loss, _, _ = _run(layer, x, lab)
    want, _ = ref.zimenglan_forward_cpu(x, lab, ignore=-1, mode=1)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    x = np.array([[60, 0, -3]], F)  # p_t == 1 in float32
    _, grad, _ = _run(_layer(x.shape, (1,), "focal_loss_param { gamma: 0.5 }"), x, np.zeros(1, F))
    assert np.array_equal(grad, np.zeros_like(grad))


def test_gama_spelling_is_not_carried():
    with pytest.raises(text_format.ParseError, match="gama"):
        text_format.Parse("focal_loss_param { gama: 2 }", caffe_pb2.LayerParameter())


@pytest.mark.parametrize("gamma", [1, 2, 3.5])
def test_liaomingg_layer_is_the_same_loss(gamma):
    """liaomingg/Focal-Loss's README layer parses (its alpha and focal_loss_param at other numbers) and its
    loss and diff are this layer's (gamma >= 1: its unclamped ``(1 - p_t)^(gamma - 1)`` is finite)."""
    text = ('name: "focal_loss" type: "FocalLoss" bottom: "conv_cls" bottom: "label" top: "loss" '
            f'include {{ phase: TRAIN }} loss_param {{ ignore_label: 255 }} focal_loss_param {{ alpha: 0.25 gamma: {gamma} }}')
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    r = np.random.default_rng(12)
    x = (r.standard_normal((2, 4, 3, 3)) * 2).astype(F)
    lab = r.integers(0, 4, (2, 1, 3, 3)).astype(F)
    lab[1, 0, 0] = 255
    layer = get_layer_class("FocalLoss")(p, [x.shape, lab.shape], TRAIN)
    loss, grad, _ = _run(layer, x, lab, 0.5)
    kw = dict(ignore=255, alpha=0.25, gamma=gamma)
    want = ref.liaomingg_forward_cpu(x, lab, **kw)
    want_grad = ref.liaomingg_backward_cpu(x, lab, top_diff=0.5, **kw)
    print(f"liaomingg gamma {gamma}: |loss - port| {abs(float(loss) - float(want)):.3g}, "
          f"max |diff - port| {np.abs(grad - want_grad).max():.3g}")
    np.testing.assert_allclose(float(loss), float(want), rtol=2e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-6)


@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    r = np.random.default_rng(13)
    for i, (xs, ls, axis, ignore, norm, alpha, gamma, scale) in enumerate(CASES):
        x, lab = _case_data(i, xs, ls, axis, ignore, scale)
        extra = _extra(axis, ignore, norm, alpha, gamma)
        cpu = _run(_layer(xs, ls, extra), x, lab, 0.7)
        gpu = _run(_layer(xs, ls, extra), x, lab, 0.7, device="cuda")
        print(f"case {i}: CUDA vs CPU |loss| {abs(float(cpu[0] - gpu[0])):.3g}, max |diff| {np.abs(cpu[1] - gpu[1]).max():.3g}")
        np.testing.assert_allclose(float(gpu[0]), float(cpu[0]), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(gpu[1], cpu[1], rtol=0, atol=1e-6 * max(1.0, np.abs(cpu[1]).max()))
    x = torch.tensor(r.standard_normal((64, 81, 32, 32)), dtype=torch.float32, device="cuda")
    lab = torch.randint(0, 81, (64, 32, 32), device="cuda").float()
    layer = _layer(x.shape, lab.shape, "loss_param { ignore_label: 3 }").cuda()
    assert torch.isfinite(layer(x, lab))


# -- xialuxi/arcface-caffe's cosin_add_m.prototxt with the real FocalLoss --------------------------------------
def _arcface_net(n: int, size: int, classes: int = 10) -> caffe_pb2.NetParameter:
    """cosin_add_m.prototxt with its LMDB Data layer replaced by an Input of ``n`` images of ``size`` x ``size``
    and labels, ``classes`` classes instead of CASIA's 10575 (as tests/layers/test_arcface_nets.py)."""
    net = read_net(ARCFACE / "cosin_add_m.prototxt")
    out = caffe_pb2.NetParameter(name=net.name)
    for layer in net.layer:
        if layer.type == "Data":
            layer = text_format.Parse(f'name: "data" type: "Input" top: "data" top: "label" input_param {{ '
                                      f'shape {{ dim: {n} dim: 3 dim: {size} dim: {size} }} shape {{ dim: {n} }} }}',
                                      caffe_pb2.LayerParameter())
        elif layer.name == "fc6":
            layer.inner_product_param.num_output = classes
        out.layer.add().CopyFrom(layer)
    return out


def test_arcface_cosin_add_m_parses_with_its_focal_loss_param():
    if not (ARCFACE / "cosin_add_m.prototxt").exists():
        pytest.skip("tests/layers/data/arcface/cosin_add_m.prototxt is absent")
    net = read_net(ARCFACE / "cosin_add_m.prototxt")
    fl = next(layer for layer in net.layer if layer.type == "FocalLoss")
    fp = fl.focal_loss_param
    assert (fp.type, fp.gamma, fp.alpha, fp.beta) == (fp.ORIGIN, F(2), F(0.25), F(1))
    assert list(fl.bottom) == ["fc6_margin_scale", "label"] and list(fl.loss_weight) == [1]


def test_arcface_cosin_add_m_trains_with_focal_loss(tmp_path):
    """The fork's 20-layer residual net at its widths on 4 images of 32 x 32, 3 SGD steps with the real
    FocalLoss: finite losses, each equal to the CPU port's loss on the net's own fc6_margin_scale and labels."""
    if not (ARCFACE / "cosin_add_m.prototxt").exists():
        pytest.skip("tests/layers/data/arcface/cosin_add_m.prototxt is absent")
    from neocaffe.solver.solver import Solver

    (tmp_path / "net.prototxt").write_text(text_format.MessageToString(_arcface_net(4, 32)))
    p = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 '
                      'weight_decay: 0.0005 display: 0 random_seed: 3 solver_mode: CPU', p)
    s = Solver(p)
    assert type(s.net.layer("focal_loss")).__name__ == "FocalLoss"
    g = np.random.default_rng(0)
    data = torch.tensor(g.normal(0, 0.5, (4, 3, 32, 32)).astype(F))
    label = torch.tensor([0.0, 3.0, 7.0, 3.0])
    losses, diffs = [], []
    t0 = time.perf_counter()
    for _ in range(3):
        s.net.set_blob("data", data)
        s.net.set_blob("label", label)
        s.step(1)
        loss = float(s.net.blob_data["focal_loss"])
        want, _ = ref.zimenglan_forward_gpu(s.net.blob_data["fc6_margin_scale"].numpy(), label.numpy(), gamma=2, alpha=0.25)
        losses.append(loss)
        diffs.append(abs(loss - float(want)))
    print(f"cosin_add_m.prototxt with FocalLoss: losses {np.round(losses, 4).tolist()}, max |loss - port| "
          f"{max(diffs):.3g} ({time.perf_counter() - t0:.2f} s for 3 steps)")
    assert np.isfinite(losses).all()
    np.testing.assert_allclose(diffs, 0, atol=1e-5 * max(1.0, max(losses)))
    s.close()
