"""VideoData (SSD's weiliu89/caffe ssd ``src/caffe/layers/video_data_layer.cpp``) against a line-by-line port of
its load_batch loop and of ``DataTransformer::Transform(const cv::Mat&)``, fed by frames read here with
cv2.VideoCapture; the end of the video (log line, KeyboardInterrupt, ``caffe test`` interrupted, workers
gone), unreadable frames, missing sources, the resume position."""
from __future__ import annotations

import logging
import multiprocessing
import os

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe.data.datum import DatumError
from neocaffe.data.examples import read_video, write_video
from neocaffe.layers.base import TEST, BuildContext, LayerSetupError
from neocaffe.layers.video_data import VideoData
from neocaffe.proto import caffe_pb2

N_FRAMES, H, W = 12, 24, 32


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 12-frame MJPG video of 24 x 32 frames, each unlike the others, and its frames as OpenCV reads them."""
    path = str(tmp_path_factory.mktemp("video") / "clip.avi")
    g = np.random.default_rng(7)
    frames = g.integers(0, 256, (N_FRAMES, H, W, 3), dtype=np.uint8)
    frames[:, :4, :4] = np.arange(N_FRAMES, dtype=np.uint8)[:, None, None, None] * 20  # an index patch
    write_video(path, frames)
    cap = cv2.VideoCapture(path)
    assert cap.isOpened(), "this OpenCV build cannot read back the MJPG video it wrote"
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    cap.release()
    read = read_video(path)
    assert len(read) == N_FRAMES
    assert all(not np.array_equal(a, b) for i, a in enumerate(read) for b in read[i + 1:]), "frames must differ"
    return path, read


class Finished(Exception):
    """raise(SIGINT) in the port."""


class Capture:
    """cap_ and the counters of the fork's VideoDataLayer over the frames read by the test."""

    def __init__(self, frames):
        self.frames, self.pos = frames, 0
        self.total_frames_ = len(frames)  # cap_.get(CV_CAP_PROP_FRAME_COUNT)
        self.processed_frames_ = 0

    def read(self):  # cap_ >> cv_img
        f = self.frames[self.pos] if self.pos < len(self.frames) else None
        self.pos += 1
        return f


def caffe_transform(cv_img, mean_value=(), scale=1.0, crop_size=0, resize=None):
    """DataTransformer::Transform(const cv::Mat&, Blob*) in the TEST phase (no mirror), float32."""
    img = cv_img
    if resize is not None:  # ApplyResize, WARP, LINEAR
        img = cv2.resize(img, (resize[1], resize[0]), interpolation=cv2.INTER_LINEAR)
    img_height, img_width, channels = img.shape
    h_off = w_off = 0
    height, width = img_height, img_width
    if crop_size:
        h_off, w_off = (img_height - crop_size) // 2, (img_width - crop_size) // 2
        height = width = crop_size
    mean_values = list(mean_value) * (channels if len(mean_value) == 1 else 1)
    out = np.zeros((channels, height, width), np.float32)
    for h in range(height):
        for w in range(width):
            for c in range(channels):
                pixel = np.float32(img[h_off + h, w_off + w, c])
                if mean_values:
                    out[c, h, w] = (pixel - np.float32(mean_values[c])) * np.float32(scale)
                else:
                    out[c, h, w] = pixel * np.float32(scale)
    return out


def caffe_load_batch(cap, batch_size, skip_frames_, transform):
    """VideoDataLayer::load_batch (VIDEO), line by line; a write to slot -1 lands in ``before``."""
    top_data = np.zeros((batch_size, *transform(cap.frames[0]).shape), np.float32)
    top_label = np.ones(batch_size, np.float32)
    before = []

    def write(item_id, value):
        if item_id < 0:
            before.append(value)
        else:
            top_data[item_id] = value

    skip_frames = skip_frames_
    item_id = 0
    while item_id < batch_size:
        if cap.processed_frames_ >= cap.total_frames_:
            raise Finished  # LOG(INFO) << "Finished processing video."; raise(SIGINT);
        cap.processed_frames_ += 1
        cv_img = cap.read()
        assert cv_img is not None, "Could not load image!"
        if skip_frames > 0:
            skip_frames -= 1
            item_id -= 1
        else:
            skip_frames = skip_frames_
            write(item_id, transform(cv_img))
        assert cv_img is not None, "Could not load image!"
        write(item_id, transform(cv_img))
        if item_id >= 0:
            top_label[item_id] = 0
        item_id += 1
    return top_data, top_label


def caffe_batches(frames, batch_size, skip_frames, transform):
    cap, out = Capture(frames), []
    while True:
        try:
            out.append(caffe_load_batch(cap, batch_size, skip_frames, transform))
        except Finished:
            return out


def make_layer(path, batch_size, skip=0, tp="", tops=2, workers=0, video_type="VIDEO", extra=""):
    top = 'top: "data" top: "label"' if tops == 2 else 'top: "data"'
    text = (f'name: "vid" type: "VideoData" {top} video_data_param {{ video_type: {video_type} '
            f'{f"video_file: {chr(34)}{path}{chr(34)}" if path else ""} skip_frames: {skip} {extra} }} '
            f'data_param {{ batch_size: {batch_size} }} transform_param {{ {tp} }}')
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return VideoData(param, [], TEST, BuildContext(data_workers=workers))


CASES = [  # batch_size, skip_frames, transform_param, the reference transform's arguments, workers
    (4, 0, "mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5",
     dict(mean_value=(104, 117, 123), scale=0.5), 0),
    (5, 0, "scale: 0.25", dict(scale=0.25), 1),
    (3, 1, "resize_param { prob: 1 resize_mode: WARP height: 10 width: 14 interp_mode: LINEAR } mean_value: 100",
     dict(resize=(10, 14), mean_value=(100,)), 0),
    (2, 2, "crop_size: 8 mean_value: 100", dict(crop_size=8, mean_value=(100,)), 1),
    (1, 2, "", {}, 0),
    (5, 1, "resize_param { prob: 1 resize_mode: WARP height: 6 width: 9 } scale: 0.5",
     dict(resize=(6, 9), scale=0.5), 0),
]


@pytest.mark.parametrize("batch_size,skip,tp,ref,workers", CASES)
def test_batches_match_the_forks_loop_until_the_video_ends(video, caplog, batch_size, skip, tp, ref, workers):
    path, frames = video
    want = caffe_batches(frames, batch_size, skip, lambda img: caffe_transform(img, **ref))
    assert len(want) == N_FRAMES // (batch_size * (skip + 1))  # a batch the video cannot fill is never made
    layer = make_layer(path, batch_size, skip, tp, workers=workers)
    assert layer.reshape([]) == [want[0][0].shape, (batch_size,)]
    try:
        for k, (data, label) in enumerate(want):
            got = layer()
            np.testing.assert_array_equal(got[0].numpy(), data, err_msg=f"batch {k}")
            np.testing.assert_array_equal(got[1].numpy(), label, err_msg=f"batch {k} labels")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="neocaffe.data"), pytest.raises(KeyboardInterrupt, match="vid"):
            layer()
        assert "Finished processing video." in caplog.messages
        with pytest.raises(KeyboardInterrupt):  # the end stays the end
            layer()
    finally:
        layer.close()
    assert not multiprocessing.active_children()


def test_skip_frames_slots_are_the_forks_not_a_plain_stride(video):
    """skip_frames 1, batch 3: the fork keeps frames 2, 4, 5 (not 1, 3, 5): slot 0 is overwritten by the
    frame read after it, and only the last slot keeps its own frame."""
    path, frames = video
    layer = make_layer(path, 3, 1, tops=1)
    try:
        got = layer()[0].numpy()
    finally:
        layer.close()
    for slot, frame in enumerate((2, 4, 5)):
        np.testing.assert_array_equal(got[slot], frames[frame].transpose(2, 0, 1).astype(np.float32))


def test_caffe_test_ends_as_an_interrupted_run(video, tmp_path, capfd, monkeypatch):
    from neocaffe.cli.caffe import main
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.io.weights import save_weights

    path, _ = video
    text = (f'name: "v" layer {{ name: "data" type: "VideoData" top: "data" video_data_param {{ video_type: VIDEO '
            f'video_file: "{path}" }} data_param {{ batch_size: 4 }} }}\n'
            'layer { name: "sum" type: "Reduction" bottom: "data" top: "sum" }\n')
    (tmp_path / "net.prototxt").write_text(text)
    net = Net(read_net(text), TEST)
    save_weights(str(tmp_path / "w.caffemodel"), net.to_weights())
    net.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", "1")  # frames read in a worker process
    capfd.readouterr()
    code = main(["test", "-model", "net.prototxt", "-weights", "w.caffemodel", "-iterations", "10"])
    err = capfd.readouterr().err
    assert code == 130, err
    assert "Finished processing video." in err and "Interrupted." in err
    assert "Batch 2, sum = " in err and "Batch 3" not in err  # 12 frames: three batches of 4
    assert not multiprocessing.active_children()


def test_an_unreadable_frame_names_the_video(video, tmp_path):
    path, _ = video
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.avi")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    cap = cv2.VideoCapture(cut)
    count, readable = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while cap.read()[0]:
        readable += 1
    cap.release()
    if not (0 < readable < count):
        pytest.skip(f"this FFmpeg reads the truncated video as {readable} of {count} frames")
    layer = make_layer(cut, 2)
    try:
        for _ in range(readable // 2):
            layer()
        with pytest.raises(DatumError, match=r"layer 'vid' \(VideoData\): video '.*cut\.avi': Could not load image!"):
            layer()
    finally:
        layer.close()


def test_missing_sources_are_clear_errors(tmp_path):
    missing = str(tmp_path / "nothing.avi")
    with pytest.raises(LayerSetupError, match=r"layer 'vid' \(VideoData\): Failed to open video: .*nothing\.avi"):
        make_layer(missing, 2)
    with pytest.raises(LayerSetupError, match="Must provide video file!"):
        make_layer("", 2)
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(LayerSetupError, match="Failed to open video: .*garbage.avi"):
        make_layer(str(garbage), 2)
    if os.path.exists("/dev/video977"):  # pragma: no cover
        pytest.skip("a camera 977 exists here")
    with pytest.raises(LayerSetupError, match=r"layer 'vid' \(VideoData\): Failed to open webcam: 977"):
        make_layer("", 2, video_type="WEBCAM", extra="device_id: 977")


def test_resume_continues_the_video_and_a_new_skip_starts_over(video, caplog):
    path, _ = video
    first, second = make_layer(path, 2, 1, tops=1), make_layer(path, 2, 1, tops=1)
    third, fresh = make_layer(path, 2, 0, tops=1), make_layer(path, 2, 0, tops=1)
    try:
        first()
        state = first.resume_state()
        assert state["batch"] == 1 and state["skip_frames"] == 1
        want = first()[0].numpy()
        second.load_resume_state(state)
        np.testing.assert_array_equal(second()[0].numpy(), want)
        with caplog.at_level(logging.WARNING, logger="neocaffe.data"):
            third.load_resume_state(state)  # batch 1 of skip 1 is not batch 1 of skip 0
        assert "skip_frames 1, this net has 0; reading from the start" in caplog.text
        np.testing.assert_array_equal(third()[0].numpy(), fresh()[0].numpy())
    finally:
        for layer in (first, second, third, fresh):
            layer.close()
