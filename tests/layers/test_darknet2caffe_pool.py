"""ChenYingpeng/darknet2caffe's Pooling (``lineage: "darknet2caffe"``; its ``caffe_layers/pooling_layer/pooling_layer.cpp``
@ f6d9ea33c199dc0881531f75651f2a9abafca73f) against the loop port ``tests/layers/darknet2caffe_pool_reference.py``:
the extra output row and column, MAX/AVE forward and backward at the extra windows, the lean kernels, the converter's
yolov3-tiny (``data/darknet2caffe/yolov3-tiny.prototxt``) built and run, its ONNX export, and the error without it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.errors import NetError
from neocaffe.layers.base import LayerSetupError, NetSoFar
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import darknet2caffe_pool_reference as ref

TINY = Path(__file__).parent / "data" / "darknet2caffe" / "yolov3-tiny.prototxt"
DARKNET = NetSoFar(caffe_pb2.NetParameter(lineage="darknet2caffe"))


def _layer(method: str, k, s, p, shape, net=DARKNET, mask=False):
    geo = (f"kernel_h: {k[0]} kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]}")
    tops = 'top: "y" top: "m"' if mask else 'top: "y"'
    lp = text_format.Parse(f'name: "pool" type: "Pooling" bottom: "x" {tops} '
                           f'pooling_param {{ pool: {method} {geo} }}', caffe_pb2.LayerParameter())
    return get_layer_class("Pooling")(lp, [shape], net=net)


# method, kernel, stride, pad, bottom shape
CASES = [
    ("MAX", (2, 2), (1, 1), (0, 0), (1, 3, 13, 13)),  # yolov3-tiny's layer12: 13x13 stays 13x13
    ("AVE", (2, 2), (1, 1), (0, 0), (2, 2, 6, 7)),
    ("MAX", (3, 3), (2, 2), (0, 0), (2, 2, 7, 9)),
    ("AVE", (3, 3), (2, 2), (0, 0), (2, 2, 7, 9)),
    ("MAX", (3, 3), (2, 2), (0, 0), (1, 2, 8, 6)),  # extra windows wholly past the input: -FLT_MAX
    ("AVE", (3, 3), (2, 2), (0, 0), (1, 2, 8, 6)),  # ... and AVE 0/0 = NaN, as the fork
    ("MAX", (3, 3), (2, 2), (1, 1), (1, 2, 7, 8)),  # pad: the clip takes the extra window back
    ("AVE", (4, 4), (1, 1), (1, 1), (1, 2, 6, 5)),  # pad, kept
    ("MAX", (4, 4), (1, 1), (1, 2), (2, 2, 5, 6)),
    ("AVE", (3, 2), (2, 2), (1, 0), (1, 2, 7, 8)),  # kernel_h - stride_h decides the width too
    ("MAX", (2, 2), (2, 2), (0, 0), (1, 3, 7, 7)),  # 2/2: no change
    ("AVE", (2, 2), (2, 2), (1, 1), (1, 2, 6, 7)),
    ("MAX", (2, 3), (3, 2), (0, 0), (1, 2, 9, 9)),  # negative difference: C++ % gives -1, no change
]


@pytest.mark.parametrize("method,k,s,p,shape", CASES)
def test_forward_and_backward_match_the_fork_loops(method, k, s, p, shape):
    r = np.random.default_rng(sum(shape) + sum(k) + sum(p))
    x = r.standard_normal(shape).astype(np.float32)
    want, want_mask = ref.forward(x, method, k, s, p)
    layer = _layer(method, k, s, p, shape, mask=method == "MAX")
    assert [tuple(t) for t in layer.reshape([shape])][0] == want.shape
    xt = torch.tensor(x, requires_grad=True)
    out = layer(xt)
    y = out[0] if method == "MAX" else out
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-6, equal_nan=True)
    if method == "MAX":
        np.testing.assert_array_equal(out[1].detach().numpy(), want_mask)
    td = r.standard_normal(want.shape).astype(np.float32)
    y.backward(torch.tensor(td))
    gd = ref.backward(shape, td, method, k, s, p, want_mask)
    np.testing.assert_allclose(xt.grad.numpy(), gd, rtol=1e-5, atol=1e-6)
    if not (k[0] - s[0] > 0 and (k[0] - s[0]) % 2 == 1):  # the rule does not apply: BVLC's sizes
        assert tuple(_layer(method, k, s, p, shape, net=None).reshape([shape])[0]) == want.shape


def test_sizes_follow_the_fork_reshape():
    for H in range(3, 12):
        for k, s, p in [((2, 2), (1, 1), (0, 0)), ((3, 3), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                        ((5, 5), (2, 2), (2, 2)), ((4, 4), (1, 1), (0, 0)), ((2, 2), (2, 2), (0, 0)),
                        ((3, 3), (2, 2), (2, 2))]:  # the last fails the fork's CHECK_LT at H = 3, 4
            try:
                want = ref.reshape(H, H + 1, k, s, p)
            except ValueError:
                with pytest.raises(LayerSetupError, match="CHECK_LT"):
                    _layer("MAX", k, s, p, (1, 1, H, H + 1))
                continue
            assert _layer("MAX", k, s, p, (1, 1, H, H + 1)).reshape([(1, 1, H, H + 1)])[0][2:] == want


def test_global_pooling_of_an_even_plane_gets_the_extra_window():
    # the fork's kernel is the plane and the stride 1: an even height gives an odd difference, so 2x2 out
    x = np.random.default_rng(5).standard_normal((1, 2, 4, 5)).astype(np.float32)
    lp = text_format.Parse('name: "g" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE global_pooling: true }',
                           caffe_pb2.LayerParameter())
    layer = get_layer_class("Pooling")(lp, [x.shape], net=DARKNET)
    want, _ = ref.forward(x, "AVE", (4, 5), (1, 1), (0, 0))
    assert want.shape == (1, 2, 2, 2)
    np.testing.assert_allclose(layer(torch.tensor(x)).numpy(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method,k,s,p,shape", [c for c in CASES if c[0] in ("MAX", "AVE")])
def test_lean_kernel_equals_forward(method, k, s, p, shape):
    x = torch.tensor(np.random.default_rng(7).standard_normal(shape).astype(np.float32))
    layer = _layer(method, k, s, p, shape)
    fn = layer.lean_kernel([x])
    if fn is None:
        pytest.skip("no lean kernel for this geometry")
    with torch.no_grad():
        np.testing.assert_array_equal(fn(x).numpy(), layer(x).numpy())


def _tiny_text(side: int, lineage: bool) -> str:
    text = TINY.read_text().replace("input_dim: 416\ninput_dim: 416", f"input_dim: {side}\ninput_dim: {side}")
    return ('lineage: "darknet2caffe"\n' if lineage else "") + text


def _tiny_net(side: int = 96):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    net = Net(read_net(_tiny_text(side, True)), 1)
    r = np.random.default_rng(0)
    with torch.no_grad():
        for layer in net.layers:
            kind = layer.param.type
            for i, b in enumerate(layer.blobs):
                if kind == "Convolution" and i == 0:
                    v = r.standard_normal(b.shape) * np.sqrt(2.0 / np.prod(b.shape[1:]))
                elif kind == "BatchNorm":
                    v = [r.standard_normal(b.shape) * 0.1, r.uniform(0.5, 1.5, b.shape), np.ones(b.shape)][i]
                elif kind == "Scale" and i == 0:
                    v = r.uniform(0.8, 1.2, b.shape)
                else:
                    v = r.standard_normal(b.shape) * 0.1
                b.copy_(torch.from_numpy(np.asarray(v, np.float32)))
    return net


def test_yolov3_tiny_builds_and_runs_with_the_lineage():
    from neocaffe.export.verify import neocaffe_outputs

    net = _tiny_net(96)
    assert tuple(net.blob_shapes["layer12-maxpool"]) == (1, 512, 3, 3)  # 3x3 stays 3x3 (BVLC: 2x2)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32)
    outs = neocaffe_outputs(net, {"data": x})
    assert {o: v.shape for o, v in outs.items()} == {"layer16-conv": (1, 255, 3, 3), "layer23-conv": (1, 255, 6, 6)}
    assert all(np.isfinite(v).all() for v in outs.values())
    # the stride-1 pool in the net against the fork's loops
    bottom = net.blob_data["layer11-conv"].detach().numpy()
    want, _ = ref.forward(bottom, "MAX", (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(net.blob_data["layer12-maxpool"].detach().numpy(), want)


def test_yolov3_tiny_without_the_lineage_names_the_fix():
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    with pytest.raises(NetError, match=r"layer21-route.*same shape.*layer12-maxpool.*lineage: \"darknet2caffe\""):
        Net(read_net(_tiny_text(96, False)), 1)


def test_shape_errors_without_the_converter_signature_have_no_hint():
    from neocaffe.graph.net import Net

    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 6 dim: 6 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 1 } }\n'
            'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "p" top: "e" }\n')
    with pytest.raises(NetError) as e:  # a 2/1 pool but no Upsample: a BVLC net
        Net(text_format.Parse(text, caffe_pb2.NetParameter()), 1)
    assert "darknet2caffe" not in str(e.value) and "same shape" in str(e.value)
    up = text.replace('layer { name: "e"', 'layer { name: "u" type: "Upsample" bottom: "p" top: "u" upsample_param { scale: 2 } }\n'
                      'layer { name: "e"')
    with pytest.raises(NetError, match='Eltwise.*lineage: "darknet2caffe"'):
        Net(text_format.Parse(up, caffe_pb2.NetParameter()), 1)
    net = Net(text_format.Parse('lineage: "darknet2caffe"\n' + up, caffe_pb2.NetParameter()), 1)
    assert tuple(net.blob_shapes["e"]) == (1, 2, 6, 6)


def test_yolov3_tiny_onnx_export_matches():
    pytest.importorskip("onnxruntime")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx

    net = _tiny_net(96)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 96, 96)).astype(np.float32)
    errors = check_onnx(export_onnx(net), net, {"data": x})
    assert max(errors.values()) <= 1e-5, errors


def test_yolov3_tiny_pt2_export_matches():
    from neocaffe.export.pt2 import export_pt2
    from neocaffe.export.verify import neocaffe_outputs

    net = _tiny_net(64)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    want = neocaffe_outputs(net, {"data": x})
    with torch.no_grad():
        got = export_pt2(net).module()(torch.from_numpy(x))
    got = got if isinstance(got, dict) else dict(zip(net.outputs, got))
    for name, v in want.items():
        np.testing.assert_allclose(got[name].numpy(), v, rtol=1e-5, atol=1e-5 * np.abs(v).max())


@pytest.mark.parametrize("method,k,s,p,shape", [c for c in CASES if c[3] == (0, 0) and c[4][2] % 2] +
                         [("AVE", (3, 3), (2, 2), (1, 1), (1, 2, 7, 8)), ("MAX", (2, 2), (1, 1), (0, 0), (1, 2, 6, 6))])
def test_onnx_pooling_matches(method, k, s, p, shape):
    pytest.importorskip("onnxruntime")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import check_onnx
    from neocaffe.graph.net import Net

    text = (f'lineage: "darknet2caffe"\nlayer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ '
            f'{" ".join(f"dim: {d}" for d in shape)} }} }} }}\n'
            f'layer {{ name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {method} kernel_h: {k[0]} '
            f'kernel_w: {k[1]} stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} }} }}\n')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), 1)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    assert tuple(net.blob_shapes["y"]) == ref.forward(x, method, k, s, p)[0].shape
    errors = check_onnx(export_onnx(net), net, {"x": x})
    assert max(errors.values()) <= 1e-6, errors


@pytest.mark.gpu
def test_on_cuda_equals_the_fork_loops():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for method, k, s, p, shape in CASES:
        x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
        want, want_mask = ref.forward(x, method, k, s, p)
        layer = _layer(method, k, s, p, shape).to("cuda")
        xt = torch.tensor(x, device="cuda", requires_grad=True)
        y = layer(xt)
        np.testing.assert_allclose(y.detach().cpu().numpy(), want, rtol=1e-6, atol=1e-6, equal_nan=True)
        td = np.random.default_rng(12).standard_normal(want.shape).astype(np.float32)
        y.backward(torch.tensor(td, device="cuda"))
        np.testing.assert_allclose(xt.grad.cpu().numpy(), ref.backward(shape, td, method, k, s, p, want_mask),
                                   rtol=1e-5, atol=1e-6)
