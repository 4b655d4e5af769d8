"""CRF-RNN's ``ModifiedPermutohedral`` lattice: filtering and its reverse (transposed) pass.

Source: torrvision/caffe ``master`` @ d779ee369bf86739bc225d99e78aefa040da199f,
``src/caffe/util/modified_permutohedral.cpp`` and ``include/caffe/util/modified_permutohedral.hpp``,
in its SSE build (every x86-64 build: the non-SSE ``init`` does not compile, it reads an undeclared
``feature``).

The lattice build is the arithmetic of DeepLab's ``Permutohedral::init`` (SSE) step for step: blocks of
four points whose last, partial block is filled with points at the origin (their vertices join the
lattice), elevation, rounding ties to even, ranks, barycentric weights in float32, vertices keyed on
their first d coordinates. So the build reuses :func:`neocaffe.layers._permutohedral._simplices` and
``_vertices``, and finds the blur neighbours the same way. The filter differs from DeepLab's:

* ``compute(out, in, value_size, reverse, add)``: with ``reverse`` the d + 1 blur passes run from axis
  d down to 0 (forward: 0 up to d). Each pass ``v + 0.5 * (n1 + n2)`` is symmetric (a vertex is its
  neighbour's neighbour), so the reverse pass is the transpose of the forward filter (exactly, but for
  the float32 rounding of ``b * alpha`` in sseCompute's slice weights: < 1e-7 here), which the fork's
  backward uses; the forward filter itself is not symmetric (the blur passes do not commute);
* ``value_size <= 2`` runs ``seqCompute``: the slice adds ``(b * v) * alpha`` of each vertex into the
  output itself (``add``: onto its value); otherwise ``sseCompute``: ``(b * alpha) * v`` summed from 0,
  then stored or (``add``) added;
* values are channel-major (``in[k * N + i]``), as a Caffe blob; ``alpha = 1 / (1 + 2^-d)``.

The fork's ``double`` overloads still splat, blur and slice in float; here the values keep their dtype
(float32: the fork's arithmetic; float64: the same operator in double, for gradient checks).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from neocaffe.layers._permutohedral import _simplices, _vertices

F32 = np.float32


class CrfLattice:
    """The lattice of ``features`` (N, d) float32 (``ModifiedPermutohedral::init``)."""

    def __init__(self, features: np.ndarray) -> None:
        f = np.ascontiguousarray(features, F32)
        n, d = f.shape
        self.n, self.d = n, d
        if n and not np.abs(f).max() <= 1e6:  # elevated, rounded to int32, keyed as int64
            raise ValueError(f"features must be finite and within +-1e6; received max |f| {np.abs(f).max():g}")
        padded = -n % 4  # the SSE loop's last block of four: the missing points sit at the origin
        rem0, rank, bary = _simplices(np.concatenate([f, np.zeros((padded, d), F32)]) if padded else f)
        ids, uniq, weight, step = _vertices(rem0, rank)
        m = self.m = len(uniq)
        neighbors = np.empty((d + 1, 2, m), np.int64)  # per axis: n1 (key - 1, axis + d), n2; m: none
        for j in range(d + 1):
            for side, q in enumerate((uniq - step + (d + 1) * weight[j], uniq + step - (d + 1) * weight[j])):
                pos = np.minimum(np.searchsorted(uniq, q), m - 1)
                neighbors[j, side] = np.where(uniq[pos] == q, pos, m)
        self.neighbors = neighbors
        self.offset = np.ascontiguousarray(ids[:n].astype(np.int64))  # (n, d + 1) vertex of each remainder
        self.bary = np.ascontiguousarray(bary[:, :n].T)  # (n, d + 1) float32
        self.alpha = F32(F32(1) / (F32(1) + F32(2.0) ** F32(-d)))
        self._on: dict[tuple[str, torch.dtype], dict[str, Any]] = {}

    def _tables(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        key = (str(device), dtype)
        if key not in self._on:
            d1 = self.d + 1
            t = {"offset": torch.from_numpy(self.offset.T.copy()).to(device),  # (d + 1, n)
                 "flat": torch.from_numpy(self.offset.reshape(-1)).to(device),  # point-major entries
                 "point": torch.arange(self.n, device=device).repeat_interleave(d1),
                 "w": torch.from_numpy(self.bary.reshape(-1, 1)).to(device, dtype),
                 "bw": torch.from_numpy(self.bary.T[:, :, None].copy()).to(device, dtype),  # (d + 1, n, 1)
                 "bwa": torch.from_numpy((self.bary.T * self.alpha)[:, :, None]).to(device, dtype),
                 "alpha": torch.tensor(float(self.alpha), dtype=dtype, device=device),
                 "neighbors": torch.from_numpy(self.neighbors).to(device)}
            self._on[key] = t
        return self._on[key]

    def compute(self, values: Tensor, reverse: bool = False, out: Tensor | None = None) -> Tensor:
        """``compute(out, values, V, reverse, add)`` for ``values`` (V, N): the filtered (V, N); with
        ``out`` (V, N) the fork's ``add``: the result is added onto ``out`` (a new tensor is returned)."""
        t = self._tables(values.device, values.dtype)
        k, m = values.shape[0], self.m
        rows = values.t()  # (N, V)
        # splat: each point's d + 1 entries in point order, ``values[o] += w * in``
        lat = torch.zeros((m + 1, k), dtype=values.dtype, device=values.device)
        lat.index_add_(0, t["flat"], rows.index_select(0, t["point"]) * t["w"])
        # blur: ``new = old + 0.5 * (n1 + n2)`` along each axis (row m: no vertex, 0)
        other = torch.zeros_like(lat)
        for j in (range(self.d, -1, -1) if reverse else range(self.d + 1)):
            nb = t["neighbors"][j]
            s = lat.index_select(0, nb[0]).add_(lat.index_select(0, nb[1]))
            torch.add(lat[:m], s, alpha=0.5, out=other[:m])  # 0.5 * s is exact: one rounding, as the fork
            lat, other = other, lat
        off = t["offset"]
        if k <= 2:  # seqCompute: ``out += (w * v) * alpha`` per vertex
            acc = out.t().clone() if out is not None else torch.zeros_like(rows)
            for j in range(self.d + 1):
                acc.add_(lat.index_select(0, off[j]).mul_(t["bw"][j]).mul_(t["alpha"]))
        else:  # sseCompute: ``sum (w * alpha) * v`` from 0, then stored or added
            acc = lat.index_select(0, off[0]).mul_(t["bwa"][0])
            for j in range(1, self.d + 1):
                acc.add_(lat.index_select(0, off[j]).mul_(t["bwa"][j]))
            if out is not None:
                acc = out.t() + acc
        return acc.t().contiguous()


def spatial_features(height: int, width: int, theta_gamma: float) -> np.ndarray:
    """``compute_spatial_kernel``: (x / theta_gamma, y / theta_gamma) per pixel, float32 (``p % W``,
    ``p / W`` as float, divided by the float theta)."""
    x = np.tile(np.arange(width, dtype=F32), height)
    y = np.repeat(np.arange(height, dtype=F32), width)
    g = F32(theta_gamma)
    return np.stack([x / g, y / g], 1)


def bilateral_features(image: np.ndarray, theta_alpha: float, theta_beta: float) -> np.ndarray:
    """``compute_bilateral_kernel`` for one image (>= 3, H, W): (x / theta_alpha, y / theta_alpha, c0 / theta_beta,
    c1 / theta_beta, c2 / theta_beta), the positions divided in float32 and the colours in the image's
    dtype (the fork's Dtype), then stored as float."""
    _, h, w = image.shape
    out = np.empty((h * w, 5), F32)
    out[:, :2] = spatial_features(h, w, theta_alpha)
    beta = image.dtype.type(F32(theta_beta))
    out[:, 2:] = (image[:3].reshape(3, -1) / beta).T
    return out


def normalizer(lattice: CrfLattice, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``1 / (compute(ones) + 1e-20)`` per point (N,): the fork's normalisation (value_size 1: seqCompute)."""
    ones = torch.ones((1, lattice.n), dtype=dtype, device=device)
    return (lattice.compute(ones)[0] + 1e-20).reciprocal_()
