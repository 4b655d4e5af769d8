"""caffe_eval (centre crop and 10-crop top-1/top-5) against the same crops cut and scored in NumPy
through pycaffe's Net, on a small list and on the same images as a class-folder tree."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe
from neocaffe.tools.caffe_eval import main, topk_correct
from tests.pycaffe.nets import alexnet_shaped_files

CLASSES = 20


def _images(folder: Path, n: int = 6) -> list[Path]:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(200, 320)), int(rng.integers(200, 320))
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)  # blocky, so crops differ
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_NEAREST)
        paths.append(folder / f"img_{i}.png")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def _reference(model: str, weights: str, paths, size, mean, scale, blob="prob"):
    """Centre and 10-crop probabilities in NumPy: read + resize as convert_imageset, subtract the mean at
    each pixel, scale, cut the four corners and the centre ((H - 227) // 2), mirror them, run pycaffe."""
    net = caffe.Net(model, weights, caffe.TEST)
    c = 227
    h, w = size
    origins = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c) // 2, (w - c) // 2)]
    centre, ten = [], []
    for p in paths:
        img = cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (w, h), interpolation=cv2.INTER_LINEAR)
        x = (img.transpose(2, 0, 1).astype(np.float32) - mean) * np.float32(scale)
        crops = [x[:, y:y + c, l:l + c] for y, l in origins]
        crops += [cr[:, :, ::-1] for cr in crops]
        net.blobs["data"].data[...] = np.stack(crops)
        out = net.forward()
        scores = net.blobs[blob].data.copy() if blob != "prob" else out["prob"].copy()
        if blob != "prob":
            e = np.exp(scores - scores.max(1, keepdims=True))
            scores = e / e.sum(1, keepdims=True)
        centre.append(scores[4])
        ten.append(scores.mean(0))
    return np.array(centre), np.array(ten)


def _topk(p: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float(np.mean([lab in np.argsort(-row)[:k] for row, lab in zip(p, labels)]))


def test_list_and_tree_equal_numpy_crops(tmp_path):
    model, weights = alexnet_shaped_files(tmp_path, classes=CLASSES, batch=10)
    paths = _images(tmp_path / "img")
    rng = np.random.default_rng(7)
    mean = rng.uniform(80, 140, (3, 256, 256)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(caffe.io.array_to_blobproto(mean[None]).SerializeToString())
    ref_c, ref_t = _reference(model, weights, paths, (256, 256), mean, 1.0)
    # labels: the centre crop's best class for half the images, another class for the rest
    labels = np.array([int(np.argmax(r)) if i % 2 == 0 else int(np.argsort(-r)[3 + i % 4]) for i, r in enumerate(ref_c)])
    (tmp_path / "val.txt").write_text("".join(f"{p.name} {lab}\n" for p, lab in zip(paths, labels)))

    out = tmp_path / "res.npz"
    res_json = tmp_path / "acc.json"
    assert main(["-model", model, "-weights", weights, "-root_folder", f"{tmp_path / 'img'}/",
                 "-mean_file", str(tmp_path / "mean.binaryproto"), "-batch_size", "20", "-output", str(out),
                 "-json", str(res_json), str(tmp_path / "val.txt")]) == 0
    got = np.load(out)
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_allclose(got["centre"], ref_c, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["ten_crop"], ref_t, rtol=1e-5, atol=1e-7)
    assert not np.allclose(ref_c, ref_t, atol=1e-4)
    acc = json.loads(res_json.read_text())
    assert acc == {"images": 6, "top1_centre": _topk(ref_c, labels, 1), "top5_centre": _topk(ref_c, labels, 5),
                   "top1_10crop": _topk(ref_t, labels, 1), "top5_10crop": _topk(ref_t, labels, 5)}
    assert acc["top1_centre"] == 0.5 and 0.5 <= acc["top5_centre"] < 1.0

    # the same images as an ILSVRC-style class-folder tree (classes = sorted sub-folders)
    tree = tmp_path / "tree"
    names = [f"n{k:08d}" for k in range(CLASSES)]
    for p, lab in zip(paths, labels):
        (tree / names[lab]).mkdir(parents=True, exist_ok=True)
        (tree / names[lab] / p.name).write_bytes(p.read_bytes())
    for k in range(CLASSES):
        (tree / names[k]).mkdir(parents=True, exist_ok=True)
    assert main(["-model", model, "-weights", weights, "-mean_file", str(tmp_path / "mean.binaryproto"),
                 "-json", str(res_json), str(tree)]) == 0
    assert json.loads(res_json.read_text()) == acc


def test_mean_values_scale_logits_and_partial_batches(tmp_path):
    model, weights = alexnet_shaped_files(tmp_path, classes=CLASSES, batch=10)
    paths = _images(tmp_path / "img", n=5)
    labels = np.arange(5) * 3
    (tmp_path / "val.txt").write_text("".join(f"{p} {lab}\n" for p, lab in zip(paths, labels)))
    mv = np.array([100, 110, 120], np.float32)[:, None, None]
    ref_c, ref_t = _reference(model, weights, paths, (240, 250), mv, 0.5, blob="fc8")
    out = tmp_path / "res.npz"
    assert main(["-model", model, "-weights", weights, "-mean_value", "100,110,120", "-scale", "0.5",
                 "-resize", "240,250", "-blob", "fc8", "-batch_size", "30", "-threads", "2",
                 "-output", str(out), str(tmp_path / "val.txt")]) == 0
    got = np.load(out)
    np.testing.assert_allclose(got["centre"], ref_c, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["ten_crop"], ref_t, rtol=1e-5, atol=1e-7)


def test_topk_counts_ties_as_caffes_accuracy_layer():
    scores = np.array([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    np.testing.assert_array_equal(topk_correct(scores, np.array([0, 2, 0]), 1), [False, True, False])
    np.testing.assert_array_equal(topk_correct(scores, np.array([0, 0, 0]), 2), [True, False, False])


def test_errors_name_the_problem(tmp_path, caplog):
    model, weights = alexnet_shaped_files(tmp_path, classes=CLASSES, batch=10)
    (tmp_path / "val.txt").write_text("missing.png 1\n")
    assert main(["-model", model, "-weights", weights, str(tmp_path / "val.txt")]) == 1
    assert "could not read image 'missing.png'" in caplog.text
    assert main(["-model", model, "-weights", weights, "-resize", "200", str(tmp_path / "val.txt")]) == 1
    assert "input is 227x227 but images are resized to 200x200" in caplog.text


@pytest.mark.gpu
def test_gpu_equals_cpu(tmp_path):
    model, weights = alexnet_shaped_files(tmp_path, classes=CLASSES, batch=10)
    paths = _images(tmp_path / "img", n=3)
    (tmp_path / "val.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(paths)))
    mean = np.random.default_rng(2).uniform(80, 140, (3, 256, 256)).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(caffe.io.array_to_blobproto(mean[None]).SerializeToString())
    results = []
    for gpu in ("-1", "0"):
        out = tmp_path / f"res{gpu}.npz"
        assert main(["-model", model, "-weights", weights, "-mean_file", str(tmp_path / "mean.binaryproto"),
                     "-gpu", gpu, "-output", str(out), str(tmp_path / "val.txt")]) == 0
        results.append(np.load(out))
    for key in ("centre", "ten_crop"):
        np.testing.assert_allclose(results[1][key], results[0][key], rtol=1e-4, atol=1e-6)
