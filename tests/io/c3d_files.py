"""C3D-v1.0's binary files written byte by byte as the fork writes them, for the tests (an encoder of their
own, independent of neocaffe's): facebookarchive/C3D @ 71336a2, ``C3D-v1.0/src/caffe/proto/caffe.proto``
(BlobProto ``num``, ``channels``, ``length``, ``height``, ``width`` = 1-5, ``data`` = 6 and ``diff`` = 7 packed
floats; NetParameter ``name`` = 1, ``layers`` = 2; its LayerParameter ``name`` = 4, ``type`` = 5, ``blobs`` = 6)
and ``src/caffe/blob.cpp`` (Blob::ToProto sets all five dims, then the data, then the diff when asked),
serialized in field-number order as C++ protobuf does."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# C3D-v1.0's LayerParameter.LayerType numbers used here
C3D_TYPES = {"CONVOLUTION3D": 30, "POOLING3D": 31, "VIDEO_DATA": 33, "RELU": 18, "INNER_PRODUCT": 14,
             "DROPOUT": 6, "SOFTMAX": 20, "ACCURACY": 1}


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _len_field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def c3d_blob(arr: np.ndarray, dims: Sequence[int] | None = None, diff: np.ndarray | None = None) -> bytes:
    """A BlobProto as C3D's ToProto writes it: five dims (``dims``, else ``arr``'s 5-D shape), data, diff."""
    dims = tuple(arr.shape) if dims is None else tuple(dims)
    out = b"".join(_varint(i << 3) + _varint(int(d)) for i, d in enumerate(dims, 1))
    out += _len_field(6, np.ascontiguousarray(arr, "<f4").tobytes())
    if diff is not None:
        out += _len_field(7, np.ascontiguousarray(diff, "<f4").tobytes())
    return out


def c3d_caffemodel(layers: Sequence[tuple[str, str, Sequence[np.ndarray]]], name: str = "c3d") -> bytes:
    """A NetParameter of V1 layers ``(name, C3D type name, 5-D blobs)``, as the fork's snapshots write it."""
    out = _len_field(1, name.encode())
    for lname, ltype, blobs in layers:
        body = _len_field(4, lname.encode()) + _varint(5 << 3) + _varint(C3D_TYPES[ltype])
        body += b"".join(_len_field(6, c3d_blob(b)) for b in blobs)
        out += _len_field(2, body)
    return out
