"""Host-to-device copies of batch tensors that do not stall the GPU's queue.

A CUDA copy from pageable host memory first waits for the stream's queued work to finish (CUDA's rule
for pageable transfers), so a label or crop-offset tensor copied that way each batch keeps the host
from queueing the next iteration while the GPU still runs this one. ``to_device`` copies CPU tensors
bound for CUDA through pinned memory, asynchronously; PyTorch's pinned-memory cache keeps each buffer
until its copy has run.
"""
from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` on ``device`` (as ``dtype`` when given, converted on the host first)."""
    device = torch.device(device)
    if dtype is not None and t.dtype != dtype and t.device.type == "cpu":
        t = t.to(dtype)
    if t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    elif t.device != device:
        t = t.to(device)
    return t.to(dtype) if dtype is not None and t.dtype != dtype else t


__all__ = ["to_device"]
