"""C3D-v1.0's 3-D layers on 5-D blobs (num, channels, length, height, width): ``Convolution3D``, ``Pooling3D``.

Lineage: facebookarchive/C3D @ 71336a2 (``C3D-v1.0``): ``src/caffe/layers/convolution3d_layer.cpp`` (+ ``.cu``)
with ``src/caffe/util/vol2col.cpp``, and ``src/caffe/layers/pool3d_layer.cpp`` (+ ``.cu``). Their V1 types
``CONVOLUTION3D`` and ``POOLING3D`` upgrade to these names (``neocaffe/io/legacy_types.py``).

**Convolution3D** reads ``convolution_param``: ``num_output``, ``bias_term``, ``kernel_size`` (height and
width), ``kernel_depth``, ``stride`` (1), ``temporal_stride`` (1), ``pad`` (0), ``temporal_pad`` (0),
``filter_group`` (1), ``weight_filler``, ``bias_filler``. Output size ``(in + 2 pad - k) / stride + 1`` in
C's integer division (truncating toward zero: an input smaller than the kernel by less than the stride still
gives one output, over zeros beyond the input, as vol2col reads it). Blobs: weight ``(num_output, C,
kernel_depth, k, k)``, bias ``(num_output,)`` (the fork's 1x1x1x1xN loads into it). The fork never reads
``group``: every filter sees every channel (a warning when it is set). ``filter_group`` splits the filters
into GEMMs over the same columns, which changes memory, not results: it must divide ``num_output`` (the
fork's CHECK) and is otherwise ignored. Fields of upstream's geometry the fork does not read (``kernel_h``
... ``pad_w``, ``dilation``, ``axis``, a second ``kernel_size``/``stride``/``pad``) are an error here.

**Pooling3D** reads ``pooling_param``: ``pool`` (MAX, AVE; STOCHASTIC is the fork's NOT_IMPLEMENTED),
``kernel_size``, ``stride`` (1), ``pad`` (0; AVE only, the fork's CHECK), ``kernel_depth``,
``temporal_stride`` (1). Output sizes ``ceil(float(H + 2 pad - k) / stride) + 1`` and ``ceil(float(L -
kernel_depth) / temporal_stride) + 1``: rounded up, with no temporal padding and *without* upstream's
clipping of a last window that starts in the padding. MAX: the window's maximum over the bottom, -FLT_MAX
for a window past it; backward: every element equal to its window's maximum takes the window's diff (ties
all take it), windows adding up in the fork's order. AVE: the sum over the window's part inside the bottom
divided by ``(hend - hstart)(wend - wstart)(lend - lstart)`` with ``hend = min(hstart + k, H + pad)``,
``hstart = ph stride - pad`` and ``lend = min(lstart + kernel_depth, L)`` (so the padding counts, the part
past it does not; a window starting past the padded bottom divides 0 by a size <= 0, as the fork does);
backward: ``diff / pool_size`` to each element of the window. The sums run in the fork's order, so the
values are the fork's bit for bit. Fields the fork does not read (``kernel_h`` ... ``pad_w``,
``global_pooling``, ``round_mode``, ``ceil_mode``) are an error here.
"""
from __future__ import annotations

import logging
import math
from itertools import product
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.layers")
FLT_MAX = 3.4028234663852886e38
MAX, AVE, STOCHASTIC = 0, 1, 2  # PoolingParameter.PoolMethod
Geometry = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]


def _five_axes(layer: Layer, shape: Shape) -> None:
    if len(shape) != 5:
        raise layer.error(f"the bottom must have 5 axes (num, channels, length, height, width), as C3D's blobs; "
                          f"received shape {tuple(shape)}")


def _refuse(layer: Layer, msg: Any, what: str, fields: Sequence[str]) -> None:
    """An error for upstream's geometry fields, which the fork's layer does not read."""
    set_ = [f for f in fields if msg.HasField(f)]
    if set_:
        raise layer.error(f"{what} sets {set_}, which C3D-v1.0's {layer.type_name} does not read (it reads "
                          f"kernel_size, kernel_depth, stride, temporal_stride, pad)")


def _c_div(a: int, b: int) -> int:
    """C's integer division (truncation toward zero) of ``a`` by a positive ``b``."""
    return a // b if a >= 0 else -((-a) // b)


def _pad_end(x: Tensor, front: Sequence[int], end: Sequence[int], value: float) -> Tensor:
    """``x`` padded on the last three axes: ``front[i]`` before and ``end[i]`` after axis ``i`` (L, H, W)."""
    if not any(front) and not any(end):
        return x
    return F.pad(x, (front[2], end[2], front[1], end[1], front[0], end[0]), value=value)


def _windows(out: Sequence[int], k: Sequence[int], s: Sequence[int], order: Any = None) -> list[tuple[slice, ...]]:
    """For each kernel offset (row-major; ``order=reversed`` for the opposite), the strided slice of a padded
    bottom that holds that offset's element of every window."""
    offsets = list(product(*(range(kk) for kk in k)))
    if order is not None:
        offsets = list(order(offsets))
    return [(Ellipsis,) + tuple(slice(o, o + st * (n - 1) + 1, st) for o, st, n in zip(off, s, out))
            for off in offsets]


# ---------------------------------------------------------------- Convolution3D


def _single(layer: Layer, values: Sequence[int], name: str, default: int | None) -> int:
    if len(values) > 1:
        raise layer.error(f"convolution_param.{name} is given {len(values)} times; C3D-v1.0's {layer.type_name} "
                          f"reads one value (height and width)")
    if not values:
        if default is None:
            raise layer.error(f"convolution_param.{name} must be set")
        return default
    return int(values[0])


Triple = tuple[int, int, int]


def conv3d_geometry(layer: Layer, cp: Any) -> tuple[Triple, Triple, Triple, int]:
    """(kernel, stride, pad) as (length, height, width), and ``num_output``, of C3D-v1.0's Convolution3D or
    Deconvolution3D from ``convolution_param``: ``kernel_depth``/``kernel_size``, ``temporal_stride``/``stride``
    (1), ``temporal_pad``/``pad`` (0); upstream's geometry fields, which the fork does not read, are errors."""
    _refuse(layer, cp, "convolution_param", ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "axis"))
    if len(cp.dilation):
        raise layer.error(f"convolution_param.dilation is not read by C3D-v1.0's {layer.type_name}")
    k = _single(layer, cp.kernel_size, "kernel_size", None)
    s = _single(layer, cp.stride, "stride", 1)
    p = _single(layer, cp.pad, "pad", 0)
    kernel, stride, pad = (int(cp.kernel_depth), k, k), (int(cp.temporal_stride), s, s), (int(cp.temporal_pad), p, p)
    if min(kernel) <= 0 or min(stride) <= 0:
        raise layer.error(f"kernel (kernel_depth, kernel_size) and stride (temporal_stride, stride) must be "
                          f"positive; received kernel {kernel}, stride {stride}")
    if int(cp.num_output) <= 0:
        raise layer.error("convolution_param.num_output must be set and positive (the fork's CHECK_GT)")
    return kernel, stride, pad, int(cp.num_output)


@register_layer("Convolution3D")
class Convolution3DLayer(Layer):
    """C3D-v1.0's Convolution3DLayer (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        cp = self.param.convolution_param
        _five_axes(self, bottom_shapes[0])
        self.kernel, self.stride, self.pad, self.num_output = conv3d_geometry(self, cp)
        if cp.filter_group <= 0 or self.num_output % cp.filter_group:
            raise self.error(f"convolution_param.filter_group = {cp.filter_group} does not divide num_output = "
                             f"{self.num_output}")
        if cp.group != 1:
            log.warning("layer '%s' (Convolution3D): convolution_param.group = %d is not read by C3D-v1.0 (every "
                        "filter sees every channel)", self.name, cp.group)
        self.channels = int(bottom_shapes[0][1])
        self.add_blob(fill(cp.weight_filler, (self.num_output, self.channels) + self.kernel))
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.add_blob(fill(cp.bias_filler, (self.num_output,)))
        self.reshape(bottom_shapes)

    def _out(self, shape: Shape) -> tuple[int, int, int]:
        _five_axes(self, shape)
        if shape[1] != self.channels:
            raise self.error(f"bottom shape {tuple(shape)} has {shape[1]} channels; set up with {self.channels}")
        out = tuple(_c_div(d + 2 * p - k, s) + 1 for d, k, s, p in zip(shape[2:], self.kernel, self.stride, self.pad))
        if min(out) <= 0:
            raise self.error(f"bottom {tuple(shape)} gives an empty output {out} (kernel {self.kernel}, stride "
                             f"{self.stride}, pad {self.pad})")
        return out  # type: ignore[return-value]

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        return [(s[0], self.num_output) + self._out(s)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        out = self._out(tuple(x.shape))
        w = getattr(self.blobs, "0")
        b = getattr(self.blobs, "1") if self.bias_term else None
        # past the padded end only when the input is shorter than the kernel (C's division rounds up there)
        end = [max(0, (n - 1) * s + k - (d + 2 * p))
               for n, d, k, s, p in zip(out, x.shape[2:], self.kernel, self.stride, self.pad)]
        if any(end):
            x = _pad_end(x, self.pad, [p + e for p, e in zip(self.pad, end)], 0.0)
            return F.conv3d(x, w, b, self.stride)
        return F.conv3d(x, w, b, self.stride, self.pad)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(11)
        L = 'name: "c" type: "Convolution3D" bottom: "x" top: "y" '
        return [
            Example(L + 'convolution_param { num_output: 4 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1 '
                    'filter_group: 2 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" '
                    'std: 0.5 } }', [r.standard_normal((2, 2, 4, 5, 6))]),
            Example(L + 'convolution_param { num_output: 3 kernel_size: 2 kernel_depth: 3 stride: 2 temporal_stride: 2 '
                    'bias_term: false weight_filler { type: "xavier" } }', [r.standard_normal((1, 3, 5, 6, 5))]),
            Example(L + 'convolution_param { num_output: 2 kernel_size: 3 kernel_depth: 2 stride: 2 temporal_stride: 3 '
                    'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } }',
                    [r.standard_normal((2, 1, 1, 2, 4))]),
        ]


# ---------------------------------------------------------------- Pooling3D


def _pooled(d: int, k: int, s: int, p: int) -> int:
    """``static_cast<int>(ceil(static_cast<float>(d + 2 p - k) / s)) + 1``, in float32 as the fork."""
    return int(math.ceil(np.float32(d + 2 * p - k) / np.float32(s))) + 1


def _ave_sizes(shape: Sequence[int], out: Sequence[int], k: Sequence[int], s: Sequence[int],
               p: Sequence[int]) -> np.ndarray:
    """The fork's ``pool_size`` of every AVE window (L, H, W of the output): window extents clipped at the
    padded end (the temporal axis has no padding), multiplied."""
    ext = []
    for d, n, kk, st, pp in zip(shape, out, k, s, p):
        start = np.arange(n, dtype=np.int64) * st - pp
        ext.append(np.minimum(start + kk, d + pp) - start)
    return ext[0][:, None, None] * ext[1][None, :, None] * ext[2][None, None, :]


class _Pool3dMax(torch.autograd.Function):
    """MAX with the fork's backward: every element equal to its window's top takes the window's diff."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, geom: Geometry) -> Tensor:
        k, s, _, out = geom
        end = [max(0, (n - 1) * st + kk - d) for n, st, kk, d in zip(out, s, k, x.shape[2:])]
        xp = _pad_end(x, (0, 0, 0), end, float("-inf"))
        y = F.max_pool3d(xp, k, s).clamp_min(-FLT_MAX)  # the fork starts every window at -FLT_MAX
        ctx.save_for_backward(x, y)
        ctx.geom, ctx.end = geom, end
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None]:
        x, y = ctx.saved_tensors
        k, s, _, out = ctx.geom
        xp = _pad_end(x, (0, 0, 0), ctx.end, float("-inf"))
        gp = torch.zeros_like(xp)
        for sl in _windows(out, k, s, reversed):  # each element's windows in the fork's (pl, ph, pw) order
            gp[sl] += dy * (xp[sl] == y)
        L, H, W = x.shape[2:]
        return gp[..., :L, :H, :W], None


class _Pool3dAve(torch.autograd.Function):
    """AVE as the fork sums and divides (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, geom: Geometry) -> Tensor:
        k, s, p, out = geom
        front = p  # the padding, and past it what the last window needs
        end = [pp + max(0, (n - 1) * st + kk - d - 2 * pp) for n, st, kk, d, pp in zip(out, s, k, x.shape[2:], p)]
        xp = _pad_end(x, front, end, 0.0)
        acc = torch.zeros(x.shape[:2] + tuple(out), dtype=x.dtype, device=x.device)
        for sl in _windows(out, k, s):  # the fork's l, h, w order within a window
            acc += xp[sl]
        size = torch.as_tensor(_ave_sizes(x.shape[2:], out, k, s, p), dtype=x.dtype, device=x.device)
        ctx.save_for_backward(size)
        ctx.geom, ctx.shape, ctx.pads = geom, tuple(x.shape), (tuple(front), tuple(end))
        return acc / size

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor, None]:
        (size,) = ctx.saved_tensors
        k, s, _, out = ctx.geom
        front, end = ctx.pads
        g = dy / size
        padded = ctx.shape[:2] + tuple(d + f + e for d, f, e in zip(ctx.shape[2:], front, end))
        gp = torch.zeros(padded, dtype=dy.dtype, device=dy.device)
        for sl in _windows(out, k, s, reversed):
            gp[sl] += g
        L, H, W = ctx.shape[2:]
        return gp[..., front[0]:front[0] + L, front[1]:front[1] + H, front[2]:front[2] + W], None


@register_layer("Pooling3D")
class Pooling3DLayer(Layer):
    """C3D-v1.0's Pooling3DLayer (see the module docstring)."""

    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        pp = self.param.pooling_param
        _five_axes(self, bottom_shapes[0])
        _refuse(self, pp, "pooling_param", ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w",
                                            "global_pooling", "round_mode", "ceil_mode"))
        self.method = int(pp.pool)
        if self.method not in (MAX, AVE):
            raise self.error("pooling_param.pool: C3D-v1.0's Pooling3D implements MAX and AVE (STOCHASTIC is "
                             "NOT_IMPLEMENTED there)")
        if not pp.HasField("kernel_size") or not pp.HasField("kernel_depth"):
            raise self.error("pooling_param.kernel_size and kernel_depth must be set")
        self.kernel = (int(pp.kernel_depth), int(pp.kernel_size), int(pp.kernel_size))
        self.stride = (int(pp.temporal_stride), int(pp.stride), int(pp.stride))
        self.pad = (0, int(pp.pad), int(pp.pad))
        if min(self.kernel) <= 0 or min(self.stride) <= 0:
            raise self.error(f"kernel (kernel_depth, kernel_size) and stride (temporal_stride, stride) must be "
                             f"positive; received kernel {self.kernel}, stride {self.stride}")
        if self.pad[1] and self.method != AVE:
            raise self.error("Padding implemented only for average pooling. (pooling_param.pad with MAX, as the "
                             "fork's CHECK)")
        self.reshape(bottom_shapes)

    def _out(self, shape: Shape) -> tuple[int, int, int]:
        _five_axes(self, shape)
        out = tuple(_pooled(d, k, s, p) for d, k, s, p in zip(shape[2:], self.kernel, self.stride, self.pad))
        if min(out) <= 0:
            raise self.error(f"bottom {tuple(shape)} gives an empty output {out}")
        return out  # type: ignore[return-value]

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        return [tuple(s[:2]) + self._out(s)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        geom = (self.kernel, self.stride, self.pad, self._out(tuple(x.shape)))
        return (_Pool3dMax if self.method == MAX else _Pool3dAve).apply(x, geom)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(12)
        x = r.standard_normal((1, 2, 5, 5, 7))
        L = 'name: "p" type: "Pooling3D" bottom: "x" top: "y" pooling_param { '
        return [
            Example(L + 'pool: MAX kernel_size: 2 kernel_depth: 2 stride: 2 temporal_stride: 2 }', [x]),
            Example(L + 'pool: MAX kernel_size: 3 kernel_depth: 1 stride: 2 temporal_stride: 1 }', [x]),
            Example(L + 'pool: AVE kernel_size: 3 kernel_depth: 2 stride: 2 temporal_stride: 2 pad: 1 }', [x]),
            Example(L + 'pool: AVE kernel_size: 2 kernel_depth: 3 stride: 1 temporal_stride: 1 }', [x]),
            Example(L + 'pool: MAX kernel_size: 2 kernel_depth: 2 stride: 3 temporal_stride: 3 }',  # an empty window
                    [r.standard_normal((1, 1, 7, 9, 7))]),
        ]
