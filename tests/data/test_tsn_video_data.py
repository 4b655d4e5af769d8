"""TSN's VideoData (yjxiong/caffe action_recog @ 9831a2b4) against a loop port of the fork's CPU code
(tests/data/tsn_reference.py): the TEST path exactly, the TRAIN path exactly given the layer's own draws (replayed
from its seeded generator), the crop tables, the mean forms, the dispatch among the VideoData forms and the errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.tsn_frames import write_tsn_videos
from neocaffe.data.tsn_transform import crop_sizes, fix_offsets
from neocaffe.layers.base import TEST, TRAIN, LayerSetupError
from neocaffe.layers.c3d_video_data import C3DVideoData
from neocaffe.layers.tsn_video_data import TSNVideoData
from neocaffe.layers.video_data import VideoData
from neocaffe.proto import caffe_pb2
from tests.data import tsn_reference as ref

VIDEOS = [("a", 7, 3), ("b", 10, 1), ("c", 4, 0), ("d", 12, 2)]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_tsn_videos(str(tmp_path_factory.mktemp("tsn")), VIDEOS, size=(12, 15), seed=11)


def _param(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def _layer(src, phase, vp="", tp="", batch=2):
    p = _param(f'name: "data" type: "VideoData" top: "data" top: "label" video_data_param {{ source: "{src}" '
               f'batch_size: {batch} {vp} }} transform_param {{ {tp} }}')
    return VideoData(p, [], phase)


def _fields(text):
    """transform_param text as the reference's dict."""
    tp = text_format.Parse(text, caffe_pb2.TransformationParameter())
    out = {f.name: (list(v) if f.is_repeated else v) for f, v in tp.ListFields()}
    return out


def _port_batch(layer, k, src, vp, tp_text, mean=None):
    """The fork's items of batch ``k`` (unshuffled list), with the layer's draws replayed."""
    g = np.random.default_rng([layer.seed, k])
    rand = lambda n: int(g.integers(0, n))  # noqa: E731  (the fork's rand() % n, with the layer's stream)
    lines = [ln.split() for ln in open(src).read().splitlines() if ln.strip()]
    train = layer.phase == TRAIN
    out, labels = [], []
    for i in range(layer.batch_size):
        path, n, label = lines[(k * layer.batch_size + i) % len(lines)]
        offs = ref.offsets(int(n), vp["num_segments"], vp["new_length"], train, rand)
        h, w = vp.get("new_height", 0), vp.get("new_width", 0)
        if vp["modality"] == "FLOW":
            datum = ref.read_segment_flow(path, offs, h, w, vp["new_length"], vp["pattern"])
        else:
            datum = ref.read_segment_rgb(path, offs, h, w, vp["new_length"], not vp.get("gray"), vp["pattern"])
        out.append(ref.transform(datum, _fields(tp_text), train, rand, mean))
        labels.append(int(label))
    return np.stack(out), np.asarray(labels, np.float32)


def _vp_text(vp):
    s = (f'new_length: {vp["new_length"]} num_segments: {vp["num_segments"]} modality: {vp["modality"]} '
         f'name_pattern: "{vp["pattern"]}"')
    if vp.get("new_height"):
        s += f' new_height: {vp["new_height"]} new_width: {vp["new_width"]}'
    if vp.get("gray"):
        s += " grayscale: true"
    return s


RGB = {"new_length": 1, "num_segments": 3, "modality": "RGB", "pattern": "img_%05d.jpg"}
FLOW = {"new_length": 2, "num_segments": 2, "modality": "FLOW", "pattern": "flow_%c_%05d.jpg"}
CASES = [
    (RGB, "crop_size: 10 mean_value: [104, 117, 123]"),
    ({**RGB, "new_height": 11, "new_width": 13}, "crop_size: 9 mean_value: [104, 117, 123, 1, 2, 3, 4, 5, 6] scale: 0.5"),
    ({**RGB, "gray": True, "new_length": 2}, "mean_value: 100"),
    (FLOW, "crop_size: 8 mean_value: 128 is_flow: true"),
    ({**FLOW, "new_height": 14, "new_width": 16}, "crop_size: 12 mean_value: [128, 127] is_flow: true scale: 0.25"),
]
TRAIN_TP = ["crop_size: 10 mirror: true fix_crop: true more_fix_crop: true multi_scale: true max_distort: 1 "
            "scale_ratios: [1, .875, .75, .66]",
            "crop_size: 9 mirror: true multi_scale: true max_distort: 2",
            "crop_size: 11 mirror: true fix_crop: true",
            "crop_size: 8 mirror: true"]


@pytest.mark.parametrize("vp, tp", CASES)
def test_test_phase_matches_the_forks_reading_and_transform_exactly(frames, vp, tp):
    layer = _layer(frames, TEST, _vp_text(vp), tp, batch=3)
    assert isinstance(layer, TSNVideoData)
    try:
        for k in range(3):  # the third wraps the four-video list
            data, label = (t.numpy() for t in layer.forward())
            want, want_label = _port_batch(layer, k, frames, vp, tp)
            assert data.shape == want.shape == tuple(layer.reshape([])[0])
            np.testing.assert_array_equal(data, want)
            np.testing.assert_array_equal(label.reshape(-1), want_label)
            assert label.shape == (3, 1, 1, 1)
    finally:
        layer.close()


@pytest.mark.parametrize("tp", TRAIN_TP)
@pytest.mark.parametrize("vp, mean", [(RGB, "mean_value: [104, 117, 123]"), (FLOW, "mean_value: 128 is_flow: true")])
def test_train_phase_matches_the_fork_given_the_same_draws(frames, tp, vp, mean):
    tp = f"{tp} {mean}"
    layer = _layer(frames, TRAIN, _vp_text(vp), tp, batch=4)
    try:
        for k in range(3):
            data = layer.forward()[0].numpy()
            want, _ = _port_batch(layer, k, frames, vp, tp)
            np.testing.assert_array_equal(data, want)
    finally:
        layer.close()


@pytest.mark.parametrize("h, w, crop, distort", [(256, 340, 224, 1), (240, 320, 224, 1), (128, 171, 112, 2),
                                                 (12, 15, 10, 0), (226, 300, 224, 3)])
def test_crop_tables_match_the_fork(h, w, crop, distort):
    for ratios in ([], [1, .875, .75, .66], [1, .875, .75]):
        assert crop_sizes(h, w, crop, distort, tuple(np.float32(ratios))) == \
            ref.fill_crop_size(h, w, crop, crop, distort, np.float32(ratios))
    for ch, cw in ref.fill_crop_size(h, w, crop, crop, distort, []):
        for more in (False, True):
            assert fix_offsets(h, w, ch, cw, more) == ref.fill_fix_offset(h, w, ch, cw, more)


def _mean_file(path, shape, seed):
    from neocaffe.io.binaryproto import write_blobproto

    mean = np.random.default_rng(seed).uniform(60, 160, (1, *shape)).astype(np.float32)
    write_blobproto(str(path), mean, legacy=True)
    return mean.reshape(-1)


@pytest.mark.parametrize("phase, tp", [(TEST, "crop_size: 9"),
                                       (TRAIN, "mirror: true"),
                                       (TRAIN, "crop_size: 9 mirror: true fix_crop: true"),
                                       (TRAIN, "crop_size: 10 mirror: true multi_scale: true fix_crop: true")])
def test_a_mean_file_is_read_where_the_fork_reads_it(frames, tmp_path, phase, tp):
    mean = _mean_file(tmp_path / "mean.binaryproto", (9, 12, 15), 5)
    tp = f'{tp} mean_file: "{tmp_path / "mean.binaryproto"}"'
    layer = _layer(frames, phase, _vp_text(RGB), tp, batch=4)
    try:
        for k in range(2):
            np.testing.assert_array_equal(layer.forward()[0].numpy(), _port_batch(layer, k, frames, RGB, tp, mean)[0])
    finally:
        layer.close()


def test_default_name_patterns_are_the_forks(tmp_path):
    import cv2

    for n in range(1, 4):
        cv2.imwrite(str(tmp_path / f"image_{n:04d}.jpg"), np.full((6, 7, 3), 10 * n, np.uint8))
        for c in "xy":
            cv2.imwrite(str(tmp_path / f"flow_{c}_{n:04d}.jpg"), np.full((6, 7), 20 * n, np.uint8))
    (tmp_path / "list.txt").write_text(f"{tmp_path} 3 4\n")
    for modality, channels in (("RGB", 3), ("FLOW", 2)):
        layer = _layer(tmp_path / "list.txt", TEST, f"num_segments: 3 modality: {modality}", batch=1)
        assert layer.reshape([])[0] == (1, 3 * channels, 6, 7)
        data, label = layer.forward()
        layer.close()
        assert float(label) == 4.0
        if modality == "FLOW":
            assert data[0, ::2, 0, 0].tolist() == [20.0, 40.0, 60.0]


def test_shuffle_keeps_folders_with_their_counts_and_labels(frames):
    layer = _layer(frames, TEST, _vp_text(RGB) + " shuffle: true", "crop_size: 10", batch=4)
    try:
        seen = [sorted(layer.forward()[1].reshape(-1).tolist()) for _ in range(3)]
    finally:
        layer.close()
    assert all(s == [0.0, 1.0, 2.0, 3.0] for s in seen)


def test_the_other_videodata_forms_are_unchanged_and_mixing_is_an_error(frames):
    ssd = _param('name: "v" type: "VideoData" top: "data" video_data_param { video_type: VIDEO video_file: "x.avi" }')
    from neocaffe.layers.tsn_video_data import tsn_claims
    assert not tsn_claims(ssd)
    c3d = _param('name: "v" type: "VideoData" top: "data" image_data_param { source: "x.txt" }')
    assert not tsn_claims(c3d)
    with pytest.raises(LayerSetupError, match="cannot read the clip list"):
        VideoData(_param('name: "v" type: "VideoData" top: "data" image_data_param { source: "absent.txt" '
                         'new_length: 2 batch_size: 1 }'), [], TEST)
    assert C3DVideoData is not TSNVideoData
    mixed = _param(f'name: "v" type: "VideoData" top: "data" top: "label" video_data_param {{ source: "{frames}" '
                   'video_file: "x.avi" }')
    with pytest.raises(LayerSetupError, match="TSN's video_data_param fields .* and SSD's .*video_file"):
        VideoData(mixed, [], TEST)


def test_errors_name_the_list_line_and_the_frame(tmp_path, frames):
    (tmp_path / "bad.txt").write_text(f"{os.path.dirname(frames)}/a 7\n")
    with pytest.raises(LayerSetupError, match=r"bad.txt:1: expected '<frame folder> <number of frames> <label>'"):
        _layer(tmp_path / "bad.txt", TEST, _vp_text(RGB))
    (tmp_path / "short.txt").write_text(f"{os.path.dirname(frames)}/a 7 0\n{os.path.dirname(frames)}/c 40 1\n")
    layer = _layer(tmp_path / "short.txt", TEST, _vp_text(RGB), batch=2)
    with pytest.raises(Exception, match=r"short.txt:2 .*could not load frame .*img_00007.jpg' \(no such file\)"):
        layer.forward()
    layer.close()
    with pytest.raises(LayerSetupError, match="crop_size 20 is larger than the first video's 12x15 frames"):
        _layer(frames, TEST, _vp_text(RGB), "crop_size: 20")
    with pytest.raises(LayerSetupError, match="Specify either 1 mean_value or as many as channels: 9"):
        _layer(frames, TEST, _vp_text(RGB), "mean_value: [1, 2]")


@pytest.mark.gpu
def test_cuda_forward_equals_the_cpu_one(frames):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    tp = "crop_size: 10 mirror: true multi_scale: true fix_crop: true mean_value: [104, 117, 123] scale: 0.5"
    out = []
    for device in ("cpu", "cuda"):
        layer = _layer(frames, TRAIN, _vp_text(RGB), tp, batch=4)
        layer.seed = 1234
        layer.to(device)
        data, label = layer.forward()
        assert data.device.type == device
        out.append((data.cpu(), label.cpu()))
        layer.close()
    torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=0)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=0)
