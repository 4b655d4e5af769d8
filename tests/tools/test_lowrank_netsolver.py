"""lowrank_netsolver (the fork's python/lowrank_netsolver.py): ranks checked every test_interval, the net
rebuilt with lower ranks computing what it did, the rest of the run continued from the written files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neocaffe.data.db_writer import DBWriter
from neocaffe.io.prototxt import read_net, read_solver
from neocaffe.io.weights import LayerWeights, load_weights, save_weights
from neocaffe.proto import caffe_pb2
from neocaffe.tools import lowrank, lowrank_netsolver
from neocaffe.tools.lowrank import LowRankError
from tests.conftest import REPO

PAIR_NET = """name: "pair"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1_lowrank" type: "Convolution" bottom: "data" top: "conv1_lowrank"
  convolution_param { num_output: 6 kernel_size: 3 bias_term: false } }
layer { name: "conv1_linear" type: "Convolution" bottom: "conv1_lowrank" top: "conv1"
  convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "ip1_lowrank" type: "InnerProduct" bottom: "conv1" top: "ip1_lowrank"
  inner_product_param { num_output: 4 bias_term: false } }
layer { name: "ip1_linear" type: "InnerProduct" bottom: "ip1_lowrank" top: "ip1" inner_product_param { num_output: 3 } }
"""


def _params(rng, conv_rank: int, fc_rank: int) -> dict[str, list[np.ndarray]]:
    """Weights whose _lowrank layers have exactly the given ranks."""
    conv = (rng.standard_normal((6, conv_rank)) @ rng.standard_normal((conv_rank, 27))).reshape(6, 3, 3, 3)
    fc = rng.standard_normal((4, fc_rank)) @ rng.standard_normal((fc_rank, 80))
    return {"conv1_lowrank": [conv.astype(np.float32)],
            "conv1_linear": [rng.standard_normal((5, 6, 1, 1)).astype(np.float32), rng.standard_normal(5).astype(np.float32)],
            "ip1_lowrank": [fc.astype(np.float32)],
            "ip1_linear": [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]}


def _product(params, low: str, lin: str) -> np.ndarray:
    a = params[lin][0].reshape(params[lin][0].shape[0], -1).astype(np.float64)
    b = params[low][0].reshape(params[low][0].shape[0], -1).astype(np.float64)
    return a @ b


@pytest.mark.parametrize("lra_type", ["pca", "svd"])
def test_lower_ranks_keep_what_the_pairs_compute(tmp_path, lra_type):
    net = read_net_text(tmp_path, PAIR_NET)
    params = _params(np.random.default_rng(0), conv_rank=2, fc_rank=3)
    check = lowrank_netsolver.check_ranks(net, params, ratio=0.999, lra_type=lra_type)
    assert check.changed and check.ranks == [2, 3] and check.rank_info == "_2_3"
    layers = {lp.name: lp for lp in check.net.layer}
    assert layers["conv1_lowrank"].convolution_param.num_output == 2
    assert layers["ip1_lowrank"].inner_product_param.num_output == 3
    assert check.params["conv1_lowrank"][0].shape == (2, 3, 3, 3)
    assert check.params["conv1_linear"][0].shape == (5, 2, 1, 1)
    assert check.params["ip1_linear"][0].shape == (3, 3)
    for low, lin in (("conv1_lowrank", "conv1_linear"), ("ip1_lowrank", "ip1_linear")):
        before, after = _product(params, low, lin), _product(check.params, low, lin)
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-4 * np.abs(before).max())
        np.testing.assert_array_equal(check.params[lin][1], params[lin][1])     # the bias is kept
    # the input net and weights are left as they were; pruning off: ranks recorded, nothing rebuilt
    assert net.layer[1].convolution_param.num_output == 6 and params["conv1_lowrank"][0].shape[0] == 6
    off = lowrank_netsolver.check_ranks(net, params, ratio=0.999, lra_type=lra_type, prune=False)
    assert off.ranks == [2, 3] and not off.changed and off.params["conv1_lowrank"][0].shape[0] == 6


def read_net_text(tmp_path: Path, text: str):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return read_net(str(path))


def test_continuation_solver_shifts_the_schedule():
    p = caffe_pb2.SolverParameter(net="a.prototxt", base_lr=0.1, gamma=0.5, lr_policy="multistep",
                                  max_iter=100, stepvalue=[20, 40, 80], force_iter=30)
    out = lowrank_netsolver.continuation_solver(p, 40, "b_net.prototxt")
    assert out.net == "b_net.prototxt" and out.max_iter == 60 and list(out.stepvalue) == [40]
    assert out.base_lr == pytest.approx(0.025) and out.force_iter == 0
    p.force_iter = -1
    assert lowrank_netsolver.continuation_solver(p, 10, "c").force_iter == -1


def test_net_without_pairs_and_bad_solvers_are_errors(tmp_path):
    bad = read_net_text(tmp_path, PAIR_NET.replace('name: "conv1_linear"', 'name: "conv1_mix"'))
    with pytest.raises(LowRankError, match="'conv1_lowrank' must be followed by its Convolution '<name>_linear'"):
        lowrank_netsolver.check_ranks(bad, {}, 0.9)
    wide = read_net_text(tmp_path, PAIR_NET.replace("num_output: 5 kernel_size: 1", "num_output: 5 kernel_size: 3"))
    with pytest.raises(LowRankError, match="1x1 convolution"):
        lowrank_netsolver.check_ranks(wide, {}, 0.9)
    solver = tmp_path / "s.prototxt"
    solver.write_text('net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "step"\nstepsize: 10\ntest_interval: 5\n')
    with pytest.raises(LowRankError, match="Only multistep lr_policy"):
        lowrank_netsolver.train(str(solver), "w.caffemodel.h5", device=-1)
    with pytest.raises(LowRankError, match="--lra_type must be pca or svd"):
        lowrank_netsolver.train(str(solver), "w.caffemodel.h5", lra_type="kmeans", device=-1)


TRAIN_NET = """name: "small"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  data_param { source: "{db}" batch_size: 8 } transform_param { scale: 0.00390625 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  data_param { source: "{db}" batch_size: 8 } transform_param { scale: 0.00390625 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
"""


def test_whole_run_from_decomposition_through_python_path(tmp_path):
    """Decompose at full rank with lowrank, then the fork's script path trains 20 iterations in steps of
    5 on the CPU; the ranks fall, files are written as the fork names them, and the run ends."""
    rng = np.random.default_rng(3)
    db = tmp_path / "db"
    with DBWriter(str(db), "lmdb") as w:
        for i in range(48):
            label = i % 3
            img = rng.integers(0, 60, (1, 6, 6), dtype=np.uint8) + np.uint8(60 * label)
            w.put(f"{i:08d}", caffe_pb2.Datum(channels=1, height=6, width=6, data=img.tobytes(), label=label)
                  .SerializeToString())
    net = tmp_path / "train.prototxt"
    net.write_text(TRAIN_NET.replace("{db}", str(db)))
    conv = rng.standard_normal((8, 2)) @ rng.standard_normal((2, 9))           # rank 2 of 8 filters
    weights = tmp_path / "w.caffemodel.h5"
    save_weights(weights, [LayerWeights("conv1", "Convolution", [conv.reshape(8, 1, 3, 3).astype(np.float32),
                                                                 np.zeros(8, np.float32)]),
                           LayerWeights("ip1", "InnerProduct", [rng.standard_normal((3, 128)).astype(np.float32) * 0.05,
                                                                np.zeros(3, np.float32)])])
    assert lowrank.main(["--prototxt", str(net), "--caffemodel", str(weights), "--ranks", "8"]) == 0
    prefix = tmp_path / "run" / "dp"
    prefix.parent.mkdir()
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}.lowrank.prototxt"\ntest_iter: 2\ntest_interval: 5\nbase_lr: 0.01\n'
                      f'momentum: 0.9\nlr_policy: "multistep"\ngamma: 0.1\nstepvalue: 7\nstepvalue: 15\n'
                      f'display: 5\nmax_iter: 20\nsnapshot_prefix: "{prefix}"\nrandom_seed: 1\nsolver_mode: CPU\n')
    run = subprocess.run([sys.executable, "python/lowrank_netsolver.py", "--solver", str(solver), "--weights",
                          f"{weights}.lowrank.caffemodel.h5", "--ratio", "0.95", "--device", "-1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "Optimization done!" in run.stdout
    ranks = np.loadtxt(f"{prefix}.ranks", dtype=int, ndmin=2)
    assert ranks.shape[1] == 1 and ranks[0, 0] == 2 and len(ranks) >= 4      # a check every 5 iterations
    assert Path(f"{prefix}_ranks.png").stat().st_size > 1000
    first = read_solver(f"{prefix}_2_solver.prototxt")                        # after the first 5 iterations
    assert first.net == f"{prefix}_2_net.prototxt" and first.max_iter == 15
    assert list(first.stepvalue) == [2, 10] and first.base_lr == pytest.approx(0.01)
    low = {lp.name: lp for lp in read_net(first.net).layer}
    assert low["conv1_lowrank"].convolution_param.num_output == 2
    got = {lw.name: lw for lw in load_weights(f"{prefix}_2.caffemodel.h5")}
    assert got["conv1_lowrank"].blobs[0].shape == (2, 1, 3, 3) and got["conv1_linear"].blobs[0].shape == (8, 2, 1, 1)
    assert "Saved as" in run.stdout and "ranks 2" in run.stderr
