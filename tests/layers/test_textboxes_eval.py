"""TextBoxes++'s DetectionEvaluate (MhLiao/TextBoxes_plusplus @ 39d4898, detection_evaluate_layer.cpp): detections
of 15 (use_polygon) or 12 columns against 16-column ground truth, against a loop port of its Forward_cpu
(tests/layers/textboxes_reference.py), normalized and in pixels; and a test net (the fork's AnnotatedData from an
LMDB convert_annoset writes, hand-made detections) whose rows give the AP worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from neocaffe.solver.detection_eval import DetectionScores
from tests.layers import textboxes_reference as ref
from tests.layers.textboxes_data import LABEL_MAP, convert, fork_xml


def _layer(text, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], caffe_pb2.TEST)


def _case(r, cols):
    """Ground truth of 4 images (16 columns, quadrilaterals inside their boxes, some difficult; a -1 row and a
    row after it that GetGroundTruth never reads), detections near them with distinct scores, some of a label
    or image without ground truth, and a -1 row."""
    gt = []
    for item in (0, 0, 0, 1, 1, 3):
        x, y = r.uniform(0, 0.6, 2)
        quad = [x, y + 0.02, x + 0.3, y, x + 0.28, y + 0.3, x + 0.01, y + 0.28]
        gt.append([item, r.integers(1, 3), 0, x, y, x + 0.3, y + 0.3, r.integers(0, 2)] + quad)
    det = []
    for g in gt:
        for _ in range(2):
            box = np.array(g[3:7]) + r.normal(0, 0.05, 4)
            det.append([g[0], g[1], 0] + list(box) + list(r.uniform(0, 1, cols - 7)))
    det.append([2, 1, 0, 0.1, 0.1, 0.3, 0.3] + [0.5] * (cols - 7))
    det.append([1, 2, 0, 0.6, 0.6, 0.9, 0.9] + [0.5] * (cols - 7))
    det = np.array(det)
    det[:, 2] = r.permutation(len(det)) / len(det) + 0.01          # distinct: the fork's sort is not stable
    det = np.concatenate([det, [[4, -1] + [-1] * (cols - 2)]])
    gt = np.array(gt + [[-1] * 16, [0, 1, 0, 0.1, 0.1, 0.2, 0.2, 0] + [0.15] * 8], float)
    return det.astype(np.float32), gt.astype(np.float32)


@pytest.mark.parametrize("cols,field", [(15, ""), (15, "use_polygon: true"), (12, "use_polygon: false")])
@pytest.mark.parametrize("difficult", [True, False])
def test_polygon_detection_evaluate_matches_the_fork(cols, field, difficult):
    det, gt = _case(np.random.default_rng(cols + difficult), cols)
    text = ('name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "e" detection_evaluate_param { '
            f'num_classes: 3 background_label_id: 0 overlap_threshold: 0.5 {field} '
            f'evaluate_difficult_gt: {str(difficult).lower()} }}')
    layer = _layer(text, [(1, 1, *det.shape), (1, 1, *gt.shape)])
    got = layer(torch.tensor(det)[None, None], torch.tensor(gt)[None, None]).numpy()[0, 0]
    expect, _ = ref.detection_evaluate(det, gt, 3, 0, 0.5, difficult)
    assert got.shape == expect.shape
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-7)
    assert (got[2:, 3] == 1).sum() >= 3 and (got[2:, 4] == 1).sum() >= 3


def test_polygon_detection_evaluate_in_pixels(tmp_path):
    """With a name_size_file (and a WARP resize_param, as the fork's test nets: OutputBBox clips and scales),
    entries taken in turn by the images with detections, across forwards."""
    sizes = [("a", 20, 30), ("b", 300, 500), ("c", 7, 9)]
    (tmp_path / "names.txt").write_text("".join(f"{n} {h} {w}\n" for n, h, w in sizes))
    det, gt = _case(np.random.default_rng(3), 15)
    text = ('name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g" top: "e" detection_evaluate_param { '
            'num_classes: 3 background_label_id: 0 overlap_threshold: 0.5 evaluate_difficult_gt: false '
            f'name_size_file: "{tmp_path / "names.txt"}" '
            'resize_param { resize_mode: WARP height: 24 width: 24 } }')
    layer = _layer(text, [(1, 1, *det.shape), (1, 1, *gt.shape)])
    count = 0
    for _ in range(3):
        got = layer(torch.tensor(det)[None, None], torch.tensor(gt)[None, None]).numpy()[0, 0]
        expect, count = ref.detection_evaluate(det, gt, 3, 0, 0.5, False, [(h, w) for _, h, w in sizes], count,
                                               warp=True)
        np.testing.assert_allclose(got, expect, rtol=0, atol=1e-6)
        assert layer.count == count


_TEST_NET = """
layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_value: 104 mean_value: 117 mean_value: 123
    resize_param { prob: 1 resize_mode: WARP height: 24 width: 24 interp_mode: LINEAR } }
  data_param { source: "SOURCE" batch_size: 2 backend: LMDB }
  annotated_data_param { label_map_file: "MAP" } }
layer { name: "det" type: "Input" top: "det" input_param { shape { dim: 1 dim: 1 dim: 5 dim: 15 } } }
layer { name: "s" type: "Silence" bottom: "data" }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "det" bottom: "label" top: "detection_eval"
  include { phase: TEST }
  detection_evaluate_param { num_classes: 2 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false } }
"""


def test_test_net_gives_the_hand_made_ap(tmp_path):
    """Two images in the fork's XML: a word A; a word B and a difficult word C. Detections: A (0.9, true
    positive), a box far from A (0.8, false), B (0.7, true), C (0.6: on a difficult word, neither). Two positives:
    precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: AP 1 * 1/2 + 2/3 * 1/2 = 5/6 (Integral), (6 + 5 * 2/3) / 11
    (11point)."""
    import caffe

    import cv2

    words = {0: [(0, [4, 6, 20, 5, 21, 12, 5, 13])],
             1: [(0, [8, 16, 28, 18, 27, 26, 7, 24]), (1, [2, 2, 12, 2, 12, 8, 2, 8])]}
    (tmp_path / "img").mkdir()
    for i, objs in words.items():
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), np.full((32, 32, 3), 30 + i, np.uint8))
        (tmp_path / "img" / f"{i}.xml").write_text(fork_xml(objs, 32, name=str(i)))
    (tmp_path / "list.txt").write_text("img/0.png img/0.xml\nimg/1.png img/1.xml\n")
    (tmp_path / "labelmap.prototxt").write_text(LABEL_MAP)
    convert(tmp_path)
    (tmp_path / "test.prototxt").write_text(_TEST_NET.replace("SOURCE", str(tmp_path / "db"))
                                            .replace("MAP", str(tmp_path / "labelmap.prototxt")))
    net = caffe.Net(str(tmp_path / "test.prototxt"), caffe.TEST)

    def row(item, score, q):
        xs, ys = np.array(q[0::2], np.float32) / 32, np.array(q[1::2], np.float32) / 32
        return [item, 1, score, xs.min(), ys.min(), xs.max(), ys.max(), *np.stack([xs, ys], 1).ravel()]

    far = [24, 26, 31, 26, 31, 31, 24, 31]
    net.blobs["det"].data[...] = np.array([row(0, 0.9, words[0][0][1]), row(0, 0.8, far), row(1, 0.7, words[1][0][1]),
                                           row(1, 0.6, words[1][1][1]), [-1] * 15], np.float32)
    out = net.forward()["detection_eval"].reshape(-1, 5)
    label = net.blobs["label"].data.reshape(-1, 16)
    assert label.shape == (3, 16) and list(label[:, 7]) == [0, 0, 1]
    np.testing.assert_allclose(out, [[-1, 1, 2, -1, -1], [0, 1, 0.9, 1, 0], [0, 1, 0.8, 0, 1], [1, 1, 0.7, 1, 0],
                                     [1, 1, 0.6, 0, 0]], rtol=1e-6)
    scores = DetectionScores()
    scores.add(0, out, "detection_eval")
    assert scores.mean_aps("Integral") == [pytest.approx(5 / 6, abs=1e-6)]
    assert scores.mean_aps("11point") == [pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-6)]
