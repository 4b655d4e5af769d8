"""PointwiseSpatialAttention (hszhao/PSANet @ ff91e4f) against NumPy loop ports of the fork's CPU code
(``tests/layers/psanet_reference.py``): buffer placement, Caffe's Softmax, the GEMMs and the diffs, both modes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe.graph.errors import NetError
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import psanet_reference as ref

HEAD_NET = Path(__file__).parent / "data" / "psanet" / "psanet_ade20k_head.prototxt"


def _text(kind, softmax, mask, factor, axis=None):
    f = f"psa_type: {kind} is_softmax: {str(softmax).lower()}"
    if mask is not None:
        f += f" attention_mask_height: {mask[0]} attention_mask_width: {mask[1]}"
    if factor is not None:
        f += f" normalization_factor: {factor}"
    extra = f" softmax_param {{ axis: {axis} }}" if axis is not None else ""
    return f"pointwise_spatial_attention_param {{ {f} }}{extra}"


def _layer(fields, shapes, name="psa"):
    lp = text_format.Parse(f'name: "{name}" type: "PointwiseSpatialAttention" bottom: "x" bottom: "mask" top: "y" '
                           f'{fields}', caffe_pb2.LayerParameter())
    return get_layer_class("PointwiseSpatialAttention")(lp, shapes)


def _run(layer, x, mask, td):
    xt, mt = torch.tensor(x, requires_grad=True), torch.tensor(mask, requires_grad=True)
    y = layer(xt, mt)
    y.backward(torch.tensor(td))
    return y.detach().numpy(), xt.grad.numpy(), mt.grad.numpy()


CASES = [  # psa_type, is_softmax, mask (h, w) or None, normalization_factor or None, x shape, softmax axis
    ("COLLECT", False, None, None, (2, 3, 3, 4), None),
    ("DISTRIBUTE", False, None, None, (2, 3, 4, 3), None),
    ("COLLECT", True, None, 1.0, (2, 3, 4, 4), None),  # the released nets' setting
    ("DISTRIBUTE", True, None, 1.0, (2, 2, 3, 5), None),
    ("COLLECT", True, (3, 5), 2.5, (2, 2, 4, 5), None),  # a mask smaller than the feature's reach
    ("DISTRIBUTE", True, (3, 3), None, (1, 2, 5, 4), None),
    ("DISTRIBUTE", False, (9, 7), 0.3, (1, 3, 3, 4), None),  # a mask reaching past the feature
    ("COLLECT", True, (5, 5), None, (1, 2, 3, 4), 2),  # the internal Softmax reads softmax_param.axis
    ("DISTRIBUTE", True, None, None, (2, 2, 1, 5), -1),
]


@pytest.mark.parametrize("kind,softmax,mask,factor,shape,axis", CASES)
def test_forward_and_diffs_match_the_fork_loops(kind, softmax, mask, factor, shape, axis):
    r = np.random.default_rng(sum(shape) + len(kind))
    mh, mw = mask if mask is not None else (2 * shape[2] - 1, 2 * shape[3] - 1)
    x = r.standard_normal(shape)
    m = 2 * r.standard_normal((shape[0], mh * mw) + shape[2:])
    td = r.standard_normal(shape)
    layer = _layer(_text(kind, softmax, mask, factor, axis), [x.shape, m.shape])
    assert layer.reshape([x.shape, m.shape]) == [x.shape]
    top, dx, dm = _run(layer, x, m, td)
    p = {"mask": mask, "factor": factor, "softmax": softmax, "distribute": kind == "DISTRIBUTE",
         "axis": 1 if axis is None else axis % 4}
    want_top, _ = ref.forward(x, m, p)
    want_dx, want_dm = ref.backward(x, m, td, p)
    np.testing.assert_allclose(top, want_top, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dm, want_dm, rtol=1e-10, atol=1e-12)
    # float32, as the fork's nets run
    t32, dx32, dm32 = _run(layer, x.astype(np.float32), m.astype(np.float32), td.astype(np.float32))
    w32, _ = ref.forward(x.astype(np.float32), m.astype(np.float32), p)
    np.testing.assert_allclose(t32, w32, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dm32, want_dm, rtol=1e-4, atol=1e-5)


def test_mask_entries_without_a_target_get_no_diff():
    """A 3 x 3 feature with the default 5 x 5 mask: at the corner (0, 0) only the mask's lower-right 3 x 3
    points land inside the feature; the rest of that position's mask gets diff 0, as the fork's caffe_set."""
    r = np.random.default_rng(7)
    x, m = r.standard_normal((1, 2, 3, 3)), r.standard_normal((1, 25, 3, 3))
    for kind in ("COLLECT", "DISTRIBUTE"):
        _, _, dm = _run(_layer(_text(kind, True, None, None), [x.shape, m.shape]), x, m, r.standard_normal(x.shape))
        corner = dm[0, :, 0, 0].reshape(5, 5)
        assert not corner[:2].any() and not corner[:, :2].any()
        assert np.all(corner[2:, 2:] != 0)


def test_closed_forms():
    r = np.random.default_rng(8)
    x = r.standard_normal((2, 3, 3, 4))
    # is_softmax with a zero mask: every buffer column, the zeros the mask cannot reach included, is
    # uniform 1 / (H*W): each position collects the mean of the feature
    for kind in ("COLLECT", "DISTRIBUTE"):
        layer = _layer(_text(kind, True, None, 1.0), [x.shape, (2, 35, 3, 4)])
        y = layer(torch.tensor(x), torch.zeros(2, 35, 3, 4, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(y, np.broadcast_to(x.mean((2, 3), keepdims=True), x.shape), rtol=1e-12)
    # no softmax, a mask of ones reaching everywhere, the default factor (mask_h * mask_w = 5 * 7)
    y = _layer(_text("COLLECT", False, None, None), [x.shape, (2, 35, 3, 4)])(
        torch.tensor(x), torch.ones(2, 35, 3, 4, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(y, np.broadcast_to(x.sum((2, 3), keepdims=True) / 35, x.shape), rtol=1e-12)
    # COLLECT: the mask at j weighs the sources k of j; DISTRIBUTE: the targets j of k. One mask point set
    # ("take from / give to the point one row below"), no softmax, factor 1
    mask = np.zeros((1, 9, 3, 3))
    mask[0, 7] = 1.0  # (a, b) = (2, 1): one row below, same column
    xs = r.standard_normal((1, 1, 3, 3))
    col = _layer(_text("COLLECT", False, (3, 3), 1.0), [xs.shape, mask.shape])(torch.tensor(xs), torch.tensor(mask))
    dis = _layer(_text("DISTRIBUTE", False, (3, 3), 1.0), [xs.shape, mask.shape])(torch.tensor(xs), torch.tensor(mask))
    np.testing.assert_array_equal(col.numpy()[0, 0], np.vstack([xs[0, 0, 1:], np.zeros((1, 3))]))
    np.testing.assert_array_equal(dis.numpy()[0, 0], np.vstack([np.zeros((1, 3)), xs[0, 0, :2]]))


def test_gradient_check_float64():
    r = np.random.default_rng(9)
    for fields, xs, ms in ((_text("COLLECT", True, None, 1.0), (2, 2, 3, 3), (2, 25, 3, 3)),
                           (_text("DISTRIBUTE", True, (3, 5), 0.7), (1, 3, 4, 3), (1, 15, 4, 3)),
                           (_text("DISTRIBUTE", False, None, None), (1, 2, 2, 3), (1, 15, 2, 3))):
        layer = _layer(fields, [xs, ms])
        x = torch.tensor(r.standard_normal(xs), requires_grad=True)
        m = torch.tensor(r.standard_normal(ms), requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, m), eps=1e-6, atol=1e-7)


def test_a_later_shape_keeps_the_set_up_mask():
    """The fork fixes mask_h, mask_w at LayerSetUp (2 * 3 - 1 = 5 here) and reads them for later shapes."""
    r = np.random.default_rng(10)
    layer = _layer(_text("COLLECT", True, None, None), [(1, 2, 3, 3), (1, 25, 3, 3)])
    x, m, td = r.standard_normal((2, 2, 2, 4)), r.standard_normal((2, 25, 2, 4)), r.standard_normal((2, 2, 2, 4))
    assert layer.reshape([x.shape, m.shape]) == [x.shape]
    top, dx, dm = _run(layer, x, m, td)
    p = {"mask": (5, 5), "factor": None, "softmax": True, "distribute": False}
    np.testing.assert_allclose(top, ref.forward(x, m, p)[0], rtol=1e-10)
    for got, want in zip((dx, dm), ref.backward(x, m, td, p)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(LayerSetupError, match=r"3 x 3 at set-up = 5 \* 5 = 25.*received 49"):
        layer.reshape([(1, 2, 4, 4), (1, 49, 4, 4)])


@pytest.mark.parametrize("fields,shapes,match", [
    ("pointwise_spatial_attention_param { attention_mask_height: 3 }", [(1, 2, 3, 3), (1, 9, 3, 3)],
     "must both be set, or neither; received only attention_mask_height"),
    ("pointwise_spatial_attention_param { attention_mask_height: 4 attention_mask_width: 3 }",
     [(1, 2, 3, 3), (1, 12, 3, 3)], "attention_mask_height must be an odd number larger than 1; received 4"),
    ("pointwise_spatial_attention_param { attention_mask_height: 3 attention_mask_width: 1 }",
     [(1, 2, 3, 3), (1, 3, 3, 3)], "attention_mask_width must be an odd number larger than 1; received 1"),
    ("", [(1, 2, 3, 4), (1, 12, 3, 4)],
     r"\(2 \* height - 1\) \* \(2 \* width - 1\) of bottom 0's 3 x 4 at set-up = 5 \* 7 = 35.*received 12"),
    ("pointwise_spatial_attention_param { attention_mask_height: 3 attention_mask_width: 3 }",
     [(1, 2, 3, 3), (1, 25, 3, 3)], r"attention_mask_height \* attention_mask_width = 3 \* 3 = 9.*received 25"),
    ("pointwise_spatial_attention_param { normalization_factor: 0 }", [(1, 2, 2, 2), (1, 9, 2, 2)],
     "normalization_factor must be nonzero"),
    ("", [(1, 2, 2, 2), (2, 9, 2, 2)], "same number of images"),
    ("pointwise_spatial_attention_param { attention_mask_height: 3 attention_mask_width: 3 }",
     [(1, 2, 2, 2), (1, 9, 2, 3)], "same width"),
    ("softmax_param { axis: 4 } pointwise_spatial_attention_param { is_softmax: true }",
     [(1, 2, 2, 2), (1, 9, 2, 2)], "softmax_param.axis 4 out of range"),
    ("", [(1, 2, 2, 2, 2), (1, 9, 2, 2, 2)], "at most 4 axes"),
])
def test_errors_name_the_layer_and_what_was_received(fields, shapes, match):
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer(fields, shapes, name="bad").reshape(shapes)
    assert "'bad' (PointwiseSpatialAttention)" in str(e.value)


def test_the_fork_schema():
    p = caffe_pb2.PointwiseSpatialAttentionParameter()
    assert (p.is_softmax, p.psa_type) == (False, p.COLLECT)
    assert not p.HasField("normalization_factor") and not p.HasField("attention_mask_height")
    assert (p.COLLECT, p.DISTRIBUTE) == (0, 1)
    fields = {f.name: f.number for f in p.DESCRIPTOR.fields}
    assert fields == {"attention_mask_height": 1, "attention_mask_width": 2, "normalization_factor": 3,
                      "is_softmax": 4, "psa_type": 5}
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["pointwise_spatial_attention_param"].number == 1001
    # the fork's V1LayerParameter field (1001 there is upstream's V1 ``param``) has no V1 type: not carried
    assert "pointwise_spatial_attention_param" not in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name


def test_the_released_head_builds_and_runs_forward():
    net = caffe.Net(str(HEAD_NET), caffe.TEST)
    r = np.random.default_rng(11)
    for name in ("PSA_COLLECT_fc2", "PSA_DISTRIBUTE_fc2"):  # larger masks make the softmax matter
        net.params[name][0].data[...] *= 4
    net.blobs["data"].data[...] = r.standard_normal((1, 3, 33, 33))
    out = net.forward()
    assert out["conv6_zoom"].shape == (1, 5, 33, 33) and np.isfinite(out["conv6_zoom"]).all()
    assert net.blobs["PSA_COLLECT_fc2"].data.shape == (1, 289, 9, 9)
    assert net.blobs["global_feature"].data.shape == (1, 16, 9, 9)
    for kind in ("COLLECT", "DISTRIBUTE"):
        x = net.blobs[f"conv5_3_reduce_before_PSA_{kind}_shrink"].data.copy()
        m = net.blobs[f"PSA_{kind}_fc2"].data.copy()
        want, _ = ref.forward(x, m, {"mask": None, "factor": 1.0, "softmax": True, "distribute": kind == "DISTRIBUTE"})
        np.testing.assert_allclose(net.blobs[f"global_feature_{kind}"].data, want, rtol=1e-4, atol=1e-5)
        assert np.abs(want).max() > 0


def test_the_released_voc_layout_fails_the_forks_check(tmp_path):
    """hszhao/PSANet's VOC 2012 nets (since ff91e4f) feed the unshrunk feature to a mask sized for the shrunk
    one (here 17 * 17 channels at 17 x 17, as VOC's 59 * 59 at 59 x 59): the fork's LayerSetUp CHECK refuses
    it, and so do we, naming the layer."""
    text = HEAD_NET.read_text()
    for kind in ("COLLECT", "DISTRIBUTE"):
        text = text.replace(f'bottom: "conv5_3_reduce_before_PSA_{kind}_shrink"',
                            f'bottom: "conv5_3_reduce_before_PSA_{kind}"')
    (tmp_path / "voc.prototxt").write_text(text)
    with pytest.raises(NetError, match=r"global_feature_COLLECT.*33 \* 33 = 1089.*received 289"):
        caffe.Net(str(tmp_path / "voc.prototxt"), caffe.TEST)


TRAIN_NET = '''
layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 5 dim: 6 } shape { dim: 2 dim: 1 dim: 5 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "att_c" type: "Convolution" bottom: "conv1" top: "att_c"
  convolution_param { num_output: 99 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "psa_c" type: "PointwiseSpatialAttention" bottom: "conv1" bottom: "att_c" top: "psa_c"
  pointwise_spatial_attention_param { psa_type: COLLECT is_softmax: true normalization_factor: 1.0 } }
layer { name: "att_d" type: "Convolution" bottom: "conv1" top: "att_d"
  convolution_param { num_output: 99 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "psa_d" type: "PointwiseSpatialAttention" bottom: "conv1" bottom: "att_d" top: "psa_d"
  pointwise_spatial_attention_param { psa_type: DISTRIBUTE is_softmax: true normalization_factor: 1.0 } }
layer { name: "cat" type: "Concat" bottom: "conv1" bottom: "psa_c" bottom: "psa_d" top: "cat" }
layer { name: "score" type: "Convolution" bottom: "cat" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
'''


def test_a_small_psa_net_trains(tmp_path):
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 3')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    r = np.random.default_rng(12)
    data = r.standard_normal((2, 3, 5, 6))
    # labels that need context: the class of a pixel is that of its image's mean in the first channel
    label = np.broadcast_to((data[:, :1].mean((2, 3), keepdims=True) > 0) + (data[:, 1:2] > 0), (2, 1, 5, 6))
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = label
    first = float(net.forward()["loss"])
    net.backward()
    assert np.abs(net.params["att_c"][0].diff).max() > 0 and np.abs(net.params["att_d"][0].diff).max() > 0
    solver.step(20)
    last = float(net.forward()["loss"])
    assert last < 0.5 * first, (first, last)


@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    r = np.random.default_rng(13)
    for kind, softmax in (("COLLECT", True), ("DISTRIBUTE", True), ("DISTRIBUTE", False)):
        layer = _layer(_text(kind, softmax, None, 1.0), [(2, 4, 5, 6), (2, 99, 5, 6)])
        x, m, td = r.standard_normal((2, 4, 5, 6)), r.standard_normal((2, 99, 5, 6)), r.standard_normal((2, 4, 5, 6))
        want = _run(layer, x, m, td)
        xt = torch.tensor(x, device="cuda", requires_grad=True)
        mt = torch.tensor(m, device="cuda", requires_grad=True)
        y = layer(xt, mt)
        y.backward(torch.tensor(td, device="cuda"))
        for got, exp in zip((y.detach(), xt.grad, mt.grad), want):
            np.testing.assert_allclose(got.cpu().numpy(), exp, rtol=1e-10, atol=1e-12)
