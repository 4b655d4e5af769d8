"""Caffe's upgrade_proto semantics against real Caffe's output, and each upgrade path on small nets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from neocaffe.io import (PrototxtError, UpgradeError, read_net, read_net_binary, read_prototxt, read_solver,
                         upgrade_blob_proto, upgrade_net, upgrade_solver)
from neocaffe.io.upgrade import net_needs_upgrade
from neocaffe.proto import caffe_pb2
from neocaffe.tools import upgrade_net_proto_text, upgrade_solver_proto_text

from .conftest import shared_params

NetParameter, SolverParameter = caffe_pb2.NetParameter, caffe_pb2.SolverParameter


def _golden(v1: Path) -> Path:
    return v1.parent.parent / v1.name.replace(".prototxt", ".upgraded.prototxt")


def _caffe_log(v1: Path) -> list[str]:
    log = v1.parent.parent / v1.name.replace(".prototxt", ".upgrade.log")
    return [line.split("] ", 1)[1].replace("v1/", str(v1.parent) + "/") for line in log.read_text().splitlines()
            if "upgrade_proto.cpp" in line]


@pytest.mark.parametrize("v1", shared_params("fixtures/caffenet/upgrade/v1/*.prototxt"))
def test_same_message_as_real_caffe(v1: Path):
    if "solver" in v1.name:
        got, lines = upgrade_solver(read_prototxt(v1, SolverParameter), source=str(v1))
        assert got == read_prototxt(_golden(v1), SolverParameter)
    else:
        got, lines = upgrade_net(read_prototxt(v1, NetParameter), source=str(v1))
        assert got == read_prototxt(_golden(v1), NetParameter)
        assert read_net(v1) == got                       # read_net upgrades on load
    assert list(lines) == _caffe_log(v1) and lines.ok


@pytest.mark.parametrize("v1", shared_params("fixtures/caffenet/upgrade/v1/*.prototxt"))
def test_tools_write_what_real_caffe_wrote(v1: Path, tmp_path: Path, caplog):
    tool = upgrade_solver_proto_text if "solver" in v1.name else upgrade_net_proto_text
    kind = SolverParameter if "solver" in v1.name else NetParameter
    out = tmp_path / "out.prototxt"
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        assert tool.run([str(v1), str(out)]) == 0
    assert read_prototxt(out, kind) == read_prototxt(_golden(v1), kind)
    assert out.read_text() == _golden(v1).read_text()      # even the text is byte-identical
    assert f"text proto to {out}" in caplog.text
    if "solver" in v1.name:
        assert "File already in latest proto format" in caplog.text


def test_tool_usage_and_parse_errors(tmp_path: Path):
    assert upgrade_net_proto_text.main(["only_one"]) == 1
    assert upgrade_solver_proto_text.main([]) == 1
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layers { bogus: 1 }")
    assert upgrade_net_proto_text.main([str(bad), str(tmp_path / "o")]) == 2
    assert upgrade_solver_proto_text.main([str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("path", shared_params("realdata/lenet_v1_2014/*.prototxt",
                                               "realdata/cifar10_quick_v1_2014/*.prototxt"))
def test_v1_lenet_and_cifar_files_load(path: Path):
    if "solver" in path.name:
        solver = read_solver(path)
        assert solver.type == "SGD" and solver.net.endswith("train_test.prototxt")
        return
    net = read_net(path)
    assert len(net.layers) == 0 and len(net.input) == 0 and len(net.layer) > 0
    types = {layer.type for layer in net.layer}
    assert {"Convolution", "Pooling", "InnerProduct"} <= types
    conv1 = next(layer for layer in net.layer if layer.name == "conv1")
    if "train_test" in path.name:
        assert [(p.lr_mult) for p in conv1.param] == [1.0, 2.0]
        data = net.layer[0]
        assert data.type == "Data" and data.include[0].phase == caffe_pb2.TRAIN
    else:
        assert net.layer[0].type == "Input" and len(net.layer[0].input_param.shape[0].dim) == 4


def test_v0_net_with_padding_layer():
    v0 = """name: "v0net"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 biasterm: false group: 1
          weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool1" top: "pool1" }
layers { layer { name: "relu" type: "relu" num_output: 3 } bottom: "pool1" top: "pool1" }
"""
    expected = """name: "v0net"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 group: 1 stride: 1
                      weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "relu" type: "ReLU" bottom: "pool1" top: "pool1" }
"""
    got, lines = upgrade_net(read_prototxt(v0, NetParameter), source="v0.prototxt")
    assert got == read_prototxt(expected, NetParameter)
    assert not lines.ok
    assert "Unknown parameter num_output for layer type relu" in lines
    assert lines[0] == "Attempting to upgrade input file specified using deprecated V0LayerParameter: v0.prototxt"
    assert not net_needs_upgrade(got)


def test_v0_data_layer_fields():
    v0 = ('layers { layer { name: "data" type: "data" source: "db" batchsize: 4 cropsize: 3 mirror: true '
          'scale: 0.5 meanfile: "m.binaryproto" rand_skip: 2 } top: "data" top: "label" }')
    expected = ('layer { name: "data" type: "Data" top: "data" top: "label" '
                'transform_param { scale: 0.5 mirror: true crop_size: 3 mean_file: "m.binaryproto" } '
                'data_param { source: "db" batch_size: 4 rand_skip: 2 } }')
    got, lines = upgrade_net(read_prototxt(v0, NetParameter))
    assert got == read_prototxt(expected, NetParameter) and lines.ok


def test_v0_padding_into_non_conv_is_an_error():
    v0 = ('input: "d" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" } '
          'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }')
    with pytest.raises(UpgradeError, match="non-convolutional"):
        upgrade_net(read_prototxt(v0, NetParameter))
    with pytest.raises(PrototxtError, match=r"^<string>: Padding layer input"):
        read_net(v0)


def test_v1_data_transformation_upgrade():
    v1 = """layers { name: "d" type: DATA top: "data"
  data_param { source: "s" batch_size: 2 scale: 0.1 crop_size: 5 mean_file: "m" mirror: true } }
layers { name: "i" type: IMAGE_DATA top: "img" }
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" blobs_lr: 1 weight_decay: 0
  param: "shared_w" blob_share_mode: PERMISSIVE loss_weight: 2 inner_product_param { num_output: 3 } }
"""
    got, lines = upgrade_net(read_prototxt(v1, NetParameter))
    d, i, ip = got.layer
    assert d.type == "Data" and d.data_param == caffe_pb2.DataParameter(source="s", batch_size=2)
    assert d.transform_param == caffe_pb2.TransformationParameter(scale=0.1, crop_size=5, mean_file="m",
                                                                  mirror=True)
    # Caffe's mutable_*() makes both sub-messages present on every data layer it visits
    assert i.type == "ImageData" and i.HasField("transform_param") and i.HasField("image_data_param")
    assert ip.type == "InnerProduct" and list(ip.loss_weight) == [2.0]
    assert ip.param[0] == caffe_pb2.ParamSpec(name="shared_w", share_mode=caffe_pb2.ParamSpec.PERMISSIVE,
                                              lr_mult=1, decay_mult=0)
    assert "Successfully upgraded file specified using deprecated data transformation parameters." in lines


def test_v1_with_layer_fields_reports_problem():
    mixed = 'layer { name: "new" } layers { name: "old" type: RELU }'
    got, lines = upgrade_net(read_prototxt(mixed, NetParameter))
    assert [layer.name for layer in got.layer] == ["old"] and not lines.ok


def test_input_shape_and_legacy_input_upgrade():
    net, _ = upgrade_net(read_prototxt('input: "a" input_shape { dim: 1 dim: 2 } input: "b" '
                                       'input_shape { dim: 3 } layer { name: "x" }', NetParameter))
    assert [layer.name for layer in net.layer] == ["input", "x"]
    assert list(net.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 2], [3]]
    net, _ = upgrade_net(read_prototxt('input: "data" layer { name: "x" }', NetParameter))  # legacy caffemodel
    assert [layer.name for layer in net.layer] == ["x"] and len(net.input) == 0


def test_batchnorm_upgrade():
    text = ('layer { name: "bn" type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } } '
            'layer { name: "bn2" type: "BatchNorm" param { lr_mult: 0 } }')
    net, lines = upgrade_net(read_prototxt(text, NetParameter))
    assert len(net.layer[0].param) == 0 and len(net.layer[1].param) == 1
    assert lines[-1] == "Successfully upgraded batch norm layers using deprecated params."


def test_solver_type_upgrade():
    solver = read_solver('solver_type: ADAM base_lr: 0.1')
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    raw = read_prototxt("solver_type: NESTEROV", SolverParameter)
    up, lines = upgrade_solver(raw, "s.prototxt")
    assert up.type == "Nesterov" and lines.ok and raw.HasField("solver_type")  # the input is not mutated
    assert lines[0] == ("Attempting to upgrade input file specified using deprecated 'solver_type' field "
                        "(enum)': s.prototxt")
    with pytest.raises(PrototxtError, match="cannot be both specified"):
        read_solver('solver_type: SGD type: "SGD"')


def test_upgrade_blob_proto():
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=500, width=800)
    upgrade_blob_proto(blob, target_shape=(500, 800))
    assert list(blob.shape.dim) == [500, 800] and not blob.HasField("num")
    blob = caffe_pb2.BlobProto(num=2, channels=3, height=4, width=5)
    upgrade_blob_proto(blob)
    assert list(blob.shape.dim) == [2, 3, 4, 5]
    with pytest.raises(UpgradeError):
        upgrade_blob_proto(caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3), target_shape=(3, 2))


def test_binary_v1_net_upgrades(shared):
    net = read_net_binary(shared / "realdata" / "lenet_v1_2014" / "lenet_iter_10000.caffemodel")
    ip1 = next(layer for layer in net.layer if layer.name == "ip1")
    assert ip1.type == "InnerProduct" and len(net.layers) == 0
    assert (ip1.blobs[0].height, ip1.blobs[0].width, len(ip1.blobs[0].data)) == (500, 800, 400000)


def test_solver_tool_upgrades_solver_type(tmp_path: Path):
    old = tmp_path / "old_solver.prototxt"
    old.write_text('net: "train_val.prototxt"\nbase_lr: 0.01\nsolver_type: ADAGRAD\n')
    out = tmp_path / "new_solver.prototxt"
    assert upgrade_solver_proto_text.main([str(old), str(out)]) == 0
    # C++ TextFormat prints in field-number order: base_lr = 5, net = 24, type = 40
    assert out.read_text() == 'base_lr: 0.01\nnet: "train_val.prototxt"\ntype: "AdaGrad"\n'


def test_upgrade_net_proto_binary_tool_on_real_v1_caffemodel(shared, tmp_path: Path, caplog):
    from neocaffe.io import read_caffemodel
    from neocaffe.tools import upgrade_net_proto_binary

    v1 = shared / "realdata" / "lenet_v1_2014" / "lenet_iter_10000.caffemodel"
    out = tmp_path / "lenet_v2.caffemodel"
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        assert upgrade_net_proto_binary.main([str(v1), str(out)]) == 0
    assert f"Wrote upgraded NetParameter binary proto to {out}" in caplog.text
    assert "deprecated V1LayerParameter" in caplog.text
    written = read_net_binary(out, upgrade=False)
    assert len(written.layers) == 0 and not net_needs_upgrade(written)
    assert written == read_net_binary(v1)                           # what loading the V1 file gives
    before = {w.name: w for w in read_caffemodel(v1)}
    after = read_caffemodel(out)
    assert [w.name for w in after] == list(before)
    assert [w.name for w in after if w.blobs] == ["conv1", "conv2", "ip1", "ip2"]
    for w in after:                                                 # weights carried bit for bit
        for a, b in zip(w.blobs, before[w.name].blobs, strict=True):
            assert a.tobytes() == b.tobytes()
    # an up-to-date file is written unchanged with Caffe's "already" line; exit 0
    again = tmp_path / "again.caffemodel"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        assert upgrade_net_proto_binary.main([str(out), str(again)]) == 0
    assert "File already in latest proto format" in caplog.text
    assert again.read_bytes() == out.read_bytes()


def test_upgrade_net_proto_binary_errors(tmp_path: Path, caplog):
    from neocaffe.tools import upgrade_net_proto_binary

    assert upgrade_net_proto_binary.main(["one"]) == 1
    bad = tmp_path / "text.prototxt"
    bad.write_text('name: "x"\nlayer { name: "a" type: "ReLU" }\n')
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        assert upgrade_net_proto_binary.main([str(bad), str(tmp_path / "o")]) == 2
    assert f"Failed to parse input binary file as NetParameter: {bad}" in caplog.text
    assert not (tmp_path / "o").exists()
