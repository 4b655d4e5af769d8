"""CTPN's Caffe layers: the BLSTM of the text detector (``Lstm``) and the two layers that lay a feature map
out for it and back (``Transpose``, ``Reverse``).

Lineage: tianzhi0549/CTPN @ f77ec9e (the fork lives in its ``caffe/`` folder):
``caffe/src/caffe/layers/lstm_layer.{cpp,cu}`` (unchanged since the initial commit d407211),
``transpose_layer.{cpp,cu}``, ``reverse_layer.{cpp,cu}`` (their CPU paths added in 9401f73 and 70e6375),
declared in ``caffe/include/caffe/common_layers.hpp``; parameters
``lstm_param``, ``transpose_param``, ``reverse_param`` (proto/NUMBERING.md, lineage ctpn). The released
``models/deploy.prototxt`` runs ``Im2col`` (3x3) on conv5_3, ``Transpose`` to (W, H, N, C*9), ``Reshape``
to (W, H*N, C*9), a forward ``Lstm`` and a ``Reverse``-d one over the width, ``Concat``, and back.

**Transpose** (``transpose_param { dim ... }``, one per bottom axis): axis i of the top is axis ``dim(i)``
of the bottom (``x.permute(dim)``); backward the inverse permutation. Not in place (the fork's CHECK).
**Reverse** (``reverse_param { axis }``, 0 by default, ``0 <= axis < num_axes``): the bottom flipped along
``axis``; backward flips the diff. Not in place.

**Lstm** (type string ``Lstm``, not BVLC's ``LSTM`` of ``neocaffe/layers/recurrent.py``: no ``cont`` bottom,
other blobs). ``lstm_param``: ``num_output`` H, ``clipping_threshold`` (0), ``weight_filler``,
``bias_filler`` (``batch_size`` is read by nothing). Bottom x (T, N, ...), I = its count from axis 2; an
optional second bottom ``clip``; top h (T, N, H). Blobs in the fork's order: ``W_i`` (4H, I) (filled by
``weight_filler``), ``W_h`` (4H, H) (``weight_filler`` too), ``b`` (4H,) (``bias_filler``); gate order
i, f, o, g along 4H. Forward, as the fork's ``.cu`` kernels::

    pre = x W_i^T + b
    pre_t += cont_t * (h_{t-1} W_h^T);  i, f, o = sigmoid(pre_t[i, f, o]);  g = tanh(pre_t[g])
    c_t = cont_t * f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

Without ``clip``: ``cont_t = (t > 0)`` and ``h_{-1} = c_{-1} = 0``. With it, ``cont`` at step t of stream n
is the fork's ``clip[t + n]`` (its kernels index ``clip + bottom[1]->offset(t)`` by n, and its CHECK makes
the clip blob one value per item of axis 0, so the offset of step t is t: for N = 1 a per-step flag, for
N > 1 the fork's indexing, kept), and ``h_{-1}, c_{-1}`` are the last step's h and c of the previous
forward (zeros at first, and again whenever N changes; ``reset_state`` zeroes them). The clip blob must
hold at least T + N - 1 values (the fork reads past it otherwise).

Backward, an ``autograd.Function`` with the fork's ``Backward_gpu``::

    dc_t += dh_t * o * (1 - tanh(c_t)^2)            (dc_{T-1} starts at 0)
    do = dh_t tanh(c_t);  df = cont_t dc_t c_{t-1};  di = dc_t g;  dg = dc_t i;  dc_{t-1} = cont_t dc_t f
    dpre_t = gate derivatives, each clamped to [-clipping_threshold, clipping_threshold] when it is > 0
    dh_{t-1} += cont_t * (dpre_t W_h)
    dW_i = dpre^T x;  db = sum dpre;  dx = dpre W_i;  dW_h = sum_t dpre_t^T h_{t-1} (h_{-1} as in forward)

With ``clipping_threshold`` 0 and no ``clip`` this is the exact gradient; the clamp makes it the fork's
clipped one, and with ``clip`` the ``W_h`` diff keeps the steps whose cont is 0 (the fork does not mask them).
``clip`` gets no diff, nor do the carried states.

Deviations: the fork's CPU ``Forward_cpu`` adds stream 0's ``h_{t-1} W_h^T`` to every stream and its
``Backward_cpu`` adds every stream's recurrent diff into stream 0 (a pointer left unadvanced in each loop);
for N > 1, which the deploy net has (N is the feature map's height), only its CUDA path computes an LSTM per
stream, and we follow the CUDA path (the two agree for N = 1). The ``.cu`` declares its own device
``tanh`` as ``2 sigmoid(2x) - 1``; whichever overload its calls pick, it differs from ``tanh`` by rounding
only. The fork writes the recurrent terms into the top's diff in place; here the top's diff is left as the
layers above gave it. A Transpose ``dim`` that is not a
permutation of the axes (the fork reads out of range or leaves elements unwritten), a ``clip`` shorter
than T + N - 1 and an in-place ``Lstm`` (the fork does not refuse it, but its backward would read the
bottom after the top overwrote it) are errors here, as in-place Transpose and Reverse are in the fork.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neocaffe.layers.base import Example, Layer, Shape
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import register_layer

K_MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes


@register_layer("Transpose")
class TransposeLayer(Layer):
    """``transpose_param { dim ... }``: axis i of the top is axis ``dim(i)`` of the bottom."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.dims = tuple(int(d) for d in self.param.transpose_param.dim)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        n = len(shape)
        if not 0 < n <= K_MAX_BLOB_AXES:
            raise self.error(f"the bottom must have 1 to {K_MAX_BLOB_AXES} axes; received shape {shape}")
        if len(self.dims) != n:
            raise self.error(f"transpose_param needs one dim per bottom axis: the bottom {shape} has {n}, "
                             f"received {len(self.dims)} ({list(self.dims)})")
        if sorted(self.dims) != list(range(n)):
            raise self.error(f"transpose_param.dim must be a permutation of 0..{n - 1}; received {list(self.dims)}")
        return [tuple(shape[d] for d in self.dims)]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not torch.compiler.is_compiling():
            self.reshape([tuple(x.shape)])
        return x.permute(self.dims).contiguous()

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(71)
        return [Example('name: "t" type: "Transpose" bottom: "x" top: "y" transpose_param { dim: 3 dim: 2 dim: 0 dim: 1 }',
                        [r.standard_normal((2, 3, 4, 5))]),
                Example('name: "t" type: "Transpose" bottom: "x" top: "y" transpose_param { dim: 1 dim: 2 dim: 0 }',
                        [r.standard_normal((3, 1, 2))])]


@register_layer("Reverse")
class ReverseLayer(Layer):
    """``reverse_param { axis }``: the bottom flipped along ``axis``."""

    exact_bottoms = 1
    exact_tops = 1
    allow_in_place = False

    def setup(self, bottom_shapes: list[Shape]) -> None:
        self.axis = int(self.param.reverse_param.axis)

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        if not shape:
            raise self.error("does not take a 0-axis bottom")
        if not 0 <= self.axis < len(shape):  # the fork's CHECK_GE(axis, 0), CHECK_LT(axis, num_axes)
            raise self.error(f"reverse_param.axis must be in [0, {len(shape)}) for a bottom of shape {shape}; "
                             f"received {self.axis}")
        return [shape]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not torch.compiler.is_compiling():
            self.reshape([tuple(x.shape)])
        return torch.flip(x, (self.axis,))

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(72)
        return [Example('name: "r" type: "Reverse" bottom: "x" top: "y" reverse_param { axis: 0 }',
                        [r.standard_normal((4, 2, 3))]),
                Example('name: "r" type: "Reverse" bottom: "x" top: "y" reverse_param { axis: 2 }',
                        [r.standard_normal((2, 3, 5))])]


def _lstm_steps(pre: Tensor, w_h: Tensor, cont: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The recurrence on the input-to-gate terms ``pre`` (T, N, 4H): gates (T, N, 4H, after the
    nonlinearities), cells and outputs (T, N, H)."""
    hd = h0.shape[-1]
    gates, cells, outs = [], [], []
    h, c = h0, c0
    for t in range(pre.shape[0]):
        ct = cont[t][:, None]
        p = pre[t] + ct * (h @ w_h.t())  # ClipAdd
        gate = torch.cat([torch.sigmoid(p[:, :3 * hd]), torch.tanh(p[:, 3 * hd:])], dim=1)
        i, f, o, g = gate.split(hd, dim=1)
        c = ct * f * c + i * g
        h = o * torch.tanh(c)
        gates.append(gate)
        cells.append(c)
        outs.append(h)
    return torch.stack(gates), torch.stack(cells), torch.stack(outs)


class _LstmFn(torch.autograd.Function):
    """The fork's LSTM with its ``Backward_gpu`` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, w_i: Tensor, w_h: Tensor, b: Tensor, cont: Tensor, h0: Tensor, c0: Tensor,
                threshold: float):  # noqa: D102
        gates, cells, outs = _lstm_steps(F.linear(x, w_i, b), w_h, cont, h0, c0)
        ctx.save_for_backward(x, w_i, w_h, cont, h0, c0, gates, cells, outs)
        ctx.threshold = threshold
        ctx.mark_non_differentiable(cells)
        return outs, cells

    @staticmethod
    def backward(ctx, dout: Tensor, _dcells: Tensor):  # noqa: D102
        x, w_i, w_h, cont, h0, c0, gates, cells, outs = ctx.saved_tensors
        t_steps, hd = outs.shape[0], outs.shape[-1]
        thr = ctx.threshold
        dh = dout if dout is not None else torch.zeros_like(outs)
        dpre = torch.empty_like(gates)
        dc = torch.zeros_like(c0)  # c_T's diff: never written by the fork
        carry = torch.zeros_like(h0)  # the recurrent part of dh_t
        for t in range(t_steps - 1, -1, -1):
            ct = cont[t][:, None]
            i, f, o, g = gates[t].split(hd, dim=1)
            c_prev = cells[t - 1] if t > 0 else c0
            dh_t = dh[t] + carry
            tanh_c = torch.tanh(cells[t])
            dc = dc + dh_t * o * (1 - tanh_c * tanh_c)
            d = torch.cat([dc * g * i * (1 - i), ct * dc * c_prev * f * (1 - f), dh_t * tanh_c * o * (1 - o),
                           dc * i * (1 - g * g)], dim=1)
            if thr > 0:
                d = d.clamp(-thr, thr)
            dpre[t] = d
            dc = ct * dc * f
            carry = ct * (d @ w_h)
        flat = dpre.reshape(-1, dpre.shape[-1])
        dx = dw_i = dw_h = db = None
        if ctx.needs_input_grad[0]:
            dx = (flat @ w_i).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            dw_i = flat.t() @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[2]:
            h_prev = torch.cat([h0[None], outs[:-1]]).reshape(-1, hd)
            dw_h = flat.t() @ h_prev
        if ctx.needs_input_grad[3]:
            db = flat.sum(0)
        return dx, dw_i, dw_h, db, None, None, None, None


@register_layer("Lstm")
class LstmLayer(Layer):
    """CTPN's ``Lstm``: bottoms x (T, N, ...) and an optional clip; top h (T, N, num_output)."""

    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1
    allow_in_place = False

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom == 0  # the fork writes no diff for clip

    def setup(self, bottom_shapes: list[Shape]) -> None:
        p = self.param.lstm_param
        x = tuple(bottom_shapes[0])
        if len(x) < 2:
            raise self.error(f"the bottom must have at least 2 axes (T, N, ...); received shape {x}")
        self.H = int(p.num_output)
        if self.H <= 0:
            raise self.error(f"lstm_param.num_output must be positive; received {self.H}")
        self.I = math.prod(x[2:])
        self.threshold = float(p.clipping_threshold)
        self.add_blob(fill(p.weight_filler, (4 * self.H, self.I)))  # input-to-hidden
        self.add_blob(fill(p.weight_filler, (4 * self.H, self.H)))  # hidden-to-hidden
        self.add_blob(fill(p.bias_filler, (4 * self.H,)))
        self.state: tuple[Tensor, Tensor] | None = None  # (h_T, c_T) of the last forward, for clip

    def reshape(self, bottom_shapes: list[Shape]) -> list[Shape]:
        x = tuple(bottom_shapes[0])
        if len(x) < 2 or math.prod(x[2:]) != self.I:
            raise self.error(f"input size incompatible with the weights: bottom {x} has {math.prod(x[2:])} "
                             f"inputs per step from axis 2; expected {self.I}")
        if len(bottom_shapes) > 1:
            clip = tuple(bottom_shapes[1])
            count = math.prod(clip)
            if not clip or clip[0] != count:
                raise self.error(f"clip must hold one value per item of its axis 0 (num == count, the fork's "
                                 f"CHECK); received shape {clip}")
            if x[0] and x[1] and count < x[0] + x[1] - 1:
                raise self.error(f"clip must hold at least T + N - 1 = {x[0] + x[1] - 1} values (step t of stream "
                                 f"n reads clip[t + n], as the fork); received {count}")
        return [(x[0], x[1], self.H)]

    def reset_state(self) -> None:
        """Zero the state a forward with ``clip`` starts from."""
        self.state = None

    def _cont(self, clip: Tensor | None, t_steps: int, n: int, like: Tensor) -> Tensor:
        if clip is None:
            cont = torch.ones((t_steps, n), dtype=like.dtype, device=like.device)
            cont[:1] = 0
            return cont
        steps = torch.arange(t_steps, device=clip.device)[:, None] + torch.arange(n, device=clip.device)[None, :]
        return clip.detach().reshape(-1)[steps].to(device=like.device, dtype=like.dtype)

    def forward(self, x: Tensor, *clip: Tensor) -> Tensor:  # type: ignore[override]
        if not torch.compiler.is_compiling():
            self.reshape([tuple(x.shape)] + [tuple(c.shape) for c in clip])
        t_steps, n = x.shape[0], x.shape[1]
        w_i, w_h, b = self.blobs[0], self.blobs[1], self.blobs[2]
        x3 = x.reshape(t_steps, n, self.I)
        cont = self._cont(clip[0] if clip else None, t_steps, n, x3)
        h0 = torch.zeros((n, self.H), dtype=x3.dtype, device=x3.device)
        c0 = torch.zeros_like(h0)
        if clip and self.state is not None and self.state[0].shape[0] == n:
            h0, c0 = (s.to(device=x3.device, dtype=x3.dtype) for s in self.state)
        if t_steps == 0:
            return x3.new_zeros((0, n, self.H))
        if torch.is_grad_enabled() and any(v.requires_grad for v in (x3, w_i, w_h, b)):
            outs, cells = _LstmFn.apply(x3, w_i, w_h, b, cont, h0, c0, self.threshold)
        else:
            _, cells, outs = _lstm_steps(F.linear(x3, w_i, b), w_h, cont, h0, c0)
        if clip:
            self.state = (outs[-1].detach(), cells[-1].detach())
        return outs

    @classmethod
    def examples(cls) -> list[Example]:
        r = np.random.default_rng(73)
        fills = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 }'
        # clip[t + n]: the first N values 0, so step 0 of every stream ignores the carried state
        clip = np.array([0.0, 0.0, 1.0, 0.0, 1.0])
        return [
            Example(f'name: "lstm" type: "Lstm" bottom: "x" top: "h" lstm_param {{ num_output: 3 {fills} }}',
                    [r.standard_normal((4, 2, 2, 2))]),
            Example(f'name: "lstm" type: "Lstm" bottom: "x" bottom: "clip" top: "h" '
                    f'lstm_param {{ num_output: 2 {fills} }}',
                    [r.standard_normal((4, 2, 3)), clip], grad_params=False),
        ]

