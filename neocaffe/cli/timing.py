"""``caffe time``: per-layer forward/backward timings in Caffe's words, plus a neon-style summary.

Forward is timed layer by layer (``net.forward(start=i, end=i)``). Backward runs through autograd in
one call; a gradient hook on each layer's tops marks when that layer's backward begins, and the
next mark (or the end of the pass) when it ends. On CUDA every mark synchronizes the device, as
Caffe's CUDA-event timer does.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now(device: torch.device) -> float:
    _sync(device)
    return time.perf_counter()


def _g(x: float) -> str:
    return "%g" % x


def _autocast(net: Any, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(net.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _timed_pass(net: Any, precision: str) -> tuple[list[float], list[float], float, float]:
    """One forward (layer by layer) and backward; per-layer ms lists and the two totals in ms."""
    dev = net.device
    n = len(net.layers)
    fwd = [0.0] * n
    t_start = _now(dev)
    with _autocast(net, precision):
        for i in range(n):
            t0 = _now(dev)
            net.forward(start=i, end=i)
            fwd[i] = (_now(dev) - t0) * 1e3
    t_fwd = (_now(dev) - t_start) * 1e3
    marks: dict[int, float] = {}
    handles = []
    for i, lp in enumerate(net.plan.layers):
        for name in lp.tops:
            t = net.blob_data.get(name)
            if t is not None and t.requires_grad:
                def hook(grad: torch.Tensor, i: int = i) -> None:
                    marks.setdefault(i, _now(dev))
                handles.append(t.register_hook(hook))
    t0 = _now(dev)
    net.backward()
    t_end = _now(dev)
    for h in handles:
        h.remove()
    bwd = [0.0] * n
    order = sorted(marks.items(), key=lambda kv: kv[1])
    for k, (i, t) in enumerate(order):
        nxt = order[k + 1][1] if k + 1 < len(order) else t_end
        bwd[i] = (nxt - t) * 1e3
    return fwd, bwd, t_fwd, (t_end - t0) * 1e3


def benchmark(net: Any, iterations: int, precision: str, log: logging.Logger) -> None:
    """Caffe's ``time`` command output, then fprop/bprop/iteration statistics over 10 runs after 2
    warm-ups (neon's benchmark table)."""
    names = net.layer_names
    log.info("Performing Forward")
    with _autocast(net, precision):
        loss = float(net.forward().detach())
    log.info("Initial loss: %s", _g(loss))
    log.info("Performing Backward")
    net.backward()
    net.clear_param_diffs()
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    fwd_total = [0.0] * len(names)
    bwd_total = [0.0] * len(names)
    forward_time = backward_time = 0.0
    total0 = _now(net.device)
    for j in range(iterations):
        it0 = _now(net.device)
        fwd, bwd, tf, tb = _timed_pass(net, precision)
        net.clear_param_diffs()
        fwd_total = [a + b for a, b in zip(fwd_total, fwd)]
        bwd_total = [a + b for a, b in zip(bwd_total, bwd)]
        forward_time += tf
        backward_time += tb
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, _g((_now(net.device) - it0) * 1e3))
    total = (_now(net.device) - total0) * 1e3
    k = max(iterations, 1)
    log.info("Average time per layer: ")
    for name, f, b in zip(names, fwd_total, bwd_total):
        log.info("%10s\tforward: %s ms.", name, _g(f / k))
        log.info("%10s\tbackward: %s ms.", name, _g(b / k))
    log.info("Average Forward pass: %s ms.", _g(forward_time / k))
    log.info("Average Backward pass: %s ms.", _g(backward_time / k))
    log.info("Average Forward-Backward: %s ms.", _g(total / k))
    log.info("Total Time: %s ms.", _g(total))
    log.info("*** Benchmark ends ***")
    summary(net, precision, log)


def summary(net: Any, precision: str, log: logging.Logger, runs: int = 10, warmup: int = 2) -> dict[str, list[float]]:
    """Whole-net fprop, bprop and iteration times (ms) over ``runs`` runs after ``warmup``; logged as
    neon prints its benchmark table."""
    stats: dict[str, list[float]] = {"fprop": [], "bprop": [], "iteration": []}
    for r in range(warmup + runs):
        t0 = _now(net.device)
        with _autocast(net, precision):
            net.forward()
        t1 = _now(net.device)
        net.backward()
        t2 = _now(net.device)
        net.clear_param_diffs()
        if r >= warmup:
            stats["fprop"].append((t1 - t0) * 1e3)
            stats["bprop"].append((t2 - t1) * 1e3)
            stats["iteration"].append((t2 - t0) * 1e3)
    log.info("neon-style summary over %d runs after %d warm-ups (precision %s, device %s):", runs, warmup,
             precision, net.device)
    log.info("%-12s%14s%14s%14s%14s%8s", "Func", "Mean", "Median", "Min", "Max", "Units")
    for name, xs in stats.items():
        log.info("%-12s%14.4f%14.4f%14.4f%14.4f%8s", name, statistics.fmean(xs), statistics.median(xs),
                 min(xs), max(xs), "msec")
    return stats
