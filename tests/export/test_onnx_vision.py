"""C3D's 3-D layers, Ristretto's quantized layers, R-FCN's PSROIPooling, cascade-rcnn's ROIAlign and C3D's
VoxelWiseSoftmax exported to ONNX (``neocaffe.export.onnx_vision``) against neocaffe's forward under onnxruntime
and against the NumPy loop ports of the forks' code in tests/layers/ (C3D: test_c3d.py, test_c3d_v2v.py; Ristretto's
quantizers: test_ristretto.py; PSROIPooling: rcnn_reference.py; ROIAlign: cascade_reference.py); C3D's Sports-1M
feature extractor (tests/layers/data/c3d/, widths shrunk) exported whole."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.proto import caffe_pb2
from tests.export.helpers import TOLERANCE, cuda_forward

pytest.importorskip("onnxruntime")

f32 = np.float32
C3D_DATA = Path(__file__).parents[1] / "layers" / "data" / "c3d"


def _net(body: str, inputs: dict[str, tuple[int, ...]]):
    from neocaffe.graph.net import Net

    text = "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                   f'{" ".join(f"dim: {d}" for d in s)} }} }} }}\n' for k, s in inputs.items())
    return Net(text_format.Parse(text + body, caffe_pb2.NetParameter()))


def _run(net, inputs: dict[str, np.ndarray], **kw) -> dict[str, np.ndarray]:
    """The net exported, run on onnxruntime; asserts it equals neocaffe's forward within TOLERANCE."""
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs, scaled_error

    got = onnxruntime_outputs(export_onnx(net, **kw), inputs, list(net.outputs))
    want = neocaffe_outputs(net, inputs)
    for k in want:
        assert scaled_error(got[k], want[k]) <= TOLERANCE, (k, scaled_error(got[k], want[k]))
    return got


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    from neocaffe.export.verify import scaled_error

    assert scaled_error(got, np.asarray(ref, f32)) <= TOLERANCE, scaled_error(got, np.asarray(ref, f32))


def _blobs(net, name: str) -> list[np.ndarray]:
    return [b.detach().numpy().astype(np.float64) for b in net.layer(name).blobs]


# -- C3D ----------------------------------------------------------------------------------------------------
CONV3D = [  # (C, L, H, W), num_output, k, kd, pad, tpad, stride, tstride
    ((2, 4, 5, 6), 4, 3, 3, 1, 1, 1, 1),
    ((1, 1, 2, 4), 2, 3, 2, 0, 0, 2, 3),  # shorter than the kernel: C's division still gives one output
    ((2, 3, 4, 4), 3, 3, 1, 2, 0, 3, 1)]


@pytest.mark.parametrize("case", CONV3D)
def test_convolution3d(case):
    from tests.layers.test_c3d import conv3d_ref

    (C, L, H, W), O, k, kd, pad, tpad, s, ts = case
    net = _net(f'layer {{ name: "c" type: "Convolution3D" bottom: "x" top: "y" convolution_param {{ num_output: {O} '
               f'kernel_size: {k} kernel_depth: {kd} pad: {pad} temporal_pad: {tpad} stride: {s} temporal_stride: {ts} '
               'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }',
               {"x": (2, C, L, H, W)})
    x = np.random.default_rng(0).standard_normal((2, C, L, H, W)).astype(f32)
    got = _run(net, {"x": x})["y"]
    wt, b = _blobs(net, "c")
    _close(got, conv3d_ref(x.astype(np.float64), wt, b, (k, kd, pad, tpad, s, ts), 1))


@pytest.mark.parametrize("case", [((2, 2, 1, 2, 3), 2, 4, 4, 1, 1, 2, 2), ((1, 2, 2, 3, 3), 3, 2, 1, 2, 0, 3, 1)])
def test_deconvolution3d(case):
    from tests.layers.test_c3d_v2v import deconv3d_ref

    shape, O, k, kd, pad, tpad, s, ts = case
    net = _net(f'layer {{ name: "d" type: "Deconvolution3D" bottom: "x" top: "y" convolution_param {{ num_output: {O} '
               f'kernel_size: {k} kernel_depth: {kd} pad: {pad} temporal_pad: {tpad} stride: {s} temporal_stride: {ts} '
               'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }',
               {"x": shape})
    x = np.random.default_rng(1).standard_normal(shape).astype(f32)
    got = _run(net, {"x": x})["y"]
    wt, b = _blobs(net, "d")
    _close(got, deconv3d_ref(x.astype(np.float64), wt, b, (k, kd, pad, tpad, s, ts)))


POOL3D = [("MAX", 2, 2, 2, 2, 0, (1, 2, 5, 5, 7)), ("MAX", 3, 1, 2, 1, 0, (1, 2, 5, 5, 7)),
          ("MAX", 2, 2, 3, 3, 0, (1, 1, 7, 9, 7)),  # a last window wholly past the bottom: -FLT_MAX
          ("AVE", 3, 2, 2, 2, 1, (1, 2, 5, 5, 7)), ("AVE", 2, 3, 1, 1, 0, (2, 2, 5, 5, 7)),
          ("AVE", 2, 2, 3, 3, 1, (1, 1, 7, 9, 7))]  # ceil rounding, no clipping of the last window


@pytest.mark.parametrize("pool, k, kd, s, ts, pad, shape", POOL3D)
def test_pooling3d(pool, k, kd, s, ts, pad, shape):
    from tests.layers.test_c3d import pool3d_ref

    net = _net(f'layer {{ name: "p" type: "Pooling3D" bottom: "x" top: "y" pooling_param {{ pool: {pool} kernel_size: {k} '
               f'kernel_depth: {kd} stride: {s} temporal_stride: {ts} pad: {pad} }} }}', {"x": shape})
    x = np.random.default_rng(2).standard_normal(shape).astype(f32)
    got = _run(net, {"x": x})["y"]
    ref = pool3d_ref(x, pool == "AVE", k, kd, s, ts, pad)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    _close(got, ref)


def test_c3d_sport1m_feature_extractor_exports_whole():
    """The released feature extractor (V1 layers), data layer replaced by an Input, widths shrunk: C3D's
    16 x 112 x 112 geometry through five Pooling3D (pool5 rounds 7 up to 4) and the fc head."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    path = C3D_DATA / "c3d_sport1m_feature_extractor_frm.prototxt"
    text = path.read_text()
    for big, small in (("64", "2"), ("128", "2"), ("256", "4"), ("512", "4"), ("4096", "8")):
        text = re.sub(rf"num_output: {big}\b", f"num_output: {small}", text)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "net.prototxt").write_text(text)
        param = read_net(str(Path(d) / "net.prototxt"))
    layers = [lp for lp in param.layer if lp.type not in ("VideoData", "Accuracy")]
    del param.layer[:]
    inp = param.layer.add()
    inp.CopyFrom(text_format.Parse('name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 '
                                   'dim: 16 dim: 112 dim: 112 } }', caffe_pb2.LayerParameter()))
    param.layer.extend(layers)
    net = Net(param)
    assert tuple(net.blob_shapes["pool5"]) == (1, 4, 1, 4, 4)
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 16, 112, 112)).astype(f32)
    _run(net, {"data": x})


# -- Ristretto ------------------------------------------------------------------------------------------------
Q = {"fixed": "bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 6 fl_layer_out: 2 bw_params: 8 fl_params: 6",
     "minifloat": "precision: MINIFLOAT mant_bits: 3 exp_bits: 4",
     "pow2": "precision: INTEGER_POWER_OF_2_WEIGHTS exp_min: -4 exp_max: 0 bw_layer_in: 8 fl_layer_in: 4 "
             "bw_layer_out: 8 fl_layer_out: 3"}
CONV = ('convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 weight_filler { type: "gaussian" '
        'std: 0.3 } bias_filler { type: "gaussian" std: 0.5 } }')
FC = 'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.5 } }'


@pytest.mark.parametrize("kind", list(Q))
@pytest.mark.parametrize("type_name, geometry, shape", [("ConvolutionRistretto", CONV, (2, 4, 5, 6)),
                                                         ("DeconvolutionRistretto", CONV, (2, 4, 3, 4)),
                                                         ("FcRistretto", FC, (3, 2, 2, 2))])
def test_ristretto_layers_at_test(type_name, geometry, shape, kind):
    """Bit for bit: the weights are the layer's own quantized copies, the activations trimmed alike (with fixed-point
    activations and weights every product and sum is exact in float32, whatever the order of summation)."""
    net = _net(f'layer {{ name: "q" type: "{type_name}" bottom: "x" top: "y" {geometry} quantization_param {{ {Q[kind]} }} }}',
               {"x": shape})
    x = (np.random.default_rng(4).standard_normal(shape) * 3).astype(f32)
    got = _run(net, {"x": x})["y"]
    from neocaffe.export.verify import neocaffe_outputs

    want = neocaffe_outputs(net, {"x": x})["y"]
    assert np.array_equal(got, want) if kind != "minifloat" else np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()


def test_lrn_ristretto():
    net = _net('layer { name: "n" type: "LRNRistretto" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.0001 '
               'beta: 0.75 } quantization_param { precision: MINIFLOAT mant_bits: 10 exp_bits: 5 } }\n'
               'layer { name: "m" type: "LRNRistretto" bottom: "x" top: "z" lrn_param { local_size: 3 alpha: 0.5 '
               'beta: 0.6 k: 2 } quantization_param { precision: MINIFLOAT mant_bits: 3 exp_bits: 4 } }', {"x": (2, 7, 3, 4)})
    x = (np.random.default_rng(5).standard_normal((2, 7, 3, 4)) * 4).astype(f32)
    got = _run(net, {"x": x})
    from neocaffe.export.verify import neocaffe_outputs

    want = neocaffe_outputs(net, {"x": x})
    assert all(np.array_equal(got[k], want[k]) for k in "yz")
    # larger values for the 10/5-bit format only: the 3/4-bit one saturates x^2 there and its sums go negative
    _run(_net('layer { name: "n" type: "LRNRistretto" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.0001 '
              'beta: 0.75 } quantization_param { precision: MINIFLOAT mant_bits: 10 exp_bits: 5 } }', {"x": x.shape}),
         {"x": x * f32(10)})


@pytest.mark.parametrize("mant, exp, ties_even", [(10, 5, False), (3, 4, False), (2, 3, True), (23, 8, False), (0, 2, False),
                                                   (5, 12, True)])
def test_minifloat_ops_equal_the_forks_quantizer(mant, exp, ties_even):
    """The ONNX minifloat on every kind of float32 (random bit patterns, powers of two, ties) equals
    test_ristretto.py's port of Trim2MiniFloat bit for bit."""
    from neocaffe.export.onnx_vision import trim_minifloat
    from tests.layers.test_ristretto import port_minifloat

    x = _values()
    got = _quantizer(lambda g, t: trim_minifloat(g, t, mant, exp, ties_even), x)
    assert np.array_equal(got, port_minifloat(x, mant, exp, 0, ties_even=ties_even))


@pytest.mark.parametrize("bw, fl", [(8, 5), (6, 2), (16, -3), (32, 16), (4, 140)])
def test_fixed_point_ops_equal_the_forks_quantizer(bw, fl):
    from neocaffe.export.onnx_vision import trim_fixed_point
    from tests.layers.test_ristretto import port_fixed_point

    x = _values()
    assert np.array_equal(_quantizer(lambda g, t: trim_fixed_point(g, t, bw, fl), x), port_fixed_point(x, bw, fl, 0))


def _values() -> np.ndarray:
    r = np.random.default_rng(6)
    bits = r.integers(0, 2 ** 32, 4000, dtype=np.uint64).astype(np.uint32).view(f32)
    special = f32([0, -0.0, 1, 2, 0.5, 1.5, 2.5, -2.5, 1.75, 0.1875, np.finfo(f32).tiny, 2.0 ** 127, 3e38, 1e-40,
                   np.inf, -np.inf])
    x = np.concatenate([bits, special, (r.standard_normal(2000) * 10).astype(f32)])
    return x[~np.isnan(x)].astype(f32)  # a NaN stays NaN (module docstring), the fork saturates its bits


def _quantizer(build, x: np.ndarray) -> np.ndarray:
    from neocaffe.export.onnx_graph import OnnxGraph, helper
    from neocaffe.export.verify import onnxruntime_outputs

    g = OnnxGraph()
    g.reserve("x")
    g.nodes.append(helper.make_node("Identity", [build(g, "x")], ["y"]))
    info = [helper.make_tensor_value_info(k, 1, None) for k in "xy"]
    model = helper.make_model(helper.make_graph(g.nodes, "q", info[:1], info[1:], g.initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    return onnxruntime_outputs(model, {"x": x}, ["y"])["y"]


def test_ristretto_squeezenet_exports_whole():
    """Ristretto's SqueezeNet demo as its tool wrote it (test_ristretto.py's trimmed copy: conv1, fire2, conv10
    with their dynamic fixed-point settings), the data, loss and accuracy layers replaced by an Input."""
    from neocaffe.graph.net import Net
    from tests.layers.test_ristretto import SQUEEZENET_QUANTIZED

    param = text_format.Parse(SQUEEZENET_QUANTIZED.replace("{SOURCE}", "unused.txt"), caffe_pb2.NetParameter())
    layers = [lp for lp in param.layer if lp.type not in ("HDF5Data", "SoftmaxWithLoss", "Accuracy")]
    assert sum(lp.type == "ConvolutionRistretto" for lp in layers) == 5
    del param.layer[:]
    param.layer.add().CopyFrom(text_format.Parse('name: "data" type: "Input" top: "data" input_param { shape { dim: 2 '
                                                 'dim: 3 dim: 39 dim: 39 } }', caffe_pb2.LayerParameter()))
    param.layer.extend(layers)
    net = Net(param)
    x = (np.random.default_rng(11).uniform(-1, 1, (2, 3, 39, 39)) * 60).astype(f32)
    got = _run(net, {"data": x})
    from neocaffe.export.verify import neocaffe_outputs

    want = neocaffe_outputs(net, {"data": x})
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("field", ["rounding_scheme: STOCHASTIC", "phase"])
def test_ristretto_refuses_what_draws_random_numbers(field):
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError
    from neocaffe.graph.net import Net

    text = (f'layer {{ name: "x" type: "Input" top: "x" input_param {{ shape {{ dim: 2 dim: 4 dim: 5 dim: 6 }} }} }}\n'
            f'layer {{ name: "q" type: "ConvolutionRistretto" bottom: "x" top: "y" {CONV} quantization_param {{ '
            f'{Q["fixed"]} {field if field != "phase" else ""} }} }}')
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    net = Net(param, 0) if field == "phase" else Net(param)
    with pytest.raises(ExportError, match="'q'.*(STOCHASTIC|TRAIN)"):
        export_onnx(net)


# -- PSROIPooling, ROIAlign ----------------------------------------------------------------------------------------
ROIS = np.array([[0, 0, 0, 11, 9], [1, 3.5, 2.4, 9.2, 7.8], [1, 8, 6, 8, 6], [0, -6, -4, 40, 30],
                 [1, 10.5, 9, 4, 3], [0, 2.5, 1.5, 7.5, 6.5]], f32)  # halves: C's round goes away from zero


@pytest.mark.parametrize("dynamic", [False, True])
def test_psroi_pooling(dynamic):
    from tests.layers.rcnn_reference import psroi_pool

    net = _net('layer { name: "p" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" psroi_pooling_param { '
               'spatial_scale: 0.5 output_dim: 2 group_size: 3 } }', {"x": (2, 18, 6, 7), "rois": ROIS.shape})
    x = np.random.default_rng(7).standard_normal((2, 18, 6, 7)).astype(f32)
    got = _run(net, {"x": x, "rois": ROIS}, dynamic_batch=dynamic)["y"]
    _close(got, psroi_pool(x, ROIS, 0.5, 2, 3))


@pytest.mark.parametrize("pad_ratio", [0.0, 0.1])
def test_roi_align(pad_ratio):
    from tests.layers.cascade_reference import roi_align_forward

    net = _net(f'layer {{ name: "a" type: "ROIAlign" bottom: "x" bottom: "rois" top: "y" roi_pooling_param {{ '
               f'pooled_h: 3 pooled_w: 2 spatial_scale: 0.45 pad_ratio: {pad_ratio} }} }}',
               {"x": (2, 3, 6, 7), "rois": ROIS.shape})
    x = np.random.default_rng(8).standard_normal((2, 3, 6, 7)).astype(f32)
    got = _run(net, {"x": x, "rois": ROIS})["y"]
    _close(got, roi_align_forward(x, ROIS, 3, 2, 0.45, pad_ratio))


CASCADE = Path(__file__).parents[1] / "layers" / "data" / "cascade_rcnn"


def _rois(r, n: int, h: int, w: int) -> np.ndarray:
    x1, y1 = r.uniform(-8, w * 0.7, n), r.uniform(-8, h * 0.7, n)
    return np.stack([np.zeros(n), x1, y1, x1 + r.uniform(4, w * 0.6, n), y1 + r.uniform(4, h * 0.6, n)], 1).astype(f32)


@pytest.mark.parametrize("name, first, last, inputs, shrink", [
    # R-FCN's first stage: conv_new_1, rfcn_cls/bbox, PSROIPooling (21 x 7 x 7, 1/16) and the 7 x 7 AVE votes
    ("voc_res50-9s-600-rfcn-cascade_deploy.prototxt", "conv_new_1", "ave_bbox_pred_rois",
     {"res5c": (1, 8, 5, 6), "proposals": "rois"}, {"conv_new_1": 8}),
    # the FPN head's first stage: four ROIAlign (7 x 7 grids, 1/4 ... 1/32), 2 x 2 AVE, concat, fully connected
    ("coco_res50-15s-800-fpn-cascade_deploy.prototxt", "roi_grid_fpn2", "bbox_pred",
     {"fpn2": (1, 4, 16, 24), "fpn3": (1, 4, 8, 12), "fpn4": (1, 4, 4, 6), "fpn5": (1, 4, 2, 3),
      "proposals_to_fpn2": "rois", "proposals_to_fpn3": "rois", "proposals_to_fpn4": "rois", "proposals_to_fpn5": "rois"},
     {"fc1": 16, "fc2": 16})])
def test_cascade_rcnn_deploy_heads_export(name, first, last, inputs, shrink):
    """Sections of cascade-rcnn's released deploy nets (tests/layers/data/cascade_rcnn/) around PSROIPooling and
    ROIAlign, widths shrunk; their ScaleRoute (RoI routing) left out, its tops fed as inputs."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    src = read_net(str(CASCADE / name))
    names = [lp.name for lp in src.layer]
    section = [lp for lp in src.layer[names.index(first):names.index(last) + 1] if lp.type != "ScaleRoute"]
    assert {"PSROIPooling", "ROIAlign"} & {lp.type for lp in section}
    param = caffe_pb2.NetParameter(name="head")
    r = np.random.default_rng(13)
    feeds = {}
    for blob, shape in inputs.items():
        feeds[blob] = _rois(r, 5, 64, 96) if shape == "rois" else r.standard_normal(shape).astype(f32)
        param.layer.add(name=blob, type="Input", top=[blob]).input_param.shape.add(dim=list(feeds[blob].shape))
    for lp in section:
        layer = param.layer.add()
        layer.CopyFrom(lp)
        for field in ("convolution_param", "inner_product_param"):
            if lp.name in shrink and lp.HasField(field):
                getattr(layer, field).num_output = shrink[lp.name]
    net = Net(param)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layers:
            for b in layer.blobs:
                b.copy_(torch.randn(b.shape, generator=g) / max(b[0].numel(), 1) ** 0.5)
    _run(net, feeds)


def test_voxel_wise_softmax():
    net = _net('layer { name: "s" type: "VoxelWiseSoftmax" bottom: "x" top: "y" }', {"x": (2, 3, 2, 3, 2)})
    x = (np.random.default_rng(9).standard_normal((2, 3, 2, 3, 2)) * 3).astype(f32)
    got = _run(net, {"x": x}, dynamic_batch=True)["y"]
    e = np.exp(x - x.max(1, keepdims=True))
    _close(got, e / e.sum(1, keepdims=True))


@pytest.mark.gpu
def test_vision_exports_match_the_cuda_forward():
    """One ONNX model (exported from the CPU net) against neocaffe's forward on CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import onnxruntime_outputs, scaled_error

    net = _net('layer { name: "c" type: "Convolution3D" bottom: "v" top: "c" convolution_param { num_output: 3 '
               'kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }\n'
               'layer { name: "p" type: "Pooling3D" bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 2 '
               'kernel_depth: 2 stride: 2 temporal_stride: 2 pad: 1 } }\n'
               f'layer {{ name: "q" type: "ConvolutionRistretto" bottom: "x" top: "q" {CONV} quantization_param {{ '
               f'{Q["minifloat"]} }} }}\n'
               'layer { name: "ps" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "ps" psroi_pooling_param { '
               'spatial_scale: 0.5 output_dim: 1 group_size: 2 } }\n'
               'layer { name: "a" type: "ROIAlign" bottom: "x" bottom: "rois" top: "a" roi_pooling_param { '
               'pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 } }', {"v": (1, 2, 4, 5, 5), "x": (2, 4, 5, 6), "rois": ROIS.shape})
    r = np.random.default_rng(10)
    inputs = {"v": r.standard_normal((1, 2, 4, 5, 5)).astype(f32), "x": r.standard_normal((2, 4, 5, 6)).astype(f32),
              "rois": ROIS}
    got = onnxruntime_outputs(export_onnx(net), inputs, list(net.outputs))
    ran = cuda_forward(net, inputs)
    for k in net.outputs:
        assert scaled_error(got[k], ran[k]) <= TOLERANCE, k
