"""A net written in NVCaffe's style (NVIDIA/caffe 0.17: default_*_type, per-layer forward_type/backward_type/..,
BatchNorm scale_bias, cudnn fields) parses, builds with one precision warning, and trains a few SGD steps from an
NVCaffe-style solver (larc, rampup, min_lr, solver_data_type, store_blobs_in_old_format: parsed, warned)."""
from __future__ import annotations

import logging

import torch

from neocaffe.graph.nvcaffe import precision_notes, solver_notes
from neocaffe.io.prototxt import parse_text
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver

NET = '''
name: "nvstyle"
default_forward_type: FLOAT16 default_backward_type: FLOAT16
default_forward_math: FLOAT default_backward_math: FLOAT
global_grad_scale: 8 reduce_buckets: 2 default_conv_algos_override: "1,-1,-1" eltwise_mem_sharing: true
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 8 dim: 3 dim: 6 dim: 6 } shape { dim: 8 }
                     data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" forward_type: FLOAT16 backward_type: FLOAT16
  forward_math: FLOAT cudnn_math_override: 1
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" }
                      cudnn_convolution_algo_seeker: FINDEX conv_algos_override: "-1,-1,-1" } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" forward_type: FLOAT
  batch_norm_param { scale_bias: true moving_average_fraction: 0.95 engine: CAFFE } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 2
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''
SOLVER = '''
base_lr: 0.05 lr_policy: "poly" power: 2 max_iter: 5 momentum: 0.9 weight_decay: 0.0005
display: 1 solver_mode: CPU snapshot: 0 type: "SGD"
larc: true larc_policy: "clip" larc_eta: 0.002 rampup_interval: 10 rampup_lr: 0.001 min_lr: 1e-5
momentum_policy: "fixed" solver_data_type: FLOAT16 store_blobs_in_old_format: true
'''


def test_nvcaffe_style_net_and_solver_train(caplog):
    sp = parse_text(SOLVER, caffe_pb2.SolverParameter(), "solver.prototxt")
    sp.net_param.CopyFrom(parse_text(NET, caffe_pb2.NetParameter(), "net.prototxt"))
    notes = precision_notes(sp.net_param)
    assert "default_forward_type = FLOAT16" in notes and "global_grad_scale = 8" in notes
    assert "forward_type = FLOAT16 (layer 'conv')" in notes and not any("FLOAT)" in n for n in notes)
    assert solver_notes(sp) == ["rampup_interval = 10", "rampup_lr = 0.001", "min_lr = 1e-05", "larc = True",
                                "larc_policy = clip", "larc_eta = 0.002", "solver_data_type = FLOAT16"]
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="neocaffe"):
        solver = Solver(sp)
    warned = [r.getMessage() for r in caplog.records if "NVCaffe" in r.getMessage()]
    assert len([w for w in warned if "precision fields" in w]) == 1, warned  # one per net (one TRAIN net here)
    assert len([w for w in warned if "solver fields" in w]) == 1, warned
    bn = next(layer for layer in solver.net.layers if layer.name == "bn")
    assert bn.nv is not None and len(bn.blobs) == 5
    scale0 = bn.blobs[3].detach().clone()
    losses = []
    for _ in range(5):
        solver.step(1)
        losses.append(float(solver.net.blob_data["loss"]))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert not torch.equal(scale0, bn.blobs[3].detach())  # the learned scale trains (lr_mult 1)
    assert bn.nv.iter == 5 and float(bn.blobs[2]) == 1.0


def test_layer_fields_that_change_numbers_are_warned_once(caplog):
    """No NVCaffe layer field is left parsed-but-unapplied: DataParameter.shuffle with cache: true in TRAIN is applied
    (tests/data/test_nvcaffe_cache_shuffle.py), the random resizes too (tests/data/test_nvcaffe_transform.py); ELU's
    lambda, label_smoothing and short_side are applied (tests/layers/test_nvcaffe_fields.py); none is warned.
    torch_pooling, read by no NVCaffe code, gets its own note, not the "not applied" warning."""
    from neocaffe.graph.net import Net
    from neocaffe.graph.nvcaffe import layer_notes, unread_notes

    text = '''name: "nv2"
layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 }
  shape { dim: 2 } } }
layer { name: "d" type: "DummyData" top: "unused" transform_param { img_rand_resize_lower: 256 }
  data_param { shuffle: true cache: true } dummy_data_param { shape { dim: 1 } } }
layer { name: "elu" type: "ELU" bottom: "x" top: "e" elu_param { alpha: 1 lambda: 1.0507 } }
layer { name: "pool" type: "Pooling" bottom: "e" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2
  torch_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "p" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss"
  loss_param { label_smoothing: 0.1 } }
'''
    param = parse_text(text, caffe_pb2.NetParameter())
    assert layer_notes(param) == []
    assert unread_notes(param) == ["layer 'pool': pooling_param.torch_pooling = True"]
    with caplog.at_level(logging.WARNING, logger="neocaffe.graph"):
        Net(param, 0)
    assert not [r for r in caplog.records if "parsed but not applied" in r.getMessage()]
    assert not [r for r in caplog.records if "shuffle" in r.getMessage()]
    unread = [r.getMessage() for r in caplog.records if "read by none of its code" in r.getMessage()]
    assert len(unread) == 1 and "torch_pooling" in unread[0]
    plain = parse_text(text.replace("transform_param { img_rand_resize_lower: 256 }", "")
                       .replace("data_param { shuffle: true cache: true }", "")
                       .replace("torch_pooling: true", ""), caffe_pb2.NetParameter())
    assert layer_notes(plain) == [] and unread_notes(plain) == []
    # every placement of shuffle: nothing to warn about (applied where NVCaffe acts on it, no-op elsewhere)
    for variant in ("data_param { shuffle: true }", "include { phase: TEST } data_param { shuffle: true cache: true }",
                    "include { phase: TRAIN } data_param { shuffle: true cache: true }"):
        other = parse_text(text.replace("data_param { shuffle: true cache: true }", variant), caffe_pb2.NetParameter())
        assert layer_notes(other) == [], variant
