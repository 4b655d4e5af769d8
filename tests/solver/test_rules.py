"""Update rules: closed-form single steps on tiny tensors, history layout, and checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neocaffe.proto import caffe_pb2
from neocaffe.solver.rules import RULES, UpdateRule, make_rule, rule_name


def step(kind, grads, rate=0.1, iteration=0, rule=None, **kw):
    p = caffe_pb2.SolverParameter(type=kind, **kw)
    params = [torch.zeros_like(g) for g in grads]
    rule = rule or make_rule(p, params)
    gs = [g.clone() for g in grads]
    rule.compute(gs, UpdateRule.local_rates(rate, [1.0] * len(gs)), iteration)
    return rule, gs


G = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0])]


def test_sgd_momentum_two_steps():
    rule, u = step("SGD", G, momentum=0.9)
    assert torch.allclose(u[0], 0.1 * G[0])
    _, u = step("SGD", G, rule=rule, momentum=0.9)
    assert torch.allclose(u[0], 0.9 * 0.1 * G[0] + 0.1 * G[0])
    assert len(rule.history) == 2


def test_nesterov():
    rule, u = step("Nesterov", G, momentum=0.9)
    v = 0.1 * G[0]
    assert torch.allclose(u[0], 1.9 * v)
    _, u = step("Nesterov", G, rule=rule, momentum=0.9)
    v2 = 0.9 * v + 0.1 * G[0]
    assert torch.allclose(u[0], 1.9 * v2 - 0.9 * v)


def test_adagrad_rmsprop():
    _, u = step("AdaGrad", G, delta=1e-8)
    assert torch.allclose(u[0], 0.1 * G[0] / (G[0].abs() + 1e-8))
    _, u = step("RMSProp", G, rms_decay=0.9, delta=1e-8)
    assert torch.allclose(u[0], 0.1 * G[0] / (torch.sqrt(0.1 * G[0] ** 2) + 1e-8))


def test_adadelta_and_adam_keep_two_sets_second_after_first():
    rule, u = step("AdaDelta", G, rate=1.0, momentum=0.95, delta=1e-6)
    assert len(rule.history) == 4
    assert [tuple(h.shape) for h in rule.history] == [(3,), (1,), (3,), (1,)]
    eg = 0.05 * G[0] ** 2
    upd = G[0] * torch.sqrt((0 + 1e-6) / (eg + 1e-6))
    assert torch.allclose(u[0], upd, rtol=1e-5)
    assert torch.allclose(rule.history[0], eg) and torch.allclose(rule.history[2], 0.05 * upd**2, rtol=1e-5)
    rule, u = step("Adam", G, momentum=0.9, momentum2=0.999, delta=1e-8)
    corr = math.sqrt(1 - 0.999) / (1 - 0.9)
    m, v = 0.1 * G[0], 0.001 * G[0] ** 2
    assert torch.allclose(u[0], 0.1 * corr * m / (v.sqrt() + 1e-8), rtol=1e-5)
    assert torch.allclose(rule.history[1], 0.1 * G[1]) and torch.allclose(rule.history[3], 0.001 * G[1] ** 2, rtol=1e-4)


def test_set_history_checks_count_and_reshapes_legacy_blobs():
    rule = make_rule(caffe_pb2.SolverParameter(type="SGD"), [torch.zeros(2, 3), torch.zeros(3)])
    rule.set_history([np.ones((1, 1, 2, 3), np.float32), np.arange(3, dtype=np.float32).reshape(1, 1, 1, 3)])
    assert rule.history[0].shape == (2, 3) and rule.history[1].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="Incorrect length of history blobs"):
        rule.set_history([np.ones(6)])
    with pytest.raises(ValueError, match="history blob 1 has 4 values"):
        rule.set_history([np.ones(6), np.ones(4)])


def test_types_legacy_enum_and_checks():
    assert set(RULES) == {"SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"}
    assert rule_name(caffe_pb2.SolverParameter(solver_type=caffe_pb2.SolverParameter.ADAM)) == "Adam"
    assert rule_name(caffe_pb2.SolverParameter()) == "SGD"
    with pytest.raises(ValueError, match="known types: SGD"):
        make_rule(caffe_pb2.SolverParameter(type="Lion"), [])
    with pytest.raises(ValueError, match="Momentum cannot be used with AdaGrad"):
        make_rule(caffe_pb2.SolverParameter(type="AdaGrad", momentum=0.9), [])


def test_local_rate_is_float32_product():
    assert UpdateRule.local_rates(0.1, [2.0]) == [float(np.float32(0.1) * np.float32(2.0))]
