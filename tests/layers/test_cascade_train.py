"""Cascade R-CNN's training layers (ProposalTarget, HardMining, BboxAccuracy, DetectionGroupLoss,
DetectionGroupAccuracy) and its forms of SmoothL1Loss and DetectionEvaluate, against the loop ports of
tests/layers/cascade_train_reference.py (zhaoweicai/cascade-rcnn @ 2252f46)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import cascade_train_reference as ref

REG = ('bbox_reg_param { bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_mean: 0 bbox_std: 0.1 bbox_std: 0.1 '
       'bbox_std: 0.2 bbox_std: 0.2 cls_aware: %s }')


def _layer(text: str, shapes, phase=0):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, phase), p


def _boxes(r, n, img, size=100.0):
    xy = r.uniform(0, size * 0.7, (n, 2))
    wh = r.uniform(8, size * 0.4, (n, 2))
    return np.concatenate([img[:, None], xy, np.minimum(xy + wh, size - 1)], 1)


def _pt_inputs(r, n_rois=60, n_gt=6):
    img_g = r.integers(0, 2, n_gt).astype(float)
    gt = _boxes(r, n_gt, img_g)
    gt = np.concatenate([gt, r.integers(1, 5, (n_gt, 1)), (r.random((n_gt, 1)) < 0.2), np.zeros((n_gt, 1))], 1)
    rois = _boxes(r, n_rois, r.integers(0, 2, n_rois).astype(float))
    near = gt[r.integers(0, n_gt, n_rois // 2), :5] + np.concatenate([np.zeros((n_rois // 2, 1)),
                                                                      r.normal(0, 3, (n_rois // 2, 4))], 1)
    rois[: n_rois // 2] = near
    pad = np.full((1, 8), -1.0)
    return rois, np.concatenate([gt, pad])


PT_CASES = [
    ("batch_size: -1 fg_thr: 0.5 bg_thr_hg: 0.5 bg_thr_lw: 0", "false", 6),
    ("batch_size: 16 fg_fraction: 0.25 fg_thr: 0.6 bg_thr_hg: 0.6 bg_thr_lw: 0.1", "false", 6),
    ("batch_size: 64 fg_fraction: 0.5 bg_thr_lw: 0.2 pickup_discard: true bbox_thr_lw: 0.6 bbox_thr_hg: 0.9 "
     "iou_weighted: true", "true", 7),
    ("batch_size: 8 append_gtbox: false pickup_discard: false", "true", 7),
]


@pytest.mark.parametrize("fields,aware,n_tops", PT_CASES)
def test_proposal_target_matches_port(fields, aware, n_tops):
    r = np.random.default_rng(1)
    rois, gt = _pt_inputs(r)
    tops = ''.join(f'top: "t{i}" ' for i in range(n_tops))
    text = (f'name: "pt" type: "ProposalTarget" bottom: "r" bottom: "g" {tops} proposal_target_param {{ cls_num: 5 '
            f'num_img_per_batch: 2 img_width: 100 img_height: 100 {fields} }} ' + REG % aware)
    layer, p = _layer(text, [rois.shape, gt.shape])
    pp = p.proposal_target_param
    rng.set_seed(5)
    got = [t.numpy()[:, :, 0, 0] for t in layer(torch.tensor(rois, dtype=torch.float32), torch.tensor(gt, dtype=torch.float32))]
    n_valid = int((gt[:, 0] != -1).sum())
    rng.set_seed(5)
    keys = torch.rand(len(rois) + (n_valid if pp.append_gtbox else 0), generator=rng.generator("cpu"),
                      dtype=torch.float64).numpy()
    fields_d = {f: getattr(pp, f) for f in ("batch_size", "fg_fraction", "fg_thr", "bg_thr_hg", "bg_thr_lw", "bbox_thr_lw",
                                            "bbox_thr_hg", "pickup_discard", "append_gtbox", "iou_weighted", "cls_num")}
    want = ref.proposal_target(rois.astype(np.float32), gt.astype(np.float32), fields_d, [0] * 4, [0.1, 0.1, 0.2, 0.2],
                               aware == "true", keys, n_tops)
    names = ["rois", "labels", "targets", "inside", "outside", "match", "weights"][:n_tops]
    for g, name in zip(got, names):
        assert g.shape == want[name].shape, name
        np.testing.assert_allclose(g, want[name], rtol=0, atol=2e-6, err_msg=name)
    assert (got[1] > 0).sum() > 0 and (got[1] == 0).sum() > 0


def test_proposal_target_backup_box_and_repeat():
    """Nothing sampled: one random background box of at least 32 x 32 (the fork's backup), the same under a seed."""
    rois = np.array([[0, 10, 10, 40, 40]], float)
    gt = np.array([[0, 10, 10, 40, 40, 1, 1, 0]], float)          # the only box is ignored: no fg, no bg
    text = ('name: "pt" type: "ProposalTarget" bottom: "r" bottom: "g" top: "a" top: "b" top: "c" top: "d" top: "e" '
            'top: "f" proposal_target_param { cls_num: 2 batch_size: 4 num_img_per_batch: 1 img_width: 100 '
            'img_height: 90 fg_thr: 0.5 bg_thr_hg: 0.5 bg_thr_lw: 0.99 pickup_discard: false }')
    layer, _ = _layer(text, [rois.shape, gt.shape])
    outs = []
    for _ in range(2):
        rng.set_seed(3)
        outs.append([t.numpy() for t in layer(torch.tensor(rois), torch.tensor(gt))])
    box = outs[0][0][0, :, 0, 0]
    assert outs[0][0].shape == (1, 5, 1, 1) and outs[0][1][0, 0, 0, 0] == 0
    assert box[3] - box[1] + 1 >= 32 and box[4] - box[2] + 1 >= 32
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_hard_mining_matches_port():
    r = np.random.default_rng(2)
    n = 40
    score = np.round(r.random(n), 1)                              # ties, broken by the later index
    rois = np.concatenate([r.choice([0, 1, 1, 2], n)[:, None], r.uniform(0, 50, (n, 4))], 1)
    extra = r.standard_normal((n, 3, 1, 1))
    for per, num in ((5, 3), (20, 3), (2, 4), (100, 3)):
        layer, _ = _layer(f'name: "hm" type: "HardMining" bottom: "s" bottom: "r" bottom: "x" top: "rr" top: "xx" '
                          f'hard_mining_param {{ num_roi_per_image: {per} num_image: {num} }}',
                          [(n, 1, 1, 1), rois.shape, extra.shape])
        got = layer(torch.tensor(score).view(n, 1, 1, 1), torch.tensor(rois), torch.tensor(extra))
        keep = ref.hard_mining(score, rois, per, num)
        assert [tuple(t.shape) for t in got] == layer.reshape([(n, 1, 1, 1), rois.shape, extra.shape])
        np.testing.assert_array_equal(got[0].numpy(), rois[keep])
        np.testing.assert_array_equal(got[1].numpy(), extra[keep])


@pytest.mark.parametrize("aware", ["false", "true"])
def test_bbox_accuracy_matches_port(aware):
    r = np.random.default_rng(4)
    n, k = 30, (2 if aware == "false" else 5)
    rois = _boxes(r, n, np.zeros(n))
    lab = r.integers(0, 5, n).astype(float)
    gtb = rois[:, 1:5] + r.normal(0, 4, (n, 4))
    ov = np.where(r.random(n) < 0.15, 0.99, r.uniform(0.5, 0.95, n))
    gt = np.concatenate([lab[:, None], gtb, ov[:, None]], 1)
    gt[lab == 0] = 0
    pred = 0.5 * r.standard_normal((n, 4 * k))
    layer, _ = _layer('name: "b" type: "BboxAccuracy" bottom: "p" bottom: "r" bottom: "g" top: "a" top: "b" '
                      + REG % aware, [pred.shape, rois.shape, gt.shape])
    got = [float(t) for t in layer(*(torch.tensor(x, dtype=torch.float32) for x in (pred, rois, gt)))]
    want = ref.bbox_accuracy(pred.astype(np.float32), rois.astype(np.float32), gt.astype(np.float32), aware == "true",
                             [0] * 4, [0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose(got, want, atol=2e-6)


# -- DetectionGroupLoss / Accuracy ----------------------------------------------------------------------
FIELDS = dict(field_w=[16.0, 32.0, 24.0], field_h=[16.0, 24.0, 40.0], stride=8.0)


def _group_blobs(r, num=2, g=3, c=3, h=4, w=5):
    label = r.choice([0, 0, 0, 0, 1, 2], (num * g, 1, h, w)).astype(float)
    ctr = np.concatenate([r.uniform(0, 40, (num * g, 1, h, w)), r.uniform(0, 32, (num * g, 1, h, w))], 1)
    wh = r.uniform(1, 60, (num * g, 2, h, w))
    ov = np.where(label > 0, r.uniform(0.5, 1, label.shape), np.round(r.uniform(0, 0.7, label.shape), 1))
    gt = np.concatenate([label, ctr, wh, ov], 1)
    return r.standard_normal((num * g, c, h, w)), 0.5 * r.standard_normal((num * g, 4, h, w)), gt


DGL_CASES = [
    ("batch_size: -1 bg_multiple: 2 min_num_neg: 3", {}),
    ("batch_size: 12 bg_multiple: 3 neg_mining_type: \"bootstrap\" neg_ranking_type: \"conf_loss\" objectness: true", {}),
    ("batch_size: 10 bg_multiple: 1 neg_mining_type: \"mixture\" neg_ranking_type: \"conf_prob\" pos_neg_weighted: true "
     "field_xyr: 1 field_whr: 8 lambda: 2", {"reg": True}),
    ("batch_size: -1 bg_multiple: 1 neg_mining_type: \"bootstrap\" bbox_loss_type: \"Euclidean_L2\"",
     {"ignore": 2, "reg": True}),
]


def _dgl_text(fields: str, extra: dict) -> str:
    fw = "".join(f"field_w: {v:g} " for v in FIELDS["field_w"]) + "".join(f"field_h: {v:g} " for v in FIELDS["field_h"])
    objectness = "objectness: true" in fields
    text = (f'name: "l" type: "DetectionGroupLoss" bottom: "c" bottom: "b" bottom: "g" top: "loss" '
            f'detection_group_loss_param {{ cls_num: {2 if objectness else 3} stride: 8 {fw} {fields} }}')
    if extra.get("reg"):
        text += REG % "true"
    if "ignore" in extra:
        text += f' loss_param {{ ignore_label: {extra["ignore"]} }}'
    return text


def _dgl_port_params(layer, p):
    gp = p.detection_group_loss_param
    d = {f: getattr(gp, f) for f in ("cls_num", "bg_threshold", "bg_multiple", "neg_mining_type", "neg_ranking_type",
                                     "min_num_neg", "objectness", "batch_size", "pos_neg_weighted", "bbox_loss_type")}
    d.update(FIELDS, **{"lambda": getattr(gp, "lambda"), "bounds": layer.bounds})
    return d


@pytest.mark.parametrize("fields,extra", DGL_CASES)
def test_detection_group_loss_matches_port(fields, extra, device="cpu"):
    r = np.random.default_rng(6)
    conf, bbox, gt = _group_blobs(r)
    text = _dgl_text(fields, extra)
    if "objectness: true" in fields:
        conf = conf[:, :2]
    layer, p = _layer(text, [conf.shape, bbox.shape, gt.shape])
    ct = torch.tensor(conf, dtype=torch.float32, device=device, requires_grad=True)
    bt = torch.tensor(bbox, dtype=torch.float32, device=device, requires_grad=True)
    rng.set_seed(9)
    top = layer(ct, bt, torch.tensor(gt, dtype=torch.float32, device=device))
    top.backward(torch.tensor([[[[1.0, 7.0]]]], device=device))      # the fork reads top diff [0] only
    rng.set_seed(9)
    keys = torch.rand((2, 3 * 20), generator=rng.generator(device), device=device, dtype=torch.float64).cpu().numpy()
    mean, std = ([0] * 4, [0.1, 0.1, 0.2, 0.2]) if extra.get("reg") else ([0] * 4, [1] * 4)
    want, cdiff, bdiff, _ = ref.group_loss(conf.astype(np.float32).astype(np.float64), bbox.astype(np.float32),
                                           gt.astype(np.float32), _dgl_port_params(layer, p), mean, std, keys,
                                           extra.get("ignore"))
    np.testing.assert_allclose(top.detach().cpu().numpy().ravel(), want, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(ct.grad.cpu().numpy(), cdiff, atol=2e-7)
    np.testing.assert_allclose(bt.grad.cpu().numpy(), bdiff, atol=2e-7)


def test_detection_group_loss_gradcheck():
    """Without sampling (every candidate kept) and without bounds, the fork's backward is the gradient of top[0]."""
    r = np.random.default_rng(8)
    conf, bbox, gt = _group_blobs(r, num=1, h=3, w=3)
    layer, _ = _layer(_dgl_text("batch_size: -1 bg_multiple: 100 min_num_neg: 0", {}), [conf.shape, bbox.shape, gt.shape])
    bbox = np.where(np.abs(bbox) < 0.1, bbox + 0.2, bbox)
    g = torch.tensor(gt)

    def f(c, b):
        return layer(c, b, g).reshape(-1)[0]

    assert torch.autograd.gradcheck(f, (torch.tensor(conf, requires_grad=True), torch.tensor(bbox, requires_grad=True)),
                                    atol=1e-6)


@pytest.mark.parametrize("fields", ["field_whr: 8 field_xyr: 1", "objectness: true bg_threshold: 0.3",
                                    "field_whr: 4 field_xyr: 0.5 bg_threshold: 0.6"])
def test_detection_group_accuracy_matches_port(fields):
    r = np.random.default_rng(10)
    conf, bbox, gt = _group_blobs(r)
    objectness = "objectness" in fields
    conf = conf[:, :2] if objectness else conf
    fw = "".join(f"field_w: {v:g} " for v in FIELDS["field_w"]) + "".join(f"field_h: {v:g} " for v in FIELDS["field_h"])
    text = (f'name: "a" type: "DetectionGroupAccuracy" bottom: "c" bottom: "b" bottom: "g" top: "acc" top: "iou" '
            f'detection_group_accuracy_param {{ cls_num: {conf.shape[1]} stride: 8 {fw} {fields} }} ' + REG % "true")
    layer, p = _layer(text, [conf.shape, bbox.shape, gt.shape])
    acc, iou = layer(*(torch.tensor(x, dtype=torch.float32) for x in (conf, bbox, gt)))
    gp = p.detection_group_accuracy_param
    d = dict(FIELDS, cls_num=gp.cls_num, objectness=gp.objectness, bg_threshold=gp.bg_threshold, field_whr=gp.field_whr,
             field_xyr=gp.field_xyr)
    want = ref.group_accuracy(conf.astype(np.float32), bbox.astype(np.float32), gt.astype(np.float32), d, [0] * 4,
                              [0.1, 0.1, 0.2, 0.2])
    np.testing.assert_allclose([*acc.ravel().tolist(), float(iou)], want, atol=3e-6)


# -- SmoothL1Loss / DetectionEvaluate (the fork's forms) ------------------------------------------------------
def test_smooth_l1_per_instance_top():
    r = np.random.default_rng(12)
    a, b = r.standard_normal((5, 8, 2, 3)), r.standard_normal((5, 8, 2, 3))
    wi, wo = r.uniform(0, 2, a.shape), r.uniform(0, 2, a.shape)
    base = 'name: "s" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "wi" bottom: "wo" top: "loss" '
    two, _ = _layer(base + 'top: "per" smooth_l1_loss_param { sigma: 3 }', [a.shape] * 4)
    one, _ = _layer(base + 'smooth_l1_loss_param { sigma: 3 }', [a.shape] * 4)
    assert two.reshape([a.shape] * 4) == [(), (5, 1, 2, 3)]
    at = torch.tensor(a, requires_grad=True)
    loss, per = two(at, torch.tensor(b), torch.tensor(wi), torch.tensor(wo))
    want_loss, want_per = ref.smooth_l1_per_instance(a, b, wi, wo, 3)
    np.testing.assert_allclose(float(loss.detach()), want_loss, rtol=1e-12)
    np.testing.assert_allclose(per.numpy(), want_per, rtol=1e-12)
    assert not per.requires_grad
    loss.backward()
    a1 = torch.tensor(a, requires_grad=True)
    one(a1, torch.tensor(b), torch.tensor(wi), torch.tensor(wo)).backward()
    assert torch.equal(at.grad, a1.grad)


def test_detection_evaluate_cascade_form(tmp_path):
    sizes_file = tmp_path / "name_size.txt"
    sizes_file.write_text("im0 120 160\nim1 64 64\nim2 50 100\n")
    r = np.random.default_rng(14)
    gt = np.concatenate([np.array([[0], [0], [0], [1], [1]]), r.uniform(0, 20, (5, 2)), r.uniform(30, 60, (5, 2)),
                         np.array([[1, 0, 0], [1, 0, 1], [2, 0, 0], [1, 0, 0], [3, 0, 0]])], 1)
    det_boxes = np.concatenate([gt[[0, 0, 1, 2, 3, 3], 1:5] + r.normal(0, 3, (6, 4)), r.uniform(0, 60, (3, 4))])
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    d_img = np.array([0, 0, 0, 0, 1, 1, 1, 2, 0])
    d_lab = np.array([1, 1, 1, 2, 1, 1, 2, 1, 3])
    det = np.concatenate([d_img[:, None], det_boxes, d_lab[:, None], np.round(r.random((9, 1)), 1)], 1)
    det = np.concatenate([det, [[-1, -1, -1, -1, -1, -1, -1]]])
    size = np.array([[64, 80], [64, 64], [32, 64]], float)
    for difficult in ("true", "false"):
        layer, _ = _layer(f'name: "e" type: "DetectionEvaluate" bottom: "d" bottom: "g" bottom: "s" top: "e" '
                          f'detection_evaluate_param {{ num_classes: 4 overlap_threshold: 0.5 evaluate_difficult_gt: '
                          f'{difficult} name_size_file: "{sizes_file}" }}', [det.shape, gt.shape, size.shape], 1)
        count = 0
        for _ in range(3):                                         # the name file's position wraps
            got = layer(*(torch.tensor(x, dtype=torch.float32) for x in (det, gt, size)))
            want, count = ref.detection_evaluate(det.astype(np.float32), gt.astype(np.float32), size.astype(np.float32),
                                                 [(120, 160), (64, 64), (50, 100)], count, 4, 0.5, difficult == "true")
            np.testing.assert_allclose(got.numpy()[:, :, 0, 0], want, atol=1e-6)
            assert layer.cascade.count == count
        assert (want[3:, 3] == 1).any() and (want[3:, 4] == 1).any()


@pytest.mark.gpu
def test_training_layers_on_cuda():
    test_detection_group_loss_matches_port(*DGL_CASES[2], device="cuda")
    r = np.random.default_rng(1)
    rois, gt = _pt_inputs(r)
    text = ('name: "pt" type: "ProposalTarget" bottom: "r" bottom: "g" top: "a" top: "b" top: "c" top: "d" top: "e" '
            'top: "f" proposal_target_param { cls_num: 5 num_img_per_batch: 2 batch_size: -1 } ' + REG % "false")
    layer, _ = _layer(text, [rois.shape, gt.shape])
    cpu = layer(torch.tensor(rois), torch.tensor(gt))
    gpu = layer(torch.tensor(rois, device="cuda"), torch.tensor(gt, device="cuda"))   # batch -1: no random choice
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        np.testing.assert_allclose(a.numpy(), b.cpu().numpy(), atol=1e-6)
