"""MobileNet-YOLO's LaneData (eric612/MobileNet-YOLO @ 69b4441c, lane_data_layer.cpp load_batch and
data_transformer.cpp Transform2): the label and segmentation label against a scalar port of the fork's loop, a
line drawn by hand, the crop box, the mirror (the image's and seg_label's, not the points'), the label's bounds,
and the layer's errors. The records written by convert_annoset: tests/tools/test_convert_annoset_lane.py."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe.data.datum import DatumError, array_to_datum, encode_array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.lane_anno import lane_targets
from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.lane_data import LaneData
from neocaffe.proto import caffe_pb2

F = np.float32


def fork_loop(lanes, box, seg_hw, mirror=False):
    """load_batch's loop as the fork writes it, point by point: (5 x 64 x 3 label, H' x W' seg_label)."""
    label = np.zeros((5, 64, 3), F)
    lab = np.zeros(seg_hw, np.uint8)
    box = [F(v) for v in box]
    crop_w, crop_h = F(box[2] - box[0]), F(box[3] - box[1])
    for i, pts in enumerate(lanes):
        count, px, py = 0, F(0), F(0)
        for j in range(len(pts)):
            x, y = pts[len(pts) - 1 - j]
            x, y = F(F(x) - box[0]) / crop_w, F(F(y) - box[1]) / crop_h
            inside = x >= 0 and x <= 1 and y >= 0 and y <= 1
            if i < 5 and j < 64:
                label[i, j] = [x, y, i if inside else -1]
            if count > 0 and inside:
                cols, rows = F(lab.shape[1]), F(lab.shape[0])
                cv2.line(lab, (int(x * cols), int(y * rows)), (int(px * cols), int(py * rows)), 255, 1)
            if inside:
                count, px, py = count + 1, x, y
    seg = lab.astype(F) * F(1 / 255.0)
    return label, seg[:, ::-1] if mirror else seg


def test_a_vertical_lane_is_one_column_of_ones():
    pts = np.array([[0.5, 0.25], [0.5, 0.5], [0.5, 0.75]], F)
    label, seg = lane_targets([pts], np.array([0, 0, 1, 1], F), False, (8, 8), "t")
    want = np.zeros((8, 8), F)
    want[2:7, 4] = F(255) * F(1 / 255.0)
    np.testing.assert_array_equal(seg[0], want)
    np.testing.assert_array_equal(label[0, :3], [[0.5, 0.75, 0], [0.5, 0.5, 0], [0.5, 0.25, 0]])


def test_targets_in_a_crop_box_with_mirror_and_outside_points():
    g = np.random.default_rng(0)
    lanes = [np.stack([g.uniform(-0.1, 1.1, 12), np.linspace(0.1, 0.95, 12)], 1).astype(F) for _ in range(4)]
    lanes[1][3, 0] = F(-2 / 1280)                      # TuSimple's "no point"
    box = np.array([0.1, 0.15, 0.85, 0.9], F)
    for mirror in (False, True):
        label, seg = lane_targets(lanes, box, mirror, (12, 20), "t")
        want_label, want_seg = fork_loop(lanes, box, (12, 20), mirror)
        np.testing.assert_array_equal(label, want_label)   # x is not mirrored (the fork's x = 1 - x is commented out)
        np.testing.assert_array_equal(seg[0], want_seg)
    assert set(np.unique(label[:4, :12, 2])) == {-1, 0, 1, 2, 3} and label[1, 8, 2] == -1
    assert seg.max() == F(255) * F(1 / 255.0) and label[4:].sum() == 0 and label[:, 12:].sum() == 0


def test_lanes_and_points_beyond_the_label_are_drawn_but_not_labelled(caplog):
    lanes = [np.stack([np.full(70, 0.1 + 0.12 * k), np.linspace(0.05, 0.95, 70)], 1).astype(F) for k in range(7)]
    label, seg = lane_targets(lanes, np.array([0, 0, 1, 1], F), False, (16, 16), "rec")
    assert "rec: 7 lanes of up to 70 points; the label holds 5 lanes of 64 points" in caplog.text
    want_label, want_seg = fork_loop(lanes, [0, 0, 1, 1], (16, 16))
    np.testing.assert_array_equal(label, want_label)
    np.testing.assert_array_equal(seg[0], want_seg)
    assert seg[0, :, int(F(0.1 + 0.12 * 6) * 16)].sum() > 0    # the 7th lane's line


def _lmdb(path, kind=caffe_pb2.AnnotatedDatum.LANE, n=4, encoded=True):
    g = np.random.default_rng(1)
    with DBWriter(str(path), "lmdb") as db:
        for i in range(n):
            anno = caffe_pb2.AnnotatedDatum(type=kind)
            img = g.integers(0, 256, (3, 20, 30), dtype=np.uint8)
            anno.datum.CopyFrom(encode_array_to_datum(img, -1, "png") if encoded else array_to_datum(img, -1))
            for k in range(2):
                grp = anno.annotation_group.add()
                for j in range(8):
                    grp.annotation.add(instance_id=j).lanes.CopyFrom(
                        caffe_pb2.LaneInfo(x=0.2 + 0.5 * k + 0.02 * j, y=0.1 + 0.1 * j))
            db.put(f"{i:08d}_{i}.png", anno.SerializeToString())
    return path


def _layer(path, tops=("data", "label", "seg_label"), anno="yolo_data_type: 1 seg_scales: 2", transform=""):
    text = ('name: "lanes" type: "LaneData" ' + " ".join(f'top: "{t}"' for t in tops) +
            f' data_param {{ source: "{path}" batch_size: 4 backend: LMDB }} transform_param {{ {transform}'
            ' resize_param { prob: 1 resize_mode: WARP height: 16 width: 24 } }'
            f' annotated_data_param {{ {anno} }}')
    return LaneData(text_format.Parse(text, caffe_pb2.LayerParameter()), [], TRAIN)


def test_jitter_batches_mirror_and_two_tops(tmp_path):
    path = _lmdb(tmp_path / "lanes")
    data, label, seg = _layer(path, transform="mirror: true")()
    assert tuple(data.shape) == (4, 3, 16, 24) and tuple(label.shape) == (4, 5, 64, 3)
    assert tuple(seg.shape) == (4, 1, 8, 12)
    assert set(np.unique(seg.numpy())) <= {0, F(255) * F(1 / 255.0)} and seg.sum() > 0
    assert set(np.unique(label[:, :2, :8, 2].numpy())) <= {-1, 0, 1} and label[:, 2:].abs().sum() == 0
    # the same draws without the seg_label top give the same label; setup reported the shapes forward gives
    two = _layer(path, tops=("data", "label"), transform="mirror: true")
    assert two.reshape([]) == [(4, 3, 16, 24), (4, 5, 64, 3)]
    d2, l2 = two()
    assert d2.shape == data.shape and l2.shape == label.shape
    # seg_resize_* (height x width) in place of seg_scales
    resized = _layer(path, anno="yolo_data_type: 1 seg_resize_width: 10 seg_resize_height: 6")
    assert resized.reshape([])[2] == (4, 1, 6, 10) and tuple(resized()[2].shape) == (4, 1, 6, 10)


def test_errors(tmp_path):
    path = _lmdb(tmp_path / "lanes")
    with pytest.raises(DatumError, match="none has been drawn in this batch yet.*yolo_data_type: 1"):
        _layer(path, anno="yolo_data_type: 0")()
    assert _layer(path, tops=("data",), anno="yolo_data_type: 0")()[0].shape == (4, 3, 16, 24)  # no label: no box
    with pytest.raises(LayerSetupError, match="seg_scales must be positive; received 0"):
        _layer(path, anno="yolo_data_type: 1 seg_scales: 0")
    boxes = _lmdb(tmp_path / "boxes", kind=caffe_pb2.AnnotatedDatum.BBOX, n=1)
    with pytest.raises(LayerSetupError, match="a BBOX record; LaneData reads lane records"):
        _layer(boxes)
    raw = _lmdb(tmp_path / "raw", n=1, encoded=False)
    with pytest.raises(LayerSetupError, match="LaneData reads encoded records"):
        _layer(raw)
    with pytest.raises(LayerSetupError, match="expand_param: LaneData expands only without distort_param"):
        _layer(path, transform="expand_param { prob: 0.5 max_expand_ratio: 2 }")
    # with a distort_param the fork never expands; distortion alone runs
    _layer(path, transform="expand_param { prob: 0.5 max_expand_ratio: 2 } distort_param { brightness_prob: 1 "
                           "brightness_delta: 30 }")()


# -- the fork's TuSimple train net, trimmed ----------------------------------------------------------------------
def _road_lmdb(path, n=8, size=(48, 80)):
    """Dark road images with 2 or 3 bright lanes drawn along their points, as LANE records (points as the lane
    reader stores them: x / width, row / height, bottom rows last; -2 where a lane has no point)."""
    g = np.random.default_rng(4)
    h, w = size
    rows = np.arange(8, h, 4)
    with DBWriter(str(path), "lmdb") as db:
        for i in range(n):
            img = g.integers(10, 40, (h, w, 3), dtype=np.uint8)
            anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.LANE)
            for k in range(2 + i % 2):
                x0, slope = g.uniform(0.15, 0.85) * w, g.uniform(-0.6, 0.6)
                xs = np.where(rows < 14, -2, np.round(x0 + slope * (rows - h / 2))).astype(int)
                pts = [(int(x), int(r)) for x, r in zip(xs, rows) if 0 <= x < w]
                for a, b in zip(pts, pts[1:]):
                    cv2.line(img, a, b, (230, 230, 230), 2)
                grp = anno.annotation_group.add()
                for j, (x, r) in enumerate(zip(xs, rows)):
                    grp.annotation.add(instance_id=j).lanes.CopyFrom(caffe_pb2.LaneInfo(x=F(x) / F(w), y=F(r) / F(h)))
            anno.datum.CopyFrom(encode_array_to_datum(img.transpose(2, 0, 1), -1, "png"))
            db.put(f"{i:08d}_road{i}.png", anno.SerializeToString())
    return path


def _tusimple_net(source):
    """models/tusimple/mobilenet_yolov3_lite_train.prototxt, trimmed: its LaneData layer as written (WARP 512
    scaled to 48, batch 4), a short MobileNet trunk down to stride 4 in place of its 40 layers and upsampling sums,
    and its head: conv16 (one channel), the silenced label, the Reduction pair and YoloSeg (object_scale 0.5)."""
    from tests.layers.test_yolo_loss import _conv

    data = f"""name: "MobileNet-YOLO-lanes-trimmed"
layer {{ name: "data" type: "LaneData" top: "data" top: "label" top: "seg_label" include {{ phase: TRAIN }}
  transform_param {{ scale: 0.007843 mirror: true mean_value: 127.5 mean_value: 127.5 mean_value: 127.5
    resize_param {{ prob: 1.0 resize_mode: WARP height: 48 width: 48 interp_mode: LINEAR interp_mode: AREA
      interp_mode: LANCZOS4 }}
    emit_constraint {{ emit_type: CENTER }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 32.0 contrast_prob: 0.5 contrast_lower: 0.5
      contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18.0 saturation_prob: 0.5 saturation_lower: 0.5
      saturation_upper: 1.5 random_order_prob: 0.0 }} }}
  data_param {{ source: "{source}" batch_size: 4 backend: LMDB }}
  annotated_data_param {{ yolo_data_type: 1 yolo_data_jitter: 0.4 seg_scales: 4
    label_map_file: "data/VOC0712/labelmap_voc.prototxt" }} }}
"""
    trunk = (_conv("conv0", "data", 16, s=2) + _conv("conv1/dw", "conv0", 16, dw=True)
             + _conv("conv1", "conv1/dw", 24, k=1) + _conv("conv2/dw", "conv1", 24, s=2, dw=True)
             + _conv("conv15", "conv2/dw", 32, k=1))
    head = """
layer { name: "conv16" type: "Convolution" bottom: "conv15" top: "conv16" param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 1 kernel_size: 1 pad: 0 stride: 1
  weight_filler { type: "msra" } bias_filler { value: 0 } } }
layer { name: "silence" type: "Silence" bottom: "label" phase: TRAIN }
layer { name: "reduction_h" type: "Reduction" bottom: "seg_label" top: "reduction_h" reduction_param { axis: 3 } }
layer { name: "reduction_w" type: "Reduction" bottom: "reduction_h" top: "reduction_w" reduction_param { axis: 2 } }
layer { name: "YoloSegLoss" type: "YoloSeg" bottom: "conv16" bottom: "seg_label" bottom: "reduction_w"
  top: "Seg_loss" loss_weight: 1 yolo_seg_param { object_scale: 0.5 } }
"""
    return data + trunk + head


def test_trimmed_tusimple_train_net_learns_the_lanes(tmp_path):
    from neocaffe.solver.solver import Solver

    _road_lmdb(tmp_path / "db")
    (tmp_path / "train.prototxt").write_text(_tusimple_net(tmp_path / "db"))
    solver = text_format.Parse(f'train_net: "{tmp_path / "train.prototxt"}" base_lr: 0.005 lr_policy: "fixed" '
                               'type: "RMSProp" weight_decay: 0.00005 max_iter: 25 display: 0 random_seed: 5 '
                               'snapshot_after_train: false solver_mode: CPU', caffe_pb2.SolverParameter())
    s = Solver(solver)
    losses = []
    for _ in range(25):
        s.step(1)
        losses.append(float(s.net.blob_data["Seg_loss"]))
        assert tuple(s.net.blob_data["seg_label"].shape) == (4, 1, 12, 12)
    losses = np.array(losses)
    print(f"trimmed tusimple: Seg_loss {losses[:5].mean():.3f} -> {losses[-5:].mean():.3f}")
    assert np.isfinite(losses).all() and losses[-5:].mean() < 0.7 * losses[:5].mean()
