"""D-X-Y/caffe-faster-rcnn's FRCNN layers against loop ports of the fork's CPU code
(tests/layers/frcnn_reference.py), and its JSON configuration."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.data.frcnn_config import FrcnnConfig, atof, atoi, load_frcnn_config, parse_frcnn_config
from neocaffe.layers.base import TEST, TRAIN
from neocaffe.layers.frcnn_common import write_frcnn_config
from neocaffe.layers.frcnn_proposal import FrcnnProposal, frcnn_propose
from neocaffe.layers.frcnn_roi_data import FrcnnRoiData, read_roi_list
from neocaffe.layers.frcnn_targets import FrcnnAnchorTarget, anchor_targets, proposal_targets
from neocaffe.proto import caffe_pb2
from tests.layers import frcnn_reference as ref

DATA = os.path.join(os.path.dirname(__file__), "data", "dxy_frcnn")
#: six small anchors (8 to 32 pixels, three aspect ratios) so that many fit small images
SMALL = dataclasses.replace(FrcnnConfig(), feat_stride=8, anchors=(
    -4, 1, 11, 6, -12, -3, 19, 10, 0, 0, 7, 7, -4, -4, 11, 11, 2, -4, 5, 11, -1, -12, 8, 19))


def _perm():
    return lambda n: torch.randperm(n, generator=rng.generator("cpu")).numpy()


def _gt(g, n, w, h, classes=3):
    xy = g.uniform(0, [w * 0.6, h * 0.6], (n, 2))
    wh = g.uniform(6, [w * 0.5, h * 0.5], (n, 2))
    b = np.concatenate([xy, np.minimum(xy + wh, [w - 1, h - 1])], axis=1).round()
    return np.concatenate([b, g.integers(1, classes, (n, 1))], axis=1).astype(np.float32)


# -- configuration ------------------------------------------------------------------------------
def test_the_forks_voc_config_parses():
    cfg = load_frcnn_config(os.path.join(DATA, "voc_config.json"))
    assert cfg.n_anchors == 9 and cfg.anchors[:4] == (-84, -40, 99, 55) and cfg.anchors[-1] == 359
    assert cfg.scales == (600,) and cfg.max_size == 1000 and cfg.use_flipped and not cfg.rpn_clobber_positives
    assert cfg.pixel_means == pytest.approx((102.9801, 115.9465, 122.7717))
    assert cfg.bbox_normalize_stds == pytest.approx((0.1, 0.1, 0.2, 0.2)) and cfg.eps == 1e-14
    assert cfg.rpn_batchsize == 256 and cfg.test_rpn_post_nms_top_n == 300 and cfg.n_classes == 21


def test_c_number_rules_and_missing_keys(tmp_path):
    assert (atof("0.7x"), atof("abc"), atoi("1.9"), atoi("-3 "), atoi("x")) == (0.7, 0.0, 1, -3, 0)
    path = write_frcnn_config(str(tmp_path / "c.json"), rpn_batchsize=32, scales=(300.0, 400.0))
    cfg = load_frcnn_config(path)
    assert cfg.rpn_batchsize == 32 and cfg.scales == (300, 400) and cfg.path == path
    text = open(path).read().replace('"rpn_batchsize": "32"', '"rpn_batchsize": "32.9"')
    assert parse_frcnn_config(text).rpn_batchsize == 32  # atoi
    with pytest.raises(ValueError, match="Can not find target_key : n_classes"):
        parse_frcnn_config(text.replace('"n_classes"', '"n_classez"'), "x.json")


def test_each_layer_reads_its_own_file(tmp_path):
    """Two layers naming different files keep their own values (the fork: the last load wins for all)."""
    a = write_frcnn_config(str(tmp_path / "a.json"), test_rpn_post_nms_top_n=3)
    b = write_frcnn_config(str(tmp_path / "b.json"), test_rpn_post_nms_top_n=5)
    layers = []
    for path in (a, b):
        p = text_format.Parse(f'name: "p" type: "FrcnnProposal" bottom: "s" bottom: "d" bottom: "i" top: "r" '
                              f'window_data_param {{ config: "{path}" }}', caffe_pb2.LayerParameter())
        layers.append(FrcnnProposal(p, [(1, 18, 2, 2), (1, 36, 2, 2), (1, 3)], TEST))
    assert [lay.cfg.test_rpn_post_nms_top_n for lay in layers] == [3, 5]


# -- FrcnnAnchorTarget --------------------------------------------------------------------------
@pytest.mark.parametrize("clobber,pos_weight,batch", [(False, -1.0, 256), (True, 0.3, 24), (False, -1.0, 16), (False, -1.0, 4)])
def test_anchor_target_matches_the_fork(clobber, pos_weight, batch):
    cfg = dataclasses.replace(SMALL, rpn_clobber_positives=clobber, rpn_positive_weight=pos_weight,
                              rpn_batchsize=batch, rpn_allowed_border=2.0)
    g = np.random.default_rng(int(batch))
    h, w, info = 7, 9, np.array([54, 70, 1.0], np.float32)
    gt = _gt(g, 3, 70, 54)
    rng.set_seed(4)
    got = anchor_targets(h, w, torch.from_numpy(gt), torch.from_numpy(info), cfg)
    rng.set_seed(4)
    want = ref.anchor_target(h, w, gt, info, cfg, _perm())
    for gt_, w_ in zip(got, want):
        assert gt_.shape == w_.shape
        np.testing.assert_allclose(gt_.numpy(), w_, rtol=0, atol=2e-6)
    labels = got[0].numpy()
    assert (labels == 1).sum() > 0 and (labels == 0).sum() > 0
    if batch < 256:
        assert ((labels == 1) | (labels == 0)).sum() == batch  # sampled down to rpn_batchsize


def test_anchor_target_layer_shapes_and_checks():
    p = text_format.Parse('name: "at" type: "FrcnnAnchorTarget" bottom: "s" bottom: "g" bottom: "i" top: "a" '
                          'top: "b" top: "c" top: "d"', caffe_pb2.LayerParameter())
    layer = FrcnnAnchorTarget(p, [(1, 18, 13, 15), (1, 5), (1, 3)], TRAIN)
    assert layer.reshape([(1, 18, 13, 15), (1, 5), (1, 3)])[0] == (1, 1, 9 * 13, 15)
    with pytest.raises(ValueError, match="ground truth boxes must lie in the image"):
        layer(torch.zeros(1, 18, 13, 15), torch.tensor([[0.0, 0, 300, 20, 1]]), torch.tensor([[200.0, 240, 1]]))


# -- FrcnnProposal ------------------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False])
def test_proposal_matches_the_fork(train):
    cfg = dataclasses.replace(SMALL, rpn_pre_nms_top_n=60, rpn_post_nms_top_n=25, rpn_min_size=4.7,
                              test_rpn_pre_nms_top_n=200, test_rpn_post_nms_top_n=40, test_rpn_nms_thresh=0.5,
                              test_rpn_min_size=3)
    g = np.random.default_rng(1)
    a, h, w = cfg.n_anchors, 6, 8
    score = g.uniform(0, 1, (1, 2 * a, h, w)).astype(np.float32)
    score[0, a + 1, 2] = score[0, a + 1, 3]  # ties
    deltas = (0.3 * g.standard_normal((1, 4 * a, h, w))).astype(np.float32)
    info = np.array([45, 60, 1.25], np.float32)
    boxes, s = frcnn_propose(torch.from_numpy(score), torch.from_numpy(deltas), torch.from_numpy(info), cfg, train)
    want_rois, want_s = ref.proposal(score, deltas, info, cfg, train)
    assert boxes.shape[0] == want_rois.shape[0] > 5
    np.testing.assert_allclose(boxes.numpy(), want_rois[:, 1:], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(s.numpy(), want_s)


def test_proposal_layer_tops():
    p = text_format.Parse('name: "p" type: "FrcnnProposal" bottom: "s" bottom: "d" bottom: "i" top: "r" top: "sc"',
                          caffe_pb2.LayerParameter())
    layer = FrcnnProposal(p, [(1, 18, 20, 25), (1, 36, 20, 25), (1, 3)], TEST)
    g = torch.Generator().manual_seed(0)
    rois, sc = layer(torch.rand(1, 18, 20, 25, generator=g), 0.1 * torch.randn(1, 36, 20, 25, generator=g),
                     torch.tensor([[320.0, 400.0, 1.0]]))
    assert rois.shape[1:] == (5, 1, 1) and sc.shape == (rois.shape[0], 1, 1, 1) and 0 < rois.shape[0] <= 300
    assert (rois[:, 0] == 0).all() and (rois[:, 3] <= 399).all() and (rois[:, 4] <= 319).all()


# -- FrcnnProposalTarget ------------------------------------------------------------------------
@pytest.mark.parametrize("normalize,batch", [(True, 16.0), (False, 64.0)])
def test_proposal_target_matches_the_fork(normalize, batch):
    cfg = dataclasses.replace(FrcnnConfig(), n_classes=4, batch_size=batch, bbox_normalize_targets=normalize,
                              bbox_inside_weights=(1.0, 0.5, 1.0, 2.0))
    g = np.random.default_rng(int(batch))
    gt = _gt(g, 3, 80, 60, classes=4)
    xy = g.uniform(0, 60, (40, 2))
    rois = np.concatenate([np.zeros((40, 1)), xy, xy + g.uniform(4, 30, (40, 2))], axis=1).astype(np.float32)
    rois[:3, 1:] = gt[:, :4] + 1  # some foreground
    rng.set_seed(9)
    got = proposal_targets(torch.from_numpy(rois), torch.from_numpy(gt), cfg)
    rng.set_seed(9)
    want = ref.proposal_target(rois, gt, cfg, _perm())
    for gt_, w_ in zip(got, want):
        np.testing.assert_allclose(gt_.numpy().reshape(w_.shape), w_, rtol=0, atol=2e-6)
    assert (want[1] > 0).sum() > 0 and (want[1] == 0).sum() > 0


# -- FrcnnRoiData -------------------------------------------------------------------------------
def _list(tmp_path, sizes, mirror=True):
    import cv2

    g = np.random.default_rng(2)
    with open(tmp_path / "list.txt", "w") as f:
        for i, (h, w) in enumerate(sizes):
            cv2.imwrite(str(tmp_path / f"i{i}.png"), g.integers(0, 256, (h, w, 3), dtype=np.uint8))
            f.write(f"# {i}\ni{i}.png\n3\n1 0 1 {w // 2} {h - 1} 0\n2 3 2 {w + 4} {h // 2} 0\n1 1 1 4 4 1\n")
    cfg = write_frcnn_config(str(tmp_path / "c.json"), scales=(30.0, 40.0), max_size=50.0, use_flipped=mirror,
                             n_classes=3)
    p = text_format.Parse(f'name: "d" type: "FrcnnRoiData" top: "data" top: "im_info" top: "gt_boxes" '
                          f'window_data_param {{ source: "{tmp_path}/list.txt" config: "{cfg}" '
                          f'root_folder: "{tmp_path}/" }}', caffe_pb2.LayerParameter())
    return p


def test_roi_data_matches_the_fork(tmp_path):
    import cv2

    sizes = [(20, 36), (44, 30), (25, 25)]
    layer = FrcnnRoiData(_list(tmp_path, sizes), [], TRAIN)
    entries = read_roi_list(str(tmp_path / "list.txt"), 3)
    assert [len(r) for _, r in entries] == [2, 2, 2]  # the difficult box is dropped
    seen_mirror = set()
    for _ in range(6):
        gen_state = layer.gen.bit_generator.state
        pos, order = layer.pos, layer.order.copy()
        data, info, gt = layer()
        g = np.random.default_rng()
        g.bit_generator.state = gen_state
        pos += 1
        if pos >= len(order):
            pos, order = 0, g.permutation(order)
        index = int(order[pos])
        mirror = bool(g.integers(0, 2))
        short = int((30, 40)[int(g.integers(0, 2))])
        img = cv2.imread(str(tmp_path / f"i{index}.png")).astype(np.float32)
        rows, cols = img.shape[:2]
        s = np.float32(short) / np.float32(min(rows, cols))
        if s * np.float32(max(rows, cols)) > 50:
            s = np.float32(50) / np.float32(max(rows, cols))
        src = (img[:, ::-1] if mirror else img) - np.array([102.9801, 115.9465, 122.7717], np.float32)
        want = cv2.resize(np.ascontiguousarray(src), None, fx=float(s), fy=float(s)).transpose(2, 0, 1)
        np.testing.assert_array_equal(data[0].numpy(), want)
        oh, ow = want.shape[1:]
        np.testing.assert_allclose(info.reshape(-1).numpy(), [oh, ow, s], rtol=1e-7)
        np.testing.assert_array_equal(gt.reshape(-1, 5).numpy(),
                                      ref.roi_data_boxes(entries[index][1], cols, rows, s, oh, ow, mirror))
        seen_mirror.add(mirror)
    assert seen_mirror == {True, False}


def test_roi_data_resumes(tmp_path):
    p = _list(tmp_path, [(20, 36), (44, 30), (25, 25)])
    rng.set_seed(1)
    a = FrcnnRoiData(p, [], TRAIN)
    a()
    state = a.resume_state()
    want = [a()[2] for _ in range(4)]
    rng.set_seed(2)
    b = FrcnnRoiData(p, [], TRAIN)
    b.load_resume_state(state)
    for w in want:
        np.testing.assert_array_equal(b()[2].numpy(), w.numpy())


# -- CUDA ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = dataclasses.replace(SMALL, rpn_batchsize=16, test_rpn_post_nms_top_n=30)
    g = np.random.default_rng(3)
    gt = torch.from_numpy(_gt(g, 3, 70, 54))
    info = torch.tensor([54.0, 70.0, 1.0])
    rng.set_seed(5)
    cpu = anchor_targets(7, 9, gt, info, dataclasses.replace(cfg, rpn_batchsize=10000))
    gpu = anchor_targets(7, 9, gt.cuda(), info.cuda(), dataclasses.replace(cfg, rpn_batchsize=10000))
    for c, d in zip(cpu, gpu):
        assert d.is_cuda
        np.testing.assert_allclose(d.cpu().numpy(), c.numpy(), atol=1e-5)
    a = cfg.n_anchors
    score = torch.rand(1, 2 * a, 6, 8, generator=torch.Generator().manual_seed(0))
    deltas = 0.3 * torch.randn(1, 4 * a, 6, 8, generator=torch.Generator().manual_seed(1))
    info = torch.tensor([45.0, 60.0, 1.0])
    b0, s0 = frcnn_propose(score, deltas, info, cfg, False)
    b1, s1 = frcnn_propose(score.cuda(), deltas.cuda(), info.cuda(), cfg, False)
    assert b1.is_cuda and b1.shape == b0.shape
    np.testing.assert_allclose(b1.cpu().numpy(), b0.numpy(), atol=1e-4)
    rois = torch.cat([torch.zeros(30, 1), b0[:30]], 1)
    rng.set_seed(6)
    tops = proposal_targets(rois.cuda(), gt.cuda(), dataclasses.replace(cfg, n_classes=3, batch_size=8.0))
    assert all(t.is_cuda for t in tops) and tops[0].shape[1] == 5
