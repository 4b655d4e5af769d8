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
Not ported: the fork's MultiBoxLoss with quadrilateral / rotated-box targets and its polygon DetectionEvaluate;
``neocaffe.layers.multibox_loss`` and ``DetectionEvaluate`` refuse them (the field set, a head of 9 or 12 per
prior, detections of 12 or 15 columns) rather than compute SSD's loss on the first four values.

How a DetectionOutput is told to be TextBoxes++'s (NUMBERING.md, rule 6: by the fields set and the bottoms,
never by a default): ``use_polygon`` set true asks for 12 offsets per prior, set false for 9; unset, a location
bottom of 12 per prior is the fork's (its default is true) and one of 4 is SSD's.

Where neocaffe parts from the fork: other ``code_type``\\ s, or ``variance_encoded_in_target``, are an error
with the 9- and 12-offset forms (the fork leaves the extra coordinates uninitialized there; its box still
decodes); ``save_output_param`` is read and checked at setup as SSD's is, and nothing is written per forward
(the fork's forward has no saving code in either form), ``visualize`` likewise draws nothing.
"""
from __future__ import annotations

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
