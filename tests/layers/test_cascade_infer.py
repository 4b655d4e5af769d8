"""Cascade R-CNN's inference layers (zhaoweicai/cascade-rcnn @ 2252f461) against loop ports of the fork's code
(tests/layers/cascade_reference.py), its schema, and its real deploy nets (tests/layers/data/cascade_rcnn/)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.graph.net import Net
from neocaffe.io import upgrade_net
from neocaffe.io.prototxt import parse_text, read_prototxt
from neocaffe.layers.base import TRAIN, NetSoFar
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import cascade_reference as ref

DATA = Path(__file__).parent / "data" / "cascade_rcnn"
MIRROR = Path("/work/.mirror/zhaoweicai+cascade-rcnn/repo")
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def build(text: str, shapes, phase: int = 1, net: NetSoFar | None = None):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    kw = {"net": net} if net is not None else {}
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], phase, **kw)


def t32(a, device="cpu"):
    return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)


# -- schema -----------------------------------------------------------------------------------------
def test_schema_numbers_of_the_fork_fields():
    lp = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    moved = {"bbox_reg_param": 8150, "detection_data_param": 6151, "eval_data_param": 5152, "hard_mining_param": 3153,
             "scale_route_param": 3154, "decode_bbox_param": 4155, "detection_group_loss_param": 4156,
             "detection_group_accuracy_param": 3157, "box_group_output_param": 3158, "proposal_target_param": 3159,
             "frcnn_output_param": 3160}
    for name, number in moved.items():
        assert lp[name].number == number, name
    assert caffe_pb2.ROIPoolingParameter.DESCRIPTOR.fields_by_name["pad_ratio"].number == 3004
    bg = caffe_pb2.BoxGroupOutputParameter()
    assert (bg.fg_thr, bg.iou_thr, bg.nms_type, bg.field_whr, bg.field_xyr, bg.min_size) == (0, 0.5, "IOU", 2, 2, 15)
    assert caffe_pb2.BBoxRegParameter().cls_aware and caffe_pb2.DecodeBBoxParameter().gt_iou_thr == pytest.approx(0.95)


def test_copied_deploy_nets_parse():
    names = sorted(p.name for p in DATA.glob("*.prototxt"))
    assert len(names) == 3
    for name in names:
        net = read_prototxt(str(DATA / name), caffe_pb2.NetParameter)
        assert any(lp.type == "DecodeBBox" for lp in net.layer)


@pytest.mark.skipif(not (MIRROR / "HEAD").exists(), reason="needs the fork's mirror at /work/.mirror (not in CI)")
def test_every_prototxt_of_the_fork_parses():
    files = subprocess.run(["git", "-C", str(MIRROR), "ls-tree", "-r", "--name-only", "HEAD", "examples"],
                           capture_output=True, text=True, check=True).stdout.split()
    files = [f for f in files if f.endswith(".prototxt")]
    assert len(files) == 80
    out = subprocess.run(["git", "-C", str(MIRROR), "cat-file", "--batch"], input="".join(f"HEAD:{f}\n" for f in files).encode(),
                         capture_output=True, check=True).stdout
    at = 0
    for f in files:  # "<sha> blob <size>\n<content>\n" per file
        eol = out.index(b"\n", at)
        size = int(out[at:eol].split()[2])
        text = out[eol + 1: eol + 1 + size].decode()
        at = eol + 2 + size
        msg = caffe_pb2.SolverParameter() if os.path.basename(f).startswith("solver") else caffe_pb2.NetParameter()
        parse_text(text, msg, f)


# -- ROIAlign -------------------------------------------------------------------------------------
def _rois(rng_, n, r, w, h, spread=1.3):
    x1 = rng_.uniform(-0.2 * w, w * spread, r)
    y1 = rng_.uniform(-0.2 * h, h * spread, r)
    x2 = x1 + rng_.uniform(-3, 0.8 * w, r)
    y2 = y1 + rng_.uniform(-3, 0.8 * h, r)
    return np.stack([rng_.integers(0, n, r), x1, y1, x2, y2], 1).astype(np.float32)


@pytest.mark.parametrize("pooled,scale,pad", [((7, 7), 0.25, 0.0), ((3, 5), 0.0625, 0.1), ((1, 1), 0.5, 0.0)])
def test_roi_align_matches_the_fork_forward_and_backward(pooled, scale, pad):
    r = np.random.default_rng(7)
    x = r.standard_normal((2, 3, 9, 11)).astype(np.float32)
    rois = _rois(r, 2, 40, 11 / scale, 9 / scale)
    layer = build(f'name: "ra" type: "ROIAlign" bottom: "x" bottom: "r" top: "y" roi_pooling_param {{ pooled_h: '
                  f'{pooled[0]} pooled_w: {pooled[1]} spatial_scale: {scale} pad_ratio: {pad} }}', [x.shape, rois.shape])
    xt = t32(x).requires_grad_(True)
    y = layer(xt, t32(rois))
    want = ref.roi_align_forward(x, rois, pooled[0], pooled[1], scale, pad)
    assert y.shape == want.shape
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=0, atol=2e-6)
    g = r.standard_normal(want.shape).astype(np.float32)
    y.backward(t32(g))
    np.testing.assert_allclose(xt.grad.numpy(), ref.roi_align_backward(x.shape, rois, g, *pooled, scale, pad),
                               rtol=0, atol=1e-5)


def test_roi_align_gradcheck_float64():
    r = np.random.default_rng(8)
    x = torch.tensor(r.standard_normal((1, 2, 5, 6)), dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.3, 0.7, 9.1, 8.2], [0, -3, -2, 14, 12]], dtype=torch.float64)
    layer = build('name: "ra" type: "ROIAlign" bottom: "x" bottom: "r" top: "y" roi_pooling_param { pooled_h: 2 '
                  'pooled_w: 3 spatial_scale: 0.5 }', [x.shape, rois.shape]).double()
    assert torch.autograd.gradcheck(lambda a: layer(a, rois), (x,), eps=1e-6, atol=1e-7)


# -- ROIPooling: the fork's pad_ratio and argmax backward -------------------------------------------
def test_roi_pooling_with_pad_ratio_matches_the_fork():
    r = np.random.default_rng(9)
    x = r.permutation(2 * 2 * 10 * 12).reshape(2, 2, 10, 12).astype(np.float32) * 0.01
    rois = _rois(r, 2, 30, 24, 20)
    layer = build('name: "rp" type: "ROIPooling" bottom: "x" bottom: "r" top: "y" roi_pooling_param { pooled_h: 3 '
                  'pooled_w: 4 spatial_scale: 0.5 pad_ratio: 0.2 }', [x.shape, rois.shape])
    xt = t32(x).requires_grad_(True)
    y = layer(xt, t32(rois))
    want, arg = ref.roi_pool_forward(x, rois, 3, 4, 0.5, 0.2)
    np.testing.assert_array_equal(y.detach().numpy(), want)
    g = r.standard_normal(want.shape).astype(np.float32)
    y.backward(t32(g))
    np.testing.assert_allclose(xt.grad.numpy(), ref.roi_pool_backward(x.shape, rois, g, arg), rtol=0, atol=1e-6)


def test_roi_pooling_takes_the_fork_backward_from_the_net_lineage():
    net = text_format.Parse('layer { name: "a" type: "ROIAlign" } layer { name: "p" type: "ROIPooling" }',
                            caffe_pb2.NetParameter())
    text = ('name: "rp" type: "ROIPooling" bottom: "x" bottom: "r" top: "y" '
            'roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 1 }')
    shapes = [(1, 1, 6, 6), (1, 5)]
    assert build(text, shapes, net=NetSoFar(written=net)).cascade == 0.0
    assert build(text, shapes).cascade is None  # fast-rcnn's form, as before
    # a malformed RoI (x2 < x1): fast-rcnn's feasible-set backward drops diffs the fork's argmax backward keeps
    x = t32(np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6))
    rois = t32([[0, 4, 1, 1, 3]])
    grads = []
    for kw in ({"net": NetSoFar(written=net)}, {}):
        xt = x.clone().requires_grad_(True)
        build(text, shapes, **kw)(xt, rois).sum().backward()
        grads.append(xt.grad.numpy())
    _, arg = ref.roi_pool_forward(x.numpy(), rois.numpy(), 2, 2, 1.0)
    np.testing.assert_array_equal(grads[0], ref.roi_pool_backward((1, 1, 6, 6), rois.numpy(), np.ones((1, 1, 2, 2)), arg))
    assert grads[0].sum() == 4 and grads[1].sum() < 4


# -- ScaleRoute -------------------------------------------------------------------------------------
@pytest.mark.parametrize("low,high", [(None, 112), (112, 224), (224, 448), (448, None), (None, None), (900, 1000)])
def test_scale_route_matches_the_fork(low, high):
    r = np.random.default_rng(10)
    rois = _rois(r, 1, 60, 500, 400).astype(np.float32)
    feats = r.standard_normal((60, 3)).astype(np.float32)
    fields = "".join(f" {k}: {v}" for k, v in (("low_scale", low), ("high_scale", high)) if v is not None)
    layer = build(f'name: "sr" type: "ScaleRoute" bottom: "r" bottom: "f" top: "a" top: "b" '
                  f'scale_route_param {{{fields} }}', [rois.shape, feats.shape])
    a, b = layer(t32(rois), t32(feats))
    sel = ref.scale_route(rois, low, high)
    np.testing.assert_array_equal(a.numpy().reshape(-1, 5), rois[sel])
    np.testing.assert_array_equal(b.numpy().reshape(-1, 3), feats[sel])
    assert a.shape == (len(sel), 5, 1, 1) and b.shape == (len(sel), 3, 1, 1)
    if (low, high) == (900, 1000):
        assert len(sel) == 1  # none in range: the RoI closest to sqrt(900 * 1000) on a log scale


# -- DecodeBBox -------------------------------------------------------------------------------------
def test_decode_bbox_matches_the_fork_in_test_and_train():
    r = np.random.default_rng(11)
    rois = _rois(r, 2, 50, 300, 200)
    rois[:, 3:] = np.maximum(rois[:, 3:], rois[:, 1:3])
    deltas = (1.5 * r.standard_normal((50, 8))).astype(np.float32)
    mean, std = (0.01, -0.02, 0.0, 0.1), (0.1, 0.1, 0.2, 0.2)
    reg = "bbox_reg_param { " + " ".join(f"bbox_mean: {m}" for m in mean) + " " + " ".join(
        f"bbox_std: {s}" for s in std) + " }"
    layer = build(f'name: "d" type: "DecodeBBox" bottom: "d" bottom: "r" top: "p" {reg}', [deltas.shape, rois.shape])
    got = layer(t32(deltas), t32(rois)).numpy()
    want = ref.decode_bbox(deltas, rois, mean, std)
    assert got.shape == (50, 5, 1, 1)
    np.testing.assert_allclose(got.reshape(-1, 5), want, rtol=1e-6, atol=1e-4)
    gt = r.uniform(0.5, 1.0, (50, 6)).astype(np.float32)
    layer = build(f'name: "d" type: "DecodeBBox" bottom: "d" bottom: "r" bottom: "g" top: "p" {reg} '
                  'decode_bbox_param { gt_iou_thr: 0.9 }', [deltas.shape, rois.shape, gt.shape], phase=TRAIN)
    got = layer(t32(deltas), t32(rois), t32(gt)).numpy().reshape(-1, 5)
    want = ref.decode_bbox(deltas, rois, mean, std, train=True, gt=gt, gt_iou_thr=0.9)
    assert 0 < len(want) < 50
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


# -- BoxGroupOutput ---------------------------------------------------------------------------------
def _rpn(r, n, fw, h, w, c=2):
    logits = r.standard_normal((n * len(fw), c, h, w))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return prob.astype(np.float32), (0.5 * r.standard_normal((n * len(fw), 4, h, w))).astype(np.float32)


@pytest.mark.parametrize("extra", ["fg_thr: 0.3 iou_thr: 0.7 max_nms_num: 60 max_post_nms_num: 25",
                                   "fg_thr: 0.3 nms_type: \"IOMU\" iou_thr: 0.5", "fg_thr: 0.6 iou_thr: 0.7 min_size: 5"])
def test_box_group_output_matches_the_fork(extra):
    r = np.random.default_rng(12)
    groups = [([44, 22, 32], [22, 44, 32], 4), ([88, 44], [44, 88], 8)]
    pairs = [_rpn(r, 2, groups[0][0], 12, 16), _rpn(r, 2, groups[1][0], 6, 8)]
    text = ('name: "bg" type: "BoxGroupOutput" bottom: "p1" bottom: "d1" bottom: "p2" bottom: "d2" top: "rois" '
            'top: "sc" box_group_output_param { field_whr: 8 field_xyr: 1 ' + extra + " "
            + " ".join("box_group_param { " + " ".join(f"field_w: {v}" for v in fw) + " "
                       + " ".join(f"field_h: {v}" for v in fh) + f" stride: {s} }}" for fw, fh, s in groups)
            + " } bbox_reg_param { bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 "
              "bbox_std: 0.1 bbox_std: 0.2 bbox_std: 0.2 }")
    bottoms = [a for pr in pairs for a in pr]
    layer = build(text, [b.shape for b in bottoms])
    rois, sc = layer(*[t32(b) for b in bottoms])
    p = layer.param.box_group_output_param
    kw = dict(fg_thr=p.fg_thr, iou_thr=p.iou_thr, nms_type=p.nms_type, field_whr=8, field_xyr=1,
              max_nms_num=p.max_nms_num, max_post_nms_num=p.max_post_nms_num, min_size=p.min_size,
              mean=(0, 0, 0, 0), std=(0.1, 0.1, 0.2, 0.2))
    want_rois, want_sc = ref.box_group_output(pairs, [(np.float32(fw), np.float32(fh), s) for fw, fh, s in groups], **kw)
    assert rois.shape == (len(want_rois), 5, 1, 1) and len(want_rois) >= 5
    assert set(np.unique(want_rois[:, 0])) == {0, 1}
    np.testing.assert_allclose(rois.numpy().reshape(-1, 5), want_rois, rtol=0, atol=1e-4)
    np.testing.assert_allclose(sc.numpy().reshape(-1, 6), want_sc, rtol=0, atol=1e-4)


@pytest.mark.parametrize("mode", ["IOU", "IOFU", "IOMU"])
def test_greedy_nms_matches_apply_nms_for_every_block_size(mode):
    from neocaffe.layers.cascade_boxes_math import greedy_nms
    r = np.random.default_rng(18)
    x1, y1 = r.uniform(0, 100, 300), r.uniform(0, 100, 300)
    b = np.stack([x1, y1, x1 + r.uniform(-2, 40, 300), y1 + r.uniform(-2, 40, 300)], 1).astype(np.float32)
    want = [int(w[4]) for w in ref.apply_nms([(*v, i) for i, v in enumerate(b)], 0.4, mode)]
    assert 50 < len(want) < 300
    for block in (16, 100, 2048):
        assert greedy_nms(t32(b), 0.4, mode, block=block).tolist() == want


def test_box_group_output_stand_in_when_nothing_passes():
    r = np.random.default_rng(13)
    prob, deltas = _rpn(r, 1, [16], 3, 4)
    layer = build('name: "bg" type: "BoxGroupOutput" bottom: "p" bottom: "d" top: "rois" top: "sc" '
                  'box_group_output_param { fg_thr: 2 box_group_param { field_w: 16 field_h: 16 stride: 8 } }',
                  [prob.shape, deltas.shape])
    rois, sc = layer(t32(prob), t32(deltas))
    np.testing.assert_array_equal(rois.numpy().reshape(-1), [0, 1, 1, 10, 10])
    np.testing.assert_array_equal(sc.numpy().reshape(-1), np.zeros(6))


# -- FrcnnOutput ------------------------------------------------------------------------------------
def _frcnn_inputs(r, n, c, agnostic=False):
    logits = 2 * r.standard_normal((n, c))
    prob = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    x1, y1 = r.uniform(0, 150, n), r.uniform(0, 100, n)
    rois = np.stack([np.zeros(n), x1, y1, x1 + r.uniform(5, 60, n), y1 + r.uniform(5, 60, n)], 1).astype(np.float32)
    # near-duplicate boxes so NMS has work
    rois[n // 2:] = rois[: n - n // 2] + np.array([0, 1, 1, 2, 1], np.float32)
    deltas = (0.3 * r.standard_normal((n, 8 if agnostic else 4 * c))).astype(np.float32)
    return prob, deltas, rois, np.array([[120.0, 170.0]], np.float32)


@pytest.mark.parametrize("extra,agnostic", [("", False), ("max_det_num: 7", False), ("max_det_num: 30", True),
                                            ("iou_thr: 0.3 nms_type: \"IOFU\"", False)])
def test_frcnn_output_matches_the_fork(extra, agnostic):
    r = np.random.default_rng(14)
    prob, deltas, rois, size = _frcnn_inputs(r, 40, 4, agnostic)
    reg = ("bbox_reg_param { bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 "
           f"bbox_std: 0.2 bbox_std: 0.2 cls_aware: {'false' if agnostic else 'true'} }}")
    layer = build(f'name: "o" type: "FrcnnOutput" bottom: "p" bottom: "d" bottom: "r" bottom: "s" top: "det" '
                  f'frcnn_output_param {{ conf_thr: 0.1 {extra} }} {reg}',
                  [prob.shape, deltas.shape, rois.shape, size.shape])
    got = layer(t32(prob), t32(deltas), t32(rois), t32(size)).numpy()
    p = layer.param.frcnn_output_param
    want = ref.frcnn_output(prob, deltas, rois, (120.0, 170.0), conf_thr=p.conf_thr, iou_thr=p.iou_thr,
                            nms_type=p.nms_type, max_det_num=p.max_det_num, cls_aware=not agnostic,
                            mean=(0, 0, 0, 0), std=(0.1, 0.1, 0.2, 0.2))
    assert got.shape == (len(want), 7, 1, 1) and len(want) > 3
    np.testing.assert_allclose(got.reshape(-1, 7), want, rtol=0, atol=1e-4)


def test_frcnn_output_writes_voc_files(tmp_path):
    r = np.random.default_rng(15)
    prob, deltas, rois, size = _frcnn_inputs(r, 20, 3)
    (tmp_path / "labels.prototxt").write_text('item { name: "none_of_the_above" label: 0 } '
                                              'item { name: "cat" label: 1 } item { name: "dog" label: 2 }')
    (tmp_path / "sizes.txt").write_text("img_a 240 340\nimg_b 60 85\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    layer = build('name: "o" type: "FrcnnOutput" bottom: "p" bottom: "d" bottom: "r" bottom: "s" top: "det" '
                  'frcnn_output_param { conf_thr: 0.2 save_output_param { output_directory: "' + str(out) + '" '
                  'output_name_prefix: "comp4_" output_format: "VOC" label_map_file: "' + str(tmp_path / "labels.prototxt")
                  + '" name_size_file: "' + str(tmp_path / "sizes.txt") + '" } }',
                  [prob.shape, deltas.shape, rois.shape, size.shape])
    assert (out / "stale.txt").read_text() == "x"  # kept: the fork's remove_all would delete it
    dets = [layer(t32(prob), t32(deltas), t32(rois), t32(size)).numpy().reshape(-1, 7)[1:] for _ in range(2)]
    lines = {c: (out / f"comp4_{n}.txt").read_text().splitlines() for c, n in ((1, "cat"), (2, "dog"))}
    for c in (1, 2):
        want = []
        for name, (oh, ow) in (("img_a", (240, 340)), ("img_b", (60, 85))):
            for d in dets[0 if name == "img_a" else 1]:
                if d[5] != c:
                    continue
                hr, wr = np.float32(oh) / np.float32(120), np.float32(ow) / np.float32(170)
                x1, y1, x2, y2 = (np.float32(d[1]) * wr, np.float32(d[2]) * hr, np.float32(d[3]) * wr, np.float32(d[4]) * hr)
                st = [np.float32(np.floor(abs(v * np.float32(100)) + 0.5) * np.sign(v) / 100) for v in
                      (x1, y1, x2 - x1, y2 - y1)]
                b = [int(v) for v in st]
                want.append(f"{name} {float(np.float32(d[6])):g} {b[0]} {b[1]} {b[0] + b[2]} {b[1] + b[3]}")
        assert lines[c] == want and want


# -- the real deploy nets ---------------------------------------------------------------------------
def _deploy(name: str, max_post: int | None = None) -> Net:
    param = read_prototxt(str(DATA / name), caffe_pb2.NetParameter)
    param.input_dim[:] = [1, 3, 128, 160]
    if max_post is not None:  # fewer proposals per FPN level (the fork's own field)
        for lp in param.layer:
            if lp.type == "BoxGroupOutput":
                lp.box_group_output_param.max_post_nms_num = max_post
    param, _ = upgrade_net(param)
    rng.set_seed(0)
    return Net(param, 1)


STAGES = ("1st", "2nd", "3rd")


@pytest.mark.parametrize("name,max_post", [("voc_alex-9s-600-rpn-cascade_deploy.prototxt", None),
                                           ("voc_res50-9s-600-rfcn-cascade_deploy.prototxt", None),
                                           ("coco_res50-15s-800-fpn-cascade_deploy.prototxt", 40)])
def test_deploy_net_runs_forward_with_random_weights(name, max_post):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    net = _deploy(name, max_post)
    x = torch.from_numpy(np.random.default_rng(16).uniform(-120, 130, (1, 3, 128, 160)).astype(np.float32))
    with torch.no_grad():
        net.forward({"data": x})
    b = {k: v.detach().numpy() for k, v in net.blob_data.items()}
    classes = 81 if name.startswith("coco") else 21
    for s in STAGES:
        # the rows the fork's MATLAB scripts (examples/{voc,coco}/run_cascadercnn_*.m) read side by side
        props = b[("proposals_to_all" if "fpn" in name else "proposals") + ("" if s == "1st" else f"_{s}")]
        boxes, prob = b[f"output_bbox_{s}"], b[f"cls_prob_{s}"].reshape(-1, classes)
        assert boxes.shape == (prob.shape[0], 5, 1, 1) == props.shape
        assert np.isfinite(boxes).all() and np.isfinite(prob).all() and np.isfinite(props).all()
        np.testing.assert_allclose(prob.sum(1), 1, atol=1e-5)
    for s in ("2nd_avg", "3rd_avg"):
        assert np.isfinite(b[f"cls_prob_{s}"]).all()
    assert b["proposals"].shape[1:] == (5, 1, 1) and b["proposals"].shape[0] > 5
    if "fpn" not in name:
        # the RPN proposals and each stage's decoding, against the ports of the fork's layers
        rpn = ref.box_group_output([(b["rpn_prob_reshape"], b["rpn_bbox_reshape"])], [(
            np.float32([176, 88, 128, 352, 176, 256, 704, 352, 512]), np.float32([88, 176, 128, 176, 352, 256, 352, 704, 512]),
            16)], fg_thr=np.float32(0.05 if "alex" in name else 0.005), iou_thr=0.7, field_whr=8, field_xyr=1,
            max_nms_num=5000 if "alex" in name else 3000, max_post_nms_num=300)[0]
        np.testing.assert_allclose(b["proposals"].reshape(-1, 5), rpn, atol=1e-3)
        for s, stds, prev in (("2nd", (0.1, 0.1, 0.2, 0.2), "proposals"), ("3rd", (0.05, 0.05, 0.1, 0.1), "proposals_2nd")):
            pred = "bbox_pred" if s == "2nd" else "bbox_pred_2nd"
            want = ref.decode_bbox(b[pred].reshape(-1, 8), b[prev].reshape(-1, 5), (0, 0, 0, 0), stds)
            np.testing.assert_allclose(b[f"proposals_{s}"].reshape(-1, 5), want, rtol=1e-5, atol=1e-3)
        # the test nets' FrcnnOutput (test.prototxt: frcnn_out_2nd_avg) on this net's blobs
        size = np.array([[128.0, 160.0]], np.float32)
        bottoms = [b["cls_prob_2nd_avg"].reshape(-1, classes), b["bbox_pred_2nd"], b["proposals_2nd"], size]
        out = build('name: "frcnn_out_2nd_avg" type: "FrcnnOutput" bottom: "p" bottom: "d" bottom: "r" bottom: "s" '
                    'top: "o" frcnn_output_param { conf_thr: 0.01 iou_thr: 0.3 nms_type: "IOU" max_det_num: 100 } '
                    'bbox_reg_param { cls_aware: false bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 '
                    'bbox_std: 0.05 bbox_std: 0.05 bbox_std: 0.1 bbox_std: 0.1 }', [v.shape for v in bottoms])
        got = out(*(t32(v) for v in bottoms)).numpy().reshape(-1, 7)
        want = ref.frcnn_output(bottoms[0], bottoms[1].reshape(-1, 8), bottoms[2].reshape(-1, 5), (128.0, 160.0),
                                conf_thr=np.float32(0.01), iou_thr=np.float32(0.3), max_det_num=100, cls_aware=False,
                                std=(0.05, 0.05, 0.1, 0.1))
        assert len(want) > 1
        np.testing.assert_allclose(got, want, atol=1e-3)
    else:
        routed = [b[f"proposals_to_fpn{k}"].reshape(-1, 5) for k in (2, 3, 4, 5)]
        for k, (lo, hi) in zip((2, 3, 4, 5), ((None, 112), (112, 224), (224, 448), (448, None))):
            sel = ref.scale_route(b["proposals"].reshape(-1, 5), lo, hi)
            np.testing.assert_array_equal(routed[k - 2], b["proposals"].reshape(-1, 5)[sel])
        assert b["roi_grid_fpn2"].shape[1:] == (256, 8, 8) and b["roi_pool"].shape[1:] == (256, 7, 7)


# -- CUDA -------------------------------------------------------------------------------------------
@pytest.mark.gpu
@GPU
def test_cuda_matches_cpu():
    r = np.random.default_rng(17)
    x = r.standard_normal((2, 3, 9, 11)).astype(np.float32)
    rois = _rois(r, 2, 30, 44, 36)
    ra = build('name: "ra" type: "ROIAlign" bottom: "x" bottom: "r" top: "y" roi_pooling_param { pooled_h: 7 '
               'pooled_w: 7 spatial_scale: 0.25 pad_ratio: 0.05 }', [x.shape, rois.shape])
    g = r.standard_normal((30, 3, 8, 8)).astype(np.float32)
    outs = []
    for dev in ("cpu", "cuda"):
        xt = t32(x, dev).requires_grad_(True)
        y = ra(xt, t32(rois, dev))
        y.backward(t32(g, dev))
        outs.append((y.detach().cpu().numpy(), xt.grad.cpu().numpy()))
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5)
    np.testing.assert_allclose(outs[1][1], outs[0][1], atol=1e-4)
    groups = [([44, 22, 32], [22, 44, 32], 4)]
    prob, deltas = _rpn(r, 1, groups[0][0], 12, 16)
    bg = build('name: "bg" type: "BoxGroupOutput" bottom: "p" bottom: "d" top: "rois" box_group_output_param { '
               'fg_thr: 0.2 iou_thr: 0.7 min_size: 4 box_group_param { field_w: 44 field_w: 22 field_w: 32 '
               'field_h: 22 field_h: 44 field_h: 32 stride: 4 } }', [prob.shape, deltas.shape])
    a, c = (bg(t32(prob, d), t32(deltas, d))[0].cpu().numpy() for d in ("cpu", "cuda"))
    np.testing.assert_allclose(c, a, atol=1e-3)
    fprob, fdel, frois, fsize = _frcnn_inputs(r, 30, 4)
    fo = build('name: "o" type: "FrcnnOutput" bottom: "p" bottom: "d" bottom: "r" bottom: "s" top: "det" '
               'frcnn_output_param { conf_thr: 0.1 }', [fprob.shape, fdel.shape, frois.shape, fsize.shape])
    a, c = (fo(*(t32(v, d) for v in (fprob, fdel, frois, fsize))).cpu().numpy() for d in ("cpu", "cuda"))
    np.testing.assert_allclose(c, a, atol=1e-3)
