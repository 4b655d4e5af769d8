"""Layer-by-layer forward/backward timing of a Net (what Caffe's ``caffe time`` measures).

Forward is timed layer by layer (``net.forward(start=i, end=i)``). Backward runs through autograd in
one call; a gradient hook on the tensor each layer produced marks when that layer's backward
begins (its top diff is complete), and the next mark (or the end of the pass) when it ends. The
hooks sit on each layer's *own* output, so layers working in place (``relu1`` on ``conv1``) are
told apart. On CUDA every mark synchronizes the device, as Caffe's CUDA-event timer does; the
synchronizations cost time, so whole-net figures should also be taken end to end (``end_to_end``).
Used by ``caffe time`` (``neocaffe.cli.timing``) and ``benchmarks/bench_layers.py``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import Tensor


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work is done."""
    sync(device)
    return time.perf_counter()


@dataclass
class PassTimes:
    """One timed pass, milliseconds: per layer (net order) and the two whole passes."""

    forward: list[float]
    backward: list[float]
    forward_total: float
    backward_total: float


def timed_pass(
    net: Any,
    top_diffs: Mapping[str, Tensor] | None = None,
    context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
) -> PassTimes:
    """One forward (layer by layer) and one ``net.backward(top_diffs)``, timed per layer.

    ``top_diffs``: diffs for outputs that are no loss (a deploy net has none; Caffe's ``time``
    still runs every layer's Backward). ``context``: entered around the forward (e.g. autocast).
    A layer whose tops need no gradient gets 0 backward time.
    """
    dev = net.device
    n = len(net.layers)
    fwd = [0.0] * n
    produced: list[list[Tensor]] = [[] for _ in range(n)]
    t_start = now(dev)
    with context():
        for i, lp in enumerate(net.plan.layers):
            t0 = now(dev)
            net.forward(start=i, end=i)
            fwd[i] = (now(dev) - t0) * 1e3
            produced[i] = [t for t in (net.recorded(name) for name in lp.tops) if t is not None]
    t_fwd = (now(dev) - t_start) * 1e3
    marks: dict[int, float] = {}
    handles = []
    for i, tops in enumerate(produced):
        for t in tops:
            if t.requires_grad:
                def hook(grad: Tensor, i: int = i) -> None:
                    marks.setdefault(i, now(dev))
                handles.append(t.register_hook(hook))
    t0 = now(dev)
    try:
        net.backward(top_diffs)
        t_end = now(dev)
    finally:
        for h in handles:
            h.remove()
    bwd = [0.0] * n
    order = sorted(marks.items(), key=lambda kv: kv[1])
    for k, (i, t) in enumerate(order):
        nxt = order[k + 1][1] if k + 1 < len(order) else t_end
        bwd[i] = (nxt - t) * 1e3
    return PassTimes(fwd, bwd, t_fwd, (t_end - t0) * 1e3)


def end_to_end(
    net: Any,
    top_diffs: Mapping[str, Tensor] | None = None,
    context: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
) -> tuple[float, float]:
    """One whole ``net.forward()`` and ``net.backward(top_diffs)`` with no per-layer marks:
    (forward ms, backward ms), the device synchronized only at the three ends."""
    dev = net.device
    t0 = now(dev)
    with context():
        net.forward()
    t1 = now(dev)
    net.backward(top_diffs)
    t2 = now(dev)
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def output_diffs(net: Any, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A standard-normal diff for every net output that carries no loss weight (run after a
    forward, so the shapes are the current ones): what a deploy net needs to run backward."""
    out = {}
    for name in net.outputs:
        if net.blob_loss_weights.get(name) or name not in net.blob_data:
            continue
        ref = net.blob_data[name]
        if not ref.is_floating_point():
            continue
        out[name] = torch.randn(ref.shape, generator=generator, dtype=ref.dtype).to(ref.device)
    return out
