"""SegNet's DenseImageData (alexgkendall/caffe-segnet ``dense_image_data_layer.cpp``) against a NumPy/OpenCV
re-statement of the fork's prefetch loop, on tiny PNGs written here: list order and wrap, resize
(bilinear image, nearest-neighbour label), mean/scale on the image only, mirror and crop sharing one
window between image and label, shuffle per pass, rand_skip, ENet's label_divide_factor, per-image
sizes at batch_size 1, worker processes; and a SegNet-style net (DenseImageData -> conv ->
SoftmaxWithLoss with ignore_label) whose loss falls. Every test runs under an alarm."""
from __future__ import annotations

import signal

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.io.binaryproto import write_blobproto
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN, BuildContext
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver


@pytest.fixture(autouse=True)
def _bounded_and_in_process(monkeypatch):
    """Each test ends within 60 s (an alarm interrupts any wait) and reads in process unless its net's
    build asks for workers (``BuildContext.data_workers``)."""
    def _timeout(signum, frame):
        raise TimeoutError("test_dense_image_data: test ran past 60 s")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(60)
    monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", "0")
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _pairs(folder, n=5, size=(7, 9), label_size=None, color=True, seed=0, sizes=None):
    """``n`` random images with random label images (values 0..9 and 255), a list file; returns the
    list's path and the arrays as written (HWC BGR / HW)."""
    g = np.random.default_rng(seed)
    lines, imgs, labs = [], [], []
    for i in range(n):
        h, w = sizes[i] if sizes else size
        img = g.integers(0, 256, (h, w, 3) if color else (h, w), dtype=np.uint8)
        lh, lw = label_size or (h, w)
        lab = g.integers(0, 10, (lh, lw), dtype=np.uint8)
        lab[g.random((lh, lw)) < 0.1] = 255
        cv2.imwrite(str(folder / f"im{i}.png"), img)
        cv2.imwrite(str(folder / f"lb{i}.png"), lab)
        lines.append(f"im{i}.png lb{i}.png")
        imgs.append(img)
        labs.append(lab)
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt", imgs, labs


def _layer(folder, fields: str, transform: str = "", phase: int = TRAIN, seed: int = 1, workers: int | None = None):
    rng.set_seed(seed)
    text = (f'name: "data" type: "DenseImageData" top: "data" top: "label" dense_image_data_param {{ '
            f'source: "{folder / "list.txt"}" root_folder: "{folder}/" {fields} }} '
            f'transform_param {{ {transform} }}')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class("DenseImageData")(param, [], phase, BuildContext(data_workers=workers))


def _reference_item(folder, i, new_hw=(0, 0), is_color=True, mean=None, scale=1.0, label_divide=1):
    """The fork's loop for list line ``i``: ReadImageToCVMat (resize bilinear) for the image, gray +
    nearest neighbour for the label; Transform: float (pixel - mean[c]) * scale for the image, the
    label's pixel values unchanged (preserve_pixel_vals)."""
    img = cv2.imread(str(folder / f"im{i}.png"), cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    lab = cv2.imread(str(folder / f"lb{i}.png"), cv2.IMREAD_GRAYSCALE)
    h, w = new_hw
    if h:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(lab, (w // label_divide, h // label_divide), interpolation=cv2.INTER_NEAREST)
    img = img.reshape(img.shape[0], img.shape[1], -1).transpose(2, 0, 1).astype(np.float32)
    if mean is not None:
        img = img - np.asarray(mean, np.float32).reshape(-1, 1, 1)
    return img * np.float32(scale), lab[None].astype(np.float32)


def _forward(layer, times):
    outs = []
    try:
        for _ in range(times):
            data, label = layer()
            outs.append((data.numpy().copy(), label.numpy().copy()))
    finally:
        layer.close()
    return outs


def test_list_order_resize_mean_and_scale_match_the_fork(tmp_path):
    _pairs(tmp_path, size=(9, 11))
    layer = _layer(tmp_path, "batch_size: 2 new_height: 6 new_width: 8",
                   "scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30", phase=TEST)
    assert layer.reshape([]) == [(2, 3, 6, 8), (2, 1, 6, 8)]
    outs = _forward(layer, 5)  # two passes over the five pairs, wrapping inside batch 2
    for k, (data, label) in enumerate(outs):
        assert data.dtype == np.float32 and data.shape == (2, 3, 6, 8) and label.shape == (2, 1, 6, 8)
        for j in range(2):
            ref_img, ref_lab = _reference_item(tmp_path, (2 * k + j) % 5, (6, 8), mean=[10, 20, 30], scale=0.5)
            np.testing.assert_array_equal(data[j], ref_img, err_msg=f"batch {k} item {j}")
            np.testing.assert_array_equal(label[j], ref_lab, err_msg=f"batch {k} item {j}")
    assert set(np.unique(np.concatenate([lab.ravel() for _, lab in outs]))) <= set(range(10)) | {255}


def _find_window(ref: np.ndarray, out: np.ndarray) -> list[tuple[int, int, int]]:
    """Every (flip, h0, w0) whose window of ``ref`` (C, H, W), flipped left-right first when flip, is ``out``."""
    _, hh, ww = ref.shape
    _, h, w = out.shape
    found = []
    for flip in (0, 1):
        src = ref[:, :, ::-1] if flip else ref
        for h0 in range(hh - h + 1):
            for w0 in range(ww - w + 1):
                if np.array_equal(src[:, h0:h0 + h, w0:w0 + w], out):
                    found.append((flip, h0, w0))
    return found


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_mirror_and_crop_cut_one_window_from_image_and_label(tmp_path, phase):
    """The fork flips image and label together at random, then cuts one random crop_height x crop_width
    window from both: in TEST as in TRAIN (it never looks at the phase)."""
    _pairs(tmp_path, size=(7, 9))
    layer = _layer(tmp_path, "batch_size: 3 mirror: true crop_height: 4 crop_width: 5", "mean_value: 0",
                   phase=phase)
    assert layer.reshape([]) == [(3, 3, 4, 5), (3, 1, 4, 5)]
    seen = set()
    for k, (data, label) in enumerate(_forward(layer, 10)):
        for j in range(3):
            ref_img, ref_lab = _reference_item(tmp_path, (3 * k + j) % 5)
            (window,) = _find_window(ref_img, data[j])  # random pixels: exactly one window fits
            flip, h0, w0 = window
            src = ref_lab[:, :, ::-1] if flip else ref_lab
            np.testing.assert_array_equal(label[j], src[:, h0:h0 + 4, w0:w0 + 5], err_msg=f"batch {k} item {j}")
            seen.add(window)
    assert {f for f, _, _ in seen} == {0, 1}
    assert len({(h0, w0) for _, h0, w0 in seen}) >= 8  # of the 4 x 5 windows: the crop moves


def test_mean_file_has_the_crops_size_and_applies_to_the_image_only(tmp_path):
    """The fork's Transform checks the mean file against the (already cropped) image and subtracts it
    position by position; the label is not touched."""
    _pairs(tmp_path, size=(7, 9))
    mean = np.random.default_rng(5).uniform(0, 50, (3, 4, 5)).astype(np.float32)
    write_blobproto(tmp_path / "mean.binaryproto", mean[None])
    layer = _layer(tmp_path, "batch_size: 2 crop_height: 4 crop_width: 5",
                   f'mean_file: "{tmp_path / "mean.binaryproto"}" scale: 0.25')
    for k, (data, label) in enumerate(_forward(layer, 3)):
        for j in range(2):
            ref_img, ref_lab = _reference_item(tmp_path, (2 * k + j) % 5)
            (window,) = _find_window(ref_lab, label[j])  # labels are random too: one window fits
            _, h0, w0 = window
            want = (ref_img[:, h0:h0 + 4, w0:w0 + 5] - mean) * np.float32(0.25)
            np.testing.assert_array_equal(data[j], want)
    with pytest.raises(Exception, match=r"mean_file .* is 3x4x5 but the image is 3x7x9"):
        _layer(tmp_path, "batch_size: 2", f'mean_file: "{tmp_path / "mean.binaryproto"}"')


def _label_ids(outs) -> list[int]:
    """Which list line each item came from (each label image is constant: its line number)."""
    return [int(lab[0, 0, 0]) for _, label in outs for lab in label]


def _constant_labels(folder, n):
    for i in range(n):
        cv2.imwrite(str(folder / f"lb{i}.png"), np.full((7, 9), i, np.uint8))


def test_shuffle_permutes_every_pass_and_rand_skip_shortens_the_first(tmp_path):
    _pairs(tmp_path, size=(7, 9))
    _constant_labels(tmp_path, 5)
    ids = _label_ids(_forward(_layer(tmp_path, "batch_size: 2 shuffle: true"), 10))
    passes = [ids[i:i + 5] for i in range(0, 20, 5)]
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes), passes
    assert len({tuple(p) for p in passes}) > 1, f"shuffle gave one order for every pass: {passes}"
    # rand_skip: start `skip` lines in, finish that pass, then read whole passes (list order)
    for seed in range(1, 6):
        layer = _layer(tmp_path, "batch_size: 2 rand_skip: 4", seed=seed)
        skip = layer.skip
        assert 0 <= skip < 4
        ids = _label_ids(_forward(layer, 4))
        assert ids == ([*range(skip, 5)] + [*range(5)] * 2)[:8]


def test_label_divide_factor_of_enet(tmp_path):
    """TimoSaemann/caffe-enet: the label is read at new_height / f x new_width / f (nearest neighbour)."""
    _pairs(tmp_path, size=(10, 14))
    layer = _layer(tmp_path, "batch_size: 2 new_height: 8 new_width: 12 label_divide_factor: 4 mirror: true")
    assert layer.reshape([]) == [(2, 3, 8, 12), (2, 1, 2, 3)]
    for k, (data, label) in enumerate(_forward(layer, 3)):
        for j in range(2):
            ref_img, ref_lab = _reference_item(tmp_path, (2 * k + j) % 5, (8, 12), label_divide=4)
            flip = not np.array_equal(data[j], ref_img)
            if flip:
                np.testing.assert_array_equal(data[j], ref_img[:, :, ::-1])
            np.testing.assert_array_equal(label[j], ref_lab[:, :, ::-1] if flip else ref_lab)
    # no resize: the label image must already be 1/f of its image
    _pairs(tmp_path, size=(8, 12), label_size=(4, 6))
    data, label = _forward(_layer(tmp_path, "batch_size: 1 label_divide_factor: 2"), 1)[0]
    assert data.shape == (1, 3, 8, 12) and label.shape == (1, 1, 4, 6)
    with pytest.raises(Exception, match=r"must be 2x3 / label_divide_factor 4; label image 'lb0.png' is 4x6"):
        _layer(tmp_path, "batch_size: 1 label_divide_factor: 4")
    with pytest.raises(Exception, match="label_divide_factor 2 with crop_height"):
        _layer(tmp_path, "batch_size: 1 label_divide_factor: 2 crop_height: 2 crop_width: 2")


def test_batch_size_one_keeps_each_images_size_and_gray_reads(tmp_path):
    sizes = [(5, 6), (7, 4), (6, 9)]
    _pairs(tmp_path, n=3, sizes=sizes, color=False)
    layer = _layer(tmp_path, "batch_size: 1 is_color: false", "scale: 2")
    for k, (data, label) in enumerate(_forward(layer, 4)):
        ref_img, ref_lab = _reference_item(tmp_path, k % 3, is_color=False, scale=2)
        assert data.shape == (1, 1, *sizes[k % 3])
        np.testing.assert_array_equal(data[0], ref_img)
        np.testing.assert_array_equal(label[0], ref_lab)


def test_errors_name_the_list_line_and_what_was_expected(tmp_path):
    _pairs(tmp_path, size=(7, 9))
    with pytest.raises(Exception, match="transform_param.mirror and crop_size"):
        _layer(tmp_path, "batch_size: 1", "mirror: true")
    with pytest.raises(Exception, match="new_height and new_width must be set together"):
        _layer(tmp_path, "batch_size: 1 new_height: 4")
    with pytest.raises(Exception, match=r"crop 8x5 is larger than image 'im0.png' \(7x9\)"):
        _layer(tmp_path, "batch_size: 1 crop_height: 8 crop_width: 5")
    cv2.imwrite(str(tmp_path / "lb3.png"), np.zeros((6, 9), np.uint8))
    layer = _layer(tmp_path, "batch_size: 2")
    with pytest.raises(Exception, match=r"list.txt:4: image 'im3.png' is 7x9, so its label image must be 7x9"):
        _forward(layer, 2)
    (tmp_path / "list.txt").write_text("im0.png lb0.png\nim1.png\n")
    with pytest.raises(Exception, match=r"list.txt:2: expected '<image file> <label image file>'"):
        _layer(tmp_path, "batch_size: 1")
    (tmp_path / "list.txt").write_text("im0.png missing.png\n")
    with pytest.raises(Exception, match=r"list.txt:1: could not load label image .*missing.png' \(no such file\)"):
        _layer(tmp_path, "batch_size: 1")


def test_worker_processes_give_the_same_batches(tmp_path):
    _pairs(tmp_path, size=(7, 9))
    fields = "batch_size: 2 shuffle: true mirror: true crop_height: 5 crop_width: 6"
    in_process = _forward(_layer(tmp_path, fields, "scale: 0.5"), 6)
    with_workers = _forward(_layer(tmp_path, fields, "scale: 0.5", workers=2), 6)  # closed (workers joined) after
    for (a, b), (c, d) in zip(in_process, with_workers):
        np.testing.assert_array_equal(c, a)
        np.testing.assert_array_equal(d, b)


SEGNET = """
name: "tiny_segnet"
layer { name: "data" type: "DenseImageData" top: "data" top: "label"
  dense_image_data_param { source: "LIST" root_folder: "ROOT/" batch_size: 4 shuffle: true mirror: true
    crop_height: 12 crop_width: 12 }
  transform_param { mean_value: 128 mean_value: 128 mean_value: 128 scale: 0.0078125 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
"""


def test_segnet_style_net_trains_with_ignore_label(tmp_path):
    """Pixels of three colours (plus noise) labelled 0/1/2, a border of 255 to ignore: the loss falls."""
    g = np.random.default_rng(3)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.int16)
    lines = []
    for i in range(8):
        cls = g.integers(0, 3, (16, 16))
        img = np.clip(colours[cls] + g.integers(-30, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        lab = cls.astype(np.uint8)
        lab[:2], lab[:, :2] = 255, 255
        cv2.imwrite(str(tmp_path / f"im{i}.png"), img)
        cv2.imwrite(str(tmp_path / f"lb{i}.png"), lab)
        lines.append(f"im{i}.png lb{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "train.prototxt").write_text(SEGNET.replace("LIST", str(tmp_path / "list.txt"))
                                             .replace("ROOT", str(tmp_path)))
    solver = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 '
                      'max_iter: 40 display: 0 snapshot_after_train: false random_seed: 4 solver_mode: CPU', solver)
    s = Solver(solver)
    try:
        losses = []
        for _ in range(40):
            s.step(1)
            losses.append(s.smoothed_loss)
        label = s.net.blob_data["label"]
        assert label.shape == (4, 1, 12, 12) and bool((label == 255).any())
    finally:
        s.net.close()
        s.close()
    losses = np.array(losses)
    assert np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    print(f"tiny SegNet SoftmaxWithLoss: first 5 iterations {first:.3f}, last 5 {last:.3f}")
    assert last < 0.5 * first, f"loss did not fall: first 5 iterations {first:.3f}, last 5 {last:.3f}"


def test_ignored_pixels_do_not_count_in_the_loss(tmp_path):
    """SoftmaxWithLoss over DenseImageData's label: pixels labelled 255 add nothing and are not counted
    (VALID normalization), checked against a NumPy softmax."""
    g = np.random.default_rng(7)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), g.integers(0, 256, (6, 5, 3), dtype=np.uint8))
        lab = g.integers(0, 3, (6, 5)).astype(np.uint8)
        lab[g.random((6, 5)) < 0.3] = 255
        cv2.imwrite(str(tmp_path / f"lb{i}.png"), lab)
    (tmp_path / "list.txt").write_text("im0.png lb0.png\nim1.png lb1.png\n")
    text = SEGNET.replace("LIST", str(tmp_path / "list.txt")).replace("ROOT", str(tmp_path))
    text = text.replace("batch_size: 4 shuffle: true mirror: true\n    crop_height: 12 crop_width: 12", "batch_size: 2")
    net = Net(read_net(text), TRAIN, source="<test>")
    try:
        net.forward()
        loss = float(net.blob_data["loss"])
        score = net.blob_data["score"].double().numpy()
        label = net.blob_data["label"].numpy()[:, 0].astype(int)
    finally:
        net.close()
    z = score - score.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    valid = label != 255
    n, h, w = np.nonzero(valid)
    want = -logp[n, label[valid], h, w].sum() / valid.sum()
    assert 0 < valid.sum() < valid.size
    assert loss == pytest.approx(want, rel=1e-5)
    assert torch.is_tensor(net.blob_data["label"])


@pytest.mark.gpu
def test_cuda_net_reads_the_same_batches(tmp_path):
    """On a CUDA net the image is transformed on the device (mean file, scale) and both tops land there,
    equal to the CPU net's."""
    _pairs(tmp_path, size=(7, 9))
    mean = np.random.default_rng(5).uniform(0, 50, (3, 4, 5)).astype(np.float32)
    write_blobproto(tmp_path / "mean.binaryproto", mean[None])
    text = (f'layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" dense_image_data_param {{ '
            f'source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 2 mirror: true '
            f'crop_height: 4 crop_width: 5 }} transform_param {{ mean_file: "{tmp_path / "mean.binaryproto"}" '
            f'scale: 0.25 }} }} layer {{ name: "s" type: "Silence" bottom: "data" bottom: "label" }}')
    outs = {}
    for device in ("cpu", "cuda"):
        rng.set_seed(9)
        net = Net(read_net(text), TRAIN, source="<test>", device=device)
        try:
            outs[device] = []
            for _ in range(3):
                net.forward()
                assert net.blob_data["data"].device.type == device == net.blob_data["label"].device.type
                outs[device].append((net.blob_data["data"].cpu().clone(), net.blob_data["label"].cpu().clone()))
        finally:
            net.close()
    for (a, b), (c, d) in zip(outs["cpu"], outs["cuda"]):
        assert torch.equal(a, c) and torch.equal(b, d)
