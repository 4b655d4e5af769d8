"""What float32 products a Net computes with on CUDA: IEEE float32, as Caffe, unless it opted into TF32.

PyTorch lets cuDNN convolutions use TF32 tensor cores by default (``torch.backends.cudnn.allow_tf32``
is True), which rounds their inputs to a 10-bit mantissa: about 1e-3 relative error, where Caffe's GPU
code computes in IEEE float32. A Net therefore runs each CUDA forward and backward inside
``with cuda_math(net):``, which switches TF32 for matrix products and cuDNN convolutions to the Net's
``tf32`` (False unless a ``tf32`` speed mode set it, :mod:`neocaffe.solver.speed`) and puts the
process switches back as they were on the way out, so code outside the Net keeps its own choice.
On the CPU it does nothing.

The switches are process-wide: two threads running Nets of different ``tf32`` at once on CUDA would
see each other's choice. Where the process mixed PyTorch's legacy and new TF32 settings so that the
legacy switches cannot be read, the Net leaves them alone and says so once.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from neocaffe.graph.net import Net

log = logging.getLogger("neocaffe.graph")
_warned: list[bool] = []  # the one warning about unreadable switches has been given


def tf32_switches() -> tuple[bool, bool] | None:
    """(matmul, cuDNN) TF32 switches as they are now, or None where PyTorch cannot report them."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError as e:  # the legacy and the new (fp32_precision) settings disagree
        if not _warned:
            _warned.append(True)
            log.warning("TF32 switches unreadable (%s): CUDA nets run with the process's own TF32 settings, "
                        "not Caffe's float32", str(e).splitlines()[0][:160])
        return None


def set_tf32_switches(matmul: bool, cudnn: bool) -> None:
    """Set both process switches (PyTorch's legacy setters keep cuDNN's conv and RNN settings as one)."""
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


class cuda_math:
    """``with cuda_math(net):`` the Net's TF32 choice while inside (see the module docstring); a class,
    not a generator: it wraps every forward."""

    __slots__ = ("want", "saved")

    def __init__(self, net: "Net") -> None:
        self.want: bool | None = net.tf32 if net.device.type == "cuda" else None
        self.saved: tuple[bool, bool] | None = None

    def __enter__(self) -> None:
        if self.want is None:
            return
        now = tf32_switches()
        if now is not None and now != (self.want, self.want):
            self.saved = now
            set_tf32_switches(self.want, self.want)

    def __exit__(self, *exc: Any) -> None:
        if self.saved is not None:
            set_tf32_switches(*self.saved)
            self.saved = None


__all__ = ["cuda_math", "set_tf32_switches", "tf32_switches"]
