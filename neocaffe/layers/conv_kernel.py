"""Which CPU kernel runs a 2-D convolution in a forward that records nothing.

PyTorch sends some small float32 CPU convolutions to oneDNN, whose fixed cost per call is several
times the work for the 5x5-kernel convolutions of LeNet and the CIFAR-10 nets (one core: LeNet conv1
at batch 1 0.053 ms through oneDNN, 0.011 ms through PyTorch's im2col + GEMM kernel; conv2 0.108 vs
0.045; CIFAR-10 quick conv1 0.087 vs 0.053). From about 3M multiply-adds per call oneDNN is as fast
or faster (CIFAR-10 quick conv2 at 6.5M: 0.135 vs 0.171 ms; ResNet's 3x3 at 116M: 1.50 vs 1.78), and
for most other small shapes PyTorch already picks the im2col kernel itself. So convolutions of at
most ``MAX_IM2COL_MACS`` multiply-adds per call take the im2col + GEMM kernel, Caffe's own algorithm.
A fixed rule, not a timing: the same net gives the same numbers in every run and process. The two
kernels differ only in the order of float32 sums (about 1e-7 of the output's scale).

Used only for ungrouped, undilated 2-D convolutions of CPU float32 tensors; never while a graph is
recorded or compiled (then PyTorch's default runs, or an earlier choice is replayed inside a
TorchScript trace).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# At most this many multiply-adds per call: the im2col + GEMM kernel (see the module docstring).
MAX_IM2COL_MACS = 3_000_000

_PLAIN = (torch.Tensor, torch.nn.Parameter)

Conv = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def eligible(x: Tensor, w: Tensor, group: int, dilation: tuple[int, ...]) -> bool:
    """True for what the choice covers: a 4-D CPU float32 input, group 1, dilation 1."""
    return (x.dim() == 4 and group == 1 and x.device.type == "cpu" and x.dtype == torch.float32
            and w.dtype == torch.float32 and all(d == 1 for d in dilation))


def _recording(*ts: Tensor | None) -> bool:
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return True
    if any(type(t) not in _PLAIN for t in ts if t is not None):  # fake, functional or other subclass tensors
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _im2col_conv(stride: tuple[int, ...], pad: tuple[int, ...]) -> Conv:
    def run(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return torch._C._nn.thnn_conv2d(x, w, tuple(w.shape[2:]), b, stride, pad)
    return run


def _default_conv(stride: tuple[int, ...], pad: tuple[int, ...]) -> Conv:
    def run(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, stride, pad)
    return run


def im2col_wins(x: Tensor, w: Tensor, stride: tuple[int, ...], pad: tuple[int, ...]) -> bool:
    """True where the im2col + GEMM kernel runs (for an ``eligible`` call): at most
    ``MAX_IM2COL_MACS`` multiply-adds."""
    out_hw = [(x.shape[2 + i] + 2 * pad[i] - w.shape[2 + i]) // stride[i] + 1 for i in range(2)]
    return x.shape[0] * w.numel() * out_hw[0] * out_hw[1] <= MAX_IM2COL_MACS


def lean_conv2d(blobs: torch.nn.ParameterList, bias: bool, x: Tensor, stride: tuple[int, ...],
                pad: tuple[int, ...], dilation: tuple[int, ...], group: int) -> Callable[[Tensor], Tensor]:
    """A 2-D convolution of inputs like ``x`` by ``blobs`` (weight, then bias if ``bias``) through the
    kernel ``KernelChoice`` picks when nothing is recorded; it holds the blobs (Parameters: data copied,
    reassigned or shared later is what it reads)."""
    w, b = blobs[0], (blobs[1] if bias else None)
    if eligible(x, w, group, dilation) and im2col_wins(x, w, stride, pad):
        ks, thnn = tuple(w.shape[2:]), torch._C._nn.thnn_conv2d
        return lambda x: thnn(x, w, ks, b, stride, pad)
    return lambda x: F.conv2d(x, w, b, stride, pad, dilation, group)


class KernelChoice:
    """Per input shape, the kernel for one convolution layer (its owner), decided once."""

    def __init__(self) -> None:
        self._by_key: dict[tuple, bool] = {}

    def conv2d(self, x: Tensor, w: Tensor, b: Tensor | None, stride: tuple[int, ...],
               pad: tuple[int, ...]) -> Tensor:
        """``F.conv2d(x, w, b, stride, pad)`` through the kernel chosen for this shape."""
        if torch.compiler.is_compiling():  # the compiler picks its own kernels (and cannot trace the key)
            return F.conv2d(x, w, b, stride, pad)
        key = (tuple(x.shape), tuple(w.shape), stride, pad)
        use_im2col = self._by_key.get(key)
        if use_im2col is None:
            if _recording(x, w, b):
                return F.conv2d(x, w, b, stride, pad)
            use_im2col = self._by_key[key] = im2col_wins(x, w, stride, pad)
        elif use_im2col and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b)):
            use_im2col = False  # a graph is recorded: the default kernel and its usual backward
        return (_im2col_conv if use_im2col else _default_conv)(stride, pad)(x, w, b)
