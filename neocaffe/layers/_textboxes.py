"""TextBoxes++'s quadrilateral and rotated-box decoding for DetectionOutput (lineage: MhLiao/TextBoxes_plusplus
@ 39d4898de1504c53a2ed3d67966a57b3595836d0, an SSD fork: ``src/caffe/layers/detection_output_layer.cpp``, and
``GetLocPredictions``, ``DecodeBBoxPolygon``, ``DecodeBBoxRBox`` of ``src/caffe/util/bbox_util.cpp``).

The fork's location head gives per prior (and location class) ``4 + 8`` offsets with ``use_polygon`` (its
default): SSD's box offsets, then one (dx, dy) per corner of a quadrilateral; or ``4 + 5`` without it: the box
offsets, then a rotated box ``(x1, y1, x2, y2, h)``. With ``code_type: CENTER_SIZE`` and the variances in the
priors, the extra offsets decode as (``v``: the prior's variances, ``pw``/``ph``: its width and height)::

    quadrilateral: x_k = v0 * dx_k * pw + (xmin, xmax, xmax, xmin)[k],  y_k = v1 * dy_k * ph + (ymin, ymin, ymax, ymax)[k]
    rotated box:   x_k = v0 * dx_k * pw + cx,  y_k = v1 * dy_k * ph + cy (k = 1, 2),  h = exp(v3 * dh) * ph

each product in float, left to right, as the fork's. NMS stays SSD's (``ApplyNMSFast`` on the decoded
horizontal boxes, on the CPU and the GPU path alike); the fork's rotated-box overlap (``RboxOverlap``) is used by
no layer, and its polygon NMS is the Python demo's post-processing (``examples/text/nms.py``), not the layer's.
Top rows: ``[image, label, score, xmin, ymin, xmax, ymax]`` then the 8 quadrilateral or the 5 rotated-box values
(15 or 12 columns); no detection at all gives one ``[i, -1, ...]`` row per image, as SSD's.
MultiBoxLoss (the fork's ``multibox_loss_layer.cpp``, with GetGroundTruth, PolygonToRbox, EncodeBBoxPolygon,
EncodeBBoxRBox and EncodeLocPredictionBboxPolygon / ...Rbox of ``bbox_util.cpp``): the label bottom has 16 columns
a row, SSD's 8 then the quadrilateral ``x1 y1 .. x4 y4`` (top-left, top-right, bottom-right, bottom-left), as the
fork's AnnotatedData writes it; matching and mining are SSD's on the box offsets (also HARD_EXAMPLE's location
term), and the location loss covers all 12 (9) offsets, the extra ones encoded as the decoding above inverted
(the rotated box's from the quadrilateral by PolygonToRbox); with ``bp_inside`` each offset is gated by one side
of its prior as the fork's (the fourth corner's x by xmax, h by ymax), always the prior's. The fork caps the
reported location term at 20 (``float``), not its diff; so do we. The same CENTER_SIZE / variance-in-prior
restriction holds (the fork leaves the extra targets unset otherwise). The fork's AnnotatedData side (its
quadrilateral records and their augmentation) is :mod:`neocaffe.data.polygon_anno`.

DetectionEvaluate (the fork's ``detection_evaluate_layer.cpp`` with the polygon / rotated-box overloads of
``GetDetectionResults`` and ``GetGroundTruth``): ``use_polygon`` (its default) reads detections of 15 columns,
``use_polygon: false`` of 12, and both read ground truth of 16; the quadrilaterals (rotated boxes) are read and
then not used: a detection is matched to the ground truth by ``JaccardOverlap`` of the horizontal boxes,
exactly as SSD's layer (pixels with ``name_size_file`` included). So here the first 7 (8) columns go through
SSD's evaluation; the form is told by :func:`eval_form`.

How a DetectionOutput is told to be TextBoxes++'s (NUMBERING.md, rule 6: by the fields set and the bottoms,
never by a default): ``use_polygon`` set true asks for 12 offsets per prior, set false for 9; unset, a location
bottom of 12 per prior is the fork's (its default is true) and one of 4 is SSD's.

Where neocaffe parts from the fork: other ``code_type``\\ s, or ``variance_encoded_in_target``, are an error
with the 9- and 12-offset forms (the fork leaves the extra coordinates uninitialized there; its box still
decodes); ``save_output_param`` is read and checked at setup as SSD's is, and nothing is written per forward
(the fork's forward has no saving code in either form), ``visualize`` likewise draws nothing.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from neocaffe.layers._bbox import CENTER_SIZE

#: offsets per prior of each form: SSD's box, TextBoxes++'s box + rotated box, box + quadrilateral
SSD, RBOX, POLYGON = 4, 9, 12
#: columns of a detection row per form
COLUMNS = {SSD: 7, RBOX: 12, POLYGON: 15}


def loc_form(p: Any, loc_count: int, num_priors: int, loc_classes: int,
             error: Callable[[str], Exception]) -> int:
    """The offsets per prior (4, 9 or 12) a DetectionOutput with ``detection_output_param`` ``p`` reads from a
    location bottom of ``loc_count`` values per image; an error where the bottom does not fit."""
    per = num_priors * loc_classes
    if p.HasField("use_polygon"):
        form = POLYGON if p.use_polygon else RBOX
        if loc_count != per * form:
            raise error(f"number of priors ({num_priors}) must match number of location predictions; "
                        f"received {loc_count} per image, expected {per * form} (TextBoxes++'s use_polygon: "
                        f"{'true' if p.use_polygon else 'false'}, {form} per prior)")
    elif per and loc_count == per * POLYGON:
        form = POLYGON
    else:
        if loc_count != per * SSD:
            raise error(f"number of priors ({num_priors}) must match number of location predictions; received "
                        f"{loc_count} per image, expected {per * SSD} (SSD) or {per * POLYGON} (TextBoxes++)")
        return SSD
    if p.code_type != CENTER_SIZE or p.variance_encoded_in_target:
        raise error("TextBoxes++'s quadrilateral and rotated-box offsets decode only with code_type: CENTER_SIZE "
                    "and variances in the priors (the fork leaves them undefined otherwise)")
    return form


def decode_polygon(prior: Tensor, var: Tensor, off: Tensor) -> Tensor:
    """DecodeBBoxPolygon's quadrilateral: ``off`` [..., P, 8] against ``prior`` / ``var`` [P, 4]: [..., P, 8]."""
    pw = prior[..., 2] - prior[..., 0]
    ph = prior[..., 3] - prior[..., 1]
    xs = (prior[..., 0], prior[..., 2], prior[..., 2], prior[..., 0])
    ys = (prior[..., 1], prior[..., 1], prior[..., 3], prior[..., 3])
    out = []
    for k in range(4):
        out.append(var[..., 0] * off[..., 2 * k] * pw + xs[k])
        out.append(var[..., 1] * off[..., 2 * k + 1] * ph + ys[k])
    return torch.stack(out, dim=-1)


def decode_rbox(prior: Tensor, var: Tensor, off: Tensor) -> Tensor:
    """DecodeBBoxRBox's rotated box: ``off`` [..., P, 5] against ``prior`` / ``var`` [P, 4]: [..., P, 5]."""
    pw = prior[..., 2] - prior[..., 0]
    ph = prior[..., 3] - prior[..., 1]
    cx = (prior[..., 0] + prior[..., 2]) / 2
    cy = (prior[..., 1] + prior[..., 3]) / 2
    return torch.stack([var[..., 0] * off[..., 0] * pw + cx, var[..., 1] * off[..., 1] * ph + cy,
                        var[..., 0] * off[..., 2] * pw + cx, var[..., 1] * off[..., 3] * ph + cy,
                        torch.exp(var[..., 3] * off[..., 4]) * ph], dim=-1)


def split(loc: Tensor, prior: Tensor, form: int, loc_classes: int) -> tuple[Tensor, Tensor]:
    """GetLocPredictions of the fork's location bottom (N, P*L*form): SSD's box offsets as (N, P*L*4) and the
    decoded extra coordinates (N, L, P, form - 4)."""
    n = loc.shape[0]
    num_priors = prior.shape[-1] // 4
    per = loc.reshape(n, num_priors, loc_classes, form)
    pri = prior.reshape(-1)[: 2 * num_priors * 4].view(2, num_priors, 4)
    extra = per[..., 4:].transpose(1, 2)                       # [N, L, P, form - 4]
    decode = decode_polygon if form == POLYGON else decode_rbox
    return per[..., :4].reshape(n, -1), decode(pri[0], pri[1], extra)


def eval_form(p: Any, det_shape: tuple[int, ...], error: Callable[[str], Exception]) -> tuple[int, int]:
    """The (detection, ground-truth) columns a DetectionEvaluate with ``detection_evaluate_param`` ``p`` reads:
    SSD's (7, 8), TextBoxes++'s (15, 16) with ``use_polygon`` set true, (12, 16) set false; unset, by the
    detections' width (15, 12, else SSD's)."""
    width = det_shape[-1] if len(det_shape) else 0
    if p.HasField("use_polygon"):
        cols = COLUMNS[POLYGON if p.use_polygon else RBOX]
        if width != cols:
            raise error(f"TextBoxes++'s use_polygon: {'true' if p.use_polygon else 'false'} evaluates detections of "
                        f"{cols} columns; received shape {tuple(det_shape)}")
        return cols, LABEL_COLUMNS
    if width in (COLUMNS[POLYGON], COLUMNS[RBOX]):
        return width, LABEL_COLUMNS
    return COLUMNS[SSD], 8


# -- MultiBoxLoss's quadrilateral / rotated-box training (the fork's ``multibox_loss_layer.cpp``; GetGroundTruth,
# PolygonToRbox, EncodeBBoxPolygon / EncodeBBoxRBox and EncodeLocPredictionBboxPolygon / ...Rbox of bbox_util.cpp)
#: label columns per ground-truth row: SSD's 8, then the quadrilateral (x1, y1, ..., x4, y4), corners tl, tr, br, bl
LABEL_COLUMNS = 16
#: with bp_inside, the prior coordinate (xmin, ymin, xmax, ymax) whose leaving [0, 1] gates each extra offset
#: (the fork's choice, x4 by xmax and the rotated box's h by ymax included)
_GATE = {POLYGON: (0, 1, 2, 3, 2, 3, 2, 3), RBOX: (0, 1, 2, 3, 3)}


def loss_form(p: Any, per_prior: float, error: Callable[[str], Exception]) -> int:
    """The offsets per prior (4, 9 or 12) a MultiBoxLoss with ``multibox_loss_param`` ``p`` trains: set
    ``use_polygon`` true asks for 12, false for 9; unset, a head of 12 per prior is the fork's (its default)."""
    if p.HasField("use_polygon"):
        form = POLYGON if p.use_polygon else RBOX
    elif per_prior == POLYGON:
        form = POLYGON
    elif per_prior == RBOX:
        raise error("a location head of 9 per prior is TextBoxes++'s rotated-box form: set "
                    "multibox_loss_param.use_polygon: false (the fork's default is true, 12 per prior)")
    else:
        return SSD
    if per_prior != form:
        raise error(f"TextBoxes++'s use_polygon: {'true' if form == POLYGON else 'false'} trains {form} location "
                    f"values per prior; received {per_prior:g}")
    if p.code_type != CENTER_SIZE or p.encode_variance_in_target:
        raise error("TextBoxes++'s quadrilateral and rotated-box targets encode only with code_type: CENTER_SIZE "
                    "and encode_variance_in_target: false (the fork leaves them undefined otherwise)")
    return form


def label_rows(gt: Tensor, num: int, use_difficult: bool) -> tuple[Tensor, Tensor]:
    """The fork's label blob (1, 1, G, 16): SSD's 8-column rows (for ``_multibox.ground_truth``) and the
    quadrilaterals [N, G', 8] in the slots ``ground_truth`` gives their boxes (same filter, same stable order)."""
    rows = gt.reshape(-1, LABEL_COLUMNS)
    item = rows[:, 0].to(torch.int64)
    keep = item != -1
    if not use_difficult:
        keep &= rows[:, 7] == 0
    kept, item = rows[keep], item[keep]
    quads = torch.zeros(num, 0, 8, dtype=gt.dtype, device=gt.device)
    if item.numel() and bool(((item >= 0) & (item < num)).all()):    # else ground_truth raises
        order = torch.sort(item, stable=True).indices
        kept, item = kept[order], item[order]
        counts = torch.bincount(item, minlength=num)
        slot = torch.arange(item.numel(), device=gt.device) - (torch.cumsum(counts, 0) - counts)[item]
        quads = torch.zeros(num, int(counts.max()), 8, dtype=gt.dtype, device=gt.device)
        quads[item, slot] = kept[:, 8:16]
    return rows[:, :8], quads


def _line_distance(px: Tensor, py: Tensor, x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor) -> Tensor:
    dx, dy = x2 - x1, y2 - y1
    return (px * dy - py * dx + x2 * y1 - y2 * x1).abs() / (torch.sqrt(dx * dx + dy * dy) + 1e-6)


def quad_to_rbox(q: Tensor) -> Tensor:
    """PolygonToRbox: quadrilaterals [..., 8] (tl, tr, br, bl) as rotated boxes [..., 5] ``(x1, y1, x2, y2, h)``:
    the top side's ends of the box of the mean width and angle of the top and bottom sides, and its height
    (the centre's distances to those two sides)."""
    xs, ys = q[..., 0::2], q[..., 1::2]
    cx, cy = xs.sum(-1) / 4, ys.sum(-1) / 4
    width = (torch.hypot(xs[..., 1] - xs[..., 0], ys[..., 1] - ys[..., 0])
             + torch.hypot(xs[..., 2] - xs[..., 3], ys[..., 2] - ys[..., 3])) / 2
    height = (_line_distance(cx, cy, xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1])
              + _line_distance(cx, cy, xs[..., 3], ys[..., 3], xs[..., 2], ys[..., 2]))
    theta = (torch.atan2(ys[..., 1] - ys[..., 0], xs[..., 1] - xs[..., 0])
             + torch.atan2(ys[..., 2] - ys[..., 3], xs[..., 2] - xs[..., 3])) / 2
    tx = cx + torch.cos(theta - math.pi / 2) * height / 2
    ty = cy + torch.sin(theta - math.pi / 2) * height / 2
    hw = width / 2
    return torch.stack([tx + torch.cos(theta - math.pi) * hw, ty + torch.sin(theta - math.pi) * hw,
                        tx + torch.cos(theta) * hw, ty + torch.sin(theta) * hw, height], dim=-1)


def encode_extra(prior: Tensor, var: Tensor, gt: Tensor, form: int) -> Tensor:
    """EncodeBBoxPolygon's / EncodeBBoxRBox's extra targets (CENTER_SIZE, variances in the priors): ``gt``
    [..., 8] quadrilaterals (their rotated boxes for the 9-offset form) against ``prior`` / ``var`` [..., 4]."""
    pw = prior[..., 2] - prior[..., 0]
    ph = prior[..., 3] - prior[..., 1]
    if form == POLYGON:
        ax = torch.stack([prior[..., 0], prior[..., 2], prior[..., 2], prior[..., 0]], -1)
        ay = torch.stack([prior[..., 1], prior[..., 1], prior[..., 3], prior[..., 3]], -1)
        ex = (gt[..., 0::2] - ax) / pw.unsqueeze(-1) / var[..., 0:1]
        ey = (gt[..., 1::2] - ay) / ph.unsqueeze(-1) / var[..., 1:2]
        return torch.stack([ex, ey], -1).flatten(-2)
    r = quad_to_rbox(gt)
    cx = (prior[..., 0] + prior[..., 2]) / 2
    cy = (prior[..., 1] + prior[..., 3]) / 2
    return torch.stack([(r[..., 0] - cx) / pw / var[..., 0], (r[..., 1] - cy) / ph / var[..., 1],
                        (r[..., 2] - cx) / pw / var[..., 0], (r[..., 3] - cy) / ph / var[..., 1],
                        torch.log(r[..., 4] / ph) / var[..., 3]], -1)


def loc_pairs(loc: Tensor, box_target: Tensor, quads: Tensor, idx: Tensor, prior: Tensor, var: Tensor,
              form: int, bp_inside: bool) -> tuple[Tensor, Tensor]:
    """EncodeLocPredictionBboxPolygon / ...Rbox for every (image, class, prior): the prediction ``loc``
    [N, L, P, form] and target [N, L, P, form] (valid where ``idx`` [N, L, P] > -1); ``box_target``: SSD's
    encoded boxes. With ``bp_inside`` a coordinate whose prior side leaves [0, 1] predicts its target (the fork
    gates by the prior, also without ``use_prior_for_matching``)."""
    n, lcls, num_priors = idx.shape
    if quads.shape[1]:
        g = torch.gather(quads.unsqueeze(1).expand(-1, lcls, -1, -1), 2,
                         idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, -1, 8))
    else:
        g = torch.zeros(n, lcls, num_priors, 8, dtype=loc.dtype, device=loc.device)
    corners = torch.stack([prior[..., 0], prior[..., 1], prior[..., 2], prior[..., 1],
                           prior[..., 2], prior[..., 3], prior[..., 0], prior[..., 3]], -1)
    g = torch.where((idx > -1).unsqueeze(-1), g, corners.expand_as(g))   # keep logs finite off-match
    target = torch.cat([box_target, encode_extra(prior, var, g.to(loc.dtype), form)], -1)
    pred = loc
    if bp_inside:
        outside = (prior < 0) | (prior > 1)
        outside = torch.cat([outside, outside[..., list(_GATE[form])]], -1)
        pred = torch.where(outside, target, loc)
    return pred, target
