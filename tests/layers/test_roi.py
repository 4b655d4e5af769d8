"""ROIPooling, PSROIPooling and SmoothL1Loss against NumPy ports of their forks' kernels
(tests/layers/rcnn_reference.py), in float32 as the nets run them, with their backward passes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.roi import PSROIPooling, ROIPooling, caffe_round
from neocaffe.layers.smooth_l1_loss import SmoothL1Loss
from neocaffe.proto import caffe_pb2
from tests.layers import rcnn_reference as ref


def _layer(cls, text: str, shapes):
    return cls(text_format.Parse(text, caffe_pb2.LayerParameter()), shapes)


def _rois(rng, n: int, batch: int, width: float, height: float) -> np.ndarray:
    """Random RoIs in image coordinates: some inside, some over the border, a few malformed (x2 < x1)."""
    x1, y1 = rng.uniform(-0.2 * width, width, n), rng.uniform(-0.2 * height, height, n)
    x2, y2 = x1 + rng.uniform(-8, 0.8 * width, n), y1 + rng.uniform(-8, 0.8 * height, n)
    return np.stack([rng.integers(0, batch, n), x1, y1, x2, y2], 1).astype(np.float32)


def test_caffe_round_halves_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, -2.4999998, 7.0], dtype=torch.float32)
    assert caffe_round(x).tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, 0.0, -2.0, 7.0]


@pytest.mark.parametrize("pooled,scale", [((6, 6), 1 / 16), ((3, 5), 0.5), ((7, 7), 0.25)])
def test_roi_pooling_matches_the_fork_forward_and_backward(pooled, scale):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    x[0, 1, 2:5, 3:6] = 0.5  # ties: the first maximum in row-major order wins
    rois = _rois(rng, 16, 2, 11 / scale, 9 / scale)
    rois[:4, 1:] = [[8, 8, 8, 8], [0, 0, 10 / scale, 8 / scale], [-40, -40, -20, -20], [3.5 / scale, 2.5 / scale, 1, 1]]
    layer = _layer(ROIPooling, f'name: "r" type: "ROIPooling" top: "y" roi_pooling_param {{ pooled_h: {pooled[0]} '
                               f'pooled_w: {pooled[1]} spatial_scale: {scale} }}', [x.shape, rois.shape])
    xt = torch.from_numpy(x).requires_grad_(True)
    top = layer(xt, torch.from_numpy(rois))
    g = rng.standard_normal(top.shape).astype(np.float32)
    top.backward(torch.from_numpy(g))
    want, _, want_grad = ref.roi_pool(x, rois, *pooled, scale, top_diff=g)
    np.testing.assert_array_equal(top.detach().numpy(), want)
    np.testing.assert_allclose(xt.grad.numpy(), want_grad, rtol=1e-6, atol=1e-6)


def test_roi_pooling_malformed_roi_gets_no_diff_as_in_the_fork():
    # x2 < x1: forward pools the 1 x 1 RoI at (x1, y1); the fork's backward skips pixels outside [x1, x2]
    x = np.arange(2 * 5 * 6, dtype=np.float32).reshape(1, 2, 5, 6)
    rois = np.array([[0, 4, 3, 1, 1]], np.float32)
    layer = _layer(ROIPooling, 'name: "r" type: "ROIPooling" top: "y" roi_pooling_param { pooled_h: 2 pooled_w: 2 }',
                   [x.shape, rois.shape])
    xt = torch.from_numpy(x).requires_grad_(True)
    top = layer(xt, torch.from_numpy(rois))
    assert top[0, :, 0, 0].tolist() == [x[0, 0, 3, 4], x[0, 1, 3, 4]]
    top.sum().backward()
    assert float(xt.grad.abs().sum()) == 0.0


def test_roi_pooling_rejects_bad_rois_and_params():
    with pytest.raises(LayerSetupError, match="pooled_h and pooled_w must be > 0"):
        _layer(ROIPooling, 'name: "r" type: "ROIPooling" top: "y" roi_pooling_param { pooled_w: 2 }', [(1, 1, 4, 4), (1, 5)])
    layer = _layer(ROIPooling, 'name: "r" type: "ROIPooling" top: "y" roi_pooling_param { pooled_h: 2 pooled_w: 2 }',
                   [(1, 1, 4, 4), (1, 5)])
    # Reshape takes the RoI count alone, as the forks' (a placeholder 1 x 4 input is reshaped before forward);
    # the forward reads 5 values per RoI and says so
    assert layer.reshape([(1, 1, 4, 4), (3, 4)])[0][0] == 3
    with pytest.raises(LayerSetupError, match="5 values per RoI"):
        layer(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4))
    with pytest.raises(LayerSetupError, match=r"batch indices must lie in \[0, 1\)"):
        layer(torch.zeros(1, 1, 4, 4), torch.tensor([[1.0, 0, 0, 2, 2]]))


def test_psroi_pooling_matches_the_fork_forward_and_backward():
    rng = np.random.default_rng(8)
    dim, group, scale = 3, 3, 0.125
    x = rng.standard_normal((2, dim * group * group, 10, 12)).astype(np.float32)
    rois = _rois(rng, 20, 2, 12 / scale, 10 / scale)
    rois[:3, 1:] = [[8, 8, 8, 8], [0, 0, 12 / scale, 10 / scale], [-40, -40, -30, -30]]
    layer = _layer(PSROIPooling, f'name: "p" type: "PSROIPooling" top: "y" psroi_pooling_param {{ spatial_scale: {scale} '
                                 f'output_dim: {dim} group_size: {group} }}', [x.shape, rois.shape])
    xt = torch.from_numpy(x).requires_grad_(True)
    top = layer(xt, torch.from_numpy(rois))
    assert top.shape == (20, dim, group, group)
    g = rng.standard_normal(top.shape).astype(np.float32)
    top.backward(torch.from_numpy(g))
    want, want_grad = ref.psroi_pool(x, rois, scale, dim, group, top_diff=g)
    np.testing.assert_allclose(top.detach().numpy(), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), want_grad, rtol=1e-5, atol=1e-6)


def test_psroi_pooling_checks_channels():
    layer = _layer(PSROIPooling, 'name: "p" type: "PSROIPooling" top: "y" psroi_pooling_param { spatial_scale: 1 '
                                 'output_dim: 2 group_size: 3 }', [(1, 9, 4, 4), (1, 5)])
    with pytest.raises(LayerSetupError, match="output_dim \\* group_size\\^2 = 18"):
        layer.reshape([(1, 9, 4, 4), (1, 5)])


@pytest.mark.parametrize("sigma,weights", [(1.0, False), (3.0, True)])
def test_smooth_l1_matches_the_fork(sigma, weights):
    rng = np.random.default_rng(9)
    a, b = (rng.standard_normal((6, 8)).astype(np.float32) for _ in range(2))
    wi = (rng.random((6, 8)) < 0.5).astype(np.float32) * 1.5 if weights else None
    wo = rng.uniform(0, 2, (6, 8)).astype(np.float32) if weights else None
    shapes = [a.shape] * (4 if weights else 2)
    layer = _layer(SmoothL1Loss, f'name: "l" type: "SmoothL1Loss" top: "loss" smooth_l1_loss_param {{ sigma: {sigma} }}', shapes)
    at, bt = torch.from_numpy(a).requires_grad_(True), torch.from_numpy(b).requires_grad_(True)
    extra = [torch.from_numpy(wi), torch.from_numpy(wo)] if weights else []
    loss = layer(at, bt, *extra)
    loss.backward(torch.tensor(0.7))
    want, ga, gb = ref.smooth_l1(a, b, wi, wo, sigma=sigma, top_diff=0.7)
    np.testing.assert_allclose(float(loss.detach()), want, rtol=1e-6)
    np.testing.assert_allclose(at.grad.numpy(), ga, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bt.grad.numpy(), gb, rtol=1e-6, atol=1e-7)
    assert layer.allow_force_backward(1)


def test_smooth_l1_needs_both_weights():
    with pytest.raises(LayerSetupError, match="both inside and outside weights"):
        _layer(SmoothL1Loss, 'name: "l" type: "SmoothL1Loss" top: "loss"', [(2, 4)] * 3)
    layer = _layer(SmoothL1Loss, 'name: "l" type: "SmoothL1Loss" top: "loss"', [(2, 4)] * 2)
    with pytest.raises(LayerSetupError, match="bottom 1 must have the channels"):
        layer.reshape([(2, 4), (2, 5)])
