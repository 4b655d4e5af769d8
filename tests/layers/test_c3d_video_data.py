"""C3D-v1.0's VideoData (facebookarchive/C3D @ 71336a2, src/caffe/layers/video_data_layer.cpp and
src/caffe/util/image_io.cpp) against a port of its prefetch loop fed by frames read here with OpenCV: frame
folders and videos, sampling_rate, crops, mirrors, the 5-D mean and mean_value, temporal jitter, unreadable
clips (skipped in TRAIN, an error in TEST), and the one type name it shares with SSD's VideoData."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data.examples import read_video, write_video
from neocaffe.layers.base import TEST, TRAIN, BuildContext, LayerSetupError
from neocaffe.layers.c3d_video_data import C3DVideoData
from neocaffe.layers.registry import get_layer_class
from neocaffe.layers.video_data import VideoData
from neocaffe.proto import caffe_pb2
from tests.io.c3d_files import c3d_blob

f32 = np.float32
N_FRAMES, H, W, L = 12, 10, 14, 4


@pytest.fixture()
def clips(tmp_path):
    """Two frame folders (frames 1-12, ``%06d.jpg``), a video of the first one's frames, and a C3D mean."""
    g = np.random.default_rng(3)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(1, N_FRAMES + 1):
            cv2.imwrite(str(tmp_path / name / f"{i:06d}.jpg"), g.integers(0, 256, (H, W, 3), dtype=np.uint8))
    write_video(str(tmp_path / "v.avi"), [cv2.imread(str(tmp_path / "a" / f"{i:06d}.jpg")) for i in range(1, N_FRAMES + 1)])
    (tmp_path / "mean.binaryproto").write_bytes(c3d_blob(g.uniform(90, 130, (1, 3, L, 8, 12)).astype(f32)))
    return tmp_path


def _layer(text: str, phase=TEST):
    p = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(p.type)(p, [], phase, BuildContext(data_workers=0))


def _param(src, extra="", tops='top: "data" top: "label"'):
    return f'name: "v" type: "VideoData" {tops} image_data_param {{ source: "{src}" {extra} }}'


def frame_clip(folder, start, length, size=(0, 0), rate=1):
    """ReadImageSequenceToVolumeDatum's buffer: 3 x length x H x W."""
    frames = []
    for i in range(start, start + length * rate, rate):
        img = cv2.imread(f"{folder}/{i:06d}.jpg", cv2.IMREAD_COLOR)
        frames.append(cv2.resize(img, (size[1], size[0])) if size[0] else img)
    return np.stack(frames).transpose(3, 0, 1, 2)


def transform(clip, mean, crop, h_off, w_off, mirror, scale):
    """The prefetch loop's copy: (datum - mean at the same index) * scale, the crop mirrored."""
    c, l, h, w = clip.shape
    out = np.empty((c, l, crop, crop), f32)
    for ww in range(crop):
        col = (clip[..., h_off:h_off + crop, w_off + ww].astype(f32) - mean[..., h_off:h_off + crop, w_off + ww]) * f32(scale)
        out[..., crop - 1 - ww if mirror else ww] = col
    return out


def test_frames_test_phase_matches_the_fork(clips):
    (clips / "list.txt").write_text(f"{clips}/a/ 1 0\n{clips}/b/ 5 3\n{clips}/a/ 9 1\n")
    layer = _layer(_param(clips / "list.txt", f'use_image: true mean_file: "{clips}/mean.binaryproto" batch_size: 2 '
                          'new_length: 4 new_height: 8 new_width: 12 crop_size: 6 scale: 0.5'))
    assert isinstance(layer, C3DVideoData) and layer.type_name == "VideoData"
    assert layer.reshape([]) == [(2, 3, 4, 6, 6), (2, 1, 1, 1, 1)]
    mean = np.asarray(c3d_mean(clips))
    rows = [("a", 1, 0), ("b", 5, 3), ("a", 9, 1), ("a", 1, 0)]  # the list wraps
    for k in range(2):
        data, label = layer()
        for i in range(2):
            name, start, lab = rows[2 * k + i]
            want = transform(frame_clip(clips / name, start, 4, (8, 12)), mean, 6, 1, 3, False, 0.5)
            np.testing.assert_array_equal(data[i].numpy(), want)
            assert label[i].item() == lab
    layer.close()


def c3d_mean(clips):
    from neocaffe.io.binaryproto import read_blobproto

    return read_blobproto(clips / "mean.binaryproto").data[0]


def test_frames_train_crops_and_mirrors(clips):
    (clips / "list.txt").write_text(f"{clips}/a/ 1 0\n{clips}/b/ 2 1\n")
    layer = _layer(_param(clips / "list.txt", f'use_image: true mean_file: "{clips}/mean.binaryproto" batch_size: 4 '
                          'new_length: 4 new_height: 8 new_width: 12 crop_size: 5 mirror: true shuffle: true'), TRAIN)
    batch = layer._maker().make(0)  # batch 0 as the layer's first forward makes it
    data, label = layer()
    mean = np.asarray(c3d_mean(clips))
    seen = set()
    for i in range(4):
        h0, w0 = (int(v) for v in batch["offsets"][i])
        assert 0 <= h0 < 8 - 5 and 0 <= w0 < 12 - 5  # rand % (height - crop): never the last offset
        name = "a" if label[i].item() == 0 else "b"
        clip = frame_clip(clips / name, 1 if name == "a" else 2, 4, (8, 12))
        np.testing.assert_array_equal(data[i].numpy(), transform(clip, mean, 5, h0, w0, bool(batch["mirror"][i]), 1))
        seen.add(name)
    assert seen == {"a", "b"} and label.shape == (4, 1, 1, 1, 1)
    layer.close()


def test_video_with_sampling_rate_and_mean_value(clips):
    (clips / "list.txt").write_text(f"{clips}/v.avi 0 0\n{clips}/v.avi 3 1\n{clips}/v.avi 5 2\n")
    layer = _layer(_param(clips / "list.txt", 'use_image: false batch_size: 3 new_length: 3 sampling_rate: 2 '
                          'mean_value: 100', tops='top: "data"'))
    frames = read_video(str(clips / "v.avi"))
    (data,) = layer()
    assert tuple(data.shape) == (3, 3, 3, H, W)
    for i, s in enumerate((0, 3, 5)):
        want = (np.stack(frames[s:s + 6:2]).transpose(3, 0, 1, 2).astype(f32) - f32(100)) * f32(1)
        np.testing.assert_array_equal(data[i].numpy(), want)
    layer.close()


def test_video_temporal_jitter(clips):
    (clips / "list.txt").write_text(f"{clips}/v.avi 4\n")  # <video> <label>: a random start
    layer = _layer(_param(clips / "list.txt", 'batch_size: 3 new_length: 5 use_temporal_jitter: true'))
    frames = np.stack(read_video(str(clips / "v.avi"))).transpose(3, 0, 1, 2)
    data, label = layer()
    for i in range(3):
        starts = [s for s in range(N_FRAMES - 5 + 1) if np.array_equal(data[i].numpy(), frames[:, s:s + 5])]
        assert starts, "every clip is 5 consecutive frames of the video"
    assert label.flatten().tolist() == [4, 4, 4]
    layer.close()


def test_unreadable_clips(clips):
    (clips / "list.txt").write_text(f"{clips}/a/ 1 0\n{clips}/a/ 11 1\n{clips}/b/ 1 2\n")  # 11..14: past the end
    text = _param(clips / "list.txt", 'use_image: true batch_size: 2 new_length: 4')
    with pytest.raises(Exception, match="Testing must not miss any example"):
        layer = _layer(text, TEST)
        try:
            layer()
        finally:
            layer.close()
    layer = _layer(text, TRAIN)  # TRAIN skips it: batch 0 takes the entry after its own
    _, label = layer()
    assert label.flatten().tolist() == [0, 2]
    layer.close()


@pytest.mark.parametrize("extra,phase,match", [
    ('use_image: true batch_size: 1 new_length: 4 mirror: true', TRAIN, "mirror and crop_size"),
    ('use_image: true batch_size: 1 new_length: 4 crop_size: 6 mirror: true', TEST, "TEST phase"),
    ('use_image: true batch_size: 1 new_length: 4 crop_size: 10', TEST, "smaller than the clip's 10x14"),
    ('use_image: true batch_size: 1', TEST, "new_length must be positive"),
    ('use_image: true batch_size: 1 new_length: 4 new_height: 8', TEST, "set together"),
    ('use_image: true batch_size: 1 new_length: 3 mean_file: "{m}"', TEST, r"\(1, 3, 4, 8, 12\).*\(1, 3, 3, 10, 14\)"),
])
def test_refusals(clips, extra, phase, match):
    (clips / "list.txt").write_text(f"{clips}/a/ 1 0\n")
    with pytest.raises(LayerSetupError, match=match):
        _layer(_param(clips / "list.txt", extra.replace("{m}", f"{clips}/mean.binaryproto")), phase)


def test_list_errors(clips):
    (clips / "list.txt").write_text(f"{clips}/a/ 1\n")
    with pytest.raises(LayerSetupError, match=r"list.txt:1: expected '<frame folder or video> <start frame> <label>'"):
        _layer(_param(clips / "list.txt", 'use_image: true batch_size: 1 new_length: 4'))
    (clips / "list.txt").write_text("\n")
    with pytest.raises(LayerSetupError, match="lists no clips"):
        _layer(_param(clips / "list.txt", 'use_image: true batch_size: 1 new_length: 4'))


def test_the_type_name_is_shared_with_ssd(clips):
    """NUMBERING.md rule 6: image_data_param makes a VideoData C3D's; SSD's fields (or none) keep SSD's."""
    from neocaffe.data.examples import video_example

    ssd = _layer(f'name: "v" type: "VideoData" top: "data" video_data_param {{ video_type: VIDEO video_file: '
                 f'"{video_example()}" }} data_param {{ batch_size: 1 }}')
    assert type(ssd) is VideoData
    ssd.close()
    (clips / "list.txt").write_text(f"{clips}/a/ 1 0\n")
    with pytest.raises(LayerSetupError, match="one VideoData layer is of one lineage"):
        _layer(_param(clips / "list.txt", 'use_image: true new_length: 4') + ' data_param { batch_size: 1 }')
    layer = _layer(_param(clips / "list.txt", 'use_image: true batch_size: 1 new_length: 4'))
    assert type(layer) is C3DVideoData
    state = layer.resume_state()
    layer()
    layer.load_resume_state(state)  # a resumed run reads from the snapshot's batch
    assert torch.equal(layer()[0], _layer(_param(clips / "list.txt", 'use_image: true batch_size: 1 new_length: 4'))()[0])
    layer.close()
