"""TextBoxes++'s quadrilateral annotations: the polygon half of its AnnotatedDatum records and of its
AnnotatedData augmentations.

Lineage and source files: MhLiao/TextBoxes_plusplus @ 39d4898de1504c53a2ed3d67966a57b3595836d0 (an SSD fork):
``src/caffe/util/io.cpp`` (``ReadXMLToAnnotatedDatum``: ``x1 y1 .. x4 y4`` of each ``bndbox``),
``src/caffe/layers/annotated_data_layer.cpp`` (16-column label rows), ``src/caffe/data_transformer.cpp``
(``TransformAnnotation``), ``src/caffe/util/bbox_util.cpp`` (``ProjectBBoxPolygon``, ``ClipPolygon`` with
``PolygonToRboxTheta``, ``ray_length_in_bbox`` and ``RboxThetaToPolygon``; ``ExtrapolateBBoxPolygon``) and
``src/caffe/util/im_transforms.cpp`` (``UpdateBBoxByResizePolicy``'s polygon half with ``first_point``).

**What the fork does to a quadrilateral** ``(x1, y1, .., x4, y4)`` (normalized; corners top-left, top-right,
bottom-right, bottom-left). Every ``TransformAnnotation`` (the expansion's, the batch sampler's crop and the final
transform's) projects it into the crop box as the box is projected (``(x - xmin) / width``, in float) and then
*clips* it with ``ClipPolygon``: the quadrilateral becomes the rotated rectangle of ``PolygonToRboxTheta``
(centre: the corners' mean; width: the mean of the top and bottom sides; height: the centre's distances to those
two sides, added; angle: the mean of theirs), whose width is cut where a ray from its centre along the angle
(and against it) leaves the unit square, the centre moved by half of what was cut, and written back as four
corners (``RboxThetaToPolygon``). So even a quadrilateral inside the image comes out a rectangle, and only along
its width is it clipped. The box half (emit constraint, projection, clipping, the kept annotations) stays SSD's.
Before that, the final transform's resize (``resize_param``) first rolls the corners so that the one nearest the
top-left of their bounding square comes first (``first_point``: the least summed distance of the four corners to
that square's corners, the first of equal ones), then, in WARP mode, scales them as the box; in
FIT_SMALL_SIZE and FIT_LARGE_SIZE_AND_PAD the fork leaves them in the original image's pixels and divides by the
new size (its bug, followed: the corners are then off by the resize's scale; TextBoxes++'s own nets use WARP).
The mirror flips the box only (``TransformAnnotation`` mirrors ``transformed_bbox``, never the polygon; the
fork's ``examples/text`` nets train with ``mirror: false``); FIT_SMALL_SIZE's ``ExtrapolateBBoxPolygon`` scales
the corners as the box (``neocaffe.data.annotated.extrapolate_quads``). Arithmetic follows the fork's: float where its variables are float, double where it
mixes in ``M_PI`` or a ``2.`` literal, float libm (``atan2f``, ``sinf``, ``cosf``) on float arguments.

**How a net asks for it** (the fork has no field: its AnnotatedData always writes 16 columns): by the records.
When the first record of the source that holds any annotation (of the first :data:`SCAN` records) carries a
``polygon`` in one of them, the label top has 16 columns ``[item, label, instance, xmin, ymin, xmax, ymax,
difficult, x1, y1, .., x4, y4]`` (an annotation without a polygon gives zeros there, as the fork's default
``NormalizedPolygon``); else it is SSD's 8 (:mod:`neocaffe.layers.annotated_data`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from neocaffe.proto import caffe_pb2

F32, F64 = np.float32, np.float64
WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD = 1, 2, 3   # ResizeParameter.Resize_mode
#: the XML keys of a bndbox's quadrilateral (ReadXMLToAnnotatedDatum), in NormalizedPolygon's field order
QUAD_KEYS = ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")
#: records AnnotatedData reads at setup, at most, to find one with annotations
SCAN = 100


# -- records ------------------------------------------------------------------------------------------------
def quad_of(a: caffe_pb2.Annotation) -> list[float]:
    """An annotation's quadrilateral (zeros when it has none, as the fork's default NormalizedPolygon)."""
    p = a.polygon
    return [p.x1, p.y1, p.x2, p.y2, p.x3, p.y3, p.x4, p.y4]


def set_quad(a: caffe_pb2.Annotation, corners: list[int], width: int, height: int) -> None:
    """ReadXMLToAnnotatedDatum's polygon: pixel corners ``x1 y1 .. x4 y4`` over the annotation's image size
    (``static_cast<float>(x) / width``)."""
    for k, (key, v) in enumerate(zip(QUAD_KEYS, corners)):
        setattr(a.polygon, key, F32(v) / F32(width if k % 2 == 0 else height))


def polygon_state(anno: caffe_pb2.AnnotatedDatum) -> bool | None:
    """None for a record without annotations, else whether any of them carries a polygon."""
    annos = [a for g in anno.annotation_group for a in g.annotation]
    return any(a.HasField("polygon") for a in annos) if annos else None


def records_have_polygons(records: Any, parse: Any) -> bool:
    """Whether the first of ``records`` (``(key, value)`` pairs, :data:`SCAN` at most) that holds annotations
    carries polygons (``parse(value, key)`` gives its AnnotatedDatum); False when none of them holds any."""
    for n, (key, value) in enumerate(records):
        if n >= SCAN:
            break
        state = polygon_state(parse(value, key))
        if state is not None:
            return state
    return False


# -- ClipPolygon (bbox_util.cpp), vectorized over quadrilaterals [K, 8] ----------------------------------------
def _cosf(t: np.ndarray) -> np.ndarray:
    return np.cos(t.astype(F64)).astype(F32)


def _sinf(t: np.ndarray) -> np.ndarray:
    return np.sin(t.astype(F64)).astype(F32)


def _dist(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    dx, dy = x2 - x1, y2 - y1
    return np.sqrt(dx * dx + dy * dy)


def _line_dist(px, py, x1, y1, x2, y2) -> np.ndarray:
    """point_line_distance: |cross| / (length + 1e-6), in float."""
    dx, dy = x2 - x1, y2 - y1
    return np.abs(px * dy - py * dx + x2 * y1 - y2 * x1) / (np.sqrt(dx * dx + dy * dy) + F32(1e-6))


def rbox_theta(q: np.ndarray) -> tuple[np.ndarray, ...]:
    """PolygonToRboxTheta: (cx, cy, width, height, theta) of quadrilaterals [K, 8] (float32)."""
    xtl, ytl, xtr, ytr, xbr, ybr, xbl, ybl = (q[:, k] for k in range(8))
    cx = (xtl + xtr + xbr + xbl) / F32(4)
    cy = (ytl + ytr + ybr + ybl) / F32(4)
    width = (_dist(xtl, ytl, xtr, ytr) + _dist(xbl, ybl, xbr, ybr)) / F32(2)
    height = _line_dist(cx, cy, xtl, ytl, xtr, ytr) + _line_dist(cx, cy, xbl, ybl, xbr, ybr)
    t1 = np.arctan2((ytr - ytl).astype(F64), (xtr - xtl).astype(F64)).astype(F32)
    t2 = np.arctan2((ybr - ybl).astype(F64), (xbr - xbl).astype(F64)).astype(F32)
    return cx, cy, width, height, (t1 + t2) / F32(2)


def ray_length(x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """ray_length_in_bbox: how far a ray from (x, y) at ``theta`` runs inside the unit square (inf from a
    point outside it)."""
    s, c = _sinf(theta), _cosf(theta)
    out = np.full(x.shape, np.inf, F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for d in ((F32(0) - y) / s, (F32(1) - y) / s, (F32(0) - x) / c, (F32(1) - x) / c):
            out = np.where(d >= 0, np.minimum(out, d), out)
    inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
    return np.where(inside, out, F32(np.inf)).astype(F32)


def clip_quads(q: np.ndarray) -> np.ndarray:
    """ClipPolygon of quadrilaterals [K, 8]: their rotated rectangles, cut to the unit square along the width."""
    if not len(q):
        return q.astype(F32)
    cx, cy, width, height, theta = rbox_theta(q.astype(F32))
    half = width / F32(2)
    right = ray_length(cx, cy, theta)
    left = ray_length(cx, cy, (math.pi + theta.astype(F64)).astype(F32))
    clipped = np.minimum(half, right) + np.minimum(half, left)
    with np.errstate(invalid="ignore"):
        move = (np.where(right < half, (right - half) / F32(2), F32(0))
                + np.where(left < half, (half - left) / F32(2), F32(0))).astype(F32)
    cut = clipped < width - F32(1e-6)
    cx = np.where(cut, cx + _cosf(theta) * move, cx).astype(F32)
    cy = np.where(cut, cy + _sinf(theta) * move, cy).astype(F32)
    return _rbox_theta_to_quad(cx, cy, clipped.astype(F32), height, theta)


def _rbox_theta_to_quad(cx, cy, width, height, theta) -> np.ndarray:
    """RboxThetaToPolygon: the top side's centre, its ends, then the bottom corners one height below."""
    t, h, w = theta.astype(F64), height.astype(F64), width.astype(F64)
    xtc = (cx.astype(F64) + np.cos(t - math.pi / 2) * h / 2).astype(F32)
    ytc = (cy.astype(F64) + np.sin(t - math.pi / 2) * h / 2).astype(F32)
    x1 = (xtc.astype(F64) + np.cos(t - math.pi) * w / 2).astype(F32)
    y1 = (ytc.astype(F64) + np.sin(t - math.pi) * w / 2).astype(F32)
    x2 = (xtc.astype(F64) + (_cosf(theta) * width).astype(F64) / 2).astype(F32)
    y2 = (ytc.astype(F64) + (_sinf(theta) * width).astype(F64) / 2).astype(F32)
    down_x, down_y = np.cos(t + math.pi / 2) * h, np.sin(t + math.pi / 2) * h
    x3, y3 = (x2.astype(F64) + down_x).astype(F32), (y2.astype(F64) + down_y).astype(F32)
    x4, y4 = (x1.astype(F64) + down_x).astype(F32), (y1.astype(F64) + down_y).astype(F32)
    return np.stack([x1, y1, x2, y2, x3, y3, x4, y4], axis=1).astype(F32)


def project_quads(src: np.ndarray, q: np.ndarray) -> np.ndarray:
    """ProjectBBoxPolygon's polygon half: quadrilaterals [K, 8] into the box ``src`` [4], then ClipPolygon."""
    src = src.astype(F32)
    w, h = src[2] - src[0], src[3] - src[1]
    proj = q.astype(F32).copy()
    proj[:, 0::2] = (proj[:, 0::2] - src[0]) / w
    proj[:, 1::2] = (proj[:, 1::2] - src[1]) / h
    return clip_quads(proj)


# -- the resize (im_transforms.cpp, bbox_util.cpp) ---------------------------------------------------------------
def first_point(px: np.ndarray) -> np.ndarray:
    """first_point of quadrilaterals [K, 8]: the index (0-3) of the corner whose roll puts the corners nearest
    (summed distance) to their bounding square's top-left, top-right, bottom-right, bottom-left."""
    xs, ys = px[:, 0::2], px[:, 1::2]
    xmin, ymin, xmax, ymax = xs.min(1), ys.min(1), xs.max(1), ys.max(1)
    ax, ay = (xmin, xmax, xmax, xmin), (ymin, ymin, ymax, ymax)
    dists = []
    for start in range(4):
        total = None
        for k in range(4):
            j = (start + k) % 4
            d = _dist(xs[:, j], ys[:, j], ax[k], ay[k])
            total = d if total is None else total + d
        dists.append(total)
    return np.argmin(np.stack(dists, 1), axis=1)     # the first of equal distances, as the fork's strict <


def resize_quads(q: np.ndarray, rp: caffe_pb2.ResizeParameter, old_w: int, old_h: int) -> np.ndarray:
    """UpdateBBoxByResizePolicy's polygon half: corners rolled by :func:`first_point`, scaled by WARP (left in
    the old pixels by the other modes, as the fork's), over the new size (FIT_SMALL_SIZE's, aspect kept)."""
    if not len(q):
        return q.astype(F32)
    nh, nw = F32(rp.height), F32(rp.width)
    ow, oh = F32(old_w), F32(old_h)
    px = q.astype(F32) * np.array([ow, oh] * 4, F32)
    start = first_point(px)
    order = (start[:, None] + np.arange(4)[None, :]) % 4
    cols = np.stack([2 * order, 2 * order + 1], axis=2).reshape(-1, 8)
    px = np.take_along_axis(px, cols, axis=1)
    if rp.resize_mode == WARP:
        px = px * np.array([nw, nh] * 4, F32) / np.array([ow, oh] * 4, F32)
    elif rp.resize_mode == FIT_SMALL_SIZE:
        if ow / oh < nw / nh:
            nh = nw / (ow / oh)
        else:
            nw = (ow / oh) * nh
    return (px / np.array([nw, nh] * 4, F32)).astype(F32)
