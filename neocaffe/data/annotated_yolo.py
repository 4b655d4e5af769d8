"""MobileNet-YOLO's extra tops of AnnotatedData: the YOLO box label and the segmentation label.

Lineage and source files: eric612/MobileNet-YOLO @ 69b4441c, ``src/caffe/layers/annotated_data_layer.cpp``
(DataLayerSetUp and load_batch: the ``yolo_data_type: 1`` rows, ``train_diffcult`` with
``difficult_label_warmup``, the ``seg_label`` top with ``single_class``, ``seg_scales``, ``seg_resize_width`` /
``seg_resize_height`` and the ``YoloSegLabel`` label map), ``src/caffe/data_transformer.cpp`` (Transform2) and
``src/caffe/util/io.cpp`` (DecodeDatumToCVMatSeg).

The segmentation label of an image is the datum's ``seg_label`` (an encoded image, decoded as 8-bit grey),
cropped by the box the batch samplers (or the jitter) drew for that image, and nothing else of the image's
augmentation but its mirror: as in the fork, the crop box is applied to the *original* label image (with
``expand_param`` the box is in the expanded canvas's coordinates, which the fork does not undo either), and an
image for which no box was drawn reuses the previous image's box of its batch (the fork's ``crop_box`` lives
across the images of ``load_batch``; for the first image of a batch it is unset, where the fork crops an empty
image and fails in ``cv::resize``: an error here). Then:

* ``single_class`` (the default): the crop resized (bilinear) to ``cv::Size(H', W')`` (width H', height W': the
  fork swaps them, and its Transform2 then CHECKs both sides, so H' must equal W'), thresholded at 100 (> 100:
  255), one channel;
* otherwise one channel per class ``1 .. C`` (C = the largest ``label_id`` of the label map): pixel value v is
  255 where the label map's item number v (its position in the file) has that ``label_id``, else 0
  (``cv::LUT``), resized (bilinear) to W' x H'.

Each channel is then ``pixel * float(1 / 255.0)``, mirrored with its image. ``H' x W'`` is the data top's size
divided by ``seg_scales`` (floor), or ``seg_resize_height x seg_resize_width`` when both are set (the fork's
first shape in DataLayerSetUp swaps those two; every batch's shape is load_batch's, as here). The fork passes
``cv::INTER_AREA`` to ``cv::resize`` where its ``fx`` goes, which OpenCV ignores when a size is given: both
resizes are bilinear.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from neocaffe.data import annotated as an
from neocaffe.data.datum import DatumError
from neocaffe.io.errors import CaffeFileError, PrototxtError
from neocaffe.io.prototxt import read_prototxt
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")
YOLO_ROWS = 300  # MobileNet-YOLO's label rows per image
_INV255 = np.float32(1 / 255.0)  # Transform2's ``const float scale = 1/255.0``


def yolo_label(per_image: list[an.Boxes], train_difficult: bool) -> np.ndarray:
    """MobileNet-YOLO's ``yolo_data_type: 1`` label, N x 1 x 300 x 5: per image the rows ``[group_label - 1,
    x, y, w, h]`` (centre and size) of its boxes in annotation order, difficult ones only with
    ``train_difficult``, then zeros. Deviations: the fork writes rows past the 300th into the next image's
    rows (overwritten there) or past the blob for the last image, here they are dropped with a warning; a
    batch without any box gets all zeros (the fork zeroes 8 values and leaves the rest as they were)."""
    out = np.zeros((len(per_image), 1, YOLO_ROWS, 5), np.float32)
    for item, boxes in enumerate(per_image):
        keep = np.ones(len(boxes.label), bool) if train_difficult else ~boxes.difficult.astype(bool)
        b = boxes.box[keep].astype(np.float32)
        if len(b) > YOLO_ROWS:
            log.warning("WARNING : gt box > %d , %d (the rows after the %dth are dropped)", YOLO_ROWS, len(b), YOLO_ROWS)
            b, keep = b[:YOLO_ROWS], np.flatnonzero(keep)[:YOLO_ROWS]
        rows = np.stack([boxes.label[keep].astype(np.float32) - 1,
                         ((b[:, 0] + b[:, 2]).astype(np.float64) / 2.0).astype(np.float32),
                         ((b[:, 1] + b[:, 3]).astype(np.float64) / 2.0).astype(np.float32),
                         b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1) if len(b) else np.zeros((0, 5), np.float32)
        out[item, 0, : len(rows)] = rows
    return out


def warming_up(progress: tuple[int, int] | None) -> bool:
    """``difficult_label_warmup``: whether difficult boxes are still left out at solver iteration ``it`` of a
    ``step`` that runs to ``stop`` (``progress = (it, stop)``): the fork counts them once ``it > stop / 20``
    (integer division; ``stop`` is ``max_iter`` under ``solve``). Without a solver (None) there is no warmup."""
    if progress is None:
        return False
    it, stop = progress
    return not it > stop // 20


@dataclass(frozen=True)
class SegSpec:
    """What the ``seg_label`` top needs (picklable, for the data workers): ``tables`` holds one 256-entry
    lookup table per class channel (``single_class``: none), ``scales`` is ``seg_scales``, ``resize`` the
    (height, width) of ``seg_resize_*`` or None."""

    tables: tuple[bytes, ...]
    single_class: bool
    scales: int
    resize: tuple[int, int] | None

    @property
    def channels(self) -> int:
        return 1 if self.single_class else len(self.tables)

    def shape(self, data_h: int, data_w: int) -> tuple[int, int, int]:
        """(C, H', W') of an image of a batch whose data top is ``data_h`` x ``data_w``."""
        h, w = self.resize if self.resize is not None else (data_h // self.scales, data_w // self.scales)
        return self.channels, h, w


def seg_spec(ap: caffe_pb2.AnnotatedDataParameter) -> SegSpec:
    """The ``seg_label`` top's settings from ``annotated_data_param`` (its ``label_map_file`` is read as a
    ``YoloSegLabel``, as the fork reads it; with ``single_class`` it is still read, and unused)."""
    if ap.seg_scales <= 0 and not (ap.seg_resize_width and ap.seg_resize_height):
        raise DatumError(f"annotated_data_param.seg_scales must be positive; received {ap.seg_scales}")
    if not ap.label_map_file:
        raise DatumError("the seg_label top needs annotated_data_param.label_map_file (a YoloSegLabel prototxt: "
                         "item { name label label_id })")
    try:
        label_map = read_prototxt(Path(ap.label_map_file), caffe_pb2.YoloSegLabel)
    except (CaffeFileError, PrototxtError, OSError) as e:
        raise DatumError(f"Failed to read label map file: {ap.label_map_file} ({e})") from None
    resize = (int(ap.seg_resize_height), int(ap.seg_resize_width)) if ap.seg_resize_width and ap.seg_resize_height else None
    if resize is not None and min(resize) <= 0:
        raise DatumError(f"annotated_data_param.seg_resize_width/height must be positive; received {resize}")
    if ap.single_class:
        return SegSpec((), True, int(ap.seg_scales), resize)
    ids = [int(item.label_id) for item in label_map.item]
    classes = max([i for i in ids if i], default=0)
    if classes < 1:
        raise DatumError(f"label map {ap.label_map_file}: no item has a positive label_id, so the seg_label top "
                         "(single_class: false) would have no channel")
    if any(0 < i <= classes for i in ids[256:]):
        raise DatumError(f"label map {ap.label_map_file}: items after the 256th have a label_id, which the fork "
                         "writes past its 256-entry lookup table (8-bit label images)")
    tables = []
    for c in range(1, classes + 1):
        table = np.zeros(256, np.uint8)
        table[[k for k, i in enumerate(ids[:256]) if i == c]] = 255
        tables.append(table.tobytes())
    return SegSpec(tuple(tables), False, int(ap.seg_scales), resize)


def decode_seg(datum: caffe_pb2.Datum, where: str) -> np.ndarray:
    """DecodeDatumToCVMatSeg(datum, false): the encoded ``seg_label`` as an 8-bit grey image."""
    if not datum.encoded:
        raise DatumError(f"{where}: the seg_label top needs encoded records (the fork: Datum not encoded)")
    img = cv2.imdecode(np.frombuffer(datum.seg_label, np.uint8), cv2.IMREAD_GRAYSCALE) if datum.seg_label else None
    if img is None:
        raise DatumError(f"{where}: could not decode the datum's seg_label as an image (empty: "
                         f"{not datum.seg_label}); the seg_label top needs one per record")
    return img


def seg_label(spec: SegSpec, label: np.ndarray, box: np.ndarray | None, mirror: bool,
              shape: tuple[int, int, int], where: str) -> np.ndarray:
    """One image's ``seg_label`` (C x H' x W', float32) from its decoded label image, crop box and mirror."""
    if box is None:
        raise DatumError(f"{where}: the seg_label top crops each label image by the box its image was sampled "
                         "with, and none has been drawn in this batch yet (the fork crops by an unset box here and "
                         "fails); add a batch_sampler (e.g. batch_sampler { max_sample: 1 max_trials: 1 }) or "
                         "yolo_data_jitter")
    crop = an.crop_box(label, box)
    if not crop.size:
        raise DatumError(f"{where}: the crop box {box.tolist()} leaves no pixel of the {label.shape[1]}x"
                         f"{label.shape[0]} label image (the fork fails in cv::resize)")
    c, h, w = shape
    if spec.single_class:
        if h != w:
            raise DatumError(f"single_class resizes the label to width {h}, height {w} and then reads it as {h}x{w} "
                             "(the fork's CHECKs in Transform2 fail unless the seg_label top is square)")
        resized = cv2.resize(crop, (h, w), interpolation=cv2.INTER_LINEAR)
        channels = [np.where(resized > 100, np.uint8(255), np.uint8(0))]
    else:
        channels = [cv2.resize(cv2.LUT(crop, np.frombuffer(t, np.uint8)), (w, h), interpolation=cv2.INTER_LINEAR)
                    for t in spec.tables]
    out = np.stack(channels).astype(np.float32) * _INV255
    return np.ascontiguousarray(out[:, :, ::-1] if mirror else out)
