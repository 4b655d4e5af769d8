"""Intel Caffe's ``disabled_update``, ``test_offset`` and ``multifixed`` policy against ports of intel/caffe @ 44d53638:
``Solver::Step``/``Solve`` (``src/caffe/solver.cpp``: test where ``(iter_ - test_offset) % test_interval == 0 &&
(iter_ > 0 || test_initialization)``, and after the last iteration where ``(iter_ - test_offset) % test_interval == 0``;
``disabled_update``: ``PrintLearningRate()`` instead of ``ApplyUpdate()``) and ``SGDSolver::GetLearningRate``
(``src/caffe/solvers/sgd_solver.cpp``, ``multifixed``)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from neocaffe.io.prototxt import parse_text
from neocaffe.proto import caffe_pb2
from neocaffe.solver.lr_policy import LRPolicyError, learning_rate
from neocaffe.solver.solver import Solver

NET = '''
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 3 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
'''


def _solver(text: str):
    p = parse_text("base_lr: 0.1 momentum: 0.9 weight_decay: 0.01 snapshot: 0 snapshot_after_train: false "
                   "solver_mode: CPU random_seed: 1 " + text, caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    torch.manual_seed(0)
    return Solver(p)


# -- test_offset ---------------------------------------------------------------------------------------------
def intel_test_iters(max_iter, interval, offset, init):
    """Solver::Solve's TestAll calls: in Step (C++ % truncates; only its zero matters) and the one after."""
    out = [it for it in range(max_iter) if interval and (it - offset) % interval == 0 and (it > 0 or init)]
    if interval and (max_iter - offset) % interval == 0:
        out.append(max_iter)
    return out


@pytest.mark.parametrize("interval,offset,init", [(3, 0, True), (3, 1, True), (3, 2, False), (4, 7, True),
                                                  (3, -1, True), (5, 9, False)])
def test_test_offset_tests_where_intel_does(caplog, interval, offset, init):
    extra = f" test_offset: {offset}" if offset else ""
    s = _solver(f"lr_policy: 'fixed' max_iter: 9 test_interval: {interval} "
                f"test_initialization: {'true' if init else 'false'}{extra}")
    seen = []
    s.test_all = lambda: seen.append(s.iter)
    with caplog.at_level(logging.WARNING, logger="neocaffe"):
        assert s.solve()
    assert not [r for r in caplog.records if "test_offset" in r.getMessage()]
    assert seen == intel_test_iters(9, interval, offset, init)
    if offset == 0:
        assert seen == [0, 3, 6, 9]  # unset: Caffe's schedule, unchanged
    elif (offset, interval) == (1, 3):
        assert seen == [1, 4, 7]


# -- disabled_update -----------------------------------------------------------------------------------------
def test_disabled_update_keeps_the_weights_and_the_schedule(caplog):
    s = _solver("lr_policy: 'multistep' gamma: 0.5 stepvalue: 2 stepvalue: 4 max_iter: 6 display: 1 disabled_update: true")
    w0 = s.net.learnable[0].param.detach().clone()
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        s.step(6)
    assert s.iter == 6 and s.current_step == 2  # PrintLearningRate still calls GetLearningRate
    assert torch.equal(s.net.learnable[0].param.detach(), w0)
    assert all(torch.equal(h, torch.zeros_like(h)) for h in s.rule.history)
    lrs = [r.getMessage() for r in caplog.records if ", lr = " in r.getMessage()]
    assert len(lrs) == 6 and lrs[-1].endswith("lr = 0.025")
    assert not [r for r in caplog.records if "disabled_update" in r.getMessage()]
    on = _solver("lr_policy: 'fixed' max_iter: 3")  # unset: the weights move
    v0 = on.net.learnable[0].param.detach().clone()
    on.step(2)
    assert not torch.equal(on.net.learnable[0].param.detach(), v0)


# -- multifixed ----------------------------------------------------------------------------------------------
def intel_multifixed(stagelr, stageiter, it):
    n = len(stagelr)
    stage = 0
    while stage < n and not it <= stageiter[stage]:
        stage += 1
    return np.float32(stagelr[stage - 1 if stage == n else stage])


def test_multifixed_matches_intel_and_its_yolov2_solver():
    # models/intel_optimized_models/yolo/yolov2_solver.prototxt
    p = parse_text('lr_policy: "multifixed" stagelr: 0.0001 stagelr: 0.001 stagelr: 0.0001 stagelr: 0.00001 '
                   'stageiter: 1000 stageiter: 40000 stageiter: 60000 stageiter: 80000 max_iter: 80000',
                   caffe_pb2.SolverParameter())
    for it in [0, 1, 999, 1000, 1001, 39999, 40000, 40001, 60000, 60001, 80000, 80001, 123456]:
        r, step = learning_rate(p, it, 7)
        assert (r, step) == (float(intel_multifixed(p.stagelr, p.stageiter, it)), 7), it
    assert learning_rate(p, 1000)[0] == float(np.float32(1e-4)) and learning_rate(p, 1001)[0] == float(np.float32(1e-3))
    assert learning_rate(p, 90000)[0] == float(np.float32(1e-5))
    # unsorted stages: the first stage whose stageiter is not below iter, as Intel's loop
    q = caffe_pb2.SolverParameter(lr_policy="multifixed", stagelr=[1, 2, 3], stageiter=[10, 5, 20])
    assert [learning_rate(q, i)[0] for i in (4, 10, 11, 25)] == [1.0, 1.0, 3.0, 3.0]
    # Intel's warm-up comes first
    w = caffe_pb2.SolverParameter(lr_policy="multifixed", base_lr=0.5, stagelr=[1], stageiter=[10], warmup_iter=2,
                                  warmup_start_lr=0.1)
    assert [learning_rate(w, i)[0] for i in range(4)] == [float(np.float32(0.1)), float(np.float32(0.3)), 1.0, 1.0]


def test_multifixed_errors_and_solver_run():
    for kw in (dict(stagelr=[1, 2], stageiter=[3]), dict()):
        with pytest.raises(LRPolicyError, match="multifixed"):
            learning_rate(caffe_pb2.SolverParameter(lr_policy="multifixed", **kw), 0)
    s = _solver("lr_policy: 'multifixed' stagelr: 0.1 stagelr: 0.01 stageiter: 1 stageiter: 5 max_iter: 4 display: 1")
    lrs = []
    for _ in range(4):
        s.step(1)
        lrs.append(s.shown["train/lr"])
    assert lrs == [float(np.float32(0.1))] * 2 + [float(np.float32(0.01))] * 2
    with pytest.raises(Exception, match="multifixed"):
        _solver("lr_policy: 'multifixed' stagelr: 0.1 max_iter: 4")
