"""Learning-rate policies against Caffe's formulas (closed form) and current_step handling."""
from __future__ import annotations

import math

import numpy as np
import pytest

from neocaffe.proto import caffe_pb2
from neocaffe.solver.lr_policy import POLICIES, LRPolicyError, learning_rate


def sp(**kw):
    return caffe_pb2.SolverParameter(**kw)


def run(p, n, step=0):
    out = []
    for it in range(n):
        r, step = learning_rate(p, it, step)
        out.append((r, step))
    return out


def test_fixed():
    assert all(r == pytest.approx(0.01) for r, _ in run(sp(lr_policy="fixed", base_lr=0.01), 5))


def test_step_sets_current_step():
    out = run(sp(lr_policy="step", base_lr=0.1, gamma=0.5, stepsize=3), 10)
    assert [s for _, s in out] == [i // 3 for i in range(10)]
    assert [r for r, _ in out] == pytest.approx([0.1 * 0.5 ** (i // 3) for i in range(10)], rel=1e-6)


def test_exp_inv_poly_sigmoid_closed_form():
    base = dict(base_lr=0.01, max_iter=10)
    for it in range(10):
        assert learning_rate(sp(lr_policy="exp", gamma=0.9, **base), it)[0] == pytest.approx(0.01 * 0.9**it, rel=1e-6)
        assert learning_rate(sp(lr_policy="inv", gamma=0.1, power=0.75, **base), it)[0] == pytest.approx(
            0.01 * (1 + 0.1 * it) ** -0.75, rel=1e-6)
        assert learning_rate(sp(lr_policy="poly", power=2, **base), it)[0] == pytest.approx(
            0.01 * (1 - it / 10) ** 2, rel=1e-6, abs=1e-12)
        assert learning_rate(sp(lr_policy="sigmoid", gamma=-0.5, stepsize=5, **base), it)[0] == pytest.approx(
            0.01 / (1 + math.exp(0.5 * (it - 5))), rel=1e-6)


def test_rates_are_float32_values():
    r, _ = learning_rate(sp(lr_policy="step", base_lr=0.002, gamma=0.5, stepsize=15), 15)
    assert r == float(np.float32(r)) and "%g" % r == "0.001"


def test_multistep_advances_one_step_per_call_and_resumes_from_current_step():
    p = sp(lr_policy="multistep", base_lr=1.0, gamma=0.1, stepvalue=[2, 5])
    out = run(p, 8)
    assert [s for _, s in out] == [0, 0, 1, 1, 1, 2, 2, 2]
    # Caffe moves at most one stepvalue per call: resuming at iteration 7 with current_step 0 -> 1
    assert learning_rate(p, 7, 0)[1] == 1
    assert learning_rate(p, 7, 2) == (pytest.approx(0.01), 2)


def test_errors_name_the_problem():
    with pytest.raises(LRPolicyError, match="valid policies: fixed, step"):
        learning_rate(sp(lr_policy="cosine"), 0)
    with pytest.raises(LRPolicyError, match="lr_policy is not set"):
        learning_rate(sp(), 0)
    with pytest.raises(LRPolicyError, match="stepsize > 0"):
        learning_rate(sp(lr_policy="step", gamma=0.1), 0)
    assert set(POLICIES) == {"fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid",
                             "multifixed"}  # Intel Caffe's (tests/solver/test_intel_solver_fields.py)
