"""C3D-v1.0's Convolution3D and Pooling3D against NumPy loop ports of the fork's C++ (facebookarchive/C3D @
71336a2: src/caffe/layers/convolution3d_layer.cpp with src/caffe/util/vol2col.cpp, src/caffe/layers/
pool3d_layer.cpp), and the fork's Sports-1M feature extractor prototxts (tests/layers/data/c3d/, as released):
they parse, upgrade and build with C3D's blob shapes, and, shrunk, run forward with a synthetic C3D
.caffemodel of 5-D blobs through extract_image_features. The float64 gradient checks of every example are
in test_contract.py; here the backward is also compared with the fork's own loops."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.io.c3d_files import c3d_blob, c3d_caffemodel

f32 = np.float32
FLT_MAX = f32(3.4028234663852886e38)
DATA = Path(__file__).parent / "data" / "c3d"


def _layer(text: str, shape, phase=TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(shape)], phase)


def _cdiv(a: int, b: int) -> int:
    return int(a / b)  # C's integer division (toward zero)


# -- Convolution3D: vol2col_cpu, col2vol_cpu and the layer's GEMMs, loop for loop --------------------
def vol2col(x, k, kd, pad, tpad, s, ts):
    C, L, H, W = x.shape
    lc, hc, wc = _cdiv(L + 2 * tpad - kd, ts) + 1, _cdiv(H + 2 * pad - k, s) + 1, _cdiv(W + 2 * pad - k, s) + 1
    col = np.zeros((C * kd * k * k, lc, hc, wc), x.dtype)
    for c in range(C * kd * k * k):
        w_off, h_off, l_off, c_im = c % k, (c // k) % k, (c // k // k) % kd, c // k // k // kd
        for l in range(lc):
            for h in range(hc):
                for w in range(wc):
                    lp, hp, wp = l * ts - tpad + l_off, h * s - pad + h_off, w * s - pad + w_off
                    if 0 <= hp < H and 0 <= wp < W and 0 <= lp < L:
                        col[c, l, h, w] = x[c_im, lp, hp, wp]
    return col


def col2vol(col, shape, k, kd, pad, tpad, s, ts):
    C, L, H, W = shape
    x = np.zeros(shape, col.dtype)
    _, lc, hc, wc = col.shape
    for c in range(C * kd * k * k):
        w_off, h_off, l_off, c_im = c % k, (c // k) % k, (c // k // k) % kd, c // k // k // kd
        for l in range(lc):
            for h in range(hc):
                for w in range(wc):
                    lp, hp, wp = l * ts - tpad + l_off, h * s - pad + h_off, w * s - pad + w_off
                    if 0 <= hp < H and 0 <= wp < W and 0 <= lp < L:
                        x[c_im, lp, hp, wp] += col[c, l, h, w]
    return x


def conv3d_ref(x, wt, b, geom, fg):
    """Forward_cpu: per item vol2col, then filter_group GEMMs of M = num_output / fg filters, then the bias."""
    O = wt.shape[0]
    M, K = O // fg, wt[0].size
    tops = []
    for n in range(x.shape[0]):
        col = vol2col(x[n], *geom)
        N = col[0].size
        top = np.zeros((O, N), x.dtype)
        for g in range(fg):
            top[g * M:(g + 1) * M] = wt.reshape(O, K)[g * M:(g + 1) * M] @ col.reshape(K, N)
        if b is not None:
            top += b.reshape(O, 1)
        tops.append(top.reshape((O,) + col.shape[1:]))
    return np.stack(tops)


def conv3d_backward_ref(x, wt, dy, geom, fg):
    """Backward_cpu: bias diff, weight diff (accumulated per item and group) and col2vol of W^T dy."""
    O = wt.shape[0]
    M, K = O // fg, wt[0].size
    dw, db, dx = np.zeros((O, K), x.dtype), np.zeros(O, x.dtype), np.zeros_like(x)
    for n in range(x.shape[0]):
        top = dy[n].reshape(O, -1)
        db += top.sum(1)
        col = vol2col(x[n], *geom).reshape(K, -1)
        for g in range(fg):
            dw[g * M:(g + 1) * M] += top[g * M:(g + 1) * M] @ col.T
        col_diff = sum(wt.reshape(O, K)[g * M:(g + 1) * M].T @ top[g * M:(g + 1) * M] for g in range(fg))
        dx[n] = col2vol(col_diff.reshape((K,) + dy.shape[2:]), x.shape[1:], *geom)
    return dx, dw.reshape(wt.shape), db


CONV_CASES = [  # (C, L, H, W), num_output, k, kd, pad, tpad, stride, tstride, filter_group
    ((2, 4, 5, 6), 4, 3, 3, 1, 1, 1, 1, 2),
    ((3, 5, 6, 5), 3, 2, 3, 0, 0, 2, 2, 1),
    ((1, 1, 2, 4), 2, 3, 2, 0, 0, 2, 3, 1),   # input shorter than the kernel: C's division gives 1 output
    ((2, 3, 4, 4), 6, 3, 1, 2, 0, 3, 1, 3),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolution3d_matches_the_fork(case):
    (C, L, H, W), O, k, kd, pad, tpad, s, ts, fg = case
    layer = _layer(f'name: "c" type: "Convolution3D" bottom: "x" top: "y" convolution_param {{ num_output: {O} '
                   f'kernel_size: {k} kernel_depth: {kd} pad: {pad} temporal_pad: {tpad} stride: {s} '
                   f'temporal_stride: {ts} filter_group: {fg} weight_filler {{ type: "gaussian" std: 0.5 }} '
                   f'bias_filler {{ type: "gaussian" std: 0.5 }} }}', (2, C, L, H, W)).double()
    g = np.random.default_rng(0)
    x = g.standard_normal((2, C, L, H, W))
    wt, b = (p.detach().numpy() for p in layer.blobs)
    geom = (k, kd, pad, tpad, s, ts)
    want = conv3d_ref(x, wt, b, geom, fg)
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    assert tuple(y.shape) == want.shape == layer.reshape([x.shape])[0]
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    dy = g.standard_normal(want.shape)
    y.backward(torch.tensor(dy))
    dx, dw, db = conv3d_backward_ref(x, wt, dy, geom, fg)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].grad.numpy(), db, rtol=1e-12, atol=1e-12)
    # float32: the fork's numbers up to the summation order of the GEMM
    y32 = layer.float()(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(y32.detach().numpy(), conv3d_ref(x.astype(f32), wt.astype(f32), b.astype(f32), geom, fg),
                               rtol=1e-5, atol=1e-5)


# -- Pooling3D: Forward_cpu / Backward_cpu, loop for loop, in the blob's precision -------------------
def pooled(d, k, s, p):
    return int(math.ceil(f32(d + 2 * p - k) / f32(s))) + 1


def _windows(shape, k, kd, s, ts, pad, ave):
    L, H, W = shape
    for pl in range(pooled(L, kd, ts, 0)):
        for ph in range(pooled(H, k, s, pad)):
            for pw in range(pooled(W, k, s, pad)):
                hs, ws, ls = ph * s - (pad if ave else 0), pw * s - (pad if ave else 0), pl * ts
                he, we, le = (min(hs + k, H + pad), min(ws + k, W + pad), min(ls + kd, L)) if ave else \
                    (min(hs + k, H), min(ws + k, W), min(ls + kd, L))
                size = (he - hs) * (we - ws) * (le - ls)
                hs, ws = max(hs, 0), max(ws, 0)
                yield (pl, ph, pw), range(ls, min(le, L)), range(hs, min(he, H)), range(ws, min(we, W)), size


def pool3d_ref(x, ave, k, kd, s, ts, pad):
    N, C, L, H, W = x.shape
    t = x.dtype.type
    y = np.zeros((N, C, pooled(L, kd, ts, 0), pooled(H, k, s, pad), pooled(W, k, s, pad)), x.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        for n in range(N):
            for c in range(C):
                for o, ls, hs, ws, size in _windows((L, H, W), k, kd, s, ts, pad, ave):
                    acc = t(0) if ave else t(-FLT_MAX)
                    for l in ls:
                        for h in hs:
                            for w in ws:
                                acc = acc + x[n, c, l, h, w] if ave else max(acc, x[n, c, l, h, w])
                    y[(n, c) + o] = acc / t(size) if ave else acc
    return y


def pool3d_backward_ref(x, y, dy, ave, k, kd, s, ts, pad):
    N, C, L, H, W = x.shape
    t = x.dtype.type
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for o, ls, hs, ws, size in _windows((L, H, W), k, kd, s, ts, pad, ave):
                for l in ls:
                    for h in hs:
                        for w in ws:
                            g = dy[(n, c) + o]
                            dx[n, c, l, h, w] += g / t(size) if ave else g * t(x[n, c, l, h, w] == y[(n, c) + o])
    return dx


POOL_CASES = [  # (L, H, W), method, k, kd, stride, tstride, pad
    ((4, 6, 7), "MAX", 2, 2, 2, 2, 0),
    ((5, 7, 7), "MAX", 3, 1, 2, 1, 0),      # overlapping windows, ceil rounding
    ((7, 9, 7), "MAX", 2, 2, 3, 3, 0),      # a last window past the bottom: -FLT_MAX
    ((5, 5, 5), "AVE", 3, 2, 2, 2, 1),
    ((4, 5, 6), "AVE", 2, 3, 3, 1, 1),      # upstream would clip the last (padding-only) window; C3D keeps it
    ((3, 4, 9), "AVE", 2, 2, 3, 2, 0),      # a window past the bottom: 0 / 0
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling3d_matches_the_fork_bit_for_bit(case):
    (L, H, W), method, k, kd, s, ts, pad = case
    layer = _layer(f'name: "p" type: "Pooling3D" bottom: "x" top: "y" pooling_param {{ pool: {method} '
                   f'kernel_size: {k} kernel_depth: {kd} stride: {s} temporal_stride: {ts} pad: {pad} }}',
                   (2, 3, L, H, W))
    g = np.random.default_rng(1)
    x = g.standard_normal((2, 3, L, H, W)).astype(f32)
    x[0, 0, 0, 0, :2] = 5.0  # a tie inside one MAX window: both elements take its diff
    ave = method == "AVE"
    want = pool3d_ref(x, ave, k, kd, s, ts, pad)
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    assert tuple(y.shape) == want.shape == layer.reshape([x.shape])[0]
    np.testing.assert_array_equal(y.detach().numpy(), want)
    dy = g.standard_normal(want.shape).astype(f32)
    y.backward(torch.tensor(dy))
    np.testing.assert_array_equal(xt.grad.numpy(), pool3d_backward_ref(x, want, dy, ave, k, kd, s, ts, pad))


def test_pooling3d_output_sizes():
    """ceil without upstream's clipping, no temporal padding; C3D's Sports-1M pool5 is 512 x 1 x 4 x 4."""
    def out(shape, text):
        return _layer('name: "p" type: "Pooling3D" bottom: "x" top: "y" pooling_param { ' + text + ' }',
                      shape).reshape([shape])[0]
    assert out((1, 512, 2, 7, 7), "pool: MAX kernel_size: 2 kernel_depth: 2 stride: 2 temporal_stride: 2") == (1, 512, 1, 4, 4)
    assert out((1, 1, 5, 5, 5), "pool: AVE kernel_size: 2 kernel_depth: 1 stride: 3 pad: 1") == (1, 1, 5, 3, 3)
    assert out((1, 1, 1, 3, 3), "pool: MAX kernel_size: 2 kernel_depth: 2 stride: 2 temporal_stride: 2") == (1, 1, 1, 2, 2)


@pytest.mark.parametrize("text,shape,match", [
    ('pooling_param { pool: MAX kernel_size: 2 kernel_depth: 2 pad: 1 }', (1, 1, 4, 4, 4), "only for average"),
    ('pooling_param { pool: STOCHASTIC kernel_size: 2 kernel_depth: 2 }', (1, 1, 4, 4, 4), "STOCHASTIC"),
    ('pooling_param { pool: MAX kernel_size: 2 }', (1, 1, 4, 4, 4), "kernel_depth must be set"),
    ('pooling_param { pool: MAX kernel_size: 2 kernel_depth: 2 kernel_h: 2 }', (1, 1, 4, 4, 4), "kernel_h"),
    ('pooling_param { pool: MAX kernel_size: 2 kernel_depth: 2 }', (1, 1, 4, 4), "5 axes"),
])
def test_pooling3d_refuses(text, shape, match):
    with pytest.raises(LayerSetupError, match=match):
        _layer('name: "p" type: "Pooling3D" bottom: "x" top: "y" ' + text, shape)


@pytest.mark.parametrize("text,match", [
    ('num_output: 4 kernel_size: 3 kernel_depth: 3 filter_group: 3', "filter_group = 3 does not divide"),
    ('num_output: 4 kernel_size: 3', "must be positive"),
    ('num_output: 4 kernel_size: 3 kernel_depth: 3 dilation: 2', "dilation"),
    ('num_output: 4 kernel_size: 3 kernel_size: 2 kernel_depth: 1', "given 2 times"),
    ('num_output: 4 kernel_size: 9 kernel_depth: 1', "empty output"),
])
def test_convolution3d_refuses(text, match):
    with pytest.raises(LayerSetupError, match=match):
        _layer('name: "c" type: "Convolution3D" bottom: "x" top: "y" convolution_param { ' + text + ' }',
               (1, 2, 3, 4, 4))


# -- the fork's Sports-1M feature extractor nets ------------------------------------------------------
def _clips(tmp_path, n_frames=20, size=(20, 26)):
    """Two frame folders (``%06d.jpg`` from 1), a video, their lists and a C3D mean of 1 x 3 x 16 x 128 x 171."""
    g = np.random.default_rng(5)
    frames = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        frames[name] = g.integers(0, 256, (n_frames,) + size + (3,), dtype=np.uint8)
        for i, f in enumerate(frames[name], 1):
            cv2.imwrite(str(tmp_path / name / f"{i:06d}.jpg"), f)
    (tmp_path / "frm.txt").write_text(f"{tmp_path}/a/ 1 0\n{tmp_path}/b/ 3 7\n{tmp_path}/a/ 5 2\n")
    from neocaffe.data.examples import write_video

    write_video(str(tmp_path / "v.avi"), frames["a"])
    (tmp_path / "video.txt").write_text(f"{tmp_path}/v.avi 0 0\n{tmp_path}/v.avi 4 3\n")
    (tmp_path / "mean.binaryproto").write_bytes(c3d_blob(g.uniform(90, 130, (1, 3, 16, 128, 171)).astype(f32)))
    return frames


def _prototxt(which: str, tmp_path, batch: int = 2, shrink: bool = False) -> str:
    text = (DATA / f"c3d_sport1m_feature_extractor_{which}.prototxt").read_text()
    text = text.replace(f'"prototxt/input_list_{which}.txt"', f'"{tmp_path}/{"frm" if which == "frm" else "video"}.txt"')
    text = text.replace('"sport1m_train16_128_mean.binaryproto"', f'"{tmp_path}/mean.binaryproto"')
    text = text.replace("batch_size: 50", f"batch_size: {batch}")
    if shrink:
        for big, small in (("64", "4"), ("128", "8"), ("256", "8"), ("512", "8"), ("4096", "16")):
            text = re.sub(rf"num_output: {big}\b", f"num_output: {small}", text)
    return text


def _net(text: str, tmp_path):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source

    path = tmp_path / "net.prototxt"
    path.write_text(text)
    param, source = read_net_with_source(str(path))
    return Net(param, TEST, source=source)


C3D_SHAPES = {"data": (2, 3, 16, 112, 112), "label": (2, 1, 1, 1, 1), "conv1a": (2, 64, 16, 112, 112),
              "pool1": (2, 64, 16, 56, 56), "pool2": (2, 128, 8, 28, 28), "pool3": (2, 256, 4, 14, 14),
              "pool4": (2, 512, 2, 7, 7), "conv5b": (2, 512, 2, 7, 7), "pool5": (2, 512, 1, 4, 4),
              "fc6-1": (2, 4096), "fc7-1": (2, 4096), "fc8-1": (2, 487), "prob": (2, 487)}


@pytest.mark.parametrize("which", ["frm", "video"])
def test_real_prototxts_build_with_c3d_shapes(which, tmp_path):
    _clips(tmp_path)
    net = _net(_prototxt(which, tmp_path), tmp_path)
    try:
        types = {name: net.layer(name).type_name for name in net.layer_names}
        assert types["data"] == "VideoData" and types["conv3b"] == "Convolution3D" and types["pool5"] == "Pooling3D"
        assert tuple(net.layer("conv1a").blobs[0].shape) == (64, 3, 3, 3, 3)
        assert tuple(net.layer("fc6-1").blobs[0].shape) == (4096, 8192)
        for name, shape in C3D_SHAPES.items():
            assert tuple(net.blob(name).shape) == shape, name
    finally:
        net.close()


def _weights(net):
    """Random weights for every layer with blobs, in the fork's 5-D shapes (biases 1x1x1x1xN, fc 1x1x1xNxK)."""
    g = np.random.default_rng(9)
    out = []
    for name in net.layer_names:
        layer = net.layer(name)
        if not len(layer.blobs):
            continue
        w, b = (tuple(p.shape) for p in layer.blobs)
        scale = 1.0 / math.sqrt(math.prod(w[1:]))
        wshape = w if len(w) == 5 else (1, 1, 1) + w
        out.append((name, "CONVOLUTION3D" if len(w) == 5 else "INNER_PRODUCT",
                    [g.standard_normal(wshape).astype(f32) * f32(scale), g.uniform(-0.1, 0.1, (1, 1, 1, 1) + b).astype(f32)]))
    return out


def _numpy_head(net, weights):
    """fc6-1 / fc7-1 (ReLU in place, Dropout off in TEST) and prob from pool5, with the file's weights."""
    w = {name: blobs for name, _, blobs in weights}
    x = net.blob("pool5").detach().numpy().reshape(2, -1).astype(np.float64)
    fc = {}
    for name in ("fc6-1", "fc7-1", "fc8-1"):
        W, b = w[name]
        x = x @ W.reshape(W.shape[-2:]).T.astype(np.float64) + b.reshape(-1)
        x = fc[name] = np.maximum(x, 0) if name != "fc8-1" else x
    e = np.exp(x - x.max(1, keepdims=True))
    return fc["fc6-1"], fc["fc7-1"], e / e.sum(1, keepdims=True)


def test_shrunk_net_forward_with_c3d_caffemodel_and_extractor(tmp_path, caplog):
    from neocaffe.tools.extract_image_features import main, read_c3d_blob

    _clips(tmp_path)
    text = _prototxt("frm", tmp_path, shrink=True)
    net = _net(text, tmp_path)
    weights = _weights(net)
    model = tmp_path / "conv3d_deepnetA_sport1m_iter_1900000"
    model.write_bytes(c3d_caffemodel(weights))
    try:
        net.copy_from(str(model))
        with torch.no_grad():
            net.forward()
        # the data: the first clip, frames 1-16 (as OpenCV decodes the JPEGs) resized to 171 x 128, the centre
        # 112 x 112, minus the mean's
        clip = np.stack([cv2.resize(cv2.imread(str(tmp_path / "a" / f"{i:06d}.jpg")), (171, 128))
                         for i in range(1, 17)]).transpose(3, 0, 1, 2).astype(f32)
        mean = read_c3d_mean(tmp_path / "mean.binaryproto")
        np.testing.assert_array_equal(net.blob("data")[0].numpy(), (clip - mean)[:, :, 8:120, 29:141])
        # conv1a is the fork's vol2col + GEMM (on one frame column to keep the loop port short)
        conv = weights[0][2]
        x = net.blob("data")[1:2, :, :, :5, :5].numpy().astype(np.float64)
        want = conv3d_ref(x, conv[0].astype(np.float64), conv[1].astype(np.float64), (3, 3, 1, 1, 1, 1), 1)
        got = net.blob("conv1a")[1, :, :, 1:4, 1:4].numpy()  # relu1a runs in place: compare the positive part
        np.testing.assert_allclose(got, np.maximum(want[0, :, :, 1:4, 1:4], 0), rtol=1e-4, atol=1e-4)
        fc6, fc7, prob = _numpy_head(net, weights)
        np.testing.assert_allclose(net.blob("fc6-1").numpy(), fc6, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(net.blob("fc7-1").numpy(), fc7, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(net.blob("prob").numpy(), prob, rtol=1e-4, atol=1e-6)
        assert net.blob("prob").shape == (2, 487)
    finally:
        net.close()
    # the fork's extract_image_features: one file per clip and feature, 5 int32 dims then the floats
    (tmp_path / "out").mkdir()
    (tmp_path / "prefix.txt").write_text("".join(f"{tmp_path}/out/{i:06d}\n" for i in (1, 3, 5)))
    (tmp_path / "net.prototxt").write_text(text)
    assert main([str(tmp_path / "net.prototxt"), str(model), "-1", "2", "3", str(tmp_path / "prefix.txt"),
                 "fc7-1", "fc6-1", "prob"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"{i:06d}.{f}" for i in (1, 3, 5) for f in ("fc7-1", "fc6-1", "prob"))
    first = read_c3d_blob(str(tmp_path / "out" / "000001.fc6-1"))
    assert first.shape == (1, 16, 1, 1, 1)
    np.testing.assert_allclose(first.reshape(-1), fc6[0], rtol=1e-4, atol=1e-5)
    assert read_c3d_blob(str(tmp_path / "out" / "000003.prob")).shape == (1, 487, 1, 1, 1)
    assert "Successfully extracted 3 features!" in caplog.text
    # an output folder that does not exist is an error (the fork writes nothing and says nothing)
    (tmp_path / "prefix.txt").write_text(f"{tmp_path}/missing/000001\n")
    assert main([str(tmp_path / "net.prototxt"), str(model), "-1", "2", "1", str(tmp_path / "prefix.txt"), "prob"]) == 1
    assert "cannot write feature file" in caplog.text


def read_c3d_mean(path):
    from neocaffe.io.binaryproto import read_blobproto

    return np.asarray(read_blobproto(path).data)[0]
