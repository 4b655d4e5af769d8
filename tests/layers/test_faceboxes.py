"""FaceBoxes' densified PriorBox (sfzhang15/FaceBoxes @ b52cc92; neocaffe/layers/_faceboxes_priors.py) against
a loop port of the fork's prior_box_layer.cpp, and its released nets (tests/layers/data/faceboxes)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.graph.errors import NetError
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net, read_solver
from neocaffe.layers.base import LayerSetupError, NetSoFar
from neocaffe.proto import caffe_pb2
from tests.layers.priorbox_run import run_priors
from tests.layers import faceboxes_reference as ref

DATA = Path(__file__).parent / "data" / "faceboxes"
FACEBOXES = NetSoFar(caffe_pb2.NetParameter(lineage="faceboxes"))


def _priors(fields: str, feature: tuple[int, ...], image: tuple[int, ...], net: NetSoFar | None = FACEBOXES,
            device: str = "cpu") -> np.ndarray:
    return run_priors(fields, feature, image, net, device)


# fields, port kwargs, feature (h, w), image (h, w)
CASES = [
    ("min_size: 32 min_size: 64 min_size: 128 clip: false variance: 0.1 variance: 0.1 variance: 0.2 "
     "variance: 0.2 step: 32 offset: 0.5",
     dict(min_sizes=[32, 64, 128], max_sizes=[], ars=[], flip=True, clip=False, variance=[0.1, 0.1, 0.2, 0.2],
          step_h=32, step_w=32), (4, 3), (128, 96)),
    ("min_size: 256 clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 64 offset: 0.5",
     dict(min_sizes=[256], max_sizes=[], ars=[], flip=True, clip=False, variance=[0.1, 0.1, 0.2, 0.2],
          step_h=64, step_w=64), (2, 2), (128, 96)),
    # computed steps (image / feature), clipping, max_size priors after each group
    ("min_size: 32 min_size: 64 min_size: 128 max_size: 64 max_size: 128 max_size: 256 clip: true",
     dict(min_sizes=[32, 64, 128], max_sizes=[64, 128, 256], ars=[], flip=True, clip=True, variance=[0.1]),
     (3, 5), (100, 75)),
    # two min sizes (SSD's count) with flipped aspect ratios; img_size, step_h/step_w, offset
    ("min_size: 100.7 min_size: 200 aspect_ratio: 2 flip: true img_size: 300 step_h: 37.5 step_w: 30 offset: 0.25 "
     "variance: 0.2",
     dict(min_sizes=[100.7, 200], max_sizes=[], ars=[2.0], flip=True, clip=False, variance=[0.2], step_h=37.5,
          step_w=30, offset=0.25, img_h_param=300, img_w_param=300), (5, 6), (64, 64)),
    # 16 + 1 + 1 + 3 aspect-ratio priors = the 21 the fork declares for three min sizes
    ("min_size: 32 min_size: 100 min_size: 200 aspect_ratio: 3 flip: false img_h: 90 img_w: 120",
     dict(min_sizes=[32, 100, 200], max_sizes=[], ars=[3.0], flip=False, clip=False, variance=[0.1],
          img_h_param=90, img_w_param=120), (3, 4), (50, 50)),
]


@pytest.mark.parametrize("fields,kw,feature,image", CASES)
def test_priors_equal_the_fork_port(fields, kw, feature, image):
    want, written = ref.forward(*feature, *image, **kw)
    assert written == want.shape[2]          # the fork fills its top exactly
    got = _priors(fields, (1, 2, *feature), (1, 3, *image))
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want), np.abs(got - want).max()


def test_released_first_priorbox_cell_layout():
    """One cell of the released first PriorBox: 16 squares of 32 on an 8-pixel grid (rows outer), 4 of 64
    on a 16-pixel grid, one of 128; each spans centre +- (side - 1) / 2."""
    got = _priors(CASES[0][0], (1, 2, 1, 1), (1, 3, 32, 32))[0, 0].reshape(21, 4) * 32
    cx = np.array([16 + 8 * j for i in range(-2, 2) for j in range(-2, 2)] + [16 + 16 * j for i in range(-1, 1)
                  for j in range(-1, 1)] + [16])
    cy = np.array([16 + 8 * i for i in range(-2, 2) for j in range(-2, 2)] + [16 + 16 * i for i in range(-1, 1)
                  for j in range(-1, 1)] + [16])
    half = np.array([15.5] * 16 + [31.5] * 4 + [63.5])
    np.testing.assert_allclose(got, np.stack([cx - half, cy - half, cx + half, cy + half], 1), atol=1e-5)


def test_without_the_lineage_priorbox_is_ssds():
    got = _priors(CASES[0][0], (1, 2, 4, 3), (1, 3, 128, 96), net=None)
    assert got.shape == (1, 2, 4 * 3 * 3 * 4)
    upstream = NetSoFar(caffe_pb2.NetParameter(lineage="upstream"))
    assert np.array_equal(_priors(CASES[0][0], (1, 2, 4, 3), (1, 3, 128, 96), net=upstream), got)


@pytest.mark.parametrize("fields,declared,written", [
    ("min_size: 32", 1, 16),                                           # the fork overruns its top
    ("min_size: 100 min_size: 200 min_size: 300", 21, 3),              # the fork leaves 18 priors a cell unwritten
    ("min_size: 32 min_size: 64 min_size: 128 aspect_ratio: 2", 21, 27),  # flip: 2 and 1/2
])
def test_a_count_the_fork_does_not_fill_is_an_error(fields, declared, written):
    with pytest.raises(LayerSetupError, match=rf"declares {declared} priors per cell .* writes {written} "):
        _priors(fields, (1, 2, 2, 2), (1, 3, 64, 64))
    kw = dict(min_sizes=[float(v) for v in re.findall(r"min_size: (\d+)", fields)], max_sizes=[],
              ars=[float(v) for v in re.findall(r"aspect_ratio: (\d+)", fields)], flip=True, clip=False,
              variance=[0.1])
    try:
        _, idx = ref.forward(2, 2, 64, 64, **kw)
    except IndexError:  # written past the blob
        idx = written * 4 * 4
    assert idx == written * 4 * 4 != declared * 4 * 4


def test_denser_prior_boxes_is_refused_in_a_faceboxes_net():
    with pytest.raises(LayerSetupError, match="denser_prior_boxes"):
        _priors("min_size: 128 denser_prior_boxes: true", (1, 2, 2, 2), (1, 3, 64, 64))


# -- the released nets -------------------------------------------------------------------------------
def _deploy_text(h: int = 128, w: int = 96, lineage: bool = True) -> str:
    text = (DATA / "deploy.prototxt").read_text()
    text = text.replace("dim: 640\n  dim: 480", f"dim: {h}\n  dim: {w}", 1)
    assert f"dim: {h}\n  dim: {w}" in text
    return ('lineage: "faceboxes"\n' if lineage else "") + text


def _randomise(net) -> None:
    from benchmarks import zoo

    zoo.random_weights(net, 0)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for layer in net.layers:
            if layer.type_name == "BatchNorm":  # stored sums with a scale factor, as trained nets hold them
                f = float(rng.uniform(10, 1000))
                layer.blobs[0].mul_(f)
                layer.blobs[1].mul_(f)
                layer.blobs[2].fill_(f)


def test_released_deploy_without_lineage_names_the_fix():
    with pytest.raises(NetError, match=r'number of priors \(41\) must match .*PriorBox '
                                       r"'inception_a3_concat_mbox_priorbox' has FaceBoxes' min_size 32, 64, 128.*"
                                       r'lineage: "faceboxes"'):
        Net(read_net(_deploy_text(lineage=False)), caffe_pb2.TEST)


def test_released_deploy_runs_and_its_priors_equal_the_port():
    net = Net(read_net(_deploy_text()), caffe_pb2.TEST)
    _randomise(net)
    x = np.random.default_rng(1).uniform(-120, 130, (1, 3, 128, 96)).astype(np.float32)
    net.set_blob("data", torch.from_numpy(x))
    net.forward()
    out = net.blob("detection_out")
    assert out.shape[:2] == (1, 1) and out.shape[3] == 7 and out.shape[2] >= 1
    rows = out[0, 0].numpy()
    assert np.all(rows[:, 1] == 1) and np.all(rows[:, 2] >= 0.05)   # the face class, over the threshold
    for name, kw, cells in (
            ("inception_a3_concat_mbox_priorbox", dict(min_sizes=[32, 64, 128], step_h=32, step_w=32), (4, 3)),
            ("conv3_2_mbox_priorbox", dict(min_sizes=[256], step_h=64, step_w=64), (2, 2)),
            ("conv4_2_mbox_priorbox", dict(min_sizes=[512], step_h=128, step_w=128), (1, 1))):
        want, _ = ref.forward(*cells, 128, 96, max_sizes=[], ars=[], flip=True, clip=False,
                              variance=[0.1, 0.1, 0.2, 0.2], **kw)
        assert np.array_equal(net.blob(name).numpy(), want), name
    assert net.blob("mbox_priorbox").shape[2] == (4 * 3 * 21 + 2 * 2 + 1) * 4


def _shrunk_train(param: caffe_pb2.NetParameter, lineage: str = "faceboxes") -> caffe_pb2.NetParameter:
    """The train net with Input layers of a 128 x 128 image pair and two ground-truth faces in place of its
    AnnotatedData (the WIDER FACE LMDB is not here)."""
    del param.layer[0]
    param.lineage = lineage
    for name, dims in (("data", (2, 3, 128, 128)), ("label", (1, 1, 2, 8))):
        lp = param.layer.add(name=name, type="Input", top=[name])
        lp.input_param.shape.add(dim=dims)
        param.layer.insert(0, lp)
        del param.layer[-1]
    return param


def test_released_train_without_lineage_names_the_fix_at_multibox_loss():
    with pytest.raises(NetError, match=r"\(MultiBoxLoss\): number of priors \(53\) must match .*"
                                       r'set lineage: "faceboxes"'):
        Net(_shrunk_train(read_net(DATA / "train.prototxt"), ""), caffe_pb2.TRAIN)


def test_released_train_and_solver_parse_and_the_train_net_trains_shrunk():
    solver = read_solver(DATA / "solver.prototxt")
    assert solver.train_net.endswith("train.prototxt")
    param = read_net(DATA / "train.prototxt")
    assert param.layer[0].type == "AnnotatedData" and param.layer[-1].type == "MultiBoxLoss"
    net = Net(_shrunk_train(param), caffe_pb2.TRAIN)
    _randomise(net)
    label = np.array([[[[0, 1, 0, 0.1, 0.2, 0.4, 0.6, 0], [1, 1, 0, 0.5, 0.5, 0.9, 0.8, 0]]]], np.float32)
    net.set_blob("data", torch.from_numpy(np.random.default_rng(2).uniform(-100, 100, (2, 3, 128, 128))
                                          .astype(np.float32)))
    net.set_blob("label", torch.from_numpy(label))
    loss = float(net.forward())
    net.backward()
    assert np.isfinite(loss) and loss > 0
    assert net.blob("mbox_priorbox").shape[2] == (4 * 4 * 21 + 2 * 2 + 1) * 4


# -- export -------------------------------------------------------------------------------------------
def test_released_deploy_exports_to_onnx_within_1e5():
    pytest.importorskip("onnxruntime")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import TOLERANCE, neocaffe_outputs, onnxruntime_outputs, scaled_error

    net = Net(read_net(_deploy_text()), caffe_pb2.TEST)
    _randomise(net)
    x = {"data": np.random.default_rng(3).uniform(-120, 130, (1, 3, 128, 96)).astype(np.float32)}
    want = neocaffe_outputs(net, x)
    got = onnxruntime_outputs(export_onnx(net), x, list(net.outputs))
    assert want["detection_out"].shape[2] >= 1
    for name in want:
        assert scaled_error(got[name], want[name]) <= TOLERANCE, name


def test_caffe_export_checks_the_released_deploy(tmp_path, capfd):
    pytest.importorskip("onnxruntime")
    from neocaffe.cli.caffe import main

    (tmp_path / "deploy.prototxt").write_text(_deploy_text(640, 480))
    capfd.readouterr()
    code = main(["export", "-model", str(tmp_path / "deploy.prototxt"), "-onnx", str(tmp_path / "fb.onnx"),
                 "-input_shape", "data=1,3,96,128", "-check"])
    err = capfd.readouterr().err
    assert code == 0, err
    assert (tmp_path / "fb.onnx").stat().st_size > 0


@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    for fields, _, feature, image in CASES:
        cpu = _priors(fields, (1, 2, *feature), (1, 3, *image))
        assert np.array_equal(_priors(fields, (1, 2, *feature), (1, 3, *image), device="cuda"), cpu)
    net = Net(read_net(_deploy_text()), caffe_pb2.TEST, device="cuda")
    net.forward()
    want, _ = ref.forward(4, 3, 128, 96, [32, 64, 128], [], [], True, False, [0.1, 0.1, 0.2, 0.2], 32, 32)
    assert np.array_equal(net.blob("inception_a3_concat_mbox_priorbox").cpu().numpy(), want)
