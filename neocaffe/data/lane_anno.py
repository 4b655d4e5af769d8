"""MobileNet-YOLO's lane annotations: TuSimple lane labels into AnnotatedDatum records, and the LaneData
layer's label and segmentation tops from them.

Lineage and source files: eric612/MobileNet-YOLO @ 69b4441cb3ec8d553fbdef788ad033e246f901bd,
``src/caffe/util/io.cpp`` (``ReadRichImageToAnnotatedDatum``'s ``LANE`` case and the four-argument
``ReadJSONToAnnotatedDatum``, "Parse tusimple lane detection annotation"), ``src/caffe/layers/lane_data_layer.cpp``
(``load_batch``'s label and ``cv_lab`` loop) and ``src/caffe/data_transformer.cpp`` (``Transform2``).

**The record** (``read_lane_json``). The annotation file is one TuSimple label as JSON: ``h_samples`` (the rows
of the image, in pixels) and ``lanes`` (per lane one x per ``h_samples`` entry, in pixels; TuSimple writes -2
where a lane has no point on that row). Each lane becomes one ``AnnotationGroup`` (its ``group_label`` unset),
and each of its points, absent ones included, one ``Annotation`` in ``h_samples`` order with ``instance_id`` =
the point's index and ``lanes {x: x / width, y: h_sample / height}`` (float32 division; ``LaneInfo.id`` and
``bbox`` unset). Width and height are the JSON's ``image {height width}`` when both read as integers, else the
original image's (``GetImageSize``: ``cv::imread`` in colour, before any resize flag); a difference warns
("inconsistent image height."), a zero is an error. As boost's ``ptree`` reads values, a number may also be
written as a string of an integer (``"720"``); a repeated key counts at its first occurrence.

**The tops** (``lane_targets``). Per image the label is 5 x 64 x 3 (``lane_data_layer.cpp``'s "maxima lane",
"maxima node" and "coor. x and y"): row ``j`` of lane ``i`` (the record's ``i``-th group) is its point
``P - 1 - j`` (the points in reverse, bottom of the image first), as ``[x', y', i]`` with ``x' = (x - xmin) /
(xmax - xmin)``, ``y'`` likewise, in the box the image was sampled with (the batch samplers' or the jitter's
crop box), and ``-1`` in place of ``i`` when ``(x', y')`` lies outside ``[0, 1]^2`` (absent points included).
Nothing else of the image's augmentation moves the points: not an expansion, not the transform's resize (only
WARP keeps them right), crop or mirror (the fork's ``x = 1.0 - x`` is commented out, so a mirrored image keeps
unmirrored x). The segmentation label draws, per lane, a 1-pixel 8-connected line of 255 (``cv::line``) between
consecutive points inside ``[0, 1]^2`` (skipping the points outside; from ``(int(x' * W'), int(y' * H'))`` to
the previous point's) on a zero H' x W' image, then ``Transform2`` writes it as ``pixel * float(1 / 255.0)``,
mirrored with its image (Transform2 reads the mirror flag the image's transform left).

Deviations: lanes after the 5th and points after the 64th are left out of the label with a warning (the fork
writes them into the next lane's or image's rows, or past the blob for the last image; they are still drawn in
the segmentation label, as the fork draws them); label entries no point fills are 0 (the fork's buffer keeps what
an earlier batch wrote there); ``h_samples`` and ``lanes`` must be JSON arrays (boost would also iterate an
object's values).
"""
from __future__ import annotations

import json
import logging
import re

import cv2
import numpy as np

from neocaffe.data.errors import DataSourceError
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")
F32 = np.float32
MAX_LANES, MAX_POINTS = 5, 64  # LaneDataLayer's label_shape[1] and [2]
_INV255 = F32(1 / 255.0)  # Transform2's ``const float scale = 1/255.0``
_INT = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)  # what ``std::istream >> int`` reads in full


def _ptree_int(value: object) -> int | None:
    """boost ptree's ``get_value<int>()`` of a JSON value (None where boost throws): an integer, or a string
    that holds one (surrounding blanks allowed), within int32; not a fraction, exponent, bool or null."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        v = value
    elif isinstance(value, str) and _INT.fullmatch(value):
        v = int(value)
    else:
        return None
    return v if -2**31 <= v < 2**31 else None


def _first_wins(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        out.setdefault(k, v)  # ptree's get_child finds a repeated key's first occurrence
    return out


def _ints(values: object, path: str, what: str) -> list[int]:
    if not isinstance(values, list):
        raise DataSourceError(f"{path}: {what} is {type(values).__name__} {json.dumps(values)[:60]}; expected an "
                              "array of integers")
    out = []
    for k, v in enumerate(values):
        n = _ptree_int(v)
        if n is None:
            raise DataSourceError(f"{path}: {what}[{k}] is {json.dumps(v)[:60]}; expected an integer (pixels)")
        out.append(n)
    return out


def read_lane_json(path: str, image_hw: tuple[int, int], anno: caffe_pb2.AnnotatedDatum) -> None:
    """The fork's lane ``ReadJSONToAnnotatedDatum``: add ``path``'s lanes to ``anno`` (see the module
    docstring); ``image_hw`` is the original image's (height, width). Errors name the file and what was
    expected (the fork aborts on them: a boost exception or ``CHECK_EQ``)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f, object_pairs_hook=_first_wins)
    except json.JSONDecodeError as e:
        raise DataSourceError(f"{path}:{e.lineno}:{e.colno}: {e.msg}; expected a TuSimple lane label (JSON with "
                              "'h_samples' and 'lanes')") from None
    except UnicodeDecodeError as e:
        raise DataSourceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a TuSimple lane "
                              "label (JSON)") from None
    if not isinstance(doc, dict):
        raise DataSourceError(f"{path}: the JSON is {type(doc).__name__}; expected an object with 'h_samples' and "
                              "'lanes'")
    image = doc.get("image")
    size = [_ptree_int(image.get(k)) for k in ("height", "width")] if isinstance(image, dict) else [None]
    h, w = size if None not in size else image_hw   # pt.get<int>("image.height") and ("image.width"), or ptree_error
    if h != image_hw[0]:
        log.warning("%s inconsistent image height.", path)
    if w != image_hw[1]:
        log.warning("%s inconsistent image width.", path)
    if not h or not w:
        raise DataSourceError(f"{path}: no valid image width/height (image {{height: {h} width: {w}}})")
    for key in ("h_samples", "lanes"):
        if key not in doc:
            raise DataSourceError(f"{path}: no '{key}'; expected a TuSimple lane label (JSON with 'h_samples' and "
                                  "'lanes')")
    rows = _ints(doc["h_samples"], path, "h_samples")
    if not isinstance(doc["lanes"], list):
        raise DataSourceError(f"{path}: lanes is {type(doc['lanes']).__name__}; expected an array of lanes, each an "
                              "array of x values")
    ys = [F32(r) / F32(h) for r in rows]
    for k, lane in enumerate(doc["lanes"]):
        xs = _ints(lane, path, f"lanes[{k}]")
        if len(xs) != len(rows):
            raise DataSourceError(f"{path}: lanes[{k}] holds {len(xs)} x values; expected {len(rows)}, one per "
                                  "h_samples entry (the fork's CHECK_EQ(h_samples.size(), lane.size()))")
        group = anno.annotation_group.add()
        for i, (x, y) in enumerate(zip(xs, ys)):
            a = group.annotation.add()
            a.lanes.x, a.lanes.y = F32(x) / F32(w), y
            a.instance_id = i


def lanes_of(anno: caffe_pb2.AnnotatedDatum) -> list[np.ndarray]:
    """Per annotation group, its points' ``lanes`` (x, y) as a P x 2 float32 array, in record order (a point
    without ``lanes`` reads (0, 0), as the fork's accessor does)."""
    return [np.array([[a.lanes.x, a.lanes.y] for a in g.annotation], F32).reshape(-1, 2)
            for g in anno.annotation_group]


def lane_targets(lanes: list[np.ndarray], box: np.ndarray, mirror: bool, seg_hw: tuple[int, int] | None,
                 where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One image's label (5 x 64 x 3) and, with ``seg_hw`` = (H', W'), segmentation label (1 x H' x W'), from its
    record's lanes, its crop ``box`` (xmin, ymin, xmax, ymax) and whether it was mirrored."""
    label = np.zeros((MAX_LANES, MAX_POINTS, 3), F32)
    canvas = np.zeros(seg_hw, np.uint8) if seg_hw is not None else None
    box = np.asarray(box, F32)
    cw, ch = F32(box[2] - box[0]), F32(box[3] - box[1])
    if len(lanes) > MAX_LANES or any(len(p) > MAX_POINTS for p in lanes):
        log.warning("%s: %d lanes of up to %d points; the label holds %d lanes of %d points (the rest left out, "
                    "still drawn in the segmentation label)", where, len(lanes), max(len(p) for p in lanes),
                    MAX_LANES, MAX_POINTS)
    for i, pts in enumerate(lanes):
        rev = pts[::-1]
        x = ((rev[:, 0] - box[0]) / cw).astype(F32)
        y = ((rev[:, 1] - box[1]) / ch).astype(F32)
        inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
        if i < MAX_LANES:
            n = min(len(rev), MAX_POINTS)
            label[i, :n, 0], label[i, :n, 1] = x[:n], y[:n]
            label[i, :n, 2] = np.where(inside[:n], F32(i), F32(-1))
        if canvas is None:
            continue
        rows, cols = canvas.shape
        prev = None
        for j in np.flatnonzero(inside):
            pt = (int(x[j] * F32(cols)), int(y[j] * F32(rows)))  # float32 product, truncated
            if prev is not None:
                cv2.line(canvas, pt, prev, 255, 1, cv2.LINE_8)
            prev = pt
    if canvas is None:
        return label, None
    seg = canvas.astype(F32)[None] * _INV255
    return label, np.ascontiguousarray(seg[:, :, ::-1] if mirror else seg)


__all__ = ["MAX_LANES", "MAX_POINTS", "lane_targets", "lanes_of", "read_lane_json"]
