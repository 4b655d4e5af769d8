"""Caffe's RecurrentLayer family: LSTM, RNN and the LSTMUnit step they are built from.

Bottoms: x (T, N, ...), cont (T, N) (0 starts a new sequence), optional static input (N, ...), and with
``recurrent_param.expose_hidden`` the initial hidden state(s) (1, N, H). Tops: the output (T, N, H),
and with ``expose_hidden`` the final state(s). As in Caffe's unrolled net:
- ``h_conted_{t-1} = cont_t * h_{t-1}``; LSTM's forget gate is multiplied by cont_t;
- without ``expose_hidden`` the final state of one forward is the initial state of the next
  (zeros at first, and again whenever N changes);
- exposed states carry no gradient (Caffe shares only their data), nor does cont.
Parameter blobs in Caffe's order: LSTM W_xc (4H, I), b_c (4H,), [W_xc_static (4H, I_s)], W_hc (4H, H);
RNN W_xh (H, I), b_h (H,), [W_xh_static (H, I_s)], W_hh (H, H), W_ho (H, H), b_o (H,).
Gate order in the 4H axis: i, f, o, g.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer


class _LSTMUnitFn(torch.autograd.Function):
    """One LSTM step (N, H) with Caffe's LSTMUnit CPU backward. ``f`` is ``cont * sigmoid(x_f)`` (0 where
    cont is 0) and its diff is ``c_term * c_prev * f * (1 - f)``: exact for binary cont, Caffe's own
    formula otherwise."""

    @staticmethod
    def forward(ctx, c_prev: Tensor, x: Tensor, cont: Tensor):  # type: ignore[override]
        h_dim = c_prev.shape[-1]
        i = torch.sigmoid(x[:, :h_dim])
        cc = cont.reshape(-1, 1).to(x.dtype)
        f = torch.where(cc == 0, torch.zeros_like(i), cc * torch.sigmoid(x[:, h_dim:2 * h_dim]))
        o = torch.sigmoid(x[:, 2 * h_dim:3 * h_dim])
        g = torch.tanh(x[:, 3 * h_dim:])
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, o * tanh_c

    @staticmethod
    def backward(ctx, dc: Tensor | None, dh: Tensor | None):  # type: ignore[override]
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        dc = torch.zeros_like(c_prev) if dc is None else dc
        dh = torch.zeros_like(c_prev) if dh is None else dh
        c_term = dc + dh * o * (1 - tanh_c * tanh_c)
        dx = torch.cat([
            c_term * g * i * (1 - i),
            c_term * c_prev * f * (1 - f),
            dh * tanh_c * o * (1 - o),
            c_term * i * (1 - g * g),
        ], dim=1)
        return c_term * f, dx, None


def lstm_unit(c_prev: Tensor, x: Tensor, cont: Tensor) -> tuple[Tensor, Tensor]:
    """Caffe's LSTMUnit on (N, H) state, (N, 4H) gate input and (N,) cont: returns (c, h)."""
    return _LSTMUnitFn.apply(c_prev, x, cont.detach())


@register_layer("LSTMUnit")
class LSTMUnit(Layer):
    """Bottoms c_{t-1} (1, N, H), gate input (1, N, 4H), cont (1, N); tops c_t, h_t (1, N, H)."""

    exact_bottoms = 3
    exact_tops = 2

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 2  # the sequence continuation indicators

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        c, x, cont = bottom_shapes
        if len(c) != 3 or len(x) != 3 or len(cont) != 2 or c[0] != 1 or x[0] != 1 or cont[0] != 1:
            raise self.error(f"expects (1, N, H), (1, N, 4H), (1, N); received {bottom_shapes}")
        if x[1] != c[1] or cont[1] != c[1] or x[2] != 4 * c[2]:
            raise self.error(f"expects (1, N, H), (1, N, 4H), (1, N); received {bottom_shapes}")
        return [tuple(c), tuple(c)]

    def forward(self, c_prev: Tensor, x: Tensor, cont: Tensor):  # type: ignore[override]
        c, h = lstm_unit(c_prev[0], x[0], cont[0])
        return [c[None], h[None]]

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(40)
        return [Example('name: "u" type: "LSTMUnit" bottom: "c" bottom: "x" bottom: "cont" top: "c1" top: "h1"',
                        [r.standard_normal((1, 3, 2)), r.standard_normal((1, 3, 8)), np.array([[1.0, 0.0, 1.0]])],
                        grad_bottoms=(0, 1))]


class _Recurrent(Layer):
    """RecurrentLayer: bottom/top wiring, parameter creation, carried state."""

    n_recur: ClassVar[int] = 1
    min_bottoms = 2
    min_tops = 1

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 1  # the sequence continuation indicators

    def setup(self, bottom_shapes: list[Shape]) -> None:
        rp = self.param.recurrent_param
        x, cont = bottom_shapes[0], bottom_shapes[1]
        if len(x) < 2:
            raise self.error(f"bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...); received {x}")
        if len(cont) != 2 or tuple(cont) != tuple(x[:2]):
            raise self.error(f"bottom[1] (cont) must be (#timesteps, #streams) = {tuple(x[:2])}; received {cont}")
        if rp.num_output <= 0:
            raise self.error("recurrent_param.num_output must be positive")
        self.T, self.H, self.expose = x[0], int(rp.num_output), rp.expose_hidden
        exposed = self.n_recur if self.expose else 0
        self.static = len(bottom_shapes) > 2 + exposed
        if len(bottom_shapes) != 2 + self.static + exposed:
            raise self.error(f"expects x, cont, [x_static]{', and ' + str(exposed) + ' hidden state(s)' if exposed else ''}; "
                             f"received {len(bottom_shapes)} bottoms")
        if len(self.param.top) != 1 + exposed:
            raise self.error(f"expects {1 + exposed} top(s) (expose_hidden = {self.expose}); received {len(self.param.top)}")
        if self.static and (len(bottom_shapes[2]) < 1 or bottom_shapes[2][0] != x[1]):
            raise self.error(f"static input must be (N={x[1]}, ...); received {bottom_shapes[2]}")
        in_dim = math.prod(x[2:])
        static_dim = math.prod(bottom_shapes[2][1:]) if self.static else 0
        self.make_params(rp, in_dim, static_dim)
        self.state: list[Tensor] | None = None

    def make_params(self, rp, in_dim: int, static_dim: int) -> None:  # noqa: D102
        raise NotImplementedError

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = bottom_shapes[0]
        if x[0] != self.T:
            raise self.error(f"input number of timesteps changed: {x[0]}, built for {self.T}")
        if tuple(bottom_shapes[1]) != tuple(x[:2]):
            raise self.error(f"cont must be {tuple(x[:2])}; received {bottom_shapes[1]}")
        state = (1, x[1], self.H)
        for s in bottom_shapes[2 + self.static:]:
            if tuple(s) != state:
                raise self.error(f"hidden state input shape must be {state}; received {s}")
        return [(self.T, x[1], self.H)] + [state] * (self.n_recur if self.expose else 0)

    def initial_state(self, extra: tuple[Tensor, ...], like: Tensor, n: int) -> list[Tensor]:
        if self.expose:
            return [s.detach()[0].to(like.dtype) for s in extra]
        if self.state is None or self.state[0].shape[0] != n or self.state[0].device != like.device:
            return [torch.zeros((n, self.H), dtype=like.dtype, device=like.device) for _ in range(self.n_recur)]
        return [s.to(like.dtype) for s in self.state]

    def reset_state(self) -> None:
        """Zero the carried hidden state (Caffe's RecurrentLayer::Reset)."""
        self.state = None

    def finish(self, out: Tensor, final: list[Tensor]):
        final = [s.detach() for s in final]
        if not self.expose:
            self.state = final
            return out
        return [out] + [s[None].clone() for s in final]


@register_layer("LSTM")
class LSTM(_Recurrent):
    """``recurrent_param {num_output weight_filler bias_filler expose_hidden}``; output h (T, N, H)."""

    n_recur = 2
    max_bottoms = 5
    max_tops = 3

    def make_params(self, rp, in_dim: int, static_dim: int) -> None:  # noqa: D102
        h4 = 4 * self.H
        self.add_blob(fill(rp.weight_filler, (h4, in_dim)))
        self.add_blob(fill(rp.bias_filler, (h4,)))
        if self.static:
            self.add_blob(fill(rp.weight_filler, (h4, static_dim)))
        self.add_blob(fill(rp.weight_filler, (h4, self.H)))

    def forward(self, x: Tensor, cont: Tensor, *rest: Tensor):  # type: ignore[override]
        t_steps, n = x.shape[0], x.shape[1]
        w_xc, b_c = self.blobs[0], self.blobs[1]
        w_hc = self.blobs[-1]
        wx = F.linear(x.reshape(t_steps, n, -1), w_xc, b_c)
        ws = F.linear(rest[0].reshape(n, -1), self.blobs[2]) if self.static else None
        h, c = self.initial_state(rest[self.static:], wx, n)
        cont = cont.detach().to(wx.dtype)
        hs = []
        for t in range(t_steps):
            gate = F.linear(h * cont[t, :, None], w_hc) + wx[t]
            if ws is not None:
                gate = gate + ws
            c, h = lstm_unit(c, gate, cont[t])
            hs.append(h)
        return self.finish(torch.stack(hs, 0), [h, c])

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(41)
        cont = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
        fills = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 }'
        return [
            Example('name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h" '
                    f'recurrent_param {{ num_output: 3 {fills} }}', [r.standard_normal((3, 2, 4)), cont]),
            Example('name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "xs" bottom: "h0" bottom: "c0" '
                    f'top: "h" top: "hT" top: "cT" recurrent_param {{ num_output: 2 expose_hidden: true {fills} }}',
                    [r.standard_normal((3, 2, 2, 2)), np.ones((3, 2)), r.standard_normal((2, 3)),
                     r.standard_normal((1, 2, 2)), r.standard_normal((1, 2, 2))], grad_bottoms=(0, 2)),
        ]


@register_layer("RNN")
class RNN(_Recurrent):
    """``recurrent_param`` as LSTM; h_t = tanh(W_hh h_conted + W_xh x_t + b_h [+ W_xh_static x_static]),
    output o_t = tanh(W_ho h_t + b_o)."""

    n_recur = 1
    max_bottoms = 4
    max_tops = 2

    def make_params(self, rp, in_dim: int, static_dim: int) -> None:  # noqa: D102
        h = self.H
        self.add_blob(fill(rp.weight_filler, (h, in_dim)))
        self.add_blob(fill(rp.bias_filler, (h,)))
        if self.static:
            self.add_blob(fill(rp.weight_filler, (h, static_dim)))
        self.add_blob(fill(rp.weight_filler, (h, h)))
        self.add_blob(fill(rp.weight_filler, (h, h)))
        self.add_blob(fill(rp.bias_filler, (h,)))

    def forward(self, x: Tensor, cont: Tensor, *rest: Tensor):  # type: ignore[override]
        t_steps, n = x.shape[0], x.shape[1]
        w_xh, b_h = self.blobs[0], self.blobs[1]
        w_hh, w_ho, b_o = self.blobs[-3], self.blobs[-2], self.blobs[-1]
        wx = F.linear(x.reshape(t_steps, n, -1), w_xh, b_h)
        ws = F.linear(rest[0].reshape(n, -1), self.blobs[2]) if self.static else None
        (h,) = self.initial_state(rest[self.static:], wx, n)
        cont = cont.detach().to(wx.dtype)
        hs = []
        for t in range(t_steps):
            pre = F.linear(h * cont[t, :, None], w_hh) + wx[t]
            if ws is not None:
                pre = pre + ws
            h = torch.tanh(pre)
            hs.append(h)
        out = torch.tanh(F.linear(torch.stack(hs, 0), w_ho, b_o))
        return self.finish(out, [h])

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(42)
        fills = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 }'
        return [
            Example('name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "o" '
                    f'recurrent_param {{ num_output: 3 {fills} }}',
                    [r.standard_normal((4, 2, 3)), np.array([[0.0, 0], [1, 1], [1, 0], [1, 1]])]),
            Example('name: "rnn" type: "RNN" bottom: "x" bottom: "cont" bottom: "xs" bottom: "h0" top: "o" top: "hT" '
                    f'recurrent_param {{ num_output: 2 expose_hidden: true {fills} }}',
                    [r.standard_normal((2, 3, 2)), np.ones((2, 3)), r.standard_normal((3, 4)), r.standard_normal((1, 3, 2))],
                    grad_bottoms=(0, 2)),
        ]
