"""Cascade R-CNN's form of ``DetectionEvaluate`` (zhaoweicai/cascade-rcnn @ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c,
``src/caffe/layers/detection_evaluate_layer.cpp`` with ``GetDetectionResults`` / ``GetGroundTruth`` /
``JaccardOverlap`` of ``src/caffe/util/bbox_util.cpp``). Registers no type: ``DetectionEvaluate``
(:mod:`neocaffe.layers.detection_evaluate`) hands a layer with three bottoms to :class:`CascadeEvaluate`
(SSD's layer takes two, so the bottom count tells the forms apart).

Bottoms: detections (D, 7) ``[image, x1, y1, x2, y2, label, score]`` in the network input's pixels (rows of
image -1 or label -1 skipped), ground truth (G, 8) ``[image, x1, y1, x2, y2, label, ignored, difficult]``
(EvalData's), and the input sizes (B, 2) ``[height, width]`` (EvalData's third top). Top (C - 1 + D', 5, 1, 1):
per class 1 .. C - 1 ``[-1, class, positives, -1, -1]``, then per detection ``[image, label, score, tp, fp]``
by image, then label (the fork's maps), best score first where the image has boxes of that label. Boxes
are compared after scaling from the input size to the original one: the k-th image holding detections
(over all forwards, wrapping) takes line k of ``name_size_file`` (``name height width``). A detection
matching a difficult box (with ``evaluate_difficult_gt: false``) counts as neither.

Deviation: equal scores keep the detections' order (the fork's ``std::sort`` leaves it unspecified).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.cascade_windows import bbox_overlap

__all__ = ["CascadeEvaluate"]


class CascadeEvaluate:
    """The fork's evaluation for one DetectionEvaluate layer (see the module docstring)."""

    def __init__(self, param: Any, error: Callable[[str], Exception]) -> None:
        p = param.detection_evaluate_param
        if not p.HasField("name_size_file"):
            raise error("detection_evaluate_param.name_size_file is needed by Cascade R-CNN's form (3 bottoms)")
        try:
            with open(p.name_size_file) as f:
                tokens = f.read().split()
        except OSError:
            raise error(f"Failed to open name size file: {p.name_size_file}") from None
        self.sizes = [(int(tokens[i + 1]), int(tokens[i + 2])) for i in range(0, len(tokens) - 2, 3)]
        if not self.sizes:
            raise error(f"name size file {p.name_size_file} lists no 'name height width' lines")
        self.count = 0
        self.error = error
        self.num_classes, self.threshold = int(p.num_classes), float(np.float32(p.overlap_threshold))
        self.difficult = bool(p.evaluate_difficult_gt)

    def reshape(self, shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        cols = [(tuple(s) + (1, 1))[1] for s in shapes]
        if cols != [7, 8, 2]:
            raise self.error(f"Cascade R-CNN's form takes detections (D, 7), ground truth (G, 8) and sizes (B, 2); "
                             f"received {[tuple(s) for s in shapes]}")
        return [(self.num_classes - 1 + int(shapes[0][0]), 5, 1, 1)]

    def forward(self, det_in: Tensor, gt_in: Tensor, size_in: Tensor) -> Tensor:
        det = det_in.detach().reshape(det_in.shape[0], 7).cpu().numpy().astype(np.float32)
        gt = gt_in.detach().reshape(gt_in.shape[0], 8).cpu().numpy().astype(np.float32)
        sizes = size_in.detach().reshape(size_in.shape[0], 2).cpu().numpy().astype(np.float32)
        det = det[(det[:, 0].astype(np.int64) != -1) & (det[:, 5].astype(np.int64) != -1)]
        gt = gt[gt[:, 0].astype(np.int64) != -1]
        d_img, d_lab = det[:, 0].astype(np.int64), det[:, 5].astype(np.int64)
        g_img, g_lab = gt[:, 0].astype(np.int64), gt[:, 5].astype(np.int64)
        if (d_lab == 0).any() or (g_lab <= 0).any():
            raise self.error("found background label 0 in the detections or a label <= 0 in the ground truth")
        counted = np.ones(len(gt), bool) if self.difficult else gt[:, 7] == 0
        rows = [[-1.0, c, float((counted & (g_lab == c)).sum()), -1.0, -1.0] for c in range(1, self.num_classes)]
        for img in np.unique(d_img):
            for lab in np.unique(d_lab[d_img == img]):
                sel = np.nonzero((d_img == img) & (d_lab == lab))[0]
                g_sel = np.nonzero((g_img == img) & (g_lab == lab))[0]
                if not len(g_sel):
                    rows += [[img, lab, det[i, 6], 0.0, 1.0] for i in sel]
                    continue
                if img >= len(sizes):
                    raise self.error(f"detections of image {img} but only {len(sizes)} input sizes")
                h, w = self.sizes[self.count]
                hr, wr = np.float32(h) / sizes[img, 0], np.float32(w) / sizes[img, 1]
                scale = np.array([wr, hr, wr, hr], np.float32)
                d_box, g_box = det[sel, 1:5] * scale, gt[g_sel, 1:5] * scale
                order = np.argsort(-det[sel, 6], kind="stable")
                ov = bbox_overlap(d_box[order][:, None, :], g_box[None, :, :])
                visited = np.zeros(len(g_sel), bool)
                for k, i in enumerate(sel[order]):
                    j = int(np.argmax(ov[k])) if ov.shape[1] else -1
                    tp = fp = 0.0
                    if ov[k, j] >= self.threshold:
                        if self.difficult or gt[g_sel[j], 7] == 0:
                            tp, fp = (0.0, 1.0) if visited[j] else (1.0, 0.0)
                            visited[j] = True
                    else:
                        fp = 1.0
                    rows.append([img, lab, det[i, 6], tp, fp])
            self.count = (self.count + 1) % len(self.sizes)
        out = np.asarray(rows, np.float32).reshape(-1, 5)
        return torch.as_tensor(out, device=det_in.device).to(det_in.dtype).reshape(-1, 5, 1, 1)
