"""File plumbing shared by the readers and writers: content sniffing, mapped reads, atomic writes."""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from .errors import CaffeFileError, CaffeFileNotFoundError

__all__ = ["HDF5_SIGNATURE", "is_hdf5", "mapped_file", "atomic_output", "atomic_path", "check_readable"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_readable(path: str | os.PathLike[str]) -> str:
    """Return ``os.fspath(path)``; raise `CaffeFileNotFoundError` / `CaffeFileError` if unusable."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise CaffeFileNotFoundError(name)
    if os.path.isdir(name):
        raise CaffeFileError(name, "is a directory", expected="a file")
    return name


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """True if the file carries the HDF5 signature (at byte 0 or a user-block offset 512, 1024, ...)."""
    name = check_readable(path)
    size = os.path.getsize(name)
    with open(name, "rb") as f:
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            if f.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


@contextlib.contextmanager
def mapped_file(path: str | os.PathLike[str]) -> Iterator[tuple[mmap.mmap | bytes, int]]:
    """(the file's bytes as a read-only buffer, its descriptor): an mmap, ``b""`` for an empty file.

    Decoders walk the structure through the map and read big payloads with ``os.preadv`` straight
    into fresh arrays through the descriptor (one copy, no page-fault storm on the map).
    """
    name = check_readable(path)
    with open(name, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield b"", f.fileno()
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mm, f.fileno()
        finally:
            try:
                mm.close()
            except BufferError:  # a caller still holds a view; the GC closes it later
                pass


def _temp_name(final: str) -> str:
    folder = os.path.dirname(os.path.abspath(final))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(final) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[str]:
    """Yield a temporary name beside ``path``; on success it replaces ``path`` (os.replace).

    A failure (or crash) never leaves a truncated file under the final name.
    """
    final = os.fspath(path)
    tmp = _temp_name(final)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        mode = os.stat(tmp).st_mode
        if mode & 0o777 == 0o600:  # mkstemp's private mode; give the usual umask-based one
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[BinaryIO]:
    """A binary file object writing to a temporary name that replaces ``path`` on success."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            yield f
