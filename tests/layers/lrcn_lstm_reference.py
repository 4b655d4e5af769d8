"""Loop-by-loop NumPy port of LRCN's LSTM: LisaAnne/lisa-caffe-public (branch lstm_video_deploy) @
49b8643ddef23a4f6120017968de30c45e693f59, src/caffe/layers/{lstm_layer,lstm_unit_layer,recurrent_layer}.cpp.

The unrolled net of ``LSTMLayer::FillUnrolledNet``: x_transform (W_xc, b_c; InnerProduct axis 2),
[W_xc_x_static (W_xc_static, axis 1, reshaped to one timestep)], per step t: h_conted_{t-1} = cont_t * h_{t-1}
(Eltwise SUM with coeff_blob), W_hc_h_{t-1} (W_hc), gate_input_t = sum, LSTMUnit (CPU Forward_cpu/Backward_cpu
loops, gates i, f, o, g), h = Concat of h_1..h_T. Backward: Net::Backward of that net with zero diffs on the
recurrent outputs c_T (and no diff from a later batch), param diffs summed over timesteps (shared diffs,
accumulating InnerProduct backward).
"""
from __future__ import annotations

import numpy as np


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def _tanh(x: float) -> float:
    return 2.0 * _sigmoid(2.0 * x) - 1.0  # lstm_unit_layer.cpp's tanh


def _ip(w: np.ndarray, b: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """InnerProduct on rows: x (M, K), w (N, K)."""
    m, n = x.shape[0], w.shape[0]
    y = np.zeros((m, n), dtype=x.dtype)
    for i in range(m):
        for j in range(n):
            s = 0.0
            for k in range(x.shape[1]):
                s += w[j, k] * x[i, k]
            y[i, j] = s + (b[j] if b is not None else 0.0)
    return y


def unit_forward(c_prev: np.ndarray, x: np.ndarray, flush: np.ndarray):
    """LSTMUnitLayer::Forward_cpu on (N, H), (N, 4H), (N,)."""
    num, hd = c_prev.shape
    c_out, h_out = np.zeros_like(c_prev), np.zeros_like(c_prev)
    for n in range(num):
        for d in range(hd):
            i = _sigmoid(x[n, d])
            f = 0.0 if flush[n] == 0 else flush[n] * _sigmoid(x[n, hd + d])
            o = _sigmoid(x[n, 2 * hd + d])
            g = _tanh(x[n, 3 * hd + d])
            c = f * c_prev[n, d] + i * g
            c_out[n, d] = c
            h_out[n, d] = o * _tanh(c)
    return c_out, h_out


def unit_backward(c_prev, x, flush, c, c_diff, h_diff):
    """LSTMUnitLayer::Backward_cpu: returns (c_prev_diff, x_diff)."""
    num, hd = c_prev.shape
    cp_diff, x_diff = np.zeros_like(c_prev), np.zeros_like(x)
    for n in range(num):
        for d in range(hd):
            i = _sigmoid(x[n, d])
            f = 0.0 if flush[n] == 0 else flush[n] * _sigmoid(x[n, hd + d])
            o = _sigmoid(x[n, 2 * hd + d])
            g = _tanh(x[n, 3 * hd + d])
            tanh_c = _tanh(c[n, d])
            c_term = c_diff[n, d] + h_diff[n, d] * o * (1 - tanh_c * tanh_c)
            cp_diff[n, d] = c_term * f
            x_diff[n, d] = c_term * g * i * (1 - i)
            x_diff[n, hd + d] = c_term * c_prev[n, d] * f * (1 - f)
            x_diff[n, 2 * hd + d] = h_diff[n, d] * tanh_c * o * (1 - o)
            x_diff[n, 3 * hd + d] = c_term * i * (1 - g * g)
    return cp_diff, x_diff


def forward(x, cont, blobs, x_static=None, h0=None, c0=None):
    """x (T, N, ...), cont (T, N), blobs [W_xc, b_c, (W_xc_static,) W_hc]; h0/c0: the carried state
    (recur_output copied into recur_input; zeros at setup). Returns h (T, N, H) and a cache for backward."""
    t_steps, n = x.shape[:2]
    w_xc, b_c, w_hc = blobs[0], blobs[1], blobs[-1]
    hd = w_hc.shape[1]
    wx = _ip(w_xc, b_c, x.reshape(t_steps * n, -1)).reshape(t_steps, n, 4 * hd)
    ws = _ip(blobs[2], None, x_static.reshape(n, -1)) if x_static is not None else None
    h = np.zeros((n, hd), x.dtype) if h0 is None else h0.copy()
    c = np.zeros((n, hd), x.dtype) if c0 is None else c0.copy()
    cache = []
    hs = []
    for t in range(t_steps):
        h_conted = np.zeros_like(h)
        for k in range(n):
            h_conted[k] = cont[t, k] * h[k]
        gate = _ip(w_hc, None, h_conted) + wx[t]
        if ws is not None:
            gate = gate + ws
        c_new, h = unit_forward(c, gate, cont[t])
        cache.append((c, gate, h_conted, c_new))
        c = c_new
        hs.append(h)
    return np.stack(hs), {"cache": cache, "x": x, "cont": cont, "xs": x_static, "blobs": blobs, "h": h, "c": c}


def backward(top_diff, state):
    """Net::Backward of the unrolled net for top diff (T, N, H): returns (x_diff, [param diffs in blob order],
    x_static_diff or None)."""
    x, cont, blobs, xs = state["x"], state["cont"], state["blobs"], state["xs"]
    t_steps, n = x.shape[:2]
    w_hc = blobs[-1]
    hd = w_hc.shape[1]
    d_w_hc = np.zeros_like(w_hc)
    gate_diffs = np.zeros((t_steps, n, 4 * hd), x.dtype)
    h_diff_carry = np.zeros((n, hd), x.dtype)  # from h_conted_t of step t+1
    c_diff = np.zeros((n, hd), x.dtype)  # c_T's diff is 0
    for t in reversed(range(t_steps)):
        c_prev, gate, h_conted, c = state["cache"][t]
        h_diff = top_diff[t] + h_diff_carry
        c_diff, g_diff = unit_backward(c_prev, gate, cont[t], c, c_diff, h_diff)
        gate_diffs[t] = g_diff
        for j in range(4 * hd):  # W_hc diff += g_diff^T h_conted
            for k in range(hd):
                for m in range(n):
                    d_w_hc[j, k] += g_diff[m, j] * h_conted[m, k]
        hc_diff = np.zeros((n, hd), x.dtype)
        for m in range(n):
            for k in range(hd):
                s = 0.0
                for j in range(4 * hd):
                    s += g_diff[m, j] * w_hc[j, k]
                hc_diff[m, k] = s
        h_diff_carry = np.zeros_like(hc_diff)
        for m in range(n):  # Eltwise coeff_blob backward: bottom diff = coeff * top diff
            h_diff_carry[m] = cont[t, m] * hc_diff[m]
    xf = x.reshape(t_steps * n, -1)
    gd = gate_diffs.reshape(t_steps * n, -1)
    d_w_xc = gd.T @ xf
    d_b_c = gd.sum(0)
    x_diff = (gd @ blobs[0]).reshape(x.shape)
    diffs = [d_w_xc, d_b_c]
    xs_diff = None
    if xs is not None:
        gs = gate_diffs.sum(0)  # the split of W_xc_x_static over T steps
        diffs.append(gs.T @ xs.reshape(n, -1))
        xs_diff = (gs @ blobs[2]).reshape(xs.shape)
    diffs.append(d_w_hc)
    return x_diff, diffs, xs_diff
