"""Warping by a flow field: FlowNet 2.0's ``FlowWarp`` (``flow_warp_param``) and PWC-Net's ``Warp`` (no parameter).

``FlowWarp``: lmb-freiburg/flownet2 @ b92e198b56b0e52e1ba0a5a98dc0e39fa5ae70cc, ``src/caffe/layers/flow_warp_layer.
{cpp,cu}``, ``include/caffe/layers/flow_warp_layer.hpp``. Bottoms: an image (N, C, H, W) and a flow (N, 2, H, W)
(x then y, in pixels). Top (N, C, H, W): at (y, x), with ``x2 = x + flow_x``, ``y2 = y + flow_y`` in float32, where
``0 <= x2 < W`` and ``0 <= y2 < H`` the bilinear sample ``(1-a)(1-b) TL + a(1-b) TR + (1-a) b BL + a b BR`` of the
corners ``int(x2)`` and ``min(int(x2) + 1, W - 1)`` (rows likewise), ``a = x2 - int(x2)``; elsewhere
``fill_value`` (ZERO: 0; NOT_A_NUMBER: NaN) in every channel. Backward, as ``Backward_gpu``: the image diff spreads
the top diff by the four weights; the flow diff is ``sum_c top_diff * (g (TR - TL) + (1 - g)(BR - BL))`` for x
with ``g = min(int(y2) + 1, H - 1) - y2`` (y likewise), 0 where the sample fell outside (the GPU path zeroes it;
the CPU path leaves the old diff). At the clamped last row or column both formulas equal the derivative of the
clamped forward, so the fork's backward is the gradient of its forward: here it is autograd's.

``Warp``: NVlabs/PWC-Net @ 07df6eb, ``Caffe/warping_code/warp_layer.{hpp,cpp,cu}`` (GPU only in the fork; here on
every device). Bottoms: U (N, C, H, W) and a flow (N, 2, oH, oW), where (oH, oW) is bottom 0's size at set-up,
kept for later shapes as the fork's ``LayerSetUp``. Top (N, C, oH, oW): at (s, t), ``x = t + flow_x``,
``y = s + flow_y``; inside ``[0, W - 1] x [0, H - 1]`` (both ends included) the bilinear sample of the corners
``floor``/``ceil`` of x and y; 0 outside. Backward (``WarpBackwardGPU_dU``, ``WarpBackwardGPU_dFlow``): U's diff is
the gradient; the flow's is the gradient plus, where x is an integer (floor == ceil), the average of the two
one-sided differences ``((1 - a_y)(tr + tl) + a_y (br + bl)) / 2`` (a side past the border counts 0), and
likewise in y: a :class:`torch.autograd.Function` computes it as the fork does. The fork only prints an error for
a flow of other than 2 channels; here that, and a flow whose size is not (oH, oW), are errors.

``Warp`` in a net of lineage ``liteflownet`` (``lineage: "liteflownet"``, or LiteFlowNet's ``ExpMax``/``Grid``/
``NegSquare`` in the net: ``neocaffe.layers.lineage``) is twhui/LiteFlowNet's layer of the same type string instead:
bottom 1 holds absolute sampling coordinates, not a displacement, and each corner outside the image counts 0
(:func:`neocaffe.layers.liteflownet.coords_warp`, whose docstring gives its arithmetic). Built alone, or in any other
net, ``Warp`` is PWC-Net's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, NetSoFar, Shape, legacy_shape
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.liteflownet import coords_examples, coords_shape, coords_warp
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2


def _grid(flow: Tensor) -> tuple[Tensor, Tensor]:
    """``x + flow_x``, ``y + flow_y`` on the flow's grid, in the flow's dtype."""
    _, _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    return xs + flow[:, 0], ys + flow[:, 1]


def _gather(flat: Tensor, idx: Tensor) -> Tensor:
    """flat (N, C, H*W), idx (N, P) -> (N, C, P)."""
    return flat.gather(2, idx.unsqueeze(1).expand(-1, flat.shape[1], -1))


def flow_warp(image: Tensor, flow: Tensor, fill_nan: bool) -> Tensor:
    """FlowWarp's forward (autograd gives its backward)."""
    n, c, h, w = image.shape
    x2, y2 = _grid(flow)
    valid = (x2 >= 0) & (y2 >= 0) & (x2 < w) & (y2 < h)
    xl = torch.floor(x2.detach()).clamp(0, w - 1).long()
    yt = torch.floor(y2.detach()).clamp(0, h - 1).long()
    xr, yb = (xl + 1).clamp(max=w - 1), (yt + 1).clamp(max=h - 1)
    a = torch.where(valid, x2 - xl.to(x2.dtype), torch.zeros_like(x2)).reshape(n, 1, -1)
    b = torch.where(valid, y2 - yt.to(y2.dtype), torch.zeros_like(y2)).reshape(n, 1, -1)
    flat = image.reshape(n, c, h * w)
    tl, tr = _gather(flat, (yt * w + xl).reshape(n, -1)), _gather(flat, (yt * w + xr).reshape(n, -1))
    bl, br = _gather(flat, (yb * w + xl).reshape(n, -1)), _gather(flat, (yb * w + xr).reshape(n, -1))
    out = (1 - a) * (1 - b) * tl + a * (1 - b) * tr + (1 - a) * b * bl + a * b * br
    fill = torch.full((), float("nan") if fill_nan else 0.0, dtype=out.dtype, device=out.device)
    return torch.where(valid.reshape(n, 1, -1), out, fill).reshape(n, c, h, w)


class _Warp(torch.autograd.Function):
    """PWC-Net's Warp with its flow diff (module docstring)."""

    @staticmethod
    def _corners(u: Tensor, flow: Tensor):
        n, c, h, w = u.shape
        x, y = _grid(flow)
        valid = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        xs, ys = torch.where(valid, x, torch.zeros_like(x)), torch.where(valid, y, torch.zeros_like(y))
        fx, fy = torch.floor(xs).long(), torch.floor(ys).long()
        cx, cy = torch.ceil(xs).long(), torch.ceil(ys).long()
        return valid.reshape(n, 1, -1), fx, fy, cx, cy, (xs - fx.to(xs.dtype)).reshape(n, 1, -1), \
            (ys - fy.to(ys.dtype)).reshape(n, 1, -1)

    @staticmethod
    def forward(ctx, u: Tensor, flow: Tensor) -> Tensor:  # type: ignore[override]
        n, c, h, w = u.shape
        valid, fx, fy, cx, cy, ax, ay = _Warp._corners(u, flow)
        flat = u.reshape(n, c, h * w)
        pick = lambda yy, xx: _gather(flat, (yy * w + xx).reshape(n, -1))  # noqa: E731
        v = (1 - ax) * (1 - ay) * pick(fy, fx) + ax * (1 - ay) * pick(fy, cx)
        v = v + (1 - ax) * ay * pick(cy, fx) + ax * ay * pick(cy, cx)
        v = torch.where(valid, v, torch.zeros_like(v))
        ctx.save_for_backward(u, flow)
        return v.reshape(n, c, flow.shape[2], flow.shape[3])

    @staticmethod
    def backward(ctx, dv: Tensor):  # type: ignore[override]
        u, flow = ctx.saved_tensors
        n, c, h, w = u.shape
        valid, fx, fy, cx, cy, ax, ay = _Warp._corners(u, flow)
        g = torch.where(valid, dv.reshape(n, c, -1), torch.zeros((), dtype=dv.dtype, device=dv.device))
        du = dflow = None
        if ctx.needs_input_grad[0]:
            du = torch.zeros((n, c, h * w), dtype=u.dtype, device=u.device)
            for yy, xx, wt in ((fy, fx, (1 - ax) * (1 - ay)), (fy, cx, ax * (1 - ay)),
                               (cy, fx, (1 - ax) * ay), (cy, cx, ax * ay)):
                du.scatter_add_(2, (yy * w + xx).reshape(n, 1, -1).expand(-1, c, -1), wt * g)
            du = du.reshape(u.shape)
        if ctx.needs_input_grad[1]:
            flat = u.reshape(n, c, h * w)
            zero = torch.zeros((), dtype=u.dtype, device=u.device)

            def pick(yy: Tensor, xx: Tensor, ok: Tensor | None = None) -> Tensor:
                vals = _gather(flat, (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(n, -1))
                return vals if ok is None else torch.where(ok.reshape(n, 1, -1), vals, zero)

            tl, tr, bl, br = pick(fy, fx), pick(fy, cx), pick(cy, fx), pick(cy, cx)
            gx = (1 - ay) * tr - (1 - ay) * tl + ay * br - ay * bl
            gy = (1 - ax) * bl - (1 - ax) * tl + ax * br - ax * tr
            left, right = fx - 1 >= 0, fx + 1 <= w - 1
            d_tl = torch.where(left.reshape(n, 1, -1), tl - pick(fy, fx - 1), zero)
            d_bl = torch.where(left.reshape(n, 1, -1), bl - pick(cy, fx - 1), zero)
            d_tr = torch.where(right.reshape(n, 1, -1), pick(fy, fx + 1) - tl, zero)
            d_br = torch.where(right.reshape(n, 1, -1), pick(cy, fx + 1) - bl, zero)
            extra_x = (1 - ay) * (d_tr + d_tl) / 2.0 + ay * (d_br + d_bl) / 2.0
            up, down = fy - 1 >= 0, fy + 1 <= h - 1
            e_tl = torch.where(up.reshape(n, 1, -1), tl - pick(fy - 1, fx), zero)
            e_tr = torch.where(up.reshape(n, 1, -1), tr - pick(fy - 1, cx), zero)
            e_bl = torch.where(down.reshape(n, 1, -1), pick(fy + 1, fx) - tl, zero)
            e_br = torch.where(down.reshape(n, 1, -1), pick(fy + 1, cx) - tr, zero)
            extra_y = (1 - ax) * (e_bl + e_tl) / 2.0 + ax * (e_br + e_tr) / 2.0
            on_x, on_y = (fx == cx).reshape(n, 1, -1), (fy == cy).reshape(n, 1, -1)
            gx = gx * g + torch.where(on_x, extra_x * g, zero)
            gy = gy * g + torch.where(on_y, extra_y * g, zero)
            dflow = torch.stack([gx.sum(1), gy.sum(1)], 1).reshape(flow.shape)
        return du, dflow


@register_layer("FlowWarp")
class FlowWarp(Layer):
    """FlowNet 2.0's FlowWarp (module docstring)."""

    exact_bottoms = 2
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.fill_nan = self.param.flow_warp_param.fill_value == caffe_pb2.FlowWarpParameter.NOT_A_NUMBER

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        img, flow = (legacy_shape(s, self, f"bottom {i}") for i, s in enumerate(bottom_shapes))
        if flow[0] != img[0] or flow[1] != 2 or flow[2:] != img[2:]:
            raise self.error(f"bottom 1 must be a flow (N, 2, H, W) matching bottom 0's N, H, W; received shapes "
                             f"{tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        return [img]

    def forward(self, image: Tensor, flow: Tensor) -> Tensor:  # type: ignore[override]
        s = self.reshape([tuple(image.shape), tuple(flow.shape)])[0]
        return flow_warp(image.reshape(s), flow.reshape(s[0], 2, s[2], s[3]), self.fill_nan)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(41)
        img = r.standard_normal((2, 3, 4, 5))
        # flows off the integer grid (finite differences must not cross a pixel edge)
        flow = np.floor(r.uniform(-2, 2, (2, 2, 4, 5))) + r.uniform(0.2, 0.8, (2, 2, 4, 5))
        head = 'name: "warp" type: "FlowWarp" bottom: "img" bottom: "flow" top: "w" '
        return [Example(head, [img, flow], grad_bottoms=(0, 1)),
                Example(head + "flow_warp_param { fill_value: NOT_A_NUMBER }", [img, flow], grad_bottoms=())]


@register_layer("Warp")
class Warp(Layer):
    """NVlabs/PWC-Net's Warp, or twhui/LiteFlowNet's in a net of that lineage (module docstring)."""

    exact_bottoms = 2
    exact_tops = 1
    allow_in_place = False
    takes_net = True  # LiteFlowNet's Warp (absolute coordinates) is told by the net's lineage

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.coords = net_lineage(self.net_so_far) == "liteflownet"  # LiteFlowNet's arithmetic
        if self.coords:
            coords_shape(self, bottom_shapes)
            return
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"bottom 0 must be 4-D (N, C, H, W); received shape {tuple(bottom_shapes[0])}")
        self.out_hw = (int(bottom_shapes[0][2]), int(bottom_shapes[0][3]))  # the fork's output_H_, output_W_

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if self.coords:
            return coords_shape(self, bottom_shapes)
        u, flow = (tuple(int(d) for d in s) for s in bottom_shapes)
        if len(u) != 4 or flow != (u[0], 2) + self.out_hw:
            raise self.error(f"bottom 1 must be a flow (N, 2, {self.out_hw[0]}, {self.out_hw[1]}): bottom 0's N and "
                             f"its set-up height and width; received shapes {u} and {flow}")
        return [(u[0], u[1]) + self.out_hw]

    def forward(self, u: Tensor, flow: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(u.shape), tuple(flow.shape)])
        return coords_warp(u, flow) if self.coords else _Warp.apply(u, flow)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(42)
        u = r.standard_normal((2, 3, 4, 5))
        flow = np.floor(r.uniform(-2, 2, (2, 2, 4, 5))) + r.uniform(0.2, 0.8, (2, 2, 4, 5))
        lite = caffe_pb2.NetParameter(lineage="liteflownet")
        return [Example('name: "warp" type: "Warp" bottom: "u" bottom: "flow" top: "v"', [u, flow],
                        grad_bottoms=(0, 1))] + coords_examples(NetSoFar(lite))
