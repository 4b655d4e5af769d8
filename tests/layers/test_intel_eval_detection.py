"""Intel Caffe's EvalDetection (YOLOv2 TEST record) against a loop-by-loop NumPy port of its Forward_cpu
(intel/caffe @ 44d5363, src/caffe/layers/eval_detection_layer.cpp), on hand-made heads with planted boxes and on
random heads; its errors; and the head of its yolov2_test.prototxt (hand-written equivalent) in a TEST net."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.intel_eval_detection import EvalDetection
from neocaffe.proto import caffe_pb2
from tests.layers.intel_eval_detection_reference import eval_detection

VOC_BIASES = (1.32, 1.73, 3.19, 4.01, 5.06, 8.10, 9.47, 4.84, 11.24, 10.01)
SCORE = {0: "OBJ", 1: "PROB", 2: "MULTIPLY"}


def _param(side, num_class, num_object, threshold, nms, score_type, biases=VOC_BIASES, name="eval_det", extra=""):
    nms_text = "" if nms is None else f"nms: {nms} "
    text = (f'name: "{name}" type: "EvalDetection" bottom: "conv_reg" bottom: "label" top: "eval_det" '
            f'eval_detection_param {{ side: {side} num_class: {num_class} num_object: {num_object} '
            f'threshold: {threshold} {nms_text}score_type: {SCORE[score_type]} '
            + " ".join(f"biases: {b}" for b in biases) + f" {extra}}}")
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def _logit(p):
    return math.log(p / (1 - p))


def _plant(head, b, side, num_class, num_object, cell, anchor, box, cls, obj, biases=VOC_BIASES):
    """Write the logits that decode to centre/size ``box`` of class ``cls`` with objectness ``obj``."""
    x, y, w, h = box
    i, j = cell
    k = anchor * (num_class + 5)
    head[b, k + 0, j, i] = _logit(x * side - i)
    head[b, k + 1, j, i] = _logit(y * side - j)
    head[b, k + 2, j, i] = math.log(w * side / biases[2 * anchor])
    head[b, k + 3, j, i] = math.log(h * side / biases[2 * anchor + 1])
    head[b, k + 4, j, i] = _logit(obj)
    head[b, k + 5:k + 5 + num_class, j, i] = -4.0
    head[b, k + 5 + cls, j, i] = 4.0


def _gt_rows(rows, pad_to=None):
    """AnnotatedData's (1, 1, G, 8) from ``(item, label, xmin, ymin, xmax, ymax)`` tuples."""
    out = [[it, lab, 0, x0, y0, x1, y1, 0] for it, lab, x0, y0, x1, y1 in rows]
    while pad_to is not None and len(out) < pad_to:
        out.append([-1] * 8)
    return np.asarray(out, dtype=np.float32).reshape(1, 1, len(out), 8)


def _run(param, head, gt):
    layer = EvalDetection(param, [head.shape, gt.shape])
    out = layer(torch.from_numpy(head), torch.from_numpy(gt))
    assert tuple(out.shape) == layer.reshape([head.shape, gt.shape])[0]
    return out.numpy()


def _ref(param, head, gt):
    p = param.eval_detection_param
    return eval_detection(head, gt, p.side, p.num_class, p.num_object, p.threshold, p.nms if p.HasField("nms") else -1,
                          list(p.biases), p.score_type)


def _planted(side=4, num_class=3, num_object=5, n=2, seed=0):
    """Low-objectness noise plus planted boxes: a hit, a near-duplicate (NMS), a second box on the same truth,
    a box of a class without truth, a box that misses its truth."""
    r = np.random.default_rng(seed)
    head = (r.standard_normal((n, num_object * (num_class + 5), side, side)) * 0.5).astype(np.float32)
    for a in range(num_object):
        head[:, a * (num_class + 5) + 4] = -6.0   # objectness ~0.0025: under the 0.005 floor alone
    plant = lambda *args: _plant(head, *args[:1], side, num_class, num_object, *args[1:])  # noqa: E731
    plant(0, (1, 1), 0, (0.35, 0.30, 0.30, 0.40), 1, 0.95)       # hits truth A (class 1)
    plant(0, (1, 1), 2, (0.36, 0.31, 0.30, 0.38), 1, 0.90)       # near-duplicate of it: NMS at 0.45
    plant(0, (1, 1), 1, (0.45, 0.32, 0.30, 0.40), 1, 0.80)       # shifted copy: IoU ~0.5 with the first
    plant(0, (3, 3), 3, (0.85, 0.85, 0.20, 0.20), 2, 0.70)       # class 2: no truth of it -> fp
    plant(0, (0, 3), 4, (0.10, 0.85, 0.15, 0.20), 0, 0.60)       # class 0 truth elsewhere -> below threshold
    plant(1, (2, 2), 0, (0.60, 0.60, 0.50, 0.50), 0, 0.99)       # image 1: hit on class 0
    plant(1, (0, 0), 1, (0.15, 0.15, 0.20, 0.20), 0, 0.50)       # second class-0 box, misses
    gt = _gt_rows([(0, 2, 0.20, 0.10, 0.50, 0.50),                # A: class 1 (label 2)
                   (0, 1, 0.60, 0.05, 0.90, 0.30),                # class 0 (label 1), far from the planted one
                   (0, 2, 0.70, 0.60, 0.95, 0.95),                # second class-1 truth
                   (1, 1, 0.35, 0.35, 0.85, 0.85),                # image 1: class 0
                   (2, 3, 0.1, 0.1, 0.2, 0.2)],                   # item == N: Intel's "batch + 1" row, dropped
                  pad_to=7)
    return head, gt


CONFIGS = [  # side, num_class, num_object, threshold, nms, score_type
    (4, 3, 5, 0.5, 0.45, 2),
    (4, 3, 5, 0.3, 0.9, 1),    # NMS nearly off: duplicates become fp
    (4, 3, 6, 0.5, 0.45, 0),   # a sixth anchor Intel never reads
    (4, 3, 5, 0.5, 0.0, 2),    # nms 0: every later box goes (IoU 0 >= 0)
    (4, 3, 5, 0.5, None, 2),   # the schema's nms -1: no predictions at all
    (4, 3, 5, 0.05, 1.0, 2),   # only exact duplicates suppressed
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"s{c[0]}c{c[1]}o{c[2]}t{c[3]}n{c[4]}{SCORE[c[5]]}" for c in CONFIGS])
def test_planted_boxes_match_intels_loop(cfg):
    side, num_class, num_object, threshold, nms, score_type = cfg
    head, gt = _planted(side, num_class, num_object)
    param = _param(*cfg)
    got, want = _run(param, head, gt), _ref(param, head, gt)
    np.testing.assert_array_equal(got, want)
    # the class counts: image 0 has two class-1 truths and one class-0; image 1 one class-0; item 2 dropped
    np.testing.assert_array_equal(got[:, :num_class], [[1, 2, 0], [1, 0, 0]])
    rows = got[:, num_class:].reshape(2, -1, 4)
    used = rows[:, :, 1] > 0
    if nms is None:
        assert not used.any()
        return
    assert used[0].any() and used[1].any()
    labels = rows[0][used[0]][:, 0]
    assert (np.diff(labels) >= 0).all()     # grouped by ascending label


def test_planted_boxes_tell_the_cases_apart():
    head, gt = _planted()
    got = _run(_param(4, 3, 5, 0.5, 0.45, 2), head, gt)
    rows = [tuple(r) for r in got[0, 3:].reshape(-1, 4) if r[1] > 0]
    by_label = {}
    for lab, score, tp, fp in rows:
        by_label.setdefault(int(lab), []).append((round(float(score), 3), int(tp), int(fp)))
    assert by_label[1][0][1:] == (1, 0)               # the best class-1 box is a true positive
    assert all(r[1:] == (0, 1) for r in by_label[2])  # class 2 has no truth: false positives
    assert by_label[0][0][1:] == (0, 0)               # below threshold on a class with truth: (0, 0), Intel's quirk
    loose = _run(_param(4, 3, 5, 0.3, 0.9, 2), head, gt)
    n_strict, n_loose = (int((g[0, 3:].reshape(-1, 4)[:, 1] > 0).sum()) for g in (got, loose))
    assert n_loose > n_strict                         # NMS removed the near-duplicates
    assert int((loose[0, 3:].reshape(-1, 4)[:, 3] == 1).sum()) > int((got[0, 3:].reshape(-1, 4)[:, 3] == 1).sum())


@pytest.mark.parametrize("seed,side,num_class,num_object,threshold,nms,score_type", [
    (1, 3, 20, 5, 0.5, 0.45, 2), (2, 5, 4, 5, 0.2, 0.6, 1), (3, 2, 1, 7, 0.5, 0.3, 0), (4, 4, 6, 5, 0.4, 0.5, 2)])
def test_random_heads_match_intels_loop(seed, side, num_class, num_object, threshold, nms, score_type):
    r = np.random.default_rng(seed)
    n = 3
    head = (r.standard_normal((n, num_object * (num_class + 5), side, side)) * 2).astype(np.float32)
    rows = []
    for _ in range(9):
        x0, y0 = r.uniform(0, 0.7, 2)
        w, h = r.uniform(0.1, 0.3, 2)
        rows.append((int(r.integers(0, n)), int(r.integers(1, num_class + 1)), x0, y0, x0 + w, y0 + h))
    gt = _gt_rows(rows, pad_to=11)
    param = _param(side, num_class, num_object, threshold, nms, score_type)
    got, want = _run(param, head, gt), _ref(param, head, gt)
    np.testing.assert_array_equal(got, want)
    assert got[:, :num_class].sum() == 9


def test_head_of_other_layouts_and_dtype():
    """A (N, count) head reads as the same flat channel-last order only when H = W = 1: the swap of a 2-D blob is
    the identity; float64 in, float64 out, values computed in float32."""
    head, gt = _planted()
    param = _param(4, 3, 5, 0.5, 0.45, 2)
    want = _run(param, head, gt)
    layer = EvalDetection(param, [head.shape, gt.shape])
    got = layer(torch.from_numpy(head).double(), torch.from_numpy(gt).double())
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)
    flat = np.ascontiguousarray(head.transpose(0, 2, 3, 1)).reshape(2, -1)
    np.testing.assert_array_equal(_run(param, flat, gt), want)


@pytest.mark.parametrize("kw,match", [
    (dict(num_object=2), "num_object must be >= 5.*received 2"),
    (dict(biases=VOC_BIASES[:8]), "at least 10 biases.*received 8"),
])
def test_setup_errors_name_the_layer(kw, match):
    args = dict(side=4, num_class=3, num_object=5, threshold=0.5, nms=0.45, score_type=2)
    args.update(kw)
    with pytest.raises(LayerSetupError, match=f"layer 'eval_det' \\(EvalDetection\\).*{match}"):
        EvalDetection(_param(**args), [(1, 40, 4, 4), (1, 1, 2, 8)])


def test_shape_and_label_errors():
    param = _param(4, 3, 5, 0.5, 0.45, 2)
    with pytest.raises(LayerSetupError, match=r"eval_det.*received shape \(1, 40, 3, 3\)"):
        EvalDetection(param, [(1, 40, 3, 3), (1, 1, 2, 8)]).reshape([(1, 40, 3, 3), (1, 1, 2, 8)])
    with pytest.raises(LayerSetupError, match=r"8 values per row.*received shape \(1, 1, 2, 7\)"):
        EvalDetection(param, [(1, 40, 4, 4), (1, 1, 2, 7)]).reshape([(1, 40, 4, 4), (1, 1, 2, 7)])
    head = _planted()[0][:1]
    layer = EvalDetection(param, [head.shape, (1, 1, 1, 8)])
    for row, match in (([0, 0, 0, .1, .1, .2, .2, 0], r"labels must be in \[1, 3\].*received \[0\]"),
                       ([0, 4, 0, .1, .1, .2, .2, 0], r"received \[4\]"),
                       ([3, 1, 0, .1, .1, .2, .2, 0], r"item ids must be -1 or in \[0, 1\].*received \[3\]")):
        with pytest.raises(LayerSetupError, match=f"eval_det.*{match}"):
            layer(torch.from_numpy(head), torch.tensor(row, dtype=torch.float32).reshape(1, 1, 1, 8))


def test_no_backward():
    layer = EvalDetection(_param(4, 3, 5, 0.5, 0.45, 2), [(1, 40, 4, 4), (1, 1, 2, 8)])
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    head = torch.zeros(1, 40, 4, 4, requires_grad=True)
    assert not layer(head, torch.zeros(1, 1, 2, 8) - 1).requires_grad


# The head of intel/caffe's models/intel_optimized_models/yolo/yolov2_test.prototxt, written by hand and trimmed
# (a 1x1 convolution stands for its Darknet-19 body; the Reorg/Concat passthrough kept in small): side 4 here
# instead of its 17 (a 544x544 input), 20 VOC classes, 5 anchors, nms 0.45, MULTIPLY, its VOC biases, three bottoms.
YOLO_HEAD = """name: "yolov2_head"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 8 dim: 8 dim: 8 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 8 } } }
layer { name: "extra_layer25-conv" type: "Convolution" bottom: "data" top: "extra_layer25-conv"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 stride: 2 bias_term: false
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "extra_layer26-conv" type: "Convolution" bottom: "data" top: "extra_layer26-conv"
  convolution_param { num_output: 4 kernel_size: 1 bias_term: false weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "extra_layer-reorg" type: "Reorg" bottom: "extra_layer26-conv" top: "extra_layer26-reorg"
  reorg_param { stride: 2 } }
layer { name: "extra_layer-concat" type: "Concat" bottom: "extra_layer26-reorg" bottom: "extra_layer25-conv"
  top: "extra_layer-concat" concat_param { axis: 1 } }
layer { name: "conv_reg" type: "Convolution" bottom: "extra_layer-concat" top: "conv_reg"
  convolution_param { num_output: 125 kernel_size: 1 pad: 0 stride: 1
  weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0 } } }
layer { name: "eval_det" type: "EvalDetection" bottom: "conv_reg" bottom: "label" bottom: "data" top: "eval_det"
  include { phase: TEST }
  eval_detection_param { side: 4 num_class: 20 num_object: 5 threshold: 0.5 nms: 0.45 score_type: MULTIPLY
    biases: 1.32 biases: 1.73 biases: 3.19 biases: 4.01 biases: 5.06 biases: 8.10 biases: 9.47 biases: 4.84
    biases: 11.24 biases: 10.01 } }
"""


def test_yolov2_head_builds_and_runs_in_test():
    net = Net(text_format.Parse(YOLO_HEAD, caffe_pb2.NetParameter()), caffe_pb2.TEST)
    r = np.random.default_rng(7)
    gt = _gt_rows([(0, 5, 0.1, 0.1, 0.4, 0.5), (1, 12, 0.5, 0.4, 0.9, 0.9), (1, 12, 0.0, 0.0, 0.3, 0.3)], pad_to=4)
    net.set_blob("data", torch.from_numpy(r.standard_normal((2, 8, 8, 8)).astype(np.float32)))
    net.set_blob("label", torch.from_numpy(gt))
    net.forward()
    out = net.blob("eval_det").numpy()
    assert out.shape == (2, 20 + 4 * 4 * 5 * 4)
    want = eval_detection(net.blob("conv_reg").numpy(), gt, 4, 20, 5, 0.5, 0.45, VOC_BIASES, 2)
    np.testing.assert_array_equal(out, want)
    assert out[0, 4] == 1 and out[1, 11] == 2 and (out[:, 20:].reshape(2, -1, 4)[:, :, 1] > 0).any()
