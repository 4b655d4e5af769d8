"""ssd_detect (SSD's examples/ssd/ssd_detect.cpp): the printed detections of images and video frames equal
an independent computation (cv2 preprocessing, a caffe.Net forward, the fork's line format)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import caffe
from neocaffe.data.examples import write_video
from neocaffe.tools import ssd_detect
from tests.conftest import REPO

NET = """name: "tiny_ssd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "feat" type: "Convolution" bottom: "data" top: "feat"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "loc" type: "Convolution" bottom: "feat" top: "loc"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "feat" top: "conf"
  convolution_param { num_output: 6 kernel_size: 1 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "conf_r" type: "Reshape" bottom: "conf_flat" top: "conf_r" reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_sm" type: "Softmax" bottom: "conf_r" top: "conf_sm" softmax_param { axis: 2 } }
layer { name: "conf_out" type: "Flatten" bottom: "conf_sm" top: "conf_out" }
layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "data" top: "prior"
  prior_box_param { min_size: 4 max_size: 7 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_out" bottom: "prior" top: "det"
  detection_output_param { num_classes: 3 background_label_id: 0 keep_top_k: 20
    nms_param { nms_threshold: 0.9 } confidence_threshold: 0.001 } }
"""


@pytest.fixture
def model(tmp_path) -> tuple[str, str]:
    path = tmp_path / "deploy.prototxt"
    path.write_text(NET)
    caffe.set_random_seed(5)
    weights = tmp_path / "tiny.caffemodel"
    caffe.Net(str(path), caffe.TEST).save(str(weights))
    return str(path), str(weights)


def _expected(model: tuple[str, str], img: np.ndarray, name: str, threshold: float,
              mean=(104.0, 117.0, 123.0)) -> list[str]:
    net = caffe.Net(model[0], model[1], caffe.TEST)
    x = cv2.resize(img, (8, 8), interpolation=cv2.INTER_LINEAR).astype(np.float32) - np.float32(mean)
    rows = net.forward(data=x.transpose(2, 0, 1)[None])["det"].reshape(-1, 7).astype(np.float32)
    h, w = img.shape[:2]
    out = []
    for d in rows:
        if d[0] == -1 or d[2] < np.float32(threshold):
            continue
        box = (np.trunc(d[3] * np.float32(w)), np.trunc(d[4] * np.float32(h)),
               np.trunc(d[5] * np.float32(w)), np.trunc(d[6] * np.float32(h)))
        out.append(f"{name} {int(d[1])} {float(d[2]):g} " + " ".join(str(int(v)) for v in box))
    return out


def test_images(tmp_path, model, capsys):
    rng = np.random.default_rng(2)
    names = []
    for i, (h, w) in enumerate([(20, 30), (15, 11)]):
        p = tmp_path / f"im{i}.png"
        assert cv2.imwrite(str(p), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        names.append(str(p))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")
    assert ssd_detect.main([*model, str(tmp_path / "list.txt"), "--confidence_threshold", "0.5"]) == 0
    got = capsys.readouterr().out.splitlines()
    want = [line for n in names for line in _expected(model, cv2.imread(n), n, 0.5)]
    assert got == want and len(got) >= 2
    # --out_file, and a threshold keeping more
    out = tmp_path / "dets.txt"
    assert ssd_detect.main([*model, str(tmp_path / "list.txt"), f"--out_file={out}", "--confidence_threshold=0"]) == 0
    lines = out.read_text().splitlines()
    assert lines == [line for n in names for line in _expected(model, cv2.imread(n), n, 0.0)] and len(lines) > len(got)


def test_video_frames(tmp_path, model, capsys):
    frames = np.random.default_rng(8).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    video = str(tmp_path / "clip.avi")
    write_video(video, frames)
    (tmp_path / "list.txt").write_text(video + "\n")
    assert ssd_detect.main([*model, str(tmp_path / "list.txt"), "--file_type=video", "--mean_value=100"]) == 0
    captured = capsys.readouterr()
    cap, read = cv2.VideoCapture(video), []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        read.append(img)
    want = [line for k, img in enumerate(read)
            for line in _expected(model, img, f"{video}_{k:06d}", 0.01, mean=(100.0, 100.0, 100.0))]
    assert len(read) == 5 and captured.out.splitlines() == want and want
    assert f"Process 5 frames from {video}" in captured.err


def test_errors(tmp_path, model, capsys):
    (tmp_path / "list.txt").write_text(str(tmp_path / "ghost.png") + "\n")
    assert ssd_detect.main([*model, str(tmp_path / "list.txt")]) == 1
    assert f"Unable to decode image {tmp_path / 'ghost.png'}" in capsys.readouterr().err
    assert ssd_detect.main([*model, str(tmp_path / "list.txt"), "--mean_file", "m.binaryproto"]) == 1
    assert "Cannot specify mean_file and mean_value at the same time" in capsys.readouterr().err
    assert ssd_detect.main([*model, str(tmp_path / "list.txt"), "--mean_value", "1,2"]) == 1
    assert "Specify either 1 mean_value or as many as channels: 3" in capsys.readouterr().err
    assert ssd_detect.main([*model, str(tmp_path / "list.txt"), "--file_type", "audio"]) == 1
    assert "Unknown file_type: audio" in capsys.readouterr().err
    assert ssd_detect.main([model[0]]) == 1                                          # usage
    assert "ssd_detect [FLAGS] model_file weights_file list_file" in capsys.readouterr().err


def test_built_path(tmp_path, model):
    import subprocess
    import sys

    img = tmp_path / "a.png"
    assert cv2.imwrite(str(img), np.full((9, 9, 3), 90, np.uint8))
    (tmp_path / "list.txt").write_text(f"{img}\n")
    run = subprocess.run([str(REPO / "build" / "examples" / "ssd" / "ssd_detect.bin"), *model, str(tmp_path / "list.txt"),
                          "--confidence_threshold", "0"], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == _expected(model, cv2.imread(str(img)), str(img), 0.0)
    assert Path(REPO / "build" / "examples" / "ssd" / "ssd_detect").is_symlink()
