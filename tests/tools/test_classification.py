"""``classification`` (Caffe's examples/cpp_classification): the printed top 5 against an independent
computation (cv2 + NumPy preprocessing, a ``caffe.Net`` forward), and its errors."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe
from neocaffe.io.binaryproto import write_blobproto
from neocaffe.tools import classification
from neocaffe.tools.classification import Classifier, main, top_n
from tests.conftest import shared_path

NET = """name: "tiny"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: {c} dim: 8 dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.02 }}
                      bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param {{ num_output: {k} weight_filler {{ type: "gaussian" std: 0.05 }} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "ip" top: "prob" }}
"""
LABELS = [f"n0{i}44 class {i}, the {i}th" for i in range(7)]


def make_files(tmp_path: Path, channels: int = 3, classes: int = 7, mean_channels: int | None = None,
               labels: list[str] | None = None) -> dict[str, str]:
    """A deploy net with random weights, a mean (5 x 6, not the input size), labels; paths by role."""
    model = tmp_path / f"deploy{channels}.prototxt"
    model.write_text(NET.format(c=channels, k=classes))
    weights = tmp_path / f"net{channels}.caffemodel"
    caffe.Net(str(model), caffe.TEST).save(str(weights))
    rng = np.random.default_rng(7)
    mean = tmp_path / "mean.binaryproto"
    write_blobproto(mean, rng.uniform(0, 255, (1, mean_channels or channels, 5, 6)).astype(np.float32), legacy=True)
    label_file = tmp_path / "labels.txt"
    label_file.write_text("".join(f"{s}\n" for s in (LABELS if labels is None else labels)))
    return {"model": str(model), "weights": str(weights), "mean": str(mean), "labels": str(label_file)}


def write_image(tmp_path: Path, kind: str = "bgr", name: str = "img.png") -> str:
    """A 13 x 11 PNG (gray, BGR or BGRA; 16-bit for kind "gray16", "bgr16") of random pixels: not the net's
    8 x 8 input."""
    channels = {"gray": 1, "bgr": 3, "bgra": 4}[kind.removesuffix("16")]
    rng = np.random.default_rng(3)
    if kind.endswith("16"):  # values past 255: read unchanged (cv::imread(file, -1)) they stay as they are
        pixels = rng.integers(0, 400, (13, 11, channels), dtype=np.uint16)
    else:
        pixels = rng.integers(0, 256, (13, 11, channels), dtype=np.uint8)
    path = tmp_path / name
    assert cv2.imwrite(str(path), pixels[:, :, 0] if channels == 1 else pixels)
    return str(path)


def expected_scores(files: dict[str, str], image: str, channels: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    """The output for ``image`` computed independently: cv2 read (unchanged) and conversion, bilinear resize
    to ``size`` (H, W), float32 minus the per-channel mean of the mean image, a caffe.Net forward at batch 1."""
    img = cv2.imread(image, cv2.IMREAD_UNCHANGED)
    if img.ndim == 2 and channels == 3:
        img = cv2.merge([img, img, img])
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3] if channels == 3 else cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    elif img.ndim == 3 and channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    h, w = size
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32).reshape(h, w, channels)
    mean_blob = caffe.proto.caffe_pb2.BlobProto()
    mean_blob.ParseFromString(Path(files["mean"]).read_bytes())
    mean = caffe.io.blobproto_to_array(mean_blob)[0].astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
    net = caffe.Net(files["model"], files["weights"], caffe.TEST)
    net.blobs["data"].reshape(1, channels, h, w)
    net.blobs["data"].data[...] = (img - mean).transpose(2, 0, 1)
    return net.forward()["prob"].reshape(-1).copy()


def expected_text(image: str, scores: np.ndarray, labels: list[str]) -> str:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: min(5, len(labels))]
    lines = "".join('%.4f - "%s"\n' % (scores[i], labels[i]) for i in order)
    return f"---------- Prediction for {image} ----------\n{lines}"


def run_tool(files: dict[str, str], image: str, capsys) -> tuple[int, str, str]:
    rc = main([files["model"], files["weights"], files["mean"], files["labels"], image])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("channels,kind", [(3, "bgr"), (1, "bgr"), (3, "gray"), (3, "bgra"), (1, "bgra"), (1, "gray"),
                                           (3, "gray16"), (1, "bgr16")])
def test_prints_caffe_top5(tmp_path, capsys, channels, kind):
    files = make_files(tmp_path, channels)
    image = write_image(tmp_path, kind)
    scores = expected_scores(files, image, channels)
    assert np.ptp(scores) > 0.01  # distinct scores: the printed order and values mean something
    rc, out, err = run_tool(files, image, capsys)
    assert rc == 0, err
    assert out == expected_text(image, scores, LABELS)
    assert len(out.splitlines()) == 6
    got = Classifier(files["model"], files["weights"], files["mean"], files["labels"]).predict(
        cv2.imread(image, cv2.IMREAD_UNCHANGED))
    np.testing.assert_allclose(got, scores, rtol=0, atol=1e-6)


def test_fewer_than_five_labels_and_label_lines(tmp_path, capsys):
    """N = min(5, #labels); a label keeps everything on its line but the newline (std::getline)."""
    labels = ["cat", 'dog "x"\r', "  bird  "]
    files = make_files(tmp_path, 3, classes=3, labels=labels)
    Path(files["labels"]).write_bytes(b"cat\ndog \"x\"\r\n  bird  ")  # no newline at the end
    image = write_image(tmp_path, "bgr", "img.jpg")
    rc, out, err = run_tool(files, image, capsys)
    assert rc == 0, err
    assert out == expected_text(image, expected_scores(files, image, 3), labels)
    assert out.count("\n") == 4 and "\"dog \"x\"\r\"\n" in out


def test_ties_keep_class_order():
    assert top_n(np.array([0.1, 0.3, 0.3, 0.0, 0.3, 0.2], np.float32), 5) == [1, 2, 4, 5, 0]


def test_wrong_argument_count_prints_usage(capsys):
    assert main(["a", "b", "c", "d"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("Usage: classification deploy.prototxt network.caffemodel mean.binaryproto labels.txt img.jpg\n")
    assert main(["a", "b", "c", "d", "e", "f"]) == 1


def test_wrong_label_count(tmp_path, capsys):
    files = make_files(tmp_path, 3, labels=LABELS[:6])
    rc, out, err = run_tool(files, write_image(tmp_path), capsys)
    assert rc == 1 and out == ""
    assert files["labels"] in err and "6 labels" in err and "'prob'" in err and "7 channels" in err
    assert "Number of labels is different from the output layer dimension" in err


def test_wrong_mean_channels(tmp_path, capsys):
    files = make_files(tmp_path, 3, mean_channels=1)
    rc, out, err = run_tool(files, write_image(tmp_path), capsys)
    assert rc == 1 and out == ""
    assert files["mean"] in err and "1 channels" in err and "input has 3" in err


def test_input_must_have_one_or_three_channels(tmp_path, capsys):
    files = make_files(tmp_path, 2)
    rc, out, err = run_tool(files, write_image(tmp_path), capsys)
    assert rc == 1 and out == ""
    assert files["model"] in err and "'data' has 2 channels" in err and "1 or 3 channels" in err


def test_missing_and_undecodable_image(tmp_path, capsys):
    files = make_files(tmp_path, 3)
    missing = str(tmp_path / "nope.jpg")
    rc, out, err = run_tool(files, missing, capsys)
    assert rc == 1
    assert out == f"---------- Prediction for {missing} ----------\n"  # printed before the read, as Caffe
    assert f"Unable to decode image {missing} (no such file)" in err
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    rc, out, err = run_tool(files, str(junk), capsys)
    assert rc == 1 and f"Unable to decode image {junk} (not an image" in err


def test_missing_files_are_named(tmp_path, capsys):
    files = make_files(tmp_path, 3)
    image = write_image(tmp_path)
    for role in ("model", "weights", "mean", "labels"):
        bad = dict(files, **{role: str(tmp_path / f"missing_{role}")})
        rc, out, err = run_tool(bad, image, capsys)
        assert rc == 1 and out == "", role
        assert f"missing_{role}" in err, (role, err)


def test_non_utf8_image_name(tmp_path, monkeypatch):
    """A file name that is not UTF-8 (as argv gives it: surrogateescape) is read and printed byte for byte."""
    files = make_files(tmp_path, 3)
    image = write_image(tmp_path)
    name = str(tmp_path / "caf\udce9.png")  # Latin-1 "café.png"
    Path(image).rename(name)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main([files["model"], files["weights"], files["mean"], files["labels"], name]) == 0
    out = stdout.buffer.getvalue()
    assert out.startswith(b"---------- Prediction for " + os.fsencode(tmp_path) + b"/caf\xe9.png ----------\n")
    assert out.count(b"\n") == 6


def test_cpu_unless_gpu_asked(monkeypatch):
    monkeypatch.delenv(classification.GPU_ENV, raising=False)
    assert classification.select_device(classification.GPU_ENV).type == "cpu"
    monkeypatch.setenv(classification.GPU_ENV, "-1")
    assert classification.select_device(classification.GPU_ENV).type == "cpu"
    monkeypatch.setenv(classification.GPU_ENV, "x")
    with pytest.raises(classification.ClassificationError, match="expected a CUDA device id"):
        classification.select_device(classification.GPU_ENV)
    monkeypatch.setenv(classification.GPU_ENV, "0")
    import torch

    assert classification.select_device(classification.GPU_ENV).type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
def test_gpu_matches_cpu(tmp_path, capsys, monkeypatch):
    files = make_files(tmp_path, 3)
    image = write_image(tmp_path)
    rc, cpu, _ = run_tool(files, image, capsys)
    monkeypatch.setenv(classification.GPU_ENV, "0")
    rc2, gpu, err = run_tool(files, image, capsys)
    assert rc == rc2 == 0, err
    # same labels in the same order; scores within a unit of the last printed decimal (float32 on both)
    rows = [[line.split(" - ", 1) for line in out.splitlines()[1:]] for out in (cpu, gpu)]
    assert [r[1] for r in rows[0]] == [r[1] for r in rows[1]] and cpu.splitlines()[0] == gpu.splitlines()[0]
    assert all(abs(float(a[0]) - float(b[0])) <= 1e-4 for a, b in zip(*rows))


def test_real_cifar10_quick_on_cat(tmp_path, capsys):
    """Real Caffe-trained CIFAR-10 quick weights (V1 prototxt and binary caffemodel), the real CIFAR-10 mean
    and BVLC's cat.jpg: the tool's output equals the independent computation."""
    v1 = shared_path("realdata", "cifar10_quick_v1_2014")
    files = {"model": str(v1 / "cifar10_quick.prototxt"), "weights": str(v1 / "cifar10_quick_iter_5000.caffemodel"),
             "mean": str(shared_path("realdata", "cifar10_hdf5_2015", "mean.binaryproto"))}
    labels = "airplane automobile bird cat deer dog frog horse ship truck".split()
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    files["labels"] = str(tmp_path / "labels.txt")
    image = str(shared_path("realdata", "zoo_public_2026", "cat.jpg"))
    img = cv2.imread(image, cv2.IMREAD_UNCHANGED)
    assert img.shape == (360, 480, 3)  # resized to the net's 32 x 32
    rc, out, err = run_tool(files, image, capsys)
    assert rc == 0, err
    scores = expected_scores(files, image, 3, (32, 32))
    assert out == expected_text(image, scores, labels)

