"""TI caffe-jacinto's ImageLabelData (mathmanu/caffe-jacinto caffe-0.17 @ 2678b2b8) against a loop port of the fork's
two NVCaffe DataLayers (tests/layers/jacinto_reference.py) on tiny image/label LMDB pairs written here: TEST
exactly, TRAIN given the same draws; the label's nearest-neighbour random resize; the errors; the released
cityscapes5_jsegnet21v2 nets (tests/layers/data/jacinto/, as released) building and running on such LMDBs."""
from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from neocaffe import rng
from neocaffe.data.datum import array_to_datum, encode_array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import BuildContext, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2
from tests.layers import jacinto_reference as ref

DATA = Path(__file__).parent / "data" / "jacinto"
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def _write_pair(folder: Path, n: int = 5, size=(9, 11), seed: int = 0, label_sizes=None, n_labels=None,
                label_channels: int = 1, prefix: str = "", backend: str = "lmdb",
                png: bool = False) -> tuple[Path, Path]:
    """An image LMDB (raw 3 x H x W) and a label LMDB (raw 1 x H x W, classes 0..7 and 255), as
    caffe-jacinto-models' create_segmentation_image_lmdb.py writes them (keys %010d); or LevelDBs, or PNG records."""
    g = np.random.default_rng(seed)
    paths = folder / f"{prefix}image-{backend}", folder / f"{prefix}label-{backend}"

    def datum(a):
        return (encode_array_to_datum(a, 0, "png") if png else array_to_datum(a)).SerializeToString()

    with DBWriter(str(paths[0]), backend) as im, DBWriter(str(paths[1]), backend) as lb:
        for i in range(n):
            im.put(f"{i:010d}", datum(g.integers(0, 256, (3, *size), dtype=np.uint8)))
        for i in range(n if n_labels is None else n_labels):
            ls = label_sizes[i] if label_sizes and i in label_sizes else size
            lab = g.integers(0, 8, (label_channels, *ls)).astype(np.uint8)
            lab[:, 0, :3] = 255
            lb.put(f"{i:010d}", datum(lab))
    return paths


def _layer(paths, transform: str, phase=TEST, batch_size: int = 2, extra: str = "", workers: int = 0, seed: int = 5):
    rng.set_seed(seed)
    backend = "LEVELDB" if str(paths[0]).endswith("leveldb") else "LMDB"
    backend = "" if "no-backend" in extra else f"backend: {backend}"
    text = (f'layer {{ name: "data" type: "ImageLabelData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'image_label_data_param {{ image_list_path: "{paths[0]}" label_list_path: "{paths[1]}" '
            f'batch_size: {batch_size} shuffle: true threads: 1 {backend} {extra.replace("no-backend", "")} }} }}')
    param = read_net(text, upgrade=False).layer[0]
    return get_layer_class("ImageLabelData")(param, [], phase, BuildContext(data_workers=workers))


def _batches(layer, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        return [tuple(t.numpy().copy() for t in layer()) for _ in range(n)]
    finally:
        layer.close()


@pytest.mark.parametrize("transform,crop,means,scale", [
    ("crop_size: 6 mean_value: 0", 6, [0.0], 1.0),  # the released nets' setting (their crop 640)
    ("crop_size: 5 mean_value: 20 scale: 0.25", 5, [20.0], 0.25),
    ("mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5", 0, [104.0, 117.0, 123.0], 0.5),
])
def test_test_phase_equals_the_forks_layer(tmp_path, transform, crop, means, scale):
    paths = _write_pair(tmp_path)
    images, labels = ref.read_raw_db(str(paths[0])), ref.read_raw_db(str(paths[1]))
    layer = _layer(paths, transform, TEST)
    h, w = (crop, crop) if crop else (9, 11)
    assert layer.reshape([]) == [(2, 3, h, w), (2, 1, h, w)]
    for k, (data, label) in enumerate(_batches(layer, 4)):  # 8 items of 5 records: the readers wrap
        assert data.shape == (2, 3, h, w) and label.shape == (2, 1, h, w)
        for i in range(2):
            r = (k * 2 + i) % 5
            np.testing.assert_array_equal(data[i], ref.transform_v1(images[r], (0, 0, 0), crop, False, False,
                                                                    means, scale))
            # the fork's label: its transform_param copy, mean values zeroed, scale kept; here the label keeps
            # its values (no scale: module docstring) and a 3-value mean is no CHECK failure
            want = ref.transform_v1(labels[r], (0, 0, 0), crop, False, False, [0.0] if len(means) == 1 else [], 1.0)
            np.testing.assert_array_equal(label[i], want)
            if scale == 1.0 and len(means) == 1:
                np.testing.assert_array_equal(label[i], ref.image_label_item(
                    images, labels, 2, k, i, (0, 0, 0), crop, False, False, means, scale)[1])


@pytest.mark.parametrize("form", ["leveldb", "png"])
def test_leveldb_and_encoded_records_give_the_raw_lmdb_batches(tmp_path, form):
    raw = _write_pair(tmp_path, seed=6)
    other = _write_pair(tmp_path, seed=6, backend=form if form == "leveldb" else "lmdb", png=form == "png",
                        prefix="png-" if form == "png" else "")
    transform = "mirror: true crop_size: 5 mean_value: 10"
    for phase in (TRAIN, TEST):
        pairs = zip(_batches(_layer(raw, transform, phase), 4), _batches(_layer(other, transform, phase), 4))
        for (d0, l0), (d1, l1) in pairs:
            np.testing.assert_array_equal(d0, d1)
            np.testing.assert_array_equal(l0, l1)


def test_train_crops_and_mirrors_image_and_label_with_the_same_draws(tmp_path):
    paths = _write_pair(tmp_path, seed=1)
    images, labels = ref.read_raw_db(str(paths[0])), ref.read_raw_db(str(paths[1]))
    batches = _batches(_layer(paths, "mirror: true crop_size: 5 mean_value: 0", TRAIN, batch_size=3), 5)
    seen = set()
    for k, (data, label) in enumerate(batches):
        for i in range(3):
            # the draws behind this item: the one rand triple whose image matches the fork's transform
            fits = [rand for rand in itertools.product((0, 1), range(5), range(7))
                    if np.array_equal(data[i], ref.image_label_item(images, labels, 3, k, i, rand, 5, True, True,
                                                                    [0.0], 1.0)[0])]
            assert len(fits) == 1, fits
            _, want_label = ref.image_label_item(images, labels, 3, k, i, fits[0], 5, True, True, [0.0], 1.0)
            np.testing.assert_array_equal(label[i], want_label)
            seen.add(fits[0])
    assert {f for f, _, _ in seen} == {0, 1} and len(seen) > 8  # random windows and flips
    again = _batches(_layer(paths, "mirror: true crop_size: 5 mean_value: 0", TRAIN, batch_size=3), 5)
    for (d0, l0), (d1, l1) in zip(batches, again):  # one seed (neocaffe.rng), one stream of draws
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(l0, l1)


def test_workers_give_the_batches_made_in_process(tmp_path):
    paths = _write_pair(tmp_path, n=7, seed=2)
    transform = "mirror: true crop_size: 5 mean_value: 0"
    here = _batches(_layer(paths, transform, TRAIN, batch_size=2), 6)
    there = _batches(_layer(paths, transform, TRAIN, batch_size=2, workers=2), 6)
    for (d0, l0), (d1, l1) in zip(here, there):
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(l0, l1)


def test_random_resize_moves_the_label_nearest_neighbour_with_its_image(tmp_path):
    paths = _write_pair(tmp_path, seed=3)
    images, labels = ref.read_raw_db(str(paths[0])), ref.read_raw_db(str(paths[1]))
    # NVCaffe's random resize: the shorter side 9 -> 7, so 9 x 11 -> 7 x lround(11 * 7 / 9) = 7 x 9
    transform = ("mirror: true crop_size: 5 img_rand_resize_lower: 7 img_rand_resize_upper: 7 "
                 "interpolation_algo_down: INTER_LINEAR")
    seen = set()
    for k, (data, label) in enumerate(_batches(_layer(paths, transform, TRAIN), 4)):
        for i in range(2):
            r = (k * 2 + i) % 5
            img = cv2.resize(images[r].transpose(1, 2, 0), (9, 7), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
            lab = cv2.resize(labels[r][0], (9, 7), interpolation=cv2.INTER_NEAREST)[None]
            fits = [(f, h0, w0) for f, h0, w0 in itertools.product((0, 1), range(3), range(5))
                    if np.array_equal(data[i], _window(img, f, h0, w0))]
            assert len(fits) == 1, fits
            np.testing.assert_array_equal(label[i], _window(lab, *fits[0]))
            assert set(np.unique(label[i])) <= set(np.unique(labels[r]))
            seen.add(fits[0])
    assert len(seen) > 2


def _window(a: np.ndarray, flip: int, h0: int, w0: int) -> np.ndarray:
    cut = a[:, h0:h0 + 5, w0:w0 + 5].astype(np.float32)
    return cut[:, :, ::-1] if flip else cut


@pytest.mark.parametrize("case,match", [
    ("no-backend", r"image_label_data_param.backend is not set; expected LMDB or LEVELDB"),
    ("counts", r"the image database holds 5 records and the label database 4; expected one label map per image"),
    ("size", r"label map is 8x11 but its image \(.*record '0000000000'\) is 9x11; the pair must have one size"),
    ("channels", r"a label map has 1 channel; received 3x9x11"),
    ("pixels", r"resize_param / noise_param are SSD's"),
])
def test_what_the_fork_would_misread_is_an_error_naming_the_layer(tmp_path, case, match):
    kw = {"counts": {"n_labels": 4}, "size": {"label_sizes": {0: (8, 11)}}, "channels": {"label_channels": 3}}
    paths = _write_pair(tmp_path, **kw.get(case, {}))
    transform = "crop_size: 5" + (" resize_param { height: 8 width: 8 }" if case == "pixels" else "")
    with pytest.raises(LayerSetupError, match=r"layer 'data' \(ImageLabelData\): .*" + match):
        _layer(paths, transform, extra="no-backend" if case == "no-backend" else "")


def test_a_mismatched_pair_past_the_first_is_an_error_at_its_batch(tmp_path):
    paths = _write_pair(tmp_path, label_sizes={3: (9, 10)})
    layer = _layer(paths, "crop_size: 5")
    layer()
    with pytest.raises(ValueError, match=r"ImageLabelData\): .*record '0000000003'.*label map is 9x10 but its image"):
        layer()
    layer.close()


def test_fields_of_the_list_layer_are_named_in_a_warning(tmp_path, caplog):
    paths = _write_pair(tmp_path)
    with caplog.at_level("WARNING", logger="neocaffe.data"):
        _layer(paths, "crop_size: 5", extra="scale_prob: 0.5 size_min: 4").close()
    assert "scale_prob, size_min: read by caffe-jacinto 0.15/0.16's ImageLabelListData, not by" in caplog.text


# -- the released nets ----------------------------------------------------------------------------------
def _released(kind: str, folder: Path) -> str:
    """The released prototxt with its LMDB paths pointed at ``folder``, crop 640 -> 32 and batch 2."""
    text = (DATA / f"cityscapes5_jsegnet21v2_{kind}.prototxt").read_text()
    folder.mkdir(exist_ok=True)
    for split in ("train", "val"):
        _write_pair(folder, n=3, size=(36, 40), seed=len(split), prefix=f"{split}-")
    text = text.replace('"data/', f'"{folder}/').replace("crop_size: 640", "crop_size: 32")
    return text.replace("batch_size: 16", "batch_size: 2").replace("batch_size: 4", "batch_size: 2")


def test_released_train_net_builds_and_runs_forward_and_backward(tmp_path):
    rng.set_seed(9)
    net = Net(read_net(_released("train", tmp_path)), TRAIN)
    net.forward()
    data, label = net.blob("data").numpy(), net.blob("label").numpy()
    assert data.shape == (2, 3, 32, 32) and label.shape == (2, 1, 32, 32)
    assert set(np.unique(label)) <= set(range(8)) | {255}
    scores = net.blob("out_deconv_final_up8").numpy()
    want, prob = ref.softmax_loss_forward(scores.astype(np.float64), label, None, 255, ref.VALID)
    assert float(net.blob("loss")) == pytest.approx(want, rel=1e-5)
    net.backward()
    diff = net.blob_diff("out_deconv_final_up8").numpy()
    np.testing.assert_allclose(diff, ref.softmax_loss_backward(prob, label, 255, ref.VALID, 1.0), atol=1e-7)
    conv = next(c for c in net.layers if c.name == "conv1a")
    assert float(conv.blobs[0].grad.abs().sum()) > 0


def test_released_train_and_test_nets_under_the_solver(tmp_path):
    from neocaffe.solver.solver import Solver

    for kind in ("train", "test"):
        (tmp_path / f"{kind}.prototxt").write_text(_released(kind, tmp_path / kind))
    (tmp_path / "solver.prototxt").write_text(  # the released solver's settings, its paths and lengths shrunk
        f'train_net: "{tmp_path / "train.prototxt"}" test_net: "{tmp_path / "test.prototxt"}" test_iter: 2 '
        'test_interval: 2 base_lr: 0.01 display: 0 max_iter: 4 lr_policy: "multistep" gamma: 0.1 power: 1 '
        'momentum: 0.9 weight_decay: 0.0001 snapshot: 0 solver_mode: CPU random_seed: 33 test_initialization: false '
        'stepvalue: 2 iter_size: 1 type: "SGD"')
    solver = Solver(str(tmp_path / "solver.prototxt"), device="cpu")
    losses = []
    for _ in range(3):
        solver.step(1)
        losses.append(float(solver.net.loss.detach()))
    assert all(np.isfinite(losses)), losses
    assert tuple(solver.test_nets[0].blob("label").shape) == (2, 1, 32, 32)


def test_released_test_net_reads_centre_crops_in_database_order(tmp_path):
    rng.set_seed(9)
    net = Net(read_net(_released("test", tmp_path)), TEST)
    images, labels = (ref.read_raw_db(str(tmp_path / f"val-{w}-lmdb")) for w in ("image", "label"))
    for k in range(2):
        net.forward()
        for i in range(2):
            img, lab = ref.image_label_item(images, labels, 2, k, i, (0, 0, 0), 32, False, False, [0.0], 1.0)
            np.testing.assert_array_equal(net.blob("data").numpy()[i], img)
            np.testing.assert_array_equal(net.blob("label").numpy()[i], lab)
        assert np.isfinite(float(net.blob("loss"))) and 0 <= float(net.blob("accuracy/top1")) <= 1


def test_released_deploy_net_runs():
    net = Net(read_net((DATA / "cityscapes5_jsegnet21v2_deploy.prototxt").read_text()), TEST)
    net.forward({"data": torch.rand(1, 3, 512, 1024) * 255})
    out = net.blob("argMaxOut")
    assert tuple(out.shape) == (1, 1, 512, 1024) and 0 <= float(out.min()) and float(out.max()) < 8


@pytest.mark.gpu
def test_on_cuda_the_batches_are_the_cpu_ones(tmp_path):
    paths = _write_pair(tmp_path, seed=4)
    transform = "mirror: true crop_size: 5 mean_value: 10 scale: 0.5"
    want = _batches(_layer(paths, transform, TRAIN), 3)
    layer = _layer(paths, transform, TRAIN).to("cuda")
    try:
        for d0, l0 in want:
            data, label = layer()
            assert data.device.type == "cuda"
            np.testing.assert_array_equal(data.cpu().numpy(), d0)
            np.testing.assert_array_equal(label.cpu().numpy(), l0)
    finally:
        layer.close()
