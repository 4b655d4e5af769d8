"""D-X-Y/caffe-faster-rcnn's ZF Faster R-CNN nets (``models/FRCNN/zf/{train_val,test}.prototxt`` @ 1ae964d1,
copied under tests/layers/data/dxy_frcnn/): the train net reads a tiny list file of three small images
written here, with a test config (small scales, nine small anchors so that they fit the images), and
takes SGD steps with finite losses; the test net gives proposals and scores of the expected shapes.
To keep the test fast, fc6/fc7's ``num_output`` 4096 is shrunk to 64 (nothing else is changed but the
data paths)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from neocaffe.layers.frcnn_common import write_frcnn_config
from neocaffe.layers.proposal import generate_anchors

DATA = os.path.join(os.path.dirname(__file__), "data", "dxy_frcnn")


def _shrunk(name: str) -> str:
    text = open(os.path.join(DATA, name)).read()
    assert text.count("num_output: 4096") == 2
    return text.replace("num_output: 4096", "num_output: 64")


def _config(tmp_path) -> str:
    anchors = tuple(float(v) for v in generate_anchors(16, (0.5, 1, 2), (1, 2, 3)).reshape(-1))
    return write_frcnn_config(str(tmp_path / "config.json"), scales=(64.0, 72.0), max_size=112.0, use_flipped=True,
                              anchors=anchors, rpn_batchsize=32, batch_size=16.0, rpn_pre_nms_top_n=300,
                              rpn_post_nms_top_n=60, test_rpn_pre_nms_top_n=200, test_rpn_post_nms_top_n=20)


def _images(tmp_path) -> str:
    import cv2

    g = np.random.default_rng(0)
    with open(tmp_path / "list.txt", "w") as f:
        for i, (h, w) in enumerate([(64, 90), (80, 64), (70, 70)]):
            img = g.integers(0, 80, (h, w, 3), dtype=np.uint8)
            img[10:40, 12:50] = (200, 40, 40)
            img[30:60, 20:44] = (30, 190, 60)
            cv2.imwrite(str(tmp_path / f"{i:06d}.jpg"), img)
            f.write(f"# {i}\n{i:06d}.jpg\n2\n4 12 10 49 39 0\n15 20 30 43 59 0\n")
    return str(tmp_path / "list.txt")


def test_zf_train_val_takes_solver_steps(tmp_path):
    import caffe

    text = _shrunk("zf_train_val.prototxt")
    for old, new in (('"examples/FRCNN/dataset/voc2007.trainval"', f'"{_images(tmp_path)}"'),
                     ('"examples/FRCNN/config/voc_config.json"', f'"{_config(tmp_path)}"'),
                     ('"VOCdevkit/VOC2007/JPEGImages/"', f'"{tmp_path}/"')):
        assert text.count(old) == 1
        text = text.replace(old, new)
    (tmp_path / "train.prototxt").write_text(text)
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path / "train.prototxt"}" base_lr: 0.001 lr_policy: "fixed" momentum: 0.9 '
        'weight_decay: 0.0005 display: 0 max_iter: 10 snapshot: 0 solver_mode: CPU random_seed: 3')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    names = ("rpn_cls_loss", "rpn_loss_bbox", "cls_loss", "bbox_loss")
    for _ in range(3):
        solver.step(1)
        losses = [float(solver.net.blobs[n].data) for n in names]
        assert all(np.isfinite(losses)), losses
        assert losses[0] > 0 and losses[2] > 0, losses
    blobs = solver.net.blobs
    assert blobs["data"].data.shape[:2] == (1, 3) and blobs["im_info"].data.shape == (1, 3, 1, 1)
    assert blobs["gt_boxes"].data.shape == (2, 5, 1, 1)
    k = blobs["rois"].data.shape[0]
    assert 0 < k <= 16 and blobs["bbox_targets"].data.shape == (k, 84, 1, 1)
    a, h, w = 9, *blobs["rpn_cls_score"].data.shape[2:]
    assert blobs["rpn_labels"].data.shape == (1, 1, a * h, w)
    assert ((blobs["rpn_labels"].data == 0) | (blobs["rpn_labels"].data == 1)).sum() <= 32


def test_zf_test_net_gives_proposals_and_scores(tmp_path):
    import caffe

    text = _shrunk("zf_test.prototxt")
    old = 'type: "FrcnnProposal"'
    assert text.count(old) == 1
    # the fork's test_frcnn passes the config on its command line; here the layer names it
    text = text.replace(old, f'{old}\n  window_data_param {{ config: "{_config(tmp_path)}" }}')
    (tmp_path / "test.prototxt").write_text(text)
    net = caffe.Net(str(tmp_path / "test.prototxt"), caffe.TEST)
    g = np.random.default_rng(1)
    net.blobs["data"].reshape(1, 3, 64, 96)
    net.blobs["im_info"].reshape(1, 3, 1, 1)
    net.blobs["data"].data[...] = g.uniform(-100, 100, (1, 3, 64, 96))
    net.blobs["im_info"].data[...] = np.array([64, 96, 1.0]).reshape(1, 3, 1, 1)
    out = net.forward()
    rois, scores = net.blobs["rois"].data, net.blobs["scores"].data
    n = rois.shape[0]
    assert 0 < n <= 20 and rois.shape == (n, 5, 1, 1) and scores.shape == (n, 1, 1, 1)
    assert (rois[:, 0] == 0).all() and (rois[:, 3] <= 95).all() and (rois[:, 4] <= 63).all()
    assert np.all(np.diff(scores.reshape(-1)) <= 0)
    assert out["cls_prob"].shape == (n, 21) and net.blobs["bbox_pred"].data.shape == (n, 84)
    np.testing.assert_allclose(out["cls_prob"].sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("name", ["zf_train_val.prototxt", "zf_test.prototxt"])
def test_the_forks_prototxts_parse(name):
    from neocaffe.io.prototxt import read_prototxt
    from neocaffe.proto import caffe_pb2

    net = read_prototxt(os.path.join(DATA, name), caffe_pb2.NetParameter)
    types = {lay.type for lay in net.layer}
    assert "FrcnnProposal" in types
