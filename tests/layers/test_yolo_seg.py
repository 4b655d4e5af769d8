"""MobileNet-YOLO's segmentation path (eric612/MobileNet-YOLO @ 69b4441c): YoloSeg and SegmentationEvaluate
against loop ports of yolo_seg.cpp and segmentation_evaluate_layer.cpp, AnnotatedData's seg_label top against
a port of load_batch's segmentation branch, difficult_label_warmup, and a trimmed copy of the fork's cityscapes
train net (detection and segmentation heads) training on a tiny LMDB with label images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

F = np.float32


def _layer(text, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class(p.type)(p, shapes, 0)
    layer.reshape(shapes)
    return layer


# -- YoloSeg ---------------------------------------------------------------------------------------------------
def _yolo_seg_reference(x, y, wsum, object_scale):
    """yolo_seg.cpp Forward (the sigmoid, then Forward_cpu's weighted branch) and Backward_cpu, flat, float32:
    (loss, bottom diff for top diff 1)."""
    N, C, H, W = x.shape
    size = H * W
    inp, lab, cw = x.astype(F).reshape(-1), y.astype(F).reshape(-1), wsum.astype(F).reshape(-1)
    diff = np.array([F(1.0 / (1.0 + float(np.exp(F(-v))))) for v in inp], F)
    alpha = F(object_scale)
    scale_data = []
    for i in range(C):
        scale_val, total = F(0), F(0)
        for j in range(wsum.shape[0]):
            scale_val += cw[j * C + i]
            total += F(size) - cw[j * C + i]
        scale_data.append(scale_val / total)
    for i in range(C):
        beta = F(float(alpha) * (2.0 - 1. * float(scale_data[i])))
        for j in range(N):
            for k in range(size):
                q = j * C * size + i * size + k
                s = diff[q]
                factor = beta if lab[q] > 0.5 else alpha
                diff[q] = F(-1.0 * float(lab[q] - s) * float(factor))
    loss = F(0)
    for i in range(C):
        for j in range(N):
            for k in range(size):
                q = j * C * size + i * size + k
                loss += diff[q] * diff[q]
    return F(loss / F(N)), (diff * (F(1) / F(N))).reshape(x.shape)   # Backward: caffe_cpu_axpby(top_diff / N, diff)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 6, 6)])
def test_yolo_seg_matches_the_forks_loops(shape):
    r = np.random.default_rng(sum(shape))
    x = (r.standard_normal(shape) * 2).astype(F)
    y = (r.uniform(0, 1, shape) > 0.7).astype(F)
    y[0, 0, 0, :3] = [0.5, 0.25, 0.75]          # resized label pixels
    wsum = y.sum(axis=(2, 3)).astype(F)
    layer = _layer('name: "s" type: "YoloSeg" bottom: "x" bottom: "y" bottom: "w" top: "loss" '
                   'yolo_seg_param { object_scale: 0.2 }', [shape, shape, wsum.shape])
    xt = torch.tensor(x, requires_grad=True)
    loss = layer(xt, torch.tensor(y), torch.tensor(wsum))
    loss.backward()
    want_loss, want_diff = _yolo_seg_reference(x, y, wsum, 0.2)
    assert float(loss.detach()) == float(want_loss)
    np.testing.assert_array_equal(xt.grad.numpy(), want_diff)


def test_yolo_seg_refuses_mismatched_bottoms():
    text = 'name: "s" type: "YoloSeg" bottom: "x" bottom: "y" bottom: "w" top: "loss"'
    with pytest.raises(LayerSetupError, match="must have the same count"):
        _layer(text, [(2, 19, 4, 4), (2, 3, 4, 4), (2, 3)])
    with pytest.raises(LayerSetupError, match="pixel count per class"):
        _layer(text, [(2, 3, 4, 4), (2, 3, 4, 4), (2, 4)])


# -- SegmentationEvaluate ----------------------------------------------------------------------------------------
def _seg_eval_reference(seg, gt, thr):
    thr = F(thr)
    C, h, w = seg.shape[1:]
    eh, ew = gt.shape[2:]
    out = []
    for c in range(C):
        if (h, w) == (eh, ew):
            g = m = e = 0
            for i in range(h):
                for j in range(w):
                    if gt[0, c, i, j] > thr:
                        g += 1
                        m += int(seg[0, c, i, j] > thr)
                    e += int(seg[0, c, i, j] > thr)
            out.append(F(m) / F(g + e - m) if m else 0)
            continue
        tmp = np.zeros((h, w), np.uint8)
        for i in range(h):
            for j in range(w):
                tmp[i, j] = int(seg[0, c, i, j] * F(255)) & 0xFF
        ev = cv2.resize(tmp, (ew, eh))          # cv::resize(tmp, eval, Size(ew, eh), INTER_AREA as fx): bilinear
        th = int(thr * F(255))
        g = m = e = 0
        for i in range(eh):
            for j in range(ew):
                if gt[0, c, i, j] > thr:
                    g += 1
                    m += int(ev[i, j] > th)
                e += int(ev[i, j] > th)
        out.append(F(m) / F(g + e - m) if m else (-1 if g == 0 else 0))
    return np.array(out, F)


@pytest.mark.parametrize("pred_hw", [(6, 8), (3, 4)])
def test_segmentation_evaluate_matches_the_forks_loops(pred_hw):
    r = np.random.default_rng(4)
    gt = (r.uniform(0, 1, (2, 3, 6, 8)) > 0.6).astype(F)
    gt[0, 2] = 0                                 # a class without label pixels
    seg = r.uniform(0, 1, (2, 3, *pred_hw)).astype(F)
    layer = _layer('name: "e" type: "SegmentationEvaluate" bottom: "p" bottom: "g" top: "iou" '
                   'segmentation_evaluate_param { num_classes: 3 threshold: 0.3 }', [seg.shape, gt.shape])
    got = layer(torch.tensor(seg), torch.tensor(gt)).numpy()
    assert got.shape == (1, 1, 1, 3)
    np.testing.assert_array_equal(got.reshape(-1), _seg_eval_reference(seg, gt, 0.3))
    with pytest.raises(LayerSetupError, match="Must provide num_classes"):
        _layer('name: "e" type: "SegmentationEvaluate" bottom: "p" bottom: "g" top: "iou"', [seg.shape, gt.shape])


# -- AnnotatedData's seg_label top ----------------------------------------------------------------------------------
SEG_MAP = """item { name: "unlabeled" label: 0 label_id: 0 }
item { name: "road" label: 1 label_id: 1 }
item { name: "car" label: 2 label_id: 2 }
item { name: "truck" label: 3 label_id: 2 }
item { name: "sky" label: 4 label_id: 0 }
"""


def _seg_dataset(folder, n=8, size=64, seed=0, groups=2):
    """AnnotatedDatums (BBOXandSeg) of encoded images with one or two coloured boxes (every third difficult)
    and their label images (grey value = item number of SEG_MAP); returns each image's (boxes, label image)."""
    from neocaffe.data.datum import encode_array_to_datum
    from neocaffe.data.db_writer import DBWriter

    rng = np.random.default_rng(seed)
    out = []
    with DBWriter(str(folder / "db"), "lmdb") as db:
        for i in range(n):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            seg = np.zeros((size, size), np.uint8)
            seg[size * 3 // 4:] = 1                                   # road
            seg[: size // 5] = 4                                      # sky
            anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOXandSeg)
            boxes = []
            for k in range(1 + i % 2):
                label = 1 + (i + k) % groups
                w, h = rng.integers(size // 5, size // 2, 2)
                x, y = rng.integers(0, size - w), rng.integers(0, size - h)
                img[y:y + h, x:x + w] = (40, 40, 220) if label == 1 else (40, 200, 40)
                seg[y:y + h, x:x + w] = 2 + (i + k) % 2                 # car or truck: both class 2
                difficult = (i + k) % 3 == 2
                a = anno.annotation_group.add(group_label=label).annotation.add(instance_id=0)
                a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = x / size, y / size, (x + w) / size, (y + h) / size
                a.bbox.difficult = difficult
                boxes.append((label, x / size, y / size, (x + w) / size, (y + h) / size, difficult))
            anno.datum.CopyFrom(encode_array_to_datum(img.transpose(2, 0, 1).copy(), -1, "png"))
            anno.datum.seg_label = cv2.imencode(".png", seg)[1].tobytes()
            db.put(f"{i:08d}", anno.SerializeToString())
            out.append((boxes, seg))
    (folder / "labelmap_seg.prototxt").write_text(SEG_MAP)
    return out


def _data_net(folder, batch, anno="", transform=""):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import TRAIN

    text = f"""layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" top: "seg_label"
      transform_param {{ resize_param {{ prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: NEAREST }}
        {transform} }}
      data_param {{ source: "{folder / 'db'}" batch_size: {batch} backend: LMDB }}
      annotated_data_param {{ yolo_data_type: 1 label_map_file: "{folder / 'labelmap_seg.prototxt'}"
        batch_sampler {{ max_sample: 1 max_trials: 1 }} {anno} }} }}
    layer {{ name: "s" type: "Silence" bottom: "data" bottom: "label" bottom: "seg_label" }}"""
    return Net(read_net(text), TRAIN)


def _expected_seg(seg, classes_of, shape, mirror=False):
    """load_batch's multi-class branch on the whole image: per class the LUT image, cv::resize (bilinear) to
    shape, Transform2's pixel * (float)(1/255.0), mirrored with the image."""
    out = []
    for c in (1, 2):
        table = np.array([255 if k < len(classes_of) and classes_of[k] == c else 0 for k in range(256)], np.uint8)
        binary = table[seg]
        out.append(cv2.resize(binary, (shape[1], shape[0])).astype(F) * F(1 / 255.0))
    out = np.stack(out)
    return out[:, :, ::-1] if mirror else out


def test_annotated_data_seg_label_is_the_forks_per_class_label(tmp_path):
    data = _seg_dataset(tmp_path, n=6)
    net = _data_net(tmp_path, 6, anno="single_class: false seg_scales: 4", transform="mirror: true")
    net.forward()
    seg, label = net.blob_data["seg_label"].numpy(), net.blob_data["label"].numpy()
    assert seg.shape == (6, 2, 8, 8)
    mirrored = []
    for b, (boxes, img) in enumerate(data):
        x0 = (boxes[0][1] + boxes[0][3]) / 2
        flip = abs(label[b, 0, 0, 1] - (1 - x0)) < 1e-5 and abs(x0 - 0.5) > 1e-3
        mirrored.append(flip)
        np.testing.assert_array_equal(seg[b], _expected_seg(img, [0, 1, 2, 2, 0], (8, 8), flip))
    assert any(mirrored) and not all(mirrored)
    net = _data_net(tmp_path, 2, anno="seg_resize_width: 6 seg_resize_height: 4 single_class: false")
    net.forward()
    assert net.blob_data["seg_label"].shape == (2, 2, 4, 6)
    np.testing.assert_array_equal(net.blob_data["seg_label"].numpy()[1], _expected_seg(data[1][1], [0, 1, 2, 2, 0], (4, 6)))


def test_annotated_data_single_class_seg_label_and_refusals(tmp_path):
    from neocaffe.data.annotated_yolo import SegSpec, seg_label
    from neocaffe.data.datum import DatumError
    from neocaffe.graph.errors import NetError

    data = _seg_dataset(tmp_path, n=2)
    net = _data_net(tmp_path, 2, anno="seg_scales: 8")   # single_class: true, the default
    net.forward()
    got = net.blob_data["seg_label"].numpy()
    assert got.shape == (2, 1, 4, 4)
    want = np.where(cv2.resize(data[0][1], (4, 4)) > 100, F(255), F(0)) * F(1 / 255.0)
    np.testing.assert_array_equal(got[0, 0], want)
    spec = SegSpec((), True, 8, None)
    with pytest.raises(DatumError, match="square"):
        seg_label(spec, data[0][1], np.array([0, 0, 1, 1], F), False, (1, 4, 6), "r")
    with pytest.raises(DatumError, match="none has been drawn"):
        seg_label(spec, data[0][1], None, False, (1, 4, 4), "r")
    np.testing.assert_array_equal(   # a crop box: the label image's pixels under it, as CropImage takes them
        seg_label(spec, np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, np.array([0.25, 0.5, 0.75, 1.2], F), False,
                  (1, 2, 2), "r")[0],
        np.where(cv2.resize((np.arange(64).reshape(8, 8) * 3).astype(np.uint8)[4:8, 2:6], (2, 2)) > 100, 1.0, 0.0))
    (tmp_path / "labelmap_seg.prototxt").write_text('item { name: "a" label_id: 0 }')
    with pytest.raises(NetError, match="no item has a positive label_id"):
        _data_net(tmp_path, 2, anno="single_class: false")


# -- difficult_label_warmup ------------------------------------------------------------------------------------------
def test_difficult_label_warmup_leaves_difficult_boxes_out_for_the_first_twentieth(tmp_path):
    from neocaffe.solver.solver import Solver

    data = _seg_dataset(tmp_path, n=4)
    difficult = sum(d for boxes, _ in data for *_, d in boxes)
    assert difficult > 0

    def rows(net):
        return int((net.blob_data["label"].numpy()[..., 3] > 0).sum())

    total = sum(len(boxes) for boxes, _ in data)
    net = _data_net(tmp_path, 4, anno="train_diffcult: true difficult_label_warmup: true")
    net.forward()
    assert rows(net) == total                          # no solver: no warmup
    for it, stop, want in ((0, 100, total - difficult), (5, 100, total - difficult), (6, 100, total)):
        net.set_iteration(it, stop)
        net.forward()
        assert rows(net) == want, (it, stop)
    net = _data_net(tmp_path, 4, anno="train_diffcult: false difficult_label_warmup: true")
    net.set_iteration(50, 100)
    net.forward()
    assert rows(net) == total - difficult               # train_diffcult: false wins
    # through the solver: max_iter 40, so iterations 0..2 (it > 40 / 20 = 2 is false) leave them out
    (tmp_path / "net.prototxt").write_text(f"""layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
      include {{ phase: TRAIN }}
      transform_param {{ resize_param {{ prob: 1 resize_mode: WARP height: 8 width: 8 }} }}
      data_param {{ source: "{tmp_path / 'db'}" batch_size: 4 backend: LMDB }}
      annotated_data_param {{ yolo_data_type: 1 difficult_label_warmup: true yolo_data_jitter: 0 }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 1 }} }}
    layer {{ name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "ip" top: "loss" }}
    layer {{ name: "s" type: "Silence" bottom: "label" }}""")
    solver = Solver(text_format.Parse(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" '
                                      'max_iter: 40 display: 0 snapshot_after_train: false solver_mode: CPU',
                                      caffe_pb2.SolverParameter()))
    seen = []
    solver.add_callback(on_gradients_ready=lambda: seen.append(rows(solver.net)))
    solver.solve()
    assert seen == [total - difficult] * 3 + [total] * 37
    seen.clear()
    solver.iter = 0
    for _ in range(3):
        solver.step(1)     # pycaffe's step(1): the running step ends at iter + 1, as in the fork's Step
    assert seen == [total - difficult] + [total] * 2   # iteration 1 of step(1): 1 > 2 / 20


# -- the fork's cityscapes train net, trimmed ------------------------------------------------------------------------
def _city_net(folder):
    """models/cityscapes/mobilenet_yolov3_train.prototxt, trimmed: its data layer (two of its ten WARP sizes, scaled
    down from 608/416 to 96/64, two of its samplers, seg_scales 8), a short MobileNet trunk in place of its 40 layers,
    one of its three Yolov3 heads (num_class 1, its anchors and mask 3 4 5 at stride 16) and its segmentation head:
    conv26 (one channel per class of the label map) at stride 8, the Reduction pair and YoloSeg (object_scale 0.2)."""
    from tests.layers.test_yolo_loss import _conv

    data = f"""name: "MobileNet-YOLO-trimmed"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" top: "seg_label" include {{ phase: TRAIN }}
  transform_param {{ scale: 0.007843 mirror: true mean_value: 127.5 mean_value: 127.5 mean_value: 127.5
    resize_param {{ prob: 0.5 resize_mode: WARP height: 96 width: 96 interp_mode: LINEAR interp_mode: AREA interp_mode: LANCZOS4 }}
    resize_param {{ prob: 0.5 resize_mode: WARP height: 64 width: 64 interp_mode: LINEAR interp_mode: AREA interp_mode: LANCZOS4 }}
    emit_constraint {{ emit_type: CENTER }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 32.0 contrast_prob: 0.5 contrast_lower: 0.5 contrast_upper: 1.5
      hue_prob: 0.5 hue_delta: 18.0 saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5 random_order_prob: 0.0 }} }}
  data_param {{ source: "{folder / 'db'}" batch_size: 4 backend: LMDB }}
  annotated_data_param {{ yolo_data_type: 1 train_diffcult: true single_class: false seg_scales: 8
    batch_sampler {{ max_sample: 1 max_trials: 1 }}
    batch_sampler {{ sampler {{ min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 }}
      sample_constraint {{ min_jaccard_overlap: 0.5 }} max_sample: 1 max_trials: 50 }}
    label_map_file: "{folder / 'labelmap_seg.prototxt'}" }} }}
"""
    trunk = (_conv("conv0", "data", 16, s=2) + _conv("conv1/dw", "conv0", 16, dw=True) + _conv("conv1", "conv1/dw", 24, k=1)
             + _conv("conv2/dw", "conv1", 24, s=2, dw=True) + _conv("conv2", "conv2/dw", 32, k=1)
             + _conv("conv3/dw", "conv2", 32, s=2, dw=True) + _conv("conv3", "conv3/dw", 48, k=1)
             + _conv("conv4/dw", "conv3", 48, s=2, dw=True) + _conv("conv4", "conv4/dw", 64, k=1)
             + _conv("conv25/dw", "conv3", 48, dw=True) + _conv("conv25", "conv25/dw", 48, k=1))
    heads = """
layer { name: "conv23" type: "Convolution" bottom: "conv4" top: "conv23" param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 18 kernel_size: 1 pad: 0 stride: 1
  weight_filler { type: "msra" } bias_filler { value: 0 } } }
layer { name: "Yolov3Loss2" type: "Yolov3" bottom: "conv23" bottom: "label" top: "det_loss2" loss_weight: 1
  yolov3_param { side: 26 num_class: 1 num: 3 object_scale: 5.0 noobject_scale: 1.0 class_scale: 1.0 coord_scale: 1.0
    thresh: 0.7 anchors_scale: 16 biases: 4 biases: 7 biases: 6 biases: 13 biases: 8 biases: 21 biases: 18 biases: 16
    biases: 12 biases: 33 biases: 20 biases: 47 biases: 30 biases: 71 biases: 46 biases: 112 biases: 78 biases: 193
    mask: 3 mask: 4 mask: 5 } }
layer { name: "conv26" type: "Convolution" bottom: "conv25" top: "conv26" param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 2 kernel_size: 1 pad: 0 stride: 1
  weight_filler { type: "msra" } bias_filler { value: 0 } } }
layer { name: "reduction_h" type: "Reduction" bottom: "seg_label" top: "reduction_h" reduction_param { axis: 3 } }
layer { name: "reduction_w" type: "Reduction" bottom: "reduction_h" top: "reduction_w" reduction_param { axis: 2 } }
layer { name: "YoloSegLoss" type: "YoloSeg" bottom: "conv26" bottom: "seg_label" bottom: "reduction_w" top: "Seg_loss"
  loss_weight: 1 yolo_seg_param { object_scale: 0.2 } }
"""
    return data + trunk + heads


def test_trimmed_cityscapes_seg_train_net_learns_on_a_tiny_lmdb(tmp_path):
    from neocaffe.solver.solver import Solver

    _seg_dataset(tmp_path, n=16, size=96, seed=3, groups=1)
    (tmp_path / "train.prototxt").write_text(_city_net(tmp_path))
    solver = text_format.Parse(f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.002 lr_policy: "fixed" type: "Adam" '
                               'momentum: 0.9 momentum2: 0.999 weight_decay: 0.0005 max_iter: 50 display: 0 '
                               'snapshot_after_train: false random_seed: 5 solver_mode: CPU', caffe_pb2.SolverParameter())
    s = Solver(solver)
    seg, det, sizes = [], [], set()
    for _ in range(50):
        s.step(1)
        seg.append(float(s.net.blob_data["Seg_loss"]))
        det.append(float(s.net.blob_data["det_loss2"]))
        sizes.add((tuple(s.net.blob_data["data"].shape[2:]), tuple(s.net.blob_data["seg_label"].shape[1:])))
    seg, det = np.array(seg), np.array(det)
    assert np.isfinite(seg).all() and np.isfinite(det).all()
    assert sizes == {((96, 96), (2, 12, 12)), ((64, 64), (2, 8, 8))}   # the seg label follows the drawn size
    print(f"trimmed cityscapes: Seg_loss {seg[:10].mean():.3f} -> {seg[-10:].mean():.3f}, "
          f"det_loss2 {det[:10].mean():.3f} -> {det[-10:].mean():.3f}")
    assert seg[-10:].mean() < 0.7 * seg[:10].mean()
