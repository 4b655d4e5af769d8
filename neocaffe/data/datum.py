"""Caffe's ``Datum``: images as uint8 C x H x W arrays in BGR order, raw or encoded (PNG/JPEG).

Mirrors ``caffe/util/io.cpp``: ``CVMatToDatum`` (raw, sets ``encoded: false`` explicitly),
``ReadImageToCVMat`` (``cv2.imread`` + ``cv2.resize(img, (W, H))`` INTER_LINEAR, bit-exact with Caffe's
OpenCV), ``ReadFileToDatum`` (the file's own bytes), ``ReadImageToDatum`` (with its encoding rules),
``DecodeDatumToCVMatNative`` / ``DecodeDatumToCVMat`` (``cv2.imdecode``). Arrays are C x H x W
(Caffe's datum layout), channels in OpenCV's BGR order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from neocaffe.proto import caffe_pb2

__all__ = [
    "DatumError", "DecodedDatum", "parse_record", "parse_datum", "decode_datum", "array_to_datum", "encode_array_to_datum",
    "file_to_datum", "imread", "min_size", "read_image", "read_image_to_datum", "hwc_to_chw", "chw_to_hwc",
]


class DatumError(ValueError):
    """A record that cannot be decoded or does not fit (names the source and the record)."""


@dataclass
class DecodedDatum:
    """A datum's pixels (C x H x W; uint8, or float32 for ``float_data`` datums) and its label."""

    array: np.ndarray
    label: int
    encoded: bool = False


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    """An OpenCV image (H x W or H x W x C) as a C x H x W array."""
    if img.ndim == 2:
        return img[None, :, :]
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def chw_to_hwc(arr: np.ndarray) -> np.ndarray:
    """A C x H x W array as an OpenCV image (H x W x C; H x W for one channel)."""
    if arr.ndim != 3:
        raise ValueError(f"expected a C x H x W array; received shape {arr.shape}")
    if arr.shape[0] == 1:
        return np.ascontiguousarray(arr[0])
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def parse_record(value: bytes | memoryview, message: Any, where: str = "record") -> Any:
    """``message`` (a protobuf message, cleared) parsed from the database record ``value``."""
    try:
        message.ParseFromString(bytes(value))
    except Exception as e:  # protobuf's DecodeError
        raise DatumError(f"{where}: not a Caffe {type(message).__name__} ({e}); received {len(value)} bytes") from None
    return message


def parse_datum(value: bytes | memoryview, where: str = "datum") -> caffe_pb2.Datum:
    """The Datum message in ``value`` (a database record)."""
    return parse_record(value, caffe_pb2.Datum(), where)


def _imdecode(data: bytes, flag: int, where: str) -> np.ndarray:
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, flag) if buf.size else None
    if img is None:
        raise DatumError(f"{where}: could not decode the encoded image ({len(data)} bytes)")
    return img


def decode_datum(
    datum: caffe_pb2.Datum | bytes, *, force_color: bool = False, force_gray: bool = False, where: str = "datum"
) -> DecodedDatum:
    """Pixels of a datum as C x H x W: raw ``data`` as uint8, ``float_data`` as float32, encoded
    images through ``cv2.imdecode`` (native channels, or 3/1 with ``force_color``/``force_gray``,
    as Caffe's DataTransformer decodes them)."""
    if not isinstance(datum, caffe_pb2.Datum):
        datum = parse_datum(datum, where)
    if force_color and force_gray:
        raise DatumError(f"{where}: cannot set both force_color and force_gray")
    if datum.encoded:
        if force_color:
            flag = cv2.IMREAD_COLOR
        elif force_gray:
            flag = cv2.IMREAD_GRAYSCALE
        else:
            flag = cv2.IMREAD_UNCHANGED
        img = _imdecode(datum.data, flag, where)
        if img.dtype != np.uint8:
            raise DatumError(f"{where}: encoded image decodes to {img.dtype}; Caffe needs 8-bit images")
        return DecodedDatum(hwc_to_chw(img), int(datum.label), True)
    c, h, w = int(datum.channels), int(datum.height), int(datum.width)
    n = c * h * w
    if c <= 0 or h <= 0 or w <= 0:
        raise DatumError(f"{where}: datum has shape {c}x{h}x{w}; expected positive channels, height, width")
    if len(datum.data):
        if len(datum.data) != n:
            raise DatumError(
                f"{where}: datum data holds {len(datum.data)} bytes; its shape {c}x{h}x{w} needs {n}"
            )
        arr = np.frombuffer(datum.data, np.uint8).reshape(c, h, w)
    else:
        if len(datum.float_data) != n:
            raise DatumError(
                f"{where}: datum float_data holds {len(datum.float_data)} values; its shape {c}x{h}x{w} needs {n}"
            )
        arr = np.asarray(datum.float_data, np.float32).reshape(c, h, w)
    return DecodedDatum(arr, int(datum.label), False)


def array_to_datum(arr: np.ndarray, label: int = 0) -> caffe_pb2.Datum:
    """A raw datum from a C x H x W uint8 array (Caffe's CVMatToDatum + set_label)."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"expected a C x H x W array; received shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, np.float32).ravel().tolist())
    datum.label = int(label)
    datum.encoded = False
    return datum


def _ext(encoding: str) -> str:
    return "." + encoding.lstrip(".").lower()


def encode_array_to_datum(arr: np.ndarray, label: int = 0, encoding: str = "png") -> caffe_pb2.Datum:
    """An encoded datum (``encoded: true``) holding ``cv2.imencode`` of a C x H x W uint8 array."""
    ok, buf = cv2.imencode(_ext(encoding), chw_to_hwc(np.asarray(arr, np.uint8)))
    if not ok:
        raise ValueError(f"OpenCV cannot encode an image as '{encoding}'")
    datum = caffe_pb2.Datum()
    datum.data = buf.tobytes()
    datum.label = int(label)
    datum.encoded = True
    return datum


def file_to_datum(path: str, label: int = 0) -> caffe_pb2.Datum:
    """The file's own bytes as an encoded datum (Caffe's ReadFileToDatum)."""
    with open(path, "rb") as f:
        data = f.read()
    datum = caffe_pb2.Datum()
    datum.data = data
    datum.label = int(label)
    datum.encoded = True
    return datum


def _imread_bytes(path: str, flags: int) -> np.ndarray | None:
    """``cv2.imread`` for a name OpenCV's binding cannot take: Python opens it, OpenCV decodes it."""
    try:
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, flags) if data.size else None


def imread(path: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """``cv2.imread(path, flags)``, also for names that are not UTF-8 (read with surrogateescape), which
    OpenCV's binding cannot take; None when the file cannot be read or decoded."""
    if "\x00" in path:  # no file name holds NUL (cv2.imread would read the name cut at it)
        return None
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # cv2.imread would crash on it (SIGSEGV in its str conversion)
        return _imread_bytes(path, flags)
    return cv2.imread(path, flags)


def min_size(rows: int, cols: int, min_height: int, min_width: int) -> tuple[int, int] | None:
    """The ``(width, height)`` an image of ``rows`` x ``cols`` is resized to under ``min_height``/``min_width``
    (LisaAnne/lisa-caffe-public @ 49b8643d and intel/caffe @ 44d53638, ``src/caffe/util/io.cpp``
    ``ReadImageToCVMat``), None when it is no smaller than either. The side short of its minimum by more
    (``min_width - cols > min_height - rows``: the width, else the height) is set to its minimum and the other
    follows the aspect ratio as the forks round it: ``int(float32(min) * (float32(a) / float32(b)) + 0.5)``."""
    if rows >= min_height and cols >= min_width:
        return None
    f32 = np.float32
    if min_width - cols > min_height - rows:
        return int(min_width), int(float(f32(min_width) * (f32(rows) / f32(cols))) + 0.5)
    return int(float(f32(min_height) * (f32(cols) / f32(rows))) + 0.5), int(min_height)


def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True, crop: bool = False,
               short_side: int = 0, min_height: int = 0, min_width: int = 0) -> np.ndarray | None:
    """Caffe's ReadImageToCVMat: ``cv2.imread`` (BGR or gray), resized to ``height`` x ``width`` when
    both are positive. ``crop`` (the fork's ``--crop``): scale isotropically so the image covers the
    target, then take the central ``height`` x ``width`` region. None when the file cannot be read.

    ``short_side`` > 0: NVCaffe's (NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7,
    ``src/caffe/util/io.cpp`` ReadImageToCVMat), in place of ``height``/``width``: a portrait image (rows >
    cols) gets width ``short_side`` and height ``rows*short_side/cols``, any other height ``short_side`` and
    width ``cols*short_side/rows`` (integer divisions), then the same INTER_LINEAR resize.

    ``min_height``/``min_width`` (``image_data_param``'s, LRCN's and Intel Caffe's ``ReadImageToCVMat``): where
    no other resize is asked, an image under either is upscaled keeping its aspect ratio (:func:`min_size`)."""
    img = imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    if (min_height > 0 or min_width > 0) and short_side <= 0 and not (height > 0 and width > 0):
        size = min_size(img.shape[0], img.shape[1], min_height, min_width)
        return img if size is None else cv2.resize(img, size)
    if short_side > 0:
        rows, cols = img.shape[:2]
        if rows > cols:
            height, width = rows * short_side // cols, short_side
        else:
            height, width = short_side, cols * short_side // rows
        crop = False
    if height > 0 and width > 0:
        if crop:
            src_rate = img.shape[0] / img.shape[1]
            dst_rate = height / width
            if dst_rate > src_rate:
                sh, sw = height, int(height / src_rate)
                img = cv2.resize(img, (sw, sh))
                x0 = (sw - width) // 2
                img = np.ascontiguousarray(img[:, x0 : x0 + width])
            else:
                sw, sh = width, int(width * src_rate)
                img = cv2.resize(img, (sw, sh))
                y0 = (sh - height) // 2
                img = np.ascontiguousarray(img[y0 : y0 + height])
        else:
            img = cv2.resize(img, (width, height))
    return img


def _match_ext(filename: str, encoding: str) -> bool:
    # Caffe's matchExt compares the file's extension *with its dot* to the encoding as given
    p = filename.rfind(".")
    ext = (filename[p:] if p >= 0 else filename).lower()
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def read_image_to_datum(
    path: str, label: int, height: int = 0, width: int = 0, is_color: bool = True, encoding: str = "",
    crop: bool = False,
) -> caffe_pb2.Datum | None:
    """Caffe's ReadImageToDatum: raw pixels, or with ``encoding`` the file's own bytes when nothing
    would change them (no resize, same colour, extension matching ``encoding``), else the image
    re-encoded with ``cv2.imencode``. None when the file cannot be read."""
    img = read_image(path, height, width, is_color, crop)
    if img is None:
        return None
    if encoding:
        channels = 1 if img.ndim == 2 else img.shape[2]
        if (channels == 3) == is_color and not height and not width and _match_ext(path, encoding):
            return file_to_datum(path, label)
        return encode_array_to_datum(hwc_to_chw(img), label, encoding)
    return array_to_datum(hwc_to_chw(img), label)

