"""Fused Triton kernels for ACROSS_CHANNELS LRN, optionally with the in-place ReLU before it.

Eager PyTorch spends about eight passes over memory on one LRN (square, four shifted window adds,
scale, pow, product) and as many on its backward; AlexNet's norm1 reads and writes 300 MB per pass at
batch 256. Here each direction is one kernel: a program takes a block of pixels of one image and
walks the channels keeping the window sum in registers (Caffe's own GPU algorithm, ``LRNFillScale``:
add the head channel's square, drop the tail's), so every element is read about three times from
cache and written once.

``relu=True`` fuses Caffe's ``relu1 (in place on conv1) -> norm1 (bottom conv1)`` pair: the forward
reads the convolution output once and writes both relu(x) (the ``conv1`` blob as Caffe shows it) and
the LRN top; the backward writes the convolution's diff directly, (LRN backward + any other diff of
the ReLU blob) times the ReLU mask, instead of two passes.

Numerics: float32 arithmetic throughout (bf16 inputs are widened on load, outputs stored in the input's
dtype); the window sum is Caffe's GPU running sum, so it rounds like Caffe's CUDA kernels rather than
like our eager code (both within float32 rounding of the exact value). ``scale^-beta`` uses libdevice's
``powf`` on the GPU; under ``TRITON_INTERPRET=1`` (tests on a CPU) it is ``exp2(-beta * log2(scale))``.

Fields (from ``lrn_param``, already converted by ``LRNLayer``): local_size, alpha/local_size, beta, k and
Caffe's ``2*alpha*beta/local_size``.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

try:  # Triton ships with PyTorch's CUDA wheels; the CPU wheel has none
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]


def interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def available(x: Tensor) -> tuple[bool, str]:
    """Whether the fused kernels can run on ``x``'s device, and why not."""
    if triton is None:
        return False, "Triton is not installed"
    if x.dim() != 4:
        return False, f"LRN input must be 4-D; received {tuple(x.shape)}"
    if x.is_cuda or interpreting():
        return True, ""
    return False, "the fused LRN kernels run on CUDA (or under TRITON_INTERPRET=1)"


def _pixel_strides(x: Tensor) -> tuple[Tensor, int, int, int]:
    """(tensor, stride of n, stride of c, stride of one pixel) for dense NCHW or NHWC storage; anything
    else (a channel slice's view, say) is copied to NCHW. A pixel index ``h*W + w`` then addresses both
    layouts with one stride, and ``empty_like`` of the tensor returned has the same strides: the backward
    kernel reads the saved input, the output and the gradients with one set of strides."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        return x, c * h * w, h * w, 1
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, h * w * c, 1, c
    return x.contiguous(), c * h * w, h * w, 1


if triton is not None:

    @triton.jit
    def _pow_neg(s, beta, LIBDEVICE: tl.constexpr):
        if LIBDEVICE:
            return libdevice.pow(s, -beta)
        else:
            return tl.exp2(-beta * tl.log2(s))

    @triton.jit
    def _lrn_fwd_kernel(x_ptr, r_ptr, y_ptr, s_ptr, C, P, sN, sC, sP, oN, oC, oP,
                        alpha_over_size, beta, k,
                        HALF: tl.constexpr, RELU: tl.constexpr, LIBDEVICE: tl.constexpr, BLOCK: tl.constexpr):
        n = tl.program_id(1)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = p < P
        src = x_ptr + n * sN + p * sP
        dst = n * oN + p * oP
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for c in range(0, HALF):  # the window of channel 0 reaches channels 0..HALF
            v = tl.load(src + c * sC, mask=m & ((p * 0 + c) < C), other=0.0).to(tl.float32)
            if RELU:
                v = tl.maximum(v, 0.0)
            acc += v * v
        for c in range(0, C):
            head = c + HALF
            v = tl.load(src + head * sC, mask=m & ((p * 0 + head) < C), other=0.0).to(tl.float32)
            if RELU:
                v = tl.maximum(v, 0.0)
            acc += v * v
            tail = c - HALF - 1
            u = tl.load(src + tail * sC, mask=m & ((p * 0 + tail) >= 0), other=0.0).to(tl.float32)
            if RELU:
                u = tl.maximum(u, 0.0)
            acc -= u * u
            s = k + alpha_over_size * acc
            xc = tl.load(src + c * sC, mask=m, other=0.0).to(tl.float32)
            if RELU:
                xc = tl.maximum(xc, 0.0)
                tl.store(r_ptr + dst + c * oC, xc.to(r_ptr.dtype.element_ty), mask=m)
            tl.store(s_ptr + dst + c * oC, s, mask=m)
            tl.store(y_ptr + dst + c * oC, (xc * _pow_neg(s, beta, LIBDEVICE)).to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _lrn_bwd_kernel(x_ptr, y_ptr, s_ptr, dy_ptr, dr_ptr, dx_ptr, C, P, oN, oC, oP,
                        beta, cache_ratio,
                        HALF: tl.constexpr, RELU: tl.constexpr, EXTRA: tl.constexpr, LIBDEVICE: tl.constexpr,
                        BLOCK: tl.constexpr):
        # x: the LRN bottom (relu output when RELU), y: its top, s: scale, dy: top diff,
        # dr: another diff of the ReLU blob (EXTRA), dx: the diff written (below the ReLU when RELU)
        n = tl.program_id(1)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = p < P
        base = n * oN + p * oP
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for c in range(0, HALF):
            o = base + c * oC
            mm = m & ((p * 0 + c) < C)
            acc += (tl.load(dy_ptr + o, mask=mm, other=0.0).to(tl.float32)
                    * tl.load(y_ptr + o, mask=mm, other=0.0).to(tl.float32)
                    / tl.load(s_ptr + o, mask=mm, other=1.0))
        for c in range(0, C):
            head = c + HALF
            oh = base + head * oC
            mh = m & ((p * 0 + head) < C)
            acc += (tl.load(dy_ptr + oh, mask=mh, other=0.0).to(tl.float32)
                    * tl.load(y_ptr + oh, mask=mh, other=0.0).to(tl.float32)
                    / tl.load(s_ptr + oh, mask=mh, other=1.0))
            tail = c - HALF - 1
            ot = base + tail * oC
            mt = m & ((p * 0 + tail) >= 0)
            acc -= (tl.load(dy_ptr + ot, mask=mt, other=0.0).to(tl.float32)
                    * tl.load(y_ptr + ot, mask=mt, other=0.0).to(tl.float32)
                    / tl.load(s_ptr + ot, mask=mt, other=1.0))
            o = base + c * oC
            s = tl.load(s_ptr + o, mask=m, other=1.0)
            xc = tl.load(x_ptr + o, mask=m, other=0.0).to(tl.float32)
            g = tl.load(dy_ptr + o, mask=m, other=0.0).to(tl.float32) * _pow_neg(s, beta, LIBDEVICE) \
                - cache_ratio * xc * acc
            if EXTRA:
                g += tl.load(dr_ptr + o, mask=m, other=0.0).to(tl.float32)
            if RELU:
                g = tl.where(xc > 0.0, g, 0.0)
            tl.store(dx_ptr + o, g.to(dx_ptr.dtype.element_ty), mask=m)


_BLOCK = 128


def _launch_grid(n: int, p: int) -> tuple[int, int]:
    return (triton.cdiv(p, _BLOCK), n)


def _layout_of(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` dense in ``ref``'s layout (NHWC if ``ref`` is channels-last only, else NCHW)."""
    if ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


class FusedLRN(torch.autograd.Function):
    """``(x) -> y`` (LRN) or ``(x) -> (relu(x), y)`` with one Triton kernel per direction."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, alpha_over_size: float, beta: float, k: float,
                cache_ratio: float, relu: bool, top_ref: Any) -> Any:  # noqa: D102
        n, c, h, w = x.shape
        xs, sn, sc, sp = _pixel_strides(x)
        out = torch.empty_like(xs)  # same layout as the (possibly NHWC) input
        _, on, oc, op = _pixel_strides(out)
        r = torch.empty_like(out) if relu else out
        s = torch.empty_like(out, dtype=torch.float32)
        _lrn_fwd_kernel[_launch_grid(n, h * w)](
            xs, r, out, s, c, h * w, sn, sc, sp, on, oc, op, alpha_over_size, beta, k,
            HALF=(size - 1) // 2, RELU=relu, LIBDEVICE=not interpreting(), BLOCK=_BLOCK)
        ctx.save_for_backward(r if relu else xs, out, s)
        ctx.cfg = (size, beta, cache_ratio, relu, top_ref)
        ctx.set_materialize_grads(False)  # no zero tensor for a ReLU blob nobody else reads
        return (r, out) if relu else out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:  # noqa: D102
        x, y, s = ctx.saved_tensors
        size, beta, cache_ratio, relu, top_ref = ctx.cfg
        dr, dy = (grads if relu else (None, grads[0]))
        if dy is None and dr is None:
            return (None,) * 8
        if top_ref is not None:
            y = top_ref.get(y)
        n, c, h, w = x.shape
        dy = _layout_of(dy, x) if dy is not None else torch.zeros_like(x)
        y = _layout_of(y, x)
        dr = _layout_of(dr, x) if dr is not None else None
        dx = torch.empty_like(x)
        _, on, oc, op = _pixel_strides(dx)
        _lrn_bwd_kernel[_launch_grid(n, h * w)](
            x, y, s, dy, dr if dr is not None else dy, dx, c, h * w, on, oc, op, beta, cache_ratio,
            HALF=(size - 1) // 2, RELU=relu, EXTRA=dr is not None, LIBDEVICE=not interpreting(), BLOCK=_BLOCK)
        return dx, None, None, None, None, None, None, None


def lrn(x: Tensor, size: int, alpha_over_size: float, beta: float, k: float, cache_ratio: float,
        top_ref: Any = None) -> Tensor:
    """Caffe's ACROSS_CHANNELS LRN in one kernel per direction."""
    return FusedLRN.apply(x, size, alpha_over_size, beta, k, cache_ratio, False, top_ref)


def relu_lrn(x: Tensor, size: int, alpha_over_size: float, beta: float, k: float, cache_ratio: float,
             top_ref: Any = None) -> tuple[Tensor, Tensor]:
    """(relu(x), LRN(relu(x))): a ReLU in place on ``x`` followed by an LRN reading it."""
    return FusedLRN.apply(x, size, alpha_over_size, beta, k, cache_ratio, True, top_ref)
