"""Datum encode/decode: raw and encoded, colour and gray, and the real convert_imageset LMDBs."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from neocaffe.data.datum import (
    DatumError, array_to_datum, chw_to_hwc, decode_datum, encode_array_to_datum, file_to_datum, hwc_to_chw,
    parse_datum, read_image, read_image_to_datum,
)
from neocaffe.data.sources import DBReader
from neocaffe.proto import caffe_pb2
from tests.conftest import shared_path

G = np.random.default_rng(7)


def _img(c=3, h=9, w=11):
    return G.integers(0, 256, (c, h, w), dtype=np.uint8)


@pytest.mark.parametrize("c", [1, 3])
def test_raw_roundtrip(c):
    arr = _img(c)
    d = array_to_datum(arr, label=5)
    assert (d.channels, d.height, d.width, d.label) == (c, 9, 11, 5)
    assert d.HasField("encoded") and not d.encoded  # Caffe's CVMatToDatum sets encoded: false
    out = decode_datum(d.SerializeToString())
    assert out.label == 5 and not out.encoded and out.array.dtype == np.uint8
    np.testing.assert_array_equal(out.array, arr)


@pytest.mark.parametrize("c", [1, 3])
def test_png_roundtrip_native_channels(c):
    arr = _img(c)
    d = encode_array_to_datum(arr, label=2, encoding="png")
    assert d.encoded and d.data[:4] == b"\x89PNG" and not d.HasField("channels")
    out = decode_datum(d)
    assert out.encoded and out.label == 2
    np.testing.assert_array_equal(out.array, arr)


def test_force_color_and_gray():
    gray = _img(1)
    d = encode_array_to_datum(gray, encoding=".png")
    np.testing.assert_array_equal(decode_datum(d, force_color=True).array, np.repeat(gray, 3, axis=0))
    color = _img(3)
    d = encode_array_to_datum(color, encoding="png")
    want = cv2.cvtColor(chw_to_hwc(color), cv2.COLOR_BGR2GRAY)
    got = decode_datum(d, force_gray=True).array
    assert got.shape == (1, 9, 11)
    assert np.abs(got[0].astype(int) - want.astype(int)).max() <= 1
    with pytest.raises(DatumError, match="both force_color and force_gray"):
        decode_datum(d, force_color=True, force_gray=True)


def test_jpeg_is_lossy_but_close():
    arr = np.full((3, 16, 16), 128, np.uint8)
    arr[0] = 60
    out = decode_datum(encode_array_to_datum(arr, encoding="jpg")).array
    assert out.shape == arr.shape and np.abs(out.astype(int) - arr.astype(int)).max() <= 4


def test_float_datum():
    d = caffe_pb2.Datum(channels=2, height=2, width=3, label=1)
    d.float_data.extend(np.arange(12, dtype=np.float32) / 4)
    out = decode_datum(d)
    assert out.array.dtype == np.float32
    np.testing.assert_array_equal(out.array.ravel(), np.arange(12) / 4)


def test_bad_records_name_where():
    d = caffe_pb2.Datum(channels=3, height=4, width=4, data=b"\0" * 10)
    with pytest.raises(DatumError, match="db: record 'k'.*10 bytes.*needs 48"):
        decode_datum(d, where="db: record 'k'")
    bad = caffe_pb2.Datum(data=b"not an image", encoded=True)
    with pytest.raises(DatumError, match="could not decode"):
        decode_datum(bad, where="x")
    with pytest.raises(DatumError, match="not a Caffe Datum"):
        parse_datum(b"\xff\xff\xff", where="x")


def test_layout_helpers():
    hwc = G.integers(0, 255, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(chw_to_hwc(hwc_to_chw(hwc)), hwc)
    assert hwc_to_chw(hwc[:, :, 0]).shape == (1, 4, 5)


def test_read_image_to_datum_encoding_rules(tmp_path):
    arr = _img(3, 12, 10)
    path = str(tmp_path / "a.png")
    cv2.imwrite(path, chw_to_hwc(arr))
    raw = open(path, "rb").read()
    # --encoded with the type guessed from the name (".png", with its dot) and no resize: the file itself
    assert read_image_to_datum(path, 3, encoding=".png").data == raw
    # --encode_type=png never matches Caffe's dotted extension: re-encoded, same pixels
    d = read_image_to_datum(path, 3, encoding="png")
    assert d.encoded and np.array_equal(decode_datum(d).array, arr)
    # resized: re-encoded at the new size
    d = read_image_to_datum(path, 3, 6, 5, encoding=".png")
    assert decode_datum(d).array.shape == (3, 6, 5)
    # raw, gray
    d = read_image_to_datum(path, 4, is_color=False)
    assert (d.channels, d.height, d.width, d.label) == (1, 12, 10, 4)
    assert read_image_to_datum(str(tmp_path / "missing.png"), 0) is None
    assert file_to_datum(path, 1).data == raw


def test_read_image_crop_mode(tmp_path):
    path = str(tmp_path / "wide.png")
    cv2.imwrite(path, G.integers(0, 255, (20, 60, 3), dtype=np.uint8))
    assert read_image(path, 10, 10, crop=True).shape == (10, 10, 3)
    assert read_image(path, 10, 10).shape == (10, 10, 3)
    assert read_image(path, is_color=False).shape == (20, 60)


@pytest.mark.parametrize("name", ["lmdb_raw", "lmdb_encoded_png", "lmdb_gray", "lmdb_raw_from_jpeg"])
def test_decodes_real_caffe_lmdbs(name):
    folder = shared_path("fixtures", "data")
    dump = np.load(folder / "lmdb_dump.npz")
    meta = json.loads((folder / "lmdb_dump.json").read_text())[name]
    with DBReader(str(folder / name)) as reader:
        items = list(reader.items())
    assert [k.decode() for k, _ in items] == meta["keys"]
    for (k, v), label, enc in zip(items, meta["labels"], meta["encoded"]):
        d = decode_datum(v)
        assert d.label == label and d.encoded == enc
        np.testing.assert_array_equal(d.array, dump[f"{name}/{k.decode()}"])
        assert d.array.shape == tuple(meta["shape"])
        if not enc:  # our serialization is byte-identical to Caffe's
            assert array_to_datum(d.array, d.label).SerializeToString() == v
