"""The permutohedral lattice of DeepLab's DenseCRF (Krähenbühl's NIPS 2011 code as DeepLab carries it).

Source: hszhao/PSPNet @ 798bdc9, ``src/caffe/util/permutohedral.cpp`` in its SSE build (every x86-64
build), ported step for step in float32 so the filtered values are the fork's: the lattice is built
from blocks of four points (a last, partial block is filled with points at the origin, whose lattice
vertices join the lattice and carry blurred values, as in the fork), splatting adds each point's
barycentric-weighted values in point order, blurring runs ``v + 0.5 * (n1 + n2)`` along the d + 1 axes,
and slicing sums ``(b * alpha) * v`` over a point's d + 1 vertices, ``alpha = 1 / (1 + 2^-d)``.
The lattice is built on the host (NumPy); :meth:`Lattice.filter` runs on the device of its values.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

F32 = np.float32


def _pack(keys: np.ndarray, lo: np.ndarray, radix: np.ndarray) -> np.ndarray:
    """Integer rows as one int64 each (mixed radix over ``keys - lo``)."""
    out = np.zeros(len(keys), np.int64)
    for i in range(keys.shape[1]):
        out = out * radix[i] + (keys[:, i] - lo[i])
    return out


class Lattice:
    """The lattice of ``features`` (N, d) float32: each point's d + 1 vertex ids and barycentric
    weights, and each vertex's two blur neighbours along each of the d + 1 axes (-1: none)."""

    def __init__(self, features: np.ndarray) -> None:
        f = np.ascontiguousarray(features, F32)
        n, d = f.shape
        self.n, self.d = n, d
        padded = -n % 4  # the fork's SSE loop fills the last block of four with zero features
        f = np.concatenate([f, np.zeros((padded, d), F32)]) if padded else f
        inv_std = F32(math.sqrt(2.0 / 3.0) * (d + 1))
        scale = np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std) for i in range(d)], F32)
        inv_d1, d1 = F32(F32(1.0) / F32(d + 1)), F32(d + 1)
        # elevate (y = E p), from the last coordinate down, as the fork
        elev = np.zeros((len(f), d + 1), F32)
        sm = np.zeros(len(f), F32)
        for j in range(d, 0, -1):
            cf = f[:, j - 1] * scale[j - 1]
            elev[:, j] = sm - F32(j) * cf
            sm = sm + cf
        elev[:, 0] = sm
        # the closest remainder-0 point: round to nearest (ties to even, the SSE conversion)
        v = np.rint(inv_d1 * elev)
        rem0 = v * d1
        total = np.zeros(len(f), F32)
        for i in range(d + 1):
            total = total + v[:, i]
        delta = elev - rem0
        rank = np.zeros_like(elev)
        for i in range(d):
            for j in range(i + 1, d + 1):
                c = (delta[:, i] < delta[:, j]).astype(F32)
                rank[:, i] += c
                rank[:, j] += F32(1) - c
        rank += total[:, None]
        shift = (rank < 0).astype(F32) * d1 - (rank >= d1).astype(F32) * d1
        rank += shift
        rem0 += shift
        # barycentric coordinates
        bary = np.zeros((len(f), d + 2), F32)
        rows = np.arange(len(f))
        for i in range(d + 1):
            vi = (elev[:, i] - rem0[:, i]) * inv_d1
            p = d - rank[:, i].astype(np.int64)
            bary[rows, p] += vi
            bary[rows, p + 1] -= vi
        bary[:, 0] += F32(1) + bary[:, d + 1]
        # the d + 1 vertices of each point: remainder r adds the canonical simplex's row r
        canon = np.array([[r if j <= d - r else r - (d + 1) for j in range(d + 1)] for r in range(d + 1)], np.int64)
        rk = rank[:, :d].astype(np.int64)
        keys = np.stack([rem0[:, :d].astype(np.int64) + canon[r][rk] for r in range(d + 1)], 1)  # (Np, d+1, d)
        flat = keys.reshape(-1, d)
        lo = flat.min(0) - d - 1
        radix = flat.max(0) - lo + d + 2
        if float(np.prod(radix.astype(np.float64))) >= 2.0 ** 62:
            raise ValueError(f"DenseCRF: the features span too wide a lattice ({radix.tolist()} vertices per axis); "
                             "check the standard deviations")
        packed = _pack(flat, lo, radix)
        uniq, ids = np.unique(packed, return_inverse=True)
        self.m = len(uniq)
        self.offset = ids.reshape(-1, d + 1)[:n]
        self.bary = bary[:n, : d + 1].copy()
        vert = keys.reshape(-1, d)[np.unique(ids, return_index=True)[1]]  # one key per vertex id
        neighbors = []
        for j in range(d + 1):
            n1, n2 = vert - 1, vert + 1
            if j < d:
                n1[:, j], n2[:, j] = vert[:, j] + d, vert[:, j] - d
            found = []
            for nb in (n1, n2):
                q = _pack(nb, lo, radix)
                pos = np.clip(np.searchsorted(uniq, q), 0, self.m - 1)
                found.append(np.where(uniq[pos] == q, pos, -1))
            neighbors.append(np.stack(found, 1))
        self.neighbors = np.stack(neighbors)  # (d + 1, m, 2)
        self.alpha = F32(F32(1) / (F32(1) + F32(2.0) ** F32(-d)))
        self._device: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        key = str(device)
        if key not in self._device:
            self._device[key] = (torch.from_numpy(self.offset + 1).to(device).reshape(-1),
                                 torch.from_numpy(self.bary).to(device),
                                 torch.from_numpy(self.neighbors + 1).to(device))
        return self._device[key]

    def filter(self, values: Tensor, rows: int = 8192) -> Tensor:
        """Splat ``values`` (N, V) float32, blur, slice: the fork's ``Permutohedral::compute``. Splat and
        slice go ``rows`` points at a time (in point order, so every vertex sums in the fork's order)."""
        off, bary, nbr = self._on(values.device)
        n, k = values.shape
        d = self.d
        lat = torch.zeros((self.m + 1, k), dtype=values.dtype, device=values.device)  # row 0: missing vertex
        for i in range(0, n, rows):
            contrib = bary[i:i + rows].unsqueeze(-1) * values[i:i + rows].unsqueeze(1)  # point, then vertex
            lat.index_add_(0, off[i * (d + 1):(i + rows) * (d + 1)], contrib.reshape(-1, k))
        half = torch.tensor(0.5, dtype=values.dtype, device=values.device)
        for j in range(d + 1):
            new = lat.clone()
            new[1:] = lat[1:] + half * (lat[nbr[j, :, 0]] + lat[nbr[j, :, 1]])
            lat = new
        w = bary * torch.tensor(self.alpha, device=values.device)
        off2 = off.reshape(n, d + 1)
        out = torch.empty_like(values)
        for i in range(0, n, rows):
            acc = w[i:i + rows, 0:1] * lat[off2[i:i + rows, 0]]
            for j in range(1, d + 1):
                acc += w[i:i + rows, j:j + 1] * lat[off2[i:i + rows, j]]
            out[i:i + rows] = acc
        return out
