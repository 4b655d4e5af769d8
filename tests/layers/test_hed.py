"""HED (s9xie/hed @ 912632b9): its class-balanced SigmoidCrossEntropyLoss and coordinate-map Crop against loop
ports of the fork's C++ (tests/layers/hed_reference.py), the rule that tells them from BVLC's layers of the same
names, ImageLabelmapData against an OpenCV restatement, and the fork's real deploy and train_val nets
(tests/layers/data/hed/, as released): the deploy's side outputs aligned as the fork crops them, the train_val
(its own data layer on tiny images) training with its loss going down."""
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
from neocaffe.layers.base import NetSoFar
from neocaffe.layers.sigmoid_cross_entropy_loss import SigmoidCrossEntropyLoss
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver
from tests.layers import hed_reference as ref

DATA = Path(__file__).parent / "data" / "hed"
SCE = 'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" %s }'
INPUTS = 'layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 3 dim: 1 dim: 4 dim: 5 } } }'


def _labels(shape, seed, others=True):
    g = np.random.default_rng(seed)
    t = (g.random(shape) < 0.25).astype(np.float32)
    if others:  # values the fork leaves out of its sums (HED's data layer never makes them)
        t.reshape(-1)[g.choice(t.size, t.size // 6, replace=False)] = g.choice([0.5, 2.0, -1.0], t.size // 6)
    t.reshape(shape[0], -1)[:, :2] = (1, 0)  # every image has a positive and a negative
    return t


def _loss_net(extra_net="", extra_layer="", more=""):
    return Net(read_net(f"force_backward: true\n{extra_net}\n{INPUTS}\n{more}\n" + SCE % extra_layer), caffe_pb2.TRAIN)


def _run_loss(net, x, t):
    """The loss top (its loss_weight scales the diffs) and the diff of ``x``."""
    net.set_blob("x", torch.as_tensor(x))
    net.set_blob("t", torch.as_tensor(t))
    net.forward()
    net.backward()
    return float(net.blob("loss")), net.blob_diff("x").numpy().copy()


# -- SigmoidCrossEntropyLoss --------------------------------------------------------------------------
@pytest.mark.parametrize("others", [False, True])
def test_hed_loss_matches_the_forks_forward_and_backward(others):
    x = (np.random.default_rng(1).standard_normal((3, 1, 4, 5)) * 3).astype(np.float32)
    t = _labels(x.shape, 2, others)
    loss, diff = _run_loss(_loss_net('lineage: "hed"', 'loss_weight: 2.5'), x, t)
    want_loss, want_diff = ref.sce_forward_backward(x, t, 2.5)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-5, atol=1e-7)


def test_hed_loss_is_nan_for_an_image_without_0_1_labels_as_the_fork():
    x = np.random.default_rng(3).standard_normal((3, 1, 4, 5)).astype(np.float32)
    t = np.full(x.shape, 0.5, np.float32)
    t[0, 0, 0] = (1, 0, 0, 1, 1)  # images 1 and 2 have none
    loss, diff = _run_loss(_loss_net('lineage: "hed"'), x, t)
    want_loss, want_diff = ref.sce_forward_backward(x, t)
    assert np.isnan(loss) and np.isnan(want_loss)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-5, atol=1e-7)


def test_hed_loss_gradient_is_exact_in_float64_where_labels_are_0_or_1():
    x = torch.tensor(np.random.default_rng(4).standard_normal((2, 1, 3, 4)) * 2, requires_grad=True)
    t = torch.tensor(_labels((2, 1, 3, 4), 5, others=False), dtype=torch.float64)
    param = read_net(SCE % "").layer[0]
    layer = SigmoidCrossEntropyLoss(param, [(2, 1, 3, 4)] * 2, net=NetSoFar(caffe_pb2.NetParameter(lineage="hed")))
    assert layer.hed
    assert torch.autograd.gradcheck(lambda v: layer(v, t), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("net_text, layer_text, more, hed", [
    ("", "", "", False),                                       # BVLC's, as before
    ('lineage: "hed"', "", "", True),
    ('lineage: "hed"', "loss_param { normalization: BATCH_SIZE }", "", False),  # HED's reads no loss_param
    ("", "", "IMAGELABELMAP", True),                            # HED's own data layer in the net
    ('lineage: "upstream"', "", "IMAGELABELMAP", False),
])
def test_which_sigmoid_cross_entropy_loss(net_text, layer_text, more, hed):
    more = ('layer { name: "d" type: "ImageLabelmapData" top: "a" top: "b" include { phase: TEST } '
            'image_data_param { source: "absent.txt" batch_size: 1 } }') if more else ""
    x = (np.random.default_rng(6).standard_normal((3, 1, 4, 5)) * 2).astype(np.float32)
    t = _labels(x.shape, 7, others=False)
    loss, diff = _run_loss(_loss_net(net_text, layer_text, more), x, t)
    if hed:
        want = ref.sce_forward_backward(x, t)[0]
    else:  # BVLC: the plain sum over every element / num
        want = float(np.sum(np.logaddexp(0, x) - x * t) / 3)
    assert loss == pytest.approx(want, rel=1e-5)


def test_an_unknown_lineage_is_an_error_naming_it():
    with pytest.raises(NetError, match="lineage 'hde' is unknown"):
        _loss_net('lineage: "hde"')


# -- Crop ---------------------------------------------------------------------------------------------
CROP_NET = '''lineage: "hed"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 21 dim: 19 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 3 kernel_size: 5 pad: 7 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "p1" top: "c2"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "cat" type: "Concat" bottom: "c2" bottom: "p1" top: "cat" }
layer { name: "up" type: "Deconvolution" bottom: "cat" top: "up"
  convolution_param { num_output: 1 kernel_size: 5 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "crop_up" type: "Crop" bottom: "up" bottom: "data" top: "up_c" }
layer { name: "crop_c1" type: "Crop" bottom: "c1" bottom: "up_c" top: "c1_c" }
layer { name: "crop_p" type: "Crop" bottom: "cat" bottom: "c2" top: "cat_c" }
'''


def test_crop_offsets_and_rows_match_the_forks_walk_and_copies():
    net = Net(read_net(CROP_NET), caffe_pb2.TRAIN)
    want = ref.crop_offsets(list(net.net_param.layer))
    crops = [layer for layer in net.layers if layer.type_name == "Crop"]
    assert [c.hed_offsets for c in crops] == want
    assert want[0] != (0, 0) and want[1] != (0, 0)  # BVLC's offset 0 would differ
    x = np.random.default_rng(8).standard_normal((2, 2, 21, 19)).astype(np.float32)
    net.forward({"data": torch.as_tensor(x)})
    g = np.random.default_rng(9)
    diffs = {b: g.standard_normal(tuple(net.blob(b).shape)).astype(np.float32) for b in ("up_c", "c1_c", "cat_c")}
    for c, (bottom, ref_blob, top) in zip(crops, [("up", "data", "up_c"), ("c1", "up_c", "c1_c"), ("cat", "c2", "cat_c")]):
        np.testing.assert_array_equal(net.blob(top).numpy(),
                                      ref.crop_forward(net.blob(bottom).numpy(), net.blob(ref_blob).shape, c.hed_offsets))
    for c, (bottom, ref_blob, top) in zip(crops, [("up", "data", "up_c"), ("c1", "up_c", "c1_c"), ("cat", "c2", "cat_c")]):
        x = net.blob(bottom).detach().clone().requires_grad_(True)
        c(x, net.blob(ref_blob)).backward(torch.as_tensor(diffs[top]))
        np.testing.assert_array_equal(x.grad.numpy(), ref.crop_backward(diffs[top], tuple(x.shape), c.hed_offsets))


@pytest.mark.parametrize("body, why", [
    ('layer { name: "in2" type: "Input" top: "ref" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
     'layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "y" }', "disconnected"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
     'layer { name: "c" type: "Crop" bottom: "data" bottom: "p" top: "y" }', "differ in scale"),
    ('layer { name: "cv" type: "Convolution" bottom: "data" top: "cv" convolution_param { num_output: 1 kernel_size: 5 } }\n'
     'layer { name: "c" type: "Crop" bottom: "cv" bottom: "data" top: "y" }', "negative crop"),
    ('layer { name: "cv" type: "Convolution" bottom: "data" top: "cv" convolution_param { num_output: 1 kernel_size: 2 pad: 1 } }\n'
     'layer { name: "c" type: "Crop" bottom: "cv" bottom: "data" top: "y" }', "whole number"),
    ('layer { name: "rs" type: "Flatten" bottom: "data" top: "f" }\n'
     'layer { name: "c" type: "Crop" bottom: "f" bottom: "data" top: "y" }', "no coordinate map"),
])
def test_hed_crop_refuses_what_the_fork_checks(body, why):
    text = ('lineage: "hed"\nlayer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 '
            'dim: 8 } } }\n' + body)
    with pytest.raises(NetError, match=f"(?i){why}"):
        Net(read_net(text), caffe_pb2.TEST)


def test_crop_with_crop_param_stays_bvlcs_in_a_hed_net():
    net = Net(read_net(CROP_NET.replace('top: "up_c" }', 'top: "up_c" crop_param { axis: 2 offset: 1 } }')),
              caffe_pb2.TEST)
    crops = [layer for layer in net.layers if layer.type_name == "Crop"]
    assert crops[0].hed_offsets is None and crops[0].window((2, 1, 24, 22), (2, 2, 21, 19)) == (2, [1, 1])


# -- the real nets --------------------------------------------------------------------------------------
def _shrunk(text: str, size: int | None = None) -> str:
    """The fork's net with 4 channels where it has 64..512 (the structure, kernels, pads, strides kept)."""
    text = re.sub(r"num_output: (64|128|256|512)\b", "num_output: 4", text)
    return text.replace("input_dim: 500", f"input_dim: {size}") if size else text


def _weights(net: Net, seed: int, scores: bool = True) -> None:
    """Random convolutions, as if the VGG base were loaded (conv1_1 scaled to the mean-subtracted pixels),
    and solve.py's bilinear deconvolutions; ``scores``: the side-output convolutions too (else left 0)."""
    g = np.random.default_rng(seed)
    for layer in net.layers:
        w = layer.blobs[0] if len(layer.blobs) else None
        if layer.type_name == "Deconvolution":
            w.data[:] = torch.as_tensor(ref.bilinear_kernel(w.shape[-1]), dtype=torch.float32)
        elif layer.type_name == "Convolution" and (scores or not layer.name.startswith("score")) \
                and layer.name != "new-score-weighting":
            std = np.sqrt(2.0 / w[0].numel()) * (0.01 if layer.name == "conv1_1" else 1.0)
            w.data[:] = torch.as_tensor(g.standard_normal(tuple(w.shape)) * std)
    net.weights_changed()


def test_real_deploy_crops_its_side_outputs_as_the_fork(caplog):
    text = (DATA / "deploy.prototxt").read_text()
    with caplog.at_level(logging.WARNING, logger="neocaffe.layers"):  # as released: BVLC's offset 0, warned
        plain = Net(read_net(text), caffe_pb2.TEST)
    assert all(c.hed_offsets is None for c in plain.layers if c.type_name == "Crop")
    assert caplog.text.count('lineage: "hed"') == 5
    full = Net(read_net('lineage: "hed"\n' + text), caffe_pb2.TEST)  # the real net at its 500 x 500 input
    offsets = [c.hed_offsets for c in full.layers if c.type_name == "Crop"]
    assert offsets == ref.crop_offsets(list(full.net_param.layer)) == [(34, 34), (35, 35), (36, 36), (38, 38), (42, 42)]
    # OpenCV's edge_detection.py centres the window instead: it agrees but for dsn5 (592 -> 500: 46)
    pre = [tuple(full.blob(b).shape)[2] for b in ("score-dsn1-up", "score-dsn2-up", "score-dsn3-up", "score-dsn4-up",
                                                  "score-dsn5-up")]
    assert [ref.centre_offset(p, 500) for p in pre] == [34, 35, 36, 38, 46]

    net = Net(read_net('lineage: "hed"\n' + _shrunk(text, 40)), caffe_pb2.TEST)
    _weights(net, 0)
    x = np.random.default_rng(10).standard_normal((1, 3, 40, 40)).astype(np.float32) * 50
    net.forward({"data": torch.as_tensor(x)})
    crops = [c.hed_offsets for c in net.layers if c.type_name == "Crop"]
    assert crops == ref.crop_offsets(list(net.net_param.layer)) == offsets
    for k, off in enumerate(crops, 1):
        up = net.blob(next(b for b in net.blob_names if b.startswith(f"score-dsn{k}-up"))).numpy()
        got = net.blob(f"upscore-dsn{k}").numpy()
        np.testing.assert_array_equal(got, ref.crop_forward(up, (1, 1, 40, 40), off))
        np.testing.assert_allclose(net.blob(f"sigmoid-dsn{k}").numpy(), 1 / (1 + np.exp(-got.astype(np.float64))),
                                   rtol=1e-5, atol=1e-6)
    assert tuple(net.blob("sigmoid-fuse").shape) == (1, 1, 40, 40)
    assert np.ptp(net.blob("upscore-dsn5").numpy()) > 0


def test_real_train_val_trains_with_its_own_data_layer(tmp_path):
    g = np.random.default_rng(11)
    img = np.full((24, 28, 3), 40, np.uint8)
    img[6:18, 8:20] = 200
    img = np.clip(img + g.integers(0, 20, img.shape), 0, 255).astype(np.uint8)
    edges = cv2.Canny(img, 50, 150)  # 0 / 255, the square's outline
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "a_gt.png"), edges)
    (tmp_path / "train_pair.lst").write_text("a.png a_gt.png\n")
    text = _shrunk((DATA / "train_val.prototxt").read_text())
    text = text.replace('"../../data/HED-BSDS/train_pair.lst"', f'"{tmp_path}/train_pair.lst"')
    text = text.replace('"../../data/HED-BSDS/"', f'"{tmp_path}/"')
    (tmp_path / "train_val.prototxt").write_text(text)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train_val.prototxt"}" base_lr: 0.001 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 3 weight_decay: 0.0002')
    solver = Solver(str(tmp_path / "solver.prototxt"), device="cpu")
    net = solver.net
    assert all(c.hed_offsets is not None for c in net.layers if c.type_name == "Crop")  # HED's, by its data layer
    assert all(s.hed for s in net.layers if s.type_name == "SigmoidCrossEntropyLoss")
    _weights(net, 1, scores=False)  # the side outputs start at 0, as HED trains them
    net.forward()
    label = net.blob("label").numpy()
    assert set(np.unique(label)) == {0.0, 1.0} and label.shape == (1, 1, 24, 28)
    for k in (1, 2, 3, 4, 5):  # each side loss is the fork's class-balanced one on its cropped scores
        got = float(net.blob(f"dsn{k}_loss"))
        assert got == pytest.approx(ref.sce_forward_backward(net.blob(f"upscore-dsn{k}").numpy(), label)[0], rel=1e-5)
    losses = []
    for _ in range(12):
        solver.step(1)
        losses.append(float(net.loss.detach()))  # the loss of each step's forward
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 2, losses


# -- ImageLabelmapData --------------------------------------------------------------------------------
def _pairs(folder, n=3, size=(7, 9), seed=12):
    """``n`` random colour images and edge maps (0, 255 and the rounding edge 127 / 128), a list file."""
    g = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"im{i}.png"), g.integers(0, 256, size + (3,), dtype=np.uint8))
        gt = np.where(g.random(size) < 0.3, 255, 0).astype(np.uint8)
        gt[0, :4] = (127, 128, 1, 254)
        cv2.imwrite(str(folder / f"gt{i}.png"), gt)
    (folder / "pairs.lst").write_text("".join(f"im{i}.png gt{i}.png\n" for i in range(n)))


def _data_layer(folder, fields, transform, phase=caffe_pb2.TRAIN):
    from neocaffe import rng
    from neocaffe.layers.base import BuildContext
    from neocaffe.layers.registry import get_layer_class

    rng.set_seed(5)
    param = read_net(f'layer {{ name: "data" type: "ImageLabelmapData" top: "data" top: "label" image_data_param {{ '
                     f'source: "{folder / "pairs.lst"}" root_folder: "{folder}/" {fields} }} '
                     f'transform_param {{ {transform} }} }}', upgrade=False).layer[0]
    return get_layer_class("ImageLabelmapData")(param, [], phase, BuildContext(data_workers=0))


def _fork_item(folder, i, new_hw=(0, 0)):
    """ReadImageToCVMat + cv::resize (INTER_LINEAR for both) and ``cv_gt / 255`` in uint8 arithmetic."""
    img = cv2.imread(str(folder / f"im{i}.png"), cv2.IMREAD_COLOR)
    gt = cv2.imread(str(folder / f"gt{i}.png"), cv2.IMREAD_GRAYSCALE)
    if new_hw[0]:
        img = cv2.resize(img, new_hw[::-1], interpolation=cv2.INTER_LINEAR)
        gt = cv2.resize(gt, new_hw[::-1], interpolation=cv2.INTER_LINEAR)
    return img.transpose(2, 0, 1).astype(np.float32), cv2.divide(gt, 255)[None].astype(np.float32)


@pytest.mark.parametrize("new_hw", [(0, 0), (5, 6)])
def test_image_labelmap_data_reads_resizes_and_encodes_as_the_fork(tmp_path, new_hw):
    _pairs(tmp_path)
    size = f"new_height: {new_hw[0]} new_width: {new_hw[1]}" if new_hw[0] else ""
    layer = _data_layer(tmp_path, f"batch_size: 2 {size}", "mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5",
                        caffe_pb2.TEST)
    mean = np.asarray([104, 117, 123], np.float32).reshape(3, 1, 1)
    try:
        for k in range(3):
            data, label = (t.numpy() for t in layer())
            for j in range(2):
                img, gt = _fork_item(tmp_path, (2 * k + j) % 3, new_hw)
                np.testing.assert_array_equal(data[j], (img - mean) * np.float32(0.5))
                np.testing.assert_array_equal(label[j], gt)
                assert set(np.unique(label[j])) <= {0.0, 1.0}
    finally:
        layer.close()
    if not new_hw[0]:  # the last batch's first item is line 1: 127 -> 0, 128 -> 1 (uint8 rounding)
        assert label[0, 0, 0, :4].tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("phase", [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_image_labelmap_data_crops_and_mirrors_image_and_label_together_in_every_phase(tmp_path, phase):
    from neocaffe.io.binaryproto import write_blobproto

    _pairs(tmp_path)
    mean = np.random.default_rng(13).uniform(0, 255, (1, 3, 7, 9)).astype(np.float32)
    write_blobproto(tmp_path / "mean.binaryproto", mean, legacy=True)
    layer = _data_layer(tmp_path, "batch_size: 3",
                        f'crop_size: 4 mirror: true mean_file: "{tmp_path / "mean.binaryproto"}"', phase)
    seen = set()
    try:
        for _ in range(8):
            data, label = (t.numpy() for t in layer())
            for j in range(3):
                img, gt = _fork_item(tmp_path, j)
                fits = [(f, h0, w0) for f in (0, 1) for h0 in range(4) for w0 in range(6)
                        if np.array_equal(data[j], _window(img - mean[0], f, h0, w0))]
                assert len(fits) == 1, fits  # the mean at each pixel's source position, mirrored with it
                assert np.array_equal(label[j], _window(gt, *fits[0]))
                seen.add(fits[0])
    finally:
        layer.close()
    assert {f for f, _, _ in seen} == {0, 1} and len({s[1:] for s in seen}) > 4  # random windows, TEST too


def _window(a, flip, h0, w0):
    cut = a[:, h0:h0 + 4, w0:w0 + 4]
    return cut[:, :, ::-1] if flip else cut


def test_image_labelmap_data_refuses_a_label_map_of_another_size(tmp_path):
    _pairs(tmp_path)
    cv2.imwrite(str(tmp_path / "gt0.png"), np.zeros((6, 9), np.uint8))
    with pytest.raises(ValueError, match=r"pairs.lst:1: label map 'gt0.png' is 6x9 but image 'im0.png' is 7x9"):
        _data_layer(tmp_path, "batch_size: 1", "")


# -- schema, upgrade, export ----------------------------------------------------------------------------
def test_v1_crop_of_heds_schema_upgrades_to_a_hed_crop():
    """s9xie/hed_release-deprecated's models/hed.prototxt is a V1 net with ``type: CROP``: only HED's schema has
    that value, so the upgraded net takes HED's lineage and its Crops align as the fork's."""
    net = read_net("input: 'data' input_dim: 1 input_dim: 3 input_dim: 20 input_dim: 24\n"
                   "layers { bottom: 'data' top: 'conv1_1' name: 'conv1_1' type: CONVOLUTION blobs_lr: 1 blobs_lr: 2\n"
                   "  convolution_param { num_output: 2 pad: 35 kernel_size: 3 } }\n"
                   "layers { bottom: 'conv1_1' top: 'conv1_1' name: 'relu1_1' type: RELU }\n"
                   "layers { type: CROP name: 'crop' bottom: 'conv1_1' bottom: 'data' top: 'upscore' }\n")
    assert [lp.type for lp in net.layer] == ["Input", "Convolution", "ReLU", "Crop"] and net.lineage == "hed"
    assert [c.hed_offsets for c in Net(net, caffe_pb2.TEST).layers if c.type_name == "Crop"] == [(34, 34)]


def test_onnx_export_cuts_at_heds_offsets():
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from neocaffe.export.onnx import export_onnx

    net = Net(read_net(CROP_NET), caffe_pb2.TEST)
    x = np.random.default_rng(14).standard_normal((2, 2, 21, 19)).astype(np.float32)
    net.forward({"data": torch.as_tensor(x)})
    session = onnxruntime.InferenceSession(export_onnx(net).SerializeToString())
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"data": x})))
    for blob in ("c1_c", "cat_c"):
        np.testing.assert_allclose(got[blob], net.blob(blob).numpy(), rtol=1e-4, atol=1e-5)
