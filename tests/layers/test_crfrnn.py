"""MultiStageMeanfield (CRF-RNN, torrvision/caffe master @ d779ee36) against a loop port of the fork's CPU code
(``tests/layers/crfrnn_reference.py``): the lattice bit for bit, the layer's forward and every diff, the fork's
own unit test's setting, float64 gradient checks, the fork's diff quirk, and the released nets (shrunk)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from neocaffe.io.errors import PrototxtError
from neocaffe.io.prototxt import read_net, read_solver
from neocaffe.layers._crfrnn_lattice import CrfLattice, bilateral_features, spatial_features
from neocaffe.layers.base import LayerCall, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import crfrnn_reference as ref

DATA = Path(__file__).parent / "data" / "crfrnn"


def _layer(shape, iterations=2, alpha=5.0, beta=20.0, gamma=3.0, sw=3.0, bw=5.0, image_channels=3):
    lp = text_format.Parse(
        'name: "inference1" type: "MultiStageMeanfield" bottom: "unary" bottom: "Q0" bottom: "data" top: "pred" '
        f"multi_stage_meanfield_param {{ num_iterations: {iterations} theta_alpha: {alpha} theta_beta: {beta} "
        f"theta_gamma: {gamma} spatial_filter_weight: {sw} bilateral_filter_weight: {bw} }}",
        caffe_pb2.LayerParameter())
    n, _, h, w = shape
    return get_layer_class("MultiStageMeanfield")(lp, [shape, shape, (n, image_channels, h, w)])


def _params(layer):
    return {"iterations": layer.iterations, "alpha": layer.theta_alpha, "beta": layer.theta_beta,
            "gamma": layer.theta_gamma}


def _perturb_blobs(layer, r, scale=0.3):
    with torch.no_grad():
        for b in layer.blobs:
            b.add_(torch.tensor(scale * r.standard_normal(tuple(b.shape)), dtype=b.dtype))


def _run(layer, unary, q0, image, top_diff):
    for b in layer.blobs:
        b.grad = None
    u, q = torch.tensor(unary, requires_grad=True), torch.tensor(q0, requires_grad=True)
    top = layer(u, q, torch.tensor(image))
    top.backward(torch.tensor(top_diff))
    c = unary.shape[1]
    return (top.detach().numpy(), u.grad.numpy(), q.grad.numpy(),
            [b.grad.numpy().reshape(c, c) for b in layer.blobs])


def test_lattice_filters_bit_for_bit_as_the_fork():
    """ModifiedPermutohedral: build, splat, blur (both directions), slice (seqCompute for V <= 2, sseCompute
    above, with and without ``add``), on spatial and bilateral features including a partial block of four."""
    r = np.random.default_rng(1)
    for h, w in ((6, 7), (5, 5)):
        image = r.integers(0, 256, (3, h, w)).astype(np.float32) - 120
        cases = [(spatial_features(h, w, 3.0), ref.spatial_kernel(h, w, 3.0)),
                 (bilateral_features(image, 5.0, 20.0), ref.bilateral_kernel(image, 5.0, 20.0)),
                 (bilateral_features(image, 160.0, 3.0), ref.bilateral_kernel(image, 160.0, 3.0))]
        for ours, theirs in cases:
            np.testing.assert_array_equal(ours, theirs)
            lat, want = CrfLattice(ours), ref.Lattice(theirs)
            assert lat.m == want.m
            for v in (1, 2, 3, 5):
                x = r.standard_normal((v, h * w)).astype(np.float32)
                o = r.standard_normal((v, h * w)).astype(np.float32)
                for reverse in (False, True):
                    np.testing.assert_array_equal(lat.compute(torch.tensor(x), reverse).numpy(),
                                                  want.compute(x, reverse))
                    np.testing.assert_array_equal(lat.compute(torch.tensor(x), reverse, out=torch.tensor(o)).numpy(),
                                                  want.compute(x, reverse, out=o))


def test_reverse_filter_is_the_transpose():
    """The fork's backward filters with the blur axes reversed: the transpose of the forward filter (to the
    float32 rounding of ``b * alpha`` in the slice weights), which is itself not symmetric."""
    r = np.random.default_rng(2)
    h, w = 6, 7
    image = r.integers(0, 256, (3, h, w)).astype(np.float64)
    for feats in (spatial_features(h, w, 3.0), bilateral_features(image, 5.0, 20.0)):
        lat = CrfLattice(feats)
        eye = torch.eye(h * w, dtype=torch.float64)
        fwd = torch.stack([lat.compute(eye[i:i + 1].repeat(3, 1))[0] for i in range(h * w)], 1)
        rev = torch.stack([lat.compute(eye[i:i + 1].repeat(3, 1), reverse=True)[0] for i in range(h * w)], 1)
        assert (rev - fwd.T).abs().max() < 1e-7
        assert (fwd - fwd.T).abs().max() > 1e-2


CASES = [  # N, C, H, W, iterations, theta_alpha, theta_beta, theta_gamma, spatial / bilateral weights
    (1, 3, 6, 7, 2, 5.0, 20.0, 3.0, 3.0, 5.0),
    (2, 3, 6, 7, 3, 160.0, 3.0, 3.0, 3.0, 5.0),  # the released nets' thetas
    (2, 2, 5, 4, 2, 5.0, 2.0, 3.0, 1.0, 1.0),  # two classes: the lattice's seqCompute path throughout
    (1, 5, 4, 6, 2, 8.0, 10.0, 1.5, 2.0, 4.0),
]


@pytest.mark.parametrize("n,c,h,w,it,alpha,beta,gamma,sw,bw", CASES)
def test_forward_and_diffs_match_the_fork(n, c, h, w, it, alpha, beta, gamma, sw, bw):
    r = np.random.default_rng(n * 100 + c * 10 + it)
    layer = _layer((n, c, h, w), it, alpha, beta, gamma, sw, bw)
    _perturb_blobs(layer, r)  # general matrices, not only diagonals
    unary = (2 * r.standard_normal((n, c, h, w))).astype(np.float32)
    q0 = (2 * r.standard_normal((n, c, h, w))).astype(np.float32)
    image = (r.integers(0, 256, (n, 3, h, w)) - 120).astype(np.float32)
    td = r.standard_normal((n, c, h, w)).astype(np.float32)
    top, du, dq, db = _run(layer, unary, q0, image, td)
    blobs = [b.detach().numpy().reshape(c, c) for b in layer.blobs]
    want, state = ref.forward(unary, q0, image, blobs, _params(layer))
    wdu, wdq, wdb = ref.backward(td, state)
    # measured max abs differences over the cases: 1.9e-6 (top, |top| <= 14), 1.9e-6 (unary), 2.9e-6 (Q0),
    # 2.9e-6 (W_s, W_b), 7.6e-6 (compatibility, |diff| <= 55): GEMM and exp rounding; the lattice is bit for bit
    np.testing.assert_allclose(top, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(du, wdu, rtol=0, atol=1e-5)
    np.testing.assert_allclose(dq, wdq, rtol=0, atol=1e-5)
    for got, exp in zip(db, wdb):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-4)


def _glibc_rand(seed: int):
    """glibc's rand() after srand(seed) (TYPE_3: r[i] = r[i-31] + r[i-3], outputs from i = 344, >> 1)."""
    r = [seed]
    for i in range(1, 31):
        r.append((16807 * r[i - 1]) % 2147483647)
    r += r[:3]
    for i in range(34, 344):
        r.append((r[i - 31] + r[i - 3]) & 0xFFFFFFFF)
    while True:
        v = (r[-31] + r[-3]) & 0xFFFFFFFF
        r.append(v)
        del r[0]
        yield v >> 1


def _fill_as_log_prob(shape):
    """tvg_util's FillAsLogProb (float): srand(1000), rand() / RAND_MAX, normalised per pixel, log."""
    g = _glibc_rand(1000)
    x = np.array([next(g) / 2147483647.0 for _ in range(int(np.prod(shape)))]).reshape(shape)
    x = np.where(x != 0, x, 0.0002).astype(np.float32)
    return np.log(x / x.sum(1, dtype=np.float32, keepdims=True)).astype(np.float32)


def test_the_forks_own_unit_test_setting():
    """test_multi_stage_meanfield_layer.cpp: N=5, C=3, 5 x 5, 2 iterations, thetas 5 / 2 / 3, weights 1, the
    unary and Q0 from FillAsLogProb, the image from FillAsRGB; Caffe's GradientChecker(1e-2, 1e-3) on bottoms 0
    and 1 in float (here at sampled elements: analytic rows of 8 top elements against central differences)."""
    shape = (5, 3, 5, 5)
    layer = _layer(shape, 2, 5.0, 2.0, 3.0, 1.0, 1.0)
    unary = _fill_as_log_prob(shape)
    g = _glibc_rand(2000)
    image = np.array([next(g) % 256 for _ in range(5 * 3 * 25)], np.float32).reshape(5, 3, 5, 5)
    q0 = unary.copy()
    want, state = ref.forward(unary, q0, image, [b.detach().numpy().reshape(3, 3) for b in layer.blobs],
                              _params(layer))
    r = np.random.default_rng(3)
    tops = r.choice(unary.size, 8, replace=False)
    for bottom in (0, 1):
        cols = r.choice(unary.size, 12, replace=False)
        rows = []
        for j in tops:
            td = np.zeros(unary.size, np.float32)
            td[j] = 1
            out = _run(layer, unary, q0, image, td.reshape(shape))
            np.testing.assert_allclose(out[0], want, rtol=0, atol=1e-5)
            rows.append(out[1 + bottom].reshape(-1)[cols])
        for k, i in enumerate(cols):
            est = []
            for step in (1e-2, -1e-2):
                xs = [unary.copy(), q0.copy()]
                xs[bottom].reshape(-1)[i] += np.float32(step)
                with torch.no_grad():
                    est.append(layer(*(torch.tensor(x) for x in xs), torch.tensor(image)).numpy().reshape(-1)[tops])
            est = (est[0] - est[1]) / 2e-2
            got = np.array([row[k] for row in rows])
            assert np.all(np.abs(got - est) <= 1e-3 * np.maximum(np.maximum(np.abs(got), np.abs(est)), 1)), (got, est)


def test_float64_gradient_check_of_bottoms_and_blobs():
    """The fork's backward is the gradient of its forward (the lattice is linear in the values and fixed by
    the image), so a float64 gradient check holds for the unary, Q0 and the three blobs."""
    r = np.random.default_rng(4)
    shape = (2, 3, 3, 4)
    layer = _layer(shape, 2, 4.0, 30.0, 2.0).double()
    _perturb_blobs(layer, r)
    image = torch.tensor(r.integers(0, 256, (2, 3, 3, 4)), dtype=torch.float64)
    names = [f"blobs.{i}" for i in range(3)]

    def f(unary, q0, *blobs):
        return torch.func.functional_call(layer, dict(zip(names, blobs)), (unary, q0, image))

    args = (torch.tensor(r.standard_normal(shape), requires_grad=True),
            torch.tensor(r.standard_normal(shape), requires_grad=True),
            *(b.detach().clone().requires_grad_() for b in layer.blobs))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6)


def test_batch_runs_image_by_image():
    r = np.random.default_rng(5)
    shape = (3, 3, 5, 6)
    layer = _layer(shape, 2, 6.0, 15.0, 2.0)
    unary, q0 = r.standard_normal(shape).astype(np.float32), r.standard_normal(shape).astype(np.float32)
    image = (r.integers(0, 256, (3, 4, 5, 6)) - 100).astype(np.float32)  # a 4th channel is ignored
    with torch.no_grad():
        whole = layer(torch.tensor(unary), torch.tensor(q0), torch.tensor(image)).numpy()
        for i in range(3):
            one = layer(*(torch.tensor(x[i:i + 1]) for x in (unary, q0, image[:, :3]))).numpy()
            np.testing.assert_allclose(one, whole[i:i + 1], rtol=0, atol=2e-6)  # GEMM blocking only


def test_blobs_init_and_the_forks_diff_overwrite():
    layer = _layer((1, 4, 3, 3), sw=3.0, bw=5.0)
    assert [tuple(b.shape) for b in layer.blobs] == [(1, 1, 4, 4)] * 3
    for b, v in zip(layer.blobs, (3.0, 5.0, -1.0)):
        np.testing.assert_array_equal(b.detach().numpy()[0, 0], v * np.eye(4, dtype=np.float32))
    r = np.random.default_rng(6)
    xs = [torch.tensor(r.standard_normal((1, 4, 3, 3)), dtype=torch.float32) for _ in range(2)]
    image = torch.tensor(r.integers(0, 256, (1, 3, 3, 3)), dtype=torch.float32)
    layer(*xs, image).sum().backward()
    own = [b.grad.clone() for b in layer.blobs]
    for b in layer.blobs:
        b.grad.fill_(7.0)  # an earlier diff: Caffe's caffe_set(0) in the fork's Backward drops it
    layer(*xs, image, call=LayerCall(accumulate=True)).sum().backward()
    for b, g in zip(layer.blobs, own):
        torch.testing.assert_close(b.grad, g)
    layer(*xs, image).sum().backward()  # outside an accumulating executor: autograd's sum
    for b, g in zip(layer.blobs, own):
        torch.testing.assert_close(b.grad, 2 * g)


ITER_NET = '''
layer { name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 1 dim: 3 dim: 5 dim: 6 } shape { dim: 1 dim: 1 dim: 5 dim: 6 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "split" type: "Split" bottom: "score" top: "unary" top: "Q0" }
layer { name: "crf" type: "MultiStageMeanfield" bottom: "unary" bottom: "Q0" bottom: "data" top: "pred"
  multi_stage_meanfield_param { num_iterations: 2 theta_alpha: 5 theta_beta: 20 theta_gamma: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "pred" bottom: "label" top: "loss" }
'''


def test_iter_size_keeps_the_forks_last_diff(tmp_path):
    """With iter_size 2 on one batch, a convolution's update is iter_size 1's (diffs summed, then / 2); the
    CRF blobs' is half of it (the fork's caffe_set(0) keeps the last backward's diff, then / 2)."""
    (tmp_path / "net.prototxt").write_text(ITER_NET)
    r = np.random.default_rng(9)
    data, label = r.integers(0, 256, (1, 3, 5, 6)) - 120.0, r.integers(0, 3, (1, 1, 5, 6))
    steps = []
    for iter_size in (1, 2):
        (tmp_path / "solver.prototxt").write_text(
            f'net: "{tmp_path / "net.prototxt"}" base_lr: 1 momentum: 0 lr_policy: "fixed" display: 0 max_iter: 10 '
            f"snapshot: 0 solver_mode: CPU random_seed: 1 iter_size: {iter_size}")
        solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["label"].data[...] = label
        before = [solver.net.params[n][i].data.copy() for n, i in (("crf", 2), ("score", 0))]
        solver.step(1)
        steps.append([b - solver.net.params[n][i].data for b, (n, i) in zip(before, (("crf", 2), ("score", 0)))])
    assert np.abs(steps[0][0]).max() > 1e-3
    np.testing.assert_allclose(steps[1][0], steps[0][0] / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(steps[1][1], steps[0][1], rtol=1e-5, atol=1e-6)


def test_errors_name_the_layer():
    with pytest.raises(LayerSetupError, match=r"inference1.*num_iterations must be greater than 1.*received 1"):
        _layer((1, 3, 4, 4), iterations=1)
    with pytest.raises(LayerSetupError, match=r"inference1.*bottom 2 \(the image\).*received \(1, 2, 4, 4\)"):
        _layer((1, 3, 4, 4), image_channels=2)
    layer = _layer((1, 3, 4, 4))
    with pytest.raises(LayerSetupError, match=r"inference1.*unary has 4 channels"):
        layer.reshape([(1, 4, 4, 4), (1, 4, 4, 4), (1, 3, 4, 4)])
    assert not layer.allow_force_backward(2) and layer.allow_force_backward(1)
    tiny = _layer((1, 3, 4, 4), beta=1e-9)
    with pytest.raises(LayerSetupError, match=r"inference1.*bilateral \(image 0\) features span too wide"):
        tiny(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 200.0))


WIDTH = {"64": 4, "128": 4, "256": 8, "512": 8, "4096": 16}  # VGG-16's widths cut; the 21 classes kept


def _shrunk(name: str, size: int) -> str:
    """A released net with narrower VGG layers and a size x size input, its text otherwise unchanged: the fork's
    Crop is longjon's coordinate-map Crop (``src/caffe/layers/crop_layer.cpp``), as HED's, which the net's
    ``MultiStageMeanfield`` (lineage ``crfrnn``) selects."""
    text = re.sub(r"num_output: (\d+)", lambda m: f"num_output: {WIDTH.get(m.group(1), m.group(1))}",
                  (DATA / name).read_text())
    text = text.replace("input_dim: 500", f"input_dim: {size}")
    blocks = re.split(r"(?m)^(?=layer\s*\{)", text)
    if any('type: "Data"' in b for b in blocks):  # the LMDB data layers -> one Input
        blocks = [b for b in blocks if 'type: "Data"' not in b]
        shapes = f"shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} shape {{ dim: 1 dim: 1 dim: {size} dim: {size} }}"
        blocks.insert(1, f'layer {{ name: "input" type: "Input" top: "data" top: "label" input_param {{ {shapes} }} }}\n')
    return "".join(blocks)


def test_the_released_prototxts_parse():
    for name in ("TVG_CRFRNN_new_deploy.prototxt", "TVG_CRFRNN_new_traintest.prototxt"):
        net = read_net(str(DATA / name))
        crf = [lp for lp in net.layer if lp.type == "MultiStageMeanfield"]
        assert len(crf) == 1 and list(crf[0].bottom) == ["unary", "Q0", "data"]
        mp = crf[0].multi_stage_meanfield_param
        assert (mp.num_iterations, mp.theta_alpha, mp.theta_beta, mp.theta_gamma) == (10, 160, 3, 3)
        assert (mp.spatial_filter_weight, mp.bilateral_filter_weight, mp.threshold) == (3, 5, 2)
        assert [p.lr_mult for p in crf[0].param] == [10000, 10000, 1000]
    solver = read_solver(str(DATA / "TVG_CRFRNN_new_solver.prototxt"))
    assert solver.base_lr == pytest.approx(1e-13) and solver.momentum == pytest.approx(0.99)
    # crfasrnn's older V1 net names a V1 type that no schema of the fork has
    v1 = ('layers { name: "inference1" type: MULTI_STAGE_MEANFIELD bottom: "unary" bottom: "Q0" bottom: "data" '
          'top: "pred" multi_stage_meanfield_param { num_iterations: 10 } }')
    with pytest.raises(PrototxtError, match="MULTI_STAGE_MEANFIELD"):
        read_net(v1)


def test_the_released_deploy_net_runs_shrunk(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(_shrunk("TVG_CRFRNN_new_deploy.prototxt", 24))
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    r = np.random.default_rng(7)
    for name, blobs in net.params.items():  # random weights where the deploy net sets no filler (the caffemodel's)
        w = blobs[0].data
        if name != "inference1" and not w.any():
            w[...] = r.standard_normal(w.shape) * np.sqrt(2.0 / np.prod(w.shape[1:]))
    image = (r.integers(0, 256, (1, 3, 24, 24)) - 120).astype(np.float32)
    net.blobs["data"].data[...] = image
    out = net.forward()["pred"]
    assert out.shape == (1, 21, 24, 24) and np.isfinite(out).all()
    # no lineage written: the MultiStageMeanfield layer makes the net CRF-RNN's, whose three Crops align by the
    # coordinate maps (BVLC's Crop would cut all three at offset 0)
    crops = [layer.hed_offsets for layer in net._net.layers if layer.type_name == "Crop"]
    assert len(crops) == 3 and all(c is not None for c in crops) and crops[-1] != (0, 0), crops
    assert np.abs(net.blobs["unary"].data).max() > 1e-3
    np.testing.assert_array_equal(net.blobs["coarse"].data, net.blobs["bigscore"].data[:, :, 31:55, 31:55])
    lp = next(lp for lp in read_net(str(tmp_path / "deploy.prototxt")).layer if lp.name == "inference1")
    alone = get_layer_class("MultiStageMeanfield")(lp, [(1, 21, 24, 24)] * 2 + [(1, 3, 24, 24)])
    for mine, theirs in zip(alone.blobs, net.params["inference1"]):  # the net's (POTTS, 3, 5) init
        np.testing.assert_array_equal(mine.detach().numpy(), theirs.data)
    with torch.no_grad():
        want = alone(*(torch.tensor(net.blobs[b].data) for b in ("unary", "Q0", "data"))).numpy()
    np.testing.assert_array_equal(out, want)


def test_the_released_train_net_trains_shrunk(tmp_path):
    (tmp_path / "train.prototxt").write_text(_shrunk("TVG_CRFRNN_new_traintest.prototxt", 24))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 1e-8 momentum: 0.9 lr_policy: "fixed" weight_decay: 0.0005 '
        'display: 0 max_iter: 100 snapshot: 0 solver_mode: CPU random_seed: 5')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    r = np.random.default_rng(0)
    for name, blobs in net.params.items():  # random weights where the net sets no filler (VGG's, from a caffemodel)
        w = blobs[0].data
        if name != "inference1" and not w.any():
            w[...] = r.standard_normal(w.shape) * np.sqrt(2.0 / np.prod(w.shape[1:]))
    image = r.integers(0, 256, (1, 3, 24, 24)) - 120.0
    label = (image[:, :1] > 0) * 3.0  # a label the image tells
    label[0, 0, 0, :3] = 255  # ignore_label
    net.blobs["data"].data[...] = image
    net.blobs["label"].data[...] = label
    first = float(net.forward()["loss"])
    compat = net.params["inference1"][2].data.copy()
    solver.step(3)
    last = float(net.forward()["loss"])
    assert np.isfinite(last) and last < first, (first, last)
    assert np.abs(net.params["conv1_1"][0].diff).max() > 0  # the diff reaches the first layer
    assert np.abs(net.params["inference1"][2].data - compat).max() > 0


@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    r = np.random.default_rng(8)
    shape = (2, 4, 6, 7)
    layer = _layer(shape, 3, 6.0, 15.0, 2.0)
    _perturb_blobs(layer, r)
    xs = [r.standard_normal(shape).astype(np.float32) for _ in range(2)]
    image = (r.integers(0, 256, (2, 3, 6, 7)) - 120).astype(np.float32)
    td = r.standard_normal(shape).astype(np.float32)
    for dtype, npdtype, tol in ((torch.float32, np.float32, 1e-4), (torch.float64, np.float64, 1e-12)):
        layer.to(dtype)
        cpu = _run(layer, *(x.astype(npdtype) for x in (*xs, image, td)))
        layer.cuda()
        for b in layer.blobs:
            b.grad = None
        u, q = (torch.tensor(x, dtype=dtype, device="cuda", requires_grad=True) for x in xs)
        top = layer(u, q, torch.tensor(image, dtype=dtype, device="cuda"))
        top.backward(torch.tensor(td, dtype=dtype, device="cuda"))
        got = [top.detach(), u.grad, q.grad, *(b.grad.reshape(4, 4) for b in layer.blobs)]
        for g, w in zip(got, [*cpu[:3], *cpu[3]]):
            np.testing.assert_allclose(g.cpu().numpy(), w, rtol=tol, atol=tol)  # CUDA's index_add_: atomics
        layer.cpu()
