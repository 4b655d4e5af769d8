"""Intel Caffe's ``SpatialDropout`` (neocaffe.layers.spatial_dropout) against a loop port of the fork's
``spatial_dropout_layer.cpp`` (intel/caffe @ 44d53638) given the layer's own mask, the mask's statistics, TEST
phase, the random stream (repeat and resume) and a small net. No Intel prototxt uses the type (``git grep
SpatialDropout`` in the fork finds only the layer and its proto message), so the net here is our own."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


# -- the fork's loops (Forward_cpu / Backward_cpu), one (image, channel) plane at a time ---------------
def intel_forward(x: np.ndarray, mask: np.ndarray, ratio: float, train: bool) -> np.ndarray:
    """``spatial_dropout_layer.cpp`` Forward_cpu with ``rand_vec_`` = ``mask`` (N x C of 0/1)."""
    dt = x.dtype.type
    threshold = dt(np.float32(ratio))                       # threshold_ = dropout_ratio (float) in Dtype
    scale = dt(1.0 / (1.0 - np.float64(threshold)))         # scale_ = 1. / (1. - threshold_) in Dtype
    num, channel = x.shape[0], x.shape[1] if x.ndim > 1 else 1
    img = x.reshape(num, channel, -1)
    top = np.empty_like(img)
    if not train:
        return x.copy()                                      # caffe_copy
    for i in range(num):
        for j in range(channel):
            if mask[i, j] == 1:
                for k in range(img.shape[2]):               # caffe_cpu_axpby(img_size, scale_, bottom, 0, top)
                    top[i, j, k] = scale * img[i, j, k]
            else:
                top[i, j, :] = 0                             # caffe_set(img_size, 0, top)
    return top.reshape(x.shape)


def intel_backward(dy: np.ndarray, mask: np.ndarray, ratio: float, train: bool) -> np.ndarray:
    """Backward_cpu: the same loop on the top diff."""
    return intel_forward(dy, mask, ratio, train)


def _layer(text: str, shape, phase=TRAIN):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class("SpatialDropout")(param, [tuple(shape)], phase)


SD = 'name: "sd" type: "SpatialDropout" bottom: "x" top: "y" '


def _mask_of(layer, x: torch.Tensor, seed: int) -> np.ndarray:
    rng.set_seed(seed)
    return layer.draw_mask(x).cpu().numpy().astype(np.uint32)


@pytest.mark.parametrize("shape,ratio", [((3, 7, 4, 5), 0.3), ((2, 6, 1, 9), 0.5), ((4, 10), 0.25),
                                         ((2, 3, 5), 0.7), ((5, 4, 3, 3), 0.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_the_forks_loops_given_the_same_mask(shape, ratio, dtype):
    r = np.random.default_rng(1)
    x = r.standard_normal(shape).astype(dtype)
    dy = r.standard_normal(shape).astype(dtype)
    layer = _layer(SD + f"dropout_param {{ dropout_ratio: {ratio} }}", shape)
    xt = torch.tensor(x, requires_grad=True)
    mask = _mask_of(layer, xt, 7)
    rng.set_seed(7)
    y = layer(xt)
    y.backward(torch.tensor(dy))
    want_y, want_dx = intel_forward(x, mask, ratio, True), intel_backward(dy, mask, ratio, True)
    assert y.dtype == xt.dtype
    assert np.abs(y.detach().numpy() - want_y).max() == 0
    assert np.abs(xt.grad.numpy() - want_dx).max() == 0
    # the gradient is mask * scale, plane by plane
    scale = layer.scale64 if dtype == np.float64 else layer.scale
    np.testing.assert_array_equal(xt.grad.numpy().reshape(shape[0], shape[1] if len(shape) > 1 else 1, -1),
                                  dy.reshape(shape[0], shape[1] if len(shape) > 1 else 1, -1)
                                  * (mask[..., None].astype(dtype) * dtype(scale)))


def test_dropped_planes_are_set_to_zero_whatever_they_hold():
    """The fork's caffe_set: a NaN or inf in a dropped plane (input or top diff) gives 0, not 0 * NaN."""
    layer = _layer(SD + "dropout_param { dropout_ratio: 0.5 }", (2, 8, 2, 2))
    x = torch.full((2, 8, 2, 2), float("nan"), requires_grad=True)
    mask = _mask_of(layer, x, 4)
    assert 0 < mask.sum() < mask.size
    rng.set_seed(4)
    y = layer(x)
    y.backward(torch.full_like(x, float("inf")))
    dropped = torch.tensor(mask == 0)
    assert bool((y.detach()[dropped] == 0).all()) and bool(y.detach()[~dropped].isnan().all())
    assert bool((x.grad[dropped] == 0).all()) and bool(x.grad[~dropped].isinf().all())


def test_scale_is_cafes_float_rounding():
    layer = _layer(SD + "dropout_param { dropout_ratio: 0.3 }", (1, 1, 1, 1))
    assert layer.scale == float(np.float32(1.0 / (1.0 - np.float64(np.float32(0.3)))))
    assert layer.scale64 == 1.0 / (1.0 - np.float64(np.float32(0.3)))


def test_drops_whole_channels_at_the_stated_rate():
    n, c, ratio = 8, 1250, 0.3                                # 10000 draws: the dropped fraction's sd is 0.0046
    x = torch.rand(n, c, 3, 4) + 0.5                          # no zeros of its own
    layer = _layer(SD + f"dropout_param {{ dropout_ratio: {ratio} }}", x.shape)
    rng.set_seed(11)
    y = layer(x)
    zero = (y == 0).reshape(n, c, -1)
    assert bool((zero.all(-1) | ~zero.any(-1)).all()), "a plane is partly dropped"
    dropped = zero.all(-1).float().mean().item()
    assert abs(dropped - ratio) < 0.02, dropped               # 4.4 sd
    kept = ~zero.all(-1)
    torch.testing.assert_close(y.reshape(n, c, -1)[kept], x.reshape(n, c, -1)[kept] * layer.scale, rtol=0, atol=0)
    # the images draw independently: not every image drops the same channels
    assert not bool((zero.all(-1) == zero.all(-1)[0]).all())


@pytest.mark.parametrize("text", [SD, 'name: "sd" type: "SpatialDropout" bottom: "x" top: "x" '])
def test_test_phase_is_the_identity_forward_and_backward(text):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    layer = _layer(text + "dropout_param { dropout_ratio: 0.6 }", x.shape, phase=TEST)
    y = layer(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    dy = torch.randn_like(x)
    y.backward(dy)
    torch.testing.assert_close(x.grad, dy, rtol=0, atol=0)
    kernel = layer.lean_kernel([x.detach()])
    torch.testing.assert_close(kernel(x.detach()), x.detach(), rtol=0, atol=0)


def test_reads_dropout_param_not_spatial_dropout_param(caplog):
    with caplog.at_level(logging.WARNING, logger="neocaffe"):
        layer = _layer(SD + "spatial_dropout_param { dropout_ratio: 0.1 }", (2, 3, 2, 2))
    assert layer.ratio == pytest.approx(0.5)                  # dropout_param's default, as the fork
    assert "spatial_dropout_param.dropout_ratio = 0.1 is not read" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neocaffe"):
        layer = _layer(SD + "dropout_param { dropout_ratio: 0.2 } spatial_dropout_param { dropout_ratio: 0.2 }",
                       (2, 3, 2, 2))
    assert layer.ratio == pytest.approx(0.2) and not caplog.text


def test_a_seeded_run_repeats_and_a_resumed_one_continues():
    x = torch.randn(4, 16, 2, 2)
    layer = _layer(SD + "dropout_param { dropout_ratio: 0.5 }", x.shape)
    rng.set_seed(3)
    first = [layer(x) for _ in range(3)]
    rng.set_seed(3)
    again = [layer(x) for _ in range(3)]
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(first[0], first[1])
    rng.set_seed(3)
    layer(x)
    state = rng.get_state()
    rng.set_seed(99)
    layer(x)
    rng.set_state(state)
    torch.testing.assert_close(layer(x), first[1], rtol=0, atol=0)


@pytest.mark.parametrize("text,shape,match", [
    (SD + "dropout_param { dropout_ratio: 1.0 }", (1, 2, 2, 2), r"dropout_ratio must be in \[0, 1\); received 1.0"),
    (SD + "dropout_param { dropout_ratio: -0.1 }", (1, 2, 2, 2), r"dropout_ratio must be in \[0, 1\)"),
    (SD, (1, 2, 2, 2, 2), "at most 4 axes"),
])
def test_refuses_bad_configurations(text, shape, match):
    with pytest.raises(LayerSetupError, match=rf"'sd' \(SpatialDropout\).*{match}"):
        _layer(text, shape)


NET = """name: "sd_net"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "sdrop1" type: "SpatialDropout" bottom: "conv1" top: "conv1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param { pool: AVE global_pooling: true } }
"""


def test_in_a_net_train_and_test(tmp_path):
    path = tmp_path / "sd.prototxt"
    path.write_text(NET)
    param = read_net(str(path))
    rng.set_seed(5)
    train = Net(param, phase=TRAIN)
    x = torch.randn(2, 3, 8, 8)
    rng.set_seed(6)
    train.forward({"data": x})
    conv = torch.relu(torch.nn.functional.conv2d(x, train.layer("conv1").blobs[0], train.layer("conv1").blobs[1],
                                                 padding=1)).detach()
    got = train.blob("conv1").detach()                       # in place: the dropped activation
    rng.set_seed(6)
    mask = train.layer("sdrop1").draw_mask(conv).numpy().astype(np.uint32)
    np.testing.assert_allclose(got.numpy(), intel_forward(conv.numpy(), mask, 0.5, True), rtol=1e-6, atol=1e-6)
    train.backward({"pool": torch.ones(2, 6, 1, 1)})
    diff = train.blob_diff("conv1").numpy()
    assert np.all(diff.reshape(2, 6, -1)[mask == 0] == 0)
    test = Net(param, phase=TEST)
    test.copy_from(train.to_weights())
    test.forward({"data": x})
    torch.testing.assert_close(test.blob("conv1"), conv, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_on_cuda_draws_on_the_device_and_matches_the_loops():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = np.random.default_rng(2)
    x = r.standard_normal((3, 8, 5, 5)).astype(np.float32)
    dy = r.standard_normal(x.shape).astype(np.float32)
    layer = _layer(SD + "dropout_param { dropout_ratio: 0.35 }", x.shape)
    xt = torch.tensor(x, device="cuda", requires_grad=True)
    mask = _mask_of(layer, xt, 13)
    rng.set_seed(13)
    y = layer(xt)
    y.backward(torch.tensor(dy, device="cuda"))
    assert y.device.type == xt.grad.device.type == "cuda"
    assert np.abs(y.detach().cpu().numpy() - intel_forward(x, mask, 0.35, True)).max() == 0
    assert np.abs(xt.grad.cpu().numpy() - intel_backward(dy, mask, 0.35, True)).max() == 0
    rng.set_seed(13)
    torch.testing.assert_close(layer(xt), y, rtol=0, atol=0)
