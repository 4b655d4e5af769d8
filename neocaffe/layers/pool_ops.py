"""Caffe's pooling as functions on tensors: output sizes, MAX (with its mask), AVE and STOCHASTIC,
used by the Pooling and SPP layers (:mod:`neocaffe.layers.pooling`).

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

import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe import rng

MAX, AVE, STOCHASTIC = 0, 1, 2  # PoolingParameter.PoolMethod (and SPPParameter.PoolMethod)
CEIL, FLOOR = 0, 1  # PoolingParameter.RoundMode
FLT_MAX = 3.4028234663852886e38
FLT_MIN = 1.1754943508222875e-38
METHOD_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def caffe_pooled_size(size: int, k: int, s: int, p: int, clip: bool, round_mode: int = CEIL, extra: int = 0) -> int:
    """Caffe's PoolingLayer::Reshape output size on one axis (``clip``: any pad is nonzero; ``extra``: the
    windows darknet2caffe's Reshape adds before the clip, :func:`darknet2caffe_extra`)."""
    num = size + 2 * p - k
    n = (-((-num) // s) if round_mode == CEIL else num // s) + 1 + extra
    if clip and (n - 1) * s >= size + p:
        n -= 1
        if extra and (n - 1) * s >= size + p:  # the fork's CHECK_LT after its single clip
            raise ValueError(f"darknet2caffe's pooling of size {size} (kernel {k}, stride {s}, pad {p}) leaves its "
                             f"last window at {(n - 1) * s - p}, past the input (Caffe's CHECK_LT fails)")
    return n


def darknet2caffe_extra(kernel_h: int, stride_h: int) -> int:
    """ChenYingpeng/darknet2caffe's pooling_layer.cpp Reshape: 1 more output row AND column when
    ``(kernel_h - stride_h) % 2 == 1`` in C++ (a positive odd difference; the height's pair decides both axes)."""
    d = kernel_h - stride_h
    return 1 if d > 0 and d % 2 == 1 else 0


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
    out: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Caffe pooling of a 4-D tensor; returns (top, mask or None). Gradients follow Caffe's backward.
    ``out``: the output plane where the caller's Reshape is not BVLC's (darknet2caffe's extra windows,
    which BVLC's Forward loops fill: clipped to the input, AVE divided by the window clipped to ``H + pad``)."""
    H, W = x.shape[-2:]
    clip = bool(p[0] or p[1])
    if out is None:
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
def fast_size(H: int, W: int, out: tuple[int, int], k, s, p, ceil: bool) -> tuple[int, int] | None:
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
CHANNELS_LAST_MIN_HW = 256


def _kernel_layout(x: Tensor) -> Tensor:
    """On the CPU PyTorch's channels-last pooling kernels are vectorised (over 10x faster than its
    NCHW ones for MAX on large maps); same windows, same first-maximum rule, same flat h*W+w indices."""
    if x.device.type == "cpu" and x.shape[-1] * x.shape[-2] >= CHANNELS_LAST_MIN_HW:
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
    t = fast_size(H, W, out, k, s, p, ceil)
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
    t = fast_size(H, W, out, k, s, p, ceil)
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
