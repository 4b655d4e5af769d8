"""NVCaffe's DetectNetTransformation against loop-by-loop ports (tests/layers/detectnet_transform_reference.py):
the coverage/bbox ground truth of hand-made DIGITS labels, the augmentation given fixed draws, TEST-phase
determinism, mean subtraction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.detectnet_transform import DetectNetTransformation
from neocaffe.proto import caffe_pb2
from tests.layers import detectnet_transform_reference as ref

HEAD = 'name: "t" type: "DetectNetTransformation" bottom: "data" bottom: "label" top: "td" top: "tl" '


def _gt(stride=4, scale_cvg=0.4, gridbox_min=True, min_cvg_len=6, max_cvg_len=50, image_x=24, image_y=16,
        obj_norm=True, crop_bboxes=True, classes=((1, 0),)):
    text = (f"detectnet_groundtruth_param {{ stride: {stride} scale_cvg: {scale_cvg} "
            f"gridbox_type: {'GRIDBOX_MIN' if gridbox_min else 'GRIDBOX_MAX'} min_cvg_len: {min_cvg_len} "
            f"max_cvg_len: {max_cvg_len} image_size_x: {image_x} image_size_y: {image_y} "
            f"obj_norm: {str(obj_norm).lower()} crop_bboxes: {str(crop_bboxes).lower()} "
            + "".join(f"object_class {{ src: {s} dst: {d} }} " for s, d in classes) + "}")
    g = dict(stride=stride, scale_cvg=scale_cvg, gridbox_min=gridbox_min, min_cvg_len=min_cvg_len,
             max_cvg_len=max_cvg_len, image_x=image_x, image_y=image_y, obj_norm=obj_norm,
             crop_bboxes=crop_bboxes, classes=list(classes))
    return text, g


def _layer(text, shapes, phase=1):
    p = text_format.Parse(HEAD + text, caffe_pb2.LayerParameter())
    return DetectNetTransformation(p, shapes, phase)


def _labels(per_image, rows=6):
    """DIGITS' pad_bbox layout: N x 1 x rows x 16, header [n, 16], then one 16-value record per box."""
    out = np.zeros((len(per_image), 1, rows, 16), dtype=np.float32)
    for i, boxes in enumerate(per_image):
        out[i, 0, 0, :2] = (len(boxes), 16)
        for k, b in enumerate(boxes):
            out[i, 0, k + 1, :len(b)] = b
    return out


BOXES = [  # x, y, w, h, alpha, class, ...
    [(2.5, 1.0, 9.0, 7.5, 0, 1, 0, 0, 0.2), (14.0, 6.0, 8.0, 9.0, 0, 2), (-4.0, 9.0, 10.0, 12.0, 0, 1)],
    [(20.0, -3.0, 9.0, 8.0, 0, 1), (3.0, 3.0, 0.0, 5.0, 0, 1), (6.0, 4.0, 5.0, 5.0, 0, 7), (5.0, 5.0, 14.0, 9.0, 0, 2)],
    [],
]

GT_CASES = [dict(), dict(gridbox_min=False, max_cvg_len=5, obj_norm=False), dict(crop_bboxes=False),
            dict(classes=((1, 0), (2, 2))), dict(classes=()), dict(stride=5, scale_cvg=0.9, image_x=23, image_y=17),
            dict(stride=3, min_cvg_len=1, classes=((2, 0), (1, 1)))]


@pytest.mark.parametrize("case", GT_CASES, ids=[str(c) for c in GT_CASES])
def test_coverage_maps_match_the_loop_port(case):
    text, g = _gt(**case)
    labels = _labels(BOXES)
    data = np.random.default_rng(0).random((3, 3, g["image_y"], g["image_x"])).astype(np.float32) * 255
    layer = _layer(text, [data.shape, labels.shape])
    _, got = layer(torch.from_numpy(data), torch.from_numpy(labels))
    assert tuple(got.shape) == layer.reshape([data.shape, labels.shape])[1]
    ident = ref.augment(None, g["image_x"], g["image_y"], g["image_x"], g["image_y"], False, iter(()))
    for i in range(3):
        want = ref.coverage(ref.transform_labels(ref.labels_of(labels[i]), ident, (g["image_x"], g["image_y"])), g)
        np.testing.assert_array_equal(got[i].numpy(), want)
    assert got[2].abs().sum() == 0  # no boxes: an empty map


def test_coverage_by_hand():
    """One 8 x 8 box at (4, 4) on a stride-4 grid, scale_cvg 0.5, GRIDBOX_MAX: coverage (6, 6)-(10, 10)
    touches cells (1..2, 1..2); obj_norm = 16 / 16; corners relative to each cell's top-left."""
    text, _ = _gt(gridbox_min=False, scale_cvg=0.5, image_x=16, image_y=16, obj_norm=False)
    labels = _labels([[(4.0, 4.0, 8.0, 8.0, 0, 1)]])
    layer = _layer(text, [(1, 3, 16, 16), labels.shape])
    _, got = layer(torch.zeros(1, 3, 16, 16), torch.from_numpy(labels))
    got = got[0].numpy()
    assert got.shape == (9, 4, 4)
    np.testing.assert_array_equal(got[0], np.pad(np.ones((2, 2)), 1))
    np.testing.assert_array_equal(got[8], got[0])
    assert got[1, 1, 1] == 0 and got[1, 1, 2] == -4 and got[3, 2, 2] == 4 and got[4, 1, 1] == 8
    assert got[5, 2, 1] == got[6, 1, 2] == 0.125 and got[7, 1, 1] == 1.0


AUG = dict(crop_prob=1, shift_x=4, shift_y=2, flip_prob=0.5, rotation_prob=0.5, max_rotate_degree=8, scale_prob=0.5,
           scale_min=0.8, scale_max=1.3, hue_rotation_prob=0.8, hue_rotation=170, desaturation_prob=0.8,
           desaturation_max=0.8)
# draws: hue?, hue, desat?, desat, flip, scale?, scale, rot?, rot, crop?, px, py (an event's value only if it fires)
DRAWS = [
    [0.1, 0.95, 0.2, 0.6, 0.3, 0.1, 0.9, 0.2, 0.05, 0.5, 0.3, 0.8],  # everything, hue +153
    [0.1, 0.02, 0.9, 0.4, 0.9, 0.3, 0.9, 0.1, 0.6, 0.2],  # hue -163 (unwrapped sectors), flip, rotate, no scale
    [0.9, 0.9, 0.9, 0.9, 0.9, 0.99, 0.5, 0.5],  # only the (always drawn) crop
    [0.9, 0.1, 0.5, 0.1, 0.1, 0.0, 0.9, 1.0, 0.0, 1.0],  # desaturate, flip, smallest scale, crop at the corner
]


def _aug_text():
    return "detectnet_augmentation_param { " + " ".join(f"{k}: {v}" for k, v in AUG.items()) + " } "


@pytest.mark.parametrize("mean", [None, (127,), (100, 110, 120)])
def test_augmented_forward_matches_the_port_given_the_draws(mean):
    text, g = _gt(image_x=12, image_y=10, stride=2, min_cvg_len=2, classes=((1, 0), (2, 1)))
    tp = "" if mean is None else "transform_param { " + " ".join(f"mean_value: {m}" for m in mean) + " }"
    r = np.random.default_rng(4)
    data = (r.random((4, 3, 9, 14)) * 255).astype(np.float32)
    data[0, :, 0, :4] = 0  # black pixels (hsv: h = s = 0)
    data[1, :, 1, :3] = 77  # grey
    boxes = [[(1.0, 1.0, 5.0, 4.0, 0, 1), (7.5, 3.0, 5.0, 5.5, 0, 2)], [(0.0, 2.0, 14.0, 6.0, 0, 1)],
             [(9.0, 0.0, 4.0, 4.0, 0, 2), (2.0, 5.0, 3.0, 3.0, 0, 1)], [(3.0, 3.0, 6.0, 5.0, 0, 1)]]
    labels = _labels(boxes)
    layer = _layer(text + _aug_text() + tp, [data.shape, labels.shape], phase=0)
    layer.uniform = iter([u for d in DRAWS for u in d]).__next__
    top0, top1 = layer(torch.from_numpy(data), torch.from_numpy(labels))
    draws = iter([u for d in DRAWS for u in d])
    mean_arg = None if mean is None else [float(np.float32(np.float32(m) / np.float32(255)) * np.float32(255))
                                          for m in (mean * 3 if len(mean) == 1 else mean)]
    seen = set()
    for i in range(4):
        aug = ref.augment(AUG, 14, 9, 12, 10, True, draws)
        seen |= {k for k, on in (("hue", aug["hue"] != 0), ("sat", aug["sat"] != 1), ("flip", aug["flip"]),
                                 ("rot", aug["rot"] != 0), ("scale", aug["scale"] != (14, 9))) if on}
        want_img = ref.transform_image(data[i], aug, mean_arg, 12, 10)
        np.testing.assert_allclose(top0[i].numpy(), want_img, rtol=1e-5, atol=2e-3)
        want_lab = ref.coverage(ref.transform_labels(ref.labels_of(labels[i]), aug, (14, 9)), g)
        np.testing.assert_allclose(top1[i].numpy(), want_lab, rtol=1e-5, atol=1e-4)
    assert seen == {"hue", "sat", "flip", "rot", "scale"}
    with pytest.raises(StopIteration):
        next(draws)  # the layer took exactly the port's draws


def test_test_phase_draws_nothing_and_only_scales_to_the_net_size():
    text, g = _gt(image_x=12, image_y=10, stride=2, min_cvg_len=2)
    r = np.random.default_rng(5)
    data = torch.from_numpy((r.random((2, 3, 10, 12)) * 255).astype(np.float32))
    labels = torch.from_numpy(_labels([[(1.0, 1.0, 5.0, 4.0, 0, 1)], [(4.0, 2.0, 6.0, 6.0, 0, 1)]]))
    layer = _layer(text + _aug_text() + "transform_param { mean_value: 127 }", [tuple(data.shape), tuple(labels.shape)])

    def never():
        raise AssertionError("TEST phase drew a random number")

    layer.uniform = never
    a0, a1 = layer(data, labels)
    rng.set_seed(9)
    b0, b1 = layer(data, labels)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    # same size: the image is the input minus the mean (cubic taps at integer positions), exactly
    want = data - np.float32(np.float32(127 / np.float32(255)) * np.float32(255))
    assert torch.equal(a0, want)
    # another input size: scaled (align-corners) to 12 x 10, boxes too
    big = torch.from_numpy((r.random((2, 3, 15, 23)) * 255).astype(np.float32))
    c0, c1 = layer(big, labels)
    aug = ref.augment(None, 23, 15, 12, 10, False, iter(()))
    for i in range(2):
        np.testing.assert_allclose(c0[i].numpy(), ref.transform_image(big[i].numpy(), aug, [127.0] * 3, 12, 10),
                                   rtol=1e-5, atol=2e-3)
        np.testing.assert_array_equal(
            c1[i].numpy(), ref.coverage(ref.transform_labels(ref.labels_of(labels[i].numpy()), aug, (23, 15)), g))


def test_train_phase_draws_from_neocaffe_rng_and_repeats_with_the_seed():
    text, _ = _gt(image_x=12, image_y=10, stride=2, min_cvg_len=2)
    data = torch.from_numpy((np.random.default_rng(6).random((3, 3, 10, 12)) * 255).astype(np.float32))
    labels = torch.from_numpy(_labels([[(1.0, 1.0, 5.0, 4.0, 0, 1)]] * 3))
    layer = _layer(text + _aug_text(), [tuple(data.shape), tuple(labels.shape)], phase=0)
    rng.set_seed(1)
    a = layer(data, labels)
    rng.set_seed(1)
    b = layer(data, labels)
    c = layer(data, labels)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_mean_file_is_subtracted_per_pixel(tmp_path):
    from neocaffe.io.binaryproto import write_blobproto

    text, _ = _gt(image_x=12, image_y=10, stride=2)
    mean = (np.random.default_rng(7).random((1, 3, 10, 12)) * 255).astype(np.float32)
    write_blobproto(tmp_path / "mean.binaryproto", mean)
    data = torch.from_numpy((np.random.default_rng(8).random((1, 3, 10, 12)) * 255).astype(np.float32))
    labels = torch.from_numpy(_labels([[]]))
    layer = _layer(text + f' transform_param {{ mean_file: "{tmp_path / "mean.binaryproto"}" }}',
                   [tuple(data.shape), tuple(labels.shape)])
    out, _ = layer(data, labels)
    assert torch.equal(out[0], data[0] - torch.from_numpy(mean[0]))


@pytest.mark.parametrize("labels,match", [
    (np.array([[[[1, 15] + [0] * 14 + [0] * 16]]], dtype=np.float32), "record length"),
    (np.array([[[[3, 16] + [0] * 14], [[0] * 16]]], dtype=np.float32).reshape(1, 1, 2, 16), "at most"),
])
def test_bad_labels_are_errors(labels, match):
    text, _ = _gt(image_x=12, image_y=10, stride=2)
    layer = _layer(text, [(1, 3, 10, 12), labels.shape])
    with pytest.raises(LayerSetupError, match=match):
        layer(torch.zeros(1, 3, 10, 12), torch.from_numpy(labels))


def test_shape_checks():
    text, _ = _gt()
    with pytest.raises(LayerSetupError, match="3 channels"):
        _layer(text, [(2, 1, 16, 24), (2, 1, 4, 16)])
    with pytest.raises(LayerSetupError, match="equal num"):
        _layer(text, [(2, 3, 16, 24), (3, 1, 4, 16)])
    with pytest.raises(LayerSetupError, match="1 or 3"):
        _layer(text + " transform_param { mean_value: 1 mean_value: 2 }", [(2, 3, 16, 24), (2, 1, 4, 16)])


TRAIN_NET = """
name: "DetectNetTiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 32 dim: 64 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 1 dim: 4 dim: 16 } } }
layer { name: "train_transform" type: "DetectNetTransformation" bottom: "data" bottom: "label"
  top: "transformed_data" top: "transformed_label"
  detectnet_groundtruth_param { stride: 8 scale_cvg: 0.4 gridbox_type: GRIDBOX_MIN min_cvg_len: 8 obj_norm: true
    image_size_x: 64 image_size_y: 32 crop_bboxes: true object_class { src: 1 dst: 0 } }
  detectnet_augmentation_param { crop_prob: 1 shift_x: 4 shift_y: 4 flip_prob: 0.5 rotation_prob: 0
    scale_prob: 0 hue_rotation_prob: 0.5 hue_rotation: 30 desaturation_prob: 0.5 desaturation_max: 0.5 }
  transform_param { mean_value: 127 } }
layer { name: "slice-label" type: "Slice" bottom: "transformed_label" top: "foreground-label" top: "bbox-label"
  top: "size-label" top: "obj-label" top: "coverage-label"
  slice_param { slice_dim: 1 slice_point: 1 slice_point: 5 slice_point: 7 slice_point: 8 } }
layer { name: "coverage-block" type: "Concat" bottom: "foreground-label" bottom: "foreground-label"
  bottom: "foreground-label" bottom: "foreground-label" top: "coverage-block" concat_param { concat_dim: 1 } }
layer { name: "size-block" type: "Concat" bottom: "size-label" bottom: "size-label" top: "size-block"
  concat_param { concat_dim: 1 } }
layer { name: "obj-block" type: "Concat" bottom: "obj-label" bottom: "obj-label" bottom: "obj-label"
  bottom: "obj-label" top: "obj-block" concat_param { concat_dim: 1 } }
layer { name: "bb-label-norm" type: "Eltwise" bottom: "bbox-label" bottom: "size-block" top: "bbox-label-norm"
  eltwise_param { operation: PROD } }
layer { name: "bb-obj-norm" type: "Eltwise" bottom: "bbox-label-norm" bottom: "obj-block" top: "bbox-obj-label-norm"
  eltwise_param { operation: PROD } }
layer { name: "conv1" type: "Convolution" bottom: "transformed_data" top: "conv1" convolution_param { num_output: 8
  kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" convolution_param { num_output: 8
  kernel_size: 3 pad: 1 stride: 4 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "cvg/classifier" type: "Convolution" bottom: "conv2" top: "cvg/classifier"
  convolution_param { num_output: 1 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "coverage/sig" type: "Sigmoid" bottom: "cvg/classifier" top: "coverage" }
layer { name: "bbox/regressor" type: "Convolution" bottom: "conv2" top: "bboxes"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "bbox_mask" type: "Eltwise" bottom: "bboxes" bottom: "coverage-block" top: "bboxes-masked"
  eltwise_param { operation: PROD } }
layer { name: "bbox-norm" type: "Eltwise" bottom: "bboxes-masked" bottom: "size-block" top: "bboxes-masked-norm"
  eltwise_param { operation: PROD } }
layer { name: "bbox-obj-norm" type: "Eltwise" bottom: "bboxes-masked-norm" bottom: "obj-block"
  top: "bboxes-obj-masked-norm" eltwise_param { operation: PROD } }
layer { name: "bbox_loss" type: "L1Loss" bottom: "bboxes-obj-masked-norm" bottom: "bbox-obj-label-norm"
  top: "loss_bbox" loss_weight: 2 }
layer { name: "coverage_loss" type: "EuclideanLoss" bottom: "coverage" bottom: "coverage-label" top: "loss_coverage" }
"""


def test_trimmed_detectnet_train_net_learns():
    """DetectNet's training wiring (examples/kitti/detectnet_network.prototxt, trimmed: Input data, a small
    conv body) trains with plain SGD on one augmented batch stream: the loss falls."""
    from neocaffe.graph.net import Net

    param = text_format.Parse(TRAIN_NET, caffe_pb2.NetParameter())
    rng.set_seed(0)
    net = Net(param, 0)
    assert net.blob_shapes["transformed_label"] == (2, 9, 4, 8)
    r = np.random.default_rng(0)
    data = torch.from_numpy((r.random((2, 3, 32, 64)) * 60 + 40).astype(np.float32))
    data[0, :, 8:24, 10:30] += 150  # bright objects where the boxes are
    data[1, :, 4:20, 36:60] += 150
    labels = torch.from_numpy(_labels([[(10.0, 8.0, 20.0, 16.0, 0, 1)], [(36.0, 4.0, 24.0, 16.0, 0, 1)]], rows=4))
    params = [p for p in net.parameters() if p.requires_grad]
    losses = []
    for _ in range(25):
        for p in params:
            p.grad = None
        loss = net.forward({"data": data, "label": labels})
        net.backward()
        losses.append(float(loss))
        with torch.no_grad():
            for p in params:
                p -= 0.05 * p.grad
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
