"""Every deploy-time layer case of ../shared/fixtures/layers, exported to ONNX and run by onnxruntime,
equals neocaffe's fp32 forward within 1e-5 of each output's largest magnitude (NaNs in place: Caffe's
pooling window past the input gives NaN for AVE and -FLT_MAX for MAX)."""
from __future__ import annotations

import pytest

from tests.conftest import SHARED, shared_path
from tests.export.helpers import TOLERANCE, deploy_cases, fixture_net, onnx_errors

pytest.importorskip("onnx")

FOLDER = SHARED / "fixtures" / "layers"
CASES = [c["name"] for c in deploy_cases(FOLDER)] if (FOLDER / "cases.json").exists() else ["(fixtures absent)"]


@pytest.mark.parametrize("name", CASES)
def test_layer_case_matches_onnxruntime(name):
    folder = shared_path("fixtures", "layers")
    net, inputs = fixture_net(folder, name)
    errors = onnx_errors(net, inputs)
    assert errors and max(errors.values()) <= TOLERANCE, errors


def test_the_deploy_cases_cover_the_hard_layers():
    """The cases named by the issue are among those exported (a renamed fixture must not drop one)."""
    shared_path("fixtures", "layers")
    names = set(CASES)
    for case in ("pool_max_k3s2_ceil", "pool_ave_k3s2_pad1", "pool_k2s3_empty_last_window_fwd", "lrn_across_alexnet",
                 "lrn_within_channel", "conv_group2_pad1", "ip_axis2", "softmax_axis1_4d", "eltwise_sum_coeff",
                 "flatten_axis2", "reshape_0_m1", "slice_points_axis1", "concat_axis1", "relu_inplace",
                 "prelu_channelwise", "bn_global_stats_scale"):
        assert case in names
    assert len(names) >= 70
