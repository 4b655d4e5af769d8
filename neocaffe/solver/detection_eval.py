"""SSD's detection test: ``eval_type: "detection"`` in the solver (weiliu89/caffe, branch ssd;
``Solver::TestDetection`` in ``src/caffe/solver.cpp``, ``ComputeAP`` and ``CumSum`` in
``src/caffe/util/bbox_util.cpp``).

Each test output is a DetectionEvaluate top: rows ``[-1, label, positives, -1, -1]`` add to the label's
number of positives, rows ``[image, label, score, tp, fp]`` are kept as (score, tp) and (score, fp)
pairs, except those with tp = fp = 0 (a detection matched to a difficult box that is not evaluated).
After ``test_iter`` batches each output's mean AP over the labels that had positives is logged as
``Test net output #i: <blob> = <mAP>`` (``show_per_class_result`` adds ``class<label>: <AP>``), by
``ap_version``: ``11point`` (VOC2007), ``MaxIntegral`` (VOC2012, ILSVRC) or ``Integral`` (the default),
in float32 as the fork computes it. As in the fork, an output without any detection row logs no line
when it is the last, and a label without any detection counts as AP 0 (with a warning).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["AP_VERSIONS", "EVAL_TYPES", "DetectionEvalError", "DetectionScores", "compute_ap"]

log = logging.getLogger("neocaffe.solver")
f32 = np.float32
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
EVAL_TYPES = ("classification", "detection")
_EPS = f32(1e-6)


class DetectionEvalError(ValueError):
    """Results that cannot be scored (the message says which output and label)."""


def _cumsum(pairs: list[tuple[float, int]]) -> np.ndarray:
    """CumSum: the int flags summed in descending score order (a stable sort: ties keep their order)."""
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])
    return np.cumsum([pairs[i][1] for i in order], dtype=np.int64)


def compute_ap(tp: list[tuple[float, int]], num_pos: int, fp: list[tuple[float, int]], ap_version: str) -> float:
    """ComputeAP: the average precision of one label's detections, float32 arithmetic."""
    if len(tp) == 0 or num_pos == 0:
        return 0.0
    tp_cum, fp_cum = _cumsum(tp), _cumsum(fp)
    if tp_cum[-1] > num_pos:
        raise DetectionEvalError(f"{tp_cum[-1]} true positives for {num_pos} positives")
    prec = tp_cum.astype(f32) / (tp_cum + fp_cum).astype(f32)
    rec = tp_cum.astype(f32) / f32(num_pos)
    num = len(tp)
    ap = f32(0)
    if ap_version == "11point":
        max_precs = [f32(0)] * 11
        start = num - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10.0:
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                if max_precs[j] < prec[i]:
                    max_precs[j] = prec[i]
        for j in range(10, -1, -1):
            ap = f32(ap + max_precs[j] / f32(11))
    elif ap_version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(num - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            if abs(f32(cur_rec - rec[i])) > _EPS:
                ap = f32(ap + cur_prec * abs(f32(cur_rec - rec[i])))
            cur_rec = rec[i]
        ap = f32(ap + cur_rec * cur_prec)
    elif ap_version == "Integral":
        prev = f32(0)
        for i in range(num):
            if abs(f32(rec[i] - prev)) > _EPS:
                ap = f32(ap + prec[i] * abs(f32(rec[i] - prev)))
            prev = rec[i]
    else:
        raise DetectionEvalError(f"Unknown ap_version: {ap_version}; expected one of {', '.join(AP_VERSIONS)}")
    return float(ap)


class DetectionScores:
    """The pairs and positives of one test pass, per output index (TestDetection's maps)."""

    def __init__(self) -> None:
        self.true_pos: dict[int, dict[int, list[tuple[float, int]]]] = defaultdict(lambda: defaultdict(list))
        self.false_pos: dict[int, dict[int, list[tuple[float, int]]]] = defaultdict(lambda: defaultdict(list))
        self.num_pos: dict[int, dict[int, int]] = defaultdict(dict)

    def add(self, j: int, rows: Any, name: str) -> None:
        """One batch's DetectionEvaluate top of output ``j`` (blob ``name``)."""
        rows = np.asarray(rows, f32)
        if rows.size % 5:
            raise DetectionEvalError(f"test output #{j} '{name}': eval_type \"detection\" needs DetectionEvaluate's "
                                     f"rows of 5 values; received {rows.size} values")
        for item, label, score, tp, fp in rows.reshape(-1, 5):
            label = int(label)
            if int(item) == -1:
                self.num_pos[j][label] = self.num_pos[j].get(label, 0) + int(score)
            elif int(tp) != 0 or int(fp) != 0:
                self.true_pos[j][label].append((float(score), int(tp)))
                self.false_pos[j][label].append((float(score), int(fp)))

    def mean_aps(self, ap_version: str, per_class: bool = False) -> list[float]:
        """The mAP of outputs 0 .. n-1, n the number of outputs with detection rows (the fork's loop)."""
        out = []
        for j in range(len(self.true_pos)):
            if j not in self.true_pos:
                raise DetectionEvalError(f"Missing output_blob true_pos: {j}")
            total = f32(0)
            for label, n_pos in sorted(self.num_pos[j].items()):
                if label not in self.true_pos[j]:
                    log.warning("Missing true_pos for label: %d", label)
                    continue
                try:
                    ap = f32(compute_ap(self.true_pos[j][label], n_pos, self.false_pos[j][label], ap_version))
                except DetectionEvalError as e:
                    raise DetectionEvalError(f"test output #{j}, label {label}: {e}") from None
                total = f32(total + ap)
                if per_class:
                    log.info("class%d: %s", label, "%g" % float(ap))
            out.append(float(f32(total / f32(len(self.num_pos[j])))) if self.num_pos[j] else float("nan"))
        return out
