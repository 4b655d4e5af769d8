"""What several tests read or write by hand: a database's records, protobuf varints."""
from __future__ import annotations

from pathlib import Path

from neocaffe.data.sources import DBReader


def db_records(path: str | Path, backend: str | None = None) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an LMDB/LevelDB in key order."""
    with DBReader(str(path), backend) as r:
        return list(r.items())


def varint(v: int) -> bytes:
    """A protobuf base-128 varint (a negative int32 as ten bytes of two's complement, as protobuf writes it)."""
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)
