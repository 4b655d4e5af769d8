"""``caffe.coord_map``: how coordinates of one NetSpec top relate to another's, as BVLC pycaffe's
``python/caffe/coord_map.py`` defines it, so FCN-style scripts can compute Crop offsets.

A map is ``(axis, scale, shift)``: output coordinate ``i * scale + shift`` comes from input
coordinate ``i`` along the spatial axes after ``axis``; ``(None, 1, 0)`` is the identity of
point-wise layers. Scale and shift are NumPy arrays (one entry per spatial axis, or one for all).
Convolution, Pooling and Im2col read ``kernel_size``/``stride``/``pad``/``dilation`` (no
``_h``/``_w`` forms), Deconvolution inverts them, Crop reads ``axis``/``offset``; other layers have
no map and stop the walk. ``crop(a, b)`` returns the ``L.Crop`` top that crops ``a`` to ``b``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from caffe.net_spec import Function, Top, layers as L

__all__ = [
    "PASS_THROUGH_LAYERS", "UndefinedMapException", "AxisMismatchException", "conv_params",
    "crop_params", "coord_map", "compose", "inverse", "coord_map_from_to", "crop",
]

CoordMap = tuple  # (axis or None, scale array, shift array)

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split",
                       "TanH", "Threshold"]

_LEGACY = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")


class UndefinedMapException(Exception):
    """A layer type without a coordinate map (InnerProduct, Reshape, ...)."""


class AxisMismatchException(Exception):
    """Two maps along different axes cannot be composed."""


def _own_params(fn: Function, message: str) -> dict[str, Any]:
    """The layer's parameters: the ``<message>`` dict when one was given, else the keywords."""
    nested = fn.params.get(message)
    return nested if isinstance(nested, dict) else fn.params


def conv_params(fn: Function) -> tuple:
    """``(axis, stride, effective kernel extent, pad)`` of a Convolution/Deconvolution/Im2col
    (convolution_param) or Pooling (pooling_param) layer; the extent is ``(k - 1) * dilation + 1``."""
    message = "pooling_param" if fn.type_name == "Pooling" else "convolution_param"
    params = _own_params(fn, message)
    legacy = sorted(set(_LEGACY) & (set(fn.params) | set(params)))
    if legacy:
        raise AssertionError(f"coord_map: {fn.type_name} layer gives {legacy}; cropping does not "
                             "support legacy _h/_w params (use kernel_size/stride/pad lists)")
    if "kernel_size" not in params:
        raise AssertionError(f"coord_map: {fn.type_name} layer has no kernel_size; received "
                             f"parameters {sorted(params)}")
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    stride = np.array(params.get("stride", 1), ndmin=1)
    pad = np.array(params.get("pad", 0), ndmin=1)
    return params.get("axis", 1), stride, (kernel - 1) * dilation + 1, pad


def crop_params(fn: Function) -> tuple:
    """``(axis, offset)`` of a Crop layer (crop_param), with Caffe's defaults axis 2, offset 0."""
    params = _own_params(fn, "crop_param")
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn: Function) -> CoordMap:
    """The map from ``fn``'s bottom coordinates to its top coordinates."""
    kind = fn.type_name
    if kind in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if kind == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if kind == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # the map's axis is the last one not cropped
    raise UndefinedMapException(f"coord_map: layer type {kind!r} has no coordinate map")


def compose(base_map: CoordMap, next_map: CoordMap) -> CoordMap:
    """``next_map`` applied after ``base_map``: scales multiply, the second shift is scaled by the
    first scale. Maps along different axes raise AxisMismatchException."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"coord_map: cannot compose a map along axis {ax1} with one "
                                    f"along axis {ax2}")
    axis = ax2 if ax1 is None else ax1
    return axis, a1 * a2, a1 * b2 + b1


def inverse(cmap: CoordMap) -> CoordMap:
    """The map back: scale ``1/a``, shift ``-b/a``."""
    axis, a, b = cmap
    return axis, 1 / a, -b / a


def _mapped_bottoms(top: Top) -> tuple:
    """Bottoms the walk follows: all of them, except Crop's second (reference-shape) bottom."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _ancestor_maps(top: Top) -> dict:
    """Every blob reachable backwards from ``top`` through mappable layers, with its map to ``top``."""
    maps = {top: (None, 1, 0)}
    frontier = [top]
    while frontier:
        current = frontier.pop()
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(current):
            maps[bottom] = compose(maps[current], step)
            frontier.append(bottom)
    return maps


def coord_map_from_to(top_from: Top, top_to: Top) -> CoordMap:
    """The map taking ``top_from``'s coordinates to ``top_to``'s, through their nearest common
    ancestor blob; RuntimeError when no spatial path joins them."""
    from_maps = _ancestor_maps(top_from)
    to_maps = {top_to: (None, 1, 0)}
    frontier = [top_to]
    while frontier:
        current = frontier.pop()
        if current in from_maps:
            return compose(to_maps[current], inverse(from_maps[current]))
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(current):
            to_maps[bottom] = compose(to_maps[current], step)
            frontier.append(bottom)
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top) -> Top:
    """An ``L.Crop(top_from, top_to)`` whose axis and offsets align ``top_from`` to ``top_to``.
    AssertionError (as pycaffe) when the scales differ or the offset is negative or fractional."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    if not (a == 1).all():
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not (b <= 0).all():
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not (np.round(b) == b).all():
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    offsets = [int(v) for v in -np.round(b).astype(int)]
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offsets))
