"""WindowData (BVLC Caffe's window_data_layer.cpp) against a line-by-line port of its load_batch loops,
given the same window draws; the window file's rules and errors; the layer in a net and resumed."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from neocaffe import rng
from neocaffe.data.datum import DatumError
from neocaffe.data.sources import DataSourceError
from neocaffe.data.windows import read_window_file
from neocaffe.graph.errors import NetError
from neocaffe.graph.net import Net
from neocaffe.io.binaryproto import write_blobproto
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import BuildContext, LayerSetupError


def caffe_round(v: float) -> int:
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def caffe_batch(windows, draws, images, crop, context_pad, square, scale, mean=None, mean_values=None):
    """load_batch of window_data_layer.cpp, one pixel at a time, float32 where Caffe's Dtype is."""
    f = np.float32
    top = np.zeros((len(draws), 3, crop, crop), np.float32)
    labels = np.zeros(len(draws), np.float32)
    for item_id, (kind, row, do_mirror) in enumerate(draws):
        window = windows.fg[row] if kind == "fg" else windows.bg[row]
        img = images[int(window[0])]
        x1, y1, x2, y2 = int(window[3]), int(window[4]), int(window[5]), int(window[6])
        size_w = size_h = crop
        pad_w = pad_h = 0
        if context_pad > 0 or square:
            context_scale = f(crop) / f(crop - 2 * context_pad)
            half_height, half_width = f(f(y2 - y1 + 1) / 2.0), f(f(x2 - x1 + 1) / 2.0)
            center_x, center_y = f(x1) + half_width, f(y1) + half_height
            if square:
                if half_height > half_width:
                    half_width = half_height
                else:
                    half_height = half_width
            x1 = caffe_round(float(center_x - half_width * context_scale))
            x2 = caffe_round(float(center_x + half_width * context_scale))
            y1 = caffe_round(float(center_y - half_height * context_scale))
            y2 = caffe_round(float(center_y + half_height * context_scale))
            unclipped_height, unclipped_width = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - img.shape[1] + 1), max(0, y2 - img.shape[0] + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            clipped_height, clipped_width = y2 - y1 + 1, x2 - x1 + 1
            scale_x, scale_y = f(crop) / f(unclipped_width), f(crop) / f(unclipped_height)
            size_w = caffe_round(float(f(clipped_width) * scale_x))
            size_h = caffe_round(float(f(clipped_height) * scale_y))
            pad_x1 = caffe_round(float(f(pad_x1) * scale_x))
            pad_x2 = caffe_round(float(f(pad_x2) * scale_x))
            pad_y1 = caffe_round(float(f(pad_y1) * scale_y))
            pad_h = pad_y1
            pad_w = pad_x2 if do_mirror else pad_x1
            if pad_h + size_h > crop:
                size_h = crop - pad_h
            if pad_w + size_w > crop:
                size_w = crop - pad_w
        cropped = cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (size_w, size_h), interpolation=cv2.INTER_LINEAR)
        if do_mirror:
            cropped = cv2.flip(cropped, 1)
        mean_off = (mean.shape[2] - crop) // 2 if mean is not None else 0
        for h in range(cropped.shape[0]):
            for w in range(cropped.shape[1]):
                for c in range(3):
                    pixel = f(cropped[h, w, c])
                    if mean is not None:
                        v = (pixel - mean[c, h + mean_off + pad_h, w + mean_off + pad_w]) * f(scale)
                    elif mean_values is not None:
                        v = (pixel - f(mean_values[c])) * f(scale)
                    else:
                        v = pixel * f(scale)
                    top[item_id, c, h + pad_h, w + pad_w] = v
        labels[item_id] = window[1]
    return top, labels


def _images(folder, n=4, seed=0):
    g = np.random.default_rng(seed)
    sizes = [(20, 30), (25, 18), (16, 16), (31, 27)][:n]
    out = []
    for i, (h, w) in enumerate(sizes):
        img = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"im{i}.png"), img)
        out.append(img)
    return out


def _window_file(folder, images, seed=1, per_image=12):
    g = np.random.default_rng(seed)
    lines = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        lines += [f"# {i}", f"im{i}.png", "3", str(h), str(w), str(per_image)]
        for _ in range(per_image):
            x1, x2 = sorted(g.integers(0, w, 2))
            y1, y2 = sorted(g.integers(0, h, 2))
            overlap = round(float(g.random()), 3)
            label = int(g.integers(1, 5)) if overlap >= 0.5 else int(g.integers(0, 5))
            lines.append(f"{label} {overlap} {x1} {y1} {x2} {y2}")
    (folder / "windows.txt").write_text("\n".join(lines) + "\n")
    return folder / "windows.txt"


def _net(folder, window_param, transform, workers=0, phase=0):
    text = (f'layer {{ name: "w" type: "WindowData" top: "data" top: "label" window_data_param {{ '
            f'source: "{folder}/windows.txt" root_folder: "{folder}/" {window_param} }} '
            f'transform_param {{ {transform} }} }}')
    return Net(read_net(text), phase, source="<test>", context=BuildContext(data_workers=workers))


CASES = [
    ("batch_size: 8 fg_fraction: 0.25", "crop_size: 9 mirror: true", {}),
    ("batch_size: 6 fg_fraction: 0.5 context_pad: 2", "crop_size: 11 mirror: true mean_value: 100 mean_value: 90 "
     "mean_value: 80", {"mean_values": [100, 90, 80]}),
    ("batch_size: 5 fg_fraction: 0.4 context_pad: 3 crop_mode: \"square\" scale: 0.0078125", "crop_size: 10",
     {"scale": 0.0078125}),
    ("batch_size: 7 crop_mode: \"square\" cache_images: true fg_threshold: 0.6 bg_threshold: 0.3",
     "crop_size: 8 mirror: true mean_file: \"MEAN\"", {"mean": True}),
]


@pytest.mark.parametrize("window_param,transform,ref", CASES)
def test_batches_match_caffes_loops(tmp_path, monkeypatch, window_param, transform, ref):
    monkeypatch.chdir(tmp_path)
    images = _images(tmp_path)
    _window_file(tmp_path, images)
    mean = None
    if ref.get("mean"):
        mean = np.random.default_rng(5).uniform(0, 255, (3, 12, 12)).astype(np.float32)  # offset (12 - 8) // 2
        write_blobproto(str(tmp_path / "mean.binaryproto"), mean[None])
        transform = transform.replace("MEAN", str(tmp_path / "mean.binaryproto"))
    net = _net(tmp_path, window_param, transform)
    layer = net.layer("w")
    maker = layer._maker()
    windows = read_window_file(str(tmp_path / "windows.txt"), f"{tmp_path}/", layer.param.window_data_param.fg_threshold,
                               layer.param.window_data_param.bg_threshold)
    crop = layer.param.transform_param.crop_size
    wp = layer.param.window_data_param
    for k in range(4):
        net.forward()
        draws = maker.draws(k)
        n_fg = sum(kind == "fg" for kind, _, _ in draws)
        assert n_fg == int(np.float32(wp.batch_size) * np.float32(wp.fg_fraction))
        assert [kind for kind, _, _ in draws] == sorted(kind for kind, _, _ in draws)  # background first
        want, labels = caffe_batch(windows, draws, images, crop, wp.context_pad, wp.crop_mode == "square",
                                   ref.get("scale", 1.0), mean=mean, mean_values=ref.get("mean_values"))
        np.testing.assert_array_equal(net.blob_data["data"].numpy(), want)
        np.testing.assert_array_equal(net.blob_data["label"].numpy(), labels)
        assert (labels[:len(draws) - n_fg] == 0).all() and (labels[len(draws) - n_fg:] > 0).all()
    layer.close()


def test_window_file_sorting_and_logged_histogram(tmp_path, caplog):
    _images(tmp_path, 2)
    (tmp_path / "windows.txt").write_text(
        "# 0\nim0.png\n3\n20\n30\n4\n1 0.9 0 0 5 5\n3 0.5 1 1 4 4\n2 0.4 0 0 3 3\n0 0.1 2 2 9 9\n"
        "# 1\nim1.png\n3 25 18\n1\n2 0.49 1 1 2 2\n")
    w = read_window_file(str(tmp_path / "windows.txt"), "root/", 0.5, 0.45)
    assert [i[0] for i in w.images] == ["root/im0.png", "root/im1.png"] and w.images[1][1] == (3, 25, 18)
    assert w.fg[:, :3].tolist() == [[0, 1, np.float32(0.9)], [0, 3, 0.5]]  # overlap >= fg_threshold
    # < bg_threshold: class and overlap set to 0; image 1's 0.49 (between the thresholds) dropped
    assert w.bg.tolist() == [[0, 0, 0, 0, 0, 3, 3], [0, 0, 0, 2, 2, 9, 9]]
    assert w.lines["fg"].tolist() == [7, 8] and w.lines["bg"].tolist() == [9, 10]
    with caplog.at_level("INFO", logger="neocaffe.data"):
        net = _net(tmp_path, "batch_size: 4 bg_threshold: 0.45", "crop_size: 5")
    assert "class 0 has 2 samples" in caplog.text and "class 3 has 1 samples" in caplog.text
    net.forward()
    assert net.blob_data["data"].shape == (4, 3, 5, 5) and net.blob_data["label"].shape == (4,)
    net.layer("w").close()


@pytest.mark.parametrize("text,match", [
    ("", "Window file is empty"),
    ("% 0\nim0.png\n3 20 30\n0\n", r"windows.txt:1: expected '#' opening an image's entry; received '%'"),
    ("# 1\nim0.png\n3 20 30\n0\n", r"windows.txt:1: image index 1; expected 0"),
    ("# 0\nim0.png\n3 20 thirty\n0\n", r"windows.txt:3: image 0's width must be an integer; received 'thirty'"),
    ("# 0\nim0.png\n3 20 30\n2\n1 0.9 0 0 5 5\n", r"windows.txt:5: the file ends where a window's class should follow"),
    ("# 0\nim0.png\n3 20 30\n1\n0 0.9 0 0 5 5\n", r"windows.txt:5: a foreground window .* must have a class > 0; "
                                                   r"received 0"),
])
def test_window_file_errors_name_the_line(tmp_path, text, match):
    (tmp_path / "windows.txt").write_text(text)
    with pytest.raises(DataSourceError, match=match):
        read_window_file(str(tmp_path / "windows.txt"))


@pytest.mark.parametrize("window_param,transform,match", [
    ("batch_size: 4", "mirror: true", r"transform_param.crop_size must be positive"),
    ("batch_size: 4 crop_mode: \"round\"", "crop_size: 5", r"crop_mode must be one of warp, square; received 'round'"),
    ("batch_size: 4 context_pad: 3", "crop_size: 6", r"context_pad 3 leaves no room in crop_size 6"),
    ("batch_size: 4 fg_threshold: 0.99", "crop_size: 5", r"has no foreground windows, and every batch takes 1"),
    ("batch_size: 4 cache_images: true", "crop_size: 5 mean_value: 1 mean_value: 2", r"Specify either 1 mean_value"),
])
def test_configuration_errors_name_the_layer(tmp_path, monkeypatch, window_param, transform, match):
    monkeypatch.chdir(tmp_path)
    _window_file(tmp_path, _images(tmp_path))
    with pytest.raises((LayerSetupError, ValueError), match=match):
        net = _net(tmp_path, window_param, transform)
        net.forward()


def test_a_missing_image_is_named_with_its_window_file_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _window_file(tmp_path, _images(tmp_path, 2))
    (tmp_path / "im1.png").unlink()
    with pytest.raises(NetError, match=r"layer 'w' \(WindowData\): .*windows.txt:19: Could not open or find file "
                                       r".*im1.png"):
        _net(tmp_path, "batch_size: 4 cache_images: true", "crop_size: 5")
    net = _net(tmp_path, "batch_size: 16", "crop_size: 5")
    with pytest.raises(DatumError, match=r"layer 'w' \(WindowData\): .*windows.txt:19: Could not open or find file"):
        for _ in range(10):
            net.forward()


def test_workers_give_the_in_process_batches_and_resume_continues(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _window_file(tmp_path, _images(tmp_path))
    runs = []
    for workers in (0, 2):
        rng.set_seed(4)
        net = _net(tmp_path, "batch_size: 6 context_pad: 2", "crop_size: 9 mirror: true", workers=workers)
        out = []
        for _ in range(6):
            net.forward()
            out.append(net.blob_data["data"].clone())
        state = net.layer("w").resume_state()
        net.layer("w").close()
        runs.append(out)
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert state["batch"] == 6
    rng.set_seed(4)
    net = _net(tmp_path, "batch_size: 6 context_pad: 2", "crop_size: 9 mirror: true")
    net.layer("w").load_resume_state({**state, "batch": 3})
    net.forward()
    torch.testing.assert_close(net.blob_data["data"], runs[0][3], rtol=0, atol=0)
    net.layer("w").close()


def test_an_image_name_that_is_not_utf8_is_read(tmp_path, monkeypatch):
    """Window files hold byte paths; a name that is not UTF-8 is read (cv2.imread crashes on it)."""
    monkeypatch.chdir(tmp_path)
    img = np.random.default_rng(6).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    name = b"caf\xe9.png"  # Latin-1, not UTF-8
    ok, png = cv2.imencode(".png", img)
    (tmp_path / name.decode("utf-8", "surrogateescape")).write_bytes(png.tobytes())
    (tmp_path / "windows.txt").write_bytes(b"# 0\n" + name + b"\n3\n20\n24\n2\n1 0.9 2 2 15 15\n0 0.1 0 0 23 19\n")
    net = _net(tmp_path, "batch_size: 2 fg_fraction: 0.5", "crop_size: 6")
    net.forward()
    assert net.blob_data["label"].tolist() == [0.0, 1.0]
    assert float(net.blob_data["data"].abs().sum()) > 0
    net.layer("w").close()
