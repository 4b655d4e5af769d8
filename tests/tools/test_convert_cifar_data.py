"""convert_cifar_data on small synthetic batches in CIFAR-10's binary format (1 label byte + 1024 R, 1024 G,
1024 B bytes per record): every key and every serialized Datum against the files read independently."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from neocaffe.data.sources import DataSourceError
from neocaffe.proto import caffe_pb2
from neocaffe.tools import convert_cifar_data
from tests.records import db_records, varint

N = 3  # records per synthetic batch file
REC = 3073


def _datum_bytes(channels: int, height: int, width: int, data: bytes, label: int) -> bytes:
    """A Datum's wire bytes written by hand (fields 1, 2, 3 varint, 4 bytes, 5 varint), as Caffe's
    set_channels/height/width/data/label + SerializeToString produce them."""
    return (b"\x08" + varint(channels) + b"\x10" + varint(height) + b"\x18" + varint(width)
            + b"\x22" + varint(len(data)) + data + b"\x28" + varint(label))


@pytest.fixture
def batches(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[int, np.ndarray]]]]:
    """Six files of N records each; returns the folder and, per file, (label byte, HWC RGB image)."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    content = {}
    names = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
    for f, name in enumerate(names):
        recs = []
        for r in range(N):
            label = 200 if (f, r) == (2, 1) else int((3 * f + r) % 10)  # one byte > 127: a signed char
            recs.append((label, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))
        # CIFAR-10's binary layout: label, then the red plane, the green plane, the blue plane
        (folder / name).write_bytes(b"".join(bytes([lab]) + img.transpose(2, 0, 1).tobytes() for lab, img in recs))
        content[name] = recs
    return folder, content


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_every_record_is_caffes_datum(batches, tmp_path, capsys, backend):
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    folder, content = batches
    out = tmp_path / "out"
    out.mkdir()
    assert convert_cifar_data.main([str(folder), str(out), backend, f"--records_per_file={N}"]) == 0
    assert sorted(os.listdir(out)) == [f"cifar10_test_{backend}", f"cifar10_train_{backend}"]

    train = db_records(out / f"cifar10_train_{backend}")
    assert [k for k, _ in train] == [b"%05d" % i for i in range(5 * N)]
    for f in range(5):
        raw = (folder / f"data_batch_{f + 1}.bin").read_bytes()
        for r in range(N):
            rec = raw[r * REC:(r + 1) * REC]
            label = rec[0] - 256 if rec[0] > 127 else rec[0]
            assert train[f * N + r][1] == _datum_bytes(3, 32, 32, rec[1:], label), (f, r)
    test = db_records(out / f"cifar10_test_{backend}")
    assert [k for k, _ in test] == [b"%05d" % i for i in range(N)]
    raw = (folder / "test_batch.bin").read_bytes()
    for r in range(N):
        assert test[r][1] == _datum_bytes(3, 32, 32, raw[r * REC + 1:(r + 1) * REC], raw[r * REC]), r

    # the Datum holds the planes as stored: CHW in R, G, B order; label bytes > 127 read as signed chars
    for key, (lab, img) in ((2 * N + 1, content["data_batch_3.bin"][1]), (4 * N + 2, content["data_batch_5.bin"][2])):
        d = caffe_pb2.Datum.FromString(train[key][1])
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 32, 32).transpose(1, 2, 0), img)
        assert d.label == (lab - 256 if lab > 127 else lab)
    assert caffe_pb2.Datum.FromString(train[2 * N + 1][1]).label == -56
    # a label 0 is stored explicitly, as Caffe's set_label(0) does
    zero = next(i for i, (_, v) in enumerate(train) if caffe_pb2.Datum.FromString(v).label == 0)
    assert train[zero][1].endswith(b"\x28\x00")

    err = capsys.readouterr().err
    lines = re.findall(r"\] (Writing Training data|Training Batch \d|Writing Testing data)$", err, re.M)
    assert lines == ["Writing Training data"] + [f"Training Batch {k}" for k in range(1, 6)] + ["Writing Testing data"]


def _run(folder: Path, out: Path, *extra: str) -> int:
    return convert_cifar_data.main([str(folder), str(out), "lmdb", *extra])


def test_damaged_or_missing_files_are_one_clear_error(batches, tmp_path, caplog):
    folder, _ = batches
    out = tmp_path / "out"
    out.mkdir()
    # Caffe's own batch size: our 3-record files are short, and that is named before anything is written
    assert _run(folder, out) == 1
    assert (f"{folder / 'data_batch_1.bin'}: truncated CIFAR-10 batch: record #3 needs 3073 bytes "
            f"(1 label + 3072 pixels), got 0; expected 10000 records") in caplog.text
    assert os.listdir(out) == []
    # a cut last record
    b4 = folder / "data_batch_4.bin"
    b4.write_bytes(b4.read_bytes()[:-2073])
    assert _run(folder, out, f"--records_per_file={N}") == 1
    assert f"{b4}: truncated CIFAR-10 batch: record #2 needs 3073 bytes (1 label + 3072 pixels), got 1000" \
        in caplog.text
    b4.unlink()
    assert _run(folder, out, f"--records_per_file={N}") == 1
    assert f"Unable to open train file #4 {b4}: No such file or directory" in caplog.text
    assert os.listdir(out) == []
    b4.write_bytes((folder / "data_batch_5.bin").read_bytes())
    # a missing test file stops the run before the training database is written
    test = folder / "test_batch.bin"
    test.rename(folder / "test_batch")
    assert _run(folder, out, f"--records_per_file={N}") == 1
    assert f"Unable to open test file {test}" in caplog.text
    assert os.listdir(out) == []
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes() + b"\0")
    (folder / "test_batch").rename(test)
    assert _run(folder, out, f"--records_per_file={N}") == 1
    assert f"{test}: 9220 bytes is more than 3 records of 3073 bytes (9219 bytes)" in caplog.text
    test.write_bytes(test.read_bytes()[:-1])
    assert _run(folder, tmp_path / "nowhere", f"--records_per_file={N}") == 1
    assert f"output folder '{tmp_path / 'nowhere'}' does not exist" in caplog.text
    assert convert_cifar_data.main([str(folder), str(out), "rocksdb", f"--records_per_file={N}"]) == 1
    assert "unknown backend 'rocksdb'" in caplog.text
    assert _run(folder, out, "--records_per_file=0") == 1
    assert "--records_per_file must be at least 1; received 0" in caplog.text
    assert _run(folder, out, f"--records_per_file={N}") == 0  # all repaired
    assert _run(folder, out, f"--records_per_file={N}") == 1
    assert "cifar10_train_lmdb' already exists" in caplog.text
    assert convert_cifar_data.main([str(folder), str(out)]) == 1  # usage


def test_pad_stores_zero_bordered_images_as_the_scnn_branch(batches, tmp_path, caplog, capsys):
    """The scnn branch's 4th argument (create_padded_cifar10.sh passes 4): 3 x 40 x 40 Datums, the image in the
    middle, zeros around; labels and keys as without it. A wrong count or a bad pad is the usage / an error."""
    folder, content = batches
    out = tmp_path / "out"
    out.mkdir()
    assert _run(folder, out, "4", f"--records_per_file={N}") == 0
    train = db_records(out / "cifar10_train_lmdb")
    assert len(train) == 5 * N
    for key, (lab, img) in ((1, content["data_batch_1.bin"][1]), (2 * N + 1, content["data_batch_3.bin"][1])):
        d = caffe_pb2.Datum.FromString(train[key][1])
        assert (d.channels, d.height, d.width) == (3, 40, 40)
        want = np.pad(img.transpose(2, 0, 1), ((0, 0), (4, 4), (4, 4)))
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 40, 40), want)
        assert d.label == (lab - 256 if lab > 127 else lab)
    test = caffe_pb2.Datum.FromString(db_records(out / "cifar10_test_lmdb")[2][1])
    np.testing.assert_array_equal(np.frombuffer(test.data, np.uint8).reshape(3, 40, 40)[:, 4:36, 4:36],
                                  content["test_batch.bin"][2][1].transpose(2, 0, 1))

    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DataSourceError, match="pad must be 0 or more pixels; received -1"):
        convert_cifar_data.convert(str(folder), str(other), "lmdb", -1, records_per_file=N)
    assert _run(folder, other, "four", f"--records_per_file={N}") == 1
    assert "pad must be a whole number of pixels (0 or more); received 'four'" in caplog.text
    assert _run(folder, other, "4", "5", f"--records_per_file={N}") == 1  # Caffe's tool: argc 4 or 5 only
    assert "output_folder db_type [pad]\n" in capsys.readouterr().err
    assert os.listdir(other) == []
