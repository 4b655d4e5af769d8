"""`caffe train` on the real CIFAR-10 quick (V1, 2014) solver resumed from its real iteration-4000
solverstate (on a small LMDB + mean file made here), and snapshots that never leave a truncated file."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, SHARED

CIFAR = SHARED / "realdata" / "cifar10_quick_v1_2014"
SOLVER_FIX = SHARED / "fixtures" / "solver"


def _make_lmdb(path: Path, n: int, seed: int) -> None:
    import lmdb

    from neocaffe.data.datum import array_to_datum

    rng = np.random.default_rng(seed)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(n):
            img = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
            txn.put(f"{i:08d}".encode(), array_to_datum(img, int(i % 10)).SerializeToString())
    env.close()


def _make_mean(path: Path) -> None:
    from neocaffe.proto import caffe_pb2

    blob = caffe_pb2.BlobProto(num=1, channels=3, height=32, width=32)
    blob.data.extend(np.full(3 * 32 * 32, 120.0, np.float32).tolist())
    path.write_bytes(blob.SerializeToString())


@pytest.fixture()
def cifar_workdir(tmp_path):
    if not CIFAR.exists():
        pytest.skip(f"reference data not present: {CIFAR}")
    ex = tmp_path / "examples" / "cifar10"
    ex.mkdir(parents=True)
    _make_lmdb(ex / "cifar10_train_lmdb", 8, 0)
    _make_lmdb(ex / "cifar10_test_lmdb", 8, 1)
    _make_mean(ex / "mean.binaryproto")
    # The real V1 net; only the data sources (LevelDB -> our LMDBs) and batch sizes are changed.
    net = (CIFAR / "cifar10_quick_train_test.prototxt").read_text()
    net = net.replace("cifar10_train_leveldb\"", "cifar10_train_lmdb\"\n    backend: LMDB")
    net = net.replace("cifar10_test_leveldb\"", "cifar10_test_lmdb\"\n    backend: LMDB")
    net = net.replace("batch_size: 100", "batch_size: 4")
    (ex / "cifar10_quick_train_test.prototxt").write_text(net)
    # The real lr1 solver; a short run (2 iterations, 2 test batches) writing into the temp folder.
    solver = (CIFAR / "cifar10_quick_solver_lr1.prototxt").read_text()
    solver = solver.replace("max_iter: 5000", "max_iter: 4002").replace("test_iter: 100", "test_iter: 2")
    solver = solver.replace('snapshot_prefix: "examples/cifar10/cifar10_quick"', 'snapshot_prefix: "examples/cifar10/ours"')
    (ex / "cifar10_quick_solver_lr1.prototxt").write_text(solver)
    for f in ("cifar10_quick_iter_4000.caffemodel", "cifar10_quick_iter_4000.solverstate"):
        shutil.copy(CIFAR / f, ex / f)
    return tmp_path


@pytest.mark.slow
def test_cifar10_quick_v1_resumes_from_real_solverstate(cifar_workdir, monkeypatch, capfd):
    from neocaffe.cli.caffe import main
    from neocaffe.io.solverstate import read_solverstate
    from neocaffe.io.weights import load_weights

    monkeypatch.chdir(cifar_workdir)
    capfd.readouterr()
    code = main(["train", "-solver", "examples/cifar10/cifar10_quick_solver_lr1.prototxt",
                 "-snapshot", "examples/cifar10/cifar10_quick_iter_4000.solverstate"])
    log = capfd.readouterr().err
    assert code == 0, log[-4000:]
    assert "solver_mode is GPU but CUDA is not available" in log or "Using GPUs" in log or "cuda" in log.lower()
    assert "Iteration 4000, Testing net (#0)" in log
    assert re.search(r"Test net output #0: accuracy = [\d.]+", log)
    assert "Iteration 4000, lr = 0.0001" in log
    state = read_solverstate("examples/cifar10/ours_iter_4002.solverstate")
    assert (state.iter, state.learned_net) == (4002, "examples/cifar10/ours_iter_4002.caffemodel")
    assert len(state.history) == 10
    before = {lw.name: lw.blobs for lw in load_weights("examples/cifar10/cifar10_quick_iter_4000.caffemodel")}
    after = {lw.name: lw.blobs for lw in load_weights("examples/cifar10/ours_iter_4002.caffemodel")}
    for name, blobs in before.items():
        for a, b in zip(after[name], blobs):
            assert a.size == b.size and np.isfinite(a).all()
            assert np.abs(a.ravel() - b.ravel()).max() < 0.05 * max(np.abs(b).max(), 1e-3)  # two small steps


def test_cifar10_restore_loads_v1_history_and_weights(cifar_workdir, monkeypatch):
    from neocaffe.io.solverstate import read_solverstate
    from neocaffe.solver.solver import Solver

    monkeypatch.chdir(cifar_workdir)
    s = Solver("examples/cifar10/cifar10_quick_solver_lr1.prototxt")
    s.restore("examples/cifar10/cifar10_quick_iter_4000.solverstate")
    ref = read_solverstate("examples/cifar10/cifar10_quick_iter_4000.solverstate")
    assert s.iter == 4000
    for h, r in zip(s.rule.history, ref.history):
        assert np.array_equal(h.numpy().ravel(), np.asarray(r).ravel())
    # learned_net is found beside the solverstate when the working directory differs
    monkeypatch.chdir(cifar_workdir / "examples")
    s.restore(str(cifar_workdir / "examples/cifar10/cifar10_quick_iter_4000.solverstate"))
    assert s.iter == 4000


# -- atomic snapshots ---------------------------------------------------------------------------
def _solver(tmp_path, monkeypatch, fmt="BINARYPROTO"):
    from neocaffe.io.prototxt import read_solver
    from neocaffe.solver.solver import Solver

    if not SOLVER_FIX.exists():
        pytest.skip(f"reference data not present: {SOLVER_FIX}")
    monkeypatch.chdir(SOLVER_FIX)
    p = read_solver("sgd_fixed_l2.solver.prototxt")
    p.snapshot_prefix = str(tmp_path / "snap")
    p.snapshot_format = getattr(p, fmt)
    return Solver(p)


@pytest.mark.parametrize("fmt", ["BINARYPROTO", "HDF5"])
def test_writer_failing_mid_write_leaves_no_truncated_file(fmt, tmp_path, monkeypatch):
    import neocaffe.io.caffemodel as cm
    import neocaffe.io.solverstate as ss
    from neocaffe.io.weights import load_weights

    s = _solver(tmp_path, monkeypatch, fmt)
    s.step(1)
    good_model, good_state = s.snapshot()  # iteration 1: a complete pair
    s.step(1)
    calls = {"n": 0}

    def boom(*a, **k):
        calls["n"] += 1
        raise KeyboardInterrupt("killed mid-write")

    if fmt == "BINARYPROTO":
        real = cm._layer_chunks

        def flaky(*a, **k):  # the first layer goes out, then the "kill"
            if calls["n"]:
                boom()
            calls["n"] += 1
            return real(*a, **k)

        monkeypatch.setattr(cm, "_layer_chunks", flaky)
    else:
        import h5py

        real_ds = h5py.Group.create_dataset

        def flaky_ds(self, *a, **k):  # the first dataset goes out, then the "kill"
            if calls["n"]:
                boom()
            calls["n"] += 1
            return real_ds(self, *a, **k)

        monkeypatch.setattr(h5py.Group, "create_dataset", flaky_ds)
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    monkeypatch.undo()
    ext = ".caffemodel.h5" if fmt == "HDF5" else ".caffemodel"
    assert not (tmp_path / f"snap_iter_2{ext}").exists()
    assert not (tmp_path / f"snap_iter_2{ext.replace('caffemodel', 'solverstate')}").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(good_model).name, Path(good_state).name,
                                                                 Path(good_state).name + ".resume.pt"])
    assert load_weights(good_model)[1].blobs[0].shape == (1, 300)
    # the weights are written, then the solver state fails: the weights stay whole, no state file
    monkeypatch.chdir(SOLVER_FIX)
    monkeypatch.setattr(ss, "encode_blob", boom)
    monkeypatch.setattr(ss, "_write_string", boom)
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    assert (tmp_path / f"snap_iter_2{ext}").exists()
    assert load_weights(tmp_path / f"snap_iter_2{ext}")[1].blobs[0].shape == (1, 300)
    assert not (tmp_path / f"snap_iter_2{ext.replace('caffemodel', 'solverstate')}").exists()


@pytest.mark.slow
def test_killed_process_during_big_snapshot_leaves_no_truncated_file(tmp_path):
    """SIGKILL a process while it writes a ~64 MB snapshot (slowed down): nothing truncated under the
    final name (a leftover is only ever a hidden temporary)."""
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        import neocaffe.io.files as files
        from neocaffe.io.prototxt import parse_text
        from neocaffe.proto import caffe_pb2
        from neocaffe.solver.solver import Solver
        net = parse_text('''
          name: "big"
          layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 1 dim: 4096 }} }} }}
          layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ num_output: 4096 }} }}
        ''', caffe_pb2.NetParameter())
        p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=1, solver_mode=caffe_pb2.SolverParameter.CPU,
                                      snapshot_prefix={str(tmp_path / "big")!r})
        p.net_param.CopyFrom(net)
        s = Solver(p)
        real_open = open
        class Slow:
            def __init__(self, f): self.f = f
            def write(self, b):
                print("WRITING", flush=True); time.sleep(0.2); return self.f.write(b)
            def __getattr__(self, k): return getattr(self.f, k)
            def __enter__(self): return self
            def __exit__(self, *a): return self.f.__exit__(*a)
        import builtins
        def slow_open(name, mode="r", *a, **k):
            f = real_open(name, mode, *a, **k)
            return Slow(f) if "w" in mode and str(name).endswith(".tmp") else f
        builtins.open = slow_open
        s.snapshot()
        print("DONE", flush=True)
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    errfile = open(tmp_path / ".stderr", "w")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=errfile,
                            env=env, cwd=tmp_path, text=True)
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("WRITING") or not line:
                break
        assert line.startswith("WRITING"), "the writer never started: " + (tmp_path / ".stderr").read_text()[-2000:]
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        errfile.close()
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".") and p.name != "writer.py"]
    assert visible == [], f"files under final names after the kill: {visible}"
