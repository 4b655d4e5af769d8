"""OpenPose's training data layer ``CPMData`` (lineage: openpose, CMU-Perceptual-Computing-Lab/caffe_train @
76dd9563fb24cb1702d0245cda7cc36ec2aed43b: ``src/caffe/layers/cpm_data_layer.cpp``,
``include/caffe/layers/cpm_data_layer.hpp``, ``src/caffe/cpm_data_transformer.cpp``,
``include/caffe/cpm_data_transformer.hpp``; records as ZheC/Realtime_Multi-Person_Pose_Estimation @ de8d6984's
``training/genLMDB.py`` writes them, read by its ``training/example_proto/pose_train_test.prototxt``).

Reads raw Datums in key order (wrapping) from ``data_param {source batch_size backend}``; ``cpm_transform_param``
gives the augmentation and labels (:mod:`neocaffe.data.cpm_augment`, records: :mod:`neocaffe.data.cpm_records`).
Tops: ``data`` (N, C, crop_size_y, crop_size_x) in TRAIN (the datum's H x W in TEST) with channels 0-2 the image
as ``(bgr - 128) / 256`` and the others 0 (the fork never writes them; the prototxt slices them off and silences
them); ``label`` (N, 2 (num_parts + 1), H / stride, W / stride): weights (mask_miss), PAFs, heatmaps, background,
the layout the prototxt's ``Slice`` at 38, 57, 95 expects for ``num_parts: 56``. Random draws come from the layer's
seed (``neocaffe.rng``) and the batch number, so runs repeat and resume exactly (the fork: C ``rand()``).

Read: ``stride``, ``crop_size_x``/``_y``, ``scale_prob``/``_min``/``_max``, ``target_dist``, ``max_rotate_degree``,
``center_perterb_max``, ``flip_prob``, ``sigma``, ``num_parts`` (56: COCO, 43: MPI), ``np_in_lmdb``, ``do_clahe``
with ``clahe_tile_size``/``clahe_clip_limit``, ``gray``. Not read (the fork's Transform_nv does not either):
``scale``, ``mirror``, ``mean_file``, ``mean_value``, the coverage fields, ``bbox_norm_factor``, ``img_header``,
``force_color``/``force_gray``, ``sigma_center``, ``num_total_augs``. Refused (the fork aborts or reads past its
arrays): ``crop_size`` > 0 (tops left unshaped), ``aug_way`` other than "rand" (``table`` reads rotate/flip tables
from ``../../`` with a process-wide epoch counter: not ported), ``num_parts`` other than 56/43 (no labels are
rendered), ``transform_body_joint: false``, encoded or float datums, fewer than 5 channels.

Deviations: ``visualize`` writes no images; 5-channel records (genLMDB.py's MPI) are read (the fork CHECKs 6);
in TEST the weights come from mask_miss resized by 1/stride (the fork reads an empty mask there) and every record
must have the first record's size; a weight channel whose part is written with visibility 3 is 0 (the fork keeps
the previous batch's value); with one top only the data is made (the fork writes labels through a null pointer).
OpenCV's resize/warpAffine are today's cv2 (the fork's 2.4 may differ in the last bit of some pixels).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from neocaffe.data.cpm_augment import augment, draw, render_labels
from neocaffe.data.cpm_records import NEEDS_IN_LMDB, PARTS, body_joints, cpm_example, read_meta
from neocaffe.data.datum import DatumError, parse_datum
from neocaffe.data.prefetch import default_workers
from neocaffe.data.shard import global_batch
from neocaffe.data.sources import DBReader, DBRecords, detect_backend
from neocaffe.layers.base import TRAIN, Example, Shape
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")


def record_array(value: bytes, name: str) -> np.ndarray:
    """A CPMData record's C x H x W uint8 planes (raw uint8 datums of 5 or 6 channels only)."""
    datum = parse_datum(value, name)
    if datum.encoded:
        raise DatumError(f"{name}: an encoded datum; CPMData reads raw datums of image, metadata and mask planes "
                         "(genLMDB.py's)")
    c, h, w = int(datum.channels), int(datum.height), int(datum.width)
    if c < 5 or len(datum.data) != c * h * w:
        raise DatumError(f"{name}: datum {c}x{h}x{w} with {len(datum.data)} data bytes; expected uint8 data of 6 "
                         "channels (BGR, metadata, mask_miss, mask_all) or MPI's 5")
    return np.frombuffer(datum.data, np.uint8).reshape(c, h, w)


class CPMBatchMaker(DBRecords):
    """Batch ``k``: records ``k * batch_size ...`` (wrapping), dice from ``(seed, k)``; ``{"data", "label"}``."""

    def __init__(self, path: str, backend: str, batch_size: int, tp: Any, train: bool, seed: int, where: str,
                 shape: tuple[int, int], rank: int = 0, world: int = 1) -> None:
        self.path, self.backend, self.batch_size, self.where = path, backend, int(batch_size), where
        self.tp, self.train, self.seed, self.shape = tp, bool(train), int(seed), shape
        self.rank, self.world = int(rank), int(world)
        self.reader: DBReader | None = None
        self.pos = 0

    def item(self, arr: np.ndarray, name: str, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """One record's data (C x H x W) and label."""
        tp = self.tp
        img, mask = np.ascontiguousarray(arr[:3].transpose(1, 2, 0)), arr[4]
        if tp.do_clahe:
            lab = cv2.cvtColor(img, cv2.COLOR_BGR2Lab)
            clahe = cv2.createCLAHE(int(tp.clahe_clip_limit), (int(tp.clahe_tile_size),) * 2)
            lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
            img = cv2.cvtColor(lab, cv2.COLOR_Lab2BGR)
        if tp.gray == 1:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        people = body_joints(read_meta(arr[3], int(tp.np_in_lmdb), name), int(tp.num_parts))
        if rng is not None:
            img, mask, people = augment(img, mask, people, tp, draw(rng, tp))
        elif img.shape[:2] != self.shape:
            raise DatumError(f"{name}: {img.shape[0]}x{img.shape[1]}; in TEST every record must have the first "
                             f"record's size {self.shape[0]}x{self.shape[1]} (the data top's)")
        s = int(tp.stride)
        mask = cv2.resize(mask, None, fx=1.0 / s, fy=1.0 / s, interpolation=cv2.INTER_CUBIC)
        data = np.zeros((arr.shape[0], *img.shape[:2]), np.float32)
        data[:3] = (img.transpose(2, 0, 1).astype(np.float32) - 128) / 256
        label = render_labels(people, mask, (img.shape[0] // s, img.shape[1] // s), tp)
        return data, label

    def make(self, k: int) -> dict:
        k = global_batch(k, self.rank, self.world)
        reader = self.seek(k * self.batch_size)
        rng = np.random.default_rng([self.seed, k]) if self.train else None
        data, labels = [], []
        for _ in range(self.batch_size):
            key, value = reader.next()
            name = f"{self.where}: record '{key.decode('utf-8', 'replace')}'"
            d, lab = self.item(record_array(value, name), name, rng)
            data.append(d)
            labels.append(lab)
        self.pos = k * self.batch_size + self.batch_size
        return {"data": np.stack(data), "label": np.stack(labels)}


@register_layer("CPMData")
class CPMData(PrefetchedLayer):
    """OpenPose's training data: augmented crops with their part heatmaps, PAFs and masks."""

    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp, tp = self.param.data_param, self.param.cpm_transform_param
        if not dp.source:
            raise self.error("data_param.source is empty; expected the path of an LMDB (genLMDB.py's)")
        if dp.batch_size <= 0:
            raise self.error(f"data_param.batch_size must be positive; received {dp.batch_size}")
        n = int(tp.num_parts)
        if n not in PARTS:
            raise self.error(f"cpm_transform_param.num_parts {n}: the fork renders labels for 56 (COCO) and 43 "
                             "(MPI) only; expected one of those")
        if tp.np_in_lmdb < NEEDS_IN_LMDB[n]:
            raise self.error(f"cpm_transform_param.np_in_lmdb {tp.np_in_lmdb}: num_parts {n} maps "
                             f"{NEEDS_IN_LMDB[n]} joints of the record; expected np_in_lmdb >= {NEEDS_IN_LMDB[n]}")
        if not tp.transform_body_joint:
            raise self.error("cpm_transform_param.transform_body_joint: false reads joints past the record's "
                             "np_in_lmdb in the fork; expected true (the body-joint form)")
        if tp.crop_size:
            raise self.error(f"cpm_transform_param.crop_size {tp.crop_size}: the fork leaves its tops unshaped then; "
                             "use crop_size_x and crop_size_y")
        if self.phase == TRAIN and tp.aug_way != "rand":
            raise self.error(f"cpm_transform_param.aug_way '{tp.aug_way}': only \"rand\" is ported (\"table\" reads "
                             "the fork's ../../rotate_*.txt and flip_*.txt tables)")
        s = int(tp.stride)
        if s <= 0 or (self.phase == TRAIN and min(tp.crop_size_x, tp.crop_size_y) < s):
            raise self.error(f"cpm_transform_param.stride {s}, crop {tp.crop_size_x}x{tp.crop_size_y}: expected a "
                             "positive stride no larger than the crop")
        if tp.visualize:
            log.warning("layer '%s': cpm_transform_param.visualize writes no images here", self.name)
        if dp.HasField("backend"):
            self.backend = "lmdb" if dp.backend == caffe_pb2.DataParameter.LMDB else "leveldb"
        else:
            self.backend = detect_backend(dp.source) or "leveldb"
        self.source, self.where = os.path.abspath(dp.source), f"data_param.source '{dp.source}'"
        try:
            with DBReader(self.source, self.backend, self.where) as reader:
                self.n_records = reader.count() if self.backend == "lmdb" else None
                key, value = reader.peek()
            name = f"{self.where}: record '{key.decode('utf-8', 'replace')}'"
            first = record_array(value, name)
            read_meta(first[3], int(tp.np_in_lmdb), name)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        c, h, w = first.shape
        self.item_hw = (h, w)
        if self.phase == TRAIN:
            h, w = int(tp.crop_size_y), int(tp.crop_size_x)
        self.batch_size, self.seed = int(dp.batch_size), data_seed()
        self._top_shapes: list[Shape] = [(self.batch_size, c, h, w), (self.batch_size, 2 * (n + 1), h // s, w // s)]
        self._top_shapes = self._top_shapes[: len(self.param.top)]
        log.info("output data size: %s", ",".join(str(v) for v in self._top_shapes[0]))

    def _workers_and_depth(self) -> tuple[int, int]:
        n = None if self.n_records is None else math.ceil(self.n_records / self.batch_size)
        workers = 0 if self.backend == "leveldb" else default_workers(n, self.context.data_workers)
        return workers, int(self.param.data_param.prefetch)

    def _maker(self) -> CPMBatchMaker:
        return CPMBatchMaker(self.source, self.backend, self.batch_size, self.param.cpm_transform_param,
                             self.phase == TRAIN, self.seed, self.where, self.item_hw, self.context.rank,
                             self.context.world)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        _, get, data = self._next_batch()
        tops = [data, torch.as_tensor(get("label"))][: len(self.param.top)]
        return tops

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        path = cpm_example()
        common = (f'name: "d" type: "CPMData" top: "data" top: "label" data_param {{ source: "{path}" batch_size: 2 '
                  'backend: LMDB } cpm_transform_param { stride: 8 crop_size_x: 24 crop_size_y: 16 scale_prob: 1 '
                  'scale_min: 0.5 scale_max: 1.1 max_rotate_degree: 40 target_dist: 0.6 center_perterb_max: 40 '
                  'num_parts: 56 np_in_lmdb: 17 }')
        return [Example(common, [], grad_bottoms=(), grad_params=False, phase=0),
                Example(common, [], grad_bottoms=(), grad_params=False, phase=1)]
