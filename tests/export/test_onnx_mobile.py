"""A net of the mobile forks' layers (ConvolutionDepthwise, ReLU6 with a negative slope, ShuffleChannel,
DepthwiseConvolution, Axpy, Reorg both ways) exported to ONNX equals neocaffe's forward under onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from tests.export.helpers import TOLERANCE, onnx_errors

pytest.importorskip("onnx")

NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } } }
layer { name: "dw1" type: "ConvolutionDepthwise" bottom: "x" top: "dw1" convolution_param { num_output: 4
  kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.6 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "r6" type: "ReLU6" bottom: "dw1" top: "dw1" relu6_param { negative_slope: 0.1 } }
layer { name: "sh" type: "ShuffleChannel" bottom: "dw1" top: "sh" shuffle_channel_param { group: 2 } }
layer { name: "dw2" type: "DepthwiseConvolution" bottom: "sh" top: "dw2" convolution_param { num_output: 4
  group: 4 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "pw" type: "Convolution" bottom: "dw2" top: "pw" convolution_param { num_output: 4
  kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "gp" type: "Pooling" bottom: "dw2" top: "gp" pooling_param { pool: AVE global_pooling: true } }
layer { name: "sg" type: "Sigmoid" bottom: "gp" top: "gp" }
layer { name: "ax" type: "Axpy" bottom: "gp" bottom: "dw2" bottom: "pw" top: "out" }
layer { name: "flat" type: "Flatten" bottom: "gp" top: "a2" }
layer { name: "ax2" type: "Axpy" bottom: "a2" bottom: "pw" bottom: "dw2" top: "out2" }
layer { name: "rg" type: "Reorg" bottom: "x" top: "rg" reorg_param { stride: 2 } }
layer { name: "rgr" type: "Reorg" bottom: "rg" top: "back" reorg_param { stride: 2 reverse: true } }
"""


def test_mobile_fork_layers_export_to_onnx_and_match_onnxruntime():
    from neocaffe.graph.net import Net
    from neocaffe.proto import caffe_pb2

    net = Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    x = (np.random.default_rng(0).standard_normal((2, 4, 8, 8)) * 6).astype(np.float32)
    errors = onnx_errors(net, {"x": x})
    assert set(errors) == {"out", "out2", "back"} and max(errors.values()) <= TOLERANCE, errors
