"""Folding BatchNorm / Scale / Bias into the Convolution, Deconvolution or InnerProduct before them gives
the unfolded net's outputs within 1e-5 of their largest magnitude, only where nothing else reads the
values in between, and as a reusable API (NetParameter + weights in, or a Net in)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import shared_path
from tests.export.helpers import TOLERANCE

NET = """
name: "foldme"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 7 dim: 7 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw"
  convolution_param { num_output: 6 kernel_size: 3 group: 6 bias_term: false } }
layer { name: "bn_dw" type: "BatchNorm" bottom: "dw" top: "bn_dw" batch_norm_param { eps: 0.001 } }
layer { name: "deconv" type: "Deconvolution" bottom: "bn_dw" top: "deconv"
  convolution_param { num_output: 4 kernel_size: 2 stride: 2 group: 2 } }
layer { name: "sc_d" type: "Scale" bottom: "deconv" top: "sc_d" }
layer { name: "bias_d" type: "Bias" bottom: "sc_d" top: "sc_d" }
layer { name: "side" type: "Convolution" bottom: "sc_d" top: "side" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "bn_side" type: "BatchNorm" bottom: "side" top: "bn_side" }
layer { name: "also" type: "ReLU" bottom: "side" top: "also" }
layer { name: "ip" type: "InnerProduct" bottom: "bn_side" top: "ip" inner_product_param { num_output: 5 transpose: true } }
layer { name: "bn_ip" type: "BatchNorm" bottom: "ip" top: "ip" }
layer { name: "sc_ip" type: "Scale" bottom: "ip" top: "out" scale_param { bias_term: true } }
"""


def _random_net(text: str, tmp_path, seed: int = 0):
    from benchmarks import zoo
    from neocaffe.export import load_deploy_net

    path = tmp_path / "net.prototxt"
    path.write_text(text)
    net = load_deploy_net(str(path))
    zoo.random_weights(net, seed)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for layer in net.layers:
            if layer.type_name == "BatchNorm":  # stored sums with a scale factor, as trained nets hold them
                f = float(rng.uniform(10, 1000))
                layer.blobs[0].mul_(f)
                layer.blobs[1].mul_(f)
                layer.blobs[2].fill_(f)
    return net


def _outputs(net, x):
    from neocaffe.export.verify import neocaffe_outputs

    return neocaffe_outputs(net, {"data": x})


def test_fold_net_matches_and_folds_only_private_chains(tmp_path):
    from neocaffe.export import fold_net
    from neocaffe.export.verify import scaled_error

    net = _random_net(NET, tmp_path)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 4, 7, 7)).astype(np.float32)
    ref = _outputs(net, x)
    folded, chains = fold_net(net)
    assert {c.layer: c.removed for c in chains} == {
        "conv1": ["bn1", "sc1"], "dw": ["bn_dw"], "deconv": ["sc_d", "bias_d"], "ip": ["bn_ip", "sc_ip"]}
    types = [layer.type_name for layer in folded.layers]
    assert types.count("BatchNorm") == 1  # bn_side: its conv's output is also read by 'also'
    assert "Scale" not in types and "Bias" not in types
    got = _outputs(folded, x)
    assert set(got) == set(ref) == {"also", "out"}
    for name in ref:
        assert scaled_error(got[name], ref[name]) <= TOLERANCE, name
    assert got["out"].shape == (2, 5)


def test_weights_cannot_be_copied_into_a_folded_net(tmp_path):
    """A weight file holds the unfolded blobs: copied into folded layers they would give wrong outputs
    (seen: 0.31 of the output's scale off) without a word, so the folded net refuses and says why."""
    from neocaffe.export import fold_net
    from neocaffe.graph.errors import NetError

    net = _random_net(NET, tmp_path)
    folded, _ = fold_net(net)
    assert folded.folded_layers == {"conv1", "dw", "deconv", "ip"} and net.folded_layers == frozenset()
    with pytest.raises(NetError, match=r"folded into layers conv1, deconv, dw, ip \(fold_bn\).*before folding"):
        folded.copy_from(net.to_weights())
    net.copy_from(net.to_weights())  # the unfolded net still loads


def test_pycaffe_fold_bn_net_refuses_copy_from(tmp_path):
    import caffe

    net = _random_net(NET, tmp_path)
    weights = tmp_path / "w.caffemodel"
    caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)  # the prototxt is readable by pycaffe as is
    from neocaffe.io.weights import save_weights

    save_weights(str(weights), net.to_weights())
    folded = caffe.Net(str(tmp_path / "net.prototxt"), str(weights), caffe.TEST, fold_bn=True)
    with pytest.raises(Exception, match="fold_bn"):
        folded.copy_from(str(weights))


def test_fold_batchnorm_on_a_net_parameter(tmp_path):
    """The NetParameter-level API: no Split layers added, the folded layer writes the chain's last top."""
    from neocaffe.export import fold_batchnorm
    from neocaffe.io.prototxt import read_net

    net = _random_net(NET, tmp_path)
    weights = {k: [b.detach().numpy() for b in v] for k, v in net.params_by_layer().items()}
    folded, fw, chains = fold_batchnorm(read_net(NET), weights)
    layers = {lp.name: lp for lp in folded.layer}
    assert "bn1" not in layers and "sc_ip" not in layers and "bn_side" in layers
    assert list(layers["ip"].top) == ["out"] and layers["ip"].inner_product_param.bias_term
    assert layers["dw"].convolution_param.bias_term and list(layers["dw"].top) == ["bn_dw"]
    assert not any(lp.type == "Split" for lp in folded.layer)
    assert [b.shape for b in fw["ip"]] == [(300, 5), (5,)] and "bn_ip" not in fw
    assert len(chains) == 4


def test_mobilenet_folds_to_the_same_numbers():
    """A real net: every depthwise and pointwise convolution absorbs its BatchNorm + Scale."""
    from benchmarks import zoo
    from neocaffe.export import fold_net, load_deploy_net
    from neocaffe.export.verify import scaled_error

    shared_path("realdata", "zoo_public_2026")
    net = load_deploy_net(str(zoo.zoo_model("mobilenet_v1").prototxt), batch=1)
    zoo.random_weights(net)
    inputs = zoo.model_inputs(net)
    ref = zoo.neocaffe_forward(net, inputs)
    folded, chains = fold_net(net)
    assert len(chains) == 27 and not any(layer.type_name in ("BatchNorm", "Scale") for layer in folded.layers)
    got = zoo.neocaffe_forward(folded, inputs)
    assert scaled_error(got["prob"], ref["prob"]) <= TOLERANCE


def test_folded_onnx_matches_the_unfolded_net(tmp_path):
    pytest.importorskip("onnxruntime")
    from neocaffe.export import fold_net
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import onnxruntime_outputs, scaled_error

    net = _random_net(NET, tmp_path)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 4, 7, 7)).astype(np.float32)
    ref = _outputs(net, x)
    model = export_onnx(fold_net(net)[0])
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 1
    got = onnxruntime_outputs(model, {"data": x}, sorted(ref))
    for name in ref:
        assert scaled_error(got[name], ref[name]) <= TOLERANCE, name


def test_folding_keeps_the_nets_lineage():
    """A folded net is rebuilt from the layers; it keeps NetParameter.lineage, which gives the forks' shared
    type names their semantics: a HED net's Crop (no crop_param) still aligns its bottoms (here at 1, 1),
    where without the lineage it would cut at 0 as BVLC's."""
    from neocaffe.export import fold_net
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    gauss = 'weight_filler { type: "gaussian" std: 1 }'
    net = Net(read_net(f"""
name: "hed_like" lineage: "hed"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: 16 dim: 16 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 {gauss} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param {{ use_global_stats: true }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "up" type: "Deconvolution" bottom: "pool" top: "up" convolution_param {{ num_output: 1 kernel_size: 4 stride: 2 {gauss} }} }}
layer {{ name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" }}
"""))
    with torch.no_grad():
        mean, var, factor = net.params_by_layer()["bn"]
        mean.fill_(0.5), var.fill_(2.0), factor.fill_(1.0)
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((1, 1, 16, 16)).astype(np.float32))
    ref = _outputs(net, x.numpy())
    folded, chains = fold_net(net)
    assert [c.removed for c in chains] == [["bn"]] and folded.net_param.lineage == "hed"
    assert next(layer for layer in folded.layers if layer.name == "crop").hed_offsets == (1, 1)
    got = _outputs(folded, x.numpy())
    np.testing.assert_allclose(got["crop"], ref["crop"], rtol=1e-5, atol=1e-5)
