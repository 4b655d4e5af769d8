"""DeepLab's DomainTransform (hszhao/PSPNet ``domain_transform_layer.cpp``) against a plain-loop port of the
fork's Forward_cpu and Backward_cpu (intermediate results, weight diffs, reference-gradient diffs), the
per-image size, the forward-only variant, the errors, and a DT-EdgeNet style net that trains."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

F = np.float32


def _fork(x, g, dims, num_iter, spatial, rng_sigma, min_w, top_diff):
    """Forward and backward of the fork for float32 arrays: (top, bottom0 diff, bottom1 diff)."""
    n, c, hh, ww = x.shape
    top = x.astype(F).copy()
    dx, dg = top_diff.astype(F).copy(), np.zeros_like(g, dtype=F)

    def sigma(k):
        return F(spatial * math.sqrt(3.0) * 2.0 ** (num_iter - (k + 1.0)) / math.sqrt(4.0 ** num_iter - 1.0))

    def weights(i, h, w, k):
        m1, m2 = F(-math.sqrt(2.0) / sigma(k)), F(F(spatial) / F(rng_sigma))
        wt = np.zeros((hh, ww), F)
        for a in range(h):
            for b in range(w):
                arg = F(m1 * F(F(1) + F(g[i, 0, a, b] * m2)))
                wt[a, b] = min(max(F(math.exp(float(arg))), F(min_w)), F(1))
        return wt, m1, m2

    for i in range(n):
        h, w = int(dims[i].ravel()[0]), int(dims[i].ravel()[1])
        inter = {}
        for k in range(num_iter):
            wt, _, _ = weights(i, h, w, k)
            for ch in range(c):
                y = top[i, ch]
                for p in range(4):
                    r = np.zeros((hh, ww), F)
                    if p == 0:
                        for a in range(h):
                            for b in range(1, w):
                                r[a, b] = y[a, b - 1] - y[a, b]
                                y[a, b] = y[a, b] + wt[a, b] * r[a, b]
                    elif p == 1:
                        for a in range(h):
                            for b in range(w - 2, -1, -1):
                                r[a, b] = y[a, b + 1] - y[a, b]
                                y[a, b] = y[a, b] + wt[a, b + 1] * r[a, b]
                    elif p == 2:
                        for b in range(w):
                            for a in range(1, h):
                                r[a, b] = y[a - 1, b] - y[a, b]
                                y[a, b] = y[a, b] + wt[a, b] * r[a, b]
                    else:
                        for b in range(w):
                            for a in range(h - 2, -1, -1):
                                r[a, b] = y[a + 1, b] - y[a, b]
                                y[a, b] = y[a, b] + wt[a + 1, b] * r[a, b]
                    inter[k, p, ch] = r
        for k in range(num_iter - 1, -1, -1):
            wt, m1, m2 = weights(i, h, w, k)
            wd = np.zeros((hh, ww), F)
            for ch in range(c):
                o = dx[i, ch]
                for p in range(3, -1, -1):
                    r = inter[k, p, ch]
                    if p == 0:
                        for a in range(h):
                            for b in range(w - 1, 0, -1):
                                wd[a, b] += o[a, b] * r[a, b]
                                o[a, b - 1] += wt[a, b] * o[a, b]
                                o[a, b] = (1 - wt[a, b]) * o[a, b]
                    elif p == 1:
                        for a in range(h):
                            for b in range(w - 1):
                                wd[a, b + 1] += o[a, b] * r[a, b]
                                o[a, b + 1] += wt[a, b + 1] * o[a, b]
                                o[a, b] = (1 - wt[a, b + 1]) * o[a, b]
                    elif p == 2:
                        for b in range(w):
                            for a in range(h - 1, 0, -1):
                                wd[a, b] += o[a, b] * r[a, b]
                                o[a - 1, b] += wt[a, b] * o[a, b]
                                o[a, b] = (1 - wt[a, b]) * o[a, b]
                    else:
                        for b in range(w):
                            for a in range(h - 1):
                                wd[a + 1, b] += o[a, b] * r[a, b]
                                o[a + 1, b] += wt[a + 1, b] * o[a, b]
                                o[a, b] = (1 - wt[a + 1, b]) * o[a, b]
            dg[i, 0, :h, :w] += (m1 * m2 * wd * wt)[:h, :w]
    return top, dx, dg


def _layer(kind, fields, shapes):
    text = (f'name: "dt" type: "{kind}" bottom: "x" bottom: "g" bottom: "dim" top: "y" '
            f"domain_transform_param {{ {fields} }}")
    return get_layer_class(kind)(text_format.Parse(text, caffe_pb2.LayerParameter()), shapes)


@pytest.mark.parametrize("min_w, g_hi", [(0.0, 1.0), (0.3, 3.0)])  # 0.3: many weights clipped
def test_forward_and_backward_match_the_forks_loops(min_w, g_hi):
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 6, 7)).astype(F)
    g = r.uniform(0, g_hi, (2, 1, 6, 7)).astype(F)
    g[0, 0, 0, 0] = -0.9  # a weight above 1: clipped to 1
    dims = np.array([6, 7, 4, 5], F).reshape(2, 1, 1, 2)  # the second image fills 4x5 of the 6x7 blob
    top_diff = r.standard_normal(x.shape).astype(F)
    layer = _layer("DomainTransform", f"num_iter: 3 spatial_sigma: 20 range_sigma: 2 min_weight: {min_w}",
                   [x.shape, g.shape, dims.shape])
    xt, gt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(g).requires_grad_(True)
    out = layer(xt, gt, torch.from_numpy(dims))
    out.backward(torch.from_numpy(top_diff))
    want, dx, dg = _fork(x, g, dims, 3, 20.0, 2.0, min_w, top_diff)
    np.testing.assert_array_equal(out.detach().numpy(), want)  # the same float32 operations in the same order
    np.testing.assert_array_equal(out.detach().numpy()[1, :, 4:], x[1, :, 4:])  # outside the size: copied
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gt.grad.numpy(), dg, rtol=1e-4, atol=1e-6)
    assert (gt.grad.numpy()[1, 0, 4:] == 0).all()


def test_forward_only_variant_matches_and_propagates_nothing():
    r = np.random.default_rng(1)
    x, g = r.standard_normal((1, 2, 5, 5)).astype(F), r.uniform(0, 1, (1, 1, 5, 5)).astype(F)
    dims = torch.tensor([[[[5.0, 5.0]]]])
    fwd = _layer("DomainTransformForwardOnly", "", [x.shape, g.shape, (1, 1, 1, 2)])
    full = _layer("DomainTransform", "", [x.shape, g.shape, (1, 1, 1, 2)])
    xt = torch.from_numpy(x).requires_grad_(True)
    out = fwd(xt, torch.from_numpy(g), dims)
    assert not out.requires_grad
    np.testing.assert_array_equal(out.numpy(), full(torch.from_numpy(x), torch.from_numpy(g), dims).detach().numpy())


def test_errors_name_what_was_received_and_expected():
    with pytest.raises(LayerSetupError, match=r"domain_transform_param.spatial_sigma must be positive; received 0.0"):
        _layer("DomainTransform", "spatial_sigma: 0", [(1, 2, 3, 3), (1, 1, 3, 3), (1, 1, 1, 2)])
    layer = _layer("DomainTransform", "", [(1, 2, 3, 3), (1, 1, 3, 3), (1, 1, 1, 2)])
    with pytest.raises(LayerSetupError, match=r"bottom 1 \(reference gradient\) must be \(1, 1, 3, 3\) for scores "
                                              r"\(1, 2, 3, 3\); received \(1, 2, 3, 3\)"):
        layer.reshape([(1, 2, 3, 3), (1, 2, 3, 3), (1, 1, 1, 2)])
    with pytest.raises(LayerSetupError, match=r"image 0: size 4x3 \(bottom 2\) is not within the scores' 3x3"):
        layer(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3), torch.tensor([[[[4.0, 3.0]]]]))


def test_dt_edgenet_style_net_trains():
    """Scores and an edge map from one trunk, filtered by DomainTransform with the images' sizes
    (ImageSegData's data_dim in DeepLab's nets), into SoftmaxWithLoss: the loss falls and the edge
    branch receives gradient."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import TRAIN

    net = Net(read_net("""
layer { name: "in" type: "Input" top: "data" top: "label" top: "dim"
  input_param { shape { dim: 2 dim: 3 dim: 10 dim: 10 } shape { dim: 2 dim: 1 dim: 10 dim: 10 } shape { dim: 2 dim: 1 dim: 1 dim: 2 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "edge" type: "Convolution" bottom: "data" top: "edge"
  convolution_param { num_output: 1 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "edge_relu" type: "ReLU" bottom: "edge" top: "edge" }
layer { name: "dt" type: "DomainTransform" bottom: "score" bottom: "edge" bottom: "dim" top: "score_dt"
  domain_transform_param { num_iter: 2 spatial_sigma: 10 range_sigma: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score_dt" bottom: "label" top: "loss" }
"""), TRAIN)
    g = np.random.default_rng(4)
    cls = np.zeros((2, 1, 10, 10), F)
    cls[:, :, :, 5:] = 1
    data = torch.from_numpy(np.eye(3, dtype=F)[cls[:, 0].astype(int)].transpose(0, 3, 1, 2)
                            + 0.2 * g.standard_normal((2, 3, 10, 10)).astype(F))
    dims = torch.tensor([10.0, 10.0, 8.0, 9.0]).reshape(2, 1, 1, 2)
    losses = []
    for _ in range(25):
        net.clear_param_diffs()
        losses.append(float(net.forward({"data": data, "label": torch.from_numpy(cls), "dim": dims})))
        net.backward()
        assert float(net.params_by_layer()["edge"][0].grad.abs().sum()) > 0
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.5 * p.grad
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.gpu
def test_on_cuda_equals_the_cpu():
    r = np.random.default_rng(7)
    x = r.standard_normal((2, 3, 6, 7)).astype(F)
    g = r.uniform(0, 1, (2, 1, 6, 7)).astype(F)
    dims = np.array([6, 7, 5, 4], F).reshape(2, 1, 1, 2)
    top_diff = r.standard_normal(x.shape).astype(F)
    got = []
    for device in ("cpu", "cuda"):
        layer = _layer("DomainTransform", "num_iter: 3 spatial_sigma: 20 range_sigma: 2", [x.shape, g.shape, dims.shape])
        xt = torch.tensor(x, device=device, requires_grad=True)
        gt = torch.tensor(g, device=device, requires_grad=True)
        out = layer(xt, gt, torch.tensor(dims, device=device))
        out.backward(torch.tensor(top_diff, device=device))
        assert out.device.type == device
        got.append([t.detach().cpu().numpy() for t in (out, xt.grad, gt.grad)])
    for a, b in zip(*got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
