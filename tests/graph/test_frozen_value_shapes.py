"""The frozen inference mode and layers whose top shape depends on the bottoms' values (DetectionOutput,
YoloDetectionOutput, Yolov3DetectionOutput, Proposal, Filter, DetectionEvaluate): a trace would keep the first input's row
count, so such a net runs on the lean path and gives the eager results for every input."""
from __future__ import annotations

import numpy as np
import torch
from google.protobuf import text_format

from neocaffe.export.modes import InferenceModes
from neocaffe.graph.net import Net
from neocaffe.layers import layer_types
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

P = 40
NET = f'''
layer {{ name: "in" type: "Input" top: "loc" top: "conf" top: "prior" input_param {{ shape {{ dim: 1 dim: {P * 4} }}
  shape {{ dim: 1 dim: {P * 2} }} shape {{ dim: 1 dim: 2 dim: {P * 4} }} }} }}
layer {{ name: "sc" type: "Scale" bottom: "conf" top: "conf2" scale_param {{ axis: 0 num_axes: 0
  filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf2" bottom: "prior" top: "d"
  detection_output_param {{ num_classes: 2 share_location: true background_label_id: 0
  nms_param {{ nms_threshold: 0.45 top_k: 100 }} code_type: CENTER_SIZE keep_top_k: 100 confidence_threshold: 0.3 }} }}
'''


def _inputs(seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    c = r.uniform(0, 1, (P, 1))
    xy = r.uniform(0, 0.9, (P, 2))
    prior = np.concatenate([xy, xy + 0.1], 1).reshape(1, -1)
    return {"loc": np.zeros((1, P * 4), np.float32),
            "conf": np.concatenate([1 - c, c], 1).reshape(1, -1).astype(np.float32),
            "prior": np.stack([prior, np.full_like(prior, 0.1)], 1).astype(np.float32)}


def _run(net: Net, inputs: dict[str, np.ndarray]) -> torch.Tensor:
    for k, v in inputs.items():
        net.set_blob(k, torch.from_numpy(v))
    net.forward()
    return net.blob_data["d"].clone()


def test_frozen_mode_runs_a_detection_net_lean_and_equals_eager_for_every_input():
    text = text_format.Parse(NET, caffe_pb2.NetParameter())
    eager = Net(text, caffe_pb2.TEST)
    frozen = InferenceModes(frozen=True).apply(Net(text, caffe_pb2.TEST))
    counts = set()
    for seed in range(3):
        a, b = _run(eager, _inputs(seed)), _run(frozen, _inputs(seed))
        counts.add(a.shape[2])
        assert torch.equal(a, b), seed
    assert len(counts) > 1  # the detection count did change with the input
    assert frozen.frozen.failed == "layer 'det' (DetectionOutput) cannot be traced"


def test_the_value_dependent_layer_types():
    flagged = {t for t in layer_types() if get_layer_class(t).value_dependent_shape}
    assert flagged == {"DetectionOutput", "DetectionEvaluate", "YoloDetectionOutput", "Yolov3DetectionOutput",
                       "Proposal", "Filter",
                       # cascade-rcnn's: kept boxes / routed RoIs / sampled RoIs / detections depend on the values
                       "BoxGroupOutput", "DecodeBBox", "FrcnnOutput", "ProposalTarget", "ScaleRoute",
                       "FrcnnProposal", "FrcnnProposalTarget"}  # D-X-Y/caffe-faster-rcnn's
