"""NormFace's triplet loss and InnerProduct's weight bottom (happynear/caffe-windows ms @ 967eedf2, the same
files at AMSoftmax's pin 504d8a85) against loop ports of the fork's CPU code: GeneralTripletLoss
(general_triplet_loss_layer.cpp: margin, add_center_loss, hardest_only with its zero-distance test,
positive_first/positive_upper_bound, positive_weight, negative_weight, the distance top) and InnerProduct
with its weights (and bias) from bottoms (inner_product_layer.cpp: N from bottom 1's first axis, transpose
reading its memory as K x N); float64 gradient checks where the fork's diff is the gradient, and checks
that it is not where the module says so; the ONNX export of the weight-bottom form; NormFace's prototxts
(happynear/NormFace @ 8438887: prototxt/normalized_Euclidean_triplet.prototxt and
combine_softmax_contrastive.prototxt), trained a few iterations by the solver with the loss falling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

f32 = np.float32


def _layer(text: str, shapes, phase=TRAIN):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, phase)


# -- a loop port of GeneralTripletLossLayer's Forward_cpu / Backward_cpu -----------------------------
def port_general_triplet(data, label, p, loss_weight=1.0, f=f32):
    """Loss, distances top and bottom diff on distances (num, dim); ``p``: the parameter message."""
    d = data.astype(f).reshape(data.shape[0], -1)
    num, dim = d.shape
    lab = [int(v) for v in label]
    margin, pw, nw, pub = f(p.margin), f(p.positive_weight), f(p.negative_weight), f(p.positive_upper_bound)
    diff = np.zeros((num, dim), f)
    hardest = [-1] * num
    pos_d, neg_d = f(0), f(0)
    for i in range(num):
        same = d[i, lab[i]]
        pos_d = f(pos_d + same)
        for j in range(dim):
            if j == lab[i]:
                diff[i, j] = 0
                continue
            diff[i, j] = f(max(f(0), f(f(same + margin) - d[i, j])) * nw)
            neg_d = f(neg_d + d[i, j])
            h = hardest[i]
            if p.hardest_only and diff[i, j] > 0 and (h < 0 or diff[i, j] > diff[i, h]):
                hardest[i] = j
        if p.hardest_only and hardest[i] >= 0:
            for j in range(dim):
                if j != lab[i] and j != hardest[i]:
                    diff[i, j] = 0
        if p.positive_first and same > pub:
            for j in range(dim):
                if j != lab[i]:
                    diff[i, j] = 0
    loss = f(np.abs(diff).sum(dtype=np.float64)) / f(num)
    dist = np.array([f(pos_d / f(num)), f(f(neg_d / f(num)) / f(dim - 1))], f)
    for i in range(num):  # Backward_cpu, on the forward's bottom_diff
        same = d[i, lab[i]]
        if p.positive_first and same > pub:
            diff[i] = 0
            diff[i, lab[i]] = pw
            continue
        count = 0
        if p.hardest_only:
            h = hardest[i]
            if h >= 0 and d[i, h] != 0:  # the fork's `bottom_data[...]`
                diff[i, h] = -nw
                count += 1
        else:
            for j in range(dim):
                if j != lab[i]:
                    if f(same + margin) > d[i, j]:
                        diff[i, j] = -nw
                        count += 1
                    else:
                        diff[i, j] = 0
        if p.add_center_loss or count > 0:
            diff[i, lab[i]] = pw
    diff *= f(f(loss_weight) / f(num))
    return loss, dist, diff.reshape(data.shape)


def test_the_forks_triplet_parameter_defaults():
    t = caffe_pb2.GeneralTripletParameter()
    assert [getattr(t, n) for n in ("margin", "add_center_loss", "hardest_only", "positive_first",
                                    "positive_upper_bound", "positive_weight", "negative_weight")] == [
        f32(0.2), True, False, False, 1.0, 1.0, 1.0]
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["general_triplet_loss_param"].number == 217


# -- GeneralTripletLoss ------------------------------------------------------------------------------
GTL = ('name: "triplet_loss" type: "GeneralTripletLoss" bottom: "d" bottom: "label" top: "contrastive_loss" '
       'top: "mean_distance" general_triplet_loss_param {{ {} }}')
CONFIGS = {
    "defaults": "",
    "normface": "margin: 0.8 add_center_loss: true hardest_only: true negative_weight: 1",
    "hardest_no_center": "margin: 0.5 hardest_only: true add_center_loss: false",
    "no_center": "margin: 0.3 add_center_loss: false",
    "positive_first": "margin: 0.6 positive_first: true positive_upper_bound: 0.8",
    "positive_first_hardest": "margin: 0.6 positive_first: true positive_upper_bound: 0.8 hardest_only: true",
    "weights": "margin: 0.7 positive_weight: 2 negative_weight: 0.5",
    "negative_weight_below_zero": "margin: 0.6 hardest_only: true negative_weight: -0.5",
    "zero_negative_weight": "margin: 0.6 hardest_only: true negative_weight: 0 add_center_loss: false",
}


def _gtl_data(r):
    d = r.uniform(0, 2.2, (6, 5)).astype(f32)
    label = np.array([0, 3, 1, 2, 4, 2], f32)
    d[1] = [0.0, 1.5, 1.9, 0.9, 1.7]  # the hardest negative at distance 0: kept as the forward's hinge
    d[2] = [2.0, 0.1, 1.9, 2.1, 1.8]  # nothing within any margin
    d[3] = [0.6, 0.6, 0.4, 1.9, 2.0]  # a tie: the first is the hardest
    d[4, 4] = 1.5  # past positive_upper_bound
    return d, label


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_general_triplet_matches_the_forks_loops(config):
    r = np.random.default_rng(11)
    d, label = _gtl_data(r)
    text = GTL.format(CONFIGS[config])
    p = text_format.Parse(text, caffe_pb2.LayerParameter()).general_triplet_loss_param
    layer = _layer(text, [d.shape, label.shape])
    assert layer.reshape([d.shape, label.shape]) == [(), (2,)]
    for _ in range(2):  # nothing carried from one forward to the next
        x = torch.tensor(d, requires_grad=True)
        loss, dist = layer(x, torch.tensor(label))
        loss.backward(torch.tensor(0.7, dtype=torch.float32))
        want_loss, want_dist, want_diff = port_general_triplet(d, label, p, 0.7)
        np.testing.assert_allclose(float(loss.detach()), want_loss, rtol=1e-6)
        np.testing.assert_allclose(dist.numpy(), want_dist, rtol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), want_diff, rtol=1e-6, atol=1e-7)
        assert not dist.requires_grad  # the distance top passes no diff


def test_general_triplet_quirks():
    """Each by hand, num = 2 (diffs times num): the hardest at distance 0 keeps its forward hinge and adds
    no center term; a row without an active negative gets the center term only with add_center_loss; a
    negative negative_weight finds no hardest, so the row keeps every forward term."""
    text = GTL.format("margin: 0.5 hardest_only: true add_center_loss: false").replace(' top: "mean_distance"', "")
    d = np.array([[0.0, 0.3, 0.2], [0.9, 2.0, 1.9]], f32)  # row 0: label 2, s + m = 0.7; row 1: label 0
    x = torch.tensor(d, requires_grad=True)
    loss = _layer(text, [(2, 3), (2,)])(x, torch.tensor([2.0, 0.0]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(0.7 / 2)  # only the hardest (0.7 - 0) is left
    np.testing.assert_allclose(x.grad.numpy() * 2, [[0.7, 0, 0], [0, 0, 0]], rtol=1e-6)
    neg = GTL.format("margin: 0.5 hardest_only: true negative_weight: -2").replace(' top: "mean_distance"', "")
    x = torch.tensor(d, requires_grad=True)
    loss = _layer(neg, [(2, 3), (2,)])(x, torch.tensor([2.0, 0.0]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx((1.4 + 0.8) / 2)  # |(0.7 - 0) * -2| + |(0.7 - 0.3) * -2|
    np.testing.assert_allclose(x.grad.numpy() * 2, [[-1.4, -0.8, 1], [1, 0, 0]], rtol=1e-6)


def _triplet_loss_ref(d, label, margin, nw, hardest):
    """The fork's reported loss in autograd: sum of |max(0, s + margin - d) * nw| over the negatives."""
    s = d.gather(1, label[:, None])
    pos = torch.arange(d.shape[1])[None, :] == label[:, None]
    h = torch.where(pos, 0, (s + margin - d).clamp(min=0) * nw).abs()
    if hardest:
        h = torch.where(torch.arange(d.shape[1])[None, :] == h.argmax(1, keepdim=True), h, 0)
    return h.sum() / d.shape[0]


def test_general_triplet_gradient_and_the_places_it_is_not():
    """hardest_only without the center term (positive_weight = negative_weight): the fork's diff is the
    float64 gradient. With every active negative: the negatives' diff is the gradient, the label's is
    positive_weight where the gradient is negative_weight times the active count."""
    r = np.random.default_rng(12)
    d = torch.tensor(r.permutation(np.linspace(0.1, 2.4, 24)).reshape(6, 4) + r.uniform(-0.01, 0.01, (6, 4)),
                     requires_grad=True)
    label = torch.tensor([0, 3, 1, 2, 3, 0])
    text = GTL.format("margin: 0.45 hardest_only: true add_center_loss: false").replace(' top: "mean_distance"', "")
    layer = _layer(text, [(6, 4), (6,)])
    assert torch.autograd.gradcheck(lambda a: layer(a, label.double()) * 0.3, (d,))
    (got,) = torch.autograd.grad(layer(d, label.double()), d)
    (want,) = torch.autograd.grad(_triplet_loss_ref(d, label, 0.45, 1.0, True), d)
    torch.testing.assert_close(got, want)
    layer = _layer(GTL.format("margin: 1.2").replace(' top: "mean_distance"', ""), [(6, 4), (6,)])
    (got,) = torch.autograd.grad(layer(d, label.double()), d)
    (want,) = torch.autograd.grad(_triplet_loss_ref(d, label, 1.2, 1.0, False), d)
    pos = torch.arange(4)[None, :] == label[:, None]
    torch.testing.assert_close(got[~pos], want[~pos])
    active = (want < 0).sum(1)
    assert (got[pos] == 1 / 6).all() and (active > 1).any()
    torch.testing.assert_close(want[pos], active.double() / 6)


@pytest.mark.parametrize("shapes, match", [
    ([(3, 4), (2,)], "same first dimension"),
    ([(3, 4), (3, 2)], "one label per item"),
    ([(3, 4), (3,), (3, 4)], "exactly 2 bottom"),
])
def test_general_triplet_errors(shapes, match):
    text = GTL.format("") + ' bottom: "w"' * (len(shapes) == 3)
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer(text, shapes).reshape(shapes)
    assert "'triplet_loss' (GeneralTripletLoss)" in str(e.value)
    with pytest.raises(LayerSetupError, match=r"label 3 out of range; expected labels in \[0, 3\)"):
        _layer(GTL.format(""), [(2, 3), (2,)])(torch.zeros(2, 3), torch.tensor([0.0, 3.0]))


# -- InnerProduct with its weights from a bottom -----------------------------------------------------
IPB = 'name: "cosine" type: "InnerProduct" bottom: "x" bottom: "w" {} top: "y" inner_product_param {{ {} }}'


def port_inner_product_bottoms(x, w, b, td, transpose):
    """The fork's gemms: x (M, K); w's memory as N x K (K x N with transpose), N = w.shape[0]; b (N,) or
    None. Top, and the diffs of x, w (in w's shape) and b."""
    m, k = x.shape
    n = w.shape[0]
    wm = w.reshape(k, n) if transpose else w.reshape(n, k).T  # K x N either way
    y = x @ wm + (0 if b is None else b[None, :])
    dw = x.T @ td if transpose else td.T @ x
    return y, td @ wm.T, dw.reshape(w.shape), None if b is None else td.sum(0)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_inner_product_weight_bottom_matches_the_forks_gemms(bias, transpose):
    r = np.random.default_rng(13)
    x, w, b = r.standard_normal((4, 6)), r.standard_normal((5, 6)), r.standard_normal(5)
    td = r.standard_normal((4, 5))
    text = IPB.format('bottom: "b"' if bias else "", f"bias_term: {str(bias).lower()} transpose: "
                      f"{str(transpose).lower()} num_output: 99 normalize: true")  # num_output, normalize: unread
    layer = _layer(text, [(4, 6), (5, 6)] + ([(5,)] if bias else []))
    assert len(layer.blobs) == 0 and layer.reshape([(4, 6), (5, 6), (5,)][: 2 + bias]) == [(4, 5)]
    ins = [torch.tensor(a, dtype=torch.float32, requires_grad=True) for a in ([x, w, b] if bias else [x, w])]
    y = layer(*ins)
    y.backward(torch.tensor(td, dtype=torch.float32))
    want = port_inner_product_bottoms(x, w, b if bias else None, td, transpose)
    for got, ref in zip([y.detach()] + [t.grad for t in ins], want):
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ins[1].detach().numpy(), w.astype(f32))  # normalize rewrote nothing


def test_inner_product_weight_bottom_gradient_axis_and_rows():
    """float64 gradient to all three bottoms (axis 2, a 3-axis weight bottom); N follows bottom 1."""
    r = np.random.default_rng(14)
    x = torch.tensor(r.standard_normal((2, 3, 2, 2)), requires_grad=True)
    w = torch.tensor(r.standard_normal((3, 2, 2)), requires_grad=True)
    b = torch.tensor(r.standard_normal((3, 1)), requires_grad=True)
    layer = _layer(IPB.format('bottom: "b"', "axis: 2"), [(2, 3, 2, 2), (3, 2, 2), (3, 1)]).double()
    assert torch.autograd.gradcheck(lambda *a: layer(*a), (x, w, b))
    assert layer.reshape([(2, 3, 2, 2), (7, 4), (7,)]) == [(2, 3, 7)]
    y = layer(x, torch.ones(7, 4, dtype=torch.float64), torch.zeros(7, dtype=torch.float64))
    assert tuple(y.shape) == (2, 3, 7) and layer.lean_kernel([x, w, b]) is None


def test_inner_product_one_bottom_unchanged():
    """One bottom: the layer's own blobs, F.linear's numbers and the lean kernel, as before."""
    r = np.random.default_rng(15)
    text = ('name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    layer = _layer(text, [(4, 5)])
    x = torch.tensor(r.standard_normal((4, 5)), dtype=torch.float32)
    assert [tuple(p.shape) for p in layer.blobs] == [(3, 5), (3,)] and not layer.weight_bottom
    want = torch.nn.functional.linear(x, layer.blobs[0], layer.blobs[1])
    assert torch.equal(layer(x), want)
    with torch.no_grad():
        assert torch.equal(layer.lean_kernel([x])(x), want)


@pytest.mark.parametrize("bottoms, shapes, extra, match", [
    ("", [(4, 6), (5, 6)], "", r"bias_term with the weights from bottom 1 needs the bias as bottom 2 .* received two"),
    ("", [(4, 6), (5, 4)], "bias_term: false", r"N \* K values, N its first axis and K = 6 .* received shape \(5, 4\)"),
    ('bottom: "b"', [(4, 6), (5, 6), (4,)], "", r"bottom 2 \(the bias\) must hold N = 5 values .* received shape \(4,\)"),
    ('bottom: "b" bottom: "c"', [(4, 6), (5, 6), (5,), (5,)], "", "takes at most 3 bottom"),
])
def test_inner_product_weight_bottom_errors(bottoms, shapes, extra, match):
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer(IPB.format(bottoms, extra), shapes).reshape(shapes)
    assert "'cosine' (InnerProduct)" in str(e.value)


@pytest.mark.parametrize("bias", [False, True])
def test_inner_product_weight_bottom_exports_to_onnx(bias):
    pytest.importorskip("onnxruntime")
    from neocaffe.export.onnx import layer_model
    from neocaffe.export.registry import LayerNode
    from neocaffe.export.verify import onnxruntime_outputs

    r = np.random.default_rng(16)
    x, w, b = (r.standard_normal(s).astype(f32) for s in ((2, 3, 4), (5, 12), (5,)))
    text = IPB.format('bottom: "b"' if bias else "", f"bias_term: {str(bias).lower()} transpose: true")
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    inputs = [x, w, b][: 2 + bias]
    node = LayerNode(param=param, inputs=[f"x{i}" for i in range(len(inputs))], bottom_shapes=[a.shape for a in inputs],
                     top_shapes=[(2, 5)])
    got = onnxruntime_outputs(layer_model(node), {f"x{i}": a for i, a in enumerate(inputs)}, ["top0"])["top0"]
    want = _layer(text, [a.shape for a in inputs])(*map(torch.tensor, inputs)).numpy()
    assert want.shape == (2, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# -- NormFace's prototxts ----------------------------------------------------------------------------
# NormFace's prototxt/normalized_Euclidean_triplet.prototxt (happynear/NormFace @ 8438887), as written: the
# layers to put after a net's last inner product ("last_ip_layer"), 10572 CASIA-WebFace identities
NORMALIZED_EUCLIDEAN_TRIPLET = """layer {
  name: "normalize1"
  type: "Normalize"
  bottom: "last_ip_layer"
  top: "norm1"
}
layer {
  name: "id_weight_l2"
  type: "Parameter"
  top: "id_weight_l2"
  param {
    lr_mult: 1
    decay_mult: 0
  }
  parameter_param {
    shape {
      dim: 10572 # class number
      dim: 512 # feature dimension
    }
    blob_filler {
      type: "gaussian_unitball"
    }
  }
}
layer {
  name: "id_weight_l2_normalize"
  type: "Normalize"
  bottom: "id_weight_l2"
  top: "id_weight_l2_normalize"
}
layer {
  name: "normalized_Euclidean"
  type: "InnerDistance"
  bottom: "norm1"
  bottom: "id_weight_l2_normalize"
  top: "normalized_Euclidean"
  inner_distance_param{
    bias_term: false
    distance_type: "L2"
  }
}
layer {
  name: "triplet_loss"
  type: "GeneralTripletLoss"
  bottom: "normalized_Euclidean"
  bottom: "label"
  top: "contrastive_loss"
  top: "mean_distance"
  loss_weight: 1
  loss_weight: 1
  general_triplet_loss_param {
    margin: 0.8
    add_center_loss: true
    hardest_only: true
    negative_weight: 1
  }
}

layer {
  name: "Accuracy"
  type: "Accuracy"
  bottom: "normalized_Euclidean"
  bottom: "label"
  top: "accuracy"
  include { 
    phase: TEST
  }
  accuracy_param {
    min_is_better: true
  }
}
"""

# NormFace's prototxt/combine_softmax_contrastive.prototxt (@ 8438887), as written: two normalized Parameter
# center sets, one for the Euclidean contrastive loss (InnerDistance), one for the scaled cosine softmax
# (InnerProduct with its weights from bottom 1)
COMBINE_SOFTMAX_CONTRASTIVE = """layer {
  name: "normalize1"
  type: "Normalize"
  bottom: "last_ip_layer"
  top: "norm1"
}
layer {
  name: "id_weight_l2"
  type: "Parameter"
  top: "id_weight_l2"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  parameter_param {
    shape {
      dim: 10572
      dim: 512
    }
    blob_filler {
      type: "gaussian_unitball"
    }
  }
}
layer {
  name: "id_weight_l2_normalize"
  type: "Normalize"
  bottom: "id_weight_l2"
  top: "id_weight_l2_normalize"
}
layer {
  name: "id_weight_ip"
  type: "Parameter"
  top: "id_weight_ip"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  parameter_param {
    shape {
      dim: 10572
      dim: 512
    }
    blob_filler {
      type: "gaussian_unitball"
    }
  }
}
layer {
  name: "id_weight_ip_normalize"
  type: "Normalize"
  bottom: "id_weight_ip"
  top: "id_weight_ip_normalize"
}
layer {
  name: "euclidean"
  type: "InnerDistance"
  bottom: "norm1"
  bottom: "id_weight_l2_normalize"
  top: "euclidean"
  inner_distance_param{
    bias_term: false
    distance_type: "L2"
  }
}
layer {
  name: "cosine"
  type: "InnerProduct"
  bottom: "norm1"
  bottom: "id_weight_ip_normalize"
  top: "cosine"
  inner_product_param{
    bias_term: false
  }
}
layer {
  name: "cosine_scale"
  type: "Scale"
  bottom: "cosine"
  top: "cosine"
  scale_param {
    num_axes: 0
    bias_term: false
    filler{
     value: 4
    }
    bias_filler{
      value: 0
    }
  }
}
layer {
  name: "softmax_loss"
  type: "SoftmaxWithLoss"
  bottom: "cosine"
  bottom: "label"
  top: "softmax_loss"
  loss_weight: 1
  softmax_param{
    normalize_type: "Softmax"
  }
}

layer {
  name: "contrastive_loss"
  type: "GeneralContrastiveLoss"
  bottom: "euclidean"
  bottom: "label"
  top: "contrastive_loss"
  top: "mean_distance"
  loss_weight: 0.01
  loss_weight: 1
  general_contrastive_loss_param {
    positive_margin: 0
    negative_margin: 1
    negative_weight: 1
    exp_negative_weight: false
  }
}

layer {
  name: "Accuracy"
  type: "Accuracy"
  bottom: "cosine"
  bottom: "label"
  top: "accuracy"
  include { 
    phase: TEST
  }
  accuracy_param {
    min_is_better: false
  }
}
"""


def _trunk(n: int) -> str:
    from tests.layers.test_normface import _conv, _input

    return (_input(n) + _conv("conv1_1", "data", 8, True)
            + 'layer { name: "ip" type: "InnerProduct" bottom: "conv1_1" top: "last_ip_layer" '
              'inner_product_param { num_output: 32 weight_filler { type: "xavier" } } }\n')


def _heads(text: str) -> str:
    """The class and feature counts made small (10572 -> 6 identities, 512 -> 32 features)."""
    out = text.replace("dim: 10572", "dim: 6").replace("dim: 512", "dim: 32")
    assert "10572" not in out and "512" not in out
    return out


def _train(s, data, label, steps: int, names) -> dict[str, list]:
    seen: dict[str, list] = {n: [] for n in names}
    for _ in range(steps):
        s.net.set_blob("data", data)
        s.net.set_blob("label", label)
        s.step(1)
        for n in names:
            seen[n].append(s.net.blob_data[n].numpy().copy())
    return seen


def test_normface_normalized_euclidean_triplet_trains(tmp_path):
    """NormFace's triplet head as written (margin 0.8, the center term, the hardest negative only) after a
    small conv trunk: the loss falls and the label distance shrinks."""
    from tests.layers.test_normface import _batch, _solver

    s = _solver(tmp_path, _trunk(12) + _heads(NORMALIZED_EUCLIDEAN_TRIPLET), base_lr=0.01)
    data, label = _batch(12, 6, seed=3)
    seen = _train(s, data, label, 15, ["contrastive_loss", "mean_distance"])
    losses, dists = [float(v) for v in seen["contrastive_loss"]], seen["mean_distance"]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"NormFace triplet: loss first 3 {first:.3f}, last 3 {last:.3f}; positive distance "
          f"{dists[0][0]:.3f} -> {dists[-1][0]:.3f}, negative {dists[0][1]:.3f} -> {dists[-1][1]:.3f}")
    assert np.isfinite(losses).all() and last < 0.6 * first, losses
    assert dists[-1][0] < dists[0][0]
    s.close()


def test_normface_combine_softmax_contrastive_trains(tmp_path):
    """NormFace's combined head as written: the scaled cosine softmax through InnerProduct's weight bottom
    (a normalized Parameter, whose blob the solver updates through that bottom) and the contrastive loss
    (loss_weight 0.01) on Euclidean distances to another center set; both losses fall."""
    from tests.layers.test_normface import _batch, _solver

    s = _solver(tmp_path, _trunk(12) + _heads(COMBINE_SOFTMAX_CONTRASTIVE), base_lr=0.01)
    names = [lyr.name for lyr in s.net.layers]
    cosine = s.net.layers[names.index("cosine")]
    centers = s.net.layers[names.index("id_weight_ip")].blobs[0]
    assert cosine.weight_bottom and len(cosine.blobs) == 0
    before = centers.detach().clone()
    data, label = _batch(12, 6, seed=4)
    seen = _train(s, data, label, 15, ["softmax_loss", "contrastive_loss"])
    soft, con = ([float(v) for v in seen[n]] for n in ("softmax_loss", "contrastive_loss"))
    print(f"NormFace combined: softmax loss {np.mean(soft[:3]):.3f} -> {np.mean(soft[-3:]):.3f}, contrastive "
          f"{np.mean(con[:3]):.3f} -> {np.mean(con[-3:]):.3f}")
    assert np.isfinite(soft + con).all()
    assert np.mean(soft[-3:]) < 0.5 * np.mean(soft[:3])
    assert np.mean(con[-3:]) < np.mean(con[:3])  # at loss_weight 0.01, as written: slowly
    assert not torch.equal(centers.detach(), before)  # the softmax's centers learn through the weight bottom
    s.close()
