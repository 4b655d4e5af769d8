"""Binary ``.caffemodel`` (NetParameter) weights: a minimal, fast view and a fast writer.

The view reads only NetParameter ``layer`` (100: LayerParameter ``name``=1, ``type``=2, ``blobs``=7) and
``layers`` (2: V1LayerParameter ``name``=4, ``type``=5 enum, ``blobs``=6, and a V0 ``layer``=1 with
``name``=1, ``type``=2, ``blobs``=50), so files of any Caffe lineage load whatever their other fields say.
Blob payloads are decoded straight from the mapped file with numpy. A V1 layer whose blobs are C3D-v1.0's
5-D BlobProtos (facebookarchive/C3D) takes its type from C3D's enum numbers (30: Convolution3D, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .binaryproto import Blob, LegacyShape, decode_blob, encode_blob
from .errors import CaffeFileError
from .files import atomic_output, mapped_file
from .legacy_types import c3d_v1_type_string, v0_type_string, v1_type_string
from .wire import LEN, VARINT, WireError, decode_string, field_header, file_error, iter_fields

if TYPE_CHECKING:
    from neocaffe.proto.caffe_pb2 import NetParameter

__all__ = ["LayerWeights", "read_caffemodel", "decode_caffemodel", "save_caffemodel",
           "read_net_binary", "write_net_binary"]


@dataclass
class LayerWeights:
    """The learned blobs of one layer, in file order.

    ``blobs[i]`` is shaped as stored: a legacy blob (num/channels/height/width) is 4-D (C3D-v1.0's, with
    ``length``, 5-D) and its dims are repeated in ``legacy_shapes[i]`` (None for blobs stored with BlobShape); use
    `neocaffe.io.weights.fit_blob` to map it onto the shape the layer expects, as Caffe does.
    ``diffs`` holds the stored gradients when asked for (snapshot_diff), else is empty.
    """

    name: str
    type: str
    blobs: list[np.ndarray]
    legacy_shapes: list[LegacyShape | None] = field(default_factory=list)
    diffs: list[np.ndarray | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.legacy_shapes:
            self.legacy_shapes = [None] * len(self.blobs)


def _blobs(buf: Any, spans: list[tuple[int, int]], layer: str, want_diff: bool, fd: int | None) -> list[Blob]:
    out = []
    for i, (a, b) in enumerate(spans):
        out.append(decode_blob(buf, a, b, want_diff, what=f"BlobProto (layer '{layer}', blob {i})", fd=fd))
    return out


def _layer_v2(buf: Any, a: int, b: int) -> tuple[str, str, list[tuple[int, int]]]:
    name, type_, spans = "", "", []
    for f, _, x, y in iter_fields(buf, a, b, "LayerParameter", {1: LEN, 2: LEN, 7: LEN}):
        if f == 1:
            name = decode_string(buf, x, y, "LayerParameter.name")
        elif f == 2:
            type_ = decode_string(buf, x, y, "LayerParameter.type")
        elif f == 7:
            spans.append((x, y))
    return name, type_, spans


def _layer_v0(buf: Any, a: int, b: int) -> tuple[str, str, list[tuple[int, int]]]:
    name, v0_type, spans = "", "", []
    for f, _, x, y in iter_fields(buf, a, b, "V0LayerParameter", {1: LEN, 2: LEN, 50: LEN}):
        if f == 1:
            name = decode_string(buf, x, y, "V0LayerParameter.name")
        elif f == 2:
            v0_type = decode_string(buf, x, y, "V0LayerParameter.type")
        elif f == 50:
            spans.append((x, y))
    type_ = v0_type_string(v0_type)
    return name, type_ if type_ is not None else v0_type, spans


def _v1_type(number: int, c3d: bool) -> str:
    known = c3d_v1_type_string(number) if c3d else v1_type_string(number)
    return known if known is not None else f"<unknown V1 layer type {number}>"


def _layer_v1(buf: Any, a: int, b: int) -> tuple[str, str, list[tuple[int, int]], int | None] | None:
    """(name, type, blob spans, the V1 type number: None for a V0 layer inside)."""
    name, type_, spans, v0, number = "", "", [], None, None
    for f, _, x, y in iter_fields(buf, a, b, "V1LayerParameter", {1: LEN, 4: LEN, 5: VARINT, 6: LEN}):
        if f == 4:
            name = decode_string(buf, x, y, "V1LayerParameter.name")
        elif f == 5:
            number = x
            type_ = _v1_type(x, False)
        elif f == 6:
            spans.append((x, y))
        elif f == 1:
            v0 = (x, y)
    if v0 is not None:  # UpgradeV0LayerParameter: the V0 layer replaces the whole entry
        name, v0_type, spans = _layer_v0(buf, *v0)
        if v0_type == "padding":  # folded into the next conv/pool layer; holds no blobs
            return None
        type_, number = v0_type, None
    return name, type_, spans, number


def decode_caffemodel(buf: Any, want_diff: bool = False, fd: int | None = None) -> list[LayerWeights]:
    """Decode the minimal view of a NetParameter held in ``buf`` (raises `WireError`).

    ``fd``: the descriptor of the file mapped as ``buf``, to read big payloads with preadv.
    """
    layers: list[LayerWeights] = []
    numbers: list[int | None] = []
    for f, _, a, b in iter_fields(buf, 0, len(buf), "NetParameter", {1: LEN, 2: LEN, 100: LEN}):
        if f not in (100, 2):
            continue
        entry = _layer_v2(buf, a, b) + (None,) if f == 100 else _layer_v1(buf, a, b)
        if entry is None:
            continue
        name, type_, spans, number = entry
        blobs = _blobs(buf, spans, name, want_diff, fd)
        numbers.append(number)
        layers.append(LayerWeights(name, type_, [x.data for x in blobs], [x.legacy_shape for x in blobs],
                                   [x.diff for x in blobs] if want_diff else []))
    if any(len(s or ()) == 5 for lw in layers for s in lw.legacy_shapes):  # C3D-v1.0's: its V1 type numbers
        for lw, number in zip(layers, numbers):
            if number is not None:
                lw.type = _v1_type(number, True)
    return layers


def read_caffemodel(path: str | os.PathLike[str], want_diff: bool = False) -> list[LayerWeights]:
    """Read the layers' weights of a binary ``.caffemodel`` (V0, V1 or current format)."""
    name = os.fspath(path)
    with mapped_file(name) as (buf, fd):
        if len(buf) == 0:
            raise CaffeFileError(name, "empty file", expected="a binary NetParameter (.caffemodel)")
        try:
            layers = decode_caffemodel(buf, want_diff, fd)
        except WireError as exc:
            raise file_error(name, exc, "NetParameter", buf) from None
    if not layers:
        raise CaffeFileError(name, "holds no layers", expected="a NetParameter with `layer` (100) or "
                             "`layers` (2) entries", received="none")
    return layers


# ---------------------------------------------------------------- writing


def _split_layer(body: bytes) -> tuple[bytes, bytes]:
    """Split a serialized LayerParameter where ``blobs`` (7) goes in field-number order."""
    split = 0
    for f, _, _, end in iter_fields(body, 0, len(body), "LayerParameter"):
        if f > 7:
            break
        split = end
    return body[:split], body[split:]


def _layer_chunks(name: str, type_: str, blobs: Sequence[np.ndarray], diffs: Sequence[Any] | None,
                  legacy: Sequence[bool], config: bytes | None) -> tuple[list[Any], int]:
    if config is None:
        nb, tb = name.encode(), type_.encode()
        head = field_header(1, LEN, len(nb)) + nb + (field_header(2, LEN, len(tb)) + tb if type_ else b"")
        tail = b""
    else:
        head, tail = _split_layer(config)
    chunks: list[Any] = [head]
    size = len(head)
    for i, arr in enumerate(blobs):
        diff = diffs[i] if diffs is not None and i < len(diffs) else None
        parts, n = encode_blob(arr, legacy=legacy[i] if i < len(legacy) else False, diff=diff)
        hdr = field_header(7, LEN, n)
        chunks.append(hdr)
        chunks.extend(parts)
        size += len(hdr) + n
    if tail:
        chunks.append(tail)
        size += len(tail)
    return chunks, size


def save_caffemodel(path: str | os.PathLike[str], layers: Sequence[LayerWeights], *,
                    net_param: NetParameter | None = None, write_diff: bool = False) -> None:
    """Write a binary ``.caffemodel`` atomically (temporary name + os.replace).

    Without ``net_param`` each layer is written as LayerParameter {name, type, blobs}. With it, the file
    is what Caffe's Net::ToProto writes: ``net_param`` (current format) with each layer's blobs taken
    from ``layers`` by name. Blobs are written with BlobShape and packed float data; legacy blobs keep
    num/channels/height/width. ``write_diff`` adds the ``diffs`` (snapshot_diff).
    """
    by_name: dict[str, list[LayerWeights]] = {}
    for lw in layers:
        by_name.setdefault(lw.name, []).append(lw)
    net_chunks: list[Any] = []
    if net_param is None:
        entries = [(lw, None) for lw in layers]
    else:
        if len(net_param.layers) or len(net_param.input):  # V0/V1 or input fields: write the current form
            from .upgrade import upgrade_net

            net_param, _ = upgrade_net(net_param)
        head = net_param.__class__()
        head.CopyFrom(net_param)
        head.ClearField("layer")
        head.ClearField("layers")
        net_chunks.append(head.SerializeToString())
        entries = []
        for lp in net_param.layer:
            match = by_name.get(lp.name)
            lw = match.pop(0) if match else None
            cfg = lp.__class__()
            cfg.CopyFrom(lp)
            cfg.ClearField("blobs")
            entries.append((lw or LayerWeights(lp.name, lp.type, []), cfg.SerializeToString()))
        left = [lw.name for group in by_name.values() for lw in group]
        if left:
            raise ValueError(f"layers not in net_param: {left}")
    with atomic_output(path) as f:
        for c in net_chunks:
            f.write(c)
        for lw, cfg in entries:
            chunks, size = _layer_chunks(lw.name, lw.type, lw.blobs, lw.diffs if write_diff else None,
                                         [s is not None for s in lw.legacy_shapes], cfg)
            f.write(field_header(100, LEN, size))
            for c in chunks:
                f.write(c)


def read_net_binary(path: str | os.PathLike[str], upgrade: bool = True) -> NetParameter:
    """The full NetParameter message of a binary file (Caffe's ReadNetParamsFromBinaryFileOrDie)."""
    from google.protobuf.message import DecodeError

    from neocaffe.proto.caffe_pb2 import NetParameter

    from .upgrade import upgrade_net

    name = os.fspath(path)
    with mapped_file(name) as (buf, _):
        if len(buf) == 0:
            raise CaffeFileError(name, "empty file", expected="a binary NetParameter")
        try:
            view = decode_caffemodel(buf)  # structural check with a clear message first
        except WireError as exc:
            raise file_error(name, exc, "NetParameter", buf) from None
        if any(len(s or ()) == 5 for lw in view for s in lw.legacy_shapes):
            raise CaffeFileError(name, "is a C3D-v1.0 NetParameter (5-D BlobProtos): its layer parameters and "
                                 "blobs are numbered as C3D's schema, not this one, so the file gives no net "
                                 "definition here; read its weights with load_weights (a net's copy_from, "
                                 "-weights) and take the net from its prototxt",
                                 expected="a NetParameter of BVLC Caffe's numbering", received="C3D-v1.0's")
        net = NetParameter()
        try:
            net.ParseFromString(bytes(buf))
        except DecodeError as exc:
            raise CaffeFileError(name, f"not a valid NetParameter: {exc}") from None
    if upgrade:
        net, _ = upgrade_net(net, source=name)
    return net


def write_net_binary(net: NetParameter, path: str | os.PathLike[str]) -> None:
    """Write a NetParameter message as a binary file, atomically."""
    with atomic_output(path) as f:
        f.write(net.SerializeToString())
