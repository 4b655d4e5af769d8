"""C3D-v1.0's ``VolumeData`` layer: ``VolumeDatum`` records from a database, as 5-D blobs for Convolution3D.

Lineage: facebookarchive/C3D @ 71336a2 (``C3D-v1.0``), ``src/caffe/layers/volume_data_layer.cpp`` (its ``.cu``
copies the same prefetched batch); its V1 type ``VOLUME_DATA`` upgrades to ``VolumeData``
(``neocaffe/io/legacy_types.py``). A ``VolumeDatum`` is channels x length x height x width, as uint8 ``data`` or
``float_data``, with a ``label``.

Fields read (``data_param``): ``source``, ``batch_size``, ``rand_skip`` (records skipped at setup: a draw below
it, wrapping), ``scale``, ``mean_file`` (the fork's 5-D BlobProto of shape 1 x C x L x H x W, the records'
uncropped size), ``crop_size``, ``mirror`` (only with ``crop_size``, the fork's FATAL), ``show_data`` (an
OpenCV window per channel in the fork; not shown). Records are read in key order from the first (after the
skip), wrapping at the end; the first record gives the top shapes. Each value is ``(x - mean) * scale`` in
float32, ``x`` the record's byte, or its ``float_data`` where ``data`` is empty, the mean taken at the same
element of the uncropped record. Crops: TRAIN ``h_off = rand % (H - crop)``, ``w_off = rand % (W - crop)`` (the
fork's draws: never the last offset), TEST the centre; ``mirror`` flips a crop left-right with probability 1/2
(value and mean alike). Tops: data ``(batch_size, C, L, crop, crop)`` (or H x W without a crop) and, optionally,
the labels ``(batch_size, 1, 1, 1, 1)``.

The draws come from a generator seeded with (seed, batch) in the fork's order (h_off, w_off, mirror) per
record, so a batch depends on its number alone and any number of workers gives the same batches; the fork's
boost draws cannot be reproduced. The fork opens a LevelDB; ``backend`` is honoured here (LMDB too), and
when it is unset the database's files tell which (a LevelDB where they do not).

Where the fork aborts or reads past its buffers, an error here: ``mirror`` in the TEST phase (its prefetch
has no random generator there and aborts), ``crop_size`` not below the height or width (its CHECK_GT), a crop
of a ``float_data`` record (its CHECK: cropping only supports uint8 data), a mean of another shape, and a
record whose dims or payload size differ from the first record's (the fork reads every record in the first
one's layout, past its end when it is shorter). ``transform_param`` is not read by the fork's layer and is an
error here.
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
from neocaffe.data.datum import DatumError, parse_record
from neocaffe.data.prefetch import default_workers
from neocaffe.data.shard import global_batch
from neocaffe.data.sources import DBReader, DBRecords, detect_backend
from neocaffe.layers.base import TEST, TRAIN, Example, Shape
from neocaffe.layers.c3d_video_data import c3d_mean, mean_crops
from neocaffe.layers.prefetched import DATA_ERRORS, PrefetchedLayer, data_seed
from neocaffe.layers.registry import register_layer
from neocaffe.proto import caffe_pb2

log = logging.getLogger("neocaffe.data")
Dims = tuple[int, int, int, int]


def volume_array(key: bytes, value: bytes, where: str, dims: Dims | None = None) -> tuple[np.ndarray, int]:
    """A record's VolumeDatum as a C x L x H x W array (uint8 from ``data``, float32 from ``float_data``) and its
    label. ``dims``: the first record's (C, L, H, W), which this one must have."""
    name = f"{where}: record '{key.decode('utf-8', 'replace')}'"
    d = parse_record(value, caffe_pb2.VolumeDatum(), name)
    shape = (int(d.channels), int(d.length), int(d.height), int(d.width))
    if min(shape) <= 0:
        raise DatumError(f"{name}: a VolumeDatum of channels x length x height x width {'x'.join(map(str, shape))}; "
                         f"expected positive dims (is it a Datum?)")
    if dims is not None and shape != dims:
        raise DatumError(f"{name}: a VolumeDatum of {'x'.join(map(str, shape))}, the first record's "
                         f"{'x'.join(map(str, dims))}; every record must have one size")
    size = math.prod(shape)
    if d.data:
        if len(d.data) != size:
            raise DatumError(f"{name}: data holds {len(d.data)} bytes; its dims {'x'.join(map(str, shape))} need {size}")
        return np.frombuffer(d.data, np.uint8).reshape(shape), int(d.label)
    if len(d.float_data) != size:
        raise DatumError(f"{name}: float_data holds {len(d.float_data)} values (and data none); its dims "
                         f"{'x'.join(map(str, shape))} need {size}")
    return np.asarray(d.float_data, np.float32).reshape(shape), int(d.label)


class VolumeBatchMaker(DBRecords):
    """Batch ``k``: records ``start + k B + i`` in key order (wrapping), cropped and mirrored on the host."""

    alloc: Any = None  # the prefetcher's shared buffers

    def __init__(self, path: str, backend: str, batch_size: int, dims: Dims, crop: int, mirror: bool, train: bool,
                 seed: int, start: int = 0, where: str = "", rank: int = 0, world: int = 1) -> None:
        self.path, self.backend, self.batch_size, self.dims = path, backend, int(batch_size), tuple(dims)
        self.crop, self.mirror, self.train, self.seed, self.start = int(crop), bool(mirror), bool(train), int(seed), int(start)
        self.where, self.rank, self.world = where or path, int(rank), int(world)
        self.reader: DBReader | None = None
        self.pos = 0

    def make(self, k: int) -> dict[str, Any]:
        k = global_batch(k, self.rank, self.world)
        target = k * self.batch_size
        self.seek(target)
        assert self.reader is not None
        g = np.random.default_rng([self.seed, k])
        C, L, H, W = self.dims
        c = self.crop
        B = self.batch_size
        items, labels = [], np.zeros(B, np.float32)
        offsets, mirror = np.zeros((B, 2), np.int64), np.zeros(B, bool)
        for i in range(B):
            key, value = self.reader.next()
            arr, labels[i] = volume_array(key, value, self.where, self.dims)  # type: ignore[call-overload]
            if c:
                if arr.dtype != np.uint8:
                    raise DatumError(f"{self.where}: record '{key.decode('utf-8', 'replace')}' holds float_data; "
                                     f"crop_size needs uint8 data (the fork: Image cropping only support uint8 data)")
                h0, w0 = ((int(g.integers(0, H - c)), int(g.integers(0, W - c))) if self.train
                          else ((H - c) // 2, (W - c) // 2))
                arr = arr[..., h0:h0 + c, w0:w0 + c]
                if self.mirror and g.integers(0, 2):
                    arr, mirror[i] = arr[..., ::-1], True
                offsets[i] = h0, w0
            items.append(arr)
        self.pos = target + B
        dtype = np.uint8 if all(a.dtype == np.uint8 for a in items) else np.float32
        shape = (B, C, L) + ((c, c) if c else (H, W))
        data = self.alloc(shape, dtype) if self.alloc is not None else np.empty(shape, dtype)
        for i, a in enumerate(items):
            data[i] = a
        return {"data": data, "offsets": offsets, "mirror": mirror, "label": labels}


@register_layer("VolumeData")
class VolumeDataLayer(PrefetchedLayer):
    """C3D-v1.0's VolumeDataLayer (see the module docstring)."""

    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes: list[Shape]) -> None:
        dp = self.param.data_param
        if self.param.HasField("transform_param"):
            raise self.error("transform_param is not read by C3D-v1.0's VolumeData; set data_param's scale, "
                             "mean_file, crop_size and mirror")
        if not dp.source:
            raise self.error("data_param.source is empty; expected the path of a LevelDB (or LMDB) of VolumeDatums")
        if dp.batch_size <= 0:
            raise self.error(f"data_param.batch_size must be positive; received {dp.batch_size}")
        if dp.mirror and not dp.crop_size:
            raise self.error("Current implementation requires mirror and crop_size to be set at the same time.")
        if dp.mirror and self.phase != TRAIN:
            raise self.error("data_param.mirror in the TEST phase: C3D-v1.0's prefetch has no random generator "
                             "there and aborts; set mirror: false")
        if dp.show_data:
            log.info("layer '%s': data_param.show_data is not shown (the fork opens an OpenCV window)", self.name)
        if dp.HasField("backend"):
            self.backend = "lmdb" if dp.backend == caffe_pb2.DataParameter.LMDB else "leveldb"
        else:
            self.backend = detect_backend(dp.source) or "leveldb"
        self.source, self.where = os.path.abspath(dp.source), f"data_param.source '{dp.source}'"
        self.skip = int(rng.numpy_rng().integers(0, dp.rand_skip)) if dp.rand_skip else 0
        if self.skip:
            log.info("Skipping first %d data points.", self.skip)
        try:
            with DBReader(self.source, self.backend, self.where) as reader:
                self.n_records = reader.count() if self.backend == "lmdb" else None
                reader.skip(self.skip)
                arr, _ = volume_array(*reader.peek(), self.where)
        except DATA_ERRORS as e:
            raise self.error(str(e)) from None
        self.dims: Dims = tuple(int(d) for d in arr.shape)  # type: ignore[assignment]
        C, L, H, W = self.dims
        self.crop = int(dp.crop_size)
        if not (H > self.crop and W > self.crop):
            raise self.error(f"crop_size {self.crop} must be smaller than the records' {H}x{W} (the fork's CHECK_GT)")
        self.batch_size, self.seed, self.scale = int(dp.batch_size), data_seed(), float(dp.scale)
        self.register_buffer("mean", self._mean(dp), persistent=False)
        h, w = (self.crop, self.crop) if self.crop else (H, W)
        self._top_shapes: list[Shape] = [(self.batch_size, C, L, h, w), (self.batch_size, 1, 1, 1, 1)]
        self._top_shapes = self._top_shapes[: len(self.param.top)]
        log.info("output data size: %s", ",".join(str(d) for d in self._top_shapes[0]))

    def _mean(self, dp: Any) -> Tensor:
        """The mean as the fork's data_mean_ (1 x C x L x H x W); empty for none (the fork's zeros)."""
        if not dp.HasField("mean_file"):
            return torch.zeros(0)
        return c3d_mean(self, dp.mean_file, (1,) + self.dims, "the records",
                        "num 1, then the records' channels, length, height and width")

    def _maker(self) -> VolumeBatchMaker:
        return VolumeBatchMaker(self.source, self.backend, self.batch_size, self.dims, self.crop,
                                bool(self.param.data_param.mirror), self.phase == TRAIN, self.seed, start=self.skip,
                                where=self.where, rank=self.context.rank, world=self.context.world)

    def _workers_and_depth(self) -> tuple[int, int]:
        depth = int(self.param.data_param.prefetch)
        if self.backend == "leveldb":  # one process may hold a LevelDB open: read it in process
            return 0, depth
        n = None if self.n_records is None else math.ceil(self.n_records / self.batch_size)
        return default_workers(n, self.context.data_workers), depth

    def _means(self, offsets: np.ndarray, mirror: np.ndarray, device: torch.device) -> Tensor | float:
        """The mean under each record (0 without a mean file)."""
        return 0.0 if self.mean.numel() == 0 else mean_crops(self.mean.to(device), self.crop, offsets, mirror)

    def forward(self) -> list[Tensor]:  # type: ignore[override]
        batch, get, x = self._next_batch()
        mean = self._means(np.asarray(get("offsets")), np.asarray(get("mirror")), x.device)
        data = (x.to(torch.float32) - mean) * self.scale
        label = torch.as_tensor(np.asarray(get("label"), np.float32)).reshape(-1, 1, 1, 1, 1)
        self._release(batch)  # the host buffers are consumed
        return [data, label][: len(self.param.top)]

    @classmethod
    def examples(cls) -> list[Example]:  # noqa: D102
        lmdb_path, leveldb_path, mean = volume_example()
        return [
            Example(f'name: "v" type: "VolumeData" top: "data" top: "label" data_param {{ source: "{lmdb_path}" '
                    f'backend: LMDB batch_size: 2 crop_size: 3 mirror: true mean_file: "{mean}" scale: 0.5 }}', [],
                    grad_bottoms=(), grad_params=False, phase=TRAIN),
            Example(f'name: "v" type: "VolumeData" top: "data" data_param {{ source: "{leveldb_path}" batch_size: 3 '
                    f'scale: 2 }}', [], grad_bottoms=(), grad_params=False, phase=TEST),
        ]


def volume_example() -> tuple[str, str, str]:
    """VolumeData's examples (written once, in the data examples' folder): an LMDB of five uint8 VolumeDatums
    (2 x 3 x 5 x 6), a LevelDB of four float_data ones (1 x 2 x 3 x 4) and a C3D mean of 1 x 2 x 3 x 5 x 6."""
    from neocaffe.data.db_writer import DBWriter
    from neocaffe.data.examples import example_folder
    from neocaffe.io.binaryproto import write_blobproto

    folder = os.path.join(example_folder(), "c3d_volumes")
    paths = tuple(os.path.join(folder, n) for n in ("lmdb", "leveldb", "mean.binaryproto"))
    if not os.path.exists(paths[2]):
        os.makedirs(folder, exist_ok=True)
        g = np.random.default_rng(7)
        with DBWriter(paths[0], "lmdb") as db:
            for i in range(5):
                d = caffe_pb2.VolumeDatum(channels=2, length=3, height=5, width=6, label=i,
                                          data=g.integers(0, 256, (2, 3, 5, 6), dtype=np.uint8).tobytes())
                db.put(f"{i:08d}", d.SerializeToString())
        with DBWriter(paths[1], "leveldb") as db:
            for i in range(4):
                d = caffe_pb2.VolumeDatum(channels=1, length=2, height=3, width=4, label=10 + i,
                                          float_data=g.standard_normal(24).astype(np.float32).tolist())
                db.put(f"{i:08d}", d.SerializeToString())
        write_blobproto(paths[2], g.uniform(80, 140, (1, 2, 3, 5, 6)).astype(np.float32), legacy=True)
    return paths  # type: ignore[return-value]


__all__ = ["VolumeBatchMaker", "VolumeDataLayer", "volume_array", "volume_example"]
