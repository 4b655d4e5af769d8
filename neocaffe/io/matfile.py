"""MATLAB MAT-files holding Caffe blobs, as DeepLab's ``matio_io.cpp`` writes and reads them.

DeepLab's ``WriteBlobToMat`` stores a blob (N, C, H, W) as a MAT variable ``data`` (and ``diff``) of
dims [W, H, C, N], single precision, its memory in Caffe's order (which is MATLAB's column-major order
of the reversed dims), uncompressed, in the Level 5 format. ``ReadBlobFromMat`` takes the variable
back as (dims[3], dims[2], dims[1], dims[0]) with missing trailing dims as 1.

Written here: Level 5, uncompressed, as matio does. Read here: Level 5 (also compressed variables and
the smaller storage types MATLAB uses for integral values) and 7.3 (HDF5) files; real numeric arrays
of up to 4 dims. Errors name the file and what was received and expected.
"""
from __future__ import annotations

import os
import struct
import time
import zlib
from typing import Any

import numpy as np

from neocaffe.io.errors import CaffeFileError, CaffeFileNotFoundError
from neocaffe.io.files import atomic_output

__all__ = ["write_blobs_mat", "read_blob_mat"]

_MI_INT8, _MI_INT32, _MI_UINT32, _MI_SINGLE, _MI_DOUBLE, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 7, 9, 14, 15
#: Level 5 data types -> NumPy (little-endian) types
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
#: array classes -> their names; the numeric ones read here
_CLASSES = {6: "double", 7: "single", 8: "int8", 9: "uint8", 10: "int16", 11: "uint16", 12: "int32",
            13: "uint32", 14: "int64", 15: "uint64"}
_CLASS_SINGLE, _CLASS_DOUBLE = 7, 6


def _element(kind: int, payload: bytes) -> bytes:
    """One data element: tag (type, byte count) and the payload padded to 8 bytes."""
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(name: str, array: np.ndarray) -> bytes:
    """A miMATRIX element for ``array`` (a blob in Caffe's C order) with dims reversed to MATLAB's."""
    dims = tuple(reversed(array.shape))
    single = array.dtype == np.float32
    cls, kind = (_CLASS_SINGLE, _MI_SINGLE) if single else (_CLASS_DOUBLE, _MI_DOUBLE)
    body = (_element(_MI_UINT32, struct.pack("<II", cls, 0))
            + _element(_MI_INT32, struct.pack(f"<{len(dims)}i", *dims))
            + _element(_MI_INT8, name.encode("ascii"))
            + _element(kind, np.ascontiguousarray(array, "<f4" if single else "<f8").tobytes()))
    return _element(_MI_MATRIX, body)


def write_blobs_mat(path: str | os.PathLike[str], variables: dict[str, np.ndarray]) -> None:
    """Write ``variables`` (name -> float32 or float64 array, a blob of up to 4 axes, padded at the
    front to (N, C, H, W)) to a Level 5 MAT-file, atomically (temporary name + rename)."""
    text = f"MATLAB 5.0 MAT-file, Platform: neocaffe, Created on: {time.asctime()}".encode("ascii")
    header = text[:116].ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    parts = [header]
    for name, arr in variables.items():
        arr = np.asarray(arr)
        if arr.ndim > 4:
            raise CaffeFileError(path, f"variable '{name}' has {arr.ndim} axes", "a blob of at most 4 (N, C, H, W)")
        parts.append(_matrix(name, arr.reshape((1,) * (4 - arr.ndim) + arr.shape)))
    try:
        with atomic_output(path, fsync=False) as f:
            f.write(b"".join(parts))
    except OSError as e:
        raise CaffeFileError(path, f"cannot write the MAT-file: {e.strerror or e}") from None


def _elements(buf: bytes, path: Any) -> dict[str, tuple[int, tuple[int, ...], np.ndarray]]:
    """The numeric arrays of a Level 5 stream: name -> (class, MATLAB dims, values in storage order)."""
    out: dict[str, tuple[int, tuple[int, ...], np.ndarray]] = {}
    pos = 0
    while pos + 8 <= len(buf):
        kind, size = struct.unpack_from("<II", buf, pos)
        if kind >> 16:  # small element: 4 bytes of data in the tag (never a matrix)
            pos += 8
            continue
        data = buf[pos + 8:pos + 8 + size]
        if len(data) < size:
            raise CaffeFileError(path, "truncated MAT-file", f"{size} bytes of an element", f"{len(data)}")
        pos += 8 + size + (0 if kind == _MI_COMPRESSED else -size % 8)
        if kind == _MI_COMPRESSED:
            try:
                out.update(_elements(zlib.decompress(data), path))
            except zlib.error as e:
                raise CaffeFileError(path, f"corrupt compressed MAT variable ({e})") from None
        elif kind == _MI_MATRIX and data:
            name, value = _array(data, path)
            if name:
                out[name] = value
    return out


def _sub(data: bytes, pos: int, path: Any) -> tuple[int, bytes, int]:
    """The sub-element at ``pos``: its type, its bytes and the position after it."""
    kind, size = struct.unpack_from("<II", data, pos)
    if kind >> 16:
        return kind & 0xFFFF, data[pos + 4:pos + 4 + (kind >> 16)], pos + 8
    return kind, data[pos + 8:pos + 8 + size], pos + 8 + size + (-size % 8)


def _array(data: bytes, path: Any) -> tuple[str, tuple[int, tuple[int, ...], np.ndarray]]:
    _, flags, pos = _sub(data, 0, path)
    cls, complex_ = flags[0], bool(flags[1] & 0x08)
    _, dims_raw, pos = _sub(data, pos, path)
    _, name_raw, pos = _sub(data, pos, path)
    name = name_raw.decode("ascii", "replace")
    if cls not in _CLASSES:
        return name, (cls, (), np.zeros(0))  # cells, structs, chars, sparse: not blobs
    if complex_:
        raise CaffeFileError(path, f"variable '{name}' is complex", "a real array")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, "<i4"))
    kind, values, _ = _sub(data, pos, path)
    if kind not in _MI_TYPES:
        raise CaffeFileError(path, f"variable '{name}' has storage type {kind}", "a numeric Level 5 type")
    return name, (cls, dims, np.frombuffer(values, _MI_TYPES[kind]))


def _read_hdf5(path: str) -> dict[str, tuple[int, tuple[int, ...], np.ndarray]]:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset) and ds.dtype.kind in "fiu":
                arr = ds[()]
                cls = _CLASS_SINGLE if arr.dtype == np.float32 else _CLASS_DOUBLE
                out[name] = (cls, tuple(reversed(arr.shape)), arr.reshape(-1))  # HDF5 keeps the C order
    return out


def read_blob_mat(path: str | os.PathLike[str], name: str = "data") -> np.ndarray:
    """Variable ``name`` of a MAT-file as a float32 blob (dims[3], dims[2], dims[1], dims[0]), missing
    dims as 1 (DeepLab's ReadBlobFromMat). single and double arrays are read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CaffeFileNotFoundError(path, "no such MAT-file")
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:8] == b"\x89HDF\r\n\x1a\n" or buf[512:520] == b"\x89HDF\r\n\x1a\n":
        arrays = _read_hdf5(path)
    elif len(buf) >= 128 and buf[126:128] == b"IM" and buf[124:126] == b"\x00\x01":
        try:
            arrays = _elements(buf[128:], path)
        except (struct.error, ValueError, IndexError) as e:
            if isinstance(e, CaffeFileError):
                raise
            raise CaffeFileError(path, f"corrupt MAT-file ({type(e).__name__}: {e})") from None
    else:
        raise CaffeFileError(path, "not a MAT-file", "a Level 5 (little-endian) or 7.3 MAT-file header",
                             repr(buf[:20]))
    if name not in arrays:
        raise CaffeFileError(path, f"no variable '{name}'", "a numeric variable 'data' (as WriteBlobToMat writes)",
                             f"variables {sorted(arrays)}")
    cls, dims, values = arrays[name]
    if cls not in (_CLASS_SINGLE, _CLASS_DOUBLE):
        raise CaffeFileError(path, f"variable '{name}' is {_CLASSES.get(cls, f'class {cls}')}", "single or double")
    if not 0 < len(dims) <= 4 or int(np.prod(dims)) != values.size:
        raise CaffeFileError(path, f"variable '{name}' has dims {list(dims)} and {values.size} values",
                             "at most 4 dims whose product is the number of values")
    full = tuple(dims) + (1,) * (4 - len(dims))
    return values.astype(np.float32).reshape(tuple(reversed(full)))
