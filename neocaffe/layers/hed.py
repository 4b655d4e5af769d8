"""HED's layers that share BVLC's type names: its ``Crop`` and its class-balanced ``SigmoidCrossEntropyLoss``.

Lineage: s9xie/hed @ 912632b986acc6dd6cc33b95603b2f279d7bd9f2 (HED's own Caffe: BVLC's schema as of
``251e67ab`` plus ``V1LayerParameter.LayerType.CROP``). The registered classes stay where BVLC's are
(``shape.Crop``, ``sigmoid_cross_entropy_loss.SigmoidCrossEntropyLoss``); this module holds what HED computes
and the rule that picks it.

* ``Crop`` (``src/caffe/layers/crop_layer.cpp``, ``include/caffe/util/coords.hpp``, the ``coord_map()``
  of ``include/caffe/{vision,common,neuron}_layers.hpp``): two 4-D bottoms, top
  ``(N, C)`` of bottom 0 and ``(H, W)`` of bottom 1, cut from bottom 0 at ``(crop_h, crop_w)``, found once
  at setup: walk down from bottom 0 along every producer's first bottom, collecting blobs, then down
  from bottom 1 the same way to the first collected blob; compose the layers' diagonal affine maps
  (per spatial axis ``y = a x + b``) from that blob up to each bottom; ``crop_map = map1 o map0^-1``
  must have ``a = 1`` and an integer ``b <= 0``; ``crop = -b``. Maps: Convolution and Pooling
  ``FilterMap(k, s, p)^-1``, Deconvolution ``FilterMap(k, s, p)`` with ``FilterMap = (s, (k - 1) / 2 - p)``
  (a global pooling: ``k`` = the bottom's size, ``s`` = 1, ``p`` = 0), Crop ``(1, -crop)``, identity for
  the neuron layers, Concat, Eltwise, LRN, MVN, Softmax, Split and Slice; a layer with no bottom ends the
  walk. The diff of bottom 0 is the top's diff in the window, 0 elsewhere. Deviations on purpose: the
  maps are composed in exact rational arithmetic (the fork's float gives the same answer wherever its
  ``CHECK_DOUBLE_EQ`` passes with power-of-two strides); a dilated convolution uses its effective kernel
  ``d (k - 1) + 1`` and BVLC's later per-element types (BatchNorm, Scale, Bias, ELU, Swish, Clip) map as
  identity (HED's Caffe has neither and aborts); a window past bottom 0 is an error (the fork reads out
  of bounds).
  OpenCV's HED sample (``samples/dnn/edge_detection.py``) crops the centre instead; for HED's
  500 x 500 deploy input the two agree on dsn1-dsn4 (34, 35, 36, 38) but not dsn5 (42 here, 46 there).
* ``SigmoidCrossEntropyLoss`` (``src/caffe/layers/sigmoid_cross_entropy_loss_layer.cpp``): per image
  ``i`` (``dim = count / num``), ``P`` = #(label == 1), ``Q`` = #(label == 0); ``l = -(x (t - [x >= 0]) -
  log(1 + exp(x - 2 x [x >= 0])))``; loss ``= sum_i (Q / (P + Q) sum_{t=1} l + P / (P + Q) sum_{t=0} l) /
  num``. Labels other than exactly 0 or 1 are left out of the sums and counts. Diff: ``(sigmoid(x) - t)``,
  times ``Q / (P + Q)`` where the label is 1 and ``P / (P + Q)`` where it is 0 (left as is elsewhere:
  there the fork's diff is not the gradient of its loss), times ``loss_weight / num``. ``loss_param`` is
  never read. An image with no 0/1 label gives a NaN loss (``0 * 0 / 0``), as in the fork.

Which one a layer is (NUMBERING.md rule 6; the two read the same prototxt text): a ``Crop`` that has a
``crop_param`` or a ``SigmoidCrossEntropyLoss`` that has a ``loss_param`` is BVLC's (HED's schema has no
``crop_param``; HED's loss reads no ``loss_param``). Otherwise it is HED's when the net says so: the
NetParameter sets ``lineage: "hed"``, or it sets no lineage and has a layer of HED's own type
``ImageLabelmapData`` (HED's ``train_val.prototxt``); ``lineage: "upstream"`` keeps BVLC's
(``neocaffe.layers.lineage``). A V1 net
with ``type: CROP`` (only HED's schema has it: hed_release-deprecated's ``hed.prototxt``) is upgraded with
``lineage: "hed"``. HED's ``deploy.prototxt`` has none of these: add ``lineage: "hed"`` to it, or its Crops
cut at offset 0 (a BVLC Crop without ``crop_param`` whose maps give another offset logs a warning naming it).
CRF-RNN's Caffe (torrvision/caffe @ d779ee36, ``src/caffe/layers/crop_layer.cpp``) has the same Crop: a net of
lineage ``"crfrnn"`` (set, or told by its ``MultiStageMeanfield`` layer) crops the same way; its
SigmoidCrossEntropyLoss stays BVLC's.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable

import torch
from torch import Tensor

from neocaffe.layers.base import NetSoFar, Shape
from neocaffe.layers.lineage import LINEAGES, net_lineage

#: HED's own layer type: a net that has one is HED's (unless it sets ``lineage``)
HED_DATA_TYPE = "ImageLabelmapData"
#: coord_map() is the identity: HED's NeuronLayer subclasses, Concat, Eltwise, LRN, MVN, Softmax, Split,
#: Slice; plus BVLC's later per-element types (an extension)
IDENTITY_TYPES = frozenset({
    "AbsVal", "BNLL", "Dropout", "Exp", "Log", "Power", "ReLU", "PReLU", "Sigmoid", "TanH", "Threshold",
    "Concat", "Eltwise", "LRN", "MVN", "Softmax", "Split", "Slice",
    "BatchNorm", "Scale", "Bias", "ELU", "Swish", "Clip",
})

Map = tuple[Fraction, Fraction]  # y = a x + b along one spatial axis
Maps = tuple[Map, Map]  # (height, width)
_ID: Maps = ((Fraction(1), Fraction(0)),) * 2  # type: ignore[assignment]


#: the lineages whose Crop is the coordinate-map Crop (torrvision/caffe, CRF-RNN's, has the same ``crop_layer.cpp``)
COORD_MAP_CROP_LINEAGES = ("hed", "crfrnn")


def is_hed(param: Any, bvlc_message: str, net: NetSoFar | None, lineages: tuple[str, ...] = ("hed",)) -> bool:
    """Whether a Crop / SigmoidCrossEntropyLoss ``param`` is HED's (the module docstring's rule);
    ``bvlc_message``: the parameter message only BVLC's reads (``crop_param`` / ``loss_param``); ``lineages``:
    the net lineages whose layer of that type is HED's (``COORD_MAP_CROP_LINEAGES`` for Crop)."""
    return not param.HasField(bvlc_message) and net_lineage(net) in lineages


# -- Crop: offsets from the coordinate maps ----------------------------------------------------------
def _compose(left: Maps, right: Maps) -> Maps:
    return tuple((la * ra, la * rb + lb) for (la, lb), (ra, rb) in zip(left, right))  # type: ignore[return-value]


def _inv(m: Maps) -> Maps:
    return tuple((1 / a, -b / a) for a, b in m)  # type: ignore[return-value]


def _filter_map(k: tuple[int, int], s: tuple[int, int], p: tuple[int, int]) -> Maps:
    return tuple((Fraction(si), Fraction(ki - 1, 2) - pi) for ki, si, pi in zip(k, s, p))  # type: ignore[return-value]


def _hw(msg: Any, single: str, prefix: str, default: int) -> tuple[int, int]:
    """(h, w) of ``<prefix>_h``/``_w`` if set, else ``single`` (one value, or one per spatial axis where
    it is repeated, as ConvolutionParameter's), else ``default``."""
    if msg.HasField(f"{prefix}_h") or msg.HasField(f"{prefix}_w"):
        return int(getattr(msg, f"{prefix}_h")), int(getattr(msg, f"{prefix}_w"))
    v = getattr(msg, single)
    if not isinstance(v, int):  # repeated
        return (int(v[0]), int(v[-1])) if len(v) else (default, default)
    return (int(v),) * 2 if msg.HasField(single) else (default, default)


def _layer_map(lp: Any, shapes: Any, offsets: dict[int, tuple[int, int]]) -> Maps | None:
    """The ``coord_map()`` of one layer (top coordinates from bottom ones); None: HED's Caffe has none."""
    t = lp.type
    if id(lp) in offsets:  # a Crop (or RCF's AutoCrop) met on the walk: its own offsets
        ch, cw = offsets[id(lp)]
        return ((Fraction(1), Fraction(-ch)), (Fraction(1), Fraction(-cw)))
    if t in IDENTITY_TYPES:
        return _ID
    if t in ("Convolution", "Deconvolution"):
        cp = lp.convolution_param
        d = list(cp.dilation) or [1]
        k = tuple(dd * (kk - 1) + 1 for kk, dd in zip(_hw(cp, "kernel_size", "kernel", 0), (d[0], d[-1])))
        fm = _filter_map(k, _hw(cp, "stride", "stride", 1), _hw(cp, "pad", "pad", 0))  # type: ignore[arg-type]
        return fm if t == "Deconvolution" else _inv(fm)
    if t == "Pooling":
        pp = lp.pooling_param
        if pp.global_pooling:
            h, w = shapes[lp.bottom[0]][2:4]
            return _inv(_filter_map((h, w), (1, 1), (0, 0)))
        return _inv(_filter_map(_hw(pp, "kernel_size", "kernel", 0), _hw(pp, "stride", "stride", 1),
                                _hw(pp, "pad", "pad", 0)))
    return None


def _bvlc_spatial_offsets(lp: Any, n_axes: int) -> tuple[int, int]:
    """A BVLC Crop's offsets along axes 2 and 3 (for a walk through one)."""
    cp = lp.crop_param
    start = cp.axis + n_axes if cp.axis < 0 else cp.axis
    offs = [0 if i < start else int(cp.offset[0] if len(cp.offset) == 1 else
                                      (cp.offset[i - start] if len(cp.offset) else 0)) for i in (2, 3)]
    return offs[0], offs[1]


#: the offsets of a crop layer met on the walk (its LayerParameter, the net up to it), or None: not a crop layer
Through = Callable[[Any, NetSoFar], "tuple[int, int] | None"]


def _hed_through(lp: Any, sub: NetSoFar) -> tuple[int, int] | None:
    """HED's Crop maps by its own walk; a BVLC Crop (``crop_param``) by its offsets along axes 2 and 3."""
    if lp.type != "Crop":
        return None
    if lp.HasField("crop_param"):
        return _bvlc_spatial_offsets(lp, len(sub.shapes[lp.bottom[0]]))
    return crop_offsets(lp, sub)


def crop_offsets(param: Any, net: NetSoFar, through: Through = _hed_through,
                 who: tuple[str, str] = ("HED", "Crop")) -> tuple[int, int]:
    """HED's ``(crop_h, crop_w)`` for the Crop ``param`` (whose bottoms are wired) in ``net``; a
    ValueError says why the fork would abort. ``through``: how a crop layer on the walk maps (another
    fork's rule: ``neocaffe.layers.rcf``); ``who``: (fork, type) for the errors."""
    fork, kind = who
    layers = list(net.layers)
    producer: dict[str, int] = {}
    for i, lp in enumerate(layers):
        for t in lp.top:
            producer.setdefault(t, i)  # the first writer: in-place layers are skipped, as the fork's down_map
    offsets: dict[int, tuple[int, int]] = {}  # Crops walked through: their own offsets

    def down(blob: str) -> tuple[Any, str] | None:
        """The producer of ``blob`` and its first bottom; None at a net input or a bottomless layer."""
        if blob not in producer or not len(layers[producer[blob]].bottom):
            return None
        lp = layers[producer[blob]]
        return lp, lp.bottom[0]

    path = {param.bottom[0]}
    blob = param.bottom[0]
    while (step := down(blob)) is not None:
        blob = step[1]
        path.add(blob)
    inter = param.bottom[1]
    while inter not in path:
        step = down(inter)
        if step is None:
            raise ValueError(f"cannot align apparently disconnected blobs: '{param.bottom[1]}' does not come from "
                             f"any blob below '{param.bottom[0]}' ({fork}'s {kind} walks the first bottoms down)")
        inter = step[1]
    maps = []
    for start in param.bottom[:2]:
        m, blob = _ID, start
        while blob != inter:
            lp, below = down(blob)  # type: ignore[misc]
            if id(lp) not in offsets:  # a Crop on the way maps by its own offsets
                own = through(lp, NetSoFar(net.written, tuple(layers[:producer[blob]]), net.shapes))
                if own is not None:
                    offsets[id(lp)] = own
            lm = _layer_map(lp, net.shapes, offsets)
            if lm is None:
                raise ValueError(f"layer '{lp.name}' ({lp.type}) between '{inter}' and '{start}' has no coordinate "
                                 f"map in {fork}'s Caffe, so {fork}'s {kind} cannot align through it")
            m, blob = _compose(m, lm), below
        maps.append(m)
    crop_map = _compose(maps[1], _inv(maps[0]))
    out = []
    for axis, (a, b) in zip(("height", "width"), crop_map):
        if a != 1:
            raise ValueError(f"the coordinate maps of '{param.bottom[0]}' and '{param.bottom[1]}' differ in scale "
                             f"along the {axis} ({a}); {fork}'s {kind} needs them at one scale")
        if b > 0:
            raise ValueError(f"negative crop width along the {axis}: '{param.bottom[0]}' starts {b} past "
                             f"'{param.bottom[1]}' in their coordinate maps")
        if b.denominator != 1:
            raise ValueError(f"the crop along the {axis} is not a whole number of pixels ({-b})")
        out.append(int(-b))
    return out[0], out[1]


# -- SigmoidCrossEntropyLoss, class-balanced ------------------------------------------------------
class BalancedSigmoidCE(torch.autograd.Function):
    """HED's loss and diff (the module docstring); ``x``, ``t`` of one count, num = ``x.shape[0]``.
    ``neg_weight`` scales the negatives' term and ``other_weight`` is the diff weight of labels neither 0 nor 1:
    1 and 1 for HED; RCF's (``neocaffe.layers.rcf``) 1.1 and 0."""

    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, neg_weight: float = 1.0,  # type: ignore[override]
                other_weight: float = 1.0):
        num = x.shape[0] if x.dim() else 1
        xf = x.reshape(num, -1)
        tf = t.detach().reshape(num, -1).to(x.dtype)
        pos, neg = tf == 1, tf == 0
        n_pos, n_neg = pos.sum(1).to(x.dtype), neg.sum(1).to(x.dtype)
        total = n_pos + n_neg
        ge = (xf >= 0).to(x.dtype)
        elem = xf * (tf - ge) - torch.log(1 + torch.exp(xf - 2 * xf * ge))
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        loss_pos = -torch.where(pos, elem, zero).sum(1)
        loss_neg = -torch.where(neg, elem, zero).sum(1)
        loss = ((loss_pos * n_neg / total).sum() + neg_weight * (loss_neg * n_pos / total).sum()) / num
        w_pos, w_neg = (n_neg / total)[:, None], (neg_weight * n_pos / total)[:, None]
        weight = torch.where(pos, w_pos, torch.where(neg, w_neg, torch.full_like(xf, other_weight)))
        ctx.save_for_backward(x, tf, weight)
        ctx.num = num
        return loss

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, tf, weight = ctx.saved_tensors
        diff = (torch.sigmoid(x).reshape(tf.shape) - tf) * weight
        return (diff * (g / ctx.num)).reshape(x.shape), None, None, None


def check_crop_bottoms(x: Shape, ref: Shape, offsets: tuple[int, int]) -> str | None:
    """Why HED's Crop cannot cut ``ref``'s size from ``x`` at ``offsets`` (None: it can)."""
    if len(x) != 4 or len(ref) != 4:
        return f"HED's Crop takes 4-D bottoms (num, channels, height, width); received {tuple(x)} and {tuple(ref)}"
    if offsets[0] + ref[2] > x[2] or offsets[1] + ref[3] > x[3]:
        return (f"the {ref[2]}x{ref[3]} window at offsets {offsets} (from the coordinate maps) runs past bottom 0 "
                f"of {x[2]}x{x[3]}")
    return None


__all__ = ["BalancedSigmoidCE", "COORD_MAP_CROP_LINEAGES", "HED_DATA_TYPE", "LINEAGES", "check_crop_bottoms", "crop_offsets", "is_hed",
           "net_lineage"]
