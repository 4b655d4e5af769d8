"""Faster R-CNN (ZF) of the zoo: the proposals against py-faster-rcnn's and what OpenCV's Proposal does.

neocaffe runs the net's ``Python`` layer ``rpn.proposal_layer.ProposalLayer`` with its native Proposal
layer (py-faster-rcnn's semantics). OpenCV's own Proposal (OpenCV runs no Python layers; its Faster
R-CNN prototxts use type ``Proposal``) differs in two ways, measured here on the zoo's random weights:
it has no ``RPN_MIN_SIZE`` filter (214 proposals where py-faster-rcnn keeps 200 on this input), and its
top is always ``post_nms_topn`` (300) rows, zero-padded. Its boxes equal py-faster-rcnn's without the
filter to 2.6e-6 of their scale. The whole net against OpenCV: tests/test_zoo.py (tests/zoo_rcnn.py).
"""
from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from benchmarks import zoo
from neocaffe.io.weights import save_weights
from neocaffe.proto import caffe_pb2
from tests import zoo_rcnn
from tests.conftest import shared_path
from tests.layers import rcnn_reference as ref


def test_faster_rcnn_proposals_are_py_faster_rcnns_and_opencvs_differ_as_documented(tmp_path):
    shared_path("realdata", "zoo_public_2026", "faster_rcnn_zf")
    model = zoo.zoo_model("faster_rcnn_zf")
    net = zoo.build(model)
    zoo.random_weights(net)
    inputs = zoo.model_inputs(net)
    zoo.neocaffe_forward(net, inputs)
    blob = {k: net.blob_data[k].numpy() for k in ("rpn_cls_prob_reshape", "rpn_bbox_pred", "rois")}

    # ours: py-faster-rcnn's proposal layer (NumPy port) on our own RPN outputs
    want, _ = ref.proposal_layer(blob["rpn_cls_prob_reshape"], blob["rpn_bbox_pred"], inputs["im_info"])
    assert blob["rois"].shape == want.shape and 0 < len(want) <= 300
    assert zoo.max_rel_error(blob["rois"], want) <= 1e-6

    # OpenCV's Proposal, on the net cut after it (only the layers it needs, and their weights)
    cv_text = text_format.Parse(zoo.opencv_net_text(model.prototxt), caffe_pb2.NetParameter())
    k = zoo_rcnn.proposal_index(text_format.Parse(model.prototxt.read_text(), caffe_pb2.NetParameter()))
    del cv_text.layer[k + 1:]
    kept = {lp.name for lp in cv_text.layer}
    weights = tmp_path / "rpn.caffemodel"
    save_weights(weights, [lw for lw in net.to_weights() if lw.name in kept], hdf5=False)
    cv = zoo.opencv_forward(None, weights, inputs, {"rois": "proposal", "rpn_cls_prob_reshape": "rpn_cls_prob_reshape",
                                                    "rpn_bbox_pred": "rpn_bbox_pred"},
                            text=text_format.MessageToString(cv_text))
    assert zoo.max_rel_error(blob["rpn_cls_prob_reshape"], cv["rpn_cls_prob_reshape"]) <= 1e-5
    assert zoo.max_rel_error(blob["rpn_bbox_pred"], cv["rpn_bbox_pred"]) <= 1e-5
    rows = cv["rois"].reshape(-1, 5)
    assert rows.shape == (300, 5)                                        # always post_nms_topn rows
    n = int(np.any(rows != 0, axis=1).sum())
    assert not rows[n:].any()                                            # ... zero-padded
    no_filter, _ = ref.proposal_layer(cv["rpn_cls_prob_reshape"], cv["rpn_bbox_pred"], inputs["im_info"], min_size=0)
    with_filter, _ = ref.proposal_layer(cv["rpn_cls_prob_reshape"], cv["rpn_bbox_pred"], inputs["im_info"])
    assert (n, len(no_filter), len(with_filter)) == (214, 214, 200)      # OpenCV: no RPN_MIN_SIZE filter
    assert zoo.max_rel_error(rows[:n], no_filter) <= 1e-5
