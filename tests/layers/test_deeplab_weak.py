"""DeepLab's weak-supervision layers (hszhao/PSPNet ``unique_label_layer.cpp``, ``bias_channel_layer.cpp``,
``adaptive_bias_channel_layer.cpp``) against plain-loop ports of the fork, the errors, and an
EM-Adapt style net (UniqueLabel -> AdaptiveBiasChannel -> ArgMax as the target of SoftmaxWithLoss)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def _layer(text, shapes):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, [tuple(s) for s in shapes])


def _fork_unique(label, max_labels, ignore, force):
    n = label.shape[0]
    top = np.full((n, max_labels, 1, 1), -1, np.float32)
    for i in range(n):
        vals = {float(v) for v in label[i].ravel() if float(v) not in ignore} | set(force)
        assert len(vals) <= max_labels
        for j, v in enumerate(sorted(vals)):
            top[i, j, 0, 0] = v
    return top


def test_unique_label_lists_sorted_values_with_forced_ones():
    g = np.random.default_rng(0)
    label = g.integers(0, 6, (3, 1, 4, 5)).astype(np.float32)
    label[0][label[0] > 2] = 255
    label[2] = 4
    layer = _layer('name: "u" type: "UniqueLabel" bottom: "l" top: "u" unique_label_param { max_labels: 8 '
                   "ignore_label: 255 force_label: 0 force_label: 7 }", [label.shape])
    out = layer(torch.from_numpy(label))
    np.testing.assert_array_equal(out.numpy(), _fork_unique(label, 8, {255.0}, {0.0, 7.0}))
    assert out[2, :, 0, 0].tolist() == [0, 4, 7, -1, -1, -1, -1, -1]
    small = _layer('name: "u" type: "UniqueLabel" bottom: "l" top: "u" unique_label_param { max_labels: 3 }',
                   [label.shape])
    with pytest.raises(LayerSetupError, match=r"layer 'u'.*image 1 has \d distinct labels .*max_labels is 3"):
        small(torch.from_numpy(label))
    with pytest.raises(LayerSetupError, match=r"max_labels \(1\) must exceed the number of force_label values \(1\)"):
        _layer('name: "u" type: "UniqueLabel" bottom: "l" top: "u" unique_label_param { max_labels: 1 '
               "force_label: 0 }", [label.shape])


def _fork_bias_image(x, labels, bg, fg, ignore):
    top = x.copy()
    for n in range(x.shape[0]):
        for v in labels[n].ravel():
            lab = int(v)
            if lab in ignore:
                continue
            assert 0 <= lab < x.shape[1]
            top[n, lab] += np.float32(bg if lab == 0 else fg)
    return top


def _fork_bias_pixel(x, label, bg, fg, ignore, background):
    top = x.copy()
    n, c, h, w = x.shape
    for i in range(n):
        for y in range(h):
            for z in range(w):
                lab = int(label[i, 0, y, z])
                if lab in ignore:
                    continue
                if background is not None:
                    top[i, background, y, z] += np.float32(bg)
                    if lab != background:
                        top[i, lab, y, z] += np.float32(fg)
                else:
                    top[i, lab, y, z] += np.float32(fg)
    return top


def test_bias_channel_image_and_pixel_labels():
    g = np.random.default_rng(1)
    x = g.standard_normal((2, 4, 3, 5)).astype(np.float32)
    lists = np.array([[0, 3, 3, -1], [2, -1, 255, -1]], np.float32).reshape(2, 4, 1, 1)  # 3 listed twice: biased twice
    layer = _layer('name: "b" type: "BiasChannel" bottom: "x" bottom: "l" top: "y" bias_channel_param { '
                   "ignore_label: 255 bg_bias: 1.5 fg_bias: 2.5 }", [x.shape, lists.shape])
    np.testing.assert_array_equal(layer(torch.from_numpy(x), torch.from_numpy(lists)).numpy(),
                                  _fork_bias_image(x, lists, 1.5, 2.5, {-1, 255}))
    pix = g.integers(0, 4, (2, 1, 3, 5)).astype(np.float32)
    pix[0, 0, 0] = 255
    pix[1, 0, 1, :2] = -1
    for fields, background in (("", None), ("background_label: 1 bg_bias: 0.5", 1), ("bg_bias: 0.25", 0)):
        layer = _layer('name: "b" type: "BiasChannel" bottom: "x" bottom: "l" top: "y" bias_channel_param { '
                       f"label_type: PIXEL ignore_label: 255 fg_bias: 3 {fields} }}", [x.shape, pix.shape])
        p = layer.param.bias_channel_param
        want = _fork_bias_pixel(x, pix, p.bg_bias, 3.0, {-1, 255}, background)
        np.testing.assert_array_equal(layer(torch.from_numpy(x), torch.from_numpy(pix)).numpy(), want)
    xs = torch.from_numpy(x).requires_grad_(True)
    layer(xs, torch.from_numpy(pix)).mul(torch.arange(60.0).reshape(1, 4, 3, 5)).sum().backward()
    np.testing.assert_array_equal(xs.grad.numpy(), np.broadcast_to(np.arange(60.0).reshape(1, 4, 3, 5), x.shape))


def test_bias_channel_errors():
    x, lists = torch.zeros(1, 3, 2, 2), torch.tensor([[[[5.0]]]])
    layer = _layer('name: "b" type: "BiasChannel" bottom: "x" bottom: "l" top: "y"', [x.shape, lists.shape])
    with pytest.raises(LayerSetupError, match=r"unexpected label 5; expected 0..2 or an ignored label \[-1\]"):
        layer(x, lists)
    with pytest.raises(LayerSetupError, match=r"label_type PIXEL: bottom 1 must be a label image \(N, 1, H, W\) for "
                                              r"scores \(1, 3, 2, 2\); received \(1, 1, 2, 3\)"):
        _layer('name: "b" type: "BiasChannel" bottom: "x" bottom: "l" top: "y" bias_channel_param { label_type: PIXEL }',
               [x.shape, (1, 1, 2, 3)]).reshape([(1, 3, 2, 2), (1, 1, 2, 3)])
    with pytest.raises(LayerSetupError, match=r"bg_bias and fg_bias must be >= 0; received -1.0, 2.0"):
        _layer('name: "b" type: "BiasChannel" bottom: "x" bottom: "l" top: "y" bias_channel_param { bg_bias: -1 }',
               [x.shape, lists.shape])


def _fork_adaptive(x, lists, num_iter, bg_portion, fg_portion, suppress, margin, g):
    """The fork's loops; ``g`` draws the label orders as the layer's generator does."""
    top = x.astype(np.float32).copy()
    n, c, h, w = x.shape
    m = h * w
    for i in range(n):
        labels = sorted(int(v) for v in lists[i].ravel() if int(v) != -1)
        if not labels:
            continue
        bg = int(labels[0] == 0)
        t = top[i].reshape(c, m)
        if suppress:
            low = np.full(m, np.finfo(np.float32).max, np.float32)
            for k in range(c):
                if k in labels:
                    low = np.minimum(low, t[k])
            for k in range(c):
                if k not in labels:
                    t[k] = np.where(t[k] > low, low - np.float32(margin), t[k])
        ext = t[labels[0]].copy()
        for lab in labels[1:]:
            ext = np.maximum(ext, t[lab])
        mean0 = ext.astype(np.float64).mean()
        for _ in range(num_iter):
            labels[bg:] = [labels[bg + int(j)] for j in g.permutation(len(labels) - bg)]
            for lab in labels:
                nth = int(np.float32(bg_portion if lab == 0 else fg_portion) * np.float32(m))
                diff = ext - t[lab]
                t[lab] = t[lab] + np.partition(diff, nth)[nth]
                ext = np.maximum(ext, t[lab])
        t += np.float32(mean0 - ext.astype(np.float64).mean())
    return top


@pytest.mark.parametrize("suppress", [False, True])
def test_adaptive_bias_channel_matches_the_forks_loops(suppress):
    gx = np.random.default_rng(2)
    x = gx.standard_normal((3, 5, 6, 7)).astype(np.float32)
    lists = np.array([[0, 2, 4, -1], [1, 3, -1, -1], [-1, -1, -1, -1]], np.float32).reshape(3, 4, 1, 1)
    layer = _layer('name: "a" type: "AdaptiveBiasChannel" bottom: "x" bottom: "l" top: "y" adaptive_bias_channel_param '
                   f"{{ num_iter: 3 bg_portion: 0.4 fg_portion: 0.15 suppress_others: {str(suppress).lower()} "
                   "margin_others: 0.5 }", [x.shape, lists.shape])
    rng.set_seed(9)
    out = layer(torch.from_numpy(x), torch.from_numpy(lists)).numpy()
    rng.set_seed(9)
    want = _fork_adaptive(x, lists, 3, 0.4, 0.15, suppress, 0.5, rng.numpy_rng())
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(out[2], x[2])  # no labels: unchanged
    if suppress:  # absent classes never beat the present ones before the shift
        assert (out[1, [0, 2, 4]].max(0) <= out[1, [1, 3]].max(0)).all()


def test_adaptive_bias_channel_errors():
    shapes = [(1, 3, 2, 2), (1, 2, 1, 1)]
    with pytest.raises(LayerSetupError, match=r"fg_portion must be in \[0, 1\]; received 1.5"):
        _layer('name: "a" type: "AdaptiveBiasChannel" bottom: "x" bottom: "l" top: "y" '
               "adaptive_bias_channel_param { fg_portion: 1.5 }", shapes)
    layer = _layer('name: "a" type: "AdaptiveBiasChannel" bottom: "x" bottom: "l" top: "y"', shapes)
    with pytest.raises(LayerSetupError, match=r"unexpected label 3; expected 0..2"):
        layer(torch.zeros(1, 3, 2, 2), torch.tensor([3.0, -1.0]).reshape(1, 2, 1, 1))


def test_em_adapt_style_net_trains():
    """UniqueLabel of the label image -> AdaptiveBiasChannel of the scores -> ArgMax: the pixel target
    of SoftmaxWithLoss, as DeepLab's weakly supervised nets wire them; the loss falls."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import TRAIN

    net_text = """
layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 }
  shape { dim: 4 dim: 1 dim: 8 dim: 8 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "labels" type: "UniqueLabel" bottom: "label" top: "labels" unique_label_param { max_labels: 3 } }
layer { name: "adapt" type: "AdaptiveBiasChannel" bottom: "score" bottom: "labels" top: "adapted"
  adaptive_bias_channel_param { bg_portion: 0.5 fg_portion: 0.2 } }
layer { name: "target" type: "ArgMax" bottom: "adapted" top: "target" argmax_param { axis: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "target" top: "loss" }
"""
    net = Net(read_net(net_text), TRAIN)
    g = np.random.default_rng(3)
    cls = np.zeros((4, 1, 8, 8), np.float32)
    cls[:, :, 2:6, 2:6] = 1
    cls[2:, :, 2:6, 2:6] = 2
    data = torch.from_numpy(np.eye(3, dtype=np.float32)[cls[:, 0].astype(int)].transpose(0, 3, 1, 2)
                            + 0.1 * g.standard_normal((4, 3, 8, 8)).astype(np.float32))
    losses = []
    for _ in range(30):
        net.clear_param_diffs()
        losses.append(float(net.forward({"data": data, "label": torch.from_numpy(cls)})))
        net.backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.5 * p.grad
    assert losses[-1] < 0.5 * losses[0], losses
