"""DetectNet's validation Python layers: ``ScoreDetections`` and ``mAP``.

neocaffe's own implementation of the outputs of NVIDIA/caffe @ 87a2554
``python/caffe/layers/detectnet/mean_ap.py`` (DIGITS' DetectNet; BSD-2-Clause, NVIDIA), run as
``python_param { module: "caffe.layers.detectnet.mean_ap" layer: "ScoreDetections" }`` / ``layer: "mAP"``.

``ScoreDetections``: bottom[0] ground-truth boxes, bottom[1] detections, both (N, 50, 5) as the clustering
layers write them (equal N, else an error at reshape); top (N, 50, 5). Per image, the rows whose four
coordinates are all 0 are dropped from both lists; then, for each ground-truth box in order, the first
not yet matched detection (in order) with IoU >= 0.7 is matched to it. The top lists the matched
detections (class 1, true positive), the unmatched detections (2, false positive) and the unmatched
ground-truth boxes (3, "true negative": a miss), each group in its input order, as ``x1, y1, x2, y2,
class``; the remaining rows are 0. IoU is the fork's: overlaps ``max(0, min(r) - max(l))``, 0 when the
overlap area is 0, else ``overlap / (area_det + area_gt - overlap)``, computed in the bottoms' data type
(float32), so a tie at 0.7 goes as it went in the fork.

``mAP``: bottom[0] the scored list; tops mAP, precision, recall, each of shape (1,): with TP, FP and TN
the rows of class 1, 2 and 3 over the whole batch, precision ``= 100 TP / (TP + FP)``, recall ``= 100 TP /
(TP + TN)`` (0 for a zero denominator) and mAP ``= precision * recall / 100``. ``param_str`` is not read.

Deviation: the fork fails (a NumPy broadcast error) when one image's scored rows exceed 50 (possible with
50 detections and some missed ground truth); we keep the first 50. No backward.
"""
from __future__ import annotations

import numpy as np

import caffe

MAX_BOXES = 50
IOU_THRESHOLD = 0.7


def iou_matrix(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(len(det), len(gt)) IoU of boxes ``x1, y1, x2, y2`` in their own dtype (the fork's ``iou``)."""
    d, g = det[:, None, :], gt[None, :, :]
    zero = np.zeros((), dtype=det.dtype)
    ox = np.maximum(zero, np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0]))
    oy = np.maximum(zero, np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1]))
    overlap = ox * oy
    area_d = (d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = overlap / (area_d + area_g - overlap)
    return np.where(overlap == 0, 0, ratio)


def score_image(gt: np.ndarray, det: np.ndarray) -> np.ndarray:
    """One image's scored rows (k, 5) from its ground-truth and detection rows (the class docstring)."""
    gt = gt[:, :4][np.any(gt[:, :4] != 0, axis=1)]
    det = det[:, :4][np.any(det[:, :4] != 0, axis=1)]
    ious = iou_matrix(det, gt)
    det_taken = np.zeros(len(det), dtype=bool)
    gt_taken = np.zeros(len(gt), dtype=bool)
    for i in range(len(gt)):
        candidates = np.flatnonzero((ious[:, i] >= IOU_THRESHOLD) & ~det_taken)
        if candidates.size:
            det_taken[candidates[0]] = gt_taken[i] = True
    groups = [(det[det_taken], 1), (det[~det_taken], 2), (gt[~gt_taken], 3)]
    return np.concatenate([np.concatenate([b.astype(np.float64), np.full((len(b), 1), float(c))], axis=1)
                           for b, c in groups], axis=0)


def score_detections(gt_list: np.ndarray, det_list: np.ndarray) -> np.ndarray:
    """(N, 50, 5) scored rows from (N, 50, 5) ground truth and detections."""
    out = np.zeros((gt_list.shape[0], MAX_BOXES, 5))
    for k in range(gt_list.shape[0]):
        rows = score_image(gt_list[k], det_list[k])[:MAX_BOXES]
        out[k, : len(rows)] = rows
    return out


def precision_recall(scored: np.ndarray) -> tuple[float, float, float]:
    """(mAP, precision, recall) in percent from scored rows (..., 5)."""
    cls = scored[..., 4]
    tp, fp, tn = (int(np.count_nonzero(cls == c)) for c in (1, 2, 3))
    precision = (tp / (tp + fp) if tp + fp else 0) * 100.00
    recall = (tp / (tp + tn) if tp + tn else 0) * 100.00
    return precision * recall / 100.0, precision, recall


class ScoreDetections(caffe.Layer):
    """Marks detections true/false positive and ground truth missed (module docstring)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].data.shape[0], MAX_BOXES, 5)
        if bottom[0].data.shape[0] != bottom[1].data.shape[0]:
            raise ValueError(f"# of images not matching! {bottom[0].data.shape[0]} ground truth, "
                             f"{bottom[1].data.shape[0]} detections")

    def forward(self, bottom, top):
        top[0].data[...] = score_detections(bottom[0].data, bottom[1].data)

    def backward(self, top, propagate_down, bottom):
        pass


class mAP(caffe.Layer):  # noqa: N801 (NVCaffe's class name)
    """Precision, recall and their product ("mAP") in percent over a scored batch (module docstring)."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        for t in top[:3]:
            t.reshape(1)

    def forward(self, bottom, top):
        self.avp, self.precision, self.recall = precision_recall(bottom[0].data)
        top[0].data[...] = self.avp
        top[1].data[...] = self.precision
        top[2].data[...] = self.recall

    def backward(self, top, propagate_down, bottom):
        pass


__all__ = ["MAX_BOXES", "ScoreDetections", "mAP", "iou_matrix", "precision_recall", "score_detections",
           "score_image"]
