"""``NetParameter.lineage``: which fork's semantics a net's shared type names take, where two forks gave one
type name two meanings that no field of the layer tells apart (NUMBERING.md rule 6, last resort).

* ``"hed"``: s9xie/hed's ``Crop`` (offsets from the coordinate maps) and class-balanced
  ``SigmoidCrossEntropyLoss`` where the layer sets no ``crop_param`` / ``loss_param`` (``neocaffe.layers.hed``);
* ``"rcf"``: yun-liu/RCF's ``AutoCrop`` walks, its ``SigmoidCrossEntropyLoss`` (negatives weighted 1.1 more, labels
  other than 0/1 get no diff) where the layer sets no ``loss_param``, and its ``ImageLabelmapData`` labels (weak edges
  kept as fractions, which the loss ignores; ``neocaffe.layers.rcf``). RCF is built on HED's Caffe (``BASES``): its
  train nets hold HED's ``ImageLabelmapData``, and its ``AutoCrop`` names the net RCF's. Its ``Crop`` is BVLC's;
* ``"lsoftmax"``: wy1iu/LargeMargin_Softmax_Loss's ``BN`` where its ``bn_param`` reads as PSPNet's (blobs of
  1 x C, the fourth a running *inverse* standard deviation; ``neocaffe.layers.bn``);
* ``"caffe_ocr"``: senlinuc/caffe_ocr's ``CTCGreedyDecoder`` with 2 bottoms (x, labels (N, L)) -> accuracy
  (``neocaffe.layers.ocr``), and its multi-label ``Data``/``ImageData`` (``neocaffe.layers.ocr_data``);
* ``"cascade"``: zhaoweicai/cascade-rcnn's ``ROIPooling`` backward (each bin's diff to its argmax, no
  feasible-set test) where the layer sets no ``pad_ratio`` (``neocaffe.layers.roi``);
* ``"flownet"``: lmb-freiburg/flownet2's (and NVlabs/PWC-Net's) ``L1Loss`` where the layer sets no
  ``l1_loss_param`` and has 2 bottoms (else NVCaffe's DetectNet ``L1Loss``; ``neocaffe.layers.detectnet_l1``),
  and its one-bottom ``Eltwise`` (SUM or PROD; ``neocaffe.layers.blob_ops``);
* ``"liteflownet"``: twhui/LiteFlowNet's ``Warp`` (bottom 1 absolute coordinates, each corner outside the image
  counts 0; ``neocaffe.layers.liteflownet``) where PWC-Net's is otherwise read. LiteFlowNet is built on
  flownet2's Caffe (``BASES``): its nets hold FlowNet's types too, which keep FlowNet's semantics there
  (:func:`descends`), and its own markers win over FlowNet's when both meet in one net;
* ``"crfrnn"``: torrvision/caffe's (CRF-RNN's) ``Crop``, the coordinate-map Crop HED's is (its schema has no
  ``crop_param``; ``neocaffe.layers.hed``); its ``SigmoidCrossEntropyLoss`` is BVLC's;
* ``"yolo9000"``: choasup/caffe-yolo9000's ``EvalDetection`` (one box per class, NMS per class) where the layer
  sets no ``save_output_param`` (which alone names that form; else Intel Caffe's; ``neocaffe.layers._yolo9000_eval``).
  No type is the fork's own (Intel Caffe copied its three), so no marker names it;
* ``"faceboxes"``: sfzhang15/FaceBoxes' ``PriorBox`` (densified anchors: 16 per cell for ``min_size`` 32, 4 for
  64, 1 for others, each spanning ``+-(side - 1) / 2``; ``neocaffe.layers._faceboxes_priors``) and its
  ``AnnotatedData`` sampling (square crops, faces over 16 pixels; ``neocaffe.data.faceboxes_sampling``). The
  fork has no type of its own and no field tells its PriorBox from SSD's, so only ``lineage:`` names it (a net's
  count mismatch at DetectionOutput / MultiBoxLoss names the fix where a PriorBox has the fork's min sizes 32,
  64, 128);
* ``"darknet2caffe"``: ChenYingpeng/darknet2caffe's ``Pooling`` (its ``pooling_layer.cpp``, README step 3, "only work
  for yolov3-tiny": one more output row and column where ``kernel_h - stride_h`` is positive and odd;
  ``neocaffe.layers.pooling``). Never automatic: a BVLC net may hold a 2x2 stride-1 pool and an Upsample too; a
  net's shape mismatch at Concat / Eltwise names this fix where a Pooling has such a kernel and the net an
  ``Upsample`` (the converter's yolov3-tiny, :func:`darknet2caffe_hint`);
* ``"textboxes_v1"``: MhLiao/TextBoxes' (TextBoxes v1) ``PriorBox``: every prior doubled half a cell lower as
  TextBoxes++'s ``denser_prior_boxes: true``, float ``min_size``/``max_size``, ``clip`` true when unset
  (``neocaffe.layers._textboxes_v1``). Never automatic (no type or field of its own); a count mismatch at
  DetectionOutput / MultiBoxLoss of exactly twice SSD's names this fix;
* ``"intelcaffe"``: intel/caffe's ``Data``, whose transformer never applies ``transform_param.flow`` (the
  overload holding LRCN's code is called by none of its layers; elsewhere the ``flow`` of raw Datums is LRCN's:
  ``neocaffe.layers.data_layers.DataLayer``). Never automatic (Intel's other forms are told by their fields);
* ``"upstream"``: BVLC's (and the field-told forks') everywhere;
* ``""`` (unset): a layer type only that fork has (``MARKERS``) names the lineage, else ``"upstream"``. Markers of a
  lineage and of its base (``BASES``) in one net name the derived lineage; markers of two unrelated lineages
  are an error asking for ``lineage:``.
"""
from __future__ import annotations

from neocaffe.layers.base import NetSoFar

LINEAGES = ("", "caffe_ocr", "cascade", "crfrnn", "darknet2caffe", "faceboxes", "flownet", "hed", "intelcaffe",
            "liteflownet", "lsoftmax", "rcf", "textboxes_v1", "upstream", "yolo9000")
#: a fork built on another fork's Caffe -> that base: its nets hold the base's own types, which keep the base's
#: semantics there (``descends``), and its own markers win over the base's
BASES = {"liteflownet": "flownet", "rcf": "hed"}
#: a type only that lineage has: a net with one of its layers (and no ``lineage``) is of that lineage
MARKERS = {"ImageLabelmapData": "hed",  # HED's train_val.prototxt
           "AutoCrop": "rcf",  # yun-liu/RCF's {train,test}_{vgg16,resnet50}.prototxt
           "LargeMarginInnerProduct": "lsoftmax",  # L-Softmax's train and test nets
           "WarpCTCLoss": "caffe_ocr", "DenseBlock": "caffe_ocr",  # caffe_ocr's train nets
           "MultiStageMeanfield": "crfrnn",  # CRF-RNN's deploy and train nets
           # zhaoweicai/cascade-rcnn's deploy, test and train nets
           "ROIAlign": "cascade", "ScaleRoute": "cascade", "DecodeBBox": "cascade", "BoxGroupOutput": "cascade",
           "FrcnnOutput": "cascade", "DetectionGroupLoss": "cascade",
           # lmb-freiburg/flownet2's own types (and NVlabs/PWC-Net's Warp): FlowNet's and PWC-Net's nets
           **{t: "flownet" for t in ("Correlation", "Correlation1D", "ChannelNorm", "Resample", "Downsample",
                                     "FlowWarp", "Warp", "Accum", "LpqLoss", "NegReLU", "DataAugmentation",
                                     "FlowAugmentation", "GenerateAugmentationParameters", "BlackAugmentation",
                                     "CustomData", "FLOWriter", "FloatWriter", "FloatReader", "PFMWriter",
                                     "ImgWriter", "ImgReader")},
           # twhui/LiteFlowNet's own types (its nets also hold FlowNet's: BASES)
           "ExpMax": "liteflownet", "Grid": "liteflownet", "NegSquare": "liteflownet"}


def descends(lineage: str, base: str) -> bool:
    """Whether ``lineage`` is ``base`` or a fork built on it (``BASES``, followed transitively)."""
    while lineage:
        if lineage == base:
            return True
        lineage = BASES.get(lineage, "")
    return False


def net_lineage(net: NetSoFar | None) -> str:
    """The lineage of the net a layer is built into (``""``: built alone, no net); a ValueError for an
    unknown value, or for an unset one where layers of two lineages' own types meet."""
    if net is None:
        return ""
    written = net.written
    lineage = str(written.lineage) if hasattr(written, "lineage") else ""
    if lineage not in LINEAGES:
        raise ValueError(f"net lineage {lineage!r} is unknown; expected one of {list(LINEAGES)}")
    if lineage:
        return lineage
    found = {MARKERS[lp.type]: lp.type for lp in written.layer if lp.type in MARKERS}
    # a base's markers in a net of a lineage built on it (FlowNet's Correlation in LiteFlowNet's nets) say nothing
    found = {k: v for k, v in found.items() if not any(o != k and descends(o, k) for o in found)}
    if len(found) > 1:
        raise ValueError(f"the net has layers of several forks' own types ({sorted(found.values())}), so which "
                         f"semantics its shared type names take cannot be told; set lineage: to one of "
                         f"{sorted(found)}")
    return next(iter(found), "upstream")


def darknet2caffe_hint(net: NetSoFar | None) -> str:
    """A sentence to add to a shape-mismatch error where the net looks like darknet2caffe's yolov3-tiny built
    without its lineage: an ``Upsample`` and a ``Pooling`` whose ``kernel_h - stride_h`` is positive and odd
    (``pooling_param.kernel_size``/``kernel_h``, ``stride``/``stride_h``); else ``""``."""
    written = getattr(net, "written", None)
    if written is None or str(getattr(written, "lineage", "")) == "darknet2caffe":
        return ""
    layers = written.layer
    if not any(lp.type == "Upsample" for lp in layers):  # the usual net: one pass over the types, no hint
        return ""
    for lp in layers:
        if lp.type != "Pooling" or lp.pooling_param.global_pooling:
            continue
        pp = lp.pooling_param
        k = pp.kernel_h if pp.HasField("kernel_h") else pp.kernel_size
        s = pp.stride_h if pp.HasField("stride_h") else pp.stride
        if k - s > 0 and (k - s) % 2 == 1:
            return (f" (layer '{lp.name}' pools with kernel {k}, stride {s} in a net with Upsample: a net converted "
                    "by ChenYingpeng/darknet2caffe (yolov3-tiny) needs its Pooling, which adds one output row and "
                    "column there; set lineage: \"darknet2caffe\" in the net)")
    return ""


__all__ = ["BASES", "LINEAGES", "MARKERS", "darknet2caffe_hint", "descends", "net_lineage"]
