"""Caffe's Blob::Reshape checks, in one place for every blob whose shape a net decides.

Caffe CHECKs every dimension ``>= 0`` when a blob is shaped, and its fillers CHECK a non-empty blob;
PyTorch instead fails deep inside an allocator ("Trying to create tensor with negative dimension",
"DefaultCPUAllocator: can't allocate memory") or, worse, takes the memory and gets the process killed.
:func:`check_shape` refuses such a shape *before* anything is allocated, in words that name the blob,
the shape and the bytes: the fillers (parameter blobs), the layers that read a ``BlobShape`` from
their parameter (Input, DummyData, Parameter) and the net builder (every top, from each layer's
``reshape``) call it. The net builder adds the file, line and layer to the message.
"""
from __future__ import annotations

import math
import os
import resource
from typing import Any, Sequence

__all__ = ["BlobShapeError", "allocation_failure", "check_shape", "describe_bytes", "memory_limit", "proto_shape"]

FLOAT32 = 4


class BlobShapeError(ValueError):
    """A blob shape no blob can have: a negative (or, where Caffe CHECKs, zero) dimension, or more
    bytes than this machine holds."""


def memory_limit() -> int:
    """The most bytes one blob may take: this machine's physical memory, or the process's address
    space limit (``ulimit -v``) when that is lower."""
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check by size
        limit = 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1) and 0 < soft < limit:
        limit = soft
    return int(limit)


def describe_bytes(n: int) -> str:
    """``n`` bytes with a readable unit: ``768000000000 bytes (715.3 GiB)``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n} bytes ({n / size:.1f} {unit})"
    return f"{n} bytes"


def check_shape(shape: Sequence[int], what: str, *, allow_zero: bool = True,
                itemsize: int = FLOAT32) -> tuple[int, ...]:
    """``shape`` as a tuple of ints when a blob of it can exist here; else :class:`BlobShapeError`
    naming ``what`` (e.g. ``top 'conv1'``, ``input_param.shape[0]``), the shape and what was expected.
    ``allow_zero`` False: every dimension must be positive (Caffe's fillers CHECK a non-empty blob)."""
    dims = tuple(int(d) for d in shape)
    least = 0 if allow_zero else 1
    for axis, d in enumerate(dims):
        if d < least:
            kind = "negative" if d < 0 else "zero"
            raise BlobShapeError(f"{what}: shape {dims} has a {kind} dimension ({d} on axis {axis}); "
                                 f"expected every dimension >= {least}")
    nbytes = math.prod(dims) * itemsize
    limit = memory_limit()
    if nbytes > limit:
        raise BlobShapeError(f"{what}: shape {dims} needs {describe_bytes(nbytes)} as float32, more than "
                             f"this machine's memory ({describe_bytes(limit)}); expected a blob that fits")
    return dims


_ALLOCATION_WORDS = ("can't allocate memory", "out of memory", "not enough memory", "negative dimension",
                     "must be non-negative", "Insufficient memory", "Failed to allocate")


def allocation_failure(err: BaseException) -> bool:
    """Whether ``err`` is an allocator's failure (MemoryError, CUDA out of memory, PyTorch's "can't
    allocate memory" or negative-size messages, OpenCV's "Insufficient memory"), not a layer's own
    RuntimeError."""
    if isinstance(err, MemoryError):
        return True
    allocator = isinstance(err, RuntimeError) or type(err).__module__.startswith("cv2")
    return allocator and any(w in str(err) for w in _ALLOCATION_WORDS)


def proto_shape(blob_shape: Any, field: str, *, allow_zero: bool = True) -> tuple[int, ...]:
    """The dims of a ``BlobShape`` message read from parameter ``field``, checked by :func:`check_shape`."""
    return check_shape([int(d) for d in blob_shape.dim], field, allow_zero=allow_zero)
