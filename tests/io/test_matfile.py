"""MAT-files as DeepLab's matio_io.cpp writes and reads blobs, checked with SciPy's own MAT reader and
writer: dims [W, H, C, N] of Caffe's memory, single precision, Level 5; reading Level 5 (plain and
compressed, double, integral storage types) and 7.3 (HDF5) files; clear errors."""
from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest

from neocaffe.io.errors import CaffeFileError
from neocaffe.io.matfile import read_blob_mat, write_blobs_mat

sio = pytest.importorskip("scipy.io")


def test_written_files_hold_the_blob_as_matlab_sees_it(tmp_path):
    blob = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    write_blobs_mat(tmp_path / "a.mat", {"data": blob, "diff": blob * 2})
    m = sio.loadmat(tmp_path / "a.mat")
    assert m["data"].dtype == np.float32 and m["data"].shape == (5, 4, 3, 2)  # [W, H, C, N]
    np.testing.assert_array_equal(m["data"], blob.transpose(3, 2, 1, 0))  # data(w, h, c, n) = blob[n, c, h, w]
    np.testing.assert_array_equal(m["diff"], (blob * 2).transpose(3, 2, 1, 0))
    np.testing.assert_array_equal(read_blob_mat(tmp_path / "a.mat"), blob)
    np.testing.assert_array_equal(read_blob_mat(tmp_path / "a.mat", "diff"), blob * 2)
    write_blobs_mat(tmp_path / "b.mat", {"data": blob[0, 0]})  # fewer axes: padded at the front
    assert sio.loadmat(tmp_path / "b.mat")["data"].shape == (5, 4, 1, 1)
    assert read_blob_mat(tmp_path / "b.mat").shape == (1, 1, 4, 5)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reads_what_matlab_writers_write(tmp_path, compress, dtype):
    """SciPy writes like MATLAB's save: trailing dims of 1 dropped (read back as 1), double arrays,
    compressed variables."""
    arr = (np.arange(60).reshape(5, 4, 3) % 7).astype(dtype)  # MATLAB order [W, H, C]
    sio.savemat(tmp_path / "m.mat", {"other": np.eye(2), "data": arr}, do_compression=compress)
    blob = read_blob_mat(tmp_path / "m.mat")
    assert blob.dtype == np.float32 and blob.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(blob, arr.transpose(2, 1, 0)[None].astype(np.float32))


def _tag(kind, payload):
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def test_reads_integral_doubles_stored_in_a_smaller_type(tmp_path):
    """MATLAB's save keeps a double array of small integers as miUINT8 data under the double class
    (Level 5 format, "Numeric arrays"); written here byte by byte."""
    values = np.arange(6, dtype=np.uint8)
    body = (_tag(6, struct.pack("<II", 6, 0)) + _tag(5, struct.pack("<2i", 3, 2)) + _tag(1, b"data")
            + _tag(2, values.tobytes()))
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    (tmp_path / "u.mat").write_bytes(header + _tag(14, body))
    np.testing.assert_array_equal(sio.loadmat(tmp_path / "u.mat")["data"], values.reshape(3, 2, order="F"))
    np.testing.assert_array_equal(read_blob_mat(tmp_path / "u.mat"), values.reshape(1, 1, 2, 3).astype(np.float32))


def test_reads_v73_hdf5_files(tmp_path):
    blob = np.random.default_rng(1).standard_normal((1, 2, 3, 4)).astype(np.float32)
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        f["data"] = blob  # MATLAB 7.3 stores [W, H, C, N] as an HDF5 dataset of the reversed shape
    with open(tmp_path / "v73.mat", "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116, b" "))
    np.testing.assert_array_equal(read_blob_mat(tmp_path / "v73.mat"), blob)


def test_errors_name_the_file_and_what_was_expected(tmp_path):
    (tmp_path / "t.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(CaffeFileError, match=r"t.mat: not a MAT-file \(expected a Level 5"):
        read_blob_mat(tmp_path / "t.mat")
    sio.savemat(tmp_path / "n.mat", {"scores": np.ones((2, 2), np.float32)})
    with pytest.raises(CaffeFileError, match=r"n.mat: no variable 'data' .*received variables \['scores'\]"):
        read_blob_mat(tmp_path / "n.mat")
    sio.savemat(tmp_path / "c.mat", {"data": np.ones((2, 2)) * 1j})
    with pytest.raises(CaffeFileError, match=r"c.mat: variable 'data' is complex \(expected a real array\)"):
        read_blob_mat(tmp_path / "c.mat")
    sio.savemat(tmp_path / "i.mat", {"data": np.ones((2, 2), np.int32)})
    with pytest.raises(CaffeFileError, match=r"i.mat: variable 'data' is int32 \(expected single or double\)"):
        read_blob_mat(tmp_path / "i.mat")
    sio.savemat(tmp_path / "five.mat", {"data": np.ones((2, 1, 2, 2, 2), np.float32)})
    with pytest.raises(CaffeFileError, match=r"five.mat: variable 'data' has dims \[2, 1, 2, 2, 2\]"):
        read_blob_mat(tmp_path / "five.mat")
    write_blobs_mat(tmp_path / "ok.mat", {"data": np.ones((1, 1, 8, 8), np.float32)})
    (tmp_path / "cut.mat").write_bytes((tmp_path / "ok.mat").read_bytes()[:200])
    with pytest.raises(CaffeFileError, match=r"cut.mat: truncated MAT-file"):
        read_blob_mat(tmp_path / "cut.mat")
    with pytest.raises(CaffeFileError, match=r"no such MAT-file"):
        read_blob_mat(tmp_path / "absent.mat")
    with pytest.raises(CaffeFileError, match=r"nofolder/x.mat: cannot write the MAT-file"):
        write_blobs_mat(tmp_path / "nofolder" / "x.mat", {"data": np.ones(2, np.float32)})


@pytest.mark.parametrize("compress", [False, True])
def test_damaged_files_are_clear_errors(tmp_path, compress):
    """Every truncation and 300 random byte changes of a MAT-file: the blob, or a CaffeFileError naming
    the file, never another exception."""
    blob = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    if compress:
        sio.savemat(tmp_path / "ok.mat", {"data": blob[0].transpose(2, 1, 0)}, do_compression=True)
    else:
        write_blobs_mat(tmp_path / "ok.mat", {"data": blob})
    good = (tmp_path / "ok.mat").read_bytes()
    g = np.random.default_rng(0)
    damaged = [good[:n] for n in range(0, len(good), 3)]
    for _ in range(300):
        b = bytearray(good)
        for pos in g.integers(0, len(b), int(g.integers(1, 4))):
            b[pos] = int(g.integers(0, 256))
        damaged.append(bytes(b))
    for k, data in enumerate(damaged):
        path = tmp_path / f"d{k}.mat"
        path.write_bytes(data)
        try:
            read_blob_mat(path)
        except CaffeFileError as e:
            assert str(e).startswith(str(path)), str(e)
