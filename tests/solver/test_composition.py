"""The solver's parts composed with explicit arguments: the Tester without a Solver, the smoothed-loss
window and its read-back, and Solver.state()/load_state() (what snapshot.py goes through)."""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch

from tests.solver.test_solver_config import solver_param


def test_tester_runs_on_explicit_arguments_and_reports_a_stop(caplog):
    from neocaffe.solver.solver import Solver
    from neocaffe.solver.testing import Tester

    s = Solver(solver_param("test_iter: 2 test_interval: 100"))
    seen, requests, snaps = [], iter(["none", "none", "snapshot", "none", "stop", "none"]), []

    class Monitor:
        def on_test(self, it, i, values, seconds):
            seen.append((it, i, sorted(values)))

    tester = Tester(s.param, s.test_nets, rank=0, monitors=[Monitor()], requested=lambda: next(requests),
                    autocast=contextlib.nullcontext, snapshot=lambda: snaps.append(1))
    with caplog.at_level(logging.INFO, logger="neocaffe.solver"):
        assert tester.test_all(s.net, 7) is False  # two batches, nothing requested
        assert tester.test_all(s.net, 8) is True   # a snapshot, then a stop before the second batch
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "Iteration 7, Testing net (#0)" and "Test interrupted." in lines
    assert snaps == [1] and seen == [(7, 0, ["loss"])]
    x = s.test_nets[0].blob_data["loss"]
    assert tester.mean_scores[0] == [pytest.approx(float(x))]  # the same input twice: the mean is one batch's
    assert Tester(s.param, s.test_nets, rank=1, monitors=[], requested=lambda: "stop",
                  autocast=contextlib.nullcontext, snapshot=lambda: None).test_all(s.net, 0) is False


def test_smoothed_loss_reads_back_up_to_the_first_loss_that_is_not_finite():
    from neocaffe.solver.loss_monitor import SmoothedLoss

    w = SmoothedLoss(average_loss=2, iter_size=2)
    w.start(10)
    for it, total in [(10, 2.0), (11, 6.0), (12, float("nan")), (13, 1.0)]:
        w.push(it, torch.tensor(total))
    read, bad = w.read_back()
    assert read == [10, 11, 12, 13] and bad[1] == 12 and np.isnan(bad[0])
    assert w.losses == [1.0, 3.0] and w.value == pytest.approx(2.0) and w.pending == []
    saved = w.state()
    again = SmoothedLoss(2, 2)
    again.load_state(saved)
    again.start(12)  # a restored window continues once
    assert again.losses == [1.0, 3.0] and again.origin == 10
    again.start(20)
    assert again.losses == [] and again.origin == 20


def test_state_round_trip_and_a_history_that_does_not_fit_changes_nothing():
    from neocaffe.solver.snapshot import RestoreError
    from neocaffe.solver.solver import Solver

    a = Solver(solver_param("momentum: 0.9"))
    a.step(2)
    state = a.state()
    assert state.iter == 2 and state.learned_net is None and len(state.history) == 2
    b = Solver(solver_param("momentum: 0.9"))
    before = [h.clone() for h in b.rule.history]
    bad = type(state)(state.iter, None, [state.history[0]], state.current_step)
    with pytest.raises(RestoreError, match="Incorrect length of history blobs"):
        b.load_state(bad)
    assert b.iter == 0 and all(torch.equal(x, y) for x, y in zip(before, b.rule.history))
    b.load_state(state)
    assert b.iter == 2 and all(torch.equal(x, y) for x, y in zip(a.rule.history, b.rule.history))
