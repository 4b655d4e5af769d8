"""Spatial Transformer Networks in Caffe: ``SpatialTransformer`` (``st_param``) and ``STLoss``
(``st_loss_param``).

Lineage: daerduoCarey/SpatialTransformerLayer @ cf2a461c (Kaichun Mo's port of Jaderberg et al., 2015;
the layer code is unchanged since the first commit 0120fd7): ``src/caffe/layers/st_layer.{cpp,cu}``,
``include/caffe/layers/st_layer.hpp``, ``src/caffe/layers/st_loss_layer.{cpp,cu}``, the messages of
``src/caffe/proto/caffe.proto`` (proto/NUMBERING.md, lineage stn). Its LocLoss, PowerFile and the "file"
filler are in :mod:`neocaffe.layers.stn_extras`.

**SpatialTransformer.** Bottoms U (N, C, H, W) and theta (N, ...): the 2 x 3 affine matrix
``[[t11 t12 t13], [t21 t22 t23]]`` row-major, less the entries ``st_param`` fixes (``theta_1_1`` ...
``theta_2_3``, doubles cast to the blob's type): bottom 1 holds the free ones in that order, so
``count(1) + fixed == 6`` (the fork's CHECK). Top V (N, C, output_H, output_W); ``output_H``/``output_W``
default to the input's height and width *at setup* (as the fork's LayerSetUp fixes them).

The fork's coordinates (``LayerSetUp``'s output grid, the forward kernel): the **first** coordinate is
the row. Output pixel (s, t) has target coordinates ``(s / output_H * 2 - 1, t / output_W * 2 - 1)``
(evaluated in double, stored in the blob's type): the grid starts at -1 and stops one step short of +1,
it is not centred on the pixels. The source point is ``px = t11*gs + t12*gt + t13`` (row),
``py = t21*gs + t22*gt + t23`` (column), in pixels ``x = (px + 1) / 2 * H``, ``y = (py + 1) / 2 * W``;
pixel (m, n) sits at integer (m, n). So theta = identity reproduces U when the output size is the
input's (exactly where ``s / H * 2 - 1`` is, e.g. power-of-two sizes; to its rounding otherwise) and picks
every other pixel from the top-left when it is half of it, and ``grid_sample``'s
``align_corners`` conventions (pixel centres at -1 + (2m + 1) / H, or corners at +-1) are neither: the
sampler is written here. Bilinear, as ``SpatialTransformerForwardGPU``: with ``m = floor(x)``,
``n = floor(y)``, the taps (m, n), (m+1, n), (m, n+1), (m+1, n+1) in that order, weights
``(1 - |x - m'|) * (1 - |y - n'|)``; a tap outside the image adds nothing (zero padding, no clamping,
no renormalisation: the output fades to 0 within one pixel outside each border).

Backward, as ``Backward_gpu``: the theta diff is ``SpatialTransformerBackwardGPU_dTheta``'s sum over
channels and output pixels of the top diff times dV/dpx times (gs, gt, 1) (the same for py), each tap's
derivative taken with ``floor`` held: the gradient of the forward wherever it is differentiable, the
right-hand one at integer source coordinates; only the free entries reach bottom 1. The U diff
(``SpatialTransformerBackwardGPU_dU``) scatters ``w * dV`` to the taps: the transpose of the sampling.
With ``to_compute_dU: false`` U gets **no** diff (the fork leaves it unwritten; its README: for an ST
applied to the input images). Both are what autograd gives for the gather below, so the layer is a plain
differentiable torch function, on every device (``tests/layers/stn_reference.py`` ports the kernels as
loops and the tests compare; float32 agrees to the order in which cuBLAS and the fork's sums round).

**STLoss** (``STLossForwardGPU``/``STLossBackwardGPU``): theta (N, 6) (``count(1)`` must be 6: the full
matrix, so use it only where no entry is fixed), ``st_loss_param`` ``output_H``/``output_W`` (required);
on the grid ``(s * 2.0 / output_H - 1, t * 2.0 / output_W - 1)`` the source point
``(px, py)`` of each output pixel pays ``(|p| - 1)^2 / 2`` per coordinate outside [-1, 1]; the loss is
the sum over the batch and the grid divided by ``N * output_H * output_W``, its diff the gradient of that
(times the top's diff, the loss weight).

Deviations: the fork's CPU paths are disabled by a ``CHECK(false)`` (its README: "may not even [be]
correct") and differ from the GPU ones: ``Forward_cpu``/``Backward_cpu`` ignore the fixed theta entries
(they read bottom 1 as six values per item), and ``transform_backward_cpu`` gives the wrong derivative
at integer source coordinates (``+U[m]`` where the kernel gives ``U[m+1] - U[m]``, the case of the
identity transform); STLoss has no CPU path. We follow the GPU kernels, on CPU and CUDA alike. Bottom 0
must be 4-D and the output size positive (errors, where the fork reads out of range).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer

#: ``st_param``'s fixed entries, in the order bottom 1's free entries fill the rest
THETA_FIELDS = ("theta_1_1", "theta_1_2", "theta_1_3", "theta_2_1", "theta_2_2", "theta_2_3")
TRANSFORM_TYPES = ("affine",)
SAMPLER_TYPES = ("bilinear",)


def st_target_grid(out_h: int, out_w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The fork's output grid (``LayerSetUp``): row coordinates (out_h, 1) ``s * 1.0 / out_h * 2 - 1``
    and column coordinates (1, out_w), in double, then in ``like``'s type and device."""
    s = torch.arange(out_h, dtype=torch.float64, device=like.device) * 1.0 / out_h * 2 - 1
    t = torch.arange(out_w, dtype=torch.float64, device=like.device) * 1.0 / out_w * 2 - 1
    return s.to(like.dtype).view(out_h, 1), t.to(like.dtype).view(1, out_w)


def full_theta(theta: Tensor, fixed: tuple[float | None, ...]) -> Tensor:
    """(N, 6) from bottom 1's free entries (N, 6 - #fixed), the fixed ones filled in (the fork's
    ``set_value_to_constant``/``copy_values``)."""
    free = theta.reshape(theta.shape[0], -1)
    cols, k = [], 0
    for value in fixed:
        if value is None:
            cols.append(free[:, k])
            k += 1
        else:
            cols.append(free.new_full((free.shape[0],), value))
    return torch.stack(cols, dim=1)


def bilinear_sample(u: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """(N, C, P) samples of u (N, C, H, W) at the pixel coordinates x (rows) and y (columns), (N, P),
    as the fork's kernel: four taps from ``floor``, zero outside the image. Differentiable in u, x, y
    (``floor`` held constant)."""
    n, c, h, w = u.shape
    # index arithmetic on clamped floors: -2 and h keep both taps of a far-away point outside the image
    m0 = torch.floor(x.detach()).clamp(-2, h).long()
    n0 = torch.floor(y.detach()).clamp(-2, w).long()
    flat = u.reshape(n, c, h * w)
    out = None
    for dm, dn in ((0, 0), (1, 0), (0, 1), (1, 1)):
        m, nn = m0 + dm, n0 + dn
        # the fork's 1 - (x - m) for the floor tap, 1 - (m - x) for the one above it
        wx = 1 - (x - m) if dm == 0 else 1 - (m - x)
        wy = 1 - (y - nn) if dn == 0 else 1 - (nn - y)
        inside = (m >= 0) & (m < h) & (nn >= 0) & (nn < w)
        idx = (m.clamp(0, h - 1) * w + nn.clamp(0, w - 1)).unsqueeze(1).expand(n, c, -1)
        term = torch.where(inside.unsqueeze(1), (wx * wy).unsqueeze(1) * flat.gather(2, idx), 0.0)
        out = term if out is None else out + term
    return out


@register_layer("SpatialTransformer")
class SpatialTransformerLayer(Layer):
    """The fork's SpatialTransformerLayer (see the module docstring)."""

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        sp = self.param.st_param
        if sp.transform_type not in TRANSFORM_TYPES:
            raise self.error(f"st_param.transform_type must be one of {', '.join(TRANSFORM_TYPES)}; "
                             f"received '{sp.transform_type}'")
        if sp.sampler_type not in SAMPLER_TYPES:
            raise self.error(f"st_param.sampler_type must be one of {', '.join(SAMPLER_TYPES)}; "
                             f"received '{sp.sampler_type}'")
        u = tuple(bottom_shapes[0])
        if len(u) != 4:
            raise self.error(f"bottom 0 must be 4-D (N, C, H, W); received shape {u}")
        self.out_h = int(sp.output_H) if sp.HasField("output_H") else u[2]
        self.out_w = int(sp.output_W) if sp.HasField("output_W") else u[3]
        if self.out_h <= 0 or self.out_w <= 0:
            raise self.error(f"st_param.output_H and output_W must be positive; received {self.out_h} x {self.out_w}")
        self.fixed = tuple(float(getattr(sp, f)) if sp.HasField(f) else None for f in THETA_FIELDS)
        self.n_free = sum(v is None for v in self.fixed)
        self.to_compute_du = bool(sp.to_compute_dU)
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        u, th = (tuple(s) for s in bottom_shapes)
        if len(u) != 4:
            raise self.error(f"bottom 0 must be 4-D (N, C, H, W); received shape {u}")
        free = int(np.prod(th[1:], dtype=np.int64)) if th else 0
        if not th or free + (6 - self.n_free) != 6:
            fixed = [f for f, v in zip(THETA_FIELDS, self.fixed) if v is not None]
            raise self.error(f"theta (bottom 1) must hold 6 - {6 - self.n_free} = {self.n_free} values per item "
                             f"(st_param fixes {', '.join(fixed) or 'none'}); received shape {th}")
        if th[0] != u[0]:
            raise self.error(f"the first dimension of theta and U should be the same; received {th} and {u}")
        return [(u[0], u[1], self.out_h, self.out_w)]

    def forward(self, u: Tensor, theta: Tensor) -> Tensor:  # type: ignore[override]
        if not self.to_compute_du:
            u = u.detach()
        n, c, h, w = u.shape
        th = full_theta(theta, self.fixed).to(u.dtype)
        gs, gt = st_target_grid(self.out_h, self.out_w, u)
        th = th.view(n, 6, 1, 1)
        px = gs * th[:, 0] + gt * th[:, 1] + th[:, 2]  # the gemm of output_grid (P x 3) and theta^T
        py = gs * th[:, 3] + gt * th[:, 4] + th[:, 5]
        x = (px + 1) / 2 * h
        y = (py + 1) / 2 * w
        v = bilinear_sample(u, x.reshape(n, -1), y.reshape(n, -1))
        return v.reshape(n, c, self.out_h, self.out_w)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(148)
        base = 'name: "st" type: "SpatialTransformer" bottom: "U" bottom: "theta" top: "V" '
        # thetas near a zoom with shifts: most source points inside, some across the border
        th = np.array([0.7, 0.2, 0.1, -0.15, 0.8, -0.05]) + 0.15 * r.standard_normal((2, 6))
        return [
            Example(base + 'st_param { output_H: 5 output_W: 4 }',
                    [r.standard_normal((2, 3, 6, 5)), th], grad_bottoms=(0, 1)),
            Example(base + 'st_param { to_compute_dU: false theta_1_1: 0.5 theta_1_2: 0 theta_2_1: 0 '
                    'theta_2_2: 0.5 }',
                    [r.standard_normal((2, 2, 5, 6)), 0.4 * r.standard_normal((2, 2))], grad_bottoms=(1,)),
        ]


@register_layer("STLoss")
class STLossLayer(_LossLayer):
    """The fork's STLossLayer (see the module docstring): one bottom, theta (N, 6)."""

    exact_bottoms = 1

    def allow_force_backward(self, bottom: int) -> bool:
        return True  # the fork's override

    def setup(self, bottom_shapes: list[Shape]) -> None:
        sp = self.param.st_loss_param
        if not (sp.HasField("output_H") and sp.HasField("output_W")):
            raise self.error("st_loss_param.output_H and output_W are required (the fork's schema)")
        self.out_h, self.out_w = int(sp.output_H), int(sp.output_W)
        if self.out_h <= 0 or self.out_w <= 0:
            raise self.error(f"st_loss_param.output_H and output_W must be positive; received "
                             f"{self.out_h} x {self.out_w}")
        self.reshape(bottom_shapes)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        th = tuple(bottom_shapes[0])
        if len(th) < 1 or int(np.prod(th[1:], dtype=np.int64)) != 6:
            raise self.error(f"inputs theta must have dimension of 6 per item; received shape {th}")
        return [()]

    def forward(self, theta: Tensor) -> Tensor:  # type: ignore[override]
        n = theta.shape[0]
        th = theta.reshape(n, 6, 1, 1)
        dev = theta.device
        # the kernel's grid: s * 2.0 / output_H - 1 in double, stored in the blob's type
        gs = (torch.arange(self.out_h, dtype=torch.float64, device=dev) * 2.0 / self.out_h - 1).to(theta.dtype)
        gt = (torch.arange(self.out_w, dtype=torch.float64, device=dev) * 2.0 / self.out_w - 1).to(theta.dtype)
        gs, gt = gs.view(-1, 1), gt.view(1, -1)
        loss = theta.new_zeros(())
        for row in (0, 3):
            p = th[:, row] * gs + th[:, row + 1] * gt + th[:, row + 2]
            over = torch.where(p < -1, p + 1, torch.where(p > 1, p - 1, torch.zeros_like(p)))
            loss = loss + (over * over / 2).sum()
        return loss / (n * self.out_h * self.out_w)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(149)
        th = np.array([1.1, 0.3, 0.4, -0.2, 0.9, -0.5]) + 0.2 * r.standard_normal((3, 6))
        return [Example('name: "stl" type: "STLoss" bottom: "theta" top: "loss" '
                        'st_loss_param { output_H: 6 output_W: 5 }', [th])]
