"""BoxAnnotatorOHEM (R-FCN's online hard example mining) against a NumPy port of the fork's forward
loop (caffe-rfcn ``src/caffe/layers/box_annotator_ohem_layer.cu``), its shape and parameter errors, and
a small R-FCN-style OHEM net: SoftmaxWithLoss and SmoothL1Loss read the annotator's tops, a solver
steps it, and only the kept RoIs pass gradient down."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net_with_source
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.box_annotator_ohem import BoxAnnotatorOHEM
from neocaffe.layers.registry import UnknownLayerError, check_layer_types
from neocaffe.proto import caffe_pb2


# -- the fork's forward, loop by loop ---------------------------------------------------------------
def _std_sort(items: list[int], greater) -> list[int]:
    """libstdc++'s ``std::sort`` for up to 16 elements (``__insertion_sort``: move to the front when
    ``comp(val, first)``, else shift left while ``comp(val, prev)``); for more elements the fork's
    introsort leaves ties in an order of its own, and the layer (like this reference) keeps RoI order."""
    a = list(items)
    for i in range(1, len(a)):
        val = a[i]
        if greater(val, a[0]):
            a[1:i + 1] = a[0:i]
            a[0] = val
            continue
        j = i
        while greater(val, a[j - 1]):
            a[j] = a[j - 1]
            j -= 1
        a[j] = val
    return a


def _legacy(shape) -> tuple[int, int, int, int]:
    return tuple(shape) + (1,) * (4 - len(shape))


def fork_ohem(rois, loss, labels, weights, roi_per_img: int, ignore_label: int):
    """``BoxAnnotatorOHEMLayer::Forward_gpu`` on host arrays (float32, as the fork's Dtype)."""
    num, _, height, width = _legacy(rois.shape)
    sd = height * width
    rois_f, loss_f = rois.reshape(-1), loss.reshape(-1)
    labels_f, bw_f = labels.reshape(-1), weights.reshape(-1)
    bbox_channels = _legacy(weights.shape)[1]
    top_labels = np.full(labels_f.size, ignore_label, dtype=labels.dtype)
    top_w = np.zeros(bw_f.size, dtype=weights.dtype)
    num_imgs = -1
    for n in range(num):  # the fork's loop runs num_rois x sd times (past the blob when sd > 1)
        for s in range(sd):
            v = rois_f[n * 5 * sd + s]
            if v > num_imgs:
                num_imgs = int(v)  # Dtype -> int: truncation
    num_imgs += 1
    assert num_imgs > 0
    order = _std_sort(list(range(loss_f.size)), lambda i1, i2: loss_f[i1] > loss_f[i2])
    number_left = [roi_per_img] * num_imgs
    for index in order:
        s, n = index % sd, index // sd
        b = int(rois_f[n * 5 * sd + s])
        if number_left[b] > 0:
            number_left[b] -= 1
            top_labels[index] = labels_f[index]
            for j in range(bbox_channels):
                k = (n * bbox_channels + j) * sd + s
                top_w[k] = bw_f[k]
    return top_labels.reshape(num, 1, height, width), top_w.reshape(num, bbox_channels, height, width)


# -- helpers --------------------------------------------------------------------------------------
def _layer(roi_per_img: int | None, shapes, ignore_label: int | None = None, name: str = "ohem"):
    p = "" if roi_per_img is None else f"roi_per_img: {roi_per_img} "
    p += "" if ignore_label is None else f"ignore_label: {ignore_label}"
    text = (f'name: "{name}" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "loss" bottom: "labels" bottom: "w" '
            f'top: "labels_ohem" top: "w_ohem" box_annotator_ohem_param {{ {p} }}')
    return BoxAnnotatorOHEM(text_format.Parse(text, caffe_pb2.LayerParameter()), shapes)


def _case(rng, r: int, images: int, ties: bool, fractional: bool, channels: int = 8):
    batch = rng.integers(0, images, r).astype(np.float64)
    if fractional:  # the fork truncates: 1.7 is image 1, -0.5 image 0
        batch += rng.uniform(0, 0.99, r)
        batch[rng.random(r) < 0.1] = -0.5
    rois = np.concatenate([batch[:, None], rng.uniform(0, 600, (r, 4))], 1).astype(np.float32)
    loss = (rng.choice([0.0, 0.5, 1.25, 3.0], r) if ties else rng.exponential(1.0, r)).astype(np.float32)
    labels = rng.integers(0, 21, r).astype(np.float32)
    weights = (rng.integers(0, 2, (r, channels)) * rng.uniform(0.5, 2, (r, channels))).astype(np.float32)
    return rois, loss, labels, weights


def _run(layer, *arrays, dtype=torch.float32):
    tops = layer(*[torch.as_tensor(a, dtype=dtype) for a in arrays])
    return [t.numpy() for t in tops]


# -- forward against the fork ---------------------------------------------------------------------
@pytest.mark.parametrize("r,images,per_img,ignore,ties,fractional", [
    (12, 1, 4, -1, True, False),      # <= 16 RoIs: the fork's std::sort is an insertion sort, ties exact
    (16, 3, 2, 255, True, True),
    (9, 2, 20, -1, False, False),     # roi_per_img above every image's RoI count: all kept
    (300, 1, 128, -1, False, False),  # R-FCN's one image, 300 RoIs, 128 kept
    (600, 2, 128, -1, True, False),   # two images, many ties at the cut
    (257, 4, 33, 0, True, True),      # ignore_label 0 (a real class), fractional and -0.5 batch indices
    (40, 5, 1, 7, False, True),
])
def test_forward_matches_the_forks_loop(r, images, per_img, ignore, ties, fractional):
    rng = np.random.default_rng(r * 31 + images)
    for _ in range(3):
        rois, loss, labels, weights = _case(rng, r, images, ties, fractional)
        layer = _layer(per_img, [rois.shape, loss.shape, labels.shape, weights.shape], ignore)
        got_labels, got_w = _run(layer, rois, loss, labels, weights)
        want_labels, want_w = fork_ohem(rois, loss, labels, weights, per_img, ignore)
        np.testing.assert_array_equal(got_labels, want_labels)
        np.testing.assert_array_equal(got_w, want_w)
        kept = got_labels.reshape(-1) != ignore if ignore not in labels else None
        if kept is not None:
            per_image = np.bincount(np.trunc(rois[:, 0]).astype(int)[kept], minlength=images)
            available = np.bincount(np.trunc(rois[:, 0]).astype(int), minlength=images)
            np.testing.assert_array_equal(per_image, np.minimum(available, per_img))


def test_forward_float64_and_4d_blobs_and_spatial_positions():
    rng = np.random.default_rng(5)
    rois, loss, labels, weights = _case(rng, 30, 3, True, False, channels=4)
    shapes4 = [(30, 5, 1, 1), (30, 1, 1, 1), (30, 1, 1, 1), (30, 4, 1, 1)]
    arrays = [a.reshape(s) for a, s in zip((rois, loss, labels, weights), shapes4)]
    got = _run(_layer(5, shapes4), *arrays, dtype=torch.float64)
    want = fork_ohem(*arrays, 5, -1)
    assert got[0].shape == (30, 1, 1, 1) and got[1].shape == (30, 4, 1, 1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # RoIs laid out over height x width (num x 5 x 2 x 3): index n * 6 + s
    sp = [rng.integers(0, 2, (4, 1, 2, 3)).astype(np.float32), rng.uniform(0, 9, (4, 4, 2, 3)).astype(np.float32)]
    rois_sp = np.concatenate(sp, 1)
    loss_sp = rng.choice([1.0, 2.0], (4, 1, 2, 3)).astype(np.float32)
    labels_sp = rng.integers(0, 5, (4, 1, 2, 3)).astype(np.float32)
    w_sp = rng.uniform(0, 1, (4, 3, 2, 3)).astype(np.float32)
    layer = _layer(5, [rois_sp.shape, loss_sp.shape, labels_sp.shape, w_sp.shape])
    got = _run(layer, rois_sp, loss_sp, labels_sp, w_sp)
    want = fork_ohem(rois_sp, loss_sp, labels_sp, w_sp, 5, -1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_nan_loss_ranks_last():
    rng = np.random.default_rng(9)
    rois, loss, labels, weights = _case(rng, 14, 2, False, False)
    loss[[0, 3, 7]] = np.nan
    layer = _layer(6, [rois.shape, loss.shape, labels.shape, weights.shape])
    got = _run(layer, rois, loss, labels, weights)
    want = fork_ohem(rois, np.where(np.isnan(loss), -np.inf, loss).astype(np.float32), labels, weights, 6, -1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_no_gradient_is_propagated():
    rng = np.random.default_rng(2)
    arrays = [torch.from_numpy(a).requires_grad_(True) for a in _case(rng, 10, 2, False, False)]
    layer = _layer(3, [tuple(a.shape) for a in arrays])
    tops = layer(*arrays)
    assert not any(t.requires_grad for t in tops)
    assert not any(layer.allow_force_backward(i) for i in range(4))


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes,match", [
    ([(8, 4), (8,), (8,), (8, 8)], r"bottom 0 \(RoIs\) must have 5 channels .*received shape \(8, 4\)"),
    ([(8, 5), (9,), (8,), (8, 8)], r"bottom 1 \(per-RoI loss\) must be 8 x 1 x 1 x 1.*received shape \(9,\)"),
    ([(8, 5), (8, 2), (8,), (8, 8)], r"bottom 1 \(per-RoI loss\) must be 8 x 1 x 1 x 1.*received shape \(8, 2\)"),
    ([(8, 5), (8,), (8, 1, 2), (8, 8)], r"bottom 2 \(labels\) must be 8 x 1 x 1 x 1.*received shape \(8, 1, 2\)"),
    ([(8, 5), (8,), (8,), (7, 8)], r"bottom 3 \(bbox loss weights\) must be 8 x channels x 1 x 1.*received shape \(7, 8\)"),
    ([(8, 5, 1, 1, 1), (8,), (8,), (8, 8)], r"bottom 0 \(RoIs\) must have at most 4 axes.*received shape \(8, 5, 1, 1, 1\)"),
])
def test_wrong_bottom_shapes_are_named(shapes, match):
    with pytest.raises(LayerSetupError, match=r"^layer 'annot' \(BoxAnnotatorOHEM\): " + match):
        _layer(4, shapes, name="annot").reshape(shapes)


@pytest.mark.parametrize("value", [None, 0, 2**31])
def test_roi_per_img_is_required_and_positive(value):
    with pytest.raises(LayerSetupError, match=r"box_annotator_ohem_param.roi_per_img \(required\) must be in "
                                              r"\[1, 2147483647\]; received"):
        _layer(value, [(8, 5), (8,), (8,), (8, 8)])


@pytest.mark.parametrize("bad,match", [(-1.0, "received -1.0 at RoI position 2"), (math.nan, "received nan"),
                                       (math.inf, "received inf")])
def test_bad_batch_indices_and_no_rois(bad, match):
    rois, loss, labels, weights = _case(np.random.default_rng(1), 5, 2, False, False)
    rois[2, 0] = bad
    layer = _layer(2, [rois.shape, loss.shape, labels.shape, weights.shape])
    with pytest.raises(LayerSetupError, match=r"RoI batch indices \(bottom 0, channel 0\) must be finite and > -1.*"
                                              + match):
        _run(layer, rois, loss, labels, weights)
    empty = _layer(2, [(0, 5), (0,), (0,), (0, 8)])
    with pytest.raises(LayerSetupError, match=r"received no RoIs"):
        _run(empty, np.zeros((0, 5), np.float32), *(np.zeros(s, np.float32) for s in ((0,), (0,), (0, 8))))


# -- a small R-FCN OHEM net ---------------------------------------------------------------------------
R = 12
INPUT = f'''name: "rfcn_ohem_tiny"
layer {{ name: "in" type: "Input" top: "data" top: "rois" top: "labels" top: "bbox_targets"
  top: "bbox_inside_weights"
  input_param {{ shape {{ dim: 2 dim: 3 dim: 12 dim: 12 }} shape {{ dim: {R} dim: 5 }} shape {{ dim: {R} }}
                shape {{ dim: {R} dim: 8 }} shape {{ dim: {R} dim: 8 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "rfcn_cls" type: "Convolution" bottom: "conv1" top: "rfcn_cls"
  convolution_param {{ num_output: 12 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "rfcn_bbox" type: "Convolution" bottom: "conv1" top: "rfcn_bbox"
  convolution_param {{ num_output: 32 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "psroi_cls" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois" top: "psroi_cls"
  psroi_pooling_param {{ spatial_scale: 1 output_dim: 3 group_size: 2 }} }}
layer {{ name: "psroi_loc" type: "PSROIPooling" bottom: "rfcn_bbox" bottom: "rois" top: "psroi_loc"
  psroi_pooling_param {{ spatial_scale: 1 output_dim: 8 group_size: 2 }} }}
layer {{ name: "ave_cls" type: "Pooling" bottom: "psroi_cls" top: "cls_score"
  pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}
layer {{ name: "ave_loc" type: "Pooling" bottom: "psroi_loc" top: "bbox_pred"
  pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}
'''
# the per-RoI loss: R-FCN sums SoftmaxWithLossOHEM's and SmoothL1LossOHEM's per-RoI tops; any per-RoI
# value computed in the net does here (the squared class scores), cut off from backward as in R-FCN
MINING = '''
layer { name: "per_roi_loss" type: "Reduction" bottom: "cls_score" top: "per_roi_loss"
  reduction_param { operation: SUMSQ axis: 1 } PROPAGATE }
layer { name: "annotator_detector" type: "BoxAnnotatorOHEM" bottom: "rois" bottom: "per_roi_loss" bottom: "labels"
  bottom: "bbox_inside_weights" top: "labels_ohem" top: "bbox_loss_weights_ohem"
  box_annotator_ohem_param { roi_per_img: 3 ignore_label: -1 } PROPAGATE PROPAGATE PROPAGATE PROPAGATE }
'''
REFERENCE_INPUT = f'''
layer {{ name: "ohem_in" type: "Input" top: "labels_ohem" top: "bbox_loss_weights_ohem"
  input_param {{ shape {{ dim: {R} dim: 1 dim: 1 dim: 1 }} shape {{ dim: {R} dim: 8 dim: 1 dim: 1 }} }} }}
'''
LOSSES = '''
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels_ohem" top: "loss_cls"
  loss_weight: 1 loss_param { ignore_label: -1 normalization: VALID } propagate_down: true propagate_down: false }
layer { name: "accuarcy" type: "Accuracy" bottom: "cls_score" bottom: "labels_ohem" top: "accuarcy"
  accuracy_param { ignore_label: -1 } }
layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_loss_weights_ohem" bottom: "bbox_loss_weights_ohem" top: "loss_bbox" loss_weight: 1
  propagate_down: true propagate_down: false propagate_down: false propagate_down: false }
'''


def _net_text(cut: bool, reference: bool = False) -> str:
    mining = MINING.replace("PROPAGATE", "propagate_down: false" if cut else "")
    return INPUT + (REFERENCE_INPUT if reference else mining) + LOSSES


def _batch(rng) -> dict[str, np.ndarray]:
    data = rng.uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    x1, y1 = rng.uniform(0, 6, R), rng.uniform(0, 6, R)
    rois = np.stack([np.arange(R) % 2, x1, y1, x1 + rng.uniform(2, 6, R), y1 + rng.uniform(2, 6, R)], 1)
    labels = rng.integers(0, 3, R).astype(np.float32)
    w_in = np.zeros((R, 8), np.float32)
    w_in[labels > 0, 4:] = 1  # class-agnostic: the foreground's 4 columns
    return {"data": data, "rois": rois.astype(np.float32), "labels": labels,
            "bbox_targets": rng.uniform(-1, 1, (R, 8)).astype(np.float32), "bbox_inside_weights": w_in}


def _set(net: Net, batch: dict[str, np.ndarray]) -> None:
    for k, v in batch.items():
        net.set_blob(k, torch.from_numpy(v))


@pytest.mark.parametrize("cut", [True, False], ids=["propagate_down_false", "propagate_down_unset"])
def test_net_backward_reaches_only_the_kept_rois(cut):
    batch = _batch(np.random.default_rng(4))
    net = Net(text_format.Parse(_net_text(cut), caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    _set(net, batch)
    net.forward()
    net.backward()
    scores = net.blob("cls_score").numpy()
    want_labels, want_w = fork_ohem(batch["rois"], (scores.astype(np.float32) ** 2).sum(1).reshape(R),
                                    batch["labels"], batch["bbox_inside_weights"], 3, -1)
    np.testing.assert_array_equal(net.blob("labels_ohem").numpy(), want_labels)
    np.testing.assert_array_equal(net.blob("bbox_loss_weights_ohem").numpy(), want_w.reshape(R, 8, 1, 1))
    kept = want_labels.reshape(R) != -1
    assert kept.sum() == 6
    cls_diff = np.abs(net.blob_diff("cls_score").numpy().reshape(R, -1)).sum(1)
    assert (cls_diff[~kept] == 0).all() and (cls_diff[kept] > 0).all()
    box_diff = np.abs(net.blob_diff("bbox_pred").numpy().reshape(R, -1)).sum(1)
    assert (box_diff[~kept] == 0).all() and (box_diff[kept & (batch["labels"] > 0)] > 0).all()
    assert not net.blob_diff("per_roi_loss").numpy().any()
    # the same parameter diffs as a net fed the fork's annotation directly
    ref = Net(text_format.Parse(_net_text(cut, reference=True), caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    ref.copy_from(net.to_weights())
    _set(ref, {**batch, "labels_ohem": want_labels, "bbox_loss_weights_ohem": want_w})
    ref.forward()
    ref.backward()
    for name, params in net.params_by_layer().items():
        for p, q in zip(params, ref.params_by_layer()[name]):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_solver_steps_an_ohem_net(tmp_path):
    from neocaffe.solver.solver import Solver

    (tmp_path / "train.prototxt").write_text(_net_text(cut=True))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
        'display: 0 max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 3 iter_size: 2')
    solver = Solver(str(tmp_path / "solver.prototxt"))
    _set(solver.net, _batch(np.random.default_rng(8)))
    before = solver.net.params_by_layer()["rfcn_cls"][0].detach().clone()
    solver.step(3)
    assert solver.iter == 3 and np.isfinite(solver.smoothed_loss)
    loss = float(solver.net.forward().detach())
    assert np.isfinite(loss) and loss > 0
    assert all(np.isfinite(float(solver.net.blob(k))) for k in ("loss_cls", "loss_bbox", "accuarcy"))
    assert int((solver.net.blob("labels_ohem") != -1).sum()) == 6
    assert (solver.net.params_by_layer()["rfcn_cls"][0].detach() - before).abs().max() > 0


# -- the R-FCN OHEM training prototxt ------------------------------------------------------------------
# py-R-FCN's models/pascal_voc/ResNet-50/rfcn_end2end/train_agnostic_ohem.prototxt (YuwenXiong/py-R-FCN @
# 290dba7), trimmed: its data layers, the R-FCN head after the Python proposal-target layer, and its OHEM
# tail as written there (types, fields and propagate_down flags)
RFCN_OHEM_TAIL = '''name: "ResNet-50"
layer { name: 'input-data' type: 'Python' top: 'data' top: 'im_info' top: 'gt_boxes'
  python_param { module: 'roi_data_layer.layer' layer: 'RoIDataLayer' param_str: "'num_classes': 21" } }
layer { name: 'roi-data' type: 'Python' bottom: 'rpn_rois' bottom: 'gt_boxes' top: 'rois' top: 'labels'
  top: 'bbox_targets' top: 'bbox_inside_weights' top: 'bbox_outside_weights'
  python_param { module: 'rpn.proposal_target_layer' layer: 'ProposalTargetLayer' param_str: "'num_classes': 2" } }
layer { bottom: "rfcn_cls" bottom: "rois" top: "psroipooled_cls_rois" name: "psroipooled_cls_rois"
  type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }
layer { bottom: "psroipooled_cls_rois" top: "cls_score" name: "ave_cls_score_rois" type: "Pooling"
  pooling_param { pool: AVE kernel_size: 7 stride: 7 } }
layer { name: "per_roi_loss_cls" type: "SoftmaxWithLossOHEM" bottom: "cls_score" bottom: "labels"
  top: "temp_loss_cls" top: "temp_prob_cls" top: "per_roi_loss_cls" loss_weight: 0 loss_weight: 0 loss_weight: 0
  propagate_down: false propagate_down: false }
layer { name: "per_roi_loss_bbox" type: "SmoothL1LossOHEM" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_inside_weights" top: "temp_loss_bbox" top: "per_roi_loss_bbox" loss_weight: 0 loss_weight: 0
  propagate_down: false propagate_down: false propagate_down: false }
layer { name: "per_roi_loss" type: "Eltwise" bottom: "per_roi_loss_cls" bottom: "per_roi_loss_bbox"
  top: "per_roi_loss" propagate_down: false propagate_down: false }
layer { bottom: "rois" bottom: "per_roi_loss" bottom: "labels" bottom: "bbox_inside_weights" top: "labels_ohem"
  top: "bbox_loss_weights_ohem" name: "annotator_detector" type: "BoxAnnotatorOHEM"
  box_annotator_ohem_param { roi_per_img: 128 ignore_label: -1 }
  propagate_down: false propagate_down: false propagate_down: false propagate_down: false }
layer { name: "silence" type: "Silence" bottom: "bbox_outside_weights" bottom: "temp_loss_cls"
  bottom: "temp_prob_cls" bottom: "temp_loss_bbox" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels_ohem" top: "loss_cls"
  loss_weight: 1 loss_param { ignore_label: -1 } propagate_down: true propagate_down: false }
layer { name: "accuarcy" type: "Accuracy" bottom: "cls_score" bottom: "labels_ohem" top: "accuarcy"
  accuracy_param { ignore_label: -1 } propagate_down: false propagate_down: false }
layer { name: "loss_bbox" type: "SmoothL1LossOHEM" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_loss_weights_ohem" top: "loss_bbox" loss_weight: 1
  loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 128 }
  propagate_down: true propagate_down: false propagate_down: false }
'''


def test_rfcn_ohem_prototxt_parses_and_the_annotator_is_known():
    net, source = read_net_with_source(RFCN_OHEM_TAIL)
    ann = next(lp for lp in net.layer if lp.type == "BoxAnnotatorOHEM")
    assert (ann.box_annotator_ohem_param.roi_per_img, ann.box_annotator_ohem_param.ignore_label) == (128, -1)
    assert net.layer[-1].loss_param.normalization == caffe_pb2.LossParameter.PRE_FIXED
    try:
        check_layer_types(net, source, included=lambda lp: lp.type != "Python")
        unknown = set()
    except UnknownLayerError as e:
        unknown = {t for t in ("SoftmaxWithLossOHEM", "SmoothL1LossOHEM", "BoxAnnotatorOHEM")
                   if f"type '{t}'" in str(e).split("known types")[0]}
    assert unknown == set()  # the per-RoI OHEM losses live in neocaffe/layers/ohem_losses.py
