"""``Mish``, as the YOLOv4 Caffe ports add it: ChenYingpeng/darknet2caffe @ f6d9ea33
(``caffe_layers/mish_layer/mish_layer.{hpp,cpp,cu}``, ``mish_param`` in its README's proto lines; here field
3150, proto/NUMBERING.md lineage yolov3). Its ``prototxt/yolov4.prototxt`` has 72 of them.

Forward (the ``.cpp`` and ``.cu`` alike, in float32 whatever the blob's type: the ``.cpp`` reads each value
into a ``float``): ``y = x * tanh_a(softplus(x))`` with darknet's ``softplus(x) = x`` above 20, ``exp(x)``
below -20, else ``log(exp(x) + 1)``, and ``tanh_a(v) = 2 / (1 + exp(-2 v)) - 1``.

Backward (``MishBackward``, float32; the ``.cpp`` is the same in the blob's type): TensorFlow's Mish
gradient ``grad = v * (1 - tanh(sp)^2) * (1 - exp(-sp)) + tanh(sp)``, ``sp = softplus(v)``, times the top's
diff, but evaluated at ``v`` = the **top's** data (``inp = top_data[i]``), not at the input. That is the
fork's diff and so ours: it is not the gradient of the forward (close to it only where ``y`` is close to
``x``, large positive inputs). ``mish_param.engine`` chooses nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor

from neocaffe.layers.neuron import NeuronLayer, neuron_example
from neocaffe.layers.registry import register_layer

THRESHOLD = 20.0  # MISH_THRESHOLD


def softplus(x: Tensor) -> Tensor:
    """darknet's ``softplus_activate`` (float32)."""
    return torch.where(x > THRESHOLD, x, torch.where(x < -THRESHOLD, torch.exp(x), torch.log(torch.exp(x) + 1)))


def mish(x: Tensor) -> Tensor:
    """The fork's forward, in float32, returned in ``x``'s type."""
    v = x.to(torch.float32)
    tanh_a = 2 / (1 + torch.exp(-2 * softplus(v))) - 1
    return (v * tanh_a).to(x.dtype)


def mish_diff(top: Tensor, dy: Tensor) -> Tensor:
    """``MishBackward``: the TensorFlow gradient formula at the top's value, times ``dy``."""
    v = top.to(torch.float32)
    sp = softplus(v)
    tsp = torch.tanh(sp)
    grad = v * ((1 - tsp * tsp) * (1 - torch.exp(-sp))) + tsp
    return (dy.to(torch.float32) * grad).to(dy.dtype)


@register_layer("Mish")
class MishLayer(NeuronLayer):
    """darknet2caffe's MishLayer (see the module docstring); in place as any neuron layer."""

    reads_bottom = False  # its Backward reads the top's data only

    def fwd(self, x: Tensor) -> Tensor:
        return mish(x)

    def bwd(self, bottom: Tensor, top: Tensor, dy: Tensor, x: Tensor) -> Tensor:
        return mish_diff(top, dy)

    @classmethod
    def examples(cls):
        # the fork's diff is not the forward's gradient: no gradient check (the tests compare with its loops)
        return [neuron_example('name: "m" type: "Mish" bottom: "x" top: "y"', grad_bottoms=()),
                neuron_example('name: "m" type: "Mish" bottom: "x" top: "y" mish_param { engine: CAFFE }',
                               bottoms=[[-25.0, -3.0, -0.5, 0.0, 0.7, 4.0, 21.0, 30.0]], grad_bottoms=())]
