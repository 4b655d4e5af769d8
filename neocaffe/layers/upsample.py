"""The forks' ``Upsample``: one type name, two layers, told apart by their bottoms.

* **SegNet** (alexgkendall/caffe-segnet @ 344c113b, ``src/caffe/layers/upsample_layer.cpp``; ENet's
  fork has the same): two bottoms, the values and the mask of a MAX ``Pooling`` layer's second top
  (flat indices ``h * W + w`` within each channel of the pooling's input, as floats). Each value is
  written at its index of a zero map of ``upsample_h x upsample_w``; where two values share an index
  the later one (in the bottom's row-major order) stays, as the fork's CPU loop. Backward: each bottom
  value takes the top diff at its index (the fork's gather, which for shared indices is not the
  mathematical gradient); the mask gets none. ``upsample_param``: ``upsample_h`` and ``upsample_w``
  (both > 1), or else ``scale`` (default 2) or ``scale_h`` and ``scale_w`` (> 1), with ``pad_out_h`` /
  ``pad_out_w`` taking one row / column off (only with a factor of 2): top ``H * scale_h - pad_out_h``.
* **YOLO ports** (eric612/MobileNet-YOLO @ 69b4441c, ``src/caffe/layers/upsample_layer.cpp``; the
  YOLOv3 ports of darknet2caffe the same): one bottom, nearest neighbour by the integer ``scale``:
  ``top[h, w] = bottom[h / scale, w / scale]``; backward sums each ``scale x scale`` block. The ports'
  ``scale`` defaults to 1 (the schema keeps SegNet's default of 2, so an unset ``scale`` reads as 1
  here); SegNet's other fields have no meaning for this kind and are refused.

No loop over pixels: the SegNet kind is one scatter (with a ``scatter_reduce`` that finds, for each
index, the last value writing it) and its backward one gather.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer

SEGNET_ONLY = ("scale_h", "scale_w", "pad_out_h", "pad_out_w", "upsample_h", "upsample_w")


class _UnpoolByMask(torch.autograd.Function):
    """SegNet's forward scatter (the last writer of an index wins) and backward gather."""

    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor, out_hw: tuple[int, int]) -> Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        flat_idx = idx.reshape(n * c, h * w)
        pos = torch.arange(h * w, device=x.device).expand(n * c, h * w)
        winner = torch.full((n * c, out_hw[0] * out_hw[1]), -1, dtype=torch.int64, device=x.device)
        winner.scatter_reduce_(1, flat_idx, pos, reduce="amax")
        vals = x.reshape(n * c, h * w).gather(1, winner.clamp(min=0))
        top = torch.where(winner >= 0, vals, torch.zeros((), dtype=x.dtype, device=x.device))
        ctx.save_for_backward(flat_idx)
        ctx.shape = (n, c, h, w)
        return top.reshape(n, c, out_hw[0], out_hw[1])

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        (flat_idx,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        dx = dy.reshape(n * c, -1).gather(1, flat_idx).reshape(n, c, h, w)
        return dx, None, None


@register_layer("Upsample")
class UpsampleLayer(Layer):
    """SegNet's max-unpooling (two bottoms) or the YOLO ports' nearest-neighbour upsampling (one
    bottom); see the module docstring."""

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.upsample_param
        self.kind = "segnet" if len(bottom_shapes) == 2 else "yolo"
        if self.kind == "yolo":
            extra = [f for f in SEGNET_ONLY if p.HasField(f)]
            if extra:
                raise self.error(f"upsample_param {extra} are SegNet's fields, which need the pooling mask as a "
                                 f"second bottom; the YOLO ports' Upsample (one bottom) reads only `scale`")
            self.scale = int(p.scale) if p.HasField("scale") else 1
            if self.scale < 1:
                raise self.error(f"upsample_param.scale must be at least 1; received {self.scale}")
        else:
            self._segnet_setup(p)
        self.reshape(bottom_shapes)

    def _segnet_setup(self, p) -> None:
        has = p.HasField
        if not ((has("upsample_h") and has("upsample_w")) or (not has("scale") and has("scale_h") and has("scale_w"))
                or (not has("scale_h") and not has("scale_w"))):
            raise self.error("upsample_param: upsample_h and upsample_w are required, else (deprecated) scale "
                             "OR scale_h and scale_w")
        self.size: tuple[int, int] | None = None
        if has("upsample_h") and has("upsample_w"):
            self.size = (int(p.upsample_h), int(p.upsample_w))
            if min(self.size) <= 1:
                raise self.error(f"upsample_param.upsample_h/upsample_w must be greater than 1; received {self.size}")
            return
        self.factors = (int(p.scale_h), int(p.scale_w)) if has("scale_h") else (int(p.scale), int(p.scale))
        if min(self.factors) <= 1:
            raise self.error(f"upsample_param scale factors must be greater than 1; received {self.factors}")
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        for pad, f, axis in zip(self.pad_out, self.factors, "hw"):
            if pad and f != 2:
                raise self.error(f"pad_out_{axis} requires scale_{axis} == 2 (the output size is ill-defined "
                                 f"otherwise); received scale {f}")

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != 4:
            raise self.error(f"bottom 0 must have 4 axes (num, channels, height, width); received shape {s}")
        if self.kind == "yolo":
            return [s[:2] + (s[2] * self.scale, s[3] * self.scale)]
        m = tuple(bottom_shapes[1])
        if m != s:
            raise self.error(f"the mask (bottom 1) must have the values' shape {s}; received {m}")
        if self.size is not None:
            return [s[:2] + self.size]
        return [s[:2] + (s[2] * self.factors[0] - self.pad_out[0], s[3] * self.factors[1] - self.pad_out[1])]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if mask is None:
            n, c, h, w = x.shape
            k = self.scale
            return x.reshape(n, c, h, 1, w, 1).expand(n, c, h, k, w, k).reshape(n, c, h * k, w * k)
        out = self.reshape([tuple(x.shape), tuple(mask.shape)])[0][2:]
        idx = mask.detach().to(torch.int64)  # static_cast<int>: truncation toward zero
        if idx.numel() and (bool((idx < 0).any()) or bool((idx >= out[0] * out[1]).any())):
            raise self.error(f"mask index {int(idx.min())}..{int(idx.max())} out of range for a {out[0]} x {out[1]} "
                             f"top: check that the scale matches the pooling layer that made the mask")
        return _UnpoolByMask.apply(x, idx, out)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(16)
        x = r.standard_normal((2, 3, 3, 4))
        seg = 'name: "u" type: "Upsample" bottom: "x" bottom: "mask" top: "y" upsample_param '
        return [Example(seg + '{ scale: 2 }', [x, pooling_mask(r, x.shape, (2, 2), (6, 8))]),
                Example(seg + '{ upsample_h: 5 upsample_w: 7 }', [x, pooling_mask(r, x.shape, (2, 2), (5, 7))]),
                Example(seg + '{ scale_h: 3 scale_w: 2 pad_out_w: true }', [x, pooling_mask(r, x.shape, (3, 2), (9, 7))]),
                Example('name: "u" type: "Upsample" bottom: "x" top: "y" upsample_param { scale: 2 }', [x]),
                Example('name: "u" type: "Upsample" bottom: "x" top: "y"', [x])]


def pooling_mask(r: np.random.Generator, shape: Shape, window: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """A mask as a non-overlapping MAX pooling of an ``out_hw`` map with ``window`` writes it: one
    index ``h * W + w`` per window (windows clipped at the map's edge), as floats."""
    n, c, h, w = shape
    rows = np.arange(h).reshape(1, 1, h, 1) * window[0] + r.integers(0, window[0], (n, c, h, w))
    cols = np.arange(w).reshape(1, 1, 1, w) * window[1] + r.integers(0, window[1], (n, c, h, w))
    rows, cols = np.minimum(rows, out_hw[0] - 1), np.minimum(cols, out_hw[1] - 1)
    return (rows * out_hw[1] + cols).astype(np.float64)
