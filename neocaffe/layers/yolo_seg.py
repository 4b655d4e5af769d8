"""MobileNet-YOLO's segmentation head: the training loss ``YoloSeg`` and the test metric ``SegmentationEvaluate``.

Lineage and source files: eric612/MobileNet-YOLO @ 69b4441c, ``src/caffe/layers/yolo_seg.{cpp,cu}`` and
``include/caffe/layers/yolo_seg_layer.hpp``, ``src/caffe/layers/segmentation_evaluate_layer.cpp``. Their label
bottom is AnnotatedData's third top, ``seg_label`` (:mod:`neocaffe.data.annotated_yolo`): N x C x H x W of 0/1
(or, resized, in between) per class channel. The fork's nets (``models/cityscapes``, ``models/pelee``) feed
YoloSeg a 1 x 1 convolution's C channels, ``seg_label`` and ``seg_label`` summed over H and W (two Reduction
layers, ``axis: 3`` then ``axis: 2``), and SegmentationEvaluate a Sigmoid of that convolution.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.region_loss import ForkDiff, host_array, logistic
from neocaffe.layers.registry import register_layer
from neocaffe.layers.softmax_loss import _LossLayer


def _sequential_sum(values: np.ndarray) -> np.floating:
    """``Dtype loss; loss += v`` in the order of ``values`` (flat), in their data type."""
    flat = values.reshape(-1)
    return np.add.accumulate(flat, dtype=flat.dtype)[-1] if flat.size else flat.dtype.type(0)


@register_layer("YoloSeg")
class YoloSeg(_LossLayer):
    """The fork's segmentation loss. Bottoms: predictions x (N x C x H x W), labels y (the same count and
    channels), and per image and class the label's pixel sum w (N x C). ``yolo_seg_param.object_scale``
    (default 5) is read; ``num_class``, ``class_scale``, ``use_logic_gradient`` and ``use_hardsigmoid`` are
    read by the fork and unused.

    With ``s = sigmoid(x)`` (the CPU formula ``1 / (1 + exp(-x))``; the fork's Forward_gpu computes it with
    ``caffe_gpu_logistic_activate`` and then runs Forward_cpu, whose own sigmoid is compiled in CPU_ONLY
    builds only), per class c ``r_c = sum_n w[n, c] / sum_n (H*W - w[n, c])`` (float sums in image order) and
    ``beta_c = object_scale * (2 - r_c)``; the diff is ``d = -(y - s) * beta_c`` where ``y > 0.5``, else
    ``-(y - s) * object_scale``. Loss ``sum(d^2) / N``, summed in float in the fork's order (class, image,
    pixel). Backward (bottom 0 only): ``d * top_diff / N``, the fork's diff, not the derivative of its loss.
    The fork's log of running objectness scores and mIoU every 16 forwards is not reproduced."""

    exact_bottoms = 3
    allow_in_place = False

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.object_scale = np.float32(self.param.yolo_seg_param.object_scale)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x, y, w = bottom_shapes
        if len(x) < 2 or len(y) < 2 or x[:2] != y[:2] or int(np.prod(x)) != int(np.prod(y)):
            raise self.error(f"YoloSeg layer inputs must have the same count (and here the same images and channels, "
                             f"which the fork indexes alike); received {tuple(x)} and {tuple(y)}")
        if not w or int(np.prod(w)) != w[0] * y[1]:
            raise self.error(f"bottom 2 holds each image's pixel count per class, {y[1]} values per row (the fork's "
                             f"Reduction of seg_label over H and W); received shape {tuple(w)}")
        return super().reshape(bottom_shapes)

    def forward(self, x: Tensor, label: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        a = host_array(x)
        ft = a.dtype.type
        n, c = a.shape[:2]
        y = host_array(label).astype(ft).reshape(n, c, -1)
        w = host_array(weight).astype(ft).reshape(-1, c)
        size = ft(y.shape[2])  # bottom[0]'s width * height, as many pixels as the label has per channel
        with np.errstate(all="ignore"):
            s = logistic(a.reshape(n, c, -1))
            ratio = np.array([_sequential_sum(w[:, k]) / _sequential_sum(size - w[:, k]) for k in range(c)], ft)
            beta = (np.float64(self.object_scale) * (2.0 - ratio.astype(np.float64))).astype(ft)
            scale = np.where(y > ft(0.5), beta[None, :, None], self.object_scale.astype(ft))
            diff = (ft(-1) * (y - s)) * scale
            loss = _sequential_sum((diff * diff).transpose(1, 0, 2)) / ft(n)
        t_loss = torch.tensor(float(loss), dtype=x.dtype, device=x.device)
        t_diff = torch.from_numpy(np.ascontiguousarray(diff).reshape(x.shape)).to(device=x.device, dtype=x.dtype)
        return ForkDiff.apply(x, t_loss, t_diff)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(7)
        y = (r.uniform(0, 1, (2, 3, 4, 5)) > 0.6).astype(np.float64)
        y[0, 1, 0, :2] = 0.5  # resized label pixels in between
        text = 'name: "seg" type: "YoloSeg" bottom: "x" bottom: "y" bottom: "w" top: "loss" yolo_seg_param { object_scale: 0.2 }'
        # the fork's diff is not the gradient of its loss (d^2's derivative is 2 d s (1 - s) beta): forward only
        return [Example(text, [r.standard_normal((2, 3, 4, 5)), y, y.sum(axis=(2, 3))], grad_bottoms=())]


@register_layer("SegmentationEvaluate")
class SegmentationEvaluate(Layer):
    """The fork's per-class IoU of a segmentation: bottoms the prediction (N x C x H x W, e.g. a Sigmoid) and
    ``seg_label`` (N x C x H' x W'); ``segmentation_evaluate_param { num_classes threshold }`` (``num_classes``
    must be given, as the fork CHECKs, and is otherwise unused). Top (1, 1, 1, C): per class, of the *first
    image* only (the fork indexes from the start of both blobs), ``match / (gt + predicted - match)`` where a
    pixel counts above ``threshold``, 0 when nothing matches. When the sizes differ, each class of the
    prediction is first made 8-bit (``(unsigned char)(v * 255)``, truncated as x86 does) and resized
    (bilinear: the fork passes ``cv::INTER_AREA`` where ``fx`` goes) to the label's size, compared with
    ``int(threshold * 255)``, and a class without a label pixel scores -1."""

    exact_bottoms = 2
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.segmentation_evaluate_param
        if not p.HasField("num_classes"):
            raise self.error("segmentation_evaluate_param: Must provide num_classes.")
        self.threshold = np.float32(p.threshold)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        seg, gt = bottom_shapes
        if len(seg) != 4 or len(gt) != 4 or seg[1] != gt[1]:
            raise self.error(f"expects the prediction and seg_label as N x C x H x W with the same C (the fork writes "
                             f"one IoU per prediction channel into seg_label's C); received {tuple(seg)}, {tuple(gt)}")
        return [(1, 1, 1, gt[1])]

    def forward(self, seg_in: Tensor, gt_in: Tensor) -> Tensor:
        seg, gt = host_array(seg_in)[0], host_array(gt_in)[0]   # image 0 of each
        thr = self.threshold
        out = np.zeros(seg.shape[0], np.float32)
        same = seg.shape[1:] == gt.shape[1:]
        th = int(np.float32(thr * np.float32(255)))
        for c in range(seg.shape[0]):
            truth = gt[c] > thr
            if same:
                pred = seg[c] > thr
            else:
                byte = (np.trunc(seg[c] * seg.dtype.type(255)).astype(np.int64) & 0xFF).astype(np.uint8)
                pred = cv2.resize(byte, (gt.shape[2], gt.shape[1]), interpolation=cv2.INTER_LINEAR).astype(np.int64) > th
            match, n_gt, n_pred = int((truth & pred).sum()), int(truth.sum()), int(pred.sum())
            if match:
                out[c] = np.float32(match) / np.float32(n_gt + n_pred - match)
            elif not same and n_gt == 0:
                out[c] = -1
        return torch.from_numpy(out).to(device=seg_in.device, dtype=seg_in.dtype).view(1, 1, 1, -1)

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(3)
        gt = (r.uniform(0, 1, (1, 2, 6, 6)) > 0.5).astype(np.float64)
        text = ('name: "ev" type: "SegmentationEvaluate" bottom: "p" bottom: "g" top: "iou" '
                'segmentation_evaluate_param { num_classes: 2 threshold: 0.3 }')
        return [Example(text, [r.uniform(0, 1, (1, 2, 6, 6)), gt], grad_bottoms=(), grad_params=False),
                Example(text, [r.uniform(0, 1, (1, 2, 3, 3)), gt], grad_bottoms=(), grad_params=False)]
