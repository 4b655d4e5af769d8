"""FlowNet 2.0's Resample, Downsample, Accum, ChannelNorm, NegReLU, Mean, the diagonal filler and the schema,
against loop ports of the fork's code (``tests/layers/flownet_reference.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.io.binaryproto import write_blobproto
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import flownet_reference as ref

f32 = np.float32


def _layer(type_name, text, shapes, name="l"):
    lp = text_format.Parse(f'name: "{name}" type: "{type_name}" {text}', caffe_pb2.LayerParameter())
    return get_layer_class(type_name)(lp, shapes)


@pytest.mark.parametrize("kind", ["LINEAR", "CUBIC", "NEAREST"])
@pytest.mark.parametrize("size,antialias", [((4, 5), True), ((4, 5), False), ((17, 23), True), ((5, 20), True),
                                            ((20, 4), False), ((9, 11), True)])
def test_resample_matches_the_kernels(kind, size, antialias):
    r = np.random.default_rng(size[0] * size[1])
    x = r.standard_normal((2, 3, 9, 11)).astype(f32)
    layer = _layer("Resample", f'bottom: "x" top: "y" resample_param {{ height: {size[0]} width: {size[1]} type: {kind} '
                   f'antialias: {str(antialias).lower()} }}', [x.shape])
    assert layer.reshape([x.shape]) == [(2, 3) + size]
    got = layer(torch.tensor(x, requires_grad=True))
    assert not got.requires_grad  # AllowBackward() is false: the top carries no gradient
    # measured max |diff|: 4.8e-7 (LINEAR), 7.2e-7 (CUBIC), 0 (NEAREST, equal sizes)
    np.testing.assert_allclose(got.numpy(), ref.resample_forward(x, *size, kind, antialias), atol=2e-6, rtol=1e-6)


def test_resample_size_from_bottom_1_and_the_refused_type():
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 8)).astype(f32)
    layer = _layer("Resample", 'bottom: "x" bottom: "ref" top: "y" resample_param { type: LINEAR }',
                   [x.shape, (3, 1, 3, 4)])
    got = layer(torch.tensor(x), torch.zeros(3, 1, 3, 4)).numpy()
    np.testing.assert_allclose(got, ref.resample_forward(x, 3, 4), atol=1e-6)
    with pytest.raises(LayerSetupError, match="AREA is not supported: the fork implements only CUBIC, LINEAR and NEAREST"):
        _layer("Resample", 'bottom: "x" top: "y" resample_param { width: 2 height: 2 type: AREA }', [x.shape])
    with pytest.raises(LayerSetupError, match="height and width > 0.*received 0 x 0"):
        _layer("Resample", 'bottom: "x" top: "y"', [x.shape]).reshape([x.shape])


@pytest.mark.parametrize("top", [(4, 5), (3, 3), (9, 6), (2, 11), (13, 20)])
def test_downsample_matches_the_kernel_nans_included(top):
    r = np.random.default_rng(top[0])
    x = r.standard_normal((2, 3, 9, 11)).astype(f32)
    x[0, 0, 2:5, 3:6] = np.nan
    x[1, 2, 0, 0] = np.nan
    layer = _layer("Downsample", f'bottom: "x" top: "y" downsample_param {{ top_height: {top[0]} top_width: {top[1]} }}',
                   [x.shape])
    got = layer(torch.tensor(x)).numpy()
    want = ref.downsample_forward(x, *top)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=5e-7)  # measured: 1.2e-7


def test_downsample_same_size_is_the_bottom_and_passes_the_diff():
    x = torch.randn(1, 2, 4, 5, requires_grad=True)
    layer = _layer("Downsample", 'bottom: "x" bottom: "r" top: "y"', [(1, 2, 4, 5), (1, 2, 4, 5)])
    y = layer(x, torch.zeros(1, 2, 4, 5))
    assert torch.equal(y, x) and y.requires_grad  # the fork's ShareData / ShareDiff
    with pytest.raises(LayerSetupError, match="height or width 1 from a larger bottom"):
        _layer("Downsample", 'bottom: "x" top: "y" downsample_param { top_height: 1 top_width: 3 }', [(1, 1, 4, 5)]).reshape(
            [(1, 1, 4, 5)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fields,size", [("", (5, 7)), ("accum_param { size_divisible_by: 4 }", (8, 8)),
                                         ("accum_param { size_divisible_by: 7 }", (5, 7)),  # 7 x 7: not both larger
                                         ("accum_param { top_height: 9 top_width: 10 }", (9, 10)),
                                         ("accum_param { top_height: 9 top_width: 7 }", (5, 7))])
def test_accum_matches_the_fork(dtype, fields, size):
    r = np.random.default_rng(len(fields))
    a, b = r.standard_normal((2, 2, 3, 4)).astype(dtype), r.standard_normal((2, 1, 5, 7)).astype(dtype)
    layer = _layer("Accum", f'bottom: "a" bottom: "b" top: "y" {fields}', [a.shape, b.shape])
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    y = layer(at, bt)
    assert tuple(y.shape) == (2, 3) + size == layer.reshape([a.shape, b.shape])[0]
    td = r.standard_normal(tuple(y.shape)).astype(dtype)
    y.backward(torch.tensor(td))
    da, db = ref.accum_backward([a, b], td)
    # the fork's float32 weight products against products of float32 weights in dtype: measured <= 7.2e-7 / 7.5e-8
    np.testing.assert_allclose(y.detach().numpy(), ref.accum_forward([a, b], *size), atol=2e-6)
    np.testing.assert_allclose(at.grad.numpy(), da, atol=2e-6)
    np.testing.assert_allclose(bt.grad.numpy(), db, atol=2e-6)


def test_accum_reference_bottom_sets_the_size_only():
    layer = _layer("Accum", 'bottom: "a" bottom: "b" bottom: "ref" top: "y" accum_param { have_reference: true }',
                   [(1, 2, 3, 4), (1, 1, 6, 6), (1, 9, 8, 5)])
    assert layer.reshape([(1, 2, 3, 4), (1, 1, 6, 6), (1, 9, 8, 5)]) == [(1, 3, 8, 5)]
    with pytest.raises(LayerSetupError, match="same number of images"):
        layer.reshape([(1, 2, 3, 4), (2, 1, 6, 6), (1, 9, 8, 5)])


def test_channel_norm_and_neg_relu_match_the_fork():
    r = np.random.default_rng(2)
    x = r.standard_normal((2, 3, 4, 5)).astype(f32)
    x[0, :, 0, 0] = 0  # a zero norm: the fork's 1e-9 keeps the diff finite (0)
    layer = _layer("ChannelNorm", 'bottom: "x" top: "n"', [x.shape])
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    td = r.standard_normal(tuple(y.shape)).astype(f32)
    y.backward(torch.tensor(td))
    want = ref.channel_norm_forward(x)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(xt.grad.numpy(), ref.channel_norm_backward(x, want, td), rtol=1e-5, atol=1e-7)
    assert np.isfinite(xt.grad.numpy()).all()
    x[1, 0, 0, :3] = 0  # the kink: the fork's diff takes the slope at 0
    layer = _layer("NegReLU", 'bottom: "x" top: "y" relu_param { negative_slope: 0.2 }', [x.shape])
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(torch.tensor(td.repeat(3, 1)))
    wy, wd = ref.neg_relu(x, float(f32(0.2)), td.repeat(3, 1))
    np.testing.assert_array_equal(y.detach().numpy(), wy)
    np.testing.assert_array_equal(xt.grad.numpy(), wd)


def test_mean_values_and_file(tmp_path):
    r = np.random.default_rng(3)
    x = r.random((2, 6, 3, 4)).astype(f32)
    layer = _layer("Mean", 'bottom: "x" top: "y" mean_param { operation: SUBTRACT value: 0.3 value: 0.5 value: 2 '
                   "input_scale: 0.5 mean_scale: 2 output_scale: 3 }", [x.shape])
    got = layer(torch.tensor(x))[0].numpy()
    np.testing.assert_allclose(got, ref.mean_forward(x, [f32(0.3), f32(0.5), f32(2)], True, 0.5, 2, 3), rtol=1e-6)
    mean = r.random((1, 3, 3, 4)).astype(f32)
    write_blobproto(tmp_path / "mean.binaryproto", mean, legacy=True)
    layer = _layer("Mean", f'bottom: "x" top: "y" mean_param {{ operation: ADD file: "{tmp_path}/mean.binaryproto" }}',
                   [x.shape])
    np.testing.assert_allclose(layer(torch.tensor(x))[0].numpy(), ref.mean_forward(x, None, False, mean_blob=mean))
    xt = torch.tensor(x, requires_grad=True)
    with pytest.raises(RuntimeError, match="'l' \\(Mean\\) cannot do backward"):
        layer(xt)[0].sum().backward()
    with pytest.raises(LayerSetupError, match="operation.*is required"):
        _layer("Mean", 'bottom: "x" top: "y" mean_param { value: 1 }', [x.shape])
    with pytest.raises(LayerSetupError, match="channels \\(6\\) must be a multiple of the 4"):
        _layer("Mean", 'bottom: "x" top: "y" mean_param { operation: ADD value: 1 value: 1 value: 1 value: 1 }',
               [x.shape])


def test_diagonal_filler_as_the_fork():
    f = caffe_pb2.FillerParameter(type="diagonal")
    f.diag_val.extend([2.5, 0.5])
    w = fill(f, (2, 2, 1, 1)).numpy()
    np.testing.assert_array_equal(w[:, :, 0, 0], [[2.5, 0], [0, 0.5]])
    w = fill(f, (3, 4, 2, 2)).numpy()  # diag_val / kernel area; a missing diag_val is 1; n < min(num, channels)
    np.testing.assert_array_equal(w[0, 0], np.full((2, 2), f32(2.5) / f32(4)))
    np.testing.assert_array_equal(w[2, 2], np.full((2, 2), f32(0.25)))
    assert (w != 0).sum() == 12
    with pytest.raises(ValueError, match="sparsity not supported"):
        fill(caffe_pb2.FillerParameter(type="diagonal", sparse=2), (2, 2, 1, 1))


def test_the_fork_schema():
    lp = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {n: lp[n].number for n in ("coeff_schedule_param", "augmentation_param", "correlation_param",
                                      "l1_loss_param", "writer_param", "reader_param", "mean_param", "resample_param",
                                      "downsample_param", "reshape_every_iter", "lpq_loss_param", "flow_warp_param",
                                      "accum_param", "black_augmentation_param")} == {
        "coeff_schedule_param": 7148, "augmentation_param": 9149, "correlation_param": 7150, "l1_loss_param": 5151,
        "writer_param": 4152, "reader_param": 153, "mean_param": 154, "resample_param": 3155, "downsample_param": 3156,
        "reshape_every_iter": 157, "lpq_loss_param": 158, "flow_warp_param": 159, "accum_param": 160,
        "black_augmentation_param": 3161}
    assert caffe_pb2.LayerParameter().reshape_every_iter is True
    c = caffe_pb2.CorrelationParameter()
    assert (c.pad, c.stride_1, c.stride_2, c.do_abs, c.single_direction, c.correlation_type) == (0, 1, 1, False, 0, 0)
    assert (c.MULTIPLY, c.SUBTRACT) == (0, 1)
    l1 = caffe_pb2.L1LossParameter()
    assert (l1.epsilon, l1.plateau) == (pytest.approx(0.01), 0) and l1.DESCRIPTOR.fields_by_name["plateau"].number == 3001
    lpq = caffe_pb2.LpqLossParameter()
    assert lpq.q_epsilon == pytest.approx(0.01) and lpq.DESCRIPTOR.fields_by_name["p"].number == 4011
    rp = caffe_pb2.ResampleParameter()
    assert (rp.type, rp.antialias, rp.factor) == (rp.LINEAR, True, 1.0) and (rp.NEAREST, rp.AREA) == (1, 4)
    assert caffe_pb2.FlowWarpParameter().fill_value == caffe_pb2.FlowWarpParameter.ZERO == 1
    assert caffe_pb2.MeanParameter.DESCRIPTOR.fields_by_name["operation"].is_required
    assert caffe_pb2.ReaderParameter.DESCRIPTOR.fields_by_name["file"].is_required
    assert caffe_pb2.FillerParameter.DESCRIPTOR.fields_by_name["diag_val"].number == 4009
    dp = caffe_pb2.DataParameter()
    assert (dp.disk_reader_threads, dp.limit_samples, dp.range_end, dp.rand_permute_order) == (1, -1, -1, 0)
    assert dp.DESCRIPTOR.fields_by_name["slice_point"].number == 4008
    assert dp.DESCRIPTOR.fields_by_name["permute_every_iter"].number == 4012
    assert (dp.UINT8, dp.UINT16FLOW, dp.BOOL1) == (1, 2, 3)
    ac = caffe_pb2.AugmentationCoeff()
    assert (ac.zoom_x, ac.gamma, ac.noise) == (1, 1, 0)
    assert caffe_pb2.RandomGeneratorParameter().rand_type == "uniform"


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    r = np.random.default_rng(4)
    x = r.standard_normal((2, 3, 20, 24)).astype(f32)
    for t, text in (("Resample", 'resample_param { width: 9 height: 7 type: CUBIC }'),
                    ("Resample", 'resample_param { width: 33 height: 41 type: NEAREST }'),
                    ("Downsample", 'downsample_param { top_height: 6 top_width: 7 }'),
                    ("ChannelNorm", ""), ("Accum", 'accum_param { top_height: 25 top_width: 30 }')):
        layer = _layer(t, f'bottom: "x" top: "y" {text}', [x.shape])
        want = layer(torch.tensor(x)).detach().numpy()
        got = layer.cuda()(torch.tensor(x, device="cuda")).detach().cpu().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=t)
