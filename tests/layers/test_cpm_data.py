"""OpenPose's CPMData (CMU-Perceptual-Computing-Lab/caffe_train @ 76dd9563) against a loop port of its
transformer (tests/layers/cpm_data_reference.py), on records written as genLMDB.py writes them; its draws; and
OpenPose's training net (ZheC/Realtime_Multi-Person_Pose_Estimation @ de8d6984) shrunk to a few CPU steps."""
from __future__ import annotations

import math
import os
import subprocess
import time

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.cpm_augment import draw, rotated_bbox
from neocaffe.data.cpm_records import coco_person, genlmdb_datum, read_meta
from neocaffe.data.datum import encode_array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.cpm_data import CPMBatchMaker, CPMData
from neocaffe.proto import caffe_pb2
from tests.layers import cpm_data_reference as ref

MIRROR = "/work/.mirror/ZheC+Realtime_Multi-Person_Pose_Estimation/repo"
POSE_COMMIT = "de8d6984f2c10b6e0230de63dfdcf52ef3376b57"
TP = ('stride: 8 max_rotate_degree: 40 crop_size_x: 48 crop_size_y: 40 scale_prob: 1 scale_min: 0.5 '
      'scale_max: 1.1 target_dist: 0.6 center_perterb_max: 40 num_parts: 56 np_in_lmdb: 17')


def _record(g, h=56, w=80, others=2, channels=6, vis3=False):
    """A genLMDB.py record (its C x H x W planes) with ``others`` other people."""
    img = g.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 2)  # smooth enough for bicubic to matter less than the labels
    miss = np.where(g.random((h, w)) < 0.85, 255, 0).astype(np.uint8)
    joints = coco_person(g, h, w)
    if vis3:
        joints[0, 2] = 3
    joints[3, :2] = (w + 5, 3)  # outside the image: visibility 2
    people = [((float(g.uniform(5, w - 5)), float(g.uniform(5, h - 5))), 0.5, coco_person(g, h, w))
              for _ in range(others)]
    datum = genlmdb_datum(img, miss, np.zeros_like(miss) if channels == 6 else None, (w / 2 + 3, h / 2 - 2), 0.55,
                          joints, people)
    return np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width), datum


def _tp(text=TP):
    return text_format.Parse(text, caffe_pb2.CPMTransformationParameter())


class _Dice:
    """A generator stand-in handing out fixed dice in the fork's order."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def _maker(tp, train=True, hw=(0, 0)):
    return CPMBatchMaker("", "lmdb", 1, tp, train, 0, "test", hw)


def test_metadata_rows_read_as_the_fork_reads_them():
    g = np.random.default_rng(0)
    arr, _ = _record(g, vis3=True)
    people = read_meta(arr[3], 17, "r")
    m = ref.read_meta(arr[3], 17)
    assert m["nop"] == 2 and len(people.joints) == 3
    for k, (pts, vis) in enumerate([m["self"]] + m["others"]):
        np.testing.assert_array_equal(people.joints[k], np.array(pts, np.float32))
        np.testing.assert_array_equal(people.vis[k], np.array(vis, np.float32))
    np.testing.assert_array_equal(people.objpos, np.array(m["objpos"], np.float32))
    assert people.vis[0, 0] == 3 and people.vis[0, 3] == 2 and people.scale == np.float32(0.55)


@pytest.mark.parametrize("w, h", [(80, 56), (67, 91), (368, 368)])
def test_rotated_bounding_box_is_opencvs(w, h):
    for deg in np.linspace(-40, 40, 33, dtype=np.float32):
        pts = cv2.boxPoints(((w / 2.0, h / 2.0), (w, h), float(deg)))
        x0, y0 = math.floor(pts[:, 0].min()), math.floor(pts[:, 1].min())
        want = (math.ceil(pts[:, 0].max()) - x0 + 1, math.ceil(pts[:, 1].max()) - y0 + 1)
        assert rotated_bbox(w, h, w / 2.0, h / 2.0, deg) == want


DICE = {  # scale, [scale2 when scale <= scale_prob], rotate, crop x, crop y, flip
    "plain": [0.9, 0.5, 0.5, 0.5, 0.5, 0.9],
    "scaled_rotated_flipped": [0.3, 0.8, 0.85, 0.6, 0.35, 0.2],
    "crop_off_the_image": [0.1, 0.05, 0.1, 1.0, 0.0, 0.4],
    "rotated_back": [0.7, 0.2, 0.0, 0.45, 0.9, 0.6],
}


@pytest.mark.parametrize("case", sorted(DICE))
def test_one_record_equals_the_port(case):
    g = np.random.default_rng(1)
    arr, _ = _record(g, vis3=case == "plain")
    tp = _tp()
    dice = [float(np.float32(v)) for v in DICE[case]]
    data, label = _maker(tp).item(arr, "r", _Dice(dice))
    want_data, want_label = ref.transform_nv(arr, tp, True, dice)
    assert data.shape == (6, 40, 48) and label.shape == (114, 5, 6)
    if case == "plain":
        assert np.abs(label[57:95]).max() > 0.5 and label[95:113].max() > 0.5
    np.testing.assert_array_equal(data, want_data)
    diff = float(np.abs(label - want_label).max())
    assert diff <= 1e-6, diff
    print(f"{case}: max |label - port| = {diff:.1e}")


def test_mpi_clahe_gray_and_test_phase_equal_the_port():
    g = np.random.default_rng(2)
    arr, _ = _record(g, channels=5, others=1)
    mpi = _tp(TP.replace("num_parts: 56 np_in_lmdb: 17", "num_parts: 43 np_in_lmdb: 17") + " do_clahe: true gray: 1")
    dice = [float(np.float32(v)) for v in DICE["scaled_rotated_flipped"]]
    data, label = _maker(mpi).item(arr, "r", _Dice(dice))
    want_data, want_label = ref.transform_nv(arr, mpi, True, dice)
    assert label.shape == (88, 5, 6)
    np.testing.assert_array_equal(data, want_data)
    assert np.abs(label - want_label).max() <= 1e-6
    tp = _tp()
    data, label = _maker(tp, False, arr.shape[1:]).item(arr, "r", None)
    want_data, want_label = ref.transform_nv(arr, tp, False, [])
    np.testing.assert_array_equal(data, want_data)
    assert data.shape == (5, 56, 80) and np.abs(label - want_label).max() <= 1e-6


def test_label_layout():
    """Weights, PAFs (unit vectors or 0), heatmaps in [0, 1], background 1 - max(heatmaps): the channels the
    prototxt slices at 38, 57, 95."""
    g = np.random.default_rng(3)
    arr, _ = _record(g, others=3)
    _, label = _maker(_tp()).item(arr, "r", _Dice([0.9, 0.5, 0.5, 0.5, 0.5, 0.9]))
    np.testing.assert_array_equal(label[:57], np.broadcast_to(label[56], label[:57].shape))
    paf = label[57:95].reshape(19, 2, *label.shape[1:])
    norm = np.hypot(paf[:, 0], paf[:, 1])
    assert np.all((np.abs(norm - 1) < 1e-5) | (norm == 0)) and (norm > 0).any()
    heat = label[95:113]
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0.5
    np.testing.assert_allclose(label[113], 1 - heat.max(0), atol=1e-7)


def _lmdb(path, n=4, seed=4):
    g = np.random.default_rng(seed)
    with DBWriter(str(path), "lmdb") as db:
        for i in range(n):
            _, datum = _record(g, others=i % 3)
            db.put(f"{i:07d}", datum.SerializeToString())
    return str(path)


def _layer(source, phase=TRAIN, batch=2, tp=TP, tops=2):
    label = 'top: "label"' if tops == 2 else ""
    text = (f'name: "data" type: "CPMData" top: "data" {label} data_param {{ '
            f'source: "{source}" batch_size: {batch} backend: LMDB }} cpm_transform_param {{ {tp} }}')
    return CPMData(text_format.Parse(text, caffe_pb2.LayerParameter()), [], phase)


def test_layer_tops_equal_the_port_with_the_layers_draws(tmp_path):
    """Two batches (wrapping the 3-record source): the layer's dice are (seed, k)'s, drawn in the fork's order."""
    src = _lmdb(tmp_path / "db", n=3)
    layer = _layer(src)
    records = [a for a in _records(src)]
    diffs = []
    for k in range(2):
        data, label = layer()
        rng = np.random.default_rng([layer.seed, k])
        for i in range(2):
            arr = records[(2 * k + i) % 3]
            d = draw(rng, layer.param.cpm_transform_param)
            dice = [d.scale] + ([d.scale2] if d.scale2 is not None else []) + [d.rotate, d.crop_x, d.crop_y, d.flip]
            want_data, want_label = ref.transform_nv(arr, layer.param.cpm_transform_param, True, dice)
            np.testing.assert_array_equal(data[i].numpy(), want_data)
            diffs.append(float(np.abs(label[i].numpy() - want_label).max()))
    print(f"layer vs port: max |label diff| = {max(diffs):.1e}")
    assert max(diffs) <= 1e-6
    assert tuple(data.shape) == (2, 6, 40, 48) and tuple(label.shape) == (2, 114, 5, 6)
    layer.close()


def _records(src):
    from neocaffe.data.sources import DBReader

    with DBReader(src, "lmdb") as r:
        out = []
        for _, v in r.items():
            d = caffe_pb2.Datum()
            d.ParseFromString(bytes(v))
            out.append(np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width))
    return out


def test_draws_ranges_and_determinism(tmp_path):
    tp = _tp()
    rng = np.random.default_rng(0)
    draws = [draw(rng, tp) for _ in range(2000)]
    vals = np.array([[d.scale, d.rotate, d.crop_x, d.crop_y, d.flip] for d in draws])
    assert vals.min() >= 0 and vals.max() <= 1
    assert all(d.scale2 is not None for d in draws)  # scale_prob 1: always a multiplier in [scale_min, scale_max]
    none = [draw(rng, _tp(TP.replace("scale_prob: 1", "scale_prob: 0.25"))) for _ in range(2000)]
    frac = np.mean([d.scale2 is not None for d in none])
    assert 0.2 < frac < 0.3
    src = _lmdb(tmp_path / "db")
    from neocaffe import rng as nrng

    outs = []
    for seed in (7, 7, 8):
        nrng.set_seed(seed)
        layer = _layer(src)
        outs.append([t.numpy().copy() for _ in range(2) for t in layer()])
        layer.close()
    assert all(np.array_equal(a, b) for a, b in zip(outs[0], outs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(outs[0], outs[2]))


def test_test_phase_one_top_and_errors(tmp_path):
    src = _lmdb(tmp_path / "db", n=2)
    layer = _layer(src, phase=TEST, batch=1)
    data, label = layer()
    assert tuple(data.shape) == (1, 6, 56, 80) and tuple(label.shape) == (1, 114, 7, 10)
    layer.close()
    one = _layer(src, tops=1)
    (data,) = one()
    assert tuple(data.shape) == (2, 6, 40, 48) and (data[:, 3:] == 0).all()
    one.close()
    for bad, what in [("num_parts: 56", "num_parts: 14"), ("stride: 8", "stride: 8 crop_size: 32"),
                      ("stride: 8", "stride: 8 aug_way: \"table\""), ("np_in_lmdb: 17", "np_in_lmdb: 16"),
                      ("stride: 8", "stride: 8 transform_body_joint: false")]:
        with pytest.raises(LayerSetupError, match="CPMData"):
            _layer(src, tp=TP.replace(bad, what))
    enc = tmp_path / "enc"
    with DBWriter(str(enc), "lmdb") as db:
        db.put("0", encode_array_to_datum(np.zeros((3, 8, 8), np.uint8)).SerializeToString())
    with pytest.raises(LayerSetupError, match="encoded"):
        _layer(str(enc))


# -- OpenPose's training net ----------------------------------------------------------------------------------

def _small_pose_net(source):
    """A net written here with pose_train_test.prototxt's head: the CPMData tops sliced at 38, 57, 95, weights
    multiplied in, two branches (PAFs, heatmaps) with EuclideanLoss per stage, two stages."""
    conv = ('layer {{ name: "{n}" type: "Convolution" bottom: "{b}" top: "{n}" convolution_param {{ num_output: {c} '
            'pad: {p} kernel_size: {k} weight_filler {{ type: "gaussian" std: 0.01 }} }} }}\n')
    relu = 'layer {{ name: "r_{n}" type: "ReLU" bottom: "{n}" top: "{n}" }}\n'
    text = f'''layer {{ name: "data" type: "CPMData" top: "data" top: "label" data_param {{ source: "{source}"
  batch_size: 2 backend: LMDB }} cpm_transform_param {{ {TP.replace("crop_size_x: 48 crop_size_y: 40",
  "crop_size_x: 32 crop_size_y: 32")} }} }}
layer {{ name: "vec_weight" type: "Slice" bottom: "label" top: "vec_weight" top: "heat_weight" top: "vec_temp"
  top: "heat_temp" slice_param {{ slice_point: 38 slice_point: 57 slice_point: 95 axis: 1 }} }}
layer {{ name: "label_vec" type: "Eltwise" bottom: "vec_weight" bottom: "vec_temp" top: "label_vec"
  eltwise_param {{ operation: PROD }} }}
layer {{ name: "label_heat" type: "Eltwise" bottom: "heat_weight" bottom: "heat_temp" top: "label_heat"
  eltwise_param {{ operation: PROD }} }}
layer {{ name: "image" type: "Slice" bottom: "data" top: "image" top: "center_map" slice_param {{ slice_point: 3
  axis: 1 }} }}
layer {{ name: "silence2" type: "Silence" bottom: "center_map" }}
layer {{ name: "pool" type: "Pooling" bottom: "image" top: "pool" pooling_param {{ pool: AVE kernel_size: 8
  stride: 8 }} }}
'''
    text += conv.format(n="feat", b="pool", c=16, p=1, k=3) + relu.format(n="feat")
    last = "feat"
    for s in (1, 2):
        for br, ch, wname, lab in (("L1", 38, "vec_weight", "label_vec"), ("L2", 19, "heat_weight", "label_heat")):
            name = f"out_s{s}_{br}"
            text += conv.format(n=name, b=last, c=ch, p=0, k=1)
            text += (f'layer {{ name: "w_{name}" type: "Eltwise" bottom: "{name}" bottom: "{wname}" top: "w_{name}" '
                     f'eltwise_param {{ operation: PROD }} }}\nlayer {{ name: "loss_{name}" type: "EuclideanLoss" '
                     f'bottom: "w_{name}" bottom: "{lab}" top: "loss_{name}" loss_weight: 1 }}\n')
        text += (f'layer {{ name: "concat_s{s + 1}" type: "Concat" bottom: "out_s{s}_L1" bottom: "out_s{s}_L2" '
                 f'bottom: "feat" top: "concat_s{s + 1}" concat_param {{ axis: 1 }} }}\n')
        last = f"concat_s{s + 1}"
    return text


def _solve(tmp_path, net_text, steps):
    from neocaffe.solver.solver import Solver

    (tmp_path / "net.prototxt").write_text(net_text)
    sp = text_format.Parse(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.00004 momentum: 0.9 weight_decay: 0.0005 '
                           'lr_policy: "step" gamma: 0.333 stepsize: 136106 display: 0 random_seed: 1 '
                           'snapshot_after_train: false solver_mode: CPU', caffe_pb2.SolverParameter())
    s = Solver(sp)
    losses = []
    for _ in range(steps):
        s.step(1)
        losses.append({k: float(v) for k, v in s.net.blob_data.items() if k.startswith("loss")})
    s.close()
    return losses


def test_a_pose_net_with_the_released_head_trains(tmp_path):
    losses = _solve(tmp_path, _small_pose_net(_lmdb(tmp_path / "db")), 2)
    assert len(losses[0]) == 4 and all(np.isfinite(list(step.values())).all() for step in losses)


def _released_train_net():
    if not os.path.isdir(MIRROR):
        pytest.skip(f"{MIRROR} is absent: pose_train_test.prototxt (non-commercial licence, not copied) is read "
                    "from the mirror")
    return subprocess.run(["git", "-C", MIRROR, "show", f"{POSE_COMMIT}:training/example_proto/pose_train_test.prototxt"],
                          capture_output=True, text=True, check=True).stdout


def test_the_released_pose_train_net_takes_solver_steps(tmp_path):
    """pose_train_test.prototxt as released (92 convolutions, 6 stages, 12 losses), its data layer pointed at a
    tiny LMDB, batch 1, a 32 x 32 crop (via its fields), widths unchanged: two SGD steps, finite losses."""
    net = text_format.Parse(_released_train_net(), caffe_pb2.NetParameter())
    data = net.layer[0]
    assert data.type == "CPMData" and data.cpm_transform_param.num_parts == 56
    data.data_param.source, data.data_param.batch_size = _lmdb(tmp_path / "db"), 1
    data.cpm_transform_param.crop_size_x = data.cpm_transform_param.crop_size_y = 32
    t0 = time.perf_counter()
    losses = _solve(tmp_path, text_format.MessageToString(net), 2)
    print(f"released pose net: {len(losses[0])} losses, 2 steps in {time.perf_counter() - t0:.1f} s")
    assert len(losses[0]) == 12 and all(np.isfinite(list(step.values())).all() for step in losses)


@pytest.mark.gpu
def test_cuda_layer_gives_the_host_batches(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    src = _lmdb(tmp_path / "db")
    from neocaffe import rng as nrng

    nrng.set_seed(3)
    cpu = _layer(src)
    nrng.set_seed(3)
    gpu = _layer(src).to("cuda")
    for _ in range(2):
        for a, b in zip(cpu(), gpu()):
            assert b.device.type == "cuda"
            torch.testing.assert_close(b.cpu(), a, rtol=0, atol=0)
    cpu.close()
    gpu.close()
