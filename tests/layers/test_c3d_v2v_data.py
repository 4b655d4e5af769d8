"""C3D-v1.0's VideoSegmentationData and VideoWithVoxelTruthData (facebookarchive/C3D @ 71336a2,
src/caffe/layers/video_segmentation_data_layer.cpp, video_with_voxel_truth_data_layer.cpp and
src/caffe/util/image_io.cpp's load_blob_from_uint8_binary / load_blob_from_binary) against a NumPy port of
their prefetch loops, fed by blob files written here byte by byte: crops, mirrors, the 5-D mean and
mean_value, the truth as read, scaled, clipped and (a mirrored flow) negated, shuffled lists, rand_skip,
files that do not open (skipped in TRAIN, an error in TEST), and bad files and lists named by file:line."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from neocaffe import rng
from neocaffe.data.datum import DatumError
from neocaffe.layers.base import TEST, TRAIN, BuildContext, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.io.c3d_files import c3d_blob

f32 = np.float32
SEG, VOX = "VideoSegmentationData", "VideoWithVoxelTruthData"


def blob_file(path, vol, dtype, num=1, dims=None):
    """A C3D blob file as save_blob_to_binary lays it out: int32 n, c, l, h, w, then the values."""
    vol = np.asarray(vol, dtype)
    head = np.asarray(dims if dims is not None else (num,) + vol.shape, "<i4").tobytes()
    path.write_bytes(head + np.concatenate([vol.ravel()] * num).astype(np.dtype(dtype).newbyteorder("<")).tobytes())


def volumes(tmp_path, n, shape, kind, truth=1, name="v", seed=0):
    """``n`` volume files (frames 0-255, the truth channels labels 0-7 or flows in [-20, 20]) and their list."""
    g = np.random.default_rng(seed)
    C, L, H, W = shape
    vols = []
    for i in range(n):
        frames = g.integers(0, 256, (C - truth, L, H, W)).astype(kind)
        t = g.integers(0, 8, (truth, L, H, W)) if kind == np.uint8 else g.uniform(-20, 20, (truth, L, H, W))
        vol = np.concatenate([frames, t.astype(kind)])
        blob_file(tmp_path / f"{name}{i}.bin", vol, kind)
        vols.append(vol)
    (tmp_path / f"{name}.txt").write_text("".join(f"{tmp_path}/{name}{i}.bin\n" for i in range(n)))
    return vols


def _layer(type_name, src, extra, phase=TEST, seed=1):
    rng.set_seed(seed)
    p = text_format.Parse(f'name: "v" type: "{type_name}" top: "data" top: "truth" image_data_param {{ '
                          f'source: "{src}" {extra} }}', caffe_pb2.LayerParameter())
    return get_layer_class(type_name)(p, [], phase, BuildContext(data_workers=0))


def fork_item(vol, mean, scale, crop, h_off, w_off, mirror, T, truth_rule):
    """One item of the prefetch loop (item_id 0): the fork's flat indices, its float32 arithmetic."""
    C, L, H, W = vol.shape
    data, m = vol.astype(f32).ravel(), mean.astype(f32).ravel()
    if not crop:  # the fork's no-crop copy; it writes item i at i * (C L H W): see the layer's deviations
        size, truth_size = data.size, T * L * H * W
        top, truth = np.zeros(size - truth_size, f32), np.zeros(truth_size, f32)
        for j in range(size):
            if j < size - truth_size:
                top[j] = (data[j] - m[j]) * f32(scale)
            else:
                truth[j - size + truth_size] = data[j]
        return top.reshape(C - T, L, H, W), truth.reshape(T, L, H, W)
    top, truth = np.zeros((C - T) * L * crop * crop, f32), np.zeros(T * L * crop * crop, f32)
    for c in range(C):
        for l in range(L):
            for h in range(crop):
                for w in range(crop):
                    ww = crop - 1 - w if mirror else w
                    top_index = ((c * L + l) * crop + h) * crop + ww
                    data_index = ((c * L + l) * H + h + h_off) * W + w + w_off
                    truth_index = (((c - C + T) * L + l) * crop + h) * crop + ww
                    if c < C - T:
                        top[top_index] = (data[data_index] - m[data_index]) * f32(scale)
                    else:
                        truth[truth_index] = truth_rule(data[data_index], c == C - T and mirror)
    return top.reshape(C - T, L, crop, crop), truth.reshape(T, L, crop, crop)


def as_read(v, negate):
    return v


def flow_rule(truth_scale, clip=None, is_flow=False):
    """The fork's truth with a crop: the first truth channel of a mirrored flow negated, then clipped or scaled."""
    def rule(v, first_mirrored):
        if is_flow and first_mirrored:
            v = -v
        if clip is not None:
            lo, hi = f32(clip[0]), f32(clip[1])
            t = (v - lo) / (hi - lo)
            return f32(0) if t < 0 else f32(1) if t > 1 else t
        return v * f32(truth_scale)
    return rule


def check_batches(layer, vols, mean, scale, crop, T, rule, batches, batch_size):
    """The layer's next ``batches`` batches against the fork's loop, with each batch's entries, offsets and
    mirror flags as the maker draws them; returns the mirror flags seen."""
    maker, seen = layer._maker(), set()
    for k in range(batches):
        _, entries = maker.batch_entries(k)
        drawn = maker.make(k)
        data, truth = layer()
        for i, e in enumerate(entries):
            h0, w0 = (int(v) for v in drawn["offsets"][i])
            want = fork_item(vols[int(e.path[-5])], mean, scale, crop, h0, w0, bool(drawn["mirror"][i]), T, rule)
            np.testing.assert_array_equal(data[i].numpy(), want[0], err_msg=f"batch {k} item {i}")
            np.testing.assert_array_equal(truth[i].numpy(), want[1], err_msg=f"batch {k} item {i}")
            seen.add(bool(drawn["mirror"][i]))
    layer.close()
    return seen


def test_segmentation_train_crops_mirrors_shuffles_as_the_fork(tmp_path):
    vols = volumes(tmp_path, 3, (4, 3, 7, 8), np.uint8)
    mean = np.random.default_rng(1).uniform(90, 130, (1, 3, 3, 7, 8)).astype(f32)
    (tmp_path / "mean.binaryproto").write_bytes(c3d_blob(mean))
    layer = _layer(SEG, tmp_path / "v.txt", f'mean_file: "{tmp_path}/mean.binaryproto" batch_size: 2 crop_size: 4 '
                   'mirror: true shuffle: true scale: 0.5', TRAIN)
    assert layer.reshape([]) == [(2, 3, 3, 4, 4), (2, 1, 3, 4, 4)]
    seen = check_batches(layer, vols, mean[0], 0.5, 4, 1, as_read, 4, 2)
    assert seen == {False, True}


def test_segmentation_test_phase_without_crop_and_mean_value(tmp_path):
    vols = volumes(tmp_path, 3, (3, 2, 4, 5), np.uint8)  # C != L: the fork's truth top would be 2 x 1 x 3 x 4 x 5
    layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 2 mean_value: 100 scale: 0.25")
    assert layer.reshape([]) == [(2, 2, 2, 4, 5), (2, 1, 2, 4, 5)]
    check_batches(layer, vols, np.full((2, 2, 4, 5), 100, f32), 0.25, 0, 1, as_read, 3, 2)  # wraps the list


def test_segmentation_test_phase_centre_crop(tmp_path):
    vols = volumes(tmp_path, 2, (4, 2, 8, 9), np.uint8)
    layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 1 crop_size: 5")
    maker = layer._maker()
    assert [tuple(maker.make(k)["offsets"][0]) for k in range(2)] == [(1, 2), (1, 2)]
    check_batches(layer, vols, np.zeros((3, 2, 8, 9), f32), 1, 5, 1, as_read, 2, 1)


def test_voxel_truth_flow_mirror_negates_and_scales_as_the_fork(tmp_path):
    vols = volumes(tmp_path, 3, (5, 2, 6, 7), f32, truth=2)
    mean = np.random.default_rng(2).uniform(90, 130, (1, 3, 2, 6, 7)).astype(f32)
    (tmp_path / "mean.binaryproto").write_bytes(c3d_blob(mean))
    layer = _layer(VOX, tmp_path / "v.txt", f'mean_file: "{tmp_path}/mean.binaryproto" num_truth_channels: 2 '
                   'batch_size: 3 crop_size: 4 mirror: true is_flow: true shuffle: true truth_scale: 0.125', TRAIN)
    assert layer.reshape([]) == [(3, 3, 2, 4, 4), (3, 2, 2, 4, 4)]
    seen = check_batches(layer, vols, mean[0], 1, 4, 2, flow_rule(0.125, is_flow=True), 3, 3)
    assert seen == {False, True}


def test_voxel_truth_bytes_clipped_in_the_test_phase(tmp_path):
    vols = volumes(tmp_path, 2, (3, 2, 6, 6), np.uint8)
    vols = [np.concatenate([v[:2], np.random.default_rng(i).integers(0, 256, v[2:].shape).astype(np.uint8)])
            for i, v in enumerate(vols)]
    for i, v in enumerate(vols):
        blob_file(tmp_path / f"v{i}.bin", v, np.uint8)
    layer = _layer(VOX, tmp_path / "v.txt", "use_byte_input: true batch_size: 2 crop_size: 3 clip_min: 50.3 "
                   "clip_max: 200 mean_value: 7 scale: 0.1")
    check_batches(layer, vols, np.full((2, 2, 6, 6), 7, f32), f32(0.1), 3, 1, flow_rule(1, clip=(f32(50.3), 200)), 2, 2)
    layer = _layer(VOX, tmp_path / "v.txt", "use_byte_input: true batch_size: 2 crop_size: 3 clip_min: 10")
    # clip_max unset: the fork's 0, a range of -10 (values 0-10 map to 1-0, larger ones to 0)
    check_batches(layer, vols, np.zeros((2, 2, 6, 6), f32), 1, 3, 1, flow_rule(1, clip=(10, 0)), 1, 2)


def test_voxel_truth_without_crop_is_copied_as_read(tmp_path):
    vols = volumes(tmp_path, 2, (4, 3, 4, 5), f32, truth=2)
    layer = _layer(VOX, tmp_path / "v.txt", "num_truth_channels: 2 batch_size: 2 truth_scale: 0.125 clip_min: 0 "
                   "clip_max: 1 is_flow: true")
    assert layer.reshape([]) == [(2, 2, 3, 4, 5), (2, 2, 3, 4, 5)]
    check_batches(layer, vols, np.zeros((2, 3, 4, 5), f32), 1, 0, 2, as_read, 1, 2)


def test_files_that_do_not_open(tmp_path):
    vols = volumes(tmp_path, 3, (4, 2, 5, 5), np.uint8)
    (tmp_path / "v1.bin").unlink()
    with pytest.raises(DatumError, match=r"layer 'v' \(VideoSegmentationData\): .*v.txt:2: cannot open '.*v1.bin' "
                                         r"\(Testing must not miss any example\)"):
        layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 2")
        try:
            layer()
        finally:
            layer.close()
    layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 2", TRAIN)  # TRAIN skips it: batch 0 takes the next
    _, truth = layer()
    np.testing.assert_array_equal(truth.numpy()[:, 0], np.stack([vols[0][3], vols[2][3]]))
    layer.close()
    (tmp_path / "v0.bin").unlink()  # the first file: the fork's CHECK at setup, in every phase
    with pytest.raises(LayerSetupError, match=r"v.txt:1: cannot open '.*v0.bin' \(the fork's CHECK at setup"):
        _layer(SEG, tmp_path / "v.txt", "batch_size: 2", TRAIN)


def test_bad_files_name_the_list_line(tmp_path):
    volumes(tmp_path, 3, (4, 2, 5, 5), np.uint8)
    (tmp_path / "v1.bin").write_bytes((tmp_path / "v1.bin").read_bytes()[:-3])
    with pytest.raises(DatumError, match=r"v.txt:2: '.*v1.bin' holds 197 bytes after its header; its dims 1x4x2x5x5 "
                                         r"need 200 \(uint8 values\)"):
        layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 2", TRAIN)
        try:
            layer()
        finally:
            layer.close()
    (tmp_path / "v0.bin").write_bytes(b"\x01\x00\x00\x00")
    with pytest.raises(LayerSetupError, match=r"v.txt:1: '.*v0.bin' holds 4 bytes; a C3D blob file starts with 5 int32"):
        _layer(SEG, tmp_path / "v.txt", "batch_size: 2")
    blob_file(tmp_path / "v0.bin", np.zeros((4, 2, 5, 5)), f32)  # a float32 file read as uint8
    with pytest.raises(LayerSetupError, match=r"need 200 \(uint8 values\) \(a file of float32 values\? "
                                              r"VideoSegmentationData reads uint8 files only\)"):
        _layer(SEG, tmp_path / "v.txt", "batch_size: 2")
    blob_file(tmp_path / "v0.bin", np.zeros((4, 2, 5, 5)), np.uint8)
    with pytest.raises(LayerSetupError, match=r"need 800 \(float32 values\) \(a file of uint8 values\? set "
                                              r"use_byte_input: true\)"):
        _layer(VOX, tmp_path / "v.txt", "batch_size: 2")
    blob_file(tmp_path / "v0.bin", np.zeros((4, 2, 5, 5)), np.uint8, dims=(1, 4, 0, 5, 5))
    with pytest.raises(LayerSetupError, match="has dims 1x4x0x5x5 .*expected positive dims"):
        _layer(SEG, tmp_path / "v.txt", "batch_size: 2")
    blob_file(tmp_path / "v0.bin", np.zeros((4, 2, 5, 5)), np.uint8)
    blob_file(tmp_path / "v1.bin", np.zeros((4, 2, 5, 6)), np.uint8)
    with pytest.raises(DatumError, match=r"v.txt:2: '.*v1.bin' holds a volume of 4x2x5x6, the first file's 4x2x5x5"):
        layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 2")
        try:
            layer()
        finally:
            layer.close()


def test_two_items_in_a_file_give_the_first(tmp_path):
    vol = np.arange(2 * 2 * 3 * 4, dtype=np.uint8).reshape(2, 2, 3, 4)
    blob_file(tmp_path / "v0.bin", vol, np.uint8, num=2)
    (tmp_path / "v.txt").write_text(f"{tmp_path}/v0.bin\n")
    layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 1")
    data, truth = layer()
    np.testing.assert_array_equal(data.numpy()[0], vol[:1])
    np.testing.assert_array_equal(truth.numpy()[0], vol[1:])
    layer.close()


def test_list_errors(tmp_path):
    volumes(tmp_path, 2, (4, 2, 5, 5), np.uint8)
    (tmp_path / "bad.txt").write_text(f"{tmp_path}/v0.bin\n\n{tmp_path}/v1.bin 3\n")
    with pytest.raises(LayerSetupError, match=r"bad.txt:3: expected one volume file per line \('<file.bin>'\); "
                                              r"received '.*v1.bin 3'"):
        _layer(SEG, tmp_path / "bad.txt", "batch_size: 1")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(LayerSetupError, match="lists no volume files"):
        _layer(SEG, tmp_path / "empty.txt", "batch_size: 1")
    with pytest.raises(LayerSetupError, match="cannot read the volume list"):
        _layer(SEG, tmp_path / "none.txt", "batch_size: 1")


@pytest.mark.parametrize("type_name,extra,phase,match", [
    (SEG, "batch_size: 1 mirror: true", TRAIN, "mirror and crop_size"),
    (SEG, "batch_size: 1 crop_size: 3 mirror: true", TEST, "TEST phase"),
    (SEG, "batch_size: 1 crop_size: 5", TEST, r"crop_size 5 must be smaller than the volumes' 5x6"),
    (SEG, 'batch_size: 1 mean_file: "{m}"', TEST, r"\(1, 3, 2, 5, 5\).*need \(1, 3, 2, 5, 6\)"),
    (VOX, "batch_size: 1 use_byte_input: true num_truth_channels: 4", TEST, "holds 4 channel.*expected more than 4"),
    (VOX, "batch_size: 1 use_byte_input: true num_truth_channels: 0", TEST, "num_truth_channels must be positive"),
    (SEG, "batch_size: 0", TEST, "batch_size must be positive"),
    (SEG, "batch_size: 1 rand_skip: 1000000", TEST, r"lists only 2 volume files"),
])
def test_refusals(tmp_path, type_name, extra, phase, match):
    volumes(tmp_path, 2, (4, 2, 5, 6), np.uint8)
    (tmp_path / "mean.binaryproto").write_bytes(c3d_blob(np.zeros((1, 3, 2, 5, 5), f32)))
    with pytest.raises(LayerSetupError, match=match):
        _layer(type_name, tmp_path / "v.txt", extra.replace("{m}", f"{tmp_path}/mean.binaryproto"), phase)


def test_transform_param_is_refused(tmp_path):
    volumes(tmp_path, 1, (4, 2, 5, 6), np.uint8)
    p = text_format.Parse(f'name: "v" type: "{SEG}" top: "data" top: "truth" image_data_param {{ source: '
                          f'"{tmp_path}/v.txt" }} transform_param {{ scale: 2 }}', caffe_pb2.LayerParameter())
    with pytest.raises(LayerSetupError, match="transform_param is not read by C3D-v1.0's VideoSegmentationData"):
        get_layer_class(SEG)(p, [], TEST)


def test_rand_skip_and_resume(tmp_path):
    vols = volumes(tmp_path, 5, (4, 2, 5, 5), np.uint8)
    layer = _layer(SEG, tmp_path / "v.txt", "batch_size: 2 rand_skip: 5", seed=4)
    assert 0 < layer.skip < 5
    for k in range(3):  # entries skip + 2k, skip + 2k + 1, wrapping
        _, truth = layer()
        for i in range(2):
            np.testing.assert_array_equal(truth[i, 0].numpy(), vols[(layer.skip + 2 * k + i) % 5][3])
    state = layer.resume_state()
    want = [t.numpy() for t in layer()]
    other = _layer(SEG, tmp_path / "v.txt", "batch_size: 2 rand_skip: 5", seed=9)
    other.load_resume_state(state)
    for w, g in zip(want, other()):
        np.testing.assert_array_equal(g.numpy(), w)
    layer.close()
    other.close()
