"""NumPy ports of CTPN's Caffe layers, loop for loop, and our own version of its Python text-proposal layer.

Sources: tianzhi0549/CTPN @ f77ec9e7c4c010c8834cf0f87111370b14a00f33, ``caffe/src/caffe/layers/
transpose_layer.cpp`` (``transpose_cpu``), ``reverse_layer.cpp`` (``reverse_cpu``), ``lstm_layer.cu`` (the
kernels ``ClipAdd``, ``ActivationForward``, ``LSTMForward``, ``LSTMBackward``, ``ActivationBackward`` and the
gemms of ``Forward_gpu``/``Backward_gpu``), ``lstm_layer.cpp`` (``Forward_cpu``/``Backward_cpu``, with the
pointers they leave unadvanced), and ``src/layers/text_proposal_layer.py`` with ``src/anchor.py`` and
``src/other.py``'s ``clip_boxes`` (Python 2 code: ``h/2`` of an int is floor division there).
"""
from __future__ import annotations

import math

import numpy as np

from neocaffe.layers.proposal import parse_param_str


# -- Transpose / Reverse --------------------------------------------------------------------------
def _counts(shape):
    """``count(i + 1)`` for every axis i (1 for the last), as the fork's ``bottom_counts_``."""
    return [math.prod(shape[i + 1:]) for i in range(len(shape))]


def transpose_port(data, dims, backward=False):
    """``transpose_cpu`` over every element. Forward: ``data`` is the bottom; backward: ``data`` is the
    top's diff (shaped as the top) and the result is the bottom's diff."""
    data = np.asarray(data)
    n = len(dims)
    if not backward:
        from_shape = data.shape
        to_shape = tuple(from_shape[d] for d in dims)
        mapping = list(dims)
    else:
        from_shape = data.shape
        to_shape = [0] * n
        for i, d in enumerate(dims):
            to_shape[d] = from_shape[i]
        to_shape = tuple(to_shape)
        mapping = [0] * n
        for i, d in enumerate(dims):
            mapping[d] = i  # backward_map_
    from_counts, to_counts = _counts(from_shape), _counts(to_shape)
    src = data.ravel()
    out = np.zeros(src.size, data.dtype)
    for index in range(src.size):
        rest, inds = index, []
        for i in range(n):
            inds.append(rest // from_counts[i])
            rest %= from_counts[i]
        to_index = sum(inds[mapping[i]] * to_counts[i] for i in range(n))
        out[to_index] = src[index]
    return out.reshape(to_shape)


def reverse_port(data, axis):
    """``reverse_cpu`` over every element (forward; the backward is the same call on the diff)."""
    data = np.asarray(data)
    counts = _counts(data.shape)
    axis_count = data.shape[axis]
    src = data.ravel()
    out = np.zeros(src.size, data.dtype)
    for index in range(src.size):
        ind = (index // counts[axis]) % axis_count
        out[counts[axis] * (axis_count - 2 * ind - 1) + index] = src[index]
    return out.reshape(data.shape)


# -- Lstm ----------------------------------------------------------------------------------------
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def lstm_cuda_port(x, w_i, w_h, b, top_diff, threshold=0.0, clip=None, h_T=None, c_T=None):
    """``LstmLayer::Forward_gpu`` then ``Backward_gpu``, each kernel a loop over its CUDA indices, the gemms
    as matrix products. ``clip``: the optional second bottom (the fork reads ``clip[t + n]``); ``h_T``/``c_T``:
    the state the previous forward left (used only with ``clip``; zeros when None). Returns the top (T, N, H),
    the next ``(h_T, c_T)``, and the diffs of x, W_i, W_h, b."""
    T, N = x.shape[:2]
    I = math.prod(x.shape[2:])
    H = w_h.shape[1]
    X = x.reshape(T * N, I)
    cflat = None if clip is None else np.asarray(clip).ravel()

    def clip_at(t, n):
        return cflat[t + n] if cflat is not None else float(t > 0)

    zeros = np.zeros(N * H)
    h0 = zeros.copy() if clip is None or h_T is None else np.asarray(h_T, float).ravel().copy()
    c0 = zeros.copy() if clip is None or c_T is None else np.asarray(c_T, float).ravel().copy()
    pre = (X @ w_i.T + np.ones((T * N, 1)) @ b[None, :]).reshape(T, N * 4 * H)
    gate = np.zeros((T, N * 4 * H))
    top = np.zeros((T, N * H))
    cell = np.zeros((T, N * H))
    for t in range(T):
        h_prev = top[t - 1] if t > 0 else h0
        c_prev = cell[t - 1] if t > 0 else c0
        h_to_gate = (h_prev.reshape(N, H) @ w_h.T).ravel()
        for index in range(4 * N * H):  # ClipAdd(4NH, dim = 4H)
            pre[t, index] += clip_at(t, index // (4 * H)) * h_to_gate[index]
        for index in range(4 * N * H):  # ActivationForward
            v = pre[t, index]
            gate[t, index] = _sigmoid(v) if index % (4 * H) < 3 * H else np.tanh(v)
        for index in range(N * H):  # LSTMForward
            n, d = divmod(index, H)
            off = 4 * H * n
            i_t, f_t, o_t, g_t = (gate[t, off + k * H + d] for k in range(4))
            cell[t, index] = clip_at(t, n) * f_t * c_prev[index] + i_t * g_t
            top[t, index] = o_t * np.tanh(cell[t, index])
    # Backward_gpu
    tdiff = np.array(top_diff, float).reshape(T, N * H).copy()  # the fork adds into the top's diff
    cdiff = np.zeros((T, N * H))  # c_T's diff (0) is copied to step T-1
    gdiff = np.zeros((T, N * 4 * H))
    pdiff = np.zeros((T, N * 4 * H))
    h0_diff, c0_diff = zeros.copy(), zeros.copy()
    for t in range(T - 1, -1, -1):
        dh_t, dc_t = tdiff[t], cdiff[t]
        dh_prev = tdiff[t - 1] if t > 0 else h0_diff
        dc_prev = cdiff[t - 1] if t > 0 else c0_diff
        c_prev = cell[t - 1] if t > 0 else c0
        for index in range(N * H):  # LSTMBackward
            n, d = divmod(index, H)
            off = 4 * H * n
            i_t, f_t, o_t, g_t = (gate[t, off + k * H + d] for k in range(4))
            tanh_c = np.tanh(cell[t, index])
            ct = clip_at(t, n)
            gdiff[t, off + 2 * H + d] = dh_t[index] * tanh_c
            dc_t[index] += dh_t[index] * o_t * (1 - tanh_c * tanh_c)
            dc_prev[index] = ct * dc_t[index] * f_t
            gdiff[t, off + H + d] = ct * dc_t[index] * c_prev[index]
            gdiff[t, off + d] = dc_t[index] * g_t
            gdiff[t, off + 3 * H + d] = dc_t[index] * i_t
        for index in range(4 * N * H):  # ActivationBackward
            g = gate[t, index]
            if index % (4 * H) < 3 * H:
                v = gdiff[t, index] * g * (1 - g)
            else:
                v = gdiff[t, index] * (1 - g * g)
            if threshold > 0:
                v = min(max(v, -threshold), threshold)
            pdiff[t, index] = v
        h_to_h = (pdiff[t].reshape(N, 4 * H) @ w_h).ravel()
        for index in range(N * H):  # ClipAdd(NH, dim = H)
            dh_prev[index] += clip_at(t, index // H) * h_to_h[index]
    P = pdiff.reshape(T * N, 4 * H)
    dw_i = P.T @ X
    dw_h = pdiff[1:].reshape((T - 1) * N, 4 * H).T @ top[:-1].reshape((T - 1) * N, H)
    dw_h = dw_h + pdiff[0].reshape(N, 4 * H).T @ h0.reshape(N, H)
    db = P.T @ np.ones(T * N)
    dx = (P @ w_i).reshape(x.shape)
    state = (top[T - 1].reshape(N, H), cell[T - 1].reshape(N, H))
    return top.reshape(T, N, H), state, dx, dw_i, dw_h, db


def lstm_cpu_port(x, w_i, w_h, b, top_diff, threshold=0.0):
    """``LstmLayer::Forward_cpu`` then ``Backward_cpu`` without clip, as written: the forward adds the
    hidden-to-gate row of stream 0 to every stream (``h_to_gate`` is not advanced) and the backward adds
    every stream's recurrent diff into stream 0 (``dh_t_1`` is not advanced). Returns the top and the
    diffs of x, W_i, W_h, b."""
    T, N = x.shape[:2]
    I = math.prod(x.shape[2:])
    H = w_h.shape[1]
    X = x.reshape(T * N, I)
    pre = (X @ w_i.T + b[None, :]).reshape(T, N, 4 * H)
    gate = np.zeros((T, N, 4 * H))
    top = np.zeros((T, N, H))
    cell = np.zeros((T, N, H))
    h0 = np.zeros((N, H))
    for t in range(T):
        h_prev = top[t - 1] if t > 0 else h0
        c_prev = cell[t - 1] if t > 0 else h0
        h_to_gate = h_prev @ w_h.T
        cont = t > 0
        for n in range(N):
            if cont:
                pre[t, n] += h_to_gate[0]
            for d in range(H):
                gate[t, n, d] = _sigmoid(pre[t, n, d])
                gate[t, n, H + d] = _sigmoid(pre[t, n, H + d]) if cont else 0.0
                gate[t, n, 2 * H + d] = _sigmoid(pre[t, n, 2 * H + d])
                gate[t, n, 3 * H + d] = np.tanh(pre[t, n, 3 * H + d])
                cell[t, n, d] = gate[t, n, H + d] * c_prev[n, d] + gate[t, n, d] * gate[t, n, 3 * H + d]
                top[t, n, d] = gate[t, n, 2 * H + d] * np.tanh(cell[t, n, d])
    tdiff = np.array(top_diff, float).reshape(T, N, H).copy()
    cdiff = np.zeros((T, N, H))
    pdiff = np.zeros((T, N, 4 * H))
    for t in range(T - 1, -1, -1):
        cont = t > 0
        c_prev = cell[t - 1] if t > 0 else h0
        dc_prev = cdiff[t - 1] if t > 0 else np.zeros((N, H))
        for n in range(N):
            for d in range(H):
                i_t, f_t, o_t, g_t = (gate[t, n, k * H + d] for k in range(4))
                tanh_c = np.tanh(cell[t, n, d])
                dh = tdiff[t, n, d]
                gd_o = dh * tanh_c
                cdiff[t, n, d] += dh * o_t * (1 - tanh_c * tanh_c)
                dc = cdiff[t, n, d]
                dc_prev[n, d] = dc * f_t if cont else 0.0
                gd_f = dc * c_prev[n, d] if cont else 0.0
                pdiff[t, n, d] = dc * g_t * i_t * (1 - i_t)
                pdiff[t, n, H + d] = gd_f * f_t * (1 - f_t)
                pdiff[t, n, 2 * H + d] = gd_o * o_t * (1 - o_t)
                pdiff[t, n, 3 * H + d] = dc * i_t * (1 - g_t * g_t)
            if threshold > 0:
                pdiff[t, n] = np.clip(pdiff[t, n], -threshold, threshold)
        h_to_h = pdiff[t] @ w_h
        if t > 0:
            for n in range(N):
                tdiff[t - 1, 0] += h_to_h[n]
    P = pdiff.reshape(T * N, 4 * H)
    dw_i = P.T @ X
    dw_h = pdiff[1:].reshape(-1, 4 * H).T @ top[:-1].reshape(-1, H)
    return top, (P @ w_i).reshape(x.shape), dw_i, dw_h, P.sum(0)


# -- the text-proposal Python layer (ours, after src/layers/text_proposal_layer.py) ---------------
ANCHOR_HEIGHTS = (11, 16, 23, 33, 48, 68, 97, 139, 198, 283)
ANCHOR_WIDTH = 16


def basic_anchors(base_size=16):
    """The 10 anchors [x1, y1, x2, y2] around the centre of the first ``base_size`` cell: each corner
    ``centre -/+ size // 2`` (Python 2's ``int / 2``) stored in an int32 array, i.e. truncated toward zero."""
    ctr = (0 + base_size - 1) * 0.5
    half_w = ANCHOR_WIDTH // 2
    rows = [[ctr - half_w, ctr - h // 2, ctr + half_w, ctr + h // 2] for h in ANCHOR_HEIGHTS]
    return np.trunc(np.array(rows)).astype(np.int32)


def locate_anchors(height, width, feat_stride):
    """Every anchor of a (height, width) map, ordered (y, x, anchor), shifted by ``feat_stride`` per cell."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    shifts = np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4) * feat_stride
    return (basic_anchors()[None] + shifts).reshape(-1, 4).astype(np.int32)


def apply_deltas(deltas, anchors):
    """Vertical regression: ``[x1, y, x2, y + h]`` with ``h = exp(dh) * anchor_h`` and ``y = dy * anchor_h +
    anchor_cy - h / 2`` (h and y stored as float32, as the fork's ``global_coords``)."""
    cy = (anchors[:, 1] + anchors[:, 3]) / 2.0
    ah = anchors[:, 3] - anchors[:, 1] + 1.0
    h = (np.exp(deltas[:, 1]) * ah).astype(np.float32)
    y = (deltas[:, 0] * ah + cy - h / 2.0).astype(np.float32)
    return np.stack([anchors[:, 0].astype(np.float32), y, anchors[:, 2].astype(np.float32), y + h], 1)


def clip_boxes(boxes, im_hw):
    """x into [0, width - 1], y into [0, height - 1]."""
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, im_hw[1] - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, im_hw[0] - 1)
    return boxes


def text_proposals(prob, deltas, im_info, feat_stride=16):
    """The layer's two tops for bottoms ``rpn_cls_prob_reshape`` (1, 20, h, w), ``rpn_bbox_pred`` (1, 20,
    h, w) and ``im_info``: the boxes (10 h w, 4) float32 and the text scores (10 h w, 1), both ordered
    (y, x, anchor)."""
    if prob.shape[0] != 1:
        raise ValueError("only single item batches are supported")
    k = len(ANCHOR_HEIGHTS)
    scores = prob[:, k:, :, :]
    height, width = scores.shape[-2:]
    anchors = locate_anchors(height, width, feat_stride)
    scores = scores.transpose(0, 2, 3, 1).reshape(-1, 1)
    d = deltas.transpose(0, 2, 3, 1).reshape(-1, 2)
    boxes = clip_boxes(apply_deltas(d, anchors), im_info[0, :2])
    return boxes.astype(np.float32), scores


class TextProposalLayer:
    """The Python layer the deploy net names (``layers.text_proposal_layer.ProposalLayer``)."""

    param_str = ""

    def setup(self, bottom, top):  # noqa: D102
        self.feat_stride = parse_param_str(self.param_str)["feat_stride"]
        top[0].reshape(1, 4)
        top[1].reshape(1, 1, 1, 1)

    def reshape(self, bottom, top):  # noqa: D102
        pass

    def forward(self, bottom, top):  # noqa: D102
        boxes, scores = text_proposals(bottom[0].data, bottom[1].data, bottom[2].data, self.feat_stride)
        top[0].reshape(*boxes.shape)
        top[0].data[...] = boxes
        top[1].reshape(*scores.shape)
        top[1].data[...] = scores

    def backward(self, top, propagate_down, bottom):  # noqa: D102
        pass
