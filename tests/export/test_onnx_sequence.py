"""The recurrent and sequence layers exported to ONNX (``neocaffe.export.onnx_sequence``) equal neocaffe's
forward under onnxruntime, and the loop ports of the forks: BVLC's LSTM/RNN/LSTMUnit (tests/layers/
test_recurrent.py's NumPy loops), CTPN's Lstm/Transpose/Reverse (tests/layers/ctpn_reference.py, and the BLSTM
part of CTPN's released deploy net, tests/layers/data/ctpn/deploy.prototxt, end to end), and CTCGreedyDecoder
(tests/layers/ctc_reference.py, caffe_ocr_reference.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.proto import caffe_pb2
from tests.export.helpers import TOLERANCE, cuda_forward

pytest.importorskip("onnxruntime")

f32 = np.float32
FILLS = 'weight_filler { type: "uniform" min: -0.6 max: 0.6 } bias_filler { type: "uniform" min: -0.6 max: 0.6 }'
DEPLOY = Path(__file__).parents[1] / "layers" / "data" / "ctpn" / "deploy.prototxt"


def _net(body: str, inputs: dict[str, tuple[int, ...]], lineage: str = ""):
    from neocaffe.graph.net import Net

    text = "".join(f'layer {{ name: "{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
                   f'{" ".join(f"dim: {d}" for d in s)} }} }} }}\n' for k, s in inputs.items())
    param = text_format.Parse(text + body, caffe_pb2.NetParameter())
    if lineage:
        param.lineage = lineage
    return Net(param)


def _export_run(net, inputs: dict[str, np.ndarray], **kw) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(onnxruntime's outputs, neocaffe's outputs) of a fresh net on ``inputs``."""
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import neocaffe_outputs, onnxruntime_outputs

    model = export_onnx(net, **kw)
    got = onnxruntime_outputs(model, inputs, list(net.outputs))
    return got, neocaffe_outputs(net, inputs)


def _close(got, ref, tol=TOLERANCE):
    from neocaffe.export.verify import scaled_error

    err = scaled_error(got, ref)
    assert err <= tol, err
    return err


def _blobs(net, name):
    return [b.detach().double().numpy() for b in net.layer(name).blobs]


# -- BVLC LSTM / RNN / LSTMUnit --------------------------------------------------------------------
CONT = np.array([[0, 0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]], f32)  # resets inside the sequence


@pytest.mark.parametrize("kind, static, expose", [("LSTM", False, False), ("LSTM", True, True),
                                                  ("RNN", False, False), ("RNN", True, True)])
def test_bvlc_recurrent_with_cont_resets(kind, static, expose):
    from tests.layers.test_recurrent import np_lstm, np_rnn

    r = np.random.default_rng(1)
    T, N, H = 5, 3, 4
    states = 2 if kind == "LSTM" else 1
    bottoms = ['x', 'cont'] + (['xs'] if static else []) + ([f"s{i}" for i in range(states)] if expose else [])
    tops = ['y'] + ([f"f{i}" for i in range(states)] if expose else [])
    shapes = {"x": (T, N, 2, 3), "cont": (T, N), "xs": (N, 5)}
    shapes.update({f"s{i}": (1, N, H) for i in range(states)})
    body = (f'layer {{ name: "rec" type: "{kind}" {" ".join(f"bottom: {chr(34)}{b}{chr(34)}" for b in bottoms)} '
            f'{" ".join(f"top: {chr(34)}{t}{chr(34)}" for t in tops)} recurrent_param {{ num_output: {H} '
            f'expose_hidden: {str(expose).lower()} {FILLS} }} }}')
    net = _net(body, {b: shapes[b] for b in bottoms})
    inputs = {b: r.standard_normal(shapes[b]).astype(f32) for b in bottoms}
    inputs["cont"] = CONT
    got, ref = _export_run(net, inputs)
    for name in tops:
        _close(got[name], ref[name])
    w = _blobs(net, "rec")
    x64 = inputs["x"].astype(np.float64)
    xs = inputs["xs"].astype(np.float64) if static else None
    init = [inputs[f"s{i}"][0].astype(np.float64) if expose else np.zeros((N, H)) for i in range(states)]
    if kind == "LSTM":
        port = np_lstm(x64, CONT.astype(np.float64), w[0], w[1], w[-1], init[0], init[1], xs, w[2] if static else None)
    else:
        port = np_rnn(x64, CONT.astype(np.float64), w[0], w[1], w[-3], w[-2], w[-1], init[0], xs,
                      w[2] if static else None)
    _close(got["y"], port[0])
    if expose:
        for i in range(states):
            _close(got[f"f{i}"][0], port[1 + i])


def test_lstm_unit():
    r = np.random.default_rng(2)
    net = _net('layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "x" bottom: "cont" top: "c1" top: "h1" }',
               {"c": (1, 3, 4), "x": (1, 3, 16), "cont": (1, 3)})
    inputs = {"c": r.standard_normal((1, 3, 4)).astype(f32), "x": r.standard_normal((1, 3, 16)).astype(f32),
              "cont": np.array([[1, 0, 1]], f32)}
    got, ref = _export_run(net, inputs)
    for name in ("c1", "h1"):
        _close(got[name], ref[name])


def test_recurrent_refuses_a_dynamic_number_of_steps():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _net(f'layer {{ name: "rec" type: "Lstm" bottom: "x" top: "y" lstm_param {{ num_output: 2 {FILLS} }} }}',
               {"x": (3, 2, 4)})
    with pytest.raises(ExportError, match=r"layer 'rec' \(Lstm\).*dynamic axes \[0\].*fixed -batch"):
        export_onnx(net, dynamic_batch=True)


# -- CTPN ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_clip", [False, True])
def test_ctpn_lstm_matches_the_fork_cuda_kernels(with_clip):
    from tests.layers import ctpn_reference as ref

    r = np.random.default_rng(3)
    T, N, H = 5, 3, 4
    bottoms = 'bottom: "x"' + (' bottom: "clip"' if with_clip else "")
    shapes = {"x": (T, N, 2, 3)} | ({"clip": (T + N - 1,)} if with_clip else {})
    net = _net(f'layer {{ name: "lstm" type: "Lstm" {bottoms} top: "y" lstm_param {{ num_output: {H} '
               f'clipping_threshold: 1 {FILLS} }} }}', shapes)
    inputs = {"x": r.standard_normal((T, N, 2, 3)).astype(f32)}
    if with_clip:
        inputs["clip"] = np.array([0, 0, 0, 1, 0, 1, 1], f32)  # clip[t + n]: step 0 of each stream 0
    got, out = _export_run(net, inputs)
    _close(got["y"], out["y"])
    w_i, w_h, b = _blobs(net, "lstm")
    port = ref.lstm_cuda_port(inputs["x"].astype(np.float64), w_i, w_h, b, np.zeros((T, N, H)),
                              clip=inputs.get("clip"))[0]
    _close(got["y"], port)


def test_transpose_and_reverse_match_the_fork_loops():
    from tests.layers import ctpn_reference as ref

    r = np.random.default_rng(4)
    net = _net('layer { name: "t" type: "Transpose" bottom: "x" top: "t" transpose_param { dim: 3 dim: 2 dim: 0 '
               'dim: 1 } }\nlayer { name: "r0" type: "Reverse" bottom: "t" top: "r0" }\n'
               'layer { name: "r2" type: "Reverse" bottom: "t" top: "r2" reverse_param { axis: 2 } }',
               {"x": (2, 3, 4, 5)})
    x = r.standard_normal((2, 3, 4, 5)).astype(f32)
    got, out = _export_run(net, {"x": x})
    t = ref.transpose_port(x, (3, 2, 0, 1))
    assert set(got) == {"r0", "r2"}
    np.testing.assert_array_equal(got["r0"], ref.reverse_port(t, 0))
    np.testing.assert_array_equal(got["r2"], ref.reverse_port(t, 2))
    for k in ("r0", "r2"):
        np.testing.assert_array_equal(got[k], out[k])


def _ctpn_blstm_net(h: int, w: int):
    """CTPN's deploy net from ``im2col`` up to the RPN heads (its Python proposal layer dropped), fed by a
    conv5_3 Input of (1, 512, h, w), LSTM widths as released."""
    from neocaffe.graph.net import Net

    deploy = text_format.Parse(DEPLOY.read_text(), caffe_pb2.NetParameter())
    names = [lp.name for lp in deploy.layer]
    keep = deploy.layer[names.index("im2col"): names.index("proposal")]
    net = caffe_pb2.NetParameter(name="ctpn_blstm")
    net.layer.add().CopyFrom(text_format.Parse(f'name: "conv5_3" type: "Input" top: "conv5_3" input_param {{ '
                                               f'shape {{ dim: 1 dim: 512 dim: {h} dim: {w} }} }}',
                                               caffe_pb2.LayerParameter()))
    for lp in keep:
        net.layer.add().CopyFrom(lp)
    built = Net(net)
    r = np.random.default_rng(5)
    with torch.no_grad():
        for layer in built.layers:
            for b in layer.blobs:
                fan_in = int(np.prod(b.shape[1:])) if b.dim() > 1 else 1
                b.copy_(torch.from_numpy(r.standard_normal(tuple(b.shape)) * (np.sqrt(1.0 / fan_in) if b.dim() > 1
                                                                                 else 0.1)))
    return built


@pytest.mark.skipif(not DEPLOY.exists(), reason=f"CTPN's deploy prototxt is not at {DEPLOY}")
def test_ctpn_deploy_blstm_end_to_end():
    """im2col -> Transpose -> Reshape -> Lstm / Reverse-Lstm-Reverse -> Concat -> Reshape -> Transpose ->
    fc -> RPN convolutions, softmax and reshapes, as released (a 3 x 5 conv5_3 map: T = 5, N = 3)."""
    net = _ctpn_blstm_net(3, 5)
    x = np.random.default_rng(6).uniform(0, 2, (1, 512, 3, 5)).astype(f32)
    got, out = _export_run(net, {"conv5_3": x})
    assert set(got) == {"rpn_cls_prob_reshape", "rpn_bbox_pred"}
    for k in got:
        _close(got[k], out[k])


# -- CTCGreedyDecoder ------------------------------------------------------------------------------
@pytest.mark.parametrize("merge, blank", [(True, -1), (False, 0), (True, 2)])
def test_textboxes_ctc_greedy_decoder(merge, blank):
    from tests.layers.ctc_reference import greedy_decode

    r = np.random.default_rng(7)
    T, N, C = 7, 4, 4
    x = r.integers(0, 3, (T, N, C)).astype(f32) + r.uniform(0, 0.1, (T, N, C)).astype(f32)
    x[2:4, 0] = x[1, 0]  # repeats
    ind = np.ones((T, N), f32)
    ind[0] = 0
    ind[3, 1] = 0  # stream 1 stops after step 2
    ind[6, 2] = 0
    net = _net(f'layer {{ name: "dec" type: "CTCGreedyDecoder" bottom: "x" bottom: "ind" top: "seq" top: "score" '
               f'ctc_decoder_param {{ blank_index: {blank} ctc_merge_repeated: {str(merge).lower()} }} }}',
               {"x": (T, N, C), "ind": (T, N)})
    got, out = _export_run(net, {"x": x, "ind": ind})
    np.testing.assert_array_equal(got["seq"], out["seq"])
    _close(got["score"], out["score"])
    seqs, scores, _ = greedy_decode(x, ind, blank_index=blank, merge=merge)
    np.testing.assert_array_equal(got["seq"].reshape(N, T), np.asarray(seqs))
    _close(got["score"].reshape(N), np.asarray(scores))


@pytest.mark.parametrize("merge, blank", [(True, None), (False, -1)])
def test_caffe_ocr_ctc_greedy_decoder(merge, blank):
    from tests.layers.caffe_ocr_reference import greedy_decode

    r = np.random.default_rng(8)
    T, N, C = 6, 3, 5
    x = r.integers(0, 3, (T, N, C, 1)).astype(f32)  # ties: the first largest class
    field = "" if blank is None else f"blank_index: {blank} "
    net = _net(f'layer {{ name: "dec" type: "CTCGreedyDecoder" bottom: "x" top: "seq" ctc_decoder_param {{ {field}'
               f'ctc_merge_repeated: {str(merge).lower()} }} }}', {"x": (T, N, C, 1)})
    got, out = _export_run(net, {"x": x})
    np.testing.assert_array_equal(got["seq"], out["seq"])
    seqs = greedy_decode(x[..., 0], 0 if blank is None else C - 1, merge)
    ref = np.full((N, T), -1.0)
    for n, s in enumerate(seqs):
        ref[n, :len(s)] = s
    np.testing.assert_array_equal(got["seq"].reshape(N, T), ref)


def test_ctc_greedy_decoder_accuracy_tops_are_refused():
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.registry import ExportError

    net = _net('layer { name: "dec" type: "CTCGreedyDecoder" bottom: "x" bottom: "ind" bottom: "tgt" top: "seq" '
               'top: "acc" }', {"x": (4, 2, 3), "ind": (4, 2), "tgt": (4, 2)})
    with pytest.raises(ExportError, match=r"layer 'dec' \(CTCGreedyDecoder\).*accuracy"):
        export_onnx(net)
    net = _net('layer { name: "dec" type: "CTCGreedyDecoder" bottom: "x" bottom: "lab" top: "acc" }',
               {"x": (4, 2, 3), "lab": (2, 3)}, lineage="caffe_ocr")
    with pytest.raises(ExportError, match=r"layer 'dec' \(CTCGreedyDecoder\).*caffe_ocr's 2-bottom form"):
        export_onnx(net)


@pytest.mark.gpu
def test_lstm_export_matches_the_cuda_forward():
    """The same ONNX model against neocaffe's forward on CUDA (onnxruntime on the CPU)."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import onnxruntime_outputs

    net = _net(f'layer {{ name: "rec" type: "LSTM" bottom: "x" bottom: "cont" top: "y" recurrent_param {{ '
               f'num_output: 4 {FILLS} }} }}\nlayer {{ name: "l2" type: "Lstm" bottom: "x" top: "z" lstm_param {{ '
               f'num_output: 3 {FILLS} }} }}', {"x": (5, 3, 6), "cont": (5, 3)})
    inputs = {"x": np.random.default_rng(9).standard_normal((5, 3, 6)).astype(f32), "cont": CONT}
    got = onnxruntime_outputs(export_onnx(net), inputs, list(net.outputs))
    ran = cuda_forward(net, inputs)
    for k in ("y", "z"):
        _close(got[k], ran[k], 1e-4)
