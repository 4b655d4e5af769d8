"""MobileNet-SSD's DetectionOutput box lists equal OpenCV dnn's, with detections to compare.

With the zoo's random weights no class scores above the prototxt's confidence_threshold (0.25), so the
zoo test compares empty lists. Here the same net and weights run with the threshold lowered: once so
that a few dozen boxes survive NMS, once so that keep_top_k (100) cuts the list."""
from __future__ import annotations

import pytest

from benchmarks import zoo
from neocaffe.io.prototxt import read_prototxt, to_text
from neocaffe.proto import caffe_pb2
from tests.conftest import shared_path


def _with_threshold(prototxt, threshold: float, folder):
    net = read_prototxt(str(prototxt), caffe_pb2.NetParameter)
    for layer in net.layer:
        if layer.type == "DetectionOutput":
            layer.detection_output_param.confidence_threshold = threshold
    path = folder / "deploy.prototxt"
    path.write_text(to_text(net))
    return path


@pytest.mark.parametrize("threshold,full", [(0.066, False), (0.01, True)])
def test_mobilenet_ssd_detections_match_opencv(threshold, full, tmp_path):
    shared_path("realdata", "zoo_public_2026", "mobilenet_ssd")
    model = zoo.ZooModel("mobilenet_ssd", _with_threshold(zoo.zoo_model("mobilenet_ssd").prototxt, threshold,
                                                         tmp_path), None)
    net = zoo.build(model)
    weights = zoo.model_weights(model, net, tmp_path)
    inputs = zoo.model_inputs(net)
    ours = zoo.neocaffe_forward(net, inputs)["detection_out"]
    ref = zoo.opencv_forward(model.prototxt, weights, inputs, {"detection_out": "detection_out"})["detection_out"]
    rows = zoo.detection_rows(ours)
    assert len(rows) > 0
    assert (len(rows) == 100) == full              # keep_top_k: 100 in the prototxt
    assert ours.shape == (1, 1, len(rows), 7)      # Caffe's top: exactly the detections
    err = zoo.detection_error(ours, ref)
    assert err <= 1e-5, f"detections differ from OpenCV's by {err:.2e} of their scale"
