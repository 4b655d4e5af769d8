"""Data-parallel training: every data layer reads its own slice of the stream (rank r of W takes the
r-th B-sized slice of each W*B chunk), and a 2-process gloo run equals a 1-process run with twice the
batch; the command line re-runs itself under torchrun."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, shared_path


def _forward_tops(text: str, rank: int, world: int, batches: int) -> list[list[np.ndarray]]:
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import BuildContext

    net = Net(read_net(text), 0, context=BuildContext(rank, world, data_workers=0))
    out = []
    for _ in range(batches):
        net.forward()
        out.append([net.blob_data[t].numpy().copy() for t in net.outputs])
    net.close()
    return out


def _interleaved(per_rank: list[list[list[np.ndarray]]]) -> list[np.ndarray]:
    """Rank batches k of every rank, concatenated in rank order, per top."""
    n_tops = len(per_rank[0][0])
    return [np.concatenate([np.concatenate([r[k][t] for r in per_rank]) for k in range(len(per_rank[0]))])
            for t in range(n_tops)]


DATA = ('layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{f}/lmdb" '
        'batch_size: {b} backend: LMDB }} }}')
IMAGES = ('layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
          '"{f}/list.txt" root_folder: "{f}/" batch_size: {b} shuffle: true }} }}')
HDF5 = ('layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
        'source: "{f}/h5list.txt" batch_size: {b} shuffle: {s} }} }}')


@pytest.mark.parametrize("layer", ["Data", "ImageData", "HDF5Data", "HDF5Data_shuffle"])
def test_two_ranks_read_what_one_reads_with_twice_the_batch(layer):
    from neocaffe import rng
    from neocaffe.data.examples import example_folder

    folder = example_folder()
    template = {"Data": DATA, "ImageData": IMAGES, "HDF5Data": HDF5, "HDF5Data_shuffle": HDF5}[layer]
    shuffle = "true" if layer == "HDF5Data_shuffle" else "false"
    runs = []
    for rank, world, b in ((0, 2, 2), (1, 2, 2), (0, 1, 4)):
        rng.set_seed(5)  # shuffles draw from the seeded stream: the same order in every process
        runs.append(_forward_tops(template.format(f=folder, b=b, s=shuffle), rank, world, 4))
    two = _interleaved(runs[:2])
    one = [np.concatenate([batch[t] for batch in runs[2]]) for t in range(len(runs[2][0]))]
    for a, b in zip(two, one):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][0][-1], runs[1][0][-1])  # the ranks do read different items


def test_memory_data_shards():
    from neocaffe.graph.net import Net
    from neocaffe.io.prototxt import read_net
    from neocaffe.layers.base import BuildContext

    text = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: %d '
            'channels: 1 height: 1 width: 1 } }')
    data = np.arange(8, dtype=np.float32).reshape(8, 1, 1, 1)
    seen = {}
    for rank, world, b in ((0, 2, 2), (1, 2, 2), (0, 1, 4)):
        net = Net(read_net(text % b), 0, context=BuildContext(rank, world))
        net.layer("m").reset(data, data[:, 0, 0, 0])
        seen[(rank, world)] = [net.forward() is not None and net.blob_data["label"].tolist() for _ in range(3)]
    for k in range(3):
        assert seen[(0, 2)][k] + seen[(1, 2)][k] == seen[(0, 1)][k]


def test_build_context_checks_rank_and_world():
    from neocaffe.layers.base import BuildContext

    assert BuildContext() == BuildContext(0, 1)
    with pytest.raises(ValueError, match="rank must be in"):
        BuildContext(2, 2)


def _write_run(tmp: Path, batch: int, name: str) -> Path:
    fix = shared_path("fixtures", "solver")
    data = tmp / "solver_data.h5"
    if not data.exists():
        data.write_bytes((fix / "solver_data.h5").read_bytes())
        (tmp / "list.txt").write_text(f"{data}\n")
    net = (fix / "net.prototxt").read_text().replace("batch_size: 4", f"batch_size: {batch}")
    net = net.replace("solver_data_list.txt", str(tmp / "list.txt"))
    (tmp / f"{name}.prototxt").write_text(net)
    solver = tmp / f"{name}_solver.prototxt"
    solver.write_text(f'net: "{tmp / name}.prototxt"\nmax_iter: 5\ndisplay: 1\nsnapshot: 5\n'
                      f'snapshot_after_train: false\nrandom_seed: 1701\nsolver_mode: CPU\nbase_lr: 0.01\n'
                      f'lr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.1\nclip_gradients: 50\n'
                      f'snapshot_prefix: "{tmp / name}"\n')
    return solver


def _one_process_matches_two(tmp: Path, one: Path, fix: Path, device: str, context: str = "") -> dict:
    """Train ``one`` (batch 4) in this process on ``device``; its iteration-5 snapshot must equal the
    two-process run's (``two_iter_5``) within 1e-5. Returns the one-process weights by layer."""
    from neocaffe.io.weights import load_weights
    from neocaffe.solver.solver import Solver

    s = Solver(str(one), device=device)
    s.net.copy_from(str(fix / "init.caffemodel"))
    s.solve()
    mine = {lw.name: lw.blobs for lw in load_weights(str(tmp / "two_iter_5.caffemodel"))}
    ref = {lw.name: lw.blobs for lw in load_weights(str(tmp / "one_iter_5.caffemodel"))}
    assert mine.keys() == ref.keys()
    for name in ref:
        for a, b in zip(mine[name], ref[name]):
            assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max()), (name, np.abs(a - b).max(), context)
    return ref


def test_two_gloo_processes_equal_one_with_twice_the_batch(tmp_path):
    """`caffe train -cpu_procs 2` (re-run under torchrun, gloo) with batch 2 against one process with
    batch 4 (the fixture's 8 rows wrap once): weights within 1e-5 after 5 iterations."""
    from neocaffe.io.weights import load_weights

    fix = shared_path("fixtures", "solver")
    two = _write_run(tmp_path, 2, "two")
    one = _write_run(tmp_path, 4, "one")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "neocaffe.cli.caffe", "train", "-solver", str(two), "-cpu_procs", "2",
                           "-weights", str(fix / "init.caffemodel")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert err.count("Data-parallel training: 2 processes (gloo)") == 1, err[-3000:]  # from rank 0 only
    assert len(re.findall(r"\] Iteration 0, loss = ", err)) == 1, err[-3000:]  # rank 0 logs, rank 1 does not
    ref = _one_process_matches_two(tmp_path, one, fix, "cpu", err[-2000:])
    init = {lw.name: lw.blobs for lw in load_weights(str(fix / "init.caffemodel"))}
    moved = any(np.abs(a - b).max() > 1e-3 for a, b in zip(init["innerprod"], ref["innerprod"]))
    assert moved


def test_several_gpus_or_cpu_procs_relaunch_under_torchrun(monkeypatch, tmp_path):
    from neocaffe.cli import caffe

    solver = _write_run(tmp_path, 2, "x")
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert caffe.main(["train", "-solver", str(solver), "-cpu_procs", "3"]) == 0
    cmd = calls[0]
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    assert cmd[5:8] == ["-m", "neocaffe.cli.caffe", "train"] and "-cpu_procs" in cmd
    assert caffe.main(["train", "-solver", str(solver), "-cpu_procs", "2", "-gpu", "0"]) == 1
    if not torch.cuda.is_available():
        assert caffe.main(["train", "-solver", str(solver), "-gpu", "0,1"]) == 1  # no CUDA: a clear error


def _gloo_worker(rank: int, world: int, port: int, solver: str, init: str, device: str) -> None:
    """One data-parallel process (spawned): joins a gloo group, trains ``solver`` on ``device``."""
    from neocaffe.solver.parallel import DataParallel
    from neocaffe.solver.solver import Solver

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dp = DataParallel(device, backend="gloo")
    try:
        s = Solver(solver, device=device, data_parallel=dp)
        s.net.copy_from(init)
        s.sync_parameters()
        s.solve()
    finally:
        dp.close()


@pytest.mark.gpu
def test_two_processes_on_one_gpu_equal_one_with_twice_the_batch(tmp_path):
    """What one GPU allows of data-parallel training (NCCL refuses two ranks on one device): two gloo
    processes sharing cuda:0, batch 2, against one CUDA process with batch 4: the gradient all-reduce,
    weight broadcast and rank-0 snapshot with CUDA tensors; weights within 1e-5 after 5 iterations."""
    import socket

    import torch.multiprocessing as mp

    fix = shared_path("fixtures", "solver")
    two, one = _write_run(tmp_path, 2, "two"), _write_run(tmp_path, 4, "one")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gloo_worker, args=(2, port, str(two), str(fix / "init.caffemodel"), "cuda:0"), nprocs=2, join=True)
    _one_process_matches_two(tmp_path, one, fix, "cuda:0")
