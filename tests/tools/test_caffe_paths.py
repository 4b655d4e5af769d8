"""Caffe's script paths from the repository root: ``python tools/extra/parse_log.py``,
``tools/extra/extract_seconds.py``, ``tools/extra/plot_training_log.py`` and ``python/draw_net.py`` run
ours with Caffe's arguments and give Caffe's outputs (on real Caffe logs from ../shared)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from neocaffe.tools.parse_log import main as parse_log_main
from tests.conftest import REPO, shared_path
from tests.tools.test_parse_log import _caffe_csv, _caffe_datetime, caffe_parse_log


def _run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                         timeout=120, cwd=cwd)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


@pytest.fixture
def classic_log(tmp_path) -> Path:
    """The real Caffe log with glog's classic I1121 prefix (its glog 0.6 wrote I20261121, which
    Caffe's own scripts cannot read)."""
    real = shared_path("fixtures", "logs", "train_binary.log")
    log = tmp_path / "train_binary.log"
    log.write_text(re.sub(r"(?m)^([IWEF])\d{4}(\d{4} )", r"\1\2", real.read_text()))
    return log


def test_tools_extra_parse_log_equals_parse_log(tmp_path, classic_log):
    real = shared_path("fixtures", "logs", "train_binary.log")
    for log in (real, classic_log):
        out, ours = tmp_path / f"script_{log.parent.name}", tmp_path / f"ours_{log.parent.name}"
        out.mkdir()
        ours.mkdir()
        _run("tools/extra/parse_log.py", str(log), str(out))
        assert parse_log_main([str(log), str(ours)]) == 0
        for suffix in ("train", "test"):
            got = (out / f"{log.name}.{suffix}").read_bytes()
            assert got == (ours / f"{log.name}.{suffix}").read_bytes()
            assert len(got.splitlines()) > 3
    # and what Caffe's own parse_log.py writes for the log it can read
    train, test = caffe_parse_log(str(classic_log))
    assert (out / "train_binary.log.train").read_bytes() == _caffe_csv(train, tmp_path / "c.train")
    assert (out / "train_binary.log.test").read_bytes() == _caffe_csv(test, tmp_path / "c.test")
    # Caffe's --delimiter and --verbose
    run = _run("tools/extra/parse_log.py", "--delimiter", " ", "--verbose", str(classic_log), str(tmp_path))
    assert f"Wrote {tmp_path / 'train_binary.log.train'}" in run.stdout
    assert (tmp_path / "train_binary.log.train").read_text().splitlines()[0] == "NumIters Seconds LearningRate loss"


def test_tools_extra_extract_seconds(tmp_path, classic_log):
    _run("tools/extra/extract_seconds.py", str(classic_log), str(tmp_path / "secs.txt"))
    lines = classic_log.read_text().splitlines()
    import datetime

    year = datetime.datetime.fromtimestamp(classic_log.stat().st_ctime).year
    start = _caffe_datetime(next(l for l in lines if "Solving" in l), year)
    want = [f"{(_caffe_datetime(l, year) - start).total_seconds():f}" for l in lines if "Iteration" in l]
    assert (tmp_path / "secs.txt").read_text().splitlines() == want
    assert len(want) > 10


def _sh_tables(log: Path) -> tuple[list[list[str]], list[list[str]]]:
    """parse_log.sh's columns, by its awk field numbers, for the reference: train = Iteration and field 9
    of the ', loss = ' lines, field 9 of the ', lr = ' lines; test = each 'Testing net' line's iteration
    and field 11 of its 'Test net output #0' / '#1' lines."""
    lines = log.read_text().splitlines()
    losses = [l.split() for l in lines if ", loss = " in l]
    lrs = [l.split()[8] for l in lines if ", lr = " in l]
    lrs += [""] * (len(losses) - len(lrs))  # paste leaves a missing lr empty (the last display has none)
    train = [[f[5].rstrip(","), f[8]] + ([lr] if lr else []) for f, lr in zip(losses, lrs)]
    test = []
    for l in lines:
        if "Testing net" in l:
            test.append([re.search(r"Iteration (\d+)", l).group(1)])
        elif "Test net output #" in l and test and len(test[-1]) < 3:
            test[-1].append(l.split()[10])
    return train, test


def test_tools_extra_plot_training_log(tmp_path, classic_log):
    cwd = tmp_path / "run"
    cwd.mkdir()
    _run("tools/extra/plot_training_log.py", "6", str(tmp_path / "loss.png"), str(classic_log), cwd=cwd)
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    train, test = _sh_tables(classic_log)
    got_train = [l.split() for l in (cwd / "train_binary.log.train").read_text().splitlines()]
    got_test = [l.split() for l in (cwd / "train_binary.log.test").read_text().splitlines()]
    assert got_train[0] == ["#Iters", "Seconds", "TrainingLoss", "LearningRate"]
    assert got_test[0] == ["#Iters", "Seconds", "TestAccuracy", "TestLoss"]
    assert [[r[0]] + r[2:] for r in got_train[1:]] == train
    assert [[r[0]] + r[2:] for r in got_test[1:]] == test
    assert len(train[-1]) == 2 and len(train[0]) == 3
    secs = [float(r[1]) for r in got_train[1:]]
    assert secs == sorted(secs) and secs[0] > 0
    # our own console command takes Caffe's form too, and a bad chart type prints the help
    from neocaffe.tools.plot_training_log import main as plot_main

    assert plot_main(["8", str(tmp_path / "x.png"), str(classic_log)]) == 1
    assert not (tmp_path / "x.png").exists()


def test_python_draw_net(tmp_path):
    pytest.importorskip("pydot")
    import caffe
    import caffe.draw
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    from tests.pycaffe.nets import alexnet_shaped_text

    proto = tmp_path / "net.prototxt"
    proto.write_text(alexnet_shaped_text())
    run = _run("python/draw_net.py", str(proto), str(tmp_path / "net.dot"), "--rankdir", "TB", "--phase", "TEST")
    assert f"Drawing net to {tmp_path / 'net.dot'}" in run.stdout
    net = text_format.Merge(proto.read_text(), caffe_pb2.NetParameter())
    want = caffe.draw.draw_net(net, "TB", ext="dot", phase=caffe.TEST).decode()
    assert (tmp_path / "net.dot").read_text() == want and "conv5" in want


def test_caffe_python_folder_on_pythonpath(tmp_path):
    """Caffe's install notes: ``export PYTHONPATH=$CAFFE_ROOT/python``, then ``import caffe``. Here
    python/caffe and python/neocaffe are links to the packages, so that works without pip install."""
    import os

    code = ("import caffe, neocaffe, sys; print(caffe.__file__); print(neocaffe.__file__); "
            "print(caffe.Net.__name__, caffe.TEST)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "python")}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=env)
    assert run.returncode == 0, run.stderr
    caffe_file, neocaffe_file, names = run.stdout.splitlines()
    assert caffe_file == str(REPO / "python" / "caffe" / "__init__.py")
    assert neocaffe_file == str(REPO / "python" / "neocaffe" / "__init__.py")
    assert names == "Net 1"


def test_tools_extra_parse_log_sh(tmp_path, classic_log):
    """Caffe's parse_log.sh: <log>.test and <log>.train in the current folder, `column -t` tables of the
    real log's values, read here from the log independently (test outputs as Caffe's parse_log.py reads
    them; seconds of the 'Testing net' lines; loss and lr lines). When written, its files were also
    byte-identical to Caffe's own parse_log.sh's on the real logs of ../shared/fixtures/logs."""
    if not shutil.which("column"):
        pytest.skip("needs the column command (util-linux / bsdmainutils), as Caffe's script does")
    run = subprocess.run(["sh", str(REPO / "tools" / "extra" / "parse_log.sh"), str(classic_log)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    test = (tmp_path / "train_binary.log.test").read_text().splitlines()
    train = (tmp_path / "train_binary.log.train").read_text().splitlines()
    assert test[0] == "#Iters Seconds TestAccuracy TestLoss" and train[0] == "#Iters Seconds TrainingLoss LearningRate"
    _, caffe_test = caffe_parse_log(str(classic_log))
    lines = classic_log.read_text().splitlines()
    got_test = [[float(v) for v in line.split()] for line in test[1:]]
    assert [(r[0], r[2], r[3]) for r in got_test] == [(t["NumIters"], t["accuracy"], t["loss"]) for t in caffe_test]
    import datetime

    def stamp(line: str) -> datetime.datetime:
        return datetime.datetime.strptime(line[1:21], "%m%d %H:%M:%S.%f")

    start = stamp(next(line for line in lines if "] Solving " in line))
    testing = [(stamp(line) - start).total_seconds() for line in lines if "Testing net" in line]
    assert [r[1] for r in got_test] == pytest.approx(testing, abs=1e-6)      # times of the 'Testing net' lines
    got_train = [[float(v) for v in line.split()] for line in train[1:]]
    losses = [re.search(r"Iteration (\d+).*, loss = (\S+)", line).groups() for line in lines if ", loss = " in line]
    rates = [float(re.search(r", lr = (\S+)", line).group(1)) for line in lines if ", lr = " in line]
    assert [(r[0], r[2]) for r in got_train] == [(float(i), float(v)) for i, v in losses]
    assert [len(r) for r in got_train] == [4] * (len(got_train) - 1) + [3]     # the last loss line has no lr line
    assert [r[3] for r in got_train[:-1]] == rates
    assert len({line.index(line.split()[1]) for line in test[1:]}) == 1        # aligned columns
    (tmp_path / "no_solving.log").write_text("I1121 22:50:15.745728 10710 caffe.cpp:210] Use CPU.\n")
    bad = subprocess.run(["sh", str(REPO / "tools" / "extra" / "parse_log.sh"), "no_solving.log"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "no_solving.log: start time not found" in bad.stderr


def test_bvlc_imagenet_mean_ships_at_pycaffes_path(tmp_path, monkeypatch):
    """python/caffe/imagenet/ilsvrc_2012_mean.npy, BVLC's file byte for byte: what its notebooks np.load and
    classify.py's default --mean_file; the same data as the real imagenet_mean.binaryproto."""
    import hashlib

    import numpy as np

    from caffe import classify, io as caffe_io
    from caffe.proto import caffe_pb2

    path = REPO / "python" / "caffe" / "imagenet" / "ilsvrc_2012_mean.npy"
    assert hashlib.sha1(path.read_bytes()).hexdigest() == "8284f7ac12f5b0f6d5069c1fac00d8e0ba647b2f"
    mean = np.load(path)
    assert mean.dtype == np.float64 and mean.shape == (3, 256, 256)
    blob = caffe_pb2.BlobProto.FromString(shared_path("realdata", "imagenet_mean", "imagenet_mean.binaryproto").read_bytes())
    np.testing.assert_array_equal(mean, caffe_io.blobproto_to_array(blob)[0].astype(np.float64))
    assert classify.load_mean(str(path)) == pytest.approx([104.00698793, 116.66876762, 122.67891434])
    monkeypatch.chdir(tmp_path)                      # the console command outside a checkout: the packaged file
    assert classify._parser(str(tmp_path / "python")).parse_args(["in.jpg", "out.npy"]).mean_file == classify.IMAGENET_MEAN
    assert classify._parser(str(REPO / "python")).parse_args(["in.jpg", "out.npy"]).mean_file == str(path)
