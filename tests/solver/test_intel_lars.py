"""Intel Caffe's LARS (``local_lr_auto``/``local_gw_ratio``) against a NumPy port of intel/caffe @ 44d53638
``src/caffe/solvers/sgd_solver.cpp``: ``GetLocalRate`` (the blob's ``local_gw_ratio·‖w‖/(‖g‖ + weight_decay·‖w‖)``
in float, replacing its ``lr_mult`` when that is > 0; 1 where a norm is 0) read after ``Normalize`` and before
``Regularize``, then ``SGDFusion`` (its CPU build's SGD: ``history = local_rate·(decay·w + g) + momentum·history;
w -= history``). Unset, or with a solver type other than SGD (whose rules read ``params_lr`` directly): bit-identical."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from neocaffe.io.prototxt import parse_text
from neocaffe.proto import caffe_pb2
from neocaffe.solver.lr_policy import learning_rate
from neocaffe.solver.rules import lars_multipliers
from neocaffe.solver.solver import Solver

f32 = np.float32

NET = '''
name: "tiny2"
layer { name: "data" type: "DummyData" top: "data" top: "target"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 dim: 2 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } }
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0 } }
  param { lr_mult: 0.5 decay_mult: 2 } param { lr_mult: 0 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }
'''
LR_MULTS = [1.0, 2.0, 0.5, 0.0]
DECAY_MULTS = [1.0, 0.0, 2.0, 1.0]

# Intel's models/intel_optimized_models/benchmark/vgg16/solver.prototxt, scaled down (LARS with warm-up and poly)
BASE = ("warmup_start_lr: 1 warmup_iter: 3 lr_policy: 'poly' power: 2 "
        "max_iter: 12 momentum: 0.9 weight_decay: 0.0005 display: 1 snapshot: 0 solver_mode: CPU random_seed: 3 ")


# -- port of Intel's C++ (Dtype = float) ---------------------------------------------------------------------
def intel_get_local_rate(p, lr_mult, w, g):
    """GetLocalRate: float norms (sqrt of the float sum of squares), float ratio; lr_mult unless LARS and > 0."""
    local_lr = f32(lr_mult)
    if p.local_lr_auto:
        w_norm = np.sqrt(f32(np.sum(w.astype(np.float64) ** 2)))
        g_norm = np.sqrt(f32(np.sum(g.astype(np.float64) ** 2)))
        rate = f32(1)
        if w_norm > 0 and g_norm > 0:
            rate = f32(f32(f32(p.local_gw_ratio) * w_norm) / f32(g_norm + f32(f32(p.weight_decay) * w_norm)))
        if local_lr > 0:
            local_lr = rate
    return local_lr


def _solver(extra: str, caplog=None):
    p = parse_text(BASE + extra, caffe_pb2.SolverParameter())
    p.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter()))
    torch.manual_seed(0)
    if caplog is None:
        return Solver(p)
    with caplog.at_level(logging.WARNING, logger="neocaffe"):
        return Solver(p)


def _run(solver, n):
    """Steps ``n`` iterations; per iteration: weights before, gradients before the regularizers (after ÷ iter_size),
    after them, the local rates the rule got, weights after, logged lr."""
    rec = []
    compute, regularize = solver.rule.compute, solver.regularizers.apply

    def spy_reg(infos, *a, **k):
        rec[-1]["raw"] = [i.param.grad.detach().clone().numpy() for i in infos]
        return regularize(infos, *a, **k)

    def spy(grads, local_rates, iteration):
        rec[-1]["grads"] = [g.detach().clone().numpy() for g in grads]
        rec[-1]["local"] = list(local_rates)
        compute(grads, local_rates, iteration)

    solver.rule.compute, solver.regularizers.apply = spy, spy_reg
    for _ in range(n):
        rec.append({"before": [i.param.detach().clone().numpy() for i in solver.net.learnable]})
        solver.step(1)
        rec[-1]["after"] = [i.param.detach().clone().numpy() for i in solver.net.learnable]
        rec[-1]["lr"] = solver.shown["train/lr"]
    return rec


def _intel_sgd_fusion(p, rec):
    """SGDFusion per iteration from the recorded gradients; exact weights (the decay term to 1 ulp: fused or not)."""
    hist = [np.zeros_like(w) for w in rec[0]["before"]]
    step = 0
    m = f32(p.momentum)
    seen = []
    for it, r in enumerate(rec):
        rate, step = learning_rate(p, it, step)  # checked against Intel's GetLearningRate in test_intel_warmup.py
        assert r["lr"] == rate
        for k, (w, g) in enumerate(zip(r["before"], r["raw"])):
            local = f32(f32(rate) * intel_get_local_rate(p, LR_MULTS[k], w, g))
            assert r["local"][k] == float(local), (it, k, r["local"][k], local)
            decay = f32(f32(p.weight_decay) * f32(DECAY_MULTS[k]))
            reg = (g + decay * w).astype(np.float32)
            np.testing.assert_allclose(r["grads"][k], reg, rtol=2e-7, atol=0, err_msg=f"iter {it} blob {k}")
            hist[k] = (local * r["grads"][k] + m * hist[k]).astype(np.float32)
            np.testing.assert_array_equal(r["after"][k], (w - hist[k]).astype(np.float32), err_msg=f"iter {it} blob {k}")
            seen.append(float(local / f32(rate)) if rate else None)
    return seen


@pytest.mark.parametrize("iter_size", [1, 2])
def test_lars_trajectory_matches_intel(caplog, iter_size):
    s = _solver(f"base_lr: 7 local_lr_auto: true local_gw_ratio: 0.001 iter_size: {iter_size}", caplog)
    assert not [r for r in caplog.records if "Intel" in r.getMessage()]  # applied: no longer warned
    rec = _run(s, 8)
    _intel_sgd_fusion(s.param, rec)
    # lr_mult 2 (ip1's bias) is replaced by its ratio, lr_mult 0 (ip2's bias) stays 0: ip2's bias never moves
    r0 = rec[0]
    assert r0["local"][3] == 0.0 and all(np.array_equal(r["after"][3], rec[0]["before"][3]) for r in rec)
    assert r0["local"][1] != float(f32(f32(r0["lr"]) * f32(2)))
    w, g = r0["before"][0], r0["raw"][0]
    expect = 0.001 * np.linalg.norm(w) / (np.linalg.norm(g) + 0.0005 * np.linalg.norm(w))
    assert r0["local"][0] == pytest.approx(r0["lr"] * expect, rel=1e-5)


def test_lars_multipliers_edge_cases():
    p = caffe_pb2.SolverParameter(local_lr_auto=True, local_gw_ratio=0.02, weight_decay=0.1)
    w = [torch.zeros(3), torch.ones(4), torch.ones(2), torch.full((2,), 3.0), torch.ones(3)]
    g = [torch.ones(3), torch.zeros(4), torch.full((2,), float("nan")), torch.full((2,), 4.0), torch.ones(3)]
    got = lars_multipliers(p, w, g, [2.0, 1.0, 1.0, 1.0, -1.5])
    ratio = f32(f32(f32(0.02) * f32(np.sqrt(18))) / f32(f32(np.sqrt(32)) + f32(f32(0.1) * f32(np.sqrt(18)))))
    assert got == [1.0, 1.0, 1.0, float(ratio), -1.5]  # zero norms and NaN: 1; lr_mult <= 0 kept
    assert lars_multipliers(caffe_pb2.SolverParameter(local_gw_ratio=0.02), w, g, [2.0, 1, 1, 1, 0]) == [2.0, 1, 1, 1, 0]
    for t in ("Nesterov", "Adam", "AdaGrad"):
        assert lars_multipliers(caffe_pb2.SolverParameter(local_lr_auto=True, type=t), w, g, [2.0, 1, 1, 1, 0]) == \
            [2.0, 1, 1, 1, 0]


def _last(extra, n=6):
    """Weights after ``n`` iterations at a rate plain SGD survives (base_lr 0.05)."""
    return [a.copy() for a in _run(_solver("base_lr: 0.05 " + extra), n)[-1]["after"]]


def test_unset_is_bit_identical_and_set_changes_the_trajectory():
    for base in ("", "type: 'Nesterov' "):
        plain = _last(base)
        assert all(np.isfinite(a).all() for a in plain)
        for extra in ("local_gw_ratio: 0.5", "local_lr_auto: false local_gw_ratio: 0.01"):
            for a, b in zip(plain, _last(base + extra)):
                np.testing.assert_array_equal(a, b)
    for a, b in zip(_last("type: 'Nesterov' "), _last("type: 'Nesterov' local_lr_auto: true")):
        np.testing.assert_array_equal(a, b)  # Intel's Nesterov reads params_lr: LARS changes nothing
    plain, lars = _last(""), _last("local_lr_auto: true local_gw_ratio: 0.01")
    assert not np.array_equal(plain[0], lars[0])
    assert not np.array_equal(_last("local_lr_auto: true local_gw_ratio: 0.02")[0], lars[0])
