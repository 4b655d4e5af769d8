"""NVCaffe's DetectNet pieces: ``L1Loss`` and the ``caffe.layers.detectnet`` Python layers, against the
loop ports in detectnet_reference.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.proto import caffe_pb2
from tests.layers import detectnet_reference as ref


def _net(text: str, phase: int = 1) -> Net:
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


# -- L1Loss -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape_a,shape_b,weight", [((4, 3, 2, 5), (4, 30), 1.0), ((2, 7), (2, 7), 2.0),
                                                   ((5,), (5,), 0.5)])
def test_l1_loss_forward_backward_matches_nvcaffe(shape_a, shape_b, weight):
    r = np.random.default_rng(1)
    a = r.standard_normal(shape_a).astype(np.float32)
    b = r.standard_normal(shape_b).astype(np.float32)
    b.reshape(-1)[:3] = a.reshape(-1)[:3]  # exact ties: sign 0, diff 0
    sa = " ".join(f"dim: {d}" for d in shape_a)
    sb = " ".join(f"dim: {d}" for d in shape_b)
    net = _net(f'''force_backward: true
      layer {{ name: "in" type: "Input" top: "a" top: "b" input_param {{ shape {{ {sa} }} shape {{ {sb} }} }} }}
      layer {{ name: "loss" type: "L1Loss" bottom: "a" bottom: "b" top: "loss" loss_weight: {weight}
               loss_param {{ normalization: VALID normalize: false }} }}''')
    net.set_blob("a", torch.from_numpy(a))
    net.set_blob("b", torch.from_numpy(b))
    total = net.forward()
    loss, da, db = ref.l1_loss(a, b, top_diff=weight)
    np.testing.assert_allclose(float(net.blob_data["loss"]), loss, rtol=1e-6)
    np.testing.assert_allclose(float(total), weight * loss, rtol=1e-6)
    net.backward()
    np.testing.assert_allclose(net.blob_diff("a").numpy(), da, rtol=1e-6)
    np.testing.assert_allclose(net.blob_diff("b").numpy(), db, rtol=1e-6)
    assert net.blob_diff("a").numpy().reshape(-1)[:3].tolist() == [0, 0, 0]


def test_l1_loss_shape_errors():
    for sa, sb, msg in [("dim: 2 dim: 3", "dim: 2 dim: 4", "same dimension"),
                        ("dim: 2 dim: 3", "dim: 3 dim: 2", "first dimension"),
                        ("dim: 1 dim: 1 dim: 1 dim: 1 dim: 2", "dim: 1 dim: 2", "at most 4 axes")]:
        with pytest.raises(Exception, match=msg):
            _net(f'''layer {{ name: "in" type: "Input" top: "a" top: "b"
                       input_param {{ shape {{ {sa} }} shape {{ {sb} }} }} }}
                     layer {{ name: "loss" type: "L1Loss" bottom: "a" bottom: "b" top: "loss" }}''')


# -- caffe.layers: the NetSpec helper and the detectnet package ----------------------------------------
_NETSPEC = '''
import caffe
from caffe import layers as L, params as P
def spec():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv = caffe.layers.Convolution(n.data, num_output=2, kernel_size=3)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2)
    return str(n.to_proto())
before = spec()
import caffe.layers.detectnet.clustering
after = spec()
assert before == after and 'type: "Convolution"' in after, after
from caffe import layers as L2
assert L2.Convolution is not None and caffe.layers.Pooling is not None
from caffe.layers.detectnet import clustering, mean_ap
assert clustering.ClusterDetections and mean_ap.mAP
print("ok")
'''


def test_caffe_layers_is_netspec_helper_and_package():
    """In a fresh interpreter: NetSpec through ``caffe.layers`` before and after the detectnet import."""
    out = subprocess.run([sys.executable, "-c", _NETSPEC], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_caffe_layers_after_import_in_process():
    import caffe
    import caffe.layers.detectnet.mean_ap  # noqa: F401

    from caffe import layers as L
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.ip = caffe.layers.InnerProduct(n.data, num_output=3)
    assert 'type: "InnerProduct"' in str(n.to_proto())


# -- ClusterDetections / ClusterGroundtruth / ScoreDetections / mAP -------------------------------------
IMG_X, IMG_Y, STRIDE = 128, 64, 16  # an 8 x 4 grid


def _grid_inputs(seed: int, n: int = 2):
    """Coverage (n, 1, 4, 8) and boxes (n, 4, 4, 8) where 2x2 blocks of cells propose one object (their
    offsets point at the same absolute box, with jitter) and a few stray cells propose others."""
    r = np.random.default_rng(seed)
    gy, gx = IMG_Y // STRIDE, IMG_X // STRIDE
    cvg = (r.random((n, 1, gy, gx)) * 0.4).astype(np.float32)
    boxes = (r.standard_normal((n, 4, gy, gx)) * 6).astype(np.float32)
    for i in range(n):
        for oy, ox in [(0, 1), (2, 4)][: i + 1]:
            obj = np.array([ox * 16 + 3.3, oy * 16 + 1.7, ox * 16 + 40.6, oy * 16 + 30.2])
            for y in (oy, oy + 1):
                for x in (ox, ox + 1):
                    cvg[i, 0, y, x] = 0.7 + 0.1 * r.random()
                    jitter = r.standard_normal(4) * 0.3
                    boxes[i, :, y, x] = obj + jitter - [x * 16, y * 16, x * 16, y * 16]
    return cvg, boxes


def _cluster_net(det_params: str, gt_params: str) -> Net:
    return _net(f'''
      layer {{ name: "in" type: "Input" top: "coverage" top: "bboxes" top: "coverage-label" top: "bbox-label"
               input_param {{ shape {{ dim: 2 dim: 1 dim: 4 dim: 8 }} shape {{ dim: 2 dim: 4 dim: 4 dim: 8 }}
                              shape {{ dim: 2 dim: 1 dim: 4 dim: 8 }} shape {{ dim: 2 dim: 4 dim: 4 dim: 8 }} }} }}
      layer {{ type: 'Python' name: 'cluster' bottom: 'coverage' bottom: 'bboxes' top: 'bbox-list'
               python_param {{ module: 'caffe.layers.detectnet.clustering' layer: 'ClusterDetections'
                               param_str: '{det_params}' }} }}
      layer {{ type: 'Python' name: 'cluster_gt' bottom: 'coverage-label' bottom: 'bbox-label'
               top: 'bbox-list-label'
               python_param {{ module: 'caffe.layers.detectnet.clustering' layer: 'ClusterGroundtruth'
                               param_str: '{gt_params}' }} }}
      layer {{ type: 'Python' name: 'score' bottom: 'bbox-list-label' bottom: 'bbox-list' top: 'bbox-list-scored'
               python_param {{ module: 'caffe.layers.detectnet.mean_ap' layer: 'ScoreDetections' }} }}
      layer {{ type: 'Python' name: 'mAP' bottom: 'bbox-list-scored' top: 'mAP' top: 'precision' top: 'recall'
               python_param {{ module: 'caffe.layers.detectnet.mean_ap' layer: 'mAP'
                               param_str: '{IMG_X}, {IMG_Y}, {STRIDE}' }} }}''')


@pytest.mark.parametrize("seed,thresh,eps,min_h", [(0, 1, 0.2, 10), (1, 3, 0.2, 10), (2, 0, 0.02, 22),
                                                   (3, 1, 0.2, 40)])
def test_detectnet_python_layers_match_nvcaffe(seed, thresh, eps, min_h):
    cvg, boxes = _grid_inputs(seed)
    r = np.random.default_rng(100 + seed)
    # labels: the true objects' cells (coverage 1) with exact offsets; duplicates collapse in ClusterGroundtruth
    cvg_l = (cvg > 0.6).astype(np.float32)
    box_l = np.round(boxes * cvg_l, 0).astype(np.float32)
    cvg_l[0, 0, 3, 7] = 1.0  # a missed object
    box_l[0, :, 3, 7] = [1, 2, 14, 13]
    box_l += (r.random(box_l.shape) < 0.05) * (1 - cvg_l)  # non-covered cells' values are not read
    net = _cluster_net(f"{IMG_X}, {IMG_Y}, {STRIDE}, 0.6, {thresh}, {eps}, {min_h}, 1", f"{IMG_X}, {IMG_Y}, {STRIDE}, 1")
    for name, v in [("coverage", cvg), ("bboxes", boxes), ("coverage-label", cvg_l), ("bbox-label", box_l)]:
        net.set_blob(name, torch.from_numpy(v))
    net.forward()
    got = {k: net.blob_data[k].detach().numpy() for k in ("bbox-list", "bbox-list-label", "bbox-list-scored",
                                                          "mAP", "precision", "recall")}
    want_det = ref.cluster(cvg, boxes, IMG_X, IMG_Y, STRIDE, 0.6, thresh, eps, min_h)
    want_gt = ref.cluster(cvg_l, box_l, IMG_X, IMG_Y, STRIDE, groundtruth=True)
    assert got["bbox-list"].shape == (2, 50, 5) and got["bbox-list-label"].shape == (2, 50, 5)
    np.testing.assert_array_equal(got["bbox-list"], want_det.astype(np.float32))
    np.testing.assert_array_equal(got["bbox-list-label"], want_gt.astype(np.float32))
    want_scored = ref.score_det(want_gt.astype(np.float32), want_det.astype(np.float32))
    np.testing.assert_array_equal(got["bbox-list-scored"], want_scored.astype(np.float32))
    m, p, rc = ref.calc_map(want_scored)
    np.testing.assert_allclose([got["mAP"][0], got["precision"][0], got["recall"][0]], [m, p, rc], rtol=1e-6)
    assert got["mAP"].shape == (1,)
    if (seed, thresh) == (0, 1):  # the planted objects are found: something real was compared
        assert np.count_nonzero(got["bbox-list"][..., 4]) >= 3 and 0 < p and 0 < rc


def test_cluster_layers_multiple_classes_and_param_errors():
    cvg, boxes = _grid_inputs(0)
    cvg2 = np.concatenate([cvg, cvg[:, :, ::-1]], axis=1).copy()
    net = _net(f'''
      layer {{ name: "in" type: "Input" top: "c" top: "b"
               input_param {{ shape {{ dim: 2 dim: 2 dim: 4 dim: 8 }} shape {{ dim: 2 dim: 4 dim: 4 dim: 8 }} }} }}
      layer {{ type: 'Python' name: 'cl' bottom: 'c' bottom: 'b' top: 'd0' top: 'd1'
               python_param {{ module: 'caffe.layers.detectnet.clustering' layer: 'ClusterDetections'
                               param_str: '{IMG_X},{IMG_Y},{STRIDE},0.5,1,0.2,4,2' }} }}''')
    net.set_blob("c", torch.from_numpy(cvg2))
    net.set_blob("b", torch.from_numpy(boxes))
    net.forward()
    for c in range(2):
        want = ref.cluster(cvg2[:, c:c + 1], boxes, IMG_X, IMG_Y, STRIDE, 0.5, 1, 0.2, 4)
        np.testing.assert_array_equal(net.blob_data[f"d{c}"].numpy(), want.astype(np.float32))
    for params, tops in [("128,64,16,0.5,1,0.2,4,2", "top: 'd0'"), ("128,64", "top: 'd0'"),
                         ("128,64,16,0.5,1,0.2,4", "top: 'd0' top: 'd1'"), ("128,64,x,0.5,1,0.2,4", "top: 'd0'")]:
        with pytest.raises(Exception, match="tops|classes|Parameter string"):
            _net(f'''layer {{ name: "in" type: "Input" top: "c" top: "b"
                   input_param {{ shape {{ dim: 2 dim: 2 dim: 4 dim: 8 }} shape {{ dim: 2 dim: 4 dim: 4 dim: 8 }} }} }}
                 layer {{ type: 'Python' name: 'cl' bottom: 'c' bottom: 'b' {tops}
                   python_param {{ module: 'caffe.layers.detectnet.clustering' layer: 'ClusterDetections'
                                   param_str: '{params}' }} }}''')


def test_score_detections_matching_edge_cases():
    """Greedy matching in order, the 0.7 IoU bound, zero rows dropped, float16-valued boxes."""
    from caffe.layers.detectnet.mean_ap import precision_recall, score_detections

    gt = np.zeros((3, 50, 5), np.float32)
    det = np.zeros((3, 50, 5), np.float32)
    gt[0, :3, :4] = [[0, 0, 10, 10], [20, 20, 30, 40], [50, 50, 60, 60]]
    det[0, :4] = [[0, 0, 10, 10, 2.0], [0, 0, 10, 11, 1.0], [20, 20, 30, 34, 1.5], [70, 70, 80, 80, 0.7]]
    det[1, :2] = [[1, 1, 5, 5, 1.0], [0, 0, 0, 0, 3.0]]  # a zero box with a confidence is dropped
    gt[2, :2, :4] = [[0, 0, 10, 10], [0, 0, 10, 10]]
    det[2, :1] = [[0, 0, 10, 10, 1.0]]
    r = np.random.default_rng(7)
    got = score_detections(gt, det)
    want = ref.score_det(gt, det)
    np.testing.assert_array_equal(got, want)
    assert got[0, :5, 4].tolist() == [1, 1, 2, 2, 3] and got[2, :2, 4].tolist() == [1, 3]
    assert precision_recall(got) == pytest.approx(ref.calc_map(want))
    assert precision_recall(np.zeros((1, 50, 5))) == (0, 0, 0)
    boxes = np.round(r.random((2, 50, 5)) * 60, 1).astype(np.float16).astype(np.float32)
    boxes[..., 2:4] += boxes[..., 0:2]
    dets = boxes + (r.random(boxes.shape) < 0.5).astype(np.float32) * r.random(boxes.shape).astype(np.float32)
    np.testing.assert_array_equal(score_detections(boxes[:, :20], dets[:, :25]),
                                  ref.score_det(boxes[:, :20], dets[:, :25]))
