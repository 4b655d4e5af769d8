"""xialuxi/arcface-caffe's real files (copies in tests/layers/data/arcface, see its README): the ArcFace and
AdaCos training prototxts build and train a few steps; the landmark+pose model and MTCNN's PNet (det1) give
OpenCV dnn's outputs on a crop of the fork's face_detection/0.jpg; and the fork's copies of layer types that
neocaffe registers from other lineages (SmoothL1Loss, DepthwiseConvolution, Axpy) compared with them."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import arcface_reference as ref

DATA = Path(__file__).parent / "data" / "arcface"
F = np.float32
CLASSES = 10


def _train_net(name: str, n: int, size: int) -> caffe_pb2.NetParameter:
    """The fork's training prototxt with its LMDB Data layer replaced by an Input of ``n`` images of
    ``size`` x ``size`` and labels, ``CLASSES`` classes instead of CASIA's 10575 (cosin_add_m.prototxt keeps its
    FocalLoss: zimenglan-sysu-512's, ``neocaffe.layers.focal_loss``)."""
    net = read_net((DATA / name).read_text())
    out = caffe_pb2.NetParameter()
    out.name = net.name
    for layer in net.layer:
        if layer.type == "Data":
            layer = text_format.Parse(f'name: "data" type: "Input" top: "data" top: "label" input_param {{ '
                                      f'shape {{ dim: {n} dim: 3 dim: {size} dim: {size} }} shape {{ dim: {n} }} }}',
                                      caffe_pb2.LayerParameter())
        elif layer.name == "fc6":
            layer.inner_product_param.num_output = CLASSES
        elif layer.type == "AdaCosAddmScale":
            assert layer.adacos_add_m_scale_param.num_classes == 10575
            layer.adacos_add_m_scale_param.num_classes = CLASSES
        out.layer.add().CopyFrom(layer)
    return out


def test_the_forks_prototxts_parse():
    arc = read_net(DATA / "adacos_add_m_scale.prototxt")
    types = {layer.type for layer in arc.layer}
    assert {"NormL2", "AdaCosAddmScale"} <= types
    ada = next(layer for layer in arc.layer if layer.type == "AdaCosAddmScale")
    assert ada.adacos_add_m_scale_param.m == F(0.5) and ada.adacos_add_m_scale_param.num_classes == 10575
    cos = read_net(DATA / "cosin_add_m.prototxt")
    focal = next(layer for layer in cos.layer if layer.type == "FocalLoss")
    assert (focal.focal_loss_param.gamma, focal.focal_loss_param.alpha) == (2, F(0.25))


@pytest.mark.parametrize("name, top", [("cosin_add_m.prototxt", "fc6_margin"),
                                       ("adacos_add_m_scale.prototxt", "fc6_margin_scale")])
def test_the_forks_training_prototxts_train(tmp_path, name, top):
    """The fork's 20-layer residual nets at their widths on 4 images of 32 x 32 (the data layer shrunk), a
    few SGD steps: finite losses; the margin layer acts at the labels."""
    from neocaffe.solver.solver import Solver

    net = _train_net(name, 4, 32)
    (tmp_path / "net.prototxt").write_text(text_format.MessageToString(net))
    p = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 '
                      'weight_decay: 0.0005 display: 0 random_seed: 3 solver_mode: CPU', p)
    s = Solver(p)
    g = np.random.default_rng(0)
    data = torch.tensor(g.normal(0, 0.5, (4, 3, 32, 32)).astype(F))
    label = torch.tensor([0.0, 3.0, 7.0, 3.0])
    losses = []
    t0 = time.perf_counter()
    for _ in range(4):
        s.net.set_blob("data", data)
        s.net.set_blob("label", label)
        s.step(1)
        losses.append(float(s.net.blob_data["focal_loss" if name.startswith("cosin") else "softmax_loss"]))
    print(f"{name}: losses {np.round(losses, 4).tolist()} ({time.perf_counter() - t0:.2f} s for 4 steps)")
    assert np.isfinite(losses).all()
    fc6, out = s.net.blob_data["fc6"], s.net.blob_data[top]
    lab = label.long()[:, None]
    other = torch.ones_like(fc6, dtype=torch.bool).scatter(1, lab, False)
    if name.startswith("adacos"):
        scale = s.net.layer("adacos_add_m_scale").scale()
        assert np.isfinite(scale) and torch.allclose(out[other], scale * fc6[other])
    else:
        assert torch.equal(out[other], fc6[other])
    assert (out.gather(1, lab) < fc6.gather(1, lab) * (scale if name.startswith("adacos") else 1)).all()
    s.close()


# -- the real models against OpenCV dnn ---------------------------------------------------------------------
def _opencv(prototxt: Path, model: Path, x: np.ndarray, outs: list[str]):
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)  # OpenCV's Winograd 3 x 3 convolution rounds differently (~1e-5 here)
    net.setInput(x)
    return [np.asarray(v) for v in net.forward(outs)]


def _crop() -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    img = cv2.imread(str(DATA / "face_crop.png"))
    assert img is not None and img.shape == (128, 128, 3)
    return img


def test_landmark_model_matches_opencv():
    """landmark_and_pose/new_model: 48 x 48 face -> fc2 (3 pose angles / 90, 21 (x, y) points in [-1, 1]),
    preprocessed as its detect.py."""
    cv2 = pytest.importorskip("cv2")
    face = cv2.resize(_crop()[40:88, 52:96], (48, 48), interpolation=cv2.INTER_LINEAR)
    x = ((face.astype(F) - F(127.5)) * F(0.0078125)).transpose(2, 0, 1)[None].copy()
    net = Net(read_net(DATA / "landmark.prototxt"), TEST)
    net.copy_from(str(DATA / "landmark.caffemodel"))
    net.forward({"data": torch.from_numpy(x)})
    ours = net.blob_data["fc2"].numpy()
    (want,) = _opencv(DATA / "landmark.prototxt", DATA / "landmark.caffemodel", x, ["fc2"])
    print(f"landmark fc2: max abs difference {np.abs(ours - want).max():.3g} (output scale {np.abs(want).max():.3g})")
    assert ours.shape == want.shape == (1, 45)
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_mtcnn_pnet_matches_opencv():
    """face_detection/model/det1 (PNet) on the 128 x 128 crop (mtcnn.py's (x - 127.5) * 0.0078125)."""
    x = ((_crop().astype(F) - F(127.5)) * F(0.0078125)).transpose(2, 0, 1)[None].copy()
    net = Net(read_net(DATA / "det1.prototxt"), TEST)
    net.copy_from(str(DATA / "det1.caffemodel"))
    net.forward({"data": torch.from_numpy(x)})
    outs = ["prob1", "conv4-2"]
    want = _opencv(DATA / "det1.prototxt", DATA / "det1.caffemodel", x, outs)
    for name, w in zip(outs, want):
        ours = net.blob_data[name].numpy()
        print(f"det1 {name}: max abs difference {np.abs(ours - w).max():.3g} (output scale {np.abs(w).max():.3g})")
        assert ours.shape == w.shape == (1, 2 if name == "prob1" else 4, 59, 59)
        np.testing.assert_allclose(ours, w, rtol=0, atol=1e-5 * np.abs(w).max())
    assert net.blob_data["prob1"][0, 1].max() > 0.9  # a face window on the crop


# -- the fork's copies of types neocaffe registers from other lineages ------------------------------------------
def _smooth_l1(bottoms, sigma: float | None = None):
    extra = f" smooth_l1_loss_param {{ sigma: {sigma} }}" if sigma else ""
    names = " ".join(f'bottom: "b{i}"' for i in range(len(bottoms)))
    p = text_format.Parse(f'name: "l" type: "SmoothL1Loss" {names} top: "loss"{extra}', caffe_pb2.LayerParameter())
    layer = get_layer_class("SmoothL1Loss")(p, [b.shape for b in bottoms], TRAIN)
    ts = [torch.tensor(b, requires_grad=i < 2) for i, b in enumerate(bottoms)]
    loss = layer(*ts)
    loss.backward()
    return float(loss), [t.grad.numpy() for t in ts[:2]]


def test_the_forks_smooth_l1_cpu_differs_from_fast_rcnns_only_with_weights_or_sigma():
    """landmark_and_pose/smooth_L1_loss_layer.cpp (its .cu is Fast R-CNN's): with two bottoms and sigma 1, what
    neocaffe's SmoothL1Loss computes; its CPU code ignores sigma and the outside weights and leaves the inside
    weights out of the backward."""
    r = np.random.default_rng(20)
    a, b = r.normal(0, 1.5, (6, 42)).astype(F), r.normal(0, 1, (6, 42)).astype(F)
    ours, (ga, gb) = _smooth_l1([a, b])
    theirs, (ta, tb) = ref.smooth_l1_cpu([a, b])
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(ga, ta, atol=1e-7)
    np.testing.assert_allclose(gb, tb, atol=1e-7)
    w_in, w_out = r.uniform(0.5, 2, a.shape).astype(F), r.uniform(0, 1, a.shape).astype(F)
    ours_w, (ga_w, _) = _smooth_l1([a, b, w_in, w_out])
    theirs_w, (ta_w, _) = ref.smooth_l1_cpu([a, b, w_in, w_out])
    print(f"SmoothL1Loss with weights: neocaffe (Fast R-CNN's) {ours_w:.4f}, the fork's CPU {theirs_w:.4f}")
    assert abs(ours_w - theirs_w) > 0.1 and np.abs(ga_w - ta_w).max() > 1e-3
    assert abs(_smooth_l1([a, b], sigma=3)[0] - theirs) > 0.1


@pytest.mark.parametrize("h, w, k, s, p, same", [(9, 8, 3, 1, 1, True), (9, 7, 3, 2, 1, True), (6, 6, 5, 1, 2, True),
                                                 (2, 2, 5, 1, 2, False)])
def test_the_forks_depthwise_cuda_kernel_is_neocaffes_depthwise_convolution(h, w, k, s, p, same):
    """depthwise_conv_layer.cu's ConvForward = DepthwiseConvolution (group = num_output = channels), except
    where a window is clipped on both sides of an input smaller than the kernel (the kernel's offset
    ``kernel_h - hend`` is then wrong)."""
    r = np.random.default_rng(21)
    x = r.standard_normal((2, 3, h, w)).astype(F)
    p_ = text_format.Parse(f'name: "dw" type: "DepthwiseConvolution" bottom: "x" top: "y" convolution_param {{ '
                           f'num_output: 3 group: 3 kernel_size: {k} stride: {s} pad: {p} '
                           'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }',
                           caffe_pb2.LayerParameter())
    layer = get_layer_class("DepthwiseConvolution")(p_, [x.shape], TEST)
    wgt, bias = (v.detach().numpy() for v in layer.blobs)
    ours = layer(torch.tensor(x)).detach().numpy()
    theirs = ref.depthwise_gpu_forward(x, wgt, bias, (k, k), (s, s), (p, p))
    assert ours.shape == theirs.shape
    assert np.allclose(ours, theirs, atol=1e-5) == same, np.abs(ours - theirs).max()


def test_the_forks_axpy_cpu_backward_skips_x_when_only_x_needs_a_diff():
    """mxnet_to_caffe/axpy_layer.cpp's second backward block tests propagate_down[0] (SENet's: [1]): with
    every bottom propagating it is neocaffe's Axpy (SENet's); with only x propagating, the fork leaves x's diff
    as it was."""
    r = np.random.default_rng(22)
    a, x, y = r.standard_normal((2, 3, 1, 1)).astype(F), r.standard_normal((2, 3, 4, 4)).astype(F), \
        r.standard_normal((2, 3, 4, 4)).astype(F)
    dy = r.standard_normal(x.shape).astype(F)
    p = text_format.Parse('name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z"', caffe_pb2.LayerParameter())
    layer = get_layer_class("Axpy")(p, [a.shape, x.shape, y.shape], TEST)
    ts = [torch.tensor(v, requires_grad=True) for v in (a, x, y)]
    layer(*ts).backward(torch.tensor(dy))
    da, dx, dyy = ref.axpy_cpu_backward(a, x, dy, (True, True, True), np.zeros_like(x))
    for got, want in zip(ts, (da, dx, dyy)):
        np.testing.assert_allclose(got.grad.numpy(), want, rtol=1e-6, atol=1e-6)
    _, dx_only, _ = ref.axpy_cpu_backward(a, x, dy, (False, True, False), np.zeros_like(x))
    assert not dx_only.any() and ts[1].grad.abs().sum() > 0
