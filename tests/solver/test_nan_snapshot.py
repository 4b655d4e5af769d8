"""A loss that stops being finite names, as the last good snapshot, one whose weights give a finite
loss: a snapshot written at iteration N holds the weights iteration N's forward uses, so it is good
only once that loss is read back finite (with ``snapshot: 1`` the snapshot of the bad iteration itself
was named before, and its net gives the non-finite loss)."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch

from neocaffe.solver.solver import Solver

# y = w.x + b with x = 1, target 0 and a learning rate far too large: |w| grows ~30x per iteration until
# the Euclidean loss overflows float32 (weights still finite), deterministically
NET = '''name: "diverge"
layer { name: "x" type: "DummyData" top: "x" top: "t"
        dummy_data_param { data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 0 }
                           shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
'''


def _solver_file(folder: Path, fmt: str) -> Path:
    (folder / "net.prototxt").write_text(NET)
    path = folder / "solver.prototxt"
    path.write_text(f'net: "{folder / "net.prototxt"}"\nbase_lr: 10\nlr_policy: "fixed"\nmax_iter: 200\n'
                    f'snapshot: 1\nsnapshot_prefix: "{folder / "snap"}"\nsnapshot_format: {fmt}\nsolver_mode: CPU\n')
    return path


def _loss_after_restore(solver_file: Path, state: str) -> float:
    s = Solver(str(solver_file))
    s.restore(state)
    with torch.no_grad():
        return float(s.net.forward())


@pytest.mark.parametrize("fmt, interval", [("BINARYPROTO", 1), ("HDF5", 1), ("BINARYPROTO", 7)])
def test_last_good_snapshot_gives_a_finite_loss(tmp_path, caplog, fmt, interval):
    """``interval`` 7: losses read back every 7 iterations, as on a GPU."""
    solver_file = _solver_file(tmp_path, fmt)
    s = Solver(str(solver_file), loss_check_interval=interval)
    with caplog.at_level(logging.ERROR, logger="neocaffe.solver"):
        assert s.solve() is False
    line = next(r.getMessage() for r in caplog.records if "the loss is not finite" in r.getMessage())
    n = int(re.match(r"Iteration (\d+), loss = ", line).group(1))
    ext = ".solverstate.h5" if fmt == "HDF5" else ".solverstate"
    named = re.search(r"the last good snapshot is (\S+?)(?: \(|;|\.$| )", line).group(1)
    assert named == f"{tmp_path / 'snap'}_iter_{n - 1}{ext}", line
    assert math.isfinite(_loss_after_restore(solver_file, named))
    # the snapshot of the bad iteration exists, is named as not good, and its weights give the bad loss
    bad = f"{tmp_path / 'snap'}_iter_{n}{ext}"
    assert f"({bad}, written at iteration {n}," in line, line
    assert not math.isfinite(_loss_after_restore(solver_file, bad))
    assert not Path(f"{tmp_path / 'snap'}_iter_{n + 1}{ext}").exists()
    assert s.snapshots.good[1] == named


def test_no_good_snapshot_when_the_first_forward_diverges(tmp_path, caplog):
    solver_file = _solver_file(tmp_path, "BINARYPROTO")
    text = solver_file.read_text().replace("base_lr: 10", "base_lr: 1e30")
    solver_file.write_text(text)
    s = Solver(str(solver_file))
    with caplog.at_level(logging.ERROR, logger="neocaffe.solver"):
        s.solve()
    line = next(r.getMessage() for r in caplog.records if "the loss is not finite" in r.getMessage())
    assert "Iteration 1," in line and "no snapshot gave a finite loss before it" in line, line
    assert s.snapshots.good is None
