"""Whole models exported to ONNX equal neocaffe's forward under onnxruntime: every model of
../shared/realdata/zoo_public_2026 that neocaffe builds (real weights where shipped, deterministic
random ones otherwise; a model still pending in tests/test_zoo.py xfails while it does not build and
is tested the day it does; Faster R-CNN's RoIs and head outputs with their data-dependent count, which
must be the same), BVLC AlexNet's deploy net, and a small net with a dynamic batch axis."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import zoo
from tests.conftest import REPO, shared_path
from tests.export.helpers import TOLERANCE, onnx_errors
from tests.test_zoo import PENDING

pytest.importorskip("onnx")

MODELS = [m.name for m in zoo.zoo_models()] or ["(zoo absent)"]


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_matches_onnxruntime(name, tmp_path):
    shared_path("realdata", "zoo_public_2026")
    from neocaffe.export import load_deploy_net

    model = zoo.zoo_model(name)
    try:  # batch 1: the numbers of one image do not depend on the others (GoogLeNet's deploy net has 10)
        net = load_deploy_net(str(model.prototxt), batch=1)
    except ValueError as e:
        if name in PENDING:
            pytest.xfail(f"neocaffe does not build {name} yet (fork layers pending): {str(e)[:120]}")
        raise
    if model.weights is not None:
        net.copy_from(str(model.weights))
    else:
        zoo.random_weights(net)
    errors = onnx_errors(net, zoo.model_inputs(net))
    assert max(errors.values()) <= TOLERANCE, errors


def test_alexnet_matches_onnxruntime():
    from neocaffe.export import load_deploy_net

    net = load_deploy_net(str(REPO / "models" / "bvlc_alexnet" / "deploy.prototxt"), batch=1)
    with torch.no_grad():  # He-scaled weights keep the activations O(1) (the fillers' would fade to a flat prob)
        for layer in net.layers:
            for b in layer.blobs:
                b.normal_(0.0, (1.0 / np.prod(b.shape[1:])) ** 0.5 if b.dim() > 1 else 0.1)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 227, 227)).astype(np.float32)
    errors = onnx_errors(net, {"data": x}, check=False)
    assert errors["prob"] <= TOLERANCE


SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 3 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "slice" type: "Slice" bottom: "pool" top: "a" top: "b" slice_param { slice_point: 2 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" top: "cat" }
layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" }
layer { name: "re" type: "Reshape" bottom: "flat" top: "re" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "re" top: "ip"
  inner_product_param { num_output: 5 axis: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" softmax_param { axis: 1 } }
"""


def test_dynamic_batch_runs_every_batch_size(tmp_path):
    """Reshapes keep the batch axis symbolic: the one file runs batches 1 and 5 like neocaffe does."""
    pytest.importorskip("onnxruntime")
    from neocaffe.export import load_deploy_net
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs, random_inputs, scaled_error

    path = tmp_path / "small.prototxt"
    path.write_text(SMALL)
    net = load_deploy_net(str(path))
    model = export_onnx(net, tmp_path / "small.onnx", dynamic_batch=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 5):
        x = random_inputs(net, batch, batch=batch)
        ref = neocaffe_outputs(net, x)
        got = onnxruntime_outputs(str(tmp_path / "small.onnx"), x, net.outputs)
        assert got["prob"].shape == ref["prob"].shape == (batch, 24, 5)
        assert scaled_error(got["prob"], ref["prob"]) <= TOLERANCE


def test_opsets_13_and_18_match_too(tmp_path):
    """ReduceMean/ReduceSum take their axes as an attribute before opset 18 and as an input after."""
    from neocaffe.export import load_deploy_net

    path = tmp_path / "n.prototxt"
    path.write_text(SMALL.replace('layer { name: "prob"', 'layer { name: "mvn" type: "MVN" bottom: "ip" top: "mvn" }\n'
                                  'layer { name: "prob"').replace('bottom: "ip" top: "prob"', 'bottom: "mvn" top: "prob"'))
    net = load_deploy_net(str(path))
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 9, 8)).astype(np.float32)
    for opset in (13, 18):
        assert max(onnx_errors(net, {"data": x}, opset=opset).values()) <= TOLERANCE


def test_large_weights_go_to_external_data(tmp_path, monkeypatch):
    """Past ONNX's 2 GB protobuf limit the weights are written beside the model (here: any size)."""
    pytest.importorskip("onnxruntime")
    import neocaffe.export.onnx as onnx_export
    from neocaffe.export import load_deploy_net
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs, random_inputs, scaled_error

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    (tmp_path / "fc.prototxt").write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 300 } } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        'inner_product_param { num_output: 200 weight_filler { type: "xavier" } } }')
    net = load_deploy_net(str(tmp_path / "fc.prototxt"))
    onnx_export.export_onnx(net, tmp_path / "fc.onnx")
    assert (tmp_path / "fc.onnx.data").stat().st_size == 300 * 200 * 4
    x = random_inputs(net)
    got = onnxruntime_outputs(str(tmp_path / "fc.onnx"), x, net.outputs)
    assert scaled_error(got["fc"], neocaffe_outputs(net, x)["fc"]) <= TOLERANCE
