"""NVCaffe's layer fields that neocaffe applies (NVIDIA/caffe caffe-0.17 @ 87a25543a68e0e5e753923ac4a8b8be6392a41f7),
against the loop-by-loop ports in nvcaffe_fields_reference.py: ELU's ``lambda`` (elu_layer.cpp/.cu), SoftmaxWithLoss's
``label_smoothing`` (softmax_loss_layer.cu's backward); and the two fields NVCaffe declares but never reads
(``torch_pooling``, ``ignore_difficult_gt``), which change nothing there and here."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.graph.nvcaffe import layer_notes, unread_notes
from neocaffe.layers.base import TEST, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import nvcaffe_fields_reference as ref

SHAPE = (2, 3, 4, 5)


def _layer(text: str, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, TEST)


def _x(seed, shape=SHAPE, dtype=np.float32, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _elu(alpha, lam=None):
    extra = "" if lam is None else f" lambda: {lam}"
    return _layer(f'name: "e" type: "ELU" bottom: "x" top: "y" elu_param {{ alpha: {alpha}{extra} }}', [SHAPE])


def _fwd_bwd(layer, x, dy):
    t = torch.from_numpy(x).requires_grad_(True)
    y = layer(t)
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), t.grad.numpy()


# -- ELU lambda ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elu_lambda_matches_nvcaffe_loops(dtype):
    alpha, lam = float(np.float32(1.6732632)), float(np.float32(1.0507010))  # SELU's constants, as floats
    x, dy = _x(0, dtype=dtype), _x(1, dtype=dtype)
    y, dx = _fwd_bwd(_elu(1.6732632, 1.0507010), x, dy)
    want_y = ref.elu_forward(x, alpha, lam)
    # float32: exp(x) - 1 near x = 0 carries the exp's last-bit difference between libms (NumPy's, torch's)
    atol = 4e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(y, want_y, rtol=2e-7 if dtype == np.float32 else 1e-15, atol=atol)
    # the backward reads the top blob: fed NVCaffe's own top, it must agree to rounding
    np.testing.assert_allclose(dx, ref.elu_backward(x, y, dy, alpha, lam),
                               rtol=4e-7 if dtype == np.float32 else 1e-15, atol=atol * 1e-2)


def test_elu_lambda_backward_is_nvcaffes_not_the_derivative():
    """NVCaffe's backward multiplies (alpha + scaled top) by lambda again: for x <= 0 it is not the derivative of
    its forward. A float64 finite difference of the forward agrees where x > 0, disagrees by the factor
    ``(alpha + lam*(y/lam))/(alpha + y/lam)`` where x <= 0; with lambda 1 it agrees everywhere."""
    alpha, lam = 1.5, 2.0
    x = _x(2, dtype=np.float64)
    x[np.abs(x) < 1e-3] = 0.5  # off the kink
    h = 1e-6
    for la, layer in ((lam, _elu(alpha, lam)), (1.0, _elu(alpha))):
        num = (ref.elu_forward(x + h, alpha, la) - ref.elu_forward(x - h, alpha, la)) / (2 * h)
        _, dx = _fwd_bwd(layer, x, np.ones_like(x))
        pos = x > 0
        np.testing.assert_allclose(dx[pos], num[pos], rtol=1e-7)
        if la == 1.0:
            np.testing.assert_allclose(dx[~pos], num[~pos], rtol=1e-7, atol=1e-9)
        else:
            y = ref.elu_forward(x, alpha, la)
            np.testing.assert_allclose(dx[~pos], la * (alpha + y[~pos]), rtol=1e-14)
            assert np.all(np.abs(dx[~pos] - num[~pos]) > 1e-3 * np.abs(num[~pos]))


def test_elu_lambda_default_is_bit_identical():
    x, dy = _x(3), _x(4)
    y0, d0 = _fwd_bwd(_elu(0.7), x, dy)
    y1, d1 = _fwd_bwd(_elu(0.7, 1), x, dy)
    assert np.array_equal(y0, y1) and np.array_equal(d0, d1)
    tx = torch.from_numpy(x)  # the BVLC formula, as before NVCaffe's field
    a = float(np.float32(0.7))
    assert np.array_equal(y0, (tx.clamp(min=0) + a * (torch.exp(tx.clamp(max=0)) - 1)).numpy())


def test_elu_lambda_in_place_in_a_net():
    text = ('force_backward: true layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 '
            'dim: 4 dim: 5 } } } layer { name: "e" type: "ELU" bottom: "x" top: "x" elu_param { alpha: 0.5 '
            'lambda: 3 } }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    x, dy = _x(5), _x(6)
    net.set_blob("x", torch.from_numpy(x))
    net.forward()
    y = net.blob_data["x"].detach().numpy().copy()
    net.backward({"x": torch.from_numpy(dy)})
    want = ref.elu_forward(x, 0.5, 3.0)
    np.testing.assert_allclose(y, want, rtol=2e-7, atol=1e-6)
    want = y  # the backward reads the top blob
    # in place, Caffe's backward reads the blob (the top) as bottom: top > 0 iff x > 0 for lambda > 0
    np.testing.assert_allclose(net.blob_diff("x").detach().numpy(), ref.elu_backward(want, want, dy, 0.5, 3.0),
                               rtol=4e-7)


# -- SoftmaxWithLoss label_smoothing ------------------------------------------------------------------------------
def _loss_layer(shape, extra):
    text = f'name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" {extra}'
    lab = (shape[0],) + tuple(shape[2:])
    return _layer(text, [shape, lab])


def _labels(seed, shape, ignore=None):
    lab = np.random.default_rng(seed).integers(0, shape[1], (shape[0],) + tuple(shape[2:])).astype(np.float64)
    if ignore is not None:
        lab.reshape(-1)[[0, 3]] = ignore
    return lab


def _loss_fwd_bwd(layer, x, lab, top_diff=1.0):
    t = torch.from_numpy(x).requires_grad_(True)
    loss = layer(t, torch.from_numpy(lab.astype(x.dtype)))
    loss.backward(torch.tensor(top_diff, dtype=t.dtype))
    return float(loss.detach()), t.grad.numpy()


CASES = [((6, 5), "", None, ref.VALID, 0.1),
         ((2, 4, 3, 2), "ignore_label: 255", 255, ref.VALID, 0.2),
         ((2, 4, 3, 2), "ignore_label: 255 normalization: FULL", 255, ref.FULL, 0.1),
         ((3, 4, 5), "ignore_label: 1 normalization: BATCH_SIZE", 1, ref.BATCH_SIZE, 0.05),
         ((2, 3, 2, 2), "normalization: NONE", None, ref.NONE, 0.3),
         ((4, 6), "ignore_label: 2", 2, ref.VALID, -0.1)]  # eps < 0: no added constant, 1 - eps subtracted


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,extra,ignore,mode,eps", CASES)
def test_label_smoothing_matches_nvcaffe_loops(shape, extra, ignore, mode, eps, dtype):
    x = _x(10, shape, dtype, 2.0)
    lab = _labels(11, shape, 255 if ignore == 255 else None)
    layer = _loss_layer(shape, f"loss_param {{ {extra} label_smoothing: {eps} }}")
    loss, dx = _loss_fwd_bwd(layer, x, lab, 0.7)
    x3 = x.reshape(shape[0], shape[1], -1)
    want_loss, want_dx = ref.softmax_loss_smoothed(x3, lab.reshape(shape[0], -1), float(np.float32(eps)), ignore,
                                                   mode, 0.7)
    tol = 3e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(loss, want_loss, rtol=tol)
    np.testing.assert_allclose(dx, want_dx.reshape(shape), rtol=tol, atol=tol * 1e-2)
    # the loss is NVCaffe's unsmoothed one, bit for bit the plain layer's
    plain_loss, plain_dx = _loss_fwd_bwd(_loss_layer(shape, f"loss_param {{ {extra} }}"), x, lab, 0.7)
    assert loss == plain_loss and not np.allclose(dx, plain_dx)


def test_label_smoothing_float64_gradient_of_its_objective():
    """NVCaffe's smoothed diff is the gradient of ``sum_valid (logsumexp(x) - t.x) / normalizer`` with
    ``t = (1-eps) onehot + eps/(dim-1)``, dim = C*inner (not C): checked by float64 central differences."""
    shape, eps, ignore = (2, 3, 2, 2), 0.25, 255
    x = _x(20, shape, np.float64, 1.0)
    lab = _labels(21, shape, ignore)
    _, dx = _loss_fwd_bwd(_loss_layer(shape, f"loss_param {{ ignore_label: 255 label_smoothing: {eps} }}"), x, lab)
    outer, c = shape[:2]
    inner = x.size // (outer * c)
    lab2 = lab.reshape(outer, inner)
    valid = lab2 != ignore
    dim = float(np.float32(c * inner - 1))
    e = float(np.float32(eps))

    def objective(z):
        z3 = z.reshape(outer, c, inner)
        m = z3.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(z3 - m).sum(axis=1, keepdims=True)))[:, 0]
        t = np.full(z3.shape, e / dim)
        for i in range(outer):
            for j in range(inner):
                if valid[i, j]:
                    t[i, int(lab2[i, j]), j] += 1 - e
        return float(((lse - (t * z3).sum(axis=1)) * valid).sum() / max(1, valid.sum()))

    num = np.zeros_like(x).ravel()
    h = 1e-6
    for k in range(x.size):
        a, b = x.ravel().copy(), x.ravel().copy()
        a[k] += h
        b[k] -= h
        num[k] = (objective(a) - objective(b)) / (2 * h)
    np.testing.assert_allclose(dx.ravel(), num, rtol=1e-6, atol=1e-9)
    assert np.all(dx.reshape(outer, c, inner)[:, :, ~valid[0]][0] == 0) if (~valid[0]).any() else True


def test_label_smoothing_default_and_zero_are_bit_identical():
    shape = (2, 4, 3, 2)
    x, lab = _x(30, shape), _labels(31, shape, 255)
    unset = _loss_fwd_bwd(_loss_layer(shape, "loss_param { ignore_label: 255 }"), x, lab)
    zero = _loss_fwd_bwd(_loss_layer(shape, "loss_param { ignore_label: 255 label_smoothing: 0 }"), x, lab)
    assert unset[0] == zero[0] and np.array_equal(unset[1], zero[1])


def test_label_smoothing_in_a_net_and_refused_where_undefined():
    text = ('force_backward: true layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 4 '
            'dim: 5 } shape { dim: 4 } } } layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" '
            'top: "loss" loss_weight: 2 loss_param { label_smoothing: 0.1 } }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    x, lab = _x(40, (4, 5)), np.array([0, 4, 2, 1], np.float32)
    net.set_blob("x", torch.from_numpy(x))
    net.set_blob("label", torch.from_numpy(lab))
    net.forward()
    net.backward()
    _, want = ref.softmax_loss_smoothed(x[:, :, None], lab[:, None], float(np.float32(0.1)), None, ref.VALID, 2.0)
    np.testing.assert_allclose(net.blob_diff("x").detach().numpy(), want[:, :, 0], rtol=3e-6, atol=1e-8)
    with pytest.raises(LayerSetupError, match="label_smoothing"):
        _layer('name: "l" type: "SoftmaxWithLossOHEM" bottom: "x" bottom: "label" top: "loss" '
               'loss_param { label_smoothing: 0.1 }', [(4, 5), (4,)])
    with pytest.raises(LayerSetupError, match="label_smoothing"):
        _layer('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
               'softmax_param { normalize_type: "L2" } loss_param { label_smoothing: 0.1 }', [(4, 5), (4,)])


# -- ImageData short_side -----------------------------------------------------------------------------------------
def _short_side_ref(img: np.ndarray, short_side: int) -> tuple[int, int]:
    """util/io.cpp ReadImageToCVMat's sizes (C++ int division of positive ints)."""
    rows, cols = img.shape[:2]
    if rows > cols:
        return rows * short_side // cols, short_side
    return short_side, cols * short_side // rows


@pytest.mark.parametrize("hw,short", [((7, 10), 4), ((10, 7), 4), ((9, 9), 5), ((5, 13), 8)])
def test_image_data_short_side(tmp_path, hw, short):
    import cv2

    img = np.random.default_rng(hw[0] * 31 + hw[1]).integers(0, 256, hw + (3,), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "list.txt").write_text("a.png 3\n")
    h, w = _short_side_ref(img, short)
    assert min(h, w) == short
    text = (f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{tmp_path}/list.txt" '
            f'root_folder: "{tmp_path}{os.sep}" batch_size: 1 short_side: {short} new_height: 3 new_width: 3 }}')
    layer = _layer(text, [])
    assert layer.reshape([])[0] == (1, 3, h, w)  # short_side ahead of new_height/new_width
    data, label = layer()
    want = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)[None].astype(np.float32)
    assert np.array_equal(data.numpy(), want) and float(label[0]) == 3


# -- fields NVCaffe declares but never reads ----------------------------------------------------------------------
def test_torch_pooling_changes_nothing_as_in_nvcaffe(caplog):
    """NVCaffe's pooling_layer.cpp rounds up whatever torch_pooling says: 8x8, kernel 3, stride 2 -> 4x4 (ceil),
    not 3x3 (floor, the proto comment's promise); the values are the plain layer's."""
    base = 'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 3 stride: 2 %s }'
    x = torch.from_numpy(_x(50, (1, 2, 8, 8)))
    plain, torchp = _layer(base % "", [(1, 2, 8, 8)]), _layer(base % "torch_pooling: true", [(1, 2, 8, 8)])
    assert torchp.reshape([(1, 2, 8, 8)]) == [(1, 2, 4, 4)] == plain.reshape([(1, 2, 8, 8)])
    assert torch.equal(torchp(x), plain(x))
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } } '
            'layer { ' + base % "torch_pooling: true" + ' }')
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    assert layer_notes(param) == [] and unread_notes(param) == ["layer 'p': pooling_param.torch_pooling = True"]
    with caplog.at_level(logging.WARNING, logger="neocaffe.graph"):
        net = Net(param, TEST)
    net.set_blob("x", x)
    net.forward()
    assert torch.equal(net.blob_data["y"], plain(x))
    msgs = [r.getMessage() for r in caplog.records if "torch_pooling" in r.getMessage()]
    assert len(msgs) == 1 and "read by none of its code" in msgs[0] and "parsed but not applied" not in msgs[0]


def test_ignore_difficult_gt_is_only_noted():
    param = text_format.Parse('layer { name: "mb" type: "MultiBoxLoss" multibox_loss_param { num_classes: 2 '
                              'ignore_difficult_gt: true } }', caffe_pb2.NetParameter())
    assert layer_notes(param) == []
    assert unread_notes(param) == ["layer 'mb': multibox_loss_param.ignore_difficult_gt = True"]


def test_elu_lambda_exports_to_onnx():
    """The ONNX Elu has no scale: the export multiplies by NVCaffe's lambda."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import parse_text
    from neocaffe.proto import caffe_pb2 as pb
    from tests.export.helpers import onnx_errors

    text = ('name: "selu" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } } '
            'layer { name: "e" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 1.6733 lambda: 1.0507 } }')
    net = Net(parse_text(text, pb.NetParameter()), 1)
    x = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32) * 2
    assert max(onnx_errors(net, {"x": x}).values()) < 1e-6
