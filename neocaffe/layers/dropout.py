"""Caffe's Dropout layer (``dropout_param``), with the caffe-fast-rcnn fork's ``scale_train``."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import PLAIN, TRAIN
from neocaffe.layers.neuron import NeuronLayer, f32, neuron_example
from neocaffe.layers.registry import register_layer


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """``dropout_param.dropout_ratio`` p. TRAIN: keep each element with probability 1-p (mask from
    ``neocaffe.rng``) and scale by Caffe's ``float(1/(1 - double(float(p))))``; TEST: identity.
    Deviation: p outside [0, 1) is an error (Caffe only checks in debug builds).

    ``dropout_param.scale_train: false`` (caffe-fast-rcnn's ``dropout_layer.cpp``, for MSRA-trained
    nets such as Faster R-CNN's ZF): TRAIN keeps the mask unscaled, TEST multiplies by
    ``float(1 / scale)`` instead."""

    def configure(self, bottom_shapes):
        p = f32(self.param.dropout_param.dropout_ratio)
        if not 0 <= p < 1:
            raise self.error(f"dropout_ratio must be in [0, 1); received {float(p)}")
        self.ratio = float(p)
        self.scale = float(f32(1.0 / (1.0 - np.float64(p))))
        self.scale_train = bool(self.param.dropout_param.scale_train)

    def forward(self, x, call=PLAIN):  # type: ignore[override]
        if self.phase != TRAIN:
            if not self.scale_train:
                return x * float(f32(1.0 / self.scale))
            return x.view_as(x) if self.in_place else x.clone()
        if torch.compiler.is_compiling():  # torch.compile cannot trace an explicit generator: its own RNG
            mask = torch.empty_like(x).bernoulli_(1.0 - self.ratio)
        else:
            mask = torch.empty_like(x).bernoulli_(1.0 - self.ratio, generator=rng.generator(x.device))
        return x * (mask.mul_(self.scale) if self.scale_train else mask)

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """TEST: the bottom copied (in place: the blob itself), or scaled without ``scale_train``."""
        if self.phase == TRAIN:
            return None
        if not self.scale_train:
            factor = float(f32(1.0 / self.scale))
            return lambda x: x * factor
        return (lambda x: x.view_as(x)) if self.in_place else torch.clone

    @classmethod
    def examples(cls):
        d = 'name: "d" type: "Dropout" bottom: "x" '
        return [neuron_example(d + 'top: "y" dropout_param { dropout_ratio: 0.3 }', phase=TRAIN),
                neuron_example(d + 'top: "x"'),
                neuron_example(d + 'top: "y" dropout_param { dropout_ratio: 0.3 scale_train: false }', phase=TRAIN),
                neuron_example('name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { scale_train: false }')]
