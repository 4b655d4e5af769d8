"""DeepLab v2's train and test nets (hszhao/PSPNet's caffe = DeepLab v2's): ImageSegData -> atrous
convolutions -> Interp shrinking the label by 8 -> SoftmaxWithLoss (ignore_label 255) + SegAccuracy
trains, and the test net (label_type NONE, crop 513-style padding, Interp zoom, MatWrite per list
line) writes one MAT-file per image that MATLAB's layout and MatRead read back. Also MatWrite's
period/source/strip and MatRead's batches."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import TEST, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from neocaffe.solver.solver import Solver

sio = pytest.importorskip("scipy.io")

# DeepLab v2's train/test prototxt layout (data, label_shrink, loss, accuracy; fc8_interp, fc8_mat,
# silence), with a three-layer atrous trunk in place of VGG/ResNet.
DEEPLAB = """name: "deeplab_tiny"
layer { name: "data" type: "ImageSegData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 17 mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 }
  image_data_param { root_folder: "ROOT" source: "ROOT/train.txt" label_type: PIXEL batch_size: 4 shuffle: true } }
layer { name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim" include { phase: TEST }
  transform_param { crop_size: 25 mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 }
  image_data_param { root_folder: "ROOT" source: "ROOT/test.txt" label_type: NONE batch_size: 1 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc6" type: "Convolution" bottom: "conv1" top: "fc6"
  convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc8_voc12" type: "Convolution" bottom: "fc6" top: "fc8_voc12"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink" include { phase: TRAIN }
  interp_param { shrink_factor: 2 pad_beg: 0 pad_end: 0 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8_voc12" bottom: "label_shrink" include { phase: TRAIN }
  loss_param { ignore_label: 255 } }
layer { name: "accuracy" type: "SegAccuracy" bottom: "fc8_voc12" bottom: "label_shrink" top: "accuracy"
  include { phase: TRAIN } seg_accuracy_param { ignore_label: 255 } }
layer { name: "fc8_interp" type: "Interp" bottom: "fc8_voc12" top: "fc8_interp" include { phase: TEST }
  interp_param { zoom_factor: 2 } }
layer { name: "fc8_mat" type: "MatWrite" bottom: "fc8_interp" include { phase: TEST }
  mat_write_param { prefix: "ROOT/features/" source: "ROOT/test_id.txt" strip: 0 period: 1 } }
layer { name: "silence" type: "Silence" bottom: "label" bottom: "data_dim" include { phase: TEST } }
"""


pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """Reads run in the test's process unless a layer asks for workers (BuildContext.data_workers)."""
    monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", "0")


def _dataset(folder, n=8):
    """Images of three colour regions (labels 0/1/2, region borders 255) of assorted sizes, some
    smaller than the crop; DeepLab's list forms (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``)."""
    g = np.random.default_rng(3)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.int16)
    (folder / "JPEGImages").mkdir()
    (folder / "SegmentationClassAug").mkdir()
    train, test, ids = [], [], []
    for i in range(n):
        h, w = int(g.integers(14, 24)), int(g.integers(14, 24))
        cls = np.zeros((h, w), np.int64)
        cls[:, w // 3:] = 1
        cls[h // 2:, 2 * w // 3:] = 2
        img = np.clip(colours[cls] + g.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        lab = cls.astype(np.uint8)
        lab[:, w // 3] = 255
        cv2.imwrite(str(folder / "JPEGImages" / f"{i:04d}.png"), img)
        cv2.imwrite(str(folder / "SegmentationClassAug" / f"{i:04d}.png"), lab)
        train.append(f"/JPEGImages/{i:04d}.png /SegmentationClassAug/{i:04d}.png")
        test.append(f"/JPEGImages/{i:04d}.png")
        ids.append(f"{i:04d}")
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "test.txt").write_text("\n".join(test[:3]) + "\n")
    (folder / "test_id.txt").write_text("\n".join(ids[:3]) + "\n")
    (folder / "net.prototxt").write_text(DEEPLAB.replace("ROOT", str(folder)))


def test_deeplab_train_and_test_nets(tmp_path):
    _dataset(tmp_path)
    solver = caffe_pb2.SolverParameter()
    text_format.Parse(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.02 lr_policy: "poly" power: 0.9 '
                      'momentum: 0.9 max_iter: 60 display: 0 snapshot_after_train: false random_seed: 5 '
                      'solver_mode: CPU', solver)
    s = Solver(solver)
    try:
        losses, accs = [], []
        for _ in range(60):
            s.step(1)
            losses.append(s.smoothed_loss)
            accs.append(s.net.blob_data["accuracy"].reshape(3).tolist())
        assert s.net.blob_data["label_shrink"].shape == (4, 1, 9, 9)
        s.net.to_weights()
        weights = {n: [p.detach().clone() for p in ps] for n, ps in s.net.params_by_layer().items()}
    finally:
        s.net.close()
        s.close()
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"tiny DeepLab: loss first 5 iterations {first:.3f}, last 5 {last:.3f}; accuracy {accs[-1]}")
    assert last < 0.6 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert accs[-1][0] > 0.8 and all(0 <= v <= 1 for v in accs[-1])

    (tmp_path / "features").mkdir()
    net = Net(read_net(str(tmp_path / "net.prototxt")), TEST)
    try:
        for name, ps in weights.items():
            for p, v in zip(net.params_by_layer()[name], ps):
                p.data.copy_(v)
        outs = []
        for _ in range(3):
            net.forward()
            outs.append(net.blob_data["fc8_interp"].numpy().copy())
            assert net.blob_data["data"].shape == (1, 3, 25, 25)
    finally:
        net.close()
    for i, scores in enumerate(outs):
        m = sio.loadmat(tmp_path / "features" / f"{i:04d}_blob_0.mat")["data"]
        assert m.dtype == np.float32 and m.shape == (25, 25, 3, 1)  # [W, H, C, N]: 13 zoomed by 2 is 25
        np.testing.assert_array_equal(m, scores.transpose(3, 2, 1, 0))
    # MatRead feeds them back (DeepLab's CRF step), in list order, one item per file
    reader = _layer(f'name: "r" type: "MatRead" top: "fc8" mat_read_param {{ prefix: "{tmp_path}/features/" '
                    f'source: "{tmp_path}/test_id.txt" batch_size: 2 }}')
    assert reader.reshape([]) == [(2, 3, 25, 25)]
    np.testing.assert_array_equal(reader().numpy(), np.concatenate(outs[:2]))
    np.testing.assert_array_equal(reader().numpy(), np.concatenate([outs[2], outs[0]]))  # the names wrap


def _layer(text, shapes=()):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(param.type)(param, list(shapes), TEST)


def test_mat_write_period_names_and_strip(tmp_path):
    (tmp_path / "ids.txt").write_text("a.jpg 1\nbb.jpg 2\n\nccc.jpg 3\n")
    w = _layer(f'name: "w" type: "MatWrite" bottom: "x" bottom: "y" mat_write_param {{ prefix: "{tmp_path}/o_" '
               f'source: "{tmp_path}/ids.txt" strip: 4 period: 2 }}', [(1, 2, 3, 4), (2, 5)])
    xs = [torch.randn(1, 2, 3, 4) for _ in range(4)]
    for k in range(3):
        assert w(xs[k], torch.full((2, 5), float(k))) == []
    assert sorted(p.name for p in tmp_path.glob("o_*")) == ["o_a_blob_0.mat", "o_a_blob_1.mat",
                                                           "o_ccc_blob_0.mat", "o_ccc_blob_1.mat"]
    np.testing.assert_array_equal(sio.loadmat(tmp_path / "o_ccc_blob_0.mat")["data"], xs[2].numpy().transpose(3, 2, 1, 0))
    assert sio.loadmat(tmp_path / "o_a_blob_1.mat")["data"].shape == (5, 2, 1, 1)  # (2, 5) as (1, 1, 2, 5)
    w(xs[3], torch.zeros(2, 5))  # forward 4 (k = 3): not a writing one
    with pytest.raises(LayerSetupError, match=r"forward 5: the net has run for more iterations than "
                                              r"mat_write_param.source '.*ids.txt' names files \(3\)"):
        w(xs[0], torch.zeros(2, 5))
    plain = _layer(f'name: "w" type: "MatWrite" bottom: "x" mat_write_param {{ prefix: "{tmp_path}/p/" }}', [(1, 1)])
    with pytest.raises(LayerSetupError, match=r"p/iter_0_blob_0.mat: cannot write the MAT-file"):
        plain(torch.ones(1, 1))  # the folder must exist, as for the fork
    (tmp_path / "p").mkdir()
    plain(torch.ones(1, 1))
    assert (tmp_path / "p" / "iter_1_blob_0.mat").exists()


def test_mat_layer_errors(tmp_path):
    (tmp_path / "ids.txt").write_text("ab\n")
    with pytest.raises(LayerSetupError, match=r"ids.txt:1: too much stripping: strip 2 of 'ab'"):
        _layer(f'name: "w" type: "MatWrite" bottom: "x" mat_write_param {{ prefix: "p" source: "{tmp_path}/ids.txt" '
               f'strip: 2 }}', [(1,)])
    with pytest.raises(LayerSetupError, match=r"period must be positive; received 0"):
        _layer('name: "w" type: "MatWrite" bottom: "x" mat_write_param { prefix: "p" period: 0 }', [(1,)])
    with pytest.raises(LayerSetupError, match=r"failed to open source file '.*nope.txt'"):
        _layer(f'name: "r" type: "MatRead" top: "x" mat_read_param {{ prefix: "p" source: "{tmp_path}/nope.txt" }}')
    with pytest.raises(LayerSetupError, match=r"layer 'r'.*iter_0_blob_0.mat: no such MAT-file"):
        _layer(f'name: "r" type: "MatRead" top: "x" mat_read_param {{ prefix: "{tmp_path}/" }}')
    from neocaffe.io.matfile import write_blobs_mat

    write_blobs_mat(tmp_path / "iter_0_blob_0.mat", {"data": np.ones((2, 1, 2, 2), np.float32)})
    with pytest.raises(LayerSetupError, match=r"holds 2 items \(dims \[2, 2, 1, 2\]\); expected one"):
        _layer(f'name: "r" type: "MatRead" top: "x" mat_read_param {{ prefix: "{tmp_path}/" }}')
    write_blobs_mat(tmp_path / "iter_0_blob_0.mat", {"data": np.ones((1, 1, 2, 2), np.float32)})
    write_blobs_mat(tmp_path / "iter_1_blob_0.mat", {"data": np.ones((1, 1, 2, 3), np.float32)})
    r = _layer(f'name: "r" type: "MatRead" top: "x" mat_read_param {{ prefix: "{tmp_path}/" }}')
    assert r().shape == (1, 1, 2, 2)
    with pytest.raises(LayerSetupError, match=r"iter_1_blob_0.mat: item of shape \(1, 2, 3\); expected \(1, 2, 2\)"):
        r()
