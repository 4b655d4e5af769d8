"""xialuxi/arcface-caffe's layers (@ 30ba26ad) against loop ports of the fork's code (arcface_reference.py):
CosinAddm (ArcFace, SV-X-Softmax), CombinedMargin, AdaCosAddmScale, NormL2, WingLoss; forward and the fork's
backward in float32, float64 gradient checks where the backward is the true gradient, and CUDA runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import arcface_reference as ref

F = np.float32


def _layer(text: str, shapes, phase=TRAIN):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, shapes, phase)


def _run(layer, x: np.ndarray, label: np.ndarray, dy: np.ndarray, dtype=torch.float32, device="cpu"):
    xt = torch.tensor(x, dtype=dtype, device=device, requires_grad=True)
    y = layer(xt, torch.tensor(label, dtype=dtype, device=device))
    y.backward(torch.tensor(dy, dtype=dtype, device=device))
    return y.detach().cpu().numpy(), xt.grad.cpu().numpy()


def _scores(seed: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    x = r.uniform(-0.99, 0.99, (n, d)).astype(F)
    label = r.integers(0, d, n).astype(F)
    return x, label


def _report(name: str, *diffs: float) -> None:
    print(f"{name}: max abs differences " + ", ".join(f"{d:.3g}" for d in diffs))


ARC = 'name: "arc" type: "CosinAddm" bottom: "fc6" bottom: "label" top: "m" cosin_add_m_param {{ {} }}'


@pytest.mark.parametrize("m", [0.5, 0.2])
def test_cosin_add_m_matches_the_forks_cpu(m):
    x, label = _scores(1, 24, 9)
    x[0, int(label[0])] = 1.0                     # sin(theta) = 0: coefficient 1
    x[1, int(label[1])] = 1.0000001               # > 1: read as 1
    x[2, int(label[2])] = -0.999                  # the low branch
    x[3, int(label[3])] = np.float32(math.cos(math.pi - np.float32(m)))  # exactly the threshold: low branch
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(F)
    y, dx = _run(_layer(ARC.format(f"m: {m}"), [x.shape, label.shape]), x, label, dy)
    ty, cos_t, flag = ref.cosin_add_m_cpu(x, label, m)
    tdx = ref.cosin_add_m_cpu_backward(dy, label, cos_t, flag, m)
    _report(f"CosinAddm m={m} vs cosin_add_m_layer.cpp", np.abs(y - ty).max(), np.abs(dx - tdx).max())
    np.testing.assert_allclose(y, ty, rtol=0, atol=2e-7)
    np.testing.assert_allclose(dx, tdx, rtol=1e-6, atol=1e-6)


def test_cosin_add_m_cu_and_test_phase():
    """The .cu agrees wherever the label cosine is < 1; TEST passes the scores (the .cu's TEST path)."""
    x, label = _scores(3, 16, 7)
    y, _ = _run(_layer(ARC.format("m: 0.5"), [x.shape, label.shape]), x, label, np.ones_like(x))
    gy, _ = ref.cosin_add_m_gpu(x, label, 0.5)
    _report("CosinAddm vs cosin_add_m_layer.cu", np.abs(y - gy).max())
    np.testing.assert_allclose(y, gy, rtol=0, atol=1e-6)
    x[0, int(label[0])] = 1.0                     # the .cu leaves c >= 1 alone; the .cpp (and we) give cos(m)
    gy, _ = ref.cosin_add_m_gpu(x, label, 0.5)
    y, _ = _run(_layer(ARC.format("m: 0.5"), [x.shape, label.shape]), x, label, np.ones_like(x))
    assert gy[0, int(label[0])] == 1 and y[0, int(label[0])] == np.float32(math.cos(np.float32(0.5)))
    t, dx = _run(_layer(ARC.format("m: 0.5 transform_test: true"), [x.shape, label.shape], TEST), x, label,
                 np.full_like(x, 2))
    assert np.array_equal(t, ref.cosin_add_m_gpu(x, label, 0.5, phase_test=True)[0]) and np.all(dx == 2)


def test_sv_x_softmax_matches_the_forks_cpu():
    x, label = _scores(4, 20, 8)
    label[5] = -1                                 # skipped
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(F)
    text = ARC.format("m: 0.35 t: 1.3")
    for phase in (TRAIN, TEST):                   # the fork's file applies in every phase
        y, dx = _run(_layer(text, [x.shape, label.shape], phase), x, label, dy)
        ty, cos_t, flag = ref.cosin_add_m_cpu(x, label, 0.35, t=1.3)
        tdx = ref.cosin_add_m_cpu_backward(dy, label, cos_t, flag, 0.35, t=1.3)
        np.testing.assert_allclose(y, ty, rtol=0, atol=4e-7)
        np.testing.assert_allclose(dx, tdx, rtol=1e-6, atol=1e-6)
    _report("SV-X-Softmax vs sv-x-softmax.cpp", np.abs(y - ty).max(), np.abs(dx - tdx).max())
    assert (flag == 2).sum() > 10 and np.array_equal(y[5], x[5])


@pytest.mark.parametrize("params", [(4, 0.5, 0.35), (1, 0.5, 0), (1, 0, 0.35), (1.2, 0.3, 0.2)])
def test_combined_margin_matches_the_forks_cpu(params):
    m1, m2, m3 = params
    x, label = _scores(6, 18, 6)
    label[2] = -1
    dy = np.random.default_rng(7).standard_normal(x.shape).astype(F)
    text = ('name: "cm" type: "CombinedMargin" bottom: "fc6" bottom: "label" top: "m" '
            f'combined_margin_param {{ m1: {m1} m2: {m2} m3: {m3} }}')
    y, dx = _run(_layer(text, [x.shape, label.shape]), x, label, dy)
    ty, mxm = ref.combined_margin_cpu(x, label, m1, m2, m3)
    tdx = ref.combined_margin_cpu_backward(dy, x, label, mxm, m1)
    _report(f"CombinedMargin {params} vs combined_margin_layer.cpp", np.abs(y - ty).max(), np.abs(dx - tdx).max())
    np.testing.assert_allclose(y, ty, rtol=0, atol=1e-6)  # acos/cos of float: libm and torch differ by ulps
    np.testing.assert_allclose(dx, tdx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text", [ARC.format("m: 0.5"), ARC.format("m: 0.3 t: 1.2"),
                                  'name: "cm" type: "CombinedMargin" bottom: "a" bottom: "l" top: "m" '
                                  'combined_margin_param { m1: 1.5 m2: 0.2 m3: 0.1 }'])
def test_margin_gradients_are_the_true_ones_off_the_branch_points(text):
    r = np.random.default_rng(8)
    x = r.uniform(-0.6, 0.9, (5, 4))
    label = np.array([0.0, 1.0, 3.0, 2.0, 3.0])
    x[np.arange(5), label.astype(int)] = [0.1, 0.5, 0.85, -0.4, 0.3]
    layer = _layer(text, [x.shape, label.shape]).double()
    lab = torch.tensor(label, dtype=torch.float64)
    if "t:" in text:  # keep the other entries off the margined score (the SV-X mask's edge)
        val = layer(torch.tensor(x), lab).numpy()[np.arange(5), label.astype(int)]
        for i in range(5):
            near = np.abs(x[i] - val[i]) < 0.05
            near[int(label[i])] = False
            x[i, near] += 0.1
    assert torch.autograd.gradcheck(lambda v: layer(v, lab), (torch.tensor(x, requires_grad=True),), eps=1e-6, atol=1e-6)


ADA = ('name: "ada" type: "AdaCosAddmScale" bottom: "fc6" bottom: "label" top: "s" '
       'adacos_add_m_scale_param {{ m: 0.5 num_classes: {} }}')


def test_adacos_matches_the_forks_cpu_over_iterations():
    """Three forwards (the scale carried from each to the next, as the fork's member ``s_d``) and backwards."""
    x0, label = _scores(9, 12, 10)
    label[4] = -1
    layer = _layer(ADA.format(10), [x0.shape, label.shape])
    s = ref.adacos_initial_scale(10)
    assert layer.scale() == s
    worst = [0.0, 0.0, 0.0]
    for it in range(3):
        x = (0.9 * x0 + 0.03 * it).astype(F)
        if it == 2:
            x[0, 0] = 1.0000001  # > 1: acos is NaN, so is the fork's scale (and ours)
        dy = np.random.default_rng(it).standard_normal(x.shape).astype(F)
        y, dx = _run(layer, x, label, dy)
        ty, s, cos_t, flag = ref.adacos_cpu(x, label, 0.5, s)
        tdx = ref.adacos_cpu_backward(dy, label, cos_t, flag, 0.5, s)
        if it == 2:
            assert math.isnan(s) and math.isnan(layer.scale())
            break
        assert np.isfinite(y).all() and np.isfinite(dx).all()
        worst = [max(worst[0], abs(layer.scale() - s) / s), max(worst[1], np.abs(y - ty).max()),
                 max(worst[2], np.abs(dx - tdx).max())]
        np.testing.assert_allclose(layer.scale(), s, rtol=2e-6)
        np.testing.assert_allclose(y, ty, rtol=4e-6, atol=4e-6)
        np.testing.assert_allclose(dx, tdx, rtol=4e-6, atol=4e-6)
        assert layer.resume_state() == {"s_d": layer.scale()}
    print(f"AdaCosAddmScale vs adacos_add_m_scale_layer.cpp: scale rel {worst[0]:.3g}, top {worst[1]:.3g}, "
          f"diff {worst[2]:.3g}")


def test_adacos_cu_scale_is_not_the_cpp_one():
    """The .cu takes acos of the first N entries only: its scale differs from the .cpp's (followed here)."""
    x, label = _scores(10, 8, 6)
    s0 = ref.adacos_initial_scale(6)
    cpp = ref.adacos_cpu(x, label, 0.5, s0)[1]
    cu = ref.adacos_gpu_scale(x, label, s0)
    layer = _layer(ADA.format(6), [x.shape, label.shape])
    layer(torch.tensor(x), torch.tensor(label))
    print(f"AdaCos new scale: .cpp {cpp:.6g}, .cu {cu:.6g}, neocaffe {layer.scale():.6g}")
    assert abs(layer.scale() - cpp) < 1e-5 * cpp and abs(cu - cpp) > 1e-3


def test_adacos_resume_and_errors():
    x, label = _scores(11, 4, 5)
    a = _layer(ADA.format(5), [x.shape, label.shape])
    a(torch.tensor(x), torch.tensor(label))
    b = _layer(ADA.format(5), [x.shape, label.shape])
    b.load_resume_state(a.resume_state())
    assert torch.equal(a(torch.tensor(x), torch.tensor(label)), b(torch.tensor(x), torch.tensor(label)))
    with pytest.raises(LayerSetupError, match="num_classes must be > 2"):
        _layer(ADA.format(2), [x.shape, label.shape])
    with pytest.raises(LayerSetupError, match="label 5 out of range"):
        a(torch.tensor(x), torch.tensor(np.array([0, 1, 5, 2], F)))
    with pytest.raises(LayerSetupError, match="one label per item"):
        _layer(ADA.format(5), [x.shape, (3,)])


def test_norm_l2_matches_the_forks_cpu_and_gradcheck():
    x = np.random.default_rng(12).standard_normal((6, 5, 2, 3)).astype(F)
    dy = np.random.default_rng(13).standard_normal(x.shape).astype(F)
    layer = _layer('name: "n" type: "NormL2" bottom: "fc5" top: "n"', [x.shape])
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(torch.tensor(dy))
    ty = ref.norm_l2_cpu(x)
    tdx = ref.norm_l2_cpu_backward(dy, ty, x)
    _report("NormL2 vs normL2_layer.cpp", np.abs(y.detach().numpy().reshape(6, -1) - ty).max(),
            np.abs(xt.grad.numpy().reshape(6, -1) - tdx).max())
    np.testing.assert_allclose(y.detach().numpy().reshape(6, -1), ty, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(xt.grad.numpy().reshape(6, -1), tdx, rtol=1e-5, atol=1e-6)
    two = _layer('name: "n" type: "NormL2" bottom: "fc5" top: "n"', [(4, 7)])
    assert two.reshape([(4, 7)]) == [(4, 7, 1, 1)]
    x64 = torch.tensor(np.random.default_rng(14).standard_normal((4, 7)), requires_grad=True)
    assert tuple(two(x64).shape) == (4, 7, 1, 1)
    assert torch.autograd.gradcheck(two.double(), (x64,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("w, eps", [(10, 2), (0.5, 0.1)])
def test_wing_loss_matches_the_forks_cpu_and_gradcheck(w, eps):
    r = np.random.default_rng(15)
    b = r.standard_normal((5, 42)).astype(F)
    a = (b + r.choice([-1, 1], b.shape) * r.uniform(0.0, 2 * w, b.shape)).astype(F)
    a[0, 0] = b[0, 0]                              # d = 0: sign 0
    layer = _layer(f'name: "loss" type: "WingLoss" bottom: "fc" bottom: "lm" top: "loss" loss_weight: 0.5 '
                   f'wing_loss_param {{ w: {w} epsilon: {eps} }}', [a.shape, b.shape])
    at = torch.tensor(a, requires_grad=True)
    loss = layer(at, torch.tensor(b))
    loss.backward(torch.tensor(0.5))
    tl, diff = ref.wing_loss_cpu(a, b, w, eps)
    tdx = ref.wing_loss_cpu_backward(diff, w, eps, 0.5, a.shape[0])
    _report(f"WingLoss w={w} vs wing_loss_layer.cpp", abs(float(loss) - tl) / tl, np.abs(at.grad.numpy() - tdx).max())
    np.testing.assert_allclose(float(loss), tl, rtol=2e-6)
    np.testing.assert_allclose(at.grad.numpy(), tdx, rtol=1e-6, atol=1e-9)
    d = r.choice([-1, 1], (3, 6)) * r.uniform(0.05, 1.9 * w, (3, 6))
    d = np.where(np.abs(np.abs(d) - w) < 0.05 * w, d * 0.9, d)
    a64 = torch.tensor(d + 1.0, requires_grad=True)
    l64 = _layer(f'name: "loss" type: "WingLoss" bottom: "fc" bottom: "lm" top: "loss" '
                 f'wing_loss_param {{ w: {w} epsilon: {eps} }}', [(3, 6), (3, 6)]).double()
    assert torch.autograd.gradcheck(lambda v: l64(v, torch.ones(3, 6, dtype=torch.float64)), (a64,), eps=1e-6, atol=1e-6)
    with pytest.raises(LayerSetupError, match="one count"):
        _layer('name: "loss" type: "WingLoss" bottom: "fc" bottom: "lm" top: "loss"', [(3, 6), (3, 5)])


@pytest.mark.gpu
def test_arcface_layers_on_cuda_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x, label = _scores(16, 64, 100)
    dy = np.random.default_rng(17).standard_normal(x.shape).astype(F)
    texts = [ARC.format("m: 0.5"), ARC.format("m: 0.35 t: 1.2"),
             'name: "cm" type: "CombinedMargin" bottom: "fc6" bottom: "label" top: "m" '
             'combined_margin_param { m1: 1 m2: 0.3 m3: 0.2 }', ADA.format(100)]
    for text in texts:
        cpu = _run(_layer(text, [x.shape, label.shape]), x, label, dy)
        gpu = _run(_layer(text, [x.shape, label.shape]), x, label, dy, device="cuda")
        for c, g in zip(cpu, gpu):
            np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-5)
    ada = _layer(ADA.format(100), [x.shape, label.shape]).to("cuda")
    for _ in range(2):
        ada(torch.tensor(x, device="cuda"), torch.tensor(label, device="cuda"))
    s = ref.adacos_initial_scale(100)
    for _ in range(2):
        s = ref.adacos_cpu(x, label, 0.5, s)[1]
    np.testing.assert_allclose(ada.scale(), s, rtol=1e-5)
    n = _layer('name: "n" type: "NormL2" bottom: "fc5" top: "n"', [x.shape]).to("cuda")
    np.testing.assert_allclose(n(torch.tensor(x, device="cuda")).cpu().numpy().reshape(x.shape), ref.norm_l2_cpu(x),
                               rtol=1e-5, atol=1e-6)
    wing = _layer('name: "loss" type: "WingLoss" bottom: "fc" bottom: "lm" top: "loss"', [x.shape, x.shape])
    a = torch.tensor(x * 20, device="cuda", requires_grad=True)
    loss = wing(a, torch.zeros_like(a))
    loss.backward()
    tl, diff = ref.wing_loss_cpu(x * 20, np.zeros_like(x), 10, 2)
    np.testing.assert_allclose(float(loss), tl, rtol=1e-5)
    np.testing.assert_allclose(a.grad.cpu().numpy(), ref.wing_loss_cpu_backward(diff, 10, 2, 1.0, 64), rtol=1e-5)


def test_cosin_add_m_in_place_in_a_net_is_the_separate_top():
    """fc6 -> CosinAddm in place (as the .cpp allows) gives the loss and fc6's weight diff of a separate top."""
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    def net(top: str) -> Net:
        text = ('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 6 dim: 5 } '
                'shape { dim: 6 } } }\n'
                'layer { name: "fc6" type: "InnerProduct" bottom: "x" top: "fc6" inner_product_param { num_output: 4 '
                'normalize: true bias_term: false weight_filler { type: "gaussian" std: 1 } } }\n'
                f'layer {{ name: "arc" type: "CosinAddm" bottom: "fc6" bottom: "label" top: "{top}" '
                'cosin_add_m_param { m: 0.3 } }\n'
                f'layer {{ name: "s" type: "Scale" bottom: "{top}" top: "s" param {{ lr_mult: 0 }} '
                'scale_param { filler { type: "constant" value: 16 } } }\n'
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }\n')
        n = Net(read_net(text), TRAIN)
        with torch.no_grad():
            n.params_by_layer()["fc6"][0].copy_(w)
        return n

    r = np.random.default_rng(30)
    x, label = torch.tensor(r.standard_normal((6, 5)).astype(F)), torch.tensor([0.0, 1, 2, 3, 1, 0])
    w = torch.tensor(r.standard_normal((4, 5)).astype(F))
    grads = []
    for top in ("fc6", "margin"):
        n = net(top)
        n.forward({"x": x, "label": label})
        n.backward()
        grads.append((float(n.blob_data["loss"]), n.params_by_layer()["fc6"][0].grad.clone()))
    assert grads[0][0] == grads[1][0] and torch.equal(grads[0][1], grads[1][1])
