"""LRCN's LSTM (LisaAnne/lisa-caffe-public lstm_video_deploy @ 49b8643ddef23a4f6120017968de30c45e693f59,
src/caffe/layers/{lstm_layer,lstm_unit_layer,recurrent_layer}.cpp) against neocaffe's LSTM.

Finding: the same numbers. LRCN's unrolled net has BVLC's gate order (i, f, o, g), cont gating
(h_conted = cont * h; f = cont * sigmoid, 0 where cont is 0), blob order and shapes (W_xc (4H, I), b_c (4H,),
[W_xc_static (4H, I_s)], W_hc (4H, H)), static input, carried state and zero diff across batches. Its
RecurrentParameter has only num_output, weight_filler, bias_filler, debug_info (no expose_hidden, no
clipping_threshold: gradient clipping is the solver's global clip_gradients). Measured max abs differences vs
the port (float64): forward 1.7e-16, x/x_static diffs 2.2e-16, weight diffs 8.9e-16 (asserted below 1e-12);
the float32 deploy net's lstm1 top 2.0e-8 (asserted below 1e-5).
LRCN's GPU LSTMUnit (lstm_unit_layer.cu) differs from its CPU loop only in the forget-gate diff when cont is
neither 0 nor 1 (cont * c_term * c_prev * sigma'(x_f) against c_term * c_prev * f * (1 - f) with f = cont * sigma);
neocaffe follows the CPU loop on every device, as it does for BVLC; LRCN's scripts feed 0/1 markers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe.layers.recurrent import LSTM
from neocaffe.proto import caffe_pb2
from tests.layers import lrcn_lstm_reference as ref

DEPLOY = Path(__file__).parent / "data" / "lrcn" / "deploy_lstm.prototxt"


def _layer(static: bool, hd: int, shapes):
    bottoms = 'bottom: "x" bottom: "cont"' + (' bottom: "xs"' if static else "")
    lp = text_format.Parse(f'name: "lstm1" type: "LSTM" {bottoms} top: "h" recurrent_param {{ num_output: {hd} '
                           'bias_filler { type: "constant" value: 0 } }', caffe_pb2.LayerParameter())
    return LSTM(lp, shapes)


def _case(static: bool, seed: int):
    r = np.random.default_rng(seed)
    t_steps, n, hd, i_dim, s_dim = 5, 3, 3, 4, 2
    x = r.standard_normal((t_steps, n, i_dim))
    cont = np.ones((t_steps, n))
    cont[0] = 0
    cont[2, 1] = 0  # a sequence start mid-batch
    xs = r.standard_normal((n, s_dim)) if static else None
    blobs = [r.uniform(-0.8, 0.8, (4 * hd, i_dim)), r.uniform(-0.8, 0.8, (4 * hd,))]  # LRCN's blob layout
    if static:
        blobs.append(r.uniform(-0.8, 0.8, (4 * hd, s_dim)))
    blobs.append(r.uniform(-0.8, 0.8, (4 * hd, hd)))
    return x, cont, xs, blobs, hd, r


@pytest.mark.parametrize("static", [False, True])
def test_forward_and_backward_equal_lrcns_unrolled_net(static):
    x, cont, xs, blobs, hd, r = _case(static, 3 + static)
    shapes = [x.shape, cont.shape] + ([xs.shape] if static else [])
    layer = _layer(static, hd, shapes).double()
    assert [tuple(b.shape) for b in layer.blobs] == [b.shape for b in blobs]
    with torch.no_grad():
        for p, b in zip(layer.blobs, blobs):
            p.copy_(torch.tensor(b))
    ins = [torch.tensor(x, requires_grad=True), torch.tensor(cont)]
    if static:
        ins.append(torch.tensor(xs, requires_grad=True))
    top_diff = r.standard_normal((x.shape[0], x.shape[1], hd))
    h = layer(*ins)
    want, state = ref.forward(x, cont, blobs, xs)
    h.backward(torch.tensor(top_diff))
    x_diff, p_diffs, xs_diff = ref.backward(top_diff, state)
    assert np.abs(h.detach().numpy() - want).max() < 1e-12
    assert np.abs(ins[0].grad.numpy() - x_diff).max() < 1e-12
    for p, d in zip(layer.blobs, p_diffs):
        assert np.abs(p.grad.numpy() - d).max() < 1e-12
    if static:
        assert np.abs(ins[2].grad.numpy() - xs_diff).max() < 1e-12
    # a second forward starts from the carried h_T, c_T (Forward_cpu copies recur outputs to inputs)
    cont2 = np.ones_like(cont)
    ins2 = [torch.tensor(x[::-1].copy()), torch.tensor(cont2)] + ([torch.tensor(xs)] if static else [])
    want2, _ = ref.forward(x[::-1].copy(), cont2, blobs, xs, h0=state["h"], c0=state["c"])
    assert np.abs(layer(*ins2).detach().numpy() - want2).max() < 1e-12


def _varint(v: int) -> bytes:
    out = b""
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_lrcn_blob_layout_loads_by_layer_name(tmp_path):
    """A layer as LRCN's Net::ToProto writes it: name, type, bottoms/top, three blobs with BlobShape
    (W_xc (4H, I), b_c (4H,), W_hc (4H, H)) and its recurrent_param at LRCN's number 134 (LogParameter's
    number in neocaffe's schema): the loader reads names, types and blobs only."""
    net = _small_deploy(tmp_path)
    hd, i_dim = 6, 16
    r = np.random.default_rng(5)
    blobs = [r.standard_normal((4 * hd, i_dim)).astype(np.float32), r.standard_normal(4 * hd).astype(np.float32),
             r.standard_normal((4 * hd, hd)).astype(np.float32)]
    layer = caffe_pb2.LayerParameter(name="lstm1", type="LSTM", bottom=["fc6-reshape", "reshape-cm"], top=["lstm1"])
    for b in blobs:
        layer.blobs.add(shape=caffe_pb2.BlobShape(dim=list(b.shape)), data=b.ravel().tolist())
    recurrent = _varint(1 << 3) + _varint(hd) + _field(3, _field(1, b"constant"))  # num_output, bias_filler
    path = tmp_path / "lrcn.caffemodel"
    path.write_bytes(_field(1, b"Hyb2Net-LSTM") + _field(100, layer.SerializeToString() + _field(134, recurrent)))
    net.copy_from(str(path))
    for k, b in enumerate(blobs):
        np.testing.assert_array_equal(net.params["lstm1"][k].data, b)
    assert [net.params["lstm1"][k].data.shape for k in range(3)] == [b.shape for b in blobs]


def _small_deploy(tmp_path):
    """deploy_lstm.prototxt with T=4 frames x N=3 crops of 67 x 67 and narrow layers."""
    text = DEPLOY.read_text()
    for a, b in [("input_dim: 160", "input_dim: 12"), ("input_dim: 227", "input_dim: 67"),
                 ("dim: 16\n", "dim: 4\n"), ("dim: 10\n", "dim: 3\n"), ("4096", "16"),
                 ("num_output: 96", "num_output: 8"), ("num_output: 384", "num_output: 8"),
                 ("num_output: 512", "num_output: 8"), ("num_output: 256", "num_output: 6"),
                 ("num_output: 101", "num_output: 5")]:
        assert a in text, a
        text = text.replace(a, b)
    p = tmp_path / "deploy_small.prototxt"
    p.write_text(text)
    return caffe.Net(str(p), caffe.TEST)


def test_the_released_deploy_net_runs_as_lrcns_scripts_feed_it(tmp_path):
    net = _small_deploy(tmp_path)
    r = np.random.default_rng(7)
    for name in net.params:
        for b in net.params[name]:
            b.data[...] = r.uniform(-0.1, 0.1, b.data.shape) if name != "lstm1" else r.uniform(-0.5, 0.5, b.data.shape)
    # classify_video.py: clip_markers ones of (frames * 10 crops, 1, 1, 1), the first frame's crops 0
    markers = np.ones((12, 1, 1, 1))
    markers[0:3] = 0
    out = net.forward(data=r.uniform(-50, 50, (12, 3, 67, 67)), clip_markers=markers)
    assert out["probs"].shape == (4, 3, 5) and np.isfinite(out["probs"]).all()
    np.testing.assert_allclose(out["probs"].sum(-1), 1.0, rtol=1e-5)
    x = net.blobs["fc6-reshape"].data.astype(np.float64)
    blobs = [b.data.astype(np.float64) for b in net.params["lstm1"]]
    want, _ = ref.forward(x, markers.reshape(4, 3), blobs)
    assert np.abs(net.blobs["lstm1"].data - want).max() < 1e-5
    assert np.abs(want).max() > 1e-2


CHECK_NET = Path(__file__).parent / "data" / "lrcn" / "deploy_lstm_lstm_check.prototxt"


def _check_net(tmp_path):
    """LRCN_evaluate's deploy_lstm_lstm_check.prototxt (DummyData 16 x 4096 features, 16 x 1 markers) narrowed."""
    text = CHECK_NET.read_text().replace("4096", "12").replace("num_output: 256", "num_output: 5")
    p = tmp_path / "check_small.prototxt"
    p.write_text(text.replace("num_output: 101", "num_output: 7"))
    net = caffe.Net(str(p), caffe.TEST)
    r = np.random.default_rng(2)
    for name in net.params:
        for b in net.params[name]:
            b.data[...] = r.uniform(-0.5, 0.5, b.data.shape)
    return net, r


def _feed_and_compare(net, r):
    markers = np.ones((16, 1, 1, 1))  # run_evaluation_check.py: clip_markers[0] = 0
    markers[0] = 0
    x = r.standard_normal((16, 12, 1, 1))
    net.blobs["clip_markers"].data[...] = markers
    net.blobs["data"].data[...] = x
    net.forward()
    want, _ = ref.forward(x.reshape(16, 1, 12), markers.reshape(16, 1),
                          [b.data.astype(np.float64) for b in net.params["lstm1"]])
    assert np.abs(net.blobs["lstm1"].data - want).max() < 1e-5


def test_the_evaluation_net_fed_through_its_dummydata_tops(tmp_path):
    """run_evaluation_check.py writes the features and markers into DummyData tops and calls forward();
    here after one forward (and below, before any)."""
    net, r = _check_net(tmp_path)
    net.forward()
    _feed_and_compare(net, r)


def test_the_evaluation_net_fed_before_any_forward(tmp_path):
    """As LRCN's evaluation scripts feed it: DummyData tops written before the first forward keep the data."""
    net, r = _check_net(tmp_path)
    _feed_and_compare(net, r)


@pytest.mark.gpu
def test_on_cuda_equals_the_port():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x, cont, xs, blobs, hd, r = _case(True, 9)
    layer = _layer(True, hd, [x.shape, cont.shape, xs.shape]).double().cuda()
    with torch.no_grad():
        for p, b in zip(layer.blobs, blobs):
            p.copy_(torch.tensor(b))
    h = layer(torch.tensor(x).cuda(), torch.tensor(cont).cuda(), torch.tensor(xs).cuda())
    want, _ = ref.forward(x, cont, blobs, xs)
    assert np.abs(h.detach().cpu().numpy() - want).max() < 1e-12
