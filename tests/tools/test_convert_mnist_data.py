"""convert_mnist_data on slices of the real MNIST IDX files (../shared/realdata/mnist_idx_pypi), and
Caffe's examples/mnist LeNet prototxt + solver training unchanged from the LMDBs it writes."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from neocaffe.proto import caffe_pb2
from neocaffe.tools import convert_mnist_data
from tests.conftest import REPO, shared_path
from tests.records import db_records


def _idx_arrays(path: Path) -> tuple[bytes, np.ndarray]:
    """(header magic+dims bytes, data) of a gzipped IDX file, parsed with NumPy."""
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return raw[:4], np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _write_idx(path: Path, magic: bytes, arr: np.ndarray, gz: bool = False) -> Path:
    body = magic + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    if gz:
        path.write_bytes(gzip.compress(body))
    else:
        path.write_bytes(body)
    return path


@pytest.fixture(scope="module")
def mnist():
    folder = shared_path("realdata", "mnist_idx_pypi")
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        mi, images = _idx_arrays(folder / f"{prefix}-images.idx3-ubyte.gz")
        ml, labels = _idx_arrays(folder / f"{prefix}-labels.idx1-ubyte.gz")
        out[split] = (mi, images, ml, labels)
    return out


def _slice(tmp: Path, mnist, split: str, n: int, start: int = 0) -> tuple[str, str]:
    mi, images, ml, labels = mnist[split]
    img = _write_idx(tmp / f"{split}{start}-images-idx3-ubyte", mi, images[start:start + n])
    lab = _write_idx(tmp / f"{split}{start}-labels-idx1-ubyte.gz", ml, labels[start:start + n], gz=True)
    return str(img), str(lab)


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_slice_of_real_mnist_becomes_caffes_datums(mnist, tmp_path, backend):
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    n, start = 1234, 5000  # crosses one commit of 1000
    img, lab = _slice(tmp_path, mnist, "train", n, start)
    out = str(tmp_path / f"mnist_{backend}")
    assert convert_mnist_data.main([img, lab, out, f"--backend={backend}"]) == 0
    recs = db_records(out)
    assert [k for k, _ in recs] == [b"%08d" % i for i in range(n)]
    _, images, _, labels = mnist["train"]
    for i in (0, 1, 999, 1000, n - 1):
        d = caffe_pb2.Datum()
        d.ParseFromString(recs[i][1])
        assert (d.channels, d.height, d.width, d.label) == (1, 28, 28, int(labels[start + i]))
        assert not d.HasField("encoded") and not d.float_data
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(28, 28), images[start + i])
    # byte for byte what Caffe's tool serializes (set_channels/height/width, set_data, set_label)
    ref = caffe_pb2.Datum()
    ref.channels, ref.height, ref.width = 1, 28, 28
    ref.data, ref.label = images[start + 7].tobytes(), int(labels[start + 7])
    assert recs[7][1] == ref.SerializeToString()
    hist = np.bincount([caffe_pb2.Datum.FromString(v).label for _, v in recs], minlength=10)
    np.testing.assert_array_equal(hist, np.bincount(labels[start:start + n], minlength=10))


def test_bad_inputs_are_one_error_each(mnist, tmp_path, caplog):
    img, lab = _slice(tmp_path, mnist, "test", 20)
    assert convert_mnist_data.main([lab, img, str(tmp_path / "swapped")]) == 1
    assert "Incorrect image file magic. Received: 2049, expected 2051" in caplog.text
    _, _, ml, labels = mnist["test"]
    short = _write_idx(tmp_path / "short-labels", ml, labels[:19])
    assert convert_mnist_data.main([img, str(short), str(tmp_path / "mismatch")]) == 1
    assert "holds 20 images but" in caplog.text and "holds 19 labels" in caplog.text
    cut = tmp_path / "cut-images"
    cut.write_bytes(Path(img).read_bytes()[:-100])
    assert convert_mnist_data.main([str(cut), lab, str(tmp_path / "cut_db")]) == 1
    assert "truncated IDX file: image #19 needs 784 bytes, got 684" in caplog.text
    os.mkdir(tmp_path / "exists")
    assert convert_mnist_data.main([img, lab, str(tmp_path / "exists")]) == 1
    assert "already exists" in caplog.text
    assert convert_mnist_data.main([img, lab, str(tmp_path / "x"), "--backend=rocksdb"]) == 1
    assert "unknown backend 'rocksdb'" in caplog.text
    assert convert_mnist_data.main([img, lab]) == 1  # usage


def test_caffes_lenet_example_trains_unchanged(mnist, tmp_path, monkeypatch):
    """examples/mnist/lenet_train_test.prototxt and lenet_solver.prototxt as BVLC ships them, run from a
    Caffe-like root holding the LMDBs the tool wrote (slices: 1,280 train, 300 test images)."""
    caffe = pytest.importorskip("caffe")
    ex = tmp_path / "examples" / "mnist"
    ex.mkdir(parents=True)
    for name in ("lenet_train_test.prototxt", "lenet_solver.prototxt"):
        shutil.copy(REPO / "examples" / "mnist" / name, ex / name)
    for split, n in (("train", 1280), ("test", 300)):
        img, lab = _slice(tmp_path, mnist, split, n)
        assert convert_mnist_data.main([img, lab, str(ex / f"mnist_{split}_lmdb")]) == 0
    monkeypatch.chdir(tmp_path)
    caffe.set_random_seed(3)
    solver = caffe.SGDSolver("examples/mnist/lenet_solver.prototxt")
    losses = []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:3]), losses
    out = solver.test_nets[0].forward()
    assert 0.5 < float(out["accuracy"]) <= 1.0
