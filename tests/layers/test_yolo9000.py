"""choasup/caffe-yolo9000's ``RegionLoss`` (YOLO9000's ``softmax_tree``, classification-only truths, logged statistics)
and ``EvalDetection`` (per-class boxes and NMS, ``save_output_param``) against the loop port of the fork's code in
``tests/layers/yolo9000_reference.py`` (@ e8a476c); the tree file's reader and its errors."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers._yolo9000_tree import read_tree as layer_read_tree
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers.intel_region_loss_reference import read_class_map
from tests.layers.yolo9000_reference import eval_reference, read_tree, region_reference

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DATA = Path(__file__).parent / "data" / "yolo9000"
VOC_BIASES = [1.3221, 1.73145, 3.19275, 4.00944, 5.05587, 8.09892, 9.47112, 4.84053, 11.2364, 10.0071]
#: region_loss_param of gnet_region_train_googlenet.prototxt (its 13 x 13 grid shrunk in the cases)
HIER = dict(side=13, classes=23, coords=4, num=5, biases=VOC_BIASES, object_scale=5.0, noobject_scale=1.0,
            class_scale=1.0, coord_scale=1.0, thresh=0.5, bias_match=1)
#: a three-level tree: two roots, their children, grandchildren under node 2 and node 4
DEEP_TREE = "thing -1\nstuff -1\na 0\nb 0\nc 1\nd 1\ne 1\nf 2\ng 2\nh 4\ni 4\nj 4\n"


def _text(o, tree="", cmap=""):
    extra = (f'softmax_tree: "{tree}" ' if tree else "") + (f'class_map: "{cmap}" ' if cmap else "")
    return ('name: "rl" type: "RegionLoss" bottom: "x" bottom: "label" top: "loss" region_loss_param { '
            f'side: {o["side"]} num_class: {o["classes"]} coords: 4 num: {o["num"]} softmax: 1 jitter: 0.2 rescore: 1 '
            f'bias_match: {o["bias_match"]} object_scale: {o["object_scale"]} noobject_scale: {o["noobject_scale"]} '
            f'class_scale: {o["class_scale"]} coord_scale: {o["coord_scale"]} absolute: 1 thresh: {o["thresh"]} '
            f'random: 0 {extra}' + "".join(f"biases: {b} " for b in o["biases"]) + "}")


def _labels(rng, n_images, per_image, max_label, only=()):
    """SSD's rows; ``only``: images given a classification-only row (centre above 100000) after one normal box."""
    rows = []
    for b in range(n_images):
        for t in range(per_image):
            c = rng.uniform(0.05, 0.95, 2)
            wh = rng.uniform(0.05, 0.8, 2)
            lo, hi = np.clip(c - wh / 2, 0, 0.999), np.clip(c + wh / 2, 0, 0.999)
            rows.append([b, rng.integers(0, max_label + 1), t, lo[0], lo[1], hi[0], hi[1], 0])
            if t == 0 and b in only:
                rows.append([b, rng.integers(0, max_label + 1), 9, 200000, 200000, 200001, 200001, 0])
    rows.append([-1] * 8)
    return np.array(rows, np.float32).reshape(1, 1, -1, 8)


def _run(text, x, label, device="cpu"):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class("RegionLoss")(param, [x.shape, label.shape], TRAIN)
    xt = torch.tensor(x, requires_grad=True, device=device)
    loss = layer(xt, torch.tensor(label, device=device))
    loss.backward(torch.tensor(1.0, dtype=xt.dtype, device=device))   # the port's diff: top_diff 1
    return float(loss.detach()), xt.grad.cpu().numpy(), layer


# -- the tree file ---------------------------------------------------------------------------------------------
def test_voc_tree_reads_as_the_fork_reads_it():
    want = read_tree(str(DATA / "voc.tree"))
    got = layer_read_tree(str(DATA / "voc.tree"), ValueError)
    assert got.n == want["n"] == 23 and list(got.parent) == want["parent"] and list(got.group) == want["group"]
    assert list(got.group_offset) == want["group_offset"] == [0, 3, 10, 17]
    assert list(got.group_size) == want["group_size"] == [3, 7, 7, 6]
    assert got.name[:4] == ("animal", "vehicle", "furniture", "bird")


@pytest.mark.parametrize("content,match", [
    (None, "cannot read the tree file"),
    ("", "has no node"),
    ("animal -1\ncat\n", r"line 2: 'cat' is not '<name> <parent>'"),
    ("animal -1\ncat x\n", "line 2"),
    ("animal -1\ncat 1\n", r"line 2: parent 1 of 'cat'; expected -1 or the index of an earlier line, 0..0"),
    ("animal -2\n", "parent -2"),
])
def test_a_bad_tree_file_names_the_layer_and_the_file(tmp_path, content, match):
    path = tmp_path / "t.tree"
    if content is not None:
        path.write_text(content)
    o = dict(HIER, side=2)
    shapes = [(1, 140, 2, 2), (1, 1, 2, 8)]
    param = text_format.Parse(_text(o, str(path)), caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match=rf"'rl' \(RegionLoss\).*softmax_tree.*{match}"):
        get_layer_class("RegionLoss")(param, shapes, TRAIN)


# -- RegionLoss with the tree ----------------------------------------------------------------------------------
CASES = [
    # (overrides, tree, class map, label range, classification-only images)
    (dict(side=4), "voc", "voc", 20, ()),            # the fork's VOC WordTree and map (label 20 reads map line 20: 0)
    (dict(side=3, thresh=0.3), "voc", "voc", 20, (1,)),
    (dict(side=3, bias_match=0, classes=12), "deep", None, 11, (0, 2)),
    (dict(side=2, num=3, classes=14, biases=VOC_BIASES[:6], object_scale=2.0, class_scale=1.5), "deep", None, 11, ()),
    (dict(side=3), None, None, 23, ()),               # no tree: Intel's loss, the statistics
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_hierarchical_loss_matches_the_forks_loops(tmp_path, case, caplog):
    over, tree, cmap, top_label, only = CASES[case]
    o = {**HIER, **over}
    rng = np.random.default_rng(90 + case)
    tree_path = {"voc": str(DATA / "voc.tree"), "deep": str(tmp_path / "deep.tree"), None: ""}[tree]
    (tmp_path / "deep.tree").write_text(DEEP_TREE)
    map_path = str(DATA / "voc.map") if cmap else ""
    x = (rng.standard_normal((3, o["num"] * (5 + o["classes"]), o["side"], o["side"])) * 2).astype(np.float32)
    label = _labels(rng, 3, 2, top_label, only)
    ref = dict(o, tree=read_tree(tree_path) if tree else None, class_map=read_class_map(map_path) if cmap else None)
    want_loss, want_diff, want_stats = region_reference(x, label, ref)
    with caplog.at_level(logging.INFO, logger="neocaffe.layers.region_loss"):
        got_loss, got_diff, layer = _run(_text(o, tree_path, map_path), x, label)
    assert got_loss == want_loss
    np.testing.assert_array_equal(got_diff, want_diff)
    assert {k: v for k, v in layer.stats.items() if k != "loss"} == want_stats
    assert "batch_mini_iter: 1 loss:" in caplog.text and "avg_noobj:" in caplog.text and "class_count:" in caplog.text
    if only:   # an image with a classification-only row counts once, its other truths not at all
        normal = sum(1 for r in label[0, 0] if r[0] >= 0 and int(r[0]) not in only)
        assert want_stats["class_count"] == normal + len(only)


def test_float64_input_follows_the_float_port_closely(tmp_path):
    o = dict(HIER, side=3)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 140, 3, 3))
    label = _labels(rng, 2, 2, 20, (1,))
    ref = dict(o, tree=read_tree(str(DATA / "voc.tree")), class_map=read_class_map(str(DATA / "voc.map")))
    want_loss, want_diff, _ = region_reference(x.astype(np.float32), label, ref)
    loss, diff, _ = _run(_text(o, str(DATA / "voc.tree"), str(DATA / "voc.map")), x, label)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(diff, want_diff, rtol=1e-4, atol=1e-6)


def test_tree_without_class_map_uses_the_label_as_the_node(tmp_path):
    o = dict(HIER, side=2)
    x = np.zeros((1, 140, 2, 2), np.float32)
    label = np.array([[[[0, 4, 0, 0.1, 0.1, 0.4, 0.4, 0]]]], np.float32)   # node 4: "cat", child of node 0
    _, diff, _ = _run(_text(o, str(DATA / "voc.tree")), x, label)
    cls = diff.reshape(1, 5, 28, 2, 2)[0, :, 5:, 0, 0]
    k = int(np.flatnonzero(np.abs(cls).sum(1))[0])
    touched = np.flatnonzero(cls[k])
    assert set(touched) == set(range(0, 3)) | set(range(3, 10))   # the roots' group and cat's group
    assert cls[k, 4] < 0 and cls[k, 0] < 0 and cls[k, 1] > 0      # cat and animal pulled up, vehicle down


def test_refuses_a_tree_larger_than_num_class_and_a_class_outside_it(tmp_path):
    o = dict(HIER, side=2, classes=20)
    param = text_format.Parse(_text(o, str(DATA / "voc.tree")), caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match="has 23 nodes, more than num_class = 20"):
        get_layer_class("RegionLoss")(param, [(1, 125, 2, 2), (1, 1, 1, 8)], TRAIN)
    o = dict(HIER, side=2)
    x = np.zeros((1, 140, 2, 2), np.float32)
    label = np.array([[[[0, 30, 0, 0.1, 0.1, 0.4, 0.4, 0]]]], np.float32)
    with pytest.raises(LayerSetupError, match=r"class \(after class_map\) 30 is not a node.*0\.\.22"):
        _run(_text(o, str(DATA / "voc.tree")), x, label)


@pytest.mark.gpu
def test_region_loss_with_tree_on_cuda_equals_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    o = dict(HIER, side=3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 140, 3, 3)).astype(np.float32)
    label = _labels(rng, 2, 2, 20, (1,))
    text = _text(o, str(DATA / "voc.tree"), str(DATA / "voc.map"))
    cpu, cuda = _run(text, x, label), _run(text, x, label, device="cuda")
    assert cpu[0] == cuda[0]
    np.testing.assert_array_equal(cpu[1], cuda[1])


# -- EvalDetection, choasup's form ----------------------------------------------------------------------------
def _eval_text(o, save=""):
    return ('name: "eval_det" type: "EvalDetection" bottom: "conv_reg" bottom: "label" top: "eval_det" '
            f'eval_detection_param {{ side: {o["side"]} num_class: {o["num_class"]} num_object: {o["num_object"]} '
            f'threshold: {o["threshold"]} nms: {o["nms"]} score_type: {["OBJ", "PROB", "MULTIPLY"][o["score_type"]]} '
            + "".join(f"biases: {b} " for b in o["biases"]) + save + "}")


def _save_files(tmp_path, n):
    names = [f"{1000 + 7 * i:012d} {640 - 10 * i} {480 + 5 * i}" for i in range(n)]
    (tmp_path / "name_size.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "labelmap.prototxt").write_text("".join(f'item {{ name: "{k * 3}" label: {k} display_name: "c{k}" }}\n'
                                                        for k in range(0, 4)))
    sizes = [(s.split()[0], int(s.split()[1]), int(s.split()[2])) for s in names]
    return sizes, {k: str(k * 3) for k in range(4)}


def _eval_save(tmp_path, every):
    return (f'save_output_param {{ output_directory: "{tmp_path}/out" output_name_prefix: "res" label_map_file: '
            f'"{tmp_path}/labelmap.prototxt" name_size_file: "{tmp_path}/name_size.txt" num_test_image: {every} }} ')


EVAL = dict(side=3, num_class=3, num_object=5, threshold=0.3, nms=0.45, score_type=2, biases=VOC_BIASES)
GT = np.array([[0, 1, 0, 0.1, 0.1, 0.5, 0.6, 0], [0, 2, 1, 0.4, 0.3, 0.9, 0.8, 0], [1, 3, 0, 0.2, 0.2, 0.7, 0.9, 0],
               [1, 3, 0, 0.5, 0.1, 0.9, 0.5, 0], [-1] * 8], np.float32).reshape(1, 1, 5, 8)


@pytest.mark.parametrize("over", [dict(), dict(score_type=0), dict(score_type=1, nms=0.3), dict(nms=-1),
                                  dict(side=4, num_class=5, num_object=6, threshold=0.5)])
def test_eval_detection_matches_the_forks_loops(tmp_path, over):
    o = {**EVAL, **over}
    (tmp_path / "out").mkdir()
    sizes, names = _save_files(tmp_path, 4)
    rng = np.random.default_rng(len(str(over)))
    # no prediction (nms < 0) with a file due: the fork aborts (std::out_of_range), so that case saves nothing
    save = _eval_save(tmp_path, 2) if o["nms"] >= 0 else ""
    param = text_format.Parse(_eval_text(o, save), caffe_pb2.LayerParameter())
    tops, dets = [], []
    head_shape = (2, o["num_object"] * (o["num_class"] + 5), o["side"], o["side"])
    layer = get_layer_class("EvalDetection")(param, [head_shape, GT.shape], TEST)
    assert layer.yolo9000 == bool(save)
    layer.yolo9000 = True   # what a net with lineage "yolo9000" sets (test_eval_detection_form_by_lineage...)
    for step in range(2):
        head = _head(rng, head_shape, o["num_class"])
        got = layer(torch.tensor(head), torch.tensor(GT)).numpy()
        want, d = eval_reference(head, GT, dict(o, sizes=sizes[2 * step: 2 * step + 2], names=names))
        np.testing.assert_array_equal(got, want)
        tops.append(got)
        dets += d
        if o["nms"] < 0:
            continue
        saved = json.loads((tmp_path / "out" / "res.json").read_text())
        # float text of 9 digits: each value reads back to the float32 the fork kept
        assert [(e["image_id"], e["category_id"]) for e in saved] == [d[:2] for d in dets]
        got_v = np.array([e["bbox"] + [e["score"]] for e in saved], np.float32)
        np.testing.assert_array_equal(got_v, np.array([d[2] + [d[3]] for d in dets], np.float32))
    assert sum(int((t[:, o["num_class"] + 1::4] != 0).sum()) for t in tops) > 0 or o["nms"] < 0


def _head(rng, shape, num_class, live=0.1):
    """A head whose objectness is below 0.005 (sigmoid(-8)) but in a ``live`` share of the boxes, so that the
    per-class candidates fit the image's rows."""
    head = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    obj = head[:, 4::num_class + 5]
    obj[...] = np.where(rng.uniform(size=obj.shape) < live, obj + 1, -8)
    return head


def test_eval_detection_keeps_the_rows_it_has(caplog):
    rng = np.random.default_rng(3)
    head = (rng.standard_normal((1, 40, 3, 3)) * 0.1).astype(np.float32)   # every box live, every class > 0.005
    param = text_format.Parse(_eval_text(dict(EVAL, nms=1.5), ""), caffe_pb2.LayerParameter())
    layer = get_layer_class("EvalDetection")(param, [head.shape, GT.shape], TEST)
    layer.yolo9000 = True
    with caplog.at_level(logging.WARNING, logger="neocaffe.layers.eval_detection"):
        top = layer(torch.tensor(head), torch.tensor(GT[:, :, :2])).numpy()
    assert "image 0 has 135 predictions after the per-class NMS, more than its 45 rows" in caplog.text
    rows = top[0, 3:].reshape(45, 4)
    assert (rows[:, 1] > 0).all() and list(rows[:, 0]) == sorted(rows[:, 0])   # full, the first classes' boxes


def test_eval_detection_form_by_lineage_and_its_errors(tmp_path):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net

    o = dict(EVAL)
    rng = np.random.default_rng(4)
    head = _head(rng, (2, 40, 3, 3), 3)
    layers = ('layer { name: "in" type: "Input" top: "conv_reg" top: "label" input_param { shape { dim: 2 dim: 40 '
              'dim: 3 dim: 3 } shape { dim: 1 dim: 1 dim: 5 dim: 8 } } } layer { ' + _eval_text(o) + " }")
    tops = {}
    for lineage in ("yolo9000", "upstream"):
        net = Net(read_net(f'name: "t" lineage: "{lineage}" {layers}'), TEST)
        assert net.layer("eval_det").yolo9000 == (lineage == "yolo9000")
        with torch.no_grad():
            net.forward({"conv_reg": torch.tensor(head), "label": torch.tensor(GT)})
        tops[lineage] = net.blob("eval_det").numpy()
    np.testing.assert_array_equal(tops["yolo9000"], eval_reference(head, GT, o)[0])
    assert not np.array_equal(tops["yolo9000"], tops["upstream"])
    # errors where the fork crashes or reads out of bounds
    _save_files(tmp_path, 1)
    shapes = [(2, 40, 3, 3), GT.shape]
    for save, match in [(_eval_save(tmp_path, 0), "num_test_image must be > 0"),
                        ('save_output_param { num_test_image: 1 } ', "name_size_file must be set")]:
        with pytest.raises(LayerSetupError, match=match):
            get_layer_class("EvalDetection")(text_format.Parse(_eval_text(o, save), caffe_pb2.LayerParameter()),
                                             shapes, TEST)
    layer = get_layer_class("EvalDetection")(text_format.Parse(_eval_text(o, _eval_save(tmp_path, 1)),
                                                               caffe_pb2.LayerParameter()), shapes, TEST)
    with pytest.raises(LayerSetupError, match="output_directory .* does not exist"):
        layer(torch.tensor(head), torch.tensor(GT))
    (tmp_path / "out").mkdir()
    layer = get_layer_class("EvalDetection")(text_format.Parse(_eval_text(o, _eval_save(tmp_path, 1)),
                                                               caffe_pb2.LayerParameter()), shapes, TEST)
    with pytest.raises(LayerSetupError, match="image 2 has no line in name_size_file"):
        layer(torch.tensor(head), torch.tensor(GT))
    item_n = GT.copy()
    item_n[0, 0, 0, 0] = 2
    with pytest.raises(LayerSetupError, match=r"item ids must be -1 or in \[0, 1\]"):
        tops = Net(read_net(f'name: "t" lineage: "yolo9000" {layers}'), TEST).forward(
            {"conv_reg": torch.tensor(head), "label": torch.tensor(item_n)})


@pytest.mark.gpu
def test_eval_detection_on_cuda_equals_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rng = np.random.default_rng(8)
    head = _head(rng, (2, 40, 3, 3), 3)
    param = text_format.Parse(_eval_text(EVAL), caffe_pb2.LayerParameter())
    out = []
    for device in ("cpu", "cuda"):
        layer = get_layer_class("EvalDetection")(param, [head.shape, GT.shape], TEST)
        layer.yolo9000 = True
        out.append(layer(torch.tensor(head, device=device), torch.tensor(GT, device=device)).cpu().numpy())
    np.testing.assert_array_equal(out[0], out[1])
