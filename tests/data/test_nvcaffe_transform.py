"""NVCaffe's random resize / stretch (``img_rand_resize_*``, ``rand_resize_ratio_*``, ``*_stretch_*``,
``allow_upscale``, ``interpolation_algo_*``): neocaffe's transformer equals a plain port of NVCaffe's
cv::Mat path (tests/data/nvcaffe_ref.py) given the same draws; the draws have NVCaffe's ranges and
distributions; unset fields change nothing; Data and ImageData layers with them repeat and resume."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe import rng as nrng
from neocaffe.data.nv_resize import NVResize, ResizeDraws, rand_float
from neocaffe.data.transformer import DataTransformer
from neocaffe.proto import caffe_pb2
from tests.data import nvcaffe_ref as ref

TRAIN, TEST = 0, 1


class Scripted:
    """A generator stand-in that hands out the given draws in order (NVCaffe's order), checking bounds."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, lo, hi=None, size=None, dtype=None):
        assert size is None
        v = self.values.pop(0)
        assert lo <= v < hi, (v, lo, hi)
        return v


def _tp(text: str) -> caffe_pb2.TransformationParameter:
    return text_format.Parse(text, caffe_pb2.TransformationParameter())


def _ref_params(tp) -> dict:
    p = dict(ref.DEFAULTS)
    for k in p:
        p[k] = type(p[k])(getattr(tp, k))
    return p


CASES = [  # (transform_param, source h, w)
    ("img_rand_resize_lower: 10 img_rand_resize_upper: 14 crop_size: 8", 12, 17),
    ("img_rand_resize_lower: 9 img_rand_resize_upper: 20 allow_upscale: true crop_size: 8 mirror: true", 11, 13),
    ("rand_resize_ratio_lower: 1.0 rand_resize_ratio_upper: 1.5 allow_upscale: true crop_size: 6", 10, 10),
    ("rand_resize_ratio_lower: 1.1 rand_resize_ratio_upper: 1.4 crop_size: 6 interpolation_algo_down: INTER_AREA", 12, 9),
    ("vertical_stretch_lower: 0.6 vertical_stretch_upper: 1.3 horizontal_stretch_lower: 0.8 "
     "horizontal_stretch_upper: 1.2 allow_upscale: true interpolation_algo_up: INTER_LINEAR scale: 0.017 "
     "mean_value: 104 mean_value: 117 mean_value: 123 mirror: true crop_size: 7", 14, 11),
    ("img_rand_resize_lower: 16 img_rand_resize_upper: 16 allow_upscale: true vertical_stretch_lower: 0.9 "
     "vertical_stretch_upper: 0.9 scale: 0.5 mean_value: 3", 8, 12),  # fixed sizes: no draws, no crop
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_fixed_draws_match_nvcaffe_port(case, phase):
    text, h, w = CASES[case]
    tp = _tp(text)
    tr = DataTransformer(tp, phase)
    nv = tr.nv_resize
    assert nv is not None
    g = np.random.default_rng(100 + case)
    img = g.integers(0, 256, (3, h, w), dtype=np.uint8)
    p = _ref_params(tp)
    for trial in range(6):
        d = dict(size_k=int(g.integers(0, nv.upper - nv.lower + 1)) if nv.sizes_on else 0,
                 ratio_r=int(g.integers(0, 2**32)), wide=bool(trial % 2), vert_r=int(g.integers(0, 2**32)),
                 horiz_r=int(g.integers(0, 2**32)))
        if trial == 0:
            d.update(ratio_r=2**32 - 1, vert_r=2**32 - 1, horiz_r=0)  # the ends of Rand(a, b)'s range
        resized = ref.random_resize(img.transpose(1, 2, 0), p, **d)
        rh, rw = resized.shape[:2]
        cs = tr.crop_size
        oh = int(g.integers(0, rh - cs + 1)) if cs and phase == TRAIN else 0
        ow = int(g.integers(0, rw - cs + 1)) if cs and phase == TRAIN else 0
        flip = int(g.integers(0, 2))
        script = []
        if nv.sizes_on and nv.upper > nv.lower:
            script.append(d["size_k"])
        if nv.ratio_on:
            if nv.ratio[0] != nv.ratio[1]:
                script.append(d["ratio_r"])
            if h == w:
                script.append(int(d["wide"]))
        if nv.vertical_on and nv.vertical[0] != nv.vertical[1]:
            script.append(d["vert_r"])
        if nv.horizontal_on and nv.horizontal[0] != nv.horizontal[1]:
            script.append(d["horiz_r"])
        if cs and phase == TRAIN:
            script += [v for v, full in ((oh, rh == cs), (ow, rw == cs)) if not full]
        if tr.mirror:
            script.append(flip)
        want = ref.transform(img.transpose(1, 2, 0), p, phase, mean_values=list(tp.mean_value), crop_h=oh, crop_w=ow,
                             mirror_draw=flip, **d)
        s = Scripted(script)
        got = tr.apply(tr.crop_batch([img], [0.0], s)).numpy()[0]  # type: ignore[arg-type]
        assert s.values == [], "neocaffe drew fewer values than NVCaffe's order asks for"
        np.testing.assert_array_equal(got, want, err_msg=f"{text} trial {trial}")


def test_mean_file_is_centre_cropped_and_scaled_first(tmp_path):
    """With the random resize NVCaffe centre-crops the mean file to the item (not at the crop's offset) and
    computes x * scale - mean * scale."""
    from neocaffe.io.binaryproto import write_blobproto

    g = np.random.default_rng(5)
    mean = (g.random((3, 12, 12)) * 255).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    write_blobproto(str(path), mean[None])
    tp = _tp(f'mean_file: "{path}" scale: 0.0078125 crop_size: 8 mirror: true img_rand_resize_lower: 9 '
             'img_rand_resize_upper: 12')
    tr = DataTransformer(tp, TRAIN)
    img = g.integers(0, 256, (3, 12, 15), dtype=np.uint8)
    for size_k, oh, ow, flip in ((0, 1, 2, 1), (3, 4, 7, 0), (2, 0, 5, 1)):
        resized = ref.random_resize(img.transpose(1, 2, 0), _ref_params(tp), size_k=size_k)
        rh, rw = resized.shape[:2]
        script = [size_k] + [v for v, full in ((oh, rh == 8), (ow, rw == 8)) if not full] + [flip]
        want = ref.transform(img.transpose(1, 2, 0), _ref_params(tp), TRAIN, mean=mean.transpose(1, 2, 0),
                             crop_h=oh, crop_w=ow, mirror_draw=flip, size_k=size_k)
        got = tr.apply(tr.crop_batch([img], [0.0], Scripted(script))).numpy()[0]  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, want)


def test_draws_have_nvcaffe_ranges_and_distributions():
    tp = _tp("img_rand_resize_lower: 20 img_rand_resize_upper: 29 rand_resize_ratio_lower: 1.0 "
             "rand_resize_ratio_upper: 2.0 vertical_stretch_lower: 0.5 vertical_stretch_upper: 1.5 "
             "horizontal_stretch_lower: 0.8 horizontal_stretch_upper: 1.25 allow_upscale: true")
    nv = NVResize(tp)
    g = np.random.default_rng(0)
    n = 20000
    draws = [nv.draw(30, 30, g) for _ in range(n)]
    sizes = np.array([d.new_size for d in draws])
    counts = np.bincount(sizes - 20, minlength=10)
    assert sizes.min() == 20 and sizes.max() == 29 and len(counts) == 10  # lower + Rand(upper - lower + 1)
    chi2 = float(((counts - n / 10) ** 2 / (n / 10)).sum())
    assert chi2 < 27.9, chi2  # 9 degrees of freedom, p = 0.001
    for field, (lo, hi) in (("ratio_r", nv.ratio), ("vertical_r", nv.vertical), ("horizontal_r", nv.horizontal)):
        vals = np.array([rand_float(lo, hi, getattr(d, field)) for d in draws], np.float64)
        assert vals.min() >= np.float32(lo) and vals.max() <= np.float32(hi)
        u = (vals - lo) / (hi - lo)  # uniform on [0, 1]: mean 1/2, variance 1/12, flat deciles
        assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
        dec = np.histogram(u, bins=10, range=(0, 1))[0]
        assert float(((dec - n / 10) ** 2 / (n / 10)).sum()) < 27.9
    wide = np.array([d.wide for d in draws])
    assert abs(wide.mean() - 0.5) < 0.02  # Rand(2) > 0 for a square source
    assert not any(d.wide for d in (nv.draw(30, 40, g) for _ in range(50)))  # non-square: no Rand(2)
    # Rand(a, b) at the ends of the 32-bit draw, and Rand(a, a) = a
    assert rand_float(0.5, 1.5, 0) == np.float32(0.5) and rand_float(1.5, 0.5, 2**32 - 1) == np.float32(1.5)
    assert rand_float(0.7, 0.7, 12345) == np.float32(0.7)
    # sizes: shorter side new_size, longer side = shorter * ratio (then stretched)
    d = ResizeDraws(new_size=24, ratio_r=0, vertical_r=0, horizontal_r=0)
    plain = NVResize(_tp("img_rand_resize_lower: 20 img_rand_resize_upper: 29 allow_upscale: true"))
    assert plain.size(30, 60, d) == (24, 48) and plain.size(60, 30, d) == (48, 24)
    assert NVResize(_tp("img_rand_resize_lower: 20 img_rand_resize_upper: 29")).size(22, 60, d) == (22, 60)  # no upscale
    assert nv.size(30, 40, d) == (12, 19)  # 24x32; ratio 1: 24x24; vertical 0.5: 12; horizontal 0.8: 19.2 -> 19
    assert NVResize(_tp("img_rand_resize_lower: 5 img_rand_resize_upper: 6 crop_size: 9")).size(
        20, 30, ResizeDraws(new_size=5)) == (9, 9)  # never below crop_size


def test_interpolation_follows_nvcaffe_choice():
    img = np.random.default_rng(1).integers(0, 256, (1, 9, 13), dtype=np.uint8)
    for text, d, algo in (("img_rand_resize_lower: 5 img_rand_resize_upper: 5", ResizeDraws(new_size=5), 0),
                          ("img_rand_resize_lower: 12 img_rand_resize_upper: 12 allow_upscale: true",
                           ResizeDraws(new_size=12), 2),
                          ("img_rand_resize_lower: 5 img_rand_resize_upper: 5 interpolation_algo_down: INTER_AREA",
                           ResizeDraws(new_size=5), 3)):
        nv = NVResize(_tp(text))
        nh, nw = nv.size(9, 13, d)
        import cv2
        np.testing.assert_array_equal(nv(img, d)[0], cv2.resize(img[0], (nw, nh), interpolation=algo))


@pytest.mark.parametrize("text", ["", "allow_upscale: true", "interpolation_algo_up: INTER_LINEAR",
                                  "img_rand_resize_lower: 0 img_rand_resize_upper: 0"])
def test_unset_fields_change_nothing(text):
    """Only what NVCaffe's image_random_resize_enabled() looks at turns the stage on; otherwise the output is
    BVLC's (x - mean) * scale, bit for bit, with the same draws."""
    base = "crop_size: 5 mirror: true scale: 0.017 mean_value: 100 mean_value: 110 mean_value: 120 "
    tr = DataTransformer(_tp(base + text), TRAIN)
    plain = DataTransformer(_tp(base), TRAIN)
    assert tr.nv_resize is None
    imgs = [np.random.default_rng(i).integers(0, 256, (3, 8, 9), dtype=np.uint8) for i in range(4)]
    a = tr.transform(imgs, np.random.default_rng(3)).numpy()
    b = plain.transform(imgs, np.random.default_rng(3)).numpy()
    np.testing.assert_array_equal(a, b)
    offs, mir = DataTransformer(_tp(base), TRAIN).draw(4, 8, 9, np.random.default_rng(3))
    mv = np.array([100, 110, 120], np.float32)[:, None, None]
    want = [((x[:, o[0]:o[0] + 5, o[1]:o[1] + 5][:, :, ::-1] if m else x[:, o[0]:o[0] + 5, o[1]:o[1] + 5])
             .astype(np.float32) - mv) * np.float32(0.017) for x, o, m in zip(imgs, offs, mir)]
    np.testing.assert_array_equal(a, np.stack(want))


def test_present_float_field_turns_the_stage_on():
    """NVCaffe checks has_*() of the float fields: a stretch of 1..1 still takes the cv::Mat path."""
    assert NVResize.enabled(_tp("vertical_stretch_lower: 1"))
    assert not NVResize.enabled(_tp("allow_upscale: true"))


def _layer(text: str, phase: int, seed: int):
    from neocaffe.layers.registry import get_layer_class

    nrng.set_seed(seed)
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, [], phase)


def _run(layer, times):
    out = []
    for _ in range(times):
        tops = layer()
        out.append([t.detach().numpy().copy() for t in tops])
    return out


def _layer_texts():
    from neocaffe.data.examples import example_folder

    folder = example_folder()
    nv = ("img_rand_resize_lower: 6 img_rand_resize_upper: 9 rand_resize_ratio_lower: 1.0 rand_resize_ratio_upper: 1.3 "
          "vertical_stretch_lower: 0.8 vertical_stretch_upper: 1.2 allow_upscale: true")
    return [
        f'name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{folder}/list.txt" '
        f'root_folder: "{folder}/" batch_size: 2 shuffle: true }} transform_param {{ crop_size: 5 mirror: true {nv} }}',
        f'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{folder}/lmdb" batch_size: 3 '
        f'backend: LMDB }} transform_param {{ crop_size: 4 mirror: true scale: 0.5 {nv} }}',
    ]


@pytest.mark.parametrize("which", [0, 1])
def test_layer_runs_repeats_and_resumes(which):
    text = _layer_texts()[which]
    a = _layer(text, TRAIN, 7)
    first = _run(a, 3)
    assert all(b[0].shape[1:] == first[0][0].shape[1:] for b in first)
    b = _layer(text, TRAIN, 7)
    again = _run(b, 3)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x[0], y[0])
    c = _layer(text, TRAIN, 8)
    other = _run(c, 3)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(first, other)), "the seed changes nothing"
    state = a.resume_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    expected = _run(a, 3)
    c.load_resume_state(torch.load(buf, weights_only=True))
    got = _run(c, 3)
    for x, y in zip(expected, got):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(v, u)
    # TEST: NVCaffe resizes at random in TEST too (no phase check), then centre-crops
    t = _layer(text, TEST, 7)
    assert _run(t, 1)[0][0].shape[1:] == first[0][0].shape[1:]
    for lay in (a, b, c, t):
        closer = getattr(lay, "close", None)
        if callable(closer):
            closer()


@pytest.mark.parametrize("type_name, match", [
    ("DenseImageData", "would resize the image and not its label map"),
    ("ImageLabelmapData", "would resize the image and not its edge map"),
    ("ImageSegData", "img_rand_resize_lower, img_rand_resize_upper: not read by ImageSegData")])
def test_label_reading_layers_refuse_the_resize(type_name, match):
    """A layer that reads a label beside its image would resize one and not the other: refused by name."""
    from google.protobuf import text_format

    from neocaffe.layers.base import LayerSetupError
    from neocaffe.layers.registry import get_layer_class
    from neocaffe.proto import caffe_pb2

    cls = get_layer_class(type_name)
    ex = cls.examples()[0]
    param = text_format.Parse(ex.param, caffe_pb2.LayerParameter())
    param.transform_param.img_rand_resize_lower = 8
    param.transform_param.img_rand_resize_upper = 10
    with pytest.raises(LayerSetupError, match=match):
        cls(param, [tuple(np.shape(b)) for b in ex.bottoms], ex.phase)
