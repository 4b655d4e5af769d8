"""NumPy references for loss, metric and utility semantics that the real-Caffe goldens do not exercise."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def make(text: str, *bottoms, phase: int = 1):
    """Build one layer from its prototxt text and float64 bottoms; returns (layer, bottom tensors)."""
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    ts = [torch.as_tensor(np.asarray(b, dtype=np.float64)) for b in bottoms]
    layer = get_layer_class(p.type)(p, [tuple(t.shape) for t in ts], phase).double()
    return layer, ts


def grads(layer, ts, which=(0,), top_diff=None):
    ts = [t.clone().requires_grad_(i in which) for i, t in enumerate(ts)]
    out = layer(*ts)
    out = out[0] if isinstance(out, list) else out
    out.backward(torch.ones_like(out) if top_diff is None else torch.as_tensor(top_diff, dtype=out.dtype))
    return out.detach().numpy(), [t.grad.numpy() if t.grad is not None else None for t in ts]


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


# -- losses -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_backward_uses_forward_margins(norm):
    """Caffe stashes the margins in bottom[0]'s diff in Forward and reads them in Backward. (The golden
    x_hinge_* bwd/x is all zero only because the generator cleared blob diffs between the passes.)"""
    r = np.random.default_rng(0)
    x, lab = r.standard_normal((6, 5)), r.integers(0, 5, 6)
    layer, ts = make(f'name: "h" type: "HingeLoss" bottom: "x" bottom: "l" top: "loss" hinge_loss_param {{ norm: {norm} }}',
                     x, lab.astype(float))
    loss, (gx, _) = grads(layer, ts, top_diff=0.7)
    sign = np.ones_like(x)
    sign[np.arange(6), lab] = -1
    m = np.maximum(0, 1 + x * sign)
    ref = (m ** 2).sum() / 6 if norm == "L2" else m.sum() / 6
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    ref_g = m * sign * 2 * 0.7 / 6 if norm == "L2" else np.sign(m * sign) * 0.7 / 6
    np.testing.assert_allclose(gx, ref_g, rtol=1e-12)


def _infogain_ref(p, lab, h):
    n = p.shape[0]
    p2 = np.maximum(p.reshape(n, -1), 1e-20)
    rows = h[lab]
    return -(rows * np.log(p2)).sum() / n, (-1.0 / n) * rows / p2


def test_infogain_from_source_and_third_bottom(tmp_path):
    r = np.random.default_rng(1)
    p = r.uniform(0, 1, (5, 4))
    p[0, 1] = 0.0  # clamped to 1e-20
    lab = r.integers(0, 4, 5)
    h = r.uniform(0, 1, (4, 4)).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.num, blob.channels, blob.height, blob.width = 1, 1, 4, 4
    blob.data.extend(h.ravel().tolist())
    src = tmp_path / "H.binaryproto"
    src.write_bytes(blob.SerializeToString())
    ref_loss, ref_g = _infogain_ref(p, lab, h.astype(np.float64))
    layer, ts = make(f'name: "i" type: "InfogainLoss" bottom: "p" bottom: "l" top: "loss" infogain_loss_param {{ source: "{src}" }}',
                     p, lab.astype(float))
    loss, (gp, _) = grads(layer, ts)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(gp, ref_g, rtol=1e-6)
    layer, ts = make('name: "i" type: "InfogainLoss" bottom: "p" bottom: "l" bottom: "H" top: "loss"', p, lab.astype(float), h)
    loss, (gp, _, gh) = grads(layer, ts, which=(0, 2))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    assert gh is None  # Caffe cannot backpropagate to the infogain matrix


def test_infogain_shape_errors():
    with pytest.raises(LayerSetupError, match="source or a third bottom"):
        make('name: "i" type: "InfogainLoss" bottom: "p" bottom: "l" top: "loss"', np.ones((2, 3)), np.zeros(2))
    layer, _ = make('name: "i" type: "InfogainLoss" bottom: "p" bottom: "l" bottom: "H" top: "loss"',
                    np.ones((2, 3)), np.zeros(2), np.ones((2, 2)))
    with pytest.raises(LayerSetupError, match="3 x 3"):
        layer.reshape([(2, 3), (2,), (2, 2)])


def test_softmax_with_loss_two_tops_and_prob_diff_ignored():
    r = np.random.default_rng(2)
    x, lab = r.standard_normal((6, 4)), r.integers(0, 4, 6)
    layer, ts = make('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" top: "prob"', x, lab.astype(float))
    assert layer.default_loss_weights() == [1.0, 0.0]
    xt = ts[0].clone().requires_grad_(True)
    loss, prob = layer(xt, ts[1])
    np.testing.assert_allclose(prob.detach().numpy(), softmax(x), rtol=1e-12)
    assert not prob.requires_grad  # Caffe ignores the prob top's diff
    (loss * 2).backward()
    ref = softmax(x)
    ref[np.arange(6), lab] -= 1
    np.testing.assert_allclose(xt.grad.numpy(), ref * 2 / 6, rtol=1e-12)


def test_softmax_with_loss_all_ignored_and_flt_min_clamp():
    x = np.array([[0.0, 200.0], [1.0, 2.0]])
    layer, ts = make('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" loss_param { ignore_label: 9 }',
                     x, [9.0, 9.0])
    loss, (g, _) = grads(layer, ts)
    assert loss == 0.0 and not g.any()  # VALID normalizer max(0, 1): no NaN
    layer, ts = make('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" loss_param { normalization: NONE }',
                     x, [0.0, 1.0])
    loss, (g, _) = grads(layer, ts)
    p = softmax(x)
    np.testing.assert_allclose(loss, -np.log(1.17549435e-38) - np.log(p[1, 1]), rtol=1e-9)
    ref = p.copy()
    ref[0, 0] -= 1
    ref[1, 1] -= 1
    np.testing.assert_allclose(g, ref, rtol=1e-12)  # Caffe's gradient ignores the clamp


def test_sigmoid_cross_entropy_ignore_and_valid():
    r = np.random.default_rng(3)
    x, t = r.standard_normal((3, 4)) * 3, r.integers(0, 2, (3, 4)).astype(float)
    t[1, :3] = -1
    layer, ts = make('name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '
                     'loss_param { ignore_label: -1 normalization: VALID }', x, t)
    loss, (g, _) = grads(layer, ts)
    valid = t != -1
    ell = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    np.testing.assert_allclose(loss, ell[valid].sum() / valid.sum(), rtol=1e-12)
    np.testing.assert_allclose(g, np.where(valid, 1 / (1 + np.exp(-x)) - t, 0) / valid.sum(), rtol=1e-12)


def test_multinomial_logistic_clamps_and_contrastive_legacy():
    p = np.array([[0.0, 0.5], [0.25, 0.75]])
    layer, ts = make('name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "loss"', p, [0.0, 1.0])
    loss, (g, _) = grads(layer, ts)
    np.testing.assert_allclose(loss, -(np.log(1e-20) + np.log(0.75)) / 2, rtol=1e-12)
    np.testing.assert_allclose(g, [[-0.5 / 1e-20, 0], [0, -0.5 / 0.75]], rtol=1e-12)
    r = np.random.default_rng(4)
    a, b, sim = r.standard_normal((5, 3)) * 0.4, r.standard_normal((5, 3)) * 0.4, np.array([1.0, 0, 0, 1, 0])
    layer, ts = make('name: "c" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" top: "loss" '
                     'contrastive_loss_param { margin: 0.8 legacy_version: true }', a, b, sim)
    loss, (ga, gb, gs) = grads(layer, ts, which=(0, 1, 2))
    d = a - b
    d2 = (d * d).sum(1)
    m = np.float64(np.float32(0.8))
    np.testing.assert_allclose(loss, np.where(sim == 1, d2, np.maximum(m - d2, 0)).sum() / 10, rtol=1e-12)
    coef = np.where(sim == 1, 1.0, np.where(m - d2 > 0, -1.0, 0.0)) / 5
    np.testing.assert_allclose(ga, d * coef[:, None], rtol=1e-12)
    np.testing.assert_allclose(gb, -d * coef[:, None], rtol=1e-12)
    assert gs is None


# -- metrics ------------------------------------------------------------------------------------
def test_accuracy_ties_rank_larger_index_first():
    # partial_sort with greater<pair<value, index>>: ties put the LARGER class index first
    x = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [2.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    lab = np.array([0.0, 1.0, 1.0, 2.0])
    layer, ts = make('name: "a" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" top: "pc"', x, lab)
    acc, pc = layer(*ts)
    assert float(acc) == 0.5  # sample 1 (label 1 wins tie over 0) and sample 3 (label 2 is the largest index)
    np.testing.assert_array_equal(pc.numpy(), [0.0, 0.5, 1.0])
    layer, ts = make('name: "a" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" accuracy_param { top_k: 2 }', x, lab)
    assert float(layer(*ts)) == 0.75  # sample 2: [2, 1, 1] label 1 ranks third (class 2 wins the tie)


def test_accuracy_all_ignored_is_nan_and_unseen_class_zero():
    layer, ts = make('name: "a" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" top: "pc" accuracy_param { ignore_label: 1 }',
                     np.eye(3)[:2], [1.0, 1.0])
    acc, pc = layer(*ts)
    assert np.isnan(float(acc)) and not pc.numpy().any()


def test_argmax_ties_and_shape_without_axis():
    x = np.zeros((2, 2, 1, 3))
    x[0, 0, 0, 1] = x[0, 1, 0, 2] = 5.0
    layer, ts = make('name: "m" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 3 out_max_val: true }', x)
    assert layer.reshape([x.shape]) == [(2, 2, 3, 1)]
    y = layer(*ts).numpy()
    assert y.shape == (2, 2, 3, 1)
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 1, 4], [5, 5, 0]])  # tie 5@1, 5@5 -> 5 first
    np.testing.assert_array_equal(y[1, 0, :, 0], [5, 4, 3])
    layer, ts = make('name: "m" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 3 out_max_val: true }', x)
    assert layer(*ts).shape == (2, 2, 1, 1)


# -- utility ------------------------------------------------------------------------------------
def test_concat_and_slice_legacy_fields_and_errors():
    a, b = np.ones((2, 3)), np.zeros((2, 1))
    layer, ts = make('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { concat_dim: 1 }', a, b)
    assert layer.reshape([(2, 3), (2, 1)]) == [(2, 4)]
    with pytest.raises(LayerSetupError, match="not both"):
        make('name: "c" type: "Concat" bottom: "a" top: "y" concat_param { concat_dim: 1 axis: 1 }', a)[0].reshape([(2, 3)])
    with pytest.raises(LayerSetupError, match="same shape"):
        layer.reshape([(2, 3), (3, 1)])
    layer, ts = make('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" slice_param { slice_dim: 1 }', np.ones((2, 6)))
    assert layer.reshape([(2, 6)]) == [(2, 2)] * 3
    with pytest.raises(LayerSetupError, match="evenly divide"):
        layer.reshape([(2, 7)])


def test_eltwise_max_tie_routing_and_prod_modes():
    a = np.array([1.0, 2.0, 3.0, 0.5])
    b = np.array([1.0, 1.0, 3.0, 0.5])
    c = np.array([0.0, 2.0, 3.0, 0.7])
    layer, ts = make('name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" eltwise_param { operation: MAX }', a, b, c)
    y, (ga, gb, gc) = grads(layer, ts, which=(0, 1, 2))
    # a == b -> b wins (Caffe tests a > b); c must be strictly greater than the running max
    np.testing.assert_array_equal(ga, [0, 1, 0, 0])
    np.testing.assert_array_equal(gb, [1, 0, 1, 0])
    np.testing.assert_array_equal(gc, [0, 0, 0, 1])
    z = np.array([0.0, 2.0])
    for stable, expect_nan in (("true", False), ("false", True)):
        layer, ts = make(f'name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" '
                         f'eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}', z, [3.0, 4.0])
        _, (gz, gw) = grads(layer, ts, which=(0, 1))
        np.testing.assert_allclose(gz, [np.nan if expect_nan else 3.0, 4.0])  # unstable: top/bottom = 0/0
        np.testing.assert_allclose(gw, [0.0, 2.0])
    with pytest.raises(LayerSetupError, match="one coefficient per bottom"):
        make('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { coeff: 1 }', z, z)


def test_flatten_reshape_crop_options_and_errors():
    x = np.zeros((2, 3, 4, 5))
    layer, _ = make('name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: -2 }', x)
    assert layer.reshape([x.shape]) == [(2, 12, 5)]
    layer, _ = make('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 1 dim: -1 } axis: -1 }', x)
    assert layer.reshape([x.shape]) == [(2, 3, 4, 5, 1, 1)]
    layer, _ = make('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 } axis: 1 num_axes: 2 }', x)
    assert layer.reshape([x.shape]) == [(2, 12, 5)]
    with pytest.raises(LayerSetupError, match="multiple -1"):
        make('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: -1 dim: -1 } }', x)
    layer, _ = make('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 7 dim: -1 } }', x)
    with pytest.raises(LayerSetupError, match="cannot infer"):
        layer.reshape([x.shape])
    layer, ts = make('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y"', np.arange(2 * 3 * 4 * 5.0).reshape(x.shape), np.zeros((1, 1, 2, 3)))
    y, (gx, gr) = grads(layer, ts, which=(0, 1))
    assert y.shape == (2, 3, 2, 3) and gr is None and gx.sum() == y.size
    np.testing.assert_array_equal(y, ts[0].numpy()[:, :, :2, :3])
    with pytest.raises(LayerSetupError, match="invalid crop"):
        make('name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { offset: 3 }', x, np.zeros((2, 3, 2, 3)))[0].reshape(
            [x.shape, (2, 3, 2, 3)])


def test_reduction_mean_coeff_is_float32():
    x = np.ones((2, 3))
    layer, ts = make('name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: MEAN axis: 1 coeff: 0.1 }', x)
    np.testing.assert_array_equal(layer(*ts).numpy(), [float(np.float32(np.float32(0.1) / np.float32(3))) * 3] * 2)


def test_silence_parameter_batchreindex_filter():
    net = Net(text_format.Parse('''
      force_backward: true
      layer { name: "in" type: "Input" top: "x" top: "i" top: "s" input_param { shape { dim: 4 dim: 2 } shape { dim: 5 } shape { dim: 4 } } }
      layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 4 dim: 2 } } }
      layer { name: "add" type: "Eltwise" bottom: "x" bottom: "w" top: "xw" }
      layer { name: "re" type: "BatchReindex" bottom: "xw" bottom: "i" top: "y" }
      layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "fx" }
      layer { name: "sil" type: "Silence" bottom: "fx" }''', caffe_pb2.NetParameter()), 1)
    assert net.blob_shapes["fx"] == (4, 2)  # Filter's first reshape: the whole batch
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    net.set_blob("x", torch.from_numpy(x))
    net.set_blob("i", torch.tensor([3.0, 0, 3, 1, 3]))
    net.set_blob("s", torch.tensor([0.0, 1, 0, 2]))
    with torch.no_grad():
        net.layer("w").blobs[0].copy_(torch.full((4, 2), 10.0))
    net.forward()
    np.testing.assert_array_equal(net.blob_data["y"].detach().numpy(), (x + 10)[[3, 0, 3, 1, 3]])
    np.testing.assert_array_equal(net.blob_data["fx"].detach().numpy(), x[[1, 3]])
    assert net.layer("f").reshape([(4, 2), (4,)]) == [(2, 2)]
    net.clear_param_diffs()
    net.backward({"y": torch.ones(5, 2)})
    counts = np.array([1.0, 1, 0, 3])[:, None] * np.ones((1, 2))
    np.testing.assert_array_equal(net.blob_diff("x").numpy(), counts)  # Silence adds nothing
    np.testing.assert_array_equal(net.layer("w").blobs[0].grad.numpy(), counts)
    np.testing.assert_array_equal(net.blob_diff("i").numpy(), 0)
    net.forward()
    net.backward({"y": torch.ones(5, 2)})  # the Parameter blob's diff accumulates like any param diff
    np.testing.assert_array_equal(net.layer("w").blobs[0].grad.numpy(), 2 * counts)


def test_filter_backward_zero_for_dropped_items():
    layer, ts = make('name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"', np.ones((3, 2)), [1.0, 0.0, 1.0])
    y, (gx, gs) = grads(layer, ts, which=(0,))
    np.testing.assert_array_equal(gx, [[1, 1], [0, 0], [1, 1]])
    assert y.shape == (2, 2) and gs is None


def test_embed_without_bias_accumulates_repeated_indices():
    layer, ts = make('name: "e" type: "Embed" bottom: "i" top: "y" embed_param { num_output: 2 input_dim: 3 bias_term: false '
                     'weight_filler { type: "uniform" } }', [[2.0, 0.0, 2.0]])
    assert len(layer.blobs) == 1 and tuple(layer.blobs[0].shape) == (3, 2)
    y = layer(*ts)
    np.testing.assert_array_equal(y.detach().numpy()[0], layer.blobs[0].detach().numpy()[[2, 0, 2]])
    y.backward(torch.ones_like(y))
    np.testing.assert_array_equal(layer.blobs[0].grad.numpy(), [[1, 1], [0, 0], [2, 2]])


def test_dummy_data_refill_rules():
    rng.set_seed(0)
    layer, _ = make('name: "d" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
                    'data_filler { type: "constant" value: 3 } data_filler { type: "gaussian" std: 2 } '
                    'data_filler { type: "uniform" } num: 2 channels: 3 height: 1 width: 4 }')
    assert layer.reshape([]) == [(2, 3, 1, 4)] * 3
    a1, b1, c1 = layer()
    a2, b2, c2 = layer()
    assert a1 is a2 and float(a1.unique()) == 3.0  # constant: filled once
    assert not torch.equal(b1, b2) and not torch.equal(c1, c2)  # other fillers: refilled every forward
    layer, _ = make('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { data_filler { type: "gaussian" } '
                    'shape { dim: 2 } shape { dim: 3 dim: 1 } }')
    a, b = layer()
    assert a.shape == (2,) and b.shape == (3, 1) and a.abs().sum() > 0  # one non-constant filler for every top
    layer, _ = make('name: "d" type: "DummyData" top: "a" dummy_data_param { shape { dim: 2 } }')
    assert not layer()[0].any()  # no filler: constant 0
    with pytest.raises(LayerSetupError, match="both shape and legacy"):
        make('name: "d" type: "DummyData" top: "a" dummy_data_param { shape { dim: 2 } num: 1 }')


def test_softmax_loss_refuses_a_normalization_it_does_not_know():
    """R-FCN's PRE_FIXED belongs to SmoothL1Loss(OHEM); Caffe's SoftmaxWithLoss stops at "Unknown
    normalization mode" (get_normalizer), here at setup, naming the mode."""
    from google.protobuf import text_format

    from neocaffe.layers.base import LayerSetupError
    from neocaffe.layers.registry import get_layer_class
    from neocaffe.proto import caffe_pb2

    p = text_format.Parse('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" '
                          "loss_param { normalization: PRE_FIXED }", caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match=r"loss_param.normalization PRE_FIXED is unknown to SoftmaxWithLoss"):
        get_layer_class("SoftmaxWithLoss")(p, [(2, 3), (2,)])
