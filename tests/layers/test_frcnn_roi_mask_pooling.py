"""D-X-Y/caffe-faster-rcnn's ROIMaskPooling against a loop port of its CUDA kernels
(tests/layers/frcnn_reference.py), forward and backward, and a float64 gradient check."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.frcnn_roi_mask_pooling import ROIMaskPooling
from neocaffe.proto import caffe_pb2
from tests.layers import frcnn_reference as ref


def _layer(extra: str, shape, n_rois: int):
    p = text_format.Parse(f'name: "m" type: "ROIMaskPooling" bottom: "x" bottom: "r" top: "y" '
                          f'roi_mask_pooling_param {{ pooled_h: 3 pooled_w: 4 spatial_scale: 0.5 {extra} }}',
                          caffe_pb2.LayerParameter())
    return ROIMaskPooling(p, [shape, (n_rois, 5)]), p.roi_mask_pooling_param


def _rois(g, n, w, h):
    xy = g.uniform(-4, [w, h], (n, 2))
    return np.concatenate([g.integers(0, 2, (n, 1)), xy, xy + g.uniform(0, 16, (n, 2))], axis=1).astype(np.float32)


@pytest.mark.parametrize("extra", ["", "mask_scale: 0.5", "roi_scale: 1.3 mask_scale: 0.4", "half_part: 1",
                                   "half_part: 2 roi_scale: 0.7", "half_part: 3 mask_scale: 0.6", "half_part: 4"])
def test_matches_the_forks_kernels(extra):
    g = np.random.default_rng(len(extra))
    x = g.standard_normal((2, 3, 10, 12)).astype(np.float32)
    x[0, 0, 2:5, 3:6] = -1.5  # repeated values: ties keep the first pixel
    rois = _rois(g, 7, 24, 20)
    layer, p = _layer(extra, x.shape, len(rois))
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt, torch.from_numpy(rois))
    want, arg = ref.roi_mask_pool_forward(x, rois, 3, 4, p.spatial_scale, p.half_part, p.roi_scale, p.mask_scale)
    np.testing.assert_array_equal(y.detach().numpy(), want)
    diff = g.standard_normal(y.shape).astype(np.float32)
    y.backward(torch.from_numpy(diff))
    want_dx = ref.roi_mask_pool_backward(diff, arg, rois, x.shape, 3, 4, p.spatial_scale, p.half_part, p.roi_scale,
                                         p.mask_scale)
    np.testing.assert_allclose(xt.grad.numpy(), want_dx, rtol=0, atol=1e-5)


def test_float64_gradient():
    g = np.random.default_rng(0)
    x = torch.from_numpy(g.permutation(2 * 2 * 8 * 8).reshape(2, 2, 8, 8) / 7.0).requires_grad_(True)
    rois = torch.from_numpy(_rois(g, 4, 16, 16).astype(np.float64))
    layer, _ = _layer("roi_scale: 1.1 mask_scale: 0.3", tuple(x.shape), 4)
    layer = layer.double()
    assert torch.autograd.gradcheck(lambda a: layer(a, rois), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = np.random.default_rng(1)
    x = torch.from_numpy(g.standard_normal((2, 3, 10, 12)).astype(np.float32))
    rois = torch.from_numpy(_rois(g, 6, 24, 20))
    layer, _ = _layer("roi_scale: 1.2 mask_scale: 0.5", tuple(x.shape), 6)
    xc = x.cuda().requires_grad_(True)
    y = layer.cuda()(xc, rois.cuda())
    y.sum().backward()
    xx = x.clone().requires_grad_(True)
    y0 = layer.cpu()(xx, rois)
    y0.sum().backward()
    np.testing.assert_array_equal(y.detach().cpu().numpy(), y0.detach().numpy())
    np.testing.assert_allclose(xc.grad.cpu().numpy(), xx.grad.numpy(), atol=1e-6)
