"""Reorg and YoloDetectionOutput against NumPy ports of eric612/MobileNet-YOLO's C++ (reorg_cpu,
yolo_detection_output_layer.cpp's loops, sort and ApplyNms)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def _layer(text: str, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes])


# -- Reorg ---------------------------------------------------------------------------------------
def reorg_cpu(x, w, h, c, batch, stride, forward):
    """reorg_layer.hpp's reorg_cpu(const Dtype*, ...) as the layer calls it (forward = reverse)."""
    x = x.ravel()
    out = np.zeros_like(x)
    t_c, t_w, t_h = c // (stride * stride), w * stride, h * stride
    for n in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    b_idx = i + w * (j + h * (k + c * n))
                    c2, off = k % t_c, k // t_c
                    w2, h2 = i * stride + off % stride, j * stride + off // stride
                    t_idx = w2 + t_w * (h2 + t_h * (c2 + t_c * n))
                    if forward:
                        out[t_idx] = x[b_idx]
                    else:
                        out[b_idx] = x[t_idx]
    return out


@pytest.mark.parametrize("shape,stride,reverse", [((2, 8, 4, 6), 2, False), ((1, 18, 6, 3), 3, False),
                                                  ((1, 4, 2, 2), 2, False), ((2, 8, 3, 5), 2, True),
                                                  ((1, 9, 2, 2), 3, True)])
def test_reorg_matches_the_ports_reorg_cpu(shape, stride, reverse):
    r = np.random.default_rng(9)
    x = r.standard_normal(shape)
    layer = _layer(f'name: "rg" type: "Reorg" bottom: "x" top: "y" reorg_param {{ stride: {stride} '
                   f'reverse: {str(reverse).lower()} }}', [shape])
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    n, c, h, w = shape
    ref = reorg_cpu(x, w, h, c, n, stride, reverse)
    assert tuple(y.shape) == tuple(layer.reshape([shape])[0])
    np.testing.assert_array_equal(y.detach().numpy().ravel(), ref)
    # backward: the transpose of the permutation, <dx, x'> = <dy, reorg(x')>
    dy = r.standard_normal(y.shape)
    (gx,) = torch.autograd.grad(y, xt, torch.tensor(dy))
    x2 = r.standard_normal(shape)
    np.testing.assert_allclose((gx.numpy() * x2).sum(), (reorg_cpu(x2, w, h, c, n, stride, reverse) * dy.ravel()).sum(),
                               rtol=1e-12)


def test_reorg_needs_a_stride_and_divisible_sizes():
    with pytest.raises(LayerSetupError, match="stride > 0"):
        _layer('name: "rg" type: "Reorg" bottom: "x" top: "y" reorg_param { stride: 0 }', [(1, 4, 4, 4)])
    # no reorg_param: yolo9000's default stride 2 (its darknet nets)
    assert _layer('name: "rg" type: "Reorg" bottom: "x" top: "y"', [(1, 4, 4, 4)]).stride == 2
    layer = _layer('name: "rg" type: "Reorg" bottom: "x" top: "y" reorg_param { stride: 2 }', [(1, 4, 4, 4)])
    with pytest.raises(LayerSetupError, match="divisible"):
        layer.reshape([(1, 4, 5, 4)])
    with pytest.raises(LayerSetupError, match="divisible"):
        layer.reshape([(1, 6, 4, 4)])


# -- YoloDetectionOutput --------------------------------------------------------------------------
def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def yolo_reference(heads, classes, nbox, biases, conf_thr, nms_thr):
    """yolo_detection_output_layer.cpp (092f8df) for one image: loops over (head, j, i, n), std::sort
    by descending confidence (stable here), ApplyNms, rows [0, label + 1, conf, l, t, r, b]."""
    preds = []
    for t in heads:
        c, side = t.shape[1], t.shape[3]
        d = c // nbox
        swap = t[0].transpose(1, 2, 0).reshape(side * side, nbox, d)  # data_at(b, c, h, w) in h, w, c order
        for j in range(side):
            for i in range(side):
                for n in range(nbox):
                    v = swap[j * side + i, n]
                    x, y = (i + _sigmoid(v[0])) / side, (j + _sigmoid(v[1])) / side
                    w, h = math.exp(v[2]) * biases[2 * n] / side, math.exp(v[3]) * biases[2 * n + 1] / side
                    logits = v[5:5 + classes]
                    e = np.exp(logits - logits.max())
                    p = e / e.sum()
                    cls = int(np.argmax(p))
                    conf = _sigmoid(v[4]) * p[cls]
                    if conf >= conf_thr:
                        preds.append((conf, cls, x, y, w, h))
    return fork_nms_rows(preds, nms_thr)


def fork_nms_rows(preds, nms_thr):
    """The ports' shared tail for candidates (conf, class, x, y, w, h): std::sort by descending confidence
    (stable here), ApplyNms (box_iou >= threshold drops the later one), rows [0, class + 1, conf, l, t, r, b]."""
    preds = sorted(preds, key=lambda q: -q[0])

    def iou(a, b):
        def overlap(x1, w1, x2, w2):
            return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)
        ow, oh = overlap(a[2], a[4], b[2], b[4]), overlap(a[3], a[5], b[3], b[5])
        inter = 0.0 if ow < 0 or oh < 0 else ow * oh
        return inter / (a[4] * a[5] + b[4] * b[5] - inter)

    dropped = set()
    for i in range(len(preds) - 1):
        if i in dropped:
            continue
        for j in range(i + 1, len(preds)):
            if j not in dropped and iou(preds[i], preds[j]) >= nms_thr:
                dropped.add(j)
    return [[0, cls + 1, conf, x - w / 2, y - h / 2, x + w / 2, y + h / 2]
            for k, (conf, cls, x, y, w, h) in enumerate(preds) if k not in dropped]


PARAM = ('name: "det" type: "YoloDetectionOutput" {bottoms} top: "det" yolo_detection_output_param {{ '
         'num_classes: {classes} num_box: 3 confidence_threshold: {conf} nms_threshold: 0.4 coords: 4 '
         'biases: 0.57 biases: 0.67 biases: 1.87 biases: 2.06 biases: 3.34 biases: 5.47 }}')
BIASES = [0.57, 0.67, 1.87, 2.06, 3.34, 5.47]


@pytest.mark.parametrize("sides,classes,conf", [((13,), 20, 0.05), ((7, 13), 4, 0.1), ((5,), 2, 0.3)])
def test_yolo_detection_output_matches_the_forks_loops(sides, classes, conf):
    r = np.random.default_rng(sum(sides) + classes)
    heads = [(r.standard_normal((1, 3 * (5 + classes), s, s)) * 1.5).astype(np.float32) for s in sides]
    bottoms = " ".join(f'bottom: "h{k}"' for k in range(len(sides)))
    layer = _layer(PARAM.format(bottoms=bottoms, classes=classes, conf=conf), [h.shape for h in heads])
    got = layer(*[torch.from_numpy(h) for h in heads]).numpy()
    ref = np.array(yolo_reference([h.astype(np.float64) for h in heads], classes, 3, BIASES, conf, 0.4)).reshape(-1, 7)
    assert len(ref) > 3 and got.shape == (1, 1, len(ref), 7)
    np.testing.assert_allclose(got[0, 0], ref, rtol=1e-5, atol=1e-6)


def test_yolo_detection_output_keeps_images_apart_and_marks_empty_outputs():
    r = np.random.default_rng(11)
    heads = (r.standard_normal((2, 3 * 7, 6, 6)) * 1.5).astype(np.float32)
    layer = _layer(PARAM.format(bottoms='bottom: "h"', classes=2, conf=0.2), [heads.shape])
    got = layer(torch.from_numpy(heads)).numpy()[0, 0]
    for n in range(2):
        ref = np.array(yolo_reference([heads[n:n + 1].astype(np.float64)], 2, 3, BIASES, 0.2, 0.4)).reshape(-1, 7)
        ref[:, 0] = n
        np.testing.assert_allclose(got[got[:, 0] == n], ref, rtol=1e-5, atol=1e-6)
    assert set(got[:, 0]) == {0.0, 1.0}
    # nothing above the threshold: one [n, -1, ...] row per image (the fork's fake results)
    layer = _layer(PARAM.format(bottoms='bottom: "h"', classes=2, conf=1.0), [heads.shape])
    got = layer(torch.from_numpy(heads)).numpy()
    np.testing.assert_array_equal(got, [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]])


def test_yolo_detection_output_checks_its_configuration():
    with pytest.raises(LayerSetupError, match="biases needs 2 \\* num_box = 6"):
        _layer('name: "det" type: "YoloDetectionOutput" bottom: "h" top: "det" yolo_detection_output_param { '
               'num_classes: 2 num_box: 3 biases: 1 biases: 2 }', [(1, 21, 4, 4)])
    with pytest.raises(LayerSetupError, match="num_classes must be set"):
        _layer('name: "det" type: "YoloDetectionOutput" bottom: "h" top: "det" yolo_detection_output_param { '
               'num_box: 1 biases: 1 biases: 2 }', [(1, 25, 4, 4)])
    layer = _layer(PARAM.format(bottoms='bottom: "h"', classes=2, conf=0.1), [(1, 21, 4, 4)])
    with pytest.raises(LayerSetupError, match="square grid"):
        layer.reshape([(1, 21, 4, 5)])
    with pytest.raises(LayerSetupError, match="square grid"):
        layer.reshape([(1, 20, 4, 4)])


# -- Yolov3DetectionOutput -----------------------------------------------------------------------
def yolov3_reference(heads, classes, nbox, biases, mask, scales, conf_thr, nms_thr):
    """yolov3_detection_output_layer.cpp (9e32643), CPU path, one image, in float64: loops over (bottom t,
    cell s, box n, class c) with the anchors mask[n + t * G], get_region_box, one candidate per class above
    the threshold, std::sort by descending confidence (stable here), ApplyNms, rows [0, c + 1, conf, l, t, r, b]."""
    preds = []
    groups = len(mask) // len(heads)
    for t, head in enumerate(heads):
        d, hh, ww = 5 + classes, head.shape[2], head.shape[3]
        nw, nh = ww * scales[t], hh * scales[t]
        for s in range(hh * ww):
            y2, x2 = divmod(s, ww)
            for n in range(nbox):
                v = head[0, n * d:(n + 1) * d, y2, x2]
                m = mask[n + t * groups]
                x, y = (x2 + _sigmoid(v[0])) / ww, (y2 + _sigmoid(v[1])) / hh
                w, h = math.exp(v[2]) * biases[2 * m] / nw, math.exp(v[3]) * biases[2 * m + 1] / nh
                obj = _sigmoid(v[4])
                for c in range(classes):
                    conf = _sigmoid(v[5 + c]) * obj
                    if conf > conf_thr:
                        preds.append((conf, c, x, y, w, h))
    return fork_nms_rows(preds, nms_thr)


V3 = ('name: "det" type: "Yolov3DetectionOutput" {bottoms} top: "det" yolov3_detection_output_param {{ '
      'num_classes: {classes} num_box: 3 confidence_threshold: {conf} nms_threshold: 0.45 {biases} {mask} '
      'anchors_scale: 32 anchors_scale: 16 mask_group_num: 2 }}')
V3_BIASES = [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]
V3_MASK = [3, 4, 5, 0, 1, 2]


def _v3_layer(classes, conf, shapes):
    return _layer(V3.format(bottoms='bottom: "a" bottom: "b"', classes=classes, conf=conf,
                            biases=" ".join(f"biases: {b}" for b in V3_BIASES),
                            mask=" ".join(f"mask: {m}" for m in V3_MASK)), shapes)


@pytest.mark.parametrize("sizes,classes,conf", [(((7, 7), (14, 14)), 20, 0.01), (((5, 8), (10, 16)), 3, 0.2)])
def test_yolov3_detection_output_matches_the_forks_loops(sizes, classes, conf):
    r = np.random.default_rng(classes)
    heads = [(r.standard_normal((1, 3 * (5 + classes), h, w)) * 1.5).astype(np.float32) for h, w in sizes]
    layer = _v3_layer(classes, conf, [h.shape for h in heads])
    got = layer(*[torch.from_numpy(h) for h in heads]).numpy()
    ref = np.array(yolov3_reference([h.astype(np.float64) for h in heads], classes, 3, V3_BIASES, V3_MASK, [32, 16],
                                    conf, 0.45)).reshape(-1, 7)
    assert len(ref) > 3 and got.shape == (1, 1, len(ref), 7)
    np.testing.assert_allclose(got[0, 0], ref, rtol=1e-5, atol=1e-6)


def test_yolov3_detection_output_checks_its_configuration():
    shapes = [(1, 3 * 7, 4, 4), (1, 3 * 7, 8, 8)]
    with pytest.raises(LayerSetupError, match="takes mask_group_num = 2 bottoms"):
        _layer(V3.format(bottoms='bottom: "a"', classes=2, conf=0.1, biases="biases: 1 biases: 2",
                         mask="mask: 0"), shapes[:1])
    with pytest.raises(LayerSetupError, match=r"bottom 0 reads mask\[0..2\] as anchor indices into biases \(2 values"):
        _layer(V3.format(bottoms='bottom: "a" bottom: "b"', classes=2, conf=0.1, biases="biases: 1 biases: 2",
                         mask=" ".join(f"mask: {m}" for m in V3_MASK)), shapes)
    text = V3.format(bottoms='bottom: "a" bottom: "b"', classes=2, conf=0.1,
                     biases=" ".join(f"biases: {b}" for b in V3_BIASES), mask=" ".join(f"mask: {m}" for m in V3_MASK))
    with pytest.raises(LayerSetupError, match="gaussian_box is not reproduced"):
        _layer(text.replace("mask_group_num: 2", "mask_group_num: 2 gaussian_box: true"), shapes)
    layer = _layer(text, shapes)
    with pytest.raises(LayerSetupError, match=r"bottom 1 must be N x num_box\*\(5 \+ num_classes\) \(at least 21\)"):
        layer.reshape([shapes[0], (1, 20, 8, 8)])
