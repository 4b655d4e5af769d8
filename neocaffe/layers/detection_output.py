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

TextBoxes++'s form (MhLiao/TextBoxes_plusplus @ 39d4898, the same files there): 12 location values per prior
(box + quadrilateral, ``use_polygon``, the fork's default) or 9 (box + rotated box, ``use_polygon: false``); the
box is SSD's and so is the NMS, and the top's rows carry the decoded quadrilateral (15 columns) or rotated box
(12): :mod:`neocaffe.layers._textboxes` (also how the form is told from SSD's).

TextBoxes v1 (MhLiao/TextBoxes @ fd4d7a96, ``src/caffe/layers/detection_output_layer.cpp``, weiliu89/caffe ssd's
of 0c16cf69): in a net of lineage ``"textboxes_v1"`` no detection at all gives one row of -1 for the whole batch
(image id -1 too), not a ``[i, -1, ...]`` row per image.

DetectionEvaluate, which scores these rows against the ground truth, is :mod:`neocaffe.layers.detection_evaluate`.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers import _bbox, _faceboxes_priors, _refinedet, _textboxes, _textboxes_v1
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers._detection_save import DetectionSaver, label_names, make_saver
from neocaffe.layers._detection_visualize import DetectionVisualizer
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
           arm_conf: Tensor | None = None, arm_loc: Tensor | None = None, objectness_score: float = 0.0,
           extra: Tensor | None = None) -> Tensor:
    """DetectionOutput's forward on plain tensors; returns the (D, 7) detection rows (D may be 0). With
    RefineDet's ``arm_conf`` / ``arm_loc``: the objectness masking and the decoding from refined priors. With
    TextBoxes++'s decoded ``extra`` coordinates [N, L, P, E]: each row carries its prior's E values after the
    box (D, 7 + E)."""
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
    if extra is not None:
        e = extra.shape[-1]
        extra = (extra.expand(n, nc, num_priors, e) if share_location else extra[:, classes]).reshape(
            n * nc, num_priors, e)
        cand_extra = torch.gather(extra, 1, order.unsqueeze(-1).expand(-1, -1, e))
    if eta < 1:
        keep = _bbox.adaptive_nms(cand_boxes, valid, nms_threshold, eta)
    else:
        keep = _bbox.greedy_nms(cand_boxes, valid, nms_threshold)
    g, k = torch.nonzero(keep, as_tuple=True)              # image-major, then label, then score order
    image = torch.div(g, nc, rounding_mode="floor")
    label = classes[g % nc]
    score = cand_scores[g, k]
    box = cand_boxes[g, k]
    if extra is not None:
        box = torch.cat([box, cand_extra[g, k]], dim=1)
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


def check_heads(layer: Layer, bottom_shapes: list[Shape], loc_classes: int, num_classes: int,
                per_prior: int = 4, hint: Callable[[int, int], str] | None = None) -> int:
    """The fork's Reshape checks of the location, confidence and prior bottoms; the number of priors.
    ``per_prior``: location values per prior (TextBoxes++'s forms: 9, 12). ``hint(received, expected_ssd)``:
    appended to a count error (:func:`prior_hint`)."""
    hint = hint or _no_hint
    loc, conf, prior = bottom_shapes[:3]
    num_priors = (prior[2] if len(prior) > 2 else 1) // 4
    if loc[0] != conf[0]:
        raise layer.error(f"location and confidence bottoms differ in num: {loc[0]} vs {conf[0]}")
    loc_count, conf_count = int(np.prod(loc[1:])), int(np.prod(conf[1:]))
    if loc_count != num_priors * loc_classes * per_prior:
        raise layer.error(f"number of priors ({num_priors}) must match number of location predictions; "
                          f"received location shape {loc}, expected {num_priors * loc_classes * per_prior} per image"
                          f"{hint(loc_count, num_priors * loc_classes * 4)}")
    if conf_count != num_priors * num_classes:
        raise layer.error(f"number of priors ({num_priors}) must match number of confidence predictions; "
                          f"received confidence shape {conf}, expected {num_priors * num_classes} per image"
                          f"{hint(conf_count, num_priors * num_classes)}")
    return num_priors


def _no_hint(received: int, expected_ssd: int) -> str:
    return ""


def prior_hint(layer: Layer) -> Callable[[int, int], str]:
    """For a prior-count error: ``hint(received, expected_ssd)``, the fix where the net looks like FaceBoxes'
    (``_faceboxes_priors``) or, a head of exactly twice SSD's count, TextBoxes v1's (``_textboxes_v1``); the
    net is read in ``setup``, while the layer is told of its net."""
    net = layer.net_so_far
    written = net.written if net is not None else None
    faceboxes = _faceboxes_priors.prior_count_hint(written)

    def hint(received: int, expected_ssd: int) -> str:
        return faceboxes + _textboxes_v1.count_hint(written, received, expected_ssd)
    return hint


@register_layer("DetectionOutput")
class DetectionOutput(Layer):
    """``detection_output_param``: ``num_classes`` (required), ``share_location``,
    ``background_label_id``, ``code_type``, ``variance_encoded_in_target``, ``confidence_threshold``,
    ``nms_param {nms_threshold top_k eta}``, ``keep_top_k``, ``save_output_param`` (result files); RefineDet's
    ``objectness_score`` (with the ARM bottoms); TextBoxes++'s ``use_polygon`` (``self.form``: 4, 9, 12)."""

    value_dependent_shape = True

    min_bottoms = 3
    max_bottoms = 5  # SSD's visualize reads images from a fourth bottom; RefineDet's arm_conf, arm_loc
    exact_tops = 1
    allow_in_place = False
    takes_net = True  # a prior-count error names FaceBoxes' / TextBoxes v1's lineage where the net looks like theirs

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.detection_output_param
        self.prior_hint = prior_hint(self)
        try:  # TextBoxes v1's (an ssd of July 2016): no detection at all is one row of -1 for the whole batch
            self.v1_empty = net_lineage(self.net_so_far) == _textboxes_v1.LINEAGE
        except ValueError:
            self.v1_empty = False
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
        self.form = self._form(bottom_shapes)
        if self.form != _textboxes.SSD and (self.arm_conf_at is not None or self.arm_loc_at is not None):
            raise self.error("TextBoxes++'s location form takes no RefineDet ARM bottoms")
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

    def _form(self, bottom_shapes: list[Shape]) -> int:
        """Location values per prior: SSD's 4 or TextBoxes++'s 9 / 12 (:func:`_textboxes.loc_form`)."""
        loc, prior = bottom_shapes[0], bottom_shapes[2]
        num_priors = (prior[2] if len(prior) > 2 else 1) // 4
        loc_classes, loc_count = 1 if self.share_location else self.num_classes, int(np.prod(loc[1:]))
        return _textboxes.loc_form(self.param.detection_output_param, loc_count, num_priors, loc_classes,
                                   lambda m: self._count_error(m, loc_count, num_priors * loc_classes * 4))

    def _count_error(self, message: str, received: int = 0, expected_ssd: int = 0) -> Exception:
        """The layer's error, with :func:`prior_hint`'s fix where it is about the number of priors."""
        if message.startswith("number of priors"):
            message += self.prior_hint(received, expected_ssd)
        return self.error(message)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        self.form = self._form(bottom_shapes)
        num_priors = check_heads(self, bottom_shapes, 1 if self.share_location else self.num_classes, self.num_classes,
                                 self.form, self.prior_hint)
        _refinedet.check_arm(self.error, bottom_shapes, num_priors, self.arm_conf_at, self.arm_loc_at)
        return [(1, 1, 1, _textboxes.COLUMNS[self.form])]

    def close(self) -> None:
        """Finish ``visualize``'s video (``Net.close``; else at garbage collection)."""
        if self.visualizer is not None:
            self.visualizer.close()

    def forward(self, loc: Tensor, conf: Tensor, prior: Tensor, *extra: Tensor) -> Tensor:
        image = extra[0] if self.image_at is not None else None
        arm_conf = extra[0].detach() if self.arm_conf_at is not None else None
        arm_loc = extra[1].detach() if self.arm_loc_at is not None else None
        cols = _textboxes.COLUMNS[self.form]
        extra = None
        with torch.no_grad():
            if self.form != _textboxes.SSD:
                loc, extra = _textboxes.split(loc.detach(), prior.detach(), self.form,
                                              1 if self.share_location else self.num_classes)
            rows = detect(loc.detach(), conf.detach(), prior.detach(), num_classes=self.num_classes,
                          share_location=self.share_location, background=self.background,
                          code_type=self.code_type, variance_in_target=self.variance_in_target,
                          confidence_threshold=self.confidence_threshold, nms_threshold=self.nms_threshold,
                          top_k=self.top_k, keep_top_k=self.keep_top_k, eta=self.eta, arm_conf=arm_conf,
                          arm_loc=arm_loc, objectness_score=self.objectness_score, extra=extra)
        if rows.shape[0] == 0:
            n = loc.shape[0]
            rows = torch.full((1 if self.v1_empty else n, cols), -1.0, dtype=loc.dtype, device=loc.device)
            if not self.v1_empty:
                rows[:, 0] = torch.arange(n, dtype=loc.dtype, device=loc.device)
        if cols != 7:  # TextBoxes++: the fork's forward saves and draws nothing (neocaffe.layers._textboxes)
            return rows.view(1, 1, -1, cols)
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
