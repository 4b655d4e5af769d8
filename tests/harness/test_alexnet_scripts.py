"""The fork's two AlexNet scripts, end to end on the CPU (device_id -1): a tiny 256x256 LMDB, the
real AlexNet templates shrunk to a few iterations, from .caffemodel, from .caffemodel.h5 and resuming
a state; every run folder holds its files and a real local SMTP server receives each notice."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from neocaffe.data.datum import array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.io.prototxt import read_net, read_solver, to_text
from neocaffe.io.weights import LayerWeights, save_weights
from neocaffe.tools.compute_image_mean import main as compute_image_mean
from neocaffe.tools.group_split import split_weights
from tests.harness.smtp import smtp_server

MODELS = Path(__file__).resolve().parents[2] / "models" / "bvlc_alexnet"
SHAPES = {
    "conv1": [(96, 3, 11, 11), (96,)], "conv2": [(256, 48, 5, 5), (256,)], "conv3": [(384, 256, 3, 3), (384,)],
    "conv4": [(384, 192, 3, 3), (384,)], "conv5": [(256, 192, 3, 3), (256,)],
    "fc6": [(4096, 9216), (4096,)], "fc7": [(4096, 4096), (4096,)], "fc8": [(1000, 4096), (1000,)],
}
RUN_FILES = ("solver.prototxt", "train.info", "loss.info", "accu.png")


def _lmdb(path: Path, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    w = DBWriter(str(path))
    for i in range(n):
        w.put(f"{i:08d}_img{i}.png", array_to_datum(rng.integers(0, 256, (3, 256, 256), dtype=np.uint8),
                                                    label=i % 1000).SerializeToString())
    w.commit()
    w.close()


def _shrink_net(src: Path, dst: Path, lmdb: Path, mean: Path) -> None:
    net = read_net(str(src), upgrade=False)
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(lmdb)
            layer.data_param.batch_size = 2
            layer.transform_param.mean_file = str(mean)
    dst.write_text(to_text(net))


def _shrink_solver(src: Path, dst: Path, net: Path | None) -> None:
    s = read_solver(str(src), upgrade=False)
    if net is not None and s.HasField("net"):
        s.net = str(net)
    s.test_iter[:] = [1]
    s.test_interval, s.display, s.max_iter, s.snapshot = 2, 1, 3, 2
    del s.stepvalue[:]
    s.lr_policy = "fixed"
    dst.write_text(to_text(s))


def _run(script: str, args: list[str], env: dict) -> tuple[Path, str]:
    proc = subprocess.run(["bash", str(MODELS / script), *args], env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    m = re.search(r"run folder: (\S+) \(caffe train exit status 0\)", out)
    assert m, out[-3000:]
    return Path(m.group(1)), out


def _check_run(run: Path, expect_net: bool) -> None:
    for name in RUN_FILES + (("net.prototxt",) if expect_net else ()):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, f"{run.name}: {name} missing or empty"
    info = (run / "train.info").read_text()
    assert "Optimization Done." in info, info[-3000:]
    loss_lines = (run / "loss.info").read_text().split("\n")
    assert loss_lines[0] and all(len(l.split()) == 2 for l in loss_lines if l), loss_lines[:3]


@pytest.mark.slow
def test_alexnet_scripts_end_to_end(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _lmdb(data / "tiny_lmdb")
    assert compute_image_mean([str(data / "tiny_lmdb"), str(data / "mean.binaryproto")]) == 0
    _shrink_net(MODELS / "template_train_val.prototxt", data / "template_train_val.prototxt",
                data / "tiny_lmdb", data / "mean.binaryproto")
    _shrink_net(MODELS / "train_val_split.prototxt", data / "train_val_split.prototxt",
                data / "tiny_lmdb", data / "mean.binaryproto")
    _shrink_solver(MODELS / "template_solver.prototxt", data / "template_solver.prototxt", None)
    _shrink_solver(MODELS / "template_solver_force.prototxt", data / "template_solver_force.prototxt",
                   data / "train_val_split.prototxt")
    rng = np.random.default_rng(1)
    grouped = [LayerWeights(n, "InnerProduct" if n.startswith("fc") else "Convolution",
                            [(rng.standard_normal(s) * (0.01 if len(s) > 1 else 0.0)).astype(np.float32)
                             for s in shapes]) for n, shapes in SHAPES.items()]
    save_weights(data / "bvlc_alexnet.caffemodel", grouped)
    split_net = read_net(str(data / "train_val_split.prototxt"))
    save_weights(data / "alexnet_split.caffemodel.h5",
                 split_weights(grouped, [l.name for l in split_net.layer], {l.name: l.type for l in split_net.layer}))

    with smtp_server() as (port, received):
        env = dict(os.environ, NEOCAFFE_RUNS_DIR=str(tmp_path / "runs"), NEOCAFFE_SMTP_HOST="127.0.0.1",
                   NEOCAFFE_SMTP_PORT=str(port), NEOCAFFE_MAIL_TO="researcher@example.org")
        run1, _ = _run("train_script.sh", ["0.001", "1e-3", "-1", str(data / "template_solver.prototxt"),
                                           str(data / "template_train_val.prototxt"),
                                           str(data / "bvlc_alexnet.caffemodel")], env)
        _check_run(run1, expect_net=True)
        assert run1.name.startswith("0.001_featuredecay_1e-3_")
        assert "coef: 0.001" in (run1 / "net.prototxt").read_text()
        run2, _ = _run("train_script_force.sh", ["0.001", "0.00005", "Degradation", "-1",
                                                 str(data / "template_solver_force.prototxt"),
                                                 str(data / "alexnet_split.caffemodel.h5")], env)
        _check_run(run2, expect_net=False)
        assert run2.name.startswith("0.001_forcedecay_0.00005_Degradation_")
        state = run2 / "alexnet_iter_2.solverstate.h5"
        assert state.is_file(), sorted(p.name for p in run2.iterdir())
        run3, _ = _run("train_script_force.sh", ["--mail-to", "other@example.org", "0.001", "0.00005", "Degradation",
                                                 "-1", str(data / "template_solver_force.prototxt"), str(state)], env)
        _check_run(run3, expect_net=False)
        info = (run3 / "train.info").read_text()
        assert "Resuming from" in info and "Iteration 2, lr" in info and "Iteration 0, lr" not in info
    assert [r for r, _ in received] == [["researcher@example.org"], ["researcher@example.org"], ["other@example.org"]]
    for _, msg in received:
        body = msg.get_payload(decode=True).decode()
        assert "finished" in body and "run folder:" in body


def test_scripts_reject_wrong_arguments():
    for script, args in (("train_script.sh", ["0.1"]), ("train_script_force.sh", ["0.1", "1", "Bogus", "-1", "x"])):
        proc = subprocess.run(["bash", str(MODELS / script), *args], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "Usage" in proc.stderr or "usage" in proc.stderr.lower()


def test_usage_is_the_scripts_header_comment():
    for script in ("train_script.sh", "train_script_force.sh"):
        header = (MODELS / script).read_text().splitlines()[2:7]
        assert all(line.startswith("#") for line in header)
        expected = [re.sub(r"^# ?", "", line) for line in header]
        for args in (["0.1"], ["--mail-to"], ["0.1", "1", "2", "x", "a", "b", "c"]):
            proc = subprocess.run(["bash", str(MODELS / script), *args], capture_output=True, text=True)
            assert proc.returncode == 2, proc.stderr
            lines = proc.stderr.splitlines()
            assert lines[-len(expected):] == expected, proc.stderr
            assert "set -euo pipefail" not in proc.stderr
        args = ["0.1", "1", "gpu0", "s", "n"] if script == "train_script.sh" else ["0.1", "1", "Linear", "gpu0", "s"]
        proc = subprocess.run(["bash", str(MODELS / script), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and "device_id must be an integer (-1 for CPU); received 'gpu0'" in proc.stderr
