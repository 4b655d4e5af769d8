"""The fork's sparsity layers (wenwei202/caffe): Sparsify and SymmetricRectify.

Both backward passes read the TOP blob's data, which for an in-place layer is the value after
every later in-place layer (``sp_conv5`` then ``relu5`` on ``conv5``: Sparsify sees relu(conv5));
they read it from the top the executor passes in ``call`` (:class:`~neocaffe.layers.base.LayerCall`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import PLAIN, Example, Layer, LayerCall
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer

_X = np.array([[[[0.5, -1.2, 0.3], [-0.7, 2.0, -0.25]], [[1.5, -0.4, 0.9], [-2.0, 0.6, -0.15]]],
               [[[0.35, -0.8, 1.1], [-1.7, 0.45, -0.6]], [[0.7, -0.3, 1.3], [-0.9, 0.2, -1.05]]]])


class _Sparsify(torch.autograd.Function):
    """Forward: soft threshold (``|x| <= thre -> 0``, else ``x -/+ thre``; thre 0: copy).
    Backward: ``dy + coef*sign(top)``, times ``(top != 0)`` when thre > 0."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: "SparsifyLayer", call: LayerCall) -> Tensor:  # type: ignore[override]
        y = F.softshrink(x, layer.thre) if layer.thre > 0 else x.clone()
        ctx.layer, ctx.ref = layer, call.top(0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        layer = ctx.layer
        if layer.coef == 0 and layer.thre == 0:
            return dy, None, None
        (y,) = ctx.saved_tensors
        s = torch.sign(ctx.ref.get(y))
        g = torch.add(dy, s, alpha=layer.coef) if layer.coef != 0 else dy  # coef*sign is exact
        if layer.thre > 0:
            g = g * s.abs_()  # (top != 0)
        return g, None, None


@register_layer("Sparsify")
class SparsifyLayer(Layer):
    """``sparsify_param``: ``thre`` (soft threshold on the forward) and ``coef`` (an L1 pull on
    the outputs added to the gradient); both must be >= 0."""

    exact_bottoms = 1
    exact_tops = 1
    takes_call = True

    def setup(self, bottom_shapes):
        p = self.param.sparsify_param
        if p.coef < 0 or p.thre < 0:
            raise self.error(f"sparsify_param coef and thre must be >= 0; received coef {p.coef}, thre {p.thre}")
        self.thre, self.coef = float(p.thre), float(p.coef)

    def forward(self, x, call: LayerCall = PLAIN):  # type: ignore[override]
        return _Sparsify.apply(x, self, call)

    @classmethod
    def examples(cls):
        # coef adds a term that is not the derivative of the forward: keep it 0 for gradcheck
        return [Example('name: "s" type: "Sparsify" bottom: "x" top: "y" sparsify_param { thre: 0.1 }', [_X]),
                Example('name: "s" type: "Sparsify" bottom: "x" top: "x"', [_X])]


class _SymRect(torch.autograd.Function):
    """Soft threshold by a per-channel (or shared) threshold; Caffe's backward:
    ``dx = dy * (top != 0)``, ``dthre = sum_{n,hw} dy*((top<0)-(top>0)) + ((t<0)-(t>=0))*thre_decay``."""

    @staticmethod
    def forward(ctx, x: Tensor, thre: Tensor, layer: "SymmetricRectifyLayer", call: LayerCall) -> Tensor:  # type: ignore[override]
        t = layer.view(thre, x)
        y = torch.sign(x) * torch.clamp(x.abs() - t, min=0)
        ctx.layer, ctx.ref = layer, call.top(0)
        ctx.decay = None
        if layer.thre_decay:  # ((t < 0) - (t >= 0)) * thre_decay, from the (clamped) blob
            ctx.decay = ((thre < 0).to(x.dtype) - (thre >= 0).to(x.dtype)) * layer.thre_decay
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        top = ctx.ref.get(y)
        dx = dthre = None
        if ctx.needs_input_grad[1]:
            prod = dy * -torch.sign(top)
            dthre = prod.sum() if ctx.layer.shared else prod.sum((0,) + tuple(range(2, dy.dim())))
            if ctx.decay is not None:
                dthre = dthre + ctx.decay
        if ctx.needs_input_grad[0]:
            dx = torch.where(top != 0, dy, torch.zeros((), dtype=dy.dtype, device=dy.device))
        return dx, dthre, None, None


@register_layer("SymmetricRectify")
class SymmetricRectifyLayer(Layer):
    """``symmetric_rectify_param``: a learned threshold blob (C,), or () when ``channel_shared``
    (``filler``, default constant 0); ``thre_decay`` pulls the thresholds up. The forward first
    clamps negative thresholds to 0 in the blob (after a solver update), as the fork does."""

    exact_bottoms = 1
    exact_tops = 1
    takes_call = True

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom with at least 2 axes; received shape {shape}")
        p = self.param.symmetric_rectify_param
        self.shared = p.channel_shared
        self.thre_decay = float(p.thre_decay)
        blob = fill(p.filler, () if self.shared else (shape[1],))
        if (blob < 0).any():
            raise self.error("threshold of rectifying must not be negative (check the filler)")
        self.add_blob(blob)

    def view(self, thre: Tensor, x: Tensor) -> Tensor:
        return thre if self.shared else thre.reshape((-1,) + (1,) * (x.dim() - 2))

    def forward(self, x, call: LayerCall = PLAIN):  # type: ignore[override]
        with torch.no_grad():
            self.blobs[0].clamp_(min=0)
        return _SymRect.apply(x, self.blobs[0], self, call)

    @classmethod
    def examples(cls):
        return [
            Example('name: "r" type: "SymmetricRectify" bottom: "x" top: "y" '
                    'symmetric_rectify_param { filler { type: "uniform" min: 0 max: 0.2 } }', [_X]),
            Example('name: "r" type: "SymmetricRectify" bottom: "x" top: "x" '
                    'symmetric_rectify_param { channel_shared: true filler { type: "constant" value: 0.1 } }', [_X]),
        ]
