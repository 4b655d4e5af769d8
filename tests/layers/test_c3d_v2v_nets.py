"""C3D-v1.0's V2V example nets build and run as released: the video segmentation net (GaTech, V1
``VIDEO_SEGMENTATION_DATA`` -> ... -> ``VOXEL_SOFTMAX_LOSS``) and the optical-flow net (UCF101 with Brox flow, V1
``VIDEO_WITH_VOXEL_TRUTH_DATA`` -> ... -> ``EUCLIDEAN_LOSS``), train and test variants, fed by synthetic blob
files. The nets' text is embedded below (the CI has no copy of the fork): the fork's own prototxts with their
comments dropped and whitespace collapsed, nothing else changed; the runs shrink the channel counts and the crop
by text substitutions, the full-size nets are built for their shapes."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from neocaffe.layers.base import TEST, TRAIN
from tests.io.c3d_files import c3d_blob
from tests.layers.test_c3d_v2v_data import blob_file

f32 = np.float32
COMMIT = "71336a2202e7d605a138c239f56be7b8fcfaaf5b"  # facebookarchive/C3D, the C3D-v1.0 folder

# C3D-v1.0/examples/v2v/video_segmentation_gatech/deconv3d_gatech.prototxt @ 71336a2 (comments dropped,
# whitespace collapsed)
GATECH = """
name: "deep_deconv3d_gatech"
layers { name: "data" type: VIDEO_SEGMENTATION_DATA top: "data" top: "truth" image_data_param { source:
  "/data/users/trandu/datasets/gatech/cross_validation_bin_list_scaled.txt" mean_file:
  "train_data_frm_mean.binaryproto" batch_size: 1 crop_size: 112 mirror: true show_data: 0 shuffle: true } }
layers { name: "conv1a" type: CONVOLUTION3D bottom: "data" top: "conv1a" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 64 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layers { name: "relu1a" type: RELU bottom: "conv1a" top: "conv1a" }
layers { name: "pool1" type: POOLING3D bottom: "conv1a" top: "pool1" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 1 stride: 2 temporal_stride: 1 } }
layers { name: "conv2a" type: CONVOLUTION3D bottom: "pool1" top: "conv2a" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 128 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu2a" type: RELU bottom: "conv2a" top: "conv2a" }
layers { name: "pool2" type: POOLING3D bottom: "conv2a" top: "pool2" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 2 stride: 2 temporal_stride: 2 } }
layers { name: "conv3a" type: CONVOLUTION3D bottom: "pool2" top: "conv3a" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 256 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu3a" type: RELU bottom: "conv3a" top: "conv3a" }
layers { name: "conv3b" type: CONVOLUTION3D bottom: "conv3a" top: "conv3b" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 256 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu3b" type: RELU bottom: "conv3b" top: "conv3b" }
layers { name: "pool3" type: POOLING3D bottom: "conv3b" top: "pool3" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 2 stride: 2 temporal_stride: 2 } }
layers { name: "conv4a" type: CONVOLUTION3D bottom: "pool3" top: "conv4a" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu4a" type: RELU bottom: "conv4a" top: "conv4a" }
layers { name: "conv4b" type: CONVOLUTION3D bottom: "conv4a" top: "conv4b" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu4b" type: RELU bottom: "conv4b" top: "conv4b" }
layers { name: "pool4" type: POOLING3D bottom: "conv4b" top: "pool4" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 2 stride: 2 temporal_stride: 2 } }
layers { name: "conv5a" type: CONVOLUTION3D bottom: "pool4" top: "conv5a" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu5a" type: RELU bottom: "conv5a" top: "conv5a" }
layers { name: "conv5b" type: CONVOLUTION3D bottom: "conv5a" top: "conv5b" blobs_lr: 0 blobs_lr: 0 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu5b" type: RELU bottom: "conv5b" top: "conv5b" }
layers { name: "deconv5b" type: DECONVOLUTION3D bottom: "conv5a" top: "deconv5b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 4 kernel_depth: 4 pad: 1
  temporal_pad: 1 stride: 2 temporal_stride: 2 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type:
  "constant" value: 1 } } }
layers { name: "relu5b-de" type: RELU bottom: "deconv5b" top: "deconv5b" }
layers { name: "predict4b" type: CONVOLUTION3D bottom: "conv4b" top: "predict4b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 3 kernel_depth: 3 pad: 1
  temporal_pad: 1 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "concat1" type: CONCAT bottom: "deconv5b" bottom: "predict4b" top: "concat1" concat_param {
  concat_dim: 1 } }
layers { name: "deconv4b" type: DECONVOLUTION3D bottom: "concat1" top: "deconv4b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 4 kernel_depth: 4 pad: 1
  temporal_pad: 1 stride: 2 temporal_stride: 2 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type:
  "constant" value: 1 } } }
layers { name: "relu4b-de" type: RELU bottom: "deconv4b" top: "deconv4b" }
layers { name: "predict3b" type: CONVOLUTION3D bottom: "conv3b" top: "predict3b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 3 kernel_depth: 3 pad: 1
  temporal_pad: 1 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "concat2" type: CONCAT bottom: "deconv4b" bottom: "predict3b" top: "concat2" concat_param {
  concat_dim: 1 } }
layers { name: "deconv3b" type: DECONVOLUTION3D bottom: "concat2" top: "deconv3b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 8 kernel_depth: 4 pad: 2
  temporal_pad: 1 stride: 4 temporal_stride: 2 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type:
  "constant" value: 1 } } }
layers { name: "relu3b-de" type: RELU bottom: "deconv3b" top: "deconv3b" }
layers { name: "predict" type: CONVOLUTION3D bottom: "deconv3b" top: "predict" blobs_lr: 1 blobs_lr: 2 weight_decay:
  1 weight_decay: 0 convolution_param { num_output: 8 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "loss" type: VOXEL_SOFTMAX_LOSS bottom: "predict" bottom: "truth" }
"""

# C3D-v1.0/examples/v2v/ucf101_optical_flow/deconv3d_ucf101_brox.prototxt @ 71336a2 (comments dropped,
# whitespace collapsed)
BROX = """
name: "deep_deconv3d_flying_chair"
layers { name: "data" type: VIDEO_WITH_VOXEL_TRUTH_DATA top: "data" top: "truth" image_data_param { source:
  "/data/users/trandu/datasets/ucf101/list/train_flow01_brox.txt" mean_file: "ucf101_full_mean.binaryproto"
  num_truth_channels: 2 batch_size: 1 crop_size: 112 mirror: true is_flow: true show_data: 0 shuffle: true
  truth_scale: 0.125 } }
layers { name: "conv1a" type: CONVOLUTION3D bottom: "data" top: "conv1a" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 64 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layers { name: "relu1a" type: RELU bottom: "conv1a" top: "conv1a" }
layers { name: "pool1" type: POOLING3D bottom: "conv1a" top: "pool1" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 1 stride: 2 temporal_stride: 1 } }
layers { name: "conv2a" type: CONVOLUTION3D bottom: "pool1" top: "conv2a" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 128 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu2a" type: RELU bottom: "conv2a" top: "conv2a" }
layers { name: "pool2" type: POOLING3D bottom: "conv2a" top: "pool2" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 2 stride: 2 temporal_stride: 2 } }
layers { name: "conv3a" type: CONVOLUTION3D bottom: "pool2" top: "conv3a" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 256 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu3a" type: RELU bottom: "conv3a" top: "conv3a" }
layers { name: "conv3b" type: CONVOLUTION3D bottom: "conv3a" top: "conv3b" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 256 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu3b" type: RELU bottom: "conv3b" top: "conv3b" }
layers { name: "pool3" type: POOLING3D bottom: "conv3b" top: "pool3" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 2 stride: 2 temporal_stride: 2 } }
layers { name: "conv4a" type: CONVOLUTION3D bottom: "pool3" top: "conv4a" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu4a" type: RELU bottom: "conv4a" top: "conv4a" }
layers { name: "conv4b" type: CONVOLUTION3D bottom: "conv4a" top: "conv4b" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu4b" type: RELU bottom: "conv4b" top: "conv4b" }
layers { name: "pool4" type: POOLING3D bottom: "conv4b" top: "pool4" pooling_param { pool: MAX kernel_size: 2
  kernel_depth: 2 stride: 2 temporal_stride: 2 } }
layers { name: "conv5a" type: CONVOLUTION3D bottom: "pool4" top: "conv5a" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu5a" type: RELU bottom: "conv5a" top: "conv5a" }
layers { name: "conv5b" type: CONVOLUTION3D bottom: "conv5a" top: "conv5b" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 512 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "relu5b" type: RELU bottom: "conv5b" top: "conv5b" }
layers { name: "deconv5b" type: DECONVOLUTION3D bottom: "conv5b" top: "deconv5b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 4 kernel_depth: 4 pad: 1
  temporal_pad: 1 stride: 2 temporal_stride: 2 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type:
  "constant" value: 1 } } }
layers { name: "relu5b-de" type: RELU bottom: "deconv5b" top: "deconv5b" }
layers { name: "predict4b" type: CONVOLUTION3D bottom: "conv4b" top: "predict4b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 3 kernel_depth: 3 pad: 1
  temporal_pad: 1 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "concat1" type: CONCAT bottom: "deconv5b" bottom: "predict4b" top: "concat1" concat_param {
  concat_dim: 1 } }
layers { name: "deconv4b" type: DECONVOLUTION3D bottom: "concat1" top: "deconv4b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 4 kernel_depth: 4 pad: 1
  temporal_pad: 1 stride: 2 temporal_stride: 2 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type:
  "constant" value: 1 } } }
layers { name: "relu4b-de" type: RELU bottom: "deconv4b" top: "deconv4b" }
layers { name: "predict3b" type: CONVOLUTION3D bottom: "conv3b" top: "predict3b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 3 kernel_depth: 3 pad: 1
  temporal_pad: 1 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "concat2" type: CONCAT bottom: "deconv4b" bottom: "predict3b" top: "concat2" concat_param {
  concat_dim: 1 } }
layers { name: "deconv3b" type: DECONVOLUTION3D bottom: "concat2" top: "deconv3b" blobs_lr: 1 blobs_lr: 2
  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 64 kernel_size: 8 kernel_depth: 4 pad: 2
  temporal_pad: 1 stride: 4 temporal_stride: 2 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type:
  "constant" value: 1 } } }
layers { name: "relu3b-de" type: RELU bottom: "deconv3b" top: "deconv3b" }
layers { name: "predict" type: CONVOLUTION3D bottom: "deconv3b" top: "predict" blobs_lr: 1 blobs_lr: 2 weight_decay:
  1 weight_decay: 0 convolution_param { num_output: 2 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1
  weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 1 } } }
layers { name: "loss" type: EUCLIDEAN_LOSS bottom: "predict" bottom: "truth" }
"""
# what the fork's *_test.prototxt change (their whole diff against the train nets)
TEST_EDITS = {
    "gatech": [('name: "deep_deconv3d_gatech"', 'name: "deep_c3d_ucf101"'),
               ("gatech/cross_validation_bin_list_scaled.txt", "gatech/external_validation_bin_list_scaled.txt"),
               ("mirror: true", "mirror: false"), ("shuffle: true", "shuffle: false"),
               ('name: "loss" type: VOXEL_SOFTMAX_LOSS bottom: "predict" bottom: "truth"',
                'name: "prob" type: VOXEL_SOFTMAX bottom: "predict" top: "prob"')],
    "brox": [("list/train_flow01_brox.txt", "list/test_flow01_brox.txt"), ("mirror: true", "mirror: false"),
             ("shuffle: true", "shuffle: false")],
}
SHRINK = [(r"num_output: (64|128)\b", "num_output: 4"), (r"num_output: (256|512)\b", "num_output: 6"),
          (r"crop_size: 112\b", "crop_size: 16"), (r"batch_size: 1\b", "batch_size: 2")]


def net_text(which: str, test: bool, shrink: bool) -> str:
    text = GATECH if which == "gatech" else BROX
    for old, new in TEST_EDITS[which] if test else ():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    for pattern, new in SHRINK if shrink else ():
        text = re.sub(pattern, new, text)
    return text


def write_data(tmp_path, which: str, test: bool, L: int, H: int, W: int, n: int = 3) -> None:
    """The net's list (every source path the fork's text names points to it) and volume files, and its mean
    under the relative name the fork's text gives (the nets run from their example folder)."""
    g = np.random.default_rng(0)
    T, kind = (1, np.uint8) if which == "gatech" else (2, f32)
    lines = []
    for i in range(n):
        frames = g.integers(0, 256, (3, L, H, W))
        truth = g.integers(0, 8, (1, L, H, W)) if which == "gatech" else g.uniform(-20, 20, (2, L, H, W))
        blob_file(tmp_path / f"{which}{i}.bin", np.concatenate([frames, truth]).astype(kind), kind)
        lines.append(f"{tmp_path}/{which}{i}.bin\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    mean = "train_data_frm_mean.binaryproto" if which == "gatech" else "ucf101_full_mean.binaryproto"
    (tmp_path / mean).write_bytes(c3d_blob(g.uniform(90, 130, (1, 3, L, H, W)).astype(f32)))


def build(tmp_path, which: str, test: bool, shrink: bool):
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net_with_source

    text = net_text(which, test, shrink)
    text, n = re.subn(r'source:\s*"/data/users/trandu/datasets/[^"]+"', f'source: "{tmp_path}/list.txt"', text)
    assert n == 1
    path = tmp_path / f"{which}.prototxt"
    path.write_text(text)
    param, source = read_net_with_source(str(path))
    return Net(param, TEST if test else TRAIN, source=source)


@pytest.mark.parametrize("which", ["gatech", "brox"])
def test_full_size_nets_build_with_the_forks_shapes(tmp_path, monkeypatch, which):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path, which, False, 16, 128, 171, n=1)
    net = build(tmp_path, which, False, False)
    try:
        types = {name: net.layer(name).type_name for name in net.layer_names}
        assert types["data"] == ("VideoSegmentationData" if which == "gatech" else "VideoWithVoxelTruthData")
        assert {types[n] for n in ("conv1a", "pool1", "deconv5b", "concat1")} == {
            "Convolution3D", "Pooling3D", "Deconvolution3D", "Concat"}
        assert types["loss"] == ("VoxelWiseSoftmaxWithLoss" if which == "gatech" else "EuclideanLoss")
        out = 8 if which == "gatech" else 2
        shapes = {"data": (1, 3, 16, 112, 112), "truth": (1, 1 if which == "gatech" else 2, 16, 112, 112),
                  "pool1": (1, 64, 16, 56, 56), "conv3b": (1, 256, 8, 28, 28), "conv4b": (1, 512, 4, 14, 14),
                  "conv5b": (1, 512, 2, 7, 7), "deconv5b": (1, 64, 4, 14, 14), "concat1": (1, 128, 4, 14, 14),
                  "deconv4b": (1, 64, 8, 28, 28), "concat2": (1, 128, 8, 28, 28), "deconv3b": (1, 64, 16, 112, 112),
                  "predict": (1, out, 16, 112, 112)}
        for name, shape in shapes.items():
            assert tuple(net.blob_shapes[name]) == shape, name
        assert tuple(net.layer("deconv3b").blobs[0].shape) == (128, 64, 4, 8, 8)
    finally:
        net.close()


@pytest.mark.parametrize("which", ["gatech", "brox"])
@pytest.mark.parametrize("test", [False, True], ids=["train", "test"])
def test_shrunk_nets_run_forward_and_backward(tmp_path, monkeypatch, which, test):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path, which, test, 8, 20, 22)
    torch.manual_seed(0)
    net = build(tmp_path, which, test, True)
    try:
        T, out = (1, 8) if which == "gatech" else (2, 2)
        for _ in range(2):
            loss = net.forward()
            assert tuple(net.blob("data").shape) == (2, 3, 8, 16, 16)
            assert tuple(net.blob("truth").shape) == (2, T, 8, 16, 16)
            assert tuple(net.blob("predict").shape) == (2, out, 8, 16, 16)
            assert tuple(net.blob("deconv5b").shape) == (2, 4, 2, 2, 2)
            assert torch.isfinite(net.blob("predict")).all()
            if which == "gatech" and test:  # the test net ends in VoxelWiseSoftmax, no loss
                prob = net.blob("prob")
                torch.testing.assert_close(prob.sum(1), torch.ones(2, 8, 16, 16))
                continue
            assert torch.isfinite(loss) and float(loss) > 0
            net.clear_param_diffs()
            net.backward()
            grad = net.layer("deconv3b").blobs[0].grad
            assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
        if which == "brox":  # the truth is the flow scaled by truth_scale 0.125: within [-2.5, 2.5]
            assert float(net.blob("truth").abs().max()) <= 2.5
        else:  # the labels as read
            assert set(torch.unique(net.blob("truth")).tolist()) <= set(range(8))
    finally:
        net.close()
