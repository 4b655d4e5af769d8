"""The protobuf wire format of Caffe's binary files (``.caffemodel``, ``.solverstate``, ``.binaryproto``, Datum
records): the field reader (`read_varint`, `next_field`, `iter_fields`, signed and string decoding), the
encoders writers need (`varint`, `field_header`), and `WireError` with `file_error`, which turns it into one
`CaffeFileError` line. Split out of :mod:`neocaffe.io.binaryproto`, which holds the BlobProto decode/encode and
re-exports these names; `FIELD_NAMES` names the fields of Caffe's messages that error messages mention.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Union

from .errors import CaffeFileError

__all__ = [
    "VARINT", "I64", "LEN", "I32", "WireError", "read_varint", "next_field", "iter_fields", "wrong_wire",
    "field_label", "FIELD_NAMES", "as_int32", "as_int64", "decode_string", "varint", "field_header", "file_error",
]

Buffer = Union[bytes, bytearray, memoryview, Any]  # anything indexable that np.frombuffer accepts

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "start-group", 4: "end-group",
               5: "32-bit"}


class WireError(Exception):
    """Malformed wire data at byte ``offset``; callers turn it into a `CaffeFileError`."""

    def __init__(self, message: str, offset: int | None = None, needed: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.needed = needed  # set when the data runs past the end: the size the file should have

    def describe(self) -> str:
        """The message with its byte offset, for `CaffeFileError`."""
        return str(self) if self.offset is None else f"{self} (at byte {self.offset})"


def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode one varint at ``pos``; return (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint", pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes", pos)


def next_field(buf: Buffer, pos: int, end: int, what: str = "message") -> tuple[int, int, int, int]:
    """Decode the field at ``pos``: (field number, wire type, a, b).

    Varint: ``a`` is the value and ``b`` the next position. Length-delimited, 32-bit, 64-bit: the
    payload is ``buf[a:b]`` and ``b`` is the next position.
    """
    tag_pos = pos
    tag, pos = read_varint(buf, pos, end)
    field, wire = tag >> 3, tag & 7
    if field == 0:
        raise WireError(f"invalid field number 0 in {what}", tag_pos)
    if wire == VARINT:
        value, pos = read_varint(buf, pos, end)
        return field, wire, value, pos
    if wire == LEN:
        n, pos = read_varint(buf, pos, end)
        if n > end - pos:
            raise WireError(f"{field_label(what, field)} declares {n} bytes but only {end - pos} remain", tag_pos,
                            needed=len(buf) + n - (end - pos))
        return field, wire, pos, pos + n
    if wire == I32 or wire == I64:
        n = 4 if wire == I32 else 8
        if n > end - pos:
            raise WireError(f"{field_label(what, field)} is cut off ({n} bytes needed, {end - pos} remain)",
                            tag_pos, needed=len(buf) + n - (end - pos))
        return field, wire, pos, pos + n
    raise WireError(f"invalid wire type {wire} ({_WIRE_NAMES.get(wire, 'unknown')}) for "
                    f"{field_label(what, field)}", tag_pos)


FIELD_NAMES = {
    "BlobProto": {1: "num", 2: "channels", 3: "height", 4: "width", 5: "data", 6: "diff", 7: "shape",
                  8: "double_data", 9: "double_diff", 10: "raw_data_type", 11: "raw_diff_type", 12: "raw_data",
                  13: "raw_diff"},
    "NetParameter": {1: "name", 2: "layers", 3: "input", 4: "input_dim", 100: "layer"},
    "LayerParameter": {1: "name", 2: "type", 7: "blobs"},
    "V1LayerParameter": {1: "layer", 4: "name", 5: "type", 6: "blobs"},
    "V0LayerParameter": {1: "name", 2: "type", 50: "blobs"},
    "SolverState": {1: "iter", 2: "learned_net", 3: "history", 4: "current_step", 5: "minimum_loss",
                    6: "iter_last_event"},
}


def field_label(what: str, field: int) -> str:
    """``<what> field <n> (<name>)`` for error messages (the name where `FIELD_NAMES` knows it)."""
    base = what.split(" ")[0]
    name = FIELD_NAMES.get(base, {}).get(field)
    return f"{what} field {field}" + (f" ({name})" if name else "")


def wrong_wire(what: str, field: int, wire: int, expected: int, pos: int) -> WireError:
    return WireError(f"{field_label(what, field)} has wire type {wire} ({_WIRE_NAMES.get(wire, 'unknown')}), expected "
                     f"{_WIRE_NAMES[expected]}", pos)


def iter_fields(buf: Buffer, start: int, end: int, what: str = "message",
                wires: dict[int, int] | None = None) -> Iterator[tuple[int, int, int, int]]:
    """Yield `next_field` results for every field in ``buf[start:end]``.

    ``wires``: the wire type each field we read must have; another one is an error (a foreign file).
    """
    pos = start
    while pos < end:
        field, wire, a, b = next_field(buf, pos, end, what)
        if wires is not None and wires.get(field, wire) != wire:
            raise wrong_wire(what, field, wire, wires[field], pos)
        yield field, wire, a, b
        pos = b


def as_int32(value: int) -> int:
    """A varint as a signed 32-bit integer (proto int32 semantics)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def as_int64(value: int) -> int:
    """A varint as a signed 64-bit integer."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_string(buf: Buffer, a: int, b: int, what: str) -> str:
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} is not valid UTF-8", a) from exc


# ---------------------------------------------------------------- encoding


def varint(value: int) -> bytes:
    """Encode a non-negative (or int64 two's-complement) varint."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_header(field: int, wire: int, length: int | None = None) -> bytes:
    """Tag (and length prefix for length-delimited fields)."""
    head = varint((field << 3) | wire)
    return head + varint(length) if length is not None else head


# ---------------------------------------------------------------- errors


def _looks_like_text(buf: Buffer) -> bool:
    head = bytes(buf[:512])
    return bool(head) and all(32 <= c < 127 or c in (9, 10, 13) for c in head)


def file_error(path: str, exc: WireError, what: str, buf: Buffer) -> CaffeFileError:
    """Turn a `WireError` into one clear `CaffeFileError` line about ``path``."""
    size = len(buf)
    if exc.needed is not None:
        return CaffeFileError(path, f"truncated file: {exc.describe()}",
                              expected=f"a complete {what} of at least {exc.needed} bytes",
                              received=f"{size} bytes")
    received = f"{size} bytes"
    if _looks_like_text(buf):
        received += " of text (a text prototxt?)"
    elif bytes(buf[:8]) == b"\x89HDF\r\n\x1a\n":
        received += " of HDF5"
    return CaffeFileError(path, f"not a valid {what}: {exc.describe()}", expected=f"a binary {what}",
                          received=received)
