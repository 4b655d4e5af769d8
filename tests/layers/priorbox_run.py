"""Shared by the PriorBox fork tests (FaceBoxes, TextBoxes v1): one PriorBox layer built from its
``prior_box_param`` fields in a net of a given lineage, run on zero bottoms of the given shapes."""
from __future__ import annotations

import numpy as np
import torch
from google.protobuf import text_format

from neocaffe.layers.base import NetSoFar
from neocaffe.layers.detection import PriorBox
from neocaffe.proto import caffe_pb2


def prior_box_param(fields: str) -> caffe_pb2.LayerParameter:
    return text_format.Parse(f'name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "p" '
                             f'prior_box_param {{ {fields} }}', caffe_pb2.LayerParameter())


def run_priors(fields: str, feature: tuple[int, ...], image: tuple[int, ...], net: NetSoFar | None,
               device: str = "cpu") -> np.ndarray:
    """The layer's top (checked against the shape its Reshape declares) as a host array."""
    layer = PriorBox(prior_box_param(fields), [feature, image], net=net)
    out = layer(torch.zeros(feature, device=device), torch.zeros(image, device=device))
    assert tuple(out.shape) == layer.reshape([feature, image])[0]
    return out.cpu().numpy()
