"""TextBoxes v1's PriorBox (lineage ``"textboxes_v1"``: MhLiao/TextBoxes @ fd4d7a96, AAAI 2017, an SSD of
mid-2016: ``src/caffe/layers/prior_box_layer.cpp``, ``include/caffe/layers/prior_box_layer.hpp``, the
``PriorBoxParameter`` of ``src/caffe/proto/caffe.proto``; the fork has no ``prior_box_layer.cu``: its PriorBox
runs on the CPU).

The fork doubles every prior unconditionally (``num_priors_ = 2 * num_priors_``): each prior is followed by a
copy of the same size centred at ``(h + 1.0) * step_y`` instead of ``(h + 0.5) * step_y``, the order of
TextBoxes++'s ``denser_prior_boxes: true``, whose code path (``PriorBox.priors``) neocaffe reuses. Where v1's
arithmetic differs from SSD's (which neocaffe's PriorBox follows):

* ``min_size`` and ``max_size`` are floats (SSD casts them to int): the min square's side is ``min_size``, the
  max square's ``sqrt(min_size * max_size)`` with the product in float; an aspect-ratio prior is
  ``min_size * sqrt(ar)`` wide (``sqrt`` of the float ratio in double, as neocaffe's SSD path assumes);
* ``clip`` defaults to true (SSD's schema: false): an unset ``clip`` clips under this lineage;
* the schema has one ``min_size`` and one ``max_size`` and no ``step``/``offset``/``img_size``: the step is
  ``float(img) / layer`` (float), the offset 0.5; any of SSD's extra fields set is an error here.

Everything else (centres in float, box corners in double stored as float, clipping, variances) is SSD's.

The rest of the fork is weiliu89/caffe ssd's of mid-2016, file for file (``detection_output_layer.cpp``/``.cu``
as ssd's 0c16cf69, ``bbox_util.cpp`` ffa396f1, ``bbox_util.cu`` 3dd74cd4, ``multibox_loss_layer.cpp`` e4cde71b;
its ``caffe.proto`` is ssd's cb409043 less the fields ssd added later). What changes numbers:

* DetectionOutput: no detection at all gives one row of -1 for the whole batch (image id -1 too), not one
  ``[i, -1, ...]`` row per image: ported under this lineage (``detection_output.py``). Its decoding
  (CENTER_SIZE), ``ApplyNMSFast`` (no ``eta``: SSD's default 1) and ``keep_top_k`` are today's SSD's;
* MultiBoxLoss: ``do_neg_mining`` (default true) is its only mining switch (SSD's ``mining_type`` default
  MAX_NEGATIVE is the same mining); a net setting ``do_neg_mining: false`` without ``mining_type: NONE`` is
  refused here as in today's SSD (not ported: the released train script sets it true);
* the data side (``AnnotatedData`` without ``distort_param``/``expand_param``) was not compared.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

LINEAGE = "textboxes_v1"
#: SSD's PriorBoxParameter fields that v1's schema does not have
_NOT_V1 = ("step", "step_h", "step_w", "offset", "img_size", "img_h", "img_w")


def sizes(p: Any, ratios: list[float], error: Callable[[str], Exception]) -> np.ndarray:
    """(P, 2) float32 (width, height) of a cell's undoubled priors in v1's order, from ``prior_box_param``
    ``p`` (``min_size``, ``max_size``: one each, floats) and SSD's aspect ``ratios`` (1 first)."""
    extra = [f for f in _NOT_V1 if p.HasField(f)]
    if len(p.min_size) != 1 or len(p.max_size) > 1 or extra:
        raise error(f"TextBoxes v1's PriorBox (lineage \"{LINEAGE}\") reads one min_size, at most one max_size "
                    f"and no step/offset/img_size; received {len(p.min_size)} min_size, {len(p.max_size)} "
                    f"max_size{', ' + ', '.join(extra) if extra else ''}")
    f32 = np.float32
    m = f32(p.min_size[0])
    out = [(m, m)]
    if len(p.max_size):
        side = f32(math.sqrt(float(m * f32(p.max_size[0]))))   # float product, then sqrt stored as float
        out.append((side, side))
    for ar in ratios:
        if abs(ar - 1.0) < 1e-6:
            continue
        root = math.sqrt(float(f32(ar)))
        out.append((f32(float(m) * root), f32(float(m) / root)))
    return np.array(out, f32)


def clip(p: Any) -> bool:
    """``clip``: v1's schema defaults it to true."""
    return bool(p.clip) if p.HasField("clip") else True


def count_hint(net_param: Any, received: int, expected_ssd: int) -> str:
    """A sentence naming ``lineage: "textboxes_v1"`` where a head has exactly twice the values SSD's priors
    expect and the net is not already of that lineage; else ``""`` (DetectionOutput's / MultiBoxLoss's error)."""
    if net_param is None or expected_ssd <= 0 or received != 2 * expected_ssd:
        return ""
    if getattr(net_param, "lineage", "") == LINEAGE:
        return ""
    return ("; twice SSD's count: a TextBoxes v1 net (MhLiao/TextBoxes, whose PriorBox always adds a copy of each "
            f"prior half a cell lower) needs lineage: \"{LINEAGE}\" in the net (or denser_prior_boxes: true on each "
            "PriorBox, which gives the same priors where min_size/max_size are integers and clip is set)")


__all__ = ["LINEAGE", "clip", "count_hint", "sizes"]
