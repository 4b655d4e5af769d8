"""Batch makers for the prefetcher (Caffe databases of Datums, image list files), and HDF5 batches.

Batch ``k`` is a pure function of ``k`` (plus the seed drawn at layer setup): items
``(start + k * batch_size + i)`` in source order, wrapping at the end, and random crops/mirrors from a
generator seeded with ``(seed, k)``. So any number of workers yields the same batches in the same
order, and a seeded run repeats. Data-parallel (``rank`` of ``world`` processes, ``neocaffe.data.shard``):
batch ``k`` of this process is batch ``k * world + rank`` of the one-process stream.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Sequence

import numpy as np

from neocaffe.data.datum import DatumError, DecodedDatum, decode_datum, hwc_to_chw, read_image
from neocaffe.data.shard import global_batch
from neocaffe.data.sources import DataSourceError, DBReader, DBRecords, ListEntry, load_hdf5
from neocaffe.data.transformer import DataTransformer, HostBatch

__all__ = ["DBBatchMaker", "ImageListBatchMaker", "HDF5Batches", "ListBatchMaker", "ListPasses", "decode_record"]

log = logging.getLogger("neocaffe.data")


def _rng(transformer: DataTransformer, seed: int, k: int) -> np.random.Generator | None:
    return np.random.default_rng([seed, k]) if transformer.needs_rand else None


def decode_record(key: bytes, value: bytes, where: str, force_color: bool = False,
                  force_gray: bool = False) -> tuple[DecodedDatum, str]:
    """A database record's decoded datum and its name in errors (``<where>: record '<key>'``)."""
    name = f"{where}: record '{key.decode('utf-8', 'replace')}'"
    return decode_datum(value, force_color=force_color, force_gray=force_gray, where=name), name


class ListPasses:
    """Which entry of an ``n``-entry list is read ``t``-th, counting from the start of the first pass:
    list order, or with ``shuffle`` a new permutation every pass (Caffe's ImageDataLayer reshuffles at
    every wrap) drawn from ``(seed, 1, pass)``, so a batch's entries depend on its number alone. The
    orders of the last five passes are kept. ``first_in_order``: the first pass (pass 0) reads in list
    order and only later passes are permuted (NVCaffe's cached Data reader)."""

    def __init__(self, n: int, seed: int, shuffle: bool, first_in_order: bool = False) -> None:
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.first_in_order = bool(first_in_order)
        self._orders: dict[int, np.ndarray] = {}

    def index(self, t: int) -> int:
        epoch, pos = divmod(int(t), self.n)
        if not self.shuffle or (epoch == 0 and self.first_in_order):
            return pos
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, 1, epoch]).permutation(self.n)
        return int(self._orders[epoch][pos])


class _Shared:
    """The prefetcher sets ``alloc`` (its reusable shared buffers) in its worker processes."""

    alloc: Any = None


class _KeyIndex:
    """A database's keys in key order, held compactly (one bytes buffer and an offset array, not a
    Python object per key: ImageNet's 1.28M keys take tens of MB), for keyed access by position."""

    def __init__(self, keys: Any) -> None:
        parts = list(keys)
        self.blob = b"".join(parts)
        self.ends = np.cumsum([len(p) for p in parts], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> bytes:
        end = int(self.ends[i])
        return self.blob[(int(self.ends[i - 1]) if i else 0):end]


class DBBatchMaker(_Shared, DBRecords):
    """Batches of ``batch_size`` Datums read in key order from an LMDB/LevelDB (wrapping at the end),
    decoded (encoded images through OpenCV) and cropped on the host.

    ``shuffle`` (NVCaffe's ``data_param { cache: true shuffle: true }`` in TRAIN): the first pass reads
    in key order, every later pass in its own permutation of all ``n`` records. The record read
    ``t``-th (``t = start mod n + k * batch_size + i``, batches running on across pass ends as NVCaffe's
    reader does) is record ``t mod n`` in pass ``t // n`` (:class:`ListPasses`, drawn from
    ``(seed, 1, pass)``), so batch ``k`` stays a pure function of ``(seed, start, k)``. Later passes read
    by key: the key list is walked once per reading process, when a later pass is first reached (LMDB
    and LevelDB alike; no values are held, unlike NVCaffe's cache of every record in memory)."""

    def __init__(
        self, path: str, backend: str, batch_size: int, transformer: DataTransformer, seed: int,
        start: int = 0, where: str = "", force_color: bool = False, rank: int = 0, world: int = 1,
        shuffle: bool = False, flow: bool = False,
    ) -> None:
        self.path, self.backend, self.batch_size = path, backend, int(batch_size)
        self.rank, self.world = int(rank), int(world)
        self.transformer, self.seed, self.start = transformer, int(seed), int(start)
        self.where = where or path
        self.force_color = force_color or transformer.force_color
        self.reader: DBReader | None = None
        self.pos = 0
        self.shuffle = bool(shuffle)
        self._n: int | None = None  # shuffle: the record count and the key list, per reading process
        self._keys: _KeyIndex | None = None
        self._passes: ListPasses | None = None
        self.flow = bool(flow)  # LRCN's transform_param.flow, on raw (unencoded) Datums only (crop_batch)

    def __getstate__(self) -> dict:
        """Pickled to a spawned worker without the key list (it builds its own when it needs it)."""
        state = dict(self.__dict__)
        state["_keys"] = None
        return state

    def decode(self, key: bytes, value: bytes) -> tuple[DecodedDatum, str]:
        return decode_record(key, value, self.where, self.force_color, self.transformer.force_gray)

    def make(self, k: int) -> HostBatch:
        k = global_batch(k, self.rank, self.world)
        records = self._shuffled(k) if self.shuffle else self._sequential(k)
        arrays, labels, names, raw = [], [], [], []
        rng, pixels = _rng(self.transformer, self.seed, k), self.transformer.pixels
        for key, value in records:
            d, name = self.decode(key, value)
            arrays.append(pixels(d.array, rng) if pixels is not None and d.encoded else d.array)  # as SSD's
            labels.append(d.label)
            names.append(name)
            raw.append(not d.encoded)
        return self.transformer.crop_batch(arrays, labels, rng, names, alloc=self.alloc,
                                           flow=raw if self.flow else None)

    def _sequential(self, k: int) -> Iterator[tuple[bytes, bytes]]:
        """The records of (one-process) batch ``k`` in key order, read one by one as they are decoded."""
        target = k * self.batch_size
        reader = self.seek(target)
        for _ in range(self.batch_size):
            yield reader.next()
        self.pos = target + self.batch_size

    def _shuffled(self, k: int) -> list[tuple[bytes, bytes]]:
        """The records of (one-process) batch ``k`` with NVCaffe's cached shuffle: the first pass
        sequentially from the cursor, later passes by key."""
        if self.reader is None:
            self.open()
        assert self.reader is not None
        if self._n is None:
            self._n = self.reader.count()
            self._passes = ListPasses(self._n, self.seed, True, first_in_order=True)
        n, passes = self._n, self._passes
        assert passes is not None
        first = self.start % n + k * self.batch_size
        out = []
        for t in range(first, first + self.batch_size):
            epoch, pos = divmod(t, n)
            if epoch == 0:  # database order: the cursor, as without shuffle (offsets counted from start)
                self.seek(t - self.start % n)
                out.append(self.reader.next())
                self.pos = t - self.start % n + 1
                continue
            if pos == 0:
                log.info("Shuffling %d records...", n)
            if self._keys is None:
                self._keys = _KeyIndex(self.reader.keys())
                if len(self._keys) != n:
                    raise DataSourceError(f"{self.where}: database '{self.path}' holds {len(self._keys)} records; "
                                          f"it held {n} when reading started (changed while it was read?)")
            out.append(self.reader.get(self._keys[passes.index(t)]))
        return out


class ListBatchMaker(_Shared):
    """What the list-file batch makers share: the entries, their order per pass (``ListPasses``), the
    data-parallel batch numbering (``neocaffe.data.shard``) and the folder relative paths resolve from
    (the working directory at setup, as Caffe's). Subclasses load an entry and make a batch."""

    def __init__(self, list_file: str, entries: Sequence[Any], root: str, batch_size: int,
                 transformer: DataTransformer, seed: int, shuffle: bool = False, skip: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        self.list_file, self.entries, self.root = list_file, list(entries), root
        self.batch_size, self.transformer, self.seed = int(batch_size), transformer, int(seed)
        self.shuffle, self.skip, self.rank, self.world = bool(shuffle), int(skip), int(rank), int(world)
        self.passes = ListPasses(len(self.entries), self.seed, self.shuffle)
        self.cwd = os.getcwd()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def entry(self, t: int) -> Any:
        """The entry read ``t``-th (counting from the start of the first pass, skip included)."""
        return self.entries[self.passes.index(t)]

    def batch_entries(self, k: int) -> tuple[int, list[Any]]:
        """Batch ``k`` of this process: its number in the one-process stream (what seeds its draws)
        and its entries, logging Caffe's restart line where the walk wraps."""
        k = global_batch(k, self.rank, self.world)
        out = []
        for i in range(self.batch_size):
            t = self.skip + k * self.batch_size + i
            if t and t % len(self.entries) == 0:
                log.info("Restarting data prefetching from start.")
            out.append(self.entry(t))
        return k, out

    def read(self, e: Any, name: str, what: str = "image", **how: Any) -> np.ndarray:
        """Image ``root + name`` of entry ``e`` (listed at line ``e.line``) as C x H x W uint8 (``how``:
        ``read_image``'s size and colour); an unreadable one is a DatumError naming the list line."""
        shown = self.root + name
        path = os.path.join(self.cwd, shown)
        img = read_image(path, **how)
        if img is None:
            why = "no such file" if not os.path.exists(path) else "OpenCV cannot decode it"
            raise DatumError(f"{self.list_file}:{e.line}: could not load {what} '{shown}' ({why})")
        return hwc_to_chw(img)


class ImageListBatchMaker(ListBatchMaker):
    """Batches from an image list (``image_data_param``): ``cv2.imread`` + resize, optional shuffle
    of the list at setup and at every wrap, a random start (``rand_skip``). ``min_size``: LRCN's and Intel
    Caffe's ``(min_height, min_width)``, upscaling smaller images where no ``new_height``/``new_width`` is set
    (:func:`neocaffe.data.datum.min_size`)."""

    def __init__(
        self, list_file: str, entries: Sequence[ListEntry], root: str, new_height: int, new_width: int,
        is_color: bool, batch_size: int, transformer: DataTransformer, seed: int, shuffle: bool = False,
        skip: int = 0, rank: int = 0, world: int = 1, short_side: int = 0, min_size: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__(list_file, entries, root, batch_size, transformer, seed, shuffle, skip, rank, world)
        self.new_height, self.new_width, self.is_color = int(new_height), int(new_width), bool(is_color)
        self.short_side = int(short_side)  # NVCaffe's; ahead of new_height/new_width (datum.read_image)
        self.min_size = (int(min_size[0]), int(min_size[1]))

    def load(self, e: ListEntry) -> np.ndarray:
        if self.short_side > 0:
            return self.read(e, e.path, is_color=self.is_color, short_side=self.short_side)
        return self.read(e, e.path, height=self.new_height, width=self.new_width, is_color=self.is_color,
                         min_height=self.min_size[0], min_width=self.min_size[1])

    def make(self, k: int) -> HostBatch:
        k, entries = self.batch_entries(k)
        rng, pixels = _rng(self.transformer, self.seed, k), self.transformer.pixels
        arrays = [self.load(e) for e in entries]
        if pixels is not None:  # SSD's resize_param / noise_param
            arrays = [pixels(a, rng) for a in arrays]
        names = [f"{self.list_file}:{e.line} ('{self.root + e.path}')" for e in entries]
        return self.transformer.crop_batch(arrays, [e.label for e in entries], rng, names, alloc=self.alloc)


class HDF5Batches:
    """Caffe's HDF5DataLayer walk: datasets ``names`` (one per top) of the listed files, rows in
    order (``shuffle``: files and rows permuted, again at every wrap), continuing into the next file
    inside one batch and wrapping to the first file. ``files``: (path, 'list:line', path as listed).
    ``rank``/``world``: this process's batch is rows ``rank*B .. (rank+1)*B`` of each ``world*B`` rows
    of that walk (the other processes' rows are walked over, not copied)."""

    def __init__(self, files: Sequence[tuple[str, str, str]], names: Sequence[str], batch_size: int,
                 shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.files, self.names, self.batch_size, self.shuffle = list(files), list(names), int(batch_size), shuffle
        self.rank, self.world = int(rank), int(world)
        self.rng = np.random.default_rng(seed)
        self.file_order = self.rng.permutation(len(self.files)) if shuffle else np.arange(len(self.files))
        self.current_file = 0
        self._load(int(self.file_order[0]))
        self.shapes = [(self.batch_size, *a.shape[1:]) for a in self.arrays]

    def _read(self, idx: int) -> None:
        path, where, shown = self.files[idx]
        try:
            self.arrays = load_hdf5(path, self.names, where)
        except DataSourceError as e:
            # the file as the list writes it, only where quoted: a bare replace also rewrote the list's
            # own path when the absolute name is a prefix of it (an entry naming a parent folder)
            raise DataSourceError(str(e).replace(f"'{path}'", f"'{shown}'")) from None

    def _load(self, idx: int) -> None:
        self._read(idx)
        n = self.arrays[0].shape[0]
        self.rows = self.rng.permutation(n) if self.shuffle else np.arange(n)
        self.current_row = 0

    def state(self) -> dict:
        """The walk's position: file order, current file, row order, current row, shuffle generator."""
        return {"files": [f[2] for f in self.files], "file_order": [int(i) for i in self.file_order],
                "current_file": int(self.current_file), "rows": [int(i) for i in self.rows],
                "current_row": int(self.current_row), "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        """Continue the walk from ``state()``'s result. ValueError (nothing changed) when it was taken
        over another file list or the current file's row count differs."""
        if list(state["files"]) != [f[2] for f in self.files]:
            raise ValueError("the snapshot's HDF5 position is for another list of files")
        order = np.asarray(state["file_order"], dtype=np.int64)
        arrays = self.arrays
        self._read(int(order[int(state["current_file"])]))
        n = self.arrays[0].shape[0]
        if n != len(state["rows"]):
            self.arrays = arrays
            raise ValueError(f"the snapshot's HDF5 position is for a file of {len(state['rows'])} rows; it now has {n}")
        self.file_order, self.current_file = order, int(state["current_file"])
        self.rows, self.current_row = np.asarray(state["rows"], dtype=np.int64), int(state["current_row"])
        self.rng.bit_generator.state = state["rng"]

    def next(self) -> list[np.ndarray]:
        """The next batch: one float32 array per dataset."""
        outs = [np.empty(s, np.float32) for s in self.shapes]
        self._walk(self.rank * self.batch_size, None)
        self._walk(self.batch_size, outs)
        self._walk((self.world - 1 - self.rank) * self.batch_size, None)
        return outs

    def _walk(self, count: int, outs: list[np.ndarray] | None) -> None:
        """Advance ``count`` rows, copying them into ``outs`` (None: skip them)."""
        filled = 0
        while filled < count:
            if self.current_row == len(self.rows):
                if len(self.files) > 1:
                    self.current_file += 1
                    if self.current_file == len(self.files):
                        self.current_file = 0
                        if self.shuffle:
                            self.rng.shuffle(self.file_order)
                        log.debug("Looping around to first file.")
                    self._load(int(self.file_order[self.current_file]))
                else:
                    self.current_row = 0
                    if self.shuffle:
                        self.rng.shuffle(self.rows)
            take = min(count - filled, len(self.rows) - self.current_row)
            idx = self.rows[self.current_row : self.current_row + take]
            for out, arr, name in zip(outs or [], self.arrays, self.names):
                if arr.shape[1:] != out.shape[1:]:
                    shown = self.files[int(self.file_order[self.current_file])][2]
                    raise DataSourceError(
                        f"'{shown}' dataset '{name}' rows are {arr.shape[1:]} but the first file's are {out.shape[1:]}"
                    )
                out[filled : filled + take] = arr[idx]
            filled += take
            self.current_row += take
