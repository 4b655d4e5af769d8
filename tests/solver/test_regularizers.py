"""The regularizer chain: registry, order, weight decay L2/L1 (per-parameter type too)."""
from __future__ import annotations

import pytest
import torch

from neocaffe.graph.params import ParamInfo
from neocaffe.proto import caffe_pb2
from neocaffe.regularizers import Regularizer, get_regularizer_class, register_regularizer, regularizer_names
from neocaffe.regularizers.chain import ORDER, RegularizerChain


def info(w, decay_mult=1.0, **spec):
    p = torch.nn.Parameter(torch.tensor(w))
    p.grad = torch.zeros_like(p)
    return ParamInfo(p, "ip", 0, caffe_pb2.ParamSpec(decay_mult=decay_mult, **spec))


def test_registry_has_weight_decay_first():
    assert "weight_decay" in regularizer_names()
    assert ORDER[0] == "weight_decay"
    with pytest.raises(KeyError, match="known:"):
        get_regularizer_class("nope")


def test_no_weight_decay_no_member():
    assert RegularizerChain.from_solver(caffe_pb2.SolverParameter()).names == [n for n in RegularizerChain.from_solver(
        caffe_pb2.SolverParameter()).names if n != "weight_decay"]


def test_l2_and_l1_in_place_with_penalty():
    chain = RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=0.1))
    a, b = info([1.0, -2.0]), info([3.0], decay_mult=0.0)
    pens = chain.apply([a, b], 0, 0.01)
    assert a.param.grad.tolist() == pytest.approx([0.1, -0.2]) and b.param.grad.tolist() == [0.0]
    assert float(pens["weight_decay"]) == pytest.approx(0.05 * 5)
    chain = RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=0.1, regularization_type="L1"))
    a = info([1.0, -2.0, 0.0])
    chain.apply([a], 0, 0.01)
    assert a.param.grad.tolist() == pytest.approx([0.1, -0.1, 0.0])


def test_per_param_regularization_type_overrides_solver():
    chain = RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=0.5))
    a = info([2.0, -2.0], regularization_type="L1")
    chain.apply([a], 0, 0.01)
    assert a.param.grad.tolist() == pytest.approx([0.5, -0.5])


def test_unknown_type_is_an_error():
    with pytest.raises(ValueError, match="valid types: L2, L1"):
        RegularizerChain.from_solver(caffe_pb2.SolverParameter(weight_decay=0.1, regularization_type="L3"))


def test_solver_parameter_not_mutated_and_custom_member_ordered_last():
    @register_regularizer("zz_test_scale")
    class Scale(Regularizer):
        @classmethod
        def from_solver(cls, p):
            return cls() if p.weight_decay == 0.25 else None

        def apply(self, info, iteration, rate):
            info.param.grad.mul_(2)
            return 0.0

    p = caffe_pb2.SolverParameter(weight_decay=0.25)
    before = p.SerializeToString()
    chain = RegularizerChain.from_solver(p)
    assert chain.names[0] == "weight_decay" and chain.names[-1] == "zz_test_scale"
    a = info([1.0])
    chain.apply([a], 0, 0.1)
    assert a.param.grad.tolist() == [0.5]  # decay first, then the later member
    assert p.SerializeToString() == before


def test_penalties_are_optional_and_the_gradient_is_the_same():
    """The solver asks for penalties only on display iterations; the gradient never depends on it."""
    p = caffe_pb2.SolverParameter(weight_decay=0.1, force_decay=0.01)
    chain = RegularizerChain.from_solver(p)
    a, b = info([[1.0, -2.0], [0.5, 3.0]]), info([[1.0, -2.0], [0.5, 3.0]])
    for x in (a, b):
        x.spec.force_mult = 1.0
    with_pen = chain.apply([a], 0, 0.1)
    without = chain.apply([b], 0, 0.1, penalty=False)
    assert torch.equal(a.param.grad, b.param.grad) and a.param.grad.abs().sum() > 0
    assert float(with_pen["weight_decay"]) == pytest.approx(0.1 / 2 * (1 + 4 + 0.25 + 9))
    assert float(with_pen["force"]) != 0.0
    assert without == {"weight_decay": 0.0, "force": 0.0}


def test_force_strengths_are_built_once_not_every_step(monkeypatch):
    """A tensor made from Python floats each step is a blocking host-to-device copy on CUDA."""
    import neocaffe.regularizers.force as force

    reg = force.ForceRegularizer(0.01)
    params = [info([[1.0, 0.0], [0.6, 0.8]]) for _ in range(2)]
    for x in params:
        x.spec.force_mult = 1.0
    reg.apply_all(params, 0, 0.1)
    made = []
    real = torch.tensor
    monkeypatch.setattr(force.torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    reg.apply_all(params, 1, 0.1)
    assert made == []
