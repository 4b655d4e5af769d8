"""Loop-by-loop NumPy ports of TextBoxes++'s CTC layers (MhLiao/TextBoxes_plusplus @ 39d4898d,
``src/caffe/layers/ctc_loss_layer.cpp`` and ``ctc_decoder_layer.cpp``), written independently of
``neocaffe.layers.ctc``: scalar loops in the fork's order, its ``LogSumExp`` (``log1p``/``exp`` of the
smaller minus the larger), its per-sequence alpha/beta arrays of shape (U, T_b), and its CHECKs as
``ValueError``. ``dtype`` is the fork's ``Dtype``: the softmax, the reported loss and the diff are rounded
to it, alpha/beta stay in double as there.
"""
from __future__ import annotations

import math

import numpy as np

NEG_INF = -math.inf


def log_sum_exp(a: float, b: float) -> float:
    """The fork's LogSumExp."""
    if a == NEG_INF and b == NEG_INF:
        return NEG_INF
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def _log(v: float) -> float:
    return math.log(v) if v > 0 else NEG_INF


def _round(v: float) -> int:
    return int(float(v) + 0.5)  # static_cast<int>(v + 0.5): truncation toward zero


def _softmax_rows(data: np.ndarray, dtype) -> np.ndarray:
    """Per row: max, exp(x - max) and their sum in ``dtype`` (sequentially), then the division."""
    out = np.zeros(data.shape, dtype=dtype)
    for r in range(data.shape[0]):
        x = data[r].astype(dtype)
        m = x[0]
        for v in x[1:]:
            m = max(m, v)
        s = dtype(0)
        for c in range(x.shape[0]):
            out[r, c] = np.exp(dtype(x[c] - m))
            s = dtype(s + out[r, c])
        for c in range(x.shape[0]):
            out[r, c] = dtype(out[r, c] / s)
    return out


def _forward_variables(lp: list[int], logy: np.ndarray, od: int, blank: int, merge: bool, t_b: int) -> np.ndarray:
    u_n = len(lp)
    a = np.full((max(u_n, 2), t_b), NEG_INF)  # row 1 exists even for U = 1 (the fork writes it out of bounds)
    a[0, 0] = logy[od, blank]
    a[1, 0] = logy[od, lp[1] if u_n > 1 else blank]
    for t in range(1, t_b):
        for u in range(max(0, u_n - 2 * (t_b - t)), min(u_n, 2 * (t + 1))):
            s = NEG_INF
            if merge or lp[u] == blank:
                s = a[u, t - 1]
            if u > 0:
                s = log_sum_exp(s, a[u - 1, t - 1])
            if u > 1 and lp[u] != blank and not (merge and lp[u] == lp[u - 2]):
                s = log_sum_exp(s, a[u - 2, t - 1])
            a[u, t] = logy[od + t, lp[u]] + s
    return a[:u_n]


def _backward_variables(lp: list[int], logy: np.ndarray, od: int, blank: int, merge: bool, t_b: int) -> np.ndarray:
    u_n = len(lp)
    b = np.full((u_n, t_b), NEG_INF)
    for u in range(u_n - 2, u_n):
        if u >= 0:  # u = -1 (U = 1) is written before the array in the fork
            b[u, t_b - 1] = 0.0
    for t in range(t_b - 2, -1, -1):
        for u in range(max(0, u_n - 2 * (t_b - t)), min(u_n, 2 * (t + 1))):
            v = b[u, t]
            if merge or lp[u] == blank:
                v = log_sum_exp(v, b[u, t + 1] + logy[od + t + 1, lp[u]])
            if u + 1 < u_n:
                v = log_sum_exp(v, b[u + 1, t + 1] + logy[od + t + 1, lp[u + 1]])
            if u + 2 < u_n and lp[u] != blank and not (merge and lp[u] == lp[u + 2]):
                v = log_sum_exp(v, b[u + 2, t + 1] + logy[od + t + 1, lp[u + 2]])
            b[u, t] = v
    return b


def ctc_loss(data, seq_ind, labels, *, output_delay: int = 0, blank_index: int = -1,
             collapse: bool = False, merge: bool = True, loss_calculation_t: int = 0, dtype=np.float64):
    """The fork's CTCLoss Forward_cpu + Backward_cpu on (T, N, C) ``data``, (T, N) ``seq_ind`` and
    ``labels``. Returns (loss, diff (T, N, C), info) with info's ``seq_len``, ``label_len``, ``log_p``,
    ``l_primes``."""
    data = np.asarray(data, dtype=np.float64)
    seq_ind = np.asarray(seq_ind, dtype=np.float64).reshape(data.shape[0], data.shape[1])
    labels = np.asarray(labels, dtype=np.float64).reshape(data.shape[0], data.shape[1])
    t_all, n_all, c_all = data.shape
    blank = c_all - 1 if blank_index < 0 else blank_index
    od = output_delay
    seq_len = [t_all] * n_all
    label_len = [t_all] * n_all
    for n in range(n_all):
        for t in range(1, t_all):
            if _round(seq_ind[t, n]) == 0:
                seq_len[n] = t
                break
        for t in range(t_all):
            if labels[t, n] < 0.0:
                label_len[n] = t
                break
        if label_len[n] == 0:
            if seq_len[n] > 1:
                raise ValueError(f"empty label with sequence length {seq_len[n]} (sequence {n})")
            seq_len[n] = 0
        if label_len[n] > seq_len[n]:
            raise ValueError(f"label length {label_len[n]} > sequence length {seq_len[n]} (sequence {n})")
    # PopulateLPrimes
    l_primes: list[list[int] | None] = [None] * n_all
    for n in range(n_all):
        size = label_len[n]
        if size == 0:
            continue
        ls: list[int] = []
        finished = False
        for i in range(size):
            if i == 0 or not collapse or labels[i, n] != labels[i - 1, n]:
                il = _round(labels[i, n])
                if il >= c_all or il == blank:
                    finished = True
                elif finished:
                    raise ValueError(f"a label after a null label (sequence {n})")
                else:
                    ls.append(il)
        if size > seq_len[n] - od:
            raise ValueError(f"not enough time for target transition sequence (sequence {n})")
        lp = []
        for lab in ls:
            lp += [blank, lab]
        l_primes[n] = lp + [blank]
    loss = dtype(0)
    diff = np.zeros(data.shape, dtype=dtype)
    log_ps = [NEG_INF] * n_all
    for n in range(n_all):
        s_len = seq_len[n]
        if s_len == 0:
            continue
        lp = l_primes[n]
        t_b = s_len - od
        y = _softmax_rows(data[:s_len, n], dtype)
        logy = np.vectorize(_log)(y.astype(np.float64))
        alpha = _forward_variables(lp, logy, od, blank, merge, t_b)
        beta = _backward_variables(lp, logy, od, blank, merge, t_b)
        lt = max(0, min(loss_calculation_t, t_b - 1))
        log_p = NEG_INF
        for u in range(len(lp)):
            log_p = log_sum_exp(log_p, alpha[u, lt] + beta[u, lt])
        log_ps[n] = log_p
        loss = dtype(loss + dtype(-log_p))
        # CalculateGradient
        for t in range(s_len - od):
            if log_p == NEG_INF:
                diff[od + t, n] = y[od + t]
                continue
            prob_sum = [NEG_INF] * c_all
            for u in range(len(lp)):
                prob_sum[lp[u]] = log_sum_exp(prob_sum[lp[u]], alpha[u, t] + beta[u, t])
            for c in range(c_all):
                diff[od + t, n, c] = dtype(float(y[od + t, c]) - math.exp(prob_sum[c] - log_p))
    loss = dtype(loss / dtype(n_all))
    return loss, diff, {"seq_len": seq_len, "label_len": label_len, "log_p": log_ps, "l_primes": l_primes}


def edit_distance(s1: list[int], s2: list[int]) -> int:
    """The fork's CTCDecoderLayer::EditDistance."""
    d = [[0] * (len(s2) + 1) for _ in range(len(s1) + 1)]
    for i in range(1, len(s1) + 1):
        d[i][0] = i
    for j in range(1, len(s2) + 1):
        d[0][j] = j
    for i in range(1, len(s1) + 1):
        for j in range(1, len(s2) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (0 if s1[i - 1] == s2[j - 1] else 1))
    return d[len(s1)][len(s2)]


def greedy_decode(probs, seq_ind, targets=None, *, blank_index: int = -1, merge: bool = True):
    """The fork's CTCGreedyDecoder forward: (sequences (N, T) padded with -1, scores (N,), accuracy or
    None) for (T, N, C) ``probs`` and (T, N) ``seq_ind`` / ``targets``."""
    probs = np.asarray(probs, dtype=np.float64)
    t_all, n_all, c_all = probs.shape
    seq_ind = np.asarray(seq_ind, dtype=np.float64).reshape(t_all, n_all)
    blank = c_all - 1 if blank_index < 0 else blank_index
    outs: list[list[int]] = [[] for _ in range(n_all)]
    scores = np.zeros(n_all)
    for n in range(n_all):
        prev = -1
        t = 0
        while True:
            best, best_v = 0, probs[t, n, 0]
            for c in range(1, c_all):
                if probs[t, n, c] > best_v:
                    best, best_v = c, probs[t, n, c]
            scores[n] += -best_v
            if best != blank and not (merge and best == prev):
                outs[n].append(best)
            prev = best
            if t + 1 == t_all or seq_ind[t + 1, n] == 0:
                break
            t += 1
    seqs = np.full((n_all, t_all), -1.0)
    for n, s in enumerate(outs):
        seqs[n, :len(s)] = s
    acc = None
    if targets is not None:
        targets = np.asarray(targets, dtype=np.float64).reshape(t_all, n_all)
        acc = 0.0
        for n in range(n_all):
            target: list[int] = []
            for t in range(t_all):
                if targets[t, n] < 0:
                    break
                target.append(int(0.5 + targets[t, n]))
            longest = max(len(target), len(outs[n]))
            if longest == 0:
                continue
            acc += edit_distance(target, outs[n]) / longest
        acc = 1 - acc / n_all
    return seqs, scores, acc
