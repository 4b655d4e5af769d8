"""Caffe's built-tool paths (``./build/tools/caffe``, ``caffe.bin``, ``./build/examples/mnist/
convert_mnist_data.bin``, ...) run ours from a script written for Caffe, with ``GLOG_log_dir``'s files
(neocaffe/cli/build_paths.py, build/caffe_tool.sh)."""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from neocaffe.cli import build_paths
from neocaffe.data.sources import DBReader
from tests.conftest import REPO, shared_path
from tests.tools.test_convert_mnist_data import _idx_arrays, _write_idx

GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ")


def test_every_link_is_in_the_repository_and_names_a_tool():
    script = REPO / "build" / "caffe_tool.sh"
    assert os.access(script, os.X_OK)
    for folder, names in build_paths.LINKS.items():
        for name in names:
            for link in (REPO / "build" / folder / name, REPO / "build" / folder / f"{name}.bin"):
                assert link.is_symlink() and link.resolve() == script.resolve(), link
                module = importlib.import_module(build_paths.tool_module(str(link)))
                assert callable(module.main), link
    listed = {n for names in build_paths.LINKS.values() for n in names}
    assert listed == set(build_paths.TOOLS)
    # nothing else under build/ is tracked: every file there is a link or the script
    for path in (REPO / "build").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert path == script or not _tracked(path), path


def _tracked(path: Path) -> bool:
    run = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=REPO, capture_output=True)
    return run.returncode == 0


def test_unknown_tool_and_missing_path(capsys):
    assert build_paths.main(["build/tools/convert_everything"]) == 2
    err = capsys.readouterr().err
    assert "build/tools/convert_everything: not a Caffe tool neocaffe provides" in err and "caffe, " in err
    assert build_paths.main([]) == 2
    assert build_paths.tool_module("x/build/tools/caffe.bin") == "neocaffe.cli.caffe"


def _run(cmd: list[str] | str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=full,
                         shell=isinstance(cmd, str))
    return run


@pytest.fixture
def caffe_root(tmp_path) -> Path:
    """A Caffe-like root: build/ (ours), examples/mnist with BVLC's LeNet files (a short solver), and
    data/mnist with slices of real MNIST as Caffe's get_mnist.sh leaves them (unzipped)."""
    root = tmp_path / "caffe"
    (root / "data" / "mnist").mkdir(parents=True)
    (root / "build").symlink_to(REPO / "build")
    ex = root / "examples" / "mnist"
    ex.mkdir(parents=True)
    shutil.copy(REPO / "examples" / "mnist" / "lenet_train_test.prototxt", ex)
    solver = (REPO / "examples" / "mnist" / "lenet_solver.prototxt").read_text()
    for old, new in (("test_iter: 100", "test_iter: 2"), ("test_interval: 500", "test_interval: 10"),
                     ("display: 100", "display: 5"), ("max_iter: 10000", "max_iter: 20"),
                     ("snapshot: 5000", "snapshot: 10"), ("solver_mode: GPU", "solver_mode: CPU")):
        assert old in solver
        solver = solver.replace(old, new)
    (ex / "lenet_solver.prototxt").write_text(solver)
    folder = shared_path("realdata", "mnist_idx_pypi")
    for prefix, n in (("train", 640), ("t10k", 200)):
        for kind in ("images", "labels"):
            magic, arr = _idx_arrays(folder / f"{prefix}-{kind}.idx{3 if kind == 'images' else 1}-ubyte.gz")
            _write_idx(root / "data" / "mnist" / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte", magic, arr[:n])
    return root


def test_caffe_mnist_scripts_run_unchanged_by_build_paths(caffe_root):
    """The command lines of BVLC's examples/mnist/create_mnist.sh and train_lenet.sh (then a resume as
    cifar10's train_quick.sh does), as a script run from Caffe's root, with GLOG_log_dir set."""
    script = caffe_root / "run.sh"
    script.write_text(
        "set -e\n"
        "EXAMPLE=examples/mnist\nDATA=data/mnist\nBUILD=build/examples/mnist\nBACKEND=lmdb\n"
        "$BUILD/convert_mnist_data.bin $DATA/train-images-idx3-ubyte \\\n"
        "  $DATA/train-labels-idx1-ubyte $EXAMPLE/mnist_train_${BACKEND} --backend=${BACKEND}\n"
        "$BUILD/convert_mnist_data.bin $DATA/t10k-images-idx3-ubyte \\\n"
        "  $DATA/t10k-labels-idx1-ubyte $EXAMPLE/mnist_test_${BACKEND} --backend=${BACKEND}\n"
        "./build/tools/caffe train --solver=examples/mnist/lenet_solver.prototxt $@\n"
        "TOOLS=./build/tools\n"
        "$TOOLS/caffe.bin train --solver=examples/mnist/lenet_solver.prototxt "
        "--snapshot=examples/mnist/lenet_iter_10.solverstate $@\n")
    logs = caffe_root / "logs"
    logs.mkdir()
    run = _run(["bash", str(script)], caffe_root, GLOG_log_dir=str(logs), PYTHONPATH="")
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    with DBReader(str(caffe_root / "examples" / "mnist" / "mnist_train_lmdb")) as db:
        assert db.count() == 640
    assert (caffe_root / "examples" / "mnist" / "lenet_iter_20.caffemodel").exists()
    # glog's files: one INFO file per process, named after the path it was run by, with the links
    infos = sorted(p.name for p in logs.iterdir() if ".log.INFO." in p.name)
    assert [n.split(".")[0] for n in infos].count("convert_mnist_data") == 2, infos
    assert sum(n.startswith("caffe.bin.") for n in infos) == 1 and sum(n.startswith("caffe.") for n in infos) == 2
    text = (logs / "caffe.bin.INFO").read_text()          # the link: the last caffe.bin run, the resume
    head = text.splitlines()[:3]
    assert head[0].startswith("Log file created at: ") and head[1].startswith("Running on machine: ")
    assert head[2] == "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg"
    body = text.splitlines()[3:]
    assert body and all(GLOG_LINE.match(line) for line in body if line[:1] in "IWEF"), body[:5]
    assert "Resuming from examples/mnist/lenet_iter_10.solverstate" in text and "Optimization Done." in text
    # the same lines went to stderr (FLAGS_alsologtostderr)
    assert "Optimization Done." in run.stderr
    assert (logs / "caffe.INFO").resolve().name.startswith(f"caffe.{os.uname().nodename}.")
    # and Caffe's parse_log reads the file
    parsed = _run(["python3", str(REPO / "tools" / "extra" / "parse_log.py"), str(logs / "caffe.INFO"), str(caffe_root)],
                  caffe_root)
    assert parsed.returncode == 0, parsed.stderr
    train = (caffe_root / "caffe.INFO.train").read_text().splitlines()
    assert train[0].startswith("NumIters") and [float(row.split(",")[0]) for row in train[1:]] == [0, 5, 10, 15]
