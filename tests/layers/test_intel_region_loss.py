"""Intel Caffe's YOLOv2 ``RegionLoss`` (neocaffe.layers.region_loss with SSD's label) against the loop port of
the fork's ``region_loss_layer.cpp`` in ``tests/layers/intel_region_loss_reference.py`` (intel/caffe @ 44d53638),
with the field values of Intel's own nets; where it parts from MobileNet-YOLO's layer of the same name; and Intel's
YOLOv2 train and test prototxts (tests/layers/data/intel_yolo) built, shrunk, and run forward and backward."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers.intel_region_loss_reference import intel_region_reference, read_class_map

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DATA = Path(__file__).parent / "data" / "intel_yolo"
MIRROR = Path("/work/.mirror/intel+caffe/repo")
#: region_loss_param of models/intel_optimized_models/yolo/yolov2_train.prototxt (yolov2_test: thresh 0.5)
INTEL = dict(side=17, classes=20, coords=4, num=5, biases=[1.32, 1.73, 3.19, 4.01, 5.06, 8.10, 9.47, 4.84, 11.24, 10.01],
             object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6, bias_match=1,
             class_map=None)


def _text(o, extra=""):
    return ('name: "rl" type: "RegionLoss" bottom: "x" bottom: "label" top: "loss" region_loss_param { '
            f'side: {o["side"]} num_class: {o["classes"]} coords: 4 num: {o["num"]} softmax: 1 jitter: 0.2 rescore: 1 '
            f'bias_match: {o["bias_match"]} object_scale: {o["object_scale"]} noobject_scale: {o["noobject_scale"]} '
            f'class_scale: {o["class_scale"]} coord_scale: {o["coord_scale"]} absolute: 1 thresh: {o["thresh"]} '
            f'random: 0 {extra} ' + "".join(f"biases: {b} " for b in o["biases"]) + "}")


def _ssd_labels(rng, classes, counts, extra_rows=()):
    """SSD's rows [item, label 1..classes, instance, xmin, ymin, xmax, ymax, difficult], boxes inside the image;
    the second box of an image shares the first's cell (a later truth overwrites); ``extra_rows`` appended."""
    rows = []
    for b, k in enumerate(counts):
        centre = rng.uniform(0.05, 0.95, 2)
        for t in range(k):
            c = centre + rng.uniform(-0.01, 0.01, 2) if t == 1 else rng.uniform(0.05, 0.95, 2)
            wh = rng.uniform(0.02, 0.9, 2)
            lo, hi = np.clip(c - wh / 2, 0, 1), np.clip(c + wh / 2, 0, 1)
            rows.append([b, rng.integers(1, classes + 1), t, lo[0], lo[1], hi[0], hi[1], t % 2])
    rows += [list(r) for r in extra_rows]
    return np.array(rows, np.float32).reshape(1, 1, -1, 8)


def _run(text, x, label, top_diff=1.7, device="cpu"):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = get_layer_class("RegionLoss")(param, [x.shape, label.shape], TRAIN)
    assert layer.intel, "SSD's label makes the layer Intel's"
    assert layer.reshape([x.shape, label.shape]) == [()]
    xt = torch.tensor(x, requires_grad=True, device=device)
    loss = layer(xt, torch.tensor(label, device=device))
    loss.backward(torch.tensor(top_diff, dtype=xt.dtype, device=device))
    return float(loss.detach()), xt.grad.cpu().numpy() / top_diff


CASES = [
    dict(),                                         # yolov2_train.prototxt's values, its 17 x 17 grid
    dict(thresh=0.5),                               # yolov2_test.prototxt's
    dict(side=5, bias_match=0),
    dict(side=4, thresh=0.3, object_scale=2.0, noobject_scale=0.5, class_scale=1.5, coord_scale=2.5),
    dict(side=3, num=3, classes=4, biases=[0.5, 0.7, 1.2, 2.0, 2.8, 1.9]),  # 2 * num biases are enough for Intel
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_the_forks_loops(case):
    o = {**INTEL, **CASES[case]}
    rng = np.random.default_rng(40 + case)
    x = rng.standard_normal((2, o["num"] * (5 + o["classes"]), o["side"], o["side"])).astype(np.float32)
    label = _ssd_labels(rng, o["classes"], [5, 3])
    want_loss, want_diff = intel_region_reference(x, label, o)
    got_loss, got_diff = _run(_text(o), x, label)
    # measured: both 0 (bit for bit) on x86-64 with NumPy 2.4; the bound leaves a float ulp to another libm
    assert abs(got_loss - want_loss) <= 1e-6 * abs(want_loss)
    assert np.abs(got_diff - want_diff).max() <= 1e-6
    assert np.count_nonzero(want_diff) > 0


def test_label_quirks_background_skipped_rows_empty_boxes_and_class_map(tmp_path):
    """A row of item -1 in the middle (skipped), label 0 (class -1: no one-hot), a zero-width truth (no anchor
    overlaps it: Intel's delta lands at flat index 0, image 0's first box, with tw = log 0 clipped), a truth of a
    second image, and a class_map file (line k: the blob position of class k; a line without an integer reads 0)."""
    o = dict(INTEL, side=4, classes=6, num=5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5 * 11, 4, 4)).astype(np.float32)
    extra = [[-1, -1, -1, -1, -1, -1, -1, -1], [0, 0, 0, 0.1, 0.2, 0.5, 0.6, 0], [1, 3, 0, 0.3, 0.3, 0.3, 0.7, 0],
             [1, 6, 1, 0.55, 0.1, 0.95, 0.45, 0]]
    label = _ssd_labels(rng, 6, [2, 1], extra_rows=extra)
    (tmp_path / "map.txt").write_text("5\n4\nnot a number\n2\n1\n0\n")
    cmap = read_class_map(str(tmp_path / "map.txt"))
    assert cmap == {0: 5, 1: 4, 2: 0, 3: 2, 4: 1, 5: 0}
    for class_map, extra_field in ((None, ""), (cmap, f'class_map: "{tmp_path / "map.txt"}"')):
        want_loss, want_diff = intel_region_reference(x, label, dict(o, class_map=class_map))
        got_loss, got_diff = _run(_text(o, extra_field), x, label)
        assert abs(got_loss - want_loss) <= 1e-6 * abs(want_loss)
        assert np.abs(got_diff - want_diff).max() <= 1e-6
    # image 1's zero-width truth wrote image 0's first box: tw = log(0) - x < -1 gives +coord_scale (/ N)
    assert want_diff.reshape(-1)[0] != 0 and want_diff[0, 2, 0, 0] == pytest.approx(1.0 / 2)


def test_float64_blobs_agree_with_the_float_port():
    o = dict(INTEL, side=5)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 125, 5, 5))
    label = _ssd_labels(rng, 20, [4, 2])
    want_loss, want_diff = intel_region_reference(x.astype(np.float32), label, o)
    got_loss, got_diff = _run(_text(o), x, label.astype(np.float64))
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(got_diff, want_diff, rtol=1e-4, atol=1e-6)


def test_where_intel_and_mobilenet_yolo_part():
    """The same truths in SSD's label (Intel) and in MobileNet-YOLO's (N x 1 x 300 x 5): the objectness diffs of
    boxes no truth is assigned to agree; the assigned box's coordinates, objectness and the top differ as the
    module docstring lists."""
    o = dict(INTEL, side=4, classes=3, num=2, biases=[1.0, 1.5, 2.5, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    x[1, 2, 2, 1] = 4.0                                       # tw far below log(w * S / anchor): Intel clips the gap
    ssd = np.array([[[[0, 2, 0, 0.3, 0.35, 0.45, 0.6, 0], [1, 1, 0, 0.25, 0.45, 0.5, 0.75, 0]]]], np.float32)
    yolo = np.zeros((2, 1, 300, 5), np.float32)
    for r in ssd.reshape(-1, 8):
        yolo[int(r[0]), 0, 0] = [r[1] - 1, (r[3] + r[5]) / 2, (r[4] + r[6]) / 2, r[5] - r[3], r[6] - r[4]]
    intel_loss, intel_diff = _run(_text(o), x, ssd, top_diff=1.0)
    param = text_format.Parse(_text(o), caffe_pb2.LayerParameter())
    mobile = get_layer_class("RegionLoss")(param, [x.shape, yolo.shape], TRAIN)
    assert not mobile.intel
    xt = torch.tensor(x, requires_grad=True)
    mobile_loss_t = mobile(xt, torch.tensor(yolo))
    mobile_loss_t.backward()
    mobile_loss, mobile_diff = float(mobile_loss_t.detach()), xt.grad.numpy()
    assigned = (intel_diff != 0) & (np.arange(16)[None, :, None, None] % 8 != 4)  # coordinate and class channels
    obj = np.zeros_like(assigned)
    obj[:, 4::8] = True
    free = obj & ~np.repeat(assigned[:, 0::8], 8, axis=1)     # objectness of boxes no truth took
    np.testing.assert_allclose(intel_diff[free], mobile_diff[free], rtol=1e-6, atol=1e-7)
    assert not np.allclose(intel_diff[assigned], mobile_diff[assigned])
    # Intel's top is sum(diff^2), MobileNet-YOLO's sum(diff^2) / N; both backwards are diff * top_diff / N
    assert intel_loss == pytest.approx(float(((intel_diff.astype(np.float64) * 2) ** 2).sum()), rel=1e-5)
    assert mobile_loss == pytest.approx(float(((mobile_diff.astype(np.float64) * 2) ** 2).sum()) / 2, rel=1e-5)
    # image 1's truth: Intel's clipped w gap gives -coord_scale / N exactly
    assert intel_diff[1, 2, 2, 1] == pytest.approx(0.5) and mobile_diff[1, 2, 2, 1] != pytest.approx(0.5)


@pytest.mark.parametrize("change,shapes,match", [
    ("", [(1, 125, 4, 4), (1, 1, 3, 8)], r"N x 125 x 17 x 17 .*received \(1, 125, 4, 4\)"),
    ('softmax_tree: "no/tree.txt"', [(1, 125, 17, 17), (1, 1, 3, 8)], "cannot read the tree file 'no/tree.txt'"),
    ("coords: 5", [(1, 125, 17, 17), (1, 1, 3, 8)], "coords = 5 is not supported"),
    ("short", [(1, 125, 17, 17), (1, 1, 3, 8)], r"at least 2 \* num = 10"),
])
def test_refuses_bad_configurations(change, shapes, match):
    o = dict(INTEL, biases=INTEL["biases"][:8]) if change == "short" else INTEL
    text = _text(o, "" if change == "short" else change)
    if change == "coords: 5":
        text = text.replace("coords: 4 ", "")
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match=rf"'rl' \(RegionLoss\).*{match}"):
        layer = get_layer_class("RegionLoss")(param, shapes, TRAIN)
        layer.reshape(shapes)


def test_refuses_a_label_that_changes_layout_or_names_another_image():
    param = text_format.Parse(_text(dict(INTEL, side=2)), caffe_pb2.LayerParameter())
    layer = get_layer_class("RegionLoss")(param, [(2, 125, 2, 2), (1, 1, 3, 8)], TRAIN)
    with pytest.raises(LayerSetupError, match=r"bottom 1 must stay SSD's detection label, 1 x 1 x K x 8"):
        layer.reshape([(2, 125, 2, 2), (2, 1, 300, 5)])
    label = np.array([[[[2, 3, 0, 0.1, 0.1, 0.4, 0.4, 0]]]], np.float32)
    with pytest.raises(LayerSetupError, match=r"label row 0 names image 2.0; expected -1 or an image of the batch, 0..1"):
        layer(torch.zeros(2, 125, 2, 2), torch.tensor(label))


@pytest.mark.gpu
def test_on_cuda_equals_the_cpu():
    o = dict(INTEL, side=5)
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 125, 5, 5)).astype(np.float32)
    label = _ssd_labels(rng, 20, [3, 2])
    cpu = _run(_text(o), x, label)
    cuda = _run(_text(o), x, label, device="cuda")
    assert cpu[0] == cuda[0]
    np.testing.assert_array_equal(cpu[1], cuda[1])


# -- Intel's YOLOv2 nets ---------------------------------------------------------------------------------------
def _shrunk(name: str, side: int = 2) -> str:
    """The net's text at 64 x 64 (grid ``side``), every hidden width / 16 (the 125-channel head kept)."""
    text = (DATA / name).read_text()
    text = re.sub(r"num_output: (\d+)", lambda m: f"num_output: {m[1] if m[1] == '125' else int(m[1]) // 16}", text)
    return text.replace("side: 17", f"side: {side}").replace("height: 544", "height: 64").replace("width: 544", "width: 64")


def _with_inputs(text: str, batch: int, boxes: int) -> caffe_pb2.NetParameter:
    """The net with its AnnotatedData replaced by Input layers of the same tops (images, SSD's label)."""
    from neocaffe.io.prototxt import read_net

    net = read_net(text)
    data = [lp for lp in net.layer if lp.type == "AnnotatedData"]
    assert len(data) == 1
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    inp = out.layer.add(name="data", type="Input", top=list(data[0].top))
    inp.input_param.shape.add(dim=[batch, 3, 64, 64])
    inp.input_param.shape.add(dim=[1, 1, boxes, 8])
    out.layer.extend(lp for lp in net.layer if lp.type != "AnnotatedData")
    return out


@pytest.mark.parametrize("name", ["yolov2_train.prototxt", "yolov2_test.prototxt"])
def test_intels_yolov2_nets_parse_as_released(name):
    from neocaffe.io.prototxt import read_net

    net = read_net(str(DATA / name))
    loss = [lp for lp in net.layer if lp.type == "RegionLoss"]
    assert len(loss) == 1 and loss[0].region_loss_param.side == 17 and len(loss[0].region_loss_param.biases) == 10
    assert [lp.type for lp in net.layer].count("Reorg") == 1


@pytest.mark.parametrize("name", ["yolov2_train.prototxt", "yolov2_test.prototxt"])
def test_the_copies_are_intels_files_byte_for_byte(name):
    import shutil
    import subprocess

    if not MIRROR.is_dir() or shutil.which("git") is None:
        pytest.skip(f"the intel/caffe mirror ({MIRROR}) or git is absent; the copies' origin is in {DATA / 'README.md'}")
    blob = subprocess.run(["git", "-C", str(MIRROR), "show", f"44d536385dc41804a673c527b4c2df2675770dff:"
                           f"models/intel_optimized_models/yolo/{name}"], capture_output=True, check=True).stdout
    assert blob == (DATA / name).read_bytes()


def test_intels_yolov2_train_net_runs_forward_and_backward():
    from neocaffe import rng
    from neocaffe.graph.net import Net

    rng.set_seed(1)
    net = Net(_with_inputs(_shrunk("yolov2_train.prototxt"), 2, 3), TRAIN)
    assert net.layer("det_loss").intel
    gen = np.random.default_rng(3)
    label = np.array([[[[0, 12, 0, 0.1, 0.2, 0.5, 0.7, 0], [0, 15, 1, 0.6, 0.5, 0.9, 0.95, 0],
                        [1, 7, 0, 0.2, 0.1, 0.95, 0.6, 1]]]], np.float32)
    loss = net.forward({"data": torch.tensor(gen.uniform(-100, 150, (2, 3, 64, 64)), dtype=torch.float32),
                        "label": torch.tensor(label)})
    assert torch.isfinite(loss) and float(loss) > 0
    assert tuple(net.blob("conv_reg").shape) == (2, 125, 2, 2)
    net.backward()
    d = net.blob_diff("conv_reg")
    assert torch.isfinite(d).all() and d.abs().sum() > 0
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_intels_yolov2_test_net_runs_with_eval_detection():
    from neocaffe import rng
    from neocaffe.graph.net import Net

    rng.set_seed(2)
    net = Net(_with_inputs(_shrunk("yolov2_test.prototxt"), 2, 2), TEST)
    label = np.array([[[[0, 3, 0, 0.1, 0.2, 0.5, 0.7, 0], [1, 9, 0, 0.3, 0.3, 0.8, 0.9, 0]]]], np.float32)
    with torch.no_grad():
        loss = net.forward({"data": torch.rand(2, 3, 64, 64) * 255 - 110, "label": torch.tensor(label)})
    assert torch.isfinite(loss)
    assert torch.isfinite(net.blob("det_loss"))
    assert tuple(net.blob("eval_det").shape) == (2, 20 + 2 * 2 * 5 * 4)


def test_intels_yolov2_train_net_reads_ssd_labels_from_a_tiny_lmdb(tmp_path):
    """The train net as released but for its source, label map, 64 x 64 resize, batch 2 and widths: AnnotatedData
    (Intel's batch samplers, CENTER emit constraint) gives SSD's label, RegionLoss takes it as Intel's; three SGD
    steps run with finite losses."""
    from neocaffe.solver.solver import Solver
    from tests.layers.test_yolo_loss import _yolo_dataset

    _yolo_dataset(tmp_path, n=8, size=64)
    text = _shrunk("yolov2_train.prototxt").replace("/lustre/dataset/lmdb/voc/VOC0712_trainval_lmdb", str(tmp_path / "db"))
    text = text.replace("data/VOC0712/labelmap_voc.prototxt", str(tmp_path / "labelmap.prototxt"))
    (tmp_path / "train.prototxt").write_text(text.replace("batch_size: 8", "batch_size: 2"))
    solver = text_format.Parse(f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.0001 lr_policy: "fixed" momentum: 0.9 '
                               'max_iter: 3 display: 0 snapshot_after_train: false random_seed: 4 solver_mode: CPU',
                               caffe_pb2.SolverParameter())
    s = Solver(solver)
    assert s.net.layer("det_loss").intel
    losses, boxes = [], 0
    for _ in range(3):
        s.step(1)
        label = s.net.blob("label")
        assert label.shape[0] == label.shape[1] == 1 and label.shape[3] == 8
        boxes += int((label[0, 0, :, 0] >= 0).sum())
        losses.append(float(s.net.blob("det_loss")))
    assert boxes > 0 and all(np.isfinite(losses)) and min(losses) > 0, (boxes, losses)
