"""Which CPU kernel runs a 2-D convolution in a forward that records nothing.

PyTorch sends most float32 CPU convolutions to oneDNN. For the small, 5x5-kernel convolutions of
LeNet, the CIFAR-10 nets and MTCNN, oneDNN's fixed cost per call is several times the work (LeNet's
conv2 at batch 1: 0.14 ms through oneDNN, 0.06 ms through PyTorch's im2col + GEMM kernel on one
core); for large ones oneDNN wins. So, once per layer and input shape, a forward that no backward
can follow times both kernels on the real input and keeps the faster (the im2col kernel only when
it is clearly faster). The im2col + GEMM kernel is Caffe's own algorithm; the two differ only in
the order of float32 sums (about 1e-7 of the output's scale), never in the geometry.

Used only for ungrouped, undilated 2-D convolutions of CPU float32 tensors; never while a graph is
recorded, traced or compiled (then PyTorch's default runs, or an earlier choice is replayed inside a
TorchScript trace).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Convolutions larger than this many multiply-adds per call always stay on oneDNN (timing them would
# cost more than it can save, and oneDNN wins there in every shape measured).
MAX_TUNED_MACS = 120_000_000
_MARGIN = 0.85  # the im2col kernel must take at most this fraction of oneDNN's time
_ROUNDS = 5

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


def _best_time(fn: Conv, x: Tensor, w: Tensor, b: Tensor | None) -> float:
    best = float("inf")
    for _ in range(_ROUNDS):
        t0 = time.perf_counter()
        fn(x, w, b)
        best = min(best, time.perf_counter() - t0)
    return best


class KernelChoice:
    """Per input shape, the faster of the two kernels for one convolution layer (its owner)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple, bool] = {}

    def conv2d(self, x: Tensor, w: Tensor, b: Tensor | None, stride: tuple[int, ...],
               pad: tuple[int, ...]) -> Tensor:
        """``F.conv2d(x, w, b, stride, pad)`` through the kernel chosen for this shape."""
        if torch.compiler.is_compiling():  # the compiler picks its own kernels (and cannot trace the key)
            return F.conv2d(x, w, b, stride, pad)
        key = (tuple(x.shape), tuple(w.shape), stride, pad, torch.get_num_threads(), x.is_contiguous())
        use_im2col = self._by_key.get(key)
        if use_im2col is None:
            if _recording(x, w, b):
                return F.conv2d(x, w, b, stride, pad)
            use_im2col = self._by_key[key] = self._measure(x, w, b, stride, pad)
        elif use_im2col and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b)):
            use_im2col = False  # a graph is recorded: the default kernel and its usual backward
        return (_im2col_conv if use_im2col else _default_conv)(stride, pad)(x, w, b)

    @staticmethod
    def _measure(x: Tensor, w: Tensor, b: Tensor | None, stride: tuple[int, ...], pad: tuple[int, ...]) -> bool:
        out_hw = [(x.shape[2 + i] + 2 * pad[i] - w.shape[2 + i]) // stride[i] + 1 for i in range(2)]
        macs = x.shape[0] * w.numel() * out_hw[0] * out_hw[1]
        if macs > MAX_TUNED_MACS:
            return False
        default, im2col = _default_conv(stride, pad), _im2col_conv(stride, pad)
        default(x, w, b), im2col(x, w, b)  # warm both (oneDNN builds its primitive on first use)
        t_default = _best_time(default, x, w, b)
        t_im2col = _best_time(im2col, x, w, b)
        return t_im2col <= _MARGIN * t_default
