"""Element-wise (neuron) layers with Caffe's forward and backward formulas.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Threshold, Clip, Swish here; Power, Exp and Log in
:mod:`neocaffe.layers.neuron_power`, Dropout in :mod:`neocaffe.layers.dropout`.

Backward is Caffe's, not PyTorch's: ReLU's gradient at exactly 0 is ``negative_slope``, AbsVal's
sign(0) = 0, Power's special cases, Dropout's float scale. Caffe's Backward reads *blob* data: the
top blob (and, for a layer working in place, the bottom blob, which is the same blob) holds the
value after every later in-place layer, so our backward reads the top the executor passes in
``call`` (:class:`~neocaffe.layers.base.LayerCall`) the same way
(e.g. an in-place Power layer gets Caffe's gradient, computed from its own output). Scalar
parameters are used at float precision, as Caffe's ``Dtype`` members hold them.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import PLAIN, Example, Layer, LayerCall, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer

f32 = np.float32
EXAMPLE_INPUT = [[[[0.5, -1.2, 0.3], [-0.7, 2.0, -0.25]], [[1.5, -0.4, 0.9], [-2.0, 0.6, -0.15]]]]


def neuron_example(text: str, bottoms=None, **kw) -> Example:
    """A contract-test example of a neuron layer on a fixed small input (or ``bottoms``)."""
    return Example(text, [np.asarray(EXAMPLE_INPUT if bottoms is None else bottoms, dtype=np.float64)], **kw)


class _CaffeGrad(torch.autograd.Function):
    """``y = layer.fwd(x)``; ``dx = layer.bwd(bottom, top, dy, x)`` from Caffe's blob data: ``top``
    is the top blob's final value; ``bottom`` is ``x``, or the top blob itself when in place.
    ``x`` is kept only where the backward needs it (so an in-place layer frees its input)."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: "NeuronLayer", call: LayerCall) -> Tensor:  # type: ignore[override]
        y = layer.fwd(x)
        ctx.layer, ctx.ref = layer, call.top(0)
        ctx.keep_x = layer.needs_x or (layer.reads_bottom and not layer.in_place)
        ctx.save_for_backward(*((y, x) if ctx.keep_x else (y,)))
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        x = saved[1] if ctx.keep_x else None
        top = ctx.ref.get(saved[0])
        bottom = top if ctx.layer.in_place else x
        return ctx.layer.bwd(bottom, top, dy, x), None, None


class NeuronLayer(Layer):
    """One bottom, one top of the same shape (Caffe's NeuronLayer)."""

    exact_bottoms = 1
    exact_tops = 1
    #: Caffe's Backward reads the bottom blob's data (else only the top's)
    reads_bottom: ClassVar[bool] = True
    #: the backward needs the value this layer read, whatever the blobs hold later
    needs_x: ClassVar[bool] = False
    takes_call = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.in_place = self.param.top[0] == self.param.bottom[0]
        self.configure(bottom_shapes)

    def configure(self, bottom_shapes: list[Shape]) -> None:
        """Read the type's parameter message."""

    def forward(self, x: Tensor, call: LayerCall = PLAIN) -> Tensor:  # type: ignore[override]
        if not (x.requires_grad and torch.is_grad_enabled()):  # nothing to record: the formula alone
            return self.fwd(x)
        return _CaffeGrad.apply(x, self, call)

    def fwd(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """The formula alone (``forward`` with nothing to record), for types that keep that forward."""
        return self.fwd if type(self).forward is NeuronLayer.forward else None

    def bwd(self, bottom: Tensor, top: Tensor, dy: Tensor, x: Tensor) -> Tensor:
        """Caffe's bottom diff from its bottom/top blob data (``x``: the value this layer read)."""
        raise NotImplementedError


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """``relu_param.negative_slope``; backward ``dy * ((x > 0) + slope * (x <= 0))``."""

    def configure(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)

    def fwd(self, x):
        return torch.relu(x) if self.slope == 0 else F.leaky_relu(x, self.slope)

    def lean_kernel_in_place(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """``relu_`` / ``leaky_relu_`` over the bottom (the same formula, no new tensor)."""
        if type(self).fwd is not ReLULayer.fwd:
            return None
        if self.slope == 0:
            return torch.relu_
        slope = self.slope
        return lambda x: F.leaky_relu_(x, slope)

    def bwd(self, bottom, top, dy, x):
        if self.slope == 0:
            return torch.ops.aten.threshold_backward(dy, bottom, 0)
        return torch.ops.aten.leaky_relu_backward(dy, bottom, self.slope, False)

    @classmethod
    def examples(cls):
        return [neuron_example('name: "r" type: "ReLU" bottom: "x" top: "y"'),
                neuron_example('name: "r" type: "ReLU" bottom: "x" top: "x" relu_param { negative_slope: 0.1 }')]


@register_layer("PReLU")
class PReLULayer(Layer):
    """``prelu_param``: slopes (C,) or, ``channel_shared``, shape (); ``filler`` default constant 0.25.
    Caffe keeps a copy of the bottom for in-place use, so the gradient is the mathematical one."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        if len(bottom_shapes[0]) < 2:
            raise self.error(f"needs a bottom with at least 2 axes; received shape {bottom_shapes[0]}")
        p = self.param.prelu_param
        self.shared = p.channel_shared
        filler = p.filler
        if not p.HasField("filler"):
            filler = type(p.filler)(type="constant", value=0.25)
        self.add_blob(fill(filler, () if self.shared else (bottom_shapes[0][1],)))

    def forward(self, x):  # type: ignore[override]
        w = self.blobs[0]
        w = w.reshape(w.shape + (1,) * (x.dim() - 2)) if not self.shared else w
        return torch.where(x > 0, x, x * w)

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """``x > 0 ? x : slope * x`` as one kernel (``torch.prelu``: the same product and choice)."""
        if bottoms[0].dim() < 2:
            return None
        w = self.blobs[0]
        if self.shared:
            return lambda x: torch.prelu(x, w.reshape(1))
        return lambda x: torch.prelu(x, w)

    @classmethod
    def examples(cls):
        return [neuron_example('name: "p" type: "PReLU" bottom: "x" top: "y" '
                               'prelu_param { filler { type: "uniform" min: 0.1 max: 0.5 } }'),
                neuron_example('name: "p" type: "PReLU" bottom: "x" top: "x" prelu_param { channel_shared: true }')]


@register_layer("ELU")
class ELULayer(NeuronLayer):
    """``elu_param.alpha``: ``max(x,0) + alpha*(exp(min(x,0)) - 1)``; backward
    ``dy * ((x > 0) + (alpha + y) * (x <= 0))``.

    NVCaffe's ``elu_param.lambda`` (NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7,
    ``src/caffe/layers/elu_layer.cpp`` and ``.cu``; default 1, the SELU scale): forward
    ``lambda * (max(x,0) + alpha*(exp(min(x,0)) - 1))``; backward ``lambda * (dy * ((x > 0) + (alpha + y) *
    (x <= 0)))`` with ``y`` the *scaled* top, as NVCaffe computes it: for x <= 0 that is
    ``lambda*dy*(alpha + lambda*alpha*(exp(x) - 1))``, not the derivative ``lambda*alpha*exp(x)*dy`` of its
    forward unless lambda is 1. lambda 1 (unset): the plain ELU above, bit for bit."""

    def configure(self, bottom_shapes):
        self.alpha = float(self.param.elu_param.alpha)
        self.lam = float(getattr(self.param.elu_param, "lambda"))  # a Python keyword

    def fwd(self, x):
        y = x.clamp(min=0) + self.alpha * (torch.exp(x.clamp(max=0)) - 1)
        return y if self.lam == 1 else self.lam * y

    def bwd(self, bottom, top, dy, x):
        dx = torch.where(bottom > 0, dy, dy * (self.alpha + top))
        return dx if self.lam == 1 else self.lam * dx

    @classmethod
    def examples(cls):
        return [neuron_example('name: "e" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.5 }'),
                neuron_example('name: "e" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 1.6733 '
                               'lambda: 1.0507 }', grad_bottoms=())]


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """Backward ``dy * y * (1 - y)`` from the top blob."""

    reads_bottom = False

    def fwd(self, x):
        return torch.sigmoid(x)

    def bwd(self, bottom, top, dy, x):
        return dy * top * (1 - top)

    @classmethod
    def examples(cls):
        return [neuron_example('name: "s" type: "Sigmoid" bottom: "x" top: "y"')]


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    """Backward ``dy * (1 - y^2)`` from the top blob."""

    reads_bottom = False

    def fwd(self, x):
        return torch.tanh(x)

    def bwd(self, bottom, top, dy, x):
        return dy * (1 - top * top)

    @classmethod
    def examples(cls):
        return [neuron_example('name: "t" type: "TanH" bottom: "x" top: "x"')]


@register_layer("AbsVal")
class AbsValLayer(NeuronLayer):
    """``|x|``; backward ``sign(x) * dy`` with sign(0) = 0. Caffe forbids it in place."""

    allow_in_place = False

    def fwd(self, x):
        return torch.abs(x)

    def bwd(self, bottom, top, dy, x):
        return torch.sign(bottom) * dy

    @classmethod
    def examples(cls):
        return [neuron_example('name: "a" type: "AbsVal" bottom: "x" top: "y"')]


@register_layer("BNLL")
class BNLLLayer(NeuronLayer):
    """``log(1 + exp(x))`` (Caffe's two-branch form, in double as Caffe's ``1.`` literals make it);
    backward ``dy * e / (e + 1)`` with ``e = exp(min(x, 50))``."""

    def fwd(self, x):
        d = x.double()
        y = torch.where(d > 0, d + torch.log(1.0 + torch.exp(-d)), torch.log(1.0 + torch.exp(d)))
        return y.to(x.dtype)

    def bwd(self, bottom, top, dy, x):
        e = torch.exp(bottom.clamp(max=50.0))
        return ((dy * e).double() / (e.double() + 1.0)).to(dy.dtype)

    @classmethod
    def examples(cls):
        return [neuron_example('name: "b" type: "BNLL" bottom: "x" top: "y"')]


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """``x > threshold ? 1 : 0`` (``threshold_param``). Caffe has no backward: no gradient flows."""

    def configure(self, bottom_shapes):
        self.threshold = float(self.param.threshold_param.threshold)

    def forward(self, x, call=PLAIN):  # type: ignore[override]
        return (x.detach() > self.threshold).to(x.dtype)

    @classmethod
    def examples(cls):
        return [neuron_example('name: "t" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.2 }',
                    grad_bottoms=())]


@register_layer("Clip")
class ClipLayer(NeuronLayer):
    """``clip_param`` min/max; backward ``dy * (min <= x <= max)``."""

    def configure(self, bottom_shapes):
        p = self.param.clip_param
        self.lo, self.hi = float(p.min), float(p.max)

    def fwd(self, x):
        return x.clamp(self.lo, self.hi)

    def bwd(self, bottom, top, dy, x):
        return dy * ((bottom >= self.lo) & (bottom <= self.hi))

    @classmethod
    def examples(cls):
        return [neuron_example('name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -0.5 max: 0.8 }')]


@register_layer("Swish")
class SwishLayer(NeuronLayer):
    """``x * sigmoid(beta*x)`` (``swish_param.beta``); backward
    ``dy * (beta*y + s*(1 - beta*y))`` with ``s`` the forward sigmoid."""

    reads_bottom = False
    needs_x = True

    def configure(self, bottom_shapes):
        self.beta = float(self.param.swish_param.beta)

    def fwd(self, x):
        return x * torch.sigmoid(x * self.beta)

    def bwd(self, bottom, top, dy, x):
        s = torch.sigmoid(x * self.beta)
        by = self.beta * top
        return dy * (by + s * (1 - by))

    @classmethod
    def examples(cls):
        return [neuron_example('name: "s" type: "Swish" bottom: "x" top: "y" swish_param { beta: 1.5 }')]
