"""TSN's Caffe's layers (yjxiong/caffe action_recog @ 9831a2b4) against loop ports of the fork's code
(tests/layers/tsn_layers_reference.py): BatchReduction and SyncBN forward and backward, Gather/Scatter on one
process, and the fork's ``BN`` (bn_layer.cpp, CAFFE engine) against neocaffe's ``BN`` (PSPNet's lineage, which
took it from this fork): forward, backward, running statistics and ``frozen``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, TRAIN, BuildContext, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import tsn_layers_reference as ref

f32 = np.float32


def _layer(text, shapes, phase=TRAIN, context=None):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], phase, context)


def _run(layer, x, dy):
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(torch.tensor(dy))
    return y.detach().numpy(), xt.grad.numpy()


BR = 'name: "br" type: "BatchReduction" bottom: "x" top: "y" batch_reduction_param { %s }'


@pytest.mark.parametrize("shape, axis, levels, op, pos, k", [
    ((2, 5, 3), 1, [], "MEAN", False, 1),
    ((3, 6, 2), 1, [], "SUM", False, 1),
    ((2, 5, 2, 2), 1, [1, 2], "MEAN", False, 1),
    ((2, 14, 3), 1, [1, 2, 3], "SUM", False, 1),
    ((2, 3, 3, 2), 1, [], "MEAN", True, 1),
    ((4, 4, 4), 1, [], "SUM", True, 1),
    ((2, 6, 3), 1, [], "TOPK", False, 2),
    ((3, 5, 2, 2), 1, [], "TOPK", False, 3),
    ((6, 4), 0, [], "MEAN", False, 1),
])
def test_batch_reduction_matches_the_forks_loops(shape, axis, levels, op, pos, k):
    g = np.random.default_rng(len(shape) * 7 + k)
    x = (g.permutation(int(np.prod(shape))).reshape(shape) * 0.37 - 3).astype(f32)  # distinct values
    text = " ".join(f"level: {v}" for v in levels) + f" pos: {str(pos).lower()} reduction_param {{ operation: " \
        f"{op} axis: {axis} k: {k} }}"
    layer = _layer(BR % text, [shape])
    want, backward = ref.batch_reduction(x, axis, levels, op, pos, k)
    (top_shape,) = layer.reshape([shape])
    dy = g.standard_normal(top_shape).astype(f32)
    y, dx = _run(layer, x, dy)
    assert y.shape == top_shape
    np.testing.assert_allclose(y.reshape(-1), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, backward(dy), rtol=1e-6, atol=1e-7)


def test_batch_reduction_errors_are_the_forks_checks():
    with pytest.raises(LayerSetupError, match="ASUM and SUMSQ are not implemented"):
        _layer(BR % "reduction_param { operation: SUMSQ }", [(2, 3)])
    with pytest.raises(LayerSetupError, match="pos-sensitive reduction when level is more than 1"):
        _layer(BR % "level: 1 level: 2 pos: true", [(2, 5)])
    with pytest.raises(LayerSetupError, match=r"levels \[1, 2\] reduce 5 entries of axis 1; the bottom"):
        _layer(BR % "level: 1 level: 2 reduction_param { axis: 1 }", [(2, 6)]).reshape([(2, 6)])
    with pytest.raises(LayerSetupError, match="TOPK"):  # Reduction rejects TSN's TOPK
        _layer('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: TOPK }',
               [(2, 3)]).reshape([(2, 3)])


SBN = ('name: "sbn" type: "SyncBN" bottom: "x" top: "y" bn_param { momentum: 0.8 eps: 0.001 slope_filler { '
       'type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.2 } }')


@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (4, 3), (2, 2, 3)])
def test_sync_bn_matches_the_forks_kernels_on_one_process(shape):
    g = np.random.default_rng(sum(shape))
    x = (g.standard_normal(shape) * 2 + 0.7).astype(f32)
    dy = g.standard_normal(shape).astype(f32)
    layer = _layer(SBN, [shape])
    with torch.no_grad():
        layer.blobs[2].copy_(torch.tensor(g.standard_normal((1, shape[1])), dtype=torch.float32))
        layer.blobs[3].copy_(torch.tensor(g.uniform(0.5, 2, (1, shape[1])), dtype=torch.float32))
    slope, bias, rm, rv = (b.detach().numpy().reshape(-1).copy() for b in layer.blobs)
    top, new_mean, new_var, dx_want, ds, db = ref.sync_bn_train(x, slope, bias, rm, rv, 0.8, 0.001, dy)
    y, dx = _run(layer, x, dy)
    np.testing.assert_allclose(y, top, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy().reshape(-1), ds, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].grad.numpy().reshape(-1), db, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.blobs[2].detach().numpy().reshape(-1), new_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[3].detach().numpy().reshape(-1), new_var, rtol=1e-5, atol=1e-6)
    assert [(p.lr_mult, p.decay_mult) for p in layer.param.param[2:]] == [(0, 0), (0, 0)]
    test = _layer(SBN, [shape], TEST)
    test.load_state_dict(layer.state_dict())
    v = layer.blobs[3].detach().numpy().reshape((1, -1) + (1,) * (len(shape) - 2))
    m = layer.blobs[2].detach().numpy().reshape(v.shape)
    want = (x - m) / np.sqrt(v + f32(0.001)) * slope.reshape(v.shape) + bias.reshape(v.shape)
    np.testing.assert_allclose(test(torch.tensor(x)).detach().numpy(), want, rtol=1e-5, atol=1e-5)


def test_sync_bn_gives_no_param_diff_where_the_bottom_takes_none():
    layer = _layer(SBN, [(3, 2, 2)])
    layer(torch.randn(3, 2, 2)).sum().backward()  # an input without grad: the fork computes no diff at all
    assert layer.blobs[0].grad is None and layer.blobs[1].grad is None


def test_gather_and_scatter_are_the_identity_on_one_process_and_refuse_several():
    for t in ("Gather", "Scatter"):
        layer = _layer(f'name: "g" type: "{t}" bottom: "a" bottom: "b" top: "c" top: "d"', [(2, 3), (1,)])
        a, b = torch.randn(2, 3), torch.randn(1)
        out = layer(a, b)
        assert out[0] is a and out[1] is b
        with pytest.raises(LayerSetupError, match="data-parallel run of 2 processes"):
            _layer(f'name: "g" type: "{t}" bottom: "a" top: "c"', [(2, 3)], context=BuildContext(0, 2))
    with pytest.raises(LayerSetupError, match="data-parallel run of 2 processes"):
        _layer(SBN, [(2, 3)], context=BuildContext(1, 2))


# -- BN: the fork's bn_layer.cpp (CAFFE engine) against neocaffe's BN --------------------------------
@pytest.mark.parametrize("frozen, phase", [(False, TRAIN), (True, TRAIN), (True, TEST), (False, TEST)])
def test_bn_matches_the_forks_bn_layer(frozen, phase):
    shape = (3, 4, 5, 2)
    g = np.random.default_rng(9 + frozen + 2 * phase)
    x = (g.standard_normal(shape) * 1.5 - 0.4).astype(f32)
    dy = g.standard_normal(shape).astype(f32)
    text = ('name: "bn" type: "BN" bottom: "x" top: "y" bn_param { momentum: 0.9 eps: 1e-5 frozen: %s '
            'slope_filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } }'
            % str(frozen).lower())
    layer = _layer(text, [shape], phase)
    with torch.no_grad():
        layer.blobs[2].copy_(torch.tensor(g.standard_normal((1, 4, 1, 1)), dtype=torch.float32))
        layer.blobs[3].copy_(torch.tensor(g.uniform(0.5, 2, (1, 4, 1, 1)), dtype=torch.float32))
    slope, bias, rm, rv = (b.detach().numpy().reshape(-1).copy() for b in layer.blobs)
    top, new_mean, new_var, dx_want, ds, db = ref.bn_caffe(x, slope, bias, rm, rv, 0.9, 1e-5, frozen,
                                                          phase == TRAIN, dy)
    y, dx = _run(layer, x, dy)
    np.testing.assert_allclose(y, top, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(layer.blobs[2].detach().numpy().reshape(-1), new_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[3].detach().numpy().reshape(-1), new_var, rtol=1e-6, atol=1e-6)
    lr = [(p.lr_mult, p.decay_mult) for p in layer.param.param]
    assert lr[2:] == [(0, 0), (0, 0)] and (lr[:2] == [(0, 0), (0, 0)]) == frozen
    if phase == TEST and not frozen:
        return  # the fork's TEST backward applies the batch formula to stored statistics (bn.py's docstring)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-4, atol=1e-5)
    if frozen:
        assert layer.blobs[0].grad is None and layer.blobs[1].grad is None
    else:
        np.testing.assert_allclose(layer.blobs[0].grad.numpy().reshape(-1), ds, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.blobs[1].grad.numpy().reshape(-1), db, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_sync_bn_and_batch_reduction_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    x = torch.randn(3, 4, 2, 2)
    for text, shape in ((SBN, x.shape), (BR % "level: 1 level: 1 reduction_param { axis: 1 }", (3, 2, 8))):
        xs = x.reshape(shape)
        cpu = _layer(text, [shape])
        gpu = _layer(text, [shape]).to("cuda")
        gpu.load_state_dict(cpu.state_dict())
        torch.testing.assert_close(gpu(xs.cuda()).cpu(), cpu(xs), rtol=1e-5, atol=1e-5)
