"""A small CaffeNet-shaped solver for the speed-mode tests: grouped convolution, ReLU in place, LRN,
MAX pooling, inner product, Dropout and SoftmaxWithLoss on an Input layer the test fills."""
from __future__ import annotations

import torch

NET = """
name: "tiny_caffenet"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 8 dim: 3 dim: 15 dim: 15 } shape { dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2
    weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 2
    weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0 } } }
%(dropout)s
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""
DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.3 } }'


def solver_param(dropout: bool = False, extra: str = ""):
    from google.protobuf import text_format

    from neocaffe.proto import caffe_pb2

    net = NET % {"dropout": DROPOUT if dropout else ""}
    text = (f"net_param {{ {net} }}\nbase_lr: 0.01\nlr_policy: \"fixed\"\nmomentum: 0.9\nweight_decay: 0.0005\n"
            f"max_iter: 100\ndisplay: 0\nrandom_seed: 7\nsolver_mode: CPU\n{extra}")
    return text_format.Parse(text, caffe_pb2.SolverParameter())


def make_solver(dropout: bool = False, extra: str = "", **kw):
    """A seeded solver with a fixed batch in its Input blobs (the same in every call)."""
    from neocaffe.solver.solver import Solver

    s = Solver(solver_param(dropout, extra), **kw)
    g = torch.Generator().manual_seed(3)
    s.net.set_blob("data", torch.randn(8, 3, 15, 15, generator=g) * 2)
    s.net.set_blob("label", torch.randint(0, 4, (8,), generator=g).float())
    return s


def train_losses(solver, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        solver.step(1)
        out.append(solver.losses[-1])
    return out
