"""The native Proposal layer against the NumPy port of py-faster-rcnn's proposal_layer.py, and its use
as the stand-in of the Python layer ``rpn.proposal_layer.ProposalLayer``."""
from __future__ import annotations

import logging
import sys
import textwrap

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.proposal import Proposal, generate_anchors, nms
from neocaffe.proto import caffe_pb2
from tests.layers import rcnn_reference as ref

#: what py-faster-rcnn's generate_anchors() returns (its comment lists MATLAB anchors one pixel off:
#: the Python code is the lineage the models were trained with)
PY_ANCHORS = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199], [-56, -56, 71, 71],
              [-120, -120, 135, 135], [-248, -248, 263, 263], [-36, -80, 51, 95], [-80, -168, 95, 183],
              [-168, -344, 183, 359]]


def _rpn(rng, a: int, h: int, w: int, spread: float = 0.5):
    logits = rng.standard_normal((1, 2, a, h, w)).astype(np.float32)
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    deltas = (spread * rng.standard_normal((1, 4 * a, h, w))).astype(np.float32)
    return prob.reshape(1, 2 * a, h, w).astype(np.float32), deltas


def _layer(text: str, shapes, phase: int = 1):
    return Proposal(text_format.Parse(text, caffe_pb2.LayerParameter()), shapes, phase)


def test_anchors_are_py_faster_rcnns():
    np.testing.assert_array_equal(generate_anchors(), PY_ANCHORS)
    np.testing.assert_array_equal(ref.generate_anchors(), PY_ANCHORS)
    np.testing.assert_array_equal(generate_anchors(16, (0.5, 2), (4, 7)), ref.generate_anchors(16, (0.5, 2), (4, 7)))


def test_nms_keeps_what_the_gpu_kernel_keeps():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 60, (400, 2))
    wh = rng.uniform(4, 40, (400, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.random(400).astype(np.float32)
    scores[50:60] = scores[10]  # ties: stable order
    for thresh in (0.3, 0.7):
        want = ref.gpu_nms(np.hstack([boxes, scores[:, None]]), thresh)
        got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).tolist()
        assert got == want
        assert nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh, max_keep=7).tolist() == want[:7]


@pytest.mark.parametrize("h,w,im,spread", [(14, 14, (224, 224, 1.0), 0.5), (9, 13, (150, 200, 1.6), 1.5),
                                           (4, 5, (64, 80, 0.5), 0.2)])
def test_proposals_equal_py_faster_rcnns(h, w, im, spread):
    rng = np.random.default_rng(h * w)
    prob, deltas = _rpn(rng, 9, h, w, spread)
    info = np.array([im], np.float32)
    layer = _layer('name: "p" type: "Python" top: "rois" top: "scores" '
                   'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "\'feat_stride\': 16" }',
                   [prob.shape, deltas.shape, info.shape])
    rois, scores = layer(torch.from_numpy(prob), torch.from_numpy(deltas), torch.from_numpy(info))
    want, want_scores = ref.proposal_layer(prob, deltas, info)
    assert rois.shape == want.shape and 0 < rois.shape[0] <= 300
    np.testing.assert_array_equal(scores.numpy(), want_scores)
    np.testing.assert_allclose(rois.numpy(), want, rtol=0, atol=1e-6 * max(im[:2]) * 4)


def test_proposal_param_and_train_phase_settings():
    rng = np.random.default_rng(5)
    prob, deltas = _rpn(rng, 6, 12, 10, 0.8)
    info = np.array([[190, 160, 1.0]], np.float32)
    layer = _layer('name: "p" type: "Proposal" top: "rois" proposal_param { feat_stride: 16 ratio: 0.5 ratio: 2 '
                   'scale: 4 scale: 8 scale: 16 pre_nms_topn: 300 post_nms_topn: 40 nms_thresh: 0.5 min_size: 24 }',
                   [prob.shape, deltas.shape, info.shape])
    (rois,) = layer(torch.from_numpy(prob), torch.from_numpy(deltas), torch.from_numpy(info))
    want, _ = ref.proposal_layer(prob, deltas, info, scales=(4, 8, 16), ratios=(0.5, 2), pre_nms_topn=300,
                                 post_nms_topn=40, nms_thresh=0.5, min_size=24)
    assert rois.shape == want.shape == (40, 5)
    np.testing.assert_allclose(rois.numpy(), want, rtol=0, atol=1e-3)
    train = _layer('name: "p" type: "Python" top: "rois" python_param { module: "rpn.proposal_layer" '
                   'layer: "ProposalLayer" param_str: "{\'feat_stride\': 16, \'scales\': [4, 8, 16], \'ratios\': [0.5, 2]}" }',
                   [prob.shape, deltas.shape, info.shape], phase=TRAIN)
    assert (train.cfg.pre_nms_topn, train.cfg.post_nms_topn, train.cfg.scales) == (12000, 2000, (4.0, 8.0, 16.0))
    lp = text_format.Parse('name: "p" type: "Python" top: "rois" python_param { module: "rpn.proposal_layer" '
                           'layer: "ProposalLayer" }', caffe_pb2.LayerParameter())
    lp.python_param.param_str = "'feat_stride': 8\n'scales': !!python/tuple [2, 4]"  # YAML, one key per line
    yaml_lines = Proposal(lp, [(1, 12, 3, 3), (1, 24, 3, 3), (1, 3)], 1)
    assert (yaml_lines.cfg.feat_stride, yaml_lines.cfg.scales, yaml_lines.cfg.post_nms_topn) == (8.0, (2.0, 4.0), 300)


def test_proposal_rejects_batches_and_bad_shapes():
    prob, deltas = _rpn(np.random.default_rng(0), 9, 3, 3)
    text = 'name: "p" type: "Proposal" top: "rois"'
    with pytest.raises(LayerSetupError, match="scores 1 x 18 x H x W"):
        _layer(text, [(1, 10, 3, 3), deltas.shape, (1, 3)]).reshape([(1, 10, 3, 3), deltas.shape, (1, 3)])
    layer = _layer(text, [prob.shape, deltas.shape, (1, 3)])
    with pytest.raises(LayerSetupError, match="single item batches"):
        layer(torch.zeros(2, 18, 3, 3), torch.zeros(2, 36, 3, 3), torch.zeros(2, 3))
    with pytest.raises(LayerSetupError, match="feat_stride"):
        _layer('name: "p" type: "Python" top: "rois" python_param { module: "rpn.proposal_layer" '
               'layer: "ProposalLayer" param_str: "\'scales\': [8]" }', [prob.shape, deltas.shape, (1, 3)])


NET = '''
layer { name: "in" type: "Input" top: "prob" top: "deltas" top: "im_info"
        input_param { shape { dim: 1 dim: 18 dim: 5 dim: 6 } shape { dim: 1 dim: 36 dim: 5 dim: 6 }
                      shape { dim: 1 dim: 3 } } }
layer { name: "proposal" type: "Python" bottom: "prob" bottom: "deltas" bottom: "im_info" top: "rois"
        python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }
'''


def _run_net():
    net = Net(text_format.Parse(NET, caffe_pb2.NetParameter()), 1)
    prob, deltas = _rpn(np.random.default_rng(11), 9, 5, 6)
    info = np.array([[80, 96, 1.0]], np.float32)
    net.forward({"prob": torch.from_numpy(prob), "deltas": torch.from_numpy(deltas), "im_info": torch.from_numpy(info)})
    return net.blob_data["rois"].numpy(), (prob, deltas, info)


def test_python_proposal_layer_runs_natively_when_rpn_is_absent(caplog):
    with caplog.at_level(logging.INFO, logger="neocaffe.layers.python_layer"):
        rois, args = _run_net()
    lines = [r.getMessage() for r in caplog.records if "rpn.proposal_layer" in r.getMessage()]
    assert len(lines) == 1 and "native 'Proposal'" in lines[0]
    np.testing.assert_allclose(rois, ref.proposal_layer(*args)[0], rtol=0, atol=1e-3)


def test_an_importable_rpn_module_still_wins(tmp_path, monkeypatch):
    (tmp_path / "rpn").mkdir()
    (tmp_path / "rpn" / "__init__.py").write_text("")
    (tmp_path / "rpn" / "proposal_layer.py").write_text(textwrap.dedent('''
        import numpy as np
        class ProposalLayer:
            def setup(self, bottom, top):
                top[0].reshape(1, 5)
            def reshape(self, bottom, top):
                pass
            def forward(self, bottom, top):
                top[0].reshape(2, 5)
                top[0].data[...] = 7.0
            def backward(self, top, propagate_down, bottom):
                pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("rpn", "rpn.proposal_layer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        rois, _ = _run_net()
    finally:
        for name in ("rpn", "rpn.proposal_layer"):
            sys.modules.pop(name, None)
    np.testing.assert_array_equal(rois, np.full((2, 5), 7.0, np.float32))
