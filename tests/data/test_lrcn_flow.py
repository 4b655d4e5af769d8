"""LRCN's (and Intel Caffe's) ``image_data_param.min_height``/``min_width`` and ``transform_param.flow`` against the
loop-by-loop port of the forks' code (tests/data/lrcn_reference.py), and LRCN's released flow net
(tests/data/lrcn/, LisaAnne/lisa-caffe-public @ 49b8643d) building and training on images written here."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from neocaffe import rng
from neocaffe.data.datum import array_to_datum, encode_array_to_datum, min_size, read_image
from neocaffe.data.db_writer import DBWriter
from neocaffe.graph.intelcaffe import layer_notes
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import parse_text, read_net
from neocaffe.io.binaryproto import write_blobproto
from neocaffe.proto import caffe_pb2
from tests.data import lrcn_reference as ref

HERE = Path(__file__).parent / "lrcn"
TRAIN, TEST = 0, 1


def _net(text: str, phase: int, device: str | None = None) -> Net:
    return Net(read_net(text), phase, source="<test>", device=device)


def _images(tmp_path: Path, shapes: list[tuple[int, ...]], seed: int = 0) -> list[np.ndarray]:
    """Random images written as PNG ``img<i>.png`` with ``list.txt`` labelling image i with i."""
    g = np.random.default_rng(seed)
    imgs = [g.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    for i, a in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), a)
    (tmp_path / "list.txt").write_text("".join(f"img{i}.png {i}\n" for i in range(len(imgs))))
    return imgs


def _image_layer(tmp_path: Path, image_param: str, transform: str, batch: int) -> str:
    return (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'image_data_param {{ source: "{tmp_path}/list.txt" root_folder: "{tmp_path}{os.sep}" '
            f'batch_size: {batch} {image_param} }} }}')


def _draws(net: Net) -> tuple[np.ndarray, np.ndarray]:
    """Batch 0's crop offsets and mirror flags, as the layer's batch maker draws them (a pure function of the
    layer's seed and the batch number, so the net's first forward gets the same)."""
    maker = net.layer("data")._maker()
    try:
        hb = maker.make(0)
    finally:
        getattr(maker, "close", lambda: None)()
    return np.asarray(hb.offsets), np.asarray(hb.mirror)


# -- ReadImageToCVMat's min sizes ---------------------------------------------------------------------------------
def test_min_size_rounding_matches_the_forks():
    """Every image size up to 70 x 70 against two minimum pairs: the side chosen and the float rounding."""
    for mh, mw in ((227, 227), (37, 50), (50, 37)):
        for rows in range(1, 71):
            for cols in range(1, 71):
                got = min_size(rows, cols, mh, mw)
                if rows >= mh and cols >= mw:
                    assert got is None
                    continue
                if mw - cols > mh - rows:
                    want = (mw, int(ref.f32(ref.f32(float(mw)) * ref.f32(ref.f32(float(rows)) / ref.f32(float(cols))))
                                    + 0.5))
                else:
                    want = (int(ref.f32(ref.f32(float(mh)) * ref.f32(ref.f32(float(cols)) / ref.f32(float(rows))))
                                + 0.5), mh)
                assert got == want, (rows, cols, mh, mw)


@pytest.mark.parametrize("shape,mins,new", [
    ((7, 5, 3), (9, 11), (0, 0)),  # both short: width by more -> width 11
    ((5, 13, 3), (9, 11), (0, 0)),  # height short only
    ((20, 4, 3), (9, 11), (0, 0)),  # width short only
    ((12, 16, 3), (9, 11), (0, 0)),  # large enough: unchanged
    ((6, 6), (9, 11), (0, 0)),  # gray
    ((7, 5, 3), (9, 11), (8, 10)),  # new_height/new_width win
])
def test_read_image_matches_read_image_to_cvmat(tmp_path, shape, mins, new):
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, img)
    color = len(shape) == 3
    want = ref.read_image_to_cvmat(path, new[0], new[1], color, *mins)
    got = read_image(path, new[0], new[1], color, min_height=mins[0], min_width=mins[1])
    assert got.shape == want.shape and np.array_equal(got, want)
    if new == (0, 0) and (shape[0] < mins[0] or shape[1] < mins[1]):
        assert got.shape[0] >= mins[0] and got.shape[1] >= mins[1]


# -- ImageData (the forks' cv::Mat Transform: flow is not read) ---------------------------------------------------
def test_image_data_min_sizes_test_phase_centre_crop(tmp_path):
    imgs = _images(tmp_path, [(7, 5, 3), (5, 13, 3), (20, 4, 3), (12, 16, 3)])
    net = _net(_image_layer(tmp_path, "min_height: 9 min_width: 11",
                            "crop_size: 9 mean_value: 100 mean_value: 120 mean_value: 90 scale: 0.5", 4), TEST)
    assert net.layer("data").reshape([])[0] == (4, 3, 9, 9)
    net.forward()
    got = net.blob_data["data"].numpy()
    for i in range(len(imgs)):
        m = ref.read_image_to_cvmat(str(tmp_path / f"img{i}.png"), 0, 0, True, 9, 11)
        want = ref.transform_mat(m, 9, 0.5, False, False, 0, 0, mean_values=[100, 120, 90])
        assert np.array_equal(got[i], want), i
    assert net.blob_data["label"].tolist() == [0, 1, 2, 3]


def test_image_data_flow_train_mirrors_pixels_only(tmp_path):
    """TRAIN, random crops and mirrors, ``flow: true``: the item is the fork's cv::Mat Transform of the upscaled
    image with the same draws, channel 2 mirrored but not inverted (LRCN's and Intel's ImageData)."""
    imgs = _images(tmp_path, [(7, 5, 3), (5, 13, 3), (20, 4, 3), (12, 16, 3)] * 2, seed=3)
    tp = "crop_size: 9 mirror: true mean_value: 128 mean_value: 128 mean_value: 128 flow: true"
    rng.set_seed(11)
    net = _net(_image_layer(tmp_path, "min_height: 9 min_width: 11", tp, 8), TRAIN)
    offsets, mirror = _draws(net)
    assert mirror.any() and not mirror.all() and offsets.any()
    net.forward()
    got = net.blob_data["data"].numpy()
    for i in range(len(imgs)):
        m = ref.read_image_to_cvmat(str(tmp_path / f"img{i}.png"), 0, 0, True, 9, 11)
        want = ref.transform_mat(m, 9, 1.0, True, bool(mirror[i]), int(offsets[i, 0]), int(offsets[i, 1]),
                                 mean_values=[128, 128, 128])
        assert np.array_equal(got[i], want), i
    rng.set_seed(11)
    plain = _net(_image_layer(tmp_path, "min_height: 9 min_width: 11", tp.replace("flow: true", ""), 8), TRAIN)
    plain.forward()
    assert torch.equal(plain.blob_data["data"], net.blob_data["data"])


def test_min_height_without_min_width_is_the_forks_check(tmp_path):
    _images(tmp_path, [(7, 5, 3)])
    with pytest.raises(ValueError, match=r"layer 'data' \(ImageData\).*min_height and min_width to be set at the "
                                         r"same time; received image_data_param.min_height 9, min_width 0"):
        _net(_image_layer(tmp_path, "min_height: 9", "", 1), TEST)


# -- Data: raw Datums take LRCN's flow ----------------------------------------------------------------------------
def _lmdb(path: Path, arrays: list[np.ndarray], encoded: bool = False) -> None:
    with DBWriter(str(path), "lmdb") as db:
        for i, a in enumerate(arrays):
            d = encode_array_to_datum(a, i, "png") if encoded else array_to_datum(a, i)
            db.put(f"{i:08d}", d.SerializeToString())


def _data_layer(source: Path, transform: str, batch: int, lineage: str = "") -> str:
    head = f'lineage: "{lineage}" ' if lineage else ""
    return (f'{head}layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}')


def _uint8_items(n: int, shape=(3, 10, 12), seed: int = 5) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("lineage", ["", "intelcaffe"])
def test_data_raw_uint8_flow_train(tmp_path, lineage, caplog):
    items = _uint8_items(8)
    _lmdb(tmp_path / "db", items)
    tp = "crop_size: 7 mirror: true mean_value: 128 mean_value: 120 mean_value: 110 scale: 0.25 flow: true"
    rng.set_seed(4)
    with caplog.at_level(logging.INFO, logger="neocaffe.data"):
        net = _net(_data_layer(tmp_path / "db", tp, 8, lineage), TRAIN)
    assert any("transform_param.flow" in r.getMessage() for r in caplog.records) == (not lineage)
    offsets, mirror = _draws(net)
    assert mirror.any() and not mirror.all()
    net.forward()
    got = net.blob_data["data"].numpy()
    for i, a in enumerate(items):
        want = ref.transform_datum(a, 7, 0.25, True, bool(mirror[i]), int(offsets[i, 0]), int(offsets[i, 1]), True,
                                   mean_values=[128, 120, 110], intel=bool(lineage))
        assert np.array_equal(got[i], want), i
    if not lineage:  # channel 2 of the mirrored items is inverted, the other channels and items are plain
        plain = [ref.transform_datum(a, 7, 0.25, True, bool(mirror[i]), int(offsets[i, 0]), int(offsets[i, 1]),
                                     False, mean_values=[128, 120, 110]) for i, a in enumerate(items)]
        for i in range(len(items)):
            assert np.array_equal(got[i, :2], plain[i][:2])
            assert np.array_equal(got[i, 2], plain[i][2]) != bool(mirror[i])


def test_data_float_datums_flow_with_mean_file_test_phase(tmp_path):
    """``float_data`` Datums (255 - v in float32), a mean file taken at each pixel's source position, TEST's
    centre crop with TEST's random mirror."""
    g = np.random.default_rng(8)
    items = [(g.random((3, 9, 11)) * 255).astype(np.float32) for _ in range(6)]
    _lmdb(tmp_path / "db", items)
    mean = (g.random((3, 9, 11)) * 80).astype(np.float32)
    write_blobproto(str(tmp_path / "m.binaryproto"), mean[None], legacy=True)
    tp = f'crop_size: 5 mirror: true flow: true mean_file: "{tmp_path / "m.binaryproto"}"'
    rng.set_seed(2)
    net = _net(_data_layer(tmp_path / "db", tp, 6), TEST)
    offsets, mirror = _draws(net)
    assert mirror.any() and not mirror.all()
    net.forward()
    got = net.blob_data["data"].numpy()
    for i, a in enumerate(items):
        want = ref.transform_datum(a, 5, 1.0, False, bool(mirror[i]), 0, 0, True, mean=mean)
        assert np.array_equal(got[i], want), i


def test_data_encoded_datums_ignore_flow(tmp_path):
    """Encoded Datums go through the fork's cv::Mat Transform: mirrored, not inverted."""
    items = _uint8_items(6, seed=9)
    _lmdb(tmp_path / "db", items, encoded=True)
    rng.set_seed(6)
    net = _net(_data_layer(tmp_path / "db", "crop_size: 8 mirror: true flow: true", 6), TRAIN)
    offsets, mirror = _draws(net)
    assert mirror.any()
    net.forward()
    got = net.blob_data["data"].numpy()
    for i, a in enumerate(items):
        want = ref.transform_mat(a.transpose(1, 2, 0), 8, 1.0, True, bool(mirror[i]), int(offsets[i, 0]),
                                 int(offsets[i, 1]))
        assert np.array_equal(got[i], want), i


def test_intel_notes_no_longer_name_the_applied_fields():
    param = parse_text('layer { name: "d" type: "ImageData" transform_param { flow: true bgr2rgb: true } '
                       'image_data_param { min_height: 9 min_width: 9 } }', caffe_pb2.NetParameter())
    assert layer_notes(param) == ["transform_param.bgr2rgb (layer 'd')"]


# -- LRCN's released net ------------------------------------------------------------------------------------------
def test_lrcn_prototxts_parse():
    for name, flow, size in (("flow", True, ("min_height", 227)), ("RGB", False, ("new_height", 240))):
        net = read_net(str(HERE / f"train_test_singleFrame_{name}.prototxt"))
        data = [lp for lp in net.layer if lp.type == "ImageData"]
        assert len(data) == 2 and all(lp.transform_param.flow == flow for lp in data)
        assert all(getattr(lp.image_data_param, size[0]) == size[1] for lp in data)


def _shrunk_lrcn(tmp_path: Path, data_layer: str | None = None, kind: str = "flow") -> str:
    """LRCN's ``kind`` net on the images of ``tmp_path`` (batch 4, TRAIN and TEST), its layers narrowed
    (96/384/512/4096 outputs to 8/16/16/32) so it runs in a test; ``data_layer``: another TRAIN data layer in place
    of its ImageData."""
    text = (HERE / f"train_test_singleFrame_{kind}.prototxt").read_text()
    for split in ("train", "test"):
        text = text.replace(f'"ucf101_singleFrame_{kind}_{split}_split1.txt"', f'"{tmp_path}/list.txt"')
    text = text.replace('"flow_images/"', f'"{tmp_path}{os.sep}"').replace('"frames/"', f'"{tmp_path}{os.sep}"')
    text = re.sub(r"batch_size: \d+", "batch_size: 4", text)
    for big, small in (("96", "8"), ("384", "16"), ("512", "16"), ("4096", "32")):
        text = re.sub(rf"num_output: {big}\b", f"num_output: {small}", text)
    if data_layer is not None:
        first = text.index("layer {")
        end = text.index("layer {", first + 1)
        text = text[:first] + data_layer + "\n" + text[end:]
    return text


def test_lrcn_flow_net_trains_on_upscaled_images(tmp_path):
    """The net at TRAIN: images under 227 x 227 are upscaled (min_height/min_width), cropped at random to 227,
    mirrored at random; ``flow: true`` leaves them as the fork's ImageData does (its cv::Mat path); forward and
    backward run and reach conv1's weights."""
    imgs = _images(tmp_path, [(120, 160, 3), (227, 200, 3), (90, 90, 3), (240, 320, 3)], seed=1)
    rng.set_seed(21)
    net = _net(_shrunk_lrcn(tmp_path), TRAIN)
    assert net.layer("data").reshape([])[0] == (4, 3, 227, 227)
    offsets, mirror = _draws(net)
    net.forward()
    net.backward()
    got = net.blob_data["data"].numpy()
    for i in range(len(imgs)):
        m = ref.read_image_to_cvmat(str(tmp_path / f"img{i}.png"), 0, 0, True, 227, 227)
        assert min(m.shape[:2]) >= 227
        want = ref.transform_mat(m, 227, 1.0, True, bool(mirror[i]), int(offsets[i, 0]), int(offsets[i, 1]),
                                 mean_values=[128, 128, 128])
        assert np.array_equal(got[i], want), i
    assert np.isfinite(float(net.blob_data["loss"])) and float(net.layer("conv1").blobs[0].grad.abs().sum()) > 0


def test_lrcn_flow_net_on_raw_datums_inverts_mirrored_x_flow(tmp_path):
    """The same net with its flow images in an LMDB of raw Datums (the fork's Data path, where LRCN applies
    ``flow``): in every mirrored item channel 2 is 255 - v before the mean, visible in the data blob."""
    g = np.random.default_rng(12)
    items = [g.integers(0, 256, (3, 230, 240), dtype=np.uint8) for _ in range(4)]
    _lmdb(tmp_path / "db", items)
    layer = ('layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN } '
             'transform_param { mirror: true crop_size: 227 mean_value: 128 mean_value: 128 mean_value: 128 '
             f'flow: true }} data_param {{ source: "{tmp_path / "db"}" batch_size: 4 backend: LMDB }} }}')
    rng.set_seed(13)
    net = _net(_shrunk_lrcn(tmp_path, layer), TRAIN)
    offsets, mirror = _draws(net)
    assert mirror.any() and not mirror.all()
    net.forward()
    net.backward()
    got = net.blob_data["data"].numpy()
    for i, a in enumerate(items):
        h0, w0 = int(offsets[i, 0]), int(offsets[i, 1])
        crop = a[:, h0:h0 + 227, w0:w0 + 227].astype(np.float32)
        if mirror[i]:
            crop = crop[:, :, ::-1]
            crop[2] = 255 - crop[2]
        assert np.array_equal(got[i], crop - 128), i
    assert float(net.layer("conv1").blobs[0].grad.abs().sum()) > 0


def test_lrcn_flow_net_test_phase_and_rgb_net(tmp_path):
    """The flow net at TEST (stage "test-on-test": centre crops, TEST's random mirror, as the fork's) and the
    RGB net at TRAIN (new_height/new_width 240 x 320, flow: false) build and run."""
    imgs = _images(tmp_path, [(120, 160, 3), (227, 200, 3), (90, 90, 3), (240, 320, 3)], seed=2)
    rng.set_seed(5)
    net = Net(read_net(_shrunk_lrcn(tmp_path)), TEST, stages=["test-on-test"], source="<test>")
    _, mirror = _draws(net)
    net.forward()
    got = net.blob_data["data"].numpy()
    for i in range(len(imgs)):
        m = ref.read_image_to_cvmat(str(tmp_path / f"img{i}.png"), 0, 0, True, 227, 227)
        want = ref.transform_mat(m, 227, 1.0, False, bool(mirror[i]), 0, 0, mean_values=[128, 128, 128])
        assert np.array_equal(got[i], want), i
    assert "accuracy" in net.blob_data
    rgb = _net(_shrunk_lrcn(tmp_path, kind="RGB"), TRAIN)
    assert rgb.layer("data").reshape([])[0] == (4, 3, 227, 227)
    rgb.forward()
    rgb.backward()
    assert float(rgb.layer("conv1").blobs[0].grad.abs().sum()) > 0


@pytest.mark.gpu
def test_data_flow_on_cuda_matches_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    items = _uint8_items(8)
    _lmdb(tmp_path / "db", items)
    tp = "crop_size: 7 mirror: true mean_value: 128 scale: 0.5 flow: true"
    out = []
    for device in ("cpu", "cuda"):
        rng.set_seed(4)
        net = _net(_data_layer(tmp_path / "db", tp, 8), TRAIN, device=device)
        net.forward()
        out.append(net.blob_data["data"].cpu())
    assert torch.equal(out[0], out[1])
