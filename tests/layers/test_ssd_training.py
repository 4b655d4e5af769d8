"""SSD end to end on the CPU in seconds: convert_annoset writes an AnnotatedDatum LMDB from tiny images
with VOC XML (and JSON) boxes, AnnotatedData reads it with SSD's augmentations, and a small SSD net
(Normalize, PriorBox, Permute, MultiBoxLoss) trains on it with the loss falling."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.annotated import boxes_of, parse_annotated
from neocaffe.data.sources import DBReader
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TRAIN
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver
from neocaffe.tools import convert_annoset

LABELS = {"red": (1, (40, 40, 220)), "green": (2, (40, 200, 40))}


def _dataset(folder, n=24, size=32, seed=0):
    """Images with one or two coloured rectangles on noise, VOC XML files, a list and a label map."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir()
    lines, truth = [], []
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        objs = []
        for k in range(1 + i % 2):
            name = ("red", "green")[(i + k) % 2]
            w, h = rng.integers(8, 18, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            img[y:y + h, x:x + w] = LABELS[name][1]
            objs.append((name, int(x), int(y), int(x + w), int(y + h)))
        cv2.imwrite(str(folder / "img" / f"{i}.png"), img)
        xml = ["<annotation><size><width>%d</width><height>%d</height><depth>3</depth></size>" % (size, size)]
        for name, x0, y0, x1, y1 in objs:
            xml.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
                       f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
        (folder / "img" / f"{i}.xml").write_text("".join(xml) + "</annotation>")
        lines.append(f"img/{i}.png img/{i}.xml")
        truth.append(objs)
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    (folder / "labelmap.prototxt").write_text(
        'item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
        'item { name: "red" label: 1 display_name: "red" }\nitem { name: "green" label: 2 display_name: "green" }\n')
    return truth


def test_convert_annoset_stores_normalized_boxes(tmp_path):
    truth = _dataset(tmp_path, n=4)
    n = convert_annoset.convert(str(tmp_path) + "/", str(tmp_path / "list.txt"), str(tmp_path / "db"),
                                anno_type="detection", label_map_file=str(tmp_path / "labelmap.prototxt"),
                                encoded=True, encode_type="png")
    assert n == 4
    with DBReader(str(tmp_path / "db"), "lmdb") as reader:
        records = list(reader.items())
    assert [k.decode() for k, _ in records] == [f"{i:08d}_img/{i}.png" for i in range(4)]
    for (key, value), objs in zip(records, truth):
        anno = parse_annotated(value, "db")
        assert anno.type == caffe_pb2.AnnotatedDatum.BBOX and anno.datum.encoded
        boxes = boxes_of(anno)
        expect = sorted((LABELS[nm][0], x0 / 32, y0 / 32, x1 / 32, y1 / 32) for nm, x0, y0, x1, y1 in objs)
        got = sorted((int(lab), *map(float, b)) for lab, b in zip(boxes.label, boxes.box))
        np.testing.assert_allclose(np.array(got), np.array(expect), rtol=0, atol=1e-7)


def test_convert_annoset_json_and_console_script(tmp_path):
    img = np.full((20, 40, 3), 7, np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    (tmp_path / "a.json").write_text(json.dumps({"image": {"height": 20, "width": 40}, "annotation": [
        {"category_id": 3, "iscrowd": 1, "bbox": [4, 2, 10, 8]}, {"category_id": 3, "bbox": [20, 10, 8, 6]}]}))
    (tmp_path / "list.txt").write_text("a.jpg a.json\n")
    (tmp_path / "map.prototxt").write_text('item { name: "3" label: 5 }\n')
    rc = subprocess.run([sys.executable, "-m", "neocaffe.tools.convert_annoset", "--anno_type=detection",
                         "--label_type=json", f"--label_map_file={tmp_path / 'map.prototxt'}", f"{tmp_path}/",
                         str(tmp_path / "list.txt"), str(tmp_path / "db")], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert "Processed 1 files." in rc.stderr
    with DBReader(str(tmp_path / "db"), "lmdb") as reader:
        anno = parse_annotated(reader.peek()[1], "db")
    assert not anno.datum.encoded and (anno.datum.height, anno.datum.width) == (20, 40)
    (group,) = anno.annotation_group
    assert group.group_label == 5 and [a.instance_id for a in group.annotation] == [0, 1]
    b = group.annotation[0].bbox
    assert (b.xmin, b.ymin, b.xmax, b.ymax, b.difficult) == pytest.approx((0.1, 0.1, 0.35, 0.5, True))


NET = """
name: "tiny_ssd"
layer { name: "data" type: "AnnotatedData" top: "data" top: "label"
  transform_param { mirror: true mean_value: 64 mean_value: 64 mean_value: 64 scale: 0.015625
    resize_param { prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR interp_mode: AREA }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 16 contrast_prob: 0.5 contrast_lower: 0.8 contrast_upper: 1.2 }
    expand_param { prob: 0.3 max_expand_ratio: 1.5 } }
  data_param { source: "DB" batch_size: 8 backend: LMDB }
  annotated_data_param { label_map_file: "MAP"
    batch_sampler { max_sample: 1 max_trials: 1 }
    batch_sampler { sampler { min_scale: 0.6 max_scale: 1 min_aspect_ratio: 0.7 max_aspect_ratio: 1.4 }
      sample_constraint { min_jaccard_overlap: 0.5 } max_sample: 1 max_trials: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 24 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "fa" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "fa" top: "fb"
  convolution_param { num_output: 24 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu3" type: "ReLU" bottom: "fb" top: "fb" }
layer { name: "fa_norm" type: "Normalize" bottom: "fa" top: "fa_norm"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 10 } channel_shared: false } }
""" + "".join(f"""
layer {{ name: "{f}_loc" type: "Convolution" bottom: "{src}" top: "{f}_loc"
  convolution_param {{ num_output: 16 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "{f}_loc_perm" type: "Permute" bottom: "{f}_loc" top: "{f}_loc_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{f}_loc_flat" type: "Flatten" bottom: "{f}_loc_perm" top: "{f}_loc_flat" }}
layer {{ name: "{f}_conf" type: "Convolution" bottom: "{src}" top: "{f}_conf"
  convolution_param {{ num_output: 12 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "{f}_conf_perm" type: "Permute" bottom: "{f}_conf" top: "{f}_conf_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{f}_conf_flat" type: "Flatten" bottom: "{f}_conf_perm" top: "{f}_conf_flat" }}
layer {{ name: "{f}_prior" type: "PriorBox" bottom: "{src}" bottom: "data" top: "{f}_prior"
  prior_box_param {{ min_size: {mn} max_size: {mx} aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 }} }}""" for f, src, mn, mx in
                 (("fa", "fa_norm", 8, 14), ("fb", "fb", 14, 24))) + """
layer { name: "mbox_loc" type: "Concat" bottom: "fa_loc_flat" bottom: "fb_loc_flat" top: "mbox_loc" }
layer { name: "mbox_conf" type: "Concat" bottom: "fa_conf_flat" bottom: "fb_conf_flat" top: "mbox_conf" }
layer { name: "mbox_prior" type: "Concat" bottom: "fa_prior" bottom: "fb_prior" top: "mbox_prior" concat_param { axis: 2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_prior" bottom: "label"
  top: "mbox_loss" include { phase: TRAIN } propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 num_classes: 3
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
"""


def test_tiny_ssd_trains_from_convert_annoset_lmdb(tmp_path):
    _dataset(tmp_path)
    assert convert_annoset.run(["--anno_type=detection", f"--label_map_file={tmp_path / 'labelmap.prototxt'}",
                                "--encoded", "--encode_type=png", f"{tmp_path}/", str(tmp_path / "list.txt"),
                                str(tmp_path / "db")]) == 0
    net_text = NET.replace('"DB"', f'"{tmp_path / "db"}"').replace('"MAP"', f'"{tmp_path / "labelmap.prototxt"}"')
    (tmp_path / "train.prototxt").write_text(net_text)
    solver = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.002 lr_policy: "fixed" type: "Adam" '
                      'momentum: 0.9 momentum2: 0.999 weight_decay: 0.0005 max_iter: 120 display: 0 '
                      'snapshot_after_train: false random_seed: 3 solver_mode: CPU', solver)
    s = Solver(solver)
    losses = []
    for _ in range(120):
        s.step(1)
        losses.append(s.smoothed_loss)      # average_loss 1: this iteration's loss
    losses = np.array(losses)
    assert len(losses) == 120 and np.isfinite(losses).all()
    first, last = losses[:15].mean(), losses[-15:].mean()
    print(f"tiny SSD MultiBoxLoss: first 15 iterations {first:.3f}, last 15 {last:.3f}")
    assert last < 0.7 * first, f"MultiBoxLoss did not fall enough: first 15 iterations {first:.3f}, last 15 {last:.3f}"


def test_annotated_data_batch_is_seeded_and_boxes_stay_inside(tmp_path):
    _dataset(tmp_path, n=8)
    convert_annoset.convert(f"{tmp_path}/", str(tmp_path / "list.txt"), str(tmp_path / "db"), anno_type="detection",
                            label_map_file=str(tmp_path / "labelmap.prototxt"), encoded=True, encode_type="png")
    data_layer = NET.split('layer { name: "conv1"')[0].replace('"DB"', f'"{tmp_path / "db"}"')
    outs = []
    for _ in range(2):
        from neocaffe import rng
        rng.set_seed(5)
        net = Net(read_net(data_layer + ' layer { name: "s" type: "Silence" bottom: "data" bottom: "label" }'),
                  TRAIN)
        net.forward()
        outs.append((net.blob_data["data"].clone(), net.blob_data["label"].clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    data, label = outs[0]
    assert data.shape == (8, 3, 32, 32)
    rows = label.reshape(-1, 8)
    assert rows.shape[0] >= 1 and set(rows[:, 0].tolist()) <= set(range(8))
    assert ((rows[:, 3:7] >= 0) & (rows[:, 3:7] <= 1)).all()
    assert (rows[:, 5] > rows[:, 3]).all() and (rows[:, 6] > rows[:, 4]).all()
