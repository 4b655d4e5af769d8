"""SSD's eval_type "detection" (Solver::TestDetection, ComputeAP): AP per ap_version against the textbook
definitions, and the test pass over DetectionEvaluate rows of varying length with its log lines."""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch

from neocaffe.proto import caffe_pb2
from neocaffe.solver.detection_eval import DetectionEvalError, DetectionScores, compute_ap
from neocaffe.solver.testing import Tester as SolverTester


def _pairs(rng, n, p_true=0.6):
    scores = rng.uniform(0, 1, n).round(3)                     # rounded: some equal scores
    tp = (rng.uniform(0, 1, n) < p_true).astype(int)
    return [(float(s), int(t)) for s, t in zip(scores, tp)], [(float(s), 1 - int(t)) for s, t in zip(scores, tp)]


def _curve(tp, num_pos):
    order = sorted(range(len(tp)), key=lambda i: -tp[i][0])    # stable, as the fork's CumSum
    hits = np.cumsum([tp[i][1] for i in order])
    seen = np.arange(1, len(tp) + 1)
    return hits / seen, hits / num_pos


def _voc07(tp, num_pos):
    prec, rec = _curve(tp, num_pos)
    return sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in np.arange(11) / 10) / 11


def _voc12(tp, num_pos):
    prec, rec = _curve(tp, num_pos)
    mrec, mpre = np.concatenate([[0], rec]), np.concatenate([[0], prec])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))


def _integral(tp, num_pos):
    prec, rec = _curve(tp, num_pos)
    return float(np.sum(prec * np.diff(np.concatenate([[0], rec]))))


@pytest.mark.parametrize("version,ref", [("11point", _voc07), ("MaxIntegral", _voc12), ("Integral", _integral)])
def test_ap_matches_the_textbook_definitions(version, ref):
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 40, 200):
        tp, fp = _pairs(rng, n)
        num_pos = sum(t for _, t in tp) + int(rng.integers(0, 5))
        if num_pos == 0:
            continue
        assert compute_ap(tp, num_pos, fp, version) == pytest.approx(ref(tp, num_pos), abs=2e-6), (n, version)
    assert compute_ap([], 3, [], version) == 0.0 and compute_ap(tp, 0, fp, version) == 0.0
    with pytest.raises(DetectionEvalError, match="true positives for"):
        compute_ap([(0.9, 1), (0.8, 1)], 1, [(0.9, 0), (0.8, 0)], version)


class _Net:
    """A test net whose single output is the next of ``batches`` (DetectionEvaluate rows)."""

    def __init__(self, batches):
        self.batches, self.outputs, self.blob_data, self.blob_loss_weights = iter(batches), ["detection_eval"], {}, {}

    def share_with(self, other):
        pass

    def forward(self):
        self.blob_data["detection_eval"] = torch.tensor(next(self.batches), dtype=torch.float32).view(1, 1, -1, 5)
        return torch.tensor(0.0)


def _tester(batches, **fields):
    param = caffe_pb2.SolverParameter(test_iter=[len(batches)], eval_type="detection", **fields)
    return SolverTester(param, [_Net(batches)], rank=0, monitors=[], requested=lambda: "none",
                  autocast=contextlib.nullcontext, snapshot=lambda: None)


def test_test_pass_gives_the_map_over_batches_of_different_lengths(caplog):
    b1 = [[-1, 1, 2, -1, -1], [-1, 2, 1, -1, -1], [0, 1, 0.9, 1, 0], [0, 1, 0.5, 0, 1], [0, 2, 0.7, 0, 1]]
    b2 = [[-1, 1, 1, -1, -1], [-1, 2, 1, -1, -1], [1, 1, 0.8, 1, 0], [1, 2, 0.6, 1, 0], [1, 2, 0.4, 0, 0]]
    with caplog.at_level(logging.INFO, logger="neocaffe"):
        means = _tester([b1, b2], ap_version="11point", show_per_class_result=True).test(0, None, 100)
    # label 1: 3 positives, detections 0.9 tp, 0.8 tp, 0.5 fp; label 2: 2 positives, 0.7 fp, 0.6 tp
    # (the tp = fp = 0 row of a difficult box is left out)
    ap1 = compute_ap([(0.9, 1), (0.5, 0), (0.8, 1)], 3, [(0.9, 0), (0.5, 1), (0.8, 0)], "11point")
    ap2 = compute_ap([(0.7, 0), (0.6, 1)], 2, [(0.7, 1), (0.6, 0)], "11point")
    assert means == [pytest.approx((ap1 + ap2) / 2, abs=1e-7)]
    assert ap1 == pytest.approx(_voc07([(0.9, 1), (0.8, 1), (0.5, 0)], 3)) and ap2 == pytest.approx(6 / 11 * 0.5)
    assert f"    Test net output #0: detection_eval = {'%g' % np.float32(means[0])}" in caplog.text
    assert "class1: " in caplog.text and "class2: " in caplog.text
    assert "detection_eval = -1" not in caplog.text                 # the raw rows are not logged
    empty = DetectionScores()
    empty.add(0, [[-1, 1, 4, -1, -1]], "detection_eval")           # positives but no detection row at all
    assert empty.mean_aps("Integral") == []                        # the fork logs no line then


def test_unknown_eval_type_and_ap_version():
    with pytest.raises(ValueError, match="Unknown evaluation type: segmentation"):
        SolverTester(caffe_pb2.SolverParameter(eval_type="segmentation"), [], rank=0, monitors=[], requested=lambda: "none",
               autocast=contextlib.nullcontext, snapshot=lambda: None)
    with pytest.raises(ValueError, match="Unknown ap_version: VOC"):
        _tester([[]], ap_version="VOC")
