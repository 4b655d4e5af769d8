"""Fast R-CNN / R-FCN style nets train on the CPU in seconds: ROIPooling (or PSROIPooling) on a conv
feature map, a classifier with SoftmaxWithLoss and a box regressor with SmoothL1Loss and its inside and
outside weights, stepped by pycaffe's SGDSolver (the way py-faster-rcnn's train_net.py drives Caffe)."""
from __future__ import annotations

import numpy as np
import pytest

import caffe

INPUT = '''
layer { name: "in" type: "Input" top: "data" top: "rois" top: "labels" top: "targets" top: "w_in" top: "w_out"
  input_param { shape { dim: 2 dim: 3 dim: 24 dim: 24 } shape { dim: 8 dim: 5 } shape { dim: 8 }
                shape { dim: 8 dim: 12 } shape { dim: 8 dim: 12 } shape { dim: 8 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
'''

FAST_RCNN = INPUT + '''
layer { name: "roi_pool" type: "ROIPooling" bottom: "pool1" bottom: "rois" top: "roi_pool"
  roi_pooling_param { pooled_h: 3 pooled_w: 3 spatial_scale: 0.5 } }
layer { name: "fc6" type: "InnerProduct" bottom: "roi_pool" top: "fc6"
  inner_product_param { num_output: 32 weight_filler { type: "xavier" } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "cls_score" type: "InnerProduct" bottom: "fc6" top: "cls_score"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "fc6" top: "bbox_pred"
  inner_product_param { num_output: 12 weight_filler { type: "xavier" } } }
layer { name: "loss_cls" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels" top: "loss_cls" }
layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "targets" bottom: "w_in" bottom: "w_out"
  top: "loss_bbox" }
'''

R_FCN = INPUT + '''
layer { name: "rfcn_cls" type: "Convolution" bottom: "pool1" top: "rfcn_cls"
  convolution_param { num_output: 12 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "rfcn_bbox" type: "Convolution" bottom: "pool1" top: "rfcn_bbox"
  convolution_param { num_output: 48 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "psroi_cls" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois" top: "psroi_cls"
  psroi_pooling_param { spatial_scale: 0.5 output_dim: 3 group_size: 2 } }
layer { name: "psroi_bbox" type: "PSROIPooling" bottom: "rfcn_bbox" bottom: "rois" top: "psroi_bbox"
  psroi_pooling_param { spatial_scale: 0.5 output_dim: 12 group_size: 2 } }
layer { name: "cls_score" type: "Pooling" bottom: "psroi_cls" top: "cls_score"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "bbox_pred" type: "Pooling" bottom: "psroi_bbox" top: "bbox_pred"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "loss_cls" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels" top: "loss_cls" }
layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "targets" bottom: "w_in" bottom: "w_out"
  top: "loss_bbox" }
'''


def _batch(rng):
    """Two images with a bright square per class; RoIs on them (some background), labels, box targets and
    py-faster-rcnn's weights (inside: 1 on the 4 columns of the RoI's class; outside: 1 / #RoIs there)."""
    data = rng.uniform(0, 0.2, (2, 3, 24, 24)).astype(np.float32)
    rois, labels = [], []
    for i in range(8):
        b, cls = i % 2, i % 3
        x, y = rng.integers(0, 14, 2)
        if cls:
            data[b, cls, y:y + 8, x:x + 8] = 1.0
        rois.append([b, x + rng.uniform(-1, 1), y + rng.uniform(-1, 1), x + 8 + rng.uniform(-1, 1), y + 8])
        labels.append(cls)
    targets = np.zeros((8, 12), np.float32)
    w_in = np.zeros((8, 12), np.float32)
    for i, cls in enumerate(labels):
        targets[i, 4 * cls:4 * cls + 4] = rng.uniform(-0.5, 0.5, 4)
        w_in[i, 4 * cls:4 * cls + 4] = 1.0
    w_out = (w_in > 0).astype(np.float32) / 8
    return {"data": data, "rois": np.array(rois, np.float32), "labels": np.array(labels, np.float32),
            "targets": targets, "w_in": w_in, "w_out": w_out}


@pytest.mark.parametrize("net,lr", [(FAST_RCNN, 0.05), (R_FCN, 0.5)], ids=["fast_rcnn", "r_fcn"])
def test_rcnn_style_net_takes_sgd_steps_and_its_loss_falls(net, lr, tmp_path):
    (tmp_path / "train.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: {lr} momentum: 0.9 weight_decay: 0.0005 '
        'lr_policy: "fixed" display: 0 max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 3')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    for name, value in _batch(np.random.default_rng(0)).items():
        solver.net.blobs[name].data[...] = value
    conv_before = solver.net.params["conv1"][0].data.copy()

    def losses():
        out = solver.net.forward()
        return float(out["loss_cls"]), float(out["loss_bbox"])

    first = losses()
    solver.step(20)
    last = losses()
    assert sum(last) < 0.5 * sum(first), (first, last)
    # the RoI pooling layer passed diffs down to the convolution below it
    assert np.abs(solver.net.params["conv1"][0].data - conv_before).max() > 1e-4
