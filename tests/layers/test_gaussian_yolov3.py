"""MobileNet-YOLO's GaussianYolov3 loss against the loop port of the fork's CPU path in
``tests/layers/gaussian_yolo_reference.py`` (the loss and the bottom diff), including its rare "best_iou > 1"
branch, and its refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neocaffe.layers.base import LayerSetupError
from tests.layers.gaussian_yolo_reference import gaussian_yolov3_reference
from tests.layers.test_yolo_loss import V3, _labels, _run
from tests.layers.yolo_loss_reference import _iou, _sig

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
F = np.float32


def _text(o):
    return ('name: "gl" type: "GaussianYolov3" bottom: "x" bottom: "label" top: "loss" yolov3_param { '
            f'num_class: {o["classes"]} num: {o["num"]} anchors_scale: {o["anchors_scale"]} '
            + "".join(f"biases: {b} " for b in o["biases"]) + "".join(f"mask: {m} " for m in o["mask"])
            + f'iou_loss: GIOU thresh: {o["thresh"]} iou_thresh: {o["iou_thresh"]} coord_scale: {o["coord_scale"]} '
            f'class_scale: {o["class_scale"]} object_scale: {o["object_scale"]} iou_normalizer: {o["iou_normalizer"]} '
            f'max_delta: {o["max_delta"]} accumulate: {str(o["accumulate"]).lower()} '
            f'use_focal_loss: {str(o["focal"]).lower()} use_logic_gradient: {str(o["logic"]).lower()} }}')


CASES = [dict(), dict(logic=True, thresh=0.3), dict(mask=[0, 1, 2], accumulate=False),
         dict(focal=True, iou_thresh=0.2, max_delta=0.05), dict(mask=[1, 5, 2], iou_thresh=0.2, logic=True, focal=True),
         dict(iou_thresh=1.0, class_scale=0.5, coord_scale=2.0, max_delta=3.4028235e38)]


def _check(o, x, label):
    """The layer's loss and diff (top diff 1) equal the loop port's to the bit; with top diff 1.7 the diff
    scales by it."""
    got_loss, got_diff = _run(_text(o), x, label, top_diff=1.0)
    want_loss, want_diff = gaussian_yolov3_reference(x, label, o)
    assert got_loss == float(want_loss)
    np.testing.assert_array_equal(got_diff, want_diff)
    np.testing.assert_allclose(_run(_text(o), x, label)[1], want_diff, rtol=1e-6, atol=1e-9)
    return got_diff


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_yolov3_matches_the_forks_loops(case, seed):
    o = {**V3, **CASES[case]}
    rng = np.random.default_rng(300 + 10 * case + seed)
    n, h, w = 2, 3 + seed, 5 - seed
    x = (rng.standard_normal((n, o["num"] * (9 + o["classes"]), h, w)) * 1.5).astype(np.float32)
    label = _labels(rng, n, o["classes"], [5, 3 * seed], pairs=2)
    diff = _check(o, x, label)
    assert np.count_nonzero(diff) > 0


def test_gaussian_yolov3_trains_a_box_whose_iou_rounds_above_one():
    """A truth equal to a box's prediction can overlap it by more than 1 in float: the fork then trains that
    box on it before the truths' own assignments (objectness -(1 - s), class and box diffs)."""
    o = {**V3, "mask": [3, 4, 5], "thresh": 0.5}
    rng = np.random.default_rng(9)
    h = w = 4
    stride, length = h * w, 9 + o["classes"]
    for _ in range(2000):
        x = rng.standard_normal((1, o["num"] * length, h, w)).astype(np.float32)
        flat = x.reshape(-1)
        s, n = 5, 1   # cell 5 (i = 1, j = 1), box slot 1 (anchor mask[1] = 4)
        index = n * length * stride + s
        pred = [(F(1) + _sig(flat[index])) / F(w), (F(1) + _sig(flat[index + 2 * stride])) / F(h),
                np.exp(flat[index + 4 * stride]) * F(o["biases"][8]) / F(w * 8),
                np.exp(flat[index + 6 * stride]) * F(o["biases"][9]) / F(h * 8)]
        if 0 < pred[2] < 1 and 0 < pred[3] < 1 and _iou(pred, pred) > 1:
            break
    else:
        pytest.skip("no prediction whose self-IoU rounds above 1 was found")
    label = np.zeros((1, 1, 300, 5), np.float32)
    label[0, 0, 0] = [2, *pred]
    label[0, 0, 1] = [1, 0.8, 0.2, 0.3, 0.4]
    diff = _check(o, x, label)
    assert diff.reshape(-1)[index + 8 * stride] != 0   # the rare box's objectness is trained, not zeroed


def test_gaussian_yolov3_refuses_bad_bottoms():
    from google.protobuf import text_format

    from neocaffe.layers.registry import get_layer_class
    from neocaffe.proto import caffe_pb2

    param = text_format.Parse(_text(V3), caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match=r"N x 39 x H x W"):
        get_layer_class("GaussianYolov3")(param, [(2, 27, 3, 3), (2, 1, 300, 5)], 0).reshape([(2, 27, 3, 3), (2, 1, 300, 5)])
    param = text_format.Parse(_text({**V3, "mask": [0, 1, 2]}), caffe_pb2.LayerParameter())
    layer = get_layer_class("GaussianYolov3")(param, [(1, 39, 2, 2), (1, 1, 300, 5)], 0)
    label = np.zeros((1, 1, 300, 5), np.float32)
    label[0, 0, 0] = [0, 1.2, 0.5, 0.2, 0.2]
    with pytest.raises(LayerSetupError, match="outside the 2 x 2 grid"):
        layer(torch.zeros(1, 39, 2, 2), torch.tensor(label))
