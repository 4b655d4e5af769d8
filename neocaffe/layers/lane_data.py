"""MobileNet-YOLO's LaneData layer (lineage: eric612/MobileNet-YOLO @ 69b4441c,
``src/caffe/layers/lane_data_layer.cpp``, ``include/caffe/layers/lane_data_layer.hpp``,
``src/caffe/layers/base_data_layer.cpp``; its prototxt ``models/tusimple/mobilenet_yolov3_lite_train.prototxt``).

Reads the lane records of ``convert_annoset --anno_type=lane_detection`` (TuSimple) in key order:
``data_param {source batch_size backend}``, ``annotated_data_param {batch_sampler yolo_data_type yolo_data_jitter
seg_scales seg_resize_width seg_resize_height}`` (``label_map_file`` and the others are not read) and the
``transform_param`` of AnnotatedData. Tops: the images (N, C, H, W); ``label`` (N, 5, 64, 3): per lane its points
bottom-up as ``[x, y, lane index or -1]`` in the sampled crop box; ``seg_label`` (N, 1, H', W'): the lanes drawn
as lines, 0 or 1. The fork's net silences ``label`` and trains its ``YoloSeg`` head on ``seg_label``. Details and
deviations: :mod:`neocaffe.data.lane_batches` (the augmentation, the crop box) and :mod:`neocaffe.data.lane_anno`
(the label layout, the drawing). With two tops the fork fails at its first label (it sets up no ``seg_label``
buffer and writes through it); here it gives the data and the label. Setup reports the shapes every batch has
(the fork's setup shapes the label 1 x 1 x 1 and swaps ``seg_resize_width``/``height`` until the first batch).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from neocaffe.data.lane_anno import MAX_LANES, MAX_POINTS
from neocaffe.data.lane_batches import LaneBatchMaker, check_lane_record, seg_shape
from neocaffe.layers.annotated_data import AnnotatedRecords
from neocaffe.layers.base import Example, Shape
from neocaffe.layers.prefetched import data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")


@register_layer("LaneData")
class LaneData(AnnotatedRecords):
    """MobileNet-YOLO's lane data layer: images with their lane labels and lane-line segmentation labels."""

    max_tops = 3

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp, ap, tp = self.param.data_param, self.param.annotated_data_param, self.param.transform_param
        if not dp.source:
            raise self.error("data_param.source is empty; expected the path of an LMDB (convert_annoset "
                             "--anno_type=lane_detection's)")
        if dp.batch_size <= 0:
            raise self.error(f"data_param.batch_size must be positive; received {dp.batch_size}")
        if len(tp.resize_param) and tp.resize_param[0].resize_mode == 2 and dp.batch_size != 1:
            raise self.error("only batch_size 1 is supported with resize_param FIT_SMALL_SIZE")
        if ap.yolo_data_type == 1 and not len(ap.batch_sampler) and not len(tp.resize_param):
            raise self.error("annotated_data_param.yolo_data_type: 1 jitters the crop by the resize_param's "
                             "resize_mode (the fork reads resize_param(policy)); add a transform_param.resize_param")
        if tp.enable_classf_aug:
            raise self.error("transform_param.enable_classf_aug (the fork's Transform3, its classification "
                             "augmentation) is not ported")
        if tp.HasField("expand_param") and tp.expand_param.prob > 0 and not tp.HasField("distort_param"):
            raise self.error("transform_param.expand_param: LaneData expands only without distort_param, and then "
                             "aborts (its ExpandImage transforms the lane annotations as boxes: \"Unknown annotation "
                             "type.\"); remove expand_param (or set its prob to 0)")
        labels, seg = len(self.param.top) > 1, None
        if len(self.param.top) == 3:
            size = None
            if ap.seg_resize_width and ap.seg_resize_height:
                size = (int(ap.seg_resize_height), int(ap.seg_resize_width))
            if size is None and ap.seg_scales <= 0:
                raise self.error(f"annotated_data_param.seg_scales must be positive; received {ap.seg_scales}")
            if size is not None and min(size) <= 0:
                raise self.error(f"annotated_data_param.seg_resize_height/width must be positive; received {size}")
            seg = (int(ap.seg_scales), size)
        _, item = self._open_source(dp, tp, check_lane_record)
        self.batch_size = int(dp.batch_size)
        self.samplers = list(ap.batch_sampler)
        self.jitter = float(ap.yolo_data_jitter) if ap.yolo_data_type == 1 else None
        self.labels, self.seg = labels, seg
        self.seed = data_seed()
        self._top_shapes: list[Shape] = [(self.batch_size, *item), (self.batch_size, MAX_LANES, MAX_POINTS, 3)]
        hw = seg_shape(seg, item[1:])
        if hw is not None:
            self._top_shapes.append((self.batch_size, 1, *hw))
        self._top_shapes = self._top_shapes[: len(self.param.top)]
        log.info("output data size: %s", ",".join(str(v) for v in self._top_shapes[0]))

    def _maker(self) -> LaneBatchMaker:
        rank, world = self.context.rank, self.context.world  # data-parallel: this process's slice
        return LaneBatchMaker(self.source, self.backend, self.batch_size, self.transform, self.samplers, self.jitter,
                              self.seed, self.where, self.labels, self.seg, rank, world)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        _, get, data = self._next_batch()  # host-made floats, no shared buffer to give back
        tops = [data]
        if self.labels:
            tops.append(torch.as_tensor(get("label")))
        if self.seg is not None:
            tops.append(torch.as_tensor(get("seg_label")))
        self._top_shapes = [tuple(t.shape) for t in tops]
        return tops

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        path = lane_example()
        return [Example(f'name: "d" type: "LaneData" top: "data" top: "label" top: "seg_label" data_param {{ '
                        f'source: "{path}" batch_size: 2 backend: LMDB }} transform_param {{ mirror: true '
                        'mean_value: 127.5 scale: 0.007843 resize_param { prob: 1 resize_mode: WARP height: 16 '
                        'width: 16 } } annotated_data_param { yolo_data_type: 1 yolo_data_jitter: 0.4 seg_scales: 4 }',
                        [], grad_bottoms=(), grad_params=False, phase=0)]


_LANE_EXAMPLE: str | None = None


def lane_example() -> str:
    """A tiny LMDB of lane records (encoded 12 x 20 PNGs, two or three lanes of six points) for the example."""
    global _LANE_EXAMPLE
    if _LANE_EXAMPLE is not None and os.path.isdir(_LANE_EXAMPLE):
        return _LANE_EXAMPLE
    from neocaffe.data.datum import encode_array_to_datum
    from neocaffe.data.db_writer import DBWriter
    from neocaffe.data.examples import example_folder

    path = os.path.join(example_folder(), "lane_lmdb")
    g = np.random.default_rng(3)
    with DBWriter(path, "lmdb") as db:
        for i in range(5):
            anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.LANE)
            anno.datum.CopyFrom(encode_array_to_datum(g.integers(0, 256, (3, 12, 20), dtype=np.uint8), -1, "png"))
            for k in range(2 + i % 2):
                grp = anno.annotation_group.add()
                for j in range(6):
                    a = grp.annotation.add(instance_id=j)
                    a.lanes.x, a.lanes.y = (-2 if j == 0 else 3 + 5 * k + j) / 20, (2 + 2 * j) / 12
            db.put(f"{i:08d}_img{i}.png", anno.SerializeToString())
    _LANE_EXAMPLE = path
    return path
