"""prune: the pruned net computes the original's outputs (BatchNorm/Scale, Eltwise, grouped convolutions,
InnerProduct after a convolution), removes what it can and keeps what it must."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.caffemodel import LayerWeights
from neocaffe.io.prototxt import parse_text, read_net
from neocaffe.io.weights import load_weights, save_weights, weights_by_name
from neocaffe.proto import caffe_pb2
from neocaffe.tools import prune
from neocaffe.tools.prune import prune_net

BN_NET = """
name: "bn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip" inner_product_param { num_output: 5 } }
"""
ELTWISE_NET = """
name: "res"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 7 dim: 7 } } }
layer { name: "a" type: "Convolution" bottom: "data" top: "a" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "relu_a" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "a" top: "cat" }
layer { name: "c" type: "Convolution" bottom: "cat" top: "c" convolution_param { num_output: 4 kernel_size: 1 } }
"""
GROUP_NET = """
name: "groups"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 5 pad: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3" convolution_param { num_output: 4 kernel_size: 1 group: 2 } }
layer { name: "dw" type: "Convolution" bottom: "conv3" top: "dw" convolution_param { num_output: 4 kernel_size: 3 group: 4 } }
"""


def net_param(text):
    return parse_text(text, caffe_pb2.NetParameter())


def random_weights(npm, seed=0):
    net = Net(npm)
    rng = np.random.default_rng(seed)
    out = {}
    for name, blobs in net.params_by_layer().items():
        arrs = [rng.normal(size=tuple(b.shape)).astype(np.float32) for b in blobs]
        if net.layer(name).param.type == "BatchNorm":
            arrs = [arrs[0], np.abs(arrs[1]) + 0.5, np.array([2.0], np.float32)]
        out[name] = arrs
    return out


def as_layers(npm, arrays):
    types = {lp.name: lp.type for lp in npm.layer}
    return [LayerWeights(n, types[n], [np.asarray(a, np.float32) for a in b]) for n, b in arrays.items()]


def outputs(npm, weights, x):
    net = Net(npm)
    net.copy_from(weights)
    with torch.no_grad():
        net.forward({"data": x})
    return {b: net.blob_data[b].clone() for b in net.outputs}


def check_same(npm, arrays, threshold=1e-4, tol=1e-5):
    result = prune_net(npm, as_layers(npm, arrays), threshold)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=tuple(npm.layer[0].input_param.shape[0].dim))
                         .astype(np.float32))
    want, got = outputs(npm, as_layers(npm, arrays), x), outputs(result.net, result.weights, x)
    assert want.keys() == got.keys()
    for k in want:
        scale = max(want[k].abs().max().item(), 1.0)
        assert (want[k] - got[k]).abs().max().item() <= tol * scale, k
    return result


def layer(npm, name):
    return next(lp for lp in npm.layer if lp.name == name)


@pytest.mark.parametrize("flatten", [False, True])
def test_batchnorm_scale_pooling_and_inner_product_after_a_convolution(flatten):
    text = BN_NET
    if flatten:  # an InnerProduct reading a Flatten of the convolution reads the same H x W columns
        text = text.replace('bottom: "conv2" top: "ip"', 'bottom: "flat" top: "ip"').replace(
            'layer { name: "ip"', 'layer { name: "flat" type: "Flatten" bottom: "conv2" top: "flat" }\nlayer { name: "ip"')
    npm = net_param(text)
    w = random_weights(npm)
    w["conv1"][0][1] = 0.0  # filter 1 is dead, and conv2 does not read it either: unused
    w["conv2"][0][:, 1] = 0.0
    w["conv1"][0][4] = 0.0  # dead; after BN/Scale its value is negative, ReLU makes it 0: foldable past pad 1
    bn = w["bn1"]
    w["conv1"][1][4] = 0.0
    bn[0][4], bn[1][4] = 2.0 * 3.0, 2.0 * 1.0  # mean 3, var 1 (scale factor 2)
    w["sc1"][0][4], w["sc1"][1][4] = 1.0, 0.5  # (0 - 3) / 1 * 1 + 0.5 < 0
    w["conv1"][0][6] = 0.0  # dead with a positive constant read by padded conv2: must stay
    bn[0][6], bn[1][6] = 0.0, 2.0
    w["sc1"][0][6], w["sc1"][1][6] = 1.0, 2.0
    w["conv2"][0][:, 3] = 0.0  # conv2 ignores channel 3 although conv1 computes it: unused
    w["conv2"][0][2] = 0.0  # a dead conv2 filter with a bias: its constant folds into ip's bias
    w["conv2"][1][2] = 0.7
    result = check_same(npm, w)
    assert result.kept == {"conv1": (5, 8), "conv2": (5, 6), "ip": (5, 5)}
    out = result.net
    assert layer(out, "conv1").convolution_param.num_output == 5
    shapes = {lw.name: [b.shape for b in lw.blobs] for lw in result.weights}
    assert shapes["bn1"] == [(5,), (5,), (1,)] and shapes["sc1"] == [(5,), (5,)]
    assert shapes["conv2"] == [(5, 5, 3, 3), (5,)] and shapes["ip"] == [(5, 5 * 5 * 5), (5,)]


def test_an_inner_product_whose_weights_are_a_bottom_keeps_what_it_reads():
    """happynear's InnerProduct takes its weights from bottom 1 (here a Parameter): prune cannot see which
    channels it reads, so it removes none of them, and the net computes what it did."""
    npm = net_param("""
name: "wb"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 5 dim: 64 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" bottom: "w" top: "ip"
        inner_product_param { num_output: 5 bias_term: false } }
""")
    w = random_weights(npm)
    w["conv1"][0][1], w["conv1"][1][1] = 0.0, 0.0  # dead, but the weight bottom may read it
    w["w"][0][:, 16:32] = 0.0  # ... and here it does not: still unknown to prune, which sees no blobs
    result = check_same(npm, w)
    assert result.kept == {"conv1": (4, 4)}


def test_eltwise_and_concat_consumers():
    npm = net_param(ELTWISE_NET)
    w = random_weights(npm, 2)
    # channel 2 of a, b and sum is dead in both producers: constants relu(b_a) + 0.5 * b_b fold into c
    w["a"][0][2] = 0.0
    w["b"][0][2] = 0.0
    w["b"][0][:, 2] = 0.0  # b reads a's channel 2 too (padded): a's constant must be 0 there ...
    w["a"][1][2] = -1.0  # ... so relu gives 0
    # channel 5: nobody reads it (b's input 5, c's inputs 5 (sum) and 6 + 5 (a, through the concat))
    w["b"][0][:, 5] = 0.0
    w["c"][0][:, 5] = 0.0
    w["c"][0][:, 11] = 0.0
    result = check_same(npm, w)
    assert result.kept["a"] == (4, 6) and result.kept["b"] == (4, 6)
    assert [b.shape for b in weights_by_name(result.weights)["c"].blobs] == [(4, 8, 1, 1), (4,)]
    # channel 2 is read through the concat as a (value 0) and through sum (relu(-1) + 0.5 * b_b != 0)
    w2 = random_weights(npm, 2)
    w2["a"][0][2] = 0.0
    w2["c"][0][:, 2] = 0.0  # the sum's channel 2 is unused, but a's channel 2 is still read by b
    assert check_same(npm, w2).kept["a"] == (6, 6)


def test_grouped_convolutions_keep_equal_groups_and_kernels_shrink():
    npm = net_param(GROUP_NET)
    w = random_weights(npm, 3)
    w["conv1"][0][:, :, [0, 4], :] = 0.0  # the outer ring of every 5x5 kernel: 3x3 with pad 1
    w["conv1"][0][:, :, :, [0, 4]] = 0.0
    w["conv2"][0][:, 1] = 0.0  # input channel 1 (group 0) and 5 (group 1, local 1) unused: one per group
    w["conv2"][0][4:, 1] = 0.0
    w["conv2"][0][:4, 2] = 0.0  # channel 2 (group 0) unused, but no partner in group 1: stays
    w["conv2"][0][0] = 0.0  # conv2 filters 0 (group 0) and 6 (group 1) dead with negative biases
    w["conv2"][0][6] = 0.0
    w["conv2"][1][[0, 6]] = -1.0
    w["conv3"][0][2] = 0.0  # dw reads group 2 only from conv3's filter 2: removing it removes the dw group
    w["conv3"][1][2] = 0.0
    w["dw"][0][2] = 0.0
    w["dw"][1][2] = 0.0
    result = check_same(npm, w)
    assert result.kept["conv1"] == (6, 8) and result.kept["conv2"] == (6, 8)
    c1, c2 = layer(result.net, "conv1").convolution_param, layer(result.net, "conv2").convolution_param
    assert (c1.kernel_h, c1.kernel_w, c1.pad_h, c1.pad_w, len(c1.kernel_size), len(c1.pad)) == (3, 3, 1, 1, 0, 0)
    assert c2.group == 2 and weights_by_name(result.weights)["conv2"].blobs[0].shape == (6, 3, 3, 3)
    # dw's channel 2 is a net output (kept); conv3's filter 2 feeds it, so it stays too
    assert layer(result.net, "dw").convolution_param.group == 4


def test_depthwise_groups_removed_whole():
    npm = net_param(GROUP_NET + 'layer { name: "out" type: "Convolution" bottom: "dw" top: "out" '
                                'convolution_param { num_output: 3 kernel_size: 1 } }\n')
    w = random_weights(npm, 4)
    w["out"][0][:, [1, 3]] = 0.0  # out ignores dw's channels 1 and 3, and dw's filters 1 and 3 ignore
    w["dw"][0][[1, 3]] = 0.0  # conv3's filters 1 (group 0) and 3 (group 1): whole depthwise groups go
    result = check_same(npm, w)
    assert result.kept["dw"] == (2, 4) and layer(result.net, "dw").convolution_param.group == 2
    assert result.kept["conv3"] == (2, 4) and layer(result.net, "conv3").convolution_param.group == 2
    w["out"][0][:, 3] = 1.0  # dw's filter 3 now computes something read: only group 0 of conv3 would lose
    w["dw"][0][3] = 1.0  # a filter, so it keeps it, and dw's group 1 then reads it: nothing goes
    assert check_same(npm, w).kept == {"conv1": (8, 8), "conv2": (8, 8), "conv3": (4, 4), "dw": (4, 4), "out": (3, 3)}


def test_threshold_and_command_line(tmp_path, capsys):
    npm = net_param(BN_NET)
    w = random_weights(npm, 5)
    w["conv2"][0][:, 0] = 1e-6  # small, not zero
    assert prune_net(npm, as_layers(npm, w), 0.0).kept["conv1"] == (8, 8)
    check_same(npm, w, 1e-4, tol=1e-4)  # within the threshold's effect
    (tmp_path / "n.prototxt").write_text(BN_NET)
    save_weights(tmp_path / "w.caffemodel", as_layers(npm, w))
    assert prune.main(["--prototxt", str(tmp_path / "n.prototxt"), "--caffemodel", str(tmp_path / "w.caffemodel")]) == 0
    printed = capsys.readouterr().out
    assert "conv1\t7/8 filters" in printed and "Saved as" in printed
    pruned = read_net(tmp_path / "n.prototxt.pruned.prototxt")
    weights = load_weights(tmp_path / "w.caffemodel.pruned.caffemodel.h5")
    assert layer(pruned, "conv1").convolution_param.num_output == 7
    Net(pruned).copy_from(weights)
    assert prune.main(["--prototxt", str(tmp_path / "n.prototxt"), "--caffemodel", str(tmp_path / "w.caffemodel"),
                       "--threshold", "-1"]) == 1
