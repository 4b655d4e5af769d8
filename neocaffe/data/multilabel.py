"""senlinuc/caffe_ocr's multi-label data: Datums whose ``label`` (field 5) is repeated, and image lists whose
lines carry several labels (a text line's characters) or regression values.

Lineage: senlinuc/caffe_ocr @ 81642f61ea8f888e360cca30e08e05b7bc6d4556: ``src/caffe/proto/caffe.proto`` (its
``Datum.label`` is ``repeated int32 label = 5``, proto2, so written unpacked), ``src/caffe/util/io.cpp``
(``ReadImageToCVMat`` with its extra resize modes, ``ReadImageToDatum``/``ReadFileToDatum`` with a vector of
labels), ``src/caffe/layers/image_data_layer.cpp`` (its list parse), ``tools/convert_imageset.cpp`` (its list
parse and records).

neocaffe's schema keeps BVLC's ``optional int32 label`` (protobuf's parser keeps the last value of an optional
field), so :func:`datum_labels` reads every value of field 5 from a record's bytes itself (packed or not), and
:func:`multilabel_record` writes a Datum with several labels the way the fork's C++ serializer does (fields in
number order, the labels unpacked between ``data`` and ``float_data``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from neocaffe.data.batches import DBBatchMaker
from neocaffe.data.datum import (DatumError, DecodedDatum, array_to_datum, encode_array_to_datum, file_to_datum,
                                 hwc_to_chw, imread)
from neocaffe.data.sources import DataSourceError
from neocaffe.io.wire import LEN, VARINT, WireError, as_int32, field_header, iter_fields, read_varint, varint
from neocaffe.proto import caffe_pb2

__all__ = ["MultiLabelEntry", "MultiLabelDBBatchMaker", "datum_labels", "labels_wire", "multilabel_record",
           "read_lines", "read_multilabel_list", "parse_convert_line", "fork_read_image", "fork_image_to_datum",
           "multilabel_example"]

_LABEL = 5  # Datum.label


# -- the wire format (neocaffe.io.binaryproto's reader and writer) ---------------------------------------
def datum_labels(value: bytes | memoryview, where: str = "record") -> list[int]:
    """Every value of field 5 (``label``) of the Datum in ``value``, in wire order: unpacked varints (proto2's
    ``repeated int32``, as the fork writes them) and packed runs alike. Other fields are stepped over; a
    record that is not a well-formed message is a DatumError naming ``where``."""
    buf = bytes(value)
    out: list[int] = []
    try:
        for field, wire, a, b in iter_fields(buf, 0, len(buf), "Datum"):
            if field != _LABEL:
                continue
            if wire == VARINT:
                out.append(as_int32(a))
            elif wire == LEN:  # packed
                j = a
                while j < b:
                    v, j = read_varint(buf, j, b)
                    out.append(as_int32(v))
            else:
                raise WireError(f"Datum field 5 (label) has wire type {wire}")
    except WireError as e:
        raise DatumError(f"{where}: not a Caffe Datum ({e.describe()})") from None
    return out


def labels_wire(labels: Sequence[int], packed: bool = False) -> bytes:
    """Field 5 holding ``labels``: unpacked (the fork's proto2 ``repeated int32``) or as one packed run."""
    if packed:
        body = b"".join(varint(int(v)) for v in labels)
        return field_header(_LABEL, LEN, len(body)) + body if labels else b""
    return b"".join(field_header(_LABEL, VARINT) + varint(int(v)) for v in labels)


def multilabel_record(datum: Any, labels: Sequence[int]) -> bytes:
    """``datum`` serialized with ``labels`` as its repeated field 5 (its own ``label`` dropped), in the byte
    order of the fork's C++ serializer: fields 1-4, the labels, then field 6 on. Concatenated serializations
    of two messages are their merge, so this is the head's bytes, the labels, the tail's bytes."""
    head, tail = caffe_pb2.Datum(), caffe_pb2.Datum()
    head.CopyFrom(datum)
    tail.CopyFrom(datum)
    for f, _ in datum.ListFields():
        if f.number >= _LABEL:
            head.ClearField(f.name)
        if f.number <= _LABEL:
            tail.ClearField(f.name)
    return head.SerializeToString() + labels_wire(labels) + tail.SerializeToString()


# -- the fork's list files ------------------------------------------------------------------------
_WS = frozenset(b" \t\n\v\f\r")  # C's isspace, what an istream skips
_INT = re.compile(rb"[+-]?[0-9]+")
_FLOAT = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_F32_MAX = float(np.finfo(np.float32).max)
_F32_OVERFLOW = 2.0 ** 128 - 2.0 ** 103  # from here on strtof gives inf (ERANGE)


def _strtof(text: bytes) -> float | None:
    """``text`` rounded once to the nearest float32 (as ``strtof``; None where it overflows, the stream's
    failbit). Python rounds to double first; where that lands exactly between two float32s the exact decimal
    decides."""
    d = float(text)
    if abs(d) >= _F32_OVERFLOW:
        return None
    f = float(np.float32(d))
    if f != d and abs(f) < _F32_MAX:
        other = float(np.nextafter(np.float32(f), np.float32(np.inf if d > f else -np.inf)))
        if (f + other) / 2 == d:
            exact = Fraction(text.decode())
            if exact != Fraction(d):
                f = other if abs(Fraction(other) - exact) < abs(Fraction(f) - exact) else f
    return f


def _istream_numbers(s: bytes, pos: int, floats: bool) -> list[Any]:
    """``while (iss >> x) values.push_back(x)`` from ``pos``: whitespace skipped, stopping at the first text
    that does not read as an int (or float), or an int outside int32 / a float outside float32."""
    out: list[Any] = []
    while True:
        while pos < len(s) and s[pos] in _WS:
            pos += 1
        m = (_FLOAT if floats else _INT).match(s, pos)
        if m is None:
            return out
        pos = m.end()
        if floats:
            if s[pos:pos + 1] in (b"e", b"E"):  # an exponent without digits: the stream fails
                return out
            v = _strtof(m.group())
        else:
            v = int(m.group())
            v = v if -(1 << 31) <= v < 1 << 31 else None
        if v is None:
            return out
        out.append(v)


def read_lines(path: str, what: str) -> list[bytes]:
    """``std::getline`` over the file: pieces between '\\n' (a last one only where the file does not end)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataSourceError(f"{what}: cannot read list file '{path}' ({e.strerror or e})") from None
    parts = data.split(b"\n")
    return parts[:-1] if parts and parts[-1] == b"" else parts


@dataclass(frozen=True)
class MultiLabelEntry:
    """One line of a caffe_ocr list: the image as written, its labels (ints) or values (floats), its line."""

    path: str
    label: tuple[Any, ...]
    line: int


def read_multilabel_list(path: str, regression: bool = False, what: str = "image list") -> list[MultiLabelEntry]:
    """The fork's ImageData list: per line ``iss >> filename`` then ints (``regression``: floats) while they
    read. Every line must carry as many values as the first (the fork shapes its label top from one line and
    misplaces the others' values). Blank lines are skipped (the fork reads them as the previous image with
    no labels)."""
    out: list[MultiLabelEntry] = []
    for no, raw in enumerate(read_lines(path, what), 1):
        i = 0
        while i < len(raw) and raw[i] in _WS:
            i += 1
        j = i
        while j < len(raw) and raw[j] not in _WS:
            j += 1
        if i == j:
            continue
        values = tuple(_istream_numbers(raw, j, regression))
        entry = MultiLabelEntry(raw[i:j].decode("utf-8", "surrogateescape"), values, no)
        if out and len(values) != len(out[0].label):
            raise DataSourceError(f"{path}:{no}: {len(values)} {'values' if regression else 'labels'} where line "
                                  f"{out[0].line} has {len(out[0].label)}; caffe_ocr's ImageData needs as many on "
                                  "every line (pad a text line's labels, e.g. with the blank)")
        out.append(entry)
    if not out:
        raise DataSourceError(f"{what}: list file '{path}' names no images")
    return out


def parse_convert_line(raw: bytes) -> tuple[str, list[int]] | None:
    """The fork's convert_imageset line: the file name runs to the first ' ' after the line's last '.', the
    labels are the ints read after it (None: a line without '.', which the fork reports and skips). Without a
    ' ' there the file name is the whole line and the ints are read from the line's start, as the fork's
    ``substr(npos + 1)`` does."""
    dot = raw.rfind(b".")
    if dot < 0:
        return None
    blank = raw.find(b" ", dot + 1)
    name, rest = (raw, raw) if blank < 0 else (raw[:blank], raw[blank + 1:])
    return name.decode("utf-8", "surrogateescape"), _istream_numbers(rest, 0, False)


# -- images (the fork's io.cpp) -------------------------------------------------------------------
def fork_read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray | None:
    """The fork's ReadImageToCVMat: both sizes positive: resized to them; ``height`` > 0 with ``width`` -1:
    height ``height``, width ``height * cols / rows``; one of them positive otherwise: the shorter side to the
    larger of the two (the other by the same integer ratio); else as read. INTER_LINEAR, as ``cv::resize``."""
    import cv2

    img = imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    h0, w0 = img.shape[:2]
    if height > 0 and width > 0:
        size = (width, height)
    elif height > 0 and width == -1:
        size = (height * w0 // h0, height)
    elif height > 0 or width > 0:
        std = max(width, height)
        size = (std * w0 // h0, std) if w0 >= h0 else (std, std * h0 // w0)
    else:
        return img
    return cv2.resize(img, size)


def fork_image_to_datum(path: str, height: int = 0, width: int = 0, is_color: bool = True,
                        encoding: str = "") -> Any:
    """The fork's ReadImageToDatum without its labels (:func:`multilabel_record` adds them): the file's own
    bytes where nothing would change them, an image re-encoded as ``encoding``, or raw pixels. None: unreadable."""
    img = fork_read_image(path, height, width, is_color)
    if img is None:
        return None
    if encoding:
        channels = 1 if img.ndim == 2 else img.shape[2]
        ext = path[path.rfind("."):].lower() if "." in path else path.lower()  # the fork's matchExt
        enc = encoding.lower()
        same_ext = ext == enc or (enc == "jpg" and ext == "jpeg")
        if (channels == 3) == is_color and not height and not width and same_ext:
            return file_to_datum(path)
        return encode_array_to_datum(hwc_to_chw(img), 0, encoding)
    return array_to_datum(hwc_to_chw(img))


# -- batches --------------------------------------------------------------------------------------
class MultiLabelDBBatchMaker(DBBatchMaker):
    """:class:`DBBatchMaker` whose items carry every label of their record (``n_labels`` each, as the first
    record of the database: a record holding another count is a DatumError naming it)."""

    def __init__(self, *args: Any, n_labels: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_labels = int(n_labels)

    def decode(self, key: bytes, value: bytes) -> tuple[DecodedDatum, str]:
        d, name = super().decode(key, value)
        labels = datum_labels(value, name)
        if len(labels) != self.n_labels:
            raise DatumError(f"{name}: holds {len(labels)} labels where the database's first record holds "
                             f"{self.n_labels}; caffe_ocr's Data needs as many in every record")
        return replace(d, label=np.asarray(labels, np.int64)), name  # type: ignore[arg-type]  # (L,) labels


def multilabel_example() -> str:
    """caffe_ocr's sources for the contract examples, beside the example folder's images (written once):
    ``ocr_lmdb`` (their raw datums, 4 labels each), ``ocr_list.txt`` (3 labels a line), ``ocr_values.txt``
    (2 regression values a line). Returns the folder."""
    import os

    import cv2

    from neocaffe.data.db_writer import DBWriter
    from neocaffe.data.examples import example_folder

    folder = example_folder()
    if not os.path.exists(os.path.join(folder, "ocr_values.txt")):
        with DBWriter(os.path.join(folder, "ocr_lmdb"), "lmdb") as db:
            for i in range(5):
                img = hwc_to_chw(cv2.imread(os.path.join(folder, f"img{i}.png")))
                db.put(f"{i:08d}_img{i}.png", multilabel_record(array_to_datum(img), [i + 1, 2 * i, 0, -i]))
        with open(os.path.join(folder, "ocr_list.txt"), "w") as f:
            f.writelines(f"img{i}.png {i + 1} {(3 * i) % 5} 0\n" for i in range(5))
        with open(os.path.join(folder, "ocr_values.txt"), "w") as f:
            f.writelines(f"img{i}.png {0.1 * i:.3f} {-1.5 + i}\n" for i in range(5))
    return folder
