"""Caffe's ``SGDSolver::ClipGradients`` (SolverParameter ``clip_gradients``): one scale of every
gradient when their global L2 norm exceeds the threshold, with Caffe's log line."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from neocaffe.solver.testing import fmt

log = logging.getLogger("neocaffe.solver")
f32 = np.float32


def clip_gradients(grads: Sequence[torch.Tensor], clip_gradients: float, read_back: bool = True) -> None:
    """Scale ``grads`` in place by ``clip / norm`` when their global L2 norm (summed in float32 in
    parameter order) exceeds ``clip_gradients``; a negative threshold (Caffe's default -1) is off.
    ``read_back`` False: all on the device, no synchronisation and no log line."""
    clip = float(f32(clip_gradients))
    if clip < 0 or not grads:
        return
    sumsq = None
    for g in grads:
        d = torch.dot(g.reshape(-1), g.reshape(-1))
        sumsq = d if sumsq is None else sumsq + d
    norm = torch.sqrt(sumsq)
    if read_back:
        n = f32(norm.item())
        if n > clip:
            scale = f32(f32(clip) / n)
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     fmt(n), fmt(clip), fmt(scale))
            torch._foreach_mul_(list(grads), float(scale))
        return
    torch._foreach_mul_(list(grads), torch.where(norm > clip, clip / norm, torch.ones_like(norm)))
