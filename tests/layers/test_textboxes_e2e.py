"""TextBoxes++ end to end on the CPU in seconds (MhLiao/TextBoxes_plusplus @ 39d4898, its examples/text/train.py
net shape, shrunk): convert_annoset writes an LMDB from the fork's XML; a train net (AnnotatedData's 16-column
rows -> PriorBox with denser_prior_boxes -> MultiBoxLoss's 12-offset quadrilateral form) trains SGD steps with the
loss falling, the fork's full augmentation runs; the solver's test net (DetectionOutput use_polygon -> 15 columns ->
DetectionEvaluate against the 16-column rows) gives a detection mAP."""
from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TRAIN
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver
from tests.layers.textboxes_data import convert, write_dataset

_AUG = """mirror: false emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5 contrast_upper: 1.5
      hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5 random_order_prob: 0 }
    expand_param { prob: 0.5 max_expand_ratio: 2 }"""
_SAMPLERS = """batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 }
      sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 50 }"""

_BODY = """
layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: PHASE }
  transform_param { AUG mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.0078125
    resize_param { prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR } }
  data_param { source: "SOURCE" batch_size: BATCH backend: LMDB }
  annotated_data_param { label_map_file: "MAP" SAMPLERS } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "fa"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "fa" top: "fa" }
layer { name: "loc" type: "Convolution" bottom: "fa" top: "loc"
  convolution_param { num_output: 72 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "mbox_loc" type: "Flatten" bottom: "loc_perm" top: "mbox_loc" }
layer { name: "conf" type: "Convolution" bottom: "fa" top: "conf"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "mbox_conf" type: "Flatten" bottom: "conf_perm" top: "mbox_conf" }
layer { name: "mbox_priorbox" type: "PriorBox" bottom: "fa" bottom: "data" top: "mbox_priorbox"
  prior_box_param { min_size: 10 max_size: 20 aspect_ratio: 3 flip: false clip: false denser_prior_boxes: true
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 } }
"""
_LOSS = """
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox"
  bottom: "label" top: "mbox_loss" include { phase: TRAIN }
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 0.2 num_classes: 2
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: false neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE use_polygon: true } }
"""
_EVAL = """
layer { name: "conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "conf_reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax" softmax_param { axis: 2 } }
layer { name: "conf_flatten" type: "Flatten" bottom: "conf_softmax" top: "conf_flatten" flatten_param { axis: 1 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "conf_flatten" bottom: "mbox_priorbox"
  top: "detection_out" include { phase: TEST }
  detection_output_param { num_classes: 2 share_location: true background_label_id: 0 use_polygon: true
    nms_param { nms_threshold: 0.45 top_k: 50 } code_type: CENTER_SIZE keep_top_k: 20 confidence_threshold: 0.01 } }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" bottom: "label" top: "detection_eval"
  include { phase: TEST }
  detection_evaluate_param { num_classes: 2 background_label_id: 0 overlap_threshold: 0.5 evaluate_difficult_gt: false } }
"""


def _net(tmp_path, phase, batch, aug="", samplers="", tail=_LOSS):
    return (_BODY.replace("PHASE", phase).replace("AUG", aug).replace("SAMPLERS", samplers)
            .replace("BATCH", str(batch)).replace("SOURCE", str(tmp_path / "db"))
            .replace("MAP", str(tmp_path / "labelmap.prototxt")) + tail)


def test_tiny_textboxes_trains_from_the_forks_lmdb_and_tests_with_polygon_evaluation(tmp_path):
    write_dataset(tmp_path, n=6, size=32, seed=1)
    convert(tmp_path)
    (tmp_path / "train.prototxt").write_text(_net(tmp_path, "TRAIN", 6))   # every batch the same 6 records
    (tmp_path / "test.prototxt").write_text(_net(tmp_path, "TEST", 3, tail=_EVAL))
    solver = caffe_pb2.SolverParameter()
    text_format.Parse(f'train_net: "{tmp_path / "train.prototxt"}" test_net: "{tmp_path / "test.prototxt"}" '
                      'test_iter: 2 test_interval: 1000 test_initialization: false eval_type: "detection" '
                      'ap_version: "11point" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 25 display: 0 '
                      'snapshot_after_train: false random_seed: 3 solver_mode: CPU', solver)
    s = Solver(solver)
    losses = []
    for _ in range(25):
        s.step(1)
        losses.append(s.smoothed_loss)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"tiny TextBoxes++ from its LMDB: loss {first:.3f} -> {last:.3f}")
    assert tuple(s.net.blob_data["label"].shape)[-1] == 16
    assert np.isfinite(losses).all() and last < 0.6 * first, (first, last)
    (m_ap,) = s.test(0)
    test_net = s.test_nets[0]
    assert tuple(test_net.blob_data["detection_out"].shape)[-1] == 15
    assert tuple(test_net.blob_data["label"].shape)[-1] == 16
    print(f"test mAP {m_ap:.3f}")
    assert 0.2 < m_ap <= 1        # 25 steps on these 6 words: about 0.8


def test_the_forks_train_augmentation_feeds_the_quad_loss(tmp_path):
    """The fork's examples/text transform (distortion, expansion, samplers, emit CENTER, WARP) and MultiBoxLoss
    with use_polygon unset (a head of 12 per prior is the fork's form): finite losses, 16-column rows inside."""
    write_dataset(tmp_path, n=6, size=32, seed=2)
    convert(tmp_path)
    net = Net(read_net(_net(tmp_path, "TRAIN", 4, _AUG, _SAMPLERS).replace(" use_polygon: true", "")), TRAIN)
    for _ in range(3):
        loss = float(net.forward())
        rows = net.blob_data["label"].reshape(-1, 16)
        assert np.isfinite(loss) and rows.shape[0] >= 1
        rows = rows[rows[:, 0] >= 0]
        assert ((rows[:, 3:7] >= 0) & (rows[:, 3:7] <= 1)).all()
