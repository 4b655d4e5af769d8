"""SoftmaxWithLossOHEM and SmoothL1LossOHEM (R-FCN, Microsoft/caffe @ 1a2be8e) against NumPy loop ports of
the fork's GPU kernels (``softmax_loss_ohem_layer.cu``, ``smooth_L1_loss_ohem_layer.cu``; their CPU paths are
NOT_IMPLEMENTED): every top, the bottom diffs, ignore_label, the normalization modes, default loss weights,
the errors; then R-FCN's OHEM head end to end (the per-RoI losses feed BoxAnnotatorOHEM in a no-backward
branch, its tops feed the real losses) and a few solver steps, and the real OHEM prototxt's layer types."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net_with_source
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.ohem_losses import SmoothL1LossOHEM, SoftmaxWithLossOHEM
from neocaffe.layers.registry import check_layer_types
from neocaffe.proto import caffe_pb2
from tests.layers.test_box_annotator_ohem import RFCN_OHEM_TAIL, fork_ohem

LP = caffe_pb2.LossParameter
FLT_MIN = 1.17549435e-38


def _legacy(shape) -> tuple[int, int, int, int]:
    return tuple(shape) + (1,) * (4 - len(shape))


def _mode(loss_param) -> int:
    """The forks' LayerSetUp: ``normalization`` unless only ``normalize`` is set."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return LP.VALID if loss_param.normalize else LP.BATCH_SIZE
    return loss_param.normalization


# -- the fork, loop by loop ---------------------------------------------------------------------------
def fork_softmax_ohem(x, label, axis: int, ignore: int | None, mode: int, top_diff: float = 1.0):
    """``SoftmaxWithLossOHEMLayer::Forward_gpu`` then ``Backward_gpu``: (loss, prob, per-instance loss,
    bottom 0 diff), in ``x``'s dtype."""
    dt = x.dtype.type
    outer, c, inner = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])
    xs = x.reshape(outer, c, inner)
    prob = np.empty_like(xs)
    for n in range(outer):  # SoftmaxLayer: subtract the max, exp, divide by the sum
        for s in range(inner):
            m = max(xs[n, k, s] for k in range(c))
            e = [np.exp(dt(xs[n, k, s] - m)) for k in range(c)]
            total = dt(0)
            for v in e:
                total = dt(total + v)
            for k in range(c):
                prob[n, k, s] = dt(e[k] / total)
    lab = label.reshape(-1)
    loss_data = np.zeros(outer * inner, x.dtype)
    counts = np.zeros(outer * inner, x.dtype)
    for index in range(outer * inner):
        n, s = divmod(index, inner)
        lv = int(lab[n * inner + s])  # static_cast<int>: toward zero
        if ignore is not None and lv == ignore:
            continue
        loss_data[index] = -np.log(max(prob[n, lv, s], dt(FLT_MIN)))
        counts[index] = 1
    valid_count = counts.sum() if (mode == LP.VALID and ignore is not None) else -1
    norm = {LP.FULL: outer * inner, LP.VALID: outer * inner if valid_count == -1 else valid_count,
            LP.BATCH_SIZE: outer, LP.NONE: 1}[mode]
    norm = max(dt(1), dt(norm))
    loss = dt(np.abs(loss_data).astype(np.float64).sum() / norm)
    diff = prob.copy()
    for index in range(outer * inner):
        n, s = divmod(index, inner)
        lv = int(lab[n * inner + s])
        if ignore is not None and lv == ignore:
            diff[n, :, s] = 0
        else:
            diff[n, lv, s] -= 1
    diff *= dt(dt(top_diff) / norm)
    return loss, prob.reshape(x.shape), loss_data.reshape(label.shape), diff.reshape(x.shape)


def fork_smooth_l1_ohem(a, b, w, mode: int, pre_fixed: float, top_diff: float = 1.0):
    """``SmoothL1LossOHEMLayer::Forward_gpu`` then ``Backward_gpu``: (loss, per-RoI loss num x 1 x H x W,
    bottom 0 diff, bottom 1 diff), in ``a``'s dtype (float64 arithmetic where the kernel has a double)."""
    dt = a.dtype.type
    num, ch, h, wd = _legacy(a.shape)
    sd = h * wd
    af, bf = a.reshape(-1), b.reshape(-1)
    diff = np.empty(af.size, a.dtype)
    errors = np.empty(af.size, a.dtype)
    for i in range(af.size):
        diff[i] = dt(af[i] - bf[i])
        if w is not None:
            diff[i] = dt(w.reshape(-1)[i] * diff[i])
        v = diff[i]
        errors[i] = dt(0.5 * float(v) * float(v)) if abs(v) < 1 else dt(float(abs(v)) - 0.5)
    norm = {LP.FULL: num * sd, LP.VALID: num * sd, LP.BATCH_SIZE: num, LP.PRE_FIXED: dt(pre_fixed), LP.NONE: 1}[mode]
    norm = dt(norm)
    norm = norm if dt(1) < norm else dt(1)  # std::max(Dtype(1.0), normalizer)
    loss = dt(np.abs(errors).astype(np.float64).sum() / norm)
    per = np.empty(num * sd, a.dtype)
    for index in range(num * sd):  # kernel_channel_sum
        n, s = divmod(index, sd)
        total = dt(0)
        for k in range(ch):
            total = dt(total + errors[(n * ch + k) * sd + s])
        per[index] = total
    fprime = np.empty_like(diff)  # SmoothL1BackwardGPU, in place on diff_
    for i in range(diff.size):
        v = diff[i]
        fprime[i] = v if abs(v) < 1 else dt(int(dt(0) < v) - int(v < dt(0)))
    grads = [(dt(sign * dt(top_diff)) / norm) * fprime for sign in (1, -1)]  # axpby, beta 0: no w factor
    return loss, per.reshape(num, 1, h, wd), grads[0].reshape(a.shape), grads[1].reshape(b.shape)


# -- helpers --------------------------------------------------------------------------------------
def _param(text: str):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def _softmax(extra: str, shapes, tops=("loss",), name="cls"):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    p = _param(f'name: "{name}" type: "SoftmaxWithLossOHEM" bottom: "x" bottom: "label" {top_text} {extra}')
    return SoftmaxWithLossOHEM(p, shapes), p


def _smooth(extra: str, shapes, tops=("loss",), name="box"):
    bottoms = " ".join(f'bottom: "{b}"' for b in ("a", "b", "w")[: len(shapes)])
    top_text = " ".join(f'top: "{t}"' for t in tops)
    p = _param(f'name: "{name}" type: "SmoothL1LossOHEM" {bottoms} {top_text} {extra}')
    return SmoothL1LossOHEM(p, shapes), p


def _tops(out):
    return [out] if isinstance(out, torch.Tensor) else list(out)


# -- SoftmaxWithLossOHEM ------------------------------------------------------------------------------
SOFTMAX_CASES = [  # x shape, label shape, axis, loss_param text
    ((7, 4), (7,), 1, ""),                                                   # default: VALID, no ignore
    ((9, 3, 1, 1), (9, 1, 1, 1), 1, "ignore_label: -1"),                      # R-FCN's layout
    ((2, 3, 2, 2), (2, 1, 2, 2), 1, "ignore_label: 255 normalization: FULL"),
    ((2, 3, 2, 2), (2, 1, 2, 2), 1, "ignore_label: 255 normalize: false"),    # BATCH_SIZE
    ((2, 3, 2, 2), (2, 1, 2, 2), 1, "ignore_label: 255 normalize: true"),     # VALID
    ((5, 6), (5,), 1, "ignore_label: 2 normalization: NONE"),
    ((2, 3, 4), (2, 3), -1, "ignore_label: -1 normalization: VALID"),        # softmax over the last axis
]


def _labels(rng, shape, classes: int, ignore: int | None):
    lab = rng.integers(0, classes, shape).astype(np.float64)
    flat = lab.reshape(-1)
    flat[: max(1, flat.size // 6)] += rng.uniform(0, 0.9)  # fractional: the fork truncates
    if ignore is not None:
        flat[1::4] = ignore
        if ignore == -1:
            flat[2] = -1.5  # truncates to -1: ignored too
    flat[3] = -0.5  # truncates to 0: class 0
    return lab


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("shape,label_shape,axis,lp", SOFTMAX_CASES)
def test_softmax_ohem_matches_the_forks_kernels(shape, label_shape, axis, lp, dtype, tol):
    rng = np.random.default_rng(sum(shape) * 7 + len(lp))
    layer, p = _softmax(f"loss_weight: 1 loss_weight: 0 loss_weight: 0 loss_param {{ {lp} }} "
                        f"softmax_param {{ axis: {axis} }}", [shape, label_shape], ("loss", "prob", "per_roi"))
    ignore = p.loss_param.ignore_label if p.loss_param.HasField("ignore_label") else None
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    x.reshape(-1)[0] = 60  # a probability that underflows to 0 in float32: clamped to FLT_MIN
    label = _labels(rng, label_shape, shape[axis], ignore).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    loss, prob, per = layer(xt, torch.tensor(label))
    assert [tuple(t.shape) for t in (loss, prob, per)] == layer.reshape([shape, label_shape])
    assert not prob.requires_grad and not per.requires_grad  # the fork never reads their diffs
    (dx,) = torch.autograd.grad(loss, xt, torch.tensor(0.7, dtype=loss.dtype))
    want = fork_softmax_ohem(x, label, axis % len(shape), ignore, _mode(p.loss_param), top_diff=0.7)
    for got, ref in zip((loss, prob, per, dx), want):
        np.testing.assert_allclose(got.detach().numpy(), ref, rtol=tol, atol=tol)
    if ignore is not None:  # ignored instances: loss exactly +0, no diff
        ign = np.trunc(label.reshape(-1)).astype(int) == ignore
        assert ign.any() and not np.signbit(per.numpy().reshape(-1)[ign]).any() and (per.numpy().reshape(-1)[ign] == 0).all()


@pytest.mark.parametrize("n_tops", [1, 2, 3])
def test_softmax_ohem_top_counts_and_all_ignored(n_tops):
    weights = "" if n_tops == 1 else " ".join(["loss_weight: 1"] + ["loss_weight: 0"] * (n_tops - 1))
    layer, _ = _softmax(weights + " loss_param { ignore_label: -1 }", [(4, 3), (4,)], ("l", "p", "r")[:n_tops])
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = _tops(layer(x, torch.full((4,), -1.0, dtype=torch.float64)))
    assert len(out) == n_tops and out[0].item() == 0  # every label ignored: 0 / max(1, 0)
    (dx,) = torch.autograd.grad(out[0], x)
    assert not dx.any()


# -- SmoothL1LossOHEM ---------------------------------------------------------------------------------
SMOOTH_CASES = [  # prediction shape, weights ("none", "binary", "real"), loss_param text
    ((12, 8), "none", ""),                                                  # VALID: num * H * W
    ((12, 8, 1, 1), "binary", "normalization: PRE_FIXED pre_fixed_normalizer: 128"),  # R-FCN's loss_bbox
    ((12, 8, 1, 1), "binary", ""),                                          # R-FCN's per_roi_loss_bbox
    ((3, 4, 2, 3), "real", "normalization: FULL"),
    ((3, 4, 2, 3), "real", "normalize: false"),                             # BATCH_SIZE
    ((5, 84), "real", "normalization: NONE"),
    ((5, 84), "binary", "normalization: PRE_FIXED pre_fixed_normalizer: 0.25"),  # floored at 1
    ((6, 8), "none", "normalization: PRE_FIXED pre_fixed_normalizer: 3.3"),      # not a whole number
]


def _smooth_case(rng, shape, weights: str, dtype):
    b = rng.standard_normal(shape).astype(dtype)
    d = rng.choice([-1, 1], shape) * rng.choice([0.0, 0.3, 0.99, 1.0, 1.7, 4.0], shape)
    a = (b + d * rng.uniform(0.5, 1.5, shape)).astype(dtype)
    w = {"none": None, "binary": rng.integers(0, 2, shape).astype(dtype),
         "real": rng.uniform(0, 2, shape).astype(dtype)}[weights]
    return a, b, w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,weights,lp", SMOOTH_CASES)
def test_smooth_l1_ohem_matches_the_forks_kernels(shape, weights, lp, dtype):
    rng = np.random.default_rng(sum(shape) + len(lp))
    a, b, w = _smooth_case(rng, shape, weights, dtype)
    arrays = [a, b] + ([] if w is None else [w])
    layer, p = _smooth(f"loss_weight: 1 loss_weight: 0 loss_param {{ {lp} }}", [x.shape for x in arrays],
                       ("loss", "per_roi"))
    ts = [torch.tensor(x, requires_grad=i < 2) for i, x in enumerate(arrays)]
    loss, per = layer(*ts)
    assert [tuple(t.shape) for t in (loss, per)] == layer.reshape([x.shape for x in arrays])
    assert not per.requires_grad
    da, db = torch.autograd.grad(loss, ts[:2], torch.tensor(0.7, dtype=loss.dtype))
    want = fork_smooth_l1_ohem(a, b, w, _mode(p.loss_param), p.loss_param.pre_fixed_normalizer, top_diff=0.7)
    np.testing.assert_allclose(loss.detach().numpy(), want[0], rtol=1e-6 if dtype == np.float32 else 1e-13)
    # the per-RoI sums and the diffs are the kernels' operations in their order: bit for bit
    for got, ref in zip((per, da, db), want[1:]):
        np.testing.assert_array_equal(got.detach().numpy(), ref)
    if weights == "real":  # the fork's diff is the true gradient without the factor w
        d = torch.tensor(w) * (ts[0] - ts[1])
        true = torch.where(d.abs() < 1, 0.5 * d * d, d.abs() - 0.5).sum() / layer.get_normalizer(shape, ts[0].dtype)
        (g,) = torch.autograd.grad(true, ts[0], torch.tensor(0.7, dtype=loss.dtype))
        np.testing.assert_allclose(g.numpy(), w * want[2], rtol=1e-5, atol=1e-7)
        assert not np.allclose(g.numpy(), want[2])


def test_smooth_l1_ohem_single_top_and_no_weights_diff():
    layer, _ = _smooth("", [(4, 8), (4, 8), (4, 8)])
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    w = torch.rand(4, 8, requires_grad=True)
    loss = layer(a, b, w)
    assert isinstance(loss, torch.Tensor) and loss.shape == ()
    loss.backward()
    assert a.grad is not None and w.grad is None  # the weights never get a diff


# -- loss weights, force_backward, blob counts --------------------------------------------------------
def test_default_loss_weights_are_the_forks():
    one, _ = _softmax("", [(4, 3), (4,)])
    assert one.default_loss_weights() == [1.0]
    assert SoftmaxWithLossOHEM.auto_top_blobs and SmoothL1LossOHEM.auto_top_blobs
    # SmoothL1LossOHEM::LayerSetUp never calls LossLayer's: no top has a loss weight unless given
    for shapes, tops in (([(4, 8), (4, 8)], ("l",)), ([(4, 8), (4, 8), (4, 8)], ("l", "r"))):
        layer, _ = _smooth("", shapes, tops)
        assert layer.default_loss_weights() == [0.0] * len(tops)
    assert [one.allow_force_backward(i) for i in range(2)] == [True, False]
    assert all(layer.allow_force_backward(i) for i in range(3))


def test_a_net_without_loss_weight_on_smooth_l1_ohem_has_no_bbox_loss():
    text = '''layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 4 dim: 8 } shape { dim: 4 dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "a" top: "p" inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "box" type: "SmoothL1LossOHEM" bottom: "p" bottom: "b" top: "loss_bbox" }'''
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN)
    net.set_blob("a", torch.randn(4, 8))
    net.set_blob("b", torch.randn(4, 8) * 5)
    assert float(net.forward()) == 0 and float(net.blob("loss_bbox")) > 0
    assert not any(net.needs.layer)


@pytest.mark.parametrize("make,shapes,extra,tops,match", [
    (_softmax, [(6, 3), (5,)], "", ("l",), r"the data and label should have the same first dimension; received \(6, 3\) and \(5,\)"),
    (_softmax, [(6, 3, 2), (6,)], "", ("l",), r"number of labels must match number of predictions.*needs 12 labels; "
                                             r"received label shape \(6,\)"),
    (_softmax, [(6, 3), (6,)], "loss_param { normalization: PRE_FIXED }", ("l",),
     r"loss_param.normalization PRE_FIXED is unknown to SoftmaxWithLossOHEM.*expected FULL, VALID, BATCH_SIZE or NONE"),
    (_softmax, [(6, 3), (6,)], "", ("l", "p", "r"), r"loss_weight must be unspecified or specified once per top blob.*"
                                                   r"received none; expected 3 \(e.g. loss_weight: 1 loss_weight: 0"),
    (_softmax, [(6, 3), (6,)], "", ("l", "p", "r", "x"), r"takes at most 3 top blob\(s\); received 4"),
    (_smooth, [(6, 8), (6, 4)], "", ("l",), r"bottom 1 must be 6 x 8 x 1 x 1 like bottom 0 \(6, 8\).*received shape \(6, 4\)"),
    (_smooth, [(6, 8), (5, 8)], "", ("l",), r"the data and label should have the same first dimension; received \(6, 8\) and \(5, 8\)"),
    (_smooth, [(6, 8, 1, 1), (6, 8), (3, 8, 1, 1)], "", ("l",),
     r"bottom 2 must be 6 x 8 x 1 x 1 like bottom 0 \(6, 8, 1, 1\).*received shape \(3, 8, 1, 1\)"),
    (_smooth, [(6, 8, 1, 1, 1), (6, 8, 1, 1, 1)], "", ("l",), r"bottom 0 must have at most 4 axes.*received shape"),
    (_smooth, [(6, 8)] * 4, "", ("l",), r"takes at most 3 bottom blob\(s\); received 4"),
    (_smooth, [(6, 8)] * 2, "", ("l", "r", "x"), r"takes at most 2 top blob\(s\); received 3"),
])
def test_bad_shapes_and_configs_are_named(make, shapes, extra, tops, match):
    type_name = "SoftmaxWithLossOHEM" if make is _softmax else "SmoothL1LossOHEM"
    with pytest.raises(LayerSetupError, match=rf"^layer 'bad' \({type_name}\):? {match}"):
        layer, _ = make(extra, shapes, tops, name="bad")
        layer.reshape(shapes)


# -- R-FCN's OHEM head, end to end ---------------------------------------------------------------------
R, PER_IMG = 14, 4
HEAD = f'''name: "rfcn_ohem_head"
layer {{ name: "in" type: "Input" top: "data" top: "rois" top: "labels" top: "bbox_targets"
  top: "bbox_inside_weights" top: "bbox_outside_weights"
  input_param {{ shape {{ dim: 2 dim: 3 dim: 12 dim: 12 }} shape {{ dim: {R} dim: 5 dim: 1 dim: 1 }}
    shape {{ dim: {R} dim: 1 dim: 1 dim: 1 }} shape {{ dim: {R} dim: 8 dim: 1 dim: 1 }}
    shape {{ dim: {R} dim: 8 dim: 1 dim: 1 }} shape {{ dim: {R} dim: 8 dim: 1 dim: 1 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "rfcn_cls" type: "Convolution" bottom: "conv1" top: "rfcn_cls"
  convolution_param {{ num_output: 12 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "rfcn_bbox" type: "Convolution" bottom: "conv1" top: "rfcn_bbox"
  convolution_param {{ num_output: 32 kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "psroipooled_cls_rois" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois"
  top: "psroipooled_cls_rois" psroi_pooling_param {{ spatial_scale: 1 output_dim: 3 group_size: 2 }} }}
layer {{ name: "ave_cls_score_rois" type: "Pooling" bottom: "psroipooled_cls_rois" top: "cls_score"
  pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}
layer {{ name: "psroipooled_loc_rois" type: "PSROIPooling" bottom: "rfcn_bbox" bottom: "rois"
  top: "psroipooled_loc_rois" psroi_pooling_param {{ spatial_scale: 1 output_dim: 8 group_size: 2 }} }}
layer {{ name: "ave_bbox_pred_rois" type: "Pooling" bottom: "psroipooled_loc_rois" top: "bbox_pred"
  pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}
'''


def _ohem_head_net() -> caffe_pb2.NetParameter:
    """The head above plus the real prototxt's OHEM tail, as written there (from the per-RoI losses on:
    propagate_down flags, loss weights, the Silence of the unused tops), with ``roi_per_img`` 4."""
    net = text_format.Parse(HEAD, caffe_pb2.NetParameter())
    tail, _ = read_net_with_source(RFCN_OHEM_TAIL)
    names = [lp.name for lp in tail.layer]
    for lp in tail.layer[names.index("per_roi_loss_cls"):]:
        net.layer.add().CopyFrom(lp)
        if lp.type == "BoxAnnotatorOHEM":
            net.layer[-1].box_annotator_ohem_param.roi_per_img = PER_IMG
    return net


def _head_batch(rng) -> dict[str, np.ndarray]:
    x1, y1 = rng.uniform(0, 6, R), rng.uniform(0, 6, R)
    rois = np.stack([np.arange(R) % 2, x1, y1, x1 + rng.uniform(2, 6, R), y1 + rng.uniform(2, 6, R)], 1)
    labels = rng.integers(0, 3, R).astype(np.float32)
    w_in = np.zeros((R, 8), np.float32)
    w_in[labels > 0, 4:] = 1  # class-agnostic: the foreground's 4 columns (proposal_target_layer)
    return {"data": rng.uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32),
            "rois": rois.astype(np.float32).reshape(R, 5, 1, 1), "labels": labels.reshape(R, 1, 1, 1),
            "bbox_targets": rng.uniform(-2, 2, (R, 8, 1, 1)).astype(np.float32),
            "bbox_inside_weights": w_in.reshape(R, 8, 1, 1), "bbox_outside_weights": w_in.reshape(R, 8, 1, 1)}


def test_rfcn_ohem_head_end_to_end():
    batch = _head_batch(np.random.default_rng(5))
    net = Net(_ohem_head_net(), caffe_pb2.TRAIN)
    assert sorted(net.outputs) == ["accuarcy", "loss_bbox", "loss_cls"]  # the temp_* tops are silenced
    for k, v in batch.items():
        net.set_blob(k, torch.from_numpy(v))
    total = float(net.forward())
    net.backward()
    blob = {k: net.blob(k).detach().numpy() for k in net.blob_names}
    # the per-RoI losses, as the fork computes them
    _, _, per_cls, _ = fork_softmax_ohem(blob["cls_score"], batch["labels"], 1, None, LP.VALID)
    _, per_box, _, _ = fork_smooth_l1_ohem(blob["bbox_pred"], batch["bbox_targets"], batch["bbox_inside_weights"],
                                           LP.VALID, 1.0)
    np.testing.assert_allclose(blob["per_roi_loss_cls"], per_cls, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(blob["per_roi_loss_bbox"], per_box)
    np.testing.assert_array_equal(blob["per_roi_loss"], blob["per_roi_loss_cls"] + blob["per_roi_loss_bbox"])
    # BoxAnnotatorOHEM's choice from them
    want_labels, want_w = fork_ohem(batch["rois"], blob["per_roi_loss"], batch["labels"],
                                    batch["bbox_inside_weights"], PER_IMG, -1)
    np.testing.assert_array_equal(blob["labels_ohem"], want_labels)
    np.testing.assert_array_equal(blob["bbox_loss_weights_ohem"], want_w)
    kept = want_labels.reshape(R) != -1
    assert kept.sum() == 2 * PER_IMG
    # the real losses on the kept RoIs, and the diffs they alone send down
    loss_cls, _, _, d_cls = fork_softmax_ohem(blob["cls_score"], want_labels, 1, -1, LP.VALID)
    loss_box, _, d_box, _ = fork_smooth_l1_ohem(blob["bbox_pred"], batch["bbox_targets"], want_w, LP.PRE_FIXED, 128)
    np.testing.assert_allclose([blob["loss_cls"], blob["loss_bbox"]], [loss_cls, loss_box], rtol=2e-6)
    np.testing.assert_allclose(total, loss_cls + loss_box, rtol=2e-6)
    np.testing.assert_allclose(net.blob_diff("cls_score").numpy(), d_cls, rtol=2e-6, atol=1e-8)
    np.testing.assert_array_equal(net.blob_diff("bbox_pred").numpy(), d_box)
    assert (np.abs(d_cls.reshape(R, -1)).sum(1)[~kept] == 0).all()
    # the mining branch runs no backward: its layers' bottoms get no diff
    ohem_layers = ("per_roi_loss_cls", "per_roi_loss_bbox", "per_roi_loss", "annotator_detector", "silence")
    assert not any(net.needs.layer[net.layer_index(n)] for n in ohem_layers)
    for name in ("per_roi_loss", "per_roi_loss_cls", "per_roi_loss_bbox", "labels_ohem", "bbox_loss_weights_ohem"):
        assert not net.blob_diff(name).any(), name
    grads = {n: [p.grad for p in ps] for n, ps in net.params_by_layer().items()}
    assert all(g is not None and g.abs().sum() > 0 for gs in grads.values() for g in gs)


def test_solver_steps_the_ohem_head(tmp_path):
    from neocaffe.solver.solver import Solver

    (tmp_path / "train.prototxt").write_text(text_format.MessageToString(_ohem_head_net()))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.3 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" '
        'display: 0 max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 7')
    solver = Solver(str(tmp_path / "solver.prototxt"))
    for k, v in _head_batch(np.random.default_rng(11)).items():
        solver.net.set_blob(k, torch.from_numpy(v))
    losses = []
    for _ in range(10):
        solver.step(1)
        losses.append(float(solver.net.loss.detach()))  # the loss of each step's forward
    assert all(np.isfinite(losses)), losses
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses
    assert int((solver.net.blob("labels_ohem") != -1).sum()) == 2 * PER_IMG


# -- the real R-FCN OHEM prototxt -----------------------------------------------------------------------
def test_real_ohem_prototxt_knows_every_type_but_python_and_builds():
    net, source = read_net_with_source(RFCN_OHEM_TAIL)
    check_layer_types(net, source, included=lambda lp: lp.type != "Python")  # raises on any unknown type
    # its Python data and target layers as Inputs (shapes as py-R-FCN's layers give them), its head's
    # missing producers (rfcn_cls, bbox_pred) as inputs too
    rois = 20
    built = caffe_pb2.NetParameter(name=net.name, force_backward=True)
    feed = built.layer.add(name="input-data", type="Input", top=["rfcn_cls", "bbox_pred"])
    for dims in ((1, 21 * 49, 8, 8), (rois, 8, 1, 1)):
        feed.input_param.shape.add().dim.extend(dims)
    targets = built.layer.add(name="roi-data", type="Input",
                              top=["rois", "labels", "bbox_targets", "bbox_inside_weights", "bbox_outside_weights"])
    for dims in ((rois, 5, 1, 1), (rois, 1, 1, 1), (rois, 8, 1, 1), (rois, 8, 1, 1), (rois, 8, 1, 1)):
        targets.input_param.shape.add().dim.extend(dims)
    built.layer.extend(lp for lp in net.layer if lp.type != "Python")
    n = Net(built, caffe_pb2.TRAIN)
    rng = np.random.default_rng(3)
    x1, y1 = rng.uniform(0, 60, rois), rng.uniform(0, 60, rois)
    labels = rng.integers(0, 21, rois).astype(np.float32)
    w_in = np.zeros((rois, 8, 1, 1), np.float32)
    w_in[labels > 0, 4:] = 1
    feeds = {"rfcn_cls": rng.standard_normal((1, 21 * 49, 8, 8)), "bbox_pred": rng.standard_normal((rois, 8, 1, 1)),
             "rois": np.stack([np.zeros(rois), x1, y1, x1 + 50, y1 + 40], 1).reshape(rois, 5, 1, 1),
             "labels": labels.reshape(rois, 1, 1, 1), "bbox_targets": rng.standard_normal((rois, 8, 1, 1)),
             "bbox_inside_weights": w_in, "bbox_outside_weights": w_in}
    for k, v in feeds.items():
        n.set_blob(k, torch.as_tensor(np.asarray(v), dtype=torch.float32))
    loss = float(n.forward())
    n.backward()
    assert np.isfinite(loss) and loss > 0
    assert int((n.blob("labels_ohem") != -1).sum()) == rois  # 20 RoIs of one image, 128 kept per image
    assert n.blob_diff("cls_score").abs().sum() > 0 and n.blob_diff("bbox_pred").abs().sum() > 0
