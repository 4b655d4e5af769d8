"""DetectionOutput's ``save_output_param`` (weiliu89/caffe ssd: detection_output_layer.cpp's saving,
bbox_util.cpp's OutputBBox): every file's text after each forward against an expectation built here from
the layer's top and the name_size entries, for VOC, COCO and ILSVRC, with cycles of ``num_test_image``
images that end between forwards and inside a batch; the resize modes of OutputBBox; the setups that
turn saving off or fail; the net's lean and eager paths; MobileNet-SSD end to end."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.layers.base import LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.conftest import shared_path

P, C = 30, 4  # priors, classes (0: background)
F32 = np.float32


# --- the layer and its inputs -------------------------------------------------------------------

def _prior(r):
    xy = r.uniform(-0.05, 0.8, (P, 2))
    wh = r.uniform(0.05, 0.35, (P, 2))
    return np.stack([np.concatenate([xy, xy + wh], 1).reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], P)])[None]


def _batch(r, n, empty=False):
    """(loc, conf) of ``n`` images; ``empty``: no class scores above the threshold (Caffe's fake rows)."""
    loc = r.standard_normal((n, P * 4)) * 0.6
    logits = r.standard_normal((n, P, C)) * 2.0
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    if empty:
        conf = np.zeros_like(conf)
        conf[..., 0] = 1
    return loc, conf.reshape(n, -1)


def _save_text(folder, fmt, label_map="lm.prototxt", name_size="ns.txt", num_test_image=None, resize="", extra=""):
    fields = [f'output_directory: "{folder / "out"}"', 'output_name_prefix: "comp4_det_test_"',
              f'output_format: "{fmt}"']
    if label_map is not None:
        fields.append(f'label_map_file: "{folder / label_map if label_map else ""}"')
    if name_size is not None:
        fields.append(f'name_size_file: "{folder / name_size if name_size else ""}"')
    if num_test_image is not None:
        fields.append(f"num_test_image: {num_test_image}")
    if resize:
        fields.append(f"resize_param {{ {resize} }}")
    return " ".join(fields + [extra])


def _layer_text(save, keep_top_k=6, code="CENTER_SIZE"):
    return ('name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "out" '
            f'detection_output_param {{ num_classes: {C} share_location: true background_label_id: 0 '
            f'nms_param {{ nms_threshold: 0.4 top_k: 12 }} code_type: {code} keep_top_k: {keep_top_k} '
            f'confidence_threshold: 0.08 save_output_param {{ {save} }} }}')


def _layer(text, n):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class("DetectionOutput")(p, [(n, P * 4), (n, P * C), (1, 2, P * 4)], caffe_pb2.TEST)


def _files(folder, label_names, sizes):
    lm = "".join(f'item {{ name: "{nm}" label: {i} display_name: "{nm}" }}\n' for i, nm in enumerate(label_names))
    (folder / "lm.prototxt").write_text(lm)
    (folder / "ns.txt").write_text("".join(f"{nm} {h} {w}\n" for nm, h, w in sizes))


class Run:
    """Forwards of one layer: keeps every top so the expectation can be rebuilt from them."""

    def __init__(self, layer, seed=0, device="cpu"):
        self.layer, self.r, self.device = layer, np.random.default_rng(seed), device
        self.prior = _prior(self.r)
        self.tops: list[tuple[np.ndarray, int]] = []

    def forward(self, n, empty=False):
        loc, conf = _batch(self.r, n, empty)
        out = self.layer(*(torch.tensor(a, dtype=torch.float32, device=self.device) for a in (loc, conf, self.prior)))
        rows = out.cpu().numpy().reshape(-1, 7).copy()
        self.tops.append((rows, n))
        return rows


# --- the expectation, from the tops -------------------------------------------------------------

def _cycles(tops, num_test_image, sizes):
    """Completed cycles: lists of (image name, label, score, pixel box) in top order."""
    done, cur, count = [], [], 0
    for rows, n in tops:
        for i in range(n):
            name, h, w = sizes[count]
            for row in rows[(rows[:, 0] == i) & (rows[:, 1] != -1)]:
                cur.append((name, int(row[1]), F32(row[2]), _pixels(row[3:7], h, w)))
            count += 1
            if count == num_test_image:
                done.append(cur)
                cur, count = [], 0
    return done


def _pixels(box, h, w, resize=None):
    """OutputBBox of one normalized box, vectorised style, all float32."""
    b = np.asarray(box, F32)
    hw = np.array([w, h, w, h], F32)
    mode = resize[0] if resize else "WARP"
    if mode == "FIT_LARGE_SIZE_AND_PAD":
        rh, rw = F32(resize[1]), F32(resize[2])
        aspect = F32(w) / F32(h)
        if aspect > rw / rh:
            pad = (rh - rw / aspect) / F32(2)
            src = np.array([0, pad / rh, 1, F32(1 - np.float64(pad / rh))], F32)
        else:
            pad = (rw - rh * aspect) / F32(2)
            src = np.array([pad / rw, 0, F32(1 - np.float64(pad / rw)), 1], F32)
        apart = b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]
        if not apart:
            span = np.array([src[2] - src[0], src[3] - src[1]] * 2, F32)
            b = np.clip((b - src[[0, 1, 0, 1]]) / span, F32(0), F32(1))
        return np.clip(b, F32(0), F32(1)) * hw
    if mode == "FIT_SMALL_SIZE" and resize[3]:
        scaled = b * np.array([resize[3][1], resize[3][0]] * 2, F32)
        return np.minimum(np.maximum(scaled, F32(0)), hw)
    return np.clip(b, F32(0), F32(1)) * hw


def _stored(v):
    """The fork's ptree float: round(v * 100) / 100 (halves away from zero), kept as float."""
    x = np.float64(F32(v) * F32(100))
    return F32(np.sign(x) * np.floor(abs(x) + 0.5) / 100)


def _xywh(px):
    return [_stored(px[0]), _stored(px[1]), _stored(px[2] - px[0]), _stored(px[3] - px[1])]


def _tail(score, px):
    x, y, w, h = (int(v) for v in _xywh(px))  # static_cast<int>: toward zero
    return f"{float(score):g} {x} {y} {x + w} {y + h}\n"


def _voc(cycle, label_names):
    files = {f"comp4_det_test_{nm}.txt": "" for nm in label_names[1:]}
    for name, label, score, px in cycle:
        files[f"comp4_det_test_{label_names[label]}.txt"] += f"{name} {_tail(score, px)}"
    return files


def _ilsvrc(cycle):
    return "".join(f"{name} {label} {_tail(score, px)}" for name, label, score, px in cycle)


def _json_value(text):
    quoted = '"' + text.replace("/", "\\/") + '"'
    return text if re.fullmatch(r"null|true|false|-?\d+(\.\d+)?", text) else quoted


def _coco(cycle, label_names):
    def fl(v):
        return _json_value("%.9g" % float(v))

    dets = []
    for name, label, score, px in cycle:
        coords = ",\n".join(16 * " " + fl(v) for v in _xywh(px))
        dets.append(f'{8 * " "}{{\n{12 * " "}"image_id": {_json_value(name)},\n'
                    f'{12 * " "}"category_id": {_json_value(label_names[label])},\n'
                    f'{12 * " "}"bbox": [\n{coords}\n{12 * " "}],\n{12 * " "}"score": {fl(score)}\n{8 * " "}}}')
    return "[\n" + ",\n".join(dets) + "\n    \n]\n"


def _written(folder):
    out = folder / "out"
    return {p.name: p.read_text() for p in sorted(out.iterdir())}


VOC_NAMES = ["background", "aeroplane", "bicycle", "bird"]
VOC_SIZES = [("000001", 500, 353), ("000002", 375, 500), ("000004", 406, 500), ("000006", 375, 500),
             ("000008", 333, 500)]


# --- the formats --------------------------------------------------------------------------------

def test_voc_files_are_emptied_at_each_cycle_start_and_written_at_its_end(tmp_path):
    _files(tmp_path, VOC_NAMES, VOC_SIZES)
    run = Run(_layer(_layer_text(_save_text(tmp_path, "VOC", num_test_image=4)), 2))
    empty = {f"comp4_det_test_{nm}.txt": "" for nm in VOC_NAMES[1:]}
    assert _written(tmp_path) == empty                       # made (emptied) when the net is built
    run.forward(2)
    assert _written(tmp_path) == empty                       # mid-cycle: nothing yet
    run.forward(2)
    cycles = _cycles(run.tops, 4, VOC_SIZES)
    assert len(cycles) == 1 and len(cycles[0]) > 8
    assert _written(tmp_path) == _voc(cycles[0], VOC_NAMES)
    top = run.forward(2, empty=True)                         # a new cycle begins: emptied again
    assert (top[:, 1] == -1).all() and _written(tmp_path) == empty
    run.forward(2)                                           # the count went on through the empty batch
    cycles = _cycles(run.tops, 4, VOC_SIZES)
    assert len(cycles) == 2 and {d[0] for d in cycles[1]} <= {"000004", "000006"}
    assert _written(tmp_path) == _voc(cycles[1], VOC_NAMES)


@pytest.mark.gpu
def test_voc_files_from_a_cuda_forward(tmp_path):
    _files(tmp_path, VOC_NAMES, VOC_SIZES)
    run = Run(_layer(_layer_text(_save_text(tmp_path, "VOC", num_test_image=4)), 2), device="cuda")
    for _ in range(3):
        run.forward(2)
    cycles = _cycles(run.tops, 4, VOC_SIZES)
    assert len(cycles) == 1 and _written(tmp_path) == _voc(cycles[0], VOC_NAMES)


COCO_CASES = {"numeric": (["0", "1", "2", "3"], [("139", 426, 640), ("285", 640, 586), ("632", 483, 640),
                                                  ("724", 500, 375), ("776", 640, 428)]),
              "named": (["bg", "cat", "dog/wolf", "true"], VOC_SIZES)}


@pytest.mark.parametrize("case", sorted(COCO_CASES))
def test_coco_json_after_each_cycle_that_ends_inside_a_batch(tmp_path, case):
    label_names, sizes = COCO_CASES[case]
    _files(tmp_path, label_names, sizes)
    run = Run(_layer(_layer_text(_save_text(tmp_path, "COCO", num_test_image=4)), 3), seed=1)
    assert _written(tmp_path) == {}
    run.forward(3)
    assert _written(tmp_path) == {}
    for k in (1, 2):
        run.forward(3)                                        # images 4 and 8 end the cycles
        cycles = _cycles(run.tops, 4, sizes)
        assert len(cycles) == k
        text = _written(tmp_path)["comp4_det_test_.json"]
        assert text == _coco(cycles[-1], label_names)
    if case == "numeric":  # plain numbers are unquoted: the file is JSON
        got = json.loads(text)
        assert [d["image_id"] for d in got] == [int(d[0]) for d in cycles[-1]]
        assert [d["category_id"] for d in got] == [d[1] for d in cycles[-1]]
        assert [F32(d["score"]) for d in got] == [d[2] for d in cycles[-1]]
        assert [[F32(v) for v in d["bbox"]] for d in got] == [_xywh(d[3]) for d in cycles[-1]]
    else:  # leading zeros unquoted, names quoted, '/' escaped, "true" a literal: the fork's text
        assert '"image_id": 000001,' in text and '"category_id": "dog\\/wolf",' in text
        assert '"category_id": true,' in text


def test_ilsvrc_list_per_cycle(tmp_path):
    _files(tmp_path, VOC_NAMES, VOC_SIZES)
    # CORNER offsets: boxes may come out inverted, negative widths truncate toward zero
    run = Run(_layer(_layer_text(_save_text(tmp_path, "ILSVRC", num_test_image=3), keep_top_k=-1, code="CORNER"), 2),
              seed=2)
    run.forward(2)
    assert _written(tmp_path) == {}                           # ILSVRC files are not emptied ahead
    for k in (1, 2):
        run.forward(2)
        cycles = _cycles(run.tops, 3, VOC_SIZES)
        assert len(cycles) == k
        assert _written(tmp_path) == {"comp4_det_test_.txt": _ilsvrc(cycles[-1])}
    assert any(int(_xywh(px)[2]) < 0 for *_, px in cycles[-1])


RESIZES = {"none": None, "warp": ("WARP", 300, 300, None), "small": ("FIT_SMALL_SIZE", 300, 300, None),
           "small_scaled": ("FIT_SMALL_SIZE", 300, 300, (320, 480)),
           "letterbox_tall": ("FIT_LARGE_SIZE_AND_PAD", 300, 300, None),
           "letterbox_wide": ("FIT_LARGE_SIZE_AND_PAD", 200, 500, None)}


@pytest.mark.parametrize("key", sorted(RESIZES))
def test_output_bbox_resize_modes(tmp_path, key):
    rz = RESIZES[key]
    sizes = [("a", 500, 353), ("b", 375, 500), ("c", 300, 300), ("d", 200, 640)]
    _files(tmp_path, VOC_NAMES, sizes)
    resize = "" if rz is None else f"resize_mode: {rz[0]} height: {rz[1]} width: {rz[2]}" + (
        f" height_scale: {rz[3][0]} width_scale: {rz[3][1]}" if rz[3] else "")
    run = Run(_layer(_layer_text(_save_text(tmp_path, "VOC", resize=resize), keep_top_k=20), 4), seed=3)
    run.forward(4)
    rows, _ = run.tops[0]
    cycle = [(sizes[int(r[0])][0], int(r[1]), F32(r[2]), _pixels(r[3:7], *sizes[int(r[0])][1:], rz))
             for r in rows if r[1] != -1]
    assert len(cycle) > 20
    assert _written(tmp_path) == _voc(cycle, VOC_NAMES)


# --- setups -------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing,message", [({"label_map": None}, "Provide label_map_file"),
                                             ({"label_map": ""}, "Provide label_map_file"),
                                             ({"name_size": None}, "Provide name_size_file"),
                                             ({"name_size": ""}, "Provide name_size_file")])
def test_without_label_map_or_name_size_a_warning_and_no_files(tmp_path, caplog, missing, message):
    _files(tmp_path, VOC_NAMES, VOC_SIZES)
    with caplog.at_level(logging.WARNING, logger="neocaffe.layers"):
        layer = _layer(_layer_text(_save_text(tmp_path, "VOC", num_test_image=2, **missing)), 2)
    assert message in caplog.text and "'det'" in caplog.text
    assert layer.saver is None
    run = Run(layer)
    for _ in range(3):
        run.forward(2)
    assert (tmp_path / "out").is_dir() and _written(tmp_path) == {}   # the directory is made all the same


def test_num_test_image_above_the_names_is_an_error_naming_the_file(tmp_path):
    _files(tmp_path, VOC_NAMES, VOC_SIZES[:2])
    with pytest.raises(LayerSetupError, match=r"num_test_image \(3\) exceeds the 2 images .*ns\.txt"):
        _layer(_layer_text(_save_text(tmp_path, "VOC", num_test_image=3)), 2)
    with pytest.raises(LayerSetupError, match=r"Failed to open name size file: .*absent\.txt"):
        _layer(_layer_text(_save_text(tmp_path, "VOC", name_size="absent.txt")), 2)


def _without_class_3(layer, n, seed):
    r = np.random.default_rng(seed)
    loc, conf = _batch(r, n)
    conf = conf.reshape(n, P, C)
    conf[..., 3] = 0                                  # no detection of label 3
    out = layer(*(torch.tensor(a, dtype=torch.float32) for a in (loc, conf.reshape(n, -1), _prior(r))))
    return out.numpy().reshape(-1, 7)


def test_a_label_the_label_map_lacks_is_an_error(tmp_path):
    _files(tmp_path, VOC_NAMES[:3], VOC_SIZES)   # no label 3
    run = Run(_layer(_layer_text(_save_text(tmp_path, "VOC")), 2))
    with pytest.raises(LayerSetupError, match="Cannot find label: 3 in the label map"):
        run.forward(2)
    # the fork checks every class of an image whose list keep_top_k did not cut, detected or not ...
    with pytest.raises(LayerSetupError, match="Cannot find label: 3 in the label map"):
        _without_class_3(_layer(_layer_text(_save_text(tmp_path, "VOC"), keep_top_k=-1), 2), 2, 5)
    # ... and only the labels kept where keep_top_k cut it
    rows = _without_class_3(_layer(_layer_text(_save_text(tmp_path, "VOC"), keep_top_k=3), 2), 2, 5)
    assert len(rows) == 6 and 3 not in rows[:, 1]


# --- through a Net ------------------------------------------------------------------------------

def _net_text(folder):
    return (f'layer {{ name: "in" type: "Input" top: "loc" top: "conf" top: "prior" input_param {{ '
            f'shape {{ dim: 1 dim: {P * 4} }} shape {{ dim: 1 dim: {P * C} }} '
            f'shape {{ dim: 1 dim: 2 dim: {P * 4} }} }} }}'
            f'layer {{ {_layer_text(_save_text(folder, "ILSVRC", num_test_image=3))} }}')


@pytest.mark.parametrize("lean", [True, False])
def test_a_net_saves_once_per_forward_on_the_lean_and_eager_paths(tmp_path, lean):
    _files(tmp_path, VOC_NAMES, VOC_SIZES)
    net = Net(text_format.Parse(_net_text(tmp_path), caffe_pb2.NetParameter()), caffe_pb2.TEST,
              keep_blob_diffs=False)
    r = np.random.default_rng(4)
    prior, tops = _prior(r), []
    for k in range(4):
        loc, conf = _batch(r, 1)
        for name, value in (("loc", loc), ("conf", conf), ("prior", prior)):
            net.set_blob(name, torch.tensor(value, dtype=torch.float32))
        with torch.set_grad_enabled(not lean):
            net.forward()
        tops.append((net.blob_data["out"].detach().numpy().reshape(-1, 7).copy(), 1))
        cycles = _cycles(tops, 3, VOC_SIZES)
        assert _written(tmp_path) == ({"comp4_det_test_.txt": _ilsvrc(cycles[-1])} if cycles else {}), k
    assert len(cycles) == 1


def test_mobilenet_ssd_deploy_net_writes_its_voc_lists(tmp_path):
    from benchmarks import zoo
    from neocaffe.io.prototxt import read_prototxt, to_text

    deploy = shared_path("realdata", "zoo_public_2026", "mobilenet_ssd", "deploy.prototxt")
    names = ["background"] + [f"class{k:02d}" for k in range(1, 21)]
    sizes = [("img_a", 480, 640), ("img_b", 640, 427)]
    _files(tmp_path, names, sizes)
    net_param = read_prototxt(str(deploy), caffe_pb2.NetParameter)
    for layer in net_param.layer:
        if layer.type == "DetectionOutput":
            layer.detection_output_param.confidence_threshold = 0.066
            text_format.Parse(_save_text(tmp_path, "VOC"), layer.detection_output_param.save_output_param)
    (tmp_path / "deploy.prototxt").write_text(to_text(net_param))
    net = zoo.build(zoo.ZooModel("mobilenet_ssd", tmp_path / "deploy.prototxt", None))
    zoo.random_weights(net)
    tops = []
    for seed in (0, 1):
        out = zoo.neocaffe_forward(net, zoo.model_inputs(net, seed))["detection_out"]
        tops.append((out.reshape(-1, 7).copy(), 1))
    cycle = _cycles(tops, 2, sizes)[0]
    assert len(cycle) > 5
    assert _written(tmp_path) == _voc(cycle, names)
