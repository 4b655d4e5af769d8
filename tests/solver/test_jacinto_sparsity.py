"""caffe-jacinto's gradual weight sparsification (``neocaffe.solver.jacinto_sparsity``) against a loop-by-loop
NumPy port of the fork (``jacinto_sparsity_reference.py``; mathmanu/caffe-jacinto caffe-0.17 @ 2678b2b8):
the per-channel threshold search, every ThresholdNet step of a training run (weights, connectivity and factor
equal to the port's), SPARSE_UPDATE keeping zeros through SGD with momentum and weight decay, the log lines,
resume, ``ignore_shape_mismatch``, and caffe-jacinto-models' released cifar10_jacintonet11v2 sparse solver."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.proto import caffe_pb2
from neocaffe.solver.jacinto_sparsity import channel_thresholds, conv_entries, ignores_shape_mismatch
from neocaffe.solver.nets import SolverError
from neocaffe.solver.solver import Solver
from tests.solver import jacinto_sparsity_reference as ref

f32 = np.float32
DATA = Path(__file__).parent / "data" / "jacinto_cifar10_sparse"

NET = """name: "small"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: 0 max: 3.99 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 32
  kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" param { name: "shared2" }
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 group: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "dw" type: "Convolution" bottom: "conv2" top: "dw" convolution_param { num_output: 32 kernel_size: 3
  pad: 1 group: 32 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "conv3" type: "Convolution" bottom: "dw" top: "conv3" convolution_param { num_output: 16
  kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv3" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "Convolution" bottom: "pool" top: "fc" convolution_param { num_output: 4 kernel_size: 1
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

SOLVER = """base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed" display: 0 max_iter: {max_iter}
snapshot_after_train: false solver_mode: CPU random_seed: 3 display_sparsity: 20 sparse_mode: SPARSE_UPDATE sparsity_target: {target}
sparsity_step_factor: 0.08 sparsity_step_iter: 10 sparsity_start_iter: 10 sparsity_start_factor: 0.1 {extra}"""


def solver_param(max_iter: int = 80, target: float = 0.45, extra: str = "") -> caffe_pb2.SolverParameter:
    p = text_format.Parse(SOLVER.format(max_iter=max_iter, target=target, extra=extra), caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    return p


def conv_weights(s: Solver) -> dict[str, np.ndarray]:
    return {c.name: c.weight.detach().cpu().numpy().copy() for c in s.sparsity.convs}


def masks(s: Solver) -> dict[str, np.ndarray | None]:
    return {c.name: (None if m is None else m.cpu().numpy().copy()) for c, m in zip(s.sparsity.convs, s.sparsity.masks)}


def port_layers(s: Solver, weights: dict[str, np.ndarray]) -> list[ref.Layer]:
    """The fork's view of the train net: every layer (Split layers included), conv kernels and blob 0."""
    out = []
    for layer in s.net.layers:
        lp = layer.param
        if lp.type == "Convolution":
            k = int(lp.convolution_param.kernel_size[0])
            name = lp.param[0].name if len(lp.param) and lp.param[0].name else "0"
            out.append(ref.Layer(lp.name, lp.type, (k, k), int(lp.convolution_param.group),
                                 weights[lp.name].copy(), name))
        else:
            out.append(ref.Layer(lp.name, lp.type))
    return out


def record_steps(s: Solver) -> list[dict]:
    """Wrap ``after_update``: the weights, connectivity and factor before and after each call."""
    calls: list[dict] = []
    inner = s.sparsity.after_update

    def spy(iteration: int) -> None:
        before = {"iter": iteration, "w": conv_weights(s), "m": masks(s), "factor": s.sparsity.factor}
        inner(iteration)
        calls.append({**before, "w_after": conv_weights(s), "m_after": masks(s), "factor_after": s.sparsity.factor})

    s.sparsity.after_update = spy  # type: ignore[method-assign]
    return calls


# -- the threshold search -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("trial", range(8))
def test_channel_thresholds_equal_the_port(trial):
    """Per-channel thresholds and zeroed weights equal the fork's loops: existing zeros, heavy tails, fractions
    0..1, both caps binding (``threshold_value_max`` below and above max|w|)."""
    g = np.random.default_rng(trial)
    no, cin = (32, 40)[trial % 2], (3, 8, 16)[trial % 3]
    w = (g.standard_normal((no, cin, 3, 3)) * (0.05, 0.5, 3.0)[trial % 3]).astype(f32)
    if trial % 3 == 0:
        w[g.random(w.shape) < 0.3] = 0
    if trial % 4 == 1:
        w = (w ** 3).astype(f32)
    frac = f32((0.0, 0.02, 0.1, 0.35, 0.8, 1.0, 0.5, 0.25)[trial])
    ratio, vmax = f32((0.2, 0.5, 1.0)[trial % 3]), f32((0.2, 0.05, 10.0)[(trial + 1) % 3])
    layer = ref.Layer("c", "Convolution", (3, 3), 1, w.copy())
    want = ref.find_and_apply_channel_threshold([layer], frac, frac, frac, ratio, vmax)[0]
    got = channel_thresholds([torch.from_numpy(w)], [frac], ratio, vmax)[0].numpy()
    assert np.array_equal(got, want), np.abs(got - want).max()
    zeroed = torch.from_numpy(w.copy()).masked_fill_(torch.from_numpy(np.abs(w) <= got[:, None, None, None]), 0)
    assert np.array_equal(zeroed.numpy(), layer.weight)


def test_layer_selection():
    """Convolution blob 0 only; thresholded: kernel > 2, group < no and != no, ni or no >= 32; counted: the next
    layer (Split layers included) is not Softmax/SoftmaxWithLoss."""
    s = Solver(solver_param())
    got = {c.name: (c.thresholded, c.counted, c.high, c.key) for c in s.sparsity.convs}
    assert got == {"conv1": (True, True, False, "conv1_param_0"), "conv2": (True, True, True, "conv2_param_shared2"),
                   "dw": (False, True, True, "dw_param_0"), "conv3": (False, True, False, "conv3_param_0"),
                   "fc": (False, False, False, "fc_param_0")}
    p = solver_param()
    acc = p.net_param.layer.add()  # the fork's rule sees the Split layer that Accuracy's second read inserts
    text_format.Parse('name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc"', acc)
    assert [c.counted for c in conv_entries(Solver(p).net) if c.name == "fc"] == [True]


# -- training against the port -------------------------------------------------------------------------------------
def test_training_steps_equal_the_port_and_zeros_stay():
    """80 SGD iterations (momentum 0.9, weight decay 1e-3), target 0.3, a sparsity step every 10 from 10: after
    every ThresholdNet call the weights, connectivity and factor equal the port's given the same weights before
    it; masked weights stay 0 although the update moved them (momentum and decay)."""
    p = solver_param(target=0.3)
    s = Solver(p)
    calls = record_steps(s)
    s.solve()
    assert len(calls) == 80
    steps = worst = 0
    regrown = 0
    for c in calls:
        layers = port_layers(s, c["w"])
        state = ref.State(f32(c["factor"]), {k: (None if v is None else v.copy()) for k, v in c["m"].items()})
        ref.threshold_net(layers, state, c["iter"], p)
        steps += state.factor != c["factor"]
        for layer in layers:
            if layer.weight is not None:
                worst = max(worst, float(np.abs(layer.weight - c["w_after"][layer.name]).max()))
                assert np.array_equal(layer.weight, c["w_after"][layer.name]), (c["iter"], layer.name)
                assert np.array_equal(state.connectivity[layer.name], c["m_after"][layer.name])
                mask = c["m_after"][layer.name]
                assert not np.any(c["w_after"][layer.name][mask == 0])  # SPARSE_UPDATE: zeros stay zero
                if c["m"][layer.name] is not None:
                    regrown += int(np.count_nonzero(c["w"][layer.name][c["m"][layer.name] == 0]))
        assert state.factor == c["factor_after"]
    assert worst == 0.0
    print(f"steps {steps}, max abs difference {worst}, connectivity sparsity {s.sparsity.connectivity_sparsity()}, "
          f"factor {s.sparsity.factor}")
    assert steps == 5  # iterations 10..50: then the connectivity sparsity is above the target 0.3
    assert regrown > 0  # the update did move masked weights: the connectivity put them back to 0
    sparsity = s.sparsity.connectivity_sparsity()
    assert 0.3 <= sparsity < 0.35, sparsity


def test_log_lines(caplog):
    s = Solver(solver_param(max_iter=20))
    with caplog.at_level(logging.INFO, logger="neocaffe.solver"):
        s.solve()
    lines = [r.getMessage() for r in caplog.records]
    w = {c.name: c.weight.detach().numpy() for c in s.sparsity.convs}
    assert lines.count("All zero weights of convolution layers are frozen") == 3  # Solve, iterations 10 and 20
    assert "Finding and applying sparsity: sparsity_target=0.45 sparsity_factor=0.1 sparsity_achieved=0 iter=10" \
        in lines
    first = lines.index("Finding and applying sparsity: sparsity_target=0.45 sparsity_factor=0.1 "
                        "sparsity_achieved=0 iter=10")
    after = lines[first + 1:first + 9]
    assert [m.split("=")[0] for m in after] == ["conv1 ni", "conv1 ZeroWeightsFraction", "conv2 ni",
                                                "conv2 ZeroWeightsFraction", "dw ni", "conv3 ni", "fc ni",
                                                "All zero weights of convolution layers are frozen"]
    assert after[0] == "conv1 ni=3 no=32" and after[4:7] == ["dw ni=32 no=32", "conv3 ni=32 no=16", "fc ni=16 no=4"]
    z1 = f32(np.count_nonzero(w["conv1"] == 0)) / f32(w["conv1"].size)
    tail = lines[lines.index("Sparsity after training:"):]
    keys = ["conv1_param_0", "conv2_param_shared2", "conv3_param_0", "dw_param_0"]  # std::map order, fc excluded
    assert tail[1] == "Num Params(4), Sparsity (zero_weights/count): "
    assert tail[2] == f"conv1_param_0({'%.3g' % z1}) "
    assert [t.split("(")[0] for t in tail[2:6]] == keys
    zeros = sum(int(np.count_nonzero(w[k.split("_param_")[0]] == 0)) for k in keys)
    count = sum(w[k.split("_param_")[0]].size for k in keys)
    assert tail[6] == f"Total Sparsity (zero_weights/count) =  ({zeros}/{count}) {'%.3g' % (f32(zeros) / f32(count))}"
    assert "Sparsity after update:" in lines  # display_sparsity: 20, at iteration 20's step end only here


def test_increment_before_applying_is_caffe_016(caplog):
    """sparsity_itr_increment_bfr_applying set to true: ThresholdNet sees iter + 1 (caffe-0.16), so step(10)
    thresholds at in-loop iteration 9 and again at the step's end; unset: only at the end (caffe-0.17)."""
    for extra, steps in (("", 1), ("sparsity_itr_increment_bfr_applying: true", 2)):
        p = solver_param(extra=extra)
        p.sparsity_start_iter = 1
        s = Solver(p)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="neocaffe.solver"):
            s.step(10)
        lines = [r.getMessage() for r in caplog.records]
        assert sum(m.startswith("Finding and applying sparsity") for m in lines) == steps
        assert lines.count("sparsity_itr_increment_bfr_applying is true: old behaviour:") == 2 * (steps - 1)


# -- resume -------------------------------------------------------------------------------------------------------
def test_resume_equals_the_uninterrupted_run(tmp_path, caplog):
    """60 iterations straight (a snapshot at 30), and a solve resumed from that snapshot: conv weights,
    connectivity and factor equal bit for bit (the ``.resume.pt`` companion holds them). A Caffe snapshot without
    it: connectivity from the weights, the factor derived from the iteration (equal to the saved one here)."""
    def param() -> caffe_pb2.SolverParameter:
        p = solver_param(max_iter=60, target=0.9)
        p.snapshot, p.snapshot_prefix, p.snapshot_after_train = 30, str(tmp_path / "s"), False
        return p

    straight = Solver(param())
    straight.solve()
    state = tmp_path / "s_iter_30.solverstate"
    saved = torch.load(str(state) + ".resume.pt", weights_only=True)["jacinto_sparsity"]
    resumed = Solver(param())
    resumed.solve(str(state))
    assert resumed.iter == 60
    for name, w in conv_weights(straight).items():
        assert np.array_equal(w, conv_weights(resumed)[name]), name
    assert resumed.sparsity.factor == straight.sparsity.factor
    for name, m in masks(straight).items():
        assert np.array_equal(m, masks(resumed)[name]), name
    (tmp_path / "s_iter_30.solverstate.resume.pt").unlink()
    caffe = Solver(param())
    with caplog.at_level(logging.INFO, logger="neocaffe.solver"):
        caffe.restore(str(state))
    assert caffe.sparsity.factor == f32(saved["factor"]) == f32(0.26)  # steps at 10 and 20
    assert "sparsity_factor 0.26 derived from iteration 30 (the solverstate does not hold it)" in \
        [r.getMessage() for r in caplog.records]
    for c, m in zip(caffe.sparsity.convs, caffe.sparsity.masks):  # the snapshot's zeros are the connectivity's
        assert np.array_equal(m.numpy(), np.unpackbits(saved["masks"][c.name].numpy(), count=m.numel())
                              .astype(f32).reshape(m.shape)), c.name


# -- solver fields -------------------------------------------------------------------------------------------------
def test_refused_fields():
    with pytest.raises(SolverError, match="snapshot_log: true"):
        Solver(solver_param(extra="snapshot_log: true"))
    p = solver_param()
    p.sparsity_step_iter = 0
    with pytest.raises(SolverError, match="sparsity_step_iter is 0"):
        Solver(p)
    assert Solver(solver_param(extra="snapshot_log: false")).sparsity is not None
    p = solver_param()
    p.sparse_mode, p.display_sparsity = caffe_pb2.SPARSE_NONE, 0
    assert Solver(p).sparsity is None


def test_ignore_shape_mismatch(tmp_path, caplog):
    """Weights of another shape: Caffe's error unless the solver sets ignore_shape_mismatch: true; then the same
    count is copied in the target's shape and another count skipped, each with one line naming the layer and
    both shapes."""
    from neocaffe.graph.errors import NetError
    from neocaffe.io.errors import CaffeFileError

    src = solver_param()
    src.net_param.layer[1].convolution_param.kernel_h = 9  # conv1: 32 x 3 x 9 x 1, the count of 32 x 3 x 3 x 3
    src.net_param.layer[1].convolution_param.kernel_w = 1
    src.net_param.layer[1].convolution_param.pad_h = 4
    src.net_param.layer[1].convolution_param.pad_w = 0
    src.net_param.layer[1].convolution_param.ClearField("kernel_size")
    src.net_param.layer[1].convolution_param.ClearField("pad")
    src.net_param.layer[6].convolution_param.num_output = 8  # conv3: 8 x 32 x 1 x 1, another count
    other = Solver(src)
    path = str(tmp_path / "w.caffemodel")
    from neocaffe.io.weights import save_caffemodel

    save_caffemodel(path, other.net.to_weights())
    assert not ignores_shape_mismatch(solver_param()) and not ignores_shape_mismatch(
        solver_param(extra="ignore_shape_mismatch: false"))
    assert ignores_shape_mismatch(solver_param(extra="ignore_shape_mismatch: true"))
    target = Solver(solver_param())
    with pytest.raises((NetError, CaffeFileError), match="Cannot copy param 0 weights from layer 'conv1'"):
        target.net.copy_from(path)
    before = target.net.layers[6].blobs[0].detach().clone()
    with caplog.at_level(logging.WARNING, logger="neocaffe.weights"):
        target.net.copy_from(path, ignore_shape_mismatch=True)
    lines = [r.getMessage() for r in caplog.records]
    assert "During copy param 0 weights from layer 'conv1'; Ignoring shape mismatch and copying forcefully.  Source " \
           "param shape is 32 3 9 1 (864); target param shape is 32 3 3 3 (864). " in lines
    assert any(m.startswith("Cannot copy param 0 weights from layer 'conv3'; shape mismatch.  Source param shape is "
                            "8 32 1 1 (256); target param shape is 16 32 1 1 (512).") for m in lines)
    assert np.array_equal(target.net.layers[1].blobs[0].detach().numpy().reshape(-1),
                          other.net.layers[1].blobs[0].detach().numpy().reshape(-1))
    assert torch.equal(target.net.layers[6].blobs[0], before)  # skipped
    assert torch.equal(target.net.layers[3].blobs[0], other.net.layers[3].blobs[0])  # the rest copied


def test_caffe_train_weights_honour_the_field(tmp_path, monkeypatch, capfd):
    """``caffe train -weights``: a conv1 stored as 32 x 3 x 9 x 1 fails the solver without the field and is copied
    with it set to true."""
    from neocaffe.cli.caffe import main
    from neocaffe.io.weights import save_caffemodel

    monkeypatch.chdir(tmp_path)
    src = solver_param()
    cp = src.net_param.layer[1].convolution_param
    cp.ClearField("kernel_size")
    cp.ClearField("pad")
    cp.kernel_h, cp.kernel_w, cp.pad_h = 9, 1, 4
    save_caffemodel("w.caffemodel", Solver(src).net.to_weights())
    (tmp_path / "net.prototxt").write_text(NET)
    for extra, code in (("", 1), ("ignore_shape_mismatch: true", 0)):
        p = solver_param(max_iter=2, extra=extra)
        p.ClearField("net_param")
        p.net = "net.prototxt"
        (tmp_path / "solver.prototxt").write_text(text_format.MessageToString(p))
        assert main(["train", "--solver=solver.prototxt", "--weights=w.caffemodel"]) == code
        err = capfd.readouterr().err
        assert ("Ignoring shape mismatch and copying forcefully" in err) == (code == 0)


# -- the released solver ---------------------------------------------------------------------------------------------
def released(batch: int, side: int, scale: int) -> caffe_pb2.SolverParameter:
    """cifar10_jacintonet11v2/sparse/solver.prototxt with its train and test nets: LMDB Data swapped for DummyData
    (batch x 3 x side x side, labels 0..9), iteration counts divided by ``scale``."""
    from neocaffe.io.prototxt import read_net, read_solver

    def net(name: str) -> caffe_pb2.NetParameter:
        n = read_net(str(DATA / name))
        lp = n.layer[0]
        assert lp.type == "Data"
        lp.type = "DummyData"
        lp.ClearField("transform_param")
        lp.ClearField("data_param")
        lp.dummy_data_param.shape.add().dim.extend([batch, 3, side, side])
        lp.dummy_data_param.shape.add().dim.extend([batch])
        lp.dummy_data_param.data_filler.add(type="uniform", min=0, max=255)
        lp.dummy_data_param.data_filler.add(type="uniform", min=0, max=9.99)
        return n

    p = read_solver(str(DATA / "solver.prototxt"))
    assert (p.sparse_mode, f32(p.sparsity_target), p.sparsity_step_iter, p.sparsity_start_iter) == (1, f32(0.8), 1000,
                                                                                                   4000)
    p.ClearField("train_net")
    p.ClearField("test_net")
    p.train_net_param.CopyFrom(net("train.prototxt"))
    p.test_net_param.add().CopyFrom(net("test.prototxt"))
    for f in ("test_interval", "display", "max_iter", "display_sparsity", "sparsity_step_iter", "sparsity_start_iter"):
        setattr(p, f, max(1, getattr(p, f) // scale))
    p.test_iter[0], p.snapshot, p.snapshot_after_train = 1, 0, False
    p.solver_mode = caffe_pb2.SolverParameter.CPU
    p.ClearField("snapshot_prefix")
    return p


def test_released_net_thresholds_every_layer():
    """The released train net at full width (8 x 8 inputs): one ThresholdNet step on its ten Convolution layers."""
    p = released(batch=1, side=8, scale=1000)
    p.sparsity_start_iter, p.sparsity_start_factor, p.test_interval = 0, 0.3, 1000
    s = Solver(p)
    s.step(1)
    assert [c.name for c in s.sparsity.convs if c.thresholded] == [
        "conv1a", "conv1b", "res2a_branch2a", "res2a_branch2b", "res3a_branch2a", "res3a_branch2b", "res4a_branch2a",
        "res4a_branch2b", "res5a_branch2a", "res5a_branch2b"]
    assert 0.25 < s.sparsity.connectivity_sparsity() < 0.35


@pytest.mark.slow
def test_released_solver_reaches_its_target(capsys):
    """The released sparse solver (target 0.8, +0.02 per step, from factor 0) with its iteration counts / 250
    (a step every 4 iterations from 16, 256 iterations, display every 50), its nets at full width on
    2 x 3 x 8 x 8 DummyData. The fork's run fine-tunes its L1-regularised stage's weights (not in the mirror);
    here each filter's filler weights are cubed and scaled to max |w| = 1 (heavy-tailed, as L1 training leaves
    them, and no denormals): the target is reached."""
    p = released(batch=2, side=8, scale=250)
    p.display = 50
    s = Solver(p)
    with torch.no_grad():
        for c in s.sparsity.convs:
            w = c.weight.data.pow_(3)
            w /= w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
    start = time.perf_counter()
    s.solve()
    elapsed = time.perf_counter() - start
    reached = float(s.sparsity.connectivity_sparsity())
    with capsys.disabled():
        print(f"\nreleased cifar10_jacintonet11v2 sparse solver: target 0.8, reached {reached:.4f}, "
              f"factor {float(s.sparsity.factor):g}, {s.iter} iterations in {elapsed:.1f} s")
    assert s.iter == 256 and reached >= 0.8
    exact = sum(int((c.weight == 0).sum()) for c in s.sparsity.convs if c.counted)
    assert exact / sum(c.weight.numel() for c in s.sparsity.convs if c.counted) >= 0.8  # the weights' own zeros


# -- CUDA ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_equals_the_port():
    """On CUDA: the threshold search equals the CPU's, and a training run's ThresholdNet steps equal the port."""
    g = np.random.default_rng(1)
    ws = [(g.standard_normal((64, 16, 3, 3)) ** 3).astype(f32), (g.standard_normal((32, 3, 3, 3)) * 0.1).astype(f32)]
    fr = [f32(0.4), f32(0.2)]
    cpu = channel_thresholds([torch.from_numpy(w) for w in ws], fr, f32(0.2), f32(0.2))
    gpu = channel_thresholds([torch.from_numpy(w).cuda() for w in ws], fr, f32(0.2), f32(0.2))
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())
    p = solver_param(max_iter=40)
    p.solver_mode = caffe_pb2.SolverParameter.GPU
    s = Solver(p)
    assert s.sparsity.convs[0].weight.is_cuda
    calls = record_steps(s)
    s.solve()
    for c in calls:
        layers = port_layers(s, c["w"])
        state = ref.State(f32(c["factor"]), {k: (None if v is None else v.copy()) for k, v in c["m"].items()})
        ref.threshold_net(layers, state, c["iter"], p)
        for layer in layers:
            if layer.weight is not None:
                assert np.array_equal(layer.weight, c["w_after"][layer.name]), (c["iter"], layer.name)
