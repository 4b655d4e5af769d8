"""HDF5Data's files: the named datasets of one HDF5 file as float32 arrays (Caffe's
``hdf5_load_nd_dataset``), every failure of a missing, cut or damaged file one DataSourceError naming it."""
from __future__ import annotations

import os

import numpy as np

from neocaffe.io.hdf5 import H5_READ_ERRORS, dataset_problem

from .errors import DataSourceError

__all__ = ["load_hdf5"]


def load_hdf5(path: str, names: list[str], where: str) -> list[np.ndarray]:
    """Datasets ``names`` of an HDF5 file as float32 arrays with the same number of rows (axis 0)."""
    import h5py

    if not os.path.exists(path):
        raise DataSourceError(f"{where}: no such HDF5 file '{path}' (cwd {os.getcwd()})")
    try:
        f = h5py.File(path, "r")
    except H5_READ_ERRORS as e:
        raise DataSourceError(f"{where}: cannot open HDF5 file '{path}': {e}") from None
    try:
        with f:
            out = [_dataset(f, path, name, where) for name in names]
    except DataSourceError:
        raise
    except H5_READ_ERRORS as e:  # a damaged object header, B-tree or link met while reading
        raise DataSourceError(f"{where}: HDF5 file '{path}' is damaged ({type(e).__name__}: {e})") from None
    rows = {a.shape[0] for a in out}
    if len(rows) > 1:
        detail = ", ".join(f"{n}: {a.shape[0]}" for n, a in zip(names, out))
        raise DataSourceError(f"{where}: '{path}' datasets have different numbers of rows ({detail})")
    if out and out[0].shape[0] == 0:
        raise DataSourceError(f"{where}: '{path}' datasets hold no rows")
    return out


def _dataset(f: object, path: str, name: str, where: str) -> np.ndarray:
    """One dataset (a top blob's rows), checked numeric, at least 1-D and backed by its storage."""
    if name not in f:  # type: ignore[operator]
        raise DataSourceError(
            f"{where}: HDF5 file '{path}' has no dataset '{name}' (one per top blob); "
            f"it holds: {', '.join(sorted(f.keys())) or 'nothing'}"  # type: ignore[attr-defined]
        )
    ds = f[name]  # type: ignore[index]
    if not hasattr(ds, "dtype") or ds.dtype.kind not in "fiub":
        raise DataSourceError(f"{where}: '{path}' dataset '{name}' is not numeric")
    problem = dataset_problem(ds, os.path.getsize(path))
    if problem is not None:
        raise DataSourceError(f"{where}: HDF5 file '{path}' dataset '{name}' is damaged: {problem}")
    arr = np.asarray(ds[()], dtype=np.float32)
    if arr.ndim < 1:
        raise DataSourceError(f"{where}: '{path}' dataset '{name}' is a scalar; expected at least 1 axis")
    return np.ascontiguousarray(arr)
