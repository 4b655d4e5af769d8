"""extract_features (BVLC's tools/extract_features.cpp) on a small Data -> Convolution -> ReLU (in place) ->
InnerProduct net reading an LMDB written here: the stored Datums against neocaffe's own forward of the same
batches, against NumPy (the data blob, the InnerProduct of the extracted conv features), Caffe's keys, wire
bytes and commits, and the command-line errors."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neocaffe.data.datum import array_to_datum
from neocaffe.data.db_writer import DBWriter
from neocaffe.data.sources import DBReader
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.io.weights import save_weights
from neocaffe.layers.base import TEST
from neocaffe.proto import caffe_pb2
from neocaffe.tools import extract_features as ef
from tests.conftest import REPO
from tests.records import varint

N_IMAGES, SHAPE, SCALE = 7, (3, 6, 6), 0.00390625


def _prototxt(src: Path, batch: int) -> str:
    return f'''name: "feat"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: {SCALE} }} data_param {{ source: "{src}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 3
    weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
  inner_product_param {{ num_output: 5
    weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, images, weights path, prototxt path for batch 3, for batch 250)."""
    tmp = tmp_path_factory.mktemp("extract_features")
    g = np.random.default_rng(5)
    images = [g.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(N_IMAGES)]
    with DBWriter(str(tmp / "images_lmdb"), "lmdb") as db:
        for i, a in enumerate(images):
            db.put(f"{i:08d}", array_to_datum(a, i).SerializeToString())
    protos = []
    for batch in (3, 250):
        p = tmp / f"feat_b{batch}.prototxt"
        p.write_text(_prototxt(tmp / "images_lmdb", batch))
        protos.append(p)
    weights = tmp / "feat.caffemodel"
    save_weights(weights, Net(read_net(str(protos[0])), TEST).to_weights(), hdf5=False)
    return tmp, images, weights, protos[0], protos[1]


def _reference(proto: Path, weights: Path, batches: int, blobs: list[str]) -> dict[str, np.ndarray]:
    """neocaffe's own net, forward ``batches`` times: each blob's values, batches stacked on the first axis."""
    net = Net(read_net(str(proto)), TEST)
    net.copy_from(str(weights))
    out: dict[str, list[np.ndarray]] = {b: [] for b in blobs}
    with torch.no_grad():
        for _ in range(batches):
            net.forward()
            for b in blobs:
                out[b].append(net.blob(b).detach().cpu().numpy().copy())
    net.close()
    return {b: np.concatenate(v) for b, v in out.items()}


def _read(path: Path, backend: str = "lmdb") -> list[tuple[bytes, caffe_pb2.Datum, bytes]]:
    with DBReader(str(path), backend) as r:
        return [(bytes(k), caffe_pb2.Datum.FromString(bytes(v)), bytes(v)) for k, v in r.items()]


def _rows(path: Path, backend: str = "lmdb") -> np.ndarray:
    """The float_data of every record, in key order, one row each."""
    return np.stack([np.asarray(d.float_data, np.float32) for _, d, _ in _read(path, backend)])


def _caffe_bytes(c: int, h: int, w: int, values: np.ndarray) -> bytes:
    """What Caffe's Datum::SerializeToString writes: channels, height, width, then float_data unpacked
    (proto2 ``repeated float``: one tag 0x35 per value)."""
    head = b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w)
    return head + b"".join(b"\x35" + struct.pack("<f", v) for v in values.astype(np.float32))


def test_features_match_the_nets_forward(setup, tmp_path, caplog):
    _, images, weights, proto, _ = setup
    batches, blobs = 3, ["ip1", "conv1", "data", "label"]
    outs = [tmp_path / f"f_{b}" for b in blobs]
    argv = [str(weights), str(proto), ",".join(blobs), ",".join(map(str, outs)), str(batches), "lmdb", "CPU"]
    assert ef.main(argv) == 0
    n = batches * 3
    ref = _reference(proto, weights, batches, blobs)
    shapes = {"ip1": (5, 1, 1), "conv1": (4, 4, 4), "data": SHAPE, "label": (1, 1, 1)}
    got: dict[str, np.ndarray] = {}
    for b, out in zip(blobs, outs):
        recs = _read(out)
        assert [k for k, _, _ in recs] == [b"%010d" % i for i in range(n)], b  # Caffe's format_int(i, 10)
        rows = []
        for i, (_, d, raw) in enumerate(recs):
            assert (d.channels, d.height, d.width) == shapes[b], b
            assert not d.HasField("data") and not d.HasField("label") and not d.HasField("encoded")
            values = np.asarray(d.float_data, np.float32)
            assert raw == _caffe_bytes(*shapes[b], values), (b, i)
            rows.append(values)
        got[b] = np.stack(rows)
        np.testing.assert_array_equal(got[b], ref[b].reshape(n, -1), err_msg=b)
    # independent of the net: the data layer read the 7 records in order, wrapping; the ReLU in place
    # shows in conv1; ip1 is the InnerProduct of the extracted conv1 rows
    order = [i % N_IMAGES for i in range(n)]
    np.testing.assert_array_equal(got["data"], np.stack([images[i].reshape(-1) * np.float32(SCALE) for i in order]))
    np.testing.assert_array_equal(got["label"][:, 0], np.asarray(order, np.float32))
    assert got["conv1"].min() >= 0 and (got["conv1"] == 0).any()
    w, bias = _ip(weights)
    np.testing.assert_allclose(got["ip1"], got["conv1"].astype(np.float64) @ w.T + bias, rtol=1e-5, atol=1e-5)
    messages = [r.getMessage() for r in caplog.records if r.name == ef.log.name]
    assert messages[0] == "Using CPU" and "Extracting Features" in messages
    assert messages[-5:] == [*(f"Extracted features of {n} query images for feature blob {b}" for b in blobs),
                             "Successfully extracted the features!"]


def _ip(weights: Path) -> tuple[np.ndarray, np.ndarray]:
    from neocaffe.io.weights import load_weights

    lw = {lw.name: lw for lw in load_weights(str(weights))}["ip1"]
    return np.asarray(lw.blobs[0], np.float64), np.asarray(lw.blobs[1], np.float64)


@pytest.mark.parametrize("backend", ["leveldb", "lmdb"])
def test_commits_every_1000_and_the_backends(setup, tmp_path, caplog, backend):
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    _, _, weights, proto3, proto250 = setup
    out = tmp_path / f"ip_{backend}"
    assert ef.main([str(weights), str(proto250), "ip1", str(out), "5", backend]) == 0  # the mode defaults to CPU
    recs = _read(out, backend)
    assert [k for k, _, _ in recs] == [b"%010d" % i for i in range(1250)]
    ref = _reference(proto3, weights, 3, ["ip1"])["ip1"]  # the same images in the same order, 3 at a time
    got = _rows(out, backend)
    np.testing.assert_array_equal(got[:9], ref)
    np.testing.assert_array_equal(got[7:14], got[:7])  # 7 records, wrapping
    messages = [r.getMessage() for r in caplog.records if r.name == ef.log.name]
    assert [m for m in messages if m.startswith("Extracted")] == [
        "Extracted features of 1000 query images for feature blob ip1",
        "Extracted features of 1250 query images for feature blob ip1"]


def test_run_as_a_module(setup, tmp_path):
    _, _, weights, proto, _ = setup
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "neocaffe.tools.extract_features", str(weights), str(proto), "ip1",
           str(tmp_path / "ip"), "2", "lmdb"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "] Successfully extracted the features!" in done.stderr
    last = "Extracted features of 6 query images for feature blob ip1"
    line = next(x for x in done.stderr.splitlines() if x.endswith(last))
    assert line.startswith("E") and "extract_features.py:" in line  # glog's line, at Caffe's severity
    np.testing.assert_array_equal(_rows(tmp_path / "ip"), _reference(proto, weights, 2, ["ip1"])["ip1"])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "already exists" in done.stderr


def test_errors_name_what_was_wrong(setup, tmp_path, caplog, monkeypatch):
    _, _, weights, proto, _ = setup
    w, p = str(weights), str(proto)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")

    def fails(argv: list[str], *texts: str) -> None:
        caplog.clear()
        assert ef.main(argv) == 1, argv
        for t in texts:
            assert t in caplog.text, (t, caplog.text)
        assert not os.path.exists(a) and not os.path.exists(b), argv  # nothing created

    fails([w, p, "ip1,conv1", a, "2", "lmdb"], "the number of blob names and dataset names must be equal",
          "Received: 2 blob names (ip1,conv1) and 1 dataset names")
    fails([w, p, "fc7", a, "2", "lmdb"], f"Unknown feature blob name 'fc7' in the network {p}",
          "its blobs: data, label, conv1, ip1")
    fails([w, p, "ip1,conv1", f"{a},{a}", "2", "lmdb"], f"'{a}' is given twice")
    os.mkdir(tmp_path / "taken")
    fails([w, p, "ip1,conv1", f"{a},{tmp_path / 'taken'}", "2", "lmdb"], f"'{tmp_path / 'taken'}' already exists")
    fails([w, p, "ip1", a, "ten", "lmdb"], "num_mini_batches: expected a non-negative integer. Received: 'ten'")
    fails([w, p, "ip1", a, "-1", "lmdb"], "Received: '-1'")
    fails([w, p, "ip1", a, "2", "rocksdb"], "db_type: unknown backend 'rocksdb'")
    fails([w, p, "ip1", a, "2", "lmdb", "gpu"], "mode: expected CPU or GPU. Received: 'gpu'")
    fails([w, p, "ip1", a, "2", "lmdb", "GPU", "x"], "DEVICE_ID: expected a non-negative integer. Received: 'x'")
    fails([str(tmp_path / "none.caffemodel"), p, "ip1", a, "2", "lmdb"],
          f"pretrained_net_param '{tmp_path / 'none.caffemodel'}': no such file")
    fails([w, str(tmp_path / "none.prototxt"), "ip1", a, "2", "lmdb"], "none.prototxt")
    fails([w, p, "ip1", a, "2"], "Usage: extract_features  pretrained_net_param")  # too few
    fails([w, p, "ip1", a, "2", "lmdb", "CPU", "0", "extra"], "Usage: extract_features")  # too many
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fails([w, p, "ip1", a, "2", "lmdb", "GPU", "1"], "Using Device_id=1", "CUDA is not available")
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"not a model")
    fails([str(bad), p, "ip1", a, "2", "lmdb"], str(bad))


@pytest.mark.gpu
def test_gpu_matches_cpu(setup, tmp_path):
    _, _, weights, proto, _ = setup
    for mode in ("CPU", "GPU"):
        assert ef.main([str(weights), str(proto), "ip1", str(tmp_path / mode), "2", "lmdb", mode, "0"]) == 0
    np.testing.assert_allclose(_rows(tmp_path / "GPU"), _rows(tmp_path / "CPU"), rtol=1e-5, atol=1e-6)
