"""Cascade R-CNN's ``FrcnnOutput`` (zhaoweicai/cascade-rcnn @ 2252f46158ea6555868ca6fa5c221ea71d9b5e6c,
``src/caffe/layers/frcnn_output_layer.cpp``, CPU only in the fork; box arithmetic from
``src/caffe/util/bbox_util.cpp``, here ``neocaffe.layers.cascade_boxes_math``).

Bottoms: class probabilities ``R x C``, box deltas (``R x 4C`` with ``bbox_reg_param.cls_aware``, the
default; else ``R x 8``, class-agnostic), RoIs ``R x 5`` or ``R x 6`` (batch index 0 only: one image), and
the input size ``1 x 2`` (height, width). Per class ``c = 1 .. C-1``: the RoIs whose probability is
``>= frcnn_output_param.conf_thr``, their boxes (DecodeBBoxesWithPrior with ``bbox_reg_param``'s means and
stds; class c's deltas, or deltas 4-7 when class-agnostic) clipped to ``x2 <= width``, ``y2 <= height``,
sorted by score and put through the fork's greedy NMS (``iou_thr``, ``nms_type``). With ``max_det_num > 0``
and more detections than that, the best ``max_det_num`` of all classes are kept (per class in score order).
Top ``(1 + K) x 7 x 1 x 1``: the fork's stand-in row ``(0, -1, -1, -1, -1, -1, -1)``, then per class the
detections ``(0, x1, y1, x2, y2, c, score)``. A RoI with ``x2 < x1`` or ``y2 < y1``, or of another image than
0, is an error (the fork's CHECKs).

``save_output_param`` (the fork's, as SSD's DetectionOutput writes it but without ``resize_param``): with
``output_directory`` set and ``label_map_file`` and ``name_size_file`` given, setup makes the directory (the
fork first removes an existing one with everything in it, ``remove_all``; neocaffe keeps it and what it holds, as
its SSD DetectionOutput does: only the result files below are rewritten); each forward is one image (the next
name of ``name_size_file``), its detections scaled by (name's size / input size); after
``num_test_image`` images (default: every name), for ``output_format: "VOC"`` the files
``<prefix><class name>.txt`` (classes 1 .. C-1; emptied when a cycle begins) get the lines
``<image name> <score> <x1> <y1> <x2> <y2>`` (score as C++ prints a float, ``%g``; the box as ints of
boost ptree's ``round(v * 100) / 100`` values, ``x2 = int(x1) + int(width)``). Any other format writes
nothing (the fork gathers the detections and drops them). Deviations: ties in score keep their order of
collection (the fork's ``std::sort`` leaves it unspecified); the fork also writes the decoded boxes into
bottom 1's diff, which neocaffe does not. No backward.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._detection_save import label_names, read_name_sizes, stored_values
from neocaffe.layers.base import Example, Layer, Shape, legacy_shape
from neocaffe.layers.cascade_boxes_math import bbox_reg_stats, clip_boxes, decode_with_prior, greedy_nms
from neocaffe.layers.registry import register_layer

log = logging.getLogger(__name__)
_F = torch.float32


class _VocSaver:
    """The fork's saving state: names, the image count of the cycle and its detections."""

    def __init__(self, directory: str, prefix: str, fmt: str, label_to_name: dict[int, str],
                 names: list[tuple[str, int, int]], num_test_image: int) -> None:
        self.directory, self.prefix, self.format = directory, prefix, fmt
        self.label_to_name, self.names, self.num = label_to_name, names, num_test_image
        self.count = 0
        self.detections: list[tuple[str, str, float, np.ndarray]] = []

    def _path(self, label_name: str) -> str:
        return os.path.join(self.directory, self.prefix + label_name + ".txt")

    def begin(self) -> None:
        """Reshape's part: at the start of a cycle the VOC files of every label but 0 are emptied."""
        if self.count % self.num == 0 and self.format == "VOC":
            for label, name in sorted(self.label_to_name.items()):
                if label != 0:
                    open(self._path(name), "w").close()

    def add(self, dets: np.ndarray, size_hw: tuple[float, float], cls_num: int) -> None:
        """One image's detections ``[K, 7]`` (rows after the stand-in), the input's (height, width)."""
        name, oh, ow = self.names[self.count]
        h_ratio = np.float32(np.float32(oh) / np.float32(size_hw[0]))
        w_ratio = np.float32(np.float32(ow) / np.float32(size_hw[1]))
        for row in dets:
            x1, y1 = np.float32(row[1]) * w_ratio, np.float32(row[2]) * h_ratio
            x2, y2 = np.float32(row[3]) * w_ratio, np.float32(row[4]) * h_ratio
            stored = stored_values(np.array([x1, y1, x2 - x1, y2 - y1], np.float32))
            label_name = self.label_to_name.get(int(row[5]), "")
            self.detections.append((name, label_name, float(np.float32(row[6])), stored))
        self.count += 1
        if self.count % self.num == 0:
            if self.format == "VOC":
                self._write_voc(cls_num)
            self.count = 0
            self.detections = []

    def _write_voc(self, cls_num: int) -> None:
        files = {}
        for c in range(1, cls_num):
            label_name = self.label_to_name.get(c, "")
            files[label_name] = open(self._path(label_name), "w")
        try:
            for name, label_name, score, b in self.detections:
                f = files.get(label_name)
                if f is None:
                    print(f"Cannot find {label_name}")
                    continue
                bx = [int(v) for v in b]  # static_cast<int>: toward zero
                f.write(f"{name} {score:g} {bx[0]} {bx[1]} {bx[0] + bx[2]} {bx[1] + bx[3]}\n")
        finally:
            for f in files.values():
                f.close()


@register_layer("FrcnnOutput")
class FrcnnOutput(Layer):
    """Cascade R-CNN's per-class detection output (see the module docstring)."""

    value_dependent_shape = True
    exact_bottoms = 4
    exact_tops = 1

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.cls_aware = bool(self.param.bbox_reg_param.cls_aware)
        self.mean, self.std = bbox_reg_stats(self)
        p = self.param.frcnn_output_param
        self.conf_thr, self.iou_thr = float(np.float32(p.conf_thr)), float(p.iou_thr)
        self.nms_type, self.max_det = str(p.nms_type), int(p.max_det_num)
        self.saver = self._make_saver(p.save_output_param)
        if self.saver is not None:
            self.saver.begin()

    def _make_saver(self, s) -> _VocSaver | None:
        directory = s.output_directory
        if directory:
            try:  # an existing directory is kept (the fork deletes it and everything in it)
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                log.warning("layer '%s' (FrcnnOutput): Failed to create directory: %s (%s)", self.name, directory, e)
        need = bool(directory)
        label_to_name: dict[int, str] = {}
        if s.HasField("label_map_file") and s.label_map_file:
            label_to_name = label_names(s.label_map_file, self.error)
        else:
            if s.HasField("label_map_file"):
                log.warning("layer '%s' (FrcnnOutput): Provide label_map_file if output results to files.", self.name)
            need = False
        names: list[tuple[str, int, int]] = []
        num = 0
        if s.HasField("name_size_file") and s.name_size_file:
            names = read_name_sizes(s.name_size_file, self.error)
            num = int(s.num_test_image) if s.HasField("num_test_image") else len(names)
            if num > len(names):
                raise self.error(f"save_output_param.num_test_image ({num}) exceeds the {len(names)} images "
                                 f"listed in name_size_file {s.name_size_file}")
        else:
            if s.HasField("name_size_file"):
                log.warning("layer '%s' (FrcnnOutput): Provide name_size_file if output results to files.", self.name)
            need = False
        if not need:
            return None
        if num == 0:
            raise self.error("save_output_param.num_test_image must be positive; received 0")
        return _VocSaver(directory, s.output_name_prefix, s.output_format, label_to_name, names, num)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        pr, bb, ro, sz = (legacy_shape(s, self) for s in bottom_shapes)
        if not (pr[0] == bb[0] == ro[0]) or ro[1] not in (5, 6):
            raise self.error(f"needs probabilities R x C, deltas R x D and RoIs R x 5 (or 6); received "
                             f"{[tuple(s) for s in bottom_shapes[:3]]}")
        want = 4 * pr[1] if self.cls_aware else 8
        if bb[1] != want:
            raise self.error(f"deltas must have {want} channels ({'4 x classes' if self.cls_aware else 'cls_aware: false'});"
                             f" received {bb[1]}")
        if sz[0] != 1 or sz[1] != 2:
            raise self.error(f"bottom 3 must be the input size 1 x 2 (height, width); received {tuple(bottom_shapes[3])}")
        return [(1, 7, 1, 1)]

    def detect(self, prob: Tensor, deltas: Tensor, rois: Tensor, size_hw: tuple[float, float]) -> Tensor:
        """The detections ``[K, 7]`` (float32) of one image, without the stand-in row."""
        r, c = prob.shape[0], prob.shape[1]
        rr = rois.reshape(r, -1).to(_F)
        if r and bool((rr[:, 0] != 0).any()):
            raise self.error("every RoI must be of image 0 (the fork's batch size 1)")
        bad = (rr[:, 3] < rr[:, 1]) | (rr[:, 4] < rr[:, 2])
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise self.error(f"RoI {i} has x2 < x1 or y2 < y1: {rr[i, 1:5].tolist()} (the fork's CHECK_GE)")
        k = deltas.reshape(r, -1).shape[1] // 4
        boxes = decode_with_prior(deltas.reshape(r, k, 4), rr[:, 1:5], self.mean, self.std)
        boxes = clip_boxes(boxes, size_hw[1], size_hw[0])
        p = prob.reshape(r, c).to(_F)
        per_class = []
        for cls in range(1, c):
            sel = torch.nonzero(p[:, cls] >= self.conf_thr).flatten()
            if sel.numel() == 0:
                continue
            b = boxes[sel, cls if self.cls_aware else 1]
            s = p[sel, cls]
            order = torch.sort(s, descending=True, stable=True).indices
            b, s = b[order], s[order]
            kept = greedy_nms(b, self.iou_thr, self.nms_type)
            lab = torch.full((kept.numel(), 1), float(cls), dtype=_F, device=b.device)
            per_class.append(torch.cat([torch.zeros_like(lab), b[kept], lab, s[kept].unsqueeze(1)], 1))
        if not per_class:
            return torch.zeros((0, 7), dtype=_F, device=prob.device)
        dets = torch.cat(per_class)
        if self.max_det > 0 and dets.shape[0] > self.max_det:
            top = torch.sort(dets[:, 6], descending=True, stable=True).indices[: self.max_det]
            # regrouped by class, each class in the order of the ranking
            lab = dets[top, 5]
            top = top[torch.sort(lab, stable=True).indices]
            dets = dets[top]
        return dets

    def forward(self, prob: Tensor, deltas: Tensor, rois: Tensor, size: Tensor) -> Tensor:  # type: ignore[override]
        if self.saver is not None and self.saver.count > len(self.saver.names):
            raise self.error("more images than name_size_file lists")
        if self.saver is not None:
            self.saver.begin()
        sz = size.detach().reshape(-1).to(_F).cpu().numpy()
        size_hw = (float(sz[0]), float(sz[1]))
        c = prob.shape[1]
        dets = self.detect(prob.detach().reshape(prob.shape[0], c), deltas.detach(), rois.detach(), size_hw)
        if self.saver is not None:
            self.saver.add(dets.cpu().numpy(), size_hw, c)
        stand_in = torch.full((1, 7), -1.0, dtype=_F, device=prob.device)
        stand_in[0, 0] = 0
        return torch.cat([stand_in, dets]).to(prob.dtype).view(-1, 7, 1, 1)

    @classmethod
    def examples(cls) -> list[Example]:
        rng = np.random.default_rng(160)
        logits = rng.standard_normal((4, 3))
        prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        deltas = 0.2 * rng.standard_normal((4, 12))
        rois = np.array([[0, 5, 5, 40, 30], [0, 8, 6, 42, 33], [0, 50, 20, 90, 70], [0, 0, 0, 20, 20]], float)
        size = np.array([[80.0, 100.0]])
        # conf_thr above every probability: only the stand-in row, as reshape says
        return [Example('name: "out" type: "FrcnnOutput" bottom: "p" bottom: "d" bottom: "r" bottom: "s" top: "det" '
                        'frcnn_output_param { conf_thr: 1.5 }', [prob, deltas, rois, size], grad_bottoms=())]
