"""SSD's annotated images (weiliu89/caffe ssd): AnnotatedDatum records, their boxes through the
fork's augmentations, batch sampling.

Boxes follow ``src/caffe/util/bbox_util.cpp`` (ProjectBBox, ClipBBox, MeetEmitConstraint),
``src/caffe/util/sampler.cpp`` (GenerateBatchSamples) and the annotation half of
``src/caffe/data_transformer.cpp`` (TransformAnnotation, CropImage, ExpandImage), in float32 like the
fork's NormalizedBBox, vectorized over boxes (and over the trials of a sampler). TextBoxes++'s quadrilaterals
ride along (``Boxes.quad``, :mod:`neocaffe.data.polygon_anno`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neocaffe.data import faceboxes_sampling as fbs
from neocaffe.data import polygon_anno as pa
from neocaffe.data.datum import DatumError, parse_record
from neocaffe.proto import caffe_pb2

F32 = np.float32
CENTER, MIN_OVERLAP = 0, 1          # EmitConstraint.EmitType
WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD = 1, 2, 3   # ResizeParameter.Resize_mode


@dataclass
class Boxes:
    """An image's annotations, flat in the fork's group-then-annotation order: ``box`` [K, 4]
    (normalized xmin, ymin, xmax, ymax, float32), ``label`` (group label), ``instance``, ``difficult``;
    ``quad`` [K, 8] TextBoxes++'s quadrilaterals (None: SSD's records)."""

    box: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    difficult: np.ndarray
    quad: np.ndarray | None = None

    @staticmethod
    def empty(quads: bool = False) -> "Boxes":
        return Boxes(np.zeros((0, 4), F32), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool),
                     np.zeros((0, 8), F32) if quads else None)

    def take(self, keep: np.ndarray, box: np.ndarray | None = None, quad: np.ndarray | None = None) -> "Boxes":
        b = self.box if box is None else box
        q = self.quad if quad is None else quad
        return Boxes(b[keep].astype(F32), self.label[keep], self.instance[keep], self.difficult[keep],
                     None if q is None else q[keep].astype(F32))

    def rows(self, item: int) -> np.ndarray:
        """AnnotatedDataLayer's label rows ``[item, label, instance, xmin, ymin, xmax, ymax, difficult]``
        (TextBoxes++'s: then ``x1, y1, .., x4, y4``)."""
        n = len(self.label)
        cols = [np.full((n, 1), item, F32), self.label[:, None].astype(F32), self.instance[:, None].astype(F32),
                self.box.astype(F32), self.difficult[:, None].astype(F32)]
        return np.concatenate(cols + ([] if self.quad is None else [self.quad.astype(F32)]), axis=1)


def parse_annotated(value: bytes | memoryview, where: str) -> caffe_pb2.AnnotatedDatum:
    """The AnnotatedDatum of a database record."""
    return parse_record(value, caffe_pb2.AnnotatedDatum(), where)


def boxes_of(anno: caffe_pb2.AnnotatedDatum, quads: bool = False) -> Boxes:
    """The annotations of an AnnotatedDatum (type BBOX); with ``quads``, their polygons too."""
    items = [(g.group_label, a.instance_id, a.bbox) for g in anno.annotation_group for a in g.annotation]
    if not items:
        return Boxes.empty(quads)
    quad = None
    if quads:
        quad = np.array([pa.quad_of(a) for g in anno.annotation_group for a in g.annotation], F32).reshape(-1, 8)
    return Boxes(np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for _, _, b in items], F32),
                 np.array([g for g, _, _ in items], np.int64), np.array([i for _, i, _ in items], np.int64),
                 np.array([b.difficult for _, _, b in items], bool), quad)


# -- box geometry (bbox_util.cpp), on [K, 4] arrays ----------------------------------------------
def size(b: np.ndarray) -> np.ndarray:
    """BBoxSize (normalized): w * h, 0 for an invalid box."""
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), F32(0), w * h).astype(F32)


def clip(b: np.ndarray) -> np.ndarray:
    return np.clip(b, F32(0), F32(1)).astype(F32)


def crop_box(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """CropImage (data_transformer.cpp): the clipped box, scaled to the image's pixels, truncated."""
    h, w = img.shape[:2]
    b = clip(box) * np.array([w, h, w, h], np.float32)
    x, y = int(b[0]), int(b[1])
    return np.ascontiguousarray(img[y: y + int(b[3] - b[1]), x: x + int(b[2] - b[0])])


def intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IntersectBBox of boxes ``a`` [..., 4] and ``b`` [..., 4] (broadcast); [0, 0, 0, 0] if disjoint."""
    disjoint = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    out = np.stack(np.broadcast_arrays(np.maximum(a[..., 0], b[..., 0]), np.maximum(a[..., 1], b[..., 1]),
                                       np.minimum(a[..., 2], b[..., 2]), np.minimum(a[..., 3], b[..., 3])), -1)
    return np.where(disjoint[..., None], F32(0), out).astype(F32)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """JaccardOverlap (normalized), broadcast over leading axes."""
    inter = intersect(a, b)
    iw, ih = inter[..., 2] - inter[..., 0], inter[..., 3] - inter[..., 1]
    isz = iw * ih
    ok = (iw > 0) & (ih > 0)
    den = np.where(ok, size(a) + size(b) - isz, F32(1))
    return np.where(ok, isz / den, F32(0)).astype(F32)


def coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """BBoxCoverage(a, b): the share of ``a`` covered by ``b``."""
    isz = size(intersect(a, b))
    den = np.where(isz > 0, size(a), F32(1))
    return np.where(isz > 0, isz / den, F32(0)).astype(F32)


def meet_emit(src: np.ndarray, box: np.ndarray, emit: caffe_pb2.EmitConstraint,
              faces_in: tuple[int, int] | None = None) -> np.ndarray:
    """MeetEmitConstraint of every box against the crop ``src`` [4]. ``faces_in``: FaceBoxes' form, the
    (height, width) of the image the boxes are fractions of (:func:`fbs.big_enough`)."""
    if emit.emit_type == CENTER:
        cx, cy = (box[:, 0] + box[:, 2]) / F32(2), (box[:, 1] + box[:, 3]) / F32(2)
        inside = (cx >= src[0]) & (cx <= src[2]) & (cy >= src[1]) & (cy <= src[3])
        return inside if faces_in is None else inside & fbs.big_enough(box, *faces_in)
    if emit.emit_type == MIN_OVERLAP:
        return coverage(box, src[None]) > F32(emit.emit_overlap)
    raise DatumError(f"unknown emit_constraint.emit_type {emit.emit_type}")


def project(src: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ProjectBBox of every box into ``src`` [4]: (kept mask, projected and clipped boxes)."""
    outside = (box[:, 0] >= src[2]) | (box[:, 2] <= src[0]) | (box[:, 1] >= src[3]) | (box[:, 3] <= src[1])
    w, h = src[2] - src[0], src[3] - src[1]
    proj = np.stack([(box[:, 0] - src[0]) / w, (box[:, 1] - src[1]) / h,
                     (box[:, 2] - src[0]) / w, (box[:, 3] - src[1]) / h], axis=1).astype(F32)
    proj = clip(proj)
    return ~outside & (size(proj) > 0), proj


def transform_boxes(boxes: Boxes, crop: np.ndarray, emit: caffe_pb2.EmitConstraint | None,
                    mirror: bool = False, faces_in: tuple[int, int] | None = None) -> Boxes:
    """TransformAnnotation's per-box steps (after any resize update): emit constraint against the crop,
    projection into it, horizontal flip. TextBoxes++'s quadrilaterals are projected and clipped
    (ProjectBBoxPolygon) and never flipped, as the fork's. ``faces_in``: FaceBoxes' emit test (:func:`meet_emit`)."""
    keep = np.ones(len(boxes.label), bool)
    if emit is not None:
        keep &= meet_emit(crop, boxes.box, emit, faces_in)
    ok, proj = project(crop, boxes.box)
    keep &= ok
    if mirror:
        proj = np.stack([F32(1) - proj[:, 2], proj[:, 1], F32(1) - proj[:, 0], proj[:, 3]], axis=1).astype(F32)
    return boxes.take(keep, proj, None if boxes.quad is None else pa.project_quads(crop, boxes.quad))


def resize_update(box: np.ndarray, rp: caffe_pb2.ResizeParameter, old_w: int, old_h: int) -> np.ndarray:
    """UpdateBBoxByResizePolicy (im_transforms.cpp): boxes as fractions of the resized image."""
    nh, nw = F32(rp.height), F32(rp.width)
    orig_aspect = F32(old_w) / F32(old_h)
    new_aspect = nw / nh
    x0, y0, x1, y1 = (box[:, i] * F32((old_w, old_h)[i % 2]) for i in range(4))
    zero = F32(0)
    if rp.resize_mode == WARP or rp.resize_mode == FIT_SMALL_SIZE:
        if rp.resize_mode == FIT_SMALL_SIZE:
            if orig_aspect < new_aspect:
                nh = nw / orig_aspect
            else:
                nw = orig_aspect * nh
        x0, x1 = np.maximum(zero, x0 * nw / F32(old_w)), np.minimum(nw, x1 * nw / F32(old_w))
        y0, y1 = np.maximum(zero, y0 * nh / F32(old_h)), np.minimum(nh, y1 * nh / F32(old_h))
    elif rp.resize_mode == FIT_LARGE_SIZE_AND_PAD:
        if orig_aspect > new_aspect:
            pad = (nh - nw / orig_aspect) / F32(2)
            x0, x1 = np.maximum(zero, x0 * nw / F32(old_w)), np.minimum(nw, x1 * nw / F32(old_w))
            y0 = pad + np.maximum(zero, y0 * (nh - F32(2) * pad) / F32(old_h))
            y1 = pad + np.minimum(nh, y1 * (nh - F32(2) * pad) / F32(old_h))
        else:
            pad = (nw - orig_aspect * nh) / F32(2)
            x0 = pad + np.maximum(zero, x0 * (nw - F32(2) * pad) / F32(old_w))
            x1 = pad + np.minimum(nw, x1 * (nw - F32(2) * pad) / F32(old_w))
            y0, y1 = np.maximum(zero, y0 * nh / F32(old_h)), np.minimum(nh, y1 * nh / F32(old_h))
    else:
        raise DatumError(f"unknown resize_param.resize_mode {rp.resize_mode}")
    return np.stack([x0 / nw, y0 / nh, x1 / nw, y1 / nh], axis=1).astype(F32)


def _fit_small_crop(rp: caffe_pb2.ResizeParameter, height: int, width: int,
                    crop: np.ndarray) -> tuple[np.float32, np.float32, np.float32, np.float32] | None:
    """ExtrapolateBBox's sizes: the crop's width and height in the FIT_SMALL_SIZE image and the
    ``width_scale``/``height_scale``; None where it changes nothing."""
    hs, ws = F32(rp.height_scale), F32(rp.width_scale)
    if not (hs > 0 and ws > 0 and rp.resize_mode == FIT_SMALL_SIZE):
        return None
    orig_aspect = F32(width) / F32(height)
    rh, rw = F32(rp.height), F32(rp.width)
    if orig_aspect < rw / rh:
        rh = rw / orig_aspect
    else:
        rw = rh * orig_aspect
    return rw * (crop[2] - crop[0]), rh * (crop[3] - crop[1]), ws, hs


def extrapolate(box: np.ndarray, rp: caffe_pb2.ResizeParameter, height: int, width: int,
                crop: np.ndarray) -> np.ndarray:
    """ExtrapolateBBox: FIT_SMALL_SIZE with height_scale/width_scale rescales the boxes."""
    sizes = _fit_small_crop(rp, height, width, crop)
    if sizes is None:
        return box
    cw, ch, ws, hs = sizes
    return (box * np.array([cw / ws, ch / hs, cw / ws, ch / hs], F32)).astype(F32)


def extrapolate_quads(q: np.ndarray, rp: caffe_pb2.ResizeParameter, height: int, width: int,
                      crop: np.ndarray) -> np.ndarray:
    """TextBoxes++'s ExtrapolateBBoxPolygon, the polygon half: the corners scaled by the same sizes, in the
    fork's order (``x * crop_width / width_scale``)."""
    sizes = _fit_small_crop(rp, height, width, crop)
    if sizes is None:
        return q
    cw, ch, ws, hs = sizes
    out = q.astype(F32).copy()
    out[:, 0::2] = out[:, 0::2] * cw / ws
    out[:, 1::2] = out[:, 1::2] * ch / hs
    return out


# -- batch sampling (sampler.cpp) ---------------------------------------------------------------
def _satisfy(samples: np.ndarray, objects: np.ndarray, c: caffe_pb2.SampleConstraint) -> np.ndarray:
    """SatisfySampleConstraint for every sample [T, 4]: as in the fork's loop, the first constraint kind
    that is set (Jaccard, then sample coverage, then object coverage) decides, over any object."""
    checks = (("min_jaccard_overlap", "max_jaccard_overlap", lambda s, o: jaccard(s, o)),
              ("min_sample_coverage", "max_sample_coverage", lambda s, o: coverage(s, o)),
              ("min_object_coverage", "max_object_coverage", lambda s, o: coverage(o, s)))
    for lo, hi, fn in checks:
        if not (c.HasField(lo) or c.HasField(hi)):
            continue
        if not len(objects):
            return np.zeros(len(samples), bool)
        v = fn(samples[:, None, :], objects[None, :, :])
        ok = np.ones(v.shape, bool)
        if c.HasField(lo):
            ok &= v >= F32(getattr(c, lo))
        if c.HasField(hi):
            ok &= v <= F32(getattr(c, hi))
        return ok.any(axis=1)
    return np.ones(len(samples), bool)


def sample_boxes(sampler: caffe_pb2.Sampler, n: int, rng: np.random.Generator) -> np.ndarray:
    """SampleBBox, ``n`` times: a scale and an aspect ratio (clamped to [scale^2, 1/scale^2]) placed
    uniformly in the unit square."""
    if not (0 < sampler.min_scale <= sampler.max_scale <= 1):
        raise DatumError(f"sampler: need 0 < min_scale <= max_scale <= 1; received {sampler.min_scale}, "
                         f"{sampler.max_scale}")
    if not 0 < sampler.min_aspect_ratio <= sampler.max_aspect_ratio:
        raise DatumError("sampler: need 0 < min_aspect_ratio <= max_aspect_ratio")
    scale = rng.uniform(sampler.min_scale, sampler.max_scale, n).astype(F32)
    ar = rng.uniform(sampler.min_aspect_ratio, sampler.max_aspect_ratio, n).astype(F32)
    ar = np.minimum(np.maximum(ar, scale ** 2), 1 / scale ** 2).astype(F32)
    w, h = scale * np.sqrt(ar), scale / np.sqrt(ar)
    x0 = (rng.uniform(0, 1, n) * (1 - w)).astype(F32)
    y0 = (rng.uniform(0, 1, n) * (1 - h)).astype(F32)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(F32)


def batch_samples(objects: np.ndarray, samplers, rng: np.random.Generator,
                  square_in: tuple[int, int] | None = None) -> np.ndarray:
    """GenerateBatchSamples: for each ``batch_sampler`` (with ``use_original_image``), its
    ``max_trials`` draws, keeping the first ``max_sample`` that satisfy its constraint. ``square_in``:
    FaceBoxes' sampler, crops square in pixels of an image of this (height, width) (:func:`fbs.square_samples`)."""
    out = []
    for bs in samplers:
        if not bs.use_original_image:
            continue
        trials = (sample_boxes(bs.sampler, int(bs.max_trials), rng) if square_in is None else
                  fbs.square_samples(bs.sampler, int(bs.max_trials), rng, *square_in))
        ok = np.nonzero(_satisfy(trials, objects, bs.sample_constraint))[0]
        if bs.HasField("max_sample"):
            ok = ok[: int(bs.max_sample)]
        out.append(trials[ok])
    return np.concatenate(out) if out else np.zeros((0, 4), F32)
