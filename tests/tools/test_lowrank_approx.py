"""lowrank_approx (the fork's python/lowrank_approx.py: Tai et al.'s vertical/horizontal split), netsolver and
mixed_decomposer_tuner: the split net computes the original at full rank, the truncated one is the SVD's
best approximation, and the fork's mixed recipe runs end to end through its script path."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net, read_solver
from neocaffe.io.weights import LayerWeights, load_weights, save_weights
from neocaffe.layers.base import TEST
from neocaffe.tools import lowrank_approx
from neocaffe.tools.lowrank import LowRankError
from tests.conftest import REPO
from tests.tools.test_lowrank_netsolver import TRAIN_NET

NET = """name: "vh"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: {group} } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 2 kernel_size: 1 } }
"""


def _files(tmp_path: Path, group: int, rank: int) -> tuple[Path, Path, Path, list[LayerWeights]]:
    rng = np.random.default_rng(group)
    net = tmp_path / f"net{group}.prototxt"
    net.write_text(NET.replace("{group}", str(group)))
    layers = [LayerWeights("conv1", "Convolution", [rng.standard_normal((6, 4 // group, 3, 3)).astype(np.float32),
                                                    rng.standard_normal(6).astype(np.float32)]),
              LayerWeights("conv2", "Convolution", [rng.standard_normal((2, 6, 1, 1)).astype(np.float32),
                                                    rng.standard_normal(2).astype(np.float32)])]
    weights = tmp_path / f"w{group}.caffemodel.h5"
    save_weights(weights, layers)
    config = tmp_path / f"c{group}.json"
    config.write_text(json.dumps({"conv1": rank}))
    return net, weights, config, layers


def _forward(net_path: str, weights: str, x: torch.Tensor) -> np.ndarray:
    net = Net(read_net(net_path), TEST)
    net.copy_from(weights)
    with torch.no_grad():
        net.forward({"data": x})
    return net.blob("conv2").numpy().copy()


@pytest.mark.parametrize("group,rank", [(1, 12), (2, 12)])
def test_full_rank_split_computes_the_original(tmp_path, group, rank):
    """Full rank per group: min(C_g*D, D*N_g) = 12 (group 1: C*D = 12), 6 per group (group 2)."""
    net, weights, config, _ = _files(tmp_path, group, rank)
    assert lowrank_approx.main(["--model", str(net), "--config", str(config), "--weights", str(weights)]) == 0
    out_net = tmp_path / f"net{group}_lowrank.prototxt"
    out_weights = tmp_path / f"w{group}.caffemodel_lowrank.h5"                 # the fork's names
    layers = {lp.name: lp for lp in read_net(str(out_net)).layer}
    v, h = layers["conv1_v"].convolution_param, layers["conv1_h"].convolution_param
    assert (v.kernel_h, v.kernel_w, v.pad_h, v.pad_w, v.stride_h, v.stride_w, v.num_output) == (3, 1, 1, 0, 2, 1, rank)
    assert (h.kernel_h, h.kernel_w, h.pad_h, h.pad_w, h.stride_h, h.stride_w, h.num_output) == (1, 3, 0, 1, 1, 2, 6)
    assert v.group == h.group == group and "conv1" not in layers
    assert layers["conv1_v"].param[1].lr_mult == 0 and list(layers["conv1_h"].bottom) == ["conv1_v"]
    assert list(layers["conv1_h"].top) == ["conv1"]
    x = torch.from_numpy(np.random.default_rng(9).standard_normal((2, 4, 9, 9)).astype(np.float32))
    want = _forward(str(net), str(weights), x)
    got = _forward(str(out_net), str(out_weights), x)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
    stored = {lw.name: lw for lw in load_weights(out_weights)}
    assert not stored["conv1_v"].blobs[1].any()                                    # zero, frozen bias


def test_truncation_is_the_svd_best_approximation():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    m = w.astype(np.float64).transpose(1, 2, 3, 0).reshape(9, 15)
    s = np.linalg.svd(m, compute_uv=False)
    for k in (1, 4, 9):
        v, h = lowrank_approx.vh_weights(w, k)
        assert v.shape == (k, 3, 3, 1) and h.shape == (5, k, 1, 3)
        back = np.einsum("kcy,nkx->ncyx", v[..., 0].astype(np.float64), h[:, :, 0].astype(np.float64))
        assert np.linalg.norm(back - w) == pytest.approx(np.sqrt((s[k:] ** 2).sum()), rel=1e-4, abs=1e-4)


def test_errors_name_the_layer(tmp_path):
    net, weights, config, _ = _files(tmp_path, 2, 3)
    with pytest.raises(LowRankError, match="layer 'conv1': rank 3 must be a positive multiple of the group"):
        lowrank_approx.run(str(net), str(config), str(weights))
    config.write_text(json.dumps({"conv9": 2}))
    with pytest.raises(LowRankError, match="'conv9', which is not a Convolution of the net"):
        lowrank_approx.run(str(net), str(config), str(weights))
    rect = tmp_path / "rect.prototxt"
    rect.write_text(NET.replace("{group}", "1").replace("kernel_size: 3 pad", "kernel_h: 3 kernel_w: 1 pad"))
    config.write_text(json.dumps({"conv1": 2}))
    with pytest.raises(LowRankError, match="needs one square kernel_size"):
        lowrank_approx.run(str(rect), str(config))
    config.write_text(json.dumps({"conv1": 13}))
    with pytest.raises(LowRankError, match="rank 13 exceeds"):
        lowrank_approx.run(str(_files(tmp_path, 1, 13)[0]), str(config), str(_files(tmp_path, 1, 13)[1]))


def test_mixed_decomposer_tuner_through_the_script_path(tmp_path):
    """The fork's ft_mixed recipe on a small LMDB net: conv1 split into 3 vertical + 8 horizontal filters,
    conv1_h then decomposed to 4 basis filters, and the result trained 10 iterations on the CPU."""
    from neocaffe.data.db_writer import DBWriter
    from neocaffe.proto import caffe_pb2

    rng = np.random.default_rng(5)
    db = tmp_path / "db"
    with DBWriter(str(db), "lmdb") as w:
        for i in range(24):
            img = rng.integers(0, 255, (1, 6, 6), dtype=np.uint8)
            w.put(f"{i:08d}", caffe_pb2.Datum(channels=1, height=6, width=6, data=img.tobytes(), label=i % 3)
                  .SerializeToString())
    net = tmp_path / "train.prototxt"
    net.write_text(TRAIN_NET.replace("{db}", str(db)))
    weights = tmp_path / "w.caffemodel.h5"
    save_weights(weights, [LayerWeights("conv1", "Convolution", [rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
                                                                 np.zeros(8, np.float32)]),
                           LayerWeights("ip1", "InnerProduct", [rng.standard_normal((3, 128)).astype(np.float32) * 0.05,
                                                                np.zeros(3, np.float32)])])
    (tmp_path / "iclr.json").write_text('{"conv1": 3}')
    (tmp_path / "cvpr.json").write_text('{"conv1_h": 4}')
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    solver = run_dir / "solver.prototxt"
    solver.write_text(f'net: "{net}"\ntest_iter: 1\ntest_interval: 5\nbase_lr: 0.001\nlr_policy: "fixed"\n'
                      f'display: 5\nmax_iter: 10\nsnapshot_prefix: "{run_dir}/mixed"\nsolver_mode: CPU\n')
    run = subprocess.run([sys.executable, "python/mixed_decomposer_tuner.py", f"--solver={solver}", "--model", str(net),
                          f"--weights={weights}", "--rank_config1", str(tmp_path / "iclr.json"), "--rank_config2",
                          str(tmp_path / "cvpr.json"), "--device", "-1", "--path", str(run_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    final = f"{run_dir}/lowrank_net.prototxt.lowrank.prototxt"
    assert read_solver(str(solver)).net == final                                  # rewritten in place
    names = [lp.name for lp in read_net(final).layer if lp.type == "Convolution"]
    assert names == ["conv1_v", "conv1_h_lowrank", "conv1_h_linear"]
    assert (run_dir / "mixed_iter_10.caffemodel").exists() and "Optimization Done." in run.stderr
