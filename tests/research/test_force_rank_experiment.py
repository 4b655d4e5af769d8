"""Smoke test of benchmarks/force_rank_experiment.py on a tiny configuration (not the experiment itself):
the real digits -> LMDBs -> `caffe train` (control + one forced run, a few iterations) -> ranks at 95%
PCA energy and accuracy over the 360 test images -> json, markdown table and plot."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.research.scripts import load_benchmark


pytest.importorskip("sklearn", reason="the digits come from scikit-learn (pip install -e .[examples])")


def test_tiny_experiment_gives_ranks_and_accuracies(tmp_path):
    exp = load_benchmark("force_rank_experiment")
    out = tmp_path / "out"
    doc = exp.main(["--config", "none", "--config", "Constant:0.01", "--iters", "10", "--test-interval", "10",
                    "--force-layers", "conv1,conv2", "--work-dir", str(tmp_path / "work"),
                    "--json", str(out / "r.json"), "--md", str(out / "r.md"), "--png", str(out / "r.png")])
    saved = json.loads((out / "r.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(doc["runs"]))
    assert [r["config"]["force_type"] for r in saved["runs"]] == ["", "Constant"]
    assert saved["layers"] == ["conv1", "conv2", "ip1", "ip2"]
    for run in saved["runs"]:
        assert run["iterations"] == 10
        assert run["filters"] == {"conv1": 20, "conv2": 50, "ip1": 500, "ip2": 10}
        for layer, rank in run["ranks_at_95"].items():
            assert 1 <= rank <= run["filters"][layer]
        assert run["test_images"] == 360
        assert 0.0 <= run["test_accuracy"] <= 1.0
        assert abs(run["test_accuracy"] - run["log_final_accuracy"]) <= 0.5 / 360
        assert run["lowrank_ranks"] == {k: run["ranks_at_95"][k] for k in ("conv1", "conv2")}
        assert 0.0 <= run["lowrank_test_accuracy"] <= 1.0
    control, forced = saved["runs"]
    assert forced["verdict"].keys() >= {"lower_rank_every_forced_layer", "accuracy_drop_points", "claim_holds"}
    # Same seed and data: the force alone makes the forced layers' weights differ from the control's.
    from neocaffe.io.weights import load_weights

    work = tmp_path / "work"
    ctrl = {lw.name: lw.blobs for lw in load_weights(str(work / "control" / "lenet_digits_iter_10.caffemodel"))}
    frc = {lw.name: lw.blobs for lw in load_weights(str(work / "Constant_0.01" / "lenet_digits_iter_10.caffemodel"))}
    assert forced["config"]["layers"] == ["conv1", "conv2"]
    for layer in ("conv1", "conv2"):
        assert np.abs(ctrl[layer][0] - frc[layer][0]).max() > 1e-4, layer
    assert saved["seed"] == 1701 and saved["torch"] and saved["cpu"] and saved["date"]
    table = (out / "r.md").read_text()
    assert "| control (no force) |" in table and "| Constant 0.01 |" in table
    assert (out / "r.png").stat().st_size > 5000


def test_config_parsing():
    exp = load_benchmark("force_rank_experiment")
    assert exp.Config.parse("none").force_type == ""
    c = exp.Config.parse("Degradation:3e-4")
    assert (c.force_type, c.force_decay, c.name) == ("Degradation", 3e-4, "Degradation_0.0003")
    with pytest.raises(SystemExit, match="TYPE:DECAY"):
        exp.Config.parse("Sideways:1")
