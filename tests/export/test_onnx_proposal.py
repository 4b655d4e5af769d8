"""Faster R-CNN's proposals exported to ONNX (neocaffe/export/onnx_proposal.py) equal neocaffe's Proposal
layer (py-faster-rcnn's semantics) under onnxruntime: random inputs, many tied scores, boxes dropped by
the min size (some, all), an IoU exactly at the threshold, py-faster-rcnn's Python layer through its
native stand-in, and a data-dependent RoI count through RoIPooling and a fully connected head."""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from tests.export.helpers import TOLERANCE

pytest.importorskip("onnxruntime")

f32 = np.float32

INPUTS = """
layer {{ name: "s" type: "Input" top: "s" input_param {{ shape {{ dim: 1 dim: {c2} dim: {h} dim: {w} }} }} }}
layer {{ name: "d" type: "Input" top: "d" input_param {{ shape {{ dim: 1 dim: {c4} dim: {h} dim: {w} }} }} }}
layer {{ name: "im" type: "Input" top: "im" input_param {{ shape {{ dim: 1 dim: 3 }} }} }}
"""
PROPOSAL = 'layer {{ name: "prop" type: "Proposal" bottom: "s" bottom: "d" bottom: "im" top: "rois" top: "sc" ' \
           'proposal_param {{ {param} }} }}'


def make_net(tmp_path, text: str, a: int, h: int, w: int):
    from neocaffe.export import load_deploy_net

    path = tmp_path / "net.prototxt"
    path.write_text(INPUTS.format(c2=2 * a, c4=4 * a, h=h, w=w) + text)
    return load_deploy_net(str(path))


def proposal_inputs(seed: int, a: int, h: int, w: int, stride: int, scale: float = 1.0, levels: int = 0,
                    spread: float = 0.3, shift: float = 0.0) -> dict[str, np.ndarray]:
    """RPN-like bottoms: foreground probabilities (``levels`` > 0: only that many distinct values, so
    many ties), box deltas ``shift + spread * N(0, 1)``, and ``im_info`` of a ``h*stride x w*stride`` image."""
    rng = np.random.default_rng(seed)
    fg = rng.integers(0, levels, (1, a, h, w)) / levels if levels else rng.uniform(0, 1, (1, a, h, w))
    deltas = shift + spread * rng.standard_normal((1, 4 * a, h, w))
    return {"s": np.concatenate([1 - fg, fg], axis=1).astype(f32), "d": deltas.astype(f32),
            "im": np.array([[h * stride, w * stride, scale]], f32)}


def export_and_compare(net, inputs_list, tmp_path) -> list[dict[str, np.ndarray]]:
    """Export ``net`` once; for each inputs dict, onnxruntime's outputs equal neocaffe's (shapes, i.e. the
    RoI count, exactly; values within the tolerance). Returns neocaffe's outputs."""
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs, scaled_error

    path = str(tmp_path / "net.onnx")
    export_onnx(net, path)
    refs = []
    for x in inputs_list:
        ref = neocaffe_outputs(net, x)
        got = onnxruntime_outputs(path, x, list(net.outputs))
        for name in ref:
            assert got[name].shape == ref[name].shape, (name, got[name].shape, ref[name].shape)
            assert scaled_error(got[name], ref[name]) <= TOLERANCE, name
        refs.append(ref)
    return refs


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_inputs_give_the_layers_rois_and_scores(seed, tmp_path):
    """Default anchors (9) on a 10 x 10 map, boxes clipped, some dropped, 200 of them to NMS, 40 kept."""
    param = "feat_stride: 16 pre_nms_topn: 200 post_nms_topn: 40 nms_thresh: 0.7 min_size: 16"
    net = make_net(tmp_path, PROPOSAL.format(param=param), 9, 10, 10)
    scale = [1.0, 0.6, 1.7, 1.0][seed]
    (ref,) = export_and_compare(net, [proposal_inputs(seed, 9, 10, 10, 16, scale)], tmp_path)
    assert ref["rois"].shape == (40, 5) and (ref["rois"][:, 0] == 0).all()


@pytest.mark.parametrize("seed", [4, 5])
def test_tied_scores_keep_the_layers_order(seed, tmp_path):
    """Four distinct scores over 144 anchors: the pre-NMS cut (37) falls inside a group of equal scores
    and the kept RoIs list equal scores in the layer's order (both of its stable sorts)."""
    param = "feat_stride: 16 ratio: 1 scale: 2 scale: 4 pre_nms_topn: 37 post_nms_topn: 25 nms_thresh: 0.8 min_size: 4"
    net = make_net(tmp_path, PROPOSAL.format(param=param), 2, 8, 9)
    (ref,) = export_and_compare(net, [proposal_inputs(seed, 2, 8, 9, 16, levels=4)], tmp_path)
    sc = ref["sc"][:, 0]
    assert len(sc) > 10 and len(np.unique(sc)) < len(sc)  # ties among the kept ones


def test_boxes_below_the_min_size_are_dropped(tmp_path):
    """Shrinking deltas (and the clip at the image's edges) make many boxes narrower than ``min_size *
    scale``: they are gone in both; with a min size no box reaches, no RoI at all."""
    from neocaffe.layers.proposal import bbox_transform_inv, clip_boxes

    param = "feat_stride: 16 pre_nms_topn: 300 post_nms_topn: 60 nms_thresh: 0.7 min_size: 12"
    net = make_net(tmp_path, PROPOSAL.format(param=param), 9, 6, 7)
    x = proposal_inputs(6, 9, 6, 7, 16, scale=1.25, spread=0.5, shift=-0.3)
    anchors = net.layer("prop").cfg.anchors
    shifts = np.stack(np.meshgrid(np.arange(7) * 16.0, np.arange(6) * 16.0), -1)[..., [0, 1, 0, 1]]
    all_anchors = torch.from_numpy((anchors[None] + shifts.reshape(-1, 1, 4)).reshape(-1, 4).astype(f32))
    boxes = clip_boxes(bbox_transform_inv(all_anchors, torch.from_numpy(x["d"][0].transpose(1, 2, 0).reshape(-1, 4))),
                       torch.tensor(96.0), torch.tensor(112.0))
    small = ((boxes[:, 2] - boxes[:, 0] + 1) < 15) | ((boxes[:, 3] - boxes[:, 1] + 1) < 15)
    assert 50 < int(small.sum()) < len(boxes) - 60  # the case drops many boxes and keeps enough
    export_and_compare(net, [x], tmp_path)

    net = make_net(tmp_path, PROPOSAL.format(param=param.replace("min_size: 12", "min_size: 5000")), 9, 6, 7)
    (ref,) = export_and_compare(net, [x], tmp_path)
    assert ref["rois"].shape == (0, 5) and ref["sc"].shape == (0, 1)


@pytest.mark.parametrize("thresh, suppressed", [("0.36", False), ("0.35", True)])
def test_iou_equal_to_the_threshold_does_not_suppress(thresh, suppressed, tmp_path):
    """16 x 16 anchors 8 pixels apart with zero deltas: ``bbox_transform_inv`` makes them 17 wide
    (``(0, 0, 16, 16)``: its centre is ``x1 + 0.5 * w``), so side neighbours overlap by IoU
    9 * 17 / (2 * 289 - 153) = 0.36 exactly with the +1 areas (the float32 of 0.36 either way).
    py-faster-rcnn suppresses only above the threshold, and so does onnxruntime's NonMaxSuppression
    on the (x2 + 1, y2 + 1) boxes."""
    param = f"feat_stride: 8 base_size: 16 ratio: 1 scale: 1 post_nms_topn: 100 nms_thresh: {thresh} min_size: 16"
    net = make_net(tmp_path, PROPOSAL.format(param=param), 1, 5, 5)
    x = proposal_inputs(7, 1, 5, 5, 8)
    x["d"][:] = 0
    x["im"][:] = [[56, 56, 1]]  # the last box ends at pixel 48: nothing clipped
    (ref,) = export_and_compare(net, [x], tmp_path)
    assert (len(ref["rois"]) < 25) == suppressed


def test_py_faster_rcnn_python_layer_exports_as_its_native_stand_in(tmp_path):
    """``rpn.proposal_layer.ProposalLayer`` (not importable here) runs as neocaffe's Proposal with
    py-faster-rcnn's TEST configuration (6000 / 300 / 0.7 / 16) and exports as it."""
    import onnx

    text = ('layer { name: "proposal" type: "Python" bottom: "s" bottom: "d" bottom: "im" top: "rois" '
            "python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' param_str: \"'feat_stride': 16\" } }")
    net = make_net(tmp_path, text, 9, 14, 14)
    refs = export_and_compare(net, [proposal_inputs(8, 9, 14, 14, 16), proposal_inputs(9, 9, 14, 14, 16, 0.5)],
                              tmp_path)
    assert [r["rois"].shape[1] for r in refs] == [5, 5] and refs[0]["rois"].shape != refs[1]["rois"].shape
    ops = {node.op_type for node in onnx.load(str(tmp_path / "net.onnx")).graph.node}
    assert {"NonMaxSuppression", "TopK", "Compress"} <= ops


def test_other_python_layers_are_refused_naming_the_layer_and_class():
    from neocaffe.export.onnx import layer_model
    from neocaffe.export.registry import ExportError, LayerNode

    param = NS(name="mine", type="Python", python_param=NS(module="my_layers", layer="Custom", param_str=""))
    node = LayerNode(param=param, inputs=["x0"], bottom_shapes=[(1, 3)], top_shapes=[(1, 3)])
    with pytest.raises(ExportError, match=r"layer 'mine' \(Python\): runs the user's Python class my_layers\.Custom.*"
                                          r"rpn\.proposal_layer\.ProposalLayer"):
        layer_model(node)
    node = LayerNode(param=param, inputs=[], bottom_shapes=[], top_shapes=[(1, 3)])
    with pytest.raises(ExportError, match=r"reads its data from the user's Python class my_layers\.Custom"):
        layer_model(node)


HEAD = """
layer { name: "feat" type: "Input" top: "feat" input_param { shape { dim: 1 dim: 4 dim: 6 dim: 7 } } }
layer { name: "pool" type: "ROIPooling" bottom: "feat" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_w: 2 pooled_h: 3 spatial_scale: 0.0625 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "cls" type: "InnerProduct" bottom: "fc" top: "cls"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "cls" top: "prob" }
"""


def test_the_roi_count_stays_dynamic_through_roi_pooling_and_the_head(tmp_path):
    """One exported file runs two inputs that keep different numbers of RoIs; RoIPooling, InnerProduct
    and Softmax follow, and the graph's outputs declare the RoI axis dynamic."""
    import onnx

    param = "feat_stride: 16 pre_nms_topn: 300 post_nms_topn: 60 nms_thresh: 0.7 min_size: 16"
    net = make_net(tmp_path, PROPOSAL.format(param=param) + HEAD, 9, 6, 7)
    feat = np.random.default_rng(10).standard_normal((1, 4, 6, 7)).astype(f32)
    xs = [dict(proposal_inputs(11, 9, 6, 7, 16), feat=feat), dict(proposal_inputs(12, 9, 6, 7, 16, 2.5), feat=feat)]
    refs = export_and_compare(net, xs, tmp_path)
    counts = [r["prob"].shape[0] for r in refs]
    assert 0 < counts[1] < counts[0], counts
    outputs = {o.name: o.type.tensor_type.shape.dim for o in onnx.load(str(tmp_path / "net.onnx")).graph.output}
    assert not outputs["prob"][0].HasField("dim_value") and outputs["prob"][1].dim_value == 3
