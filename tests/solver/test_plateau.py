"""SSD's ``plateau`` learning-rate policy against a NumPy port of weiliu89/caffe ``ssd`` @ 7ef9b5cd:
``Solver::UpdateSmoothedLoss`` (``src/caffe/solver.cpp``), ``SGDSolver::GetLearningRate``'s ``plateau`` branch and
``PreSolve`` (``src/caffe/solvers/sgd_solver.cpp``: ``minimum_loss_ = FLT_MAX``), with ``minimum_loss``/
``iter_last_event`` through the solverstate (SolverState fields 5 and 6; HDF5 datasets of the same names)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from neocaffe.io.prototxt import parse_text
from neocaffe.io.solverstate import SolverState, read_solverstate, write_solverstate
from neocaffe.proto import caffe_pb2
from neocaffe.solver.loss_monitor import SmoothedLoss
from neocaffe.solver.lr_policy import POLICIES, LRPolicyError, Plateau, learning_rate, schedule
from neocaffe.solver.nets import SolverError
from neocaffe.solver.solver import Solver

f32 = np.float32


# -- the port: SSD's C++ with Dtype = float -------------------------------------------------------------------
class SSDPort:
    def __init__(self, p, average_loss):
        self.p, self.average_loss = p, average_loss
        self.losses, self.smoothed = [], f32(0)
        self.minimum_loss, self.iter_last_event, self.current_step = f32(np.finfo(np.float32).max), 0, 0

    def update_smoothed_loss(self, loss, it, start_iter):
        loss = f32(loss)
        if len(self.losses) < self.average_loss:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed = f32((self.smoothed * f32(size - 1) + loss) / f32(size))
        else:
            idx = (it - start_iter) % self.average_loss
            self.smoothed = f32(self.smoothed + (loss - self.losses[idx]) / f32(self.average_loss))
            self.losses[idx] = loss

    def get_learning_rate(self, it):
        p = self.p
        if self.smoothed < self.minimum_loss:
            self.minimum_loss, self.iter_last_event = self.smoothed, it
        if self.current_step < len(p.plateau_winsize):
            if it >= self.iter_last_event + p.plateau_winsize[self.current_step]:
                self.current_step += 1
                self.iter_last_event = it
        return f32(float(f32(p.base_lr)) * float(f32(p.gamma)) ** self.current_step)  # pow(float, int) in double


def sp(**kw):
    return caffe_pb2.SolverParameter(**kw)


PLATEAU = dict(lr_policy="plateau", base_lr=0.1, gamma=0.5, plateau_winsize=[4, 6, 3])
# falls, stalls (a step after 4 flat iterations), falls again, stalls twice, then noise past the last window
SCRIPT = [5, 4, 3, 2.5, 2.6, 2.7, 2.6, 2.55, 2.58, 2.9, 1.0, 0.9, 0.95, 0.97, 0.96, 0.99, 0.98, 0.97, 1.2,
          0.94, 0.93, 1.1, 1.0, 1.05, 0.9, 0.91, 0.92, 0.93, 0.89, 0.94]


def _ours(p, losses, average_loss, state=Plateau(), step=0):
    mon, rows = SmoothedLoss(average_loss), []
    mon.start(0)
    for it, loss in enumerate(losses):
        mon.add(float(f32(loss)), it)
        rate, step, state = schedule(p, it, step, mon.value, state)
        rows.append((rate, step, state.minimum_loss, state.iter_last_event))
    return rows


@pytest.mark.parametrize("average_loss", [1, 3])
def test_rate_at_every_iteration_matches_ssd_port(average_loss):
    p = sp(**PLATEAU)
    port, want = SSDPort(p, average_loss), []
    for it, loss in enumerate(SCRIPT):
        port.update_smoothed_loss(loss, it, 0)
        r = port.get_learning_rate(it)
        want.append((float(r), port.current_step, float(port.minimum_loss), port.iter_last_event))
    got = _ours(p, SCRIPT, average_loss)
    assert got == want
    assert [s for _, s, _, _ in got][-1] == 3  # every window was used up: the script exercises all steps
    assert len({r for r, *_ in got}) == 4


def test_hand_checked_schedule():
    """average_loss 1, windows [2]: minimum 3 at iteration 1; iterations 2, 3 do not beat it; step at 3."""
    rows = _ours(sp(lr_policy="plateau", base_lr=1, gamma=0.1, plateau_winsize=[2]), [4, 3, 3, 5, 1, 0.5], 1)
    assert [s for _, s, _, _ in rows] == [0, 0, 0, 1, 1, 1]
    assert [e for *_, e in rows] == [0, 1, 1, 3, 4, 5]
    assert rows[-1][0] == float(f32(0.1)) and rows[-1][2] == 0.5


def test_other_policies_unchanged_and_warmup_first():
    kw = dict(base_lr=0.01, gamma=0.5, stepsize=3, power=0.75, max_iter=40, stepvalue=[2, 5], stagelr=[0.1, 0.01],
              stageiter=[3, 9])
    for name in POLICIES:
        p, step_a, step_b, state = sp(lr_policy=name, **kw), 0, 0, Plateau(1.5, 7)
        for it in range(20):
            ra, step_a = learning_rate(p, it, step_a)
            rb, step_b, st = schedule(p, it, step_b, 123.0, state)
            assert (ra, step_a) == (rb, step_b) and st is state, (name, it)
    warm = sp(warmup_iter=5, warmup_start_lr=0.02, **PLATEAU)
    for it in range(5):  # Intel's warm-up: the policy is not called, its state untouched
        assert schedule(warm, it, 0, 0.1, Plateau()) == (learning_rate(sp(warmup_iter=5, warmup_start_lr=0.02,
                                                                         lr_policy="fixed", base_lr=0.1), it)[0],
                                                          0, Plateau())
    assert schedule(warm, 5, 0, 0.1, Plateau())[2] == Plateau(float(f32(0.1)), 5)


def test_bad_parameters():
    for kw, msg in [(dict(plateau_winsize=[]), "at least one plateau_winsize"),
                    (dict(plateau_winsize=[5, 0]), r"every plateau_winsize >= 1; received \[5, 0\]"),
                    (dict(plateau_winsize=[5], gamma=-1), "gamma >= 0")]:
        p = sp(**{**PLATEAU, **kw})
        with pytest.raises(LRPolicyError, match=msg):
            schedule(p, 0, 0, 1.0, Plateau())
        with pytest.raises(LRPolicyError, match=msg):
            _solver(**{**PLATEAU, **kw})
    with pytest.raises(LRPolicyError, match="follows the smoothed loss"):
        learning_rate(sp(**PLATEAU), 0)
    with pytest.raises(LRPolicyError, match="valid policies: .*plateau"):
        learning_rate(sp(lr_policy="plateaux"), 0)
    with pytest.raises(SolverError, match="exactly 1 under lr_policy 'plateau'"):
        _solver(loss_check_interval=5, **PLATEAU)


# -- the whole solver -------------------------------------------------------------------------------------------
NET = '''
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 3 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
'''


def _solver(loss_check_interval=None, **kw):
    p = sp(momentum=0.0, weight_decay=0.0, snapshot_after_train=False, solver_mode=caffe_pb2.SolverParameter.CPU,
           random_seed=1, display=1, average_loss=2, max_iter=30, **kw)
    p.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    torch.manual_seed(0)
    return Solver(p, loss_check_interval=loss_check_interval)


def test_whole_solver_against_port(caplog):
    """Plain SGD (no momentum or decay): each update is rate·grad, the rate the port's from the solver's losses."""
    s = _solver(**{**PLATEAU, "plateau_winsize": [3, 3, 5]})
    w, rec = s.net.learnable[0].param, []
    s.add_callback(on_gradients_ready=lambda: rec.append((float(s.net.blob_data["loss"]), w.detach().clone(),
                                                          w.grad.detach().clone())))
    with caplog.at_level(logging.INFO, logger="neocaffe.solver"):
        s.step(30)
    port = SSDPort(s.param, 2)
    for it, (loss, before, grad) in enumerate(rec):
        port.update_smoothed_loss(loss, it, 0)
        rate = port.get_learning_rate(it)
        after = rec[it + 1][1] if it + 1 < len(rec) else w.detach()
        assert torch.allclose(after, before - float(rate) * grad, rtol=0, atol=1e-7), it
    assert (s.current_step, s.plateau) == (port.current_step, Plateau(float(port.minimum_loss), port.iter_last_event))
    assert s.current_step >= 2  # the noisy loss stalls: steps were taken
    text = caplog.text
    assert "Plateau Status: Iteration" in text and ", step = 1" in text and "current minimum_loss = " in text


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_snapshot_resume_equals_uninterrupted(tmp_path, fmt):
    kw = dict(PLATEAU, plateau_winsize=[3, 3, 5], snapshot=13, snapshot_prefix=str(tmp_path / "p"),
              snapshot_format=getattr(caffe_pb2.SolverParameter, fmt))
    full = _solver(**kw)
    full.step(13)
    at13 = (full.current_step, full.plateau)
    full.step(17)
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = read_solverstate(tmp_path / f"p_iter_13{ext}")
    assert (state.current_step, Plateau(state.minimum_loss, state.iter_last_event)) == at13
    assert at13[1] != Plateau()  # the state saved is not the fresh one
    resumed = _solver(**kw)
    resumed.restore(str(tmp_path / f"p_iter_13{ext}"))
    assert (resumed.current_step, resumed.plateau) == at13
    resumed.step(17)
    assert (resumed.current_step, resumed.plateau) == (full.current_step, full.plateau)
    assert full.current_step > at13[0]  # steps after the resume point too
    for a, b in zip(full.net.learnable, resumed.net.learnable):
        assert torch.equal(a.param, b.param)


def test_solverstate_fields_as_protobuf(tmp_path):
    path = tmp_path / "s.solverstate"
    write_solverstate(path, SolverState(7, "w.caffemodel", [np.ones(2, f32)], 2, minimum_loss=0.25, iter_last_event=5))
    msg = caffe_pb2.SolverState.FromString(path.read_bytes())
    assert (msg.iter, msg.current_step, msg.minimum_loss, msg.iter_last_event) == (7, 2, 0.25, 5)
    msg.minimum_loss, msg.iter_last_event = 1.5, 9  # protobuf's own bytes (SSD's writer) read back
    path.write_bytes(msg.SerializeToString())
    st = read_solverstate(path)
    assert (st.iter, st.current_step, st.minimum_loss, st.iter_last_event) == (7, 2, 1.5, 9)
    plain = SolverState(7, "w.caffemodel", [np.ones(2, f32)], 2)  # other policies: BVLC's bytes, no 5/6
    write_solverstate(path, plain)
    assert not caffe_pb2.SolverState.FromString(path.read_bytes()).HasField("minimum_loss")
    st = read_solverstate(path)
    assert (st.minimum_loss, st.iter_last_event) == (None, None)
    s = _solver(**PLATEAU)
    s.plateau = Plateau(0.5, 3)
    bvlc = s.state()
    assert (bvlc.minimum_loss, bvlc.iter_last_event) == (0.5, 3)
    bvlc.minimum_loss = bvlc.iter_last_event = None
    write_solverstate(path, bvlc)
    s.load_state(read_solverstate(path))  # a BVLC solverstate under plateau: SSD's proto defaults
    assert s.plateau == Plateau(float(f32(1e38)), 0)
