"""The OpenCV reference of a Faster R-CNN net of the zoo, with py-faster-rcnn's proposals.

OpenCV's native Proposal layer is not py-faster-rcnn's: it skips the ``RPN_MIN_SIZE`` filter and pads
its top with zero RoIs up to ``post_nms_topn`` (tests/test_zoo_rcnn.py measures both). neocaffe follows
py-faster-rcnn, so the reference is computed in three parts, none of them ours: OpenCV runs the net
up to the proposal layer; the NumPy port of py-faster-rcnn's ``proposal_layer.py``
(tests/layers/rcnn_reference.py) turns OpenCV's RPN outputs into RoIs; OpenCV runs the rest of the net
(a net whose inputs are the RoIs and the other blobs it reads) on them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import text_format

from benchmarks import zoo
from neocaffe.layers.proposal import parse_param_str
from neocaffe.proto import caffe_pb2
from tests.layers import rcnn_reference


def proposal_index(net_param: Any) -> int | None:
    """The index of the (first) py-faster-rcnn proposal layer, or None."""
    for i, lp in enumerate(net_param.layer):
        if lp.type == "Python" and (lp.python_param.module, lp.python_param.layer) == zoo.PY_FASTER_RCNN_PROPOSAL:
            return i
    return None


def has_proposal(model: zoo.ZooModel) -> bool:
    """Whether ``model``'s prototxt has py-faster-rcnn's proposal layer."""
    return proposal_index(text_format.Parse(model.prototxt.read_text(), caffe_pb2.NetParameter())) is not None


def _writers(layers: Any) -> dict[str, str]:
    """Blob -> the last layer (of ``layers``) that writes it: the name OpenCV's forward takes."""
    out: dict[str, str] = {}
    for lp in layers:
        for t in lp.top:
            out[t] = lp.name
    return out


def opencv_reference(model: zoo.ZooModel, weights: Any, inputs: dict[str, np.ndarray],
                     outputs: list[str]) -> dict[str, np.ndarray]:
    """``outputs`` (blob names) of ``model`` as OpenCV computes them on py-faster-rcnn's proposals."""
    raw = text_format.Parse(model.prototxt.read_text(), caffe_pb2.NetParameter())
    k = proposal_index(raw)
    cv_net = text_format.Parse(zoo.opencv_net_text(model.prototxt), caffe_pb2.NetParameter())
    prop = raw.layer[k]
    head_layers = list(raw.layer[k + 1:])
    made: set[str] = set()
    needed: list[str] = []
    for lp in head_layers:
        needed += [b for b in lp.bottom if b not in made and b not in needed]
        made.update(lp.top)
    before = _writers(cv_net.layer[:k])
    wanted = [b for b in list(prop.bottom) + needed if b in before and b not in inputs]
    tail = zoo.opencv_forward(None, weights, inputs, {b: before[b] for b in dict.fromkeys(wanted)},
                              text=text_format.MessageToString(cv_net))
    blobs = {**inputs, **tail}
    params = parse_param_str(prop.python_param.param_str)
    rois, scores = rcnn_reference.proposal_layer(
        blobs[prop.bottom[0]], blobs[prop.bottom[1]], blobs[prop.bottom[2]], feat_stride=params["feat_stride"],
        scales=params.get("scales", (8, 16, 32)), ratios=params.get("ratios", (0.5, 1, 2)))
    blobs[prop.top[0]] = rois
    if len(prop.top) > 1:
        blobs[prop.top[1]] = scores.astype(np.float32)
    head = caffe_pb2.NetParameter(name=raw.name + "_head")
    for b in needed:
        head.input.append(b)
        head.input_shape.add().dim.extend(blobs[b].shape)
    head.layer.extend(head_layers)
    after = _writers(head_layers)
    out = zoo.opencv_forward(None, weights, {b: blobs[b] for b in needed},
                             {o: after[o] for o in outputs if o in after}, text=text_format.MessageToString(head))
    return {o: out[o] if o in out else blobs[o] for o in outputs}
