"""C3D-v1.0's V2V layers (Deconvolution3D, VoxelWiseSoftmax, VoxelWiseSoftmaxWithLoss, VoxelCustomLoss) and its
VolumeData against NumPy ports of the fork's loops (facebookarchive/C3D @ 71336a2, C3D-v1.0/src/caffe/layers/
deconvolution3d_layer.cpp with src/caffe/util/vol2col.cpp, voxel_wise_softmax_layer.cpp,
voxel_wise_softmax_loss_layer.cpp, voxel_custom_loss_layer.cpp, volume_data_layer.cpp), forward and backward;
and a V1 net of the fork's V2V types (the tail of examples/v2v/video_segmentation_gatech/deconv3d_gatech.prototxt,
with its deconvolution geometries) that builds, runs forward and backward. The float64 gradient checks of every
example whose fork backward is the gradient are in test_contract.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.db_writer import DBWriter
from neocaffe.layers.base import TEST, TRAIN, BuildContext, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.io.c3d_files import c3d_blob
from tests.layers.test_c3d import col2vol, vol2col

f32 = np.float32
FLT_MIN = f32(1.17549435e-38)


def _layer(text: str, *shapes, phase=TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes], phase, BuildContext(data_workers=0))


# -- Deconvolution3D: Forward_cpu / Backward_cpu, GEMM for GEMM, with the fork's col2vol / vol2col ------------
def deconv3d_ref(x, wt, b, geom):
    """Per item: col = W^T x (K x LHW), col2vol into the top, then the bias."""
    k, kd, pad, tpad, s, ts = geom
    N, C, L, H, W = x.shape
    O = wt.shape[1]
    K = O * kd * k * k
    out = (O, (L - 1) * ts - 2 * tpad + kd, (H - 1) * s - 2 * pad + k, (W - 1) * s - 2 * pad + k)
    tops = []
    for n in range(N):
        col = wt.reshape(C, K).T @ x[n].reshape(C, -1)
        top = col2vol(col.reshape(K, L, H, W), out, *geom)
        if b is not None:
            top += b.reshape(O, 1, 1, 1)
        tops.append(top)
    return np.stack(tops)


def deconv3d_backward_ref(x, wt, dy, geom):
    """Bias diff (gemv per item), weight diff (x vol2col(dy)^T, accumulated per item), bottom diff W vol2col(dy)."""
    N, C = x.shape[:2]
    O = wt.shape[1]
    K = wt[0].size
    dw, db, dx = np.zeros((C, K), x.dtype), np.zeros(O, x.dtype), np.zeros_like(x)
    for n in range(N):
        db += dy[n].reshape(O, -1).sum(1)
        col_diff = vol2col(dy[n], *geom).reshape(K, -1)
        dw += x[n].reshape(C, -1) @ col_diff.T
        dx[n] = (wt.reshape(C, K) @ col_diff).reshape(x.shape[1:])
    return dx, dw.reshape(wt.shape), db


DECONV_CASES = [  # (C, L, H, W), num_output, k, kd, pad, tpad, stride, tstride
    ((3, 2, 3, 3), 2, 4, 4, 1, 1, 2, 2),   # deconv5b / deconv4b of the gatech net
    ((2, 2, 2, 3), 2, 8, 4, 2, 1, 4, 2),   # deconv3b of the gatech net
    ((2, 2, 2, 2), 3, 3, 2, 0, 0, 3, 1),   # stride past the kernel: gaps of bias only
    ((2, 3, 3, 4), 1, 2, 1, 2, 0, 3, 1),   # pad >= kernel
]


@pytest.mark.parametrize("case", DECONV_CASES)
def test_deconvolution3d_matches_the_fork(case):
    (C, L, H, W), O, k, kd, pad, tpad, s, ts = case
    layer = _layer(f'name: "d" type: "Deconvolution3D" bottom: "x" top: "y" convolution_param {{ num_output: {O} '
                   f'kernel_size: {k} kernel_depth: {kd} pad: {pad} temporal_pad: {tpad} stride: {s} '
                   f'temporal_stride: {ts} weight_filler {{ type: "gaussian" std: 0.5 }} '
                   f'bias_filler {{ type: "gaussian" std: 0.5 }} }}', (2, C, L, H, W)).double()
    g = np.random.default_rng(0)
    x = g.standard_normal((2, C, L, H, W))
    wt, b = (p.detach().numpy() for p in layer.blobs)
    assert wt.shape == (C, O, kd, k, k) and b.shape == (O,)  # the fork's (C, N, kd, k, k) and 1x1x1x1xN
    geom = (k, kd, pad, tpad, s, ts)
    want = deconv3d_ref(x, wt, b, geom)
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    assert tuple(y.shape) == want.shape == layer.reshape([x.shape])[0]
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    dy = g.standard_normal(want.shape)
    y.backward(torch.tensor(dy))
    dx, dw, db = deconv3d_backward_ref(x, wt, dy, geom)
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].grad.numpy(), db, rtol=1e-12, atol=1e-12)
    y32 = layer.float()(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(y32.detach().numpy(), deconv3d_ref(x.astype(f32), wt.astype(f32), b.astype(f32), geom),
                               rtol=1e-5, atol=1e-5)


def test_deconvolution3d_gatech_sizes_and_no_bias():
    def out(shape, text):
        return _layer('name: "d" type: "Deconvolution3D" bottom: "x" top: "y" convolution_param { ' + text + ' }',
                      shape).reshape([shape])[0]
    # the gatech net's upsampling: conv5a (2 x 7 x 7) -> 4 x 14 x 14 -> 8 x 28 x 28 -> 16 x 112 x 112
    s2 = "num_output: 64 kernel_size: 4 kernel_depth: 4 pad: 1 temporal_pad: 1 stride: 2 temporal_stride: 2"
    assert out((1, 512, 2, 7, 7), s2) == (1, 64, 4, 14, 14)
    assert out((1, 128, 4, 14, 14), s2) == (1, 64, 8, 28, 28)
    assert out((1, 128, 8, 28, 28), "num_output: 64 kernel_size: 8 kernel_depth: 4 pad: 2 temporal_pad: 1 "
               "stride: 4 temporal_stride: 2") == (1, 64, 16, 112, 112)
    layer = _layer('name: "d" type: "Deconvolution3D" bottom: "x" top: "y" convolution_param { num_output: 2 '
                   'kernel_size: 2 kernel_depth: 2 bias_term: false weight_filler { type: "gaussian" } }', (1, 3, 2, 2, 2))
    assert [tuple(p.shape) for p in layer.blobs] == [(3, 2, 2, 2, 2)]


@pytest.mark.parametrize("text,shape,match", [
    ('num_output: 2 kernel_size: 3', (1, 2, 3, 3, 3), "must be positive"),
    ('kernel_size: 3 kernel_depth: 3', (1, 2, 3, 3, 3), "num_output must be set"),
    ('num_output: 2 kernel_depth: 3', (1, 2, 3, 3, 3), "kernel_size must be set"),
    ('num_output: 2 kernel_size: 3 kernel_depth: 1 stride: 2 stride: 1', (1, 2, 3, 3, 3), "given 2 times"),
    ('num_output: 2 kernel_size: 3 kernel_depth: 1 kernel_h: 2', (1, 2, 3, 3, 3), "kernel_h"),
    ('num_output: 2 kernel_size: 3 kernel_depth: 1 dilation: 2', (1, 2, 3, 3, 3), "dilation"),
    ('num_output: 2 kernel_size: 2 kernel_depth: 1 pad: 2', (1, 2, 3, 1, 3), r"empty output \(3, -2, 0\)"),
    ('num_output: 2 kernel_size: 2 kernel_depth: 1', (1, 2, 3, 3), "5 axes"),
])
def test_deconvolution3d_refuses(text, shape, match):
    with pytest.raises(LayerSetupError, match=f"layer 'd' \\(Deconvolution3D\\).*{match}"):
        _layer('name: "d" type: "Deconvolution3D" bottom: "x" top: "y" convolution_param { ' + text + ' }', shape)


def test_deconvolution3d_refuses_other_channels_at_forward():
    layer = _layer('name: "d" type: "Deconvolution3D" bottom: "x" top: "y" convolution_param { num_output: 2 '
                   'kernel_size: 2 kernel_depth: 1 }', (1, 2, 2, 2, 2))
    with pytest.raises(LayerSetupError, match="has 3 channels; set up with 2"):
        layer(torch.zeros(1, 3, 2, 2, 2))


# -- VoxelWiseSoftmax: Forward_cpu / Backward_cpu, loop for loop (vectorized over voxels only) ----------------
def voxel_softmax_ref(x, fork_index=False):
    """The fork's loops. ``fork_index``: the max loop reads ``scale_data`` at the bottom's offset of (i, 0, l, h,
    w), as the fork does (here over a fresh, zeroed buffer big enough for those reads); else at the scale's."""
    N, C = x.shape[:2]
    v = x.reshape(N, C, -1)
    V = v.shape[2]
    scale = np.zeros((max(N, (N - 1) * C + 1), V), x.dtype)
    top = v.copy()
    for i in range(N):
        scale[i] = v[i, 0]
        for c in range(1, C):
            scale[i] = np.maximum(scale[i * C if fork_index else i], v[i, c])
    for i in range(N):
        for c in range(C):
            top[i, c] -= scale[i]
    top = np.exp(top)
    for i in range(N):
        scale[i] = 0
        for c in range(C):
            scale[i] += top[i, c]
    for i in range(N):
        for c in range(C):
            top[i, c] /= scale[i]
    return top.reshape(x.shape)


def voxel_softmax_backward_ref(y, dy):
    N, C = y.shape[:2]
    yv, dv = y.reshape(N, C, -1), dy.reshape(N, C, -1)
    dx = dv.copy()
    for i in range(N):
        s = np.zeros(yv.shape[2], y.dtype)
        for c in range(C):
            s += dv[i, c] * yv[i, c]
        for c in range(C):
            dx[i, c] -= s
    return (dx * yv).reshape(y.shape)


@pytest.mark.parametrize("shape", [(3, 4, 2, 3, 2), (2, 1, 2, 2, 2), (2, 5)])
def test_voxel_wise_softmax_matches_the_fork(shape):
    g = np.random.default_rng(1)
    x = (g.standard_normal(shape) * 4).astype(f32)
    layer = _layer('name: "prob" type: "VoxelWiseSoftmax" bottom: "x" top: "prob"', shape)
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    want = voxel_softmax_ref(x)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-7)
    # the fork's max index for items > 0 changes only the rounding
    np.testing.assert_allclose(y.detach().numpy(), voxel_softmax_ref(x, fork_index=True), rtol=1e-5, atol=1e-6)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(layer(torch.tensor(x64)).numpy(), voxel_softmax_ref(x64), rtol=1e-13, atol=1e-15)
    dy = g.standard_normal(shape).astype(f32)
    y.backward(torch.tensor(dy))
    np.testing.assert_allclose(xt.grad.numpy(), voxel_softmax_backward_ref(y.detach().numpy(), dy), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(4,), (1, 2, 3, 4, 5, 6)])
def test_voxel_wise_softmax_refuses_other_axes(shape):
    with pytest.raises(LayerSetupError, match=r"layer 'prob' \(VoxelWiseSoftmax\): the bottom must have 2 to 5 axes"):
        _layer('name: "prob" type: "VoxelWiseSoftmax" bottom: "x" top: "prob"', shape)


# -- VoxelWiseSoftmaxWithLoss ---------------------------------------------------------------------------------
def voxel_loss_ref(x, truth):
    """Forward_cpu and Backward_cpu: (loss, bottom diff)."""
    N, C, L, H, W = x.shape
    t = x.dtype.type
    prob = voxel_softmax_ref(x)
    loss, diff = t(0), prob.copy()
    for i in range(N):
        for l in range(L):
            for h in range(H):
                for w in range(W):
                    label = int(truth[i, 0, l, h, w])  # static_cast<int>: toward zero
                    if label < C:
                        loss += -np.log(max(prob[i, label, l, h, w], t(FLT_MIN)))
                        diff[i, label, l, h, w] -= 1
    n = N * L * H * W
    return loss / t(n), diff * (t(1) / t(n))


@pytest.mark.parametrize("dtype", [f32, np.float64])
def test_voxel_wise_softmax_with_loss_matches_the_fork(dtype):
    g = np.random.default_rng(2)
    x = (g.standard_normal((2, 3, 2, 3, 4)) * 3).astype(dtype)
    truth = g.integers(0, 5, (2, 2, 2, 3, 4)).astype(dtype)  # 3, 4: skipped; channel 1 is never read
    truth[0, 0, 0, 0, :3] = (2.9, 0.5, -0.7)  # truncated: 2, 0, 0
    x[1, :, 1, 2, 3] = (-200, 0, 0)  # a probability below FLT_MIN: clamped in the loss, not in the diff
    truth[1, 0, 1, 2, 3] = 0
    layer = _layer('name: "loss" type: "VoxelWiseSoftmaxWithLoss" bottom: "x" bottom: "truth" top: "loss"',
                   x.shape, truth.shape)
    assert layer.reshape([x.shape, truth.shape]) == [()] and layer.default_loss_weights() == [1.0]
    xt = torch.tensor(x, requires_grad=True)
    loss = layer(xt, torch.tensor(truth))
    want, diff = voxel_loss_ref(x, truth)
    tol = 1e-6 if dtype == f32 else 1e-11
    np.testing.assert_allclose(loss.item(), want, rtol=tol)
    loss.backward(torch.tensor(2.0, dtype=xt.dtype))  # a loss weight of 2 (the fork has none: 1)
    np.testing.assert_allclose(xt.grad.numpy(), 2 * diff, rtol=tol, atol=tol * 1e-2)


def test_voxel_wise_softmax_with_loss_diff_at_skipped_voxels_is_prob():
    """Where every label is skipped, the loss is 0 and the fork's diff is prob / n (not the gradient, 0)."""
    x = np.random.default_rng(3).standard_normal((1, 2, 1, 2, 2))
    layer = _layer('name: "loss" type: "VoxelWiseSoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss"', x.shape, x.shape)
    xt = torch.tensor(x, requires_grad=True)
    loss = layer(xt, torch.full((1, 2, 1, 2, 2), 7.0, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0
    np.testing.assert_allclose(xt.grad.numpy(), voxel_softmax_ref(x) / 4, rtol=1e-14)


@pytest.mark.parametrize("xs,ts,match", [
    ((2, 3, 2, 2, 2), (2, 1, 2, 2, 3), "one length, height and width; received"),
    ((2, 3, 2, 2, 2), (1, 1, 2, 2, 2), "same first dimension"),
    ((2, 3, 2, 2, 2, 1), (2, 1, 2, 2, 2), r"bottom 0 \(the scores\) must have 2 to 5 axes"),
])
def test_voxel_wise_softmax_with_loss_refuses_shapes(xs, ts, match):
    with pytest.raises(LayerSetupError, match=r"layer 'loss' \(VoxelWiseSoftmaxWithLoss\): .*" + match):
        _layer('name: "loss" type: "VoxelWiseSoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss"', xs, ts).reshape([xs, ts])


def test_voxel_wise_softmax_with_loss_refuses_a_negative_label():
    layer = _layer('name: "loss" type: "VoxelWiseSoftmaxWithLoss" bottom: "x" bottom: "t" top: "loss"',
                   (2, 3, 1, 2, 2), (2, 1, 1, 2, 2))
    t = torch.zeros(2, 1, 1, 2, 2)
    t[1, 0, 0, 1, 0] = -1.0
    with pytest.raises(LayerSetupError, match=r"\(VoxelWiseSoftmaxWithLoss\): truth \(bottom 1\) holds -1.0 at num 1, "
                                              r"voxel 2 of channel 0; expected a label >= 0"):
        layer(torch.zeros(2, 3, 1, 2, 2), t)


# -- VoxelCustomLoss ------------------------------------------------------------------------------------------
def voxel_custom_ref(x, y):
    t = x.dtype.type
    d = (x - y).reshape(-1).copy()
    loss = t(0)
    for i in range(d.size):
        if d[i] < t(-1):
            d[i] = t(-1)
        if d[i] > t(1):
            d[i] = t(1)
        loss += abs(d[i]) if abs(d[i]) > 1 else d[i] * d[i]
    return loss / t(d.size), (d * (t(1) / t(x.shape[0]))).reshape(x.shape)


@pytest.mark.parametrize("dtype", [f32, np.float64])
def test_voxel_custom_loss_matches_the_fork(dtype):
    g = np.random.default_rng(4)
    x = (g.standard_normal((3, 2, 2, 3, 2)) * 1.5).astype(dtype)
    y = (g.standard_normal((3, 2, 2, 3, 2)) * 1.5).astype(dtype)
    layer = _layer('name: "loss" type: "VoxelCustomLoss" bottom: "x" bottom: "y" top: "loss"', x.shape, y.shape)
    xt, yt = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    loss = layer(xt, yt)
    want, diff = voxel_custom_ref(x, y)
    assert abs(x - y).max() > 1  # some differences clipped
    tol = 1e-6 if dtype == f32 else 1e-14
    np.testing.assert_allclose(loss.item(), want, rtol=tol)
    loss.backward()
    np.testing.assert_allclose(xt.grad.numpy(), diff, rtol=tol, atol=tol * 1e-2)
    assert yt.grad is None  # the fork writes no diff to the truth
    # not the gradient of the loss: 2 d / count inside the clip
    grad = torch.autograd.grad(((xt - yt).clamp(-1, 1) ** 2).sum() / x.size, xt)[0]
    assert not np.allclose(grad.numpy(), diff)


def test_voxel_custom_loss_refuses_other_shapes():
    with pytest.raises(LayerSetupError, match=r"\(VoxelCustomLoss\): the prediction and the truth must have one "
                                              r"channels, length, height and width .*received \(2, 3, 2, 2, 2\) and \(2, 3, 2, 2, 1\)"):
        _layer('name: "loss" type: "VoxelCustomLoss" bottom: "x" bottom: "y" top: "loss"', (2, 3, 2, 2, 2), (2, 3, 2, 2, 1))


# -- VolumeData: the prefetch loop, with this layer's draws ---------------------------------------------------
C, LEN, HH, WW = 2, 3, 6, 7


def _volumes(path, backend, n=5, floats=False, seed=5, dims=(C, LEN, HH, WW)):
    g = np.random.default_rng(seed)
    records = []
    with DBWriter(str(path), backend) as db:
        for i in range(n):
            d = caffe_pb2.VolumeDatum(channels=dims[0], length=dims[1], height=dims[2], width=dims[3], label=10 + i)
            if floats:
                a = g.standard_normal(dims).astype(f32)
                d.float_data.extend(a.reshape(-1).tolist())
            else:
                a = g.integers(0, 256, dims, dtype=np.uint8)
                d.data = a.tobytes()
            db.put(f"{i:08d}", d.SerializeToString())
            records.append((a, 10 + i))
    return records


def _mean(path, dims=(1, C, LEN, HH, WW)):
    m = np.random.default_rng(6).uniform(80, 140, dims).astype(f32)
    path.write_bytes(c3d_blob(m))
    return m[0]


def volume_item(datum, mean, scale, crop=0, h_off=0, w_off=0, mirror=False):
    """The prefetch loop's copy of one record: (datum - mean[data_index]) * scale, the crop mirrored."""
    c, l, h, w = datum.shape
    if not crop:
        return (datum.astype(f32) - mean) * f32(scale)
    out = np.empty((c, l, crop, crop), f32)
    for hh in range(crop):
        for ww in range(crop):
            v = (datum[:, :, hh + h_off, ww + w_off].astype(f32) - mean[:, :, hh + h_off, ww + w_off]) * f32(scale)
            out[:, :, hh, crop - 1 - ww if mirror else ww] = v
    return out


def _vd(source, extra="", tops='top: "data" top: "label"', phase=TEST):
    return _layer(f'name: "v" type: "VolumeData" {tops} data_param {{ source: "{source}" {extra} }}', phase=phase)


@pytest.mark.parametrize("backend", ["leveldb", "lmdb"])
def test_volume_data_train_crops_and_mirrors_as_the_fork(tmp_path, backend):
    records = _volumes(tmp_path / "db", backend)
    mean = _mean(tmp_path / "mean.binaryproto")
    layer = _vd(tmp_path / "db", f'batch_size: 2 crop_size: 4 mirror: true scale: 0.25 mean_file: "{tmp_path}/mean.binaryproto"',
                phase=TRAIN)
    assert layer.reshape([]) == [(2, C, LEN, 4, 4), (2, 1, 1, 1, 1)] and layer.backend == backend
    mirrored = set()
    for k in range(4):  # 8 records of 5: the database wraps
        data, label = layer()
        g = np.random.default_rng([layer.seed, k])
        for i in range(2):
            datum, lab = records[(2 * k + i) % 5]
            h0, w0 = int(g.integers(0, HH - 4)), int(g.integers(0, WW - 4))  # the fork's rand % (H - crop)
            m = bool(g.integers(0, 2))
            mirrored.add(m)
            np.testing.assert_array_equal(data[i].numpy(), volume_item(datum, mean, 0.25, 4, h0, w0, m))
            assert label[i].item() == lab
    assert mirrored == {False, True}
    layer.close()


def test_volume_data_test_phase_centre_crop_and_float_data(tmp_path):
    records = _volumes(tmp_path / "db", "leveldb", n=3)
    mean = _mean(tmp_path / "mean.binaryproto")
    layer = _vd(tmp_path / "db", f'batch_size: 2 crop_size: 3 mean_file: "{tmp_path}/mean.binaryproto"', tops='top: "data"')
    (data,) = layer()
    for i in range(2):
        np.testing.assert_array_equal(data[i].numpy(), volume_item(records[i][0], mean, 1.0, 3, 1, 2, False))
    floats = _volumes(tmp_path / "fdb", "leveldb", n=3, floats=True)
    layer = _vd(tmp_path / "fdb", 'batch_size: 3 scale: 3')  # no mean: the fork's zeros
    data, label = layer()
    assert tuple(data.shape) == (3, C, LEN, HH, WW) and tuple(label.shape) == (3, 1, 1, 1, 1)
    for i in range(3):
        np.testing.assert_array_equal(data[i].numpy(), volume_item(floats[i][0], np.zeros(1, f32), 3.0))
        assert label[i].item() == floats[i][1]


def test_volume_data_rand_skip_and_resume(tmp_path):
    from neocaffe import rng

    records = _volumes(tmp_path / "db", "lmdb", n=7)
    rng.set_seed(3)
    layer = _vd(tmp_path / "db", 'batch_size: 3 rand_skip: 6')
    assert 0 < layer.skip < 6
    _, label = layer()
    assert label.reshape(-1).tolist() == [records[(layer.skip + i) % 7][1] for i in range(3)]
    state = layer.resume_state()
    _, want = layer()
    other = _vd(tmp_path / "db", 'batch_size: 3')
    other.load_resume_state(state)
    assert torch.equal(other()[1], want)


@pytest.mark.parametrize("extra,phase,match", [
    ("batch_size: 2 mirror: true", TRAIN, "requires mirror and crop_size"),
    ("batch_size: 2 crop_size: 3 mirror: true", TEST, "mirror in the TEST phase"),
    ("batch_size: 2 crop_size: 6", TEST, r"crop_size 6 must be smaller than the records' 6x7"),
    ("batch_size: 0", TEST, "batch_size must be positive"),
    ('batch_size: 2 mean_file: "MEAN"', TEST, r"holds a blob of shape \(1, 2, 3, 6, 6\); the records need \(1, 2, 3, 6, 7\)"),
])
def test_volume_data_refuses(tmp_path, extra, phase, match):
    _volumes(tmp_path / "db", "leveldb", n=2)
    _mean(tmp_path / "m.binaryproto", (1, C, LEN, HH, 6))
    with pytest.raises(LayerSetupError, match=r"layer 'v' \(VolumeData\): .*" + match):
        _vd(tmp_path / "db", extra.replace("MEAN", f"{tmp_path}/m.binaryproto"), phase=phase)


def test_volume_data_refuses_transform_param_and_foreign_records(tmp_path):
    from neocaffe.data.datum import DatumError, array_to_datum

    _volumes(tmp_path / "db", "leveldb", n=2)
    with pytest.raises(LayerSetupError, match="transform_param is not read"):
        _layer(f'name: "v" type: "VolumeData" top: "data" data_param {{ source: "{tmp_path}/db" batch_size: 1 }} '
               'transform_param { scale: 2 }')
    with DBWriter(str(tmp_path / "datums"), "lmdb") as db:
        db.put("0", array_to_datum(np.zeros((3, 4, 5), np.uint8), 1).SerializeToString())
    with pytest.raises(LayerSetupError, match=r"record '0': a VolumeDatum of channels x length x height x width "
                                              r"3x4x5x0; expected positive dims \(is it a Datum\?\)"):
        _vd(tmp_path / "datums", "batch_size: 1")
    # a later record of another size, a float record under a crop
    with DBWriter(str(tmp_path / "mixed"), "leveldb") as db:
        for i, dims in enumerate([(C, LEN, HH, WW), (C, LEN, HH, WW + 1)]):
            d = caffe_pb2.VolumeDatum(channels=dims[0], length=dims[1], height=dims[2], width=dims[3])
            d.data = bytes(math.prod(dims))
            db.put(f"{i}", d.SerializeToString())
    with pytest.raises(DatumError, match=r"layer 'v' \(VolumeData\).*record '1': a VolumeDatum of 2x3x6x8, the first "
                                         r"record's 2x3x6x7"):
        _vd(tmp_path / "mixed", "batch_size: 2")()
    _volumes(tmp_path / "fdb", "leveldb", n=2, floats=True)
    with pytest.raises(DatumError, match="holds float_data; crop_size needs uint8 data"):
        _vd(tmp_path / "fdb", "batch_size: 1 crop_size: 2")()


# -- a V1 net of the fork's V2V types -------------------------------------------------------------------------
V2V_V1 = """
name: "v2v_tail"
input: "truth" input_shape { dim: 2 dim: 1 dim: 6 dim: 8 dim: 8 }
input: "target" input_shape { dim: 2 dim: 3 dim: 6 dim: 8 dim: 8 }
layers { name: "data" type: VOLUME_DATA top: "data" top: "label"
  data_param { source: "SOURCE" batch_size: 2 crop_size: 4 mirror: true scale: 0.01 show_data: 0 } }
layers { name: "conv5a" type: CONVOLUTION3D bottom: "data" top: "conv5a" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 4 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layers { name: "relu5a" type: RELU bottom: "conv5a" top: "conv5a" }
layers { name: "deconv5b" type: DECONVOLUTION3D bottom: "conv5a" top: "deconv5b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 4 kernel_depth: 4 pad: 1 temporal_pad: 1 stride: 2
    temporal_stride: 2 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu5b-de" type: RELU bottom: "deconv5b" top: "deconv5b" }
layers { name: "predict" type: CONVOLUTION3D bottom: "deconv5b" top: "predict"
  convolution_param { num_output: 3 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 1 } } }
layers { name: "loss" type: VOXEL_SOFTMAX_LOSS bottom: "predict" bottom: "truth" }
layers { name: "prob" type: VOXEL_SOFTMAX bottom: "predict" top: "prob" }
layers { name: "flow_loss" type: VOXEL_CUSTOM_LOSS bottom: "prob" bottom: "target" }
"""


def test_v1_v2v_net_builds_and_trains(tmp_path, monkeypatch):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source
    from tests.io import c3d_files

    _volumes(tmp_path / "db", "leveldb", n=3)
    path = tmp_path / "net.prototxt"
    path.write_text(V2V_V1.replace("SOURCE", str(tmp_path / "db")))
    param, source = read_net_with_source(str(path))
    net = Net(param, TRAIN, source=source)
    try:
        types = {name: net.layer(name).type_name for name in net.layer_names}
        assert {types[n] for n in ("data", "deconv5b", "loss", "prob", "flow_loss")} == {
            "VolumeData", "Deconvolution3D", "VoxelWiseSoftmaxWithLoss", "VoxelWiseSoftmax", "VoxelCustomLoss"}
        assert [tuple(p.shape) for p in net.layer("deconv5b").blobs] == [(4, 4, 4, 4, 4), (4,)]
        # the fork's snapshot of the layer (V1 type 34 with 5-D blobs; the bias 1x1x1x1xN) loads into it
        monkeypatch.setitem(c3d_files.C3D_TYPES, "DECONVOLUTION3D", 34)
        w = np.random.default_rng(9).standard_normal((4, 4, 4, 4, 4)).astype(f32) * f32(0.1)
        b = np.arange(4, dtype=f32).reshape(1, 1, 1, 1, 4)
        (tmp_path / "v2v.caffemodel").write_bytes(c3d_files.c3d_caffemodel([("deconv5b", "DECONVOLUTION3D", [w, b])]))
        net.copy_from(str(tmp_path / "v2v.caffemodel"))
        np.testing.assert_array_equal(net.layer("deconv5b").blobs[0].detach().numpy(), w)
        np.testing.assert_array_equal(net.layer("deconv5b").blobs[1].detach().numpy(), b.reshape(4))
        g = np.random.default_rng(8)
        truth = torch.tensor(g.integers(0, 4, (2, 1, 6, 8, 8)).astype(f32))  # 3: skipped
        target = torch.tensor(g.uniform(0, 1, (2, 3, 6, 8, 8)).astype(f32))
        loss = net.forward({"truth": truth, "target": target})
        assert tuple(net.blob("data").shape) == (2, 2, 3, 4, 4)
        assert tuple(net.blob("deconv5b").shape) == (2, 4, 6, 8, 8) and tuple(net.blob("prob").shape) == (2, 3, 6, 8, 8)
        predict = net.blob("predict").numpy()
        want_loss, want_diff = voxel_loss_ref(predict, truth.numpy())
        prob = voxel_softmax_ref(predict)
        np.testing.assert_allclose(net.blob("prob").numpy(), prob, rtol=1e-5, atol=1e-7)
        flow_loss, flow_diff = voxel_custom_ref(prob, target.numpy())
        np.testing.assert_allclose(loss.item(), want_loss + flow_loss, rtol=1e-5)
        net.backward()
        # predict's diff: the loss's own plus the softmax's backward of the custom loss's diff
        np.testing.assert_allclose(net.blob_diff("predict").numpy(),
                                   want_diff + voxel_softmax_backward_ref(prob, flow_diff), rtol=1e-4, atol=1e-8)
        assert float(net.layer("deconv5b").blobs[0].grad.abs().sum()) > 0
    finally:
        net.close()
