"""D-X-Y/caffe-faster-rcnn's ``FrcnnProposal``: region proposals from the RPN, configured by the FRCNN
JSON file (``neocaffe/data/frcnn_config.py``; which file: ``neocaffe/layers/frcnn_common.py``).

Semantics of D-X-Y/caffe-faster-rcnn ``dev`` @ 1ae964d135bbfd9d04258b15b95c9dbb29a19149,
``src/caffe/FRCNN/frcnn_proposal_layer.cpp`` (``Forward_cpu``) and ``util/frcnn_bbox*.cpp``:

1. for every position (h, w) and anchor k (that order), the anchor ``anchors[k] + (w, h) * feat_stride``
   moved by ``bbox_transform_inv`` with the deltas of bottom 1 (channels ``4k..4k+3``), each coordinate
   clamped to ``[0, im_w - 1]`` / ``[0, im_h - 1]`` (``im_info`` = height, width, scale);
2. kept when ``x2 - x1 + 1 >= min_size`` and ``y2 - y1 + 1 >= min_size``, ``min_size = im_info[2] *
   (int) rpn_min_size`` (the fork truncates the config's value to an int);
3. sorted by the foreground score (bottom 0's channel ``A + k``) with ties by the later box first (the
   fork sorts ``(score, index)`` pairs with ``std::greater``); the first ``rpn_pre_nms_top_n``;
4. greedy NMS in the bottoms' dtype (IoU with ``+1`` sides ``> rpn_nms_thresh`` suppresses), stopping at
   ``rpn_post_nms_top_n`` kept boxes.

TRAIN nets read the ``rpn_*`` keys, other phases the ``test_rpn_*`` keys. Top 0: ``(n, 5, 1, 1)`` RoIs
``(0, x1, y1, x2, y2)``; top 1 (optional): their scores ``(n, 1, 1, 1)``; ``n`` depends on the values.
Batch size 1 only (the fork's CHECK). No backward (the fork's is NOT_IMPLEMENTED).

Deviations: the fork's GPU forward (``frcnn_proposal_layer.cu``) is another algorithm: it sorts every
anchor's score (cub radix sort, order (k, h, w), ties by the lower index), takes the top
``rpn_pre_nms_top_n`` *before* the size filter, drops boxes with ``x2 - x1 < im_info[2] * (int)
rpn_min_size`` (no ``+1``) and runs a bitmask NMS kernel, so the fork's CPU and GPU runs give different
proposals. Here CPU and CUDA run the same torch code, whose results are the CPU loop's. Where
``rpn_pre_nms_top_n`` or ``rpn_post_nms_top_n`` is <= 0 the fork returns leaving its tops as they were;
here the tops hold no RoI.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import TRAIN, Example, Layer, Shape, legacy_shape
from neocaffe.layers.frcnn_common import anchor_grid, bbox_transform_inv, descending, example_config, layer_config
from neocaffe.layers.proposal import nms
from neocaffe.layers.registry import register_layer


def frcnn_propose(scores: Tensor, deltas: Tensor, im_info: Tensor, cfg, train: bool) -> tuple[Tensor, Tensor]:
    """Boxes ``[n, 4]`` and scores ``[n]`` of one image (see the module docstring)."""
    if train:
        pre, post, thresh, min_size = cfg.rpn_pre_nms_top_n, cfg.rpn_post_nms_top_n, cfg.rpn_nms_thresh, cfg.rpn_min_size
    else:
        pre, post = cfg.test_rpn_pre_nms_top_n, cfg.test_rpn_post_nms_top_n
        thresh, min_size = cfg.test_rpn_nms_thresh, cfg.test_rpn_min_size
    dtype, dev = deltas.dtype, deltas.device
    a = cfg.n_anchors
    h, w = deltas.shape[-2:]
    if pre <= 0 or post <= 0:
        return deltas.new_zeros(0, 4), deltas.new_zeros(0)
    fg = scores.reshape(scores.shape[0], -1, h, w)[0, a:2 * a].permute(1, 2, 0).reshape(-1)
    d = deltas.reshape(1, a, 4, h, w)[0].permute(2, 3, 0, 1).reshape(-1, 4)
    boxes = bbox_transform_inv(anchor_grid(cfg, h, w, dtype, dev), d)
    info = im_info.reshape(-1)
    zero = boxes.new_zeros(())
    bound = torch.stack([info[1] - 1, info[0] - 1, info[1] - 1, info[0] - 1]).to(dtype)
    boxes = torch.maximum(zero, torch.minimum(boxes, bound))
    ms = info[2].to(dtype) * int(min_size)
    keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= ms) & ((boxes[:, 3] - boxes[:, 1] + 1) >= ms)
    boxes, fg = boxes[keep], fg[keep]
    order = descending(fg)[:pre]
    boxes, fg = boxes[order], fg[order]
    # nms sorts by its scores: a strictly decreasing stand-in keeps this order (ties included)
    rank = torch.arange(boxes.shape[0], 0, -1, device=dev, dtype=torch.float64)
    kept = nms(boxes, rank, float(thresh), int(post))
    return boxes[kept], fg[kept]


@register_layer("FrcnnProposal")
class FrcnnProposal(Layer):
    """See the module docstring. Bottoms: RPN probabilities ``1 x 2A x H x W``, deltas ``1 x 4A x H x W``,
    ``im_info``; tops: RoIs and, optionally, scores."""

    value_dependent_shape = True
    takes_net = True
    exact_bottoms = 3
    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.cfg = layer_config(self)

    def allow_force_backward(self, bottom: int) -> bool:
        return False

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        a = self.cfg.n_anchors
        n, c, h, w = legacy_shape(bottom_shapes[1], self, "bottom 1")
        s = legacy_shape(bottom_shapes[0], self, "bottom 0")
        if c != 4 * a or s[1] * s[2] * s[3] != 2 * a * h * w:
            raise self.error(f"needs scores 1 x {2 * a} x H x W and deltas 1 x {4 * a} x H x W ({a} anchors in "
                             f"the config); received {tuple(bottom_shapes[0])} and {tuple(bottom_shapes[1])}")
        if int(np.prod(bottom_shapes[2])) < 3:
            raise self.error(f"im_info (bottom 2) must hold height, width, scale; received {tuple(bottom_shapes[2])}")
        return [(1, 5, 1, 1), (1, 1, 1, 1)][: self.n_tops]

    def forward(self, scores: Tensor, deltas: Tensor, im_info: Tensor):  # type: ignore[override]
        if deltas.shape[0] != 1:
            raise self.error(f"only single item batches are supported; received batch {deltas.shape[0]}")
        with torch.no_grad():
            boxes, s = frcnn_propose(scores.detach(), deltas.detach(), im_info.detach(), self.cfg,
                                     self.phase == TRAIN)
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1).reshape(-1, 5, 1, 1)
        return [rois, s.reshape(-1, 1, 1, 1)][: self.n_tops]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(7)
        prob = r.uniform(0, 1, (1, 18, 3, 4))
        deltas = 0.2 * r.standard_normal((1, 36, 3, 4))
        info = np.array([[48, 64, 1.0]])
        return [Example('name: "prop" type: "FrcnnProposal" bottom: "s" bottom: "d" bottom: "im" top: "rois" '
                        f'top: "sc" window_data_param {{ config: "{example_config()}" }}', [prob, deltas, info],
                        grad_bottoms=(), grad_params=False)]


__all__ = ["FrcnnProposal", "frcnn_propose"]
