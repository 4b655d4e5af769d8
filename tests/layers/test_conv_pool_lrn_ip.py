"""Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, InnerProduct against NumPy transcriptions of
Caffe's loops (options no golden exercises), plus the golden quirks the shared harness cannot compare."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers import get_layer_class
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.proto import caffe_pb2
from tests.conftest import shared_path

FLT_MAX = np.float32(3.4028235e38)


def build(text: str, *shapes, phase: int = TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], phase)


def run(layer, *xs, grads=None, dtype=torch.float32):
    """Forward (and backward with ``grads``) in ``dtype``; returns numpy tops, bottom diffs, param diffs."""
    layer = layer.to(dtype)
    ts = [torch.tensor(np.asarray(x), dtype=dtype, requires_grad=grads is not None) for x in xs]
    out = layer(*ts)
    tops = [out] if isinstance(out, torch.Tensor) else list(out)
    res = [t.detach().numpy() for t in tops]
    if grads is None:
        return res
    for b in layer.blobs:
        b.grad = None
    torch.autograd.backward([t for t in tops if t.requires_grad],
                            [torch.tensor(g, dtype=dtype) for g, t in zip(grads, tops) if t.requires_grad])
    return res, [t.grad.numpy() for t in ts], [None if b.grad is None else b.grad.numpy() for b in layer.blobs]


# ---------------------------------------------------------------- Caffe's pooling loops in NumPy
def caffe_pool_ref(x, method, k, s, p, round_mode="CEIL", top_diff=None):
    """pooling_layer.cpp (MAX, AVE), float32 accumulation in Caffe's order. Returns top, mask, bottom diff."""
    x = x.astype(np.float32)
    N, C, H, W = x.shape
    clip = p[0] or p[1]

    def size(n, kk, ss, pp):
        num = n + 2 * pp - kk
        o = (math.ceil(num / ss) if round_mode == "CEIL" else math.floor(num / ss)) + 1
        return o - 1 if clip and (o - 1) * ss >= n + pp else o

    PH, PW = size(H, k[0], s[0], p[0]), size(W, k[1], s[1], p[1])
    top = np.zeros((N, C, PH, PW), np.float32)
    mask = np.full((N, C, PH, PW), -1.0, np.float32)
    bd = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
                    if method == "MAX":
                        he, we = min(hs + k[0], H), min(ws + k[1], W)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best, idx = -FLT_MAX, -1
                        for h in range(hs, he):
                            for w in range(ws, we):
                                if x[n, c, h, w] > best:
                                    best, idx = x[n, c, h, w], h * W + w
                        top[n, c, ph, pw], mask[n, c, ph, pw] = best, idx
                        if top_diff is not None and idx >= 0:
                            bd[n, c, idx // W, idx % W] += top_diff[n, c, ph, pw]
                    else:
                        he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
                        pool = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                        acc = np.float32(0)
                        for h in range(hs, he):
                            for w in range(ws, we):
                                acc = np.float32(acc + x[n, c, h, w])
                        with np.errstate(invalid="ignore", divide="ignore"):
                            top[n, c, ph, pw] = acc / np.float32(pool)
                        if top_diff is not None and he > hs and we > ws:
                            bd[n, c, hs:he, ws:we] += top_diff[n, c, ph, pw] / np.float32(pool)
    return top, mask, bd


POOL_GEOMS = [  # kernel, stride, pad, H, W, round
    ((3, 3), (2, 2), (0, 0), 8, 10, "CEIL"),
    ((3, 3), (2, 2), (1, 1), 7, 8, "CEIL"),
    ((2, 2), (3, 3), (0, 0), 9, 9, "CEIL"),  # empty last windows
    ((1, 1), (5, 5), (0, 0), 9, 8, "CEIL"),  # last window starts beyond the input
    ((3, 3), (1, 1), (2, 2), 5, 6, "CEIL"),  # pad > kernel/2: PyTorch refuses, exact fallback
    ((3, 2), (2, 3), (2, 0), 7, 8, "CEIL"),  # rectangular, pad on one axis only (clip on both)
    ((2, 2), (3, 3), (1, 0), 9, 9, "CEIL"),
    ((3, 3), (2, 2), (1, 1), 7, 8, "FLOOR"),
    ((4, 4), (3, 3), (0, 0), 6, 11, "FLOOR"),
    ((5, 5), (2, 2), (0, 0), 5, 6, "CEIL"),  # kernel as large as the input
]


def _pool_text(method, k, s, p, rnd, mask=False):
    second = 'top: "m" ' if mask else ""
    return (f'name: "p" type: "Pooling" bottom: "x" top: "y" {second}'
            f'pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} '
            f'pad_h: {p[0]} pad_w: {p[1]} round_mode: {rnd} }}')


@pytest.mark.parametrize("geom", POOL_GEOMS, ids=[f"k{g[0]}s{g[1]}p{g[2]}_{g[3]}x{g[4]}_{g[5]}" for g in POOL_GEOMS])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("ties", [False, True])
def test_pooling_matches_caffe_loops(geom, method, ties):
    k, s, p, H, W, rnd = geom
    r = np.random.default_rng(hash((geom, method, ties)) % 2**32)
    x = (r.integers(0, 3, (2, 3, H, W)) if ties else r.standard_normal((2, 3, H, W))).astype(np.float32)
    ref_top, ref_mask, _ = caffe_pool_ref(x, method, k, s, p, rnd)
    td = r.standard_normal(ref_top.shape).astype(np.float32)
    _, _, ref_bd = caffe_pool_ref(x, method, k, s, p, rnd, top_diff=td)
    mask = method == "MAX"
    layer = build(_pool_text(method, k, s, p, rnd, mask), x.shape)
    grads = [td, np.zeros_like(td)] if mask else [td]
    tops, bds, _ = run(layer, x, grads=grads)
    assert layer.reshape([x.shape])[0] == ref_top.shape
    np.testing.assert_array_equal(tops[0], ref_top)  # bit-exact, NaNs included
    if mask:
        np.testing.assert_array_equal(tops[1], ref_mask)
    np.testing.assert_array_equal(bds[0], ref_bd)  # same accumulation order as Caffe


def test_max_pool_minus_inf_and_flt_max_windows():
    """Caffe starts at -FLT_MAX with a strict '>': a window of -inf (or -FLT_MAX) gives -FLT_MAX, mask -1."""
    x = np.full((1, 1, 4, 4), -np.inf, np.float32)
    x[0, 0, 0, 0] = 1.0
    x[0, 0, 3, 3] = -FLT_MAX
    layer = build('name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', x.shape)
    (y, m), (bd,), _ = run(layer, x, grads=[np.ones((1, 1, 2, 2), np.float32), np.zeros((1, 1, 2, 2), np.float32)])
    np.testing.assert_array_equal(y[0, 0], [[1.0, -FLT_MAX], [-FLT_MAX, -FLT_MAX]])
    np.testing.assert_array_equal(m[0, 0], [[0, -1], [-1, -1]])
    assert bd[0, 0, 0, 0] == 1.0 and np.count_nonzero(bd) == 1


def test_pool_empty_last_window_golden_with_nans():
    """The golden harness cannot compare NaN goldens (it scales by max|ref| = NaN); compare exactly here."""
    folder = shared_path("fixtures", "layers")
    z = np.load(folder / "pool_k2s3_empty_last_window_fwd.npz")
    x = z["input/x"]
    ymax = run(build('name: "pm" type: "Pooling" bottom: "x" top: "ymax" pooling_param { pool: MAX kernel_size: 2 stride: 3 }', x.shape), x)[0]
    yave = run(build('name: "pa" type: "Pooling" bottom: "x" top: "yave" pooling_param { pool: AVE kernel_size: 2 stride: 3 }', x.shape), x)[0]
    np.testing.assert_array_equal(ymax, z["fwd/ymax"])
    np.testing.assert_array_equal(yave, z["fwd/yave"])
    assert np.isnan(yave).sum() == 2 * 7


def test_global_pooling_and_errors():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    y = run(build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE global_pooling: true }', x.shape), x)[0]
    np.testing.assert_array_equal(y, caffe_pool_ref(x, "AVE", (5, 7), (1, 1), (0, 0))[0])
    bad = {
        "pooling_param { pool: MAX kernel_size: 3 pad: 3 }": "smaller than the kernel",
        "pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }": "only for AVE and MAX",
        "pooling_param { pool: MAX kernel_size: 3 pad_h: 1 }": "pad_h and pad_w",
        "pooling_param { pool: MAX kernel_size: 3 kernel_h: 2 kernel_w: 2 }": "kernel_h and kernel_w",
        "pooling_param { pool: MAX }": "kernel_size",
        "pooling_param { pool: MAX global_pooling: true kernel_size: 2 }": "global_pooling",
        "pooling_param { pool: MAX global_pooling: true stride: 2 }": "stride = 1",
        "pooling_param { pool: MAX kernel_size: 6 }": "empty output",  # Caffe would make a 0-sized top
    }
    for text, msg in bad.items():
        with pytest.raises(LayerSetupError, match=msg):
            build('name: "p" type: "Pooling" bottom: "x" top: "y" ' + text, x.shape)
    with pytest.raises(LayerSetupError, match="mask"):
        build('name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }', x.shape)


def test_stochastic_pooling():
    r = np.random.default_rng(1)
    x = (np.abs(r.standard_normal((2, 3, 7, 8))) + 0.05).astype(np.float32)
    text = 'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }'
    # TEST: sum(x^2) / sum(x) over the window clipped to the input (no pad)
    y = run(build(text, x.shape, phase=TEST), x)[0]
    ref = np.zeros_like(y)
    for ph in range(y.shape[2]):
        for pw in range(y.shape[3]):
            w = x[:, :, ph * 2: ph * 2 + 3, pw * 2: pw * 2 + 3].astype(np.float64)
            ref[:, :, ph, pw] = (w * w).sum((2, 3)) / w.sum((2, 3))
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    # TRAIN: every output is an element of its window, the diff goes to that element
    layer = build(text, x.shape, phase=TRAIN)
    rng.set_seed(3)
    (y,), (bd,), _ = run(layer, x, grads=[np.ones((2, 3, 3, 4), np.float32)])
    assert y.shape == (2, 3, 3, 4) and bd.sum() == y.size
    for ph in range(3):
        for pw in range(4):
            w = x[:, :, ph * 2: ph * 2 + 3, pw * 2: pw * 2 + 3]
            assert np.all(np.any(w == y[:, :, ph, pw][:, :, None, None], axis=(2, 3)))
            g = bd[:, :, ph * 2: ph * 2 + 3, pw * 2: pw * 2 + 3]
            assert np.all(g.sum((2, 3)) >= 1)
    # TRAIN sampling frequency is proportional to the value
    xs = np.array([[[[1.0, 3.0], [0.0, 4.0]]]], np.float32)
    layer = build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', xs.shape, phase=TRAIN)
    rng.set_seed(0)
    big = torch.tensor(np.tile(xs, (4000, 1, 1, 1)))
    vals = layer(big).numpy().ravel()
    freq = [np.mean(vals == v) for v in (1.0, 3.0, 0.0, 4.0)]
    np.testing.assert_allclose(freq, [0.125, 0.375, 0.0, 0.5], atol=0.03)


# ---------------------------------------------------------------- SPP
def test_spp_levels_match_pooling():
    r = np.random.default_rng(2)
    x = r.standard_normal((2, 3, 7, 9)).astype(np.float32)
    for method in ("MAX", "AVE"):
        y = run(build(f'name: "s" type: "SPP" bottom: "x" top: "y" spp_param {{ pyramid_height: 3 pool: {method} }}', x.shape), x)[0]
        parts = []
        for i in range(3):
            bins = 2 ** i
            k = (math.ceil(7 / bins), math.ceil(9 / bins))
            p = ((k[0] * bins - 7 + 1) // 2, (k[1] * bins - 9 + 1) // 2)
            parts.append(caffe_pool_ref(x, method, k, k, p)[0].reshape(2, -1))
        np.testing.assert_array_equal(y, np.concatenate(parts, 1))
    one = build('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 }', x.shape)
    assert one.reshape([x.shape]) == [(2, 3, 1, 1)]
    np.testing.assert_array_equal(run(one, x)[0][:, :, 0, 0], x.max((2, 3)))
    with pytest.raises(LayerSetupError, match="pad"):
        build('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 }', (1, 1, 5, 5))


# ---------------------------------------------------------------- LRN
def lrn_across_ref(x, size, alpha, beta, k, dy):
    x = x.astype(np.float64)
    pad = (size - 1) // 2
    C = x.shape[1]
    sq = np.pad(x * x, ((0, 0), (pad, pad), (0, 0), (0, 0)))
    scale = k + alpha / size * sum(sq[:, i:i + C] for i in range(size))
    y = x * scale ** -beta
    ratio = np.pad(dy * y / scale, ((0, 0), (pad, pad), (0, 0), (0, 0)))
    acc = sum(ratio[:, i:i + C] for i in range(size))
    return y, dy * scale ** -beta - 2 * alpha * beta / size * x * acc


def lrn_within_ref(x, size, alpha, beta, dy):
    x = x.astype(np.float64)
    pad = (size - 1) // 2
    H, W = x.shape[2:]
    sq = np.pad(x * x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    avg = sum(sq[:, :, i:i + H, j:j + W] for i in range(size) for j in range(size)) / size ** 2
    base = 1 + alpha * avg
    y = x * base ** -beta
    dp = np.pad(dy * x * -beta * alpha * base ** (-beta - 1) / size ** 2, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dsq = sum(dp[:, :, i:i + H, j:j + W] for i in range(size) for j in range(size))
    return y, dy * base ** -beta + 2 * x * dsq


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.6, 2.0), (1, 0.3, 0.5, 1.5), (7, 2.0, 0.75, 1.0)])
def test_lrn_across_channels(size, alpha, beta, k):
    r = np.random.default_rng(size)
    x = r.standard_normal((2, 6, 3, 4)) * (40 if alpha < 1e-3 else 2)
    dy = r.standard_normal(x.shape)
    layer = build(f'name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}', x.shape)
    (y,), (dx,), _ = run(layer, x, grads=[dy], dtype=torch.float64)
    ry, rdx = lrn_across_ref(x, size, np.float32(alpha), np.float32(beta), np.float32(k), dy)
    np.testing.assert_allclose(y, ry, rtol=1e-6)
    np.testing.assert_allclose(dx, rdx, rtol=1e-6, atol=1e-9)


def test_lrn_within_channel_and_errors():
    r = np.random.default_rng(7)
    x = r.standard_normal((2, 3, 6, 7)) * 3
    dy = r.standard_normal(x.shape)
    for alpha in (0.1, 1.0):
        layer = build(f'name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: 3 alpha: {alpha} beta: 0.75 k: 5 norm_region: WITHIN_CHANNEL }}', x.shape)
        (y,), (dx,), _ = run(layer, x, grads=[dy], dtype=torch.float64)
        ry, rdx = lrn_within_ref(x, 3, np.float32(alpha), np.float32(0.75), dy)  # k is not used
        np.testing.assert_allclose(y, ry, rtol=1e-6)
        np.testing.assert_allclose(dx, rdx, rtol=1e-6, atol=1e-9)
    with pytest.raises(LayerSetupError, match="odd"):
        build('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }', x.shape)
    with pytest.raises(LayerSetupError, match="4 axes"):
        build('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 }', (2, 3, 4))


def test_lrn_backward_reads_top_after_in_place_layers():
    """Caffe's LRN backward reads top data; a later in-place layer changes what it reads."""
    x = np.random.default_rng(8).standard_normal((1, 5, 2, 2)) * 3
    layer = build('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }', x.shape).double()
    from neocaffe.layers.base import LayerCall, TopRef

    xt = torch.tensor(x, requires_grad=True)
    call = LayerCall((TopRef(),))
    y = layer(xt, call=call)
    call.tops[0].value = torch.relu(y).detach()
    dy = torch.ones_like(y)
    y.backward(dy)
    _, rdx = lrn_across_ref(x, 3, np.float32(0.5), np.float32(0.75), 1.0, dy.numpy())
    assert not np.allclose(xt.grad.numpy(), rdx)  # it used relu(y), not y


# ---------------------------------------------------------------- Convolution / Deconvolution / Im2col
def im2col_ref(x, k, s, p, d):
    """(num, C, *sp) -> (num, C*prod(k), *out) in Caffe's order, N-D."""
    nsp = len(k)
    out = [(x.shape[2 + i] + 2 * p[i] - (d[i] * (k[i] - 1) + 1)) // s[i] + 1 for i in range(nsp)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pi, pi) for pi in p])
    cols = []
    for c in range(x.shape[1]):
        for off in np.ndindex(*k):
            sl = tuple(slice(off[i] * d[i], off[i] * d[i] + s[i] * (out[i] - 1) + 1, s[i]) for i in range(nsp))
            cols.append(xp[(slice(None), c) + sl])
    return np.stack(cols, 1)


def conv_ref(x, w, b, k, s, p, d, group):
    cols = im2col_ref(x, k, s, p, d)
    n, O = x.shape[0], w.shape[0]
    kd = int(np.prod(k))
    cg = x.shape[1] // group
    og = O // group
    out = np.zeros((n, O) + cols.shape[2:])
    for g in range(group):
        cg_cols = cols[:, g * cg * kd:(g + 1) * cg * kd]
        out[:, g * og:(g + 1) * og] = np.einsum("ok,nk...->no...", w[g * og:(g + 1) * og].reshape(og, -1), cg_cols)
    if b is not None:
        out += b.reshape((1, O) + (1,) * len(k))
    return out


CONV_CASES = [  # text fragment, bottom shape
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2", (2, 4, 7, 6)),
    ("num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 dilation: 2", (1, 2, 8, 9)),
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 9)),  # 1-D
    ("num_output: 2 kernel_size: 2 kernel_size: 1 kernel_size: 3 stride: 1 stride: 2 stride: 1 pad: 0 pad: 1 pad: 1 dilation: 1 dilation: 1 dilation: 2 group: 2", (1, 4, 3, 4, 6)),  # 3-D
    ("num_output: 2 kernel_size: 2 axis: 2", (2, 3, 2, 5, 4)),  # channel axis 2: (6, 2, 5, 4)
    ("num_output: 5 axis: 1 kernel_size: 1", (3, 4)),  # 0 spatial axes: a matrix product
    ("num_output: 4 kernel_size: 2 axis: -3", (1, 2, 3, 4)),
]


@pytest.mark.parametrize("frag,shape", CONV_CASES)
def test_convolution_nd_matches_reference(frag, shape):
    r = np.random.default_rng(len(frag))
    text = f'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ {frag} weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }}'
    layer = build(text, shape)
    x = r.standard_normal(shape)
    (y,), (dx,), (dw, db) = run(layer, x, grads=[r.standard_normal(layer.reshape([shape])[0])], dtype=torch.float64)
    w, b = (t.detach().numpy() for t in layer.blobs)
    ax = layer.axis
    xf = x.reshape((-1,) + shape[ax:])
    if layer.n_sp == 0:
        ref = xf @ w.T + b
    else:
        ref = conv_ref(xf, w, b, layer.kernel, layer.stride, layer.pad, layer.dilation, layer.group)
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-10, atol=1e-10)
    assert y.shape == tuple(layer.reshape([shape])[0])
    assert w.shape == (layer.num_output, shape[ax] // layer.group) + layer.kernel


def test_convolution_several_bottoms_share_weights():
    r = np.random.default_rng(3)
    text = 'name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } }'
    layer = build(text, (1, 2, 5, 5), (1, 2, 5, 5))
    a, b = r.standard_normal((2, 1, 2, 5, 5))
    ya, yb = run(layer, a, b)
    single = build(text.replace(' bottom: "b"', "").replace(' top: "yb"', ""), (1, 2, 5, 5))
    with torch.no_grad():
        for s, t in zip(single.blobs, layer.blobs):
            s.copy_(t)
    np.testing.assert_array_equal(ya, run(single, a)[0])
    np.testing.assert_array_equal(yb, run(single, b)[0])
    with pytest.raises(LayerSetupError, match="same shape"):
        build(text, (1, 2, 5, 5), (1, 2, 5, 6))
    with pytest.raises(LayerSetupError, match="as many tops"):
        build(text.replace(' top: "yb"', ""), (1, 2, 5, 5), (1, 2, 5, 5))


def test_convolution_errors():
    base = 'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
    cases = {
        "num_output: 6 kernel_size: 3 group: 3 }": "does not divide the 4 input channels",
        "num_output: 5 kernel_size: 3 group: 2 }": "does not divide num_output",
        "num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3 }": "once per spatial dimension",
        "num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3 }": "not both",
        "num_output: 4 kernel_size: 0 }": "nonzero",
        "kernel_size: 3 }": "num_output",
        "num_output: 4 kernel_size: 7 }": "smaller than the kernel extent",
    }
    for frag, msg in cases.items():
        with pytest.raises(LayerSetupError, match=msg):
            layer = build(base + frag, (1, 4, 5, 5))
            layer.reshape([(1, 4, 5, 5)])


def deconv_ref(x, w, b, k, s, p, d, group):
    """Caffe's deconvolution: col2im of W^T x (the adjoint of conv_ref's input map), 2-D."""
    n, C, H, W = x.shape
    og = w.shape[1]
    O = og * group
    cg = C // group
    OH = s[0] * (H - 1) + d[0] * (k[0] - 1) + 1 - 2 * p[0]
    OW = s[1] * (W - 1) + d[1] * (k[1] - 1) + 1 - 2 * p[1]
    out = np.zeros((n, O, OH + 2 * p[0] + s[0] * k[0] * d[0], OW + 2 * p[1] + s[1] * k[1] * d[1]))
    for g in range(group):
        for c in range(cg):
            for o in range(og):
                for i in range(k[0]):
                    for j in range(k[1]):
                        out[:, g * og + o, i * d[0]: i * d[0] + s[0] * H: s[0], j * d[1]: j * d[1] + s[1] * W: s[1]] += (
                            x[:, g * cg + c] * w[g * cg + c, o, i, j])
    out = out[:, :, p[0]: p[0] + OH, p[1]: p[1] + OW]
    return out + (0 if b is None else b.reshape(1, O, 1, 1))


@pytest.mark.parametrize("frag,shape", [
    ("num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2", (2, 4, 3, 5)),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 dilation: 2", (1, 3, 4, 3)),
])
def test_deconvolution_matches_reference(frag, shape):
    r = np.random.default_rng(9)
    text = f'name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param {{ {frag} weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }}'
    layer = build(text, shape)
    x = r.standard_normal(shape)
    (y,) = run(layer, x, dtype=torch.float64)
    w, b = (t.detach().numpy() for t in layer.blobs)
    assert w.shape == (shape[1], layer.num_output // layer.group) + layer.kernel
    ref = deconv_ref(x, w, b, layer.kernel, layer.stride, layer.pad, layer.dilation, layer.group)
    assert y.shape == ref.shape == tuple(layer.reshape([shape])[0])
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("frag,shape", [
    ("kernel_size: 3 pad: 1 stride: 2", (2, 2, 5, 6)),
    ("kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_w: 1 dilation: 2", (1, 3, 7, 8)),
    ("kernel_size: 3 dilation: 2 pad: 1", (2, 3, 9)),
    ("kernel_size: 2 stride: 1 pad: 1", (1, 2, 3, 3, 2)),
    ("kernel_size: 2 axis: 2", (2, 3, 2, 4, 4)),
])
def test_im2col_matches_reference(frag, shape):
    r = np.random.default_rng(10)
    layer = build(f'name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param {{ {frag} }}', shape)
    x = r.standard_normal(shape).astype(np.float32)
    td = r.standard_normal(layer.reshape([shape])[0]).astype(np.float32)
    (y,), (dx,), _ = run(layer, x, grads=[td])
    ax = layer.axis
    xf = x.reshape((-1,) + shape[ax:])
    ref = im2col_ref(xf, layer.kernel, layer.stride, layer.pad, layer.dilation)
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)  # exact copies
    # col2im: each input element collects the diffs of every column entry that copied it
    xt = torch.tensor(xf, dtype=torch.float64, requires_grad=True)
    lin = (torch.tensor(im2col_ref(np.arange(xf.size, dtype=np.float64).reshape(xf.shape) + 1, layer.kernel, layer.stride, layer.pad, layer.dilation)))
    ref_dx = np.zeros(xf.size + 1)
    np.add.at(ref_dx, lin.numpy().astype(np.int64).ravel(), td.reshape(lin.shape).astype(np.float64).ravel())
    np.testing.assert_allclose(dx.reshape(-1), ref_dx[1:], rtol=1e-6, atol=1e-6)
    del xt


# ---------------------------------------------------------------- InnerProduct
@pytest.mark.parametrize("frag,shape", [
    ("num_output: 5", (3, 2, 2, 2)),
    ("num_output: 4 transpose: true", (3, 6)),
    ("num_output: 3 axis: 2 transpose: true", (2, 3, 4, 2)),
    ("num_output: 3 axis: -1 bias_term: false", (2, 3, 4)),
    ("num_output: 2 axis: 0", (3, 2)),
])
def test_inner_product_matches_reference(frag, shape):
    r = np.random.default_rng(11)
    layer = build(f'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ {frag} weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }}', shape)
    x = r.standard_normal(shape)
    top_shape = layer.reshape([shape])[0]
    dy = r.standard_normal(top_shape)
    (y,), (dx,), pd = run(layer, x, grads=[dy], dtype=torch.float64)
    w = layer.blobs[0].detach().numpy()
    W = w.T if layer.transpose else w  # (N, K)
    assert w.shape == ((layer.K, layer.num_output) if layer.transpose else (layer.num_output, layer.K))
    x2 = x.reshape(-1, layer.K)
    b = layer.blobs[1].detach().numpy() if layer.bias_term else 0
    np.testing.assert_allclose(y.reshape(-1, layer.num_output), x2 @ W.T + b, rtol=1e-12)
    assert y.shape == top_shape
    g2 = dy.reshape(-1, layer.num_output)
    np.testing.assert_allclose(dx.reshape(x2.shape), g2 @ W, rtol=1e-12)
    dW = g2.T @ x2
    np.testing.assert_allclose(pd[0], dW.T if layer.transpose else dW, rtol=1e-12)
    if layer.bias_term:
        np.testing.assert_allclose(pd[1], g2.sum(0), rtol=1e-12)
    with pytest.raises(LayerSetupError, match="incompatible"):
        layer.reshape([(shape[0] + 1,) + tuple(shape[1:-1]) + (shape[-1] + 1,)])


# ---------------------------------------------------------------- CUDA agrees with the CPU
@pytest.mark.gpu
@pytest.mark.parametrize("geom", POOL_GEOMS)
def test_pooling_cuda_matches_cpu(geom):
    k, s, p, H, W, rnd = geom
    x = np.random.default_rng(0).integers(0, 3, (2, 3, H, W)).astype(np.float32)
    for method in ("MAX", "AVE"):
        ref_top, ref_mask, _ = caffe_pool_ref(x, method, k, s, p, rnd)
        layer = build(_pool_text(method, k, s, p, rnd, method == "MAX"), x.shape).cuda()
        out = layer(torch.tensor(x, device="cuda"))
        out = [out] if isinstance(out, torch.Tensor) else out
        np.testing.assert_array_equal(out[0].cpu().numpy(), ref_top)
        if method == "MAX":
            np.testing.assert_array_equal(out[1].cpu().numpy(), ref_mask)


@pytest.mark.gpu
def test_lrn_conv_stochastic_cuda_match_cpu():
    r = np.random.default_rng(12)
    cases = [
        ('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }', (2, 7, 5, 5), 40),
        ('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 norm_region: WITHIN_CHANNEL }', (2, 3, 6, 7), 3),
        ('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', (2, 3, 7, 8), 1),
        ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 3 group: 2 '
         'pad: 1 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } }', (2, 4, 6, 6), 1),
        ('name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 2 pad: 1 }', (1, 2, 3, 3, 2), 1),
    ]
    for text, shape, scale in cases:
        x = np.abs(r.standard_normal(shape)) * scale + 0.01
        dy = r.standard_normal(build(text, shape).reshape([shape])[0])
        layer = build(text, shape).double()
        (y,), (dx,), _ = run(layer, x, grads=[dy], dtype=torch.float64)
        layer = layer.cuda()
        xt = torch.tensor(x, device="cuda", requires_grad=True)
        yt = layer(xt)
        yt.backward(torch.tensor(dy, device="cuda"))
        np.testing.assert_allclose(yt.detach().cpu().numpy(), y, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(xt.grad.cpu().numpy(), dx, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ceil_mode,rnd", [("false", "FLOOR"), ("true", "CEIL")])
@pytest.mark.parametrize("geom", [((3, 3), (2, 2), (1, 1), 8, 10), ((2, 2), (2, 2), (0, 0), 7, 9),
                                  ((3, 3), (2, 2), (0, 0), 56, 56)])  # DenseNet-121's pool1 at its size
def test_pooling_ceil_mode_of_densenets_forks_is_the_rounding(ceil_mode, rnd, geom):
    """BVLC pull request #3057 (DenseNet's Caffe): ``ceil_mode: false`` rounds the output size down,
    the pad clip unchanged: the same numbers as upstream's ``round_mode: FLOOR``."""
    k, s, p, H, W = geom
    x = np.random.default_rng(5).standard_normal((1, 2, H, W)).astype(np.float32)
    for method in ("MAX", "AVE"):
        ref_top, _, _ = caffe_pool_ref(x, method, k, s, p, rnd)
        text = _pool_text(method, k, s, p, rnd).replace(f"round_mode: {rnd}", f"ceil_mode: {ceil_mode}")
        layer = build(text, x.shape)
        assert layer.reshape([x.shape])[0] == ref_top.shape
        np.testing.assert_array_equal(run(layer, x)[0], ref_top)


def test_pooling_ceil_mode_and_round_mode_must_agree():
    with pytest.raises(LayerSetupError, match="contradicts"):
        build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 '
              'round_mode: CEIL ceil_mode: false }', (1, 1, 5, 5))
    layer = build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 stride: 2 '
                  'round_mode: FLOOR ceil_mode: false }', (1, 1, 5, 5))
    assert layer.reshape([(1, 1, 5, 5)])[0] == (1, 1, 2, 2)
