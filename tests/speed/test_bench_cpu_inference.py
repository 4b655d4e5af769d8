"""benchmarks/bench_cpu_inference.py's code path on the smallest zoo net, one short round (timing values
are never tested): the JSON's per-batch entries, their agreement with OpenCV and fp32, and a batch that
cannot run recorded with its reason and named in the summary instead of timed."""
from __future__ import annotations

import json

import pytest

from tests.conftest import shared_path


@pytest.fixture(scope="module")
def bench():
    shared_path("realdata", "zoo_public_2026")
    from benchmarks import bench_cpu_inference
    return bench_cpu_inference


def test_a_small_net_is_timed_in_each_mode_and_agrees_with_opencv(bench, tmp_path):
    import cv2
    import torch

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    out = tmp_path / "r.json"
    try:
        code = bench.main(["--models", "mtcnn_det1", "--modes", "default,fold_bn+frozen", "--batches", "1,2",
                          "--rounds", "1", "--round-ms", "1", "--out", str(out)])
    finally:  # the bench sets both libraries' thread counts per batch
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    assert code == 0
    report = json.loads(out.read_text())
    entry = report["models"]["mtcnn_det1"]
    for key in ("b1_default", "b1_fold_bn+frozen", "b2_default", "b2_fold_bn+frozen"):
        assert entry[key]["max_rel_err_vs_opencv"] <= 1e-5 and entry[key]["max_rel_dev_vs_fp32"] <= 1e-5, key
        assert report["summary"][key]["models"] == 1 and report["summary"][key]["left_out"] == []
    assert entry["b2_default"]["threads"] >= 1 and entry["b1_default"]["threads"] == 1


def test_a_skipped_batch_is_recorded_for_every_mode(bench, capsys):
    res: dict = {}
    bench.skip(res, "m", 16, ["default", "frozen"], "OpenCV cannot run batch 16:\n  its Proposal takes one image")
    assert res == {"skipped_b16_default": "OpenCV cannot run batch 16: its Proposal takes one image",
                   "skipped_b16_frozen": "OpenCV cannot run batch 16: its Proposal takes one image"}
    assert "b16" in capsys.readouterr().out
