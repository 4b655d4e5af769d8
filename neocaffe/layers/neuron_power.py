"""The neurons of Caffe's base/scale/shift formulas, with Caffe's forward and backward: Power
(``power_param``), Exp (``exp_param``) and Log (``log_param``). The shared rules (Caffe's backward from
blob data, float-precision parameters) are :mod:`neocaffe.layers.neuron`'s."""
from __future__ import annotations

import numpy as np
import torch

from neocaffe.layers.base import Layer
from neocaffe.layers.neuron import EXAMPLE_INPUT, NeuronLayer, f32, neuron_example
from neocaffe.layers.registry import register_layer


@register_layer("Power")
class PowerLayer(NeuronLayer):
    """``(shift + scale*x)^power`` (``power_param``) with Caffe's special cases: a constant when
    ``power*scale == 0``; backward ``power*scale`` when power is 1; ``2*scale*(shift+scale*x)``
    when power is 2; ``power * y / x`` when shift is 0; else ``power*scale * y / (shift+scale*x)``."""

    def configure(self, bottom_shapes):
        p = self.param.power_param
        self.power, self.scale, self.shift = f32(p.power), f32(p.scale), f32(p.shift)
        self.diff_scale = f32(self.power * self.scale)

    def fwd(self, x):
        if self.diff_scale == 0:
            value = 1.0 if self.power == 0 else float(f32(np.power(self.shift, self.power)))
            return torch.full_like(x, value)
        y = x
        if self.scale != 1:
            y = y * float(self.scale)
        if self.shift != 0:
            y = y + float(self.shift)
        if self.power != 1:
            y = torch.pow(y, float(self.power))
        return y if y is not x else x.clone()

    def bwd(self, bottom, top, dy, x):
        ds = float(self.diff_scale)
        if self.diff_scale == 0:
            return torch.zeros_like(dy)
        if self.power == 1:
            return dy * ds
        if self.power == 2:
            g = bottom * float(f32(self.diff_scale * self.scale))
            if self.shift != 0:
                g = g + float(f32(self.diff_scale * self.shift))
        elif self.shift == 0:
            g = top / bottom * float(self.power)
        else:
            g = bottom
            if self.scale != 1:
                g = g * float(self.scale)
            g = top / (g + float(self.shift))
            if self.diff_scale != 1:
                g = g * ds
        return dy * g

    @classmethod
    def examples(cls):
        pos = np.abs(np.asarray(EXAMPLE_INPUT)) + 0.5
        return [neuron_example('name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 2 scale: 0.5 shift: 1 }'),
                neuron_example('name: "p" type: "Power" bottom: "x" top: "y" '
                               'power_param { power: 0.5 scale: 2 shift: 0.1 }', pos),
                neuron_example('name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 3 scale: 1.5 }'),
                neuron_example('name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 1 scale: -1.5 shift: 0.3 }'),
                neuron_example('name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 0 shift: 2 }')]


def _log_base(layer: Layer, base: float) -> f32:
    if base != -1 and not base > 0:
        raise layer.error(f"base must be strictly positive (or -1 for e); received {base}")
    return f32(1) if base == -1 else f32(np.log(f32(base)))


@register_layer("Exp")
class ExpLayer(NeuronLayer):
    """``base^(shift + scale*x)`` (``exp_param``; base -1 means e), as Caffe's
    ``outer * exp(inner * x)``; backward ``dy * y * inner``."""

    reads_bottom = False

    def configure(self, bottom_shapes):
        p = self.param.exp_param
        base, shift = f32(p.base), f32(p.shift)
        self.inner = f32(_log_base(self, float(base)) * f32(p.scale))
        if shift == 0:
            self.outer = f32(1)
        else:
            self.outer = f32(np.exp(shift)) if base == -1 else f32(np.power(base, shift))

    def fwd(self, x):
        y = torch.exp(x if self.inner == 1 else x * float(self.inner))
        return y if self.outer == 1 else y * float(self.outer)

    def bwd(self, bottom, top, dy, x):
        g = dy * top
        return g if self.inner == 1 else g * float(self.inner)

    @classmethod
    def examples(cls):
        return [neuron_example('name: "e" type: "Exp" bottom: "x" top: "y" exp_param { base: 2 scale: 0.5 shift: 0.1 }'),
                neuron_example('name: "e" type: "Exp" bottom: "x" top: "y"')]


@register_layer("Log")
class LogLayer(NeuronLayer):
    """``log_base(shift + scale*x)`` (``log_param``; base -1 means e); backward
    ``dy * (scale/ln(base)) / (shift + scale*x)``."""

    def configure(self, bottom_shapes):
        p = self.param.log_param
        lb = _log_base(self, float(p.base))
        self.scale, self.shift = f32(p.scale), f32(p.shift)
        self.base_scale = f32(f32(1) / lb)
        self.num_scale = f32(self.scale / lb)

    def _inner(self, x):
        if self.scale != 1:
            x = x * float(self.scale)
        return x + float(self.shift) if self.shift != 0 else x

    def fwd(self, x):
        y = torch.log(self._inner(x))
        return y if self.base_scale == 1 else y * float(self.base_scale)

    def bwd(self, bottom, top, dy, x):
        g = torch.pow(self._inner(bottom), -1.0)
        if self.num_scale != 1:
            g = g * float(self.num_scale)
        return dy * g

    @classmethod
    def examples(cls):
        pos = np.abs(np.asarray(EXAMPLE_INPUT)) + 0.5
        return [neuron_example('name: "l" type: "Log" bottom: "x" top: "y" log_param { base: 10 scale: 2 shift: 0.5 }', pos),
                neuron_example('name: "l" type: "Log" bottom: "x" top: "y"', pos)]
