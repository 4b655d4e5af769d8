"""Cascade R-CNN's DetectionData and EvalData (zhaoweicai/cascade-rcnn @ 2252f46) against the loop ports of
``load_batch`` in tests/layers/cascade_train_reference.py, for the same draws; shapes; list orders; resume."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.annotated_batches import distort
from neocaffe.data.cascade_windows import list_order, read_cascade_windows
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import cascade_train_reference as ref

SIZES = [(48, 40), (40, 56), (64, 48), (36, 36), (30, 50)]


def write_windows(folder, sizes=SIZES, seed=0, big=False) -> str:
    """A window file of the fork's format with colour images of ``sizes`` (h, w), 0-3 boxes (some ignored or
    difficult; ``big``: 1-2 boxes of half the image or more) and 0-1 regions of no interest each."""
    g = np.random.default_rng(seed)
    lines = []
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"im{i}.png"), g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        boxes = []
        for _ in range(int(g.integers(1, 3)) if big else int(g.integers(0, 4)) if i else 2):
            if big:
                x1, y1 = int(g.integers(0, w // 4)), int(g.integers(0, h // 4))
                x2, y2 = int(g.integers(x1 + w // 2, w)), int(g.integers(y1 + h // 2, h))
            else:
                x1, y1 = int(g.integers(0, w - 12)), int(g.integers(0, h - 12))
                x2, y2 = int(g.integers(x1 + 4, w)), int(g.integers(y1 + 4, h))
            boxes.append(f"{int(g.integers(1, 4))} {int(g.random() < 0.2)} {int(g.random() < 0.2)} {x1} {y1} {x2} {y2}")
        roni = [f"0 0 {w // 3} {h // 4}"] if i % 2 else []
        lines += [f"# {i}", f"im{i}.png", "3", str(h), str(w), str(len(boxes)), *boxes, str(len(roni)), *roni]
    path = folder / "windows.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


DISTORT = ('distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5 '
           'contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5 saturation_lower: 0.5 '
           'saturation_upper: 1.5 }')
CASES = [
    # short/long with multiscale about a box, aspect jitter, anchor margins, random_aspect groups, distortion
    ('batch_size: 2 short_size: 32 long_size: 64 stride: 8 stride: 16 field_w: 16 field_h: 24 field_w: 40 field_h: 32 '
     'min_scale: 8 max_scale: 40 multiscale_prob: 0.7 min_whaspect: 0.5 max_whaspect: 2 anchor_ignore_margin_ratio: 0.5 '
     'min_gt_width: 5 shuffle: "random_aspect" output_gt_boxes: true ' + DISTORT, True),
    # resize then crop to a fixed template, large rescale ratios (the crop-first branch), IoU anchor ignore, mixing
    ('batch_size: 3 resize_width: 48 resize_height: 40 crop_width: 40 crop_height: 32 low_scale_ratio: 1.2 '
     'high_scale_ratio: 3 multiscale_prob: 1 stride: 8 field_w: 16 field_h: 16 anchor_ignore_iou_thr: 0.6 '
     'shuffle: "random_mix_aspect" mix_group_size: 1 fg_threshold: 0.3 pickup_iou_thr: 0.05 output_gt_boxes: true', True),
    # resize_ratio, the file's order, template ratios with short/long, no gt top
    ('batch_size: 2 resize_ratio: 0.75 stride: 4 stride: 8 field_w: 8 field_h: 8 field_w: 16 field_h: 24 '
     'fg_threshold: 0.4 ignore_fg_threshold: 0.3', False),
    ('batch_size: 2 short_size: 32 long_size: 48 template_ratio: 1 template_ratio: 1.5 stride: 16 field_w: 32 '
     'field_h: 32 shuffle: "random" output_gt_boxes: true', False),
]


def _make(text, phase=0):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [], phase), p


def _config_dict(cfg):
    d = dataclasses.asdict(cfg)
    d["distort"] = cfg.distort
    return d


@pytest.mark.parametrize("fields,mirror", CASES)
def test_detection_data_matches_port(tmp_path, fields, mirror):
    src = write_windows(tmp_path)
    n_strides = fields.count("stride:")
    tops = ''.join(f'top: "l{i}" ' for i in range(n_strides)) + ('top: "gt" ' if "output_gt_boxes" in fields else "")
    text = (f'name: "d" type: "DetectionData" top: "data" {tops} detection_data_param {{ source: "{src}" '
            f'root_folder: "{tmp_path}/" {fields} }} transform_param {{ mirror: {str(mirror).lower()} mean_value: 104 '
            'mean_value: 117 mean_value: 123 scale: 0.5 }')
    layer, p = _make(text)
    maker = layer._maker()
    db = ref.read_window_file(src, f"{tmp_path}/")
    b = layer.batch_size
    for k in range(4):                                      # past the end of the 5-image list
        got = [t.numpy() for t in layer()]
        images = [maker.image_at(k * b + i) for i in range(b)]
        data, labels, gt = ref.detection_load_batch(db, images, _config_dict(layer.cfg),
                                                    np.random.default_rng([layer.seed, 0, k]), layer.cfg.template,
                                                    distort, lambda path: cv2.imread(path, cv2.IMREAD_COLOR))
        np.testing.assert_array_equal(got[0], data)
        for g, w in zip(got[1:1 + n_strides], labels):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
        if "output_gt_boxes" in fields:
            np.testing.assert_allclose(got[-1][:, :, 0, 0], gt, rtol=0, atol=1e-6)
        assert len(got) == len(p.top)
    layer.close()


def test_detection_data_shapes_and_layout(tmp_path):
    src = write_windows(tmp_path)
    text = (f'name: "d" type: "DetectionData" top: "data" top: "l8" top: "l16" top: "gt" detection_data_param {{ '
            f'source: "{src}" root_folder: "{tmp_path}/" batch_size: 2 short_size: 32 long_size: 64 stride: 8 stride: 16 '
            'field_w: 16 field_h: 16 field_w: 32 field_h: 32 output_gt_boxes: true }')
    layer, _ = _make(text)
    assert layer.reshape([]) == [(2, 3, 64, 32), (2, 6, 8, 4), (2, 6, 4, 2), (1, 8, 1, 1)]
    data, l8, l16, gt = layer()
    assert data.shape == (2, 3, 64, 32) and l8.shape == (2, 6, 8, 4) and l16.shape == (2, 6, 4, 2)  # image 0: portrait
    assert gt.shape[1:] == (8, 1, 1) and set(gt[:, 0, 0, 0].tolist()) <= {0.0, 1.0}
    assert ((l8[:, 5] >= 0) & (l8[:, 5] <= 1)).all() and (l8[:, 0] >= 0).all()
    layer.close()


def test_detection_data_resumes(tmp_path):
    src = write_windows(tmp_path)
    text = (f'name: "d" type: "DetectionData" top: "data" top: "l" detection_data_param {{ source: "{src}" root_folder: '
            f'"{tmp_path}/" batch_size: 2 short_size: 32 long_size: 48 stride: 8 field_w: 16 field_h: 16 shuffle: "random" '
            'min_scale: 8 max_scale: 32 } transform_param { mirror: true }')
    a, _ = _make(text)
    for _ in range(3):
        a()
    state = a.resume_state()
    want = [t.clone() for t in a()]
    b, _ = _make(text)
    b.load_resume_state(state)
    got = b()
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    a.close()
    b.close()


def test_list_orders(tmp_path):
    windows = read_cascade_windows(write_windows(tmp_path, SIZES * 3), "")
    tall, wide = set(windows.portrait), set(windows.landscape)
    for shuffle in ("random", "random_aspect", "random_mix_aspect"):
        o = list_order(windows, shuffle, 7, 2, 2)
        assert sorted(o.tolist()) == list(range(len(SIZES) * 3))
        assert np.array_equal(o, list_order(windows, shuffle, 7, 2, 2))
    o = list_order(windows, "random_aspect", 7, 0, 2).tolist()
    kinds = [i in tall for i in o]
    assert kinds == sorted(kinds, reverse=kinds[0])                        # one group, then the other
    o = list_order(windows, "random_mix_aspect", 7, 1, 2).tolist()
    kinds = [i in tall for i in o]
    n_short = min(len(tall), len(wide))
    run = kinds[: 4 * (n_short // 2)]
    assert all(run[j] == run[(j // 2) * 2] for j in range(len(run)))        # groups of mix_group_size alternate
    assert all(run[j] != run[j + 2] for j in range(0, len(run) - 2, 2))
    assert np.array_equal(list_order(windows, None, 7, 3, 2), np.arange(len(SIZES) * 3))
    assert wide


@pytest.mark.parametrize("fields,batch", [("resize_width: 64 resize_height: 32", 3), ("short_size: 32 long_size: 40", 1),
                                          ("", 1)])
def test_eval_data_matches_port(tmp_path, fields, batch):
    src = write_windows(tmp_path)
    text = (f'name: "e" type: "EvalData" top: "data" top: "gt" top: "size" eval_data_param {{ source: "{src}" '
            f'root_folder: "{tmp_path}/" batch_size: {batch} {fields} }} transform_param {{ mean_value: 100 scale: 0.25 }}')
    layer, p = _make(text, 1)
    db = ref.read_window_file(src, f"{tmp_path}/")
    ep = p.eval_data_param
    resize = (ep.resize_width, ep.resize_height) if ep.HasField("resize_width") else None
    short_long = (ep.short_size, ep.long_size) if ep.HasField("short_size") else None
    for k in range(6 // batch + 1):
        data, gt, size = (t.numpy() for t in layer())
        images = [(k * batch + i) % len(SIZES) for i in range(batch)]
        wd, wg, ws = ref.eval_load_batch(db, images, batch, 0.25, [100.0] * 3, resize, short_long,
                                         lambda path: cv2.imread(path, cv2.IMREAD_COLOR))
        np.testing.assert_array_equal(data, wd)
        np.testing.assert_allclose(gt[:, :, 0, 0], wg, atol=1e-6)
        np.testing.assert_array_equal(size[:, :, 0, 0], ws)
        assert data.shape[2] % 32 == 0 and data.shape[3] % 32 == 0
    layer.close()


def test_setup_errors(tmp_path):
    src = write_windows(tmp_path)
    bad = [('batch_size: 2 short_size: 32 long_size: 64 resize_ratio: 0.5 stride: 8 field_w: 8 field_h: 8', "conflict"),
           ('batch_size: 2 stride: 8 stride: 16 field_w: 8 field_h: 8', "field_w"),
           ('batch_size: 2 stride: 8 field_w: 8 field_h: 8 shuffle: "sideways"', "shuffling")]
    for fields, what in bad:
        with pytest.raises(ValueError, match=what):
            _make(f'name: "d" type: "DetectionData" top: "data" top: "l" detection_data_param {{ source: "{src}" '
                  f'root_folder: "{tmp_path}/" {fields} }}')
    (tmp_path / "bad.txt").write_text("# 1\nim0.png\n3 48 40\n0\n0\n")
    with pytest.raises(ValueError, match="out of order"):
        _make(f'name: "d" type: "DetectionData" top: "data" top: "l" detection_data_param {{ source: "{tmp_path}/bad.txt" '
              'batch_size: 1 stride: 8 field_w: 8 field_h: 8 }')
    with pytest.raises(ValueError, match="batch_size must be 1"):
        _make(f'name: "e" type: "EvalData" top: "data" top: "gt" eval_data_param {{ source: "{src}" batch_size: 2 }}', 1)


def test_detection_data_workers_give_the_same_batches(tmp_path):
    """Batch k depends on (seed, k) alone: worker processes make the batches the in-process reader makes."""
    from neocaffe.layers.base import BuildContext

    src = write_windows(tmp_path)
    text = (f'name: "d" type: "DetectionData" top: "data" top: "a" top: "b" top: "gt" detection_data_param {{ '
            f'source: "{src}" root_folder: "{tmp_path}/" {CASES[0][0]} }} transform_param {{ mirror: true }}')
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    outs = []
    for workers in (0, 2):
        layer = get_layer_class("DetectionData")(p, [], 0, BuildContext(data_workers=workers))
        layer.seed = 5
        outs.append([[t.clone() for t in layer()] for _ in range(3)])
        layer.close()
    assert all(torch.equal(a, b) for x, y in zip(*outs) for a, b in zip(x, y))
