"""``classify`` (BVLC's python/classify.py as a command) against ``caffe.Classifier`` run by hand:
the digits LeNet of the README and an AlexNet-shaped net, from a folder, a list and one file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe
from caffe.classify import load_mean, main, top_k
from tests.conftest import REPO
from tests.pycaffe.nets import alexnet_shaped_files

DIGITS_DEPLOY = REPO / "examples" / "digits" / "lenet_deploy.prototxt"


def _digits_weights(folder: Path) -> str:
    """The digits deploy net with seeded random weights (training it takes minutes)."""
    net = caffe.Net(str(DIGITS_DEPLOY), caffe.TEST)
    rng = np.random.default_rng(3)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = rng.normal(0, 0.1, b.data.shape)
    path = folder / "digits.caffemodel"
    net.save(str(path))
    return str(path)


def _digit_images(folder: Path, n: int = 7) -> list[str]:
    from sklearn.datasets import load_digits

    folder.mkdir()
    images = np.clip(np.round(load_digits().images[:n] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    paths = []
    for i, img in enumerate(images):
        paths.append(str(folder / f"digit_{i}.png"))
        cv2.imwrite(paths[-1], img)
    return paths


def test_digits_folder_center_only_equals_classifier(tmp_path, capsys):
    weights = _digits_weights(tmp_path)
    paths = _digit_images(tmp_path / "images")
    out = tmp_path / "out.npy"
    labels = tmp_path / "digits.txt"
    labels.write_text("".join(f"digit {d}\n" for d in range(10)))
    flags = ["--model_def", str(DIGITS_DEPLOY), "--pretrained_model", weights, "--images_dim", "28,28",
             "--mean_file", "", "--raw_scale", "255", "--input_scale", "0.00390625", "--ext", "png"]
    assert main([str(tmp_path / "images"), str(out), "--center_only", "--labels", str(labels), "--top", "3"] + flags) == 0
    got = np.load(out)

    clf = caffe.Classifier(str(DIGITS_DEPLOY), weights, image_dims=(28, 28), raw_scale=255, input_scale=0.00390625)
    want = clf.predict([caffe.io.load_image(p, color=False) for p in paths], oversample=False)
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert len(set(np.argmax(want, 1))) > 1, "random weights should not give one class for every digit"

    text = capsys.readouterr().out
    assert "Classifying 7 inputs." in text and f"Saving results into {out}" in text
    for path, probs in zip(paths, want):  # each input, then its top 3 classes with their probabilities
        block = text.split(path + "\n", 1)[1].splitlines()[:3]
        assert block == [f"  {probs[i]:.5f}  digit {i}" for i in top_k(probs, 3)]

    # BVLC's --print_results: the first input's top 5 as (name, probability) pairs
    assert main([paths[0], str(out), "--center_only", "--print_results", "--labels_file", str(labels)] + flags) == 0
    printed = capsys.readouterr().out
    assert str([(str(i), f"{want[0][i]:.5f}") for i in top_k(want[0], 5)]) in printed

    # a convert_imageset list (path label, relative to the list's folder) gives the same rows, ten crops too
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"images/{Path(p).name} {i % 10}\n" for i, p in enumerate(paths[:3])))
    assert main([str(lst), str(out)] + flags) == 0
    want10 = clf.predict([caffe.io.load_image(p, color=False) for p in paths[:3]], oversample=True)
    np.testing.assert_allclose(np.load(out), want10, rtol=1e-6, atol=1e-7)
    assert not np.allclose(want10, want[:3], atol=1e-4)  # the ten-crop average is another number


def test_alexnet_shaped_ten_crops_equals_classifier(tmp_path):
    model, weights = alexnet_shaped_files(tmp_path, classes=20, batch=10)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(300, 260), (256, 256)]):
        paths.append(str(tmp_path / f"im{i}.jpg"))
        cv2.imwrite(paths[-1], rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    mean = (rng.uniform(90, 130, (3, 256, 256))).astype(np.float32)
    np.save(tmp_path / "mean.npy", mean)
    out = tmp_path / "out.npy"
    for center_only in (False, True):
        argv = [paths[0], str(out), "--model_def", model, "--pretrained_model", weights,
                "--mean_file", str(tmp_path / "mean.npy")] + (["--center_only"] if center_only else [])
        assert main(argv) == 0
        clf = caffe.Classifier(model, weights, image_dims=(256, 256), mean=mean.mean(1).mean(1),
                               raw_scale=255.0, channel_swap=(2, 1, 0))
        want = clf.predict([caffe.io.load_image(paths[0])], oversample=not center_only)
        got = np.load(out)
        assert got.shape == (1, 20)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)


def test_mean_file_forms(tmp_path):
    mean = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    np.save(tmp_path / "m.npy", mean)
    blob = caffe.io.array_to_blobproto(mean[None])
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    np.testing.assert_allclose(load_mean(str(tmp_path / "m.npy")), mean.mean(1).mean(1))
    np.testing.assert_allclose(load_mean(str(tmp_path / "m.binaryproto")), mean.mean(1).mean(1))
    with pytest.raises(SystemExit, match="not found"):
        load_mean(str(tmp_path / "nope.npy"))


def test_python_classify_script_runs_it(tmp_path):
    """``python python/classify.py`` (Caffe's path) gives what ``classify`` gives."""
    import subprocess
    import sys

    model, weights = alexnet_shaped_files(tmp_path, classes=5, batch=10)
    image = str(tmp_path / "im.png")
    cv2.imwrite(image, np.random.default_rng(1).integers(0, 256, (240, 250, 3), dtype=np.uint8))
    flags = ["--model_def", model, "--pretrained_model", weights, "--mean_file", "", "--center_only"]
    run = subprocess.run([sys.executable, str(REPO / "python" / "classify.py"), image, str(tmp_path / "a.npy")] + flags,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "CPU mode" in run.stdout and "Classifying 1 inputs." in run.stdout
    assert main([image, str(tmp_path / "b.npy")] + flags) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
