"""Weight files of any kind: load by content sniffing, save atomically, fit blobs the way Caffe does.

`load_weights` reads ``.caffemodel`` (binary NetParameter: V0, V1 or current) or ``.caffemodel.h5``,
told apart by the HDF5 signature, not the extension. `fit_blob` applies Caffe's Blob::ShapeEquals rule
(Net::CopyTrainedLayersFrom): a legacy (num, channels, height, width) blob fits a target shape of at
most 4 axes whose left-1-padded form equals those dims (V1 InnerProduct 1x1xOUTxIN -> OUTxIN, bias
1x1x1xN -> N; C3D-v1.0's five legacy dims alike, 1x1x1x1xN -> N); a BlobShape blob must match exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .caffemodel import LayerWeights, read_caffemodel, save_caffemodel
from .errors import CaffeFileError
from .files import is_hdf5
from .hdf5 import read_caffemodel_h5, save_caffemodel_h5

if TYPE_CHECKING:
    from neocaffe.proto.caffe_pb2 import NetParameter

__all__ = ["LayerWeights", "load_weights", "save_weights", "save_caffemodel", "save_caffemodel_h5",
           "fit_blob", "shape_equals", "weights_by_name"]


def load_weights(path: str | os.PathLike[str], want_diff: bool = False) -> list[LayerWeights]:
    """Read every layer's weights from a ``.caffemodel`` or ``.caffemodel.h5`` (sniffed by content)."""
    if is_hdf5(path):
        return read_caffemodel_h5(path, want_diff=want_diff)
    return read_caffemodel(path, want_diff=want_diff)


def save_weights(path: str | os.PathLike[str], layers: Sequence[LayerWeights], *, hdf5: bool | None = None,
                 net_param: NetParameter | None = None, write_diff: bool = False) -> None:
    """Save as ``.caffemodel.h5`` when ``hdf5`` (default: the name ends in ``.h5``), else binary."""
    if hdf5 is None:
        hdf5 = os.fspath(path).endswith(".h5")
    if hdf5:
        save_caffemodel_h5(path, layers, write_diff=write_diff)
    else:
        save_caffemodel(path, layers, net_param=net_param, write_diff=write_diff)


def _legacy_shape(shape: Sequence[int], axes: int = 4) -> tuple[int, ...] | None:
    if len(shape) > axes:
        return None
    return (1,) * (axes - len(shape)) + tuple(int(d) for d in shape)


def shape_equals(target_shape: Sequence[int], stored_shape: Sequence[int],
                 legacy_shape: Sequence[int] | None) -> bool:
    """Caffe's Blob::ShapeEquals(proto) for a blob of ``target_shape`` (a C3D-v1.0 legacy shape has five
    dims, compared as the fork's Net::CopyTrainedLayersFrom compares its five: 1x1x1x4096x8192 fits 4096x8192)."""
    if legacy_shape is not None:
        return _legacy_shape(target_shape, max(4, len(legacy_shape))) == tuple(legacy_shape)
    return tuple(target_shape) == tuple(stored_shape)


def _shape_string(shape: Sequence[int]) -> str:
    return " ".join(str(d) for d in shape) + f" ({int(np.prod(shape, dtype=np.int64))})"


def fit_blob(array: np.ndarray, target_shape: Sequence[int], legacy_shape: Sequence[int] | None = None, *,
             layer: str = "?", index: int = 0, path: str | None = None, strict: bool = True) -> np.ndarray:
    """Return ``array`` reshaped to ``target_shape`` if Caffe would copy it into such a blob.

    ``strict=False`` accepts any stored shape with the same number of values. A mismatch raises
    `CaffeFileError` naming the layer and both shapes, in Caffe's words.
    """
    target = tuple(int(d) for d in target_shape)
    ok = shape_equals(target, array.shape, legacy_shape)
    if not ok and not strict:
        ok = int(np.prod(target, dtype=np.int64)) == array.size
    if not ok:
        source = tuple(legacy_shape) if legacy_shape is not None else array.shape
        message = (f"Cannot copy param {index} weights from layer '{layer}'; shape mismatch. Source param "
                   f"shape is {_shape_string(source)}; target param shape is {_shape_string(target)}. To "
                   f"learn this layer's parameters from scratch rather than copying from a saved net, "
                   f"rename the layer.")
        if path is None:
            raise ValueError(message)
        raise CaffeFileError(path, message, expected=_shape_string(target), received=_shape_string(source))
    return array.reshape(target)


def weights_by_name(layers: Sequence[LayerWeights], path: str | None = None) -> dict[str, LayerWeights]:
    """Index layers by name. Net::CopyTrainedLayersFrom copies every source layer in file order into the
    first target layer of that name, so a later source layer of the same name wins; so here."""
    out: dict[str, LayerWeights] = {}
    for lw in layers:
        out[lw.name] = lw
    if path is not None and not out:
        raise CaffeFileError(path, "holds no layers")
    return out
