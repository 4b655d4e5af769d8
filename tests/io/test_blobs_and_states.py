"""Means (.binaryproto) and solver states (.solverstate, .solverstate.h5): real files and round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neocaffe.io import SolverState, read_blobproto, read_solverstate, write_blobproto, write_solverstate, \
    write_solverstate_h5
from neocaffe.proto import caffe_pb2

from .conftest import shared_params

STATES = shared_params("realdata/*/*.solverstate", "realdata/*/*.solverstate.h5", "fixtures/**/*.solverstate",
                       "fixtures/**/*.solverstate.h5")


def test_imagenet_mean_equals_caffes_npy(shared):
    folder = shared / "realdata" / "imagenet_mean"
    blob = read_blobproto(folder / "imagenet_mean.binaryproto")
    assert blob.data.shape == (1, 3, 256, 256) and blob.legacy_shape == (1, 3, 256, 256)
    np.testing.assert_array_equal(blob.data[0], np.load(folder / "ilsvrc_2012_mean.npy"))
    np.testing.assert_allclose(blob.data[0].mean(axis=(1, 2)), [104.00699, 116.66877, 122.67891], rtol=1e-6)


def test_cifar_mean(shared):
    blob = read_blobproto(shared / "realdata" / "cifar10_hdf5_2015" / "mean.binaryproto")
    expected = json.loads((shared / "fixtures" / "models" / "ref_results.json").read_text())["cifar_mean_per_channel"]
    assert blob.data.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(blob.data[0].mean(axis=(1, 2), dtype=np.float64), expected, rtol=1e-6)


@pytest.mark.parametrize("path", shared_params("realdata/*/*.binaryproto", "fixtures/**/*.binaryproto"))
def test_binaryproto_round_trip(path: Path, tmp_path: Path):
    if "truncated" in path.name:
        pytest.skip("the truncated file is tested in test_bad_input")
    blob = read_blobproto(path)
    out = tmp_path / "copy.binaryproto"
    write_blobproto(out, blob.data, legacy=blob.legacy_shape is not None)
    again = read_blobproto(out)
    assert again.legacy_shape == blob.legacy_shape
    np.testing.assert_array_equal(again.data, blob.data)
    if blob.legacy_shape is not None:  # compute_image_mean's layout: legacy dims + packed data
        assert out.read_bytes() == path.read_bytes()


def test_binaryproto_modern_shape_and_diff(tmp_path: Path):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_blobproto(tmp_path / "b.binaryproto", arr, diff=-arr)
    blob = read_blobproto(tmp_path / "b.binaryproto", want_diff=True)
    assert blob.legacy_shape is None
    np.testing.assert_array_equal(blob.data, arr)
    np.testing.assert_array_equal(blob.diff, -arr)
    proto = caffe_pb2.BlobProto.FromString((tmp_path / "b.binaryproto").read_bytes())
    assert list(proto.shape.dim) == [2, 3, 4] and len(proto.diff) == 24
    write_blobproto(tmp_path / "l.binaryproto", arr, legacy=True)
    assert read_blobproto(tmp_path / "l.binaryproto").legacy_shape == (1, 2, 3, 4)


@pytest.mark.parametrize("path", STATES)
def test_solverstates_read_and_round_trip(path: Path, tmp_path: Path):
    state = read_solverstate(path)
    iteration = int(path.name.split("_iter_")[1].split(".")[0])
    assert state.iter == iteration
    learned = (state.learned_net or "").replace("_lr1_", "_")  # PROVENANCE: cifar10 5000 was renamed from _lr1_
    assert learned.endswith(path.name.replace("solverstate", "caffemodel"))
    assert len(state.history) >= 2 and all(h.dtype == np.float32 for h in state.history)
    for fmt, writer in (("b", write_solverstate), ("h5", write_solverstate_h5)):
        out = tmp_path / f"copy.{fmt}"
        writer(out, state)
        again = read_solverstate(out)
        assert (again.iter, again.learned_net, again.current_step) == \
            (state.iter, state.learned_net, state.current_step)
        assert len(again.history) == len(state.history)
        for a, b in zip(state.history, again.history):
            assert a.shape == b.shape if fmt == "b" else a.size == b.size
            np.testing.assert_array_equal(a.reshape(-1), b.reshape(-1))
    if path.suffix == ".solverstate" and state.current_step:  # written by the same schema: identical bytes
        write_solverstate(tmp_path / "same", state)
        assert (tmp_path / "same").read_bytes() == path.read_bytes()


def test_solverstate_facts(shared):
    lenet = read_solverstate(shared / "realdata" / "lenet_v1_2014" / "lenet_iter_10000.solverstate")
    assert lenet.learned_net == "examples/mnist/lenet_iter_10000.caffemodel" and lenet.current_step == 0
    assert lenet.history_legacy_shapes[4] == (1, 1, 500, 800) and len(lenet.history) == 8
    snap = read_solverstate(shared / "fixtures" / "logs" / "snap_binary" / "lognet_iter_20.solverstate")
    h5 = read_solverstate(shared / "fixtures" / "logs" / "snap_hdf5" / "lognet_iter_20.solverstate.h5")
    assert (snap.iter, snap.current_step) == (h5.iter, h5.current_step) == (20, 1)
    assert [h.shape for h in snap.history] == [h.shape for h in h5.history] == \
        [(8, 3, 5, 5), (8,), (16, 8, 5, 5), (16,), (32, 1008), (32,), (4, 32), (4,)]
    for a, b in zip(snap.history, h5.history):
        np.testing.assert_array_equal(a, b)
    adam = read_solverstate(shared / "fixtures" / "solver" / "adam_fixed_iter_10.solverstate")
    assert [h.shape for h in adam.history] == [(1, 300), (1,), (1, 300), (1,)]
    step = read_solverstate(shared / "fixtures" / "solver" / "sgd_step_l1_iter_10.solverstate")
    assert step.current_step == 3


def test_hdf5_solverstate_layout(tmp_path: Path):
    import h5py

    state = SolverState(7, "net_iter_7.caffemodel.h5", [np.ones((2, 3), np.float32)] * 11, current_step=2)
    write_solverstate_h5(tmp_path / "s.h5", state)
    with h5py.File(tmp_path / "s.h5", "r") as h5:
        assert h5["iter"].dtype == np.int32 and h5["iter"].shape == (1,) and h5["current_step"][0] == 2
        tid = h5["learned_net"].id.get_type()
        assert tid.get_size() == len(state.learned_net) + 1 and tid.get_strpad() == h5py.h5t.STR_NULLTERM
        assert sorted(h5["history"].keys(), key=int) == [str(i) for i in range(11)]
    again = read_solverstate(tmp_path / "s.h5")
    assert again.learned_net == state.learned_net and len(again.history) == 11   # 10 sorts after 9
    write_solverstate(tmp_path / "none", SolverState(1, None, []))
    assert read_solverstate(tmp_path / "none").learned_net is None
