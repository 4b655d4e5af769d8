"""TextBoxes v1's always-doubled PriorBox (MhLiao/TextBoxes @ fd4d7a96; neocaffe/layers/_textboxes_v1.py, lineage
"textboxes_v1") against a loop port of the fork's prior_box_layer.cpp, the prior-count hint of DetectionOutput
and MultiBoxLoss, and its released deploy net (tests/layers/data/textboxes_v1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.graph.errors import NetError
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import LayerSetupError, NetSoFar
from neocaffe.proto import caffe_pb2
from tests.layers.priorbox_run import run_priors
from tests.layers import textboxes_v1_reference as ref

DATA = Path(__file__).parent / "data" / "textboxes_v1"
V1 = NetSoFar(caffe_pb2.NetParameter(lineage="textboxes_v1"))
VAR4 = "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2"


def _priors(fields: str, feature: tuple[int, ...], image: tuple[int, ...], net: NetSoFar | None = V1,
            device: str = "cpu") -> np.ndarray:
    return run_priors(fields, feature, image, net, device)


# fields, port kwargs, feature (h, w), image (h, w)
CASES = [
    # the released conv4_3 and fc7 PriorBoxes (examples/TextBoxes/deploy.prototxt) at the demo's 700 x 500
    (f"min_size: 30.0 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 5 aspect_ratio: 7 aspect_ratio: 10 flip: false "
     f"clip: true {VAR4}",
     dict(min_size=30.0, max_size=None, ars=[2, 3, 5, 7, 10], flip=False, clip=True, variance=[0.1, 0.1, 0.2, 0.2]),
     (88, 63), (700, 500)),
    (f"min_size: 60.0 max_size: 114.0 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 5 aspect_ratio: 7 "
     f"aspect_ratio: 10 flip: false clip: true {VAR4}",
     dict(min_size=60.0, max_size=114.0, ars=[2, 3, 5, 7, 10], flip=False, clip=True,
          variance=[0.1, 0.1, 0.2, 0.2]), (7, 9), (97, 131)),
    # float sizes (SSD casts them to int), clip unset (v1's default: true), flip (its default), one variance
    ("min_size: 30.7 max_size: 57.35 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2.0000001 variance: 0.2",
     dict(min_size=30.7, max_size=57.35, ars=[2, 3, 2.0000001], flip=True, clip=True, variance=[0.2]),
     (5, 3), (41, 37)),
    ("min_size: 13.3 clip: false aspect_ratio: 0.37 flip: true",
     dict(min_size=13.3, max_size=None, ars=[0.37], flip=True, clip=False, variance=[0.1]), (3, 7), (17, 70)),
]


@pytest.mark.parametrize("fields,kw,feature,image", CASES)
def test_priors_equal_the_fork_port(fields, kw, feature, image):
    want = ref.forward(*feature, *image, **kw)
    got = _priors(fields, (1, 2, *feature), (1, 3, *image))
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want), np.abs(got - want).max()


def test_integer_sizes_give_textboxes_plus_plus_denser_priors():
    """With integer sizes and clip set, v1's priors are TextBoxes++'s denser_prior_boxes: true (SSD net)."""
    fields = CASES[1][0]
    got = _priors(fields, (1, 2, 7, 9), (1, 3, 97, 131))
    assert np.array_equal(_priors(fields + " denser_prior_boxes: true", (1, 2, 7, 9), (1, 3, 97, 131), net=None), got)
    # unclipped, the copy of each prior sits half a cell lower: same x, y shifted by step_y / img_h
    cells = _priors(fields.replace("clip: true", "clip: false"), (1, 2, 7, 9), (1, 3, 97, 131))[0, 0].reshape(
        7, 9, -1, 2, 4)
    np.testing.assert_allclose(cells[..., 1, 1] - cells[..., 0, 1], 0.5 * (97 / 7) / 97, atol=1e-6)
    np.testing.assert_array_equal(cells[..., 1, 0], cells[..., 0, 0])
    assert _priors(fields, (1, 2, 7, 9), (1, 3, 97, 131), net=None).shape[2] * 2 == got.shape[2]


@pytest.mark.parametrize("fields,match", [
    ("min_size: 30 min_size: 60", "one min_size"),
    ("min_size: 30 step: 8", "step"),
    ("min_size: 30 img_size: 300", "img_size"),
    ("min_size: 30 denser_prior_boxes: false", "always doubles"),
])
def test_fields_v1_has_not_are_errors(fields, match):
    with pytest.raises(LayerSetupError, match=match):
        _priors(fields, (1, 2, 2, 2), (1, 3, 16, 16))


# -- the prior-count hint and v1's DetectionOutput / MultiBoxLoss --------------------------------------------------
def _small_net(lineage: str, loc_scale: int = 2, threshold: float = 0.01) -> str:
    """PriorBox on a 2 x 2 map (1 prior a cell in SSD, 2 in v1) with loc/conf heads sized for v1's count."""
    n = 2 * 2 * loc_scale
    return (f'lineage: "{lineage}"\n' if lineage else "") + f"""
layer {{ name: "in" type: "Input" top: "f" top: "img" top: "loc" top: "conf" top: "label"
  input_param {{ shape {{ dim: 1 dim: 2 dim: 2 dim: 2 }} shape {{ dim: 1 dim: 3 dim: 16 dim: 16 }}
    shape {{ dim: 1 dim: {n * 4} }} shape {{ dim: 1 dim: {n * 2} }} shape {{ dim: 1 dim: 1 dim: 1 dim: 8 }} }} }}
layer {{ name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "prior"
  prior_box_param {{ min_size: 6 clip: true {VAR4} }} }}
layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
  detection_output_param {{ num_classes: 2 share_location: true background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: 400 }} code_type: CENTER_SIZE keep_top_k: 200
    confidence_threshold: {threshold} }} }}
layer {{ name: "loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "prior" bottom: "label" top: "loss"
  multibox_loss_param {{ loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 num_classes: 2
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true do_neg_mining: true neg_pos_ratio: 3 neg_overlap: 0.5
    code_type: CENTER_SIZE }} }}
"""


def test_twice_ssds_count_names_the_lineage_at_detection_output_and_multibox_loss():
    with pytest.raises(NetError, match=r'\(DetectionOutput\): number of priors \(4\) .* received 32 per image, '
                                       r'expected 16 \(SSD\).*twice SSD.*lineage: "textboxes_v1"'):
        Net(read_net(_small_net("")), caffe_pb2.TEST)
    text = _small_net("").replace('layer { name: "det"', 'layer { name: "det" include { phase: TEST }')
    with pytest.raises(NetError, match=r'\(MultiBoxLoss\): number of priors \(4\) .*twice SSD.*'
                                       r'lineage: "textboxes_v1"'):
        Net(read_net(text), caffe_pb2.TRAIN)
    with pytest.raises(NetError, match=r"number of priors") as e:   # another count: no v1 hint
        Net(read_net(_small_net("", loc_scale=3)), caffe_pb2.TEST)
    assert "textboxes_v1" not in str(e.value)


def test_v1_net_builds_runs_and_trains():
    rng = np.random.default_rng(0)
    net = Net(read_net(_small_net("textboxes_v1")), caffe_pb2.TRAIN)
    net.set_blob("loc", torch.from_numpy(rng.normal(0, 0.1, (1, 32)).astype(np.float32)))
    net.set_blob("conf", torch.from_numpy(rng.normal(0, 1, (1, 16)).astype(np.float32)))
    net.set_blob("label", torch.tensor([[[[0, 1, 0, 0.1, 0.1, 0.45, 0.5, 0]]]]))
    loss = float(net.forward())
    assert np.isfinite(loss) and loss > 0
    want = ref.forward(2, 2, 16, 16, 6.0, None, [], True, True, [0.1, 0.1, 0.2, 0.2])
    assert np.array_equal(net.blob("prior").numpy(), want)


def test_v1_no_detection_is_one_row_of_minus_one():
    """The fork's DetectionOutput (ssd of July 2016): no detection -> one row of -1, image id included."""
    for lineage, first in (("textboxes_v1", -1.0), ("upstream", 0.0)):
        text = _small_net(lineage, threshold=0.99)
        if lineage == "upstream":
            text = text.replace('min_size: 6', 'min_size: 6 denser_prior_boxes: true')
        net = Net(read_net(text), caffe_pb2.TEST)
        net.set_blob("conf", torch.zeros(1, 16))
        net.set_blob("label", torch.tensor([[[[0, 1, 0, 0.1, 0.1, 0.45, 0.5, 0]]]]))
        net.forward()
        out = net.blob("det").numpy()
        assert out.shape == (1, 1, 1, 7) and out[0, 0, 0, 0] == first and np.all(out[0, 0, 0, 1:] == -1)


# -- the released deploy net ---------------------------------------------------------------------------------------
def _deploy_text(h: int = 96, w: int = 96, lineage: bool = True) -> str:
    text = (DATA / "deploy.prototxt").read_text()
    text = text.replace("dim: 700\n  dim: 700", f"dim: {h}\n  dim: {w}", 1)
    assert f"dim: {h}\n  dim: {w}" in text
    return ('lineage: "textboxes_v1"\n' if lineage else "") + text


def _randomised(text: str, device: str = "cpu") -> Net:
    from benchmarks import zoo

    net = Net(read_net(text), caffe_pb2.TEST, device=device)
    zoo.random_weights(net, 0)
    return net


def test_released_deploy_without_lineage_names_the_fix():
    with pytest.raises(NetError, match=r"number of priors \(1221\) .* received 9768 per image, expected 4884 \(SSD\)"
                                       r'.*lineage: "textboxes_v1"'):
        Net(read_net(_deploy_text(lineage=False)), caffe_pb2.TEST)


PRIORBOXES = {  # name: (min_size, max_size, feature side at 96 x 96)
    "conv4_3_norm_mbox_priorbox": (30.0, None, 12), "fc7_mbox_priorbox": (60.0, 114.0, 6),
    "conv6_2_mbox_priorbox": (114.0, 168.0, 3), "conv7_2_mbox_priorbox": (168.0, 222.0, 2),
    "conv8_2_mbox_priorbox": (222.0, 276.0, 1), "pool6_mbox_priorbox": (276.0, 330.0, 1)}


def test_released_deploy_runs_and_its_priors_equal_the_port():
    net = _randomised(_deploy_text())
    x = np.random.default_rng(1).uniform(-120, 130, (1, 3, 96, 96)).astype(np.float32)
    net.set_blob("data", torch.from_numpy(x))
    net.forward()
    out = net.blob("detection_out")
    assert out.shape[:2] == (1, 1) and out.shape[3] == 7 and out.shape[2] >= 1
    param = read_net(_deploy_text())
    sizes = {lp.name: (lp.prior_box_param.min_size[0], lp.prior_box_param.max_size[0]
                       if len(lp.prior_box_param.max_size) else None) for lp in param.layer if lp.type == "PriorBox"}
    assert set(sizes) == set(PRIORBOXES)
    for name, (mn, mx, side) in PRIORBOXES.items():
        assert sizes[name] == (mn, mx), name
        want = ref.forward(side, side, 96, 96, mn, mx, [2, 3, 5, 7, 10], False, True, [0.1, 0.1, 0.2, 0.2])
        assert np.array_equal(net.blob(name).numpy(), want), name
    assert net.blob("mbox_priorbox").shape[2] == 9768 == net.blob("mbox_loc").shape[1]


def test_released_deploy_exports_to_onnx_within_1e5():
    pytest.importorskip("onnxruntime")
    from neocaffe.export.onnx import export_onnx
    from neocaffe.export.verify import TOLERANCE, neocaffe_outputs, onnxruntime_outputs, scaled_error

    net = _randomised(_deploy_text())
    x = {"data": np.random.default_rng(3).uniform(-120, 130, (1, 3, 96, 96)).astype(np.float32)}
    want = neocaffe_outputs(net, x)
    got = onnxruntime_outputs(export_onnx(net), x, list(net.outputs))
    assert want["detection_out"].shape[2] >= 1
    for name in want:
        assert scaled_error(got[name], want[name]) <= TOLERANCE, name
    assert TOLERANCE <= 1e-5


@pytest.mark.gpu
def test_on_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for fields, kw, feature, image in CASES:
        assert np.array_equal(_priors(fields, (1, 2, *feature), (1, 3, *image), device="cuda"),
                              ref.forward(*feature, *image, **kw))
    net = _randomised(_deploy_text(), device="cuda")
    net.forward()
    mn, mx, side = PRIORBOXES["fc7_mbox_priorbox"]
    want = ref.forward(side, side, 96, 96, mn, mx, [2, 3, 5, 7, 10], False, True, [0.1, 0.1, 0.2, 0.2])
    assert np.array_equal(net.blob("fc7_mbox_priorbox").cpu().numpy(), want)
