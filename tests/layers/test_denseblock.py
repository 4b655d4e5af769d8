"""senlinuc/caffe_ocr's DenseBlock (neocaffe/layers/denseblock.py) against a loop-by-loop NumPy port of the fork's
cuDNN path (tests/layers/denseblock_reference.py): TRAIN and TEST forward, the statistics update, blob order and
shapes, the flipped kernel, dropout, a float64 gradient check, and a hand-written trimmed DenseNet + CTC net in the
style of the fork's examples/ocr/densenet nets (the fork carries no licence file, so its prototxts are not copied)
that builds, trains, saves and reloads."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe import rng
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import denseblock_reference as ref
from tests.layers.caffe_ocr_reference import text_images

PARAM = ('name: "db" type: "DenseBlock" bottom: "x" top: "y" denseblock_param {{ numTransition: {T} growthRate: 2 '
         'initChannel: 64 Filter_Filler {{ type: "msra" }} BN_Scaler_Filler {{ type: "uniform" min: 0.5 max: 1.5 }} '
         'BN_Bias_Filler {{ type: "uniform" min: -0.3 max: 0.3 }} moving_average_fraction: 0.25 {extra} }}')


def _layer(shape, phase=TRAIN, T=2, extra=""):
    param = text_format.Parse(PARAM.format(T=T, extra=extra), caffe_pb2.LayerParameter())
    return get_layer_class("DenseBlock")(param, [shape], phase)


def _random_stats(layer, r):
    """Non-trivial stored statistics, so that the update and the TEST path are seen."""
    T = layer.T
    with torch.no_grad():
        for k in list(range(3 * T, 5 * T)) + (list(range(8 * T, 10 * T)) if layer.bc else []):
            b = layer.blobs[k]
            is_var = (3 * T <= k < 5 * T and k >= 4 * T) or k >= 9 * T
            b.copy_(torch.as_tensor(r.uniform(0.5, 2.0, b.shape) if is_var else r.normal(0, 0.5, b.shape)))


@pytest.mark.parametrize("use_bc", [False, True])
def test_forward_and_statistics_equal_the_forks(use_bc):
    r = np.random.default_rng(1)
    x = r.standard_normal((2, 3, 4, 5))
    extra = "use_BC: true" if use_bc else ""
    train = _layer(x.shape, TRAIN, extra=extra)
    _random_stats(train, r)
    blobs = [b.detach().double().numpy().copy() for b in train.blobs]
    want = ref.dense_block(x, blobs, 2, use_bc, True, 0.25)
    with torch.no_grad():
        got = train(torch.tensor(x, dtype=torch.float32)).double().numpy()
    assert got.shape == (2, 3 + 2 * 2, 4, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[:, :3], x.astype(np.float32))  # the bottom passes through
    for k, b in enumerate(train.blobs):  # statistics updated as the fork; everything else untouched
        np.testing.assert_allclose(b.detach().double().numpy(), blobs[k], rtol=1e-5, atol=1e-6, err_msg=f"blob {k}")
    assert train.blobs[-1].item() == 0  # the CPU path's scale factor: the GPU path never writes it
    # TEST: the stored statistics as they are
    test = _layer(x.shape, TEST, extra=extra)
    with torch.no_grad():
        for b, src in zip(test.blobs, train.blobs):
            b.copy_(src)
    blobs = [b.detach().double().numpy().copy() for b in test.blobs]
    want = ref.dense_block(x, blobs, 2, use_bc, False, 0.25)
    with torch.no_grad():
        got = test(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for b, kept in zip(test.blobs, blobs):
        np.testing.assert_array_equal(b.detach().double().numpy(), kept)


@pytest.mark.parametrize("use_bc", [False, True])
def test_blob_order_shapes_initial_values_and_param_specs(use_bc):
    layer = _layer((2, 5, 3, 3), TRAIN, T=3, extra="use_BC: true" if use_bc else "")
    shapes = [tuple(b.shape) for b in layer.blobs]
    assert shapes == ref.blob_shapes(5, 3, 2, use_bc)  # initChannel: 64 is ignored: the bottom's 5 channels
    T = 3
    stats = list(range(3 * T, 5 * T)) + (list(range(8 * T, 10 * T)) if use_bc else []) + [len(shapes) - 1]
    for k, b in enumerate(layer.blobs):
        spec = layer.param.param[k]
        want = 0.0 if k in stats else 1.0
        assert (spec.lr_mult, spec.decay_mult) == (want, want), k
    for k in range(3 * T, 4 * T):
        assert not layer.blobs[k].detach().any() and bool((layer.blobs[k + T].detach() == 1).all())
    scales = torch.cat([layer.blobs[k].detach().reshape(-1) for k in range(T, 2 * T)])
    assert bool(((scales >= 0.5) & (scales <= 1.5)).all())
    assert len(layer.param.param) == len(shapes)


def test_kernel_is_applied_flipped_as_cudnn_convolution_mode():
    x = np.random.default_rng(2).standard_normal((1, 1, 4, 5))
    layer = _layer(x.shape, TEST, T=1, extra="")
    with torch.no_grad():
        layer.blobs[0].zero_()
        layer.blobs[0][0, 0, 0, 0] = 1.0  # top-left tap: out[h, w] = in[h + 1, w + 1]
        layer.blobs[1].fill_(1.0)
        layer.blobs[2].fill_(10.0)  # BN: x + 10 > 0, so ReLU passes it
        out = layer(torch.tensor(x))[0, 1].numpy()
    shifted = np.zeros((4, 5))
    shifted[:3, :4] = x[0, 0, 1:, 1:] + 10
    np.testing.assert_allclose(out, shifted, rtol=1e-6)


def test_dropout_on_the_new_channels_in_train_only():
    r = np.random.default_rng(3)
    x = torch.tensor(r.standard_normal((4, 3, 6, 6)))
    plain = _layer(tuple(x.shape), TRAIN, T=1).double()
    drop = _layer(tuple(x.shape), TRAIN, T=1, extra="use_dropout: true dropout_amount: 0.4").double()
    drop.load_state_dict(plain.state_dict())
    with torch.no_grad():
        y = plain(x)[:, 3:]
        rng.set_seed(5)
        z = drop(x)
        rng.set_seed(5)
        z2 = drop(x)
    torch.testing.assert_close(z, z2)  # seeded: reproducible
    torch.testing.assert_close(z[:, :3], x)
    kept = z[:, 3:] != 0
    torch.testing.assert_close(z[:, 3:][kept], (y / np.float32(0.6))[kept])
    assert 0.45 < float(kept.double().mean()) < 0.75
    test = _layer(tuple(x.shape), TEST, T=1, extra="use_dropout: true dropout_amount: 0.4").double()
    test.load_state_dict(plain.state_dict())
    assert bool((test(x)[:, 3:] != 0).all())


@pytest.mark.parametrize("extra", ["use_BC: true", "use_dropout: true dropout_amount: 0.2"])
def test_gradient_check_float64(extra):
    r = np.random.default_rng(4)
    layer = _layer((2, 2, 3, 4), TRAIN, extra=extra).double()
    x = torch.tensor(r.standard_normal((2, 2, 3, 4)), requires_grad=True)
    T = 2
    learn = [k for k in range(len(layer.blobs)) if layer.param.param[k].lr_mult != 0]
    params = [layer.blobs[k].detach().clone().requires_grad_(True) for k in learn]
    names = [f"blobs.{k}" for k in learn]
    wts = torch.tensor(r.standard_normal((2, 2 + 2 * T, 3, 4)))

    def f(x, *ps):
        rng.set_seed(0)
        return (torch.func.functional_call(layer, dict(zip(names, ps)), (x,)) * wts).sum()

    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-5, rtol=1e-4, eps=1e-6, fast_mode=True)


def test_errors_and_ignored_fields(caplog):
    with pytest.raises(LayerSetupError, match="4-axis"):
        _layer((2, 3, 4))
    with pytest.raises(LayerSetupError, match="param specs"):
        text = PARAM.format(T=1, extra="") + " param { lr_mult: 2 }"
        get_layer_class("DenseBlock")(text_format.Parse(text, caffe_pb2.LayerParameter()), [(1, 3, 4, 4)], TRAIN)
    layer = _layer((1, 3, 4, 4))
    with pytest.raises(LayerSetupError, match="as at setup"):
        layer.reshape([(1, 4, 4, 4)])
    assert layer.reshape([(5, 3, 7, 9)]) == [(5, 7, 7, 9)]
    with caplog.at_level(logging.WARNING, logger="neocaffe.layers"):
        layer = _layer((1, 3, 4, 4), extra="filter_H: 5 pad_h: 2")
    assert "filter_H = 5 is ignored" in caplog.text and "pad_h = 2 is ignored" in caplog.text
    assert tuple(layer.blobs[0].shape) == (2, 3, 3, 3)


BATCH, T_STEPS, CLASSES = 6, 12, 4
# the fork's DenseNet "no-blstm" recogniser, trimmed: conv -> DenseBlock -> BatchNorm/Scale/ReLU -> 1x1 conv ->
# DenseBlock -> BatchNorm/Scale/ReLU -> AVE pool over the height -> Transpose (W, N, H, C) -> Reshape (W, N, C)
# -> InnerProduct axis 2 -> WarpCTCLoss (a CTCGreedyDecoder accuracy in TEST)
BODY = f'''
layer {{ name: "in" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: {BATCH} dim: 1 dim: 4 dim: {T_STEPS} }} shape {{ dim: {BATCH} dim: 3 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
'''
for _k, _bottom, _out in ((1, "conv1", 8), (2, "trans1", 8)):
    BODY += f'''
layer {{ name: "DenseBlock{_k}" type: "DenseBlock" bottom: "{_bottom}" top: "DenseBlock{_k}"
  denseblock_param {{ numTransition: 2 initChannel: 6 growthRate: 3 Filter_Filler {{ type: "msra" }}
    BN_Scaler_Filler {{ type: "constant" value: 1 }} BN_Bias_Filler {{ type: "constant" value: 0 }}
    use_dropout: false dropout_amount: 0.2 }} }}
layer {{ name: "bn{_k}" type: "BatchNorm" bottom: "DenseBlock{_k}" top: "bn{_k}" }}
layer {{ name: "scale{_k}" type: "Scale" bottom: "bn{_k}" top: "bn{_k}" scale_param {{ bias_term: true }} }}
layer {{ name: "relu{_k}" type: "ReLU" bottom: "bn{_k}" top: "bn{_k}" }}
'''
    if _k == 1:
        BODY += '''
layer { name: "trans1" type: "Convolution" bottom: "bn1" top: "trans1"
  convolution_param { num_output: 6 kernel_size: 1 bias_term: false weight_filler { type: "msra" } } }
'''
BODY += f'''
layer {{ name: "pool_ave" type: "Pooling" bottom: "bn2" top: "pool_ave"
  pooling_param {{ pool: AVE kernel_w: 1 kernel_h: 4 stride_w: 1 stride_h: 1 }} }}
layer {{ name: "pool_t" type: "Transpose" bottom: "pool_ave" top: "pool_t" transpose_param {{ dim: 3 dim: 2 dim: 0 dim: 1 }} }}
layer {{ name: "seq" type: "Reshape" bottom: "pool_t" top: "seq" reshape_param {{ shape {{ dim: -1 }} axis: 1 num_axes: 2 }} }}
layer {{ name: "fc1x" type: "InnerProduct" bottom: "seq" top: "fc1x"
  inner_product_param {{ axis: 2 num_output: {CLASSES} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "ctcloss" type: "WarpCTCLoss" bottom: "fc1x" bottom: "label" top: "ctcloss" loss_weight: 1 }}
layer {{ name: "acc" type: "CTCGreedyDecoder" bottom: "fc1x" bottom: "label" top: "acc" include {{ phase: TEST }} }}
'''


def _text_images(r):
    return text_images(r, BATCH, T_STEPS)


def test_densenet_ctc_net_builds_trains_saves_and_reloads(tmp_path):
    (tmp_path / "train_val.prototxt").write_text(BODY)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train_val.prototxt"}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 1000 snapshot: 0 solver_mode: CPU random_seed: 3 clip_gradients: 10 weight_decay: 0.0005')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    assert len(net.params["DenseBlock1"]) == 5 * 2 + 1
    assert net.blobs["DenseBlock1"].data.shape == (BATCH, 6 + 2 * 3, 4, T_STEPS)
    data, label = _text_images(np.random.default_rng(0))
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = label
    first = float(net.forward()["ctcloss"])
    filt = net.params["DenseBlock2"][1].data.copy()
    mean = net.params["DenseBlock2"][3 * 2 + 1].data.copy()
    solver.step(25)
    last = float(net.forward()["ctcloss"])
    assert np.isfinite(first) and last < 0.6 * first, (first, last)
    assert np.abs(net.params["DenseBlock2"][1].data - filt).max() > 1e-4  # filters learn
    stats = net.params["DenseBlock2"][3 * 2 + 1].data
    assert np.abs(stats - mean).max() > 1e-4  # statistics follow the batches (lr_mult 0: not by the solver)
    assert net.params["DenseBlock2"][-1].data[0] == 0
    weights = tmp_path / "densenet.caffemodel"
    net.save(str(weights))
    test = caffe.Net(str(tmp_path / "train_val.prototxt"), str(weights), caffe.TEST)
    for k, b in enumerate(net.params["DenseBlock2"]):
        np.testing.assert_array_equal(test.params["DenseBlock2"][k].data, b.data)
    test.blobs["data"].data[...] = data
    test.blobs["label"].data[...] = label
    out = test.forward()
    assert out["acc"].shape == (1, 2, 1, 1)  # caffe_ocr's 2-bottom decoder: the net has a DenseBlock
    assert np.isfinite(out["ctcloss"]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("extra", ["use_BC: true", "use_dropout: true dropout_amount: 0.2"])
def test_cuda_equals_cpu(extra, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 as Caffe (a Net sets it; a lone layer not)
    r = np.random.default_rng(6)
    x = torch.tensor(r.standard_normal((2, 3, 5, 6)), dtype=torch.float32)
    cpu = _layer(tuple(x.shape), TRAIN, extra=extra)
    gpu = _layer(tuple(x.shape), TRAIN, extra=extra).cuda()
    gpu.load_state_dict(cpu.state_dict())
    rng.set_seed(0)
    y_gpu = gpu(x.cuda().requires_grad_(True))
    mask = (y_gpu[:, 3:] != 0).cpu() if "dropout" in extra else None
    y_gpu.sum().backward()
    if mask is None:  # the masks of the two devices' generators differ: only the BC case compares values
        y_cpu = cpu(x.requires_grad_(True))
        y_cpu.sum().backward()
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
        for a, b in zip(gpu.blobs, cpu.blobs):
            torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-4, atol=1e-5)
            if b.grad is not None:
                torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-3, atol=1e-4)
    else:
        assert 0.6 < float(mask.float().mean()) < 0.95 and y_gpu.device.type == "cuda"
