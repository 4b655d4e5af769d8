"""NormFace's metric-learning layers (happynear/caffe-windows ms @ 967eedf2, the same files at AMSoftmax's
pin 504d8a85) against loop ports of the fork's CPU code: InnerDistance (inner_distance_layer.cpp: L2/L1,
own blob with ``normalize``/``transpose``, weights from bottom 1, ``update_center_only``; the L1 backward
with the fork's unparenthesized sign macro) and GeneralContrastiveLoss (general_constrastive_loss_layer.cpp:
margins, weights, outlier threshold, ``exp_negative_weight``, ``max_negative_only``/``max_positive_only``,
``positive_first``, ``normalize_negative``, ``add_intra_mae``, the third bottom); float64 gradient checks
where the fork's diff is the gradient, and checks that it is not where the module says so; NormFace's
prototxts (happynear/NormFace @ 8438887: prototxt/normalized_Euclidean_contrastive.prototxt and the head
of mnist/lenet_train_test.prototxt), trained a few iterations by the solver with the loss falling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2

f32 = np.float32


def _layer(text: str, shapes, phase=TRAIN):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, phase)


# -- loop ports of the fork's Forward_cpu / Backward_cpu ---------------------------------------------
def port_normalize_rows(w, f=f32):
    """InnerDistanceLayer's ``normalize``: each row times Dtype(1) / sqrt(dot + 1e-6)."""
    w = w.astype(f).copy()
    for n in range(w.shape[0]):
        sum_sq = f(np.float64(f(np.dot(w[n], w[n]))) + 1e-6)
        w[n] = w[n] * f(f(1) / f(np.sqrt(np.float64(sum_sq))))
    return w


def port_inner_distance(x, w, top_diff, typ, label=None, f=f32):
    """InnerDistanceLayer on x (M, K) and weights (N, K): top, bottom diff, weight diff. ``label``: the
    labels of ``update_center_only``. The sign macro expands as the preprocessor does."""
    x, w, td = x.astype(f), w.astype(f), top_diff.astype(f)
    m_, k_ = x.shape
    n_ = w.shape[0]
    top = np.zeros((m_, n_), f)
    for m in range(m_):
        for n in range(n_):
            for k in range(k_):
                d = f(x[m, k] - w[n, k])
                top[m, n] = f(top[m, n] + (f(d * d) if typ == "L2" else abs(d)))
    wd, bd = np.zeros_like(w), np.zeros_like(x)
    for n in range(n_):
        for k in range(k_):
            for m in range(m_):
                if label is not None and n != int(label[m]):
                    continue
                d = f(w[n, k] - x[m, k])
                # L1: top_diff * (0 < d) - (d < 0), the macro without its outer parentheses
                term = f(f(td[m, n] * d) * f(2)) if typ == "L2" else f(f(td[m, n] * f(0 < d)) - f(d < 0))
                wd[n, k] = f(wd[n, k] + term)
    for m in range(m_):
        for k in range(k_):
            for n in range(n_):
                d = f(x[m, k] - w[n, k])
                term = f(f(td[m, n] * d) * f(2)) if typ == "L2" else f(f(td[m, n] * f(0 < d)) - f(d < 0))
                bd[m, k] = f(bd[m, k] + term)
    return top, bd, wd


def port_general_contrastive(data, label, p, loss_weight=1.0, intra_mae=0.0, f=f32):
    """GeneralContrastiveLossLayer's Forward_cpu then Backward_cpu on distances (num, dim) read from
    ``data``: loss, distances top, bottom diff, the updated intra_mae. ``p``: the parameter message."""
    d = data.astype(f).reshape(data.shape[0], -1)
    num, dim = d.shape
    lab = [int(v) for v in label]
    pm, nm0, pw, nw = f(p.positive_margin), f(p.negative_margin), f(p.positive_weight), f(p.negative_weight)
    pot, pub = f(p.positive_outlier_thresh), f(p.positive_upper_bound)
    nm = f(f(intra_mae) + nm0) if p.add_intra_mae else nm0
    diff = np.zeros((num, dim), f)
    max_neg = [0] * num
    max_pos = 0
    pos_d, neg_d = f(0), f(0)
    for i in range(num):
        same = d[i, lab[i]]
        for j in range(dim):
            if j == lab[i]:
                t = min(pot, max(f(0), f(d[i, j] - pm)))
                diff[i, j] = f(t * pw)
                pos_d = f(pos_d + t)
                if p.max_positive_only and diff[i, j] < diff[max_pos, lab[max_pos]]:
                    max_pos = i
            elif d[i, j] < nm:
                diff[i, j] = f(f(np.exp(-d[i, j])) * nw) if p.exp_negative_weight else f(max(f(0), f(nm - d[i, j])) * nw)
                neg_d = f(neg_d + max(f(0), f(nm - d[i, j])))
                if p.max_negative_only and diff[i, j] > diff[i, max_neg[i]]:
                    max_neg[i] = j
            else:
                diff[i, j] = 0
        if p.positive_first and same > pub:
            for j in range(dim):
                if j != lab[i]:
                    diff[i, j] = 0
    for i in range(num):
        for j in range(dim):
            if p.max_positive_only and j == lab[i] and i != max_pos:
                diff[i, j] = 0
            if p.max_negative_only and j != lab[i] and j != max_neg[i]:
                diff[i, j] = 0
    new_mae = f(0.99 * np.float64(intra_mae) + 0.01 * np.float64(pos_d) / num)
    new_mae = min(new_mae, f(p.max_negative_margin))
    loss = f(np.abs(diff).sum(dtype=np.float64)) / f(num)
    dist = [f(pos_d / f(num)), f(f(neg_d / f(num)) / f(dim - 1))] + ([new_mae] if p.add_intra_mae else [])
    # Backward_cpu
    neg_sum = f(0)
    for i in range(num):
        if p.positive_first and d[i, lab[i]] > pub:
            diff[i] = 0
            diff[i, lab[i]] = pw
            continue
        for j in range(dim):
            if j == lab[i]:
                ok = pm < d[i, j] < pot and not (p.max_positive_only and i != max_pos)
                diff[i, j] = pw if ok else 0
            elif d[i, j] < nm and not (p.max_negative_only and j != max_neg[i]):
                e = f(f(np.exp(-d[i, j])) * nw) if p.exp_negative_weight else nw
                diff[i, j] = -e
                neg_sum = f(neg_sum + e)
            else:
                diff[i, j] = 0
    if p.HasField("normalize_negative"):
        s = f(f(abs(neg_sum) / f(p.normalize_negative)) / f(num))
        if s > pw:
            for i in range(num):
                for j in range(dim):
                    if j != lab[i]:
                        diff[i, j] = f(diff[i, j] / s)
    diff *= f(f(loss_weight) / f(num))
    return loss, np.array(dist, f), diff.reshape(data.shape), new_mae


def test_the_forks_parameter_defaults():
    """The defaults of the fork's messages (caffe.proto at ms), which the layers read unset."""
    i = caffe_pb2.InnerDistanceParameter()
    assert (i.num_output, i.bias_term, i.axis, i.transpose, i.distance_type, i.normalize, i.update_center_only) == (
        0, True, 1, False, "L2", False, False)
    g = caffe_pb2.GeneralContrastiveParameter()
    assert [getattr(g, n) for n in ("positive_margin", "negative_margin", "positive_weight", "negative_weight",
                                    "normalize_negative", "positive_outlier_thresh", "positive_upper_bound")] == [
        0.0, 1.0, 1.0, 1.0, 0.0, 4.0, 1.0]
    assert not (g.square or g.max_negative_only or g.max_positive_only or g.positive_first or g.exp_negative_weight
                or g.add_intra_mae)
    assert g.max_negative_margin == f32(1.2)
    t = caffe_pb2.GeneralTripletParameter()
    assert (t.margin, t.add_center_loss, t.hardest_only, t.positive_weight) == (f32(0.2), True, False, 1.0)


def test_parameter_blob_filler():
    """happynear's ``parameter_param.blob_filler`` (NormFace's class centers); unset: zeros."""
    text = 'name: "id_weight" type: "Parameter" top: "w" parameter_param {{ shape {{ dim: 4 dim: 3 }} {} }}'
    w = _layer(text.format('blob_filler { type: "gaussian_unitball" }'), [])()
    np.testing.assert_allclose(w.detach().norm(dim=1).numpy(), 1.0, rtol=1e-6)
    assert not _layer(text.format(""), [])().detach().any()


# -- InnerDistance -----------------------------------------------------------------------------------
ID = 'name: "ip2" type: "InnerDistance" bottom: "x" {} top: "y" inner_distance_param {{ {} }}'


def _distances(r, m=4, n=5, k=6):
    x = r.standard_normal((m, k)).astype(f32)
    w = r.standard_normal((n, k)).astype(f32)
    w[1, 2] = x[0, 2]  # a tie: sign 0 in the L1 backward
    return x, w


@pytest.mark.parametrize("typ", ["L2", "L1"])
@pytest.mark.parametrize("mode", ["blob", "blob_normalize_transpose", "bottom", "center_only"])
def test_inner_distance_matches_the_forks_loops(typ, mode):
    r = np.random.default_rng(1)
    x, w = _distances(r)
    label = np.array([1.0, 4.0, 1.9, 0.0], f32)  # 1.9: static_cast<int> is 1
    td = r.standard_normal((4, 5)).astype(f32)
    extra = f'distance_type: "{typ}"'
    if mode.startswith("blob"):
        extra += ' num_output: 5 weight_filler { type: "gaussian" }'
        if mode == "blob_normalize_transpose":
            extra += " normalize: true transpose: true"
        layer = _layer(ID.format("", extra), [(4, 6)])
        with torch.no_grad():
            layer.blobs[0].copy_(torch.tensor(w).reshape(layer.blobs[0].shape))  # (K, N) with transpose
        bottoms = [torch.tensor(x, requires_grad=True)]
        wt = layer.blobs[0]
    else:
        center = mode == "center_only"
        text = ID.format('bottom: "w"' + (' bottom: "label"' if center else ""),
                         extra + (" update_center_only: true" if center else ""))
        layer = _layer(text, [(4, 6), (5, 6)] + ([(4,)] if center else []))
        wt = torch.tensor(w, requires_grad=True)
        bottoms = [torch.tensor(x, requires_grad=True), wt] + ([torch.tensor(label)] if center else [])
    y = layer(*bottoms)
    y.backward(torch.tensor(td))
    wn = port_normalize_rows(w) if mode == "blob_normalize_transpose" else w
    top, bd, wd = port_inner_distance(x, wn, td, typ, label if mode == "center_only" else None)
    np.testing.assert_allclose(y.detach().numpy(), top, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bottoms[0].grad.numpy(), bd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(wt.grad.reshape(5, 6).numpy(), wd, rtol=1e-5, atol=1e-5)
    if mode == "blob_normalize_transpose":  # the blob holds the normalized rows, in its (K, N) shape
        assert tuple(layer.blobs[0].shape) == (6, 5)
        np.testing.assert_allclose(layer.blobs[0].detach().reshape(5, 6).numpy(), wn, rtol=1e-6)


def test_inner_distance_keeps_leading_axes_and_chunks():
    """``axis: 2`` keeps (N, C) and flattens the rest; a chunk smaller than N gives the same numbers."""
    from neocaffe.layers import normface_metric

    r = np.random.default_rng(2)
    x = torch.tensor(r.standard_normal((2, 3, 2, 2)).astype(f32), requires_grad=True)
    layer = _layer(ID.format("", 'num_output: 7 axis: 2 distance_type: "L1" weight_filler { type: "xavier" }'),
                   [(2, 3, 2, 2)])
    y = layer(x)
    assert tuple(y.shape) == (2, 3, 7) and layer.reshape([(2, 3, 2, 2)]) == [(2, 3, 7)]
    y.sum().backward()
    want = [y.detach().clone(), x.grad.clone(), layer.blobs[0].grad.clone()]
    x.grad, layer.blobs[0].grad = None, None
    old = normface_metric.CHUNK
    normface_metric.CHUNK = 6 * 4 * 2  # two rows of w per chunk
    try:
        y2 = layer(x)
        y2.sum().backward()
    finally:
        normface_metric.CHUNK = old
    for a, b in zip(want, [y2.detach(), x.grad, layer.blobs[0].grad]):
        torch.testing.assert_close(a, b)


def test_inner_distance_l2_is_the_gradient_and_l1_is_not():
    """L2: the fork's diff is autograd's of ``sum (x - w)^2`` (float64). L1: the fork's diff differs from
    the sign gradient by the ``-[x < w]`` terms that the top diff does not scale."""
    r = np.random.default_rng(3)
    x = torch.tensor(r.standard_normal((3, 4)), requires_grad=True)
    w = torch.tensor(r.standard_normal((5, 4)), requires_grad=True)
    g = torch.tensor(r.uniform(0.5, 2, (3, 5)))
    for typ, ref in (("L2", lambda a, b: ((a[:, None] - b[None]) ** 2).sum(2)),
                     ("L1", lambda a, b: (a[:, None] - b[None]).abs().sum(2))):
        layer = _layer(ID.format('bottom: "w"', f'distance_type: "{typ}"'), [(3, 4), (5, 4)]).double()
        got = torch.autograd.grad(layer(x, w), (x, w), g)
        want = torch.autograd.grad(ref(x, w), (x, w), g)
        if typ == "L2":
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b)
            assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (x, w))
        else:
            s = torch.sign(x[:, None] - w[None])  # the fork: g [s > 0] - [s < 0], not g s
            torch.testing.assert_close(got[0], (g[:, :, None] * (s > 0) - (s < 0).double()).sum(1))
            assert not torch.allclose(got[0], want[0]) and not torch.allclose(got[1], want[1])


def test_inner_distance_normalize_renormalizes_every_forward_in_test_too():
    layer = _layer(ID.format("", 'num_output: 3 normalize: true weight_filler { type: "gaussian" std: 3 }'),
                   [(2, 4)], phase=TEST)
    with torch.no_grad():
        layer(torch.zeros(2, 4))
    np.testing.assert_allclose(layer.blobs[0].detach().norm(dim=1).numpy(), 1.0, rtol=1e-5)
    # zero features: the L2 distance to each unit row is |w|^2 = 1 (minus the eps)
    np.testing.assert_allclose(layer(torch.zeros(2, 4)).detach().numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("text, shapes, match", [
    (ID.format("", 'num_output: 3 distance_type: "cosine"'), [(2, 4)], "distance_type 'cosine' unknown"),
    (ID.format("", "distance_type: 'L2'"), [(2, 4)], "num_output must be positive"),
    (ID.format('bottom: "w"', "update_center_only: true"), [(2, 4), (3, 4)], "needs three bottoms"),
    (ID.format('bottom: "w"', ""), [(2, 4), (3, 5)], r"rows of K = 4 .* received shape \(3, 5\)"),
    (ID.format('bottom: "w" bottom: "l"', "update_center_only: true"), [(2, 4), (3, 4), (3,)], "one label per item"),
    (ID.format("", "num_output: 2 axis: 3"), [(2, 4)], "axis 3 out of range"),
])
def test_inner_distance_errors(text, shapes, match):
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer(text, shapes).reshape(shapes)
    assert "'ip2' (InnerDistance)" in str(e.value)


# -- GeneralContrastiveLoss --------------------------------------------------------------------------
GCL = ('name: "contrastive_loss" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" {} '
       'top: "contrastive_loss" top: "mean_distance" general_contrastive_loss_param {{ {} }}')
CONFIGS = {
    "normface": "positive_margin: 0 negative_margin: 1 negative_weight: 1 exp_negative_weight: false",
    "margins_weights_outliers": "positive_margin: 0.3 negative_margin: 1.5 positive_weight: 2 negative_weight: 0.5 "
                                "positive_outlier_thresh: 1.2",
    "exp": "exp_negative_weight: true negative_margin: 1.2 negative_weight: 0.7",
    "hardest": "max_negative_only: true max_positive_only: true",
    "hardest_exp": "max_negative_only: true exp_negative_weight: true positive_margin: 0.2",
    "positive_first": "positive_first: true positive_upper_bound: 0.9 positive_outlier_thresh: 1.1",
    "normalize_negative": "normalize_negative: 0.2",
    "normalize_negative_idle": "normalize_negative: 1000",
    "negative_weights": "positive_weight: -1 negative_weight: -0.5",
    "intra_mae": "add_intra_mae: true max_negative_margin: 1.2 negative_margin: 0.6",
}


def _gcl_data(r, num=6, dim=5):
    d = r.uniform(0, 2.2, (num, dim)).astype(f32)
    label = np.array([0, 3, 1, 0, 4, 2][:num], f32)
    d[0] = [0.5, 1.7, 1.9, 2.0, 1.6]  # label 0 and no negative beats column 0's term: max_negative_only drops all
    return d, label


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("third", [False, True], ids=["two_bottoms", "values_from_bottom_2"])
def test_general_contrastive_matches_the_forks_loops(config, third):
    r = np.random.default_rng(4)
    d, label = _gcl_data(r)
    values = r.uniform(0, 2.2, d.shape).astype(f32) if third else d
    text = GCL.format('bottom: "t"' if third else "", CONFIGS[config])
    p = text_format.Parse(text, caffe_pb2.LayerParameter()).general_contrastive_loss_param
    layer = _layer(text, [d.shape, label.shape] + ([d.shape] if third else []))
    mae = 0.0
    for step in range(3):  # intra_mae moves from forward to forward
        x = torch.tensor(d, requires_grad=True)
        bottoms = [x, torch.tensor(label)] + ([torch.tensor(values)] if third else [])
        loss, dist = layer(*bottoms)
        loss.backward(torch.tensor(0.7, dtype=torch.float32))
        want_loss, want_dist, want_diff, mae = port_general_contrastive(values, label, p, 0.7, mae)
        np.testing.assert_allclose(float(loss.detach()), want_loss, rtol=1e-6, err_msg=f"step {step}")
        np.testing.assert_allclose(dist.numpy(), want_dist, rtol=1e-6)
        np.testing.assert_allclose(x.grad.numpy(), want_diff, rtol=1e-6, atol=1e-7)
        assert layer.intra_mae == (mae if p.add_intra_mae else 0.0)
        assert not dist.requires_grad  # the distance top passes no diff
    assert dist.shape == ((3,) if p.add_intra_mae else (2,))


def test_general_contrastive_quirks_of_the_hardest_options():
    """max_positive_only keeps the *smallest* label term; max_negative_only keeps nothing in a row whose
    column 0 (here its label) beats every negative."""
    d = np.array([[0.5, 1.7, 1.9], [0.2, 0.9, 0.4], [0.3, 0.6, 0.9]], f32)
    label = np.array([0.0, 2.0, 0.0], f32)
    text = GCL.format("", "max_negative_only: true max_positive_only: true").replace(' top: "mean_distance"', "")
    x = torch.tensor(d, requires_grad=True)
    _layer(text, [(3, 3), (3,)])(x, torch.tensor(label)).backward()
    g = x.grad.numpy() * 3
    assert g[0].tolist() == [0, 0, 0]  # row 0: label term 0.5 > row 2's 0.3; no negative (all >= 1) beats it
    assert g[2].tolist() == [1, -1, 0]  # the smallest label term (0.3); the hardest negative 0.6 -> column 1
    assert g[1].tolist() == [-1, 0, 0]  # label 2 not the smallest: 0; column 0's 0.8 beats column 1's 0.1


def test_general_contrastive_gradient_and_the_places_it_is_not():
    """The hinge and exp terms: the fork's diff is the float64 gradient (through a loss weight). With
    positive_first a row past the bound gets positive_weight even beyond the outlier threshold, where
    the loss is flat: not the gradient."""
    r = np.random.default_rng(5)
    d = torch.tensor(r.choice([0.2, 0.6, 1.4, 2.1], (4, 3)) + r.uniform(-0.05, 0.05, (4, 3)), requires_grad=True)
    label = torch.tensor([0.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    for extra in ("positive_margin: 0.1", "exp_negative_weight: true negative_margin: 1.8 positive_weight: 0.5"):
        layer = _layer(GCL.format("", extra).replace(' top: "mean_distance"', ""), [(4, 3), (4,)])
        assert torch.autograd.gradcheck(lambda a: layer(a, label) * 0.3, (d,))
    text = GCL.format("", "positive_first: true positive_upper_bound: 1 positive_outlier_thresh: 1.5")
    layer = _layer(text.replace(' top: "mean_distance"', ""), [(2, 3), (2,)])
    far = torch.tensor([[2.1, 0.5, 0.5], [0.4, 0.5, 0.6]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(layer(far, torch.tensor([0.0, 0.0], dtype=torch.float64)), far)
    assert g[0].tolist() == [0.5, 0, 0]  # positive_weight / num, though d = 2.1 > the threshold 1.5
    lab0 = torch.tensor([0.0, 0.0], dtype=torch.float64)
    assert not torch.autograd.gradcheck(lambda a: layer(a, lab0), (far,), raise_exception=False)


@pytest.mark.parametrize("shapes, match", [
    ([(3, 4), (2,)], "same first dimension"),
    ([(3, 4), (3, 2)], "one label per item"),
    ([(3, 4), (3,), (3, 3)], "bottom 2 .* needs bottom 0's count 12"),
])
def test_general_contrastive_errors(shapes, match):
    text = GCL.format('bottom: "t"' if len(shapes) == 3 else "", "")
    with pytest.raises(LayerSetupError, match=match) as e:
        _layer(text, shapes).reshape(shapes)
    assert "'contrastive_loss' (GeneralContrastiveLoss)" in str(e.value)
    layer = _layer(GCL.format("", ""), [(2, 3), (2,)])
    with pytest.raises(LayerSetupError, match=r"label 3 out of range; expected labels in \[0, 3\)"):
        layer(torch.zeros(2, 3), torch.tensor([0.0, 3.0]))


# -- NormFace's prototxts ----------------------------------------------------------------------------
# NormFace's prototxt/normalized_Euclidean_contrastive.prototxt (happynear/NormFace @ 8438887), as written:
# the layers to put after a net's last inner product ("last_ip_layer"), 10572 CASIA-WebFace identities
NORMALIZED_EUCLIDEAN_CONTRASTIVE = """layer {
  name: "normalize1"
  type: "Normalize"
  bottom: "last_ip_layer"
  top: "norm1"
}
layer {
  name: "normalized_Euclidean"
  type: "InnerDistance"
  bottom: "norm1"
  top: "normalized_Euclidean"
  param {
    lr_mult: 100
    decay_mult: 0
  }
  inner_distance_param{
    bias_term: false
    distance_type: "L2"
    normalize: true
    num_output: 10572
    weight_filler {
      type: "gaussian_unitball"
    }
  }
}
layer {
  name: "contrastive_loss"
  type: "GeneralContrastiveLoss"
  bottom: "normalized_Euclidean"
  bottom: "label"
  top: "contrastive_loss"
  top: "mean_distance"
  loss_weight: 1
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

# NormFace's mnist/lenet_train_test.prototxt (@ 8438887) from its ip1 on, as written but for the commented-out
# layers: LeNet++'s 3-D feature, normalized, L2 distances to 10 normalized class centers (a Parameter blob),
# the contrastive loss (whose layer also carries a general_triplet_loss_param, read by nothing)
LENET_PLUS_PLUS_HEAD = """layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool3"
  top: "ip1"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  param {
    lr_mult: 2
    decay_mult: 0
  }
  inner_product_param {
    num_output: 3
    weight_filler {
      type: "gaussian"
      value: 0.01
    }
    bias_filler {
      type: "constant"
      value: 0
    }
  }
}
layer {
  name: "normalize1"
  type: "Normalize"
  bottom: "ip1"
  top: "norm1"
  normalize_param {
    normalize_type: "L2"
  }
}

layer {
  name: "id_weight"
  type: "Parameter"
  top: "id_weight"
  param {
    lr_mult: 1
    decay_mult: 1
  }
  parameter_param {
    shape {
      dim: 10
      dim: 3
    }
    blob_filler {
      type: "gaussian_unitball"
    }
  }
}
layer {
  name: "id_weight_normalize"
  type: "Normalize"
  bottom: "id_weight"
  top: "id_weight_normalize"
  normalize_param {
    normalize_type: "L2"
  }
}

layer {
  name: "ip2"
  type: "InnerDistance"
  bottom: "norm1"
  bottom: "id_weight_normalize"
  top: "ip2"
}

layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "ip2"
  bottom: "label"
  top: "accuracy"
  accuracy_param {
    min_is_better: true
  }
}

layer {
  name: "loss"
  type: "GeneralContrastiveLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
  top: "mean_distance"
  loss_weight: 1
  loss_weight: 1
  general_contrastive_loss_param{
    positive_margin: 0
    negative_margin: 1
    negative_weight: 1
    square: false
    max_negative_only: false
    max_positive_only: false
    add_intra_mae: false
  }
  general_triplet_loss_param{
    margin: 1
    add_center_loss: true
    hardest_only: true
    negative_weight: 1
    positive_first: false
    positive_upper_bound: 1
  }
}
"""


def _train(s, data, label, steps: int, loss: str) -> tuple[list[float], list[float]]:
    losses, dists = [], []
    for _ in range(steps):
        s.net.set_blob("data", data)
        s.net.set_blob("label", label)
        s.step(1)
        losses.append(float(s.net.blob_data[loss]))
        dists.append(s.net.blob_data["mean_distance"].numpy().copy())
    return losses, dists


def test_normface_normalized_euclidean_contrastive_trains(tmp_path):
    """NormFace's contrastive head as written (10572 identities reduced to 6) after a small conv trunk: the
    loss falls, the positive mean distance shrinks, the centers stay unit rows (normalize), and the
    mean-distance top (loss_weight 1) adds to nothing's gradient."""
    from tests.layers.test_normface import _batch, _conv, _input, _solver

    trunk = (_input(12) + _conv("conv1_1", "data", 8, True)
             + 'layer { name: "ip" type: "InnerProduct" bottom: "conv1_1" top: "last_ip_layer" '
               'inner_product_param { num_output: 32 weight_filler { type: "xavier" } } }\n')
    head = NORMALIZED_EUCLIDEAN_CONTRASTIVE.replace("num_output: 10572", "num_output: 6")
    s = _solver(tmp_path, trunk + head, base_lr=0.01)
    layer = s.net.layers[[lyr.name for lyr in s.net.layers].index("normalized_Euclidean")]
    np.testing.assert_allclose(layer.blobs[0].detach().norm(dim=1).numpy(), 1.0, rtol=1e-6)
    data, label = _batch(12, 6, seed=1)
    losses, dists = _train(s, data, label, 12, "contrastive_loss")
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"NormFace contrastive: loss first 3 {first:.3f}, last 3 {last:.3f}; positive distance "
          f"{dists[0][0]:.3f} -> {dists[-1][0]:.3f}")
    assert np.isfinite(losses).all() and last < 0.6 * first, losses
    assert dists[-1][0] < dists[0][0]
    s.net.forward()  # the solver's last update is renormalized by the next forward
    np.testing.assert_allclose(layer.blobs[0].detach().norm(dim=1).numpy(), 1.0, rtol=1e-5)
    s.close()


def test_normface_lenet_plus_plus_head_trains(tmp_path):
    """The head of NormFace's MNIST LeNet++ (its prototxt parses: general_triplet_loss_param, square) on a
    small trunk, 10 classes made 6: distances to normalized Parameter centers through InnerDistance's
    weight bottom; the loss falls and the train-phase accuracy (min_is_better) rises."""
    from tests.layers.test_normface import _batch, _conv, _input, _solver

    net = text_format.Parse(LENET_PLUS_PLUS_HEAD, caffe_pb2.NetParameter())
    assert net.layer[-1].general_triplet_loss_param.hardest_only and not net.layer[-1].general_contrastive_loss_param.square
    trunk = (_input(12) + _conv("conv1", "data", 8, True)
             + 'layer { name: "pool3" type: "Pooling" bottom: "conv1" top: "pool3" '
               'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n')
    head = LENET_PLUS_PLUS_HEAD.replace("dim: 10\n", "dim: 6\n")
    s = _solver(tmp_path, trunk + head, base_lr=0.05)
    data, label = _batch(12, 6, seed=2)
    accuracy = []
    losses = []
    for _ in range(15):
        s.net.set_blob("data", data)
        s.net.set_blob("label", label)
        s.step(1)
        losses.append(float(s.net.blob_data["loss"]))
        accuracy.append(float(s.net.blob_data["accuracy"]))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"LeNet++ head: loss first 3 {first:.3f}, last 3 {last:.3f}; accuracy {accuracy[0]:.2f} -> {accuracy[-1]:.2f}")
    assert np.isfinite(losses).all() and last < 0.7 * first, losses
    assert accuracy[-1] > accuracy[0]
    s.close()
