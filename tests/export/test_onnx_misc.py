"""TSN's BatchReduction/Gather/Scatter/SyncBN, Cascade R-CNN's ScaleRoute, D-X-Y's FrcnnProposal and DeepLab's
DomainTransform exported to ONNX (``neocaffe.export.onnx_misc``) equal neocaffe's forward under onnxruntime (and,
for DomainTransform, tests/layers/test_domain_transform.py's loop port of the fork)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.proto import caffe_pb2
from tests.export.helpers import TOLERANCE, cuda_forward

pytest.importorskip("onnxruntime")

f32 = np.float32
DATA = Path(__file__).parents[1] / "layers" / "data"


def _net(body: str, inputs: dict[str, tuple[int, ...]], phase: int = 1):
    from neocaffe.graph.net import Net

    text = "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                   f'{" ".join(f"dim: {d}" for d in s)} }} }} }}\n' for k, s in inputs.items())
    return Net(text_format.Parse(text + body, caffe_pb2.NetParameter()), phase)


def _errors(net, inputs, **kw) -> dict[str, float]:
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx

    errors = check_onnx(export_onnx(net, **kw), net, inputs)
    assert max(errors.values()) <= TOLERANCE, errors
    return errors


def _outputs(net, inputs, **kw):
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs

    return onnxruntime_outputs(export_onnx(net, **kw), inputs, list(net.outputs)), neocaffe_outputs(net, inputs)


# -- TSN --------------------------------------------------------------------------------------------
BR = 'layer {{ name: "br" type: "BatchReduction" bottom: "x" top: "y" batch_reduction_param {{ {} }} }}'


@pytest.mark.parametrize("body, shape, dynamic", [
    ("reduction_param { operation: MEAN axis: 1 }", (2, 5, 3), True),
    ("level: 1 level: 2 reduction_param { operation: SUM axis: 1 }", (2, 5, 2, 2), True),
    ("level: 1 level: 2 level: 3 reduction_param { operation: MEAN axis: 2 }", (2, 3, 14, 2), True),
    ("pos: true reduction_param { operation: MEAN axis: 1 }", (2, 3, 3, 2), True),
    ("pos: true reduction_param { operation: SUM axis: 1 }", (2, 4, 4), False),
    ("reduction_param { operation: TOPK k: 2 axis: 1 }", (2, 4, 3), True),
    ("reduction_param { operation: MEAN axis: 0 }", (6, 3), False),
])
def test_batch_reduction(body, shape, dynamic):
    net = _net(BR.format(body), {"x": shape})
    x = np.random.default_rng(len(body)).standard_normal(shape).astype(f32)
    _errors(net, {"x": x})
    if dynamic:
        _errors(net, {"x": np.concatenate([x, x[:1] * 2])}, dynamic_batch=True)


def test_batch_reduction_over_a_dynamic_batch_axis_is_refused():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _net(BR.format("reduction_param { operation: MEAN axis: 0 }"), {"x": (6, 3)})
    with pytest.raises(ExportError, match="'br' \\(BatchReduction\\).*axis 0"):
        export_onnx(net, dynamic_batch=True)


def test_gather_scatter_are_the_identity():
    net = _net('layer { name: "g" type: "Gather" bottom: "x" bottom: "z" top: "a" top: "b" }\n'
               'layer { name: "s" type: "Scatter" bottom: "a" top: "c" }\n'
               'layer { name: "r" type: "ReLU" bottom: "b" top: "d" }', {"x": (2, 3), "z": (4, 1, 2)})
    r = np.random.default_rng(3)
    got, ref = _outputs(net, {"x": r.standard_normal((2, 3)).astype(f32), "z": r.standard_normal((4, 1, 2)).astype(f32)})
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


SBN = ('layer { name: "sbn" type: "SyncBN" bottom: "x" top: "y" bn_param { slope_filler { type: "uniform" min: 0.5 '
       'max: 1.5 } bias_filler { type: "gaussian" std: 0.1 } eps: 1e-4 } }')


def test_sync_bn_test_phase_uses_the_stored_statistics():
    net = _net(SBN, {"x": (3, 4, 2, 5)})
    with torch.no_grad():
        net.layer("sbn").blobs[2].copy_(torch.tensor([[0.2, -0.3, 1.0, 0.0]]))
        net.layer("sbn").blobs[3].copy_(torch.tensor([[0.5, 2.0, 0.01, 3.0]]))
    x = (np.random.default_rng(5).standard_normal((3, 4, 2, 5)) * 2).astype(f32)
    errors = _errors(net, {"x": x}, dynamic_batch=True)
    assert errors["y"] <= TOLERANCE


def test_sync_bn_train_is_refused():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _net(SBN, {"x": (3, 4, 2, 5)}, phase=0)
    with pytest.raises(ExportError, match="'sbn' \\(SyncBN\\).*TRAIN"):
        export_onnx(net)


# -- ScaleRoute -------------------------------------------------------------------------------------
def _boxes(r, n: int) -> np.ndarray:
    x1, y1 = r.uniform(0, 300, n), r.uniform(0, 300, n)
    return np.stack([np.zeros(n), x1, y1, x1 + r.uniform(2, 400, n), y1 + r.uniform(2, 400, n)], 1).astype(f32)


@pytest.mark.parametrize("scales", ["low_scale: 112 high_scale: 224", "high_scale: 8", "low_scale: 1000",
                                    "low_scale: 100 high_scale: 101", ""])
def test_scale_route(scales):
    net = _net('layer { name: "sr" type: "ScaleRoute" bottom: "rois" bottom: "f" top: "r" top: "g" '
               f'scale_route_param {{ {scales} }} }}', {"rois": (12, 5), "f": (12, 3, 2)})
    r = np.random.default_rng(11)
    rois, feats = _boxes(r, 12), r.standard_normal((12, 3, 2)).astype(f32)
    rois[3, 3] = rois[3, 1] - 5  # an invalid box: size 0
    got, ref = _outputs(net, {"rois": rois, "f": feats})
    for k in ("r", "g"):
        assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
        np.testing.assert_array_equal(got[k], ref[k])
    from tests.layers import cascade_reference as fork

    p = net.layer("sr").param.scale_route_param
    sel = fork.scale_route(rois, p.low_scale if p.HasField("low_scale") else None,
                           p.high_scale if p.HasField("high_scale") else None)
    np.testing.assert_array_equal(got["r"].reshape(-1, 5), rois[sel])


CASCADE_FPN = DATA / "cascade_rcnn" / "coco_res50-15s-800-fpn-cascade_deploy.prototxt"


@pytest.mark.skipif(not CASCADE_FPN.exists(), reason=f"Cascade R-CNN's FPN deploy prototxt is not at {CASCADE_FPN}")
def test_cascade_rcnn_fpn_deploy_net_from_its_proposals_on():
    """The fork's FPN cascade deploy net from its RPN softmaxes to the end (BoxGroupOutput x 4, Concat, ScaleRoute x
    12, ROIAlign x 12, the three stages' heads and DecodeBBox, the averaged class probabilities), fed with the RPN's
    reshaped scores and deltas and the FPN maps; fully connected widths 1024 shrunk to 16, 4 feature channels,
    max_nms_num 40; a FrcnnOutput (as the fork's test nets) on the third stage."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    src = read_net(str(CASCADE_FPN))
    names = [lp.name for lp in src.layer]
    section = src.layer[names.index("rpn_fpn2_prob_reshape"):]
    param = caffe_pb2.NetParameter(name="fpn_heads")
    r = np.random.default_rng(21)
    feeds = {}
    sizes = {2: (128, 192), 3: (64, 96), 4: (32, 48), 5: (16, 24)}  # a 512 x 768 image: RoIs of every scale
    for lvl, (h, w) in sizes.items():
        a = len(src.layer[names.index(f"proposals_fpn{lvl}")].box_group_output_param.box_group_param[0].field_w)
        feeds[f"fpn{lvl}"] = np.maximum(r.standard_normal((1, 4, h, w)), 0).astype(f32)
        feeds[f"rpn_fpn{lvl}_cls_reshape"] = (r.standard_normal((a, 2, h, w)) * 2).astype(f32)
        feeds[f"rpn_fpn{lvl}_bbox_reshape"] = (r.standard_normal((a, 4, h, w)) * 0.5).astype(f32)
    feeds["image_size"] = np.array([[512, 768]], f32)
    for blob, v in feeds.items():
        param.layer.add(name=blob, type="Input", top=[blob]).input_param.shape.add(dim=list(v.shape))
    for lp in section:
        layer = param.layer.add()
        layer.CopyFrom(lp)
        if lp.HasField("inner_product_param") and lp.inner_product_param.num_output == 1024:
            layer.inner_product_param.num_output = 16
        if lp.type == "BoxGroupOutput":  # 40 RoIs per level into NMS (the fork's 1000), for a fast test
            layer.box_group_output_param.max_nms_num = 40
    # the fork's test nets end in FrcnnOutput (voc_alex-9s-600-rpn-cascade_test.prototxt's settings)
    param.layer.add().CopyFrom(text_format.Parse(
        'name: "frcnn_out" type: "FrcnnOutput" bottom: "cls_prob_3rd_avg" bottom: "bbox_pred_3rd" '
        'bottom: "proposals_to_all_3rd" bottom: "image_size" top: "frcnn_out" frcnn_output_param { conf_thr: 0.01 '
        'iou_thr: 0.3 nms_type: "IOU" max_det_num: 100 } bbox_reg_param { cls_aware: false bbox_mean: 0 bbox_mean: 0 '
        'bbox_mean: 0 bbox_mean: 0 bbox_std: 0.033 bbox_std: 0.033 bbox_std: 0.067 bbox_std: 0.067 }',
        caffe_pb2.LayerParameter()))
    net = Net(param)
    assert sum(lp.type == "ScaleRoute" for lp in param.layer) == 12
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, layer in zip(net.layer_names, net.layers):
            for b in layer.blobs:
                b.copy_(torch.randn(b.shape, generator=g) / max(b[0].numel(), 1) ** 0.5 * (0.1 if "bbox" in name else 1))
    errors = _errors(net, feeds)
    counts = [net.blob_data[f"proposals_to_fpn{k}"].shape[0] for k in (2, 3, 4, 5)]
    assert net.blob_data["proposals"].shape[0] > 20 and len(set(counts)) > 1, counts
    assert set(errors) >= {"output_bbox_3rd", "frcnn_out"} and net.blob_data["frcnn_out"].shape[0] > 50, errors


# -- FrcnnProposal ----------------------------------------------------------------------------------
def _frcnn_config(tmp_path, **kw) -> str:
    from neocaffe.layers.frcnn_common import write_frcnn_config
    from neocaffe.layers.proposal import generate_anchors

    anchors = tuple(float(v) for v in generate_anchors(16, (0.5, 1, 2), (1, 2, 3)).reshape(-1))
    values = dict(anchors=anchors, test_rpn_pre_nms_top_n=200, test_rpn_post_nms_top_n=20, test_rpn_min_size=4.0)
    values.update(kw)
    return write_frcnn_config(str(tmp_path / "config.json"), **values)


@pytest.mark.parametrize("kw, phase", [({}, 1), ({"test_rpn_pre_nms_top_n": 30, "test_rpn_nms_thresh": 0.5}, 1),
                                       ({"rpn_post_nms_top_n": 7, "rpn_min_size": 2.7}, 0),
                                       ({"test_rpn_post_nms_top_n": 0}, 1)])
def test_frcnn_proposal(tmp_path, kw, phase):
    h, w = 6, 8
    net = _net('layer { name: "prop" type: "FrcnnProposal" bottom: "s" bottom: "d" bottom: "im" top: "rois" '
               f'top: "sc" window_data_param {{ config: "{_frcnn_config(tmp_path, **kw)}" }} }}',
               {"s": (1, 18, h, w), "d": (1, 36, h, w), "im": (1, 3)}, phase=phase)
    r = np.random.default_rng(9)
    prob = r.uniform(0, 1, (1, 18, h, w)).astype(f32)
    prob[0, 9:12] = 0.5  # ties: the later box first
    inputs = {"s": prob, "d": (r.standard_normal((1, 36, h, w)) * 0.3).astype(f32),
              "im": np.array([[h * 16, w * 16 - 10, 1.5]], f32)}
    got, ref = _outputs(net, inputs)
    for k in ("rois", "sc"):
        assert got[k].shape == ref[k].shape, (k, got[k].shape, ref[k].shape)
        np.testing.assert_array_equal(got[k], ref[k])
    post = kw.get("rpn_post_nms_top_n", 2000) if phase == 0 else kw.get("test_rpn_post_nms_top_n", 20)
    assert (ref["rois"].shape[0] == 0) if post == 0 else (0 < ref["rois"].shape[0] <= post)


def test_frcnn_proposal_refusals(tmp_path):
    from neocaffe.export.onnx import export_onnx, layer_model
    from neocaffe.export.registry import ExportError, LayerNode

    net = _net('layer { name: "prop" type: "FrcnnProposal" bottom: "s" bottom: "d" bottom: "im" top: "rois" '
               f'window_data_param {{ config: "{_frcnn_config(tmp_path)}" }} }}',
               {"s": (1, 18, 3, 4), "d": (1, 36, 3, 4), "im": (1, 3)})
    with pytest.raises(ExportError, match="'prop' \\(FrcnnProposal\\).*one image"):
        export_onnx(net, dynamic_batch=True)
    lp = net.layer("prop").param
    node = LayerNode(param=lp, inputs=["s", "d", "im"], bottom_shapes=[(1, 18, 3, 4), (1, 36, 3, 4), (1, 3)],
                     top_shapes=[(1, 5, 1, 1)])
    with pytest.raises(ExportError, match="'prop' \\(FrcnnProposal\\).*built layer"):
        layer_model(node)


@pytest.mark.skipif(not (DATA / "dxy_frcnn" / "zf_test.prototxt").exists(), reason="D-X-Y's zf_test.prototxt is absent")
def test_frcnn_zf_test_net(tmp_path):
    """D-X-Y's ZF deploy net (``models/FRCNN/zf/test.prototxt``, tests/layers/data/dxy_frcnn/), fc6/fc7 shrunk to
    64, config given to the layer: conv net, FrcnnProposal, ROIPooling and the classifier on the dynamic RoIs."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_prototxt

    text = (DATA / "dxy_frcnn" / "zf_test.prototxt").read_text().replace("num_output: 4096", "num_output: 64")
    old = 'type: "FrcnnProposal"'
    text = text.replace(old, f'{old}\n  window_data_param {{ config: "{_frcnn_config(tmp_path)}" }}')
    (tmp_path / "test.prototxt").write_text(text)
    param = read_prototxt(str(tmp_path / "test.prototxt"), caffe_pb2.NetParameter)
    del param.input_shape[:]
    del param.input[:]
    for name, shape in (("data", (1, 3, 64, 96)), ("im_info", (1, 3))):
        layer = caffe_pb2.LayerParameter(name=name, type="Input", top=[name])
        layer.input_param.shape.add(dim=list(shape))
        param.layer.insert(0, layer)
    net = Net(param)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in net.layers:
            for b in layer.blobs:
                b.copy_(torch.randn(b.shape, generator=g) / max(b[0].numel(), 1) ** 0.5)
    r = np.random.default_rng(2)
    inputs = {"data": r.uniform(-100, 100, (1, 3, 64, 96)).astype(f32), "im_info": np.array([[64, 96, 1.0]], f32)}
    errors = _errors(net, inputs)
    assert 0 < net.blob_data["rois"].shape[0] <= 20 and set(errors) >= {"cls_prob", "bbox_pred"}, errors


# -- DomainTransform --------------------------------------------------------------------------------
DT = ('layer {{ name: "dt" type: "{t}" bottom: "x" bottom: "g" bottom: "dim" top: "y" domain_transform_param {{ '
      'num_iter: {it} spatial_sigma: 5 range_sigma: 0.5 min_weight: {mw} }} }}')


@pytest.mark.parametrize("t, it, mw, dynamic", [("DomainTransform", 2, 0.1, True),
                                                ("DomainTransformForwardOnly", 3, 0.0, False)])
def test_domain_transform(t, it, mw, dynamic):
    n, c, h, w = 3, 2, 5, 7
    net = _net(DT.format(t=t, it=it, mw=mw), {"x": (n, c, h, w), "g": (n, 1, h, w), "dim": (n, 1, 1, 2)})
    r = np.random.default_rng(23)
    inputs = {"x": r.standard_normal((n, c, h, w)).astype(f32), "g": r.uniform(0, 0.3, (n, 1, h, w)).astype(f32),
              "dim": np.array([5, 7, 3, 4, 0, 6], f32).reshape(n, 1, 1, 2) + f32(0.6)}  # truncated to int
    errors = _errors(net, inputs, dynamic_batch=dynamic)
    assert errors["y"] <= TOLERANCE
    from tests.layers.test_domain_transform import _fork  # the fork's loops

    got, _ = _outputs(net, inputs, dynamic_batch=dynamic)
    ref = _fork(inputs["x"], inputs["g"], inputs["dim"], it, 5.0, 0.5, mw, np.zeros_like(inputs["x"]))[0]
    assert np.abs(got["y"] - ref).max() / np.abs(ref).max() <= TOLERANCE


@pytest.mark.gpu
def test_misc_exports_match_the_cuda_forward(tmp_path):
    """The ONNX models (exported from the CPU nets) against neocaffe's forward on CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import onnxruntime_outputs, scaled_error

    r = np.random.default_rng(4)
    cases = [(_net(BR.format("level: 1 level: 2 reduction_param { operation: MEAN axis: 1 }"), {"x": (2, 5, 3)}),
              {"x": r.standard_normal((2, 5, 3)).astype(f32)}),
             (_net(DT.format(t="DomainTransform", it=2, mw=0.1), {"x": (2, 2, 4, 5), "g": (2, 1, 4, 5),
                                                                 "dim": (2, 1, 1, 2)}),
              {"x": r.standard_normal((2, 2, 4, 5)).astype(f32), "g": r.uniform(0, 0.3, (2, 1, 4, 5)).astype(f32),
               "dim": np.array([4, 5, 3, 2], f32).reshape(2, 1, 1, 2)})]
    for net, inputs in cases:
        got = onnxruntime_outputs(export_onnx(net), inputs, list(net.outputs))
        ran = cuda_forward(net, inputs)
        for o in net.outputs:
            assert scaled_error(got[o], ran[o]) <= TOLERANCE


# -- FrcnnOutput ------------------------------------------------------------------------------------
REG = ("bbox_reg_param {{ bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 "
       "bbox_std: 0.2 bbox_std: 0.2 cls_aware: {} }}")


@pytest.mark.parametrize("extra, agnostic", [("", False), ("max_det_num: 7", False), ("max_det_num: 30", True),
                                             ('iou_thr: 0.3 nms_type: "IOFU"', False), ('nms_type: "IOMU"', True),
                                             ("iou_thr: 0.01", False), ("conf_thr: 0.999 max_det_num: 5", False)])
def test_frcnn_output(extra, agnostic):
    from tests.layers import cascade_reference as ref
    from tests.layers.test_cascade_infer import _frcnn_inputs

    r = np.random.default_rng(14)
    prob, deltas, rois, size = _frcnn_inputs(r, 40, 4, agnostic)
    rois[5, 2], rois[5, 4] = rois[4, 4], rois[4, 4] + 20  # touches box 4 along one pixel row: the fork's overlap 0
    rois[5, 1], rois[5, 3] = rois[4, 1], rois[4, 3]
    prob[4:6, 1] = prob[4:6].sum(1) - 1e-3
    net = _net(f'layer {{ name: "o" type: "FrcnnOutput" bottom: "p" bottom: "d" bottom: "r" bottom: "s" top: "det" '
               f'frcnn_output_param {{ {"" if "conf_thr" in extra else "conf_thr: 0.1 "}{extra} }} '
               f'{REG.format("false" if agnostic else "true")} }}',
               {"p": prob.shape, "d": deltas.shape, "r": rois.shape, "s": size.shape})
    inputs = {"p": prob, "d": deltas, "r": rois, "s": size}
    got, out = _outputs(net, inputs)
    assert got["det"].shape == out["det"].shape
    np.testing.assert_array_equal(got["det"], out["det"])
    p = net.layer("o").param.frcnn_output_param
    want = ref.frcnn_output(prob, deltas, rois, (120.0, 170.0), conf_thr=p.conf_thr, iou_thr=p.iou_thr,
                            nms_type=p.nms_type, max_det_num=p.max_det_num, cls_aware=not agnostic,
                            mean=(0, 0, 0, 0), std=(0.1, 0.1, 0.2, 0.2))
    assert got["det"].shape == (len(want), 7, 1, 1) and (len(want) > 3 or "0.999" in extra)
    np.testing.assert_allclose(got["det"].reshape(-1, 7), want, rtol=0, atol=1e-4)


def test_frcnn_output_that_writes_files_is_refused(tmp_path):
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    (tmp_path / "labels.prototxt").write_text('item { name: "bg" label: 0 } item { name: "a" label: 1 }')
    (tmp_path / "sizes.txt").write_text("img 120 170\n")
    net = _net(f'layer {{ name: "o" type: "FrcnnOutput" bottom: "p" bottom: "d" bottom: "r" bottom: "s" top: "det" '
               f'frcnn_output_param {{ save_output_param {{ output_directory: "{tmp_path / "out"}" '
               f'label_map_file: "{tmp_path / "labels.prototxt"}" name_size_file: "{tmp_path / "sizes.txt"}" }} }} }}',
               {"p": (3, 2), "d": (3, 8), "r": (3, 5), "s": (1, 2)})
    with pytest.raises(ExportError, match="'o' \\(FrcnnOutput\\).*save_output_param"):
        export_onnx(net)
