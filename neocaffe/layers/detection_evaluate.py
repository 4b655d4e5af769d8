"""SSD's DetectionEvaluate (lineage: weiliu89/caffe, branch ssd; ``src/caffe/layers/detection_evaluate_layer.cpp``
with ``GetDetectionResults``/``GetGroundTruth`` of ``src/caffe/util/bbox_util.cpp``), with RefineDet's two-class
reading (sfzhang15/RefineDet @ a9ca4b2) and TextBoxes++'s row forms (MhLiao/TextBoxes_plusplus @ 39d4898). The
class docstring has the details. A layer with three bottoms is Cascade R-CNN's (zhaoweicai/cascade-rcnn @ 2252f46):
it is handed to :class:`neocaffe.layers.cascade_eval.CascadeEvaluate`."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import _bbox
from neocaffe.layers._detection_save import read_name_sizes
from neocaffe.layers._pixel_boxes import pixel_boxes, pixel_iou
from neocaffe.layers._textboxes import eval_form
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.cascade_eval import CascadeEvaluate
from neocaffe.layers.registry import register_layer


@register_layer("DetectionEvaluate")
class DetectionEvaluate(Layer):
    """SSD's DetectionEvaluate (``detection_evaluate_layer.cpp``): DetectionOutput's detections (bottom 0)
    against AnnotatedData's ground truth (bottom 1). Top (1, 1, C' + D, 5): per class other than the
    background ``[-1, label, positives, -1, -1]``, then per detection ``[image, label, score, tp, fp]``
    by image and label (best first where the image has boxes of the label); a detection is a true
    positive when its best-overlapping box of the label overlaps by ``overlap_threshold`` and no better
    detection took that box. With ``name_size_file`` (``name height width`` per test image, in the data
    layer's order; SSD's test nets set it) the boxes are compared in pixels, as the fork does: the k-th
    image holding detection rows in this forward (by image index) is the name file's entry after the
    previous forwards' images, wrapping at its end; detections and the ground truth of their label are
    scaled by ``OutputBBox`` (with ``resize_param``) and overlap by ``JaccardOverlap``'s pixel rule
    (:mod:`neocaffe.layers._pixel_boxes`). The running count is not part of a snapshot (nor is it in Caffe).

    RefineDet's form (sfzhang15/RefineDet @ a9ca4b2, ``detection_evaluate_layer.cpp`` calling its
    ``GetGroundTruth`` of ``bbox_util.cpp``, the one difference from SSD's layer): with ``num_classes`` 2
    the ground truth's labels >= 2 count as label 1 (the ARM's object class), in the positives of the header
    and in the matching. RefineDet's schema gives this message no field of its own, so the fork's text and
    SSD's read alike; neocaffe's ``refinedet_labels: true`` asks for RefineDet's reading (NUMBERING.md, rule
    6: never by a default). Without it, or with another ``num_classes``, SSD's counting is kept.

    TextBoxes++'s form (MhLiao/TextBoxes_plusplus @ 39d4898, ``detection_evaluate_layer.cpp``): detections of 15
    columns (``use_polygon``, the fork's default: box then quadrilateral) or 12 (``use_polygon: false``: box then
    rotated box) against its AnnotatedData's 16-column ground truth; the fork reads the quadrilaterals and
    matches by the horizontal boxes' JaccardOverlap all the same, so the rows are SSD's evaluation of the first
    7 (8) columns (told by the field when set, else by the detections' width:
    :func:`neocaffe.layers._textboxes.eval_form`).

    Cascade R-CNN's form (zhaoweicai/cascade-rcnn @ 2252f46, ``detection_evaluate_layer.cpp``): three bottoms
    (detections (D, 7), EvalData's ground truth (G, 8) and input sizes (B, 2)); SSD's layer takes exactly two,
    so the bottom count tells the forms apart (:mod:`neocaffe.layers.cascade_eval` has the semantics)."""

    value_dependent_shape = True

    exact_bottoms = None
    min_bottoms = 2
    max_bottoms = 3
    exact_tops = 1
    allow_in_place = False
    cascade: CascadeEvaluate | None = None

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.detection_evaluate_param
        if not p.HasField("num_classes"):
            raise self.error("detection_evaluate_param: must provide num_classes")
        if p.overlap_threshold <= 0:
            raise self.error("detection_evaluate_param.overlap_threshold must be positive")
        if len(bottom_shapes) == 3:   # Cascade R-CNN's form
            self.cascade = CascadeEvaluate(self.param, self.error)
            return
        self.sizes = ([(h, w) for _, h, w in read_name_sizes(p.name_size_file, self.error, "detection_evaluate_param")]
                      if p.HasField("name_size_file") else [])
        self.resize = p.resize_param if p.HasField("resize_param") else None
        self.count = 0  # the name file's entry of the next image (the fork's count_)
        self.num_classes, self.background = int(p.num_classes), int(p.background_label_id)
        self.threshold, self.difficult = float(p.overlap_threshold), p.evaluate_difficult_gt
        self.two_class = bool(p.refinedet_labels) and self.num_classes == 2  # RefineDet's GetGroundTruth
        self.det_cols, self.gt_cols = eval_form(p, tuple(bottom_shapes[0]), self.error)   # TextBoxes++'s forms

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        if self.cascade is not None:
            return self.cascade.reshape(bottom_shapes)
        det, gt = bottom_shapes
        if det[-1] != self.det_cols or gt[-1] != self.gt_cols:
            raise self.error(f"expects detections (1, 1, D, {self.det_cols}) and ground truth (1, 1, G, "
                             f"{self.gt_cols}); received {det}, {gt}")
        positives = self.num_classes - (0 if self.background == -1 else 1)
        return [(1, 1, positives + 1, 5)]

    def forward(self, det_in: Tensor, gt_in: Tensor, size_in: Tensor | None = None) -> Tensor:
        if self.cascade is not None:
            return self.cascade.forward(det_in, gt_in, size_in)
        det = det_in.detach().reshape(-1, self.det_cols)[:, :7]    # TextBoxes++'s: the horizontal boxes
        gt = gt_in.detach().reshape(-1, self.gt_cols)[:, :8]
        det = det[det[:, 0].to(torch.int64) != -1]
        images = torch.unique(det[:, 0].to(torch.int64))   # the images in GetDetectionResults' map, in order
        ends = torch.nonzero(gt[:, 0].to(torch.int64) == -1)
        gt = gt[: int(ends[0]) if len(ends) else len(gt)]                     # GetGroundTruth stops there
        g_item, g_label = gt[:, 0].to(torch.int64), gt[:, 1].to(torch.int64)
        if self.two_class:
            g_label = torch.where(g_label >= 2, torch.ones_like(g_label), g_label)
        g_diff = gt[:, 7] != 0
        classes = [c for c in range(self.num_classes) if c != self.background]
        counted = torch.ones_like(g_diff) if self.difficult else ~g_diff
        header = [[-1.0, c, float((counted & (g_label == c)).sum()), -1.0, -1.0] for c in classes]
        d_item, d_label = det[:, 0].to(torch.int64), det[:, 1].to(torch.int64)
        det, d_item, d_label = det[d_label != -1], d_item[d_label != -1], d_label[d_label != -1]
        if bool((d_label == self.background).any()):
            raise self.error(f"found background label {self.background} in the detection results")
        same = (d_item[:, None] == g_item[None, :]) & (d_label[:, None] == g_label[None, :])     # [D, G]
        has_gt = same.any(dim=1)
        # order: image, label; by descending score where the image has boxes of that label
        score_key = torch.where(has_gt, -det[:, 2], torch.zeros_like(det[:, 2]))
        order = torch.sort(score_key, stable=True).indices
        for key in (d_label, d_item):
            order = order[torch.sort(key[order], stable=True).indices]
        det, d_item, d_label, same, has_gt = det[order], d_item[order], d_label[order], same[order], has_gt[order]
        if self.sizes and len(gt):
            overlap = self._pixel_overlaps(det, d_item, gt, g_item, images)
        else:
            overlap = _bbox.iou(det[:, 3:7], gt[:, 3:7])
        if self.sizes:
            self.count = (self.count + len(images)) % len(self.sizes)
        ov = torch.where(same, overlap, -2.0) if len(gt) else det.new_zeros(len(det), 0)
        jmax = ov.argmax(dim=1) if ov.shape[1] else torch.zeros(len(det), dtype=torch.int64, device=det.device)
        best = ov.gather(1, jmax[:, None]).squeeze(1) if ov.shape[1] else det.new_full((len(det),), -1.0)
        hit = has_gt & (best >= self.threshold)
        scored = hit & (counted[jmax] if len(gt) else torch.zeros_like(hit))
        # a true positive is the first scored detection (in this order) on its ground-truth box
        key = torch.where(scored, jmax, torch.full_like(jmax, -1))
        first = torch.zeros_like(scored)
        if bool(scored.any()):
            idx = torch.nonzero(scored).flatten()
            uniq, inv = torch.unique(key[idx], return_inverse=True)
            firsts = idx.new_full((len(uniq),), len(det)).scatter_reduce(0, inv, idx, "amin")
            first[firsts] = True
        tp = first.to(det.dtype)
        fp = torch.where(scored, 1 - tp, torch.where(hit, torch.zeros_like(tp), torch.ones_like(tp)))
        rows = torch.stack([d_item.to(det.dtype), d_label.to(det.dtype), det[:, 2], tp, fp], dim=1)
        out = torch.cat([torch.tensor(header, dtype=det.dtype, device=det.device).reshape(-1, 5), rows])
        return out.view(1, 1, -1, 5)

    def _pixel_overlaps(self, det: Tensor, d_item: Tensor, gt: Tensor, g_item: Tensor, images: Tensor) -> Tensor:
        """JaccardOverlap in pixels of every detection with every ground-truth box (each scaled to its
        image's entry of the name file; boxes of images without detections are never compared)."""
        ids = images.cpu().numpy()
        entry = {int(i): self.sizes[(self.count + k) % len(self.sizes)] for k, i in enumerate(ids)}

        def scaled(boxes: Tensor, items: Tensor) -> tuple[np.ndarray, np.ndarray]:
            hw = np.array([entry.get(int(i), (1, 1)) for i in items.cpu().numpy()], np.int64).reshape(-1, 2)
            return pixel_boxes(boxes.cpu().numpy(), hw[:, 0], hw[:, 1], self.resize)

        (dp, ds), (gp, gs) = scaled(det[:, 3:7], d_item), scaled(gt[:, 3:7], g_item)
        return torch.from_numpy(pixel_iou(dp, ds, gp, gs)).to(device=det.device, dtype=det.dtype)

    @classmethod
    def examples(cls) -> list[Example]:
        det = np.array([[[[0, 1, 0.9, 0.1, 0.1, 0.4, 0.4]]]])   # one detection: the shape Reshape gives
        gt = np.array([[[[0, 1, 0, 0.1, 0.1, 0.4, 0.4, 0], [0, 2, 0, 0.0, 0.0, 0.2, 0.2, 1]]]])
        no_gt = np.array([[[[-1, 0, 0, 0, 0, 0, 0, 0]]]])  # GetGroundTruth stops at item -1: none at all
        param = ('name: "e" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "e" '
                 'detection_evaluate_param { num_classes: 3 background_label_id: 0 overlap_threshold: 0.5 }')
        quad = [0.1, 0.1, 0.4, 0.12, 0.4, 0.4, 0.1, 0.38]      # TextBoxes++'s 15 / 16 columns
        det15 = np.array([[[[0, 1, 0.9, 0.1, 0.1, 0.4, 0.4] + quad]]])
        gt16 = np.array([[[[0, 1, 0, 0.1, 0.1, 0.4, 0.4, 0] + quad]]])
        return [Example(param, [det, gt], grad_bottoms=(), grad_params=False),
                Example(*_cascade_example(), grad_bottoms=(), grad_params=False),
                Example(param, [det, no_gt], grad_bottoms=(), grad_params=False),
                Example(param, [det15, gt16], grad_bottoms=(), grad_params=False)]


def _cascade_example() -> tuple[str, list]:
    """Cascade R-CNN's form (3 bottoms): a name size file in the example folder, two images' detections."""
    import os

    from neocaffe.data.examples import example_folder

    path = os.path.join(example_folder(), "cascade_name_size.txt")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("a 64 80\nb 40 40\n")
    det = np.array([[0, 10, 10, 30, 30, 1, 0.9], [0, 12, 11, 29, 31, 1, 0.8], [1, 5, 5, 20, 20, 2, 0.7]])
    gt = np.array([[0, 11, 10, 30, 29, 1, 0, 0], [1, 0, 0, 10, 10, 1, 0, 1]])
    size = np.array([[32, 40], [40, 40]])
    return (f'name: "e" type: "DetectionEvaluate" bottom: "det" bottom: "gt" bottom: "size" top: "e" '
            f'detection_evaluate_param {{ num_classes: 3 overlap_threshold: 0.5 name_size_file: "{path}" }}',
            [det, gt, size])
