"""Data layers against real Caffe's outputs (../shared/fixtures/data), their errors, and repeatability."""
from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch

from neocaffe import rng
from neocaffe.data import prefetch
from neocaffe.data.datum import array_to_datum, decode_datum
from neocaffe.data.sources import DBReader
from neocaffe.data.db_writer import DBWriter
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import BuildContext
from tests.conftest import SHARED, shared_path

FOLDER = SHARED / "fixtures" / "data"
CASES = [
    "data_lmdb_meanfile", "data_lmdb_meanvalue", "data_lmdb_encoded_meanfile", "data_lmdb_gray_meanvalue",
    "data_lmdb_from_jpeg_scale_only", "imagedata_png_color", "imagedata_png_gray_crop_mean",
    "imagedata_jpeg_color", "hdf5data",
]


def _net(text: str, phase: int = 1, device: str | None = None, workers: int | None = None) -> Net:
    """The net of ``text``; ``workers``: data worker processes its build asks for (None: the default)."""
    return Net(read_net(text), phase, source="<test>", device=device, context=BuildContext(data_workers=workers))


def _run_golden(name: str, device: str | None = None, extra: int = 0, workers: int | None = None) -> None:
    z = np.load(FOLDER / f"{name}.npz")
    net = Net(read_net(f"{name}.prototxt"), 1, source=f"{name}.prototxt", device=device,
              context=BuildContext(data_workers=workers))
    k_max = len([k for k in z.files if k.endswith("/data")])
    for k in range(k_max + extra):
        net.forward()
        if k >= k_max:
            continue
        for blob in ("data", "label"):
            mine = net.blob_data[blob].detach().cpu().numpy()
            ref = z[f"batch{k}/{blob}"]
            assert mine.dtype == np.float32 and mine.shape == ref.shape, (name, k, blob, mine.shape, ref.shape)
            np.testing.assert_array_equal(mine, ref, err_msg=f"{name} batch{k}/{blob}")


@pytest.mark.parametrize("name", CASES)
def test_matches_caffe(name, monkeypatch):
    monkeypatch.chdir(shared_path("fixtures", "data"))
    _run_golden(name)


@pytest.mark.parametrize("name", ["data_lmdb_meanfile", "data_lmdb_encoded_meanfile", "imagedata_png_gray_crop_mean"])
def test_matches_caffe_with_worker_processes(name, monkeypatch):
    monkeypatch.chdir(shared_path("fixtures", "data"))
    _run_golden(name, extra=3, workers=2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["data_lmdb_meanfile", "imagedata_png_color", "hdf5data"])
def test_matches_caffe_cuda(name, monkeypatch):
    monkeypatch.chdir(shared_path("fixtures", "data"))
    _run_golden(name, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["data_lmdb_meanfile", "imagedata_png_gray_crop_mean"])
def test_matches_caffe_cuda_with_worker_processes(name, monkeypatch):
    """Workers forked after CUDA is initialised, batches pinned ahead by a thread (PinAhead), past a wrap."""
    monkeypatch.chdir(shared_path("fixtures", "data"))
    _run_golden(name, device="cuda", extra=3, workers=2)


# -- tiny sources made here -----------------------------------------------------------------------
def _lmdb(path, n=7, shape=(3, 12, 14), encoded=False, keys=None):
    g = np.random.default_rng(1)
    arrays = [g.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    with DBWriter(str(path), "lmdb") as db:
        for i, a in enumerate(arrays):
            from neocaffe.data.datum import encode_array_to_datum

            d = encode_array_to_datum(a, i, "png") if encoded else array_to_datum(a, i)
            db.put((keys or [f"{j:08d}_img{j}.png" for j in range(n)])[i], d.SerializeToString())
    return arrays


def _data_net(source, extra="", tp="", phase_bs=3, top2=True):
    tops = 'top: "data" top: "label"' if top2 else 'top: "data"'
    return (f'layer {{ name: "data" type: "Data" {tops} transform_param {{ {tp} }} '
            f'data_param {{ source: "{source}" batch_size: {phase_bs} {extra} }} }}')


def test_wraps_at_the_end_and_logs(tmp_path, caplog):
    _lmdb(tmp_path / "db", n=7)
    with caplog.at_level(logging.INFO, logger="neocaffe.data"):
        net = _net(_data_net(tmp_path / "db", "backend: LMDB"))
        labels = []
        for _ in range(4):
            net.forward()
            labels.append(net.blob_data["label"].tolist())
    assert labels == [[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 3, 4]]
    assert "Restarting data prefetching from start." in caplog.text
    assert "output data size: 3,3,12,14" in caplog.text


def test_workers_come_from_the_build_then_the_environment(tmp_path, monkeypatch):
    """BuildContext.data_workers (passed by whoever builds the net) wins over NEOCAFFE_DATA_WORKERS,
    which wins over the size rule (tiny sources in process); the processes a forward starts show it."""
    import multiprocessing

    monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", "1")
    assert (prefetch.default_workers(3), prefetch.default_workers(3, requested=2)) == (1, 2)
    monkeypatch.delenv("NEOCAFFE_DATA_WORKERS")
    assert prefetch.default_workers(3) == 0 and prefetch.default_workers(3, requested=0) == 0
    monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", "x")
    with pytest.raises(ValueError, match="NEOCAFFE_DATA_WORKERS must be an integer; received 'x'"):
        prefetch.default_workers(3)
    with pytest.raises(ValueError, match="data_workers must be >= 0"):
        BuildContext(data_workers=-1)
    _lmdb(tmp_path / "db", n=7)
    text = _data_net(tmp_path / "db")
    before = set(multiprocessing.active_children())
    for env, workers, started in (("1", 0, 0), ("0", 1, 1), ("1", None, 1)):
        monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", env)
        net = _net(text, workers=workers)
        net.forward()
        assert len(set(multiprocessing.active_children()) - before) == started, (env, workers)
        net.layer("data").close()


def test_train_crop_mirror_is_seeded_and_repeatable(tmp_path):
    arrays = _lmdb(tmp_path / "db", n=7)
    mean = np.random.default_rng(5).random((3, 12, 14)).astype(np.float32) * 50
    from neocaffe.io.binaryproto import write_blobproto

    write_blobproto(str(tmp_path / "m.binaryproto"), mean[None], legacy=True)
    text = _data_net(tmp_path / "db", tp=f'crop_size: 8 mirror: true scale: 0.5 mean_file: "{tmp_path / "m.binaryproto"}"',
                     phase_bs=4)

    def run(seed, n_workers):
        rng.set_seed(seed)
        net = _net(text, phase=0, workers=n_workers)
        out = []
        for _ in range(4):
            net.forward()
            out.append((net.blob_data["data"].clone(), net.blob_data["label"].clone()))
        net.layer("data").close()
        return out

    a, b, c, w, w1 = run(3, 0), run(3, 0), run(4, 0), run(3, 2), run(3, 1)
    for (da, la), (db_, lb), (dw, lw), (du, lu) in zip(a, b, w, w1):
        torch.testing.assert_close(da, db_, rtol=0, atol=0)
        torch.testing.assert_close(da, dw, rtol=0, atol=0)  # the worker count does not change batches
        torch.testing.assert_close(da, du, rtol=0, atol=0)
        assert la.tolist() == lb.tolist() == lw.tolist() == lu.tolist()
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c))
    # every item is a 8x8 crop of (image - mean) * 0.5, mirrored or not (Caffe's datum path)
    flips = 0
    for data, labels in a:
        for item, label in zip(data.numpy(), labels.numpy().astype(int)):
            src = (arrays[label].astype(np.float32) - mean) * np.float32(0.5)
            hits = [(h, w_, f) for h in range(5) for w_ in range(7) for f in (0, 1)
                    if np.array_equal(item, (src[:, h:h + 8, w_:w_ + 8][:, :, ::-1] if f else src[:, h:h + 8, w_:w_ + 8]))]
            assert hits, f"item with label {label} is no crop of its image"
            flips += hits[0][2]
    assert 0 < flips < 16


def test_rand_skip_starts_inside(tmp_path):
    _lmdb(tmp_path / "db", n=7)
    starts = set()
    for seed in range(8):
        rng.set_seed(seed)
        net = _net(_data_net(tmp_path / "db", "rand_skip: 5"))
        net.forward()
        lab = net.blob_data["label"].numpy().astype(int)
        assert lab[0] < 5 and list(lab) == [(lab[0] + i) % 7 for i in range(3)]
        starts.add(int(lab[0]))
    assert len(starts) > 1


def test_leveldb_backend_and_detection(tmp_path, monkeypatch):
    folder = shared_path("fixtures", "data")
    with DBReader(str(folder / "lmdb_raw")) as src, DBWriter(str(tmp_path / "ldb"), "leveldb") as dst:
        for k, v in src.items():
            dst.put(k, v)
    text = (FOLDER / "data_lmdb_meanvalue.prototxt").read_text()
    z = np.load(FOLDER / "data_lmdb_meanvalue.npz")
    for backend in ("backend: LEVELDB", ""):
        net = Net(read_net(text.replace('source: "lmdb_raw"', f'source: "{tmp_path / "ldb"}"')
                           .replace("backend: LMDB", backend)), 1)
        monkeypatch.chdir(folder)  # (the mean values need no file; the source is absolute)
        net.forward()
        np.testing.assert_array_equal(net.blob_data["data"].numpy(), z["batch0/data"])


def test_legacy_data_param_transform_fields(tmp_path):
    arrays = _lmdb(tmp_path / "db", n=3)
    net = _net(_data_net(tmp_path / "db", "scale: 0.25 crop_size: 10"))
    net.forward()
    want = np.stack([a[:, 1:11, 2:12].astype(np.float32) * np.float32(0.25) for a in arrays])
    np.testing.assert_array_equal(net.blob_data["data"].numpy(), want)


def test_single_top_and_float_datums(tmp_path):
    g = np.random.default_rng(0)
    items = [g.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(3)]
    with DBWriter(str(tmp_path / "f"), "lmdb") as db:
        for i, a in enumerate(items):
            db.put(f"{i}", array_to_datum(a, i).SerializeToString())
    net = _net(_data_net(tmp_path / "f", top2=False, tp="scale: 2"))
    net.forward()
    np.testing.assert_array_equal(net.blob_data["data"].numpy(), np.stack(items) * 2)
    assert net.layer("data").reshape([]) == [(3, 2, 3, 4)]


# -- errors ---------------------------------------------------------------------------------------
def test_missing_source(tmp_path):
    with pytest.raises(ValueError, match=r"layer 'data' \(Data\).*no such lmdb database.*nowhere"):
        _net(_data_net(tmp_path / "nowhere", "backend: LMDB"))
    with pytest.raises(ValueError, match=r"no such list file.*nolist.txt"):
        _net('layer { name: "d" type: "ImageData" top: "data" top: "label" '
             'image_data_param { source: "nolist.txt" batch_size: 2 } }')
    with pytest.raises(ValueError, match=r"no such list file.*no.txt"):
        _net('layer { name: "h" type: "HDF5Data" top: "data" hdf5_data_param { source: "no.txt" batch_size: 2 } }')


def test_empty_lmdb(tmp_path):
    DBWriter(str(tmp_path / "empty"), "lmdb").close()
    with pytest.raises(ValueError, match=r"database '.*empty' holds no records"):
        _net(_data_net(tmp_path / "empty", "backend: LMDB"))


def test_crop_larger_than_image_names_record(tmp_path):
    _lmdb(tmp_path / "db", n=2)
    with pytest.raises(ValueError, match=r"record '00000000_img0.png': crop_size 13 is larger than the image \(3x12x14\)"):
        _net(_data_net(tmp_path / "db", tp="crop_size: 13"))


def test_mixed_sizes_in_one_batch_name_the_record(tmp_path):
    g = np.random.default_rng(0)
    with DBWriter(str(tmp_path / "db"), "lmdb") as db:
        for i, shape in enumerate([(3, 8, 8), (3, 8, 9)]):
            db.put(f"k{i}", array_to_datum(g.integers(0, 255, shape, dtype=np.uint8), i).SerializeToString())
    net = _net(_data_net(tmp_path / "db", phase_bs=2))
    with pytest.raises(ValueError, match=r"record 'k1': image is 3x8x9 but the batch's first item .*'k0'.* is 3x8x8"):
        net.forward()


def _image_list(tmp_path, names):
    import cv2

    g = np.random.default_rng(0)
    for n in names:
        cv2.imwrite(str(tmp_path / n), g.integers(0, 255, (10, 12, 3), dtype=np.uint8))
    return g


def test_list_line_naming_a_missing_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image_list(tmp_path, ["a.png", "b.png"])
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\n\nmissing.png 2\n")
    net = _net('layer { name: "d" type: "ImageData" top: "data" top: "label" '
               'image_data_param { source: "list.txt" batch_size: 2 } }')
    net.forward()
    with pytest.raises(ValueError, match=r"layer 'd' \(ImageData\): list.txt:4: could not load image 'missing.png' \(no such file\)"):
        net.forward()
    (tmp_path / "bad.txt").write_text("a.png 0\nb.png x\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: label 'x' is not an integer"):
        _net('layer { name: "d" type: "ImageData" top: "data" image_data_param { source: "bad.txt" batch_size: 1 } }')


def test_imagedata_shuffle_passes_are_permutations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [f"i{k}.png" for k in range(6)]
    _image_list(tmp_path, names)
    (tmp_path / "list.txt").write_text("".join(f"{n} {k}\n" for k, n in enumerate(names)))
    text = ('layer { name: "d" type: "ImageData" top: "data" top: "label" '
            'image_data_param { source: "list.txt" batch_size: 3 shuffle: true } }')

    def labels(seed):
        rng.set_seed(seed)
        net = _net(text)
        out = []
        for _ in range(4):
            net.forward()
            out += net.blob_data["label"].numpy().astype(int).tolist()
        return out

    a = labels(1)
    assert sorted(a[:6]) == sorted(a[6:]) == list(range(6)) and a[:6] != a[6:]
    assert labels(1) == a and labels(2) != a


def test_hdf5_shuffle_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for p, rows in (("a.h5", 3), ("b.h5", 2)):
        with h5py.File(tmp_path / p, "w") as f:
            f["data"] = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
            f["label"] = np.arange(rows) + (0 if p == "a.h5" else 10)
    (tmp_path / "l.txt").write_text("a.h5\nb.h5\n")
    net = _net('layer { name: "h" type: "HDF5Data" top: "data" top: "label" '
               'hdf5_data_param { source: "l.txt" batch_size: 5 shuffle: true } }')
    for _ in range(3):
        net.forward()
        assert sorted(net.blob_data["label"].tolist()) == [0, 1, 2, 10, 11]
    (tmp_path / "l2.txt").write_text("a.h5\nmissing.h5\n")
    net = _net('layer { name: "h" type: "HDF5Data" top: "data" hdf5_data_param { source: "l2.txt" batch_size: 5 } }')
    with pytest.raises(ValueError, match=r"l2.txt:2: no such HDF5 file 'missing.h5'"):
        net.forward()
        net.forward()
    with pytest.raises(ValueError, match=r"has no dataset 'feat'"):
        _net('layer { name: "h" type: "HDF5Data" top: "feat" hdf5_data_param { source: "l.txt" batch_size: 2 } }')
    with pytest.raises(ValueError, match=r"does not transform data"):
        _net('layer { name: "h" type: "HDF5Data" top: "data" transform_param { scale: 2 } '
             'hdf5_data_param { source: "l.txt" batch_size: 2 } }')


def test_hdf5_output_writes_and_appends(tmp_path):
    out = tmp_path / "out.h5"
    net = _net('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } } '
               f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" hdf5_output_param {{ file_name: "{out}" }} }}')
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    net.forward({"x": x, "y": torch.tensor([7.0, 8.0])})
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["data"][()], x.numpy())
        np.testing.assert_array_equal(f["label"][()], [7, 8])
    net.forward()
    with h5py.File(out, "r") as f:
        assert f["data"].shape == (4, 3) and f["label"].shape == (4,)


def test_memory_data():
    net = _net('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
               'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }')
    layer = net.layer("m")
    with pytest.raises(ValueError, match=r"layer 'm' \(MemoryData\): .*needs to be initialized by calling reset"):
        net.forward()
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    layer.reset(data, np.array([0, 1, 2, 3], np.float32))
    got = []
    for _ in range(3):
        net.forward()
        got.append(net.blob_data["label"].tolist())
    assert got == [[0, 1], [2, 3], [0, 1]]
    np.testing.assert_array_equal(net.blob_data["data"].numpy(), data[:2])
    with pytest.raises(ValueError, match="multiple of batch_size"):
        layer.reset(data[:3], np.zeros(3))
    with pytest.raises(ValueError, match="data must be N x 1x2x2"):
        layer.reset(np.zeros((2, 3, 2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="labels must be"):
        layer.reset(data, np.zeros(3))


def test_encoded_source_matches_raw_in_logs_fixture(monkeypatch):
    """The logs fixture's TEST LMDB is encoded PNG, its TRAIN one raw: same batches."""
    folder = shared_path("fixtures", "logs")
    monkeypatch.chdir(folder)
    out = []
    for src in ("lmdb_train", "lmdb_test"):
        net = _net(_data_net(src, "backend: LMDB", tp="scale: 0.00390625", phase_bs=6))
        net.forward()
        out.append(net.blob_data["data"].clone())
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    assert decode_datum(DBReader("lmdb_test").open().peek()[1]).encoded


def test_workers_reuse_buffers_across_shapes_and_report_errors(tmp_path, monkeypatch):
    """Shared buffers are reallocated when the batch shape changes; a worker's error is raised here."""
    g = np.random.default_rng(0)
    shapes = [(3, 5, 6), (3, 7, 4), (1, 5, 6)] * 3
    with DBWriter(str(tmp_path / "db"), "lmdb") as db:
        for i, shape in enumerate(shapes):
            db.put(f"{i:03d}", array_to_datum(g.integers(0, 255, shape, dtype=np.uint8), i).SerializeToString())
    net = _net(_data_net(tmp_path / "db", phase_bs=1), workers=2)
    for k in range(2 * len(shapes)):
        net.forward()
        assert net.blob_data["data"].shape == (1, *shapes[k % len(shapes)])
        assert int(net.blob_data["label"]) == k % len(shapes)
    net.layer("data").close()
    monkeypatch.chdir(tmp_path)
    _image_list(tmp_path, ["a.png"])
    (tmp_path / "list.txt").write_text("a.png 0\n" * 40 + "gone.png 1\n")
    net = _net('layer { name: "d" type: "ImageData" top: "data" image_data_param { source: "list.txt" batch_size: 2 } }')
    with pytest.raises(ValueError, match=r"list.txt:41: could not load image 'gone.png'"):
        for _ in range(30):
            net.forward()


_AFTER_OPENCV_POOL = r"""
import sys
import numpy as np
from neocaffe.graph.net import Net
from neocaffe.io.prototxt import read_net
from neocaffe.layers.base import BuildContext
import cv2
img = np.random.default_rng(0).random((1500, 1500, 3), dtype=np.float32)
for r in range(8):  # the hang was a race with the pool's threads: several forks
    cv2.resize(img, (1000, 1000))  # OpenCV's thread pool runs in this process
    net = Net(read_net(sys.argv[1]), 1, source="<test>", context=BuildContext(data_workers=2))
    for _ in range(3):
        net.forward()
    print("labels", net.blob_data["label"].tolist(), flush=True)
    del net
"""


def test_worker_processes_start_after_opencvs_thread_pool_ran(tmp_path):
    """Forked data workers once hung forever in cv2.setNumThreads when the parent had used OpenCV's
    thread pool (a test run that never ended; a race, so 8 rounds of 2 forks); now they deliver batches.
    Run in a child, killed at 120 s."""
    import subprocess
    import sys

    if cv2_missing():
        pytest.skip("OpenCV is not installed")
    _lmdb(tmp_path / "db", n=7)
    net_text = _data_net(tmp_path / "db", "backend: LMDB")
    proc = subprocess.run([sys.executable, "-c", _AFTER_OPENCV_POOL, net_text], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("labels [6.0, 0.0, 1.0]") == 8, proc.stdout


def cv2_missing() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return True
    return False
