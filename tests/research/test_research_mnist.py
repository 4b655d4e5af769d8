"""Smoke test of benchmarks/research_mnist.py (not the experiment itself): a slice of real MNIST ->
convert_mnist_data -> BVLC's LeNet baseline -> each arm's regularize / compress / fine-tune -> accuracy,
structure, convolution multiply-accumulates, timing -> json, markdown and plot."""
from __future__ import annotations

import json

import pytest

from tests.conftest import shared_path
from tests.research.scripts import smoke_run

# LeNet's convolutions per 28x28 image: conv1 20 filters of 1x5x5 on 24x24, conv2 50 of 20x5x5 on 8x8
BASE_CONV_MACS = 20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8
# conv2 at rank 12: 12 basis filters of 20x5x5 on 8x8, then a 1x1 from 12 to 50 channels
RANK12_CONV_MACS = 20 * 25 * 24 * 24 + 12 * 20 * 25 * 8 * 8 + 50 * 12 * 8 * 8


def test_smoke_run_measures_every_configuration(tmp_path):
    shared_path("realdata", "mnist_idx_pypi")
    work = tmp_path / "work"
    exp, res = smoke_run("research_mnist", work, "research_mnist.json")
    entries = res["entries"]
    base = entries["baseline/1701"]
    assert base["structure"]["conv_macs"] == BASE_CONV_MACS
    assert base["structure"]["layers"]["conv2"] == {"filters": 50, "channels": 20, "kernel": [5, 5],
                                                    "macs": 50 * 20 * 25 * 64}
    configs = exp.configs(smoke=True)
    assert {c["arm"] for c in configs} == {"force", "ssl"}
    assert [r["config"]["name"] for r in res["records"]] == [c["name"] for c in configs]
    for i, rec in enumerate(res["records"]):
        assert "error" not in rec, rec.get("error")
        e = entries[f"arm{i}"]
        assert 0.0 <= e["accuracy"] <= 1.0 and 0.0 <= rec["accuracy_compressed"] <= 1.0
        assert e["forward_b1"]["median_ms"] > 0 and e["forward_b64"]["rounds"] == 2
        if rec["config"].get("ranks") == {"conv2": 12}:
            assert e["structure"]["conv_macs"] == RANK12_CONV_MACS
            assert e["structure"]["layers"]["conv2"]["rank"] == 12
        assert rec["tuned"]["iters"] == 6 and rec["tuned"]["loss"]
        if rec["config"]["arm"] == "ssl":  # the pruned net: never more filters or channels than LeNet's
            conv = e["structure"]["layers"]
            assert conv["conv1"]["filters"] <= 20 and conv["conv2"]["channels"] == conv["conv1"]["filters"]
            assert e["structure"]["layers"]["ip1"]["inputs"] == 16 * conv["conv2"]["filters"]
    summary = {s["name"]: s for s in res["summary"]}
    ctrl = summary["force: no force (control), conv2 rank 12 (seed 1701)"]
    assert ctrl["macs_x"] == pytest.approx(BASE_CONV_MACS / RANK12_CONV_MACS)
    assert ctrl["met"]["macs"] is True
    doc = (work / "research_mnist.md").read_text()
    for c in configs:
        assert c["name"] in doc
    assert (work / "research_mnist.png").stat().st_size > 1000
    # every stage is cached: a second run trains nothing and reports the same accuracies
    assert exp.main(["--smoke", "--work", str(work), "--arms", "force"]) == 0
    again = json.loads((work / "research_mnist.json").read_text())
    assert again["entries"]["baseline/1701"]["accuracy"] == base["accuracy"]
