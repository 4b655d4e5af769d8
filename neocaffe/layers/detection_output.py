"""SSD's DetectionOutput (lineage: weiliu89/caffe, branch ssd; ``src/caffe/layers/detection_output_layer.cpp``
with ``DecodeBBoxesAll``, ``ApplyNMSFast`` and ``GetMaxScoreIndex`` of ``src/caffe/util/bbox_util.cpp``), with
RefineDet's anchor refinement (lineage: sfzhang15/RefineDet @ a9ca4b2, the same files there).

Bottoms: location offsets (N, P*L*4) (L = 1 with ``share_location``, else ``num_classes``),
confidences (N, P*num_classes), priors (1, 2, P*4) from PriorBox. Per image and per class other than
``background_label_id``: the boxes scoring above ``confidence_threshold``, best first (ties in prior
order), at most ``nms_param.top_k``, then greedy NMS at ``nms_threshold``; then ``keep_top_k`` best
of the image. Top (1, 1, D, 7): ``[image, label, score, xmin, ymin, xmax, ymax]`` per detection, by
image, then label, then score; no detection at all gives one row ``[i, -1, ...]`` per image.

``save_output_param`` writes the fork's result files (VOC per-class lists, COCO JSON, ILSVRC list) once
per forward, on every path a net runs (eager, lean, compiled): :mod:`neocaffe.layers._detection_save`
says how, and where it parts from the fork. ``visualize`` draws the detections on the images of a fourth
bottom (SSD's video and webcam demo nets pass ``data``) into an OpenCV window and/or the video
``save_file``: :mod:`neocaffe.layers._detection_visualize`. Without ``visualize`` the fourth bottom is
accepted, as in the fork, and not read.

RefineDet's form adds the ARM's bottoms: ``loc, conf, prior, arm_conf[, arm_loc]`` (its nets pass
``odm_loc, odm_conf_flatten, arm_priorbox, arm_conf_flatten, arm_loc``). Priors whose ARM objectness is below
``objectness_score`` score as class 0, and the ODM's offsets decode from the priors refined by ``arm_loc``:
:mod:`neocaffe.layers._refinedet` (also how a fourth bottom is told apart from SSD's image bottom).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import _bbox, _refinedet
from neocaffe.layers._detection_save import DetectionSaver, label_names, make_saver, read_name_sizes
from neocaffe.layers._detection_visualize import DetectionVisualizer
from neocaffe.layers._pixel_boxes import pixel_boxes, pixel_iou
from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.registry import register_layer

log = logging.getLogger(__name__)
_FLT_MAX = float(np.finfo(np.float32).max)


def _sorted_candidates(scores: Tensor, threshold: float, top_k: int) -> tuple[Tensor, Tensor]:
    """Per row of ``scores`` [G, P]: the indices of the entries above ``threshold``, best first (stable),
    at most ``top_k`` (GetMaxScoreIndex), as (index [G, K], valid [G, K])."""
    above = scores > threshold
    count = above.sum(dim=1)
    if top_k > -1:
        count = count.clamp(max=top_k)
    k = int(count.max()) if count.numel() else 0
    keyed = torch.where(above, scores, torch.full_like(scores, -float("inf")))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices[:, :k]
    valid = torch.arange(k, device=scores.device).unsqueeze(0) < count.unsqueeze(1)
    return order, valid


def detect(loc: Tensor, conf: Tensor, prior: Tensor, *, num_classes: int, share_location: bool,
           background: int, code_type: int, variance_in_target: bool, confidence_threshold: float,
           nms_threshold: float, top_k: int, keep_top_k: int, eta: float = 1.0,
           arm_conf: Tensor | None = None, arm_loc: Tensor | None = None, objectness_score: float = 0.0) -> Tensor:
    """DetectionOutput's forward on plain tensors; returns the (D, 7) detection rows (D may be 0). With
    RefineDet's ``arm_conf`` / ``arm_loc``: the objectness masking and the decoding from refined priors."""
    n = loc.shape[0]
    num_priors = prior.shape[-1] // 4
    loc_classes = 1 if share_location else num_classes
    pri = prior.reshape(-1)[: 2 * num_priors * 4].view(2, num_priors, 4)
    base = pri[0] if arm_loc is None else \
        _refinedet.refined_priors(pri[0], pri[1], arm_loc, code_type, variance_in_target).unsqueeze(1)
    decoded = _bbox.decode(base, pri[1], loc.reshape(n, num_priors, loc_classes, 4).transpose(1, 2),
                           code_type, variance_in_target)                      # [N, L, P, 4]
    classes = torch.tensor([c for c in range(num_classes) if c != background], dtype=torch.long,
                           device=loc.device)
    nc = len(classes)
    conf = conf.reshape(n, num_priors, num_classes)
    if arm_conf is not None:
        conf = _refinedet.masked_scores(conf, arm_conf, objectness_score)
    scores = conf[:, :, classes].transpose(1, 2)   # [N, C', P]
    boxes = decoded.expand(n, nc, num_priors, 4) if share_location else decoded[:, classes]
    scores, boxes = scores.reshape(n * nc, num_priors), boxes.reshape(n * nc, num_priors, 4)
    order, valid = _sorted_candidates(scores, confidence_threshold, top_k)
    cand_boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    cand_scores = torch.gather(scores, 1, order)
    if eta < 1:
        keep = _bbox.adaptive_nms(cand_boxes, valid, nms_threshold, eta)
    else:
        keep = _bbox.greedy_nms(cand_boxes, valid, nms_threshold)
    g, k = torch.nonzero(keep, as_tuple=True)              # image-major, then label, then score order
    image = torch.div(g, nc, rounding_mode="floor")
    label = classes[g % nc]
    score = cand_scores[g, k]
    box = cand_boxes[g, k]
    if keep_top_k > -1 and g.numel():
        # per image, the keep_top_k best (ties: the fork's label-then-rank order)
        by_score = torch.sort(score, descending=True, stable=True).indices
        by_image = by_score[torch.sort(image[by_score], stable=True).indices]
        first = torch.searchsorted(image[by_image], image[by_image], right=False)
        rank = torch.arange(by_image.numel(), device=loc.device) - first
        chosen = torch.zeros(g.numel(), dtype=torch.bool, device=loc.device)
        chosen[by_image[rank < keep_top_k]] = True
        image, label, score, box = image[chosen], label[chosen], score[chosen], box[chosen]
    return torch.cat([image.unsqueeze(1).to(loc.dtype), label.unsqueeze(1).to(loc.dtype),
                      score.unsqueeze(1), box], dim=1)


def _save(saver: DetectionSaver, rows: Tensor, num_images: int) -> None:
    """The result files' share of a forward (file work: run behind ``torch.compiler.disable``, never traced
    into a compiled graph)."""
    saver.save(rows.detach().cpu().numpy(), num_images)


def _draw(visualizer: DetectionVisualizer, image: Tensor, rows: Tensor) -> None:
    """``visualize``'s share of a forward (drawing and video work: behind ``torch.compiler.disable`` too)."""
    visualizer(image.detach().float().cpu().numpy(), rows.detach().cpu().numpy())


def check_heads(layer: Layer, bottom_shapes: list[Shape], loc_classes: int, num_classes: int) -> int:
    """The fork's Reshape checks of the location, confidence and prior bottoms; the number of priors."""
    loc, conf, prior = bottom_shapes[:3]
    num_priors = (prior[2] if len(prior) > 2 else 1) // 4
    if loc[0] != conf[0]:
        raise layer.error(f"location and confidence bottoms differ in num: {loc[0]} vs {conf[0]}")
    if int(np.prod(loc[1:])) != num_priors * loc_classes * 4:
        raise layer.error(f"number of priors ({num_priors}) must match number of location predictions; "
                          f"received location shape {loc}, expected {num_priors * loc_classes * 4} per image")
    if int(np.prod(conf[1:])) != num_priors * num_classes:
        raise layer.error(f"number of priors ({num_priors}) must match number of confidence predictions; "
                          f"received confidence shape {conf}, expected {num_priors * num_classes} per image")
    return num_priors


@register_layer("DetectionOutput")
class DetectionOutput(Layer):
    """``detection_output_param``: ``num_classes`` (required), ``share_location``,
    ``background_label_id``, ``code_type``, ``variance_encoded_in_target``, ``confidence_threshold``,
    ``nms_param {nms_threshold top_k eta}``, ``keep_top_k``, ``save_output_param`` (result files); RefineDet's
    ``objectness_score`` (with the ARM bottoms)."""

    value_dependent_shape = True

    min_bottoms = 3
    max_bottoms = 5  # SSD's visualize reads images from a fourth bottom; RefineDet's arm_conf, arm_loc
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("detection_output_param: must specify num_classes")
        self.num_classes = int(p.num_classes)
        self.share_location = p.share_location
        self.background = int(p.background_label_id)
        self.code_type = int(p.code_type)
        self.variance_in_target = p.variance_encoded_in_target
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = float(p.confidence_threshold) if p.HasField("confidence_threshold") else -_FLT_MAX
        self.nms_threshold = float(p.nms_param.nms_threshold)
        if self.nms_threshold < 0:
            raise self.error(f"nms_param.nms_threshold must be non negative; received {self.nms_threshold}")
        self.eta = float(p.nms_param.eta)
        if not 0 < self.eta <= 1:
            raise self.error(f"nms_param.eta must be in (0, 1]; received {self.eta}")
        self.top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1
        self.arm_conf_at, self.arm_loc_at, self.image_at = _refinedet.detection_output_bottoms(
            p, bottom_shapes, self.error)
        if self.arm_loc_at is not None and not self.share_location:
            raise _refinedet.share_error(self.error)
        _refinedet.check_arm(self.error, bottom_shapes, _refinedet.num_priors(bottom_shapes), self.arm_conf_at,
                             self.arm_loc_at)
        self.objectness_score = _refinedet.objectness_score(p)
        self.visualizer = self._visualizer(p, len(bottom_shapes)) if p.visualize else None
        self.saver: DetectionSaver | None = make_saver(
            p.save_output_param, num_classes=self.num_classes, background=self.background,
            keep_top_k=self.keep_top_k, layer_name=self.name, error=self.error)
        # wrapped here, and only when used: the decorator imports torch._dynamo, which at this module's import
        # made every `import caffe` 2.5 s slower (torch 2.13, CPU)
        self.save_rows = torch.compiler.disable(_save) if self.saver is not None else None
        self.draw_rows = torch.compiler.disable(_draw) if self.visualizer is not None else None

    def _visualizer(self, p: Any, n_bottoms: int) -> DetectionVisualizer:
        """``visualize``: the images come from bottom 3, names and colours from the label map."""
        from neocaffe.data.transformer import load_mean_file

        if n_bottoms < 4:
            raise self.error("detection_output_param.visualize draws on the images of a fourth bottom (SSD's demo "
                             f"nets pass 'data'); received {n_bottoms} bottoms")
        sp = p.save_output_param
        if not sp.label_map_file:
            raise self.error("detection_output_param.visualize needs save_output_param.label_map_file: the fork "
                             "takes each label's display name and colour from it (and stops without one)")
        tp = self.param.transform_param
        try:
            mean = load_mean_file(tp.mean_file) if tp.HasField("mean_file") else None
            return DetectionVisualizer(tp, mean, p.visualize_threshold if p.HasField("visualize_threshold") else 0.6,
                                       label_names(sp.label_map_file, self.error, "display_name"), p.save_file,
                                       self.name)
        except (ValueError, OSError) as e:  # a mean file that cannot be read, two resize_param
            raise self.error(f"visualize: {e}") from None

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        num_priors = check_heads(self, bottom_shapes, 1 if self.share_location else self.num_classes, self.num_classes)
        _refinedet.check_arm(self.error, bottom_shapes, num_priors, self.arm_conf_at, self.arm_loc_at)
        return [(1, 1, 1, 7)]

    def close(self) -> None:
        """Finish ``visualize``'s video (``Net.close``; else at garbage collection)."""
        if self.visualizer is not None:
            self.visualizer.close()

    def forward(self, loc: Tensor, conf: Tensor, prior: Tensor, *extra: Tensor) -> Tensor:
        image = extra[0] if self.image_at is not None else None
        arm_conf = extra[0].detach() if self.arm_conf_at is not None else None
        arm_loc = extra[1].detach() if self.arm_loc_at is not None else None
        with torch.no_grad():
            rows = detect(loc.detach(), conf.detach(), prior.detach(), num_classes=self.num_classes,
                          share_location=self.share_location, background=self.background,
                          code_type=self.code_type, variance_in_target=self.variance_in_target,
                          confidence_threshold=self.confidence_threshold, nms_threshold=self.nms_threshold,
                          top_k=self.top_k, keep_top_k=self.keep_top_k, eta=self.eta, arm_conf=arm_conf,
                          arm_loc=arm_loc, objectness_score=self.objectness_score)
        if rows.shape[0] == 0:
            n = loc.shape[0]
            rows = torch.full((n, 7), -1.0, dtype=loc.dtype, device=loc.device)
            rows[:, 0] = torch.arange(n, dtype=loc.dtype, device=loc.device)
        if self.save_rows is not None and rows.device.type != "meta":
            self.save_rows(self.saver, rows, loc.shape[0])
        if self.draw_rows is not None and image is not None and rows.device.type != "meta":
            self.draw_rows(self.visualizer, image, rows)
        return rows.view(1, 1, -1, 7)

    @classmethod
    def examples(cls) -> list[Example]:
        # two priors on one cell, one object class: the better box survives, the other is suppressed
        prior = np.array([[[0.1, 0.1, 0.5, 0.5, 0.12, 0.1, 0.52, 0.5],
                           [0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.2, 0.2]]])
        loc = np.array([[0.1, -0.2, 0.3, 0.1, 0.0, 0.1, 0.2, -0.1]])
        conf = np.array([[0.2, 0.8, 0.3, 0.7]])
        return [Example('name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "d" '
                        'detection_output_param { num_classes: 2 share_location: true background_label_id: 0 '
                        'nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE keep_top_k: 5 '
                        'confidence_threshold: 0.1 }', [loc, conf, prior], grad_bottoms=(), grad_params=False),
                Example('name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" '
                        'bottom: "data" top: "d" detection_output_param { num_classes: 2 background_label_id: 0 '
                        'nms_param { nms_threshold: 0.45 } keep_top_k: 5 confidence_threshold: 0.1 }',
                        [loc, conf, prior, np.zeros((1, 3, 4, 4))], grad_bottoms=(), grad_params=False),
                # RefineDet: the ARM's scores (the second prior is an easy negative) and offsets
                Example('name: "det" type: "DetectionOutput" bottom: "odm_loc" bottom: "odm_conf" bottom: "prior" '
                        'bottom: "arm_conf" bottom: "arm_loc" top: "d" detection_output_param { num_classes: 2 '
                        'nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE keep_top_k: 5 '
                        'confidence_threshold: 0.1 objectness_score: 0.01 }',
                        [loc, conf, prior, np.array([[0.3, 0.7, 0.995, 0.005]]),
                         np.array([[0.2, 0.1, -0.1, 0.2, 0.0, 0.0, 0.0, 0.0]])], grad_bottoms=(), grad_params=False)]


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
    6: never by a default). Without it, or with another ``num_classes``, SSD's counting is kept."""

    value_dependent_shape = True

    exact_bottoms = 2
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.detection_evaluate_param
        if not p.HasField("num_classes"):
            raise self.error("detection_evaluate_param: must provide num_classes")
        if p.overlap_threshold <= 0:
            raise self.error("detection_evaluate_param.overlap_threshold must be positive")
        self.sizes = ([(h, w) for _, h, w in read_name_sizes(p.name_size_file, self.error, "detection_evaluate_param")]
                      if p.HasField("name_size_file") else [])
        self.resize = p.resize_param if p.HasField("resize_param") else None
        self.count = 0  # the name file's entry of the next image (the fork's count_)
        self.num_classes, self.background = int(p.num_classes), int(p.background_label_id)
        self.threshold, self.difficult = float(p.overlap_threshold), p.evaluate_difficult_gt
        self.two_class = bool(p.refinedet_labels) and self.num_classes == 2  # RefineDet's GetGroundTruth

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        det, gt = bottom_shapes
        if det[-1] != 7 or gt[-1] != 8:
            raise self.error(f"expects detections (1, 1, D, 7) and ground truth (1, 1, G, 8); received {det}, {gt}")
        positives = self.num_classes - (0 if self.background == -1 else 1)
        return [(1, 1, positives + 1, 5)]

    def forward(self, det_in: Tensor, gt_in: Tensor) -> Tensor:
        det, gt = det_in.detach().reshape(-1, 7), gt_in.detach().reshape(-1, 8)
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
        return [Example(param, [det, gt], grad_bottoms=(), grad_params=False),
                Example(param, [det, no_gt], grad_bottoms=(), grad_params=False)]

