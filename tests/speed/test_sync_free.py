"""The GPU's synchronisation-free iteration, exercised on the CPU: losses read back every N iterations
give the same weights, losses and log lines as reading every iteration (Caffe's trajectories), a
non-finite loss is still caught (and named), and no snapshot follows a bad loss."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

from neocaffe.solver.clip import clip_gradients
from tests.solver.test_trajectories import CONFIGS, _fixture_dir


def _solver(cfg, monkeypatch, tmp_path, **kw):
    from neocaffe.io.prototxt import read_solver
    from neocaffe.solver.solver import Solver

    monkeypatch.chdir(_fixture_dir())
    param = read_solver(f"{cfg}.solver.prototxt")
    param.snapshot_prefix = str(tmp_path / cfg)
    param.display = 3
    param.average_loss = 4
    s = Solver(param, **kw)
    s.net.copy_from("init.caffemodel")
    return s


def _loss_lines(caplog):
    return [r.getMessage() for r in caplog.records if re.match(r"Iteration \d+, loss = ", r.getMessage())]


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c in ("sgd_fixed_l2", "sgd_poly_clip", "sgd_inv_itersize2",
                                                          "adam_fixed", "nesterov_fixed")])
def test_reading_losses_every_n_iterations_changes_nothing(cfg, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="neocaffe")
    every = _solver(cfg, monkeypatch, tmp_path, loss_check_interval=1)
    every.step(10)
    lines_every = _loss_lines(caplog)
    caplog.clear()
    deferred = _solver(cfg, monkeypatch, tmp_path, loss_check_interval=4)
    assert deferred.loss_check_interval == 4
    deferred.step(7)
    deferred.step(3)
    every2 = _solver(cfg, monkeypatch, tmp_path, loss_check_interval=1)
    every2.step(7)
    every2.step(3)
    for a, b in zip(every2.net.parameters(), deferred.net.parameters()):
        assert torch.equal(a.detach(), b.detach()), cfg  # bit for bit
    assert deferred.losses == every2.losses and deferred.smoothed_loss == every2.smoothed_loss
    caplog.clear()
    again = _solver(cfg, monkeypatch, tmp_path, loss_check_interval=4)
    again.step(10)
    assert _loss_lines(caplog) == lines_every
    for a, b in zip(every.net.parameters(), again.net.parameters()):
        assert torch.equal(a.detach(), b.detach())


def test_default_interval_is_one_on_the_cpu(monkeypatch, tmp_path):
    s = _solver("sgd_fixed_l2", monkeypatch, tmp_path)
    assert s.loss_check_interval == 1


def test_non_finite_loss_found_at_read_back_and_no_snapshot_after_it(monkeypatch, tmp_path, caplog):
    from neocaffe.solver.solver import SolverError

    caplog.set_level(logging.INFO, logger="neocaffe")
    with pytest.raises(SolverError, match="loss_check_interval"):
        _solver("sgd_fixed_l2", monkeypatch, tmp_path, loss_check_interval=0)
    s = _solver("sgd_fixed_l2", monkeypatch, tmp_path, loss_check_interval=5)
    s.param.base_lr = 1e6
    s.param.display = 0
    s.param.snapshot = 4
    s.step(40)
    assert s.diverged and s.requested_early_exit
    msg = next(r.getMessage() for r in caplog.records if "not finite" in r.getMessage())
    bad = int(re.match(r"Iteration (\d+), loss = (nan|inf|-inf)", msg).group(1))
    assert bad < s.iter or "stopping before the update" in msg
    if bad < s.iter:
        assert f"seen at iteration {s.iter}" in msg
    snaps = sorted(int(re.search(r"_iter_(\d+)\.caffemodel$", str(p)).group(1)) for p in tmp_path.glob("*.caffemodel"))
    assert all(n <= bad for n in snaps), (snaps, bad)  # every snapshot precedes the first bad loss


def test_clipping_on_the_device_matches_the_host(monkeypatch, tmp_path):
    a = _solver("sgd_poly_clip", monkeypatch, tmp_path, loss_check_interval=1)
    b = _solver("sgd_poly_clip", monkeypatch, tmp_path, loss_check_interval=1)
    a.net.forward(), a.net.backward()
    b.net.forward(), b.net.backward()
    ga = [p.grad for p in a.net.parameters()]
    gb = [p.grad for p in b.net.parameters()]
    assert a.param.clip_gradients > 0
    clip_gradients(ga, a.param.clip_gradients, read_back=True)
    clip_gradients(gb, b.param.clip_gradients, read_back=False)
    for x, y in zip(ga, gb):
        assert torch.equal(x, y)
    assert np.isfinite(float(ga[0].abs().sum()))
