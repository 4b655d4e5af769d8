"""benchmarks/gpu_check.sh (issue 19's GPU check): its CPU dry run's plumbing, and how gpu_combine.py
reads the parts and judges the targets."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, shared_path

sys.path.insert(0, str(REPO / "benchmarks"))
gpu_combine = pytest.importorskip("gpu_combine")


def _check(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_skips_cuda_and_checks_the_zoo_plumbing_on_the_cpu(tmp_path):
    shared_path("realdata", "zoo_public_2026", "mtcnn_det1")
    proc = _check(tmp_path, "--dry-run", "zoo", "compile", GPU_CHECK_ZOO_MODELS="mtcnn_det1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "DRY RUN (--dry-run): the CUDA steps are skipped" in proc.stdout
    steps = {line.split("\t")[0]: line.split("\t")[1] for line in (tmp_path / "steps.tsv").read_text().splitlines()}
    assert steps == {"setup": "ok", "zoo": "ok", "compile": "skipped: needs CUDA"}
    result = json.loads((tmp_path / "suite_cpu_dryrun.json").read_text())
    assert result["dry_run"] is True and not (tmp_path / "suite_cuda.json").exists()
    row = result["zoo_parity"]["models"]["mtcnn_det1"]
    assert row["status"] == "ok" and row["max_rel_error"] == 0.0 and row["weights"] == "shipped"
    z = result["targets"]["zoo_parity"]  # a dry run judges but never says "met"
    assert z["met"] is None and z["dry_run_would_say"] is True and z["value"]["ok"] == 1
    assert result["targets"]["bf16_images_per_s"]["dry_run_would_say"] is None  # nothing measured
    assert "step zoo: ok" in (tmp_path / "gpu_check.log").read_text()


def test_unknown_step_is_refused(tmp_path):
    proc = _check(tmp_path, "--dry-run", "bench")
    assert proc.returncode == 2 and "unknown argument 'bench'" in proc.stderr


def _suite(bf16: float, tf32: float, ratio: float, e2e: float, force_pct: float) -> dict:
    modes = {"fp32": {"neocaffe": {"images_per_s": 1000.0}, "torch_nn": {"images_per_s": 1000.0 / ratio},
                      "ours_over_torch": ratio},
             "tf32": {"neocaffe": {"images_per_s": tf32}, "ours_over_torch": 1.2},
             "bf16": {"neocaffe": {"images_per_s": bf16 / 2}},
             "bf16+channels_last+cudnn_benchmark": {"neocaffe": {"images_per_s": bf16}}}
    return {"device": "NVIDIA H200", "train": {"modes": modes},
            "e2e": {"modes": {"fp32": {"images_per_s": e2e * 1000.0}}},
            "force": {"force_batched": {"overhead_pct": force_pct}}}


def test_targets_judge_the_figures_and_say_which_mode():
    t = gpu_combine.targets(_suite(31000, 16000, 1.05, 0.85, 3.0), {}, {})
    assert t["bf16_images_per_s"]["met"] is True and t["bf16_images_per_s"]["mode"] == "bf16+channels_last+cudnn_benchmark"
    assert t["tf32_images_per_s"]["met"] is True and t["ours_over_torch_every_mode"]["value"] == 1.05
    assert t["lmdb_e2e_share_of_compute"]["value"] == 0.85 and t["force_overhead_pct"]["met"] is True
    assert t["pytest_gpu_all_pass"]["met"] is None and t["zoo_parity"]["met"] is None
    t = gpu_combine.targets(_suite(29000, 14000, 0.97, 0.79, 5.5), {}, {"summary": {"ok": 6, "differs": 1, "error": 0,
                                                                                    "unsupported": 5}})
    assert [t[k]["met"] for k in ("bf16_images_per_s", "tf32_images_per_s", "ours_over_torch_every_mode",
                                  "lmdb_e2e_share_of_compute", "force_overhead_pct", "zoo_parity")] == [False] * 6


def test_junit_counts_and_failures_and_merging_a_rerun(tmp_path):
    xml = tmp_path / "pytest_gpu.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1" time="2.5">'
                   '<testcase classname="tests.a" name="ok"/><testcase classname="tests.a" name="ok2"/>'
                   '<testcase classname="tests.a" name="bad"><failure message="assert 1 == 2"/></testcase>'
                   '<testcase classname="tests.b" name="s"><skipped message="needs a CUDA device"/></testcase>'
                   '</testsuite></testsuites>')
    j = gpu_combine.read_junit(xml)
    assert (j["tests"], j["passed"], j["failures"], j["skipped"]) == (4, 2, 1, 1)
    assert j["not_passed"] == [{"test": "tests.a::bad", "failure": "assert 1 == 2"}]
    assert gpu_combine.targets({}, j, {})["pytest_gpu_all_pass"]["met"] is False
    old = {"steps": {"pytest": {"status": "failed (exit 1)"}, "train": {"status": "ok"}}, "pytest_gpu": j,
           "suite": _suite(20000, 16000, 1.1, 0.9, 1.0)}
    fixed = dict(j, failures=0, passed=3, not_passed=[])
    new = {"steps": {"pytest": {"status": "ok"}, "train": {"status": "skipped: out of time"}}, "pytest_gpu": fixed}
    m = gpu_combine.merge(old, new)
    assert m["steps"]["pytest"]["status"] == "ok" and m["steps"]["train"]["status"] == "ok"  # a skip keeps the old
    assert m["targets"]["pytest_gpu_all_pass"]["met"] is True and m["targets"]["bf16_images_per_s"]["met"] is False


def test_zoo_parity_reports_an_unsupported_layer_and_compares_a_supported_net(tmp_path):
    zoo_parity = pytest.importorskip("zoo_parity")
    from benchmarks.zoo import ZooModel

    bad = tmp_path / "bad.prototxt"
    bad.write_text('input: "data" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 } '
                   'layer { name: "x" type: "NoSuchLayerType" bottom: "data" top: "x" }')
    row = zoo_parity.parity(ZooModel("bad", bad, None), "cpu", tmp_path, 1e-5)
    assert row["status"].startswith("unsupported: ") and "NoSuchLayerType" in row["status"]
    good = tmp_path / "good.prototxt"
    good.write_text('input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 } layer { name: "c" type: "Convolution" '
                    'bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }')
    row = zoo_parity.parity(ZooModel("good", good, None), "cpu", tmp_path, 1e-5)
    assert row["status"] == "ok" and row["outputs"]["c"]["shape"] == [2, 4, 6, 6] and row["max_rel_error"] == 0.0
    assert (tmp_path / "good.caffemodel").exists() and row["weights"] == "random (seed 0)"


def test_rows_in_another_order_are_matched_and_real_differences_are_not():
    zoo_parity = pytest.importorskip("zoo_parity")
    ref = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    swapped = ref[[1, 0, 2, 3, 5, 4]]
    assert zoo_parity.row_matched_error(swapped, ref) == 0.0
    off = swapped.copy()
    off[2, 3] += 0.5
    assert zoo_parity.row_matched_error(off, ref) == pytest.approx(0.5 / np.abs(ref).max(), rel=1e-6)
    twice = ref.copy()
    twice[1] = ref[0]  # one CPU row twice: no pairing uses each once
    assert zoo_parity.row_matched_error(twice, ref) is None
    assert zoo_parity.row_matched_error(ref[:1], ref[:1]) is None and zoo_parity.row_matched_error(ref, ref[:5]) is None


def test_an_incomplete_zoo_run_cannot_meet_its_target_but_can_miss_it():
    done = {"ok": 3, "differs": 0, "error": 0, "unsupported": 0}
    t = gpu_combine.targets({}, {}, {"summary": done, "incomplete": "3 of 12 models done when written"})
    assert t["zoo_parity"]["met"] is None and t["zoo_parity"]["value"]["incomplete"].startswith("3 of 12")
    t = gpu_combine.targets({}, {}, {"summary": dict(done, differs=1), "incomplete": "4 of 12 models done"})
    assert t["zoo_parity"]["met"] is False
    old = {"steps": {"zoo": {"status": "timed out after 90s"}},
           "zoo_parity": {"models": {"a": {"status": "ok"}}, "incomplete": "1 of 2 models done"}}
    new = {"steps": {"zoo": {"status": "ok"}}, "zoo_parity": {"models": {"b": {"status": "ok"}}}}
    m = gpu_combine.merge(old, new)
    assert "incomplete" not in m["zoo_parity"] and m["targets"]["zoo_parity"]["met"] is True


def test_a_pytest_run_killed_before_its_junit_is_read_from_its_verbose_lines(tmp_path):
    (tmp_path / "pytest_gpu.txt").write_text(
        "[gw0] [  7%] PASSED tests/graph/test_a.py::test_one[x] \n"
        "[gw1] [ 15%] FAILED tests/layers/test_b.py::test_two \n"
        "tests/data/test_c.py::test_three SKIPPED (needs a CUDA device) [ 20%]\n"
        "tests/data/test_c.py::test_four PASSED [ 25%]\n"
        "FAILED tests/layers/test_b.py::test_two - AssertionError: max |diff|\n")
    j = gpu_combine.read_pytest_text(tmp_path / "pytest_gpu.txt")
    assert (j["tests"], j["passed"], j["failures"], j["skipped"]) == (4, 2, 1, 1) and "incomplete" in j
    assert j["not_passed"] == [{"test": "tests/layers/test_b.py::test_two", "failed": ""}]
    t = gpu_combine.targets({}, j, {})["pytest_gpu_all_pass"]
    assert t["met"] is False and "incomplete" in t["value"]
    j["failures"], j["passed"] = 0, 3
    assert gpu_combine.targets({}, j, {})["pytest_gpu_all_pass"]["met"] is None  # passing so far is not all
    assert gpu_combine.combine(tmp_path, dry_run=False)["pytest_gpu"]["failures"] == 1  # no XML: the text
    assert gpu_combine.read_pytest_text(tmp_path / "absent.txt") == {}
