"""SSD's boxes in pixels, as DetectionEvaluate compares them when it is given a ``name_size_file``
(weiliu89/caffe, branch ssd; ``OutputBBox``, ``ScaleBBox``, ``ClipBBox``, ``BBoxSize`` and
``JaccardOverlap(..., normalized=false)`` of ``src/caffe/util/bbox_util.cpp``), in float32 as the fork's
NormalizedBBox.

A box scaled to an image by ``OutputBBox`` keeps the size ``ScaleBBox`` gives it: ``(w + 1) * (h + 1)``
for an image larger than 1 x 1 (its ``normalized`` test), ``w * h`` for a 1 x 1 image and on the
``FIT_SMALL_SIZE`` path with ``height_scale``/``width_scale`` (whose last step, ``ClipBBox``, sets the size
with the normalized rule); 0 for an invalid box. ``JaccardOverlap`` in pixels adds 1 to the intersection's
width and height, but divides by those stored sizes; and two disjoint boxes intersect in IntersectBBox's
``[0, 0, 0, 0]``, which counts as one pixel there: overlap ``1 / (size_a + size_b - 1)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neocaffe.layers._detection_save import output_bbox
from neocaffe.proto import caffe_pb2

__all__ = ["pixel_boxes", "pixel_iou"]

_F = np.float32
_RP = caffe_pb2.ResizeParameter


def pixel_boxes(boxes: Any, height: Any, width: Any, resize: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes in pixels (K, 4), their stored sizes (K,)) of normalized ``boxes`` for images of ``height`` x
    ``width`` (one per box); ``resize``: DetectionEvaluate's ``resize_param``, or None."""
    px = output_bbox(boxes, height, width, resize)
    h, w = np.broadcast_to(np.asarray(height), len(px)), np.broadcast_to(np.asarray(width), len(px))
    bw, bh = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
    small_fit = (resize is not None and resize.resize_mode == _RP.FIT_SMALL_SIZE
                 and resize.height_scale != 0 and resize.width_scale != 0)
    plain = np.full(len(px), small_fit) | ~((w > 1) | (h > 1))
    size = np.where(plain, bw * bh, (bw + _F(1)) * (bh + _F(1))).astype(_F)
    return px, np.where((bw < 0) | (bh < 0), _F(0), size).astype(_F)


def pixel_iou(a: np.ndarray, size_a: np.ndarray, b: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """``JaccardOverlap(a_i, b_j, false)`` for every pair: (K, M) float32."""
    a1, b1 = a[:, None, :], b[None, :, :]
    disjoint = ((b1[..., 0] > a1[..., 2]) | (b1[..., 2] < a1[..., 0])
                | (b1[..., 1] > a1[..., 3]) | (b1[..., 3] < a1[..., 1]))
    zero = _F(0)
    x0 = np.where(disjoint, zero, np.maximum(a1[..., 0], b1[..., 0]))
    y0 = np.where(disjoint, zero, np.maximum(a1[..., 1], b1[..., 1]))
    x1 = np.where(disjoint, zero, np.minimum(a1[..., 2], b1[..., 2]))
    y1 = np.where(disjoint, zero, np.minimum(a1[..., 3], b1[..., 3]))
    iw, ih = (x1 - x0 + _F(1)).astype(_F), (y1 - y0 + _F(1)).astype(_F)
    inter = (iw * ih).astype(_F)
    union = (size_a[:, None] + size_b[None, :] - inter).astype(_F)
    ok = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, inter / np.where(ok, union, _F(1)), zero).astype(_F)
