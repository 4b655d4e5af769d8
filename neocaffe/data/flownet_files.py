"""The file formats FlowNet 2.0's reader and writer layers use, byte for byte as the fork writes them.

lmb-freiburg/flownet2 @ b92e198b: ``src/caffe/util/output.cpp`` (``writeFloFile``/``readFloFile``,
``writeFloatFile``/``readFloatFile``, ``writePPM``/``writePPMNorm``, ``writePGM``/``writePGMNorm``) and
``src/caffe/layers/pfmwriter_layer.cpp`` (``writePFMFile`` through CImg's ``save_pfm``):

* ``.flo`` (Middlebury): ``PIEH`` (202021.25 as a float), int32 width, height, then (u, v) float32 pairs
  row by row, little-endian;
* ``.float3``: text lines ``float``, ``3``, width, height, depth, then the floats as stored (C, H, W);
  the reader also takes 2 dimensions (depth 1);
* PFM: ``Pf`` (one channel) or ``PF`` (two channels padded with a zero third, or the first three), ``W H``,
  ``1.0``, rows bottom to top, big-endian floats (CImg's), every value negated (the fork's DispNet
  convention);
* PPM ``P6 `` / PGM ``P5`` with the fork's headers; colours written channel 2, 1, 0 (BGR blobs as RGB).
  Values go to bytes as C's ``(unsigned char)float`` does on x86-64 (truncate to int32, out-of-range
  and NaN to INT_MIN, keep the low byte); ``writePPM`` clamps to [0, 255] first, ``writePGM`` does not.
  The ``Norm`` forms map [min, max] to [0, 255] with the fork's starting max of FLT_MIN.
"""
from __future__ import annotations

import struct

import numpy as np

FLO_MAGIC = b"PIEH"
FLT_MIN, FLT_MAX = np.float32(1.1754944e-38), np.float32(3.4028235e38)


class FlowFileError(ValueError):
    """A file that is not in the format its reader expects."""


def to_uchar(v: np.ndarray) -> np.ndarray:
    """C's ``(unsigned char)`` of float32 values on x86-64 (cvttss2si, then the low byte)."""
    v = np.asarray(v, np.float32)
    ok = np.isfinite(v) & (v > -2147483649.0) & (v < 2147483648.0)
    i = np.where(ok, np.trunc(np.where(ok, v, 0)), -2147483648.0).astype(np.int64)
    return (i & 0xFF).astype(np.uint8)


def write_flo(path: str, flow: np.ndarray) -> None:
    """``writeFloFile``: ``flow`` (2, H, W)."""
    u, v = np.asarray(flow, np.float32)
    h, w = u.shape
    with open(path, "wb") as f:
        f.write(FLO_MAGIC + struct.pack("<ii", w, h) + np.stack([u, v], axis=-1).astype("<f4").tobytes())


def read_flo(path: str) -> np.ndarray:
    """``readFloFile``: (2, H, W) float32 (the magic is not checked, as the fork's)."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 12:
        raise FlowFileError(f"{path}: {len(buf)} bytes; a .flo file has a 12-byte header")
    w, h = struct.unpack("<ii", buf[4:12])
    if w < 0 or h < 0 or len(buf) < 12 + 8 * w * h:
        raise FlowFileError(f"{path}: file corrupted: header says {w} x {h}, file holds {len(buf)} bytes")
    a = np.frombuffer(buf, "<f4", 2 * w * h, 12).reshape(h, w, 2)
    return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32)


def write_float3(path: str, data: np.ndarray) -> None:
    """``writeFloatFile``: ``data`` (Z, Y, X) as ``float``/3/X/Y/Z and the raw floats."""
    z, y, x = np.asarray(data).shape
    with open(path, "wb") as f:
        f.write(f"float\n3\n{x}\n{y}\n{z}\n".encode() + np.asarray(data, "<f4").tobytes())


def read_float(path: str) -> np.ndarray:
    """``readFloatFile``: (Z, Y, X) float32 from a 2- or 3-dimensional ``float`` file."""
    with open(path, "rb") as f:
        lines = [f.readline() for _ in range(2)]
        if lines[0] != b"float\n":
            raise FlowFileError(f"{path}: file has invalid format (first line {lines[0][:20]!r}; expected 'float')")
        try:
            dim = int(lines[1])
        except ValueError:
            raise FlowFileError(f"{path}: file has invalid format (dimension line {lines[1]!r})") from None
        if dim not in (2, 3):
            raise FlowFileError(f"{path}: file not 3-dimensional (it says {dim} dimensions; expected 2 or 3)")
        dims = [int(f.readline()) for _ in range(dim)] + [1] * (3 - dim)
        x, y, z = dims
        raw = f.read(4 * x * y * z)
    if len(raw) < 4 * x * y * z:
        raise FlowFileError(f"{path}: file corrupted: {x} x {y} x {z} floats announced, {len(raw) // 4} present")
    return np.frombuffer(raw, "<f4").reshape(z, y, x).astype(np.float32)


def write_pfm(path: str, data: np.ndarray) -> None:
    """``writePFMFile``: ``data`` (C, H, W), negated, as CImg saves it (rows bottom to top, big-endian)."""
    d = -np.asarray(data, np.float32)
    c, h, w = d.shape
    if c == 1:
        body = d[0][::-1]
    else:
        planes = [d[0], d[1], d[2] if c >= 3 else np.zeros_like(d[0])]
        body = np.stack(planes, axis=-1)[::-1]
    with open(path, "wb") as f:
        f.write(f"P{'f' if c == 1 else 'F'}\n{w} {h}\n1.0\n".encode() + np.ascontiguousarray(body, ">f4").tobytes())


def read_pfm(path: str) -> np.ndarray:
    """A PFM as (C, H, W) float32, top row first (CImg's ``load_pfm``: its ``mirror('y')``), values as stored."""
    with open(path, "rb") as f:
        kind = f.readline().strip()
        w, h = (int(v) for v in f.readline().split())
        scale = float(f.readline())
        raw = f.read()
    c = {b"Pf": 1, b"PF": 3}.get(kind)
    if c is None:
        raise FlowFileError(f"{path}: PFM header not found (first line {kind!r})")
    a = np.frombuffer(raw, ">f4" if scale > 0 else "<f4", c * w * h).reshape(h, w, c)[::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32)


def write_ppm(path: str, data: np.ndarray, scale: float = 1.0) -> None:
    """``writePPM(.., flipRGB=true, scale)``: (3, H, W) clamped to [0, 255] after ``scale``."""
    d = np.asarray(data, np.float32) * np.float32(scale)
    d = np.where(d < 0, np.float32(0), np.where(d > 255, np.float32(255), d))
    _write_pnm(path, b"P6 \n", d[::-1].transpose(1, 2, 0), d.shape[2], d.shape[1])


def write_ppm_norm(path: str, data: np.ndarray) -> None:
    """``writePPMNorm(.., flipRGB=true)``: (3, H, W) mapped from [min, max] of all channels to [0, 255]."""
    d = np.asarray(data, np.float32)
    _write_pnm(path, b"P6\n", _norm(d)[::-1].transpose(1, 2, 0), d.shape[2], d.shape[1])


def write_pgm(path: str, data: np.ndarray, scale: float = 1.0) -> None:
    """``writePGM``: (H, W) times ``scale``, no clamp."""
    d = np.asarray(data, np.float32)
    _write_pnm(path, b"P5\n", d * np.float32(scale), d.shape[1], d.shape[0])


def write_pgm_norm(path: str, data: np.ndarray) -> None:
    """``writePGMNorm``: (H, W) mapped from [min, max] to [0, 255]."""
    d = np.asarray(data, np.float32)
    _write_pnm(path, b"P5\n", _norm(d), d.shape[1], d.shape[0])


def _norm(d: np.ndarray) -> np.ndarray:
    finite = d[~np.isnan(d)]
    lo = min(FLT_MAX, finite.min()) if finite.size else FLT_MAX
    hi = max(FLT_MIN, finite.max()) if finite.size else FLT_MIN
    with np.errstate(all="ignore"):
        return (np.float32(255) * (d - np.float32(lo))) / (np.float32(hi) - np.float32(lo))


def _write_pnm(path: str, magic: bytes, values: np.ndarray, w: int, h: int) -> None:
    with open(path, "wb") as f:
        f.write(magic + f"{w} {h} \n255\n".encode() + to_uchar(values).tobytes())


def read_pnm(path: str) -> np.ndarray:
    """A P5/P6 file as written above: (H, W) or (H, W, 3) uint8 in file order."""
    with open(path, "rb") as f:
        magic = f.readline().strip()
        w, h = (int(v) for v in f.readline().split())
        f.readline()
        raw = f.read()
    c = {b"P5": 1, b"P6": 3}.get(magic)
    if c is None:
        raise FlowFileError(f"{path}: not a P5/P6 file (magic {magic!r})")
    a = np.frombuffer(raw, np.uint8, w * h * c)
    return a.reshape(h, w) if c == 1 else a.reshape(h, w, 3)


__all__ = ["FLO_MAGIC", "FlowFileError", "read_flo", "read_float", "read_pfm", "read_pnm", "to_uchar", "write_flo",
           "write_float3", "write_pfm", "write_pgm", "write_pgm_norm", "write_ppm", "write_ppm_norm"]
