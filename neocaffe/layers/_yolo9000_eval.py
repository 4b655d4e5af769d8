"""choasup/caffe-yolo9000's ``EvalDetection``: its predictions (one box per class above darknet's 0.005, NMS per
class) and its ``save_output_param`` result file. The layer is :class:`neocaffe.layers.intel_eval_detection.
EvalDetection`, which takes this form where ``save_output_param`` is set or the net's ``lineage`` is ``"yolo9000"``.

Lineage: choasup/caffe-yolo9000 @ e8a476c4c23d756632f7a26c681a96e3ab672544,
``src/caffe/layers/eval_detection_layer.cpp`` (GetPredBox "version 2", ApplyNmsClass, LayerSetUp, Forward_cpu; no
``.cu``). Intel Caffe's copy (@ 44d53638) keeps the older "version 1" and a class-agnostic NMS, and has no
``save_output_param``.

Predictions of an image (first five anchors of each cell, decoded as Intel's): a box whose objectness ``σ(t4)`` is
below 0.005 (float against double) is skipped; otherwise each class ``c`` whose float product ``p_c * σ(t4)`` is above
0.005 gives a candidate ``(c, score, box)``, score ``σ(t4)`` (OBJ), ``p_c`` (PROB) or the product (MULTIPLY), in cell,
anchor, class order. With ``nms >= 0``: sorted by descending score (stable here; ``std::sort`` in the fork), greedy
NMS among boxes of one class (IoU ``>= nms`` goes), scores below 0.005 dropped, grouped by class ascending. With ``nms
< 0`` no prediction (as Intel's). Ground truth: an item outside ``[-1, N)`` is refused (the fork indexes past its
vector; Intel drops item N). The top rows are Intel's (counts, then ``[label, score, tp, fp]``).

``save_output_param`` (COCO's result file): per image of each forward, in order, the ``name_count``-th line of
``name_size_file`` (read as ``name width height``: the fork's order, not SSD's ``name height width``) gives the image;
each prediction (class order, best first) becomes ``{"image_id": atoi(name), "category_id": atoi(label map name of
class + 1), "bbox": [xmin, ymin, w, h], "score": s}`` with ``xmin = round((x - w/2) * width * 100) / 100.`` (double,
C's ``round``) and the like, kept as float text (boost ptree, ``%.9g``). Every ``num_test_image`` images the file
``output_directory/<output_name_prefix>.json`` is written with every detection since the net was built (the list is
never emptied), as the fork's boost ``write_json`` text from its first ``[`` to before its last ``]`` plus ``\\n]\\n``
(``neocaffe.layers._detection_save.coco_json``). ``output_format`` is not read (always this JSON). More predictions
than an image's ``side² * num_object`` rows (an untrained net's many weak boxes): the fork writes on into the next
image's row or past its top; here the top keeps the first rows (a warning, once) and the result file has every
prediction. Refused where the fork crashes or reads out of bounds: ``num_test_image`` 0 (integer division by zero), no
``name_size_file`` (it indexes an empty vector), more images than names, a write with no detection (``std::
out_of_range``); a missing ``output_directory`` is an error (the fork's ``std::ofstream`` fails silently). A class the
label map lacks reads ``category_id`` 0 (``std::map::operator[]``, then ``atoi("")``).
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable

import numpy as np

from neocaffe.layers._detection_save import coco_json, label_names, read_name_sizes

_F = np.float32
_MIN_SCORE = 0.005
_JSON_LITERAL = re.compile(r'"(null|true|false|-?[0-9]+(\.[0-9]+)?)"')


def atoi(s: str) -> int:
    """C's ``atoi``: leading blanks, an optional sign, the digits that follow; 0 where there are none."""
    m = re.match(r"\s*([+-]?\d+)", s)
    return int(m.group(1)) if m else 0


def class_candidates(obj: np.ndarray, prob: np.ndarray, score_type: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GetPredBox's version 2 on one image: (anchor index, class, score) of every candidate in cell, anchor, class
    order. ``obj`` (K,), ``prob`` (K, C), float32."""
    with np.errstate(invalid="ignore"):
        keep = ~(obj.astype(np.float64) < _MIN_SCORE)[:, None] & ((prob * obj[:, None]).astype(np.float64) > _MIN_SCORE)
    k, c = np.nonzero(keep)
    score = {0: obj[k], 1: prob[k, c]}.get(score_type, (obj[k] * prob[k, c]).astype(_F))
    return k, c, score.astype(_F)


def nms_by_class(labels: np.ndarray, scores: np.ndarray, boxes: np.ndarray, nms: float,
                 iou: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Stable descending sort, ApplyNmsClass, the 0.005 floor: the kept candidates' indices in score order."""
    order = np.argsort(-scores, kind="stable")
    labels, scores, boxes = labels[order], scores[order], boxes[order]
    gone = np.zeros(len(order), dtype=bool)
    for c in np.unique(labels):
        mine = np.flatnonzero(labels == c)
        over = iou(boxes[mine][:, None, :], boxes[mine][None, :, :])
        dead = np.zeros(len(mine), dtype=bool)
        for a in range(len(mine) - 1):  # a suppressed box suppresses nothing
            if not dead[a]:
                dead[a + 1:] |= over[a, a + 1:] >= nms
        gone[mine] = dead
    kept = ~gone & ~(scores.astype(np.float64) < _MIN_SCORE)
    return order[kept]


class ResultFile:
    """``save_output_param``: the names and sizes, the label names, the detections so far, the image count."""

    def __init__(self, p: Any, error: Callable[[str], Exception]) -> None:
        self.error = error
        if not p.name_size_file:
            raise error("save_output_param.name_size_file must be set (the fork reads each image's size from it and "
                        "indexes an empty list without it)")
        if p.num_test_image <= 0:
            raise error(f"save_output_param.num_test_image must be > 0 (the fork writes the file every num_test_image "
                        f"images and divides by it); received {p.num_test_image}")
        self.sizes = read_name_sizes(p.name_size_file, error)   # (name, first, second): the fork's name, width, height
        self.names = label_names(p.label_map_file, error) if p.label_map_file else {}
        self.every, self.count = int(p.num_test_image), 0
        self.path = os.path.join(p.output_directory, p.output_name_prefix + ".json")
        self.directory = p.output_directory
        self.entries: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, labels: np.ndarray, scores: np.ndarray, boxes: np.ndarray) -> None:
        """One image's predictions (class order, best first; boxes x, y, w, h), then the file when it is due."""
        if self.count >= len(self.sizes):
            raise self.error(f"save_output_param: image {self.count + 1} has no line in name_size_file "
                             f"({len(self.sizes)} names); expected a line 'name width height' per test image")
        name, width, height = self.sizes[self.count]
        x, y, w, h = (boxes[:, k].astype(np.float64) for k in range(4))
        vals = np.stack([(x - w / 2.0) * width, (y - h / 2.0) * height, w * width, h * height], axis=1) * 100
        rounded = (np.copysign(np.floor(np.abs(vals) + 0.5), vals) / 100.0).astype(_F)  # C's round, in double
        cats = np.array([atoi(self.names.get(int(c) + 1, "")) for c in labels], np.int64)
        self.entries.append((str(atoi(name)), cats, scores.astype(_F), rounded))
        self.count += 1
        if self.count % self.every == 0:
            self._write()

    def _write(self) -> None:
        if not any(len(c) for _, c, _, _ in self.entries):
            raise self.error(f"save_output_param: no detection in the {self.count} images to write (the fork aborts "
                             "with std::out_of_range)")
        if self.directory and not os.path.isdir(self.directory):
            raise self.error(f"save_output_param.output_directory {self.directory!r} does not exist (the fork's "
                             "std::ofstream writes nothing there); expected an existing directory")
        cats = {int(c): str(int(c)) for _, cs, _, _ in self.entries for c in cs}
        text = _JSON_LITERAL.sub(r"\1", coco_json(self.entries, cats))
        with open(self.path, "w") as f:
            f.write(text[text.find("["): text.rfind("]")] + "\n]\n")
