"""The forks' cuDNN BatchNorm engines (``engine: CUDNN``): PSPNet's/TSN's ``BN`` (yjxiong/caffe ``action_recog`` @
9831a2b4, ``cudnn_bn_layer.cu``) and NVCaffe's ``BatchNorm`` with ``scale_bias`` (NVIDIA/caffe ``caffe-0.17`` @
87a25543, ``cudnn_batch_norm_layer.cu``) against cuDNN's documented formulas as the forks call them
(cudnn_bn_reference.py): running statistics after several TRAIN forwards, forward, backward, eps clamping; the
CAFFE engine (and DEFAULT, which is CAFFE here) unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neocaffe.export.fold import fold_net
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN

from . import cudnn_bn_reference as ref

f32 = np.float32
SHAPE = (3, 4, 3, 2)
BN_NET = ('name: "n" layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
          'layer {{ name: "bn" type: "BN" bottom: "data" top: "bn" bn_param {{ slope_filler {{ type: "uniform" '
          'min: 0.5 max: 1.5 }} bias_filler {{ type: "gaussian" std: 0.3 }} {fields} }} }}\n')
NV_NET = ('name: "nv" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 4 dim: 3 '
          'dim: 2 } } }\nlayer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { %s } }\n')
NV_FIELDS = ('scale_bias: true moving_average_fraction: 0.9 eps: 1e-6 scale_filler { type: "uniform" min: 0.5 '
             'max: 1.5 } bias_filler { type: "gaussian" std: 0.3 } ')


def _dims(shape) -> str:
    return " ".join(f"dim: {d}" for d in shape)


def _bn(net):
    return next(layer for layer in net.layers if layer.name == "bn")


def _tsn(phase, fields, shape=SHAPE, device="cpu"):
    torch.manual_seed(0)
    return _bn(Net(read_net(BN_NET.format(dims=_dims(shape), fields=fields)), phase).to(device))


def _nv(phase, fields, device="cpu"):
    torch.manual_seed(0)
    net = Net(read_net(NV_NET % fields), phase).to(device)
    return net, _bn(net)


def _batches(n=3, seed=1):
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal(SHAPE) * (1 + k)) + k - 1).astype(f32) for k in range(n)]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().reshape(-1)


def _same_blobs(src, others) -> None:
    """Give ``others`` the blobs of ``src`` (fillers draw from a generator that moves on between nets)."""
    with torch.no_grad():
        for layer in others:
            for a, b in zip(layer.blobs, src.blobs):
                a.copy_(b)


def _check_train_step(layer, x, scale_blob, bias_blob, stats, eps, factor, device="cpu"):
    """One TRAIN forward and backward of ``layer`` against the reference; returns the reference's statistics."""
    scale, bias = _np(scale_blob), _np(bias_blob)
    y_ref, rm, rv, smean, sinv = ref.forward_training(x, scale, bias, stats[0], stats[1], factor, eps)
    xt = torch.tensor(x, device=device, requires_grad=True)
    for b in layer.blobs:
        b.grad = None
    y = layer(xt)
    np.testing.assert_allclose(y.detach().cpu().numpy(), y_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(_np(layer.blobs[stats[2]]), rm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(layer.blobs[stats[3]]), rv, rtol=1e-5, atol=1e-6)
    dy = np.random.default_rng(int(abs(x.sum()) * 100)).standard_normal(x.shape).astype(f32)
    y.backward(torch.tensor(dy, device=device))
    dx, dscale, dbias = ref.backward(x, dy, scale, smean, sinv)
    np.testing.assert_allclose(xt.grad.cpu().numpy(), dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(scale_blob.grad), dscale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(bias_blob.grad), dbias, rtol=1e-4, atol=1e-5)
    return rm, rv


# -- PSPNet / TSN BN ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_tsn_cudnn_train_statistics_forward_backward(eps):
    bn = _tsn(TRAIN, f"momentum: 0.8 eps: {eps} engine: CUDNN")
    e, factor = ref.pspnet_call(eps, 0.8)
    assert bn.eps == e
    rm, rv = _np(bn.blobs[2]), _np(bn.blobs[3])
    for x in _batches():
        rm, rv = _check_train_step(bn, x, bn.blobs[0], bn.blobs[1], (rm, rv, 2, 3), e, factor)


def test_tsn_caffe_engine_and_default_unchanged():
    """CAFFE and DEFAULT give bit-identical tops and blobs; their stored variance is the biased one."""
    layers = [_tsn(TRAIN, "momentum: 0.8 eps: 1e-6" + f) for f in ("", " engine: CAFFE", " engine: DEFAULT")]
    cudnn = _tsn(TRAIN, "momentum: 0.8 eps: 1e-6 engine: CUDNN")
    _same_blobs(layers[0], layers[1:] + [cudnn])
    m = SHAPE[0] * SHAPE[2] * SHAPE[3]
    for x in _batches():
        rv_before = _np(layers[0].blobs[3])
        ys = [layer(torch.tensor(x)) for layer in layers]
        for y, layer in zip(ys[1:], layers[1:]):
            assert torch.equal(y, ys[0])
            assert all(torch.equal(a, b) for a, b in zip(layer.blobs, layers[0].blobs))
        var = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1).var(axis=1)
        np.testing.assert_allclose(_np(layers[0].blobs[3]), 0.8 * rv_before + 0.2 * var, rtol=1e-5)
        cudnn(torch.tensor(x))
    # the two engines' variances part by the Bessel factor on every batch's share
    assert not torch.allclose(cudnn.blobs[3], layers[0].blobs[3], rtol=1e-3)
    assert torch.allclose(cudnn.blobs[2], layers[0].blobs[2], rtol=1e-5, atol=1e-6)
    assert m > 1


def test_tsn_cudnn_clamps_eps_in_test_and_frozen():
    x = _batches(1)[0]
    for phase, extra in ((TEST, ""), (TRAIN, " frozen: true")):
        got = {}
        first = None
        for engine in ("CAFFE", "CUDNN"):
            bn = _tsn(phase, f"eps: 1e-8 engine: {engine}{extra}")
            first = bn if first is None else first
            _same_blobs(first, [bn])
            with torch.no_grad():
                bn.blobs[2].copy_(torch.linspace(-0.5, 0.5, 4).reshape(bn.blobs[2].shape))
                bn.blobs[3].copy_(torch.linspace(1e-6, 1e-4, 4).reshape(bn.blobs[3].shape))  # eps matters
            before = [b.detach().clone() for b in bn.blobs]
            xt = torch.tensor(x, requires_grad=True)
            y = bn(xt)
            got[engine] = y.detach().numpy()
            assert all(torch.equal(a, b) for a, b in zip(before, bn.blobs))  # no statistics update
            e = 1e-5 if engine == "CUDNN" else float(f32(1e-8))
            want = ref.forward_inference(x, _np(bn.blobs[0]), _np(bn.blobs[1]), _np(bn.blobs[2]), _np(bn.blobs[3]), e)
            np.testing.assert_allclose(got[engine], want, rtol=1e-5, atol=1e-5)
            if extra:  # frozen: the fork's BNLayer::Backward_gpu, dy * slope / sqrt(var + eps), eps unclamped
                y.backward(torch.ones_like(y))
                inv = (_np(bn.blobs[3]) + float(f32(1e-8))) ** -0.5
                want_dx = np.broadcast_to((_np(bn.blobs[0]) * inv).reshape(1, -1, 1, 1), x.shape)
                np.testing.assert_allclose(xt.grad.numpy(), want_dx, rtol=1e-5)
        assert not np.allclose(got["CAFFE"], got["CUDNN"], rtol=1e-3)


def test_tsn_cudnn_one_value_a_channel_is_an_error():
    bn = _tsn(TRAIN, "engine: CUDNN", shape=(1, 4, 1, 1))
    with pytest.raises(Exception, match=r"bn.*engine CUDNN.*more than 1 value a channel; received 1"):
        bn(torch.ones(1, 4, 1, 1))
    _tsn(TRAIN, "engine: CAFFE", shape=(1, 4, 1, 1))(torch.ones(1, 4, 1, 1))  # the CAFFE engine runs


def test_tsn_cudnn_matches_torch_batch_norm():
    """PyTorch's training batch_norm keeps the unbiased running variance with momentum = cuDNN's factor."""
    bn = _tsn(TRAIN, "momentum: 0.7 engine: CUDNN")
    rm, rv = torch.zeros(4), torch.zeros(4)
    for x in _batches():
        y = bn(torch.tensor(x))
        want = F.batch_norm(torch.tensor(x), rm, rv, bn.blobs[0].reshape(-1), bn.blobs[1].reshape(-1), True,
                            float(f32(1) - f32(0.7)), 1e-5)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.blobs[2].reshape(-1), rm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.blobs[3].reshape(-1), rv, rtol=1e-5, atol=1e-6)


def test_tsn_cudnn_eps_reaches_folding_and_onnx():
    """Folding (Conv + BN) and ONNX export add the clamped eps of the CUDNN engine to the stored variance."""
    text = ('name: "f" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 '
            'dim: 5 } } }\nlayer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { '
            'num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n'
            'layer { name: "bn" type: "BN" bottom: "conv" top: "conv" bn_param { eps: 1e-8 engine: CUDNN } }\n')
    torch.manual_seed(0)
    net = Net(read_net(text), TEST)
    bn = _bn(net)
    with torch.no_grad():
        bn.blobs[0].uniform_(0.5, 1.5)
        bn.blobs[1].uniform_(-1, 1)
        bn.blobs[2].uniform_(-0.01, 0.01)
        bn.blobs[3].uniform_(1e-6, 3e-6)  # as small as eps: 1e-8 and 1e-5 part clearly
    x = torch.randn(2, 3, 5, 5) * 1e-3
    with torch.no_grad():
        net.forward({"data": x})
        want = net.blob_data["conv"].clone()
        folded, chains = fold_net(net)
        assert [c.removed for c in chains] == [["bn"]]
        folded.forward({"data": x})
    np.testing.assert_allclose(folded.blob_data["conv"].numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.export.helpers import TOLERANCE, onnx_errors

    errors = onnx_errors(net, {"data": x.numpy()})
    assert max(errors.values()) <= TOLERANCE, errors


# -- NVCaffe BatchNorm (scale_bias) --------------------------------------------------------------------------------
def test_nvcaffe_cudnn_statistics_follow_the_solver_iteration():
    net, bn = _nv(TRAIN, NV_FIELDS + "engine: CUDNN")
    assert bn.nv.cudnn and bn.nv.eps == 1e-5
    rm, rv = _np(bn.blobs[0]), _np(bn.blobs[1])
    for it, x in enumerate(_batches(4)):
        net.set_iteration(it, 4)  # what Solver.step tells the net before each iteration
        e, factor = ref.nvcaffe_call(1e-6, 0.9, it)
        rm, rv = _check_train_step(bn, x, bn.blobs[3], bn.blobs[4], (rm, rv, 0, 1), e, factor)
    assert float(bn.blobs[2]) == 1.0


def test_nvcaffe_cudnn_without_solver_copies_every_batch():
    _, bn = _nv(TRAIN, NV_FIELDS + "engine: CUDNN")
    for x in _batches():
        bn(torch.tensor(x))
        flat = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1)
        np.testing.assert_allclose(_np(bn.blobs[0]), flat.mean(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(bn.blobs[1]), flat.var(1, ddof=1), rtol=1e-5, atol=1e-6)


def test_nvcaffe_caffe_engine_and_default_unchanged():
    runs, first = [], None
    for engine in ("", "engine: CAFFE", "engine: DEFAULT"):
        net, bn = _nv(TRAIN, NV_FIELDS + engine)
        first = bn if first is None else first
        _same_blobs(first, [bn])
        assert not bn.nv.cudnn and not hasattr(bn, "set_iteration")
        out = []
        for it, x in enumerate(_batches(4)):
            net.set_iteration(it, 4)
            out.append(bn(torch.tensor(x)).detach())
        runs.append((out, [b.detach().clone() for b in bn.blobs]))
    for out, blobs in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out, runs[0][0]))
        assert all(torch.equal(a, b) for a, b in zip(blobs, runs[0][1]))


def test_nvcaffe_cudnn_test_forward_is_the_caffe_engines():
    x = torch.tensor(_batches(1)[0])
    outs, first = [], None
    for engine in ("CAFFE", "CUDNN"):
        _, bn = _nv(TEST, NV_FIELDS + f"engine: {engine}")
        first = bn if first is None else first
        _same_blobs(first, [bn])
        with torch.no_grad():
            bn.blobs[0].copy_(torch.linspace(-0.5, 0.5, 4))
            bn.blobs[1].copy_(torch.linspace(0.5, 2.0, 4))
        outs.append(bn(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_batchnorm_without_scale_bias_stays_bvlc():
    _, bn = _nv(TRAIN, "engine: CUDNN")
    assert bn.nv is None and len(bn.blobs) == 3


# -- CUDA ------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cudnn_engines_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    bn = _tsn(TRAIN, "momentum: 0.8 eps: 1e-6 engine: CUDNN", device="cuda")
    e, factor = ref.pspnet_call(1e-6, 0.8)
    rm, rv = _np(bn.blobs[2]), _np(bn.blobs[3])
    run_m, run_v = torch.zeros(4, device="cuda"), torch.zeros(4, device="cuda")
    for x in _batches():
        rm, rv = _check_train_step(bn, x, bn.blobs[0], bn.blobs[1], (rm, rv, 2, 3), e, factor, device="cuda")
        with torch.backends.cudnn.flags(enabled=True):  # PyTorch's own call of cuDNN's batch norm
            F.batch_norm(torch.tensor(x, device="cuda"), run_m, run_v, None, None, True, factor, e)
    torch.testing.assert_close(bn.blobs[2].reshape(-1), run_m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.blobs[3].reshape(-1), run_v, rtol=1e-5, atol=1e-6)
    net, nv = _nv(TRAIN, NV_FIELDS + "engine: CUDNN", device="cuda")
    rm, rv = _np(nv.blobs[0]), _np(nv.blobs[1])
    for it, x in enumerate(_batches(3)):
        net.set_iteration(it, 3)
        e, factor = ref.nvcaffe_call(1e-6, 0.9, it)
        rm, rv = _check_train_step(nv, x, nv.blobs[3], nv.blobs[4], (rm, rv, 0, 1), e, factor, device="cuda")
    assert all(b.device.type == "cuda" for b in nv.blobs)
