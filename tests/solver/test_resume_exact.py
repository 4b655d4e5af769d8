"""Resume equals the uninterrupted run (issue 13 item 5): N iterations straight and N/2 + snapshot +
resume + N/2 end with bitwise-equal weights on the CPU, through ``caffe train --snapshot`` and through
pycaffe's ``solver.restore()``: the companion ``.solverstate.resume.pt`` carries each data layer's read
position (with its prefetch, crop/mirror and shuffle seeds), the Dropout/transform random state and
the smoothed-loss window. A real Caffe ``.solverstate`` without the companion restarts the data as
Caffe does."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ITERS, HALF = 12, 6

SOLVER = """net: "net.prototxt"
type: "{type}"
base_lr: 0.05
momentum: 0.9
momentum2: 0.999
weight_decay: 0.001
lr_policy: "step"
gamma: 0.5
stepsize: 4
display: 1
average_loss: 4
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
snapshot_format: {fmt}
test_iter: 2
test_interval: 4
solver_mode: CPU
random_seed: 5
"""

# 3 x 8 x 8 images cropped to 6 x 6 at random and mirrored; 10 records in batches of 3 wrap mid-batch
TRANSFORM = "transform_param { crop_size: 6 mirror: true scale: 0.0078125 mean_value: 100 }"
DATA = {
    "lmdb": f'layer {{ name: "data" type: "Data" top: "data" top: "label" {TRANSFORM} '
            'data_param { source: "lmdb" batch_size: 3 backend: LMDB } }',
    # rand_skip: the read starts a random number of records in (Caffe's "shuffled" start for a Data layer)
    "lmdb_skip": f'layer {{ name: "data" type: "Data" top: "data" top: "label" {TRANSFORM} '
                 'data_param { source: "lmdb" batch_size: 3 backend: LMDB rand_skip: 7 } }',
    "images": f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" {TRANSFORM} '
              'image_data_param { source: "list.txt" root_folder: "img/" batch_size: 3 shuffle: true } }',
    "hdf5": 'layer { name: "data" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "h5list.txt" batch_size: 3 shuffle: true } }',
}
BODY = """
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.4 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def make_data(folder: Path) -> None:
    """A 10-record LMDB, the same images as PNGs with a list, and two shuffled HDF5 files."""
    import cv2
    import h5py

    from neocaffe.data.datum import array_to_datum
    from neocaffe.data.db_writer import DBWriter

    g = np.random.default_rng(3)
    images = g.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    (folder / "img").mkdir()
    with DBWriter(str(folder / "lmdb"), "lmdb") as db, open(folder / "list.txt", "w") as lst:
        for i, img in enumerate(images):
            db.put(f"{i:08d}", array_to_datum(img, i % 3).SerializeToString())
            cv2.imwrite(str(folder / "img" / f"{i}.png"), img.transpose(1, 2, 0))
            lst.write(f"{i}.png {i % 3}\n")
    with open(folder / "h5list.txt", "w") as lst:
        for j, rows in enumerate((4, 5)):
            with h5py.File(folder / f"{j}.h5", "w") as f:
                f["data"] = g.standard_normal((rows, 3, 6, 6)).astype(np.float32)
                f["label"] = g.integers(0, 3, rows).astype(np.float32)
            lst.write(f"{folder / f'{j}.h5'}\n")


def write_solver(folder: Path, name: str, solver_type: str, max_iter: int, prefix: str, fmt: str = "BINARYPROTO") -> str:
    """The solver (its test net reads the same source in TEST phase: its own position, centre crops)."""
    (folder / name).write_text(SOLVER.format(type=solver_type, max_iter=max_iter, snapshot=HALF, prefix=prefix, fmt=fmt))
    return name


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def weights_of(path: str) -> dict[str, np.ndarray]:
    from neocaffe.io.weights import load_weights

    return {f"{lw.name}/{i}": np.asarray(b) for lw in load_weights(path) for i, b in enumerate(lw.blobs)}


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b) and a
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def train(argv: list[str], capfd) -> str:
    from neocaffe.cli.caffe import main

    capfd.readouterr()
    code = main(["train", *argv])
    log = capfd.readouterr().err
    assert code == 0, log[-3000:]
    return log


def smoothed_losses(log: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"Iteration (\d+), loss = (\S+)", log)}


def outputs_of_tests(log: str) -> dict[int, list[str]]:
    """Iteration -> the test net's output lines logged there."""
    out: dict[int, list[str]] = {}
    it = -1
    for line in log.splitlines():
        m = re.search(r"Iteration (\d+), Testing net", line)
        if m:
            it = int(m.group(1))
        m = re.search(r"Test net output #\d+: .*", line)
        if m:
            out.setdefault(it, []).append(m.group(0))
    return out


@pytest.mark.parametrize("solver_type,data,workers,fmt", [
    ("SGD", "lmdb", "0", "BINARYPROTO"),
    ("Adam", "lmdb_skip", "0", "BINARYPROTO"),
    ("SGD", "lmdb_skip", "1", "HDF5"),  # one worker process prefetching ahead of the snapshot
    ("Adam", "images", "0", "BINARYPROTO"),
    ("SGD", "hdf5", "0", "BINARYPROTO"),
])
def test_cli_resume_equals_straight_run(solver_type, data, workers, fmt, workdir, capfd, monkeypatch):
    monkeypatch.setenv("NEOCAFFE_DATA_WORKERS", workers)
    (workdir / "net.prototxt").write_text(DATA[data] + BODY)
    ext = ".h5" if fmt == "HDF5" else ""
    straight = train([f"--solver={write_solver(workdir, 's.prototxt', solver_type, ITERS, 'straight', fmt)}"], capfd)
    train([f"--solver={write_solver(workdir, 'h.prototxt', solver_type, HALF, 'half', fmt)}"], capfd)
    state = f"half_iter_{HALF}.solverstate{ext}"
    assert Path(state + ".resume.pt").exists()
    resumed = train([f"--solver={write_solver(workdir, 'r.prototxt', solver_type, ITERS, 'resumed', fmt)}",
                     f"--snapshot={state}"], capfd)
    diff = max_difference(weights_of(f"straight_iter_{ITERS}.caffemodel{ext}"),
                          weights_of(f"resumed_iter_{ITERS}.caffemodel{ext}"))
    assert diff == 0.0, f"max weight difference {diff:.3g} between the straight and the resumed run"
    # the smoothed-loss window continues too: the resumed log's losses are the straight log's
    ours, theirs = smoothed_losses(resumed), smoothed_losses(straight)
    assert sorted(ours) == list(range(HALF, ITERS + 1))
    assert {k: ours[k] for k in ours} == {k: theirs[k] for k in ours}
    # and the test net reads on from where it stood (its outputs at 8 and 12 are the straight run's)
    ours_test, theirs_test = outputs_of_tests(resumed), outputs_of_tests(straight)
    assert sorted(ours_test) == [8, 12] and all(ours_test[k] == theirs_test[k] for k in ours_test)


@pytest.mark.parametrize("solver_type,data", [("SGD", "lmdb_skip"), ("Adam", "images"), ("Adam", "hdf5")])
def test_pycaffe_restore_equals_straight_run(solver_type, data, workdir):
    import caffe

    (workdir / "net.prototxt").write_text(DATA[data] + BODY)
    straight = caffe.get_solver(write_solver(workdir, "s.prototxt", solver_type, ITERS, "straight"))
    straight.step(ITERS)
    first = caffe.get_solver(write_solver(workdir, "h.prototxt", solver_type, ITERS, "half"))
    first.step(HALF)  # snapshot: HALF writes half_iter_6
    second = caffe.get_solver("h.prototxt")
    second.restore(f"half_iter_{HALF}.solverstate")
    second.step(ITERS - HALF)
    for name, blobs in straight.net.params.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_array_equal(second.net.params[name][i].data, blob.data, err_msg=f"{name}/{i}")


def test_caffe_solverstate_without_companion_restarts_data(workdir, capfd):
    """Without the companion (a real Caffe snapshot) the data restarts from the first record, as in
    Caffe: the same as resuming with the companion removed, and not the straight run."""
    (workdir / "net.prototxt").write_text(DATA["lmdb"] + BODY)
    train([f"--solver={write_solver(workdir, 's.prototxt', 'SGD', ITERS, 'straight')}"], capfd)
    train([f"--solver={write_solver(workdir, 'h.prototxt', 'SGD', HALF, 'half')}"], capfd)
    state = f"half_iter_{HALF}.solverstate"
    Path(state + ".resume.pt").unlink()
    log = train([f"--solver={write_solver(workdir, 'r.prototxt', 'SGD', ITERS, 'resumed')}", f"--snapshot={state}"],
                capfd)
    assert "resume.pt" in log and "restart" in log  # the log says the data starts over
    diff = max_difference(weights_of(f"straight_iter_{ITERS}.caffemodel"), weights_of(f"resumed_iter_{ITERS}.caffemodel"))
    assert diff > 0.0


def test_companion_of_another_snapshot_is_ignored_and_a_damaged_one_named(workdir, capfd):
    """A companion left from another run (its solverstate since replaced) is not applied; a damaged
    one is an error naming it, never a silent restart."""
    (workdir / "net.prototxt").write_text(DATA["lmdb"] + BODY)
    train([f"--solver={write_solver(workdir, 'h.prototxt', 'SGD', HALF, 'half')}"], capfd)
    train([f"--solver={write_solver(workdir, 'o.prototxt', 'SGD', HALF // 2, 'other')}"], capfd)
    state = Path(f"half_iter_{HALF}.solverstate")
    companion = Path(str(state) + ".resume.pt")
    good = companion.read_bytes()
    companion.write_bytes(Path(f"other_iter_{HALF // 2}.solverstate.resume.pt").read_bytes())
    log = train([f"--solver={write_solver(workdir, 'r.prototxt', 'SGD', ITERS, 'resumed')}", f"--snapshot={state}"],
                capfd)
    assert "ignoring it" in log and str(companion) in log
    companion.write_bytes(good[: len(good) // 2])
    from neocaffe.cli.caffe import main

    capfd.readouterr()
    assert main(["train", "--solver=r.prototxt", f"--snapshot={state}"]) == 1
    err = capfd.readouterr().err
    assert str(companion) in err and "remove it" in err
