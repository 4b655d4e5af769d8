"""Pooling (MAX, AVE, STOCHASTIC) and SPP with Caffe's geometry and numerics.

Fields read (``pooling_param``): ``pool``, ``kernel_size``/``kernel_h``/``kernel_w``,
``stride``/``stride_h``/``stride_w``, ``pad``/``pad_h``/``pad_w``, ``global_pooling``,
``round_mode`` (upstream; CEIL by default) and ``ceil_mode`` (DenseNet's forks, BVLC pull request #3057:
false is FLOOR; with both set they must agree). ``engine`` is ignored: results are those of Caffe's own
(CAFFE engine) pooling on every device.

The pooling itself, with Caffe's rules (output size, windows, first maximum, divisors, STOCHASTIC), is
:mod:`neocaffe.layers.pool_ops`.

In a net of ``lineage: "darknet2caffe"`` every Pooling takes ChenYingpeng/darknet2caffe's Reshape
(``caffe_layers/pooling_layer/pooling_layer.cpp`` @ f6d9ea33c199dc0881531f75651f2a9abafca73f, "only work for
yolov3-tiny"): one more output row and column when ``(kernel_h - stride_h) % 2 == 1`` (C++: a positive odd
difference; ``kernel_h``/``stride_h`` decide both axes; with ``global_pooling`` the kernel is the bottom's plane),
added before the pad clip, then the fork's ``CHECK_LT`` (an error here). Its Forward/Backward are BVLC's, so the
extra windows are clipped to the input (MAX: -FLT_MAX and no diff where nothing is left) and AVE divides by
``(min(start + k, H + pad) - start)`` per axis, 0 or less past the input (0/0: NaN, as in the fork).
Deviation: the fork's file has no ``round_mode`` (always CEIL); here the +1 follows the layer's rounding.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, NetSoFar, Shape
from neocaffe.layers.fastest import fastest
from neocaffe.layers.pool_kernel import max_pool
from neocaffe.layers.pool_ops import (AVE, CEIL, CHANNELS_LAST_MIN_HW, FLOOR, FLT_MAX, MAX, METHOD_NAMES, STOCHASTIC,
                                      caffe_pool2d, caffe_pooled_size, darknet2caffe_extra, fast_size)
from neocaffe.layers.registry import register_layer


def _hw(layer: Layer, pp: Any, name: str, single: str) -> tuple[int, int]:
    """``<single>`` for both axes, or ``<name>_h`` and ``<name>_w`` (both, and not with ``<single>``)."""
    has_h, has_w = pp.HasField(f"{name}_h"), pp.HasField(f"{name}_w")
    if has_h or has_w:
        if pp.HasField(single) or not (has_h and has_w):
            raise layer.error(f"{single} is {single} OR {name}_h and {name}_w are required")
        return int(getattr(pp, f"{name}_h")), int(getattr(pp, f"{name}_w"))
    v = int(getattr(pp, single))
    return v, v


@register_layer("Pooling")
class PoolingLayer(Layer):
    """Caffe's PoolingLayer (4-D bottoms). Tops: pooled values [, argmax mask (MAX only)].

    NVCaffe's ``pooling_param.torch_pooling`` (NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7)
    changes nothing: its caffe.proto comment promises ``floor`` output sizes, but no NVCaffe code reads the
    field (``pooling_layer.cpp``'s Reshape rounds up, Caffe's ceil; ``cudnn_pooling_layer.cpp`` takes those
    sizes), so NVCaffe's outputs, and ours, are those without it (:mod:`neocaffe.graph.nvcaffe` notes it once
    per net). Floor rounding is ``round_mode: FLOOR`` / ``ceil_mode: false``."""

    exact_bottoms = 1
    min_tops = 1
    max_tops = 2
    takes_net = True  # NetParameter.lineage "darknet2caffe": the fork's Reshape (module docstring)

    def setup(self, bottom_shapes: list[Shape]) -> None:
        pp = self.param.pooling_param
        net = self.net_so_far
        self.darknet2caffe = net is not None and str(getattr(net.written, "lineage", "")) == "darknet2caffe"
        self.method = int(pp.pool)
        if self.method not in METHOD_NAMES:
            raise self.error(f"unknown pooling method {self.method}; known: {METHOD_NAMES}")
        if len(self.param.top) > 1 and self.method != MAX:
            raise self.error(f"only MAX pooling has a second (mask) top; {METHOD_NAMES[self.method]} takes exactly 1 top")
        self.global_pooling = bool(pp.global_pooling)
        has_k = pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w")
        if self.global_pooling:
            if has_k:
                raise self.error("with global_pooling: true the filter size cannot be specified")
            self.kernel = (0, 0)
        else:
            if not pp.HasField("kernel_size") and not (pp.HasField("kernel_h") and pp.HasField("kernel_w")):
                raise self.error("filter size is kernel_size OR kernel_h and kernel_w; for non-square filters both are required")
            self.kernel = _hw(self, pp, "kernel", "kernel_size")
            if min(self.kernel) <= 0:
                raise self.error(f"filter dimensions cannot be zero; received {self.kernel}")
        self.pad = _hw(self, pp, "pad", "pad")
        self.stride = _hw(self, pp, "stride", "stride")
        if min(self.stride) <= 0 or max(self.stride) > 2**31 - 1:  # Caffe holds it in an int (torch too)
            raise self.error(f"stride must be positive and at most {2**31 - 1}; received {self.stride}")
        if self.global_pooling and (any(self.pad) or self.stride != (1, 1)):
            raise self.error("with global_pooling: true only pad = 0 and stride = 1 are allowed")
        if any(self.pad):
            if self.method == STOCHASTIC:
                raise self.error("padding is implemented only for AVE and MAX pooling")
            if not self.global_pooling and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
                raise self.error(f"pad {self.pad} must be smaller than the kernel {self.kernel}")
        self.round_mode = int(pp.round_mode)
        if pp.HasField("ceil_mode"):  # DenseNet's forks (BVLC pull request #3057): false rounds down
            ceil = CEIL if pp.ceil_mode else FLOOR
            if pp.HasField("round_mode") and self.round_mode != ceil:
                raise self.error(f"pooling_param.ceil_mode: {str(pp.ceil_mode).lower()} contradicts round_mode: "
                                 f"{'CEIL' if self.round_mode == CEIL else 'FLOOR'}")
            self.round_mode = ceil
        self.window(bottom_shapes[0])

    def window(self, shape: Shape) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(kernel, output plane)`` for a bottom of ``shape``: the kernel is the bottom's plane with
        ``global_pooling``, the output plane Caffe's rounding and clipping."""
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width); received shape {tuple(shape)}")
        k = (int(shape[2]), int(shape[3])) if self.global_pooling else self.kernel
        clip = bool(self.pad[0] or self.pad[1])
        extra = darknet2caffe_extra(k[0], self.stride[0]) if self.darknet2caffe else 0
        try:
            out = (caffe_pooled_size(shape[2], k[0], self.stride[0], self.pad[0], clip, self.round_mode, extra),
                   caffe_pooled_size(shape[3], k[1], self.stride[1], self.pad[1], clip, self.round_mode, extra))
        except ValueError as e:
            raise self.error(f"bottom {tuple(shape)}: {e}") from None
        if min(out) <= 0:
            raise self.error(f"bottom {tuple(shape)} gives an empty output {out}")
        return k, out

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        _, out = self.window(s)
        return [(s[0], s[1]) + out] * len(self.param.top)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # type: ignore[override]
        k, out = self.window(tuple(x.shape))
        need_mask = self.n_tops > 1
        y, mask = caffe_pool2d(x, self.method, k, self.stride, self.pad, self.round_mode,
                               self.phase == TRAIN, need_mask, out)
        return [y, mask] if need_mask else y

    def lean_kernel(self, bottoms: Sequence[Tensor]) -> Callable[..., Any] | None:
        """On the CPU, without a mask: MAX and AVE as ``forward`` where PyTorch's windows are Caffe's (see
        ``_fast_size``), and MAX through Caffe's loop in C (``layers.pool_kernel``, bit for bit ``forward``)
        where it can be built; with both, the faster on this bottom (``layers.fastest``)."""
        x = bottoms[0]
        if self.n_tops > 1 or x.device.type != "cpu" or self.method not in (MAX, AVE):
            return None
        k, out = self.window(tuple(x.shape))
        native = max_pool(x, k, self.stride, self.pad, out) if self.method == MAX else None
        eager = self._lean_torch(x, k, out)
        if native is None or eager is None:
            return native or eager
        return fastest([native, eager], x)

    def _lean_torch(self, x: Tensor, k: tuple[int, int], out: tuple[int, int]) -> Callable[..., Any] | None:
        """``forward`` through PyTorch's pooling where its windows are Caffe's (``pool_ops.fast_size``), else None."""
        s, p, ceil = self.stride, self.pad, self.round_mode == CEIL
        if fast_size(x.shape[-2], x.shape[-1], out, k, s, p, ceil) != out:
            return None
        if self.method == MAX and x.shape[-1] * x.shape[-2] >= CHANNELS_LAST_MIN_HW:  # as pool_ops._kernel_layout
            return lambda x: torch.max_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p, 1,
                                              ceil).contiguous().clamp_min_(-FLT_MAX)
        if self.method == MAX:
            return lambda x: torch.max_pool2d(x, k, s, p, 1, ceil).contiguous().clamp_min_(-FLT_MAX)
        if (x.shape[-2] + 2 * p[0] - k[0]) // s[0] + (x.shape[-1] + 2 * p[1] - k[1]) // s[1] > 0:  # as pool_ops._avg_pool2d
            return lambda x: F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p, ceil, True).contiguous()
        return lambda x: F.avg_pool2d(x, k, s, p, ceil, True)

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        from neocaffe.proto import caffe_pb2

        r = np.random.default_rng(3)
        x = r.standard_normal((2, 2, 7, 8))
        L = 'name: "p" type: "Pooling" bottom: "x" top: "y" '
        darknet = NetSoFar(caffe_pb2.NetParameter(lineage="darknet2caffe"))
        return [
            Example(L + 'pooling_param { pool: MAX kernel_size: 3 stride: 2 }', [x]),
            Example(L + 'top: "m" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', [x]),
            Example(L + 'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', [x]),
            Example(L + 'pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 2 pad_w: 0 }', [x]),
            Example(L + 'pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 2 }', [x]),
            Example(L + 'pooling_param { pool: MAX kernel_size: 2 stride: 3 }', [r.standard_normal((1, 2, 9, 9))]),
            Example(L + 'pooling_param { pool: AVE global_pooling: true }', [x]),
            Example(L + 'pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR }', [x]),
            Example(L + 'pooling_param { pool: AVE kernel_size: 2 stride: 2 ceil_mode: false }', [x]),
            Example(L + 'pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', [np.abs(x) + 0.1]),
            Example(L + 'pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', [np.abs(x) + 0.1], phase=TRAIN),
            # darknet2caffe's Reshape: 7x9 -> 4x5 at 3/2 (BVLC's 3x4), every extra window holding the last input row/column
            Example(L + 'top: "m" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', [r.standard_normal((2, 2, 7, 9))],
                    net=darknet),
            Example(L + 'pooling_param { pool: AVE kernel_size: 3 stride: 2 }', [r.standard_normal((2, 2, 7, 9))], net=darknet),
            Example(L + 'pooling_param { pool: AVE kernel_size: 2 stride: 1 }', [x], net=darknet),  # yolov3-tiny's 2/1
        ]


@register_layer("SPP")
class SPPLayer(Layer):
    """Caffe's SPPLayer: for level i, 2^i bins per axis with kernel ``ceil(size/2^i)``, stride = kernel,
    pad ``(kernel*2^i - size + 1) // 2``; each level flattened, concatenated on axis 1
    (``pyramid_height: 1`` gives the single pooled (N, C, 1, 1) blob). Its internal pooling layers are
    built with the default (TRAIN) phase, so STOCHASTIC SPP samples in every phase, as in Caffe."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        sp = self.param.spp_param
        self.height = int(sp.pyramid_height)
        self.method = int(sp.pool)
        if self.height < 1:
            raise self.error(f"spp_param.pyramid_height must be at least 1; received {self.height}")
        self._levels(bottom_shapes[0])

    def _levels(self, shape: Shape) -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]]:
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width); received shape {tuple(shape)}")
        H, W = int(shape[2]), int(shape[3])
        if H <= 0 or W <= 0:
            raise self.error("input dimensions cannot be zero")
        levels = []
        for i in range(self.height):
            bins = 2 ** i
            k = (math.ceil(H / bins), math.ceil(W / bins))
            p = ((k[0] * bins - H + 1) // 2, (k[1] * bins - W + 1) // 2)
            if p[0] >= k[0] or p[1] >= k[1]:
                raise self.error(f"pyramid level {i} of a {H}x{W} input needs pad {p} >= kernel {k} (Caffe refuses it)")
            if self.method == STOCHASTIC and (p[0] or p[1]):
                raise self.error(f"pyramid level {i} of a {H}x{W} input needs pad {p}; STOCHASTIC pooling takes none")
            clip = bool(p[0] or p[1])
            out = (caffe_pooled_size(H, k[0], k[0], p[0], clip), caffe_pooled_size(W, k[1], k[1], p[1], clip))
            levels.append((k, k, p, out))
        return levels

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        levels = self._levels(s)
        if self.height == 1:
            return [(s[0], s[1]) + levels[0][3]]
        return [(s[0], sum(s[1] * o[0] * o[1] for *_, o in levels))]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        outs = []
        for k, s, p, _ in self._levels(tuple(x.shape)):
            y, _m = caffe_pool2d(x, self.method, k, s, p, CEIL, train=True)
            outs.append(y)
        if self.height == 1:
            return outs[0]
        return torch.cat([y.reshape(y.shape[0], -1) for y in outs], 1)

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(4)
        return [
            Example('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 pool: MAX }',
                    [r.standard_normal((2, 2, 7, 9))]),
            Example('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 pool: AVE }',
                    [r.standard_normal((1, 3, 6, 5))]),
            Example('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 pool: MAX }',
                    [r.standard_normal((1, 3, 4, 5))]),
        ]
