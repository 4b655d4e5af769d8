"""``caffe time``: per-layer forward/backward timings in Caffe's words, plus a neon-style summary.

The per-layer timing itself is ``neocaffe.graph.timing.timed_pass`` (shared with
``benchmarks/bench_layers.py``).
"""
from __future__ import annotations

import contextlib
import logging
import statistics
from typing import Any

import torch

from neocaffe.graph.timing import now, output_diffs, timed_pass


def _g(x: float) -> str:
    return "%g" % x


def _autocast(net: Any, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(net.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _timed_pass(net: Any, precision: str, diffs: dict[str, torch.Tensor] | None) -> tuple[list[float], list[float], float, float]:
    """One forward (layer by layer) and backward; per-layer ms lists and the two totals in ms."""
    p = timed_pass(net, diffs, context=lambda: _autocast(net, precision))
    return p.forward, p.backward, p.forward_total, p.backward_total


def _deploy_diffs(net: Any) -> dict[str, torch.Tensor] | None:
    """Diffs for the outputs of a net with no loss (a deploy net), so that backward runs.

    Caffe's ``time`` calls every layer's Backward whatever the net's loss; on a loss-less net its
    layers then compute parameter diffs but no bottom diffs. Autograd runs nothing without a seed,
    so we seed the outputs with random diffs: every layer's backward runs, bottom diffs included
    (a little more work than Caffe's, never less)."""
    has_loss = any(w for lws in net.loss_weights for w in lws)
    return None if has_loss else output_diffs(net)


def benchmark(net: Any, iterations: int, precision: str, log: logging.Logger) -> None:
    """Caffe's ``time`` command output, then fprop/bprop/iteration statistics over 10 runs after 2
    warm-ups (neon's benchmark table)."""
    names = net.layer_names
    log.info("Performing Forward")
    with _autocast(net, precision):
        loss = float(net.forward().detach())
    log.info("Initial loss: %s", _g(loss))
    diffs = _deploy_diffs(net)
    log.info("Performing Backward")
    net.backward(diffs)
    net.clear_param_diffs()
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    fwd_total = [0.0] * len(names)
    bwd_total = [0.0] * len(names)
    forward_time = backward_time = 0.0
    total0 = now(net.device)
    for j in range(iterations):
        it0 = now(net.device)
        fwd, bwd, tf, tb = _timed_pass(net, precision, diffs)
        net.clear_param_diffs()
        fwd_total = [a + b for a, b in zip(fwd_total, fwd)]
        bwd_total = [a + b for a, b in zip(bwd_total, bwd)]
        forward_time += tf
        backward_time += tb
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, _g((now(net.device) - it0) * 1e3))
    total = (now(net.device) - total0) * 1e3
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
    diffs: dict[str, torch.Tensor] | None = None
    for r in range(warmup + runs):
        t0 = now(net.device)
        with _autocast(net, precision):
            net.forward()
        t1 = now(net.device)
        if r == 0:
            diffs = _deploy_diffs(net)
        net.backward(diffs)
        t2 = now(net.device)
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
