"""Data layers: Data (LMDB/LevelDB), ImageData (list of images), MemoryData (HDF5Data and HDF5Output:
:mod:`neocaffe.layers.hdf5_layers`).

Thin layers over ``neocaffe.data``: sources are opened at setup (paths relative to the working
directory, as in Caffe), the top shape comes from the first record, and every forward yields the next
batch. Reading, decoding and cropping run in worker processes (``neocaffe.data.prefetch``); the float
transform (mean, scale, mirror) runs on the layer's device. Random crops, mirrors, shuffles and
``rand_skip`` draw from a seed taken from ``neocaffe.rng`` at setup, so seeded runs repeat.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe import rng
from neocaffe.data.batches import DBBatchMaker, ImageListBatchMaker, decode_record
from neocaffe.data.examples import example_folder
from neocaffe.data.prefetch import default_workers
from neocaffe.data.sources import DBReader, detect_backend, read_image_list
from neocaffe.data.transformer import DataTransformer
from neocaffe.layers.base import TEST, TRAIN, Example, Layer, Shape
from neocaffe.layers.blob_shape import check_shape
from neocaffe.layers.lineage import net_lineage
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")


def _transform_param(param: Any, legacy: Any = None) -> Any:
    """``transform_param``, with the pre-2014 fields of ``data_param`` etc. (scale, mean_file,
    crop_size, mirror) folded in when a net still carries them."""
    tp = caffe_pb2.TransformationParameter()
    tp.CopyFrom(param.transform_param)
    if legacy is not None:
        for f in ("scale", "mean_file", "crop_size", "mirror"):
            if legacy.HasField(f) and not tp.HasField(f):
                setattr(tp, f, getattr(legacy, f))
    return tp


class TransformingLayer(PrefetchedLayer):
    """Shared part of Data, ImageData and AnnotatedData: transformer, mean buffers, forward."""

    min_tops = 1
    max_tops = 2

    def _init_transformer(self, tp: Any) -> None:
        try:
            self.transformer = DataTransformer(tp, self.phase, where=f"layer '{self.name}' transform_param")
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        mean = self.transformer.mean_tensor()
        self.register_buffer("mean", mean if mean is not None else torch.zeros(0), persistent=False)
        flipped = self.transformer.mean_flipped_tensor() if self.transformer.mirror else None
        self.register_buffer("mean_flipped", flipped if flipped is not None else torch.zeros(0), persistent=False)
        self._top_shapes: list[Shape] = []

    def _set_shapes(self, item_shape: tuple[int, int, int], batch_size: int) -> None:
        self.batch_size = int(batch_size)
        c = item_shape[0]
        mv = self.transformer.mean_values_tensor(c)
        self.register_buffer("mean_values", mv if mv is not None else torch.zeros(0), persistent=False)
        self._top_shapes = [(self.batch_size, *item_shape), (self.batch_size,)][: len(self.param.top)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        data = self.transformer.apply(
            {"data": x, "offsets": get("offsets"), "mirror": get("mirror"), "color": get("color")},
            self.mean.device,
            mean=self.mean if self.transformer.mean is not None else None,
            mean_values=self.mean_values if self.mean_values.numel() else None,
            mean_flipped=self.mean_flipped if self.mean_flipped.numel() else None,
        )
        self._release(batch)
        self._top_shapes[0] = tuple(data.shape)
        if len(self.param.top) == 1:
            return [data]
        return [data, torch.as_tensor(get("labels"), dtype=torch.float32)]


class _ForkForms:
    """Where a fork gave ``Data``/``ImageData`` another form (NUMBERING.md rule 6): a direct subclass that
    defines ``claims(param, net) -> bool`` (caffe_ocr's multi-label forms, :mod:`neocaffe.layers.ocr_data`:
    ``task_class_num``/``regression`` set, a net of lineage ``caffe_ocr``, or for Data a first record
    holding several labels) is built instead of the registered class wherever it claims the layer, and its
    ``form_examples()`` join the type's contract examples. Told from the subclasses themselves, so this
    module imports no fork's module (they import it); importing ``neocaffe.layers`` loads them all.
    Elsewhere the class is BVLC's, unchanged."""

    takes_net = True  # a fork's form may be told by the net's lineage

    def __new__(cls, param: Any = None, *args: Any, **kwargs: Any) -> Any:
        net = kwargs.get("net", args[3] if len(args) > 3 else None)
        forms = [sub for sub in cls.__subclasses__() if "claims" in vars(sub)] if param is not None else []
        return super().__new__(next((s for s in forms if s.claims(param, net)), cls))  # type: ignore[attr-defined]

    def __init__(self, param: Any, bottom_shapes: Any, phase: int = TEST, context: Any = None,
                 net: Any = None) -> None:
        super().__init__(param, bottom_shapes, phase, context, net)  # type: ignore[call-arg]

    @classmethod
    def _form_examples(cls) -> list[Example]:
        forms = [sub for sub in cls.__subclasses__() if "claims" in vars(sub)]
        return [ex for sub in forms for ex in sub.form_examples()]  # type: ignore[attr-defined]


@register_layer("Data")
class DataLayer(_ForkForms, TransformingLayer):
    """Caffe's DataLayer: Datums from ``data_param.source`` (LMDB or LevelDB ``backend``; detected from
    the folder when unset), ``batch_size``, ``rand_skip`` (start a random number of records below it
    in, as Caffe's DataLayer did before its DataReader; the fork's DataReader ignores it), ``prefetch``
    (batches made ahead); ``transform_param``; encoded datums are decoded (``force_color``/
    ``force_gray``, or ``data_param.force_encoded_color``). caffe_ocr's form (every label of a record,
    a (batch_size, L, 1, 1) top) is built instead where it claims the layer (:class:`_ForkForms`).

    NVCaffe's ``cache: true`` with ``shuffle: true``, in TRAIN (its ``data_layer.cpp``: ``shuffle = cache
    && shuffle_ && phase_ == TRAIN``; its DataReader caches every record in the first pass and reshuffles the
    cache at the start of every later pass): the first pass reads in database order, every later pass in
    a new uniform permutation of all records, batches running on across pass ends (:class:`DBBatchMaker`).
    The distribution is NVCaffe's; the draws are neocaffe's, from the layer's seed and the pass number (NVCaffe's
    own, from Caffe's RNG in its reader thread, cannot be reproduced), so runs repeat and resume exactly.
    ``cache`` alone, or in TEST, changes nothing (NVCaffe's cache replays database order).

    LRCN's ``transform_param.flow`` (LisaAnne/lisa-caffe-public @ 49b8643d, ``data_transformer.cpp``): in a
    mirrored item of a raw (unencoded) Datum, uint8 or ``float_data``, channel 2 becomes ``255 - v`` before the
    mean (:func:`neocaffe.data.transformer.flow_mirror`); encoded Datums go through the fork's cv::Mat
    ``Transform``, which never reads it. Intel Caffe (intel/caffe @ 44d53638) carries the same code in an overload
    none of its layers calls, so it never applies ``flow``: a net of ``lineage: "intelcaffe"`` does not either."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp = self.param.data_param
        if not dp.source:
            raise self.error("data_param.source is empty; expected the path of an LMDB or LevelDB")
        if dp.batch_size <= 0:
            raise self.error(f"data_param.batch_size must be positive; received {dp.batch_size}")
        tp = _transform_param(self.param, dp)
        self._init_transformer(tp)
        self.flow = bool(tp.flow) and self._flow_lineage() != "intelcaffe"
        if self.flow:
            log.info("layer '%s': transform_param.flow: channel 2 of mirrored raw Datums becomes 255 - v (LRCN's "
                     "DataTransformer; Intel Caffe never applies it: set lineage: \"intelcaffe\" for its numbers)",
                     self.name)
        if dp.HasField("backend"):
            backend = "lmdb" if dp.backend == caffe_pb2.DataParameter.LMDB else "leveldb"
        else:
            backend = detect_backend(dp.source) or "leveldb"
        self.source = os.path.abspath(dp.source)
        self.backend = backend
        where = f"data_param.source '{dp.source}'"
        self.skip = int(rng.numpy_rng().integers(0, dp.rand_skip)) if dp.rand_skip else 0
        if self.skip:
            log.info("Skipping first %d data points.", self.skip)
        self.force_color = bool(dp.force_encoded_color)
        self.cache_shuffle = bool(dp.cache and dp.shuffle and self.phase == TRAIN)  # NVCaffe's data_layer.cpp
        try:
            with DBReader(self.source, backend, where) as reader:
                self.n_records = reader.count() if backend == "lmdb" else None
                reader.skip(self.skip)
                key, value = reader.peek()
                d, name = decode_record(key, value, where, self.force_color or self.transformer.force_color,
                                        self.transformer.force_gray)
                c, h, w = d.array.shape
                if self.transformer.pixels is not None and d.encoded:  # SSD's InferNewSize
                    c, h, w = self.transformer.pixels.shape(c, h, w)
                shape = self.transformer.output_shape(c, h, w, what=name)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        self.where = where
        self.seed = data_seed()
        self._set_shapes(shape, dp.batch_size)

    def _flow_lineage(self) -> str:
        try:
            return net_lineage(self.net_so_far)
        except ValueError as e:
            raise self.error(str(e)) from None

    def _maker(self) -> DBBatchMaker:
        rank, world = self.context.rank, self.context.world  # data-parallel: this process's slice
        return DBBatchMaker(self.source, self.backend, self.batch_size, self.transformer, self.seed,
                            start=self.skip, where=self.where, force_color=self.force_color, rank=rank, world=world,
                            shuffle=self.cache_shuffle, flow=self.flow)

    def _workers_and_depth(self) -> tuple[int, int]:
        if self.backend == "leveldb":  # one process may hold a LevelDB open: read it in process
            return 0, int(self.param.data_param.prefetch)
        n = None if self.n_records is None else math.ceil(self.n_records / self.batch_size)
        return default_workers(n, self.context.data_workers), int(self.param.data_param.prefetch)

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder = example_folder()
        return [
            Example(f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{folder}/lmdb" '
                    f'batch_size: 3 backend: LMDB }} transform_param {{ crop_size: 4 mirror: true scale: 0.5 }}',
                    [], grad_bottoms=(), grad_params=False, phase=0),
            Example(f'name: "d" type: "Data" top: "data" data_param {{ source: "{folder}/lmdb" batch_size: 2 }} '
                    f'transform_param {{ mean_value: 10 mean_value: 20 mean_value: 30 }}',
                    [], grad_bottoms=(), grad_params=False, phase=TEST),
        ] + cls._form_examples()  # caffe_ocr's form (neocaffe.layers.ocr_data)


@register_layer("ImageData")
class ImageDataLayer(_ForkForms, TransformingLayer):
    """Caffe's ImageDataLayer: ``image_data_param.source`` lists ``<file> <label>`` per line; images are
    read from ``root_folder + file`` with ``cv2.imread`` (``is_color``), resized to ``new_height`` x
    ``new_width`` when given, optionally ``shuffle``d (again at every pass) and started ``rand_skip``
    items in. NVCaffe's ``short_side`` (> 0; NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7,
    ``image_data_layer.cpp`` and ``util/io.cpp``) resizes each image so its shorter side is ``short_side``,
    ahead of ``new_height``/``new_width`` (:func:`neocaffe.data.datum.read_image`); the batch takes the first
    image's shape, so without a ``crop_size`` the images must come out the same size (NVCaffe's CHECK too).
    caffe_ocr's form (several labels or ``regression`` values a line, a (batch_size, L, 1, 1) top) is built
    instead where it claims the layer (:class:`_ForkForms`).

    LRCN's and Intel Caffe's ``min_height``/``min_width`` (both or neither, the forks' CHECK; LisaAnne/
    lisa-caffe-public @ 49b8643d and intel/caffe @ 44d53638, ``util/io.cpp`` and ``image_data_layer.cpp``): where
    no ``new_height``/``new_width`` is set, an image smaller than either is upscaled keeping its aspect ratio
    (:func:`neocaffe.data.datum.min_size`), at setup and for every item, as both forks' non-OpenMP builds (Intel's
    OpenMP build reads the items without them). Their ``transform_param.flow`` never reaches images read here:
    both forks' cv::Mat ``Transform`` ignores it (LRCN's flow nets use ImageData, so their x flow is mirrored
    as pixels only); the Data layer's raw Datums honour it (:class:`DataLayer`)."""

    def setup(self, bottom_shapes: list[Shape]) -> None:
        ip = self.param.image_data_param
        if (ip.new_height == 0) != (ip.new_width == 0) or ip.new_height < 0 or ip.new_width < 0:
            raise self.error(
                f"image_data_param.new_height and new_width must be set together; received "
                f"new_height {ip.new_height}, new_width {ip.new_width}"
            )
        if (ip.min_height == 0) != (ip.min_width == 0):
            raise self.error(
                f"Current implementation requires min_height and min_width to be set at the same time; received "
                f"image_data_param.min_height {ip.min_height}, min_width {ip.min_width}; expected both > 0 or both 0"
            )
        if ip.batch_size <= 0:
            raise self.error(f"image_data_param.batch_size must be positive; received {ip.batch_size}")
        if ip.new_height:  # before an image is resized to it
            check_shape((ip.batch_size, 3 if ip.is_color else 1, ip.new_height, ip.new_width),
                        "image_data_param batch_size x channels x new_height x new_width")
        tp = _transform_param(self.param, ip)
        self._init_transformer(tp)
        if tp.flow:
            log.info("layer '%s': transform_param.flow changes nothing for images read as pixels (LRCN's and Intel "
                     "Caffe's ImageData ignore it too; Data applies it to raw Datums)", self.name)
        self.list_file = ip.source
        try:
            entries = read_image_list(ip.source, what=f"image_data_param.source '{ip.source}'")
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        log.info("A total of %d images.", len(entries))
        skip = self.draw_skip(ip.rand_skip, len(entries), ip.source, "images")
        self.entries, self.skip, self.seed = entries, skip, data_seed()
        self._reseeded()
        try:
            e = self._maker_obj.entry(skip)
            c, h, w = self._maker_obj.load(e).shape
            if self.transformer.pixels is not None:  # SSD's InferNewSize
                c, h, w = self.transformer.pixels.shape(c, h, w)
            shape = self.transformer.output_shape(c, h, w, what=f"{ip.source}:{e.line}")
        except DATA_ERRORS as err:
            raise self.error(str(err)) from None
        self._set_shapes(shape, ip.batch_size)

    def _reseeded(self) -> None:
        ip = self.param.image_data_param
        self._maker_obj = ImageListBatchMaker(
            ip.source, self.entries, ip.root_folder, ip.new_height, ip.new_width, ip.is_color, ip.batch_size,
            self.transformer, self.seed, shuffle=ip.shuffle, skip=self.skip,
            rank=self.context.rank, world=self.context.world, short_side=ip.short_side,
            min_size=(ip.min_height, ip.min_width),
        )

    def _maker(self) -> ImageListBatchMaker:
        return self._maker_obj

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        folder = example_folder()
        return [
            Example(f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                    f'"{folder}/list.txt" root_folder: "{folder}/" batch_size: 2 new_height: 6 new_width: 7 '
                    f'shuffle: true }} transform_param {{ crop_size: 5 mirror: true }}',
                    [], grad_bottoms=(), grad_params=False, phase=0),
        ] + cls._form_examples()  # caffe_ocr's forms (neocaffe.layers.ocr_data)


@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    """Caffe's MemoryDataLayer: ``memory_data_param`` batch_size/channels/height/width; arrays given
    with ``reset(data, labels)`` (pycaffe's ``set_input_arrays``) are served ``batch_size`` rows per
    forward, wrapping. A forward before any ``reset`` is an error, as Caffe's CHECK."""

    exact_bottoms = 0
    exact_tops = 2
    allow_in_place = False
    produces_host_data = True

    def setup(self, bottom_shapes: list[Shape]) -> None:
        mp = self.param.memory_data_param
        dims = (mp.batch_size, mp.channels, mp.height, mp.width)
        if min(dims) <= 0:
            raise self.error(
                "memory_data_param batch_size, channels, height and width must be specified and positive; "
                f"received {'x'.join(map(str, dims))}"
            )
        self.batch_size, self.chw = int(mp.batch_size), tuple(int(d) for d in dims[1:])
        self.rank, self.world = self.context.rank, self.context.world  # data-parallel: rows rank*B.. of every world*B
        self.data: Tensor | None = None
        self.labels: Tensor | None = None
        self.pos = 0

    def reset(self, data: Any, labels: Any) -> None:
        """Serve these arrays: ``data`` (N, C, H, W) and ``labels`` (N,) (or (N, 1, 1, 1)); N must be a
        multiple of batch_size."""
        d = torch.as_tensor(np.asarray(data) if not isinstance(data, Tensor) else data)
        lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
        if d.dim() != 4 or tuple(d.shape[1:]) != self.chw:
            raise self.error(f"data must be N x {'x'.join(map(str, self.chw))}; received shape {tuple(d.shape)}")
        lab = lab.reshape(-1) if lab.dim() == 4 and lab[0].numel() == 1 else lab
        if lab.dim() != 1 or lab.shape[0] != d.shape[0]:
            raise self.error(f"labels must be ({d.shape[0]},) to match the data; received shape {tuple(lab.shape)}")
        if d.shape[0] % self.batch_size:
            raise self.error(f"the number of rows ({d.shape[0]}) must be a multiple of batch_size ({self.batch_size})")
        self.data = d.detach().to(torch.float32).contiguous()
        self.labels = lab.detach().to(torch.float32).contiguous()
        self.pos = 0

    def resume_state(self) -> dict:
        """The read position in the arrays ``reset`` gave (the arrays themselves are not carried)."""
        return {"pos": int(self.pos)}

    def load_resume_state(self, state: dict) -> None:
        """Continue at ``state``'s position (a later ``reset`` starts over, as it always does)."""
        self.pos = int(state["pos"])

    def set_batch_size(self, n: int) -> None:
        """Caffe's MemoryDataLayer::set_batch_size (data already given must be a multiple of it)."""
        if self.data is not None and self.data.shape[0] % int(n):
            raise self.error(f"{self.data.shape[0]} rows are not a multiple of the new batch_size {n}")
        self.batch_size = int(n)
        self.pos = 0

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(self.batch_size, *self.chw), (self.batch_size,)]

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        b = self.batch_size
        if self.data is None or self.labels is None:
            raise self.error("MemoryDataLayer needs to be initialized by calling reset(data, labels) before "
                             "forward (pycaffe: net.set_input_arrays(data, labels))")
        start = (self.pos + self.rank * b) % self.data.shape[0]
        out = [self.data[start : start + b], self.labels[start : start + b]]
        self.pos = (self.pos + self.world * b) % self.data.shape[0]
        return out

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        return [Example('name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param { '
                        'batch_size: 2 channels: 3 height: 4 width: 5 }', [], grad_bottoms=(), grad_params=False,
                        prepare=lambda layer: layer.reset(np.ones((4, 3, 4, 5), np.float32), np.arange(4.0)))]


__all__ = ["DATA_ERRORS", "DataLayer", "ImageDataLayer", "MemoryDataLayer", "TransformingLayer", "data_seed"]
