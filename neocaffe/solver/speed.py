"""Opt-in speed modes for training and timing; fp32 stays the default and Caffe-exact.

=================  =====================================================================================
mode               what it does
=================  =====================================================================================
``fp32``           default. IEEE float32 everywhere: on CUDA TF32 is switched OFF for matrix products
                   and cuDNN convolutions (``torch.backends.cuda.matmul.allow_tf32 = False``,
                   ``torch.backends.cudnn.allow_tf32 = False``; PyTorch lets cuDNN use TF32 by default),
                   and every Net's CUDA forward and backward keep them off whoever built the Net
                   (``Net.tf32``, :mod:`neocaffe.graph.cuda_math`).
``tf32``           both switched on: TF32 tensor-core products (10-bit mantissa inputs, fp32 accumulate);
                   the solver's nets get ``tf32 = True``.
``bf16``           ``torch.autocast(dtype=bfloat16)`` around forward; weights, gradients, solver history
                   and regularizers stay float32 (fp32 master weights); TF32 stays off.
``channels_last``  4-D weights, their gradients and history, and 4-D input blobs in NHWC memory layout
                   (values unchanged; faster convolutions on tensor cores, mostly with bf16/tf32).
``cudnn_benchmark`` ``torch.backends.cudnn.benchmark = True``: cuDNN times its algorithms once per shape.
``compile``        ``torch.compile`` of the net's forward after its data layers (backward through
                   AOTAutograd); ``reduce-overhead`` adds CUDA graphs. Not Caffe-exact (fused kernels
                   may contract multiply-adds).
``fused``          our Triton kernels on CUDA: ACROSS_CHANNELS LRN in one kernel per direction, and a
                   ReLU in place before an LRN fused into it (``neocaffe.graph.fusion``). float32
                   arithmetic with Caffe's GPU running sum (within float32 rounding of fp32 eager).
                   Not with ``compile`` (Inductor writes its own fused kernels); no effect off CUDA.
=================  =====================================================================================

Only ``fp32`` without ``compile`` reproduces Caffe's numbers; every other mode is opt-in. The modes come
from the ``Solver`` arguments, the ``caffe`` command line (``-precision``, ``-channels_last``,
``-cudnn_benchmark``, ``-compile``, ``-fused``) or, when neither sets them, the environment (``NEOCAFFE_PRECISION``,
``NEOCAFFE_CHANNELS_LAST``, ``NEOCAFFE_CUDNN_BENCHMARK``, ``NEOCAFFE_COMPILE``, ``NEOCAFFE_FUSED``), so pycaffe scripts can
opt in without code changes. The SolverParameter has no such fields and gets none.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from neocaffe.graph.cuda_math import set_tf32_switches

log = logging.getLogger("neocaffe.solver")

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class SpeedModeError(ValueError):
    """An unknown precision or compile mode."""


def _env_bool(name: str) -> bool:
    v = os.environ.get(name, "").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SpeedModeError(f"{name} must be one of 1/0/true/false/yes/no/on/off; received '{v}'")


def _env_compile() -> str:
    v = os.environ.get("NEOCAFFE_COMPILE", "").strip().lower()
    if v in _TRUE:
        return "default"
    return "" if v in _FALSE else v


@dataclass(frozen=True)
class SpeedModes:
    """The opt-in modes of one run. ``compile``: ``""`` (off) or a ``torch.compile`` mode."""

    precision: str = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: str = ""
    fused: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SpeedModeError(f"unknown precision '{self.precision}'; valid: {', '.join(PRECISIONS)}")
        if self.compile not in COMPILE_MODES:
            raise SpeedModeError(f"unknown compile mode '{self.compile}'; valid: "
                                 f"{', '.join(m for m in COMPILE_MODES if m)} (or empty: off)")
        if self.fused and self.compile:
            raise SpeedModeError(f"fused and compile={self.compile} exclude each other: torch.compile writes "
                                 "its own fused kernels; choose one")

    @classmethod
    def resolve(cls, precision: str | None = None, channels_last: bool | None = None,
                cudnn_benchmark: bool | None = None, compile: str | bool | None = None,
                fused: bool | None = None) -> "SpeedModes":
        """Arguments given (not None) win; the rest come from the ``NEOCAFFE_*`` environment."""
        if precision is None or precision == "":
            precision = os.environ.get("NEOCAFFE_PRECISION", "").strip().lower() or "fp32"
        if compile is True:
            compile = "default"
        elif compile is False:
            compile = ""
        return cls(
            precision=precision,
            channels_last=_env_bool("NEOCAFFE_CHANNELS_LAST") if channels_last is None else bool(channels_last),
            cudnn_benchmark=_env_bool("NEOCAFFE_CUDNN_BENCHMARK") if cudnn_benchmark is None else bool(cudnn_benchmark),
            compile=_env_compile() if compile is None else str(compile),
            fused=_env_bool("NEOCAFFE_FUSED") if fused is None else bool(fused),
        )

    @property
    def caffe_exact(self) -> bool:
        return self.precision == "fp32" and not self.compile

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.cudnn_benchmark:
            parts.append("cudnn_benchmark")
        if self.compile:
            parts.append(f"compile={self.compile}")
        if self.fused:
            parts.append("fused")
        return "+".join(parts)


def apply_backend_flags(modes: SpeedModes, device: torch.device | str) -> None:
    """Set the process-wide CUDA switches for ``modes`` (nothing to set on the CPU): TF32 off unless
    ``tf32``, cuDNN autotuning as asked."""
    if torch.device(device).type != "cuda":
        return
    tf32 = modes.precision == "tf32"
    set_tf32_switches(tf32, tf32)
    torch.backends.cudnn.benchmark = modes.cudnn_benchmark


def autocast(modes: SpeedModes | str, device: torch.device | str) -> Any:
    """bf16 autocast for ``bf16``; otherwise a no-op context."""
    precision = modes if isinstance(modes, str) else modes.precision
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_supported(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``torch.compile`` can run here, and why not. Inductor needs Triton on CUDA and a C++
    compiler on the CPU."""
    import shutil

    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            import triton  # noqa: F401 (only whether it imports)
        except ImportError:
            return False, "Triton is not installed"
        return True, ""
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return False, "no C++ compiler on PATH (inductor's CPU backend needs one)"
    return True, ""


def apply_modes(modes: SpeedModes, device: torch.device, net: Any, test_nets: Sequence[Any], rule: Any) -> None:
    """Put a solver's nets (and the update ``rule``'s history, for channels_last) in ``modes``, logging
    what was set; ``compile`` falls back to eager with a warning where torch.compile cannot run."""
    m = modes
    for each in [net, *test_nets]:
        each.tf32 = m.precision == "tf32"  # a Net's CUDA forward and backward run with its own TF32 choice
    if not m.caffe_exact or m.channels_last or m.cudnn_benchmark or m.fused:
        log.info("Speed modes: %s (%s)", m.describe(), "Caffe-exact" if m.caffe_exact else "not Caffe-exact")
    if m.fused:
        pairs = net.set_fused_kernels(True)
        for test_net in test_nets:
            test_net.set_fused_kernels(True)
        log.info("Fused kernels: LRN layers%s", f", ReLU+LRN pairs {', '.join(pairs)}" if pairs else "")
    if m.channels_last:
        for each in [net, *test_nets]:
            each.set_memory_format(torch.channels_last)
        rule.history = [h.contiguous(memory_format=torch.channels_last) if h.dim() == 4 else h
                        for h in rule.history]
    if m.compile:
        ok, why = compile_supported(device)
        if ok:
            net.enable_compile(m.compile)
        else:
            log.warning("compile=%s asked for, but torch.compile cannot run here (%s): running eagerly",
                        m.compile, why)


__all__ = ["SpeedModes", "SpeedModeError", "PRECISIONS", "COMPILE_MODES", "apply_backend_flags", "apply_modes",
           "autocast", "compile_supported"]
