"""FlowNet 2.0's Correlation / Correlation1D and the warps (FlowWarp; PWC-Net's Warp) against loop ports of the
forks' kernels (``tests/layers/flownet_reference.py``): forward, the forks' backwards, gradient checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import flownet_reference as ref


def _layer(type_name, fields, shapes, name="l"):
    lp = text_format.Parse(f'name: "{name}" type: "{type_name}" bottom: "a" bottom: "b" top: "c" {fields}',
                           caffe_pb2.LayerParameter())
    return get_layer_class(type_name)(lp, shapes)


def _corr(type_name, p, subtract, shapes):
    fields = " ".join(f"{k}: {v}" for k, v in p.items()) + (" correlation_type: SUBTRACT" if subtract else "")
    return _layer(type_name, f"correlation_param {{ {fields} }}", shapes)


def _run(layer, a, b, td_seed):
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    y = layer(at, bt)
    td = np.random.default_rng(td_seed).standard_normal(tuple(y.shape)).astype(a.dtype)
    y.backward(torch.tensor(td))
    return y.detach().numpy(), at.grad.numpy(), bt.grad.numpy(), td


CORR = [  # type, fields, SUBTRACT, bottom shape
    ("Correlation", dict(kernel_size=1, max_displacement=2, pad=2), False, (2, 3, 5, 6)),  # PWC-Net's form
    ("Correlation", dict(kernel_size=3, max_displacement=2, pad=3, stride_1=2, stride_2=2), False, (1, 2, 6, 7)),
    ("Correlation", dict(kernel_size=1, max_displacement=3, pad=1, stride_2=3), False, (1, 2, 6, 7)),
    ("Correlation", dict(kernel_size=3, max_displacement=3, pad=3, stride_2=2), True, (2, 2, 5, 6)),
    ("Correlation", dict(kernel_size=1, max_displacement=1, stride_1=2), True, (1, 3, 5, 7)),
    ("Correlation1D", dict(kernel_size=1, max_displacement=3, pad=3), False, (2, 2, 3, 7)),
    ("Correlation1D", dict(kernel_size=3, max_displacement=2, pad=2, stride_1=2, single_direction=-1), False, (1, 2, 5, 7)),
    ("Correlation1D", dict(kernel_size=1, max_displacement=4, pad=4, stride_2=2, single_direction=1), False, (1, 3, 2, 6)),
    ("Correlation1D", dict(kernel_size=3, max_displacement=2, pad=2, single_direction=-1), True, (1, 2, 4, 6)),
    ("Correlation1D", dict(kernel_size=1, max_displacement=2, pad=1), True, (2, 2, 3, 5)),
]


@pytest.mark.parametrize("type_name,p,subtract,shape", CORR)
def test_correlation_matches_the_kernels(type_name, p, subtract, shape):
    r = np.random.default_rng(sum(shape) + len(p))
    a, b = r.standard_normal(shape), r.standard_normal(shape)
    layer = _corr(type_name, p, subtract, [shape, shape])
    one_d = type_name == "Correlation1D"
    top, d0, d1, td = _run(layer, a, b, 1)
    assert layer.reshape([shape, shape]) == [top.shape]
    want = ref.corr_forward(a, b, p, one_d, subtract)
    w0, w1 = ref.corr_backward(a, b, td, p, one_d, subtract)
    assert np.abs(want).max() > 0 and np.abs(w0).max() > 0 and np.abs(w1).max() > 0
    np.testing.assert_allclose(top, want, rtol=1e-12, atol=1e-13)  # measured: <= 9e-16
    np.testing.assert_allclose(d0, w0, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(d1, w1, rtol=1e-12, atol=1e-13)
    # float32, as the fork's nets run
    t32, e0, e1, td32 = _run(layer, a.astype(np.float32), b.astype(np.float32), 1)
    np.testing.assert_allclose(t32, ref.corr_forward(a.astype(np.float32), b.astype(np.float32), p, one_d, subtract),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e0, w0, rtol=1e-4, atol=1e-5)


def test_pwcnet_top_channels_are_the_displacements():
    """Channel (p + R)(2R + 1) + (o + R) compares bottom 0 at (y, x) with bottom 1 at (y + p, x + o) (zero outside)."""
    r = np.random.default_rng(3)
    a, b = r.standard_normal((1, 4, 6, 7)), r.standard_normal((1, 4, 6, 7))
    layer = _corr("Correlation", dict(kernel_size=1, max_displacement=4, pad=4), False, [a.shape, a.shape])
    top = layer(torch.tensor(a), torch.tensor(b)).numpy()
    assert top.shape == (1, 81, 6, 7)
    bp = np.pad(b, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for p, o in ((1, -2), (0, 0), (-4, 3), (4, 4)):
        want = (a * bp[:, :, 4 + p:10 + p, 4 + o:11 + o]).sum(1)[0] / 4
        np.testing.assert_allclose(top[0, (p + 4) * 9 + o + 4], want, rtol=1e-12, atol=1e-15)


def test_flownetc_setting():
    """FlowNetC's correlation (pad 20, kernel_size 1, max_displacement 20, stride_2 2): 21 x 21 = 441 channels,
    displacements in steps of 2 pixels."""
    r = np.random.default_rng(12)
    a, b = r.standard_normal((1, 3, 6, 8)), r.standard_normal((1, 3, 6, 8))
    layer = _corr("Correlation", dict(kernel_size=1, max_displacement=20, pad=20, stride_2=2), False, [a.shape] * 2)
    top = layer(torch.tensor(a), torch.tensor(b)).numpy()
    assert top.shape == (1, 441, 6, 8)
    bp = np.pad(b, ((0, 0), (0, 0), (20, 20), (20, 20)))
    for p, o in ((0, 0), (1, -2), (-3, 3), (10, -10)):
        dy, dx = 2 * p, 2 * o
        want = (a * bp[:, :, 20 + dy:26 + dy, 20 + dx:28 + dx]).sum(1)[0] / 3
        np.testing.assert_allclose(top[0, (p + 10) * 21 + o + 10], want, rtol=1e-12, atol=1e-15)


def test_subtract_backward_is_the_forks_not_the_gradient():
    r = np.random.default_rng(4)
    a, b = r.standard_normal((1, 2, 4, 5)), r.standard_normal((1, 2, 4, 5))
    layer = _corr("Correlation", dict(kernel_size=1, max_displacement=1, pad=1), True, [a.shape, a.shape])
    _, d0, _, td = _run(layer, a, b, 2)
    at = torch.tensor(a, requires_grad=True)
    bp = np.pad(b, ((0, 0), (0, 0), (1, 1), (1, 1)))
    # the true gradient of sum_d |a - shift_d(b)| differs: the fork reads both bottoms at the displaced position
    outs = [(at - torch.tensor(bp[:, :, 1 + dy:5 + dy, 1 + dx:6 + dx])).abs().sum(1, keepdim=True) / 2
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    torch.cat(outs, 1).backward(torch.tensor(td))
    assert np.abs(at.grad.numpy() - d0).max() > 0.1


def test_correlation_gradient_check_float64():
    r = np.random.default_rng(5)
    for type_name, p in (("Correlation", dict(kernel_size=3, max_displacement=2, pad=2, stride_1=2, stride_2=2)),
                         ("Correlation1D", dict(kernel_size=1, max_displacement=2, pad=2, single_direction=-1))):
        layer = _corr(type_name, p, False, [(1, 2, 4, 5)] * 2)
        a = torch.tensor(r.standard_normal((1, 2, 4, 5)), requires_grad=True)
        b = torch.tensor(r.standard_normal((1, 2, 4, 5)), requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, y: layer(x, y), (a, b), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fields,shapes,match", [
    ("correlation_param { max_displacement: 1 }", [(1, 1, 4, 4)] * 2, "kernel_size is required"),
    ("correlation_param { kernel_size: 1 }", [(1, 1, 4, 4)] * 2, "max_displacement is required"),
    ("correlation_param { kernel_size: 2 max_displacement: 1 }", [(1, 1, 4, 4)] * 2, "must be odd; received 2"),
    ("correlation_param { kernel_size: 1 max_displacement: 1 stride_2: 0 }", [(1, 1, 4, 4)] * 2, "stride_2 must be >= 1"),
    ("correlation_param { kernel_size: 1 max_displacement: 3 }", [(1, 1, 4, 4)] * 2, "do not fit.*top would be -2 x -2"),
    ("correlation_param { kernel_size: 1 max_displacement: 1 }", [(1, 1, 4, 4), (1, 2, 4, 4)], "same channels"),
])
def test_correlation_errors(fields, shapes, match):
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer("Correlation", fields, shapes, name="bad").reshape(shapes)
    assert "'bad' (Correlation)" in str(e.value)
    with pytest.raises(LayerSetupError, match="single_direction must be -1"):
        _layer("Correlation1D", "correlation_param { kernel_size: 1 max_displacement: 1 single_direction: 2 }",
               [(1, 1, 4, 4)] * 2)


# -- FlowWarp / Warp ----------------------------------------------------------------------------------------------
def _flows(r, shape):
    flow = r.uniform(-3, 3, shape)
    flow[0, :, 0, :3] = [[1.0, 2.0, 0.0], [0.0, -0.0, 1.0]]  # integer positions
    flow[-1, 0, 2, :] = shape[3] - 1.0 - np.arange(shape[3])  # exactly onto the last column
    flow[-1, 1, 3, :] = shape[2] - 1.0 - 3  # exactly onto the last row
    return flow


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flow_warp_matches_the_fork(dtype):
    r = np.random.default_rng(6)
    img, flow = r.standard_normal((2, 3, 5, 6)).astype(dtype), _flows(r, (2, 2, 5, 6)).astype(dtype)
    top, di, df, td = _run(_layer("FlowWarp", "", [img.shape, flow.shape]), img, flow, 7)
    want = ref.flow_warp_forward(img, flow)
    wi, wf = ref.flow_warp_backward(img, flow, td)
    # float32: the fork's arithmetic (measured max 3e-7 in the flow diff); float64 here keeps float64 positions
    # where the fork computes float32 ones (measured max 1.1e-6)
    tol = 1e-6 if dtype == np.float32 else 3e-6
    np.testing.assert_allclose(top, want, atol=tol)
    np.testing.assert_allclose(di, wi, atol=tol)
    np.testing.assert_allclose(df, wf, atol=tol * 4)
    assert (top == 0).any() and np.abs(wf).max() > 0
    nan = _layer("FlowWarp", "flow_warp_param { fill_value: NOT_A_NUMBER }", [img.shape, flow.shape])
    got = nan(torch.tensor(img), torch.tensor(flow)).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(ref.flow_warp_forward(img, flow, nan_fill=True)))
    assert np.isnan(got).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pwcnet_warp_matches_the_fork(dtype):
    r = np.random.default_rng(8)
    u, flow = r.standard_normal((2, 3, 5, 6)).astype(dtype), _flows(r, (2, 2, 5, 6)).astype(dtype)
    top, du, df, td = _run(_layer("Warp", "", [u.shape, flow.shape]), u, flow, 9)
    wu, wf = ref.warp_backward(u, flow, td)
    tol = 1e-6 if dtype == np.float32 else 1e-13  # measured: 0 / 2.2e-16 (forward), 6e-8 / 2.2e-16 (diffs)
    np.testing.assert_allclose(top, ref.warp_forward(u, flow, 5, 6), atol=tol)
    np.testing.assert_allclose(du, wu, atol=tol)
    np.testing.assert_allclose(df, wf, atol=tol * 4)


def test_warp_integer_positions_take_the_central_difference():
    """At an integer x the fork adds the mean of the two one-sided differences to the (zero) interpolation slope."""
    u = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4) ** 2
    flow = np.zeros((1, 2, 3, 4))
    layer = _layer("Warp", "", [u.shape, flow.shape])
    _, _, df, _ = _run(layer, u, flow, 0)
    ones = torch.ones(1, 1, 3, 4, dtype=torch.float64)
    ft = torch.tensor(flow, requires_grad=True)
    layer(torch.tensor(u), ft).backward(ones)
    gx = ft.grad.numpy()[0, 0]
    img = u[0, 0]
    assert gx[1, 1] == pytest.approx(((img[1, 2] - img[1, 1]) + (img[1, 1] - img[1, 0])) / 2)
    assert gx[1, 0] == pytest.approx((img[1, 1] - img[1, 0]) / 2)  # the left side is past the border: 0


def test_warp_keeps_the_set_up_size_and_checks_the_flow():
    layer = _layer("Warp", "", [(1, 2, 4, 5), (1, 2, 4, 5)])
    assert layer.reshape([(3, 2, 6, 7), (3, 2, 4, 5)]) == [(3, 2, 4, 5)]
    with pytest.raises(LayerSetupError, match=r"flow \(N, 2, 4, 5\).*received shapes \(1, 2, 4, 5\) and \(1, 3, 4, 5\)"):
        layer.reshape([(1, 2, 4, 5), (1, 3, 4, 5)])
    with pytest.raises(LayerSetupError, match="'l' \\(FlowWarp\\): bottom 1 must be a flow"):
        _layer("FlowWarp", "", [(1, 2, 4, 5), (1, 2, 4, 4)]).reshape([(1, 2, 4, 5), (1, 2, 4, 4)])


def test_warp_gradient_checks_float64():
    r = np.random.default_rng(10)
    u = torch.tensor(r.standard_normal((1, 2, 4, 5)), requires_grad=True)
    flow = torch.tensor(np.floor(r.uniform(-2, 2, (1, 2, 4, 5))) + r.uniform(0.2, 0.8, (1, 2, 4, 5)), requires_grad=True)
    for t in ("FlowWarp", "Warp"):
        layer = _layer(t, "", [tuple(u.shape), tuple(flow.shape)])
        assert torch.autograd.gradcheck(lambda x, f: layer(x, f), (u, flow), eps=1e-6, atol=1e-7)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    r = np.random.default_rng(11)
    cases = [("Correlation", "correlation_param { kernel_size: 1 max_displacement: 4 pad: 4 }", (2, 8, 16, 16), (2, 8, 16, 16)),
             ("Correlation", "correlation_param { kernel_size: 3 max_displacement: 4 pad: 4 stride_2: 2 "
              "correlation_type: SUBTRACT }", (1, 4, 12, 12), (1, 4, 12, 12)),
             ("Correlation1D", "correlation_param { kernel_size: 1 max_displacement: 6 pad: 6 single_direction: -1 }",
              (1, 4, 8, 16), (1, 4, 8, 16)),
             ("FlowWarp", "", (2, 3, 9, 11), (2, 2, 9, 11)), ("Warp", "", (2, 3, 9, 11), (2, 2, 9, 11))]
    for t, fields, sa, sb in cases:
        a = r.standard_normal(sa).astype(np.float32)
        b = (r.uniform(-3, 3, sb) if t in ("FlowWarp", "Warp") else r.standard_normal(sb)).astype(np.float32)
        layer = _layer(t, fields, [sa, sb])
        cpu = _run(layer.cpu(), a, b, 3)
        at, bt = torch.tensor(a, device="cuda", requires_grad=True), torch.tensor(b, device="cuda", requires_grad=True)
        y = layer.cuda()(at, bt)
        y.backward(torch.tensor(cpu[3], device="cuda"))
        got = (y.detach().cpu().numpy(), at.grad.cpu().numpy(), bt.grad.cpu().numpy())
        for g, w in zip(got, cpu[:3]):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=t)
