"""SpatialTransformer, STLoss, LocLoss, PowerFile and the "file" filler (daerduoCarey/SpatialTransformerLayer
@ cf2a461c) against loop ports of the fork's kernels (``stn_reference.py``), float32 and float64; the
identity and translation conventions of the fork's grid; gradient checks; the fork's MNIST ST-CNN net and
a net in its CUB nets' style built from text and trained with neocaffe's SGD solver."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.fillers import fill
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import stn_reference as ref

FIELDS = ref.FIELDS


def _layer(text, shapes):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [tuple(s) for s in shapes])


def _st_text(out=None, fixed=None, du=True):
    body = []
    if out is not None:
        body += [f"output_H: {out[0]}", f"output_W: {out[1]}"]
    if not du:
        body.append("to_compute_dU: false")
    body += [f"{FIELDS[i]}: {v!r}" for i, v in sorted((fixed or {}).items())]
    return ('name: "st" type: "SpatialTransformer" bottom: "U" bottom: "theta" top: "V" '
            f'st_param {{ {" ".join(body)} }}')


def _run_st(U, theta, out, fixed, du, dV, dtype):
    layer = _layer(_st_text(out, fixed, du), [U.shape, theta.shape]).to(dtype)
    u = torch.tensor(U, dtype=dtype, requires_grad=True)
    th = torch.tensor(theta, dtype=dtype, requires_grad=True)
    v = layer(u, th)
    v.backward(torch.tensor(dV, dtype=dtype))
    return v.detach().numpy(), (u.grad.numpy() if u.grad is not None else None), th.grad.numpy()


CASES = {
    # U shape, output size (None: the input's), fixed entries, theta generator
    "zoom-shift": ((2, 3, 6, 5), (5, 4), {}, lambda r, n: np.array([0.7, 0.2, 0.1, -0.15, 0.8, -0.05])
                   + 0.2 * r.standard_normal((n, 6))),
    # the fork's own gradient test: U 2x3x10x10, theta ~ N(0, 1), 7 x 7 output (many points outside)
    "fork-test": ((2, 3, 10, 10), (7, 7), {}, lambda r, n: r.standard_normal((n, 6))),
    # ... and its pre-defined variant: theta_1_1 = theta_2_2 = 0.5, theta_1_2 = theta_2_1 = 0, 2 free values
    "fork-test-fixed": ((2, 3, 10, 10), (7, 7), {0: 0.5, 1: 0.0, 3: 0.0, 4: 0.5},
                        lambda r, n: r.standard_normal((n, 2, 1))),
    # fixed entries that are not a block: the free ones fill 1_1, 1_2, 2_1, 2_3 in that order
    "fixed-scattered": ((1, 2, 7, 6), None, {2: -0.1, 4: 0.9}, lambda r, n: np.array([0.8, 0.1, 0.05, 0.2])
                        + 0.1 * r.standard_normal((n, 4))),
    "upsample": ((2, 1, 4, 3), (9, 8), {}, lambda r, n: np.array([0.9, 0.0, 0.05, 0.0, 1.1, -0.1])
                 + 0.05 * r.standard_normal((n, 6))),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("du", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_diffs_match_the_fork_kernels(case, du, dtype):
    shape, out, fixed, gen = CASES[case]
    r = np.random.default_rng(100 + sorted(CASES).index(case))
    U = r.standard_normal(shape)
    theta = gen(r, shape[0])
    oh, ow = out or shape[2:]
    dV = r.standard_normal((shape[0], shape[1], oh, ow))
    dt = np.float64 if dtype == torch.float64 else np.float32
    V, dU, dth = _run_st(U, theta, out, fixed, du, dV, dtype)
    V_ref, _ = ref.st_forward_gpu(U, theta, fixed, oh, ow, dt)
    dU_ref, dth_ref = ref.st_backward_gpu(U, theta, fixed, dV, oh, ow, dt, to_compute_dU=du)
    tol = dict(rtol=1e-12, atol=1e-12) if dt is np.float64 else dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(V, V_ref, **tol)
    assert V.dtype == dt
    np.testing.assert_allclose(dth, dth_ref, **(tol if dt is np.float64 else dict(rtol=1e-4, atol=1e-4)))
    if du:
        np.testing.assert_allclose(dU, dU_ref, **tol)
    else:
        assert dU is None and dU_ref is None  # to_compute_dU: false: the image gets no diff
    assert np.abs(dth).max() > 0


def test_cpu_loops_agree_with_the_kernels_off_integer_coordinates_only():
    """The fork's CPU loops (disabled by CHECK(false)) give the GPU kernels' values where the source
    points are not integers; at the identity (integer points) their theta diff is another number; we
    follow the kernels."""
    r = np.random.default_rng(3)
    U = r.standard_normal((2, 2, 8, 8))
    dV = r.standard_normal((2, 2, 8, 8))
    theta = np.array([0.9, 0.1, 0.03, -0.1, 0.85, 0.07]) + 0.05 * r.standard_normal((2, 6))
    V_gpu, _ = ref.st_forward_gpu(U, theta, {}, 8, 8, np.float64)
    np.testing.assert_allclose(ref.st_forward_cpu(U, theta, 8, 8), V_gpu, rtol=1e-12, atol=1e-12)
    dU_gpu, dth_gpu = ref.st_backward_gpu(U, theta, {}, dV, 8, 8, np.float64)
    dU_cpu, dth_cpu = ref.st_backward_cpu(U, theta, dV, 8, 8)
    np.testing.assert_allclose(dU_cpu, dU_gpu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dth_cpu, dth_gpu, rtol=1e-10, atol=1e-10)

    ident = np.tile([1.0, 0, 0, 0, 1, 0], (2, 1))
    _, dth_gpu = ref.st_backward_gpu(U, ident, {}, dV, 8, 8, np.float64)
    _, dth_cpu = ref.st_backward_cpu(U, ident, dV, 8, 8)
    assert np.abs(dth_cpu - dth_gpu).max() > 1e-2
    _, _, dth = _run_st(U, ident, None, {}, True, dV, torch.float64)
    np.testing.assert_allclose(dth, dth_gpu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fixed,free", [({}, 6), ({0: 0.5, 1: 0.0, 3: 0.0, 4: 0.5}, 2), ({1: 0.1, 5: -0.2}, 4)])
def test_gradient_check_float64(fixed, free):
    r = np.random.default_rng(7)
    base = np.array([0.8, 0.1, 0.1, -0.1, 0.9, 0.05])
    theta = (base[[i for i in range(6) if i not in fixed]] + 0.3 * r.standard_normal((2, free)))
    U = r.standard_normal((2, 2, 6, 7))
    layer = _layer(_st_text((5, 6), fixed), [U.shape, theta.shape]).double()
    u = torch.tensor(U, requires_grad=True)
    th = torch.tensor(theta, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (u, th), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_reproduces_the_input_at_its_own_size(dtype):
    r = np.random.default_rng(5)
    U = torch.tensor(r.standard_normal((2, 3, 8, 16)), dtype=dtype)
    ident = torch.tensor([[1.0, 0, 0, 0, 1, 0]] * 2, dtype=dtype)
    layer = _layer(_st_text(), [U.shape, ident.shape])
    assert torch.equal(layer(U, ident), U)  # power-of-two sizes: every grid step exact
    # other sizes: equal up to the rounding of s / H * 2 - 1
    U7 = torch.tensor(r.standard_normal((1, 2, 7, 5)), dtype=dtype)
    layer7 = _layer(_st_text(), [U7.shape, (1, 6)])
    torch.testing.assert_close(layer7(U7, ident[:1]), U7, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    # the fixed-entry form: theta_1_1 = theta_2_2 = 1, the rest 0, no free value but the translation
    fixed = {0: 1.0, 1: 0.0, 3: 0.0, 4: 1.0}
    layer_f = _layer(_st_text(None, fixed), [U.shape, (2, 2)])
    assert torch.equal(layer_f(U, torch.zeros(2, 2, dtype=dtype)), U)


def test_grid_starts_at_minus_one_and_is_not_centred():
    """The fork's grid (s / H * 2 - 1): half the size picks every other pixel from the top-left corner,
    a translation by 0.5 moves the rows by H / 4 and fills the rest with 0; neither align_corners
    convention of grid_sample gives these."""
    r = np.random.default_rng(6)
    U = torch.tensor(r.standard_normal((2, 3, 8, 8)))
    ident = torch.tensor([[1.0, 0, 0, 0, 1, 0]] * 2, dtype=torch.float64)
    half = _layer(_st_text((4, 4)), [U.shape, ident.shape])
    assert torch.equal(half(U, ident), U[:, :, ::2, ::2])
    shift = torch.tensor([[1.0, 0, 0.5, 0, 1, 0]] * 2, dtype=torch.float64)  # theta_1_3: rows
    V = _layer(_st_text(), [U.shape, shift.shape])(U, shift)
    assert torch.equal(V[:, :, :6], U[:, :, 2:]) and not V[:, :, 6:].any()
    grid = torch.nn.functional.affine_grid(ident.view(2, 2, 3), (2, 3, 4, 4), align_corners=False)
    for align in (False, True):
        gs = torch.nn.functional.grid_sample(U, grid, align_corners=align)
        assert not torch.allclose(gs, U[:, :, ::2, ::2])


def test_errors_name_the_layer_and_what_was_received():
    with pytest.raises(LayerSetupError, match=r"layer 'st'.*2 values per item.*received shape \(2, 6\)"):
        _layer(_st_text(None, {0: 0.5, 1: 0.0, 3: 0.0, 4: 0.5}), [(2, 3, 8, 8), (2, 6)])
    with pytest.raises(LayerSetupError, match="first dimension of theta and U"):
        _layer(_st_text(), [(2, 3, 8, 8), (3, 6)])
    with pytest.raises(LayerSetupError, match="transform_type must be one of affine; received 'projective'"):
        _layer(_st_text().replace("st_param {", 'st_param { transform_type: "projective"'), [(2, 3, 8, 8), (2, 6)])
    with pytest.raises(LayerSetupError, match="sampler_type"):
        _layer(_st_text().replace("st_param {", 'st_param { sampler_type: "nearest"'), [(2, 3, 8, 8), (2, 6)])
    with pytest.raises(LayerSetupError, match="4-D"):
        _layer(_st_text(), [(2, 8, 8), (2, 6)])
    with pytest.raises(LayerSetupError, match="positive"):
        _layer(_st_text((0, 4)), [(2, 3, 8, 8), (2, 6)])
    with pytest.raises(LayerSetupError, match="st_loss_param.output_H and output_W are required"):
        _layer('name: "l" type: "STLoss" bottom: "t" top: "l"', [(2, 6)])
    with pytest.raises(LayerSetupError, match=r"dimension of 6 per item; received shape \(2, 4\)"):
        _layer('name: "l" type: "STLoss" bottom: "t" top: "l" st_loss_param { output_H: 2 output_W: 2 }', [(2, 4)])
    with pytest.raises(LayerSetupError, match="threshold should be larger than zero"):
        _layer('name: "l" type: "LocLoss" bottom: "t" top: "l" loc_loss_param { threshold: 0 }', [(2, 6)])
    with pytest.raises(LayerSetupError, match="threshold is required"):
        _layer('name: "l" type: "LocLoss" bottom: "t" top: "l"', [(2, 6)])


def test_schema_names_and_defaults():
    sp = caffe_pb2.SpatialTransformerParameter()
    assert (sp.transform_type, sp.sampler_type, sp.to_compute_dU) == ("affine", "bilinear", True)
    assert not sp.HasField("output_H") and not any(sp.HasField(f) for f in FIELDS)
    lp = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {n: lp[n].number for n in ("st_param", "st_loss_param", "power_file_param", "loc_loss_param")} == {
        "st_param": 5148, "st_loss_param": 6149, "power_file_param": 4150, "loc_loss_param": 3151}
    assert caffe_pb2.FillerParameter.DESCRIPTOR.fields_by_name["file"].number == 9


# -- the losses --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_st_loss_matches_the_fork_kernels(dtype):
    r = np.random.default_rng(11)
    theta = np.array([1.1, 0.3, 0.4, -0.2, 0.9, -0.5]) + 0.3 * r.standard_normal((3, 6))
    dt = np.float64 if dtype == torch.float64 else np.float32
    layer = _layer('name: "l" type: "STLoss" bottom: "t" top: "l" st_loss_param { output_H: 6 output_W: 5 } '
                   'loss_weight: 10', [theta.shape])
    assert layer.default_loss_weights() == [1.0]
    th = torch.tensor(theta, dtype=dtype, requires_grad=True)
    loss = layer(th)
    assert loss.shape == ()
    (10 * loss).backward()
    want, dwant = ref.st_loss_gpu(theta, 6, 5, 10.0, dt)
    tol = dict(rtol=1e-12, atol=1e-14) if dt is np.float64 else dict(rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(loss.item(), want, **tol)
    np.testing.assert_allclose(th.grad.numpy(), dwant, **tol)
    assert want > 0 and np.abs(dwant).max() > 0
    inside = torch.tensor([[0.5, 0, 0, 0, 0.5, 0]], dtype=dtype)  # a crop inside the image costs nothing
    assert _layer('name: "l" type: "STLoss" bottom: "t" top: "l" st_loss_param { output_H: 4 output_W: 4 }',
                  [(1, 6)])(inside).item() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loc_loss_matches_the_fork_kernels(dtype):
    r = np.random.default_rng(12)
    x = r.choice([-1, 1], (4, 2)) * r.uniform(0, 1.5, (4, 2))
    dt = np.float64 if dtype == torch.float64 else np.float32
    layer = _layer('name: "l" type: "LocLoss" bottom: "t" top: "l" loc_loss_param { threshold: 0.5 } '
                   'loss_weight: 0.01', [x.shape])
    t = torch.tensor(x, dtype=dtype, requires_grad=True)
    loss = layer(t)
    (0.01 * loss).backward()
    want, dwant = ref.loc_loss_gpu(x, 0.5, 0.01, dt)
    tol = dict(rtol=1e-12, atol=1e-15) if dt is np.float64 else dict(rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(loss.item(), want, **tol)
    np.testing.assert_allclose(t.grad.numpy(), dwant, **tol)
    assert (np.abs(x) < 0.5).any() and (t.grad.numpy()[np.abs(x) < 0.5] == 0).all()
    # the fork's kernel leaves the diff inside the threshold as it was: with a stale diff it differs
    _, stale = ref.loc_loss_gpu(x, 0.5, 0.01, dt, stale=np.ones_like(x))
    assert not np.allclose(stale, t.grad.numpy())


# -- PowerFile and the "file" filler -----------------------------------------------------------------
def test_power_file_adds_the_shift_read_as_the_fork_reads_it(tmp_path):
    r = np.random.default_rng(13)
    x = r.standard_normal((3, 6))
    cases = {"0.5 0 -0.5\n0 0.5 0\n": [0.5, 0, -0.5, 0, 0.5, 0],
             "0.25 -1e-1": [0.25, -0.1, 0, 0, 0, 0],          # fewer: the rest stay 0
             "1 2, 3 4": [1, 2, 0, 0, 0, 0],                  # ">>" stops at the comma
             "1 2 3 4 5 6 7 8": [1, 2, 3, 4, 5, 6]}           # more: the first count(1)
    for i, (text, shift) in enumerate(cases.items()):
        (tmp_path / f"s{i}.txt").write_text(text)
        layer = _layer(f'name: "pf" type: "PowerFile" bottom: "a" top: "b" '
                       f'power_file_param {{ shift_file: "{tmp_path / f"s{i}.txt"}" }}', [x.shape]).double()
        a = torch.tensor(x, requires_grad=True)
        b = layer(a)
        np.testing.assert_allclose(b.detach().numpy(), x + np.array(shift, dtype=np.float32), rtol=0, atol=0)
        g = torch.tensor(r.standard_normal(x.shape))
        b.backward(g)
        assert torch.equal(a.grad, g)  # the diff passes through
    plain = _layer('name: "pf" type: "PowerFile" bottom: "a" top: "b"', [(2, 3, 2)])
    y = torch.randn(2, 3, 2)
    assert torch.equal(plain(y), y)
    with pytest.raises(ValueError, match=r"layer 'pf' \(PowerFile\) shift_file: cannot read '.*nowhere.txt'"):
        _layer(f'name: "pf" type: "PowerFile" bottom: "a" top: "b" '
               f'power_file_param {{ shift_file: "{tmp_path / "nowhere.txt"}" }}', [x.shape])


def test_file_filler(tmp_path):
    (tmp_path / "w.txt").write_text("1 2 3\n4 5 6\n")
    f = caffe_pb2.FillerParameter(type="file", file=str(tmp_path / "w.txt"))
    assert torch.equal(fill(f, (2, 3)), torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    with pytest.raises(ValueError, match=r"holds 6 numbers; the blob of shape \(7,\) needs 7"):
        fill(f, (7,))
    with pytest.raises(ValueError, match="cannot read"):
        fill(caffe_pb2.FillerParameter(type="file", file=str(tmp_path / "none.txt")), (2,))
    with pytest.raises(ValueError, match="sparsity not supported"):
        fill(caffe_pb2.FillerParameter(type="file", file=str(tmp_path / "w.txt"), sparse=2), (2,))
    with pytest.raises(ValueError, match="needs FillerParameter.file"):
        fill(caffe_pb2.FillerParameter(type="file"), (2,))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    r = np.random.default_rng(21)
    U = r.standard_normal((2, 3, 10, 9))
    theta = r.standard_normal((2, 2))
    dV = r.standard_normal((2, 3, 7, 6))
    fixed = {0: 0.5, 1: 0.0, 3: 0.0, 4: 0.5}
    layer = _layer(_st_text((7, 6), fixed), [U.shape, theta.shape])
    outs = []
    for dev in ("cpu", "cuda"):
        u = torch.tensor(U, dtype=torch.float32, device=dev, requires_grad=True)
        th = torch.tensor(theta, dtype=torch.float32, device=dev, requires_grad=True)
        v = layer.to(dev)(u, th)
        v.backward(torch.tensor(dV, dtype=torch.float32, device=dev))
        outs.append([t.detach().cpu() for t in (v, u.grad, th.grad)])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    V_ref, _ = ref.st_forward_gpu(U, theta, fixed, 7, 6, np.float32)
    np.testing.assert_allclose(outs[1][0].numpy(), V_ref, rtol=2e-5, atol=2e-5)


# -- nets --------------------------------------------------------------------------------------------
# daerduoCarey/SpatialTransformerLayer @ cf2a461c, examples/mnist_tests/ST_CNN/ST_CNN.prototxt (Copyright (c) 2015
# Kaichun Mo, MIT License: the repository's LICENSE), from
# its layer "loc_conv1" to the end, as released; its two LMDB Data layers are replaced by the Input below.
ST_CNN_INPUT = '''name: "ST_CNN"
layer { name: "mnist" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 8 dim: 1 dim: 28 dim: 28 } shape { dim: 8 } } }
'''
ST_CNN_BODY = '''
layer {
  name: "loc_conv1"
  type: "Convolution"
  bottom: "data"
  top: "loc_conv1"
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "loc_pool1"
  type: "Pooling"
  bottom: "loc_conv1"
  top: "loc_pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "loc_relu1"
  type: "ReLU"
  bottom: "loc_pool1"
  top: "loc_pool1"
}
layer {
  name: "loc_conv2"
  type: "Convolution"
  bottom: "loc_pool1"
  top: "loc_conv2"
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "loc_pool2"
  type: "Pooling"
  bottom: "loc_conv2"
  top: "loc_pool2"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "loc_relu2"
  type: "ReLU"
  bottom: "loc_pool2"
  top: "loc_pool2"
}
layer {
  name: "loc_ip1"
  type: "InnerProduct"
  bottom: "loc_pool2"
  top: "loc_ip1"
  inner_product_param {
    num_output: 20
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "loc_relu3"
  type: "ReLU"
  bottom: "loc_ip1"
  top: "loc_ip1"
}
layer {
  name: "loc_reg"
  type: "InnerProduct"
  bottom: "loc_ip1"
  top: "theta"
  inner_product_param {
    num_output: 6
    weight_filler {
      type: "constant"
      value: 0
    }
    bias_filler {
      type: "file"
      file: "examples/mnist_tests/bias_init.txt"
    }
  }
}
layer {
  name: "st_layer"
  type: "SpatialTransformer"
  bottom: "data"
  bottom: "theta"
  top: "st_output"
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "st_output"
  top: "conv1"
  convolution_param {
    num_output: 32
    kernel_size: 9
    stride: 1
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "pool1"
  top: "pool1"
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  convolution_param {
    num_output: 32
    kernel_size: 7
    stride: 1
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "relu2"
  type: "ReLU"
  bottom: "pool2"
  top: "pool2"
}
layer {
  name: "classification"
  type: "InnerProduct"
  bottom: "pool2"
  top: "class"
  inner_product_param {
    num_output: 10
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "class"
  bottom: "label"
  top: "accuracy"
  include {
    phase: TEST
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "class"
  bottom: "label"
  top: "loss"
}
'''


def _solver(tmp_path, net_text, lr=0.01):
    (tmp_path / "train.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: {lr} momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 1000 snapshot: 0 solver_mode: CPU random_seed: 3')
    return caffe.SGDSolver(str(tmp_path / "solver.prototxt"))


def test_the_forks_mnist_st_cnn_builds_starts_at_the_identity_and_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the prototxt names examples/mnist_tests/bias_init.txt from Caffe's root
    (tmp_path / "examples" / "mnist_tests").mkdir(parents=True)
    (tmp_path / "examples" / "mnist_tests" / "bias_init.txt").write_text("1 0 0 0 1 0\n")  # the fork's file
    solver = _solver(tmp_path, ST_CNN_INPUT + ST_CNN_BODY)
    net = solver.net
    assert list(net.params["loc_reg"][1].data) == [1, 0, 0, 0, 1, 0]  # the "file" bias filler
    r = np.random.default_rng(8)
    net.blobs["data"].data[...] = r.random((8, 1, 28, 28)) < 0.2  # sparse strokes in [0, 1], as MNIST
    net.blobs["label"].data[...] = np.arange(8) % 10
    first = float(net.forward()["loss"])
    # zero weights, identity bias: theta is the identity and the transformer passes the images through
    np.testing.assert_array_equal(net.blobs["theta"].data, np.tile([1, 0, 0, 0, 1, 0], (8, 1)))
    np.testing.assert_allclose(net.blobs["st_output"].data, net.blobs["data"].data, rtol=0, atol=1e-6)
    net.backward()
    assert np.abs(net.params["loc_reg"][0].diff).max() > 0  # the theta diff reaches the localisation net
    solver.step(25)
    last = float(net.forward()["loss"])
    assert last < 0.7 * first, (first, last)
    assert np.abs(net.blobs["theta"].data - [1, 0, 0, 0, 1, 0]).max() > 1e-4  # and theta moved


# In the style of the fork's CUB nets (examples/CUB_googLeNet_ST/train_val.prototxt: two free translations
# regressed, PowerFile with a crop file, LocLoss at 0.5 with loss weight 0.01, a SpatialTransformer fixing
# the 0.5 zoom, to_compute_dU: false; train_test.prototxt: six free values, STLoss with loss weight 10),
# scaled down from GoogLeNet at 224 x 224 to a few layers at 16 x 16.
CUB_STYLE = '''name: "CUB_ST_small"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 6 dim: 3 dim: 16 dim: 16 } shape { dim: 6 } } }
layer { name: "st/conv" type: "Convolution" bottom: "data" top: "st/conv"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "st/relu" type: "ReLU" bottom: "st/conv" top: "st/conv" }
layer { name: "st/final_ip" type: "InnerProduct" bottom: "st/conv" top: "st/final_ip"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "st/final_ip/relu" type: "ReLU" bottom: "st/final_ip" top: "st/final_ip" }
layer { name: "st/theta_1" type: "InnerProduct" bottom: "st/final_ip" top: "st/pre_theta_1"
  param { lr_mult: 0.01 decay_mult: 10 } param { lr_mult: 0.01 decay_mult: 10 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1e-4 } bias_filler { type: "constant" } } }
layer { name: "st/theta_1_final" type: "PowerFile" bottom: "st/pre_theta_1" top: "st/theta_1"
  power_file_param { shift_file: "crop_init_1.txt" } }
layer { name: "st/theta_1_loss" type: "LocLoss" bottom: "st/theta_1" top: "st/theta_1_loss"
  loc_loss_param { threshold: 0.5 } loss_weight: 0.01 }
layer { name: "st_1" type: "SpatialTransformer" bottom: "data" bottom: "st/theta_1" top: "inc1/data"
  st_param { to_compute_dU: false output_H: 8 output_W: 8 theta_1_1: 0.5 theta_1_2: 0 theta_2_1: 0 theta_2_2: 0.5 } }
layer { name: "st/theta_2" type: "InnerProduct" bottom: "st/final_ip" top: "st/pre_theta_2"
  param { lr_mult: 0.1 decay_mult: 10 } param { lr_mult: 0.1 decay_mult: 10 }
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 1e-4 } bias_filler { type: "constant" } } }
layer { name: "st/theta_2_final" type: "PowerFile" bottom: "st/pre_theta_2" top: "st/theta_2"
  power_file_param { shift_file: "bias_init_2.txt" } }
layer { name: "loss/theta_2" type: "STLoss" bottom: "st/theta_2" top: "loss/theta_2" loss_weight: 10
  st_loss_param { output_H: 8 output_W: 8 } }
layer { name: "st_2" type: "SpatialTransformer" bottom: "data" bottom: "st/theta_2" top: "inc2/data"
  st_param { to_compute_dU: false output_H: 8 output_W: 8 } }
layer { name: "inc1/conv" type: "Convolution" bottom: "inc1/data" top: "inc1/conv"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "inc1/relu" type: "ReLU" bottom: "inc1/conv" top: "inc1/conv" }
layer { name: "inc2/conv" type: "Convolution" bottom: "inc2/data" top: "inc2/conv"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "inc2/relu" type: "ReLU" bottom: "inc2/conv" top: "inc2/conv" }
layer { name: "concat" type: "Concat" bottom: "inc1/conv" bottom: "inc2/conv" top: "concat" }
layer { name: "cls" type: "InnerProduct" bottom: "concat" top: "cls"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cls" bottom: "label" top: "loss" }
'''


def test_a_net_in_the_style_of_the_forks_cub_nets_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "crop_init_1.txt").write_text("-0.5 -0.5\n")  # the top-left quarter
    (tmp_path / "bias_init_2.txt").write_text("0.5 0 0.5 0 0.5 0.5\n")  # examples/CUB_googLeNet_ST's form
    solver = _solver(tmp_path, CUB_STYLE, lr=0.05)
    net = solver.net
    r = np.random.default_rng(9)
    net.blobs["data"].data[...] = r.standard_normal((6, 3, 16, 16))
    net.blobs["label"].data[...] = np.arange(6) % 4
    net.forward()
    d = net.blobs["data"].data
    np.testing.assert_allclose(net.blobs["st/theta_1"].data, -0.5, atol=1e-2)
    # theta_1 ~ (-0.5, -0.5) with the 0.5 zoom: the top-left quarter, every other pixel
    np.testing.assert_allclose(net.blobs["inc1/data"].data, d[:, :, :8, :8], atol=0.1)
    np.testing.assert_allclose(net.blobs["inc2/data"].data, d[:, :, 8:, 8:], atol=0.1)  # the bottom-right one
    first = float(net.blobs["loss"].data)
    net.backward()
    for name in ("st/theta_1", "st/theta_2"):  # the transformers' theta diffs reach the regressors
        assert np.abs(net.params[name][0].diff).max() > 0
    solver.step(15)
    net.forward()
    last = float(net.blobs["loss"].data)
    assert last < 0.7 * first, (first, last)
    # the crops stay (nearly) inside the image: the regularisers cost (almost) nothing
    assert 0 <= float(net.blobs["st/theta_1_loss"].data) < 1e-4 and 0 <= float(net.blobs["loss/theta_2"].data) < 1e-4
