"""Truncated, foreign, missing and empty files: one clear line naming the file, never a deep traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neocaffe.io import (CaffeFileError, LayerWeights, load_weights, read_blobproto, read_caffemodel,
                         read_caffemodel_h5, read_net_binary, read_solverstate, save_caffemodel)

READERS = [read_blobproto, read_caffemodel, read_caffemodel_h5, read_solverstate, load_weights, read_net_binary]


def _one_clear_line(err: Exception, path: Path, *words: str) -> None:
    text = str(err)
    assert isinstance(err, CaffeFileError) and isinstance(err, ValueError)
    assert text.startswith(f"{path}: ") and "\n" not in text
    for word in words:
        assert word in text, text


def test_truncated_binaryproto_from_the_wild(shared):
    """PROVENANCE: header says 1x3x256x256, data declares 786,432 bytes, the file has 94,720."""
    path = shared / "realdata" / "negative_truncated_binaryproto" / "truncated_imagenet_mean.binaryproto"
    with pytest.raises(CaffeFileError) as info:
        read_blobproto(path)
    _one_clear_line(info.value, path, "truncated", "786432 bytes", "received 94720 bytes")
    assert info.value.received == "94720 bytes"


@pytest.mark.parametrize("name,reader", [("lenet_v2_2016/lenet_iter_10000.caffemodel", read_caffemodel),
                                         ("lenet_v1_2014/lenet_iter_10000.caffemodel", load_weights),
                                         ("lenet_v1_2014/lenet_iter_5000.solverstate", read_solverstate),
                                         ("imagenet_mean/imagenet_mean.binaryproto", read_blobproto)])
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_binary_files(shared, tmp_path: Path, name: str, reader, keep: float):
    data = (shared / "realdata" / name).read_bytes()
    path = tmp_path / Path(name).name
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CaffeFileError) as info:
        reader(path)
    _one_clear_line(info.value, path, "truncated")


@pytest.mark.parametrize("name,reader", [("cifar10_hdf5_2015/cifar10_quick_iter_4000.caffemodel.h5", load_weights),
                                         ("cifar10_hdf5_2015/cifar10_quick_iter_4000.solverstate.h5",
                                          read_solverstate)])
def test_truncated_hdf5_files(shared, tmp_path: Path, name: str, reader):
    data = (shared / "realdata" / name).read_bytes()
    path = tmp_path / Path(name).name
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CaffeFileError) as info:
        reader(path)
    _one_clear_line(info.value, path)


FOREIGN = {
    "text.caffemodel": b'name: "LeNet"\nlayer {\n  name: "data"\n}\n',
    "jpeg.caffemodel": bytes.fromhex("ffd8ffe000104a46494600010100000100010000") + b"\0" * 64,
    "zeros.solverstate": b"\0" * 100,
    "png.binaryproto": b"\x89PNG\r\n\x1a\n" + b"\0" * 50,
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
@pytest.mark.parametrize("reader", [read_caffemodel, read_solverstate, read_blobproto, load_weights])
def test_foreign_files(tmp_path: Path, name: str, reader):
    path = tmp_path / name
    path.write_bytes(FOREIGN[name])
    with pytest.raises(CaffeFileError) as info:
        reader(path)
    _one_clear_line(info.value, path)
    if name.startswith("text"):
        assert "text" in str(info.value)


@pytest.mark.parametrize("reader,other", [
    (read_caffemodel, "lenet_v1_2014/lenet_iter_5000.solverstate"),
    (read_caffemodel, "imagenet_mean/imagenet_mean.binaryproto"),
    (read_solverstate, "lenet_v1_2014/lenet_iter_5000.caffemodel"),
    (read_solverstate, "imagenet_mean/imagenet_mean.binaryproto"),
    (read_blobproto, "lenet_v2_2016/lenet_iter_10000.caffemodel"),
    (load_weights, "caffe_test_hdf5/sample_data.h5"),
    (load_weights, "cifar10_hdf5_2015/cifar10_quick_iter_4000.solverstate.h5"),
    (read_solverstate, "cifar10_hdf5_2015/cifar10_quick_iter_4000.caffemodel.h5"),
])
def test_a_caffe_file_of_another_kind(shared, reader, other: str):
    path = shared / "realdata" / other
    with pytest.raises(CaffeFileError) as info:
        reader(path)
    _one_clear_line(info.value, path)


@pytest.mark.parametrize("reader", READERS)
def test_missing_empty_and_directory(tmp_path: Path, reader):
    missing = tmp_path / "missing.caffemodel"
    with pytest.raises(FileNotFoundError) as info:
        reader(missing)
    _one_clear_line(info.value, missing, "no such file")
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffeFileError) as info:
        reader(empty)
    _one_clear_line(info.value, empty)
    with pytest.raises(CaffeFileError, match="is a directory"):
        reader(tmp_path)


def test_blob_count_disagrees_with_shape(tmp_path: Path):
    path = tmp_path / "bad.caffemodel"
    save_caffemodel(path, [LayerWeights("ip", "InnerProduct", [np.zeros((2, 3), np.float32)])])
    raw = bytearray(path.read_bytes())
    at = raw.index(bytes([0x3A, 4, 0x0A, 2, 2, 3]))  # BlobShape {dim: 2 dim: 3} -> {dim: 2 dim: 4}
    raw[at + 5] = 4
    path.write_bytes(bytes(raw))
    with pytest.raises(CaffeFileError) as info:
        read_caffemodel(path)
    _one_clear_line(info.value, path, "layer 'ip', blob 0", "2x4 holds 8 values", "has 6")
