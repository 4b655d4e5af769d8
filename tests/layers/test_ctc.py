"""TextBoxes++'s CTC layers (MhLiao/TextBoxes_plusplus @ 39d4898d, src/caffe/layers/ctc_{loss,decoder}_layer.cpp)
against loop ports of the fork's CPU code (tests/layers/ctc_reference.py): CTCLoss's loss and diff over
blank first/last, repeated labels, ``preprocess_collapse_repeated``, ``ctc_merge_repeated``, sequence lengths
from the indicator blob, ``output_delay``, skipped and emptied targets, float64 and float32; against
torch's ``ctc_loss`` where the two agree; the fork's own unit tests (test_ctc_{loss,decoder}_layer.cpp)
with their expected values; finite differences; the errors; CTCGreedyDecoder's sequences, scores and
accuracy; a CRNN-style prototxt net (conv, Permute, Reshape, LSTM, InnerProduct, CTCLoss) trained with the
SGD solver and decoded by a test net."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

import caffe
from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import ctc_reference as ref

FLT_MAX = float(np.finfo(np.float32).max)


def _layer(text, shapes, phase=0):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, shapes, phase)


def _loss_layer(shapes, opts="", extra=""):
    body = f"ctc_loss_param {{ {opts} }}" if opts else ""
    return _layer(f'name: "ctc" type: "CTCLoss" bottom: "x" bottom: "ind" bottom: "lab" top: "loss" {body} {extra}',
                  shapes)


def _opts(blank=-1, collapse=False, merge=True, delay=0):
    return (f"blank_index: {blank} preprocess_collapse_repeated: {str(collapse).lower()} "
            f"ctc_merge_repeated: {str(merge).lower()} output_delay: {delay}")


def _run(layer, x, ind, lab, dtype=torch.float64, g=None):
    """Loss and diff of x (the diff the net passes: ``g``, the layer's loss weight by default)."""
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    loss = layer(xt, torch.tensor(ind, dtype=dtype), torch.tensor(lab, dtype=dtype))
    loss.backward(torch.tensor(layer.weight if g is None else g, dtype=dtype))
    return loss.item(), xt.grad.numpy()


def _batch(r, t_steps, lengths, label_lengths, classes, blank, repeats=True):
    """Indicators and targets: sequence n runs ``lengths[n]`` steps, its target ``label_lengths[n]`` labels
    (never the blank; with ``repeats`` every other label repeats the one before)."""
    n_seq = len(lengths)
    ind = np.ones((t_steps, n_seq))
    ind[0] = 0
    lab = -np.ones((t_steps, n_seq))
    choices = [c for c in range(classes) if c != blank]
    for n, (s, k) in enumerate(zip(lengths, label_lengths)):
        ind[s:, n] = 0
        for i in range(k):
            lab[i, n] = lab[i - 1, n] if repeats and i % 2 and i else choices[r.integers(len(choices))]
    return ind, lab


CONFIGS = [
    dict(),
    dict(blank=0),
    dict(blank=2),
    dict(merge=False),
    dict(collapse=True),
    dict(collapse=True, merge=False, blank=0),
    dict(delay=2),
    dict(delay=1, merge=False, blank=1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CONFIGS])
def test_loss_and_diff_equal_the_fork_loops(cfg):
    """Eight sequences of lengths 1..10 (indicator zeros), repeated targets, one empty target (skipped),
    float64 to 1e-12, float32 to float rounding."""
    r = np.random.default_rng(len(str(cfg)))
    t_steps, classes = 10, 5
    blank = cfg.get("blank", classes - 1)
    delay = cfg.get("delay", 0)
    lengths = [10, 9, 7, 5, 1, 10, 6, 8]
    label_lengths = [min(k, s - delay) for k, s in zip([4, 5, 3, 2, 0, 1, 4, 3], lengths)]
    ind, lab = _batch(r, t_steps, lengths, label_lengths, classes, blank)
    x = r.standard_normal((t_steps, 8, classes)) * 2
    layer = _loss_layer([x.shape, ind.shape, lab.shape], _opts(**cfg)).double()
    loss, diff = _run(layer, x, ind, lab)
    kw = dict(output_delay=delay, blank_index=cfg.get("blank", -1), collapse=cfg.get("collapse", False),
              merge=cfg.get("merge", True))
    want_loss, want_diff, info = ref.ctc_loss(x, ind, lab, **kw)
    assert info["seq_len"][4] == 0 and np.all(diff[:, 4] == 0)  # the empty target is skipped
    assert layer.sequence_length.tolist() == info["seq_len"] and layer.label_length.tolist() == info["label_len"]
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-10, atol=1e-12)
    assert np.all(diff[:delay] == 0) and np.abs(diff[delay:]).max() > 0.1
    for n, s in enumerate(info["seq_len"]):
        assert np.all(diff[s:, n] == 0)
    layer32 = _loss_layer([x.shape, ind.shape, lab.shape], _opts(**cfg))
    loss32, diff32 = _run(layer32, x.astype(np.float32), ind, lab, torch.float32)
    l32, d32, _ = ref.ctc_loss(x.astype(np.float32), ind, lab, dtype=np.float32, **kw)
    assert diff32.dtype == np.float32
    assert loss32 == pytest.approx(float(l32), rel=1e-5)
    np.testing.assert_allclose(diff32, d32, rtol=1e-4, atol=2e-6)


def test_collapse_and_merge_change_the_loss():
    """A repeated target: collapsing it, or not merging repeats, gives other losses (the reference agrees)."""
    r = np.random.default_rng(5)
    x = r.standard_normal((6, 1, 4))
    ind = np.array([[0.0], [1], [1], [1], [1], [1]])
    lab = np.array([[1.0], [1], [2], [-1], [-1], [-1]])
    got = {}
    for cfg in (dict(), dict(collapse=True), dict(merge=False)):
        loss, _ = _run(_loss_layer([x.shape, ind.shape, lab.shape], _opts(**cfg)).double(), x, ind, lab)
        want = ref.ctc_loss(x, ind, lab, collapse=cfg.get("collapse", False), merge=cfg.get("merge", True))[0]
        assert loss == pytest.approx(want, rel=1e-12)
        got[str(cfg)] = loss
    assert len({round(v, 9) for v in got.values()}) == 3
    lab1 = np.array([[1.0], [2], [-1], [-1], [-1], [-1]])  # collapsing [1 1 2] is [1 2]
    plain = _loss_layer([x.shape, ind.shape, lab.shape]).double()
    assert got[str(dict(collapse=True))] == pytest.approx(_run(plain, x, ind, lab1)[0], rel=1e-12)


@pytest.mark.parametrize("blank", [-1, 0])
def test_loss_is_torch_ctc_mean_over_n_and_diff_its_sum_gradient(blank):
    """With ``ctc_merge_repeated`` (torch's semantics): the loss is torch's summed ctc_loss / N, and the fork's
    diff is the gradient of the sum (N times the reported loss's), not of the mean."""
    r = np.random.default_rng(11)
    t_steps, classes, lengths, label_lengths = 12, 6, [12, 8, 11, 5], [5, 3, 6, 2]
    bl = classes - 1 if blank < 0 else blank
    ind, lab = _batch(r, t_steps, lengths, label_lengths, classes, bl)
    x = r.standard_normal((t_steps, 4, classes))
    loss, diff = _run(_loss_layer([x.shape, ind.shape, lab.shape], f"blank_index: {blank}").double(), x, ind, lab)
    xt = torch.tensor(x, requires_grad=True)
    targets = torch.cat([torch.tensor(lab[:k, n]) for n, k in enumerate(label_lengths)]).long()
    total = F.ctc_loss(torch.log_softmax(xt, -1), targets, torch.tensor(lengths), torch.tensor(label_lengths),
                       blank=bl, reduction="sum", zero_infinity=False)
    total.backward()
    assert loss == pytest.approx(total.item() / 4, rel=1e-12)
    np.testing.assert_allclose(diff, xt.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_diff_is_n_times_the_finite_difference_gradient():
    """Float64 central differences of the reported loss, times N, give the fork's diff (every config at once:
    repeats, merge off, output_delay, varying lengths)."""
    r = np.random.default_rng(3)
    ind, lab = _batch(r, 6, [6, 5, 4], [3, 2, 2], 4, 3)
    x = r.standard_normal((6, 3, 4))
    for opts in ("", _opts(merge=False, delay=1)):
        layer = _loss_layer([x.shape, ind.shape, lab.shape], opts).double()
        _, diff = _run(layer, x, ind, lab)
        eps, num = 1e-6, np.zeros_like(x)
        with torch.no_grad():
            for i in np.ndindex(x.shape):
                hi, lo = x.copy(), x.copy()
                hi[i] += eps
                lo[i] -= eps
                num[i] = (layer(*(torch.tensor(a) for a in (hi, ind, lab))) -
                          layer(*(torch.tensor(a) for a in (lo, ind, lab)))).item() / (2 * eps)
        np.testing.assert_allclose(diff, 3 * num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("opts", ["", _opts(blank=0, merge=False), _opts(collapse=True, delay=2), _opts(blank=1)])
def test_gradcheck_one_sequence(opts):
    """N = 1: the fork's diff is the true float64 gradient (torch.autograd.gradcheck)."""
    r = np.random.default_rng(8)
    ind = np.array([[0.0], [1], [1], [1], [1], [1], [1], [0]])
    lab = np.array([[2.0], [2], [3], [-1], [-1], [-1], [-1], [-1]])
    layer = _loss_layer([(8, 1, 5), ind.shape, lab.shape], opts).double()
    x = torch.tensor(r.standard_normal((8, 1, 5)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(v, torch.tensor(ind), torch.tensor(lab)), (x,), atol=1e-7)


def test_loss_weight_does_not_scale_the_diff_in_a_net(tmp_path):
    """The fork's Backward never reads the top's diff: with ``loss_weight: 2`` the net's loss doubles, the
    bottom's diff stays the fork's."""
    r = np.random.default_rng(4)
    ind, lab = _batch(r, 5, [5, 4], [2, 3], 4, 3)
    x = r.standard_normal((5, 2, 4)).astype(np.float32)
    (tmp_path / "n.prototxt").write_text(
        'force_backward: true\n'
        'layer { name: "in" type: "Input" top: "x" top: "ind" top: "lab" input_param { shape { dim: 5 dim: 2 dim: 4 }'
        ' shape { dim: 5 dim: 2 } shape { dim: 5 dim: 2 } } }\n'
        'layer { name: "ctc" type: "CTCLoss" bottom: "x" bottom: "ind" bottom: "lab" top: "loss" loss_weight: 2 }\n')
    net = caffe.Net(str(tmp_path / "n.prototxt"), caffe.TRAIN)
    for k, v in (("x", x), ("ind", ind), ("lab", lab)):
        net.blobs[k].data[...] = v
    net.forward()
    net.backward()
    want_loss, want_diff, _ = ref.ctc_loss(x, ind, lab, dtype=np.float32)
    assert float(net.blobs["loss"].data) == pytest.approx(float(want_loss), rel=1e-5)
    np.testing.assert_allclose(net.blobs["x"].diff, want_diff, rtol=1e-4, atol=2e-6)


def test_emptied_target_and_warning(caplog):
    """A target equal to the blank ends the label (a warning): [blank] gives l' = (blank), U = 1 (where the
    fork writes outside its alpha/beta arrays), the all-blank path; a target >= C does the same."""
    r = np.random.default_rng(6)
    x = r.standard_normal((5, 2, 4))
    ind = np.array([[0.0, 0], [1, 1], [1, 1], [1, 1], [0, 1]])
    lab = np.array([[3.0, 1], [3, 7], [-1, 7], [-1, -1], [-1, -1]])
    layer = _loss_layer([x.shape, ind.shape, lab.shape]).double()
    with caplog.at_level(logging.WARNING, logger="neocaffe.layers"):
        loss, diff = _run(layer, x, ind, lab)
    assert "To end a sequence you should pass a negative number instead of 3" in caplog.text
    want_loss, want_diff, info = ref.ctc_loss(x, ind, lab)
    assert info["l_primes"] == [[3], [3, 1, 3]]
    y0 = np.exp(x[:4, 0]) / np.exp(x[:4, 0]).sum(-1, keepdims=True)
    assert want_loss == pytest.approx((-np.log(y0[:, 3]).sum() + -info["log_p"][1]) / 2, rel=1e-12)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case, match", [
    ("empty_long", "empty target but 3 steps"),
    ("label_longer", "label length must be <= the sequence length"),
    ("after_blank", "valid target 1 after one"),
    ("delay", "not enough time"),
])
def test_the_forks_checks_are_errors(case, match):
    ind = np.array([[0.0], [1], [1], [0], [0]])
    lab = {"empty_long": [-1, -1, -1, -1, -1], "label_longer": [1, 2, 1, 0, -1], "after_blank": [0, 3, 1, -1, -1],
           "delay": [0, 1, 2, -1, -1]}[case]
    lab = np.array(lab, dtype=np.float64)[:, None]
    layer = _loss_layer([(5, 1, 4), ind.shape, lab.shape], "output_delay: 1" if case == "delay" else "").double()
    with pytest.raises(LayerSetupError, match=match):
        layer(torch.zeros(5, 1, 4), torch.tensor(ind), torch.tensor(lab))
    with pytest.raises(ValueError):
        ref.ctc_loss(np.zeros((5, 1, 4)), ind, lab, output_delay=1 if case == "delay" else 0)


def test_shape_errors():
    with pytest.raises(LayerSetupError, match="must be \\(T, N\\)"):
        _loss_layer([(5, 2, 4), (5, 3), (5, 2)])
    with pytest.raises(LayerSetupError, match="4th axis of 1"):
        _loss_layer([(5, 2, 4, 2), (5, 2), (5, 2)])
    with pytest.raises(LayerSetupError, match="blank_index 4"):
        _loss_layer([(5, 2, 4), (5, 2), (5, 2)], "blank_index: 4")
    layer = _loss_layer([(5, 2, 4), (5, 2), (5, 2)])
    with pytest.raises(LayerSetupError, match="fixed at setup"):
        layer.reshape([(5, 2, 6), (5, 2), (5, 2)])
    assert layer.reshape([(7, 3, 4), (7, 3), (7, 3)]) == [()]  # T and N may change


# -- the fork's test_ctc_loss_layer.cpp ----------------------------------------------------------
def _fork_fixture(dtype):
    big = float(np.finfo(dtype).max)
    ind = np.ones((4, 2))
    ind[0] = 0
    lab = -np.ones((4, 2))
    lab[0], lab[1] = 0, 1
    return big, ind, lab


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fork_forward_correct(dtype):
    """TestForward: T = 4, N = 2, C = 3, one-hot (Dtype max) on the right path: loss 0 at every
    loss_calculation_t, lengths (4, 4) and (2, 2), a zero diff."""
    big, ind, lab = _fork_fixture(dtype)
    x = np.zeros((4, 2, 3), dtype=dtype)
    for (t, n, c) in ((0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 0, 2), (0, 1, 0), (1, 1, 2), (2, 1, 1), (3, 1, 2)):
        x[t, n, c] = big
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    layer = _loss_layer([x.shape, ind.shape, lab.shape]).to(tdt)
    loss, diff = _run(layer, x, ind, lab, tdt)
    assert loss == 0.0
    assert layer.sequence_length.tolist() == [4, 4] and layer.label_length.tolist() == [2, 2]
    assert np.abs(diff).sum() == 0
    for t in range(1, 4):
        layer.loss_calculation_t = t
        assert _run(layer, x, ind, lab, tdt)[0] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fork_forward_wrong(dtype):
    """TestForwardWrong: every step predicts the blank: no valid path, loss +inf (the fork's
    EXPECT_FLOAT_EQ(loss, FLT_MAX) holds for +inf: one ulp apart), the diff is the softmax (1 on the
    blank)."""
    big, ind, lab = _fork_fixture(dtype)
    x = np.zeros((4, 2, 3), dtype=dtype)
    x[:, :, 2] = big
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    layer = _loss_layer([x.shape, ind.shape, lab.shape]).to(tdt)
    loss, diff = _run(layer, x, ind, lab, tdt)
    assert math.isinf(loss) and loss > 0
    if dtype == np.float32:
        assert np.float32(loss).view(np.int32) - np.float32(FLT_MAX).view(np.int32) == 1  # gtest's 4-ulp FLOAT_EQ
    for t in range(1, 4):
        layer.loss_calculation_t = t
        assert math.isinf(_run(layer, x, ind, lab, tdt)[0])
    np.testing.assert_array_equal(diff, (x == big).astype(dtype))


def test_fork_forward_equal():
    """TestForwardEqual: T = 20, C = 5, all-zero input (uniform y), target 0 1 2 3: loss
    -log(C(T + L, 2L) / C^T) at every loss_calculation_t."""
    t_steps, classes, k = 20, 5, 4
    x = np.zeros((t_steps, 1, classes))
    ind = np.ones((t_steps, 1))
    ind[0] = 0
    lab = -np.ones((t_steps, 1))
    lab[:k, 0] = np.arange(k) % (classes - 1)
    want = -math.log(math.comb(t_steps + k, 2 * k) / classes ** t_steps)
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        layer = _loss_layer([x.shape, ind.shape, lab.shape]).to(dtype)
        for t in range(t_steps):
            layer.loss_calculation_t = t
            assert _run(layer, x, ind, lab, dtype)[0] == pytest.approx(want, rel=rel)


def test_fork_forward_random():
    """TestForwardRandom: T = 41, N = 29, C = 37, Gaussian input, random lengths and labels: the loss is the
    same at every loss_calculation_t (and the reference's)."""
    r = np.random.default_rng(41)
    t_steps, n_seq, classes = 41, 29, 37
    lengths = [int(v) for v in r.uniform(1.0, t_steps - 0.001, n_seq)]
    label_lengths = [int(r.integers(s)) + 1 for s in lengths]
    ind = np.ones((t_steps, n_seq))
    ind[0] = 0
    lab = np.floor(r.uniform(0, classes - 1.0001, (t_steps, n_seq)))
    for n, (s, k) in enumerate(zip(lengths, label_lengths)):
        ind[s:, n] = 0
        lab[k:, n] = -1
    x = r.standard_normal((t_steps, n_seq, classes))
    layer = _loss_layer([x.shape, ind.shape, lab.shape]).double()
    loss, diff = _run(layer, x, ind, lab)
    want_loss, want_diff, _ = ref.ctc_loss(x, ind, lab)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-9, atol=1e-12)
    for t in (1, 7, 20, 40):
        layer.loss_calculation_t = t
        assert _run(layer, x, ind, lab)[0] == pytest.approx(loss, rel=1e-12)


def test_fork_gradient_graves_values():
    """TestGradient: Alex Graves' values (via TensorFlow's test): log-probability inputs, -loss the mean of
    the two log-likelihoods, the diff (not divided by N) to 1e-6. The likelihoods of the inputs as printed
    (rows summing to 1 +- 1e-6) are -3.3421126 and -5.4226217: their mean is 2.2e-6 from the printed values'
    (the fork's ``EXPECT_LE(abs(...), 0.000001)`` passes where ``abs`` is C's int abs)."""
    p0 = np.array([[0.633766, 0.221185, 0.0917319, 0.0129757, 0.0142857, 0.0260553],
                   [0.111121, 0.588392, 0.278779, 0.0055756, 0.00569609, 0.010436],
                   [0.0357786, 0.633813, 0.321418, 0.00249248, 0.00272882, 0.0037688],
                   [0.0663296, 0.643849, 0.280111, 0.00283995, 0.0035545, 0.00331533],
                   [0.458235, 0.396634, 0.123377, 0.00648837, 0.00903441, 0.00623107]])
    g0 = np.array([[-0.366234, 0.221185, 0.0917319, 0.0129757, 0.0142857, 0.0260553],
                   [0.111121, -0.411608, 0.278779, 0.0055756, 0.00569609, 0.010436],
                   [0.0357786, 0.633813, -0.678582, 0.00249248, 0.00272882, 0.0037688],
                   [0.0663296, -0.356151, 0.280111, 0.00283995, 0.0035545, 0.00331533],
                   [-0.541765, 0.396634, 0.123377, 0.00648837, 0.00903441, 0.00623107]])
    p1 = np.array([[0.30176, 0.28562, 0.0831517, 0.0862751, 0.0816851, 0.161508],
                   [0.24082, 0.397533, 0.0557226, 0.0546814, 0.0557528, 0.19549],
                   [0.230246, 0.450868, 0.0389607, 0.038309, 0.0391602, 0.202456],
                   [0.280884, 0.429522, 0.0326593, 0.0339046, 0.0326856, 0.190345],
                   [0.423286, 0.315517, 0.0338439, 0.0393744, 0.0339315, 0.154046]])
    g1 = np.array([[-0.69824, 0.28562, 0.0831517, 0.0862751, 0.0816851, 0.161508],
                   [0.24082, -0.602467, 0.0557226, 0.0546814, 0.0557528, 0.19549],
                   [0.230246, 0.450868, 0.0389607, 0.038309, 0.0391602, -0.797544],
                   [0.280884, -0.570478, 0.0326593, 0.0339046, 0.0326856, 0.190345],
                   [-0.576714, 0.315517, 0.0338439, 0.0393744, 0.0339315, 0.154046]])
    x = np.log(np.stack([p0, p1], 1))
    ind = np.ones((5, 2))
    ind[0] = 0
    lab = -np.ones((5, 2))
    lab[:, 0] = [0, 1, 2, 1, 0]
    lab[:4, 1] = [0, 1, 1, 0]
    for dtype in (torch.float64, torch.float32):
        layer = _loss_layer([x.shape, ind.shape, lab.shape]).to(dtype)
        loss, diff = _run(layer, x, ind, lab, dtype)
        assert abs(-loss - (-3.34211 + -5.42262) / 2) <= 3e-6
        assert -loss == pytest.approx((-3.3421125850984374 + -5.422621730988235) / 2, rel=1e-6 if dtype == torch.float32
                                      else 1e-12)  # torch's ctc_loss of the same inputs
        np.testing.assert_allclose(diff, np.stack([g0, g1], 1), rtol=0, atol=1e-6)
        for t in range(1, 5):
            layer.loss_calculation_t = t
            assert _run(layer, x, ind, lab, dtype)[0] == pytest.approx(loss, rel=1e-6)


# -- CTCGreedyDecoder ----------------------------------------------------------------------------
def _decoder(shapes, tops=("seq", "score"), opts=""):
    bottoms = "".join(f' bottom: "{b}"' for b in ("x", "ind", "tgt")[:len(shapes)])
    text = (f'name: "dec" type: "CTCGreedyDecoder"{bottoms}' + "".join(f' top: "{t}"' for t in tops)
            + (f" ctc_decoder_param {{ {opts} }}" if opts else ""))
    return _layer(text, shapes, 1)


def _fork_decoder_case():
    with np.errstate(divide="ignore"):
        m0 = np.log([[1.0, 0, 0, 0], [0, 0, 0.4, 0.6], [0, 0, 0.4, 0.6], [0, 0.9, 0.1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
        m1 = np.log([[0.1, 0.9, 0, 0], [0, 0.9, 0.1, 0], [0, 0, 0.1, 0.9], [0, 0.9, 0.1, 0.1], [0.9, 0.1, 0, 0],
                     [0, 0, 0, 0]])
    x = np.stack([m0, m1], 1)
    ind = np.ones((6, 2))
    ind[0, 0] = ind[4, 0] = ind[5, 0] = 0
    ind[0, 1] = ind[5, 1] = 0
    tgt = -np.ones((6, 2))
    tgt[:2, 0] = [0, 1]
    tgt[:3, 1] = [1, 1, 0]
    return x, ind, tgt


@pytest.mark.parametrize("with_accuracy", [True, False])
def test_fork_greedy_decoder(with_accuracy):
    """TestGreedyDecoder: log-probability inputs, sequences [0 1] (4 steps) and [1 1 0] (5 steps), score
    -sum log max (the fork checks scores[0] twice; scores[1] is 5 steps of -log 0.9), accuracy 1."""
    x, ind, tgt = _fork_decoder_case()
    if with_accuracy:
        layer = _decoder([x.shape, ind.shape, tgt.shape], ("seq", "score", "acc"))
        seq, score, acc = layer(torch.tensor(x), torch.tensor(ind), torch.tensor(tgt))
        assert acc.shape == (1, 1, 1, 1) and acc.item() == 1.0
    else:
        layer = _decoder([x.shape, ind.shape])
        seq, score = layer(torch.tensor(x), torch.tensor(ind))
    assert seq.shape == (2, 6, 1, 1) and score.shape == (2, 1, 1, 1)
    assert seq[:, :, 0, 0].tolist() == [[0, 1, -1, -1, -1, -1], [1, 1, 0, -1, -1, -1]]
    assert score[0].item() == pytest.approx(-np.log([1.0, 0.6, 0.6, 0.9]).sum(), rel=1e-12)
    assert score[1].item() == pytest.approx(-5 * np.log(0.9), rel=1e-12)


def test_decoder_hand_cases():
    """Merging, blank first, 3 bottoms with 2 tops (the accuracy second), edit-distance accuracy."""
    # classes per step (one-hot): 1 1 0 2 2 0 1 with blank 0
    steps = [1, 1, 0, 2, 2, 0, 1]
    x = np.eye(3)[steps][:, None, :] * 5.0
    ind = np.ones((7, 1))
    ind[0] = 0
    tgt = -np.ones((7, 1))
    tgt[:4, 0] = [1, 2, 2, 1]
    merged = _decoder([x.shape, ind.shape, tgt.shape], ("seq", "acc"), "blank_index: 0")
    seq, acc = merged(torch.tensor(x), torch.tensor(ind), torch.tensor(tgt))
    assert seq[0, :, 0, 0].tolist()[:4] == [1, 2, 1, -1]
    assert acc.item() == pytest.approx(1 - 1 / 4)  # one deletion out of max(4, 3)
    raw = _decoder([x.shape, ind.shape, tgt.shape], ("seq", "acc"), "blank_index: 0 ctc_merge_repeated: false")
    seq, acc = raw(torch.tensor(x), torch.tensor(ind), torch.tensor(tgt))
    assert seq[0, :, 0, 0].tolist()[:6] == [1, 1, 2, 2, 1, -1]
    assert acc.item() == pytest.approx(1 - 1 / 5)  # one insertion out of max(4, 5)
    last = _decoder([x.shape, ind.shape], ("seq",))  # blank = C - 1 = 2
    assert last(torch.tensor(x), torch.tensor(ind))[0, :, 0, 0].tolist()[:4] == [1, 0, 0, 1]


def test_decoder_equals_the_fork_loops():
    """Random inputs, varying indicator lengths, ties broken to the first class, targets with repeats and
    empty ones (an empty pair adds 0 error)."""
    r = np.random.default_rng(12)
    t_steps, n_seq, classes = 9, 7, 4
    x = np.round(r.standard_normal((t_steps, n_seq, classes)), 0)  # ties
    ind = np.ones((t_steps, n_seq))
    ind[0] = 0
    for n, s in enumerate([9, 1, 4, 6, 2, 8, 3]):
        ind[s:, n] = 0
    ind[5, 5] = 0.4  # only an exact 0 ends a decoded sequence
    tgt = -np.ones((t_steps, n_seq))
    for n, k in enumerate([3, 0, 2, 5, 1, 4, 0]):
        tgt[:k, n] = r.integers(0, classes - 1, k) + 0.3
    for opts in ("", "blank_index: 1 ctc_merge_repeated: false"):
        layer = _decoder([x.shape, ind.shape, tgt.shape], ("seq", "score", "acc"), opts)
        seq, score, acc = layer(torch.tensor(x), torch.tensor(ind), torch.tensor(tgt))
        ws, wsc, wacc = ref.greedy_decode(x, ind, tgt, blank_index=1 if opts else -1, merge=not opts)
        np.testing.assert_array_equal(seq[:, :, 0, 0].numpy(), ws)
        np.testing.assert_allclose(score[:, 0, 0, 0].numpy(), wsc, rtol=1e-12)
        assert acc.item() == pytest.approx(wacc, rel=1e-12) and 0 < wacc < 1


def test_decoder_blob_count_rules():
    with pytest.raises(LayerSetupError, match="with 2 bottoms it takes 1 or 2 tops"):
        _decoder([(4, 2, 3), (4, 2)], ("a", "b", "c"))
    layer = _decoder([(4, 2, 3), (4, 2), (4, 2)], ("seq",))
    out = layer(torch.zeros(4, 2, 3), torch.zeros(4, 2), torch.zeros(4, 2))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 1, 1)
    with pytest.raises(LayerSetupError, match="too small"):
        _decoder([(4, 2, 3), (2, 2)], ("seq",))
    assert not layer.allow_force_backward(0)


# -- a CRNN-style net ----------------------------------------------------------------------------
T_STEPS, BATCH, CLASSES = 10, 6, 4  # labels 0, 1, 2; blank 3
BODY = f'''
layer {{ name: "in" type: "Input" top: "data" top: "cont" top: "label"
  input_param {{ shape {{ dim: {BATCH} dim: 1 dim: 3 dim: {T_STEPS} }} shape {{ dim: {T_STEPS} dim: {BATCH} }}
                shape {{ dim: {T_STEPS} dim: {BATCH} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 8 kernel_h: 3 kernel_w: 1 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "perm" type: "Permute" bottom: "conv" top: "perm"
  permute_param {{ order: 3 order: 0 order: 1 order: 2 }} }}
layer {{ name: "feat" type: "Reshape" bottom: "perm" top: "feat"
  reshape_param {{ shape {{ dim: 0 dim: 0 dim: -1 }} }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "feat" bottom: "cont" top: "lstm"
  recurrent_param {{ num_output: 12 weight_filler {{ type: "uniform" min: -0.3 max: 0.3 }}
                    bias_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "lstm" top: "fc"
  inner_product_param {{ num_output: {CLASSES} axis: 2 weight_filler {{ type: "xavier" }} }} }}
'''
TRAIN_NET = BODY + 'layer { name: "loss" type: "CTCLoss" bottom: "fc" bottom: "cont" bottom: "label" top: "loss" }\n'
TEST_NET = BODY + ('layer { name: "decode" type: "CTCGreedyDecoder" bottom: "fc" bottom: "cont" bottom: "label" '
                   'top: "decoded" top: "accuracy" }\n')


def _text_images(r):
    """Each image writes its label (1 to 3 of the classes 0-2) left to right, two columns per label and an
    empty column after each; row c lit means class c."""
    data = np.zeros((BATCH, 1, 3, T_STEPS), np.float32)
    label = -np.ones((T_STEPS, BATCH), np.float32)
    for n in range(BATCH):
        seq = r.integers(0, 3, 1 + n % 3)
        label[:len(seq), n] = seq
        for i, c in enumerate(seq):
            data[n, 0, c, 3 * i:3 * i + 2] = 1.0
    cont = np.ones((T_STEPS, BATCH), np.float32)
    cont[0] = 0
    return data, cont, label


def test_crnn_net_trains_with_sgd_and_decodes(tmp_path):
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    (tmp_path / "test.prototxt").write_text(TEST_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" display: 0 '
        'max_iter: 1000 snapshot: 0 solver_mode: CPU random_seed: 7 clip_gradients: 10')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    data, cont, label = _text_images(np.random.default_rng(0))
    for k, v in (("data", data), ("cont", cont), ("label", label)):
        solver.net.blobs[k].data[...] = v
    first = float(solver.net.forward()["loss"])
    conv_before = solver.net.params["conv"][0].data.copy()
    solver.step(60)
    last = float(solver.net.forward()["loss"])
    assert last < 0.25 * first, (first, last)
    assert np.abs(solver.net.params["conv"][0].data - conv_before).max() > 1e-3  # diffs reach through the LSTM
    test = caffe.Net(str(tmp_path / "test.prototxt"), caffe.TEST)
    test.share_with(solver.net)
    for k, v in (("data", data), ("cont", cont), ("label", label)):
        test.blobs[k].data[...] = v
    out = test.forward()
    seqs, _, acc = ref.greedy_decode(test.blobs["fc"].data, cont, label)
    np.testing.assert_array_equal(out["decoded"][:, :, 0, 0], seqs)
    assert out["accuracy"].shape == (1, 1, 1, 1) and out["accuracy"].item() == pytest.approx(acc, rel=1e-6)
    assert acc > 0.8, (acc, seqs, label)


# -- CUDA ----------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    """Loss, diff and decoder outputs on a CUDA device equal the CPU's (float64)."""
    r = np.random.default_rng(21)
    x = r.standard_normal((12, 5, 6))
    for blank, opts in ((5, ""), (0, _opts(blank=0, collapse=True, merge=False, delay=1))):
        ind, lab = _batch(r, 12, [12, 9, 5, 1, 11], [6, 4, 2, 0, 5] if blank else [6, 4, 3, 0, 5], 6, blank)
        layer = _loss_layer([x.shape, ind.shape, lab.shape], opts).double()
        loss, diff = _run(layer, x, ind, lab)
        xt = torch.tensor(x, device="cuda", requires_grad=True)
        got = layer.to("cuda")(xt, torch.tensor(ind, device="cuda"), torch.tensor(lab, device="cuda"))
        got.backward()
        assert got.device.type == "cuda" and got.item() == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(xt.grad.cpu().numpy(), diff, rtol=1e-10, atol=1e-12)
    dec = _decoder([x.shape, ind.shape, lab.shape], ("seq", "score", "acc"))
    cpu = dec(torch.tensor(x), torch.tensor(ind), torch.tensor(lab))
    gpu = dec(*(torch.tensor(a, device="cuda") for a in (x, ind, lab)))
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda"
        np.testing.assert_allclose(g.cpu().numpy(), c.numpy(), rtol=1e-12)


def test_a_ctc_loss_without_a_top_gets_the_forks_anonymous_one():
    """LossLayer::AutoTopBlobs: written without a top, the loss is still the net's output."""
    from neocaffe.graph.net import Net

    head = ('layer { name: "in" type: "Input" top: "x" top: "ind" top: "lab" input_param { shape { dim: 5 dim: 2 '
            'dim: 4 } shape { dim: 5 dim: 2 } shape { dim: 5 dim: 2 } } }\n')
    x = torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(3))
    ind = torch.tensor([[0, 0]] + [[1, 1]] * 4, dtype=torch.float32)
    lab = torch.tensor([[1, 2], [2, 1], [-1, -1], [-1, -1], [-1, -1]], dtype=torch.float32)
    losses = []
    for top in ("", ' top: "loss"'):
        p = text_format.Parse(head + f'layer {{ name: "loss" type: "CTCLoss" bottom: "x" bottom: "ind" '
                              f'bottom: "lab"{top} }}', caffe_pb2.NetParameter())
        net = Net(p, TRAIN)
        for name, v in (("x", x), ("ind", ind), ("lab", lab)):
            net.blob_data[name].copy_(v)
        losses.append(float(net.forward()))
    assert losses[0] == losses[1] and np.isfinite(losses[0]) and losses[0] > 0
