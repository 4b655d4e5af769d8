"""Loop-by-loop NumPy port of CRF-RNN's CPU code (torrvision/caffe master @ d779ee36), float32 as the fork's
``float`` instantiation: ``ModifiedPermutohedral::init`` (SSE build) / ``seqCompute`` / ``sseCompute``
(``src/caffe/util/modified_permutohedral.cpp``), ``MeanfieldIteration::Forward_cpu`` / ``Backward_cpu``
(``src/caffe/layers/meanfield_iteration.cpp``) with Caffe's Softmax, Eltwise and GEMMs, and
``MultiStageMeanfieldLayer::Forward_cpu`` / ``Backward_cpu`` (``src/caffe/layers/multi_stage_meanfield.cpp``).
A reference for tests only."""
from __future__ import annotations

import math

import numpy as np

F = np.float32


class Lattice:
    """``ModifiedPermutohedral``: ``init`` (the SSE loop: blocks of four points, zeros past the end) and ``compute``."""

    def __init__(self, features: np.ndarray) -> None:
        feats = np.asarray(features, F)
        n, d = feats.shape
        self.n, self.d = n, d
        canonical = np.zeros((d + 1, d + 1), np.int64)
        for i in range(d + 1):
            for j in range(d + 1):
                canonical[i, j] = i if j <= d - i else i - (d + 1)
        inv_std = F(math.sqrt(2.0 / 3.0) * (d + 1))
        scale = [F(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
        inv_d1, d1 = F(F(1) / F(d + 1)), F(d + 1)
        table: dict[tuple, int] = {}
        self.offset = np.zeros((n, d + 1), np.int64)
        self.bary = np.zeros((n, d + 1), F)
        for k in range(n + (-n % 4)):  # the last block of four is filled with zero features
            f = feats[k] if k < n else np.zeros(d, F)
            elev = np.zeros(d + 1, F)
            sm = F(0)
            for j in range(d, 0, -1):
                cf = F(f[j - 1] * scale[j - 1])
                elev[j] = F(sm - F(j) * cf)
                sm = F(sm + cf)
            elev[0] = sm
            rem0 = np.zeros(d + 1, F)
            total = F(0)
            for i in range(d + 1):
                v = F(np.rint(F(inv_d1 * elev[i])))  # _mm_round_ps: to nearest, ties to even
                rem0[i] = F(v * d1)
                total = F(total + v)
            rank = np.zeros(d + 1, F)
            for i in range(d):
                di = F(elev[i] - rem0[i])
                for j in range(i + 1, d + 1):
                    c = F(1) if di < F(elev[j] - rem0[j]) else F(0)
                    rank[i] += c
                    rank[j] += F(1) - c
            for i in range(d + 1):
                rank[i] = F(rank[i] + total)
                add = d1 if rank[i] < 0 else F(0)
                sub = d1 if rank[i] >= d1 else F(0)
                rank[i] = F(rank[i] + F(add - sub))
                rem0[i] = F(rem0[i] + F(add - sub))
            bary = np.zeros(d + 2, F)
            for i in range(d + 1):
                v = F(F(elev[i] - rem0[i]) * inv_d1)
                p = d - int(rank[i])
                bary[p] = F(bary[p] + v)
                bary[p + 1] = F(bary[p + 1] - v)
            bary[0] = F(bary[0] + F(1 + bary[d + 1]))
            for r in range(d + 1):
                key = tuple(int(rem0[i]) + int(canonical[r, int(rank[i])]) for i in range(d))
                idx = table.setdefault(key, len(table))
                if k < n:
                    self.offset[k, r] = idx
                    self.bary[k, r] = bary[r]
        self.m = len(table)
        keys = sorted(table, key=table.get)
        self.neighbors = np.full((d + 1, self.m, 2), -1, np.int64)
        for j in range(d + 1):
            for i, key in enumerate(keys):
                n1 = [c - 1 for c in key]
                n2 = [c + 1 for c in key]
                if j < d:
                    n1[j], n2[j] = key[j] + d, key[j] - d
                self.neighbors[j, i] = (table.get(tuple(n1), -1), table.get(tuple(n2), -1))
        self.alpha = F(F(1) / F(1 + F(2.0) ** F(-d)))

    def compute(self, inp: np.ndarray, reverse: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """``compute(out, in, V, reverse, add)`` on (V, N) float32; ``out`` given: ``add``."""
        k = inp.shape[0]
        seq = k <= 2
        values = np.zeros((self.m + 2, k), F)
        for i in range(self.n):
            for j in range(self.d + 1):
                o = self.offset[i, j] + 1
                values[o] = values[o] + self.bary[i, j] * inp[:, i]
        new = np.zeros_like(values)
        for j in (range(self.d, -1, -1) if reverse else range(self.d + 1)):
            for i in range(self.m):
                n1, n2 = self.neighbors[j, i] + 1
                s = values[n1] + values[n2]
                if seq:  # old + 0.5 * (...) with 0.5 a double literal
                    new[i + 1] = (values[i + 1].astype(np.float64) + 0.5 * s.astype(np.float64)).astype(F)
                else:
                    new[i + 1] = values[i + 1] + F(0.5) * s
            values, new = new, values
        res = np.zeros_like(inp) if out is None else out.astype(F).copy()
        for i in range(self.n):
            if seq:
                for j in range(self.d + 1):
                    o = self.offset[i, j] + 1
                    res[:, i] = res[:, i] + (self.bary[i, j] * values[o]) * self.alpha
            else:
                acc = np.zeros(k, F)
                for j in range(self.d + 1):
                    o = self.offset[i, j] + 1
                    acc = acc + F(self.bary[i, j] * self.alpha) * values[o]
                res[:, i] = acc if out is None else res[:, i] + acc
        return res


def spatial_kernel(h: int, w: int, gamma: float) -> np.ndarray:
    p = np.arange(h * w)
    return np.stack([(p % w).astype(F) / F(gamma), (p // w).astype(F) / F(gamma)], 1)


def bilateral_kernel(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    _, h, w = img.shape
    p = np.arange(h * w)
    rgb = img[:3].reshape(3, -1).astype(F)
    return np.stack([(p % w).astype(F) / F(alpha), (p // w).astype(F) / F(alpha),
                     rgb[0] / F(beta), rgb[1] / F(beta), rgb[2] / F(beta)], 1)


def softmax(x: np.ndarray) -> np.ndarray:
    """Caffe's SoftmaxLayer over axis 0 of (C, P): subtract the max, exp, divide by the sum."""
    e = np.exp(x - x.max(0, keepdims=True)).astype(F)
    return (e / e.sum(0, dtype=F, keepdims=True)).astype(F)


def norms(lat: Lattice) -> np.ndarray:
    return (F(1) / (lat.compute(np.ones((1, lat.n), F))[0] + F(1e-20))).astype(F)


def forward(unary, q0, image, blobs, p):
    """MultiStageMeanfield forward. ``blobs``: (Ws, Wb, C) (C x C); ``p``: iterations, alpha, beta, gamma.
    Returns the top and the saved state for :func:`backward`."""
    n, c, h, w = unary.shape
    unary, q0 = unary.astype(F).reshape(n, c, -1), q0.astype(F).reshape(n, c, -1)
    ws, wb, cm = (b.astype(F) for b in blobs)
    spatial = Lattice(spatial_kernel(h, w, p["gamma"]))
    ns = norms(spatial)
    bil = [Lattice(bilateral_kernel(image[i], p["alpha"], p["beta"])) for i in range(n)]
    nb = [norms(b) for b in bil]
    x, steps = q0, []
    for _ in range(p["iterations"]):
        prob = np.stack([softmax(x[i]) for i in range(n)])
        s = np.stack([spatial.compute(prob[i]) * ns for i in range(n)]).astype(F)
        b = np.stack([bil[i].compute(prob[i]) * nb[i] for i in range(n)]).astype(F)
        mp = np.stack([(ws @ s[i]) + (wb @ b[i]) for i in range(n)]).astype(F)
        pw = np.stack([cm @ mp[i] for i in range(n)]).astype(F)
        steps.append({"prob": prob, "s": s, "b": b, "mp": mp})
        x = (unary - pw).astype(F)
    state = {"spatial": spatial, "ns": ns, "bil": bil, "nb": nb, "steps": steps, "blobs": (ws, wb, cm)}
    return x.reshape(n, c, h, w), state


def backward(top_diff, state):
    """MultiStageMeanfield backward: diffs of the unary, Q0 and the three blobs."""
    n, c, h, w = top_diff.shape
    ws, wb, cm = state["blobs"]
    g = top_diff.astype(F).reshape(n, c, -1)
    unary_diff = np.zeros_like(g)
    blob_diffs = [np.zeros((c, c), F) for _ in range(3)]
    for st in reversed(state["steps"]):
        unary_diff = unary_diff + g  # the split layer sums every iteration's eltwise diff (coeff 1)
        pw_diff = -g  # coeff -1
        d_cm = sum((pw_diff[i] @ st["mp"][i].T for i in range(n)), np.zeros((c, c), F))
        mp_diff = np.stack([cm.T @ pw_diff[i] for i in range(n)]).astype(F)
        d_ws = sum((mp_diff[i] @ st["s"][i].T for i in range(n)), np.zeros((c, c), F))
        d_wb = sum((mp_diff[i] @ st["b"][i].T for i in range(n)), np.zeros((c, c), F))
        for acc, d in zip(blob_diffs, (d_ws, d_wb, d_cm)):
            acc += d
        prob_diff = np.empty_like(g)
        for i in range(n):
            s_diff = (ws.T @ mp_diff[i]) * state["ns"]
            b_diff = (wb.T @ mp_diff[i]) * state["nb"][i]
            pd = state["spatial"].compute(s_diff.astype(F), reverse=True)
            prob_diff[i] = state["bil"][i].compute(b_diff.astype(F), reverse=True, out=pd)
        prob = st["prob"]  # Caffe's Softmax backward: (diff - sum_c diff * prob) * prob
        g = ((prob_diff - (prob_diff * prob).sum(1, dtype=F, keepdims=True)) * prob).astype(F)
    return unary_diff.reshape(n, c, h, w), g.reshape(n, c, h, w), blob_diffs
