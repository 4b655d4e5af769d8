"""convert_mnist_siamese_data on the first 500 items of the real MNIST training files
(../shared/realdata/mnist_idx_pypi): the pair generator against mt19937's known outputs and a plain-Python
mt19937, and every stored pair Datum against the images read independently."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from neocaffe.proto import caffe_pb2
from neocaffe.tools import convert_mnist_siamese_data as siamese
from tests.conftest import shared_path
from tests.tools.test_convert_mnist_data import _idx_arrays, _write_idx
from tests.records import db_records, varint

N = 500


class ReferenceMT19937:
    """Matsumoto & Nishimura's mt19937ar (init_genrand + genrand_int32), written out in plain Python."""

    def __init__(self, seed: int) -> None:
        self.mt = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            self.mt.append((1812433253 * (self.mt[-1] ^ (self.mt[-1] >> 30)) + i) & 0xFFFFFFFF)
        self.i = 624

    def __call__(self) -> int:
        if self.i >= 624:
            for k in range(624):
                y = (self.mt[k] & 0x80000000) | (self.mt[(k + 1) % 624] & 0x7FFFFFFF)
                self.mt[k] = self.mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.i = 0
        y = self.mt[self.i]
        self.i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)


def test_generator_is_boosts_mt19937():
    # boost::mt19937 default-constructs with seed 5489; its first outputs, and the 10000th (the value the
    # C++ standard and boost's own test require of mt19937)
    raw = siamese.mt19937(5489).random_raw(10000)
    assert raw[:5].tolist() == [3499211612, 581869302, 3890346734, 3586334585, 545404204]
    assert int(raw[-1]) == 4123659995
    for seed in (0, 1, 20240607, 2**32 - 1):
        ref = ReferenceMT19937(seed)
        assert siamese.mt19937(seed).random_raw(1300).tolist() == [ref() for _ in range(1300)], seed
    # the tool's first pairs for seed 1 and 500 items, as printed by a C++ harness drawing
    # `int i = rng() % n; int j = rng() % n;` from boost 1.74's boost::mt19937(1)
    assert siamese.draw_pairs(1, 500)[:8].tolist() == [[345, 139], [124, 368], [263, 313], [491, 341],
                                                       [259, 432], [248, 249], [16, 443], [13, 340]]
    assert siamese.draw_pairs(1, 10000)[:3].tolist() == [[5845, 6139], [124, 3368], [1263, 313]]
    for bad in (-2, 2**32):
        with pytest.raises(Exception, match=r"the seed must be in 0\.\.4294967295; received"):
            siamese.mt19937(bad)


@pytest.fixture(scope="module")
def mnist_prefix(tmp_path_factory):
    """(image file, label file, images, labels): the first N training items, images uncompressed, labels
    gzipped (both forms are read)."""
    folder = shared_path("realdata", "mnist_idx_pypi")
    mi, images = _idx_arrays(folder / "train-images.idx3-ubyte.gz")
    ml, labels = _idx_arrays(folder / "train-labels.idx1-ubyte.gz")
    tmp = tmp_path_factory.mktemp("mnist500")
    images, labels = images[:N].copy(), labels[:N].copy()
    return (str(_write_idx(tmp / "train-images-idx3-ubyte", mi, images)),
            str(_write_idx(tmp / "train-labels-idx1-ubyte.gz", ml, labels, gz=True)), images, labels)


def _pair_datum(a: np.ndarray, b: np.ndarray, label: int) -> bytes:
    """The wire bytes of Caffe's pair Datum written by hand: channels 2, height, width, the two images'
    bytes one after the other, the label (stored also when 0, as set_label(0) does)."""
    data = a.tobytes() + b.tobytes()
    return (b"\x08\x02\x10" + varint(a.shape[0]) + b"\x18" + varint(a.shape[1]) + b"\x22"
            + varint(len(data)) + data + b"\x28" + varint(label))


@pytest.mark.parametrize("backend", ["leveldb", "lmdb"])
def test_every_pair_is_caffes_datum(mnist_prefix, tmp_path, backend):
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    img, lab, images, labels = mnist_prefix
    out = str(tmp_path / f"siamese_{backend}")
    extra = [] if backend == "leveldb" else ["--backend=lmdb"]  # leveldb is the default, as in Caffe
    assert siamese.main([img, lab, out, "--seed=1", *extra]) == 0
    recs = db_records(out)
    assert [k for k, _ in recs] == [b"%08d" % k for k in range(N)]
    ref = ReferenceMT19937(1)
    same = 0
    for k, (_, value) in enumerate(recs):
        i, j = ref() % N, ref() % N
        label = int(labels[i] == labels[j])
        same += label
        assert value == _pair_datum(images[i], images[j], label), k
    assert 0.05 < same / N < 0.2  # MNIST's ten classes: about one pair in ten matches
    d = caffe_pb2.Datum.FromString(recs[0][1])  # the harness's first pair for seed 1: images 345 and 139
    np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(2, 28, 28), images[[345, 139]])


def test_unseeded_runs_differ_and_log_their_seed(mnist_prefix, tmp_path, capsys):
    img, lab, _, _ = mnist_prefix
    seeds, dbs = [], []
    for run in range(2):
        dbs.append(str(tmp_path / f"run{run}"))
        assert siamese.main([img, lab, dbs[-1], "--backend=lmdb"]) == 0
        err = capsys.readouterr().err
        assert re.search(r"\] A total of 500 items\.$", err, re.M) and re.search(r"\] Rows: 28 Cols: 28$", err, re.M)
        seeds.append(int(re.search(r"Pairs drawn with mt19937 seeded (\d+) \(--seed=\1 draws them again\)", err)[1]))
    assert seeds[0] != seeds[1] and db_records(dbs[0]) != db_records(dbs[1])
    again = str(tmp_path / "again")
    assert siamese.main([img, lab, again, "--backend=lmdb", f"--seed={seeds[1]}"]) == 0
    assert db_records(again) == db_records(dbs[1])


def test_bad_inputs_are_one_error_each(mnist_prefix, tmp_path, caplog):
    img, lab, images, labels = mnist_prefix
    lmdb = "--backend=lmdb"
    assert siamese.main([lab, img, str(tmp_path / "swapped"), lmdb]) == 1
    assert "Incorrect image file magic. Received: 2049, expected 2051" in caplog.text
    short = str(_write_idx(tmp_path / "short-labels", b"\0\0\x08\x01", labels[:499]))
    assert siamese.main([img, short, str(tmp_path / "mismatch"), lmdb]) == 1
    assert "holds 500 images but" in caplog.text and "holds 499 labels" in caplog.text
    cut = tmp_path / "cut-images"
    cut.write_bytes(Path(img).read_bytes()[:-100])
    assert siamese.main([str(cut), lab, str(tmp_path / "cut_db"), lmdb]) == 1
    assert f"{cut}: truncated IDX file: image #499 needs 784 bytes, got 684" in caplog.text
    assert not os.path.exists(tmp_path / "cut_db")
    os.mkdir(tmp_path / "exists")
    assert siamese.main([img, lab, str(tmp_path / "exists"), lmdb]) == 1
    assert "already exists" in caplog.text
    assert siamese.main([img, lab, str(tmp_path / "s"), lmdb, "--seed=-7"]) == 1
    assert "the seed must be in 0..4294967295; received -7" in caplog.text
    assert siamese.main([img, lab, str(tmp_path / "x"), "--backend=rocksdb"]) == 1
    assert "unknown backend 'rocksdb'" in caplog.text
    assert siamese.main([img, lab]) == 1  # usage
