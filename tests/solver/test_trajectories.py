"""Every real-Caffe solver trajectory in ../shared/fixtures/solver, step by step, and the iteration-10
snapshot we write holding the values of Caffe's own (arrays, iter, current_step, history)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED

FIX = SHARED / "fixtures" / "solver"
CONFIGS = sorted(p.name.split(".")[0] for p in FIX.glob("*.solver.prototxt")) if FIX.exists() else []


def _fixture_dir() -> Path:
    if not FIX.exists():
        pytest.skip(f"reference data not present: {FIX} (../shared beside the repo holds the real-Caffe goldens)")
    return FIX


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def make_solver(cfg: str, monkeypatch, tmp_path: Path, fmt: str = "BINARYPROTO"):
    from neocaffe.io.prototxt import read_solver
    from neocaffe.solver.solver import Solver

    monkeypatch.chdir(_fixture_dir())  # the HDF5 list names solver_data.h5 relative to the folder
    param = read_solver(f"{cfg}.solver.prototxt")
    param.snapshot_prefix = str(tmp_path / cfg)
    param.snapshot_format = getattr(param, fmt)
    solver = Solver(param)
    solver.net.copy_from("init.caffemodel")
    return solver


def test_all_twelve_configurations_present():
    _fixture_dir()
    assert len(CONFIGS) == 12


@pytest.mark.parametrize("cfg", CONFIGS)
def test_trajectory(cfg, monkeypatch, tmp_path):
    solver = make_solver(cfg, monkeypatch, tmp_path)
    t = np.load(FIX / f"{cfg}.trajectory.npz")
    ip = solver.net.layer("innerprod")
    assert rel_err(ip.blobs[0].detach(), t["weight"][0]) == 0
    for k in range(10):
        solver.step(1)
        assert rel_err(ip.blobs[0].detach(), t["weight"][k + 1]) < 1e-5, f"{cfg} weight after step {k + 1}"
        assert rel_err(ip.blobs[1].detach(), t["bias"][k + 1]) < 1e-5, f"{cfg} bias after step {k + 1}"
        loss = float(solver.net.blob_data["loss"].detach())
        assert abs(loss - t["loss"][k]) / np.abs(t["loss"]).max() < 1e-5, f"{cfg} loss at step {k + 1}"
    assert solver.iter == 10


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_snapshot_matches_caffe(cfg, fmt, monkeypatch, tmp_path):
    from neocaffe.io.solverstate import read_solverstate
    from neocaffe.io.weights import load_weights

    solver = make_solver(cfg, monkeypatch, tmp_path, fmt)
    solver.step(10)
    model, state_file = solver.snapshot()
    ext = ".caffemodel.h5" if fmt == "HDF5" else ".caffemodel"
    assert model == str(tmp_path / f"{cfg}_iter_10{ext}")
    assert state_file == model.replace(".caffemodel", ".solverstate")
    theirs = {lw.name: lw for lw in load_weights(FIX / f"{cfg}_iter_10.caffemodel")}
    mine = {lw.name: lw for lw in load_weights(model)}
    assert set(theirs) <= set(mine)
    for name, lw in theirs.items():
        assert len(mine[name].blobs) == len(lw.blobs)
        for a, b in zip(mine[name].blobs, lw.blobs):
            assert a.shape == b.shape and rel_err(a, b) < 1e-5, f"{cfg} {name}"
    ref, got = read_solverstate(FIX / f"{cfg}_iter_10.solverstate"), read_solverstate(state_file)
    assert (got.iter, got.current_step) == (ref.iter, ref.current_step) == (10, ref.current_step)
    assert got.learned_net == model
    assert len(got.history) == len(ref.history)
    # within 1e-5 of the largest history magnitude (a 1-element bias history can be a near-cancelled sum)
    scale = max(float(np.abs(np.asarray(b)).max()) for b in ref.history)
    for a, b in zip(got.history, ref.history):
        assert np.asarray(a).size == np.asarray(b).size
        assert float(np.abs(np.ravel(a) - np.ravel(b)).max()) <= 1e-5 * scale, cfg


def test_restore_caffe_snapshot_continues(monkeypatch, tmp_path):
    """Restoring Caffe's own iteration-10 state gives its weights, iteration, step and history."""
    solver = make_solver("sgd_step_l1", monkeypatch, tmp_path)
    solver.restore("sgd_step_l1_iter_10.solverstate")
    t = np.load(FIX / "sgd_step_l1.trajectory.npz")
    assert (solver.iter, solver.current_step) == (10, 3)
    assert rel_err(solver.net.layer("innerprod").blobs[0].detach(), t["weight"][10]) == 0
