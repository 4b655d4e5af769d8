"""The `caffe` command: gflags spellings, errors and exit codes, test/time output, signals, NaN stop."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, cuda_available

FIX = SHARED / "fixtures" / "solver"


def fix() -> Path:
    if not FIX.exists():
        pytest.skip(f"reference data not present: {FIX}")
    return FIX


def run(argv, capfd):
    from neocaffe.cli.caffe import main

    capfd.readouterr()
    code = main(argv)
    return code, capfd.readouterr().err


# -- flags ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["train", "-solver", "s.prototxt"], ["train", "--solver=s.prototxt"], ["train", "-solver=s.prototxt"],
    ["train", "--solver", "s.prototxt"], ["--solver=s.prototxt", "train"],
])
def test_gflags_spellings(argv):
    from neocaffe.cli.caffe import parse_args

    a = parse_args(argv)
    assert (a.command, a.solver) == ("train", "s.prototxt")


def test_flag_types_defaults_and_repeatable_stage():
    from neocaffe.cli.caffe import UsageError, parse_args

    a = parse_args(["test", "-iterations", "7", "--stage=a,b", "-stage", "c", "-level=2", "-gpu", "all"])
    assert (a.iterations, a.stage, a.level, a.gpu) == (7, ["a", "b", "c"], 2, "all")
    d = parse_args(["train"])
    assert (d.iterations, d.sigint_effect, d.sighup_effect, d.precision) == (50, "stop", "snapshot", "fp32")
    with pytest.raises(UsageError, match="unknown command line flag 'bogus'"):
        parse_args(["train", "--bogus=1"])
    with pytest.raises(UsageError, match="int32 flag 'iterations'"):
        parse_args(["test", "--iterations=many"])
    with pytest.raises(UsageError, match="flag '-solver' is missing its argument"):
        parse_args(["train", "-solver"])
    with pytest.raises(UsageError, match="expected exactly one command; received train test"):
        parse_args(["train", "test"])


def test_optional_bool_and_repeatable_whole_flags():
    from neocaffe.cli.caffe import HelpRequested, parse_args

    a = parse_args(["time", "-compile", "-nochannels_last", "-input_shape", "data=1,3,8,8", "-input_shape=b=2"])
    assert (a.compile, a.channels_last, a.input_shape) == ("default", False, ["data=1,3,8,8", "b=2"])
    assert {"compile", "channels_last", "input_shape"} <= a.given
    d = parse_args(["time"])
    assert (d.compile, d.channels_last, d.input_shape, d.stage) == (None, None, [], []) and not d.given
    assert parse_args(["time", "-compile=max-autotune"]).compile == "max-autotune"
    with pytest.raises(HelpRequested) as e:
        parse_args(["export", "-h"])
    assert e.value.export


def test_usage_and_unknown_command(capfd):
    code, err = run([], capfd)
    assert code == 1 and "usage: caffe <command> <args>" in err and "NOT Caffe-exact" in err
    code, err = run(["brew"], capfd)
    assert code == 1 and "Unknown action: brew" in err and re.search(r"^F\d{4} ", err, re.M)
    code, err = run(["train", "--nope=1"], capfd)
    assert code == 1 and "unknown command line flag 'nope'" in err


# -- errors name the file and why --------------------------------------------------------------------
def test_train_errors(capfd, tmp_path, monkeypatch):
    code, err = run(["train"], capfd)
    assert code == 1 and "Need a solver definition to train." in err
    code, err = run(["train", "-solver", "x", "-snapshot", "a", "-weights", "b"], capfd)
    assert code == 1 and "but not both" in err
    code, err = run(["train", "-solver", str(tmp_path / "missing.prototxt")], capfd)
    assert code == 1 and "missing.prototxt" in err
    monkeypatch.chdir(fix())
    code, err = run(["train", "-solver", "sgd_fixed_l2.solver.prototxt", "-weights", "nope.caffemodel"], capfd)
    assert code == 1 and "nope.caffemodel" in err and "no such file" in err
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\x0a\xff\xff\xff")
    code, err = run(["train", "-solver", "sgd_fixed_l2.solver.prototxt", "-weights", str(bad)], capfd)
    assert code == 1 and str(bad) in err
    code, err = run(["train", "-solver", "sgd_fixed_l2.solver.prototxt", "-snapshot", str(bad)], capfd)
    assert code == 1 and str(bad) in err
    code, err = run(["train", "-solver", "sgd_fixed_l2.solver.prototxt", "-sigint_effect", "explode"], capfd)
    assert code == 1 and 'Invalid signal effect "explode"' in err


@pytest.mark.skipif(cuda_available(), reason="checks the no-CUDA message")
def test_gpu_flag_without_cuda_is_a_clear_error(capfd, monkeypatch):
    monkeypatch.chdir(fix())
    code, err = run(["train", "-solver", "sgd_fixed_l2.solver.prototxt", "-gpu", "0"], capfd)
    assert code == 1 and "CUDA is not available" in err
    code, err = run(["device_query", "-gpu", "0"], capfd)
    assert code == 1 and "CUDA is not available" in err


# -- test / time -------------------------------------------------------------------------------------
def test_test_command_prints_batches_and_means(capfd, monkeypatch):
    monkeypatch.chdir(fix())
    code, err = run(["test", "-model", "net.prototxt", "-weights", "init.caffemodel", "-iterations", "2"], capfd)
    assert code == 0, err
    b0 = re.search(r"Batch 0, loss = ([\d.eE+-]+)", err)
    assert b0 and float(b0.group(1)) == pytest.approx(166.148, rel=1e-4)  # the trajectory's first loss
    assert "Batch 1, loss = " in err and "Running for 2 iterations." in err
    assert re.search(r"\] loss = [\d.eE+-]+ \(\* 1 = [\d.eE+-]+ loss\)", err)
    assert re.search(r"\] Loss: [\d.eE+-]+", err)


BN_NET = """name: 'bn'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 4 kernel_size: 3 bias_filler { type: 'constant' value: 0.5 } weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'bn' type: 'BatchNorm' bottom: 'conv' top: 'conv' }
layer { name: 'sc' type: 'Scale' bottom: 'conv' top: 'conv' scale_param { bias_term: true } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'conv' top: 'ip' inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
"""


def test_test_command_folds_batchnorm_when_asked(capfd, monkeypatch, tmp_path):
    import torch

    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.io.weights import save_weights

    (tmp_path / "net.prototxt").write_text(BN_NET)
    net = Net(read_net(BN_NET), 1)
    with torch.no_grad():
        bn = net.layer("bn").blobs
        bn[0].copy_(torch.tensor([0.3, -0.2, 0.1, 0.4]))
        bn[1].copy_(torch.tensor([0.5, 2.0, 1.5, 0.8]))
        bn[2].fill_(1.0)
        net.layer("sc").blobs[0].copy_(torch.tensor([1.5, 0.5, 2.0, 1.0]))
    save_weights(str(tmp_path / "w.caffemodel"), net.to_weights())
    monkeypatch.chdir(tmp_path)
    outs = {}
    for extra in ([], ["-fold_bn"]):
        code, err = run(["test", "-model", "net.prototxt", "-weights", "w.caffemodel", "-iterations", "1", *extra], capfd)
        assert code == 0, err
        outs[bool(extra)] = [float(v) for v in re.findall(r"Batch 0, ip = ([\d.eE+-]+)", err)]
        assert ("Inference modes: fold_bn" in err) is bool(extra)
        assert ("fold_bn: 1 chains folded (conv+bn+sc)" in err) is bool(extra)
    assert len(outs[False]) == 6 and max(abs(v) for v in outs[False]) > 0.1
    assert outs[True] == pytest.approx(outs[False], rel=1e-5, abs=1e-6)


def test_time_command_per_layer_and_summary(capfd, monkeypatch):
    monkeypatch.chdir(fix())
    code, err = run(["time", "-model", "net.prototxt", "-iterations", "2"], capfd)
    assert code == 0, err
    assert re.search(r"\]  innerprod\tforward: [\d.eE+-]+ ms\.", err)
    assert re.search(r"\]       loss\tbackward: [\d.eE+-]+ ms\.", err)
    for what in ("Average Forward pass:", "Average Backward pass:", "Average Forward-Backward:", "Total Time:",
                 "*** Benchmark ends ***", "Iteration: 2 forward-backward time:"):
        assert what in err
    for row in ("fprop", "bprop", "iteration"):
        assert re.search(rf"\] {row} +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +msec", err)


def test_train_writes_caffe_lines_and_no_progress_bar_off_a_terminal(capfd, monkeypatch, tmp_path):
    monkeypatch.chdir(fix())
    solver = tmp_path / "s.prototxt"
    solver.write_text((FIX / "sgd_step_l1.solver.prototxt").read_text().replace("display: 0", "display: 2")
                      .replace("snapshot_after_train: false", "")
                      .replace('net: "net.prototxt"', f'net: "{FIX / "net.prototxt"}"')
                      .replace('snapshot_prefix: "sgd_step_l1"', f'snapshot_prefix: "{tmp_path / "run"}"'))
    code, err = run(["train", "--solver", str(solver), "--weights", "init.caffemodel"], capfd)
    assert code == 0, err
    assert "\r" not in err
    assert "Finetuning from init.caffemodel" in err
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ solver\.py:\d+\] Iteration 2, loss = ", err, re.M)
    assert "    Train net output #0: loss = " in err and "Iteration 2, lr = 0.01" in err
    assert "Iteration 4, lr = 0.005" in err
    assert f"Snapshotting to binary proto file {tmp_path / 'run'}_iter_10.caffemodel" in err
    assert "Iteration 10, loss = " in err and err.rstrip().endswith("Optimization Done.")


def test_progress_only_on_a_terminal():
    import io

    from neocaffe.cli.log import GlogHandler, Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not Progress.wanted(io.StringIO())
    os.environ.setdefault("TERM", "xterm")
    assert Progress.wanted(Tty()) == (os.environ.get("TERM") != "dumb")
    stream = Tty()
    h = GlogHandler(stream)

    class S:
        iter, smoothed_loss = 5, 0.25

        class param:
            max_iter = 10

    p = Progress(S(), h)
    assert p.render().startswith("[" + "#" * 15 + "." * 15 + "] 5/10")
    h.redraw()
    assert stream.getvalue().startswith("[###")


def test_glog_format_and_minloglevel(monkeypatch):
    import io
    import logging

    from neocaffe.cli.log import setup, teardown

    stream = io.StringIO()
    h = setup(stream)
    try:
        logging.getLogger("neocaffe.solver").info("Iteration %d, loss = %s", 3, "0.5")
        logging.getLogger("neocaffe.solver").warning("careful")
    finally:
        teardown(h)
    lines = stream.getvalue().splitlines()
    assert re.match(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ test_caffe_cli\.py:\d+\] Iteration 3, loss = 0\.5$", lines[0])
    assert lines[1].startswith("W")
    monkeypatch.setenv("GLOG_minloglevel", "2")
    stream = io.StringIO()
    h = setup(stream)
    try:
        logging.getLogger("neocaffe.solver").info("hidden")
        logging.getLogger("neocaffe.solver").error("shown")
    finally:
        teardown(h)
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


# -- NaN stop ----------------------------------------------------------------------------------------
def test_non_finite_loss_stops_and_keeps_last_good_snapshot(capfd, monkeypatch, tmp_path):
    monkeypatch.chdir(fix())
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{FIX / "net.prototxt"}"\nbase_lr: 1e6\nlr_policy: "fixed"\nmomentum: 0.9\n'
                      f'max_iter: 100\nsnapshot: 1\nsnapshot_prefix: "{tmp_path / "d"}"\nsolver_mode: CPU\n')
    code, err = run(["train", "-solver", str(solver), "-weights", "init.caffemodel"], capfd)
    assert code == 2, err
    m = re.search(r"Iteration (\d+), loss = (nan|inf|-inf): the loss is not finite", err)
    assert m, err[-2000:]
    n = int(m.group(1))
    # the snapshot of iteration n holds the weights that gave the bad loss: the good one is n - 1's
    assert n >= 2, err[-2000:]
    assert f"the last good snapshot is {tmp_path / 'd'}_iter_{n - 1}.solverstate (" in err
    assert f"({tmp_path / 'd'}_iter_{n}.solverstate, written at iteration {n}," in err
    assert (tmp_path / f"d_iter_{n}.caffemodel").exists()
    assert not (tmp_path / f"d_iter_{n + 1}.caffemodel").exists()
    assert "Optimization Done." not in err


# -- signals (a real process) ----------------------------------------------------------------------
def _spawn(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, Path]:
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{fix() / "net.prototxt"}"\nbase_lr: 1e-4\nlr_policy: "fixed"\nmax_iter: 100000\n'
                      f'display: 1\nsnapshot_prefix: "{tmp_path / "sig"}"\nsolver_mode: CPU\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "neocaffe.cli.caffe", "train", "-solver", str(solver), *flags],
                            cwd=FIX, env=env, stderr=subprocess.PIPE, text=True)
    return proc, solver


def _wait_for(proc: subprocess.Popen, pattern: str, lines: list[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"never saw {pattern!r}:\n{''.join(lines[-20:])}")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sigint_stops_with_snapshot_and_sighup_snapshots(tmp_path):
    proc, _ = _spawn(tmp_path, "-sighup_effect", "snapshot", "-sigint_effect", "stop")
    lines: list[str] = []
    try:
        _wait_for(proc, r"Iteration 3, loss", lines)
        proc.send_signal(signal.SIGHUP)
        _wait_for(proc, r"Snapshotting solver state to binary proto file", lines)
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, r"Optimization stopped early", lines)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    snaps = sorted(p.name for p in tmp_path.glob("sig_iter_*.solverstate"))
    assert len(snaps) == 2, snaps  # one from SIGHUP, one from stopping (snapshot_after_train)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sigint_none_is_ignored_then_sighup_stop(tmp_path):
    proc, _ = _spawn(tmp_path, "-sigint_effect", "none", "-sighup_effect", "stop")
    lines: list[str] = []
    try:
        _wait_for(proc, r"Iteration 2, loss", lines)
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, r"Iteration 5, loss", lines)
        proc.send_signal(signal.SIGHUP)
        _wait_for(proc, r"Optimization stopped early", lines)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_time_on_a_deploy_net_times_backward(capfd, tmp_path):
    """A net with no loss (a deploy net) still gets every layer's backward timed, as Caffe's time does."""
    net = tmp_path / "deploy.prototxt"
    net.write_text("""name: 'deploy'
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } } }
layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1'
  convolution_param { num_output: 64 kernel_size: 5 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'relu1' type: 'ReLU' bottom: 'conv1' top: 'conv1' }
layer { name: 'fc' type: 'InnerProduct' bottom: 'conv1' top: 'fc' inner_product_param { num_output: 10 } }
layer { name: 'prob' type: 'Softmax' bottom: 'fc' top: 'prob' }
""")
    code, err = run(["time", "-model", str(net), "-iterations", "2"], capfd)
    assert code == 0, err
    conv = re.search(r"\]      conv1\tbackward: ([\d.eE+-]+) ms\.", err)
    total = re.search(r"Average Backward pass: ([\d.eE+-]+) ms\.", err)
    assert conv and float(conv.group(1)) > 0, err
    assert total and float(total.group(1)) > 0
    assert re.search(r"\] bprop +[\d.]+", err)
