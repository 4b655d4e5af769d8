"""Caffe's list files as data sources: ImageData's image list (``<file> <label>`` per line) and HDF5Data's list
of HDF5 files (``hdf5_data_param.source``). Every error names the file and, where there is one, the line.
``neocaffe.data.sources`` re-exports them."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import DataSourceError

__all__ = ["ListEntry", "read_image_list", "read_hdf5_list"]


@dataclass(frozen=True)
class ListEntry:
    """One image of a list file: its path as written, its label, and where it was written."""

    path: str
    label: int
    line: int


def _read_text(path: str, what: str) -> list[str]:
    if not os.path.exists(path):
        raise DataSourceError(f"{what}: no such list file: '{path}' (cwd {os.getcwd()})")
    if os.path.isdir(path):
        raise DataSourceError(f"{what}: '{path}' is a directory; expected a list file")
    with open(path, "r", encoding="utf-8", errors="surrogateescape") as f:
        return f.read().splitlines()


def read_image_list(path: str, what: str = "image list") -> list[ListEntry]:
    """``<file> <label>`` per line (the label after the last whitespace, so names may hold spaces).
    Blank lines are skipped; any other malformed line is an error naming ``path:line``."""
    entries: list[ListEntry] = []
    for no, raw in enumerate(_read_text(path, what), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataSourceError(f"{path}:{no}: expected '<image file> <integer label>'; received '{raw}'")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataSourceError(
                f"{path}:{no}: label '{parts[1]}' is not an integer; expected '<image file> <integer label>'"
            ) from None
        entries.append(ListEntry(parts[0], label, no))
    if not entries:
        raise DataSourceError(f"{what}: list file '{path}' names no images")
    return entries


def read_hdf5_list(path: str, what: str = "hdf5_data_param.source") -> list[tuple[str, int]]:
    """HDF5 file names, one per line (blank lines skipped), with their line numbers."""
    files = [(ln.strip(), no) for no, ln in enumerate(_read_text(path, what), 1) if ln.strip()]
    if not files:
        raise DataSourceError(f"{path}: must list at least 1 HDF5 file name")
    return files
