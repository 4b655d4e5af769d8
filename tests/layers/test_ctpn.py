"""CTPN's Caffe layers (tianzhi0549/CTPN @ f77ec9e, caffe/src/caffe/layers/{lstm,transpose,reverse}_layer.{cpp,cu})
against loop ports of the fork's code (tests/layers/ctpn_reference.py): Transpose and Reverse forward and
backward, Lstm's top, state and every diff against its CUDA kernels (clipped gradients, the clip bottom over
successive forwards), its CPU loops where they agree (one stream) and where they do not; the errors; the
released deploy net (tests/layers/data/ctpn/deploy.prototxt) built unchanged with random weights from a
.caffemodel and run on a small image with the Python text-proposal layer; and the BLSTM chain training."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe.graph.errors import NetError
from neocaffe.io.caffemodel import LayerWeights, save_caffemodel
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.ctpn import LstmLayer
from neocaffe.layers.recurrent import LSTM
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import ctpn_reference as ref
F32_0_3 = float(np.float32(0.3))  # clipping_threshold is a float field
DEPLOY = Path(__file__).parent / "data" / "ctpn" / "deploy.prototxt"


def _layer(text, shapes):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, shapes).double()


def _lstm(shapes, h, extra="", fill="uniform"):
    fills = (f'weight_filler {{ type: "{fill}" min: -0.6 max: 0.6 }} '
             f'bias_filler {{ type: "{fill}" min: -0.6 max: 0.6 }}')
    bottoms = 'bottom: "x"' + (' bottom: "clip"' if len(shapes) > 1 else "")
    return _layer(f'name: "l" type: "Lstm" {bottoms} top: "h" lstm_param {{ num_output: {h} {fills} {extra} }}',
                  shapes)


def _run(layer, x, clip=None, top_diff=None):
    """The layer's top and the diffs of x and its three blobs for ``top_diff``."""
    for p in layer.blobs:
        p.grad = None
    xt = torch.tensor(x, requires_grad=True)
    args = [xt] + ([torch.tensor(clip)] if clip is not None else [])
    top = layer(*args)
    top.backward(torch.tensor(top_diff))
    return [top.detach().numpy(), xt.grad.numpy()] + [p.grad.numpy() for p in layer.blobs]


# -- Transpose / Reverse -------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [(3, 2, 0, 1), (2, 3, 1, 0), (0, 1, 2, 3), (1, 0, 3, 2)])
def test_transpose_matches_the_fork_loop_both_ways(dims):
    r = np.random.default_rng(1)
    x = r.standard_normal((2, 3, 4, 5))
    layer = _layer('name: "t" type: "Transpose" bottom: "x" top: "y" transpose_param { '
                   + " ".join(f"dim: {d}" for d in dims) + " }", [x.shape])
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    want = ref.transpose_port(x, dims)
    assert layer.reshape([x.shape]) == [want.shape]
    np.testing.assert_array_equal(y.detach().numpy(), want)
    g = r.standard_normal(want.shape)
    y.backward(torch.tensor(g))
    np.testing.assert_array_equal(xt.grad.numpy(), ref.transpose_port(g, dims, backward=True))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_reverse_matches_the_fork_loop_both_ways(axis):
    r = np.random.default_rng(2)
    x = r.standard_normal((4, 3, 5))
    layer = _layer(f'name: "r" type: "Reverse" bottom: "x" top: "y" reverse_param {{ axis: {axis} }}', [x.shape])
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    np.testing.assert_array_equal(y.detach().numpy(), ref.reverse_port(x, axis))
    g = r.standard_normal(x.shape)
    y.backward(torch.tensor(g))
    np.testing.assert_array_equal(xt.grad.numpy(), ref.reverse_port(g, axis))


@pytest.mark.parametrize("text,shape,match", [
    ('type: "Transpose" transpose_param { dim: 1 dim: 0 }', (2, 3, 4), "one dim per bottom axis"),
    ('type: "Transpose" transpose_param { dim: 0 dim: 0 dim: 1 }', (2, 3, 4), "permutation"),
    ('type: "Transpose" transpose_param { dim: -1 dim: 0 dim: 1 }', (2, 3, 4), "permutation"),
    ('type: "Reverse" reverse_param { axis: 3 }', (2, 3, 4), r"reverse_param.axis must be in \[0, 3\)"),
    ('type: "Reverse" reverse_param { axis: -1 }', (2, 3, 4), "received -1"),
    ('type: "Lstm" lstm_param { num_output: 0 }', (2, 3, 4), "num_output must be positive"),
    ('type: "Lstm" lstm_param { num_output: 2 }', (5,), "at least 2 axes"),
])
def test_errors_name_the_layer_and_what_was_received(text, shape, match):
    with pytest.raises(LayerSetupError, match=match):
        lp = text_format.Parse(f'name: "bad" bottom: "x" top: "y" {text}', caffe_pb2.LayerParameter())
        layer = get_layer_class(lp.type)(lp, [shape])
        layer.reshape([shape])


@pytest.mark.parametrize("layer", ['type: "Reverse"', 'type: "Transpose" transpose_param { dim: 1 dim: 0 dim: 2 }',
                                   'type: "Lstm" lstm_param { num_output: 4 }'])
def test_in_place_is_refused(layer, tmp_path):
    (tmp_path / "n.prototxt").write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 '
                                         'dim: 3 dim: 4 } } } layer { name: "l" bottom: "x" top: "x" ' + layer + " }")
    with pytest.raises(NetError, match="cannot work in place"):
        caffe.Net(str(tmp_path / "n.prototxt"), caffe.TEST)


def test_lstm_checks_its_input_size_and_clip():
    layer = _lstm([(3, 2, 4)], 2)
    with pytest.raises(LayerSetupError, match="expected 4"):
        layer.reshape([(3, 2, 5)])
    clip_layer = _lstm([(3, 2, 4), (4,)], 2)
    with pytest.raises(LayerSetupError, match="at least T \\+ N - 1 = 4"):
        clip_layer.reshape([(3, 2, 4), (3,)])
    with pytest.raises(LayerSetupError, match="num == count"):
        clip_layer.reshape([(3, 2, 4), (3, 2)])


# -- Lstm ----------------------------------------------------------------------------------------
def test_lstm_is_not_bvlc_lstm():
    assert get_layer_class("Lstm") is LstmLayer and get_layer_class("LSTM") is LSTM
    layer = _lstm([(3, 2, 2, 3)], 5)
    assert [tuple(b.shape) for b in layer.blobs] == [(20, 6), (20, 5), (20,)]


@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_lstm_matches_the_fork_cuda_kernels(threshold):
    """Top and every diff, several streams (the deploy net's N is the feature map's height)."""
    r = np.random.default_rng(3)
    x = r.standard_normal((5, 3, 2, 2))
    layer = _lstm([x.shape], 4, f"clipping_threshold: {threshold}")
    w_i, w_h, b = (p.detach().numpy() for p in layer.blobs)
    td = r.standard_normal((5, 3, 4))
    got = _run(layer, x, top_diff=td)
    top, _, dx, dw_i, dw_h, db = ref.lstm_cuda_port(x, w_i, w_h, b, td, float(np.float32(threshold)))  # the proto's float
    for g, w in zip(got, [top, dx, dw_i, dw_h, db]):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    if threshold:  # the clamp bit: the diffs are not the true gradient's
        exact = _run(_copy_weights(_lstm([x.shape], 4), layer), x, top_diff=td)
        assert not np.allclose(exact[3], got[3])


def _copy_weights(dst, src):
    for a, b in zip(dst.blobs, src.blobs):
        a.data.copy_(b.data)
    return dst


def test_lstm_with_clip_carries_its_state_as_the_fork():
    """clip[t + n] gates step t of stream n; the next forward starts from the last h and c; the W_h diff
    keeps the steps whose clip is 0 (unmasked, as the fork's gemm)."""
    r = np.random.default_rng(4)
    x1, x2 = r.standard_normal((4, 2, 3)), r.standard_normal((4, 2, 3))
    clip1 = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    clip2 = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    layer = _lstm([x1.shape, clip1.shape], 3, "clipping_threshold: 0.3")
    w = [p.detach().numpy() for p in layer.blobs]
    state = (None, None)
    for x, clip in ((x1, clip1), (x2, clip2)):
        td = r.standard_normal((4, 2, 3))
        got = _run(layer, x, clip, td)
        top, state, dx, dw_i, dw_h, db = ref.lstm_cuda_port(x, *w, td, F32_0_3, clip, *state)
        for g, want in zip(got, [top, dx, dw_i, dw_h, db]):
            np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)
    layer.reset_state()
    again = _run(layer, x1, clip1, td)
    np.testing.assert_allclose(again[0], ref.lstm_cuda_port(x1, *w, td, F32_0_3, clip1)[0], rtol=1e-10, atol=1e-12)


def test_lstm_cpu_loops_agree_for_one_stream_only():
    """The fork's CPU path is its CUDA path for N = 1; for N > 1 it mixes the streams (see ctpn.py)."""
    r = np.random.default_rng(5)
    for n, agree in ((1, True), (3, False)):
        x = r.standard_normal((4, n, 3))
        layer = _lstm([x.shape], 3, "clipping_threshold: 0.2")
        w = [p.detach().numpy() for p in layer.blobs]
        td = r.standard_normal((4, n, 3))
        ours = _run(layer, x, top_diff=td)
        cpu = ref.lstm_cpu_port(x, *w, td, float(np.float32(0.2)))
        close = [np.allclose(a, c, rtol=1e-10, atol=1e-12) for a, c in zip(ours, cpu)]
        assert all(close) if agree else not any(close[:2]), (n, close)


@pytest.mark.gpu
def test_on_cuda_equals_the_fork_kernels():
    """The three layers on a CUDA device, float64: the CUDA kernels' port, with clip and clipped diffs."""
    r = np.random.default_rng(9)
    x, clip = r.standard_normal((4, 3, 2, 3)), np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    layer = _lstm([x.shape, clip.shape], 3, "clipping_threshold: 0.3").to("cuda")
    w = [p.detach().cpu().numpy() for p in layer.blobs]
    td = r.standard_normal((4, 3, 3))
    xt = torch.tensor(x, device="cuda", requires_grad=True)
    top = layer(xt, torch.tensor(clip, device="cuda"))
    top.backward(torch.tensor(td, device="cuda"))
    want = ref.lstm_cuda_port(x, *w, td, F32_0_3, clip)
    got = [top.detach(), xt.grad] + [p.grad for p in layer.blobs]
    for g, wv in zip(got, [want[0]] + list(want[2:])):
        assert g.device.type == "cuda"
        np.testing.assert_allclose(g.cpu().numpy(), wv, rtol=1e-9, atol=1e-11)
    t = _layer('name: "t" type: "Transpose" bottom: "x" top: "y" transpose_param { dim: 2 dim: 0 dim: 1 }', [td.shape])
    rv = _layer('name: "r" type: "Reverse" bottom: "x" top: "y" reverse_param { axis: 1 }', [td.shape])
    tc = torch.tensor(td, device="cuda")
    np.testing.assert_array_equal(t(tc).cpu().numpy(), ref.transpose_port(td, (2, 0, 1)))
    np.testing.assert_array_equal(rv(tc).cpu().numpy(), ref.reverse_port(td, 1))


def test_lstm_without_grad_gives_the_same_top():
    x = np.random.default_rng(6).standard_normal((3, 2, 4))
    layer = _lstm([x.shape], 2)
    with torch.no_grad():
        a = layer(torch.tensor(x))
    np.testing.assert_array_equal(a.numpy(), layer(torch.tensor(x)).detach().numpy())


# -- the released deploy net --------------------------------------------------------------------
def test_deploy_prototxt_parses_with_the_fork_fields():
    net = text_format.Parse(DEPLOY.read_text(), caffe_pb2.NetParameter())
    by_name = {lp.name: lp for lp in net.layer}
    assert list(by_name["im2col_transpose"].transpose_param.dim) == [3, 2, 0, 1]
    assert by_name["lstm"].lstm_param.num_output == 128 and by_name["lstm"].lstm_param.clipping_threshold == 1
    assert by_name["lstm-reverse1"].reverse_param.HasField("axis")
    assert [f.number for f in (caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name[n] for n in
                              ("lstm_param", "ctc_param", "transpose_param", "reverse_param"))] == [3140, 3141, 3142, 4143]


def _random_weights(net, rng):
    """He-scaled weights (so VGG's activations stay in range), small biases, for every layer with blobs."""
    types = {lp.name: lp.type for lp in text_format.Parse(DEPLOY.read_text(), caffe_pb2.NetParameter()).layer}
    out = []
    for name, blobs in net.params.items():
        shapes = [tuple(b.data.shape) for b in blobs]
        arrays = []
        for s in shapes:
            if len(s) == 1:
                arrays.append(rng.uniform(-0.1, 0.1, s))
            else:
                fan_in = int(np.prod(s[1:]))
                arrays.append(rng.standard_normal(s) * np.sqrt(2.0 / fan_in))
        out.append(LayerWeights(name, types[name], [a.astype(np.float32) for a in arrays]))
    return out


@pytest.fixture
def text_proposal_module(tmp_path, monkeypatch):
    """``layers.text_proposal_layer`` (the module the deploy net names), serving our port."""
    pkg = tmp_path / "layers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "text_proposal_layer.py").write_text(
        "from tests.layers.ctpn_reference import TextProposalLayer as ProposalLayer  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("layers", "layers.text_proposal_layer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_deploy_net_runs_unchanged_on_a_small_image(tmp_path, text_proposal_module):
    rng = np.random.default_rng(7)
    blank = caffe.Net(str(DEPLOY), caffe.TEST)  # built at the prototxt's 600 x 900: shapes only
    assert blank.blobs["lstm_input"].data.shape == (57, 38, 4608)  # Caffe's ceil-mode pooling: 600 -> 38
    assert blank.blobs["lstm_output"].data.shape == (1, 256, 38, 57)
    weights = _random_weights(blank, rng)
    model = tmp_path / "ctpn_random.caffemodel"
    save_caffemodel(model, weights)
    net = caffe.Net(str(DEPLOY), str(model), caffe.TEST)
    np.testing.assert_array_equal(net.params["lstm"][0].data, weights[[w.name for w in weights].index("lstm")].blobs[0])
    # the demo's way (src/detectors.py): reshape the inputs to the image, then forward
    im = rng.uniform(-120, 120, (3, 64, 96)).astype(np.float32)
    net.blobs["data"].reshape(1, *im.shape)
    net.blobs["data"].data[...] = im
    net.blobs["im_info"].reshape(1, 2)
    net.blobs["im_info"].data[...] = [[64, 96]]
    out = net.forward()
    h, w = 4, 6  # conv5_3 of a 64 x 96 image
    shapes = {"im2col": (1, 4608, h, w), "im2col_transpose": (w, h, 1, 4608), "lstm_input": (w, h, 4608),
              "lstm": (w, h, 128), "rlstm": (w, h, 128), "merge_lstm_rlstm": (w, h, 256),
              "lstm_output": (1, 256, h, w), "rpn_cls_prob_reshape": (1, 20, h, w), "rpn_bbox_pred": (1, 20, h, w),
              "rois": (10 * h * w, 4), "scores": (10 * h * w, 1)}
    for blob, shape in shapes.items():
        assert net.blobs[blob].data.shape == shape, blob
        assert np.isfinite(net.blobs[blob].data).all(), blob
    assert set(out) == {"rois", "scores"}
    # the BLSTM wiring, recomputed from conv5_3 with the fork's loops
    cols = net.blobs["im2col"].data
    seq = ref.transpose_port(cols, (3, 2, 0, 1)).reshape(w, h, 4608).astype(np.float64)
    zero = np.zeros((w, h, 128))
    fwd = ref.lstm_cuda_port(seq, *(b.data.astype(np.float64) for b in net.params["lstm"]), zero)[0]
    bwd = ref.lstm_cuda_port(ref.reverse_port(seq, 0), *(b.data.astype(np.float64) for b in net.params["rlstm"]),
                             zero)[0]
    merged = np.concatenate([fwd, ref.reverse_port(bwd, 0)], 2).reshape(w, h, 1, 256)
    # tanh-bounded outputs from float32 gates of 4608-term sums over large random-net activations: the
    # float32 rounding reaches a few 1e-5 on some CPUs' kernels (3.6e-5 seen on an Intel Xeon, under 1e-5
    # on AMD EPYC), far under what a swapped or unreversed direction changes
    np.testing.assert_allclose(net.blobs["lstm_output"].data, ref.transpose_port(merged, (2, 3, 1, 0)),
                               rtol=1e-4, atol=2e-4)
    # the proposals: the layer's output for the net's own RPN blobs
    boxes, scores = ref.text_proposals(net.blobs["rpn_cls_prob_reshape"].data, net.blobs["rpn_bbox_pred"].data,
                                       net.blobs["im_info"].data)
    np.testing.assert_array_equal(out["rois"], boxes)
    np.testing.assert_array_equal(out["scores"], scores)
    assert (out["rois"][:, 0::2] >= 0).all() and (out["rois"][:, 0::2] <= 95).all()
    assert (out["rois"][:, 1::2] >= 0).all() and (out["rois"][:, 1::2] <= 63).all()
    assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()


def test_text_proposal_anchors_are_the_forks():
    """The 10 anchors of src/anchor.py under Python 2 (``h/2`` floors, the int32 array truncates)."""
    a = ref.basic_anchors()
    assert a[:, 0].tolist() == [0] * 10 and a[:, 2].tolist() == [15] * 10
    assert a[:, 1].tolist() == [2, 0, -3, -8, -16, -26, -40, -61, -91, -133]
    assert a[:, 3].tolist() == [12, 15, 18, 23, 31, 41, 55, 76, 106, 148]
    boxes = ref.locate_anchors(2, 3, 16)
    assert boxes.shape == (60, 4) and boxes[10 * 4 + 3].tolist() == [16, 16 - 8, 31, 16 + 23]


# -- training ------------------------------------------------------------------------------------
BLSTM_NET = '''
layer { name: "in" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 2 dim: 6 dim: 3 dim: 5 } shape { dim: 2 dim: 4 dim: 3 dim: 5 } } }
layer { name: "t" type: "Transpose" bottom: "data" top: "t" transpose_param { dim: 3 dim: 2 dim: 0 dim: 1 } }
layer { name: "seq" type: "Reshape" bottom: "t" top: "seq" reshape_param { shape { dim: -1 } axis: 1 num_axes: 2 } }
layer { name: "lstm" type: "Lstm" bottom: "seq" top: "lstm"
  lstm_param { num_output: 8 clipping_threshold: 1 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" } } }
layer { name: "rev1" type: "Reverse" bottom: "seq" top: "rseq" reverse_param { axis: 0 } }
layer { name: "rlstm" type: "Lstm" bottom: "rseq" top: "rlstm_out"
  lstm_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" } } }
layer { name: "rev2" type: "Reverse" bottom: "rlstm_out" top: "rlstm" reverse_param { axis: 0 } }
layer { name: "merge" type: "Concat" bottom: "lstm" bottom: "rlstm" top: "merge" concat_param { axis: 2 } }
layer { name: "r2" type: "Reshape" bottom: "merge" top: "r2" reshape_param { shape { dim: -1 dim: 2 } axis: 1 num_axes: 1 } }
layer { name: "out" type: "Transpose" bottom: "r2" top: "out" transpose_param { dim: 2 dim: 3 dim: 1 dim: 0 } }
layer { name: "fc" type: "Convolution" bottom: "out" top: "fc"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" }
'''


def test_blstm_chain_trains(tmp_path):
    (tmp_path / "train.prototxt").write_text(BLSTM_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 5')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    r = np.random.default_rng(8)
    data = r.standard_normal((2, 6, 3, 5)).astype(np.float32)
    # a target that needs context from both directions along the width
    target = np.tanh(np.cumsum(data[:, :4], 3) - np.cumsum(data[:, 2:, :, ::-1], 3)[..., ::-1]).astype(np.float32)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["target"].data[...] = target
    assert solver.net.blobs["out"].data.shape == (2, 16, 3, 5)
    before = {k: solver.net.params[k][1].data.copy() for k in ("lstm", "rlstm")}
    first = float(solver.net.forward()["loss"])
    solver.step(40)
    last = float(solver.net.forward()["loss"])
    assert last < 0.5 * first, (first, last)
    for k, w in before.items():  # both directions learned their recurrent weights
        assert np.abs(solver.net.params[k][1].data - w).max() > 1e-3, k
