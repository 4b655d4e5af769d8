"""Every real-Caffe layer case in ../shared/fixtures/layers, forward and backward, on CPU (and CUDA)."""
from __future__ import annotations

import pytest

from tests.conftest import SHARED, shared_path
from tests.layers.golden import load_cases, run_case

FOLDER = SHARED / "fixtures" / "layers"
CASES = load_cases(FOLDER) if (FOLDER / "cases.json").exists() else []
OK = [c for c in CASES if c["status"] == "ok"]
IDS = [c["name"] for c in OK]


@pytest.mark.parametrize("case", OK or [None], ids=IDS or ["no-fixtures"])
def test_layer_matches_caffe(case):
    folder = shared_path("fixtures", "layers")
    run_case(folder, case)


@pytest.mark.gpu
@pytest.mark.parametrize("case", OK or [None], ids=IDS or ["no-fixtures"])
def test_layer_matches_caffe_cuda(case):
    folder = shared_path("fixtures", "layers")
    run_case(folder, case, device="cuda")
