"""The mobile nets' small layers: ``ReLU6``, ``ShuffleChannel`` and ``Axpy`` (the depthwise convolutions
``DepthwiseConvolution`` / ``ConvolutionDepthwise`` are in conv.py).

Lineages and the source files their semantics come from:

* ``ReLU6``: eric612/MobileNet-YOLO @ 69b4441c, ``src/caffe/layers/relu6_layer.{cpp,cu}``
  (``relu6_param`` is a ``ReLUParameter``: its ``negative_slope`` applies below 0).
* ``ShuffleChannel``: farmingyard/ShuffleNet @ 0dbecdca, ``shuffle_channel_layer.cpp``
  (``shuffle_channel_param.group``).
* ``Axpy``: hujie-frank/SENet @ 0262d43d, ``src/caffe/layers/axpy_layer.cpp`` (no parameter).

All three are permutations or elementwise arithmetic: no loop over channels or pixels.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.neuron import NeuronLayer
from neocaffe.layers.registry import register_layer


@register_layer("ReLU6")
class ReLU6Layer(NeuronLayer):
    """``min(max(x, 0) + negative_slope * min(x, 0), 6)`` (``relu6_param.negative_slope``, default 0).
    Backward, the fork's, from the bottom blob's data b (the top's when in place):
    ``dy * ((b > 0) + slope * (b <= 0)) * (b < 6)`` (no gradient at exactly 6)."""

    def configure(self, bottom_shapes: list[Shape]) -> None:
        self.slope = float(self.param.relu6_param.negative_slope)

    def fwd(self, x: Tensor) -> Tensor:
        if self.slope == 0:
            return x.clamp(0, 6)
        return torch.where(x > 0, x, x * self.slope).clamp(max=6)

    def bwd(self, bottom: Tensor, top: Tensor, dy: Tensor, x: Tensor) -> Tensor:
        if self.slope == 0:
            return torch.where((bottom > 0) & (bottom < 6), dy, torch.zeros_like(dy))
        return torch.where(bottom > 0, dy, dy * self.slope) * (bottom < 6)

    @classmethod
    def examples(cls) -> list[Example]:
        x = np.array([[[[0.5, -1.2, 7.3], [-0.7, 2.0, 6.4]], [[5.5, -0.4, 0.9], [-2.0, 9.6, -0.15]]]])
        return [Example('name: "r6" type: "ReLU6" bottom: "x" top: "y"', [x]),
                Example('name: "r6" type: "ReLU6" bottom: "x" top: "x" relu6_param { negative_slope: 0.1 }', [x])]


@register_layer("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    """ShuffleNet's channel shuffle: with ``g = shuffle_channel_param.group`` and ``C = g * k``, bottom
    channel ``i * k + j`` becomes top channel ``j * g + i`` (the fork's ``Resize_cpu``: a (g, k) -> (k, g)
    transpose of the channel axis, per image). Backward: the inverse permutation (the fork's). Any
    number of axes after the channel axis."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.group = int(self.param.shuffle_channel_param.group)
        if self.group <= 0:
            raise self.error(f"shuffle_channel_param.group must be greater than 0; received {self.group}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) < 2 or s[1] % self.group:
            raise self.error(f"shuffle_channel_param.group {self.group} must divide the channels of bottom "
                             f"{s} (axis 1)")
        return [s]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        n, c = x.shape[0], x.shape[1]
        return x.reshape((n, self.group, c // self.group) + tuple(x.shape[2:])).transpose(1, 2).reshape(x.shape)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(140)
        return [Example('name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 3 }',
                        [r.standard_normal((2, 6, 2, 3))]),
                Example('name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 2 }',
                        [r.standard_normal((1, 4, 5))])]


@register_layer("Axpy")
class AxpyLayer(Layer):
    """SENet's ``top = a * x + y``: bottoms ``a`` (N x C, or N x C x 1 x 1: one scale per channel),
    ``x`` and ``y`` (N x C x ...; one shape), top like ``x``. Backward (the fork's, the exact gradient):
    ``da = sum over space of dy * x``, ``dx = a * dy``, ``dy_y = dy``."""

    exact_bottoms = 3
    exact_tops = 1

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        a, x, y = (tuple(s) for s in bottom_shapes)
        if len(x) < 2 or len(a) < 2 or a[:2] != x[:2] or math.prod(a) != x[0] * x[1]:
            raise self.error(f"bottom 0 (the scale) must be N x C (or N x C x 1 x 1) of bottom 1's N x C; "
                             f"received {a} and {x}")
        if x != y:
            raise self.error(f"bottoms 1 and 2 (x, y) must have one shape; received {x} and {y}")
        return [x]

    def forward(self, a: Tensor, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        scale = a.reshape(tuple(x.shape[:2]) + (1,) * (x.dim() - 2))
        return torch.addcmul(y, scale, x)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(141)
        x, y = r.standard_normal((2, 3, 4, 5)), r.standard_normal((2, 3, 4, 5))
        return [Example('name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z"',
                        [r.uniform(0, 1, (2, 3, 1, 1)), x, y], grad_bottoms=(0, 1, 2)),
                Example('name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z"',
                        [r.standard_normal((2, 3)), x[:, :, 0], y[:, :, 0]], grad_bottoms=(0, 1, 2))]
