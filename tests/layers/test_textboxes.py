"""TextBoxes++ (MhLiao/TextBoxes_plusplus @ 39d4898de1504c53a2ed3d67966a57b3595836d0): PriorBox's
``denser_prior_boxes`` and DetectionOutput's quadrilateral / rotated-box forms against NumPy loop ports of the
fork's ``prior_box_layer.cpp``, ``detection_output_layer.cpp`` and ``bbox_util.cpp`` (``GetLocPredictions``,
``DecodeBBoxPolygon``, ``DecodeBBoxRBox``, ``GetMaxScoreIndex``, ``ApplyNMSFast``), and the fork's deploy net
built and run forward with random weights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

f32 = np.float32


def _layer(text: str, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], caffe_pb2.TEST)


# --- PriorBox denser_prior_boxes -------------------------------------------------------------------

def _denser_prior_ref(min_sizes, max_sizes, ratios_in, flip, step, offset, lh, lw, ih, iw, variance):
    """The fork's PriorBox Forward_cpu with denser_prior_boxes, loop for loop."""
    ratios = [1.0]
    for ar in ratios_in:
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios.append(ar)
            if flip:
                ratios.append(float(f32(1.0 / ar)))
    step_w = step or f32(iw) / f32(lw)
    step_h = step or f32(ih) / f32(lh)
    out = []
    for h in range(lh):
        for w in range(lw):
            cx = float(f32(f32(w + offset) * f32(step_w)))
            cy = float(f32(f32(h + offset) * f32(step_h)))
            cy1 = float(f32((h + 1.0) * float(f32(step_h))))   # float center_y_offset_1 = (h + 1.0) * step_h
            for s, mn in enumerate(min_sizes):
                m = int(mn)
                boxes = [(m, m)]
                if max_sizes:
                    boxes.append((math.sqrt(m * int(max_sizes[s])),) * 2)
                for ar in ratios:
                    if abs(ar - 1.0) < 1e-6:
                        continue
                    boxes.append((m * math.sqrt(f32(ar)), m / math.sqrt(f32(ar))))
                for bw, bh in boxes:
                    bw, bh = float(f32(bw)), float(f32(bh))
                    for y in (cy, cy1):
                        out += [(cx - bw / 2.0) / iw, (y - bh / 2.0) / ih, (cx + bw / 2.0) / iw, (y + bh / 2.0) / ih]
    out = np.array(out, f32)
    return np.stack([out, np.resize(np.array(variance, f32), out.size)])[None]


@pytest.mark.parametrize("lh,lw,ih,iw,step", [(3, 4, 24, 32, 8.0), (5, 5, 37, 41, 0.0)])
def test_denser_prior_boxes_match_the_fork(lh, lw, ih, iw, step):
    var = [0.1, 0.1, 0.2, 0.2]
    text = ('name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "p" prior_box_param { min_size: 30 '
            'max_size: 60 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 4 aspect_ratio: 5 flip: true clip: false '
            'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 ' + (f'step: {step} ' if step else '')
            + 'offset: 0.5 denser_prior_boxes: true }')
    layer = _layer(text, [(1, 8, lh, lw), (1, 3, ih, iw)])
    assert layer.reshape([(1, 8, lh, lw), (1, 3, ih, iw)]) == [(1, 2, lh * lw * 20 * 4)]
    got = layer(torch.zeros(1, 8, lh, lw), torch.zeros(1, 3, ih, iw)).numpy()
    ref = _denser_prior_ref([30], [60], [2, 3, 4, 5], True, step, 0.5, lh, lw, ih, iw, var)
    np.testing.assert_array_equal(got, ref)


def test_denser_prior_boxes_false_is_ssd():
    base = ('name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "p" prior_box_param { min_size: 4 '
            'max_size: 9 aspect_ratio: 2 variance: 0.1 %s}')
    shapes = [(1, 2, 3, 4), (1, 3, 12, 16)]
    a = _layer(base % "", shapes)(torch.zeros(shapes[0]), torch.zeros(shapes[1]))
    b = _layer(base % "denser_prior_boxes: false ", shapes)(torch.zeros(shapes[0]), torch.zeros(shapes[1]))
    assert torch.equal(a, b)


# --- DetectionOutput: the fork's quadrilateral and rotated-box forms --------------------------------

def _jaccard(a, b):
    """JaccardOverlap of two NormalizedBBox (float)."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = f32(min(a[2], b[2]) - max(a[0], b[0]))
    ih = f32(min(a[3], b[3]) - max(a[1], b[1]))
    inter = f32(iw * ih)
    if inter <= 0:
        return 0.0

    def size(x):
        return f32(0) if x[2] < x[0] or x[3] < x[1] else f32(f32(x[2] - x[0]) * f32(x[3] - x[1]))
    return float(inter / f32(size(a) + size(b) - inter))


def _detection_output_ref(loc, conf, prior, *, num_classes, share_location, background, nms_threshold, top_k,
                          keep_top_k, confidence_threshold, form):
    """The fork's DetectionOutputLayer::Forward_cpu (use_polygon: 12 offsets per prior; else 9), loop for loop,
    in float32."""
    loc, conf, prior = (np.asarray(a, f32) for a in (loc, conf, prior))
    n = loc.shape[0]
    num_priors = prior.shape[-1] // 4
    nlc = 1 if share_location else num_classes
    pb = prior.reshape(2, num_priors, 4)
    rows_all = []
    for i in range(n):
        locs = loc[i].reshape(num_priors, nlc, form)
        decoded = {}
        for c in range(nlc):
            label = -1 if share_location else c
            if label == background:
                continue
            boxes, extras = [], []
            for p in range(num_priors):
                xmin, ymin, xmax, ymax = pb[0, p]
                v = pb[1, p]
                pw, ph = f32(xmax - xmin), f32(ymax - ymin)
                pcx, pcy = f32(f32(xmin + xmax) / f32(2)), f32(f32(ymin + ymax) / f32(2))
                b = locs[p, c]
                cx = f32(f32(v[0] * b[0]) * pw) + pcx
                cy = f32(f32(v[1] * b[1]) * ph) + pcy
                w = f32(np.exp(f32(v[2] * b[2]))) * pw
                h = f32(np.exp(f32(v[3] * b[3]))) * ph
                boxes.append([cx - w / f32(2), cy - h / f32(2), cx + w / f32(2), cy + h / f32(2)])
                if form == 12:
                    corners = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]
                    e = []
                    for k, (px, py) in enumerate(corners):
                        e.append(f32(f32(v[0] * b[4 + 2 * k]) * pw) + px)
                        e.append(f32(f32(v[1] * b[5 + 2 * k]) * ph) + py)
                else:
                    e = [f32(f32(v[0] * b[4]) * pw) + pcx, f32(f32(v[1] * b[5]) * ph) + pcy,
                         f32(f32(v[0] * b[6]) * pw) + pcx, f32(f32(v[1] * b[7]) * ph) + pcy,
                         f32(np.exp(f32(v[3] * b[8]))) * ph]
                extras.append(e)
            decoded[label] = (np.array(boxes, f32), np.array(extras, f32))
        scores_all = conf[i].reshape(num_priors, num_classes)
        indices = {}
        num_det = 0
        for c in range(num_classes):
            if c == background:
                continue
            scores = scores_all[:, c]
            boxes = decoded[-1 if share_location else c][0]
            cand = [(float(s), j) for j, s in enumerate(scores) if s > confidence_threshold]
            cand.sort(key=lambda t: -t[0])       # std::stable_sort, descending
            if top_k > -1:
                cand = cand[:top_k]
            kept = []
            for _, j in cand:
                if all(_jaccard(boxes[j], boxes[q]) <= nms_threshold for q in kept):
                    kept.append(j)
            indices[c] = kept
            num_det += len(kept)
        if keep_top_k > -1 and num_det > keep_top_k:
            pairs = [(float(scores_all[j, c]), c, j) for c in sorted(indices) for j in indices[c]]
            pairs.sort(key=lambda t: -t[0])
            new = {}
            for _, c, j in pairs[:keep_top_k]:
                new.setdefault(c, []).append(j)
            indices = new
        for c in sorted(indices):
            boxes, extras = decoded[-1 if share_location else c]
            for j in indices[c]:
                rows_all.append([i, c, scores_all[j, c], *boxes[j], *extras[j]])
    cols = 3 + 4 + form - 4
    if not rows_all:
        out = np.full((n, cols), -1, f32)
        out[:, 0] = np.arange(n)
        return out
    return np.array(rows_all, f32)


def _random_heads(rng, n, num_priors, num_classes, form, nlc):
    centers = rng.uniform(0.2, 0.8, (num_priors, 2))
    sizes = rng.uniform(0.1, 0.4, (num_priors, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], (num_priors, 1))
    prior = np.stack([boxes.reshape(-1), var.reshape(-1)])[None].astype(f32)
    loc = rng.normal(0, 1, (n, num_priors * nlc * form)).astype(f32)
    logits = rng.normal(0, 2, (n, num_priors, num_classes))
    conf = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(n, -1).astype(f32)
    return loc, conf, prior


@pytest.mark.parametrize("form,use_polygon,share,keep_top_k", [
    (12, "use_polygon: true", True, 200), (12, "", True, 5), (12, "use_polygon: true", False, -1),
    (9, "use_polygon: false", True, 7), (9, "use_polygon: false", False, 200)])
def test_detection_output_forms_match_the_fork(form, use_polygon, share, keep_top_k):
    rng = np.random.default_rng(form * 10 + keep_top_k)
    n, num_priors, num_classes = 2, 40, 3
    nlc = 1 if share else num_classes
    loc, conf, prior = _random_heads(rng, n, num_priors, num_classes, form, nlc)
    text = ('name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "d" '
            f'detection_output_param {{ num_classes: {num_classes} share_location: {str(share).lower()} '
            'background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 30 } code_type: CENTER_SIZE '
            f'keep_top_k: {keep_top_k} confidence_threshold: 0.05 {use_polygon} }}')
    shapes = [loc.shape, conf.shape, prior.shape]
    layer = _layer(text, shapes)
    assert layer.reshape(shapes) == [(1, 1, 1, form + 3)]
    got = layer(*(torch.from_numpy(a) for a in (loc, conf, prior))).numpy()
    ref = _detection_output_ref(loc, conf, prior, num_classes=num_classes, share_location=share, background=0,
                                nms_threshold=0.45, top_k=30, keep_top_k=keep_top_k, confidence_threshold=0.05,
                                form=form)
    assert got.shape == (1, 1, ref.shape[0], form + 3)
    np.testing.assert_allclose(got[0, 0], ref, rtol=1e-6, atol=1e-6)


def test_detection_output_no_detection_rows():
    rng = np.random.default_rng(3)
    loc, conf, prior = _random_heads(rng, 2, 6, 2, 12, 1)
    text = ('name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "d" '
            'detection_output_param { num_classes: 2 code_type: CENTER_SIZE confidence_threshold: 2 }')
    layer = _layer(text, [loc.shape, conf.shape, prior.shape])
    got = layer(*(torch.from_numpy(a) for a in (loc, conf, prior))).numpy()
    want = np.full((2, 15), -1, f32)
    want[:, 0] = [0, 1]
    np.testing.assert_array_equal(got[0, 0], want)


def test_detection_output_form_is_told_by_fields_and_bottoms():
    rng = np.random.default_rng(4)
    base = ('name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "d" '
            'detection_output_param { num_classes: 2 code_type: %s %s }')
    _, conf, prior = _random_heads(rng, 1, 5, 2, 4, 1)
    for per, extra, cols in [(4, "", 7), (12, "", 15), (12, "use_polygon: true", 15), (9, "use_polygon: false", 12)]:
        layer = _layer(base % ("CENTER_SIZE", extra), [(1, 5 * per), conf.shape, prior.shape])
        assert layer.reshape([(1, 5 * per), conf.shape, prior.shape]) == [(1, 1, 1, cols)]
    # SSD's 4 per prior stays SSD's whatever the code type; the fork's forms need CENTER_SIZE
    assert _layer(base % ("CORNER", ""), [(1, 20), conf.shape, prior.shape]).form == 4
    for per, extra in [(9, ""), (4, "use_polygon: true"), (12, "use_polygon: false")]:
        with pytest.raises(Exception, match="location predictions"):
            _layer(base % ("CENTER_SIZE", extra), [(1, 5 * per), conf.shape, prior.shape])
    with pytest.raises(Exception, match="CENTER_SIZE"):
        _layer(base % ("CORNER", ""), [(1, 60), conf.shape, prior.shape])


# --- the fork's deploy net ---------------------------------------------------------------------------

# MhLiao/TextBoxes_plusplus @ 39d4898de1504c53a2ed3d67966a57b3595836d0, models/deploy.prototxt (the net
# examples/text/demo.py runs), every field as in the file, one layer per (wrapped) line; the test sets the
# input's 768 x 768 to 288 x 288 (the smallest multiple of 32 whose shapes all follow: conv9_2 is 3 x 3 valid).
DEPLOY = """
name: "VGG_text_text_polygon_ic15_fix_order_384x384_deploy" input: "data" input_shape { dim: 1 dim: 3 dim: 768 dim:
  768 }
layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1" param { lr_mult: 0.0 decay_mult: 0.0 }
  param { lr_mult: 0.0 decay_mult: 0.0 } convolution_param { num_output: 64 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu1_1" type: "ReLU" bottom: "conv1_1" top: "conv1_1" }
layer { name: "conv1_2" type: "Convolution" bottom: "conv1_1" top: "conv1_2" param { lr_mult: 0.0 decay_mult: 0.0 }
  param { lr_mult: 0.0 decay_mult: 0.0 } convolution_param { num_output: 64 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu1_2" type: "ReLU" bottom: "conv1_2" top: "conv1_2" }
layer { name: "pool1" type: "Pooling" bottom: "conv1_2" top: "pool1" pooling_param { pool: MAX kernel_size: 2
  stride: 2 } }
layer { name: "conv2_1" type: "Convolution" bottom: "pool1" top: "conv2_1" param { lr_mult: 0.0 decay_mult: 0.0 }
  param { lr_mult: 0.0 decay_mult: 0.0 } convolution_param { num_output: 128 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu2_1" type: "ReLU" bottom: "conv2_1" top: "conv2_1" }
layer { name: "conv2_2" type: "Convolution" bottom: "conv2_1" top: "conv2_2" param { lr_mult: 0.0 decay_mult: 0.0 }
  param { lr_mult: 0.0 decay_mult: 0.0 } convolution_param { num_output: 128 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu2_2" type: "ReLU" bottom: "conv2_2" top: "conv2_2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2_2" top: "pool2" pooling_param { pool: MAX kernel_size: 2
  stride: 2 } }
layer { name: "conv3_1" type: "Convolution" bottom: "pool2" top: "conv3_1" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 256 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu3_1" type: "ReLU" bottom: "conv3_1" top: "conv3_1" }
layer { name: "conv3_2" type: "Convolution" bottom: "conv3_1" top: "conv3_2" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 256 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu3_2" type: "ReLU" bottom: "conv3_2" top: "conv3_2" }
layer { name: "conv3_3" type: "Convolution" bottom: "conv3_2" top: "conv3_3" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 256 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu3_3" type: "ReLU" bottom: "conv3_3" top: "conv3_3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3_3" top: "pool3" pooling_param { pool: MAX kernel_size: 2
  stride: 2 } }
layer { name: "conv4_1" type: "Convolution" bottom: "pool3" top: "conv4_1" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 512 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu4_1" type: "ReLU" bottom: "conv4_1" top: "conv4_1" }
layer { name: "conv4_2" type: "Convolution" bottom: "conv4_1" top: "conv4_2" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 512 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu4_2" type: "ReLU" bottom: "conv4_2" top: "conv4_2" }
layer { name: "conv4_3" type: "Convolution" bottom: "conv4_2" top: "conv4_3" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 512 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu4_3" type: "ReLU" bottom: "conv4_3" top: "conv4_3" }
layer { name: "pool4" type: "Pooling" bottom: "conv4_3" top: "pool4" pooling_param { pool: MAX kernel_size: 2
  stride: 2 } }
layer { name: "conv5_1" type: "Convolution" bottom: "pool4" top: "conv5_1" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 512 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } dilation: 1 } }
layer { name: "relu5_1" type: "ReLU" bottom: "conv5_1" top: "conv5_1" }
layer { name: "conv5_2" type: "Convolution" bottom: "conv5_1" top: "conv5_2" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 512 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } dilation: 1 } }
layer { name: "relu5_2" type: "ReLU" bottom: "conv5_2" top: "conv5_2" }
layer { name: "conv5_3" type: "Convolution" bottom: "conv5_2" top: "conv5_3" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 512 pad: 1 kernel_size: 3 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } dilation: 1 } }
layer { name: "relu5_3" type: "ReLU" bottom: "conv5_3" top: "conv5_3" }
layer { name: "pool5" type: "Pooling" bottom: "conv5_3" top: "pool5" pooling_param { pool: MAX kernel_size: 3
  stride: 1 pad: 1 } }
layer { name: "fc6" type: "Convolution" bottom: "pool5" top: "fc6" param { lr_mult: 1.0 decay_mult: 1.0 } param {
  lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 1024 pad: 6 kernel_size: 3 weight_filler { type:
  "xavier" } bias_filler { type: "constant" value: 0.0 } dilation: 6 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "Convolution" bottom: "fc6" top: "fc7" param { lr_mult: 1.0 decay_mult: 1.0 } param {
  lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 1024 kernel_size: 1 weight_filler { type: "xavier"
  } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "conv6_1" type: "Convolution" bottom: "fc7" top: "conv6_1" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 256 pad: 0 kernel_size: 1 stride: 1
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv6_1_relu" type: "ReLU" bottom: "conv6_1" top: "conv6_1" }
layer { name: "conv6_2" type: "Convolution" bottom: "conv6_1" top: "conv6_2" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 512 pad: 1 kernel_size: 3 stride: 2
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv6_2_relu" type: "ReLU" bottom: "conv6_2" top: "conv6_2" }
layer { name: "conv7_1" type: "Convolution" bottom: "conv6_2" top: "conv7_1" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 128 pad: 0 kernel_size: 1 stride: 1
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv7_1_relu" type: "ReLU" bottom: "conv7_1" top: "conv7_1" }
layer { name: "conv7_2" type: "Convolution" bottom: "conv7_1" top: "conv7_2" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 256 pad: 1 kernel_size: 3 stride: 2
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv7_2_relu" type: "ReLU" bottom: "conv7_2" top: "conv7_2" }
layer { name: "conv8_1" type: "Convolution" bottom: "conv7_2" top: "conv8_1" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 128 pad: 0 kernel_size: 1 stride: 1
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv8_1_relu" type: "ReLU" bottom: "conv8_1" top: "conv8_1" }
layer { name: "conv8_2" type: "Convolution" bottom: "conv8_1" top: "conv8_2" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 256 pad: 0 kernel_size: 3 stride: 1
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv8_2_relu" type: "ReLU" bottom: "conv8_2" top: "conv8_2" }
layer { name: "conv9_1" type: "Convolution" bottom: "conv8_2" top: "conv9_1" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 128 pad: 0 kernel_size: 1 stride: 1
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv9_1_relu" type: "ReLU" bottom: "conv9_1" top: "conv9_1" }
layer { name: "conv9_2" type: "Convolution" bottom: "conv9_1" top: "conv9_2" param { lr_mult: 1.0 decay_mult: 1.0 }
  param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 256 pad: 0 kernel_size: 3 stride: 1
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } } }
layer { name: "conv9_2_relu" type: "ReLU" bottom: "conv9_2" top: "conv9_2" }
layer { name: "conv4_3_norm" type: "Normalize" bottom: "conv4_3" top: "conv4_3_norm" norm_param { across_spatial:
  false scale_filler { type: "constant" value: 20.0 } channel_shared: false } }
layer { name: "conv4_3_norm_mbox_loc" type: "Convolution" bottom: "conv4_3_norm" top: "conv4_3_norm_mbox_loc" param
  { lr_mult: 1.0 decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 240
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3
  kernel_w: 5 stride_h: 1 stride_w: 1 } }
layer { name: "conv4_3_norm_mbox_loc_perm" type: "Permute" bottom: "conv4_3_norm_mbox_loc" top:
  "conv4_3_norm_mbox_loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv4_3_norm_mbox_loc_flat" type: "Flatten" bottom: "conv4_3_norm_mbox_loc_perm" top:
  "conv4_3_norm_mbox_loc_flat" flatten_param { axis: 1 } }
layer { name: "conv4_3_norm_mbox_conf" type: "Convolution" bottom: "conv4_3_norm" top: "conv4_3_norm_mbox_conf"
  param { lr_mult: 1.0 decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 40
  weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3
  kernel_w: 5 stride_h: 1 stride_w: 1 } }
layer { name: "conv4_3_norm_mbox_conf_perm" type: "Permute" bottom: "conv4_3_norm_mbox_conf" top:
  "conv4_3_norm_mbox_conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv4_3_norm_mbox_conf_flat" type: "Flatten" bottom: "conv4_3_norm_mbox_conf_perm" top:
  "conv4_3_norm_mbox_conf_flat" flatten_param { axis: 1 } }
layer { name: "conv4_3_norm_mbox_priorbox" type: "PriorBox" bottom: "conv4_3_norm" bottom: "data" top:
  "conv4_3_norm_mbox_priorbox" prior_box_param { min_size: 30.0 max_size: 60.0 aspect_ratio: 2.0 aspect_ratio: 3.0
  aspect_ratio: 4.0 aspect_ratio: 5.0 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2
  step: 8.0 offset: 0.5 denser_prior_boxes: true } }
layer { name: "fc7_mbox_loc" type: "Convolution" bottom: "fc7" top: "fc7_mbox_loc" param { lr_mult: 1.0 decay_mult:
  1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 240 weight_filler { type: "xavier" }
  bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1 stride_w: 1 } }
layer { name: "fc7_mbox_loc_perm" type: "Permute" bottom: "fc7_mbox_loc" top: "fc7_mbox_loc_perm" permute_param {
  order: 0 order: 2 order: 3 order: 1 } }
layer { name: "fc7_mbox_loc_flat" type: "Flatten" bottom: "fc7_mbox_loc_perm" top: "fc7_mbox_loc_flat" flatten_param
  { axis: 1 } }
layer { name: "fc7_mbox_conf" type: "Convolution" bottom: "fc7" top: "fc7_mbox_conf" param { lr_mult: 1.0
  decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 40 weight_filler { type:
  "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "fc7_mbox_conf_perm" type: "Permute" bottom: "fc7_mbox_conf" top: "fc7_mbox_conf_perm" permute_param {
  order: 0 order: 2 order: 3 order: 1 } }
layer { name: "fc7_mbox_conf_flat" type: "Flatten" bottom: "fc7_mbox_conf_perm" top: "fc7_mbox_conf_flat"
  flatten_param { axis: 1 } }
layer { name: "fc7_mbox_priorbox" type: "PriorBox" bottom: "fc7" bottom: "data" top: "fc7_mbox_priorbox"
  prior_box_param { min_size: 30.0 max_size: 90.0 aspect_ratio: 2.0 aspect_ratio: 3.0 aspect_ratio: 4.0
  aspect_ratio: 5.0 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 16.0
  offset: 0.5 denser_prior_boxes: true } }
layer { name: "conv6_2_mbox_loc" type: "Convolution" bottom: "conv6_2" top: "conv6_2_mbox_loc" param { lr_mult: 1.0
  decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 240 weight_filler { type:
  "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv6_2_mbox_loc_perm" type: "Permute" bottom: "conv6_2_mbox_loc" top: "conv6_2_mbox_loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv6_2_mbox_loc_flat" type: "Flatten" bottom: "conv6_2_mbox_loc_perm" top: "conv6_2_mbox_loc_flat"
  flatten_param { axis: 1 } }
layer { name: "conv6_2_mbox_conf" type: "Convolution" bottom: "conv6_2" top: "conv6_2_mbox_conf" param { lr_mult:
  1.0 decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 40 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv6_2_mbox_conf_perm" type: "Permute" bottom: "conv6_2_mbox_conf" top: "conv6_2_mbox_conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv6_2_mbox_conf_flat" type: "Flatten" bottom: "conv6_2_mbox_conf_perm" top:
  "conv6_2_mbox_conf_flat" flatten_param { axis: 1 } }
layer { name: "conv6_2_mbox_priorbox" type: "PriorBox" bottom: "conv6_2" bottom: "data" top: "conv6_2_mbox_priorbox"
  prior_box_param { min_size: 90.0 max_size: 150.0 aspect_ratio: 2.0 aspect_ratio: 3.0 aspect_ratio: 4.0
  aspect_ratio: 5.0 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 32.0
  offset: 0.5 denser_prior_boxes: true } }
layer { name: "conv7_2_mbox_loc" type: "Convolution" bottom: "conv7_2" top: "conv7_2_mbox_loc" param { lr_mult: 1.0
  decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 240 weight_filler { type:
  "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv7_2_mbox_loc_perm" type: "Permute" bottom: "conv7_2_mbox_loc" top: "conv7_2_mbox_loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv7_2_mbox_loc_flat" type: "Flatten" bottom: "conv7_2_mbox_loc_perm" top: "conv7_2_mbox_loc_flat"
  flatten_param { axis: 1 } }
layer { name: "conv7_2_mbox_conf" type: "Convolution" bottom: "conv7_2" top: "conv7_2_mbox_conf" param { lr_mult:
  1.0 decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 40 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv7_2_mbox_conf_perm" type: "Permute" bottom: "conv7_2_mbox_conf" top: "conv7_2_mbox_conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv7_2_mbox_conf_flat" type: "Flatten" bottom: "conv7_2_mbox_conf_perm" top:
  "conv7_2_mbox_conf_flat" flatten_param { axis: 1 } }
layer { name: "conv7_2_mbox_priorbox" type: "PriorBox" bottom: "conv7_2" bottom: "data" top: "conv7_2_mbox_priorbox"
  prior_box_param { min_size: 150.0 max_size: 210.0 aspect_ratio: 2.0 aspect_ratio: 3.0 aspect_ratio: 4.0
  aspect_ratio: 5.0 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 64.0
  offset: 0.5 denser_prior_boxes: true } }
layer { name: "conv8_2_mbox_loc" type: "Convolution" bottom: "conv8_2" top: "conv8_2_mbox_loc" param { lr_mult: 1.0
  decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 240 weight_filler { type:
  "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv8_2_mbox_loc_perm" type: "Permute" bottom: "conv8_2_mbox_loc" top: "conv8_2_mbox_loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv8_2_mbox_loc_flat" type: "Flatten" bottom: "conv8_2_mbox_loc_perm" top: "conv8_2_mbox_loc_flat"
  flatten_param { axis: 1 } }
layer { name: "conv8_2_mbox_conf" type: "Convolution" bottom: "conv8_2" top: "conv8_2_mbox_conf" param { lr_mult:
  1.0 decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 40 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv8_2_mbox_conf_perm" type: "Permute" bottom: "conv8_2_mbox_conf" top: "conv8_2_mbox_conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv8_2_mbox_conf_flat" type: "Flatten" bottom: "conv8_2_mbox_conf_perm" top:
  "conv8_2_mbox_conf_flat" flatten_param { axis: 1 } }
layer { name: "conv8_2_mbox_priorbox" type: "PriorBox" bottom: "conv8_2" bottom: "data" top: "conv8_2_mbox_priorbox"
  prior_box_param { min_size: 210.0 max_size: 270.0 aspect_ratio: 2.0 aspect_ratio: 3.0 aspect_ratio: 4.0
  aspect_ratio: 5.0 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 100.0
  offset: 0.5 denser_prior_boxes: true } }
layer { name: "conv9_2_mbox_loc" type: "Convolution" bottom: "conv9_2" top: "conv9_2_mbox_loc" param { lr_mult: 1.0
  decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 240 weight_filler { type:
  "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv9_2_mbox_loc_perm" type: "Permute" bottom: "conv9_2_mbox_loc" top: "conv9_2_mbox_loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv9_2_mbox_loc_flat" type: "Flatten" bottom: "conv9_2_mbox_loc_perm" top: "conv9_2_mbox_loc_flat"
  flatten_param { axis: 1 } }
layer { name: "conv9_2_mbox_conf" type: "Convolution" bottom: "conv9_2" top: "conv9_2_mbox_conf" param { lr_mult:
  1.0 decay_mult: 1.0 } param { lr_mult: 2.0 decay_mult: 0.0 } convolution_param { num_output: 40 weight_filler {
  type: "xavier" } bias_filler { type: "constant" value: 0.0 } pad_h: 1 pad_w: 2 kernel_h: 3 kernel_w: 5 stride_h: 1
  stride_w: 1 } }
layer { name: "conv9_2_mbox_conf_perm" type: "Permute" bottom: "conv9_2_mbox_conf" top: "conv9_2_mbox_conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv9_2_mbox_conf_flat" type: "Flatten" bottom: "conv9_2_mbox_conf_perm" top:
  "conv9_2_mbox_conf_flat" flatten_param { axis: 1 } }
layer { name: "conv9_2_mbox_priorbox" type: "PriorBox" bottom: "conv9_2" bottom: "data" top: "conv9_2_mbox_priorbox"
  prior_box_param { min_size: 270.0 max_size: 330.0 aspect_ratio: 2.0 aspect_ratio: 3.0 aspect_ratio: 4.0
  aspect_ratio: 5.0 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 300.0
  offset: 0.5 denser_prior_boxes: true } }
layer { name: "mbox_loc" type: "Concat" bottom: "conv4_3_norm_mbox_loc_flat" bottom: "fc7_mbox_loc_flat" bottom:
  "conv6_2_mbox_loc_flat" bottom: "conv7_2_mbox_loc_flat" bottom: "conv8_2_mbox_loc_flat" bottom:
  "conv9_2_mbox_loc_flat" top: "mbox_loc" concat_param { axis: 1 } }
layer { name: "mbox_conf" type: "Concat" bottom: "conv4_3_norm_mbox_conf_flat" bottom: "fc7_mbox_conf_flat" bottom:
  "conv6_2_mbox_conf_flat" bottom: "conv7_2_mbox_conf_flat" bottom: "conv8_2_mbox_conf_flat" bottom:
  "conv9_2_mbox_conf_flat" top: "mbox_conf" concat_param { axis: 1 } }
layer { name: "mbox_priorbox" type: "Concat" bottom: "conv4_3_norm_mbox_priorbox" bottom: "fc7_mbox_priorbox"
  bottom: "conv6_2_mbox_priorbox" bottom: "conv7_2_mbox_priorbox" bottom: "conv8_2_mbox_priorbox" bottom:
  "conv9_2_mbox_priorbox" top: "mbox_priorbox" concat_param { axis: 2 } }
layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape" reshape_param { shape
  { dim: 0 dim: -1 dim: 2 } } }
layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax" softmax_param
  { axis: 2 } }
layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten" flatten_param
  { axis: 1 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten" bottom:
  "mbox_priorbox" top: "detection_out" include { phase: TEST } detection_output_param { num_classes: 2
  share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 400 } save_output_param {
  output_directory: "./data/text/results/text/text_polygon_ic15_fix_order_384x384/Main" output_name_prefix:
  "comp4_det_test_" output_format: "VOC" label_map_file: "data/text/labelmap_voc.prototxt" num_test_image: 500 }
  code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01 use_polygon: true } }
"""

LABELMAP = """item { name: "background" label: 0 display_name: "background" }
item { name: "text" label: 1 display_name: "text" }
"""


def _quads_ref(loc, prior):
    """DecodeBBoxPolygon's quadrilaterals of every prior, NumPy (float32)."""
    pb = prior.reshape(2, -1, 4)
    p, v = pb[0], pb[1]
    off = loc.reshape(-1, 12)[:, 4:]
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    xs = [p[:, 0], p[:, 2], p[:, 2], p[:, 0]]
    ys = [p[:, 1], p[:, 1], p[:, 3], p[:, 3]]
    cols = []
    for k in range(4):
        cols += [v[:, 0] * off[:, 2 * k] * pw + xs[k], v[:, 1] * off[:, 2 * k + 1] * ph + ys[k]]
    return np.stack(cols, axis=1)


def test_fork_deploy_builds_and_runs(tmp_path, monkeypatch):
    # the fork's layer reads label_map_file and makes output_directory relative to the working directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "text").mkdir(parents=True)
    (tmp_path / "data" / "text" / "labelmap_voc.prototxt").write_text(LABELMAP)
    size = 288
    net = Net(read_net(DEPLOY.replace("dim: 768", f"dim: {size}")), caffe_pb2.TEST)
    torch.manual_seed(0)
    with torch.no_grad():
        net.forward({"data": torch.randn(1, 3, size, size) * 50})
    prior = net.blob("mbox_priorbox").numpy()
    loc = net.blob("mbox_loc").numpy()
    num_priors = prior.shape[-1] // 4
    # 20 priors per cell (10 ratios/sizes, doubled by denser_prior_boxes) on 36^2 + 18^2 + 9^2 + 5^2 + 3^2 + 1
    assert num_priors == 20 * (36 ** 2 + 18 ** 2 + 9 ** 2 + 5 ** 2 + 3 ** 2 + 1)
    assert loc.shape == (1, num_priors * 12)
    det = net.blob("detection_out").numpy()
    assert det.shape[:2] == (1, 1) and det.shape[3] == 15 and 1 <= det.shape[2] <= 200
    assert np.isfinite(det).all()
    rows = det[0, 0]
    assert (rows[:, 1] == 1).all() and (rows[:, 0] == 0).all()
    # every detection's quadrilateral is its prior's decoded one: find the prior by its decoded box
    quads = _quads_ref(loc, prior)
    pb = prior.reshape(2, -1, 4)
    off = loc.reshape(-1, 12)[:, :4]
    pw, ph = pb[0, :, 2] - pb[0, :, 0], pb[0, :, 3] - pb[0, :, 1]
    cx = pb[1, :, 0] * off[:, 0] * pw + (pb[0, :, 0] + pb[0, :, 2]) / 2
    cy = pb[1, :, 1] * off[:, 1] * ph + (pb[0, :, 1] + pb[0, :, 3]) / 2
    w, h = np.exp(pb[1, :, 2] * off[:, 2]) * pw, np.exp(pb[1, :, 3] * off[:, 3]) * ph
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    for r in rows:
        j = int(np.argmin(np.abs(boxes - r[3:7]).sum(1)))
        np.testing.assert_allclose(r[3:7], boxes[j], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r[7:15], quads[j], rtol=1e-5, atol=1e-5)
    assert (tmp_path / "data" / "text" / "results").is_dir()   # made at setup, as the fork does


def test_detection_evaluate_form_is_told_by_field_and_bottoms():
    """TextBoxes++'s DetectionEvaluate: use_polygon set asks for 15 (true) or 12 (false) detection columns, unset
    the detections' width tells; its forms read 16-column ground truth, SSD's 7 / 8 stay SSD's. The evaluation
    itself: tests/layers/test_textboxes_eval.py."""
    ev = get_layer_class("DetectionEvaluate")

    def layer(text, det, gt):
        lp = text_format.Parse('name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "label" top: "out" '
                               'detection_evaluate_param { num_classes: 2 ' + text + ' }', caffe_pb2.LayerParameter())
        lay = ev(lp, [det, gt], 1)
        return lay.reshape([det, gt])

    for text, det, gt in (("", 15, 16), ("", 12, 16), ("", 7, 8), ("use_polygon: true", 15, 16),
                          ("use_polygon: false", 12, 16)):
        assert layer(text, (1, 1, 5, det), (1, 1, 3, gt)) == [(1, 1, 2, 5)]
    for text, det, gt, message in (("use_polygon: true", 7, 8, "use_polygon: true evaluates detections of 15"),
                                   ("use_polygon: false", 15, 16, "of 12 columns"),
                                   ("", 15, 8, r"ground truth \(1, 1, G, 16\)"),
                                   ("", 7, 16, r"ground truth \(1, 1, G, 8\)")):
        with pytest.raises(Exception, match=r"layer 'eval'.*" + message):
            layer(text, (1, 1, 5, det), (1, 1, 3, gt))


# -- MultiBoxLoss's quadrilateral / rotated-box training -------------------------------------------------------
def _rbox_of_quad(q):
    """PolygonToRbox, scalar by scalar."""
    (xtl, ytl, xtr, ytr, xbr, ybr, xbl, ybl) = q

    def line(px, py, x1, y1, x2, y2):
        dx, dy = x2 - x1, y2 - y1
        return abs(px * dy - py * dx + x2 * y1 - y2 * x1) / (math.sqrt(dx * dx + dy * dy) + 1e-6)

    cx, cy = (xtl + xtr + xbr + xbl) / 4, (ytl + ytr + ybr + ybl) / 4
    w = (math.hypot(xtr - xtl, ytr - ytl) + math.hypot(xbr - xbl, ybr - ybl)) / 2
    h = line(cx, cy, xtl, ytl, xtr, ytr) + line(cx, cy, xbl, ybl, xbr, ybr)
    t = (math.atan2(ytr - ytl, xtr - xtl) + math.atan2(ybr - ybl, xbr - xbl)) / 2
    tx, ty = cx + math.cos(t - math.pi / 2) * h / 2, cy + math.sin(t - math.pi / 2) * h / 2
    return [tx + math.cos(t - math.pi) * w / 2, ty + math.sin(t - math.pi) * w / 2,
            tx + math.cos(t) * w / 2, ty + math.sin(t) * w / 2, h]


def _encode_tb(pr, var, box, quad, form):
    """EncodeBBoxPolygon / EncodeBBoxRBox (CENTER_SIZE, variances in the priors)."""
    from tests.layers.test_multibox_loss import _encode
    pw, ph = pr[2] - pr[0], pr[3] - pr[1]
    out = _encode(pr, var, box, 2, False)
    if form == 12:
        ax, ay = (pr[0], pr[2], pr[2], pr[0]), (pr[1], pr[1], pr[3], pr[3])
        for k in range(4):
            out += [(quad[2 * k] - ax[k]) / pw / var[0], (quad[2 * k + 1] - ay[k]) / ph / var[1]]
        return out
    x1, y1, x2, y2, h = _rbox_of_quad(quad)
    cx, cy = (pr[0] + pr[2]) / 2, (pr[1] + pr[3]) / 2
    return out + [(x1 - cx) / pw / var[0], (y1 - cy) / ph / var[1], (x2 - cx) / pw / var[0],
                  (y2 - cy) / ph / var[1], math.log(h / ph) / var[3]]


def _textboxes_loss_ref(loc, conf, prior, gt, P):
    """The fork's MultiBoxLoss Forward_cpu + Backward_cpu (use_polygon true / false) with top diff 1, a loop port:
    (loss, dloc, dconf). Matching and mining are SSD's on the first four offsets of each prior."""
    from tests.layers.test_multibox_loss import _conf_loss_ref, _conf_terms_ref, _decode, _match
    F, n, C, share, bg = P["form"], loc.shape[0], P["num_classes"], P["share"], 0
    L = 1 if share else C
    npri = prior.shape[2] // 4
    pri, var = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    lo, co = loc.reshape(n, npri, L, F), conf.reshape(n, npri, C)
    gts = {}
    for r in gt.reshape(-1, 16):                     # GetGroundTruth: 16 columns, item -1 skipped
        if int(r[0]) == -1 or r[7]:
            continue
        gts.setdefault(int(r[0]), []).append({"label": int(r[1]), "box": list(r[3:7]), "quad": list(r[8:16])})
    matches, overs = [], []
    for i in range(n):                               # FindMatches (SSD's)
        mi, mo = {}, {}
        if i in gts:
            if P["prior_match"]:
                ti, to = _match(gts[i], list(pri), -1, 1, P["thr"], False)
                if share:
                    mi[-1], mo[-1] = ti, to
                else:
                    for c in range(1, C):
                        mi[c] = [t if t > -1 and gts[i][t]["label"] == c else -1 for t in ti]
                        mo[c] = to
            else:
                boxes = [_decode(pri[p], var[p], lo[i, p, 0, :4], 2, False) for p in range(npri)]
                mi[-1], mo[-1] = _match(gts[i], boxes, -1, 1, P["thr"], False)
        matches.append(mi)
        overs.append(mo)

    def sl1(d):
        return sum(0.5 * x * x if abs(x) < 1 else abs(x) - 0.5 for x in d)

    def pair(i, lab, p, width):                      # EncodeLocPrediction(BboxPolygon / Rbox)
        g = gts[i][matches[i][lab][p]]
        ge = _encode_tb(pri[p], var[p], g["box"], g["quad"], F)[:width]
        pe = list(lo[i, p, 0 if share else lab][:width])
        if P["bp_inside"]:
            gate = ([0, 1, 2, 3] + ([0, 1, 2, 3, 2, 3, 2, 3] if F == 12 else [0, 1, 2, 3, 3]))[:width]
            pe = [ge[k] if not 0 <= pri[p][gate[k]] <= 1 else pe[k] for k in range(width)]
        return pe, ge

    negs = [[] for _ in range(n)]
    if P["mining"]:                                  # MineHardExamples (SSD's, 4 offsets)
        for i in range(n):
            for lab in sorted(matches[i]):
                m, ov = matches[i][lab], overs[i][lab]
                labels = [gts[i][m[p]]["label"] if m[p] > -1 else bg for p in range(npri)]
                loss = [_conf_loss_ref(co[i, p], labels[p], 0) for p in range(npri)]
                if P["mining"] == 2:
                    loss = [loss[p] + (sl1(np.subtract(*pair(i, lab, p, 4))) if m[p] > -1 else 0)
                            for p in range(npri)]
                    elig, num_sel = list(range(npri)), min(P["sample_size"], npri)
                else:
                    elig = [p for p in range(npri) if m[p] == -1 and ov[p] < P["neg_overlap"]]
                    num_pos = sum(1 for p in range(npri) if m[p] > -1)
                    num_sel = min(int(np.float32(num_pos) * np.float32(P["ratio"])), len(elig))
                sel = set(sorted(elig, key=lambda p: -loss[p])[:num_sel])
                for p in range(npri):
                    if m[p] > -1 and P["mining"] == 2 and p not in sel:
                        m[p] = -1
                    elif m[p] == -1 and p in sel:
                        negs[i].append(p)
    num_matches = sum(1 for i in range(n) for lab in matches[i] for x in matches[i][lab] if x > -1)
    norm = max(1.0, num_matches)                     # VALID
    loc_loss, dloc, dconf = 0.0, np.zeros_like(lo), np.zeros_like(co)
    for i in range(n):
        for lab in sorted(matches[i]):
            for p, mm in enumerate(matches[i][lab]):
                if mm > -1:
                    d = np.subtract(*pair(i, lab, p, F))
                    loc_loss += sl1(d)
                    dloc[i, p, 0 if share else lab] = np.array([x if abs(x) < 1 else np.sign(x) for x in d]) \
                        * P["loc_weight"] / norm
    loss = min(P["loc_weight"] * loc_loss / norm, 20.0)          # the fork's cap on the reported term
    rows = []
    for i in range(n):
        if P["mining"]:
            if i not in gts:
                continue
            for lab in sorted(matches[i]):
                rows += [(i, p, gts[i][mm]["label"]) for p, mm in enumerate(matches[i][lab]) if mm > -1]
            rows += [(i, p, bg) for p in negs[i]]
        else:
            labels = [bg] * npri
            for lab in sorted(matches[i], reverse=True):
                for p, mm in enumerate(matches[i][lab]):
                    if mm > -1:
                        labels[p] = gts[i][mm]["label"]
            rows += [(i, p, labels[p]) for p in range(npri)]
    loss += _conf_terms_ref(co, rows, 0, norm, dconf)
    return loss, dloc.reshape(loc.shape), dconf.reshape(conf.shape)


def _text_labels(r, C, images=(0, 0, 0, 2, 2, 2)):
    """Ground truth in the fork's AnnotatedData layout: 16 columns, SSD's 8 then the quadrilateral (tl, tr,
    br, bl) inside the box, slightly rotated; one difficult row and a padding row of -1."""
    gt = []
    for i in images:
        x0, y0 = r.uniform(0, 0.6, 2)
        w, h = r.uniform(0.15, 0.4, 2)
        a, b = r.uniform(0, 0.2, 2) * (w, h)
        quad = [x0 + a, y0, x0 + w, y0 + b, x0 + w - a, y0 + h, x0, y0 + h - b]
        gt.append([i, r.integers(1, C), 0, x0, y0, x0 + w, y0 + h, 0] + quad)
    gt[4][7] = 1
    gt.append([-1] + [0] * 15)
    return np.array(gt, float)[None, None]


def _text_priors(r, npri, lo=-0.05):
    xy = r.uniform(lo, 0.75, (npri, 2))
    wh = r.uniform(0.1, 0.35, (npri, 2))
    return np.stack([np.concatenate([xy, xy + wh], 1).reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], npri)])[None]


def _loss_layer(F, C, P, shapes, extra=""):
    fields = (f'num_classes: {C} share_location: {str(P["share"]).lower()} match_type: PER_PREDICTION '
              f'overlap_threshold: {P["thr"]} use_prior_for_matching: {str(P["prior_match"]).lower()} '
              f'background_label_id: 0 use_difficult_gt: false mining_type: {P["mining"]} '
              f'neg_pos_ratio: {P["ratio"]} neg_overlap: {P["neg_overlap"]} code_type: CENTER_SIZE '
              f'loc_weight: {P["loc_weight"]} sample_size: {P["sample_size"]} '
              f'bp_inside: {str(P["bp_inside"]).lower()} {extra}')
    text = ('name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior" bottom: "label" '
            f'top: "loss" multibox_loss_param {{ {fields} }} loss_param {{ normalization: VALID }}')
    return get_layer_class("MultiBoxLoss")(text_format.Parse(text, caffe_pb2.LayerParameter()), shapes,
                                           caffe_pb2.TRAIN)


TB_CASES = [
    dict(form=12, share=True, prior_match=True, mining=1, bp_inside=False, field="use_polygon: true"),
    dict(form=12, share=True, prior_match=True, mining=1, bp_inside=False, field=""),
    dict(form=9, share=True, prior_match=True, mining=1, bp_inside=False, field="use_polygon: false"),
    dict(form=12, share=True, prior_match=True, mining=2, bp_inside=True, field=""),
    dict(form=9, share=True, prior_match=False, mining=1, bp_inside=True, field="use_polygon: false"),
    dict(form=12, share=False, prior_match=True, mining=0, bp_inside=False, field=""),
    dict(form=9, share=False, prior_match=True, mining=0, bp_inside=True, field="use_polygon: false"),
    dict(form=12, share=True, prior_match=True, mining=1, bp_inside=False, field="", loc_weight=1.5),  # capped
]


@pytest.mark.parametrize("case", TB_CASES, ids=[str(i) for i in range(len(TB_CASES))])
def test_multibox_loss_quad_and_rbox_targets_match_the_fork(case):
    """TextBoxes++'s MultiBoxLoss (12 offsets per prior with use_polygon, 9 without) against a loop port of
    the fork's Forward_cpu / Backward_cpu: loss and both diffs, with its 16-column label rows."""
    P = dict(num_classes=3, thr=0.25, neg_overlap=0.45, ratio=2.5, loc_weight=0.125, sample_size=8)
    P.update(case)
    r = np.random.default_rng(23)
    n, npri, C, F = 3, 30, P["num_classes"], P["form"]
    L = 1 if P["share"] else C
    prior = _text_priors(r, npri)
    gt = _text_labels(r, C)
    loc = r.standard_normal((n, npri * L * F)) * 0.3
    conf = r.standard_normal((n, npri * C))
    layer = _loss_layer(F, C, P, [loc.shape, conf.shape, prior.shape, gt.shape], P["field"])
    lt, ct = torch.tensor(loc, requires_grad=True), torch.tensor(conf, requires_grad=True)
    out = layer(lt, ct, torch.tensor(prior), torch.tensor(gt))
    out.backward()
    ref_loss, ref_dloc, ref_dconf = _textboxes_loss_ref(loc, conf, prior, gt, P)
    assert float(out.detach()) == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(lt.grad.numpy(), ref_dloc, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ct.grad.numpy(), ref_dconf, rtol=1e-9, atol=1e-12)
    conf_only = _textboxes_loss_ref(loc, conf, prior, gt, dict(P, loc_weight=0.0))[0]
    loc_term = ref_loss - conf_only
    assert loc_term == pytest.approx(20.0) if "loc_weight" in case else 0 < loc_term < 20
    assert float(out.detach()) == pytest.approx(conf_only + loc_term, rel=1e-6)


@pytest.mark.parametrize("extra, per_prior, message", [
    ("", 9, "use_polygon: false"), ("use_polygon: true", 9, "trains 12"), ("use_polygon: false", 12, "trains 9"),
    ("use_polygon: false", 4, "trains 9"), ("code_type: CORNER", 12, "CENTER_SIZE"),
    ("encode_variance_in_target: true", 12, "CENTER_SIZE"), ("label_rows: 3", 12, "16 values a row")])
def test_multibox_loss_textboxes_form_errors(extra, per_prior, message):
    """The form is told by use_polygon when set, else by a head of 12 per prior (the fork's default); a head
    that does not fit, or a coding the fork leaves undefined for the extra offsets, is an error."""
    lp = text_format.Parse('name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior" '
                           'bottom: "label" top: "loss" multibox_loss_param { num_classes: 2 '
                           + extra.replace("label_rows: 3", "code_type: CENTER_SIZE") + ' }',
                           caffe_pb2.LayerParameter())
    priors = 6
    label = (1, 1, 3, 8) if extra.startswith("label_rows") else (1, 1, 3, 16)
    with pytest.raises(Exception, match=r"layer 'mbox_loss'.*" + message):
        get_layer_class("MultiBoxLoss")(lp, [(2, priors * per_prior), (2, priors * 2), (1, 2, priors * 4),
                                             label], 0)


_TINY_NET = """
name: "tiny_textboxes"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 5 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "loc" type: "Convolution" bottom: "conv1" top: "loc"
  convolution_param { num_output: LOCS kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "conv1" top: "conf"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "prior" type: "PriorBox" bottom: "conv1" bottom: "data" top: "prior"
  prior_box_param { min_size: 6 aspect_ratio: 3 flip: false clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc_flat" bottom: "conf_flat" bottom: "prior" bottom: "label"
  top: "mbox_loss" propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 0.2 num_classes: 2
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE mining_type: MAX_NEGATIVE FIELD } }
"""


@pytest.mark.parametrize("form, field", [(12, ""), (9, "use_polygon: false")])
def test_tiny_textboxes_net_trains(tmp_path, form, field):
    """A few SGD steps on a tiny TextBoxes++ head (2 priors a cell, 12 or 9 offsets each), the label bottom fed
    in the fork's 16-column layout: the loss falls."""
    import caffe
    (tmp_path / "train.prototxt").write_text(
        _TINY_NET.replace("LOCS", str(2 * form)).replace("FIELD", field))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 5')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    r = np.random.default_rng(4)
    data = r.standard_normal((2, 3, 16, 16)).astype(np.float32)
    rows = []
    for i, (x0, y0, w, h) in enumerate([(0.1, 0.2, 0.5, 0.2), (0.4, 0.6, 0.45, 0.15)] * 2):
        quad = [x0 + 0.02, y0, x0 + w, y0 + 0.03, x0 + w - 0.02, y0 + h, x0, y0 + h - 0.03]
        rows.append([i // 2, 1, 0, x0, y0, x0 + w, y0 + h, 0] + quad)
    rows.append([-1] + [0] * 15)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = np.array(rows, np.float32)[None, None]
    first = float(solver.net.forward()["mbox_loss"])
    solver.step(30)
    last = float(solver.net.forward()["mbox_loss"])
    print(f"tiny TextBoxes++ ({form} offsets): loss {first:.3f} -> {last:.3f}")
    assert np.isfinite(first) and last < 0.5 * first, (first, last)
