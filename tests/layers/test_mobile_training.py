"""A small net of the mobile forks' trainable layers (ReLU6, ConvolutionDepthwise, ShuffleChannel,
DepthwiseConvolution, an SE block joined by Axpy, Reorg) trains with pycaffe's SGDSolver on the CPU:
its loss falls and every learnable layer below the head moves (the diffs pass through each fork layer)."""
from __future__ import annotations

import numpy as np

import caffe

NET = '''
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 12 dim: 3 dim: 8 dim: 8 } shape { dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "relu6" type: "ReLU6" bottom: "conv1" top: "conv1" }
layer { name: "dw1" type: "ConvolutionDepthwise" bottom: "conv1" top: "dw1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "dw1" top: "shuffle" shuffle_channel_param { group: 2 } }
layer { name: "dw2" type: "DepthwiseConvolution" bottom: "shuffle" top: "dw2"
  convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "se_pool" type: "Pooling" bottom: "dw2" top: "se_pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "se_down" type: "Convolution" bottom: "se_pool" top: "se_down"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "se_relu" type: "ReLU" bottom: "se_down" top: "se_down" }
layer { name: "se_up" type: "Convolution" bottom: "se_down" top: "se_up"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "se_prob" type: "Sigmoid" bottom: "se_up" top: "se_up" }
layer { name: "axpy" type: "Axpy" bottom: "se_up" bottom: "dw2" bottom: "conv1" top: "axpy" }
layer { name: "reorg" type: "Reorg" bottom: "axpy" top: "reorg" reorg_param { stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "reorg" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
'''


def test_mobile_fork_layers_train_and_pass_diffs_down(tmp_path):
    (tmp_path / "train.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 5')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    rng = np.random.default_rng(0)
    label = np.arange(12) % 3
    data = rng.uniform(0, 0.3, (12, 3, 8, 8)).astype(np.float32)
    for i, c in enumerate(label):  # a bright quadrant of the class's channel
        data[i, c, (i % 2) * 4:(i % 2) * 4 + 4, :4] += 1.0
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = label
    before = {k: v[0].data.copy() for k, v in solver.net.params.items()}
    first = float(solver.net.forward()["loss"])
    solver.step(25)
    last = float(solver.net.forward()["loss"])
    assert last < 0.5 * first, (first, last)
    for name in ("conv1", "dw1", "dw2", "se_down", "se_up"):
        assert np.abs(solver.net.params[name][0].data - before[name]).max() > 1e-4, name
