"""BlobProto (mean ``.binaryproto``) decode, encode and file read/write, on the protobuf wire reader of
:mod:`neocaffe.io.wire` (`WireError`, `read_varint`, `next_field`, `iter_fields`, `varint`, `field_header`,
`file_error` are re-exported here, where they lived before).

Big payloads never pass through Python lists or protobuf messages: packed floats are read with
``np.frombuffer`` straight from the file's mapped bytes, and runs of unpacked (legacy) floats through a
strided view. BlobProto fields read: ``num``=1, ``channels``=2, ``height``=3, ``width``=4 (legacy dims),
``data``=5, ``diff``=6, ``shape``=7 (BlobShape ``dim``=1), ``double_data``=8, ``double_diff``=9.
C3D-v1.0's 5-D BlobProto (facebookarchive/C3D @ 71336a2, ``C3D-v1.0/src/caffe/proto/caffe.proto``: ``num``,
``channels``, ``length``, ``height``, ``width`` = 1-5, ``data``=6, ``diff``=7) is told by its field 5 being a
varint (upstream's 5 is packed floats; the fork's Blob::ToProto always writes all five dims) and read in its
own numbering: its legacy shape has five dims (a ``length`` of 0 reads as 1, as its Blob::FromProto).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CaffeFileError
from .files import atomic_output, mapped_file
from .wire import (FIELD_NAMES, I32, I64, LEN, VARINT, Buffer, WireError, as_int32, as_int64, field_header,
                   field_label, file_error, iter_fields, next_field, read_varint, varint, wrong_wire)

__all__ = [
    "WireError", "Blob", "read_varint", "next_field", "iter_fields", "decode_blob", "encode_blob", "varint",
    "field_header", "file_error", "read_blobproto", "write_blobproto",
]

LegacyShape = tuple[int, ...]  # (num, channels, height, width), or C3D's five dims


@dataclass
class Blob:
    """One decoded BlobProto: ``data`` shaped as Caffe's Blob::FromProto would (legacy dims give a 4-D
    array), ``legacy_shape`` = (num, channels, height, width) when the proto used the deprecated dims (C3D's
    five, with ``length``, for its 5-D form)."""

    data: np.ndarray
    legacy_shape: LegacyShape | None = None
    diff: np.ndarray | None = None


def _unpacked_run(buf: Buffer, tag_pos: int, end: int, tag: int, stride: int) -> int:
    """Count consecutive unpacked elements ``[tag][value]`` starting at ``tag_pos``."""
    count = 0
    chunk = 4096
    while True:
        avail = (end - tag_pos) // stride - count
        if avail <= 0:
            return count
        n = min(chunk, avail)
        tags = np.ndarray((n,), np.uint8, buffer=buf, offset=tag_pos + count * stride, strides=(stride,))
        bad = np.flatnonzero(tags != tag)
        if bad.size:
            return count + int(bad[0])
        count += n
        chunk *= 4


def _decode_dims(buf: Buffer, a: int, b: int, dims: list[int]) -> None:
    for field, wire, x, y in iter_fields(buf, a, b, "BlobShape"):
        if field != 1:
            continue
        if wire == VARINT:
            dims.append(as_int64(x))
        elif wire == LEN:
            pos = x
            while pos < y:
                v, pos = read_varint(buf, pos, y)
                dims.append(as_int64(v))
        else:
            raise wrong_wire("BlobShape", field, wire, VARINT, x)


_FLOAT_FIELDS = {5: ("<f4", 4, False), 6: ("<f4", 4, True), 8: ("<f8", 8, False), 9: ("<f8", 8, True)}
_C3D_FLOAT_FIELDS = {6: ("<f4", 4, False), 7: ("<f4", 4, True)}  # C3D-v1.0's data, diff


_PREAD_MIN = 1 << 16  # payloads this big are read through the descriptor, not the map


def _read_floats(buf: Buffer, fd: int | None, offset: int, count: int, dtype: str) -> np.ndarray:
    """``count`` little-endian floats at ``offset``: a fresh array via preadv, or a view of ``buf``."""
    nbytes = count * np.dtype(dtype).itemsize
    if fd is None or nbytes < _PREAD_MIN or not hasattr(os, "preadv"):
        return np.frombuffer(buf, dtype, count, offset)
    out = np.empty(count, dtype)
    view = memoryview(out).cast("B")
    done = 0
    while done < nbytes:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise WireError("file shrank while being read", offset + done)
        done += n
    return out


def decode_blob(buf: Buffer, start: int, end: int, want_diff: bool = False, what: str = "BlobProto",
                fd: int | None = None) -> Blob:
    """Decode a BlobProto from ``buf[start:end]`` with Caffe's Blob::FromProto shape rules.

    With ``fd`` (the descriptor of the file mapped as ``buf``) big packed payloads are read into fresh
    arrays with ``os.preadv``; otherwise they are copied out of ``buf``.
    """
    legacy: list[int | None] = [None, None, None, None]
    dims: list[int] | None = None
    parts: dict[int, list[np.ndarray]] = {5: [], 6: [], 8: [], 9: []}
    raw: dict[int, tuple[int, int] | int] = {}  # NVCaffe's raw_data_type/raw_diff_type (10, 11), raw_data/raw_diff
    floats = _FLOAT_FIELDS
    pos = start
    while pos < end:
        tag_pos = pos
        field, wire, a, b = next_field(buf, pos, end, what)
        pos = b
        if field == 5 and wire == VARINT and floats is _FLOAT_FIELDS:  # C3D's `width`: read again in its numbering
            floats, legacy, parts, dims, pos = _C3D_FLOAT_FIELDS, [None] * 5, {6: [], 7: []}, None, start
            continue
        spec = floats.get(field)
        if spec is not None:
            dtype, size, is_diff = spec
            keep = want_diff or not is_diff
            if wire == LEN:
                if (b - a) % size:
                    raise WireError(f"{field_label(what, field)} holds {b - a} bytes, not a multiple of {size}",
                                    tag_pos)
                if keep:
                    parts[field].append(_read_floats(buf, fd, a, (b - a) // size, dtype))
            elif wire == (I32 if size == 4 else I64):  # unpacked (legacy writers): a run of [tag][value]
                stride = size + 1
                count = _unpacked_run(buf, tag_pos, end, buf[tag_pos], stride)
                if keep:
                    parts[field].append(np.ndarray((count,), dtype, buffer=buf, offset=tag_pos + 1,
                                                   strides=(stride,)))
                pos = tag_pos + count * stride
            else:
                raise wrong_wire(what, field, wire, LEN, tag_pos)
        elif 1 <= field <= len(legacy):
            if wire != VARINT:
                raise wrong_wire(what, field, wire, VARINT, tag_pos)
            legacy[field - 1] = as_int32(a)
        elif field == 7:
            if wire != LEN:
                raise wrong_wire(what, field, wire, LEN, tag_pos)
            dims = dims if dims is not None else []  # a repeated message field merges: dims append
            _decode_dims(buf, a, b, dims)
        elif field in (10, 11, 12, 13) and floats is _FLOAT_FIELDS:
            expected = VARINT if field < 12 else LEN
            if wire != expected:
                raise wrong_wire(what, field, wire, expected, tag_pos)
            raw[field] = as_int32(a) if field < 12 else (a, b)  # optional fields: the last one wins
    if floats is _C3D_FLOAT_FIELDS:
        legacy[2] = legacy[2] or 1  # C3D's Blob::FromProto: no length is length 1
        return _assemble(legacy, None, (parts[6], "<f4", "data"), (parts[7], "<f4"), what)
    from_raw = 12 in raw and not parts[8] and not parts[5]  # NVCaffe's FromProto: double_data, data, raw_data
    if from_raw:
        values = _raw_values(buf, raw, 10, 12, what)
        parts[8 if values.dtype == np.float64 else 5] = [values]
    if 13 in raw and want_diff and not parts[9] and not parts[6]:
        values = _raw_values(buf, raw, 11, 13, what)
        parts[9 if values.dtype == np.float64 else 6] = [values]
    data = (parts[8], "<f8", "raw_data" if from_raw else "double_data") if parts[8] else (parts[5], "<f4", "raw_data" if from_raw else "data")
    return _assemble(legacy, dims, data, (parts[9], "<f8") if parts[9] else (parts[6], "<f4"), what)


#: NVCaffe's ``Type`` enum (raw_data_type): the element types its Blob::FromProto reads from raw bytes
_RAW_TYPES = {0: ("DOUBLE", "<f8"), 1: ("FLOAT", "<f4"), 2: ("FLOAT16", "<f2")}
_RAW_NAMES = {3: "INT", 4: "UINT", 5: "BOOL"}


def _raw_values(buf: Buffer, raw: dict[int, Any], type_field: int, bytes_field: int, what: str) -> np.ndarray:
    """NVCaffe's ``raw_data``/``raw_diff`` (bytes of its little-endian host's DOUBLE, FLOAT or FLOAT16 elements,
    typed by ``raw_data_type``/``raw_diff_type``): FLOAT16 as float32 (exact), FLOAT as float32, DOUBLE as
    float64 (as ``double_data``). Other types fail, as in NVCaffe ("Unsupported raw type")."""
    name = FIELD_NAMES["BlobProto"][bytes_field]
    if type_field not in raw:
        raise WireError(f"{what} has {name} but no {FIELD_NAMES['BlobProto'][type_field]} "
                        f"(NVCaffe: \"Missing raw data type\")")
    code = int(raw[type_field])
    if code not in _RAW_TYPES:
        raise WireError(f"{what}: unsupported {FIELD_NAMES['BlobProto'][type_field]} "
                        f"{_RAW_NAMES.get(code, code)}; expected one of DOUBLE, FLOAT, FLOAT16")
    kind, dtype = _RAW_TYPES[code]
    a, b = raw[bytes_field]
    size = np.dtype(dtype).itemsize
    if (b - a) % size:
        raise WireError(f"{what} {name} holds {b - a} bytes, not a multiple of {size} ({kind})")
    values = np.frombuffer(buf, dtype, (b - a) // size, a)
    return values.astype(np.float64 if kind == "DOUBLE" else np.float32)


def _join(pieces: list[np.ndarray], dtype: str) -> np.ndarray:
    native = np.dtype(dtype).newbyteorder("=")
    if not pieces:
        return np.empty(0, native)
    if len(pieces) == 1 and pieces[0].flags.owndata and pieces[0].dtype == native:
        return pieces[0]  # already a fresh array of our own (read with preadv)
    out = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    return out.astype(native, copy=True)


def _assemble(legacy: list[int | None], dims: list[int] | None, data_parts: tuple[list[np.ndarray], str, str],
              diff_parts: tuple[list[np.ndarray], str], what: str) -> Blob:
    legacy_shape: LegacyShape | None = None
    if any(v is not None for v in legacy):
        legacy_shape = tuple(v or 0 for v in legacy)  # type: ignore[assignment]
        shape: tuple[int, ...] = legacy_shape  # type: ignore[assignment]
    else:
        shape = tuple(dims or ())
    if any(d < 0 for d in shape):
        raise WireError(f"{what} has a negative dimension {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    data = _join(data_parts[0], data_parts[1])
    if data.size != count:
        raise WireError(f"{what} shape {_shape_str(shape)} holds {count} values but its {data_parts[2]} has "
                        f"{data.size}")
    diff = None
    if diff_parts[0]:
        diff = _join(*diff_parts)
        diff = diff.reshape(shape) if diff.size == count else diff
    return Blob(data.reshape(shape), legacy_shape, diff)


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "()"


# ---------------------------------------------------------------- encoding


def _float_payload(array: np.ndarray, double: bool) -> memoryview:
    arr = np.ascontiguousarray(array, dtype="<f8" if double else "<f4").reshape(-1)
    return memoryview(arr).cast("B")


def encode_blob(array: np.ndarray, *, legacy: bool = False, diff: np.ndarray | None = None,
                double: bool = False) -> tuple[list[bytes | memoryview], int]:
    """BlobProto body as chunks (zero-copy for the payload) and its total length.

    Fields go in field-number order as C++ protobuf writes them: legacy dims (if ``legacy``; shape
    padded on the left with 1s as Blob::LegacyShape does), data, diff, shape (unless ``legacy``). A 5-D
    ``legacy`` blob is written in C3D-v1.0's numbering (five dims 1-5, data 6, diff 7), as it was read.
    """
    array = np.asarray(array)
    chunks: list[bytes | memoryview] = []
    head = bytearray()
    c3d = legacy and array.ndim == 5 and not double
    if legacy:
        if array.ndim > 4 and not c3d:
            raise ValueError(f"legacy BlobProto dims need at most 4 axes (5 in C3D's float form), received shape "
                             f"{array.shape}")
        for i, d in enumerate((1,) * (4 - array.ndim) + tuple(array.shape)):
            head += field_header(i + 1, VARINT) + varint(int(d))
    data_field, diff_field = (8, 9) if double else ((6, 7) if c3d else (5, 6))
    for field, values in ((data_field, array), (diff_field, diff)):
        if values is None or np.size(values) == 0:
            continue
        payload = _float_payload(values, double)
        head += field_header(field, LEN, payload.nbytes)
        chunks.append(bytes(head))
        chunks.append(payload)
        head = bytearray()
    if not legacy and array.ndim > 0:
        dims = b"".join(varint(int(d)) for d in array.shape)
        inner = field_header(1, LEN, len(dims)) + dims
        head += field_header(7, LEN, len(inner)) + inner
    if head:
        chunks.append(bytes(head))
    return chunks, sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)


# ---------------------------------------------------------------- .binaryproto files


def read_blobproto(path: str | os.PathLike[str], want_diff: bool = False) -> Blob:
    """Read a BlobProto file (e.g. a mean ``.binaryproto``); the array is shaped as Caffe shapes it."""
    name = os.fspath(path)
    with mapped_file(name) as (buf, fd):
        if len(buf) == 0:
            raise CaffeFileError(name, "empty file", expected="a BlobProto")
        try:
            blob = decode_blob(buf, 0, len(buf), want_diff=want_diff, fd=fd)
        except WireError as exc:
            raise file_error(name, exc, "BlobProto", buf) from None
    return blob


def write_blobproto(path: str | os.PathLike[str], array: np.ndarray, *, legacy: bool = False,
                    diff: np.ndarray | None = None) -> None:
    """Write ``array`` as a BlobProto file atomically (``legacy=True``: num/channels/height/width, as
    compute_image_mean writes means)."""
    chunks, _ = encode_blob(array, legacy=legacy, diff=diff)
    with atomic_output(path) as f:
        for c in chunks:
            f.write(c)
