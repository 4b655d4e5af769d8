"""Which of several interchangeable functions runs fastest here, by timing them against each other.

Used where the candidates give the same numbers (the Pooling layer's C loop and PyTorch's pooling) or
numbers within a stated tolerance (the frozen inference mode's graphs, ``neocaffe.graph.frozen``), so
the choice changes the speed only. Calls alternate between candidates so all see the same machine
load; a fast call is timed in a block of calls in a row, since a sub-millisecond function timed alone,
right after another candidate ran, was 10-30% slower than in the loop it runs in (LeNet's forward).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Hashable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)

#: a timed block lasts about this long (calls in a row), of at most ``MAX_BLOCK`` calls
BLOCK_S = 0.002
MAX_BLOCK = 20


def time_candidates(fns: dict[K, Callable[[], Any]], warmup: int | Mapping[K, int] = 1, max_rounds: int = 3,
                    budget_s: float = 0.05, clock: Callable[[], float] = time.perf_counter,
                    block_s: float = BLOCK_S, sync: Callable[[], Any] | None = None,
                    warmup_budget_s: float = math.inf) -> dict[K, float]:
    """Each function's best time per call in ms: ``warmup`` untimed calls each (one number, or one per
    name; the last one timed, to size the blocks), then rounds of one timed block each, alternating, until
    ``max_rounds`` or ``budget_s`` of rounds (at least one). A candidate's untimed calls stop early once
    they have taken ``warmup_budget_s`` (a call that lasts seconds warms what it runs by itself; the timed
    one still follows). A block is as many calls in a row as last about ``block_s`` (at least one, judged
    by the slowest warm-up call). ``sync``: waits for work a call queued (CUDA kernels run after the call
    returns: ``torch.cuda.synchronize``), before each clock reading."""
    wait = sync or (lambda: None)
    slowest = 0.0
    for name, fn in fns.items():
        n = warmup if isinstance(warmup, int) else warmup[name]
        began = clock() if warmup_budget_s < math.inf else 0.0
        for _ in range(n - 1):
            fn()
            if warmup_budget_s < math.inf:
                wait()
                if clock() - began >= warmup_budget_s:
                    break
        if n > 0:
            wait()
            t0 = clock()
            fn()
            wait()
            slowest = max(slowest, clock() - t0)
    block = max(1, min(MAX_BLOCK, int(block_s / slowest))) if slowest > 0 else 1
    best = {name: math.inf for name in fns}
    start = clock()
    for _ in range(max(1, max_rounds)):
        for name, fn in fns.items():
            wait()
            t0 = clock()
            for _ in range(block):
                fn()
            wait()
            best[name] = min(best[name], (clock() - t0) * 1e3 / block)
        if clock() - start >= budget_s:
            break
    return best


def fastest(kernels: list[Callable[[Any], Any]], x: Any, clock: Callable[[], float] = time.perf_counter
            ) -> Callable[[Any], Any]:
    """The kernel of ``kernels`` (interchangeable) with the shortest best time on ``x``
    (``time_candidates``' defaults); an earlier kernel wins a tie."""
    if len(kernels) == 1:
        return kernels[0]
    best = time_candidates({i: (lambda k=k: k(x)) for i, k in enumerate(kernels)}, clock=clock)
    return kernels[min(best, key=best.__getitem__)]


__all__ = ["time_candidates", "fastest", "BLOCK_S", "MAX_BLOCK"]
