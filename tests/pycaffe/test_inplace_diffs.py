"""Caffe's single-Blob rule for in-place layers, checked chain by chain against Caffe's backward formulas.

A blob rewritten in place (``top == bottom``) is one Blob in Caffe: each in-place layer's Backward reads
its top diff from that Blob and writes its bottom diff back into it, so after ``Net::Backward`` the
blob's diff is the gradient at the value its first writer produced, below every in-place layer. The
chains are those real nets use (BVLC's reference models, ResNet's BatchNorm+Scale, the fork's Sparsify
and SymmetricRectify). Each runs TRAIN and TEST, a full backward from a loss and a ranged backward
(``BackwardFromTo``) whose start layer's top diff the user sets, with and without ``force_backward``;
the reference applies each layer's Caffe formula in turn (read from BVLC's relu/batch_norm/scale/
dropout layers and the fork's sparsify/symmetric_rectify layers) to the blob data the forward left,
and gives Scale's parameter diffs from the copy of its bottom it keeps when in place.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import caffe

IN = ("name: 'chain' force_backward: true\n"
      "layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } } }\n"
      "layer { name: 'target' type: 'Input' top: 'target' input_param { shape { dim: 4 dim: 6 dim: 3 dim: 3 } } }\n")
CONV = ("layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv' convolution_param { num_output: 6 "
        "kernel_size: 3 weight_filler { type: 'gaussian' std: 0.4 } bias_filler { type: 'gaussian' std: 0.3 } } }\n")
IP_IN = ("name: 'chain' force_backward: true\n"
         "layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 7 } } }\n"
         "layer { name: 'target' type: 'Input' top: 'target' input_param { shape { dim: 4 dim: 6 } } }\n"
         "layer { name: 'conv' type: 'InnerProduct' bottom: 'data' top: 'conv' inner_product_param { num_output: 6 "
         "weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'gaussian' std: 0.3 } } }\n")
LOSS = "layer { name: 'loss' type: 'EuclideanLoss' bottom: 'conv' bottom: 'target' top: 'loss' }\n"


def _inplace(name: str, kind: str, extra: str = "") -> str:
    return f"layer {{ name: '{name}' type: '{kind}' bottom: 'conv' top: 'conv' {extra} }}\n"


BN = _inplace("bn", "BatchNorm")
BN_GLOBAL = _inplace("bn", "BatchNorm", "batch_norm_param { use_global_stats: true }")
SCALE = _inplace("scale", "Scale", "scale_param { bias_term: true filler { type: 'uniform' min: 0.5 max: 1.5 } "
                                    "bias_filler { type: 'gaussian' std: 0.2 } }")
RELU = _inplace("relu", "ReLU")
DROP = _inplace("drop", "Dropout", "dropout_param { dropout_ratio: 0.3 }")
SPARSIFY = _inplace("sp", "Sparsify", "sparsify_param { thre: 0.05 coef: 0.01 }")
SYMREC = _inplace("sr", "SymmetricRectify", "symmetric_rectify_param { filler { type: 'uniform' min: 0.05 max: 0.3 } }")

# name -> (prototxt body, in-place layers in order)
CHAINS = {
    "conv_relu": (IN + CONV + RELU, ["relu"]),
    "conv_bn_scale_relu": (IN + CONV + BN + SCALE + RELU, ["bn", "scale", "relu"]),
    "conv_bn_scale": (IN + CONV + BN + SCALE, ["bn", "scale"]),
    "conv_bn_global_stats_scale_relu": (IN + CONV + BN_GLOBAL + SCALE + RELU, ["bn", "scale", "relu"]),
    "ip_relu_dropout": (IP_IN + RELU + DROP, ["relu", "drop"]),
    "conv_sparsify_relu": (IN + CONV + SPARSIFY + RELU, ["sp", "relu"]),
    "conv_symmetric_rectify": (IN + CONV + SYMREC, ["sr"]),
}


def _net(tmp_path, body: str, phase: int, loss: bool, force_backward: bool = True) -> caffe.Net:
    path = tmp_path / "chain.prototxt"
    if not force_backward:
        body = body.replace("force_backward: true", "force_backward: false", 1)
    path.write_text(body + (LOSS if loss else ""))
    net = caffe.Net(str(path), phase)
    rng = np.random.default_rng(3)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["target"].data[...] = rng.standard_normal(net.blobs["target"].shape)
    if "bn" in net.params:  # running statistics (mean, variance, scale factor 2) for TEST
        c = net.params["bn"][0].data.shape[0]
        net.params["bn"][0].data[...] = rng.standard_normal(c)
        net.params["bn"][1].data[...] = rng.uniform(0.5, 2.0, c)
        net.params["bn"][2].data[...] = 2.0
    return net


def _axes(a: np.ndarray) -> tuple[int, ...]:
    return (0, 2, 3) if a.ndim == 4 else (0,)


def _bc(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (like.ndim - 2))


def _caffe_backward(net: caffe.Net, layers: list[str], top_diff: np.ndarray, phase: int,
                    global_stats: bool = False) -> dict[str, np.ndarray]:
    """Each in-place layer's Caffe Backward from the last to the first, reading the blob data the forward
    left (``final``) where Caffe reads blob data, and the layer's own copies where Caffe keeps them.
    Returns the diff after each layer ran (the blob's diff after the first one is the answer) and, under
    'scale/0' and 'scale/1', Scale's parameter diffs. ``global_stats``: BatchNorm's use_global_stats
    (TEST's default; set explicitly, TRAIN too)."""
    batch_stats = phase == caffe.TRAIN and not global_stats
    x = torch.tensor(net.blobs["data"].data, dtype=torch.float64)
    w = torch.tensor(net.params["conv"][0].data, dtype=torch.float64)
    b = torch.tensor(net.params["conv"][1].data, dtype=torch.float64)
    pre = (F.conv2d(x, w, b) if x.dim() == 4 else x @ w.T + b).numpy()
    final = net.blobs["conv"].data.astype(np.float64)
    # each in-place layer's input, forward in NumPy (the values Caffe's layers keep copies of)
    inputs = {}
    h = pre
    for name in layers:
        inputs[name] = h
        if name == "bn":
            if batch_stats:
                mean, var = h.mean(_axes(h)), h.var(_axes(h))
            else:
                sf = net.params["bn"][2].data[0]
                mean, var = net.params["bn"][0].data / sf, net.params["bn"][1].data / sf
            h = (h - _bc(mean, h)) / np.sqrt(_bc(var, h) + 1e-5)
        elif name == "scale":
            h = h * _bc(net.params["scale"][0].data, h) + _bc(net.params["scale"][1].data, h)
        elif name == "relu":
            h = np.maximum(h, 0)
        elif name == "sp":
            h = np.sign(h) * np.maximum(np.abs(h) - 0.05, 0)
        elif name == "sr":
            t = _bc(np.maximum(net.params["sr"][0].data, 0), h)
            h = np.where(np.abs(h) > t, h - np.sign(h) * t, 0)
        # Dropout: its output is only observable in ``final`` (the last layer of that chain)
    diffs = {}
    d = top_diff.astype(np.float64)
    for name in reversed(layers):
        h_in = inputs[name]
        if name == "relu":  # relu_layer.cpp: bottom_data is the blob (the final value when in place)
            d = d * (final > 0)
        elif name == "drop":  # dropout_layer.cpp: top_diff * mask * scale (TEST: identity)
            if phase == caffe.TRAIN:
                scale = 1.0 / (1.0 - np.float32(0.3))
                d = d * (final != 0) * np.float32(scale)
        elif name == "scale":  # scale_layer.cpp: bottom_diff = top_diff * scale; the parameter diffs sum
            # top_diff * bottom over all but the channel axis, bottom being temp_ (its copy) when in place
            diffs["scale/0"] = (d * h_in).sum(_axes(d))
            diffs["scale/1"] = d.sum(_axes(d))
            d = d * _bc(net.params["scale"][0].data, d)
        elif name == "bn":  # batch_norm_layer.cpp, x_norm_ its own copy of the normalized top
            if batch_stats:
                var = h_in.var(_axes(h_in))
                xn = (h_in - _bc(h_in.mean(_axes(h_in)), h_in)) / np.sqrt(_bc(var, h_in) + 1e-5)
                d = (d - _bc(d.mean(_axes(d)), d) - xn * _bc((d * xn).mean(_axes(d)), d)) / np.sqrt(_bc(var, d) + 1e-5)
            else:
                sf = net.params["bn"][2].data[0]
                d = d / np.sqrt(_bc(net.params["bn"][1].data / sf, d) + 1e-5)
        elif name == "sp":  # the fork's sparsify_layer.cpp: (dy + coef*sign(top)) * (top != 0), top = blob data
            d = (d + 0.01 * np.sign(final)) * (final != 0)
        elif name == "sr":  # the fork's symmetric_rectify_layer.cpp: dy where the blob's data != 0
            d = d * (final != 0)
        diffs[name] = d
    return diffs


@pytest.mark.parametrize("force_backward", [True, False], ids=["force", "noforce"])
@pytest.mark.parametrize("mode", ["loss", "output", "ranged"])
@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST], ids=["TRAIN", "TEST"])
@pytest.mark.parametrize("chain", list(CHAINS))
def test_in_place_chain_diff_is_caffes(tmp_path, chain, phase, mode, force_backward):
    """``loss``: a full backward from a EuclideanLoss on the chain's blob; ``output``: a full backward
    of a deploy-style net whose output is the chain's blob, its diff set by the user (Grad-CAM style);
    ``ranged``: BackwardFromTo(last in-place layer, conv) from a diff the user set on the blob.
    Without ``force_backward`` Caffe's Input blobs need no backward (data's diff stays 0), and a net
    without a loss needs none anywhere: the user's diff stays on the blob, no layer runs."""
    body, layers = CHAINS[chain]
    net = _net(tmp_path, body, phase, loss=mode == "loss", force_backward=force_backward)
    net.forward()
    final = net.blobs["conv"].data.copy()
    if mode == "loss":  # EuclideanLoss's bottom diff: (a - b) / N, the top diff of the last in-place layer
        g = (final - net.blobs["target"].data) / final.shape[0]
        net.backward()
    else:
        g = np.random.default_rng(4).standard_normal(final.shape).astype(np.float32)
        if mode == "output":
            net.backward(conv=g)
        else:
            net.backward(start=layers[-1], end="conv", conv=g)
    got = net.blobs["conv"].diff
    if not force_backward and mode != "loss":  # Net::Init: no layer contributes a loss, none needs backward
        np.testing.assert_array_equal(got, g)
        assert not net.blobs["data"].diff.any() and not net.params["conv"][0].diff.any()
        if "scale" in layers:
            assert not net.params["scale"][0].diff.any() and not net.params["scale"][1].diff.any()
        return
    ref_all = _caffe_backward(net, layers, g, phase, global_stats="use_global_stats: true" in body)
    ref = ref_all[layers[0]]
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(ref).max())))
    if "scale" in layers:  # parameter diffs (a fresh net: nothing accumulated before this backward)
        for k in (0, 1):
            want = ref_all[f"scale/{k}"]
            np.testing.assert_allclose(net.params["scale"][k].diff, want, rtol=2e-4,
                                       atol=2e-5 * max(1.0, float(np.abs(want).max())))
    if not force_backward:  # an Input blob needs a diff only under force_backward
        assert not net.blobs["data"].diff.any()
        return
    # the layer below read that diff: the data diff is the first writer's backward of it
    x = torch.tensor(net.blobs["data"].data, dtype=torch.float64)
    w = torch.tensor(net.params["conv"][0].data, dtype=torch.float64)
    r = torch.tensor(ref)
    dx = torch.nn.grad.conv2d_input(x.shape, w, r) if x.dim() == 4 else r @ w
    np.testing.assert_allclose(net.blobs["data"].diff, dx.numpy(), rtol=2e-4,
                               atol=2e-5 * max(1.0, float(dx.abs().max())))


def test_input_blob_rewritten_in_place_keeps_the_diff_at_the_input(tmp_path):
    """For an Input blob the first writer is the input itself: a Scale in place on 'data' leaves the
    input's gradient, not the gradient above the Scale, in data's diff."""
    path = tmp_path / "n.prototxt"
    path.write_text("force_backward: true\n"
                    "layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }\n"
                    "layer { name: 's' type: 'Scale' bottom: 'data' top: 'data' "
                    "scale_param { filler { type: 'constant' value: 3 } } }\n")
    net = caffe.Net(str(path), caffe.TEST)
    net.forward(data=np.ones((2, 3), np.float32))
    net.backward(data=np.full((2, 3), 2.0, np.float32))  # the output is 'data' itself, after the Scale
    np.testing.assert_allclose(net.blobs["data"].diff, np.full((2, 3), 6.0))


def test_deploy_net_without_force_backward_runs_no_backward(tmp_path):
    """Caffe: a net with no loss and no force_backward needs no backward anywhere; its blobs' diffs
    stay as they were (the output's, set by the user, included) and no graph is recorded."""
    path = tmp_path / "n.prototxt"
    path.write_text("layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }\n"
                    "layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { "
                    "num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }\n"
                    "layer { name: 'relu' type: 'ReLU' bottom: 'ip' top: 'ip' }\n")
    net = caffe.Net(str(path), caffe.TEST)
    net.forward(data=np.ones((2, 3), np.float32))
    net.backward(ip=np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(net.blobs["ip"].diff, np.ones((2, 2)))
    assert not net.params["ip"][0].diff.any() and not net.blobs["data"].diff.any()
