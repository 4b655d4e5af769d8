"""Image resizing as scikit-image and scipy.ndimage compute it, in NumPy (for ``caffe.io.resize_image``).

``skimage_resize`` is ``skimage.transform.resize(image, shape, order)`` with its defaults as of
scikit-image 0.19+: a Gaussian anti-aliasing prefilter (sigma = (in/out - 1) / 2, truncated at 4
sigma, ``mode='mirror'``) on every axis that shrinks, then an order-0/1 spline zoom on the
half-pixel grid (``grid_mode=True``) with mirrored borders, clipped to the input range.
``ndimage_zoom`` is ``scipy.ndimage.zoom(image, factors, order)`` on its default corner-aligned grid.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["skimage_resize", "ndimage_zoom", "scipy_resize"]


# ---------------------------------------------------------------------------------------------
def _mirror_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Fold indices into [0, n) by mirroring about the edge pixels (d c b | a b c d | c b a)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _gaussian_1d(x: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d(mode='mirror', truncate=4.0) along ``axis``."""
    radius = int(4.0 * sigma + 0.5)
    if radius == 0:
        return x
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets.astype(np.float64) ** 2)
    weights /= weights.sum()
    n = x.shape[axis]
    out = np.zeros(x.shape, dtype=np.float64)
    base = np.arange(n)
    for off, w in zip(offsets, weights):
        out += w * np.take(x, _mirror_index(base + off, n), axis=axis)
    return out


def _linear_1d(x: np.ndarray, coords: np.ndarray, axis: int, mirror: bool) -> np.ndarray:
    """Linear interpolation of ``x`` at ``coords`` along ``axis`` (order-1 spline)."""
    n = x.shape[axis]
    i0 = np.floor(coords).astype(np.int64)
    frac = coords - i0
    if mirror:
        a, b = _mirror_index(i0, n), _mirror_index(i0 + 1, n)
    else:
        a, b = np.clip(i0, 0, n - 1), np.clip(i0 + 1, 0, n - 1)
    shape = [1] * x.ndim
    shape[axis] = len(coords)
    frac = frac.reshape(shape)
    return np.take(x, a, axis=axis) * (1.0 - frac) + np.take(x, b, axis=axis) * frac


def _nearest_1d(x: np.ndarray, coords: np.ndarray, axis: int, mirror: bool) -> np.ndarray:
    n = x.shape[axis]
    idx = np.floor(coords + 0.5).astype(np.int64)
    idx = _mirror_index(idx, n) if mirror else np.clip(idx, 0, n - 1)
    return np.take(x, idx, axis=axis)


def skimage_resize(image: np.ndarray, out_hw: Sequence[int], order: int) -> np.ndarray:
    """skimage.transform.resize(image, out_hw, order) with its defaults (reflect borders,
    anti-aliasing when shrinking, clip); image is float in [0, 1], H x W (x K)."""
    dtype = np.asarray(image).dtype if np.asarray(image).dtype.kind == "f" else np.float64
    x = np.asarray(image, dtype=np.float64)
    bounds = (x.min(), x.max())
    out_shape = tuple(int(d) for d in out_hw) + tuple(x.shape[len(out_hw):])
    if any(o < i for o, i in zip(out_shape, x.shape)):
        for axis, (i, o) in enumerate(zip(x.shape, out_shape)):
            sigma = max(0.0, (i / o - 1.0) / 2.0)
            if sigma > 1e-15:
                # scipy.ndimage stores each axis' result in the image dtype before the next
                x = _gaussian_1d(x, sigma, axis).astype(dtype).astype(np.float64)
    interp = _linear_1d if order == 1 else _nearest_1d
    for axis, (i, o) in enumerate(zip(x.shape, out_shape)):
        if i == o:
            continue
        coords = (np.arange(o, dtype=np.float64) + 0.5) * (i / o) - 0.5
        x = interp(x, coords, axis, mirror=True)
    return np.clip(x, bounds[0], bounds[1])


def ndimage_zoom(image: np.ndarray, out_hw: Sequence[int], order: int) -> np.ndarray:
    """scipy.ndimage.zoom(image, scale + (1,), order) as pycaffe calls it (corner-aligned grid)."""
    x = np.asarray(image, dtype=np.float64)
    interp = _linear_1d if order == 1 else _nearest_1d
    for axis, o in enumerate(int(d) for d in out_hw):
        i = x.shape[axis]
        if i == o:
            continue
        step = (i - 1) / (o - 1) if o > 1 else 0.0
        coords = np.minimum(np.arange(o, dtype=np.float64) * step, i - 1)
        x = interp(x, coords, axis, mirror=False)
    return x


def scipy_resize(im: np.ndarray, new_dims: Sequence[int], order: int, skimage_path: bool) -> np.ndarray:
    try:
        from scipy import ndimage
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise NotImplementedError(
            f"caffe.io.resize_image: interp_order={order} needs SciPy (orders 0 and 1 work without it)"
        ) from e
    zoom = [o / i for o, i in zip(new_dims, im.shape[:2])] + [1.0] * (im.ndim - 2)
    if skimage_path:
        return ndimage.zoom(np.asarray(im, np.float64), zoom, order=order, mode="mirror", grid_mode=True)
    return ndimage.zoom(im, zoom, order=order)
