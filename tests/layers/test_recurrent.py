"""LSTM / RNN / LSTMUnit against explicit NumPy loops over time with Caffe's equations (no real-Caffe golden)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.recurrent import LSTM, RNN, LSTMUnit
from neocaffe.proto import caffe_pb2

FILLS = 'weight_filler { type: "uniform" min: -0.6 max: 0.6 } bias_filler { type: "uniform" min: -0.6 max: 0.6 }'


def _param(text: str):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm(x, cont, w_xc, b_c, w_hc, h0, c0, xs=None, w_s=None):
    """Caffe's unrolled LSTM: x_transform, h_conted = cont*h, gate_input = W_hc h_conted + W_xc x_t + b_c
    (+ W_xc_static x_static), LSTMUnit (f masked by cont), h = o tanh(c)."""
    t_steps, n = x.shape[:2]
    hd = w_hc.shape[1]
    wx = x.reshape(t_steps, n, -1) @ w_xc.T + b_c
    ws = xs.reshape(n, -1) @ w_s.T if xs is not None else 0.0
    h, c, hs = h0, c0, []
    for t in range(t_steps):
        gate = (h * cont[t][:, None]) @ w_hc.T + wx[t] + ws
        i, f = _sig(gate[:, :hd]), cont[t][:, None] * _sig(gate[:, hd:2 * hd])
        o, g = _sig(gate[:, 2 * hd:3 * hd]), np.tanh(gate[:, 3 * hd:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs), h, c


def np_rnn(x, cont, w_xh, b_h, w_hh, w_ho, b_o, h0, xs=None, w_s=None):
    t_steps, n = x.shape[:2]
    wx = x.reshape(t_steps, n, -1) @ w_xh.T + b_h
    ws = xs.reshape(n, -1) @ w_s.T if xs is not None else 0.0
    h, outs = h0, []
    for t in range(t_steps):
        h = np.tanh((h * cont[t][:, None]) @ w_hh.T + wx[t] + ws)
        outs.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(outs), h


def _blobs(layer):
    return [b.detach().double().numpy() for b in layer.blobs]


def test_lstm_param_order_and_shapes():
    p = _param(f'name: "l" type: "LSTM" bottom: "x" bottom: "c" bottom: "s" top: "h" recurrent_param {{ num_output: 5 {FILLS} }}')
    layer = LSTM(p, [(4, 3, 2, 3), (4, 3), (3, 7)])
    assert [tuple(b.shape) for b in layer.blobs] == [(20, 6), (20,), (20, 7), (20, 5)]
    assert layer.reshape([(4, 3, 2, 3), (4, 3), (3, 7)]) == [(4, 3, 5)]


def test_rnn_param_order_and_shapes():
    p = _param(f'name: "r" type: "RNN" bottom: "x" bottom: "c" bottom: "s" top: "o" recurrent_param {{ num_output: 5 {FILLS} }}')
    layer = RNN(p, [(4, 3, 6), (4, 3), (3, 7)])
    assert [tuple(b.shape) for b in layer.blobs] == [(5, 6), (5,), (5, 7), (5, 5), (5, 5), (5,)]


@pytest.mark.parametrize("static", [False, True])
def test_lstm_forward_and_state_carry(static):
    r = np.random.default_rng(0)
    t_steps, n, hd = 5, 3, 4
    x = r.standard_normal((t_steps, n, 2, 3))
    cont = np.ones((t_steps, n))
    cont[0, :] = 0
    cont[3, 1] = 0  # a new sequence starts mid-batch in stream 1
    xs = r.standard_normal((n, 5)) if static else None
    bottoms = "bottom: \"x\" bottom: \"c\"" + (' bottom: "s"' if static else "")
    p = _param(f'name: "l" type: "LSTM" {bottoms} top: "h" recurrent_param {{ num_output: {hd} {FILLS} }}')
    shapes = [x.shape, cont.shape] + ([xs.shape] if static else [])
    layer = LSTM(p, shapes).double()
    ins = [torch.tensor(x), torch.tensor(cont)] + ([torch.tensor(xs)] if static else [])
    w = _blobs(layer)
    w_s = w[2] if static else None
    zeros = np.zeros((n, hd))
    ref, h_t, c_t = np_lstm(x, cont, w[0], w[1], w[-1], zeros, zeros, xs, w_s)
    np.testing.assert_allclose(layer(*ins).detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    # second forward: cont 1 at t=0 continues from the previous final state (Caffe copies h_T -> h_0)
    cont2 = np.ones((t_steps, n))
    ins[1] = torch.tensor(cont2)
    ref2, _, _ = np_lstm(x, cont2, w[0], w[1], w[-1], h_t, c_t, xs, w_s)
    np.testing.assert_allclose(layer(*ins).detach().numpy(), ref2, rtol=1e-10, atol=1e-12)
    layer.reset_state()
    ref3, _, _ = np_lstm(x, cont2, w[0], w[1], w[-1], zeros, zeros, xs, w_s)
    np.testing.assert_allclose(layer(*ins).detach().numpy(), ref3, rtol=1e-10, atol=1e-12)


def test_lstm_expose_hidden():
    r = np.random.default_rng(1)
    t_steps, n, hd = 3, 2, 3
    x, cont = r.standard_normal((t_steps, n, 4)), np.array([[1.0, 0], [1, 1], [0, 1]])
    h0, c0 = r.standard_normal((1, n, hd)), r.standard_normal((1, n, hd))
    p = _param('name: "l" type: "LSTM" bottom: "x" bottom: "c" bottom: "h0" bottom: "c0" top: "h" top: "hT" top: "cT" '
               f'recurrent_param {{ num_output: {hd} expose_hidden: true {FILLS} }}')
    layer = LSTM(p, [x.shape, cont.shape, h0.shape, c0.shape]).double()
    assert layer.reshape([x.shape, cont.shape, h0.shape, c0.shape]) == [(3, 2, 3), (1, 2, 3), (1, 2, 3)]
    hin = torch.tensor(h0, requires_grad=True)
    h, h_t, c_t = layer(torch.tensor(x), torch.tensor(cont), hin, torch.tensor(c0))
    w = _blobs(layer)
    ref, rh, rc = np_lstm(x, cont, w[0], w[1], w[-1], h0[0], c0[0])
    np.testing.assert_allclose(h.detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(h_t.numpy()[0], rh, rtol=1e-10)
    np.testing.assert_allclose(c_t.numpy()[0], rc, rtol=1e-10)
    assert not h_t.requires_grad and not c_t.requires_grad  # Caffe shares only data of exposed states
    h.sum().backward()
    assert hin.grad is None


def test_lstm_rejects_bad_wiring():
    p = _param('name: "l" type: "LSTM" bottom: "x" bottom: "c" bottom: "h0" top: "h" top: "hT" '
               'recurrent_param { num_output: 2 expose_hidden: true }')
    with pytest.raises(LayerSetupError, match="'l'"):
        LSTM(p, [(2, 1, 3), (2, 1), (1, 1, 2)])
    p = _param('name: "l" type: "LSTM" bottom: "x" bottom: "c" top: "h" recurrent_param { num_output: 2 }')
    with pytest.raises(LayerSetupError, match="cont"):
        LSTM(p, [(2, 3, 3), (2, 1)])
    layer = LSTM(p, [(2, 3, 3), (2, 3)])
    with pytest.raises(LayerSetupError, match="timesteps"):
        layer.reshape([(3, 3, 3), (3, 3)])


@pytest.mark.parametrize("static", [False, True])
def test_rnn_forward(static):
    r = np.random.default_rng(2)
    t_steps, n, hd = 4, 2, 3
    x, cont = r.standard_normal((t_steps, n, 5)), np.array([[0.0, 0], [1, 1], [0, 1], [1, 1]])
    xs = r.standard_normal((n, 2)) if static else None
    bottoms = 'bottom: "x" bottom: "c"' + (' bottom: "s"' if static else "")
    p = _param(f'name: "r" type: "RNN" {bottoms} top: "o" recurrent_param {{ num_output: {hd} {FILLS} }}')
    layer = RNN(p, [x.shape, cont.shape] + ([xs.shape] if static else [])).double()
    ins = [torch.tensor(x), torch.tensor(cont)] + ([torch.tensor(xs)] if static else [])
    w = _blobs(layer)
    w_s = w[2] if static else None
    ref, h_t = np_rnn(x, cont, w[0], w[1], w[-3], w[-2], w[-1], np.zeros((n, hd)), xs, w_s)
    np.testing.assert_allclose(layer(*ins).detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    ins[1] = torch.ones((t_steps, n), dtype=torch.float64)
    ref2, _ = np_rnn(x, np.ones((t_steps, n)), w[0], w[1], w[-3], w[-2], w[-1], h_t, xs, w_s)
    np.testing.assert_allclose(layer(*ins).detach().numpy(), ref2, rtol=1e-10, atol=1e-12)


def test_lstm_unit_caffe_backward_with_fractional_cont():
    """Caffe's LSTMUnit CPU backward uses f = cont*sigmoid(x_f) in f*(1-f): not the true derivative for a
    fractional cont; we follow Caffe."""
    r = np.random.default_rng(3)
    n, hd = 3, 2
    c_prev, x = r.standard_normal((1, n, hd)), r.standard_normal((1, n, 4 * hd))
    cont = np.array([[0.5, 0.0, 1.0]])
    dc, dh = r.standard_normal((1, n, hd)), r.standard_normal((1, n, hd))
    layer = LSTMUnit(_param('name: "u" type: "LSTMUnit" bottom: "c" bottom: "x" bottom: "k" top: "c1" top: "h1"'),
                     [c_prev.shape, x.shape, cont.shape])
    tc, tx = torch.tensor(c_prev, requires_grad=True), torch.tensor(x, requires_grad=True)
    c, h = layer(tc, tx, torch.tensor(cont))
    torch.autograd.backward([c, h], [torch.tensor(dc), torch.tensor(dh)])
    cp, xx, k = c_prev[0], x[0], cont[0][:, None]
    i, o, g = _sig(xx[:, :hd]), _sig(xx[:, 2 * hd:3 * hd]), np.tanh(xx[:, 3 * hd:])
    f = np.where(k == 0, 0.0, k * _sig(xx[:, hd:2 * hd]))
    cc = f * cp + i * g
    np.testing.assert_allclose(c.detach().numpy()[0], cc, rtol=1e-12)
    np.testing.assert_allclose(h.detach().numpy()[0], o * np.tanh(cc), rtol=1e-12)
    c_term = dc[0] + dh[0] * o * (1 - np.tanh(cc) ** 2)
    ref_dx = np.concatenate([c_term * g * i * (1 - i), c_term * cp * f * (1 - f),
                             dh[0] * np.tanh(cc) * o * (1 - o), c_term * i * (1 - g * g)], 1)
    np.testing.assert_allclose(tx.grad.numpy()[0], ref_dx, rtol=1e-12)
    np.testing.assert_allclose(tc.grad.numpy()[0], c_term * f, rtol=1e-12)


def test_lstm_backward_matches_finite_differences_float64():
    r = np.random.default_rng(4)
    x, cont = r.standard_normal((3, 2, 3)), np.array([[0.0, 1], [1, 1], [1, 0]])
    p = _param(f'name: "l" type: "LSTM" bottom: "x" bottom: "c" top: "h" recurrent_param {{ num_output: 2 {FILLS} }}')
    layer = LSTM(p, [x.shape, cont.shape]).double()
    tx = torch.tensor(x, requires_grad=True)

    def run(a):
        layer.reset_state()  # stream 1 continues at t=0: start every evaluation from the same zero state
        return layer(a, torch.tensor(cont))

    assert torch.autograd.gradcheck(run, (tx,))
