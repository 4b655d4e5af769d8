"""Batches of MobileNet-YOLO's LaneData layer (eric612/MobileNet-YOLO @ 69b4441c,
``src/caffe/layers/lane_data_layer.cpp`` load_batch, with ``data_transformer.cpp``'s DistortImage, CropImage,
Transform and Transform2 and ``sampler.cpp``'s GenerateBatchSamples / GenerateJitterSamples).

Per image, as the fork: photometric distortion when ``distort_param`` is set (then JPEG again); then, with
``batch_sampler`` entries or ``yolo_data_type: 1``, one crop box: a batch sampler's (their constraints see one
empty box per lane point, the fork's ``bbox`` of a lane annotation, so a sampler with a minimum overlap or
coverage never fits) or else the jitter's, the image cropped to it (and JPEG again); then the transform of
AnnotatedData (a ``resize_param`` policy drawn every 10 batches, ``cvt_bgr2rgb``, noise, ``crop_h``/``crop_w``,
mirror, mean, scale). The label and segmentation label come from the record's lanes and the crop box
(:mod:`neocaffe.data.lane_anno`); an image without a box of its own takes the previous image's of its batch (the
fork's ``crop_box`` lives across the images of ``load_batch``); the segmentation label is H/``seg_scales`` x
W/``seg_scales`` of the batch's data size (its first record's), or ``seg_resize_height`` x ``seg_resize_width``
when both are set (the fork's first shape, at setup, swaps those two; every batch's is this one).

What the fork cannot run is refused: records that are not encoded (its Transform of a raw datum ends in an
empty function, the data top never written, or CHECK-fails on a resize) and, in the layer's setup, an
``expand_param`` that may expand without a ``distort_param`` (LaneData expands only without distortion, and its
ExpandImage then transforms the lane record's annotations as boxes: "Unknown annotation type.", an abort).
Deviations: a batch whose first image has no box is an error when a label is asked for (the fork divides by
the unset box's zero size: inf and NaN labels); a record typed BBOX or BBOXandSeg is an error (the fork reads
its boxes' unset ``lanes`` as points at (0, 0)).
"""
from __future__ import annotations

import numpy as np

from neocaffe.data import annotated as an
from neocaffe.data.annotated_batches import AnnotatedTransform, _reencode, distort
from neocaffe.data.datum import DatumError, chw_to_hwc, decode_datum
from neocaffe.data.lane_anno import lane_targets, lanes_of
from neocaffe.data.shard import global_batch
from neocaffe.data.sources import DBReader, DBRecords
from neocaffe.proto import caffe_pb2

LANE = caffe_pb2.AnnotatedDatum.LANE
SegSize = tuple[int, tuple[int, int] | None]  # (seg_scales, (seg_resize_height, seg_resize_width) or None)


def seg_shape(seg: SegSize | None, data_hw: tuple[int, int]) -> tuple[int, int] | None:
    """(H', W') of the segmentation label of a batch whose data is ``data_hw`` (None: no such top)."""
    if seg is None:
        return None
    scales, size = seg
    return size if size is not None else (data_hw[0] // scales, data_hw[1] // scales)


def check_lane_record(anno: caffe_pb2.AnnotatedDatum, where: str) -> None:
    """A record LaneData can read: typed LANE (or untyped), its image encoded."""
    if anno.HasField("type") and anno.type != LANE:
        name = caffe_pb2.AnnotatedDatum.AnnotationType.Name(anno.type)
        raise DatumError(f"{where}: a {name} record; LaneData reads lane records (type LANE: convert_annoset "
                         "--anno_type=lane_detection)")
    if not anno.datum.encoded:
        raise DatumError(f"{where}: LaneData reads encoded records (the fork's Transform of a raw datum never "
                         "writes the data top); write them with convert_annoset --encoded")


class LaneBatchMaker(DBRecords):
    """Batch ``k``: records ``k * batch_size ...`` in key order (wrapping); returns ``{"data"}`` and, with
    ``labels``, ``"label"`` (N x 5 x 64 x 3) and, with ``seg`` (:data:`SegSize`), ``"seg_label"``
    (N x 1 x H' x W')."""

    def __init__(self, path: str, backend: str, batch_size: int, transform: AnnotatedTransform, samplers: list,
                 jitter: float | None, seed: int, where: str, labels: bool,
                 seg: SegSize | None, rank: int = 0, world: int = 1) -> None:
        self.path, self.backend, self.batch_size = path, backend, int(batch_size)
        self.transform, self.samplers, self.jitter, self.seed = transform, samplers, jitter, int(seed)
        self.where, self.labels, self.seg, self.rank, self.world = where, bool(labels), seg, int(rank), int(world)
        self.reader: DBReader | None = None
        self.pos = 0

    def _image(self, anno: caffe_pb2.AnnotatedDatum, name: str, rng: np.random.Generator,
               policy: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
        """The image before the transform, the crop box drawn for it (None: none) and its decoded shape."""
        tp = self.transform.tp
        d = decode_datum(anno.datum, force_color=tp.force_color, force_gray=tp.force_gray, where=name)
        if d.array.dtype != np.uint8:
            raise DatumError(f"{name}: LaneData needs 8-bit images (the fork: Image data type must be unsigned byte); "
                             f"received {d.array.dtype}")
        img = chw_to_hwc(d.array)
        if tp.HasField("distort_param"):
            img = _reencode(distort(img, tp.distort_param, rng))
        box = None
        if self.samplers:
            points = sum(len(g.annotation) for g in anno.annotation_group)
            objects = an.Boxes(np.zeros((points, 4), np.float32), np.zeros(points, np.int64),
                               np.zeros(points, np.int64), np.zeros(points, bool))
            cropped, _, box = self.transform.sample(img, objects, self.samplers, rng)
        elif self.jitter is not None:
            cropped, _, box = self.transform.jitter(img, an.Boxes.empty(), self.jitter, policy, rng)
        if box is not None:
            img = _reencode(cropped)
        return img, box, d.array.shape

    def make(self, k: int) -> dict:
        policy = self.transform.policy(self.seed, k)  # this process's k-th batch, as the fork's iters_
        k = global_batch(k, self.rank, self.world)
        target = k * self.batch_size
        self.seek(target)
        assert self.reader is not None
        rng = np.random.default_rng([self.seed, k])
        data, labels, segs = [], [], []
        box, seg_hw = None, None
        for _ in range(self.batch_size):
            key, value = self.reader.next()
            name = f"{self.where}: record '{key.decode('utf-8', 'replace')}'"
            anno = an.parse_annotated(value, name)
            check_lane_record(anno, name)
            img, drawn, shape = self._image(anno, name, rng, policy)
            chw, _, mirror = self.transform.apply(img, an.Boxes.empty(), rng, policy)
            if data and chw.shape != data[0].shape:
                raise DatumError(f"{name}: transformed to {chw.shape}; the batch's first image is {data[0].shape}")
            data.append(chw)
            box = drawn if drawn is not None else box
            if not self.labels:
                continue
            if box is None:
                raise DatumError(f"{name}: the lane labels are taken in the box the image was sampled with, and none "
                                 "has been drawn in this batch yet (the fork divides by its unset box: inf/NaN "
                                 "labels); set annotated_data_param.yolo_data_type: 1 (the jitter) or a batch_sampler")
            if seg_hw is None:
                seg_hw = seg_shape(self.seg, self.transform.shape(*shape, policy)[1:])
            label, seg = lane_targets(lanes_of(anno), box, mirror, seg_hw, name)
            labels.append(label)
            if seg is not None:
                segs.append(seg)
        self.pos = target + self.batch_size
        out = {"data": np.stack(data)}
        if self.labels:
            out["label"] = np.stack(labels)
        if segs:
            out["seg_label"] = np.stack(segs)
        return out


__all__ = ["LaneBatchMaker", "SegSize", "check_lane_record", "seg_shape"]
