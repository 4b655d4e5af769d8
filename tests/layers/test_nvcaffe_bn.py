"""NVCaffe's BatchNorm with scale_bias (NVIDIA/caffe 0.17.4, batch_norm_layer.cpp/.cu) against a loop-by-loop
port (nvcaffe_reference.py): blobs, ParamSpecs, TRAIN/TEST forward, the moving average's first-two-copies rule,
the backward, a float64 gradient check, folding; BVLC's BatchNorm untouched without scale_bias."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.export.fold import fold_net
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN

from . import nvcaffe_reference as ref

f32 = np.float32
NET = ('name: "nv" layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 3 dim: 4 dim: 3 dim: 2 }} }} }}\n'
       'layer {{ name: "bn" type: "BatchNorm" bottom: "data" top: "bn" {params} batch_norm_param {{ {fields} }} }}\n')
FIELDS = ('scale_bias: true moving_average_fraction: 0.9 eps: 1e-6 '
          'scale_filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "gaussian" std: 0.3 }')


def _bn(net):
    return next(layer for layer in net.layers if layer.name == "bn")


def _net(phase, fields=FIELDS, params=""):
    torch.manual_seed(0)
    return Net(read_net(NET.format(fields=fields, params=params)), phase)


def test_blobs_and_param_specs():
    bn = _bn(_net(TRAIN, params='param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 5 }'))
    assert [tuple(b.shape) for b in bn.blobs] == [(4,), (4,), (1,), (4,), (4,)]
    assert float(bn.blobs[2]) == 1.0 and not torch.all(bn.blobs[3] == 1)
    assert [(p.lr_mult, p.decay_mult) for p in bn.param.param] == [(0, 0)] * 3 + [(1, 1)] * 2  # overwritten, as there
    assert bn.eps == float(f32(1e-5))  # max(eps, 1e-5)
    implicit = _bn(_net(TRAIN, fields='bias_filler { type: "constant" value: 0.5 }'))
    assert len(implicit.blobs) == 5 and torch.all(implicit.blobs[3] == 1) and torch.all(implicit.blobs[4] == 0.5)


def test_train_forward_backward_and_moving_average_match_port():
    net = _net(TRAIN)
    bn = _bn(net)
    rng = np.random.default_rng(1)
    blobs = [b.detach().numpy().copy() for b in bn.blobs]
    it = 0
    for step in range(4):  # iterations 0, 1 copy the batch statistics; 2, 3 average
        x = (rng.standard_normal((3, 4, 3, 2)) * 2 + step).astype(f32)
        xt = torch.tensor(x, requires_grad=True)
        y = bn(xt)
        want, xn, inv, blobs, it = ref.forward(x, blobs, True, it, 0.9, 1e-6, True)
        np.testing.assert_allclose(y.detach().numpy().reshape(want.shape), want, rtol=1e-5, atol=1e-5)
        for got, exp in zip(bn.blobs, blobs):
            np.testing.assert_allclose(got.detach().numpy().reshape(-1), exp, rtol=1e-5, atol=1e-6)
        dy = rng.standard_normal(x.shape).astype(f32)
        for b in bn.blobs:
            b.grad = None
        y.backward(torch.tensor(dy))
        dx, ds, db = ref.backward(dy, xn, inv, blobs, True)
        np.testing.assert_allclose(xt.grad.numpy().reshape(dx.shape), dx, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.blobs[3].grad.numpy(), ds, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bn.blobs[4].grad.numpy(), db, rtol=1e-5, atol=1e-5)
    assert bn.nv.iter == 4


def test_test_phase_uses_stored_statistics_as_they_are():
    bn = _bn(_net(TEST))
    rng = np.random.default_rng(2)
    with torch.no_grad():
        bn.blobs[0].copy_(torch.tensor(rng.standard_normal(4), dtype=torch.float32))
        bn.blobs[1].copy_(torch.tensor(rng.uniform(0.5, 2, 4), dtype=torch.float32))
        bn.blobs[2].fill_(7.0)  # "variance correction": never read by NVCaffe
    x = rng.standard_normal((3, 4, 3, 2)).astype(f32)
    blobs = [b.detach().numpy().copy() for b in bn.blobs]
    want = ref.forward(x, blobs, False, 0, 0.9, 1e-6, True)[0]
    np.testing.assert_allclose(bn(torch.tensor(x)).detach().numpy().reshape(want.shape), want, rtol=1e-5, atol=1e-5)
    before = [b.detach().clone() for b in bn.blobs]
    bn(torch.tensor(x))
    assert all(torch.equal(a, b) for a, b in zip(before, bn.blobs))


def test_gradient_check_float64():
    bn = _bn(_net(TRAIN)).double()
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    scale, bias = bn.blobs[3], bn.blobs[4]
    from neocaffe.layers.nvcaffe_bn import _NVBatchNormTrain
    assert torch.autograd.gradcheck(lambda a, s, b: _NVBatchNormTrain.apply(a, s, b, 1e-5)[0],
                                    (x, scale.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()))


def test_fold_matches_test_forward():
    text = ('name: "f" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 '
            'kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { ' + FIELDS + ' } }\n')
    torch.manual_seed(0)
    net = Net(read_net(text), TEST)
    bn = _bn(net)
    with torch.no_grad():
        bn.blobs[0].uniform_(-1, 1)
        bn.blobs[1].uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        net.forward({"data": x})
        want = net.blob_data["conv"].clone()
        folded, chains = fold_net(net)
        assert [c.removed for c in chains] == [["bn"]]
        folded.forward({"data": x})
    np.testing.assert_allclose(folded.blob_data["conv"].numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_bvlc_batchnorm_unchanged_without_scale_bias():
    bn = _bn(_net(TRAIN, fields="moving_average_fraction: 0.9"))
    assert bn.nv is None and len(bn.blobs) == 3
    x = torch.randn(3, 4, 3, 2)
    bn(x)
    assert float(bn.blobs[2]) == 1.0  # BVLC: b2 = maf * 0 + 1


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_in_place_net_runs(phase):
    net = Net(read_net(NET.format(fields=FIELDS, params="").replace('top: "bn"', 'top: "data"')), phase)
    with torch.no_grad():
        net.forward({"data": torch.randn(3, 4, 3, 2)})
    assert torch.isfinite(net.blob_data["data"]).all()


def test_onnx_export_of_the_test_phase_matches_and_train_is_refused():
    """The TEST net exports as BatchNormalization with NVCaffe's stored statistics, scale and bias."""
    from neocaffe.export.onnx import export_onnx
    from neocaffe.io.prototxt import parse_text
    from neocaffe.proto import caffe_pb2
    from tests.export.helpers import onnx_errors

    text = ('name: "nvbn" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 '
            'dim: 5 } } } layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { '
            'scale_bias: true eps: 1e-3 } }')
    g = np.random.default_rng(8)
    net = Net(parse_text(text, caffe_pb2.NetParameter()), 1)
    with torch.no_grad():
        for i, v in ((0, g.standard_normal(3)), (1, g.uniform(0.5, 2, 3)), (3, g.uniform(0.5, 2, 3)),
                     (4, g.standard_normal(3))):
            net.layer("bn").blobs[i].copy_(torch.as_tensor(v, dtype=torch.float32))
    errors = onnx_errors(net, {"x": g.standard_normal((2, 3, 4, 5)).astype(np.float32)})
    assert max(errors.values()) < 1e-5, errors
    train = Net(parse_text(text, caffe_pb2.NetParameter()), 0)
    with pytest.raises(Exception, match="NVCaffe's BatchNorm .scale_bias. in TRAIN"):
        export_onnx(train)
