"""DeepLab's ImageSegData (hszhao/PSPNet ``image_seg_data_layer.cpp`` + ``TransformImgAndSeg``) against a
NumPy/OpenCV re-statement of the fork's per-item steps, on tiny PNGs written here: read + resize (bilinear
for image and label), scale_factors (bilinear image, nearest label, truncated sizes), padding with the
mean (exactly 0 after mean and scale) and ignore_label, random (TRAIN) / central (TEST) crop, mirror,
label_type PIXEL/IMAGE/NONE, the data_dim top, errors; worker processes; and the automatic third top."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers.base import TEST, TRAIN, BuildContext, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

MEAN = (104.008, 116.669, 122.675)  # DeepLab's mean_value lines


pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """Reads run in the test's process unless a layer asks for workers (BuildContext.data_workers)."""
    monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", "0")


def _pairs(folder, n=5, size=(7, 9), sizes=None, seed=0):
    """``n`` random BGR images with random label images (0..20 and 255) and a PIXEL list file."""
    g = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        h, w = sizes[i] if sizes else size
        cv2.imwrite(str(folder / f"im{i}.png"), g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lab = g.integers(0, 21, (h, w), dtype=np.uint8)
        lab[g.random((h, w)) < 0.1] = 255
        cv2.imwrite(str(folder / f"lb{i}.png"), lab)
        lines.append(f"/im{i}.png /lb{i}.png")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")


def _layer(folder, fields: str, transform: str = "", phase: int = TRAIN, seed: int = 1, workers: int | None = None,
           source: str = "list.txt"):
    rng.set_seed(seed)
    text = (f'name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim" image_data_param {{ '
            f'source: "{folder / source}" root_folder: "{folder}" {fields} }} transform_param {{ {transform} }}')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class("ImageSegData")(param, [], phase, BuildContext(data_workers=workers))


def _forward(layer, times):
    outs = []
    try:
        for _ in range(times):
            outs.append(tuple(t.numpy().copy() for t in layer()))
    finally:
        layer.close()
    return outs


def _reference(folder, i, new_hw=(0, 0), factor=1.0, crop=(0, 0), mean=MEAN, scale=1.0, ignore=255):
    """The fork's steps for list line ``i`` up to the crop: the float32 image (C, H, W) after mean and
    scale with the mean padding, its label (1, H, W) with ignore_label padding, and the size read."""
    img = cv2.imread(str(folder / f"im{i}.png"), cv2.IMREAD_COLOR)
    lab = cv2.imread(str(folder / f"lb{i}.png"), cv2.IMREAD_GRAYSCALE)
    if new_hw[0]:
        img = cv2.resize(img, (new_hw[1], new_hw[0]))
        lab = cv2.resize(lab, (new_hw[1], new_hw[0]))  # the fork's ReadImageToCVMat: bilinear for the label too
    read = lab.shape
    if factor != 1:
        h, w = int(np.float32(img.shape[0]) * np.float32(factor)), int(np.float32(img.shape[1]) * np.float32(factor))
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
    img = img.astype(np.float64)
    ph, pw = max(crop[0] - img.shape[0], 0), max(crop[1] - img.shape[1], 0)
    if ph or pw:
        img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=tuple(float(np.float32(m)) for m in mean))
        lab = cv2.copyMakeBorder(lab, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=ignore)
    chw = img.transpose(2, 0, 1).astype(np.float32)
    out = (chw - np.asarray(mean, np.float32).reshape(3, 1, 1)) * np.float32(scale)
    return out, lab[None].astype(np.float32), read


def _windows(ref, out):
    """Every (flip, h0, w0) at which ``ref`` (flipped first when flip) holds ``out``."""
    found = []
    for flip in (0, 1):
        src = ref[:, :, ::-1] if flip else ref
        for h0 in range(ref.shape[1] - out.shape[1] + 1):
            for w0 in range(ref.shape[2] - out.shape[2] + 1):
                win = src[:, h0:h0 + out.shape[1], w0:w0 + out.shape[2]]
                if np.array_equal(win, out):
                    found.append((flip, h0, w0))
    return found


def test_test_phase_pads_with_the_mean_and_ignore_label_and_takes_the_central_crop(tmp_path):
    """DeepLab's test nets: crop_size larger than the image pads it at the bottom and right (data 0
    after mean subtraction, label ignore_label); data_dim is the image's size."""
    _pairs(tmp_path, sizes=[(7, 9), (10, 5), (12, 14), (4, 4), (11, 11)])
    mv = " ".join(f"mean_value: {m}" for m in MEAN)
    layer = _layer(tmp_path, "batch_size: 1 label_type: PIXEL", f"crop_size: 11 scale: 0.5 {mv}", phase=TEST)
    assert layer.reshape([]) == [(1, 3, 11, 11), (1, 1, 11, 11), (1, 1, 1, 2)]
    outs = _forward(layer, 5)
    for i, (data, label, dims) in enumerate(outs):
        img, lab, read = _reference(tmp_path, i, crop=(11, 11), scale=0.5)
        h0, w0 = (img.shape[1] - 11) // 2, (img.shape[2] - 11) // 2
        np.testing.assert_array_equal(data[0], img[:, h0:h0 + 11, w0:w0 + 11], err_msg=f"item {i}")
        np.testing.assert_array_equal(label[0], lab[:, h0:h0 + 11, w0:w0 + 11], err_msg=f"item {i}")
        assert dims.reshape(2).tolist() == [min(11, read[0]), min(11, read[1])]
    data, label, _ = outs[0]  # the 7x9 image: rows 7.. and columns 9.. are padding
    assert (data[0, :, 7:, :] == 0).all() and (data[0, :, :, 9:] == 0).all() and (data[0, :, :7, :9] != 0).all()
    assert (label[0, :, 7:, :] == 255).all() and (label[0, :, :, 9:] == 255).all()


@pytest.mark.parametrize("workers", [None, 2])
def test_train_phase_random_crops_and_mirrors_share_one_window(tmp_path, workers):
    """One random window and one flip for image and label; a window may reach into the padding, which
    then sits on the left of a mirrored item."""
    _pairs(tmp_path, sizes=[(7, 9), (6, 12), (9, 7), (8, 8), (5, 10)])
    mv = " ".join(f"mean_value: {m}" for m in MEAN)
    layer = _layer(tmp_path, "batch_size: 3 label_type: PIXEL shuffle: false",
                   f"crop_size: 7 mirror: true {mv}", workers=workers)
    seen = set()
    for k, (data, label, dims) in enumerate(_forward(layer, 8)):
        for j in range(3):
            i = (3 * k + j) % 5
            img, lab, read = _reference(tmp_path, i, crop=(7, 7))
            windows = [w for w in _windows(lab, label[j]) if w in _windows(img, data[j])]
            assert windows, f"batch {k} item {j}: no window of line {i} gives the output"
            seen.update(w[0] for w in windows)
            assert dims[j].reshape(2).tolist() == [min(7, read[0]), min(7, read[1])]
    assert seen == {0, 1}


def test_scale_factors_resize_image_bilinear_and_label_nearest(tmp_path):
    """One of scale_factors per item, in every phase; sizes truncate (int(9 * 0.75) = 6); without a
    crop each item keeps its scaled size (batch_size 1); data_dim is the size as read, clipped to the top."""
    _pairs(tmp_path, n=3, size=(9, 13))
    layer = _layer(tmp_path, "batch_size: 1 label_type: PIXEL", "scale_factors: 0.75 scale_factors: 1.25 "
                   "mean_value: 0", phase=TEST)
    shapes = set()
    for k, (data, label, dims) in enumerate(_forward(layer, 9)):
        f = {6: 0.75, 11: 1.25}[data.shape[2]]
        img, lab, _ = _reference(tmp_path, k % 3, factor=f, mean=(0, 0, 0))
        np.testing.assert_array_equal(data[0], img)
        np.testing.assert_array_equal(label[0], lab)
        assert dims.reshape(2).tolist() == [min(9, data.shape[2]), min(13, data.shape[3])]  # read, clipped to the top
        shapes.add(data.shape)
    assert shapes == {(1, 3, 6, 9), (1, 3, 11, 16)}


def test_new_size_resizes_the_label_bilinear_as_the_fork_does(tmp_path):
    _pairs(tmp_path, n=2, size=(9, 13))
    layer = _layer(tmp_path, "batch_size: 2 label_type: PIXEL new_height: 6 new_width: 8", "", phase=TEST)
    ((data, label, dims),) = _forward(layer, 1)
    for j in range(2):
        img, lab, read = _reference(tmp_path, j, new_hw=(6, 8), mean=(0, 0, 0))
        np.testing.assert_array_equal(data[j], img)
        np.testing.assert_array_equal(label[j], lab)
        assert read == (6, 8) and dims[j].reshape(2).tolist() == [6, 8]


def test_label_types_image_and_none(tmp_path):
    """IMAGE: a constant label image of the line's integer label; NONE: of ignore_label; the padding
    takes ignore_label in both."""
    _pairs(tmp_path, n=3, size=(5, 6))
    (tmp_path / "cls.txt").write_text("/im0.png 3\n\n/im1.png 300\n/im2.png 7\n")
    (tmp_path / "none.txt").write_text("/im0.png\n/im1.png\n")
    layer = _layer(tmp_path, "batch_size: 3 label_type: IMAGE ignore_label: 250", "crop_height: 6 crop_width: 6",
                   phase=TEST, source="cls.txt")
    ((data, label, dims),) = _forward(layer, 1)
    assert [int(label[j, 0, 0, 0]) for j in range(3)] == [3, 255, 7]  # 300 saturates in a CV_8UC1 image
    assert (label[:, 0, 5, :] == 250).all() and dims[:, 0, 0].tolist() == [[5, 6]] * 3
    layer = _layer(tmp_path, "batch_size: 2 label_type: NONE", "", phase=TEST, source="none.txt")
    ((data, label, dims),) = _forward(layer, 1)
    assert label.shape == (2, 1, 5, 6) and (label == 255).all()


def test_two_named_tops_get_an_automatic_third(tmp_path):
    """DeepLab's training nets name data and label only; Caffe's AutoTopBlobs adds data_dim."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    _pairs(tmp_path)
    net = read_net(f'layer {{ name: "data" type: "ImageSegData" top: "data" top: "label" image_data_param {{ '
                   f'source: "{tmp_path}/list.txt" root_folder: "{tmp_path}" batch_size: 2 label_type: PIXEL }} '
                   f'transform_param {{ crop_size: 5 }} }}')
    n = Net(net, TRAIN)
    try:
        n.forward()
        assert n.blob("data").shape == (2, 3, 5, 5) and n.blob("label").shape == (2, 1, 5, 5)
        assert set(n.outputs) == {"data", "label"}
    finally:
        n.close()


@pytest.mark.parametrize("fields, transform, match", [
    ("label_type: PIXEL", 'mean_file: "m.binaryproto"', r"mean_file: ImageSegData does not support a mean file"),
    ("label_type: PIXEL", "crop_size: 4 crop_height: 4 crop_width: 4", r"either crop_size or both crop_height"),
    ("label_type: PIXEL", "crop_height: 4", r"either crop_size or both crop_height and crop_width"),
    ("label_type: PIXEL", "crop_h: 4 crop_w: 4", r"transform_param crop_h, crop_w: not read by ImageSegData"),
    ("label_type: PIXEL", "scale_factors: 0", r"scale_factors must be positive; received \[0.0\]"),
    ("label_type: PIXEL new_height: 4", "", r"new_height and new_width must be set together; received 4, 0"),
    ("label_type: PIXEL", "mean_value: 1 mean_value: 2", r"specify either 1 mean_value or as many as channels \(3\)"),
    ("label_type: IMAGE", "", r"list.txt:1: expected '<image file> <integer label>'; received label '/lb0.png'"),
    ("label_type: NONE", "", r"list.txt:1: expected '<image file>'; received '/im0.png /lb0.png'"),
])
def test_bad_configurations_name_what_was_received_and_expected(tmp_path, fields, transform, match):
    _pairs(tmp_path, n=2)
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer(tmp_path, f"batch_size: 1 {fields}", transform)
    assert "layer 'data'" in str(e.value)


def test_bad_items_name_the_list_line(tmp_path):
    _pairs(tmp_path, n=3, sizes=[(5, 6), (5, 6), (6, 6)])
    cv2.imwrite(str(tmp_path / "lb1.png"), np.zeros((4, 6), np.uint8))
    layer = _layer(tmp_path, "batch_size: 1 label_type: PIXEL", "", phase=TEST)
    with pytest.raises(Exception, match=r"list.txt:2: image '/im1.png' is 5x6 but its label image '/lb1.png' is 4x6"):
        _forward(layer, 2)
    cv2.imwrite(str(tmp_path / "lb1.png"), np.zeros((5, 6), np.uint8))
    layer = _layer(tmp_path, "batch_size: 3 label_type: PIXEL", "", phase=TEST)
    with pytest.raises(Exception, match=r"list.txt:3: image '/im2.png' gives a 3x6x6 item but the batch's first is "
                                        r"3x5x6; without crop_size"):
        _forward(layer, 1)
