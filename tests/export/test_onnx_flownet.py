"""FlowNet 2.0's and PWC-Net's layers exported to ONNX (``neocaffe.export.onnx_flownet``) equal neocaffe's
layers under onnxruntime, one layer at a time on random inputs and PWC-Net's test net end to end (64 x 64,
random weights, built as tests/layers/test_flownet_nets.py builds it)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.proto import caffe_pb2
from tests.export.helpers import TOLERANCE, onnx_errors

pytest.importorskip("onnxruntime")

f32 = np.float32


def _net(body: str, inputs: dict[str, tuple[int, ...]], lineage: str = ""):
    from neocaffe.graph.net import Net

    text = "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                   f'{" ".join(f"dim: {d}" for d in s)} }} }} }}\n' for k, s in inputs.items())
    param = text_format.Parse(text + body, caffe_pb2.NetParameter())
    if lineage:
        param.lineage = lineage
    return Net(param)


def _errors(net, inputs, **kw):
    errors = onnx_errors(net, inputs, **kw)
    assert max(errors.values()) <= TOLERANCE, errors
    return errors


CORR = [("Correlation", "pad: 4 kernel_size: 1 max_displacement: 4 stride_1: 1 stride_2: 1"),  # PWC-Net's
        ("Correlation", "pad: 4 kernel_size: 1 max_displacement: 4 stride_1: 1 stride_2: 2"),
        ("Correlation", "pad: 2 kernel_size: 3 max_displacement: 2 stride_1: 2 stride_2: 2"),
        ("Correlation", "pad: 1 kernel_size: 3 max_displacement: 1 correlation_type: SUBTRACT"),
        ("Correlation1D", "pad: 3 kernel_size: 1 max_displacement: 3 stride_2: 1"),
        ("Correlation1D", "pad: 2 kernel_size: 3 max_displacement: 2 stride_1: 2 single_direction: 1")]


@pytest.mark.parametrize("kind, fields", CORR)
def test_correlation(kind, fields):
    net = _net(f'layer {{ name: "c" type: "{kind}" bottom: "a" bottom: "b" top: "c" correlation_param {{ {fields} }} }}',
               {"a": (2, 5, 9, 11), "b": (2, 5, 9, 11)})
    r = np.random.default_rng(1)
    _errors(net, {k: r.standard_normal((2, 5, 9, 11)).astype(f32) for k in "ab"})


def _flow(r, shape, h, w):
    """Flows that leave the image, land on integer positions and on the last row and column exactly."""
    flow = r.uniform(-3, 3, shape).astype(f32)
    flow[:, :, ::3] = np.round(flow[:, :, ::3])
    ys, xs = np.mgrid[0:shape[2], 0:shape[3]].astype(f32)
    flow[0, 0, 1] = (w - 1) - xs[1]  # x exactly W - 1
    flow[0, 1, 2] = (h - 1) - ys[2]  # y exactly H - 1
    flow[1, 0, 0, :3] = -xs[0, :3] - f32(1e-3)  # just left of the image
    return flow


def test_pwcnet_warp():
    net = _net('layer { name: "w" type: "Warp" bottom: "u" bottom: "f" top: "v" }', {"u": (2, 3, 7, 9), "f": (2, 2, 7, 9)})
    r = np.random.default_rng(2)
    _errors(net, {"u": r.standard_normal((2, 3, 7, 9)).astype(f32), "f": _flow(r, (2, 2, 7, 9), 7, 9)})


@pytest.mark.parametrize("fill", ["ZERO", "NOT_A_NUMBER"])
def test_flow_warp(fill):
    net = _net(f'layer {{ name: "w" type: "FlowWarp" bottom: "u" bottom: "f" top: "v" '
               f'flow_warp_param {{ fill_value: {fill} }} }}', {"u": (2, 3, 7, 9), "f": (2, 2, 7, 9)})
    r = np.random.default_rng(3)
    _errors(net, {"u": r.standard_normal((2, 3, 7, 9)).astype(f32), "f": _flow(r, (2, 2, 7, 9), 7, 9)})


def test_liteflownet_warp_is_refused():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _net('layer { name: "w" type: "Warp" bottom: "u" bottom: "f" top: "v" }', {"u": (1, 3, 5, 6), "f": (1, 2, 5, 6)},
               lineage="liteflownet")
    with pytest.raises(ExportError, match=r"layer 'w' \(Warp\).*LiteFlowNet"):
        export_onnx(net)


RESAMPLE = [("LINEAR", True, (16, 16), (64, 64)),  # PWC-Net's flow upsampling
            ("LINEAR", True, (64, 64), (64, 64)),
            ("LINEAR", True, (12, 20), (5, 7)),  # antialiased downsampling, fx != fy
            ("LINEAR", False, (12, 20), (5, 7)),
            ("LINEAR", True, (6, 8), (9, 20)),
            ("CUBIC", False, (6, 8), (9, 12)),
            ("CUBIC", True, (13, 9), (4, 5)),
            ("NEAREST", False, (6, 8), (12, 16)),
            ("NEAREST", False, (8, 4), (1, 1))]  # x_in = 4 - 0.5 rounds to 4: the next row's pixel, as the fork reads


@pytest.mark.parametrize("kind, aa, src, dst", RESAMPLE)
def test_resample(kind, aa, src, dst):
    net = _net(f'layer {{ name: "rs" type: "Resample" bottom: "x" top: "y" resample_param {{ height: {dst[0]} '
               f'width: {dst[1]} type: {kind} antialias: {str(aa).lower()} }} }}', {"x": (2, 3) + src})
    x = np.random.default_rng(4).standard_normal((2, 3) + src).astype(f32)
    _errors(net, {"x": x})


def test_resample_nearest_across_planes_is_refused():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    # fx = 2, fy = 1: y_in = 0 + 2 / 2 - 0.5 rounds to 1, past the only row: channel 0 would read channel 1
    net = _net('layer { name: "rs" type: "Resample" bottom: "x" top: "y" resample_param { height: 1 width: 1 '
               'type: NEAREST } }', {"x": (1, 2, 1, 2)})
    with pytest.raises(ExportError, match=r"layer 'rs' \(Resample\): NEAREST.*outside"):
        export_onnx(net)


def test_channel_norm_and_one_bottom_eltwise():
    net = _net('layer { name: "n" type: "ChannelNorm" bottom: "x" top: "n" }\n'
               'layer { name: "w" type: "Warp" bottom: "x" bottom: "f" top: "v" }\n'
               'layer { name: "s" type: "Eltwise" bottom: "f" top: "s" eltwise_param { operation: SUM coeff: 0.625 } }',
               {"x": (2, 4, 5, 6), "f": (2, 2, 5, 6)})
    r = np.random.default_rng(5)
    _errors(net, {"x": r.standard_normal((2, 4, 5, 6)).astype(f32), "f": _flow(r, (2, 2, 5, 6), 5, 6)})


def test_dynamic_batch_warp_and_correlation():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs, scaled_error

    net = _net('layer { name: "w" type: "Warp" bottom: "u" bottom: "f" top: "v" }\n'
               'layer { name: "c" type: "Correlation" bottom: "u" bottom: "v" top: "c" correlation_param { '
               'pad: 2 kernel_size: 1 max_displacement: 2 } }', {"u": (1, 3, 6, 7), "f": (1, 2, 6, 7)})
    model = export_onnx(net, dynamic_batch=True)
    r = np.random.default_rng(6)
    inputs = {"u": r.standard_normal((3, 3, 6, 7)).astype(f32), "f": _flow(r, (3, 2, 6, 7), 6, 7)}
    got = onnxruntime_outputs(model, inputs, list(net.outputs))
    ref = neocaffe_outputs(net, inputs)
    assert all(scaled_error(got[o], ref[o]) <= TOLERANCE for o in ref)


def test_pwcnet_test_net_matches_onnxruntime():
    from tests.layers.test_flownet_nets import _substituted, _with_inputs
    from neocaffe.graph.net import Net

    src = text_format.Parse(_substituted("model/pwc_net_test.prototxt", 64, 64), caffe_pb2.NetParameter())
    net = Net(_with_inputs(src, {"ImageData", "Silence", "DataAugmentation", "FLOWriter"},
                           {"img0_nomean": [1, 3, 64, 64], "img1_nomean": [1, 3, 64, 64]}))
    r = np.random.default_rng(3)
    img0 = r.random((1, 3, 64, 64)).astype(f32)
    img1 = np.roll(img0, shift=(1, 2), axis=(2, 3))
    errors = _errors(net, {"img0_nomean": img0, "img1_nomean": img1})
    assert "predict_flow_final" in errors and errors["predict_flow_final"] <= TOLERANCE
    assert torch.isfinite(net.blob("predict_flow_final")).all()
