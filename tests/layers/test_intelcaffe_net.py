"""A net and solver written in Intel Caffe's style (intel/caffe @ 44d53638: engine strings, MKL2017/MKLDNN engine
enums, multinode, bn_stats_batch_size, int8 quantization scales, warm-up) parse, build and train a few SGD steps; the
engine/performance fields change nothing and are not warned, the fields that change Intel's numbers get one warning
per net (or solver) naming them (neocaffe/graph/intelcaffe.py)."""
from __future__ import annotations

import logging

import torch

from neocaffe.graph.intelcaffe import layer_notes, solver_notes
from neocaffe.io.prototxt import parse_text
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver

NET = '''
name: "intelstyle"
engine: "MKLDNN"
multinode { model_parallel { layer_from: "conv" layer_to: "ip" num_nodes: 1 model_parts: 1 } }
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 3 dim: 6 dim: 6 } shape { dim: 8 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" engine: "MKL2017"
  multinode { num_nodes: 1 model_parts: 1 }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } engine: MKLDNN
                      conv_algorithm: "winograd" } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" engine: "MKLDNN"
  batch_norm_param { moving_average_fraction: 0.95 engine: MKL2017 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" relu_param { engine: MKL2017 } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2
  engine: MKLDNN } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" engine: "CAFFE"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } engine: MKLDNN } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" engine: "MKLDNN" }
'''
SOLVER = '''
base_lr: 0.05 lr_policy: "poly" power: 2 max_iter: 5 momentum: 0.9 weight_decay: 0.0005
display: 1 solver_mode: CPU snapshot: 0 type: "SGD" engine: "MKLDNN"
'''


def _train(sp, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="neocaffe"):
        solver = Solver(sp)
    losses = []
    for _ in range(5):
        solver.step(1)
        losses.append(float(solver.net.blob_data["loss"]))
    return solver, losses


def test_intel_style_net_and_solver_train_without_warnings(caplog):
    sp = parse_text(SOLVER, caffe_pb2.SolverParameter(), "solver.prototxt")
    sp.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter(), "net.prototxt"))
    assert sp.net_param.engine == "MKLDNN" and sp.engine == "MKLDNN"
    by = {lp.name: lp for lp in sp.net_param.layer}
    assert by["conv"].engine == "MKL2017" and by["conv"].convolution_param.engine == 4  # MKLDNN
    assert by["relu"].relu_param.engine == caffe_pb2.ReLUParameter.MKL2017
    assert layer_notes(sp.net_param) == [] and solver_notes(sp) == []
    solver, losses = _train(sp, caplog)
    assert not [r for r in caplog.records if "Intel" in r.getMessage()]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert len(next(layer for layer in solver.net.layers if layer.name == "bn").blobs) == 3  # BVLC's BatchNorm


def test_fields_that_change_numbers_are_warned_once(caplog):
    """int8 scales, fused ReLU, BatchNorm's MKL scale/shift, bn_stats_batch_size: one warning per net, naming each
    field and its layers; the same net without them: none. The solver's warm-up (tests/solver/test_intel_warmup.py),
    LARS (tests/solver/test_intel_lars.py), test_offset and disabled_update (tests/solver/test_intel_solver_fields.py)
    are applied, not warned."""
    net = NET.replace('engine: "MKLDNN"\n', 'engine: "MKLDNN"\nbn_stats_batch_size: 4\n', 1)
    net = net.replace('conv_algorithm: "winograd" }', 'conv_algorithm: "winograd" relu: true }\n'
                      '  quantization_param { bw_layer_in: 8 bw_layer_out: 8 bw_params: 8 scale_in: 7.37 '
                      'scale_out: 6.22 scale_params: 3828.67 scale_params: 618.32 is_negative_input: true }')
    net = net.replace("0.95 engine: MKL2017 } }", "0.95 engine: MKL2017 filler { type: \"constant\" value: 1 } "
                      "bias_filler { type: \"constant\" value: 0 } } }")
    sp = parse_text(SOLVER + "warmup_iter: 3 warmup_start_lr: 0.01 test_offset: 2 local_lr_auto: true "
                    "local_gw_ratio: 0.002\n", caffe_pb2.SolverParameter())
    sp.net_param.CopyFrom(parse_text(net, caffe_pb2.NetParameter()))
    q = sp.net_param.layer[1].quantization_param
    assert q.bw_params == 8 and list(q.scale_params) == [3828.669921875, 618.3200073242188]
    assert q.fl_params == 16 and q.precision == caffe_pb2.QuantizationParameter.DYNAMIC_FIXED_POINT  # Ristretto's
    notes = layer_notes(sp.net_param)
    assert notes == ["bn_stats_batch_size = 4", "quantization_param.scale_in (layer 'conv')",
                     "quantization_param.scale_out (layer 'conv')", "quantization_param.scale_params (layer 'conv')",
                     "quantization_param.is_negative_input (layer 'conv')", "convolution_param.relu (layer 'conv')",
                     "batch_norm_param.filler (layer 'bn')", "batch_norm_param.bias_filler (layer 'bn')"], notes
    assert solver_notes(sp) == []
    _, losses = _train(sp, caplog)
    warned = [r.getMessage() for r in caplog.records if "Intel Caffe" in r.getMessage()]
    assert len([w for w in warned if "Intel Caffe's fields" in w and "scale_in" in w]) == 1, warned
    assert not [w for w in warned if "solver fields" in w], warned
    assert not [w for w in warned if any(f in w for f in ("warmup", "test_offset", "local_lr_auto"))], warned
    assert len(warned) == 1, warned
    assert all(torch.isfinite(torch.tensor(losses)))


def test_intel_numbers_on_the_wire():
    """Numbers kept where free (scale_in 20, NetParameter.engine 9, multinode 101) and moved per proto/NUMBERING.md
    (LayerParameter.engine 149 -> 8149: 149 is pspnet's bias_channel_param)."""
    f = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert f["engine"].number == 8149 and f["quantization_param"].number == 4149 and f["eval_detection_param"].number == 301
    q = caffe_pb2.QuantizationParameter.DESCRIPTOR.fields_by_name
    assert [q[n].number for n in ("scale_in", "scale_out", "scale_params", "is_negative_input", "force_u8_input")] == \
        [20, 21, 22, 23, 24]
    n = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name
    assert n["engine"].number == 9 and n["multinode"].number == 101 and n["bn_stats_batch_size"].number == 3011
    lp = caffe_pb2.LayerParameter(name="c", engine="MKLDNN")
    lp.quantization_param.scale_in.append(2.5)
    back = caffe_pb2.LayerParameter.FromString(lp.SerializeToString())
    assert back.engine == "MKLDNN" and list(back.quantization_param.scale_in) == [2.5]
