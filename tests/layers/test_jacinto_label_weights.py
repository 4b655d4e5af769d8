"""caffe-jacinto's SoftmaxWithLoss ``loss_param.label_weights`` (mathmanu/caffe-jacinto caffe-0.17 @ 2678b2b8) against
loop ports of the fork's Forward_cpu / Backward_cpu (tests/layers/jacinto_reference.py): the weighted loss, the
unweighted count in the normalizer, the unweighted diff; the checks; nets without the field unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.layers.softmax_loss import _WeightedSoftmaxLossFn
from neocaffe.proto import caffe_pb2
from tests.layers import jacinto_reference as ref

WEIGHTS = [0.5, 2.0, 1.25, 0.0, 3.0]
MODES = {"FULL": ref.FULL, "VALID": ref.VALID, "BATCH_SIZE": ref.BATCH_SIZE, "NONE": ref.NONE}


def _loss(loss_param: str, shape, name: str = "SoftmaxWithLoss"):
    lp = text_format.Parse(f'name: "loss" type: "{name}" bottom: "x" bottom: "label" top: "loss" '
                           f'loss_param {{ {loss_param} }}', caffe_pb2.LayerParameter())
    label_shape = (shape[0],) + tuple(shape[2:])
    return get_layer_class(name)(lp, [shape, label_shape])


def _weights_text(weights) -> str:
    return " ".join(f"label_weights: {w}" for w in weights)


def _case(seed: int, shape=(2, 5, 3, 4), ignore: int | None = 255):
    g = np.random.default_rng(seed)
    x = g.standard_normal(shape) * 3
    label = g.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.float64)
    if ignore is not None:
        label.reshape(-1)[g.choice(label.size, label.size // 4, replace=False)] = ignore
    return x, label


def _run(layer, x, label, top_diff: float = 1.0):
    xt = torch.tensor(x, requires_grad=True)
    loss = layer(xt, torch.tensor(label))
    loss.backward(torch.tensor(top_diff, dtype=xt.dtype))
    return float(loss.detach()), xt.grad.numpy()


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("ignore", [255, None])
def test_forward_and_diff_match_the_forks_loops(mode, ignore):
    x, label = _case(len(mode) + (ignore or 0), ignore=ignore)
    text = f"{_weights_text(WEIGHTS)} normalization: {mode}" + (f" ignore_label: {ignore}" if ignore else "")
    layer = _loss(text, x.shape)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        loss, diff = _run(layer, x.astype(dtype), label.astype(dtype), top_diff=1.5)
        want, prob = ref.softmax_loss_forward(x.astype(dtype), label, WEIGHTS, ignore, MODES[mode])
        assert loss == pytest.approx(want, rel=tol, abs=tol)
        np.testing.assert_allclose(diff, ref.softmax_loss_backward(prob, label, ignore, MODES[mode], 1.5),
                                   rtol=tol, atol=tol)


def test_the_normalizer_counts_positions_not_weights():
    x, label = _case(3)
    valid = int((label != 255).sum())
    weighted = _run(_loss(f"{_weights_text(WEIGHTS)} ignore_label: 255 normalization: VALID", x.shape), x, label)
    plain = _run(_loss("ignore_label: 255 normalization: NONE", x.shape), x, label)
    g = np.log(ref.softmax(x, 1))
    lab = label.astype(int)
    terms = [-g[n, lab[n, h, w], h, w] * WEIGHTS[lab[n, h, w]] for n in range(2) for h in range(3) for w in range(4)
             if lab[n, h, w] != 255]
    assert weighted[0] == pytest.approx(sum(terms) / valid, rel=1e-12)
    np.testing.assert_allclose(weighted[1] * valid, plain[1], rtol=1e-13, atol=1e-16)  # the unweighted diff


def test_all_ones_is_the_plain_loss_and_its_exact_gradient():
    x, label = _case(4)
    ones = _loss(f"{_weights_text([1] * 5)} ignore_label: 255", x.shape)
    plain = _loss("ignore_label: 255", x.shape)
    np.testing.assert_array_equal(_run(ones, x, label)[1], _run(plain, x, label)[1])
    assert _run(ones, x, label)[0] == _run(plain, x, label)[0]
    xt = torch.tensor(x, requires_grad=True)
    w = torch.ones(5, dtype=torch.float32)
    assert torch.autograd.gradcheck(lambda t: _WeightedSoftmaxLossFn.apply(t, torch.tensor(label), 1, 255, 1, w)[0],
                                    (xt,), eps=1e-6, atol=1e-8)


def test_the_diff_is_the_gradient_of_the_unweighted_loss():
    """Neither of the fork's backwards reads the weights: the weighted layer's diff is the float64
    finite-difference gradient of the UNweighted loss (and not of its own)."""
    x, label = _case(5, shape=(1, 5, 2, 3))
    layer = _loss(f"{_weights_text(WEIGHTS)} ignore_label: 255", x.shape)
    _, diff = _run(layer, x, label)
    plain = _loss("ignore_label: 255", x.shape)
    numeric = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1e-6
        e = e.reshape(x.shape)
        numeric.reshape(-1)[i] = (_run(plain, x + e, label)[0] - _run(plain, x - e, label)[0]) / 2e-6
    np.testing.assert_allclose(diff, numeric, atol=1e-8)
    own = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = 1e-6
        e = e.reshape(x.shape)
        own.reshape(-1)[i] = (_run(layer, x + e, label)[0] - _run(layer, x - e, label)[0]) / 2e-6
    assert np.abs(own - diff).max() > 1e-3


def test_in_a_net_with_loss_weight():
    text = ('force_backward: true\nlayer { name: "in" type: "Input" top: "x" top: "label" input_param { '
            'shape { dim: 2 dim: 5 dim: 3 dim: 4 } shape { dim: 2 dim: 1 dim: 3 dim: 4 } } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" loss_weight: 2.5 '
            f'propagate_down: true propagate_down: false loss_param {{ ignore_label: 255 {_weights_text(WEIGHTS)} '
            'normalization: VALID } }')
    net = Net(read_net(text), caffe_pb2.TRAIN)
    x, label = _case(6)
    x, label = x.astype(np.float32), label.reshape(2, 1, 3, 4).astype(np.float32)
    net.set_blob("x", torch.as_tensor(x))
    net.set_blob("label", torch.as_tensor(label))
    net.forward()
    net.backward()
    want, prob = ref.softmax_loss_forward(x, label, WEIGHTS, 255, ref.VALID)
    assert float(net.blob("loss")) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(net.blob_diff("x").numpy(), ref.softmax_loss_backward(prob, label, 255, ref.VALID, 2.5),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("text,shape,match", [
    (_weights_text(WEIGHTS[:4]), (2, 5, 3, 4), r"loss_param.label_weights lists 4 weights; expected one per class: 5 "
                                               r"\(axis 1 of prediction shape \(2, 5, 3, 4\)\)"),
    (_weights_text(WEIGHTS + [1]), (2, 5, 3, 4), r"loss_param.label_weights lists 6 weights; expected one per class: 5"),
    (_weights_text(WEIGHTS) + " label_smoothing: 0.1", (2, 5, 3, 4),
     r"loss_param.label_weights is caffe-jacinto's SoftmaxWithLoss's .*label_smoothing 0.1$"),
])
def test_what_is_refused(text, shape, match):
    with pytest.raises(LayerSetupError, match=r"layer 'loss' \(SoftmaxWithLoss\): " + match):
        layer = _loss(text, shape)
        layer.reshape([shape, (shape[0],) + shape[2:]])


def test_without_label_weights_nothing_changes():
    x, label = _case(7)
    layer = _loss("ignore_label: 255", x.shape)
    assert layer.n_weights == 0 and not hasattr(layer, "label_weights")
    loss, diff = _run(layer, x, label)
    want, prob = ref.softmax_loss_forward(x, label, None, 255, ref.VALID)
    assert loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(diff, ref.softmax_loss_backward(prob, label, 255, ref.VALID, 1.0), atol=1e-13)


@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    x, label = _case(8)
    layer = _loss(f"{_weights_text(WEIGHTS)} ignore_label: 255 normalization: VALID", x.shape)
    want = _run(layer, x, label)
    layer = layer.to("cuda")
    xt = torch.tensor(x, device="cuda", requires_grad=True)
    loss = layer(xt, torch.tensor(label, device="cuda"))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(want[0], rel=1e-10)
    np.testing.assert_allclose(xt.grad.cpu().numpy(), want[1], rtol=1e-10, atol=1e-12)
