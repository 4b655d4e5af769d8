"""Pooling (MAX, AVE, STOCHASTIC) and SPP with Caffe's geometry and numerics.

Fields read (``pooling_param``): ``pool``, ``kernel_size``/``kernel_h``/``kernel_w``,
``stride``/``stride_h``/``stride_w``, ``pad``/``pad_h``/``pad_w``, ``global_pooling``,
``round_mode`` (upstream; CEIL by default) and ``ceil_mode`` (DenseNet's forks, BVLC pull request #3057:
false is FLOOR; with both set they must agree). ``engine`` is ignored: results are those of Caffe's own
(CAFFE engine) pooling on every device.

Caffe's rules, reproduced exactly:
* output size ``ceil((H + 2*pad - k) / stride) + 1``; only when a pad is nonzero (either axis) the
  last window is dropped if it would start at or beyond ``H + pad``. Without pad a last window may
  start beyond the input (e.g. k=2, s=3, H=9): MAX gives -FLT_MAX with mask -1, AVE gives
  0/pool_size (NaN). Such windows get no gradient (Caffe's backward writes out of bounds there).
* MAX keeps the FIRST maximum in row-major window order (strict ``>``, start value -FLT_MAX) and
  backward adds the top diff to that element; a second top is the argmax mask ``h*W + w`` as a float
  blob, whose own diff Caffe ignores.
* AVE divides by the window clipped to the PADDED extent (``min(start + k, H + pad) - start``).
* STOCHASTIC ignores pad (Caffe refuses it): TRAIN picks the first element whose running sum reaches
  ``u * window sum`` (u uniform), backward routes the diff there; TEST gives
  ``sum(x^2) / (FLT_MIN + sum(x))``. Caffe has it on the GPU only; here it runs everywhere, and the
  TEST backward (undefined in Caffe) is the derivative of that formula.
Deliberate deviation: a NaN input wins a MAX window here (PyTorch), Caffe skips NaNs.
"""
from __future__ import annotations

import functools

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe import rng
from neocaffe.layers.base import TRAIN, Example, Layer, Shape
from neocaffe.layers.fastest import fastest
from neocaffe.layers.pool_kernel import max_pool
from neocaffe.layers.registry import register_layer

MAX, AVE, STOCHASTIC = 0, 1, 2  # PoolingParameter.PoolMethod (and SPPParameter.PoolMethod)
CEIL, FLOOR = 0, 1  # PoolingParameter.RoundMode
FLT_MAX = 3.4028234663852886e38
FLT_MIN = 1.1754943508222875e-38
_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def caffe_pooled_size(size: int, k: int, s: int, p: int, clip: bool, round_mode: int = CEIL) -> int:
    """Caffe's PoolingLayer::Reshape output size on one axis (``clip``: any pad is nonzero)."""
    num = size + 2 * p - k
    n = (-((-num) // s) if round_mode == CEIL else num // s) + 1
    if clip and (n - 1) * s >= size + p:
        n -= 1
    return n


def _torch_pooled_size(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's output size (in ceil mode its clip applies whatever the pad)."""
    n = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (n - 1) * s >= size + p:
        n -= 1
    return n


def _window_sizes(n: int, size: int, k: int, s: int, p: int) -> list[int]:
    """Caffe's AVE divisor factor per output position: ``min(start + k, size + p) - start``."""
    return [min(i * s - p + k, size + p) - (i * s - p) for i in range(n)]


class _IgnoredDiff(torch.autograd.Function):
    """The mask top: a blob in the graph (so it has a diff, as in Caffe) whose diff goes nowhere."""

    @staticmethod
    def forward(ctx, anchor: Tensor, idx: Tensor) -> Tensor:  # noqa: D102
        return idx.to(anchor.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        return None, None


def _pad_to(x: Tensor, out: tuple[int, int], k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], value: float) -> Tensor:
    """Pad (or crop) so that plain windows ``i*s .. i*s+k`` cover Caffe's windows of the unpadded input."""
    H, W = x.shape[-2:]
    need_h, need_w = (out[0] - 1) * s[0] + k[0], (out[1] - 1) * s[1] + k[1]
    return F.pad(x, (p[1], need_w - W - p[1], p[0], need_h - H - p[0]), value=value)


def caffe_pool2d(
    x: Tensor,
    method: int,
    k: tuple[int, int],
    s: tuple[int, int],
    p: tuple[int, int],
    round_mode: int = CEIL,
    train: bool = False,
    need_mask: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Caffe pooling of a 4-D tensor; returns (top, mask or None). Gradients follow Caffe's backward."""
    H, W = x.shape[-2:]
    clip = bool(p[0] or p[1])
    out = (caffe_pooled_size(H, k[0], s[0], p[0], clip, round_mode),
           caffe_pooled_size(W, k[1], s[1], p[1], clip, round_mode))
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"pooling a {H}x{W} input with kernel {k}, stride {s}, pad {p} gives an empty output {out}")
    ceil = round_mode == CEIL
    if method == MAX:
        return _max_pool(x, out, k, s, p, ceil, need_mask)
    if method == AVE:
        return _ave_pool(x, out, k, s, p, ceil), None
    return _stochastic_pool(x, out, k, s, train), None


@functools.lru_cache(maxsize=512)
def _fast_size(H: int, W: int, out: tuple[int, int], k, s, p, ceil: bool) -> tuple[int, int] | None:
    """PyTorch's size when its windows are Caffe's (Caffe's may add trailing empty ones), else None."""
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        return None
    t = (_torch_pooled_size(H, k[0], s[0], p[0], ceil), _torch_pooled_size(W, k[1], s[1], p[1], ceil))
    if t[0] < 1 or t[1] < 1 or t[0] > out[0] or t[1] > out[1]:
        return None
    # the windows PyTorch drops must be the empty ones past the input (no pad: start >= size)
    for i in range(2):
        size = (H, W)[i]
        if any(j * s[i] - p[i] < size for j in range(t[i], out[i])):
            return None
    return t


# Below this many pixels per channel the layout change costs more than the channels-last kernel saves
# (MAX, one core: 1x50x8x8 0.009 ms NCHW vs 0.037 ms through channels-last; 1x20x24x24 0.036 vs 0.027).
_CHANNELS_LAST_MIN_HW = 256


def _kernel_layout(x: Tensor) -> Tensor:
    """On the CPU PyTorch's channels-last pooling kernels are vectorised (over 10x faster than its
    NCHW ones for MAX on large maps); same windows, same first-maximum rule, same flat h*W+w indices."""
    if x.device.type == "cpu" and x.shape[-1] * x.shape[-2] >= _CHANNELS_LAST_MIN_HW:
        return x.contiguous(memory_format=torch.channels_last)
    return x


class _CPUMaxPool(torch.autograd.Function):
    """MAX pooling on the CPU: forward with the channels-last kernel, backward with the NCHW one
    (the fast combination); Caffe's rule either way (first maximum, diff added to it)."""

    @staticmethod
    def forward(ctx, x: Tensor, k, s, p, ceil: bool):  # noqa: D102
        y, idx = F.max_pool2d(_kernel_layout(x), k, s, p, ceil_mode=ceil, return_indices=True)
        y, idx = y.contiguous(), idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.geom = (k, s, p, ceil)
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, gy: Tensor, _gidx: Tensor):  # noqa: D102
        x, idx = ctx.saved_tensors
        k, s, p, ceil = ctx.geom
        gx = torch.ops.aten.max_pool2d_with_indices_backward(gy.contiguous(), x, k, s, p, (1, 1), ceil, idx)
        return gx, None, None, None, None


def _max_pool(x: Tensor, out, k, s, p, ceil: bool, need_mask: bool) -> tuple[Tensor, Tensor | None]:
    H, W = x.shape[-2:]
    t = _fast_size(H, W, out, k, s, p, ceil)
    if t is not None:
        if x.device.type == "cpu" and not need_mask and not (x.requires_grad and torch.is_grad_enabled()):
            # nothing to record: a fresh output, so Caffe's -FLT_MAX floor goes on in place
            y = F.max_pool2d(_kernel_layout(x), k, s, p, ceil_mode=ceil).contiguous()
            if any((out[0] - t[0], out[1] - t[1])):
                y = F.pad(y, (0, out[1] - t[1], 0, out[0] - t[0]), value=-FLT_MAX)
            return y.clamp_min_(-FLT_MAX), None
        elif x.device.type == "cpu" and not torch.compiler.is_compiling():
            # (not inside torch.compile: PyTorch 2.11's Dynamo lost this Function's input gradient)
            y, idx = _CPUMaxPool.apply(x, k, s, p, ceil)
        else:
            y, idx = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
        idx = idx if need_mask else None
        extra = (0, out[1] - t[1], 0, out[0] - t[0])
        if any(extra):  # Caffe's empty trailing windows
            y = F.pad(y, extra, value=-FLT_MAX)
            idx = F.pad(idx, extra, value=-1) if idx is not None else None
    else:
        xp = _pad_to(x, out, k, s, p, -math.inf)
        y, idx = F.max_pool2d(_kernel_layout(xp), k, s, return_indices=True)
        y, idx = y.contiguous(), idx.contiguous()
        Wp = xp.shape[-1]
        idx = (torch.div(idx, Wp, rounding_mode="floor") - p[0]) * W + (idx % Wp - p[1])
    # Caffe starts from -FLT_MAX with a strict '>': windows of -inf, -FLT_MAX or padding only give
    # -FLT_MAX, mask -1 and no diff
    valid = y > -FLT_MAX
    y = torch.where(valid, y, -FLT_MAX)
    if not need_mask:
        return y, None
    idx = torch.where(valid, idx, -1)
    return y, (_IgnoredDiff.apply(y, idx) if y.requires_grad else idx.to(y.dtype))


class _CPUAvePool(torch.autograd.Function):
    """AVE pooling on the CPU in channels-last both ways (PyTorch's faster kernels there); the
    sums, divisors and diff spreading are those of its NCHW kernels (Caffe's)."""

    @staticmethod
    def forward(ctx, x: Tensor, k, s, p, ceil: bool, divisor_override):  # noqa: D102
        y = F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p, ceil, True, divisor_override)
        ctx.geom = (tuple(x.shape), k, s, p, ceil, divisor_override)
        return y.contiguous()

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: D102
        shape, k, s, p, ceil, div = ctx.geom
        like = gy.new_empty(shape).contiguous(memory_format=torch.channels_last)
        g = gy.contiguous(memory_format=torch.channels_last)
        gx = torch.ops.aten.avg_pool2d_backward(g, like, k, s, p, ceil, True, div)
        return gx.contiguous(), None, None, None, None, None


def _avg_pool2d(x: Tensor, k, s, p, ceil: bool, divisor_override=None) -> Tensor:
    out_hw = (x.shape[-2] + 2 * p[0] - k[0]) // s[0] + (x.shape[-1] + 2 * p[1] - k[1]) // s[1]
    # not for global pooling, where NCHW is faster, nor inside torch.compile (which picks its own kernels)
    if x.device.type == "cpu" and out_hw > 0 and not torch.compiler.is_compiling():
        if not (x.requires_grad and torch.is_grad_enabled()):  # nothing to record: the same kernel alone
            return F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p, ceil, True,
                                divisor_override).contiguous()
        return _CPUAvePool.apply(x, k, s, p, ceil, divisor_override)
    return F.avg_pool2d(x, k, s, p, ceil, True, divisor_override)


def _ave_pool(x: Tensor, out, k, s, p, ceil: bool) -> Tensor:
    H, W = x.shape[-2:]
    t = _fast_size(H, W, out, k, s, p, ceil)
    if t is not None:
        y = _avg_pool2d(x, k, s, p, ceil)
        if t == tuple(out):
            return y
        y = F.pad(y, (0, out[1] - t[1], 0, out[0] - t[0]))  # empty windows: 0 / pool_size
        div = torch.ones(out, dtype=y.dtype, device=y.device)
        full = _divisors(out, H, W, k, s, p, y)
        div[t[0]:, :] = full[t[0]:, :]
        div[:, t[1]:] = full[:, t[1]:]
        return y / div
    sums = _avg_pool2d(_pad_to(x, out, k, s, p, 0.0), k, s, (0, 0), False, 1)
    return sums / _divisors(out, H, W, k, s, p, sums)


def _divisors(out, H: int, W: int, k, s, p, like: Tensor) -> Tensor:
    return _divisor_grid(tuple(out), H, W, tuple(k), tuple(s), tuple(p), like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _divisor_grid(out, H: int, W: int, k, s, p, dtype: torch.dtype, device: torch.device) -> Tensor:
    """AVE pooling's per-window divisors; cached per geometry (a tensor built from Python lists on
    every forward would be a blocking host-to-device copy on CUDA)."""
    hs = torch.tensor(_window_sizes(out[0], H, k[0], s[0], p[0]), dtype=dtype, device=device)
    ws = torch.tensor(_window_sizes(out[1], W, k[1], s[1], p[1]), dtype=dtype, device=device)
    return hs[:, None] * ws[None, :]


def _stochastic_pool(x: Tensor, out, k, s, train: bool) -> Tensor:
    N, C = x.shape[:2]
    win = F.unfold(_pad_to(x, out, k, s, (0, 0), 0.0), k, stride=s).reshape(N, C, k[0] * k[1], -1)
    if not train:
        num = (win * win).sum(2)
        return (num / (win.sum(2) + FLT_MIN)).reshape(N, C, *out)
    csum = win.detach().cumsum(2)
    u = torch.rand(csum[:, :, 0].shape, generator=rng.generator(x.device), dtype=x.dtype, device=x.device)
    thres = u * csum[:, :, -1]
    pick = (csum >= thres[:, :, None]).to(torch.uint8).argmax(2, keepdim=True)  # first index reaching it
    return win.gather(2, pick).reshape(N, C, *out)


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
    """Caffe's PoolingLayer (4-D bottoms). Tops: pooled values [, argmax mask (MAX only)]."""

    exact_bottoms = 1
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        pp = self.param.pooling_param
        self.method = int(pp.pool)
        if self.method not in _NAMES:
            raise self.error(f"unknown pooling method {self.method}; known: {_NAMES}")
        if len(self.param.top) > 1 and self.method != MAX:
            raise self.error(f"only MAX pooling has a second (mask) top; {_NAMES[self.method]} takes exactly 1 top")
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
        out = (caffe_pooled_size(shape[2], k[0], self.stride[0], self.pad[0], clip, self.round_mode),
               caffe_pooled_size(shape[3], k[1], self.stride[1], self.pad[1], clip, self.round_mode))
        if min(out) <= 0:
            raise self.error(f"bottom {tuple(shape)} gives an empty output {out}")
        return k, out

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        _, out = self.window(s)
        return [(s[0], s[1]) + out] * len(self.param.top)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:  # type: ignore[override]
        k, _ = self.window(tuple(x.shape))
        need_mask = self.n_tops > 1
        y, mask = caffe_pool2d(x, self.method, k, self.stride, self.pad, self.round_mode,
                               self.phase == TRAIN, need_mask)
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
        """``forward`` through PyTorch's pooling where its windows are Caffe's (``_fast_size``), else None."""
        s, p, ceil = self.stride, self.pad, self.round_mode == CEIL
        if _fast_size(x.shape[-2], x.shape[-1], out, k, s, p, ceil) != out:
            return None
        if self.method == MAX and x.shape[-1] * x.shape[-2] >= _CHANNELS_LAST_MIN_HW:  # as _kernel_layout
            return lambda x: torch.max_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p, 1,
                                              ceil).contiguous().clamp_min_(-FLT_MAX)
        if self.method == MAX:
            return lambda x: torch.max_pool2d(x, k, s, p, 1, ceil).contiguous().clamp_min_(-FLT_MAX)
        if (x.shape[-2] + 2 * p[0] - k[0]) // s[0] + (x.shape[-1] + 2 * p[1] - k[1]) // s[1] > 0:  # as _avg_pool2d
            return lambda x: F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p, ceil, True).contiguous()
        return lambda x: F.avg_pool2d(x, k, s, p, ceil, True)

    @classmethod
    def examples(cls) -> list[Example]:
        import numpy as np

        r = np.random.default_rng(3)
        x = r.standard_normal((2, 2, 7, 8))
        L = 'name: "p" type: "Pooling" bottom: "x" top: "y" '
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
