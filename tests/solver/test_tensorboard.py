"""TensorBoard scalars (``caffe train -tensorboard DIR``, ``Solver(tensorboard=...)``,
``NEOCAFFE_TENSORBOARD``): the event files hold every number the log prints on display and test
iterations, read back with TensorBoard's own EventAccumulator, and the log stays line for line the same."""
from __future__ import annotations

import re
import sys

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install neocaffe[tensorboard])")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

NET = """name: "tb"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
    shape { dim: 4 dim: 2 dim: 4 dim: 4 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 decay_mult: 1 force_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" param { lr_mult: 1 decay_mult: 1 }
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" top: "per_class"
  include { phase: TEST } }
"""
SOLVER = """net: "net.prototxt"
base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 4 momentum: 0.9
display: 2 max_iter: 8 test_iter: 2 test_interval: 4 test_compute_loss: true
snapshot: 4 snapshot_prefix: "snap" random_seed: 1 solver_mode: CPU
{extra}
"""
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ", re.M)
NUM = r"([-+]?[\d.]+(?:e[-+]?\d+)?|nan|inf)"


def _write(tmp_path, extra: str):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER.replace("{extra}", extra))
    return tmp_path / "solver.prototxt"


def _train(tmp_path, capfd, monkeypatch, *flags: str) -> str:
    from neocaffe.cli.caffe import main

    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert main(["train", "-solver", "solver.prototxt", *flags]) == 0
    return capfd.readouterr().err


def _events(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator) -> dict[str, dict[int, float]]:
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _expected(log: str) -> dict[str, dict[int, float]]:
    """What the log prints, as ``{tag: {iteration: value}}`` (the tags the writer documents)."""
    want: dict[str, dict[int, float]] = {}
    it = -1
    counts: dict[str, int] = {}

    def put(tag: str, value: str) -> None:
        want.setdefault(tag, {})[it] = float(value)

    lines = GLOG.sub("", log).splitlines()
    for line in lines:
        if m := re.match(rf"Iteration (\d+), loss = {NUM}$", line):
            it, counts = int(m.group(1)), {}
            put("train/loss", m.group(2))
        elif m := re.match(rf"Iteration (\d+), lr = {NUM}$", line):
            put("train/lr", m.group(2))
        elif m := re.match(r"Iteration (\d+), Testing net", line):
            it, counts = int(m.group(1)), {}
        elif m := re.match(rf"\s+(Train|Test) net output #\d+: (\S+) = {NUM}", line):
            kind, name = m.group(1).lower(), m.group(2)
            counts[name] = counts.get(name, 0) + 1
            several = name == "per_class"  # an output of several values: one tag per value
            put(f"{kind}/{name}/{counts[name] - 1}" if several else f"{kind}/{name}", m.group(3))
        elif m := re.match(rf"Test loss: {NUM}$", line):
            put("test/loss", m.group(1))
        elif m := re.match(r"\s+Sparsity %: (.*)$", line):
            for name, v in zip(("conv/0", "ip/0"), m.group(1).split()):
                put(f"sparsity/{name}", v)
        elif m := re.match(rf"\s+Total regularization terms: {NUM} loss\+regular\. : {NUM}$", line):
            put("regularization/total", m.group(1))
            put("train/loss+regular", m.group(2))
    return want


def _assert_same(got: dict, want: dict) -> None:
    for tag, rows in want.items():
        assert tag in got, f"{tag} is in the log but not in the event file; event tags: {sorted(got)}"
        assert sorted(got[tag]) == sorted(rows), (tag, got[tag], rows)
        for step, v in rows.items():
            assert got[tag][step] == pytest.approx(v, rel=1e-5, abs=1e-6), (tag, step, got[tag][step], v)


def test_event_files_hold_what_the_log_shows(tmp_path, capfd, monkeypatch):
    _write(tmp_path, 'weight_decay: 0.01 force_decay: 0.001 force_type: "Constant"')
    log = _train(tmp_path, capfd, monkeypatch, "-tensorboard", "tb", "-tensorboard_histograms")
    got = _scalars(_events(tmp_path / "tb"))
    want = _expected(log)
    # the log's numbers: display iterations 0, 2, 4, 6 and the final one, tests at 0, 4 and 8
    assert sorted(want["train/loss"]) == [0, 2, 4, 6, 8] and sorted(want["test/acc"]) == [0, 4, 8]
    assert {"train/lr", "sparsity/conv/0", "sparsity/ip/0", "test/per_class/2", "test/loss"} <= set(want)
    _assert_same(got, want)
    # each regularizer's own penalty, summing to the logged total
    for step, total in want["regularization/total"].items():
        parts = got["regularization/weight_decay"][step] + got["regularization/force"][step]
        assert parts == pytest.approx(total, rel=1e-5), step
    assert got["regularization/force"][2] > 0
    speed = got["speed/images_per_s"]
    assert sorted(speed) == [2, 4, 6, 8] and all(v > 0 for v in speed.values())
    hist = _events(tmp_path / "tb").Tags()["histograms"]
    assert set(hist) == {"weights/conv/0", "weights/conv/1", "weights/ip/0", "weights/ip/1"}
    assert [e.step for e in _events(tmp_path / "tb").Histograms("weights/conv/0")] == [4, 8]


def test_the_log_is_unchanged_by_tensorboard(tmp_path, capfd, monkeypatch):
    extra = "weight_decay: 0.01"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write(tmp_path / "a", extra)
    _write(tmp_path / "b", extra)
    plain = GLOG.sub("", _train(tmp_path / "a", capfd, monkeypatch))
    with_tb = GLOG.sub("", _train(tmp_path / "b", capfd, monkeypatch, "-tensorboard", "tb"))
    assert with_tb == plain
    assert (tmp_path / "b" / "tb").is_dir() and not (tmp_path / "a" / "tb").exists()


def test_ssl_sparsity_and_penalties_reach_the_event_file(tmp_path, capfd, monkeypatch):
    """The scnn branch's regularizers: their penalties by name, and the four sparsity lines' numbers."""
    _write(tmp_path, "breadth_decay: 0.01 kernel_shape_decay: 0.01")
    log = _train(tmp_path, capfd, monkeypatch, "-tensorboard", "tb")
    got = _scalars(_events(tmp_path / "tb"))
    _assert_same(got, {k: v for k, v in _expected(log).items() if not k.startswith("sparsity/")})
    text = GLOG.sub("", log)
    element = re.findall(r"Element Sparsity %: \n(.*)", text)
    column = re.findall(r"Column Sparsity %: \n(.*)", text)
    assert len(element) == 4, text[-2000:]  # display iterations 0, 2, 4, 6
    learnable = sorted(t.split("/", 2)[2] for t in got if t.startswith("sparsity/element/"))
    assert learnable == ["conv/0", "conv/1", "ip/0", "ip/1"]
    for kind, rows in (("element", element), ("column", column)):
        for step, row in zip((0, 2, 4, 6), rows):
            printed = [float(v) for v in row.split()]
            ours = [got[f"sparsity/{kind}/{n}"][step] for n in ("conv/0", "conv/1", "ip/0", "ip/1")]
            assert ours == pytest.approx(printed, rel=1e-5, abs=1e-6), (kind, step)
    ssl = [t for t in got if t.startswith("regularization/") and t != "regularization/total"]
    assert ssl and all(sorted(got[t]) == [0, 2, 4, 6] for t in ssl)
    assert sum(got[t][2] for t in ssl) == pytest.approx(got["regularization/total"][2], rel=1e-5)


def test_environment_variable_and_solver_argument(tmp_path, monkeypatch):
    from neocaffe.solver.solver import Solver

    solver = _write(tmp_path, "")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEOCAFFE_TENSORBOARD", str(tmp_path / "env"))
    s = Solver(str(solver))
    s.step(3)
    s.close()
    assert sorted(_scalars(_events(tmp_path / "env"))["train/loss"]) == [0, 2]
    s = Solver(str(solver), tensorboard="")  # an argument wins over the environment: off
    assert s.monitors == []
    monkeypatch.setenv("NEOCAFFE_TENSORBOARD_HISTOGRAMS", "sometimes")
    with pytest.raises(ValueError, match="NEOCAFFE_TENSORBOARD_HISTOGRAMS must be one of"):
        Solver(str(solver))


def test_without_the_package_a_clear_error(tmp_path, capfd, monkeypatch):
    _write(tmp_path, "")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    from neocaffe.cli.caffe import main

    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert main(["train", "-solver", "solver.prototxt", "-tensorboard", "tb"]) == 1
    err = capfd.readouterr().err
    assert "needs the tensorboard package: pip install neocaffe[tensorboard]" in err
    assert "Iteration 0" not in err
