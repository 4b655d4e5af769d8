"""FlowNet 2.0's augmentation layers (lmb-freiburg/flownet2 @ b92e198b) against loop ports of the fork's
kernels (``tests/layers/flownet_aug_reference.py``) for fixed coefficients, and their draws' statistics,
schedule and determinism separately."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data import flownet_coeffs as fc
from neocaffe.layers import flownet_aug_kernels as K
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.flownet_aug import PWC_EIGVEC
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import flownet_aug_reference as ref

EV = " ".join(f"chromatic_eigvec: {v}" for v in PWC_EIGVEC)


def _layer(text, shapes, phase=TRAIN):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(lp.type)(lp, shapes, phase)


def _coeffs(r, n, eigen=True, chroma=True):
    """Random coefficient sets of the ranges FlowNet2's train nets draw."""
    out = []
    for i in range(n):
        c = {"mirror": float(i % 2), "dx": r.uniform(-.1, .1), "dy": r.uniform(-.1, .1), "angle": r.uniform(-.2, .2),
             "zoom_x": r.uniform(1.1, 1.4), "zoom_y": r.uniform(1.1, 1.4)}
        if chroma:
            c.update(gamma=r.uniform(.8, 1.2), brightness=r.uniform(-.1, .1), contrast=r.uniform(.8, 1.2),
                     color1=r.uniform(.8, 1.2), color2=r.uniform(.8, 1.2), color3=r.uniform(.8, 1.2))
        if eigen:
            for nm in fc.EIGEN:
                d = fc.DEFAULTS[nm]
                c[nm] = d * r.uniform(.7, 1.4) if d else r.normal(0, .03)
            c["col_angle"] = r.uniform(-.5, .5)
        out.append({k: float(np.float32(v)) for k, v in c.items()})
    return out


def test_trans_matrix_equals_the_port_bit_for_bit():
    r = np.random.default_rng(0)
    for c in _coeffs(r, 6):
        for sizes in ((8, 6, 12, 10), (7, 5, 7, 5)):
            np.testing.assert_array_equal(fc.trans_matrix(c, *sizes), np.array(ref.from_coeff(c, *sizes), np.float32))


def test_array_form_round_trips_and_logs_the_unit_defaults():
    c = {"zoom_x": 1.25, "dx": 0.1, "gamma": 0.8, "mirror": 1.0}
    a = fc.to_array(c)
    assert a[fc.INDEX["zoom_x"]] == np.float32(math.log(1.25)) and a[fc.INDEX["dx"]] == np.float32(0.1)
    assert a[fc.INDEX["zoom_y"]] == 0 and a.dtype == np.float32 and a.size == 42
    back = fc.from_array(a)
    assert len(back) == 42 and abs(back["gamma"] - 0.8) < 1e-6
    assert fc.clear_defaults({"angle": 5e-4, "zoom_x": 1.0005, "dx": 0.01}) == {"dx": 0.01}
    # the field order is the proto's declaration order
    names = [f.name for f in caffe_pb2.AugmentationCoeff.DESCRIPTOR.fields]
    assert names == [n for n, _ in fc.COEFF_FIELDS]


def _data_aug_with_params(crop, extra=""):
    w, h = crop
    return (f'name: "aug" type: "DataAugmentation" bottom: "img" bottom: "p" top: "out" augmentation_param {{ '
            f'crop_width: {w} crop_height: {h} max_multiplier: 1 {EV} {extra} }}')


def _reference_augment(img, coeffs, cw, ch, max_mult=1.0):
    n, _, h, w = img.shape
    cleared = [fc.clear_defaults(fc.from_array(fc.to_array(c))) for c in coeffs]
    mats = [ref.from_coeff(c, cw, ch, w, h) for c in cleared]
    y = ref.spatial_augmentation(img, mats, ch, cw)
    y = ref.chromatic_eigen(y, [{nm: c.get(nm, fc.DEFAULTS[nm]) for nm in fc.EIGEN} for c in cleared],
                            ref.eigenspace(img, PWC_EIGVEC), max_mult)
    chrom = [{"gamma": c.get("gamma", 1), "brightness": c.get("brightness", 0), "contrast": c.get("contrast", 1),
              "color": [c.get(f"color{j}", 1) for j in (1, 2, 3)]} for c in cleared]
    y = ref.color_contrast(y, chrom, max_mult)
    return ref.apply_effects(y, [(0.0, 0.0, 0.0)] * n, max_mult)


def test_data_augmentation_matches_the_kernel_ports_for_given_coefficients():
    r = np.random.default_rng(1)
    img = r.uniform(0, 1, (3, 3, 13, 16)).astype(np.float32)
    coeffs = _coeffs(r, 3)
    rows = np.stack([fc.to_array(c) for c in coeffs]).reshape(3, 42, 1, 1)
    layer = _layer(_data_aug_with_params((11, 9)), [img.shape, rows.shape])
    got = layer(torch.tensor(img), torch.tensor(rows))[0].numpy()
    want = _reference_augment(img, coeffs, 11, 9)
    assert got.shape == (3, 3, 9, 11)
    diff = np.abs(got - want).max()
    assert diff < 2e-5, diff


def test_each_kernel_matches_its_port():
    r = np.random.default_rng(2)
    img = r.uniform(0, 1, (2, 3, 7, 9)).astype(np.float32)
    coeffs = _coeffs(r, 2)
    mats = [fc.trans_matrix(c, 8, 6, 9, 7) for c in coeffs]
    got = K.spatial_warp(torch.tensor(img), torch.tensor(np.stack(mats)), 6, 8).numpy()
    assert np.abs(got - ref.spatial_augmentation(img, mats, 6, 8)).max() < 1e-6
    ev = torch.tensor(PWC_EIGVEC)
    space = K.eigen_space(torch.tensor(img), ev)
    want = ref.eigenspace(img, PWC_EIGVEC)
    for key in ("mean_rgb", "max_abs_eig", "mean_eig"):
        np.testing.assert_allclose(space[key].numpy(), np.array(want[key]), rtol=1e-5, atol=1e-6)
    ks = {nm: torch.tensor([c[nm] for c in coeffs], dtype=torch.float32) for nm in fc.EIGEN}
    got = K.chromatic_eigen(torch.tensor(img), ks, space, ev, 1.0).numpy()
    diff = np.abs(got - ref.chromatic_eigen(img, coeffs, want, 1.0)).max()
    assert diff < 1e-5, diff
    chrom = [{"gamma": 1.1, "brightness": 0.05, "contrast": 0.9, "color": [1.1, 0.9, 1.05]},
             {"gamma": 0.8, "brightness": -0.05, "contrast": 1.2, "color": [0.95, 1.1, 1.0]}]
    got = K.color_contrast(torch.tensor(img), torch.tensor([c["color"] for c in chrom]),
                           *(torch.tensor([c[k] for c in chrom]) for k in ("gamma", "brightness", "contrast")), 1.0)
    assert np.abs(got.numpy() - ref.color_contrast(img, chrom, 1.0)).max() < 1e-6
    eff = [(0.7, 1.0, 0.2), (-2.0, 0.0, 0.5)]
    got = K.effects(torch.tensor(img), *(torch.tensor(v, dtype=torch.float32) for v in (
        [math.cos(e[0]) for e in eff], [math.sin(e[0]) for e in eff], [e[1] for e in eff], [e[2] for e in eff])), 1.0)
    assert np.abs(got.numpy() - ref.apply_effects(img, eff, 1.0)).max() < 1e-6


def test_flow_augmentation_matches_warp_data():
    r = np.random.default_rng(3)
    flow = r.normal(0, 2, (2, 2, 12, 14)).astype(np.float32)
    c1, c2 = _coeffs(r, 2, eigen=False, chroma=False), _coeffs(r, 2, eigen=False, chroma=False)
    p1 = np.stack([fc.to_array(c) for c in c1]).reshape(2, 42, 1, 1)
    p2 = np.stack([fc.to_array(c) for c in c2]).reshape(2, 42, 1, 1)
    layer = _layer('name: "fa" type: "FlowAugmentation" bottom: "f" bottom: "a" bottom: "b" top: "o" '
                   'augmentation_param { crop_width: 10 crop_height: 8 }', [flow.shape, p1.shape, p2.shape])
    got = layer(torch.tensor(flow), torch.tensor(p1), torch.tensor(p2)).numpy()
    m1 = [fc.trans_matrix(fc.from_array(a), 10, 8, 14, 12) for a in p1.reshape(2, 42)]
    m2 = [fc.inverse(fc.trans_matrix(fc.from_array(a), 10, 8, 14, 12)) for a in p2.reshape(2, 42)]
    diff = np.abs(got - ref.warp_data(flow, m1, m2, 8, 10)).max()
    assert got.shape == (2, 2, 8, 10) and diff < 1e-4, diff


def test_flow_augmentation_of_identical_transforms_is_the_cropped_flow():
    flow = np.random.default_rng(4).normal(0, 1, (1, 2, 8, 10)).astype(np.float32)
    p = np.zeros((1, 42, 1, 1), np.float32)
    layer = _layer('name: "fa" type: "FlowAugmentation" bottom: "f" bottom: "a" bottom: "b" top: "o" '
                   'augmentation_param { crop_width: 6 crop_height: 4 }', [flow.shape, p.shape, p.shape])
    got = layer(torch.tensor(flow), torch.tensor(p), torch.tensor(p)).numpy()
    np.testing.assert_allclose(got, flow[:, :, 2:6, 2:8], atol=1e-6)


def test_test_phase_center_crops_with_the_forks_border_blend_and_subtracts_the_mean():
    img = np.random.default_rng(5).uniform(0, 1, (2, 3, 6, 8)).astype(np.float32)
    text = ('name: "aug" type: "DataAugmentation" bottom: "img" top: "out" augmentation_param { crop_width: 8 '
            'crop_height: 6 mean: 0.1 mean: 0.2 mean: 0.3 mean_per_pixel: false '
            'rotate { rand_type: "uniform" spread: 1 } }')
    out = _layer(text, [img.shape], TEST)(torch.tensor(img))[0].numpy()
    want = img.copy()
    want[:, :, :, -1] = np.float32(0.95) * img[:, :, :, -1] + np.float32(0.05) * img[:, :, :, -2]  # x clamped to W-1.05
    want[:, :, -1, :] = np.float32(0.95) * want[:, :, -1, :] + np.float32(0.05) * want[:, :, -2, :]
    want -= np.array([0.1, 0.2, 0.3], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, want, atol=2e-6)


def test_recompute_mean_is_a_running_mean_of_the_first_iterations():
    r = np.random.default_rng(6)
    text = ('name: "aug" type: "DataAugmentation" bottom: "img" top: "out" augmentation_param { crop_width: 4 '
            'crop_height: 4 recompute_mean: 2 mean_per_pixel: false }')
    layer = _layer(text, [(2, 3, 4, 4)], TEST)
    assert [tuple(b.shape) for b in layer.blobs] == [(1, 1, 1, 1), (1, 3, 4, 4), (1, 3, 1, 1)]
    assert all(s.lr_mult == 0 and s.decay_mult == 0 for s in layer.param.param)
    imgs = [r.uniform(0, 1, (2, 3, 4, 4)).astype(np.float32) for _ in range(3)]
    crops = []
    for k, img in enumerate(imgs):
        crop = ref.spatial_augmentation(img, [ref.from_coeff({}, 4, 4, 4, 4)] * 2, 4, 4)
        crops.append(crop)
        out = layer(torch.tensor(img))[0].numpy()
        pix = np.mean([c.mean(axis=0) for c in crops[:2]], axis=0)
        np.testing.assert_allclose(out, crop - pix.mean(axis=(1, 2)).reshape(1, 3, 1, 1), atol=1e-6)
    assert layer.blobs[0].item() == 3


def _gen_text(mode="", extra=""):
    g = 'rand_type: "uniform_bernoulli" spread: 0.4 prob: 1.0'
    return ('name: "gen" type: "GenerateAugmentationParameters" bottom: "img" top: "p" augmentation_param { '
            f'crop_width: 40 crop_height: 30 {mode} translate {{ {g} }} rotate {{ {g} }} '
            f'zoom {{ {g} exp: true mean: 0.2 }} squeeze {{ {g} exp: true }} '
            'gamma { rand_type: "gaussian_bernoulli" spread: 0.1 exp: true prob: 1.0 } '
            f'mirror {{ rand_type: "bernoulli" prob: 0.5 }} {extra} }}')


def test_generated_spatial_draws_keep_the_crop_inside_and_follow_the_distributions():
    layer = _layer(_gen_text(), [(400, 3, 60, 80)])
    rows = layer(torch.zeros(400, 3, 60, 80)).numpy().reshape(400, 42)
    cs = [fc.from_array(a) for a in rows]
    inside = [fc._corners_inside(c, 80, 60, 40, 30) == 4 for c in cs]
    assert np.mean(inside) > 0.97       # those that never fitted in 50 tries keep the defaults, also inside
    assert 0.4 < np.mean([c["mirror"] for c in cs]) < 0.6
    gam = np.log([c["gamma"] for c in cs])
    assert abs(gam.std() - 0.1) < 0.02 and abs(gam.mean()) < 0.02
    assert all(abs(c["angle"]) <= 0.4 + 1e-6 for c in cs)
    zy = np.array([c["zoom_y"] for c in cs])
    assert zy.min() >= math.exp(0.2 - 0.4 - 0.4) - 1e-5 and zy.max() <= math.exp(0.2 + 0.4 + 0.4) + 1e-5


def test_draws_repeat_with_the_seed_and_resume():
    a = _layer(_gen_text(), [(3, 3, 60, 80)])
    b = _layer(_gen_text(), [(3, 3, 60, 80)])
    b.load_resume_state(a.resume_state())
    x = torch.zeros(3, 3, 60, 80)
    first = [a(x) for _ in range(3)]
    assert not torch.equal(first[0], first[1])
    torch.testing.assert_close(b(x), first[0], rtol=0, atol=0)
    c = _layer(_gen_text(), [(3, 3, 60, 80)])
    c.load_resume_state(a.resume_state() | {"iteration": 1})
    torch.testing.assert_close(c(x), first[1], rtol=0, atol=0)


def test_test_phase_draws_nothing_unless_augment_during_test():
    x = torch.zeros(2, 3, 60, 80)
    assert not _layer(_gen_text(), [x.shape], TEST)(x).any()
    assert _layer(_gen_text(extra="augment_during_test: true"), [x.shape], TEST)(x).any()


def test_add_mode_multiplies_log_fields_and_replace_redraws_spatial():
    p = np.zeros((4, 42, 1, 1), np.float32)
    p[:, fc.INDEX["gamma"]] = math.log(1.5)
    p[:, fc.INDEX["dx"]] = 0.01
    text = _gen_text().replace('bottom: "img"', 'bottom: "p0"').replace("crop_width: 40", "crop_width: 40 "
                                                                          "bottomwidth: 80 bottomheight: 60")
    add = _layer(text, [p.shape])(torch.tensor(p)).numpy().reshape(4, 42)
    assert np.all(add[:, fc.INDEX["gamma"]] != np.float32(math.log(1.5)))
    rep = _layer(text.replace("translate", 'mode: "replace" translate'), [p.shape])(torch.tensor(p)).numpy()
    rep = rep.reshape(4, 42)
    assert np.all(np.abs(rep[:, fc.INDEX["dx"]]) <= 0.4 + 1e-6)
    reg = _layer(_gen_text(), [(4, 3, 60, 80)])  # an image bottom: "regenerate"
    assert reg.mode == "regenerate"


def test_draw_options():
    r = np.random.default_rng(7)
    p = caffe_pb2.RandomGeneratorParameter(rand_type="uniform", mean=2, spread=1, discretize=True, multiplier=3)
    vals = {fc.draw(p, 1.0, r) for _ in range(200)}
    assert vals <= {3.0, 6.0, 9.0}
    p = caffe_pb2.RandomGeneratorParameter(rand_type="gaussian_bernoulli", spread=1, prob=0.0, exp=True)
    assert fc.draw(p, 1.0, r) == 1.0 and fc.draw(p, 1.0, r, prob0=0.25) == 0.25
    p = caffe_pb2.RandomGeneratorParameter(rand_type="uniform", spread=1)
    assert fc.draw(p, 0.0, r) == 0.0                  # apply_schedule with discount 0: no spread
    p.apply_schedule = False
    assert fc.draw(p, 0.0, r) != 0.0
    sched = caffe_pb2.CoeffScheduleParameter(half_life=50000, initial_coeff=0.5, final_coeff=1)
    assert abs(fc.discount(sched, 50000) - 0.75) < 1e-4 and abs(fc.discount(sched, 0) - 0.5) < 1e-7
    with pytest.raises(ValueError, match="rand_type"):
        fc.draw(caffe_pb2.RandomGeneratorParameter(rand_type="poisson"), 1.0, r)


def test_black_augmentation():
    r = np.random.default_rng(8)
    a, b = r.uniform(0.1, 1, (64, 3, 6, 8)), r.uniform(0.1, 1, (64, 3, 6, 8))
    f = r.normal(0, 1, (64, 2, 6, 8))
    text = ('name: "black" type: "BlackAugmentation" bottom: "a" bottom: "b" bottom: "f" top: "a" top: "b" top: "f" '
            'black_augmentation_param { black { rand_type: "bernoulli" prob: 0.25 } border { rand_type: '
            '"uniform_bernoulli" mean: 0.25 spread: 0.0 prob: 0.5 } }')
    layer = _layer(text, [a.shape, b.shape, f.shape])
    ta, tb, tf = (t.numpy() for t in layer(*(torch.tensor(v) for v in (a, b, f))))
    black = np.all(tf == 0, axis=(1, 2, 3))
    assert 5 < black.sum() < 30
    np.testing.assert_array_equal(ta[black], b[black])
    rest = ~black
    bordered = rest & np.any(ta == 0, axis=(1, 2, 3))
    assert 10 < bordered.sum() < 45
    untouched = rest & ~bordered
    np.testing.assert_array_equal(ta[untouched], a[untouched])
    for i in np.flatnonzero(bordered):
        zero = ta[i, 0] == 0
        assert zero[:, :2].all() or zero[:1, :].all()   # int(0.25 * 8) columns or int(0.25 * 6) rows
    with pytest.raises(LayerSetupError, match="tops as bottoms"):
        _layer(text.replace(' top: "f"', ''), [a.shape, b.shape, f.shape])


def test_errors_name_the_layer():
    with pytest.raises(LayerSetupError, match="aug.*larger"):
        _layer(_data_aug_with_params((20, 20)), [(1, 3, 8, 8), (1, 42, 1, 1)])
    layer = _layer(_data_aug_with_params((6, 6)).replace(EV, ""), [(1, 3, 8, 8), (1, 42, 1, 1)])
    p = fc.to_array({"lmult_pow": 1.3}).reshape(1, 42, 1, 1)
    with pytest.raises(LayerSetupError, match="chromatic_eigvec"):
        layer(torch.zeros(1, 3, 8, 8), torch.tensor(p))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    r = np.random.default_rng(9)
    img = r.uniform(0, 1, (3, 3, 13, 16)).astype(np.float32)
    rows = np.stack([fc.to_array(c) for c in _coeffs(r, 3)]).reshape(3, 42, 1, 1)
    layer = _layer(_data_aug_with_params((11, 9)), [img.shape, rows.shape])
    cpu = layer(torch.tensor(img), torch.tensor(rows))[0]
    layer.blobs[0].data.zero_()
    gpu = layer.cuda()(torch.tensor(img).cuda(), torch.tensor(rows).cuda())[0]
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-5, rtol=0)
    flow = torch.tensor(r.normal(0, 1, (3, 2, 13, 16)).astype(np.float32))
    fa = _layer('name: "fa" type: "FlowAugmentation" bottom: "f" bottom: "a" bottom: "b" top: "o" '
                'augmentation_param { crop_width: 11 crop_height: 9 }', [flow.shape, rows.shape, rows.shape])
    want = fa(flow, torch.tensor(rows), torch.tensor(rows))
    got = fa(flow.cuda(), torch.tensor(rows).cuda(), torch.tensor(rows).cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=0)


def test_copy_blobs_is_the_forks_adjust_blobs():
    text = ('name: "aug" type: "DataAugmentation" bottom: "img" top: "out" augmentation_param { crop_width: 4 '
            'crop_height: 3 recompute_mean: 1000 mean_per_pixel: MPP }')
    stored = [np.array([[[[5000.0]]]], np.float32), np.arange(3 * 6 * 8, dtype=np.float32).reshape(1, 3, 6, 8),
              np.array([0.1, 0.2, 0.3], np.float32).reshape(1, 3, 1, 1)]
    layer = _layer(text.replace("MPP", "false"), [(1, 3, 5, 6)], TEST)
    layer.copy_blobs(stored)
    assert layer.blobs[0].item() == 5000 and not layer.blobs[1].any()
    np.testing.assert_array_equal(layer.blobs[2].detach().numpy(), stored[2])
    out = layer(torch.ones(1, 3, 5, 6))[0]
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([0.9, 0.8, 0.7]))   # no recompute past 1000
    layer = _layer(text.replace("MPP", "true"), [(1, 3, 5, 6)], TEST)
    layer.copy_blobs(stored)  # another crop size: the per-channel average broadcast
    per_channel = stored[1][0].mean(axis=(1, 2))
    np.testing.assert_allclose(layer.blobs[1].detach().numpy()[0, :, 2, 3], per_channel, rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[2].detach().numpy().reshape(3), per_channel, rtol=1e-6)


def test_data_augmentation_draws_repeat_resume_and_add_noise():
    g = 'rand_type: "uniform_bernoulli" spread: 0.3 prob: 1.0'
    text = ('name: "aug" type: "DataAugmentation" bottom: "img" top: "out" top: "p" augmentation_param { '
            f'crop_width: 12 crop_height: 10 max_multiplier: 1 translate {{ {g} }} rotate {{ {g} }} '
            f'zoom {{ {g} exp: true mean: 0.2 }} noise {{ rand_type: "uniform" mean: 0.05 spread: 0.01 }} }}')
    img = torch.tensor(np.random.default_rng(10).uniform(0.3, 0.7, (3, 3, 16, 20)).astype(np.float32))
    a, b = _layer(text, [img.shape]), _layer(text, [img.shape])
    b.load_resume_state(a.resume_state())
    first, second = a(img), a(img)
    assert not torch.equal(first[0], second[0])
    for x, y in zip(b(img), first):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    c = _layer(text, [img.shape])           # a resumed run: the seed and the iteration blob (a snapshot's)
    c.load_resume_state(a.resume_state())
    c.blobs[0].data.fill_(1)
    for x, y in zip(c(img), second):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    rows = first[1].numpy().reshape(3, 42)
    noise = np.exp(0) * rows[:, fc.INDEX["noise"]]
    assert np.all((noise >= 0.04 - 1e-6) & (noise <= 0.06 + 1e-6))
    # the noise is the difference to the same coefficients applied without it
    quiet = rows.copy()
    quiet[:, fc.INDEX["noise"]] = 0
    d = _layer(text.replace('top: "p" ', "").replace("bottom: \"img\"", 'bottom: "img" bottom: "q"'),
               [img.shape, (3, 42, 1, 1)])
    clean = d(img, torch.tensor(quiet.reshape(3, 42, 1, 1)))[0]
    resid = (first[0] - clean).numpy()
    for i in range(3):
        assert abs(resid[i].std() - noise[i]) < 0.15 * noise[i] and abs(resid[i].mean()) < 0.01
    assert not _layer(text, [img.shape], TEST)(img)[1].any()   # TEST: no draws
    assert _layer(text.replace("max_multiplier", "augment_during_test: true max_multiplier"), [img.shape],
                  TEST)(img)[1].any()


def test_add_and_replace_keep_what_they_do_not_draw():
    p = np.zeros((50, 42, 1, 1), np.float32)
    p[:, fc.INDEX["gamma"]] = math.log(1.5)
    p[:, fc.INDEX["dx"]] = 0.01
    p[:, fc.INDEX["brightness"]] = 0.1
    base = ('name: "gen" type: "GenerateAugmentationParameters" bottom: "p0" top: "p" augmentation_param { '
            'crop_width: 40 crop_height: 30 bottomwidth: 80 bottomheight: 60 MODE '
            'gamma { rand_type: "gaussian" spread: 0.1 exp: true } EXTRA }')
    add = _layer(base.replace("MODE", "").replace("EXTRA", ""), [p.shape])(torch.tensor(p)).numpy().reshape(50, 42)
    np.testing.assert_allclose(add[:, fc.INDEX["dx"]], 0.01, rtol=1e-6)
    np.testing.assert_allclose(add[:, fc.INDEX["brightness"]], 0.1, rtol=1e-6)
    delta = add[:, fc.INDEX["gamma"]] - np.float32(math.log(1.5))   # log-valued: the draws multiply
    assert abs(delta.std() - 0.1) < 0.03 and abs(delta.mean()) < 0.04
    text = base.replace("MODE", 'mode: "replace"').replace("EXTRA", 'rotate { rand_type: "uniform" spread: 0.1 }')
    rep = _layer(text, [p.shape])(torch.tensor(p)).numpy().reshape(50, 42)
    assert np.all(rep[:, fc.INDEX["dx"]] == 0)                       # spatial cleared, only rotate drawn
    assert np.all(np.abs(rep[:, fc.INDEX["angle"]]) <= 0.1 + 1e-6) and rep[:, fc.INDEX["angle"]].std() > 0.02
    np.testing.assert_allclose(rep[:, fc.INDEX["brightness"]], 0.1, rtol=1e-6)
    assert np.all(rep[:, fc.INDEX["gamma"]] != np.float32(math.log(1.5)))  # replaced by the new draw


def test_a_deploy_net_loads_a_train_nets_augmentation_blobs_through_copy_from(tmp_path):
    # flownet2's Net::CopyTrainedLayersFrom hands a DoesUseCustomCopyBlobs() layer its stored blobs instead of the
    # shape-checked copy: a deploy net of another crop size loads the train net's per-pixel mean
    from neocaffe.graph.net import Net
    from neocaffe.io.caffemodel import LayerWeights, save_caffemodel

    text = ('layer { name: "in" type: "Input" top: "img" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 6 } } } '
            'layer { name: "aug" type: "DataAugmentation" bottom: "img" top: "out" augmentation_param { '
            'crop_width: 4 crop_height: 3 recompute_mean: 1000 } }')
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase=TEST)
    mean = np.arange(3 * 6 * 8, dtype=np.float32).reshape(1, 3, 6, 8)  # the train net's 8 x 6 crop
    stored = [np.array([[[[5000.0]]]], np.float32), mean, mean.mean(axis=(2, 3), keepdims=True)]
    save_caffemodel(tmp_path / "train.caffemodel", [LayerWeights("aug", "DataAugmentation", stored)])
    assert net.copy_from(str(tmp_path / "train.caffemodel")) == ["aug"]
    layer = net.layers[net.layer_names.index("aug")]
    np.testing.assert_allclose(layer.blobs[1].detach().numpy()[0, :, 1, 2], mean[0].mean(axis=(1, 2)), rtol=1e-6)
    assert layer.blobs[0].item() == 5000
