"""Ristretto's quantized layers (pmgysel/caffe @ 614963cb) against loop ports of the fork's code:
the quantizers of src/caffe/ristretto/layers/base_ristretto_layer.cpp (Trim2FixedPoint_cpu,
Trim2MiniFloat_cpu per element as the .cu, Trim2IntegerPowerOf2_cpu; bit for bit in float32 and float64,
NEAREST and STOCHASTIC with the same uniforms, STOCHASTIC statistically); ConvolutionRistretto,
DeconvolutionRistretto, FcRistretto (conv/deconv/fc_ristretto_layer.cpp: quantized weight copies,
TEST-phase activations, STOCHASTIC weights in TRAIN, backward to the full-precision blobs) and
LRNRistretto (lrn_ristretto_layer.cu's LRNFillScaleQ / LRNComputeOutputQ and upstream's backward);
the errors; a fork .caffemodel's weights; and a trimmed copy of a quantized SqueezeNet written by the
fork's tool, built, run in TEST on the fixed-point grids, and fine-tuned with the loss falling."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.layers.ristretto_quant import NEAREST, STOCHASTIC, trim_fixed_point, trim_minifloat, trim_power_of_2
from neocaffe.proto import caffe_pb2


# -- loop ports of base_ristretto_layer.cpp ---------------------------------------------------------
def c_round(v: float) -> float:
    """C's round (ties away from zero) on a double."""
    if not math.isfinite(v):
        return v
    r = float(math.trunc(v))
    return r + math.copysign(1.0, v) if abs(v - r) >= 0.5 else r


def c_min(a, b):
    return b if b < a else a  # std::min


def c_max(a, b):
    return b if a < b else a  # std::max


def port_fixed_point(data, bw, fl, rounding, u=None):
    """Trim2FixedPoint_cpu: Dtype ``f`` locals, double pow / division / multiplication."""
    f = data.dtype.type
    out = data.copy().ravel()
    for i in range(out.size):
        max_data = f((2.0 ** (bw - 1) - 1) * 2.0 ** -fl)
        min_data = f(-(2.0 ** (bw - 1)) * 2.0 ** -fl)
        v = c_max(c_min(out[i], max_data), min_data)
        v = f(float(v) / 2.0 ** -fl)
        v = f(c_round(float(v))) if rounding == NEAREST else f(math.floor(float(v) + u.ravel()[i]))
        out[i] = f(float(v) * 2.0 ** -fl)
    return out.reshape(data.shape)


def port_minifloat(data, bw_mant, bw_exp, rounding, u=None, ties_even=False):
    """Trim2MiniFloat (each element on its own, as the .cu; rint for ``ties_even``)."""
    f = data.dtype.type
    out = data.copy().ravel()
    for i in range(out.size):
        bits = struct.unpack("<I", struct.pack("<f", np.float32(out[i])))[0]
        sign, e, m = bits >> 31, (bits >> 23) & 0xFF, bits & 0x7FFFFF
        bias_out = int(2.0 ** (bw_exp - 1) - 1)
        exponent = e - 127 + bias_out
        mant = float(m)
        if e == 0 or exponent < 0:
            out[i] = 0
            continue
        max_exp, max_mant = int(2.0 ** bw_exp - 1), int(2.0 ** bw_mant - 1)
        if exponent > max_exp:
            exponent, mant = max_exp, max_mant
        else:
            tmp = mant / 2.0 ** (23 - bw_mant)
            if rounding == STOCHASTIC:
                mant = math.floor(tmp + u.ravel()[i])
            else:
                mant = float(round(tmp)) if ties_even else c_round(tmp)  # Python's round: ties to even (rint)
        with np.errstate(over="ignore"):
            out[i] = f((-1.0) ** sign * ((mant + 2.0 ** bw_mant) / 2.0 ** bw_mant) * 2.0 ** (exponent - bias_out))
    return out.reshape(data.shape)


def port_power_of_2(data, min_exp, max_exp, rounding, u=None):
    """Trim2IntegerPowerOf2_cpu: float log2f, round / floorf of the double sum, clamp, sign * pow(2, e)."""
    f = data.dtype.type
    out = data.copy().ravel()
    for i in range(out.size):
        with np.errstate(divide="ignore"):
            e = np.log2(np.float32(abs(out[i])))
        sign = 1 if out[i] >= 0 else -1
        if rounding == NEAREST:
            e = np.float32(c_round(float(e)))
        else:
            e = np.floor(np.float32(float(e) + u.ravel()[i]))
        e = c_max(c_min(e, np.float32(max_exp)), np.float32(min_exp))
        out[i] = f(sign * 2.0 ** float(e))
    return out.reshape(data.shape)


def _values(dtype, n=400, seed=0):
    """Random magnitudes over many octaves, plus zeros, signed zeros, ties of the grids, powers of two,
    saturating values and float32 denormals."""
    r = np.random.default_rng(seed)
    x = r.standard_normal(n) * np.exp2(r.integers(-12, 12, n))
    special = [0.0, -0.0, 0.5, -0.5, 1.5, -2.5, 0.375, 3.0 / 64, 1.0, 2.0, -4.0, 1e6, -1e6, 127.5, -128.5,
               1e-40, -1e-42, 0.0625 * 3, 6.5 / 16, 2.0 ** -20, 0.7071067811865476]
    return np.concatenate([x, special]).astype(dtype)


DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bw,fl", [(8, 4), (8, 0), (4, -2), (16, 10), (1, 0), (32, 16), (8, 12)])
def test_fixed_point_nearest_is_the_forks_bit_for_bit(dtype, bw, fl):
    x = _values(dtype)
    got = trim_fixed_point(torch.from_numpy(x), bw, fl, NEAREST).numpy()
    np.testing.assert_array_equal(got, port_fixed_point(x, bw, fl, NEAREST))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mant,exp", [(10, 5), (3, 4), (2, 3), (23, 8), (0, 2), (7, 8), (5, 1)])
@pytest.mark.parametrize("ties_even", [False, True])
def test_minifloat_nearest_is_the_forks_bit_for_bit(dtype, mant, exp, ties_even):
    x = _values(dtype, seed=1)
    got = trim_minifloat(torch.from_numpy(x), mant, exp, NEAREST, ties_to_even=ties_even).numpy()
    np.testing.assert_array_equal(got, port_minifloat(x, mant, exp, NEAREST, ties_even=ties_even))


def test_minifloat_ties_differ_between_cpp_round_and_cu_rint():
    x = np.array([1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -11], np.float32)  # mantissa ties at 10 bits
    t = torch.from_numpy(x)
    assert trim_minifloat(t, 10, 5).tolist() == [1.0 + 2 * 2.0 ** -10, 1.0 + 2.0 ** -10]  # away from zero
    assert trim_minifloat(t, 10, 5, ties_to_even=True).tolist() == [1.0 + 2 * 2.0 ** -10, 1.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lo,hi", [(-8, -1), (-4, 0), (0, 3), (-20, 5)])
def test_power_of_2_nearest_is_the_forks_bit_for_bit(dtype, lo, hi):
    x = _values(dtype, seed=2)
    got = trim_power_of_2(torch.from_numpy(x), lo, hi, NEAREST).numpy()
    np.testing.assert_array_equal(got, port_power_of_2(x, lo, hi, NEAREST))
    assert got[x == 0].tolist() == [2.0 ** lo] * int((x == 0).sum())  # log2(0) = -inf clamps to exp_min


@pytest.mark.parametrize("dtype", DTYPES)
def test_stochastic_rounding_with_a_seeded_generator_is_the_forks(dtype):
    """The same uniforms (one double in [0, 1) per element) give the fork's values bit for bit."""
    x = _values(dtype, seed=3)

    def gen():
        return torch.Generator().manual_seed(5)
    u = torch.rand(x.shape, dtype=torch.float64, generator=gen()).numpy()
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(trim_fixed_point(t, 8, 3, STOCHASTIC, gen()).numpy(),
                                  port_fixed_point(x, 8, 3, STOCHASTIC, u))
    np.testing.assert_array_equal(trim_minifloat(t, 4, 4, STOCHASTIC, gen()).numpy(),
                                  port_minifloat(x, 4, 4, STOCHASTIC, u))
    np.testing.assert_array_equal(trim_power_of_2(t, -8, 2, STOCHASTIC, gen()).numpy(),
                                  port_power_of_2(x, -8, 2, STOCHASTIC, u))


def test_stochastic_rounding_is_unbiased_between_the_two_neighbours():
    """floor(v + u): the value rounds up with probability frac(v); the mean is v (fixed point, minifloat
    mantissa, power-of-two exponent)."""
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x = torch.full((n,), 0.3125 + 0.0625 * 0.3, dtype=torch.float32)  # between 0.3125 and 0.375
    q = trim_fixed_point(x, 8, 4, STOCHASTIC, g)
    assert set(q.unique().tolist()) == {0.3125, 0.375}
    assert abs(float((q == 0.375).double().mean()) - (float(x[0]) - 0.3125) / 0.0625) < 0.005
    assert abs(float(q.double().mean()) - float(x[0])) < 2e-4
    m = trim_minifloat(torch.full((n,), 1.3, dtype=torch.float32), 2, 4, STOCHASTIC, g)  # 1.25 or 1.5
    assert set(m.unique().tolist()) == {1.25, 1.5}
    assert abs(float((m == 1.5).double().mean()) - (1.3 - 1.25) / 0.25) < 0.005
    p = trim_power_of_2(torch.full((n,), 0.3, dtype=torch.float32), -8, -1, STOCHASTIC, g)
    frac = math.log2(0.3) - math.floor(math.log2(0.3))
    assert set(p.unique().tolist()) == {0.25, 0.5}
    assert abs(float((p == 0.5).double().mean()) - frac) < 0.005
    # the draws come from neocaffe's seeded generator by default: set_seed repeats them
    rng.set_seed(3)
    a = trim_fixed_point(x[:50], 8, 4, STOCHASTIC)
    rng.set_seed(3)
    assert torch.equal(a, trim_fixed_point(x[:50], 8, 4, STOCHASTIC))


# -- the layers ---------------------------------------------------------------------------------------
def _layer(text: str, shapes, phase=TEST):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, shapes, phase)


def _q(**kw) -> str:
    return "quantization_param { " + " ".join(f"{k}: {v}" for k, v in kw.items()) + " }"


CONV = ('name: "conv" type: "ConvolutionRistretto" bottom: "x" top: "y" convolution_param { num_output: 4 '
        'kernel_size: 3 pad: 1 stride: 2 group: 2 weight_filler { type: "gaussian" std: 0.3 } '
        'bias_filler { type: "gaussian" std: 0.3 } } ')
DECONV = CONV.replace("ConvolutionRistretto", "DeconvolutionRistretto")
FC = ('name: "fc" type: "FcRistretto" bottom: "x" top: "y" inner_product_param { num_output: 5 '
      'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } ')
DFP = dict(bw_layer_in=8, fl_layer_in=4, bw_layer_out=8, fl_layer_out=3, bw_params=8, fl_params=6)


def np_conv(x, w, b, stride, pad, group, transposed):
    """Caffe's convolution (and deconvolution, its transpose) as loops over the kernel offsets, in float64."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, h, wd = x.shape
    k = w.shape[2]
    if transposed:  # scatter every input pixel through the kernel
        co = w.shape[1] * group
        ho, wo = stride * (h - 1) + k - 2 * pad, stride * (wd - 1) + k - 2 * pad
        out = np.zeros((n, co, ho + 2 * pad, wo + 2 * pad))
        cg, og = c // group, co // group
        for g in range(group):
            for i in range(k):
                for j in range(k):
                    contrib = np.einsum("nchw,co->nohw", x[:, g * cg:(g + 1) * cg], w[g * cg:(g + 1) * cg, :, i, j])
                    out[:, g * og:(g + 1) * og, i:i + stride * h:stride, j:j + stride * wd:stride] += contrib
        out = out[:, :, pad:pad + ho, pad:pad + wo]
    else:
        co = w.shape[0]
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
        out = np.zeros((n, co, ho, wo))
        cg, og = c // group, co // group
        for g in range(group):
            for i in range(k):
                for j in range(k):
                    patch = xp[:, g * cg:(g + 1) * cg, i:i + stride * ho:stride, j:j + stride * wo:stride]
                    out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    return out + b.astype(np.float64)[None, :, None, None]


def _draws(seed, *shapes):
    """The uniforms the layer's forward draws after ``rng.set_seed(seed)``: weight, then bias."""
    rng.set_seed(seed)
    return [torch.rand(s, dtype=torch.float64, generator=rng.generator()).numpy() for s in shapes]


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_conv_forward_and_backward_are_the_forks_in_test(kind):
    """TEST: bottom, weight, bias, top trimmed (8-bit: the sums are exact, so the top is bit for bit);
    weight diff from the trimmed bottom, bottom diff through the trimmed weight, both to the blobs."""
    text = (CONV if kind == "conv" else DECONV) + _q(**DFP)
    shape = (2, 4, 5, 6) if kind == "conv" else (2, 4, 3, 4)
    layer = _layer(text, [shape])
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3).requires_grad_()
    w, b = (p.detach().numpy().copy() for p in layer.blobs)
    x0 = x.detach().clone()
    y = layer(x)
    assert torch.equal(x.detach(), x0)  # the bottom is read, not trimmed in place (the fork's in-place trim)
    xq = port_fixed_point(x.detach().numpy(), 8, 4, NEAREST)
    wq, bq = port_fixed_point(w, 8, 6, NEAREST), port_fixed_point(b, 8, 6, NEAREST)
    want = port_fixed_point(np_conv(xq, wq, bq, 2, 1, 2, kind == "deconv").astype(np.float32), 8, 3, NEAREST)
    np.testing.assert_array_equal(y.detach().numpy(), want)
    g = torch.from_numpy(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
    y.backward(g)
    xr = torch.from_numpy(xq).double().requires_grad_()
    wr, br = (torch.from_numpy(a).double().requires_grad_() for a in (wq, bq))
    op = F.conv_transpose2d if kind == "deconv" else F.conv2d
    op(xr, wr, br, 2, 1, groups=2).backward(g.double())
    for got, ref in ((x.grad, xr.grad), (layer.blobs[0].grad, wr.grad), (layer.blobs[1].grad, br.grad)):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.blobs[0].detach(), torch.from_numpy(w))  # full precision kept


@pytest.mark.parametrize("kind", ["conv", "deconv", "fc"])
def test_train_rounds_weights_stochastically_and_leaves_activations(kind):
    """TRAIN: the weight copy (then the bias) with STOCHASTIC rounding whatever ``rounding_scheme`` says,
    bottoms and tops untrimmed; a new draw every forward."""
    text = {"conv": CONV, "deconv": DECONV, "fc": FC}[kind] + _q(**DFP, rounding_scheme="NEAREST")
    shape = {"conv": (2, 4, 5, 6), "deconv": (2, 4, 3, 4), "fc": (3, 2, 2, 2)}[kind]
    layer = _layer(text, [shape], TRAIN)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 3)
    w, b = (p.detach().numpy() for p in layer.blobs)
    uw, ub = _draws(11, w.shape, b.shape)
    rng.set_seed(11)
    xg = x.clone().requires_grad_()
    yt = layer(xg)
    y = yt.detach().numpy()
    wq, bq = port_fixed_point(w, 8, 6, STOCHASTIC, uw), port_fixed_point(b, 8, 6, STOCHASTIC, ub)
    if kind == "fc":
        want = x.numpy().reshape(3, -1).astype(np.float64) @ wq.T.astype(np.float64) + bq
    else:
        want = np_conv(x.numpy(), wq, bq, 2, 1, 2, kind == "deconv")
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # backward: through this forward's weight copy to the bottom, the plain diffs to the full-precision blobs
    g = torch.from_numpy(np.random.default_rng(9).standard_normal(y.shape).astype(np.float32))
    yt.backward(g)
    xr, wr, br = (torch.from_numpy(a).double().requires_grad_() for a in (x.numpy(), wq, bq))
    if kind == "fc":
        ref = F.linear(xr.reshape(3, -1), wr, br)
    else:
        ref = (F.conv_transpose2d if kind == "deconv" else F.conv2d)(xr, wr, br, 2, 1, groups=2)
    ref.backward(g.double())
    for got, r in ((xg.grad, xr.grad), (layer.blobs[0].grad, wr.grad), (layer.blobs[1].grad, br.grad)):
        np.testing.assert_allclose(got.numpy(), r.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.array_equal(layer(x).detach().numpy(), y)  # another draw


def test_fc_forward_and_backward_are_the_forks():
    """FcRistretto, TEST, minifloat: trimmed bottom, weights, bias and top; the gemms of Backward_cpu."""
    layer = _layer(FC + _q(precision="MINIFLOAT", mant_bits=4, exp_bits=4), [(3, 2, 2, 2)])
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((3, 2, 2, 2)).astype(np.float32)).requires_grad_()
    w, b = (p.detach().numpy() for p in layer.blobs)
    y = layer(x)
    xq = port_minifloat(x.detach().numpy().reshape(3, 8), 4, 4, NEAREST)
    wq, bq = port_minifloat(w, 4, 4, NEAREST), port_minifloat(b, 4, 4, NEAREST)
    pre = (xq.astype(np.float64) @ wq.T + bq).astype(np.float32)  # 5-bit significands: the sums are exact
    np.testing.assert_array_equal(y.detach().numpy(), port_minifloat(pre, 4, 4, NEAREST))
    g = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    y.backward(torch.from_numpy(g))
    np.testing.assert_allclose(x.grad.numpy().reshape(3, 8), g @ wq, rtol=1e-6, atol=1e-6)  # top_diff * Wq
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), g.T @ xq, rtol=1e-6, atol=1e-6)  # from the trimmed x
    np.testing.assert_allclose(layer.blobs[1].grad.numpy(), g.sum(0), rtol=1e-6, atol=1e-6)


def test_power_of_2_weights_keep_the_bias_and_trim_activations_as_the_cu():
    layer = _layer(FC + _q(precision="INTEGER_POWER_OF_2_WEIGHTS", exp_min=-4, exp_max=0, bw_layer_in=8,
                           fl_layer_in=5, bw_layer_out=8, fl_layer_out=4), [(3, 8)])
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    w, b = (p.detach().numpy() for p in layer.blobs)
    y = layer(torch.from_numpy(x)).detach().numpy()
    wq = port_power_of_2(w, -4, 0, NEAREST)
    assert set(np.abs(wq).ravel().tolist()) <= {2.0 ** e for e in range(-4, 1)}
    pre = (port_fixed_point(x, 8, 5, NEAREST).astype(np.float64) @ wq.T + b.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(y, port_fixed_point(pre, 8, 4, NEAREST), atol=2.0 ** -4 + 1e-7)
    assert np.all(np.abs(y * 16 - np.round(y * 16)) < 1e-6)  # on the output grid


def port_lrn(x, size, alpha, beta, k, mant, exp):
    """LRNFillScaleQ + LRNComputeOutputQ, per pixel, the kernel's three loops, float32 arithmetic."""
    f = np.float32
    n_, c_, h_, w_ = x.shape

    def q(v):
        return port_minifloat(np.array([v], f), mant, exp, NEAREST, ties_even=True)[0]
    aos, kk = f(f(alpha) / f(size)), f(k)
    scale = np.zeros_like(x)
    pre = (size - 1) // 2
    post = size - pre - 1
    for n in range(n_):
        for h in range(h_):
            for w in range(w_):
                col = x[n, :, h, w]
                head, accum = 0, f(0)
                while head < post and head < c_:
                    qi = q(col[head])
                    accum = q(f(accum + q(f(qi * qi)))); head += 1  # noqa: E702
                while head < c_:
                    qi = q(col[head])
                    accum = q(f(accum + q(f(qi * qi))))
                    if head - size >= 0:
                        qo = q(col[head - size])
                        accum = q(f(accum - q(f(qo * qo))))
                    scale[n, head - post, h, w] = q(f(kk + q(f(accum * aos)))); head += 1  # noqa: E702
                while head < c_ + post:
                    if head - size >= 0:
                        qo = q(col[head - size])
                        accum = q(f(accum - q(f(qo * qo))))
                    scale[n, head - post, h, w] = q(f(kk + q(f(accum * aos)))); head += 1  # noqa: E702
    top = np.vectorize(lambda a, s: q(f(q(a) * q(f(np.power(s, f(-beta)))))), otypes=[f])(x, scale)
    return scale, top


@pytest.mark.parametrize("phase", [TEST, TRAIN])
def test_lrn_forward_is_the_cu_and_backward_is_upstreams_on_its_scale(phase):
    text = ('name: "norm1" type: "LRNRistretto" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.0001 '
            'beta: 0.75 k: 1 } ' + _q(precision="MINIFLOAT", mant_bits=6, exp_bits=5, rounding_scheme="STOCHASTIC"))
    layer = _layer(text, [(2, 7, 2, 3)], phase)
    x = (np.random.default_rng(6).standard_normal((2, 7, 2, 3)) * 60).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    y = layer(xt)
    scale, top = port_lrn(x, 5, 0.0001, 0.75, 1.0, 6, 5)
    np.testing.assert_array_equal(y.detach().numpy(), top)  # NEAREST (rint) whatever rounding_scheme says
    g = np.random.default_rng(7).standard_normal(x.shape).astype(np.float32)
    y.backward(torch.from_numpy(g))
    ratio = g * top / scale
    win = np.zeros_like(ratio)
    for c in range(7):
        win[:, c] = ratio[:, max(0, c - 2):c + 3].sum(1)
    want = g * np.power(scale, -0.75) - np.float32(2 * 0.0001 * 0.75 / 5) * x * win
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-5, atol=1e-7)


ERRORS = [
    ('name: "norm" type: "LRNRistretto" bottom: "x" top: "y" lrn_param { local_size: 3 }', (1, 3, 2, 2),
     r"layer 'norm' \(LRNRistretto\): LRNRistretto supports quantization_param.precision MINIFLOAT only; "
     r"received DYNAMIC_FIXED_POINT"),
    ('name: "norm" type: "LRNRistretto" bottom: "x" top: "y" lrn_param { local_size: 3 norm_region: '
     'WITHIN_CHANNEL } ' + _q(precision="MINIFLOAT"), (1, 3, 2, 2), "ACROSS_CHANNELS only"),
    (CONV + _q(bw_params=0), (1, 4, 5, 5), r"layer 'conv' \(ConvolutionRistretto\): quantization_param.bw_params = 0"),
    (CONV + _q(bw_layer_in=8, fl_layer_in=160), (1, 4, 5, 5), "fl_layer_in = 160: the fixed-point grid"),
    (DECONV + _q(bw_layer_out=32, fl_layer_out=-100), (1, 4, 3, 3), r"'conv' \(DeconvolutionRistretto\).*bw_layer_out = 32"),
    (FC + _q(precision="MINIFLOAT", exp_bits=0), (2, 3), r"layer 'fc' \(FcRistretto\): quantization_param.exp_bits = 0"),
    (FC + _q(precision="MINIFLOAT", mant_bits=24), (2, 3), "mant_bits = 24: at most 23"),
    (FC + _q(precision="INTEGER_POWER_OF_2_WEIGHTS", exp_min=0, exp_max=-1), (2, 3), "exp_min = 0, exp_max = -1"),
    (FC.replace("num_output: 5", "num_output: 5 normalize: true") + _q(), (2, 3), "normalize"),
]


@pytest.mark.parametrize("text,shape,match", ERRORS)
def test_bad_quantization_params_are_errors_naming_the_layer(text, shape, match):
    with pytest.raises(LayerSetupError, match=match):
        _layer(text, [shape])


def test_fc_takes_one_bottom():
    with pytest.raises(LayerSetupError, match=r"'fc' \(FcRistretto\) takes exactly 1 bottom"):
        _layer(FC.replace('bottom: "x"', 'bottom: "x" bottom: "w"') + _q(), [(2, 3), (5, 3)])


# -- nets ---------------------------------------------------------------------------------------------
def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, as the fork's protoc writes it."""
    def varint(v: int) -> bytes:
        out = b""
        while v > 0x7F:
            out += bytes([v & 0x7F | 0x80])
            v >>= 7
        return out + bytes([v])
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_a_fork_caffemodel_loads_by_layer_name(tmp_path):
    """The fork writes quantization_param at 149 (pspnet's bias_channel_param here): the weights still
    load by name into the quantized layer."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    w = np.random.default_rng(8).standard_normal((5, 3)).astype(np.float32)
    qp = b"\x18\x08\x20\x08\x28\x08\x30\x04\x38\x03\x40\x06"  # bw_* = 8, fl_layer_in 4, out 3, params 6
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(w.shape)
    blob.data.extend(w.ravel().tolist())
    lp = caffe_pb2.LayerParameter(name="fc", type="FcRistretto")
    lp.blobs.append(blob)
    payload = lp.SerializeToString() + _field(149, qp)
    (tmp_path / "fork.caffemodel").write_bytes(_field(100, payload))  # NetParameter.layer
    assert caffe_pb2.NetParameter.FromString(_field(100, payload)).layer[0].HasField("bias_channel_param")
    net = Net(read_net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                       'layer { ' + FC.replace("num_output: 5", "num_output: 5 bias_term: false") + _q(**DFP) + ' }\n'),
              TEST)
    net.copy_from(str(tmp_path / "fork.caffemodel"))
    np.testing.assert_array_equal(net.params_by_layer()["fc"][0].detach().numpy(), w)


# models/SqueezeNet/RistrettoDemo/quantized.prototxt as Ristretto's tool wrote it (examples/ristretto/
# 00_quantize_squeezenet.sh), kept in cqiu2008/qtCaffeRistrettoCm @ 7c4ee4f06d2e2a9a0cf92c9cec2d4f2d870a254a;
# trimmed: conv1, fire2 and conv10 with their quantization_param unchanged, fewer outputs (96 -> 8,
# 16 -> 4, 64 -> 8, 1000 -> 4), fire3-fire9 left out, the ImageNet Data layers replaced by HDF5Data.
SQUEEZENET_QUANTIZED = """
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
  hdf5_data_param { source: "{SOURCE}" batch_size: 16 shuffle: true } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
  hdf5_data_param { source: "{SOURCE}" batch_size: 16 } }
layer {
  name: "conv1"
  type: "ConvolutionRistretto"
  bottom: "data"
  top: "conv1"
  convolution_param {
    num_output: 8
    kernel_size: 7
    stride: 2
    weight_filler {
      type: "xavier"
    }
  }
  quantization_param {
    bw_layer_in: 8
    bw_layer_out: 8
    bw_params: 8
    fl_layer_in: 0
    fl_layer_out: -3
    fl_params: 7
  }
}
layer {
  name: "relu_conv1"
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "fire2/squeeze1x1"
  type: "ConvolutionRistretto"
  bottom: "pool1"
  top: "fire2/squeeze1x1"
  convolution_param {
    num_output: 4
    kernel_size: 1
    weight_filler {
      type: "xavier"
    }
  }
  quantization_param {
    bw_layer_in: 8
    bw_layer_out: 8
    bw_params: 8
    fl_layer_in: -3
    fl_layer_out: -4
    fl_params: 7
  }
}
layer {
  name: "fire2/relu_squeeze1x1"
  type: "ReLU"
  bottom: "fire2/squeeze1x1"
  top: "fire2/squeeze1x1"
}
layer {
  name: "fire2/expand1x1"
  type: "ConvolutionRistretto"
  bottom: "fire2/squeeze1x1"
  top: "fire2/expand1x1"
  convolution_param {
    num_output: 8
    kernel_size: 1
    weight_filler {
      type: "xavier"
    }
  }
  quantization_param {
    bw_layer_in: 8
    bw_layer_out: 8
    bw_params: 8
    fl_layer_in: -4
    fl_layer_out: -4
    fl_params: 7
  }
}
layer {
  name: "fire2/relu_expand1x1"
  type: "ReLU"
  bottom: "fire2/expand1x1"
  top: "fire2/expand1x1"
}
layer {
  name: "fire2/expand3x3"
  type: "ConvolutionRistretto"
  bottom: "fire2/squeeze1x1"
  top: "fire2/expand3x3"
  convolution_param {
    num_output: 8
    pad: 1
    kernel_size: 3
    weight_filler {
      type: "xavier"
    }
  }
  quantization_param {
    bw_layer_in: 8
    bw_layer_out: 8
    bw_params: 8
    fl_layer_in: -4
    fl_layer_out: -3
    fl_params: 7
  }
}
layer {
  name: "fire2/relu_expand3x3"
  type: "ReLU"
  bottom: "fire2/expand3x3"
  top: "fire2/expand3x3"
}
layer {
  name: "fire2/concat"
  type: "Concat"
  bottom: "fire2/expand1x1"
  bottom: "fire2/expand3x3"
  top: "fire2/concat"
}
layer {
  name: "drop9"
  type: "Dropout"
  bottom: "fire2/concat"
  top: "fire2/concat"
  dropout_param {
    dropout_ratio: 0.5
  }
}
layer {
  name: "conv10"
  type: "ConvolutionRistretto"
  bottom: "fire2/concat"
  top: "conv10"
  convolution_param {
    num_output: 4
    pad: 1
    kernel_size: 1
    weight_filler {
      type: "gaussian"
      mean: 0
      std: 0.01
    }
  }
  quantization_param {
    bw_layer_in: 8
    bw_layer_out: 8
    bw_params: 8
    fl_layer_in: -3
    fl_layer_out: -3
    fl_params: 8
  }
}
layer {
  name: "relu_conv10"
  type: "ReLU"
  bottom: "conv10"
  top: "conv10"
}
layer {
  name: "pool10"
  type: "Pooling"
  bottom: "conv10"
  top: "pool10"
  pooling_param {
    pool: AVE
    global_pooling: true
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "pool10"
  bottom: "label"
  top: "loss"
  include {
    phase: TRAIN
  }
}
layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "pool10"
  bottom: "label"
  top: "accuracy"
  include {
    phase: TEST
  }
}
"""


def _h5_images(folder, n=64, classes=4, seed=0):
    """Mean-subtracted pixel-range images (as ImageNet's, which the net's fl_layer_in 0 expects) whose
    class is a bright quadrant."""
    import h5py

    g = np.random.default_rng(seed)
    label = np.arange(n) % classes
    data = g.normal(0, 15, (n, 3, 39, 39)).astype(np.float32)
    for i, c in enumerate(label):
        data[i, :, (c // 2) * 19:(c // 2) * 19 + 20, (c % 2) * 19:(c % 2) * 19 + 20] += 60
    with h5py.File(folder / "d.h5", "w") as fh:
        fh["data"] = data
        fh["label"] = label.astype(np.float32)
    (folder / "list.txt").write_text(f"{folder / 'd.h5'}\n")


def test_quantized_squeezenet_builds_runs_and_finetunes(tmp_path):
    from neocaffe.solver.solver import Solver

    _h5_images(tmp_path)
    (tmp_path / "quantized.prototxt").write_text(SQUEEZENET_QUANTIZED.replace("{SOURCE}", str(tmp_path / "list.txt")))
    p = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "quantized.prototxt"}" base_lr: 0.003 lr_policy: "fixed" momentum: 0.9 '
                      'weight_decay: 0.0002 display: 0 random_seed: 42 solver_mode: CPU test_iter: 1 '
                      'test_interval: 1000 test_initialization: false', p)
    s = Solver(p)
    test_net = s.test_nets[0]
    assert [test_net.layer(n).type_name for n in ("conv1", "fire2/expand3x3", "conv10")] == ["ConvolutionRistretto"] * 3
    w0 = s.net.params_by_layer()["conv1"][0].detach().clone()
    losses = []
    for _ in range(80):
        s.step(1)
        losses.append(float(s.net.blob_data["loss"]))
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    print(f"quantized SqueezeNet: loss first 5 {first:.3f}, last 10 {last:.3f}")
    assert last < 0.7 * first, (first, last)
    w1 = s.net.params_by_layer()["conv1"][0].detach()
    assert not torch.equal(w0, w1) and not torch.equal(w1, trim_fixed_point(w1, 8, 7))  # full precision updated
    # TEST: every Ristretto top on its 8-bit grid (conv1: steps of 8 up to 1016; conv10 relu'd: of 8)
    s.test(0)
    for name, fl in (("conv1", -3), ("fire2/squeeze1x1", -4), ("fire2/expand1x1", -4), ("fire2/expand3x3", -3),
                     ("conv10", -3)):
        v = test_net.blob_data[name].numpy() * 2.0 ** fl
        assert np.array_equal(v, np.round(v)) and v.min() >= -128 and v.max() <= 127, name
    acc = float(test_net.blob_data["accuracy"])
    print(f"quantized SqueezeNet: TEST accuracy {acc:.3f}")
    assert 0.0 <= acc <= 1.0
    s.close()
