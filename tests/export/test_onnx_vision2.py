"""SpatialTransformer, DeformableConvolution, PSANet's PointwiseSpatialAttention, NormL2, DenseBlock, ROIMaskPooling and the
small FlowNet 2.0 / LiteFlowNet layers exported to ONNX (``neocaffe.export.onnx_vision2``) against neocaffe's forward
under onnxruntime and against the NumPy loop ports of the forks' code in tests/layers/ (stn_reference.py,
test_deformable.py, psanet_reference.py, arcface_reference.py, denseblock_reference.py, flownet_reference.py,
liteflownet_reference.py, frcnn_reference.py); PSANet's trimmed ADE20K head (tests/layers/data/psanet/) exported whole,
sections of LiteFlowNet's released deploy net (tests/layers/data/liteflownet/) without its Warp."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export.test_onnx_vision import _close, _net, _run

pytest.importorskip("onnxruntime")

f32 = np.float32
DATA = Path(__file__).parents[1] / "layers" / "data"


def _params(net, name: str) -> list[np.ndarray]:
    return [b.detach().numpy().astype(np.float64) for b in net.layer(name).blobs]


# -- SpatialTransformer --------------------------------------------------------------------------------------
@pytest.mark.parametrize("out, fixed", [(None, {}), ((5, 7), {1: 0.0, 3: 0.0}), ((4, 4), {0: 0.5, 4: 0.5})])
def test_spatial_transformer(out, fixed):
    from tests.layers.stn_reference import st_forward_gpu

    fields = ("theta_1_1", "theta_1_2", "theta_1_3", "theta_2_1", "theta_2_2", "theta_2_3")
    body = ["transform_type: 'affine' sampler_type: 'bilinear'"]
    if out:
        body.append(f"output_H: {out[0]} output_W: {out[1]}")
    body += [f"{fields[i]}: {v!r}" for i, v in sorted(fixed.items())]
    free = 6 - len(fixed)
    net = _net(f'layer {{ name: "st" type: "SpatialTransformer" bottom: "u" bottom: "theta" top: "v" st_param {{ '
               f'{" ".join(body)} }} }}', {"u": (2, 3, 6, 8), "theta": (2, free)})
    r = np.random.default_rng(0)
    u = r.standard_normal((2, 3, 6, 8)).astype(f32)
    ident = np.array([1, 0, 0, 0, 1, 0], f32)
    theta = np.stack([np.delete(ident, list(fixed)), np.delete(ident + r.uniform(-0.6, 0.6, 6).astype(f32), list(fixed))])
    got = _run(net, {"u": u, "theta": theta.astype(f32)}, dynamic_batch=True)["v"]
    oh, ow = out or (6, 8)
    _close(got, st_forward_gpu(u, theta, fixed, oh, ow, f32)[0])


# -- DeformableConvolution ---------------------------------------------------------------------------------
@pytest.mark.parametrize("params, geom, group, dg, shape", [
    ("num_output: 4 kernel_size: 3 pad: 1 group: 2 deformable_group: 2", (3, 3, 1, 1, 1, 1, 1, 1), 2, 2, (2, 4, 5, 4)),
    ("num_output: 3 kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 2 dilation: 2 deformable_group: 1 bias_term: false",
     (2, 3, 1, 2, 1, 1, 2, 2), 1, 1, (1, 2, 4, 5)),
    ("num_output: 2 kernel_size: 3 stride: 2 deformable_group: 1", (3, 3, 0, 0, 2, 2, 1, 1), 1, 1, (1, 2, 7, 6))])
def test_deformable_convolution(params, geom, group, dg, shape):
    from tests.layers.test_deformable import layer_port

    kh, kw = geom[:2]
    off_shape = (shape[0], 2 * kh * kw * dg) + shape[2:]
    net = _net(f'layer {{ name: "dc" type: "DeformableConvolution" bottom: "x" bottom: "off" top: "y" '
               f'deformable_convolution_param {{ {params} weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ '
               f'type: "gaussian" std: 0.5 }} }} }}', {"x": shape, "off": off_shape})
    r = np.random.default_rng(1)
    x = r.standard_normal(shape).astype(f32)
    off = (1.6 * r.standard_normal(off_shape)).astype(f32)
    off.reshape(-1)[::7] = np.round(off.reshape(-1)[::7])  # integer positions, the last row and column among them
    got = _run(net, {"x": x, "off": off}, dynamic_batch=True)["y"]
    blobs = _params(net, "dc")
    top = layer_port(x.astype(np.float64), off.astype(np.float64), blobs[0], blobs[1] if len(blobs) > 1 else None,
                     np.zeros(got.shape), geom, group, dg)[0]
    _close(got, top)


# -- PointwiseSpatialAttention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, ref", [
    ("psa_type: COLLECT", dict(softmax=False, distribute=False)),
    ("psa_type: DISTRIBUTE is_softmax: true normalization_factor: 1.0", dict(softmax=True, distribute=True, factor=1.0)),
    ("attention_mask_height: 3 attention_mask_width: 5 is_softmax: true normalization_factor: 2.5",
     dict(softmax=True, distribute=False, factor=2.5, mask=(3, 5)))])
def test_pointwise_spatial_attention(fields, ref):
    from tests.layers.psanet_reference import forward

    mh, mw = ref.get("mask", (7, 7))
    net = _net(f'layer {{ name: "psa" type: "PointwiseSpatialAttention" bottom: "x" bottom: "mask" top: "y" '
               f'pointwise_spatial_attention_param {{ {fields} }} }}', {"x": (2, 3, 4, 4), "mask": (2, mh * mw, 4, 4)})
    r = np.random.default_rng(2)
    x, mask = r.standard_normal((2, 3, 4, 4)).astype(f32), r.standard_normal((2, mh * mw, 4, 4)).astype(f32)
    got = _run(net, {"x": x, "mask": mask}, dynamic_batch=True)["y"]
    _close(got, forward(x, mask, ref)[0])


def test_psanet_ade20k_head_exports_whole():
    """The trimmed PSA head of PSANet's ADE20K test net: COLLECT and DISTRIBUTE with their Softmax, Interp, BN."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    net = Net(read_net(str(DATA / "psanet" / "psanet_ade20k_head.prototxt")))
    assert {"PointwiseSpatialAttention", "Interp", "BN"} <= {lp.param.type for lp in net.plan.layers}
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 33, 33)).astype(f32)
    _run(net, {"data": x})


# -- NormL2, DenseBlock ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 6), (2, 3, 2, 2)])
def test_norm_l2(shape):
    from tests.layers.arcface_reference import norm_l2_cpu

    net = _net('layer { name: "n" type: "NormL2" bottom: "x" top: "y" }', {"x": shape})
    x = np.random.default_rng(4).standard_normal(shape).astype(f32)
    got = _run(net, {"x": x}, dynamic_batch=True)["y"]
    _close(got, norm_l2_cpu(x).reshape(got.shape))


@pytest.mark.parametrize("bc", [False, True])
def test_dense_block_at_test(bc):
    from tests.layers.denseblock_reference import dense_block

    net = _net('layer { name: "db" type: "DenseBlock" bottom: "x" top: "y" denseblock_param { numTransition: 2 '
               f'growthRate: 2 use_BC: {str(bc).lower()} Filter_Filler {{ type: "msra" }} BN_Scaler_Filler {{ '
               'type: "uniform" min: 0.5 max: 1.5 } BN_Bias_Filler { type: "uniform" min: -0.2 max: 0.2 } } }',
               {"x": (2, 3, 4, 5)})
    r = np.random.default_rng(5)
    T = 2
    stats = list(range(3 * T, 5 * T)) + (list(range(8 * T, 10 * T)) if bc else [])
    with torch.no_grad():  # stored statistics other than the set-up's 0 and 1
        for i in stats:
            b = net.layer("db").blobs[i]
            b.copy_(torch.from_numpy(r.uniform(0.5, 1.5, tuple(b.shape)) if (i // T) % 5 == 4 else
                                     r.uniform(-0.3, 0.3, tuple(b.shape))))
    x = r.standard_normal((2, 3, 4, 5)).astype(f32)
    got = _run(net, {"x": x}, dynamic_batch=True)["y"]
    _close(got, dense_block(x.astype(np.float64), _params(net, "db"), T, bc, False, 0.0))


def test_dense_block_refuses_the_train_phase():
    from google.protobuf import text_format

    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError
    from neocaffe.graph.net import Net
    from neocaffe.proto import caffe_pb2

    net = Net(text_format.Parse('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 '
                                'dim: 5 } } } layer { name: "db" type: "DenseBlock" bottom: "x" top: "y" denseblock_param '
                                '{ numTransition: 1 growthRate: 2 } }', caffe_pb2.NetParameter()), 0)
    with pytest.raises(ExportError, match="'db'.*TRAIN"):
        export_onnx(net)


# -- ROIMaskPooling ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("half, roi_scale", [(0, 1.0), (1, 1.0), (4, 0.8), (2, 1.5), (3, 1.0)])
def test_roi_mask_pooling_without_a_mask(half, roi_scale):
    from tests.layers.frcnn_reference import roi_mask_pool_forward

    rois = np.array([[0, 2, 3, 30, 28], [1, 0, 0, 35, 31], [1, 10, 4, 20, 22], [0, 6, 2, 14, 18], [1, 40, 30, 9, 3]], f32)
    net = _net(f'layer {{ name: "rmp" type: "ROIMaskPooling" bottom: "x" bottom: "rois" top: "y" roi_mask_pooling_param '
               f'{{ pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 half_part: {half} roi_scale: {roi_scale} }} }}',
               {"x": (2, 3, 8, 9), "rois": rois.shape})
    x = np.random.default_rng(11).standard_normal((2, 3, 8, 9)).astype(f32)
    got = _run(net, {"x": x, "rois": rois}, dynamic_batch=True)["y"]
    _close(got, roi_mask_pool_forward(x, rois, 3, 2, 0.25, half, roi_scale, 0.0)[0])


def test_roi_mask_pooling_with_a_mask_is_refused():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _net('layer { name: "rmp" type: "ROIMaskPooling" bottom: "x" bottom: "rois" top: "y" roi_mask_pooling_param '
               '{ pooled_h: 3 pooled_w: 2 mask_scale: 0.5 } }', {"x": (1, 3, 8, 9), "rois": (2, 5)})
    with pytest.raises(ExportError, match=r"'rmp' \(ROIMaskPooling\): roi_mask_pooling_param.mask_scale = 0.5"):
        export_onnx(net)


# -- FlowNet 2.0 / LiteFlowNet small layers ---------------------------------------------------------------------
def test_neg_relu_neg_square_mean_grid():
    from tests.layers.liteflownet_reference import grid_forward, negsquare_forward

    net = _net('layer { name: "nr" type: "NegReLU" bottom: "x" top: "nr" relu_param { negative_slope: 0.3 } }\n'
               'layer { name: "ns" type: "NegSquare" bottom: "x" top: "ns" }\n'
               'layer { name: "g" type: "Grid" bottom: "x" top: "g" }\n'
               'layer { name: "m" type: "Mean" bottom: "x" bottom: "b" top: "ma" top: "mb" mean_param { operation: '
               'SUBTRACT value: 0.4 value: 0.5 value: 0.6 input_scale: 2 output_scale: 0.5 } }',
               {"x": (2, 3, 4, 5), "b": (1, 6, 1, 2)})
    r = np.random.default_rng(6)
    x, b = r.standard_normal((2, 3, 4, 5)).astype(f32), r.standard_normal((1, 6, 1, 2)).astype(f32)
    got = _run(net, {"x": x, "b": b})
    _close(got["nr"], np.where(x < 0, x, x * f32(0.3)))
    _close(got["ns"], negsquare_forward(x))
    _close(got["g"], grid_forward(2, 4, 5).reshape(2, 2, 4, 5))
    m = np.tile(f32([0.4, 0.5, 0.6]), 2)
    _close(got["ma"], 0.5 * (2 * x - m[:3].reshape(1, 3, 1, 1)))
    _close(got["mb"], 0.5 * (2 * b - m.reshape(1, 6, 1, 1)))


@pytest.mark.parametrize("fields, inputs, size", [("", ((2, 2, 3, 4), (2, 1, 5, 7)), (5, 7)),
                                                  ("accum_param { size_divisible_by: 4 }", ((2, 2, 3, 4), (2, 1, 5, 7)), (8, 8)),
                                                  ("accum_param { have_reference: true }", ((2, 2, 3, 4), (1, 1, 6, 9)), (6, 9))])
def test_accum(fields, inputs, size):
    from tests.layers.flownet_reference import accum_forward

    ref_top = "have_reference" in fields
    net = _net(f'layer {{ name: "acc" type: "Accum" bottom: "a" bottom: "b" top: "y" {fields} }}',
               dict(zip("ab", inputs)))
    r = np.random.default_rng(7)
    a, b = (r.standard_normal(s).astype(f32) for s in inputs)
    got = _run(net, {"a": a, "b": b})["y"]
    _close(got, accum_forward([a] if ref_top else [a, b], *size))


@pytest.mark.parametrize("top", [(4, 5), (3, 7), (9, 13)])
def test_downsample(top):
    from tests.layers.flownet_reference import downsample_forward

    net = _net(f'layer {{ name: "ds" type: "Downsample" bottom: "x" top: "y" downsample_param {{ top_height: {top[0]} '
               f'top_width: {top[1]} }} }}', {"x": (2, 2, 9, 13)})
    x = np.random.default_rng(8).standard_normal((2, 2, 9, 13)).astype(f32)
    x[0, 0, 2:5, 3:7] = np.nan  # NaN weighed apart: NaN where it outweighs the rest
    x[1, 1, 4, 4] = np.nan
    got = _run(net, {"x": x})["y"]
    ref = downsample_forward(x, *top)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    _close(got, ref)


@pytest.mark.parametrize("fields", ["", "expmax_param { base: 2 scale: -0.5 shift: 0.25 }"])
def test_exp_max(fields):
    from tests.layers.liteflownet_reference import expmax_forward, expmax_scales

    net = _net(f'layer {{ name: "e" type: "ExpMax" bottom: "x" top: "y" {fields} }}', {"x": (3, 4, 2, 3)})
    x = np.random.default_rng(9).standard_normal((3, 4, 2, 3)).astype(f32)
    x[0, 1, 0, 0] = np.nan  # skipped by the maximum
    got = _run(net, {"x": x}, dynamic_batch=True)["y"]
    base, scale, shift = (2, -0.5, 0.25) if fields else (-1, 1, 0)
    _close(got, expmax_forward(x, *expmax_scales(base, scale, shift)))


@pytest.mark.parametrize("first, last", [("Downsample_img0_aug_L2", "Downsample_img1_aug_L6"),
                                         ("img_diff_L6", "coords_L5")])
def test_liteflownet_deploy_sections_export(first, last, tmp_path):
    """Sections of LiteFlowNet's released deploy net (tests/layers/data/liteflownet/, 64 x 96) without its Warp
    (refused): the Downsample pyramid, and level 6's regularisation (ChannelNorm, NegSquare, ExpMax, ...) up to the
    next Grid. Their outside bottoms become Inputs fed with the whole net's values."""
    from google.protobuf import text_format

    from neocaffe.graph.net import Net
    from neocaffe.proto import caffe_pb2
    from tests.layers.test_liteflownet import _randomized, _substituted

    src = text_format.Parse(_substituted("deploy.prototxt", 64, 96, tmp_path), caffe_pb2.NetParameter())
    full = caffe_pb2.NetParameter(name=src.name)
    for name in ("img0", "img1"):
        full.layer.add(name=name, type="Input", top=[name]).input_param.shape.add(dim=[1, 3, 64, 96])
    full.layer.extend(lp for lp in src.layer if lp.type not in ("ImageData", "Silence"))
    net = Net(full)
    _randomized(net, 0)
    img0 = np.random.default_rng(12).random((1, 3, 64, 96)).astype(f32) * 255
    with torch.no_grad():
        net.forward({"img0": torch.from_numpy(img0), "img1": torch.from_numpy(np.roll(img0, (1, 2), (2, 3)))})
    names = [lp.name for lp in full.layer]
    section = [lp for lp in full.layer[names.index(first):names.index(last) + 1] if lp.type != "Warp"]
    made = {t for lp in section for t in lp.top if t not in lp.bottom}
    outside = list(dict.fromkeys(b for lp in section for b in lp.bottom if b not in made))
    sub = caffe_pb2.NetParameter(name="section")
    for b in outside:
        sub.layer.add(name=b, type="Input", top=[b]).input_param.shape.add(dim=list(net.blob(b).shape))
    sub.layer.extend(section)
    sub.lineage = "liteflownet"
    subnet = Net(sub)
    _randomized(subnet, 1)
    types = {lp.type for lp in section}
    assert ({"Downsample"} if first.startswith("Downsample") else {"NegSquare", "ExpMax", "Grid", "ChannelNorm"}) <= types
    _run(subnet, {b: net.blob(b).detach().numpy().astype(f32) for b in outside})


@pytest.mark.gpu
def test_vision2_exports_match_the_cuda_forward():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import onnxruntime_outputs, scaled_error
    from tests.export.helpers import TOLERANCE, cuda_forward

    net = _net('layer { name: "st" type: "SpatialTransformer" bottom: "u" bottom: "theta" top: "v" st_param { '
               'output_H: 5 output_W: 7 } }\n'
               'layer { name: "dc" type: "DeformableConvolution" bottom: "u" bottom: "off" top: "d" '
               'deformable_convolution_param { num_output: 4 kernel_size: 3 pad: 1 deformable_group: 1 weight_filler { '
               'type: "gaussian" std: 0.3 } } }\n'
               'layer { name: "psa" type: "PointwiseSpatialAttention" bottom: "u" bottom: "mask" top: "p" '
               'pointwise_spatial_attention_param { psa_type: DISTRIBUTE is_softmax: true } }',
               {"u": (2, 3, 4, 4), "theta": (2, 6), "off": (2, 18, 4, 4), "mask": (2, 49, 4, 4)})
    r = np.random.default_rng(10)
    inputs = {"u": r.standard_normal((2, 3, 4, 4)), "theta": np.tile([1.1, 0.1, 0.05, -0.1, 0.9, 0.1], (2, 1)),
              "off": r.standard_normal((2, 18, 4, 4)), "mask": r.standard_normal((2, 49, 4, 4))}
    inputs = {k: v.astype(f32) for k, v in inputs.items()}
    got = onnxruntime_outputs(export_onnx(net), inputs, list(net.outputs))
    ran = cuda_forward(net, inputs)
    for k in net.outputs:
        assert scaled_error(got[k], ran[k]) <= TOLERANCE, k
