"""The opt-in inference modes on a CUDA net (fold_bn, channels_last, frozen; ``neocaffe.export.modes``)
give the CPU's fp32 default to within the modes' stated deviation, each alone and all together, for
one input shape and a second one (the frozen mode's choice is per shape). Needs CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.export.modes import InferenceModes
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST

pytestmark = pytest.mark.gpu

NET = """name: 'bn_net'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 20 dim: 20 } } }
layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1'
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: 'msra' } } }
layer { name: 'bn1' type: 'BatchNorm' bottom: 'conv1' top: 'conv1' }
layer { name: 'sc1' type: 'Scale' bottom: 'conv1' top: 'conv1' scale_param { bias_term: true } }
layer { name: 'relu1' type: 'ReLU' bottom: 'conv1' top: 'conv1' }
layer { name: 'pool1' type: 'Pooling' bottom: 'conv1' top: 'pool1' pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: 'dw' type: 'Convolution' bottom: 'pool1' top: 'dw'
  convolution_param { num_output: 16 group: 16 kernel_size: 3 pad: 1 weight_filler { type: 'msra' } } }
layer { name: 'prelu' type: 'PReLU' bottom: 'dw' top: 'dw' }
layer { name: 'pool2' type: 'Pooling' bottom: 'dw' top: 'pool2' pooling_param { pool: AVE global_pooling: true } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'pool2' top: 'ip' inner_product_param { num_output: 10
  weight_filler { type: 'gaussian' std: 0.3 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""

MODES = {
    "default": InferenceModes(),
    "fold_bn": InferenceModes(fold_bn=True),
    "channels_last": InferenceModes(channels_last=True),
    "frozen": InferenceModes(frozen=True),
    "all": InferenceModes(fold_bn=True, channels_last=True, frozen=True),
}
TOLERANCE = {"default": 1e-5, "fold_bn": 1e-5, "channels_last": 1e-5, "frozen": 1e-5, "all": 3e-5}


def _reference() -> tuple[Net, list]:
    net = Net(read_net(NET), TEST)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BatchNorm statistics and Scale parameters that folding has to get right
        bn = net.layer("bn1").blobs
        bn[0].copy_(torch.randn(16, generator=g) * 0.5)
        bn[1].copy_(torch.rand(16, generator=g) + 0.5)
        bn[2].fill_(1.0)
        sc = net.layer("sc1").blobs
        sc[0].copy_(torch.rand(16, generator=g) + 0.5)
        sc[1].copy_(torch.randn(16, generator=g) * 0.1)
    return net, net.to_weights()


def _prob(net: Net, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        net.forward({"data": x.to(net.device)})
    return net.blob("prob").detach().cpu().numpy()


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_on_cuda_matches_the_cpu_default(mode):
    ref, weights = _reference()
    net = Net(read_net(NET), TEST, device="cuda")
    net.copy_from(weights)
    net = MODES[mode].apply(net)
    assert net.device.type == "cuda"
    assert ("bn1" in net.layer_names) is not MODES[mode].fold_bn  # folding really happened where asked
    g = torch.Generator().manual_seed(1)
    for shape in ((2, 3, 20, 20), (1, 3, 17, 23)):
        x = torch.randn(*shape, generator=g) * 40
        want = _prob(ref, x)
        for _ in range(2):  # the first forward of a shape makes the frozen mode's choice, the second uses it
            got = _prob(net, x)
            err = float(np.abs(got - want).max() / np.abs(want).max())
            assert err <= TOLERANCE[mode], f"{mode} {shape}: {err:.2e} of the output's scale"
