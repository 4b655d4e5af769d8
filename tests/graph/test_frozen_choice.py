"""The frozen mode's choice (graph.frozen): traced through the lean path's kernels, each candidate
(lean path, frozen graph, frozen graph optimized) within 1e-5 of fp32, the choice made once per shape
by a bounded timing and the fixed tie rule of ``pick``."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from neocaffe.graph import frozen as frozen_mod
from neocaffe.graph.frozen import CANDIDATES, FrozenExecutor, pick
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST
from neocaffe.layers.fastest import time_candidates

NET = """name: 'n'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'prelu' type: 'PReLU' bottom: 'conv' top: 'conv' prelu_param { filler { type: 'uniform' min: 0.1 max: 0.5 } } }
layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool' pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: 'conv2' type: 'Convolution' bottom: 'pool' top: 'conv2'
  convolution_param { num_output: 6 kernel_size: 3 bias_filler { type: 'constant' value: 0.1 }
  weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'conv2' top: 'conv2' }
layer { name: 'ip' type: 'InnerProduct' bottom: 'conv2' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
"""


def _nets(candidates=CANDIDATES):
    ref = Net(read_net(NET), TEST)
    net = Net(read_net(NET), TEST)
    net.copy_from(ref.to_weights())
    net.frozen = FrozenExecutor(net, net.lean, candidates)
    return ref, net


def _forward(net: Net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        net.forward({"data": x})
    return net.blob("prob").detach().clone()


def test_pick_keeps_the_earlier_candidate_unless_a_later_one_is_clearly_faster():
    assert pick({"lean": 1.0, "frozen": 0.97, "frozen+optimized": 0.96}) == "lean"  # within TIE: the earlier
    assert pick({"lean": 1.0, "frozen": 0.5, "frozen+optimized": 0.49}) == "frozen"
    assert pick({"lean": 1.0, "frozen": 0.5, "frozen+optimized": 0.2}) == "frozen+optimized"
    assert pick({"lean": 0.3, "frozen": 0.5, "frozen+optimized": 0.4}) == "lean"
    assert pick({"frozen": 2.0, "frozen+optimized": 1.0}) == "frozen+optimized"  # an absent one is skipped
    assert pick({"lean": 1.0, "frozen": 0.9}, tie=0.2) == "lean"
    with pytest.raises(ValueError, match="no candidate"):
        pick({})


@pytest.mark.parametrize("budget_ticks, rounds", [(1000, 7), (10, 2), (5, 1), (0, 1)])
def test_the_timing_is_bounded_by_rounds_and_budget(budget_ticks, rounds):
    """A fake clock that ticks 1 s per reading (5 readings a round of two): the warm-up calls are untimed, every timed round calls
    each candidate once (a block of one: a call outlasts ``block_s``), and no round starts once the budget is spent
    (at least one round)."""
    ticks = itertools.count()
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    best = time_candidates({n: make(n) for n in calls}, warmup=2, max_rounds=7, budget_s=budget_ticks,
                           clock=lambda: float(next(ticks)), block_s=0.5)  # a call takes 1 tick: blocks of 1
    assert calls == {"a": 2 + rounds, "b": 2 + rounds}
    assert set(best) == {"a", "b"} and all(v == 1000.0 for v in best.values())  # one tick per call, in ms


@pytest.mark.parametrize("name", CANDIDATES)
def test_each_candidate_stays_within_1e5_of_fp32(name):
    ref, net = _nets((name,))
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(1, 3, 12, 12, generator=g)
        want, got = _forward(ref, x), _forward(net, x)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    (key, (chosen, best)), = net.frozen.choices.items()
    assert chosen == name and best == {}  # one candidate: nothing timed
    assert (net.frozen.cache[key] is None) == (name == "lean")


def test_the_graph_is_traced_through_the_lean_kernels():
    """PReLU as one prelu (the layer's own forward leaves a comparison, a product and a choice, which
    optimize_for_inference moved in and out of oneDNN per call) and the small convolutions through the
    im2col kernel the lean path picks, not oneDNN."""
    _, net = _nets(("frozen+optimized",))
    _forward(net, torch.randn(1, 3, 12, 12))
    graph = str(next(iter(net.frozen.cache.values())).graph)
    assert "aten::prelu" in graph and "aten::where" not in graph
    assert "mkldnn_convolution" not in graph and "to_mkldnn" not in graph


def test_the_choice_is_made_once_per_shape_and_forgotten_with_the_weights(monkeypatch):
    timed = []
    real = frozen_mod.time_candidates

    def counting(fns, *a, **k):
        timed.append(sorted(fns))
        return real(fns, *a, **k)

    monkeypatch.setattr(frozen_mod, "time_candidates", counting)
    monkeypatch.setattr(frozen_mod, "NATIVE_FAR_AHEAD", math.inf)  # then every candidate timed together
    ref, net = _nets()
    x = torch.randn(1, 3, 12, 12)
    for _ in range(3):
        got = _forward(net, x)
    want = _forward(ref, x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert timed == [["lean", "native"], sorted(CANDIDATES)]  # the native plan against the lean path first
    (chosen, best), = net.frozen.choices.values()
    assert chosen == pick(best) and set(best) == set(CANDIDATES)
    _forward(net, torch.randn(2, 3, 12, 12))  # a new shape: chosen again
    assert len(timed) == 4 and len(net.frozen.choices) == 2
    net.refreeze()
    assert net.frozen.choices == {} and net.frozen.cache == {}


def test_fast_calls_are_timed_in_blocks_and_reported_per_call():
    """A call far shorter than ``block_s`` runs in blocks (as many in a row as fill it, at most
    MAX_BLOCK), and its time is the block's divided by its calls."""
    now = [0.0]
    calls = {"a": 0}

    def fn():
        calls["a"] += 1
        now[0] += 0.001  # 1 ms a call

    best = time_candidates({"a": fn}, warmup=2, max_rounds=3, budget_s=1e9, clock=lambda: now[0], block_s=0.005)
    assert calls["a"] == 2 + 3 * 5  # blocks of 5 calls
    assert abs(best["a"] - 1.0) < 1e-6


def test_only_the_last_shapes_keep_their_choice(monkeypatch):
    """Past MAX_SHAPES the oldest choice (and its graph, a copy of the weights) is forgotten; a shape that
    comes back is chosen again and gives the same numbers."""
    monkeypatch.setattr(frozen_mod, "MAX_SHAPES", 2)
    ref, net = _nets(("lean", "native"))
    for n in (1, 2, 3):
        _forward(net, torch.randn(n, 3, 12, 12))
    batches = lambda: [key[0][0][0] for key in net.frozen.cache]  # noqa: E731 - the first input's batch per key
    assert batches() == [2, 3] and list(net.frozen.choices) == list(net.frozen.cache)
    x = torch.randn(1, 3, 12, 12)
    want, got = _forward(ref, x), _forward(net, x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert batches() == [3, 1]


@pytest.mark.parametrize("far_ahead", [True, False])
def test_a_native_plan_far_ahead_of_the_lean_path_is_not_traced_against(monkeypatch, far_ahead):
    """The native plan and the lean path are timed first; the frozen graphs are traced and timed only
    when the plan is not NATIVE_FAR_AHEAD times as fast (here forced either way)."""
    traced = []
    real = FrozenExecutor._trace
    monkeypatch.setattr(FrozenExecutor, "_trace", lambda self, *a: traced.append(1) or real(self, *a))
    monkeypatch.setattr(frozen_mod, "NATIVE_FAR_AHEAD", 0.0 if far_ahead else math.inf)
    ref, net = _nets()
    x = torch.randn(1, 3, 12, 12)
    want, got = _forward(ref, x), _forward(net, x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    (chosen, best), = net.frozen.choices.values()
    if far_ahead:
        assert traced == [] and chosen == "native" and best == {}
    else:
        assert traced == [1] and set(best) == set(CANDIDATES) and chosen == pick(best)


def test_a_sync_waits_before_every_reading_that_times_a_call():
    """CUDA kernels run after the call returns: with ``sync`` each timed stretch starts and ends after
    a sync, so a candidate is not charged for the one before it, nor credited with unfinished work."""
    log: list[str] = []
    now = [0.0]

    def clock():
        log.append("clock")
        return now[0]

    def fn():
        log.append("call")
        now[0] += 0.001

    time_candidates({"a": fn, "b": fn}, warmup=2, max_rounds=2, budget_s=1e9, clock=clock, block_s=0.001,
                    sync=lambda: log.append("sync"))
    pairs = list(zip(log, log[1:]))
    assert ("call", "clock") not in pairs  # no reading straight after a call: its queued work is waited for
    assert pairs.count(("sync", "clock")) == 2 * (2 + 2 * 2)  # both ends of the 2 warm-up and 4 timed stretches
    log.clear()
    time_candidates({"a": fn}, warmup=1, max_rounds=1, budget_s=1e9, clock=clock, block_s=0.001)
    assert ("call", "clock") in zip(log, log[1:])  # without a sync the reading follows the call
    from types import SimpleNamespace

    on = [SimpleNamespace(device=torch.device("cpu")), SimpleNamespace(device=torch.device("cuda", 0))]
    assert frozen_mod._sync_for(on) is torch.cuda.synchronize and frozen_mod._sync_for(on[:1]) is None


def test_a_candidate_that_fails_when_run_is_dropped_and_the_net_still_runs(monkeypatch, caplog):
    """A backend may trace and freeze a graph and then fail to run it (on CUDA: a cuDNN fusion with no
    valid plan, or TorchScript's fusion compile at the second run); the frozen mode drops it and goes on."""
    real = FrozenExecutor._trace

    def flaky(self, xs, outputs):
        graphs = real(self, xs, outputs)
        good = graphs["frozen"]
        runs = [0]

        def second_run_fails(*a):
            runs[0] += 1
            if runs[0] >= 2:
                raise RuntimeError("no valid execution plans")
            return good(*a)

        graphs["frozen"] = second_run_fails
        return graphs

    monkeypatch.setattr(FrozenExecutor, "_trace", flaky)
    monkeypatch.setattr(frozen_mod, "NATIVE_FAR_AHEAD", math.inf)
    ref, net = _nets(("lean", "frozen", "frozen+optimized"))
    x = torch.randn(1, 3, 12, 12)
    with caplog.at_level("WARNING", logger="neocaffe.graph"):
        for _ in range(3):
            got = _forward(net, x)
    want = _forward(ref, x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    (chosen, best), = net.frozen.choices.values()
    assert chosen in ("lean", "frozen+optimized") and "frozen" not in best
    assert "frozen failed when run (RuntimeError: no valid execution plans); not a candidate" in caplog.text


def test_warm_up_calls_per_candidate_and_their_time_budget():
    """``warmup`` per name (a candidate already run by its probes needs fewer); ``warmup_budget_s`` ends a
    candidate's untimed calls once they have taken that long, and its timed warm-up call still follows."""
    now = [0.0]
    calls = {"slow": 0, "fast": 0, "probed": 0}

    def make(name, secs):
        def fn():
            calls[name] += 1
            now[0] += secs
        return fn

    fns = {"slow": make("slow", 3.0), "fast": make("fast", 0.01), "probed": make("probed", 0.01)}
    time_candidates(fns, {"slow": 5, "fast": 5, "probed": 2}, max_rounds=1, budget_s=1e9,
                    clock=lambda: now[0], block_s=1e-6, warmup_budget_s=1.0)
    # slow: one untimed call passes the budget, then the timed one, then one round; fast: 4 + 1 + 1; probed: 1 + 1 + 1
    assert calls == {"slow": 3, "fast": 6, "probed": 3}


@pytest.mark.parametrize("candidates", [("frozen",), ("lean", "frozen", "frozen+optimized")])
def test_a_shapes_first_forward_takes_its_outputs_from_the_chosen_graphs_last_probe(monkeypatch, candidates):
    """The probe runs (``PROBE_RUNS``) give the first forward its outputs: a forced graph is called that
    many times for it, not once more; timed against others it is called ``WARMUP`` times before the timing
    (its probes included), and later forwards call the chosen one once each."""
    runs: dict[str, int] = {}
    real = FrozenExecutor._trace

    def counted(self, xs, outputs):
        graphs = real(self, xs, outputs)

        def wrap(name, g):
            def run(*a):
                runs[name] = runs.get(name, 0) + 1
                return g(*a)
            return run
        return {n: wrap(n, g) for n, g in graphs.items()}

    monkeypatch.setattr(FrozenExecutor, "_trace", counted)
    timed: list[dict[str, int]] = []
    real_timing = frozen_mod.time_candidates

    def timing(fns, warmup, *a, **k):
        timed.append((dict(runs), warmup))
        return real_timing(fns, warmup, *a, **k)

    monkeypatch.setattr(frozen_mod, "time_candidates", timing)
    ref, net = _nets(candidates)
    x = torch.randn(1, 3, 12, 12)
    want, got = _forward(ref, x), _forward(net, x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    (chosen, best), = net.frozen.choices.values()
    if len(candidates) == 1:
        assert runs == {"frozen": frozen_mod.PROBE_RUNS} and timed == []
    else:
        probed, rest = frozen_mod.PROBE_RUNS, frozen_mod.WARMUP - frozen_mod.PROBE_RUNS
        assert timed == [({"frozen": probed, "frozen+optimized": probed},
                          {"lean": frozen_mod.WARMUP, "frozen": rest, "frozen+optimized": rest})]
    before = dict(runs)
    assert (_forward(net, x) - got).abs().max() == 0
    assert {n: runs[n] - before[n] for n in runs} == {n: int(n == chosen) for n in runs}
