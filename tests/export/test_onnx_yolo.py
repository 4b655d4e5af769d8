"""The YOLO ports' detection outputs, Cascade R-CNN's DecodeBBox and NormFace's InnerDistance exported to ONNX
(``neocaffe.export.onnx_yolo``) equal neocaffe's forward under onnxruntime, and the loop ports of the forks
(tests/layers/test_yolo.py's ``yolo_reference``/``yolov3_reference``, tests/layers/cascade_reference.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.proto import caffe_pb2
from tests.export.helpers import TOLERANCE, cuda_forward
from tests.layers.test_yolo import BIASES, PARAM, V3, V3_BIASES, V3_MASK, yolo_reference, yolov3_reference

pytest.importorskip("onnxruntime")

f32 = np.float32


def _net(body: str, inputs: dict[str, tuple[int, ...]], phase: int = 1):
    from neocaffe.graph.net import Net

    text = "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                   f'{" ".join(f"dim: {d}" for d in s)} }} }} }}\n' for k, s in inputs.items())
    return Net(text_format.Parse(text + body, caffe_pb2.NetParameter()), phase)


def _export_run(net, inputs, **kw):
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs

    got = onnxruntime_outputs(export_onnx(net, **kw), inputs, list(net.outputs))
    return got, neocaffe_outputs(net, inputs)


def _close(got, ref, tol=TOLERANCE):
    from neocaffe.export.verify import scaled_error

    err = scaled_error(got, ref)
    assert err <= tol, err
    return err


# -- YOLO ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sides, classes, conf", [((13,), 20, 0.05), ((7, 13), 4, 0.1), ((5,), 2, 0.3), ((5,), 2, 1.0)])
def test_yolo_detection_output(sides, classes, conf):
    r = np.random.default_rng(sum(sides) + classes)
    heads = {f"h{k}": (r.standard_normal((1, 3 * (5 + classes), s, s)) * 1.5).astype(f32) for k, s in enumerate(sides)}
    bottoms = " ".join(f'bottom: "{k}"' for k in heads)
    net = _net("layer { " + PARAM.format(bottoms=bottoms, classes=classes, conf=conf) + " }",
               {k: v.shape for k, v in heads.items()})
    got, out = _export_run(net, heads)
    assert got["det"].shape == out["det"].shape
    _close(got["det"], out["det"])
    ref = np.array(yolo_reference([h.astype(np.float64) for h in heads.values()], classes, 3, BIASES, conf, 0.4))
    ref = ref.reshape(-1, 7) if len(ref) else np.array([[0, -1, -1, -1, -1, -1, -1]], float)
    _close(got["det"][0, 0], ref)


def test_yolo_detection_output_thresholds_are_inclusive():
    """The fork keeps a score equal to confidence_threshold and drops a box whose IoU equals nms_threshold:
    two boxes of one cell, same centre (0.5, 0.5), widths 0.25 and 0.5, height 0.25 (IoU exactly 0.5), one
    class, objectness sigmoid(0) = 0.5 and sigmoid(20) = 1 (exact in float32 on both sides)."""
    t = np.zeros((1, 2, 6, 1, 1), f32)
    t[0, 1, 4] = 20.0
    h = t.reshape(1, 12, 1, 1)
    text = ('layer {{ name: "det" type: "YoloDetectionOutput" bottom: "h" top: "det" yolo_detection_output_param {{ '
            'num_classes: 1 num_box: 2 confidence_threshold: {conf} nms_threshold: {nms} biases: 0.25 biases: 0.25 '
            'biases: 0.5 biases: 0.25 }} }}')
    for conf, nms, rows in [(0.5, 0.9, 2), (0.50001, 0.9, 1), (0.5, 0.5, 1), (0.5, 0.50001, 2)]:
        got, out = _export_run(_net(text.format(conf=conf, nms=nms), {"h": h.shape}), {"h": h})
        assert got["det"].shape == out["det"].shape == (1, 1, rows, 7), (conf, nms, got["det"], out["det"])
        _close(got["det"], out["det"])


def _v3(classes, conf, shapes):
    text = V3.format(bottoms='bottom: "a" bottom: "b"', classes=classes, conf=conf,
                     biases=" ".join(f"biases: {b}" for b in V3_BIASES), mask=" ".join(f"mask: {m}" for m in V3_MASK))
    return _net("layer { " + text + " }", dict(zip("ab", shapes)))


@pytest.mark.parametrize("sizes, classes, conf", [(((7, 7), (14, 14)), 20, 0.25), (((5, 8), (10, 16)), 3, 0.2),
                                                  (((2, 2), (4, 4)), 2, 0.999)])
def test_yolov3_detection_output(sizes, classes, conf):
    r = np.random.default_rng(classes)
    heads = {k: (r.standard_normal((1, 3 * (5 + classes), h, w)) * 1.5).astype(f32) for k, (h, w) in zip("ab", sizes)}
    net = _v3(classes, conf, [h.shape for h in heads.values()])
    got, out = _export_run(net, heads)
    assert got["det"].shape == out["det"].shape
    _close(got["det"], out["det"])
    ref = np.array(yolov3_reference([h.astype(np.float64) for h in heads.values()], classes, 3, V3_BIASES, V3_MASK,
                                    [32, 16], conf, 0.45))
    ref = ref.reshape(-1, 7) if len(ref) else np.array([[0, -1, -1, -1, -1, -1, -1]], float)
    _close(got["det"][0, 0], ref)


def test_yolo_outputs_refuse_a_batch_and_a_zero_nms_threshold():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _v3(2, 0.1, [(2, 21, 2, 2), (2, 21, 4, 4)])
    with pytest.raises(ExportError, match=r"layer 'det' \(Yolov3DetectionOutput\).*batch of one image"):
        export_onnx(net)
    net = _net("layer { " + PARAM.format(bottoms='bottom: "h"', classes=2, conf=0.1).replace(
        "nms_threshold: 0.4", "nms_threshold: 0") + " }", {"h": (1, 21, 3, 3)})
    with pytest.raises(ExportError, match=r"layer 'det' \(YoloDetectionOutput\): nms_threshold 0.0 <= 0"):
        export_onnx(net)


# -- Cascade R-CNN's DecodeBBox --------------------------------------------------------------------
DECODE = ('layer { name: "dec" type: "DecodeBBox" bottom: "d" bottom: "r" top: "p" bbox_reg_param { '
          'bbox_mean: 0 bbox_mean: 0.1 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 bbox_std: 0.2 '
          'bbox_std: 0.2 } }')


def test_decode_bbox():
    from tests.layers import cascade_reference as ref

    r = np.random.default_rng(10)
    R = 6
    x1y1 = r.uniform(0, 100, (R, 2))
    rois = np.concatenate([r.integers(0, 2, (R, 1)), x1y1, x1y1 + r.uniform(1, 80, (R, 2))], 1).astype(f32)
    deltas = (0.8 * r.standard_normal((R, 8))).astype(f32)
    net = _net(DECODE, {"d": (R, 8), "r": (R, 5)})
    got, out = _export_run(net, {"d": deltas, "r": rois})
    _close(got["p"], out["p"])
    port = np.array([[rois[i, 0]] + list(ref.decode_with_prior(deltas[i, 4:8], rois[i, 1:5], [0, 0.1, 0, 0],
                                                                [0.1, 0.1, 0.2, 0.2])) for i in range(R)])
    _close(got["p"].reshape(R, 5), port)


def test_decode_bbox_train_phase_is_refused():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _net(DECODE, {"d": (3, 8), "r": (3, 5)}, phase=0)
    with pytest.raises(ExportError, match=r"layer 'dec' \(DecodeBBox\): in TRAIN"):
        export_onnx(net)


# -- NormFace's InnerDistance ----------------------------------------------------------------------
@pytest.mark.parametrize("fields, weight_bottom", [("distance_type: \"L2\"", False), ("distance_type: \"L1\"", False),
                                                   ("distance_type: \"L2\" normalize: true", False),
                                                   ("distance_type: \"L2\" axis: 2", False),
                                                   ("distance_type: \"L1\"", True)])
def test_inner_distance(fields, weight_bottom):
    r = np.random.default_rng(11)
    inputs = {"x": r.standard_normal((4, 3, 2, 3)).astype(f32)}
    if weight_bottom:
        inputs["w"] = r.standard_normal((5, 18)).astype(f32)
    bottoms = 'bottom: "x"' + (' bottom: "w"' if weight_bottom else "")
    net = _net(f'layer {{ name: "ip" type: "InnerDistance" {bottoms} top: "y" inner_distance_param {{ num_output: 5 '
               f'{fields} weight_filler {{ type: "gaussian" std: 0.5 }} }} }}', {k: v.shape for k, v in inputs.items()})
    got, out = _export_run(net, inputs)
    _close(got["y"], out["y"])
    axis = 2 if "axis: 2" in fields else 1
    x = inputs["x"].astype(np.float64).reshape(int(np.prod(inputs["x"].shape[:axis])), -1)
    w = (inputs["w"] if weight_bottom else net.layer("ip").blobs[0].detach().numpy()).astype(np.float64)
    w = w.reshape(-1, x.shape[1])
    d = x[:, None, :] - w[None]
    port = (np.abs(d) if "L1" in fields else d * d).sum(-1)
    _close(got["y"].reshape(port.shape), port)


@pytest.mark.gpu
def test_yolov3_export_matches_the_cuda_forward():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import onnxruntime_outputs

    r = np.random.default_rng(12)
    heads = {k: (r.standard_normal((1, 3 * 8, h, h)) * 1.5).astype(f32) for k, h in zip("ab", (5, 10))}
    net = _v3(3, 0.2, [h.shape for h in heads.values()])
    got = onnxruntime_outputs(export_onnx(net), heads, ["det"])["det"]
    want = cuda_forward(net, heads)["det"]
    assert got.shape == want.shape
    _close(got, want, 1e-5)


# -- Cascade R-CNN's BoxGroupOutput ----------------------------------------------------------------
GROUPS = ('box_group_param { field_w: 16 field_w: 32 field_h: 16 field_h: 24 stride: 8 } '
          'box_group_param { field_w: 48 field_h: 64 stride: 16 }')


def _box_group(fields: str, tops: int = 2):
    top = ' top: "rois"' + (' top: "sc"' if tops == 2 else "")
    return _net(f'layer {{ name: "bgo" type: "BoxGroupOutput" bottom: "p1" bottom: "d1" bottom: "p2" bottom: "d2"{top} '
                f'box_group_output_param {{ {fields} {GROUPS} }} bbox_reg_param {{ bbox_mean: 0 bbox_mean: 0 '
                f'bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 bbox_std: 0.2 bbox_std: 0.2 }} }}',
                {"p1": (2, 2, 6, 8), "d1": (2, 4, 6, 8), "p2": (1, 2, 3, 4), "d2": (1, 4, 3, 4)})


def _box_group_inputs(seed: int):
    r = np.random.default_rng(seed)
    out = {}
    for k, g, h, w in (("1", 2, 6, 8), ("2", 1, 3, 4)):
        p = r.uniform(0, 1, (g, 2, h, w)).astype(f32)
        p[:, 0] = np.round(p[:, 0] * 8) / 8  # equal scores: the stable order decides
        p[:, 1] = 1 - p[:, 0]
        out["p" + k], out["d" + k] = p, (2.0 * r.standard_normal((g, 4, h, w))).astype(f32)
    return out


@pytest.mark.parametrize("fields", ["fg_thr: 0.3 iou_thr: 0.5 min_size: 4 field_whr: 4 field_xyr: 2",
                                    "fg_thr: 0.1 iou_thr: 0.3 min_size: 8 field_whr: 3 field_xyr: 1 max_nms_num: 40 "
                                    "max_post_nms_num: 10",
                                    "fg_thr: 1.5"])
def test_box_group_output(fields):
    from tests.layers import cascade_reference as ref

    net = _box_group(fields)
    inputs = _box_group_inputs(13)
    got, out = _export_run(net, inputs)
    for k in ("rois", "sc"):
        assert got[k].shape == out[k].shape, (k, got[k].shape, out[k].shape)
        _close(got[k], out[k])
    p = net.layer("bgo").param.box_group_output_param
    groups = [(f32([16, 32]), f32([16, 24]), 8), (f32([48]), f32([64]), 16)]
    want_rois, want_sc = ref.box_group_output(
        [(inputs["p1"], inputs["d1"]), (inputs["p2"], inputs["d2"])], groups, fg_thr=p.fg_thr, iou_thr=p.iou_thr,
        field_whr=p.field_whr, field_xyr=p.field_xyr, max_nms_num=p.max_nms_num, max_post_nms_num=p.max_post_nms_num,
        min_size=p.min_size, mean=(0, 0, 0, 0), std=(0.1, 0.1, 0.2, 0.2))
    _close(got["rois"].reshape(-1, 5), want_rois)
    _close(got["sc"].reshape(-1, 6), want_sc)
    if "1.5" in fields:
        np.testing.assert_array_equal(got["rois"].reshape(-1), [0, 1, 1, 10, 10])
    else:
        assert len(want_rois) >= 5


def test_box_group_output_refuses_what_onnx_nms_cannot_do():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    with pytest.raises(ExportError, match=r"layer 'bgo' \(BoxGroupOutput\).*nms_type 'IOMU'"):
        export_onnx(_box_group('nms_type: "IOMU"', 1))
    with pytest.raises(ExportError, match=r"layer 'bgo' \(BoxGroupOutput\): iou_thr 0.05 < 1 / \(2 min_size - 1\)"):
        export_onnx(_box_group("iou_thr: 0.05 min_size: 4", 1))


def test_inner_distance_and_ctpn_layers_take_a_dynamic_batch():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx

    net = _net('layer { name: "t" type: "Transpose" bottom: "x" top: "t" transpose_param { dim: 0 dim: 2 dim: 1 '
               'dim: 3 } }\nlayer { name: "r" type: "Reverse" bottom: "t" top: "r" reverse_param { axis: 2 } }\n'
               'layer { name: "ip" type: "InnerDistance" bottom: "r" top: "y" inner_distance_param { num_output: 4 '
               'weight_filler { type: "gaussian" std: 0.5 } } }', {"x": (2, 3, 4, 5)})
    model = export_onnx(net, dynamic_batch=True)
    x = np.random.default_rng(14).standard_normal((3, 3, 4, 5)).astype(f32)
    errors = check_onnx(model, net, {"x": x})
    assert max(errors.values()) <= TOLERANCE, errors


CASCADE = Path(__file__).parents[1] / "layers" / "data" / "cascade_rcnn" / "voc_alex-9s-600-rpn-cascade_deploy.prototxt"


def _cascade_heads(h: int, w: int):
    """The fork's AlexNet cascade deploy net from its proposal layer on (BoxGroupOutput, three ROIPooling +
    DecodeBBox stages, as released), fed by Inputs in place of the backbone: conv5 (1, 16, h, w; 16 channels in
    place of AlexNet's 256, for smaller fc6 weights) and the RPN's reshaped probabilities and deltas (9, 2 | 4, h,
    w). Random weights, He-scaled (the box regressors smaller, as the fork's fillers: deltas of order 1)."""
    from neocaffe.graph.net import Net
    from neocaffe.io import upgrade_net
    from neocaffe.io.prototxt import read_prototxt

    full, _ = upgrade_net(read_prototxt(str(CASCADE), caffe_pb2.NetParameter))
    names = [lp.name for lp in full.layer]
    param = caffe_pb2.NetParameter(name="cascade_heads")
    for blob, shape in (("conv5", (1, 16, h, w)), ("rpn_prob_reshape", (9, 2, h, w)),
                        ("rpn_bbox_reshape", (9, 4, h, w))):
        dims = " ".join(f"dim: {d}" for d in shape)
        text = f'name: "{blob}" type: "Input" top: "{blob}" input_param {{ shape {{ {dims} }} }}'
        param.layer.add().CopyFrom(text_format.Parse(text, caffe_pb2.LayerParameter()))
    for lp in full.layer[names.index("proposals"):]:
        param.layer.add().CopyFrom(lp)
    net = Net(param, 1)
    r = np.random.default_rng(17)
    with torch.no_grad():
        for name, layer in zip(net.layer_names, net.layers):
            for b in layer.blobs:
                scale = np.sqrt(2.0 / np.prod(b.shape[1:])) if b.dim() > 1 else 0.1
                scale *= 0.05 if "bbox_pred" in name else 1.0
                b.copy_(torch.from_numpy(r.standard_normal(tuple(b.shape)) * scale))
    prob = r.uniform(0, 1, (9, 2, h, w)).astype(f32)
    prob[:, 1] = 1 - prob[:, 0]
    inputs = {"conv5": np.maximum(r.standard_normal((1, 16, h, w)), 0).astype(f32), "rpn_prob_reshape": prob,
              "rpn_bbox_reshape": r.standard_normal((9, 4, h, w)).astype(f32)}
    return net, inputs


@pytest.mark.skipif(not CASCADE.exists(), reason=f"Cascade R-CNN's deploy prototxt is not at {CASCADE}")
def test_cascade_rcnn_deploy_heads_end_to_end():
    """The RoI count BoxGroupOutput writes is dynamic: the export tracks the axes that follow it
    (``onnx_proposal.ROW_TYPES`` lists the type), so the next stage's ROIPooling runs on the real count."""
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx

    net, inputs = _cascade_heads(8, 10)
    errors = check_onnx(export_onnx(net), net, inputs)
    assert net.blob_data["proposals"].shape[0] > 20
    assert max(errors.values()) <= TOLERANCE, errors
