"""MobileNet-YOLO's training losses (Yolov3, RegionLoss) against the loop ports of the fork in
``tests/layers/yolo_loss_reference.py`` (the loss and the bottom diff). Then the YOLO label of
AnnotatedData and a trimmed copy of the fork's yolo_lite train net training on a tiny LMDB."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers.yolo_loss_reference import CIOU, DIOU, GIOU, IOU, MSE, region_reference, yolov3_reference
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# -- the layers against the references -------------------------------------------------------------
V3 = dict(classes=4, num=3, mask=[3, 4, 5], biases=[5, 7, 9, 13, 14, 20, 20, 16, 26, 30, 38, 36], anchors_scale=8,
          iou_loss=MSE, thresh=0.5, iou_thresh=0.5, coord_scale=1.0, class_scale=1.0, object_scale=5.0,
          iou_normalizer=0.25, max_delta=10.0, accumulate=True, focal=False, logic=False, eps=0.1)
NAMES = {IOU: "IOU", GIOU: "GIOU", MSE: "MSE", DIOU: "DIOU", CIOU: "CIOU"}


def _v3_text(o):
    return ('name: "yl" type: "Yolov3" bottom: "x" bottom: "label" top: "loss" yolov3_param { '
            f'num_class: {o["classes"]} num: {o["num"]} anchors_scale: {o["anchors_scale"]} '
            + "".join(f"biases: {b} " for b in o["biases"]) + "".join(f"mask: {m} " for m in o["mask"])
            + f'iou_loss: {NAMES[o["iou_loss"]]} thresh: {o["thresh"]} iou_thresh: {o["iou_thresh"]} '
            f'coord_scale: {o["coord_scale"]} class_scale: {o["class_scale"]} object_scale: {o["object_scale"]} '
            f'iou_normalizer: {o["iou_normalizer"]} max_delta: {o["max_delta"]} accumulate: {str(o["accumulate"]).lower()} '
            f'use_focal_loss: {str(o["focal"]).lower()} use_logic_gradient: {str(o["logic"]).lower()} '
            f'label_smooth_eps: {o["eps"]} }}')


def _labels(rng, n, classes, counts, pairs=0):
    """Random truths (some near each other to share a cell), zero rows after them."""
    lab = np.zeros((n, 1, 300, 5), np.float32)
    for b, k in enumerate(counts):
        rows = np.column_stack([rng.integers(0, classes, k), rng.uniform(0.03, 0.97, (k, 2)), rng.uniform(0.08, 0.9, (k, 2))])
        for p in range(min(pairs, k - 1)):
            rows[p + 1, 1:3] = rows[p, 1:3] + rng.uniform(-0.01, 0.01, 2)
        lab[b, 0, :k] = rows
    return lab


def _run(text, x, label, top_diff=1.7):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class(param.type)(param, [x.shape, label.shape], 0)
    xt = torch.tensor(x, requires_grad=True)
    loss = layer(xt, torch.tensor(label))
    loss.backward(torch.tensor(top_diff))
    return float(loss.detach()), xt.grad.numpy() / top_diff


V3_CASES = [dict(), dict(logic=True, thresh=0.3), dict(mask=[0, 1, 2], eps=0.0), dict(iou_loss=IOU),
            dict(iou_loss=GIOU, accumulate=False), dict(iou_loss=GIOU, iou_thresh=1.0, logic=True),
            dict(iou_loss=DIOU, focal=True), dict(iou_loss=CIOU, logic=True, max_delta=0.05),
            dict(iou_loss=CIOU, mask=[1, 5, 2], iou_thresh=0.2, focal=True, eps=0.0)]


@pytest.mark.parametrize("case", range(len(V3_CASES)))
@pytest.mark.parametrize("seed", [0, 1])
def test_yolov3_matches_the_forks_loops(case, seed):
    o = {**V3, **V3_CASES[case]}
    rng = np.random.default_rng(100 * case + seed)
    n, h, w = 2, 3 + seed, 5 - seed
    x = (rng.standard_normal((n, o["num"] * (5 + o["classes"]), h, w)) * 1.5).astype(np.float32)
    label = _labels(rng, n, o["classes"], [5, 3 * seed], pairs=2)
    want_loss, want_diff = yolov3_reference(x, label, o)
    got_loss, got_diff = _run(_v3_text(o), x, label)
    assert got_loss == pytest.approx(want_loss, rel=2e-5, abs=1e-6)
    np.testing.assert_allclose(got_diff, want_diff, rtol=2e-5, atol=2e-6)
    assert np.count_nonzero(got_diff) > 0


def test_yolov3_assigns_the_best_anchor_twice_where_mask_k_is_not_k():
    """yolov3_layer.cpp: ``best_n = mask_n`` before the loop that skips ``n == best_n``, so with mask
    3 4 5 the best anchor (here 4, mask slot 1) passes as an 'other' anchor too and its box diff
    accumulates twice; with the same anchors at mask 0 1 2 it counts once."""
    biases = [30, 30, 31, 31, 32, 32, 5, 5, 10, 8, 20, 24]
    x = np.random.default_rng(7).standard_normal((1, 27, 2, 2)).astype(np.float32)
    label = np.zeros((1, 1, 300, 5), np.float32)
    label[0, 0, 0] = [1, 0.3, 0.6, 10 / 16, 8 / 16]  # exactly anchor 4's box (the grid is 16 pixels wide)
    base = dict(V3, classes=4, mask=[3, 4, 5], biases=biases, anchors_scale=8, iou_loss=GIOU, iou_thresh=0.5)
    once = dict(base, mask=[0, 1, 2], biases=biases[6:] + biases[:6])
    twice_acc, once_acc = _run(_v3_text(base), x, label)[1], _run(_v3_text(once), x, label)[1]
    twice_set = _run(_v3_text(dict(base, accumulate=False)), x, label)[1]
    box = np.s_[0, 9:13, 1, 0]  # slot 1, cell (row 1, column 0): tx ty tw th
    assert np.count_nonzero(twice_set[box]) >= 2
    np.testing.assert_allclose(twice_acc[box], 2 * twice_set[box], rtol=1e-6)
    np.testing.assert_allclose(once_acc[box], twice_set[box], rtol=1e-6)


REGION = dict(classes=3, num=4, biases=[1.08, 1.19, 3.42, 4.41, 6.63, 11.38, 9.42, 5.11, 16.62, 10.52],
              thresh=0.6, bias_match=1, rescore=1, object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0)


def _region_text(o):
    return ('name: "rl" type: "RegionLoss" bottom: "x" bottom: "label" top: "loss" region_loss_param { '
            f'num_class: {o["classes"]} coords: 4 num: {o["num"]} ' + "".join(f"biases: {b} " for b in o["biases"])
            + " ".join(f"{k}: {o[k]}" for k in ("thresh", "bias_match", "rescore", "object_scale", "noobject_scale",
                                               "class_scale", "coord_scale")) + " }")


@pytest.mark.parametrize("case", [dict(), dict(rescore=0, thresh=0.3), dict(bias_match=0), dict(bias_match=0, rescore=0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_region_loss_matches_the_forks_loops(case, seed):
    o = {**REGION, **case}
    rng = np.random.default_rng(17 + seed)
    side = 4 + seed
    x = rng.standard_normal((2, o["num"] * (5 + o["classes"]), side, side)).astype(np.float32)
    label = _labels(rng, 2, o["classes"], [4, 2], pairs=1)
    want_loss, want_diff = region_reference(x, label, o)
    got_loss, got_diff = _run(_region_text(o), x, label)
    assert got_loss == pytest.approx(want_loss, rel=2e-5)
    np.testing.assert_allclose(got_diff, want_diff, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("num,mask,shapes,match", [
    (4, "0 1 2", [(1, 36, 2, 2), (1, 1, 300, 5)], "mask needs num = 4"),
    (3, "0 7 2", [(1, 27, 2, 2), (1, 1, 300, 5)], "indexes anchors beyond"),
    (3, "0 1 2", [(1, 26, 2, 2), (1, 1, 300, 5)], "N x 27 x H x W"),
    (3, "0 1 2", [(2, 27, 2, 2), (1, 1, 300, 5)], "yolo_data_type: 1"),
    (3, "0 1 2", [(1, 27, 2, 2), (1, 1, 3, 8)], "yolo_data_type: 1"),
])
def test_yolov3_refuses_bad_configurations(num, mask, shapes, match):
    text = ('name: "yl" type: "Yolov3" bottom: "x" bottom: "label" top: "loss" yolov3_param { num_class: 4 '
            f'num: {num} biases: 1 biases: 2 biases: 3 biases: 4 biases: 5 biases: 6 '
            + "".join(f"mask: {m} " for m in mask.split()) + "}")
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match=f"'yl' \\(Yolov3\\).*{match}"):
        layer = get_layer_class("Yolov3")(param, shapes, 0)
        layer.reshape(shapes)


@pytest.mark.parametrize("change,shape,match", [
    ("coords: 5", (1, 16, 3, 3), "coords = 5 is not supported"),
    ("biases_short", (1, 16, 3, 3), "at least max\\(10, 2 \\* num\\)"),
    ("", (1, 16, 3, 4), "must be square"),
    ("", (1, 18, 3, 3), "N x 16 x H x W"),
])
def test_region_loss_refuses_bad_configurations(change, shape, match):
    biases = "biases: 1 " * (8 if change == "biases_short" else 10)
    text = (f'name: "rl" type: "RegionLoss" bottom: "x" bottom: "label" top: "loss" region_loss_param {{ num_class: 3 '
            f'num: 2 {biases} {change if change.startswith("coords") else ""} }}')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match=f"'rl' \\(RegionLoss\\).*{match}"):
        layer = get_layer_class("RegionLoss")(param, [shape, (1, 1, 300, 5)], 0)
        layer.reshape([shape, (1, 1, 300, 5)])


def test_yolo_losses_refuse_a_truth_outside_the_grid():
    x = np.zeros((1, 27, 2, 2), np.float32)
    label = np.zeros((1, 1, 300, 5), np.float32)
    label[0, 0, 0] = [0, 1.7, 0.5, 0.3, 0.3]
    with pytest.raises(LayerSetupError, match=r"'yl' \(Yolov3\).*centre \(1.7.*outside the 2 x 2 grid"):
        _run(_v3_text(dict(V3, biases=V3["biases"][:6], mask=[0, 1, 2])), x, label)
    x = np.zeros((1, 16, 3, 3), np.float32)
    with pytest.raises(LayerSetupError, match=r"'rl' \(RegionLoss\).*outside the 3 x 3 grid"):
        _run(_region_text(dict(REGION, classes=3, num=2)), x, label)



@pytest.mark.gpu
def test_yolo_losses_on_cuda_equal_the_cpu():
    rng = np.random.default_rng(3)
    o = {**V3, "iou_loss": CIOU, "logic": True}
    for text, x, label in ((_v3_text(o), rng.standard_normal((2, 27, 3, 4)), _labels(rng, 2, 4, [4, 2], pairs=1)),
                           (_region_text(REGION), rng.standard_normal((2, 32, 4, 4)), _labels(rng, 2, 3, [3, 1]))):
        x = x.astype(np.float32)
        param = text_format.Parse(text, caffe_pb2.LayerParameter())
        got = []
        for device in ("cpu", "cuda"):
            layer = get_layer_class(param.type)(param, [x.shape, label.shape], 0)
            xt = torch.tensor(x, device=device, requires_grad=True)
            loss = layer(xt, torch.tensor(label, device=device))
            loss.backward()
            assert loss.device.type == xt.grad.device.type == device
            got.append((float(loss), xt.grad.cpu().numpy()))
        assert got[0][0] == got[1][0]
        np.testing.assert_array_equal(got[0][1], got[1][1])

# -- AnnotatedData's YOLO label and the fork's train net -------------------------------------------
def _yolo_dataset(folder, n=16, size=64, seed=0):
    """Images with one or two coloured rectangles on noise (every fifth object difficult), VOC XML,
    a list and a label map; returns each image's objects."""
    from neocaffe.tools import convert_annoset

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir()
    lines, truth = [], []
    for i in range(n):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        objs, xml = [], [f"<annotation><size><width>{size}</width><height>{size}</height><depth>3</depth></size>"]
        for k in range(1 + i % 2):
            label = 1 + (i + k) % 2
            w, h = rng.integers(size // 5, size // 2, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            img[y:y + h, x:x + w] = (40, 40, 220) if label == 1 else (40, 200, 40)
            difficult = int((i + k) % 5 == 4)
            objs.append((label, x / size, y / size, (x + w) / size, (y + h) / size, difficult))
            xml.append(f"<object><name>{('red', 'green')[label - 1]}</name><difficult>{difficult}</difficult><bndbox>"
                       f"<xmin>{x}</xmin><ymin>{y}</ymin><xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>")
        cv2.imwrite(str(folder / "img" / f"{i}.png"), img)
        (folder / "img" / f"{i}.xml").write_text("".join(xml) + "</annotation>")
        lines.append(f"img/{i}.png img/{i}.xml")
        truth.append(objs)
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    (folder / "labelmap.prototxt").write_text(
        'item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
        'item { name: "red" label: 1 display_name: "red" }\nitem { name: "green" label: 2 display_name: "green" }\n')
    assert convert_annoset.run(["--anno_type=detection", f"--label_map_file={folder / 'labelmap.prototxt'}", "--encoded",
                                "--encode_type=png", f"{folder}/", str(folder / "list.txt"), str(folder / "db")]) == 0
    return truth


def _data_net(db, batch, extra_transform="", extra_anno=""):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import TRAIN

    text = f"""layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
      transform_param {{ resize_param {{ prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: NEAREST }} {extra_transform} }}
      data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
      annotated_data_param {{ yolo_data_type: 1 {extra_anno} }} }}
    layer {{ name: "s" type: "Silence" bottom: "data" bottom: "label" }}"""
    return Net(read_net(text), TRAIN)


@pytest.mark.parametrize("difficult", [True, False])
def test_annotated_data_yolo_label_holds_centres_and_sizes(tmp_path, difficult):
    truth = _yolo_dataset(tmp_path, n=6)
    net = _data_net(tmp_path / "db", 6, extra_anno=f"yolo_data_jitter: 0 train_diffcult: {str(difficult).lower()}")
    net.forward()
    label = net.blob_data["label"].numpy()
    assert label.shape == (6, 1, 300, 5)
    for b, objs in enumerate(truth):
        want = [(lab - 1, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0) for lab, x0, y0, x1, y1, d in objs
                if difficult or not d]
        np.testing.assert_allclose(label[b, 0, :len(want)], np.array(want).reshape(-1, 5), atol=1e-6)
        assert not label[b, 0, len(want):].any()


def test_annotated_data_draws_a_resize_policy_every_ten_batches(tmp_path):
    from neocaffe.data.annotated_batches import AnnotatedBatchMaker, AnnotatedTransform

    _yolo_dataset(tmp_path, n=4)
    tp = text_format.Parse("""resize_param { prob: 0.5 resize_mode: WARP height: 24 width: 24 }
        resize_param { prob: 0.5 resize_mode: WARP height: 40 width: 40 }""", caffe_pb2.TransformationParameter())
    maker = AnnotatedBatchMaker(str(tmp_path / "db"), "lmdb", 1, AnnotatedTransform(tp, 0, None, yolo=True), [],
                                seed=3, with_boxes=True, where="db", jitter=0.3, yolo=True)
    sizes = [maker.make(k)["data"].shape[-1] for k in range(80)]
    maker.close()
    groups = [set(sizes[g:g + 10]) for g in range(0, 80, 10)]
    assert all(len(g) == 1 for g in groups) and set().union(*groups) == {24, 40}
    with pytest.raises(Exception, match="sum to 1"):
        AnnotatedTransform(text_format.Parse("resize_param { prob: 0.5 height: 2 width: 2 } resize_param { prob: 0.2 "
                                             "height: 3 width: 3 }", caffe_pb2.TransformationParameter()), 0, None, yolo=True)


def test_annotated_data_jitter_crops(tmp_path):
    _yolo_dataset(tmp_path, n=8)
    plain, jittered = (_data_net(tmp_path / "db", 8, extra_anno=f"yolo_data_jitter: {j}") for j in (0, 0.7))
    plain.forward()
    jittered.forward()
    a, b = plain.blob_data["label"].numpy(), jittered.blob_data["label"].numpy()
    assert not np.allclose(a, b)
    rows = b.reshape(-1, 5)[b.reshape(-1, 5)[:, 3] > 0]
    assert ((rows[:, 1:3] - rows[:, 3:5] / 2 >= -1e-6) & (rows[:, 1:3] + rows[:, 3:5] / 2 <= 1 + 1e-6)).all()


def _conv(name, bottom, out, k=3, s=1, dw=False, bn=True):
    """A conv (depthwise when ``dw``), with the fork's BatchNorm + Scale + ReLU."""
    kind = "DepthwiseConvolution" if dw else "Convolution"
    group = f"group: {out} " if dw else ""
    text = (f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{name}" param {{ lr_mult: 1 decay_mult: 1 }} '
            f'convolution_param {{ num_output: {out} bias_term: false pad: {k // 2} kernel_size: {k} stride: {s} {group}'
            'weight_filler { type: "msra" } } }\n')
    if bn:
        text += (f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" '
                 'param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } }\n'
                 f'layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}" '
                 'scale_param { filler { value: 1 } bias_term: true bias_filler { value: 0 } } }\n'
                 f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')
    return text


YOLO_PARAM = """yolov3_param { side: %d num_class: 20 num: 3 object_scale: 5.0 noobject_scale: 1.0 class_scale: 1.0
    coord_scale: 1.0 thresh: %s anchors_scale: %d use_logic_gradient: false
    biases: 20 biases: 37 biases: 49 biases: 94 biases: 73 biases: 201 biases: 143 biases: 265 biases: 153
    biases: 121 biases: 280 biases: 279 mask: %s }"""

# models/mobilenetv2_voc/yolo_lite/train.prototxt, trimmed: its data layer (two of its five WARP sizes,
# scaled down from 416/384 to 96/64), a short MobileNetV2-like trunk in place of the 54 layers, and its
# head: yolo/conv4 on the stride-32 features, an upsampling Deconvolution summed with the stride-16
# features into yolo/conv5, and the two Yolov3 layers with the real yolov3_param values.
YOLO_NET = """name: "MobileNetV2-YoloV3-lite-trimmed"
layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.007843 mirror: true mean_value: 127.5 mean_value: 127.5 mean_value: 127.5
    resize_param { prob: 0.5 resize_mode: WARP height: 96 width: 96 interp_mode: LINEAR interp_mode: AREA interp_mode: LANCZOS4 }
    resize_param { prob: 0.5 resize_mode: WARP height: 64 width: 64 interp_mode: LINEAR interp_mode: AREA interp_mode: LANCZOS4 }
    emit_constraint { emit_type: CENTER }
    distort_param { brightness_prob: 0.5 brightness_delta: 32.0 contrast_prob: 0.5 contrast_lower: 0.5 contrast_upper: 1.5
      hue_prob: 0.5 hue_delta: 18.0 saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5 random_order_prob: 0.0 }
    expand_param { prob: 0.5 max_expand_ratio: 4.0 } }
  data_param { source: "DB" batch_size: 8 backend: LMDB }
  annotated_data_param { yolo_data_type: 1 yolo_data_jitter: 0.7 label_map_file: "MAP" } }
""" + (_conv("conv1", "data", 16, s=2) + _conv("conv2/dw", "conv1", 16, s=2, dw=True) + _conv("conv2", "conv2/dw", 24, k=1)
       + _conv("conv3/dw", "conv2", 24, s=2, dw=True) + _conv("conv3", "conv3/dw", 32, k=1)
       + _conv("conv4/dw", "conv3", 32, s=2, dw=True) + _conv("conv4", "conv4/dw", 48, k=1)
       + _conv("yolo/conv1/dw", "conv4", 48, s=2, dw=True) + _conv("yolo/conv1", "yolo/conv1/dw", 48, k=1)) + """
layer { name: "upsample" type: "Deconvolution" bottom: "yolo/conv1" top: "upsample" param { lr_mult: 0 decay_mult: 0 }
  convolution_param { num_output: 48 group: 48 bias_term: false pad: 1 kernel_size: 4 stride: 2 weight_filler { type: "bilinear" } } }
layer { name: "yolo/conv2/sum" type: "Eltwise" bottom: "conv4" bottom: "upsample" top: "yolo/conv2/sum" }
""" + _conv("yolo/conv3", "yolo/conv2/sum", 48, k=1) + "".join(f"""
layer {{ name: "yolo/conv{k}" type: "Convolution" bottom: "{src}" top: "yolo/conv{k}" param {{ lr_mult: 1 decay_mult: 1 }}
  param {{ lr_mult: 2 decay_mult: 0 }} convolution_param {{ num_output: 75 kernel_size: 1 pad: 0 stride: 1
  weight_filler {{ type: "msra" }} bias_filler {{ value: 0 }} }} }}""" for k, src in ((4, "yolo/conv1"), (5, "yolo/conv3"))) + f"""
layer {{ name: "Yolov3Loss1" type: "Yolov3" bottom: "yolo/conv4" bottom: "label" top: "det_loss1" loss_weight: 1
  {YOLO_PARAM % (13, "0.7", 32, "3 mask: 4 mask: 5")} }}
layer {{ name: "Yolov3Loss2" type: "Yolov3" bottom: "yolo/conv5" bottom: "label" top: "det_loss2" loss_weight: 1
  {YOLO_PARAM % (26, "0.6", 16, "0 mask: 1 mask: 2")} }}
"""


def _train(tmp_path, net_text, iters, solver_text):
    from neocaffe.solver.solver import Solver

    (tmp_path / "train.prototxt").write_text(
        net_text.replace('"DB"', f'"{tmp_path / "db"}"').replace('"MAP"', f'"{tmp_path / "labelmap.prototxt"}"'))
    solver = text_format.Parse(f'net: "{tmp_path / "train.prototxt"}" {solver_text} max_iter: {iters} display: 0 '
                               'snapshot_after_train: false random_seed: 5 solver_mode: CPU', caffe_pb2.SolverParameter())
    s = Solver(solver)
    losses, sizes = [], set()
    for _ in range(iters):
        s.step(1)
        losses.append(s.smoothed_loss)
        sizes.add(tuple(s.net.blob_data["data"].shape[2:]))
    return np.array(losses), sizes


def test_trimmed_yolo_lite_train_net_learns_on_a_tiny_lmdb(tmp_path):
    _yolo_dataset(tmp_path, n=24, size=80)
    losses, sizes = _train(tmp_path, YOLO_NET, 60, 'base_lr: 0.002 lr_policy: "fixed" type: "Adam" momentum: 0.9 '
                           'momentum2: 0.999 weight_decay: 0.0005')
    assert np.isfinite(losses).all() and sizes == {(96, 96), (64, 64)}  # multi-scale: both policies drawn
    first, last = losses[:10].mean(), losses[-10:].mean()
    print(f"trimmed yolo_lite (Yolov3 x 2): first 10 iterations {first:.3f}, last 10 {last:.3f}")
    assert last < 0.5 * first


# models/yolov2/mobilenet_yolo_lite_train.prototxt, trimmed the same way: its data layer (batch samplers
# instead of the jitter), a short trunk with ReLU6, conv22 (125 = 5 x 25 outputs) and its RegionLoss.
REGION_NET = YOLO_NET.split('layer { name: "conv1"')[0].replace(
    "yolo_data_jitter: 0.7", "batch_sampler { max_sample: 1 max_trials: 1 } batch_sampler { sampler { min_scale: 0.3 "
    "max_scale: 1.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 } sample_constraint { min_jaccard_overlap: 0.5 } "
    "max_sample: 1 max_trials: 50 }") + (
    _conv("conv1", "data", 16, s=2) + _conv("conv2/dw", "conv1", 16, s=2, dw=True) + _conv("conv2", "conv2/dw", 32, k=1)
    + _conv("conv3/dw", "conv2", 32, s=2, dw=True) + _conv("conv3", "conv3/dw", 48, k=1)
    + _conv("conv4/dw", "conv3", 48, s=2, dw=True) + _conv("conv21", "conv4/dw", 64)).replace('"ReLU"', '"ReLU6"') + """
layer { name: "conv22_indoor" type: "Convolution" bottom: "conv21" top: "conv22" param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 125 kernel_size: 1 pad: 0 stride: 1
  weight_filler { type: "msra" } bias_filler { value: 0 } } }
layer { name: "Region_Loss" type: "RegionLoss" bottom: "conv22" bottom: "label" top: "det_loss" loss_weight: 1
  region_loss_param { side: 13 num_class: 20 coords: 4 num: 5 softmax: 1 jitter: 0.2 rescore: 1 object_scale: 5.0
    noobject_scale: 1.0 class_scale: 1.0 coord_scale: 1.0 absolute: 1 thresh: 0.6 random: 0
    biases: 1.08 biases: 1.19 biases: 3.42 biases: 4.41 biases: 6.63 biases: 11.38 biases: 9.42 biases: 5.11
    biases: 16.62 biases: 10.52 } }
"""


def test_trimmed_yolov2_lite_train_net_learns_on_a_tiny_lmdb(tmp_path):
    _yolo_dataset(tmp_path, n=24, size=80)
    losses, sizes = _train(tmp_path, REGION_NET, 60, 'base_lr: 0.002 lr_policy: "fixed" type: "Adam" momentum: 0.9 '
                           'momentum2: 0.999 weight_decay: 0.0005')
    assert np.isfinite(losses).all() and sizes == {(96, 96), (64, 64)}
    first, last = losses[:10].mean(), losses[-10:].mean()
    print(f"trimmed yolov2 lite (RegionLoss): first 10 iterations {first:.3f}, last 10 {last:.3f}")
    assert last < 0.7 * first
