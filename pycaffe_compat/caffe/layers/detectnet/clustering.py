"""DetectNet's clustering Python layers: ``ClusterDetections`` and ``ClusterGroundtruth``.

neocaffe's own implementation of the outputs of NVIDIA/caffe @ 87a2554
``python/caffe/layers/detectnet/clustering.py`` (DIGITS' DetectNet; BSD-2-Clause, NVIDIA), run from a
prototxt as ``python_param { module: "caffe.layers.detectnet.clustering" layer: "ClusterDetections" }``.

Both layers turn DetectNet's grid outputs into box lists, per class c (``num_classes`` tops):

* bottom[0]: coverage (N, num_classes, Gy, Gx); bottom[1]: boxes (N, >= 4, Gy, Gx), channels 0..3 the
  offsets (x1, y1, x2, y2) of a cell's box from the cell's corner, in pixels (every class reads the same
  four channels, as NVCaffe's layer does);
* top c: (N, 50, 5) float; rows past the boxes found are 0.

``param_str`` (comma-separated): ClusterDetections ``img_size_x,img_size_y,stride,gridbox_cvg_threshold,
gridbox_rect_thresh,gridbox_rect_eps,min_height[,num_classes]`` (e.g. ``1248,352,16,0.05,1,0.025,22``);
ClusterGroundtruth ``img_size_x,img_size_y,stride[,num_classes]``; num_classes defaults to 1 and must
equal the number of tops and bottom[0]'s channels.

Per image, the grid read is ``gx = int(img_size_x / stride)`` by ``gy = int(img_size_y / stride)`` cells of
``img_size_x / gx`` by ``img_size_y / gy`` pixels; cell (y, x) is selected when its coverage is
``>= gridbox_cvg_threshold`` (ClusterDetections) or ``> 0`` (ClusterGroundtruth), in row-major order, and
proposes the box ``boxes[0..3, y, x] + (x*cell_w, y*cell_h, x*cell_w, y*cell_h)`` (float64).

* ClusterDetections: when no proposal has a nonzero coordinate there is no detection; else OpenCV's
  ``groupRectangles`` clusters the rectangles ``(x1, y1, x2 - x1, y2 - y1)`` with ``gridbox_rect_thresh`` and
  ``gridbox_rect_eps``; each cluster of height ``>= min_height`` gives ``(x, y, x + w, y + h, log(members))``.
  The rectangles are integers: the fork's float coordinates were truncated toward zero by the
  OpenCV/Python 2 binding of its time (today's binding refuses floats), and that is what we pass.
* ClusterGroundtruth: the proposals with duplicates removed, in the order of a Python ``set`` of the
  row tuples (what the fork's list of a set gives), fifth column 0.

The rows are rounded to float16 before they are stored (the fork's ``np.asarray(..., dtype=np.float16)``).
Deviation: the fork fails (a NumPy broadcast error) on more than 50 boxes in one image; we keep the
first 50. No backward (none in the fork either).
"""
from __future__ import annotations

import math

import numpy as np

import caffe

MAX_BOXES = 50


def _parse(param_str: str, kinds: list[type]) -> list:
    """The values of ``kinds`` then num_classes (default 1); values past those are ignored, as the fork does."""
    parts = [p.strip() for p in str(param_str).split(",")]
    need = len(kinds)
    if len(parts) < need:
        raise ValueError(f"Parameter string missing or data type is wrong! param_str {param_str!r} "
                         f"needs {need} (+ num_classes) comma-separated values")
    try:
        values = [k(p) for k, p in zip(kinds, parts)]
        values.append(int(parts[need]) if len(parts) > need else 1)
    except ValueError as e:
        raise ValueError(f"Parameter string missing or data type is wrong! param_str {param_str!r}: {e}") from None
    return values


def grid_proposals(cvg: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], stride: int,
                   threshold: float | None) -> np.ndarray:
    """The (n, 4) float64 boxes proposed by one image's coverage ``cvg`` (Gy, Gx) and ``boxes``
    (>= 4, Gy, Gx); ``threshold`` None selects coverage > 0 (ground truth), else coverage >= threshold."""
    gx, gy = int(image_size[0] / stride), int(image_size[1] / stride)
    cell_w, cell_h = image_size[0] / gx, image_size[1] / gy
    cv = cvg[:gy, :gx]
    ys, xs = np.nonzero(cv > 0 if threshold is None else cv >= threshold)
    corner = np.stack([xs * cell_w, ys * cell_h, xs * cell_w, ys * cell_h], axis=1)
    return boxes[:4, ys, xs].T.astype(np.float64) + corner


def group_detections(proposals: np.ndarray, rect_thresh: int, rect_eps: float, min_height: int) -> np.ndarray:
    """OpenCV ``groupRectangles`` voting over one image's proposals: (k, 5) ``x1, y1, x2, y2, log(votes)``."""
    import cv2

    if not np.any(proposals):
        return np.zeros((0, 5))
    rects = np.stack([proposals[:, 0], proposals[:, 1], proposals[:, 2] - proposals[:, 0],
                      proposals[:, 3] - proposals[:, 1]], axis=1)
    rects = np.trunc(rects).astype(np.int64).tolist()
    grouped, votes = cv2.groupRectangles(rects, int(rect_thresh), float(rect_eps))
    out = [[x, y, x + w, y + h, math.log(int(v))]
           for (x, y, w, h), v in zip(np.asarray(grouped).reshape(-1, 4).tolist(), np.asarray(votes).reshape(-1))
           if h >= min_height]
    return np.asarray(out, dtype=np.float64).reshape(-1, 5)


def unique_rows_set_order(proposals: np.ndarray) -> np.ndarray:
    """The distinct rows of ``proposals`` in the iteration order of a Python set of their tuples."""
    seen = set(map(tuple, proposals))
    return np.asarray(list(seen), dtype=np.float64).reshape(-1, 4)


def _store(rows: np.ndarray, out: np.ndarray) -> None:
    rows = rows[:MAX_BOXES].astype(np.float16)
    out[: rows.shape[0], : rows.shape[1]] = rows


class _GridClustering(caffe.Layer):
    groundtruth = False

    def _check_tops(self, top) -> None:
        if len(top) != self.num_classes:
            raise ValueError(f"Unexpected number of tops: {len(top)} != {self.num_classes}")

    def reshape(self, bottom, top):
        n, classes = bottom[0].data.shape[:2]
        if classes != self.num_classes:
            raise ValueError(f"Unexpected number of classes: {classes} != {self.num_classes}, "
                             f"bottom[0] shape={bottom[0].data.shape!r}")
        for t in top:
            t.reshape(n, MAX_BOXES, 5)

    def image_boxes(self, cvg: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(self, bottom, top):
        cvg, boxes = bottom[0].data, bottom[1].data
        for c in range(self.num_classes):
            out = np.zeros((cvg.shape[0], MAX_BOXES, 5))
            for i in range(cvg.shape[0]):
                _store(self.image_boxes(cvg[i, c], boxes[i]), out[i])
            top[c].data[...] = out

    def backward(self, top, propagate_down, bottom):
        pass


class ClusterDetections(_GridClustering):
    """Predicted coverage + boxes -> per class (N, 50, 5) ``x1, y1, x2, y2, confidence`` (module docstring)."""

    def setup(self, bottom, top):
        (self.image_size_x, self.image_size_y, self.stride, self.gridbox_cvg_threshold, self.gridbox_rect_thresh,
         self.gridbox_rect_eps, self.min_height, self.num_classes) = _parse(
            self.param_str, [int, int, int, float, int, float, int])
        self._check_tops(top)

    def image_boxes(self, cvg, boxes):
        proposals = grid_proposals(cvg, boxes, (self.image_size_x, self.image_size_y), self.stride,
                                   self.gridbox_cvg_threshold)
        return group_detections(proposals, self.gridbox_rect_thresh, self.gridbox_rect_eps, self.min_height)


class ClusterGroundtruth(_GridClustering):
    """Coverage + bbox labels -> per class (N, 50, 5) distinct ``x1, y1, x2, y2, 0`` (module docstring)."""

    groundtruth = True

    def setup(self, bottom, top):
        self.image_size_x, self.image_size_y, self.stride, self.num_classes = _parse(
            self.param_str, [int, int, int])
        self._check_tops(top)

    def image_boxes(self, cvg, boxes):
        proposals = grid_proposals(cvg, boxes, (self.image_size_x, self.image_size_y), self.stride, None)
        return unique_rows_set_order(proposals)


ClusterGroundTruth = ClusterGroundtruth  # the spelling people write; NVCaffe's class is ClusterGroundtruth

__all__ = ["MAX_BOXES", "ClusterDetections", "ClusterGroundtruth", "ClusterGroundTruth", "grid_proposals",
           "group_detections", "unique_rows_set_order"]
