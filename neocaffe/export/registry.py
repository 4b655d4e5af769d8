"""The export registry: one ONNX emitter per Caffe layer type (``@onnx_emitter("ReLU")``).

An emitter gets the ``OnnxGraph`` being built and a ``LayerNode`` (the layer's ``LayerParameter``,
its blobs as float32 arrays, the ONNX names of its bottoms and the static shapes of its bottoms and
tops) and returns the ONNX tensor names of its tops, in the order of ``top``. It reads the layer's
configuration from the ``LayerParameter`` (and, where it exists, the neocaffe layer's public
attributes), never from a net's runtime state. A fork layer's exporter is one registered function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from neocaffe.export.onnx_graph import OnnxGraph

Shape = tuple[int, ...]
#: the ONNX opset a plain export targets
DEFAULT_OPSET = 17


class ExportError(ValueError):
    """A net (or one of its layers) cannot be exported as asked; the message names the layer and type."""


@dataclass
class LayerNode:
    """What an emitter may read of one layer.

    ``param``: the LayerParameter. ``layer``: the built neocaffe layer (None when a test feeds a
    bare parameter). ``blobs``: parameter blobs (float32, Caffe's shapes). ``inputs``: ONNX names of
    the bottoms. ``bottom_shapes``/``top_shapes``: static shapes. ``bottom_batch``/``top_batch``:
    per axis, whether its size is dynamic: it follows the batch (with a dynamic batch) or the number of
    rows a Proposal layer writes (``onnx.row_axes``); all False otherwise.
    """

    param: Any
    inputs: list[str]
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    blobs: list[np.ndarray] = field(default_factory=list)
    layer: Any = None
    bottom_batch: list[tuple[bool, ...]] = field(default_factory=list)
    top_batch: list[tuple[bool, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.bottom_batch:
            self.bottom_batch = [(False,) * len(s) for s in self.bottom_shapes]
        if not self.top_batch:
            self.top_batch = [(False,) * len(s) for s in self.top_shapes]

    @property
    def name(self) -> str:
        return str(self.param.name)

    @property
    def type(self) -> str:
        return str(self.param.type)

    def error(self, message: str) -> ExportError:
        return ExportError(f"layer '{self.name}' ({self.type}): {message}")


Emitter = Callable[["OnnxGraph", LayerNode], list[str]]
_EMITTERS: dict[str, Emitter] = {}

#: training-only layer types: an error says to remove them from the deploy net
TRAINING_ONLY = {
    "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss",
    "MultinomialLogisticLoss", "ContrastiveLoss", "Accuracy", "MultiBoxLoss", "SmoothL1Loss",
    "SoftmaxWithLossOHEM", "SmoothL1LossOHEM", "BoxAnnotatorOHEM", "SegAccuracy", "UniqueLabel", "BiasChannel",
    "AdaptiveBiasChannel", "MarginInnerProduct", "CenterLoss", "Yolov3", "RegionLoss", "LabelSpecificAdd",
    "LargeMarginInnerProduct",
    "GaussianYolov3", "YoloSeg", "SegmentationEvaluate", "GeneralContrastiveLoss", "GeneralTripletLoss",
    "GlobalLSEMargin",
    "VoxelWiseSoftmaxWithLoss", "VoxelCustomLoss",
    "LocLoss", "STLoss", "CTCLoss", "L1Loss",
    "WarpCTCLoss", "EvalDetection",
    "LpqLoss",  # FlowNet's (its L1Loss is above)
    "ProposalTarget", "DetectionGroupLoss", "DetectionGroupAccuracy", "BboxAccuracy", "HardMining",  # cascade-rcnn
    "CosinAddm", "CombinedMargin", "AdaCosAddmScale", "WingLoss",  # arcface-caffe's margins and landmark loss
    "FocalLoss",  # zimenglan-sysu-512/Focal-Loss's softmax focal loss
    "FrcnnAnchorTarget", "FrcnnProposalTarget",  # D-X-Y/caffe-faster-rcnn's training targets
    "LabeledMatching", "UnlabeledMatching",  # person_search's OIM loss (tables updated in training)
}


def onnx_emitter(*type_names: str) -> Callable[[Emitter], Emitter]:
    """Register ``fn`` as the ONNX emitter of the Caffe layer types ``type_names``."""

    def deco(fn: Emitter) -> Emitter:
        for t in type_names:
            if t in _EMITTERS:
                raise ValueError(f"ONNX emitter for layer type '{t}' registered twice")
            _EMITTERS[t] = fn
        return fn

    return deco


def get_emitter(node: LayerNode) -> Emitter:
    """The emitter of ``node``'s type; an error naming the layer and type when there is none."""
    fn = _EMITTERS.get(node.type)
    if fn is not None:
        return fn
    if node.layer is not None and getattr(node.layer, "produces_host_data", False):
        raise node.error("reads training data; a deployed net takes its input from an Input layer (replace the "
                         "layer, or name the input's shape: caffe export -input_shape <blob>=N,C,H,W)")
    if node.type in TRAINING_ONLY:
        raise node.error("is a training layer with no place in a deployed model; remove it from the deploy "
                         "prototxt (or export the net's TEST phase without it)")
    raise node.error(f"has no ONNX equivalent (no exporter registered); exportable types: "
                     f"{', '.join(exportable_types())}")


def emitter_of(type_name: str) -> Emitter | None:
    """The emitter registered for ``type_name``, or None (a ``Python`` layer exports as its native stand-in)."""
    return _EMITTERS.get(type_name)


def exportable_types() -> list[str]:
    """Every layer type with a registered ONNX emitter, sorted (``neocaffe.export.onnx`` imports the
    emitter modules)."""
    return sorted(_EMITTERS)
