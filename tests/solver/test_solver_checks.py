"""Solver settings that cannot work are refused when the solver starts, in an error naming the solver
file, the field, what was received and what was expected (Caffe's CHECKs in Solver::Init and the
solvers' constructors), not by a math error at the first update or a failed write after training."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from neocaffe.solver.solver import Solver, SolverError

NET = '''name: "tiny"
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
        inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
'''


def _solver_file(folder: Path, text: str) -> Path:
    (folder / "net.prototxt").write_text(NET)
    path = folder / "solver.prototxt"
    path.write_text(f'net: "{folder / "net.prototxt"}"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'
                    f'solver_mode: CPU\n{text}\n')
    return path


def _refused(folder: Path, text: str, *parts: str) -> str:
    path = _solver_file(folder, text)
    with pytest.raises(SolverError) as info:
        Solver(str(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


@pytest.mark.parametrize("field, value", [("momentum2", "1.0"), ("momentum2", "1.5"), ("momentum2", "-0.1"),
                                          ("momentum", "1.0")])
def test_adam_betas_outside_0_1(tmp_path, field, value):
    """momentum2 = 1 zeroes Adam's bias correction (no update ever), > 1 is the root of a negative
    number (a math domain error at the first update before), < 0 is no average."""
    other = "momentum: 0.9" if field == "momentum2" else "momentum2: 0.999"
    _refused(tmp_path, f'type: "Adam" {other} {field}: {value}',
             f"Adam's {field}", "must lie in [0, 1)", f"received {field}: {float(value):g}")


def test_adam_betas_inside_0_1_train(tmp_path):
    for m2 in ("0.999", "0"):
        s = Solver(str(_solver_file(tmp_path, f'type: "Adam" momentum: 0.9 momentum2: {m2}')))
        s.step(2)
        assert s.iter == 2


def test_rule_errors_name_the_file_through_pycaffe(tmp_path):
    import caffe

    path = _solver_file(tmp_path, 'type: "Adam" momentum: 0.9 momentum2: 2')
    with pytest.raises(SolverError, match=f"^{path}: Adam's momentum2"):
        caffe.get_solver(str(path))


def test_snapshot_prefix_in_a_missing_folder(tmp_path):
    """Checked when the solver starts (Caffe's CheckSnapshotWritePermissions), naming the folder."""
    prefix = tmp_path / "no" / "such" / "lenet"
    _refused(tmp_path, f'snapshot: 1 snapshot_prefix: "{prefix}"',
             f"Cannot write to snapshot prefix '{prefix}'", f"folder '{prefix.parent}'", "No such file or directory")
    assert not prefix.parent.exists()


def test_snapshot_prefix_under_a_regular_file(tmp_path):
    """A folder that cannot exist (its parent is a file): refused even for root, who writes anywhere."""
    (tmp_path / "plain").write_text("x")
    prefix = tmp_path / "plain" / "lenet"
    _refused(tmp_path, f'snapshot: 5 snapshot_prefix: "{prefix}"', f"snapshot prefix '{prefix}'", "Not a directory")


def test_snapshot_prefix_only_written_after_training(tmp_path):
    """snapshot: 0 with snapshot_after_train (the default): the final snapshot would fail after the
    whole run, so the prefix is checked at the start too."""
    prefix = tmp_path / "missing" / "final"
    _refused(tmp_path, f'snapshot_prefix: "{prefix}"', f"snapshot prefix '{prefix}'")
    Solver(str(_solver_file(tmp_path, f'snapshot_prefix: "{prefix}" snapshot_after_train: false')))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders: the not-writable case cannot fail as root "
                           "(the missing-folder and under-a-file cases run)")
def test_snapshot_prefix_in_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        _refused(tmp_path, f'snapshot: 1 snapshot_prefix: "{folder / "x"}"', "Permission denied")
    finally:
        folder.chmod(0o700)


def test_test_net_without_test_iter_names_the_solver(tmp_path):
    """Caffe's CHECK_EQ(test_iter_size, num_test_nets) in InitTestNets, now naming the solver file."""
    _refused(tmp_path, f'test_interval: 1 test_net: "{tmp_path / "net.prototxt"}"',
             "test_iter must be specified for each test network", "received 0 test_iter for 1 test_net")


def test_test_interval_without_test_iter_on_a_generic_net_warns(tmp_path, caplog):
    """With only ``net``, Caffe builds one test net per test_iter: none, and tests nothing. The same
    here, said in the log instead of silently."""
    with caplog.at_level(logging.WARNING, logger="neocaffe.solver"):
        s = Solver(str(_solver_file(tmp_path, "test_interval: 1")))
    assert s.test_nets == []
    assert any("test_interval is 1 but no test_iter is given" in r.getMessage() for r in caplog.records)


def test_solver_parameter_with_source_names_it(tmp_path):
    """The CLI reads the file itself and passes the parameter with ``source``."""
    from neocaffe.io.prototxt import read_solver

    path = _solver_file(tmp_path, "average_loss: 0")
    with pytest.raises(SolverError, match=f"^{path}: average_loss"):
        Solver(read_solver(str(path)), source=str(path))
    with pytest.raises(SolverError, match="^average_loss"):  # no file: nothing to name
        Solver(read_solver(str(path)))
