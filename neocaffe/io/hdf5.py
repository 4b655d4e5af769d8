"""HDF5 weights (``.caffemodel.h5``) in Caffe's layout (Net::ToHDF5 / CopyTrainedLayersFromHDF5).

Layout: group ``data/<layer_name>`` per layer (empty for parameter-less layers) holding float32
datasets ``0``, ``1``, ... one per blob; ``diff/<layer_name>/<i>`` as well when snapshot_diff is set.
HDF5 keeps no creation order here (Caffe does not ask for it), so layers come back in name order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .caffemodel import LayerWeights
from .errors import CaffeFileError
from .files import atomic_path, check_readable, is_hdf5

__all__ = ["read_caffemodel_h5", "save_caffemodel_h5", "open_h5", "read_numbered", "dataset_array",
           "dataset_problem", "H5_READ_ERRORS"]

# What h5py raises on a damaged file (bad object headers, B-tree nodes, checksums, links).
H5_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError, MemoryError,
                  OverflowError)


def dataset_problem(ds: Any, file_size: int) -> str | None:
    """Why reading ``ds`` would be unsafe (its shape promises more bytes than its storage holds, as a
    damaged dataspace does), or None. Contiguous storage must hold every byte; chunked storage may
    be compressed, so only sizes beyond any plausible ratio are refused before allocating them."""
    try:
        nbytes = int(np.prod(ds.shape, dtype=np.float64) * ds.dtype.itemsize)
        stored = int(ds.id.get_storage_size())
        chunked = ds.chunks is not None
    except H5_READ_ERRORS as exc:
        return f"its layout cannot be read ({exc})"
    if not chunked and stored and stored < nbytes:
        return (f"its shape {tuple(ds.shape)} needs {nbytes} bytes but its storage holds {stored}")
    if nbytes > 1000 * max(stored, file_size) + (1 << 30):
        return f"its shape {tuple(ds.shape)} needs {nbytes} bytes, far more than the {file_size}-byte file holds"
    return None


@contextmanager
def open_h5(path: str | os.PathLike[str], what: str) -> Iterator[Any]:
    """Open an HDF5 file for reading; errors become one `CaffeFileError` line."""
    import h5py

    name = check_readable(path)
    if not is_hdf5(name):
        with open(name, "rb") as f:
            head = f.read(8)
        raise CaffeFileError(name, "not an HDF5 file", expected=f"a {what} starting with the HDF5 signature",
                             received=f"first bytes {head!r}")
    try:
        h5 = h5py.File(name, "r")
    except OSError as exc:
        raise CaffeFileError(name, f"unreadable HDF5 file ({exc})", expected=f"a complete {what}") from None
    try:
        yield h5
    except CaffeFileError:
        raise
    except H5_READ_ERRORS as exc:  # a damaged object header, B-tree or link met while reading
        raise CaffeFileError(name, f"damaged HDF5 file ({type(exc).__name__}: {exc})",
                             expected=f"a complete {what}") from None
    finally:
        h5.close()


def dataset_array(path: str, ds: Any, where: str) -> np.ndarray:
    """A dataset as float32 (float64 kept), as Caffe's hdf5_load_nd_dataset reads float classes."""
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise CaffeFileError(path, f"{where} is a group", expected="a dataset")
    if ds.dtype.kind not in "fiu":
        raise CaffeFileError(path, f"{where} has unsupported type {ds.dtype}", expected="float data")
    problem = dataset_problem(ds, os.path.getsize(path))
    if problem is not None:
        raise CaffeFileError(path, f"{where} is damaged: {problem}", expected="a complete dataset")
    try:
        arr = ds[()]
    except H5_READ_ERRORS as exc:
        raise CaffeFileError(path, f"cannot read {where} ({exc})", expected="a complete dataset") from None
    arr = np.asarray(arr)
    return arr if arr.dtype == np.float64 else arr.astype(np.float32, copy=False)


def read_numbered(path: str, group: Any, where: str) -> list[np.ndarray]:
    """Datasets ``0..n-1`` of a group, in number order (HDF5 lists ``10`` before ``2``)."""
    names = list(group.keys())
    try:
        order = sorted(names, key=int)
    except ValueError:
        raise CaffeFileError(path, f"{where} holds non-numbered entries {names}",
                             expected="datasets named 0, 1, 2, ...") from None
    if [int(n) for n in order] != list(range(len(order))):
        raise CaffeFileError(path, f"{where} numbering has gaps", expected=f"0..{len(order) - 1}",
                             received=order)
    return [dataset_array(path, group[n], f"{where}/{n}") for n in order]


def read_caffemodel_h5(path: str | os.PathLike[str], want_diff: bool = False) -> list[LayerWeights]:
    """Read weights from a ``.caffemodel.h5`` (type is unknown in this format: ``""``)."""
    import h5py

    name = os.fspath(path)
    with open_h5(name, "Caffe HDF5 weight file") as h5:
        data = h5.get("data")
        if not isinstance(data, h5py.Group):
            raise CaffeFileError(name, "no 'data' group", expected="a .caffemodel.h5 with data/<layer>/<i>",
                                 received=f"top-level entries {sorted(h5.keys())}")
        diff = h5.get("diff") if want_diff else None
        layers = []
        for layer in data.keys():
            group = data[layer]
            if not isinstance(group, h5py.Group):
                raise CaffeFileError(name, f"data/{layer} is a dataset", expected="a group per layer")
            blobs = read_numbered(name, group, f"data/{layer}")
            diffs: list[np.ndarray | None] = []
            if want_diff:
                d = diff.get(layer) if isinstance(diff, h5py.Group) else None
                diffs = read_numbered(name, d, f"diff/{layer}") if d is not None else [None] * len(blobs)
            layers.append(LayerWeights(layer, "", blobs, [None] * len(blobs), diffs))
    return layers


def save_caffemodel_h5(path: str | os.PathLike[str], layers: Sequence[LayerWeights], *,
                       write_diff: bool = False) -> None:
    """Write weights in Caffe's HDF5 layout, atomically (temporary name + os.replace)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            data = h5.create_group("data")
            diff = h5.create_group("diff") if write_diff else None
            for lw in layers:
                if lw.name in data:
                    raise ValueError(f"duplicate layer name '{lw.name}' cannot be stored in HDF5")
                g = data.create_group(lw.name)
                gd = diff.create_group(lw.name) if diff is not None else None
                for i, blob in enumerate(lw.blobs):
                    g.create_dataset(str(i), data=np.ascontiguousarray(blob, dtype=np.float32))
                    if gd is not None:
                        d = lw.diffs[i] if i < len(lw.diffs) and lw.diffs[i] is not None else np.zeros_like(blob)
                        gd.create_dataset(str(i), data=np.ascontiguousarray(d, dtype=np.float32))
