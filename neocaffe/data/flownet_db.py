"""FlowNet 2.0's image-pair databases: the records ``convert_imageset_and_flow`` writes and ``CustomData``
reads, the order it reads them in, and a writer for such databases.

lmb-freiburg/flownet2 @ b92e198b: ``tools/convert_imageset_and_flow.cpp`` (records) and
``src/caffe/layers/custom_data_layer.cpp`` (``DecodeData``, ``generateRandomPermutation``, the prefetch's
key lookup). A record is a Datum under the key ``"%08d_<flow file>"`` with ``channels`` the total channel
count and ``data`` the slices' bytes one after another, per ``data_param.encoding``: UINT8 (one byte per
value), UINT16FLOW (little-endian int16 per value, value * 32, 32767 for NaN; written by truncation toward
zero) or BOOL1 (a one-channel mask, bit ``k`` of byte ``i`` is pixel ``8 i + k``). A Datum with
``float_data`` is read as floats (no encoding allowed). ``CustomData`` finds item ``i`` as the first key
at or after ``"%08d" % i`` (LMDB's MDB_SET_RANGE).

Its orders come from C's ``rand()``: ``srand(rand_permute_seed)`` then libstdc++'s ``std::random_shuffle``
(``rand() % (i + 1)`` swaps); :class:`GlibcRand` reproduces glibc's generator, so a nonzero seed gives the
fork's permutation exactly. With ``block_size`` each block is shuffled without its last element, as the
fork's ``end - 1`` does.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from neocaffe.data.prefetch import register_error
from neocaffe.data.sources import DataSourceError

UINT8, UINT16FLOW, BOOL1 = 1, 2, 3  # DataParameter.CHANNELENCODING
ENCODINGS = {UINT8: "UINT8", UINT16FLOW: "UINT16FLOW", BOOL1: "BOOL1"}


@register_error
class FlowDBError(DataSourceError):
    """A CustomData record or configuration that cannot be read."""


class GlibcRand:
    """glibc's ``srand``/``rand`` (the TYPE_3 additive feedback generator, 31 words, offset 3)."""

    def __init__(self, seed: int) -> None:
        seed = int(seed) & 0xFFFFFFFF
        seed = 1 if seed == 0 else seed
        r = [seed - 2**32 if seed >= 2**31 else seed]
        for i in range(1, 31):
            hi, lo = int(r[i - 1] / 127773), r[i - 1] - int(r[i - 1] / 127773) * 127773
            word = 16807 * lo - 2836 * hi
            r.append(word + 2147483647 if word < 0 else word)
        self.state = [v & 0xFFFFFFFF for v in r]
        self.f, self.r = 3, 0
        for _ in range(310):
            self.rand()

    def rand(self) -> int:
        s = self.state
        s[self.f] = (s[self.f] + s[self.r]) & 0xFFFFFFFF
        out = s[self.f] >> 1
        self.f, self.r = (self.f + 1) % 31, (self.r + 1) % 31
        return out


def random_shuffle(seq: list, lo: int, hi: int, rand: GlibcRand) -> None:
    """libstdc++'s ``std::random_shuffle(seq + lo, seq + hi)`` in place."""
    for i in range(lo + 1, hi):
        j = lo + rand.rand() % (i - lo + 1)
        if i != j:
            seq[i], seq[j] = seq[j], seq[i]


def permute(seq: list, block_size: int, rand: GlibcRand) -> None:
    """``generateRandomPermutation`` (without the reseed): whole, or block by block without each block's
    last element."""
    if block_size > 0:
        for b in range((len(seq) + block_size - 1) // block_size):
            random_shuffle(seq, b * block_size, min((b + 1) * block_size, len(seq)) - 1, rand)
    else:
        random_shuffle(seq, 0, len(seq), rand)


class ReadOrder:
    """Which database index CustomData reads ``t``-th (counting from its first item), for ``entries``
    records: optional preselection (``labels`` and ``label``), ``range_start``/``range_end`` (clamped as the
    fork clamps them), ``rand_permute`` with ``seed`` before or after the range cut (``range_first``), and a
    re-permutation every ``every`` batches of ``batch_size`` (``permute_every_iter``), which continues the
    same ``rand()`` stream."""

    def __init__(self, entries: int, batch_size: int, *, labels: Sequence[int] | None = None, label: int = 0,
                 range_start: int = 0, range_end: int = -1, rand_permute: bool = False, seed: int = 1,
                 range_first: bool = False, block_size: int = 0, every: int = 0) -> None:
        base = list(range(entries)) if labels is None else [i for i, v in enumerate(labels) if v == label]
        if not base:
            raise FlowDBError("no records are selected (preselection_label matches none, or the database is empty)")
        start = min(max(range_start, 0), len(base) - 1)
        end = len(base) - 1 if range_end < 0 or range_end >= len(base) else range_end
        if end < start:
            raise FlowDBError(f"range_end {range_end} is before range_start {range_start}")
        self.batch_size, self.block_size, self.seed = int(batch_size), int(block_size), int(seed)
        self.every = int(every) if rand_permute else 0
        rand = GlibcRand(seed)
        if rand_permute and not range_first:
            permute(base, block_size, rand)
        base = base[start:end + 1]
        if rand_permute and range_first:
            permute(base, block_size, rand)
        self.size = len(base)
        self._first = (list(base), rand.state[:], rand.f, rand.r)
        self._cache = (0, list(base), rand)

    def order(self, epoch: int) -> list[int]:
        """The permutation in force after ``epoch`` re-permutations."""
        at, seq, rand = self._cache
        if epoch < at:
            seq0, state, f, r = self._first
            rand = GlibcRand(1)
            rand.state, rand.f, rand.r = state[:], f, r
            at, seq = 0, list(seq0)
        while at < epoch:
            seq = list(seq)
            permute(seq, self.block_size, rand)
            at += 1
        self._cache = (at, seq, rand)
        return seq

    def batch(self, k: int) -> list[int]:
        """The database indices of batch ``k`` (batch ``k`` is made after ``k`` forwards)."""
        seq = self.order(k // self.every if self.every else 0)
        return [seq[(k * self.batch_size + i) % self.size] for i in range(self.batch_size)]


def decode(channels: int, height: int, width: int, data: bytes, float_data: Sequence[float],
           slice_points: Sequence[int], encodings: Sequence[int], where: str = "record") -> np.ndarray:
    """``DecodeData``: the record's values as float32 (channels, height, width)."""
    hw = height * width
    if len(float_data):
        if len(encodings):
            raise FlowDBError(f"{where}: holds float_data but data_param.encoding is set; encoded slices must be "
                              "stored as bytes")
        if len(float_data) < channels * hw:
            raise FlowDBError(f"{where}: holds {len(float_data)} float_data values; expected {channels * hw}")
        return np.asarray(float_data, dtype=np.float32)[: channels * hw].reshape(channels, height, width)
    buf = memoryview(data)
    out, pos = [], 0
    bounds = [0, *slice_points, channels]
    for s in range(len(bounds) - 1):
        n = bounds[s + 1] - bounds[s]
        enc = encodings[s] if s < len(encodings) else UINT8
        size = {UINT8: n * hw, UINT16FLOW: 2 * n * hw, BOOL1: (hw - 1) // 8 + 1}.get(enc)
        if size is None:
            raise FlowDBError(f"{where}: slice {s} has encoding {enc}; expected one of {sorted(ENCODINGS.values())}")
        if enc == BOOL1 and n != 1:
            raise FlowDBError(f"{where}: slice {s} is BOOL1 with {n} channels; BOOL1 holds one channel")
        if pos + size > len(buf):
            raise FlowDBError(f"{where}: data holds {len(buf)} bytes; its slices need at least {pos + size}")
        raw = np.frombuffer(buf[pos:pos + size], dtype=np.uint8)
        pos += size
        if enc == UINT8:
            out.append(raw.astype(np.float32).reshape(n, height, width))
        elif enc == UINT16FLOW:
            v = raw.view("<i2").astype(np.float32)
            out.append(np.where(v == 32767, np.float32(np.nan), v / np.float32(32.0)).reshape(n, height, width))
        else:
            bits = np.unpackbits(raw, bitorder="little")[:hw]
            out.append(bits.astype(np.float32).reshape(1, height, width))
    return np.concatenate(out, axis=0)


def encode_pair(img1: np.ndarray, img2: np.ndarray, flow: np.ndarray | None = None,
                occ: np.ndarray | None = None) -> bytes:
    """``convert_imageset_and_flow``'s ``data`` bytes: two (3, H, W) uint8 images (OpenCV's BGR order),
    the flow (2, H, W) as UINT16FLOW (zeros when None) and the occlusion mask as BOOL1 (zeros when None)."""
    h, w = img1.shape[1:]
    parts = [np.asarray(img1, np.uint8).tobytes(), np.asarray(img2, np.uint8).tobytes()]
    if flow is None:
        q = np.zeros(2 * h * w, dtype="<i2")
    else:
        f = np.asarray(flow, np.float32).reshape(-1)
        with np.errstate(invalid="ignore"):
            q = np.where(np.isnan(f), 32767, np.trunc(f * np.float32(32))).astype("<i2")
    parts.append(q.tobytes())
    mask = np.zeros(h * w, np.uint8) if occ is None else (np.asarray(occ).reshape(-1) > 0).astype(np.uint8)
    parts.append(np.packbits(mask, bitorder="little").tobytes())
    return b"".join(parts)


def write_pair_lmdb(path: str, pairs: Iterable[tuple], label: int = 0) -> int:
    """A new LMDB as ``convert_imageset_and_flow LIST DB 0 lmdb`` writes it: records ``(img1, img2, flow,
    occ, flow_name)`` under ``"%08d_<flow_name>"``, Datum channels 9. Returns the number written."""
    from neocaffe.data.db_writer import DBWriter
    from neocaffe.proto import caffe_pb2

    n = 0
    with DBWriter(path, "lmdb", commit_every=100) as db:
        for i, (img1, img2, flow, occ, name) in enumerate(pairs):
            h, w = np.asarray(img1).shape[1:]
            d = caffe_pb2.Datum(channels=9, height=h, width=w, label=label, data=encode_pair(img1, img2, flow, occ))
            db.put(b"%08d_%s" % (i, str(name).encode()), d.SerializeToString())
            n += 1
    return n


def key_for(keys: Sequence[bytes], index: int) -> bytes | None:
    """The first of the sorted ``keys`` at or after ``"%08d" % index`` (MDB_SET_RANGE), None past the end."""
    import bisect

    j = bisect.bisect_left(keys, b"%08d" % index)
    return keys[j] if j < len(keys) else None


class PairBatches:
    """CustomData's batch maker: batch ``k`` (of this process's ``rank`` in ``world``) holds the records
    ``order.batch(k)`` names, decoded to float32 ``data`` (N, C, H, W) with their ``labels``. Picklable
    (prefetch workers open the LMDB themselves)."""

    def __init__(self, path: str, where: str, order: ReadOrder, shape: tuple[int, int, int],
                 slice_points: Sequence[int], encodings: Sequence[int], rank: int = 0, world: int = 1) -> None:
        self.path, self.where, self.order, self.shape = path, where, order, tuple(shape)
        self.slice_points, self.encodings = list(slice_points), list(encodings)
        self.rank, self.world = int(rank), int(world)
        self.reader = None
        self.keys: list[bytes] = []

    def __getstate__(self) -> dict:
        return {**self.__dict__, "reader": None, "keys": []}

    def open(self) -> None:
        from neocaffe.data.sources import DBReader

        self.reader = DBReader(self.path, "lmdb", self.where).open()
        self.keys = list(self.reader.keys())

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def make(self, k: int) -> dict:
        from neocaffe.data.datum import parse_datum

        if self.reader is None:
            self.open()
        c, h, w = self.shape
        data = np.empty((self.order.batch_size, c, h, w), np.float32)
        labels = np.empty(self.order.batch_size, np.float32)
        for i, index in enumerate(self.order.batch(k * self.world + self.rank)):
            key = key_for(self.keys, index)
            if key is None:
                raise FlowDBError(f"{self.where}: no record at or after key '{index:08d}' (item {index} of "
                                  f"{len(self.keys)}); CustomData reads the records by their index")
            _, value = self.reader.get(key)  # type: ignore[union-attr]
            name = f"{self.where}: record '{key.decode('utf-8', 'replace')}'"
            d = parse_datum(value, name)
            if (d.channels, d.height, d.width) != (c, h, w):
                raise FlowDBError(f"{name}: is {d.channels} x {d.height} x {d.width}; the first record, which "
                                  f"sets the tops' shapes, is {c} x {h} x {w}")
            data[i] = decode(c, h, w, d.data, d.float_data, self.slice_points, self.encodings, name)
            labels[i] = d.label
        return {"data": data, "labels": labels}


__all__ = ["BOOL1", "PairBatches", "UINT16FLOW", "UINT8", "FlowDBError", "GlibcRand", "ReadOrder", "decode",
           "encode_pair", "key_for", "permute", "random_shuffle", "write_pair_lmdb"]
