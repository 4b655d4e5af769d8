"""``caffe export``: its flags (``-help``), a full export with every option, and the errors for nets a
deployment cannot take (training data layers, training-only layers, layers without an ONNX equivalent)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.export.test_fold import NET, _random_net

TRAIN_VAL = """
name: "tv"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
  data_param { source: "nowhere_lmdb" batch_size: 4 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def run(argv, capfd):
    from neocaffe.cli.caffe import main

    capfd.readouterr()
    code = main(argv)
    return code, capfd.readouterr().err


def test_help_lists_the_export_flags(capfd):
    with pytest.raises(SystemExit) as exit_:
        run(["export", "-help"], capfd)
    err = capfd.readouterr().err
    assert exit_.value.code == 0
    for flag in ("-model", "-weights", "-onnx", "-pt2", "-opset", "-batch", "-fold_bn", "-input_shape", "-check"):
        assert re.search(rf"^  {flag}\b", err, re.M), flag
    from neocaffe.cli.caffe import USAGE

    assert "export " in USAGE


def test_export_everything_and_check(capfd, tmp_path):
    """ONNX and .pt2 with a dynamic batch and folded BatchNorm; -check runs both against neocaffe."""
    pytest.importorskip("onnxruntime")
    from neocaffe.io.weights import save_weights

    net = _random_net(NET, tmp_path)
    save_weights(tmp_path / "w.caffemodel", net.to_weights(), hdf5=False)
    argv = ["export", "-model", str(tmp_path / "net.prototxt"), "-weights", str(tmp_path / "w.caffemodel"),
            "-onnx", str(tmp_path / "m.onnx"), "-pt2", str(tmp_path / "m.pt2"), "-batch", "dynamic", "-fold_bn",
            "-check", "-opset", "18"]
    code, err = run(argv, capfd)
    assert code == 0, err
    assert "Folded bn1, sc1 into conv1" in err and "Folded 4 chain(s)" in err
    assert re.search(r"Wrote .*m\.onnx \(ONNX opset 18, \d+ nodes, [\d.]+ MiB\)", err)
    checks = re.findall(r"Check (ONNX|\.pt2) \(batch (\d+)\): output '(\w+)' differs from neocaffe by ([\d.e+-]+)", err)
    assert {(w, b) for w, b, _, _ in checks} == {("ONNX", "2"), ("ONNX", "4"), (".pt2", "2"), (".pt2", "4")}
    assert all(float(e) <= 1e-5 for *_, e in checks)
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.opset_import[0].version == 18
    assert [o.name for o in model.graph.output] == ["also", "out"]


def test_training_data_layers_need_an_input_shape(capfd, tmp_path):
    path = tmp_path / "train_val.prototxt"
    path.write_text(TRAIN_VAL)
    code, err = run(["export", "-model", str(path), "-onnx", str(tmp_path / "m.onnx")], capfd)
    assert code == 1
    assert f"{path}:3: layer 'mnist' (Data) reads training data" in err and "-input_shape data=N,C,H,W" in err
    pytest.importorskip("onnxruntime")
    code, err = run(["export", "-model", str(path), "-onnx", str(tmp_path / "m.onnx"), "-input_shape",
                     "data=1,1,6,6", "-check"], capfd)
    assert code == 0, err
    assert "Dropping layer 'acc' (Accuracy)" in err and "Dropping layer 'loss' (SoftmaxWithLoss)" in err
    import onnx

    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["data"] and [o.name for o in model.graph.output] == ["ip"]


def test_errors_name_the_layer_and_type(capfd, tmp_path):
    code, err = run(["export", "-model", "x.prototxt"], capfd)
    assert code == 1 and "Need an output: -onnx out.onnx and/or -pt2 out.pt2." in err
    code, err = run(["export", "-model", str(tmp_path / "missing.prototxt"), "-onnx", "o.onnx"], capfd)
    assert code == 1 and "missing.prototxt: no such file" in err
    code, err = run(["export", "-model", "x", "-onnx", "o.onnx", "-batch", "many"], capfd)
    assert code == 1 and "-batch many: expected a positive integer or 'dynamic'" in err
    pytest.importorskip("onnx")
    deploy = tmp_path / "with_loss.prototxt"
    deploy.write_text(TRAIN_VAL.replace('type: "Data"', 'type: "Input"').replace(
        "data_param { source: \"nowhere_lmdb\" batch_size: 4 backend: LMDB }",
        "input_param { shape { dim: 4 dim: 1 dim: 6 dim: 6 } shape { dim: 4 } }"))
    code, err = run(["export", "-model", str(deploy), "-onnx", str(tmp_path / "m.onnx")], capfd)
    assert code == 1 and "layer 'acc' (Accuracy): is a training layer" in err


def test_a_layer_without_an_onnx_equivalent_is_named():
    pytest.importorskip("onnx")
    from types import SimpleNamespace

    from neocaffe.export import ExportError, LayerNode
    from neocaffe.export.onnx import layer_model

    node = LayerNode(param=SimpleNamespace(name="odd1", type="NoOnnxForm"), inputs=["x"], bottom_shapes=[(2, 3)],
                     top_shapes=[(2, 3)])  # a type no emitter claims (LSTM, the former example, now exports)
    with pytest.raises(ExportError, match=r"layer 'odd1' \(NoOnnxForm\): has no ONNX equivalent .*exportable types: "
                                          r".*Convolution"):
        layer_model(node)


def test_parse_shapes():
    from neocaffe.export import ExportError, parse_shapes

    assert parse_shapes(["data=1,3,227,227", "im_info=1,3"]) == {"data": (1, 3, 227, 227), "im_info": (1, 3)}
    assert parse_shapes(["1,3,8,8"]) == {"": (1, 3, 8, 8)}
    with pytest.raises(ExportError, match="expected positive dimensions"):
        parse_shapes(["data=1,0"])
    assert np.prod(parse_shapes(["data=2x3"])["data"]) == 6


def test_training_only_types_are_registered_and_every_loss_is_one():
    """The export's list of training layers names registered types only, and holds every loss layer
    (a type with Caffe's AutoTopBlobs), so a new loss is refused as a training layer, not as a type
    without an exporter."""
    from neocaffe.export.registry import TRAINING_ONLY
    from neocaffe.layers import layer_types
    from neocaffe.layers.registry import get_layer_class

    assert TRAINING_ONLY <= set(layer_types())
    losses = {t for t in layer_types() if getattr(get_layer_class(t), "auto_top_blobs", False)
              and not get_layer_class(t).produces_host_data}
    assert losses <= TRAINING_ONLY, sorted(losses - TRAINING_ONLY)
