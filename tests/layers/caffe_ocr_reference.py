"""Loop-by-loop NumPy ports of senlinuc/caffe_ocr's CTC layers (@ 81642f61), for tests/layers/test_caffe_ocr.py.

``warp_ctc``: the vendored warp-ctc ``CpuCTC`` (``include/detail/cpu_ctc.h``): softmax per (t, n), log-space alphas
and betas that both include the step's emission, the gradient ``probs - exp(output - log probs - log_partition)``
(``probs`` where no path uses the class), cost 0 and no gradient where ``L + repeats > T``. The ``start``/``end``
window pruning of its loops is left out (it skips only cells that reach no complete path). ``layer_loss`` is the
layer's mean of the finite costs. ``greedy_*``: ``ctc_decoder_layer.cpp``'s ``#else`` branch.
"""
from __future__ import annotations

import math

import numpy as np

NEG = -math.inf


def _lse(a: float, b: float) -> float:
    if a == NEG:
        return b
    if b == NEG:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def warp_ctc(x: np.ndarray, labels: list[list[int]], lengths: list[int], blank: int):
    """x (T, N, C) activations -> (costs (N,), grads (T, N, C)); grads 0 where warp-ctc leaves them unwritten."""
    t_all, n_all, c_all = x.shape
    grads = np.zeros_like(x, dtype=np.float64)
    costs = np.zeros(n_all)
    for n in range(n_all):
        big_t, lab = lengths[n], labels[n]
        probs = np.zeros((big_t, c_all))
        for t in range(big_t):
            m = max(x[t, n])
            e = [math.exp(v - m) for v in x[t, n]]
            s = sum(e)
            probs[t] = [v / s for v in e]
        repeats = sum(1 for i in range(1, len(lab)) if lab[i] == lab[i - 1])
        if len(lab) + repeats > big_t or big_t == 0:
            costs[n] = 0.0
            continue
        lw = [blank]
        for v in lab:
            lw += [v, blank]
        big_s = len(lw)
        alpha = [[NEG] * big_s for _ in range(big_t)]
        alpha[0][0] = math.log(probs[0][lw[0]])
        if big_s > 1:
            alpha[0][1] = math.log(probs[0][lw[1]])
        for t in range(1, big_t):
            for i in range(big_s):
                acc = alpha[t - 1][i]
                if i >= 1:
                    acc = _lse(acc, alpha[t - 1][i - 1])
                if i >= 2 and lw[i] != blank and lw[i] != lw[i - 2]:
                    acc = _lse(acc, alpha[t - 1][i - 2])
                alpha[t][i] = acc + math.log(probs[t][lw[i]]) if acc != NEG else NEG
        loglike = NEG
        for i in range(max(0, big_s - 2), big_s):
            loglike = _lse(loglike, alpha[big_t - 1][i])
        beta = [[NEG] * big_s for _ in range(big_t)]
        for i in range(max(0, big_s - 2), big_s):
            beta[big_t - 1][i] = math.log(probs[big_t - 1][lw[i]])
        for t in range(big_t - 2, -1, -1):
            for i in range(big_s):
                acc = beta[t + 1][i]
                if i + 1 < big_s:
                    acc = _lse(acc, beta[t + 1][i + 1])
                if i + 2 < big_s and lw[i] != blank and lw[i] != lw[i + 2]:
                    acc = _lse(acc, beta[t + 1][i + 2])
                beta[t][i] = acc + math.log(probs[t][lw[i]]) if acc != NEG else NEG
        for t in range(big_t):
            output = [NEG] * c_all
            for i in range(big_s):
                output[lw[i]] = _lse(output[lw[i]], alpha[t][i] + beta[t][i])
            for c in range(c_all):
                p = probs[t][c]
                if output[c] == NEG or p == 0.0:
                    grads[t, n, c] = p
                else:
                    grads[t, n, c] = p - math.exp(output[c] - math.log(p) - loglike)
        costs[n] = -loglike
    return costs, grads


def layer_loss(costs: np.ndarray) -> float:
    total, num = 0.0, 0
    for c in costs:
        if c < math.inf:
            total += c
            num += 1
    return total / num


def labels_from_rows(rows: np.ndarray, blank: int) -> list[list[int]]:
    """The 2-bottom read: each row's values, truncated, the blank dropped."""
    return [[int(v) for v in row if int(v) != blank] for row in rows]


def edit_distance(s1: list[int], s2: list[int]) -> int:
    d = [[0] * (len(s2) + 1) for _ in range(len(s1) + 1)]
    for i in range(1, len(s1) + 1):
        d[i][0] = i
    for j in range(1, len(s2) + 1):
        d[0][j] = j
    for i in range(1, len(s1) + 1):
        for j in range(1, len(s2) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (s1[i - 1] != s2[j - 1]))
    return d[len(s1)][len(s2)]


def greedy_decode(x: np.ndarray, blank: int, merge: bool = True) -> list[list[int]]:
    t_all, n_all, c_all = x.shape
    out = []
    for n in range(n_all):
        seq, prev = [], -1
        for t in range(t_all):
            best, best_v = 0, x[t, n, 0]
            for c in range(1, c_all):
                if x[t, n, c] > best_v:
                    best, best_v = c, x[t, n, c]
            if best != blank and not (merge and best == prev):
                seq.append(best)
            prev = best
        out.append(seq)
    return out


def greedy_accuracy(x: np.ndarray, labels: np.ndarray, blank: int, merge: bool = True) -> tuple[float, float]:
    seqs = greedy_decode(x, blank, merge)
    n_all = x.shape[1]
    acc_edit, ok = 0.0, 0
    for n in range(n_all):
        target = []
        for v in labels[n]:
            if v < 0:
                break
            if int(0.5 + v) != blank:
                target.append(int(0.5 + v))
        if max(len(target), len(seqs[n])) == 0:
            continue
        ed = edit_distance(target, seqs[n])
        acc_edit += ed / max(len(target), len(seqs[n]))
        ok += ed == 0
    return 1 - acc_edit / n_all, ok / n_all


def text_images(r, batch: int, t_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Toy text lines for the CTC nets: ``batch`` images 1 x 4 x ``t_steps`` where character c (1..3) of a
    1-3 character line lights row c over two columns of its 4-column slot; labels padded with 0 (the blank)."""
    data = np.zeros((batch, 1, 4, t_steps), np.float32)
    label = np.zeros((batch, 3), np.float32)
    for n in range(batch):
        seq = r.integers(1, 4, 1 + n % 3)
        label[n, :len(seq)] = seq
        for i, c in enumerate(seq):
            data[n, 0, c, 4 * i:4 * i + 2] = 1.0
    return data, label
