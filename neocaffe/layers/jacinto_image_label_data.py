"""TI caffe-jacinto's ``ImageLabelData``: segmentation images and label maps from two databases read in step.

Lineage and source files: mathmanu/caffe-jacinto ``caffe-0.17`` @ 2678b2b8556cc64ba66d801537bb066fc070889a,
``src/caffe/layers/image_label_data_layer.cpp`` and ``include/caffe/layers/image_label_data_layer.hpp`` (two
NVCaffe ``DataLayer``s, one per database, their transformers seeded alike), with NVCaffe 0.17's
``src/caffe/layers/data_layer.cpp``, ``src/caffe/data_reader.cpp`` and ``src/caffe/data_transformer.cpp``
(``TransformV1`` for raw Datums, the cv::Mat path for encoded ones and NVCaffe's random resize). Its nets:
mathmanu/caffe-jacinto-models ``caffe-0.17`` @ 3aadc1663ab05adafcbff72019cd9a623ce69615
(``trained/image_segmentation/*/{train,test}.prototxt``); their LMDBs come from its
``scripts/tools/utils/create_segmentation_image_lmdb.py`` (raw Datums: images 3 x H x W BGR, labels 1 x H x W,
keys ``%010d``, both databases in one order). What one batch holds: :mod:`neocaffe.data.image_label_db`.

Fields read (``image_label_data_param``): ``image_list_path`` and ``label_list_path`` (the two databases'
paths, despite the names), ``batch_size``, ``backend`` (LMDB or LEVELDB; required, as the fork's CHECK).
``transform_param``: ``crop_size`` (or ``crop_h``/``crop_w``), ``mirror`` and NVCaffe's random resize
(``img_rand_resize_*``, ``rand_resize_ratio_*``, ``*_stretch_*``, ``allow_upscale``) place image and label
alike; ``mean_value``/``mean_file``, ``scale``, ``interpolation_algo_*`` and neocaffe's colour augmentation
apply to the image. Random crop in TRAIN, centre crop in TEST; mirror at random in either phase (Caffe's).
Tops: the data (N, C, h, w) and the label (N, 1, h, w), float32 with the label's integer values.

Not read, as by the 0.17 fork: ``shuffle`` (the fork passes it to NVCaffe's reader, which ignores it unless
``data_param.cache`` is set, and the layer never sets it: records come in database order), ``threads``
(neocaffe's data workers instead), ``rand_skip`` (NVCaffe's reader ignores it), and the fields of the list-file
layer ``ImageLabelListData`` of caffe-jacinto's 0.15 and 0.16 branches (not in 0.17), ``scale_prob``/``scale_min``/
``scale_max``, ``size_min``/``size_max``, ``label_slice``, ``padding``, ``data_dir``/``image_dir``/``label_dir``/
``image_dir2``/``image_list_path2``, ``check_image_files`` (a warning names those that are set). The draws are neocaffe's, from the layer's seed (``neocaffe.rng``): the fork's
two boost streams cannot be reproduced; image and label share them as in the fork.

Deviations on purpose (each where the fork would silently corrupt or crash): the label gets no ``scale``
(the fork copies ``transform_param.scale`` onto the label's transformer; no released net sets it); a label
is resized nearest-neighbour both ways (the fork uses ``interpolation_algo_up``, INTER_CUBIC by default, when
its random resize enlarges); ``mean_value`` with 3 values is accepted (the fork's label transformer
CHECK-fails: 3 zero means for 1 channel), a ``mean_file`` applies to the image only (the fork subtracts it
from the label too); databases holding different numbers of records, an image and label of different sizes,
or a label of several channels are errors (the fork reads on, mispaired); ``force_color``/``force_gray``
decode the image only. A data-parallel run gives each process ``batch_size`` items of its own batches
(:mod:`neocaffe.data.shard`, as every neocaffe data layer; the fork's ``parallel.cpp`` divides ``batch_size``
among the GPUs).
"""
from __future__ import annotations

import logging
import math
import os

import torch

from neocaffe.data.image_label_db import (ImageLabelBatchMaker, PairSide, check_pair, image_label_example,
                                          label_transform_param)
from neocaffe.data.batches import decode_record
from neocaffe.data.prefetch import default_workers
from neocaffe.data.sources import DBReader
from neocaffe.data.transformer import DataTransformer
from neocaffe.layers.base import TEST, TRAIN, Example, Shape
from neocaffe.layers.dense_image_data import ImagePairLayer
from neocaffe.layers.prefetched import DATA_ERRORS, data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")

#: the fields of the 0.15/0.16 branches' ImageLabelListData, which 0.17's ImageLabelData never reads
_UNREAD = ("scale_prob", "scale_min", "scale_max", "size_min", "size_max", "label_slice", "padding", "data_dir",
           "image_dir", "label_dir", "image_dir2", "image_list_path2", "check_image_files")


@register_layer("ImageLabelData")
class ImageLabelDataLayer(ImagePairLayer):
    """See the module docstring."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p, tp = self.param.image_label_data_param, self.param.transform_param
        if not p.HasField("backend"):
            raise self.error("image_label_data_param.backend is not set; expected LMDB or LEVELDB "
                             "(the fork's CHECK: ImageLabelDataParameter should specify backend)")
        if not p.image_list_path or not p.label_list_path:
            raise self.error(f"image_label_data_param.image_list_path and label_list_path must both name a database; "
                             f"received '{p.image_list_path}' and '{p.label_list_path}'")
        if p.batch_size <= 0:
            raise self.error(f"image_label_data_param.batch_size must be positive; received {p.batch_size}")
        unread = [f for f in _UNREAD if p.HasField(f)]
        if unread:
            log.warning("layer '%s' (ImageLabelData): image_label_data_param %s: read by caffe-jacinto 0.15/0.16's "
                        "ImageLabelListData, not by ImageLabelData (nor here)", self.name, ", ".join(unread))
        try:
            self.transformer = DataTransformer(tp, self.phase, where=f"layer '{self.name}' transform_param")
            self.label_transformer = DataTransformer(label_transform_param(tp), self.phase,
                                                     where=f"layer '{self.name}' transform_param (label)")
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        if self.transformer.pixels is not None:
            raise self.error("transform_param.resize_param / noise_param are SSD's; NVCaffe's DataLayer under "
                             "ImageLabelData has no such step (it would change the image and not its label)")
        mean = self.transformer.mean_tensor()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(0), persistent=False)
        self.backend = "lmdb" if p.backend == caffe_pb2.ImageLabelDataParameter.LMDB else "leveldb"
        self.paths = (os.path.abspath(p.image_list_path), os.path.abspath(p.label_list_path))
        self.wheres = (f"image_label_data_param.image_list_path '{p.image_list_path}'",
                       f"image_label_data_param.label_list_path '{p.label_list_path}'")
        try:
            firsts, counts = [], []
            for path, where, tr in zip(self.paths, self.wheres, (self.transformer, self.label_transformer)):
                with DBReader(path, self.backend, where) as reader:
                    counts.append(reader.count())  # LevelDB: a walk over its keys
                    d, name = decode_record(*reader.peek(), where, tr.force_color, tr.force_gray)
                    firsts.append((name, d.array.shape))
            if counts[0] != counts[1]:
                raise self.error(f"the image database holds {counts[0]} records and the label database {counts[1]}; "
                                 f"expected one label map per image, in one order")
            (iname, ishape), (lname, lshape) = firsts
            check_pair(iname, ishape, lname, lshape)
            c, h, w = self.transformer.output_shape(*ishape, what=iname)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        self.n_records = counts[0]
        mv = self.transformer.mean_values_tensor(c)
        self.register_buffer("mean_values", mv if mv is not None else torch.zeros(0), persistent=False)
        self.seed, self.batch_size = data_seed(), int(p.batch_size)
        self._reseeded()
        self._top_shapes: list[Shape] = [(self.batch_size, c, h, w), (self.batch_size, 1, h, w)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _reseeded(self) -> None:
        rank, world = self.context.rank, self.context.world  # data-parallel: both read this process's slice
        images = PairSide(self.paths[0], self.backend, self.batch_size, self.transformer, self.seed, start=self.skip,
                          where=self.wheres[0], rank=rank, world=world)
        labels = PairSide(self.paths[1], self.backend, self.batch_size, self.label_transformer, self.seed,
                          start=self.skip, where=self.wheres[1], rank=rank, world=world, partner=images)
        self._pairs = ImageLabelBatchMaker(images, labels)

    def _workers_and_depth(self) -> tuple[int, int]:
        if self.backend == "leveldb":  # one process may hold a LevelDB open: read it in process
            return 0, 4
        return default_workers(math.ceil(self.n_records / self.batch_size), self.context.data_workers), 4

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        images, labels = image_label_example()
        param = (f'image_label_data_param {{ image_list_path: "{images}" label_list_path: "{labels}" '
                 f'backend: LMDB shuffle: true threads: 1 batch_size: ')
        base = 'name: "d" type: "ImageLabelData" top: "data" top: "label" '
        return [
            Example(base + param + '2 } transform_param { mirror: true crop_size: 4 mean_value: 0 }', [],
                    grad_bottoms=(), grad_params=False, phase=TRAIN),
            Example(base + param + '3 } transform_param { crop_size: 5 mean_value: 104 mean_value: 117 '
                    'mean_value: 123 scale: 0.5 }', [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]
