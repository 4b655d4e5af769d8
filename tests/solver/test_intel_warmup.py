"""Intel Caffe's learning-rate warm-up (``warmup_iter``/``warmup_start_lr``) against a port of intel/caffe @ 44d53638
``src/caffe/solvers/sgd_solver.cpp``: ``GetWarmUpLR`` and ``GetLearningRate`` (warm-up before the policy, the
policy's ``current_step`` untouched meanwhile), ``SGDFusion`` (its CPU build's SGD: warm-up rate, momentum unchanged)
and ``ComputeUpdateValue`` (its unfused SGD: momentum × rate/prev_rate during the warm-up). Unset: bit-identical."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from neocaffe.io.prototxt import parse_text
from neocaffe.proto import caffe_pb2
from neocaffe.solver.lr_policy import POLICIES, learning_rate, warmup_rate
from neocaffe.solver.solver import Solver

f32 = np.float32


# -- ports of Intel's C++ (float arithmetic: Dtype = float, int operands converted) -----------------------------
def intel_get_warmup_lr(cur_iter: int, warmup_iter: int, base_lr, warmup_start_lr) -> np.float32:
    if cur_iter < 0:
        cur_iter = 0
    a = np.array([cur_iter], np.int32).astype(np.float32)[0] * f32(base_lr)          # int * float -> float
    b = np.array([warmup_iter - cur_iter], np.int32).astype(np.float32)[0] * f32(warmup_start_lr)
    return f32(f32(a + b) / np.array([warmup_iter], np.int32).astype(np.float32)[0])  # float / int -> float


def intel_rate(p, it: int, current_step: int):
    """GetLearningRate: the warm-up branch first; else the policy (neocaffe's, checked elsewhere against Caffe)."""
    if p.warmup_iter > 0 and it < p.warmup_iter:
        return intel_get_warmup_lr(it, p.warmup_iter, p.base_lr, p.warmup_start_lr), current_step
    r, s = POLICIES[p.lr_policy](p, it, current_step)
    return f32(r), s


def sp(**kw):
    return caffe_pb2.SolverParameter(**kw)


def test_warmup_rate_matches_intel_port_and_is_linear():
    for base, start, w in ((0.1, 0.01, 7), (3.2, 0.1, 3125), (0.05, 0.0, 10), (1.0, 1.0, 3), (0.4, 0.9, 13)):
        p = sp(lr_policy="fixed", base_lr=base, warmup_iter=w, warmup_start_lr=start)
        for it in list(range(-2, min(w, 40))) + [w - 1]:
            got = warmup_rate(p, it)
            assert got == float(intel_get_warmup_lr(it, w, base, start)), (base, start, w, it)
        assert warmup_rate(p, w) is None and warmup_rate(p, w + 5) is None
        assert warmup_rate(p, 0) == float(f32(start))
    # a large iteration count: the int -> float conversions round as C's do
    p = sp(lr_policy="fixed", base_lr=0.1, warmup_iter=50_000_017, warmup_start_lr=0.3)
    assert warmup_rate(p, 16_777_217) == float(intel_get_warmup_lr(16_777_217, 50_000_017, 0.1, 0.3))


@pytest.mark.parametrize("policy", ["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"])
def test_unset_is_bit_identical_and_set_follows_intel(policy):
    kw = dict(lr_policy=policy, base_lr=0.1, gamma=0.9, stepsize=4, power=0.75, max_iter=40, stepvalue=[2, 3, 9, 20])
    plain = sp(**kw)
    step_a = step_b = 0
    for it in range(40):
        ra, step_a = learning_rate(plain, it, step_a)
        rb, step_b = POLICIES[policy](plain, it, step_b)
        assert (ra, step_a) == (rb, step_b)  # warmup_iter unset (0): the policy alone
    for w in (0, -3):
        assert learning_rate(sp(warmup_iter=w, warmup_start_lr=0.5, **kw), 1, 0) == POLICIES[policy](plain, 1, 0)
    warm = sp(warmup_iter=6, warmup_start_lr=0.02, **kw)
    step, ref_step = 0, 0
    seen = []
    for it in range(40):
        r, step = learning_rate(warm, it, step)
        ref, ref_step = intel_rate(warm, it, ref_step)
        assert (r, step) == (float(ref), ref_step), (policy, it)
        seen.append(r)
    assert seen[0] == float(f32(0.02)) and seen[:6] != [rb for rb in seen[6:12]]


def test_multistep_catches_up_one_step_per_iteration_after_the_warmup():
    p = sp(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[1, 2, 3], warmup_iter=4, warmup_start_lr=0.5)
    out, step = [], 0
    for it in range(8):
        r, step = learning_rate(p, it, step)
        out.append((r, step))
    assert [s for _, s in out] == [0, 0, 0, 0, 1, 2, 3, 3]
    assert [r for r, _ in out] == [0.5, 0.625, 0.75, 0.875, 0.5, 0.25, 0.125, 0.125]


NET = '''
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 3 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } }
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
'''


def _solver(extra: str, caplog):
    p = parse_text("base_lr: 0.2 lr_policy: 'step' gamma: 0.5 stepsize: 3 momentum: 0.9 weight_decay: 0.01 "
                   "max_iter: 8 display: 1 snapshot: 0 solver_mode: CPU random_seed: 3 " + extra,
                   caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    with caplog.at_level(logging.WARNING, logger="neocaffe"):
        s = Solver(p)
    return s


def _run(solver, n):
    """Steps ``n`` iterations; returns per iteration (weights before, gradients, weights after, logged lr)."""
    rec = []
    compute = solver.rule.compute

    def spy(grads, local_rates, iteration):
        rec[-1]["grads"] = [g.detach().clone().numpy() for g in grads]  # after weight decay (Regularize)
        compute(grads, local_rates, iteration)

    solver.rule.compute = spy
    for _ in range(n):
        rec.append({"before": [i.param.detach().clone().numpy() for i in solver.net.learnable]})
        solver.step(1)
        rec[-1]["after"] = [i.param.detach().clone().numpy() for i in solver.net.learnable]
        rec[-1]["lr"] = solver.shown["train/lr"]
    return rec


def _intel_sgd(p, rec, lr_mults, corrected: bool):
    """Intel's SGD from the regularized gradients: history = local_rate·g + momentum'·history; w -= history, where
    momentum' = momentum (SGDFusion) or momentum·rate/prev_rate during the warm-up (ComputeUpdateValue)."""
    hist = [np.zeros_like(w) for w in rec[0]["before"]]
    step = 0
    for it, r in enumerate(rec):
        rate, step = intel_rate(p, it, step)
        assert r["lr"] == float(rate)
        m = f32(p.momentum)
        if corrected and p.warmup_iter > 0 and it < p.warmup_iter:
            m = f32(m * f32(rate / intel_get_warmup_lr(it - 1, p.warmup_iter, p.base_lr, p.warmup_start_lr)))
        for k, (w, g) in enumerate(zip(r["before"], r["grads"])):
            local = f32(rate * f32(lr_mults[k]))
            hist[k] = (local * g + m * hist[k]).astype(np.float32)
            np.testing.assert_array_equal(r["after"][k], (w - hist[k]).astype(np.float32), err_msg=f"iter {it}")


@pytest.mark.parametrize("corrected", [False, True])
def test_solver_trajectory_matches_intel_sgd(caplog, corrected):
    s = _solver("warmup_iter: 4 warmup_start_lr: 0.02", caplog)
    assert not [r for r in caplog.records if "Intel" in r.getMessage()]  # applied: no longer warned
    s.rule.warmup_momentum_correction = corrected
    rec = _run(s, 7)
    _intel_sgd(s.param, rec, [1.0, 2.0], corrected)
    assert [r["lr"] for r in rec][:5] == [float(intel_get_warmup_lr(i, 4, 0.2, 0.02)) for i in range(4)] + [float(f32(0.1))]


def test_correction_changes_the_trajectory_and_unset_is_bit_identical(caplog):
    runs = {}
    for name, extra, corr in (("plain", "", False), ("plain_corr", "", True), ("zero", "warmup_iter: 0 warmup_start_lr: 0.02", True),
                              ("warm", "warmup_iter: 4 warmup_start_lr: 0.02", False),
                              ("warm_corr", "warmup_iter: 4 warmup_start_lr: 0.02", True)):
        torch.manual_seed(0)
        s = _solver(extra, caplog)
        s.rule.warmup_momentum_correction = corr
        runs[name] = _run(s, 6)
    last = {k: v[-1]["after"][0] for k, v in runs.items()}
    np.testing.assert_array_equal(last["plain"], last["plain_corr"])
    np.testing.assert_array_equal(last["plain"], last["zero"])
    assert not np.array_equal(last["plain"], last["warm"])
    assert not np.array_equal(last["warm"], last["warm_corr"])
    assert runs["plain"][0]["lr"] == pytest.approx(0.2) and runs["warm"][0]["lr"] == pytest.approx(0.02)


def test_other_solver_types_take_the_warmup_rate(caplog):
    s = _solver("warmup_iter: 3 warmup_start_lr: 0.05 type: 'Adam' momentum2: 0.999", caplog)
    rec = _run(s, 4)
    assert [r["lr"] for r in rec] == [float(intel_get_warmup_lr(i, 3, 0.2, 0.05)) for i in range(3)] + [float(f32(0.1))]


def test_bad_policy_parameters_still_fail_at_construction():
    from neocaffe.solver.lr_policy import LRPolicyError
    from neocaffe.solver.solver import SolverError

    p = parse_text("base_lr: 0.1 lr_policy: 'step' stepsize: 0 warmup_iter: 5 warmup_start_lr: 0.01 solver_mode: CPU",
                   caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    with pytest.raises((LRPolicyError, SolverError), match="stepsize"):
        Solver(p)
    with pytest.raises(LRPolicyError, match="Unknown learning rate policy"):
        learning_rate(sp(lr_policy="nope", warmup_iter=5), 0)
