"""twhui/LiteFlowNet's own layers (CVPR 2018, built on lmb-freiburg/flownet2's Caffe): ExpMax, Grid, NegSquare,
and the arithmetic of its ``Warp`` (the type string is PWC-Net's too: ``neocaffe.layers.flownet_warp`` dispatches).

Fork: twhui/LiteFlowNet @ e7d6c43b3e5d36bf4d071c75abb79bcd7ce6cd59, ``src/caffe/layers/{expmax,grid,negsquare,warp}_layer.
{cpp,cu}``, ``include/caffe/layers/{expmax,grid,negsquare,warp}_layer.hpp``, ``src/caffe/proto/caffe.proto``
(``ExpMaxParameter``; ``expmax_param``, ``negsquare_param``: proto/NUMBERING.md, lineage liteflownet). LiteFlowNet's
nets are told by their ``ExpMax``/``Grid``/``NegSquare`` or ``lineage: "liteflownet"`` (``neocaffe.layers.lineage``).

**ExpMax** (``expmax_param {base scale shift}``, a neuron layer; GPU only in the fork, here on every device):
``inner = ln(base) * scale`` (base -1: ``scale``), ``outer = base^shift`` (e^shift for base -1; 1 for shift 0), all
in float32 as the layer's members; ``top = outer * exp(inner * (x - m))``, ``m`` the maximum over axis 1 at each
position (NaN skipped, as CUDA's ``max``; at least ``-FLT_MAX``). Fork quirk, kept: the max kernel runs with
``outer_num_ = 1``, so only image 0 of the batch has its maximum subtracted; the other images subtract the
zeros the layer's ``scale_`` buffer was allocated with (``m = 0``). Backward, the fork's: ``dy * top * inner``
(the maximum counts as a constant: not the gradient where it is subtracted, so no gradient check there).

**Grid** (no parameter; the fork's ``GridParameter`` is read by nothing): bottom (N, C, H, W) -> top (N, 2, H, W),
channel 0 the column index x, channel 1 the row index y (the pixel grid a ``Warp`` adds a flow to). Deviations:
the fork reshapes only at set-up (``reshape_every_iter`` set false): here the top follows each forward's bottom;
the fork's Backward stops the program if asked for a bottom diff (its nets set ``propagate_down: false``): here the
top is a constant and the bottom gets no diff from it.

**NegSquare** (no fields; GPU only in the fork): ``top = -(x^2)``. Backward, the fork's ``Backward_gpu``: it scales
the *bottom's diff* by -1 and multiplies it by the top diff, never reading the bottom's data. In place (top ==
bottom: one diff) that is ``(-dy) * (-dy) = dy^2``; otherwise the bottom's diff is only ever written by this layer
and starts at 0, so it stays 0. Both kept: ``dy^2`` in place, 0 otherwise (not the gradient ``-2 x dy``).

**Warp**, LiteFlowNet's (``coords_warp``): bottoms U (N, C, H, W) and coordinates (N, 2, H, W) (x then y, absolute
pixel positions: ``Grid`` + flow in its nets); top (N, C, H, W): at each position the bilinear sample of the
corners ``floor(x)``, ``floor(x) + 1`` (rows likewise) with weights ``1 - (x - x0)`` and ``1 - (x1 - x)``, each
corner outside the image counting 0 (PWC-Net's Warp takes a displacement and zeroes the whole sample outside).
Backward: the gradient (U: the weights; coordinates: the weights' slopes, one-sided at integer positions as
floor's), here autograd's. The fork's kernels index the coordinates with bottom 0's height and width and do not
check that they match: here a coordinate blob of another size is an error.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.neuron import NeuronLayer, neuron_example
from neocaffe.layers.registry import register_layer

f32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


@register_layer("ExpMax")
class ExpMax(NeuronLayer):
    """``expmax_param {base scale shift}``: ``outer * exp(inner * (x - max_c x))``, the max for image 0 only
    (module docstring); backward ``dy * top * inner``."""

    reads_bottom = False

    def configure(self, bottom_shapes: list[Shape]) -> None:
        legacy_shape(bottom_shapes[0], self)
        if len(bottom_shapes[0]) < 2:
            raise self.error(f"bottom must have a channel axis (N, C, ...); received shape {tuple(bottom_shapes[0])}")
        p = self.param.expmax_param
        base, shift = f32(p.base), f32(p.shift)
        if base != -1 and not base > 0:
            raise self.error(f"expmax_param.base must be strictly positive (or -1 for e); received {float(base)}")
        # log, pow and exp of floats as the C library's (correctly rounded), not NumPy's float32 kernels
        log_base = f32(1) if base == -1 else f32(math.log(float(base)))
        self.inner = f32(log_base * f32(p.scale))
        if shift == 0:
            self.outer = f32(1)
        else:
            self.outer = f32(math.pow(float(base), float(shift))) if base != -1 else f32(math.exp(float(shift)))

    def fwd(self, x: Tensor) -> Tensor:
        legacy_shape(tuple(x.shape), self)
        lowest = torch.full((), -FLT_MAX, dtype=x.dtype, device=x.device)
        m0 = torch.where(torch.isnan(x[:1]), lowest, x[:1]).amax(1, keepdim=True).clamp_min(-FLT_MAX)
        t = torch.cat([x[:1] - m0, x[1:]]) if x.shape[0] > 1 else x - m0
        y = torch.exp(t if self.inner == 1 else t * float(self.inner))
        return y if self.outer == 1 else y * float(self.outer)

    def bwd(self, bottom: Tensor, top: Tensor, dy: Tensor, x: Tensor) -> Tensor:
        g = top * dy
        return g if self.inner == 1 else g * float(self.inner)

    @classmethod
    def examples(cls) -> list[Example]:
        # the fork's backward treats the subtracted maximum as a constant: not a gradient, so no check
        return [neuron_example('name: "e" type: "ExpMax" bottom: "x" top: "y"', grad_bottoms=()),
                neuron_example('name: "e" type: "ExpMax" bottom: "x" top: "y" expmax_param { base: 2 scale: -0.5 '
                               'shift: 0.25 }', np.arange(24.0).reshape(2, 3, 2, 2) / 7, grad_bottoms=())]


@register_layer("NegSquare")
class NegSquare(NeuronLayer):
    """``-(x^2)``; the fork's backward: ``dy^2`` in place, else 0 (module docstring)."""

    reads_bottom = False

    def fwd(self, x: Tensor) -> Tensor:
        return -(x * x)

    def bwd(self, bottom: Tensor, top: Tensor, dy: Tensor, x: Tensor) -> Tensor:
        return dy * dy if self.in_place else torch.zeros_like(dy)

    @classmethod
    def examples(cls) -> list[Example]:
        # the fork's backward is not the gradient of -(x^2): no gradient check
        return [neuron_example('name: "n" type: "NegSquare" bottom: "x" top: "y"', grad_bottoms=()),
                neuron_example('name: "n" type: "NegSquare" bottom: "x" top: "x"', grad_bottoms=())]


@register_layer("Grid")
class Grid(Layer):
    """Bottom (N, C, H, W) -> the pixel grid (N, 2, H, W): x in channel 0, y in channel 1 (module docstring)."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        n, _, h, w = legacy_shape(bottom_shapes[0], self)
        return [(n, 2, h, w)]

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        n, _, h, w = self.reshape([tuple(x.shape)])[0]
        dtype = x.dtype if x.is_floating_point() else torch.float32
        xs = torch.arange(w, dtype=dtype, device=x.device).view(1, w).expand(h, w)
        ys = torch.arange(h, dtype=dtype, device=x.device).view(h, 1).expand(h, w)
        return torch.stack([xs, ys]).unsqueeze(0).expand(n, 2, h, w).contiguous()

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(5)
        return [Example('name: "g" type: "Grid" bottom: "flow" top: "gxy"', [r.standard_normal((2, 2, 3, 4))],
                        grad_bottoms=()),
                Example('name: "g" type: "Grid" bottom: "f" top: "gxy"', [r.standard_normal((1, 5, 2, 3))],
                        grad_bottoms=())]


def coords_shape(layer: Layer, bottom_shapes: list[Shape]) -> list[Shape]:
    """LiteFlowNet's Warp: U (N, C, H, W) and coordinates (N, 2, H, W) -> (N, C, H, W)."""
    u, xy = (tuple(int(d) for d in s) for s in bottom_shapes)
    if len(u) != 4 or xy != (u[0], 2) + u[2:]:
        raise layer.error(f"bottom 1 must be sampling coordinates (N, 2, H, W) with bottom 0's N, H and W "
                          f"(LiteFlowNet's Warp); received shapes {u} and {xy}")
    return [u]


def coords_warp(u: Tensor, xy: Tensor) -> Tensor:
    """LiteFlowNet's Warp (module docstring): each corner inside the image adds its weight times its value."""
    n, c, h, w = u.shape
    x, y = xy[:, 0].reshape(n, 1, -1), xy[:, 1].reshape(n, 1, -1)
    x0, y0 = torch.floor(x.detach()), torch.floor(y.detach())
    flat = u.reshape(n, c, h * w)
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    out = None
    for px, py, wx, wy in ((x0, y0, 1 - (x - x0), 1 - (y - y0)), (x0 + 1, y0, 1 - (x0 + 1 - x), 1 - (y - y0)),
                           (x0, y0 + 1, 1 - (x - x0), 1 - (y0 + 1 - y)),
                           (x0 + 1, y0 + 1, 1 - (x0 + 1 - x), 1 - (y0 + 1 - y))):
        ok = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
        idx = (torch.nan_to_num(py).clamp(0, h - 1) * w + torch.nan_to_num(px).clamp(0, w - 1)).long()
        vals = flat.gather(2, idx.expand(-1, c, -1))
        term = torch.where(ok, wx * wy * vals, zero)
        out = term if out is None else out + term
    return out.reshape(n, c, h, w)


def coords_examples(net) -> list[Example]:
    """Contract examples of LiteFlowNet's Warp (``net``: a net of lineage liteflownet)."""
    r = np.random.default_rng(43)
    u = r.standard_normal((2, 3, 4, 5))
    grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)))[None].repeat(2, 0)
    # coordinates off the integer grid (finite differences must not cross a pixel edge), some past the border
    xy = grid + np.floor(r.uniform(-2, 2, (2, 2, 4, 5))) + r.uniform(0.2, 0.8, (2, 2, 4, 5))
    return [Example('name: "warp" type: "Warp" bottom: "u" bottom: "xy" top: "v"', [u, xy], grad_bottoms=(0, 1),
                    net=net)]


__all__ = ["ExpMax", "Grid", "NegSquare", "coords_examples", "coords_shape", "coords_warp"]
