"""RCF's layers (Richer Convolutional Features for edge detection, CVPR 2017): ``AutoCrop``, and what its
``SigmoidCrossEntropyLoss`` and ``ImageLabelmapData`` compute where they differ from HED's.

Lineage: yun-liu/RCF @ fc9e0f9f61751e0b2d6d27c4e916a183502fab34, a Caffe built on s9xie/hed's (BVLC's schema of
mid 2016: it adds no field, so nothing joins ``caffe.proto``).

* ``AutoCrop`` (``src/caffe/layers/auto_crop_layer.{cpp,cu}``, ``include/caffe/layers/auto_crop_layer.hpp``): HED's
  coordinate-map Crop under RCF's own type name (the walk and the maps of :func:`neocaffe.layers.hed.crop_offsets`,
  once at setup): top ``(N, C)`` of bottom 0 and ``(H, W)`` of bottom 1, cut from bottom 0 at ``(crop_h, crop_w)``;
  the diff of bottom 0 is the top's diff in the window, 0 elsewhere; bottom 1 gets none. On the walk an
  ``AutoCrop`` maps by its own offsets, and a ``Crop`` (RCF's is BVLC's, ``crop_layer.{hpp,cpp}``) by
  ``(1, -offsets[0])``, ``(1, -offsets[1])``: the fork's ``coord_map()`` reads the offsets of axes 0 and 1 (its
  ``offsets`` vector covers every axis), so a Crop at ``axis: 2`` maps as the identity; followed as written.
  Deviations, as HED's Crop here: exact rational maps, a dilated kernel's extent (the fork's too), BatchNorm/Scale/
  Bias/Swish/Clip as identity (the fork aborts: they have no ``coord_map()``), and a window past bottom 0 is an error
  (the fork reads out of bounds).
* ``SigmoidCrossEntropyLoss`` (``src/caffe/layers/sigmoid_cross_entropy_loss_layer.cpp``, commits a3de168 and
  2a00332 only drop the CPU_ONLY stubs: no ``.cu``, the GPU runs the CPU code): HED's class-balanced loss with the
  negatives' term weighted 1.1: per image ``i``, ``P`` = #(label == 1), ``Q`` = #(label == 0), loss ``= sum_i (Q /
  (P + Q) sum_{t=1} l + 1.1 P / (P + Q) sum_{t=0} l) / num``; diff ``(sigmoid(x) - t)`` times ``Q / (P + Q)`` where
  the label is 1, ``1.1 P / (P + Q)`` where it is 0 and 0 elsewhere (HED leaves it unweighted there), times
  ``loss_weight / num``: the true gradient of the loss. ``loss_param`` is never read; an image without a 0/1 label
  gives a NaN loss (``0 * 0 / 0``), as in the fork.
* ``ImageLabelmapData`` (``image_labelmap_data_layer.cpp`` and ``data_transformer.cpp``'s ``LabelmapTransform``):
  as HED's but for the label: the gray map is converted to float before ``/ 255`` (OpenCV: ``gt * float(1/255)``),
  and values over 0.5 become 1 (``gt >= 128``); 0 stays 0 and weak edges (1..127, drawn by few annotators) keep
  their fraction, which the loss leaves out (the paper's "ignored" pixels; HED rounds them to 0, a negative).

Which one a layer is: a net of lineage ``"rcf"`` (set, or told by an ``AutoCrop`` layer: RCF's train and test nets
of VGG16 and ResNet50; ``neocaffe.layers.lineage``, where RCF is built on HED, so its ``ImageLabelmapData`` says
nothing more). There a ``SigmoidCrossEntropyLoss`` without ``loss_param`` is RCF's (with one: BVLC's, as in a HED
net) and ``ImageLabelmapData`` encodes RCF's labels. RCF's ``train_resnet101.prototxt`` has no AutoCrop (BVLC Crops
with ``crop_param``, which HED's schema lacks): it reads as HED's, and its losses log a warning naming the fix,
``lineage: "rcf"``.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import Tensor

from neocaffe.layers import hed
from neocaffe.layers.base import Example, Layer, NetSoFar, Shape
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.registry import register_layer

log = logging.getLogger("neocaffe.layers")

RCF_TYPE = "AutoCrop"
#: RCF's weight of the negatives' term (the fork's literal 1.1, in double)
NEG_WEIGHT = 1.1


# -- AutoCrop --------------------------------------------------------------------------------------
def _through(lp: Any, sub: NetSoFar) -> tuple[int, int] | None:
    """How RCF's walk maps a crop layer it meets (the module docstring); None: not one."""
    if lp.type == RCF_TYPE:
        return hed.crop_offsets(lp, sub, _through, ("RCF", RCF_TYPE))
    if lp.type != "Crop":
        return None
    cp = lp.crop_param  # BVLC's Reshape: offsets[i] = 0 before axis, else offset(0) or offset(i - axis)
    n = len(sub.shapes[lp.bottom[0]])
    start = cp.axis + n if cp.axis < 0 else cp.axis
    offs = [0 if i < start else int(cp.offset[0] if len(cp.offset) == 1 else
                                    (cp.offset[i - start] if len(cp.offset) > i - start else 0)) for i in (0, 1)]
    return offs[0], offs[1]


def auto_crop_offsets(param: Any, net: NetSoFar) -> tuple[int, int]:
    """RCF's ``(crop_h, crop_w)`` for the AutoCrop ``param`` in ``net``; a ValueError says why the fork would abort."""
    return hed.crop_offsets(param, net, _through, ("RCF", RCF_TYPE))


@register_layer(RCF_TYPE)
class AutoCrop(Layer):
    """RCF's AutoCrop (the module docstring): no parameter message; offsets from the net's coordinate maps."""

    exact_bottoms = 2
    exact_tops = 1
    takes_net = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        if self.net_so_far is None:
            raise self.error("needs the net it is built into (it walks the layers below its bottoms); received a "
                             "layer built alone")
        try:
            self.offsets = auto_crop_offsets(self.param, self.net_so_far)
        except ValueError as e:
            raise self.error(str(e)) from None

    def window(self, x: Shape, ref: Shape) -> tuple[int, list[int]]:
        """(first cropped axis, offsets from it on), as BVLC's Crop gives them (the ONNX exporter reads it)."""
        if len(x) != 4 or len(ref) != 4:
            raise self.error(f"takes 4-D bottoms (num, channels, height, width); received {tuple(x)} and {tuple(ref)}")
        oh, ow = self.offsets
        if oh + ref[2] > x[2] or ow + ref[3] > x[3]:
            raise self.error(f"the {ref[2]}x{ref[3]} window at offsets {self.offsets} (from the coordinate maps) runs "
                             f"past bottom 0 of {x[2]}x{x[3]}")
        return 2, [oh, ow]

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, ref = bottom_shapes
        self.window(x, ref)
        return [(x[0], x[1], ref[2], ref[3])]

    def forward(self, x: Tensor, ref: Tensor) -> Tensor:  # type: ignore[override]
        self.reshape([tuple(x.shape), tuple(ref.shape)])
        oh, ow = self.offsets
        return x[:, :, oh:oh + ref.shape[2], ow:ow + ref.shape[3]]

    @classmethod
    def examples(cls) -> list[Example]:
        from google.protobuf import text_format

        from neocaffe.proto import caffe_pb2

        def lp(text: str) -> Any:
            return text_format.Parse(text, caffe_pb2.LayerParameter())

        # pool (k 2, s 2): (1/2, -1/4), then deconvolution (k 4, s 2): (2, 3/2); composed (1, 1): offset 1
        pool = lp('name: "pool" type: "Pooling" bottom: "data" top: "p" '
                  'pooling_param { pool: MAX kernel_size: 2 stride: 2 }')
        up = lp('name: "up" type: "Deconvolution" bottom: "p" top: "up" '
                'convolution_param { num_output: 2 kernel_size: 4 stride: 2 }')
        shapes = {"data": (2, 1, 6, 7), "p": (2, 1, 3, 4), "up": (2, 2, 8, 10)}
        net = NetSoFar(caffe_pb2.NetParameter(), (pool, up), shapes)
        r = np.random.default_rng(41)
        return [Example('name: "c" type: "AutoCrop" bottom: "up" bottom: "data" top: "y"',
                        [r.standard_normal((2, 2, 8, 10)), r.standard_normal((2, 1, 6, 7))], net=net)]


# -- lineage hints (RCF's loss itself is hed.BalancedSigmoidCE(x, t, NEG_WEIGHT, 0.0)) -----------------------
def _hed_net_hint(net: NetSoFar | None) -> str:
    """Why a net taken as HED's (by its ImageLabelmapData) looks like RCF's: a layer sets ``crop_param``, which
    HED's schema lacks (RCF's train_resnet101.prototxt); ``""``: no such sign, or ``lineage`` is set."""
    written = getattr(net, "written", None)
    if written is None or str(getattr(written, "lineage", "")):
        return ""
    crop = next((lp for lp in written.layer if lp.HasField("crop_param")), None)
    if crop is None:
        return ""
    return (f"the net is taken as HED's (it has ImageLabelmapData), yet layer '{crop.name}' sets crop_param, "
            "which HED's schema lacks: if this is an RCF net (yun-liu/RCF's train_resnet101.prototxt), set "
            "lineage: \"rcf\" in the net for RCF's loss (negatives weighted 1.1, weak edges ignored) and labels")


def sigmoid_ce_form(param: Any, net: NetSoFar | None, name: str) -> str:
    """Which ``SigmoidCrossEntropyLoss`` the layer ``param`` is: ``"rcf"``, ``"hed"`` or ``"upstream"`` (the
    module docstrings of this module and ``neocaffe.layers.hed``); a HED form that looks like RCF's logs a warning."""
    if hed.is_hed(param, "loss_param", net):
        hint = _hed_net_hint(net)
        if hint:
            log.warning("layer '%s' (SigmoidCrossEntropyLoss): %s", name, hint)
        return "hed"
    if not param.HasField("loss_param") and net_lineage(net) == "rcf":
        return "rcf"
    return "upstream"


# -- ImageLabelmapData -----------------------------------------------------------------------------
def encode_labelmap_rcf(gt: np.ndarray) -> np.ndarray:
    """RCF's label from a uint8 edge map: ``gt * float(1/255)`` in float32, values over 0.5 set to 1."""
    v = gt.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.where(v > 0.5, np.float32(1), v).astype(np.float32)


def labels_are_rcf(net: NetSoFar | None) -> bool:
    """Whether an ImageLabelmapData built into ``net`` encodes RCF's labels (a net of lineage ``"rcf"``)."""
    return net_lineage(net) == "rcf"


__all__ = ["AutoCrop", "NEG_WEIGHT", "RCF_TYPE", "auto_crop_offsets", "encode_labelmap_rcf",
           "labels_are_rcf", "sigmoid_ce_form"]
