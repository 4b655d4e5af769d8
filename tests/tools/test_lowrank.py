"""lowrank (the fork's nn_decomposer): full rank reproduces the net, reduced rank has the right shapes,
PCA and SVD agree on the approximation, ranks by ratio, groups, the command line and its file names."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.io.weights import LayerWeights, load_weights, save_weights, weights_by_name
from neocaffe.layers.registry import layer_types
from neocaffe.tools import lowrank, rank_analyzer
from neocaffe.tools.lowrank import (LowRankError, basis_pca, basis_svd, decompose_filters, decompose_net,
                                    rank_by_energy, rank_by_norm)

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 13 dim: 11 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 force_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.2 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 dilation: 1 group: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 5 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_w: 1 bias_term: false } }
"""
FC = """
layer { name: "fc" type: "InnerProduct" bottom: "conv3" top: "fc" inner_product_param { num_output: 7 } }
"""


def _needs(*types):
    missing = [t for t in types if t not in layer_types()]
    if missing:
        pytest.skip(f"layer types not registered yet: {missing}")


def _random_weights(net_param, seed=0):
    net = Net(net_param)
    rng = np.random.default_rng(seed)
    out = []
    for name, blobs in net.params_by_layer().items():
        out.append(LayerWeights(name, net.layer(name).param.type,
                                [rng.normal(size=tuple(b.shape)).astype(np.float32) for b in blobs]))
    return out


def _net_with(net_param, weights):
    net = Net(net_param)
    copied = net.copy_from(weights)
    assert sorted(copied) == sorted(net.params_by_layer())
    return net


def _outputs(net_param, weights, x, blobs):
    net = _net_with(net_param, weights)
    with torch.no_grad():
        net.forward({"data": x})
    return {b: net.blob_data[b].clone() for b in blobs}


def _assert_same(a, b, tol=1e-4):
    for k in a:
        scale = max(a[k].abs().max().item(), 1e-12)
        assert (a[k] - b[k]).abs().max().item() <= tol * scale, k


@pytest.mark.parametrize("lra_type", ("pca", "svd"))
def test_full_rank_reproduces_the_net(lra_type):
    _needs("Input", "Convolution", "ReLU")
    net_param = read_net(NET)
    weights = _random_weights(net_param)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 13, 11)).astype(np.float32))
    # conv1: 8 filters of 27 values; conv2: 2 groups of 3 filters of 36 values; conv3: 5 filters of 18
    res = decompose_net(net_param, weights, ranks=[8, 6, 5], lra_type=lra_type)
    assert res.ranks == {"conv1": 8, "conv2": 6, "conv3": 5}
    assert res.info == ["conv1\t8/8 filters", "conv2\t6/6 filters", "conv3\t5/5 filters"]
    names = [lp.name for lp in res.net.layer]
    assert names == ["data", "conv1_lowrank", "conv1_linear", "relu1", "conv2_lowrank", "conv2_linear",
                     "conv3_lowrank", "conv3_linear"]
    want = _outputs(net_param, weights, x, ["conv1", "conv2", "conv3"])
    got = _outputs(res.net, res.weights, x, ["conv1", "conv2", "conv3"])
    _assert_same(want, got)


def test_rankratio_one_is_full_rank_and_matches():
    _needs("Input", "Convolution", "ReLU")
    text = NET.replace("group: 2", "group: 1")
    net_param = read_net(text)
    weights = _random_weights(net_param, seed=3)
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 3, 13, 11)).astype(np.float32))
    for lra_type in ("pca", "svd"):
        res = decompose_net(net_param, weights, rankratio=1.0, lra_type=lra_type)
        assert res.ranks == {"conv1": 8, "conv2": 6, "conv3": 5}
        _assert_same(_outputs(net_param, weights, x, ["conv3"]), _outputs(res.net, res.weights, x, ["conv3"]))


def test_reduced_rank_shapes_and_layer_params():
    _needs("Input", "Convolution", "ReLU")
    net_param = read_net(NET)
    weights = _random_weights(net_param)
    res = decompose_net(net_param, weights, ranks=[3, 5, 2])  # conv2: 5 rounds down to 4 (group 2)
    assert res.ranks == {"conv1": 3, "conv2": 4, "conv3": 2}
    w = {lw.name: [b.shape for b in lw.blobs] for lw in res.weights}
    assert w["conv1_lowrank"] == [(3, 3, 3, 3)]
    assert w["conv1_linear"] == [(8, 3, 1, 1), (8,)]  # the bias moves to the 1x1 layer
    assert w["conv2_lowrank"] == [(4, 4, 3, 3)]
    assert w["conv2_linear"] == [(6, 2, 1, 1), (6,)]
    assert w["conv3_lowrank"] == [(2, 6, 2, 3)]
    assert w["conv3_linear"] == [(5, 2, 1, 1)]
    layers = {lp.name: lp for lp in res.net.layer}
    low, lin = layers["conv1_lowrank"], layers["conv1_linear"]
    assert (low.bottom[:], low.top[:], lin.bottom[:], lin.top[:]) == (["data"], ["conv1_lowrank"],
                                                                       ["conv1_lowrank"], ["conv1"])
    assert low.convolution_param.num_output == 3 and not low.convolution_param.bias_term
    assert not low.convolution_param.HasField("bias_filler") and len(low.param) == 1
    assert low.param[0].force_mult == 1 and list(low.convolution_param.pad) == [1]
    assert lin.convolution_param.num_output == 8 and lin.convolution_param.bias_term
    assert list(lin.convolution_param.kernel_size) == [1] and list(lin.convolution_param.pad) == [0]
    assert len(lin.param) == 2 and lin.param[1].lr_mult == 2
    l3 = layers["conv3_linear"].convolution_param
    assert list(l3.kernel_size) == [1] and not l3.HasField("kernel_h") and not l3.HasField("stride_w")
    assert not l3.HasField("pad_w") and layers["conv2_lowrank"].convolution_param.group == 2
    assert layers["conv2_linear"].convolution_param.group == 2
    net = _net_with(res.net, res.weights)  # builds and runs
    with torch.no_grad():
        net.forward({"data": torch.zeros(2, 3, 13, 11)})
    assert tuple(net.blob_data["conv3"].shape) == (2, 5, 5, 3)


def test_pca_and_svd_give_the_same_best_approximation():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(12, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    for k in (1, 4, 9, 12):
        bp, cp, _ = basis_pca(w, rank=k)
        bs, cs, _ = basis_svd(w, rank=k)
        np.testing.assert_allclose(cp @ bp, cs @ bs, atol=1e-10)
        np.testing.assert_allclose(cp.T @ cp, np.eye(k), atol=1e-10)  # PCA: orthonormal coefficients
        s = np.linalg.svd(w, compute_uv=False)[:k]
        np.testing.assert_allclose(np.linalg.norm(bs, axis=1), np.sqrt(s))  # SVD: sqrt(S) on each side
        best = np.linalg.norm(w - cs @ bs)
        tail = np.sqrt((np.linalg.svd(w, compute_uv=False)[k:] ** 2).sum())  # Eckart-Young
        np.testing.assert_allclose(best, tail, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(basis_pca(w, rank=12)[1] @ basis_pca(w, rank=12)[0], w, atol=1e-10)


def test_ratio_rules():
    s = np.array([4.0, 2.0, 1.0, 1.0])
    lam = s**2  # PCA eigenvalues are proportional to the squared singular values
    # cumulative fractions 16/22, 20/22, 21/22, 1
    assert [rank_by_energy(lam, r) for r in (0.5, 0.8, 0.95, 0.96, 1.0)] == [1, 2, 3, 4, 4]
    for r in (0.3, 0.7, 0.9, 0.95, 0.99):  # the fork's SVD rule compares norms: svd at r == pca at r^2
        assert rank_by_norm(s, r) == rank_by_energy(lam, r * r)
    with pytest.raises(LowRankError, match="rankratio"):
        rank_by_energy(lam, 0.0)
    rng = np.random.default_rng(6)
    w = rng.normal(size=(10, 30)) * np.linspace(2, 0.1, 10)[:, None]
    assert basis_svd(w, ratio=0.95)[2] == basis_pca(w, ratio=0.95**2)[2]


def test_grouped_rules():
    w = np.random.default_rng(0).normal(size=(6, 2, 3, 3)).astype(np.float32)
    with pytest.raises(LowRankError, match="grouped"):
        decompose_filters(w, ratio=0.9, group=2)
    with pytest.raises(LowRankError, match="between 1 and"):
        decompose_filters(w, rank=8, group=2)  # 4 per group > 3 filters per group
    basis, coeffs, k = decompose_filters(w, "svd", rank=6, group=2)
    assert k == 6 and basis.shape == (6, 2, 3, 3) and coeffs.shape == (6, 3, 1, 1)
    for g in range(2):  # each group rebuilt from its own basis
        rebuilt = coeffs[3 * g:3 * g + 3, :, 0, 0] @ basis[3 * g:3 * g + 3].reshape(3, -1)
        np.testing.assert_allclose(rebuilt, w[3 * g:3 * g + 3].reshape(3, -1), atol=1e-5)


def test_kmeans_with_repeated_filters_is_exact():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    w = base[[0, 1, 2, 1, 0, 2, 2]]
    basis, coeffs, k = decompose_filters(w, "kmeans", rank=3)
    assert k == 3 and set(coeffs.sum(axis=1).ravel()) == {1.0}
    np.testing.assert_allclose(coeffs[:, :, 0, 0] @ basis.reshape(3, -1), w.reshape(7, -1), atol=1e-6)
    with pytest.raises(LowRankError, match="kmeans"):
        decompose_filters(w, "kmeans", ratio=0.9)


def test_selection_rank_config_and_except_layers():
    _needs("Input", "Convolution", "ReLU")
    net_param = read_net(NET)
    weights = _random_weights(net_param)
    res = decompose_net(net_param, weights, rank_config={"conv3": 2})
    assert res.ranks == {"conv3": 2}
    assert [lp.name for lp in res.net.layer] == ["data", "conv1", "relu1", "conv2", "conv3_lowrank", "conv3_linear"]
    kept = weights_by_name(res.weights)["conv1"].blobs[0]
    np.testing.assert_array_equal(kept, weights_by_name(weights)["conv1"].blobs[0])
    res = decompose_net(net_param, weights, ranks=[4, 2], except_layers=["conv2"])
    assert res.ranks == {"conv1": 4, "conv3": 2}
    with pytest.raises(LowRankError, match="exactly one"):
        decompose_net(net_param, weights, ranks=[1, 2, 3], rankratio=0.9)
    with pytest.raises(LowRankError, match="2 ranks"):
        decompose_net(net_param, weights, ranks=[4, 2])
    with pytest.raises(LowRankError, match="conv2.*grouped"):
        decompose_net(net_param, weights, rankratio=0.9)


def test_enable_fc_full_rank():
    _needs("Input", "Convolution", "ReLU", "InnerProduct")
    net_param = read_net(NET + FC)
    weights = _random_weights(net_param, seed=8)
    x = torch.from_numpy(np.random.default_rng(9).normal(size=(2, 3, 13, 11)).astype(np.float32))
    res = decompose_net(net_param, weights, rank_config={"fc": 7}, enable_fc=True)
    assert res.info == ["fc\t7/7 neurons"]
    w = {lw.name: [b.shape for b in lw.blobs] for lw in res.weights}
    assert w["fc_lowrank"] == [(7, 75)] and w["fc_linear"] == [(7, 7), (7,)]
    _assert_same(_outputs(net_param, weights, x, ["fc"]), _outputs(res.net, res.weights, x, ["fc"]))
    res = decompose_net(net_param, weights, rank_config={"fc": 7})  # without --enable_fc: untouched
    assert res.ranks == {}


WEIGHT_BOTTOM_FC = """
layer { name: "w" type: "Parameter" top: "w" parameter_param { shape { dim: 7 dim: 75 } } }
layer { name: "fc_wb" type: "InnerProduct" bottom: "conv3" bottom: "w" top: "fc_wb"
  inner_product_param { num_output: 7 bias_term: false } }
"""


def test_enable_fc_keeps_an_inner_product_whose_weights_are_a_bottom():
    """happynear's form (weights from bottom 1) has no blobs: --ranks/--rankratio keep it, --rank_config
    naming it is an error, and the kept net computes what it did."""
    _needs("Input", "Convolution", "ReLU", "InnerProduct", "Parameter")
    net_param = read_net(NET.replace("group: 2", "group: 1") + FC + WEIGHT_BOTTOM_FC)
    weights = _random_weights(net_param, seed=5)
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(2, 3, 13, 11)).astype(np.float32))
    res = decompose_net(net_param, weights, ranks=[8, 6, 5, 7], enable_fc=True)
    assert res.ranks == {"conv1": 8, "conv2": 6, "conv3": 5, "fc": 7}
    names = [lp.name for lp in res.net.layer]
    assert names[-3:] == ["fc_linear", "w", "fc_wb"]
    assert [b.shape for b in weights_by_name(res.weights)["w"].blobs] == [(7, 75)]
    _assert_same(_outputs(net_param, weights, x, ["fc", "fc_wb"]), _outputs(res.net, res.weights, x, ["fc", "fc_wb"]))
    res = decompose_net(net_param, weights, rankratio=1.0, enable_fc=True)
    assert "fc_wb" not in res.ranks and "fc" in res.ranks
    with pytest.raises(LowRankError, match="'fc_wb'.*bottom 'w'"):
        decompose_net(net_param, weights, rank_config={"fc_wb": 3}, enable_fc=True)


def test_command_line_writes_the_forks_file_names(tmp_path, capsys):
    _needs("Input", "Convolution", "ReLU")
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    model = tmp_path / "w.caffemodel"
    save_weights(model, _random_weights(read_net(NET)))
    cfg = tmp_path / "except.json"
    cfg.write_text(json.dumps(["conv2"]))
    assert lowrank.main(["--prototxt", str(proto), "--caffemodel", str(model), "--ranks", "3,2",
                         "--except_layers", str(cfg), "--lra_type", "svd"]) == 0
    out = capsys.readouterr().out
    assert "conv1\t3/8 filters" in out and "conv3\t2/5 filters" in out and "Done!" in out
    new_net = read_net(str(proto) + ".lowrank.prototxt")
    new_w = load_weights(str(model) + ".lowrank.caffemodel.h5")
    assert [lp.name for lp in new_net.layer][:3] == ["data", "conv1_lowrank", "conv1_linear"]
    assert {lw.name for lw in new_w} == {"conv1_lowrank", "conv1_linear", "conv2", "conv3_lowrank", "conv3_linear"}
    assert lowrank.main(["--prototxt", str(proto), "--caffemodel", str(model), "--ranks", "3,2,2",
                         "--format", "binary"]) == 0
    assert (tmp_path / "w.caffemodel.lowrank.caffemodel").exists()
    assert lowrank.main(["--prototxt", str(proto), "--caffemodel", str(model), "--rankratio", "0.9"]) == 1
    assert "grouped" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lowrank.main(["--prototxt", str(proto), "--caffemodel", str(model), "--rankratio", "0.9", "--ranks", "1"])


# -- rank_analyzer ----------------------------------------------------------------------------------
def test_rank_analyzer_ranks_match_lowrank(tmp_path, capsys):
    rng = np.random.default_rng(11)
    low = rng.normal(size=(16, 3)) @ rng.normal(size=(3, 27))  # 16 filters spanning 3 directions
    conv = (low + 1e-4 * rng.normal(size=low.shape)).reshape(16, 3, 3, 3).astype(np.float32)
    fc = rng.normal(size=(1, 1, 10, 20)).astype(np.float32)  # a legacy V1 InnerProduct blob
    weights = [LayerWeights("conv", "Convolution", [conv, np.zeros(16, np.float32)]),
               LayerWeights("fc", "InnerProduct", [fc], [(1, 1, 10, 20)]),
               LayerWeights("bn", "Scale", [np.ones(4, np.float32)])]
    rows = {r.name: r for r in rank_analyzer.layer_ranks(weights, [0.95, 1.0])}
    assert set(rows) == {"conv", "fc"}  # 1-axis blobs are not filters
    assert rows["conv"].ranks[0.95] == 3 and rows["conv"].filters == 16 and rows["conv"].size == 27
    assert rows["fc"].filters == 10 and rows["fc"].size == 20 and rows["fc"].ranks[1.0] == 10
    assert rows["conv"].ranks[0.95] == basis_pca(conv.reshape(16, -1), ratio=0.95)[2]
    svd = {r.name: r for r in rank_analyzer.layer_ranks(weights, [0.9], "svd")}
    assert svd["fc"].ranks[0.9] == basis_svd(fc.reshape(10, 20), ratio=0.9)[2]
    model = tmp_path / "m.caffemodel"
    save_weights(model, weights)
    assert rank_analyzer.main(["--caffemodel", str(model), "--ratio", "0.95", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "conv\t3/16 filters\t16/16 filters" in out and "fc\t" in out and "neurons" in out
    assert rank_analyzer.main(["--caffemodel", str(model), "--ratio", "1.5"]) == 1


def test_rank_analyzer_sparsify_sparsity(tmp_path, capsys):
    _needs("Input", "Convolution", "Sparsify")
    text = NET.split('layer { name: "relu1"')[0] + (
        'layer { name: "sp1" type: "Sparsify" bottom: "conv1" top: "conv1" sparsify_param { thre: 0.5 } }\n')
    net_param = read_net(text)
    weights = _random_weights(net_param, seed=12)
    net = _net_with(net_param, weights)
    x = torch.from_numpy(np.random.default_rng(13).normal(size=(2, 3, 13, 11)).astype(np.float32))
    net.set_blob("data", x)
    found = rank_analyzer.sparsify_sparsity(net, 2, ["data"])
    with torch.no_grad():
        ref = _outputs(read_net(NET.split('layer { name: "relu1"')[0]), weights, x, ["conv1"])["conv1"]
    assert found["conv1"] == pytest.approx((ref.abs() <= 0.5).float().mean().item(), abs=1e-6)
    assert found["data"] == 0.0
    proto = tmp_path / "sp.prototxt"
    proto.write_text(text)
    model = tmp_path / "sp.caffemodel.h5"
    save_weights(model, weights)
    assert rank_analyzer.main(["--caffemodel", str(model), "--prototxt", str(proto), "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "conv1\t" in out and "% zeros" in out
