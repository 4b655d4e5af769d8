"""The permutohedral lattice of DeepLab's DenseCRF (Krähenbühl's NIPS 2011 code as DeepLab carries it).

Source: hszhao/PSPNet @ 798bdc9, ``src/caffe/util/permutohedral.cpp`` in its SSE build (every x86-64
build), ported step for step in float32 so the filtered values are the fork's: the lattice is built
from blocks of four points (a last, partial block is filled with points at the origin, whose lattice
vertices join the lattice and carry blurred values, as in the fork), splatting adds each point's
barycentric-weighted values in point order, blurring runs ``v + 0.5 * (n1 + n2)`` along the d + 1 axes,
and slicing sums ``(b * alpha) * v`` over a point's d + 1 vertices, ``alpha = 1 / (1 + 2^-d)``.

The lattice is built once per image on the host (NumPy): its vertices (keyed once per distinct
simplex), their blur neighbours, and a plan for the filter, which runs on the device of its values
with whole-array gathers instead of the fork's per-point loops, in the fork's float32 order of
operations (:meth:`Lattice.splat_blur`, then :meth:`Lattice.slice` for any range of points). The
splat sums each vertex's contributions in point order by rounds: vertices are numbered by their
contribution count, most first, so round r adds every vertex's r-th contribution to a prefix of the
lattice rows (a gather and a multiply per run of rounds, an add per round); rounds that only a few
vertices reach are added by ``index_put_`` in the same order. Where the counts are even (the
Gaussian kernel's grid) the vertices are first cut into blocks in image order, so that a block's
rounds read the values from cache. Vertex numbers are otherwise free: the fork's hash-table order
changes no value.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

F32 = np.float32

#: the splat: rounds with fewer vertices than MIN_ROUND go to a sequential index_put_; vertices are
#: blocked by about BLOCK entries (where that keeps the rounds few); runs of up to BUFFER rows at once
MIN_ROUND, BLOCK, BUFFER = 192, 65536, 65536


def _simplices(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fork's SSE ``init`` for points ``f`` (Np, d), coordinate-major: each point's remainder-0
    point (d, Np) int32, the rank of each of its d + 1 coordinates (d + 1, Np) and its barycentric
    weights (d + 1, Np) float32."""
    npts, d = f.shape
    inv_std = F32(math.sqrt(2.0 / 3.0) * (d + 1))
    scale = [F32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
    inv_d1 = F32(F32(1.0) / F32(d + 1))
    ft = np.ascontiguousarray(f.T)
    # elevate (y = E p), from the last coordinate down, as the fork
    elev = np.empty((d + 1, npts), F32)
    sm = np.zeros(npts, F32)
    for j in range(d, 0, -1):
        cf = ft[j - 1] * scale[j - 1]
        np.subtract(sm, F32(j) * cf, out=elev[j])
        sm += cf
    elev[0] = sm
    # the closest remainder-0 point: round to nearest (ties to even, the SSE conversion)
    v = np.rint(inv_d1 * elev).astype(np.int32)
    rem0 = v * np.int32(d + 1)  # the fork's floats hold these small integers exactly
    delta = elev - rem0.astype(F32)
    rank = np.zeros((d + 1, npts), np.int32)
    for i in range(d):
        for j in range(i + 1, d + 1):
            c = delta[i] < delta[j]
            rank[i] += c
            rank[j] += ~c
    rank += v.sum(0, dtype=np.int32)
    shift = np.int32(d + 1) * ((rank < 0).astype(np.int32) - (rank > d))
    rank += shift
    rem0 += shift
    rem0f = rem0.astype(F32)
    # barycentric coordinates: slot p = d - rank_i gets +v_i, slot p + 1 gets -v_i; each slot gets one of
    # each, so 0 + a - b in either order is a - b; slot 0 then adds 1 + slot d + 1, as the fork
    by_rank = np.empty((d + 1, npts), F32)
    cols = np.arange(npts)
    for i in range(d + 1):
        by_rank.reshape(-1)[rank[i] * npts + cols] = (elev[i] - rem0f[i]) * inv_d1
    bary = np.empty((d + 1, npts), F32)
    for p in range(1, d + 1):
        np.subtract(by_rank[d - p], by_rank[d - p + 1], out=bary[p])
    np.add(by_rank[d], F32(1) + (F32(0) - by_rank[0]), out=bary[0])
    return rem0[:d], rank, bary


def _vertices(rem0: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Each point's d + 1 vertices (remainder r: ``rem0 + canonical[r][rank]``), keyed as mixed-radix
    integers with room for every blur neighbour (one step of +-1 / -+d): the vertex ids (Np, d + 1),
    the sorted keys, the radix weights (0 for the implicit last coordinate) and the key step of -1 on
    every coordinate. The keys are worked out once per distinct simplex (rem0, rank)."""
    d, npts = rem0.shape
    lo = rem0.min(1) - 2 * d - 1
    radix = rem0.max(1) - lo + 2 * d + 2
    span = float(np.prod(radix.astype(np.float64)))
    if span >= 2.0 ** 62:
        raise ValueError(f"DenseCRF: the features span too wide a lattice ({radix.tolist()} vertices per axis); "
                         "check the standard deviations")
    weight = np.zeros(d + 1, np.int64)
    weight[d - 1] = 1
    for i in range(d - 2, -1, -1):
        weight[i] = weight[i + 1] * radix[i + 1]
    base = np.zeros(npts, np.int64)
    for i in range(d):
        base += (rem0[i] - lo[i]) * weight[i]
    simplex, inverse = np.arange(npts), None
    if span * float((d + 1) ** d) < 2.0 ** 62:  # one key per simplex: its rem0 and the ranks of d coordinates
        code = base * (d + 1) ** d
        for i in range(d):
            code += rank[i] * (d + 1) ** i
        uniq_t, inv_t = torch.unique(torch.from_numpy(code), return_inverse=True)
        inverse = inv_t.numpy()
        simplex = np.empty(len(uniq_t), np.int64)
        simplex[inverse] = np.arange(npts)
        base, rank = base[simplex], rank[:, simplex]
    # canonical[r][k] = r, less d + 1 where k > d - r: coordinate i drops by d + 1 from r = d + 1 - rank_i on
    ns = len(simplex)
    which = np.empty((d + 1, ns), np.int64)  # which coordinate holds each rank
    cols = np.arange(ns)
    for i in range(d + 1):
        which.reshape(-1)[rank[i] * ns + cols] = i
    keys = np.empty((ns, d + 1), np.int64)
    keys[:, 0] = base
    step = int(weight.sum())
    for r in range(1, d + 1):
        base = base + step - (d + 1) * weight[which[d + 1 - r]]
        keys[:, r] = base
    uniq_t, ids_t = torch.unique(torch.from_numpy(keys.reshape(-1)), return_inverse=True)
    ids = ids_t.numpy().reshape(ns, d + 1)
    return (ids if inverse is None else ids[inverse]), uniq_t.numpy(), weight, step


class Lattice:
    """The lattice of ``features`` (N, d) float32 and the plan that filters values over it."""

    def __init__(self, features: np.ndarray) -> None:
        f = np.ascontiguousarray(features, F32)
        n, d = f.shape
        self.n, self.d = n, d
        padded = -n % 4  # the fork's SSE loop fills the last block of four with zero features
        rem0, rank, bary = _simplices(np.concatenate([f, np.zeros((padded, d), F32)]) if padded else f)
        ids, uniq, weight, step = _vertices(rem0, rank)
        m = self.m = len(uniq)
        # group the entries by vertex, each group in point order (a stable sort)
        flat = ids.reshape(-1)
        order = (np.argsort(flat.astype(np.uint16), kind="stable") if m <= 1 << 16
                 else torch.sort(torch.from_numpy(flat), stable=True)[1].numpy())
        gid = flat[order]
        every = np.bincount(flat, minlength=m)
        gstart = np.cumsum(every) - every
        entries = n * (d + 1)  # the padded points' entries come last in their groups: left out below
        cnt = np.bincount(flat[:entries], minlength=m) if padded else every
        # number the vertices by block, then by how many of the n points splat onto them, most first,
        # then by their first point (so that the splat reads the values nearly in order)
        block = _blocks(cnt, order[gstart])
        by_count = np.lexsort((order[gstart], -cnt, block))
        renum = np.empty(m + 1, np.int64)
        renum[by_count], renum[m] = np.arange(m), m  # old id -> new id; none (-1) -> m, a zero row
        neighbors = np.empty((d + 1, 2, m), np.int64)
        for j in range(d + 1):
            for side, q in enumerate((uniq - step + (d + 1) * weight[j], uniq + step - (d + 1) * weight[j])):
                pos = np.minimum(np.searchsorted(uniq, q), m - 1)
                neighbors[j, side] = renum[np.where(uniq[pos] == q, pos, -1)][by_count]
        self.neighbors = neighbors  # per axis: both neighbours of each vertex
        vid = renum[gid]
        rnd = np.arange(len(gid)) - gstart[gid]  # the entry's place in its vertex's group
        if padded:
            keep = order < entries
            order, vid, rnd = order[keep], vid[keep], rnd[keep]
        self.offset = np.ascontiguousarray(renum[ids[:n]].T)  # (d + 1, n)
        self.bary = np.ascontiguousarray(bary[:, :n])  # (d + 1, n)
        self.alpha = F32(F32(1) / (F32(1) + F32(2.0) ** F32(-d)))
        self._plan_splat(cnt[by_count], block[by_count], vid, rnd, order, bary[:, :n])
        self._device: dict[str, dict[str, Any]] = {}

    def _plan_splat(self, cnt: np.ndarray, block: np.ndarray, vid: np.ndarray, rnd: np.ndarray,
                    order: np.ndarray, bary: np.ndarray) -> None:
        """The splat's plan. In each block of vertices (numbered by count, most first), the r-th entry
        (in point order) of each vertex with more than r goes to round r, at the round's start plus the
        vertex's place in the block, so that a round adds to a prefix of the block's lattice rows.
        ``steps``: runs of plan rows gathered and weighted at once, each with its rounds' adds (lattice
        row, count, row in the run), or None for a block's tail of small rounds (``index_put_``)."""
        bounds = np.searchsorted(block, np.arange(int(block[-1]) + 2))
        tables, table_at, first = [], np.empty(len(cnt), np.int64), np.empty(len(cnt), np.int64)
        self.steps: list[tuple[int, int, list[tuple[int, int, int]] | None]] = []
        base = at = 0
        for v0, v1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            hist = np.bincount(cnt[v0:v1])
            per_round = (v1 - v0) - np.cumsum(hist)[:-1]  # vertices with more than r entries
            rs = base + np.concatenate([[0], np.cumsum(per_round)])
            tables.append(rs)
            table_at[v0:v1], first[v0:v1] = at, v0
            at, base = at + len(rs), int(rs[-1])
            head = int(np.sum(per_round >= MIN_ROUND))
            r = 0
            while r < head:  # runs of whole rounds, up to BUFFER rows each
                e = r + 1
                while e < head and rs[e + 1] - rs[r] <= BUFFER:
                    e += 1
                self.steps.append((int(rs[r]), int(rs[e]), [(v0, int(per_round[i]), int(rs[i] - rs[r]))
                                                            for i in range(r, e)]))
                r = e
            if rs[head] < rs[-1]:
                self.steps.append((int(rs[head]), int(rs[-1]), None))
        pos = np.concatenate(tables)[table_at[vid] + rnd] + vid - first[vid]
        d1 = self.d + 1
        point = np.empty(len(pos), np.int64)
        point[pos] = order // d1
        wts = np.empty(len(pos), F32)
        wts[pos] = np.ascontiguousarray(bary.T).reshape(-1)[order]
        vertex = np.empty(len(pos), np.int64)
        vertex[pos] = vid
        self._splat = (point, wts, vertex)

    def _on(self, device: torch.device) -> dict[str, Any]:
        """The plan's arrays on ``device``; on the CPU the gathers' indices stay NumPy arrays."""
        key = str(device)
        if key not in self._device:
            point, weight, vertex = self._splat
            arrays = {"weight": weight[:, None], "vertex": vertex, "slice_w": (self.bary * self.alpha)[:, :, None]}
            index = {"point": point, "neighbors": self.neighbors, "offset": self.offset}
            on: dict[str, Any] = {k: torch.from_numpy(a).to(device) for k, a in arrays.items()}
            on.update(index if device.type == "cpu" else {k: torch.from_numpy(a).to(device) for k, a in index.items()})
            self._device[key] = on
        return self._device[key]

    def filter(self, values: Tensor, rows: int = 8192) -> Tensor:
        """Splat ``values`` (N, V) float32, blur, slice: the fork's ``Permutohedral::compute``."""
        lat, out = self.splat_blur(values), torch.empty_like(values)
        work = torch.empty((2, min(rows, self.n), values.shape[1]), dtype=values.dtype, device=values.device)
        for i in range(0, self.n, rows):
            self.slice(lat, i, min(i + rows, self.n), out[i:i + rows], work)
        return out

    def splat_blur(self, values: Tensor) -> Tensor:
        """The lattice (M + 1, V) after splatting ``values`` (N, V) and blurring (row M: no vertex, 0)."""
        t = self._on(values.device)
        k, d, m = values.shape[1], self.d, self.m
        opts = {"dtype": values.dtype, "device": values.device}
        lat = torch.zeros((m + 1, k), **opts)
        buf = torch.empty((max((e - s for s, e, _ in self.steps), default=0), k), **opts)
        for s, e, adds in self.steps:
            g = _gather(buf[:e - s], values, t["point"][s:e]).mul_(t["weight"][s:e])
            if adds is None:
                lat.index_put_((t["vertex"][s:e],), g, accumulate=True)  # in row order: point order
            else:
                for v0, c, r in adds:
                    lat[v0:v0 + c].add_(g[r:r + c])
        other = torch.zeros_like(lat)
        g1, g2 = torch.empty((m, k), **opts), torch.empty((m, k), **opts)
        for j in range(d + 1):
            _gather(g1, lat, t["neighbors"][j, 0])
            _gather(g2, lat, t["neighbors"][j, 1])
            torch.add(lat[:m], g1.add_(g2).mul_(0.5), out=other[:m])
            lat, other = other, lat
        return lat

    def slice(self, lat: Tensor, i: int, e: int, out: Tensor, work: Tensor, scale: Tensor | None = None,
              base: Tensor | None = None) -> None:
        """Points ``i:e`` of the slice of ``lat`` into ``out`` (e - i, V); with ``scale`` (e - i, 1), the
        Potts potential's update ``out += scale * slice`` (``out = base + scale * slice`` with ``base``);
        ``work``: (2, >= e - i, V) scratch."""
        t = self._device.get("cpu") if lat.device.type == "cpu" else None
        t = t or self._on(lat.device)
        off, w = t["offset"], t["slice_w"]
        a, g = work[0, :e - i], work[1, :e - i]
        _gather(a, lat, off[0, i:e]).mul_(w[0, i:e])
        for j in range(1, self.d + 1):
            a.add_(_gather(g, lat, off[j, i:e]).mul_(w[j, i:e]))
        if scale is None:
            out.copy_(a)
        elif base is None:
            out.add_(a.mul_(scale))
        else:
            torch.add(base, a.mul_(scale), out=out)


def _blocks(cnt: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Each vertex's block: vertices in order of their first point, cut every ``BLOCK`` entries; one
    block where the blocks would need many rounds each (vertices with very different counts)."""
    by_first = np.argsort(first, kind="stable")
    block = np.empty(len(cnt), np.int64)
    block[by_first] = (np.cumsum(cnt[by_first]) - cnt[by_first]) // BLOCK
    rounds = np.zeros(int(block.max(initial=0)) + 1, np.int64)
    np.maximum.at(rounds, block, cnt)
    return block if rounds.sum() <= 64 * len(rounds) else np.zeros_like(block)


def _gather(dst: Tensor, src: Tensor, index: Tensor | np.ndarray) -> Tensor:
    """``dst[:] = src[index]`` (rows; on the CPU NumPy's unchecked take, the faster one); returns ``dst``."""
    if isinstance(index, np.ndarray):
        np.take(src.numpy(), index, axis=0, out=dst.numpy(), mode="clip")
    else:
        torch.index_select(src, 0, index, out=dst)
    return dst
