"""Decompose, then fine-tune: ``lowrank``'s prototxt + weights train on as any net (caffe.SGDSolver with
``net.copy_from``, and ``caffe train --weights``), with the fork's nn_decomposer flags; the fork's AlexNet
``--rank_config`` (config_iccv.json) decomposes AlexNet's grouped conv4/conv5."""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from neocaffe.io.prototxt import read_net
from neocaffe.io.weights import LayerWeights, load_weights, save_weights
from neocaffe.tools import convert_mnist_data, lowrank
from tests.conftest import REPO, shared_path

NET = """
name: "tinylenet"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 32 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "test_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 8 kernel_size: 5 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 16 kernel_size: 5 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""
SOLVER = """net: "{net}"
test_iter: 3
test_interval: 100000
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 5
max_iter: {iters}
snapshot_prefix: "{prefix}"
random_seed: 1701
solver_mode: CPU
"""


def _idx(path: Path, n: int) -> bytes:
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    item = int(np.prod([int.from_bytes(raw[8 + 4 * i:12 + 4 * i], "big") for i in range(ndim - 1)] or [1]))
    head = bytearray(raw[:4 + 4 * ndim])
    head[4:8] = n.to_bytes(4, "big")
    return bytes(head) + raw[4 + 4 * ndim:4 + 4 * ndim + n * item]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LeNet trained 80 iterations on 1,024 real MNIST images (its folder, solver text, weights)."""
    caffe = pytest.importorskip("caffe")
    mnist = shared_path("realdata", "mnist_idx_pypi")
    root = tmp_path_factory.mktemp("lowrank_ft")
    for split, prefix, n in (("train", "train", 1024), ("test", "t10k", 300)):
        (root / f"{split}-images").write_bytes(_idx(mnist / f"{prefix}-images.idx3-ubyte.gz", n))
        (root / f"{split}-labels").write_bytes(_idx(mnist / f"{prefix}-labels.idx1-ubyte.gz", n))
        assert convert_mnist_data.main([str(root / f"{split}-images"), str(root / f"{split}-labels"),
                                        str(root / f"{split}_lmdb")]) == 0
    (root / "net.prototxt").write_text(NET)
    (root / "solver.prototxt").write_text(SOLVER.format(net="net.prototxt", iters=80, prefix="base"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        caffe.SGDSolver("solver.prototxt").solve()
    return root


def _test_loss(caffe, root: Path, net: str, weights: str) -> float:
    n = caffe.Net(str(root / net), str(root / weights), caffe.TEST)
    return float(np.mean([float(n.forward()["loss"]) for _ in range(3)]))


@pytest.mark.parametrize("flags", [["--rank_config", "cfg.json", "--lra_type", "pca"],
                                   ["--ranks", "3,2", "--lra_type", "svd", "--except_layers", "none.json"],
                                   ["--rank_config", "cfg.json", "--lra_type", "kmeans"]])
def test_decomposed_net_fine_tunes_with_sgd_solver(trained, flags, monkeypatch):
    caffe = pytest.importorskip("caffe")
    if "kmeans" in flags:
        pytest.importorskip("sklearn")
    monkeypatch.chdir(trained)
    Path("cfg.json").write_text(json.dumps({"conv2": 2}))
    Path("none.json").write_text(json.dumps(["ip1"]))
    assert lowrank.main(["--prototxt", "net.prototxt", "--caffemodel", "base_iter_80.caffemodel"] + flags) == 0
    names = [lp.name for lp in read_net("net.prototxt.lowrank.prototxt").layer]
    assert "conv2_lowrank" in names and "conv2_linear" in names and ("conv1_lowrank" in names) == ("--ranks" in flags)
    before = _test_loss(caffe, trained, "net.prototxt.lowrank.prototxt", "base_iter_80.caffemodel.lowrank.caffemodel.h5")
    Path("ft.prototxt").write_text(SOLVER.format(net="net.prototxt.lowrank.prototxt", iters=30, prefix="ft"))
    solver = caffe.SGDSolver("ft.prototxt")
    solver.net.copy_from("base_iter_80.caffemodel.lowrank.caffemodel.h5")
    loaded = load_weights("base_iter_80.caffemodel.lowrank.caffemodel.h5")
    for lw in loaded:  # fine-tuning starts from the decomposed weights, not from the fillers
        np.testing.assert_array_equal(solver.net.params[lw.name][0].data, lw.blobs[0])
    assert solver.net.params["conv2_lowrank"][0].data.shape[0] == 2
    losses = []
    for _ in range(30):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.all(np.isfinite(losses))
    solver.snapshot()
    after = _test_loss(caffe, trained, "net.prototxt.lowrank.prototxt", "ft_iter_30.caffemodel")
    assert np.isfinite(before) and after < before, (before, after, losses)


def test_caffe_train_weights_fine_tunes_the_decomposed_net(trained, monkeypatch, capfd):
    from neocaffe.cli import caffe as caffe_cli

    caffe = pytest.importorskip("caffe")
    monkeypatch.chdir(trained)
    assert lowrank.main(["--prototxt", "net.prototxt", "--caffemodel", "base_iter_80.caffemodel",
                         "--rankratio", "0.8", "--output_prototxt", "r.prototxt",
                         "--output_caffemodel", "r.caffemodel.h5"]) == 0
    before = _test_loss(caffe, trained, "r.prototxt", "r.caffemodel.h5")
    Path("cli.prototxt").write_text(SOLVER.format(net="r.prototxt", iters=30, prefix="cli"))
    assert caffe_cli.main(["train", "--solver=cli.prototxt", "--weights=r.caffemodel.h5"]) == 0
    err = capfd.readouterr().err
    losses = [float(v) for v in re.findall(r"Iteration \d+, loss = ([-\d.e+naif]+)", err)]
    assert len(losses) >= 6 and np.all(np.isfinite(losses))
    assert losses[0] < 1.5, losses  # starts from the decomposed weights (the fillers give ~2.3)
    after = _test_loss(caffe, trained, "r.prototxt", "cli_iter_30.caffemodel")
    assert after < before, (before, after, losses)


def test_forks_alexnet_rank_config_decomposes_grouped_layers(tmp_path):
    """models/bvlc_alexnet/config_iccv.json ({conv3: 150, conv4: 160, conv5: 120}) on AlexNet: conv4/conv5
    (group 2) get 80 and 60 basis filters per group; the decomposed deploy net builds and loads them."""
    caffe = pytest.importorskip("caffe")
    models = REPO / "models" / "bvlc_alexnet"
    cfg = json.loads((models / "config_iccv.json").read_text())
    assert cfg == {"conv3": 150, "conv4": 160, "conv5": 120}
    net = read_net(str(models / "deploy.prototxt"))
    rng = np.random.default_rng(0)
    shapes = {"conv3": (384, 256, 3, 3), "conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3)}
    weights = [LayerWeights(n, "Convolution", [rng.standard_normal(s).astype(np.float32),
                                               rng.standard_normal(s[0]).astype(np.float32)])
               for n, s in shapes.items()]
    save_weights(tmp_path / "a.caffemodel", weights)
    assert lowrank.main(["--prototxt", str(models / "deploy.prototxt"), "--caffemodel", str(tmp_path / "a.caffemodel"),
                         "--rank_config", str(models / "config_iccv.json"),
                         "--output_prototxt", str(tmp_path / "d.prototxt")]) == 0
    out = {lp.name: lp for lp in read_net(str(tmp_path / "d.prototxt")).layer}
    assert {n: out[n + "_lowrank"].convolution_param.num_output for n in shapes} == cfg
    assert out["conv4_linear"].convolution_param.group == 2 and out["conv4_linear"].convolution_param.num_output == 384
    d = caffe.Net(str(tmp_path / "d.prototxt"), str(tmp_path / "a.caffemodel.lowrank.caffemodel.h5"), caffe.TEST)
    assert d.params["conv4_lowrank"][0].data.shape == (160, 192, 3, 3)
    assert d.params["conv4_linear"][0].data.shape == (384, 80, 1, 1)
    assert d.params["conv5_linear"][0].data.shape == (256, 60, 1, 1)
    assert net.layer[0].name == "data"
