"""Force regularization over all parameters at once: weights of one shape go through one batched pass
and give what one pass per weight gives."""
from __future__ import annotations

import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.params import ParamInfo
from neocaffe.proto import caffe_pb2
from neocaffe.regularizers.force import ForceRegularizer


def _info(name: str, w: torch.Tensor, g: torch.Tensor, mult: float) -> ParamInfo:
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    spec = text_format.Parse(f"lr_mult: 1 force_mult: {mult}", caffe_pb2.ParamSpec())
    return ParamInfo(p, name, 0, spec)


@pytest.mark.parametrize("force_type", ["Degradation", "Gravity"])
@pytest.mark.parametrize("direction, decay_type", [("all", "fixed"), ("same", "adaptive")])
def test_batched_equals_one_weight_at_a_time(force_type, direction, decay_type):
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 3, 3, 3), (6, 3, 3, 3), (4, 5), (6, 3, 3, 3), (7,), (4, 5)]
    weights = [torch.randn(s, generator=g) for s in shapes]
    weights[1][0] = 0.0  # a dead filter in a batched member
    grads = [torch.randn(s, generator=g) for s in shapes]
    mults = [1.0, 0.5, 2.0, 0.0, 1.0, 1.0]
    reg = ForceRegularizer(0.01, force_type, direction, decay_type)
    batched = [_info(f"l{i}", w, gr, m) for i, (w, gr, m) in enumerate(zip(weights, grads, mults))]
    single = [_info(f"l{i}", w, gr, m) for i, (w, gr, m) in enumerate(zip(weights, grads, mults))]
    pens = reg.apply_all(batched, 0, 0.1)
    ref = [reg.apply(i, 0, 0.1) for i in single]
    for a, b, pa, pb in zip(batched, single, pens, ref):
        torch.testing.assert_close(a.param.grad, b.param.grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(torch.as_tensor(pa, dtype=torch.float32), torch.as_tensor(pb, dtype=torch.float32),
                                   rtol=1e-6, atol=1e-7)
    assert not torch.equal(batched[0].param.grad, grads[0])  # the force did act
    assert torch.equal(batched[3].param.grad, grads[3]) and torch.equal(batched[4].param.grad, grads[4])
    stopped = ForceRegularizer(0.01, force_type, direction, decay_type, stop_iter=3)
    before = [i.param.grad.clone() for i in single]
    assert stopped.apply_all(single, 3, 0.1) == [0.0] * 6  # force_iter: active while iteration < 3
    assert all(torch.equal(i.param.grad, b) for i, b in zip(single, before))
