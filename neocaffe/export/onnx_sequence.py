"""ONNX emitters of the recurrent and sequence layers, unrolled over a static number of time steps T (one group
of ``MatMul``/``Sigmoid``/``Tanh``/``Mul``/``Add`` nodes per step). ONNX's own ``LSTM``/``RNN`` ops are not
used: they cannot reset the state of one stream at one step as ``cont`` does.

* BVLC (recurrent_layer.cpp, lstm_layer.cpp, rnn_layer.cpp, lstm_unit_layer.cpp; ``neocaffe.layers.recurrent``):
  ``LSTM``, ``RNN`` and ``LSTMUnit``. Per step, as the unrolled net: ``h_conted = cont_t * h_{t-1}``;
  LSTM gates ``W_hc h_conted + W_xc x_t + b_c [+ W_xc_static x_static]`` in the order i, f, o, g, the forget
  gate times ``cont_t``, ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``; RNN ``h_t = tanh(W_hh h_conted +
  W_xh x_t + b_h [+ W_xh_static x_static])``, output ``tanh(W_ho h_t + b_o)``. ``expose_hidden``: the
  initial states are bottoms and the final ones tops.
* CTPN (tianzhi0549/CTPN @ f77ec9e, caffe/src/caffe/layers/{lstm,transpose,reverse}_layer.cu;
  ``neocaffe.layers.ctpn``): ``Lstm`` (``pre = x W_i^T + b``; ``pre_t + cont_t h_{t-1} W_h^T``; ``c_t =
  cont_t f c_{t-1} + i g``; ``cont_t = (t > 0)``, or with a ``clip`` bottom the fork's ``clip[t + n]``),
  ``Transpose`` (``Transpose`` with ``perm = dim``), ``Reverse`` (a ``Slice`` with step -1).
* ``CTCGreedyDecoder`` (TextBoxes++'s form, ``neocaffe.layers.ctc_decoder``, and caffe_ocr's 1-bottom form,
  ``neocaffe.layers.ocr``): first largest class per step (``ArgMax``), a step emits unless it is the blank
  or (``ctc_merge_repeated``) the previous step's class, and (TextBoxes++) while the sequence runs (until
  the first t >= 1 whose indicator is 0); the emitted classes packed to the left of an (N, T, 1, 1) top
  filled with -1 (``ScatterElements`` into T + 1 columns: the steps that emit nothing all write -1 to the last,
  which is dropped); TextBoxes++'s scores ``sum -max`` over the running steps.

Deviations, stated by the errors they raise or here: the carried state of ``LSTM``/``RNN`` without
``expose_hidden`` and of ``Lstm`` with ``clip`` (the last forward's final state, in neocaffe and Caffe) is
zero in the export: it equals the first forward of a fresh net (or one after ``reset_state``), and every
forward whose ``cont``/``clip`` is 0 at step 0 of every stream. The decoder's accuracy tops (an edit
distance against targets: TextBoxes++'s third top, caffe_ocr's 2-bottom form) are metrics and refused.
A dynamic T or N is refused (export with a fixed -batch).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from neocaffe.export.onnx_fork import field, param
from neocaffe.export.onnx_graph import OnnxGraph
from neocaffe.export.registry import LayerNode, onnx_emitter

f32 = np.float32
INT64 = 7  # onnx.TensorProto.INT64


def _fixed(n: LayerNode, bottoms: int | None = None) -> None:
    """Refuse dynamic axes on the (first ``bottoms``) bottoms: the graph is unrolled over static T and N."""
    for i, (shape, dyn) in enumerate(list(zip(n.bottom_shapes, n.bottom_batch))[:bottoms]):
        if any(dyn):
            raise n.error(f"bottom {i} {tuple(shape)} has dynamic axes {[a for a, d in enumerate(dyn) if d]}; the "
                          "layer is unrolled over a static number of steps and streams (export with a fixed -batch)")


def _linear(g: OnnxGraph, x: str, w: np.ndarray, b: np.ndarray | None, hint: str) -> str:
    """``x W^T (+ b)`` with W in Caffe's (out, in) layout."""
    y = g.op("MatMul", x, g.const(np.ascontiguousarray(np.asarray(w, f32).T), f"{hint}_weight_t"), hint=hint)
    return y if b is None else g.op("Add", y, g.const(np.asarray(b, f32).reshape(-1), f"{hint}_bias"))


def _step(g: OnnxGraph, seq: str, t: int) -> str:
    """``seq[t]`` of a (T, ...) tensor."""
    return g.op("Gather", seq, g.const(np.int64(t), "t", np.int64), axis=0, hint=f"step{t}")


def _stack(g: OnnxGraph, steps: list[str]) -> str:
    """(T, ...) from T tensors."""
    ups = [g.op("Unsqueeze", s, g.ints([0])) for s in steps]
    return ups[0] if len(ups) == 1 else g.op("Concat", *ups, axis=0)


def _gates(g: OnnxGraph, gate: str, H: int) -> list[str]:
    """i, f, o (sigmoids) and g (tanh) of an (N, 4H) gate input, in BVLC's and CTPN's order."""
    sig = g.op("Sigmoid", g.op("Slice", gate, g.ints([0]), g.ints([3 * H]), g.ints([1])))
    i, f, o = g.op("Split", sig, g.ints([H, H, H], "split"), axis=1, outputs=3, hint="ifo")
    return [i, f, o, g.op("Tanh", g.op("Slice", gate, g.ints([3 * H]), g.ints([4 * H]), g.ints([1])))]


def lstm_unit_step(g: OnnxGraph, c_prev: str, gate: str, cont: str, H: int) -> tuple[str, str]:
    """BVLC's LSTMUnit on (N, H) c_prev, (N, 4H) gate input, (N, 1) cont: (c, h)."""
    i, f, o, gg = _gates(g, gate, H)
    c = g.op("Add", g.op("Mul", g.op("Mul", cont, f), c_prev), g.op("Mul", i, gg), hint="c")
    return c, g.op("Mul", o, g.op("Tanh", c), hint="h")


@onnx_emitter("LSTMUnit")
def lstm_unit(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Bottoms c_{t-1} (1, N, H), gate input (1, N, 4H), cont (1, N); tops c_t, h_t (1, N, H)."""
    _fixed(n)
    _, N, H = n.bottom_shapes[0]
    c_prev = g.reshape(n.inputs[0], (N, H))
    gate = g.reshape(n.inputs[1], (N, 4 * H))
    cont = g.reshape(n.inputs[2], (N, 1))
    c, h = lstm_unit_step(g, c_prev, gate, cont, H)
    return [g.reshape(c, (1, N, H)), g.reshape(h, (1, N, H))]


@onnx_emitter("LSTM", "RNN")
def recurrent(g: OnnxGraph, n: LayerNode) -> list[str]:
    """BVLC's LSTM and RNN, unrolled over the T steps (see the module docstring)."""
    _fixed(n)
    rp = param(n, "recurrent_param")
    lstm = n.type == "LSTM"
    H, expose = int(rp.num_output), bool(field(rp, "expose_hidden", False))
    n_recur = 2 if lstm else 1
    exposed = n_recur if expose else 0
    static = len(n.inputs) > 2 + exposed
    x_shape = n.bottom_shapes[0]
    T, N = int(x_shape[0]), int(x_shape[1])
    if T == 0 or N == 0:
        raise n.error(f"needs at least one step and one stream; received x of shape {tuple(x_shape)}")
    blobs = n.blobs
    expected = (3 if lstm else 5) + static
    if len(blobs) != expected:
        raise n.error(f"expects {expected} parameter blobs; received {len(blobs)}")
    wx = _linear(g, g.reshape(n.inputs[0], (T, N, math.prod(x_shape[2:]))), blobs[0], blobs[1], "wx")  # (T, N, G)
    ws = None
    if static:
        xs = n.bottom_shapes[2]
        ws = _linear(g, g.reshape(n.inputs[2], (N, math.prod(xs[1:]))), blobs[2], None, "ws")
    cont = g.reshape(n.inputs[1], (T, N, 1), hint="cont")
    if expose:
        state = [g.reshape(s, (N, H)) for s in n.inputs[2 + static:]]
    else:  # the carried state of a fresh net (see the module docstring)
        state = [g.const(np.zeros((N, H), f32), "zero_state")] * n_recur
    w_rec = blobs[2 + static]
    hs = []
    for t in range(T):
        with g.scope(f"{n.name}/t{t}"):
            ct = _step(g, cont, t)
            gate = g.op("Add", _linear(g, g.op("Mul", state[0], ct, hint="h_conted"), w_rec, None, "wh"),
                        _step(g, wx, t), hint="gate")
            if ws is not None:
                gate = g.op("Add", gate, ws, hint="gate")
            if lstm:
                c, h = lstm_unit_step(g, state[1], gate, ct, H)
                state = [h, c]
            else:
                state = [g.op("Tanh", gate, hint="h")]
            hs.append(state[0])
    out = _stack(g, hs)
    if not lstm:  # o_t = tanh(W_ho h_t + b_o)
        out = g.op("Tanh", _linear(g, out, blobs[-2], blobs[-1], "who"), hint="o")
    tops = [out]
    if expose:
        tops += [g.op("Unsqueeze", s, g.ints([0]), hint="final") for s in state]
    return tops


@onnx_emitter("Lstm")
def ctpn_lstm(g: OnnxGraph, n: LayerNode) -> list[str]:
    """CTPN's Lstm (blobs W_i (4H, I), W_h (4H, H), b (4H,)), unrolled over T; ``clipping_threshold``
    changes only the backward."""
    _fixed(n)
    x_shape = n.bottom_shapes[0]
    T, N = int(x_shape[0]), int(x_shape[1])
    if T == 0 or N == 0:
        raise n.error(f"needs at least one step and one stream; received x of shape {tuple(x_shape)}")
    if len(n.blobs) != 3:
        raise n.error(f"expects 3 parameter blobs (W_i, W_h, b); received {len(n.blobs)}")
    w_i, w_h, b = n.blobs
    H = int(w_h.shape[-1])
    pre = _linear(g, g.reshape(n.inputs[0], (T, N, math.prod(x_shape[2:]))), w_i, b, "pre")  # (T, N, 4H)
    cont = None
    if len(n.inputs) > 1:  # cont at step t of stream n: clip[t + n], the fork's indexing
        idx = (np.arange(T)[:, None] + np.arange(N)[None, :])[..., None].astype(np.int64)
        cont = g.op("Gather", g.reshape(n.inputs[1], (math.prod(n.bottom_shapes[1]),)), g.const(idx, "clip_index",
                                                                                                 np.int64), axis=0)
    h = c = None
    hs = []
    for t in range(T):
        with g.scope(f"{n.name}/t{t}"):
            p = _step(g, pre, t)
            ct = _step(g, cont, t) if cont is not None else None
            if h is not None:  # without clip, step 0 starts from zeros with cont 0: p = pre_0, c = i g
                rec = _linear(g, h, w_h, None, "wh")
                p = g.op("Add", p, rec if ct is None else g.op("Mul", ct, rec), hint="gate")
            i, f, o, gg = _gates(g, p, H)
            ig = g.op("Mul", i, gg)
            if c is None:
                c = ig
            else:
                fc = g.op("Mul", f if ct is None else g.op("Mul", ct, f), c)
                c = g.op("Add", fc, ig, hint="c")
            h = g.op("Mul", o, g.op("Tanh", c), hint="h")
            hs.append(h)
    return [_stack(g, hs)]


@onnx_emitter("Transpose")
def transpose(g: OnnxGraph, n: LayerNode) -> list[str]:
    """CTPN's Transpose: axis i of the top is axis ``transpose_param.dim(i)`` of the bottom."""
    dims = [int(d) for d in param(n, "transpose_param").dim]
    if sorted(dims) != list(range(len(n.bottom_shapes[0]))):
        raise n.error(f"transpose_param.dim {dims} is not a permutation of the bottom's "
                      f"{len(n.bottom_shapes[0])} axes")
    return [g.op("Transpose", n.inputs[0], perm=dims)]


@onnx_emitter("Reverse")
def reverse(g: OnnxGraph, n: LayerNode) -> list[str]:
    """CTPN's Reverse: the bottom flipped along ``reverse_param.axis`` (0 by default)."""
    axis = int(field(param(n, "reverse_param"), "axis", 0))
    if not 0 <= axis < len(n.bottom_shapes[0]):
        raise n.error(f"reverse_param.axis {axis} is outside the bottom's {len(n.bottom_shapes[0])} axes")
    big = np.iinfo(np.int64).max
    return [g.op("Slice", n.inputs[0], g.ints([-1], "starts"), g.ints([-big], "ends"), g.ints([axis], "axes"),
                 g.ints([-1], "steps"))]


def _decoder_config(n: LayerNode) -> tuple[bool, int, bool]:
    """(caffe_ocr's form, blank, merge) from the built layer, else from ``ctc_decoder_param`` (one bottom:
    caffe_ocr's, default blank 0; two or three: TextBoxes++', blank < 0 meaning C - 1)."""
    C = int(n.bottom_shapes[0][2])
    L: Any = n.layer
    if L is not None:
        return bool(getattr(L, "ocr", False)), int(L.blank), bool(L.merge)
    p = param(n, "ctc_decoder_param")
    ocr = len(n.inputs) == 1
    blank = int(field(p, "blank_index", 0 if ocr else -1))
    return ocr, blank if blank >= 0 else C - 1, bool(field(p, "ctc_merge_repeated", True))


@onnx_emitter("CTCGreedyDecoder")
def ctc_greedy_decoder(g: OnnxGraph, n: LayerNode) -> list[str]:
    """Best-path decoding to an (N, T, 1, 1) top of classes then -1 (and TextBoxes++'s scores)."""
    _fixed(n)
    ocr, blank, merge = _decoder_config(n)
    shape = n.bottom_shapes[0]
    T, N, C = int(shape[0]), int(shape[1]), int(shape[2])
    if ocr and len(n.inputs) > 1:
        raise n.error("caffe_ocr's 2-bottom form computes an accuracy (edit distance) against labels: a metric, "
                      "not exported; drop it from the deploy net")
    if not ocr and len(n.inputs) == 3 and len(n.top_shapes) > 1:
        raise n.error("the accuracy top (edit distance against the targets, 3 bottoms) is a metric, not exported; "
                      "drop it (and the targets bottom) from the deploy net")
    if T == 0 or N == 0 or C == 0:
        raise n.error(f"needs at least one step, stream and class; received x of shape {tuple(shape)}")
    probs = g.reshape(n.inputs[0], (T, N, math.prod(shape[2:])))
    if math.prod(shape[2:]) != C:  # the first C values of each step's flattened trailing axes, as the layer
        probs = g.op("Slice", probs, g.ints([0]), g.ints([C]), g.ints([2]))
    best = g.op("ArgMax", probs, axis=2, keepdims=0, select_last_index=0, hint="best")  # (T, N) int64
    emit = g.op("Not", g.op("Equal", best, g.const(np.int64(blank), "blank", np.int64)))
    if merge:
        prev = g.op("Concat", g.const(np.full((1, N), -1, np.int64), "no_class", np.int64),
                    g.op("Slice", best, g.ints([0]), g.ints([T - 1]), g.ints([0])), axis=0, hint="prev")
        emit = g.op("And", emit, g.op("Not", g.op("Equal", best, prev)))
    run = None
    if not ocr:  # the sequence runs until the first t >= 1 whose indicator is exactly 0
        num, ch, hh, ww = (tuple(n.bottom_shapes[1]) + (1, 1, 1, 1))[:4]
        idx = ((np.arange(T)[:, None] * ch + np.arange(N)[None, :]) * hh * ww).astype(np.int64)
        ind = g.op("Gather", g.reshape(n.inputs[1], (math.prod(n.bottom_shapes[1]),)), g.const(idx, "ind_index",
                                                                                                np.int64), axis=0)
        stop = g.op("Cast", g.op("Equal", ind, g.scalar(0.0)), to=1)
        stop = g.op("Mul", stop, g.const(np.array([[0.0]] + [[1.0]] * (T - 1), f32), "from_step_1"))
        run = g.op("Equal", g.op("CumSum", stop, g.const(np.int64(0), "axis0", np.int64)), g.scalar(0.0), hint="run")
        emit = g.op("And", emit, run)
    emit_i = g.op("Cast", emit, to=INT64)
    pos = g.op("Sub", g.op("CumSum", emit_i, g.const(np.int64(0), "axis0", np.int64)), g.ints([1], "one"))
    pos = g.op("Where", emit, pos, g.const(np.int64(T), "dump", np.int64))  # column T: a dump
    val = g.op("Where", emit, best, g.const(np.int64(-1), "minus_one", np.int64))
    seq = g.op("ScatterElements", g.const(np.full((N, T + 1), -1, f32), "unfilled"),
               g.op("Transpose", pos, perm=[1, 0]), g.op("Cast", g.op("Transpose", val, perm=[1, 0]), to=1), axis=1)
    seq = g.op("Slice", seq, g.ints([0]), g.ints([T]), g.ints([1]))
    tops = [g.reshape(seq, (N, T, 1, 1))]
    if len(n.top_shapes) > 1:  # TextBoxes++' scores: sum over the running steps of -max
        top = g.reduce("ReduceMax", probs, [2], keepdims=False)
        score = g.op("Where", run, g.op("Neg", top), g.scalar(0.0))
        tops.append(g.reshape(g.reduce("ReduceSum", score, [0], keepdims=False), (N, 1, 1, 1)))
    return tops
