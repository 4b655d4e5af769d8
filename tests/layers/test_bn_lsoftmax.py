"""L-Softmax's BN (wy1iu/LargeMargin_Softmax_Loss @ c325f38, bn_layer.cpp): told from PSPNet's by the net
(neocaffe.layers.lineage), its 1 x C blobs and running inverse std against a NumPy port of the fork's
forward, its gradient, and the same numbers folded and in ONNX."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, TRAIN

f32 = np.float32
BN = ('layer {{ name: "bn" type: "BN" bottom: "conv" top: "bn" {params} bn_param {{ {fields} '
      'slope_filler {{ type: "uniform" min: 0.5 max: 1.5 }} bias_filler {{ type: "gaussian" std: 0.2 }} }} }}\n')
MARKER = ('layer { name: "ip" type: "LargeMarginInnerProduct" bottom: "flat" bottom: "label" top: "ip" '
          'largemargin_inner_product_param { num_output: 3 type: SINGLE weight_filler { type: "xavier" } } }\n')


def net_text(lineage: str = "", marker: bool = True, fields: str = "momentum: 0.8", params: str = "") -> str:
    head = f'name: "lsm" {f"lineage: {lineage!r}".replace(chr(39), chr(34)) if lineage else ""}\n'
    return (head + 'layer { name: "data" type: "Input" top: "data" top: "label" '
            'input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 } shape { dim: 4 } } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 '
            'kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.3 } } }\n'
            + BN.format(fields=fields, params=params)
            + 'layer { name: "flat" type: "Flatten" bottom: "bn" top: "flat" }\n' + (MARKER if marker else ""))


def fork_forward(x, blobs, momentum, eps, use_stored):
    """bn_layer.cpp Forward_cpu in float64 loops over the (N, C, H, W) input; returns (top, new mean, new
    inverse std)."""
    slope, bias, mean_s, inv_s = (np.asarray(b, np.float64).reshape(-1) for b in blobs)
    n, c = x.shape[:2]
    xs = x.reshape(n, c, -1).astype(np.float64)
    if use_stored:
        mean, inv = mean_s, inv_s
    else:
        mean = xs.mean(axis=(0, 2))
        var = ((xs - mean[None, :, None]) ** 2).mean(axis=(0, 2))
        inv = (var + eps) ** -0.5
        mean_s = (1 - momentum) * mean + momentum * mean_s
        inv_s = (1 - momentum) * inv + momentum * inv_s
    y = (xs - mean[None, :, None]) * inv[None, :, None] * slope[None, :, None] + bias[None, :, None]
    return y.reshape(x.shape), mean_s, inv_s


def _bn(net):
    return next(layer for layer in net.layers if layer.name == "bn")


def test_the_net_tells_the_lineage():
    assert _bn(Net(read_net(net_text()), TRAIN)).lineage == "lsoftmax"  # L-Softmax's own type in the net
    assert _bn(Net(read_net(net_text("lsoftmax", marker=False)), TRAIN)).lineage == "lsoftmax"
    assert _bn(Net(read_net(net_text(marker=False)), TRAIN)).lineage == "pspnet"
    assert _bn(Net(read_net(net_text("upstream")), TRAIN)).lineage == "pspnet"
    hed_too = net_text().replace('name: "lsm"', 'name: "lsm"\nlayer { name: "edges" type: "ImageLabelmapData" top: "e" '
                                 'top: "l" image_data_param { source: "x.txt" } include { phase: TRAIN } }')
    with pytest.raises(Exception, match=r"several forks' own types.*set lineage: to one of \['hed', 'lsoftmax'\]"):
        Net(read_net(hed_too), TEST)


def test_train_then_test_follow_the_forks_formulas():
    net = Net(read_net(net_text(fields="momentum: 0.8 eps: 0.001")), TRAIN)
    bn = _bn(net)
    assert [tuple(b.shape) for b in bn.blobs] == [(1, 3)] * 4
    assert float(bn.blobs[3].detach().min()) == 1.0 and float(bn.blobs[2].detach().abs().max()) == 0.0
    assert [p.lr_mult for p in bn.param.param] == []  # the fork forces no lr_mult: 0 on the statistics
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 5, 5)).astype(f32) * 3
    label = torch.tensor([0.0, 1.0, 2.0, 1.0])
    stored = [b.detach().numpy().copy() for b in bn.blobs]
    net.forward({"data": torch.from_numpy(x), "label": label})
    conv = net.blob_data["conv"].detach().numpy()
    want, mean_s, inv_s = fork_forward(conv, stored, 0.8, float(f32(0.001)), use_stored=False)
    np.testing.assert_allclose(net.blob_data["bn"].detach().numpy(), want, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(bn.blobs[2].detach().numpy().reshape(-1), mean_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.blobs[3].detach().numpy().reshape(-1), inv_s, rtol=1e-5)
    # TEST: the stored mean and inverse std as they are (no eps)
    test = Net(read_net(net_text(fields="momentum: 0.8 eps: 0.001")), TEST)
    test.copy_from(net.to_weights())
    test.forward({"data": torch.from_numpy(x), "label": label})
    blobs = [b.detach().numpy() for b in _bn(test).blobs]
    want, *_ = fork_forward(test.blob_data["conv"].numpy(), blobs, 0.8, 0.001, use_stored=True)
    np.testing.assert_allclose(test.blob_data["bn"].numpy(), want, rtol=1e-5, atol=1e-5)


def test_gradients_train_and_frozen():
    from neocaffe.layers.bn import BNLayer
    from google.protobuf import text_format

    from neocaffe.layers.base import NetSoFar
    from neocaffe.proto import caffe_pb2

    told = NetSoFar(caffe_pb2.NetParameter(lineage="lsoftmax"), (), {})
    rng = np.random.default_rng(1)
    for fields, phase in (("eps: 0.01", TRAIN), ("frozen: true", TRAIN)):
        lp = text_format.Parse(BN.format(fields=fields, params="")[len("layer "):].strip()[1:-1], caffe_pb2.LayerParameter())
        layer = BNLayer(lp, [(3, 2, 4, 4)], phase, net=told).double()
        with torch.no_grad():
            layer.blobs[2].copy_(torch.tensor([[0.3, -0.2]]))
            layer.blobs[3].copy_(torch.tensor([[0.7, 1.6]]))
        x = torch.tensor(rng.standard_normal((3, 2, 4, 4)), requires_grad=True)
        names = [] if "frozen" in fields else ["blobs.0", "blobs.1"]
        params = [dict(layer.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]

        def f(x, *ps):  # TRAIN: the statistics move but the forward reads the batch's; frozen: they hold
            return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

        assert torch.autograd.gradcheck(f, (x, *params), atol=1e-6, rtol=1e-4)
        if "frozen" in fields:  # the fork's frozen backward: dy * slope * inv_std, no slope/bias diff
            x.grad = None
            layer(x).sum().backward()
            want = layer.blobs[0].detach().reshape(1, 2, 1, 1) * torch.tensor([0.7, 1.6], dtype=torch.float64).reshape(1, 2, 1, 1)
            torch.testing.assert_close(x.grad, want.expand_as(x))
            assert layer.blobs[0].grad is None and layer.blobs[1].grad is None


def test_folded_and_onnx_keep_the_inverse_std(tmp_path):
    pytest.importorskip("onnxruntime")
    from neocaffe.export import fold_net
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import onnxruntime_outputs

    text = net_text("lsoftmax", marker=False)
    net = Net(read_net(text), TEST)
    with torch.no_grad():
        bn = _bn(net)
        bn.blobs[2].copy_(torch.tensor([[0.3, -0.2, 0.1]]))
        bn.blobs[3].copy_(torch.tensor([[0.7, 1.6, 2.5]]))
    x = np.random.default_rng(2).standard_normal((4, 2, 5, 5)).astype(f32)
    with torch.no_grad():
        net.forward({"data": torch.from_numpy(x), "label": torch.zeros(4)})
    ref = net.blob_data["bn"].clone().numpy()
    folded, chains = fold_net(net)
    assert [c.removed for c in chains] == [["bn"]]
    with torch.no_grad():
        folded.forward({"data": torch.from_numpy(x), "label": torch.zeros(4)})
    np.testing.assert_allclose(folded.blob_data["bn"].numpy(), ref, rtol=1e-5, atol=1e-5)
    got = onnxruntime_outputs(export_onnx(net), {"data": x, "label": np.zeros(4, f32)}, ["flat", "label"])
    np.testing.assert_allclose(got["flat"], ref.reshape(4, -1), rtol=1e-5, atol=1e-5)  # the BN's output, flattened
