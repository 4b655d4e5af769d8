"""RCF (yun-liu/RCF @ fc9e0f9f): its ``AutoCrop``, its SigmoidCrossEntropyLoss and its ImageLabelmapData labels
against loop ports of the fork's C++ (tests/layers/rcf_reference.py), the rule that tells them from HED's and BVLC's,
and the fork's real nets (tests/layers/data/rcf/, as released): test_vgg16 and test_resnet50 built and run with their
side outputs aligned as the fork crops them, train_vgg16 (its own data layer on tiny images) forward and backward,
and the ONNX export of test_vgg16."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from neocaffe.graph.errors import NetError
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers import hed, rcf
from neocaffe.layers.base import NetSoFar
from neocaffe.layers.sigmoid_cross_entropy_loss import SigmoidCrossEntropyLoss
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver
from tests.layers import rcf_reference as ref

DATA = Path(__file__).parent / "data" / "rcf"
SCE = 'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" %s }'
INPUTS = 'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 1 dim: 4 dim: 5 } } }'
AUTOCROP = 'layer { name: "ac" type: "AutoCrop" bottom: "x" bottom: "x" top: "xc" }'


def _labels(shape, seed, others=True):
    """Edge maps as RCF's data layer makes them: 0, 1 and weak edges in (0, 0.5]; ``others``: -1 and 2 too."""
    g = np.random.default_rng(seed)
    t = (g.random(shape) < 0.25).astype(np.float32)
    k = t.size // 5
    t.reshape(-1)[g.choice(t.size, k, replace=False)] = g.choice(
        [np.float32(1 / 255), np.float32(0.25), np.float32(127 / 255)] + ([2.0, -1.0] if others else []), k)
    t.reshape(shape[0], -1)[:, :2] = (1, 0)  # every image has a positive and a negative
    return t


def _loss_net(extra_net="", extra_layer="", more=""):
    return Net(read_net(f"force_backward: true\n{extra_net}\n{INPUTS}\n{more}\n" + SCE % extra_layer), caffe_pb2.TRAIN)


def _run_loss(net, x, t):
    net.set_blob("x", torch.as_tensor(x))
    net.set_blob("t", torch.as_tensor(t))
    net.forward()
    net.backward()
    return float(net.blob("loss")), net.blob_diff("x").numpy().copy()


# -- SigmoidCrossEntropyLoss --------------------------------------------------------------------------
@pytest.mark.parametrize("others", [False, True])
def test_rcf_loss_matches_the_forks_forward_and_backward(others):
    x = (np.random.default_rng(1).standard_normal((3, 1, 4, 5)) * 3).astype(np.float32)
    t = _labels(x.shape, 2, others)
    loss, diff = _run_loss(_loss_net('lineage: "rcf"', 'loss_weight: 2.5'), x, t)
    want_loss, want_diff = ref.sce_forward_backward(x, t, 2.5)
    assert loss == pytest.approx(want_loss, rel=2e-6)  # the top holds the loss; loss_weight scales the diffs
    np.testing.assert_allclose(diff, want_diff, rtol=2e-6, atol=1e-8)  # max abs difference: ~3e-9
    assert np.all(diff[(t != 0) & (t != 1)] == 0)  # weak edges and other labels: no diff (HED keeps sigmoid - t there)


def test_rcf_loss_is_nan_for_an_image_without_0_1_labels_as_the_fork():
    x = np.random.default_rng(3).standard_normal((3, 1, 4, 5)).astype(np.float32)
    t = np.full(x.shape, 0.25, np.float32)
    t[0, 0, 0] = (1, 0, 0, 1, 1)  # images 1 and 2 have none
    loss, diff = _run_loss(_loss_net('lineage: "rcf"'), x, t)
    want_loss, want_diff = ref.sce_forward_backward(x, t)
    assert np.isnan(loss) and np.isnan(want_loss)
    np.testing.assert_allclose(diff, want_diff, rtol=2e-6, atol=1e-8)


def test_rcf_loss_gradient_is_exact_in_float64():
    x = torch.tensor(np.random.default_rng(4).standard_normal((2, 1, 3, 4)) * 2, requires_grad=True)
    t = torch.tensor(_labels((2, 1, 3, 4), 5), dtype=torch.float64)
    layer = SigmoidCrossEntropyLoss(read_net(SCE % "").layer[0], [(2, 1, 3, 4)] * 2,
                                    net=NetSoFar(caffe_pb2.NetParameter(lineage="rcf")))
    assert layer.rcf and not layer.hed
    assert torch.autograd.gradcheck(lambda v: layer(v, t), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("net_text, layer_text, more, form", [
    ('lineage: "rcf"', "", "", "rcf"),
    ("", "", AUTOCROP, "rcf"),                                               # RCF's own type in the net
    ("", "", AUTOCROP + "IMAGELABELMAP", "rcf"),                             # RCF's train nets: HED's data layer too
    ('lineage: "rcf"', "loss_param { normalization: BATCH_SIZE }", "", "upstream"),  # as in a HED net
    ('lineage: "hed"', "", AUTOCROP, "hed"),
    ('lineage: "upstream"', "", AUTOCROP, "upstream"),
    ("", "", "IMAGELABELMAP", "hed"),
])
def test_which_sigmoid_cross_entropy_loss(net_text, layer_text, more, form):
    more = more.replace("IMAGELABELMAP", '\nlayer { name: "d" type: "ImageLabelmapData" top: "a" top: "b" include { '
                                         'phase: TEST } image_data_param { source: "absent.txt" batch_size: 1 } }')
    x = (np.random.default_rng(6).standard_normal((3, 1, 4, 5)) * 2).astype(np.float32)
    t = _labels(x.shape, 7, others=False)
    net = _loss_net(net_text, layer_text, more)
    layer = next(la for la in net.layers if la.type_name == "SigmoidCrossEntropyLoss")
    assert (layer.hed, layer.rcf) == (form == "hed", form == "rcf")
    loss, _ = _run_loss(net, x, t)
    if form == "upstream":
        want = float(np.sum(np.logaddexp(0, x) - x * t) / 3)
    else:
        want = ref.sce_forward_backward(x, t)[0] if form == "rcf" else _hed_loss(x, t)
    assert loss == pytest.approx(want, rel=1e-5)


def _hed_loss(x, t):
    """HED's: RCF's with the negatives' weight 1."""
    x64, t64 = x.reshape(3, -1).astype(np.float64), t.reshape(3, -1)
    elem = np.logaddexp(0, x64) - x64 * t64
    total = 0.0
    for i in range(3):
        p, q = (t64[i] == 1).sum(), (t64[i] == 0).sum()
        total += q / (p + q) * elem[i][t64[i] == 1].sum() + p / (p + q) * elem[i][t64[i] == 0].sum()
    return total / 3


def test_resnet101s_train_net_read_as_heds_warns_naming_the_fix(caplog):
    """RCF's train_resnet101.prototxt has ImageLabelmapData and BVLC Crops, no AutoCrop: taken as HED's."""
    written = read_net('layer { name: "data" type: "ImageLabelmapData" top: "data" top: "label" }\n'
                       'layer { name: "crop1" type: "Crop" bottom: "x" bottom: "data" top: "y" '
                       'crop_param { axis: 2 offset: 0 } }', upgrade=False)
    param = read_net(SCE % "").layer[0]
    with caplog.at_level(logging.WARNING, logger="neocaffe.layers"):
        assert rcf.sigmoid_ce_form(param, NetSoFar(written), "dsn1_loss") == "hed"
    assert "layer 'crop1' sets crop_param" in caplog.text and 'set lineage: "rcf"' in caplog.text
    caplog.clear()
    written.lineage = "rcf"
    assert rcf.sigmoid_ce_form(param, NetSoFar(written), "dsn1_loss") == "rcf" and not caplog.text


# -- AutoCrop -------------------------------------------------------------------------------------------
SMALL_NET = '''
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 23 dim: 21 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 3 kernel_size: 3 pad: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "c2" type: "Convolution" bottom: "p1" top: "c2"
  convolution_param { num_output: 2 kernel_size: 3 pad: 2 dilation: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "p2" type: "Pooling" bottom: "c2" top: "p2" pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
layer { name: "s2" type: "Convolution" bottom: "p2" top: "s2"
  convolution_param { num_output: 1 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "up" type: "Deconvolution" bottom: "s2" top: "up"
  convolution_param { num_output: 1 kernel_size: 4 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "crop_up" type: "AutoCrop" bottom: "up" bottom: "data" top: "up_c" }
layer { name: "cat" type: "Concat" bottom: "c2" bottom: "p1" top: "cat" }
layer { name: "up2" type: "Deconvolution" bottom: "cat" top: "up2"
  convolution_param { num_output: 2 kernel_size: 8 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "crop2" type: "AutoCrop" bottom: "up2" bottom: "up_c" top: "up2_c" }
layer { name: "bc" type: "Crop" bottom: "c1" bottom: "data" top: "bc" crop_param { axis: 2 offset: 3 } }
layer { name: "crop3" type: "AutoCrop" bottom: "up2" bottom: "bc" top: "up2_b" }
'''
WIRING = [("up", "data", "up_c"), ("up2", "up_c", "up2_c"), ("up2", "bc", "up2_b")]


def test_auto_crop_offsets_and_rows_match_the_forks_walk_and_copies():
    net = Net(read_net("force_backward: true\n" + SMALL_NET), caffe_pb2.TRAIN)
    crops = [la for la in net.layers if la.type_name == "AutoCrop"]
    want = ref.auto_crop_offsets(list(net.net_param.layer))
    # pool k2 s1 and the dilated convolution on the way; crop2 walks through crop_up (its own offsets); crop3 walks
    # through the BVLC Crop 'bc' as the fork does: by the offsets of axes 0 and 1 (0, 0), not its real 3 (then 5)
    assert [c.offsets for c in crops] == want == [(2, 2), (4, 4), (2, 2)]
    x = np.random.default_rng(8).standard_normal((2, 2, 23, 21)).astype(np.float32)
    net.forward({"data": torch.as_tensor(x)})
    g = np.random.default_rng(9)
    for c, (bottom, ref_blob, top) in zip(crops, WIRING):
        np.testing.assert_array_equal(net.blob(top).numpy(),
                                      ref.auto_crop_forward(net.blob(bottom).numpy(), net.blob(ref_blob).shape, c.offsets))
        xb = net.blob(bottom).detach().clone().requires_grad_(True)
        rb = net.blob(ref_blob).detach().clone().requires_grad_(True)
        td = g.standard_normal(tuple(net.blob(top).shape)).astype(np.float32)
        c(xb, rb).backward(torch.as_tensor(td))
        np.testing.assert_array_equal(xb.grad.numpy(), ref.auto_crop_backward(td, tuple(xb.shape), c.offsets))
        assert rb.grad is None  # the fork's backward fills bottom 0 only


def test_auto_crop_gradient_in_float64():
    net = Net(read_net(SMALL_NET), caffe_pb2.TEST)
    layer = next(la for la in net.layers if la.name == "crop2")
    x = torch.tensor(np.random.default_rng(10).standard_normal((1, 2, 32, 30)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(v, torch.zeros(1, 1, 23, 21, dtype=torch.float64)), (x,))


@pytest.mark.parametrize("body, why", [
    ('layer { name: "in2" type: "Input" top: "ref" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
     'layer { name: "c" type: "AutoCrop" bottom: "data" bottom: "ref" top: "y" }', "disconnected"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
     'layer { name: "c" type: "AutoCrop" bottom: "data" bottom: "p" top: "y" }', "RCF's AutoCrop needs them at one scale"),
    ('layer { name: "cv" type: "Convolution" bottom: "data" top: "cv" convolution_param { num_output: 1 kernel_size: 5 } }\n'
     'layer { name: "c" type: "AutoCrop" bottom: "cv" bottom: "data" top: "y" }', "negative crop"),
    ('layer { name: "cv" type: "Convolution" bottom: "data" top: "cv" convolution_param { num_output: 1 kernel_size: 2 pad: 1 } }\n'
     'layer { name: "c" type: "AutoCrop" bottom: "cv" bottom: "data" top: "y" }', "whole number"),
    ('layer { name: "rs" type: "Flatten" bottom: "data" top: "f" }\n'
     'layer { name: "c" type: "AutoCrop" bottom: "f" bottom: "data" top: "y" }', "no coordinate map in RCF's Caffe"),
])
def test_auto_crop_refuses_what_the_fork_checks(body, why):
    text = 'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n' + body
    with pytest.raises(NetError, match=f"(?i){why}"):
        Net(read_net(text), caffe_pb2.TEST)


def test_auto_crop_refuses_a_window_past_bottom_0():
    """The fork reads out of bounds there (its offsets are fixed at setup; the sizes may change later)."""
    net = Net(read_net('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
                       'layer { name: "cv" type: "Convolution" bottom: "data" top: "cv" convolution_param { num_output: 1 '
                       'kernel_size: 1 pad: 1 } }\nlayer { name: "c" type: "AutoCrop" bottom: "cv" bottom: "data" top: "y" }'),
              caffe_pb2.TEST)
    layer = next(la for la in net.layers if la.type_name == "AutoCrop")
    assert layer.offsets == (1, 1) and layer.reshape([(1, 1, 10, 10), (1, 1, 8, 8)]) == [(1, 1, 8, 8)]
    with pytest.raises(ValueError, match=r"layer 'c' \(AutoCrop\): the 8x8 window at offsets \(1, 1\) .* runs past "
                                         r"bottom 0 of 8x10"):
        layer.reshape([(1, 1, 8, 10), (1, 1, 8, 8)])


def test_auto_crop_built_alone_names_what_it_needs():
    from neocaffe.layers.registry import get_layer_class

    param = read_net('layer { name: "c" type: "AutoCrop" bottom: "a" bottom: "b" top: "y" }', upgrade=False).layer[0]
    with pytest.raises(ValueError, match="layer 'c' \\(AutoCrop\\): needs the net it is built into"):
        get_layer_class("AutoCrop")(param, [(1, 1, 4, 4), (1, 1, 4, 4)])


# -- the real nets --------------------------------------------------------------------------------------
def _shrunk(text: str, size: int | None = None) -> str:
    """The fork's net with 4 channels where it has 64..2048 (structure, kernels, pads, strides, dilations kept)."""
    text = re.sub(r"num_output: (64|128|256|512|1024|2048)\b", "num_output: 4", text)
    return text.replace("dim: 224", f"dim: {size}") if size else text


def _weights(net: Net, seed: int) -> None:
    """Random convolutions (He-scaled, conv1 for mean-subtracted pixels) and solve.py's bilinear deconvolutions."""
    g = np.random.default_rng(seed)
    for layer in net.layers:
        if not len(layer.blobs):
            continue
        w = layer.blobs[0]
        if layer.type_name == "Deconvolution":
            w.data[:] = torch.as_tensor(ref.bilinear_kernel(w.shape[-1]), dtype=torch.float32)
        elif layer.type_name == "Convolution" and layer.name != "new-score-weighting":
            std = np.sqrt(2.0 / w[0].numel()) * (0.01 if layer.name in ("conv1_1", "conv1") else 1.0)
            w.data[:] = torch.as_tensor(g.standard_normal(tuple(w.shape)) * std)
    net.weights_changed()


@pytest.mark.parametrize("name, offsets", [
    ("test_vgg16", [(1, 1), (2, 2), (4, 4), (0, 0)]),  # the README's "1, 2, 4, and 0 for conv2, conv3, conv4, conv5"
    ("test_resnet50", [(0, 0), (1, 1), (3, 3), (7, 7), (7, 7)]),
])
def test_real_test_nets_build_and_crop_their_side_outputs_as_the_fork(name, offsets):
    text = _shrunk((DATA / f"{name}.prototxt").read_text(), 40)
    net = Net(read_net(text), caffe_pb2.TEST)
    crops = [c for c in net.layers if c.type_name == "AutoCrop"]
    assert [c.offsets for c in crops] == ref.auto_crop_offsets(list(net.net_param.layer)) == offsets
    _weights(net, 0)
    x = np.random.default_rng(10).standard_normal((1, 3, 40, 40)).astype(np.float32) * 50
    net.forward({"data": torch.as_tensor(x)})
    for c in crops:
        up, top = c.param.bottom[0], c.param.top[0]
        np.testing.assert_array_equal(net.blob(top).numpy(), ref.auto_crop_forward(net.blob(up).numpy(), (1, 1, 40, 40),
                                                                                   c.offsets))
        k = top[-1]
        np.testing.assert_allclose(net.blob(f"sigmoid-dsn{k}").numpy(),
                                   1 / (1 + np.exp(-net.blob(top).numpy().astype(np.float64))), rtol=1e-5, atol=1e-6)
    assert tuple(net.blob("sigmoid-fuse").shape) == (1, 1, 40, 40)


def _edge_pair(folder: Path, seed: int) -> None:
    """A tiny image and an edge map of 0, 255 and weak edges (RCF's labels keep those as fractions)."""
    g = np.random.default_rng(seed)
    img = np.full((24, 28, 3), 40, np.uint8)
    img[6:18, 8:20] = 200
    img = np.clip(img + g.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
    edges = cv2.Canny(img, 50, 150)
    edges[cv2.dilate(edges, np.ones((3, 3), np.uint8)) > edges] = 77  # weak edges beside the strong ones
    edges[0, :3] = (127, 128, 1)
    cv2.imwrite(str(folder / "a.png"), img)
    cv2.imwrite(str(folder / "a_gt.png"), edges)
    (folder / "pairs.lst").write_text("a.png a_gt.png\n")


def test_real_train_net_runs_forward_and_backward_with_its_own_data_layer(tmp_path):
    _edge_pair(tmp_path, 11)
    text = _shrunk((DATA / "train_vgg16.prototxt").read_text())
    text = text.replace('"../../data/bsds_pascal_train_pair.lst"', f'"{tmp_path}/pairs.lst"')
    text = text.replace('"../../data/"', f'"{tmp_path}/"')
    (tmp_path / "train.prototxt").write_text(text)
    (tmp_path / "solver.prototxt").write_text(  # the fork's solver.prototxt, shortened
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 1e-6 lr_policy: "step" gamma: 0.1 iter_size: 2 stepsize: 10000 '
        'display: 0 max_iter: 100 momentum: 0.9 weight_decay: 0.0002 snapshot: 0 solver_mode: CPU random_seed: 3')
    solver = Solver(str(tmp_path / "solver.prototxt"), device="cpu")
    net = solver.net
    assert [c.offsets for c in net.layers if c.type_name == "AutoCrop"] == [(1, 1), (2, 2), (4, 4), (0, 0)]
    assert all(s.rcf for s in net.layers if s.type_name == "SigmoidCrossEntropyLoss")
    _weights(net, 1)
    net.set_keep_blob_diffs(True)
    net.forward()
    net.backward()
    label = net.blob("label").numpy()
    gt = cv2.imread(str(tmp_path / "a_gt.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(label[0, 0], ref.encode_label(gt))
    assert {0.0, 1.0, np.float32(77 / 255)} <= set(np.unique(label)) and label[0, 0, 0, :3].tolist() == [
        pytest.approx(127 / 255), 1.0, pytest.approx(1 / 255)]
    for k in ("1", "2", "3", "4", "5"):  # each side loss is the fork's on its cropped scores
        got = float(net.blob(f"dsn{k}_loss"))
        assert got == pytest.approx(ref.sce_forward_backward(net.blob(f"upscore-dsn{k}").numpy(), label)[0], rel=1e-5)
    fuse = net.blob("upscore-fuse").numpy()  # read by fuse_loss only: its diff is the fork's loss diff
    np.testing.assert_allclose(net.blob_diff("upscore-fuse").numpy(), ref.sce_forward_backward(fuse, label)[1],
                               rtol=1e-5, atol=1e-9)
    losses = []
    for _ in range(4):
        solver.step(1)
        losses.append(float(net.loss.detach()))
    assert all(np.isfinite(losses)) and len(set(losses)) > 1, losses


def test_image_labelmap_data_encodes_rcfs_labels_only_in_an_rcf_net(tmp_path):
    _edge_pair(tmp_path, 12)
    gt = cv2.imread(str(tmp_path / "a_gt.png"), cv2.IMREAD_GRAYSCALE)
    layer = ('layer { name: "data" type: "ImageLabelmapData" top: "data" top: "label" image_data_param { '
             f'source: "{tmp_path}/pairs.lst" root_folder: "{tmp_path}/" batch_size: 1 }} }}\n')
    for extra, want in (("", (gt >= 128).astype(np.float32)), ('lineage: "rcf"', ref.encode_label(gt))):
        net = Net(read_net(extra + "\n" + layer), caffe_pb2.TRAIN)
        try:
            net.forward()
            np.testing.assert_array_equal(net.blob("label").numpy()[0, 0], want)
        finally:
            net.close()


def test_onnx_export_of_the_real_test_net():
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from neocaffe.export.onnx import export_onnx

    net = Net(read_net(_shrunk((DATA / "test_vgg16.prototxt").read_text(), 36)), caffe_pb2.TEST)
    _weights(net, 2)
    x = np.random.default_rng(14).standard_normal((1, 3, 36, 36)).astype(np.float32) * 50
    net.forward({"data": torch.as_tensor(x)})
    session = onnxruntime.InferenceSession(export_onnx(net).SerializeToString())
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"data": x})))
    for blob in ("sigmoid-dsn2", "sigmoid-dsn5", "sigmoid-fuse"):
        np.testing.assert_allclose(got[blob], net.blob(blob).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_on_cuda_equals_the_port():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    net = Net(read_net("force_backward: true\n" + SMALL_NET), caffe_pb2.TRAIN, device="cuda")
    cpu = Net(read_net("force_backward: true\n" + SMALL_NET), caffe_pb2.TRAIN)
    layer = next(la for la in net.layers if la.name == "crop2")
    assert layer.offsets == next(la for la in cpu.layers if la.name == "crop2").offsets == (4, 4)
    x = torch.randn(2, 2, 32, 30, device="cuda", requires_grad=True)
    td = torch.randn(2, 2, 23, 21, device="cuda")
    layer(x, torch.zeros(2, 1, 23, 21, device="cuda")).backward(td)
    np.testing.assert_array_equal(x.grad.cpu().numpy(), ref.auto_crop_backward(td.cpu().numpy(), (2, 2, 32, 30), (4, 4)))
    s = torch.tensor(np.random.default_rng(15).standard_normal((3, 1, 4, 5)) * 3, dtype=torch.float32, device="cuda",
                     requires_grad=True)
    t = _labels((3, 1, 4, 5), 16)
    loss = hed.BalancedSigmoidCE.apply(s, torch.as_tensor(t, device="cuda"), rcf.NEG_WEIGHT, 0.0)
    loss.backward()
    want_loss, want_diff = ref.sce_forward_backward(s.detach().cpu().numpy(), t)
    assert float(loss) == pytest.approx(want_loss, rel=2e-6)
    np.testing.assert_allclose(s.grad.cpu().numpy(), want_diff, rtol=2e-6, atol=1e-8)
