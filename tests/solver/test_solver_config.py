"""Solver construction: Caffe's checks, net_param/test_state nets, average_loss smoothing, callbacks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.io.prototxt import parse_text
from neocaffe.proto import caffe_pb2

NET = '''
  name: "tiny"
  layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
          inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
  layer { name: "extra" type: "Power" bottom: "p" top: "p2" include { stage: "probe" } }
'''


def solver_param(text: str = "") -> caffe_pb2.SolverParameter:
    p = parse_text('base_lr: 0.1 lr_policy: "fixed" max_iter: 3 solver_mode: CPU ' + text, caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    return p


def test_checks():
    from neocaffe.solver.solver import Solver, SolverError

    p = solver_param()
    p.train_net_param.CopyFrom(p.net_param)
    with pytest.raises(SolverError, match="exactly one train net"):
        Solver(p)
    with pytest.raises(SolverError, match="test_interval must be > 0"):
        Solver(solver_param("test_iter: 1"))
    with pytest.raises(SolverError, match="snapshot_prefix is not"):
        Solver(solver_param("snapshot: 1"))
    with pytest.raises(SolverError, match="Cannot write to snapshot prefix '/nonexistent/dir/x'"):
        Solver(solver_param('snapshot: 1 snapshot_prefix: "/nonexistent/dir/x"'))
    with pytest.raises(SolverError, match="average_loss"):
        Solver(solver_param("average_loss: 0"))
    # the scnn branch's fields are implemented (neocaffe.regularizers.group_lasso / connectivity)
    assert "group_lasso" in Solver(solver_param("breadth_decay: 0.001 block_group_decay: 0.5")).regularizers.names
    p = solver_param()
    p.net_param.layer[1].connectivity_mode = caffe_pb2.LayerParameter.DISCONNECTED_ELTWISE
    assert Solver(p).regularizers.names == ["connectivity"]
    p = solver_param("breadth_decay: 0.5")  # a block spec without block_group_decay is still displayed
    p.net_param.layer[1].param.add().block_group_lasso.add(xdimen=2, ydimen=1)
    with pytest.raises(SolverError, match=r"layer 'ip' param 0: block_group_lasso \{ xdimen: 2 ydimen: 1 \} does not tile"):
        Solver(p)
    p = solver_param()
    p.lr_policy = "bogus"
    with pytest.raises(ValueError, match="Unknown learning rate policy: 'bogus'"):
        Solver(p)


def test_test_nets_from_net_param_with_test_state_share_train_weights():
    from neocaffe.solver.solver import Solver

    p = solver_param('test_iter: 1 test_iter: 2 test_interval: 5 test_state { stage: "probe" } test_state { }')
    s = Solver(p)
    assert len(s.test_nets) == 2
    assert "extra" in s.test_nets[0].layer_names and "extra" not in s.test_nets[1].layer_names
    assert "extra" not in s.net.layer_names
    w = s.net.layer("ip").blobs[0]
    for t in s.test_nets:
        assert t.layer("ip").blobs[0].data_ptr() == w.data_ptr()
    s.step(1)
    assert all(t.layer("ip").blobs[0].data_ptr() == w.data_ptr() for t in s.test_nets)
    assert s.mean_scores[0] and s.mean_scores[1]


def test_average_loss_smoothing_and_callbacks():
    from neocaffe.solver.loss_monitor import SmoothedLoss
    from neocaffe.solver.solver import Solver

    s = Solver(solver_param("average_loss: 2"))
    seen = []
    s.add_callback(on_start=lambda: seen.append(("start", s.iter)),
                   on_gradients_ready=lambda: seen.append(("grads", s.iter)))
    window = SmoothedLoss(2)
    for i, loss in enumerate([1.0, 3.0, 5.0]):
        window.add(loss, i)
    assert window.value == pytest.approx(4.0) and window.losses == [5.0, 3.0]
    s.step(2)
    assert len(s.losses) == 2 and s.smoothed_loss == pytest.approx(sum(s.losses) / 2)
    assert seen == [("start", 0), ("grads", 0), ("start", 1), ("grads", 1)]


def test_iter_size_and_lr_mult_zero_params_do_not_move():
    from neocaffe.solver.solver import Solver

    p = solver_param("iter_size: 3 weight_decay: 0.1")
    p.net_param.layer[1].param.add(lr_mult=0)
    s = Solver(p)
    import torch

    s.net.set_blob("x", torch.ones(2, 3))
    s.net.set_blob("y", torch.full((2, 1), 5.0))
    w0 = s.net.layer("ip").blobs[0].detach().clone()
    s.step(2)
    assert np.array_equal(s.net.layer("ip").blobs[0].detach().numpy(), w0.numpy())
    assert s.net.layer("ip").blobs[1].detach().abs().sum() > 0  # the bias (lr_mult 1) learned


def test_multistep_logs_its_status_when_the_step_advances(caplog):
    import logging

    from neocaffe.solver.solver import Solver

    p = solver_param('gamma: 0.5 stepvalue: 1 stepvalue: 2 snapshot_after_train: false')
    p.lr_policy = "multistep"
    s = Solver(p)
    s.net.set_blob("x", torch.ones(2, 3))
    s.net.set_blob("y", torch.zeros(2, 1))
    with caplog.at_level(logging.INFO):
        s.solve()
    lines = [r.getMessage() for r in caplog.records if "MultiStep" in r.getMessage()]
    assert lines == ["MultiStep Status: Iteration 1, step = 1", "MultiStep Status: Iteration 2, step = 2"]
