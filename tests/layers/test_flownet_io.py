"""FlowNet 2.0's reader and writer layers (lmb-freiburg/flownet2 @ b92e198b): files written byte for byte
as ``src/caffe/util/output.cpp`` / CImg write them, read back; the fork's file naming; pycaffe's
``set_logging_disabled``."""
from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from neocaffe.data import flownet_files as ff
from neocaffe.layers.base import TEST, LayerSetupError
from neocaffe.layers.registry import get_layer_class
from neocaffe.proto import caffe_pb2


def _layer(text, shapes=(), phase=TEST):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return get_layer_class(lp.type)(lp, list(shapes), phase)


def _writer(kind, folder, extra="", shape=(1, 2, 3, 4)):
    return _layer(f'name: "w" type: "{kind}" bottom: "x" writer_param {{ folder: "{folder}" prefix: "pre_" '
                  f'suffix: "_s" {extra} }}', [shape])


def test_flo_writer_writes_a_valid_middlebury_file(tmp_path):
    flow = np.random.default_rng(0).normal(0, 3, (2, 2, 3, 4)).astype(np.float32)
    layer = _writer("FLOWriter", tmp_path / "out", shape=flow.shape)
    layer.set_iteration(1234, 2000)
    assert layer(torch.tensor(flow)) == []
    for n in range(2):
        path = tmp_path / "out" / f"pre_0001234({n:03d})_s.flo"
        raw = path.read_bytes()
        assert struct.unpack("<f", raw[:4])[0] == 202021.25 and raw[:4] == b"PIEH"
        assert struct.unpack("<ii", raw[4:12]) == (4, 3) and len(raw) == 12 + 3 * 4 * 8
        body = np.frombuffer(raw, "<f4", offset=12)
        loop = [flow[n, c, y, x] for y in range(3) for x in range(4) for c in range(2)]  # (u, v) per pixel
        np.testing.assert_array_equal(body, np.array(loop, np.float32))
        np.testing.assert_array_equal(ff.read_flo(str(path)), flow[n])
    with pytest.raises(LayerSetupError, match="'w'.*2 channels"):
        _writer("FLOWriter", tmp_path, shape=(1, 3, 2, 2))


def test_single_item_name_has_no_index_and_file_overrides(tmp_path):
    x = torch.ones(1, 2, 2, 2)
    _writer("FLOWriter", tmp_path, shape=x.shape)(x)
    assert (tmp_path / "pre_0000000_s.flo").exists()
    target = tmp_path / "fixed.flo"
    two = torch.stack([torch.zeros(2, 2, 2), torch.ones(2, 2, 2)])
    _layer(f'name: "w" type: "FLOWriter" bottom: "x" writer_param {{ file: "{target}" }}', [two.shape])(two)
    np.testing.assert_array_equal(ff.read_flo(str(target)), np.ones((2, 2, 2), np.float32))  # the last item stays


def test_float_writer_and_reader_round_trip(tmp_path):
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 4, 5)).astype(np.float32)
    _writer("FloatWriter", tmp_path, shape=x.shape)(torch.tensor(x))
    path = tmp_path / "pre_0000000(001)_s.float3"
    raw = path.read_bytes()
    assert raw.startswith(b"float\n3\n5\n4\n3\n") and raw[len(b"float\n3\n5\n4\n3\n"):] == x[1].astype("<f4").tobytes()
    reader = _layer(f'name: "r" type: "FloatReader" top: "y" reader_param {{ file: "{path}" num: 3 }}')
    assert reader.reshape([]) == [(3, 3, 4, 5)]
    y = reader().numpy()
    for n in range(3):
        np.testing.assert_array_equal(y[n], x[1])
    two = tmp_path / "two.float"
    two.write_bytes(b"float\n2\n3\n2\n" + np.arange(6, dtype="<f4").tobytes())
    np.testing.assert_array_equal(ff.read_float(str(two)), np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    bad = tmp_path / "bad.float3"
    bad.write_bytes(b"double\n")
    with pytest.raises(LayerSetupError, match="'r'.*invalid format"):
        _layer(f'name: "r" type: "FloatReader" top: "y" reader_param {{ file: "{bad}" }}')


def test_pfm_writer_is_cimgs_negated_bottom_up_big_endian(tmp_path):
    x = np.random.default_rng(2).normal(0, 1, (1, 1, 3, 4)).astype(np.float32)
    _writer("PFMWriter", tmp_path, shape=x.shape)(torch.tensor(x))
    raw = (tmp_path / "pre_0000000_s.pfm").read_bytes()
    head = b"Pf\n4 3\n1.0\n"
    assert raw.startswith(head)
    loop = [-x[0, 0, y, xx] for y in (2, 1, 0) for xx in range(4)]
    assert raw[len(head):] == np.array(loop, ">f4").tobytes()
    np.testing.assert_array_equal(ff.read_pfm(str(tmp_path / "pre_0000000_s.pfm")), -x[0])
    flow = np.random.default_rng(3).normal(0, 1, (1, 2, 2, 3)).astype(np.float32)
    _writer("PFMWriter", tmp_path / "f", shape=flow.shape)(torch.tensor(flow))
    raw = (tmp_path / "f" / "pre_0000000_s.pfm").read_bytes()
    head = b"PF\n3 2\n1.0\n"
    loop = [v for y in (1, 0) for xx in range(3) for v in (-flow[0, 0, y, xx], -flow[0, 1, y, xx], 0.0)]
    assert raw == head + np.array(loop, ">f4").tobytes()


def test_img_writer_ppm_pgm_and_norm(tmp_path):
    img = np.random.default_rng(4).uniform(-0.2, 1.2, (1, 3, 2, 3)).astype(np.float32)
    _writer("ImgWriter", tmp_path, "scale: 255", shape=img.shape)(torch.tensor(img))
    raw = (tmp_path / "pre_0000000_s.ppm").read_bytes()
    head = b"P6 \n3 2 \n255\n"
    v = np.clip(img[0] * np.float32(255), 0, 255)
    loop = [int(v[c, y, x]) for y in range(2) for x in range(3) for c in (2, 1, 0)]
    assert raw == head + bytes(loop)
    _writer("ImgWriter", tmp_path / "n", "normalize: true", shape=img.shape)(torch.tensor(img))
    raw = (tmp_path / "n" / "pre_0000000_s.ppm").read_bytes()
    lo, hi = img.min(), img.max()
    loop = [int(np.float32(255) * (img[0, c, y, x] - lo) / (hi - lo))
            for y in range(2) for x in range(3) for c in (2, 1, 0)]
    assert raw == b"P6\n3 2 \n255\n" + bytes(loop)
    gray = np.array([[[[-3.7, 0.5, 300.2]]]], np.float32)
    _writer("ImgWriter", tmp_path / "g", shape=gray.shape)(torch.tensor(gray))
    raw = (tmp_path / "g" / "pre_0000000_s.pgm").read_bytes()
    assert raw == b"P5\n3 1 \n255\n" + bytes([253, 0, 44])  # (unsigned char) of -3, 0, 300: no clamp
    assert ff.read_pnm(str(tmp_path / "g" / "pre_0000000_s.pgm")).tolist() == [[253, 0, 44]]
    with pytest.raises(LayerSetupError, match="1 or 3 channels"):
        _writer("ImgWriter", tmp_path, shape=(1, 2, 2, 2))


def test_img_reader_reads_bgr_through_the_transform(tmp_path):
    import cv2

    img = np.random.default_rng(5).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    layer = _layer(f'name: "r" type: "ImgReader" top: "y" reader_param {{ file: "{tmp_path / "a.png"}" num: 2 }} '
                   'transform_param { crop_size: 4 scale: 0.5 mean_value: 10 }')
    y = layer().numpy()
    assert y.shape == (2, 3, 4, 4) and layer.reshape([]) == [(2, 3, 4, 4)]
    want = (img.transpose(2, 0, 1)[:, 1:5, 1:5].astype(np.float32) - 10) * 0.5
    np.testing.assert_array_equal(y[0], want)
    np.testing.assert_array_equal(y[1], want)
    with pytest.raises(LayerSetupError, match="'r'.*cannot read"):
        _layer(f'name: "r" type: "ImgReader" top: "y" reader_param {{ file: "{tmp_path / "none.png"}" }}')


def test_set_logging_disabled():
    import caffe

    logger = logging.getLogger("neocaffe")
    before = logger.level
    try:
        caffe.set_logging_disabled()
        assert not logging.getLogger("neocaffe.data").isEnabledFor(logging.INFO)
        assert logging.getLogger("neocaffe.data").isEnabledFor(logging.ERROR)
    finally:
        logger.setLevel(before)


def test_writers_number_files_by_forward_unless_the_solver_sets_the_iteration(tmp_path):
    x = torch.zeros(1, 2, 2, 2)
    layer = _writer("FLOWriter", tmp_path, shape=x.shape)
    layer(x)
    layer(x)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre_0000000_s.flo", "pre_0000001_s.flo"]
    layer.set_iteration(40, 100)
    layer(x)
    assert (tmp_path / "pre_0000040_s.flo").exists()
