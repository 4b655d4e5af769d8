"""``caffe train`` on the fixtures/logs nets (Data layers on real LMDBs): resuming Caffe's own
snapshots continues exactly as Caffe did, a neocaffe run stopped and resumed equals an uninterrupted
one, and Caffe's parse_log.py regexes read our log into the same columns as Caffe's."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED

LOGS = SHARED / "fixtures" / "logs"

# tools/extra/parse_log.py (BVLC Caffe)
regex_iteration = re.compile(r"Iteration (\d+)")
regex_train_output = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
regex_test_output = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
regex_learning_rate = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def parse_log(text: str) -> tuple[dict[int, dict], dict[int, dict]]:
    """parse_log.py's loop: rows keyed by iteration, with LearningRate and every named output."""
    train: dict[int, dict] = {}
    test: dict[int, dict] = {}
    iteration, lr = -1, float("nan")
    for line in text.splitlines():
        m = regex_iteration.search(line)
        if m:
            iteration = int(m.group(1))
        if iteration == -1:
            continue
        m = regex_learning_rate.search(line)
        if m:
            lr = float(m.group(1))
        for regex, rows in ((regex_train_output, train), (regex_test_output, test)):
            m = regex.search(line)
            if m:
                rows.setdefault(iteration, {"NumIters": iteration, "LearningRate": lr})[m.group(2)] = float(m.group(3))
    for rows in (train, test):  # parse_log.py's fix_initial_nan_learning_rate
        first = next((r["LearningRate"] for _, r in sorted(rows.items()) if r["LearningRate"] == r["LearningRate"]), None)
        for r in rows.values():
            if r["LearningRate"] != r["LearningRate"]:
                r["LearningRate"] = first
    return train, test


def require_logs() -> Path:
    if not LOGS.exists():
        pytest.skip(f"reference data not present: {LOGS} (../shared beside the repo holds the real-Caffe logs)")
    from neocaffe.layers.registry import layer_types

    missing = {"Data", "Convolution", "Pooling", "SoftmaxWithLoss", "Accuracy"} - set(layer_types())
    if missing:
        pytest.skip(f"layer types not available yet: {sorted(missing)}")
    return LOGS


def make_workdir(dst: Path) -> Path:
    src = require_logs()
    for name in ("net.prototxt", "solver_binary.prototxt", "solver_hdf5.prototxt", "solver_binary_resume.prototxt",
                 "solver_hdf5_resume.prototxt"):
        shutil.copy(src / name, dst / name)
    for d in ("lmdb_train", "lmdb_test", "snap_binary", "snap_hdf5"):
        shutil.copytree(src / d, dst / d)
        for p in (dst / d).iterdir():
            p.chmod(0o644)
    for d in ("resume_binary", "resume_hdf5", "ours_binary", "ours_hdf5"):
        (dst / d).mkdir(exist_ok=True)
    return dst


def run_caffe(argv: list[str], capfd) -> tuple[int, str]:
    from neocaffe.cli.caffe import main

    capfd.readouterr()
    code = main(argv)
    return code, capfd.readouterr().err


def weights_of(path: Path | str) -> dict[str, np.ndarray]:
    from neocaffe.io.weights import load_weights

    return {f"{lw.name}/{i}": b for lw in load_weights(path) for i, b in enumerate(lw.blobs)}


def assert_weights_close(mine: dict[str, np.ndarray], ref, tol: float = 1e-5) -> None:
    assert set(ref) <= set(mine)
    for k in ref:
        err = np.abs(mine[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-12)
        assert err < tol, f"{k}: relative error {err:.3g}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("logs"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt,state", [("binary", "snap_binary/lognet_iter_20.solverstate"),
                                       ("hdf5", "snap_hdf5/lognet_iter_20.solverstate.h5")])
def test_resume_caffe_snapshot_reproduces_caffe(fmt, state, workdir, monkeypatch, capfd):
    monkeypatch.chdir(workdir)
    code, log = run_caffe(["train", f"--solver=solver_{fmt}_resume.prototxt", f"--snapshot={state}"], capfd)
    assert code == 0, log[-3000:]
    ext = ".caffemodel.h5" if fmt == "hdf5" else ".caffemodel"
    final = workdir / f"resume_{fmt}" / f"lognet_iter_30{ext}"
    ref = np.load(LOGS / "weights_npz" / f"resume_{fmt}__lognet_iter_30{ext}.npz")
    assert_weights_close(weights_of(final), ref)
    assert (workdir / f"resume_{fmt}" / f"lognet_iter_30{ext.replace('caffemodel', 'solverstate')}").exists()
    summary = json.loads((LOGS / "summary.json").read_text())["runs"][f"resume_{fmt}"]
    train, test = parse_log(log)
    losses = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"Iteration (\d+), loss = ([\d.eE+-]+)", log)}
    assert sorted(losses) == sorted(int(k) for k in summary["train_loss"])
    for it, v in summary["train_loss"].items():
        assert losses[int(it)] == pytest.approx(v, rel=1e-4), f"train loss at {it}"
    assert sorted(test) == sorted(int(k) for k in summary["test"])
    for it, outs in summary["test"].items():
        for name, v in outs.items():
            assert test[int(it)][name] == pytest.approx(v, rel=1e-4, abs=1e-6), f"test {name} at {it}"
    for it, v in summary["lr"].items():
        assert train[int(it)]["LearningRate"] == pytest.approx(v)
    assert "Resuming from " + state in log and "Optimization Done." in log


@pytest.fixture(scope="module")
def uninterrupted(workdir, tmp_path_factory):
    """One full neocaffe `caffe train` of solver_binary.prototxt (seeded; snapshots at 20 and 30)."""
    import io
    import os

    from neocaffe.cli.caffe import main

    here = os.getcwd()
    stream = io.StringIO()
    os.chdir(workdir)
    try:
        import sys

        old = sys.stderr
        sys.stderr = stream
        try:
            code = main(["train", "-solver", "solver_binary.prototxt"])
        finally:
            sys.stderr = old
    finally:
        os.chdir(here)
    return code, stream.getvalue()


@pytest.mark.slow
def test_log_parses_into_caffes_columns(uninterrupted):
    code, log = uninterrupted
    assert code == 0, log[-3000:]
    ours_train, ours_test = parse_log(log)
    theirs_train, theirs_test = parse_log((LOGS / "train_binary.log").read_text())
    assert sorted(ours_train) == sorted(theirs_train) == [0, 5, 10, 15, 20, 25]
    assert sorted(ours_test) == sorted(theirs_test) == [0, 10, 20, 30]
    for it in ours_train:
        assert set(ours_train[it]) == set(theirs_train[it])
        assert ours_train[it]["LearningRate"] == theirs_train[it]["LearningRate"]
    for it in ours_test:
        assert set(ours_test[it]) == set(theirs_test[it])
    # glog prefix as Caffe's parse_log/extract_seconds read it
    line = next(l for l in log.splitlines() if "Iteration 5, loss" in l)
    assert re.match(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.py:\d+\] Iteration 5, loss = ", line)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_stopped_and_resumed_equals_uninterrupted(fmt, uninterrupted, workdir, monkeypatch):
    """Stop at iteration 14 (a SIGINT-style request), snapshot_after_train writes iter_14, a fresh
    solver resumes from it: the final weights equal the uninterrupted run's."""
    from neocaffe.io.prototxt import read_solver
    from neocaffe.solver.solver import Solver

    code, _ = uninterrupted
    assert code == 0
    monkeypatch.chdir(workdir)
    param = read_solver("solver_binary.prototxt")
    tag = {"BINARYPROTO": "binary", "HDF5": "hdf5"}[fmt]
    param.snapshot_prefix = f"ours_{tag}/lognet"
    param.snapshot_format = getattr(param, fmt)
    s = Solver(param, action_request=lambda: "stop" if s.iter == 14 else "none")
    assert s.solve() is False and s.iter == 14 and not s.diverged
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    state = f"ours_{tag}/lognet_iter_14{ext}"
    assert Path(state).exists()
    s2 = Solver(param)
    assert s2.solve(state) is True and s2.iter == 30
    final = f"ours_{tag}/lognet_iter_30" + (".caffemodel.h5" if fmt == "HDF5" else ".caffemodel")
    assert_weights_close(weights_of(final), weights_of("snap_binary/lognet_iter_30.caffemodel"), tol=1e-6)
