"""Smoke test of benchmarks/bench_dense_crf.py (not its figures): a small image through DeepLab's CRF
settings at one and two threads -> timings and the split into lattice, filter and normalization -> json."""
from __future__ import annotations

import json

from tests.research.scripts import load_benchmark


def test_smoke_run_times_the_layer(tmp_path):
    bench = load_benchmark("bench_dense_crf")
    out = tmp_path / "dense_crf.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["image"] == [50, 60] and res["labels"] == 5
    assert [r["threads"] for r in res["runs"]] == [1, 2]
    for r in res["runs"]:
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert {"lattice_s", "filter_s", "exp_and_normalize_s"} <= set(r)
